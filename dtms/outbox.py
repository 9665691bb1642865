"""A durable outbox for registrations made while DTMS is unreachable (SPEC section 9).

:class:`Outbox` owns one small SQLite file named by the caller (WAL journal,
``synchronous=FULL``) with two tables:

* ``outbox(id, created_at, ticket, payload, attempts, last_error)``: registrations not yet
  acknowledged by DTMS, delivered oldest first (``id`` is ``AUTOINCREMENT``, so ids are never
  reused and ``ORDER BY id`` is the order of arrival, across restarts of the caller too);
* ``dead(id, created_at, ticket, payload, attempts, died_at, error)``: registrations the service
  refused definitively, kept with the service's error map (JSON) for a human to look at.

It does not own the :class:`~dtms.client.Client`: the caller opens it (``async with``) and
closes it; its retries, timeout, circuit breaker and ``verify`` setting apply to every delivery.

Semantics
---------

``await outbox.register(trade)`` sends the registration now:

* acknowledged -> ``OutboxResult(status="delivered", reply=...)``. Success is only ever
  reported for a reply the service actually sent;
* DTMS unreachable or busy (:class:`~dtms.client.ServiceUnavailable`,
  :class:`~dtms.client.CircuitOpen`, :class:`~dtms.client.CallTimeout`,
  :class:`~dtms.errors.NotReady`, :class:`~dtms.errors.Overloaded`, or a
  :class:`~dtms.client.VerificationFailed` whose cause is one of these) -> the registration is
  appended to the file and committed (fsync'd) *before* ``OutboxResult(status="queued", id=...)``
  is returned;
* refused by the service (``InvalidArgument``, ``NotFound``, ``Conflict``, ``OwnedElsewhere``,
  ``Unauthenticated``, ``Internal``... or a read-back that contradicts the acknowledgement) ->
  the error is raised and nothing is queued.

Order: while older entries are pending, a new registration is not sent ahead of them.
``register`` first flushes; if entries remain (DTMS still down) the new one is queued behind
them without another network attempt, otherwise it is sent directly.

``await outbox.flush()`` delivers pending entries oldest first. An entry is deleted only after
the service's success reply arrived. The first transient failure stops the flush (the entry
stays at the head, its ``attempts``/``last_error`` updated) so order is kept. An entry refused
definitively moves to ``dead`` (with the error map) in one transaction and flushing continues
with the next one: never retried forever, never silently dropped. ``Unauthenticated`` is about
the client's token, not the entry, so it stops the flush and keeps every entry.

``outbox.run(interval)`` is a background task (``await tg.start(outbox.run)``) that flushes every
``interval`` seconds while entries are pending.

Duplicates are NOT coalesced: registering the same ticket twice while DTMS is down keeps both
entries, each exactly as given. Registration is idempotent (the first one creates the trade,
later ones answer ``created: false`` and change nothing), so delivering both is harmless, and
if the first is refused (e.g. a wrong ``symbol``) a corrected second one still gets through.

Unhappy paths
-------------

* the process dies after the service acknowledged but before the entry was deleted -> it is
  delivered again on the next flush; harmless because registration is idempotent. The same
  holds for a ``CallTimeout`` (the request may have been processed) and for two processes
  flushing the same file (use one file per process to avoid the redundant calls);
* the SQLite write fails (disk full, read-only file...) -> ``register`` raises the
  ``sqlite3.Error``: the registration is neither delivered nor queued, and the caller knows;
* a trade that cannot be stored as JSON -> ``TypeError``/``ValueError`` before anything is
  sent, so what is delivered is always exactly what would have been queued;
* cancellation -> an entry is never deleted without a reply; a queued write that already
  started completes (worker threads are not abandoned).

Example::

    async with Client(port=8001) as dtms, anyio.create_task_group() as tg:
        outbox = Outbox(dtms, "/var/lib/bot/dtms-outbox.sqlite3")
        await tg.start(outbox.run, 2.0)          # delivers the backlog once DTMS is back
        result = await outbox.register({"ticket": 123, "symbol": "EURUSD"})
        if result.status == "queued":
            log.warning("DTMS down; registration %s kept in the outbox", result.id)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
from anyio.abc import TaskStatus

from dtms.client import CallTimeout, Client, ServiceUnavailable, VerificationFailed
from dtms.errors import DtmsError, NotReady, Overloaded, Unauthenticated

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Failures after which the same registration may well succeed later: keep it and retry.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ServiceUnavailable, CallTimeout, NotReady, Overloaded)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    ticket INTEGER,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    ticket INTEGER,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    died_at REAL NOT NULL,
    error TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxResult:
    """What ``Outbox.register`` did: ``delivered`` (with the service's ``reply``) or ``queued``
    (with the outbox ``id`` and the ``error`` that prevented delivery)."""

    status: Literal["delivered", "queued"]
    id: int | None = None
    reply: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Delivered:
    id: int
    ticket: int | None
    reply: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Buried:
    id: int
    ticket: int | None
    error: dict[str, Any]


@dataclass(slots=True)
class FlushReport:
    """One flush: entries delivered and moved to ``dead`` (in order), entries still ``pending``
    afterwards, and the transient error that stopped it (``None`` if it ran dry)."""

    delivered: list[Delivered] = field(default_factory=list)
    dead: list[Buried] = field(default_factory=list)
    pending: int = 0
    stopped_by: str | None = None
    error: BaseException | None = field(default=None, repr=False, compare=False)


class _Transient(Exception):
    """Internal: a delivery failed in a way worth retrying later (or an auth failure)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(_describe(cause))
        self.cause = cause


class _Refused(Exception):
    """Internal: the service definitively refused the registration."""

    def __init__(self, cause: BaseException, error: dict[str, Any]) -> None:
        super().__init__(_describe(cause))
        self.cause = cause
        self.error = error


class Outbox:
    """Durable, ordered delivery of registrations; see the module docstring."""

    def __init__(self, client: Client, path: str | os.PathLike[str], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.path = os.fspath(path)
        self._clock = clock
        self._db_lock = threading.Lock()  # one sqlite connection, used from worker threads
        self._deliver_lock: anyio.Lock | None = None  # created lazily inside the event loop
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            self._db = None
            raise

    # ------------------------------------------------------------------ public API

    async def register(self, trade: dict[str, Any]) -> OutboxResult:
        """Deliver ``trade`` now, or queue it durably if DTMS is unreachable; raise if refused."""
        payload = _encode(trade)
        ticket = _ticket(trade)
        async with self._lock():
            if await self._db_call(self._count):
                report = await self._flush_locked()
                if isinstance(report.error, Unauthenticated):
                    raise report.error
                if report.pending:
                    why = (f"queued behind {report.pending} pending registration(s): "
                           f"{report.stopped_by}")
                    entry_id = await self._db_call(self._append, payload, ticket, 0, why)
                    log.warning("dtms outbox: ticket %s queued as #%d (%s)", ticket, entry_id, why)
                    return OutboxResult(status="queued", id=entry_id, error=why)
            try:
                reply = await self._deliver(json.loads(payload))
            except _Transient as exc:
                if isinstance(exc.cause, Unauthenticated):
                    raise exc.cause from None
                entry_id = await self._db_call(self._append, payload, ticket, 1, str(exc))
                log.warning("dtms outbox: DTMS unavailable, ticket %s queued as #%d: %s",
                            ticket, entry_id, exc)
                return OutboxResult(status="queued", id=entry_id, error=str(exc))
            except _Refused as exc:
                raise exc.cause from None
            return OutboxResult(status="delivered", reply=reply)

    async def flush(self) -> FlushReport:
        """Deliver pending entries oldest first; see the module docstring for the rules."""
        async with self._lock():
            return await self._flush_locked()

    async def run(self, interval: float = 1.0, *,
                  task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flush every ``interval`` seconds while entries are pending (until cancelled)."""
        task_status.started()
        while True:
            if await self._db_call(self._count):
                report = await self.flush()
                if report.delivered or report.dead:
                    log.info("dtms outbox: delivered %d, dead %d, %d still pending",
                             len(report.delivered), len(report.dead), report.pending)
            await anyio.sleep(interval)

    def pending(self) -> list[dict[str, Any]]:
        """Queued entries, oldest first: id, created_at, ticket, trade, attempts, last_error."""
        rows = self._query("SELECT id, created_at, ticket, payload, attempts, last_error "
                           "FROM outbox ORDER BY id")
        return [{"id": r[0], "created_at": r[1], "ticket": r[2], "trade": json.loads(r[3]),
                 "attempts": r[4], "last_error": r[5]} for r in rows]

    def dead(self) -> list[dict[str, Any]]:
        """Refused entries, oldest first, with the service's error map under ``error``."""
        rows = self._query("SELECT id, created_at, ticket, payload, attempts, died_at, error "
                           "FROM dead ORDER BY id")
        return [{"id": r[0], "created_at": r[1], "ticket": r[2], "trade": json.loads(r[3]),
                 "attempts": r[4], "died_at": r[5], "error": json.loads(r[6])} for r in rows]

    def close(self) -> None:
        """Close the SQLite file. Idempotent; the entries stay in the file."""
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ delivery

    def _lock(self) -> anyio.Lock:
        if self._deliver_lock is None:
            self._deliver_lock = anyio.Lock()
        return self._deliver_lock

    async def _deliver(self, trade: dict[str, Any]) -> dict[str, Any]:
        """One registration through the client; classify its failure."""
        try:
            return await self.client.register(trade)
        except TRANSIENT_ERRORS + (Unauthenticated,) as exc:
            raise _Transient(exc) from exc
        except VerificationFailed as exc:
            cause = exc.__cause__
            if isinstance(cause, TRANSIENT_ERRORS):
                raise _Transient(exc) from exc
            error: dict[str, Any] = {"code": "VERIFICATION_FAILED", "message": str(exc),
                                     "registration": exc.registration}
            if isinstance(cause, DtmsError):
                error["cause"] = cause.to_wire()
            raise _Refused(exc, error) from exc
        except DtmsError as exc:
            raise _Refused(exc, exc.to_wire()) from exc

    async def _flush_locked(self) -> FlushReport:
        report = FlushReport()
        while True:
            entry = await self._db_call(self._oldest)
            if entry is None:
                break
            entry_id, ticket, payload = entry
            try:
                reply = await self._deliver(json.loads(payload))
            except _Transient as exc:
                await self._db_call(self._failed, entry_id, str(exc))
                report.stopped_by, report.error = str(exc), exc.cause
                break
            except _Refused as exc:
                await self._db_call(self._bury, entry_id, exc.error)
                report.dead.append(Buried(entry_id, ticket, exc.error))
                log.error("dtms outbox: registration #%d (ticket %s) refused, moved to dead: %s",
                          entry_id, ticket, exc, extra={"ticket": ticket})
                continue
            await self._db_call(self._delete, entry_id)
            report.delivered.append(Delivered(entry_id, ticket, reply))
        report.pending = await self._db_call(self._count)
        return report

    # ------------------------------------------------------------------ sqlite (blocking)

    async def _db_call(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"outbox {self.path} is closed")
        return self._db

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._db_lock:
            return self._conn().execute(sql, params).fetchall()

    def _count(self) -> int:
        return self._query("SELECT COUNT(*) FROM outbox")[0][0]

    def _oldest(self) -> tuple[int, int | None, str] | None:
        rows = self._query("SELECT id, ticket, payload FROM outbox ORDER BY id LIMIT 1")
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def _append(self, payload: str, ticket: int | None, attempts: int, error: str) -> int:
        with self._db_lock:
            cur = self._conn().execute(
                "INSERT INTO outbox (created_at, ticket, payload, attempts, last_error) "
                "VALUES (?, ?, ?, ?, ?)", (self._clock(), ticket, payload, attempts, error))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def _failed(self, entry_id: int, error: str) -> None:
        with self._db_lock:
            self._conn().execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? "
                                 "WHERE id = ?", (error, entry_id))

    def _delete(self, entry_id: int) -> None:
        with self._db_lock:
            self._conn().execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    def _bury(self, entry_id: int, error: dict[str, Any]) -> None:
        with self._db_lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO dead (id, created_at, ticket, payload, "
                           "attempts, died_at, error) SELECT id, created_at, ticket, payload, "
                           "attempts + 1, ?, ? FROM outbox WHERE id = ?",
                           (self._clock(), json.dumps(error, default=repr), entry_id))
                db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def _encode(trade: dict[str, Any]) -> str:
    if not isinstance(trade, dict):
        raise TypeError(f"a registration is a dict, not {type(trade).__name__}")
    return json.dumps(trade, allow_nan=False, separators=(",", ":"))


def _ticket(trade: dict[str, Any]) -> int | None:
    ticket = trade.get("ticket")
    if isinstance(ticket, bool) or not isinstance(ticket, int):
        return None
    return ticket if -(2**63) <= ticket < 2**63 else None  # what an SQLite INTEGER holds


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = ["Outbox", "OutboxResult", "FlushReport", "Delivered", "Buried", "TRANSIENT_ERRORS"]
