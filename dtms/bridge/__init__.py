"""The terminal bridge: DTMS on Linux, the terminal on Windows.

``server`` runs next to the terminal (stdlib + msgpack only, copyable alone); ``client`` is
DTMS's side (``broker.backend = "bridge"``), a blocking object that behaves like the
``MetaTrader5`` module and goes through :class:`~dtms.brokers.mt5.MT5Adapter` like every
backend.
"""
