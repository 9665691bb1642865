"""``dtms replay``: the command's arguments, its run, the sweep and the progress bar.

This module owns :func:`add_parser` (the subcommand's argparse setup, hooked into
``dtms.cli``) and :func:`run`. One replay writes ``report.json``, the PNGs and ``report.html``
into ``--out`` and prints the per-trade table and the totals. ``--sweep key=v1,v2`` (several
keys make a grid) replays every variant instead, in parallel processes (one per core),
prints one row per variant, best first by ``--rank``, and writes ``sweep.json``. A rich
progress bar on stderr says what runs, how far it is and its ETA (``--quiet``: none).

Exit codes: 0 ok, 2 bad input (a file, a column, a policy key: the message names it and its
bound), 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dtms.brokers.sim.history import History, HistoryError, read_history
from dtms.config import Settings
from dtms.errors import InvalidArgument
from dtms.policy.overrides import resolve_policy
from dtms.replay.trades import RecordedTrade, read_trades

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: --rank metrics: name -> True when larger is better
RANKS = {"pnl": True, "win_rate": True, "avg_r": True, "max_drawdown": False}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    r = sub.add_parser(
        "replay", help="what DTMS would have done with recorded trades, on recorded history",
        description="Replay trades on recorded bars or ticks with the DTMS engine on a virtual "
                    "clock; report each trade with and without DTMS, totals and pictures.")
    r.add_argument("--bars", action="append", required=True, metavar="SYMBOL=FILE",
                   help="history of a symbol: MT5 'Export bars'/'Export ticks' file or CSV "
                        "(time,open,high,low,close[,volume,spread]); M1 or M5; repeatable")
    r.add_argument("--trades", required=True, metavar="FILE",
                   help="CSV: ticket,symbol,direction,open_time,open_price,volume,sl,tp")
    r.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                   help="policy override for every trade (as at registration); repeatable")
    r.add_argument("--out", default="report", help="output directory (default: report/)")
    r.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="compare values of a policy key; several keys make a grid")
    r.add_argument("--rank", default="pnl", choices=sorted(RANKS),
                   help="sweep ranking, best first (default: pnl with DTMS)")
    r.add_argument("--spread", action="append", default=[], metavar="SYMBOL=POINTS",
                   help="spread for bars without one (default: the symbol's)")
    r.add_argument("--workers", type=int, default=0,
                   help="sweep processes (default: one per core)")
    r.add_argument("--no-pictures", action="store_true", help="report.json and the table only")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return r


def parse_value(text: str) -> Any:
    """A policy value from the command line: JSON (numbers, true, [1.5, 2.5]) or a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_values(text: str) -> list[str]:
    """``0.5,1.0,[1,2]`` -> ['0.5', '1.0', '[1,2]']: commas inside brackets belong to a list."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out if v.strip()]


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InvalidArgument(f"{flag} {item!r}: expected KEY=VALUE", field=flag)
        pairs.append((key.strip(), value.strip()))
    return pairs


def variants(base: dict[str, Any], sweep: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every combination of the swept values on top of ``base`` (keys in the order given)."""
    keys = [k for k, _ in sweep]
    values = [[parse_value(v) for v in split_values(text)] for _, text in sweep]
    return [{**base, **dict(zip(keys, combo, strict=True))}
            for combo in itertools.product(*values)]


def load_inputs(args: argparse.Namespace) -> tuple[dict[str, History], list[RecordedTrade],
                                                   dict[str, int]]:
    histories: dict[str, History] = {}
    for symbol, path in _pairs(args.bars, "--bars"):
        histories[symbol.upper()] = read_history(path)
    spread = {}
    for symbol, points in _pairs(args.spread, "--spread"):
        try:
            spread[symbol.upper()] = int(points)
        except ValueError:
            raise InvalidArgument(f"--spread {symbol}={points}: points must be an integer >= 0",
                                  field="--spread") from None
        if spread[symbol.upper()] < 0:
            raise InvalidArgument(f"--spread {symbol}={points}: must be >= 0", field="--spread")
        if symbol.upper() not in histories:
            raise InvalidArgument(f"--spread {symbol}={points}: no --bars for {symbol}",
                                  field="--spread")
    return histories, read_trades(args.trades), spread


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Any]:
    """A rich Progress on stderr (None when quiet or rich is missing)."""
    if quiet:
        yield None
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
    except ImportError:   # the replay extra is not installed: no bar
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        yield bar


def _replay_once(histories: dict[str, History], trades: list[RecordedTrade], settings: Settings,
                 policy: dict[str, Any], spread: dict[str, int],
                 progress: Callable[[float, float, int], None] | None = None) -> Any:
    from dtms.replay.engine import replay
    from dtms.replay.report import build_report
    raw = replay(histories, trades, settings, policy=policy, spread=spread, progress=progress)
    return raw, build_report(raw)


def _variant_job(bars: list[str], trades_path: str, spread: list[str], settings: Settings,
                 policy: dict[str, Any]) -> dict[str, Any]:
    """One sweep variant in its own process: read the files, replay, return the totals."""
    logging.getLogger("dtms").setLevel(logging.ERROR)
    args = argparse.Namespace(bars=bars, trades=trades_path, spread=spread)
    histories, trades, spreads = load_inputs(args)
    _, report = _replay_once(histories, trades, settings, policy, spreads)
    return {"policy": policy, "totals": report["totals"]}


def rank_key(metric: str) -> Callable[[dict[str, Any]], Any]:
    better_high = RANKS[metric]

    def key(row: dict[str, Any]) -> Any:
        value = row["totals"]["with"][metric]
        if value is None:
            return (1, 0.0)
        return (0, -value if better_high else value)
    return key


def run(args: argparse.Namespace, settings: Settings) -> int:
    logger = logging.getLogger("dtms")
    level = logger.level
    logger.setLevel(logging.ERROR)   # the report says what happened, not every gap's warning
    try:
        return _run(args, settings)
    finally:
        logger.setLevel(level)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.workers < 0:
            raise InvalidArgument(f"--workers {args.workers}: must be >= 0 (0: one per core)",
                                  field="--workers")
        policy = dict((k, parse_value(v)) for k, v in _pairs(args.policy, "--policy"))
        sweep = _pairs(args.sweep, "--sweep")
        todo = variants(policy, sweep) if sweep else [policy]
        for p in todo:   # every bad key of every variant, before anything runs
            resolve_policy(settings.policy, p)
        histories, trades, spread = load_inputs(args)
        if not (args.no_pictures or sweep) and importlib.util.find_spec("matplotlib") is None:
            # said before the replay runs, not as a traceback after it
            raise InvalidArgument("the pictures need matplotlib: pip install 'dtms[replay]', "
                                  "or pass --no-pictures", field="--no-pictures")
    except HistoryError as exc:
        print(f"dtms replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidArgument as exc:
        print(f"dtms replay: {json.dumps(exc.to_wire())}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if sweep:
        return _sweep(args, settings, todo, out)
    with progress_bar(args.quiet) as bar:
        task = None
        if bar is not None:
            what = ", ".join(sorted(histories))
            task = bar.add_task(f"replaying {what}, {len(trades)} trades", total=1.0)

        def on_progress(done: float, total: float, opened: int) -> None:
            if bar is not None:
                bar.update(task, completed=done / total if total else 1.0,
                           description=f"replaying {', '.join(sorted(histories))}: "
                                       f"{opened}/{len(trades)} trades opened")
        try:
            raw, report = _replay_once(histories, trades, settings, policy, spread, on_progress)
        except HistoryError as exc:
            print(f"dtms replay: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if bar is not None:   # the replay stops once every trade has closed
            bar.update(task, completed=1.0)
        from dtms.replay.report import table
        text = table(report)
        (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        if not args.no_pictures:
            from dtms.replay.pictures import write_html, write_pictures
            pics = None
            if bar is not None:
                pics = bar.add_task("drawing pictures", total=len(report["trades"]))

            def drawn(done: int, total: int) -> None:
                if bar is not None:
                    bar.update(pics, completed=done)
            paths = write_pictures(report, raw.ticks, out, drawn)
            write_html(report, text, paths, out)
    print(text)
    print(f"report: {out / 'report.json'}" + ("" if args.no_pictures else
                                              f", {out / 'report.html'}"))
    return EXIT_OK


def _sweep(args: argparse.Namespace, settings: Settings, todo: list[dict[str, Any]],
           out: Path) -> int:
    workers = args.workers or os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with progress_bar(args.quiet) as bar, ProcessPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(f"sweep: {len(todo)} variants on {workers} processes",
                            total=len(todo)) if bar is not None else None
        jobs = [pool.submit(_variant_job, args.bars, args.trades, args.spread, settings, p)
                for p in todo]
        for job in as_completed(jobs):
            rows.append(job.result())
            if bar is not None:
                bar.update(task, advance=1)
    rows.sort(key=rank_key(args.rank))
    swept = [k for k, _ in _pairs(args.sweep, "--sweep")]
    (out / "sweep.json").write_text(json.dumps({"rank": args.rank, "swept": swept,
                                                "variants": rows}, indent=1), encoding="utf-8")
    print(f"{'variant':<40} {'pnl':>10} {'win rate':>8} {'avg R':>7} {'max dd':>9}")
    for row in rows:
        s = row["totals"]["with"]
        name = " ".join(f"{k}={json.dumps(row['policy'][k])}" for k in swept)
        avg_r = "-" if s["avg_r"] is None else f"{s['avg_r']:.2f}"
        print(f"{name:<40} {s['pnl']:>10.2f} {s['win_rate']:>8.0%} {avg_r:>7} "
              f"{s['max_drawdown']:>9.2f}")
    w = rows[0]["totals"]["without"] if rows else None
    if w:
        print(f"{'without DTMS':<40} {w['pnl']:>10.2f} {w['win_rate']:>8.0%} "
              f"{'-' if w['avg_r'] is None else format(w['avg_r'], '.2f'):>7} "
              f"{w['max_drawdown']:>9.2f}")
    print(f"sweep: {out / 'sweep.json'}")
    return EXIT_OK
