"""Indicators against hand-computed values on small fixed series (the arithmetic is in comments)."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from dtms.policy.indicators import (
    StructureState,
    Swing,
    atr,
    bollinger,
    bollinger_width,
    ema,
    macd,
    rsi,
    session_vwap,
    structure,
    swings,
    true_range,
    utc_day,
    utc_days,
    utc_offset_s,
    vwap_slope,
    wilder,
)

N = math.nan
MIDNIGHT = 19_000 * 86_400  # a UTC midnight, epoch seconds


def same(actual: list[float], expected: list[float]) -> None:
    """Element-wise equality to 1e-9 where NaN must meet NaN."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if math.isnan(e):
            assert math.isnan(a), f"index {i}: expected NaN, got {a}"
        else:
            assert a == pytest.approx(e, abs=1e-9), f"index {i}"


# -- smoothing -------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "period", "expected"), [
    # SMA(1, 2, 3) = 2 seeds index 2; each later step adds half the gap (alpha = 2/4)
    (list(range(1, 11)), 3, [N, N, 2, 3, 4, 5, 6, 7, 8, 9]),
    # alpha = 2/3: seed (1+3)/2 = 2; 2 + 2/3*(2-2) = 2; 2 + 2/3*(6-2) = 14/3; 14/3 + 2/3*(4-14/3)
    ([1, 3, 2, 6, 4], 2, [N, 2, 2, 14 / 3, 38 / 9]),
    ([5, 7], 1, [5, 7]),                                   # period 1 is the series itself
    ([1, 2], 3, [N, N]),                                   # never seeded
    ([N, N, 1, 2, 3], 2, [N, N, N, 1.5, 1.5 + 2 / 3 * 1.5]),  # seeded after leading NaNs
])
def test_ema_is_seeded_with_the_sma_then_smoothed(values, period, expected):
    same(ema(values, period), expected)


def test_wilder_smoothing_uses_one_over_period():
    # seed (1+3)/2 = 2; 2 + (2-2)/2 = 2; 2 + (6-2)/2 = 4; 4 + (4-4)/2 = 4
    same(wilder([1, 3, 2, 6, 4], 2), [N, 2, 2, 4, 4])


# -- ATR -------------------------------------------------------------------------------------

GAP_H = [10, 10.2, 10.5, 12, 11]
GAP_L = [9, 9.4, 9.9, 11.6, 10.5]
GAP_C = [9.5, 10, 10.4, 11.8, 10.6]


def test_true_range_takes_the_gap_from_the_previous_close():
    # bar 0: h-l = 1; bar 1: max(.8, .7, .1); bar 2: max(.6, .5, .1)
    # bar 3 gaps up: max(.4, |12-10.4|, |11.6-10.4|) = 1.6; bar 4 gaps down: |10.5-11.8| = 1.3
    same(true_range(GAP_H, GAP_L, GAP_C), [1.0, 0.8, 0.6, 1.6, 1.3])


def test_atr_is_wilder_over_true_range_seeded_with_the_sma():
    # seed (1+.8+.6)/3 = .8; (.8*2 + 1.6)/3 = 3.2/3; (3.2/3*2 + 1.3)/3 = 10.3/9
    same(atr(GAP_H, GAP_L, GAP_C, 3), [N, N, 0.8, 3.2 / 3, 10.3 / 9])


# -- RSI -------------------------------------------------------------------------------------

def test_rsi_follows_wilder_on_gains_and_losses():
    # changes +1 -.5 +1 -.5 +1 -.5, period 3
    # i3: gain 2/3, loss 1/6 -> RS 4 -> 80
    # i4: gain (2/3*2)/3 = 4/9, loss (1/6*2 + .5)/3 = 5/18 -> RS 1.6
    # i5: gain (4/9*2 + 1)/3 = 17/27, loss (5/18*2)/3 = 5/27 -> RS 3.4
    # i6: gain (17/27*2)/3 = 34/81, loss (5/27*2 + .5)/3 = 23.5/81 -> RS 68/47
    expected = [N, N, N, 80.0, 100 - 100 / 2.6, 100 - 100 / 4.4, 100 - 100 * 47 / 115]
    same(rsi([10, 11, 10.5, 11.5, 11, 12, 11.5], 3), expected)


@pytest.mark.parametrize(("close", "expected"), [
    ([5, 5, 5, 5], [N, N, 50.0, 50.0]),       # no gains, no losses: neutral
    ([1, 2, 3, 4], [N, N, 100.0, 100.0]),     # gains only
    ([4, 3, 2, 1], [N, N, 0.0, 0.0]),         # losses only
])
def test_rsi_edges_without_losses_or_gains(close, expected):
    same(rsi(close, 2), expected)


# -- MACD ------------------------------------------------------------------------------------

def test_macd_with_small_periods_by_hand():
    close = [1, 2, 4, 3, 5, 6, 4]
    # EMA2 (alpha 2/3): -, 3/2, 19/6, 55/18, 235/54, 883/162, 2179/486
    # EMA4 (alpha 2/5): -, -, -, 10/4, 3.5, 4.5, 4.3
    line = [N, N, N, 55 / 18 - 2.5, 235 / 54 - 3.5, 883 / 162 - 4.5, 2179 / 486 - 4.3]
    # signal EMA2 of the line: seed (5/9 + 23/27)/2 = 19/27, then 19/27 + 2/3*(77/81 - 19/27)
    s5 = 211 / 243
    signal = [N, N, N, N, 19 / 27, s5, s5 + 2 / 3 * (line[6] - s5)]
    hist = [N, N, N, N, 4 / 27, 20 / 243, line[6] - signal[6]]
    got = macd(close, fast=2, slow=4, signal=2)
    same(got[0], line)
    same(got[1], signal)
    same(got[2], hist)


# -- Bollinger -------------------------------------------------------------------------------

def test_bollinger_uses_the_population_standard_deviation():
    sd = math.sqrt(2 / 3)  # of (1, 2, 3) and of (2, 3, 4): mean square deviation 2/3
    mid, upper, lower = bollinger([1, 2, 3, 4], period=3, k=2.0)
    same(mid, [N, N, 2, 3])
    same(upper, [N, N, 2 + 2 * sd, 3 + 2 * sd])
    same(lower, [N, N, 2 - 2 * sd, 3 - 2 * sd])
    same(bollinger_width([1, 2, 3, 4], period=3, k=2.0), [N, N, 4 * sd / 2, 4 * sd / 3])


# -- VWAP ------------------------------------------------------------------------------------

# typical prices 2, 4, 10, 7 with volumes 1, 3, 2, 1; opens 23:50, 23:55, 00:00, 00:05 UTC
VW_H, VW_L, VW_C = [3, 6, 12, 9], [1, 3, 9, 6], [2, 3, 9, 6]
VW_V = [1, 3, 2, 1]
VW_T = [MIDNIGHT - 600, MIDNIGHT - 300, MIDNIGHT, MIDNIGHT + 300]
SPLIT = [2, (2 + 12) / 4, 10, (20 + 7) / 3]          # reset at the UTC midnight
ONE_DAY = [2, 14 / 4, (14 + 20) / 6, (34 + 7) / 7]    # no midnight inside


@pytest.mark.parametrize(("times", "offset", "expected"), [
    (VW_T, 0.0, SPLIT),
    ([t + 7200 for t in VW_T], 2.0, SPLIT),        # server UTC+2: UTC midnight is 02:00 server
    ([t - 3600 for t in VW_T], -1.0, SPLIT),       # server UTC-1
    (VW_T, 2.0, ONE_DAY),                          # these server times are 21:50-22:05 UTC
])
def test_session_vwap_resets_at_utc_midnight(times, offset, expected):
    tz = timezone(timedelta(hours=offset))
    same(session_vwap(times, VW_H, VW_L, VW_C, VW_V, tz=tz), expected)


ATHENS = ZoneInfo("Europe/Athens")     # UTC+2; UTC+3 from 2026-03-29 to 2026-10-25


def server(*wall: int) -> float:
    """The broker-server timestamp MT5 gives a bar opening at this server wall-clock time."""
    return datetime(*wall, tzinfo=UTC).timestamp()


# Regression (issue 13, item 6): `signals.server_utc_offset_h` was one fixed number, so for a
# server on Athens time the VWAP anchor (UTC midnight) sat at 02:00 server time all year, an
# hour late for the seven summer months. The anchor follows the zone through both switches.
@pytest.mark.parametrize(("first", "anchors"), [
    # 2026-03-29: clocks go 03:00 -> 04:00 (01:00 UTC). UTC midnight: 02:00 winter, 03:00 summer
    ((2026, 3, 27, 22), [server(2026, 3, 28, 2), server(2026, 3, 29, 2),
                         server(2026, 3, 30, 3), server(2026, 3, 31, 3)]),
    # 2026-10-25: clocks go 04:00 -> 03:00 (01:00 UTC). UTC midnight: 03:00 summer, 02:00 winter
    ((2026, 10, 23, 22), [server(2026, 10, 24, 3), server(2026, 10, 25, 3),
                          server(2026, 10, 26, 2), server(2026, 10, 27, 2)]),
])
def test_session_vwap_resets_at_utc_midnight_on_both_sides_of_a_dst_switch(first, anchors):
    start = server(*first)
    times = [start + 300 * i for i in range(4 * 288)]      # four days of M5 bars
    n = len(times)
    # each bar's typical price is its index: a session's VWAP is the mean index since its start
    idx = [float(i + 1) for i in range(n)]
    vw = session_vwap(times, idx, idx, idx, [1.0] * n, ATHENS)
    starts = [times[i] for i in range(1, n) if vw[i] == idx[i]]
    assert starts == anchors
    # the slope's session follows the same anchor: 5 bars after a reset there is a slope
    at = times.index(anchors[2])
    assert vwap_slope(vw[:at + 5], times[:at + 5], 5, ATHENS) == 0.0
    assert vwap_slope(vw[:at + 6], times[:at + 6], 5, ATHENS) == pytest.approx(0.5)


def test_utc_days_is_utc_day_of_each_time_across_a_dst_switch():
    times = [server(2026, 3, 28, 0) + 300 * i for i in range(3 * 288)]
    assert utc_days(times, ATHENS) == [utc_day(t, ATHENS) for t in times]
    assert [utc_offset_s(server(2026, 1, 15, 12), ATHENS),
            utc_offset_s(server(2026, 7, 15, 12), ATHENS)] == [7200.0, 10800.0]


@pytest.mark.parametrize(("volume", "expected"), [
    ([0, 0, 0, 0], [2, 3, 10, 8.5]),  # no volume: running mean of typical prices
    ([0, 2, 0, 1], [2, 4, 10, 7]),    # once volume arrives, zero-volume bars weigh nothing
])
def test_session_vwap_without_volume_weighs_bars_equally(volume, expected):
    same(session_vwap(VW_T, VW_H, VW_L, VW_C, volume), expected)


SLOPE_VW = [1, 2, 3, 5, 8, 13]
SLOPE_T = [MIDNIGHT + 300 * i for i in range(6)]


@pytest.mark.parametrize(("times", "bars", "expected"), [
    (SLOPE_T, 3, (13 - 3) / 3),
    (SLOPE_T, 5, (13 - 1) / 5),
    (SLOPE_T, 6, 0.0),                                  # needs bars + 1 bars
    ([t - 600 for t in SLOPE_T], 3, (13 - 3) / 3),      # bars 0, 1 yesterday: 2..5 suffice
    ([t - 900 for t in SLOPE_T], 3, 0.0),               # reference bar 2 is yesterday's
])
def test_vwap_slope_is_per_bar_within_the_session(times, bars, expected):
    assert vwap_slope(SLOPE_VW, times, bars) == pytest.approx(expected, abs=1e-12)


# -- swings and structure --------------------------------------------------------------------

def test_swings_on_a_zig_zag():
    high = [1, 2, 5, 3, 2, 1, 2, 3, 2, 1]
    low = [h - 0.5 for h in high]
    assert swings(high, low, 2) == [Swing(2, 5.0, "high"), Swing(5, 0.5, "low"),
                                    Swing(7, 3.0, "high")]


@pytest.mark.parametrize(("high", "expected"), [
    ([1, 2, 5, 5, 2, 1], []),                     # equal highs: a double top is no fractal
    ([1, 2, 5, 3], []),                           # unconfirmed: one bar after, two needed
    ([1, 2, 5, 3, 2], [Swing(2, 5.0, "high")]),   # confirmed by the second bar after
])
def test_swing_highs_need_strictly_lower_neighbours_on_both_sides(high, expected):
    low = [0.1] * len(high)  # flat lows make no swing lows
    assert swings(high, low, 2) == expected


# Strength 1. Swing high 11 (bar 1), swing low 9.2 (bar 3); bar 4 closes 11.2 > 11: BOS up.
# Swing high 12 (bar 5) broken by bar 7's close 12.3: BOS up. Swing low 10.8 (bar 6) broken by
# bar 8's close 10.6: CHOCH down. Swing low 9.5 (bar 10) broken by bar 12's close 9.1: BOS down.
ST_H = [10, 11, 10.5, 10.2, 11.3, 12, 11.6, 12.5, 12.4, 10.7, 10.4, 10.6, 10.3]
ST_L = [9, 10, 9.5, 9.2, 9.9, 11, 10.8, 11.2, 10.5, 10, 9.5, 9.8, 9.0]
ST_C = [9.5, 10.5, 10, 9.8, 11.2, 11.5, 11, 12.3, 10.6, 10.2, 9.6, 10.4, 9.1]


@pytest.mark.parametrize(("bars", "expected"), [
    (4, StructureState("none", None, -1, None, 11.0, None)),
    (5, StructureState("up", "BOS", 4, "up", None, 9.2)),
    # bar 5 closes above 11 again: that swing was consumed, no second break
    (7, StructureState("up", "BOS", 4, "up", 12.0, 9.2)),
    (8, StructureState("up", "BOS", 7, "up", None, 10.8)),
    (9, StructureState("down", "CHOCH", 8, "down", 12.5, None)),
    (12, StructureState("down", "CHOCH", 8, "down", 12.5, 9.5)),
    (13, StructureState("down", "BOS", 12, "down", 10.6, None)),
])
def test_structure_bos_then_choch_then_bos(bars, expected):
    assert structure(ST_H[:bars], ST_L[:bars], ST_C[:bars], strength=1) == expected


@pytest.mark.parametrize(("bars", "event_time"), [(4, None), (5, 4 * 900.0), (9, 8 * 900.0),
                                                  (12, 8 * 900.0), (13, 12 * 900.0)])
def test_structure_with_times_gives_the_open_time_of_the_bar_that_made_the_last_event(
        bars, event_time):
    times = [MIDNIGHT + 900 * i for i in range(bars)]
    st = structure(ST_H[:bars], ST_L[:bars], ST_C[:bars], strength=1, times=times)
    assert st.last_event_time == (None if event_time is None else MIDNIGHT + event_time)
    assert dataclasses.replace(st, last_event_time=None) == structure(
        ST_H[:bars], ST_L[:bars], ST_C[:bars], strength=1)     # nothing else changes

def test_a_wick_through_the_swing_is_no_break_only_a_close_is():
    close = list(ST_C)
    close[4] = 10.9  # bar 4's high 11.3 still pierces the swing high 11
    assert structure(ST_H[:5], ST_L[:5], close[:5], strength=1).last_event is None
    assert structure(ST_H[:6], ST_L[:6], close[:6], strength=1) == StructureState(
        "up", "BOS", 5, "up", None, 9.2)


def test_a_newer_swing_replaces_the_older_before_the_close_is_judged():
    # swing high 10 (bar 1), then a wick to 12 (bar 3) confirmed by bar 4, whose close 11 is
    # above the old level but below the newer one: no break. Swing low 8.8 (bar 2).
    high, low, close = [9, 10, 9.5, 12, 11.5], [8, 9, 8.8, 9.2, 9.5], [8.5, 9.5, 9, 9.6, 11]
    assert structure(high, low, close, 1) == StructureState("none", None, -1, None, 12.0, 8.8)
    assert structure(high[:4], low[:4], close[:4], 1) == StructureState(
        "none", None, -1, None, 10.0, 8.8)


def test_structure_without_any_swing_is_none():
    assert structure([1, 2, 3, 4], [0.5, 1.5, 2.5, 3.5], [1, 2, 3, 4], 2) == StructureState()


# -- closed bars and loud errors -------------------------------------------------------------

SERIES_H = [10, 10.6, 10.4, 11.2, 11.0, 10.5, 10.9, 11.5, 11.3, 10.8, 11.1, 11.9, 11.6, 11.0]
SERIES_L = [9.4, 9.9, 9.8, 10.3, 10.2, 9.9, 10.1, 10.8, 10.5, 10.1, 10.4, 11.0, 10.9, 10.3]
SERIES_C = [9.8, 10.4, 10.0, 11.0, 10.5, 10.1, 10.8, 11.3, 10.7, 10.5, 11.0, 11.7, 11.1, 10.6]
SERIES_T = [MIDNIGHT - 3000 + 300 * i for i in range(14)]


@pytest.mark.parametrize("compute", [
    lambda h, lo, c, t: ema(c, 3),
    lambda h, lo, c, t: atr(h, lo, c, 3),
    lambda h, lo, c, t: rsi(c, 3),
    lambda h, lo, c, t: macd(c, 2, 4, 2)[2],
    lambda h, lo, c, t: bollinger_width(c, 3),
    lambda h, lo, c, t: session_vwap(t, h, lo, c, [1.0] * len(c)),
])
def test_each_value_depends_only_on_bars_up_to_it(compute):
    # Callers pass closed bars only; a forming bar appended by mistake would change nothing
    # before it — only the last value, which is the one read.
    full = compute(SERIES_H, SERIES_L, SERIES_C, SERIES_T)
    for n in range(1, len(SERIES_C)):
        same(compute(SERIES_H[:n], SERIES_L[:n], SERIES_C[:n], SERIES_T[:n]), full[:n])


@pytest.mark.parametrize("call", [
    lambda: ema([1, 2, 3], 0),
    lambda: wilder([1, 2, 3], -1),
    lambda: ema([1, N, 3], 2),                        # a hole after the start
    lambda: atr([1, 2], [0.5], [1, 2], 1),
    lambda: atr([1, 2], [0.5, 2.5], [1, 2], 1),       # high < low
    lambda: rsi([1, 2, math.inf], 2),
    lambda: macd([1, 2, 3], 4, 2, 2),                 # fast must be below slow
    lambda: bollinger([1, 2, 3], 2, k=-1.0),
    lambda: session_vwap([0, 1], [2, 2], [1, 1], [1.5, 1.5], [1]),
    lambda: session_vwap([0, 1], [2, 2], [1, 1], [1.5, 1.5], [1, -1]),
    lambda: vwap_slope([1, 2], [0], 1),
    lambda: swings([1, 2, 3], [1, 2], 1),
    lambda: structure([1, 2, 3], [0.5, 1, 2], [1, 2, N], 1),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
