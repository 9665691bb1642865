"""The ``dtms`` argument parser: every subcommand and option, with help texts that show the values
of the loaded settings (config file and ``DTMS_*`` variables), and the flags applied to them."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from dtms import __version__, config
from dtms.cli import guard as guard_cli
from dtms.cli.common import RESTART_KINDS, TRADE_STATES
from dtms.rpc.protocol import MAX_PAGE


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in ``low..high``; otherwise a usage error naming the bound."""
    bound = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


_TICKET = _integer(1)
_PORT = _integer(0, 65535)
_PAGE = _integer(1, MAX_PAGE)


def build_parser(settings: config.Settings) -> argparse.ArgumentParser:
    """The ``dtms`` parser; help texts show the values of ``settings`` (config file and env)."""
    rpc, metrics = settings.rpc, settings.metrics
    p = argparse.ArgumentParser(
        prog="dtms", description="Defensive Trade Management System",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 ok, 2 usage, 3 not ready (or serve failed to start), "
               "4 not found, 1 anything else")
    p.add_argument("--version", action="version", version=f"dtms {__version__}")
    p.add_argument("--config", help="TOML config file (default: $DTMS_CONFIG or config/dtms.toml)")
    p.add_argument("--host", help=f"rpc host (rpc.host, now {rpc.host})")
    p.add_argument("--port", type=_PORT, help=f"rpc port (rpc.port, now {rpc.port})")
    p.add_argument("--token", help="auth token, if the service requires one")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the DTMS service",
                       description=f"Run DTMS: msgpack-rpc on {rpc.host}:{rpc.port}, metrics and "
                                   f"health on http://{metrics.host}:{metrics.port}.")
    s.add_argument("--metrics-port", type=_PORT,
                   help=f"metrics/health HTTP port (metrics.port, now {metrics.port})")
    s.add_argument("--db", help=f"SQLite file (store.path, now {settings.store.path})")
    s.add_argument("--backend", help=f"sim, sim-remote, mt5, or module:NAME (broker.backend, now "
                                     f"{settings.broker.backend})")
    s.add_argument("--demo", type=_integer(0), default=0, metavar="N",
                   help="open N positions in the simulated terminal and register them")
    s.add_argument("--log-format", choices=("json", "text"))
    s.add_argument("--adopt-account", action="store_true",
                   help="the database belongs to another broker account: take on the "
                        "terminal's account from now on")

    st = sub.add_parser("sim-terminal",
                        help="run the simulated terminal in its own process (backend sim-remote)")
    st.add_argument("--ready-file", help='write {"port": P} here once listening')
    sub.add_parser("health", help="readiness of the service (exit 0 when ready)")
    sub.add_parser("status", help="service status, trades by state, broker")
    ac = sub.add_parser("actions", help="the action journal, newest first")
    ac.add_argument("--ticket", type=_TICKET)
    ac.add_argument("--limit", type=_PAGE, default=50, help=f"1..{MAX_PAGE} (default 50)")
    ac.add_argument("--since", type=_non_negative, help="unix timestamp (journal time)")

    r = sub.add_parser("register", help="register an open position")
    r.add_argument("ticket", type=_TICKET)
    r.add_argument("--symbol")
    r.add_argument("--direction", choices=("BUY", "SELL", "buy", "sell"))
    r.add_argument("--entry-price", type=float)
    r.add_argument("--volume", type=float)
    r.add_argument("--sl", type=float)
    r.add_argument("--tp", type=float)
    r.add_argument("--strategy-type")
    r.add_argument("--owner")
    r.add_argument("--magic", type=int)
    r.add_argument("--comment")

    t = sub.add_parser("trade", help="one trade by ticket")
    t.add_argument("ticket", type=_TICKET)
    ts = sub.add_parser("trades", help="list trades")
    ts.add_argument("--state", type=str.upper, choices=TRADE_STATES, metavar="STATE",
                    help=f"one of {', '.join(TRADE_STATES)} (any case)")
    ts.add_argument("--symbol")
    ts.add_argument("--open", action="store_true", help="only trades not closed")
    ts.add_argument("--limit", type=_PAGE, default=100, help=f"1..{MAX_PAGE} (default 100)")
    ts.add_argument("--offset", type=_integer(0), default=0)
    ts.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tr = sub.add_parser("transitions", help="state transitions of a trade")
    tr.add_argument("ticket", type=_TICKET)
    rs = sub.add_parser("restarts", help="restart history of the supervision tree")
    rs.add_argument("--limit", type=_PAGE, default=50, help=f"1..{MAX_PAGE} (default 50)")
    rs.add_argument("--kind", type=str.lower, choices=RESTART_KINDS, metavar="KIND",
                    help=f"one of {', '.join(RESTART_KINDS)}")
    rs.add_argument("--since", type=_non_negative, help="unix timestamp")
    w = sub.add_parser("watch", help="live view of trades, state changes, actions and restarts")
    w.add_argument("--limit", type=_integer(1), default=40, help="trades shown at most")
    for name, text in (("pause", "stop acting on a trade, or --all (still followed and scored)"),
                       ("resume", "resume a paused trade (or --all), or a SUSPENDED one")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("ticket", type=_TICKET, nargs="?")
        cmd.add_argument("--all", action="store_true", help="every managed trade")
    sub.add_parser("unregister", help="stop managing a trade (the position stays open)"
                   ).add_argument("ticket", type=_TICKET)
    guard_cli.add_commands(sub, _TICKET)
    for name, command in sub.choices.items():
        if name not in ("serve", "watch", "trades", "sim-terminal"):  # trades has its own --json (table otherwise)
            command.add_argument("--json", action="store_true",
                                 help="JSON output (the default for this command)")
    return p


def _preload(argv: Sequence[str]) -> config.Settings | config.ConfigError:
    """The settings named by ``--config`` (or the default file) and env, before the full parse,
    so that ``--help`` shows them; a bad configuration is reported after the parse."""
    pre = argparse.ArgumentParser(prog="dtms", add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    try:
        return config.load(known.config)
    except config.ConfigError as exc:
        return exc


def _settings(settings: config.Settings, args: argparse.Namespace) -> config.Settings:
    """``settings`` with the command-line flags applied."""
    rpc: dict[str, Any] = {}
    if args.host:
        rpc["host"] = args.host
    if args.port is not None:
        rpc["port"] = args.port
    if args.token:
        rpc["token"] = args.token
    changes: dict[str, dict[str, Any]] = {"rpc": rpc} if rpc else {}
    if args.command == "serve":
        if args.metrics_port is not None:
            changes["metrics"] = {"port": args.metrics_port}
        if args.db:
            changes["store"] = {"path": args.db}
        if args.backend:
            changes["broker"] = {"backend": args.backend}
        if args.log_format:
            changes["service"] = {"log_format": args.log_format}
    return settings.replace(**changes) if changes else settings
