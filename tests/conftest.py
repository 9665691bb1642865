"""Shared fixtures: a real DTMS service on ephemeral loopback ports over a simulated terminal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.client import Client
from dtms.config import Settings
from dtms.service import Service


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite is asyncio-only


@pytest.fixture
def sim() -> SimTerminal:
    return SimTerminal(SimConfig(seed=7), clock=ManualClock())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings().replace(
        rpc={"port": 0}, metrics={"port": 0},
        store={"path": str(tmp_path / "dtms.sqlite3")},
        broker={"poll_interval_s": 0.02, "connect_retry_s": 0.05},
        service={"startup_timeout_s": 30.0},
        supervisor={"min_backoff_s": 0.01, "max_backoff_s": 0.1},
    )


@pytest.fixture
def engine_settings(settings: Settings) -> Settings:
    """For engine tests: regime multipliers at 1, so the thresholds are exactly the policy's,
    and fast tick polls."""
    neutral = {"asia": 1.0, "london": 1.0, "overlap": 1.0, "newyork": 1.0, "late": 1.0}
    return settings.replace(market={"tick_poll_s": 0.01},
                            signals={"session_multipliers": neutral,
                                     "volatility_multipliers": {"low": 1, "normal": 1, "high": 1}})


@asynccontextmanager
async def running(settings: Settings, sim: Any, *, wait_ready: bool = True
                  ) -> AsyncIterator[Service]:
    """Run a Service until the block ends, then shut it down cleanly."""
    service = Service(settings, module=sim)
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        if wait_ready:
            with anyio.fail_after(20):
                await service.ready_event.wait()
        yield service
        tg.cancel_scope.cancel()


@asynccontextmanager
async def client_for(service: Service, **kwargs: Any) -> AsyncIterator[Client]:
    async with Client("127.0.0.1", service.rpc.port, **kwargs) as client:
        yield client


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0,
                     interval: float = 0.02) -> Any:
    """Poll an (async or sync) predicate until it returns something truthy."""
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The scenario table (issue 4): each engine scenario's final P&L, when they ran."""
    import sys
    module = sys.modules.get("tests.test_scenarios") or sys.modules.get("test_scenarios")
    table = getattr(module, "SCENARIO_PNL", None)
    if not table:
        return
    terminalreporter.section("engine scenarios: final P&L (USD)")
    for name, value in table.items():
        terminalreporter.write_line(f"{name:<52} {value:>10.2f}")


async def http_get(port: int, path: str, *, headers: str = "", host: str = "127.0.0.1"
                   ) -> tuple[int, dict[str, str], bytes]:
    """One GET over TCP, as a browser on this machine sends it (``Host: host:port``); (status,
    headers, body). /metrics and /health answer any Host; the web view only loopback names."""
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n".encode())
        data = b""
        while True:
            try:
                data += await s.receive()
            except anyio.EndOfStream:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return int(lines[0].split()[1]), dict(line.split(": ", 1) for line in lines[1:]), body
