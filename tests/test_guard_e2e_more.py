"""The account guard's other paths end to end (issue 15 follow-up): the daily profit target,
the weekend guard, a hedged trade at a breach, ``close_all`` across a SIGKILL of a real ``dtms
serve``, and ``dtms flatten`` asking before it sends.

Scripted price paths on the simulated terminal through the real stack over real TCP, as in
tests/test_guard_e2e.py; each test counts the terminal's own deals (a close made exactly once
is one exit deal) and reads the stops at the broker and the journal's rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.brokers.sim import constants as c
from dtms.brokers.sim.remote import RemoteTerminal
from dtms.config import GuardSettings
from dtms.model import Direction
from dtms.policy.guard import AccountSnapshot, Exposure, GuardState, evaluate
from tests.conftest import client_for, eventually, running
from tests.test_cli import dtms, free_port
from tests.test_guard_e2e import actions, exits, guard_rows, guard_settings
from tests.test_guard_recovery import wait_for
from tests.test_scenarios import make_sim, play, position, settle, walk_down_the_ladder

REPO = Path(__file__).resolve().parents[1]
MAGIC = 770077
UTC_ZONE = __import__("zoneinfo").ZoneInfo("UTC")


async def guard_caught_up(svc, sim, symbol: str = "EURUSD") -> None:
    """Wait until the guard has evaluated the terminal's latest tick and acted on it (a second
    evaluation began after the first one's actions: the actor takes one message at a time)."""
    now = sim.symbol_info_tick(symbol).time
    ok = svc.metrics.guard_evaluations.labels("ok")
    await eventually(lambda: svc.guard.evaluated_at >= now)
    seen = ok._value.get()
    await eventually(lambda: ok._value.get() >= seen + 2)


def sl_rows(path: str, ticket: int) -> list[tuple]:
    return [r for r in actions(path, ticket) if r[1].startswith("sl:guard:")]


# -- 1. the daily profit target -------------------------------------------------------------------

@pytest.mark.anyio
async def test_the_profit_target_locks_the_days_gain_and_keeps_it_locked_for_the_day(
        engine_settings):
    s = guard_settings(engine_settings, daily_profit_target=50.0, day_reset_hour=9).replace(
        policy={"attach_sl_points": 500.0})
    sim = make_sim()
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)   # both at 1.08512
    b = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)
    async with running(s, sim) as svc, client_for(svc) as cl:
        for t in (a, b):
            await cl.register({"ticket": t})
        await play(svc, sim, [1.08600, 1.08700])
        await guard_caught_up(svc, sim)
        assert (position(sim, a).sl, position(sim, b).sl) == (1.08000, 1.08000)   # 37.60 up
        # at 1.08800 the day is 57.60 up: at most the 7.60 above the target may be given back,
        # 3.80 each: every stop 38 points under the bid
        await play(svc, sim, [1.08800])
        await eventually(lambda: position(sim, a).sl == position(sim, b).sl == 1.08762)
        await guard_caught_up(svc, sim)
        for t in (a, b):
            assert sl_rows(s.store.path, t) == [("MODIFY_SL", "sl:guard:1.08762", "done", 10009)]
        g = await cl.call("guard")
        assert (g["locked"], g["daily_pnl"], g["open_risk"]) == (False, 57.6, 7.6)
        assert svc.metrics.guard_breaches.labels("profit")._value.get() == 1

        # back and up again: what fits is never touched, and nothing is ever loosened
        for bid in (1.08780, 1.09000):
            await play(svc, sim, [bid])
            await guard_caught_up(svc, sim)
            assert (position(sim, a).sl, position(sim, b).sl) == (1.08762, 1.08762)
        assert all(len(sl_rows(s.store.path, t)) == 1 for t in (a, b))

        # a position opened later that day (naked: its floor is 500 points) is capped with the
        # rest: 96.40 up, 46.40 may be given back, 15.47 each
        late = sim.open_position("EURUSD", "BUY", 0.10)            # at 1.09012
        await cl.register({"ticket": late})
        await eventually(lambda: position(sim, late).sl == 1.08846)
        await eventually(lambda: position(sim, a).sl == position(sim, b).sl == 1.08846)
        await guard_caught_up(svc, sim)
        g = await cl.call("guard")
        assert g["daily_pnl"] - g["open_risk"] >= 50.0              # the worst case keeps 50
        assert svc.metrics.guard_breaches.labels("profit")._value.get() == 1   # counted once

        # the market falls through the stops: the day ends at least 50 up
        await play(svc, sim, [1.08900, 1.08846])
        await eventually(lambda: not sim.positions_get())
        await guard_caught_up(svc, sim)
        g = await cl.call("guard")
        assert g["daily_pnl"] == pytest.approx(50.2) and g["locked"] is False
        for t in (a, b, late):
            assert len(exits(sim, t)) == 1
            [stop] = sl_rows(s.store.path, t)[-1:]
            assert stop[2] == "done"


@pytest.mark.anyio
async def test_the_profit_target_with_on_profit_close_closes_once_and_locks_until_the_reset(
        engine_settings):
    s = guard_settings(engine_settings, daily_profit_target=50.0, on_profit="close",
                       day_reset_hour=9)
    sim = make_sim()
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)
    b = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)
    other = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)   # not DTMS's
    async with running(s, sim) as svc, client_for(svc) as cl:
        for t in (a, b):
            await cl.register({"ticket": t})
        await play(svc, sim, [1.08600, 1.08700])   # 56.40 up with the other's 18.80
        await eventually(lambda: position(sim, a) is None and position(sim, b) is None)
        g = await cl.call("guard")
        assert (g["locked"], g["kind"]) == (True, "profit")
        assert g["reason"] == "daily profit 56.40 reached the target 50.00"
        assert g["until"] == datetime(2024, 6, 3, 9, 0, tzinfo=UTC).timestamp()
        for t in (a, b):
            [deal] = exits(sim, t)
            assert (deal.magic, deal.comment, deal.price) == (MAGIC, f"DTMS:{t}:1", 1.08700)
            assert actions(s.store.path, t) == [("CLOSE", "guard:close", "done", 10009)]
        assert position(sim, other) is not None     # the lock closes the managed ones only
        # no new risk today: a position opened while locked is closed when it appears
        late = sim.open_position("EURUSD", "SELL", 0.05)
        await eventually(lambda: position(sim, late) is None)
        await play(svc, sim, [1.08750, 1.08800])
        await guard_caught_up(svc, sim)
        for t in (a, b, late):
            assert len(exits(sim, t)) == 1
        assert exits(sim, other) == []
        assert svc.metrics.guard_breaches.labels("profit")._value.get() == 1
        # the next day is a new day: open again, and the target counts from its start
        sim.advance(datetime(2024, 6, 3, 9, 1, tzinfo=UTC).timestamp() - sim.sim_time)
        await play(svc, sim, [1.08800])
        g = await eventually(lambda: _unlocked(cl))
        # the new day starts from the balance then; the other's floating gain is its P/L
        assert (g["day"], g["daily_pnl"]) == ("2024-06-03", 28.8)
        after = sim.open_position("EURUSD", "BUY", 0.05)
        await play(svc, sim, [1.08800, 1.08810])
        await guard_caught_up(svc, sim)
        assert position(sim, after) is not None


async def _unlocked(cl) -> dict | None:
    g = await cl.call("guard")
    return None if g["locked"] else g


# -- 2. the weekend guard --------------------------------------------------------------------------

#: Friday 2024-06-07 19:56 UTC, in a bar that closes at 20:00: the weekend guard is at 19:58
FRIDAY = datetime(2024, 6, 7, 19, 56, tzinfo=UTC).timestamp()


def friday_sim() -> SimTerminal:
    sim = SimTerminal(SimConfig(seed=11, history_mode="flat", history_days=3,
                                margin_mode=c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING),
                      clock=ManualClock(FRIDAY))
    assert sim.initialize()
    sim.hold("EURUSD")
    return sim


@pytest.mark.anyio
async def test_the_weekend_guard_moves_stops_to_breakeven_once_and_closes_what_cannot_be(
        engine_settings):
    s = guard_settings(engine_settings, weekend_time="19:58")
    sim = friday_sim()
    win = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)      # at 1.08512
    better = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)
    lose = sim.open_position("EURUSD", "SELL", 0.10, sl=1.09000)    # at 1.08500
    other = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)    # not DTMS's
    async with running(s, sim) as svc, client_for(svc) as cl:
        for t in (win, better, lose):
            await cl.register({"ticket": t})
        await play(svc, sim, [1.08600, 1.08700])
        thin = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)  # 8 points from breakeven
        await cl.register({"ticket": thin})
        await play(svc, sim, [1.08700])
        out = await cl.call("modify", {"ticket": better, "sl": 1.08600})   # past breakeven
        assert out["result"] == "done"
        await guard_caught_up(svc, sim)
        # 19:57: not yet
        assert [position(sim, t).sl for t in (win, better, lose, thin)] == [
            1.08000, 1.08600, 1.09000, 1.08000]
        assert position(sim, thin).price_open == 1.08712
        assert sim.sim_time == FRIDAY + 30
        await play(svc, sim, [1.08700] * 8)            # -> 19:57:50
        await guard_caught_up(svc, sim)
        assert position(sim, win).sl == 1.08000 and position(sim, lose) is not None
        await play(svc, sim, [1.08700])                # 19:58:00
        await eventually(lambda: position(sim, win).sl == 1.08512)
        await eventually(lambda: position(sim, lose) is None and position(sim, thin) is None)
        await guard_caught_up(svc, sim)
        # the winner to breakeven; the one already past it keeps its better stop; the loser
        # and the one too close to its entry for a breakeven stop (the stops level is 11
        # points) are closed; the other's position is not DTMS's
        assert (position(sim, better).sl, position(sim, other).sl) == (1.08600, 1.08000)
        assert sl_rows(s.store.path, win) == [("MODIFY_SL", "sl:guard:1.08512", "done", 10009)]
        assert sl_rows(s.store.path, better) == []
        for t in (lose, thin):
            assert [r for r in actions(s.store.path, t) if r[1] == "guard:close"] == [
                ("CLOSE", "guard:close", "done", 10009)]
            [deal] = exits(sim, t)
            assert deal.comment == f"DTMS:{t}:1"
        g = guard_rows(s.store.path)["state"]
        assert g["weekend_day"] == "2024-06-07" and g["locked"] is False

        # once per weekend: later polls, and a trade registered after the time, see nothing
        late = sim.open_position("EURUSD", "SELL", 0.10, sl=1.09000)
        await cl.register({"ticket": late})
        await play(svc, sim, [1.08650, 1.08700])
        await guard_caught_up(svc, sim)
        assert position(sim, late) is not None and sl_rows(s.store.path, late) == []
    # ... and a restart on the same Friday does not act again
    assert sim.initialize()
    async with running(s, sim) as svc, client_for(svc) as cl:
        await play(svc, sim, [1.08700, 1.08710])
        await guard_caught_up(svc, sim)
        assert position(sim, late) is not None
        assert sl_rows(s.store.path, win) == [("MODIFY_SL", "sl:guard:1.08512", "done", 10009)]
        assert [len(exits(sim, t)) for t in (win, better, lose, thin, other, late)] == [
            0, 0, 1, 1, 0, 0]


@pytest.mark.anyio
async def test_the_weekend_guard_with_on_weekend_close_closes_every_managed_trade_once(
        engine_settings):
    s = guard_settings(engine_settings, weekend_time="19:58", on_weekend="close")
    sim = friday_sim()
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08000)
    b = sim.open_position("EURUSD", "SELL", 0.10, sl=1.09000)
    other = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(s, sim) as svc, client_for(svc) as cl:
        for t in (a, b):
            await cl.register({"ticket": t})
        await play(svc, sim, [1.08600] * 11)            # -> 19:57:50
        await guard_caught_up(svc, sim)
        assert position(sim, a) is not None and position(sim, b) is not None
        await play(svc, sim, [1.08600])                  # 19:58:00
        await eventually(lambda: position(sim, a) is None and position(sim, b) is None)
        await play(svc, sim, [1.08610, 1.08620, 1.08600])
        await guard_caught_up(svc, sim)
        for t in (a, b):
            [deal] = exits(sim, t)
            assert (deal.magic, deal.comment) == (MAGIC, f"DTMS:{t}:1")
            assert actions(s.store.path, t) == [("CLOSE", "guard:close", "done", 10009)]
            view = await cl.trade(t)
            assert (view["state"], view["close_reason"]) == ("CLOSED", "GUARD")
        assert position(sim, other) is not None and exits(sim, other) == []
        assert (await cl.call("guard"))["locked"] is False   # the weekend is not a lock


# -- 3. a hedged trade at a breach --------------------------------------------------------------

@pytest.mark.anyio
async def test_a_hedged_trade_at_a_breach_is_closed_with_its_hedge_each_once(engine_settings):
    # the SELL 0.20 of tests/test_scenarios walked down the ladder to HEDGED is 28.00 down
    s = guard_settings(engine_settings, daily_loss_limit=32.0)
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "SELL", 0.20, sl=1.09500)
    async with running(s, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {"flat_timer_min": 240}})
        await settle(svc, sim)
        await walk_down_the_ladder(svc, sim, cl, ticket, s.store.path)
        hedge = (await cl.trade(ticket))["hedge_ticket"]
        assert position(sim, hedge).magic == MAGIC
        await guard_caught_up(svc, sim)
        g = await cl.call("guard")
        assert (g["locked"], g["daily_pnl"]) == (False, -28.0)
        await play(svc, sim, [1.0870, 1.0875])          # 33.00 down: past the limit
        await eventually(lambda: position(sim, ticket) is None and position(sim, hedge) is None)
        g = await eventually(lambda: _locked(cl))
        assert g["reason"] == "daily loss 33.00 reached the limit 32.00"
        await play(svc, sim, [1.0876, 1.0877])
        await guard_caught_up(svc, sim)
        # the trade by the guard, its hedge by the trade, each exactly once
        assert [len(exits(sim, t)) for t in (ticket, hedge)] == [2, 1]   # (L2's partial)
        rows = [(r[0], r[1], r[2]) for r in actions(s.store.path, ticket)][3:]
        assert sorted(rows) == [("CLOSE", "guard:close", "done"),
                                ("CLOSE_HEDGE", "close_hedge", "done")]
        view = await cl.trade(ticket)
        assert (view["state"], view["close_reason"], view["hedge_ticket"]) == (
            "CLOSED", "GUARD", 0)
        # the hedge was the lock's to close through its trade, never a "position opened while
        # locked" of the guard's own journal
        stored = guard_rows(s.store.path)
        assert stored["journal"] == {}
        assert hedge not in stored["state"]["at_lock"] and stored["state"]["closing"] == []
        assert sim.positions_get() == ()


@pytest.mark.anyio
async def test_a_hedge_opened_while_the_account_is_locked_is_not_closed_as_new(
        engine_settings):
    # alert_only: the lock (20.00 down, before the ladder's hedge) closes nothing, and the hedge
    # the trade opens afterwards reduces the risk: it is the trade's, not a new position
    s = guard_settings(engine_settings, daily_loss_limit=20.0, on_breach="alert_only")
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "SELL", 0.20, sl=1.09500)
    async with running(s, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {"flat_timer_min": 240}})
        await settle(svc, sim)
        await walk_down_the_ladder(svc, sim, cl, ticket, s.store.path)
        hedge = (await cl.trade(ticket))["hedge_ticket"]
        await play(svc, sim, [1.0866, 1.0867])
        await guard_caught_up(svc, sim)
        g = await cl.call("guard")
        assert g["locked"] is True and g["since"] < position(sim, hedge).time
        assert position(sim, hedge) is not None and position(sim, ticket) is not None
        assert exits(sim, hedge) == [] and guard_rows(s.store.path)["journal"] == {}
        # a stranger's position opened now is closed as new, though
        stranger = sim.open_position("EURUSD", "BUY", 0.01)
        await eventually(lambda: position(sim, stranger) is None)
        assert position(sim, hedge) is not None


async def _locked(cl) -> dict | None:
    g = await cl.call("guard")
    return g if g["locked"] else None


# -- 4./5. a real `dtms serve`: close_all across a SIGKILL, `dtms flatten` asking first ----------

class Served:
    """A simulated terminal in its own process and ``dtms serve`` processes on it, driven with
    the ``dtms`` CLI (as in tests/test_guard_recovery.py); every process is SIGKILLed at the
    end."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.tmp = tmp_path
        self.log = tmp_path / "dtms.log"
        self.procs: list[subprocess.Popen] = []
        ready = tmp_path / "terminal.json"
        self.term_log = open(tmp_path / "terminal.log", "wb")  # noqa: SIM115 - the child's
        self.terminal = subprocess.Popen(
            [sys.executable, "-m", "dtms.brokers.sim.remote", "--port", "0", "--seed", "5",
             "--ready-file", str(ready)], stdout=self.term_log, stderr=subprocess.STDOUT,
            cwd=REPO)
        wait_for(ready.exists, "the terminal never became ready")
        port = json.loads(ready.read_text())["port"]
        self.sim = RemoteTerminal(port=port)
        assert self.sim.initialize()
        self.sim.hold("EURUSD")
        self.sim.set_price("EURUSD", 1.08500)
        self.env = dict(os.environ)
        self.env.update(
            DTMS_CONFIG=str(REPO / "config" / "dtms.toml"), DTMS_RPC_PORT=str(free_port()),
            DTMS_METRICS_PORT=str(free_port()), DTMS_STORE_PATH=str(tmp_path / "g.sqlite3"),
            DTMS_BROKER_BACKEND="sim-remote", DTMS_SIM_REMOTE_PORT=str(port),
            DTMS_BROKER_POLL_INTERVAL_S="0.05", DTMS_BROKER_CONNECT_RETRY_S="0.2",
            DTMS_MARKET_TICK_POLL_S="0.05", DTMS_GUARD_POLL_S="0.1",
            DTMS_SERVICE_LOG_FORMAT="text",
            DTMS_SERVICE_SUPERVISOR_LOG=str(tmp_path / "supervisor.log"), **env)
        self.store = tmp_path / "g.sqlite3"

    def start(self) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dtms", "serve"], cwd=REPO,
                                    stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        wait_for(lambda: dtms("health", env=self.env).returncode == 0, "DTMS never ready",
                 log=self.log)
        return proc

    def cli(self, *args: str) -> Any:
        out = dtms(*args, env=self.env)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return json.loads(out.stdout)

    def exits(self, ticket: int) -> list:
        return [d for d in self.sim.history_deals_get(position=ticket) or ()
                if d.entry == c.DEAL_ENTRY_OUT]

    def is_open(self, ticket: int) -> bool:
        return bool(self.sim.positions_get(ticket=ticket))

    def guard_journal(self) -> dict[str, Any]:
        db = sqlite3.connect(self.store)
        try:
            found = db.execute("SELECT value FROM meta WHERE key = 'guard'").fetchall()
        finally:
            db.close()
        return json.loads(found[0][0])["journal"] if found else {}

    def close(self) -> None:
        for proc in [*self.procs, self.terminal]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        self.term_log.close()


@pytest.fixture
def served(tmp_path):
    made: list[Served] = []

    def make(**env: str) -> Served:
        made.append(Served(tmp_path, **env))
        return made[-1]
    yield make
    for s in made:
        s.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_close_all_closes_unmanaged_positions_too_once_across_a_sigkill_mid_close(served):
    srv = served(DTMS_GUARD_MAX_DRAWDOWN_PCT="1", DTMS_GUARD_ON_BREACH="close_all")
    sim = srv.sim
    u1 = sim.open_position("EURUSD", "BUY", 1.0)        # not DTMS's: the first to close
    m = sim.open_position("EURUSD", "BUY", 0.5, sl=1.08000)   # DTMS's
    u2 = sim.open_position("EURUSD", "SELL", 0.2)       # not DTMS's
    first = srv.start()
    srv.cli("register", str(m))
    assert srv.cli("guard")["locked"] is False
    # every close takes 3 s at the terminal: DTMS is killed with the first one in flight
    sim.set_latency(3.0, "order_send")
    sim.set_price("EURUSD", 1.08400)                    # 150.40 of 10,000 down: past 1 %
    row = wait_for(lambda: [r for r in srv.guard_journal().values() if r["status"] == "sent"],
                   "the guard never sent a close", log=srv.log)
    assert [r["ticket"] for r in row] == [u1]
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    # the request reached the terminal before DTMS died: it fills, and nobody hears of it
    wait_for(lambda: not srv.is_open(u1), "the close in flight never filled")
    sim.set_latency(0.0, "order_send")
    assert srv.is_open(m) and srv.is_open(u2)

    srv.start()
    g = srv.cli("guard")
    assert (g["locked"], g["kind"]) == (True, "drawdown")
    wait_for(lambda: not srv.is_open(m) and not srv.is_open(u2),
             "close_all did not finish after the restart", log=srv.log)
    wait_for(lambda: all(r["status"] == "done" for r in srv.guard_journal().values()),
             "the guard's journal never settled", log=srv.log)
    time.sleep(1.0)   # ten more evaluations: nothing more is sent
    # each position closed exactly once: the one in flight resolved from its deal, not resent
    assert [len(srv.exits(t)) for t in (u1, m, u2)] == [1, 1, 1]
    rows = sorted(srv.guard_journal().values(), key=lambda r: r["ticket"])
    assert [(r["ticket"], r["n"], r["status"]) for r in rows] == [(u1, 1, "done"),
                                                                 (u2, 1, "done")]
    assert rows[0]["result"]["reconciled"] == "executed"
    assert [d.comment for d in srv.exits(u1)] == [f"DTMS:{u1}:G1"]
    assert [d.comment for d in srv.exits(u2)] == [f"DTMS:{u2}:G1"]
    assert [d.comment for d in srv.exits(m)] == [f"DTMS:{m}:1"]
    assert actions(str(srv.store), m) == [("CLOSE", "guard:close", "done", 10009)]


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal to answer on")
def test_flatten_asks_first_and_a_no_sends_nothing(served):
    import pty
    srv = served()
    sim = srv.sim
    a = sim.open_position("EURUSD", "BUY", 0.1, sl=1.08000)
    b = sim.open_position("EURUSD", "SELL", 0.1, sl=1.09000)
    stranger = sim.open_position("EURUSD", "BUY", 0.1, sl=1.08000)
    srv.start()
    for t in (a, b):
        srv.cli("register", str(t))

    def flatten(answer: str | None, *extra: str) -> subprocess.CompletedProcess:
        if answer is None:   # not a terminal: it refuses to guess
            return subprocess.run([sys.executable, "-m", "dtms", "flatten", *extra],
                                  capture_output=True, text=True, env=srv.env, timeout=60,
                                  stdin=subprocess.DEVNULL)
        main, tty = pty.openpty()
        try:
            os.write(main, answer.encode())
            return subprocess.run([sys.executable, "-m", "dtms", "flatten", *extra],
                                  capture_output=True, text=True, env=srv.env, timeout=60,
                                  stdin=tty)
        finally:
            os.close(tty)
            os.close(main)

    for answer in ("n\n", "\n", "no thanks\n", "\x04"):   # \x04: Ctrl-D, the end of input
        out = flatten(answer, "--reason", "eod")
        assert out.stdout.startswith("Close every position DTMS manages now? [y/N] ")
        assert (out.returncode, out.stderr) == (0, "dtms flatten: nothing done\n")
    out = flatten(None, "--reason", "eod")
    assert out.returncode == 2 and "--yes" in out.stderr
    assert all(srv.is_open(t) for t in (a, b, stranger))
    for t in (a, b):   # nothing sent, nothing journaled
        assert actions(str(srv.store), t) == []
        assert srv.exits(t) == []
    out = flatten("y\n", "--reason", "eod")
    assert out.returncode == 0
    done = json.loads(out.stdout.partition("[y/N] ")[2])
    assert sorted(o["ticket"] for o in done["closed"]) == [a, b] and done["failed"] == []
    assert [len(srv.exits(t)) for t in (a, b)] == [1, 1] and srv.is_open(stranger)
    # --yes does not ask: nothing managed is left, so nothing is closed, the stranger stays
    c_ = sim.open_position("EURUSD", "BUY", 0.1, sl=1.08000)
    srv.cli("register", str(c_))
    out = subprocess.run([sys.executable, "-m", "dtms", "flatten", "--reason", "eod", "--yes"],
                         capture_output=True, text=True, env=srv.env, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and "[y/N]" not in out.stdout
    assert [o["ticket"] for o in json.loads(out.stdout)["closed"]] == [c_]
    assert [len(srv.exits(t)) for t in (a, b, c_)] == [1, 1, 1] and srv.is_open(stranger)
    history = [h for h in srv.cli("guard")["history"] if h["event"] == "flatten"]
    assert [sorted(h["closed"]) for h in history] == [sorted([a, b]), [c_]]


def _exposure(ticket: int, price_open: float, price: float, sl: float) -> Exposure:
    value = 100_000.0
    return Exposure(ticket=ticket, symbol="EURUSD", direction=Direction.BUY, volume=1.0,
                    price_open=price_open, price=price, sl=sl, tp=0.0,
                    profit=round((price - price_open) * value, 2), managed=True,
                    value_per_price=value, min_distance=0.0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.004, 0.004), st.booleans()), min_size=1, max_size=12))
def test_the_profit_lock_never_loosens_and_keeps_the_target_whenever_the_day_is_above_it(
        steps):
    """Managed BUYs along a random path, positions opening on the way, every ordered stop
    applied: no stop ever loosens, and once the target is reached the loss if every stop is hit
    never takes the day below it while the day is above it."""
    cfg = dataclasses.replace(GuardSettings(), daily_profit_target=400.0)
    t0 = datetime(2024, 6, 3, 8, 0, tzinfo=UTC).timestamp()
    state, price = GuardState(), 1.1000
    book: dict[int, tuple[float, float]] = {1: (1.1000, 1.0900)}   # ticket -> (open, sl)
    realised = 0.0
    for i, (move, opens) in enumerate(steps):
        price = round(price + move, 5)
        for t, (open_, sl) in list(book.items()):
            if price <= sl:                       # stopped out at its stop
                realised += (sl - open_) * 100_000.0
                del book[t]
        if opens:
            book[10 + i] = (price, round(price - 0.01, 5))
        positions = tuple(_exposure(t, o, price, sl) for t, (o, sl) in book.items())
        equity = 10_000.0 + realised + sum(p.profit for p in positions)
        d = evaluate(AccountSnapshot(now=t0 + i, balance=10_000.0 + realised, equity=equity,
                                     positions=positions), state, cfg, UTC_ZONE)
        for intent in d.intents:
            assert intent.kind == "sl"
            open_, sl = book[intent.ticket]
            assert intent.sl > sl                 # tighter, never looser
            book[intent.ticket] = (open_, intent.sl)
        state = d.state
        if state.profit_day and d.figures.daily_pnl >= 400.0:
            worst = sum((sl - price) * 100_000.0 for _, sl in book.values())
            assert d.figures.daily_pnl + worst >= 400.0 - 1.0   # within the price grid
