"""The web view on the metrics port, over real TCP to a running service: its JSON (answered by
the rpc handlers: same bounds, same errors), the event stream, the token rule, readiness, the
port's bind and shutdown; and the chart's pure functions (dtms/web/chart.py).

The browser test is tests/test_web_browser.py."""

from __future__ import annotations

import json
import socket

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtms.events import EventBus
from dtms.metrics import Metrics, MetricsServer
from dtms.net import ListenError
from dtms.web import chart
from dtms.web.views import STREAM_QUEUE, _Stream, quote
from tests.conftest import client_for, eventually, http_get, running
from tests.test_scenarios import make_sim, play, position, settle

pytestmark = pytest.mark.anyio


async def get_json(port: int, path: str, headers: str = "") -> tuple[int, dict]:
    status, _, body = await http_get(port, path, headers=headers)
    return status, json.loads(body)


# -- chart: pure functions ---------------------------------------------------------------------

@pytest.mark.parametrize(("life_s", "expected"), [
    (0, ("M1", 60)),             # a new trade: an hour of context
    (100 * 60, ("M1", 115)),     # 100 min: 100 M1 bars + 15 before it
    (285 * 60, ("M1", 300)),     # the most M1 bars
    (286 * 60, ("M5", 73)),      # then M5: ceil(286/5) + 15
    (2 * 86400, ("M15", 207)),
    (30 * 86400, ("H4", 195)),
    (3650 * 86400, ("D1", 300)),  # longer than 300 days: the last 300 days
])
def test_pick_timeframe_shows_the_whole_life_in_at_most_300_bars(life_s, expected):
    assert chart.pick_timeframe(1_000_000.0, 1_000_000.0 + life_s) == expected


def action(seq, kind, status, at, sl=None, obligation="sl:breakeven"):
    request = {"action": 6, "position": 1, "sl": sl} if sl is not None else {"volume": 0.05}
    return {"seq": seq, "kind": kind, "obligation": obligation, "status": status,
            "created_at": at, "resolved_at": at + 0.5, "request": request}


TRADE = {"ticket": 1, "created_at": 100.0, "updated_at": 100.0, "initial_sl": 1.0800,
         "sl": 1.0800, "closed_at": 0.0}


def test_sl_path_steps_at_each_accepted_stop_move_only():
    actions = [action(1, "MODIFY_SL", "done", 200.0, sl=1.0850),
               action(2, "MODIFY_SL", "failed", 250.0, sl=1.0900),     # rejected: never set
               action(3, "PARTIAL_CLOSE", "done", 260.0, obligation="L2:partial"),
               action(4, "MODIFY_SL", "done", 300.0, sl=1.0870, obligation="sl:trail:1")]
    trade = {**TRADE, "sl": 1.0870, "updated_at": 300.5}
    assert chart.sl_path(trade, actions, now=400.0) == [
        (100.0, 1.0800), (200.5, 1.0850), (300.5, 1.0870), (400.0, 1.0870)]


def test_sl_path_ends_with_a_stop_changed_at_the_broker_and_stops_at_the_close():
    trade = {**TRADE, "sl": 1.0790, "updated_at": 150.0, "closed_at": 180.0}
    assert chart.sl_path(trade, [], now=999.0) == [(100.0, 1.0800), (150.0, 1.0790),
                                                   (180.0, 1.0790)]
    no_stop = {**TRADE, "initial_sl": 0.0, "sl": 0.0}
    assert chart.sl_path(no_stop, [], now=120.0) == [(100.0, 0.0), (120.0, 0.0)]


@given(st.lists(st.tuples(st.floats(100, 1e6), st.floats(0.5, 2.0),
                          st.sampled_from(["done", "failed", "uncertain", "pending"])),
                max_size=20))
def test_sl_path_is_in_time_order_and_holds_only_stops_the_broker_accepted(moves):
    actions = [action(i, "MODIFY_SL", status, at, sl=sl) for i, (at, sl, status) in
               enumerate(moves, 1)]
    path = chart.sl_path(TRADE, actions, now=2e6)
    assert [at for at, _ in path] == sorted(at for at, _ in path)
    accepted = {TRADE["initial_sl"]} | {sl for _, sl, status in moves if status == "done"}
    assert {sl for _, sl in path} <= accepted
    assert path[0] == (100.0, 1.08) and path[-1][0] == 2e6


def test_marks_are_actions_and_state_changes_in_time_order():
    actions = [action(1, "MODIFY_SL", "done", 200.0, sl=1.085)]
    transitions = [{"at": 100.0, "from_state": "", "to_state": "HEALTHY", "reason": "registered"},
                   {"at": 300.0, "from_state": "HEALTHY", "to_state": "RELEASED",
                    "reason": "unregistered"}]
    assert chart.marks(actions, transitions) == [
        {"at": 100.0, "type": "state", "label": "- -> HEALTHY", "status": "registered"},
        {"at": 200.0, "type": "action", "label": "sl:breakeven", "status": "done", "seq": 1},
        {"at": 300.0, "type": "state", "label": "HEALTHY -> RELEASED", "status": "unregistered"}]


def test_quote_gives_r_from_the_registration_risk():
    buy = {"direction": "BUY", "entry_price": 1.1000, "initial_sl": 1.0980}
    assert quote(buy, 1.1030, 30.0) == {"price": 1.1030, "profit": 30.0, "r": 1.5}
    sell = {"direction": "SELL", "entry_price": 1.1000, "initial_sl": 1.1020}
    assert quote(sell, 1.1030, -30.0) == {"price": 1.1030, "profit": -30.0, "r": -1.5}
    assert quote({**buy, "initial_sl": 0.0}, 1.1030, 30.0)["r"] is None


# -- the JSON, over TCP -----------------------------------------------------------------------

async def test_api_trades_lists_every_trade_with_its_price_and_open_pl(settings, sim):
    buy = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08, tp=1.10)
    sell = sim.open_position("GBPUSD", "SELL", 0.20, sl=1.29)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": buy})
        await c.register({"ticket": sell})
        await c.call("unregister", {"ticket": sell})
        status, page = await get_json(svc.metrics_server.port, "/api/trades")
        assert status == 200
        views = {t["ticket"]: t for t in page["trades"]}
        assert views == {t: await c.trade(t) for t in (buy, sell)}   # the `trades` method's views
        assert views[sell]["state"] == "RELEASED"    # released trades stay listed
        p = position(sim, buy)
        risk = p.price_open - 1.08
        assert page["quotes"] == {str(buy): {"price": p.price_current, "profit": p.profit,
                                             "r": round((p.price_current - p.price_open) / risk,
                                                        2)}}
        status, page = await get_json(svc.metrics_server.port, "/api/trades?state=released")
        assert [t["ticket"] for t in page["trades"]] == [sell]
        status, hs = await get_json(svc.metrics_server.port, "/api/status")
        assert (status, hs["ready"], hs["not_ready"], hs["broker"]["connected"],
                hs["broker"]["backend"], hs["active_trades"]) == (200, True, None, True, "sim", 1)


@pytest.mark.parametrize(("path", "status", "code", "field"), [
    ("/api/trades?limit=0", 400, "INVALID_ARGUMENT", "limit"),
    ("/api/trades?limit=x", 400, "INVALID_ARGUMENT", "limit"),
    ("/api/trades?state=BOGUS", 400, "INVALID_ARGUMENT", "state"),
    ("/api/trades?open_only=maybe", 400, "INVALID_ARGUMENT", "open_only"),
    ("/api/trades?colour=red", 400, "INVALID_ARGUMENT", "colour"),
    ("/api/trade/abc", 400, "INVALID_ARGUMENT", "ticket"),
    ("/api/trade/0", 400, "INVALID_ARGUMENT", "ticket"),
    ("/api/trade/4242", 404, "NOT_FOUND", "ticket"),
    ("/api/restarts?kind=toaster", 400, "INVALID_ARGUMENT", "kind"),
    ("/api/restarts?since=-1", 400, "INVALID_ARGUMENT", "since"),
    ("/events?ticket=abc", 400, "INVALID_ARGUMENT", "ticket"),
])
async def test_bad_queries_get_the_protocols_error_naming_the_field(settings, sim, path, status,
                                                                   code, field):
    async with running(settings, sim) as svc:
        got, body = await get_json(svc.metrics_server.port, path)
        assert (got, body["error"]["code"], body["error"]["field"]) == (status, code, field)
        assert (await get_json(svc.metrics_server.port, "/api/trades"))[0] == 200   # still up


async def test_api_trade_has_the_journal_the_sl_path_and_the_bars(engine_settings, tmp_path):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08312, tp=1.09500)
    async with running(engine_settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket, "owner": "web"})
        await settle(svc, sim)
        await play(svc, sim, [1.08600, 1.08712])       # +1 R: breakeven at entry + one spread
        await eventually(lambda: position(sim, ticket).sl == 1.08524)

        async def done():
            rows = (await c.actions(ticket=ticket))["actions"]
            return rows and rows[-1]["status"] == "done"
        await eventually(done)
        status, d = await get_json(svc.metrics_server.port, f"/api/trade/{ticket}")
        assert status == 200
        assert d["trade"] == await c.trade(ticket)
        assert d["actions"] == (await c.actions(ticket=ticket))["actions"]
        [move] = d["actions"]
        assert (move["kind"], move["obligation"], move["status"], move["request"]["sl"]) == (
            "MODIFY_SL", "sl:breakeven", "done", 1.08524)
        assert d["transitions"] == (await c.transitions(ticket))["transitions"]
        assert [[at, sl] for at, sl in d["sl_path"]][:2] == [
            [d["trade"]["created_at"], 1.08312], [move["resolved_at"], 1.08524]]
        assert d["sl_path"][-1][1] == 1.08524
        assert [(m["type"], m["label"]) for m in d["marks"]] == [
            ("state", "- -> HEALTHY"), ("action", "sl:breakeven")]
        timeframe, count = chart.pick_timeframe(d["trade"]["created_at"], d["now"])
        assert (d["timeframe"], len(d["bars"]), d["bars_error"]) == (timeframe, count, None)
        assert d["bars"][-1][4] == sim.copy_rates_from_pos("EURUSD", 1, 0, 1)[0][4]
        assert d["server_offset_s"] == pytest.approx(sim.symbol_info_tick("EURUSD").time
                                                     - d["now"], abs=5)
        p = position(sim, ticket)
        assert d["quote"] == {"price": p.price_current, "profit": p.profit,
                              "r": round((p.price_current - p.price_open)
                                         / (p.price_open - 1.08312), 2)}


async def test_api_restarts_is_the_restarts_method(settings, sim):
    async with running(settings, sim) as svc, client_for(svc) as c:
        await svc.store.tell("garbage")      # the store crashes once and is restarted
        await eventually(lambda: c.call("restarts", {}))
        await eventually(lambda: svc.ready)
        status, page = await get_json(svc.metrics_server.port, "/api/restarts")
        assert status == 200 and page == await c.call("restarts", {})
        crashed = [(r["child"], r["kind"], r["action"]) for r in page["restarts"]
                   if r["reason"] == "crash"]
        assert crashed == [("store", "store", "restart")]


async def test_pages_and_their_scripts_are_served_with_nothing_from_elsewhere(settings, sim):
    async with running(settings, sim) as svc:
        port = svc.metrics_server.port
        for path, marker in [("/", b'src="/static/trades.js"'),
                             ("/trade/123", b'src="/static/trade.js"'),
                             ("/restarts", b'src="/static/restarts.js"')]:
            status, headers, body = await http_get(port, path)
            assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
            assert marker in body and b"http://" not in body and b"https://" not in body
        for name in ("common.js", "trades.js", "trade.js", "restarts.js", "style.css"):
            status, _, body = await http_get(port, f"/static/{name}")
            assert status == 200 and body
            assert b"http://" not in body and b"https://" not in body and b"@import" not in body
        assert (await http_get(port, "/static/nope.js"))[0] == 404


async def test_not_ready_the_api_says_why_and_the_pages_still_load(settings, sim):
    sim.fail_next(10**9, function="initialize", error=(-10003, "IPC initialize failed"))
    async with running(settings, sim, wait_ready=False) as svc:
        port = svc.metrics_server.port
        with anyio.fail_after(10):
            while svc.broker.error is None:   # its first connect has failed
                await anyio.sleep(0.01)
        status, body = await get_json(port, "/api/trades")
        assert (status, body["error"]["code"]) == (503, "NOT_READY")
        # the broker's last error rides along (issue 18: a start that fails says why)
        assert body["error"]["message"] == ("DTMS is not ready: the trading terminal is not "
                                            "connected (initialize failed: (-10003) IPC "
                                            "initialize failed)")
        status, h = await get_json(port, "/api/status")
        assert (status, h["ready"], h["broker"]["connected"]) == (200, False, False)
        assert h["not_ready"] == body["error"]["message"]
        assert (await http_get(port, "/"))[0] == 200


# -- /events -----------------------------------------------------------------------------------

class SseReader:
    """An event-stream reader over a raw TCP connection."""

    def __init__(self, stream):
        self.stream, self.buf = stream, b""

    async def event(self, name: str, timeout: float = 10.0) -> dict:
        with anyio.fail_after(timeout):
            while True:
                while b"\n\n" in self.buf:
                    block, self.buf = self.buf.split(b"\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                                  if ": " in line and not line.startswith(":"))
                    if fields.get("event") == name:
                        return json.loads(fields["data"])
                self.buf += await self.stream.receive()


async def open_events(port: int, query: str = ""):
    stream = await anyio.connect_tcp("127.0.0.1", port)
    await stream.send(f"GET /events{query} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    reader = SseReader(stream)
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
    head, _, reader.buf = head.partition(b"\r\n\r\n")
    return stream, reader, head.decode()


async def test_events_stream_state_changes_pauses_and_quotes(settings, sim):
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    b = sim.open_position("EURUSD", "SELL", 0.10, sl=1.09)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": a})
        await c.register({"ticket": b})
        stream, events, head = await open_events(svc.metrics_server.port)
        async with stream:
            assert head.startswith("HTTP/1.1 200") and "Content-Type: text/event-stream" in head
            assert (await events.event("status"))["ready"] is True
            await eventually(lambda: len(svc.events) == 1)   # a subscriber like a connection
            await c.call("unregister", {"ticket": a})
            e = await events.event("trade.state")
            assert (e["ticket"], e["from_state"], e["to_state"]) == (a, "HEALTHY", "RELEASED")
            assert e["trade"] == await c.trade(a)
            await c.pause(b)
            e = await events.event("trade.updated")
            assert (e["ticket"], e["trade"]["paused"]) == (b, True)
            q = await events.event("quotes")
            assert set(q) == {str(b)} and q[str(b)]["price"] == position(sim, b).price_current
        await eventually(lambda: len(svc.events) == 0)        # unsubscribed when it went away


async def test_events_for_one_ticket_carry_only_that_ticket(settings, sim):
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    b = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": a})
        await c.register({"ticket": b})
        stream, events, _ = await open_events(svc.metrics_server.port, f"?ticket={b}")
        async with stream:
            await events.event("status")
            await eventually(lambda: len(svc.events) == 1)
            await c.pause(a)
            await c.pause(b)
            e = await events.event("trade.updated")
            assert e["ticket"] == b      # a's came first and was not sent here


async def test_a_browser_that_falls_behind_is_disconnected_and_counted():
    metrics = Metrics()

    class View:
        pass
    view = View()
    view.metrics = metrics
    bus = EventBus()
    stream = _Stream(view)
    bus.subscribe(stream)
    for i in range(STREAM_QUEUE):
        assert bus.publish("trade.updated", {"ticket": i}) == 1
    assert not stream.closed
    bus.publish("trade.updated", {"ticket": 0})
    assert stream.closed and len(bus) == 0
    assert metrics.web_streams_dropped._value.get() == 1
    assert bus.publish("trade.updated", {"ticket": 0}) == 0


async def test_a_stop_ends_open_event_streams_and_frees_the_port(settings, sim):
    async with running(settings, sim) as svc:
        port = svc.metrics_server.port
        stream, events, _ = await open_events(port)
        await events.event("status")
    # the service stopped with a stream open: the stream ended and the port is free again
    with anyio.fail_after(5):
        while True:
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    await stream.aclose()
    again = MetricsServer(Metrics(), dict, "127.0.0.1", port)
    assert await again.listen() == port     # a restarted DTMS binds it at once
    await again._listener.aclose()


# -- the port: auth and bind -------------------------------------------------------------------

async def test_off_loopback_rule_every_page_needs_the_token_by_header_query_or_cookie(
        settings, sim):
    settings = settings.replace(metrics={"token": "s3cret"})
    async with running(settings, sim) as svc:
        port = svc.metrics_server.port
        for path in ("/", "/trade/1", "/restarts", "/api/trades", "/api/status", "/events",
                     "/static/trades.js", "/metrics"):
            status, headers, body = await http_get(port, path)
            assert status == 401, path
            assert b"?token=" in body and "Set-Cookie" not in headers
            assert (await http_get(port, path + "?token=wrong"))[0] == 401
        assert (await http_get(port, "/health"))[0] == 200
        status, headers, _ = await http_get(port, "/api/trades?token=s3cret")
        assert status == 200
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert "s3cret" not in cookie                     # a digest of it, not the token
        assert (await http_get(port, "/api/trades", headers=f"Cookie: {cookie}\r\n"))[0] == 200
        assert (await http_get(port, "/", headers="Cookie: dtms_web=forged\r\n"))[0] == 401
        assert (await http_get(port, "/api/trades",
                               headers="Authorization: Bearer s3cret\r\n"))[0] == 200


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1", 200), ("localhost", 200), ("[::1]", 200), ("127.0.0.2", 200),
    ("evil.example", 403), ("192.168.1.10", 403), ("localhost.evil.example", 403)])
async def test_without_a_token_the_view_answers_only_to_loopback_names(settings, sim, host,
                                                                      status):
    async with running(settings, sim) as svc:
        port = svc.metrics_server.port
        for path in ("/", "/api/trades", "/events?ticket=1" if status == 403 else "/restarts"):
            assert (await http_get(port, path, host=host))[0] == status, path
        # probes and scrapers are answered whatever name they use
        assert (await http_get(port, "/metrics", host=host))[0] == 200
        assert (await http_get(port, "/health", host=host))[0] == 200


async def test_a_busy_metrics_port_names_its_setting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = MetricsServer(Metrics(), dict, "127.0.0.1", s.getsockname()[1])
        with pytest.raises(ListenError) as err:
            await server.listen()
    assert err.value.section == "metrics" and "metrics.port" in str(err.value)


async def test_the_server_runs_again_after_a_stop_as_a_restarted_child_does():
    server = MetricsServer(Metrics(), lambda: {"ready": True}, "127.0.0.1", 0)
    for _ in range(2):
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            status, _, body = await http_get(server.port, "/metrics")
            assert status == 200 and b"dtms_web_streams_dropped_total 0.0" in body
            tg.cancel_scope.cancel()
