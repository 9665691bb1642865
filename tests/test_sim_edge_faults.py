"""The simulated terminal's faults and controls added for issue 13: a position left out of
positions_get, deals that reach the history late, a spread change, another account mode,
latency of one API function."""

from __future__ import annotations

import pytest

from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.brokers.sim import constants as c


@pytest.fixture
def term() -> SimTerminal:
    t = SimTerminal(SimConfig(seed=3, history_mode="flat", history_days=1), clock=ManualClock())
    assert t.initialize()
    t.hold("EURUSD")
    return t


def tickets(term: SimTerminal, **kw) -> list[int]:
    return [p.ticket for p in term.positions_get(**kw)]


def test_a_hidden_position_is_left_out_of_positions_get_until_shown(term):
    a = term.open_position("EURUSD", "BUY", 0.1)
    b = term.open_position("EURUSD", "SELL", 0.1)
    term.hide_position(a)
    assert tickets(term) == [b] and tickets(term, ticket=a) == [] and tickets(term) == [b]
    assert term.positions_total() == 2                 # still open: no deal, nothing closed
    term.show_position(a)
    assert tickets(term) == [a, b]


def test_a_position_hidden_for_n_calls_is_back_after_them(term):
    a = term.open_position("EURUSD", "BUY", 0.1)
    term.hide_position(a, calls=2)
    assert tickets(term) == [] and tickets(term, symbol="EURUSD") == []
    assert tickets(term) == [a]
    with pytest.raises(ValueError):
        term.hide_position(a, calls=0)


def test_late_deals_are_left_out_of_the_history_for_n_calls(term):
    a = term.open_position("EURUSD", "BUY", 0.1)
    term.close_position_manually(a)
    term.delay_deals(a, calls=1)
    assert term.history_deals_get(position=a) == ()
    assert [d.entry for d in term.history_deals_get(position=a)] == [c.DEAL_ENTRY_IN,
                                                                     c.DEAL_ENTRY_OUT]


def test_set_spread_makes_a_tick_with_the_same_bid_and_a_new_ask(term):
    before = term.symbol_info_tick("EURUSD")
    term.set_spread("EURUSD", 30)
    after = term.symbol_info_tick("EURUSD")
    assert (after.bid, after.ask, term.symbol_info("EURUSD").spread) == (
        before.bid, round(before.bid + 0.0003, 5), 30)
    with pytest.raises(ValueError):
        term.set_spread("EURUSD", -1)


def test_set_account_mode_switches_hedging_and_netting(term):
    assert term.account_info().margin_mode == c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
    term.set_account_mode(c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING)
    assert term.account_info().margin_mode == c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING
    a = term.open_position("EURUSD", "BUY", 0.2)
    assert term.open_position("EURUSD", "SELL", 0.1) == a   # netting: a reduction
    assert [p.volume for p in term.positions_get()] == [0.1]
    with pytest.raises(ValueError):
        term.set_account_mode(99)


def test_latency_of_one_function_leaves_the_others_fast(term):
    term.set_latency(0.2, "order_send")
    assert term.faults.latency_of("order_send") == 0.2
    assert term.faults.latency_of("symbol_info_tick") == 0.0
    term.set_latency(0.1)                                  # every other function
    assert (term.faults.latency_of("order_send"), term.faults.latency_of("positions_get")) == (
        0.2, 0.1)
    term.faults.clear()
    assert term.faults.latency_of("order_send") == 0.0
