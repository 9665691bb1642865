"""Behaviour-pinning tests of the simulated MetaTrader 5 terminal (dtms.brokers.sim)."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from dtms.brokers.sim import ManualClock, RealtimeClock, SimConfig, SimTerminal, SimTradeRejected
from dtms.brokers.sim import constants as c

START = 1_717_372_800  # 2024-06-03 00:00:00 UTC, minute aligned


def make(**overrides: object) -> SimTerminal:
    cfg = dict(symbols=("EURUSD", "USDJPY", "XAUUSD"), history_days=3.5)
    cfg.update(overrides)
    term = SimTerminal(SimConfig(**cfg), ManualClock(START))
    assert term.initialize() is True
    return term


@pytest.fixture
def term() -> SimTerminal:
    t = make()
    t.set_price("EURUSD", 1.08500)  # ask 1.08512
    return t


def buy(term: SimTerminal, volume: float = 0.1, **extra: object):
    req = {"action": c.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": volume,
           "type": c.ORDER_TYPE_BUY, "type_filling": c.ORDER_FILLING_FOK}
    req.update(extra)
    return term.order_send(req)


def sell(term: SimTerminal, volume: float = 0.1, **extra: object):
    return buy(term, volume, type=c.ORDER_TYPE_SELL, **extra)


# --- connection and errors ----------------------------------------------------------------

def test_calls_before_initialize_return_none_with_no_ipc() -> None:
    t = SimTerminal(SimConfig(symbols=("EURUSD",)))
    assert t.positions_get() is None
    assert t.last_error() == (-10004, "No IPC connection")
    assert t.account_info() is None
    assert t.order_send({"action": 1}) is None
    assert t.initialize() is True
    assert t.last_error() == (1, "Success")
    t.shutdown()
    assert t.symbol_info("EURUSD") is None
    assert t.last_error()[0] == c.RES_E_INTERNAL_FAIL_CONNECT


def test_initialize_rejects_wrong_login() -> None:
    t = SimTerminal(SimConfig(symbols=("EURUSD",), login=42, password="pw"))
    assert t.initialize(login=41, password="pw") is False
    assert t.last_error()[0] == c.RES_E_AUTH_FAILED
    assert t.initialize(login=42, password="pw", server="DTMS-Sim") is True


def test_constants_match_metatrader5_values(term: SimTerminal) -> None:
    assert (term.TRADE_ACTION_DEAL, term.TRADE_ACTION_SLTP, term.TRADE_ACTION_CLOSE_BY) == (1, 6, 10)
    assert (term.TIMEFRAME_H1, term.TIMEFRAME_H4, term.TIMEFRAME_D1) == (16385, 16388, 16408)
    assert (term.TRADE_RETCODE_DONE, term.TRADE_RETCODE_FIFO_CLOSE) == (10009, 10045)
    assert (c.DEAL_REASON_SL, c.DEAL_REASON_TP, c.DEAL_ENTRY_OUT_BY) == (4, 5, 3)
    assert (c.SYMBOL_FILLING_FOK, c.SYMBOL_FILLING_IOC, c.ORDER_FILLING_RETURN) == (1, 2, 2)
    assert term.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING == 2


def test_account_info_defaults(term: SimTerminal) -> None:
    acc = term.account_info()
    assert acc.margin_mode == c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
    assert acc.balance == 10_000.0 and acc.equity == 10_000.0 and acc.currency == "USD"
    assert make(margin_mode=0).account_info().margin_mode == c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING


# --- symbols --------------------------------------------------------------------------------

def test_symbol_info_and_tick(term: SimTerminal) -> None:
    info = term.symbol_info("EURUSD")
    assert (info.digits, info.point, info.trade_contract_size) == (5, 0.00001, 100_000.0)
    assert (info.volume_min, info.volume_max, info.volume_step) == (0.01, 100.0, 0.01)
    assert (info.trade_stops_level, info.trade_freeze_level, info.spread) == (10, 5, 12)
    assert info.filling_mode == c.SYMBOL_FILLING_FOK | c.SYMBOL_FILLING_IOC
    tick = term.symbol_info_tick("EURUSD")
    assert tick.bid == 1.085 and tick.ask == 1.08512 and tick.time_msc == START * 1000
    assert term.symbol_info("JPY") is None and term.last_error()[0] == -4
    assert term.symbol_info("USDJPY").currency_profit == "JPY"


def test_symbol_suffix_and_symbols_get() -> None:
    t = make(symbol_suffix="c", symbols=None)
    names = {s.name for s in t.symbols_get()}
    assert names == {"EURUSDc", "GBPUSDc", "USDJPYc", "XAUUSDc", "BTCUSDc"}
    assert {s.name for s in t.symbols_get(group="*USD*,!EUR*,!GBP*")} == {
        "USDJPYc", "XAUUSDc", "BTCUSDc"}
    assert t.symbol_info("XAUUSD") is None
    assert t.symbol_info("XAUUSDc").trade_stops_level == 50


# --- order_send -----------------------------------------------------------------------------

def test_market_buy_opens_position(term: SimTerminal) -> None:
    r = buy(term, 0.1, magic=7, comment="dtms")
    assert r.retcode == c.TRADE_RETCODE_DONE and r.comment == "Request executed"
    assert r.volume == 0.1 and r.price == 1.08512 and (r.bid, r.ask) == (1.085, 1.08512)
    assert r.order >= 50_000_000 and r.deal > 0 and r.request.symbol == "EURUSD"
    (pos,) = term.positions_get()
    assert pos.ticket == r.order == pos.identifier
    assert (pos.type, pos.volume, pos.price_open, pos.magic) == (0, 0.1, 1.08512, 7)
    assert pos.reason == c.POSITION_REASON_EXPERT and pos.comment == "dtms"
    assert pos.profit == pytest.approx(-1.2)
    assert term.positions_total() == 1
    assert term.positions_get(symbol="XAUUSD") == ()
    assert term.positions_get(ticket=pos.ticket) == (pos,)
    assert buy(term).order > r.order


@pytest.mark.parametrize("volume", [0.015, 0.0, 0.001, 100.01])
def test_invalid_volume(term: SimTerminal, volume: float) -> None:
    assert buy(term, volume).retcode == c.TRADE_RETCODE_INVALID_VOLUME
    assert term.positions_get() == ()


def test_stops_inside_stops_level_rejected(term: SimTerminal) -> None:
    assert buy(term, sl=1.08495).retcode == c.TRADE_RETCODE_INVALID_STOPS
    assert buy(term, tp=1.08505).retcode == c.TRADE_RETCODE_INVALID_STOPS
    assert buy(term, sl=1.08600).retcode == c.TRADE_RETCODE_INVALID_STOPS  # wrong side
    assert sell(term, sl=1.08515).retcode == c.TRADE_RETCODE_INVALID_STOPS
    assert term.positions_get() == ()
    assert buy(term, sl=1.08400, tp=1.08600).retcode == c.TRADE_RETCODE_DONE


def test_requote_outside_deviation(term: SimTerminal) -> None:
    r = buy(term, price=1.08490, deviation=10)
    assert r.retcode == c.TRADE_RETCODE_REQUOTE
    assert (r.bid, r.ask) == (1.085, 1.08512)
    assert buy(term, price=1.08505, deviation=10).retcode == c.TRADE_RETCODE_DONE


def test_unsupported_filling_rejected() -> None:
    t = make(symbol_overrides={"EURUSD": {"filling_mode": c.SYMBOL_FILLING_IOC}})
    assert buy(t).retcode == c.TRADE_RETCODE_INVALID_FILL  # FOK on an IOC-only symbol
    assert buy(t, type_filling=c.ORDER_FILLING_BOC).retcode == c.TRADE_RETCODE_INVALID_FILL
    assert buy(t, type_filling=c.ORDER_FILLING_IOC).retcode == c.TRADE_RETCODE_DONE


def test_market_closed_and_trade_disabled(term: SimTerminal) -> None:
    term.set_market_open("EURUSD", False)
    assert buy(term).retcode == c.TRADE_RETCODE_MARKET_CLOSED
    term.set_market_open("EURUSD", True)
    term.set_symbol_trade_mode("EURUSD", c.SYMBOL_TRADE_MODE_DISABLED)
    assert buy(term).retcode == c.TRADE_RETCODE_TRADE_DISABLED
    term.set_symbol_trade_mode("EURUSD", c.SYMBOL_TRADE_MODE_LONGONLY)
    assert sell(term).retcode == c.TRADE_RETCODE_LONG_ONLY
    term.set_algo_trading(False)
    assert buy(term).retcode == c.TRADE_RETCODE_CLIENT_DISABLES_AT
    assert make(closed_markets=("EURUSD",)).order_send(
        {"action": 1, "symbol": "EURUSD", "volume": 0.1, "type": 0}).retcode == 10018


def test_malformed_requests(term: SimTerminal) -> None:
    assert term.order_send(None) is None and term.last_error()[0] == -2
    assert term.order_send({"action": 1, "symbol": "EURUSD", "type": 0}) is None
    assert term.last_error()[0] == c.RES_E_INVALID_PARAMS
    assert term.order_send({"action": 1, "symbol": "EURUSD", "volume": "1", "type": 0}) is None
    assert buy(term, filling=1) is None  # not a request field
    r = term.order_send({"action": 1, "symbol": "NOPE", "volume": 0.1, "type": 0})
    assert r.retcode == c.TRADE_RETCODE_INVALID
    assert term.order_send({"action": 99}).retcode == c.TRADE_RETCODE_INVALID


def test_partial_and_full_close(term: SimTerminal) -> None:
    ticket = buy(term, 0.5).order
    term.set_price("EURUSD", 1.08600)
    r = sell(term, 0.2, position=ticket, magic=9, comment="trim")
    assert r.retcode == c.TRADE_RETCODE_DONE and r.price == 1.086
    (pos,) = term.positions_get()
    assert pos.ticket == ticket and pos.volume == pytest.approx(0.3)
    deal = term.history_deals_get(position=ticket)[-1]
    assert (deal.entry, deal.reason, deal.magic, deal.comment) == (
        c.DEAL_ENTRY_OUT, c.DEAL_REASON_EXPERT, 9, "trim")
    assert deal.profit == pytest.approx((1.086 - 1.08512) * 0.2 * 100_000)
    assert term.account_info().balance == pytest.approx(10_000 + deal.profit)
    assert sell(term, 0.4, position=ticket).retcode == c.TRADE_RETCODE_INVALID_CLOSE_VOLUME
    assert buy(term, 0.1, position=ticket).retcode == c.TRADE_RETCODE_INVALID  # same side
    r = sell(term, 0.3, position=ticket)
    assert r.retcode == c.TRADE_RETCODE_DONE and term.positions_get() == ()
    assert term.history_deals_get(position=ticket)[-1].reason == c.DEAL_REASON_CLIENT
    assert sell(term, 0.1, position=ticket).retcode == c.TRADE_RETCODE_POSITION_CLOSED


# --- SL/TP ----------------------------------------------------------------------------------

def sltp(term: SimTerminal, ticket: int, sl: float, tp: float = 0.0):
    return term.order_send({"action": c.TRADE_ACTION_SLTP, "symbol": "EURUSD",
                            "position": ticket, "sl": sl, "tp": tp})


def test_sltp_modify_no_changes_and_closed(term: SimTerminal) -> None:
    ticket = buy(term, sl=1.08400).order
    assert sltp(term, ticket, 1.08400).retcode == c.TRADE_RETCODE_NO_CHANGES
    assert sltp(term, ticket, 1.08495).retcode == c.TRADE_RETCODE_INVALID_STOPS
    r = sltp(term, ticket, 1.08300, 1.08700)
    assert r.retcode == c.TRADE_RETCODE_DONE
    assert (term.positions_get()[0].sl, term.positions_get()[0].tp) == (1.083, 1.087)
    assert sltp(term, ticket, 0.0, 1.08700).retcode == c.TRADE_RETCODE_DONE
    assert term.positions_get()[0].sl == 0.0
    assert sltp(term, 123, 1.08300).retcode == c.TRADE_RETCODE_POSITION_CLOSED


def test_sltp_frozen_near_existing_sl(term: SimTerminal) -> None:
    ticket = buy(term, sl=1.08400).order
    term.set_price("EURUSD", 1.08403)  # 3 points above SL, inside freeze level 5
    assert term.positions_total() == 1
    assert sltp(term, ticket, 1.08300).retcode == c.TRADE_RETCODE_FROZEN
    assert term.positions_get()[0].sl == 1.084


def test_sl_trigger_closes_with_reason_sl(term: SimTerminal) -> None:
    ticket = buy(term, sl=1.08400, magic=5).order
    term.set_price("EURUSD", 1.08390)
    assert term.positions_get() == ()
    out = term.history_deals_get(position=ticket)[-1]
    assert (out.entry, out.reason, out.price, out.magic) == (c.DEAL_ENTRY_OUT, 4, 1.0839, 5)
    assert out.position_id == ticket and out.type == c.DEAL_TYPE_SELL
    assert out.profit == pytest.approx(-12.2)
    assert term.account_info().balance == pytest.approx(10_000 - 12.2)


def test_tp_trigger_on_sell_uses_ask(term: SimTerminal) -> None:
    ticket = sell(term, tp=1.08300).order
    term.set_price("EURUSD", 1.08290)  # ask 1.08302: not yet
    assert term.positions_total() == 1
    term.set_price("EURUSD", 1.08280)  # ask 1.08292 <= tp
    out = term.history_deals_get(position=ticket)[-1]
    assert (out.reason, out.price) == (c.DEAL_REASON_TP, 1.08292)
    assert out.profit == pytest.approx(20.8)


def test_sl_triggers_during_advance() -> None:
    t = make(seed=3)
    bid = t.symbol_info_tick("XAUUSD").bid
    ticket = t.open_position("XAUUSD", "BUY", 0.01, sl=round(bid - 0.6, 2), tp=round(bid + 0.6, 2))
    t.advance(3600)
    assert t.positions_total() == 0
    out = t.history_deals_get(position=ticket)[-1]
    assert out.reason in (c.DEAL_REASON_SL, c.DEAL_REASON_TP)


# --- netting --------------------------------------------------------------------------------

def test_netting_merges_and_reverses() -> None:
    t = make(margin_mode=c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING)
    t.set_price("EURUSD", 1.08500)
    first = buy(t, 0.1).order
    t.set_price("EURUSD", 1.08600)
    assert buy(t, 0.2).retcode == c.TRADE_RETCODE_DONE
    (pos,) = t.positions_get()
    assert pos.ticket == first and pos.volume == pytest.approx(0.3)
    assert pos.price_open == pytest.approx((0.1 * 1.08512 + 0.2 * 1.08612) / 0.3)
    assert sell(t, 0.5).retcode == c.TRADE_RETCODE_DONE
    (pos,) = t.positions_get()
    assert (pos.ticket, pos.type, pos.price_open) == (first, c.POSITION_TYPE_SELL, 1.086)
    assert pos.volume == pytest.approx(0.2)
    assert t.history_deals_get(position=first)[-1].entry == c.DEAL_ENTRY_INOUT
    assert buy(t, 0.2).retcode == c.TRADE_RETCODE_DONE and t.positions_get() == ()


# --- prices and bars ------------------------------------------------------------------------

def ticks(seed: int) -> list[tuple]:
    t = make(seed=seed)
    out = []
    for _ in range(10):
        t.advance(37)
        out.append(tuple(t.symbol_info_tick(s) for s in ("EURUSD", "USDJPY", "XAUUSD")))
    return out


def test_same_seed_same_ticks() -> None:
    assert ticks(11) == ticks(11)
    assert ticks(11) != ticks(12)
    tick = ticks(11)[-1][1]
    assert tick.ask == round(tick.bid + 14 * 0.001, 3) and tick.time == START + 370


def test_copy_rates_from_pos_aligned_with_forming_bar(term: SimTerminal) -> None:
    term.advance(437)
    now = int(term.sim_time)
    for tf, secs in ((c.TIMEFRAME_M1, 60), (c.TIMEFRAME_M5, 300), (c.TIMEFRAME_M15, 900),
                     (c.TIMEFRAME_H1, 3600)):
        count = 300 if secs < 3600 else 40
        rates = term.copy_rates_from_pos("EURUSD", tf, 0, count)
        assert len(rates) == count
        assert all(r.time % secs == 0 for r in rates)
        assert [b.time - a.time for a, b in zip(rates, rates[1:], strict=False)] == [secs] * (count - 1)
        assert rates[-1].time == now - now % secs
        assert rates[-1].low <= rates[-1].close <= rates[-1].high
        assert rates[-1][4] == rates[-1].close  # positional access like numpy rows
        older = term.copy_rates_from_pos("EURUSD", tf, 1, count)
        assert older[-1] == rates[-2]
    term.set_price("EURUSD", 1.2)
    assert term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M5, 0, 1)[-1].high == 1.2
    assert term.copy_rates_from_pos("NOPE", c.TIMEFRAME_M5, 0, 10) is None
    assert term.last_error()[0] == c.RES_E_NOT_FOUND
    assert term.copy_rates_from_pos("EURUSD", 7, 0, 10) is None
    assert term.last_error()[0] == c.RES_E_INVALID_PARAMS


def test_default_history_covers_300_h1_bars() -> None:
    t = SimTerminal(SimConfig(symbols=("EURUSD",)), ManualClock(START))
    t.initialize()
    rates = t.copy_rates_from_pos("EURUSD", c.TIMEFRAME_H1, 0, 300)
    assert len(rates) == 300 and rates[-1].time == START
    assert 0.9 < rates[0].open < 1.25


def test_long_gap_catch_up_is_bounded() -> None:
    t = make()
    started = time.perf_counter()
    t.advance(30 * 86_400)
    assert time.perf_counter() - started < 2.0
    assert t.symbol_info_tick("EURUSD").time == START + 30 * 86_400


def test_realtime_clock_runs_faster() -> None:
    clock = RealtimeClock(speed=1000.0, start_epoch=START)
    time.sleep(0.01)
    assert clock.now() >= START + 9
    t = SimTerminal(SimConfig(symbols=("EURUSD",), history_days=0.1), clock)
    t.initialize()
    time.sleep(0.01)
    assert t.symbol_info_tick("EURUSD").time > START


# --- faults ---------------------------------------------------------------------------------

def test_fail_next(term: SimTerminal) -> None:
    term.fail_next(2)
    assert term.positions_get() is None
    assert term.last_error() == (-10005, "timeout")
    assert term.account_info() is None
    assert term.positions_get() == ()
    term.fail_next(1, function="order_send", error=(-10001, "send failed"))
    assert term.symbol_info_tick("EURUSD") is not None
    assert buy(term) is None and term.last_error() == (-10001, "send failed")
    assert term.positions_total() == 0
    term.fail_next(1, function="initialize")
    assert term.initialize() is False


def test_disconnect_until_initialize(term: SimTerminal) -> None:
    ticket = buy(term).order
    term.disconnect()
    assert term.positions_get() is None
    assert term.last_error() == (-10004, "No IPC connection")
    assert term.terminal_info() is None
    assert term.initialize() is True
    assert term.positions_get()[0].ticket == ticket


def test_uncertain_order_executes_but_reports_timeout(term: SimTerminal) -> None:
    term.uncertain_next_order()
    r = buy(term, magic=77)
    assert r.retcode == c.TRADE_RETCODE_TIMEOUT and r.order == 0 and r.deal == 0
    (pos,) = term.positions_get()
    assert pos.magic == 77
    assert buy(term).retcode == c.TRADE_RETCODE_DONE


def test_latency_and_thread_safety(term: SimTerminal) -> None:
    term.set_latency(0.005)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                assert term.positions_get() is not None
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    thread = threading.Thread(target=worker)
    started = time.perf_counter()
    thread.start()
    for i in range(20):
        term.set_price("EURUSD", 1.085 + i * 0.0001)
    thread.join()
    assert not errors
    assert time.perf_counter() - started >= 0.1


# --- controls, pending orders, history, money --------------------------------------------------

def test_controls_open_and_close_manually(term: SimTerminal) -> None:
    ticket = term.open_position("EURUSD", "SELL", 0.3, sl=1.08700, magic=3)
    assert term.positions_get(ticket=ticket)[0].sl == 1.087
    deal = term.close_position_manually(ticket, 0.1)
    assert term.positions_get()[0].volume == pytest.approx(0.2)
    assert term.history_deals_get(ticket=term.history_deals_get(position=ticket)[-1].order)[
        -1].ticket == deal
    term.close_position_manually(ticket)
    assert term.positions_total() == 0
    assert term.history_deals_get(position=ticket)[-1].reason == c.DEAL_REASON_CLIENT
    with pytest.raises(SimTradeRejected) as err:
        term.open_position("EURUSD", "BUY", 0.015)
    assert err.value.retcode == c.TRADE_RETCODE_INVALID_VOLUME


def test_pending_buy_limit_fills_on_price(term: SimTerminal) -> None:
    r = term.order_send({"action": c.TRADE_ACTION_PENDING, "symbol": "EURUSD", "volume": 0.1,
                         "type": c.ORDER_TYPE_BUY_LIMIT, "price": 1.08400, "sl": 1.08300,
                         "type_filling": c.ORDER_FILLING_RETURN})
    assert r.retcode == c.TRADE_RETCODE_DONE and term.orders_total() == 1
    assert term.orders_get()[0].price_open == 1.084
    term.set_price("EURUSD", 1.08380)  # ask 1.08392
    assert term.orders_total() == 0
    (pos,) = term.positions_get()
    assert pos.ticket == r.order and pos.sl == 1.083 and pos.price_open == 1.08392
    assert term.history_orders_get(ticket=r.order)[0].state == c.ORDER_STATE_FILLED


def test_history_by_dates_and_jpy_profit(term: SimTerminal) -> None:
    t = term
    t.set_price("USDJPY", 150.000)
    ticket = t.open_position("USDJPY", "BUY", 1.0)  # at ask 150.014
    t.advance(60)
    t.set_price("USDJPY", 151.014)
    assert t.positions_get()[0].profit == pytest.approx(100_000 / 151.014, rel=1e-3)
    t.close_position_manually(ticket)
    deals = t.history_deals_get(datetime(2024, 6, 3), datetime(2024, 6, 4))
    assert [d.position_id for d in deals] == [ticket, ticket]
    assert t.history_deals_get(START + 30, START + 3600)[0].entry == c.DEAL_ENTRY_OUT
    assert t.history_deals_get() is None and t.last_error()[0] == -2
    assert len(t.history_deals_get(0, START + 10**6, group="*JPY*")) == 2


def test_no_money_and_stop_out() -> None:
    t = make(balance=1_000.0)
    t.set_price("XAUUSD", 2400.00)
    r = t.order_send({"action": 1, "symbol": "XAUUSD", "volume": 5.0, "type": 0})
    assert r.retcode == c.TRADE_RETCODE_NO_MONEY
    ticket = t.open_position("XAUUSD", "BUY", 0.3)  # margin 720
    t.set_price("XAUUSD", 2390.00)  # equity ~ 692 -> level ~ 96 %
    assert t.positions_total() == 1
    t.set_price("XAUUSD", 2377.00)  # equity ~ 302 -> level ~ 42 % < 50 %
    assert t.positions_total() == 0
    assert t.history_deals_get(position=ticket)[-1].reason == c.DEAL_REASON_SO


def test_order_check_executes_nothing(term: SimTerminal) -> None:
    req = {"action": 1, "symbol": "EURUSD", "volume": 0.1, "type": 0}
    res = term.order_check(req)
    assert res.retcode == 0 and res.margin > 0 and term.positions_total() == 0
    assert term.order_check({**req, "volume": 0.015}).retcode == c.TRADE_RETCODE_INVALID_VOLUME


def test_stops_level_boundary_is_strict(term: SimTerminal) -> None:
    assert buy(term, sl=1.08490).retcode == c.TRADE_RETCODE_INVALID_STOPS  # exactly 10 points
    assert buy(term, sl=1.08489).retcode == c.TRADE_RETCODE_DONE
    assert buy(term, sl=1.084891).retcode == c.TRADE_RETCODE_INVALID_STOPS  # off the tick grid


def test_close_by_opposite_positions(term: SimTerminal) -> None:
    long_ticket = buy(term, 0.3).order  # 1.08512
    term.set_price("EURUSD", 1.08600)
    short_ticket = sell(term, 0.1).order  # 1.08600
    r = term.order_send({"action": c.TRADE_ACTION_CLOSE_BY, "position": long_ticket,
                         "position_by": short_ticket})
    assert r.retcode == c.TRADE_RETCODE_DONE
    (pos,) = term.positions_get()
    assert pos.ticket == long_ticket and pos.volume == pytest.approx(0.2)
    outs = [d for d in term.history_deals_get(START - 1, START + 1)
            if d.entry == c.DEAL_ENTRY_OUT_BY]
    assert len(outs) == 2
    assert sum(d.profit for d in outs) == pytest.approx((1.086 - 1.08512) * 0.1 * 100_000)


def test_pending_order_expires_and_can_be_removed(term: SimTerminal) -> None:
    base = {"action": c.TRADE_ACTION_PENDING, "symbol": "EURUSD", "volume": 0.1,
            "type": c.ORDER_TYPE_SELL_STOP, "price": 1.08000, "type_filling": 2}
    assert term.order_send({**base, "price": 1.08495}).retcode == c.TRADE_RETCODE_INVALID_PRICE
    expiring = term.order_send({**base, "type_time": c.ORDER_TIME_SPECIFIED,
                                "expiration": START + 30}).order
    kept = term.order_send(base).order
    term.advance(31)
    assert [o.ticket for o in term.orders_get()] == [kept]
    assert term.history_orders_get(ticket=expiring)[0].state == c.ORDER_STATE_EXPIRED
    r = term.order_send({"action": c.TRADE_ACTION_REMOVE, "order": kept})
    assert r.retcode == c.TRADE_RETCODE_DONE and term.orders_total() == 0
