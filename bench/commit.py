"""Commit benchmark: durable registrations/s with group commit against one commit per registration.

The store actor is measured directly, in this process (no TCP, no registry: that is the
registration benchmark's job). For every ``writers`` in (1, 16, 64, 256) it

1. starts a :class:`~dtms.actors.store.StoreActor` on a fresh SQLite file in a temp directory
   (``store.synchronous = FULL``, WAL, every other setting at its default) and runs ``writers``
   tasks on one event loop, each doing ``await store.ask(PutTrade(trade, transition))`` for
   distinct, freshly built trades (the registry's write: one trade row + its "registered"
   transition) until ``count`` writes are acknowledged -- an ask returns once its row is durable;
2. does it twice: ``group``, the store as shipped (``store.max_batch`` = 512: it drains whatever
   writes are queued into one ``BEGIN IMMEDIATE ... COMMIT``), and ``single``, the same actor with
   ``max_batch = 1`` (one commit per registration);
3. reads the mean batch size from the store's own ``dtms_store_batch_size`` histogram
   (sum / count over the measured writes).

The **raw** row is the floor of the disk: the same two statements per registration through a
plain ``sqlite3`` connection (WAL, ``synchronous = FULL``) in a loop, one ``BEGIN IMMEDIATE ...
COMMIT`` each, on the same file system -- what one fsync'd commit costs here without the actor,
the event loop or aiosqlite's thread hand-offs.

Every configuration is measured ``reps`` times (group, single, raw alternating) and the run with
the median rate is quoted. Latency is per ask (per commit for raw), send to durable reply.

Example::

    python -m bench commit --quick
    python -m bench commit --json /tmp/commit.json
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench.common import count_reps_args, median_run
from bench.registration import percentile

WRITERS = (1, 16, 64, 256)
MODES = ("group", "single")
QUICK_COUNT, DEFAULT_COUNT = 1_000, 5_000
QUICK_REPS, DEFAULT_REPS = 1, 3
SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
ASK_TIMEOUT_S = 120.0  # generous: a slow commit is a data point


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Run:
    """One pass of ``count`` durable writes: mode "group", "single" or "raw"."""

    mode: str
    writers: int
    count: int
    seconds: float
    p50_ms: float
    p99_ms: float
    batch: float  # mean writes per commit

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: the median-rate run of a (mode, writers) and every run of it."""

    mode: str
    writers: int
    run: Run
    versus: float  # rate / the single-commit rate with the same writers (raw: with 1 writer)
    runs: list[Run] = field(default_factory=list)


# --------------------------------------------------------------------------- measuring


def make_writes(count: int, first_ticket: int = 60_000_001) -> list[Any]:
    """``count`` PutTrade messages for distinct trades, as the registry writes them."""
    from dtms.actors.store import PutTrade
    from dtms.model import Direction, Trade, TradeState, Transition

    now = time.time()
    out = []
    for i in range(count):
        ticket = first_ticket + i
        trade = Trade(ticket=ticket, symbol=SYMBOLS[i % len(SYMBOLS)],
                      direction=(Direction.BUY, Direction.SELL)[i // len(SYMBOLS) % 2],
                      entry_price=1.08512, volume=0.01, initial_volume=0.01, sl=0.0, tp=0.0,
                      initial_sl=0.0, state=TradeState.HEALTHY, state_since=now,
                      strategy_type="bench", owner="bench", magic=4242, comment="bench",
                      created_at=now, updated_at=now, opened_at=now)
        out.append(PutTrade(trade, Transition(ticket, now, "", "HEALTHY", "registered")))
    return out


def _batch_totals(metrics: Any) -> tuple[float, float]:
    reg = metrics.registry
    return (reg.get_sample_value("dtms_store_batch_size_sum") or 0.0,
            reg.get_sample_value("dtms_store_batch_size_count") or 0.0)


async def store_pass(db_path: Path, writes: list[Any], writers: int, max_batch: int) -> tuple[
        float, list[float], float]:
    """Run ``writes`` through a fresh StoreActor with ``writers`` concurrent askers.

    Returns (seconds, ascending latencies in seconds, mean writes per commit).
    """
    from dtms.actors.store import StoreActor
    from dtms.config import StoreSettings
    from dtms.metrics import Metrics

    metrics = Metrics()
    store = StoreActor(StoreSettings(path=str(db_path), synchronous="FULL", max_batch=max_batch),
                       metrics)
    latencies: list[float] = []

    async def writer(items: Iterator[Any]) -> None:
        for msg in items:  # writers share the iterator: each trade is written exactly once
            started = time.perf_counter()
            await store.ask(msg, timeout=ASK_TIMEOUT_S)
            latencies.append(time.perf_counter() - started)

    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await anyio.sleep(0.05)  # let the periodic archive pass (a write of its own) go first
        sum0, count0 = _batch_totals(metrics)
        items = iter(writes)
        started = time.perf_counter()
        async with anyio.create_task_group() as load:
            for _ in range(min(writers, len(writes))):
                load.start_soon(writer, items)
        seconds = time.perf_counter() - started
        sum1, count1 = _batch_totals(metrics)
        await store.stop()
    latencies.sort()
    batch = (sum1 - sum0) / (count1 - count0) if count1 > count0 else 0.0
    return seconds, latencies, batch


def raw_pass(db_path: Path, writes: list[Any]) -> tuple[float, list[float]]:
    """The same rows through plain sqlite3, one BEGIN IMMEDIATE ... COMMIT per registration."""
    from dtms.actors.schema import MIGRATIONS
    from dtms.actors.store import _UPSERT, _trade_params

    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        for migration in MIGRATIONS:  # the store's schema, indexes included
            db.executescript(migration)
        params = [(_trade_params(w.trade), (w.transition.ticket, w.transition.at,
                                            w.transition.from_state, w.transition.to_state,
                                            w.transition.reason)) for w in writes]
        latencies: list[float] = []
        started = time.perf_counter()
        for trade, transition in params:
            t0 = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute(_UPSERT, trade)
            db.execute("INSERT INTO transitions (ticket, at, from_state, to_state, reason) "
                       "VALUES (?, ?, ?, ?, ?)", transition)
            db.execute("COMMIT")
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
    finally:
        db.close()
    latencies.sort()
    return seconds, latencies


def measure(mode: str, writers: int, writes: list[Any], workdir: Path, name: str) -> Run:
    db_path = workdir / f"{name}.sqlite3"
    if mode == "raw":
        seconds, lat = raw_pass(db_path, writes)
        batch = 1.0
    else:
        seconds, lat, batch = anyio.run(store_pass, db_path, writes, writers,
                                        1 if mode == "single" else _default_max_batch())
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return Run(mode, writers, len(writes), seconds, percentile(lat, 0.50) * 1000,
               percentile(lat, 0.99) * 1000, batch)


def _default_max_batch() -> int:
    from dtms.config import StoreSettings

    return StoreSettings().max_batch


def run_bench(count: int, reps: int, *, writers: tuple[int, ...] = WRITERS,
              progress: bool = True) -> list[Row]:
    runs: dict[tuple[str, int], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="dtms-bench-commit-", dir=_tmp_dir()) as tmp:
        work = Path(tmp)
        for rep in range(reps):
            configs = [("raw", 1)] + [(m, k) for k in writers for m in MODES]
            for mode, k in configs:
                writes = make_writes(count)  # fresh objects: no run profits from another's
                run = measure(mode, k, writes, work, f"{mode}-{k}-{rep}")
                runs.setdefault((mode, k), []).append(run)
                if progress:
                    print(f"  {mode:<6} {k:>3} writers rep {rep + 1}/{reps}: "
                          f"{run.rate:,.0f} writes/s, batch {run.batch:.1f}",
                          file=sys.stderr, flush=True)
    medians = {key: median_run(rs) for key, rs in runs.items()}
    rows = []
    for (mode, k), rs in runs.items():
        single = medians[("single", k if mode != "raw" else min(writers))]
        rate = medians[(mode, k)].rate
        rows.append(Row(mode, k, medians[(mode, k)], rate / single.rate if single.rate else 0.0,
                        rs))
    order = {"raw": 0, "group": 1, "single": 2}
    rows.sort(key=lambda r: (r.mode != "raw", r.writers, order[r.mode]))
    return rows


def _tmp_dir() -> str | None:
    """The temp dir, unless it is a tmpfs (where fsync is free): then /var/tmp."""
    tmp = os.path.realpath(tempfile.gettempdir())
    try:
        mounts = [m.split() for m in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    covering = [m for m in mounts if len(m) > 2
                and (tmp + "/").startswith(m[1].rstrip("/") + "/")]
    if covering and max(covering, key=lambda m: len(m[1]))[2] == "tmpfs":
        return "/var/tmp"
    return None


# --------------------------------------------------------------------------- output


COLUMNS = (("mode", 6), ("writers", 7), ("writes", 6), ("seconds", 7), ("writes/s", 8),
           ("p50 ms", 7), ("p99 ms", 7), ("batch", 6), ("x single", 8))


def format_table(rows: list[Row], *, count: int, reps: int) -> str:
    from dtms.config import StoreSettings

    head = (f"DTMS commit bench  {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}  SQLite {sqlite3.sqlite_version}  WAL  "
            f"synchronous=FULL  max_batch={StoreSettings().max_batch} (group) / 1 (single)  "
            f"{count} writes/config, median of {reps}")
    lines = [head, "  ".join(f"{name:<{w}}" if name == "mode" else f"{name:>{w}}"
                             for name, w in COLUMNS)]
    for row in rows:
        r = row.run
        cells = (row.mode, str(row.writers), str(r.count), f"{r.seconds:.2f}", f"{r.rate:,.0f}",
                 f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.batch:.1f}", f"{row.versus:.2f}")
        lines.append("  ".join(f"{c:<{w}}" if name == "mode" else f"{c:>{w}}"
                               for c, (name, w) in zip(cells, COLUMNS, strict=True)))
    lines.append("x single: writes/s over the single-commit writes/s with the same writers "
                 "(raw: with 1 writer)")
    return "\n".join(lines)


def to_json(rows: list[Row], *, count: int, reps: int) -> dict[str, Any]:
    def run(r: Run) -> dict[str, Any]:
        return {**asdict(r), "rate": r.rate}

    return {"bench": "commit", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "synchronous": "FULL", "count": count,
            "reps": reps,
            "rows": [{"mode": r.mode, "writers": r.writers, "versus_single": r.versus,
                      "median": run(r.run), "runs": [run(x) for x in r.runs]} for r in rows]}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench commit [--quick] [--count N] [--reps N] [--json PATH]``."""
    args = count_reps_args(argv, prog="python -m bench commit", doc=__doc__, what="durable writes",
                           quick=(QUICK_COUNT, QUICK_REPS), default=(DEFAULT_COUNT, DEFAULT_REPS))
    count, reps = args.count, args.reps
    rows = run_bench(count, reps)
    print(format_table(rows, count=count, reps=reps), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rows, count=count, reps=reps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
