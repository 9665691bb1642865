"""``dtms terminal-bridge``: the MetaTrader5 API served over TCP, next to a real terminal.

This module owns the bridge's server side and the wire codec every DTMS terminal link shares
(``dtms sim-terminal`` speaks the same). It runs ALONE, on the Windows (or Wine) Python next to
the terminal, with nothing installed but ``MetaTrader5`` and ``msgpack``: the standard library
and msgpack only, no DTMS import. Copy this one file and run it::

    python server.py --token SECRET --host 0.0.0.0            # or: python -m dtms.bridge.server
    dtms terminal-bridge --token SECRET --host 0.0.0.0         # the same, with dtms installed

Wire format: msgpack-rpc over one TCP connection (optionally TLS).
  request  ``[0, msgid, method, [args, kwargs]]``
  response ``[1, msgid, error, result]``; error is nil or ``{"type", "message", "retcode"}``
Values are plain on the wire: the terminal's named tuples become ``{"__nt__": name, "fields":
[...], "names": [...]}``, datetimes ``{"__dt__": epoch_seconds}`` (naive = UTC, as in MT5),
numpy arrays and scalars lists and numbers, so the DTMS side needs no ``MetaTrader5`` package.

Protocol methods besides the API's: ``auth {"token"}`` (needed first on every connection when
the bridge has a token), ``ping`` (the heartbeat: answered at once, never waiting for the
terminal; says whether a terminal call has been running past the call timeout).

Calls are serialised (one terminal, one caller at a time): one worker thread makes every
terminal call, a caller waits at most ``--call-timeout`` for its turn and its answer, else gets
a ``TerminalStuck`` error ("terminal stuck: ...", code -10005) -- and a call that never got its
turn never runs later.
"""

from __future__ import annotations

import argparse
import hmac
import importlib
import ipaddress
import json
import logging
import os
import queue
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgpack

log = logging.getLogger("dtms.bridge")

REQUEST, RESPONSE = 0, 1
PROTOCOL_VERSION = 1
#: MT5's RES_E_INTERNAL_FAIL_TIMEOUT: the terminal did not answer in time
STUCK_CODE = -10005
#: the bridge refused the connection's token (not an MT5 code: DTMS's own)
UNAUTHORIZED_CODE = -10100
NO_IPC = (-10004, "No IPC connection")
MAX_BUFFER = 64 * 1024 * 1024   # one message larger than this closes the connection

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


class TerminalStuck(RuntimeError):
    """The terminal is alive (the bridge answers) but did not answer a call in time."""

    retcode = STUCK_CODE


class Unauthorized(RuntimeError):
    """The connection's token is missing or wrong."""

    retcode = UNAUTHORIZED_CODE


# --- value codec ---------------------------------------------------------------------------
def encode(value: Any) -> Any:
    """Python value -> msgpack-safe structure (named tuples, datetimes and numpy tagged or
    made plain)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {"__nt__": type(value).__name__, "names": list(value._fields),
                "fields": [encode(v) for v in value]}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return {"__dt__": aware.timestamp()}
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return encode(value.tolist())   # numpy: rates arrays (records -> tuples), scalars
    return value


_TUPLE_TYPES: dict[tuple[str, tuple[str, ...]], Any] = {}
MAX_TUPLE_TYPES = 256   # the package has about a dozen result types


def _named_tuple(name: str, names: tuple[str, ...]) -> Any:
    """A named tuple class made at run time from the peer's type name and field names."""
    return namedtuple(name, names)  # the names are the peer's, not literals


def decode(value: Any, known: Mapping[str, type] | None = None) -> Any:
    """Inverse of :func:`encode`: arrays become tuples (as MT5 returns them), tagged maps named
    tuples -- of the class in ``known`` by that name when its fields match, else a namedtuple
    made once per (name, fields) -- and naive UTC datetimes."""
    if isinstance(value, list):
        return tuple(decode(v, known) for v in value)
    if isinstance(value, dict):
        if "__nt__" in value:
            name, fields = value["__nt__"], [decode(v, known) for v in value["fields"]]
            names = tuple(value.get("names") or ())
            given: Any = (known or {}).get(name)
            if given is not None and (not names or tuple(given._fields) == names):
                return given(*fields)
            if not names:
                raise ValueError(f"unknown named tuple {name!r}")
            made: Any = _TUPLE_TYPES.get((name, names))
            if made is None:
                made = _named_tuple(name, names)
                if len(_TUPLE_TYPES) < MAX_TUPLE_TYPES:   # a bound, whatever a peer sends
                    _TUPLE_TYPES[(name, names)] = made
            return made(*fields)
        if "__dt__" in value:
            return datetime.fromtimestamp(value["__dt__"], UTC).replace(tzinfo=None)
        return {k: decode(v, known) for k, v in value.items()}
    return value


def error_map(exc: BaseException) -> dict[str, Any]:
    """An exception as the response's error map."""
    return {"type": type(exc).__name__, "message": str(exc),
            "retcode": getattr(exc, "retcode", None), "comment": getattr(exc, "comment", None)}


def parse_request(message: Any) -> tuple[int, str, tuple[Any, ...], dict[str, Any]] | None:
    """``(msgid, method, args, kwargs)`` of a request, None if it is not one."""
    if not isinstance(message, list | tuple) or len(message) != 4 or message[0] != REQUEST:
        return None
    _, msgid, method, params = message
    if (not isinstance(method, str) or not isinstance(params, list | tuple) or len(params) != 2
            or not isinstance(params[0], list | tuple) or not isinstance(params[1], dict)):
        return None
    return msgid, method, tuple(decode(a) for a in params[0]), {
        str(k): decode(v) for k, v in params[1].items()}


def pack_response(msgid: Any, error: dict[str, Any] | None, result: Any) -> bytes:
    try:
        return msgpack.packb([RESPONSE, msgid, error, encode(result)], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:   # a value msgpack cannot carry
        return msgpack.packb([RESPONSE, msgid, error_map(
            TypeError(f"the terminal's answer cannot be encoded: {exc}")), None],
            use_bin_type=True)


# --- the open-port rule ----------------------------------------------------------------------
# A copy of dtms.net's rule (is_loopback / refuse_open_bind): this file must run alone, without
# DTMS installed. Keep the two in step.
def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname other than localhost, or "" (all interfaces)


def refuse_open_bind(host: str, token: str) -> None:
    """Raise ValueError if ``host`` is not loopback and ``token`` is empty."""
    if not token and not is_loopback(host):
        raise ValueError(f"refusing to serve the terminal on non-loopback host {host!r} without "
                         "a token: pass --token (and the same broker.bridge_token to DTMS) or "
                         "--host 127.0.0.1")


# --- the terminal, one call at a time ------------------------------------------------------
class _Job:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Terminal:
    """The terminal module behind a turn: one worker thread makes every call, in order."""

    def __init__(self, module: Any, call_timeout_s: float = 10.0) -> None:
        self.module = module
        self.call_timeout_s = call_timeout_s
        self._turn = threading.Lock()          # held from a call's start to its end
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._running: tuple[str, float] | None = None   # method, monotonic start
        threading.Thread(target=self._work, name="terminal", daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.result = job.fn()
            except Exception as exc:  # reported to the caller, who re-raises it
                job.error = exc
            finally:
                self._running = None
                job.done.set()
                self._turn.release()

    def stuck_s(self) -> float:
        """How long the running call has been over the call timeout (0: not stuck)."""
        running = self._running
        if running is None:
            return 0.0
        over = time.monotonic() - running[1] - self.call_timeout_s
        return round(over, 3) if over > 0 else 0.0

    def _stuck(self, method: str) -> TerminalStuck:
        running = self._running
        doing = (f"; {running[0]} running for {time.monotonic() - running[1]:.1f}s"
                 if running else "")
        return TerminalStuck(f"terminal stuck: {method} got no answer within "
                             f"{self.call_timeout_s:g}s{doing}")

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method not in API_METHODS:
            raise AttributeError(f"method {method!r} is not callable through the bridge")
        target = getattr(self.module, method)
        deadline = time.monotonic() + self.call_timeout_s
        if not self._turn.acquire(timeout=self.call_timeout_s):
            raise self._stuck(method)     # never queued: it will not run late
        job = _Job(lambda: target(*args, **kwargs))
        self._running = (method, time.monotonic())
        self._jobs.put(job)
        if not job.done.wait(max(0.0, deadline - time.monotonic())):
            raise self._stuck(method)     # it runs on; the turn frees when it returns
        if job.error is not None:
            raise job.error
        return job.result


# --- the server ----------------------------------------------------------------------------
class _Handler(socketserver.BaseRequestHandler):
    server: BridgeServer

    def handle(self) -> None:
        srv = self.server
        sock: socket.socket = self.request
        peer = ":".join(str(part) for part in self.client_address[:2])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if srv.ssl_context is not None:
            try:
                sock.settimeout(10.0)
                sock = srv.ssl_context.wrap_socket(sock, server_side=True)
                sock.settimeout(None)
            except (OSError, ssl.SSLError) as exc:
                log.warning("bridge: TLS handshake with %s failed: %s", peer, exc)
                return
        authed = not srv.token
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=MAX_BUFFER)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    request = parse_request(message)
                    if request is None:
                        log.warning("bridge: not msgpack-rpc from %s: connection closed", peer)
                        return
                    msgid, method, args, kwargs = request
                    if method == "auth" and srv.token:
                        authed = hmac.compare_digest(str(kwargs.get("token", "")).encode(),
                                                     srv.token.encode())
                    if not authed:
                        log.warning("bridge: %s from %s refused: wrong or missing token",
                                    method, peer)
                        why = ("refused the token" if method == "auth"
                               else "requires a token")
                        sock.sendall(pack_response(msgid, error_map(Unauthorized(
                            f"the terminal bridge {why}")), None))
                        return
                    sock.sendall(self._answer(msgid, method, args, kwargs))
        except (OSError, msgpack.UnpackException, ValueError) as exc:
            log.info("bridge: connection from %s ended: %s", peer, exc)
        finally:
            if sock is not self.request:
                sock.close()

    def _answer(self, msgid: Any, method: str, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> bytes:
        terminal = self.server.terminal
        if method == "auth":
            return pack_response(msgid, None, {"version": PROTOCOL_VERSION})
        if method == "ping":
            return pack_response(msgid, None, {"version": PROTOCOL_VERSION,
                                               "stuck_s": terminal.stuck_s()})
        try:
            result = terminal.call(method, args, kwargs)
        except Exception as exc:  # the caller gets it as an error reply
            if isinstance(exc, TerminalStuck):
                log.warning("bridge: %s", exc)
            return pack_response(msgid, error_map(exc), None)
        return pack_response(msgid, None, result)


class BridgeServer(socketserver.ThreadingTCPServer):
    """One thread per connection; every terminal call through the one :class:`Terminal`."""

    daemon_threads = True
    allow_reuse_address = os.name != "nt"   # Windows: SO_REUSEADDR lets two bind one port

    def __init__(self, terminal: Terminal, host: str = "127.0.0.1", port: int = 8003, *,
                 token: str = "", ssl_context: ssl.SSLContext | None = None) -> None:
        refuse_open_bind(host, token)
        self.terminal, self.token, self.ssl_context = terminal, token, ssl_context
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def server_tls(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile or None)
    return ctx


def load_terminal_module(name: str) -> Any:
    """``NAME`` (a module) or ``NAME:ATTR`` (an attribute; called if callable)."""
    module_name, _, attr = name.partition(":")
    module = importlib.import_module(module_name)
    if not attr:
        return module
    obj = getattr(module, attr)
    return obj() if callable(obj) else obj


# --- process entry point -------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bridge's options (shared by ``python server.py`` and ``dtms terminal-bridge``)."""
    parser.add_argument("--module", default="MetaTrader5",
                        help="the module with the MetaTrader5 API, NAME or NAME:ATTR "
                             "(default MetaTrader5)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; off loopback --token is required")
    parser.add_argument("--port", type=int, default=8003, help="0 = any free port")
    parser.add_argument("--token", default=os.environ.get("DTMS_BRIDGE_TOKEN", ""),
                        help="required from every client when set (default $DTMS_BRIDGE_TOKEN)")
    parser.add_argument("--certfile", default="", help="TLS certificate (PEM): serve TLS")
    parser.add_argument("--keyfile", default="", help="TLS private key (PEM)")
    parser.add_argument("--call-timeout", type=float, default=10.0,
                        help="seconds a call may take before it is answered 'terminal stuck'")
    parser.add_argument("--ready-file", default=None,
                        help='write {"port": P} here once listening')


def _write_ready(path: str, port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"port": port}, fh)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C; 0 on a clean stop, 2 on a bad option, 3 if it cannot
    start (the same exit codes as ``dtms serve``)."""
    if args.keyfile and not args.certfile:
        print("terminal-bridge: --keyfile needs --certfile", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535 or args.call_timeout <= 0:
        print(f"terminal-bridge: --port must be 0..65535 (got {args.port}) and --call-timeout "
              f"> 0 (got {args.call_timeout})", file=sys.stderr)
        return 2
    try:
        module = load_terminal_module(args.module)
        context = server_tls(args.certfile, args.keyfile) if args.certfile else None
        server = BridgeServer(Terminal(module, args.call_timeout), args.host, args.port,
                              token=args.token, ssl_context=context)
    except ImportError as exc:
        print(f"terminal-bridge: cannot start: the module {args.module!r} cannot be imported "
              f"({exc}); on Windows: pip install MetaTrader5 msgpack", file=sys.stderr)
        return 3
    except (OSError, ValueError, AttributeError, RuntimeError) as exc:
        print(f"terminal-bridge: cannot start: {exc}", file=sys.stderr)
        return 3
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    if args.ready_file:
        _write_ready(args.ready_file, server.port)
    print(f"terminal bridge serving {args.module} on {args.host}:{server.port}"
          f"{' (TLS)' if context else ''}, token {'required' if args.token else 'off'}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None, prog: str = "terminal-bridge") -> int:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Serve the MetaTrader5 API to DTMS over TCP.")
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
