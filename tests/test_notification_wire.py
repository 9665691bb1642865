"""Notifications on the wire, as any msgpack-rpc peer sees them: ``[2, method, [map]]``."""

from __future__ import annotations

import anyio
import msgpack
import pytest

from tests.conftest import client_for, running

pytestmark = pytest.mark.anyio


async def test_trade_state_notification_frame_is_exactly_2_method_and_an_array_of_one_map(
        settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    async with running(settings, sim) as svc, client_for(svc) as c, \
            await anyio.connect_tcp("127.0.0.1", svc.rpc.port) as raw:
        unpacker = msgpack.Unpacker(raw=False)
        await raw.send(msgpack.packb([0, 1, "subscribe", [{"tickets": [ticket]}]]))

        async def next_message() -> list:
            with anyio.fail_after(10):
                while True:
                    for msg in unpacker:
                        return msg
                    unpacker.feed(await raw.receive())

        assert (await next_message())[:3] == [1, 1, None]
        await c.register({"ticket": ticket, "symbol": "EURUSD", "direction": "BUY"})
        frame = await next_message()
    assert len(frame) == 3 and frame[:2] == [2, "trade.state"]
    assert isinstance(frame[2], list) and len(frame[2]) == 1
    (params,) = frame[2]
    assert (params["ticket"], params["from_state"], params["to_state"]) == (ticket, "", "HEALTHY")
    assert params["trade"]["ticket"] == ticket
