"""Signal layers, regime and trade-relative scores as tables of hand-computed values."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dtms import config
from dtms.config import SignalSettings
from dtms.model import Direction
from dtms.policy.indicators import StructureState, macd, rsi, structure
from dtms.policy.signals import (
    LAYERS,
    Bars,
    MarketSignals,
    Regime,
    ScoringError,
    candle_value,
    ema_value,
    market_signals,
    mode_of,
    momentum_value,
    session_of,
    side_bars,
    structure_value,
    trade_score,
    volatility_of,
    vwap_value,
)

MIDNIGHT = 19_000 * 86_400  # a UTC midnight
ROOT = Path(__file__).resolve().parents[1]
H = 3600
BUY, SELL = Direction.BUY, Direction.SELL
DEFAULT = SignalSettings()


def settings(**changes) -> SignalSettings:
    return dataclasses.replace(DEFAULT, **changes)


def path_bars(closes: list[float], start: int, step: int, wick: float = 0.02,
              volume: float = 100.0) -> Bars:
    """Bars opening halfway from the previous close (so the bar after a peak has a lower high)
    with wicks sticking out ``wick`` either side."""
    rows, prev = [], closes[0]
    for i, c in enumerate(closes):
        o = (prev + c) / 2
        rows.append((start + i * step, o, max(o, c) + wick, min(o, c) - wick, c, volume))
        prev = c
    return Bars.from_rows(rows)


def zigzag_up(n: int) -> list[float]:
    """Three steps up, two down: a rising market with swings for BOS to break."""
    cycle, price, out = (0.1, 0.1, 0.1, -0.1, -0.1), 100.0, []
    for i in range(n):
        price += cycle[i % 5]
        out.append(price)
    return out


def one_bar(t: int, o: float, h: float, lo: float, c: float) -> Bars:
    return Bars.from_rows([(t, o, h, lo, c, 10)])


EMPTY = Bars.from_rows([])


def hand_signals(layers: dict[str, float | None], weights: dict[str, float] | None = None,
                 side: int = 0, st: StructureState | None = None,
                 ratio: float = 0.70) -> MarketSignals:
    return MarketSignals(
        symbol="EURUSD", time=MIDNIGHT, close=1.1, layers=dict(layers),
        weights=dict.fromkeys(LAYERS, 1.0) if weights is None else weights,
        regime=Regime("london", "normal", 1.0, "trend", 0.01, 1.25), atr=0.001, vwap=1.1,
        vwap_slope=0.0, vwap_side_bars=side, structure=st or StructureState(),
        confluence_ratio=ratio)


# -- regime ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("server_time", "offset", "session"), [
    (MIDNIGHT, 0.0, "asia"),
    (MIDNIGHT + 7 * H - 1, 0.0, "asia"),
    (MIDNIGHT + 7 * H, 0.0, "london"),
    (MIDNIGHT + 12 * H - 1, 0.0, "london"),
    (MIDNIGHT + 12 * H, 0.0, "overlap"),
    (MIDNIGHT + 16 * H - 1, 0.0, "overlap"),
    (MIDNIGHT + 16 * H, 0.0, "newyork"),
    (MIDNIGHT + 21 * H - 1, 0.0, "newyork"),
    (MIDNIGHT + 21 * H, 0.0, "late"),
    (MIDNIGHT + 24 * H - 1, 0.0, "late"),
    (MIDNIGHT + 9 * H, 2.0, "london"),       # 09:00 at UTC+2 is 07:00 UTC
    (MIDNIGHT + 8 * H + 59 * 60, 2.0, "asia"),
    (MIDNIGHT + 1 * H, 2.0, "late"),         # 01:00 at UTC+2 is 23:00 UTC the day before
    (MIDNIGHT + 2 * H, -5.0, "london"),      # 02:00 at UTC-5 is 07:00 UTC
    (MIDNIGHT + 14 * H, 5.5, "london"),      # 08:30 UTC
])
def test_session_by_utc_hour(server_time, offset, session):
    assert session_of(server_time, timezone(timedelta(hours=offset))) == session


def server(*wall: int) -> float:
    """The broker-server timestamp MT5 gives this server wall-clock time."""
    return datetime(*wall, tzinfo=UTC).timestamp()


# Regression (issue 13, item 6): `signals.server_utc_offset_h` was one fixed number, so a server
# on Athens time (UTC+2, UTC+3 in summer) had every session an hour off for seven months.
@pytest.mark.parametrize(("hour", "january", "july"), [
    (9, "london", "asia"),          # 07:00 UTC in January, 06:00 UTC in July
    (10, "london", "london"),
    (14, "overlap", "london"),      # 12:00 / 11:00 UTC
    (18, "newyork", "overlap"),     # 16:00 / 15:00 UTC
    (23, "late", "newyork"),        # 21:00 / 20:00 UTC
])
def test_the_same_server_hour_maps_to_its_utc_session_in_winter_and_in_summer(
        hour, january, july):
    athens = settings(server_timezone="Europe/Athens")
    for day, session in (((2026, 1, 14), january), ((2026, 7, 15), july)):
        m5 = one_bar(int(server(*day, hour)), 100, 101, 99, 100.5)
        sig = market_signals(m5, EMPTY, symbol="EURUSD", settings=athens)
        assert sig.regime.session == session, day


@pytest.mark.parametrize(("wall", "session"), [
    ((2026, 3, 28, 9, 30), "london"),   # 07:30 UTC, the last winter morning
    ((2026, 3, 29, 9, 30), "asia"),     # 06:30 UTC, the first summer morning
    ((2026, 10, 24, 9, 30), "asia"),    # 06:30 UTC, the last summer morning
    ((2026, 10, 25, 9, 30), "london"),  # 07:30 UTC, the first winter morning
])
def test_sessions_move_with_the_server_clock_on_either_side_of_a_dst_switch(wall, session):
    assert session_of(server(*wall), ZoneInfo("Europe/Athens")) == session


def test_market_signals_reads_the_session_with_the_server_timezone():
    m5 = one_bar(MIDNIGHT + 9 * H, 100, 101, 99, 100.5)
    sig = market_signals(m5, EMPTY, symbol="EURUSD",
                         settings=settings(server_timezone="Etc/GMT-2"))   # UTC+2
    assert sig.regime.session == "london"
    sig = market_signals(m5, EMPTY, symbol="EURUSD", settings=DEFAULT)
    assert sig.regime.session == "london"  # 09:00 UTC too


def test_an_unknown_server_timezone_is_a_regime_scoring_error():
    m5 = one_bar(MIDNIGHT, 100, 101, 99, 100.5)
    with pytest.raises(ScoringError, match="^regime: server_timezone: unknown time zone "
                                           "'Mars/Olympus'"):
        market_signals(m5, EMPTY, symbol="EURUSD",
                       settings=settings(server_timezone="Mars/Olympus"))


@pytest.mark.parametrize(("ratio", "band"), [
    (0.69999, "low"), (0.7, "normal"), (1.0, "normal"), (1.3, "normal"), (1.30001, "high"),
])
def test_volatility_bounds_belong_to_normal(ratio, band):
    assert volatility_of(ratio, DEFAULT) == band


@pytest.mark.parametrize(("high0", "high1", "ratio", "band"), [
    # lows 100, opens/closes 105: TR = high - 100; ATR(1) ratio = TR1 / mean(TR0, TR1)
    (113, 107, 0.7, "normal"),   # 7 / 10
    (114, 106, 0.6, "low"),      # 6 / 10
    (107, 113, 1.3, "normal"),   # 13 / 10
    (106, 114, 1.4, "high"),     # 14 / 10
])
def test_volatility_band_from_the_atr_ratio(high0, high1, ratio, band):
    m5 = Bars.from_rows([(MIDNIGHT, 105, high0, 100, 105, 1), (MIDNIGHT + 300, 105, high1, 100,
                                                                 105, 1)])
    sig = market_signals(m5, EMPTY, symbol="EURUSD",
                         settings=settings(atr_period=1, atr_baseline_bars=2))
    assert sig.regime.atr_ratio == pytest.approx(ratio, abs=1e-12)
    assert sig.regime.volatility == band
    assert sig.atr == high1 - 100


@pytest.mark.parametrize(("width", "mode"), [
    (0.0039, "range"), (0.004, "trend"), (0.0041, "trend"), (math.nan, "unknown"),
])
def test_range_below_the_bollinger_width_threshold(width, mode):
    assert mode_of(width, DEFAULT) == mode


@pytest.mark.parametrize(("closes", "threshold", "mode", "weights"), [
    # period 2, k 1: width = |a - b| / mid
    ([100.0, 100.2], 0.004, "range", {"structure": 1.5, "momentum": 2.5, "ema": 1.5}),
    ([100.0, 101.0], 0.004, "trend", {"structure": 3.0, "momentum": 2.0, "ema": 1.875}),
    ([100.0, 101.0], 1 / 100.5, "trend", {"structure": 3.0, "momentum": 2.0, "ema": 1.875}),
    ([100.0], 0.004, "unknown", {"structure": 3.0, "momentum": 2.0, "ema": 1.5}),
])
def test_regime_mode_scales_weights(closes, threshold, mode, weights):
    m5 = path_bars(closes, MIDNIGHT, 300)
    s = settings(bb_period=2, bb_stddev=1.0, range_bb_width=threshold)
    sig = market_signals(m5, EMPTY, symbol="EURUSD", settings=s)
    assert sig.regime.mode == mode
    assert {k: sig.weights[k] for k in weights} == pytest.approx(weights, abs=1e-12)
    assert (sig.weights["vwap"], sig.weights["delta"], sig.weights["candle"]) == (2.0, 1.0, 1.0)


@pytest.mark.parametrize(("symbol", "symbol_mults", "scale"), [
    ("XAUUSDc", {"XAUUSD": 1.2}, 2.0 * 3.0 * 1.2),
    ("XAUUSDc", {"xauusd": 1.5}, 2.0 * 3.0 * 1.5),
    ("EURUSD.pro", {"EurUsd": 0.8}, 2.0 * 3.0 * 0.8),
    ("BTCUSD#", {"BTCUSD": 1.5}, 2.0 * 3.0 * 1.5),
    ("XAUUSDc", {"xauusdc": 1.1, "XAUUSD": 1.2}, 2.0 * 3.0 * 1.1),  # the exact name wins
    ("GBPJPY", {"XAUUSD": 1.2}, 2.0 * 3.0),                          # missing key: 1.0
])
def test_multipliers_match_case_insensitively_on_the_normalised_symbol(symbol, symbol_mults,
                                                                       scale):
    s = settings(session_multipliers={"ASIA": 2.0}, volatility_multipliers={"Normal": 3.0},
                 symbol_multipliers=symbol_mults)
    sig = market_signals(one_bar(MIDNIGHT + H, 100, 101, 99, 100.5), EMPTY, symbol=symbol,
                         settings=s)
    assert (sig.regime.session, sig.regime.volatility) == ("asia", "normal")
    assert sig.regime.threshold_scale == pytest.approx(scale, abs=1e-12)
    assert trade_score(sig, BUY).threshold_scale == pytest.approx(scale, abs=1e-12)


def test_too_few_bars_leave_layers_unavailable_not_zero():
    sig = market_signals(one_bar(MIDNIGHT, 100, 101, 99, 100.8), EMPTY, symbol="EURUSD",
                         settings=DEFAULT)
    assert (sig.atr, sig.regime.atr_ratio, sig.regime.mode) == (0.0, 1.0, "unknown")
    assert math.isnan(sig.regime.bb_width)
    assert [k for k, v in sig.layers.items() if v is None] == ["structure", "momentum", "ema",
                                                              "delta"]
    assert set(trade_score(sig, BUY).layers) == {"vwap", "candle"}


# -- layers ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("st", "value"), [
    (StructureState("up", "BOS", 5, "up"), 1.0),
    (StructureState("up", "CHOCH", 5, "up"), 0.5),
    (StructureState("down", "BOS", 5, "down"), -1.0),
    (StructureState("down", "CHOCH", 5, "down"), -0.5),
    (StructureState(), 0.0),
])
def test_structure_layer(st, value):
    assert structure_value(st) == value


@pytest.mark.parametrize(("close", "vwap", "n"), [
    ([1, 3, 3, 3], [2, 2, 2, 2], 3),
    ([3, 1, 1], [2, 2, 2], -2),
    ([1, 3, 2], [2, 2, 2], 0),        # on the VWAP: no side
    ([3, 2, 3], [2, 2, 2], 1),        # a bar on the VWAP ends the run
    ([3, 3], [2, 4], -1),             # each bar against its own VWAP
])
def test_vwap_side_bars_count_the_run(close, vwap, n):
    assert side_bars(close, vwap) == n


FLAT_VOL = [100.0] * 21
HEAVY_LAST = [100.0] * 20 + [101.0]


@pytest.mark.parametrize(("side", "slope", "volume", "value"), [
    (3, 0.1, HEAVY_LAST, 0.5 + 0.3 + 0.2),
    (5, 0.1, FLAT_VOL, 0.5 + 0.3),                      # volume not above its mean
    (1, 0.1, HEAVY_LAST, 0.5 / 3 + 0.3 + 0.2),
    (-2, 0.1, FLAT_VOL, -0.5 * 2 / 3 + 0.3),
    (-2, -1e-9, HEAVY_LAST, -0.5 * 2 / 3 - 0.3 - 0.2),
    (0, -0.1, HEAVY_LAST, -0.3),                        # no side: volume confirms nothing
    (4, 0.0, [5.0], 0.5),                               # one bar: no volume history
])
def test_vwap_layer_blends_position_slope_and_volume(side, slope, volume, value):
    assert vwap_value(side, slope, volume) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize(("o", "h", "lo", "c", "value"), [
    (100, 110, 100, 108, 0.8),      # strong bullish body
    (108, 110, 100, 101, -0.7),     # strong bearish body
    (105, 110, 100, 105.9, 0.0),    # body 9 % of range: doji
    (105, 110, 100, 106, 0.1),      # body exactly 10 %: counts
    (100, 100, 100, 100, 0.0),      # no range
])
def test_candle_conviction(o, h, lo, c, value):
    assert candle_value(o, h, lo, c) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize(("o", "c", "buy", "sell"), [
    (100, 108, 0.8, -0.8),   # a strong bullish candle is good for a BUY, bad for a SELL
    (108, 101, -0.7, 0.7),   # a strong bearish candle is good for a SELL
])
def test_candle_is_direction_aware(o, c, buy, sell):
    sig = market_signals(one_bar(MIDNIGHT, o, 110, 100, c), EMPTY, symbol="EURUSD",
                         settings=DEFAULT)
    assert trade_score(sig, BUY).layers["candle"] == pytest.approx(buy, abs=1e-12)
    assert trade_score(sig, SELL).layers["candle"] == pytest.approx(sell, abs=1e-12)


def test_momentum_needs_35_bars_and_averages_rsi_and_histogram():
    closes = [100 + (i % 7) * 0.3 + i * 0.05 for i in range(60)]
    assert momentum_value(closes[:34]) is None
    assert momentum_value(closes[:35]) is not None
    assert momentum_value([100.0] * 40) == 0.0  # RSI 50, histogram 0
    r, hist = rsi(closes, 14)[-1], macd(closes, 12, 26, 9)[2]
    grew = 1.0 if abs(hist[-1]) > abs(hist[-2]) else 0.5
    expected = (max(-1.0, min(1.0, (r - 50) / 20)) + math.copysign(grew, hist[-1])) / 2
    assert momentum_value(closes) == pytest.approx(expected, abs=1e-12)


def test_ema_alignment():
    rising = [100 + i * 0.1 for i in range(250)]
    assert ema_value(rising[:199]) is None
    assert ema_value(rising) == 1.0
    assert ema_value(rising[::-1]) == -1.0
    # a sharp dip below EMA50 while EMA50 is still above EMA200: a pullback in an up-trend
    assert ema_value([*rising, 110.0]) == pytest.approx(-0.4 + 0.6, abs=1e-12)


@pytest.mark.parametrize(("flow", "layer", "buy"), [
    (None, None, None),
    (0.5, 0.5, 0.5),
    (3.0, 1.0, 1.0),
    (-7.0, -1.0, -1.0),
])
def test_delta_layer_only_with_order_flow(flow, layer, buy):
    sig = market_signals(one_bar(MIDNIGHT, 100, 101, 99, 100.5), EMPTY, symbol="EURUSD",
                         settings=DEFAULT, order_flow=flow)
    assert sig.layers["delta"] == layer
    assert trade_score(sig, BUY).layers.get("delta") == buy
    assert trade_score(sig, SELL).layers.get("delta") == (None if buy is None else -buy)


# -- trade scores ----------------------------------------------------------------------------

def test_rising_market_scores_buy_positive_and_sell_its_exact_negative():
    m5 = path_bars(zigzag_up(298), MIDNIGHT + 8 * H, 300)
    m15 = path_bars(zigzag_up(298), MIDNIGHT - 60 * H, 900)
    sig = market_signals(m5, m15, symbol="EURUSD", settings=DEFAULT)
    assert sig.layers["structure"] == 1.0                   # up-trend by BOS on M15
    assert sig.layers["ema"] == 1.0
    assert sig.layers["candle"] == pytest.approx(0.05 / 0.09, abs=1e-9)
    assert sig.vwap_side_bars > 0 and sig.layers["vwap"] > 0
    assert sig.layers["momentum"] > 0
    buy, sell = trade_score(sig, BUY), trade_score(sig, SELL)
    assert buy.total > 0
    assert sell.total == -buy.total
    assert sell.layers == {k: -v for k, v in buy.layers.items()}
    assert (buy.confluence, sell.confluence) == ("favourable", "adverse")
    assert (buy.structure_with_trade, sell.structure_with_trade) == (True, False)
    # the last BOS: bar i's close made it, the bar closed at its open time + 15 min
    event = structure(m15.high, m15.low, m15.close, DEFAULT.swing_strength).last_event_index
    assert buy.structure_closed_at == sell.structure_closed_at == m15.time[event] + 900
    assert sig.structure.last_event_time == m15.time[event]


def test_without_any_structure_event_the_score_says_it_closed_at_zero():
    sig = market_signals(one_bar(MIDNIGHT, 100, 101, 99, 100.5), EMPTY, symbol="EURUSD",
                         settings=DEFAULT)
    assert trade_score(sig, BUY).structure_closed_at == 0.0


@pytest.mark.parametrize("direction", [BUY, SELL])
def test_total_is_the_sum_of_weighted_trade_relative_layers(direction):
    layers = {"structure": 0.5, "vwap": -0.8, "momentum": 0.3, "ema": None, "delta": -1.0,
              "candle": 0.0}
    weights = {"structure": 1.5, "vwap": 2.0, "momentum": 2.5, "ema": 1.875, "delta": 1.0,
               "candle": 1.0}
    score = trade_score(hand_signals(layers, weights), direction)
    sign = 1 if direction is BUY else -1
    assert score.layers == pytest.approx(
        {"structure": 0.75 * sign, "vwap": -1.6 * sign, "momentum": 0.75 * sign,
         "delta": -1.0 * sign, "candle": 0.0}, abs=1e-12)
    assert score.total == pytest.approx(-1.1 * sign, abs=1e-12)
    assert score.total == sum(score.layers.values())
    assert score.threshold_scale == 1.25


W = dict.fromkeys(LAYERS, 0.0)


@pytest.mark.parametrize(("layers", "weights", "buy", "sell"), [
    # structure for a BUY with 7 of 10 moving weight: exactly the ratio counts
    ({"structure": 1.0, "vwap": -1.0}, {**W, "structure": 7.0, "vwap": 3.0},
     "favourable", "adverse"),
    ({"structure": 1.0, "vwap": -1.0}, {**W, "structure": 6.9, "vwap": 3.1}, "mixed", "mixed"),
    ({"structure": -0.2, "vwap": 0.9}, {**W, "structure": 7.0, "vwap": 3.0},
     "adverse", "favourable"),           # weight decides, not the size of the value
    # 0.7 in exact arithmetic, 0.6999999999999998 in floats: still counts
    ({"structure": 1.0, "vwap": -1.0}, {**W, "structure": 0.7 * (37 / 97),
                                        "vwap": 37 / 97 - 0.7 * (37 / 97)},
     "favourable", "adverse"),
    # zero-valued and unavailable layers do not dilute the share
    ({"structure": 1.0, "vwap": -1.0, "candle": 0.0, "momentum": None},
     {**W, "structure": 7.0, "vwap": 3.0, "candle": 100.0, "momentum": 100.0},
     "favourable", "adverse"),
    ({"structure": 0.0, "candle": 0.0}, {**W, "structure": 3.0, "candle": 1.0}, "mixed", "mixed"),
    ({}, W, "mixed", "mixed"),
])
def test_confluence_at_the_ratio(layers, weights, buy, sell):
    sig = hand_signals(layers, weights)
    assert (trade_score(sig, BUY).confluence, trade_score(sig, SELL).confluence) == (buy, sell)


@pytest.mark.parametrize(("side", "buy_flip", "sell_flip"), [
    (-1, True, False), (1, False, True), (-2, False, False), (2, False, False), (0, False, False),
])
def test_vwap_flip_is_the_first_bar_on_the_adverse_side(side, buy_flip, sell_flip):
    sig = hand_signals({}, side=side)
    assert (trade_score(sig, BUY).vwap_flip, trade_score(sig, SELL).vwap_flip) == (buy_flip,
                                                                                  sell_flip)


@pytest.mark.parametrize(("st", "buy", "sell"), [
    (StructureState("up", "CHOCH", 3, "up"), True, False),
    (StructureState("down", "BOS", 3, "down"), False, True),
    (StructureState(), False, False),
])
def test_structure_with_trade(st, buy, sell):
    sig = hand_signals({}, st=st)
    assert (trade_score(sig, BUY).structure_with_trade,
            trade_score(sig, SELL).structure_with_trade) == (buy, sell)


# -- errors are loud -------------------------------------------------------------------------

GOOD = (MIDNIGHT, 100.0, 101.0, 99.0, 100.5, 10)


@pytest.mark.parametrize(("call", "layer"), [
    (lambda: Bars.from_rows([GOOD, (MIDNIGHT + 300, 100.0, 101.0, 99.0, math.nan, 10)]), "bars"),
    (lambda: Bars.from_rows([(MIDNIGHT, 100.0, math.inf, 99.0, 100.5, 10)]), "bars"),
    (lambda: Bars.from_rows([(MIDNIGHT, 0.0, 1.0, 0.0, 0.5, 10)]), "bars"),      # price 0
    (lambda: Bars.from_rows([(MIDNIGHT, 100.0, 99.0, 101.0, 100.0, 10)]), "bars"),  # h < l
    (lambda: Bars.from_rows([GOOD, GOOD]), "bars"),                                 # same time
    (lambda: Bars.from_rows([(MIDNIGHT, 100.0, 101.0)]), "bars"),                   # short row
    (lambda: Bars((1, 2), (1.0,), (1.0,), (1.0,), (1.0,), (1.0,)), "bars"),          # lengths
    (lambda: market_signals(EMPTY, EMPTY, symbol="EURUSD", settings=DEFAULT), "bars"),
    (lambda: market_signals(Bars.from_rows([GOOD]), EMPTY, symbol="EURUSD", settings=DEFAULT,
                            order_flow=math.nan), "delta"),
    (lambda: market_signals(Bars.from_rows([GOOD]), EMPTY, symbol="EURUSD",
                            settings=settings(weight_vwap=math.nan)), "regime"),
    (lambda: market_signals(Bars.from_rows([GOOD]), EMPTY, symbol="EURUSD",
                            settings=settings(symbol_multipliers={"EURUSD": -1.0})), "regime"),
    (lambda: market_signals(Bars.from_rows([GOOD]), EMPTY, symbol="EURUSD",
                            settings=settings(swing_strength=0)), "structure"),
    (lambda: trade_score(hand_signals({"vwap": math.nan}), BUY), "vwap"),
    (lambda: trade_score(hand_signals({"momentum": 0.5}, weights={}), BUY), "momentum"),
    (lambda: trade_score(hand_signals({}), "LONG"), "direction"),
])
def test_scoring_errors_raise_naming_the_layer(call, layer):
    with pytest.raises(ScoringError, match=f"^{layer}: "):
        call()
    assert issubclass(ScoringError, ValueError)


# -- the server's time zone setting ------------------------------------------------------------

@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "europe/athens", "/etc/localtime", "../x"])
def test_an_unknown_server_timezone_is_refused_at_config_load_naming_the_setting(zone):
    with pytest.raises(config.ConfigError, match=r"^signals\.server_timezone: unknown time zone "
                                                 rf"{re.escape(repr(zone))}, expected an IANA"):
        config.load(ROOT / "config" / "dtms.toml",
                    environ={"DTMS_SIGNALS_SERVER_TIMEZONE": zone})


def test_a_valid_server_timezone_loads():
    s = config.load(ROOT / "config" / "dtms.toml",
                    environ={"DTMS_SIGNALS_SERVER_TIMEZONE": "Europe/Athens"})
    assert s.signals.server_timezone == "Europe/Athens"
    assert config.Settings().signals.server_timezone == "UTC"


@pytest.mark.parametrize("source", ["file", "env"])
def test_the_removed_server_utc_offset_h_says_to_use_server_timezone(tmp_path, source):
    f = tmp_path / "dtms.toml"
    f.write_text("[signals]\nserver_utc_offset_h = 2.0\n" if source == "file" else "")
    env = {"DTMS_SIGNALS_SERVER_UTC_OFFSET_H": "2"} if source == "env" else {}
    with pytest.raises(config.ConfigError, match=(
            r"^unknown setting signals\.server_utc_offset_h: replaced by "
            r'signals\.server_timezone, an IANA time zone name such as "Europe/Athens"')):
        config.load(f, environ=env)
