"""DTMS's side of a terminal link: a blocking object that behaves like the ``MetaTrader5`` module.

This module owns :class:`TerminalClient`, the client of ``dtms terminal-bridge``
(``broker.backend = "bridge"``) and the base of :class:`~dtms.brokers.sim.remote.RemoteTerminal`
(``dtms sim-terminal``): both servers speak the wire format of :mod:`dtms.bridge.server`. It
goes through :class:`~dtms.brokers.mt5.MT5Adapter` like every backend.

When the link is down, API functions behave like MT5 with a dead terminal: they return None
(``initialize``/``login``/``symbol_select`` return False) and ``last_error()`` says why: code
-10004 (no IPC connection: refused, reset, TLS failure), -10005 (the bridge answered "terminal
stuck") or -10100 (the bridge refused the token). The next call reconnects.

Besides the API: :meth:`TerminalClient.ping` (the heartbeat, on a connection of its own with a
short timeout, so it is answered while a long terminal call holds the main one) and
:meth:`TerminalClient.abort` (break the main connection at once, from any thread: a call blocked
on a dead bridge fails now rather than at its socket timeout).

Example::

    mt5 = TerminalClient("10.0.0.5", 8003, token="s3cret", tls=client_tls(ca="bridge.pem"))
    MT5Adapter(mt5).connect()
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from itertools import count
from typing import Any

import msgpack

from dtms.bridge.server import (
    API_METHODS,
    NO_IPC,
    REQUEST,
    STUCK_CODE,
    UNAUTHORIZED_CODE,
    decode,
    encode,
)
from dtms.brokers.sim import constants as c
from dtms.brokers.sim import types as sim_types

#: the package's result types (sim/types.py mirrors their names and fields): decoded as these
KNOWN_TYPES: dict[str, type] = {
    name: obj for name, obj in vars(sim_types).items()
    if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")}

_EXCEPTIONS: dict[str, type[Exception]] = {
    "KeyError": KeyError, "ValueError": ValueError, "TypeError": TypeError,
    "AttributeError": AttributeError,
}


class RemoteError(RuntimeError):
    """An exception raised on the far side that has no local counterpart."""


class LinkError(ConnectionError):
    """The link answered, but not with a terminal's answer: a refused token, a stuck
    terminal. ``code`` is what ``last_error()`` reports."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def client_tls(*, ca: str = "", verify: bool = True) -> ssl.SSLContext:
    """A TLS context for the bridge: the system's CAs, or only ``ca`` (a PEM file: the
    bridge's own certificate when it is self-signed); ``verify=False`` encrypts without
    checking who answers."""
    ctx = ssl.create_default_context(cafile=ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Link:
    """One connection, used by one caller at a time."""

    __slots__ = ("lock", "sock", "unpacker", "dead")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.dead = False

    def drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.dead = False


class TerminalClient:
    """A blocking stand-in for the ``MetaTrader5`` module, served over TCP."""

    #: how a far-side exception is named in this link's errors
    what = "terminal bridge"

    def __init__(self, host: str = "127.0.0.1", port: int = 8003, *, timeout: float = 30.0,
                 token: str = "", tls: ssl.SSLContext | None = None,
                 heartbeat_timeout: float = 1.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.token, self.tls, self.heartbeat_timeout = token, tls, heartbeat_timeout
        self._main, self._beat = _Link(), _Link()
        self._ids = count(1)
        self._link_error: tuple[int, str] | None = None

    # -- connection ----------------------------------------------------------------------
    def close(self) -> None:
        """Drop the connections (the next call reconnects)."""
        for link in (self._main, self._beat):
            with link.lock:
                link.drop()

    def abort(self) -> None:
        """Break the main connection now, even while a call waits on it (any thread)."""
        self._main.dead = True
        sock = self._main.sock
        if sock is not None:
            with contextlib.suppress(OSError):   # already closed by its owner: nothing to break
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> TerminalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except OSError:
                sock.close()
                raise
        return sock

    def _request(self, link: _Link, method: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], timeout: float) -> Any:
        """One call on ``link`` (its lock held); OSError (LinkError included) when the link is
        down, lost or refused."""
        if link.dead:
            link.drop()
        if link.sock is None:
            link.sock = self._open(timeout)
            if self.token:
                self._exchange(link, "auth", (), {"token": self.token})
        return self._exchange(link, method, args, kwargs)

    def _exchange(self, link: _Link, method: str, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        assert link.sock is not None
        msgid = next(self._ids)
        payload = [REQUEST, msgid, method, [encode(list(args)), encode(kwargs)]]
        try:
            link.sock.sendall(msgpack.packb(payload, use_bin_type=True))
            reply = self._receive(link, msgid)
        except OSError:
            link.drop()
            raise
        _, _, error, result = reply
        if error is not None:
            if error.get("type") == "Unauthorized":
                link.drop()   # the bridge closes it too
                raise LinkError(UNAUTHORIZED_CODE, f"{self._where()}: {error.get('message')}"
                                " (broker.bridge_token must be the bridge's --token)")
            if error.get("type") == "TerminalStuck":
                raise LinkError(STUCK_CODE, f"{self._where()}: {error.get('message')}")
            self._raise_remote(error)
        return decode(result, KNOWN_TYPES)

    @staticmethod
    def _receive(link: _Link, msgid: int) -> Any:
        assert link.sock is not None
        while True:
            for message in link.unpacker:
                if message[1] == msgid:
                    return message
                # else a stale reply to an abandoned request
            data = link.sock.recv(65536)
            if not data:
                raise ConnectionError("the far side closed the connection")
            link.unpacker.feed(data)

    def _where(self) -> str:
        return f"{self.what} {self.host}:{self.port}"

    def _raise_remote(self, error: dict[str, Any]) -> None:
        kind, message = error.get("type", ""), error.get("message", "")
        if kind in _EXCEPTIONS:
            raise _EXCEPTIONS[kind](message)
        raise RemoteError(f"{kind}: {message}")

    def _link_down(self, exc: OSError) -> tuple[int, str]:
        """What ``last_error()`` says after ``exc`` lost the link."""
        if isinstance(exc, LinkError):
            return exc.code, str(exc)
        return NO_IPC[0], f"{NO_IPC[1]} ({self._where()}: {exc})"

    # -- calls ---------------------------------------------------------------------------
    def _api_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._main.lock:
            if method == "last_error" and self._link_error is not None:
                return self._link_error
            try:
                result = self._request(self._main, method, args, kwargs, self.timeout)
            except OSError as exc:
                self._link_error = self._link_down(exc)
                return API_METHODS[method]
            self._link_error = None
            return result

    def ping(self) -> dict[str, Any]:
        """The heartbeat: ``{"version", "stuck_s"}`` from the far side, on a connection of its
        own within ``heartbeat_timeout``; OSError (LinkError: refused token) if it cannot."""
        with self._beat.lock:
            return dict(self._request(self._beat, "ping", (), {}, self.heartbeat_timeout))


def _api_method(name: str) -> Callable[..., Any]:
    def method(self: TerminalClient, *args: Any, **kwargs: Any) -> Any:
        return self._api_call(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def install_api(cls: type, constants: Mapping[str, Any]) -> None:
    """Give ``cls`` a method per MetaTrader5 API function (``_api_call``) and ``constants``."""
    for name in API_METHODS:
        setattr(cls, name, _api_method(name))
    for name, value in constants.items():
        setattr(cls, name, value)


install_api(TerminalClient, c.export_names())   # the package's constants (sim mirrors them)
