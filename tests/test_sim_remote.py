"""The simulated terminal over TCP: in-process server, a real DTMS over it, a separate process."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal, SimTradeRejected
from dtms.brokers.sim import constants as c
from dtms.brokers.sim.remote import (
    ALLOWED,
    RemoteError,
    RemoteTerminal,
    decode,
    encode,
    serve_terminal,
)
from dtms.brokers.sim.types import TradePosition
from tests.conftest import client_for, eventually, running

pytestmark = pytest.mark.anyio

NO_IPC = (-10004, "No IPC connection")
REPO = Path(__file__).resolve().parents[1]


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking RemoteTerminal call off the event loop (the server shares the loop)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@asynccontextmanager
async def served(terminal: SimTerminal) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_terminal, terminal)
        yield port
        tg.cancel_scope.cancel()


def new_sim() -> SimTerminal:
    return SimTerminal(SimConfig(seed=7), clock=ManualClock())


def market_order(symbol: str, kind: int, volume: float, sl: float = 0.0) -> dict[str, Any]:
    return {"action": c.TRADE_ACTION_DEAL, "symbol": symbol, "volume": volume, "type": kind,
            "sl": sl, "type_filling": c.ORDER_FILLING_IOC, "magic": 7, "comment": "t"}


def test_codec_round_trips_named_tuples_and_datetimes():
    pos = new_sim()
    assert pos.initialize()
    ticket = pos.open_position("EURUSD", "BUY", 0.1)
    rows = pos.positions_get(ticket=ticket)
    when = datetime(2026, 3, 1, 12, 30)
    assert rows and decode(encode(rows)) == rows
    assert isinstance(decode(encode(rows))[0], TradePosition)
    assert decode(encode({"a": [when, (1, 2)]})) == {"a": (when, (1, 2))}


def test_every_public_terminal_method_is_allowlisted():
    public = {n for n in dir(SimTerminal) if not n.startswith("_") and not n.isupper()}
    assert public - {"connected"} == set(ALLOWED)


async def test_remote_matches_local_sim(sim, request):
    remote_sim = new_sim()
    async with served(remote_sim) as port:
        rt = RemoteTerminal(port=port)
        request.addfinalizer(rt.close)
        assert await call(rt.initialize) is True and sim.initialize() is True
        assert rt.TRADE_RETCODE_DONE == 10009 and rt.DEAL_REASON_SL == 4
        assert await call(rt.last_error) == (1, "Success")

        ticket = await call(rt.open_position, "EURUSD", "BUY", 0.10, sl=1.08, magic=11)
        assert ticket == sim.open_position("EURUSD", "BUY", 0.10, sl=1.08, magic=11)
        rows = await call(rt.positions_get, ticket=ticket)
        assert isinstance(rows, tuple) and isinstance(rows[0], TradePosition)
        assert rows == sim.positions_get(ticket=ticket)
        assert await call(rt.positions_total) == 1

        ok = market_order("USDJPY", c.ORDER_TYPE_SELL, 0.2)
        bad = market_order("EURUSD", c.ORDER_TYPE_BUY, 0.1, sl=1.2)  # SL above a buy
        for request, retcode in ((ok, 10009), (bad, 10016)):
            remote, local = await call(rt.order_send, request), sim.order_send(request)
            assert remote == local and remote.retcode == retcode
            assert remote.request == local.request  # nested named tuple rebuilt

        await call(rt.set_price, "EURUSD", 1.0799)
        deals = await call(rt.history_deals_get, position=ticket)
        assert deals[-1].reason == c.DEAL_REASON_SL == 4
        assert await call(rt.positions_get, ticket=ticket) == ()
        info = await call(rt.symbol_info, "EURUSD")
        assert info == remote_sim.symbol_info("EURUSD") and info.bid == 1.0799
        span = (datetime(2020, 1, 1), datetime(2100, 1, 1))
        assert await call(rt.history_deals_get, *span) == remote_sim.history_deals_get(*span)


async def test_control_errors_and_allowlist(request):
    async with served(new_sim()) as port:
        rt = RemoteTerminal(port=port)
        request.addfinalizer(rt.close)
        await call(rt.set_market_open, "EURUSD", False)
        with pytest.raises(SimTradeRejected) as info:
            await call(rt.open_position, "EURUSD", "BUY", 0.1)
        assert info.value.retcode == c.TRADE_RETCODE_MARKET_CLOSED
        with pytest.raises(KeyError):
            await call(rt.set_price, "NOPE", 1.0)
        with pytest.raises(RemoteError, match="not callable"):
            await call(rt._control_call, "__init__", (), {})
        # faults travel too: a failed call returns None with the injected error
        await call(rt.initialize)
        await call(rt.fail_next, 1, "positions_get", (-10001, "boom"))
        assert await call(rt.positions_get) is None
        assert await call(rt.last_error) == (-10001, "boom")
        assert await call(rt.positions_get) == ()


async def test_dtms_service_over_tcp_sees_stop_loss_close(settings):
    async with served(new_sim()) as port:
        control = RemoteTerminal(port=port)
        remote = RemoteTerminal(port=port)
        ticket = await call(control.open_position, "EURUSD", "BUY", 0.10, sl=1.08)
        async with running(settings, remote) as svc, client_for(svc) as c_:
            await c_.register({"ticket": ticket})
            await call(control.set_price, "EURUSD", 1.0799)

            async def closed() -> Any:
                t = await c_.trade(ticket)
                return t if t["state"] == "CLOSED" else None

            t = await eventually(closed)
            assert (t["close_reason"], t["close_price"]) == ("SL", 1.0799)
        control.close()
        remote.close()


async def test_server_gone_looks_like_dead_terminal():
    async with served(new_sim()) as port:
        rt = RemoteTerminal(port=port)
        assert await call(rt.initialize) is True
    # the server is gone: API calls fail like MT5 with no terminal, controls raise
    assert await call(rt.positions_get) is None
    assert await call(rt.last_error) == NO_IPC
    assert await call(rt.initialize) is False
    with pytest.raises(ConnectionError):
        await call(rt.set_price, "EURUSD", 1.0)
    rt.close()


def _start_process(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "dtms.brokers.sim.remote", "--port", "0",
                             "--seed", "3", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, env=env, cwd=REPO)
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert proc.poll() is None, "terminal process exited early"
        assert time.monotonic() < deadline, "terminal process never became ready"
        time.sleep(0.02)
    return proc, json.loads(ready.read_text())["port"]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def test_positions_outlive_the_client_in_a_separate_process(tmp_path):
    proc, port = _start_process(tmp_path)
    try:
        first = RemoteTerminal(port=port)
        assert first.initialize() is True
        ticket = first.open_position("EURUSD", "SELL", 0.30, sl=2.0)
        first.close()
        second = RemoteTerminal(port=port)
        assert second.initialize() is True
        rows = second.positions_get()
        assert [(p.ticket, p.type, p.volume, p.sl) for p in rows] == [
            (ticket, c.POSITION_TYPE_SELL, 0.30, 2.0)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None and proc.stdout.read().strip() == str(port).encode()
        assert second.positions_get() is None
        assert second.last_error() == NO_IPC
    finally:
        _stop(proc)


async def test_killed_process_means_no_ipc_connection(tmp_path):
    proc, port = _start_process(tmp_path)
    try:
        rt = RemoteTerminal(port=port)
        assert rt.initialize() is True and rt.positions_total() == 0
        proc.kill()
        proc.wait(timeout=10)
        assert rt.positions_get() is None
        assert rt.last_error() == NO_IPC
        assert rt.account_info() is None and rt.last_error()[0] == -10004
    finally:
        _stop(proc)


def test_dtms_sim_terminal_takes_every_sim_setting_as_the_embedded_terminal_does(tmp_path):
    """balance, symbol suffix and tick interval reach the separate process; its account is the
    embedded terminal's for the same settings (the database's account check relies on it)."""
    from dtms.brokers.mt5 import sim_terminal
    from dtms.config import Settings
    from tests.test_cli import free_port

    sim = {"balance": 12_345.0, "symbol_suffix": ".m", "tick_interval_s": 3600.0,
           "speed": 100.0, "remote_port": free_port()}
    env = {**os.environ, "PYTHONPATH": str(REPO), "DTMS_CONFIG": str(REPO / "config" / "dtms.toml"),
           **{f"DTMS_SIM_{k.upper()}": str(v) for k, v in sim.items()}}
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "dtms", "sim-terminal", "--ready-file",
                             str(ready)], stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, "sim-terminal exited early"
            assert time.monotonic() < deadline, "sim-terminal never became ready"
            time.sleep(0.02)
        rt = RemoteTerminal(port=sim["remote_port"])
        assert rt.initialize() is True
        account = rt.account_info()
        local = sim_terminal(Settings().replace(sim=sim))
        assert local.initialize() is True
        embedded = local.account_info()
        assert (account.balance, account.login, account.server) == (
            12_345.0, embedded.login, embedded.server)
        names = {s.name for s in rt.symbols_get()}
        assert "EURUSD.m" in names and all(n.endswith(".m") for n in names)
        first = rt.symbol_info_tick("EURUSD.m")
        started = rt.sim_time
        while rt.sim_time < started + 10:   # 10 simulated seconds: ten ticks at the default
            time.sleep(0.02)
        later = rt.symbol_info_tick("EURUSD.m")
        assert (later.time_msc - first.time_msc) % 3_600_000 == 0   # ticks on a 3600 s grid
        rt.close()
    finally:
        _stop(proc)
