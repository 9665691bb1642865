"""The listing methods' bounds over TCP, the same ones the `dtms` command checks (issue 13)."""

from __future__ import annotations

import pytest

from dtms.errors import InvalidArgument
from dtms.metrics import ACTOR_KINDS
from tests.conftest import client_for, running

pytestmark = pytest.mark.anyio


async def test_restarts_kind_must_be_a_supervised_kind_and_limits_stop_at_max_page(settings, sim):
    async with running(settings, sim) as svc, client_for(svc) as c:
        with pytest.raises(InvalidArgument) as exc:
            await c.call("restarts", {"kind": "bogus"})
        wire = exc.value.to_wire()
        assert wire["field"] == "kind"
        assert wire["message"] == f"kind: must be one of {', '.join(ACTOR_KINDS)}"
        assert (await c.call("restarts", {"kind": "market"}))["restarts"] == []
        for method in ("trades", "actions", "restarts"):
            with pytest.raises(InvalidArgument) as exc:
                await c.call(method, {"limit": 1001})
            assert exc.value.to_wire()["field"] == "limit"
            await c.call(method, {"limit": 1000})


@pytest.mark.parametrize("since", [float("nan"), float("inf"), -1.0, "10m", True])
async def test_every_since_is_a_finite_timestamp(settings, sim, since):
    """NaN passed ``since < 0`` and was taken as a time (transitions answered [])."""
    ticket = sim.open_position("EURUSD", "BUY", 0.1)
    async with running(settings, sim) as svc, client_for(svc) as c:
        await c.register({"ticket": ticket})
        for method, args in (("actions", {}), ("restarts", {}), ("transitions", {"ticket": ticket}),
                             ("shadow_report", {})):
            with pytest.raises(InvalidArgument) as exc:
                await c.call(method, {**args, "since": since})
            wire = exc.value.to_wire()
            assert (wire["field"], wire["message"]) == (
                "since", "since: must be a timestamp in seconds >= 0"), method
