"""The trade actor: one per registered position.

It owns its :class:`~dtms.model.Trade` while the trade is managed. It follows the position as
the position watcher reports it: changes made outside DTMS (volume reduced, SL/TP moved) are
adopted, persisted and logged; when the position disappears at the broker, it confirms the
absence with the broker, reads the deal history to learn why (SL, TP, manual, stop-out...),
persists the trade as CLOSED with that reason, tells the registry, and exits normally (it is a
transient child: a normal exit is not restarted).

Every change is written to the store and acknowledged (durable) before the actor moves on, so a
restart resumes from exactly the last state. On every (re)start the actor reloads its trade from
the store: a crash never leaves it with a half-applied state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dtms.actors.base import Actor
from dtms.actors.store import GetTrade, PutTrade
from dtms.errors import BrokerError, NotReady
from dtms.metrics import Metrics
from dtms.model import Position, Trade, TradeState, Transition, close_reason_from_deals

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    position: Position


@dataclass(frozen=True, slots=True)
class PositionGone:
    pass


@dataclass(frozen=True, slots=True)
class SetPaused:
    """Pause (no actions sent; the position is still followed) or resume the trade."""
    paused: bool


@dataclass(frozen=True, slots=True)
class GetView:
    pass


@dataclass(frozen=True, slots=True)
class TradeClosed:
    """Told to the registry when a trade has closed and its actor is about to exit."""
    ticket: int


class TradeActor(Actor):
    def __init__(self, trade: Trade, *, store: Actor, broker: Any, registry: Actor,
                 metrics: Metrics, dtms_magic: int, mailbox_size: int = 64,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(f"trade-{trade.ticket}", mailbox_size)
        self.ticket = trade.ticket
        self.trade = trade
        self.store = store
        self.broker = broker
        self.registry = registry
        self.metrics = metrics
        self.dtms_magic = dtms_magic
        self.clock = clock

    async def on_start(self) -> None:
        stored = await self.store.ask(GetTrade(self.ticket))
        if stored is None:
            raise LookupError(f"trade {self.ticket} is not in the store")
        self.trade = stored

    async def _persist(self, trade: Trade, transition: Transition | None = None) -> None:
        await self.store.ask(PutTrade(trade, transition), timeout=30.0)
        if transition is not None:
            log.info("trade %s %s -> %s (%s)", self.ticket, transition.from_state,
                     transition.to_state, transition.reason,
                     extra={"ticket": self.ticket, "from_state": transition.from_state,
                            "to_state": transition.to_state, "reason": transition.reason})
        self.trade = trade

    async def handle(self, message: Any) -> Any:
        if self.trade.state is TradeState.CLOSED:
            if isinstance(message, GetView | SetPaused):
                return self.trade.view()
            return None  # late messages after close change nothing
        if isinstance(message, PositionUpdate):
            return await self._follow(message.position)
        if isinstance(message, PositionGone):
            return await self._close_if_gone()
        if isinstance(message, SetPaused):
            if message.paused != self.trade.paused:
                await self._persist(self.trade.copy(paused=message.paused,
                                                    updated_at=self.clock()))
                log.info("trade %s %s", self.ticket, "paused" if message.paused else "resumed",
                         extra={"ticket": self.ticket, "paused": message.paused})
            return self.trade.view()
        if isinstance(message, GetView):
            return self.trade.view()
        raise TypeError(f"trade actor cannot handle {message!r}")

    async def _follow(self, p: Position) -> None:
        t = self.trade
        changes = {}
        if abs(p.volume - t.volume) > 1e-9:
            changes["volume"] = p.volume
        if abs(p.sl - t.sl) > 1e-12:
            changes["sl"] = p.sl
        if abs(p.tp - t.tp) > 1e-12:
            changes["tp"] = p.tp
        if not changes:
            return
        log.info("trade %s changed outside DTMS: %s", self.ticket,
                 {k: (getattr(t, k), v) for k, v in changes.items()},
                 extra={"ticket": self.ticket, "external_change": changes})
        await self._persist(t.copy(**changes, updated_at=self.clock()))

    async def _close_if_gone(self) -> None:
        try:
            still_open = await self.broker.call("positions", ticket=self.ticket)
            if still_open:
                log.warning("trade %s reported gone but the broker still has it", self.ticket,
                            extra={"ticket": self.ticket})
                return
            deals = await self.broker.call("deals_for_position", position=self.ticket)
        except (BrokerError, NotReady) as exc:
            # never close on a broker error: the next poll will tell us again
            log.warning("trade %s: cannot confirm close: %s", self.ticket, exc,
                        extra={"ticket": self.ticket})
            return
        reason, last = close_reason_from_deals(deals, self.dtms_magic)
        now = self.clock()
        profit = sum(d.profit for d in deals if d.entry in (1, 2, 3))
        closed = self.trade.copy(state=TradeState.CLOSED, state_since=now, closed_at=now,
                                 updated_at=now, close_reason=reason.value,
                                 close_price=last.price if last else 0.0, profit=profit)
        await self._persist(closed, Transition(self.ticket, now, self.trade.state.value,
                                               TradeState.CLOSED.value,
                                               f"position closed at the broker: {reason.value}"))
        self.metrics.trades_closed.labels(reason.value).inc()
        await self.registry.tell(TradeClosed(self.ticket))
        self.spawn(self.stop)
