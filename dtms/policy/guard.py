"""The account guard's decisions: (account snapshot, guard state, settings) -> (new state, intents).

This module owns every account-level decision of SPEC section 11 (issue 15): the guard day and
its start figure, the daily loss limit, the maximum drawdown (trailing from the equity peak or
static from the initial balance), the lock and what it closes, the daily profit target, the
risk budget and the weekend guard. It is pure: the time is the terminal's tick time
(``AccountSnapshot.now``) read in the broker's server time zone, never the host clock; no I/O.

* **The day** is the server date of the moment ``guard.day_reset_hour`` last passed
  (:func:`server_day`): with a reset at 17:00 server time, Tuesday 16:59 is still Monday's
  day. A new day takes its start figure (the balance, or the equity with ``day_start =
  "equity"``) and ends a daily lock.
* **A breach** locks the account: a daily loss (``daily_pnl <= -limit``, the tighter of
  ``daily_loss_limit`` and ``daily_loss_pct`` of the day's start) until the next reset, a
  drawdown (``drawdown_pct >= max_drawdown_pct``) until a person unlocks it (:func:`unlock`;
  the drawdown, and the rest of the day's limit, are then measured afresh from the equity at
  the unlock). ``on_breach`` says what
  the breach closes of the positions open at the lock; every position opened after the lock
  is closed when it appears (``close_new_while_locked``), whatever ``on_breach`` says.
* **Never twice.** A close is ordered once per position (``GuardState.closing``); only an
  order the actor reports failed (:func:`close_failed`) is ordered again. A stop is only ever
  moved tighter.
* **The risk budget** (``risk_budget``): the loss if every stop is hit (from the current
  price, :attr:`Figures.open_risk`) plus today's loss must stay within the daily limit. When
  it does not, the stops that carry the most risk are tightened first (water filling: every
  managed position's risk is capped at one level, the highest that fits), never closer to the
  price than the stops level allows.
* **The profit target**: from ``daily_profit_target`` the day's gain is protected until the
  next reset, by the same capping of every managed stop so that at most the gain above the
  target can be given back (``on_profit = "lock"``: at every evaluation of that day, so a
  position opened later is capped too), or by closing the managed positions once and locking
  the account until the next reset (``"close"``).
* **The weekend guard**: from ``weekend_time`` on Friday (server time), once, every managed
  stop to breakeven where the price is past it by more than the stops level, the other
  managed positions closed (``"breakeven"``), or every managed position closed (``"close"``).

Money is in the account currency; each :class:`Exposure` carries what one unit of price is
worth in it for its volume (the actor derives it from the position's own profit).

Example::

    d = evaluate(AccountSnapshot(now=t, balance=10_000, equity=9_480, positions=(...)),
                 state, settings.guard, ZoneInfo("Europe/Athens"))
    d.state.locked, d.state.reason, [i.ticket for i in d.intents if i.kind == "close"]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dtms.config import GuardSettings
from dtms.model import Direction

DAILY_LOSS, DRAWDOWN, PROFIT = "daily_loss", "drawdown", "profit"
#: breach kinds (the ``dtms_guard_breaches_total{kind}`` labels)
BREACH_KINDS = (DAILY_LOSS, DRAWDOWN, PROFIT)
CLOSE, SL = "close", "sl"
FRIDAY = 4
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Exposure:
    """One open position as the guard sees it."""
    ticket: int
    symbol: str
    direction: Direction
    volume: float
    price_open: float
    price: float              # the closing price now (bid for a BUY, ask for a SELL)
    sl: float
    tp: float
    profit: float
    managed: bool             # a trade DTMS manages (its actor acts), else any other position
    value_per_price: float    # account money per 1.0 of price, for this position's volume
    min_distance: float = 0.0  # the closest a stop may sit to the price (stops level), price
    point: float = 1e-5
    digits: int = 5

    def risk(self) -> float | None:
        """Money lost from now if the stop is hit; None without a stop (unbounded)."""
        if self.sl <= 0:
            return None
        return max(0.0, _sign(self.direction) * (self.price - self.sl)) * self.value_per_price


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    now: float                 # the terminal's tick time, epoch seconds
    balance: float
    equity: float
    positions: tuple[Exposure, ...] = ()


@dataclass(frozen=True, slots=True)
class GuardState:
    """What the guard remembers (durable: the actor stores it after every change)."""
    day: str = ""                  # the guard day, server date YYYY-MM-DD ("" = never seen)
    day_start_balance: float = 0.0  # the day's start figure (balance or equity at the reset)
    equity_peak: float = 0.0
    initial_balance: float = 0.0   # the static drawdown's base
    drawdown_base: float = 0.0     # the equity at the last unlock (0 = none): measured afresh
    locked: bool = False
    kind: str = ""                 # the lock's breach kind
    reason: str = ""
    since: float = 0.0
    until: float = 0.0             # 0 = until a person unlocks it
    at_lock: tuple[int, ...] = ()  # the positions open when the lock began
    closing: tuple[int, ...] = ()  # positions the guard ordered closed (never twice)
    unlocked_day: str = ""         # the day a person last unlocked the account...
    unlock_equity: float = 0.0     # ...and the equity then: that day's limit counts from it
    profit_day: str = ""           # the day the profit target was acted on
    weekend_day: str = ""          # the server date the weekend guard acted on

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["at_lock"], d["closing"] = list(self.at_lock), list(self.closing)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> GuardState:
        if not data:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for k in ("at_lock", "closing"):
            values[k] = tuple(int(t) for t in values.get(k, ()))
        return cls(**values)

    def lock_view(self) -> dict[str, Any]:
        """What ``health``, ``status`` and every trade view carry."""
        return {"locked": self.locked, "reason": self.reason, "since": self.since,
                "until": self.until}


@dataclass(frozen=True, slots=True)
class GuardIntent:
    """Close a position, or move its stop (``sl``, only ever tighter)."""
    kind: str
    ticket: int
    managed: bool
    reason: str
    sl: float = 0.0


@dataclass(frozen=True, slots=True)
class Figures:
    daily_pnl: float = 0.0         # equity - the day's start: negative for a loss
    daily_limit: float = 0.0       # money; 0 = no daily limit
    allowance: float | None = None  # limit + daily_pnl (after a person's unlock today: + the
                                    # P/L since the unlock); None without a daily limit
    drawdown_pct: float = 0.0
    open_risk: float = 0.0         # the loss from now if every stop is hit
    naked: tuple[int, ...] = ()    # positions without a stop (their risk is unbounded)


@dataclass(frozen=True, slots=True)
class GuardDecision:
    state: GuardState
    intents: tuple[GuardIntent, ...]
    figures: Figures
    breaches: tuple[str, ...] = ()
    events: tuple[tuple[str, dict[str, Any]], ...] = ()   # (notification, its map)
    tightened: tuple[dict[str, Any], ...] = field(default=())


def _sign(direction: Direction) -> float:
    return 1.0 if direction is Direction.BUY else -1.0


# -- time --------------------------------------------------------------------------------------

def server_day(now: float, tz: ZoneInfo, reset_hour: int) -> str:
    """The guard day of market time ``now``: the server date at which the last reset began."""
    local = datetime.fromtimestamp(now, tz)
    return (local - timedelta(hours=reset_hour)).date().isoformat()   # wall-clock arithmetic


def next_reset(day: str, tz: ZoneInfo, reset_hour: int) -> float:
    """Epoch seconds at which the guard day ``day`` ends (the next reset, DST included)."""
    d = date.fromisoformat(day) + timedelta(days=1)
    return datetime(d.year, d.month, d.day, reset_hour, tzinfo=tz).timestamp()


def _weekend_due(now: float, tz: ZoneInfo, at: str) -> str | None:
    """The server date when the weekend guard is due at ``now`` (Friday from ``at``), else None."""
    if not at:
        return None
    hh, _, mm = at.partition(":")
    local = datetime.fromtimestamp(now, tz)
    if local.weekday() != FRIDAY or (local.hour, local.minute) < (int(hh), int(mm)):
        return None
    return local.date().isoformat()


# -- figures -----------------------------------------------------------------------------------

def enabled(cfg: GuardSettings) -> bool:
    """Whether any account rule is configured (the risk budget needs a daily limit)."""
    return bool(cfg.daily_loss_limit > 0 or cfg.daily_loss_pct > 0 or cfg.max_drawdown_pct > 0
                or cfg.daily_profit_target > 0 or cfg.weekend_time)


def daily_limit(cfg: GuardSettings, day_start: float) -> float:
    """The day's loss limit in money: the tighter of the two settings that are on; 0 = off."""
    limits = [v for v in (cfg.daily_loss_limit,
                          cfg.daily_loss_pct * day_start / 100.0 if cfg.daily_loss_pct else 0.0)
              if v > 0]
    return min(limits, default=0.0)


def figures(snap: AccountSnapshot, state: GuardState, cfg: GuardSettings) -> Figures:
    pnl = snap.equity - state.day_start_balance
    limit = daily_limit(cfg, state.day_start_balance)
    # unlocked by a person today: the day's limit is counted afresh from the equity then
    since = (snap.equity - state.unlock_equity if state.unlocked_day == state.day
             and state.unlocked_day else pnl)
    if cfg.drawdown_mode == "static":
        base = state.drawdown_base or state.initial_balance
    else:
        base = state.equity_peak
    dd = max(0.0, (base - snap.equity) / base * 100.0) if base > 0 else 0.0
    risks = [(p, p.risk()) for p in snap.positions]
    return Figures(daily_pnl=round(pnl, 2), daily_limit=round(limit, 2),
                   allowance=round(limit + since, 2) if limit else None,
                   drawdown_pct=round(dd, 4),
                   open_risk=round(math.fsum(r for _, r in risks if r is not None), 2),
                   naked=tuple(sorted(p.ticket for p, r in risks if r is None)))


# -- the decision ------------------------------------------------------------------------------

class _Plan:
    """One evaluation's changes; sets and maps, so that its cost grows with the number of
    positions, not with its square."""

    def __init__(self, snap: AccountSnapshot, state: GuardState) -> None:
        self.snap = snap
        self.state = state
        self.closes: list[GuardIntent] = []
        self.closing = dict.fromkeys(state.closing)      # ordered set
        self.stops: dict[int, GuardIntent] = {}           # ticket -> the stop ordered now
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.breaches: list[str] = []
        self.tightened: dict[int, dict[str, Any]] = {}

    def close(self, p: Exposure, reason: str) -> None:
        if p.ticket in self.closing:
            return
        self.closing[p.ticket] = None
        self.stops.pop(p.ticket, None)
        self.tightened.pop(p.ticket, None)
        self.closes.append(GuardIntent(CLOSE, p.ticket, p.managed, reason))

    def tighten(self, p: Exposure, sl: float, reason: str) -> None:
        """Order stop ``sl`` for managed ``p`` if it is tighter than its stop (and than one
        already ordered now); never for a position being closed."""
        if not p.managed or p.ticket in self.closing or sl <= 0:
            return
        sign = _sign(p.direction)
        sl = _on_grid(sl, p, towards_price=True)
        ordered = self.stops.get(p.ticket)
        current = ordered.sl if ordered is not None else p.sl
        if current > 0 and sign * (sl - current) < p.point / 2:
            return
        if sign * (p.price - sl) < p.min_distance - _EPS:   # the server would refuse it
            sl = _on_grid(p.price - sign * p.min_distance, p, towards_price=False)
            if current > 0 and sign * (sl - current) < p.point / 2:
                return
        self.stops[p.ticket] = GuardIntent(SL, p.ticket, True, reason, sl=sl)
        self.tightened[p.ticket] = {"ticket": p.ticket, "from": p.sl, "to": sl,
                                    "reason": reason}

    def intents(self) -> tuple[GuardIntent, ...]:
        return (*self.closes, *self.stops.values())


def _on_grid(level: float, p: Exposure, *, towards_price: bool) -> float:
    """``level`` on the price grid, rounded towards the price (tighter) or away from it."""
    ticks = level / p.point
    up = (p.direction is Direction.BUY) == towards_price
    n = math.ceil(ticks - 1e-6) if up else math.floor(ticks + 1e-6)
    return round(n * p.point, p.digits)


def evaluate(snap: AccountSnapshot, state: GuardState, cfg: GuardSettings,
             tz: ZoneInfo) -> GuardDecision:
    """One evaluation of the account: the new guard state, what to close or tighten, why."""
    plan = _Plan(snap, state)
    _new_day(plan, cfg, tz)
    s = plan.state
    plan.state = s = dataclasses.replace(s, equity_peak=max(s.equity_peak, snap.equity))
    fig = figures(snap, s, cfg)
    _breaches(plan, cfg, fig, tz)
    _profit(plan, cfg, fig, tz)
    _weekend(plan, cfg, tz)
    if plan.state.locked:
        _while_locked(plan, cfg)
    elif cfg.risk_budget and fig.allowance is not None:
        _risk_budget(plan, fig)
    open_now = {p.ticket for p in snap.positions}
    # what was ordered closed and is gone needs no memory; a lock's own list stays as it was
    closing = tuple(t for t in plan.closing if t in open_now)
    plan.state = dataclasses.replace(plan.state, closing=closing)
    return GuardDecision(plan.state, plan.intents(), figures(snap, plan.state, cfg),
                         tuple(plan.breaches), tuple(plan.events),
                         tuple(plan.tightened.values()))


def _new_day(plan: _Plan, cfg: GuardSettings, tz: ZoneInfo) -> None:
    s, snap = plan.state, plan.snap
    day = server_day(snap.now, tz, cfg.day_reset_hour)
    if not s.day:   # the first sight of the account: a floating loss then is a drawdown too
        s = dataclasses.replace(s, initial_balance=s.initial_balance or cfg.initial_balance
                                or snap.balance,
                                equity_peak=max(s.equity_peak, snap.equity, snap.balance))
    if s.locked and s.until and snap.now >= s.until:
        plan.events.append(("guard.unlocked", {"reason": f"the day reset at "
                                               f"{cfg.day_reset_hour:02d}:00 server time ended "
                                               f"the {s.kind} lock", "by": "guard",
                                               "kind": s.kind, "at": snap.now}))
        s = _unlocked(s)
    if day != s.day:
        start = snap.equity if cfg.day_start == "equity" else snap.balance
        s = dataclasses.replace(s, day=day, day_start_balance=round(start, 2))
    plan.state = s


def _unlocked(s: GuardState) -> GuardState:
    # ``closing`` stays: a close ordered before is never ordered again while it is open
    return dataclasses.replace(s, locked=False, kind="", reason="", since=0.0, until=0.0,
                               at_lock=())


def _lock(plan: _Plan, kind: str, reason: str, until: float) -> None:
    s = plan.state
    at_lock = s.at_lock if s.locked else tuple(sorted(p.ticket for p in plan.snap.positions))
    plan.state = dataclasses.replace(s, locked=True, kind=kind, reason=reason,
                                     since=s.since if s.locked else plan.snap.now, until=until,
                                     at_lock=at_lock)
    plan.events.append(("guard.locked", {"kind": kind, "reason": reason,
                                         "since": plan.state.since, "until": until}))


def _breaches(plan: _Plan, cfg: GuardSettings, fig: Figures, tz: ZoneInfo) -> None:
    s = plan.state
    if s.locked and s.kind == DRAWDOWN:
        return   # the strongest lock already holds
    if cfg.max_drawdown_pct > 0 and fig.drawdown_pct >= cfg.max_drawdown_pct - _EPS:
        base = "the equity peak" if cfg.drawdown_mode == "trailing" else "the initial balance"
        plan.breaches.append(DRAWDOWN)
        _lock(plan, DRAWDOWN, f"drawdown {fig.drawdown_pct:.2f}% from {base} reached the "
                              f"maximum {cfg.max_drawdown_pct:g}%", 0.0)
        return
    if s.locked:
        return
    if fig.allowance is not None and fig.allowance <= _EPS:
        plan.breaches.append(DAILY_LOSS)
        lost = fig.daily_limit - fig.allowance
        _lock(plan, DAILY_LOSS, f"daily loss {lost:.2f} reached the limit "
                                f"{fig.daily_limit:.2f}",
              next_reset(s.day, tz, cfg.day_reset_hour))


def _in_scope(plan: _Plan, p: Exposure, cfg: GuardSettings, at_lock: set[int]) -> str | None:
    """Why the lock closes ``p``, or None when it stays open."""
    s = plan.state
    if p.ticket not in at_lock:
        return "opened while the account is locked" if cfg.close_new_while_locked else None
    if s.kind == PROFIT or cfg.on_breach == "close_managed":
        return f"account locked ({s.kind})" if p.managed else None
    if cfg.on_breach == "close_all":
        return f"account locked ({s.kind})"
    return None   # alert_only


def _while_locked(plan: _Plan, cfg: GuardSettings) -> None:
    at_lock = set(plan.state.at_lock)
    for p in plan.snap.positions:
        why = _in_scope(plan, p, cfg, at_lock)
        if why is not None:
            plan.close(p, f"{why}: {plan.state.reason}")


def _profit(plan: _Plan, cfg: GuardSettings, fig: Figures, tz: ZoneInfo) -> None:
    s = plan.state
    target = cfg.daily_profit_target
    if target <= 0:
        return
    if s.profit_day != s.day:
        if fig.daily_pnl < target - _EPS:
            return
        plan.state = s = dataclasses.replace(s, profit_day=s.day)
        plan.breaches.append(PROFIT)
        reason = f"daily profit {fig.daily_pnl:.2f} reached the target {target:.2f}"
        if cfg.on_profit == "close":
            if not s.locked:
                _lock(plan, PROFIT, reason, next_reset(s.day, tz, cfg.day_reset_hour))
            return
    elif cfg.on_profit == "close":
        return   # locked until the reset: what opens meanwhile is closed (_while_locked)
    else:
        reason = (f"daily profit target {target:.2f} locked today (P/L now "
                  f"{fig.daily_pnl:.2f})")
    # "lock" holds for the rest of the day, not only at the moment of the target: a position
    # opened later, or a loss elsewhere, is capped too (never loosening), so that the day
    # never risks more than the gain above the target
    _cap_risk(plan, fig.daily_pnl - target, f"{reason}: the gain above it may be given back")


def _weekend(plan: _Plan, cfg: GuardSettings, tz: ZoneInfo) -> None:
    due = _weekend_due(plan.snap.now, tz, cfg.weekend_time)
    if due is None or plan.state.weekend_day == due:
        return
    plan.state = dataclasses.replace(plan.state, weekend_day=due)
    reason = f"weekend guard at {cfg.weekend_time} Friday server time"
    for p in plan.snap.positions:
        if not p.managed:
            continue
        if cfg.on_weekend == "close":
            plan.close(p, reason)
        elif _sign(p.direction) * (p.price - p.price_open) > p.min_distance + _EPS:
            plan.tighten(p, p.price_open, f"{reason}: stop to breakeven")
        else:
            # no breakeven stop is possible (the price is at, or on the wrong side of, the
            # entry, or closer to it than the stops level): closed, so that no managed trade
            # goes into the weekend able to lose
            plan.close(p, f"{reason}: no room for a breakeven stop")


def _risk_budget(plan: _Plan, fig: Figures) -> None:
    assert fig.allowance is not None
    naked = any(p.managed and p.sl <= 0 for p in plan.snap.positions)
    if fig.open_risk <= fig.allowance + _EPS and not naked:
        return
    _cap_risk(plan, fig.allowance, f"risk budget: the loss if every stop is hit "
                                   f"({fig.open_risk:.2f}) exceeds what is left of the daily "
                                   f"limit ({fig.allowance:.2f})")


def cap_level(risks: list[float], fixed: float, budget: float) -> float:
    """The highest cap ``c`` with ``fixed + sum(min(r, c)) <= budget`` (0 when even nothing
    left of the risks fits): capping the largest risks first."""
    room = budget - fixed
    if room <= 0 or not risks:
        return 0.0
    ordered = sorted(risks)
    below = 0.0
    for i, r in enumerate(ordered):
        rest = len(ordered) - i
        if below + r * rest >= room:   # the cap falls at or below this risk
            return max(0.0, (room - below) / rest)
        below += r
    return ordered[-1]   # everything fits


def _cap_risk(plan: _Plan, budget: float, reason: str) -> None:
    """Tighten the managed stops so that the loss from now if every stop is hit stays within
    ``budget``: the riskiest first, each to at most the common cap."""
    managed, fixed = [], 0.0
    for p in plan.snap.positions:
        r = p.risk()
        if p.ticket in plan.closing:
            continue
        if p.managed and p.value_per_price > 0:
            # a managed position without a stop counts as its whole distance to breakeven
            # and beyond: it gets a stop at the cap too
            managed.append((p, r if r is not None else math.inf))
        elif r is not None:
            fixed += r
    cap = cap_level([r for _, r in managed], fixed, budget)
    for p, r in managed:
        if r <= cap + _EPS:
            continue
        distance = cap / p.value_per_price
        plan.tighten(p, p.price - _sign(p.direction) * distance, reason)


# -- requests from outside ---------------------------------------------------------------------

def close_failed(state: GuardState, ticket: int) -> GuardState:
    """A close the guard ordered failed: it may be ordered again."""
    return dataclasses.replace(state, closing=tuple(t for t in state.closing if t != ticket))


def unlock(state: GuardState, equity: float) -> GuardState:
    """A person unlocked the account: the drawdown is measured afresh from ``equity``, and so
    is the rest of the day's loss limit (else a daily lock would come back at once)."""
    return dataclasses.replace(_unlocked(state), equity_peak=equity, drawdown_base=equity,
                               unlocked_day=state.day, unlock_equity=equity)


__all__ = ["AccountSnapshot", "Exposure", "Figures", "GuardDecision", "GuardIntent",
           "GuardState", "cap_level", "close_failed", "enabled", "evaluate", "figures", "next_reset",
           "server_day", "unlock"]
