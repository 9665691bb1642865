"""Shadow mode: what DTMS would have done to a trade, without sending anything. Pure.

With ``policy.mode = "shadow"`` (globally, or for one trade through its ``policy`` map) a trade
is decided exactly as a live one -- the same lifecycle, the same request built from a fresh
tick and the symbol's constraints -- but the request is journaled with status ``shadow`` instead
of being sent. What a trader expects from a dry run of a trade manager, and what this module
keeps true:

* **The state machine advances** (WARNING_L1, WARNING_L2, HEDGED... and their timers): the state
  is DTMS's opinion of the trade, not a fact about the position.
* **The broker position is untouched, and the trade keeps following the real one**: the trade's
  ``sl``, ``tp`` and ``volume`` stay the broker's (changes made outside DTMS are adopted as for a
  live trade; a position closed at the broker closes the trade with the broker's reason).
* **Decisions build on what DTMS would have done**: the policy is fed the trade as it would be
  after its shadow actions (:class:`ShadowBook`): the stop it would have set (when tighter than
  the real one), the volume it would have closed taken off. So a shadow trail ratchets from its
  own last stop and never shows a looser one, and the WARNING_L2 cut halves what would be left.
  A trade DTMS would have closed in full is then only watched and scored (as a paused one).
  A shadow hedge has no ticket: its volume is booked, but closing it (at recovery, with the
  trade) is not journaled.
* **Each shadow action counts once**: its obligation is settled as ``shadow`` (never offered
  again while the trade stays in shadow).
* **Switching to live starts from the broker's current position** (:func:`to_live`): the
  position is re-read, the shadow book forgotten and the shadow obligations dropped, so the
  live policy decides once, afresh, on the real position (a stop it would have moved is moved
  once if it still should be; nothing from the shadow period is replayed). A trade that starts
  live with shadow obligations left (the configured mode changed across a restart) goes live
  the same way.

:func:`report` sums a journal's shadow rows: how many stops would have moved, how much volume
would have been closed (and hedged), and the P/L difference of those closes against the current
price. Example::

    book = ShadowBook().after(record_kind, request_fields, volume, full_close, direction)
    decided = book.as_decided(trade)         # what lifecycle.decide is fed
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dtms.model import ActionKind, ActionRecord, Direction, Position, Trade

SHADOW = "shadow"
MODES = ("live", "shadow")
#: the Trade fields the shadow book stands in for while the policy decides
BOOK_FIELDS = ("sl", "volume", "hedge_volume", "paused")


@dataclass(frozen=True, slots=True)
class ShadowBook:
    """The position as DTMS would have left it: its stop (0 = none set in shadow), the volume it
    would have closed, the hedge it would hold, and whether it would have closed it all."""
    sl: float = 0.0
    closed_volume: float = 0.0
    hedge_volume: float = 0.0
    closed: bool = False

    def after(self, kind: str, request: Mapping[str, Any], volume: float, full_close: bool,
              direction: Direction) -> ShadowBook:
        """The book once the shadow action ``kind`` (its request and volume) would have filled.
        A HEDGE whose request names the trade's ``position`` is a netting account's reduction."""
        if kind == ActionKind.MODIFY_SL:
            sl = float(request.get("sl", 0.0))
            return ShadowBook(sl if _tighter(direction, sl, self.sl) else self.sl,
                              self.closed_volume, self.hedge_volume, self.closed)
        if kind == ActionKind.CLOSE_HEDGE:
            return ShadowBook(self.sl, self.closed_volume, 0.0, self.closed)
        if kind == ActionKind.HEDGE and "position" not in request:
            return ShadowBook(self.sl, self.closed_volume, volume, self.closed)
        if kind in (ActionKind.PARTIAL_CLOSE, ActionKind.CLOSE, ActionKind.HEDGE):
            return ShadowBook(self.sl, round(self.closed_volume + volume, 8), self.hedge_volume,
                              self.closed or full_close or kind == ActionKind.CLOSE)
        return self

    def as_decided(self, trade: Trade) -> Trade:
        """The trade as the policy should see it: real, with the shadow actions applied."""
        sl = self.sl if _tighter(trade.direction, self.sl, trade.sl) else trade.sl
        return trade.copy(sl=sl, volume=max(0.0, round(trade.volume - self.closed_volume, 8)),
                          hedge_volume=self.hedge_volume, paused=trade.paused or self.closed)


def _tighter(direction: Direction, new: float, old: float) -> bool:
    if new <= 0:
        return False
    if old <= 0:
        return True
    return new > old if direction is Direction.BUY else new < old


def book_of(journal: Iterable[ActionRecord], direction: Direction) -> ShadowBook:
    """The book of a trade from its journal (any order): its shadow rows after the last row
    that is not shadow (a live period, or the switch back to live, starts a new book)."""
    rows = sorted(journal, key=lambda a: a.seq)
    last_live = max((a.seq for a in rows if a.status != SHADOW), default=0)
    book = ShadowBook()
    for a in rows:
        if a.seq > last_live and a.status == SHADOW:
            book = book.after(a.kind, a.request, float(a.result.get("volume", 0.0)),
                              bool(a.result.get("full_close", False)), direction)
    return book


def to_live(trade: Trade, position: Position | None) -> dict[str, Any]:
    """The trade's changes when it switches from shadow to live: the broker's position as it is
    now, and no shadow obligation (the live policy owes them afresh, once)."""
    changes: dict[str, Any] = {"obligations": {k: v for k, v in trade.obligations.items()
                                               if v != SHADOW}}
    if position is not None:
        changes.update(sl=position.sl, tp=position.tp, volume=position.volume)
    return changes


@dataclass(frozen=True, slots=True)
class Quote:
    """What :func:`report` needs of an open trade now: its closing price (the position's
    ``price_current``: bid for a BUY, ask for a SELL) and the money one unit of price is worth
    per lot in the account currency."""
    price: float
    value_per_lot: float


def quote_of(position: Position, contract_size: float) -> Quote:
    """The position's own valuation: its profit over its price move and volume (the terminal's
    conversion to the account currency at today's rates); a position exactly at its open
    price has none, and falls back to the contract size (the symbol's profit currency)."""
    sign = 1.0 if position.direction is Direction.BUY else -1.0
    move = sign * (position.price_current - position.price_open) * position.volume
    if abs(move) > 1e-12 and position.profit:
        return Quote(position.price_current, position.profit / move)
    return Quote(position.price_current, contract_size)


def report(rows: Iterable[ActionRecord], trades: Mapping[int, Trade],
           quotes: Mapping[int, Quote]) -> dict[str, Any]:
    """Totals of shadow journal rows: what DTMS would have done, and the P/L difference.

    ``pnl_difference``: for each volume it would have closed (partial closes, closes, netting
    reductions), the profit of closing it at the request's price minus the profit of holding
    it to the trade's current closing price, in the account currency as the terminal values
    the position (:func:`quote_of`). Positive: DTMS would have done better than holding. Stop
    moves are counted, not priced: whether a stop would have been hit depends on the path in
    between (``dtms replay`` answers that). A trade with no quote (its position is closed, or
    the terminal could not say) is counted but left out of the P/L (``unpriced``).
    """
    kinds: dict[str, int] = {}
    per_trade: dict[int, dict[str, Any]] = {}
    closed_volume = hedged_volume = pnl = 0.0
    unpriced: set[int] = set()
    for a in rows:
        if a.status != SHADOW:
            continue
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
        entry = per_trade.setdefault(a.ticket, {"ticket": a.ticket, "actions": 0,
                                                "closed_volume": 0.0, "pnl_difference": 0.0})
        entry["actions"] += 1
        volume = float(a.result.get("volume", 0.0))
        trade = trades.get(a.ticket)
        reduces = a.kind in (ActionKind.PARTIAL_CLOSE, ActionKind.CLOSE) or (
            a.kind == ActionKind.HEDGE and "position" in a.request)
        if a.kind == ActionKind.HEDGE and not reduces:
            hedged_volume += volume
        if not reduces or trade is None:
            continue
        closed_volume += volume
        entry["closed_volume"] = round(entry["closed_volume"] + volume, 8)
        quote = quotes.get(a.ticket)
        if quote is None:
            unpriced.add(a.ticket)
            continue
        sign = 1 if trade.direction is Direction.BUY else -1
        diff = sign * (float(a.request.get("price", quote.price)) - quote.price)
        money = round(diff * volume * quote.value_per_lot, 2)
        entry["pnl_difference"] = round(entry["pnl_difference"] + money, 2)
        pnl += money
    return {"actions": sum(kinds.values()), "by_kind": dict(sorted(kinds.items())),
            "stops_moved": kinds.get(ActionKind.MODIFY_SL, 0),
            "closes": kinds.get(ActionKind.CLOSE, 0),
            "partial_closes": kinds.get(ActionKind.PARTIAL_CLOSE, 0),
            "closed_volume": round(closed_volume, 8), "hedged_volume": round(hedged_volume, 8),
            "pnl_difference": round(pnl, 2), "unpriced": sorted(unpriced),
            "trades": [per_trade[t] for t in sorted(per_trade)]}


__all__ = ["MODES", "SHADOW", "Quote", "ShadowBook", "book_of", "quote_of", "report", "to_live"]
