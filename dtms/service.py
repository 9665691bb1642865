"""The DTMS service: builds the supervision tree, gates readiness, and dispatches the RPC methods
(their handlers are in :mod:`dtms.rpc.methods`).

Tree (SPEC section 1)::

    root (rest_for_one)
    ├── metrics    /metrics, /health and the web view over HTTP (dtms.web)
    ├── rpc        msgpack-rpc over TCP
    └── core (rest_for_one)
        ├── store      the only writer to SQLite
        ├── broker     the only owner of the terminal
        ├── positions  one poll of open positions for all trades
        ├── registry   ticket -> trade actor, and the trades supervisor under it
        ├── guard      the account guard (issue 15): after the registry, so that its crash
        │              restarts only the webhooks (rest_for_one), and a registry restart it
        └── webhooks   POSTs the store's queued webhook deliveries (only with [[webhooks]])

The endpoints start first, so the rpc port opens at once and answers ``NOT_READY`` until the
store is open, the broker connected, stored trades reloaded, and a position poll has reconciled
them. ``health`` always answers. If readiness is not reached within
``service.startup_timeout_s`` the service raises :class:`StartupTimeout`, and if a part cannot
start at all :class:`StartupFailed` (the CLI exits 3 for both); the
root supervisor past its restart intensity raises ``SupervisorEscalation`` (the CLI exits 4).

Before anything opens the database, the service takes its lock (:class:`StoreLock`: a second
DTMS on the same file fails to start, naming the holder). At every broker connect the account
the terminal is logged in to is checked against the one the database belongs to
(:mod:`dtms.policy.account`) before the terminal is used; another account fails the start
(unless ``adopt_account``) and touches no trade.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from typing import Any

import anyio
from anyio.abc import TaskStatus

from dtms import __version__
from dtms.actors.base import Actor, ActorStopped, MailboxFull
from dtms.actors.broker import BrokerActor
from dtms.actors.guard import GuardActor
from dtms.actors.market import MarketHub
from dtms.actors.positions import Poll, PositionWatcher
from dtms.actors.registry import (
    Register,
    RegistryActor,
)
from dtms.actors.store import (
    AddRestart,
    GetMeta,
    PutMeta,
    StoreActor,
)
from dtms.brokers.mt5 import MT5Adapter, load_module
from dtms.config import Settings
from dtms.errors import DtmsError, NotFound, NotReady
from dtms.events import EventBus, watch_readiness
from dtms.logs import TRACE_ID, new_trace_id
from dtms.metrics import Metrics, MetricsServer
from dtms.model import Account, Registration
from dtms.policy.account import account_record, check_account
from dtms.rpc.guard import with_guard
from dtms.rpc.methods import Handler, Methods
from dtms.rpc.server import Connection, RpcServer
from dtms.storelock import StoreInUse, StoreLock
from dtms.supervisor import Backoff, ChildSpec, Intensity, RestartEvent, Strategy, Supervisor
from dtms.web.views import WebView
from dtms.webhooks import WebhookDelivery, WebhookQueue

log = logging.getLogger(__name__)

class StartupTimeout(RuntimeError):
    """Readiness was not reached within the startup timeout."""


class StartupFailed(RuntimeError):
    """A part of the tree could not start at all (e.g. the database cannot be opened)."""


def _innermost(exc: BaseException) -> BaseException:
    """Unwrap single-exception groups to the exception that matters."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Service:
    """One DTMS process. ``module`` overrides the terminal module (tests pass a SimTerminal);
    ``adopt_account``: the database takes on the account of the first connect if it belonged
    to another one (``dtms serve --adopt-account``)."""

    def __init__(self, settings: Settings, *, module: Any = None,
                 adopt_account: bool = False) -> None:
        self.settings = settings
        self.adopt_account = adopt_account
        self.refused: str | None = None       # why the start must fail (another account)
        self.last_crash: dict[str, str] = {}  # kind of child -> its last crash, for the exit
        self.account_checked = anyio.Event()  # the terminal's account is the database's
        self._registry_gate: anyio.CancelScope | None = None  # while the registry waits for it
        self.module = module if module is not None else load_module(settings)
        self.metrics = Metrics()
        self.started_at = time.monotonic()
        self._recovered_mark: int | None = None
        self.ready_event = anyio.Event()

        bs = settings.broker
        self.events = EventBus()
        # webhooks (dtms.webhooks): queued by the store's commits, POSTed by their own actor
        queue = (WebhookQueue(settings.webhooks, settings.store.webhooks_max_queued,
                              self.metrics, policy_mode=settings.policy.mode)
                 if settings.webhooks else None)
        self.store = StoreActor(settings.store, self.metrics, events=self.events,
                                webhooks=queue, policy_mode=settings.policy.mode)
        self.webhooks = (WebhookDelivery(settings.webhooks, store=self.store, queue=queue,
                                         metrics=self.metrics) if queue is not None else None)
        if self.webhooks is not None:
            self.events.tap(self.webhooks.tap)
        self.broker = BrokerActor(MT5Adapter.from_settings(self.module, settings),
                                  metrics=self.metrics, call_timeout_s=bs.call_timeout_s,
                                  connect_retry_s=bs.connect_retry_s,
                                  heartbeat_interval_s=bs.heartbeat_interval_s,
                                  heartbeat_timeout_s=bs.heartbeat_timeout_s)
        self.broker.on_connect = self._check_account
        self.market = MarketHub(broker=self.broker, settings=settings, metrics=self.metrics,
                                on_event=self._on_restart, store=self.store)
        self.watcher = PositionWatcher(self.broker, metrics=self.metrics,
                                       interval_s=bs.poll_interval_s,
                                       max_share=bs.poll_max_share, dtms_magic=bs.magic,
                                       comment_tag=bs.comment_tag)
        if settings.recovery.adopt_unknown:
            self.watcher.on_unknown = self._adopt
        self.registry = RegistryActor(settings, store=self.store, broker=self.broker,
                                      watcher=self.watcher, market=self.market,
                                      metrics=self.metrics,
                                      on_event=self._on_restart, on_recovered=self._on_recovered)
        self.guard = GuardActor(settings, broker=self.broker, store=self.store,
                                metrics=self.metrics, events=self.events,
                                trade_actor=self.registry.trades.get,
                                symbols=lambda: self.market.symbols.keys())
        self.events.trade_extras = lambda: {"guard": self.guard.state.lock_view()}
        if queue is not None:
            queue.trade_extras = self.events.trade_extras
        self.rpc = RpcServer(settings.rpc, self.dispatch, metrics=self.metrics)
        methods = Methods(self)
        # every trade view a method answers carries the guard's lock: on the rpc port and in the
        # web view alike, which both call these
        self.methods = {name: self._with_guard(name, fn) for name, fn in methods.table().items()}
        self.connection_methods = methods.connection_table()
        self.metrics_server = MetricsServer(self.metrics, self.health, settings.metrics.host,
                                            settings.metrics.port, token=settings.metrics.token,
                                            web=WebView(self))

    # -- readiness -----------------------------------------------------------------------------
    def _on_recovered(self) -> None:
        self._recovered_mark = self.watcher.polls_ok
        if self.settings.service.gc_freeze:
            gc.unfreeze()   # a recovery after a core restart: the old incarnation's objects
            gc.collect()    # are garbage now
            gc.freeze()
            gc.enable()
        # reconcile now rather than after the poll's pause, which is long with many positions
        self.watcher.tell_nowait(Poll())

    @property
    def initialized(self) -> bool:
        return self.store.db is not None and self.registry.recovered

    @property
    def monitoring_active(self) -> bool:
        """A position poll has completed since this registry incarnation recovered."""
        return (self.initialized and self._recovered_mark is not None
                and self.watcher.polls_ok > self._recovered_mark)

    @property
    def ready(self) -> bool:
        # a locked account stays ready (registrations go on; the guard closes new positions)
        return (self.monitoring_active and self.broker.connected and self.store.failing is None
                and self.guard.loaded)

    def health(self) -> dict[str, Any]:
        ready = self.ready
        self.metrics.ready.set(1 if ready else 0)
        for actor in (self.store, self.broker, self.market, self.watcher, self.registry,
                      self.guard):
            self.metrics.mailbox_depth.labels(actor.name).set(actor.mailbox_depth)
        return {"ready": ready, "initialized": self.initialized,
                "monitoring_active": self.monitoring_active,
                "broker_connected": self.broker.connected,
                "broker_error": None if ready else self.broker.error,   # why not connected
                "active_trades": len(self.registry.trades),
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "version": __version__, "guard": self.guard.state.lock_view()}

    def _not_ready(self) -> NotReady:
        if self.store.db is None:
            why = "the store is not open"
        elif self.store.failing is not None:
            why = f"the database refuses writes ({self.store.failing})"
        elif not self.broker.connected and self.broker.refused is not None:
            why = self.broker.refused
        elif not self.broker.connected:
            why = "the trading terminal is not connected"
            error = self.broker.error   # a crash is told once, as the last crash
            if error and error != self.last_crash.get("broker"):
                why += f" ({error})"
        elif not self.registry.recovered:
            why = "stored trades are being recovered"
        elif not self.guard.loaded:
            why = "the account guard is loading its state"
        else:
            why = "stored trades are being reconciled with the broker"
        return NotReady(f"DTMS is not ready: {why}",
                        retry_after=self.settings.broker.connect_retry_s)

    def _readiness(self) -> dict[str, Any]:
        """What ``service.not_ready`` says about why."""
        return {"reason": self._not_ready().message, "broker_connected": self.broker.connected,
                "store_writable": self.store.failing is None}

    def _adopt(self, tickets: list[int]) -> None:
        """recovery.adopt_unknown: register positions with our magic that we have no record of."""
        for ticket in tickets:
            log.warning("adopting unknown position %s (recovery.adopt_unknown)", ticket,
                        extra={"ticket": ticket})
            try:
                self.registry.tell_nowait(Register(Registration(ticket, owner="dtms-adopted", adopted=True)))
            except (MailboxFull, ActorStopped) as exc:  # stays listed in status as unknown
                log.error("position %s not adopted: %r", ticket, exc, extra={"ticket": ticket})

    async def _check_account(self, account: Account) -> str | None:
        """The broker's connect hook: None to go on, or why this account must not be used."""
        path = self.settings.store.path
        try:
            stored = await self.store.ask(GetMeta("account"))
        except (DtmsError, ActorStopped, TimeoutError) as exc:  # the connect is retried
            return f"the account cannot be checked against the database {path}: {exc}"
        verdict = check_account(stored, account_record(account), adopt=self.adopt_account,
                                db=f"the database {path}")
        if verdict.action == "refuse":
            if not self.ready_event.is_set():
                self.refused = verdict.message   # the start fails (_watch_startup)
            log.critical("%s", verdict.message, extra={"login": account.login,
                                                       "server": account.server})
            return verdict.message
        if verdict.action in ("record", "adopt"):
            try:
                await self.store.ask(PutMeta("account", account_record(account), time.time()))
            except (DtmsError, ActorStopped, TimeoutError) as exc:
                return f"the account cannot be recorded in the database {path}: {exc}"
            log.log(logging.WARNING if verdict.action == "adopt" else logging.INFO, "%s",
                    verdict.message, extra={"login": account.login, "server": account.server})
        self.adopt_account = False  # adopting is for this start's account, not any later one
        self.account_checked.set()
        return None

    def _on_restart(self, event: RestartEvent) -> None:
        if event.reason == "crash" and event.exception:
            self.last_crash[event.kind or event.child] = event.exception
        if event.action == "restart":
            self.metrics.actor_restarts.labels(event.kind).inc()
        elif event.action == "give_up":
            self.metrics.actor_giveups.labels(event.kind).inc()
        elif event.action == "escalate":
            self.metrics.escalations.labels(event.supervisor).inc()
        # never block the supervisor's control loop on the store
        try:
            self.store.tell_nowait(AddRestart(event))
        except (MailboxFull, ActorStopped) as exc:
            self.metrics.store_errors.inc()
            log.error("restart history row not stored (%r): %s", exc, event,
                      extra={"supervisor": event.supervisor, "child": event.child})

    # -- the tree ------------------------------------------------------------------------------
    def _spec(self, actor: Actor) -> ChildSpec:
        return ChildSpec(actor.name, actor.run, shutdown_timeout=self.settings.supervisor.shutdown_timeout_s,
                         stop=actor.stop)

    async def _run_registry(self, *,
                            task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The registry, once the terminal's account is known to be the database's: its
        recovery reconciles the stored trades and settles their journals, which against
        another account's terminal would close every one of them. Reported started at once,
        so that the tree (and the endpoints' NOT_READY) does not wait for the terminal."""
        task_status.started()
        if not self.account_checked.is_set():
            with anyio.CancelScope() as gate:
                self._registry_gate = gate
                await self.account_checked.wait()
            self._registry_gate, stopped = None, gate.cancel_called
            if stopped:
                return
        await self.registry.run()

    async def _stop_registry(self) -> None:
        if self._registry_gate is not None:   # still waiting: nothing started to stop
            self._registry_gate.cancel()
        else:
            await self.registry.stop()

    def build_tree(self) -> Supervisor:
        sup = self.settings.supervisor
        backoff = Backoff(sup.min_backoff_s, sup.max_backoff_s, sup.jitter)
        intensity = Intensity(sup.root_max_restarts, sup.root_period_s)
        registry = ChildSpec(self.registry.name, self._run_registry, stop=self._stop_registry,
                             shutdown_timeout=sup.shutdown_timeout_s)
        hooks = [self._spec(self.webhooks)] if self.webhooks is not None else []
        core = Supervisor("core", [*(self._spec(a) for a in
                                     (self.store, self.broker, self.market, self.watcher)),
                                   registry,
                                   # cancelled at once, not drained: an evaluation may wait on
                                   # a store that is restarting; a close it was sending is in
                                   # a journal and resolved at its next start
                                   ChildSpec(self.guard.name, self.guard.run,
                                             shutdown_timeout=sup.shutdown_timeout_s),
                                   *hooks],
                          strategy=Strategy.REST_FOR_ONE, intensity=intensity, backoff=backoff,
                          on_event=self._on_restart)
        children = [ChildSpec("rpc", self.rpc.run, shutdown_timeout=sup.shutdown_timeout_s)]
        if self.settings.metrics.enabled:
            children.insert(0, ChildSpec("metrics", self.metrics_server.run,
                                         shutdown_timeout=sup.shutdown_timeout_s))
        children.append(ChildSpec("core", core.run, stop=core.stop,
                                  shutdown_timeout=sup.shutdown_timeout_s * 4))
        return Supervisor("root", children, strategy=Strategy.REST_FOR_ONE, intensity=intensity,
                          backoff=backoff, on_event=self._on_restart)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; reports started once the endpoints listen."""
        root = self.build_tree()
        # The event loop hands work to threads (the terminal's, SQLite's) and waits for their
        # answers; while another thread computes (a position poll), Python lets it keep the GIL
        # for the switch interval before the loop may run again. At Python's 5 ms a
        # registration took ~8 ms with a poll running, at 0.5 ms ~3 ms (bench/README.md).
        switch = sys.getswitchinterval()
        if self.settings.service.switch_interval_ms > 0:
            sys.setswitchinterval(self.settings.service.switch_interval_ms / 1000.0)
        # Recovery makes objects that live as long as their trades (actors, tasks, mailboxes):
        # Python's cyclic GC re-scanned all of them over and over while they were made (10,000
        # trades: 18 full collections, 5 s of a 25 s start). It is off until the registry has
        # recovered, then one collection and gc.freeze() keep them out of later scans.
        # A position poll at 100,000 positions holds 100,000 rows from the terminal while it
        # runs: at Python's 700-object young generation they outlived ~140 young collections
        # each poll, reached the old generation and set off a full collection every few
        # seconds (15 in 30 s, 2.2 s of CPU). With 50,000 they die young.
        collecting = gc.isenabled()
        thresholds = gc.get_threshold()
        if self.settings.service.gc_gen0_threshold > 0:
            gc.set_threshold(self.settings.service.gc_gen0_threshold, *thresholds[1:])
        if self.settings.service.gc_freeze:
            gc.disable()
        try:
            lock = self._lock_store()
            try:
                await self._run(root, task_status)
            finally:
                lock.release()
        finally:
            sys.setswitchinterval(switch)
            gc.set_threshold(*thresholds)
            if self.settings.service.gc_freeze:
                gc.unfreeze()
                if collecting:
                    gc.enable()

    def _lock_store(self) -> StoreLock:
        """Before the store opens anything: a second DTMS on this file touches nothing."""
        lock = StoreLock(self.settings.store.path)
        try:
            lock.acquire()
        except StoreInUse as exc:
            log.critical("%s", exc)
            raise StartupFailed(str(exc)) from exc
        except OSError as exc:  # e.g. the store's directory cannot be made
            log.critical("startup failed: %r", exc)
            raise StartupFailed(f"cannot start: {exc!r}") from exc
        return lock

    async def _run(self, root: Any, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_startup)
            tg.start_soon(self._watch_readiness)
            try:
                await tg.start(root.run)
            except Exception as exc:
                cause = _innermost(exc)
                log.critical("startup failed: %r", cause, exc_info=exc)
                raise StartupFailed(f"cannot start: {cause!r}") from exc
            task_status.started()

    async def _watch_startup(self) -> None:
        """Exit (StartupTimeout) when not ready within ``startup_timeout_s`` -- counted from the
        last progress of the registry's recovery: 100,000 stored trades take about a minute to
        reload here, and a restart loop that never becomes ready is worse than a slow start.
        A start that is stuck (no terminal, no store, no trade reloaded) still fails in time."""
        timeout = self.settings.service.startup_timeout_s
        deadline = time.monotonic() + timeout
        reloaded = 0
        while not self.ready:
            if self.refused is not None:
                raise StartupFailed(self.refused)
            if len(self.registry.trades) > reloaded:
                reloaded = len(self.registry.trades)
                deadline = time.monotonic() + timeout
            if time.monotonic() > deadline:
                reason = self._not_ready().message
                if self.last_crash:  # what kept it from getting there, not just the symptom
                    reason += "; last crash: " + "; ".join(
                        f"{kind}: {exc}" for kind, exc in self.last_crash.items())
                log.error("startup timeout after %ss: %s", self.settings.service.startup_timeout_s,
                          reason)
                raise StartupTimeout(f"not ready within {self.settings.service.startup_timeout_s}s: "
                                     f"{reason}")
            await anyio.sleep(0.02)
        self.metrics.ready.set(1)
        log.info("DTMS ready", extra={"rpc_port": self.rpc.port,
                                      "metrics_port": self.metrics_server.port,
                                      "active_trades": len(self.registry.trades)})
        self.ready_event.set()

    async def _watch_readiness(self) -> None:
        """Once first ready: ``service.not_ready`` on the bus each time the service leaves it."""
        await self.ready_event.wait()
        await watch_readiness(lambda: self.ready, self._readiness, self.events, was_ready=True)

    # -- rpc -----------------------------------------------------------------------------------
    def _with_guard(self, method: str, fn: Handler) -> Handler:
        async def stamped(args: dict[str, Any]) -> Any:
            return with_guard(method, await fn(args), self.guard.state.lock_view())
        return stamped

    async def dispatch(self, method: str, args: dict[str, Any], conn: Connection) -> Any:
        TRACE_ID.set(new_trace_id())  # this request's task only; actors carry it onwards
        fn = self.methods.get(method)
        if fn is None and method not in self.connection_methods:
            known = sorted([*self.methods, *self.connection_methods])
            raise NotFound(f"unknown method {method!r}; methods: {', '.join(known)}",
                           field="method")
        if method != "health" and not self.ready:
            if method in ("register", "register_batch"):
                self.metrics.registrations.labels("not_ready").inc()
            raise self._not_ready()
        if fn is None:
            return await self.connection_methods[method](args, conn)
        return await fn(args)
