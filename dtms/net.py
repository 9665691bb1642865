"""Where DTMS's two ports (rpc, metrics) may listen, and what a failed bind says.

One rule for both: a loopback host needs no token; any other host (``0.0.0.0``, a LAN address,
a hostname, ``""`` = all interfaces) is refused unless the section's ``token`` is set -- at
construction, before anything listens. A bind that fails (port in use, no such address,
permission) raises :class:`ListenError`, whose message names the port and the settings that
change it, so the operator is told what to do rather than shown ``OSError(98)``.

Example::

    refuse_open_bind("metrics", settings.metrics.host, settings.metrics.token)  # ValueError
    listener = await listen_tcp("rpc", "127.0.0.1", 8001)                       # ListenError
"""

from __future__ import annotations

import errno
import ipaddress

import anyio
from anyio.abc import SocketStream
from anyio.streams.stapled import MultiListener

from dtms.config import ENV_PREFIX

#: errno values meaning "another socket holds this port" (POSIX, and Windows' WSAEADDRINUSE).
_IN_USE = {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname other than localhost, or "" (all interfaces)


def _env(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def refuse_open_bind(section: str, host: str, token: str) -> None:
    """Raise ValueError if ``host`` is not loopback and ``token`` is empty."""
    if not token and not is_loopback(host):
        raise ValueError(
            f"refusing to serve {section} on non-loopback host {host!r} ({section}.host) without "
            f"an auth token: set {section}.token ({_env(section, 'token')}) or bind "
            f"{section}.host to 127.0.0.1")


class ListenError(OSError):
    """A port could not be bound; the message names it and the settings that change it.
    ``section`` is ``"rpc"`` or ``"metrics"``."""

    def __init__(self, message: str, *, section: str) -> None:
        super().__init__(message)
        self.section = section


async def listen_tcp(section: str, host: str, port: int) -> MultiListener[SocketStream]:
    """``anyio.create_tcp_listener`` for the ``section`` port; raises :class:`ListenError`."""
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        busy = exc.errno in _IN_USE
        what = "already in use (another DTMS?)" if busy else f"{exc.strerror or exc}"
        raise ListenError(
            f"cannot listen on the {section} port {port} of {host}: {what}; set {section}.port "
            f"({_env(section, 'port')}) to a free port"
            + ("" if busy else f", or {section}.host ({_env(section, 'host')})"),
            section=section) from exc


__all__ = ["ListenError", "is_loopback", "listen_tcp", "refuse_open_bind"]
