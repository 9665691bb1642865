"""The rest of the protocol's methods over real TCP: subscribe, unregister, actions, pause, and
the client retrying through a server restart."""

from __future__ import annotations

import anyio
import pytest

from dtms.client import Client
from dtms.errors import Conflict, InvalidArgument, NotFound
from tests.conftest import client_for, eventually, running

pytestmark = pytest.mark.anyio


async def test_subscribe_pushes_durable_state_changes(settings, sim):
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    b = sim.open_position("USDJPY", "SELL", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as watcher, client_for(svc) as c:
        seen: list[tuple[str, dict]] = []

        async def listen() -> None:
            async for method, params in watcher.subscribe(tickets=[a]):
                seen.append((method, params))

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await eventually(lambda: len(svc.events) == 1)
            await c.register({"ticket": b})  # not in the subscription's tickets
            await c.register({"ticket": a})
            await c.call("pause", {"ticket": a})
            sim.set_price("EURUSD", 1.0795)
            await eventually(lambda: len(seen) >= 3)
            tg.cancel_scope.cancel()
        assert [(m, p["ticket"]) for m, p in seen] == [
            ("trade.state", a), ("trade.updated", a), ("trade.state", a)]
        assert (seen[0][1]["from_state"], seen[0][1]["to_state"]) == ("", "HEALTHY")
        assert seen[1][1]["trade"]["paused"] is True
        assert (seen[2][1]["to_state"], seen[2][1]["trade"]["close_reason"]) == ("CLOSED", "SL")
    # the subscription ended with its connection
    assert len(svc.events) == 0


async def test_subscribe_validates_its_filters(settings, sim):
    async with running(settings, sim) as svc, client_for(svc) as c:
        with pytest.raises(InvalidArgument) as err:
            await c.call("subscribe", {"events": ["trade.gossip"]})
        assert err.value.details["field"] == "events"
        with pytest.raises(InvalidArgument) as err:
            await c.call("subscribe", {"tickets": [0]})
        assert err.value.details["field"] == "tickets"


async def test_unregister_releases_the_trade_and_register_adopts_it_again(settings, sim):
    ticket = sim.open_position("XAUUSD", "BUY", 0.10, sl=2390.0)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket, "owner": "bot"})
        released = await c.call("unregister", {"ticket": ticket})
        assert (released["state"], released["managed"]) == ("RELEASED", False)
        assert ticket not in svc.registry.trades
        assert svc.registry.supervisor.which_children() == []
        assert (await c.call("unregister", {"ticket": ticket}))["state"] == "RELEASED"
        assert sim.positions_get(ticket=ticket)[0].volume == 0.10  # the position is untouched
        sim.set_price("XAUUSD", 2389.0)  # not managed: DTMS does not record this close
        await anyio.sleep(0.2)
        assert (await c.trade(ticket))["state"] == "RELEASED"
        with pytest.raises(NotFound):
            await c.call("unregister", {"ticket": 5})
        with pytest.raises(NotFound):  # its position is gone now, so it cannot be adopted again
            await c.register({"ticket": ticket})

    other = sim.open_position("EURUSD", "SELL", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": other})
        await c.call("unregister", {"ticket": other})
        again = await c.register({"ticket": other})
        assert (again["created"], again["trade"]["state"]) == (True, "HEALTHY")
        assert other in svc.registry.trades
        states = [(t["from_state"], t["to_state"]) for t in
                  (await c.call("transitions", {"ticket": other}))["transitions"]]
        assert states == [("", "HEALTHY"), ("HEALTHY", "RELEASED"), ("RELEASED", "HEALTHY")]
        sim.close_position_manually(other)
        await eventually(lambda: other not in svc.registry.trades)
        with pytest.raises(Conflict):
            await c.call("unregister", {"ticket": other})  # closed


async def test_actions_reads_the_journal(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket})
        assert await c.call("actions", {"ticket": ticket}) == {"actions": []}
        with pytest.raises(InvalidArgument) as err:
            await c.call("actions", {"ticket": "x"})
        assert err.value.details["field"] == "ticket"
        with pytest.raises(InvalidArgument) as err:
            await c.call("actions", {"limit": 0})
        assert err.value.details["field"] == "limit"


async def test_client_with_its_default_retries_rides_out_a_restart_on_the_same_port(
        settings, sim):
    a = sim.open_position("EURUSD", "BUY", 0.10)
    b = sim.open_position("GBPUSD", "BUY", 0.10)
    async with running(settings, sim) as svc:
        port = svc.rpc.port
    pinned = settings.replace(rpc={"port": port})
    async with Client("127.0.0.1", port) as c:   # the shipped retry budget (issue 13)
        async with running(pinned, sim):
            assert (await c.register({"ticket": a}))["created"] is True
        # the server is gone; a call retries until the restarted server answers
        result: dict = {}

        async def register_b() -> None:
            result.update(await c.register({"ticket": b}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(register_b)
            await anyio.sleep(1.0)   # down this long: a restart measures 0.5-1 s
            async with running(pinned, sim) as svc:
                await eventually(lambda: result, timeout=20)
                assert (result["created"], result["trade"]["ticket"]) == (True, b)
                assert sorted(svc.registry.trades) == [a, b]
        assert c.breaker_state == "closed"   # one call, however many attempts
