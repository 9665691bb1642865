"""DTMS on ``broker.backend = "bridge"``, end to end, every part in a real process of its own:

    simulated terminal (tests/bridge_terminal.py: the scenario tests' terminal, manual clock)
        <- ``dtms terminal-bridge --module dtms.brokers.sim.bridged:remote`` (stands in for the
           bridge next to MetaTrader5: kill it and the terminal's positions live on)
        <- DTMS (the in-process Service, or ``dtms serve``)

The test drives the terminal (prices, positions) with a RemoteTerminal of its own and reads the
terminal's deal history to check that nothing was done twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from dtms.brokers.sim import constants as c
from dtms.brokers.sim.prices import linear_path
from dtms.brokers.sim.remote import RemoteTerminal
from dtms.client import SyncClient
from dtms.config import Settings
from dtms.errors import NotReady
from tests.conftest import client_for, eventually, running
from tests.test_cli import free_port
from tests.test_scenarios import journal, play, position, settle, walk_down_the_ladder

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
MAGIC = 770077
LADDER = {"breakeven_r": 5, "partial_levels_r": [1.0], "partial_fractions": [0.5]}
POSIX = hasattr(signal, "SIGSTOP")


class Proc:
    """A child process that writes {"port": P} to its ready file once it listens."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], tmp: Path) -> None:
        self.name, self.argv, self.env, self.tmp = name, argv, env, tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    def start(self, *, expect_ready: bool = True) -> int:
        self.starts += 1
        ready = self.tmp / f"{self.name}.{self.starts}.json"
        log = open(self.tmp / f"{self.name}.{self.starts}.log", "wb")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen([*self.argv, "--ready-file", str(ready)], stdout=log,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        log.close()
        if not expect_ready:
            return 0
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert self.proc.poll() is None, f"{self.name} exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"{self.name} never became ready"
            time.sleep(0.02)
        self.port = json.loads(ready.read_text())["port"]
        return self.port

    def log(self) -> str:
        return (self.tmp / f"{self.name}.{self.starts}.log").read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if POSIX:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bridge_env(sim_port: int) -> dict[str, str]:
    return {**os.environ, "DTMS_SIM_REMOTE_PORT": str(sim_port),
            "DTMS_CONFIG": str(REPO / "config" / "dtms.toml"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


class Rig:
    """The terminal and the bridge in their processes; ``control`` drives the terminal."""

    def __init__(self, tmp: Path, *bridge_args: str) -> None:
        self.tmp = tmp
        self.terminal = Proc("terminal", [sys.executable, str(REPO / "tests" / "bridge_terminal.py")],
                             dict(os.environ), tmp)
        sim_port = self.terminal.start()
        self.control = RemoteTerminal(port=sim_port)
        self.bridge_port = free_port()   # fixed: a restarted bridge listens where DTMS looks
        self.bridge = Proc("bridge", [sys.executable, "-m", "dtms", "terminal-bridge", "--module",
                                      "dtms.brokers.sim.bridged:remote",
                                      "--port", str(self.bridge_port), *bridge_args],
                           bridge_env(sim_port), tmp)
        self.bridge.start()

    def settings(self, base: Settings, **broker: Any) -> Settings:
        return base.replace(broker={"backend": "bridge", "bridge_port": self.bridge_port,
                                    "heartbeat_interval_s": 0.25, "heartbeat_timeout_s": 0.5,
                                    **broker})

    def dtms_deals(self, ticket: int) -> list[Any]:
        """The terminal's deals DTMS made for ``ticket`` (comment DTMS:<ticket>:<seq>)."""
        assert self.control.initialize()   # a DTMS that stopped shut the terminal's link down
        deals = self.control.history_deals_get(datetime(2000, 1, 1), datetime(2100, 1, 1))
        assert deals is not None, self.control.last_error()
        return [d for d in deals if d.comment.startswith(f"DTMS:{ticket}:")]

    def close(self) -> None:
        self.control.close()
        self.bridge.stop()
        self.terminal.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


async def test_registration_and_breakeven_over_the_bridge(rig: Rig, engine_settings):
    control = rig.control
    ticket = control.open_position("EURUSD", "BUY", 0.10, sl=1.08312, tp=0.0)
    assert position(control, ticket).price_open == 1.08512
    async with running(rig.settings(engine_settings), None) as svc, client_for(svc) as cl:
        assert type(svc.module).__name__ == "TerminalClient"
        registered = await cl.register({"ticket": ticket, "owner": "bridge"})
        assert (registered["created"], registered["trade"]["entry_price"]) == (True, 1.08512)
        assert svc.health()["broker_error"] is None
        await settle(svc, control)
        await play(svc, control, linear_path(1.08500, 1.08700, 4, 5))
        assert position(control, ticket).sl == 1.08312        # not yet at +1 R
        await play(svc, control, [1.08712])
        await eventually(lambda: position(control, ticket).sl == 1.08524)
        rows = journal(svc.settings.store.path, ticket)
        assert [(r["kind"], r["obligation"], r["status"], r["retcode"]) for r in rows] == [
            ("MODIFY_SL", "sl:breakeven", "done", 10009)]


async def test_partial_close_and_hedge_over_the_bridge_each_done_once(rig: Rig, engine_settings):
    control = rig.control
    ticket = control.open_position("EURUSD", "SELL", 0.20, sl=1.09500)
    settings = rig.settings(engine_settings)
    async with running(settings, None) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, control)
        await walk_down_the_ladder(svc, control, cl, ticket, settings.store.path)
        view = await cl.trade(ticket)
        hedge = position(control, view["hedge_ticket"])
        assert (hedge.type, hedge.volume, hedge.magic) == (c.POSITION_TYPE_BUY, 0.05, MAGIC)
    deals = rig.dtms_deals(ticket)
    assert sorted((d.entry, d.volume) for d in deals) == [
        (c.DEAL_ENTRY_IN, 0.05), (c.DEAL_ENTRY_OUT, 0.10)]   # the hedge in, half of the trade out
    assert len({d.comment for d in deals}) == len(deals)


async def test_bridge_killed_dtms_goes_not_ready_keeps_its_trade_and_resumes(
        rig: Rig, engine_settings):
    control = rig.control
    ticket = control.open_position("EURUSD", "BUY", 0.10, sl=1.08412)   # 1 R = 100 points
    async with running(rig.settings(engine_settings), None) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket, "policy": LADDER})
        await settle(svc, control)
        rig.bridge.kill()
        await eventually(lambda: not svc.broker.connected)
        health = svc.health()
        assert (health["ready"], health["broker_connected"]) == (False, False)
        assert health["broker_error"]
        with pytest.raises(NotReady, match="the trading terminal is not connected"):
            await cl.trades(open_only=True)
        control.play("EURUSD", [1.08612], interval=10.0)   # +1 R while DTMS cannot act
        assert position(control, ticket).volume == 0.10
        assert svc.registry.trades[ticket].trade.state.value == "HEALTHY"

        rig.bridge.start()   # the same port: DTMS reconnects with backoff
        await eventually(lambda: svc.ready, timeout=30)
        assert svc.health()["broker_error"] is None
        await eventually(lambda: position(control, ticket).volume == 0.05)  # the rung, now
        rig.bridge.kill()
        await eventually(lambda: not svc.broker.connected)
        rig.bridge.start()
        await eventually(lambda: svc.ready, timeout=30)
        await play(svc, control, [1.08620, 1.08630])
        view = await cl.trade(ticket)
        assert (view["state"], view["volume"], view["obligations"]) == (
            "HEALTHY", 0.05, {"partial:0": "done"})
    [deal] = rig.dtms_deals(ticket)     # one partial close, never a second
    assert (deal.entry, deal.volume) == (c.DEAL_ENTRY_OUT, 0.05)


def test_dtms_killed_over_the_bridge_resumes_without_doing_anything_twice(rig: Rig, tmp_path):
    control = rig.control
    env = {**os.environ, "DTMS_RPC_PORT": str(free_port()),
           "DTMS_METRICS_PORT": str(free_port()),
           "DTMS_STORE_PATH": str(tmp_path / "dtms.sqlite3"),
           "DTMS_CONFIG": str(REPO / "config" / "dtms.toml"),
           "DTMS_BROKER_BACKEND": "bridge", "DTMS_BROKER_BRIDGE_PORT": str(rig.bridge_port),
           "DTMS_BROKER_POLL_INTERVAL_S": "0.05", "DTMS_MARKET_TICK_POLL_S": "0.02",
           "DTMS_BROKER_CONNECT_RETRY_S": "0.1"}
    rpc_port = int(env["DTMS_RPC_PORT"])
    ticket = control.open_position("EURUSD", "BUY", 0.10, sl=1.08412)

    def serve() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "dtms", "serve"], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready_client() -> SyncClient:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = SyncClient("127.0.0.1", rpc_port, retries=1)
                if client.health().get("ready"):
                    return client
                client.close()
            except (OSError, ConnectionError, TimeoutError, NotReady):
                pass
            assert time.monotonic() < deadline, "DTMS never became ready over the bridge"
            time.sleep(0.2)

    first = serve()
    try:
        with ready_client() as client:
            assert client.register({"ticket": ticket, "policy": LADDER})["created"] is True
            control.play("EURUSD", [1.08612], interval=10.0)     # +1 R: the rung
            deadline = time.monotonic() + 30
            while position(control, ticket).volume != 0.05:
                assert time.monotonic() < deadline, "the partial close never happened"
                time.sleep(0.05)
        first.kill()   # SIGKILL on POSIX
        assert first.wait(timeout=10) != 0
        assert control.initialize()
        second = serve()
        try:
            with ready_client() as client:
                control.play("EURUSD", [1.08620, 1.08640], interval=10.0)
                time.sleep(1.0)   # let it see the ticks: the rung is done, nothing to do
                view = client.trade(ticket)
                assert (view["volume"], view["obligations"]) == (0.05, {"partial:0": "done"})
                assert client.register({"ticket": ticket})["created"] is False
        finally:
            second.terminate()
            assert second.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert control.initialize()
    [deal] = rig.dtms_deals(ticket)
    assert (deal.entry, deal.volume) == (c.DEAL_ENTRY_OUT, 0.05)
    assert position(control, ticket).volume == 0.05


@pytest.mark.skipif(not POSIX, reason="SIGSTOP is POSIX only")
async def test_a_bridge_that_stops_answering_is_not_ready_within_2_s(rig: Rig, engine_settings):
    control = rig.control
    ticket = control.open_position("EURUSD", "BUY", 0.10, sl=1.08412)
    async with running(rig.settings(engine_settings), None) as svc, client_for(svc) as cl:
        await cl.register({"ticket": ticket})
        await settle(svc, control)
        rig.bridge.signal(signal.SIGSTOP)   # alive (its port accepts), answering nothing
        try:
            await anyio.sleep(2.0)
            health = svc.health()
            assert (health["ready"], health["broker_connected"]) == (False, False)
            assert "ping failed: (-10005)" in health["broker_error"]
            with pytest.raises(NotReady):
                await cl.trade(ticket)
        finally:
            rig.bridge.signal(signal.SIGCONT)
        await eventually(lambda: svc.ready, timeout=30)
        view = await cl.trade(ticket)
        assert (view["state"], view["volume"], view["sl"]) == ("HEALTHY", 0.10, 1.08412)
    assert control.initialize()
    assert position(control, ticket).volume == 0.10
    assert rig.dtms_deals(ticket) == []


@pytest.mark.skipif(not POSIX, reason="SIGSTOP is POSIX only")
async def test_a_stuck_terminal_behind_a_live_bridge_is_reported_stuck(tmp_path, engine_settings):
    rig = Rig(tmp_path, "--call-timeout", "0.5")
    try:
        control = rig.control
        ticket = control.open_position("EURUSD", "BUY", 0.10, sl=1.08412)
        async with running(rig.settings(engine_settings), None) as svc, client_for(svc) as cl:
            await cl.register({"ticket": ticket})
            rig.terminal.signal(signal.SIGSTOP)   # the terminal hangs; the bridge lives
            try:
                await eventually(lambda: not svc.broker.connected)
                await eventually(lambda: "terminal stuck" in (svc.health()["broker_error"]
                                                              or ""))
            finally:
                rig.terminal.signal(signal.SIGCONT)
            await eventually(lambda: svc.ready, timeout=40)
            assert (await cl.trade(ticket))["state"] == "HEALTHY"
    finally:
        rig.close()


async def test_a_refused_token_keeps_dtms_not_ready_retrying_and_says_why(tmp_path, engine_settings):
    rig = Rig(tmp_path, "--token", "s3cret")
    try:
        for token, why in (("", "the terminal bridge requires a token"),
                           ("wrong", "the terminal bridge refused the token")):
            settings = rig.settings(engine_settings, bridge_token=token, connect_retry_s=0.05)
            async with running(settings, None, wait_ready=False) as svc:
                await eventually(lambda: svc.broker.reconnect_attempts >= 3)
                health = svc.health()
                assert (health["ready"], health["broker_connected"]) == (False, False)
                assert f"(-10100) terminal bridge 127.0.0.1:{rig.bridge_port}: {why}" in (
                    health["broker_error"])
                assert why in svc._not_ready().message
        settings = rig.settings(engine_settings, bridge_token="s3cret")
        async with running(settings, None) as svc:
            assert svc.health()["broker_error"] is None
            assert svc.broker.account.server == "DTMS-Sim"
    finally:
        rig.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "bridge.pem", tmp / "bridge.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_tls_with_a_self_signed_certificate(tmp_path, engine_settings):
    from dtms.bridge.client import TerminalClient, client_tls

    cert, key = _self_signed(tmp_path)
    rig = Rig(tmp_path, "--certfile", str(cert), "--keyfile", str(key), "--token", "t")
    try:
        trusting = TerminalClient(port=rig.bridge_port, token="t", tls=client_tls(ca=str(cert)))
        assert trusting.initialize() is True
        assert trusting.account_info().server == "DTMS-Sim"
        trusting.close()
        untrusting = TerminalClient(port=rig.bridge_port, token="t", tls=client_tls())
        assert untrusting.initialize() is False   # the system's CAs do not know it
        code, message = untrusting.last_error()
        assert code == -10004 and "CERTIFICATE_VERIFY_FAILED" in message
        plain = TerminalClient(port=rig.bridge_port, token="t")   # no TLS at all
        assert plain.initialize() is False and plain.last_error()[0] == -10004
        for client in (untrusting, plain):
            client.close()
        settings = rig.settings(engine_settings, bridge_token="t", bridge_tls=True,
                                bridge_ca=str(cert))
        async with running(settings, None) as svc:
            assert svc.health()["broker_error"] is None
    finally:
        rig.close()


def test_serve_on_a_bridge_refusing_its_token_exits_3_saying_why(tmp_path):
    rig = Rig(tmp_path, "--token", "s3cret")
    try:
        env = {**os.environ, "DTMS_RPC_PORT": str(free_port()),
               "DTMS_METRICS_PORT": str(free_port()),
               "DTMS_STORE_PATH": str(tmp_path / "dtms.sqlite3"),
               "DTMS_CONFIG": str(REPO / "config" / "dtms.toml"),
               "DTMS_BROKER_BACKEND": "bridge", "DTMS_BROKER_BRIDGE_PORT": str(rig.bridge_port),
               "DTMS_BROKER_BRIDGE_TOKEN": "wrong", "DTMS_BROKER_CONNECT_RETRY_S": "0.1",
               "DTMS_SERVICE_STARTUP_TIMEOUT_S": "2"}
        result = subprocess.run([sys.executable, "-m", "dtms", "serve"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 3, result.stderr[-3000:]
        assert ("dtms: not ready within 2.0s: DTMS is not ready: the trading terminal is not "
                "connected (ping failed: (-10100) terminal bridge 127.0.0.1:"
                f"{rig.bridge_port}: the terminal bridge refused the token "
                "(broker.bridge_token must be the bridge's --token))") in result.stderr
    finally:
        rig.close()
