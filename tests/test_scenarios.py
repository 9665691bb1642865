"""Scenarios of the defensive engine on the simulated terminal, with scripted price paths.

Each test drives one symbol along an exact path (``SimTerminal.play``; the symbol is held, so
the price never moves on its own), lets DTMS react through the real stack -- market actor,
trade actor, policy, execution, broker actor, MT5 adapter, store -- and asserts the exact
levels, volumes and retcodes at the broker and in the journal. The history before the start
is flat, so every indicator the scores use comes from the scripted bars.

``SCENARIO_PNL`` collects each scenario's final P&L; ``test_zz_scenario_table`` prints it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.brokers.sim import constants as c
from dtms.brokers.sim.prices import linear_path
from dtms.policy.indicators import atr
from tests.conftest import client_for, eventually, running

pytestmark = pytest.mark.anyio

#: Monday 2024-06-03 08:00 UTC: the London session
START = datetime(2024, 6, 3, 8, 0, tzinfo=UTC).timestamp()
SCENARIO_PNL: dict[str, float] = {}


def make_sim(netting: bool = False) -> SimTerminal:
    mode = (c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING if netting
            else c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING)
    sim = SimTerminal(SimConfig(seed=11, history_mode="flat", history_days=3, margin_mode=mode),
                      clock=ManualClock(START))
    assert sim.initialize()  # the test reads positions through the API too
    sim.hold("EURUSD")
    return sim


def journal(path: str, ticket: int) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute(
        "SELECT seq, kind, obligation, status, retcode, request FROM actions WHERE ticket = ? "
        "ORDER BY seq", (ticket,))]
    db.close()
    return rows


def journal_results(path: str, ticket: int) -> list[str]:
    db = sqlite3.connect(path)
    rows = [r[0] for r in db.execute("SELECT result FROM actions WHERE ticket = ? ORDER BY seq",
                                     (ticket,))]
    db.close()
    return rows


def position(sim: SimTerminal, ticket: int) -> Any:
    found = sim.positions_get(ticket=ticket)
    return found[0] if found else None


async def settle(svc, sim: SimTerminal, symbol: str = "EURUSD") -> None:
    """Wait until DTMS has seen the terminal's latest tick and every trade has handled it."""
    now = sim.symbol_info_tick(symbol).time

    def caught_up() -> bool:
        market = svc.market.symbols.get(symbol)
        return (market is not None and market.tick is not None and market.tick.time == now
                and market.idle and all(t.idle for t in svc.registry.trades.values()))
    await eventually(caught_up, timeout=10)


async def play(svc, sim: SimTerminal, bids: list[float], interval: float = 10.0,
               symbol: str = "EURUSD") -> None:
    """Play the path one tick at a time, letting DTMS see each tick before the next."""
    for bid in bids:
        sim.play(symbol, [bid], interval=interval)
        await settle(svc, sim, symbol)


def closed_bars(sim: SimTerminal, symbol: str = "EURUSD", count: int = 300) -> list[tuple]:
    rows = sim.copy_rates_from_pos(symbol, c.TIMEFRAME_M5, 1, count)
    return [tuple(r) for r in rows]


async def test_winning_buy_breakeven_then_trailed_then_closed_by_its_trailing_stop(
        engine_settings, tmp_path):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08312, tp=0.0)
    entry = position(sim, ticket).price_open
    assert entry == 1.08512  # bid 1.08500 + 12 points of spread
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "owner": "scenario"})
        await settle(svc, sim)
        # 1 R = 0.00200. At +1 R (bid 1.08712) the stop goes to entry + one spread.
        await play(svc, sim, linear_path(1.08500, 1.08700, 4, 5))
        assert position(sim, ticket).sl == 1.08312        # not yet
        await play(svc, sim, [1.08712])
        await eventually(lambda: position(sim, ticket).sl == 1.08524)
        rows = journal(engine_settings.store.path, ticket)
        assert [(r["kind"], r["obligation"], r["status"], r["retcode"]) for r in rows] == [
            ("MODIFY_SL", "sl:breakeven", "done", 10009)]

        # the rise goes on across bar closes; from +1.5 R (1.08812) the stop trails 2 ATR
        await play(svc, sim, linear_path(1.08712, 1.08950, 34, 5), interval=30.0)
        trail = [r for r in journal(engine_settings.store.path, ticket)
                 if r["obligation"].startswith("sl:trail:")]
        assert trail and all(r["status"] == "done" and r["retcode"] == 10009 for r in trail)
        sl = position(sim, ticket).sl
        a = atr([b[2] for b in closed_bars(sim)], [b[3] for b in closed_bars(sim)],
                [b[4] for b in closed_bars(sim)], 14)[-1]
        assert sl > 1.08524
        assert sl == pytest.approx(round(sim.symbol_info_tick("EURUSD").bid - 2 * a, 5),
                                   abs=10 * 1e-5 + 1e-9)   # within one trail step of 2 ATR
        # the price turns and falls point by point into the stop: closed at exactly the stop
        await play(svc, sim, linear_path(1.08950, sl - 0.00005, 40, 5), interval=5.0)
        await eventually(lambda: position(sim, ticket) is None)
        view = await eventually(lambda: _closed(cl, ticket))
        assert (view["state"], view["close_reason"], view["close_price"]) == ("CLOSED", "SL", sl)
        assert view["profit"] == round((sl - entry) * 0.10 * 100_000, 2)
        SCENARIO_PNL["winning BUY: breakeven, trail, trailing stop"] = view["profit"]


async def _closed(cl, ticket: int) -> dict | None:
    view = await cl.trade(ticket)
    return view if view["state"] == "CLOSED" else None


def deals_of(sim: SimTerminal, ticket: int) -> list[Any]:
    return list(sim.history_deals_get(position=ticket) or ())


async def test_sl_inside_the_stops_level_is_adjusted_to_the_nearest_allowed_price(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412)   # 1 R = 100 points
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        # breakeven at +0.05 R (bid 1.08517) with no buffer: SL 1.08512 would be 5 points
        # from the bid; the server needs more than stops_level (10) points
        await cl.register({"ticket": ticket,
                           "policy": {"breakeven_r": 0.05, "breakeven_buffer_spreads": 0}})
        await settle(svc, sim)
        await play(svc, sim, [1.08510, 1.08517])
        await eventually(lambda: position(sim, ticket).sl != 1.08412)
        assert position(sim, ticket).sl == 1.08506          # bid 1.08517 - 11 points
        [row] = journal(engine_settings.store.path, ticket)
        assert (row["obligation"], row["status"], row["retcode"]) == ("sl:breakeven", "done",
                                                                      10009)
        assert "stops_level" in row["request"] and '"sl": 1.08506' in row["request"]
        SCENARIO_PNL["BUY: SL adjusted to the stops level (open)"] = pnl(sim, ticket)


async def test_sl_change_inside_the_freeze_band_is_deferred_until_the_price_leaves_it(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412, tp=1.08540)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket,
                           "policy": {"breakeven_r": 0.1, "breakeven_buffer_spreads": 0}})
        await settle(svc, sim)
        # bid 1.08536: breakeven is due (+0.24 R) but the TP is 4 points away, inside the
        # freeze band (5): the server would answer 10029, so nothing is sent
        await play(svc, sim, [1.08536])
        [row] = journal(engine_settings.store.path, ticket)
        assert (row["obligation"], row["status"], row["request"]) == ("sl:breakeven",
                                                                      "deferred", "{}")
        assert position(sim, ticket).sl == 1.08412
        await play(svc, sim, [1.08534, 1.08531])           # still too close to the TP
        assert [r["status"] for r in journal(engine_settings.store.path, ticket)] == [
            "deferred"]
        await play(svc, sim, [1.08528])                     # out of the band: sent at once
        await eventually(lambda: position(sim, ticket).sl == 1.08512)
        rows = journal(engine_settings.store.path, ticket)
        assert [(r["status"], r["retcode"]) for r in rows] == [("deferred", 0), ("done", 10009)]
        assert position(sim, ticket).tp == 1.08540          # the TP is kept
        SCENARIO_PNL["BUY: SL deferred in the freeze band (open)"] = pnl(sim, ticket)


async def test_a_requote_is_retried_with_a_fresh_price(engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {
            "breakeven_r": 5, "partial_levels_r": [1.0], "partial_fractions": [0.5]}})
        await settle(svc, sim)
        # the market jumps 50 points between the decision and the send: beyond the deviation
        sim.move_before_next_order("EURUSD", 1.08562)
        await play(svc, sim, [1.08612])                     # +1 R: take half
        await eventually(lambda: position(sim, ticket).volume == 0.05)
        [row] = journal(engine_settings.store.path, ticket)
        assert (row["kind"], row["status"], row["retcode"]) == ("PARTIAL_CLOSE", "done", 10009)
        assert '"price": 1.08562' in row["request"]          # the fresh price, not 1.08612
        exits = [d for d in deals_of(sim, ticket) if d.entry == c.DEAL_ENTRY_OUT]
        assert [(d.volume, d.price, d.magic) for d in exits] == [(0.05, 1.08562, 770077)]
        assert svc.metrics.actions.labels("PARTIAL_CLOSE", "retry")._value.get() == 1
        SCENARIO_PNL["BUY: requoted partial close (open)"] = pnl(sim, ticket)


async def test_order_send_returning_none_is_reconciled_and_never_resent_blindly(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {
            "breakeven_r": 5, "partial_levels_r": [1.0, 2.0], "partial_fractions": [0.3, 0.3]}})
        await settle(svc, sim)
        # rung 1: order_send executes at the server but the terminal answers 10012 (timeout)
        sim.uncertain_next_order()
        await play(svc, sim, [1.08612])
        await eventually(lambda: journal(engine_settings.store.path, ticket)[0]["status"]
                         == "done")
        [row] = journal(engine_settings.store.path, ticket)
        assert (row["obligation"], row["retcode"]) == ("partial:0", 10012)
        assert position(sim, ticket).volume == 0.07         # executed once, found, not resent
        # rung 2: order_send returns None and nothing reached the server
        sim.fail_next(1, "order_send")
        await play(svc, sim, [1.08712])
        assert position(sim, ticket).volume == 0.07
        # the terminal link is checked again, the journal row is reconciled (not executed),
        # and the rung is offered again after retry_after_s of market time: sent once more
        await play(svc, sim, [1.08713, 1.08714, 1.08715, 1.08716], interval=6.0)
        await eventually(lambda: position(sim, ticket).volume == 0.04)
        await play(svc, sim, [1.08717, 1.08718], interval=6.0)
        rows = journal(engine_settings.store.path, ticket)
        assert [(r["obligation"], r["status"]) for r in rows] == [
            ("partial:0", "done"), ("partial:1", "failed"), ("partial:1", "done")]
        assert "not executed" in str(journal_results(engine_settings.store.path, ticket)[1])
        exits = [d for d in deals_of(sim, ticket) if d.entry == c.DEAL_ENTRY_OUT]
        assert [d.volume for d in exits] == [0.03, 0.03]
        SCENARIO_PNL["BUY: uncertain and None order_send (open)"] = pnl(sim, ticket)


async def test_a_stop_moved_outside_dtms_is_respected_and_never_loosened(engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08312)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await play(svc, sim, [1.08650])
        # another manager tightens the stop past DTMS's breakeven level
        r = sim.order_send({"action": c.TRADE_ACTION_SLTP, "position": ticket,
                            "symbol": "EURUSD", "sl": 1.08600, "tp": 0.0})
        assert r.retcode == 10009
        await eventually(lambda: _adopted(svc, ticket, 1.08600))
        await play(svc, sim, [1.08712, 1.08720])          # breakeven due: 1.08524 < 1.08600
        assert position(sim, ticket).sl == 1.08600
        rows = journal(engine_settings.store.path, ticket)
        assert all(r["request"] == "{}" for r in rows)      # nothing was ever sent
        view = await cl.trade(ticket)
        assert (view["sl"], view["obligations"]) == (1.08600, {"sl:breakeven": "skipped"})
        SCENARIO_PNL["BUY: external SL respected (open)"] = pnl(sim, ticket)


def _adopted(svc, ticket: int, sl: float) -> bool:
    actor = svc.registry.trades.get(ticket)
    return actor is not None and actor.trade.sl == sl


def pnl(sim: SimTerminal, *tickets: int) -> float:
    """Realised (every exit deal) plus floating (every open position) profit."""
    total = 0.0
    for t in tickets:
        if not t:
            continue
        total += sum(d.profit for d in deals_of(sim, t) if d.entry != c.DEAL_ENTRY_IN)
        p = position(sim, t)
        total += p.profit if p else 0.0
    return round(total, 2)


#: closes of consecutive M5 bars (10 ticks of 30 s each): up three bars against a SELL, then a
#: range with a swing low on M15 at 1.0860, then a close below it and a fall
RISE = [1.0855, 1.0860, 1.0865]
RANGE_THEN_BREAK = [1.0868, 1.0870, 1.0867, 1.0872, 1.0869, 1.0866, 1.0862, 1.0860, 1.0863,
                    1.0866, 1.0868, 1.0865, 1.0867, 1.0869, 1.0866, 1.0862, 1.0858, 1.0855]
FALL = [1.0852, 1.0849, 1.0846, 1.0843, 1.0840, 1.0837]


async def play_bars(svc, sim: SimTerminal, closes: list[float], start: float) -> float:
    bid = start
    for close in closes:
        path = linear_path(bid, close, 10, 5)
        await play(svc, sim, path, interval=30.0)
        bid = close
    return bid


async def walk_down_the_ladder(svc, sim, cl, ticket: int, path: str) -> None:
    """SELL 0.20 at 1.08500, SL 1.09500 (1 R = 0.01), against a rising market."""
    await play_bars(svc, sim, RISE[:1], 1.08500)
    v = await cl.trade(ticket)
    # WARNING_L1 at the first bar close: SL to 0.3 R behind the ask (1.08550 + 12 points)
    assert (v["state"], v["sl"], v["defensive"]) == ("WARNING_L1", 1.08862, True)
    assert position(sim, ticket).sl == 1.08862
    await play_bars(svc, sim, RISE[1:2], 1.0855)
    v = await cl.trade(ticket)
    # WARNING_L2: half closed; a breakeven stop has no room on a losing SELL, so none is sent
    assert (v["state"], v["volume"]) == ("WARNING_L2", 0.10)
    assert position(sim, ticket).volume == 0.10
    await play_bars(svc, sim, RISE[2:], 1.0860)
    assert (await cl.trade(ticket))["state"] == "HEDGED"
    rows = journal(path, ticket)
    assert [(r["kind"], r["obligation"], r["status"], r["retcode"]) for r in rows] == [
        ("MODIFY_SL", "sl:L1", "done", 10009), ("PARTIAL_CLOSE", "L2:partial", "done", 10009),
        ("HEDGE", "hedge", "done", 10009)]


async def test_losing_sell_walks_the_ladder_to_hedged_and_the_flat_timer_closes_both(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "SELL", 0.20, sl=1.09500)
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await walk_down_the_ladder(svc, sim, cl, ticket, path)
        v = await cl.trade(ticket)
        hedge = position(sim, v["hedge_ticket"])
        assert (hedge.type, hedge.volume, hedge.magic) == (c.POSITION_TYPE_BUY, 0.05, 770077)
        assert v["hedge_volume"] == 0.05
        assert svc.watcher.unknown == []                   # the hedge is known, not "unknown"
        # the market goes flat; 75 min after WARNING_L1 (08:05) both positions are closed
        await play(svc, sim, [1.0865] * 60, interval=60.0)  # 08:15 -> 09:15
        assert position(sim, ticket) is not None
        await play(svc, sim, [1.0865] * 6, interval=60.0)   # -> 09:21
        await eventually(lambda: position(sim, ticket) is None)
        assert position(sim, hedge.ticket) is None
        view = await eventually(lambda: _closed(cl, ticket))
        assert (view["close_reason"], view["close_price"]) == ("FLAT_TIMER", 1.08662)
        kinds = [(r["kind"], r["status"]) for r in journal(path, ticket)][3:]
        assert sorted(kinds) == [("CLOSE", "done"), ("CLOSE_HEDGE", "done")]
        rows = (await cl.transitions(ticket))["transitions"]
        transitions = [(t["from_state"], t["to_state"]) for t in rows]
        assert transitions == [("", "HEALTHY"), ("HEALTHY", "WARNING_L1"),
                               ("WARNING_L1", "WARNING_L2"), ("WARNING_L2", "HEDGED"),
                               ("HEDGED", "CLOSED")]
        assert rows[-1]["reason"] == ("closed by DTMS: FLAT_TIMER "
                                      "(flat timer 75 min elapsed while hedged)")
        SCENARIO_PNL["losing SELL: L1, L2, hedged, flat timer"] = pnl(sim, ticket, hedge.ticket)


@asynccontextmanager
async def hedged_sell(settings) -> AsyncIterator[tuple[SimTerminal, Any, Any, int, int]]:
    """A SELL 0.20 walked down the ladder to HEDGED, with a flat timer long enough (240 min)
    for what a test plays next: (sim, service, client, ticket, hedge ticket)."""
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "SELL", 0.20, sl=1.09500)
    async with running(settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {"flat_timer_min": 240}})
        await settle(svc, sim)
        await walk_down_the_ladder(svc, sim, cl, ticket, settings.store.path)
        yield sim, svc, cl, ticket, (await cl.trade(ticket))["hedge_ticket"]


async def test_a_hedged_trade_recovers_to_healthy_when_structure_resumes_its_direction(
        engine_settings):
    async with hedged_sell(engine_settings) as (sim, svc, cl, ticket, hedge_ticket):
        await play_bars(svc, sim, RANGE_THEN_BREAK[:-1], 1.0865)
        assert (await cl.trade(ticket))["state"] == "HEDGED"    # no break of structure yet
        await play_bars(svc, sim, RANGE_THEN_BREAK[-1:], 1.0858)
        # the M15 close below the 1.0860 swing low: structure resumes the SELL's direction
        v = await cl.trade(ticket)
        assert (v["state"], v["hedge_ticket"]) == ("RECOVERING", 0)
        assert position(sim, hedge_ticket) is None
        await play_bars(svc, sim, FALL[:5], 1.0855)              # 25 min: still recovering
        assert (await cl.trade(ticket))["state"] == "RECOVERING"
        await play_bars(svc, sim, FALL[5:], 1.0840)              # 30 min, score >= +1
        v = await cl.trade(ticket)
        assert (v["state"], v["defensive"], v["volume"]) == ("HEALTHY", False, 0.10)
        assert v["score"] >= 1.0
        assert position(sim, ticket).volume == 0.10
        transitions = [(t["from_state"], t["to_state"]) for t in
                       (await cl.transitions(ticket))["transitions"]][3:]
        assert transitions == [("WARNING_L2", "HEDGED"), ("HEDGED", "RECOVERING"),
                               ("RECOVERING", "HEALTHY")]
        SCENARIO_PNL["SELL hedged, then recovers to HEALTHY"] = pnl(sim, ticket, hedge_ticket)


async def test_on_a_netting_account_the_hedge_is_a_reduction(engine_settings):
    sim = make_sim(netting=True)
    ticket = sim.open_position("EURUSD", "SELL", 0.20, sl=1.09500)
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await walk_down_the_ladder(svc, sim, cl, ticket, path)
        v = await cl.trade(ticket)
        assert (v["state"], v["volume"], v["hedge_ticket"]) == ("HEDGED", 0.05, 0)
        assert [p.ticket for p in sim.positions_get()] == [ticket]   # no opposite position
        assert position(sim, ticket).volume == 0.05
        exits = [d for d in deals_of(sim, ticket) if d.entry == c.DEAL_ENTRY_OUT]
        assert [d.volume for d in exits] == [0.10, 0.05]
        SCENARIO_PNL["SELL on netting: L2 then reduced"] = pnl(sim, ticket)


async def test_a_hedge_left_by_a_closed_trade_is_closed_at_a_fresh_price_not_the_last_seen(
        engine_settings):
    async with hedged_sell(engine_settings) as (sim, svc, cl, ticket, hedge_ticket):
        last_seen = svc.registry.trades[ticket].view.tick
        # HEDGED watches only its timer: the trade is told no tick while the bid climbs 60
        # points (three times the request's deviation) inside one bar
        await play(svc, sim, linear_path(1.0865, 1.0871, 6, 5), interval=5.0)
        assert svc.registry.trades[ticket].view.tick == last_seen
        sim.close_position_manually(ticket)
        await eventually(lambda: position(sim, hedge_ticket) is None)
        view = await eventually(lambda: _closed(cl, ticket))
        assert view["close_reason"] == "MANUAL"
        [row] = [r for r in journal(engine_settings.store.path, ticket)
                 if r["kind"] == "CLOSE_HEDGE"]
        assert (row["status"], row["retcode"]) == ("done", 10009)
        request = json.loads(row["request"])
        assert (request["price"], request["market_time"]) == (
            1.0871, sim.symbol_info_tick("EURUSD").time)            # the bid it closed at
        assert svc.metrics.actions.labels("CLOSE_HEDGE", "retry")._value.get() == 0  # no requote
        [exit_deal] = [d for d in deals_of(sim, hedge_ticket) if d.entry == c.DEAL_ENTRY_OUT]
        assert exit_deal.price == 1.0871


async def test_a_reconnect_to_a_netting_account_makes_the_next_hedge_a_reduction(
        engine_settings):
    sim = make_sim()                                     # hedging
    ticket = sim.open_position("EURUSD", "SELL", 0.20, sl=1.09500)
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await play_bars(svc, sim, RISE[:2], 1.08500)
        assert (await cl.trade(ticket))["state"] == "WARNING_L2"
        assert svc.market.symbols["EURUSD"].hedging is True
        # the terminal drops the link and comes back logged in to a netting account
        sim.disconnect()
        sim.set_account_mode(c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING)
        await eventually(lambda: svc.broker.connected and not svc.broker.account.hedging)
        await play_bars(svc, sim, RISE[2:], 1.0860)
        v = await cl.trade(ticket)
        assert (v["state"], v["volume"], v["hedge_ticket"]) == ("HEDGED", 0.05, 0)
        assert [p.ticket for p in sim.positions_get()] == [ticket]   # no opposite position
        [row] = [r for r in journal(path, ticket) if r["kind"] == "HEDGE"]
        assert (row["obligation"], row["status"], row["retcode"]) == ("hedge", "done", 10009)
        assert json.loads(row["request"])["position"] == ticket      # a close of part of it
        assert [d.volume for d in deals_of(sim, ticket) if d.entry == c.DEAL_ENTRY_OUT] == [
            0.10, 0.05]
        [t] = [t for t in (await cl.transitions(ticket))["transitions"]
               if t["to_state"] == "HEDGED"]
        assert t["reason"].startswith("score")
        assert (await cl.actions(ticket))["actions"][0]["reason"] == (
            "hedged: reduce (netting account) 0.5x volume")


async def test_a_trade_closed_by_its_time_stop_is_closed_as_time_stop(engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08312)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {"time_stop_min": 1}})
        await settle(svc, sim)
        await play(svc, sim, [1.08500, 1.08500], interval=31.0)     # 62 s after the open
        view = await eventually(lambda: _closed(cl, ticket))
        assert (view["close_reason"], view["close_price"]) == ("TIME_STOP", 1.085)
        [t] = [t for t in (await cl.transitions(ticket))["transitions"]
               if t["to_state"] == "CLOSED"]
        assert t["reason"] == "closed by DTMS: TIME_STOP (time stop: open 1 min)"
        assert svc.metrics.trades_closed.labels("TIME_STOP")._value.get() == 1
        assert svc.metrics.trades_closed.labels("DTMS")._value.get() == 0
