"""The `dtms` command as a newcomer uses it: a real `dtms serve --demo` process, then the
client commands against it, then SIGTERM and a clean exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dtms(*args: str, env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtms", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path) -> dict:
    e = dict(os.environ)
    e.update(DTMS_RPC_PORT=str(free_port()), DTMS_METRICS_PORT=str(free_port()),
             DTMS_STORE_PATH=str(tmp_path / "cli.sqlite3"), DTMS_BROKER_POLL_INTERVAL_S="0.05",
             DTMS_CONFIG=str(Path(__file__).resolve().parent.parent / "config" / "dtms.toml"))
    return e


def test_serve_demo_then_client_commands(env, tmp_path):
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - held by the child process
    proc = subprocess.Popen([sys.executable, "-m", "dtms", "serve", "--demo", "5"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            health = dtms("health", env=env)
            trades = dtms("trades", "--json", env=env)
            if (health.returncode == 0 and trades.returncode == 0
                    and json.loads(trades.stdout)["count"] == 5):
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        assert json.loads(health.stdout)["ready"] is True
        listed = json.loads(trades.stdout)["trades"]
        assert {t["symbol"] for t in listed} == {"EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "BTCUSD"}
        assert all(t["owner"] == "demo-bot" and t["magic"] == 1001 for t in listed)

        table = dtms("trades", env=env)
        assert table.returncode == 0
        lines = table.stdout.splitlines()
        assert lines[0].split()[:4] == ["TICKET", "SYMBOL", "DIR", "VOLUME"]
        assert lines[-1] == "(5 trades)"

        ticket = listed[0]["ticket"]
        one = dtms("trade", str(ticket), env=env)
        assert one.returncode == 0 and json.loads(one.stdout)["ticket"] == ticket
        again = dtms("register", str(ticket), env=env)
        assert again.returncode == 0 and json.loads(again.stdout)["created"] is False

        missing = dtms("trade", "123", env=env)
        assert missing.returncode == 4
        assert json.loads(missing.stderr)["code"] == "NOT_FOUND"
        paused = dtms("pause", str(ticket), env=env)
        assert paused.returncode == 0 and json.loads(paused.stdout)["paused"] is True
        resumed = dtms("resume", str(ticket), env=env)
        assert resumed.returncode == 0 and json.loads(resumed.stdout)["paused"] is False
        # listings are tables; --json keeps the service's map; --since takes human times
        trans = dtms("transitions", str(ticket), "--since", "1h", env=env)
        assert trans.returncode == 0, trans.stderr
        lines = trans.stdout.splitlines()
        assert lines[0].split() == ["TIME", "FROM", "TO", "REASON"]
        assert lines[2].split()[2:5] == ["(new)", "HEALTHY", "registered"]
        assert lines[-1] == "(1 transition)"
        later = dtms("transitions", str(ticket), "--since", "2999-01-01T00:00", "--json",
                     env=env)
        assert json.loads(later.stdout)["transitions"] == []
        assert dtms("actions", "--since", "10m", env=env).stdout.split()[:3] == [
            "TIME", "TICKET", "SEQ"]
        assert dtms("restarts", "--since", "2h", env=env).stdout.splitlines()[-1] == \
            "(0 restarts)"
        # a live policy change, then shadow mode's report
        changed = dtms("policy", str(ticket), "mode=shadow", "breakeven_r=0.5", env=env)
        assert changed.returncode == 0, changed.stderr
        assert json.loads(changed.stdout)["policy"] == {"mode": "shadow", "breakeven_r": 0.5}
        refused = dtms("policy", str(ticket), "breakeven_r=-1", "mode=paper", env=env)
        assert refused.returncode == 1
        assert set(json.loads(refused.stderr)["errors"]) == {"policy.breakeven_r",
                                                              "policy.mode"}
        assert dtms("policy", "mode=live", env=env).returncode == 2   # a ticket or --all
        every = dtms("policy", "--all", "mode=live", env=env)
        assert json.loads(every.stdout)["count"] == 5
        shadow = dtms("shadow", env=env)
        assert shadow.returncode == 0, shadow.stderr
        assert shadow.stdout.split()[:7] == ["TICKET", "ACTIONS", "CLOSED", "VOLUME", "P/L",
                                             "DIFFERENCE", "─" * len(shadow.stdout.split()[6])]
        table = dtms("trades", env=env)
        header = table.stdout.splitlines()[0].split()
        assert header[5:10] == ["PRICE", "SL", "TP", "P/L", "R"] and "PAUSED" in header
        row = next(r.split() for r in table.stdout.splitlines() if r.startswith(str(ticket)))
        assert float(row[5]) > 0 and row[header.index("PAUSED")] == "no"
        usage = dtms("trade", "not-a-number", env=env)
        assert usage.returncode == 2
        bad = dtms("register", "77", "--direction", "buy", "--volume", "-1", env=env)
        assert bad.returncode == 1
        assert json.loads(bad.stderr)["field"] == "volume"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()


def test_client_command_without_service_exits_3(env):
    result = dtms("health", env=env)
    assert result.returncode == 3
    assert "cannot reach DTMS" in result.stderr


def test_unknown_terminal_module_exits_3(env):
    env = dict(env, DTMS_BROKER_BACKEND="module:dtms_no_such_terminal")
    result = dtms("serve", env=env)
    assert result.returncode == 3
    assert "broker module 'dtms_no_such_terminal' cannot be imported" in result.stderr


def test_terminal_that_never_connects_is_a_startup_timeout_exit_3(env):
    tests_dir = str(Path(__file__).resolve().parent)
    env = dict(env, DTMS_BROKER_BACKEND="module:terminal_down",
               DTMS_SERVICE_STARTUP_TIMEOUT_S="1.5",
               PYTHONPATH=os.pathsep.join([tests_dir, env.get("PYTHONPATH", "")]))
    result = dtms("serve", env=env)
    assert result.returncode == 3, result.stderr
    assert "not ready within 1.5s: DTMS is not ready: the trading terminal is not connected" in (
        result.stderr)


def test_unusable_database_is_a_startup_failure_exit_3(env, tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    env = dict(env, DTMS_STORE_PATH=str(tmp_path / "not-a-dir" / "dtms.sqlite3"))
    result = dtms("serve", env=env)
    assert result.returncode == 3, result.stderr
    assert "dtms: cannot start: FileExistsError" in result.stderr


def test_watch_renders_a_live_view_in_a_terminal(env, tmp_path):
    """`dtms watch` under a pseudo-terminal: the screen shows the trades and then the events."""
    import pty
    import select

    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - held by the child process
    server = subprocess.Popen([sys.executable, "-m", "dtms", "serve", "--demo", "2"],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    master, slave = pty.openpty()
    watcher = None
    try:
        deadline = time.monotonic() + 60
        while json.loads(dtms("trades", "--json", env=env).stdout or '{"count": 0}')["count"] < 2:
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.3)
        watcher = subprocess.Popen([sys.executable, "-m", "dtms", "watch"], stdin=slave,
                                   stdout=slave, stderr=slave, env=env, close_fds=True)
        screen = b""

        def read_until(needle: bytes) -> bytes:
            nonlocal screen
            end = time.monotonic() + 30
            while needle not in screen:
                assert time.monotonic() < end, screen.decode(errors="replace")[-2000:]
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    screen += os.read(master, 65536)
            return screen

        read_until(b"(2 trades)")
        assert b"\x1b[2J" in screen  # it redraws the screen
        assert b"DTMS watch" in screen and b"HEALTHY=2" in screen
        ticket = json.loads(dtms("trades", "--json", env=env).stdout)["trades"][0]["ticket"]
        assert dtms("pause", str(ticket), env=env).returncode == 0
        read_until(f"{ticket}: paused no -> yes".encode())
        assert dtms("unregister", str(ticket), env=env).returncode == 0
        text = read_until(f"{ticket}: HEALTHY -> RELEASED".encode()).decode(errors="replace")
        last = text.rsplit("DTMS watch", 1)[1]
        assert "(1 trade)" in last and "RELEASED=1" in last
    finally:
        if watcher is not None:
            watcher.send_signal(signal.SIGINT)
            watcher.wait(timeout=10)
        os.close(master)
        os.close(slave)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def test_root_escalation_exits_1_with_the_reason_and_closes_the_database(env, tmp_path):
    tests_dir = str(Path(__file__).resolve().parent)
    env = dict(env, DTMS_BROKER_BACKEND="module:terminal_crashing",
               DTMS_SUPERVISOR_MIN_BACKOFF_S="0.01", DTMS_SUPERVISOR_MAX_BACKOFF_S="0.05",
               DTMS_SERVICE_SUPERVISOR_LOG=str(tmp_path / "supervisor.log"),
               PYTHONPATH=os.pathsep.join([tests_dir, env.get("PYTHONPATH", "")]))
    result = dtms("serve", env=env, timeout=60)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "dtms: giving up after repeated crashes" in result.stderr
    assert "store closed" in result.stderr
    events = [json.loads(line) for line in (tmp_path / "supervisor.log").read_text().splitlines()]
    decisions = [e for e in events if "event" in e]  # other lines: stop/start warnings
    escalations = [e["supervisor"] for e in decisions if e["event"] == "escalate"]
    assert escalations[-1] == "root" and "core" in escalations
    crashes = {(e["child"], e["exception_type"]) for e in decisions
               if e["event"] == "restart" and e["reason"] == "crash"}
    assert ("broker", "RuntimeError") in crashes


def test_dtms_killed_while_the_terminal_process_lives_on_resumes_its_trades(env, tmp_path):
    env = dict(env, DTMS_SIM_REMOTE_PORT=str(free_port()), DTMS_BROKER_BACKEND="sim-remote")
    ready = tmp_path / "terminal.json"
    terminal = subprocess.Popen([sys.executable, "-m", "dtms", "sim-terminal", "--ready-file",
                                 str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env)
    servers: list[subprocess.Popen] = []

    def serve(*extra: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "dtms", "serve", *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        servers.append(p)
        return p

    def trades_when(predicate) -> list[dict]:
        deadline = time.monotonic() + 60
        while True:
            out = dtms("trades", "--json", env=env)
            if out.returncode == 0 and predicate(listed := json.loads(out.stdout)["trades"]):
                return listed
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.3)

    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert terminal.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        first = serve("--demo", "3")
        before = trades_when(lambda t: len(t) == 3)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        serve()  # no demo: everything it knows comes from the database and the terminal
        after = trades_when(lambda t: len(t) == 3 and dtms("health", env=env).returncode == 0)
        assert [(t["ticket"], t["state"], t["volume"], t["sl"]) for t in after] == [
            (t["ticket"], t["state"], t["volume"], t["sl"]) for t in before]
        assert all(t["state"] == "HEALTHY" for t in after)
        again = dtms("register", str(before[0]["ticket"]), env=env)
        assert json.loads(again.stdout)["created"] is False
    finally:
        for p in servers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
        terminal.send_signal(signal.SIGTERM)
        terminal.wait(timeout=10)


# ---------------------------------------------------------------- usage errors exit 2


@pytest.mark.parametrize(("argv", "names"), [
    (["trade", "--", "-5"], ["argument ticket", "an integer >= 1", "'-5'"]),
    (["trade", "abc"], ["argument ticket", "an integer >= 1", "'abc'"]),
    (["transitions", "0"], ["argument ticket", ">= 1"]),
    (["unregister", "--", "-1"], ["argument ticket", ">= 1"]),
    (["pause", "--", "-3"], ["argument ticket", ">= 1"]),
    (["register", "0", "--symbol", "EURUSD"], ["argument ticket", ">= 1"]),
    (["trades", "--state", "bogus"], ["argument --state", "'BOGUS'", "HEALTHY", "CLOSED"]),
    (["trades", "--limit", "5000"], ["argument --limit", "1..1000", "'5000'"]),
    (["trades", "--limit", "0"], ["argument --limit", "1..1000"]),
    (["trades", "--offset", "-1"], ["argument --offset", ">= 0"]),
    (["actions", "--limit", "1001"], ["argument --limit", "1..1000"]),
    (["actions", "--ticket", "0"], ["argument --ticket", ">= 1"]),
    (["actions", "--since", "-5"], ["argument --since", "a duration back from now", "got '-5'"]),
    (["restarts", "--kind", "bogus"], ["argument --kind", "'bogus'", "trade", "market"]),
    (["restarts", "--limit", "5000"], ["argument --limit", "1..1000"]),
    (["--port", "70000", "health"], ["argument --port", "0..65535"]),
    (["serve", "--metrics-port", "-1"], ["argument --metrics-port", "0..65535"]),
    (["serve", "--demo", "-2"], ["argument --demo", ">= 0"]),
    (["watch", "--limit", "0"], ["argument --limit", ">= 1"]),
])
def test_bad_arguments_are_usage_errors_exit_2_naming_the_argument_and_its_bounds(
        argv, names, capsys, monkeypatch, tmp_path):
    from dtms import cli

    def must_not_run(*args: object, **kwargs: object) -> int:
        raise AssertionError(f"{argv} reached the command instead of a usage error")

    monkeypatch.chdir(tmp_path)  # no config/dtms.toml here: the defaults
    monkeypatch.setattr(cli, "serve", must_not_run)
    monkeypatch.setattr(cli, "client_command", must_not_run)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for name in names:
        assert name in err, err


def test_cli_bounds_are_the_servers():
    from dtms import cli, metrics
    from dtms.model import TradeState
    from dtms.rpc import methods

    parser = cli.build_parser(cli.config.Settings())
    args = parser.parse_args(["trades", "--state", "warning_l1", "--limit", "1000"])
    assert (args.state, args.limit) == ("WARNING_L1", 1000)
    assert parser.parse_args(["restarts", "--kind", "Market"]).kind == "market"
    assert cli.MAX_PAGE == methods.MAX_PAGE == 1000
    assert tuple(TradeState.__members__) == cli.TRADE_STATES
    assert cli.RESTART_KINDS == metrics.ACTOR_KINDS


# ---------------------------------------------------------------- start-up errors, help


def test_port_in_use_exits_3_naming_the_port_and_its_setting_without_a_traceback(env):
    for which, var in (("rpc", "DTMS_RPC_PORT"), ("metrics", "DTMS_METRICS_PORT")):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = dtms("serve", env=dict(env, **{var: str(port)}))
        assert result.returncode == 3, result.stderr
        assert (f"dtms: cannot start: cannot listen on the {which} port {port} of 127.0.0.1: "
                f"already in use (another DTMS?); set {which}.port ({var}) to a free port"
                ) in result.stderr
        assert "Traceback" not in result.stderr


def test_metrics_on_a_non_loopback_host_without_a_token_exits_3_naming_both_settings(env):
    result = dtms("serve", env=dict(env, DTMS_METRICS_HOST="0.0.0.0"))
    assert result.returncode == 3, result.stderr
    assert "metrics.host" in result.stderr and "metrics.token" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_shows_the_ports_of_the_loaded_settings(env):
    env = dict(env, DTMS_RPC_PORT="8123", DTMS_METRICS_PORT="9123", DTMS_RPC_HOST="127.0.0.9")
    top = dtms("--help", env=env)
    assert top.returncode == 0
    assert "8123" in top.stdout and "127.0.0.9" in top.stdout
    assert "8001" not in top.stdout
    serve = dtms("serve", "--help", env=env)
    assert serve.returncode == 0
    assert "9123" in serve.stdout and "8123" in serve.stdout
    assert "9108" not in serve.stdout and "8001" not in serve.stdout
