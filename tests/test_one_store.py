"""One store, one account, one DTMS (SPEC section 15, issue 13 item 10).

A second DTMS on a database that one already serves exits 3 naming the holder, and touches
nothing; a SIGKILLed holder leaves no stale lock. The database remembers the broker account it
belongs to; a start against another account exits 3 naming both, touching no trade, unless
``--adopt-account``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.cli import _find, build_parser
from dtms.config import Settings
from dtms.policy.account import check_account
from dtms.service import Service, StartupFailed
from dtms.storelock import StoreInUse, StoreLock
from tests.conftest import client_for, running
from tests.test_cli import dtms, env, free_port  # noqa: F401 - the env fixture

pytestmark = pytest.mark.anyio

TESTS = str(Path(__file__).resolve().parent)


def _rows(path: str, sql: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _wait_ready(environ: dict, proc: subprocess.Popen, log: Path, trades: int = 0) -> None:
    deadline = time.monotonic() + 60
    while True:
        health = dtms("health", env=environ)
        if health.returncode == 0:
            listed = json.loads(dtms("trades", "--json", env=environ).stdout)["trades"]
            if len(listed) >= trades:
                return
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


async def start_failure(svc: Service) -> BaseException:
    """The StartupFailed that ends ``svc.run()`` (raised alone or in a task group's group)."""
    with anyio.fail_after(20):
        try:
            await svc.run()
        except BaseException as exc:  # noqa: BLE001 - examined below
            found = _find(exc, (StartupFailed,))
            if found is None:
                raise
            return found
    raise AssertionError("the service started")


# -- the lock ---------------------------------------------------------------------------------

def test_the_store_lock_is_exclusive_and_names_its_holder(tmp_path):
    db = tmp_path / "d.sqlite3"
    with StoreLock(db) as held:
        assert (tmp_path / "d.sqlite3.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(StoreInUse) as err:
            StoreLock(db).acquire()
        assert str(err.value).startswith(
            f"the database {db} is in use by another DTMS (pid {os.getpid()}; "
            f"lock file {held.path})")
    with StoreLock(db):  # released with the first
        pass


async def test_a_second_service_on_the_same_database_fails_to_start_and_writes_nothing(
        settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.1)
    async with running(settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        before = _rows(settings.store.path, "SELECT * FROM trades")
        other = Service(settings.replace(rpc={"port": 0}, metrics={"port": 0}),
                        module=SimTerminal(SimConfig(seed=8), clock=ManualClock()))
        assert "is in use by another DTMS" in str(await start_failure(other))
        assert other.store.db is None            # never opened
        assert (await cl.trade(ticket))["state"] == "HEALTHY"
        assert _rows(settings.store.path, "SELECT * FROM trades") == before


def test_a_second_dtms_serve_exits_3_naming_the_holder_and_a_sigkill_leaves_no_lock(
        env, tmp_path):  # noqa: F811
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "dtms", "serve", "--demo", "3"],
                                 stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(env, first, log, trades=3)
        db = env["DTMS_STORE_PATH"]
        before = _rows(db, "SELECT ticket, state, close_reason FROM trades ORDER BY ticket")
        assert [r[1] for r in before] == ["HEALTHY"] * 3
        second_env = dict(env, DTMS_RPC_PORT=str(free_port()),
                          DTMS_METRICS_PORT=str(free_port()))
        second = dtms("serve", env=second_env, timeout=60)
        assert second.returncode == 3, second.stderr[-2000:]
        assert (f"the database {db} is in use by another DTMS (pid {first.pid}; "
                f"lock file {db}.lock)") in second.stderr
        assert "Traceback" not in second.stderr
        assert _rows(db, "SELECT ticket, state, close_reason FROM trades ORDER BY ticket") == before
        assert dtms("health", env=env).returncode == 0     # the first one serves on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    # the lock died with its process: a new DTMS starts on the same file
    third_log = tmp_path / "third.log"
    with open(third_log, "w") as out:
        third = subprocess.Popen([sys.executable, "-m", "dtms", "serve"], stdout=out,
                                 stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(env, third, third_log)
    finally:
        third.send_signal(signal.SIGTERM)
        third.wait(timeout=30)


# -- the account ------------------------------------------------------------------------------

STORED = {"login": 5001234, "server": "DTMS-Sim", "currency": "USD"}


@pytest.mark.parametrize(("current", "adopt", "action"), [
    (STORED, False, "keep"),
    ({**STORED, "currency": "EUR"}, False, "keep"),
    ({**STORED, "login": 7}, False, "refuse"),
    ({**STORED, "server": "Other-Live"}, False, "refuse"),
    ({**STORED, "login": 7, "server": "Other-Live"}, False, "refuse"),
    ({**STORED, "login": 7}, True, "adopt"),
    (STORED, True, "keep"),
])
def test_the_account_verdict_table(current, adopt, action):
    verdict = check_account(STORED, current, adopt=adopt)
    assert verdict.action == action
    if action == "refuse":
        assert (f"login {current['login']} on server {current['server']!r}" in verdict.message
                and "login 5001234 on server 'DTMS-Sim'" in verdict.message
                and verdict.message.endswith("run: dtms serve --adopt-account"))
    assert check_account(None, current, adopt=adopt).action == "record"


def other_account() -> SimTerminal:
    return SimTerminal(SimConfig(seed=7, login=777, server="Other-Live"), clock=ManualClock())


async def test_a_start_against_another_account_fails_touching_no_trade_until_adopted(
        settings, sim):
    ticket = sim.open_position("EURUSD", "BUY", 0.1)
    async with running(settings, sim) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
    path = settings.store.path
    assert _rows(path, "SELECT key, value FROM meta") == [
        ("account", json.dumps({"login": 5001234, "server": "DTMS-Sim", "currency": "USD"}))]
    db = sqlite3.connect(path)   # an action journaled, never sent, when the last run ended
    db.execute("INSERT INTO actions (ticket, seq, kind, status, created_at, obligation) "
               "VALUES (?, 1, 'MODIFY_SL', 'pending', 5.0, 'breakeven')", (ticket,))
    db.execute("UPDATE trades SET action_seq = 1, obligations = ? WHERE ticket = ?",
               (json.dumps({"breakeven": "pending"}), ticket))
    db.commit()
    db.close()
    tables = ("trades", "transitions", "actions")
    before = {t: _rows(path, f"SELECT * FROM {t} ORDER BY 1") for t in tables}

    svc = Service(settings, module=other_account())
    assert str(await start_failure(svc)) == (
        f"the database {path} belongs to account login 5001234 on server 'DTMS-Sim', but the "
        f"trading terminal is logged in to account login 777 on server 'Other-Live'; DTMS "
        f"touches none of the stored trades. Log the terminal in to the database's account, "
        f"give this account its own store.path, or, to manage this account with this database "
        f"from now on, run: dtms serve --adopt-account")
    assert svc.broker.connected is False and svc.watcher.polls_ok == 0
    assert {t: _rows(path, f"SELECT * FROM {t} ORDER BY 1") for t in tables} == before

    async with running(settings, sim) as back:   # the database's own account: fine again
        assert back.broker.refused is None
    adopting = Service(settings, module=other_account(), adopt_account=True)
    async with anyio.create_task_group() as tg:
        await tg.start(adopting.run)
        with anyio.fail_after(20):
            await adopting.ready_event.wait()
        tg.cancel_scope.cancel()
    assert json.loads(_rows(path, "SELECT value FROM meta WHERE key = 'account'")[0][0]) == {
        "login": 777, "server": "Other-Live", "currency": "USD"}


def test_serve_takes_an_adopt_account_flag():
    assert build_parser(Settings()).parse_args(["serve", "--adopt-account"]).adopt_account is True
    assert build_parser(Settings()).parse_args(["serve"]).adopt_account is False


def test_dtms_serve_against_another_account_exits_3_naming_both(env, tmp_path):  # noqa: F811
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "dtms", "serve", "--demo", "2"],
                                 stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(env, first, log, trades=2)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    db = env["DTMS_STORE_PATH"]
    before = _rows(db, "SELECT * FROM trades ORDER BY ticket")
    # a terminal logged in to login 1 on "Broken-Bridge" (whose positions_get would crash)
    other = dict(env, DTMS_BROKER_BACKEND="module:terminal_crashing",
                 PYTHONPATH=os.pathsep.join([TESTS, env.get("PYTHONPATH", "")]))
    result = dtms("serve", env=other, timeout=60)
    assert result.returncode == 3, result.stderr[-3000:]
    assert (f"dtms: the database {db} belongs to account login 5001234 on server 'DTMS-Sim', "
            f"but the trading terminal is logged in to account login 1 on server "
            f"'Broken-Bridge'") in result.stderr
    assert "run: dtms serve --adopt-account" in result.stderr
    assert _rows(db, "SELECT * FROM trades ORDER BY ticket") == before
