"""The broker actor: the one owner of the terminal connection.

Every terminal call in DTMS is a message to this actor, which runs it on a worker thread, one
at a time, with a timeout. It connects on start and keeps ``connected`` current: a call failing
with a link-level ``last_error`` (or timing out) marks it disconnected, and a background loop
reconnects with exponential backoff and jitter (the supervisor's ``Backoff``, starting at
``connect_retry_s``, capped at 30 s). Callers get :class:`~dtms.errors.NotReady` while the terminal is
unreachable, or :class:`~dtms.errors.BrokerError` for a failed call.

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

from dtms.actors.base import Actor, ActorStopped, MailboxFull
from dtms.brokers.mt5 import DISCONNECTED_CODES, MT5Adapter
from dtms.errors import BrokerError, DtmsError, NotReady
from dtms.metrics import Metrics
from dtms.model import Account
from dtms.supervisor import Backoff

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
                 connect_retry_s: float = 2.0, mailbox_size: int = 4096) -> None:
        super().__init__("broker", mailbox_size)
        self.adapter = adapter
        self.metrics = metrics
        self.call_timeout_s = call_timeout_s
        self.connect_retry_s = connect_retry_s
        self.connected = False
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
            self.account = await self._run_blocking("initialize", self.adapter.connect)
        except BrokerError as exc:
            log.warning("broker connect failed: %s", exc, extra={"code": exc.code})
            return False
        if self.on_connect is not None:
            self.refused = await self.on_connect(self.account)
            if self.refused is not None:
                log.error("broker connected to an account DTMS must not use: %s", self.refused)
                return False
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

    async def on_start(self) -> None:
        self._reconnecting = False
        self.spawn(self._keep_connected)

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
