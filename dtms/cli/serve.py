"""``dtms serve``: run the service until a signal, print its one start line, and map how it
stopped to an exit code; ``--demo N`` opens N positions in the simulated terminal and registers
them over the protocol."""

from __future__ import annotations

import logging
import random
import signal
import sys
from typing import Any

import anyio

from dtms import __version__, config
from dtms.cli.common import EXIT_ERROR, EXIT_NOT_READY, EXIT_USAGE
from dtms.net import ListenError

log = logging.getLogger("dtms.cli")

DEMO_SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "BTCUSD")
DEMO_MAGIC = 1001


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
