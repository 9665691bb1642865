"""Technical indicators over closed bars: EMA, Wilder smoothing, ATR, RSI, MACD, Bollinger,
session VWAP, swings and market structure (BOS / CHOCH).

This module owns the arithmetic only. Every function is pure and takes plain sequences of floats,
oldest first, of **closed** bars: the bar still forming is the caller's business and must not be
passed (MT5's ``copy_rates_from_pos(sym, tf, 0, n)`` returns it last; drop it). Each output at
index ``i`` depends only on inputs ``0..i``, so a forming bar passed by mistake would only corrupt
the last value — but that is exactly the value a caller reads.

Times are broker-server epoch seconds: MT5 stamps bars and ticks with the server's wall clock
as if it were UTC. The server's real time zone (``signals.server_timezone``) is passed in as a
``tzinfo``, so that UTC days follow the server through its daylight-saving changes.

Series outputs have the input's length; entries before an indicator is defined are ``math.nan``.
Bad input is loud: mismatched lengths, a period < 1, non-finite values or ``high < low`` raise
``ValueError``. Example::

    >>> ema([1, 2, 3, 4, 5], 3)
    [nan, nan, 2.0, 3.0, 4.0]
    >>> structure(high, low, close, strength=2).trend     # doctest: +SKIP
    'up'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal, cast

NAN = math.nan
SECONDS_PER_DAY = 86_400
_EPOCH = datetime(1970, 1, 1)


# -- validation ------------------------------------------------------------------------------

def _check_period(period: int, name: str = "period") -> None:
    if not isinstance(period, int) or isinstance(period, bool) or period < 1:
        raise ValueError(f"{name} must be an int >= 1, got {period!r}")


def _check_finite(name: str, values: Sequence[float]) -> None:
    if not all(map(math.isfinite, values)):
        bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
        raise ValueError(f"{name}[{bad}] is not finite: {values[bad]!r}")


def _check_lengths(**series: Sequence[float]) -> int:
    lengths = {name: len(s) for name, s in series.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"mismatched lengths: {lengths}")
    return next(iter(lengths.values()))


def _check_bars(high: Sequence[float], low: Sequence[float], close: Sequence[float]) -> int:
    n = _check_lengths(high=high, low=low, close=close)
    for name, s in (("high", high), ("low", low), ("close", close)):
        _check_finite(name, s)
    for i in range(n):
        if high[i] < low[i]:
            raise ValueError(f"high[{i}] {high[i]} < low[{i}] {low[i]}")
    return n


def _defined_from(name: str, values: Sequence[float]) -> int:
    """Index of the first non-NaN value. Leading NaNs are allowed so that one indicator can be
    smoothed by another (the MACD signal line); any later non-finite value is an error."""
    start = 0
    while start < len(values) and math.isnan(values[start]):
        start += 1
    _check_finite(name, values[start:])
    return start


# -- smoothing -------------------------------------------------------------------------------

def _smooth(values: Sequence[float], period: int, wilder_alpha: bool) -> list[float]:
    # Both EMA and Wilder's RMA are "seed with the SMA of the first `period` defined values,
    # then prev + alpha * (v - prev)"; only alpha differs.
    _check_period(period)
    alpha = 1.0 / period if wilder_alpha else 2.0 / (period + 1)
    n = len(values)
    out = [NAN] * n
    start = _defined_from("values", values)
    seed_at = start + period - 1
    if seed_at >= n:
        return out
    prev = math.fsum(values[start:seed_at + 1]) / period
    out[seed_at] = prev
    for i in range(seed_at + 1, n):
        prev = prev + alpha * (values[i] - prev)
        out[i] = prev
    return out


def ema(values: Sequence[float], period: int) -> list[float]:
    """Exponential moving average, alpha = 2 / (period + 1), seeded with the SMA of the first
    ``period`` values at index ``period - 1`` (after any leading NaNs)."""
    return _smooth(values, period, wilder_alpha=False)


def wilder(values: Sequence[float], period: int) -> list[float]:
    """Wilder's smoothing (RMA), alpha = 1 / period, seeded like :func:`ema`."""
    return _smooth(values, period, wilder_alpha=True)


# -- volatility ------------------------------------------------------------------------------

def true_range(high: Sequence[float], low: Sequence[float], close: Sequence[float]) -> list[float]:
    """True range per bar; the first bar has no previous close, so its TR is ``high - low``."""
    n = _check_bars(high, low, close)
    tr = [high[0] - low[0]] if n else []
    for i in range(1, n):
        pc = close[i - 1]
        tr.append(max(high[i] - low[i], abs(high[i] - pc), abs(low[i] - pc)))
    return tr


def atr(high: Sequence[float], low: Sequence[float], close: Sequence[float],
        period: int = 14) -> list[float]:
    """Average true range: Wilder smoothing of the true range, first value (index ``period - 1``)
    the SMA of the first ``period`` TRs."""
    _check_period(period)
    return wilder(true_range(high, low, close), period)


def bollinger(close: Sequence[float], period: int = 20,
              k: float = 2.0) -> tuple[list[float], list[float], list[float]]:
    """Bollinger bands ``(mid, upper, lower)``: SMA ± k × population standard deviation over the
    last ``period`` closes; defined from index ``period - 1``."""
    _check_period(period)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"k must be finite and >= 0, got {k!r}")
    _check_finite("close", close)
    n = len(close)
    mid, upper, lower = [NAN] * n, [NAN] * n, [NAN] * n
    for i in range(period - 1, n):
        window = close[i - period + 1:i + 1]
        m = math.fsum(window) / period
        # two-pass variance: a running sum of squares loses precision on prices like 1.08421
        sd = math.sqrt(math.fsum((x - m) ** 2 for x in window) / period)
        mid[i], upper[i], lower[i] = m, m + k * sd, m - k * sd
    return mid, upper, lower


def bollinger_width(close: Sequence[float], period: int = 20, k: float = 2.0) -> list[float]:
    """``(upper - lower) / mid`` per bar, NaN before the bands are defined; a zero mid raises."""
    mid, upper, lower = bollinger(close, period, k)
    out = [NAN] * len(close)
    for i, m in enumerate(mid):
        if math.isnan(m):
            continue
        if m == 0:
            raise ValueError(f"Bollinger mid is 0 at index {i}")
        out[i] = (upper[i] - lower[i]) / m
    return out


# -- momentum --------------------------------------------------------------------------------

def rsi(close: Sequence[float], period: int = 14) -> list[float]:
    """Wilder's RSI. The first average gain/loss (index ``period``) is the SMA of the first
    ``period`` changes, then Wilder smoothing. 100 when the average loss is 0 and the average gain
    is not; 50 when both are 0 (a flat market is neutral, not overbought)."""
    _check_period(period)
    _check_finite("close", close)
    n = len(close)
    out = [NAN] * n
    if n <= period:
        return out
    gains = [max(close[i] - close[i - 1], 0.0) for i in range(1, n)]
    losses = [max(close[i - 1] - close[i], 0.0) for i in range(1, n)]
    avg_gain, avg_loss = wilder(gains, period), wilder(losses, period)
    for i in range(period, n):
        g, lo = avg_gain[i - 1], avg_loss[i - 1]
        if lo == 0:
            out[i] = 100.0 if g > 0 else 50.0
        else:
            out[i] = 100.0 - 100.0 / (1.0 + g / lo)
    return out


def macd(close: Sequence[float], fast: int = 12, slow: int = 26,
         signal: int = 9) -> tuple[list[float], list[float], list[float]]:
    """``(macd line, signal line, histogram)``. The line is EMA(fast) - EMA(slow), defined from
    index ``slow - 1``; the signal line is the EMA of the line seeded over its first ``signal``
    defined values (index ``slow + signal - 2``); histogram = line - signal. Requires
    ``fast < slow``."""
    for name, p in (("fast", fast), ("slow", slow), ("signal", signal)):
        _check_period(p, name)
    if fast >= slow:
        raise ValueError(f"fast ({fast}) must be < slow ({slow})")
    _check_finite("close", close)
    ef, es = ema(close, fast), ema(close, slow)
    line = [f - s for f, s in zip(ef, es, strict=True)]  # NaN until the slow EMA is seeded
    sig = ema(line, signal)
    hist = [m - s for m, s in zip(line, sig, strict=True)]
    return line, sig, hist


# -- VWAP ------------------------------------------------------------------------------------

def utc_offset_s(t: float, tz: tzinfo = UTC) -> float:
    """How far the server clock of ``tz`` is ahead of UTC (seconds) at server timestamp ``t``.
    A wall time the clock shows twice (the hour after a fall-back) takes the first, summer
    offset; one it skips (after a spring-forward) the offset before the change."""
    offset = (_EPOCH + timedelta(seconds=t)).replace(tzinfo=tz).utcoffset()
    return 0.0 if offset is None else offset.total_seconds()


def utc_day(t: float, tz: tzinfo = UTC) -> int:
    """The UTC day number of a broker-server timestamp of a server on ``tz``'s clock."""
    return int((t - utc_offset_s(t, tz)) // SECONDS_PER_DAY)


def utc_days(times: Sequence[float], tz: tzinfo = UTC) -> list[int]:
    """:func:`utc_day` of each timestamp. A zone lookup costs microseconds and this runs on
    every bar close, so a server day whose offset is the same at its first and last second is
    looked up once (days with a daylight-saving change, two a year, bar by bar)."""
    per_day: dict[int, float | None] = {}
    out = []
    for t in times:
        day = int(t // SECONDS_PER_DAY)
        if day not in per_day:
            start = day * SECONDS_PER_DAY
            first, last = utc_offset_s(start, tz), utc_offset_s(start + SECONDS_PER_DAY - 1, tz)
            per_day[day] = first if first == last else None
        offset = per_day[day]
        out.append(int((t - (utc_offset_s(t, tz) if offset is None else offset))
                       // SECONDS_PER_DAY))
    return out


def session_vwap(times: Sequence[float], high: Sequence[float], low: Sequence[float],
                 close: Sequence[float], volume: Sequence[float],
                 tz: tzinfo = UTC) -> list[float]:
    """Volume-weighted typical price ``(h + l + c) / 3``, cumulative within each UTC day and reset
    at every UTC midnight. ``times`` are bar open times in broker-server epoch seconds of a
    server on ``tz``'s clock (so the reset is at 02:00 server time in an Athens winter, 03:00 in
    its summer); the bar belongs to the UTC day of its open time. While a session's cumulative
    volume is 0 every bar weighs the same (the running mean of typical prices), so a feed
    without volume still has a VWAP; once volume arrives, zero-volume bars weigh nothing."""
    n = _check_bars(high, low, close)
    _check_lengths(times=times, high=high, volume=volume)
    _check_finite("volume", volume)
    _check_finite("times", times)
    days = utc_days(times, tz)
    out = [NAN] * n
    day = None
    pv = vol = tp_sum = 0.0
    count = 0
    for i in range(n):
        if volume[i] < 0:
            raise ValueError(f"volume[{i}] is negative: {volume[i]}")
        d = days[i]
        if d != day:
            day, pv, vol, tp_sum, count = d, 0.0, 0.0, 0.0, 0
        tp = (high[i] + low[i] + close[i]) / 3.0
        pv += tp * volume[i]
        vol += volume[i]
        tp_sum += tp
        count += 1
        out[i] = pv / vol if vol > 0 else tp_sum / count
    return out


def vwap_slope(vwap: Sequence[float], times: Sequence[float], bars: int = 5,
               tz: tzinfo = UTC) -> float:
    """Slope of the VWAP per bar over the last ``bars`` bars of the current session:
    ``(vwap[-1] - vwap[-1 - bars]) / bars``. Both ends must lie in the last bar's UTC day, so the
    session needs ``bars + 1`` bars; with fewer the slope is 0 (a fresh anchor has no slope)."""
    _check_period(bars, "bars")
    n = _check_lengths(vwap=vwap, times=times)
    if n < bars + 1:
        return 0.0
    if utc_day(times[-1 - bars], tz) != utc_day(times[-1], tz):
        return 0.0
    _check_finite("vwap", vwap[-1 - bars:])
    return (vwap[-1] - vwap[-1 - bars]) / bars


# -- swings and structure --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Swing:
    index: int
    price: float
    kind: Literal["high", "low"]


def swings(high: Sequence[float], low: Sequence[float], strength: int = 2) -> list[Swing]:
    """Confirmed fractal swings, by index (a high before a low at the same index). A swing high
    at ``i`` has ``high[i]`` strictly above the ``strength`` highs on each side; lows mirror it.
    A swing is confirmed only once ``strength`` bars have closed after it, so the last
    ``strength`` bars never hold one. Equal highs (a double top) make no swing."""
    _check_period(strength, "strength")
    n = _check_lengths(high=high, low=low)
    _check_finite("high", high)
    _check_finite("low", low)
    out: list[Swing] = []
    for i in range(strength, n - strength):
        h, lo = high[i], low[i]
        around = range(i - strength, i + strength + 1)
        if all(high[j] < h for j in around if j != i):
            out.append(Swing(i, float(h), "high"))
        if all(low[j] > lo for j in around if j != i):
            out.append(Swing(i, float(lo), "low"))
    return out


@dataclass(frozen=True, slots=True)
class StructureState:
    trend: Literal["up", "down", "none"] = "none"
    last_event: Literal["BOS", "CHOCH"] | None = None
    last_event_index: int = -1
    last_event_direction: Literal["up", "down"] | None = None
    swing_high: float | None = None   # the last confirmed, not yet broken swing high
    swing_low: float | None = None    # the last confirmed, not yet broken swing low
    #: ``times[last_event_index]``: the OPEN time of the bar whose close made the last event
    #: (the event is known once that bar has closed); None with no event or no ``times``
    last_event_time: float | None = None


def structure(high: Sequence[float], low: Sequence[float], close: Sequence[float],
              strength: int = 2, *, times: Sequence[float] | None = None) -> StructureState:
    """Market structure from closed bars, walked oldest first. The rule, per bar ``j``:

    1. If bar ``j`` confirms a swing (at ``j - strength``, see :func:`swings`), that swing becomes
       the tracked swing high (or low), replacing any older one, broken or not.
    2. ``close[j]`` above the tracked swing high is a bullish break; below the tracked swing low a
       bearish break. Only closes count: a wick through the level is no break. The broken swing is
       consumed (it cannot break twice); the tracked level stays empty until a new swing confirms.
    3. A break in the current trend's direction, or with no trend yet, is a ``BOS``; against it, a
       ``CHOCH``. Either way the trend becomes the break's direction.

    One close never breaks both levels: that needs a swing high below a swing low, and whichever
    of the two formed later would have closed through the other on its own bar.

    With ``times`` (the bars' open times), the state also says when the last event happened
    (``last_event_time``), so that a caller can tell a new event from one it has already seen.
    """
    _check_period(strength, "strength")
    n = _check_bars(high, low, close)
    if times is not None:
        _check_lengths(times=times, close=close)
        _check_finite("times", times)
    by_confirm: dict[int, list[Swing]] = {}
    for s in swings(high, low, strength):
        by_confirm.setdefault(s.index + strength, []).append(s)
    sh: Swing | None = None
    sl: Swing | None = None
    trend: Literal["up", "down", "none"] = "none"
    event: Literal["BOS", "CHOCH"] | None = None
    event_index = -1
    for j in range(n):
        for s in by_confirm.get(j, ()):
            if s.kind == "high":
                sh = s
            else:
                sl = s
        direction: Literal["up", "down"]
        if sh is not None and close[j] > sh.price:
            direction, sh = "up", None
        elif sl is not None and close[j] < sl.price:
            direction, sl = "down", None
        else:
            continue
        event = "BOS" if trend in ("none", direction) else "CHOCH"
        trend, event_index = direction, j
    return StructureState(
        trend=trend, last_event=event, last_event_index=event_index,
        # an event is only ever set together with a trend of "up" or "down"
        last_event_direction=None if event is None else cast(Literal["up", "down"], trend),
        swing_high=None if sh is None else sh.price,
        swing_low=None if sl is None else sl.price,
        last_event_time=None if event is None or times is None else float(times[event_index]))
