"""The HTTP server on the metrics port: a Starlette app served by uvicorn inside the service's
event loop (the ``metrics`` child of the root supervisor).

Routes: ``/metrics`` (Prometheus text exposition), ``/health`` (200 when ready, 503 when not,
JSON), and -- when the server is given a :class:`~dtms.web.views.WebView` -- the web view
(``/``, ``/trade/{ticket}``, ``/restarts``, their JSON under ``/api/`` and the event stream
``/events``; :mod:`dtms.web.views`).

Auth follows the rpc port's rule (:mod:`dtms.net`): a non-loopback host without a token is
refused at construction. With ``metrics.token`` set, every route but ``/health`` needs it:
``Authorization: Bearer <token>`` (what Prometheus sends with ``authorization:
{credentials: ...}``), or ``?token=<token>`` in a browser's address bar, which also sets a
cookie (an HMAC of the token, HttpOnly, SameSite=Strict) so that the page's scripts, fetches
and its EventSource are let in without repeating it. Anything else is 401. ``/health`` answers
without it: probes carry no secret, and it tells no more than the rpc ``health`` method.
Without a token (a loopback host), the web view answers only requests whose ``Host`` is a
loopback name or the bound host (403 otherwise): another site's page cannot read it by pointing
its own name at 127.0.0.1 (DNS rebinding). ``/metrics`` and ``/health`` answer any Host.

The port is bound with :func:`dtms.net.listen_tcp` (a busy port raises
:class:`~dtms.net.ListenError` naming ``metrics.port``) and the bound sockets are handed to
uvicorn; uvicorn's own signal handling is off (the CLI owns SIGINT/SIGTERM).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.stapled import MultiListener
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dtms.net import is_loopback, listen_tcp, refuse_open_bind

if TYPE_CHECKING:
    from dtms.metrics import Metrics
    from dtms.web.views import WebView

log = logging.getLogger(__name__)

COOKIE = "dtms_web"
#: what probes and scrapers ask for, answered whatever the Host header says
_OPEN_PATHS = frozenset({"/health", "/metrics"})
#: how long a shutdown waits for open responses (an event stream ends at once) before
#: uvicorn cancels them
_GRACE_S = 2
#: header names as HTTP/1.1 spells them; ASGI hands them over lower-cased
_HEADER_NAMES = {b"www-authenticate": b"WWW-Authenticate", b"etag": b"ETag"}


def _canonical(name: bytes) -> bytes:
    return _HEADER_NAMES.get(name) or b"-".join(p.capitalize() for p in name.split(b"-"))


class _Front:
    """ASGI middleware in front of every route: the token rule (module docstring), and the
    response's header names in their usual spelling (``Content-Type``, as the hand-written
    responder sent them: scripts matching them by case keep working) with ``Connection:
    close``: one request per connection as before (a scrape every 15 s gains nothing from
    keep-alive, and a stopping server has no idle connections to wait for)."""

    def __init__(self, app: ASGIApp, server: MetricsServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        server = self.server
        if scope["path"] != "/health" and not server.authorized(request):
            client = request.client.host if request.client else "?"
            log.warning("metrics: %s from %s without the right token: 401",
                        scope["path"][:60], client)
            app: ASGIApp = PlainTextResponse(
                "unauthorized: send Authorization: Bearer <metrics.token>, or open the page "
                "with ?token=<metrics.token>\n", status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="dtms metrics"'})
        elif not server._token and scope["path"] not in _OPEN_PATHS and \
                server.routed(scope) and not server.host_allowed(request):
            log.warning("web view: %s asked for with Host %r: 403", scope["path"][:60],
                        request.headers.get("host", "")[:60])
            app = PlainTextResponse("forbidden: without metrics.token the web view answers "
                                    "only to loopback names (localhost, 127.0.0.1, [::1])\n",
                                    status_code=403)
        else:
            app = self.app
        cookie = (server._token and request.query_params.get("token") is not None
                  and server.authorized(request))

        async def send_canonical(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(_canonical(k), v) for k, v in message.get("headers", [])
                           if k.lower() != b"connection"]
                if cookie:
                    headers.append((b"Set-Cookie", f"{COOKIE}={server._cookie}; Path=/; "
                                    "HttpOnly; SameSite=Strict".encode()))
                message = {**message, "headers": [*headers, (b"Connection", b"close")]}
            await send(message)

        await app(scope, receive, send_canonical)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: stopping is the supervisor's (and the CLI's) job."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsServer:
    """``/metrics``, ``/health`` and (with ``web``) the web view over HTTP on the metrics port.

    ``health`` is the service's ``health()`` (its readiness also refreshes the gauges that are
    read, not pushed, before a scrape). A non-loopback ``host`` without a ``token`` is refused
    here (ValueError naming ``metrics.host`` and ``metrics.token``).
    """

    def __init__(self, metrics: Metrics, health: Callable[[], dict[str, Any]], host: str,
                 port: int, *, token: str = "", web: WebView | None = None) -> None:
        refuse_open_bind("metrics", host, token)
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        self.web = web
        self._token = token.encode()
        self._cookie = hmac.new(self._token, b"dtms web view", hashlib.sha256).hexdigest() \
            if token else ""
        self._listener: MultiListener[SocketStream] | None = None
        self.app = self._build_app()

    # -- auth ----------------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        """The token rule for every route but /health (see the module docstring)."""
        if not self._token:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(),
                                                              self._token):
            return True
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self._token):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._cookie.encode())

    def host_allowed(self, request: Request) -> bool:
        """Without a token the view is for this machine only: a page of another site that
        got its name pointed at 127.0.0.1 (DNS rebinding) sends its own name as Host."""
        host = request.headers.get("host", "")
        name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else \
            host.rsplit(":", 1)[0]
        return name == self.host or is_loopback(name)

    def _build_app(self) -> ASGIApp:
        routes: list[BaseRoute] = [Route("/health", self._health, methods=["GET"]),
                                   Route("/metrics", self._metrics, methods=["GET"])]
        if self.web is not None:
            routes += self.web.routes()
        self._routes = routes
        return _Front(Starlette(routes=routes), self)

    def routed(self, scope: Scope) -> bool:
        """Whether a route answers this path (an unknown path is 404 whoever asks)."""
        return any(route.matches(scope)[0] is not Match.NONE for route in self._routes)

    # -- /health and /metrics ------------------------------------------------------------------
    async def _health(self, request: Request) -> Response:
        h = self.health()
        return JSONResponse(h, status_code=200 if h.get("ready") else 503)

    async def _metrics(self, request: Request) -> Response:
        self._refresh()
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def _refresh(self) -> None:
        """Sample the gauges that are read, not pushed (readiness, mailbox depth) before a scrape."""
        try:
            self.health()
        except Exception:  # a scrape must still answer with what is there
            log.exception("metrics: refreshing gauges from health() failed")

    # -- serving -------------------------------------------------------------------------------
    async def listen(self) -> int:
        """Bind the port now, if not yet bound (``run`` binds it otherwise); returns the port.
        Raises :class:`~dtms.net.ListenError` naming ``metrics.port`` when it cannot."""
        if self._listener is None:
            self._listener = await listen_tcp("metrics", self.host, self.port)
            self.port = self._listener.extra(SocketAttribute.local_port)
        return self.port

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.listen()
        listener, self._listener = self._listener, None  # the next incarnation binds anew
        assert listener is not None
        sockets: list[socket.socket] = [lst.extra(SocketAttribute.raw_socket)
                                        for lst in listener.listeners]
        config = uvicorn.Config(self.app, http="h11", ws="none", lifespan="off",
                                log_config=None, access_log=False, server_header=False,
                                proxy_headers=False, timeout_graceful_shutdown=_GRACE_S)
        server = _Uvicorn(config)
        # DTMS logs its own start line; uvicorn's "Started server process [pid]" would be noise
        uvicorn_log = logging.getLogger("uvicorn.error")
        if uvicorn_log.level == logging.NOTSET:
            uvicorn_log.setLevel(logging.WARNING)
        done = anyio.Event()

        async def serve() -> None:
            # shielded: uvicorn stops on should_exit (closing its sockets and connections);
            # a cancellation in the middle of it would leave the port bound
            with anyio.CancelScope(shield=True):
                try:
                    await server.serve(sockets=sockets)
                finally:
                    done.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                try:
                    while not server.started and not done.is_set():
                        await anyio.sleep(0.005)
                    if done.is_set():
                        raise RuntimeError("the metrics server stopped while starting")
                    log.info("metrics listening", extra={
                        "host": self.host, "port": self.port, "web_view": self.web is not None,
                        "auth": "required" if self._token else "off"})
                    task_status.started()
                    await done.wait()
                    raise RuntimeError("the metrics server stopped on its own")
                finally:
                    # uvicorn's main loop sees this within 0.1 s and shuts down (the task
                    # group waits for it); event streams end, so their connections close
                    server.should_exit = True
                    if self.web is not None:
                        self.web.close()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
