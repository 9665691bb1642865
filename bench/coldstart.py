"""Cold-start benchmark: seconds from process start to ready with 10,000 and 100,000 stored trades.

For every ``stored`` in (0, 10,000, 100,000) -- 0 is the baseline, the fixed cost of a start,
measured in the same run -- it

1. builds, once, the state a restart finds: ``stored`` open positions in an embedded SimTerminal
   (ManualClock, seed 7: prices never move and tickets are deterministic; 0.01 lot over EURUSD,
   GBPUSD, USDJPY, XAUUSD, BUY and SELL, exactly as ``bench.registration`` opens them) and a
   SQLite file with one HEALTHY trade row per position plus its "registered" transition, written
   directly with ``sqlite3`` on the store's own schema (``dtms.actors.store.migrate``) and row
   encoding (``_UPSERT``), every field matching the position so nothing needs adopting;
2. per repetition, copies that file and starts a **fresh DTMS process**
   (``python -m bench.coldstart --serve``), which opens the same positions in its own embedded
   SimTerminal (checked against the expected tickets), then runs ``Service`` on ephemeral ports
   with the copied file, ``store.synchronous = FULL``, ``service.startup_timeout_s`` raised to
   3600 s (so a slow start is measured, not killed) and every other setting at its default,
   logging JSON at INFO to a file as ``dtms serve`` would;
3. polls ``health`` over the rpc port (``dtms.client.Client``, every 20 ms) until
   ``ready: true`` -- store open, every stored open trade reloaded with a running trade actor,
   and a position poll completed after that -- then reads the process's peak RSS (``VmHWM`` in
   ``/proc/<pid>/status``) and terminates it.

``seconds`` = ready as seen by the poller - ``Popen`` - the child's position setup (opening the
positions in the sim stands in for a terminal that already holds them, so it is not DTMS's
cost). It does include the interpreter start and the imports. ``recover s`` is the same clock
up to the moment the registry reported every stored trade reloaded (the rest up to ``seconds``
is waiting for the next position poll and the poller's granularity). ``RSS MiB`` is the peak
of the whole process, sim included; ``sim MiB`` is its RSS once the sim is set up, before DTMS
starts.

Repetitions run round-robin over the sizes; median and max are quoted. The issue tracker's
target -- 100,000 stored trades ready in <= 10 s -- is printed with pass/fail; nothing asserts it.

Example::

    python -m bench coldstart --quick
    python -m bench coldstart --json /tmp/coldstart.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench.common import terminate
from bench.registration import _write_atomic, open_positions

QUICK_SIZES, DEFAULT_SIZES = (1_000, 10_000), (10_000, 100_000)
QUICK_REPS, DEFAULT_REPS = 1, 3
TARGET_STORED, TARGET_S = 100_000, 10.0
DEFAULT_STARTUP_TIMEOUT_S = 60.0  # service.startup_timeout_s as shipped
BENCH_STARTUP_TIMEOUT_S = 3600.0  # what the bench process runs with
WAIT_LIMIT_S = 1800.0  # the poller gives up (an error, not a data point) after this
POLL_S = 0.02
SIM_SEED = 7


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Run:
    """One cold start of a DTMS process with ``stored`` open trades in its database."""

    stored: int
    seconds: float      # Popen -> health ready, minus the sim's position setup
    recovered_s: float  # Popen -> registry recovered, minus the same setup
    setup_s: float      # opening the positions in the embedded sim (excluded above)
    rss_mib: float      # VmHWM at ready
    sim_mib: float      # VmRSS after the sim setup, before DTMS started


@dataclass(frozen=True, slots=True)
class Row:
    stored: int
    median_s: float
    max_s: float
    recovered_s: float  # median
    rss_mib: float      # max over the runs
    sim_mib: float      # max over the runs
    versus_empty: float
    runs: list[Run] = field(default_factory=list)


# --------------------------------------------------------------------------- setup


def make_sim(stored: int) -> tuple[Any, int]:
    """A SimTerminal with ``stored`` freshly opened positions, and the sum of their tickets
    (deterministic: the same for every sim made with the same ``stored``)."""
    from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal

    sim = SimTerminal(SimConfig(seed=SIM_SEED, balance=1e12), clock=ManualClock())
    return sim, sum(p["ticket"] for p in open_positions(sim, stored))


def expected_positions(stored: int) -> list[Any]:
    """The positions the DTMS process will open, read back through the terminal API."""
    if not stored:
        return []
    sim, _ = make_sim(stored)
    if not sim.initialize():
        raise RuntimeError(f"sim initialize failed: {sim.last_error()}")
    positions = list(sim.positions_get())
    sim.shutdown()
    return positions


async def _migrate(path: Path) -> None:
    import aiosqlite

    from dtms.actors.schema import migrate

    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await migrate(db)


def build_db(path: Path, positions: list[Any]) -> None:
    """A store file holding one HEALTHY trade (and its transition) per position."""
    from dtms.actors.store import _UPSERT, _trade_params
    from dtms.model import Direction, Trade, TradeState

    anyio.run(_migrate, path)
    now = time.time()
    rows, transitions = [], []
    for p in positions:
        trade = Trade(ticket=p.ticket, symbol=p.symbol,
                      direction=Direction.BUY if p.type == 0 else Direction.SELL,
                      entry_price=p.price_open, volume=p.volume, initial_volume=p.volume,
                      sl=p.sl, tp=p.tp, initial_sl=p.sl, state=TradeState.HEALTHY,
                      state_since=now, strategy_type="bench", owner="bench", magic=p.magic,
                      comment=p.comment, created_at=now, updated_at=now,
                      opened_at=float(p.time))
        rows.append(_trade_params(trade))
        transitions.append((p.ticket, now, "", "HEALTHY", "registered"))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_UPSERT, rows)
        db.executemany("INSERT INTO transitions (ticket, at, from_state, to_state, reason) "
                       "VALUES (?, ?, ?, ?, ?)", transitions)
        db.execute("COMMIT")
    finally:
        db.close()


def prepare(stored: int, path: Path) -> tuple[Path, int]:
    """Build the store file for ``stored`` trades; returns it and the sum of their tickets."""
    positions = expected_positions(stored)
    build_db(path, positions)
    return path, sum(p.ticket for p in positions)


def _status_kib(pid: int | str, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return 0.0


# --------------------------------------------------------------------------- server side


async def serve_dtms(stored: int, expect: int, db_path: str, out_path: str) -> None:
    """Open ``stored`` positions, start DTMS on ``db_path``; report ports, then readiness."""
    from dtms import logs
    from dtms.config import Settings
    from dtms.service import Service

    logs.setup("INFO", "json")
    setup_started = time.monotonic()
    sim, tickets = make_sim(stored)
    setup_s = time.monotonic() - setup_started
    if tickets != expect:
        raise RuntimeError(f"sim tickets sum to {tickets}, the database expects {expect}")
    sim_mib = _status_kib("self", "VmRSS") / 1024
    settings = Settings().replace(rpc={"port": 0}, metrics={"port": 0},
                                  store={"path": db_path, "synchronous": "FULL"},
                                  service={"startup_timeout_s": BENCH_STARTUP_TIMEOUT_S})
    service = Service(settings, module=sim)
    report: dict[str, Any] = {"setup_s": setup_s, "sim_mib": sim_mib}
    async with anyio.create_task_group() as tg:
        # not ``tg.start``: Service.run reports started only once the whole tree has started,
        # i.e. after the registry's recovery; the rpc port answers ``health`` long before that
        tg.start_soon(service.run)
        while not (service.rpc.port and service.metrics_server.port):
            await anyio.sleep(0.005)
        report.update(port=service.rpc.port, metrics_port=service.metrics_server.port)
        _write_atomic(out_path, report)
        while not service.registry.recovered:
            await anyio.sleep(0.01)
        report["recovered_at"] = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
        await service.ready_event.wait()
        report["ready_at"] = time.monotonic()
        _write_atomic(out_path, report)
        await anyio.sleep_forever()


# --------------------------------------------------------------------------- measuring


async def _wait_ready(port: int, deadline: float) -> float:
    """Poll ``health`` until ready; returns time.monotonic() at the first ready answer."""
    with anyio.fail_after(max(1.0, deadline - time.monotonic())):
        return await _poll_health(port)


async def _poll_health(port: int) -> float:
    from dtms.client import Client

    async with Client("127.0.0.1", port, timeout=60.0, retries=1, breaker_failures=2**31,
                      verify=False) as client:
        while True:
            health = await client.call("health")
            if health.get("ready"):
                return time.monotonic()
            await anyio.sleep(POLL_S)


def start_once(stored: int, expect: int, db_path: Path, workdir: Path, name: str) -> Run:
    out = workdir / f"{name}.json"
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        spawned = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "bench.coldstart", "--serve",
                                 "--count", str(stored), "--expect", str(expect),
                                 "--db", str(db_path), "--out", str(out)],
                                stdout=log_file, stderr=log_file,
                                cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = spawned + WAIT_LIMIT_S
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"DTMS ({stored} stored) did not start "
                                   f"(exit {proc.poll()}): {tail}")
            time.sleep(0.005)
        port = json.loads(out.read_text())["port"]
        ready_at = anyio.run(_wait_ready, port, deadline)
        rss_mib = _status_kib(proc.pid, "VmHWM") / 1024
        report: dict[str, Any] = {}
        for _ in range(500):  # the child writes its own timeline right after ready
            report = json.loads(out.read_text())
            if "ready_at" in report:
                break
            time.sleep(0.01)
    finally:
        terminate(proc)
    setup_s = report["setup_s"]
    recovered = report.get("recovered_at", ready_at)
    return Run(stored, ready_at - spawned - setup_s, recovered - spawned - setup_s, setup_s,
               rss_mib, report["sim_mib"])


def run_bench(sizes: tuple[int, ...], reps: int, *, progress: bool = True) -> list[Row]:
    sizes = (0, *[s for s in sizes if s])
    runs: dict[int, list[Run]] = {s: [] for s in sizes}
    with tempfile.TemporaryDirectory(prefix="dtms-bench-coldstart-") as tmp:
        work = Path(tmp)
        bases: dict[int, tuple[Path, int]] = {}
        for stored in sizes:
            started = time.monotonic()
            bases[stored] = prepare(stored, work / f"base-{stored}.sqlite3")
            if progress:
                print(f"  built {stored:,} stored trades in {time.monotonic() - started:.1f} s",
                      file=sys.stderr, flush=True)
        for rep in range(reps):
            for stored in sizes:
                base, expect = bases[stored]
                db_path = work / f"run-{stored}-{rep}.sqlite3"
                shutil.copyfile(base, db_path)  # a fresh copy: every start finds the same file
                run = start_once(stored, expect, db_path, work, f"dtms-{stored}-{rep}")
                runs[stored].append(run)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db_path}{suffix}").unlink(missing_ok=True)
                if progress:
                    print(f"  {stored:>7,} stored rep {rep + 1}/{reps}: ready in "
                          f"{run.seconds:.2f} s (recovered {run.recovered_s:.2f} s, "
                          f"sim setup {run.setup_s:.2f} s excluded), peak RSS "
                          f"{run.rss_mib:.0f} MiB", file=sys.stderr, flush=True)
    empty = statistics.median(r.seconds for r in runs[0])
    return [Row(stored, statistics.median(r.seconds for r in rs), max(r.seconds for r in rs),
                statistics.median(r.recovered_s for r in rs), max(r.rss_mib for r in rs),
                max(r.sim_mib for r in rs),
                statistics.median(r.seconds for r in rs) / empty if empty > 0 else 0.0, rs)
            for stored, rs in runs.items()]


# --------------------------------------------------------------------------- output


COLUMNS = (("stored trades", 13), ("median s", 8), ("max s", 7), ("vs empty", 8),
           ("recover s", 9), ("RSS MiB", 7), ("sim MiB", 7), ("target", 6))


def verdict(row: Row) -> str:
    if row.stored != TARGET_STORED:
        return "-"
    return "PASS" if row.max_s <= TARGET_S else "FAIL"


def format_table(rows: list[Row], *, reps: int) -> str:
    head = (f"DTMS cold-start bench  {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}  store.synchronous=FULL  "
            f"startup_timeout_s={BENCH_STARTUP_TIMEOUT_S:.0f}  median of {reps}")
    lines = [head, "  ".join(f"{name:>{w}}" for name, w in COLUMNS)]
    for r in rows:
        cells = (f"{r.stored:,}", f"{r.median_s:.2f}", f"{r.max_s:.2f}", f"{r.versus_empty:.1f}",
                 f"{r.recovered_s:.2f}", f"{r.rss_mib:.0f}", f"{r.sim_mib:.0f}", verdict(r))
        lines.append("  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    target = next((r for r in rows if r.stored == TARGET_STORED), None)
    lines.append(f"target: {TARGET_STORED:,} stored trades ready in <= {TARGET_S:.0f} s (max of "
                 f"the runs): " + (f"{verdict(target)} ({target.max_s:.2f} s)" if target
                                   else "not measured in this run"))
    slow = [r for r in rows if r.max_s > DEFAULT_STARTUP_TIMEOUT_S]
    for r in slow:
        lines.append(f"note: {r.stored:,} stored trades took up to {r.max_s:.0f} s, over the "
                     f"default service.startup_timeout_s ({DEFAULT_STARTUP_TIMEOUT_S:.0f} s): "
                     "with default settings `dtms serve` would exit 3 (StartupTimeout)")
    return "\n".join(lines)


def to_json(rows: list[Row], *, reps: int) -> dict[str, Any]:
    return {"bench": "coldstart", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "synchronous": "FULL", "reps": reps, "target": {"stored": TARGET_STORED,
                                                            "seconds": TARGET_S},
            "rows": [{**{k: v for k, v in asdict(r).items() if k != "runs"},
                      "target": verdict(r), "runs": [asdict(x) for x in r.runs]} for r in rows]}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench coldstart [--quick] [--sizes N,N] [--reps N] [--json PATH]``."""
    p = argparse.ArgumentParser(prog="python -m bench coldstart", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"sizes {QUICK_SIZES[0]:,} and {QUICK_SIZES[1]:,}, {QUICK_REPS} "
                        "repetition")
    p.add_argument("--sizes", help="comma-separated stored-trade counts (0 is always measured)")
    p.add_argument("--reps", type=int, help="repetitions per size (median and max quoted)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = p.parse_args(argv)
    try:
        sizes = (tuple(int(s) for s in args.sizes.split(",") if s.strip()) if args.sizes
                 else QUICK_SIZES if args.quick else DEFAULT_SIZES)
    except ValueError:
        p.error("--sizes must be comma-separated integers")
    reps = args.reps or (QUICK_REPS if args.quick else DEFAULT_REPS)
    if reps < 1 or any(s < 0 for s in sizes):
        p.error("--reps must be >= 1 and --sizes >= 0")
    rows = run_bench(sizes, reps)
    print(format_table(rows, reps=reps), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rows, reps=reps), indent=2))
    return 0


def _server_main(argv: list[str]) -> int:
    """The child process: ``--serve --count N --expect SUM --db PATH --out F``."""
    p = argparse.ArgumentParser(prog="python -m bench.coldstart")
    p.add_argument("--serve", action="store_true", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--expect", type=int, required=True, help="sum of the expected tickets")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve_dtms, args.count, args.expect, args.db, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(_server_main(sys.argv[1:]) if "--serve" in sys.argv[1:] else main(sys.argv[1:]))
