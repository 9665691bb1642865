"""The terminal bridge's parts: the codec, one terminal call at a time with a timeout, the token
rule, the server file running alone, ``broker.module_args``, and why a start fails
(``broker_error``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import namedtuple
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms import config
from dtms.bridge import server as bridge
from dtms.bridge.client import TerminalClient
from dtms.brokers.mt5 import MT5Adapter, load_module
from dtms.brokers.sim.types import TradePosition
from dtms.config import ConfigError, Settings
from dtms.errors import BrokerError
from tests.conftest import eventually, running

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


# --- codec ------------------------------------------------------------------------------
class FakeArray:
    """Quacks like a numpy structured array (what MetaTrader5 returns for rates)."""

    def tolist(self) -> list[tuple]:
        return [(1717401600, 1.1, 1.2, 1.0, 1.15, 42)]


def test_the_codec_makes_the_terminals_values_plain_and_rebuilds_them_by_name():
    Tick = namedtuple("Tick", "time bid ask last volume time_msc flags volume_real")
    Odd = namedtuple("Odd", "b a")       # a type DTMS has never heard of
    tick = Tick(1, 1.1, 1.2, 0.0, 0, 1000, 6, 0.0)
    when = datetime(2026, 3, 1, 12, 30)
    wire = bridge.encode({"tick": tick, "odd": Odd(2, 1), "when": when, "rates": FakeArray()})
    assert wire["odd"] == {"__nt__": "Odd", "names": ["b", "a"], "fields": [2, 1]}
    assert wire["rates"] == [[1717401600, 1.1, 1.2, 1.0, 1.15, 42]]
    back = bridge.decode(wire)
    assert back["tick"] == tick and back["tick"].bid == 1.1
    assert (back["odd"].b, back["odd"].a, type(back["odd"]).__name__) == (2, 1, "Odd")
    assert back["when"] == when and back["rates"] == ((1717401600, 1.1, 1.2, 1.0, 1.15, 42),)
    # a known name with the same fields is the local type; other fields make their own type
    pos = TradePosition(*range(len(TradePosition._fields)))
    assert type(bridge.decode(bridge.encode(pos), {"TradePosition": TradePosition})) is TradePosition
    Short = namedtuple("TradePosition", "ticket volume")
    short = bridge.decode(bridge.encode(Short(5, 0.1)), {"TradePosition": TradePosition})
    assert (type(short) is not TradePosition, short.ticket, short.volume) == (True, 5, 0.1)


# --- one call at a time, with a timeout --------------------------------------------------
class Recorder:
    """A terminal module whose calls take ``durations`` seconds and note what overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.ran: list[int] = []

    def order_send(self, n: int, seconds: float) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1
            self.ran.append(n)
        return n


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.005, 0.06]), min_size=1, max_size=6))
def test_calls_run_one_at_a_time_each_at_most_once_and_a_refused_one_never(durations):
    """Nothing is sent twice or late: a call answered "terminal stuck" before its turn never
    runs; one that got its turn runs once; two calls never overlap."""
    module = Recorder()
    terminal = bridge.Terminal(module, call_timeout_s=0.03)
    answers: dict[int, Any] = {}

    def caller(n: int, seconds: float) -> None:
        try:
            answers[n] = terminal.call("order_send", (n, seconds), {})
        except bridge.TerminalStuck as exc:
            answers[n] = exc

    threads = [threading.Thread(target=caller, args=(n, d)) for n, d in enumerate(durations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 5
    while terminal._running is not None and time.monotonic() < deadline:
        time.sleep(0.01)   # let a call that got its turn finish
    time.sleep(0.02)
    assert module.most == 1
    assert len(module.ran) == len(set(module.ran))                      # never twice
    for n, answer in answers.items():
        if isinstance(answer, bridge.TerminalStuck):
            assert "terminal stuck: order_send got no answer within 0.03s" in str(answer)
        else:
            assert answer == n and n in module.ran
    ok = {n for n, a in answers.items() if not isinstance(a, bridge.TerminalStuck)}
    assert ok <= set(module.ran)
    assert terminal.stuck_s() == 0.0


def test_a_stuck_call_is_answered_stuck_and_the_ping_says_so_while_it_runs():
    release = threading.Event()

    class Hanging:
        def positions_get(self) -> tuple:
            release.wait(10)
            return ()

        def positions_total(self) -> int:
            return 0

    server = bridge.BridgeServer(bridge.Terminal(Hanging(), call_timeout_s=0.2), port=0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    client = TerminalClient(port=server.port, heartbeat_timeout=2.0)
    try:
        assert client.positions_get() is None
        code, message = client.last_error()
        assert code == -10005 and "terminal stuck: positions_get got no answer within 0.2s" in message
        assert client.positions_total() is None   # waits for its turn, never gets it
        assert "positions_get running for" in client.last_error()[1]
        assert client.ping()["stuck_s"] > 0
        with pytest.raises(BrokerError, match=r"ping failed: \(-10005\) terminal stuck"):
            MT5Adapter(client).heartbeat()
        release.set()
        assert eventually_sync(lambda: client.ping()["stuck_s"] == 0.0)
        assert client.positions_total() == 0
    finally:
        release.set()
        client.close()
        server.shutdown()
        server.server_close()


def eventually_sync(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- the open-port rule -----------------------------------------------------------------
def _bridge(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtms", "terminal-bridge", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_off_loopback_the_bridge_needs_a_token_and_names_the_fix():
    result = _bridge("--module", "dtms.brokers.sim.bridged:embedded", "--host", "0.0.0.0",
                     "--port", "0")
    assert result.returncode == 3
    assert ("terminal-bridge: cannot start: refusing to serve the terminal on non-loopback host "
            "'0.0.0.0' without a token: pass --token") in result.stderr
    with pytest.raises(ValueError, match="without a token"):
        bridge.refuse_open_bind("", "")
    bridge.refuse_open_bind("0.0.0.0", "t")
    bridge.refuse_open_bind("::1", "")
    bridge.refuse_open_bind("localhost", "")


def test_bridge_usage_errors_and_a_missing_module():
    assert _bridge("--keyfile", "k.pem").returncode == 2
    missing = _bridge("--module", "dtms_no_such_terminal", "--port", "0")
    assert missing.returncode == 3
    assert "the module 'dtms_no_such_terminal' cannot be imported" in missing.stderr


def test_the_loopback_rule_is_dtms_nets(monkeypatch):
    """The bridge file carries its own copy of dtms.net's rule (it runs alone): they agree."""
    from dtms import net

    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LOCALHOST", "0.0.0.0",
                 "", "10.0.0.5", "example.com", "::"):
        assert bridge.is_loopback(host) == net.is_loopback(host), host


# --- the server file alone --------------------------------------------------------------
FAKE_MT5 = '''
from collections import namedtuple
AccountInfo = namedtuple("AccountInfo", "login server currency balance equity margin_mode leverage")
ACCOUNT_MARGIN_MODE_RETAIL_HEDGING = 2
def initialize(*args, **kwargs):
    return True
def shutdown():
    return None
def last_error():
    return (1, "Success")
def account_info():
    return AccountInfo(77, "Real-Broker", "EUR", 500.0, 510.0, 2, 100)
def positions_get(**kwargs):
    return None
'''


def test_the_server_file_runs_alone_with_only_msgpack(tmp_path):
    """Copied alone next to a MetaTrader5 module, with DTMS and anyio made unimportable."""
    shutil.copy(REPO / "dtms" / "bridge" / "server.py", tmp_path / "server.py")
    (tmp_path / "MetaTrader5.py").write_text(FAKE_MT5)
    ready = tmp_path / "ready.json"
    code = ("import sys, runpy; sys.modules.update(dtms=None, anyio=None); "
            f"sys.argv = ['server.py', '--port', '0', '--token', 't', '--ready-file', {str(ready)!r}]; "
            "runpy.run_path('server.py', run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert eventually_sync(ready.exists, timeout=20), proc.stdout.read1().decode()
        client = TerminalClient(port=json.loads(ready.read_text())["port"], token="t")
        adapter = MT5Adapter(client)
        account = adapter.connect()
        assert (account.login, account.server, account.currency, account.equity,
                account.hedging) == (77, "Real-Broker", "EUR", 510.0, True)
        assert client.positions_get() is None and client.last_error() == (1, "Success")
        with pytest.raises(AttributeError, match="version"):   # not in this module: raised here
            client.version()
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


# --- broker.module_args -----------------------------------------------------------------
def test_module_args_construct_a_module_with_the_api_types_kept(tmp_path):
    server = bridge.BridgeServer(bridge.Terminal(_sim(), 5.0), port=0, token="k")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        f = tmp_path / "c.toml"
        f.write_text('[broker]\nbackend = "module:dtms.bridge.client:TerminalClient"\n'
                     f'module_args = {{host = "127.0.0.1", port = {server.port}, token = "k", '
                     'timeout = 5.5}\n')
        s = config.load(f, environ={})
        assert s.broker.module_args == {"host": "127.0.0.1", "port": server.port, "token": "k",
                                        "timeout": 5.5}
        module = load_module(s)
        assert (type(module).__name__, module.port, module.timeout) == (
            "TerminalClient", server.port, 5.5)
        assert MT5Adapter(module).connect().server == "DTMS-Sim"
        module.close()
        env = config.load(f, environ={"DTMS_BROKER_MODULE_ARGS":
                                      f'port={server.port},token="k",host=127.0.0.1'})
        assert env.broker.module_args == {"port": server.port, "token": "k", "host": "127.0.0.1"}
    finally:
        server.shutdown()
        server.server_close()


def test_module_args_errors_name_the_setting_and_the_call():
    with pytest.raises(RuntimeError, match=r"TerminalClient\(nope=1\) failed: TypeError"):
        load_module(Settings().replace(broker={
            "backend": "module:dtms.bridge.client:TerminalClient", "module_args": {"nope": 1}}))
    with pytest.raises(RuntimeError, match="broker.module_args needs a class or function"):
        load_module(Settings().replace(broker={"backend": "module:json",
                                               "module_args": {"a": 1}}))
    with pytest.raises(RuntimeError, match="has no 'Nope'"):
        load_module(Settings().replace(broker={"backend": "module:json:Nope"}))
    with pytest.raises(ConfigError) as err:
        Settings().replace(broker={"backend": "bridge", "module_args": {"1x": 1},
                                   "bridge_port": 70000, "bridge_ca": "ca.pem",
                                   "heartbeat_timeout_s": 0})
    message = str(err.value)
    for part in ("broker.bridge_port: must be 0..65535, got 70000",
                 "broker.module_args: keys must be Python identifiers (keyword arguments), got "
                 "['1x']", "broker.module_args: only for backend mt5 or module:NAME:ATTR, not "
                 "'bridge'", "broker.bridge_ca: needs broker.bridge_tls = true",
                 "broker.heartbeat_timeout_s: must be > 0, got 0"):
        assert part in message
    with pytest.raises(ConfigError, match=r"broker.bridge_token: required for a bridge off "
                                          r"loopback \(broker.bridge_host = '10.0.0.5'\)"):
        Settings().replace(broker={"backend": "bridge", "bridge_host": "10.0.0.5"})
    Settings().replace(broker={"backend": "bridge", "bridge_host": "10.0.0.5",
                               "bridge_token": "t"})


def test_the_bridge_backend_is_the_bridge_client_with_the_settings():
    s = Settings().replace(broker={"backend": "bridge", "bridge_host": "10.1.2.3",
                                   "bridge_port": 9003, "bridge_token": "x", "bridge_tls": True,
                                   "heartbeat_timeout_s": 0.7, "call_timeout_s": 20})
    module = load_module(s)
    assert (type(module), module.host, module.port, module.token, module.heartbeat_timeout,
            module.timeout) == (TerminalClient, "10.1.2.3", 9003, "x", 0.7, 60.0)
    assert module.tls is not None and module.tls.check_hostname
    assert MT5Adapter(module).has_heartbeat and not MT5Adapter(_sim()).has_heartbeat


def test_a_bridge_ca_that_cannot_be_loaded_fails_the_start_naming_the_setting(tmp_path):
    s = Settings().replace(broker={"backend": "bridge", "bridge_tls": True,
                                   "bridge_ca": str(tmp_path / "missing.pem")})
    with pytest.raises(RuntimeError, match=r"broker.bridge_ca: cannot load '.*missing.pem'"):
        load_module(s)


def _sim() -> Any:
    from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
    return SimTerminal(SimConfig(seed=7), clock=ManualClock())


# --- a start that fails says why ----------------------------------------------------------
@pytest.mark.anyio
async def test_health_names_the_crash_that_keeps_the_broker_from_connecting(settings):
    sys.path.insert(0, str(TESTS))
    try:
        import terminal_down
        import terminal_unpickling
    finally:
        sys.path.remove(str(TESTS))
    settings = settings.replace(supervisor={"root_max_restarts": 1000})   # crashes forever
    async with running(settings, terminal_unpickling, wait_ready=False) as svc:
        crash = "UnpicklingError('bridge: cannot unpickle the result of account_info')"
        await eventually(lambda: svc.health()["broker_error"] == crash)
        assert svc.health()["ready"] is False
        # the crash is told once, as the last crash (the exit line adds it)
        await eventually(lambda: svc.last_crash.get("broker") == crash)
        assert svc._not_ready().message == ("DTMS is not ready: the trading terminal is not "
                                            "connected")
    async with running(settings, terminal_down, wait_ready=False) as svc:
        why = "initialize failed: (-10003) IPC initialize failed, MetaTrader 5 x64 not found"
        await eventually(lambda: svc.health()["broker_error"] == why)
        assert svc._not_ready().message == (
            f"DTMS is not ready: the trading terminal is not connected ({why})")
