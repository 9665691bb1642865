"""Every Prometheus metric DTMS exports, defined in one place, and the HTTP port serving them.

:class:`Metrics` owns a private ``CollectorRegistry`` (no global state: two services in one test
process do not share counters). Names follow Prometheus conventions: ``dtms_`` prefix, base
units, ``_total`` on counters, ``_seconds`` on durations; no per-ticket labels. Label values known
in advance are initialised to 0 so that rates and alerts work from the first scrape.

:class:`MetricsServer` is a small anyio HTTP/1.1 server on its own port with two routes:
``/metrics`` (text exposition) and ``/health`` (200 when ready, 503 when not, JSON body). With
``metrics.token`` set, ``/metrics`` needs ``Authorization: Bearer <token>`` (401 otherwise); a
non-loopback ``metrics.host`` without a token is refused, as on the rpc port.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.stapled import MultiListener
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dtms.model import CloseReason, TradeState
from dtms.net import listen_tcp, refuse_open_bind

log = logging.getLogger(__name__)

REGISTRATION_RESULTS = ("created", "existing", "invalid", "not_found", "conflict",
                        "owned_elsewhere", "dtms_position", "not_ready", "error")
RPC_CODES = ("OK", "NOT_READY", "INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND", "CONFLICT",
             "OWNED_ELSEWHERE", "DTMS_POSITION", "OVERLOADED", "INTERNAL")
ACTOR_KINDS = ("trade", "market", "store", "broker", "positions", "registry", "rpc", "metrics",
               "core")
SUPERVISORS = ("root", "core", "trades")
BROKER_OPERATIONS = ("initialize", "account", "symbol", "tick", "ticks", "rates", "positions",
                     "positions_of", "position_changes", "deals_for_position", "deals_between",
                     "send")
#: Protective actions a trade actor takes, and how each attempt ended.
ACTION_KINDS = ("breakeven", "trail", "tighten", "partial_close", "hedge", "close")
ACTION_OUTCOMES = ("success", "retry", "uncertain", "reject", "deferred")
RETCODE_CLASSES = ("success", "retry", "uncertain", "reject")
#: Actors whose mailbox depth is exported (trade actors are per ticket, so they are not).
MAILBOX_ACTORS = ("store", "broker", "positions", "registry")

# Buckets (upper bounds in seconds), chosen for each histogram's expected range:
#: rpc requests and store commits: in-process work plus one SQLite commit, 100 us .. 1 s.
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: terminal calls: an IPC round trip to the terminal, 1 ms .. the 10 s call timeout.
_SLOW = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: an action, from the decision to the broker's retcode (retries included): 1 ms .. 30 s.
_ACTION = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: a tick's arrival to the trade actor's decision: pure in-process work, 10 us .. 1 s.
_DECISION = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
             0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """All DTMS metrics on one private registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.ready = Gauge("dtms_ready", "1 when DTMS is ready to serve, else 0", registry=r)
        self.broker_connected = Gauge("dtms_broker_connected",
                                      "1 when the trading terminal is connected", registry=r)
        self.trades = Gauge("dtms_trades", "Registered trades by state", ["state"], registry=r)
        self.registrations = Counter("dtms_registrations_total", "Registration requests by result",
                                     ["result"], registry=r)
        self.transitions = Counter("dtms_state_transitions_total", "Trade state transitions",
                                   ["from_state", "to_state"], registry=r)
        self.trades_closed = Counter("dtms_trades_closed_total", "Trades closed, by reason",
                                     ["reason"], registry=r)
        self.actor_restarts = Counter("dtms_actor_restarts_total",
                                      "Actors restarted by their supervisor, by kind of actor",
                                      ["kind"], registry=r)
        self.actor_giveups = Counter("dtms_actor_giveups_total",
                                     "Actors given up after crashing past their own limit",
                                     ["kind"], registry=r)
        self.escalations = Counter("dtms_supervisor_escalations_total",
                                   "Supervisors that exceeded their restart intensity",
                                   ["supervisor"], registry=r)
        self.mailbox_depth = Gauge("dtms_mailbox_depth", "Messages queued in an actor's mailbox",
                                   ["actor"], registry=r)
        self.rpc_requests = Counter("dtms_rpc_requests_total", "RPC requests by method and code",
                                    ["method", "code"], registry=r)
        self.rpc_latency = Histogram("dtms_rpc_request_duration_seconds", "RPC request latency",
                                     ["method"], buckets=_FAST, registry=r)
        self.rpc_connections = Gauge("dtms_rpc_connections", "Open RPC connections", registry=r)
        self.rpc_rejected = Counter("dtms_rpc_frames_rejected_total",
                                    "Connections closed for a bad frame or a limit, by reason",
                                    ["reason"], registry=r)
        self.broker_requests = Counter("dtms_broker_requests_total",
                                       "Terminal calls by operation and outcome",
                                       ["operation", "outcome"], registry=r)
        self.broker_latency = Histogram("dtms_broker_request_duration_seconds",
                                        "Terminal call latency", ["operation"], buckets=_SLOW,
                                        registry=r)
        self.broker_retcodes = Counter("dtms_broker_order_retcodes_total",
                                       "order_send results by retcode class", ["class"],
                                       registry=r)
        self.store_commit = Histogram("dtms_store_commit_duration_seconds",
                                      "Duration of one group commit", buckets=_FAST, registry=r)
        self.store_batch = Histogram("dtms_store_batch_size", "Writes per group commit",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.store_errors = Counter("dtms_store_errors_total", "Database errors", registry=r)
        self.store_writable = Gauge("dtms_store_writable",
                                    "1 while the database accepts writes, 0 while it refuses them "
                                    "(locked, full, I/O error)", registry=r)
        self.position_polls = Counter("dtms_position_polls_total", "Position polls by outcome",
                                      ["outcome"], registry=r)
        self.actions = Counter("dtms_actions_total",
                               "Protective action attempts by kind and outcome", ["kind", "outcome"],
                               registry=r)
        self.action_latency = Histogram("dtms_action_duration_seconds",
                                        "Action latency, from the decision to the broker's retcode",
                                        ["kind"], buckets=_ACTION, registry=r)
        self.tick_to_decision = Histogram("dtms_tick_to_decision_seconds",
                                          "Latency from a tick's arrival to the trade's decision",
                                          buckets=_DECISION, registry=r)
        self.market_gaps = Counter("dtms_market_gaps_total",
                                   "Gaps in a symbol's ticks longer than market.gap_bars bars",
                                   ["symbol"], registry=r)
        self.scoring_errors = Counter("dtms_scoring_errors_total",
                                      "Bar closes at which a symbol's score for a direction "
                                      "could not be computed (its trades decided unscored)",
                                      ["symbol"], registry=r)
        self.market_bar_seconds = Histogram("dtms_market_bar_close_duration_seconds",
                                            "Reloading bars and computing a symbol's signals "
                                            "on a bar close", buckets=_FAST, registry=r)
        self.unknown_positions = Gauge("dtms_unknown_positions",
                                       "Open positions with DTMS's magic that DTMS does not manage",
                                       registry=r)
        # -- webhooks (dtms.webhooks): ``url`` is the endpoint's label (its name, or the URL's
        # scheme://host: the path of a chat webhook URL is its secret)
        self.webhook_deliveries = Counter("dtms_webhook_deliveries_total",
                                          "Webhook POSTs by endpoint and outcome (delivered, "
                                          "failed: to be retried)", ["url", "outcome"],
                                          registry=r)
        self.webhook_dropped = Counter("dtms_webhook_dropped_total",
                                       "Webhook events not delivered: the queue was full "
                                       "(store.webhooks_max_queued) or the endpoint is no "
                                       "longer configured", ["url"], registry=r)
        self.webhook_queued = Gauge("dtms_webhook_queued",
                                    "Webhook deliveries waiting in the store", registry=r)
        self._initialise()

    def _initialise(self) -> None:
        for state in TradeState:
            self.trades.labels(state.value).set(0)
        for result in REGISTRATION_RESULTS:
            self.registrations.labels(result)
        for reason in CloseReason:   # a fixed set: rate() and alerts see 0 before the first
            self.trades_closed.labels(reason.value)
        for op in BROKER_OPERATIONS:
            self.broker_latency.labels(op)
            for outcome in ("ok", "error", "disconnected", "timeout"):
                self.broker_requests.labels(op, outcome)
        for kind in ACTOR_KINDS:
            self.actor_restarts.labels(kind)
            self.actor_giveups.labels(kind)
        for sup in SUPERVISORS:
            self.escalations.labels(sup)
        for cls in RETCODE_CLASSES:
            self.broker_retcodes.labels(cls)
        for kind in ACTION_KINDS:
            self.action_latency.labels(kind)
            for outcome in ACTION_OUTCOMES:
                self.actions.labels(kind, outcome)
        for actor in MAILBOX_ACTORS:
            self.mailbox_depth.labels(actor).set(0)
        self.rpc_connections.set(0)
        for outcome in ("ok", "error"):
            self.position_polls.labels(outcome)
        self.ready.set(0)
        self.broker_connected.set(0)
        self.webhook_queued.set(0)

    def webhook_endpoints(self, labels: Iterable[str]) -> None:
        """The configured endpoints' series, at 0 from the first scrape."""
        for label in labels:
            self.webhook_dropped.labels(label)
            for outcome in ("delivered", "failed"):
                self.webhook_deliveries.labels(label, outcome)

    # -- the rpc server's metrics hooks (dtms.rpc.server.RpcMetrics) -------------------------
    def request(self, method: str, code: str, seconds: float) -> None:
        self.rpc_requests.labels(method, code).inc()
        self.rpc_latency.labels(method).observe(seconds)

    def connection_opened(self) -> None:
        self.rpc_connections.inc()

    def connection_closed(self) -> None:
        self.rpc_connections.dec()

    def frame_rejected(self, reason: str) -> None:
        self.rpc_rejected.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` and ``/health`` over HTTP on the metrics port.

    Auth follows the rpc port's rule (:mod:`dtms.net`): a non-loopback ``host`` without a
    ``token`` is refused at construction (ValueError naming ``metrics.host`` and
    ``metrics.token``). With a token, ``/metrics`` needs ``Authorization: Bearer <token>`` --
    what Prometheus sends with the scrape option ``authorization: {credentials: ...}`` -- and
    answers 401 otherwise. ``/health`` answers without it, as the rpc ``health`` method does:
    load-balancer and Kubernetes probes carry no secret, and it tells no more than ``health``.
    """

    def __init__(self, metrics: Metrics, health: Callable[[], dict[str, Any]], host: str,
                 port: int, *, token: str = "") -> None:
        refuse_open_bind("metrics", host, token)
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        self._expected = f"bearer {token}".encode() if token else b""
        self._listener: MultiListener[SocketStream] | None = None

    async def listen(self) -> int:
        """Bind the port now, if not yet bound (``run`` binds it otherwise); returns the port.
        Raises :class:`~dtms.net.ListenError` naming ``metrics.port`` when it cannot."""
        if self._listener is None:
            self._listener = await listen_tcp("metrics", self.host, self.port)
            self.port = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        return self.port

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.listen()
        listener, self._listener = self._listener, None  # the next incarnation binds anew
        assert listener is not None
        async with listener:
            log.info("metrics listening", extra={"host": self.host, "port": self.port,
                                                 "auth": "required" if self._expected else "off"})
            task_status.started()
            await listener.serve(self._serve)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self._expected:
            return True
        given = headers.get(b"authorization", b"")
        scheme, _, credentials = given.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + credentials.strip(), self._expected)

    async def _serve(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(10):
                    request, headers = await self._read_head(stream)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError) as exc:
                log.debug("metrics: bad or slow request: %r", exc)
                return
            parts = request.split(b" ")
            path = parts[1].split(b"?")[0] if len(parts) >= 2 else b""
            extra = ""
            if parts[0] not in (b"GET", b"HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif path == b"/health":
                h = self.health()
                status = 200 if h.get("ready") else 503
                ctype, body = "application/json", json.dumps(h).encode()
            elif not self._authorized(headers):
                log.warning("metrics: %s from %s without the right bearer token: 401",
                            path.decode("latin-1")[:60],
                            stream.extra(anyio.abc.SocketAttribute.remote_address, "?"))
                status, ctype = 401, "text/plain"
                body = b"unauthorized: send Authorization: Bearer <metrics.token>\n"
                extra = 'WWW-Authenticate: Bearer realm="dtms metrics"\r\n'
            elif path == b"/metrics":
                self._refresh()
                status, ctype, body = 200, CONTENT_TYPE_LATEST, self.metrics.exposition()
            else:
                status, ctype, body = 404, "text/plain", b"not found: try /metrics or /health\n"
            reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                      503: "Service Unavailable"}[status]
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n{extra}"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            try:
                await stream.send(head + (b"" if parts[0] == b"HEAD" else body))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                log.debug("metrics: client went away: %r", exc)

    def _refresh(self) -> None:
        """Sample the gauges that are read, not pushed (readiness, mailbox depth) before a scrape."""
        try:
            self.health()
        except Exception:  # a scrape must still answer with what is there
            log.exception("metrics: refreshing gauges from health() failed")

    @staticmethod
    async def _read_head(stream: SocketStream) -> tuple[bytes, dict[bytes, bytes]]:
        """The request line and the headers (names lower-cased) of one request."""
        buf = b""
        while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
            chunk = await stream.receive(4096)
            buf += chunk
            if len(buf) > 16384:
                raise ValueError("request head too large")
        lines = buf.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].split(b"\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return lines[0], headers
