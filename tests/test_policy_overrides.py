"""A trade's ``policy`` map: typed exactly, every key bounded, every bad key named with its bound
(dtms/policy/overrides.py), and the same bounds for the config file's ``[policy]`` section."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.config import PolicySettings
from dtms.errors import InvalidArgument
from dtms.policy import overrides
from dtms.policy.lifecycle import decide
from dtms.policy.overrides import BOUNDS, ORDER, policy_problems, resolve_policy, salvage_policy
from tests.test_lifecycle import BUY, HEALTHY, L1, QUIET, make_trade, score, snap

POLICY = PolicySettings()
LADDER = PolicySettings(partial_levels_r=(1.5, 2.5), partial_fractions=(0.25, 0.25))


def _errors(base: PolicySettings, overrides: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as info:
        resolve_policy(base, overrides)
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value.details["errors"]


# == resolve_policy (moved from test_lifecycle.py) =============================================

def test_resolve_policy_without_overrides_is_the_settings_themselves() -> None:
    assert resolve_policy(POLICY, {}) is POLICY


def test_resolve_policy_applies_a_trades_exactly_typed_overrides() -> None:
    p = resolve_policy(POLICY, {"breakeven_r": 1.5, "trail_atr_mult": 3, "l1_score": -3,
                                "partial_levels_r": [1.5, 2.5], "partial_fractions": [0.25, 0.25],
                                "requote_retries": 5, "time_stop_min": 90,
                                "l2_close_repeat": True})
    assert p.breakeven_r == 1.5 and isinstance(p.breakeven_r, float)
    assert p.trail_atr_mult == 3.0 and isinstance(p.trail_atr_mult, float)
    assert p.l1_score == -3.0 and isinstance(p.l1_score, float)
    assert p.partial_levels_r == (1.5, 2.5)
    assert p.partial_fractions == (0.25, 0.25)
    assert p.requote_retries == 5
    assert p.time_stop_min == 90.0
    assert p.l2_close_repeat is True
    assert p.l2_score == POLICY.l2_score          # the rest comes from the settings
    assert POLICY.breakeven_r == 1.0              # the settings are not changed


def test_resolve_policy_overrides_change_decisions() -> None:
    p = resolve_policy(POLICY, {"l1_score": -3})
    assert decide(make_trade(), snap(*QUIET[BUY], score=score(-2.5)), p).trade.state is HEALTHY
    assert decide(make_trade(), snap(*QUIET[BUY], score=score(-3.0)), p).trade.state is L1


def test_resolve_policy_names_every_bad_key() -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_policy(POLICY, {"bogus": 1, "breakeven_r": "abc", "l1_score": -3,
                                "partial_fractions": "x,0.2", "requote_retries": 2.5})
    err = info.value
    assert err.details["field"] == "policy.bogus"
    assert err.details["errors"] == {
        "policy.bogus": "unknown setting",
        "policy.breakeven_r": "expected a number, got str 'abc'",
        "policy.partial_fractions": "expected a list of numbers, got str 'x,0.2'",
        "policy.requote_retries": "expected an integer, got float 2.5",
    }
    assert err.message.startswith("policy.bogus: unknown setting; policy.breakeven_r: ")


def test_resolve_policy_refuses_non_finite_numbers() -> None:
    assert _errors(POLICY, {"l1_score": math.nan, "breakeven_r": math.inf}) == {
        "policy.l1_score": "must be a finite number, got nan",
        "policy.breakeven_r": "must be a finite number, got inf",
    }


# == exact wire typing (issue 13 item 8) =======================================================

@pytest.mark.parametrize(("overrides", "errors"), [
    ({"l1_score": True}, {"policy.l1_score": "expected a number, got bool True"}),
    ({"hedge_ratio": False}, {"policy.hedge_ratio": "expected a number, got bool False"}),
    ({"breakeven_r": "1.5"}, {"policy.breakeven_r": "expected a number, got str '1.5'"}),
    ({"requote_retries": "5"}, {"policy.requote_retries": "expected an integer, got str '5'"}),
    ({"requote_retries": 3.0}, {"policy.requote_retries": "expected an integer, got float 3.0"}),
    ({"requote_retries": True}, {"policy.requote_retries": "expected an integer, got bool True"}),
    ({"partial_levels_r": "1.5,2.5", "partial_fractions": [0.2, 0.2]},
     {"policy.partial_levels_r": "expected a list of numbers, got str '1.5,2.5'"}),
    ({"partial_levels_r": [1.0, True], "partial_fractions": [0.2, 0.2]},
     {"policy.partial_levels_r": "expected a list of numbers, got bool True in it"}),
    ({"partial_levels_r": 1.5, "partial_fractions": [0.2]},
     {"policy.partial_levels_r": "expected a list of numbers, got float 1.5"}),
    ({"l2_close_repeat": 1}, {"policy.l2_close_repeat": "expected true/false, got int 1"}),
    ({"l2_close_repeat": "false"},
     {"policy.l2_close_repeat": "expected true/false, got str 'false'"}),
    ({"recovery_min": None}, {"policy.recovery_min": "expected a number, got NoneType None"}),
    ({"recovery_min": b"5"}, {"policy.recovery_min": "expected a number, got bytes b'5'"}),
    ({"recovery_min": {"a": 1}}, {"policy.recovery_min": "expected a number, got dict {'a': 1}"}),
])
def test_wire_values_are_typed_exactly_and_named(overrides: dict[str, Any],
                                                 errors: dict[str, str]) -> None:
    assert _errors(POLICY, overrides) == errors


@pytest.mark.parametrize(("overrides", "errors"), [
    ({"requote_retries": 2**63}, {"policy.requote_retries": f"must be in [0, 10], got {2**63}"}),
    ({"requote_retries": 11}, {"policy.requote_retries": "must be in [0, 10], got 11"}),
    ({"requote_retries": -1}, {"policy.requote_retries": "must be in [0, 10], got -1"}),
    ({"partial_levels_r": [-1], "partial_fractions": [0.9]},
     {"policy.partial_levels_r": "each must be > 0, got -1.0"}),
    ({"partial_levels_r": [0], "partial_fractions": [0.5]},
     {"policy.partial_levels_r": "each must be > 0, got 0.0"}),
    ({"partial_levels_r": [2.0, 1.0], "partial_fractions": [0.2, 0.2]},
     {"policy.partial_levels_r": "levels must be strictly increasing, got [2.0, 1.0]"}),
    ({"partial_levels_r": [1.0, 1.0], "partial_fractions": [0.2, 0.2]},
     {"policy.partial_levels_r": "levels must be strictly increasing, got [1.0, 1.0]"}),
    ({"partial_levels_r": [1.0], "partial_fractions": [1.5]},
     {"policy.partial_fractions": "each must be in (0, 1], got 1.5"}),
    ({"partial_levels_r": [1.0], "partial_fractions": [0]},
     {"policy.partial_fractions": "each must be in (0, 1], got 0.0"}),
    ({"partial_levels_r": [1.0, 2.0], "partial_fractions": [0.6, 0.5]},
     {"policy.partial_fractions":
      "fractions must sum to <= 1 (all of the initial volume), got 1.1"}),
    ({"l2_close_fraction": 0}, {"policy.l2_close_fraction": "must be in (0, 1], got 0.0"}),
    ({"hedge_ratio": 1.01}, {"policy.hedge_ratio": "must be in (0, 1], got 1.01"}),
    ({"flat_timer_min": -1}, {"policy.flat_timer_min": "must be >= 0, got -1.0"}),
    ({"time_stop_min": -0.5}, {"policy.time_stop_min": "must be >= 0, got -0.5"}),
    ({"l1_tighten_r": 0}, {"policy.l1_tighten_r": "must be > 0, got 0.0"}),
    ({"trail_atr_mult": -2}, {"policy.trail_atr_mult": "must be > 0, got -2.0"}),
    ({"retry_after_s": 0}, {"policy.retry_after_s": "must be > 0, got 0.0"}),
])
def test_every_key_has_a_bound_named_in_the_error(overrides: dict[str, Any],
                                                  errors: dict[str, str]) -> None:
    assert _errors(POLICY, overrides) == errors


def test_partial_fractions_without_levels_names_both_keys() -> None:
    reason = ("needs one policy.partial_fractions per policy.partial_levels_r: "
              "0 level(s), 1 fraction(s)")
    assert _errors(POLICY, {"partial_fractions": [0.5]}) == {
        "policy.partial_levels_r": reason, "policy.partial_fractions": reason}
    # against a configured ladder of two rungs: one fraction is one too few
    assert set(_errors(LADDER, {"partial_fractions": [0.5]})) == {
        "policy.partial_levels_r", "policy.partial_fractions"}
    # one fraction per configured level: fine
    assert resolve_policy(LADDER, {"partial_fractions": [0.5, 0.5]}).partial_fractions == (
        0.5, 0.5)


@pytest.mark.parametrize(("overrides", "keys"), [
    ({"l1_score": -5}, {"l1_score", "l2_score"}),                 # below l2 (-4)
    ({"l2_score": -7}, {"l2_score", "hedge_score"}),              # below hedge (-6)
    ({"hedge_score": -3}, {"hedge_score", "l2_score"}),           # above l2
    ({"l1_exit_score": -2}, {"l1_exit_score", "l1_score"}),       # == l1: flaps
    ({"l2_exit_score": -4.5}, {"l2_exit_score", "l2_score"}),     # below l2: flaps
])
def test_ladder_thresholds_keep_their_order(overrides: dict[str, Any], keys: set[str]) -> None:
    errors = _errors(POLICY, overrides)
    assert set(errors) == {f"policy.{k}" for k in keys}
    assert len(set(errors.values())) == 1   # one rule, named under each of its keys


def test_a_consistent_set_of_thresholds_is_accepted() -> None:
    p = resolve_policy(POLICY, {"l1_score": -1, "l2_score": -3, "hedge_score": -3,
                                "l1_exit_score": 0.5, "l2_exit_score": -1})
    assert (p.hedge_score, p.l2_score, p.l1_score) == (-3.0, -3.0, -1.0)


def test_every_policy_field_has_a_bound_and_a_row_in_the_modules_table() -> None:
    fields = [f.name for f in dataclasses.fields(PolicySettings)]
    assert set(BOUNDS) == set(fields)
    table = overrides.__doc__.split("bound\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.split()[0] for line in table.splitlines() if line and line[0] != "="]
    assert rows == fields
    assert policy_problems(POLICY) == {}


# == property: anything accepted is within bounds ==============================================

_KEYS = [f.name for f in dataclasses.fields(PolicySettings)]
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
            | st.binary(max_size=4))
_NUMBERS = st.integers(min_value=-5, max_value=5) | st.floats(min_value=-3, max_value=3)
_VALUES = (_SCALARS | st.lists(_NUMBERS, max_size=4) | st.lists(_SCALARS, max_size=3)
           | st.dictionaries(st.text(max_size=3), _SCALARS, max_size=2)
           | st.floats(min_value=0, max_value=1) | st.integers(min_value=0, max_value=12))
_JUNK_MAPS = st.dictionaries(
    st.sampled_from(_KEYS) | st.sampled_from(["bogus", "", "L1_SCORE"]), _VALUES, max_size=6)


def _plausible(key: str) -> st.SearchStrategy[Any]:
    """Values near the bounds, so that many maps are accepted and the edges are tried."""
    kind = type(getattr(POLICY, key))
    if kind is bool:
        return st.booleans()
    if kind is str:
        return st.sampled_from([*overrides.CHOICES[key], "LIVE", "dry-run"])
    if kind is int:
        return st.integers(min_value=-1, max_value=11)
    if kind is tuple:
        item = (st.floats(min_value=-0.2, max_value=0.7) if key == "partial_fractions"
                else st.floats(min_value=-1, max_value=4) | st.integers(min_value=-1, max_value=4))
        return st.lists(item, max_size=4)
    return st.floats(min_value=-8, max_value=8) | st.integers(min_value=-8, max_value=8)


_PLAUSIBLE_MAPS = st.lists(st.sampled_from(_KEYS).flatmap(
    lambda k: st.tuples(st.just(k), _plausible(k))), max_size=5).map(dict)
_MAPS = _JUNK_MAPS | _PLAUSIBLE_MAPS


def _within_bounds(p: PolicySettings) -> None:
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        assert type(v) is type(getattr(POLICY, f.name)), f.name
        if isinstance(v, str):
            assert v in overrides.CHOICES[f.name], (f.name, v)
            continue
        for x in v if isinstance(v, tuple) else () if isinstance(v, bool) else (v,):
            assert math.isfinite(x) and BOUNDS[f.name].holds(x), (f.name, v)
    for low, high, strict in ORDER:
        a, b = getattr(p, low), getattr(p, high)
        assert a < b if strict else a <= b, (low, high)


@settings(max_examples=600, deadline=None)
@given(base=st.sampled_from([POLICY, LADDER]), overrides=_MAPS)
def test_any_map_is_accepted_within_bounds_or_refused_naming_each_bad_key(
        base: PolicySettings, overrides: dict[str, Any]) -> None:
    try:
        p = resolve_policy(base, overrides)
    except InvalidArgument as exc:
        named = set(exc.details["errors"])
        assert named and all(k.startswith("policy.") for k in named)
        # each key named is one the map gave, or the other key of a rule the map broke
        for key in named:
            bare = key.removeprefix("policy.")
            assert bare in overrides or any(bare in (lo, hi) for lo, hi, _ in ORDER) or (
                bare in ("partial_levels_r", "partial_fractions"))
        # a key left out of the error is fine on its own: applying it alone is accepted
        for key, value in overrides.items():
            if f"policy.{key}" not in named and key in BOUNDS and key not in (
                    "partial_levels_r", "partial_fractions") and not any(
                    key in (lo, hi) for lo, hi, _ in ORDER):
                resolve_policy(base, {key: value})
        return
    _within_bounds(p)
    # the profit ladder never closes more than the whole trade, nor at a level <= 0
    assert len(p.partial_levels_r) == len(p.partial_fractions)
    assert math.fsum(p.partial_fractions) <= 1 + 1e-9
    assert all(level > 0 for level in p.partial_levels_r)
    assert list(p.partial_levels_r) == sorted(set(p.partial_levels_r))


# == a stored trade's policy ==================================================================

@pytest.mark.parametrize(("stored", "kept", "dropped"), [
    ({}, {}, set()),
    ({"breakeven_r": 0.5}, {"breakeven_r": 0.5}, set()),
    # stored before the wire was typed exactly: strings as numbers
    ({"breakeven_r": "1.5", "trail_atr_mult": 3.0}, {"trail_atr_mult": 3.0},
     {"policy.breakeven_r"}),
    # the negative rung of issue 13: both ladder keys go, the configured (empty) ladder applies
    ({"partial_levels_r": [-1], "partial_fractions": [0.9], "l1_score": -3.0},
     {"l1_score": -3.0}, {"policy.partial_levels_r", "policy.partial_fractions"}),
    ({"bogus": 1}, {}, {"policy.bogus"}),
])
def test_a_stored_policy_keeps_its_valid_keys_and_falls_back_for_the_refused(stored, kept,
                                                                             dropped) -> None:
    policy, problems = salvage_policy(POLICY, stored)
    assert set(problems) == dropped
    assert policy == resolve_policy(POLICY, kept)
