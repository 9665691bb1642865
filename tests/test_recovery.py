"""Startup recovery, branch by branch (SPEC section 6): a restarted DTMS resumes every trade in
exactly its stored state and resolves every unresolved journal row against the broker before
it acts again. The terminal (a SimTerminal held across two Service runs) lives on, as a real one.

Journal rows left by a "crash" are written here the way DTMS writes them: the trade's obligation
``pending`` with ``action_seq``, and an ``actions`` row ``sent`` carrying its request (the
comment ``DTMS:<ticket>:<seq>`` is what the broker's deals are searched for).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from dtms.brokers.sim import constants as c
from tests.conftest import client_for, eventually, running
from tests.test_scenarios import (
    RISE,
    deals_of,
    journal,
    journal_results,
    make_sim,
    play,
    play_bars,
    position,
    settle,
)

pytestmark = pytest.mark.anyio
MAGIC = 770077


def crash_after_journaling(path: str, ticket: int, *, status: str, request: dict,
                           obligation: str = "partial:0", kind: str = "PARTIAL_CLOSE") -> None:
    """Leave the database as a DTMS killed between journaling an action and its result."""
    db = sqlite3.connect(path)
    db.execute("UPDATE trades SET action_seq = 1, obligations = ? WHERE ticket = ?",
               (json.dumps({obligation: "pending"}), ticket))
    db.execute("INSERT INTO actions (ticket, seq, kind, obligation, reason, status, created_at, "
               "request) VALUES (?, 1, ?, ?, 'test', ?, 1.0, ?)",
               (ticket, kind, obligation, status, json.dumps(request)))
    db.commit()
    db.close()


def partial_close(ticket: int, volume: float, bid: float) -> dict:
    return {"action": c.TRADE_ACTION_DEAL, "symbol": "EURUSD", "position": ticket,
            "type": c.ORDER_TYPE_SELL, "volume": volume, "price": bid, "deviation": 20,
            "magic": MAGIC, "comment": f"DTMS:{ticket}:1", "type_filling": c.ORDER_FILLING_FOK,
            "type_time": 0, "market_time": 1717401600}


async def ladder_trade(settings):
    """A BUY 0.10 at 1.08512 (1 R = 100 points), registered with a one-rung partial ladder
    (half at +1 R), then DTMS stopped."""
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412)
    async with running(settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {
            "breakeven_r": 5, "partial_levels_r": [1.0], "partial_fractions": [0.5]}})
    return sim, ticket


def executed_then_crashed(sim, path: str, ticket: int) -> None:
    """DTMS journaled and sent the partial close, the broker executed it, DTMS died."""
    request = partial_close(ticket, 0.05, 1.08500)
    crash_after_journaling(path, ticket, status="sent", request=request)
    assert sim.initialize()   # DTMS shut its connection down when it stopped
    assert sim.order_send({k: v for k, v in request.items() if k != "market_time"}
                          ).retcode == 10009


async def test_a_trade_resumes_in_warning_l2_with_its_timers_and_the_ladder_goes_on(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "SELL", 0.20, sl=1.09500)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await play_bars(svc, sim, RISE[:2], 1.08500)
        before = await cl.trade(ticket)
    assert (before["state"], before["volume"]) == ("WARNING_L2", 0.10)
    actions_before = journal(engine_settings.store.path, ticket)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await settle(svc, sim)
        after = await cl.trade(ticket)
        for key in ("state", "state_since", "flat_since", "score", "volume", "sl",
                    "obligations", "action_seq", "layers"):
            assert after[key] == before[key], key
        assert journal(engine_settings.store.path, ticket) == actions_before  # nothing redone
        await play_bars(svc, sim, RISE[2:], 1.0860)          # the next bad bar: hedged
        view = await cl.trade(ticket)
        assert (view["state"], view["flat_since"]) == ("HEDGED", before["flat_since"])
        assert position(sim, view["hedge_ticket"]).volume == 0.05


async def test_a_sent_action_found_done_at_the_broker_is_recorded_done_not_resent(
        engine_settings):
    sim, ticket = await ladder_trade(engine_settings)
    executed_then_crashed(sim, engine_settings.store.path, ticket)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await settle(svc, sim)
        view = await cl.trade(ticket)
        assert (view["volume"], view["obligations"]) == (0.05, {"partial:0": "done"})
        [row] = journal(engine_settings.store.path, ticket)
        assert row["status"] == "done"
        assert "executed" in journal_results(engine_settings.store.path, ticket)[0]
        await play(svc, sim, [1.08612, 1.08620])            # +1 R: the rung is already done
        exits = [d for d in deals_of(sim, ticket) if d.entry == c.DEAL_ENTRY_OUT]
        assert [(d.volume, d.comment) for d in exits] == [(0.05, f"DTMS:{ticket}:1")]
        assert len(journal(engine_settings.store.path, ticket)) == 1


async def test_a_sent_action_not_done_at_the_broker_is_failed_then_done_exactly_once(
        engine_settings):
    sim, ticket = await ladder_trade(engine_settings)
    crash_after_journaling(engine_settings.store.path, ticket, status="sent",
                           request=partial_close(ticket, 0.05, 1.08500))
    async with running(engine_settings, sim) as svc:
        await settle(svc, sim)
        [row] = journal(engine_settings.store.path, ticket)
        assert row["status"] == "failed"
        assert "not executed" in journal_results(engine_settings.store.path, ticket)[0]
        assert position(sim, ticket).volume == 0.10
        await play(svc, sim, [1.08612, 1.08613, 1.08614], interval=6.0)   # due again: once
        await eventually(lambda: position(sim, ticket).volume == 0.05)
        await play(svc, sim, [1.08615, 1.08616], interval=6.0)
        rows = journal(engine_settings.store.path, ticket)
        assert [(r["seq"], r["status"]) for r in rows] == [(1, "failed"), (2, "done")]
        assert len([d for d in deals_of(sim, ticket) if d.entry == c.DEAL_ENTRY_OUT]) == 1


async def test_a_journaled_action_never_sent_is_failed_without_asking_the_broker(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
    crash_after_journaling(engine_settings.store.path, ticket, status="pending", request={})
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await settle(svc, sim)
        [row] = journal(engine_settings.store.path, ticket)
        assert row["status"] == "failed"
        assert "never sent" in journal_results(engine_settings.store.path, ticket)[0]


async def test_a_broker_error_during_recovery_deletes_and_closes_nothing(engine_settings):
    sim, ticket = await ladder_trade(engine_settings)
    executed_then_crashed(sim, engine_settings.store.path, ticket)
    # the deal history cannot be read while DTMS recovers
    sim.fail_next(1000, "history_deals_get", error=(-1, "Terminal: Call failed"))
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await settle(svc, sim)
        view = await cl.trade(ticket)
        assert (view["state"], view["obligations"]) == ("HEALTHY", {"partial:0": "pending"})
        assert list(svc.registry.trades) == [ticket]      # not closed, not dropped, not guessed
        assert [r["status"] for r in journal(engine_settings.store.path, ticket)] == ["sent"]
        await play(svc, sim, [1.08612])                  # +1 R, but an action is unresolved
        assert len(journal(engine_settings.store.path, ticket)) == 1
        sim.faults.clear()                               # the broker answers again
        await play(svc, sim, [1.08613, 1.08614, 1.08615], interval=6.0)
        await eventually(lambda: journal(engine_settings.store.path, ticket)[0]["status"]
                         == "done")
        view = await cl.trade(ticket)
        assert (view["volume"], view["obligations"]) == (0.05, {"partial:0": "done"})
        assert len([d for d in deals_of(sim, ticket) if d.entry == c.DEAL_ENTRY_OUT]) == 1


async def test_an_unknown_position_with_our_magic_is_reported_and_adopted_only_if_configured(
        engine_settings):
    sim = make_sim()
    stray = sim.open_position("EURUSD", "BUY", 0.10, magic=MAGIC, comment="left over")
    mine = sim.open_position("EURUSD", "SELL", 0.10)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": mine})
        status = await eventually(lambda: _status_with_unknown(cl))
        assert status["unknown_positions"] == [stray]
        assert svc.metrics.unknown_positions._value.get() == 1
        assert [t["ticket"] for t in (await cl.trades())["trades"]] == [mine]
    adopting = engine_settings.replace(recovery={"adopt_unknown": True})
    async with running(adopting, sim) as svc, client_for(svc) as cl:
        view = await eventually(lambda: _trade_or_none(cl, stray))
        assert (view["owner"], view["state"], view["volume"]) == ("dtms-adopted", "HEALTHY", 0.10)
        await eventually(lambda: svc.watcher.unknown == [])


async def _status_with_unknown(cl) -> dict | None:
    status = await cl.status()
    return status if status["unknown_positions"] else None


async def _trade_or_none(cl, ticket: int) -> dict | None:
    from dtms.errors import NotFound
    try:
        return await cl.trade(ticket)
    except NotFound:
        return None


async def test_a_stored_trade_whose_policy_this_version_refuses_is_managed_with_the_configured_values(
        engine_settings, caplog):
    """A policy stored under the looser rules before issue 13 (numbers as strings, a negative
    rung) must not leave the trade unmanaged (crash -> SUSPENDED): the refused keys fall back to
    the configured values, the valid ones stay, and the log names what was dropped."""
    sim, ticket = await ladder_trade(engine_settings)
    db = sqlite3.connect(engine_settings.store.path)
    db.execute("UPDATE trades SET policy = ? WHERE ticket = ?", (json.dumps(
        {"breakeven_r": "1.5", "partial_levels_r": [-1], "partial_fractions": [0.9],
         "trail_atr_mult": 3}), ticket))
    db.commit()
    db.close()
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await settle(svc, sim)
        view = await cl.trade(ticket)
        assert view["state"] == "HEALTHY"   # not SUSPENDED by a crash loop
        assert (await cl.call("restarts", {"kind": "trade"}))["restarts"] == []
        actor = svc.registry.trades[ticket]
        assert (actor.policy.breakeven_r, actor.policy.partial_levels_r,
                actor.policy.trail_atr_mult) == (1.0, (), 3.0)
    dropped = [r for r in caplog.records if "stored policy keys refused" in r.getMessage()]
    assert dropped and "policy.breakeven_r" in dropped[0].getMessage()
