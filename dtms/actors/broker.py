"""The broker actor: the one owner of the terminal connection.

Every terminal call in DTMS is a message to this actor, which runs it on a worker thread, one
at a time, with a timeout. It connects on start and keeps ``connected`` current: a call failing
with a link-level ``last_error`` (or timing out) marks it disconnected, and a background loop
reconnects with exponential backoff and jitter (the supervisor's ``Backoff``, starting at
``connect_retry_s``, capped at 30 s). Callers get :class:`~dtms.errors.NotReady` while the terminal is
unreachable, or :class:`~dtms.errors.BrokerError` for a failed call.

A terminal reached over a link (``dtms terminal-bridge``, ``dtms sim-terminal``) is pinged every
``heartbeat_interval_s`` on a connection of its own -- a protocol ping, not the age of the last
tick, since markets go quiet. No answer within ``heartbeat_timeout_s``, or the bridge saying its
terminal is stuck, marks it disconnected at once (callers get NOT_READY within about 1.5 s, the
link is broken so a call blocked on it fails now) and the reconnect loop takes over. Nothing
else follows from it: no trade is closed or forgotten because the terminal went away.

``error`` says why the broker is not connected -- the last failed connect, a lost heartbeat, a
refused token or account, or the exception the actor last crashed with -- until a connect
succeeds; the service shows it in ``health`` as ``broker_error``.

Every (re)connect reads the account again (another login may have another mode: hedging or
netting) and tells it to the actors that asked (:class:`Listen`) as :class:`Connected`, before
any call is let through: a market actor has it in its mailbox before any tick read on the new
connection, so a decision after a reconnect never uses the previous account's mode.

Usage: ``positions = await broker.call("positions", ticket=123)``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from dtms.actors.base import Actor, ActorStopped, MailboxFull
from dtms.brokers.mt5 import DISCONNECTED_CODES, MT5Adapter
from dtms.errors import BrokerError, DtmsError, NotReady
from dtms.metrics import Metrics
from dtms.model import Account
from dtms.supervisor import Backoff, _innermost

log = logging.getLogger(__name__)

#: adapter methods other actors may call
OPERATIONS = frozenset({"account", "symbol", "tick", "ticks", "rates", "positions", "positions_of",
                        "position_changes", "deals_for_position",
                        "deals_between", "send"})
_ORDER_CLASSES = {10009: "success", 10010: "success", 10008: "success", 10025: "success",
                  10004: "retry", 10020: "retry", 10021: "retry",
                  10012: "uncertain", 10031: "uncertain", 10011: "uncertain"}


def retcode_class(retcode: int) -> str:
    return _ORDER_CLASSES.get(retcode, "reject")


@dataclass(frozen=True, slots=True)
class Listen:
    """Told by an actor that wants :class:`Connected` on every (re)connect; an actor of the
    same name (a restarted one) replaces the earlier."""
    actor: Actor


@dataclass(frozen=True, slots=True)
class Connected:
    """Told to every listener on each (re)connect, with the account as read then."""
    account: Account


@dataclass(frozen=True, slots=True)
class Call:
    operation: str
    kwargs: dict[str, Any] = field(default_factory=dict)


class BrokerActor(Actor):
    reply_errors = (DtmsError, BrokerError)

    def __init__(self, adapter: MT5Adapter, *, metrics: Metrics, call_timeout_s: float = 10.0,
                 connect_retry_s: float = 2.0, mailbox_size: int = 4096,
                 heartbeat_interval_s: float = 0.5, heartbeat_timeout_s: float = 1.0) -> None:
        super().__init__("broker", mailbox_size)
        self.adapter = adapter
        self.metrics = metrics
        self.call_timeout_s = call_timeout_s
        self.connect_retry_s = connect_retry_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.connected = False
        self.error: str | None = None   # why not connected (None once a connect succeeds)
        self.account: Account | None = None
        self.backoff = Backoff(min=connect_retry_s, max=max(30.0, connect_retry_s), jitter=0.2)
        self.reconnect_attempts = 0
        self._reconnecting = False
        # asked at every connect before the terminal is used: None, or why this account must
        # not be used (the store belongs to another one); it stays disconnected meanwhile
        self.on_connect: Callable[[Account], Awaitable[str | None]] | None = None
        self.refused: str | None = None
        self.listeners: dict[str, Actor] = {}

    async def call(self, operation: str, timeout: float | None = None, **kwargs: Any) -> Any:
        """Ask the terminal; waits for the call's turn and its result."""
        return await self.ask(Call(operation, kwargs),
                              timeout=timeout or self.call_timeout_s * 3)

    def _set_connected(self, value: bool) -> None:
        if value != self.connected:
            self.connected = value
            self.metrics.broker_connected.set(1 if value else 0)
        if not value and self._tg is not None and not self._reconnecting:
            self._reconnecting = True
            self.spawn(self._keep_connected)

    async def _run_blocking(self, operation: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            with anyio.fail_after(self.call_timeout_s):
                return await self.offload(fn)
        except TimeoutError as exc:
            outcome = "timeout"
            self._set_connected(False)
            raise BrokerError(operation, -10005, f"no answer within {self.call_timeout_s}s") from exc
        except BrokerError as exc:
            outcome = "disconnected" if exc.code in DISCONNECTED_CODES else "error"
            if exc.code in DISCONNECTED_CODES:
                self._set_connected(False)
            raise
        finally:
            self.metrics.broker_requests.labels(operation, outcome).inc()
            self.metrics.broker_latency.labels(operation).observe(time.perf_counter() - started)

    async def offload(self, fn: Callable[[], Any]) -> Any:
        """Run a blocking terminal call off the event loop (a replay runs it inline)."""
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)

    async def _connect(self) -> bool:
        try:
            if self.adapter.has_heartbeat:   # a dead link: fail fast, no call left hanging on it
                await self._ping()
            self.account = await self._run_blocking("initialize", self.adapter.connect)
        except BrokerError as exc:
            self.error = str(exc)
            log.warning("broker connect failed: %s", exc, extra={"code": exc.code})
            return False
        if self.on_connect is not None:
            self.refused = await self.on_connect(self.account)
            if self.refused is not None:
                self.error = self.refused
                log.error("broker connected to an account DTMS must not use: %s", self.refused)
                return False
        self.error = None
        log.info("broker connected", extra={"login": self.account.login,
                                            "server": self.account.server,
                                            "hedging": self.account.hedging})
        for name, actor in list(self.listeners.items()):   # before any call is let through
            try:
                actor.tell_nowait(Connected(self.account))
            except ActorStopped:
                del self.listeners[name]   # gone for good (a symbol no longer traded)
            except MailboxFull as exc:
                log.warning("account of the new connection not told to %s: %r", name, exc)
        self._set_connected(True)
        return True

    async def _keep_connected(self) -> None:
        """Reconnect with exponential backoff and jitter until the terminal answers."""
        self._reconnecting = True
        try:
            n = 0
            while not self.connected:
                if await self._connect():
                    return
                self.reconnect_attempts += 1
                await anyio.sleep(self.backoff.delay(n, random.random()))
                n += 1
        finally:
            self._reconnecting = False

    async def _ping(self) -> None:
        """One heartbeat; BrokerError (-10005 for no answer in time) if the link fails it."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            with anyio.fail_after(self.heartbeat_timeout_s):
                await anyio.to_thread.run_sync(self.adapter.heartbeat, abandon_on_cancel=True)
        except TimeoutError as exc:
            outcome = "timeout"
            raise BrokerError("ping", -10005, f"no heartbeat answer within "
                              f"{self.heartbeat_timeout_s:g}s") from exc
        except BrokerError:
            outcome = "disconnected"
            raise
        finally:
            self.metrics.broker_requests.labels("ping", outcome).inc()
            self.metrics.broker_latency.labels("ping").observe(time.perf_counter() - started)

    async def _heartbeat(self) -> None:
        """While connected, ping the link; a failed ping disconnects at once."""
        while True:
            await anyio.sleep(self.heartbeat_interval_s)
            if not self.connected:
                continue   # the reconnect loop pings before each attempt
            try:
                await self._ping()
            except BrokerError as exc:
                if not self.connected:
                    continue   # a call failing meanwhile got there first
                self.error = str(exc)
                log.warning("terminal link lost: %s; NOT_READY until it answers again", exc,
                            extra={"code": exc.code})
                self.adapter.abort()     # a call blocked on the dead link fails now
                self._set_connected(False)

    async def on_start(self) -> None:
        self._reconnecting = False
        self.spawn(self._keep_connected)
        if self.adapter.has_heartbeat:
            self.spawn(self._heartbeat)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        except Exception as exc:  # a crash: kept as the reason it is not connected, re-raised
            self.error = repr(_innermost(exc))   # as the supervisor names the crash
            raise

    async def on_stop(self) -> None:
        if self.connected:
            try:
                await self.offload(self.adapter.disconnect)
            except BrokerError as exc:
                log.warning("broker shutdown failed: %s", exc)
        self._set_connected(False)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Listen):
            self.listeners[message.actor.name] = message.actor
            return None
        if not isinstance(message, Call) or message.operation not in OPERATIONS:
            raise TypeError(f"broker cannot handle {message!r}")
        if not self.connected:
            # the reconnect loop owns reconnecting; callers are told to come back
            raise NotReady("the trading terminal is not connected",
                           retry_after=self.connect_retry_s)
        method = getattr(self.adapter, message.operation)
        result = await self._run_blocking(message.operation, lambda: method(**message.kwargs))
        if message.operation == "send":
            self.metrics.broker_retcodes.labels(retcode_class(result.retcode)).inc()
        return result
