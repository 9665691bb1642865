"""Registrations queued together are decided together (one store read, one broker call, one
commit) and still answered one by one: over real TCP, pipelined on one connection."""

from __future__ import annotations

import sqlite3

import anyio
import pytest

from dtms.actors.positions import poll_pause
from dtms.errors import Conflict, DtmsError, NotFound, Overloaded, OwnedElsewhere
from tests.conftest import client_for, running

pytestmark = pytest.mark.anyio


def _sample(metric, suffix: str, **labels: str) -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise LookupError(suffix)


async def _burst(c, payloads: list[dict]) -> list[object]:
    """Send every registration at once on one connection; each answer (or error) by index."""
    out: list[object] = [None] * len(payloads)

    async def one(i: int, p: dict) -> None:
        try:
            out[i] = await c.register(p, verify=False)
        except DtmsError as exc:
            out[i] = exc

    async with anyio.create_task_group() as tg:
        for i, p in enumerate(payloads):
            tg.start_soon(one, i, p)
    return out


async def test_a_burst_of_mixed_registrations_gets_one_answer_each_and_commits_in_groups(
        settings, sim):
    settings = settings.replace(registry={"owned_elsewhere_owners": ("other-bot",)})
    good = [sim.open_position("EURUSD", "BUY", 0.01) for _ in range(120)]
    sell = sim.open_position("GBPUSD", "SELL", 0.02)
    payloads = ([{"ticket": t, "symbol": "EURUSD"} for t in good]
                + [{"ticket": good[0]}, {"ticket": good[1]}]          # twice in the burst
                + [{"ticket": 987654321}]                              # not at the broker
                + [{"ticket": sell, "direction": "BUY"}]               # contradicts it
                + [{"ticket": sell, "owner": "other-bot"}])            # another manager's
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        commits_before = _sample(svc.metrics.store_batch, "_count")
        out = await _burst(c, payloads)
        answered = [(r["trade"]["ticket"], r["created"]) for r in out[:122]]
        assert [t for t, _ in answered] == good + good[:2]
        # each ticket created exactly once; the second asker of a ticket gets created: false
        assert sorted(t for t, created in answered if created) == sorted(good)
        assert isinstance(out[122], NotFound) and out[122].details["field"] == "ticket"
        assert isinstance(out[123], Conflict) and out[123].details["field"] == "direction"
        assert isinstance(out[124], OwnedElsewhere) and out[124].details["field"] == "owner"
        # exactly one actor per ticket, the refused one has none and no row
        assert sorted(svc.registry.trades) == sorted(good)
        assert sorted(map(int, svc.registry.supervisor.which_children())) == sorted(good)
        commits = _sample(svc.metrics.store_batch, "_count") - commits_before
        assert 1 <= commits < 120  # grouped: fewer commits than registrations
        assert _sample(svc.metrics.registrations, "_total", result="created") == 120
        assert _sample(svc.metrics.registrations, "_total", result="existing") == 2
        db = sqlite3.connect(settings.store.path)
        assert db.execute("SELECT COUNT(*) FROM trades").fetchone() == (120,)
        assert db.execute("SELECT COUNT(*) FROM transitions WHERE reason = 'registered'"
                          ).fetchone() == (120,)
        assert db.execute("SELECT COUNT(*) FROM trades WHERE ticket = ?", (sell,)
                          ).fetchone() == (0,)
        db.close()


async def test_max_trades_counts_the_registrations_of_the_same_batch(settings, sim):
    settings = settings.replace(registry={"max_trades": 3})
    tickets = [sim.open_position("EURUSD", "SELL", 0.01) for _ in range(8)]
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        out = await _burst(c, [{"ticket": t} for t in tickets])
        created = [r for r in out if isinstance(r, dict)]
        assert len(created) == 3 and all(r["created"] for r in created)
        assert all(isinstance(r, Overloaded) for r in out if not isinstance(r, dict))
        assert len(svc.registry.trades) == 3
        db = sqlite3.connect(settings.store.path)
        assert db.execute("SELECT COUNT(*) FROM trades").fetchone() == (3,)
        db.close()


@pytest.mark.parametrize(("interval", "took", "share", "pause"), [
    (0.25, 0.010, 0.2, 0.25),    # a cheap poll: the configured interval
    (0.25, 0.050, 0.2, 0.25),    # exactly at the share: still the interval
    (0.25, 0.500, 0.2, 2.0),     # 100,000 positions: 0.5 s polls at most 20 % of the time
    (0.25, 0.500, 1.0, 0.25),    # share 1: back to back is allowed
    (1.00, 0.100, 0.05, 1.9),
])
def test_poll_pause_keeps_polls_under_their_share_of_the_time(interval, took, share, pause):
    assert poll_pause(interval, took, share) == pytest.approx(pause)
    assert took / (took + poll_pause(interval, took, share)) <= share + 1e-12
