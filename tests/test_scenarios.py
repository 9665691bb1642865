"""Scenarios of the defensive engine on the simulated terminal, with scripted price paths.

Each test drives one symbol along an exact path (``SimTerminal.play``; the symbol is held, so
the price never moves on its own), lets DTMS react through the real stack -- market actor,
trade actor, policy, execution, broker actor, MT5 adapter, store -- and asserts the exact
levels, volumes and retcodes at the broker and in the journal. The history before the start
is flat, so every indicator the scores use comes from the scripted bars.

``SCENARIO_PNL`` collects each scenario's final P&L; ``test_zz_scenario_table`` prints it.
"""

from __future__ import annotations

import sqlite3
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
NEUTRAL = {"asia": 1.0, "london": 1.0, "overlap": 1.0, "newyork": 1.0, "late": 1.0}


def make_sim(netting: bool = False) -> SimTerminal:
    mode = (c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING if netting
            else c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING)
    sim = SimTerminal(SimConfig(seed=11, history_mode="flat", history_days=3, margin_mode=mode),
                      clock=ManualClock(START))
    assert sim.initialize()  # the test reads positions through the API too
    sim.hold("EURUSD")
    return sim


@pytest.fixture
def engine_settings(settings):
    # regime multipliers at 1 so the thresholds are exactly the policy's; fast polls
    return settings.replace(market={"tick_poll_s": 0.01},
                            signals={"session_multipliers": NEUTRAL,
                                     "volatility_multipliers": {"low": 1, "normal": 1, "high": 1}})


def journal(path: str, ticket: int) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute(
        "SELECT seq, kind, obligation, status, retcode, request FROM actions WHERE ticket = ? "
        "ORDER BY seq", (ticket,))]
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
                and market.mailbox_depth == 0
                and all(t.mailbox_depth == 0 for t in svc.registry.trades.values()))
    await eventually(caught_up, timeout=10)
    await eventually(lambda: all(t.mailbox_depth == 0 for t in svc.registry.trades.values()))


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
