"""Database faults: a locked database, a full one, a corrupt file. Each gives a clear error,
NOT_READY and a metric; nothing acknowledged is lost; DTMS never carries on without persistence."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys

import anyio
import pytest

from dtms.actors.schema import MIGRATIONS
from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.errors import NotReady
from tests.conftest import client_for, eventually, running
from tests.test_cli import dtms, env  # noqa: F401 - the env fixture

pytestmark = pytest.mark.anyio


async def test_a_locked_database_answers_not_ready_and_recovers_when_released(settings, sim):
    settings = settings.replace(store={"busy_timeout_ms": 100})
    first = sim.open_position("EURUSD", "BUY", 0.1)
    second = sim.open_position("EURUSD", "SELL", 0.1)
    async with running(settings, sim) as svc, client_for(svc, retries=0) as cl:
        svc.store.probe_interval_s = 0.05
        await cl.register({"ticket": first})
        other = sqlite3.connect(settings.store.path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")           # another process holds the write lock
        try:
            with pytest.raises(NotReady) as err:
                await cl.register({"ticket": second})
            assert "database write failed: database is locked" in err.value.message
            assert svc.metrics.store_errors._value.get() >= 1
            assert svc.metrics.store_writable._value.get() == 0
            health = await cl.health()
            assert health["ready"] is False
            with pytest.raises(NotReady, match="the database refuses writes"):
                await cl.trade(first)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await eventually(lambda: svc.ready, timeout=10)
        assert svc.metrics.store_writable._value.get() == 1
        assert (await cl.register({"ticket": second}))["created"] is True
        assert [t["ticket"] for t in (await cl.trades())["trades"]] == sorted([first, second])


async def test_a_full_database_refuses_the_write_and_keeps_what_it_has(settings):
    sim = SimTerminal(SimConfig(seed=7, balance=10_000_000), clock=ManualClock())
    # the broker-side floor off (issue 15): its stop writes would fill the file first, between
    # a registration's acknowledgement and its read-back
    settings = settings.replace(store={"max_size_mb": 0.15},
                                policy={"attach_sl_atr": 0.0, "attach_sl_points": 0.0})
    tickets = [sim.open_position("EURUSD", ("BUY", "SELL")[i % 2], 0.01)
               for i in range(1500)]
    acknowledged = []
    async with running(settings, sim) as svc, client_for(svc, retries=0) as cl:
        svc.store.probe_interval_s = 3600   # stays full: no probe succeeds in this test
        with pytest.raises(NotReady) as err:
            for t in tickets:
                await cl.register({"ticket": t, "comment": "x" * 100})
                acknowledged.append(t)
        assert "database or disk is full" in err.value.message
        assert svc.metrics.store_writable._value.get() == 0
        assert (await cl.health())["ready"] is False
    db = sqlite3.connect(settings.store.path)
    stored = {r[0] for r in db.execute("SELECT ticket FROM trades")}
    db.close()
    assert acknowledged and set(acknowledged) <= stored   # every acknowledged one is there


def test_a_corrupt_database_stops_dtms_with_a_clear_reason(env, tmp_path):  # noqa: F811
    path = tmp_path / "cli.sqlite3"
    path.write_bytes(b"this is not an SQLite database, just bytes " * 200)
    result = subprocess.run([sys.executable, "-m", "dtms", "serve"], capture_output=True,
                            text=True, env=dict(env, DTMS_SERVICE_STARTUP_TIMEOUT_S="20"),
                            timeout=90)
    assert result.returncode == 3, result.stderr[-3000:]
    assert (f"database {path} failed its integrity check (PRAGMA quick_check): file is not a "
            f"database") in result.stderr
    assert path.read_bytes().startswith(b"this is not an SQLite")  # untouched


async def test_a_database_file_deleted_under_dtms_acknowledges_nothing_more(settings, sim):
    first = sim.open_position("EURUSD", "BUY", 0.1)
    second = sim.open_position("EURUSD", "SELL", 0.1)
    path = settings.store.path
    async with running(settings, sim) as svc, client_for(svc, retries=0) as cl:
        svc.store.probe_interval_s = 0.05
        assert (await cl.register({"ticket": first}))["created"] is True
        os.unlink(path)   # deleted (or moved away) while DTMS has it open
        with pytest.raises(NotReady) as err:
            await cl.register({"ticket": second})
        assert err.value.message == (f"the database file {path} was deleted while DTMS had it "
                                     f"open; nothing is stored until DTMS is restarted")
        assert svc.metrics.store_writable._value.get() == 0
        assert (await cl.health())["ready"] is False
        await anyio.sleep(0.3)   # the store's probes keep writing into the lost file: no use
        with pytest.raises(NotReady, match=f"the database refuses writes .the database file "
                                           f"{path} was deleted"):
            await cl.register({"ticket": second})
        assert svc.metrics.store_writable._value.get() == 0


async def test_a_database_file_replaced_under_dtms_answers_not_ready_naming_it(settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.1)
    path = settings.store.path
    async with running(settings, sim) as svc, client_for(svc, retries=0) as cl:
        other = f"{path}.other"
        sqlite3.connect(other).close()
        os.replace(other, path)   # e.g. a backup restored over the live file
        with pytest.raises(NotReady) as err:
            await cl.register({"ticket": ticket})
        assert err.value.message.startswith(f"the database file {path} was replaced while DTMS "
                                            f"had it open (device/inode ")
        assert svc.store.failing == err.value.message
    # nothing of this run reached the file now at the path
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == []


def _corrupt_a_table_page(path, table: str) -> None:
    """Overwrite bytes in the middle of a leaf page of ``table`` (not the file's header)."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    base = (root - 1) * page_size
    assert data[base] == 0x05   # an interior table page: its right-most child is a leaf
    leaf = struct.unpack(">I", data[base + 8:base + 12])[0]
    assert data[(leaf - 1) * page_size] == 0x0D
    middle = (leaf - 1) * page_size + page_size // 2
    data[middle:middle + 64] = b"CORRUPT!" * 8
    path.write_bytes(bytes(data))


def test_a_database_with_a_corrupted_page_stops_dtms_before_it_touches_it(env, tmp_path):  # noqa: F811
    path = tmp_path / "cli.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, script in enumerate(MIGRATIONS[:4], start=1):   # an older version: a start
        db.executescript(script)                                 # would migrate it
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))
    for i in range(300):
        db.execute("INSERT INTO transitions (ticket, at, from_state, to_state, reason) "
                   "VALUES (?, 1.0, 'HEALTHY', 'WARNING_L1', ?)", (i, "x" * 50))
    db.close()
    _corrupt_a_table_page(path, "transitions")
    damaged = path.read_bytes()
    result = subprocess.run([sys.executable, "-m", "dtms", "serve"], capture_output=True,
                            text=True, env=dict(env, DTMS_SERVICE_STARTUP_TIMEOUT_S="20"),
                            timeout=60)
    assert result.returncode == 3, result.stderr[-3000:]
    assert (f"database {path} failed its integrity check (PRAGMA quick_check): "
            f"database disk image is malformed") in result.stderr
    assert path.read_bytes() == damaged   # no migration, no write
