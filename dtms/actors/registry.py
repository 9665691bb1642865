"""The registry actor: ticket -> trade actor, idempotent registration, ownership rule.

It is the one owner of the ticket map, and it serialises registrations: two registrations of
the same ticket, however concurrent, are handled one after the other, so the second finds the
first and exactly one trade actor exists. The trade actors are cells of a
:class:`~dtms.actors.runtime.Runtime` that lives inside the registry (the registry's subtree in
SPEC section 1): it runs a trade only while it has messages and supervises each one on its own
(OTP one_for_one, the trade's own restart window, then SUSPENDED).

``Register`` on the unhappy paths, in the order checked (the ownership and conflict rules are
the pure functions of :mod:`dtms.policy.ownership`):

* strategy_type/owner configured as another manager's -> ``OWNED_ELSEWHERE``;
* ticket stored as CLOSED (or archived) -> checked against its stored record only (the broker
  has no position any more): a contradicting symbol, direction or magic -> ``CONFLICT``,
  otherwise the closed trade, ``created: false``; a trader re-sending a trade that has since
  closed learns that it closed, and nothing is reopened;
* terminal unreachable -> ``NOT_READY`` (retry; registration is idempotent);
* no open position with that ticket at the broker -> ``NOT_FOUND`` (a stored open trade whose
  position is missing answers the stored trade, ``created: false``: the position watcher
  confirms the close and records why);
* the position is DTMS's own hedge or order (our magic or our comment tag) -> ``DTMS_POSITION``;
  its magic is configured as another manager's -> ``OWNED_ELSEWHERE``;
* ``magic``, symbol or direction contradicting the broker's position -> ``CONFLICT`` naming the
  field; for a stored trade, also contradicting the stored trade -> ``CONFLICT``;
* ticket already managed, or stored (SUSPENDED) -> the stored trade, ``created: false``,
  nothing changed (``adjusted`` says where the request differs from the broker);
* otherwise (a new ticket, or a RELEASED one adopted again) the trade is built from the broker's
  truth (volume, SL, TP, entry price; any difference from the request is reported in
  ``adjusted``), stored durably, then its actor is made (a plain object, started in its first
  turn) and the registration acknowledged (``created: true``).

A re-registration is thus checked against the broker exactly like a new ticket (SPEC 4).

On start the registry reloads every stored trade that is not closed and restarts its actor in
exactly its stored state; the position watcher then reconciles them against the broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio

from dtms.actors.base import Actor, Envelope
from dtms.actors.market import MarketOf
from dtms.actors.positions import Unwatch, Watch
from dtms.actors.runtime import Runtime
from dtms.actors.store import (
    CountByState,
    GetTrade,
    GetTrades,
    ListActions,
    ListTrades,
    ListTransitions,
    PutTrade,
    PutTrades,
)
from dtms.actors.trade import SetPaused, SetPolicy, TradeActor, TradeClosed
from dtms.config import Settings
from dtms.errors import (
    BrokerError,
    Conflict,
    DtmsError,
    DtmsPosition,
    Internal,
    NotFound,
    NotReady,
    Overloaded,
    OwnedElsewhere,
)
from dtms.logs import TRACE_ID
from dtms.metrics import Metrics
from dtms.model import (
    UNMANAGED_STATES,
    ActionRecord,
    Position,
    Registration,
    Trade,
    TradeState,
    Transition,
)
from dtms.policy.overrides import resolve_policy
from dtms.policy.ownership import (
    OwnershipRules,
    position_refusal,
    request_refusal,
    stored_refusal,
)
from dtms.supervisor import Backoff, Intensity

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Register:
    registration: Registration


@dataclass(frozen=True, slots=True)
class Pause:
    ticket: int


@dataclass(frozen=True, slots=True)
class Resume:
    """Unpause a paused trade, or bring a SUSPENDED trade back under management."""
    ticket: int


@dataclass(frozen=True, slots=True)
class PauseAll:
    """Pause or resume every managed trade; answered with the tickets changed."""
    paused: bool


@dataclass(frozen=True, slots=True)
class Unregister:
    """Stop managing a trade; its record stays (RELEASED) and ``register`` adopts it again."""
    ticket: int


@dataclass(frozen=True, slots=True)
class ChangePolicy:
    """``set_policy``: merge ``changes`` into one trade's policy overrides, or (ticket None)
    every managed trade's; a SUSPENDED trade's stored overrides change in the store."""
    ticket: int | None
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GiveUp:
    ticket: int
    error: str


class RegistryActor(Actor):
    batch_types = (Register,)

    def __init__(self, settings: Settings, *, store: Actor, broker: Any, watcher: Actor,
                 market: Actor, metrics: Metrics, on_event: Callable[..., Any] | None = None,
                 on_recovered: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__("registry", settings.registry.mailbox_size)
        self.max_batch = max(1, settings.registry.max_batch)
        self.settings = settings
        self.store = store
        self.broker = broker
        self.watcher = watcher
        self.market = market
        self.metrics = metrics
        self.clock = clock
        self.trades: dict[int, TradeActor] = {}
        self._markets: dict[str, Actor] = {}   # symbol -> its market actor (MarketOf's answer)
        self._on_event = on_event
        self._on_recovered = on_recovered
        self.supervisor: Runtime | None = None   # runs and supervises the trade actors
        self.recovered = False  # this incarnation has reloaded every stored open trade
        self.rules = OwnershipRules.from_settings(settings)

    # -- lifecycle -----------------------------------------------------------------------------
    async def on_start(self) -> None:
        sup = self.settings.supervisor
        t = self.settings.trades
        self.trades.clear()
        self._markets = {}
        self.recovered = False
        # trades count their crashes one by one: a poisoned trade is given up on its own, and
        # no number of unrelated poisoned trades reloads every other one (Akka, Proto.Actor)
        self.supervisor = Runtime(
            "trades", intensity=Intensity(t.max_restarts, t.restart_period_s),
            backoff=Backoff(sup.min_backoff_s, sup.max_backoff_s, sup.jitter),
            on_event=self._on_event, on_give_up=self._give_up)
        await self._start_task(self.supervisor.run)
        await self._recover()

    async def _start_task(self, fn: Callable[..., Any]) -> None:
        assert self._tg is not None
        await self._tg.start(fn)

    async def on_stop(self) -> None:
        self.recovered = False
        if self.supervisor is not None:
            await self.supervisor.stop()
        # the next incarnation makes new trade actors: fail what is queued here, never hang it
        for ticket, actor in self.trades.items():
            actor.close(f"registry restarting; trade {ticket} is reloaded from the store")
        self.trades.clear()

    async def _recover(self) -> None:
        # every unresolved journal row at once (few: one per action in flight at the crash),
        # so that no trade actor has to read the store again before it starts
        journals: dict[int, list[ActionRecord]] = {}
        for row in await self.store.ask(ListActions(unresolved=True, limit=1 << 62),
                                        timeout=60.0):
            journals.setdefault(row.ticket, []).append(row)
        offset, page = 0, 1000
        while True:
            batch = await self.store.ask(ListTrades(open_only=True, limit=page, offset=offset),
                                         timeout=60.0)
            await self._spawn_all((t, tuple(journals.get(t.ticket, ()))) for t in batch
                                  if t.state not in UNMANAGED_STATES)
            if len(batch) < page:
                break
            offset += page
        counts = await self.store.ask(CountByState())
        for state in TradeState:
            self.metrics.trades.labels(state.value).set(counts.get(state.value, 0))
        log.info("registry recovered %d open trades", len(self.trades),
                 extra={"trades": len(self.trades)})
        self.recovered = True
        if self._on_recovered is not None:
            self._on_recovered()

    async def _spawn(self, trade: Trade, journal: tuple[ActionRecord, ...] | None = None,
                     symbol_market: Actor | None = None) -> None:
        """Start the trade's actor; ``journal``: its unresolved rows if already read (the
        trade is then taken as stored), None to let the actor read both from the store;
        ``symbol_market``: its symbol's market actor if known."""
        actor = TradeActor(trade, store=self.store, broker=self.broker, registry=self,
                           market=self.market, metrics=self.metrics, settings=self.settings,
                           clock=self.clock, journal=journal, symbol_market=symbol_market)
        assert self.supervisor is not None
        self.supervisor.start(actor)   # a plain object until its first turn runs on_start
        self.trades[trade.ticket] = actor
        await self.watcher.tell(Watch(trade.ticket, actor))

    async def _spawn_all(self, trades: Iterable[tuple[Trade, tuple[ActionRecord, ...] | None]]
                         ) -> None:
        """Start many trade actors: each symbol's market actor is asked for once, and every
        actor starts (subscribes) in its own first turn. Any failure is the registry's crash."""
        for trade, journal in trades:
            market = self._markets.get(trade.symbol)
            if market is None:   # the hub keeps one actor per symbol for good: ask once
                market = self._markets[trade.symbol] = await self.market.ask(
                    MarketOf(trade.symbol), timeout=60.0)
            await self._spawn(trade, journal, market)

    async def _give_up(self, child_id: str, exc: BaseException | None) -> None:
        # called from the trades supervisor's control loop: never wait on our own mailbox there
        self.spawn(self.tell, GiveUp(int(child_id), repr(exc)))

    # -- messages ------------------------------------------------------------------------------
    async def handle(self, message: Any) -> Any:
        if isinstance(message, TradeClosed):
            self._forget(message.ticket)
            return None
        if isinstance(message, GiveUp):
            return await self._suspend(message.ticket, message.error)
        if isinstance(message, Pause):
            return await self._set_paused(message.ticket, True)
        if isinstance(message, Resume):
            return await self._resume(message.ticket)
        if isinstance(message, PauseAll):
            changed = []
            for ticket, actor in list(self.trades.items()):
                view = await actor.ask(SetPaused(message.paused),
                                       timeout=self.settings.registry.ask_timeout_s)
                changed.append(ticket)
                if view.get("state") == TradeState.CLOSED.value:
                    changed.pop()
            return {"paused": message.paused, "tickets": changed, "count": len(changed)}
        if isinstance(message, Unregister):
            return await self._unregister(message.ticket)
        if isinstance(message, ChangePolicy):
            return await self._change_policy(message)
        raise TypeError(f"registry cannot handle {message!r}")

    async def _change_policy(self, message: ChangePolicy) -> dict[str, Any]:
        timeout = self.settings.registry.ask_timeout_s
        if message.ticket is not None:
            actor = self.trades.get(message.ticket)
            if actor is not None:
                return await actor.ask(SetPolicy(message.changes), timeout=timeout)
            trade = await self._stored(message.ticket)
            if trade.state is not TradeState.SUSPENDED:   # RELEASED: `register` sets it anew
                raise Conflict(f"trade {trade.ticket} is {trade.state.value}: not managed",
                               field="ticket", state=trade.state.value)
            return await self._change_stored_policy(trade, message.changes)
        changed, errors = [], {}
        for ticket, actor in list(self.trades.items()):
            try:
                view = await actor.ask(SetPolicy(message.changes), timeout=timeout)
            except DtmsError as exc:   # e.g. a bound across keys with its own overrides
                errors[str(ticket)] = exc.to_wire()
                continue
            if view.get("state") != TradeState.CLOSED.value:
                changed.append(ticket)
        return {"tickets": changed, "count": len(changed), "errors": errors}

    async def _change_stored_policy(self, trade: Trade, changes: dict[str, Any]
                                    ) -> dict[str, Any]:
        merged = {k: v for k, v in {**trade.policy, **changes}.items() if v is not None}
        resolve_policy(self.settings.policy, merged)   # InvalidArgument: nothing stored
        if merged == trade.policy:
            return trade.view(self.settings.policy.mode)
        now = self.clock()
        changed = trade.copy(policy=merged, updated_at=now)
        await self.store.ask(PutTrade(changed, Transition(
            trade.ticket, now, trade.state.value, trade.state.value,
            f"policy changed while {trade.state.value}: {trade.policy} -> {merged}")))
        return changed.view(self.settings.policy.mode)

    def _forget(self, ticket: int) -> None:
        actor = self.trades.pop(ticket, None)
        if actor is not None:
            self.watcher.tell_nowait(Unwatch(ticket))
            actor.close(f"trade {ticket} no longer managed")

    async def _stored(self, ticket: int) -> Trade:
        trade = await self.store.ask(GetTrade(ticket))
        if trade is None:
            raise NotFound(f"ticket {ticket} is not registered with DTMS", field="ticket")
        if trade.state is TradeState.CLOSED:
            raise Conflict(f"trade {ticket} is closed ({trade.close_reason})", field="ticket",
                           state=trade.state.value)
        return trade

    async def _set_paused(self, ticket: int, paused: bool) -> dict[str, Any]:
        actor = self.trades.get(ticket)
        if actor is None:
            trade = await self._stored(ticket)
            raise Conflict(f"trade {ticket} is {trade.state.value}; resume it first",
                           field="ticket", state=trade.state.value)
        return await actor.ask(SetPaused(paused), timeout=self.settings.registry.ask_timeout_s)

    async def _resume(self, ticket: int) -> dict[str, Any]:
        if ticket in self.trades:
            return await self._set_paused(ticket, False)
        trade = await self._stored(ticket)
        if trade.state is not TradeState.SUSPENDED:
            raise Conflict(f"trade {ticket} is {trade.state.value} without an actor",
                           field="ticket", state=trade.state.value)
        history = await self.store.ask(ListTransitions(ticket, limit=10_000))
        previous = next((TradeState(t["from_state"]) for t in reversed(history)
                         if t["to_state"] == TradeState.SUSPENDED.value), TradeState.HEALTHY)
        now = self.clock()
        resumed = trade.copy(state=previous, state_since=now, updated_at=now, paused=False)
        await self.store.ask(PutTrade(resumed, Transition(
            ticket, now, TradeState.SUSPENDED.value, previous.value, "resumed by request")))
        await self._spawn(resumed)
        log.info("trade %s resumed from SUSPENDED to %s", ticket, previous.value,
                 extra={"ticket": ticket, "to_state": previous.value})
        return resumed.view(self.settings.policy.mode)

    async def _unregister(self, ticket: int) -> dict[str, Any]:
        trade = await self._stored(ticket)
        if trade.state is TradeState.RELEASED:
            return trade.view(self.settings.policy.mode)
        if ticket in self.trades:
            assert self.supervisor is not None
            await self.supervisor.terminate(str(ticket))
            self._forget(ticket)
            trade = await self._stored(ticket)  # the actor's last word is in the store
        now = self.clock()
        released = trade.copy(state=TradeState.RELEASED, state_since=now, updated_at=now)
        await self.store.ask(PutTrade(released, Transition(
            ticket, now, trade.state.value, TradeState.RELEASED.value, "unregistered by request")))
        log.info("trade %s unregistered (was %s)", ticket, trade.state.value,
                 extra={"ticket": ticket, "from_state": trade.state.value})
        return released.view(self.settings.policy.mode)

    async def _suspend(self, ticket: int, error: str) -> None:
        self._forget(ticket)
        trade = await self.store.ask(GetTrade(ticket))
        if trade is None or trade.state is TradeState.CLOSED:
            return
        now = self.clock()
        await self.store.ask(PutTrade(
            trade.copy(state=TradeState.SUSPENDED, state_since=now, updated_at=now),
            Transition(ticket, now, trade.state.value, TradeState.SUSPENDED.value,
                       f"actor gave up after repeated crashes: {error}")))
        log.error("trade %s SUSPENDED: its actor kept crashing (%s)", ticket, error,
                  extra={"ticket": ticket, "error": error})

    # -- registration ----------------------------------------------------------------------
    async def handle_batch(self, batch: list[Envelope]) -> None:
        """Registrations queued together: one store read, one broker call, one commit.

        Each one is still decided on its own (its own error or reply). A ticket named twice in
        one batch is decided once; the later ones are then handled as a batch of their own, so
        they find the first's outcome (``created: false`` if it was registered)."""
        first: dict[int, Envelope] = {}
        again: list[Envelope] = []
        for env in batch:
            ticket = env.message.registration.ticket
            if ticket in first:
                again.append(env)
            else:
                first[ticket] = env
        envs = list(first.values())
        token = TRACE_ID.set(envs[0].trace_id)  # the shared work logs under the first's id
        try:
            outcomes = await self._register_many([e.message.registration for e in envs])
        except BaseException as exc:   # a crash: nobody in the batch is left waiting
            for env in batch:
                if env.reply is not None:
                    env.reply.fail(Internal(f"registry crashed registering: {exc!r}"))
            raise
        finally:
            TRACE_ID.reset(token)
        for env in envs:
            outcome = outcomes[env.message.registration.ticket]
            token = TRACE_ID.set(env.trace_id)
            try:
                if isinstance(outcome, dict) and outcome["created"]:
                    t = outcome["trade"]
                    log.info("registered trade %s %s %s %.2f", t["ticket"], t["symbol"],
                             t["direction"], t["volume"],
                             extra={"ticket": t["ticket"], "symbol": t["symbol"],
                                    "adjusted": outcome["adjusted"]})
                if isinstance(outcome, DtmsError):
                    if env.reply is not None:
                        env.reply.fail(outcome)
                    else:
                        log.warning("registration of %s failed: %r",
                                    env.message.registration.ticket, outcome)
                elif env.reply is not None:
                    env.reply.set(outcome)
            finally:
                TRACE_ID.reset(token)
        if again:
            await self.handle_batch(again)

    async def _register_many(self, regs: list[Registration]) -> dict[int, Any]:
        """ticket -> the reply, or the DtmsError to answer, for distinct tickets."""
        outcome: dict[int, Any] = {}
        tickets = tuple(r.ticket for r in regs)
        # the store's record and the broker's position, read at the same time (a sequential
        # client waits for the slower of the two, not their sum)
        read: dict[str, Any] = {}

        async def from_broker() -> None:
            try:
                read["positions"] = await self.broker.call("positions_of", tickets=list(tickets))
            except (BrokerError, NotReady, TimeoutError) as exc:
                read["broker_error"] = exc

        async def from_store() -> None:
            try:
                read["stored"] = await self.store.ask(GetTrades(tickets), timeout=30.0)
            except Exception as exc:   # answered below (a DtmsError) or re-raised: a crash
                read["store_error"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(from_broker)
            tg.start_soon(from_store)
        if "store_error" in read:
            if isinstance(read["store_error"], DtmsError):
                return {r.ticket: read["store_error"] for r in regs}
            raise read["store_error"]
        stored: dict[int, Trade] = read["stored"]
        room = self.settings.registry.max_trades - len(self.trades)
        checks: list[Registration] = []
        for reg in regs:
            try:
                reply = self._admit(reg, stored.get(reg.ticket), room)
            except DtmsError as exc:
                outcome[reg.ticket] = exc
                continue
            if reply is not None:
                outcome[reg.ticket] = reply
            else:
                checks.append(reg)
                room -= 0 if _open(stored.get(reg.ticket)) else 1
        if not checks:
            return outcome
        positions = read.get("positions")
        if positions is None:
            cause = read["broker_error"]
            self.metrics.registrations.labels("not_ready").inc(len(checks))
            error = NotReady(f"cannot check the position with the broker: {cause}",
                             retry_after=2.0)
            outcome.update((r.ticket, error) for r in checks)
            return outcome
        made: list[tuple[Trade, Transition, dict[str, Any]]] = []
        for reg in checks:
            try:
                built = self._build(reg, positions.get(reg.ticket), stored.get(reg.ticket))
            except DtmsError as exc:
                outcome[reg.ticket] = exc
                continue
            if isinstance(built, dict):
                outcome[reg.ticket] = built
            else:
                made.append(built)
        if not made:
            return outcome
        # durable first, acknowledged after
        try:
            await self.store.ask(PutTrades(tuple(PutTrade(t, tr) for t, tr, _ in made)),
                                 timeout=30.0)
        except DtmsError as exc:
            outcome.update((t.ticket, exc) for t, _, _ in made)
            return outcome
        # a trade seen for the first time has no journal; one adopted again reads its own
        await self._spawn_all((t, () if t.ticket not in stored else None) for t, _, _ in made)
        for trade, _, adjusted in made:
            outcome[trade.ticket] = {"created": True, "trade": trade.view(self.settings.policy.mode), "adjusted": adjusted}
        self.metrics.registrations.labels("created").inc(len(made))
        return outcome

    def _admit(self, reg: Registration, existing: Trade | None, room: int) -> dict | None:
        """The reply for a closed ticket, None for one to check with the broker, or the error
        (ownership, conflict with a closed trade, capacity) that refuses it."""
        error = request_refusal(reg, self.rules)
        if error is None and existing is not None and existing.state is TradeState.CLOSED:
            error = stored_refusal(reg, existing)
            if error is None:
                return self._existing(reg, existing, {})
        if error is not None:
            raise self._refused(error)
        if room <= 0 and not _open(existing):
            rs = self.settings.registry
            raise Overloaded(f"DTMS manages its maximum of {rs.max_trades} trades",
                             retry_after=60.0, field="ticket")
        return None

    def _existing(self, reg: Registration, existing: Trade,
                  adjusted: dict[str, Any]) -> dict[str, Any]:
        self.metrics.registrations.labels("existing").inc()
        log.info("duplicate registration of %s (%s)", reg.ticket, existing.state.value,
                 extra={"ticket": reg.ticket, "state": existing.state.value})
        return {"created": False, "trade": existing.view(self.settings.policy.mode), "adjusted": adjusted}

    def _refused(self, error: DtmsError) -> DtmsError:
        label = {OwnedElsewhere: "owned_elsewhere", Conflict: "conflict",
                 DtmsPosition: "dtms_position", NotFound: "not_found"}.get(type(error), "error")
        self.metrics.registrations.labels(label).inc()
        log.info("registration refused: %s", error, extra={"code": error.code})
        return error

    def _build(self, reg: Registration, p: Position | None, existing: Trade | None
               ) -> tuple[Trade, Transition, dict[str, Any]] | dict[str, Any]:
        """The trade as the broker has it, its transition, and what differed from ``reg``;
        or the reply for a stored open trade (``created: false``)."""
        if p is None:
            if _open(existing):
                assert existing is not None
                return self._existing(reg, existing, {})
            raise self._refused(NotFound(f"no open position with ticket {reg.ticket} at the "
                                         "broker", field="ticket"))
        error = position_refusal(reg, p, self.rules)
        if error is None and existing is not None:
            error = stored_refusal(reg, existing)
        if error is not None:
            raise self._refused(error)

        adjusted: dict[str, dict[str, float]] = {}
        for name, given, truth in (("entry_price", reg.entry_price, p.price_open),
                                   ("volume", reg.volume, p.volume), ("sl", reg.sl, p.sl),
                                   ("tp", reg.tp, p.tp)):
            if given is not None and abs(given - truth) > 1e-9:
                adjusted[name] = {"given": given, "broker": truth}
        if _open(existing):
            assert existing is not None
            return self._existing(reg, existing, adjusted)

        now = self.clock()
        trade = Trade(ticket=p.ticket, symbol=p.symbol, direction=p.direction,
                      entry_price=p.price_open, volume=p.volume, initial_volume=p.volume,
                      sl=p.sl, tp=p.tp, initial_sl=p.sl, state=TradeState.HEALTHY,
                      state_since=now, strategy_type=reg.strategy_type, owner=reg.owner,
                      magic=p.magic, comment=reg.comment or p.comment, policy=dict(reg.policy),
                      created_at=now, updated_at=now, opened_at=float(p.time))
        transition = Transition(trade.ticket, now, "", "HEALTHY", "registered")
        if existing is not None:  # RELEASED earlier: adopted again, its history kept
            trade = trade.copy(initial_volume=existing.initial_volume,
                               initial_sl=existing.initial_sl, created_at=existing.created_at)
            transition = Transition(trade.ticket, now, existing.state.value, "HEALTHY",
                                    "registered again")
        return trade, transition, adjusted


def _open(trade: Trade | None) -> bool:
    """A stored trade DTMS still holds (managed or SUSPENDED): re-registering answers it."""
    return trade is not None and trade.state not in (TradeState.RELEASED, TradeState.CLOSED)
