"""Market state of the simulated terminal: quotes, bars, sessions and currency math.

This module owns Market: for every symbol its spec, live PriceStream, BarSeries,
day high/low, selection and market-open flags, plus the lazy generation of
history bars and the tick catch-up loop that brings all symbols to a given
sim time (optionally ending in a tick with scripted bids); with recorded history
(history.py) the catch-up plays the recorded ticks instead of the walk. It also converts money between currencies and computes profit and
margin, because both only depend on specs and current quotes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import constants as c
from .bars import BarSeries
from .history import HistoryStream, Ticks
from .history import advance as advance_history
from .prices import PriceStream, flat_history, generate_history
from .symbols import SymbolSpec
from .types import SimConfig

# Fallback rates (units of USD per unit) when no symbol quotes a currency.
_STATIC_USD_RATES = {"USD": 1.0, "EUR": 1.085, "GBP": 1.27, "JPY": 1 / 150.0,
                     "XAU": 2400.0, "BTC": 65_000.0}


@dataclass
class SymbolState:
    """Mutable per-symbol market state."""

    spec: SymbolSpec
    base: str
    stream: PriceStream | HistoryStream   # a random walk, or recorded history (replay)
    bars: BarSeries
    selected: bool = True
    market_open: bool = True
    history_loaded: bool = False
    day: int = -1
    day_open: float = 0.0
    bid_high: float = 0.0
    bid_low: float = 0.0
    last_tick_msc: int = 0


class Market:
    """All symbols' quotes and bars, advanced together tick by tick."""

    def __init__(self, config: SimConfig, specs: dict[str, SymbolSpec], start: float,
                 history: Mapping[str, Ticks] | None = None) -> None:
        self.config = config
        self.history = bool(history)   # recorded ticks replace the walk (history.py)
        self.now = float(start)
        self.start = float(start)
        self.symbols: dict[str, SymbolState] = {}
        suffix = config.symbol_suffix
        for name, spec in specs.items():
            base = name[: len(name) - len(suffix)] if suffix else name
            stream: PriceStream | HistoryStream
            if history and base in history:
                stream = HistoryStream(spec, history[base])
            else:
                stream = PriceStream(spec, config.seed, start, config.regime_mean_seconds,
                                     key=base)
            state = SymbolState(spec, base, stream, BarSeries(),
                                market_open=base not in config.closed_markets,
                                history_loaded=isinstance(stream, HistoryStream))
            self.symbols[name] = state
            if not state.history_loaded:   # a recorded history's first tick is played
                self._record(state, start)

    # --- quotes ----------------------------------------------------------------
    def get(self, symbol: object) -> SymbolState | None:
        """State of a symbol, or None if the terminal does not know it."""
        return self.symbols.get(symbol) if isinstance(symbol, str) else None

    def bid(self, symbol: str) -> float:
        """Current bid."""
        return self.symbols[symbol].stream.bid

    def ask(self, symbol: str) -> float:
        """Current ask."""
        return self.symbols[symbol].stream.ask

    def _record(self, state: SymbolState, t: float) -> None:
        bid = state.stream.bid
        day = int(t) // 86_400
        if day != state.day:
            state.day, state.day_open = day, bid
            state.bid_high = state.bid_low = bid
        else:
            state.bid_high = max(state.bid_high, bid)
            state.bid_low = min(state.bid_low, bid)
        state.bars.add_tick(t, bid, state.stream.spread, state.stream.volume)
        state.last_tick_msc = int(round(t * 1000))

    record = _record

    def advance_to(self, t: float, on_tick: Callable[[str], None],
                   on_step: Callable[[], None]) -> int:
        """Generate ticks for every symbol up to time t; returns the number of steps.

        Steps are config.tick_interval apart; if more than
        config.max_catchup_steps would be needed the steps get coarser so a
        long gap costs bounded work. on_tick(symbol) runs after each symbol's
        tick and on_step() after each time step (SL/TP, stop-out).
        """
        if self.history:
            return advance_history(self, t, on_tick, on_step)
        base = self.now
        interval, steps = self._grid(t)
        for i in range(1, steps + 1):
            self._step(base + i * interval, on_tick, on_step)
        return steps

    def advance_scripted(self, t: float, bids: Mapping[str, float],
                         on_tick: Callable[[str], None], on_step: Callable[[], None]) -> int:
        """Like advance_to(t), but the tick at exactly t has these bids; returns the steps.

        Every symbol gets a tick at t: the grid step that lands on t (or an extra one if the
        grid falls short of t) is taken by the scripted bids instead of a repeat or a walk, so
        a held symbol's bars see each scripted bid once. Raises ValueError if t is not after
        the last tick.
        """
        if t <= self.now:
            raise ValueError(f"scripted tick at {t} is not after the last tick at {self.now}")
        base = self.now
        interval, steps = self._grid(t)
        if steps and base + steps * interval >= t:
            steps -= 1  # the last grid step is t itself (or rounds past it): script it
        for i in range(1, steps + 1):
            self._step(base + i * interval, on_tick, on_step)
        self._step(t, on_tick, on_step, bids)
        return steps + 1

    def _grid(self, t: float) -> tuple[float, int]:
        """(interval, steps) of the catch-up from now to t."""
        gap = t - self.now
        interval = self.config.tick_interval
        if gap < interval:
            return interval, 0
        steps = int(gap // interval)
        if steps > self.config.max_catchup_steps:
            steps = self.config.max_catchup_steps
            interval = gap / steps
        return interval, steps

    def _step(self, t: float, on_tick: Callable[[str], None], on_step: Callable[[], None],
              forced: Mapping[str, float] | None = None) -> None:
        # now moves first, so a deal made by on_tick (SL/TP, pending fill) is stamped with
        # the time of the tick that caused it.
        self.now = t
        for name, state in self.symbols.items():
            if forced is not None and name in forced:
                state.stream.force(t, forced[name])
            else:
                state.stream.step_to(t)
            self._record(state, t)
            on_tick(name)
        on_step()

    def force_price(self, symbol: str, bid: float) -> None:
        """Make a tick at the current sim time with exactly this bid."""
        state = self.symbols[symbol]
        state.stream.force(self.now, bid)
        self._record(state, self.now)

    def ensure_history(self, symbol: str) -> BarSeries:
        """The symbol's bars, generating the pre-start M1 history on first use."""
        state = self.symbols[symbol]
        if not state.history_loaded:
            minutes = int(self.config.history_days * 1440)
            if self.config.history_mode == "flat":
                # As many ticks per minute as the live stream makes, so volume-weighted
                # indicators see no seam at the start.
                volume = max(1, round(60 / self.config.tick_interval))
                history = flat_history(state.spec, self.start, minutes, volume)
            else:
                history = generate_history(state.spec, self.config.seed, self.start, minutes,
                                           self.config.regime_mean_seconds, key=state.base)
            state.bars.prepend(history)
            state.history_loaded = True
        return state.bars

    # --- money -------------------------------------------------------------------
    def usd_rate(self, currency: str) -> float:
        """Value of one unit of `currency` in the account currency."""
        account = self.config.currency
        if currency == account:
            return 1.0
        for state in self.symbols.values():
            spec = state.spec
            if spec.currency_base == currency and spec.currency_profit == account:
                return state.stream.bid
            if spec.currency_base == account and spec.currency_profit == currency:
                return 1.0 / state.stream.bid
        if account == "USD" and currency in _STATIC_USD_RATES:
            return _STATIC_USD_RATES[currency]
        return 1.0

    def profit(self, symbol: str, order_type: int, volume: float,
               price_open: float, price_close: float) -> float:
        """Profit of a BUY/SELL of `volume` lots from price_open to price_close, account ccy."""
        spec = self.symbols[symbol].spec
        sign = 1.0 if order_type == c.ORDER_TYPE_BUY else -1.0
        raw = sign * (price_close - price_open) * volume * spec.contract_size
        if spec.currency_profit == self.config.currency:
            return round(raw, 2)
        if spec.currency_base == self.config.currency and price_close > 0:
            return round(raw / price_close, 2)
        return round(raw * self.usd_rate(spec.currency_profit), 2)

    def margin(self, symbol: str, volume: float, price: float) -> float:
        """Margin to hold `volume` lots at `price`, in the account currency."""
        spec = self.symbols[symbol].spec
        leverage = max(1, self.config.leverage)
        if spec.calc_mode in (c.SYMBOL_CALC_MODE_FOREX, c.SYMBOL_CALC_MODE_FOREX_NO_LEVERAGE):
            units = volume * spec.contract_size
            if spec.calc_mode == c.SYMBOL_CALC_MODE_FOREX:
                units /= leverage
            return round(units * self.usd_rate(spec.currency_margin), 2)
        value = volume * spec.contract_size * price / leverage
        return round(value * self.usd_rate(spec.currency_profit), 2)

    def tick_value(self, symbol: str) -> float:
        """Value of a one-point move for one lot, in the account currency."""
        spec = self.symbols[symbol].spec
        raw = spec.contract_size * spec.point
        if spec.currency_profit == self.config.currency:
            return raw
        if spec.currency_base == self.config.currency:
            return raw / self.symbols[symbol].stream.bid
        return raw * self.usd_rate(spec.currency_profit)
