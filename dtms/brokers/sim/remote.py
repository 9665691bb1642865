"""The simulated terminal in its own process, reached over TCP like a real terminal's IPC link.

This module owns the remote link to a SimTerminal: ``serve_terminal`` (an anyio TCP server),
``RemoteTerminal`` (a blocking client object that behaves like the ``MetaTrader5`` module, so
``MT5Adapter(RemoteTerminal(port=P))`` works unchanged) and ``main`` (``python -m
dtms.brokers.sim.remote --port P``). A test can then SIGKILL DTMS while the terminal and its
positions live on.

Wire format: msgpack-rpc over one TCP connection.
  request  ``[0, msgid, method, [args, kwargs]]`` (args a list, kwargs a map)
  response ``[1, msgid, error, result]``; error is nil or
           ``{"type": "SimTradeRejected", "message": "...", "retcode": 10019 | nil}``
Values are encoded recursively: a named tuple is ``{"__nt__": "TradePosition", "fields": [...]}``
(type names from ``sim/types.py``), a tuple/list is an array (decoded as a tuple, as MT5 returns
tuples), a datetime is ``{"__dt__": epoch_seconds}`` (naive datetimes are UTC, as in MT5) and is
decoded as a naive UTC datetime. Only the method names in ``API_METHODS`` and
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
import socket
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import count
from typing import Any

import anyio
import anyio.abc
import msgpack

from . import constants as c
from . import types as sim_types
from .clock import RealtimeClock
from .controls import SimTradeRejected
from .faults import NO_IPC
from .terminal import SimTerminal
from .types import SimConfig

REQUEST, RESPONSE = 0, 1

# MetaTrader5 API functions -> the value a dead terminal returns
API_METHODS: dict[str, Any] = {
    "initialize": False, "login": False, "shutdown": None, "last_error": NO_IPC,
    "version": None, "terminal_info": None, "account_info": None, "symbols_total": None,
    "symbols_get": None, "symbol_info": None, "symbol_info_tick": None, "symbol_select": False,
    "copy_rates_from_pos": None, "copy_rates_from": None, "copy_rates_range": None,
    "positions_total": None, "positions_get": None, "orders_total": None, "orders_get": None,
    "order_check": None, "order_calc_margin": None, "order_calc_profit": None,
    "order_send": None, "history_deals_get": None, "history_deals_total": None,
    "history_orders_get": None, "history_orders_total": None,
}

# The simulator's test controls ("sim_time" is a property read)
CONTROL_METHODS = frozenset({
    "open_position", "close_position_manually", "set_price", "advance", "set_market_open",
    "set_algo_trading", "set_symbol_trade_mode", "fail_next", "disconnect",
    "uncertain_next_order", "set_latency", "sim_time", "hold", "play",
    "move_before_next_order",
    "set_spread", "set_account_mode", "hide_position", "show_position", "delay_deals",
})

ALLOWED = frozenset(API_METHODS) | CONTROL_METHODS

_NAMED_TUPLES = {name: obj for name, obj in vars(sim_types).items()
                 if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")}

_EXCEPTIONS: dict[str, type[Exception]] = {
    "KeyError": KeyError, "ValueError": ValueError, "TypeError": TypeError,
}


class RemoteError(RuntimeError):
    """An exception raised by the remote terminal that has no local counterpart."""


# --- value encoding ------------------------------------------------------------------------
def encode(value: Any) -> Any:
    """Python value -> msgpack-safe structure (named tuples and datetimes tagged)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {"__nt__": type(value).__name__, "fields": [encode(v) for v in value]}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return {"__dt__": aware.timestamp()}
    return value


def decode(value: Any) -> Any:
    """Inverse of encode: arrays become tuples, tagged maps named tuples / naive UTC datetimes."""
    if isinstance(value, list):
        return tuple(decode(v) for v in value)
    if isinstance(value, dict):
        if "__nt__" in value:
            cls = _NAMED_TUPLES.get(value["__nt__"])
            if cls is None:
                raise ValueError(f"unknown named tuple {value['__nt__']!r}")
            return cls(*(decode(v) for v in value["fields"]))
        if "__dt__" in value:
            return datetime.fromtimestamp(value["__dt__"], UTC).replace(tzinfo=None)
        return {k: decode(v) for k, v in value.items()}
    return value


def _error_map(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc),
            "retcode": getattr(exc, "retcode", None), "comment": getattr(exc, "comment", None)}


def _raise_remote(error: dict[str, Any]) -> None:
    kind, message = error.get("type", ""), error.get("message", "")
    if kind == "SimTradeRejected":
        raise SimTradeRejected(int(error.get("retcode") or 0), str(error.get("comment") or ""))
    if kind in _EXCEPTIONS:
        raise _EXCEPTIONS[kind](message)
    raise RemoteError(f"{kind}: {message}")


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


async def _handle_request(terminal: SimTerminal, message: Any) -> list[Any] | None:
    if not isinstance(message, list | tuple) or len(message) != 4 or message[0] != REQUEST:
        return None
    _, msgid, method, params = message
    try:
        if method not in ALLOWED:
            raise RemoteError(f"method {method!r} is not callable remotely")
        args_raw, kwargs_raw = params
        args = tuple(decode(a) for a in args_raw)
        kwargs = {str(k): decode(v) for k, v in kwargs_raw.items()}
        call = functools.partial(_dispatch, terminal, method, args, kwargs)
        result = await anyio.to_thread.run_sync(call)
    except Exception as exc:  # reported to the caller, who re-raises it
        return [RESPONSE, msgid, _error_map(exc), None]
    return [RESPONSE, msgid, None, encode(result)]


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
                    await stream.send(msgpack.packb(reply, use_bin_type=True))
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
class RemoteTerminal:
    """A blocking stand-in for the `MetaTrader5` module backed by a remote SimTerminal."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._ids = count(1)
        self._link_error: tuple[int, str] | None = None

    def close(self) -> None:
        """Drop the connection (the next call reconnects)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> RemoteTerminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def _request(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One call; OSError (ConnectionError included) when the link is down or lost."""
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        msgid = next(self._ids)
        payload = [REQUEST, msgid, method, [encode(list(args)), encode(kwargs)]]
        try:
            self._sock.sendall(msgpack.packb(payload, use_bin_type=True))
            while True:
                for message in self._unpacker:
                    _, rid, error, result = message
                    if rid != msgid:
                        continue  # a stale reply to an abandoned request
                    if error is not None:
                        _raise_remote(error)
                    return decode(result)
                data = self._sock.recv(65536)
                if not data:
                    raise ConnectionError("terminal closed the connection")
                self._unpacker.feed(data)
        except OSError:
            self._drop()
            raise

    def _api_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            if method == "last_error" and self._link_error is not None:
                return self._link_error
            try:
                result = self._request(method, args, kwargs)
            except OSError:
                self._link_error = NO_IPC
                return API_METHODS[method]
            self._link_error = None
            return result

    def _control_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            try:
                return self._request(method, args, kwargs)
            except OSError as exc:
                raise ConnectionError(f"simulated terminal at {self.host}:{self.port}"
                                      f" unreachable: {exc}") from exc

    @property
    def sim_time(self) -> float:
        """Current sim time of the remote terminal (epoch seconds)."""
        return float(self._control_call("sim_time", (), {}))


def _make_method(name: str, control: bool) -> Callable[..., Any]:
    def method(self: RemoteTerminal, *args: Any, **kwargs: Any) -> Any:
        if control:
            return self._control_call(name, args, kwargs)
        return self._api_call(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    original = getattr(SimTerminal, name)
    method.__doc__ = getattr(original, "__doc__", None)
    return method


for _name in API_METHODS:
    setattr(RemoteTerminal, _name, _make_method(_name, control=False))
for _name in CONTROL_METHODS - {"sim_time"}:
    setattr(RemoteTerminal, _name, _make_method(_name, control=True))
for _name, _value in c.export_names().items():
    setattr(RemoteTerminal, _name, _value)
del _name, _value


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
