"""Registration parsing and close reasons: pure functions, tables of inputs."""

from __future__ import annotations

import pytest

from dtms.errors import InvalidArgument
from dtms.model import (
    CloseReason,
    Deal,
    Direction,
    close_reason_from_deals,
    normalize_symbol,
    parse_registration,
)


@pytest.mark.parametrize("args, field, reason", [
    ({}, "ticket", "required"),
    ({"ticket": "5"}, "ticket", "must be an integer, got str"),
    ({"ticket": True}, "ticket", "must be an integer, got bool"),
    ({"ticket": 0}, "ticket", "must be > 0"),
    ({"ticket": 1, "direction": "long"}, "direction", "must be BUY or SELL"),
    ({"ticket": 1, "volume": 0}, "volume", "must be a number > 0"),
    ({"ticket": 1, "volume": float("nan")}, "volume", "must be a number > 0"),
    ({"ticket": 1, "sl": -0.1}, "sl", "must be a number >= 0 (0 or nil = none)"),
    ({"ticket": 1, "symbol": ""}, "symbol", "must be a non-empty string of at most 32 characters"),
    ({"ticket": 1, "magic": -1}, "magic", "must be an integer >= 0"),
    ({"ticket": 1, "policy": {"breakeven_r": [True]}}, "policy.breakeven_r",
     "expected a number, got list [True]"),
    ({"ticket": 1, "policy": {"breakeven_r": {"a": 1}}}, "policy.breakeven_r",
     "expected a number, got dict {'a': 1}"),
    ({"ticket": 1, "policy": {"be_r": 1}}, "policy.be_r", "unknown setting"),
    ({"ticket": 1, "policy": {1: 1}}, "policy", "must be a map with string keys"),
    ({"ticket": 1, "entry": 1.1, "price_open": 1.2}, "entry", "aliases ['entry', 'price_open'] disagree"),
    ({"ticket": 1, "lots": 1}, "lots", "unknown field"),
    ({"ticket": 1, "adopted": True}, "adopted", "unknown field"),   # recovery only
])
def test_invalid_registration_names_the_field(args, field, reason):
    with pytest.raises(InvalidArgument) as err:
        parse_registration(args)
    assert err.value.details["field"] == field
    assert err.value.details["errors"] == {field: reason}
    assert err.value.message == f"{field}: {reason}"


def test_registration_aliases_and_case():
    r = parse_registration({"ticket": 9, "direction": " sell ", "price_open": 2400.5, "sl": 0,
                            "tp": None, "policy": {"breakeven_r": 1.0}})
    assert (r.ticket, r.direction, r.entry_price, r.sl, r.tp) == (9, Direction.SELL, 2400.5, 0.0, None)
    assert r.policy == {"breakeven_r": 1.0}
    assert parse_registration({"ticket": 9, "entry": 1.5, "entry_price": 1.5}).entry_price == 1.5


@pytest.mark.parametrize("symbol, expected", [
    ("XAUUSDc", "XAUUSD"), ("EURUSD.pro", "EURUSD"), ("BTCUSDm", "BTCUSD"), ("eurusd", "EURUSD"),
    ("US30", "US30"),
])
def test_symbol_suffixes_are_normalised(symbol, expected):
    assert normalize_symbol(symbol) == expected


def _deal(ticket, entry, reason, magic=0, time=100, price=1.0, profit=0.0):
    return Deal(ticket, 5, "EURUSD", entry, reason, 0.1, price, profit, magic, "", time)


@pytest.mark.parametrize("deals, reason", [
    ([_deal(1, 0, 3), _deal(2, 1, 4)], CloseReason.SL),
    ([_deal(1, 0, 3), _deal(2, 1, 5)], CloseReason.TP),
    ([_deal(1, 0, 3), _deal(2, 1, 6)], CloseReason.STOP_OUT),
    ([_deal(1, 0, 3), _deal(2, 1, 0)], CloseReason.MANUAL),
    ([_deal(1, 0, 3), _deal(2, 1, 3, magic=7)], CloseReason.EXPERT),
    ([_deal(1, 0, 3), _deal(2, 1, 3, magic=770077)], CloseReason.DTMS),
    ([_deal(1, 0, 3), _deal(2, 1, 3, magic=770077, time=50), _deal(3, 1, 4, time=60)], CloseReason.SL),
    ([_deal(1, 0, 3)], CloseReason.UNKNOWN),
    ([], CloseReason.UNKNOWN),
])
def test_close_reason_comes_from_the_last_exit_deal(deals, reason):
    assert close_reason_from_deals(deals, 770077)[0] is reason
