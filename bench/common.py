"""What the benchmarks share: the count/reps command line, the median run, stopping a child."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Sequence
from typing import TypeVar

R = TypeVar("R")


def count_reps_args(argv: list[str] | None, *, prog: str, doc: str | None, what: str,
                    quick: tuple[int, int], default: tuple[int, int]) -> argparse.Namespace:
    """``[--quick] [--count N] [--reps N] [--json PATH]``; ``count`` and ``reps`` resolved
    from ``quick`` or ``default`` (count, reps) unless given."""
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"{quick[0]} {what} per configuration, {quick[1]} repetition")
    p.add_argument("--count", type=int, help=f"{what} per configuration")
    p.add_argument("--reps", type=int, help="repetitions per configuration (median quoted)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = p.parse_args(argv)
    args.count = args.count or (quick if args.quick else default)[0]
    args.reps = args.reps or (quick if args.quick else default)[1]
    if args.count < 1 or args.reps < 1:
        p.error("--count and --reps must be >= 1")
    return args


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def median_run(runs: Sequence[R]) -> R:
    """The run with the median ``rate`` (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]  # type: ignore[attr-defined]
