"""The per-symbol market actor: price-level triggers, bar closes, gaps -- through a real DTMS."""

from __future__ import annotations

import pytest

from tests.conftest import client_for, eventually, running
from tests.test_scenarios import make_sim, play, position, settle

pytestmark = pytest.mark.anyio

N = 40


async def _register_ladder(cl, sim) -> list[int]:
    """N BUYs at 1.08512 with 1 R = 100 points; trade i moves to breakeven at +10*i points."""
    tickets = []
    for i in range(1, N + 1):
        ticket = sim.open_position("EURUSD", "BUY", 0.01, sl=1.08412)
        await cl.register({"ticket": ticket, "policy": {"breakeven_r": round(0.1 * i, 1)}})
        tickets.append(ticket)
    return tickets


async def test_a_tick_tells_only_the_trades_whose_levels_it_crossed(engine_settings):
    sim = make_sim()
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        tickets = await _register_ladder(cl, sim)
        await settle(svc, sim)
        market = svc.market.symbols["EURUSD"]
        assert len(market.index) == N and len(market.subscribers) == N
        before = market.events_sent
        await play(svc, sim, [1.08612])                 # +100 points: crosses levels 1..10
        assert market.events_sent - before == 10
        moved = [t for t in tickets if position(sim, t).sl == 1.08524]
        assert moved == tickets[:10]
        before = market.events_sent
        await play(svc, sim, [1.08613])                 # crosses nothing new
        assert market.events_sent - before == 0
        await play(svc, sim, [1.08652])                 # crosses 11..14
        assert market.events_sent - before == 4
        assert [t for t in tickets if position(sim, t).sl == 1.08524] == tickets[:14]


async def test_with_the_index_off_every_tick_goes_to_every_trade(engine_settings):
    sim = make_sim()
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        svc.market.broadcast_ticks = True
        await cl.register({"ticket": sim.open_position("GBPUSD", "BUY", 0.01)})  # other symbol
        tickets = await _register_ladder(cl, sim)
        await settle(svc, sim)
        market = svc.market.symbols["EURUSD"]
        assert market.broadcast_ticks is True
        before = market.events_sent
        await play(svc, sim, [1.08502, 1.08503, 1.08504])
        assert market.events_sent - before == 3 * N     # the baseline the index is measured by
        assert all(position(sim, t).sl == 1.08412 for t in tickets)


async def test_signals_are_computed_once_per_bar_close_for_all_trades(engine_settings):
    sim = make_sim()
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        tickets = await _register_ladder(cl, sim)
        await settle(svc, sim)
        market = svc.market.symbols["EURUSD"]
        assert market.bar_closes == 0
        # 08:00 -> 08:10 in 30 s ticks, rising a point a tick: two M5 bars close
        await play(svc, sim, [round(1.08500 + 0.00001 * i, 5) for i in range(1, 21)],
                   interval=30.0)
        assert market.bar_closes == 2
        scores = {(await cl.trade(t))["score"] for t in tickets}
        assert len(scores) == 1 and scores.pop() > 0    # one signal set, the same for all BUYs
        assert market.signals is not None and market.signals.time == sim.symbol_info_tick(
            "EURUSD").time // 300 * 300 - 300


async def test_a_gap_in_ticks_is_counted_and_the_bars_reloaded(engine_settings):
    sim = make_sim()
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": sim.open_position("EURUSD", "SELL", 0.01)})
        await settle(svc, sim)
        market = svc.market.symbols["EURUSD"]
        await play(svc, sim, [1.08501], interval=1200.0)   # 20 minutes without a tick
        assert svc.metrics.market_gaps.labels("EURUSD")._value.get() == 1
        assert market.bar_closes == 1
        assert market.signals.time == sim.symbol_info_tick("EURUSD").time // 300 * 300 - 300


async def test_a_paused_trade_is_watched_and_scored_but_not_acted_on(engine_settings):
    sim = make_sim()
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412)
        b = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08412)
        await cl.register({"ticket": a})
        await cl.register({"ticket": b})
        await settle(svc, sim)
        paused = await cl.pause()                       # all
        assert (paused["count"], sorted(paused["tickets"])) == (2, sorted([a, b]))
        # +1 R and two bar closes: scored, but no stop moves
        await play(svc, sim, [round(1.08500 + 0.00006 * i, 5) for i in range(1, 21)],
                   interval=30.0)
        assert position(sim, a).sl == position(sim, b).sl == 1.08412
        view = await cl.trade(a)
        assert view["paused"] is True and view["score"] > 0 and view["layers"]
        assert (await cl.actions(a))["actions"] == []
        await cl.resume(a)                              # one ticket: acts at once
        await eventually(lambda: position(sim, a).sl == 1.08524)
        await settle(svc, sim)
        assert position(sim, b).sl == 1.08412
        [row] = (await cl.actions(a))["actions"]
        assert (row["kind"], row["status"], row["retcode"]) == ("MODIFY_SL", "done", 10009)
