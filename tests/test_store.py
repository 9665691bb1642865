"""The store actor on a real SQLite file: migrations, durability, group commit, reads."""

from __future__ import annotations

import sqlite3

import aiosqlite
import anyio
import pytest

from dtms.actors.schema import MIGRATIONS, migrate
from dtms.actors.store import (
    Archive,
    GetMeta,
    GetTrade,
    ListTrades,
    LoadTrade,
    PutMeta,
    PutScores,
    PutTrade,
    StoreActor,
    trade_from_row,
    write_batch,
)
from dtms.config import StoreSettings
from dtms.metrics import Metrics
from dtms.model import UNMANAGED_STATES, ActionRecord, Direction, Trade, TradeState, Transition

pytestmark = pytest.mark.anyio


def trade(ticket: int, **kw) -> Trade:
    base = dict(ticket=ticket, symbol="EURUSD", direction=Direction.BUY, entry_price=1.085,
                volume=0.1, initial_volume=0.1, sl=1.08, tp=0.0, initial_sl=1.08,
                created_at=1.0, updated_at=1.0, policy={"breakeven_r": 1.0})
    base.update(kw)
    return Trade(**base)


def database_at(path, version: int) -> sqlite3.Connection:
    """A database file as DTMS left it at schema ``version``, open for the test to fill."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for v, script in enumerate(MIGRATIONS[:version], start=1):
        db.executescript(script)
        db.execute("INSERT INTO schema_version VALUES (?)", (v,))
    return db


async def test_migrations_from_empty_reach_the_latest_version(tmp_path):
    async with aiosqlite.connect(tmp_path / "m.sqlite3", isolation_level=None) as db:
        assert await migrate(db) == len(MIGRATIONS) == 7
        assert await migrate(db) == 7  # idempotent
        rows = await (await db.execute("SELECT version FROM schema_version")).fetchall()
        tables = await (await db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert {t[0] for t in tables} >= {"trades", "transitions", "actions", "restarts",
                                      "trades_archive", "meta"}


async def test_a_v1_database_with_history_migrates_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO restarts (at, supervisor, child, action, reason, exception, attempt,"
               " backoff_s) VALUES (5.0, 'trades', '42', 'restart', 'crash', 'E()', 1, 0.1)")
    db.execute("INSERT INTO trades (ticket, symbol, direction, entry_price, volume, "
               "initial_volume, sl, tp, initial_sl, state, state_since, created_at, updated_at) "
               "VALUES (7, 'EURUSD', 'BUY', 1.1, 0.1, 0.1, 1.09, 0, 1.09, 'WARNING_L2', 3.0, "
               "1.0, 2.0)")
    db.execute("INSERT INTO actions (ticket, kind, status, created_at) "
               "VALUES (7, 'MODIFY_SL', 'sent', 2.5)")
    db.close()
    async with aiosqlite.connect(path, isolation_level=None) as adb:
        assert await migrate(adb) == 7
        adb.row_factory = sqlite3.Row
        rows = await (await adb.execute("SELECT child, kind, action FROM restarts")).fetchall()
        trades = await (await adb.execute("SELECT * FROM trades")).fetchall()
        actions = await (await adb.execute("SELECT * FROM actions")).fetchall()
    assert [tuple(r) for r in rows] == [("42", "", "restart")]
    restored = trade_from_row(trades[0])
    assert (restored.state, restored.state_since, restored.obligations, restored.flat_since,
            restored.action_seq) == (TradeState.WARNING_L2, 3.0, {}, 0.0, 0)
    assert (actions[0]["seq"], actions[0]["status"], actions[0]["obligation"]) == (1, "sent", "")


async def test_a_v4_database_with_trades_migrates_with_an_empty_meta_table(tmp_path):
    path = tmp_path / "v4.sqlite3"
    db = database_at(path, 4)
    write_batch(db, [PutTrade(trade(7, state=TradeState.HEALTHY))])   # a v4 row
    db.close()

    store = StoreActor(StoreSettings(path=str(path)), Metrics())
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        assert store.schema_version == 7
        assert (await store.ask(GetTrade(7))).state is TradeState.HEALTHY
        assert await store.ask(GetMeta("account")) is None
        record = {"login": 5001234, "server": "DTMS-Sim", "currency": "USD"}
        assert await store.ask(PutMeta("account", record, 10.0)) is True
        assert await store.ask(GetMeta("account")) == record
        await store.stop()
    db = sqlite3.connect(path)
    assert db.execute("SELECT key, value, updated_at FROM meta").fetchall() == [
        ("account", '{"login": 5001234, "server": "DTMS-Sim", "currency": "USD"}', 10.0)]
    db.close()


async def test_cuts_made_before_v6_are_marked_done_from_the_journal(tmp_path):
    """Before v6 a state change dropped a done L2 close or hedge, so the trade would be cut
    again at its next WARNING_L2/HEDGED; the migration restores them from the journal."""
    path = tmp_path / "v5.sqlite3"
    db = database_at(path, 5)
    write_batch(db, [
        PutTrade(trade(1, state=TradeState.WARNING_L1, obligations={"sl:L1": "done"}),
                 actions=(ActionRecord(1, 1, "PARTIAL_CLOSE", "L2:partial", "warning L2",
                                       "done", 1.0),
                          ActionRecord(1, 2, "HEDGE", "hedge", "hedged", "done", 2.0))),
        PutTrade(trade(2, state=TradeState.WARNING_L1),      # its L2 close failed: still owed
                 actions=(ActionRecord(2, 1, "PARTIAL_CLOSE", "L2:partial", "warning L2",
                                       "failed", 1.0),)),
        PutTrade(trade(3, state=TradeState.HEALTHY, obligations={"L2:partial": "pending"}),
                 actions=(ActionRecord(3, 1, "PARTIAL_CLOSE", "L2:partial", "warning L2",
                                       "done", 1.0),)),
    ])
    db.close()
    async with aiosqlite.connect(path, isolation_level=None) as adb:
        assert await migrate(adb) == 7
        adb.row_factory = sqlite3.Row
        rows = await (await adb.execute("SELECT * FROM trades ORDER BY ticket")).fetchall()
    assert [trade_from_row(r).obligations for r in rows] == [
        {"sl:L1": "done", "L2:partial": "done", "hedge": "done"},
        {},
        {"L2:partial": "pending"},   # a status already there is the trade's own word
    ]


async def test_a_newer_schema_is_refused(tmp_path):
    async with aiosqlite.connect(tmp_path / "n.sqlite3", isolation_level=None) as db:
        await migrate(db)
        await db.execute("INSERT INTO schema_version (version) VALUES (99)")
        with pytest.raises(sqlite3.DatabaseError, match="schema v99 is newer"):
            await migrate(db)


async def test_writes_are_group_committed_and_durable_when_acknowledged(tmp_path):
    metrics = Metrics()
    store = StoreActor(StoreSettings(path=str(tmp_path / "s.sqlite3")), metrics)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        async with anyio.create_task_group() as writers:
            for i in range(1, 201):
                writers.start_soon(store.ask, PutTrade(trade(i), Transition(i, 1.0, "", "HEALTHY",
                                                                           "registered")))
        # every acknowledged write is in the file, seen by another connection
        db = sqlite3.connect(tmp_path / "s.sqlite3")
        assert db.execute("SELECT COUNT(*) FROM trades").fetchone() == (200,)
        assert db.execute("SELECT COUNT(*) FROM transitions").fetchone() == (200,)
        db.close()
        commits = metrics.store_batch.collect()[0]
        count = next(s.value for s in commits.samples if s.name.endswith("_count"))
        total = next(s.value for s in commits.samples if s.name.endswith("_sum"))
        assert total == 201  # 200 writes + the archive pass the store makes when it opens
        assert count < 201  # grouped: fewer transactions than writes
        t = await store.ask(GetTrade(7))
        assert t == trade(7)
        await store.ask(PutTrade(t.copy(state=TradeState.CLOSED, close_reason="SL")))
        open_trades = await store.ask(ListTrades(open_only=True, limit=1000))
        assert len(open_trades) == 199 and 7 not in {x.ticket for x in open_trades}
        assert [x.ticket for x in await store.ask(ListTrades(state="CLOSED"))] == [7]
        await store.stop()
    assert store.db is None  # closed on the way out


async def test_closed_trades_past_retention_are_archived_and_open_ones_never(tmp_path):
    store = StoreActor(StoreSettings(path=str(tmp_path / "r.sqlite3"), retention_days=30.0,
                                     archive_interval_s=3600.0), Metrics())
    day = 86400.0
    now = 100 * day
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        old_closed = trade(1, state=TradeState.CLOSED, closed_at=now - 31 * day, close_reason="SL")
        new_closed = trade(2, state=TradeState.CLOSED, closed_at=now - 29 * day)
        old_open = trade(3, created_at=now - 90 * day)  # open for 90 days: stays
        suspended = trade(4, state=TradeState.SUSPENDED, created_at=now - 90 * day)
        for t in (old_closed, new_closed, old_open, suspended):
            await store.ask(PutTrade(t))
        await store.ask(Archive(before=now - 30 * day, now=now))
        live = await store.ask(ListTrades(limit=100))
        assert [t.ticket for t in live] == [2, 3, 4]
        assert await store.ask(GetTrade(1)) == old_closed  # still answers by ticket
        db = sqlite3.connect(tmp_path / "r.sqlite3")
        assert db.execute("SELECT ticket, archived_at FROM trades_archive").fetchall() == [
            (1, now)]
        db.close()
        await store.ask(Archive(before=now - 30 * day, now=now))  # idempotent
        assert [t.ticket for t in await store.ask(ListTrades(limit=100))] == [2, 3, 4]
        await store.stop()


async def test_get_trades_answers_stored_and_archived_tickets_and_skips_unknown_ones(tmp_path):
    from dtms.actors.store import GetTrades, PutTrades

    store = StoreActor(StoreSettings(path=str(tmp_path / "g.sqlite3"), archive_interval_s=3600.0),
                       Metrics())
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        closed = trade(5, state=TradeState.CLOSED, closed_at=10.0, close_reason="TP")
        # 600 trades in one message: one commit, past the 500 tickets of one IN (...) query
        await store.ask(PutTrades(tuple(PutTrade(trade(i)) for i in range(1, 601))))
        await store.ask(PutTrade(closed))
        await store.ask(Archive(before=20.0, now=30.0))
        found = await store.ask(GetTrades((5, 1, 600, 601, 1, 9999)))
        assert sorted(found) == [1, 5, 600]
        assert found[5] == closed and found[600] == trade(600)
        db = sqlite3.connect(tmp_path / "g.sqlite3")
        assert db.execute("SELECT COUNT(*) FROM trades").fetchone() == (599,)
        assert db.execute("SELECT ticket FROM trades_archive").fetchall() == [(5,)]
        db.close()
        await store.stop()


async def test_a_batch_writes_rows_in_order_so_the_last_write_of_a_ticket_wins(tmp_path):
    from dtms.actors.store import PutTrades

    metrics = Metrics()
    store = StoreActor(StoreSettings(path=str(tmp_path / "o.sqlite3"), archive_interval_s=3600.0),
                       metrics)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        def committed() -> tuple[float, float]:
            batch = metrics.store_batch.collect()[0]
            return tuple(next(s.value for s in batch.samples if s.name.endswith(x))
                         for x in ("_count", "_sum"))

        with anyio.fail_after(5):
            while committed()[0] < 1:  # the archive pass the store makes on open
                await anyio.sleep(0.01)
        count0, sum0 = committed()
        first = trade(1)
        later = first.copy(state=TradeState.WARNING_L1, sl=1.082, updated_at=2.0)
        await store.ask(PutTrades((
            PutTrade(first, Transition(1, 1.0, "", "HEALTHY", "registered")),
            PutTrade(trade(2)),
            PutTrade(later, Transition(1, 2.0, "HEALTHY", "WARNING_L1", "score -2.5")))))
        assert await store.ask(GetTrade(1)) == later
        db = sqlite3.connect(tmp_path / "o.sqlite3")
        assert db.execute("SELECT from_state, to_state FROM transitions ORDER BY id").fetchall() \
            == [("", "HEALTHY"), ("HEALTHY", "WARNING_L1")]
        db.close()
        assert committed() == (count0 + 1, sum0 + 3)  # one commit for the three trade writes
        await store.stop()


BAR = {"vwap": 0.9333, "momentum": 2.5}


def scores_of(db: sqlite3.Connection) -> dict[int, tuple[float, str]]:
    return {t: (score, layers) for t, score, layers in
            db.execute("SELECT ticket, score, layers FROM trades")}


def test_put_scores_writes_every_managed_trade_of_its_symbol_and_direction_only(tmp_path):
    """The whole table: every state x direction x symbol; only managed EURUSD BUYs move."""
    db = database_at(tmp_path / "s.sqlite3", len(MIGRATIONS))
    rows = [(state, direction, symbol) for state in TradeState for direction in Direction
            for symbol in ("EURUSD", "GBPUSD")]
    write_batch(db, [PutTrade(trade(i, state=state, direction=direction, symbol=symbol,
                                    score=-1.0, layers={"vwap": -1.0}))
                     for i, (state, direction, symbol) in enumerate(rows, start=1)])
    write_batch(db, [PutScores("EURUSD", {Direction.BUY: (4.4333, BAR)})])
    scores = scores_of(db)
    for i, (state, direction, symbol) in enumerate(rows, start=1):
        takes = (symbol, direction) == ("EURUSD", Direction.BUY) and state not in UNMANAGED_STATES
        assert scores[i] == ((4.4333, '{"momentum": 2.5, "vwap": 0.9333}') if takes
                             else (-1.0, '{"vwap": -1.0}')), (state, direction, symbol)
    assert sum(1 for s in scores.values() if s[0] == 4.4333) == 5   # HEALTHY..RECOVERING
    db.close()


def test_a_trade_write_built_before_the_bar_keeps_the_bars_stored_score(tmp_path):
    """A trade acting while the bar closed writes its row with the score from before it:
    the bar's score, stored for it by PutScores, stays. Only an insert writes a score."""
    db = database_at(tmp_path / "r.sqlite3", len(MIGRATIONS))
    old = trade(1, score=-1.0, layers={"vwap": -1.0})
    write_batch(db, [PutTrade(old), PutScores("EURUSD", {Direction.BUY: (4.4333, BAR)})])
    write_batch(db, [PutTrade(old.copy(sl=1.083, updated_at=2.0))])    # its own change
    write_batch(db, [PutTrade(trade(2, score=0.5, layers={"ema": 0.5}))])   # a new row
    rows = {r[0]: r[1:] for r in db.execute("SELECT ticket, score, layers, sl FROM trades")}
    assert rows == {1: (4.4333, '{"momentum": 2.5, "vwap": 0.9333}', 1.083),
                    2: (0.5, '{"ema": 0.5}', 1.08)}
    db.close()


async def test_load_trade_reads_the_row_and_its_unresolved_journal_in_one_ask(tmp_path):
    store = StoreActor(StoreSettings(path=str(tmp_path / "l.sqlite3")), Metrics())
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        rows = tuple(ActionRecord(7, seq, "MODIFY_SL", f"sl:{seq}", "r", status, float(seq))
                     for seq, status in ((3, "sent"), (1, "done"), (2, "uncertain"),
                                         (4, "pending"), (5, "failed")))
        await store.ask(PutTrade(trade(7), actions=rows))
        loaded, journal = await store.ask(LoadTrade(7))
        assert loaded == await store.ask(GetTrade(7))
        assert [(a.seq, a.status) for a in journal] == [(2, "uncertain"), (3, "sent"),
                                                        (4, "pending")]
        assert await store.ask(LoadTrade(8)) == (None, [])
        await store.stop()
