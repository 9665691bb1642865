"""The ``dtms`` command: run the service, and talk to it over the protocol.

``dtms serve`` runs the service (on the simulated terminal by default; ``--demo N`` opens N
positions in the simulated terminal and registers them through the protocol). The client
commands (``health``, ``status``, ``register``, ``trade``, ``trades``, ``transitions``,
``restarts``) read the same settings as the server, so they find it on the same port.

Exit codes (also in ``--help``): 0 ok; 2 usage (bad arguments or configuration; the message
names the argument and its allowed values or bounds, which are the server's); 3 not ready
(the service answered NOT_READY, cannot be reached, or -- for ``serve`` -- failed to start, e.g.
a port in use, named with the setting that changes it, or to become ready within
``service.startup_timeout_s``); 4 not found (unknown ticket); 1 anything else, including
``serve`` stopping because the root supervisor exceeded its restart intensity. Errors from the
service are printed to stderr as their error map. ``--help`` shows the values of the loaded
settings (config file and ``DTMS_*`` variables), not built-in defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from dtms import __version__, config
from dtms.errors import DtmsError
from dtms.metrics import ACTOR_KINDS
from dtms.model import TradeState
from dtms.net import ListenError
from dtms.rpc.protocol import MAX_PAGE

log = logging.getLogger("dtms.cli")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_READY, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
DEMO_SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "BTCUSD")
DEMO_MAGIC = 1001
#: What the server accepts for ``trades`` ``state`` and ``restarts`` ``kind``.
TRADE_STATES = tuple(TradeState.__members__)
RESTART_KINDS = ACTOR_KINDS


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
    for name, command in sub.choices.items():
        if name not in ("serve", "watch", "trades", "sim-terminal"):  # trades has its own --json (table otherwise)
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    loaded = _preload(argv)
    args = build_parser(loaded if isinstance(loaded, config.Settings) else config.Settings()
                        ).parse_args(argv)
    try:
        if isinstance(loaded, config.ConfigError):
            raise loaded
        settings = _settings(loaded, args)
    except config.ConfigError as exc:
        print(f"dtms: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        return serve(settings, demo=args.demo, adopt_account=args.adopt_account)
    if args.command == "replay":
        from dtms.replay import cli as replay_cli
        return replay_cli.run(args, settings)
    if args.command == "sim-terminal":
        from dtms.brokers.mt5 import sim_terminal
        from dtms.brokers.sim import remote

        # the same terminal as the embedded one: every [sim] setting applies
        remote.serve_process(sim_terminal(settings), settings.sim.remote_host,
                             settings.sim.remote_port, args.ready_file)
        return EXIT_OK
    return client_command(settings, args)


# -- serve ---------------------------------------------------------------------------------------

def serve(settings: config.Settings, *, demo: int = 0, adopt_account: bool = False) -> int:
    from dtms import logs
    from dtms.service import Service, StartupFailed, StartupTimeout
    from dtms.supervisor import SupervisorEscalation

    logs.setup(settings.service.log_level, settings.service.log_format,
               settings.service.supervisor_log)
    if demo and settings.broker.backend not in ("sim", "sim-remote"):
        print("dtms: --demo needs a simulated terminal (broker.backend = sim or sim-remote)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        service = Service(settings, adopt_account=adopt_account)
    except (RuntimeError, ValueError) as exc:
        print(f"dtms: cannot start: {exc}", file=sys.stderr)
        return EXIT_NOT_READY

    async def run() -> None:
        # Bind both ports before the tree starts: a busy port is a start-up error that names
        # its setting (ListenError), not a child crash with a traceback.
        await service.rpc.listen()
        if settings.metrics.enabled:
            await service.metrics_server.listen()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            await tg.start(service.run)
            print(f"DTMS {__version__} serving msgpack-rpc on {settings.rpc.host}:"
                  f"{service.rpc.port}, metrics on http://{settings.metrics.host}:"
                  f"{service.metrics_server.port}/metrics (broker: {settings.broker.backend})",
                  file=sys.stderr, flush=True)
            if demo:
                await service.ready_event.wait()
                await _demo(service, settings, demo)

    try:
        anyio.run(run)
    except ListenError as exc:
        flag = {"rpc": "--port", "metrics": "serve --metrics-port"}.get(exc.section)
        print(f"dtms: cannot start: {exc}" + (f" (or pass {flag})" if flag else ""),
              file=sys.stderr)
        return EXIT_NOT_READY
    except (StartupTimeout, StartupFailed, SupervisorEscalation, BaseExceptionGroup) as exc:
        fatal = _find(exc, (StartupTimeout, StartupFailed, SupervisorEscalation))
        if fatal is None:
            raise
        if isinstance(fatal, StartupTimeout | StartupFailed):
            print(f"dtms: {fatal}", file=sys.stderr)
            return EXIT_NOT_READY
        log.critical("root supervisor gave up: %s", fatal, exc_info=fatal)
        print(f"dtms: giving up after repeated crashes: {fatal}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0
    return 0


def _find(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of one of ``kinds`` in ``exc``, its groups and its causes."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kinds)
            if found is not None:
                return found
    return None


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


async def _demo(service: Any, settings: config.Settings, n: int) -> None:
    """Open n positions in the simulated terminal and register them over the protocol."""
    from dtms.client import Client

    sim = service.module
    rng = random.Random(settings.sim.seed)

    def open_one(i: int) -> dict[str, Any]:
        symbol = DEMO_SYMBOLS[i % len(DEMO_SYMBOLS)] + settings.sim.symbol_suffix
        direction = "BUY" if rng.random() < 0.5 else "SELL"
        info, tick = sim.symbol_info(symbol), sim.symbol_info_tick(symbol)
        price = tick.ask if direction == "BUY" else tick.bid
        dist = round(price * 0.004, info.digits)
        sign = 1 if direction == "BUY" else -1
        sl, tp = round(price - sign * dist, info.digits), round(price + sign * 2 * dist, info.digits)
        ticket = sim.open_position(symbol, direction, info.volume_min * 10, sl=sl, tp=tp,
                                   magic=DEMO_MAGIC, comment="demo bot")
        return {"ticket": ticket, "symbol": symbol, "direction": direction, "sl": sl, "tp": tp,
                "strategy_type": "demo", "owner": "demo-bot"}

    trades = [await anyio.to_thread.run_sync(open_one, i) for i in range(n)]
    async with Client.from_settings(settings, port=service.rpc.port) as client:
        for trade in trades:
            result = await client.register(trade)
            log.info("demo: registered %s %s %s (created=%s)", trade["ticket"], trade["symbol"],
                     trade["direction"], result["created"])
    print(f"demo: opened and registered {n} positions; try: dtms trades", file=sys.stderr,
          flush=True)


# -- client commands -------------------------------------------------------------------------------

def client_command(settings: config.Settings, args: argparse.Namespace) -> int:
    from dtms.client import ClientError, SyncClient

    cmd = args.command
    if cmd == "watch":
        return watch(settings, limit=args.limit)
    try:
        with SyncClient.from_settings(settings, retries=1) as client:
            if cmd == "health":
                h = client.health()
                _print_json(h)
                return EXIT_OK if h.get("ready") else EXIT_NOT_READY
            if cmd == "status":
                _print_json(client.status())
            elif cmd == "register":
                fields = {k: getattr(args, k) for k in ("symbol", "direction", "entry_price",
                                                        "volume", "sl", "tp", "strategy_type",
                                                        "owner", "magic", "comment")}
                trade = {"ticket": args.ticket, **{k: v for k, v in fields.items() if v is not None}}
                _print_json(client.register(trade))
            elif cmd == "trade":
                _print_json(client.trade(args.ticket))
            elif cmd == "trades":
                filters: dict[str, Any] = {"limit": args.limit, "offset": args.offset}
                if args.state:
                    filters["state"] = args.state
                if args.symbol:
                    filters["symbol"] = args.symbol
                if args.open:
                    filters["open_only"] = True
                result = client.trades(**filters)
                if args.json:
                    _print_json(result)
                else:
                    print(format_trades(result["trades"]))
            elif cmd == "transitions":
                _print_json(client.call("transitions", {"ticket": args.ticket}))
            elif cmd == "restarts":
                query: dict[str, Any] = {"limit": args.limit}
                if args.kind:
                    query["kind"] = args.kind
                if args.since is not None:
                    query["since"] = args.since
                _print_json(client.call("restarts", query))
            elif cmd == "actions":
                query = {"limit": args.limit}
                if args.ticket is not None:
                    query["ticket"] = args.ticket
                if args.since is not None:
                    query["since"] = args.since
                _print_json(client.call("actions", query))
            elif cmd in ("pause", "resume") and args.all == (args.ticket is not None):
                print(f"dtms {cmd}: give a ticket or --all", file=sys.stderr)
                return EXIT_USAGE
            elif cmd in ("pause", "resume"):
                _print_json(client.call(cmd, {"all": True} if args.all
                                        else {"ticket": args.ticket}))
            elif cmd == "unregister":
                _print_json(client.call(cmd, {"ticket": args.ticket}))
    except DtmsError as err:
        _print_json(err.to_wire(), stream=sys.stderr)
        return {"NOT_READY": EXIT_NOT_READY, "NOT_FOUND": EXIT_NOT_FOUND}.get(err.code, EXIT_ERROR)
    except BrokenPipeError:
        # our stdout was closed early (e.g. `dtms trades | head`): not a connection problem
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (ClientError, ConnectionError, TimeoutError) as exc:
        print(f"dtms: cannot reach DTMS at {settings.rpc.host}:{settings.rpc.port}: {exc}",
              file=sys.stderr)
        return EXIT_NOT_READY
    return EXIT_OK


def watch(settings: config.Settings, *, limit: int = 40) -> int:
    """Redraw a live view on every event until interrupted."""
    from dtms.client import Client, ClientError

    async def run() -> None:
        async with Client.from_settings(settings) as client:
            await client.wait_ready(timeout=settings.client.timeout_s * 6)
            listed = await client.trades(open_only=True, limit=1000)
            trades = {t["ticket"]: t for t in listed["trades"]}
            events: list[str] = []
            actions = (await client.call("actions", {"limit": 5}))["actions"]
            restarts = (await client.call("restarts", {"limit": 5}))["restarts"]
            screen = WatchScreen(f"{settings.rpc.host}:{settings.rpc.port}", limit)
            screen.draw(trades, events, actions, restarts)
            async for method, params in client.subscribe():
                trade = params.get("trade")
                if trade is not None:
                    trades[trade["ticket"]] = trade
                if method == "trade.state":
                    events.append(f"{params['ticket']}: {params['from_state'] or 'new'} -> "
                                  f"{params['to_state']} ({params['reason']})")
                elif method == "trade.updated":
                    events.append(f"{params['ticket']}: updated")
                screen.draw(trades, events[-8:], actions, restarts)

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        return EXIT_OK
    except DtmsError as err:
        _print_json(err.to_wire(), stream=sys.stderr)
        return EXIT_NOT_READY if err.code == "NOT_READY" else EXIT_ERROR
    except (ClientError, ConnectionError, TimeoutError) as exc:
        print(f"dtms: lost DTMS at {settings.rpc.host}:{settings.rpc.port}: {exc}",
              file=sys.stderr)
        return EXIT_NOT_READY
    return EXIT_OK


class WatchScreen:
    """Draws the watch view: clear, then trades by state, latest events, actions, restarts."""

    def __init__(self, address: str, limit: int, stream: Any = None) -> None:
        self.address = address
        self.limit = limit
        self.stream = stream or sys.stdout

    def draw(self, trades: dict[int, dict[str, Any]], events: list[str],
             actions: list[dict[str, Any]], restarts: list[dict[str, Any]]) -> None:
        live = [t for t in trades.values() if t["state"] not in ("CLOSED", "RELEASED")]
        by_state: dict[str, int] = {}
        for t in trades.values():
            by_state[t["state"]] = by_state.get(t["state"], 0) + 1
        out = ["\x1b[H\x1b[2J", f"DTMS watch  {self.address}  "
               + "  ".join(f"{k}={v}" for k, v in sorted(by_state.items())), ""]
        shown = sorted(live, key=lambda t: (t["state"], t["ticket"]))[: self.limit]
        out.append(format_trades(shown))
        out += ["", "latest events:"] + ([f"  {e}" for e in events] or ["  (none)"])
        out += ["", "latest actions:"] + ([f"  {a['ticket']} {a['kind']} {a['status']}"
                                           for a in actions] or ["  (none)"])
        out += ["", "recent restarts:"] + ([f"  {r['supervisor']}/{r['child']} {r['action']} "
                                            f"{r['exception']}" for r in restarts] or ["  (none)"])
        self.stream.write("\n".join(out) + "\n")
        self.stream.flush()


def _print_json(value: Any, stream: Any = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str), file=stream or sys.stdout)


def format_trades(trades: list[dict[str, Any]]) -> str:
    """A fixed-width table of trades for people."""
    cols = [("TICKET", "ticket", "{}"), ("SYMBOL", "symbol", "{}"), ("DIR", "direction", "{}"),
            ("VOLUME", "volume", "{:g}"), ("ENTRY", "entry_price", "{:g}"), ("SL", "sl", "{:g}"),
            ("TP", "tp", "{:g}"), ("STATE", "state", "{}"), ("SCORE", "score", "{:g}"),
            ("DEFENSIVE", "defensive", "{}"),
            ("CLOSE", "close_reason", "{}"), ("OWNER", "owner", "{}")]
    rows = [[h for h, _, _ in cols]]
    rows += [[fmt.format(t.get(k, "")) if t.get(k, "") != "" else "-" for _, k, fmt in cols]
             for t in trades]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"({len(trades)} trade{'s' if len(trades) != 1 else ''})")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
