"""Supervision inside the running service: a poisoned trade is given up and SUSPENDED while the
others carry on; restarts land in the restart history; the root past its intensity escalates."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import anyio
import pytest

from dtms.actors.trade import GetView
from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.errors import Conflict, NotFound
from dtms.service import Service
from dtms.supervisor import SupervisorEscalation
from tests.conftest import client_for, eventually, running

pytestmark = pytest.mark.anyio


async def test_poisoned_trade_is_suspended_and_others_keep_being_managed(settings, sim):
    settings = settings.replace(trades={"max_restarts": 3, "restart_period_s": 60.0})
    bad = sim.open_position("EURUSD", "BUY", 0.10)
    good = sim.open_position("XAUUSD", "SELL", 0.10, sl=2410.0)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": bad})
        await c.register({"ticket": good})
        actor = svc.registry.trades[bad]
        for _ in range(4):  # each poison message crashes one incarnation
            await actor.tell("poison")
        t = await eventually(lambda: _state(c, bad, "SUSPENDED"))
        assert t["ticket"] == bad and t["managed"] is False
        assert bad not in svc.registry.trades
        transitions = (await c.call("transitions", {"ticket": bad}))["transitions"]
        assert transitions[-1]["to_state"] == "SUSPENDED"
        assert "gave up" in transitions[-1]["reason"]
        history = (await c.call("restarts", {}))["restarts"]
        actions = [(r["supervisor"], r["child"], r["action"]) for r in history]
        assert actions.count(("trades", str(bad), "restart")) == 3
        assert actions.count(("trades", str(bad), "give_up")) == 1
        assert all(r["exception"].startswith("TypeError") for r in history)
        # the other trade is still followed: its stop still closes it
        sim.set_price("XAUUSD", 2411.0)
        closed = await eventually(lambda: _state(c, good, "CLOSED"))
        assert closed["close_reason"] == "SL"
        assert (await c.health())["ready"] is True
        m = svc.metrics
        assert m.actor_restarts.labels("trade")._value.get() == 3
        assert m.actor_giveups.labels("trade")._value.get() == 1
        assert m.trades.labels("SUSPENDED")._value.get() == 1
        # resumable: back to its state before suspension, followed again
        with pytest.raises(Conflict):
            await c.call("pause", {"ticket": bad})  # not while suspended
        resumed = await c.call("resume", {"ticket": bad})
        assert (resumed["state"], resumed["managed"]) == ("HEALTHY", True)
        assert bad in svc.registry.trades
        assert m.trades.labels("SUSPENDED")._value.get() == 0
        sim.close_position_manually(bad)
        assert (await eventually(lambda: _state(c, bad, "CLOSED")))["close_reason"] == "MANUAL"
        states = [t["to_state"] for t in
                  (await c.call("transitions", {"ticket": bad}))["transitions"]]
        assert states == ["HEALTHY", "SUSPENDED", "HEALTHY", "CLOSED"]
        with pytest.raises(Conflict):
            await c.call("resume", {"ticket": bad})  # closed
        with pytest.raises(NotFound):
            await c.call("resume", {"ticket": 424242})


async def test_pause_and_resume_are_persisted_and_survive_restart(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket})
        assert (await c.call("pause", {"ticket": ticket}))["paused"] is True
        assert (await c.call("pause", {"ticket": ticket}))["paused"] is True  # idempotent
    async with running(settings, sim) as svc, client_for(svc) as c:
        assert (await c.trade(ticket))["paused"] is True
        assert (await c.call("resume", {"ticket": ticket}))["paused"] is False
        assert (await c.trade(ticket))["paused"] is False


async def test_crash_storm_of_trade_actors_others_keep_answering(settings, caplog):
    """1,000 trade actors; 150 of them crash at random moments while all of them are asked for
    their view. Every ask is answered (queued asks survive a restart: the mailbox belongs to the
    actor, not to one incarnation), only the crashed actors restart, exactly once per crash, and
    the restart history holds exactly those crashes."""
    settings = settings.replace(supervisor={"trades_max_restarts": 100_000,
                                            "min_backoff_s": 0.001, "max_backoff_s": 0.01},
                                trades={"max_restarts": 10})
    sim = SimTerminal(SimConfig(seed=7, balance=10_000_000.0), clock=ManualClock())
    tickets = [sim.open_position("EURUSD", "BUY" if i % 2 else "SELL", 0.01) for i in range(1000)]
    rng = random.Random(3)
    caplog.set_level(logging.WARNING, logger="dtms.supervisor")
    async with running(settings, sim) as svc, client_for(svc) as c:
        for start in range(0, 1000, 250):
            reply = await c.register_batch([{"ticket": t} for t in tickets[start:start + 250]])
            assert reply["created"] == 250
        actors = dict(svc.registry.trades)
        assert len(actors) == 1000
        crashes = {t: rng.randint(1, 3) for t in rng.sample(tickets, 150)}
        answered: list[int] = []

        async def crash(ticket: int, times: int) -> None:
            for _ in range(times):
                await anyio.sleep(rng.random() * 0.2)
                await actors[ticket].tell("poison")

        async def ask_all(round_: int) -> None:
            for t in tickets:
                view = await actors[t].ask(GetView(), timeout=30)
                assert view["ticket"] == t
                answered.append(t)

        async with anyio.create_task_group() as tg:
            for t, n in crashes.items():
                tg.start_soon(crash, t, n)
            for r in range(3):
                tg.start_soon(ask_all, r)
        assert len(answered) == 3000
        await eventually(lambda: all(actors[t].incarnation == 1 + n for t, n in crashes.items()))
        assert all(a.incarnation == 1 for t, a in actors.items() if t not in crashes)
        history = await eventually(lambda: _history_has(c, sum(crashes.values())))
        assert sorted(int(r["child"]) for r in history) == sorted(
            t for t, n in crashes.items() for _ in range(n))
        assert {(r["supervisor"], r["kind"], r["action"], r["reason"]) for r in history} == {
            ("trades", "trade", "restart", "crash")}
        assert all(r["exception"].startswith("TypeError(") for r in history)
        assert svc.metrics.actor_restarts.labels("trade")._value.get() == sum(crashes.values())
        lines = [r for r in caplog.records
                 if r.name == "dtms.supervisor" and getattr(r, "event", "") == "restart"]
        assert sorted(int(r.child) for r in lines) == sorted(int(r["child"]) for r in history)
        assert {(r.kind, r.exception_type) for r in lines} == {("trade", "TypeError")}
        assert len(svc.registry.trades) == 1000 and (await c.health())["ready"] is True


async def _history_has(c, n):
    rows = (await c.call("restarts", {"kind": "trade", "limit": 1000}))["restarts"]
    return rows if len(rows) == n else None


async def test_core_crash_storm_escalates_to_the_root_and_the_service_stops(settings, sim):
    service = Service(settings, module=sim)
    with pytest.raises(BaseException) as err:  # noqa: PT011 - asserted just below
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await service.ready_event.wait()
            with anyio.fail_after(20):
                while True:  # the store keeps crashing on a message it cannot handle
                    await service.store.tell("garbage")
                    await anyio.sleep(0.05)
    assert _contains(err.value, SupervisorEscalation)
    assert service.store.db is None  # the database was closed on the way down
    assert service.broker.connected is False


async def _state(c, ticket, state):
    t = await c.trade(ticket)
    return t if t["state"] == state else None


def _contains(exc: BaseException, kind: type) -> bool:
    if isinstance(exc, kind):
        return True
    return isinstance(exc, BaseExceptionGroup) and any(_contains(e, kind) for e in exc.exceptions)


async def test_not_ready_while_the_core_restarts_then_ready_with_trades_resumed(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        await c.register({"ticket": ticket})
        await c.call("pause", {"ticket": ticket})
        seen_not_ready = False

        async def watch_readiness() -> None:
            nonlocal seen_not_ready
            while True:
                if not svc.ready:
                    seen_not_ready = True
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_readiness)
            await svc.registry.tell("garbage")  # the registry crashes; rest_for_one restarts it
            await eventually(lambda: seen_not_ready)
            await eventually(lambda: svc.ready and ticket in svc.registry.trades)
            tg.cancel_scope.cancel()
        assert svc.registry.incarnation == 2
        t = await c.trade(ticket)
        assert (t["state"], t["paused"]) == ("HEALTHY", True)  # resumed exactly as stored
        rows = (await c.call("restarts", {"kind": "registry"}))["restarts"]
        assert [(r["action"], r["reason"]) for r in rows] == [("restart", "crash")]


class _LoadingService(Service):
    """A service whose readiness the test drives: ``loading`` stored trades reload one per
    tick, then it is ready; with none it never becomes ready."""

    loading = 0

    @property
    def ready(self) -> bool:
        return self._reloaded >= self.loading > 0

    def _not_ready(self):
        from dtms.errors import NotReady
        return NotReady("stored trades are being reloaded")


async def test_startup_timeout_counts_from_the_last_trade_reloaded_and_a_stuck_start_fails(
        settings, sim):
    from dtms.service import StartupTimeout

    settings = settings.replace(service={"startup_timeout_s": 0.3})
    slow = _LoadingService(settings, module=sim)
    slow.loading, slow._reloaded = 8, 0

    async def reload_one_every_0_2_s() -> None:  # 1.6 s in all: five timeouts' worth
        while slow._reloaded < slow.loading:
            await anyio.sleep(0.2)
            slow.registry.trades[slow._reloaded] = object()
            slow._reloaded += 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reload_one_every_0_2_s)
            await slow._watch_startup()   # returns once ready: no StartupTimeout
    assert slow.ready_event.is_set()

    stuck = _LoadingService(settings, module=sim)
    stuck._reloaded = 0
    started = anyio.current_time()
    with anyio.fail_after(10), pytest.raises(StartupTimeout):
        await stuck._watch_startup()
    assert anyio.current_time() - started >= 0.3


def test_a_broker_crashing_at_start_exits_3_with_the_crash_not_just_its_symptom(tmp_path):
    """The bridge cannot unpickle its results: the broker crashes at every connect and DTMS
    never becomes ready. The exit message says why, not only "not connected"."""
    from tests.test_cli import dtms, free_port

    tests_dir = str(Path(__file__).resolve().parent)
    env = dict(os.environ, DTMS_RPC_PORT=str(free_port()), DTMS_METRICS_PORT=str(free_port()),
               DTMS_STORE_PATH=str(tmp_path / "crash.sqlite3"),
               DTMS_CONFIG=str(Path(tests_dir).parent / "config" / "dtms.toml"),
               DTMS_BROKER_BACKEND="module:terminal_unpickling",
               DTMS_SERVICE_STARTUP_TIMEOUT_S="3", DTMS_SUPERVISOR_ROOT_MAX_RESTARTS="1000",
               DTMS_SUPERVISOR_MIN_BACKOFF_S="0.05", DTMS_SUPERVISOR_MAX_BACKOFF_S="0.2",
               PYTHONPATH=os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    result = dtms("serve", env=env, timeout=60)
    assert result.returncode == 3, result.stderr[-3000:]
    assert ("dtms: not ready within 3.0s: DTMS is not ready: the trading terminal is not "
            "connected; last crash: broker: UnpicklingError('bridge: cannot unpickle the result "
            "of account_info')") in result.stderr


async def test_a_clean_start_logs_no_failed_position_poll(settings, sim, caplog):
    """The watcher's first poll waits for the broker's connection (it could only fail before)."""
    caplog.set_level(logging.INFO, logger="dtms.actors.positions")
    async with running(settings, sim) as svc:
        await eventually(lambda: svc.watcher.polls_ok >= 3)
    assert [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("position poll failed")] == []
    assert svc.metrics.position_polls.labels("error")._value.get() == 0
