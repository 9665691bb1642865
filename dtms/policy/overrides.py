"""A trade's ``policy`` map: exact wire typing and the bounds of every rule parameter.

This module owns what a client may put in a registration's ``policy`` map and what any policy
(the ``[policy]`` section of the config file included) must satisfy. It is pure.

* :func:`typing_problems` -- each wire value typed *exactly*: a bool is not a number, a string is
  never a number or a list, an int is fine for a float field, a float is refused for an int
  field (even ``3.0``: counts are integers on the wire), a list (at most 32 numbers) for a ladder.
  Unknown keys are refused. Nothing is coerced (the TOML/env coercion of ``dtms.config`` is for
  text sources, not for the wire).
* :func:`policy_problems` -- the bounds of one whole policy, per key and across keys.
* :func:`resolve_policy` -- the settings with a trade's map applied, or one InvalidArgument
  naming every bad ``policy.<key>`` with its bound.

=========================  ================  ================================================
key                        type              bound
=========================  ================  ================================================
l1_score                   number            finite; hedge_score <= l2_score <= l1_score
l2_score                   number            finite; see l1_score
hedge_score                number            finite; see l1_score
l1_exit_score              number            finite; > l1_score (hysteresis: no flapping)
l2_exit_score              number            finite; > l2_score
recovery_score             number            finite
flat_timer_min             number            >= 0 (minutes)
recovery_min               number            >= 0 (minutes)
l1_tighten_r               number            > 0 (0 would put the stop at the price)
l2_close_fraction          number            in (0, 1]
hedge_ratio                number            in (0, 1]
breakeven_r                number            >= 0
breakeven_buffer_spreads   number            >= 0
trail_activation_r         number            >= 0
trail_atr_mult             number            > 0
trail_step_points          number            >= 0
partial_levels_r           list of numbers   each > 0, strictly increasing; one per fraction
partial_fractions          list of numbers   each in (0, 1], sum <= 1; one per level
time_stop_min              number            >= 0 (minutes; 0 = off)
score_cooldown_s           number            >= 0
requote_retries            integer           0..10
retry_after_s              number            > 0 (0 would resend a failed action at every tick)
l2_close_repeat            bool              true / false
mode                       string            "live" or "shadow" (decide and journal, never send)
attach_sl_atr              number            >= 0 (ATRs; the floor of a trade without an SL)
attach_sl_points           number            >= 0 (points; 0 = use attach_sl_atr; both 0: off)
max_loss_r                 number            >= 0 (R; 0 = off)
max_spread_mult            number            >= 0 (x the median spread; 0 = off)
=========================  ================  ================================================

Every number must be finite. The two ladder lists are checked after merging with the
configured ladder: overriding ``partial_fractions`` alone is fine when it has one fraction per
configured level, otherwise the error names both keys. Cross-key bounds are checked on the
merged policy and reported under every key of the rule when the map touches any of them.

Example::

    >>> resolve_policy(PolicySettings(), {"partial_levels_r": [-1], "partial_fractions": [0.9]})
    Traceback (most recent call last):
    dtms.errors.InvalidArgument: policy.partial_levels_r: each must be > 0, got -1.0
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dtms.config import PolicySettings
from dtms.errors import InvalidArgument

#: a ladder longer than this is a mistake (SPEC: the registration limits lists to 32)
MAX_LADDER = 32
#: the sum of the fractions may exceed 1 by rounding only
_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class Bound:
    """A closed or open interval for one number (or each number of a list)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def holds(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or v <= self.high

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"<= {self.high:g}"
        return "finite"


_ANY = Bound()
_NON_NEGATIVE = Bound(low=0)
_POSITIVE = Bound(low=0, low_open=True)
_FRACTION = Bound(low=0, high=1, low_open=True)

#: key -> bound of each value (types come from PolicySettings' annotations)
BOUNDS: dict[str, Bound] = {
    "l1_score": _ANY, "l2_score": _ANY, "hedge_score": _ANY, "l1_exit_score": _ANY,
    "l2_exit_score": _ANY, "recovery_score": _ANY,
    "flat_timer_min": _NON_NEGATIVE, "recovery_min": _NON_NEGATIVE,
    "l1_tighten_r": _POSITIVE, "l2_close_fraction": _FRACTION, "hedge_ratio": _FRACTION,
    "breakeven_r": _NON_NEGATIVE, "breakeven_buffer_spreads": _NON_NEGATIVE,
    "trail_activation_r": _NON_NEGATIVE, "trail_atr_mult": _POSITIVE,
    "trail_step_points": _NON_NEGATIVE,
    "partial_levels_r": _POSITIVE, "partial_fractions": _FRACTION,
    "time_stop_min": _NON_NEGATIVE, "score_cooldown_s": _NON_NEGATIVE,
    "requote_retries": Bound(low=0, high=10), "retry_after_s": _POSITIVE,
    "l2_close_repeat": _ANY, "mode": _ANY,
    "attach_sl_atr": _NON_NEGATIVE, "attach_sl_points": _NON_NEGATIVE,
    "max_loss_r": _NON_NEGATIVE, "max_spread_mult": _NON_NEGATIVE,
}
#: key -> the only strings it may be
CHOICES: dict[str, tuple[str, ...]] = {"mode": ("live", "shadow")}
TYPES: dict[str, Any] = typing.get_type_hints(PolicySettings)
#: (lower key, higher key, strict): the ladder's thresholds must keep this order
ORDER: tuple[tuple[str, str, bool], ...] = (
    ("hedge_score", "l2_score", False),
    ("l2_score", "l1_score", False),
    ("l1_score", "l1_exit_score", True),
    ("l2_score", "l2_exit_score", True),
)
_LADDER = ("partial_levels_r", "partial_fractions")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _typed(key: str, value: Any) -> Any:
    """The value as the field's type, or raise ValueError with the reason (no coercion)."""
    kind = TYPES[key]
    if kind is str:
        if not isinstance(value, str) or value not in CHOICES[key]:
            raise ValueError(f"must be one of {', '.join(map(repr, CHOICES[key]))}, got "
                             f"{type(value).__name__} {_show(value)}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {type(value).__name__} {_show(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type(value).__name__} {_show(value)}")
        return value
    if kind is float:
        if not _is_number(value):
            raise ValueError(f"expected a number, got {type(value).__name__} {_show(value)}")
        return float(value)
    # tuple[float, ...]
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of numbers, got {type(value).__name__} "
                         f"{_show(value)}")
    if len(value) > MAX_LADDER:
        raise ValueError(f"at most {MAX_LADDER} entries, got {len(value)}")
    for v in value:
        if not _is_number(v):
            raise ValueError(f"expected a list of numbers, got {type(v).__name__} {_show(v)} "
                             "in it")
    return tuple(float(v) for v in value)


def typing_problems(overrides: Mapping[Any, Any]) -> dict[str, str]:
    """``policy.<key>`` -> reason for every unknown key or wrongly typed value."""
    problems: dict[str, str] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or key not in TYPES:
            problems[f"policy.{key}"] = "unknown setting"
            continue
        try:
            _typed(key, value)
        except ValueError as exc:
            problems[f"policy.{key}"] = str(exc)
    return problems


def _value_problem(key: str, value: Any) -> str | None:
    bound = BOUNDS[key]
    if isinstance(value, str):
        choices = CHOICES[key]
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}, " \
                                             f"got {value!r}"
    if isinstance(value, bool):
        return None
    values = value if isinstance(value, tuple) else (value,)
    each = "each " if isinstance(value, tuple) else ""
    for v in values:
        if not math.isfinite(v):
            return f"{each}must be a finite number, got {v!r}"
        if not bound.holds(v):
            return f"{each}must be {bound}, got {v!r}"
    return None


def _cross_problems(p: PolicySettings) -> list[tuple[tuple[str, ...], str]]:
    """The bounds across keys: (the keys involved, the reason)."""
    out: list[tuple[tuple[str, ...], str]] = []
    for low, high, strict in ORDER:
        a, b = getattr(p, low), getattr(p, high)
        if (a >= b) if strict else (a > b):
            out.append(((low, high), f"policy.{low} ({a:g}) must be {'<' if strict else '<='} "
                                     f"policy.{high} ({b:g})"))
    levels, fractions = p.partial_levels_r, p.partial_fractions
    if len(levels) != len(fractions):
        out.append((_LADDER, f"needs one policy.partial_fractions per policy.partial_levels_r: "
                             f"{len(levels)} level(s), {len(fractions)} fraction(s)"))
    if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        out.append((("partial_levels_r",), f"levels must be strictly increasing, got "
                                           f"{list(levels)}"))
    total = math.fsum(fractions)
    if total > 1 + _SUM_TOLERANCE:
        out.append((("partial_fractions",), f"fractions must sum to <= 1 (all of the initial "
                                            f"volume), got {total:g}"))
    return out


def _key_problems(p: PolicySettings) -> dict[str, str]:
    problems: dict[str, str] = {}
    for f in dataclasses.fields(p):
        reason = _value_problem(f.name, getattr(p, f.name))
        if reason is not None:
            problems[f.name] = reason
    return problems


def _with_cross(problems: dict[str, str], p: PolicySettings, *, skip: set[str],
                touching: set[str] | None) -> dict[str, str]:
    """``problems`` plus each cross-key rule broken, under each of its keys; rules on a key in
    ``problems`` or ``skip`` are left out (that key's own reason says more); with ``touching``,
    only rules on one of those keys."""
    out = dict(problems)
    for keys, reason in _cross_problems(p):
        if set(keys) & (problems.keys() | skip):
            continue
        if touching is not None and not set(keys) & touching:
            continue
        for k in keys:
            out[k] = f"{out[k]}; {reason}" if k in out else reason
    return out


def policy_problems(p: PolicySettings) -> dict[str, str]:
    """key -> reason for every bound the policy breaks (empty when none)."""
    return _with_cross(_key_problems(p), p, skip=set(), touching=None)


def resolve_policy(base: PolicySettings, overrides: Mapping[str, Any]) -> PolicySettings:
    """The policy for one trade: ``base`` with its registration's ``policy`` map applied.

    Raises InvalidArgument naming every bad key as ``policy.<key>``, with its bound; a bound
    across keys is named under each of its keys when the map touches any of them.
    """
    if not overrides:
        return base
    typing = typing_problems(overrides)
    typed = {k: _typed(k, v) for k, v in overrides.items() if f"policy.{k}" not in typing}
    policy = dataclasses.replace(base, **typed)
    own = {k: r for k, r in _key_problems(policy).items() if k in typed}
    bad_type = {k for k in overrides if f"policy.{k}" in typing}
    problems = _with_cross(own, policy, skip=bad_type, touching=set(typed))
    named = {**typing, **{f"policy.{k}": r for k, r in problems.items()}}
    if named:
        raise InvalidArgument.many(named)
    return policy


def salvage_policy(base: PolicySettings, overrides: Mapping[str, Any]
                   ) -> tuple[PolicySettings, dict[str, str]]:
    """The policy of a trade that is already stored: like :func:`resolve_policy`, but a key
    this version refuses (a map stored before the wire was typed exactly, or a ``[policy]``
    changed since) falls back to ``base`` instead of refusing the trade, which would leave it
    unmanaged. Returns the policy and what was dropped (``policy.<key>`` -> reason), for the
    caller to log.
    """
    kept = dict(overrides)
    dropped: dict[str, str] = {}
    while True:   # each round drops at least one key, so it ends with ``base`` at worst
        try:
            return resolve_policy(base, kept), dropped
        except InvalidArgument as exc:
            named = exc.details.get("errors") or {exc.details["field"]: exc.message}
            dropped.update(named)
            bad = {k for k in kept if f"policy.{k}" in named}
            if not bad:
                return base, dropped
            kept = {k: v for k, v in kept.items() if k not in bad}


__all__ = ["BOUNDS", "CHOICES", "ORDER", "policy_problems", "resolve_policy", "salvage_policy",
           "typing_problems"]
