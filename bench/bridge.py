"""Bridge benchmark: the latency of one terminal call through ``dtms terminal-bridge``, against
the same simulated terminal embedded in the caller's process and served by ``dtms sim-terminal``.

Three ways to reach one simulated terminal (the ``[sim]`` defaults, real-time clock), each
measured from this process, one call at a time, over loopback TCP where there is a link:

* ``embedded``: the SimTerminal in this process (``broker.backend = "sim"``): the terminal's own
  cost, the floor;
* ``sim-remote``: ``dtms sim-terminal`` in its own process (anyio server, a thread per call) and
  its RemoteTerminal client;
* ``bridge``: ``dtms terminal-bridge --module dtms.brokers.sim.bridged:embedded`` in its own
  process (the simulated terminal inside the bridge, as MetaTrader5 would be: stdlib threads, one
  terminal worker) and the bridge client of ``broker.backend = "bridge"``.

Per backend and call -- ``symbol_info_tick("EURUSD")``, ``positions_get()`` with 10 open
positions, ``order_send`` of an SL/TP change on one of them (retcode 10009 each time) -- it
makes ``count`` calls after a warm-up and reports the median and p99 in microseconds, and the
ratio of the median to the embedded one. The client side is what DTMS's broker actor runs in its
worker thread, before MT5Adapter turns the result into DTMS's types (the same for every backend).

Example::

    python -m bench bridge --quick
    python -m bench bridge --count 5000 --json /tmp/bridge.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import count_reps_args, terminate
from bench.registration import percentile

BACKENDS = ("embedded", "sim-remote", "bridge")
CALLS = ("symbol_info_tick", "positions_get", "order_send")
QUICK_COUNT, DEFAULT_COUNT = 500, 3_000
POSITIONS = 10
WARMUP = 50
COLUMNS = (("backend", 10), ("call", 16), ("calls", 6), ("p50_us", 8), ("p99_us", 8),
           ("x_embedded", 10))


@dataclass(frozen=True)
class Row:
    backend: str
    call: str
    count: int
    p50_us: float
    p99_us: float
    versus_embedded: float   # p50 / embedded p50


def _calls(mt5: Any) -> dict[str, Callable[[], Any]]:
    """The three calls, on a terminal with POSITIONS open positions."""
    from dtms.brokers.sim import constants as c

    assert mt5.initialize(), mt5.last_error()
    for _ in range(POSITIONS - len(mt5.positions_get() or ())):
        result = mt5.order_send({"action": c.TRADE_ACTION_DEAL, "symbol": "EURUSD",
                                 "volume": 0.1, "type": c.ORDER_TYPE_BUY,
                                 "type_filling": c.ORDER_FILLING_IOC, "magic": 1})
        assert result is not None and result.retcode == 10009, (result, mt5.last_error())
    ticket = mt5.positions_get()[0].ticket
    price = mt5.symbol_info_tick("EURUSD").bid
    stops = [round(price - 0.0100, 5), round(price - 0.0101, 5)]
    n = [0]

    def modify() -> Any:
        n[0] += 1
        result = mt5.order_send({"action": c.TRADE_ACTION_SLTP, "symbol": "EURUSD",
                                 "position": ticket, "sl": stops[n[0] % 2], "tp": 0.0})
        assert result is not None and result.retcode == 10009, (result, mt5.last_error())
        return result

    return {"symbol_info_tick": lambda: mt5.symbol_info_tick("EURUSD"),
            "positions_get": mt5.positions_get, "order_send": modify}


def measure(mt5: Any, count: int) -> dict[str, tuple[float, float]]:
    """(p50, p99) in microseconds per call name."""
    out: dict[str, tuple[float, float]] = {}
    clock = time.perf_counter
    for name, fn in _calls(mt5).items():
        for _ in range(WARMUP):
            assert fn() is not None, mt5.last_error()
        samples: list[float] = []
        for _ in range(count):
            started = clock()
            fn()
            samples.append((clock() - started) * 1e6)
        samples.sort()
        out[name] = (percentile(samples, 0.5), percentile(samples, 0.99))
    return out


def _serve(argv: list[str], tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    ready = tmp / f"{name}.json"
    proc = subprocess.Popen([sys.executable, "-m", "dtms", *argv, "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "DTMS_SIM_REMOTE_PORT": "0"})
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            terminate(proc)
            raise RuntimeError(f"{' '.join(argv)} did not start")
        time.sleep(0.02)
    return proc, json.loads(ready.read_text())["port"]


def run_bench(count: int, *, progress: bool = True) -> list[Row]:
    from dtms.bridge.client import TerminalClient
    from dtms.brokers.mt5 import sim_terminal
    from dtms.brokers.sim.remote import RemoteTerminal
    from dtms.config import Settings

    figures: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="dtms-bench-bridge-") as tmp:
        for backend in BACKENDS:
            if progress:
                print(f"  {backend}: {count} calls each", file=sys.stderr, flush=True)
            if backend == "embedded":
                figures[backend] = measure(sim_terminal(Settings()), count)
                continue
            argv = (["sim-terminal"] if backend == "sim-remote" else
                    ["terminal-bridge", "--module", "dtms.brokers.sim.bridged:embedded",
                     "--port", "0"])
            proc, port = _serve(argv, Path(tmp), backend)
            client = (RemoteTerminal(port=port) if backend == "sim-remote"
                      else TerminalClient(port=port))
            try:
                figures[backend] = measure(client, count)
            finally:
                client.close()
                terminate(proc)
    rows = []
    for backend in BACKENDS:
        for call in CALLS:
            p50, p99 = figures[backend][call]
            floor = figures["embedded"][call][0]
            rows.append(Row(backend, call, count, p50, p99, p50 / floor if floor else 0.0))
    return rows


def format_table(rows: list[Row]) -> str:
    head = (f"DTMS bridge bench  {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}  loopback TCP, one call at a time, "
            f"{POSITIONS} open positions")
    lines = [head, "  ".join(f"{n:<{w}}" if n in ("backend", "call") else f"{n:>{w}}"
                             for n, w in COLUMNS)]
    for r in rows:
        cells = (r.backend, r.call, str(r.count), f"{r.p50_us:,.0f}", f"{r.p99_us:,.0f}",
                 f"{r.versus_embedded:.1f}")
        lines.append("  ".join(f"{c:<{w}}" if n in ("backend", "call") else f"{c:>{w}}"
                               for c, (n, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


def to_json(rows: list[Row]) -> dict[str, Any]:
    return {"bench": "bridge", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "rows": [asdict(r) for r in rows]}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench bridge [--quick] [--count N] [--json PATH]``."""
    args = count_reps_args(argv, prog="python -m bench bridge", doc=__doc__, what="calls",
                           quick=(QUICK_COUNT, 1), default=(DEFAULT_COUNT, 1))
    rows = run_bench(args.count)
    print(format_table(rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
