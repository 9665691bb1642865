"""The trade lifecycle: (trade, market snapshot, policy) -> (new trade, intents, watch).

This module owns every decision DTMS takes about one trade: the defensive ladder of SPEC
section 5 (HEALTHY -> WARNING_L1 -> WARNING_L2 -> HEDGED -> RECOVERING, with hysteresis and
timers) and profit protection while HEALTHY (breakeven, ATR trailing, a partial-profit ladder, a
time stop). It is pure: no clock (``Snapshot.now`` is the market's time), no I/O.

Exactly once starts here. Each intent names the *obligation* it fulfils (``"sl:L1"``,
``"L2:partial"``, ``"hedge"``...). ``decide`` marks an obligation ``pending`` in the trade it
returns and never emits an intent for an obligation that is pending, done or skipped; the trade
actor journals the trade and the intent in one commit before sending, then records the outcome
(``done``, ``failed``, ``deferred``, ``skipped``). Failed and deferred obligations are offered
again while the trade stays in that state; on a state change they are dropped (a new episode
owes new duties) except the lifetime ones, which a state change never resets:

- the cuts: the WARNING_L2 partial close (``L2:partial``; with ``policy.l2_close_repeat`` it is
  owed again at every re-entry into WARNING_L2) and the hedge (``hedge``: once per trade, always;
  a trade that declines again after a recovery has its L2 stop and the flat timer, not a second
  hedge), and each partial-profit rung (``partial:<i>``);
- breakeven (``sl:breakeven``);
- a close ordered from outside the policy (``guard:close`` by the account guard,
  ``request:close`` by a person's ``close``/``flatten``): a position is closed once.

Stop tightening (``sl:L1``, ``sl:L2``) is per episode: it is offered again at each entry, which
costs nothing, as a stop is only ever moved tighter. A lifetime cut that never filled (failed,
deferred) stays owed and is offered at the next entry into its state.

Example::

    d = decide(trade, Snapshot(now=t, bid=1.0842, ask=1.0843, spec=eurusd, hedging=True,
                               atr=0.0008, score=score), settings.policy)
    d.trade.state, [i.kind for i in d.intents], d.watch

Scores are trade-relative (positive = good for the trade); thresholds are scaled by the
regime's ``threshold_scale`` (so a quiet session needs a worse score to act). One evaluation
moves at most one rung of the ladder. "Structure resumes the trade's direction" (HEDGED ->
RECOVERING) means a new event: a BOS/CHOCH the trade's way on an M15 bar that closed after the
trade was hedged (``Score.structure_closed_at > state_since``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dtms.config import PolicySettings
from dtms.model import ActionIntent, ActionKind, Direction, SymbolSpec, Trade, TradeState

if TYPE_CHECKING:
    from dtms.policy.signals import Score

PENDING, DONE, FAILED, DEFERRED, SKIPPED, RETRY, SHADOW = (
    "pending", "done", "failed", "deferred", "skipped", "retry", "shadow")
#: outcomes after which the obligation is not offered again (deferred: until the actor sees
#: the price leave the band and marks it RETRY; failed: until ``retry_after_s`` has passed;
#: shadow: journaled in shadow mode, until the trade goes live, see ``dtms.policy.shadow``)
SETTLED = frozenset({PENDING, DONE, SKIPPED, DEFERRED, SHADOW})


def failed(at: float) -> str:
    """The status of an obligation whose action failed at market time ``at``."""
    return f"{FAILED}:{at:.0f}"
#: obligations that live as long as the trade (not reset by a state change); see the docstring
LIFETIME_KEYS = frozenset({"sl:breakeven", "L2:partial", "hedge",
                           # closes ordered by the account guard or a person (``trade.Act``)
                           "guard:close", "request:close"})
LIFETIME_PREFIXES = ("partial:",)
#: the broker-side floor: the stop attached to a trade registered without one
FLOOR = "sl:floor"


def lifetime(key: str, policy: PolicySettings) -> bool:
    """Is obligation ``key`` owed once per trade (else once per episode of its state)?"""
    if key == "L2:partial" and policy.l2_close_repeat:
        return False
    return key in LIFETIME_KEYS or key.startswith(LIFETIME_PREFIXES)


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float            # market time, epoch seconds (the broker's clock)
    bid: float
    ask: float
    spec: SymbolSpec
    hedging: bool         # hedging account (else netting: a hedge is a reduction)
    atr: float = 0.0      # ATR of the scoring timeframe, price units; 0 = unknown
    score: Score | None = None  # a fresh score (a bar closed), else None (a price event)
    median_spread: float = 0.0  # the symbol's recent median spread, price units; 0 = unknown


@dataclass(frozen=True, slots=True)
class Watch:
    """When to evaluate this trade again: its closing price at/above ``above`` or at/below
    ``below``, or market time at ``at``. A BUY closes at the bid, a SELL at the ask: a SELL's
    levels are ask levels (``ask=True``), compared with the ask of each tick, never converted
    with the spread of the moment they were decided (the spread changes). ``ask`` is False
    when there are no levels (a time has no side)."""
    above: float | None = None
    below: float | None = None
    at: float | None = None
    ask: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    trade: Trade
    intents: tuple[ActionIntent, ...]
    transition: tuple[str, str, str] | None   # (from, to, reason)
    watch: Watch


def _sign(direction: Direction) -> float:
    return 1.0 if direction is Direction.BUY else -1.0


def _better(direction: Direction, new: float, old: float) -> bool:
    """Is stop ``new`` tighter (in the trade's favour) than ``old``? No stop (0) is worst."""
    if old <= 0:
        return new > 0
    return new > old if direction is Direction.BUY else new < old


class _Plan:
    """Accumulates one evaluation's changes; obligations are marked pending as they are owed."""

    def __init__(self, trade: Trade, snap: Snapshot, policy: PolicySettings) -> None:
        self.trade = trade
        self.snap = snap
        self.policy = policy
        self.retry_after_s = policy.retry_after_s
        self.obligations = dict(trade.obligations)
        self.intents: list[ActionIntent] = []
        self.changes: dict[str, Any] = {}
        self.transition: tuple[str, str, str] | None = None
        self.above: list[float] = []
        self.below: list[float] = []
        self.at: list[float] = []

    def owes(self, key: str) -> bool:
        status = self.obligations.get(key)
        if status is not None and status.startswith(FAILED):
            _, _, at = status.partition(":")
            due = float(at or 0) + self.retry_after_s
            if self.snap.now < due:
                self.at.append(due)
                return False
            return True
        return status not in SETTLED

    def sl_in_flight(self) -> bool:
        return any(k.startswith("sl:") and v == PENDING for k, v in self.obligations.items())

    def emit(self, kind: ActionKind, key: str, reason: str, *, sl: float = 0.0,
             volume: float = 0.0) -> None:
        if not self.owes(key):
            return
        if kind is ActionKind.MODIFY_SL and self.sl_in_flight():
            return  # one stop change at a time; the next evaluation sees its outcome
        if kind is ActionKind.MODIFY_SL and key != FLOOR and spread_too_wide(self.snap,
                                                                              self.policy):
            self.at.append(self.snap.now + 1.0)   # deferred: look again at the next second
            return
        if kind is ActionKind.MODIFY_SL:
            sl, reason = cap_loss(self.trade, sl, reason, self.policy, self.snap.spec)
        self.obligations[key] = PENDING
        self.intents.append(ActionIntent(kind, key, reason, sl=sl, volume=volume))

    def move(self, to: TradeState, reason: str, **changes: Any) -> None:
        frm = self.trade.state
        self.transition = (frm.value, to.value, reason)
        self.changes.update(state=to, state_since=self.snap.now, **changes)
        # a new state owes new duties: forget the old episode's, keep what is in flight and
        # the lifetime ones (a cut that was made is never owed again)
        self.obligations = {k: v for k, v in self.obligations.items()
                            if v == PENDING or lifetime(k, self.policy)}

    def watch_price(self, direction: Direction, price_level: float) -> None:
        """Evaluate again when the trade's closing price (bid for a BUY, ask for a SELL)
        reaches ``price_level``."""
        price = self.snap.bid if direction is Direction.BUY else self.snap.ask
        if price_level > price:
            self.above.append(_on_grid(price_level, self.snap.spec, ceil=True))
        else:
            self.below.append(_on_grid(price_level, self.snap.spec, ceil=False))


def spread_too_wide(snap: Snapshot, p: PolicySettings) -> bool:
    """The spread guard: no trailing or tightening while the spread is above
    ``max_spread_mult`` x the symbol's recent median spread (the step waits for it to narrow)."""
    return (p.max_spread_mult > 0 and snap.median_spread > 0
            and snap.ask - snap.bid > p.max_spread_mult * snap.median_spread + 1e-12)


def cap_loss(t: Trade, sl: float, reason: str, p: PolicySettings,
             spec: SymbolSpec) -> tuple[float, str]:
    """``policy.max_loss_r``: no stop DTMS sets is farther than that many R from entry."""
    r = t.initial_risk
    if p.max_loss_r <= 0 or r <= 0:
        return sl, reason
    limit = round(t.entry_price - _sign(t.direction) * p.max_loss_r * r, spec.digits)
    if _better(t.direction, limit, sl):
        return limit, f"{reason} (capped at max_loss_r {p.max_loss_r:g} R)"
    return sl, reason


def floor_sl(t: Trade, snap: Snapshot, p: PolicySettings) -> float:
    """The stop attached to a trade that has none (0 when it cannot be placed yet): from the
    price, ``attach_sl_points`` points or else ``attach_sl_atr`` x ATR(14, M5), at least the
    stops level away."""
    spec = snap.spec
    if p.attach_sl_points > 0:
        distance = p.attach_sl_points * spec.point
    elif snap.atr > 0:
        distance = p.attach_sl_atr * snap.atr
    else:
        return 0.0   # no ATR yet: the next bar close brings one
    distance = max(distance, (spec.stops_level + 1) * spec.point)
    price = snap.bid if t.direction is Direction.BUY else snap.ask
    return _on_grid(price - _sign(t.direction) * distance, spec,
                    ceil=t.direction is Direction.SELL)


def _floor(plan: _Plan, p: PolicySettings) -> None:
    """A broker-side floor under every managed trade: one without a stop gets one at once,
    so a DTMS crash never leaves a naked position (once per episode of its state, like every
    stop duty: a stop someone removes is attached again at the next state change)."""
    t = plan.trade
    if t.sl > 0 or (p.attach_sl_atr <= 0 and p.attach_sl_points <= 0):
        return
    sl = floor_sl(t, plan.snap, p)
    if sl > 0:
        plan.emit(ActionKind.MODIFY_SL, FLOOR, "no stop at the broker: floor attached", sl=sl)


def _on_grid(level: float, spec: SymbolSpec, *, ceil: bool) -> float:
    """``level`` on the price grid, rounded towards where the price must go to reach it: up
    for a level above the price (the first tick at or past it), down for one below."""
    ticks = level / spec.point
    n = math.ceil(ticks - 1e-6) if ceil else math.floor(ticks + 1e-6)
    return round(n * spec.point, spec.digits)


def stored_score(score: Score) -> tuple[float, dict[str, float]]:
    """The (score, layers) a trade takes from a fresh score, as stored: 4 decimals."""
    return round(score.total, 4), {k: round(v, 4) for k, v in score.layers.items()}


def decide(trade: Trade, snap: Snapshot, policy: PolicySettings) -> Decision:
    """One evaluation of a managed trade. Paused or unmanaged trades only take the score."""
    plan = _Plan(trade, snap, policy)
    score = snap.score
    if score is not None:
        total, layers = stored_score(score)
        plan.changes.update(score=total, layers=layers)
    if trade.state not in _LADDER or trade.paused:
        return _finish(plan)
    _ladder(plan, policy)
    if plan.transition is None and trade.state is TradeState.HEALTHY:
        _protect_profit(plan, policy)
    _floor(plan, policy)   # last: a stop the ladder sets now is tighter, and goes first
    _timers_watch(plan, policy)
    return _finish(plan)


def _finish(plan: _Plan) -> Decision:
    trade = plan.trade
    if plan.obligations != trade.obligations:
        plan.changes["obligations"] = plan.obligations
    new = dataclasses.replace(trade, **plan.changes) if plan.changes else trade
    watch = Watch(above=min(plan.above) if plan.above else None,
                  below=max(plan.below) if plan.below else None,
                  at=min(plan.at) if plan.at else None,
                  ask=bool(plan.above or plan.below) and trade.direction is Direction.SELL)
    return Decision(new, tuple(plan.intents), plan.transition, watch)


# -- the defensive ladder -----------------------------------------------------------------------

def _ladder(plan: _Plan, p: PolicySettings) -> None:
    t, snap, score = plan.trade, plan.snap, plan.snap.score
    state = t.state
    now = snap.now
    # timers first: they fire on any evaluation, not only on a bar close
    if state is TradeState.HEDGED and t.flat_since and now - t.flat_since >= p.flat_timer_min * 60:
        _close_all(plan, f"flat timer {p.flat_timer_min:g} min elapsed while hedged")
        return
    if state is TradeState.RECOVERING and now - t.recovery_since >= p.recovery_min * 60:
        current = score.total if score is not None else t.score
        if current >= p.recovery_score and t.hedge_ticket:
            # its close failed earlier: a hedge is never left behind in HEALTHY
            plan.emit(ActionKind.CLOSE_HEDGE, "recover:close_hedge", "recovering: close hedge")
            return
        if current >= p.recovery_score:
            plan.move(TradeState.HEALTHY, f"recovered: score {current:+.2f} >= "
                      f"{p.recovery_score:+g} after {p.recovery_min:g} min",
                      flat_since=0.0, recovery_since=0.0)
        else:
            _close_all(plan, f"not recovered: score {current:+.2f} < {p.recovery_score:+g} "
                             f"after {p.recovery_min:g} min")
        return
    if score is None:
        _retry_owed(plan, p)
        return
    s = score.total
    k = score.threshold_scale or 1.0
    l1, l2, hedge = p.l1_score * k, p.l2_score * k, p.hedge_score * k
    if state is TradeState.HEALTHY and s <= l1:
        plan.move(TradeState.WARNING_L1, f"score {s:+.2f} <= {l1:+.2f}", flat_since=now)
        _tighten(plan, p)
    elif state is TradeState.WARNING_L1 and s >= p.l1_exit_score * k:
        plan.move(TradeState.HEALTHY, f"score {s:+.2f} >= {p.l1_exit_score * k:+.2f}",
                  flat_since=0.0)
    elif state is TradeState.WARNING_L1 and s <= l2:
        plan.move(TradeState.WARNING_L2, f"score {s:+.2f} <= {l2:+.2f}")
        _reduce_and_protect(plan, p)
    elif state is TradeState.WARNING_L2 and s >= p.l2_exit_score * k:
        plan.move(TradeState.WARNING_L1, f"score {s:+.2f} >= {p.l2_exit_score * k:+.2f} "
                                         "(stops are kept, never loosened)")
    elif state is TradeState.WARNING_L2 and (
            s <= hedge or (score.confluence == "adverse" and score.vwap_flip)):
        why = (f"score {s:+.2f} <= {hedge:+.2f}" if s <= hedge
               else "adverse confluence with a VWAP flip")
        plan.move(TradeState.HEDGED, why)
        _hedge(plan, p)
    elif state is TradeState.HEDGED and _structure_resumes(t, score):
        plan.move(TradeState.RECOVERING, "structure resumes the trade's direction",
                  recovery_since=now)
        if t.hedge_ticket:
            plan.emit(ActionKind.CLOSE_HEDGE, "recover:close_hedge", "recovering: close hedge")
    else:
        _retry_owed(plan, p)


def _structure_resumes(t: Trade, score: Score) -> bool:
    """A structure event in the trade's direction that is NEW since the trade was hedged: on an
    M15 bar that closed after ``state_since`` (the tick time of the bar close that hedged it).
    Every bar that had closed by then was in the score that hedged, so its event cannot count;
    the last event merely pointing the trade's way is the market the trade was hedged in."""
    return score.structure_with_trade and score.structure_closed_at > t.state_since


def _retry_owed(plan: _Plan, p: PolicySettings) -> None:
    """Offer again the current state's failed or deferred duties."""
    state = plan.trade.state
    if state is TradeState.WARNING_L1:
        _tighten(plan, p)
    elif state is TradeState.WARNING_L2:
        _reduce_and_protect(plan, p)
    elif state is TradeState.HEDGED:
        _hedge(plan, p)
    elif state is TradeState.RECOVERING and plan.trade.hedge_ticket:
        plan.emit(ActionKind.CLOSE_HEDGE, "recover:close_hedge", "recovering: close hedge")
    if "close" in plan.obligations:
        _close_all(plan, "close (retry)")


def _risk(plan: _Plan) -> float:
    """1 R in price units; without an initial stop, the ATR stands in for it."""
    return plan.trade.initial_risk or plan.snap.atr


def _tighten(plan: _Plan, p: PolicySettings) -> None:
    t, snap = plan.trade, plan.snap
    r = _risk(plan)
    if r <= 0:
        plan.obligations.setdefault("sl:L1", SKIPPED)
        return
    sign = _sign(t.direction)
    price = snap.bid if t.direction is Direction.BUY else snap.ask
    sl = round(price - sign * p.l1_tighten_r * r, snap.spec.digits)
    if _better(t.direction, sl, t.sl):
        plan.emit(ActionKind.MODIFY_SL, "sl:L1",
                  f"warning L1: SL to {p.l1_tighten_r:g} R behind price", sl=sl)


def _breakeven_sl(plan: _Plan, p: PolicySettings) -> float:
    t, snap = plan.trade, plan.snap
    buffer = (snap.ask - snap.bid) * p.breakeven_buffer_spreads
    return round(t.entry_price + _sign(t.direction) * buffer, snap.spec.digits)


def _reduce_and_protect(plan: _Plan, p: PolicySettings) -> None:
    t = plan.trade
    plan.emit(ActionKind.PARTIAL_CLOSE, "L2:partial",
              f"warning L2: close {p.l2_close_fraction:.0%}",
              volume=t.volume * p.l2_close_fraction)
    # breakeven only where a stop can sit there: past the price, it would be a take-profit
    sl = _breakeven_sl(plan, p)
    price = plan.snap.bid if t.direction is Direction.BUY else plan.snap.ask
    room = _sign(t.direction) * (price - sl)
    if room > 0 and _better(t.direction, sl, t.sl):
        plan.emit(ActionKind.MODIFY_SL, "sl:L2", "warning L2: SL to breakeven", sl=sl)


def _hedge(plan: _Plan, p: PolicySettings) -> None:
    t = plan.trade
    if t.hedge_ticket:
        return
    how = "hedge" if plan.snap.hedging else "reduce (netting account)"
    plan.emit(ActionKind.HEDGE, "hedge", f"hedged: {how} {p.hedge_ratio:g}x volume",
              volume=t.volume * p.hedge_ratio)


def _close_all(plan: _Plan, reason: str) -> None:
    plan.emit(ActionKind.CLOSE, "close", reason)
    if plan.trade.hedge_ticket:
        plan.emit(ActionKind.CLOSE_HEDGE, "close_hedge", reason)


# -- profit protection (HEALTHY) ----------------------------------------------------------------

def _protect_profit(plan: _Plan, p: PolicySettings) -> None:
    t, snap = plan.trade, plan.snap
    r = t.initial_risk
    sign = _sign(t.direction)
    price = snap.bid if t.direction is Direction.BUY else snap.ask
    point = snap.spec.point
    if p.time_stop_min > 0 and t.opened_at:
        due = t.opened_at + p.time_stop_min * 60
        if snap.now >= due:
            _close_all(plan, f"time stop: open {p.time_stop_min:g} min")
            return
        plan.at.append(due)
    if r <= 0:
        return  # every profit rule is in R; without an initial stop there is no R
    profit_r = sign * (price - t.entry_price) / r

    if plan.owes("sl:breakeven"):
        trigger = t.entry_price + sign * p.breakeven_r * r
        if profit_r >= p.breakeven_r - 1e-9:
            sl = _breakeven_sl(plan, p)
            if _better(t.direction, sl, t.sl):
                plan.emit(ActionKind.MODIFY_SL, "sl:breakeven",
                          f"profit {profit_r:.2f} R: SL to breakeven", sl=sl)
            else:
                plan.obligations["sl:breakeven"] = SKIPPED  # the stop is already past it
        else:
            plan.watch_price(t.direction, trigger)

    if snap.atr > 0 and p.trail_atr_mult > 0:
        activation = t.entry_price + sign * p.trail_activation_r * r
        if profit_r >= p.trail_activation_r - 1e-9:
            desired = round(price - sign * p.trail_atr_mult * snap.atr, snap.spec.digits)
            step = p.trail_step_points * point
            if t.sl <= 0 or sign * (desired - t.sl) >= step - 1e-12:
                key = f"sl:trail:{desired:.{snap.spec.digits}f}"
                plan.obligations = {k: v for k, v in plan.obligations.items()
                                    if not (k.startswith("sl:trail:") and v != PENDING
                                            and k != key)}
                plan.emit(ActionKind.MODIFY_SL, key, f"trailing {p.trail_atr_mult:g} ATR",
                          sl=desired)
            # the next step: when the price has gone one step further than the stop allows
            base = max(t.sl, desired) if sign > 0 else min(t.sl or desired, desired)
            plan.watch_price(t.direction, base + sign * (p.trail_atr_mult * snap.atr + step))
        else:
            plan.watch_price(t.direction, activation)

    for i, (level, fraction) in enumerate(zip(p.partial_levels_r, p.partial_fractions,
                                              strict=False)):
        key = f"partial:{i}"
        if plan.obligations.get(key) in (DONE, SKIPPED, SHADOW):
            continue
        if not plan.owes(key):
            break   # this rung is in flight or waiting to retry: the next one waits for it
        if profit_r >= level - 1e-9:
            plan.emit(ActionKind.PARTIAL_CLOSE, key, f"profit {level:g} R: take {fraction:.0%}",
                      volume=t.initial_volume * fraction)
        else:
            plan.watch_price(t.direction, t.entry_price + sign * level * r)
        break  # one rung at a time, in order


def _timers_watch(plan: _Plan, p: PolicySettings) -> None:
    # the three fields as changed so far: read, not a copy of the trade (a fresh score alone
    # is a change, so a copy here cost every trade a second full copy on every bar close)
    def now(name: str) -> Any:
        return plan.changes.get(name, getattr(plan.trade, name))
    state = now("state")
    if state is TradeState.HEDGED and (flat_since := now("flat_since")):
        plan.at.append(flat_since + p.flat_timer_min * 60)
    elif state is TradeState.RECOVERING and (recovery_since := now("recovery_since")):
        plan.at.append(recovery_since + p.recovery_min * 60)


_LADDER = frozenset({TradeState.HEALTHY, TradeState.WARNING_L1, TradeState.WARNING_L2,
                     TradeState.HEDGED, TradeState.RECOVERING})


def after_fill(trade: Trade, intent: ActionIntent, *, volume: float, hedge_ticket: int = 0,
               sl: float | None = None, hedging: bool = True) -> dict[str, Any]:
    """The trade fields an executed intent changes (the broker's position stays the truth)."""
    if intent.kind is ActionKind.MODIFY_SL and sl is not None:
        changes: dict[str, Any] = {"sl": sl}
        if intent.tp > 0:
            changes["tp"] = intent.tp
        if intent.obligation == FLOOR and trade.initial_sl <= 0:
            changes["initial_sl"] = sl   # R from the attached stop, where there was none
        return changes
    if intent.kind is ActionKind.PARTIAL_CLOSE or (intent.kind is ActionKind.HEDGE
                                                    and not hedging):
        return {"volume": max(0.0, round(trade.volume - volume, 8))}
    if intent.kind is ActionKind.HEDGE:
        return {"hedge_ticket": hedge_ticket, "hedge_volume": volume}
    if intent.kind is ActionKind.CLOSE_HEDGE:
        return {"hedge_ticket": 0, "hedge_volume": 0.0}
    if intent.kind is ActionKind.CLOSE:
        return {"volume": max(0.0, round(trade.volume - volume, 8))}
    return {}
