"""The simulated terminal in its own process, reached over TCP like a real terminal's IPC link.

This module owns the remote link to a SimTerminal: ``serve_terminal`` (an anyio TCP server),
``RemoteTerminal`` (a blocking client object that behaves like the ``MetaTrader5`` module, so
``MT5Adapter(RemoteTerminal(port=P))`` works unchanged) and ``main`` (``python -m
dtms.brokers.sim.remote --port P``). A test can then SIGKILL DTMS while the terminal and its
positions live on.

Wire format: that of ``dtms terminal-bridge`` (msgpack-rpc, the codec and the ``ping``
heartbeat in :mod:`dtms.bridge.server`); the client is the bridge's
(:class:`~dtms.bridge.client.TerminalClient`) plus the simulator's controls and exceptions
(``SimTradeRejected`` travels with its retcode). Only the method names in ``API_METHODS`` and
``CONTROL_METHODS`` are callable.

When the link is down, API functions behave like MT5 with a dead terminal: they return None
(``initialize``/``login``/``symbol_select`` return False) and ``last_error()`` returns
``(-10004, "No IPC connection")``; the next call reconnects. Control methods raise
ConnectionError.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from typing import Any

import anyio
import anyio.abc
import msgpack

from dtms.bridge import server as wire
from dtms.bridge.client import KNOWN_TYPES, RemoteError, TerminalClient, install_api
from dtms.bridge.server import API_METHODS, NO_IPC, encode, error_map, pack_response

from . import constants as c
from .clock import RealtimeClock
from .controls import SimTradeRejected
from .terminal import SimTerminal
from .types import SimConfig

# The simulator's test controls ("sim_time" is a property read)
CONTROL_METHODS = frozenset({
    "open_position", "close_position_manually", "set_price", "advance", "set_market_open",
    "set_algo_trading", "set_symbol_trade_mode", "fail_next", "disconnect",
    "uncertain_next_order", "set_latency", "sim_time", "hold", "play",
    "move_before_next_order",
    "set_spread", "set_account_mode", "hide_position", "show_position", "delay_deals",
})

ALLOWED = frozenset(API_METHODS) | CONTROL_METHODS

__all__ = ["ALLOWED", "API_METHODS", "CONTROL_METHODS", "NO_IPC", "RemoteError",
           "RemoteTerminal", "decode", "encode", "main", "serve_process", "serve_terminal"]


def decode(value: Any) -> Any:
    """The wire codec's decode with the simulator's (the package's) result types."""
    return wire.decode(value, KNOWN_TYPES)


# --- server --------------------------------------------------------------------------------
def _dispatch(terminal: SimTerminal, method: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    target = getattr(terminal, method)
    if method == "sim_time":
        return target
    if method == "fail_next" and len(args) >= 3:
        args = (*args[:2], tuple(args[2]), *args[3:])
    if method == "fail_next" and "error" in kwargs:
        kwargs["error"] = tuple(kwargs["error"])
    return target(*args, **kwargs)


async def _handle_request(terminal: SimTerminal, message: Any) -> bytes | None:
    request = wire.parse_request(message)
    if request is None:
        return None
    msgid, method, args, kwargs = request
    if method == "ping":   # the heartbeat: answered without the terminal
        return pack_response(msgid, None, {"version": wire.PROTOCOL_VERSION, "stuck_s": 0.0})
    if method == "auth":   # no token here: a loopback test terminal
        return pack_response(msgid, None, {"version": wire.PROTOCOL_VERSION})
    try:
        if method not in ALLOWED:
            raise RemoteError(f"method {method!r} is not callable remotely")
        call = functools.partial(_dispatch, terminal, method, args, kwargs)
        result = await anyio.to_thread.run_sync(call)
    except Exception as exc:  # reported to the caller, who re-raises it
        return pack_response(msgid, error_map(exc), None)
    return pack_response(msgid, None, result)


async def _serve_connection(terminal: SimTerminal, stream: anyio.abc.SocketStream) -> None:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    async with stream:
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
            unpacker.feed(data)
            for message in unpacker:
                reply = await _handle_request(terminal, message)
                if reply is None:
                    return  # not msgpack-rpc: drop the connection
                try:
                    await stream.send(reply)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return


async def serve_terminal(terminal: SimTerminal, host: str = "127.0.0.1", port: int = 0, *,
                         task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
                         ) -> None:
    """Serve `terminal` over msgpack-rpc on host:port until cancelled; started(bound port)."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started(bound)
        await listener.serve(functools.partial(_serve_connection, terminal))


# --- client --------------------------------------------------------------------------------
class RemoteTerminal(TerminalClient):
    """A blocking stand-in for the `MetaTrader5` module backed by a remote SimTerminal, with
    the simulator's controls (which raise ConnectionError when the link is down)."""

    what = "simulated terminal"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 timeout: float = 30.0, heartbeat_timeout: float = 1.0) -> None:
        super().__init__(host, port, timeout=timeout, heartbeat_timeout=heartbeat_timeout)

    def _link_down(self, exc: OSError) -> tuple[int, str]:
        return NO_IPC   # exactly what MT5 says with no terminal

    def _raise_remote(self, error: dict[str, Any]) -> None:
        if error.get("type") == "SimTradeRejected":
            raise SimTradeRejected(int(error.get("retcode") or 0),
                                   str(error.get("comment") or ""))
        super()._raise_remote(error)

    def _control_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._main.lock:
            try:
                return self._request(self._main, method, args, kwargs, self.timeout)
            except OSError as exc:
                raise ConnectionError(f"simulated terminal at {self.host}:{self.port}"
                                      f" unreachable: {exc}") from exc

    @property
    def sim_time(self) -> float:
        """Current sim time of the remote terminal (epoch seconds)."""
        return float(self._control_call("sim_time", (), {}))


def _control_method(name: str) -> Any:
    def method(self: RemoteTerminal, *args: Any, **kwargs: Any) -> Any:
        return self._control_call(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(getattr(SimTerminal, name), "__doc__", None)
    return method


install_api(RemoteTerminal, {})
for _name in CONTROL_METHODS - {"sim_time"}:
    setattr(RemoteTerminal, _name, _control_method(_name))
for _name in API_METHODS:
    getattr(RemoteTerminal, _name).__doc__ = getattr(SimTerminal, _name).__doc__
del _name


# --- process entry point -------------------------------------------------------------------
def _write_ready(path: str, port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"port": port}, fh)
    os.replace(tmp, path)


async def _run(terminal: SimTerminal, host: str, port: int, ready_file: str | None) -> None:
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            bound = await tg.start(serve_terminal, terminal, host, port)
            if ready_file:
                _write_ready(ready_file, bound)
            print(bound, flush=True)
            async for _ in signals:
                break
        tg.cancel_scope.cancel()


def serve_process(terminal: SimTerminal, host: str, port: int,
                  ready_file: str | None = None) -> None:
    """Serve ``terminal`` in this process until SIGTERM/SIGINT (``dtms sim-terminal``)."""
    anyio.run(_run, terminal, host, port, ready_file)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """``python -m dtms.brokers.sim.remote --port P [--seed N] [--speed X] [--netting]
    [--balance B] [--symbol-suffix S] [--tick-interval T]``."""
    d = SimConfig()
    parser = argparse.ArgumentParser(prog="python -m dtms.brokers.sim.remote",
                                     description="Serve a simulated MT5 terminal over TCP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--netting", action="store_true", help="a netting account")
    parser.add_argument("--balance", type=float, default=d.balance)
    parser.add_argument("--symbol-suffix", default=d.symbol_suffix)
    parser.add_argument("--tick-interval", type=float, default=d.tick_interval,
                        help="sim seconds between generated ticks")
    parser.add_argument("--ready-file", default=None, help='write {"port": P} here once listening')
    ns = parser.parse_args(argv)
    margin_mode = (c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING if ns.netting
                   else c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING)
    config = SimConfig(seed=ns.seed, margin_mode=margin_mode, balance=ns.balance,
                       symbol_suffix=ns.symbol_suffix, tick_interval=ns.tick_interval)
    serve_process(SimTerminal(config, clock=RealtimeClock(speed=ns.speed)), ns.host, ns.port,
                  ns.ready_file)


if __name__ == "__main__":
    main()
