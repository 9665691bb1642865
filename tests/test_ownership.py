"""The ownership rule as a table (dtms/policy/ownership.py): every combination of what the
request says (owner, strategy_type, magic) against the broker's facts (the position's magic
and comment), and a re-registration against the stored trade."""

from __future__ import annotations

import itertools

import pytest

from dtms.errors import Conflict, DtmsPosition, OwnedElsewhere
from dtms.model import Direction, Position, Registration, Trade, TradeState
from dtms.policy.ownership import (
    OwnershipRules,
    hedge_of,
    position_refusal,
    request_refusal,
    stored_refusal,
)

OURS, OTHERS, EA = 770077, 5150, 42
RULES = OwnershipRules(strategies=frozenset({"grid"}), owners=frozenset({"other-bot"}),
                       magics=frozenset({OTHERS}), our_magic=OURS, comment_tag="DTMS")


def _position(magic: int, comment: str = "", symbol: str = "EURUSD",
              direction: Direction = Direction.BUY) -> Position:
    return Position(ticket=100, symbol=symbol, direction=direction, volume=0.1, price_open=1.1,
                    sl=0.0, tp=0.0, price_current=1.1, profit=0.0, magic=magic,
                    comment=comment, time=0)


def _verdict(reg: Registration, p: Position) -> tuple[str, str | None, dict] | None:
    error = request_refusal(reg, RULES) or position_refusal(reg, p, RULES)
    if error is None:
        return None
    keep = ("hedge_of", "magic", "given", "broker")
    return error.code, error.details.get("field"), {
        k: v for k, v in error.details.items() if k in keep}


OWNERS = ["", "me", "other-bot", "OTHER-BOT"]
STRATEGIES = ["", "scalp", "grid"]
REQUEST_MAGICS = [None, EA, OTHERS, OURS]
POSITIONS = [(EA, ""), (EA, "my ea"), (OTHERS, ""), (OURS, ""), (OURS, "DTMS:77:1"),
             (EA, "DTMS:77:2"), (0, "DTMS:x:1")]


def _expected(owner: str, strategy: str, magic: int | None, p_magic: int, comment: str
              ) -> tuple[str, str | None, dict] | None:
    """The rule, written out once more in its own order."""
    if strategy == "grid":
        return "OWNED_ELSEWHERE", "strategy_type", {}
    if owner.lower() == "other-bot":
        return "OWNED_ELSEWHERE", "owner", {}
    ours_by_comment = comment.startswith("DTMS:") and comment.split(":")[1].isdigit()
    if p_magic == OURS or ours_by_comment:
        return "DTMS_POSITION", "ticket", {"magic": p_magic, **(
            {"hedge_of": int(comment.split(":")[1])} if ours_by_comment else {})}
    if p_magic == OTHERS:
        return "OWNED_ELSEWHERE", "magic", {"magic": p_magic}
    if magic is not None and magic != p_magic:
        return "CONFLICT", "magic", {"given": magic, "broker": p_magic}
    return None


@pytest.mark.parametrize(("owner", "strategy", "magic", "position"), list(
    itertools.product(OWNERS, STRATEGIES, REQUEST_MAGICS, POSITIONS)))
def test_ownership_is_decided_from_the_brokers_facts(owner, strategy, magic, position) -> None:
    reg = Registration(ticket=100, owner=owner, strategy_type=strategy, magic=magic)
    assert _verdict(reg, _position(*position)) == _expected(owner, strategy, magic, *position)


def test_leaving_owner_and_magic_out_does_not_adopt_another_managers_position() -> None:
    error = position_refusal(Registration(ticket=100), _position(OTHERS), RULES)
    assert isinstance(error, OwnedElsewhere)
    assert error.details == {"field": "magic", "magic": OTHERS}
    assert str(OTHERS) in error.message


def test_dtms_own_hedge_is_refused_naming_the_trade_it_hedges() -> None:
    error = position_refusal(Registration(ticket=100), _position(OURS, "DTMS:77:3"), RULES)
    assert isinstance(error, DtmsPosition)
    assert (error.code, error.status, error.details["hedge_of"]) == ("DTMS_POSITION", 409, 77)


def test_a_contradicting_magic_is_a_conflict_naming_both() -> None:
    error = position_refusal(Registration(ticket=100, magic=7), _position(EA), RULES)
    assert isinstance(error, Conflict)
    assert (error.details["given"], error.details["broker"]) == (7, EA)
    assert "magic 7" in error.message and str(EA) in error.message


@pytest.mark.parametrize(("comment", "trade"), [
    ("DTMS:77:1", 77), ("DTMS:123456789:12", 123456789), ("DTMS:77", None), ("DTMS:x:1", None),
    ("dtms:77:1", None), ("OTHER:77:1", None), ("", None), ("DTMS:77:1:2", None),
])
def test_hedge_of_reads_only_dtms_own_comment_tag(comment: str, trade: int | None) -> None:
    assert hedge_of(comment, "DTMS") == trade


def _stored(state: TradeState, direction: Direction = Direction.BUY) -> Trade:
    return Trade(ticket=100, symbol="EURUSD", direction=direction, entry_price=1.1, volume=0.1,
                 initial_volume=0.1, sl=0.0, tp=0.0, initial_sl=0.0, state=state,
                 state_since=0.0, magic=EA)


@pytest.mark.parametrize(("reg", "field"), [
    (Registration(ticket=100), None),
    (Registration(ticket=100, symbol="eurusd", direction=Direction.BUY, magic=EA), None),
    (Registration(ticket=100, symbol="EURUSDc"), None),            # a broker suffix
    (Registration(ticket=100, symbol="GBPUSD"), "symbol"),
    (Registration(ticket=100, direction=Direction.SELL), "direction"),
    (Registration(ticket=100, magic=EA + 1), "magic"),
])
@pytest.mark.parametrize("state", [TradeState.HEALTHY, TradeState.HEDGED, TradeState.CLOSED])
def test_a_reregistration_is_checked_against_the_stored_trade(reg, field, state) -> None:
    error = stored_refusal(reg, _stored(state))
    assert (error.details["field"] if error else None) == field
    if error is not None:
        assert (error.code, error.details["state"]) == ("CONFLICT", state.value)


def test_only_the_adopt_unknown_recovery_takes_on_a_position_with_dtms_magic() -> None:
    p = _position(OURS, "left over")
    assert isinstance(position_refusal(Registration(ticket=100), p, RULES), DtmsPosition)
    assert position_refusal(Registration(ticket=100, adopted=True), p, RULES) is None
