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

    def watch(self, key: int, above: float | None, below: float | None,
              at: float | None) -> None:
        if above is None and below is None and at is None:
            self.watches.pop(key, None)
        else:
            self.watches[key] = (above, below, at)

    def fire(self, bid: float, now: float) -> list[int]:
        met = sorted(k for k, (above, below, at) in self.watches.items()
                     if (above is not None and bid >= above) or (below is not None and bid <= below)
                     or (at is not None and now >= at))
        for key in met:
            del self.watches[key]
        return met


# Few distinct values, so ties, replacements and simultaneous conditions are common.
levels = st.none() | st.integers(0, 10).map(float)
ops = st.one_of(
    st.tuples(st.just("watch"), st.integers(0, 7), levels, levels, levels),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("fire"), st.integers(-1, 11).map(float), st.integers(-1, 11).map(float)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=300), st.sampled_from([0, 4, DEFAULT_COMPACT_FLOOR]))
def test_fired_keys_match_brute_force(sequence: list[tuple], floor: int) -> None:
    # Small floors make compaction happen inside short sequences, so it is checked too.
    index, reference = TriggerIndex(compact_floor=floor), BruteForce()
    for op in sequence:
        if op[0] == "watch":
            _, key, above, below, at = op
            index.watch(key, above=above, below=below, at=at)
            reference.watch(key, above, below, at)
        elif op[0] == "cancel":
            index.cancel(op[1])
            reference.watches.pop(op[1], None)
        else:
            assert index.fire(op[1], op[2]) == reference.fire(op[1], op[2])
        assert len(index) == len(reference.watches)
        assert {k: index.levels(k) for k in range(8) if k in index} == reference.watches
        stats = index.stats()
        live_entries = sum(v is not None for w in reference.watches.values() for v in w)
        assert stats.entries - stats.stale == live_entries
        assert stats.stale <= max(2 * live_entries, floor)
