"""The MT5 adapter over the simulated terminal: DTMS types out, BrokerError for None results."""

from __future__ import annotations

import time

import pytest

from dtms.brokers.mt5 import MT5Adapter, load_module, sim_terminal
from dtms.config import Settings
from dtms.errors import BrokerError
from dtms.model import Direction


@pytest.fixture
def adapter(sim) -> MT5Adapter:
    a = MT5Adapter(sim)
    a.connect()
    return a


def test_positions_and_symbols_convert_to_dtms_types(adapter, sim):
    ticket = sim.open_position("USDJPY", "SELL", 0.20, sl=151.5, magic=9, comment="bot")
    [p] = adapter.positions(ticket=ticket)
    assert (p.ticket, p.symbol, p.direction, p.volume, p.sl, p.magic, p.comment) == (
        ticket, "USDJPY", Direction.SELL, 0.2, 151.5, 9, "bot")
    assert adapter.positions(ticket=ticket + 1000) == []
    spec = adapter.symbol("XAUUSD")
    assert (spec.digits, spec.point, spec.volume_step, spec.stops_level, spec.freeze_level) == (
        2, 0.01, 0.01, 50, 20)
    bars = adapter.rates("EURUSD", "M5", 10)
    assert len(bars) == 10 and all(b[0] % 300 == 0 for b in bars)
    assert bars == sorted(bars)  # oldest first


def test_none_results_raise_broker_error_with_last_error(adapter, sim):
    sim.fail_next(1, function="positions_get", error=(-10005, "timeout"))
    with pytest.raises(BrokerError) as err:
        adapter.positions()
    assert (err.value.operation, err.value.code, err.value.message) == (
        "positions_get", -10005, "timeout")
    with pytest.raises(BrokerError) as err:
        adapter.symbol("NOPE")
    assert err.value.code == -4


def test_initialize_failure_is_a_broker_error(sim):
    sim.fail_next(1, function="initialize", error=(-10003, "IPC initialize failed"))
    with pytest.raises(BrokerError) as err:
        MT5Adapter(sim).connect()
    assert (err.value.operation, err.value.code) == ("initialize", -10003)


def test_deals_tell_why_a_position_closed(adapter, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    sim.set_price("EURUSD", 1.0790)
    exits = [d for d in adapter.deals_for_position(ticket) if d.entry == 1]
    assert [(d.reason, d.price) for d in exits] == [(4, 1.079)]


def test_embedded_terminal_never_reuses_a_previous_runs_tickets():
    first = sim_terminal(Settings())
    first.initialize()
    a = first.open_position("EURUSD", "BUY", 0.01)
    time.sleep(0.01)
    second = sim_terminal(Settings())
    second.initialize()
    b = second.open_position("EURUSD", "BUY", 0.01)
    assert b > a > 50_000_001


def test_unknown_module_names_itself():
    with pytest.raises(RuntimeError, match="broker module 'no_such_mt5' cannot be imported"):
        load_module(Settings().replace(broker={"backend": "module:no_such_mt5"}))
    with pytest.raises(RuntimeError, match=r"pip install 'dtms\[mt5\]'"):
        load_module(Settings().replace(broker={"backend": "mt5"}))


def test_positions_of_answers_the_open_ones_among_many_tickets_in_one_call(adapter, sim):
    a = sim.open_position("EURUSD", "BUY", 0.10, sl=1.08)
    b = sim.open_position("XAUUSD", "SELL", 0.02)
    found = adapter.positions_of([b, a + 10_000, a, b])
    assert sorted(found) == sorted([a, b])
    assert (found[a].symbol, found[a].direction, found[a].sl) == ("EURUSD", Direction.BUY, 1.08)
    assert (found[b].symbol, found[b].volume) == ("XAUUSD", 0.02)
    assert adapter.positions_of([]) == {}


def test_ticks_reads_many_symbols_in_one_call_and_names_the_ones_it_could_not(adapter, sim):
    found, failed = adapter.ticks(["EURUSD", "NOSUCH", "XAUUSD"])
    assert sorted(found) == ["EURUSD", "XAUUSD"]
    assert found["EURUSD"].symbol == "EURUSD" and found["EURUSD"].ask > found["EURUSD"].bid > 0
    assert list(failed) == ["NOSUCH"] and failed["NOSUCH"]
