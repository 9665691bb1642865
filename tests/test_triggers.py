"""Tests of dtms.triggers.TriggerIndex: one-shot price-level and time watches."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.triggers import DEFAULT_COMPACT_FLOOR, TriggerIndex

T0 = 1_717_372_800.0


@pytest.mark.parametrize(
    ("levels", "bid", "now", "fires"),
    [
        ({"above": 1.1}, 1.0999, T0, False),
        ({"above": 1.1}, 1.1, T0, True),  # >= : touching the level fires
        ({"above": 1.1}, 1.2, T0, True),
        ({"below": 1.0}, 1.0001, T0, False),
        ({"below": 1.0}, 1.0, T0, True),  # <= : touching the level fires
        ({"below": 1.0}, 0.9, T0, True),
        ({"at": T0 + 60}, 5.0, T0 + 59.999, False),
        ({"at": T0 + 60}, 5.0, T0 + 60, True),
        ({"at": T0 + 60}, 5.0, T0 + 61, True),
        ({"above": 1.1, "below": 1.0}, 1.05, T0, False),
        ({"above": 1.1, "below": 1.0}, 1.1, T0, True),
        ({"above": 1.1, "below": 1.0}, 1.0, T0, True),
        ({"above": 1.1, "below": 1.0, "at": T0 + 1}, 1.05, T0 + 1, True),
        ({"above": 1.0, "below": 1.1}, 1.05, T0, True),  # crossed levels are not refused
    ],
)
def test_each_trigger_kind_fires_when_met(levels: dict[str, float], bid: float, now: float,
                                          fires: bool) -> None:
    index = TriggerIndex()
    index.watch(7, **levels)
    assert index.fire(bid, now) == ([7] if fires else [])
    assert (7 in index) is not fires


# A SELL closes at the ask: its levels are ask levels, met by the ask whatever the bid does
# (a tick whose bid stands still while the ask moves, a spread that widens or narrows).
@pytest.mark.parametrize(
    ("levels", "bid", "ask", "fires"),
    [
        ({"below": 1.0900}, 1.0899, 1.0901, False),   # the bid is past it, the ask is not
        ({"below": 1.0900}, 1.0890, 1.0900, True),    # the ask touches it
        ({"below": 1.0900}, 1.0895, 1.0899, True),    # a narrower spread: the ask is past it
        ({"below": 1.0900}, 1.0880, 1.0910, False),   # a wide spread: bid far past, ask not
        ({"above": 1.1000}, 1.0999, 1.1000, True),    # the ask touches it, the bid does not
        ({"above": 1.1000}, 1.1001, 1.0999, False),   # (a crossed quote: the ask decides)
        ({"above": 1.1000, "below": 1.0900}, 1.0950, 1.0960, False),
        ({"above": 1.1000, "below": 1.0900}, 1.0990, 1.1005, True),
        ({"above": 1.1000, "at": T0 + 60}, 1.0, 1.0, False),
        ({"above": 1.1000, "at": T0}, 1.0, 1.0, True),   # a time has no side
    ],
)
def test_ask_levels_are_met_by_the_ask_not_the_bid(levels: dict[str, float], bid: float,
                                                   ask: float, fires: bool) -> None:
    index = TriggerIndex()
    index.watch(7, **levels, ask=True)
    index.watch(8, **levels)                      # the same levels on the bid side
    bid_fires = (levels.get("at", math.inf) <= T0 or levels.get("above", math.inf) <= bid
                 or levels.get("below", -math.inf) >= bid)
    assert index.fire(bid, T0, ask=ask) == sorted(
        [k for k, f in ((7, fires), (8, bid_fires)) if f])
    assert (7 in index) is not fires


def test_ask_levels_wait_for_a_quote_with_an_ask() -> None:
    index = TriggerIndex()
    index.watch(7, below=1.09, ask=True)
    assert index.fire(1.0, T0) == []               # no ask given: not met, still watched
    assert index.fire(1.0, T0, ask=1.089) == [7]


def test_met_checks_one_key_against_one_quote_and_ends_its_watch() -> None:
    index = TriggerIndex()
    index.watch(7, below=1.09, ask=True)
    index.watch(8, above=1.10)
    assert index.met(7, 1.0880, T0, ask=1.0902) is False and 7 in index
    assert index.met(7, 1.0890, T0, ask=1.0900) is True and 7 not in index
    assert index.met(7, 1.0, T0, ask=1.0) is False   # gone: nothing to meet
    assert 8 in index and index.fire(1.10, T0) == [8]


def test_new_watch_replaces_old_levels() -> None:
    index = TriggerIndex()
    index.watch(1, above=1.1, below=1.0, at=T0 + 10)
    index.watch(1, above=1.3)
    assert len(index) == 1 and index.levels(1) == (1.3, None, None)
    assert index.fire(1.2, T0 + 100) == []  # old above, below and time are all gone
    assert index.fire(0.5, T0 + 100) == []
    assert index.fire(1.3, T0 + 100) == [1]


def test_cancel_removes_watch_and_unknown_cancel_is_noop() -> None:
    index = TriggerIndex()
    index.watch(1, above=1.1)
    index.watch(2, above=1.1)
    index.cancel(1)
    index.cancel(99)
    assert 1 not in index and index.levels(1) is None and len(index) == 1
    assert index.fire(2.0, T0) == [2]


def test_watch_without_conditions_is_cancel() -> None:
    index = TriggerIndex()
    index.watch(1, below=1.0)
    index.watch(1)
    assert 1 not in index
    assert index.fire(0.1, T0) == []


def test_fired_watch_is_one_shot() -> None:
    index = TriggerIndex()
    index.watch(1, below=1.0, at=T0 + 5)
    assert index.fire(0.9, T0) == [1]
    assert index.fire(0.8, T0 + 10) == []
    assert len(index) == 0


def test_key_met_by_two_conditions_at_once_fires_once() -> None:
    index = TriggerIndex()
    index.watch(3, above=1.0, at=T0)
    index.watch(1, below=2.0, above=1.0, at=T0)  # all three met at once
    assert index.fire(1.5, T0) == [1, 3]


def test_fire_returns_keys_ascending_and_leaves_unmet() -> None:
    index = TriggerIndex()
    for key, level in ((5, 1.01), (2, 1.03), (9, 1.02), (4, 1.05)):
        index.watch(key, above=level)
    assert index.fire(1.03, T0) == [2, 5, 9]
    assert len(index) == 1 and index.levels(4) == (1.05, None, None)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("kind", ["above", "below", "at"])
def test_non_finite_level_raises_and_keeps_old_watch(kind: str, bad: float) -> None:
    index = TriggerIndex()
    index.watch(1, above=1.1)
    with pytest.raises(ValueError, match=kind):
        index.watch(1, **{kind: bad})
    assert index.levels(1) == (1.1, None, None)


@pytest.mark.parametrize(("bid", "now"), [(math.nan, T0), (1.0, math.nan), (math.inf, T0)])
def test_non_finite_bid_or_time_raises(bid: float, now: float) -> None:
    index = TriggerIndex()
    index.watch(1, above=0.5)
    with pytest.raises(ValueError):
        index.fire(bid, now)
    assert 1 in index


def test_heaps_stay_bounded_under_constant_rewatching() -> None:
    index = TriggerIndex()
    rng = random.Random(5)
    for i in range(100_000):
        key = i % 10
        index.watch(key, above=1.0 + rng.random(), below=rng.random(), at=T0 + rng.random())
    stats = index.stats()
    live_entries = 3 * 10
    assert stats.watches == 10
    assert stats.entries - stats.stale == live_entries
    assert stats.entries <= live_entries + max(2 * live_entries, DEFAULT_COMPACT_FLOOR)
    assert stats.compactions > 1000
    # Compaction kept exactly the newest levels.
    expected = sorted(k for k in range(10) if index.levels(k)[0] <= 1.5)
    assert index.fire(1.5, T0 - 1) == expected


def test_stats_count_stale_entries_until_compaction() -> None:
    index = TriggerIndex()
    index.watch(1, above=2.0, below=1.0)
    index.watch(1, above=3.0)
    stats = index.stats()
    assert (stats.watches, stats.above, stats.below, stats.times) == (1, 2, 1, 0)
    assert stats.stale == 2 and stats.compactions == 0


def test_negative_compact_floor_is_refused() -> None:
    with pytest.raises(ValueError):
        TriggerIndex(compact_floor=-1)


# --- property: same answers as a brute-force scan ------------------------------------------

class BruteForce:
    """The obvious O(n) implementation the index must agree with."""

    def __init__(self) -> None:
        self.watches: dict[int, tuple[float | None, float | None, float | None]] = {}
        self.ask: dict[int, bool] = {}

    def watch(self, key: int, above: float | None, below: float | None,
              at: float | None, ask: bool = False) -> None:
        if above is None and below is None and at is None:
            self.watches.pop(key, None)
        else:
            self.watches[key] = (above, below, at)
            self.ask[key] = ask

    def fire(self, bid: float, now: float, ask: float | None = None) -> list[int]:
        def price(k: int) -> float | None:
            return ask if self.ask[k] else bid
        met = sorted(k for k, (above, below, at) in self.watches.items()
                     if (at is not None and now >= at) or (price(k) is not None and (
                         (above is not None and price(k) >= above)
                         or (below is not None and price(k) <= below))))
        for key in met:
            del self.watches[key]
        return met


# Few distinct values, so ties, replacements and simultaneous conditions are common.
levels = st.none() | st.integers(0, 10).map(float)
prices = st.integers(-1, 11).map(float)
ops = st.one_of(
    st.tuples(st.just("watch"), st.integers(0, 7), levels, levels, levels, st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("fire"), prices, prices, st.none() | prices),
    st.tuples(st.just("met"), st.integers(0, 7), prices, prices, st.none() | prices),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=300), st.sampled_from([0, 4, DEFAULT_COMPACT_FLOOR]))
def test_fired_keys_match_brute_force(sequence: list[tuple], floor: int) -> None:
    # Small floors make compaction happen inside short sequences, so it is checked too.
    index, reference = TriggerIndex(compact_floor=floor), BruteForce()
    for op in sequence:
        if op[0] == "watch":
            _, key, above, below, at, ask = op
            index.watch(key, above=above, below=below, at=at, ask=ask)
            reference.watch(key, above, below, at, ask)
        elif op[0] == "cancel":
            index.cancel(op[1])
            reference.watches.pop(op[1], None)
        elif op[0] == "met":
            _, key, bid, now, ask = op
            # met() answers for one key only: the other watches stay as they are
            others = {k: w for k, w in reference.watches.items() if k != key}
            expected = key in reference.watches and key in reference.fire(bid, now, ask)
            reference.watches = {**others, **({key: reference.watches[key]}
                                              if key in reference.watches else {})}
            assert index.met(key, bid, now, ask) == expected
        else:
            _, bid, now, ask = op
            assert index.fire(bid, now, ask) == reference.fire(bid, now, ask)
        assert len(index) == len(reference.watches)
        assert {k: index.levels(k) for k in range(8) if k in index} == reference.watches
        assert all(index.on_ask(k) == reference.ask[k] for k in reference.watches)
        stats = index.stats()
        live_entries = sum(v is not None for w in reference.watches.values() for v in w)
        assert stats.entries - stats.stale == live_entries
        assert stats.stale <= max(2 * live_entries, floor)


@pytest.mark.parametrize(("levels", "ask", "bid_range", "ask_range", "now", "met"), [
    ({"above": 1.10}, False, (1.05, 1.10), (1.06, 1.11), T0, True),    # the high touches it
    ({"above": 1.10}, False, (1.05, 1.09), (1.06, 1.11), T0, False),   # only the ask did
    ({"above": 1.10}, True, (1.05, 1.09), (1.06, 1.11), T0, True),
    ({"below": 1.00}, False, (1.00, 1.20), (1.01, 1.21), T0, True),    # the low touches it
    ({"below": 1.00}, True, (0.99, 1.20), (1.01, 1.21), T0, False),
    ({"above": 1.30, "below": 0.90}, False, (1.0, 1.2), (1.0, 1.2), T0, False),
    ({"above": 1.30, "at": T0}, False, (1.0, 1.2), (1.0, 1.2), T0, True),
])
def test_met_within_tells_whether_some_quote_of_a_range_meets_the_watch(
        levels: dict[str, float], ask: bool, bid_range: tuple[float, float],
        ask_range: tuple[float, float], now: float, met: bool) -> None:
    index = TriggerIndex()
    index.watch(7, **levels, ask=ask)
    assert index.met_within(7, bid_range, ask_range, now) is met
    assert 7 in index                                   # only a question: nothing ends
    assert index.met_within(8, bid_range, ask_range, now) is False
