"""``python -m bench replay [--quick] [--bars N] [--trades N] [--json PATH]``: replay speed.

Issue 16's target: one year of M5 bars for one symbol (~75,000 bars) with 100 trades replays
in <= 60 s on this machine. The history is a seeded random walk written as a CSV (weekends
left out, as a broker's export has them), the trades are spread evenly over it (alternately
BUY and SELL at the bar's open price, SL 25 pips, TP 2 R), and the whole ``dtms replay``
path runs: the reader, the engine on the virtual clock, the report (no pictures).

Baseline: the pure policy alone on the same bars -- for every M5 bar close of the history, the
market signals on its last ``market.bars`` M5 and M15 bars and the score of each direction
(what the market actor computes per bar close), with no actors, no terminal, no store.

Columns: bars in the history, trades, wall seconds, bars replayed per second (history bars /
wall seconds), the pure policy's bars per second, the ratio (DTMS / policy), and the bar
closes the engine actually scored (while trades were open; the idle stretches between trades
are skipped) with their rate -- the engine's own pace against the policy's.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dtms.brokers.sim.history import read_history
from dtms.config import Settings
from dtms.model import Direction
from dtms.policy.signals import Bars, market_signals, trade_score
from dtms.replay.engine import replay
from dtms.replay.report import build_report
from dtms.replay.trades import read_trades

START = 1_704_067_200 + 86_400   # Tuesday 2024-01-02 00:00 UTC
YEAR_BARS = 75_000
TARGET_S = 60.0


@dataclass
class Row:
    bars: int
    trades: int
    wall_s: float
    rate: float           # history bars / wall second
    policy_rate: float    # pure policy bars / second
    scored: int           # bar closes the engine scored (while trades were open)
    pnl_with: float
    pnl_without: float

    @property
    def ratio(self) -> float:
        return self.rate / self.policy_rate if self.policy_rate else 0.0

    @property
    def scored_rate(self) -> float:
        """Scored bars per wall second: the engine's own pace where it works."""
        return self.scored / self.wall_s if self.wall_s else 0.0


def write_inputs(directory: Path, bars: int, trades: int, seed: int = 16) -> tuple[Path, Path]:
    """A seeded M5 random walk (EURUSD-like, weekends skipped) and evenly spread trades."""
    rng = random.Random(seed)
    history, book = directory / "EURUSD_M5.csv", directory / "trades.csv"
    rows, t, p = [], START, 1.08500
    while len(rows) < bars:
        if (t // 86_400 + 4) % 7 in (5, 6):   # Saturday, Sunday
            t += 86_400
            continue
        o = p
        c = round(o * math.exp(rng.gauss(0.0, 0.0006)), 5)
        h = round(max(o, c) * math.exp(abs(rng.gauss(0.0, 0.0003))), 5)
        low = round(min(o, c) * math.exp(-abs(rng.gauss(0.0, 0.0003))), 5)
        rows.append((t, o, h, low, c, rng.randint(50, 400)))
        p, t = c, t + 300
    with history.open("w") as f:
        f.write("time,open,high,low,close,volume,spread\n")
        f.writelines(f"{r[0]},{r[1]:.5f},{r[2]:.5f},{r[3]:.5f},{r[4]:.5f},{r[5]},12\n"
                     for r in rows)
    gap = max(1, (bars - 400) // max(1, trades))
    with book.open("w") as f:
        f.write("ticket,symbol,direction,open_time,open_price,volume,sl,tp\n")
        for i in range(trades):
            bar = rows[300 + i * gap]
            buy = i % 2 == 0
            price = round(bar[1] + (0.00012 if buy else 0.0), 5)
            sign = 1 if buy else -1
            sl, tp = round(price - sign * 0.0025, 5), round(price + sign * 0.0050, 5)
            f.write(f"{1000 + i},EURUSD,{'BUY' if buy else 'SELL'},{bar[0] + 20},{price:.5f},"
                    f"0.10,{sl:.5f},{tp:.5f}\n")
    return history, book


def _m15(m5: list[tuple]) -> list[tuple]:
    out: list[list] = []
    for t, o, h, low, c, v in m5:
        bucket = t - t % 900
        if out and out[-1][0] == bucket:
            last = out[-1]
            last[2], last[3], last[4], last[5] = max(last[2], h), min(last[3], low), c, last[5] + v
        else:
            out.append([bucket, o, h, low, c, v])
    return [tuple(b) for b in out]


def policy_rate(history: Path, settings: Settings, limit: int) -> float:
    """Bars per second of the pure policy: signals and both scores at each M5 close."""
    bars = [(int(b[0]), b[1], b[2], b[3], b[4], int(b[5])) for b in read_history(history).bars]
    n = settings.market.bars
    m15_all = _m15(bars)
    m15_times = [b[0] for b in m15_all]
    started = time.perf_counter()
    done = 0
    for i in range(n, min(len(bars), n + limit)):
        m5 = bars[i - n:i]
        j = bisect.bisect_right(m15_times, m5[-1][0] - 600)   # closed M15 bars only
        signals = market_signals(Bars.from_rows(m5), Bars.from_rows(m15_all[max(0, j - n):j]),
                                 symbol="EURUSD", settings=settings.signals)
        for d in Direction:
            trade_score(signals, d)
        done += 1
    return done / (time.perf_counter() - started)


def run_bench(bars: int, trades: int, policy_bars: int = 3000) -> Row:
    settings = Settings()
    logger = logging.getLogger("dtms")
    level = logger.level
    logger.setLevel(logging.ERROR)   # as `dtms replay`: no warning per weekend gap
    try:
        return _run(settings, bars, trades, policy_bars)
    finally:
        logger.setLevel(level)


def _run(settings: Settings, bars: int, trades: int, policy_bars: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="dtms-bench-replay-") as tmp:
        history_path, trades_path = write_inputs(Path(tmp), bars, trades)
        started = time.perf_counter()
        history = read_history(history_path)
        raw = replay({"EURUSD": history}, read_trades(trades_path), settings)
        report = build_report(raw)
        wall = time.perf_counter() - started
        baseline = policy_rate(history_path, settings, policy_bars)
    return Row(bars, trades, round(wall, 2), bars / wall, baseline, raw.scored_bars,
               report["totals"]["with"]["pnl"], report["totals"]["without"]["pnl"])


def summary_row(row: Row, verdict: Callable[[bool, bool], str]) -> tuple[str, ...]:
    """The row of ``python -m bench all``'s summary table."""
    return (f"replay: {row.bars:,} M5 bars, {row.trades} trades", "<= 60 s (75,000 bars, 100)",
            f"{row.wall_s:.1f} s ({row.rate:,.0f} bars/s)",
            f"policy alone {row.policy_rate:,.0f} bars/s (engine scored {row.scored:,} bars, "
            f"{row.scored_rate:,.0f}/s)", f"{row.ratio:.2f}x policy",
            verdict(row.wall_s <= TARGET_S, row.bars >= YEAR_BARS and row.trades >= 100))


def to_json(row: Row) -> dict[str, Any]:
    return {**asdict(row), "ratio": row.ratio, "scored_rate": row.scored_rate}


def format_table(row: Row) -> str:
    return "\n".join([
        f"{'bars':>8} {'trades':>6} {'wall s':>8} {'bars/s':>9} {'policy bars/s':>14} "
        f"{'ratio':>6} {'scored':>7} {'scored/s':>9}  target",
        f"{row.bars:>8,} {row.trades:>6} {row.wall_s:>8.1f} {row.rate:>9,.0f} "
        f"{row.policy_rate:>14,.0f} {row.ratio:>6.2f} {row.scored:>7,} "
        f"{row.scored_rate:>9,.0f}  <= {TARGET_S:.0f} s for {YEAR_BARS:,} bars / 100 trades"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench replay",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5,000 bars and 10 trades")
    p.add_argument("--bars", type=int, help=f"history bars (default {YEAR_BARS:,})")
    p.add_argument("--trades", type=int, help="trades (default 100)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = p.parse_args(argv)
    bars = args.bars or (5_000 if args.quick else YEAR_BARS)
    trades = args.trades or (10 if args.quick else 100)
    row = run_bench(bars, trades, policy_bars=500 if args.quick else 3000)
    print(format_table(row))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(row), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
