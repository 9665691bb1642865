"""The account guard end to end (issue 15): scripted price paths on the simulated terminal,
through the real stack (guard actor, trade actors, broker actor, store) over real TCP.

Each test counts the terminal's own deals: a breach closes every position it should exactly
once (one exit deal carrying DTMS's magic and a ``DTMS:<ticket>:...`` comment).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from dtms.brokers.sim import constants as c
from dtms.errors import DtmsError
from tests.conftest import client_for, eventually, running
from tests.test_scenarios import make_sim, play, position

pytestmark = pytest.mark.anyio
MAGIC = 770077
#: the day resets at 09:00 UTC: START (08:00) is in the day that began 2024-06-02 09:00
RESET = datetime(2024, 6, 3, 9, 0, tzinfo=UTC).timestamp()


def guard_settings(settings, **guard: Any):
    return settings.replace(guard={"poll_s": 0.05, **guard})


def exits(sim, ticket: int) -> list[Any]:
    return [d for d in (sim.history_deals_get(position=ticket) or ())
            if d.entry == c.DEAL_ENTRY_OUT]


def guard_rows(path: str) -> dict[str, Any]:
    db = sqlite3.connect(path)
    [(value,)] = db.execute("SELECT value FROM meta WHERE key = 'guard'").fetchall()
    db.close()
    return json.loads(value)


def actions(path: str, ticket: int) -> list[tuple]:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT kind, obligation, status, retcode FROM actions WHERE ticket = ? "
                      "ORDER BY seq", (ticket,)).fetchall()
    db.close()
    return rows


async def test_a_day_that_breaches_the_daily_limit_closes_every_managed_position_once_and_locks(
        engine_settings):
    s = guard_settings(engine_settings, daily_loss_limit=100.0, day_reset_hour=9)
    sim = make_sim()
    a = sim.open_position("EURUSD", "BUY", 0.10)
    b = sim.open_position("EURUSD", "BUY", 0.10)
    other = sim.open_position("EURUSD", "BUY", 0.10)   # not DTMS's: close_managed leaves it
    async with running(s, sim) as svc, client_for(svc) as cl:
        for t in (a, b):
            await cl.register({"ticket": t})
        view = await cl.call("guard")
        assert (view["active"], view["locked"], view["day"], view["daily_limit"]) == (
            True, False, "2024-06-02", 100.0)
        assert view["allowance"] == pytest.approx(100.0 + view["daily_pnl"])
        # three 0.10 BUYs at 1.08512: at bid 1.08100 the day is 123.60 down
        await play(svc, sim, [1.08400, 1.08300, 1.08200, 1.08100])
        await eventually(lambda: position(sim, a) is None and position(sim, b) is None)
        g = await eventually(lambda: _locked(cl))
        assert g["reason"] == "daily loss 123.60 reached the limit 100.00"
        assert (g["since"], g["until"]) == (sim.symbol_info_tick("EURUSD").time, RESET)
        assert position(sim, other) is not None
        for t in (a, b):
            [deal] = exits(sim, t)
            assert (deal.magic, deal.comment) == (MAGIC, f"DTMS:{t}:1")
            assert actions(s.store.path, t) == [("CLOSE", "guard:close", "done", 10009)]
            view = await eventually(lambda t=t: _closed(cl, t))
            assert view["close_reason"] == "GUARD"
        health = await cl.call("health")
        assert health["ready"] is True
        assert health["guard"] == {"locked": True, "reason": g["reason"], "since": g["since"],
                                   "until": RESET}
        assert (await cl.trade(a))["guard"]["locked"] is True
        assert svc.metrics.guard_locked._value.get() == 1
        assert svc.metrics.guard_breaches.labels("daily_loss")._value.get() == 1

        # while locked: a new position, registered or not, is closed when it appears
        late = sim.open_position("EURUSD", "SELL", 0.05)
        await eventually(lambda: position(sim, late) is None)
        [deal] = exits(sim, late)
        assert (deal.magic, deal.comment) == (MAGIC, f"DTMS:{late}:G1")
        late2 = sim.open_position("EURUSD", "BUY", 0.05)
        await cl.register({"ticket": late2})   # registrations are still taken
        await eventually(lambda: position(sim, late2) is None)
        assert len(exits(sim, late2)) == 1
        assert len(exits(sim, other)) == 0     # it was open at the lock: close_managed keeps it
        rows = [r for r in guard_rows(s.store.path)["journal"].values()]
        assert [(r["ticket"], r["status"], r["retcode"]) for r in rows if r["ticket"] == late] == [
            (late, "done", 10009)]

        # the lock holds until the simulated day reset at 09:00 ...
        sim.advance(RESET - 60 - sim.sim_time)
        await play(svc, sim, [1.08100])
        assert (await cl.call("guard"))["locked"] is True
        # ... and not after it
        await play(svc, sim, [1.08100], interval=120.0)
        g = await eventually(lambda: _unlocked(cl))
        assert g["day"] == "2024-06-03"
        after = sim.open_position("EURUSD", "BUY", 0.05)
        await play(svc, sim, [1.08100, 1.08110])
        assert position(sim, after) is not None
        for t in (a, b, late, late2):       # nothing was closed twice, whatever came after
            assert len(exits(sim, t)) == 1
        history = guard_rows(s.store.path)["history"]
        assert [h["event"] for h in history] == ["guard.locked", "guard.unlocked"]
        assert history[1]["by"] == "guard"


async def _locked(cl) -> dict | None:
    g = await cl.call("guard")
    return g if g["locked"] else None


async def _unlocked(cl) -> dict | None:
    g = await cl.call("guard")
    return None if g["locked"] else g


async def _closed(cl, ticket: int) -> dict | None:
    view = await cl.trade(ticket)
    return view if view["state"] == "CLOSED" else None


async def test_close_flatten_and_modify_over_the_wire(engine_settings):
    s = guard_settings(engine_settings)
    sim = make_sim()
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08300)
    b = sim.open_position("EURUSD", "SELL", 0.10, sl=1.08700)
    c_ = sim.open_position("EURUSD", "BUY", 0.10)
    stranger = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(s, sim) as svc, client_for(svc) as cl:
        for t in (a, b, c_):
            await cl.register({"ticket": t})
        await play(svc, sim, [1.08500])
        # a looser stop without force: refused naming sl, nothing sent
        with pytest.raises(DtmsError) as err:
            await cl.call("modify", {"ticket": a, "sl": 1.08200})
        assert (err.value.code, err.value.details["field"]) == ("INVALID_ARGUMENT", "sl")
        assert position(sim, a).sl == 1.08300
        assert actions(s.store.path, a) == []
        # tighter: done, the TP too
        out = await cl.call("modify", {"ticket": a, "sl": 1.08400, "tp": 1.09000})
        assert (out["result"], out["retcode"]) == ("done", 10009)
        assert (position(sim, a).sl, position(sim, a).tp) == (1.08400, 1.09000)
        # forced looser: done and recorded with who
        out = await cl.call("modify", {"ticket": a, "sl": 1.08250, "force": True, "by": "ops"})
        assert out["result"] == "done" and position(sim, a).sl == 1.08250
        forced = [h for h in guard_rows(s.store.path)["history"] if h["event"] == "modify.forced"]
        assert [(h["ticket"], h["from"], h["to"], h["by"]) for h in forced] == [
            (a, 1.084, 1.0825, "ops")]
        with pytest.raises(DtmsError) as err:
            await cl.call("modify", {"ticket": a, "sl": -1, "tp": "x", "force": 1})
        assert set(err.value.details["errors"]) == {"sl", "tp", "force"}
        with pytest.raises(DtmsError) as err:
            await cl.call("modify", {"ticket": stranger, "sl": 1.08400})
        assert err.value.code == "NOT_FOUND"

        # close one trade: answered once it is done
        out = await cl.call("close", {"ticket": b, "reason": "news"})
        assert (out["ticket"], out["result"], out["retcode"]) == (b, "done", 10009)
        assert position(sim, b) is None
        again = await eventually(lambda: _gone_error(cl, b))
        assert again == "NOT_FOUND"
        # flatten: every managed position, not the stranger's
        with pytest.raises(DtmsError) as err:
            await cl.call("flatten", {})
        assert err.value.details["field"] == "reason"
        out = await cl.call("flatten", {"reason": "end of day"})
        assert sorted(o["ticket"] for o in out["closed"]) == [a, c_] and out["failed"] == []
        assert position(sim, stranger) is not None
        for t in (a, b, c_):
            assert len(exits(sim, t)) == 1
        view = await eventually(lambda: _closed(cl, a))
        assert view["close_reason"] == "REQUEST"
        # close of a position DTMS does not manage: journaled by the guard
        out = await cl.call("close", {"ticket": stranger})
        assert out["result"] == "done" and position(sim, stranger) is None


async def test_guard_unlock_needs_the_token_when_one_is_set(engine_settings):
    s = guard_settings(engine_settings, max_drawdown_pct=10.0).replace(rpc={"token": "s3cret"})
    sim = make_sim()
    async with running(s, sim) as svc, client_for(svc) as anonymous, client_for(
            svc, token="s3cret") as cl:
        with pytest.raises(DtmsError) as err:
            await anonymous.call("guard_unlock", {"reason": "let me"})
        assert err.value.code == "UNAUTHENTICATED"
        out = await cl.call("guard_unlock", {"reason": "nothing to unlock"})
        assert (out["unlocked"], out["locked"]) == (False, False)


async def _gone_error(cl, ticket: int) -> str | None:
    try:
        await cl.call("close", {"ticket": ticket})
    except DtmsError as exc:
        return exc.code
    return None


async def test_the_risk_budget_tightens_stops_as_a_new_position_appears(engine_settings):
    s = guard_settings(engine_settings, daily_loss_limit=30.0, risk_budget=True)
    sim = make_sim()
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08400)   # 10.00 if its stop is hit
    notes: list[tuple[str, Any]] = []

    async def listen(cl) -> None:
        async for note in cl.subscribe(events=["guard.tightened"]):
            notes.append(note)

    async with running(s, sim) as svc, client_for(svc) as cl, client_for(
            svc) as listener, anyio.create_task_group() as tg:
        tg.start_soon(listen, listener)
        await eventually(lambda: len(svc.events) == 1)
        await cl.register({"ticket": a})
        await play(svc, sim, [1.08500, 1.08500])
        g = await cl.call("guard")
        assert (g["open_risk"], g["allowance"]) == (10.0, 28.8)   # 1.20 of spread lost
        assert position(sim, a).sl == 1.08400
        # a second, bigger one: 0.20 with a stop 150 points away, 30.00 more: over the budget
        b = sim.open_position("EURUSD", "BUY", 0.20, sl=1.08350)
        await cl.register({"ticket": b})
        await play(svc, sim, [1.08500])
        await eventually(lambda: position(sim, b).sl > 1.08350)
        await play(svc, sim, [1.08500])
        g = await eventually(lambda: _risk_within(cl))
        # the loss from now if both stops are hit fits what is left of the day's limit
        assert g["open_risk"] <= g["allowance"]
        assert position(sim, a).sl >= 1.08400 and position(sim, b).sl > 1.08350
        rows = [r for r in actions(s.store.path, b) if r[1].startswith("sl:guard:")]
        assert rows and all(r[2] == "done" for r in rows)
        await eventually(lambda: notes)
        method, params = notes[0]
        assert method == "guard.tightened"
        assert any(t["ticket"] == b and t["result"] == "done" and "risk budget" in t["reason"]
                   for t in params["tightened"])
        tg.cancel_scope.cancel()


async def _risk_within(cl) -> dict | None:
    g = await cl.call("guard")
    return g if g["open_risk"] <= g["allowance"] + 1e-6 else None


# -- the per-trade rules: the broker-side floor and the spread guard -----------------------------

async def test_a_naked_registration_gets_its_floor_in_points(engine_settings):
    s = engine_settings.replace(policy={"attach_sl_points": 150.0})
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10)      # no SL at the broker
    async with running(s, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await eventually(lambda: position(sim, ticket).sl > 0)
        assert position(sim, ticket).sl == 1.08350          # bid 1.08500 - 150 points
        # the broker has the stop as soon as it is sent; the journal row settles right after
        await eventually(lambda: actions(s.store.path, ticket)
                         == [("MODIFY_SL", "sl:floor", "done", 10009)])
        view = await eventually(lambda: _with_sl(cl, ticket))
        assert (view["sl"], view["initial_sl"]) == (1.08350, 1.08350)   # R from the floor


async def _with_sl(cl, ticket: int) -> dict | None:
    view = await cl.trade(ticket)
    return view if view["sl"] > 0 else None


async def test_a_naked_registration_gets_a_floor_of_three_atr(engine_settings, sim):
    from dtms.policy.indicators import atr
    symbol = "GBPUSD"
    assert sim.initialize()
    ticket = sim.open_position(symbol, "SELL", 0.10)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await eventually(lambda: sim.positions_get(ticket=ticket)[0].sl > 0)
        market = svc.market.symbols[symbol]
        bars = sim.copy_rates_from_pos(symbol, c.TIMEFRAME_M5, 1, 300)
        a = atr([b[2] for b in bars], [b[3] for b in bars], [b[4] for b in bars], 14)[-1]
        assert market.signals.atr == pytest.approx(a)
        [row] = (await cl.call("actions", {"ticket": ticket}))["actions"]
        ask = sim.symbol_info_tick(symbol).ask    # the clock stands still: the price too
        spec = sim.symbol_info(symbol)
        expected = round(round((ask + 3 * a) / spec.point + 0.5 - 1e-6) * spec.point, 5)
        assert sim.positions_get(ticket=ticket)[0].sl == pytest.approx(expected, abs=spec.point)
        assert row["obligation"] == "sl:floor" and row["status"] == "done"


async def test_a_spread_spike_defers_a_trailing_step_until_it_narrows(engine_settings):
    from dtms.brokers.sim.prices import linear_path
    s = engine_settings.replace(policy={"max_spread_mult": 2.0})
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08312)
    async with running(s, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await play(svc, sim, linear_path(1.08500, 1.08712, 5, 5))
        await eventually(lambda: position(sim, ticket).sl == 1.08524)     # breakeven
        await play(svc, sim, [1.08712] * 60, interval=1.0)   # the spread's history: 12 points
        # the spread widens from 12 to 40 points (over 2 x the median): the rise through the
        # trailing activation (1.5 R) moves nothing
        sim.set_spread("EURUSD", 40)
        await play(svc, sim, linear_path(1.08712, 1.08950, 24, 5), interval=40.0)
        assert position(sim, ticket).sl == 1.08524
        assert not [r for r in actions(s.store.path, ticket) if r[1].startswith("sl:trail:")]
        # it narrows: the next tick trails
        sim.set_spread("EURUSD", 12)
        await play(svc, sim, [1.08950, 1.08951])
        await eventually(lambda: position(sim, ticket).sl > 1.08524)
        trail = [r for r in actions(s.store.path, ticket) if r[1].startswith("sl:trail:")]
        assert trail and all(r[2:] == ("done", 10009) for r in trail)


# -- the guard's own journal after a crash --------------------------------------------------------

def crashed_while_closing(path: str, ticket: int, request: dict) -> None:
    """Leave the guard's state as a DTMS killed after sending the close of ``ticket`` (a
    position no trade manages, opened while a drawdown lock held) and before its answer."""
    db = sqlite3.connect(path)
    [(value,)] = db.execute("SELECT value FROM meta WHERE key = 'guard'").fetchall()
    stored = json.loads(value)
    stored["state"].update(locked=True, kind="drawdown", reason="drawdown test", since=1.0,
                           until=0.0, at_lock=[], closing=[ticket])
    stored["journal"] = {f"{ticket}:1": {
        "ticket": ticket, "n": 1, "status": "sent", "reason": "opened while locked",
        "created_at": 1.0, "request": request, "retcode": 0, "result": {}}}
    db.execute("UPDATE meta SET value = ? WHERE key = 'guard'", (json.dumps(stored),))
    db.commit()
    db.close()


def close_request(sim, ticket: int) -> dict:
    return {"action": c.TRADE_ACTION_DEAL, "symbol": "EURUSD", "position": ticket,
            "type": c.ORDER_TYPE_SELL, "volume": 0.10,
            "price": sim.symbol_info_tick("EURUSD").bid, "deviation": 20, "magic": MAGIC,
            "comment": f"DTMS:{ticket}:G1", "type_filling": c.ORDER_FILLING_FOK, "type_time": 0}


@pytest.mark.parametrize("executed", [True, False])
async def test_a_close_in_flight_at_a_crash_is_resolved_from_the_deals_never_sent_twice(
        engine_settings, executed):
    s = guard_settings(engine_settings, max_drawdown_pct=50.0)
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(s, sim) as svc:
        await eventually(lambda: svc.guard.state.day)   # the guard has stored its state
    assert sim.initialize()   # DTMS shut its connection down when it stopped
    request = close_request(sim, ticket)
    crashed_while_closing(s.store.path, ticket, {**request, "market_time": 1})
    if executed:   # it reached the terminal before DTMS died
        assert sim.order_send(request).retcode == 10009
    async with running(s, sim) as svc, client_for(svc) as cl:
        assert (await cl.call("guard"))["locked"] is True
        await eventually(lambda: position(sim, ticket) is None)
        await eventually(lambda: all(r["status"] not in ("sent", "pending", "uncertain")
                                     for r in guard_rows(s.store.path)["journal"].values()))
        rows = sorted(guard_rows(s.store.path)["journal"].values(), key=lambda r: r["n"])
        [deal] = exits(sim, ticket)
        if executed:
            assert [(r["n"], r["status"], r["result"]["reconciled"]) for r in rows] == [
                (1, "done", "executed")]
            assert deal.comment == f"DTMS:{ticket}:G1"
        else:   # never executed: failed, then closed once by a new row
            assert [(r["n"], r["status"]) for r in rows] == [(1, "failed"), (2, "done")]
            assert rows[0]["result"]["reconciled"] == "not executed"
            assert deal.comment == f"DTMS:{ticket}:G2"


async def test_in_shadow_mode_the_guard_journals_its_closes_and_sends_none(engine_settings):
    """policy.mode = "shadow" everywhere: a breach with close_all decides the closes of the
    managed trade and of the position nobody registered, journals them as ``shadow`` with the
    request, and the terminal sees no order at all (before, the guard's own closes of unmanaged
    positions were sent whatever the mode)."""
    s = guard_settings(engine_settings, daily_loss_limit=50.0, on_breach="close_all",
                       day_reset_hour=9).replace(policy={"mode": "shadow"})
    sim = make_sim()
    managed = sim.open_position("EURUSD", "BUY", 0.10)
    other = sim.open_position("EURUSD", "BUY", 0.10)    # not registered
    async with running(s, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": managed})
        await play(svc, sim, [1.08400, 1.08300, 1.08200])
        await eventually(lambda: _locked(cl))
        rows = await eventually(lambda: [r for r in guard_rows(s.store.path)["journal"].values()
                                         if r["ticket"] == other] or None)
        await play(svc, sim, [1.08200, 1.08190])   # more polls: still one row per position
        rows = [r for r in guard_rows(s.store.path)["journal"].values() if r["ticket"] == other]
        assert [(r["status"], r["request"]["position"]) for r in rows] == [("shadow", other)]
        await eventually(lambda: actions(s.store.path, managed)
                         and actions(s.store.path, managed)[-1][2] == "shadow")
        assert [a[:3] for a in actions(s.store.path, managed)] == [
            ("CLOSE", "guard:close", "shadow")]
        assert exits(sim, managed) == [] and exits(sim, other) == []
        assert position(sim, managed) is not None and position(sim, other) is not None


async def test_with_no_rule_set_the_guard_says_it_is_inactive(engine_settings, sim):
    """No [guard] rule: the guard reads nothing, and says so (its zeros are not a day's P/L)."""
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        view = await cl.call("guard")
        assert (view["active"], view["locked"], view["day"], view["daily_pnl"]) == (
            False, False, "", 0.0)
