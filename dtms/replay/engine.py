"""The replay engine: DTMS's own actors, on recorded history, on a virtual clock.

This module owns :func:`replay`: it builds the same core tree as ``dtms serve`` (store,
broker, market hub, position watcher, registry under a rest-for-one supervisor; the RPC and
metrics endpoints are left out: nobody connects to a replay) around a
:class:`~dtms.brokers.sim.SimTerminal` that plays the recorded ticks, runs it on a
:class:`~dtms.replay.loop.VirtualTimeLoop`, and opens each recorded trade in the terminal at its
own time and price and registers it, as a trader would. Everything DTMS then does -- scores,
stops, partial closes, hedges, and the terminal's fills, freeze and stops levels -- is the live
code's.

What differs from a live run, and why:

* **No worker threads.** The broker runs terminal calls inline (the terminal is in-process and
  answers at once) and SQLite runs inline on the loop's thread (a real file in a temporary
  directory, ``synchronous=OFF``: it is thrown away). Nothing outside the loop can then wake
  it, so jumping the clock to the next timer is sound -- and a call costs no thread hand-off.
* **Ticks polled when they happen.** ``market.tick_poll_s`` and ``broker.poll_interval_s`` are
  the spacing of the generated ticks (a quarter bar), and the clock starts on that grid, so
  every poll reads exactly one new tick (1 s for recorded ticks).
* **Idle stretches are skipped.** While no trade is open the clock skips to just before the
  next trade's open (the terminal still builds every bar in between, so the indicators see the
  whole history).
* **Market time everywhere.** The registry and trades are given the terminal's clock, so the
  journal's and transitions' times are market times.

The outcome is a :class:`RawRun` (the terminal's deals, DTMS's journal and transitions, the
ticks); :mod:`dtms.replay.report` turns it into figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import sqlite3
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from dtms.actors.broker import BrokerActor
from dtms.actors.market import MarketHub
from dtms.actors.positions import PositionWatcher
from dtms.actors.registry import Register, RegistryActor
from dtms.actors.store import StoreActor
from dtms.brokers.mt5 import MT5Adapter, sim_config
from dtms.brokers.sim import SimTerminal
from dtms.brokers.sim import constants as c
from dtms.brokers.sim.history import History, HistoryError, Ticks, open_recorded
from dtms.brokers.sim.symbols import build_symbols
from dtms.config import Settings
from dtms.errors import DtmsError
from dtms.metrics import Metrics
from dtms.model import Registration
from dtms.policy.overrides import resolve_policy
from dtms.replay.loop import LoopClock, VirtualTimeLoop
from dtms.replay.trades import RecordedTrade
from dtms.supervisor import Backoff, ChildSpec, Intensity, Strategy, Supervisor

log = logging.getLogger(__name__)

#: seconds of market before a trade's open that a skip leaves to run (a bar close or two)
LEAD_S = 600.0
Progress = Callable[[float, float, int], None]   # (market seconds done, total, trades opened)


class InlineConnection(aiosqlite.Connection):
    """aiosqlite's connection with every call run at once on the loop's thread (no worker
    thread: see the module docstring). The store actor uses it exactly as the threaded one."""

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Any:
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class ReplayStore(StoreActor):
    async def connect(self, path: Path) -> aiosqlite.Connection:
        return await InlineConnection(
            lambda: sqlite3.connect(str(path), isolation_level=None), 64)


class ReplayBroker(BrokerActor):
    async def offload(self, fn: Callable[[], Any]) -> Any:
        return fn()


@dataclass
class TradeRun:
    """One recorded trade's replay: the terminal's ticket and, after the run, what happened."""
    trade: RecordedTrade
    ticket: int = 0
    error: str = ""                      # why DTMS did not take it over (it ran unmanaged)
    deals: list[Any] = field(default_factory=list)      # of the position and its hedges
    hedges: list[int] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)   # the trades table's row
    ended: bool = False                  # still open at the history's end: closed there


@dataclass
class RawRun:
    runs: list[TradeRun]
    ticks: dict[str, Ticks]
    specs: dict[str, Any]
    profit: Callable[[str, str, float, float, float], float]
    start: float
    end: float
    policy: dict[str, Any]
    wall_s: float = 0.0
    scored_bars: int = 0   # M5 bar closes the engine scored (trades open, or just before)


def replay_settings(settings: Settings, step: float, db: Path) -> Settings:
    """The settings a replay runs with: the user's, with the polls on the tick grid and a
    throw-away store."""
    return settings.replace(
        market={"tick_poll_s": step},
        broker={"poll_interval_s": step, "poll_max_share": 1.0},
        store={"path": str(db), "synchronous": "OFF", "archive_interval_s": 10 * 365 * 86400.0},
        metrics={"enabled": False},
        service={"gc_freeze": False})


def grid_step(histories: Mapping[str, History]) -> float:
    """Seconds between polls: the finest generated tick spacing (1 s with recorded ticks)."""
    steps = [h.tick_step for h in histories.values()]
    return 1.0 if any(s == 0 for s in steps) else min(steps)


def replay(histories: Mapping[str, History], trades: list[RecordedTrade], settings: Settings,
           *, policy: Mapping[str, Any] | None = None, spread: Mapping[str, int] | None = None,
           progress: Progress | None = None, workdir: str | None = None) -> RawRun:
    """Run DTMS over ``trades`` on ``histories`` (by symbol); raises HistoryError for trades
    the histories cannot replay, InvalidArgument for a bad policy override."""
    policy = dict(policy or {})
    resolve_policy(settings.policy, policy)   # names every bad policy.<key> with its bound
    unknown = sorted({t.symbol for t in trades} - set(histories))
    if unknown:
        raise HistoryError(f"no history for {', '.join(unknown)}: give --bars "
                           f"{unknown[0]}=file.csv")
    try:
        specs = build_symbols(only=tuple(histories))
    except ValueError as exc:
        raise HistoryError(f"--bars: {exc}") from None
    for t in trades:
        h = histories[t.symbol]
        if not h.start <= t.open_time < h.end:
            raise HistoryError(f"trade {t.ticket}: opened at {t.open_time:.0f}, outside the "
                               f"{t.symbol} history ({h.start:.0f} .. {h.end:.0f})")
    spread = spread or {}
    ticks = {s: h.ticks(spread.get(s, specs[s].spread), specs[s].point)
             for s, h in histories.items()}
    with tempfile.TemporaryDirectory(prefix="dtms-replay-", dir=workdir) as tmp:
        step = grid_step(histories)
        run_settings = replay_settings(settings, step, Path(tmp) / "replay.sqlite3")
        runs = [TradeRun(t) for t in trades]
        holder: dict[str, Any] = {}
        wall = time.perf_counter()
        anyio.run(_main, histories, ticks, runs, run_settings, policy, step, progress, holder,
                  backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop})
        _collect(runs, Path(run_settings.store.path), holder["sim"], run_settings)
        sim = holder["sim"]
    kinds = {"BUY": c.ORDER_TYPE_BUY, "SELL": c.ORDER_TYPE_SELL}

    def profit(symbol: str, direction: str, volume: float, open_: float, close: float) -> float:
        return sim.order_calc_profit(kinds[direction], symbol, volume, open_, close)

    return RawRun(runs, ticks, specs, profit, min(h.start for h in histories.values()),
                  max(h.end for h in histories.values()), policy, time.perf_counter() - wall,
                  holder.get("scored", 0))


async def _main(histories: Mapping[str, History], ticks: dict[str, Ticks], runs: list[TradeRun],
                settings: Settings, policy: dict[str, Any], step: float,
                progress: Progress | None, holder: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    start = min(h.start for h in histories.values())
    end = max(h.end for h in histories.values())
    clock = LoopClock(loop, start)
    config = dataclasses.replace(sim_config(settings.sim), symbols=tuple(histories),
                                 history_days=0.0, initial_deposit_deal=False)
    sim = SimTerminal(config, clock=clock, history=ticks)
    holder["sim"] = sim
    metrics = Metrics()
    bs, sup = settings.broker, settings.supervisor
    store = ReplayStore(settings.store, metrics)
    broker = ReplayBroker(MT5Adapter.from_settings(sim, settings), metrics=metrics,
                          call_timeout_s=bs.call_timeout_s, connect_retry_s=bs.connect_retry_s)
    market = MarketHub(broker=broker, settings=settings, metrics=metrics, store=store)
    watcher = PositionWatcher(broker, metrics=metrics, interval_s=bs.poll_interval_s,
                              max_share=bs.poll_max_share, dtms_magic=bs.magic,
                              comment_tag=bs.comment_tag)
    registry = RegistryActor(settings, store=store, broker=broker, watcher=watcher,
                             market=market, metrics=metrics, clock=clock.now)
    core = Supervisor(
        "core", [ChildSpec(a.name, a.run, stop=a.stop, shutdown_timeout=sup.shutdown_timeout_s)
                 for a in (store, broker, market, watcher, registry)],
        strategy=Strategy.REST_FOR_ONE, intensity=Intensity(sup.root_max_restarts,
                                                            sup.root_period_s),
        backoff=Backoff(sup.min_backoff_s, sup.max_backoff_s, sup.jitter))

    def report(opened: int) -> None:
        if progress is not None:
            progress(min(clock.now(), end) - start, end - start, opened)

    def quiet() -> bool:
        return not registry.trades and not sim.positions_total()

    def on_grid(t: float) -> float:   # the next grid time at or after t (loop seconds)
        return math.ceil((t - start) / step) * step

    async with anyio.create_task_group() as tg:
        await tg.start(core.run)
        while not (store.db is not None and broker.connected and registry.recovered):
            await anyio.sleep(step)
        for n, run in enumerate(runs):
            t = run.trade
            while clock.now() < t.open_time:
                if quiet() and t.open_time - LEAD_S > clock.now() + step:
                    # nothing to manage until this trade: skip to just before it
                    target = on_grid(t.open_time - LEAD_S)
                    loop.skip_to(target)
                    await anyio.sleep(target - loop.time())
                else:   # a trade is open: the market runs; look again in a bar
                    await anyio.sleep(min(t.open_time - clock.now(), 4 * step))
            run.ticket = open_recorded(sim, t.symbol, t.direction, t.volume, t.open_price,
                                       t.sl, t.tp, comment=f"replay #{t.ticket}")
            try:
                await registry.ask(Register(Registration(run.ticket, owner="replay",
                                                         policy=policy)), timeout=60.0)
            except DtmsError as exc:
                run.error = exc.message
                log.warning("trade %s not taken over: %s", t.ticket, run.error)
            report(n + 1)
        while not quiet() and clock.now() < end:
            await anyio.sleep(min(step * 64, max(step, end - clock.now())))
            report(len(runs))
        # bar closes the market actors scored (the work the pure policy would do alone)
        holder["scored"] = sum(m.bar_closes for m in market.symbols.values())
        tg.cancel_scope.cancel()
    sim.initialize()   # the broker actor shut its connection down on stopping
    for pos in sim.positions_get() or ():   # the history is over: close at its last price
        sim.close_position_manually(pos.ticket)
        for run in runs:
            if pos.ticket == run.ticket:
                run.ended = True
    report(len(runs))


def _collect(runs: list[TradeRun], db_path: Path, sim: SimTerminal, settings: Settings) -> None:
    """Read what happened: the terminal's deals, DTMS's journal and transitions."""
    db = sqlite3.connect(str(db_path))
    db.row_factory = sqlite3.Row
    try:
        for run in runs:
            if not run.ticket:
                continue
            rows = [dict(r) for table in ("trades", "trades_archive")
                    for r in db.execute(f"SELECT * FROM {table} WHERE ticket = ?",
                                        (run.ticket,))]
            run.row = rows[0] if rows else {}
            for r in db.execute("SELECT * FROM actions WHERE ticket = ? ORDER BY seq",
                                (run.ticket,)):
                a = dict(r)
                a["request"] = json.loads(a.get("request") or "{}")
                a["result"] = json.loads(a.get("result") or "{}")
                run.actions.append(a)
                if a["kind"] == "HEDGE" and a["status"] == "done" and a["result"].get("order"):
                    run.hedges.append(int(a["result"]["order"]))
            run.transitions = [dict(r) for r in db.execute(
                "SELECT at, from_state, to_state, reason FROM transitions WHERE ticket = ? "
                "ORDER BY id", (run.ticket,))]
            for ticket in (run.ticket, *run.hedges):
                run.deals.extend(sim.history_deals_get(position=ticket) or ())
            run.deals.sort(key=lambda d: (d.time_msc, d.ticket))
    finally:
        db.close()
