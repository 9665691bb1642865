"""The per-symbol market actor: price-level triggers, bar closes, gaps -- through a real DTMS."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.actors.market import SymbolMarket, WatchLevels
from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.config import Settings
from dtms.metrics import Metrics
from dtms.model import SymbolSpec, Tick
from tests.conftest import client_for, eventually, running
from tests.test_scenarios import START, journal, make_sim, play, position, settle

N = 40


async def _register_ladder(cl, sim) -> list[int]:
    """N BUYs at 1.08512 with 1 R = 100 points; trade i moves to breakeven at +10*i points."""
    tickets = []
    for i in range(1, N + 1):
        ticket = sim.open_position("EURUSD", "BUY", 0.01, sl=1.08412)
        await cl.register({"ticket": ticket, "policy": {"breakeven_r": round(0.1 * i, 1)}})
        tickets.append(ticket)
    return tickets


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


# -- a crossing while the trade is busy acting (issue 13, item 3) ------------------------------

def random_history_sim() -> SimTerminal:
    """EURUSD held at bid 1.08500 (ask 1.08512) at 08:00 on a random-walk history: an M5 ATR
    of about 6 points, so the trail runs; the test stays inside the first bar (no scoring)."""
    sim = SimTerminal(SimConfig(seed=11, history_days=3), clock=ManualClock(START))
    assert sim.initialize()
    sim.hold("EURUSD")
    return sim


def _row(path: str, ticket: int, prefix: str) -> dict | None:
    rows = [r for r in journal(path, ticket) if r["obligation"].startswith(prefix)]
    return rows[-1] if rows else None


async def _breakeven_in_flight_then(svc, sim, ticket: int, bids: list[float]) -> int:
    """+1 R (bid 1.08712): the breakeven request is sent and takes 1.5 s at the terminal;
    meanwhile the bid moves to ``bids[0]`` (read by the market as soon as the terminal is free
    again, while the trade is still settling its action), then along the rest, each tick read
    by the market before the next. Returns the market's tick count after the last: no tick
    comes after it."""
    path = svc.settings.store.path
    market = svc.market.symbols["EURUSD"]
    sim.set_latency(1.5, "order_send")
    sim.play("EURUSD", [1.08712], interval=1.0)
    await eventually(lambda: (_row(path, ticket, "sl:breakeven") or {}).get("status") == "sent")
    for bid in bids:
        sim.play("EURUSD", [bid], interval=1.0)
        await eventually(lambda b=bid: market.tick is not None and market.tick.bid == b)
    return market.ticks


@pytest.mark.anyio
@pytest.mark.parametrize("bids", [
    [1.08830],              # +1.59 R: past the trail's activation (1.5 R, bid 1.08812)
    [1.08830, 1.08760],     # past it, and back under it before the trade is free again
], ids=["crossed", "crossed-and-left"])
async def test_a_trail_level_crossed_while_breakeven_is_in_flight_is_trailed_without_another_tick(
        engine_settings, bids):
    sim = random_history_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08312)   # entry 1.08512, 1 R = 200
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        atr = svc.market.symbols["EURUSD"].signals.atr
        ticks = await _breakeven_in_flight_then(svc, sim, ticket, bids)
        await eventually(lambda: (_row(path, ticket, "sl:trail:") or {}).get("status") == "done",
                         timeout=20)
        desired = round(1.08830 - 2 * atr, 5)    # decided on the tick that crossed
        assert [(r["obligation"], r["status"], r["retcode"]) for r in journal(path, ticket)] == [
            ("sl:breakeven", "done", 10009), (f"sl:trail:{desired:.5f}", "done", 10009)]
        assert position(sim, ticket).sl == desired
        assert svc.market.symbols["EURUSD"].ticks == ticks   # no tick after the last


@pytest.mark.anyio
async def test_a_sell_level_is_met_by_a_tick_that_moves_only_the_ask(engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "SELL", 0.10, sl=1.08700)   # entry 1.08500, 1 R = 200
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await play(svc, sim, [1.08290])            # ask 1.08302: 1 R is an ask of 1.08300
        assert journal(path, ticket) == []
        market = svc.market.symbols["EURUSD"]
        seen = market.ticks
        sim.set_spread("EURUSD", 10)               # same time, same bid; the ask is 1.08300
        await eventually(lambda: market.ticks == seen + 1)
        await eventually(lambda: position(sim, ticket).sl == 1.08490)   # entry - 1 spread
        [row] = journal(path, ticket)
        assert (row["obligation"], row["status"], row["retcode"]) == ("sl:breakeven", "done",
                                                                       10009)


# -- property: a watch armed late still reports every crossing it missed ------------------------

class _Inbox:
    """Stands in for a trade actor: records what the market tells it."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def tell_nowait(self, event: Any) -> None:   # the market tells a trade without waiting
        self.events.append(event)


SPEC = SymbolSpec(name="EURUSD", digits=5, point=1e-5, volume_min=0.01, volume_max=100.0,
                  volume_step=0.01, stops_level=10, freeze_level=5, spread=12,
                  filling_mode=1, contract_size=100_000.0)
quotes = st.tuples(st.integers(-20, 20), st.integers(0, 6))   # bid offset, spread (points)


@settings(max_examples=200, deadline=None)
@given(st.lists(quotes, min_size=1, max_size=25), st.data())
def test_every_crossed_level_is_reported_whenever_the_watch_is_armed(ticks, data) -> None:
    """A trade decides on tick ``since`` and arms its watch when ``armed`` ticks have been
    read (it was busy in between). It is told exactly once, with the first tick after
    ``since`` whose bid (BUY) or ask (SELL) meets a level -- or never, if none does."""
    n = len(ticks)
    since = data.draw(st.integers(1, n), label="since")
    armed = data.draw(st.integers(since, n), label="armed")
    ask_side = data.draw(st.booleans(), label="sell")
    above = data.draw(st.none() | st.integers(-20, 20), label="above")
    below = data.draw(st.none() | st.integers(-20, 20), label="below")
    level = {k: None if v is None else round(1.08500 + v * 1e-5, 5)
             for k, v in (("above", above), ("below", below))}
    quotes_ = [Tick("EURUSD", 1000 + i, round(1.08500 + b * 1e-5, 5),
                    round(1.08500 + (b + s) * 1e-5, 5)) for i, (b, s) in enumerate(ticks)]

    def meets(t: Tick) -> bool:
        price = t.ask if ask_side else t.bid
        return ((level["above"] is not None and price >= level["above"])
                or (level["below"] is not None and price <= level["below"]))

    expected = next((i + 1 for i, t in enumerate(quotes_) if i + 1 > since and meets(t)), None)

    async def run() -> list[Any]:
        market = SymbolMarket("EURUSD", broker=None, settings=Settings(), metrics=Metrics())
        market.spec = SPEC
        inbox = _Inbox()
        market.subscribers[1] = inbox   # type: ignore[assignment]
        for i, t in enumerate(quotes_, start=1):
            if i == armed + 1:
                await market.handle(WatchLevels(1, ask=ask_side, since=since, **level))
            await market._on_tick(t, 0.0)
        if armed == n:
            await market.handle(WatchLevels(1, ask=ask_side, since=since, **level))
        return inbox.events

    events = anyio.run(run)
    if level["above"] is None and level["below"] is None:
        expected = None
    assert [e.view.seq for e in events] == ([] if expected is None else [expected])
    if expected is not None:
        assert events[0].view.tick == quotes_[expected - 1]
