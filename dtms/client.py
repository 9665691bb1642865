"""The DTMS client library: :class:`Client` (async) and :class:`SyncClient` (blocking).

One multiplexed, pipelined msgpack-rpc connection per client, opened lazily and reopened after
a loss. Every call gets a msgid (a counter wrapping at 2**32); a reader task matches responses to
waiting calls and queues notifications for :meth:`Client.subscribe`. A call returns only when a
response with its msgid arrived: the client never reports success it has not seen.

Unhappy paths, per call:

* the service answers an error map -> the specific :class:`~dtms.errors.DtmsError` subclass is
  raised (``NotFound``, ``InvalidArgument``...);
* ``NOT_READY``, ``OVERLOADED`` or a connection error (refused, reset, EOF before the response)
  -> retried up to ``retries`` attempts in total with exponential backoff and jitter, waiting at
  least the error's ``retry_after``; then the last ``DtmsError`` is raised, or
  :class:`ServiceUnavailable` (a ``ConnectionError``) if the service could not be reached.
  Nothing else is retried. (Registration is idempotent, so retrying it is safe.) The defaults
  (7 attempts, waits from 0.25 s doubling up to 2 s, each jittered to 50-100 %) wait 3.9 to
  7.8 s in all: a call made while DTMS restarts (about 1 s) lands on the new process.
* no response within ``timeout`` -> :class:`CallTimeout` (a ``TimeoutError``), not retried: the
  request may or may not have been processed;
* the circuit breaker is open -> :class:`CircuitOpen` at once, without touching the network.

The breaker counts *calls*: a call that failed after all its attempts (connection errors,
timeouts, ``NOT_READY``) is one failure, and ``breaker_failures`` consecutive failed calls open
it; it is checked once, before a call's first attempt, so a call is never cut off half-way
through its retries. Any other answer (even ``INVALID_ARGUMENT``) proves the service is up and
resets the count. After ``breaker_reset_s`` it is half-open: one probe call goes through (with
its retries), and its success closes the breaker, its failure opens it again.

Example::

    async with Client(port=8001) as dtms:
        await dtms.wait_ready()
        await dtms.register({"ticket": 123, "symbol": "EURUSD", ...})   # verified read-back

    with SyncClient(port=8001) as dtms:
        print(dtms.health())
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, cast

import anyio
from anyio.abc import SocketStream, TaskGroup
from anyio.from_thread import start_blocking_portal

from dtms.config import Settings
from dtms.errors import DtmsError, InvalidArgument, Unauthenticated
from dtms.model import normalize_symbol
from dtms.rpc.protocol import (
    MAX_MSGID,
    BadNotification,
    DecodeError,
    FrameDecoder,
    Response,
    args_from_params,
    encode_request,
    parse_reply,
)

log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset({"NOT_READY", "OVERLOADED"})
#: methods whose request may have been stored although no reply came back
REGISTER_METHODS = frozenset({"register", "register_batch"})
#: Replies can be large (``trades`` lists); the server's own frame limit protects the server.
CLIENT_MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Upper bound on a server-sent ``retry_after`` we are willing to sleep for.
MAX_RETRY_AFTER_S = 60.0
SUBSCRIPTION_QUEUE = 1024


class ClientError(Exception):
    """Raised by the client itself (as opposed to an error map sent by the service)."""


class ServiceUnavailable(ClientError, ConnectionError):
    """DTMS could not be reached (after the allowed retries) or the client is closed.

    After ``register``/``register_batch`` whose request went out, the registration may have
    been stored all the same (the connection dropped after the request was sent and before the
    reply): the message says so; registering again is safe.
    """


class CircuitOpen(ServiceUnavailable):
    """The circuit breaker is open; ``retry_after`` is the time until it half-opens."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SubscriptionLost(ServiceUnavailable):
    """The connection carrying a subscription closed, or the subscriber fell behind."""


class CallTimeout(ClientError, TimeoutError):
    """No response arrived in time; the request may or may not have been processed."""


class VerificationFailed(ClientError):
    """``register`` was acknowledged but reading the trade back did not confirm it."""

    def __init__(self, message: str, *, ticket: Any, registration: Any) -> None:
        super().__init__(message)
        self.ticket = ticket
        self.registration = registration


class _ConnectionLost(Exception):
    """One attempt failed at the connection level (retryable)."""


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (reset_s) -> half_open -> one probe."""

    def __init__(self, failures: int, reset_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = max(1, failures)
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """Admit one attempt (returns True if it is the half-open probe) or raise CircuitOpen."""
        state = self.state
        if state == "closed":
            return False
        if state == "open":
            assert self._opened_at is not None
            wait = self.reset_s - (self._clock() - self._opened_at)
            raise CircuitOpen(f"circuit breaker open after {self._failures} consecutive "
                              f"failures; half-open in {wait:.1f}s", retry_after=wait)
        if self._probing:
            raise CircuitOpen("circuit breaker half-open: a probe call is in flight",
                              retry_after=0.1)
        self._probing = True
        return True

    def record(self, outcome: str, *, probe: bool) -> None:
        """``outcome``: "success", "failure" or "abandon" (neither, e.g. cancelled)."""
        if probe:
            self._probing = False
        if outcome == "success":
            self.reset()
        elif outcome == "failure":
            self._failures += 1
            if probe or self._failures >= self.threshold:
                if self._opened_at is None or probe:
                    log.warning("dtms client: circuit breaker open after %d consecutive failures",
                                self._failures)
                self._opened_at = self._clock()

    def reset(self) -> None:
        if self._opened_at is not None:
            log.info("dtms client: circuit breaker closed")
        self._failures = 0
        self._opened_at = None


class _Pending:
    __slots__ = ("event", "error", "result", "lost")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: dict[str, Any] | None = None
        self.result: Any = None
        self.lost: str | None = None


class _Subscription:
    def __init__(self, size: int) -> None:
        self.send, self.recv = anyio.create_memory_object_stream[tuple[str, Any]](size)
        self.lost: str | None = None

    def end(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        self.send.close()

    def discard(self) -> None:
        self.send.close()
        self.recv.close()


class _Link:
    """One TCP connection: writer lock, pending calls, subscriptions, a reader task."""

    def __init__(self, stream: SocketStream, name: str) -> None:
        self.stream = stream
        self.name = name
        self.pending: dict[int, _Pending] = {}
        self.subscriptions: set[_Subscription] = set()
        self.closed = False
        self._write_lock = anyio.Lock()

    async def send(self, data: bytes, timeout: float) -> None:
        if self.closed:
            raise _ConnectionLost(f"connection to {self.name} is closed")
        try:
            async with self._write_lock:
                # Shielded: a frame cut in half by a cancelled caller would corrupt the stream.
                with anyio.move_on_after(timeout, shield=True) as scope:
                    await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.fail(f"send failed: {exc!r}")
            raise _ConnectionLost(f"send to {self.name} failed: {exc!r}") from exc
        if scope.cancelled_caught:
            self.fail("send timed out")
            raise _ConnectionLost(f"send to {self.name} timed out after {timeout:g}s")

    async def read_loop(self) -> None:
        decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)
        reason = "client closed"
        try:
            while True:
                data = await self.stream.receive()
                for msg in decoder.feed(data):
                    self._dispatch(parse_reply(msg))
        except anyio.EndOfStream:
            reason = "server closed the connection"
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost: {exc!r}"
        except DecodeError as exc:
            reason = f"bad data from server ({exc.reason}): {exc}"
            log.error("dtms client: %s: %s", self.name, reason)
        except Exception as exc:  # a bug here must fail the calls, not hang them
            reason = f"client reader crashed: {exc!r}"
            log.exception("dtms client: %s: reader crashed", self.name)
        finally:
            self.fail(reason)
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self.stream)

    def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, Response):
            pending = self.pending.get(reply.msgid)
            if pending is None:
                log.debug("dtms client: %s: response for msgid %d nobody waits for (timed out?)",
                          self.name, reply.msgid)
                return
            pending.error, pending.result = reply.error, reply.result
            pending.event.set()
            return
        if isinstance(reply, BadNotification):
            log.warning("dtms client: %s: ignored unusable notification (%s): %s", self.name,
                        reply.reason, reply.detail)
            return
        if isinstance(reply.params, dict):
            params = reply.params  # a DTMS before issue 13 sent the map bare
        else:
            try:
                params = args_from_params(reply.params)  # the spec: [map]
            except InvalidArgument as err:
                log.warning("dtms client: %s: ignored unusable notification %r: %s", self.name,
                            reply.method[:60], err.message)
                return
        if not self.subscriptions:
            log.debug("dtms client: %s: notification %r without subscriber", self.name,
                      reply.method)
        for sub in list(self.subscriptions):
            try:
                sub.send.send_nowait((reply.method, params))
            except anyio.WouldBlock:
                log.warning("dtms client: %s: subscriber fell %d notifications behind; ending "
                            "its subscription", self.name, SUBSCRIPTION_QUEUE)
                self.subscriptions.discard(sub)
                sub.end(f"subscriber too slow ({SUBSCRIPTION_QUEUE} notifications queued)")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.subscriptions.discard(sub)  # the subscriber stopped iterating

    def fail(self, reason: str) -> None:
        """Mark closed; every pending call and subscription fails with ``reason``."""
        self.closed = True
        for pending in self.pending.values():
            if not pending.event.is_set():
                pending.lost = reason
                pending.event.set()
        for sub in self.subscriptions:
            sub.end(reason)
        self.subscriptions.clear()


class Client:
    """Async DTMS client. Use as ``async with Client(...) as c`` (it owns a reader task)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8001, *, token: str = "",
                 timeout: float = 5.0, retries: int = 7, backoff_min: float = 0.25,
                 backoff_max: float = 2.0, breaker_failures: int = 5,
                 breaker_reset_s: float = 30.0, verify: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.host, self.port, self.token = host, port, token
        self.timeout, self.retries, self.verify = timeout, max(1, retries), verify
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self._breaker = CircuitBreaker(breaker_failures, breaker_reset_s, clock)
        self._rng = rng or random.Random()
        self._msgid = 0
        self._link: _Link | None = None
        self._connect_lock: anyio.Lock | None = None
        self._tg: TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Client:
        """host/port/token from ``settings.rpc``, timeouts/retries/breaker from ``settings.client``."""
        return cls(**{**_settings_kwargs(settings), **overrides})

    @property
    def breaker_state(self) -> str:
        return self._breaker.state

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def __aenter__(self) -> Client:
        self._connect_lock = anyio.Lock()
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
        await self._stack.__aexit__(*exc_info)

    async def aclose(self) -> None:
        """Close the connection; pending calls fail with ServiceUnavailable. Idempotent."""
        self._closed = True
        if self._link is not None:
            self._link.fail("client closed")
            await anyio.aclose_forcefully(self._link.stream)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # ------------------------------------------------------------------ calls

    async def call(self, method: str, args: dict[str, Any] | None = None, *,
                   timeout: float | None = None, retry: bool = True) -> Any:
        """Call ``method`` with named ``args``; see the module docstring for the error rules."""
        return await self._call(method, args, timeout=timeout, retry=retry)

    async def _call(self, method: str, args: dict[str, Any] | None, *, timeout: float | None,
                    retry: bool, use_breaker: bool = True,
                    on_link: Callable[[_Link], None] | None = None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        attempts = self.retries if retry else 1
        # one call, one breaker verdict: checked before the first attempt, recorded after the last
        probe = self._breaker.allow() if use_breaker else False
        outcome = "abandon"
        try:
            result = await self._attempts(method, args, timeout, attempts, on_link)
            outcome = "success"
            return result
        except (ServiceUnavailable, CallTimeout):
            outcome = "abandon" if self._closed else "failure"  # closing is not the service's fault
            raise
        except DtmsError as err:
            outcome = "failure" if err.code == "NOT_READY" else "success"
            raise
        finally:
            if use_breaker:
                self._breaker.record(outcome, probe=probe)

    async def _attempts(self, method: str, args: dict[str, Any] | None, timeout: float,
                        attempts: int, on_link: Callable[[_Link], None] | None) -> Any:
        last: Exception | None = None
        reached = False   # a request went out on a connection: it may have been processed
        for attempt in range(1, attempts + 1):
            wait = 0.0
            try:
                link = await self._get_link(timeout)
                if on_link is not None:
                    on_link(link)
                reached = True
                return await self._request(link, method, args, timeout)
            except _ConnectionLost as exc:
                last = exc
            except DtmsError as err:
                if err.code not in RETRYABLE_CODES or attempt == attempts:
                    raise
                last, wait = err, _retry_after(err)
            if attempt < attempts:
                delay = max(self._backoff(attempt), wait)
                log.info("dtms client: %s failed (%s); attempt %d/%d in %.2fs", method, last,
                         attempt + 1, attempts, delay)
                await anyio.sleep(delay)
        stored = ("; the registration may have been stored all the same (the connection can "
                  "drop after the request was sent and before the reply): register again, it is "
                  "idempotent, or read the trade" if reached and method in REGISTER_METHODS
                  else "")
        raise ServiceUnavailable(f"{method}: DTMS at {self.address} unavailable after "
                                 f"{attempts} attempt(s): {last}{stored}") from last

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_min * 2 ** (attempt - 1))
        return base / 2 + self._rng.random() * base / 2

    async def _get_link(self, timeout: float) -> _Link:
        if self._tg is None or self._connect_lock is None:
            raise RuntimeError("use the client as `async with Client(...) as client:`")
        link = self._link
        if link is not None and not link.closed and not self._closed:
            return link
        async with self._connect_lock:
            if self._closed:
                raise ServiceUnavailable("client is closed")
            if self._link is not None and not self._link.closed:
                return self._link
            try:
                with anyio.fail_after(timeout):
                    stream = await anyio.connect_tcp(self.host, self.port)
            except TimeoutError as exc:
                raise _ConnectionLost(f"connect to {self.address} timed out") from exc
            except OSError as exc:
                raise _ConnectionLost(f"cannot connect to {self.address}: {exc}") from exc
            link = _Link(stream, self.address)
            self._tg.start_soon(link.read_loop)
            if self.token:
                try:
                    await self._request(link, "auth", {"token": self.token}, timeout)
                except BaseException:
                    link.fail("authentication failed")
                    await anyio.aclose_forcefully(stream)
                    raise
            self._link = link
            return link

    async def _request(self, link: _Link, method: str, args: dict[str, Any] | None,
                       timeout: float) -> Any:
        msgid = self._next_msgid(link)
        data = encode_request(msgid, method, args)  # TypeError for unencodable args: caller bug
        pending = link.pending[msgid] = _Pending()
        try:
            await link.send(data, timeout)
            with anyio.move_on_after(timeout):
                await pending.event.wait()
        finally:
            link.pending.pop(msgid, None)
        if not pending.event.is_set():
            raise CallTimeout(f"{method}: no response from {self.address} within {timeout:g}s")
        if pending.lost is not None:
            raise _ConnectionLost(f"{method}: {pending.lost} before the response")
        if pending.error is not None:
            raise DtmsError.from_wire(pending.error)
        return pending.result

    def _next_msgid(self, link: _Link) -> int:
        while True:
            self._msgid = (self._msgid + 1) & MAX_MSGID
            if self._msgid not in link.pending:
                return self._msgid

    # ------------------------------------------------------------------ methods

    async def health(self) -> dict[str, Any]:
        return await self.call("health")

    async def wait_ready(self, timeout: float = 30.0, interval: float = 0.2) -> dict[str, Any]:
        """Poll ``health`` (bypassing the breaker) until ``ready``; TimeoutError with the last seen."""
        deadline = anyio.current_time() + timeout
        last: Any = None
        while True:
            remaining = max(0.05, deadline - anyio.current_time())
            try:
                health = await self._call("health", None, timeout=min(self.timeout, remaining),
                                          retry=False, use_breaker=False)
                last = health
                if isinstance(health, dict) and health.get("ready"):
                    self._breaker.reset()
                    return health
            except Unauthenticated:
                raise  # waiting will not fix a wrong token
            except (ServiceUnavailable, CallTimeout, DtmsError) as exc:
                last = exc
            if anyio.current_time() + interval > deadline:
                raise TimeoutError(f"DTMS at {self.address} not ready after {timeout:g}s; "
                                   f"last health: {last!r}")
            await anyio.sleep(interval)

    async def register(self, trade: dict[str, Any], *, verify: bool | None = None
                       ) -> dict[str, Any]:
        """Register one trade; with ``verify`` read it back and raise VerificationFailed unless
        it is the trade asked for: same ticket, the symbol and direction asked for (if given),
        and the volume DTMS reported (the broker's, which may differ from the request's)."""
        result = await self.call("register", trade)
        if not (self.verify if verify is None else verify):
            return result
        ticket = trade.get("ticket")
        try:
            view = await self.trade(cast(int, ticket))   # the service accepted it: an int
        except (DtmsError, ClientError) as exc:
            raise VerificationFailed(f"ticket {ticket} registered but reading it back failed: "
                                     f"{exc}", ticket=ticket, registration=result) from exc
        wrong = _verify_problems(trade, result, view)
        if wrong:
            raise VerificationFailed(f"ticket {ticket} registered but `trade` answered "
                                     f"{'; '.join(wrong)}", ticket=ticket, registration=result)
        return result

    async def register_batch(self, trades: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.call("register_batch", {"trades": trades})

    async def trade(self, ticket: int) -> dict[str, Any]:
        return await self.call("trade", {"ticket": ticket})

    async def trades(self, **filters: Any) -> dict[str, Any]:
        return await self.call("trades", filters)

    async def transitions(self, ticket: int, **args: Any) -> dict[str, Any]:
        return await self.call("transitions", {"ticket": ticket, **args})

    async def actions(self, ticket: int | None = None, **args: Any) -> dict[str, Any]:
        return await self.call("actions", {**({"ticket": ticket} if ticket else {}), **args})

    async def pause(self, ticket: int | None = None) -> dict[str, Any]:
        return await self.call("pause", {"ticket": ticket} if ticket else {"all": True})

    async def resume(self, ticket: int | None = None) -> dict[str, Any]:
        return await self.call("resume", {"ticket": ticket} if ticket else {"all": True})

    async def status(self) -> dict[str, Any]:
        return await self.call("status")

    async def subscribe(self, **args: Any) -> AsyncGenerator[tuple[str, Any], None]:
        """Send ``subscribe`` and yield ``(method, params)`` notifications from this connection.

        Raises SubscriptionLost when the connection closes or the consumer falls
        ``SUBSCRIPTION_QUEUE`` notifications behind. All subscriptions of one client share its
        connection and each sees every notification it receives.
        """
        sub: _Subscription | None = None
        link: _Link | None = None

        def attach(new_link: _Link) -> None:
            nonlocal sub, link
            if sub is not None and link is not None:
                link.subscriptions.discard(sub)
                sub.discard()
            sub, link = _Subscription(SUBSCRIPTION_QUEUE), new_link
            new_link.subscriptions.add(sub)  # before the request: no early notification missed

        try:
            await self._call("subscribe", args, timeout=None, retry=True, on_link=attach)
            assert sub is not None
            async with sub.recv:
                async for item in sub.recv:
                    yield item
            raise SubscriptionLost(f"subscription to {self.address} lost: {sub.lost}")
        finally:
            if sub is not None and link is not None:
                link.subscriptions.discard(sub)
                sub.discard()


class SyncClient:
    """Blocking facade over :class:`Client`, running its own event loop thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8001, **kwargs: Any) -> None:
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            self._client_cm = self._portal.wrap_async_context_manager(Client(host, port, **kwargs))
            self._client = self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SyncClient:
        return cls(**{**_settings_kwargs(settings), **overrides})

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the event loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    @property
    def breaker_state(self) -> str:
        return self._client.breaker_state

    def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise ServiceUnavailable("client is closed")
        return self._portal.call(functools.partial(func, *args, **kwargs))

    def call(self, method: str, args: dict[str, Any] | None = None, *,
             timeout: float | None = None, retry: bool = True) -> Any:
        return self._run(self._client.call, method, args, timeout=timeout, retry=retry)

    def health(self) -> dict[str, Any]:
        return self._run(self._client.health)

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.2) -> dict[str, Any]:
        return self._run(self._client.wait_ready, timeout, interval)

    def register(self, trade: dict[str, Any], *, verify: bool | None = None) -> dict[str, Any]:
        return self._run(self._client.register, trade, verify=verify)

    def register_batch(self, trades: list[dict[str, Any]]) -> dict[str, Any]:
        return self._run(self._client.register_batch, trades)

    def trade(self, ticket: int) -> dict[str, Any]:
        return self._run(self._client.trade, ticket)

    def trades(self, **filters: Any) -> dict[str, Any]:
        return self._run(self._client.trades, **filters)

    def status(self) -> dict[str, Any]:
        return self._run(self._client.status)

    def subscribe(self, **args: Any) -> Iterator[tuple[str, Any]]:
        agen = self._client.subscribe(**args)

        async def next_item() -> tuple[str, Any]:
            return await agen.__anext__()

        try:
            while True:
                try:
                    yield self._run(next_item)
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._portal.call(agen.aclose)


def _settings_kwargs(settings: Settings) -> dict[str, Any]:
    host = settings.rpc.host
    # A wildcard bind address is not somewhere to connect to; the local service is on loopback.
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    c = settings.client
    return {"host": host, "port": settings.rpc.port, "token": settings.rpc.token,
            "timeout": c.timeout_s, "retries": c.retries, "backoff_min": c.backoff_min_s,
            "backoff_max": c.backoff_max_s, "breaker_failures": c.breaker_failures,
            "breaker_reset_s": c.breaker_reset_s, "verify": c.verify}


def _retry_after(err: DtmsError) -> float:
    value = err.details.get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return min(max(0.0, float(value)), MAX_RETRY_AFTER_S)
    return 0.0


def _trade_of(view: Any) -> dict[str, Any]:
    """The trade map in a ``trade``/``register`` answer: top level or under ``trade``."""
    if isinstance(view, dict):
        if "ticket" in view:
            return view
        inner = view.get("trade")
        if isinstance(inner, dict):
            return inner
    return {}


def _verify_problems(asked: dict[str, Any], reply: Any, view: Any) -> list[str]:
    """What the read-back trade contradicts: the request's ticket, symbol and direction, and
    the registration reply's trade (its volume is the broker's)."""
    got, acked = _trade_of(view), _trade_of(reply)
    wrong = []
    if got.get("ticket") != asked.get("ticket"):
        wrong.append(f"ticket {got.get('ticket')!r}")
    symbol = asked.get("symbol")
    if isinstance(symbol, str) and normalize_symbol(symbol) != normalize_symbol(
            str(got.get("symbol", ""))):
        wrong.append(f"symbol {got.get('symbol')!r}, not {symbol!r}")
    direction = asked.get("direction")
    if isinstance(direction, str) and direction.strip().upper() != got.get("direction"):
        wrong.append(f"direction {got.get('direction')!r}, not {direction!r}")
    for key in ("symbol", "direction"):
        if key in acked and acked[key] != got.get(key):
            wrong.append(f"{key} {got.get(key)!r}, registered as {acked[key]!r}")
    volume = acked.get("volume")
    if isinstance(volume, int | float) and not (
            isinstance(got.get("volume"), int | float)
            and abs(got["volume"] - volume) <= 1e-9):
        wrong.append(f"volume {got.get('volume')!r}, registered as {volume!r}")
    return wrong


__all__ = ["Client", "SyncClient", "CircuitBreaker", "ClientError", "ServiceUnavailable",
           "CircuitOpen", "SubscriptionLost", "CallTimeout", "VerificationFailed"]
