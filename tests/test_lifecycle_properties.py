"""The ladder's defensive cuts over whole trade lives (``dtms.policy.lifecycle``, issue 13).

A trade is registered HEALTHY and walked along an arbitrary path of scores, prices and market
time, for up to 150 evaluations, every intent settled the way the trade actor settles it
(filled with ``after_fill``, failed, skipped, deferred then released, or in flight and
resolved later). Whatever the path, the money the ladder moves on its own is bounded by the
policy: the WARNING_L2 close, the hedge and each partial-profit rung are each made at most once
per trade, so the volume closed by the ladder is at most
``(l2_close_fraction + sum(partial_fractions)) x initial volume`` (on a netting account the
hedge is a reduction: ``+ hedge_ratio``).

The walks in ``test_lifecycle.py`` start anywhere on the ladder (as after a restart); these
start where every trade starts and run long enough to go round the ladder many times.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.config import PolicySettings
from dtms.model import ActionIntent, ActionKind, Direction, Trade, TradeState
from dtms.policy.lifecycle import Snapshot, decide
from dtms.policy.signals import Score
from tests.test_lifecycle import EURUSD, NOW, POINT, STEP, _settle

#: the cuts: volume the ladder takes off the trade on its own, each at most once per trade
CUTS = ("L2:partial", "hedge", "partial:")

POLICIES = st.builds(
    lambda l2, ratio, ladder: dataclasses.replace(
        PolicySettings(), l2_close_fraction=l2, hedge_ratio=ratio,
        partial_levels_r=tuple(level for level, _ in ladder),
        partial_fractions=tuple(fraction for _, fraction in ladder),
        recovery_min=10.0, flat_timer_min=600.0),     # a long flat timer: more rounds
    st.sampled_from([0.5, 0.25, 1.0, 0.33]),
    st.sampled_from([0.5, 1.0, 0.2]),
    st.sampled_from([(), ((1.5, 0.25), (2.5, 0.25)), ((0.5, 0.3), (1.0, 0.3), (1.5, 0.4))]),
)
#: every ladder threshold and either side of it, so that paths go round the ladder
TOTALS = st.sampled_from([-9.0, -6.0, -5.99, -4.0, -3.99, -2.0, -1.99, 0.0, 1.0, 3.0])
OUTCOMES = st.sampled_from(["done"] * 6 + ["failed", "skipped", "deferred", "pending"])


def _score(data: st.DataObject, now: float) -> Score | None:
    if data.draw(st.integers(0, 4)) == 0:
        return None                                   # a price event, no bar closed
    return Score(total=data.draw(TOTALS), layers={},
                 confluence=data.draw(st.sampled_from(["adverse", "mixed", "favourable"])),
                 vwap_flip=data.draw(st.booleans()),
                 structure_with_trade=data.draw(st.booleans()), threshold_scale=1.0,
                 structure_closed_at=data.draw(st.sampled_from([0.0, now - 900, now])))


def _walk(data: st.DataObject) -> tuple[Trade, PolicySettings, bool, list[tuple[ActionIntent,
                                                                               float]], Counter]:
    """One trade's life; returns the registered trade, its policy, the account mode, every
    settled cut with the volume it took off the position, and how often each key was emitted
    after it had been done or skipped."""
    direction = data.draw(st.sampled_from([Direction.BUY, Direction.SELL]))
    risk = data.draw(st.sampled_from([0, 50, 200, 800])) * POINT
    sign = 1 if direction is Direction.BUY else -1
    lots = round(data.draw(st.integers(1, 300)) * STEP, 2)
    sl = round(1.1 - sign * risk, 5) if risk else 0.0
    start = Trade(ticket=9, symbol="EURUSD", direction=direction, entry_price=1.1, volume=lots,
                  initial_volume=lots, sl=sl, tp=0.0, initial_sl=sl,
                  state=TradeState.HEALTHY, state_since=NOW, opened_at=NOW)
    policy = data.draw(POLICIES)
    hedging = data.draw(st.booleans())
    trade, now, mid = start, NOW, 1.1
    cuts: list[tuple[ActionIntent, float]] = []
    again: Counter = Counter()
    in_flight: list[ActionIntent] = []

    def settle(intent: ActionIntent, status: str) -> bool:
        nonlocal trade
        before = trade
        trade, gone = _settle(trade, intent, status, hedging, 1000 + len(cuts), now)
        if trade.obligations[intent.obligation] == "done" and intent.obligation.startswith(CUTS):
            # a fill the execution made a full close (remainder below volume_min) ends the
            # position: that is execution's rule, not a cut
            cuts.append((intent, 0.0 if gone else round(before.volume - trade.volume, 8)))
        return gone

    for _ in range(data.draw(st.integers(1, 150))):
        for intent in list(in_flight):
            status = data.draw(OUTCOMES)
            if status != "pending":
                in_flight.remove(intent)
                if settle(intent, status):
                    return start, policy, hedging, cuts, again
        trade = trade.copy(obligations={k: "retry" if v == "deferred" and data.draw(
            st.booleans()) else v for k, v in trade.obligations.items()})
        mid = max(0.5, round(mid + data.draw(st.integers(-400, 400)) * POINT, 5))
        now += data.draw(st.sampled_from([0, 5, 60, 300, 900, 1800]))
        snap = Snapshot(now=now, bid=mid, ask=round(mid + 0.0002, 5), spec=EURUSD,
                        hedging=hedging, atr=data.draw(st.sampled_from([0.0, 0.0005])),
                        score=_score(data, now))
        d = decide(trade, snap, policy)
        again.update(i.obligation for i in d.intents
                     if trade.obligations.get(i.obligation) in ("done", "skipped")
                     and i.obligation.startswith(CUTS))
        trade = d.trade
        for intent in d.intents:
            status = data.draw(OUTCOMES)
            if status == "pending":
                in_flight.append(intent)
            elif settle(intent, status):
                return start, policy, hedging, cuts, again
    return start, policy, hedging, cuts, again


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_property_the_ladder_closes_at_most_its_configured_fractions_of_a_trade(
        data: st.DataObject) -> None:
    start, policy, hedging, cuts, _ = _walk(data)
    bound = policy.l2_close_fraction + sum(policy.partial_fractions) + (
        0.0 if hedging else policy.hedge_ratio)
    closed = sum(volume for _, volume in cuts)
    assert closed <= bound * start.initial_volume + 1e-9, cuts


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_property_each_cut_is_made_at_most_once_and_the_hedge_opened_at_most_once(
        data: st.DataObject) -> None:
    _, _, _, cuts, again = _walk(data)
    made = Counter(intent.obligation for intent, _ in cuts)
    assert all(n == 1 for n in made.values()), made
    assert sum(1 for intent, _ in cuts if intent.kind is ActionKind.HEDGE) <= 1, cuts
    assert not again, again        # never emitted once done or skipped
