"""Test and demo controls of the SimTerminal (not part of the MetaTrader5 API).

This module owns the SimControls mixin: moving the clock, forcing prices,
holding a symbol and playing a scripted price path, opening and closing positions the way a human would in the terminal, market
and symbol switches, the account's mode, and the fault-injection shortcuts. Every control takes
the terminal lock, so tests may call them from any thread, and none is
affected by injected faults or the connection state.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from . import constants as c
from .faults import DEFAULT_FAILURE, Faults
from .requests import parse_request
from .trading import EPS, TradeEngine, opposite

if TYPE_CHECKING:
    from .clock import Clock
    from .ledger import Ledger
    from .market import Market, SymbolState
    from .types import SimConfig


class SimTradeRejected(RuntimeError):
    """A control's trade was refused by the simulated trade server."""

    def __init__(self, retcode: int, comment: str) -> None:
        super().__init__(f"trade rejected: retcode {retcode} ({comment})")
        self.retcode = retcode
        self.comment = comment


class SimControls:
    """Mixin of SimTerminal: controls for tests and demos."""

    _lock: threading.RLock
    _market: Market
    _engine: TradeEngine
    _ledger: Ledger
    clock: Clock
    faults: Faults
    config: SimConfig

    def _catch_up(self) -> None:
        raise NotImplementedError

    def _state(self, symbol: str) -> SymbolState:
        state = self._market.get(symbol)
        if state is None:
            raise KeyError(f"unknown simulated symbol {symbol!r}")
        return state

    @property
    def sim_time(self) -> float:
        """Current sim time (epoch seconds) as of the last generated tick."""
        with self._lock:
            self._catch_up()
            return self._market.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward and generate every tick in between (SL/TP included)."""
        with self._lock:
            self.clock.advance(seconds)
            self._catch_up()

    def set_price(self, symbol: str, bid: float) -> None:
        """A tick now at exactly this bid (ask = bid + spread); triggers SL/TP and orders."""
        with self._lock:
            self._state(symbol)
            self._catch_up()
            self._market.force_price(symbol, bid)
            self._engine.on_tick(symbol)
            self._engine.on_step()

    def set_spread(self, symbol: str, points: int) -> None:
        """From now on the symbol's ask is its bid plus `points` points; a tick now with the
        same bid and the new ask (SL/TP of SELL positions trigger on it)."""
        if int(points) < 0:
            raise ValueError(f"spread must be >= 0 points, got {points!r}")
        with self._lock:
            state = self._state(symbol)
            self._catch_up()
            state.spec = replace(state.spec, spread=int(points))
            state.stream.spec = state.spec
            self._market.force_price(symbol, state.stream.bid)
            self._engine.on_tick(symbol)
            self._engine.on_step()

    def hold(self, symbol: str, held: bool = True) -> None:
        """Stop (or, held=False, resume) the symbol's own random walk.

        While held, generated ticks repeat the last bid: they still make ticks and bars and
        still trigger SL/TP and pending orders, and set_price/play still move the price. On
        release the walk resumes from the last bid. Raises KeyError for an unknown symbol.
        """
        with self._lock:
            state = self._state(symbol)
            self._catch_up()  # ticks up to now were due before the hold
            state.stream.held = bool(held)

    def play(self, symbol: str, bids: Iterable[float], interval: float = 1.0) -> float:
        """Drive a symbol along exact bids, one every `interval` sim seconds; returns sim time.

        Holds the symbol (it stays held afterwards; ``hold(symbol, False)`` releases it), then
        for each bid moves the clock forward by `interval`, generating every tick in between
        as advance() does (other symbols walk, the held one repeats its last bid), and makes
        the tick at the new time carry exactly that bid (rounded to the symbol's digits), as
        set_price() does: SL/TP and pending orders trigger on it. Raises KeyError for an
        unknown symbol and ValueError for interval <= 0 or a bid that is not a positive finite
        number, before anything moves.
        """
        path = [float(b) for b in bids]
        if not interval > 0 or not math.isfinite(interval):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        for bid in path:
            if not (math.isfinite(bid) and bid > 0):
                raise ValueError(f"bids must be positive finite prices, got {bid!r}")
        with self._lock:
            state = self._state(symbol)
            self._catch_up()
            state.stream.held = True
            for bid in path:
                self.clock.advance(interval)
                # A realtime clock may have run on too; the scripted tick is at the clock's now.
                self._market.advance_scripted(self.clock.now(), {symbol: bid},
                                              self._engine.on_tick, self._engine.on_step)
            return self._market.now

    def open_position(self, symbol: str, direction: str, volume: float, sl: float = 0.0,
                      tp: float = 0.0, magic: int = 0, comment: str = "") -> int:
        """Open a market position through the normal order path; returns its ticket.

        Raises SimTradeRejected (with .retcode) when the server refuses it.
        """
        kind = {"BUY": c.ORDER_TYPE_BUY, "SELL": c.ORDER_TYPE_SELL}.get(direction.upper())
        if kind is None:
            raise ValueError("direction must be 'BUY' or 'SELL'")
        with self._lock:
            spec = self._state(symbol).spec
            self._catch_up()
            if spec.filling_mode & c.SYMBOL_FILLING_FOK:
                filling = c.ORDER_FILLING_FOK
            elif spec.filling_mode & c.SYMBOL_FILLING_IOC:
                filling = c.ORDER_FILLING_IOC
            else:
                filling = c.ORDER_FILLING_RETURN
            result = self._engine.send(parse_request({
                "action": c.TRADE_ACTION_DEAL, "symbol": symbol, "volume": float(volume),
                "type": kind, "sl": float(sl), "tp": float(tp), "magic": magic,
                "comment": comment, "type_filling": filling,
            }))
            if result.retcode != c.TRADE_RETCODE_DONE:
                raise SimTradeRejected(result.retcode, result.comment)
            if not self._engine.hedging:
                pos = self._engine.netting_position(symbol)
                return pos.ticket if pos is not None else result.order
            return result.order

    def close_position_manually(self, ticket: int, volume: float | None = None) -> int:
        """Close (part of) a position as a human would; DEAL_REASON_CLIENT. Returns the deal."""
        with self._lock:
            self._catch_up()
            pos = self._ledger.positions.get(ticket)
            if pos is None:
                raise SimTradeRejected(c.TRADE_RETCODE_POSITION_CLOSED, "position not found")
            state = self._market.symbols[pos.symbol]
            if not state.market_open:
                raise SimTradeRejected(c.TRADE_RETCODE_MARKET_CLOSED, "market closed")
            volume = pos.volume if volume is None else float(volume)
            if volume > pos.volume + EPS:
                raise SimTradeRejected(c.TRADE_RETCODE_INVALID_CLOSE_VOLUME, "volume too big")
            if volume < pos.volume - EPS:
                self._engine.check_volume(state.spec, volume)
            price = self._engine.close_price(pos)
            _, deal = self._engine.execute(state.spec, opposite(pos.type), volume, price, 0.0,
                                           0.0, 0, "", pos, c.DEAL_REASON_CLIENT)
            return deal

    def set_market_open(self, symbol: str, is_open: bool) -> None:
        """Open or close the market of a symbol (closed -> TRADE_RETCODE_MARKET_CLOSED)."""
        with self._lock:
            self._state(symbol).market_open = bool(is_open)

    def set_account_mode(self, margin_mode: int) -> None:
        """Make the account hedging or netting (ACCOUNT_MARGIN_MODE_RETAIL_*): as if the
        terminal were logged in to another account of that kind. Call it while disconnected
        (``disconnect()``): a client sees it on its next initialize()/account_info()."""
        if margin_mode not in (c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING,
                               c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING):
            raise ValueError(f"margin_mode must be a retail hedging or netting mode, "
                             f"got {margin_mode!r}")
        with self._lock:
            self.config.margin_mode = int(margin_mode)

    def set_algo_trading(self, enabled: bool) -> None:
        """The terminal's Algo Trading button (off -> TRADE_RETCODE_CLIENT_DISABLES_AT)."""
        with self._lock:
            self._engine.algo_trading = bool(enabled)

    def set_symbol_trade_mode(self, symbol: str, mode: int) -> None:
        """Change a symbol's SYMBOL_TRADE_MODE_* (DISABLED, LONGONLY, CLOSEONLY...)."""
        with self._lock:
            state = self._state(symbol)
            state.spec = replace(state.spec, trade_mode=int(mode))
            state.stream.spec = state.spec

    # --- fault shortcuts (see faults.Faults) ----------------------------------------------
    def set_latency(self, seconds: float, function: str | None = None) -> None:
        """Every API call (or every call of `function`) sleeps `seconds` before running."""
        self.faults.set_latency(seconds, function)

    def fail_next(self, n: int = 1, function: str | None = None,
                  error: tuple[int, str] = DEFAULT_FAILURE) -> None:
        """The next n API calls (of `function`, or any) return None with `error`."""
        self.faults.fail_next(n, function, error)

    def disconnect(self) -> None:
        """Lose the IPC link until the next initialize()."""
        self.faults.disconnect()

    def move_before_next_order(self, symbol: str, bid: float) -> None:
        """The market moves to `bid` just before the next order_send executes."""
        self._state(symbol)
        self.faults.move_before_next_order(symbol, bid)

    def hide_position(self, ticket: int, calls: int | None = None) -> None:
        """positions_get leaves the open position out of its next `calls` answers that would
        show it (None: until show_position): a glitch, the position is still open."""
        self.faults.hide_position(ticket, calls)

    def show_position(self, ticket: int) -> None:
        """End hide_position: positions_get shows the position again."""
        self.faults.show_position(ticket)

    def delay_deals(self, position: int, calls: int) -> None:
        """history_deals_get leaves the position's deals out of its next `calls` answers that
        would show them: the history catching up after a close."""
        self.faults.delay_deals(position, calls)

    def uncertain_next_order(self, n: int = 1) -> None:
        """The next n order_send calls execute but return TRADE_RETCODE_TIMEOUT."""
        self.faults.uncertain_next_order(n)
