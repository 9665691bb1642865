"""Database faults: a locked database, a full one, a corrupt file. Each gives a clear error,
NOT_READY and a metric; nothing acknowledged is lost; DTMS never carries on without persistence."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

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
    settings = settings.replace(store={"max_size_mb": 0.15})
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
    assert result.returncode in (1, 3)
    assert "file is not a database" in result.stderr
    assert path.read_bytes().startswith(b"this is not an SQLite")  # untouched
