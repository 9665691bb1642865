"""A trade's open figures (price, open P/L, R) for the CLI and the web view: read from the
broker's position when asked for (``trade``/``trades`` with ``market: true``), never by default
(a client's verify-after-register reads every trade it registers)."""

from __future__ import annotations

import pytest

from dtms.policy.figures import open_figures
from tests.conftest import client_for, running
from tests.test_lifecycle import BUY, SELL, make_trade
from tests.test_scenarios import make_sim, play, settle

pytestmark = pytest.mark.anyio


def test_open_figures_are_the_positions_price_and_profit_and_r_from_the_initial_risk():
    from dtms.model import Position
    p = Position(ticket=7, symbol="EURUSD", direction=SELL, volume=1.0, price_open=1.1,
                 sl=1.11, tp=0.0, price_current=1.095, profit=500.0, magic=0, comment="",
                 time=0)
    assert open_figures(make_trade(SELL), p) == {"price": 1.095, "open_pl": 500.0,
                                                 "open_r": 0.5}
    assert open_figures(make_trade(BUY, initial_sl=0.0, sl=0.0), p)["open_r"] is None
    assert open_figures(make_trade(BUY), None) == {"price": None, "open_pl": None,
                                                   "open_r": None}


async def test_trade_and_trades_with_market_carry_the_open_figures(engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08312)   # entry 1.08512, 1 R 0.002
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await play(svc, sim, [1.08612])
        view = await cl.call("trade", {"ticket": ticket, "market": True})
        assert (view["price"], view["open_pl"], view["open_r"]) == (1.08612, 10.0, 0.5)
        listed = await cl.call("trades", {"market": True})
        assert (listed["trades"][0]["price"], listed["trades"][0]["open_r"]) == (1.08612, 0.5)
        assert "price" not in await cl.trade(ticket)
        assert "price" not in (await cl.trades())["trades"][0]
