"""Chaos: SIGKILL a real `dtms serve` again and again while clients keep registering trades.

The simulated terminal runs in its own process for the whole test (its clock faster than real
time); DTMS runs as a separate ``dtms serve`` process with ``broker.backend = sim-remote``, its
own SQLite file and fast polls. Four client tasks open positions at the terminal and register
them with DTMS (each with a per-trade policy whose breakeven and partial-profit ladder trigger
at a fraction of 1 R), a market task moves every price in random kicks of a fraction of 1 R,
and the main task kills DTMS with SIGKILL at random moments -- while it serves, while it is
still starting or recovering, or the moment its journal shows an action in flight (journaled,
sent, or executed and not yet recorded) -- and restarts it, at least ``MIN_KILLS`` times
(DESIGN.md, Testing; SPEC sections 4-6).

At the end DTMS runs until it is quiet, is stopped with SIGTERM, and the terminal and the
database are read directly to check that nothing acknowledged was lost and nothing was done
twice:

* every registration DTMS acknowledged is stored;
* every DTMS deal (magic ``broker.magic``, comment ``DTMS:<ticket>:<seq>``) is the only deal
  with its comment, and its journal row is ``done``;
* no obligation of a trade was executed twice within one episode of the state that owes it
  (a partial close, a hedge...; lifetime duties such as a profit rung at most once);
* every stored trade agrees with the terminal: an open trade has its position with the same
  volume and SL (and its hedge, if any), a trade whose position is gone is CLOSED.

The random seed is printed; ``DTMS_CHAOS_SEED=N`` replays the same choices (the interleaving
with the processes still differs from run to run).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from dtms.brokers.sim import SimTradeRejected
from dtms.brokers.sim.remote import RemoteTerminal
from dtms.client import Client, ClientError
from dtms.errors import DtmsError

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = ("EURUSD", "GBPUSD", "XAUUSD")
CLIENTS = 4
MIN_KILLS = 20
KILL_PHASE_S = 65.0        # keep killing until both MIN_KILLS and this much time have passed
MAX_KILL_PHASE_S = 110.0   # ... but stop starting new kill windows after this
SIM_SPEED = 20.0           # simulated seconds per real second (bars close, timers run)
RISK = 0.002               # the stop sits this fraction of the price away: 1 R
KICK = RISK / math.sqrt(50)  # one price kick every KICK_EVERY_S: about 1 R per 10 s
KICK_EVERY_S = 0.2
MAX_OPEN = 40              # clients wait while the terminal holds this many positions
MAX_POSITIONS = 320        # positions the clients open in all
VOLUMES = (0.04, 0.05, 0.06, 0.08)
CLIENT_MAGIC = 4242
POLICY = {"breakeven_r": 0.3, "partial_levels_r": [0.5, 0.8], "partial_fractions": [0.3, 0.3],
          "trail_activation_r": 1.0}
READY_TIMEOUT_S = 120.0    # a loaded 2-core machine; DTMS's own startup timeout is 60 s
DTMS_COMMENT = re.compile(r"^DTMS:(\d+):(\d+)$")
#: non-lifetime obligations -> the state whose every new episode owes them again
EPISODE_STATE = {"sl:L1": "WARNING_L1", "L2:partial": "WARNING_L2", "sl:L2": "WARNING_L2",
                 "hedge": "HEDGED", "recover:close_hedge": "RECOVERING"}
UNRESOLVED = ("pending", "sent", "uncertain")
ALL_TIME = (datetime(2000, 1, 1), datetime(2100, 1, 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking call (terminal link, process wait) off the event loop."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@dataclass
class Book:
    """What the clients did, as they saw it."""
    acked: dict[int, bool] = field(default_factory=dict)   # ticket -> created
    opened: int = 0
    open_now: int = 0
    not_found: int = 0
    refused_opens: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


class Dtms:
    """`dtms serve` processes, one at a time, all logging to one file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.self_exits: list[str] = []

    def start(self) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"=== chaos: start {self.starts} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "dtms", "serve"], cwd=REPO,
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self.proc

    def note_exit(self, when: str) -> bool:
        """Record a DTMS that exited on its own; True if it did."""
        if self.proc is not None and self.proc.poll() is not None:
            self.self_exits.append(f"start {self.starts}: exited {self.proc.returncode} {when}")
            return True
        return False

    async def kill(self, already: bool = False) -> None:
        assert self.proc is not None
        if not already and not self.note_exit("before its kill"):
            self.proc.send_signal(signal.SIGKILL)   # only the process this test started
        await call(self.proc.wait, 30)

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await call(self.proc.wait, 60)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def kill_in_flight(dtms: Dtms, db_path: Path, within: float, delay: float) -> bool:
    """SIGKILL DTMS ``delay`` seconds after its journal shows an unresolved action (True: the
    row was journaled, sent, or even executed and not yet recorded), or give up after
    ``within`` seconds (False; the caller kills it anyway)."""
    assert dtms.proc is not None
    deadline = time.monotonic() + within
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        while time.monotonic() < deadline and dtms.proc.poll() is None:
            try:
                (open_rows,), = db.execute("SELECT count(*) FROM actions WHERE status IN "
                                           "('pending', 'sent', 'uncertain')")
            except sqlite3.OperationalError:   # busy or not created yet: look again
                open_rows = 0
            if open_rows:
                time.sleep(delay)
                dtms.proc.send_signal(signal.SIGKILL)
                return True
            time.sleep(0.001)
    finally:
        db.close()
    return False


async def wait_ready(dtms: Dtms, client: Client) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            health = await client.call("health", timeout=5.0, retry=False)
            if health.get("ready"):
                return
        except (ClientError, ConnectionError, TimeoutError, DtmsError):
            pass
        assert not dtms.note_exit("while starting"), dtms.tail()
        assert time.monotonic() < deadline, f"DTMS not ready in {READY_TIMEOUT_S}s\n{dtms.tail()}"
        await anyio.sleep(0.1)


def open_position(rt: RemoteTerminal, rng: random.Random, owner: str) -> dict[str, Any] | None:
    """Open a position at the terminal as a strategy would; its registration request."""
    symbol = rng.choice(SYMBOLS)
    direction = rng.choice(("BUY", "SELL"))
    info, tick = rt.symbol_info(symbol), rt.symbol_info_tick(symbol)
    if info is None or tick is None:
        return None
    price = tick.ask if direction == "BUY" else tick.bid
    sign = 1 if direction == "BUY" else -1
    sl = round(price - sign * price * RISK, info.digits)
    volume = rng.choice(VOLUMES)
    try:
        ticket = rt.open_position(symbol, direction, volume, sl=sl, magic=CLIENT_MAGIC,
                                  comment=owner)
    except SimTradeRejected:
        return None
    return {"ticket": ticket, "symbol": symbol, "direction": direction.lower(), "sl": sl,
            "volume": volume, "strategy_type": "chaos", "owner": owner, "policy": POLICY}


async def registrar(n: int, book: Book, rpc_port: int, term_port: int, seed: int,
                    stop: anyio.Event) -> None:
    """Open positions and register them; a registration counts only once DTMS answered it."""
    rng = random.Random(seed * 100 + n)
    owner = f"chaos-{n}"
    pending: list[dict[str, Any]] = []
    rt = RemoteTerminal(port=term_port)

    async def register(req: dict[str, Any]) -> bool:
        """True when settled (acknowledged, or the position is gone), False to retry later."""
        try:
            answer = await client.call("register", req, timeout=15.0, retry=False)
        except DtmsError as err:
            if err.code == "NOT_FOUND":
                still_open = await call(rt.positions_get, ticket=req["ticket"])
                if still_open:
                    book.unexpected.append(f"NOT_FOUND for open position {req['ticket']}: "
                                           f"{err!r}")
                book.not_found += 1
                return True
            if err.code in ("NOT_READY", "OVERLOADED"):
                book.retries[err.code] += 1
                return False
            book.unexpected.append(f"register {req['ticket']}: {err!r}")
            return True
        except (ClientError, ConnectionError, TimeoutError, OSError) as exc:
            book.retries[type(exc).__name__] += 1
            return False
        if answer.get("trade", {}).get("ticket") != req["ticket"]:
            book.unexpected.append(f"register {req['ticket']} answered {answer!r}")
        book.acked[req["ticket"]] = bool(answer["created"])
        return True

    async with Client("127.0.0.1", rpc_port, timeout=15.0, retries=1, verify=False,
                      breaker_failures=10**9) as client:
        try:
            while not stop.is_set():
                if len(pending) < 3 and book.open_now < MAX_OPEN and book.opened < MAX_POSITIONS:
                    req = await call(open_position, rt, rng, owner)
                    if req is None:
                        book.refused_opens += 1
                    else:
                        book.opened += 1
                        book.open_now += 1
                        pending.append(req)
                if pending and not await register(pending[0]):
                    pending.append(pending.pop(0))
                elif pending:
                    pending.pop(0)
                await anyio.sleep(rng.uniform(0.1, 0.6))
            for req in pending:   # DTMS is up and ready now: settle what is left
                for _ in range(10):
                    if await register(req):
                        break
                    await anyio.sleep(0.5)
        finally:
            rt.close()


async def market(book: Book, term_port: int, seed: int, stop: anyio.Event) -> None:
    """Kick every price by a random fraction of 1 R, often enough that DTMS acts."""
    rng = random.Random(seed * 100 + 99)
    rt = RemoteTerminal(port=term_port)

    def kick() -> None:
        for symbol in SYMBOLS:
            info = rt.symbol_info(symbol)
            if info is not None:
                bid = info.bid * math.exp(rng.gauss(0.0, KICK))
                rt.set_price(symbol, round(bid, info.digits))
        book.open_now = rt.positions_total() or 0

    try:
        while not stop.is_set():
            await call(kick)
            await anyio.sleep(KICK_EVERY_S)
    finally:
        rt.close()


# -- reading the outcome --------------------------------------------------------------------

def read_db(path: Path) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        trades = {r["ticket"]: dict(r) for r in db.execute("SELECT * FROM trades")}
        archived = {r["ticket"]: dict(r) for r in db.execute("SELECT * FROM trades_archive")}
        actions = [dict(r) for r in db.execute("SELECT * FROM actions ORDER BY ticket, seq")]
        transitions = [dict(r) for r in db.execute("SELECT * FROM transitions ORDER BY id")]
    finally:
        db.close()
    return {"trades": trades, "archived": archived, "actions": actions,
            "transitions": transitions}


def read_terminal(rt: RemoteTerminal) -> dict[str, Any]:
    # The simulator has one connection state for all its clients, and DTMS's clean stop calls
    # shutdown(): connect again first.
    assert rt.initialize() is True, rt.last_error()
    positions = rt.positions_get()
    deals = rt.history_deals_get(*ALL_TIME)
    assert positions is not None and deals is not None, rt.last_error()
    return {"positions": {p.ticket: p for p in positions}, "deals": list(deals)}


def disagreements(db: dict[str, Any], term: dict[str, Any]) -> list[str]:
    """Where a stored trade and the terminal disagree (SPEC section 6: the broker is the truth)."""
    problems = []
    positions = term["positions"]
    for ticket, t in {**db["archived"], **db["trades"]}.items():
        p = positions.get(ticket)
        if t["state"] == "CLOSED":
            if p is not None:
                problems.append(f"{ticket} stored CLOSED but open at the terminal")
            continue
        if t["state"] == "RELEASED":
            continue
        if p is None:
            problems.append(f"{ticket} stored {t['state']} but its position is gone")
            continue
        if abs(p.volume - t["volume"]) > 1e-9 or abs(p.sl - t["sl"]) > 1e-9:
            problems.append(f"{ticket} stored {t['state']} volume {t['volume']} sl {t['sl']}, "
                            f"terminal volume {p.volume} sl {p.sl}")
        if t["hedge_ticket"]:
            h = positions.get(t["hedge_ticket"])
            if h is None or abs(h.volume - t["hedge_volume"]) > 1e-9:
                problems.append(f"{ticket} hedge {t['hedge_ticket']} {t['hedge_volume']} "
                                f"stored, terminal has {h and h.volume}")
    unresolved = [(a["ticket"], a["seq"], a["status"]) for a in db["actions"]
                  if a["status"] in UNRESOLVED]
    if unresolved:
        problems.append(f"unresolved journal rows {unresolved[:10]}")
    return problems


def duplicates(db: dict[str, Any], term: dict[str, Any], magic: int) -> tuple[list[str], int]:
    """Actions done twice or executed-but-not-recorded; and how many deals DTMS made."""
    problems = []
    rows = {(a["ticket"], a["seq"]): a for a in db["actions"]}
    by_comment: dict[str, list[Any]] = defaultdict(list)
    for d in term["deals"]:
        if d.magic == magic and DTMS_COMMENT.match(d.comment):
            by_comment[d.comment].append(d)
    executed: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for comment, deals in by_comment.items():
        if len(deals) > 1:
            problems.append(f"{len(deals)} deals for {comment}: {[d.ticket for d in deals]}")
        m = DTMS_COMMENT.match(comment)
        assert m is not None
        row = rows.get((int(m[1]), int(m[2])))
        if row is None:
            problems.append(f"deal(s) {[d.ticket for d in deals]} for {comment}: no journal row")
            continue
        if row["status"] != "done":
            problems.append(f"{comment} executed (deal {deals[0].ticket}) but its journal row "
                            f"is {row['status']}: {row['result']}")
        executed[(row["ticket"], row["obligation"])].append(row)
    # a duty done (a deal, or a done row) twice needs a new episode of its state in between
    for a in db["actions"]:
        if a["status"] == "done" and (a["ticket"], a["obligation"]) not in executed:
            executed[(a["ticket"], a["obligation"])].append(a)
    entered: dict[tuple[int, str], list[float]] = defaultdict(list)
    for tr in db["transitions"]:
        entered[(tr["ticket"], tr["to_state"])].append(tr["at"])
    for (ticket, obligation), done in executed.items():
        done = sorted({r["seq"]: r for r in done}.values(), key=lambda r: r["seq"])
        state = EPISODE_STATE.get(obligation)
        for first, second in zip(done, done[1:], strict=False):
            new_episode = state is not None and any(
                first["created_at"] < at <= second["created_at"]
                for at in entered[(ticket, state)])
            if not new_episode:
                problems.append(f"trade {ticket} obligation {obligation!r} executed twice: "
                                f"seq {first['seq']} and {second['seq']}")
    return problems, sum(len(d) for d in by_comment.values())


def log_summary(text: str) -> tuple[Counter[str], list[str]]:
    """Counts of DTMS log lines by level, and the error-ish lines worth a look."""
    levels: Counter[str] = Counter()
    notable = []
    for line in text.splitlines():
        if line.startswith("=== chaos:"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            levels["(not json)"] += 1
            if line.strip() and not line.startswith("DTMS "):
                notable.append(line)
            continue
        level = entry.get("level", "?")
        levels[level] += 1
        if level in ("ERROR", "CRITICAL") or "INTERNAL" in line or "Traceback" in line:
            notable.append(line)
    return levels, notable


# -- the test ---------------------------------------------------------------------------------

async def test_sigkill_dtms_repeatedly_while_clients_register(tmp_path: Path) -> None:
    seed = int(os.environ.get("DTMS_CHAOS_SEED") or random.randrange(1, 10**6))
    rng = random.Random(seed)
    print(f"\nchaos seed {seed}")
    started = time.monotonic()
    ready_file = tmp_path / "terminal.json"
    term_log = open(tmp_path / "terminal.log", "wb")  # noqa: SIM115 - held by the child
    terminal = subprocess.Popen(
        [sys.executable, "-m", "dtms.brokers.sim.remote", "--port", "0", "--seed", str(seed),
         "--speed", str(SIM_SPEED), "--ready-file", str(ready_file)],
        stdout=term_log, stderr=subprocess.STDOUT, cwd=REPO)
    db_path = tmp_path / "chaos.sqlite3"
    rpc_port = free_port()
    magic = 770077
    env = dict(os.environ)
    env.update(DTMS_CONFIG=str(REPO / "config" / "dtms.toml"), DTMS_RPC_PORT=str(rpc_port),
               DTMS_METRICS_PORT=str(free_port()), DTMS_STORE_PATH=str(db_path),
               DTMS_BROKER_BACKEND="sim-remote", DTMS_BROKER_POLL_INTERVAL_S="0.05",
               DTMS_BROKER_CONNECT_RETRY_S="0.2", DTMS_BROKER_MAGIC=str(magic),
               DTMS_MARKET_TICK_POLL_S="0.05",
               DTMS_SERVICE_SUPERVISOR_LOG=str(tmp_path / "supervisor.log"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    dtms = Dtms(env, tmp_path / "dtms.log")
    book = Book()
    kills = in_flight_kills = 0
    control: RemoteTerminal | None = None
    try:
        deadline = time.monotonic() + 30
        while not ready_file.exists():
            assert terminal.poll() is None, (tmp_path / "terminal.log").read_text()
            assert time.monotonic() < deadline, "the terminal process never became ready"
            await anyio.sleep(0.05)
        term_port = json.loads(ready_file.read_text())["port"]
        env["DTMS_SIM_REMOTE_PORT"] = str(term_port)
        control = RemoteTerminal(port=term_port)
        assert await call(control.initialize) is True

        stop = anyio.Event()
        async with Client("127.0.0.1", rpc_port, timeout=5.0, retries=1, verify=False,
                          breaker_failures=10**9) as admin, anyio.create_task_group() as tg:
            for n in range(CLIENTS):
                tg.start_soon(registrar, n, book, rpc_port, term_port, seed, stop)
            tg.start_soon(market, book, term_port, seed, stop)

            # -- the chaos: kill DTMS at random moments, restart it, again and again --------
            phase = time.monotonic()
            while kills < MIN_KILLS or time.monotonic() - phase < KILL_PHASE_S:
                if kills >= MIN_KILLS and time.monotonic() - phase > MAX_KILL_PHASE_S:
                    break
                dtms.start()
                mode = rng.random()
                if mode < 0.25:             # while it starts up or recovers its trades
                    await anyio.sleep(rng.uniform(0.05, 1.5))
                else:                       # while it serves
                    await wait_ready(dtms, admin)
                    await anyio.sleep(rng.uniform(0.5, 3.0) if mode < 0.7 else 0.3)
                if mode >= 0.7:             # ... the moment an action is in flight
                    killed = await call(kill_in_flight, dtms, db_path, rng.uniform(1.0, 3.0),
                                        rng.choice((0.0, 0.002, 0.005, 0.01, 0.02)))
                    in_flight_kills += killed
                    await dtms.kill(already=killed)
                else:
                    await dtms.kill()
                kills += 1

            # -- the last incarnation: let the clients finish, then let DTMS become quiet ----
            dtms.start()
            await wait_ready(dtms, admin)
            await anyio.sleep(3.0)
            stop.set()
        assert not dtms.note_exit("after the clients stopped"), dtms.tail()
        for symbol in SYMBOLS:     # the prices stand still from now on: no more stop-outs
            await call(control.hold, symbol)
        async with Client("127.0.0.1", rpc_port, timeout=30.0, retries=3, verify=False,
                          breaker_failures=10**9) as admin:
            await wait_ready(dtms, admin)
            await admin.pause()    # no new actions; positions are still followed and closed
        quiet_deadline = time.monotonic() + 60
        calm = 0
        while calm < 2 and time.monotonic() < quiet_deadline:
            assert not dtms.note_exit("while becoming quiet"), dtms.tail()
            await anyio.sleep(1.0)
            term = await call(read_terminal, control)
            calm = calm + 1 if not disagreements(await call(read_db, db_path), term) else 0
        code = await dtms.terminate()
        assert code == 0, f"dtms serve exited {code} on SIGTERM\n{dtms.tail()}"

        # -- the verdict: read the terminal and the database directly -------------------------
        term = await call(read_terminal, control)
        db = await call(read_db, db_path)
        stored = db["trades"].keys() | db["archived"].keys()
        lost = sorted(set(book.acked) - stored)
        dupes, dtms_deals = duplicates(db, term, magic)
        mismatched = disagreements(db, term)
        statuses = Counter(a["status"] for a in db["actions"])
        kinds = Counter((a["kind"], a["status"]) for a in db["actions"])
        sent = sum(1 for a in db["actions"] if a["request"] not in ("", "{}"))
        reconciled = Counter(json.loads(a["result"]).get("reconciled")
                             or json.loads(a["result"]).get("reason")
                             for a in db["actions"] if '"reconciled"' in a["result"]
                             or "never sent" in a["result"])
        states = Counter(t["state"] for t in db["trades"].values())
        levels, notable = log_summary(dtms.log_path.read_text(errors="replace"))
        print(f"chaos: registrations acknowledged {len(book.acked)} "
              f"(created {sum(book.acked.values())}), found {len(set(book.acked) & stored)}; "
              f"actions sent {sent}, done {statuses['done']}, DTMS deals {dtms_deals}; "
              f"duplicates {len(dupes)}; kills survived {kills} "
              f"({in_flight_kills} with an action in flight); "
              f"wall {time.monotonic() - started:.0f}s")
        print(f"chaos: positions opened {book.opened}, refused {book.refused_opens}, "
              f"gone before registration {book.not_found}, client retries {dict(book.retries)}")
        print(f"chaos: journal {dict(statuses)}; by kind {dict(sorted(kinds.items()))}; "
              f"resolved after a kill {dict(reconciled)}")
        print(f"chaos: trades by state {dict(states)}; DTMS starts {dtms.starts}; "
              f"log lines {dict(levels)}")
        for line in notable[:20]:
            print(f"chaos: log: {line[:300]}")

        assert not dtms.self_exits, dtms.self_exits
        assert not book.unexpected, book.unexpected[:20]
        assert book.acked, "no registration was ever acknowledged"
        assert not lost, f"acknowledged but not stored: {lost}"
        assert not dupes, dupes[:20]
        assert not mismatched, mismatched[:20]
        assert statuses["done"] > 0, "DTMS never acted: the chaos proved nothing"
        assert kills >= MIN_KILLS
    finally:
        if control is not None:
            control.close()
        dtms.cleanup()
        with contextlib.suppress(ProcessLookupError):
            terminal.send_signal(signal.SIGTERM)
        try:
            terminal.wait(timeout=10)
        except subprocess.TimeoutExpired:
            terminal.kill()
            terminal.wait(timeout=10)
        term_log.close()
