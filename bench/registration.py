"""Registration benchmark: registrations/s and p50/p99 latency over TCP, against a transport floor.

For every configuration -- clients in (1, 16, 64) x mode in (sequential, pipelined) -- it

1. starts a fresh DTMS in its own process (``python -m bench.registration --serve``): an embedded
   SimTerminal on a ManualClock (prices never move) with ``count`` freshly opened positions, a new
   SQLite file with ``store.synchronous = FULL``, every other setting at its default, JSON logs at
   INFO to a file as ``dtms serve`` would write them;
2. registers every position once (each registration a distinct ticket) from this process with a
   lean msgpack-rpc load generator (``load``: raw anyio sockets, replies matched by msgid),
   ``clients`` connections, each keeping 1 (sequential) or 32 (pipelined) requests in flight;
3. sends the same number of the same request frames through the same generator to a bare anyio
   TCP server in its own process (``--echo``) that answers each request at once with a canned
   register reply: the transport floor. ``ratio`` is DTMS's rate over the floor's.

Server and load generator are separate processes so they do not share an event loop (or, on a
2-core machine, a core). A configuration is measured ``reps`` times (DTMS then floor, alternating)
and the repetition with the median DTMS rate is quoted, next to the median-rate floor run.

Example::

    python -m bench registration --quick
    python -m bench registration --json /tmp/registration.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgpack
from anyio.abc import SocketAttribute

from bench.common import count_reps_args, median_run, terminate

CLIENTS = (1, 16, 64)
MODES = {"sequential": 1, "pipelined": 32, "paced": 0}  # requests in flight per connection
PACED = {"paced": 5_000.0}   # open loop: requests sent at this rate, whatever the replies
PACED_CLIENTS = (64,)
HTTP_CONFIGS = {(1, "sequential"), (64, "pipelined")}   # where baseline 1 is measured too
QUICK_COUNT, DEFAULT_COUNT = 2_000, 10_000
QUICK_REPS, DEFAULT_REPS = 1, 3
SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
VOLUME = 0.01  # the minimum lot of every SYMBOLS entry
CALL_TIMEOUT_S = 120.0  # generous: a slow reply is a data point, not a client-side error
STARTUP_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Run:
    """One measured pass of ``count`` registrations against one target ("dtms" or "floor")."""

    target: str
    clients: int
    mode: str
    count: int
    ok: int
    errors: dict[str, int]
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Row:
    """One configuration: the median-rate DTMS run, the median-rate floor run, every run."""

    clients: int
    mode: str
    dtms: Run
    floor: Run
    runs: list[Run] = field(default_factory=list)
    http: Run | None = None   # baseline 1, where measured (HTTP_CONFIGS)

    @property
    def ratio(self) -> float:
        return self.dtms.rate / self.floor.rate if self.floor.rate > 0 else 0.0

    @property
    def versus_http(self) -> float:
        return self.dtms.rate / self.http.rate if self.http and self.http.rate > 0 else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------- server side


def open_positions(sim: Any, n: int) -> list[dict[str, Any]]:
    """Open ``n`` small positions in ``sim``; returns the registration map for each.

    Setup only: SimTerminal checks free margin by summing over every open position, which makes
    opening n positions O(n^2) (10,000 take over a minute). With the huge balance the bench uses
    the check always passes, so it is bypassed while opening and restored afterwards.
    """
    engine = getattr(sim, "_engine", None)
    patched = engine is not None and hasattr(engine, "market")
    if patched:
        engine.check_margin = lambda symbol, volume, price: engine.market.margin(
            symbol, volume, price)
    # each with a stop, as a bot's position has one: a naked one would get DTMS's broker-side
    # floor (issue 15) -- an order per trade -- which is not what these benchmarks measure
    stops = {}
    was_connected = sim.terminal_info() is not None
    if not was_connected and not sim.initialize():
        raise RuntimeError(f"sim initialize failed: {sim.last_error()}")
    for symbol in SYMBOLS:
        info, tick = sim.symbol_info(symbol), sim.symbol_info_tick(symbol)
        away = 500 * info.point
        stops[symbol, "BUY"] = round(tick.bid - away, info.digits)
        stops[symbol, "SELL"] = round(tick.ask + away, info.digits)
    if not was_connected:   # as it was given
        sim.shutdown()
    try:
        out = []
        for i in range(n):
            symbol, direction = SYMBOLS[i % len(SYMBOLS)], ("BUY", "SELL")[i // len(SYMBOLS) % 2]
            ticket = sim.open_position(symbol, direction, VOLUME, sl=stops[symbol, direction],
                                       magic=4242, comment="bench")
            out.append({"ticket": ticket, "symbol": symbol, "direction": direction,
                        "volume": VOLUME, "strategy_type": "bench", "owner": "bench"})
        return out
    finally:
        if patched:
            vars(engine).pop("check_margin", None)


def warm_history(sim: Any) -> None:
    """Setup only: the simulator makes each symbol's bar history on the first request for it
    (~0.3 s a symbol), which a real terminal has already; make it before the clock starts."""
    if not sim.initialize():
        raise RuntimeError(f"sim initialize failed: {sim.last_error()}")
    for symbol in SYMBOLS:
        sim.copy_rates_from_pos(symbol, sim.TIMEFRAME_M5, 1, 10)
    sim.shutdown()


async def serve_dtms(count: int, db_path: str, out_path: str) -> None:
    """Run a DTMS with ``count`` open positions until killed; write port + payloads to out_path."""
    from dtms import logs
    from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
    from dtms.config import Settings
    from dtms.service import Service

    logs.setup("INFO", "json")
    sim = SimTerminal(SimConfig(seed=7, balance=1e12), clock=ManualClock())
    payloads = open_positions(sim, count)
    warm_history(sim)
    settings = Settings().replace(rpc={"port": 0}, metrics={"port": 0},
                                  store={"path": db_path, "synchronous": "FULL"})
    service = Service(settings, module=sim)
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        with anyio.fail_after(STARTUP_TIMEOUT_S):
            await service.ready_event.wait()
        _write_atomic(out_path, {"port": service.rpc.port, "metrics_port": service.metrics_server.port,
                                "payloads": payloads})
        await anyio.sleep_forever()


def canned_reply() -> bytes:
    """A packed ``register`` result shaped like DTMS's (created, full trade view, adjusted)."""
    from dtms.model import Direction, Trade

    now = time.time()
    trade = Trade(ticket=1_000_001, symbol="EURUSD", direction=Direction.BUY, entry_price=1.08512,
                  volume=0.01, initial_volume=0.01, sl=0.0, tp=0.0, initial_sl=0.0,
                  state_since=now, strategy_type="bench", owner="bench", magic=4242,
                  comment="bench", created_at=now, updated_at=now)
    return msgpack.packb({"created": True, "trade": trade.view(), "adjusted": {}},
                         use_bin_type=True)


async def serve_echo(out_path: str) -> None:
    """A bare msgpack-rpc responder: each request gets ``[1, msgid, nil, canned]`` at once."""
    result = canned_reply()

    async def handle(stream: Any) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                async for data in stream:
                    unpacker.feed(data)
                    out = [b"\x94\x01" + msgpack.packb(msg[1]) + b"\xc0" + result
                           for msg in unpacker]
                    if out:
                        await stream.send(b"".join(out))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    _write_atomic(out_path, {"port": port})
    await listener.serve(handle)


def _write_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)


@contextlib.contextmanager
def server_process(args: list[str], workdir: Path, name: str,
                   module: str = "bench.registration") -> Iterator[dict[str, Any]]:
    """Start ``python -m MODULE ARGS --out F``; yield F's JSON once written."""
    out = workdir / f"{name}.json"
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", module, *args,
                                 "--out", str(out)], stdout=log_file, stderr=log_file,
                                cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} server did not start (exit {proc.poll()}): {tail}")
            time.sleep(0.02)
        yield json.loads(out.read_text())
    finally:
        terminate(proc)


# --------------------------------------------------------------------------- load side


async def load(port: int, payloads: list[dict[str, Any]], clients: int, window: int,
               rate: float = 0.0) -> tuple[int, Counter[str], float, list[float]]:
    """Register every payload over ``clients`` connections, ``window`` in flight on each;
    with ``rate`` > 0, open loop instead: request ``n`` goes out at ``n / rate`` seconds
    whatever the replies (no window), so latency is measured at that offered rate.

    A lean msgpack-rpc load generator on raw anyio sockets (the same for DTMS and the floor):
    per connection, requests are written as soon as a slot in the window is free and replies
    are read by msgid, so that the generator -- one Python process -- costs little next to the
    server it measures. ``dtms.client.Client`` adds per call a future, a timeout scope and
    retry bookkeeping: with it the floor itself topped out near 2-8k/s here.

    Returns (ok, errors by code, seconds, ascending latencies in seconds of the ok calls).
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def connection(stream: Any, items: list[dict[str, Any]], first: int) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        sent_at: dict[int, float] = {}
        free = anyio.Semaphore(len(items) if rate > 0 else window)
        done = anyio.Event()
        left = len(items)

        async def reader() -> None:
            nonlocal left
            while left:
                unpacker.feed(await stream.receive(1 << 16))
                for _, msgid, error, _result in unpacker:
                    took = time.perf_counter() - sent_at.pop(msgid)
                    if error is None:
                        latencies.append(took)
                    else:
                        errors[error.get("code", "?") if isinstance(error, dict) else "?"] += 1
                    left -= 1
                    free.release()
            done.set()

        async with stream, anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for msgid, payload in enumerate(items):
                if rate > 0:  # this connection's share of the schedule: first, +clients, ...
                    await anyio.sleep_until(started + (first + msgid * clients) / rate)
                await free.acquire()
                sent_at[msgid] = time.perf_counter()
                await stream.send(msgpack.packb([0, msgid, "register", [payload]]))
            await done.wait()

    # connecting is outside the clock
    shares = [payloads[i::clients] for i in range(clients)]
    streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in shares]
    started = anyio.current_time()
    wall = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i, (stream, items) in enumerate(zip(streams, shares, strict=True)):
            if items:
                tg.start_soon(connection, stream, items, i)
            else:
                await stream.aclose()
    seconds = time.perf_counter() - wall
    latencies.sort()
    return len(latencies), errors, seconds, latencies


def measure(target: str, port: int, payloads: list[dict[str, Any]], clients: int,
            mode: str) -> Run:
    generator = load
    if target == "http":
        from bench.http_baseline import load as generator
    ok, errors, seconds, lat = anyio.run(generator, port, payloads, clients, MODES[mode],
                                         PACED.get(mode, 0.0))
    return Run(target, clients, mode, len(payloads), ok, dict(errors), seconds,
               percentile(lat, 0.50) * 1000, percentile(lat, 0.99) * 1000)


def run_bench(count: int, reps: int, *, clients: tuple[int, ...] = CLIENTS,
              modes: tuple[str, ...] = tuple(MODES), progress: bool = True,
              http: bool = True, only: set[tuple[int, str]] | None = None) -> list[Row]:
    """Every (clients, mode) configuration, or those in ``only``."""
    from bench import http_baseline

    http = http and http_baseline.available()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dtms-bench-") as tmp:
        work = Path(tmp)
        with server_process(["--echo"], work, "echo") as echo:
            for n_clients in clients:
                for mode in modes:
                    if (mode in PACED and n_clients not in PACED_CLIENTS
                            or only is not None and (n_clients, mode) not in only):
                        continue
                    runs: list[Run] = []
                    for rep in range(reps):
                        name = f"dtms-{n_clients}-{mode}-{rep}"
                        with server_process(["--serve", "--count", str(count), "--db",
                                             str(work / f"{name}.sqlite3")], work, name) as srv:
                            runs.append(measure("dtms", srv["port"], srv["payloads"],
                                                n_clients, mode))
                            payloads = srv["payloads"]
                        runs.append(measure("floor", echo["port"], payloads, n_clients, mode))
                        if progress:
                            d, f = runs[-2], runs[-1]
                            print(f"  {n_clients:>3} {mode:<10} rep {rep + 1}/{reps}: "
                                  f"{d.rate:,.0f} reg/s (floor {f.rate:,.0f}/s)",
                                  file=sys.stderr, flush=True)
                        if http and (n_clients, mode) in HTTP_CONFIGS:
                            name = f"http-{n_clients}-{mode}-{rep}"
                            with server_process(["--count", str(count), "--db",
                                                 str(work / f"{name}.sqlite3")], work, name,
                                                module="bench.http_baseline") as srv:
                                runs.append(measure("http", srv["port"], srv["payloads"],
                                                    n_clients, mode))
                            if progress:
                                print(f"  {n_clients:>3} {mode:<10} rep {rep + 1}/{reps}: "
                                      f"earlier design (HTTP) {runs[-1].rate:,.0f} reg/s",
                                      file=sys.stderr, flush=True)
                    https = [r for r in runs if r.target == "http"]
                    rows.append(Row(n_clients, mode,
                                    median_run([r for r in runs if r.target == "dtms"]),
                                    median_run([r for r in runs if r.target == "floor"]), runs,
                                    median_run(https) if https else None))
    return rows


# --------------------------------------------------------------------------- output


COLUMNS = (("clients", 7), ("mode", 10), ("count", 6), ("ok", 6), ("err", 5), ("seconds", 8),
           ("reg/s", 8), ("p50 ms", 8), ("p99 ms", 8), ("floor/s", 8), ("floor p50", 9),
           ("floor p99", 9), ("ratio", 6), ("http/s", 7), ("x http", 7))


def format_table(rows: list[Row], *, count: int, reps: int) -> str:
    head = (f"DTMS registration bench  {time.strftime('%Y-%m-%d %H:%M')}  "
            f"{os.cpu_count()} cores  Python {platform.python_version()}  "
            f"store.synchronous=FULL  {count} registrations/config, median of {reps}")
    lines = [head, "  ".join(f"{name:<{w}}" if name == "mode" else f"{name:>{w}}"
                             for name, w in COLUMNS)]
    for r in rows:
        d, f = r.dtms, r.floor
        cells = (str(r.clients), r.mode, str(d.count), str(d.ok), str(sum(d.errors.values())),
                 f"{d.seconds:.2f}", f"{d.rate:,.0f}", f"{d.p50_ms:.2f}", f"{d.p99_ms:.2f}",
                 f"{f.rate:,.0f}", f"{f.p50_ms:.2f}", f"{f.p99_ms:.2f}", f"{r.ratio:.3f}",
                 f"{r.http.rate:,.0f}" if r.http else "-",
                 f"{r.versus_http:.1f}" if r.http else "-")
        lines.append("  ".join(f"{c:<{w}}" if name == "mode" else f"{c:>{w}}"
                               for c, (name, w) in zip(cells, COLUMNS, strict=True)))
    for target in ("dtms", "floor", "http"):
        errors = Counter[str]()
        for r in rows:
            run = getattr(r, target)
            if run is not None:
                errors.update(run.errors)
        if errors:
            lines.append(f"errors ({target}): "
                         + ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())))
    return "\n".join(lines)


def to_json(rows: list[Row], *, count: int, reps: int) -> dict[str, Any]:
    def run(r: Run) -> dict[str, Any]:
        return {**asdict(r), "rate": r.rate}

    return {"bench": "registration", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "synchronous": "FULL", "count": count, "reps": reps,
            "rows": [{"clients": r.clients, "mode": r.mode, "ratio": r.ratio,
                      "dtms": run(r.dtms), "floor": run(r.floor),
                      "http": run(r.http) if r.http else None, "versus_http": r.versus_http,
                      "runs": [run(x) for x in r.runs]} for r in rows]}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench registration [--quick] [--count N] [--reps N] [--json PATH]``."""
    args = count_reps_args(argv, prog="python -m bench registration", doc=__doc__, what="registrations",
                           quick=(QUICK_COUNT, QUICK_REPS), default=(DEFAULT_COUNT, DEFAULT_REPS))
    count, reps = args.count, args.reps
    rows = run_bench(count, reps)
    print(format_table(rows, count=count, reps=reps), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rows, count=count, reps=reps), indent=2))
    return 0


def _server_main(argv: list[str]) -> int:
    """The child processes: ``--serve --count N --db PATH --out F`` or ``--echo --out F``."""
    p = argparse.ArgumentParser(prog="python -m bench.registration")
    p.add_argument("--serve", action="store_true")
    p.add_argument("--echo", action="store_true")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--db")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if args.serve:
            anyio.run(serve_dtms, args.count, args.db, args.out)
        else:
            anyio.run(serve_echo, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(_server_main(sys.argv[1:]) if {"--serve", "--echo"} & set(sys.argv[1:])
             else main(sys.argv[1:]))
