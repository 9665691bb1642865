"""Baseline 1 of the registration bench: the earlier design's pattern, rebuilt to be measured.

JSON over HTTP with FastAPI and uvicorn (httptools + uvloop, its fastest setup), one global
``asyncio.Lock`` around registration, and one SQLite commit per registration (WAL,
``synchronous=FULL``, as DTMS): inside the lock it reads the stored row, asks the terminal for
the position (the same SimTerminal and positions as DTMS's run, called directly as the earlier
design called MetaTrader5), writes the trade and commits. It answers 200 with the trade, 404
when the ticket is unknown, 409 on a contradiction.

Never part of the product: it needs the ``bench`` extra (``pip install -e '.[bench]'``).

``python -m bench.http_baseline --count N --db PATH --out F`` serves until terminated; ``load``
drives it from the bench's process with pipelined HTTP/1.1 on raw sockets, the same shape of
load as the msgpack generator in ``bench.registration``.
"""

# no `from __future__ import annotations`: FastAPI reads the handler's annotations at runtime
import argparse
import asyncio
import json
import sqlite3
import sys
import time
from collections import Counter
from typing import Any

import anyio

SCHEMA = """CREATE TABLE IF NOT EXISTS trades (
    ticket INTEGER PRIMARY KEY, symbol TEXT NOT NULL, direction TEXT NOT NULL,
    volume REAL NOT NULL, entry_price REAL NOT NULL, sl REAL NOT NULL, tp REAL NOT NULL,
    state TEXT NOT NULL, owner TEXT NOT NULL, strategy_type TEXT NOT NULL,
    created_at REAL NOT NULL)"""


def make_app(sim: Any, db_path: str) -> Any:
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(SCHEMA)
    lock = asyncio.Lock()
    app = FastAPI()

    class Registration(BaseModel):
        ticket: int
        symbol: str | None = None
        direction: str | None = None
        volume: float | None = None
        strategy_type: str = ""
        owner: str = ""

    @app.post("/register")
    async def register(reg: Registration) -> dict[str, Any]:
        async with lock:  # the earlier design serialised every registration
            row = db.execute("SELECT ticket, symbol, direction, volume, state FROM trades "
                             "WHERE ticket = ?", (reg.ticket,)).fetchone()
            if row is not None:
                return {"created": False, "trade": dict(zip(
                    ("ticket", "symbol", "direction", "volume", "state"), row, strict=True))}
            found = sim.positions_get(ticket=reg.ticket)
            if not found:
                raise HTTPException(404, f"no open position {reg.ticket}")
            p = found[0]
            direction = "BUY" if p.type == 0 else "SELL"
            if reg.symbol and reg.symbol != p.symbol:
                raise HTTPException(409, "symbol contradicts the broker")
            if reg.direction and reg.direction.upper() != direction:
                raise HTTPException(409, "direction contradicts the broker")
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (p.ticket, p.symbol, direction, p.volume, p.price_open, p.sl, p.tp,
                        "HEALTHY", reg.owner, reg.strategy_type, time.time()))
            db.execute("COMMIT")
            return {"created": True, "trade": {
                "ticket": p.ticket, "symbol": p.symbol, "direction": direction,
                "volume": p.volume, "entry_price": p.price_open, "sl": p.sl, "tp": p.tp,
                "state": "HEALTHY", "owner": reg.owner, "strategy_type": reg.strategy_type}}

    return app


def serve(count: int, db_path: str, out_path: str) -> None:
    import socket

    import uvicorn

    from bench.registration import _write_atomic, open_positions
    from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal

    sim = SimTerminal(SimConfig(seed=7, balance=1e12), clock=ManualClock())
    if not sim.initialize():
        raise RuntimeError(f"sim initialize failed: {sim.last_error()}")
    payloads = open_positions(sim, count)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)  # connections wait in the backlog until uvicorn accepts them
    config = uvicorn.Config(make_app(sim, db_path), log_level="warning", access_log=False,
                            loop="uvloop", http="httptools")
    server = uvicorn.Server(config)
    _write_atomic(out_path, {"port": sock.getsockname()[1], "payloads": payloads})
    server.run(sockets=[sock])


# --------------------------------------------------------------------------- load side


def _request(port: int, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    return (b"POST /register HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (port, len(body))
            + body)


def _responses(buffer: bytearray) -> list[int]:
    """Take every complete response off the front of ``buffer``; their status codes."""
    out = []
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return out
        head = bytes(buffer[:end]).split(b"\r\n")
        length = next((int(h.split(b":", 1)[1]) for h in head[1:]
                       if h.lower().startswith(b"content-length:")), 0)
        if len(buffer) < end + 4 + length:
            return out
        out.append(int(head[0].split()[1]))
        del buffer[:end + 4 + length]


async def load(port: int, payloads: list[dict[str, Any]], clients: int, window: int,
               rate: float = 0.0) -> tuple[int, Counter[str], float, list[float]]:
    """Like ``bench.registration.load``: ``clients`` keep-alive connections, ``window``
    pipelined requests each (HTTP/1.1 answers them in order). Non-2xx answers are errors.
    Closed loop only (``rate`` must be 0)."""
    if rate:
        raise ValueError("the HTTP baseline is measured closed loop only")
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def connection(stream: Any, items: list[dict[str, Any]]) -> None:
        sent_at: list[float] = []   # in order: HTTP/1.1 answers in the order asked
        free = anyio.Semaphore(window)
        done = anyio.Event()
        left = len(items)
        buffer = bytearray()

        async def reader() -> None:
            nonlocal left
            while left:
                buffer.extend(await stream.receive(1 << 16))
                for status in _responses(buffer):
                    took = time.perf_counter() - sent_at.pop(0)
                    if 200 <= status < 300:
                        latencies.append(took)
                    else:
                        errors[f"HTTP {status}"] += 1
                    left -= 1
                    free.release()
            done.set()

        async with stream, anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for payload in items:
                await free.acquire()
                sent_at.append(time.perf_counter())
                await stream.send(_request(port, payload))
            await done.wait()

    shares = [payloads[i::clients] for i in range(clients)]
    streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in shares]
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for stream, items in zip(streams, shares, strict=True):
            if items:
                tg.start_soon(connection, stream, items)
            else:
                await stream.aclose()
    seconds = time.perf_counter() - started
    latencies.sort()
    return len(latencies), errors, seconds, latencies


def available() -> bool:
    """Whether the ``bench`` extra (fastapi, uvicorn) is installed."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_baseline")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    serve(args.count, args.db, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
