"""The metrics port: /metrics in Prometheus text format, /health 200 when ready, 503 when not."""

from __future__ import annotations

import json

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtms.errors import NotFound
from dtms.metrics import Metrics, MetricsServer
from tests.conftest import client_for, eventually, http_get, running

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "dtms.example.com", ""])
def test_non_loopback_metrics_host_without_a_token_is_refused_naming_both_settings(host):
    with pytest.raises(ValueError) as exc:
        MetricsServer(Metrics(), dict, host, 0)
    message = str(exc.value)
    assert "metrics.host" in message and "metrics.token" in message
    assert "DTMS_METRICS_TOKEN" in message
    MetricsServer(Metrics(), dict, host, 0, token="s3cret")  # with a token it may


@pytest.mark.parametrize(("authorization", "status"), [
    ("", 401),
    ("Authorization: Bearer wrong\r\n", 401),
    ("Authorization: Bearer s3cre\r\n", 401),
    ("Authorization: Basic czNjcmV0\r\n", 401),
    ("Authorization: s3cret\r\n", 401),
    ("Authorization: Bearer s3cret\r\n", 200),
    ("authorization: bearer s3cret\r\n", 200),   # header and scheme names are case-insensitive
])
async def test_metrics_with_a_token_needs_the_bearer_header_over_tcp(authorization, status):
    server = MetricsServer(Metrics(), lambda: {"ready": True}, "127.0.0.1", 0, token="s3cret")
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        got, headers, body = await http_get(server.port, "/metrics", headers=authorization, host="x")
        # /health stays open for probes, as the rpc port's `health` method does
        health, _, health_body = await http_get(server.port, "/health", host="x")
        tg.cancel_scope.cancel()
    assert got == status
    if status == 401:
        assert headers["WWW-Authenticate"] == 'Bearer realm="dtms metrics"'
        assert b"dtms_" not in body
    else:
        assert b"dtms_rpc_connections" in body
    assert (health, json.loads(health_body)) == (200, {"ready": True})


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_health_is_503_until_ready_then_200(settings, sim):
    sim.fail_next(10**9, function="initialize", error=(-10003, "IPC initialize failed"))
    async with running(settings, sim, wait_ready=False) as svc:
        port = svc.metrics_server.port
        status, headers, body = await http_get(port, "/health", host="x")
        assert status == 503
        assert headers["Content-Type"] == "application/json"
        h = json.loads(body)
        assert (h["ready"], h["broker_connected"]) == (False, False)
        assert set(h) == {"ready", "initialized", "monitoring_active", "broker_connected",
                          "broker_error", "active_trades", "uptime_s", "version", "guard"}
        sim.faults.clear()
        await eventually(lambda: svc.ready)
        status, _, body = await http_get(port, "/health", host="x")
        assert status == 200
        assert json.loads(body)["ready"] is True
        status, _, _ = await http_get(port, "/nope", host="x")
        assert status == 404


async def test_metrics_count_registrations_and_trades_by_state(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket})
        await c.register({"ticket": ticket})
        with pytest.raises(NotFound):
            await c.register({"ticket": 4242})
        sim.set_price("EURUSD", 1.0795)
        await eventually(lambda: ticket not in svc.registry.trades)
        await c.health()  # refreshes readiness and mailbox gauges
        status, headers, body = await http_get(svc.metrics_server.port, "/metrics", host="x")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        m = samples(body)
        assert m[("dtms_registrations_total", (("result", "created"),))] == 1
        assert m[("dtms_registrations_total", (("result", "existing"),))] == 1
        assert m[("dtms_registrations_total", (("result", "not_found"),))] == 1
        assert m[("dtms_registrations_total", (("result", "conflict"),))] == 0
        assert m[("dtms_trades", (("state", "CLOSED"),))] == 1
        assert m[("dtms_trades", (("state", "HEALTHY"),))] == 0
        assert m[("dtms_state_transitions_total",
                  (("from_state", "HEALTHY"), ("to_state", "CLOSED")))] == 1
        assert m[("dtms_trades_closed_total", (("reason", "SL"),))] == 1
        assert m[("dtms_ready", ())] == 1
        assert m[("dtms_broker_connected", ())] == 1
        assert m[("dtms_rpc_requests_total", (("code", "OK"), ("method", "register")))] == 2
        assert m[("dtms_rpc_requests_total", (("code", "NOT_FOUND"), ("method", "register")))] == 1
        # registrations ask for their tickets (one call each here: they came one at a time),
        # the repeated one too: a re-registration is checked against the broker (issue 13)
        assert m[("dtms_broker_requests_total",
                  (("operation", "positions_of"), ("outcome", "ok")))] == 3
        assert m[("dtms_broker_requests_total", (("operation", "position_changes"), ("outcome", "ok")))] >= 2
        # archive pass, the account recorded at the first connect, register, close
        assert m[("dtms_store_commit_duration_seconds_count", ())] == 4
