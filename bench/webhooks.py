"""Webhooks benchmark: what queueing costs the store's group commit, and how fast the delivery
actor drains its queue into a local endpoint.

1. **commit**: the commit benchmark's writes (:func:`bench.commit.make_writes`: one trade row +
   its "registered" transition each) through a fresh :class:`~dtms.actors.store.StoreActor`
   (SQLite file in a temp directory, ``synchronous = FULL``) with 1 and 256 concurrent writers,
   ``none``: no webhooks, against ``one``: one endpoint taking ``trade.state`` (one more row
   per write, with the trade's view, in the same commit).
2. **drain**: ``count`` deliveries queued (one per trade: as many streams), then a
   :class:`~dtms.webhooks.WebhookDelivery` POSTing them to a ``http.server`` receiver (200,
   keep-alive) on a loopback port, in a process of its own; deliveries/s from the actor's
   start to an empty queue.

Every configuration is measured ``reps`` times, the median quoted. No assertion: figures only.

Example::

    python -m bench.webhooks --quick
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench.commit import make_writes
from bench.common import count_reps_args, terminate

QUICK, DEFAULT = (1_000, 1), (5_000, 3)


def _parts(path: Path, hooks: tuple, max_queued: int) -> tuple[Any, Any, Any]:
    from dtms.actors.store import StoreActor
    from dtms.config import StoreSettings
    from dtms.metrics import Metrics
    from dtms.webhooks import WebhookQueue
    metrics = Metrics()
    queue = WebhookQueue(hooks, max_queued, metrics) if hooks else None
    return StoreActor(StoreSettings(path=str(path)), metrics, webhooks=queue), queue, metrics


async def commit_pass(path: Path, writes: list[Any], writers: int, hooks: tuple) -> float:
    """Durable writes/s through a fresh store (with a webhook queue when ``hooks``)."""
    store, _, _ = _parts(path, hooks, 10**9)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        pending = iter(writes)

        async def writer() -> None:
            for w in pending:
                await store.ask(w, timeout=120.0)
        started = time.perf_counter()
        async with anyio.create_task_group() as ws:
            for _ in range(writers):
                ws.start_soon(writer)
        seconds = time.perf_counter() - started
        await store.stop()
    return len(writes) / seconds


#: the receiver, in a process of its own (in this one it would share the GIL with DTMS)
_RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as a real endpoint

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 128    # socketserver's 5 refuses bursts of connections

server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


async def drain_pass(path: Path, writes: list[Any]) -> float:
    """Deliveries/s: ``writes``' events queued first, then POSTed until the queue is empty."""
    from dtms.config import WebhookSettings
    from dtms.webhooks import WebhookDelivery
    rx = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None
        port = int(rx.stdout.readline())
        hook = WebhookSettings(url=f"http://127.0.0.1:{port}/", events=("trade.state",))
        store, queue, metrics = _parts(path, (hook,), 10**9)
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            for i in range(0, len(writes), 256):
                async with anyio.create_task_group() as ws:
                    for w in writes[i:i + 256]:
                        ws.start_soon(store.ask, w, 120.0)
            delivered = queue.queued
            delivery = WebhookDelivery((hook,), store=store, queue=queue, metrics=metrics)
            started = time.perf_counter()
            await tg.start(delivery.run)
            while queue.queued:
                await anyio.sleep(0.01)
            seconds = time.perf_counter() - started
            failed = sum(s.value for m in metrics.webhook_deliveries.collect()
                         for s in m.samples if s.labels.get("outcome") == "failed"
                         and s.name.endswith("_total"))
            if failed:
                print(f"  (drain pass: {failed:.0f} failed tries, retried)", file=sys.stderr)
            await delivery.stop()
            await store.stop()
        return delivered / seconds
    finally:
        terminate(rx)


def main(argv: list[str] | None = None) -> int:
    args = count_reps_args(argv, prog="python -m bench.webhooks", doc=__doc__,
                           what="writes", quick=QUICK, default=DEFAULT)
    from dtms.config import WebhookSettings
    one = (WebhookSettings(url="http://127.0.0.1:9/", events=("trade.state",)),)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dtms-bench-webhooks-") as tmp:
        n = 0

        def fresh() -> Path:
            nonlocal n
            n += 1
            return Path(tmp) / f"w{n}.sqlite3"
        for writers in (1, 256):
            count = args.count if writers > 1 else max(100, args.count // 10)
            for name, hooks in (("none", ()), ("one", one)):
                rates = sorted(anyio.run(commit_pass, fresh(), make_writes(count), writers,
                                         hooks) for _ in range(args.reps))
                figures[f"commit {name} webhooks, {writers} writers"] = rates[len(rates) // 2]
        rates = sorted(anyio.run(drain_pass, fresh(), make_writes(args.count))
                       for _ in range(args.reps))
        figures["drain to a loopback endpoint"] = rates[len(rates) // 2]
    print(f"{'webhooks benchmark':<44} {'per second':>12}")
    for what, rate in figures.items():
        print(f"{what:<44} {rate:>12,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
