"""The trade actor: one per registered position. It feeds the policy and acts on its decisions.

It owns its :class:`~dtms.model.Trade` while the trade is managed:

* **Market events.** It subscribes to its symbol's market actor. On a bar close it takes its
  direction's score (computed once per symbol and direction by the market actor, which has
  already told the store to persist it for every trade of the symbol) and runs
  ``lifecycle.decide``; on a price event (a level or time it asked to be told about) it runs
  ``decide`` without a new score. An evaluation whose only change is the score writes no
  row (10,000 trades, one bar: two UPDATEs, not 10,000 rows). After every evaluation it
  leaves its next one-shot watch (levels of its closing price -- bid for a BUY, ask for a
  SELL -- and a time) with the market actor, naming the tick it decided on: a level crossed
  by a later tick, while this trade was busy acting, fires at once. After acting it asks the
  market to look again with the current tick (``again``), never with the price from before.
* **Fresh prices.** Every request is built from a tick read just before it is sent (the
  view's tick may be seconds old after a busy spell, and an orphaned hedge is closed with no
  event at all).
* **Intent before action.** The new trade state, the transition and every intent (a journal
  row, ``pending``) are committed together before anything is sent; the row becomes ``sent``
  (with the request) before ``order_send``, then ``done``/``failed``/``deferred``/``skipped``.
  Requotes are retried with a fresh price. An uncertain result (``None``, a timeout, 10012,
  10031, 10011) becomes ``uncertain`` and is resolved by reading the broker -- position volume
  and SL, deals carrying our magic and the row's comment -- before anything is resent; while
  it cannot be resolved the trade takes no new action. On every (re)start the journal's
  unresolved rows for this ticket are resolved first, the same way.
* **Following the position.** Changes made outside DTMS (volume, SL, TP) are adopted and
  persisted; the policy only ever tightens from the adopted stop, so a stop someone else
  tightened is never loosened. A position poll older than DTMS's own last action is ignored.
* **Ordered actions.** ``Act`` (from the account guard, or a person's ``close`` / ``modify``)
  is journaled and sent by the same path, under its own obligation (``guard:close``,
  ``request:close``, ``sl:guard:...``): a close ordered twice is sent once.
* **Closing.** When the position is gone at the broker it confirms the absence: a closing deal
  in its history confirms it at once; without one it waits until ``broker.absent_polls`` polls
  in a row have missed it and no closing deal turns up in a wide window of the history
  either, then closes it as UNKNOWN (a position that reappears is never closed). It closes
  the hedge if one is open, persists CLOSED with the reason -- the deal's, or for DTMS's own
  close the rule its journal names (TIME_STOP, FLAT_TIMER, ...) -- and exits.
* **Shadow mode** (``policy.mode = "shadow"``, :mod:`dtms.policy.shadow`): every request is
  built as for a live trade and journaled ``shadow`` instead of being sent; the policy decides
  on the trade as its shadow actions would have left it (``shadow_book``), the trade keeps the
  broker's real SL/TP/volume. ``SetPolicy`` changes the trade's overrides (validated like a
  registration's, journaled as a transition with the old and new values, effective at once);
  switching shadow -> live re-reads the position first and decides afresh from it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dtms.actors.base import Actor, ActorStopped, MailboxFull
from dtms.actors.market import (
    BarClose,
    MarketOf,
    MarketView,
    PriceEvent,
    Subscribe,
    Unsubscribe,
    WatchLevels,
)
from dtms.actors.runtime import Cell
from dtms.actors.store import ListActions, LoadTrade, PutTrade
from dtms.config import Settings
from dtms.errors import BrokerError, NotReady
from dtms.metrics import Metrics
from dtms.model import (
    DEAL_ENTRY_OUT,
    ActionIntent,
    ActionKind,
    ActionRecord,
    CloseReason,
    Deal,
    Direction,
    Position,
    Tick,
    Trade,
    TradeState,
    Transition,
    close_reason_from_deals,
    dtms_close_rule,
)
from dtms.policy.execution import (
    Deferred,
    Request,
    RetcodeClass,
    Skipped,
    Target,
    build_request,
    classify,
)
from dtms.policy.lifecycle import (
    RETRY,
    Snapshot,
    Watch,
    after_fill,
    decide,
    failed,
)
from dtms.policy.overrides import resolve_policy, salvage_policy
from dtms.policy.shadow import BOOK_FIELDS, SHADOW, ShadowBook, book_of, to_live

log = logging.getLogger(__name__)

#: journal status -> the obligation's status in the trade (failed carries its market time)
_OBLIGATION = {"done": "done", "deferred": "deferred", "skipped": "skipped", SHADOW: SHADOW,
               "uncertain": "pending", "sent": "pending", "pending": "pending"}
UNRESOLVED = frozenset({"pending", "sent", "uncertain"})
POSITION_CLOSED = 10036
#: the deal-history window around a vanished position's life: any server-time offset fits
DEAL_MARGIN_S = 86_400.0


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    position: Position
    polled_at: float = 0.0   # perf_counter when the poll started


@dataclass(frozen=True, slots=True)
class PositionGone:
    """The position was missing from the last ``polls`` polls in a row."""
    polls: int = 1


@dataclass(frozen=True, slots=True)
class SetPaused:
    """Pause (no actions sent; the position is still followed and scored) or resume."""
    paused: bool


@dataclass(frozen=True, slots=True)
class GetView:
    pass


@dataclass(frozen=True, slots=True)
class SetPolicy:
    """Merge ``changes`` into the trade's policy overrides (a key set to None goes back to the
    configured value); answered with the trade's view, or InvalidArgument naming every bad
    ``policy.<key>`` (nothing changed)."""
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Act:
    """An action ordered from outside the trade's own policy -- the account guard, or a
    person's ``close``/``flatten``/``modify`` -- journaled and sent like the policy's own
    (exactly once: an obligation pending or done is not ordered again). ``force`` lets a
    modify loosen the stop (recorded in the journal's reason). Answered with
    ``{ticket, result, retcode, reason}``; ``result`` is the journal status, or ``refused``
    when nothing was journaled (why in ``reason``)."""
    intent: ActionIntent
    force: bool = False


@dataclass(frozen=True, slots=True)
class TradeClosed:
    """Told to the registry when a trade has closed and its actor is about to exit."""
    ticket: int


def _refused(ticket: int, why: str) -> dict[str, Any]:
    """An ``Act``'s answer when nothing was journaled."""
    return {"ticket": ticket, "result": "refused", "retcode": 0, "reason": why}


class TradeActor(Cell):
    """One trade, run by the registry's :class:`~dtms.actors.runtime.Runtime` only while it has
    messages (an idle trade holds no task).

    Snapshots (taken whatever the mailbox holds, so a market actor or the position watcher
    never waits on this trade): a ``BarClose`` replaces a queued older one (the newest bar's
    view and score is what counts) and the position's state (``PositionUpdate`` /
    ``PositionGone``) replaces a queued older one. A ``PriceEvent`` is never replaced: it
    carries the tick that crossed a level, and a later view may have come back from it (a
    watch is one-shot, so few are ever queued)."""

    __slots__ = ("_loaded", "ticket", "trade", "store", "broker", "registry", "hub", "metrics",
                 "settings", "clock", "market", "_market_hint", "view", "deferred", "unresolved",
                 "acted_at", "policy", "shadow_book", "acting")
    snapshots = (BarClose, PriceEvent, PositionUpdate, PositionGone)

    def supersedes(self, new: Any, old: Any) -> bool:
        if isinstance(new, BarClose):
            return isinstance(old, BarClose)
        if isinstance(new, PositionUpdate | PositionGone):
            return isinstance(old, PositionUpdate | PositionGone)
        return False

    def __init__(self, trade: Trade, *, store: Actor, broker: Any, registry: Actor,
                 market: Actor, metrics: Metrics, settings: Settings,
                 clock: Callable[[], float] = time.time,
                 journal: tuple[ActionRecord, ...] | None = None,
                 symbol_market: Actor | None = None) -> None:
        super().__init__(f"trade-{trade.ticket}", settings.trades.mailbox_size,
                         id=str(trade.ticket), kind="trade")
        # the registry has just read (or written) this trade and its unresolved journal rows:
        # the first start uses them instead of reading them again; a restart reads the store
        self._loaded = journal
        self.ticket = trade.ticket
        self.trade = trade
        self.store = store
        self.broker = broker
        self.registry = registry
        self.hub = market
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.market: Actor | None = None
        self._market_hint = symbol_market   # first start only: a restart asks the hub again
        self.view: MarketView | None = None
        self.deferred: dict[str, Deferred] = {}
        self.unresolved: list[ActionRecord] = []
        self.acted_at = 0.0   # perf_counter when DTMS last changed the position
        self.shadow_book: ShadowBook | None = None   # None: live
        self.acting: dict[int, ActionRecord] | None = None   # rows settled during an Act

    # -- lifecycle -----------------------------------------------------------------------------
    async def on_start(self) -> None:
        if self._loaded is not None:
            stored, journal, self._loaded = self.trade, list(self._loaded), None
        else:
            stored, journal = await self.store.ask(LoadTrade(self.ticket))   # one round trip
            if stored is None:
                raise LookupError(f"trade {self.ticket} is not in the store")
        self.trade = stored
        self.policy, dropped = salvage_policy(self.settings.policy, stored.policy)
        if dropped:   # stored under looser rules: managed with the configured values instead
            log.error("trade %s: stored policy keys refused, the configured values apply: %s",
                      self.ticket, "; ".join(f"{k}: {v}" for k, v in dropped.items()),
                      extra={"ticket": self.ticket, "dropped": sorted(dropped)})
        self.deferred.clear()
        self.shadow_book = None
        if self.policy.mode == SHADOW:   # what it would have done so far: from its journal
            rows = await self.store.ask(ListActions(self.ticket, limit=1000))
            self.shadow_book = book_of(rows, stored.direction)
        elif SHADOW in stored.obligations.values():
            # shadow before this start (e.g. the configured mode changed): live from the
            # broker's position, which the position watcher reports; nothing is replayed
            now = self.clock()
            await self._persist(stored.copy(**to_live(stored, None), updated_at=now),
                                Transition(self.ticket, now, stored.state.value,
                                           stored.state.value, "live after shadow mode: the "
                                           "shadow actions are owed afresh, from the broker's "
                                           "position"))
            stored = self.trade
        self.unresolved = sorted(journal, key=lambda a: a.seq)
        self.market, self._market_hint = self._market_hint, None
        if self.market is None:  # the registry passes it when it starts many trades at once
            self.market = await self.hub.ask(MarketOf(stored.symbol), timeout=60.0)
        self.view = None
        await self.market.tell(Subscribe(self.ticket, self))  # answered with a PriceEvent
        if self.unresolved:
            await self._resolve_journal()

    async def on_stop(self) -> None:
        if self.market is not None:
            try:
                self.market.tell_nowait(Unsubscribe(self.ticket))
            except (MailboxFull, ActorStopped) as exc:
                log.warning("trade %s: unsubscribe not delivered: %r", self.ticket, exc)

    async def _persist(self, trade: Trade, transition: Transition | None = None,
                       actions: tuple[ActionRecord, ...] = ()) -> None:
        await self.store.ask(PutTrade(trade, transition, actions), timeout=30.0)
        if transition is not None:
            log.info("trade %s %s -> %s (%s)", self.ticket, transition.from_state,
                     transition.to_state, transition.reason,
                     extra={"ticket": self.ticket, "from_state": transition.from_state,
                            "to_state": transition.to_state, "reason": transition.reason})
        self.trade = trade

    async def handle(self, message: Any) -> Any:
        if self.trade.state is TradeState.CLOSED:
            if isinstance(message, GetView | SetPaused | SetPolicy):
                return self.trade.view(self.settings.policy.mode)   # a closed trade changes no more
            if isinstance(message, Act):
                return _refused(self.ticket, "the trade is closed")
            return None  # late messages after close change nothing
        if isinstance(message, BarClose | PriceEvent):
            self.view = message.view
            return await self._evaluate(message.view, isinstance(message, BarClose), message.seen)
        if isinstance(message, PositionUpdate):
            return await self._follow(message)
        if isinstance(message, PositionGone):
            return await self._close_if_gone(message)
        if isinstance(message, SetPolicy):
            return await self._set_policy(message.changes)
        if isinstance(message, SetPaused):
            if message.paused != self.trade.paused:
                await self._persist(self.trade.copy(paused=message.paused,
                                                    updated_at=self.clock()))
                log.info("trade %s %s", self.ticket, "paused" if message.paused else "resumed",
                         extra={"ticket": self.ticket, "paused": message.paused})
                if not message.paused and self.view is not None:  # catch up at once
                    self._watch(self.view, Watch(), again=True)
            return self.trade.view(self.settings.policy.mode)
        if isinstance(message, GetView):
            return self.trade.view(self.settings.policy.mode)
        if isinstance(message, Act):
            return await self._act(message)
        raise TypeError(f"trade actor cannot handle {message!r}")

    async def _act(self, act: Act) -> dict[str, Any]:
        intent = act.intent
        if self.unresolved and not await self._resolve_journal():
            return _refused(self.ticket, "an earlier action is unresolved at the broker")
        status = self.trade.obligations.get(intent.obligation)
        if status in ("pending", "done"):
            return _refused(self.ticket, f"{intent.obligation} is already {status}")
        if self.view is None or self.view.tick is None:
            return _refused(self.ticket, f"no market data of {self.trade.symbol} yet")
        seq = self.trade.action_seq + 1
        record = ActionRecord(self.ticket, seq, intent.kind.value, intent.obligation,
                              intent.reason, "pending", self.clock())
        obligations = {**self.trade.obligations, intent.obligation: "pending"}
        await self._persist(self.trade.copy(action_seq=seq, obligations=obligations),
                            actions=(record,))
        self.deferred.pop(intent.obligation, None)
        self.acting = {}
        try:
            await self._execute(intent, record, self.view, loosen=act.force)
            row = self.acting.get(seq)
        finally:
            self.acting = None
        result = row.status if row is not None else "uncertain"
        self._watch(self.view, Watch(), again=True)   # the policy looks again from the outcome
        return {"ticket": self.ticket, "result": result,
                "retcode": row.retcode if row is not None else 0,
                "reason": (row.result or {}).get("reason", "") if row is not None else ""}

    # -- evaluation ----------------------------------------------------------------------------
    async def _evaluate(self, view: MarketView, fresh: bool, seen: float) -> None:
        if self.unresolved and not await self._resolve_journal():
            if view.tick is not None:
                self._watch(view, Watch(at=view.tick.time + self.policy.retry_after_s))
            return  # nothing new is sent while an earlier action is unresolved
        if view.tick is None:
            return
        self._release_deferred(self._price(view))
        signals = view.signals
        # the market scored each direction once for all its trades (None: it could not)
        score = view.scores.get(self.trade.direction) if fresh and view.scores else None
        snap = Snapshot(now=float(view.tick.time), bid=view.tick.bid, ask=view.tick.ask,
                        spec=view.spec, hedging=view.hedging,
                        atr=signals.atr if signals else 0.0, score=score,
                        median_spread=view.median_spread)
        d = decide(self._decided(), snap, self.policy)
        self.metrics.tick_to_decision.observe(time.perf_counter() - seen)
        now = self.clock()
        trade, records = d.trade, []
        if self.shadow_book is not None:   # decided on the shadow book: keep the real position
            trade = trade.copy(**{f: getattr(self.trade, f) for f in BOOK_FIELDS})
        for intent in d.intents:
            trade = trade.copy(action_seq=trade.action_seq + 1)
            records.append(ActionRecord(self.ticket, trade.action_seq, intent.kind.value,
                                        intent.obligation, intent.reason, "pending", now))
        transition = Transition(self.ticket, now, *d.transition) if d.transition else None
        if records or transition is not None or (
                trade is not self.trade and trade.differs_beyond_score(self.trade)):
            await self._persist(trade.copy(updated_at=now), transition, tuple(records))
        else:   # nothing, or the score alone: the market's PutScores has stored it
            self.trade = trade
        watch = d.watch
        for intent, record in zip(d.intents, records, strict=True):
            self.deferred.pop(intent.obligation, None)
            await self._execute(intent, record, view)
        if self.unresolved:
            retry = view.tick.time + self.policy.retry_after_s
            watch = dataclasses.replace(watch, at=min(watch.at or retry, retry))
        # after acting, the outcomes changed what is owed (the next rung, the next watch):
        # look again, with the market's current tick, not the one from before the action
        self._watch(view, watch, again=bool(d.intents))

    def _price(self, view: MarketView) -> float:
        """The trade's closing price in ``view``: the bid for a BUY, the ask for a SELL."""
        assert view.tick is not None
        return view.tick.bid if self.trade.direction is Direction.BUY else view.tick.ask

    def _release_deferred(self, price: float) -> None:
        """A deferred duty is owed again once the price has left the band that blocked it
        (levels of the closing price, as ``build_request`` gives them)."""
        released = {}
        for key, status in self.trade.obligations.items():
            if status != "deferred":
                continue
            d = self.deferred.get(key)
            if d is None or (d.resume_above is not None and price >= d.resume_above) or (
                    d.resume_below is not None and price <= d.resume_below):
                released[key] = RETRY   # (no record of the band after a restart: look again)
                self.deferred.pop(key, None)
        if released:
            self.trade = self.trade.copy(obligations={**self.trade.obligations, **released})

    def _watch(self, view: MarketView, watch: Watch, *, again: bool = False) -> None:
        """Leave the next watch with the market, from the tick ``view`` holds: the ticks the
        market read after it are checked at once. ``again``: be told the current view even
        if nothing is met."""
        above = [x for x in (watch.above, *(d.resume_above for d in self.deferred.values()))
                 if x is not None]
        below = [x for x in (watch.below, *(d.resume_below for d in self.deferred.values()))
                 if x is not None]
        if self.market is None or not (above or below or watch.at is not None or again):
            return
        try:
            self.market.tell_nowait(WatchLevels(
                self.ticket, min(above, default=None), max(below, default=None), watch.at,
                ask=self.trade.direction is Direction.SELL, since=view.seq, again=again))
        except (MailboxFull, ActorStopped) as exc:  # the next bar close re-evaluates anyway
            log.warning("trade %s: watch not delivered: %r", self.ticket, exc)

    # -- execution -----------------------------------------------------------------------------
    def _comment(self, seq: int) -> str:
        return f"{self.settings.broker.comment_tag}:{self.ticket}:{seq}"

    def _decided(self) -> Trade:
        """The trade the policy decides on: itself, or in shadow as its shadow actions would
        have left it."""
        if self.shadow_book is None:
            return self.trade
        return self.shadow_book.as_decided(self.trade)

    def _target(self, view: MarketView) -> Target:
        t = self._decided()
        return Target(ticket=t.ticket, symbol=t.symbol, direction=t.direction, volume=t.volume,
                      sl=t.sl, tp=t.tp, hedge_ticket=t.hedge_ticket, hedge_volume=t.hedge_volume,
                      hedging_account=view.hedging)

    async def _execute(self, intent: ActionIntent, record: ActionRecord,
                       view: MarketView, *, loosen: bool = False) -> None:
        started = time.perf_counter()
        bs = self.settings.broker
        try:   # the request's price and the stop's distance: from now, not from the event
            tick = await self.broker.call("tick", name=self.trade.symbol)
        except (BrokerError, NotReady, TimeoutError) as exc:
            await self._settle(record, "failed", result={"error": f"no fresh tick: {exc}"})
            return
        for attempt in range(self.policy.requote_retries + 1):
            built = build_request(intent, self._target(view), view.spec, tick, magic=bs.magic,
                                  comment=self._comment(record.seq),
                                  deviation=bs.deviation_points, loosen=loosen)
            if isinstance(built, Deferred):
                self.deferred[intent.obligation] = built
                await self._settle(record, "deferred", result={"reason": built.reason})
                return
            if isinstance(built, Skipped):
                await self._settle(record, "skipped", result={"reason": built.reason})
                return
            if self.shadow_book is not None:   # shadow: what would have been sent, never sent
                await self._shadow(record, built, tick)
                return
            record = record.copy(status="sent", request=dict(built.fields, note=built.note,
                                                             market_time=tick.time))
            await self._persist(self.trade, actions=(record,))
            try:
                result = await self.broker.call("send", request=built.fields)
            except NotReady as exc:  # refused before sending: nothing reached the terminal
                await self._settle(record, "failed", result={"error": str(exc)})
                return
            except (BrokerError, TimeoutError) as exc:
                result = None
                log.warning("trade %s: order_send gave no result: %s", self.ticket, exc,
                            extra={"ticket": self.ticket, "seq": record.seq})
            cls = classify(result.retcode if result else None, intent.kind)
            self.metrics.action_latency.labels(intent.kind.value).observe(
                time.perf_counter() - started)
            outcome = {"retcode": result.retcode, "order": result.order, "deal": result.deal,
                       "volume": result.volume, "price": result.price,
                       "comment": result.comment} if result else {"retcode": None}
            if (intent.kind is ActionKind.CLOSE_HEDGE and result is not None
                    and result.retcode == POSITION_CLOSED):
                # someone (or its own stop-out) closed the hedge already: nothing left to do
                await self._settle(record, "done", {"hedge_ticket": 0, "hedge_volume": 0.0},
                                   result.retcode, {**outcome, "note": "hedge already closed"})
                return
            if cls is RetcodeClass.SUCCESS:
                hedge = result.order if intent.kind is ActionKind.HEDGE else 0
                changes = after_fill(self.trade, intent, volume=built.volume, hedge_ticket=hedge,
                                     sl=built.fields.get("sl"), hedging=view.hedging)
                await self._settle(record, "done", changes, result.retcode, outcome)
                return
            if cls is RetcodeClass.RETRY and attempt < self.policy.requote_retries:
                self.metrics.actions.labels(intent.kind.value, "retry").inc()
                log.info("trade %s: %s requoted (%s); retrying with a fresh price", self.ticket,
                         intent.kind.value, result.retcode if result else None,
                         extra={"ticket": self.ticket, "seq": record.seq})
                try:
                    tick = await self.broker.call("tick", name=self.trade.symbol)
                except (BrokerError, NotReady) as exc:
                    await self._settle(record, "failed", result={"error": str(exc), **outcome})
                    return
                continue
            if cls is RetcodeClass.UNCERTAIN:
                record = record.copy(status="uncertain", result=outcome,
                                     retcode=result.retcode if result else 0)
                await self._persist(self.trade, actions=(record,))
                self.unresolved.append(record)
                await self._resolve_journal()
                return
            await self._settle(record, "failed", retcode=result.retcode if result else 0,
                               result={**outcome, "class": cls.value})
            return

    async def _shadow(self, record: ActionRecord, built: Request, tick: Tick) -> None:
        assert self.shadow_book is not None
        request = dict(built.fields, note=built.note, market_time=tick.time)
        self.shadow_book = self.shadow_book.after(record.kind, request, built.volume,
                                                  built.full_close, self.trade.direction)
        await self._settle(record.copy(request=request), SHADOW,
                           result={"shadow": True, "volume": built.volume,
                                   "full_close": built.full_close, "note": built.note,
                                   "bid": tick.bid, "ask": tick.ask})

    async def _set_policy(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply a policy change (``set_policy``); shadow -> live re-reads the
        position first. Never loosens a stop: no field of the position changes here but from
        the broker's own position, and the policy only ever tightens from it."""
        merged = {k: v for k, v in {**self.trade.policy, **changes}.items() if v is not None}
        policy = resolve_policy(self.settings.policy, merged)   # InvalidArgument: nothing changes
        if merged == self.trade.policy:
            return self.trade.view(self.settings.policy.mode)
        diff = {k: (getattr(self.policy, k), getattr(policy, k)) for k in sorted(changes)
                if k in self.trade.policy or k in merged}
        fields: dict[str, Any] = {"policy": merged}
        why = "policy changed: " + ", ".join(f"{k} {_show(o)} -> {_show(n)}"
                                             for k, (o, n) in diff.items())
        going_live = self.shadow_book is not None and policy.mode != SHADOW
        if going_live:   # from the broker's position as it is now: nothing is replayed
            try:
                found = await self.broker.call("positions", ticket=self.ticket)
            except (BrokerError, TimeoutError) as exc:
                raise NotReady(f"cannot re-read position {self.ticket} to go live: {exc}",
                               retry_after=2.0) from exc
            position = found[0] if found else None
            fields.update(to_live(self.trade, position))
            if position is not None:
                why += (f"; live from the broker's position: sl {position.sl:g}, "
                        f"volume {position.volume:g}")
            self.acted_at = time.perf_counter()   # a poll from before this is stale
        now = self.clock()
        await self._persist(self.trade.copy(**fields, updated_at=now),
                            Transition(self.ticket, now, self.trade.state.value,
                                       self.trade.state.value, why))
        self.policy = policy
        if policy.mode == SHADOW and self.shadow_book is None:
            self.shadow_book = ShadowBook()
        elif policy.mode != SHADOW:
            self.shadow_book = None
        log.info("trade %s %s", self.ticket, why,
                 extra={"ticket": self.ticket, "policy": merged, "live": going_live})
        if self.view is not None:   # takes effect at the next evaluation: now
            self._watch(self.view, Watch(), again=True)
        return self.trade.view(self.settings.policy.mode)

    async def _settle(self, record: ActionRecord, status: str, changes: dict | None = None,
                      retcode: int = 0, result: dict | None = None) -> None:
        now = self.clock()
        at = self.view.tick.time if self.view is not None and self.view.tick else 0.0
        obligation = failed(at) if status == "failed" else _OBLIGATION[status]
        obligations = {**self.trade.obligations, record.obligation: obligation}
        trade = self.trade.copy(**(changes or {}), obligations=obligations, updated_at=now)
        record = record.copy(status=status, resolved_at=now, retcode=retcode or record.retcode,
                             result=result or record.result)
        await self._persist(trade, actions=(record,))
        if self.acting is not None:   # an Act waits for its row's outcome
            self.acting[record.seq] = record
        if changes:
            self.acted_at = time.perf_counter()
        self.metrics.actions.labels(record.kind, status).inc()
        level = logging.INFO if status in ("done", "deferred", "skipped") else logging.WARNING
        log.log(level, "trade %s action %s %s: %s (%s)", self.ticket, record.seq, record.kind,
                status, record.reason,
                extra={"ticket": self.ticket, "seq": record.seq, "kind": record.kind,
                       "status": status, "retcode": record.retcode, "changes": changes or {}})

    async def _resolve_journal(self) -> bool:
        """Resolve unresolved journal rows against the broker; False if one still cannot be."""
        while self.unresolved:
            record = self.unresolved[0]
            if record.status == "pending":  # journaled, never sent: "sent" is written first
                await self._settle(record, "failed", result={"reason": "never sent"})
                self.unresolved.pop(0)
                continue
            try:
                found = await self._find_at_broker(record)
            except (BrokerError, NotReady, TimeoutError) as exc:
                log.warning("trade %s: action %s still uncertain: %s", self.ticket, record.seq,
                            exc, extra={"ticket": self.ticket, "seq": record.seq})
                return False
            self.unresolved.pop(0)
            if found is None:
                await self._settle(record, "failed",
                                   result={**record.result, "reconciled": "not executed"})
            else:
                await self._settle(record, "done", found,
                                   result={**record.result, "reconciled": "executed"})
        return True

    async def _find_at_broker(self, record: ActionRecord) -> dict[str, Any] | None:
        """The trade changes if the broker shows the action executed, else None."""
        req = record.request
        magic, comment = self.settings.broker.magic, req.get("comment", "")
        if record.kind == ActionKind.MODIFY_SL:
            positions = await self.broker.call("positions", ticket=self.ticket)
            if positions and abs(positions[0].sl - float(req.get("sl", 0.0))) < 1e-9:
                return {"sl": positions[0].sl}
            return None
        if "position" in req:   # a deal on an existing position: ours, or the hedge
            deals = await self.broker.call("deals_for_position", position=int(req["position"]))
            ours = [d for d in deals if d.magic == magic and d.comment == comment
                    and d.entry in DEAL_ENTRY_OUT]
            if not ours:
                return None
            if record.kind == ActionKind.CLOSE_HEDGE:
                return {"hedge_ticket": 0, "hedge_volume": 0.0}
            # the broker's volume, not a subtraction: the position watcher may already have
            # reported (and the trade adopted) the volume after this deal
            positions = await self.broker.call("positions", ticket=self.ticket)
            return {"volume": positions[0].volume if positions else 0.0}
        t = float(req.get("market_time", 0))   # a new (hedge) position
        deals = await self.broker.call("deals_between", start=t - 86400, end=t + 86400 * 7)
        opened = [d for d in deals if d.magic == magic and d.comment == comment and d.entry == 0]
        if not opened:
            return None
        return {"hedge_ticket": opened[0].position_id,
                "hedge_volume": sum(d.volume for d in opened)}

    # -- following the position ------------------------------------------------------------------
    async def _follow(self, update: PositionUpdate) -> None:
        if update.polled_at and update.polled_at < self.acted_at:
            return  # polled before our own last change: the next poll tells the truth
        p, t = update.position, self.trade
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

    async def _close_if_gone(self, gone: PositionGone) -> None:
        bs = self.settings.broker
        try:
            still_open = await self.broker.call("positions", ticket=self.ticket)
            if still_open:
                log.warning("trade %s reported gone but the broker still has it", self.ticket,
                            extra={"ticket": self.ticket})
                return
            deals = await self.broker.call("deals_for_position", position=self.ticket)
            if not any(d.entry in DEAL_ENTRY_OUT for d in deals):
                # no closing deal: a terminal glitch looks the same. Wait for the absence to
                # last, then look through a wide window of the deal history before UNKNOWN
                if gone.polls < bs.absent_polls:
                    log.warning("trade %s: position missing at the broker with no closing deal "
                                "(poll %d of %d): not closed yet", self.ticket, gone.polls,
                                bs.absent_polls, extra={"ticket": self.ticket,
                                                        "absent_polls": gone.polls})
                    return
                deals = await self._deals_in_window()
            if self.trade.hedge_ticket:
                await self._close_orphan_hedge()
        except (BrokerError, NotReady) as exc:
            # never close on a broker error: the next poll will tell us again
            log.warning("trade %s: cannot confirm close: %s", self.ticket, exc,
                        extra={"ticket": self.ticket})
            return
        reason, last = close_reason_from_deals(deals, bs.magic)
        why = f"position closed at the broker: {reason.value}"
        if reason is CloseReason.DTMS:   # which rule: DTMS's own journal says
            journal = await self.store.ask(ListActions(self.ticket, limit=1000))
            reason, action = dtms_close_rule(last, journal, bs.comment_tag)
            why = f"closed by DTMS: {reason.value}" + (f" ({action.reason})" if action else "")
        elif reason is CloseReason.UNKNOWN:
            why = (f"position missing at the broker for {gone.polls} polls, no closing deal "
                   "in its history: UNKNOWN")
        now = self.clock()
        profit = sum(d.profit for d in deals if d.entry in DEAL_ENTRY_OUT)
        closed = self.trade.copy(state=TradeState.CLOSED, state_since=now, closed_at=now,
                                 updated_at=now, close_reason=reason.value,
                                 close_price=last.price if last else 0.0, profit=profit)
        await self._persist(closed, Transition(self.ticket, now, self.trade.state.value,
                                               TradeState.CLOSED.value, why))
        self.metrics.trades_closed.labels(reason.value).inc()
        await self.registry.tell(TradeClosed(self.ticket))
        self.spawn(self.stop)

    async def _deals_in_window(self) -> list[Deal]:
        """This position's deals in a window wide enough for any server-time offset: from its
        open time (its registration if unknown) less a day to now plus a day."""
        start = (self.trade.opened_at or self.trade.created_at or self.clock()) - DEAL_MARGIN_S
        market_now = self.view.tick.time if self.view is not None and self.view.tick else 0
        end = max(self.clock(), market_now) + DEAL_MARGIN_S
        deals = await self.broker.call("deals_between", start=start, end=end)
        return [d for d in deals if d.position_id == self.ticket]

    async def _close_orphan_hedge(self) -> None:
        """The trade is gone but its hedge is open: a hedge alone is a naked position. It is
        closed at a fresh price (``_execute`` reads one), never the trade's last known one."""
        if self.unresolved and not await self._resolve_journal():
            raise NotReady("an earlier action is unresolved")
        if not self.trade.hedge_ticket:
            return
        view = self.view
        if view is None:   # no market data yet (just restarted): the next poll tries again
            raise NotReady(f"no market data of {self.trade.symbol} yet to close the hedge")
        seq = self.trade.action_seq + 1
        intent = ActionIntent(ActionKind.CLOSE_HEDGE, "close_hedge",
                              "the trade closed: close its hedge")
        record = ActionRecord(self.ticket, seq, intent.kind.value, intent.obligation,
                              intent.reason, "pending", self.clock())
        obligations = {**self.trade.obligations, intent.obligation: "pending"}
        await self._persist(self.trade.copy(action_seq=seq, obligations=obligations),
                            actions=(record,))
        await self._execute(intent, record, view)
        if self.trade.hedge_ticket and self.shadow_book is None:
            raise NotReady("the hedge is still open")
        if self.trade.hedge_ticket:   # shadow never sends: the real hedge stays open
            log.warning("trade %s closed in shadow mode: its hedge %s stays open at the broker",
                        self.ticket, self.trade.hedge_ticket,
                        extra={"ticket": self.ticket, "hedge_ticket": self.trade.hedge_ticket})


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)
