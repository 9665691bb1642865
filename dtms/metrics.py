"""Every Prometheus metric DTMS exports, defined in one place, and the HTTP port serving them.

:class:`Metrics` owns a private ``CollectorRegistry`` (no global state: two services in one test
process do not share counters). Names follow Prometheus conventions: ``dtms_`` prefix, base
units, ``_total`` on counters, ``_seconds`` on durations; no per-ticket labels. Label values known
in advance are initialised to 0 so that rates and alerts work from the first scrape.

:class:`MetricsServer` (defined in :mod:`dtms.web.server`, importable from here) serves them on
the metrics port with ``/health`` and the web view: a Starlette app run by uvicorn in the
service's event loop. With ``metrics.token`` set, ``/metrics`` needs ``Authorization: Bearer
<token>`` (401 otherwise); a non-loopback ``metrics.host`` without a token is refused, as on the
rpc port.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dtms.model import CloseReason, TradeState
from dtms.policy.guard import BREACH_KINDS

log = logging.getLogger(__name__)

REGISTRATION_RESULTS = ("created", "existing", "invalid", "not_found", "conflict",
                        "owned_elsewhere", "dtms_position", "not_ready", "error")
RPC_CODES = ("OK", "NOT_READY", "INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND", "CONFLICT",
             "OWNED_ELSEWHERE", "DTMS_POSITION", "OVERLOADED", "INTERNAL")
ACTOR_KINDS = ("trade", "market", "store", "broker", "positions", "registry", "rpc", "metrics",
               "core", "guard", "webhooks")
SUPERVISORS = ("root", "core", "trades")
BROKER_OPERATIONS = ("initialize", "account", "symbol", "tick", "ticks", "rates", "positions",
                     "positions_of", "position_changes", "deals_for_position", "deals_between",
                     "send")
#: Protective actions a trade actor takes, and how each attempt ended.
ACTION_KINDS = ("breakeven", "trail", "tighten", "partial_close", "hedge", "close")
ACTION_OUTCOMES = ("success", "retry", "uncertain", "reject", "deferred")
RETCODE_CLASSES = ("success", "retry", "uncertain", "reject")
#: Actors whose mailbox depth is exported (trade actors are per ticket, so they are not).
MAILBOX_ACTORS = ("store", "broker", "positions", "registry", "guard")

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
        self.web_streams_dropped = Counter("dtms_web_streams_dropped_total",
                                           "Web view event streams closed because the browser "
                                           "fell behind", registry=r)
        self.unknown_positions = Gauge("dtms_unknown_positions",
                                       "Open positions with DTMS's magic that DTMS does not manage",
                                       registry=r)
        # -- the account guard (issue 15) --------------------------------------------------
        self.guard_locked = Gauge("dtms_guard_locked", "1 while the account guard holds the "
                                  "account locked", registry=r)
        self.guard_daily_pnl = Gauge("dtms_guard_daily_pnl", "Today's P/L (equity - the day's "
                                     "start), account currency; negative for a loss",
                                     registry=r)
        self.guard_daily_limit = Gauge("dtms_guard_daily_limit", "Today's loss limit in the "
                                       "account currency; 0 = off", registry=r)
        self.guard_drawdown_ratio = Gauge("dtms_guard_drawdown_ratio", "Drawdown from the "
                                          "equity peak (or the initial balance), 0-1",
                                          registry=r)
        self.guard_open_risk = Gauge("dtms_guard_open_risk", "Loss from now if every stop is "
                                     "hit, account currency", registry=r)
        self.guard_breaches = Counter("dtms_guard_breaches_total", "Account guard breaches",
                                      ["kind"], registry=r)
        self.guard_actions = Counter("dtms_guard_actions_total", "Closes and stop moves the "
                                     "account guard ordered, by outcome", ["kind", "outcome"],
                                     registry=r)
        self.guard_evaluations = Counter("dtms_guard_evaluations_total", "Account guard "
                                         "evaluations, by outcome", ["outcome"], registry=r)
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
        for kind in BREACH_KINDS:
            self.guard_breaches.labels(kind)
        for kind in ("close", "sl"):
            for outcome in ("done", "failed", "refused"):
                self.guard_actions.labels(kind, outcome)
        for outcome in ("ok", "error"):
            self.guard_evaluations.labels(outcome)
        self.guard_locked.set(0)
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


# the HTTP side of the metrics port lives in dtms.web (it imports nothing from here at run time)
from dtms.web.server import MetricsServer  # noqa: E402

__all__ = ["Metrics", "MetricsServer"]
