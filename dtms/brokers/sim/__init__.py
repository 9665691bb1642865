"""Simulated MetaTrader 5 terminal: a stand-in for `import MetaTrader5 as mt5`.

``SimTerminal(SimConfig(...))`` exposes the functions, constants and result
shapes of the MetaTrader5 package, backed by a deterministic seeded market,
a trade server that applies MT5's rules and retcodes, and fault injection.
"""

from .clock import ManualClock, RealtimeClock
from .controls import SimTradeRejected
from .terminal import SimTerminal
from .types import SimConfig

__all__ = ["ManualClock", "RealtimeClock", "SimConfig", "SimTerminal", "SimTradeRejected"]
