"""From an action intent to a concrete MT5 ``order_send`` request, and what a retcode means.

This module owns the last pure step before the terminal: it applies the symbol's constraints
(price grid, ``trade_stops_level``, ``trade_freeze_level``, volume min/max/step, filling mode)
so that a request is one a strict trade server accepts, and classes the server's answer. The
trade actor fills a :class:`Target` from its ``Trade`` and the latest ``Position``, sends
``Request.fields`` and acts on :func:`classify`. No I/O, no clock.

``build_request`` answers one of three things:

* :class:`Request` - send ``fields``; ``note`` says what was adjusted and why;
* :class:`Deferred` - the server would refuse now (freeze band); re-evaluate when the reference
  price (bid for a BUY, ask for a SELL) crosses ``resume_above`` / ``resume_below``, do not
  spam the server meanwhile;
* :class:`Skipped` - nothing worth sending (no change, would loosen a stop, below volume_min).

Example::

    r = build_request(ActionIntent(ActionKind.PARTIAL_CLOSE, "L2:partial", "score -4",
                                   volume=0.185), target, eurusd, tick,
                      magic=770001, comment="dtms#5/3", deviation=20)
    r.fields["volume"], r.fields["type"]    # 0.18, 1 (ORDER_TYPE_SELL closes a BUY)
    classify(10009, ActionKind.PARTIAL_CLOSE)  # RetcodeClass.SUCCESS
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from dtms.model import ActionIntent, ActionKind, Direction, SymbolSpec, Tick

# MetaTrader5 constants (same values as the MetaTrader5 package; dtms.brokers.sim.constants)
TRADE_ACTION_DEAL = 1
TRADE_ACTION_SLTP = 6
ORDER_TYPE_BUY = 0
ORDER_TYPE_SELL = 1
ORDER_FILLING_FOK = 0
ORDER_FILLING_IOC = 1
ORDER_FILLING_RETURN = 2
ORDER_TIME_GTC = 0
SYMBOL_FILLING_FOK = 1
SYMBOL_FILLING_IOC = 2
COMMENT_MAX = 31  # MT5 silently truncates longer comments; we do it visibly

_EPS = 1e-9


class RetcodeClass(enum.StrEnum):
    SUCCESS = "success"
    RETRY = "retry"          # resend with a fresh price
    UNCERTAIN = "uncertain"  # the outcome is unknown: reconcile with the broker before any resend
    FIX = "fix"              # the request itself is wrong for the server: rebuild, do not resend
    GIVE_UP = "give_up"      # nothing we can do now


_SUCCESS = frozenset({10009, 10010, 10008})         # DONE, DONE_PARTIAL, PLACED
_RETRY = frozenset({10004, 10020, 10021})           # REQUOTE, PRICE_CHANGED, PRICE_OFF
_UNCERTAIN = frozenset({10012, 10031, 10011})       # TIMEOUT, CONNECTION, ERROR
_FIX = frozenset({10014, 10015, 10016, 10029, 10030, 10038})  # VOLUME/PRICE/STOPS, FROZEN, FILL
NO_CHANGES = 10025


def classify(retcode: int | None, kind: ActionKind) -> RetcodeClass:
    """What to do after ``order_send`` answered ``retcode`` for an action of ``kind``.

    ``None`` (order_send returned nothing) is UNCERTAIN: the request may have reached the server.
    10025 NO_CHANGES means a modify already holds (SUCCESS); for a deal it means the request is
    malformed (FIX). Every other or unknown code - 10017/10018/10019/10027/10036 and anything we
    have not listed - is GIVE_UP: never resend on an answer we do not understand.
    """
    if retcode is None:
        return RetcodeClass.UNCERTAIN
    if retcode in _SUCCESS:
        return RetcodeClass.SUCCESS
    if retcode == NO_CHANGES:
        return RetcodeClass.SUCCESS if kind is ActionKind.MODIFY_SL else RetcodeClass.FIX
    if retcode in _RETRY:
        return RetcodeClass.RETRY
    if retcode in _UNCERTAIN:
        return RetcodeClass.UNCERTAIN
    if retcode in _FIX:
        return RetcodeClass.FIX
    return RetcodeClass.GIVE_UP


@dataclass(frozen=True, slots=True)
class Target:
    """What a request acts on; the trade actor fills it from its Trade and latest Position."""
    ticket: int
    symbol: str
    direction: Direction
    volume: float
    sl: float
    tp: float
    hedge_ticket: int = 0
    hedge_volume: float = 0.0
    hedging_account: bool = True


@dataclass(frozen=True, slots=True)
class Request:
    fields: dict[str, Any]  # the order_send dict
    volume: float
    full_close: bool = False
    note: str = ""


@dataclass(frozen=True, slots=True)
class Deferred:
    """The server would refuse now; re-evaluate when the reference price (bid for a BUY, ask
    for a SELL) crosses one of the levels."""
    reason: str
    resume_above: float | None = None
    resume_below: float | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: str


Outcome = Request | Deferred | Skipped


def build_request(intent: ActionIntent, target: Target, spec: SymbolSpec, tick: Tick, *,
                  magic: int, comment: str, deviation: int, loosen: bool = False) -> Outcome:
    """The order_send request for ``intent`` on ``target``, or why none should be sent now.
    ``loosen``: a person's forced modify (``modify`` with ``force``) may move the stop away."""
    common = {"symbol": target.symbol, "magic": int(magic), "comment": comment[:COMMENT_MAX],
              "deviation": int(deviation), "type_time": ORDER_TIME_GTC}
    kind = intent.kind
    if kind is ActionKind.MODIFY_SL:
        return _modify_sl(intent.sl, target, spec, tick, common, tp=intent.tp, loosen=loosen)
    if kind is ActionKind.PARTIAL_CLOSE:
        return _reduce(intent.volume, target, spec, tick, common, "")
    if kind is ActionKind.CLOSE:
        return _close(target.ticket, target.direction, target.volume, spec, tick, common, "trade")
    if kind is ActionKind.HEDGE:
        if not target.hedging_account:
            return _reduce(intent.volume, target, spec, tick, common,
                           "netting account: hedge becomes a reduction")
        return _hedge(intent.volume, target, spec, tick, common)
    if kind is ActionKind.CLOSE_HEDGE:
        if not target.hedge_ticket:
            return Skipped("no hedge position to close")
        return _close(target.hedge_ticket, _opposite(target.direction), target.hedge_volume,
                      spec, tick, common, "hedge")
    raise ValueError(f"unknown action kind {kind!r}")


# -- prices ------------------------------------------------------------------------------------

def _price(spec: SymbolSpec, value: float) -> float:
    """On the point grid, rounded to digits (the server refuses off-grid prices with 10016)."""
    return round(round(value / spec.point) * spec.point, spec.digits)


def _fmt(spec: SymbolSpec, value: float) -> str:
    return f"{value:.{spec.digits}f}"


def _points(spec: SymbolSpec, distance: float) -> float:
    return distance / spec.point


def _modify_sl(wanted: float, t: Target, spec: SymbolSpec, tick: Tick,
               common: dict[str, Any], *, tp: float = 0.0, loosen: bool = False) -> Outcome:
    buy = t.direction is Direction.BUY
    sign = 1.0 if buy else -1.0   # + = in the trade's favour for a stop
    ref = tick.bid if buy else tick.ask
    ref_name = "bid" if buy else "ask"
    new = _price(spec, wanted)
    cur = _price(spec, t.sl) if t.sl > 0 else 0.0
    new_tp = _price(spec, tp) if tp > 0 else (_price(spec, t.tp) if t.tp > 0 else 0.0)
    if new <= 0:
        return Skipped("removing the stop would loosen it")
    if cur and sign * _points(spec, new - cur) < -0.5 and not loosen:
        return Skipped(f"sl {_fmt(spec, new)} is worse than the current {_fmt(spec, cur)}; "
                       "a stop never loosens")
    if new == cur and new_tp == (_price(spec, t.tp) if t.tp > 0 else 0.0):
        return Skipped("no change")
    if loosen:
        cur = 0.0   # forced: no comparison with the current stop below

    deferred = _sltp_blocked(t, spec, tick, sign, ref)
    if deferred is not None:
        return deferred

    # the strict server wants more than stops_level points between the stop and the price
    limit = _price(spec, ref - sign * (spec.stops_level + 1) * spec.point)
    note = ""
    if sign * _points(spec, limit - new) < -0.5:
        note = (f"sl moved from {_fmt(spec, new)} to {_fmt(spec, limit)} to respect stops_level "
                f"{spec.stops_level} ({ref_name} {_fmt(spec, ref)})")
        new = limit
        if cur and sign * _points(spec, new - cur) < 0.5:
            return Skipped(f"{note}: no longer an improvement over the current sl "
                           f"{_fmt(spec, cur)}")
    fields = {"action": TRADE_ACTION_SLTP, "position": t.ticket, "sl": new, "tp": new_tp,
              **common}
    return Request(fields=fields, volume=t.volume, note=note)


def _sltp_blocked(t: Target, spec: SymbolSpec, tick: Tick, sign: float,
                  ref: float) -> Deferred | None:
    """Deferred when the server would refuse any SLTP modify of this position at this price.

    The current sl inside the freeze band -> 10029 FROZEN. The tp we keep is checked like a new
    level, so inside max(freeze, stops) it fails too (10029 or 10016): wait until it is out of
    both. Levels are in the reference price (bid for a BUY, ask for a SELL), as the market
    actor watches them: converting a SELL's to bid levels would bake in today's spread.
    """
    above: float | None = None
    below: float | None = None
    reasons = []
    frozen_sl = t.sl > 0 and sign * _points(spec, ref - t.sl) <= spec.freeze_level + 1e-6
    if spec.freeze_level > 0 and frozen_sl:
        # the reference must move away from the sl by more than freeze_level points
        level = _price(spec, t.sl + sign * (spec.freeze_level + 1) * spec.point)
        reasons.append(f"sl {_fmt(spec, t.sl)} is within freeze_level {spec.freeze_level}")
        above, below = (level, None) if sign > 0 else (None, level)
    band = max(spec.freeze_level, spec.stops_level)
    if t.tp > 0 and sign * _points(spec, t.tp - ref) <= band + 1e-6:
        level = _price(spec, t.tp - sign * (band + 1) * spec.point)
        reasons.append(f"tp {_fmt(spec, t.tp)} is within max(freeze_level, stops_level) {band}")
        if sign > 0:
            below = level
        else:
            above = level
    if not reasons:
        return None
    return Deferred(f"{'; '.join(reasons)} of the price: the server would refuse the modify",
                    resume_above=above, resume_below=below)


# -- volumes -----------------------------------------------------------------------------------

def _step_decimals(step: float) -> int:
    for d in range(12):
        if abs(round(step, d) - step) < 1e-12:
            return d
    return 12


def _floor_step(volume: float, spec: SymbolSpec) -> float:
    """Down to a multiple of volume_step; the epsilon keeps 0.3/0.1 = 2.9999... at 3 steps."""
    step = spec.volume_step
    return round(math.floor(volume / step + _EPS) * step, _step_decimals(step))


def _filling(spec: SymbolSpec) -> int:
    if spec.filling_mode & SYMBOL_FILLING_FOK:
        return ORDER_FILLING_FOK
    if spec.filling_mode & SYMBOL_FILLING_IOC:
        return ORDER_FILLING_IOC
    return ORDER_FILLING_RETURN


def _opposite(direction: Direction) -> Direction:
    return Direction.SELL if direction is Direction.BUY else Direction.BUY


def _deal(side: Direction, volume: float, spec: SymbolSpec, tick: Tick, common: dict[str, Any],
          position: int = 0) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "action": TRADE_ACTION_DEAL,
        "type": ORDER_TYPE_BUY if side is Direction.BUY else ORDER_TYPE_SELL,
        "volume": volume,
        "price": _price(spec, tick.ask if side is Direction.BUY else tick.bid),
        "type_filling": _filling(spec), **common}
    if position:
        fields["position"] = position
    return fields


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _reduce(wanted: float, t: Target, spec: SymbolSpec, tick: Tick, common: dict[str, Any],
            note: str) -> Outcome:
    """Close part of the trade; a full close when the rest would fall below volume_min."""
    volume = _floor_step(wanted, spec)
    if volume < spec.volume_min - _EPS or volume <= 0:
        return Skipped(_join(note, f"volume {wanted:g} floors to {volume:g}, below volume_min "
                                   f"{spec.volume_min:g}"))
    if volume != wanted:
        note = _join(note, f"volume floored from {wanted:g} to {volume:g} (step "
                           f"{spec.volume_step:g})")
    if t.volume - volume < spec.volume_min - _EPS:
        return _close(t.ticket, t.direction, t.volume, spec, tick, common, "trade",
                      _join(note, f"remainder {max(t.volume - volume, 0.0):g} would be below "
                                  f"volume_min {spec.volume_min:g}: full close"))
    if volume > spec.volume_max + _EPS:
        volume = _floor_step(spec.volume_max, spec)
        note = _join(note, f"capped at volume_max {spec.volume_max:g}")
    return Request(_deal(_opposite(t.direction), volume, spec, tick, common, t.ticket), volume,
                   note=note)


def _close(ticket: int, direction: Direction, held: float, spec: SymbolSpec, tick: Tick,
           common: dict[str, Any], what: str, note: str = "") -> Outcome:
    """Close the whole position ``ticket`` (of ``direction``); volume_max per request."""
    volume = _floor_step(held, spec)
    if volume < spec.volume_min - _EPS or volume <= 0:
        return Skipped(_join(note, f"{what} volume {held:g} is below volume_min "
                                   f"{spec.volume_min:g}"))
    full = True
    if volume > spec.volume_max + _EPS:
        volume, full = _floor_step(spec.volume_max, spec), False
        note = _join(note, f"closing volume_max {volume:g} of {held:g}; the rest remains")
    return Request(_deal(_opposite(direction), volume, spec, tick, common, ticket), volume,
                   full_close=full, note=note)


def _hedge(wanted: float, t: Target, spec: SymbolSpec, tick: Tick,
           common: dict[str, Any]) -> Outcome:
    """A new opposite position (hedging account), without SL/TP."""
    if wanted <= 0:
        return Skipped("hedge volume must be > 0")
    volume = _floor_step(wanted, spec)
    note = ""
    if volume < spec.volume_min - _EPS:
        if spec.volume_min > t.volume + _EPS:
            return Skipped(f"hedge volume {wanted:g} is below volume_min {spec.volume_min:g}, "
                           f"which exceeds the trade's {t.volume:g}")
        volume = spec.volume_min
        note = f"hedge volume raised from {wanted:g} to volume_min {volume:g}"
    elif volume != wanted:
        note = f"volume floored from {wanted:g} to {volume:g} (step {spec.volume_step:g})"
    if volume > spec.volume_max + _EPS:
        volume = _floor_step(spec.volume_max, spec)
        note = _join(note, f"capped at volume_max {spec.volume_max:g}")
    return Request(_deal(_opposite(t.direction), volume, spec, tick, common), volume, note=note)
