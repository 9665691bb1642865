"""The account guard's lock survives a SIGKILL (issue 15): a real ``dtms serve`` process on the
simulated terminal in its own process (``broker.backend = sim-remote``), driven with the
``dtms`` CLI. A drawdown breach closes the managed position and locks the account; DTMS is
killed with SIGKILL, a position is opened while it is dead, and the restarted DTMS is still
locked with the same reason and closes that position; only ``dtms guard unlock`` lifts it,
after which the drawdown is measured afresh and new positions stay open.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dtms.brokers.sim import constants as c
from dtms.brokers.sim.remote import RemoteTerminal
from tests.test_cli import dtms, free_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def wait_for(predicate: Any, what: str, timeout: float = 60.0, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}\n{log.read_text()[-4000:] if log else ''}"
        time.sleep(0.2)


def cli_json(env: dict, *args: str) -> Any:
    out = dtms(*args, env=env)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return json.loads(out.stdout)


def test_a_drawdown_lock_survives_a_sigkill_until_a_person_unlocks_it(tmp_path):
    ready = tmp_path / "terminal.json"
    term_log = open(tmp_path / "terminal.log", "wb")  # noqa: SIM115 - held by the child
    terminal = subprocess.Popen(
        [sys.executable, "-m", "dtms.brokers.sim.remote", "--port", "0", "--seed", "5",
         "--ready-file", str(ready)], stdout=term_log, stderr=subprocess.STDOUT, cwd=REPO)
    log = tmp_path / "dtms.log"
    procs: list[subprocess.Popen] = []
    try:
        wait_for(ready.exists, "the terminal never became ready")
        port = json.loads(ready.read_text())["port"]
        sim = RemoteTerminal(port=port)
        assert sim.initialize()
        sim.hold("EURUSD")
        sim.set_price("EURUSD", 1.08500)
        env = dict(__import__("os").environ)
        env.update(DTMS_CONFIG=str(REPO / "config" / "dtms.toml"), DTMS_RPC_PORT=str(free_port()),
                   DTMS_METRICS_PORT=str(free_port()), DTMS_STORE_PATH=str(tmp_path / "g.sqlite3"),
                   DTMS_BROKER_BACKEND="sim-remote", DTMS_SIM_REMOTE_PORT=str(port),
                   DTMS_BROKER_POLL_INTERVAL_S="0.05", DTMS_BROKER_CONNECT_RETRY_S="0.2",
                   DTMS_MARKET_TICK_POLL_S="0.05", DTMS_GUARD_POLL_S="0.1",
                   DTMS_GUARD_MAX_DRAWDOWN_PCT="1", DTMS_SERVICE_LOG_FORMAT="text",
                   DTMS_SERVICE_SUPERVISOR_LOG=str(tmp_path / "supervisor.log"))

        def start() -> subprocess.Popen:
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "dtms", "serve"], cwd=REPO,
                                        stdout=out, stderr=subprocess.STDOUT, env=env)
            procs.append(proc)
            wait_for(lambda: dtms("health", env=env).returncode == 0, "DTMS never ready",
                     log=log)
            return proc

        def open_now(ticket: int) -> bool:
            return bool(sim.positions_get(ticket=ticket))

        def exits(ticket: int) -> list:
            return [d for d in sim.history_deals_get(position=ticket) or ()
                    if d.entry == c.DEAL_ENTRY_OUT]

        first = start()
        ticket = sim.open_position("EURUSD", "BUY", 1.0)
        cli_json(env, "register", str(ticket))
        assert cli_json(env, "guard")["locked"] is False
        # 1 lot: 1.08500 -> 1.08350 (entry 1.08512) loses 162 of 10,000: past 1 %
        sim.set_price("EURUSD", 1.08350)
        wait_for(lambda: not open_now(ticket), "the breach never closed the trade", log=log)
        g = wait_for(lambda: (v := cli_json(env, "guard"))["locked"] and v, "never locked")
        assert (g["kind"], g["until"]) == ("drawdown", 0.0)
        assert g["reason"].startswith("drawdown 1.62% from the equity peak reached the maximum 1%")

        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        late = sim.open_position("EURUSD", "SELL", 0.5)   # while DTMS is dead
        sim.set_price("EURUSD", 1.08600)   # the equity recovers: the lock holds anyway

        start()
        again = cli_json(env, "guard")
        assert (again["locked"], again["reason"], again["since"]) == (True, g["reason"],
                                                                       g["since"])
        health = cli_json(env, "health")
        assert health["ready"] is True and health["guard"]["locked"] is True
        wait_for(lambda: not open_now(late), "the position opened while locked stayed open",
                 log=log)
        assert len(exits(ticket)) == 1 and len(exits(late)) == 1

        out = dtms("guard", "unlock", env=env)
        assert out.returncode == 2 and "--reason" in out.stderr
        unlocked = cli_json(env, "guard", "unlock", "--reason", "reviewed", "--by", "risk-desk")
        assert unlocked["unlocked"] is True and unlocked["locked"] is False
        assert unlocked["history"][-1]["event"] == "guard.unlocked"
        assert unlocked["history"][-1]["by"] == "risk-desk"
        after = sim.open_position("EURUSD", "BUY", 0.1)
        time.sleep(1.0)
        assert open_now(after)
        assert cli_json(env, "guard")["drawdown_pct"] < 0.1   # measured from the unlock

        # the hand tools: modify (tighter only unless --force), flatten (confirmed), close
        cli_json(env, "register", str(after))
        out = dtms("modify", str(after), env=env)
        assert out.returncode == 2 and "give --sl, --tp or both" in out.stderr
        # (registered without a stop, it has its floor by now: 3 ATR below the price)
        wait_for(lambda: sim.positions_get(ticket=after)[0].sl > 0, "no floor", log=log)
        moved = cli_json(env, "modify", str(after), "--sl", "1.08500")
        assert (moved["result"], moved["retcode"]) == ("done", 10009)
        out = dtms("modify", str(after), "--sl", "1.08450", env=env)
        assert out.returncode == 1 and '"field": "sl"' in out.stderr
        assert sim.positions_get(ticket=after)[0].sl == 1.08500
        flatten = subprocess.run([sys.executable, "-m", "dtms", "flatten", "--reason", "eod"],
                                 capture_output=True, text=True, env=env, timeout=30,
                                 stdin=subprocess.DEVNULL)
        assert flatten.returncode == 2 and "--yes" in flatten.stderr and open_now(after)
        done = cli_json(env, "flatten", "--reason", "eod", "--yes")
        assert [o["ticket"] for o in done["closed"]] == [after] and done["failed"] == []
        stranger = sim.open_position("EURUSD", "SELL", 0.1)
        closed = cli_json(env, "close", str(stranger), "--reason", "by hand")
        assert (closed["ticket"], closed["result"]) == (stranger, "done")
        assert dtms("close", str(stranger), env=env).returncode == 4   # NOT_FOUND now
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        terminal.send_signal(signal.SIGKILL)
        terminal.wait(10)
        term_log.close()
