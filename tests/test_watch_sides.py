"""A trade's watch levels are levels of its own closing price (issue 13, item 3): a BUY's are
bid levels, a SELL's ask levels, so neither depends on the spread at the moment they were
decided. The whole class of defect -- a SELL level converted to the bid with today's spread,
wrong as soon as the spread changes -- is a watch that changes when only the other side of the
quote does."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.model import Direction
from dtms.policy.lifecycle import decide
from tests.test_lifecycle import ENTRY, LADDER, NOW, make_trade, snap

POINT = 1e-5
TIME_STOP_LADDER = dataclasses.replace(LADDER, time_stop_min=600.0)

trades = st.fixed_dictionaries({
    "direction": st.sampled_from([Direction.BUY, Direction.SELL]),
    "breakeven_done": st.booleans(),
    "sl_offset": st.integers(-400, 400),         # the current stop, points from entry
})


@settings(max_examples=300, deadline=None)
@given(trades, st.integers(-2500, 2500), st.integers(0, 60), st.integers(0, 60),
       st.sampled_from([0.0, 0.0005, 0.001]))
def test_a_watch_depends_only_on_the_trades_own_side_of_the_quote(
        t, offset: int, spread_a: int, spread_b: int, atr: float) -> None:
    direction = t["direction"]
    obligations = {"sl:breakeven": "done"} if t["breakeven_done"] else {}
    sign = 1 if direction is Direction.BUY else -1
    sl = round(ENTRY - sign * 0.01 + t["sl_offset"] * POINT, 5)
    trade = make_trade(direction, sl=sl, obligations=obligations)
    own = round(ENTRY + offset * POINT, 5)       # the closing price: bid (BUY) or ask (SELL)

    def watch(spread: int):
        if direction is Direction.BUY:
            s = snap(own, round(own + spread * POINT, 5), atr=atr)
        else:
            s = snap(round(own - spread * POINT, 5), own, atr=atr)
        return decide(trade, s, TIME_STOP_LADDER).watch

    a, b = watch(spread_a), watch(spread_b)
    assert a == b                                 # the other side moved: the watch did not
    assert a.ask == (direction is Direction.SELL and (a.above is not None
                                                      or a.below is not None))
    for level in (a.above, a.below):
        if level is not None:                     # on the grid, on the right side of the price
            assert abs(round(level / POINT) - level / POINT) < 1e-6
    assert a.above is None or a.above > own
    assert a.below is None or a.below <= own
    assert a.at is None or a.at > NOW
