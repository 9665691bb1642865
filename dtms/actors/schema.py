"""The database's schema and its integrity check: forward migrations, applied in order.

``MIGRATIONS[i]`` brings a database from version ``i`` to ``i + 1`` (statements separated by
``;``, each version in one ``BEGIN IMMEDIATE`` transaction); ``schema_version`` records the
level; a database newer than this DTMS is refused. ``quick_check`` runs ``PRAGMA quick_check``
before anything is migrated or written. The store actor (:mod:`dtms.actors.store`) is the only
caller in the service; the benchmarks build their databases with them too.

Example::

    async with aiosqlite.connect(path, isolation_level=None) as db:
        await quick_check(db, path)
        assert await migrate(db) == len(MIGRATIONS)
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import aiosqlite

log = logging.getLogger("dtms.actors.store")

MIGRATIONS: list[str] = [
    # v1: trades with their full state, transitions, action journal, restart history
    """
    CREATE TABLE trades (
        ticket INTEGER PRIMARY KEY, symbol TEXT NOT NULL, direction TEXT NOT NULL,
        entry_price REAL NOT NULL, volume REAL NOT NULL, initial_volume REAL NOT NULL,
        sl REAL NOT NULL, tp REAL NOT NULL, initial_sl REAL NOT NULL,
        state TEXT NOT NULL, state_since REAL NOT NULL,
        strategy_type TEXT NOT NULL DEFAULT '', owner TEXT NOT NULL DEFAULT '',
        magic INTEGER NOT NULL DEFAULT 0, comment TEXT NOT NULL DEFAULT '',
        policy TEXT NOT NULL DEFAULT '{}', score REAL NOT NULL DEFAULT 0,
        hedge_ticket INTEGER NOT NULL DEFAULT 0, paused INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, closed_at REAL NOT NULL DEFAULT 0,
        close_reason TEXT NOT NULL DEFAULT '', close_price REAL NOT NULL DEFAULT 0,
        profit REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX trades_state ON trades(state);
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ticket INTEGER NOT NULL, at REAL NOT NULL,
        from_state TEXT NOT NULL, to_state TEXT NOT NULL, reason TEXT NOT NULL
    );
    CREATE INDEX transitions_ticket ON transitions(ticket);
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ticket INTEGER NOT NULL, kind TEXT NOT NULL,
        status TEXT NOT NULL, created_at REAL NOT NULL, resolved_at REAL NOT NULL DEFAULT 0,
        request TEXT NOT NULL DEFAULT '{}', retcode INTEGER NOT NULL DEFAULT 0,
        result TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX actions_ticket ON actions(ticket);
    CREATE TABLE restarts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, supervisor TEXT NOT NULL,
        child TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
        exception TEXT NOT NULL, attempt INTEGER NOT NULL, backoff_s REAL NOT NULL
    );
    """,
    # v2: the kind of child in the restart history (trade, store, broker...), queried by time
    """
    ALTER TABLE restarts ADD COLUMN kind TEXT NOT NULL DEFAULT '';
    CREATE INDEX restarts_at ON restarts(at);
    """,
    # v3: closed trades past their retention move here (still readable by ticket)
    """
    CREATE TABLE trades_archive AS SELECT *, 0.0 AS archived_at FROM trades WHERE 0;
    CREATE UNIQUE INDEX trades_archive_ticket ON trades_archive(ticket);
    """,
    # v4: the engine's state per trade (timers, hedge size, score layers, obligations) and a
    # journal row named by (ticket, seq), which the order comment carries
    """
    ALTER TABLE trades ADD COLUMN opened_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE trades ADD COLUMN flat_since REAL NOT NULL DEFAULT 0;
    ALTER TABLE trades ADD COLUMN recovery_since REAL NOT NULL DEFAULT 0;
    ALTER TABLE trades ADD COLUMN hedge_volume REAL NOT NULL DEFAULT 0;
    ALTER TABLE trades ADD COLUMN layers TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE trades ADD COLUMN obligations TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE trades ADD COLUMN action_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE trades_archive ADD COLUMN opened_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE trades_archive ADD COLUMN flat_since REAL NOT NULL DEFAULT 0;
    ALTER TABLE trades_archive ADD COLUMN recovery_since REAL NOT NULL DEFAULT 0;
    ALTER TABLE trades_archive ADD COLUMN hedge_volume REAL NOT NULL DEFAULT 0;
    ALTER TABLE trades_archive ADD COLUMN layers TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE trades_archive ADD COLUMN obligations TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE trades_archive ADD COLUMN action_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE actions ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE actions ADD COLUMN obligation TEXT NOT NULL DEFAULT '';
    ALTER TABLE actions ADD COLUMN reason TEXT NOT NULL DEFAULT '';
    UPDATE actions SET seq = id;
    CREATE UNIQUE INDEX actions_ticket_seq ON actions(ticket, seq);
    CREATE INDEX actions_open ON actions(status) WHERE status IN ('pending', 'sent', 'uncertain');
    CREATE TABLE store_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
    """,
    # v5: facts about the database itself, e.g. key "account": the broker account it belongs to
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
    """,
    # v6: the defensive cuts are owed once per trade (issue 13). Before, a state change dropped
    # a done "L2:partial" or "hedge" obligation, so a trade stored then would be cut again at
    # its next WARNING_L2/HEDGED: the journal says which cuts were made; mark them done.
    """
    UPDATE trades SET obligations = json_set(obligations, '$."L2:partial"', 'done')
     WHERE state != 'CLOSED' AND json_extract(obligations, '$."L2:partial"') IS NULL
       AND EXISTS (SELECT 1 FROM actions a WHERE a.ticket = trades.ticket
                   AND a.obligation = 'L2:partial' AND a.status = 'done');
    UPDATE trades SET obligations = json_set(obligations, '$."hedge"', 'done')
     WHERE state != 'CLOSED' AND json_extract(obligations, '$."hedge"') IS NULL
       AND EXISTS (SELECT 1 FROM actions a WHERE a.ticket = trades.ticket
                   AND a.obligation = 'hedge' AND a.status = 'done');
    """,
    # v7: the webhooks' durable queue (issue 17 part 2). A row is one event for one endpoint,
    # written in the commit of what caused it and deleted once the endpoint took it; rows of
    # one (url, ticket) go out oldest first, one at a time (ticket 0: events of no trade).
    # ``head`` marks each stream's oldest row (set at insert when the stream is empty, passed on
    # when a head is deleted: dtms.actors.store), so the due heads are read from a small index
    # instead of grouping the whole queue at every look. ``delivery`` is unique by
    # construction (dtms.webhooks.queue), not by an index each commit would have to write.
    """
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT, delivery TEXT NOT NULL,
        url TEXT NOT NULL, event TEXT NOT NULL, ticket INTEGER NOT NULL DEFAULT 0,
        at REAL NOT NULL, body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
        head INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX webhook_deliveries_stream ON webhook_deliveries(url, ticket);
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_at, id) WHERE head = 1;
    """,
]


async def quick_check(db: aiosqlite.Connection, path: Path) -> None:
    """``PRAGMA quick_check``: a damaged file raises ``sqlite3.DatabaseError`` with SQLite's
    own words, before anything is migrated or written."""
    # its messages may quote the damaged bytes: read them as text whatever they hold
    db.text_factory = lambda raw: raw.decode("utf-8", "replace")
    try:
        rows = await db.execute_fetchall("PRAGMA quick_check")
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise sqlite3.DatabaseError(f"database {path} failed its integrity check "
                                    f"(PRAGMA quick_check): {exc}") from exc
    finally:
        db.text_factory = str
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    if problems:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)"
                                           if len(problems) > 5 else "")
        raise sqlite3.DatabaseError(f"database {path} failed its integrity check "
                                    f"(PRAGMA quick_check): {shown}")


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring the schema to the newest version; returns it."""
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = await (await db.execute("SELECT MAX(version) FROM schema_version")).fetchone()
    assert row is not None   # an aggregate always answers one row
    version = row[0] or 0
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(f"database schema v{version} is newer than this DTMS "
                                    f"(v{len(MIGRATIONS)})")
    for target in range(version + 1, len(MIGRATIONS) + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1].split(";"):
                if statement.strip():
                    await db.execute(statement)
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        log.info("store migrated", extra={"schema_version": target})
    return len(MIGRATIONS)


__all__ = ["MIGRATIONS", "migrate", "quick_check"]
