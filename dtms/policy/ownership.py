"""Who may register a position: the ownership rule of SPEC section 4, decided from the broker's
facts and never from the client's word alone. Pure: (registration, position, stored trade,
rules) -> the error that refuses it, or None.

In the order checked:

1. before asking the broker (:func:`request_refusal`): the request's ``strategy_type`` or
   ``owner`` is configured as another manager's -> OWNED_ELSEWHERE naming that field;
2. from the broker's position (:func:`position_refusal`):

   * DTMS's own position: its magic is ``broker.magic`` or its comment is DTMS's tag
     ``<tag>:<ticket>:<seq>`` (a hedge or an order DTMS opened) -> DTMS_POSITION, with
     ``hedge_of: <ticket>`` when the comment names the trade; except when the operator asked
     DTMS to adopt the positions with its magic it has no record of
     (``recovery.adopt_unknown``: ``Registration.adopted``, never set from the wire);
   * its magic is configured as another manager's (``registry.owned_elsewhere_magics``) ->
     OWNED_ELSEWHERE naming the magic, whatever the request says (or leaves out);
   * ``magic`` given and different from the position's -> CONFLICT naming both;
   * ``symbol`` or ``direction`` contradicting the position -> CONFLICT naming the field;

3. against a stored trade of that ticket (:func:`stored_refusal`), for a re-registration: the
   ``symbol``, ``direction`` or ``magic`` given contradicting the stored trade -> CONFLICT
   naming the field and the stored value. (A closed trade has no position any more: it is
   checked against its stored record only.)

Example::

    rules = OwnershipRules.from_settings(settings)
    error = request_refusal(reg, rules) or position_refusal(reg, position, rules)
"""

from __future__ import annotations

from dataclasses import dataclass

from dtms.config import Settings
from dtms.errors import Conflict, DtmsError, DtmsPosition, OwnedElsewhere
from dtms.model import Position, Registration, Trade, normalize_symbol


@dataclass(frozen=True, slots=True)
class OwnershipRules:
    strategies: frozenset[str] = frozenset()   # lower case
    owners: frozenset[str] = frozenset()       # lower case
    magics: frozenset[int] = frozenset()
    our_magic: int = 770077
    comment_tag: str = "DTMS"

    @classmethod
    def from_settings(cls, settings: Settings) -> OwnershipRules:
        r = settings.registry
        return cls(strategies=frozenset(s.lower() for s in r.owned_elsewhere_strategies),
                   owners=frozenset(o.lower() for o in r.owned_elsewhere_owners),
                   magics=frozenset(r.owned_elsewhere_magics),
                   our_magic=settings.broker.magic, comment_tag=settings.broker.comment_tag)


def hedge_of(comment: str, tag: str) -> int | None:
    """The trade a DTMS comment ``<tag>:<ticket>:<seq>`` names; None if it is not one."""
    parts = comment.split(":")
    if len(parts) == 3 and parts[0] == tag and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1])
    return None


def request_refusal(reg: Registration, rules: OwnershipRules) -> DtmsError | None:
    if reg.strategy_type and reg.strategy_type.lower() in rules.strategies:
        return OwnedElsewhere(f"strategy_type {reg.strategy_type!r} is managed by another "
                              "manager", field="strategy_type")
    if reg.owner and reg.owner.lower() in rules.owners:
        return OwnedElsewhere(f"owner {reg.owner!r} is another manager", field="owner")
    return None


def position_refusal(reg: Registration, p: Position, rules: OwnershipRules
                     ) -> DtmsError | None:
    trade = hedge_of(p.comment, rules.comment_tag)
    if (p.magic == rules.our_magic or trade is not None) and not reg.adopted:
        what = f"DTMS's hedge of trade {trade}" if trade is not None else "DTMS's own position"
        details = {"hedge_of": trade} if trade is not None else {}
        return DtmsPosition(f"position {p.ticket} is {what} (magic {p.magic}, comment "
                            f"{p.comment!r}); DTMS manages it with that trade, not as a trade",
                            field="ticket", magic=p.magic, **details)
    if p.magic in rules.magics:
        return OwnedElsewhere(f"position {p.ticket} has magic {p.magic}, which another "
                              "manager owns", field="magic", magic=p.magic)
    if reg.magic is not None and reg.magic != p.magic:
        return Conflict(f"magic {reg.magic} contradicts the broker's {p.magic}", field="magic",
                        given=reg.magic, broker=p.magic)
    if reg.symbol is not None and normalize_symbol(reg.symbol) != normalize_symbol(p.symbol):
        return Conflict(f"symbol {reg.symbol!r} contradicts the broker's {p.symbol!r}",
                        field="symbol", broker=p.symbol)
    if reg.direction is not None and reg.direction is not p.direction:
        return Conflict(f"direction {reg.direction.value} contradicts the broker's "
                        f"{p.direction.value}", field="direction", broker=p.direction.value)
    return None


def stored_refusal(reg: Registration, t: Trade) -> DtmsError | None:
    if reg.symbol is not None and normalize_symbol(reg.symbol) != normalize_symbol(t.symbol):
        return Conflict(f"symbol {reg.symbol!r} contradicts the stored trade's {t.symbol!r} "
                        f"({t.state.value})", field="symbol", stored=t.symbol,
                        state=t.state.value)
    if reg.direction is not None and reg.direction is not t.direction:
        return Conflict(f"direction {reg.direction.value} contradicts the stored trade's "
                        f"{t.direction.value} ({t.state.value})", field="direction",
                        stored=t.direction.value, state=t.state.value)
    if reg.magic is not None and reg.magic != t.magic:
        return Conflict(f"magic {reg.magic} contradicts the stored trade's {t.magic} "
                        f"({t.state.value})", field="magic", given=reg.magic, stored=t.magic,
                        state=t.state.value)
    return None


__all__ = ["OwnershipRules", "hedge_of", "position_refusal", "request_refusal",
           "stored_refusal"]
