"""Static contract specifications of the simulated symbols (data, not behaviour).

This module owns SymbolSpec and the built-in symbol table. Everything the
terminal reports in symbol_info() that does not change with the market comes
from here; SimConfig.symbol_overrides may patch fields and
SimConfig.symbol_suffix renames them (XAUUSD -> XAUUSDc).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import constants as c

_FOK_IOC = c.SYMBOL_FILLING_FOK | c.SYMBOL_FILLING_IOC
_ALL_ORDERS = (
    c.SYMBOL_ORDER_MARKET
    | c.SYMBOL_ORDER_LIMIT
    | c.SYMBOL_ORDER_STOP
    | c.SYMBOL_ORDER_STOP_LIMIT
    | c.SYMBOL_ORDER_SL
    | c.SYMBOL_ORDER_TP
    | c.SYMBOL_ORDER_CLOSEBY
)
_ALL_EXPIRATIONS = (
    c.SYMBOL_EXPIRATION_GTC
    | c.SYMBOL_EXPIRATION_DAY
    | c.SYMBOL_EXPIRATION_SPECIFIED
    | c.SYMBOL_EXPIRATION_SPECIFIED_DAY
)


@dataclass(frozen=True)
class SymbolSpec:
    """Contract specification of one symbol. `spread` and levels are in points."""

    name: str
    description: str
    path: str
    digits: int
    contract_size: float
    volume_min: float
    volume_max: float
    volume_step: float
    stops_level: int
    freeze_level: int
    spread: int
    start_bid: float
    daily_vol: float  # typical daily relative move (0.005 = 0.5 %)
    currency_base: str
    currency_profit: str
    currency_margin: str
    calc_mode: int = c.SYMBOL_CALC_MODE_FOREX
    trade_mode: int = c.SYMBOL_TRADE_MODE_FULL
    exemode: int = c.SYMBOL_TRADE_EXECUTION_INSTANT
    filling_mode: int = _FOK_IOC
    order_mode: int = _ALL_ORDERS
    expiration_mode: int = _ALL_EXPIRATIONS
    volume_limit: float = 0.0
    swap_long: float = 0.0
    swap_short: float = 0.0
    category: str = ""

    @property
    def point(self) -> float:
        """Smallest price change, 10 ** -digits."""
        return round(10.0 ** -self.digits, self.digits)


BUILTIN_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec(
        name="EURUSD", description="Euro vs US Dollar", path="Forex\\Majors\\EURUSD",
        digits=5, contract_size=100_000.0, volume_min=0.01, volume_max=100.0,
        volume_step=0.01, stops_level=10, freeze_level=5, spread=12, start_bid=1.08500,
        daily_vol=0.005, currency_base="EUR", currency_profit="USD", currency_margin="EUR",
        swap_long=-7.2, swap_short=2.1, category="Forex",
    ),
    SymbolSpec(
        name="GBPUSD", description="Great Britain Pound vs US Dollar",
        path="Forex\\Majors\\GBPUSD", digits=5, contract_size=100_000.0, volume_min=0.01,
        volume_max=100.0, volume_step=0.01, stops_level=10, freeze_level=5, spread=15,
        start_bid=1.27000, daily_vol=0.006, currency_base="GBP", currency_profit="USD",
        currency_margin="GBP", swap_long=-4.5, swap_short=0.8, category="Forex",
    ),
    SymbolSpec(
        name="USDJPY", description="US Dollar vs Japanese Yen", path="Forex\\Majors\\USDJPY",
        digits=3, contract_size=100_000.0, volume_min=0.01, volume_max=100.0,
        volume_step=0.01, stops_level=10, freeze_level=5, spread=14, start_bid=150.000,
        daily_vol=0.006, currency_base="USD", currency_profit="JPY", currency_margin="USD",
        swap_long=12.3, swap_short=-25.6, category="Forex",
    ),
    SymbolSpec(
        name="XAUUSD", description="Gold vs US Dollar", path="Metals\\XAUUSD", digits=2,
        contract_size=100.0, volume_min=0.01, volume_max=50.0, volume_step=0.01,
        stops_level=50, freeze_level=20, spread=25, start_bid=2400.00, daily_vol=0.010,
        currency_base="XAU", currency_profit="USD", currency_margin="USD",
        calc_mode=c.SYMBOL_CALC_MODE_CFD, swap_long=-35.0, swap_short=15.0,
        category="Metals",
    ),
    SymbolSpec(
        name="BTCUSD", description="Bitcoin vs US Dollar", path="Crypto\\BTCUSD", digits=2,
        contract_size=1.0, volume_min=0.01, volume_max=10.0, volume_step=0.01,
        stops_level=1000, freeze_level=500, spread=1500, start_bid=65000.00,
        daily_vol=0.030, currency_base="BTC", currency_profit="USD", currency_margin="USD",
        calc_mode=c.SYMBOL_CALC_MODE_CFD, swap_long=-20.0, swap_short=-20.0,
        category="Crypto",
    ),
)


def build_symbols(
    suffix: str = "",
    only: tuple[str, ...] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, SymbolSpec]:
    """The terminal's symbol table keyed by (suffixed) name, built from BUILTIN_SYMBOLS."""
    overrides = overrides or {}
    known = {spec.name for spec in BUILTIN_SYMBOLS}
    for base in list(only or ()) + list(overrides):
        if base not in known:
            raise ValueError(f"unknown simulated symbol {base!r}; known: {sorted(known)}")
    table: dict[str, SymbolSpec] = {}
    for spec in BUILTIN_SYMBOLS:
        if only is not None and spec.name not in only:
            continue
        patched = replace(spec, **overrides.get(spec.name, {}))
        name = spec.name + suffix
        table[name] = replace(patched, name=name, path=patched.path + suffix)
    return table
