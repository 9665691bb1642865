"""Account book of the simulated trade server: balance, positions, orders and deals.

This module owns the mutable trading records (Position, PendingOrder), the
immutable history (TradeOrder / TradeDeal namedtuples), ticket counters and
the conversion of records into the MetaTrader5 result shapes. It performs no
validation; trading.py decides what happens and writes it here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from . import constants as c
from .types import TradeDeal, TradeOrder, TradePosition

ORDER_TICKET_START = 50_000_001
DEAL_TICKET_START = 40_000_001
COMMENT_MAX = 31  # MT5 truncates order comments to 31 characters


@dataclass
class Position:
    """An open position (mutable while open)."""

    ticket: int
    symbol: str
    type: int
    volume: float
    price_open: float
    sl: float
    tp: float
    magic: int
    comment: str
    reason: int
    time_msc: int
    time_update_msc: int
    identifier: int = 0
    swap: float = 0.0
    external_id: str = ""

    def __post_init__(self) -> None:
        if not self.identifier:
            self.identifier = self.ticket


@dataclass
class PendingOrder:
    """A pending order waiting in the book (mutable while active)."""

    ticket: int
    symbol: str
    type: int
    volume_initial: float
    price_open: float
    sl: float
    tp: float
    price_stoplimit: float
    type_time: int
    type_filling: int
    expiration: int
    magic: int
    comment: str
    reason: int
    time_setup_msc: int
    state: int = c.ORDER_STATE_PLACED
    volume_current: float = field(default=0.0)

    def __post_init__(self) -> None:
        if not self.volume_current:
            self.volume_current = self.volume_initial


class Ledger:
    """Balance, open positions, active orders and the deal/order history."""

    def __init__(self, balance: float, first_order: int = ORDER_TICKET_START,
                 first_deal: int = DEAL_TICKET_START) -> None:
        self.balance = float(balance)
        self.credit = 0.0
        self.positions: dict[int, Position] = {}
        self.orders: dict[int, PendingOrder] = {}
        self.history_orders: list[TradeOrder] = []
        self.deals: list[TradeDeal] = []
        self._order_tickets = itertools.count(first_order)
        self._deal_tickets = itertools.count(first_deal)
        self._request_ids = itertools.count(1)

    def next_order_ticket(self) -> int:
        """A fresh order ticket (positions reuse their opening order's ticket)."""
        return next(self._order_tickets)

    def next_request_id(self) -> int:
        """A fresh OrderSendResult.request_id."""
        return next(self._request_ids)

    def add_deal(self, *, order: int, time_msc: int, type: int, entry: int, magic: int,
                 position_id: int, reason: int, volume: float, price: float,
                 commission: float = 0.0, swap: float = 0.0, profit: float = 0.0,
                 symbol: str = "", comment: str = "") -> TradeDeal:
        """Record a deal and apply its money to the balance."""
        deal = TradeDeal(
            ticket=next(self._deal_tickets), order=order, time=time_msc // 1000,
            time_msc=time_msc, type=type, entry=entry, magic=magic, position_id=position_id,
            reason=reason, volume=volume, price=price, commission=commission, swap=swap,
            profit=profit, fee=0.0, symbol=symbol, comment=comment[:COMMENT_MAX],
            external_id="",
        )
        self.deals.append(deal)
        self.balance = round(self.balance + profit + commission + swap, 2)
        return deal

    def add_history_order(self, *, ticket: int, symbol: str, type: int, time_setup_msc: int,
                          time_done_msc: int, state: int, magic: int, position_id: int,
                          reason: int, volume_initial: float, volume_current: float,
                          price_open: float, sl: float, tp: float, price_current: float,
                          comment: str, type_time: int = c.ORDER_TIME_GTC,
                          type_filling: int = c.ORDER_FILLING_FOK, expiration: int = 0,
                          price_stoplimit: float = 0.0, position_by_id: int = 0) -> TradeOrder:
        """Record a finished (filled, canceled, expired) order."""
        order = TradeOrder(
            ticket=ticket, time_setup=time_setup_msc // 1000, time_setup_msc=time_setup_msc,
            time_done=time_done_msc // 1000, time_done_msc=time_done_msc,
            time_expiration=expiration, type=type, type_time=type_time,
            type_filling=type_filling, state=state, magic=magic, position_id=position_id,
            position_by_id=position_by_id, reason=reason, volume_initial=volume_initial,
            volume_current=volume_current, price_open=price_open, sl=sl, tp=tp,
            price_current=price_current, price_stoplimit=price_stoplimit, symbol=symbol,
            comment=comment[:COMMENT_MAX], external_id="",
        )
        self.history_orders.append(order)
        return order

    def archive_order(self, order: PendingOrder, state: int, time_msc: int,
                      price_current: float, position_id: int = 0) -> None:
        """Move an active pending order to the history with a final state."""
        self.orders.pop(order.ticket, None)
        filled = state == c.ORDER_STATE_FILLED
        self.add_history_order(
            ticket=order.ticket, symbol=order.symbol, type=order.type,
            time_setup_msc=order.time_setup_msc, time_done_msc=time_msc, state=state,
            magic=order.magic, position_id=position_id, reason=order.reason,
            volume_initial=order.volume_initial,
            volume_current=0.0 if filled else order.volume_current,
            price_open=order.price_open, sl=order.sl, tp=order.tp, price_current=price_current,
            comment=order.comment, type_time=order.type_time, type_filling=order.type_filling,
            expiration=order.expiration, price_stoplimit=order.price_stoplimit,
        )


def position_record(pos: Position, price_current: float, profit: float) -> TradePosition:
    """The MetaTrader5 TradePosition view of an open position."""
    return TradePosition(
        ticket=pos.ticket, time=pos.time_msc // 1000, time_msc=pos.time_msc,
        time_update=pos.time_update_msc // 1000, time_update_msc=pos.time_update_msc,
        type=pos.type, magic=pos.magic, identifier=pos.identifier, reason=pos.reason,
        volume=pos.volume, price_open=pos.price_open, sl=pos.sl, tp=pos.tp,
        price_current=price_current, swap=pos.swap, profit=profit, symbol=pos.symbol,
        comment=pos.comment, external_id=pos.external_id,
    )


def order_record(order: PendingOrder, price_current: float) -> TradeOrder:
    """The MetaTrader5 TradeOrder view of an active pending order."""
    return TradeOrder(
        ticket=order.ticket, time_setup=order.time_setup_msc // 1000,
        time_setup_msc=order.time_setup_msc, time_done=0, time_done_msc=0,
        time_expiration=order.expiration, type=order.type, type_time=order.type_time,
        type_filling=order.type_filling, state=order.state, magic=order.magic,
        position_id=0, position_by_id=0, reason=order.reason,
        volume_initial=order.volume_initial, volume_current=order.volume_current,
        price_open=order.price_open, sl=order.sl, tp=order.tp, price_current=price_current,
        price_stoplimit=order.price_stoplimit, symbol=order.symbol, comment=order.comment,
        external_id="",
    )
