"""OHLC bar storage of one symbol: M1 bars plus cached higher-timeframe aggregates.

This module owns BarSeries. Live ticks update the forming (last) M1 bar; any
timeframe with a fixed bar length is aggregated from M1 on demand, with the
completed part cached so repeated queries cost only the new bars. Bar times
are bar open times aligned to the timeframe, UTC epoch seconds.
"""

from __future__ import annotations

import bisect

Bar = list  # [time, open, high, low, close, tick_volume, spread, real_volume]

_MAX_M1_BARS = 200_000
_TRIM_CHUNK = 20_000


class BarSeries:
    """M1 bars of one symbol (the last one still forming) and their aggregates."""

    def __init__(self) -> None:
        self.m1: list[Bar] = []
        self._agg: dict[int, tuple[list[Bar], int]] = {}  # seconds -> (bars, m1 consumed)

    def add_tick(self, t: float, bid: float, spread: int, volume: int = 1) -> None:
        """Fold a tick at time t into the forming M1 bar (opening a new one if needed);
        ``volume`` is its tick volume (a recorded bar's is shared out over its ticks)."""
        minute = int(t) // 60 * 60
        m1 = self.m1
        if m1 and m1[-1][0] == minute:
            bar = m1[-1]
            if bid > bar[2]:
                bar[2] = bid
            if bid < bar[3]:
                bar[3] = bid
            bar[4] = bid
            bar[5] += volume
            if spread < bar[6]:
                bar[6] = spread
            return
        if m1 and m1[-1][0] > minute:
            return  # out-of-order tick; never happens with a monotonic clock
        m1.append([minute, bid, bid, bid, bid, volume, spread, 0])
        # trimmed in chunks: trimming one bar per minute would rebuild every aggregate from
        # all the M1 bars at each query (a year of replayed history is 300,000 of them)
        if len(m1) > _MAX_M1_BARS + _TRIM_CHUNK:
            del m1[: len(m1) - _MAX_M1_BARS]
            self._agg.clear()

    def prepend(self, bars: list[Bar]) -> None:
        """Insert older history bars before the live ones."""
        if not bars:
            return
        first_live = self.m1[0][0] if self.m1 else None
        older = [b for b in bars if first_live is None or b[0] < first_live]
        self.m1[:0] = older
        self._agg.clear()

    def _completed(self, seconds: int) -> list[Bar]:
        """Aggregated bars built from all completed M1 bars (last may be partial)."""
        bars, consumed = self._agg.get(seconds, ([], 0))
        upto = len(self.m1) - 1  # the last M1 bar is still forming
        for src in self.m1[consumed:upto]:
            bucket = src[0] - src[0] % seconds
            if bars and bars[-1][0] == bucket:
                _merge(bars[-1], src)
            else:
                bars.append([bucket, *src[1:]])
        self._agg[seconds] = (bars, max(consumed, upto))
        return bars

    def tail(self, seconds: int, count: int) -> list[Bar]:
        """The last `count` bars of a timeframe (forming bar included), oldest first."""
        if not self.m1 or count <= 0:
            return []
        if seconds == 60:
            return [list(b) for b in self.m1[-count:]]
        done = self._completed(seconds)
        forming = self.m1[-1]
        bucket = forming[0] - forming[0] % seconds
        if done and done[-1][0] == bucket:
            last = list(done[-1])
            _merge(last, forming)
            out = [list(b) for b in done[-count:-1]] if count > 1 else []
            out.append(last)
            return out
        out = [list(b) for b in done[-(count - 1):]] if count > 1 else []
        out.append([bucket, *forming[1:]])
        return out

    def all(self, seconds: int) -> list[Bar]:
        """Every bar of a timeframe, oldest first."""
        return self.tail(seconds, len(self.m1))

    def count(self, seconds: int) -> int:
        """Number of bars available for a timeframe."""
        if seconds == 60:
            return len(self.m1)
        return len(self.all(seconds))

    def window(self, seconds: int, t_from: int, t_to: int) -> list[Bar]:
        """Bars with t_from <= time <= t_to, oldest first."""
        bars = self.all(seconds)
        times = [b[0] for b in bars]
        return bars[bisect.bisect_left(times, t_from) : bisect.bisect_right(times, t_to)]

    def before(self, seconds: int, t: int, count: int) -> list[Bar]:
        """The last `count` bars with time <= t, oldest first."""
        bars = self.all(seconds)
        times = [b[0] for b in bars]
        end = bisect.bisect_right(times, t)
        return bars[max(0, end - count) : end]


def _merge(into: Bar, src: Bar) -> None:
    if src[2] > into[2]:
        into[2] = src[2]
    if src[3] < into[3]:
        into[3] = src[3]
    into[4] = src[4]
    into[5] += src[5]
    if src[6] < into[6]:
        into[6] = src[6]
    into[7] += src[7]
