"""Supervision inside the running service: a poisoned trade is given up and SUSPENDED while the
others carry on; restarts land in the restart history; the root past its intensity escalates."""

from __future__ import annotations

import anyio
import pytest

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
