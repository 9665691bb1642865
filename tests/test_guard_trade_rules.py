"""The per-trade rules of the account guard issue (15), pure, in dtms/policy/lifecycle.py and
execution.py: the broker-side floor, ``max_loss_r``, the spread guard, and the forced modify."""

from __future__ import annotations

import dataclasses

import pytest

from dtms.model import ActionIntent, ActionKind, Direction, Tick
from dtms.policy.execution import Request, Skipped, Target, build_request
from dtms.policy.lifecycle import after_fill, decide
from tests.test_lifecycle import EURUSD, POLICY, make_trade, snap

BUY, SELL = Direction.BUY, Direction.SELL


@pytest.mark.parametrize("direction, policy, atr, sl", [
    (BUY, {}, 0.0010, 1.0970),                              # 3 ATR below the bid
    (SELL, {}, 0.0010, 1.1032),                             # 3 ATR above the ask (1.1002)
    (BUY, {"attach_sl_points": 150.0}, 0.0010, 1.0985),     # points win over the ATR
    (BUY, {"attach_sl_atr": 1.0}, 0.0000004, 1.09999),      # widened to the stops level
    (BUY, {}, 0.0, None),                                   # no ATR yet: nothing to place
    (BUY, {"attach_sl_atr": 0.0}, 0.0010, None),            # both 0: off
])
def test_a_trade_without_a_stop_gets_its_floor(direction, policy, atr, sl):
    p = dataclasses.replace(POLICY, **policy)
    spec = dataclasses.replace(EURUSD, stops_level=0)
    t = make_trade(direction, initial_sl=0.0, sl=0.0)
    s = dataclasses.replace(snap(1.1000, atr=atr), spec=spec)
    d = decide(t, s, p)
    floors = [(i.obligation, i.sl) for i in d.intents if i.obligation == "sl:floor"]
    assert floors == ([] if sl is None else [("sl:floor", sl)])
    if sl is not None:   # once: pending now, and R is taken from it when it is done
        assert d.trade.obligations["sl:floor"] == "pending"
        assert decide(d.trade, s, p).intents == ()
        intent = d.intents[0]
        assert after_fill(t, intent, volume=1.0, sl=sl) == {"sl": sl, "initial_sl": sl}


def test_a_trade_with_a_stop_gets_no_floor_and_a_paused_one_waits():
    assert decide(make_trade(), snap(1.1000, atr=0.001), POLICY).intents == ()
    paused = make_trade(initial_sl=0.0, sl=0.0, paused=True)
    assert decide(paused, snap(1.1000, atr=0.001), POLICY).intents == ()


@pytest.mark.parametrize("max_loss_r, expected", [(0.0, 1.09600), (0.3, 1.09700)])
def test_max_loss_r_caps_every_stop_dtms_sets(max_loss_r, expected):
    # WARNING_L1 sets the stop 0.3 R behind the price; the price is far below the entry:
    # 1.0990 - 0.3 x 0.01 = 1.0960, 0.4 R under the entry -- with max_loss_r 0.3, 0.3 R
    from tests.test_lifecycle import score
    p = dataclasses.replace(POLICY, max_loss_r=max_loss_r)
    t = make_trade(sl=1.0900)
    d = decide(t, snap(1.0990, atr=0.001, score=score(-2.0)), p)
    [intent] = d.intents
    assert (intent.obligation, intent.sl) == ("sl:L1", expected)
    assert ("max_loss_r" in intent.reason) is (max_loss_r > 0)


@pytest.mark.parametrize("spread, mult, trailed", [
    (0.0002, 0.0, True),     # off
    (0.0002, 2.0, True),     # at the median
    (0.0004, 2.0, True),     # exactly 2 x: not above
    (0.0005, 2.0, False),    # above 2 x the median: deferred
])
def test_the_spread_guard_defers_a_trailing_step(spread, mult, trailed):
    p = dataclasses.replace(POLICY, max_spread_mult=mult)
    t = make_trade(sl=1.1002, obligations={"sl:breakeven": "done"})   # +2 R: trailing runs
    s = dataclasses.replace(snap(1.1200, round(1.1200 + spread, 5), atr=0.002),
                            median_spread=0.0002)
    d = decide(t, s, p)
    keys = [i.obligation for i in d.intents]
    assert any(k.startswith("sl:trail:") for k in keys) is trailed
    if not trailed:
        assert d.watch.at == s.now + 1.0   # looked at again a second later


def test_the_spread_guard_never_defers_the_floor():
    p = dataclasses.replace(POLICY, max_spread_mult=2.0)
    s = dataclasses.replace(snap(1.1000, 1.1010, atr=0.001), median_spread=0.0002)
    d = decide(make_trade(initial_sl=0.0, sl=0.0), s, p)
    assert [i.obligation for i in d.intents] == ["sl:floor"]


TICK = Tick("EURUSD", 1, 1.1000, 1.1002)
TARGET = Target(ticket=7, symbol="EURUSD", direction=BUY, volume=1.0, sl=1.0950, tp=1.1200)


def _modify(sl: float, tp: float = 0.0, loosen: bool = False):
    return build_request(ActionIntent(ActionKind.MODIFY_SL, "request:modify:1", "test", sl=sl,
                                      tp=tp), TARGET, EURUSD, TICK, magic=1, comment="c",
                         deviation=5, loosen=loosen)


def test_a_modify_never_loosens_unless_forced_and_can_set_the_tp():
    assert isinstance(_modify(1.0940), Skipped)
    forced = _modify(1.0940, loosen=True)
    assert isinstance(forced, Request) and forced.fields["sl"] == 1.0940
    assert forced.fields["tp"] == 1.1200                      # kept
    both = _modify(1.0960, tp=1.1300)
    assert isinstance(both, Request) and (both.fields["sl"], both.fields["tp"]) == (1.0960,
                                                                                    1.1300)
    tp_only = _modify(1.0950, tp=1.1300)                       # same stop, a new TP
    assert isinstance(tp_only, Request) and tp_only.fields["tp"] == 1.1300
    assert isinstance(_modify(1.0950), Skipped)               # nothing changes
