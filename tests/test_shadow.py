"""Shadow mode and live policy changes (issue 17 sections 3 and 4), through the real stack.

A shadow trade is decided like a live one and every request it would have sent is journaled
``shadow``; the simulated terminal's order and deal history proves nothing was sent. Switching
it to live re-reads the broker's position and acts on it once. ``set_policy`` is validated like
a registration, journaled as a transition, persisted and effective at the next evaluation.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from dtms.brokers.sim import constants as c
from dtms.brokers.sim.prices import linear_path
from dtms.errors import DtmsError
from tests.conftest import client_for, eventually, running
from tests.test_scenarios import journal, make_sim, play, position, settle

pytestmark = pytest.mark.anyio

SL0 = 1.08312          # the position's own stop; entry 1.08512 (bid 1.08500 + 12 points), 1 R 0.002
BREAKEVEN = 1.08524    # entry + one spread
SHADOW_LADDER = {"mode": "shadow", "partial_levels_r": [1.0], "partial_fractions": [0.5],
                 "time_stop_min": 2}


def orders_and_deals(sim, ticket: int) -> tuple[int, int]:
    """What the terminal has seen for the position: its orders and deals (the opening ones)."""
    return (len(sim.history_orders_get(position=ticket)),
            len(sim.history_deals_get(position=ticket)))


def row_of(path: str, ticket: int) -> dict:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    row = dict(db.execute("SELECT * FROM trades WHERE ticket = ?", (ticket,)).fetchone())
    db.close()
    return row


async def test_a_shadow_trade_journals_breakeven_partial_and_close_and_sends_nothing(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    opened = orders_and_deals(sim, ticket)
    assert opened == (1, 1)
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": SHADOW_LADDER})
        await settle(svc, sim)
        # +1 R: breakeven and the first rung, 40 s after the open
        await play(svc, sim, [*linear_path(1.08500, 1.08700, 3, 5), 1.08712])
        await eventually(lambda: len(journal(path, ticket)) == 2)
        # the time stop (2 min): the close of what would be left, 0.05
        await play(svc, sim, [1.08650] * 3, interval=30.0)
        await eventually(lambda: len(journal(path, ticket)) == 3)
        await play(svc, sim, [1.08600, 1.08900], interval=30.0)   # nothing more after a close

        rows = journal(path, ticket)
        assert [(r["kind"], r["obligation"], r["status"], r["retcode"]) for r in rows] == [
            ("MODIFY_SL", "sl:breakeven", "shadow", 0),
            ("PARTIAL_CLOSE", "partial:0", "shadow", 0),
            ("CLOSE", "close", "shadow", 0)]
        requests = [json.loads(r["request"]) for r in rows]
        assert (requests[0]["action"], requests[0]["position"], requests[0]["sl"]) == (
            6, ticket, BREAKEVEN)
        assert (requests[1]["type"], requests[1]["position"], requests[1]["volume"],
                requests[1]["price"]) == (1, ticket, 0.05, 1.08712)
        assert (requests[2]["type"], requests[2]["volume"], requests[2]["price"]) == (
            1, 0.05, 1.0865)
        # nothing reached the terminal: the position as it was, no order, no deal
        assert orders_and_deals(sim, ticket) == opened
        p = position(sim, ticket)
        assert (p.sl, p.volume) == (SL0, 0.10)
        view = await cl.trade(ticket)
        assert (view["state"], view["sl"], view["volume"], view["policy"]["mode"],
                view["mode"]) == ("HEALTHY", SL0, 0.10, "shadow", "shadow")
        assert view["obligations"] == {"sl:breakeven": "shadow", "partial:0": "shadow",
                                       "close": "shadow"}
        listed = (await cl.call("actions", {"ticket": ticket}))["actions"]
        assert [a["status"] for a in listed] == ["shadow"] * 3
        assert listed[0]["request"]["volume"] == 0.05

        bid = sim.symbol_info_tick("EURUSD").bid
        assert bid == 1.089
        report = await cl.call("shadow_report", {"ticket": ticket})
        assert {k: report[k] for k in ("actions", "stops_moved", "partial_closes", "closes",
                                       "closed_volume", "hedged_volume", "unpriced")} == {
            "actions": 3, "stops_moved": 1, "partial_closes": 1, "closes": 1,
            "closed_volume": 0.1, "hedged_volume": 0.0, "unpriced": []}
        # closing 0.05 at 1.08712 and 0.05 at 1.08650 instead of holding both to 1.08900
        expected = round(round((1.08712 - bid) * 0.05 * 100_000, 2)
                         + round((1.0865 - bid) * 0.05 * 100_000, 2), 2)
        assert expected == -21.9
        assert report["pnl_difference"] == expected
        assert report["trades"] == [{"ticket": ticket, "actions": 3, "closed_volume": 0.1,
                                     "pnl_difference": expected}]
        assert svc.metrics.actions.labels("MODIFY_SL", "shadow")._value.get() == 1


async def test_a_shadow_trade_restarted_keeps_its_shadow_book(engine_settings):
    """After a restart the trade still knows the stop it would have set: no second breakeven
    row, and the trail (none here: no ATR) would ratchet from it."""
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {"mode": "shadow"}})
        await settle(svc, sim)
        await play(svc, sim, [1.08712])
        await eventually(lambda: len(journal(path, ticket)) == 1)
    async with running(engine_settings, sim) as svc:
        await settle(svc, sim)
        await play(svc, sim, [1.08720, 1.08730])
        actor = svc.registry.trades[ticket]
        assert actor.shadow_book is not None and actor.shadow_book.sl == BREAKEVEN
        assert [r["status"] for r in journal(path, ticket)] == ["shadow"]
        assert position(sim, ticket).sl == SL0


async def test_switching_a_shadow_trade_to_live_acts_on_the_brokers_position_once(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    opened = orders_and_deals(sim, ticket)
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {"mode": "shadow"}})
        await settle(svc, sim)
        await play(svc, sim, [1.08712])
        await eventually(lambda: len(journal(path, ticket)) == 1)
        assert position(sim, ticket).sl == SL0
        # meanwhile the trader moves the real stop: live starts from it, not from the shadow
        r = sim.order_send({"action": c.TRADE_ACTION_SLTP, "position": ticket,
                            "symbol": "EURUSD", "sl": 1.08400, "tp": 0.0})
        assert r.retcode == 10009
        await eventually(lambda: svc.registry.trades[ticket].trade.sl == 1.08400)
        view = await cl.call("set_policy", {"ticket": ticket, "policy": {"mode": "live"}})
        assert view["policy"] == {"mode": "live"}
        assert view["obligations"] == {}     # the shadow breakeven is owed afresh, live
        await settle(svc, sim)
        await eventually(lambda: position(sim, ticket).sl == BREAKEVEN)
        await play(svc, sim, [1.08720, 1.08730, 1.08712])
        rows = journal(path, ticket)
        assert [(r["kind"], r["obligation"], r["status"], r["retcode"]) for r in rows] == [
            ("MODIFY_SL", "sl:breakeven", "shadow", 0),
            ("MODIFY_SL", "sl:breakeven", "done", 10009)]
        # the live modify is the only request the terminal saw (an SLTP modify makes no deal)
        assert orders_and_deals(sim, ticket) == opened
        [t] = [t for t in (await cl.transitions(ticket))["transitions"]
               if t["reason"].startswith("policy changed")]
        assert (t["from_state"], t["to_state"]) == ("HEALTHY", "HEALTHY")
        assert t["reason"] == ("policy changed: mode 'shadow' -> 'live'; live from the "
                               "broker's position: sl 1.084, volume 0.1")


async def test_set_policy_is_validated_journaled_persisted_and_effective_at_once(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": {"trail_atr_mult": 3}})
        await settle(svc, sim)
        await play(svc, sim, [1.08612])            # +0.5 R: below the configured breakeven
        assert position(sim, ticket).sl == SL0

        # bad input: every bad key named with its bound, nothing stored
        for bad, names in (
                ({"breakeven_r": -1, "l1_tighten_r": "0.3", "bogus": 1},
                 {"policy.breakeven_r", "policy.l1_tighten_r", "policy.bogus"}),
                ({"mode": "paper"}, {"policy.mode"}),
                ({"l1_score": -5.0}, {"policy.l1_score", "policy.l2_score"})):
            with pytest.raises(DtmsError) as err:
                await cl.call("set_policy", {"ticket": ticket, "policy": bad})
            assert err.value.code == "INVALID_ARGUMENT"
            assert set(err.value.details["errors"]) == names
        assert "must be one of 'live', 'shadow'" in str(
            await _error(cl, {"ticket": ticket, "policy": {"mode": "paper"}}))
        for args, field in (({"policy": {"breakeven_r": 1}}, "ticket"),
                            ({"ticket": ticket, "all": True, "policy": {"breakeven_r": 1}},
                             "ticket"),
                            ({"ticket": ticket, "policy": {}}, "policy"),
                            ({"ticket": ticket}, "policy")):
            err = await _error(cl, args)
            assert (err.code, err.details["field"]) == ("INVALID_ARGUMENT", field)
        assert (await _error(cl, {"ticket": 999_999, "policy": {"breakeven_r": 1}})).code == \
            "NOT_FOUND"
        assert json.loads(row_of(path, ticket)["policy"]) == {"trail_atr_mult": 3}

        # a valid change: merged into the stored overrides, journaled, in effect at once
        view = await cl.call("set_policy", {"ticket": ticket, "policy": {"breakeven_r": 0.5}})
        assert view["policy"] == {"trail_atr_mult": 3, "breakeven_r": 0.5}
        await eventually(lambda: position(sim, ticket).sl == BREAKEVEN)
        assert json.loads(row_of(path, ticket)["policy"]) == {"trail_atr_mult": 3,
                                                              "breakeven_r": 0.5}
        [t] = [t for t in (await cl.transitions(ticket))["transitions"]
               if t["reason"].startswith("policy changed")]
        assert t["reason"] == "policy changed: breakeven_r 1 -> 0.5"
        assert (await cl.trade(ticket))["policy"] == {"trail_atr_mult": 3, "breakeven_r": 0.5}

        # null puts a key back to the configured value; all: true reaches every trade
        done = await cl.call("set_policy", {"all": True, "policy": {"trail_atr_mult": None,
                                                                    "l2_close_repeat": True}})
        assert (done["tickets"], done["count"], done["errors"]) == ([ticket], 1, {})
        assert json.loads(row_of(path, ticket)["policy"]) == {"breakeven_r": 0.5,
                                                              "l2_close_repeat": True}
        # a change never loosens the stop it already set
        await cl.call("set_policy", {"ticket": ticket, "policy": {"breakeven_r": 3}})
        await play(svc, sim, [1.08620, 1.08630])
        assert position(sim, ticket).sl == BREAKEVEN
    # persisted: a restarted DTMS manages it with the changed policy
    async with running(engine_settings, sim) as svc:
        await settle(svc, sim)
        assert svc.registry.trades[ticket].policy.breakeven_r == 3
        assert svc.registry.trades[ticket].policy.l2_close_repeat is True


async def _error(cl, args: dict) -> DtmsError:
    with pytest.raises(DtmsError) as err:
        await cl.call("set_policy", args)
    return err.value


async def test_a_registration_or_config_with_a_bad_mode_is_refused(engine_settings, tmp_path):
    from dtms import config
    f = tmp_path / "c.toml"
    f.write_text('[policy]\nmode = "paper"\n')
    with pytest.raises(config.ConfigError, match=r"policy.mode: must be one of 'live', "
                                                 r"'shadow', got 'paper'"):
        config.load(f, environ={})
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        with pytest.raises(DtmsError) as err:
            await cl.register({"ticket": ticket, "policy": {"mode": "SHADOW"}})
        assert err.value.details["errors"] == {
            "policy.mode": "must be one of 'live', 'shadow', got str 'SHADOW'"}


async def test_global_shadow_mode_sends_nothing_for_any_trade(engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    path = engine_settings.store.path
    async with running(engine_settings.replace(policy={"mode": "shadow"}), sim) as svc, \
            client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await play(svc, sim, [1.08712])
        await eventually(lambda: len(journal(path, ticket)) == 1)
        assert journal(path, ticket)[0]["status"] == "shadow"
        assert position(sim, ticket).sl == SL0
        assert ((await cl.trade(ticket))["mode"], (await cl.status())["mode"]) == (
            "shadow", "shadow")
        # a trade's own override wins over the global mode
        view = await cl.call("set_policy", {"ticket": ticket, "policy": {"mode": "live"}})
        assert view["policy"] == {"mode": "live"}
        await eventually(lambda: position(sim, ticket).sl == BREAKEVEN)


async def test_set_policy_for_all_leaves_a_trade_whose_own_overrides_refuse_it(engine_settings):
    sim = make_sim()
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    b = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    path = engine_settings.store.path
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": a})
        await cl.register({"ticket": b, "policy": {"l2_score": -3}})
        done = await cl.call("set_policy", {"all": True, "policy": {"l1_score": -3.5}})
        assert (done["tickets"], done["count"]) == ([a], 1)
        assert list(done["errors"]) == [str(b)]
        assert done["errors"][str(b)]["code"] == "INVALID_ARGUMENT"
        assert set(done["errors"][str(b)]["errors"]) == {"policy.l1_score", "policy.l2_score"}
        assert json.loads(row_of(path, a)["policy"]) == {"l1_score": -3.5}
        assert json.loads(row_of(path, b)["policy"]) == {"l2_score": -3}
        assert svc.registry.trades[b].policy.l1_score == -2.0


async def test_a_restart_with_the_mode_now_live_acts_on_the_brokers_position_once(
        engine_settings):
    sim = make_sim()
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=SL0)
    path = engine_settings.store.path
    async with running(engine_settings.replace(policy={"mode": "shadow"}), sim) as svc, \
            client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, sim)
        await play(svc, sim, [1.08712])
        await eventually(lambda: len(journal(path, ticket)) == 1)
        assert position(sim, ticket).sl == SL0
    async with running(engine_settings, sim) as svc, client_for(svc) as cl:   # mode live
        await settle(svc, sim)
        await play(svc, sim, [1.08720, 1.08730])
        await eventually(lambda: position(sim, ticket).sl == BREAKEVEN)
        await play(svc, sim, [1.08740])
        assert [(r["obligation"], r["status"]) for r in journal(path, ticket)] == [
            ("sl:breakeven", "shadow"), ("sl:breakeven", "done")]
        assert (await cl.trade(ticket))["obligations"] == {"sl:breakeven": "done"}
        reasons = [t["reason"] for t in (await cl.transitions(ticket))["transitions"]]
        assert reasons[-1].startswith("live after shadow mode")
