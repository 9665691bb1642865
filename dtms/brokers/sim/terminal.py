"""SimTerminal: a drop-in stand-in for the `MetaTrader5` module object.

This module owns the MT5 API surface (initialize, account_info, symbol_info,
positions_get, copy_rates_from_pos, order_send, history_deals_get, ...): the
connection state and last_error, fault gating, one RLock around every public
method, and lazy tick catch-up to the clock before each call. Trading rules
live in trading.py/orders.py, quotes in market.py, test controls in controls.py.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from . import constants as c
from .clock import Clock, ManualClock
from .controls import SimControls
from .faults import NO_IPC, Faults
from .history import Ticks
from .ledger import Ledger, order_record
from .market import Market
from .requests import RequestError, parse_request, to_epoch
from .symbols import build_symbols
from .trading import TradeEngine
from .types import (
    AccountInfo,
    OrderCheckResult,
    OrderSendResult,
    Rate,
    SimConfig,
    SymbolInfo,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
)
from .views import (
    TERMINAL_VERSION,
    account_view,
    matches_group,
    symbol_view,
    terminal_view,
    tick_view,
)

OK = (c.RES_S_OK, "Success")
NOT_FOUND = (c.RES_E_NOT_FOUND, "Terminal: Not found")
AUTH_FAILED = (c.RES_E_AUTH_FAILED, "Terminal: Authorization failed")

F = TypeVar("F", bound=Callable[..., Any])


def _api(name: str, failure: Any = None) -> Callable[[F], F]:
    """Wrap an MT5 API method: latency, lock, connection and fault gating, catch-up."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: SimTerminal, *args: Any, **kwargs: Any) -> Any:
            latency = self.faults.latency_of(name)
            if latency > 0:
                time.sleep(latency)
            with self._lock:
                if not self.connected:
                    self._last_error = NO_IPC
                    return failure
                error = self.faults.take_failure(name)
                if error is not None:
                    self._last_error = error
                    return failure
                self._catch_up()
                self._last_error = OK
                return fn(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


class SimTerminal(SimControls):
    """Simulated MetaTrader 5 terminal exposing the `MetaTrader5` package's API."""

    def __init__(self, config: SimConfig | None = None, clock: Clock | None = None,
                 history: Mapping[str, Ticks] | None = None) -> None:
        """``history``: recorded ticks by base symbol name (history.py) that replace those
        symbols' random walk."""
        self.config = config or SimConfig()
        self.clock: Clock = clock or ManualClock()
        self._lock = threading.RLock()
        self.faults = Faults(self._lock)
        specs = build_symbols(self.config.symbol_suffix, self.config.symbols,
                              self.config.symbol_overrides)
        start = self.clock.now()
        self._market = Market(self.config, specs, start, history)
        self._ledger = Ledger(0.0 if self.config.initial_deposit_deal else self.config.balance,
                              self.config.first_ticket, self.config.first_deal)
        self._engine = TradeEngine(self.config, self._market, self._ledger)
        self._initialized = False
        self._last_error: tuple[int, str] = OK
        if self.config.initial_deposit_deal and self.config.balance:
            deposit_msc = int((start - self.config.history_days * 86_400) * 1000)
            self._ledger.add_deal(order=0, time_msc=deposit_msc, type=c.DEAL_TYPE_BALANCE,
                                  entry=c.DEAL_ENTRY_IN, magic=0, position_id=0,
                                  reason=c.DEAL_REASON_CLIENT, volume=0.0, price=0.0,
                                  profit=self.config.balance, comment="Initial deposit")

    # --- plumbing --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True between initialize() and shutdown()/disconnect()."""
        return self._initialized and not self.faults.disconnected

    def _catch_up(self) -> None:
        self._market.advance_to(self.clock.now(), self._engine.on_tick, self._engine.on_step)

    def _error(self, error: tuple[int, str], value: Any = None) -> Any:
        self._last_error = error
        return value

    # --- connection ------------------------------------------------------------------
    def initialize(self, path: str | None = None, *, login: int | None = None,
                   password: str | None = None, server: str | None = None,
                   timeout: int | None = None, portable: bool = False) -> bool:
        """Connect to the (simulated) terminal; True on success."""
        latency = self.faults.latency
        if latency > 0:
            time.sleep(latency)
        with self._lock:
            error = self.faults.take_failure("initialize")
            if error is not None:
                return self._error(error, False)
            if not self._credentials_ok(login, password, server):
                return self._error(AUTH_FAILED, False)
            self._initialized = True
            self.faults.disconnected = False
            self._catch_up()
            self._last_error = OK
            return True

    def _credentials_ok(self, login: int | None, password: str | None,
                        server: str | None) -> bool:
        cfg = self.config
        if login is not None and login != cfg.login:
            return False
        if password is not None and cfg.password is not None and password != cfg.password:
            return False
        return server is None or server == cfg.server

    @_api("login", failure=False)
    def login(self, login: int, password: str | None = None, server: str | None = None,
              timeout: int = 60_000) -> bool:
        """Re-authorise on the trade account; True on success."""
        if not self._credentials_ok(login, password, server):
            return self._error(AUTH_FAILED, False)
        return True

    def shutdown(self) -> None:
        """Close the connection; later calls fail with (-10004, ...) until initialize()."""
        with self._lock:
            self._initialized = False
            self._last_error = OK

    def last_error(self) -> tuple[int, str]:
        """(code, description) of the last API call."""
        with self._lock:
            return self._last_error

    @_api("version")
    def version(self) -> tuple[int, int, str]:
        """(terminal version, build, build date)."""
        return TERMINAL_VERSION

    @_api("terminal_info")
    def terminal_info(self) -> TerminalInfo:
        """Terminal state (connected, algo trading allowed, build...)."""
        return terminal_view(self.config, True, self._engine.algo_trading)

    @_api("account_info")
    def account_info(self) -> AccountInfo:
        """Trade account state with live equity and margin."""
        return account_view(self.config, self._engine)

    # --- symbols ---------------------------------------------------------------------
    @_api("symbols_total")
    def symbols_total(self) -> int:
        """Number of symbols the terminal knows."""
        return len(self._market.symbols)

    @_api("symbols_get")
    def symbols_get(self, group: str | None = None) -> tuple[SymbolInfo, ...]:
        """SymbolInfo of every symbol matching `group`."""
        return tuple(symbol_view(self._market, s) for n, s in self._market.symbols.items()
                     if matches_group(n, group))

    @_api("symbol_info")
    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        """Specification and current quotes of a symbol; None if unknown."""
        state = self._market.get(symbol)
        if state is None:
            return self._error(NOT_FOUND)
        return symbol_view(self._market, state)

    @_api("symbol_info_tick")
    def symbol_info_tick(self, symbol: str) -> Tick | None:
        """Last tick of a symbol; None if unknown or not selected in Market Watch."""
        state = self._market.get(symbol)
        if state is None or not state.selected:
            return self._error(NOT_FOUND)
        return tick_view(state)

    @_api("symbol_select", failure=False)
    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        """Show/hide a symbol in Market Watch (cannot hide one with positions or orders)."""
        state = self._market.get(symbol)
        if state is None:
            return self._error(NOT_FOUND, False)
        if not enable and (any(p.symbol == symbol for p in self._ledger.positions.values())
                           or any(o.symbol == symbol for o in self._ledger.orders.values())):
            return self._error((c.RES_E_FAIL, "Terminal: Call failed"), False)
        state.selected = bool(enable)
        return True

    # --- rates -----------------------------------------------------------------------
    def _rates_source(self, symbol: str, timeframe: int) -> int | None:
        if self._market.get(symbol) is None:
            return self._error(NOT_FOUND)
        seconds = c.TIMEFRAME_SECONDS.get(timeframe) if isinstance(timeframe, int) else None
        if seconds is None:
            return self._error((c.RES_E_INVALID_PARAMS, "Terminal: Invalid params"))
        return seconds

    @_api("copy_rates_from_pos")
    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int,
                            count: int) -> tuple[Rate, ...] | None:
        """`count` bars ending `start_pos` bars before the forming one, oldest first."""
        seconds = self._rates_source(symbol, timeframe)
        if seconds is None:
            return None
        if start_pos < 0 or count <= 0:
            return self._error((c.RES_E_INVALID_PARAMS, "Terminal: Invalid params"))
        bars = self._market.ensure_history(symbol).tail(seconds, start_pos + count)
        bars = bars[: len(bars) - start_pos] if start_pos else bars
        return tuple(Rate(*b) for b in bars)

    @_api("copy_rates_from")
    def copy_rates_from(self, symbol: str, timeframe: int, date_from: datetime | int,
                        count: int) -> tuple[Rate, ...] | None:
        """`count` bars opened at or before date_from, oldest first."""
        seconds = self._rates_source(symbol, timeframe)
        if seconds is None:
            return None
        bars = self._market.ensure_history(symbol).before(seconds, to_epoch(date_from), count)
        return tuple(Rate(*b) for b in bars)

    @_api("copy_rates_range")
    def copy_rates_range(self, symbol: str, timeframe: int, date_from: datetime | int,
                         date_to: datetime | int) -> tuple[Rate, ...] | None:
        """Bars opened within [date_from, date_to], oldest first."""
        seconds = self._rates_source(symbol, timeframe)
        if seconds is None:
            return None
        bars = self._market.ensure_history(symbol).window(seconds, to_epoch(date_from),
                                                          to_epoch(date_to))
        return tuple(Rate(*b) for b in bars)

    # --- positions and orders --------------------------------------------------------
    @_api("positions_total")
    def positions_total(self) -> int:
        """Number of open positions."""
        return len(self._ledger.positions)

    @_api("positions_get")
    def positions_get(self, symbol: str | None = None, group: str | None = None,
                      ticket: int | None = None) -> tuple[TradePosition, ...]:
        """Open positions, optionally filtered by symbol, group or ticket."""
        if ticket is not None:  # by key, as the terminal does: no scan of every position
            found = self._ledger.positions.get(ticket)
            candidates: Any = () if found is None else (found,)
        else:
            candidates = self._ledger.positions.values()
        return tuple(
            self._engine.position_view(p) for p in candidates
            if (symbol is None or p.symbol == symbol)
            and (group is None or matches_group(p.symbol, group))
            and not (self.faults.hiding and self.faults.take_hidden(p.ticket))
        )

    @_api("orders_total")
    def orders_total(self) -> int:
        """Number of active pending orders."""
        return len(self._ledger.orders)

    @_api("orders_get")
    def orders_get(self, symbol: str | None = None, group: str | None = None,
                   ticket: int | None = None) -> tuple[TradeOrder, ...]:
        """Active pending orders, optionally filtered by symbol, group or ticket."""
        return tuple(
            order_record(o, self._engine._order_price(o)) for o in self._ledger.orders.values()
            if (symbol is None or o.symbol == symbol) and (ticket is None or o.ticket == ticket)
            and matches_group(o.symbol, group)
        )

    # --- trading ---------------------------------------------------------------------
    @_api("order_check")
    def order_check(self, request: dict[str, Any]) -> OrderCheckResult | None:
        """Validate a request and report the margin it needs; executes nothing."""
        try:
            req = parse_request(request)
        except RequestError as exc:
            return self._error((c.RES_E_INVALID_PARAMS, str(exc)))
        return self._engine.check(req)

    @_api("order_calc_margin")
    def order_calc_margin(self, action: int, symbol: str, volume: float,
                          price: float) -> float | None:
        """Margin for `volume` lots of `symbol` at `price`, account currency."""
        if self._market.get(symbol) is None:
            return self._error(NOT_FOUND)
        return self._market.margin(symbol, volume, price)

    @_api("order_calc_profit")
    def order_calc_profit(self, action: int, symbol: str, volume: float, price_open: float,
                          price_close: float) -> float | None:
        """Profit of a BUY (action 0) or SELL (1) between two prices, account currency."""
        if self._market.get(symbol) is None:
            return self._error(NOT_FOUND)
        return self._market.profit(symbol, action, volume, price_open, price_close)

    @_api("order_send")
    def order_send(self, request: dict[str, Any]) -> OrderSendResult | None:
        """Send a trade request to the (simulated) trade server."""
        try:
            req = parse_request(request)
        except RequestError as exc:
            return self._error((c.RES_E_INVALID_PARAMS, str(exc)))
        jump = self.faults.take_jump()
        if jump is not None:
            self._market.force_price(*jump)
            self._engine.on_tick(jump[0])
        result = self._engine.send(req)
        if self.faults.take_uncertain():
            return OrderSendResult(
                retcode=c.TRADE_RETCODE_TIMEOUT, deal=0, order=0, volume=0.0, price=0.0,
                bid=0.0, ask=0.0, comment=c.RETCODE_COMMENTS[c.TRADE_RETCODE_TIMEOUT],
                request_id=result.request_id, retcode_external=0, request=req,
            )
        return result

    # --- history ---------------------------------------------------------------------
    def _history(self, records: tuple[Any, ...], time_of: Callable[[Any], int],
                 date_from: datetime | int | None, date_to: datetime | int | None,
                 group: str | None, match: Callable[[Any], bool] | None) -> tuple[Any, ...] | None:
        if match is not None:
            return tuple(r for r in records if match(r))
        if date_from is None or date_to is None:
            return self._error((c.RES_E_INVALID_PARAMS, "Terminal: Invalid params"))
        lo, hi = to_epoch(date_from), to_epoch(date_to)
        return tuple(r for r in records
                     if lo <= time_of(r) <= hi and matches_group(r.symbol, group))

    @_api("history_deals_get")
    def history_deals_get(self, date_from: datetime | int | None = None,
                          date_to: datetime | int | None = None, group: str | None = None, *,
                          ticket: int | None = None,
                          position: int | None = None) -> tuple[TradeDeal, ...] | None:
        """Deals in [date_from, date_to], or of an order (ticket=) or position (position=)."""
        match = None
        if ticket is not None:
            match = lambda d: d.order == ticket  # noqa: E731
        elif position is not None:
            match = lambda d: d.position_id == position  # noqa: E731
        deals = self._history(tuple(self._ledger.deals), lambda d: d.time, date_from, date_to,
                              group, match)
        if deals and self.faults.hiding:
            late = self.faults.take_late_deals({d.position_id for d in deals})
            deals = tuple(d for d in deals if d.position_id not in late)
        return deals

    @_api("history_deals_total")
    def history_deals_total(self, date_from: datetime | int, date_to: datetime | int) -> int | None:
        """Number of deals in [date_from, date_to]."""
        lo, hi = to_epoch(date_from), to_epoch(date_to)
        return sum(1 for d in self._ledger.deals if lo <= d.time <= hi)

    @_api("history_orders_get")
    def history_orders_get(self, date_from: datetime | int | None = None,
                           date_to: datetime | int | None = None, group: str | None = None, *,
                           ticket: int | None = None,
                           position: int | None = None) -> tuple[TradeOrder, ...] | None:
        """Finished orders in [date_from, date_to], or by ticket= / position=."""
        match = None
        if ticket is not None:
            match = lambda o: o.ticket == ticket  # noqa: E731
        elif position is not None:
            match = lambda o: o.position_id == position  # noqa: E731
        return self._history(tuple(self._ledger.history_orders), lambda o: o.time_setup,
                             date_from, date_to, group, match)

    @_api("history_orders_total")
    def history_orders_total(self, date_from: datetime | int,
                             date_to: datetime | int) -> int | None:
        """Number of finished orders in [date_from, date_to]."""
        lo, hi = to_epoch(date_from), to_epoch(date_to)
        return sum(1 for o in self._ledger.history_orders if lo <= o.time_setup <= hi)


for _name, _value in c.export_names().items():
    setattr(SimTerminal, _name, _value)
del _name, _value
