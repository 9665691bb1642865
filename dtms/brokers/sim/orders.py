"""Pending orders and close-by for the simulated trade server.

This module owns the PendingOrders mixin of TradeEngine: TRADE_ACTION_PENDING,
MODIFY, REMOVE and CLOSE_BY validation and execution, plus the per-tick
activation (limit, stop, stop-limit) and expiration of pending orders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from . import constants as c
from .ledger import COMMENT_MAX, PendingOrder
from .requests import Rejected, send_result
from .symbols import SymbolSpec
from .types import OrderSendResult, TradeRequest

if TYPE_CHECKING:
    from .ledger import Ledger, Position
    from .market import Market, SymbolState
    from .types import SimConfig


class _Engine(Protocol):
    """The mixin's self type: what it uses of :class:`~.trading.TradeEngine` (a Protocol, as
    mypy's docs advise for mixins, so that ``self`` is checked without an import cycle)."""
    config: SimConfig
    market: Market
    ledger: Ledger

    @property
    def hedging(self) -> bool: ...
    def now_msc(self) -> int: ...
    def equity(self) -> float: ...
    def used_margin(self) -> float: ...
    def symbol_state(self, symbol: str) -> SymbolState: ...
    def check_session(self, state: SymbolState) -> None: ...
    def check_volume(self, spec: SymbolSpec, volume: float) -> None: ...
    def check_filling(self, spec: SymbolSpec, filling: int) -> None: ...
    def check_direction_allowed(self, spec: SymbolSpec, order_type: int) -> None: ...
    def normalized(self, spec: SymbolSpec, price: float) -> float: ...
    def check_stops(self, spec: SymbolSpec, pos_type: int, ref: float, sl: float,
                    tp: float) -> None: ...
    def _commit_point(self, margin: float = 0.0) -> None: ...
    def netting_position(self, symbol: str) -> Position | None: ...
    def execute(self, spec: SymbolSpec, order_type: int, volume: float, price: float,
                sl: float, tp: float, magic: int, comment: str, pos: Position | None,
                reason: int, order_ticket: int | None = None,
                record_order: bool = True) -> tuple[int, int]: ...
    def close_part(self, pos: Position, volume: float, price: float, order_ticket: int,
                   reason: int, magic: int, comment: str, entry: int = ...) -> int: ...
    # the mixin's own, called on self
    def _price_on_grid(self, spec: SymbolSpec, price: float) -> float: ...
    def _pending_levels(self, spec: SymbolSpec, order_type: int, req: TradeRequest,
                        bid: float, ask: float) -> tuple[float, float, float, float]: ...
    def _expiration(self, spec: SymbolSpec, req: TradeRequest) -> int: ...
    def _frozen(self, order: PendingOrder, bid: float, ask: float) -> bool: ...
    def _active_order(self, ticket: int) -> PendingOrder: ...
    def _order_price(self, order: PendingOrder) -> float: ...
    def _fill_pending(self, order: PendingOrder, price: float) -> None: ...

_BUY_SIDE = (c.ORDER_TYPE_BUY_LIMIT, c.ORDER_TYPE_BUY_STOP, c.ORDER_TYPE_BUY_STOP_LIMIT)
_ORDER_MODE_FLAG = {
    c.ORDER_TYPE_BUY_LIMIT: c.SYMBOL_ORDER_LIMIT,
    c.ORDER_TYPE_SELL_LIMIT: c.SYMBOL_ORDER_LIMIT,
    c.ORDER_TYPE_BUY_STOP: c.SYMBOL_ORDER_STOP,
    c.ORDER_TYPE_SELL_STOP: c.SYMBOL_ORDER_STOP,
    c.ORDER_TYPE_BUY_STOP_LIMIT: c.SYMBOL_ORDER_STOP_LIMIT,
    c.ORDER_TYPE_SELL_STOP_LIMIT: c.SYMBOL_ORDER_STOP_LIMIT,
}
_DAY = 86_400


def activation_distance(order_type: int, price: float, bid: float, ask: float,
                        point: float) -> float:
    """Points between the market and a pending order's activation price (>0 = not yet)."""
    if order_type == c.ORDER_TYPE_BUY_LIMIT:
        return (ask - price) / point
    if order_type == c.ORDER_TYPE_SELL_LIMIT:
        return (price - bid) / point
    if order_type in (c.ORDER_TYPE_BUY_STOP, c.ORDER_TYPE_BUY_STOP_LIMIT):
        return (price - ask) / point
    return (bid - price) / point  # SELL_STOP, SELL_STOP_LIMIT


class PendingOrders:
    """Mixin: pending-order actions and events of TradeEngine."""

    def _price_on_grid(self: _Engine, spec: SymbolSpec, price: float) -> float:
        if price <= 0 or abs(price / spec.point - round(price / spec.point)) > 1e-4:
            raise Rejected(c.TRADE_RETCODE_INVALID_PRICE)
        return round(price, spec.digits)

    def _pending_levels(self: _Engine, spec: SymbolSpec, order_type: int, req: TradeRequest,
                        bid: float, ask: float) -> tuple[float, float, float, float]:
        """Validated (price, stoplimit, sl, tp) of a new or modified pending order."""
        price = self._price_on_grid(spec, req.price)
        need = spec.stops_level + 1 - 1e-6  # strictly beyond stops_level, as check_stops
        if activation_distance(order_type, price, bid, ask, spec.point) < need:
            raise Rejected(c.TRADE_RETCODE_INVALID_PRICE)
        stoplimit = 0.0
        fill_price = price
        if order_type in (c.ORDER_TYPE_BUY_STOP_LIMIT, c.ORDER_TYPE_SELL_STOP_LIMIT):
            stoplimit = self._price_on_grid(spec, req.stoplimit)
            sign = 1.0 if order_type == c.ORDER_TYPE_BUY_STOP_LIMIT else -1.0
            if sign * (price - stoplimit) / spec.point < need:
                raise Rejected(c.TRADE_RETCODE_INVALID_PRICE)
            fill_price = stoplimit
        sl = self.normalized(spec, req.sl)
        tp = self.normalized(spec, req.tp)
        pos_type = c.POSITION_TYPE_BUY if order_type in _BUY_SIDE else c.POSITION_TYPE_SELL
        self.check_stops(spec, pos_type, fill_price, sl, tp)
        return price, stoplimit, sl, tp

    def _expiration(self: _Engine, spec: SymbolSpec, req: TradeRequest) -> int:
        if req.type_time not in range(4) or not spec.expiration_mode & (1 << req.type_time):
            raise Rejected(c.TRADE_RETCODE_INVALID_EXPIRATION)
        now = int(self.market.now)
        if req.type_time == c.ORDER_TIME_GTC:
            return 0
        if req.type_time == c.ORDER_TIME_DAY:
            return now - now % _DAY + _DAY
        if req.expiration <= now:
            raise Rejected(c.TRADE_RETCODE_INVALID_EXPIRATION)
        if req.type_time == c.ORDER_TIME_SPECIFIED_DAY:
            return req.expiration - req.expiration % _DAY + _DAY
        return req.expiration

    def _frozen(self: _Engine, order: PendingOrder, bid: float, ask: float) -> bool:
        spec = self.market.symbols[order.symbol].spec
        if spec.freeze_level <= 0:
            return False
        dist = activation_distance(order.type, order.price_open, bid, ask, spec.point)
        return dist <= spec.freeze_level + 1e-6

    # --- TRADE_ACTION_PENDING --------------------------------------------------------
    def _pending(self: _Engine, req: TradeRequest, request_id: int) -> OrderSendResult:
        state = self.symbol_state(req.symbol)
        spec = state.spec
        if req.type not in _ORDER_MODE_FLAG or not spec.order_mode & _ORDER_MODE_FLAG[req.type]:
            raise Rejected(c.TRADE_RETCODE_INVALID_ORDER)
        self.check_session(state)
        self.check_volume(spec, req.volume)
        self.check_direction_allowed(spec, req.type)
        self.check_filling(spec, req.type_filling)
        bid, ask = state.stream.bid, state.stream.ask
        price, stoplimit, sl, tp = self._pending_levels(spec, req.type, req, bid, ask)
        expiration = self._expiration(spec, req)
        if self.config.limit_orders and len(self.ledger.orders) >= self.config.limit_orders:
            raise Rejected(c.TRADE_RETCODE_LIMIT_ORDERS)
        self._commit_point()
        ticket = self.ledger.next_order_ticket()
        reason = c.ORDER_REASON_EXPERT if req.magic else c.ORDER_REASON_CLIENT
        self.ledger.orders[ticket] = PendingOrder(
            ticket=ticket, symbol=spec.name, type=req.type, volume_initial=req.volume,
            price_open=price, sl=sl, tp=tp, price_stoplimit=stoplimit, type_time=req.type_time,
            type_filling=req.type_filling, expiration=expiration, magic=req.magic,
            comment=req.comment[:COMMENT_MAX], reason=reason, time_setup_msc=self.now_msc(),
        )
        return send_result(req, c.TRADE_RETCODE_DONE, request_id, order=ticket,
                           volume=req.volume)

    def _active_order(self: _Engine, ticket: int) -> PendingOrder:
        order = self.ledger.orders.get(ticket)
        if order is None:
            raise Rejected(c.TRADE_RETCODE_INVALID)
        return order

    # --- TRADE_ACTION_MODIFY ---------------------------------------------------------
    def _modify(self: _Engine, req: TradeRequest, request_id: int) -> OrderSendResult:
        order = self._active_order(req.order)
        state = self.market.symbols[order.symbol]
        spec = state.spec
        self.check_session(state)
        bid, ask = state.stream.bid, state.stream.ask
        price, stoplimit, sl, tp = self._pending_levels(spec, order.type, req, bid, ask)
        expiration = self._expiration(spec, req)
        if (price, stoplimit, sl, tp, req.type_time, expiration) == (
                order.price_open, order.price_stoplimit, order.sl, order.tp, order.type_time,
                order.expiration):
            raise Rejected(c.TRADE_RETCODE_NO_CHANGES)
        if self._frozen(order, bid, ask):
            raise Rejected(c.TRADE_RETCODE_FROZEN)
        self._commit_point()
        order.price_open, order.price_stoplimit, order.sl, order.tp = price, stoplimit, sl, tp
        order.type_time, order.expiration = req.type_time, expiration
        return send_result(req, c.TRADE_RETCODE_DONE, request_id, order=order.ticket)

    # --- TRADE_ACTION_REMOVE ---------------------------------------------------------
    def _remove(self: _Engine, req: TradeRequest, request_id: int) -> OrderSendResult:
        order = self._active_order(req.order)
        state = self.market.symbols[order.symbol]
        self.check_session(state)
        if self._frozen(order, state.stream.bid, state.stream.ask):
            raise Rejected(c.TRADE_RETCODE_FROZEN)
        self._commit_point()
        self.ledger.archive_order(order, c.ORDER_STATE_CANCELED, self.now_msc(),
                                  self._order_price(order))
        return send_result(req, c.TRADE_RETCODE_DONE, request_id, order=order.ticket)

    # --- TRADE_ACTION_CLOSE_BY -------------------------------------------------------
    def _close_by(self: _Engine, req: TradeRequest, request_id: int) -> OrderSendResult:
        if not self.hedging:
            raise Rejected(c.TRADE_RETCODE_INVALID)
        pos = self.ledger.positions.get(req.position)
        by = self.ledger.positions.get(req.position_by)
        if pos is None or by is None:
            raise Rejected(c.TRADE_RETCODE_POSITION_CLOSED)
        if pos is by or pos.symbol != by.symbol or pos.type == by.type:
            raise Rejected(c.TRADE_RETCODE_INVALID)
        state = self.market.symbols[pos.symbol]
        if not state.spec.order_mode & c.SYMBOL_ORDER_CLOSEBY:
            raise Rejected(c.TRADE_RETCODE_INVALID_ORDER)
        self.check_session(state)
        self._commit_point()
        volume = min(pos.volume, by.volume)
        price = by.price_open
        ticket = self.ledger.next_order_ticket()
        now = self.now_msc()
        reason = c.DEAL_REASON_EXPERT if req.magic else c.DEAL_REASON_CLIENT
        comment = req.comment or f"#{pos.ticket} by #{by.ticket}"
        deal = self.close_part(pos, volume, price, ticket, reason, req.magic, comment,
                               entry=c.DEAL_ENTRY_OUT_BY)
        self.close_part(by, volume, price, ticket, reason, req.magic, comment,
                        entry=c.DEAL_ENTRY_OUT_BY)
        self.ledger.add_history_order(
            ticket=ticket, symbol=pos.symbol, type=c.ORDER_TYPE_CLOSE_BY, time_setup_msc=now,
            time_done_msc=now, state=c.ORDER_STATE_FILLED, magic=req.magic,
            position_id=pos.identifier, position_by_id=by.identifier, reason=reason,
            volume_initial=volume, volume_current=0.0, price_open=price, sl=0.0, tp=0.0,
            price_current=price, comment=comment,
        )
        return send_result(req, c.TRADE_RETCODE_DONE, request_id, deal=deal, order=ticket,
                           volume=volume, price=price)

    # --- events ----------------------------------------------------------------------
    def _order_price(self: _Engine, order: PendingOrder) -> float:
        stream = self.market.symbols[order.symbol].stream
        return stream.ask if order.type in _BUY_SIDE else stream.bid

    def trigger_pending(self: _Engine, symbol: str) -> None:
        """Activate the pending orders of `symbol` whose price the market has reached."""
        state = self.market.symbols[symbol]
        if not state.market_open:
            return
        bid, ask = state.stream.bid, state.stream.ask
        for order in [o for o in self.ledger.orders.values() if o.symbol == symbol]:
            if activation_distance(order.type, order.price_open, bid, ask,
                                   state.spec.point) > 1e-6:
                continue
            if order.type in (c.ORDER_TYPE_BUY_STOP_LIMIT, c.ORDER_TYPE_SELL_STOP_LIMIT):
                buy = order.type == c.ORDER_TYPE_BUY_STOP_LIMIT
                order.type = c.ORDER_TYPE_BUY_LIMIT if buy else c.ORDER_TYPE_SELL_LIMIT
                order.price_open, order.price_stoplimit = order.price_stoplimit, 0.0
                continue
            self._fill_pending(order, ask if order.type in _BUY_SIDE else bid)

    def _fill_pending(self: _Engine, order: PendingOrder, price: float) -> None:
        spec = self.market.symbols[order.symbol].spec
        side = c.ORDER_TYPE_BUY if order.type in _BUY_SIDE else c.ORDER_TYPE_SELL
        pos = None if self.hedging else self.netting_position(order.symbol)
        added = order.volume_current
        if pos is not None and pos.type != side:
            added = max(0.0, order.volume_current - pos.volume)
        need = self.market.margin(order.symbol, added, price)
        if added and self.equity() - self.used_margin() - need < 0:
            self.ledger.archive_order(order, c.ORDER_STATE_REJECTED, self.now_msc(), price)
            return
        _, _ = self.execute(spec, side, order.volume_current, price, order.sl, order.tp,
                            order.magic, order.comment, pos, order.reason,
                            order_ticket=order.ticket, record_order=False)
        position_id = pos.identifier if pos is not None else order.ticket
        self.ledger.archive_order(order, c.ORDER_STATE_FILLED, self.now_msc(), price,
                                  position_id=position_id)

    def expire_pending(self: _Engine) -> None:
        """Move pending orders past their expiration to the history as EXPIRED."""
        now = self.market.now
        for order in list(self.ledger.orders.values()):
            if order.expiration and now >= order.expiration:
                self.ledger.archive_order(order, c.ORDER_STATE_EXPIRED, self.now_msc(),
                                          self._order_price(order))
