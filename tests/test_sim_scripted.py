"""Scripted price paths in the simulated terminal: hold, play, linear_path and flat history."""

from __future__ import annotations

import math
import threading

import pytest

from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.brokers.sim import constants as c
from dtms.brokers.sim.prices import linear_path

START = 1_717_372_800  # 2024-06-03 00:00:00 UTC, minute aligned
B0 = 1.08500  # EURUSD start bid
POINT = 0.00001


def make(**overrides: object) -> SimTerminal:
    cfg: dict[str, object] = dict(symbols=("EURUSD", "USDJPY", "XAUUSD"), history_days=1.0,
                                  history_mode="flat")
    cfg.update(overrides)
    term = SimTerminal(SimConfig(**cfg), ManualClock(START))  # type: ignore[arg-type]
    assert term.initialize() is True
    return term


def points(k: int) -> float:
    return round(B0 + k * POINT, 5)


def ohlcv(bar: tuple) -> tuple:
    return (bar.time, bar.open, bar.high, bar.low, bar.close, bar.tick_volume)


# --- linear_path ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("start", "end", "steps", "digits", "expected"),
    [
        (1.0, 1.001, 4, 5, [1.00025, 1.0005, 1.00075, 1.001]),
        (1.001, 1.0, 4, 5, [1.00075, 1.0005, 1.00025, 1.0]),
        (2400.0, 2401.0, 3, 2, [2400.33, 2400.67, 2401.0]),
        (150.0, 150.5, 1, 3, [150.5]),
        (1.2, 1.2, 3, 5, [1.2, 1.2, 1.2]),
    ],
)
def test_linear_path_excludes_start_includes_end(start: float, end: float, steps: int,
                                                 digits: int, expected: list[float]) -> None:
    assert linear_path(start, end, steps, digits) == expected


def test_linear_path_needs_a_step() -> None:
    with pytest.raises(ValueError):
        linear_path(1.0, 1.1, 0, 5)


# --- play -----------------------------------------------------------------------------------

def test_each_played_bid_is_the_tick_after_its_step() -> None:
    term = make()
    path = linear_path(B0, B0 + 0.0005, 5, 5) + [1.08490, 1.08600]
    for i, bid in enumerate(path, start=1):
        assert term.play("EURUSD", [bid], interval=2.0) == START + 2 * i
        tick = term.symbol_info_tick("EURUSD")
        assert (tick.bid, tick.ask, tick.time) == (bid, round(bid + 12 * POINT, 5), START + 2 * i)


def test_played_path_makes_exact_m1_and_aggregate_bars() -> None:
    term = make()
    assert term.play("EURUSD", linear_path(B0, points(180), 180, 5)) == START + 180
    rates = term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M1, 0, 5)
    assert [ohlcv(r) for r in rates] == [
        (START - 60, B0, B0, B0, B0, 60),  # flat history
        (START, B0, points(59), B0, points(59), 60),  # start tick + scripted ticks 1..59
        (START + 60, points(60), points(119), points(60), points(119), 60),
        (START + 120, points(120), points(179), points(120), points(179), 60),
        (START + 180, points(180), points(180), points(180), points(180), 1),  # forming
    ]
    (m5_before, m5) = term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M5, 0, 2)
    assert ohlcv(m5_before) == (START - 300, B0, B0, B0, B0, 300)
    assert ohlcv(m5) == (START, B0, points(180), B0, points(180), 181)
    (m15,) = term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M15, 0, 1)
    assert ohlcv(m15) == (START, B0, points(180), B0, points(180), 181)


def test_play_between_grid_ticks_repeats_the_last_scripted_bid() -> None:
    term = make()
    assert term.play("EURUSD", [points(10), points(-5)], interval=30.0) == START + 60
    rates = term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M1, 0, 2)
    # Ticks every second: START..29 at B0, 30..59 at +10, the tick at 60 at -5.
    assert [ohlcv(r) for r in rates] == [
        (START, B0, points(10), B0, points(10), 60),
        (START + 60, points(-5), points(-5), points(-5), points(-5), 1),
    ]


def test_play_off_the_tick_grid_lands_at_the_exact_time() -> None:
    term = make()
    term.play("EURUSD", [points(3)], interval=1.5)
    tick = term.symbol_info_tick("EURUSD")
    assert (tick.bid, tick.time_msc) == (points(3), START * 1000 + 1500)
    term.play("EURUSD", [points(4)], interval=0.25)
    assert term.symbol_info_tick("EURUSD").time_msc == START * 1000 + 1750
    term.advance(10)
    assert term.symbol_info_tick("EURUSD").bid == points(4)  # still held


def test_sl_is_hit_by_played_path_at_the_scripted_price() -> None:
    term = make()
    sl = points(-20)
    ticket = term.open_position("EURUSD", "BUY", 0.1, sl=sl, magic=9)
    term.play("EURUSD", linear_path(B0, points(-30), 30, 5))
    assert term.positions_get() == ()
    out = term.history_deals_get(position=ticket)[-1]
    assert (out.reason, out.entry, out.price, out.magic) == (c.DEAL_REASON_SL, c.DEAL_ENTRY_OUT,
                                                             sl, 9)
    assert out.time == START + 20  # stamped with the tick that hit it
    assert out.profit == pytest.approx(-(12 + 20) * POINT * 0.1 * 100_000)


def test_gap_through_sl_fills_at_the_scripted_bid() -> None:
    term = make()
    ticket = term.open_position("EURUSD", "BUY", 0.1, sl=points(-20))
    term.play("EURUSD", [points(-5), points(-50)])
    out = term.history_deals_get(position=ticket)[-1]
    assert (out.reason, out.price, out.time) == (c.DEAL_REASON_SL, points(-50), START + 2)


def test_pending_order_fills_on_played_path() -> None:
    term = make()
    r = term.order_send({"action": c.TRADE_ACTION_PENDING, "symbol": "EURUSD", "volume": 0.1,
                         "type": c.ORDER_TYPE_BUY_LIMIT, "price": points(-30),
                         "type_filling": c.ORDER_FILLING_RETURN})
    assert r.retcode == c.TRADE_RETCODE_DONE
    term.play("EURUSD", linear_path(B0, points(-60), 60, 5))
    (pos,) = term.positions_get()
    assert pos.ticket == r.order and pos.price_open == points(-30)  # ask = bid + 12 reaches it
    assert pos.time == START + 42  # bid -42 is the first ask (-30) at or below the limit


def test_other_symbols_walk_during_play_as_advance_would() -> None:
    played, advanced = make(), make()
    played.play("EURUSD", linear_path(B0, points(100), 100, 5))
    advanced.advance(100)
    for symbol in ("USDJPY", "XAUUSD"):
        tick = played.symbol_info_tick(symbol)
        assert tick == advanced.symbol_info_tick(symbol)
        assert tick.time == START + 100
        assert played.copy_rates_from_pos(symbol, c.TIMEFRAME_M1, 0, 3) == \
            advanced.copy_rates_from_pos(symbol, c.TIMEFRAME_M1, 0, 3)
    assert played.symbol_info_tick("USDJPY").bid != 150.0  # it really moved


@pytest.mark.parametrize(
    ("bids", "interval"),
    [([B0, math.nan], 1.0), ([math.inf], 1.0), ([0.0], 1.0), ([-1.0], 1.0), ([B0], 0.0),
     ([B0], -1.0), ([B0], math.nan)],
)
def test_play_rejects_bad_input_before_anything_moves(bids: list[float],
                                                       interval: float) -> None:
    term = make()
    with pytest.raises(ValueError):
        term.play("EURUSD", bids, interval=interval)
    assert term.sim_time == START
    term.advance(60)
    assert term.symbol_info_tick("EURUSD").bid != B0  # not held either


def test_play_unknown_symbol_raises_key_error() -> None:
    with pytest.raises(KeyError):
        make().play("NOPE", [1.0])


def test_play_from_another_thread_is_atomic_per_tick() -> None:
    term = make()
    path = linear_path(B0, points(300), 300, 5)
    seen: set[float] = set()
    player = threading.Thread(target=term.play, args=("EURUSD", path))
    player.start()
    while player.is_alive():
        seen.add(term.symbol_info_tick("EURUSD").bid)
    player.join()
    seen.add(term.symbol_info_tick("EURUSD").bid)
    assert seen <= {B0, *path} and path[-1] in seen
    assert term.sim_time == START + 300


# --- hold -----------------------------------------------------------------------------------

def test_held_symbol_keeps_its_bid_but_still_ticks() -> None:
    term = make()
    term.set_price("EURUSD", 1.09000)
    term.hold("EURUSD")
    usdjpy = term.symbol_info_tick("USDJPY").bid
    term.advance(3600)
    tick = term.symbol_info_tick("EURUSD")
    assert (tick.bid, tick.time) == (1.09, START + 3600)
    assert term.symbol_info_tick("USDJPY").bid != usdjpy
    last_hour = term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M1, 1, 59)
    assert {(r.open, r.high, r.low, r.close, r.tick_volume) for r in last_hour} == \
        {(1.09, 1.09, 1.09, 1.09, 60)}
    term.hold("EURUSD", False)
    term.advance(600)
    assert term.symbol_info_tick("EURUSD").bid != 1.09  # walks again, from where it was held


def test_held_symbol_still_triggers_sl_set_into_the_price() -> None:
    term = make()
    term.hold("EURUSD")
    ticket = term.open_position("EURUSD", "SELL", 0.1, tp=points(-100))
    term.set_price("EURUSD", points(-120))  # set_price moves a held symbol
    assert term.history_deals_get(position=ticket)[-1].reason == c.DEAL_REASON_TP
    term.advance(5)
    assert term.symbol_info_tick("EURUSD").bid == points(-120)


def test_hold_unknown_symbol_raises_key_error() -> None:
    with pytest.raises(KeyError):
        make().hold("NOPE")


# --- flat history ---------------------------------------------------------------------------

def test_flat_history_bars_equal_the_start_bid() -> None:
    term = make(history_days=2.0)
    m1 = term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M1, 1, 2 * 1440)
    assert len(m1) == 2 * 1440 and m1[0].time == START - 2 * 86_400
    assert {(r.open, r.high, r.low, r.close, r.tick_volume, r.spread) for r in m1} == \
        {(B0, B0, B0, B0, 60, 12)}
    h1 = term.copy_rates_from_pos("XAUUSD", c.TIMEFRAME_H1, 1, 48)
    bid = h1[0].open
    assert {(r.open, r.high, r.low, r.close, r.tick_volume) for r in h1} == {(bid,) * 4 + (3600,)}


def test_flat_history_volume_follows_tick_interval() -> None:
    term = make(tick_interval=2.0)
    (bar,) = term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M1, 1, 1)
    assert bar.tick_volume == 30


def test_history_mode_defaults_to_random_and_rejects_unknown() -> None:
    assert SimConfig().history_mode == "random"
    term = make(history_mode="random")
    m1 = term.copy_rates_from_pos("EURUSD", c.TIMEFRAME_M1, 1, 100)
    assert len({r.close for r in m1}) > 1
    with pytest.raises(ValueError, match="history_mode"):
        SimConfig(history_mode="sine")
