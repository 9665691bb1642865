"""The simulated trade server: validates and executes market deals and SL/TP changes.

This module owns TradeEngine, which applies MetaTrader 5 rules to a parsed
TradeRequest (retcodes, stops and freeze levels, volume steps, filling modes,
requotes, margin) and, when a request passes, changes the Ledger. It also runs
the server-side events on every tick: SL/TP triggers and stop-out. Pending
orders and close-by live in the PendingOrders mixin (orders.py). A rejected
request changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from . import constants as c
from . import rules
from .ledger import COMMENT_MAX, Ledger, Position, position_record
from .market import Market, SymbolState
from .orders import PendingOrders
from .requests import Rejected, send_result
from .symbols import SymbolSpec
from .types import OrderCheckResult, OrderSendResult, SimConfig, TradePosition, TradeRequest

EPS = rules.EPS


class DryRun(Exception):  # noqa: N818 - control flow for order_check, never escapes
    """Raised instead of committing when a request is only being checked."""

    def __init__(self, margin: float) -> None:
        super().__init__(margin)
        self.margin = margin


def opposite(order_type: int) -> int:
    """BUY <-> SELL."""
    return c.ORDER_TYPE_SELL if order_type == c.ORDER_TYPE_BUY else c.ORDER_TYPE_BUY


def api_reason(magic: int) -> int:
    """Order/deal/position reason of a request sent through the API."""
    return c.DEAL_REASON_EXPERT if magic else c.DEAL_REASON_CLIENT


class TradeEngine(PendingOrders):
    """Executes trade requests against a Market and a Ledger."""

    def __init__(self, config: SimConfig, market: Market, ledger: Ledger) -> None:
        self.config = config
        self.market = market
        self.ledger = ledger
        self.algo_trading = config.algo_trading
        self._dry = False

    # --- account -------------------------------------------------------------------
    @property
    def hedging(self) -> bool:
        """True unless the account is a netting (or exchange) account."""
        return self.config.margin_mode == c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING

    def now_msc(self) -> int:
        """Current sim time in milliseconds."""
        return int(round(self.market.now * 1000))

    def close_price(self, pos: Position) -> float:
        """Price a position would close at now: bid for BUY, ask for SELL."""
        stream = self.market.symbols[pos.symbol].stream
        return stream.bid if pos.type == c.POSITION_TYPE_BUY else stream.ask

    def position_profit(self, pos: Position) -> float:
        """Floating profit of an open position in the account currency."""
        return self.market.profit(pos.symbol, pos.type, pos.volume, pos.price_open,
                                  self.close_price(pos))

    def position_view(self, pos: Position) -> TradePosition:
        """The TradePosition namedtuple for an open position."""
        return position_record(pos, self.close_price(pos), self.position_profit(pos))

    def floating(self) -> float:
        """Sum of floating profits and swaps."""
        total = sum((self.position_profit(p) + p.swap for p in self.ledger.positions.values()),
                    0.0)
        return round(total, 2)

    def used_margin(self) -> float:
        """Margin held by all open positions."""
        total = sum((self.market.margin(p.symbol, p.volume, p.price_open)
                     for p in self.ledger.positions.values()), 0.0)
        return round(total, 2)

    def equity(self) -> float:
        """Balance + credit + floating profit."""
        return round(self.ledger.balance + self.ledger.credit + self.floating(), 2)

    # --- entry points --------------------------------------------------------------
    def _handler(self, action: int) -> Callable[[TradeRequest, int], OrderSendResult] | None:
        return {
            c.TRADE_ACTION_DEAL: self._deal,
            c.TRADE_ACTION_SLTP: self._sltp,
            c.TRADE_ACTION_PENDING: self._pending,
            c.TRADE_ACTION_MODIFY: self._modify,
            c.TRADE_ACTION_REMOVE: self._remove,
            c.TRADE_ACTION_CLOSE_BY: self._close_by,
        }.get(action)

    def send(self, req: TradeRequest) -> OrderSendResult:
        """Validate and execute a request; a rejection leaves everything unchanged."""
        request_id = self.ledger.next_request_id()
        handler = self._handler(req.action)
        if handler is None:
            return send_result(req, c.TRADE_RETCODE_INVALID, request_id)
        try:
            return handler(req, request_id)
        except Rejected as rej:
            return send_result(req, rej.retcode, request_id, bid=rej.bid, ask=rej.ask,
                               comment=rej.comment)

    def check(self, req: TradeRequest) -> OrderCheckResult:
        """order_check: run every validation of send() without executing anything."""
        balance, equity = self.ledger.balance, self.equity()
        used, margin, retcode, comment = self.used_margin(), 0.0, 0, "Done"
        handler = self._handler(req.action)
        self._dry = True
        try:
            if handler is None:
                raise Rejected(c.TRADE_RETCODE_INVALID)
            handler(req, 0)
        except DryRun as dry:
            margin = dry.margin
        except Rejected as rej:
            retcode, comment = rej.retcode, rej.comment
        finally:
            self._dry = False
        total = used + margin
        return OrderCheckResult(
            retcode=retcode, balance=balance, equity=equity, profit=self.floating(),
            margin=round(total, 2), margin_free=round(equity - total, 2),
            margin_level=round(equity / total * 100, 2) if total else 0.0,
            comment=comment, request=req,
        )

    def _commit_point(self, margin: float = 0.0) -> None:
        if self._dry:
            raise DryRun(margin)

    # --- shared validation ---------------------------------------------------------
    def symbol_state(self, symbol: str) -> SymbolState:
        """Known symbol or Rejected(INVALID)."""
        state = self.market.get(symbol)
        if state is None:
            raise Rejected(c.TRADE_RETCODE_INVALID)
        return state

    def check_session(self, state: SymbolState) -> None:
        """Algo trading, symbol trade mode and market hours."""
        if not self.algo_trading:
            raise Rejected(c.TRADE_RETCODE_CLIENT_DISABLES_AT)
        if state.spec.trade_mode == c.SYMBOL_TRADE_MODE_DISABLED:
            raise Rejected(c.TRADE_RETCODE_TRADE_DISABLED)
        if not state.market_open:
            raise Rejected(c.TRADE_RETCODE_MARKET_CLOSED)

    check_volume = staticmethod(rules.check_volume)
    check_filling = staticmethod(rules.check_filling)
    check_direction_allowed = staticmethod(rules.check_direction_allowed)
    normalized = staticmethod(rules.normalized)
    check_stops = staticmethod(rules.check_stops)

    def check_deviation(self, state: SymbolState, req: TradeRequest, exec_price: float) -> None:
        """Instant/request execution requotes when the price moved beyond `deviation`."""
        spec = state.spec
        if req.price <= 0 or spec.exemode not in (c.SYMBOL_TRADE_EXECUTION_INSTANT,
                                                  c.SYMBOL_TRADE_EXECUTION_REQUEST):
            return
        if abs(req.price - exec_price) / spec.point > req.deviation + 1e-6:
            raise Rejected(c.TRADE_RETCODE_REQUOTE, bid=state.stream.bid, ask=state.stream.ask)

    def check_exposure(self, spec: SymbolSpec, order_type: int, volume: float,
                       new_position: bool) -> None:
        """volume_limit per symbol and direction, and the account's positions limit."""
        if spec.volume_limit > 0:
            held = sum(p.volume for p in self.ledger.positions.values()
                       if p.symbol == spec.name and p.type == order_type)
            if held + volume > spec.volume_limit + EPS:
                raise Rejected(c.TRADE_RETCODE_LIMIT_VOLUME)
        limit = self.config.limit_positions
        if new_position and limit and len(self.ledger.positions) >= limit:
            raise Rejected(c.TRADE_RETCODE_LIMIT_POSITIONS)

    def check_margin(self, symbol: str, volume: float, price: float) -> float:
        """Margin the new exposure needs; Rejected(NO_MONEY) if free margin is short."""
        need = self.market.margin(symbol, volume, price)
        if self.equity() - self.used_margin() - need < 0:
            raise Rejected(c.TRADE_RETCODE_NO_MONEY)
        return need

    # --- TRADE_ACTION_DEAL -----------------------------------------------------------
    def _deal(self, req: TradeRequest, request_id: int) -> OrderSendResult:
        state = self.symbol_state(req.symbol)
        spec = state.spec
        if req.type not in (c.ORDER_TYPE_BUY, c.ORDER_TYPE_SELL):
            raise Rejected(c.TRADE_RETCODE_INVALID_ORDER)
        self.check_session(state)
        self.check_volume(spec, req.volume)
        self.check_filling(spec, req.type_filling)
        bid, ask = state.stream.bid, state.stream.ask
        price = ask if req.type == c.ORDER_TYPE_BUY else bid
        pos: Position | None = None
        if req.position:
            pos = self.ledger.positions.get(req.position)
            if pos is None:
                raise Rejected(c.TRADE_RETCODE_POSITION_CLOSED)
            if pos.symbol != spec.name or pos.type == req.type:
                raise Rejected(c.TRADE_RETCODE_INVALID)
            if req.volume > pos.volume + EPS:
                raise Rejected(c.TRADE_RETCODE_INVALID_CLOSE_VOLUME)
        elif not self.hedging:
            pos = self.netting_position(spec.name)
        sl = tp = margin = 0.0
        opening = pos is None or pos.type == req.type or req.volume > pos.volume + EPS
        if opening and not req.position:
            self.check_direction_allowed(spec, req.type)
        self.check_deviation(state, req, price)
        if opening and not req.position:
            sl = self.normalized(spec, req.sl)
            tp = self.normalized(spec, req.tp)
            self.check_stops(spec, req.type, bid if req.type == c.ORDER_TYPE_BUY else ask, sl, tp)
            added = req.volume - (pos.volume if pos is not None and pos.type != req.type else 0)
            self.check_exposure(spec, req.type, added, new_position=pos is None)
            margin = self.check_margin(spec.name, added, price)
        self._commit_point(margin)
        ticket, deal_ticket = self.execute(spec, req.type, req.volume, price, sl, tp, req.magic,
                                           req.comment, pos, api_reason(req.magic))
        return send_result(req, c.TRADE_RETCODE_DONE, request_id, deal=deal_ticket,
                           order=ticket, volume=req.volume, price=price, bid=bid, ask=ask)

    def netting_position(self, symbol: str) -> Position | None:
        """The single position of a symbol on a netting account."""
        for pos in self.ledger.positions.values():
            if pos.symbol == symbol:
                return pos
        return None

    def execute(self, spec: SymbolSpec, order_type: int, volume: float, price: float,
                sl: float, tp: float, magic: int, comment: str, pos: Position | None,
                reason: int, order_ticket: int | None = None,
                record_order: bool = True) -> tuple[int, int]:
        """Fill a market order; returns (order ticket, deal ticket). No validation."""
        now = self.now_msc()
        ticket = order_ticket or self.ledger.next_order_ticket()
        comment = comment[:COMMENT_MAX]
        if pos is None:
            pos = Position(ticket=ticket, symbol=spec.name, type=order_type, volume=volume,
                           price_open=price, sl=sl, tp=tp, magic=magic, comment=comment,
                           reason=reason, time_msc=now, time_update_msc=now)
            self.ledger.positions[ticket] = pos
            deal = self._write_deal(pos, ticket, order_type, c.DEAL_ENTRY_IN, volume, price,
                                    0.0, reason, magic, comment)
        elif pos.type == order_type:  # netting: add to the position
            total = round(pos.volume + volume, 8)
            pos.price_open = round((pos.price_open * pos.volume + price * volume) / total, 8)
            pos.volume = total
            pos.sl, pos.tp = sl or pos.sl, tp or pos.tp
            pos.time_update_msc = now
            deal = self._write_deal(pos, ticket, order_type, c.DEAL_ENTRY_IN, volume, price,
                                    0.0, reason, magic, comment)
        elif volume <= pos.volume + EPS:  # close or reduce
            deal = self.close_part(pos, volume, price, ticket, reason, magic, comment)
        else:  # netting reversal
            profit = self.market.profit(pos.symbol, pos.type, pos.volume, pos.price_open, price)
            remaining = round(volume - pos.volume, 8)
            deal = self._write_deal(pos, ticket, order_type, c.DEAL_ENTRY_INOUT, volume, price,
                                    profit, reason, magic, comment)
            pos.type, pos.volume, pos.price_open = order_type, remaining, price
            pos.sl, pos.tp, pos.time_update_msc = sl, tp, now
        if not record_order:
            return ticket, deal
        self.ledger.add_history_order(
            ticket=ticket, symbol=spec.name, type=order_type, time_setup_msc=now,
            time_done_msc=now, state=c.ORDER_STATE_FILLED, magic=magic,
            position_id=pos.identifier, reason=reason, volume_initial=volume,
            volume_current=0.0, price_open=price, sl=sl, tp=tp, price_current=price,
            comment=comment,
        )
        return ticket, deal

    def close_part(self, pos: Position, volume: float, price: float, order_ticket: int,
                   reason: int, magic: int, comment: str, entry: int = c.DEAL_ENTRY_OUT) -> int:
        """Close `volume` of a position at `price`; removes it when nothing is left."""
        profit = self.market.profit(pos.symbol, pos.type, volume, pos.price_open, price)
        deal = self._write_deal(pos, order_ticket, opposite(pos.type), entry, volume, price,
                                profit, reason, magic, comment)
        left = round(pos.volume - volume, 8)
        if left <= EPS:
            self.ledger.positions.pop(pos.ticket, None)
        else:
            pos.volume = left
            pos.time_update_msc = self.now_msc()
        return deal

    def _write_deal(self, pos: Position, order: int, deal_type: int, entry: int, volume: float,
                    price: float, profit: float, reason: int, magic: int, comment: str) -> int:
        charge = round(self.config.commission_per_lot * volume, 2)
        commission = -charge if charge else 0.0
        return self.ledger.add_deal(
            order=order, time_msc=self.now_msc(), type=deal_type, entry=entry, magic=magic,
            position_id=pos.identifier, reason=reason, volume=volume, price=price,
            commission=commission, profit=profit, symbol=pos.symbol, comment=comment,
        ).ticket

    # --- TRADE_ACTION_SLTP -----------------------------------------------------------
    def _sltp(self, req: TradeRequest, request_id: int) -> OrderSendResult:
        pos = self.ledger.positions.get(req.position)
        if pos is None:
            raise Rejected(c.TRADE_RETCODE_POSITION_CLOSED)
        if req.symbol and req.symbol != pos.symbol:
            raise Rejected(c.TRADE_RETCODE_INVALID)
        state = self.market.symbols[pos.symbol]
        spec = state.spec
        self.check_session(state)
        sl = self.normalized(spec, req.sl)
        tp = self.normalized(spec, req.tp)
        if sl == round(pos.sl, spec.digits) and tp == round(pos.tp, spec.digits):
            raise Rejected(c.TRADE_RETCODE_NO_CHANGES)
        ref = self.close_price(pos)
        self.check_stops(spec, pos.type, ref, sl, tp)
        if spec.freeze_level > 0:
            sign = 1.0 if pos.type == c.POSITION_TYPE_BUY else -1.0
            freeze = spec.freeze_level + 1e-6
            if pos.sl and sign * (ref - pos.sl) / spec.point <= freeze:
                raise Rejected(c.TRADE_RETCODE_FROZEN)
            if pos.tp and sign * (pos.tp - ref) / spec.point <= freeze:
                raise Rejected(c.TRADE_RETCODE_FROZEN)
        self._commit_point()
        pos.sl, pos.tp = sl, tp
        pos.time_update_msc = self.now_msc()
        return send_result(req, c.TRADE_RETCODE_DONE, request_id, bid=state.stream.bid,
                           ask=state.stream.ask)

    # --- server-side events ----------------------------------------------------------
    def on_tick(self, symbol: str) -> None:
        """After a tick of `symbol`: trigger SL/TP, then pending orders."""
        state = self.market.symbols[symbol]
        bid, ask = state.stream.bid, state.stream.ask
        for pos in [p for p in self.ledger.positions.values() if p.symbol == symbol]:
            buy = pos.type == c.POSITION_TYPE_BUY
            price = bid if buy else ask
            # the fill: the tick's price, or with recorded history the level itself when the
            # path between two generated ticks crossed it (stream.fill_price)
            if pos.sl and (price <= pos.sl if buy else price >= pos.sl):
                self.close_by_server(pos, state.stream.fill_price(pos.sl, price, buy),
                                     c.DEAL_REASON_SL, f"[sl {pos.sl:.{state.spec.digits}f}]")
            elif pos.tp and (price >= pos.tp if buy else price <= pos.tp):
                self.close_by_server(pos, state.stream.fill_price(pos.tp, price, buy),
                                     c.DEAL_REASON_TP, f"[tp {pos.tp:.{state.spec.digits}f}]")
        if self.ledger.orders:
            self.trigger_pending(symbol)

    def on_step(self) -> None:
        """After every time step: expire pending orders, then enforce stop-out."""
        if self.ledger.orders:
            self.expire_pending()
        if self.config.stop_out and self.ledger.positions:
            self.stop_out()

    def close_by_server(self, pos: Position, price: float, reason: int, comment: str) -> int:
        """Close a whole position on a server event (SL, TP, stop-out); returns deal ticket."""
        ticket = self.ledger.next_order_ticket()
        now = self.now_msc()
        volume = pos.volume
        deal = self.close_part(pos, volume, price, ticket, reason, pos.magic, comment)
        self.ledger.add_history_order(
            ticket=ticket, symbol=pos.symbol, type=opposite(pos.type), time_setup_msc=now,
            time_done_msc=now, state=c.ORDER_STATE_FILLED, magic=pos.magic,
            position_id=pos.identifier, reason=reason, volume_initial=volume,
            volume_current=0.0, price_open=price, sl=pos.sl, tp=pos.tp, price_current=price,
            comment=comment,
        )
        return deal

    def stop_out(self) -> None:
        """Close the worst position while the margin level is below margin_so_so."""
        while self.ledger.positions:
            margin = self.used_margin()
            if margin <= 0:
                return
            level = self.equity() / margin * 100.0
            if level >= self.config.margin_so_so:
                return
            worst = min(self.ledger.positions.values(), key=self.position_profit)
            self.close_by_server(worst, self.close_price(worst), c.DEAL_REASON_SO,
                                 f"[so {level:.2f}%]")
