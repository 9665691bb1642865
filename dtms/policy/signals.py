"""Signal layers -> regime -> trade-relative score and confluence (SPEC section 5).

This module owns how DTMS reads the market. It works in two steps so that the cost does not grow
with the number of trades:

1. :func:`market_signals` runs once per symbol per closed bar and is direction-neutral: every
   layer value is in ``[-1, 1]`` with **positive = bullish**, ``None`` when unavailable.
2. :func:`trade_score` turns those into one trade's view: positive = good for the trade. For a
   SELL every layer's sign flips, so a SELL's total is exactly minus the BUY's.

Only closed bars go in (:class:`Bars`); the bar still forming is the market actor's to drop.

Layers (bullish-positive; constants below the imports)::

    structure  M15 BOS/CHOCH: +1 up-trend whose last break is a BOS, +0.5 after only a CHOCH,
               mirrored for down, 0 with no break yet. None with < 2*swing_strength+1 bars.
    vwap       M5, session VWAP: 0.5*position + 0.3*slope + 0.2*volume, where
               position = side * min(1, |side bars| / 3)   (side = sign(close - vwap)),
               slope    = sign(vwap_slope over 5 bars),
               volume   = side if the last bar's tick volume > the mean of the 20 before, else 0.
    momentum   M5: (clamp((RSI14 - 50) / 20) + m) / 2 with m = sign(hist) * (1 if |hist| grew
               since the previous bar else 0.5), MACD 12/26/9. None until both are defined.
    ema        M15: 0.4*sign(close - EMA50) + 0.6*sign(EMA50 - EMA200): +1 when
               close > EMA50 > EMA200, a pullback in an up-trend is +0.2. None before EMA200.
    delta      clamp(order_flow, -1, 1); None without an order-flow source.
    candle     last M5 candle: (close - open) / (high - low); 0 when the body is < 10 % of the
               range (a doji) or the range is 0.

Sessions are by UTC hour (``SESSIONS``) and the VWAP resets at UTC midnight; bar times are the
broker server's clock, converted with its IANA time zone ``server_timezone`` (most brokers run
UTC+2 in winter and UTC+3 in summer), so both follow the server through daylight saving.

Regime scales the weights: in ``range`` mode structure x0.5 and momentum x1.25 (breaks fail and
oscillators work in a range); in ``trend`` mode ema x1.25; ``unknown`` (too few bars for the
Bollinger band) scales nothing. Every failure — NaN/inf, bad bars, bad settings — raises
:class:`ScoringError` naming the layer; a broken score is never a silent 0. Example::

    sig = market_signals(Bars.from_rows(m5_rows), Bars.from_rows(m15_rows),
                         symbol="XAUUSDc", settings=settings.signals)
    score = trade_score(sig, Direction.SELL)   # score.total, score.confluence, score.vwap_flip
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dtms.config import SignalSettings
from dtms.model import Direction, normalize_symbol
from dtms.policy.indicators import (
    StructureState,
    atr,
    bollinger_width,
    ema,
    macd,
    rsi,
    session_vwap,
    structure,
    utc_offset_s,
    vwap_slope,
)

LAYERS = ("structure", "vwap", "momentum", "ema", "delta", "candle")
RSI_PERIOD = 14
MACD_PERIODS = (12, 26, 9)
EMA_FAST, EMA_SLOW = 50, 200
VWAP_SLOPE_BARS = 5
SIDE_BARS_FULL = 3          # bars on one side of VWAP before the position term is at full strength
VOLUME_LOOKBACK = 20
DOJI_BODY = 0.10
RANGE_SCALING = {"structure": 0.5, "momentum": 1.25}
TREND_SCALING = {"ema": 1.25}
#: UTC hour at which each session ends (exclusive), in order
SESSIONS = (("asia", 7), ("london", 12), ("overlap", 16), ("newyork", 21), ("late", 24))
M15_SECONDS = 900           # the structure timeframe's bar length
_EPS = 1e-12                # float slack so that a share of exactly the ratio counts as reaching it


class ScoringError(ValueError):
    """A score could not be computed; the message starts with the layer (or ``bars``/``regime``)."""


@contextmanager
def _layer(name: str) -> Iterator[None]:
    try:
        yield
    except ScoringError:
        raise
    except (ValueError, ZeroDivisionError, OverflowError) as e:
        raise ScoringError(f"{name}: {e}") from e


def _sign(x: float) -> float:
    return 1.0 if x > 0 else -1.0 if x < 0 else 0.0


def _clamp(x: float) -> float:
    return max(-1.0, min(1.0, x))


# -- bars ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Bars:
    """Closed bars of one symbol and timeframe, oldest first, validated on construction."""
    time: tuple[int, ...]
    open: tuple[float, ...]
    high: tuple[float, ...]
    low: tuple[float, ...]
    close: tuple[float, ...]
    volume: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.time)
        for name in ("open", "high", "low", "close", "volume"):
            if len(getattr(self, name)) != n:
                raise ScoringError(f"bars: {name} has {len(getattr(self, name))} values, "
                                   f"time has {n}")
        for i in range(n):
            o, h, lo, c, v = self.open[i], self.high[i], self.low[i], self.close[i], self.volume[i]
            if not all(map(math.isfinite, (o, h, lo, c, v))):
                raise ScoringError(f"bars: bar {i} has a non-finite value {(o, h, lo, c, v)}")
            if lo <= 0:
                raise ScoringError(f"bars: bar {i} has a non-positive price {(o, h, lo, c)}")
            if not (lo <= min(o, c) and max(o, c) <= h):
                raise ScoringError(f"bars: bar {i} is inconsistent (o, h, l, c) = {(o, h, lo, c)}")
            if v < 0:
                raise ScoringError(f"bars: bar {i} has negative volume {v}")
            if i and self.time[i] <= self.time[i - 1]:
                raise ScoringError(f"bars: time is not increasing at bar {i}")

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> Bars:
        """From ``(time, open, high, low, close, tick_volume, ...)`` rows (MT5 rate records
        work; extra fields are ignored)."""
        cols: list[list[Any]] = [[], [], [], [], [], []]
        try:
            for r in rows:
                cols[0].append(int(r[0]))
                for k in range(1, 6):
                    cols[k].append(float(r[k]))
        except (TypeError, ValueError, IndexError, OverflowError) as e:
            raise ScoringError(f"bars: bad row {len(cols[0])}: {e}") from e
        t, o, h, lo, c, v = (tuple(col) for col in cols)
        return cls(t, o, h, lo, c, v)

    def __len__(self) -> int:
        return len(self.time)


# -- results ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Regime:
    session: str            # asia | london | overlap | newyork | late, by the last bar's UTC hour
                            # (its open time, converted with signals.server_timezone)
    volatility: str         # low | normal | high by ATR ratio (the bounds themselves are normal)
    atr_ratio: float        # ATR now / mean ATR over atr_baseline_bars; 1.0 until ATR exists
    mode: str               # range | trend by Bollinger width; unknown with too few bars
    bb_width: float         # NaN when mode is unknown
    threshold_scale: float  # session x volatility x symbol multiplier


@dataclass(frozen=True, slots=True)
class MarketSignals:
    symbol: str
    time: int                       # open time of the last closed M5 bar used
    close: float                    # its close
    layers: dict[str, float | None]
    weights: dict[str, float]       # after regime scaling, every layer
    regime: Regime
    atr: float                      # ATR(atr_period) on M5, last value; 0.0 = not enough bars
    vwap: float
    vwap_slope: float
    vwap_side_bars: int
    structure: StructureState       # M15
    confluence_ratio: float         # settings.confluence_ratio, carried for trade_score


@dataclass(frozen=True, slots=True)
class Score:
    total: float
    layers: dict[str, float]
    confluence: str                 # favourable | adverse | mixed
    vwap_flip: bool
    structure_with_trade: bool      # the last M15 structure event is in the trade's direction
    threshold_scale: float
    #: broker-server time at which the M15 bar whose close made the last structure event closed
    #: (its open time + 15 min); 0.0 with no event (never newer than anything)
    structure_closed_at: float = 0.0


# -- regime ----------------------------------------------------------------------------------

def server_zone(name: str) -> tzinfo:
    """The broker server's time zone by IANA name (``signals.server_timezone``). zoneinfo caches
    it: the zone file is read when the settings are validated, not per bar."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        raise ValueError(f"server_timezone: unknown time zone {name!r}") from e


def session_of(t: float, tz: tzinfo) -> str:
    """The trading session of a broker-server timestamp (server clock ``tz``) by its UTC hour."""
    hour = ((t - utc_offset_s(t, tz)) % 86_400) // 3600
    return next(name for name, end in SESSIONS if hour < end)


def volatility_of(atr_ratio: float, s: SignalSettings) -> str:
    """``low`` below ``vol_low_ratio``, ``high`` above ``vol_high_ratio``; the bounds are normal."""
    return ("low" if atr_ratio < s.vol_low_ratio
            else "high" if atr_ratio > s.vol_high_ratio else "normal")


def mode_of(bb_width: float, s: SignalSettings) -> str:
    """``range`` strictly below ``range_bb_width`` (the bound is a trend); ``unknown`` for NaN."""
    if math.isnan(bb_width):
        return "unknown"
    return "range" if bb_width < s.range_bb_width else "trend"


def _lookup(mapping: Mapping[str, float], keys: Iterable[str], what: str) -> float:
    folded: dict[str, float] = {}
    for k, v in mapping.items():
        if k.casefold() in folded and folded[k.casefold()] != v:
            raise ValueError(f"{what} multipliers have conflicting keys for {k!r}")
        folded[k.casefold()] = v
    for key in keys:
        found = folded.get(key.casefold())
        if found is not None:
            if not (math.isfinite(found) and found > 0):
                raise ValueError(f"{what} multiplier for {key!r} must be finite and > 0, "
                                 f"got {found}")
            return float(found)
    return 1.0


def _regime(m5: Bars, symbol: str, s: SignalSettings, tz: tzinfo) -> tuple[Regime, float]:
    if s.atr_baseline_bars < 1:
        raise ValueError(f"atr_baseline_bars must be >= 1, got {s.atr_baseline_bars}")
    session = session_of(m5.time[-1], tz)
    a = atr(m5.high, m5.low, m5.close, s.atr_period)
    now, ratio = 0.0, 1.0
    if not math.isnan(a[-1]):
        now = a[-1]
        base = [x for x in a[-s.atr_baseline_bars:] if not math.isnan(x)]
        mean = math.fsum(base) / len(base)
        ratio = now / mean if mean > 0 else 1.0   # a market that never moved is "normal"
    volatility = volatility_of(ratio, s)
    width = math.nan
    if len(m5) >= s.bb_period:
        # the last width only needs the last bb_period closes
        width = bollinger_width(m5.close[-s.bb_period:], s.bb_period, s.bb_stddev)[-1]
    mode = mode_of(width, s)
    scale = (_lookup(s.session_multipliers, (session,), "session")
             * _lookup(s.volatility_multipliers, (volatility,), "volatility")
             * _lookup(s.symbol_multipliers, (symbol.strip(), normalize_symbol(symbol)),
                       "symbol"))
    return Regime(session, volatility, ratio, mode, width, scale), now


def _weights(s: SignalSettings, mode: str) -> dict[str, float]:
    w = {"structure": s.weight_structure, "vwap": s.weight_vwap, "momentum": s.weight_momentum,
         "ema": s.weight_ema, "delta": s.weight_delta, "candle": s.weight_candle}
    for name, v in w.items():
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"weight_{name} must be finite and >= 0, got {v}")
    scaling = RANGE_SCALING if mode == "range" else TREND_SCALING if mode == "trend" else {}
    return {name: float(v) * scaling.get(name, 1.0) for name, v in w.items()}


# -- layers ----------------------------------------------------------------------------------

def structure_value(st: StructureState) -> float:
    """+1 / -1 for a trend whose last break continued it, ±0.5 after only a CHOCH, 0 none."""
    if st.trend == "none":
        return 0.0
    strength = 1.0 if st.last_event == "BOS" else 0.5
    return strength if st.trend == "up" else -strength


def side_bars(close: Sequence[float], vwap: Sequence[float]) -> int:
    """Signed run of consecutive closes, ending at the last, on one side of their bar's VWAP
    (+n above, -n below, 0 when the last close is on it). The run crosses session boundaries:
    each bar is judged against its own session's VWAP."""
    side = _sign(close[-1] - vwap[-1])
    if side == 0:
        return 0
    n = 0
    for i in range(len(close) - 1, -1, -1):
        if _sign(close[i] - vwap[i]) != side:
            break
        n += 1
    return int(side) * n


def vwap_value(side_n: int, slope: float, volume: Sequence[float]) -> float:
    side = _sign(side_n)
    position = side * min(1.0, abs(side_n) / SIDE_BARS_FULL)
    prev = volume[-1 - VOLUME_LOOKBACK:-1]
    # tick volume above its recent mean says the market is pushing the price to that side
    confirmed = bool(prev) and volume[-1] > math.fsum(prev) / len(prev)
    return 0.5 * position + 0.3 * _sign(slope) + 0.2 * (side if confirmed else 0.0)


def momentum_value(close: Sequence[float]) -> float | None:
    r = rsi(close, RSI_PERIOD)
    _, _, hist = macd(close, *MACD_PERIODS)
    if len(close) < 2 or math.isnan(r[-1]) or math.isnan(hist[-2]):
        return None
    h, prev = hist[-1], hist[-2]
    m = _sign(h) * (1.0 if abs(h) > abs(prev) else 0.5)
    return (_clamp((r[-1] - 50.0) / 20.0) + m) / 2.0


def ema_value(close: Sequence[float]) -> float | None:
    fast, slow = ema(close, EMA_FAST)[-1], ema(close, EMA_SLOW)[-1]
    if math.isnan(slow):
        return None
    return 0.4 * _sign(close[-1] - fast) + 0.6 * _sign(fast - slow)


def candle_value(o: float, h: float, lo: float, c: float) -> float:
    """Signed body / range of one candle; 0 for a doji (body < 10 % of the range)."""
    rng, body = h - lo, c - o
    if rng <= 0 or abs(body) < DOJI_BODY * rng:
        return 0.0
    return body / rng


# -- the two entry points --------------------------------------------------------------------

def market_signals(m5: Bars, m15: Bars, *, symbol: str, settings: SignalSettings,
                   order_flow: float | None = None) -> MarketSignals:
    """Direction-neutral signals of one symbol at the close of its last M5 bar.

    Raises ScoringError (naming the layer) on bad bars, non-finite ``order_flow`` or settings it
    cannot use. Needs at least one M5 bar; layers lacking history are None.
    """
    s = settings
    if not isinstance(m5, Bars) or not isinstance(m15, Bars):
        raise ScoringError("bars: m5 and m15 must be Bars")
    if not m5:
        raise ScoringError("bars: no closed M5 bars")
    layers: dict[str, float | None] = dict.fromkeys(LAYERS)
    with _layer("regime"):
        tz = server_zone(s.server_timezone)
        regime, atr_now = _regime(m5, symbol, s, tz)
        weights = _weights(s, regime.mode)
    with _layer("structure"):
        st = structure(m15.high, m15.low, m15.close, s.swing_strength, times=m15.time)
        if len(m15) >= 2 * s.swing_strength + 1:
            layers["structure"] = structure_value(st)
    with _layer("vwap"):
        vw = session_vwap(m5.time, m5.high, m5.low, m5.close, m5.volume, tz)
        slope = vwap_slope(vw, m5.time, VWAP_SLOPE_BARS, tz)
        side_n = side_bars(m5.close, vw)
        layers["vwap"] = vwap_value(side_n, slope, m5.volume)
    with _layer("momentum"):
        layers["momentum"] = momentum_value(m5.close)
    with _layer("ema"):
        layers["ema"] = ema_value(m15.close) if m15 else None
    with _layer("delta"):
        if order_flow is not None:
            if not math.isfinite(order_flow):
                raise ValueError(f"order_flow is not finite: {order_flow}")
            layers["delta"] = _clamp(float(order_flow))
    layers["candle"] = candle_value(m5.open[-1], m5.high[-1], m5.low[-1], m5.close[-1])
    for name, v in layers.items():
        if v is not None and not (math.isfinite(v) and -1.0 <= v <= 1.0):
            raise ScoringError(f"{name}: value {v} is outside [-1, 1]")
    return MarketSignals(
        symbol=symbol, time=m5.time[-1], close=m5.close[-1], layers=layers, weights=weights,
        regime=regime, atr=atr_now, vwap=vw[-1], vwap_slope=slope, vwap_side_bars=side_n,
        structure=st, confluence_ratio=s.confluence_ratio)


def trade_score(signals: MarketSignals, direction: Direction) -> Score:
    """One trade's view of the market: every layer signed for the trade and weighted.

    Confluence looks at the available layers with a non-zero value: if the weight of those
    against the trade is at least ``confluence_ratio`` of their total weight the verdict is
    ``adverse``, else if the weight of those for it is, ``favourable``, else ``mixed`` (also
    when every layer is 0). Raises ScoringError for a non-finite value or a missing weight.
    """
    try:
        d = Direction(direction)
    except ValueError as e:
        raise ScoringError(f"direction: {e}") from e
    sign = 1.0 if d is Direction.BUY else -1.0
    contributions: dict[str, float] = {}
    favourable = adverse = 0.0
    for name, v in signals.layers.items():
        if v is None:
            continue
        w = signals.weights.get(name)
        if w is None or not math.isfinite(w) or not math.isfinite(v):
            raise ScoringError(f"{name}: cannot score value {v} with weight {w}")
        rel = sign * v + 0.0          # + 0.0 turns a SELL's -0.0 into 0.0
        contributions[name] = w * rel
        if rel > 0:
            favourable += w
        elif rel < 0:
            adverse += w
    ratio = signals.confluence_ratio
    moving = favourable + adverse
    confluence = "mixed"
    if moving > 0:
        if adverse / moving >= ratio - _EPS:
            confluence = "adverse"
        elif favourable / moving >= ratio - _EPS:
            confluence = "favourable"
    side = signals.vwap_side_bars
    event_time = signals.structure.last_event_time
    return Score(
        total=sum(contributions.values()),
        layers=contributions,
        confluence=confluence,
        vwap_flip=side == (-1 if d is Direction.BUY else 1),
        structure_with_trade=signals.structure.last_event_direction
        == ("up" if d is Direction.BUY else "down"),
        threshold_scale=signals.regime.threshold_scale,
        structure_closed_at=0.0 if event_time is None else event_time + M15_SECONDS,
    )
