"""Webhooks end to end: a real DTMS (simulated terminal, real SQLite file) POSTs to a real HTTP
receiver on an ephemeral loopback port (http.server in a thread): the payload and headers, the
signature checked here, order per trade through retries, a receiver down for a while, a
restart that resumes what was not delivered, and a dead endpoint whose full queue drops (and
counts) while the trades go on being managed."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import socket
import sqlite3
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from tests.conftest import client_for, eventually, running

pytestmark = pytest.mark.anyio


class Receiver:
    """A real HTTP endpoint: records every POST (path, headers, raw body, status answered);
    answers the first ``fail_first`` (and every one while ``failing``) with ``status``, then
    200."""

    def __init__(self, port: int = 0, fail_first: int = 0, status: int = 503) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes, int]] = []
        self.answers = [status] * fail_first
        self.failing = False       # while set: every POST is answered ``status``
        self.status = status
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:   # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    code = (receiver.status if receiver.failing else
                            receiver.answers.pop(0) if receiver.answers else 200)
                    receiver.requests.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()}, body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def taken(self, path: str | None = None) -> list[tuple[dict[str, str], bytes]]:
        """The requests answered 2xx (to ``path``), in the order they came."""
        with self.lock:
            return [(h, b) for p, h, b, code in self.requests
                    if code < 300 and (path is None or p == path)]

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.taken(path)]


def dead_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hooked(settings: Any, *hooks: dict[str, Any], **store: Any) -> Any:
    """``settings`` with these [[webhooks]] (quick retries for tests)."""
    return settings.replace(
        webhooks=[{"min_backoff_s": 0.05, "max_backoff_s": 0.2, "timeout_s": 2.0, **h}
                  for h in hooks], store=store)


def queued_rows(path: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM webhook_deliveries ORDER BY id")]
    db.close()
    return rows


def per_ticket(events: list[dict[str, Any]]) -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for e in events:
        out[e["data"]["ticket"]].append((e["event"], e["data"].get("to_state", "")))
    return dict(out)


async def test_a_transition_is_posted_signed_with_the_data_subscribe_carries(settings, sim):
    rx = Receiver()
    base = f"http://127.0.0.1:{rx.port}"
    s = hooked(settings, {"url": f"{base}/dtms", "events": ["trade.state"], "secret": "k3y"},
               {"url": f"{base}/slack", "events": ["trade.state"], "format": "slack",
                "name": "slack"})
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    notified: list[tuple[str, Any]] = []
    try:
        async with running(s, sim) as svc, client_for(svc) as c, client_for(svc) as listener, \
                anyio.create_task_group() as tg:
            async def listen() -> None:
                async for method, params in listener.subscribe(events=["trade.state"]):
                    notified.append((method, params))
            tg.start_soon(listen)
            await eventually(lambda: len(svc.events) == 1)
            await c.register({"ticket": ticket})
            [(head, raw)] = await eventually(lambda: rx.taken("/dtms"))
            [(slack_head, slack_raw)] = await eventually(lambda: rx.taken("/slack"))
            await eventually(lambda: not queued_rows(s.store.path))   # taken: off the queue
            m = svc.metrics
            await eventually(lambda: m.webhook_queued._value.get() == 0)   # once committed
            assert m.webhook_deliveries.labels(base, "delivered")._value.get() == 1
            assert m.webhook_deliveries.labels("slack", "delivered")._value.get() == 1
            assert m.webhook_deliveries.labels(base, "failed")._value.get() == 0
            await eventually(lambda: notified)
            tg.cancel_scope.cancel()
    finally:
        rx.close()
    sent = json.loads(raw)
    assert list(sent) == ["event", "delivery", "at", "data"]
    assert sent["event"] == "trade.state" and sent["at"] == sent["data"]["at"]
    assert (sent["data"]["ticket"], sent["data"]["from_state"], sent["data"]["to_state"]) == (
        ticket, "", "HEALTHY")
    [(method, params)] = notified
    assert method == "trade.state" and sent["data"] == params   # what subscribe carries
    assert head["content-type"] == "application/json"
    assert head["x-dtms-event"] == "trade.state"
    assert head["x-dtms-delivery"] == sent["delivery"]
    assert re.fullmatch(r"[0-9a-f]{32}-[0-9]+", sent["delivery"])   # this process's id, a count
    # the receiver's check: HMAC-SHA256 of the raw body with the shared secret
    expected = "sha256=" + hmac.new(b"k3y", raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(head["x-dtms-signature"], expected)
    # Slack's body, unsigned (no secret), same event and its own delivery id
    assert json.loads(slack_raw) == {
        "text": f"DTMS: trade {ticket} EURUSD BUY: new -> HEALTHY (registered)"}
    assert "x-dtms-signature" not in slack_head and slack_head["x-dtms-event"] == "trade.state"
    assert slack_head["x-dtms-delivery"] != sent["delivery"]


async def test_a_trades_events_arrive_in_order_through_retries(settings, sim):
    rx = Receiver(status=503)
    rx.failing = True           # every event waits in the queue behind its trade's first
    url = f"http://127.0.0.1:{rx.port}/"
    s = hooked(settings, {"url": url, "events": ["trade.state"]})
    a = sim.open_position("EURUSD", "BUY", 0.10)
    b = sim.open_position("XAUUSD", "SELL", 0.10)
    try:
        async with running(s, sim) as svc, client_for(svc) as c:
            for _ in range(3):
                await c.register({"ticket": a})
                await c.register({"ticket": b})
                await c.call("unregister", {"ticket": a})
                await c.call("unregister", {"ticket": b})
            await eventually(lambda: len(queued_rows(s.store.path)) == 12)
            # only each trade's oldest event is tried while the endpoint fails
            tried = {json.loads(body)["delivery"] for _, _, body, _ in rx.requests}
            heads = {r["delivery"] for r in queued_rows(s.store.path) if r["head"]}
            assert tried <= heads and len(heads) == 2
            rx.failing = False
            await eventually(lambda: len(rx.taken()) == 12, timeout=20)
            expected = {t: [(r["from_state"], r["to_state"], r["at"]) for r in
                            (await c.call("transitions", {"ticket": t}))["transitions"]]
                        for t in (a, b)}
            await eventually(lambda: not queued_rows(s.store.path))
            failed = svc.metrics.webhook_deliveries.labels(url[:-1], "failed")._value.get()
    finally:
        rx.close()
    assert failed >= 1 and failed == sum(code == 503 for *_, code in rx.requests)
    got = defaultdict(list)
    for e in rx.events():
        d = e["data"]
        got[d["ticket"]].append((d["from_state"], d["to_state"], d["at"]))
    assert dict(got) == expected            # each transition once, in the trade's order
    assert [(f, t) for f, t, _ in expected[a]] == [
        ("", "HEALTHY"), ("HEALTHY", "RELEASED"), ("RELEASED", "HEALTHY"),
        ("HEALTHY", "RELEASED"), ("RELEASED", "HEALTHY"), ("HEALTHY", "RELEASED")]
    times = [at for *_, at in expected[a]]
    assert times == sorted(set(times))      # six distinct times: the order is visible
    # a retried delivery is the same delivery: same id, same bytes; each taken once
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for _, headers, body, _ in rx.requests:
        bodies[headers["x-dtms-delivery"]].add(body)
    assert len(bodies) == 12 and all(len(v) == 1 for v in bodies.values())
    assert len(rx.requests) == 12 + failed
    assert Counter(h["x-dtms-delivery"] for h, _ in rx.taken()).most_common(1)[0][1] == 1


async def test_a_receiver_down_for_a_while_gets_every_event_once_it_is_back(settings, sim):
    port = dead_port()
    url = f"http://127.0.0.1:{port}/hook"
    s = hooked(settings, {"url": url, "events": ["trade.state"]})
    tickets = [sim.open_position("EURUSD", "BUY", 0.10) for _ in range(5)]
    async with running(s, sim) as svc, client_for(svc) as c:
        for t in tickets:
            await c.register({"ticket": t})
        # every stream's head has been tried and refused; the rest wait behind them
        rows = await eventually(lambda: (r := queued_rows(s.store.path)) and all(
            x["attempts"] >= 2 for x in r) and r)
        assert len(rows) == 5 and {r["ticket"] for r in rows} == set(tickets)
        assert all("ConnectError" in r["last_error"] for r in rows)
        assert svc.metrics.webhook_deliveries.labels(url[:-5], "failed")._value.get() >= 10
        assert (await c.health())["ready"] is True      # the engine does not wait for it
        rx = Receiver(port=port)
        try:
            await eventually(lambda: len(rx.taken()) == 5, timeout=20)
            await eventually(lambda: not queued_rows(s.store.path))
        finally:
            rx.close()
    taken = rx.events()
    assert sorted(e["delivery"] for e in taken) == sorted(r["delivery"] for r in rows)
    assert {e["data"]["ticket"] for e in taken} == set(tickets)
    assert [json.loads(r["body"]) for r in rows] == sorted(taken, key=lambda e: [
        r["delivery"] for r in rows].index(e["delivery"]))


async def test_a_restart_resumes_what_was_not_delivered(settings, sim):
    port = dead_port()
    s = hooked(settings, {"url": f"http://127.0.0.1:{port}/", "events": ["trade.state"]})
    tickets = [sim.open_position("EURUSD", "BUY", 0.10) for _ in range(3)]
    async with running(s, sim) as svc, client_for(svc) as c:
        for t in tickets:
            await c.register({"ticket": t})
        await eventually(lambda: len(queued_rows(s.store.path)) == 3)
    stored = queued_rows(s.store.path)                     # the file, DTMS stopped
    assert [r["ticket"] for r in stored] == tickets
    rx = Receiver(port=port)
    try:
        async with running(s, sim) as svc:
            await eventually(lambda: len(rx.taken()) >= 3, timeout=20)
            await eventually(lambda: not queued_rows(s.store.path))
            await eventually(lambda: svc.webhooks.queue.queued == 0)   # once committed
    finally:
        rx.close()
    # each stored row sent as stored (three trades: three streams, in any order between them)
    taken = {e["delivery"]: e for e in rx.events()}
    assert taken == {r["delivery"]: json.loads(r["body"]) for r in stored}
    assert sorted(e["data"]["ticket"] for e in taken.values()) == tickets
    assert all(e["data"]["to_state"] == "HEALTHY" for e in taken.values())


async def test_a_dead_endpoint_with_a_full_queue_drops_and_counts_while_trades_are_managed(
        settings, sim, caplog):
    url = f"http://127.0.0.1:{dead_port()}/"
    s = hooked(settings, {"url": url, "events": ["trade.state"]}, webhooks_max_queued=3)
    tickets = [sim.open_position("EURUSD", "BUY", 0.10, sl=1.08) for _ in range(8)]
    caplog.set_level(logging.WARNING, logger="dtms.webhooks")
    async with running(s, sim) as svc, client_for(svc) as c:
        for t in tickets:
            assert (await c.register({"ticket": t}))["created"] is True
        m = svc.metrics
        await eventually(lambda: m.webhook_dropped.labels(url[:-1])._value.get() == 5)
        assert [r["ticket"] for r in queued_rows(s.store.path)] == tickets[:3]
        assert m.webhook_queued._value.get() == 3
        # the engine goes on: a stop hit closes its trade, pause/resume answer
        sim.set_price("EURUSD", 1.07990)
        for t in tickets:
            await eventually(lambda t=t: _state(c, t, "CLOSED"))
        assert (await c.health())["ready"] is True
        await eventually(lambda: m.webhook_dropped.labels(url[:-1])._value.get() == 13)
        assert len(queued_rows(s.store.path)) == 3
    full = [r for r in caplog.records if "webhook queue full" in r.getMessage()]
    assert full and "store.webhooks_max_queued" in full[0].getMessage()


async def _state(c: Any, ticket: int, state: str) -> Any:
    t = await c.trade(ticket)
    return t if t["state"] == state else None


async def test_a_give_up_is_posted_between_the_trades_transitions(settings, sim):
    rx = Receiver()
    s = hooked(settings.replace(trades={"max_restarts": 3, "restart_period_s": 60.0}),
               {"url": f"http://127.0.0.1:{rx.port}/",
                "events": ["trade.state", "supervisor.giveup"]})
    bad = sim.open_position("EURUSD", "BUY", 0.10)
    try:
        async with running(s, sim) as svc, client_for(svc) as c:
            await c.register({"ticket": bad})
            for _ in range(4):   # each poison message crashes one incarnation
                await svc.registry.trades[bad].tell("poison")
            await eventually(lambda: len(rx.taken()) == 3)
    finally:
        rx.close()
    assert per_ticket(rx.events()) == {bad: [("trade.state", "HEALTHY"),
                                            ("supervisor.giveup", ""),
                                            ("trade.state", "SUSPENDED")]}
    giveup = rx.events()[1]["data"]
    assert (giveup["supervisor"], giveup["child"], giveup["kind"], giveup["attempt"]) == (
        "trades", str(bad), "trade", 4)
    assert giveup["exception"].startswith("TypeError")


async def test_not_ready_and_guard_events_are_posted(settings, sim):
    rx = Receiver()
    s = hooked(settings, {"url": f"http://127.0.0.1:{rx.port}/",
                          "events": ["service.not_ready", "guard.*"]})
    try:
        async with running(s, sim) as svc, client_for(svc, retries=1) as c:
            sim.disconnect()
            sim.fail_next(4, function="initialize", error=(-10003, "IPC initialize failed"))
            [down] = await eventually(lambda: rx.events())
            await c.wait_ready(timeout=10)
            # the account guard (issue 15) publishes its events on the bus
            svc.events.publish("guard.locked", {"reason": "daily loss 5.2% >= 5%", "at": 9.0})
            await eventually(lambda: len(rx.events()) == 2)
    finally:
        rx.close()
    assert down["event"] == "service.not_ready"
    assert down["data"]["ready"] is False and down["data"]["broker_connected"] is False
    # the broker's last error may ride along, depending on which call saw the link go first
    assert down["data"]["reason"].startswith("DTMS is not ready: the trading terminal is not "
                                             "connected")
    assert down["data"]["store_writable"] is True
    guard = rx.events()[1]
    assert (guard["event"], guard["at"], guard["data"]) == (
        "guard.locked", 9.0, {"reason": "daily loss 5.2% >= 5%", "at": 9.0})
    assert [h["x-dtms-event"] for h, _ in rx.taken()] == ["service.not_ready", "guard.locked"]


async def test_an_action_is_posted_when_journaled_and_when_resolved(engine_settings):
    from tests.test_scenarios import journal, make_sim, play, position, settle
    rx = Receiver()
    s = hooked(engine_settings, {"url": f"http://127.0.0.1:{rx.port}/",
                                 "events": ["trade.action"]})
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412)   # 1 R = 100 points
    try:
        async with running(s, sim) as svc, client_for(svc) as c:
            await c.register({"ticket": ticket,
                              "policy": {"breakeven_r": 0.05, "breakeven_buffer_spreads": 0}})
            await settle(svc, sim)
            await play(svc, sim, [1.08510, 1.08517])
            await eventually(lambda: position(sim, ticket).sl != 1.08412)
            await eventually(lambda: len(rx.events()) == 2)
    finally:
        rx.close()
    [row] = journal(s.store.path, ticket)
    pending, done = (e["data"] for e in rx.events())
    assert [e["event"] for e in rx.events()] == ["trade.action", "trade.action"]
    assert (pending["status"], done["status"]) == ("pending", "done")    # never "sent"
    for d in (pending, done):
        assert (d["ticket"], d["seq"], d["kind"], d["obligation"], d["symbol"],
                d["direction"]) == (ticket, row["seq"], row["kind"], "sl:breakeven", "EURUSD",
                                    "BUY")
    assert (done["sl"], done["retcode"]) == (1.08506, 10009)   # the stop the broker took
    assert done["reason"] == pending["reason"] and done["reason"]
    assert done["at"] >= pending["at"]


async def test_deliveries_for_an_endpoint_removed_from_the_config_are_dropped_and_counted(
        settings, sim):
    gone = f"http://127.0.0.1:{dead_port()}/old"
    s = hooked(settings, {"url": gone, "events": ["trade.state"]})
    tickets = [sim.open_position("EURUSD", "BUY", 0.10) for _ in range(2)]
    async with running(s, sim) as svc, client_for(svc) as c:
        for t in tickets:
            await c.register({"ticket": t})
        await eventually(lambda: len(queued_rows(s.store.path)) == 2)
    rx = Receiver()
    s = hooked(settings, {"url": f"http://127.0.0.1:{rx.port}/new", "events": ["trade.state"]})
    try:
        async with running(s, sim) as svc, client_for(svc) as c:
            await eventually(lambda: not queued_rows(s.store.path))
            assert svc.metrics.webhook_dropped.labels(gone[:-4])._value.get() == 2
            await c.call("unregister", {"ticket": tickets[0]})     # the new endpoint works
            [event] = await eventually(lambda: rx.events())
    finally:
        rx.close()
    assert (event["data"]["ticket"], event["data"]["to_state"]) == (tickets[0], "RELEASED")


async def test_not_ready_from_a_locked_database_is_posted_once_it_takes_writes(settings, sim):
    from dtms.errors import NotReady
    rx = Receiver()
    s = hooked(settings.replace(store={"busy_timeout_ms": 100}),
               {"url": f"http://127.0.0.1:{rx.port}/", "events": ["service.not_ready"]})
    ticket = sim.open_position("EURUSD", "BUY", 0.1)
    try:
        async with running(s, sim) as svc, client_for(svc, retries=0) as c:
            svc.store.probe_interval_s = 0.05
            other = sqlite3.connect(s.store.path, isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")           # another process holds the write lock
            try:
                with pytest.raises(NotReady):
                    await c.register({"ticket": ticket})
                await eventually(lambda: svc.webhooks.handling)   # it tries to queue it...
                await anyio.sleep(0.3)
                assert rx.events() == []                          # ...and cannot yet
            finally:
                other.execute("ROLLBACK")
                other.close()
            [event] = await eventually(lambda: rx.events())
            assert svc.ready
    finally:
        rx.close()
    assert event["event"] == "service.not_ready"
    assert event["data"]["store_writable"] is False and event["data"]["broker_connected"]
    assert event["data"]["reason"] == ("DTMS is not ready: the database refuses writes "
                                       "(database is locked)")
