"""DTMS: Defensive Trade Management System for MetaTrader 5."""

__version__ = "0.1.0"
