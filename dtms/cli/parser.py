"""The ``dtms`` argument parser: every subcommand and option, with help texts that show the values
of the loaded settings (config file and ``DTMS_*`` variables), and the flags applied to them."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from dtms import __version__, config
from dtms.cli import guard as guard_cli
from dtms.cli.common import _SINCE_HELP, RESTART_KINDS, TRADE_STATES, parse_since
from dtms.rpc.protocol import MAX_PAGE

#: commands that print a table by default (``--json`` for the service's map)
TABLES = ("trades", "actions", "transitions", "restarts", "shadow")


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


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _since(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _policy_item(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value): JSON where it parses (numbers, true/false, null, [..]),
    a comma list as a list of numbers, otherwise the text (``mode=shadow``). The service
    checks types and bounds exactly; this only splits."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
        if "," in raw:
            try:
                value = [json.loads(v) for v in raw.split(",") if v.strip()]
            except ValueError:
                value = raw
    return key.strip(), value


_SINCE = _since
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
    s.add_argument("--backend", help=f"sim, sim-remote, bridge, mt5, or module:NAME[:ATTR] "
                                     f"(broker.backend, now "
                                     f"{settings.broker.backend})")
    s.add_argument("--demo", type=_integer(0), default=0, metavar="N",
                   help="open N positions in the simulated terminal and register them "
                        "(default 0)")
    s.add_argument("--log-format", choices=("json", "text"),
                   help=f"log lines on stderr (service.log_format, now "
                        f"{settings.service.log_format})")
    s.add_argument("--adopt-account", action="store_true",
                   help="the database belongs to another broker account: take on the "
                        "terminal's account from now on")

    st = sub.add_parser("sim-terminal",
                        help="run the simulated terminal in its own process (backend sim-remote)",
                        description=f"Serve the simulated terminal on {settings.sim.remote_host}:"
                                    f"{settings.sim.remote_port} (sim.remote_host, "
                                    "sim.remote_port).")
    st.add_argument("--ready-file", help='write {"port": P} here once listening')
    # issue 18: its options are the bridge module's own (it runs without DTMS too)
    sub.add_parser("terminal-bridge", add_help=False, prefix_chars="\0",
                   help="serve the MetaTrader5 API to DTMS over TCP, next to the terminal "
                        "(backend bridge; terminal-bridge --help)").add_argument(
        "bridge_args", nargs=argparse.REMAINDER,
        help="the bridge's own options: dtms terminal-bridge --help lists them")
    sub.add_parser("health", help="readiness of the service (exit 0 when ready)")
    sub.add_parser("status", help="service status, trades by state, broker")
    ac = sub.add_parser("actions", help="the action journal, newest first")
    ac.add_argument("--ticket", type=_TICKET, help="only this trade's actions (default: all)")
    ac.add_argument("--limit", type=_PAGE, default=50, help=f"rows, 1..{MAX_PAGE} (default 50)")
    ac.add_argument("--since", type=_SINCE, help=f"journal time: {_SINCE_HELP} (default: all)")

    r = sub.add_parser("register", help="register an open position",
                       description="Register an open position; anything not given is taken from "
                                   "the broker's position (the broker is the truth).")
    r.add_argument("ticket", type=_TICKET, help="the position's ticket")
    r.add_argument("--symbol", help="checked against the broker's position")
    r.add_argument("--direction", choices=("BUY", "SELL", "buy", "sell"),
                   help="checked against the broker's position")
    r.add_argument("--entry-price", type=float, help="reported back if the broker differs")
    r.add_argument("--volume", type=float, help="reported back if the broker differs")
    r.add_argument("--sl", type=float, help="reported back if the broker differs")
    r.add_argument("--tp", type=float, help="reported back if the broker differs")
    r.add_argument("--strategy-type", help="for the ownership rule")
    r.add_argument("--owner", help="for the ownership rule")
    r.add_argument("--magic", type=int, help="checked against the broker's position")
    r.add_argument("--comment", help="kept with the trade")
    r.add_argument("--policy", nargs="+", metavar="KEY=VALUE", type=_policy_item,
                   help=f"policy overrides for this trade, e.g. mode=shadow breakeven_r=0.5 "
                        f"(configured: mode={settings.policy.mode}, breakeven_r="
                        f"{settings.policy.breakeven_r:g})")

    t = sub.add_parser("trade", help="one trade by ticket")
    t.add_argument("ticket", type=_TICKET, help="the trade's ticket")
    ts = sub.add_parser("trades", help="list trades: position, price, open P/L, R, state")
    ts.add_argument("--state", type=str.upper, choices=TRADE_STATES, metavar="STATE",
                    help=f"one of {', '.join(TRADE_STATES)} (any case; default: all)")
    ts.add_argument("--symbol", help="only this symbol (default: all)")
    ts.add_argument("--open", action="store_true", help="only trades not closed")
    ts.add_argument("--limit", type=_PAGE, default=100, help=f"rows, 1..{MAX_PAGE} (default 100)")
    ts.add_argument("--offset", type=_integer(0), default=0, help="rows to skip (default 0)")
    tr = sub.add_parser("transitions", help="state transitions of a trade, oldest first")
    tr.add_argument("ticket", type=_TICKET, help="the trade's ticket")
    tr.add_argument("--limit", type=_PAGE, default=100, help=f"rows, 1..{MAX_PAGE} (default 100)")
    tr.add_argument("--since", type=_SINCE, help=f"{_SINCE_HELP} (default: all)")
    rs = sub.add_parser("restarts", help="restart history of the supervision tree")
    rs.add_argument("--limit", type=_PAGE, default=50, help=f"rows, 1..{MAX_PAGE} (default 50)")
    rs.add_argument("--kind", type=str.lower, choices=RESTART_KINDS, metavar="KIND",
                    help=f"one of {', '.join(RESTART_KINDS)} (default: all)")
    rs.add_argument("--since", type=_SINCE, help=f"{_SINCE_HELP} (default: all)")
    w = sub.add_parser("watch", help="live view of trades, state changes, actions and restarts")
    w.add_argument("--limit", type=_integer(1), default=40, help="trades shown at most (default 40)")
    w.add_argument("--refresh", type=_positive, default=2.0, metavar="SECONDS",
                   help="prices and open P/L are read again this often (default 2)")
    for name, text in (("pause", "stop acting on a trade, or --all (still followed and scored)"),
                       ("resume", "resume a paused trade (or --all), or a SUSPENDED one")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("ticket", type=_TICKET, nargs="?", help="the trade's ticket")
        cmd.add_argument("--all", action="store_true", help="every managed trade")
    sub.add_parser("unregister", help="stop managing a trade (the position stays open)"
                   ).add_argument("ticket", type=_TICKET, help="the trade's ticket")
    po = sub.add_parser(
        "policy", help="change a running trade's policy (or --all): dtms policy T mode=live",
        description="Change the policy overrides of a managed trade, validated like a "
                    "registration's (every bad key named with its bound), journaled as a "
                    "transition, in effect at once. VALUE is a number, true/false, a list "
                    "(1.5,2.5), a string (mode=shadow) or null (back to the configured value). "
                    f"Configured now: mode={settings.policy.mode}, breakeven_r="
                    f"{settings.policy.breakeven_r:g}, trail_atr_mult="
                    f"{settings.policy.trail_atr_mult:g}, l1_score={settings.policy.l1_score:g}.")
    po.add_argument("ticket", type=_TICKET, nargs="?", help="the trade's ticket")
    po.add_argument("changes", nargs="+", metavar="KEY=VALUE", type=_policy_item,
                    help="policy keys (dtms/policy/overrides.py lists them with their bounds)")
    po.add_argument("--all", action="store_true", help="every managed trade")
    sh = sub.add_parser("shadow", help="what shadow mode would have done, and the P/L difference")
    sh.add_argument("--ticket", type=_TICKET, help="only this trade (default: all)")
    sh.add_argument("--since", type=_SINCE, help=f"{_SINCE_HELP} (default: 00:00 UTC today)")
    guard_cli.add_commands(sub, _TICKET)
    for name, command in sub.choices.items():
        if name in TABLES:
            command.add_argument("--json", action="store_true",
                                 help="print the service's JSON instead of a table")
        elif name not in ("serve", "watch", "sim-terminal", "terminal-bridge"):
            command.add_argument("--json", action="store_true",
                                 help="JSON output (the default for this command)")
    from dtms.replay import cli as replay_cli  # issue 16: its own module
    replay_cli.add_parser(sub)
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
