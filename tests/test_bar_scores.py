"""A bar close through a real DTMS: scored once per (symbol, direction), stored in one write.

The market actor computes each direction's score once per bar close and tells the store one
``PutScores`` for all of the symbol's trades; a trade whose only change is its score writes no
row of its own. These tests count what reaches the database (``write_batch``'s messages) and
how often the pure ``trade_score`` runs, and read the rows back -- over the rpc, from the file,
and after a restart.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from typing import Any

import pytest

from dtms.actors import store as store_module
from dtms.actors.store import PutScores, PutTrade, PutTrades
from dtms.model import Direction
from dtms.policy import signals
from dtms.policy.lifecycle import stored_score
from dtms.policy.signals import ScoringError
from tests.conftest import client_for, running
from tests.test_scenarios import make_sim, play, settle

pytestmark = pytest.mark.anyio

BUY, SELL = Direction.BUY, Direction.SELL
#: thresholds no bar of these tests reaches: the trade only takes the score
CALM = {"l1_score": -8.0, "l2_score": -9.0, "hedge_score": -10.0}


def spy_scores(monkeypatch: pytest.MonkeyPatch, score: Any = signals.trade_score) -> Counter:
    """Count ``trade_score`` calls by direction, wherever DTMS calls it from."""
    calls: Counter = Counter()

    def spy(sig: Any, direction: Any) -> Any:
        calls[Direction(direction)] += 1
        return score(sig, direction)
    for where in ("dtms.actors.market", "dtms.actors.trade"):
        monkeypatch.setattr(f"{where}.trade_score", spy, raising=False)
    return calls


def spy_writes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every write message the store commits, in order."""
    written: list[Any] = []
    real = store_module.write_batch

    def spy(conn: Any, messages: list[Any]) -> int:
        written.extend(messages)
        return real(conn, messages)
    monkeypatch.setattr(store_module, "write_batch", spy)
    return written


def trade_rows(written: list[Any]) -> list[int]:
    """Tickets of the trade rows written (PutTrade, alone or in a PutTrades)."""
    return [put.trade.ticket for msg in written if isinstance(msg, PutTrade | PutTrades)
            for put in (msg.puts if isinstance(msg, PutTrades) else (msg,))]


def stored(path: str) -> dict[int, tuple[float, str, str]]:
    """ticket -> (score, layers JSON, state), read from the file."""
    db = sqlite3.connect(path)
    rows = {r[0]: (r[1], r[2], r[3])
            for r in db.execute("SELECT ticket, score, layers, state FROM trades")}
    db.close()
    return rows


async def register(cl: Any, sim: Any, directions: list[str], **fields: Any
                   ) -> dict[int, Direction]:
    tickets = {}
    for d in directions:
        ticket = sim.open_position("EURUSD", d, 0.01)
        await cl.register({"ticket": ticket, **fields})
        tickets[ticket] = Direction(d)
    return tickets


async def bars(svc: Any, sim: Any, n: int = 1) -> None:
    """From 08:00, n M5 bars rising a point every 30 s: the last tick closes the n-th bar."""
    bid = sim.symbol_info_tick("EURUSD").bid
    await play(svc, sim, [round(bid + 0.00001 * i, 5) for i in range(1, 10 * n + 1)],
               interval=30.0)


async def test_a_bar_close_scores_each_direction_once_and_writes_no_trade_row(
        engine_settings, monkeypatch):
    sim = make_sim()
    calls, written = spy_scores(monkeypatch), spy_writes(monkeypatch)
    # no broker-side floor (issue 15): it would attach a stop to these naked positions at
    # the first bar close with an ATR, a write of its own
    engine_settings = engine_settings.replace(policy={"attach_sl_atr": 0.0})
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        tickets = await register(cl, sim, ["BUY", "BUY", "BUY"])
        # the bar rises 10 points: -4.43 for a SELL, past the default L1 (-2) and L2 (-4)
        tickets |= await register(cl, sim, ["SELL", "SELL"], policy=CALM)
        await settle(svc, sim)
        market = svc.market.symbols["EURUSD"]
        calls.clear()
        written.clear()
        await bars(svc, sim)
        assert market.bar_closes == 1
        assert calls == {BUY: 1, SELL: 1}                 # not once per trade
        views = {t: await cl.trade(t) for t in tickets}   # read after the bar's commit
        assert trade_rows(written) == []                  # nothing but the score changed
        bar = {d: stored_score(market.scores[d]) for d in (BUY, SELL)}
        assert [m for m in written if isinstance(m, PutScores)] == [PutScores("EURUSD", bar)]
        assert bar[BUY][0] != 0.0 and bar[SELL][0] == -bar[BUY][0]
        rows = stored(engine_settings.store.path)
        for ticket, direction in tickets.items():
            score, layers = bar[direction]
            assert (views[ticket]["state"], views[ticket]["score"], views[ticket]["layers"]) == (
                "HEALTHY", score, layers)
            assert rows[ticket][:2] == (score, store_module.json.dumps(layers, sort_keys=True))
            actor = svc.registry.trades[ticket]   # in memory too: RECOVERING reads t.score
            assert (actor.trade.score, actor.trade.layers) == (score, layers)


async def test_a_bar_close_that_changes_a_state_writes_that_trade_row_only(
        engine_settings, monkeypatch):
    sim = make_sim()
    written = spy_writes(monkeypatch)
    # no broker-side floor (issue 15): it would attach a stop to these naked positions at
    # the first bar close with an ATR, a write of its own
    engine_settings = engine_settings.replace(policy={"attach_sl_atr": 0.0})
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        [buy] = await register(cl, sim, ["BUY"])
        [sell] = await register(cl, sim, ["SELL"])
        await settle(svc, sim)
        written.clear()
        await bars(svc, sim)                               # SELL -4.43: WARNING_L1
        assert (await cl.trade(buy))["state"] == "HEALTHY"
        sold = await cl.trade(sell)
        assert (sold["state"], sold["obligations"]) == ("WARNING_L1", {"sl:L1": "done"})
        assert set(trade_rows(written)) == {sell}          # its transition and its stop
        assert sold["score"] == -(await cl.trade(buy))["score"] == -4.4333
        assert [m.symbol for m in written if isinstance(m, PutScores)] == ["EURUSD"]


async def test_a_restarted_dtms_resumes_the_last_bars_stored_score(engine_settings):
    sim = make_sim()
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        tickets = await register(cl, sim, ["BUY", "SELL"], policy=CALM)
        await settle(svc, sim)
        await bars(svc, sim, 2)
        market = svc.market.symbols["EURUSD"]
        assert market.bar_closes == 2
        bar = {d: stored_score(market.scores[d]) for d in (BUY, SELL)}
        before = {t: await cl.trade(t) for t in tickets}
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await settle(svc, sim)
        assert svc.market.symbols["EURUSD"].bar_closes == 0   # nothing scored since
        for ticket, direction in tickets.items():
            view = await cl.trade(ticket)
            assert (view["score"], view["layers"]) == bar[direction]
            assert (view["score"], view["layers"]) == (before[ticket]["score"],
                                                       before[ticket]["layers"])
            actor = svc.registry.trades[ticket]
            assert (actor.trade.score, actor.trade.layers) == bar[direction]


async def test_a_scoring_error_is_the_symbols_logged_counted_and_no_trade_crashes(
        engine_settings, monkeypatch, caplog):
    def broken(sig: Any, direction: Any) -> Any:
        raise ScoringError("vwap: cannot score value nan with weight 1.0")
    sim = make_sim()
    calls, written = spy_scores(monkeypatch, broken), spy_writes(monkeypatch)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        tickets = await register(cl, sim, ["BUY", "SELL", "SELL"])
        await settle(svc, sim)
        errors = svc.metrics.scoring_errors.labels("EURUSD")
        counted, calls_before = errors._value.get(), sum(calls.values())
        written.clear()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="dtms.actors.market"):
            await bars(svc, sim)
        assert svc.market.symbols["EURUSD"].bar_closes == 1
        assert sum(calls.values()) - calls_before == 2     # once per direction, not per trade
        assert errors._value.get() - counted == 2
        assert sorted(r.direction for r in caplog.records if hasattr(r, "direction")) == [
            "BUY", "SELL"]
        assert all("vwap" in r.getMessage() for r in caplog.records)
        assert svc.metrics.actor_restarts.labels("trade")._value.get() == 0
        assert [m for m in written if isinstance(m, PutScores)] == []
        for ticket in tickets:
            view = await cl.trade(ticket)
            assert (view["state"], view["score"], view["layers"]) == ("HEALTHY", 0.0, {})
            assert svc.registry.trades[ticket].trade.score == 0.0
