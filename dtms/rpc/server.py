"""The msgpack-rpc TCP server: listener, per-connection reader and writer, dispatch, limits, auth.

:class:`RpcServer` accepts connections and gives each one a :class:`Connection`: a reader that
decodes frames with :class:`~dtms.rpc.protocol.FrameDecoder` and starts one task per request
(so responses come back out of order, matched by msgid), a writer lock so frames never
interleave, and a bounded notification queue drained by its own task. The application is one
``handler(method, args, connection)`` coroutine; the server only frames, limits and
authenticates.

What happens on the unhappy paths:

* handler raises a :class:`DtmsError` -> that error map is the response;
* handler raises anything else, or its result cannot be encoded -> ``INTERNAL`` with a
  ``trace_id`` that is also in the log next to the traceback;
* handler runs longer than ``request_timeout_s`` -> it is cancelled, ``INTERNAL`` "timed out";
* a message of the wrong shape -> ``INVALID_ARGUMENT`` if its msgid is readable, else the
  connection is closed; undecodable bytes, a frame over ``max_frame_bytes`` or an ext type ->
  that connection (only) is closed; every such close is logged with the reason and counted;
* ``max_inflight_per_conn`` requests running -> the server stops reading that socket until one
  finishes (backpressure, not an error);
* a message not complete ``frame_timeout_s`` after its first byte arrived -> closed (counted as
  ``frame_timeout``): a peer trickling a frame a byte at a time (slowloris) cannot hold a slot;
* no complete message and nothing in flight for ``idle_timeout_s`` -> closed (``idle_timeout``);
  bytes of an unfinished message do not count as activity. A peer that does not drain our
  responses for ``idle_timeout_s`` is closed too;
* ``max_connections`` open -> the connection idle longest is closed for the newcomer (logged,
  counted as ``evicted_idle``), so a new client can always reach ``health``: first those that
  never sent a complete message (half-open, slowloris), oldest first, then the one whose last
  complete message is oldest. A connection with a request in flight is never chosen; if every
  one has one, the newcomer is accepted and closed at once (``max_connections``). For example,
  with ``max_connections = 4``, a client that called ``health`` and three that only trickle
  bytes: a fifth client closes the oldest trickler and is answered; the first client stays;
* a subscriber whose notification queue (``notify_queue``) is full is closed: ``notify`` never
  blocks the caller and never drops a notification silently;
* EOF from the peer -> in-flight requests finish and are answered, then the connection closes.

Auth: with a non-empty ``settings.token`` every method except the public ones needs either a
prior ``auth {"token"}`` on the connection or a ``"token"`` key in the call's map (removed before
the handler sees it). A non-loopback bind without a token is refused at construction
(:func:`dtms.net.refuse_open_bind`); a port that cannot be bound raises
:class:`~dtms.net.ListenError` naming ``rpc.port``.

Example::

    async def handler(method, args, conn):
        if method == "health":
            return {"ready": True}
        raise NotFound(f"unknown method {method!r}")

    server = RpcServer(settings.rpc, handler)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.run)
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus
from anyio.streams.stapled import MultiListener

from dtms.config import RpcSettings
from dtms.errors import DtmsError, Internal, Unauthenticated
from dtms.net import is_loopback, listen_tcp, refuse_open_bind
from dtms.rpc.protocol import (
    BadMessage,
    BadNotification,
    DecodeError,
    FrameDecoder,
    Notification,
    Request,
    encode_error,
    encode_notification,
    encode_response,
    parse_request,
)

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any], "Connection"], Awaitable[Any]]

_READ_CHUNK = 65_536
_METHOD_LABEL = re.compile(r"[a-z_]{1,40}")
_ACCEPT_ERROR_PAUSE_S = 0.1


class RpcMetrics(Protocol):
    """What the server reports; the app adapts it to Prometheus."""

    def request(self, method: str, code: str, seconds: float) -> None: ...
    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def frame_rejected(self, reason: str) -> None: ...


class NullMetrics:
    """The default: reports nowhere."""

    def request(self, method: str, code: str, seconds: float) -> None:
        return None

    def connection_opened(self) -> None:
        return None

    def connection_closed(self) -> None:
        return None

    def frame_rejected(self, reason: str) -> None:
        return None


def method_label(method: str) -> str:
    """The metrics label for a method name: itself if it looks like one, else ``unknown``."""
    return method if _METHOD_LABEL.fullmatch(method) else "unknown"


def _new_trace_id() -> str:
    return uuid.uuid4().hex


def _format_peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


class Connection:
    """One TCP connection, handed to the handler with every request."""

    def __init__(self, conn_id: int, peer: str, stream: SocketStream, settings: RpcSettings,
                 metrics: RpcMetrics) -> None:
        self.id = conn_id
        self.peer = peer
        self.authenticated = False
        self.close_reason: str | None = None
        self._stream = stream
        self._metrics = metrics
        self._write_lock = anyio.Lock()
        self._write_timeout = settings.idle_timeout_s if settings.idle_timeout_s > 0 else math.inf
        self._notify_send, self._notify_recv = anyio.create_memory_object_stream[bytes](
            max(1, settings.notify_queue))
        self._scope: anyio.CancelScope | None = None
        self._close_callbacks: list[Callable[[], None]] = []
        self._closed = False
        self._inflight = 0
        self._slots = anyio.Semaphore(settings.max_inflight_per_conn)
        self.messages = 0  # complete messages received
        self._last_activity = anyio.current_time()  # of the last complete message (or the open)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.peer}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def inflight(self) -> int:
        return self._inflight

    async def notify(self, method: str, params: Any) -> None:
        """Async spelling of :meth:`notify_nowait` (it never blocks either)."""
        self.notify_nowait(method, params)

    def notify_nowait(self, method: str, params: Any) -> None:
        """Queue ``[2, method, [params]]`` for this connection without blocking.

        If the queue is full the subscriber is too slow: the connection is closed (logged and
        counted) rather than blocking the caller or dropping the notification. On an already
        closed connection this does nothing (its ``on_close`` callbacks have run). Raises
        ``TypeError`` if ``params`` cannot be encoded as msgpack.
        """
        if self._closed:
            log.debug("rpc connection %d (%s): notify %r after close ignored", self.id, self.peer,
                      method)
            return
        data = encode_notification(method, params)
        try:
            self._notify_send.send_nowait(data)
        except anyio.WouldBlock:
            self._metrics.frame_rejected("notify_queue_full")
            self.close(f"slow subscriber: notification queue full "
                       f"({self._notify_send.statistics().max_buffer_size} queued)")

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once when the connection closes (now, if it already has)."""
        if self._closed:
            self._run_callback(callback)
        else:
            self._close_callbacks.append(callback)

    def close(self, reason: str, *, level: int = logging.WARNING) -> None:
        """Close the connection soon (cancels its reader, writer and in-flight requests)."""
        if self.close_reason is None:
            self.close_reason = reason
            log.log(level, "rpc connection %d (%s): closing: %s", self.id, self.peer, reason)
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    async def send_frame(self, data: bytes) -> bool:
        """Write one encoded frame; on failure close the connection and return False."""
        try:
            async with self._write_lock:
                with anyio.fail_after(self._write_timeout):
                    await self._stream.send(data)
            return True
        except TimeoutError:
            self.close(f"peer did not read our output for {self._write_timeout:g}s")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.close(f"write failed: {type(exc).__name__}: {exc}")
        return False

    async def _notify_writer(self) -> None:
        async with self._notify_recv:
            async for data in self._notify_recv:
                if not await self.send_frame(data):
                    return

    def _finish(self) -> None:
        self._closed = True
        self._notify_send.close()
        self._notify_recv.close()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            self._run_callback(callback)

    def _run_callback(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("rpc connection %d (%s): on_close callback %r failed", self.id,
                          self.peer, callback)


class _IdleTimeout(Exception):
    pass


class _FrameTimeout(Exception):
    pass


class RpcServer:
    """The TCP msgpack-rpc server. ``run`` binds, reports started, serves until cancelled."""

    def __init__(self, settings: RpcSettings, handler: Handler, *,
                 metrics: RpcMetrics | None = None,
                 is_public_method: Callable[[str], bool] = lambda m: m == "health") -> None:
        refuse_open_bind("rpc", settings.host, settings.token)
        if settings.max_inflight_per_conn <= 0 or settings.max_frame_bytes <= 0:
            raise ValueError("rpc.max_inflight_per_conn and rpc.max_frame_bytes must be > 0")
        self.settings = settings
        self.port = settings.port
        self._conns: dict[int, Connection] = {}
        self._listener: MultiListener[SocketStream] | None = None
        self._handler = handler
        self._metrics: RpcMetrics = metrics or NullMetrics()
        self._is_public = is_public_method
        self._token = settings.token.encode("utf-8")
        self._next_conn_id = 0
        self._request_timeout = (settings.request_timeout_s if settings.request_timeout_s > 0
                                 else math.inf)
        self._idle_timeout = settings.idle_timeout_s if settings.idle_timeout_s > 0 else math.inf
        self._frame_timeout = settings.frame_timeout_s

    @property
    def connections(self) -> int:
        """Open connections (including ones closing)."""
        return len(self._conns)

    async def listen(self) -> int:
        """Bind the port now, if not yet bound (``run`` binds it otherwise); returns the port.

        Raises :class:`~dtms.net.ListenError` naming ``rpc.port`` when it cannot: a caller that
        binds before starting the service can report a busy port as a clear start-up error.
        """
        if self._listener is None:
            self._listener = await listen_tcp("rpc", self.settings.host, self.settings.port)
            self.port = self._listener.extra(SocketAttribute.local_port)
        return self.port

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.listen()
        listener, self._listener = self._listener, None  # the next incarnation binds anew
        assert listener is not None
        try:
            log.info("rpc server listening on %s port %d (auth %s)", self.settings.host, self.port,
                     "required" if self._token else "off")
            async with anyio.create_task_group() as tg:
                for sub in listener.listeners:
                    # each is a SocketListener (create_tcp_listener's MultiListener holds them)
                    tg.start_soon(self._accept_loop, cast(SocketListener, sub), tg)
                task_status.started(self.port)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    # ------------------------------------------------------------------ accepting

    async def _accept_loop(self, listener: SocketListener, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # e.g. EMFILE: keep serving the connections we have
                log.error("rpc accept failed: %s; retrying in %gs", exc, _ACCEPT_ERROR_PAUSE_S)
                self._metrics.frame_rejected("accept_error")
                await anyio.sleep(_ACCEPT_ERROR_PAUSE_S)
                continue
            peer = _format_peer(stream.extra(SocketAttribute.remote_address, None))
            if not self._make_room(peer):
                log.warning("rpc connection from %s refused: max_connections=%d reached, every "
                            "connection has a request in flight", peer,
                            self.settings.max_connections)
                self._metrics.frame_rejected("max_connections")
                await anyio.aclose_forcefully(stream)
                continue
            self._next_conn_id += 1
            conn = Connection(self._next_conn_id, peer, stream, self.settings, self._metrics)
            self._conns[conn.id] = conn
            tg.start_soon(self._serve_connection, conn)

    def _make_room(self, peer: str) -> bool:
        """True if a new connection may open: below max_connections, or after closing the
        connection idle longest (see the module docstring). False if none can be closed."""
        live = [c for c in self._conns.values() if not c.closed]
        if len(live) < self.settings.max_connections:
            return True
        idle = [c for c in live if not c.inflight]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (c.messages > 0, c._last_activity))
        self._metrics.frame_rejected("evicted_idle")
        victim.close(f"evicted for a new connection from {peer}: max_connections="
                     f"{self.settings.max_connections} reached and this one was idle longest "
                     f"({anyio.current_time() - victim._last_activity:.1f}s, "
                     f"{victim.messages} messages)")
        return True

    async def _serve_connection(self, conn: Connection) -> None:
        stream, peer = conn._stream, conn.peer
        self._metrics.connection_opened()
        log.debug("rpc connection %d from %s opened", conn.id, peer)
        try:
            async with anyio.create_task_group() as tg:
                conn._scope = tg.cancel_scope
                tg.start_soon(conn._notify_writer)
                await self._read_loop(conn, tg)
                tg.cancel_scope.cancel()
        except Exception:  # a bug in this module: keep the server up, make it loud
            log.exception("rpc connection %d (%s) crashed", conn.id, peer)
        finally:
            del self._conns[conn.id]
            conn._finish()
            self._metrics.connection_closed()
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)
            log.debug("rpc connection %d (%s) closed: %s", conn.id, peer,
                      conn.close_reason or "peer closed")

    # ------------------------------------------------------------------ reading

    async def _receive(self, conn: Connection, frame_deadline: float) -> bytes:
        """Next chunk from the socket. Raises _FrameTimeout past ``frame_deadline`` (an unfinished
        message's), _IdleTimeout when no complete message came for idle_timeout_s."""
        while True:
            now = anyio.current_time()
            if frame_deadline <= now:
                raise _FrameTimeout
            if conn._inflight:
                deadline = now + self._idle_timeout
            else:
                deadline = conn._last_activity + self._idle_timeout
                if deadline <= now:
                    raise _IdleTimeout
            with anyio.CancelScope(deadline=min(deadline, frame_deadline)):
                return await conn._stream.receive(_READ_CHUNK)

    async def _read_loop(self, conn: Connection, tg: TaskGroup) -> None:
        decoder = FrameDecoder(self.settings.max_frame_bytes)
        frame_deadline = math.inf  # of the unfinished message in the decoder, if any
        while True:
            try:
                data = await self._receive(conn, frame_deadline)
            except anyio.EndOfStream:
                # Half-close is legal: answer what is in flight, then close.
                for _ in range(self.settings.max_inflight_per_conn):
                    await conn._slots.acquire()
                return
            except _IdleTimeout:
                self._metrics.frame_rejected("idle_timeout")
                conn.close(f"idle for {self._idle_timeout:g}s", level=logging.INFO)
                return
            except _FrameTimeout:
                self._metrics.frame_rejected("frame_timeout")
                conn.close(f"a frame did not complete within rpc.frame_timeout_s="
                           f"{self._frame_timeout:g} of its first byte "
                           f"({decoder.pending_bytes} bytes received)")
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                conn.close_reason = conn.close_reason or f"read failed: {exc!r}"
                return
            unfinished_before, completed = decoder.pending_bytes > 0, conn.messages
            messages = decoder.feed(data)
            while True:
                try:
                    msg = next(messages)
                except StopIteration:
                    break
                except DecodeError as exc:
                    self._metrics.frame_rejected(exc.reason)
                    conn.close(f"undecodable input ({exc.reason}): {exc}")
                    return
                conn.messages += 1
                conn._last_activity = anyio.current_time()
                if not await self._on_message(conn, msg, tg):
                    return
            if not decoder.pending_bytes:
                frame_deadline = math.inf
            elif conn.messages > completed or not unfinished_before:
                # a new message began in this chunk; timed from now, after any backpressure
                # wait in _on_message, so a stall of ours is not counted against the peer
                frame_deadline = anyio.current_time() + self._frame_timeout

    async def _on_message(self, conn: Connection, msg: Any, tg: TaskGroup) -> bool:
        """Handle one decoded message; False means the connection is closing."""
        outcome = parse_request(msg)
        if isinstance(outcome, Request):
            await conn._slots.acquire()  # backpressure: no read until a slot frees
            conn._inflight += 1
            tg.start_soon(self._run_request, conn, outcome)
            return True
        if isinstance(outcome, Notification):
            # DTMS has no client->server notifications; a request would get an answer.
            self._metrics.frame_rejected("client_notification")
            log.warning("rpc connection %d (%s): ignored client notification %r (use a request)",
                        conn.id, conn.peer, outcome.method[:60])
            return True
        if isinstance(outcome, BadNotification):
            # nobody waits for an answer, and a peer's odd notification is no reason to close
            self._metrics.frame_rejected(outcome.reason)
            log.warning("rpc connection %d (%s): ignored unusable notification (%s): %s",
                        conn.id, conn.peer, outcome.reason, outcome.detail)
            return True
        assert isinstance(outcome, BadMessage)
        self._metrics.frame_rejected(outcome.reason)
        if outcome.msgid is None:
            conn.close(f"malformed message ({outcome.reason}): {outcome.error.message}")
            return False
        log.info("rpc connection %d (%s): rejected msgid %d: %s", conn.id, conn.peer,
                 outcome.msgid, outcome.error.message)
        return await conn.send_frame(encode_error(outcome.msgid, outcome.error))

    # ------------------------------------------------------------------ requests

    async def _run_request(self, conn: Connection, req: Request) -> None:
        started = anyio.current_time()
        try:
            payload, code = await self._answer(conn, req)
            await conn.send_frame(payload)
            self._metrics.request(method_label(req.method), code,
                                  anyio.current_time() - started)
        finally:
            conn._inflight -= 1
            if not conn._inflight:
                conn._last_activity = anyio.current_time()
            conn._slots.release()

    async def _answer(self, conn: Connection, req: Request) -> tuple[bytes, str]:
        """The encoded response and its code label ("OK" or the error code)."""
        result: Any = None
        try:
            with anyio.move_on_after(self._request_timeout) as scope:
                result = await self._dispatch(conn, req)
            if scope.cancel_called:
                trace_id = _new_trace_id()
                log.error("rpc %r (msgid %d, connection %d) timed out after %gs trace_id=%s",
                          req.method[:60], req.msgid, conn.id, self._request_timeout, trace_id)
                raise Internal(f"request timed out after {self._request_timeout:g}s",
                               trace_id=trace_id)
            try:
                return encode_response(req.msgid, None, result), "OK"
            except (TypeError, ValueError, OverflowError) as exc:
                trace_id = _new_trace_id()
                log.error("rpc %r: result not encodable (%s) trace_id=%s", req.method[:60], exc,
                          trace_id)
                raise Internal("result could not be encoded", trace_id=trace_id) from exc
        except DtmsError as err:
            return self._encode_error(req, err), err.code
        except Exception as exc:
            trace_id = _new_trace_id()
            log.exception("rpc handler for %r (msgid %d, connection %d) failed trace_id=%s",
                          req.method[:60], req.msgid, conn.id, trace_id)
            internal = Internal(f"internal error ({type(exc).__name__}); see server log",
                                trace_id=trace_id)
            return self._encode_error(req, internal), internal.code

    def _encode_error(self, req: Request, err: DtmsError) -> bytes:
        try:
            return encode_error(req.msgid, err)
        except (TypeError, ValueError, OverflowError) as exc:
            trace_id = _new_trace_id()
            log.error("rpc %r: error %r not encodable (%s) trace_id=%s", req.method[:60], err,
                      exc, trace_id)
            return encode_error(req.msgid, Internal(f"{err.code}: {err.message}"[:500],
                                                    trace_id=trace_id))

    async def _dispatch(self, conn: Connection, req: Request) -> Any:
        args = req.args
        token: Any = None
        has_token = "token" in args
        if has_token:
            args = dict(args)
            token = args.pop("token")
        if req.method == "auth":
            return self._auth(conn, token, has_token)
        if self._token and not self._is_public(req.method):
            if has_token:
                self._check_token(conn, token)
            elif not conn.authenticated:
                raise Unauthenticated("token required")
        return await self._handler(req.method, args, conn)

    def _auth(self, conn: Connection, token: Any, has_token: bool) -> dict[str, Any]:
        if self._token:
            if not has_token:
                raise Unauthenticated("token required")
            conn.authenticated = False
            self._check_token(conn, token)
        conn.authenticated = True
        return {"authenticated": True}

    def _check_token(self, conn: Connection, token: Any) -> None:
        given = token.encode("utf-8") if isinstance(token, str) else b""
        if not hmac.compare_digest(given, self._token):
            log.warning("rpc connection %d (%s): wrong token", conn.id, conn.peer)
            raise Unauthenticated("wrong token")


__all__ = ["Connection", "Handler", "NullMetrics", "RpcMetrics", "RpcServer", "is_loopback",
           "method_label"]
