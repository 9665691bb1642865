"""Registrations queued together are decided together (one store read, one broker call, one
commit) and still answered one by one: over real TCP, pipelined on one connection."""

from __future__ import annotations

import sqlite3

import anyio
import pytest

from dtms.actors.positions import poll_pause
from dtms.errors import (
    Conflict,
    DtmsError,
    DtmsPosition,
    InvalidArgument,
    NotFound,
    Overloaded,
    OwnedElsewhere,
)
from tests.conftest import client_for, eventually, running

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


def _rows(settings, sql: str, *args: object) -> list[tuple]:
    db = sqlite3.connect(settings.store.path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


# == issue 13 item 7: a re-registration is checked like a new one ==============================

async def test_reregistering_a_stored_ticket_with_a_contradicting_symbol_or_direction_conflicts(
        settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        first = await c.register({"ticket": ticket, "symbol": "EURUSD", "direction": "BUY"})
        assert first["created"] is True
        for wrong, field, broker in (({"symbol": "GBPUSD"}, "symbol", "EURUSD"),
                                     ({"direction": "SELL"}, "direction", "BUY"),
                                     ({"magic": 4242}, "magic", 0)):
            with pytest.raises(Conflict) as err:
                await c.register({"ticket": ticket, **wrong}, verify=False)
            assert (err.value.code, err.value.details["field"], err.value.details["broker"]
                    ) == ("CONFLICT", field, broker)
        again = await c.register({"ticket": ticket, "symbol": "eurusd", "direction": "buy",
                                  "volume": 0.2})
        assert (again["created"], again["trade"]["state"]) == (False, "HEALTHY")
        assert again["adjusted"] == {"volume": {"given": 0.2, "broker": 0.1}}
        assert _sample(svc.metrics.registrations, "_total", result="conflict") == 3
        assert _sample(svc.metrics.registrations, "_total", result="existing") == 1
        # nothing stored changed: one row, one transition
        assert _rows(settings, "SELECT symbol, direction, volume FROM trades") == [
            ("EURUSD", "BUY", 0.1)]
        assert _rows(settings, "SELECT COUNT(*) FROM transitions") == [(1,)]
        # a closed ticket is checked against its stored record: the broker has no position
        sim.close_position_manually(ticket)
        await eventually(lambda: ticket not in svc.registry.trades)
        with pytest.raises(Conflict) as err:
            await c.register({"ticket": ticket, "direction": "SELL"}, verify=False)
        assert (err.value.details["field"], err.value.details["stored"],
                err.value.details["state"]) == ("direction", "BUY", "CLOSED")
        closed = await c.register({"ticket": ticket, "direction": "BUY"})
        assert (closed["created"], closed["trade"]["state"]) == (False, "CLOSED")
        assert ticket not in svc.registry.trades       # nothing is reopened


# == issue 13 item 9: ownership from the broker's facts ========================================

async def test_ownership_refusals_over_tcp_store_nothing(settings, sim):
    settings = settings.replace(registry={"owned_elsewhere_magics": (5150,)})
    ours = settings.broker.magic
    main = sim.open_position("EURUSD", "BUY", 0.10, magic=42)
    theirs = sim.open_position("EURUSD", "BUY", 0.10, magic=5150)
    hedge = sim.open_position("EURUSD", "SELL", 0.05, magic=ours, comment=f"DTMS:{main}:1")
    order = sim.open_position("EURUSD", "BUY", 0.05, magic=ours)
    tagged = sim.open_position("EURUSD", "SELL", 0.05, comment=f"DTMS:{main}:2")
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        with pytest.raises(OwnedElsewhere) as err:
            await c.register({"ticket": theirs})            # no owner, no strategy given
        assert (err.value.details["field"], err.value.details["magic"]) == ("magic", 5150)
        with pytest.raises(Conflict) as err:
            await c.register({"ticket": main, "magic": 43})
        assert (err.value.details["field"], err.value.details["given"],
                err.value.details["broker"]) == ("magic", 43, 42)
        with pytest.raises(DtmsPosition) as err:
            await c.register({"ticket": hedge})
        assert (err.value.code, err.value.details["hedge_of"]) == ("DTMS_POSITION", main)
        with pytest.raises(DtmsPosition) as err:
            await c.register({"ticket": order, "magic": ours})
        assert "hedge_of" not in err.value.details
        with pytest.raises(DtmsPosition) as err:
            await c.register({"ticket": tagged})
        assert err.value.details["hedge_of"] == main
        assert svc.registry.trades == {}
        assert _rows(settings, "SELECT COUNT(*) FROM trades") == [(0,)]
        # the same through register_batch: each item answered on its own
        out = await c.register_batch([{"ticket": t} for t in (theirs, hedge, order, main)]
                                     + [{"ticket": main, "magic": 1}])
        codes = [(r["ok"], r["error"]["code"] if not r["ok"] else r["created"])
                 for r in out["results"]]
        assert codes == [(False, "OWNED_ELSEWHERE"), (False, "DTMS_POSITION"),
                         (False, "DTMS_POSITION"), (True, True), (False, "CONFLICT")]
        assert out["results"][1]["error"]["hedge_of"] == main
        assert out["results"][1]["error"]["status"] == 409
        assert _rows(settings, "SELECT ticket, magic FROM trades") == [(main, 42)]
        assert _sample(svc.metrics.registrations, "_total", result="dtms_position") == 5


# == issue 13 item 8: the wire policy map over TCP =============================================

async def test_register_with_a_bad_policy_is_invalid_naming_the_key_and_stores_nothing(
        settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(settings, sim) as svc, client_for(svc, retries=1) as c:
        for policy, key, reason in (
                ({"partial_levels_r": [-1], "partial_fractions": [0.9]},
                 "policy.partial_levels_r", "each must be > 0, got -1.0"),
                ({"requote_retries": 2**63}, "policy.requote_retries",
                 f"must be in [0, 10], got {2**63}"),
                ({"l1_score": True}, "policy.l1_score", "expected a number, got bool True"),
                ({"breakeven_r": "1.5"}, "policy.breakeven_r",
                 "expected a number, got str '1.5'")):
            with pytest.raises(InvalidArgument) as err:
                await c.register({"ticket": ticket, "policy": policy})
            assert (err.value.details["field"], err.value.details["errors"]) == (
                key, {key: reason})
        out = await c.register_batch([{"ticket": ticket, "policy": {"partial_fractions": [1]}}])
        assert set(out["results"][0]["error"]["errors"]) == {
            "policy.partial_levels_r", "policy.partial_fractions"}
        assert svc.registry.trades == {}
        assert _rows(settings, "SELECT COUNT(*) FROM trades") == [(0,)]
        assert _sample(svc.metrics.registrations, "_total", result="invalid") == 5


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
