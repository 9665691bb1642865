"""The store actor: the single owner of the SQLite database (aiosqlite, WAL).

It is deliberately boring. One aiosqlite connection (one thread), opened on start and closed on
every exit path. Writes are messages; the actor drains whatever writes are queued (up to
``max_batch``) and commits them in one ``BEGIN IMMEDIATE`` transaction -- group commit -- then
answers every writer. An ``ask`` for a write therefore returns only after its row is durable
(``synchronous=FULL`` by default). Reads are answered in mailbox order, so a read sees every
write acknowledged before it.

Schema changes are forward migrations (:mod:`dtms.actors.schema`); ``meta`` holds facts about
the database itself (the broker account it belongs to).

It also owns the file's safety at its edges (the lock that keeps a second DTMS out is
:class:`dtms.storelock.StoreLock`, taken by the service before the store opens anything):
``PRAGMA quick_check`` at open (a damaged file is refused before any migration or write), and,
before every group commit is acknowledged,
a check that the file at the configured path is still the one opened (a deleted or replaced file
would swallow every later write): if not, the writes are answered NOT_READY and the store
reports itself not writable.

A trade's ``score`` and ``layers`` are the bar's, the same for every open trade of a symbol and
direction: the market actor writes them once per bar close for all of them (``PutScores``: one
UPDATE per direction), and ``PutTrade`` writes them only when it inserts the row. A trade's own
write never carries a score back over a newer bar's (it may have been built before the bar
closed, while the trade was acting).

Usage::

    await store.ask(PutTrade(trade, transition))      # durable when this returns
    trade = await store.ask(GetTrade(ticket))
    await store.tell(PutScores("EURUSD", {Direction.BUY: (1.25, {"vwap": 0.5, ...}), ...}))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio

from dtms.actors.base import Actor, Envelope
from dtms.actors.schema import migrate, quick_check
from dtms.config import StoreSettings
from dtms.errors import NotReady
from dtms.events import (
    ACTION_EVENT_STATUSES,
    EventBus,
    giveup_data,
    trade_action_data,
    trade_state_data,
    trade_updated_data,
)
from dtms.metrics import Metrics
from dtms.model import (
    SCORE_FIELDS,
    UNMANAGED_STATES,
    ActionRecord,
    Direction,
    Trade,
    TradeState,
    Transition,
)
from dtms.supervisor import RestartEvent

if TYPE_CHECKING:
    from dtms.webhooks.queue import WebhookQueue

log = logging.getLogger(__name__)

TRADE_COLUMNS = [f.name for f in dataclasses.fields(Trade)]
_COLUMNS = ", ".join(TRADE_COLUMNS)

# -- messages ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PutTrade:
    """Insert or update a trade's full row, with the transition that led there if any, and
    journal rows (inserted or updated by ``(ticket, seq)``), all in the same commit. An update
    leaves ``score`` and ``layers`` as they are: they are ``PutScores``'s."""
    trade: Trade
    transition: Transition | None = None
    actions: tuple[ActionRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class PutTrades:
    """Many ``PutTrade`` in one message, committed together (the registry's batches)."""
    puts: tuple[PutTrade, ...]


@dataclass(frozen=True, slots=True)
class PutScores:
    """A bar closed on ``symbol``: every managed trade (not SUSPENDED, RELEASED or CLOSED) of
    that symbol and a direction in ``scores`` takes the direction's ``(score, layers)``, as the
    policy stores them (``lifecycle.stored_score``). One UPDATE per direction, not a row per
    trade; no notification (a score alone is not a ``trade.updated``), and ``updated_at``
    stays the time of the trade's last change of its own."""
    symbol: str
    scores: dict[Direction, tuple[float, dict[str, float]]]


@dataclass(frozen=True, slots=True)
class AddRestart:
    """One row of the restart history."""
    event: RestartEvent


@dataclass(frozen=True, slots=True)
class Archive:
    """Move trades CLOSED before ``before`` (epoch seconds) to ``trades_archive``."""
    before: float
    now: float


@dataclass(frozen=True, slots=True)
class GetTrade:
    ticket: int


@dataclass(frozen=True, slots=True)
class LoadTrade:
    """A trade actor's (re)start: its row (live or archived) and its unresolved journal rows,
    oldest first, read in one hand-off; answered ``(trade or None, [records])``."""
    ticket: int


@dataclass(frozen=True, slots=True)
class GetTrades:
    """Answered with ticket -> Trade for those of ``tickets`` stored (archived included)."""
    tickets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ListTrades:
    state: str | None = None
    symbol: str | None = None
    open_only: bool = False
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ListTransitions:
    ticket: int
    limit: int = 100
    since: float = 0.0   # transition time (``at``) from which to list


@dataclass(frozen=True, slots=True)
class ListRestarts:
    """Newest first; ``since`` is a wall-clock timestamp, ``kind`` e.g. "trade" or "store"."""
    limit: int = 100
    since: float = 0.0
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class CountByState:
    pass


@dataclass(frozen=True, slots=True)
class ListActions:
    """Newest first; ``since`` is the journal time (created_at) from which to list."""
    ticket: int | None = None
    since: float = 0.0
    limit: int = 100
    unresolved: bool = False   # only pending, sent or uncertain rows


@dataclass(frozen=True, slots=True)
class Probe:
    """A tiny write that tells whether the database accepts writes again."""
    at: float


@dataclass(frozen=True, slots=True)
class PutMeta:
    """Set ``meta[key]`` to ``value`` (JSON-encoded)."""
    key: str
    value: Any
    at: float


@dataclass(frozen=True, slots=True)
class GetMeta:
    """Answered with the decoded ``meta[key]``, or None when it was never set."""
    key: str


# -- the webhooks' durable queue (dtms.webhooks, schema v7) -----------------------------------
# Trade events, actions and give-ups are queued by the commit that stores them (the store's
# ``webhooks`` planner turns the batch's writes into rows); these are the queue's own messages.

@dataclass(frozen=True, slots=True)
class EnqueueEvent:
    """An event that is no store write of its own (``service.not_ready``, ``guard.*``): queued
    for the webhooks that take it, durable when the ask returns. ``ticket`` orders it (0: no
    trade's)."""
    event: str
    data: dict[str, Any]
    at: float
    ticket: int = 0


@dataclass(frozen=True, slots=True)
class DueDeliveries:
    """Answered ``(rows, next_at)``: up to ``limit`` deliveries (dicts) due at ``now``, each the
    oldest undelivered row of its ``(url, ticket)`` stream, longest due first, leaving out ``busy``
    ids (in flight) and the streams of ``held`` urls (backing off); ``next_at`` is when the
    next other head falls due (``inf``: none waits)."""
    now: float
    held: tuple[str, ...] = ()
    busy: tuple[int, ...] = ()
    limit: int = 32


@dataclass(frozen=True, slots=True)
class MarkDeliveries:
    """What became of tries: ``done`` ids were taken by their endpoint and ``dropped`` ids have
    no endpoint configured any more (both deleted); ``retry`` rows ``(id, attempts, next_at,
    error)`` wait for their next try."""
    done: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    retry: tuple[tuple[int, int, float, str], ...] = ()


# a row is its stream's head when the stream has no older row; deleting a head passes it on
_DELIVERY_INSERT = (
    "INSERT INTO webhook_deliveries (delivery, url, event, ticket, at, body, head) "
    "SELECT ?1, ?2, ?3, ?4, ?5, ?6, NOT EXISTS (SELECT 1 FROM webhook_deliveries "
    "WHERE url = ?2 AND ticket = ?4)")
_NEXT_HEAD = ("UPDATE webhook_deliveries SET head = 1 WHERE id = (SELECT MIN(id) FROM "
              "webhook_deliveries WHERE url = ? AND ticket = ?)")


def due_deliveries(conn: sqlite3.Connection, msg: DueDeliveries
                   ) -> tuple[list[dict[str, Any]], float]:
    """On the database thread: DueDeliveries's answer, in one hand-off."""
    skip = ""
    params: list[Any] = []
    if msg.held:
        skip += f" AND url NOT IN ({', '.join('?' * len(msg.held))})"
        params += list(msg.held)
    if msg.busy:
        skip += f" AND id NOT IN ({', '.join('?' * len(msg.busy))})"
        params += list(msg.busy)
    # the longest due first: a stream just retried goes behind those not tried yet
    rows = conn.execute(f"SELECT * FROM webhook_deliveries WHERE head = 1 AND next_at <= ?"
                        f"{skip} ORDER BY next_at, id LIMIT ?", (msg.now, *params, msg.limit)
                        ).fetchall()
    later = conn.execute(f"SELECT MIN(next_at) FROM webhook_deliveries WHERE head = 1 "
                         f"AND next_at > ?{skip}", (msg.now, *params)).fetchone()[0]
    return [dict(r) for r in rows], float("inf") if later is None else later


def _mark_deliveries(conn: sqlite3.Connection, msg: MarkDeliveries) -> None:
    for i in (*msg.done, *msg.dropped):
        row = conn.execute("SELECT url, ticket, head FROM webhook_deliveries WHERE id = ?",
                           (i,)).fetchone()
        conn.execute("DELETE FROM webhook_deliveries WHERE id = ?", (i,))
        if row is not None and row[2]:
            conn.execute(_NEXT_HEAD, (row[0], row[1]))
    if msg.retry:
        conn.executemany("UPDATE webhook_deliveries SET attempts = ?, next_at = ?, "
                         "last_error = ? WHERE id = ?",
                         [(n, at, error, i) for i, n, at, error in msg.retry])


WRITES = (PutTrade, PutTrades, PutScores, AddRestart, Archive, Probe, PutMeta, EnqueueEvent,
          MarkDeliveries)


def _puts(messages: Any) -> Any:
    """Every PutTrade in ``messages``, those inside PutTrades included, in order."""
    for msg in messages:
        if isinstance(msg, PutTrades):
            yield from msg.puts
        elif isinstance(msg, PutTrade):
            yield msg


def trade_from_row(row: sqlite3.Row) -> Trade:
    d = {k: row[k] for k in TRADE_COLUMNS}
    d["direction"] = Direction(d["direction"])
    d["state"] = TradeState(d["state"])
    d["policy"] = json.loads(d["policy"])
    d["paused"] = bool(d["paused"])
    d["layers"] = json.loads(d["layers"])
    d["obligations"] = json.loads(d["obligations"])
    return Trade(**d)


def action_from_row(row: sqlite3.Row) -> ActionRecord:
    return ActionRecord(ticket=row["ticket"], seq=row["seq"], kind=row["kind"],
                        obligation=row["obligation"], reason=row["reason"], status=row["status"],
                        created_at=row["created_at"], resolved_at=row["resolved_at"],
                        request=json.loads(row["request"]), retcode=row["retcode"],
                        result=json.loads(row["result"]))


def _trade_params(t: Trade) -> tuple:
    d = t.fields()
    d["direction"] = t.direction.value
    d["state"] = t.state.value
    d["policy"] = json.dumps(t.policy, sort_keys=True)
    d["paused"] = int(t.paused)
    d["layers"] = json.dumps(t.layers, sort_keys=True)
    d["obligations"] = json.dumps(t.obligations, sort_keys=True)
    return tuple(d[k] for k in TRADE_COLUMNS)


_ACTION_UPSERT = (
    "INSERT INTO actions (ticket, seq, kind, obligation, reason, status, created_at, "
    "resolved_at, request, retcode, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(ticket, seq) DO UPDATE SET status=excluded.status, "
    "resolved_at=excluded.resolved_at, request=excluded.request, retcode=excluded.retcode, "
    "result=excluded.result")


def _action_params(a: ActionRecord) -> tuple:
    return (a.ticket, a.seq, a.kind, a.obligation, a.reason, a.status, a.created_at,
            a.resolved_at, json.dumps(a.request, sort_keys=True, default=str), a.retcode,
            json.dumps(a.result, sort_keys=True, default=str))


_TRANSITION_INSERT = ("INSERT INTO transitions (ticket, at, from_state, to_state, reason) "
                      "VALUES (?, ?, ?, ?, ?)")

# a trade's update leaves its score to PutScores: it may carry the score from before a bar close
_UPSERT = (f"INSERT INTO trades ({', '.join(TRADE_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in TRADE_COLUMNS)}) ON CONFLICT(ticket) DO UPDATE SET "
           + ", ".join(f"{c}=excluded.{c}" for c in TRADE_COLUMNS
                       if c != "ticket" and c not in SCORE_FIELDS))
_UNMANAGED = ", ".join(f"'{state}'" for state in sorted(s.value for s in UNMANAGED_STATES))
# rows already holding the bar's values are not rewritten (a bar close with nothing new)
_SCORES_UPDATE = ("UPDATE trades SET score = ?, layers = ? WHERE symbol = ? AND direction = ? "
                  f"AND state NOT IN ({_UNMANAGED}) AND (score != ? OR layers != ?)")


def load_trade(conn: sqlite3.Connection, ticket: int
               ) -> tuple[sqlite3.Row | None, list[sqlite3.Row]]:
    """On the database thread: one trade's row and its unresolved journal (LoadTrade)."""
    row = conn.execute("SELECT * FROM trades WHERE ticket = ?", (ticket,)).fetchone()
    if row is None:
        row = conn.execute("SELECT * FROM trades_archive WHERE ticket = ?", (ticket,)).fetchone()
    journal = conn.execute("SELECT * FROM actions WHERE ticket = ? AND status IN "
                           "('pending', 'sent', 'uncertain') ORDER BY seq", (ticket,)).fetchall()
    return row, journal


def write_batch(conn: sqlite3.Connection, messages: list[Any],
                deliveries: Sequence[tuple] = ()) -> int:
    """One transaction for ``messages`` and the webhook ``deliveries`` their events make, on
    the database thread; returns trades archived.

    ``BEGIN IMMEDIATE`` .. ``COMMIT`` in a single hand-off to aiosqlite's thread (four or more
    hand-offs per commit before: ~0.6 ms against ~0.15 ms for the fsync'd commit itself).
    Writes apply in order; consecutive trade writes go as one ``executemany`` per table, which
    keeps each table's order, so the last write of a ticket or journal row wins. Any error
    rolls back (unless SQLite already did, as on SQLITE_FULL) and propagates."""
    trades: list[tuple] = []
    transitions: list[tuple] = []
    actions: list[tuple] = []
    archived = 0

    def flush() -> None:
        if trades:
            conn.executemany(_UPSERT, trades)
        if transitions:
            conn.executemany(_TRANSITION_INSERT, transitions)
        if actions:
            conn.executemany(_ACTION_UPSERT, actions)
        trades.clear()
        transitions.clear()
        actions.clear()

    conn.execute("BEGIN IMMEDIATE")
    try:
        for msg in messages:
            if isinstance(msg, PutTrade | PutTrades):
                for put in _puts((msg,)):
                    trades.append(_trade_params(put.trade))
                    if (t := put.transition) is not None:
                        transitions.append((t.ticket, t.at, t.from_state, t.to_state, t.reason))
                    actions.extend(_action_params(a) for a in put.actions)
                continue
            flush()
            if isinstance(msg, PutScores):
                for direction, (score, layers) in msg.scores.items():
                    encoded = json.dumps(layers, sort_keys=True)
                    conn.execute(_SCORES_UPDATE, (score, encoded, msg.symbol,
                                                  Direction(direction).value, score, encoded))
            elif isinstance(msg, Probe):
                conn.execute("INSERT OR REPLACE INTO store_probe (id, at) VALUES (1, ?)",
                             (msg.at,))
            elif isinstance(msg, Archive):
                # only CLOSED rows, by construction: an open trade is never archived or deleted
                where = "state = 'CLOSED' AND closed_at > 0 AND closed_at < ?"
                archived += conn.execute(
                    f"INSERT OR REPLACE INTO trades_archive ({_COLUMNS}, archived_at) "
                    f"SELECT {_COLUMNS}, ? FROM trades WHERE {where}",
                    (msg.now, msg.before)).rowcount
                conn.execute(f"DELETE FROM trades WHERE {where}", (msg.before,))
            elif isinstance(msg, PutMeta):
                conn.execute("INSERT OR REPLACE INTO meta (key, value, updated_at) "
                             "VALUES (?, ?, ?)", (msg.key, json.dumps(msg.value), msg.at))
            elif isinstance(msg, AddRestart):
                e = msg.event
                conn.execute(
                    "INSERT INTO restarts (at, supervisor, child, kind, action, reason, "
                    "exception, attempt, backoff_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.at, e.supervisor, e.child, e.kind or e.child, e.action, e.reason,
                     e.exception, e.attempt, e.backoff_s))
            elif isinstance(msg, MarkDeliveries):
                _mark_deliveries(conn, msg)
            elif not isinstance(msg, EnqueueEvent):   # its rows are among ``deliveries``
                raise TypeError(f"store cannot write {msg!r}")
        flush()
        if deliveries:
            conn.executemany(_DELIVERY_INSERT, deliveries)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return archived


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path``; None where the filesystem gives no inode."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino) if st.st_ino else None


class StoreActor(Actor):
    def __init__(self, settings: StoreSettings, metrics: Metrics, mailbox_size: int = 8192,
                 events: EventBus | None = None, webhooks: WebhookQueue | None = None,
                 policy_mode: str = "live"):
        super().__init__("store", mailbox_size)
        self.policy_mode = policy_mode   # the configured policy.mode, for the notified views
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self.webhooks = webhooks   # which committed writes are webhook deliveries, if any
        self.db: aiosqlite.Connection | None = None
        self.schema_version = 0
        self.failing: str | None = None   # why writes fail (locked, full...), else None
        self.probe_interval_s = 2.0
        self.max_batch = max(1, settings.max_batch)
        self.path = Path(settings.path)
        self.identity: tuple[int, int] | None = None   # of the file opened, see file_identity

    async def connect(self, path: Path) -> aiosqlite.Connection:
        """The connection (aiosqlite's thread; a replay runs SQLite inline instead)."""
        return await aiosqlite.connect(path, isolation_level=None)

    async def on_start(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await self.connect(path)
        try:
            db.row_factory = sqlite3.Row
            await db.execute(f"PRAGMA busy_timeout={int(self.settings.busy_timeout_ms)}")
            await quick_check(db, path)   # before anything writes (WAL mode, migrations)
            mode = await (await db.execute("PRAGMA journal_mode=WAL")).fetchone()
            assert mode is not None   # the pragma always answers one row
            if mode[0].lower() != "wal":
                raise sqlite3.OperationalError(f"cannot enable WAL (journal_mode={mode[0]})")
            await db.execute(f"PRAGMA synchronous={self.settings.synchronous.upper()}")
            if self.settings.max_size_mb > 0:
                page_row = await (await db.execute("PRAGMA page_size")).fetchone()
                assert page_row is not None
                page = page_row[0]
                pages = max(1, int(self.settings.max_size_mb * 1024 * 1024 // page))
                await db.execute(f"PRAGMA max_page_count={pages}")
            await db.execute("PRAGMA foreign_keys=ON")
            self.schema_version = await migrate(db)
            if self.webhooks is not None:   # the queue's bound counts what a restart left
                row = await (await db.execute("SELECT COUNT(*) FROM webhook_deliveries")
                             ).fetchone()
                assert row is not None   # COUNT(*) always answers a row
                self.webhooks.opened(row[0])
            self.identity = file_identity(path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await db.close()
            raise
        self.db = db
        self.failing = None
        self.metrics.store_writable.set(1)
        self.spawn(self._archive_periodically)
        log.info("store open", extra={"path": str(path), "schema_version": self.schema_version})

    async def _archive_periodically(self) -> None:
        while True:
            now = time.time()
            await self.tell(Archive(now - self.settings.retention_days * 86400.0, now))
            await anyio.sleep(self.settings.archive_interval_s)

    async def on_stop(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            await db.close()
            log.info("store closed")

    # Group commit: the base loop hands every write queued back to back to ``handle_batch``.
    batch_types = WRITES

    async def handle_batch(self, writes: list[Envelope]) -> None:
        assert self.db is not None
        started = time.perf_counter()
        db = self.db
        try:
            # aiosqlite runs one function at a time on its thread with its connection; its
            # ``_execute`` is that primitive (every public method is built on it): the whole
            # transaction is one hand-off. Shielded: once sent, the outcome must be seen.
            messages = [env.message for env in writes]
            queue = self.webhooks
            plan = queue.plan(messages) if queue is not None else None
            # (the rows only when there are: write_batch(conn, messages) is the usual call)
            args = (messages, plan.rows) if plan is not None and plan.rows else (messages,)
            with anyio.CancelScope(shield=True):
                archived = await db._execute(write_batch, db._conn, *args)
        except sqlite3.Error as exc:
            self.metrics.store_errors.inc()
            log.error("store commit failed: %s", exc, extra={"writes": len(writes)})
            self._refuse(writes, f"database write failed: {exc}")
            if not isinstance(exc, sqlite3.OperationalError):
                raise  # a broken (e.g. corrupt) database is a crash: the supervisor decides
            # locked, busy, full, I/O: the file is there but refuses writes. Nothing was
            # acknowledged; DTMS answers NOT_READY until a write goes through again.
            self._set_failing(str(exc))
            return
        # Committed -- but into the file at the configured path? One stat per batch.
        moved = self._file_moved()
        if moved is not None:
            self.metrics.store_errors.inc()
            self._refuse(writes, moved)
            self._set_failing(moved)
            return
        self._set_failing(None)
        if queue is not None and plan is not None:
            queue.committed(plan)
        if archived:
            log.info("archived %d closed trades", archived, extra={"archived": archived})
        self.metrics.store_commit.observe(time.perf_counter() - started)
        puts = list(_puts(env.message for env in writes))
        self.metrics.store_batch.observe(  # rows of trades written, plus the other writes
            len(puts) + sum(not isinstance(env.message, PutTrade | PutTrades) for env in writes))
        for env in writes:
            if env.reply is not None:
                env.reply.set(True)
        for put in puts:
            if put.transition is not None:
                self._count(put.transition)
        if self.events is not None and len(self.events):
            for env in writes:
                self._publish(env.message)

    @staticmethod
    def _refuse(writes: list[Envelope], why: str) -> None:
        for env in writes:
            if env.reply is not None:
                env.reply.fail(NotReady(why, retry_after=5.0))

    def _file_moved(self) -> str | None:
        """Why the file at ``path`` is not the one opened (deleted, replaced), else None.

        Writes would go on into the open, unlinked file and vanish at the next start. This
        never clears by itself: the store keeps refusing until DTMS is restarted on a file it
        can trust. Skipped where the filesystem gives no inode (st_ino 0)."""
        if self.identity is None:
            return None
        try:
            now = file_identity(self.path)
        except FileNotFoundError:
            return (f"the database file {self.path} was deleted while DTMS had it open; "
                    f"nothing is stored until DTMS is restarted")
        except OSError as exc:
            return f"the database file {self.path} cannot be checked: {exc}"
        if now is not None and now != self.identity:
            return (f"the database file {self.path} was replaced while DTMS had it open "
                    f"(device/inode {self.identity[0]}/{self.identity[1]}, now "
                    f"{now[0]}/{now[1]}); nothing is stored until DTMS is restarted")
        return None

    def _set_failing(self, error: str | None) -> None:
        if error == self.failing:
            return
        if error is None:
            log.warning("store writable again after: %s", self.failing)
        else:
            log.error("store refuses writes: %s; DTMS is NOT_READY until it accepts them again",
                      error, extra={"error": error})
            if self.failing is None:
                self.spawn(self._probe)
        self.failing = error
        self.metrics.store_writable.set(0 if error else 1)

    async def _probe(self) -> None:
        """While writes fail, try a small write every few seconds (nobody else may write)."""
        while self.failing is not None:
            await anyio.sleep(self.probe_interval_s)
            await self.tell(Probe(time.time()))

    def _count(self, t: Transition) -> None:
        """Every committed transition passes here: the one place that keeps state metrics."""
        self.metrics.transitions.labels(t.from_state or "NEW", t.to_state).inc()
        if t.from_state:
            self.metrics.trades.labels(t.from_state).dec()
        self.metrics.trades.labels(t.to_state).inc()

    def _publish(self, message: Any) -> None:
        """The events of one committed write: a trade's change, its journal rows, a give-up."""
        assert self.events is not None
        if isinstance(message, AddRestart):
            if message.event.action == "give_up":
                self.events.publish("supervisor.giveup", giveup_data(message.event))
            return
        for put in _puts((message,)):
            if put.transition is not None:
                self.events.publish("trade.state", trade_state_data(put.trade, put.transition,
                                                                     self.policy_mode))
            else:
                self.events.publish("trade.updated", trade_updated_data(put.trade, self.policy_mode))
            for a in put.actions:
                if a.status in ACTION_EVENT_STATUSES:
                    self.events.publish("trade.action", trade_action_data(a, put.trade))

    async def _all(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        assert self.db is not None
        try:  # one hand-off to the database thread (execute + fetchall + close would be 3)
            return list(await self.db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:  # a broken database is a crash: the supervisor decides
            self.metrics.store_errors.inc()
            log.error("store read failed: %s", exc, extra={"sql": sql.split(" WHERE")[0]})
            raise

    async def handle(self, message: Any) -> Any:
        if isinstance(message, LoadTrade):
            assert self.db is not None
            try:
                row, journal = await self.db._execute(load_trade, self.db._conn,
                                                      message.ticket)
            except sqlite3.Error as exc:
                self.metrics.store_errors.inc()
                log.error("store read failed: %s", exc, extra={"ticket": message.ticket})
                raise
            return (trade_from_row(row) if row is not None else None,
                    [action_from_row(r) for r in journal])
        if isinstance(message, GetTrade):
            rows = await self._all("SELECT * FROM trades WHERE ticket = ?", (message.ticket,))
            if not rows:  # archived trades still answer `trade` and idempotent `register`
                rows = await self._all("SELECT * FROM trades_archive WHERE ticket = ?",
                                       (message.ticket,))
            return trade_from_row(rows[0]) if rows else None
        if isinstance(message, GetTrades):
            found: dict[int, Trade] = {}
            wanted = list(dict.fromkeys(message.tickets))
            for i in range(0, len(wanted), 400):
                chunk = tuple(wanted[i:i + 400])
                marks = ", ".join("?" * len(chunk))
                # both tables in one query; a ticket is in one of them at most (archived rows
                # are moved, never copied), the live one first should that ever not hold
                rows = await self._all(
                    f"SELECT {_COLUMNS}, 0 AS archived FROM trades WHERE ticket IN ({marks}) "
                    f"UNION ALL SELECT {_COLUMNS}, 1 FROM trades_archive "
                    f"WHERE ticket IN ({marks}) ORDER BY archived DESC", chunk + chunk)
                found.update((r["ticket"], trade_from_row(r)) for r in rows)
            return found
        if isinstance(message, ListTrades):
            where: list[str] = []
            params: list[Any] = []
            if message.state:
                where.append("state = ?")
                params.append(message.state)
            if message.symbol:
                where.append("symbol = ?")
                params.append(message.symbol)
            if message.open_only:
                where.append("state != 'CLOSED'")
            sql = "SELECT * FROM trades"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY ticket LIMIT ? OFFSET ?"
            rows = await self._all(sql, (*params, message.limit, message.offset))
            return [trade_from_row(r) for r in rows]
        if isinstance(message, ListTransitions):
            rows = await self._all("SELECT * FROM transitions WHERE ticket = ? AND at >= ? "
                                   "ORDER BY id LIMIT ?",
                                   (message.ticket, message.since, message.limit))
            return [dict(r) for r in rows]
        if isinstance(message, ListRestarts):
            sql, params = "SELECT * FROM restarts WHERE at >= ?", [message.since]
            if message.kind:
                sql += " AND kind = ?"
                params.append(message.kind)
            rows = await self._all(sql + " ORDER BY id DESC LIMIT ?", (*params, message.limit))
            return [dict(r) for r in rows]
        if isinstance(message, ListActions):
            sql, params = "SELECT * FROM actions WHERE created_at >= ?", [message.since]
            if message.ticket is not None:
                sql += " AND ticket = ?"
                params.append(message.ticket)
            if message.unresolved:
                sql += " AND status IN ('pending', 'sent', 'uncertain')"
            rows = await self._all(sql + " ORDER BY id DESC LIMIT ?", (*params, message.limit))
            return [action_from_row(r) for r in rows]
        if isinstance(message, DueDeliveries):
            assert self.db is not None
            try:
                return await self.db._execute(due_deliveries, self.db._conn, message)
            except sqlite3.Error as exc:
                self.metrics.store_errors.inc()
                log.error("store read failed: %s", exc, extra={"read": "webhook deliveries"})
                raise
        if isinstance(message, GetMeta):
            rows = await self._all("SELECT value FROM meta WHERE key = ?", (message.key,))
            return json.loads(rows[0]["value"]) if rows else None
        if isinstance(message, CountByState):
            rows = await self._all("SELECT state, COUNT(*) AS n FROM trades GROUP BY state")
            return {r["state"]: r["n"] for r in rows}
        raise TypeError(f"store cannot handle {message!r}")
