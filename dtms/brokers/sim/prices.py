"""Deterministic price generation: a seeded, regime-switching random walk per symbol.

This module owns the arithmetic of simulated quotes and nothing else (no
clock, no locking, no trading). PriceStream produces live bids step by step;
generate_history() produces the M1 bars that precede the stream's start.
Both draw from their own ``random.Random`` seeded from (config seed,
zlib.crc32(symbol name)), so the same seed and the same sequence of steps
always give identical prices.

For scripted scenarios a PriceStream can be held (its ticks repeat the last
bid instead of walking), flat_history() gives a history of known constant
bars, and linear_path() builds bid sequences to play.
"""

from __future__ import annotations

import math
import random
import zlib
from enum import IntEnum

from .symbols import SymbolSpec

SECONDS_PER_DAY = 86_400.0
_RANGE_REVERSION_PER_SECOND = 1.0 / 1_800.0  # pull back to the range anchor
_TREND_MOVE_PER_REGIME = 0.25  # a trend moves ~a quarter of a daily vol over its mean lifetime
_VOL_MULTIPLIER = {0: 0.8, 1: 1.2, 2: 1.2}


class Regime(IntEnum):
    """Market regime of a PriceStream; switches as a Markov chain."""

    RANGE = 0
    TREND_UP = 1
    TREND_DOWN = 2


def symbol_rng(seed: int, name: str, purpose: str) -> random.Random:
    """A Random seeded from (seed, crc32(name)) and a purpose tag ('live', 'history')."""
    return random.Random(f"{purpose}:{seed}:{zlib.crc32(name.encode('utf-8'))}")


class _Walk:
    """Log-price random walk with regime switching; shared by live and history."""

    def __init__(self, spec: SymbolSpec, rng: random.Random, regime_mean_seconds: float) -> None:
        self._rng = rng
        self._sigma = spec.daily_vol / math.sqrt(SECONDS_PER_DAY)
        self._drift = spec.daily_vol * _TREND_MOVE_PER_REGIME / regime_mean_seconds
        self._regime_mean = regime_mean_seconds
        self.log_price = math.log(spec.start_bid)
        self.anchor = self.log_price
        self.regime = Regime(rng.randrange(3))

    def step(self, dt: float, direction: float = 1.0) -> None:
        """Move the log price by dt seconds (direction -1 walks back in time)."""
        if dt <= 0:
            return
        rng = self._rng
        if rng.random() < 1.0 - math.exp(-dt / self._regime_mean):
            choices = [r for r in Regime if r != self.regime]
            self.regime = choices[rng.randrange(2)]
            if self.regime == Regime.RANGE:
                self.anchor = self.log_price
        if self.regime == Regime.RANGE:
            pull = min(1.0, _RANGE_REVERSION_PER_SECOND * dt)
            drift = -(self.log_price - self.anchor) * pull
        else:
            sign = 1.0 if self.regime == Regime.TREND_UP else -1.0
            drift = sign * direction * self._drift * dt
        noise = self._sigma * _VOL_MULTIPLIER[self.regime] * math.sqrt(dt) * rng.gauss(0.0, 1.0)
        self.log_price += drift + noise

    def excursion(self, dt: float) -> float:
        """A random non-negative log distance for intrabar highs and lows."""
        return abs(self._rng.gauss(0.0, 1.0)) * self._sigma * math.sqrt(dt) * 0.5


class PriceStream:
    """Live bid/ask of one symbol, advanced one tick at a time."""

    def __init__(
        self,
        spec: SymbolSpec,
        seed: int,
        start_time: float,
        regime_mean_seconds: float = 7_200.0,
        key: str | None = None,
    ) -> None:
        self.spec = spec
        self._walk = _Walk(spec, symbol_rng(seed, key or spec.name, "live"), regime_mean_seconds)
        self.time = float(start_time)
        self.bid = round(spec.start_bid, spec.digits)
        # While held, ticks repeat the last bid and the walk (and its random draws) stands
        # still, so a scripted path is not disturbed and the walk resumes from it on release.
        self.held = False

    @property
    def ask(self) -> float:
        """Bid plus the symbol's spread."""
        return round(self.bid + self.spec.spread * self.spec.point, self.spec.digits)

    @property
    def spread(self) -> int:
        """Spread of the current tick, points."""
        return self.spec.spread

    volume = 1   # ticks per tick, for the bars' tick volume

    def fill_price(self, level: float, price: float, buy: bool) -> float:
        """A stop or target reached on this tick fills at the tick's price (see history.py)."""
        return price

    @property
    def regime(self) -> Regime:
        """The walk's current regime."""
        return self._walk.regime

    def step_to(self, t: float) -> float:
        """Generate the tick at time t (> self.time) and return its bid (the last one if held)."""
        if self.held:
            self.time = t
            return self.bid
        self._walk.step(t - self.time)
        self.time = t
        self.bid = round(math.exp(self._walk.log_price), self.spec.digits)
        return self.bid

    def force(self, t: float, bid: float) -> None:
        """Make the tick at time t have exactly this bid (test control)."""
        self._walk.log_price = math.log(bid)
        self._walk.anchor = self._walk.log_price
        self.time = max(self.time, t)
        self.bid = round(bid, self.spec.digits)


def generate_history(
    spec: SymbolSpec,
    seed: int,
    end_time: float,
    minutes: int,
    regime_mean_seconds: float = 7_200.0,
    key: str | None = None,
) -> list[list[float]]:
    """M1 bars [time, open, high, low, close, tick_volume, spread, real_volume], oldest first.

    The bars cover the ``minutes`` whole minutes before the minute containing
    end_time. The walk runs backwards from spec.start_bid, so the history ends
    where the live PriceStream starts.
    """
    rng = symbol_rng(seed, key or spec.name, "history")
    walk = _Walk(spec, rng, regime_mean_seconds)
    digits = spec.digits
    first_live_minute = int(end_time) // 60 * 60
    bars: list[list[float]] = []
    for i in range(1, minutes + 1):
        close = math.exp(walk.log_price)
        walk.step(60.0, direction=-1.0)
        open_ = math.exp(walk.log_price)
        high = max(open_, close) * math.exp(walk.excursion(60.0))
        low = min(open_, close) * math.exp(-walk.excursion(60.0))
        bars.append(
            [
                first_live_minute - 60 * i,
                round(open_, digits),
                round(high, digits),
                round(low, digits),
                round(close, digits),
                20 + rng.randrange(100),
                spec.spread,
                0,
            ]
        )
    bars.reverse()
    return bars


def flat_history(spec: SymbolSpec, end_time: float, minutes: int,
                 tick_volume: int = 60) -> list[list[float]]:
    """Like generate_history, but every bar is open=high=low=close=start bid, constant volume.

    Indicators over a flat history are known exactly (zero ATR, EMA = the bid, ...), which is
    what scripted scenario tests need.
    """
    bid = round(spec.start_bid, spec.digits)
    first_live_minute = int(end_time) // 60 * 60
    return [
        [first_live_minute - 60 * i, bid, bid, bid, bid, tick_volume, spec.spread, 0]
        for i in range(minutes, 0, -1)
    ]


def linear_path(start: float, end: float, steps: int, digits: int) -> list[float]:
    """`steps` bids moving evenly from start to end, rounded to digits; start excluded, end included.

    Compose scripted paths from these, e.g. rise then flat:
    ``up = linear_path(b, b + 0.002, 20, 5); path = up + [up[-1]] * 10``.
    Raises ValueError if steps < 1.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    span = end - start
    # The last bid is `end` itself, not start + span * steps / steps, to avoid float drift.
    return [round(start + span * i / steps, digits) for i in range(1, steps)] + [round(end, digits)]
