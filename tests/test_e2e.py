"""End to end: a real DTMS on ephemeral loopback ports, real TCP + msgpack, a real SQLite file,
over the simulated terminal through the MT5 adapter."""

from __future__ import annotations

import socket
import sqlite3

import anyio
import msgpack
import pytest

from dtms.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    NotReady,
    Overloaded,
    OwnedElsewhere,
    Unauthenticated,
)
from tests.conftest import client_for, eventually, running

pytestmark = pytest.mark.anyio


async def test_register_position_and_read_it_back(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000, tp=1.09500, magic=1001)
    async with running(settings, sim) as svc, client_for(svc) as c:
        reply = await c.register({"ticket": ticket, "symbol": "EURUSD", "direction": "buy",
                                  "entry_price": 1.0851, "volume": 0.10, "sl": 1.08,
                                  "tp": 1.095, "strategy_type": "breakout", "owner": "bot-a"})
        assert reply["created"] is True
        assert reply["adjusted"] == {"entry_price": {"given": 1.0851, "broker": 1.08512}}
        t = await c.trade(ticket)
        assert (t["ticket"], t["symbol"], t["direction"], t["state"]) == (
            ticket, "EURUSD", "BUY", "HEALTHY")
        assert (t["volume"], t["entry_price"], t["sl"], t["tp"]) == (0.10, 1.08512, 1.08, 1.095)
        assert (t["initial_sl"], t["magic"], t["owner"], t["strategy_type"]) == (
            1.08, 1001, "bot-a", "breakout")
        assert t["defensive"] is False
        listed = await c.trades()
        assert [x["ticket"] for x in listed["trades"]] == [ticket]
        assert len(svc.registry.trades) == 1


async def test_registration_is_durable_when_acknowledged(settings, sim):
    ticket = sim.open_position("XAUUSD", "SELL", 0.05)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket})
        # a separate connection to the file sees the committed row right away
        db = sqlite3.connect(settings.store.path)
        rows = db.execute("SELECT ticket, symbol, direction, state, volume FROM trades").fetchall()
        transitions = db.execute("SELECT ticket, from_state, to_state, reason FROM transitions"
                                 ).fetchall()
        db.close()
        assert rows == [(ticket, "XAUUSD", "SELL", "HEALTHY", 0.05)]
        assert transitions == [(ticket, "", "HEALTHY", "registered")]


async def test_duplicate_registration_returns_existing_trade(settings, sim):
    ticket = sim.open_position("USDJPY", "SELL", 0.20, sl=151.0)
    async with running(settings, sim) as svc, client_for(svc) as c:
        first = await c.register({"ticket": ticket, "comment": "first"})
        again = await c.register({"ticket": ticket, "comment": "second", "volume": 9.0})
        assert (first["created"], again["created"]) == (True, False)
        assert again["trade"] == first["trade"]  # nothing changed, not even the comment
        transitions = await c.call("transitions", {"ticket": ticket})
        assert len(transitions["transitions"]) == 1


async def test_concurrent_duplicate_registrations_make_one_trade_actor(settings, sim):
    ticket = sim.open_position("BTCUSD", "BUY", 0.01)
    async with running(settings, sim) as svc, client_for(svc) as c:
        created: list[bool] = []

        async def one() -> None:
            created.append((await c.register({"ticket": ticket}, verify=False))["created"])

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
        assert sorted(created) == [False] * 99 + [True]
        assert list(svc.registry.trades) == [ticket]
        assert svc.registry.supervisor.which_children() == [str(ticket)]
        transitions = await c.call("transitions", {"ticket": ticket})
        assert len(transitions["transitions"]) == 1


async def test_unknown_ticket_is_not_found(settings, sim):
    async with running(settings, sim) as svc, client_for(svc) as c:
        with pytest.raises(NotFound) as err:
            await c.register({"ticket": 99999999})
        assert err.value.details["field"] == "ticket"
        assert err.value.to_wire()["status"] == 404
        with pytest.raises(NotFound):
            await c.trade(99999999)
        assert (await c.trades())["trades"] == []


async def test_symbol_or_direction_contradicting_broker_is_conflict(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        with pytest.raises(Conflict) as err:
            await c.register({"ticket": ticket, "symbol": "GBPUSD"})
        assert (err.value.details["field"], err.value.details["broker"]) == ("symbol", "EURUSD")
        with pytest.raises(Conflict) as err:
            await c.register({"ticket": ticket, "direction": "SELL"})
        assert (err.value.details["field"], err.value.details["broker"]) == ("direction", "BUY")
        assert (await c.trades())["trades"] == []  # nothing stored
        # a broker suffix is not a contradiction
        assert (await c.register({"ticket": ticket, "symbol": "EURUSD.pro"}))["created"] is True


async def test_invalid_arguments_name_every_field(settings, sim):
    async with running(settings, sim) as svc, client_for(svc) as c:
        with pytest.raises(InvalidArgument) as err:
            await c.register({"ticket": -5, "direction": "UP", "volume": "lots", "sl": -1,
                              "colour": "red"}, verify=False)
        errors = err.value.details["errors"]
        assert set(errors) == {"ticket", "direction", "volume", "sl", "colour"}
        assert errors["ticket"] == "must be > 0"
        assert errors["direction"] == "must be BUY or SELL"
        assert errors["colour"] == "unknown field"
        assert err.value.to_wire()["status"] == 400
        with pytest.raises(InvalidArgument) as err:
            await c.register({"symbol": "EURUSD"}, verify=False)
        assert err.value.details["field"] == "ticket"
        with pytest.raises(InvalidArgument) as err:
            await c.call("trades", {"state": "HAPPY"})
        assert err.value.details["field"] == "state"
        # the connection and the service are still fine
        assert (await c.health())["ready"] is True


async def test_not_ready_until_the_broker_connects(settings, sim):
    sim.fail_next(10**9, function="initialize",
                  error=(-10003, "IPC initialize failed"))  # no terminal at start
    async with running(settings, sim, wait_ready=False) as svc, client_for(svc, retries=1) as c:
        await eventually(lambda: svc.store.db is not None)  # recovery waits for the account
        health = await c.health()
        assert (health["ready"], health["broker_connected"]) == (False, False)
        with pytest.raises(NotReady) as err:
            await c.register({"ticket": 1})
        assert err.value.details["retry_after"] == settings.broker.connect_retry_s
        assert "terminal is not connected" in err.value.message
        sim.faults.clear()  # the terminal comes back
        ready = await c.wait_ready(timeout=10)
        assert ready["ready"] is True and ready["broker_connected"] is True


async def test_restart_finds_the_trade_again(settings, sim):
    ticket = sim.open_position("EURUSD", "SELL", 0.30, sl=1.0950)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket, "owner": "bot-b"})
    async with running(settings, sim) as svc, client_for(svc) as c:
        t = await c.trade(ticket)
        assert (t["state"], t["owner"], t["volume"], t["sl"]) == ("HEALTHY", "bot-b", 0.3, 1.095)
        assert list(svc.registry.trades) == [ticket]
        assert (await c.health())["active_trades"] == 1
        assert (await c.register({"ticket": ticket}))["created"] is False


async def test_trade_closed_with_reason_sl_when_price_crosses_stop(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)
    other = sim.open_position("XAUUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket})
        await c.register({"ticket": other})
        sim.set_price("EURUSD", 1.07990)
        t = await eventually(lambda: _closed(c, ticket))
        assert (t["state"], t["close_reason"], t["close_price"]) == ("CLOSED", "SL", 1.0799)
        assert t["profit"] == pytest.approx(-52.2, abs=0.01)
        transitions = (await c.call("transitions", {"ticket": ticket}))["transitions"]
        assert [(x["from_state"], x["to_state"]) for x in transitions] == [
            ("", "HEALTHY"), ("HEALTHY", "CLOSED")]
        await eventually(lambda: ticket not in svc.registry.trades)
        assert list(svc.registry.trades) == [other]
        assert (await c.trade(other))["state"] == "HEALTHY"


async def test_take_profit_and_manual_close_reasons(settings, sim):
    tp_ticket = sim.open_position("USDJPY", "SELL", 0.10, tp=149.0)
    manual = sim.open_position("GBPUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": tp_ticket})
        await c.register({"ticket": manual})
        sim.set_price("USDJPY", 148.9)
        sim.close_position_manually(manual)
        assert (await eventually(lambda: _closed(c, tp_ticket)))["close_reason"] == "TP"
        assert (await eventually(lambda: _closed(c, manual)))["close_reason"] == "MANUAL"


async def test_stored_trade_gone_while_down_is_closed_on_recovery(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket})
    sim.set_price("EURUSD", 1.0790)  # stopped out while DTMS was down
    async with running(settings, sim) as svc, client_for(svc) as c:
        t = await eventually(lambda: _closed(c, ticket))
        assert t["close_reason"] == "SL"


async def test_broker_error_during_polls_never_closes_a_trade(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket})
        sim.fail_next(20, function="positions_get", error=(-1, "Terminal: Call failed"))
        await eventually(lambda: svc.metrics.position_polls.labels("error")._value.get() >= 20)
        assert (await c.trade(ticket))["state"] == "HEALTHY"
        assert list(svc.registry.trades) == [ticket]
        # a link-level failure (timeout) makes DTMS not ready until it reconnects; still no close
        sim.fail_next(5, function="positions_get")
        await eventually(lambda: svc.metrics.position_polls.labels("error")._value.get() >= 25)
        await c.wait_ready(timeout=10)
        assert (await c.trade(ticket))["state"] == "HEALTHY"
        assert list(svc.registry.trades) == [ticket]


async def test_register_batch_answers_item_by_item(settings, sim):
    a = sim.open_position("EURUSD", "BUY", 0.10)
    b = sim.open_position("USDJPY", "SELL", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        reply = await c.register_batch([{"ticket": a}, {"ticket": b, "direction": "BUY"},
                                        {"ticket": 0}, {"ticket": a}])
        r = reply["results"]
        assert [x["ok"] for x in r] == [True, False, False, True]
        assert r[1]["error"]["code"] == "CONFLICT"
        assert r[2]["error"]["code"] == "INVALID_ARGUMENT"
        assert sorted([r[0]["created"], r[3]["created"]]) == [False, True]
        assert (reply["created"], reply["failed"]) == (1, 2)


async def test_unknown_method_is_not_found(settings, sim):
    async with running(settings, sim) as svc, client_for(svc) as c:
        with pytest.raises(NotFound) as err:
            await c.call("frobnicate", {})
        assert err.value.details["field"] == "method"


async def test_plain_msgpack_client_talks_to_dtms(settings, sim):
    """Written from the public msgpack-rpc spec: arrays over a socket, pipelined."""
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc:
        def talk() -> dict:
            with socket.create_connection(("127.0.0.1", svc.rpc.port), timeout=5) as s:
                s.sendall(msgpack.packb([0, 7, "register", [{"ticket": ticket}]])
                          + msgpack.packb([0, 8, "health", []])
                          + msgpack.packb([0, 9, "trade", [{"ticket": 12345}]]))
                unpacker = msgpack.Unpacker(raw=False)
                replies: dict = {}
                while len(replies) < 3:
                    unpacker.feed(s.recv(65536))
                    for msg in unpacker:
                        replies[msg[1]] = msg
                return replies

        replies = await anyio.to_thread.run_sync(talk)
        assert replies[7][0] == 1 and replies[7][2] is None
        assert replies[7][3]["trade"]["ticket"] == ticket
        assert replies[8][3]["ready"] is True
        assert replies[9][2]["code"] == "NOT_FOUND" and replies[9][2]["status"] == 404


async def _closed(c, ticket):
    t = await c.trade(ticket)
    return t if t["state"] == "CLOSED" else None


async def test_broker_disconnect_gives_not_ready_then_reconnects_with_backoff(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        await c.register({"ticket": ticket})
        sim.disconnect()
        sim.fail_next(4, function="initialize", error=(-10003, "IPC initialize failed"))
        await eventually(lambda: not svc.broker.connected)
        with pytest.raises(NotReady) as err:
            await c.call("trades", {})
        assert "terminal is not connected" in err.value.message
        assert svc.metrics.broker_connected._value.get() == 0
        await c.wait_ready(timeout=10)
        assert svc.broker.reconnect_attempts == 4  # one per failed initialize, then connected
        assert svc.metrics.broker_connected._value.get() == 1
        assert (await c.trade(ticket))["state"] == "HEALTHY"  # nothing closed meanwhile
        # the delays it waited between those attempts grow: Backoff(min=connect_retry_s)
        b = svc.broker.backoff
        assert [b.delay(n, 0.0) for n in range(4)] == [0.05, 0.1, 0.2, 0.4]


async def test_trade_of_another_manager_is_owned_elsewhere(settings, sim):
    settings = settings.replace(registry={"owned_elsewhere_strategies": ["scalper"],
                                          "owned_elsewhere_owners": ["universal-manager"]})
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        with pytest.raises(OwnedElsewhere) as err:
            await c.register({"ticket": ticket, "strategy_type": "SCALPER"})
        assert (err.value.details["field"], err.value.to_wire()["status"]) == ("strategy_type", 409)
        with pytest.raises(OwnedElsewhere) as err:
            await c.register({"ticket": ticket, "owner": "Universal-Manager"})
        assert err.value.details["field"] == "owner"
        assert (await c.trades())["trades"] == []
        assert (await c.register({"ticket": ticket, "owner": "dtms-bot"}))["created"] is True


async def test_token_is_required_when_configured(settings, sim):
    settings = settings.replace(rpc={"token": "s3cret"})
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc:
        async with client_for(svc, retries=1) as anonymous:
            assert (await anonymous.health())["ready"] is True  # health always answers
            with pytest.raises(Unauthenticated):
                await anonymous.register({"ticket": ticket})
        async with client_for(svc, token="wrong", retries=1) as wrong:
            with pytest.raises(Unauthenticated):
                await wrong.call("trades", {})
        async with client_for(svc, token="s3cret") as c:
            assert (await c.register({"ticket": ticket}))["created"] is True


async def test_a_saturated_registry_answers_overloaded(settings, sim):
    settings = settings.replace(registry={"mailbox_size": 2})
    tickets = [sim.open_position("EURUSD", "BUY", 0.01) for _ in range(30)]
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        sim.set_latency(0.02)  # each broker call takes a while: registrations queue up
        outcomes: list[str] = []

        async def one(t: int) -> None:
            try:
                await c.register({"ticket": t}, verify=False)
                outcomes.append("ok")
            except Overloaded as err:
                assert err.details["retry_after"] == 0.5
                assert err.to_wire()["status"] == 429
                outcomes.append("overloaded")

        async with anyio.create_task_group() as tg:
            for t in tickets:
                tg.start_soon(one, t)
        sim.set_latency(0.0)
        assert outcomes.count("ok") >= 1 and outcomes.count("overloaded") >= 1
        assert len(svc.registry.trades) == outcomes.count("ok")  # refused ones stored nothing
        assert len((await c.trades(limit=100))["trades"]) == outcomes.count("ok")


async def test_each_request_logs_under_its_own_trace_id(settings, sim):
    import json
    import logging

    from dtms import logs

    lines: list[dict] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(logs.JsonFormatter().format(record)))

    handler = Capture()
    actors_log = logging.getLogger("dtms.actors")
    level = actors_log.level
    actors_log.setLevel(logging.INFO)
    actors_log.addHandler(handler)
    try:
        a = sim.open_position("EURUSD", "BUY", 0.10)
        b = sim.open_position("EURUSD", "SELL", 0.10)
        async with running(settings, sim) as svc, client_for(svc) as c:
            await c.register({"ticket": a})
            await c.register({"ticket": b})
            await c.call("pause", {"ticket": a})
    finally:
        actors_log.removeHandler(handler)
        actors_log.setLevel(level)
    registered = [x for x in lines if x["msg"].startswith("registered trade")]
    paused = [x for x in lines if x["msg"] == f"trade {a} paused"]
    assert [x["ticket"] for x in registered] == [a, b]
    traces = [x["trace_id"] for x in registered + paused]
    assert len(set(traces)) == 3 and all(len(t) == 16 for t in traces)


async def test_registrations_beyond_max_trades_are_overloaded_and_store_nothing(settings, sim):
    settings = settings.replace(registry={"max_trades": 2})
    tickets = [sim.open_position("EURUSD", "BUY", 0.01) for _ in range(3)]
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        await c.register({"ticket": tickets[0]})
        await c.register({"ticket": tickets[1]})
        with pytest.raises(Overloaded) as err:
            await c.register({"ticket": tickets[2]})
        assert (err.value.details["field"], err.value.details["retry_after"]) == ("ticket", 60.0)
        assert [t["ticket"] for t in (await c.trades())["trades"]] == tickets[:2]
        assert (await c.register({"ticket": tickets[0]}))["created"] is False  # still idempotent
