"""Domain types: trades, their states, broker snapshots, and registration parsing.

Everything here is plain data and pure functions. Broker snapshots (``Position``, ``Deal``,
``SymbolSpec``, ``Tick``, ``Account``) are DTMS's own types: the MT5 adapter converts the
terminal's named tuples into them, so nothing past the adapter depends on the terminal module.

``parse_registration`` validates a client's ``register`` map and names *every* invalid field::

    >>> parse_registration({"ticket": 5, "direction": "buy"}).direction
    <Direction.BUY: 'BUY'>
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

from dtms.errors import InvalidArgument
from dtms.policy.overrides import typing_problems


class Direction(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class TradeState(enum.StrEnum):
    HEALTHY = "HEALTHY"
    WARNING_L1 = "WARNING_L1"
    WARNING_L2 = "WARNING_L2"
    HEDGED = "HEDGED"
    RECOVERING = "RECOVERING"
    SUSPENDED = "SUSPENDED"  # its actor crashed past its limit; `resume` brings it back
    RELEASED = "RELEASED"    # unregistered: DTMS no longer manages it; the position stays open
    CLOSED = "CLOSED"


#: States in which DTMS is actively defending the trade; other managers should stand aside.
DEFENSIVE_STATES = frozenset({TradeState.WARNING_L1, TradeState.WARNING_L2, TradeState.HEDGED,
                              TradeState.RECOVERING})


#: States in which no actor manages the trade.
UNMANAGED_STATES = frozenset({TradeState.SUSPENDED, TradeState.RELEASED, TradeState.CLOSED})


class CloseReason(enum.StrEnum):
    """Why a trade closed: the broker's deal reason, or, when DTMS closed it, the rule that
    did. A fixed set: each is a pre-initialised ``dtms_trades_closed_total{reason}`` label."""
    SL = "SL"
    TP = "TP"
    STOP_OUT = "STOP_OUT"
    MANUAL = "MANUAL"
    EXPERT = "EXPERT"            # another expert (not DTMS's magic) closed it
    TIME_STOP = "TIME_STOP"      # DTMS: the time stop
    FLAT_TIMER = "FLAT_TIMER"    # DTMS: hedged for the whole flat timer
    NOT_RECOVERED = "NOT_RECOVERED"  # DTMS: the recovery timer ran out below the score
    WARNING_L2 = "WARNING_L2"    # DTMS: the L2 cut left less than volume_min: a full close
    PARTIAL_PROFIT = "PARTIAL_PROFIT"  # DTMS: a partial-profit rung took the rest
    NETTING_REDUCE = "NETTING_REDUCE"  # DTMS: the hedge of a netting account took the rest
    GUARD = "GUARD"              # DTMS: the account guard (a breach, a lock, the weekend)
    REQUEST = "REQUEST"          # DTMS: a person's close or flatten through DTMS
    DTMS = "DTMS"                # DTMS closed it and its journal does not say which rule
    UNKNOWN = "UNKNOWN"          # gone at the broker, no closing deal, absence confirmed


# -- broker snapshots ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Position:
    ticket: int
    symbol: str
    direction: Direction
    volume: float
    price_open: float
    sl: float
    tp: float
    price_current: float
    profit: float
    magic: int
    comment: str
    time: int


@dataclass(frozen=True, slots=True)
class Deal:
    ticket: int
    position_id: int
    symbol: str
    entry: int        # 0 in, 1 out, 2 in/out, 3 out by
    reason: int       # MT5 DEAL_REASON_*
    volume: float
    price: float
    profit: float
    magic: int
    comment: str
    time: int


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    name: str
    digits: int
    point: float
    volume_min: float
    volume_max: float
    volume_step: float
    stops_level: int
    freeze_level: int
    spread: int
    filling_mode: int
    contract_size: float


@dataclass(frozen=True, slots=True)
class Tick:
    symbol: str
    time: int
    bid: float
    ask: float


@dataclass(frozen=True, slots=True)
class Account:
    login: int
    server: str
    currency: str
    balance: float
    equity: float
    hedging: bool


@dataclass(frozen=True, slots=True)
class OrderResult:
    retcode: int
    deal: int
    order: int
    volume: float
    price: float
    comment: str


# MT5 DEAL_REASON_* -> why a position closed
_DEAL_REASONS = {0: CloseReason.MANUAL, 1: CloseReason.MANUAL, 2: CloseReason.MANUAL,
                 3: CloseReason.EXPERT, 4: CloseReason.SL, 5: CloseReason.TP,
                 6: CloseReason.STOP_OUT}
DEAL_ENTRY_OUT = (1, 2, 3)


def close_reason_from_deals(deals: list[Deal], dtms_magic: int) -> tuple[CloseReason, Deal | None]:
    """Why a position closed, from its deal history: the last exit deal decides."""
    exits = [d for d in deals if d.entry in DEAL_ENTRY_OUT]
    if not exits:
        return CloseReason.UNKNOWN, None
    last = max(exits, key=lambda d: (d.time, d.ticket))
    reason = _DEAL_REASONS.get(last.reason, CloseReason.UNKNOWN)
    if reason is CloseReason.EXPERT and last.magic == dtms_magic:
        reason = CloseReason.DTMS
    return reason, last


#: the close intents' reasons (``lifecycle._close_all``) -> the rule; a retried close
#: ("close (retry)") names no rule: the close intent it retries does
_CLOSE_RULES = (("time stop", CloseReason.TIME_STOP), ("flat timer", CloseReason.FLAT_TIMER),
                ("not recovered", CloseReason.NOT_RECOVERED))
#: other DTMS actions that can close what is left, by their obligation
_CLOSING_OBLIGATIONS = (("L2:", CloseReason.WARNING_L2), ("partial:", CloseReason.PARTIAL_PROFIT),
                        ("hedge", CloseReason.NETTING_REDUCE))


#: closes ordered from outside the trade's policy, by their obligation (``trade.Act``)
_ORDERED_CLOSES = (("guard:", CloseReason.GUARD), ("request:", CloseReason.REQUEST))


def _rule_of(action: ActionRecord) -> CloseReason | None:
    ordered = next((r for prefix, r in _ORDERED_CLOSES if action.obligation.startswith(prefix)),
                   None)
    if ordered is not None and action.kind == ActionKind.CLOSE:
        return ordered
    if action.kind == ActionKind.CLOSE:
        return next((r for prefix, r in _CLOSE_RULES if action.reason.startswith(prefix)), None)
    if action.kind in (ActionKind.PARTIAL_CLOSE, ActionKind.HEDGE):
        return next((r for prefix, r in _CLOSING_OBLIGATIONS
                     if action.obligation.startswith(prefix)), None)
    return None


def dtms_close_rule(last: Deal | None, journal: list[ActionRecord],
                    comment_tag: str) -> tuple[CloseReason, ActionRecord | None]:
    """Which of DTMS's rules closed a trade, from its own journal: the action whose comment
    (``TAG:<ticket>:<seq>``) the closing deal carries, else the newest done close. A retried
    close takes the rule of the close it retries; none found -> ``DTMS``."""
    by_seq = {a.seq: a for a in journal}
    parts = last.comment.split(":") if last is not None else []
    action = None
    if len(parts) == 3 and parts[0] == comment_tag and parts[2].isdigit():
        action = by_seq.get(int(parts[2]))
    if action is None:
        action = max((a for a in journal if a.status == "done" and a.kind in (
            ActionKind.CLOSE, ActionKind.PARTIAL_CLOSE, ActionKind.HEDGE)),
                     key=lambda a: a.seq, default=None)
    if action is None:
        return CloseReason.DTMS, None
    rule = _rule_of(action)
    if rule is None and action.kind == ActionKind.CLOSE:
        earlier = [a for a in journal if a.kind == ActionKind.CLOSE and a.seq < action.seq
                   and _rule_of(a) is not None]
        if earlier:
            action = max(earlier, key=lambda a: a.seq)
            rule = _rule_of(action)
    return rule or CloseReason.DTMS, action


_SUFFIX = re.compile(r"^([A-Z]{6}|[A-Z]{3,4}USD)[a-z._\-+#!]*$")


def normalize_symbol(symbol: str) -> str:
    """Strip a broker suffix: ``XAUUSDc`` -> ``XAUUSD``, ``EURUSD.pro`` -> ``EURUSD``."""
    s = symbol.strip()
    m = _SUFFIX.match(s)
    return m.group(1) if m else s.upper()


# -- actions ---------------------------------------------------------------------------------

class ActionKind(enum.StrEnum):
    MODIFY_SL = "MODIFY_SL"          # TRADE_ACTION_SLTP on the trade; the TP is kept
    PARTIAL_CLOSE = "PARTIAL_CLOSE"  # close part of the trade (also the netting "hedge")
    CLOSE = "CLOSE"                  # close the whole trade
    HEDGE = "HEDGE"                  # open an opposite position (hedging accounts)
    CLOSE_HEDGE = "CLOSE_HEDGE"      # close the hedge position


@dataclass(frozen=True, slots=True)
class ActionIntent:
    """What the policy wants done to a trade; ``execution`` turns it into an MT5 request.

    ``obligation`` names the duty it fulfils (``"L2:partial"``, ``"breakeven"``...): the policy
    never emits a second intent for an obligation that is pending or done.
    """
    kind: ActionKind
    obligation: str
    reason: str
    sl: float = 0.0      # MODIFY_SL: the new stop
    volume: float = 0.0  # PARTIAL_CLOSE / HEDGE: lots wanted (execution floors to the step)
    tp: float = 0.0      # MODIFY_SL: a new take-profit (0 = keep the current one)


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One row of the action journal: an intent, then what became of it.

    ``status``: pending (journaled, not yet sent) -> sent -> done / failed / uncertain (the
    terminal did not say; resolved against the broker before anything is resent), or deferred /
    skipped when no request was sent. ``(ticket, seq)`` names it; the order's comment carries it.
    """
    ticket: int
    seq: int
    kind: str
    obligation: str
    reason: str
    status: str
    created_at: float
    resolved_at: float = 0.0
    request: dict[str, Any] = field(default_factory=dict)
    retcode: int = 0
    result: dict[str, Any] = field(default_factory=dict)

    def copy(self, **changes: Any) -> ActionRecord:
        return dataclasses.replace(self, **changes)


# -- the trade -------------------------------------------------------------------------------

@dataclass(slots=True)
class Trade:
    """Everything DTMS knows about one registered position; the store persists all of it."""

    ticket: int
    symbol: str
    direction: Direction
    entry_price: float
    volume: float
    initial_volume: float
    sl: float
    tp: float
    initial_sl: float
    state: TradeState = TradeState.HEALTHY
    state_since: float = 0.0
    strategy_type: str = ""
    owner: str = ""
    magic: int = 0
    comment: str = ""
    policy: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0
    hedge_ticket: int = 0
    paused: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    closed_at: float = 0.0
    close_reason: str = ""
    close_price: float = 0.0
    profit: float = 0.0
    # engine state; the *_at/_since timers below are market (broker) time, not wall time
    opened_at: float = 0.0        # the position's open time at the broker
    flat_since: float = 0.0       # flat timer: started on entering WARNING_L1, 0 = stopped
    recovery_since: float = 0.0   # recovery timer: started on entering RECOVERING
    hedge_volume: float = 0.0
    layers: dict[str, float] = field(default_factory=dict)   # the last score, per layer
    obligations: dict[str, str] = field(default_factory=dict)  # duty -> pending/done/failed...
    action_seq: int = 0           # last action number; (ticket, seq) names a journal row

    @property
    def defensive(self) -> bool:
        return self.state in DEFENSIVE_STATES

    @property
    def initial_risk(self) -> float:
        """1 R in price units (0 when registered without a stop)."""
        return abs(self.entry_price - self.initial_sl) if self.initial_sl else 0.0

    def fields(self) -> dict[str, Any]:
        """Every field by name; its maps copied (one level: they hold plain values).
        ``dataclasses.asdict`` does the same by a deep copy, ~5x slower on a hot path."""
        d = {name: getattr(self, name) for name in TRADE_FIELDS}
        d["policy"], d["layers"] = dict(self.policy), dict(self.layers)
        d["obligations"] = dict(self.obligations)
        return d

    def view(self, mode: str = "live") -> dict[str, Any]:
        """The map clients see (``trade``, ``trades``, ``register``, notifications). ``mode``:
        the configured ``policy.mode``, shown as the trade's ``mode`` unless it overrides it."""
        d = self.fields()
        d["direction"] = self.direction.value
        d["state"] = self.state.value
        d["defensive"] = self.defensive
        d["managed"] = self.state not in UNMANAGED_STATES
        d["pending"] = sorted(k for k, v in self.obligations.items() if v == "pending")
        d["mode"] = self.policy.get("mode", mode)
        return d

    def copy(self, **changes: Any) -> Trade:
        return dataclasses.replace(self, **changes)

    def differs_beyond_score(self, other: Trade) -> bool:
        """Whether a field other than the bar's score (``SCORE_FIELDS``) differs: a trade
        whose only change is its score has nothing of its own to store."""
        return _UNSCORED(self) != _UNSCORED(other)


TRADE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Trade))
#: the bar's score, the same for every trade of a symbol and direction: stored for all of them
#: at once on a bar close (the store's ``PutScores``), not with each trade's row
SCORE_FIELDS = ("score", "layers")
_UNSCORED = operator.attrgetter(*(f for f in TRADE_FIELDS if f not in SCORE_FIELDS))


@dataclass(frozen=True, slots=True)
class Transition:
    ticket: int
    at: float
    from_state: str
    to_state: str
    reason: str


# -- registration ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Registration:
    ticket: int
    symbol: str | None = None
    direction: Direction | None = None
    entry_price: float | None = None
    volume: float | None = None
    sl: float | None = None
    tp: float | None = None
    strategy_type: str = ""
    owner: str = ""
    magic: int | None = None
    comment: str = ""
    policy: dict[str, Any] = field(default_factory=dict)
    #: set only by ``recovery.adopt_unknown`` (never from the wire): a position with DTMS's
    #: own magic that DTMS has no record of may then be taken on as a trade
    adopted: bool = False


_ENTRY_ALIASES = ("entry_price", "entry", "price_open")
_KNOWN_FIELDS = frozenset({"ticket", "symbol", "direction", "volume", "sl", "tp", "strategy_type",
                           "owner", "magic", "comment", "policy", *_ENTRY_ALIASES})
MAX_TICKET = 2**63 - 1


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def parse_registration(args: Any) -> Registration:
    """Validate a ``register`` map; raise one InvalidArgument naming every bad field."""
    if not isinstance(args, dict):
        raise InvalidArgument("must be a map of named arguments", field="params")
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}

    unknown = sorted(str(k) for k in args if k not in _KNOWN_FIELDS)
    for k in unknown:
        errors[k] = "unknown field"

    ticket = args.get("ticket")
    if ticket is None:
        errors["ticket"] = "required"
    elif isinstance(ticket, bool) or not isinstance(ticket, int):
        errors["ticket"] = f"must be an integer, got {type(ticket).__name__}"
    elif not 0 < ticket <= MAX_TICKET:
        errors["ticket"] = "must be > 0"
    else:
        out["ticket"] = ticket

    symbol = args.get("symbol")
    if symbol is not None:
        if not isinstance(symbol, str) or not symbol.strip() or len(symbol) > 32:
            errors["symbol"] = "must be a non-empty string of at most 32 characters"
        else:
            out["symbol"] = symbol.strip()

    direction = args.get("direction")
    if direction is not None:
        if isinstance(direction, str) and direction.strip().upper() in ("BUY", "SELL"):
            out["direction"] = Direction(direction.strip().upper())
        else:
            errors["direction"] = "must be BUY or SELL"

    given = {a: args[a] for a in _ENTRY_ALIASES if args.get(a) is not None}
    if given:
        values = {a: _number(v) for a, v in given.items()}
        bad = [a for a, v in values.items() if v is None or v <= 0]
        for a in bad:
            errors[a] = "must be a number > 0"
        if not bad:
            distinct = set(values.values())
            if len(distinct) > 1:
                errors[next(iter(given))] = f"aliases {sorted(given)} disagree"
            else:
                out["entry_price"] = distinct.pop()

    volume = args.get("volume")
    if volume is not None:
        v = _number(volume)
        if v is None or v <= 0:
            errors["volume"] = "must be a number > 0"
        else:
            out["volume"] = v

    for level in ("sl", "tp"):
        value = args.get(level)
        if value is not None:
            v = _number(value)
            if v is None or v < 0:
                errors[level] = "must be a number >= 0 (0 or nil = none)"
            else:
                out[level] = v

    for text, limit in (("strategy_type", 64), ("owner", 64), ("comment", 128)):
        value = args.get(text)
        if value is not None:
            if not isinstance(value, str) or len(value) > limit:
                errors[text] = f"must be a string of at most {limit} characters"
            else:
                out[text] = value

    magic = args.get("magic")
    if magic is not None:
        if isinstance(magic, bool) or not isinstance(magic, int) or not 0 <= magic <= MAX_TICKET:
            errors["magic"] = "must be an integer >= 0"
        else:
            out["magic"] = magic

    policy = args.get("policy")
    if policy is not None:
        if not isinstance(policy, dict) or not all(isinstance(k, str) for k in policy):
            errors["policy"] = "must be a map with string keys"
        else:
            # each key typed exactly and named (``policy.<key>``); bounds: resolve_policy
            problems = typing_problems(policy)
            errors.update(problems)
            if not problems:
                out["policy"] = dict(policy)

    if errors:
        raise InvalidArgument.many(errors)
    return Registration(**out)
