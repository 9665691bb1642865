"""The guard actor: the one owner of the account guard's state (issue 15, SPEC section 11).

Every ``guard.poll_s`` (while any ``[guard]`` rule is configured, or a lock from before
holds) it reads, through the broker actor, the account (balance, equity), every
open position with its profit, and the terminal's time (the newest tick of the symbols in
play, read in ``signals.server_timezone``), feeds :func:`dtms.policy.guard.evaluate`, stores
the new state, and then acts on the intents:

* **Intent before action.** The state -- which positions it ordered closed, the lock -- is
  stored (``meta["guard"]``) before anything is sent; a SIGKILL and a restart keep the lock
  and the day's figures.
* **Managed positions** are acted on by their trade actor (:class:`~dtms.actors.trade.Act`):
  the close or the stop is journaled and sent by the trade's own path, exactly once, and
  reconciled after a crash like every other action of the trade.
* **Other positions** (``on_breach = "close_all"``, positions opened while locked) are closed
  by this actor through its own journal, stored with its state
  (:class:`~dtms.actors.guard_closes.OwnCloses`).
* A close that failed is ordered again at the next evaluation (never one that is done).

DTMS's own hedges (``broker.magic``) count in the equity but are not the guard's to close
or tighten: each belongs to its trade, which closes it with the trade.

It answers the ``guard``, ``guard_unlock``, ``flatten``, ``close`` and ``modify`` methods
(:mod:`dtms.rpc.guard`), publishes ``guard.locked`` / ``guard.unlocked`` / ``guard.tightened``
after the state is stored, and keeps the ``dtms_guard_*`` metrics.

The trades it reaches through ``trade_actor`` (the registry's ticket map, read, never
written: asking the registry would queue behind registrations).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import anyio

from dtms.actors.base import Actor, ActorStopped
from dtms.actors.guard_closes import OwnCloses
from dtms.actors.store import GetMeta, PutMeta
from dtms.actors.trade import Act, GetView
from dtms.config import Settings
from dtms.errors import BrokerError, DtmsError, InvalidArgument, NotFound, NotReady
from dtms.events import EventBus
from dtms.metrics import Metrics
from dtms.model import ActionIntent, ActionKind, Direction, Position
from dtms.policy import guard as policy

log = logging.getLogger(__name__)

META_KEY = "guard"
HISTORY = 100          # lock/unlock/force records kept


@dataclass(frozen=True, slots=True)
class Evaluate:
    pass


@dataclass(frozen=True, slots=True)
class GetGuard:
    pass


@dataclass(frozen=True, slots=True)
class Unlock:
    reason: str
    by: str = ""


@dataclass(frozen=True, slots=True)
class Flatten:
    reason: str


@dataclass(frozen=True, slots=True)
class Close:
    ticket: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Modify:
    ticket: int
    sl: float | None = None
    tp: float | None = None
    force: bool = False
    by: str = ""


class GuardActor(Actor):
    reply_errors = (DtmsError,)

    def __init__(self, settings: Settings, *, broker: Any, store: Actor, metrics: Metrics,
                 events: EventBus, trade_actor: Callable[[int], Any],
                 symbols: Callable[[], Iterable[str]] = tuple,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__("guard", mailbox_size=256)
        self.settings = settings
        self.cfg = settings.guard
        self.tz = ZoneInfo(settings.signals.server_timezone)
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.events = events
        self.trade_actor = trade_actor
        self.symbols = symbols            # symbols in play besides the positions' (the market's)
        self.clock = clock
        self.state = policy.GuardState()
        self.own = OwnCloses(settings, broker, save=self._save, on_failed=self._close_failed,
                             clock=clock)
        self.history: list[dict[str, Any]] = []
        self.figures = policy.Figures()
        self.loaded = False
        self.evaluated_at = 0.0           # market time of the last evaluation
        self._specs: dict[str, Any] = {}
        self._seen_symbols: set[str] = set()
        self._equity = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    async def on_start(self) -> None:
        # loaded in the background: a start never waits on the store (a core restart in a
        # crash storm must reach its supervisor's intensity, not hang here); until it is
        # loaded the service is not ready
        self.loaded = False
        self.spawn(self._load)

    async def _load(self) -> None:
        stored = await self.store.ask(GetMeta(META_KEY), timeout=30.0) or {}
        # what was being closed at the stop is known to the journals (the trades' for managed
        # positions, this actor's for the others), which never send a close twice: a close
        # that failed or never left is ordered again
        self.state = dataclasses.replace(policy.GuardState.from_json(stored.get("state")),
                                         closing=())
        self.own.rows = dict(stored.get("journal") or {})
        self.history = list(stored.get("history") or [])
        self._seen_symbols = set(stored.get("symbols") or ())
        self._specs = {}
        self.loaded = True
        self._publish_metrics()
        if self.state.locked:
            log.warning("account guard restarted locked: %s", self.state.reason,
                        extra={"guard_kind": self.state.kind, "since": self.state.since})
        await self._ticker()

    async def on_stop(self) -> None:
        self.loaded = False   # a restarted guard reads its state again before it answers

    async def _ticker(self) -> None:
        while not self.broker.connected:
            await anyio.sleep(0.05)
        while True:
            await self.ask(Evaluate(), timeout=max(60.0, self.cfg.poll_s * 10))
            await anyio.sleep(self.cfg.poll_s)

    async def _save(self) -> None:
        """The state, the journal and the history in one durable write (before any send)."""
        self.history = self.history[-HISTORY:]
        value = {"state": self.state.to_json(), "journal": self.own.kept(),
                 "history": self.history, "symbols": sorted(self._seen_symbols)}
        await self.store.ask(PutMeta(META_KEY, value, self.clock()), timeout=30.0)

    def _close_failed(self, ticket: int) -> None:
        self.state = policy.close_failed(self.state, ticket)   # the policy may order it again

    def _publish_metrics(self) -> None:
        f = self.figures
        self.metrics.guard_locked.set(1 if self.state.locked else 0)
        self.metrics.guard_daily_pnl.set(f.daily_pnl)
        self.metrics.guard_daily_limit.set(f.daily_limit)
        self.metrics.guard_drawdown_ratio.set(f.drawdown_pct / 100.0)
        self.metrics.guard_open_risk.set(f.open_risk)

    # -- messages ------------------------------------------------------------------------------
    async def handle(self, message: Any) -> Any:
        if isinstance(message, Evaluate):
            return await self._evaluate()
        if isinstance(message, GetGuard):
            return self.view()
        try:
            return await self._request(message)
        except BrokerError as exc:   # a person's request: tell them, specifically
            raise NotReady(f"the trading terminal did not answer: {exc}",
                           retry_after=self.settings.broker.connect_retry_s) from exc

    async def _request(self, message: Any) -> Any:
        if isinstance(message, Unlock):
            return await self._unlock(message)
        if isinstance(message, Flatten):
            return await self._flatten(message.reason)
        if isinstance(message, Close):
            return await self._close_one(message)
        if isinstance(message, Modify):
            return await self._modify(message)
        raise TypeError(f"guard cannot handle {message!r}")

    def view(self) -> dict[str, Any]:
        s, f, cfg = self.state, self.figures, self.cfg
        # active: a rule is set (or a lock holds); otherwise the guard reads nothing and its
        # figures stay 0 -- said, so that a zero is not read as "nothing lost today"
        return {**s.lock_view(), "active": policy.enabled(cfg) or s.locked,
                "kind": s.kind, "day": s.day,
                "day_start_balance": s.day_start_balance, "daily_pnl": f.daily_pnl,
                "daily_limit": f.daily_limit, "equity_peak": s.equity_peak,
                "initial_balance": s.initial_balance, "drawdown_pct": f.drawdown_pct,
                "allowance": f.allowance, "open_risk": f.open_risk, "naked": list(f.naked),
                "limits": {"daily_loss_limit": cfg.daily_loss_limit,
                           "daily_loss_pct": cfg.daily_loss_pct,
                           "max_drawdown_pct": cfg.max_drawdown_pct,
                           "drawdown_mode": cfg.drawdown_mode,
                           "daily_profit_target": cfg.daily_profit_target,
                           "on_breach": cfg.on_breach, "risk_budget": cfg.risk_budget,
                           "day_reset_hour": cfg.day_reset_hour,
                           "timezone": self.settings.signals.server_timezone},
                "evaluated_at": self.evaluated_at, "history": self.history[-10:]}

    # -- reading the account -------------------------------------------------------------------
    async def _snapshot(self) -> tuple[policy.AccountSnapshot, dict[int, Position]] | None:
        account = await self.broker.call("account")
        positions: list[Position] = await self.broker.call("positions")
        symbols = {p.symbol for p in positions}
        self._seen_symbols |= symbols
        names = sorted(symbols | set(self.symbols()) | self._seen_symbols)
        if not names:
            return None   # no symbol in play: no terminal time to read yet
        ticks, _ = await self.broker.call("ticks", names=names)
        if not ticks:
            return None
        now = float(max(t.time for t in ticks.values()))
        exposures = []
        for p in positions:
            if p.magic == self.settings.broker.magic:
                continue   # DTMS's own hedge: its trade actor owns it (it reduces the risk)
            spec = self._specs.get(p.symbol)
            if spec is None:
                spec = self._specs[p.symbol] = await self.broker.call("symbol", name=p.symbol)
            exposures.append(_exposure(p, spec, self.trade_actor(p.ticket) is not None))
        self._equity = account.equity
        return (policy.AccountSnapshot(now=now, balance=account.balance, equity=account.equity,
                                       positions=tuple(exposures)),
                {p.ticket: p for p in positions})

    async def _evaluate(self) -> None:
        if not (policy.enabled(self.cfg) or self.state.locked):
            return   # nothing configured: no terminal call (a lock from before is still held)
        try:
            if self.own.rows and not await self.own.resolve():
                return
            read = await self._snapshot()
        except (BrokerError, NotReady, TimeoutError) as exc:
            self.metrics.guard_evaluations.labels("error").inc()
            log.warning("account guard: cannot read the account: %s", exc)
            return
        if read is None:
            return
        snap, positions = read
        d = policy.evaluate(snap, self.state, self.cfg, self.tz)
        self.metrics.guard_evaluations.labels("ok").inc()
        changed = d.state != self.state
        self.state, self.figures, self.evaluated_at = d.state, d.figures, snap.now
        for kind in d.breaches:
            self.metrics.guard_breaches.labels(kind).inc()
        for name, params in d.events:
            self._record(name, params)
        if changed or d.events:
            await self._save()
        self._publish_metrics()
        for name, params in d.events:
            log.log(logging.WARNING if name == "guard.locked" else logging.INFO,
                    "account guard %s: %s", name.split(".")[1], params.get("reason"),
                    extra={"guard_event": name, **{f"guard_{k}": v for k, v in params.items()}})
            self.events.publish(name, params)
        try:
            await self._act(d, positions)
        except (BrokerError, NotReady, TimeoutError) as exc:
            # a row left sent/uncertain is resolved from the deals before anything is resent
            self.metrics.guard_evaluations.labels("error").inc()
            log.warning("account guard: acting failed: %s (resolved at the next evaluation)",
                        exc)

    def _record(self, name: str, params: dict[str, Any]) -> None:
        self.history.append({"event": name, "at": self.clock(), **params})

    async def _act(self, d: policy.GuardDecision, positions: dict[int, Position]) -> None:
        tightened = {t["ticket"]: t for t in d.tightened}
        results = []
        for intent in d.intents:
            if intent.kind == policy.CLOSE:
                outcome = await self._close(positions[intent.ticket], intent.reason,
                                            "guard:close", managed=intent.managed)
                if outcome["result"] != "done":
                    self.state = policy.close_failed(self.state, intent.ticket)
                    await self._save()
            else:
                outcome = await self._order(intent.ticket, ActionIntent(
                    ActionKind.MODIFY_SL, f"sl:guard:{intent.sl:.10g}", intent.reason,
                    sl=intent.sl))
                results.append({**tightened.get(intent.ticket, {}), "result": outcome["result"],
                                "retcode": outcome["retcode"]})
            self.metrics.guard_actions.labels(
                intent.kind, outcome["result"] if outcome["result"] in ("done", "refused")
                else "failed").inc()
        if results:
            log.info("account guard tightened %d stop(s)", len(results),
                     extra={"guard_tightened": results})
            self.events.publish("guard.tightened", {"tightened": results})

    # -- acting --------------------------------------------------------------------------------
    async def _order(self, ticket: int, intent: ActionIntent, force: bool = False
                     ) -> dict[str, Any]:
        """Have the trade actor of ``ticket`` journal and send ``intent``."""
        actor = self.trade_actor(ticket)
        if actor is None:
            return {"ticket": ticket, "result": "refused", "retcode": 0,
                    "reason": "not a managed trade"}
        try:
            answer = await actor.ask(Act(intent, force=force), timeout=60.0)
            if answer is None:   # an actor that no longer handles anything (it is exiting)
                raise ActorStopped(f"trade-{ticket}")
            return answer
        except (ActorStopped, TimeoutError, DtmsError) as exc:   # DtmsError: it crashed
            log.warning("account guard: trade %s did not take %s: %r", ticket, intent.kind,
                        exc, extra={"ticket": ticket})
            return {"ticket": ticket, "result": "failed", "retcode": 0, "reason": repr(exc)}

    async def _close(self, p: Position, reason: str, obligation: str, *,
                     managed: bool) -> dict[str, Any]:
        if managed:
            outcome = await self._order(p.ticket, ActionIntent(ActionKind.CLOSE, obligation,
                                                               reason))
            if outcome["reason"] != "not a managed trade":
                return outcome
        return await self.own.close(p, reason, self._specs.get(p.symbol))

    # -- requests ------------------------------------------------------------------------------
    async def _unlock(self, message: Unlock) -> dict[str, Any]:
        if not self.state.locked:
            return {**self.view(), "unlocked": False}
        account = await self.broker.call("account")
        kind = self.state.kind
        self.state = policy.unlock(self.state, account.equity)
        self.figures = dataclasses.replace(self.figures, drawdown_pct=0.0)
        params = {"reason": message.reason, "by": message.by or "unknown", "kind": kind,
                  "at": self.clock(), "equity": account.equity}
        self._record("guard.unlocked", params)
        await self._save()
        self._publish_metrics()
        log.warning("account guard unlocked by %s: %s", params["by"], message.reason,
                    extra={"guard_kind": kind, "by": params["by"]})
        self.events.publish("guard.unlocked", params)
        return {**self.view(), "unlocked": True}

    async def _positions(self) -> dict[int, Position]:
        return {p.ticket: p for p in await self.broker.call("positions")}

    async def _flatten(self, reason: str) -> dict[str, Any]:
        closed: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for p in (await self._positions()).values():
            if self.trade_actor(p.ticket) is None:
                continue
            outcome = await self._close(p, f"flatten: {reason}", "request:close", managed=True)
            (closed if outcome["result"] == "done" else failed).append(outcome)
        self._record("flatten", {"reason": reason, "closed": [o["ticket"] for o in closed],
                                 "failed": [o["ticket"] for o in failed]})
        await self._save()
        return {"closed": closed, "failed": failed}

    async def _close_one(self, message: Close) -> dict[str, Any]:
        p = (await self._positions()).get(message.ticket)
        if p is None:
            raise NotFound(f"no open position with ticket {message.ticket} at the broker",
                           field="ticket")
        reason = f"close requested: {message.reason}" if message.reason else "close requested"
        return await self._close(p, reason, "request:close",
                                 managed=self.trade_actor(p.ticket) is not None)

    async def _modify(self, m: Modify) -> dict[str, Any]:
        actor = self.trade_actor(m.ticket)
        if actor is None:
            raise NotFound(f"ticket {m.ticket} is not a trade DTMS manages", field="ticket")
        view = await actor.ask(GetView(), timeout=10.0)
        sign = 1.0 if view["direction"] == Direction.BUY.value else -1.0
        sl = view["sl"] if m.sl is None else m.sl
        loosens = view["sl"] > 0 and (sl <= 0 or sign * (sl - view["sl"]) < -1e-12)
        if loosens and not m.force:
            raise InvalidArgument(f"sl {sl:g} is looser than the current {view['sl']:g}; "
                                  "a stop only tightens unless force is true", field="sl")
        if sl <= 0:
            raise InvalidArgument("required (the position has no stop to keep)", field="sl")
        reason = (f"modify requested{' (FORCED, loosening)' if loosens else ''}"
                  f"{' by ' + m.by if m.by else ''}")
        key = f"request:modify:{time.time_ns()}"
        outcome = await self._order(m.ticket, ActionIntent(
            ActionKind.MODIFY_SL, key, reason, sl=sl, tp=m.tp or 0.0), force=m.force)
        if loosens:
            self._record("modify.forced", {"ticket": m.ticket, "from": view["sl"], "to": sl,
                                           "by": m.by or "unknown", "result": outcome["result"]})
            await self._save()
        return outcome


def _exposure(p: Position, spec: Any, managed: bool) -> policy.Exposure:
    sign = 1.0 if p.direction is Direction.BUY else -1.0
    moved = sign * (p.price_current - p.price_open)
    # money per 1.0 of price for this volume: from the position's own profit (any currency
    # conversion included) once it has moved, else the contract size (quote = account currency)
    value = p.profit / moved if abs(moved) > spec.point / 2 and p.profit / moved > 0 else (
        spec.contract_size * p.volume)
    return policy.Exposure(
        ticket=p.ticket, symbol=p.symbol, direction=p.direction, volume=p.volume,
        price_open=p.price_open, price=p.price_current, sl=p.sl, tp=p.tp, profit=p.profit,
        managed=managed, value_per_price=value,
        min_distance=(spec.stops_level + 1) * spec.point, point=spec.point, digits=spec.digits)
