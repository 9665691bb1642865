"""Engine benchmark: what a tick, a bar close and an idle market cost one DTMS process.

Every figure runs DTMS's real actors -- ``Service`` with its market, trade, registry, store and
broker actors -- over an embedded SimTerminal on a ManualClock with ``history_mode="flat"``:
nothing moves unless the bench plays a price. Positions are opened with ``sim.open_position``
(0.01 lot BUYs at 1.08512, the margin check bypassed while opening, as in the registration
bench) and written to a new SQLite store (``migrate`` + the store's own upsert) before the service
starts, so DTMS recovers them the way a cold start does: registering 100,000 trades over the rpc
(~300/s) would take minutes and measure registration, not the engine.

The trades form a **ladder**: trade ``i`` has its stop ``30 + i // k`` points under the entry, so
its breakeven trigger (+1 R) is that far above it and each level holds exactly ``k`` trades. A
played tick at level ``j`` crosses the triggers of exactly the ``k`` trades of level ``j``; each
of them decides to move its stop to breakeven and does it (journal, store, ``order_send``). This
is the decision path with a real action behind it, not a no-op decision.

Figures, each from one child process per configuration (``python -m bench.engine --child ...``)
so that RSS and caches are not shared between configurations:

1. **tick -> decision** with N trades on EURUSD, price-level index ON, then OFF
   (``broadcast_ticks=True`` on the hub and the symbol actor: every tick to every trade, the
   issue's baseline). A sample is DTMS's own ``tick_to_decision`` (from the tick's arrival in the
   market actor to the trade's decision): the bench replaces the histogram's ``observe`` and
   wraps ``TradeActor._evaluate`` (this process only) to learn which tick each decision answers,
   so a trade's follow-up evaluation after its action is not counted. Quoted: p50/p99 over all
   decisions of the played ticks, OFF/ON ratios, and per tick the time to its last decision;
   ticks/s = 1 / that median (how fast one symbol's ticks could come back to back).
2. **bar close -> every trade re-scored**, 10,000 trades, in a process of its own (no tick has
   moved the price: ATR stays 0, nobody trails): a tick past the M5 bar end, a point higher
   each bar, makes the market actor load bars, compute ``market_signals`` once and tell every
   trade a ``BarClose``. Quoted: the median over the bar closes of arrival -> last decision,
   next to the pure policy alone (``trade_score`` + ``decide`` for every trade, no actors: the
   floor under the actor shell), and ``market_signals`` timed alone on 300 random-walk bars.
3. **RSS** after every trade actor is up and has left its watch: VmRSS of the process minus what
   it held before the service started (the interpreter and the simulator's N positions),
   per trade, and that total against 0.5 GiB (4 KiB/trade) for 100,000 trades.
4. **idle CPU**: N trades over 20 symbols (EURUSD and 19 clones of it, EURUSDb..EURUSDt, added
   to the simulator's symbol table in the child process only: it has 5 built-in symbols), a thread playing 10
   ticks/s per symbol that cross no trigger, ``market.tick_poll_s = 0.1`` so DTMS reads them.
   CPU is ``process_time`` over the window minus the tick player's thread and minus the CPU
   spent inside simulator calls (metered around every terminal function DTMS calls): what
   DTMS itself burns. The simulator's per-tick SL/TP scan over all positions (a terminal-side
   cost) is bypassed during this figure; no played tick reaches any stop. Baseline: the same
   with no ticks at all.

5. **crash storm**: N trades on EURUSD (the ladder of figure 1), ``STORM_WARMUP`` warm-up ticks,
   then ticks played as in figure 1 (index ON, k crossed per tick) over a window WITHOUT a
   storm, then over the same number of other levels WITH one: tickets of the ladder's top
   levels (never crossed by a played tick, so disjoint from the measured trades) are told
   ``"poison"`` (a TypeError in ``TradeActor.handle``) in rotation -- each crashes
   ``STORM_PER_TICKET`` times, below ``trades.max_restarts`` within ``restart_period_s``, the
   next poison as soon as the previous restart has reloaded, then the next ticket -- from
   before the window opens until after it closes. ``supervisor.min_backoff_s`` /
   ``max_backoff_s`` are ``STORM_BACKOFF_S`` in this child, so the restarts happen within the
   window. Quoted: the measured trades' tick -> decision p50/p99 with and without the storm
   (only their decisions are sampled: a restarted trade's evaluation of the price it
   subscribes to is not a tick's), and the restart cost per crash, "decision + state reload,
   backoff excluded": ``Runtime._crashed`` from the crash caught to its RestartEvent reported,
   plus the restarted incarnation's ``TradeActor.on_start`` (its row and unresolved journal
   read from the store, its market subscribed again); with the counts of crashes, restarts,
   give-ups (0 by construction) and escalations (``dtms_supervisor_escalations_total``, every
   supervisor: must stay 0). "Unchanged" is read as a storm p99 within ``STORM_TOLERANCE`` of
   the no-storm p99.

Every figure also records DTMS's actor restarts, decisions that never came (a stalled tick is
given up after STALL_S and counted, never waited on forever) and the time spent in Python's
cyclic garbage collector (``gc.callbacks``).

Settings are the defaults except ports (ephemeral), the store path, ``startup_timeout_s``,
and ``market.tick_poll_s`` (0.01 s for 1 and 2 so a played tick is read at once -- it does not
enter the measured interval; 0.1 s for 4). JSON logs at INFO go to a file, as ``dtms serve``.

Example::

    python -m bench engine --quick
    python -m bench engine --json /tmp/engine.json
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import gc
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from bench.registration import percentile

QUICK_SIZES, DEFAULT_SIZES = (1_000, 10_000), (1_000, 10_000, 100_000)
K = 10                       # trades whose trigger one played tick crosses
SCORING_TRADES = 10_000
IDLE_SYMBOLS, IDLE_RATE = 20, 10.0
SYMBOL = "EURUSD"
START = datetime(2024, 6, 3, 8, 0, tzinfo=UTC).timestamp()   # Monday, London session
M5 = 300
ENTRY, POINT, DIGITS = 1.08512, 0.00001, 5   # EURUSD BUY at bid 1.08500 + 12 points spread
R0 = 30                      # points from entry to the nearest stop
TICK_DT = 0.1                # sim seconds between played ticks (all inside one M5 bar)
IDLE_LOW = 1.08490           # idle ticks: 1.08490..1.08529, between every stop and trigger
MAGIC = 4242
GIB = 1024**3
CHILD_TIMEOUT_S = 3600.0
STALL_S = 30.0               # no decision for this long while the market is idle: give up a tick
STORM_TRADES, QUICK_STORM_TRADES = 10_000, 2_000
STORM_WARMUP = 3             # ticks before the no-storm window (first-tick costs kept out)
STORM_PER_TICKET = 3         # crashes of one ticket before the next one starts
STORM_BACKOFF_S = (0.002, 0.02)   # supervisor.min_backoff_s, max_backoff_s in the storm child
STORM_TOLERANCE = 1.5        # storm p99 / no-storm p99 still read as "unchanged"

progress = logging.getLogger(__name__)   # phase markers in a child's log (to attach py-spy)


# --------------------------------------------------------------------------- setup


def rss_bytes() -> int:
    """VmRSS of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class GcMeter:
    """Collections and seconds of the cyclic garbage collector, by generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.by_thread: Counter[int] = Counter()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":   # a collection holds the GIL: start and stop come in pairs
            self._started = time.perf_counter()
        else:
            spent = time.perf_counter() - self._started
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += spent
            self.by_thread[threading.get_ident()] += spent

    def in_this_thread(self) -> float:
        """Seconds of collections triggered by the calling thread."""
        return self.by_thread[threading.get_ident()]

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def mark(self) -> tuple[int, float]:
        """(full collections, seconds in every generation) so far."""
        return self.count[2], sum(self.seconds)

    def since(self, mark: tuple[int, float]) -> dict[str, float]:
        full, seconds = self.mark()
        return {"gc_full": full - mark[0], "gc_s": seconds - mark[1]}


class MeteredTerminal:
    """The SimTerminal as DTMS sees it, adding up the CPU time spent inside its functions.

    A garbage collection that a simulator call happens to trigger walks DTMS's heap too: with
    a ``gc_meter`` its time is left out of ``cpu`` (it is DTMS's)."""

    def __init__(self, sim: Any, gc_meter: GcMeter | None = None) -> None:
        self._sim = sim
        self._gc = gc_meter
        self._lock = threading.Lock()
        self.cpu = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sim, name)
        if not callable(attr):
            return attr

        def metered(*args: Any, **kwargs: Any) -> Any:
            collected = self._gc.in_this_thread() if self._gc else 0.0
            started = time.thread_time()
            try:
                return attr(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                if self._gc:
                    spent -= self._gc.in_this_thread() - collected
                with self._lock:
                    self.cpu += spent
        return metered


@contextlib.contextmanager
def simulated_symbols(count: int) -> Iterator[tuple[str, ...]]:
    """EURUSD and ``count - 1`` clones of it (EURUSDb, EURUSDc...) in the simulator's table."""
    from dtms.brokers.sim import symbols

    original = symbols.BUILTIN_SYMBOLS
    base = next(s for s in original if s.name == SYMBOL)
    clones = tuple(dataclasses.replace(base, name=f"{SYMBOL}{chr(98 + i)}",
                                       path=f"{base.path}{chr(98 + i)}")
                   for i in range(count - 1))
    symbols.BUILTIN_SYMBOLS = original + clones
    try:
        yield (SYMBOL, *(c.name for c in clones))
    finally:
        symbols.BUILTIN_SYMBOLS = original


def make_sim(names: tuple[str, ...]) -> Any:
    from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal

    # stop_out off and a 60 s own-tick interval: the simulator's per-step scans over every
    # position are terminal-side work, kept out of the process where it can be
    sim = SimTerminal(SimConfig(seed=7, balance=1e12, history_mode="flat", history_days=3,
                                symbols=names, stop_out=False, tick_interval=60.0),
                      clock=ManualClock(START))
    assert sim.initialize()
    for name in names:
        sim.hold(name)
    return sim


def open_ladder(sim: Any, symbol: str, n: int, k: int) -> list[list[int]]:
    """Open n BUYs on symbol, trade i with its stop R0 + i // k points under the entry.

    Returns the tickets by level. Setup only: the simulator's O(positions) margin check is
    bypassed while opening (the balance is huge) and restored afterwards.
    """
    engine = sim._engine
    engine.check_margin = lambda sym, volume, price: engine.market.margin(sym, volume, price)
    try:
        levels: list[list[int]] = []
        for i in range(n):
            if i % k == 0:
                levels.append([])
            sl = round(ENTRY - (R0 + i // k) * POINT, DIGITS)
            levels[-1].append(sim.open_position(symbol, "BUY", 0.01, sl=sl, magic=MAGIC,
                                                comment="bench"))
        return levels
    finally:
        vars(engine).pop("check_margin", None)


def level_bid(level: int) -> float:
    """The bid that reaches the breakeven trigger (+1 R) of the trades of ``level``."""
    return round(ENTRY + (R0 + level) * POINT, DIGITS)


async def populate_store(path: str, sim: Any) -> int:
    """Write every open position as a HEALTHY trade, as registration would have stored it."""
    import aiosqlite

    from dtms.actors.schema import migrate
    from dtms.actors.store import _UPSERT, _trade_params
    from dtms.brokers.mt5 import MT5Adapter
    from dtms.model import Trade, TradeState

    now = time.time()
    rows = [_trade_params(Trade(
        ticket=p.ticket, symbol=p.symbol, direction=p.direction, entry_price=p.price_open,
        volume=p.volume, initial_volume=p.volume, sl=p.sl, tp=p.tp, initial_sl=p.sl,
        state=TradeState.HEALTHY, state_since=now, strategy_type="bench", owner="bench",
        magic=p.magic, comment=p.comment, created_at=now, updated_at=now,
        opened_at=float(p.time))) for p in MT5Adapter(sim).positions()]
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await migrate(db)
        await db.execute("BEGIN IMMEDIATE")
        await db.executemany(_UPSERT, rows)
        await db.execute("COMMIT")
    return len(rows)


def bench_settings(db_path: str, tick_poll_s: float) -> Any:
    from dtms.config import Settings

    return Settings().replace(rpc={"port": 0}, metrics={"port": 0}, store={"path": db_path},
                              market={"tick_poll_s": tick_poll_s},
                              service={"startup_timeout_s": CHILD_TIMEOUT_S})


async def until(predicate: Callable[[], bool], what: str, timeout: float = 600.0,
                interval: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {what} not reached within {timeout}s")
        await anyio.sleep(interval)


# --------------------------------------------------------------------------- decision samples

_CURRENT: contextvars.ContextVar[tuple[float, int] | None] = contextvars.ContextVar(
    "bench_decision", default=None)


class DecisionLog:
    """Every tick_to_decision observation with the tick it answers: ``(seen, seconds, ticket)``.

    Stands in for the service's histogram (and forwards to it) while ``recorded`` is active.
    """

    def __init__(self, histogram: Any, gc_meter: GcMeter) -> None:
        self.histogram = histogram
        self.gc = gc_meter
        self.samples: list[tuple[float, float, int]] = []
        self.per_tick: Counter[float] = Counter()
        self.only: set[int] | None = None   # sample only these tickets' decisions

    def observe(self, amount: float) -> None:
        self.histogram.observe(amount)
        current = _CURRENT.get()
        if current is not None and (self.only is None or current[1] in self.only):
            self.samples.append((current[0], amount, current[1]))
            self.per_tick[current[0]] += 1

    def clear(self) -> None:
        self.samples.clear()
        self.per_tick.clear()


@contextlib.contextmanager
def recorded(service: Any) -> Iterator[DecisionLog]:
    """Collect exact decision samples from ``service`` (patches this process only)."""
    from dtms.actors.trade import TradeActor

    log = DecisionLog(service.metrics.tick_to_decision, GcMeter())
    original = TradeActor._evaluate

    async def evaluate(self: Any, view: Any, fresh: bool, seen: float) -> None:
        token = _CURRENT.set((seen, self.ticket))
        try:
            return await original(self, view, fresh, seen)
        finally:
            _CURRENT.reset(token)

    TradeActor._evaluate = evaluate  # type: ignore[method-assign]
    service.metrics.tick_to_decision = log
    try:
        with log.gc:
            yield log
    finally:
        TradeActor._evaluate = original  # type: ignore[method-assign]
        service.metrics.tick_to_decision = log.histogram


@contextlib.asynccontextmanager
async def running(service: Any, watches: dict[str, int]) -> AsyncIterator[float]:
    """Run the service until every trade actor is up with its watch; yields startup seconds."""
    async with anyio.create_task_group() as tg:
        started = time.perf_counter()
        await tg.start(service.run)

        def watching() -> bool:
            markets = service.market.symbols
            return service.ready and all(
                s in markets and len(markets[s].index) >= n for s, n in watches.items())
        await until(watching, "every trade watching", timeout=CHILD_TIMEOUT_S, interval=0.05)
        await until(all_idle(list(service.registry.trades.values())), "every trade idle",
                    interval=0.05)
        startup = time.perf_counter() - started
        progress.info("bench: %d trades watching after %.1f s", len(service.registry.trades),
                      startup)
        yield startup
        tg.cancel_scope.cancel()


def all_idle(actors: list[Any]) -> Callable[[], bool]:
    """A predicate: every actor idle. Each call resumes at the first actor found busy last time,
    so that waiting on 100,000 actors does not itself load the event loop."""
    cursor = 0

    def check() -> bool:
        nonlocal cursor
        while cursor < len(actors):
            if not actors[cursor].idle:
                return False
            cursor += 1
        return True
    return check


async def calm(market: Any, actors: list[Any]) -> None:
    """The market's mailbox is empty and the given trade actors are idle, twice in a row."""
    for _ in range(2):
        await until(all_idle(actors), "the tick's trades idle")
        await until(lambda: market.mailbox_depth == 0, "the market's mailbox empty")
        await anyio.sleep(0.002)


async def play_and_collect(service: Any, sim: Any, log: DecisionLog, bid: float,
                           interval: float, expected: int, actors: list[Any]
                           ) -> tuple[list[float], float]:
    """Play one tick; wait for ``expected`` decisions answering it and for the given actors to
    finish their work; return the decisions' latencies and the seconds until then.

    If DTMS stops deciding (no new decision for STALL_S while the market actor is idle: a
    trade actor crashed, say) the decisions so far are returned; the caller counts the
    shortfall instead of hanging."""
    mark = len(log.samples)
    market = service.market.symbols[SYMBOL]
    await anyio.to_thread.run_sync(sim.play, SYMBOL, [bid], interval)
    count, progressed = mark, time.monotonic()
    while len(log.samples) == mark or log.per_tick[log.samples[mark][0]] < expected:
        if len(log.samples) != count or not market.idle:
            count, progressed = len(log.samples), time.monotonic()
        elif time.monotonic() - progressed > STALL_S:
            progress.warning("bench: the tick at %s answered by %d of %d trades", bid,
                             log.per_tick[log.samples[mark][0]] if count > mark else 0,
                             expected)
            break
        await anyio.sleep(0.001)
    if len(log.samples) == mark:
        return [], time.perf_counter() - progressed
    seen = log.samples[mark][0]
    await calm(market, actors)
    settled = time.perf_counter() - seen
    return [v for s, v, _ in log.samples[mark:] if s == seen], settled


# --------------------------------------------------------------------------- figures 1-3


def _summary(latencies: list[float], completions: list[float], *, events: int, ticks: int,
             expected: int, restarts: float, gc_used: dict[str, float]) -> dict[str, Any]:
    lat, comp = sorted(latencies), sorted(completions)
    return {"ticks": ticks, "decisions": len(lat), "expected": expected, "events": events,
            "restarts": restarts, "p50_s": percentile(lat, 0.5), "p99_s": percentile(lat, 0.99),
            "tick_p50_s": percentile(comp, 0.5), "tick_p99_s": percentile(comp, 0.99),
            **gc_used}


def restarts(service: Any) -> float:
    """Actor restarts so far (every kind), from DTMS's own counter."""
    return sum(s.value for m in service.metrics.actor_restarts.collect() for s in m.samples
               if s.name.endswith("_total"))


async def tick_latency(service: Any, sim: Any, log: DecisionLog,
                       levels: list[tuple[int, list[int]]], *, broadcast: bool) -> dict[str, Any]:
    """Figure 1 for one mode: play one tick per level, each crossing that level's k triggers."""
    market = service.market.symbols[SYMBOL]
    service.market.broadcast_ticks = market.broadcast_ticks = broadcast
    progress.info("bench: %d ticks, index %s", len(levels), "OFF" if broadcast else "ON")
    trades = service.registry.trades
    latencies: list[float] = []
    completions: list[float] = []
    sent, restarts0, expected, gc0 = market.events_sent, restarts(service), 0, log.gc.mark()
    for level, tickets in levels:
        want = len(market.subscribers) if broadcast else len(tickets)
        values, _ = await play_and_collect(service, sim, log, level_bid(level), TICK_DT, want,
                                           [trades[t] for t in tickets if t in trades])
        latencies += values
        completions += [max(values)] if values else []
        expected += want
    service.market.broadcast_ticks = market.broadcast_ticks = False
    return _summary(latencies, completions, events=market.events_sent - sent, ticks=len(levels),
                    expected=expected, restarts=restarts(service) - restarts0,
                    gc_used=log.gc.since(gc0))


def _histogram(h: Any) -> tuple[float, float]:
    """(count, sum) of an unlabelled prometheus Histogram."""
    samples = {s.name: s.value for s in h.collect()[0].samples}
    return next(v for k, v in samples.items() if k.endswith("_count")), next(
        v for k, v in samples.items() if k.endswith("_sum"))


async def bar_close_scoring(service: Any, sim: Any, log: DecisionLog, closes: int
                            ) -> dict[str, Any]:
    """Figure 2: ticks past the M5 bar end; arrival -> every subscribed trade's decision."""
    market = service.market.symbols[SYMBOL]
    actors = list(service.registry.trades.values())
    count0, sum0 = _histogram(service.metrics.market_bar_seconds)
    closes0 = market.bar_closes
    restarts0, gc0 = restarts(service), log.gc.mark()
    progress.info("bench: %d bar closes", closes)
    latencies: list[float] = []
    completions: list[float] = []
    settled: list[float] = []
    base = sim.symbol_info_tick(SYMBOL).bid
    for i in range(closes):
        now = sim.clock.now()
        boundary = (math.floor(now / M5) + 1) * M5
        # a point higher each bar: the BUYs score as favoured and stay HEALTHY (a flat market
        # reads slightly bearish and would move every trade to WARNING_L1 after a few bars)
        bid = round(base + (i + 1) * POINT, DIGITS)
        values, done = await play_and_collect(service, sim, log, bid, boundary + 1 - now,
                                              len(market.subscribers), actors)
        latencies += values
        completions += [max(values)] if values else []
        settled.append(done)
    count, total = _histogram(service.metrics.market_bar_seconds)
    out = _summary(latencies, completions, events=0, ticks=closes, expected=closes * len(actors),
                   restarts=restarts(service) - restarts0, gc_used=log.gc.since(gc0))
    out.update(bar_closes=market.bar_closes - closes0, settled_s=sorted(settled),
               load_and_signals_s=(total - sum0) / max(1.0, count - count0))
    return out


def time_policy(service: Any) -> float:
    """Seconds the pure policy takes to re-score every trade once, without actors: trade_score
    and decide for each trade, on the symbol's current view (the floor under figure 2)."""
    from dtms.policy.lifecycle import Snapshot, decide
    from dtms.policy.signals import trade_score

    view = service.market.symbols[SYMBOL].view()
    actors = list(service.registry.trades.values())
    started = time.perf_counter()
    for actor in actors:
        signals, tick = view.signals, view.tick
        snap = Snapshot(now=float(tick.time), bid=tick.bid, ask=tick.ask, spec=view.spec,
                        hedging=view.hedging, atr=signals.atr,
                        score=trade_score(signals, actor.trade.direction))
        decide(actor.trade, snap, actor.policy)
    return time.perf_counter() - started


def time_market_signals(reps: int) -> list[float]:
    """``market_signals`` alone on 300 M5 + 300 M15 random-walk bars (DTMS's default depth)."""
    from dtms.brokers.mt5 import MT5Adapter
    from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
    from dtms.config import Settings
    from dtms.policy.signals import Bars, market_signals

    settings = Settings()
    sim = SimTerminal(SimConfig(seed=7, history_days=4, symbols=(SYMBOL,)),
                      clock=ManualClock(START))
    assert sim.initialize()
    adapter, n = MT5Adapter(sim), settings.market.bars
    m5, m15 = adapter.rates(SYMBOL, "M5", n, 1), adapter.rates(SYMBOL, "M15", n, 1)
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        market_signals(Bars.from_rows(m5), Bars.from_rows(m15), symbol=SYMBOL,
                       settings=settings.signals)
        out.append(time.perf_counter() - started)
    return sorted(out)


async def engine_run(n: int, *, k: int = K, ticks_on: int, ticks_off: int, bar_closes: int = 0,
                     db_path: str, emit: Callable[[dict[str, Any]], None] | None = None
                     ) -> dict[str, Any]:
    """Figures 1-3 (2 when bar_closes > 0) for n trades on EURUSD, in this process.

    ``emit`` gets the results before the service shuts down (a child process writes them and
    exits: cancelling 100,000 actors takes anyio minutes)."""
    from dtms.service import Service

    rss_base = rss_bytes()
    sim = make_sim((SYMBOL,))
    ladder = open_ladder(sim, SYMBOL, n, k)
    await populate_store(db_path, sim)
    rss_sim = rss_bytes()
    service = Service(bench_settings(db_path, 0.01), module=MeteredTerminal(sim))
    if ticks_on + ticks_off > len(ladder):   # a level is crossed once: share what there is
        ticks_off = min(ticks_off, len(ladder) // 2)
        ticks_on = len(ladder) - ticks_off
    out: dict[str, Any] = {"trades": n, "k": k, "rss_base": rss_base, "rss_sim": rss_sim}
    with recorded(service) as log:
        async with running(service, {SYMBOL: n}) as startup_s:
            out.update(startup_s=startup_s, rss_ready=rss_bytes(),
                       startup_gc=log.gc.since((0, 0.0)))
            log.clear()
            if ticks_on:
                levels = list(enumerate(ladder))
                out["on"] = await tick_latency(service, sim, log, levels[:ticks_on],
                                               broadcast=False)
                out["off"] = await tick_latency(service, sim, log,
                                                levels[ticks_on:ticks_on + ticks_off],
                                                broadcast=True)
            if bar_closes:   # after the ticks, bar closes would also trail (ATR > 0)
                out["scoring"] = await bar_close_scoring(service, sim, log, bar_closes)
                out["scoring"].update(signals_s=time_market_signals(50),
                                      policy_s=time_policy(service))
            out["rss_end"] = rss_bytes()
            if emit is not None:
                emit(out)
    return out


# --------------------------------------------------------------------------- figure 5


class CrashMeter:
    """Per crash of a trade actor: the supervision decision (``Runtime._crashed``: the crash
    caught -> its RestartEvent reported) and the restarted incarnation's ``on_start``; the trade
    runtime's decisions by action. ``restarted`` is set when a restart has reloaded."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}   # cell id -> decision seconds, reload to come
        self.decisions: list[float] = []
        self.reloads: list[float] = []
        self.costs: list[float] = []          # decision + reload, per crash
        self.actions: Counter[str] = Counter()
        self.crashes = 0
        self.restarted = anyio.Event()

    def crashed(self, cell_id: str, seconds: float) -> None:
        self.crashes += 1
        self.decisions.append(seconds)
        self.pending[cell_id] = seconds

    def reloaded(self, cell_id: str, seconds: float) -> None:
        self.reloads.append(seconds)
        decision = self.pending.pop(cell_id, None)
        if decision is not None:
            self.costs.append(decision + seconds)
        self.restarted.set()


@contextlib.contextmanager
def crash_metered() -> Iterator[CrashMeter]:
    """Time the trade runtime's crash decisions and the trades' restarts (this process only)."""
    from dtms.actors.runtime import Runtime
    from dtms.actors.trade import TradeActor

    meter = CrashMeter()
    crashed, report, on_start = Runtime._crashed, Runtime._report, TradeActor.on_start

    async def timed_crashed(self: Any, cell: Any, error: Exception) -> None:
        started = time.perf_counter()
        try:
            await crashed(self, cell, error)
        finally:
            if self.name == "trades":
                meter.crashed(cell.id, time.perf_counter() - started)

    async def counted_report(self: Any, cell: Any, action: str, *args: Any) -> None:
        if self.name == "trades":
            meter.actions[action] += 1
        await report(self, cell, action, *args)

    async def timed_on_start(self: Any) -> None:
        started = time.perf_counter()
        await on_start(self)
        if self.incarnation > 1:
            meter.reloaded(self.id, time.perf_counter() - started)

    Runtime._crashed, Runtime._report = timed_crashed, counted_report  # type: ignore[method-assign]
    TradeActor.on_start = timed_on_start  # type: ignore[method-assign]
    try:
        yield meter
    finally:
        Runtime._crashed, Runtime._report = crashed, report  # type: ignore[method-assign]
        TradeActor.on_start = on_start  # type: ignore[method-assign]


async def crash_storm(actors: list[Any], per_ticket: int, meter: CrashMeter,
                      stopping: anyio.Event) -> int:
    """Tell ``"poison"`` to each actor in turn, ``per_ticket`` times, each time once the last
    restart has reloaded, until ``stopping``; returns how many tickets were crashed. Running
    out of tickets before ``stopping`` is reported by the caller (the storm did not last)."""
    for used, actor in enumerate(actors):
        for crashes in range(per_ticket):
            if stopping.is_set():
                return used + (crashes > 0)
            meter.restarted = anyio.Event()
            actor.tell_nowait("poison")
            with anyio.fail_after(60.0):
                await meter.restarted.wait()
    return len(actors)


def _counter_total(counter: Any) -> float:
    """Sum of a prometheus Counter over every label."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


async def storm_run(n: int, *, k: int = K, ticks: int, db_path: str,
                    per_ticket: int = STORM_PER_TICKET,
                    backoff: tuple[float, float] = STORM_BACKOFF_S,
                    emit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Figure 5 for n trades on EURUSD, in this process (see the module docstring)."""
    from dtms.service import Service

    sim = make_sim((SYMBOL,))
    ladder = open_ladder(sim, SYMBOL, n, k)
    await populate_store(db_path, sim)
    settings = bench_settings(db_path, 0.01).replace(
        supervisor={"min_backoff_s": backoff[0], "max_backoff_s": backoff[1]})
    limit = settings.trades.max_restarts
    per_ticket = max(1, min(per_ticket, limit - 1))   # never reaches the give-up limit
    ticks = max(1, min(ticks, (len(ladder) - STORM_WARMUP) // 4))
    levels = list(enumerate(ladder))
    warmup, calm_levels = levels[:STORM_WARMUP], levels[STORM_WARMUP:STORM_WARMUP + ticks]
    storm_levels = levels[STORM_WARMUP + ticks:STORM_WARMUP + 2 * ticks]
    # the crashing tickets: the top levels, whose triggers no played tick reaches
    crashing = [t for _, tickets in reversed(levels[STORM_WARMUP + 2 * ticks:]) for t in tickets]
    service = Service(settings, module=MeteredTerminal(sim))
    out: dict[str, Any] = {"trades": n, "k": k, "backoff_s": list(backoff),
                           "per_ticket": per_ticket, "max_restarts": limit,
                           "restart_period_s": settings.trades.restart_period_s}
    with recorded(service) as log, crash_metered() as meter:
        log.only = {t for _, tickets in levels for t in tickets} - set(crashing)
        async with running(service, {SYMBOL: n}) as startup_s:
            out["startup_s"] = startup_s
            await tick_latency(service, sim, log, warmup, broadcast=False)
            log.clear()
            out["calm"] = await tick_latency(service, sim, log, calm_levels, broadcast=False)
            trades = service.registry.trades
            actors = [trades[t] for t in crashing if t in trades]
            escalations0 = _counter_total(service.metrics.escalations)
            giveups0 = _counter_total(service.metrics.actor_giveups)
            stopping, used, finished = anyio.Event(), 0, False

            async def storm() -> None:
                nonlocal used, finished
                used = await crash_storm(actors, per_ticket, meter, stopping)
                finished = True

            async with anyio.create_task_group() as tg:
                tg.start_soon(storm)
                await until(lambda: len(meter.costs) >= per_ticket, "the storm under way")
                crashes0, started = meter.crashes, time.perf_counter()
                out["storm"] = await tick_latency(service, sim, log, storm_levels,
                                                  broadcast=False)
                window_s, in_window = time.perf_counter() - started, meter.crashes - crashes0
                lasted = not finished   # the storm was still crashing tickets at the end
                stopping.set()
            costs, decisions, reloads = (sorted(x) for x in (
                meter.costs, meter.decisions, meter.reloads))
            out["crash"] = {
                "crashes": meter.crashes, "restarts": meter.actions["restart"],
                "give_ups": meter.actions["give_up"] + int(
                    _counter_total(service.metrics.actor_giveups) - giveups0),
                "escalations": meter.actions["escalate"] + int(
                    _counter_total(service.metrics.escalations) - escalations0),
                "reloaded": len(costs), "tickets": used, "pool": len(actors),
                "in_window": in_window, "window_s": window_s, "lasted": lasted,
                "p50_s": percentile(costs, 0.5), "p99_s": percentile(costs, 0.99),
                "decision_p50_s": percentile(decisions, 0.5),
                "decision_p99_s": percentile(decisions, 0.99),
                "reload_p50_s": percentile(reloads, 0.5),
                "reload_p99_s": percentile(reloads, 0.99)}
            if emit is not None:
                emit(out)
    return out


# --------------------------------------------------------------------------- figure 4


class TickPlayer(threading.Thread):
    """Plays ``rate`` ticks/s on every symbol, bids cycling over 40 points that cross nothing."""

    def __init__(self, sim: Any, names: tuple[str, ...], rate: float) -> None:
        super().__init__(name="bench-ticks", daemon=True)
        self.sim, self.names, self.period = sim, names, 1.0 / rate
        self.stopping = threading.Event()
        self.plays = 0
        self.cpu = 0.0   # this thread's CPU seconds, updated after every round

    def run(self) -> None:
        due, i = time.perf_counter(), 0
        while not self.stopping.is_set():
            bid = round(IDLE_LOW + (i % 40) * POINT, DIGITS)
            for name in self.names:
                self.sim.play(name, [bid], 0.005)
            i += 1
            self.plays += len(self.names)
            self.cpu = time.thread_time()
            due += self.period
            delay = due - time.perf_counter()
            if delay > 0:
                self.stopping.wait(delay)
            else:
                due = time.perf_counter()   # behind: never burst to catch up


async def _cpu_window(service: Any, meter: MeteredTerminal, player: TickPlayer | None,
                      seconds: float, gc_meter: GcMeter) -> dict[str, float]:
    markets = list(service.market.symbols.values())
    gc0 = gc_meter.mark()
    marks = (time.process_time(), time.thread_time(), meter.cpu,
             player.cpu if player else 0.0, player.plays if player else 0,
             sum(m.ticks for m in markets), sum(m.events_sent for m in markets),
             service.watcher.polls_ok, time.perf_counter())
    await anyio.sleep(seconds)
    now = (time.process_time(), time.thread_time(), meter.cpu,
           player.cpu if player else 0.0, player.plays if player else 0,
           sum(m.ticks for m in markets), sum(m.events_sent for m in markets),
           service.watcher.polls_ok, time.perf_counter())
    d = [b - a for a, b in zip(marks, now, strict=True)]
    wall = d[-1]
    return {"seconds": wall, "process": d[0] / wall, "loop": d[1] / wall, "sim": d[2] / wall,
            "player": d[3] / wall, "dtms": (d[0] - d[2] - d[3]) / wall,
            "plays_per_s": d[4] / wall, "ticks_read_per_s": d[5] / wall, "events": d[6],
            "position_polls_per_s": d[7] / wall, **gc_meter.since(gc0)}


async def idle_run(n: int, *, symbols: int = IDLE_SYMBOLS, rate: float = IDLE_RATE,
                   seconds: float, quiet_seconds: float, db_path: str,
                   emit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Figure 4: DTMS's CPU with n trades over ``symbols`` symbols and ``rate`` ticks/s each."""
    from dtms.service import Service

    with simulated_symbols(symbols) as names, GcMeter() as gc_meter:
        sim = make_sim(names)
        per = n // len(names)
        for name in names:
            open_ladder(sim, name, per, K)
        await populate_store(db_path, sim)
        meter = MeteredTerminal(sim, gc_meter)
        service = Service(bench_settings(db_path, 1.0 / rate), module=meter)
        engine = sim._engine
        out: dict[str, Any] = {"trades": per * len(names), "symbols": len(names), "rate": rate}
        async with running(service, dict.fromkeys(names, per)) as startup_s:
            out["startup_s"] = startup_s
            engine.on_tick = lambda symbol: None   # no stop is ever reached (see the docstring)
            try:
                await anyio.sleep(3.0)   # the start's last position updates are handled
                progress.info("bench: idle, no ticks")
                out["quiet"] = await _cpu_window(service, meter, None, quiet_seconds,
                                                gc_meter)
                player = TickPlayer(sim, names, rate)
                player.start()
                try:
                    await anyio.sleep(2.0)   # warm-up: every symbol actor has seen ticks
                    progress.info("bench: idle, %g ticks/s on each of %d symbols", rate,
                                  len(names))
                    out["ticking"] = await _cpu_window(service, meter, player, seconds,
                                                       gc_meter)
                finally:
                    player.stopping.set()
                    await anyio.to_thread.run_sync(player.join)
            finally:
                vars(engine).pop("on_tick", None)
            if emit is not None:
                emit(out)
    return out


# --------------------------------------------------------------------------- table


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.2f} ms" if ms >= 1 else f"{ms:.3f} ms"


def _x(a: float, b: float) -> str:
    return f"{a / b:,.1f}x" if b > 0 else "-"


def _size(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB / 2 else f"{b / 1024**2:,.0f} MiB"


def _health(*figures: dict[str, Any]) -> str:
    """What went wrong inside DTMS during a figure, if anything: restarts, unanswered ticks."""
    restarted = sum(f["restarts"] for f in figures)
    missing = sum(f["expected"] - f["decisions"] for f in figures)
    problems = ([f"{restarted:.0f} actor restarts"] if restarted else []) + (
        [f"{missing:,} decisions missing"] if missing > 0 else [])
    return f" [{', '.join(problems)}!]" if problems else ""


def rows_of(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """One table row per figure: figure, configuration, median, p99, baseline, ratio, target,
    result."""
    rows: list[tuple[str, ...]] = []
    engine = results.get("engine", [])
    for r in engine:
        on, off, n = r["on"], r["off"], r["trades"]
        rows.append(("tick -> decision", f"{n:,} trades, 1 symbol, {r['k']} crossed/tick; "
                     f"ON tells {on['events'] / on['ticks']:,.0f}/tick, OFF "
                     f"{off['events'] / off['ticks']:,.0f}{_health(on, off)}",
                     _ms(on["p50_s"]), _ms(on["p99_s"]),
                     f"OFF {_ms(off['p50_s'])} / {_ms(off['p99_s'])}",
                     f"{_x(off['p50_s'], on['p50_s'])} / {_x(off['p99_s'], on['p99_s'])}",
                     "-", "-"))
        rows.append(("tick -> last decision", f"{n:,} trades, per tick ({on['ticks']} ON, "
                     f"{off['ticks']} OFF); ticks/s = 1/median",
                     f"{_ms(on['tick_p50_s'])} ({1 / on['tick_p50_s']:,.0f}/s)",
                     _ms(on["tick_p99_s"]),
                     f"OFF {_ms(off['tick_p50_s'])} ({1 / off['tick_p50_s']:,.2f}/s)",
                     _x(off["tick_p50_s"], on["tick_p50_s"]), "-", "-"))
    scoring = results.get("scoring")
    if scoring:
        sc, sig = scoring["scoring"], scoring["scoring"]["signals_s"]
        signals = percentile(sig, 0.5)
        rows.append(("bar close -> all scored", f"{scoring['trades']:,} trades, 1 symbol, "
                     f"{sc['ticks']} closes (p99 = worst); all persisted after "
                     f"{percentile(sc['settled_s'], 0.5):.1f} s{_health(sc)}",
                     _ms(sc["tick_p50_s"]), _ms(sc["tick_p99_s"]),
                     f"policy alone {_ms(sc['policy_s'])}", _x(sc["tick_p50_s"], sc["policy_s"]),
                     "<= 50 ms", "pass" if sc["tick_p50_s"] <= 0.050 else "FAIL"))
        rows.append(("market_signals", f"once per symbol per bar; {len(sig)} runs, 300 M5 + "
                     "300 M15 random-walk bars", _ms(signals), _ms(percentile(sig, 0.99)),
                     f"in DTMS with bar loading {_ms(sc['load_and_signals_s'])}", "-", "-", "-"))
    for r in engine:
        n = r["trades"]
        per = (r["rss_ready"] - r["rss_sim"]) / n
        total = r["rss_ready"] - (r["rss_sim"] - r["rss_base"])   # without the simulator
        verdict = (("pass" if total <= 0.5 * GIB and per <= 4096 else "FAIL") if n >= 100_000 else
                   f"100k projected {_size(r['rss_base'] + per * 100_000)}")
        rows.append(("RSS", f"{n:,} live trades; process minus simulator",
                     f"{_size(total)} ({per / 1024:.1f} KiB/trade)", "-",
                     f"before DTMS {_size(r['rss_sim'])} (sim "
                     f"{_size(r['rss_sim'] - r['rss_base'])})", "-", "<= 0.5 GiB, 4 KiB/trade @100k",
                     verdict))
    idle = results.get("idle")
    if idle:
        t, q = idle["ticking"], idle["quiet"]
        rows.append(("idle CPU", f"{idle['trades']:,} trades, {idle['symbols']} symbols x "
                     f"{idle['rate']:g} ticks/s (played {t['plays_per_s']:,.0f}/s, DTMS read "
                     f"{t['ticks_read_per_s']:,.0f}/s)",
                     f"{t['dtms'] * 100:.1f} % of a core", "-",
                     f"no ticks {q['dtms'] * 100:.1f} %", _x(t["dtms"], q["dtms"]),
                     "<= 3 %", "pass" if t["dtms"] <= 0.03 else "FAIL"))
    storm = results.get("storm")
    if storm:
        rows += storm_rows(storm)
    return rows


def storm_verdict(storm: dict[str, Any]) -> tuple[bool, bool]:
    """(restart p99 <= 1 ms with no give-up or escalation, others' p99 unchanged within
    STORM_TOLERANCE) of a figure 5 result."""
    c, calm, st = storm["crash"], storm["calm"], storm["storm"]
    restart_ok = c["p99_s"] <= 0.001 and c["give_ups"] == 0 and c["escalations"] == 0
    return restart_ok, st["p99_s"] <= STORM_TOLERANCE * calm["p99_s"] and c["lasted"]


def storm_rows(storm: dict[str, Any]) -> list[tuple[str, ...]]:
    """Figure 5's two rows: the others' tick -> decision, the restart cost per crash."""
    c, calm, st = storm["crash"], storm["calm"], storm["storm"]
    restart_ok, unchanged = storm_verdict(storm)
    low, high = (f"{b * 1000:g}" for b in storm["backoff_s"])
    missing = sum(f["expected"] - f["decisions"] for f in (calm, st))
    lasted = "" if c["lasted"] else "; the storm ran out of tickets before the window ended!"
    return [
        ("crash storm: others' tick -> decision",
         f"{storm['trades']:,} trades, {storm['k']} crossed/tick, {st['ticks']} ticks; storm "
         f"{c['in_window'] / c['window_s']:,.0f} crashes/s during the window, tickets rotating "
         f"x{storm['per_ticket']} (give-up > {storm['max_restarts']} in "
         f"{storm['restart_period_s']:g} s), backoff {low}-{high} ms{lasted}"
         + (f" [{missing:,} decisions missing!]" if missing > 0 else ""),
         _ms(st["p50_s"]), _ms(st["p99_s"]),
         f"no storm {_ms(calm['p50_s'])} / {_ms(calm['p99_s'])}",
         f"{_x(st['p50_s'], calm['p50_s'])} / {_x(st['p99_s'], calm['p99_s'])}",
         f"p99 unchanged (<= {STORM_TOLERANCE:g}x)", "pass" if unchanged else "FAIL"),
        ("supervised restart of a crashed trade",
         f"per crash: decision + on_start reload, backoff excluded; {c['crashes']:,} crashes "
         f"of {c['tickets']:,} tickets, {c['restarts']:,} restarts, {c['reloaded']:,} reloaded, "
         f"{c['give_ups']} give-ups, {c['escalations']} escalations",
         _ms(c["p50_s"]), _ms(c["p99_s"]),
         f"decision {_ms(c['decision_p50_s'])} / {_ms(c['decision_p99_s'])}; reload "
         f"{_ms(c['reload_p50_s'])} / {_ms(c['reload_p99_s'])}", "-", "<= 1 ms p99",
         "pass" if restart_ok else "FAIL"),
    ]


HEADERS = ("figure", "configuration", "median", "p99", "baseline", "ratio", "target", "result")


def format_table(results: dict[str, Any]) -> str:
    rows = rows_of(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    head = (f"DTMS engine bench  {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}  one DTMS process, embedded SimTerminal")
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    def gc_text(f: dict[str, Any]) -> str:
        return f"{f['gc_full']:.0f} full GCs, {f['gc_s']:.1f} s in GC"

    for r in [*results.get("engine", []), *filter(None, [results.get("scoring")])]:
        phases = [f"{name} {gc_text(r[key])}" for key, name in (
            ("on", "ticks ON"), ("off", "OFF"), ("scoring", "bar closes")) if key in r]
        lines.append(f"  {r['trades']:,} trades: cold start to every trade watching "
                     f"{r['startup_s']:.1f} s ({r['trades'] / r['startup_s']:,.0f} trades/s, "
                     f"{gc_text(r['startup_gc'])}); {'; '.join(phases)}; "
                     f"RSS at the end {_size(r['rss_end'])}")
    idle = results.get("idle")
    if idle:
        t, q = idle["ticking"], idle["quiet"]
        lines.append(
            f"  idle {idle['trades']:,} trades: startup {idle['startup_s']:.1f} s; ticking: "
            f"event loop {t['loop'] * 100:.1f} %, whole process {t['process'] * 100:.1f} % "
            f"(simulator {t['sim'] * 100:.1f} %, tick player {t['player'] * 100:.1f} %, "
            f"{t['plays_per_s']:,.0f} ticks/s played), {t['position_polls_per_s']:.2f} "
            f"position polls/s, {t['events']} events, {gc_text(t)}; no ticks: process "
            f"{q['process'] * 100:.1f} %, event loop {q['loop'] * 100:.1f} %, simulator "
            f"{q['sim'] * 100:.1f} %")
    return "\n".join(lines)


# --------------------------------------------------------------------------- orchestration


def child(args: list[str], work: Path, name: str) -> dict[str, Any]:
    """Run ``python -m bench.engine --child ARGS --out F`` to completion; return F's JSON."""
    out, log_path = work / f"{name}.json", work / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.run([sys.executable, "-m", "bench.engine", "--child", *args,
                               "--db", str(work / f"{name}.sqlite3"), "--out", str(out)],
                              stdout=log_file, stderr=log_file, timeout=CHILD_TIMEOUT_S,
                              cwd=Path(__file__).resolve().parent.parent, check=False)
    if proc.returncode != 0 or not out.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {tail}")
    return json.loads(out.read_text())


def run_bench(sizes: tuple[int, ...], *, quick: bool, k: int = K, scoring: bool = True,
              idle_trades: int = 0, progress: bool = True,
              scoring_trades: int = SCORING_TRADES, storm_trades: int = 0
              ) -> dict[str, Any]:
    """Every figure, each configuration in a child process of its own."""
    results: dict[str, Any] = {"engine": [], "scoring": None, "idle": None, "storm": None}

    def step(what: str) -> None:
        if progress:
            print(f"  {what} ...", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="dtms-bench-engine-") as tmp:
        work = Path(tmp)
        for n in sizes:
            step(f"ticks and RSS, {n:,} trades")
            ticks_off = 10 if quick else max(3, min(20, 300_000 // n))
            results["engine"].append(child(
                ["engine", "--trades", str(n), "--k", str(k), "--ticks-on",
                 str(30 if quick else 50), "--ticks-off", str(ticks_off)], work, f"engine-{n}"))
        if scoring:
            step(f"bar closes, {scoring_trades:,} trades")
            results["scoring"] = child(
                ["engine", "--trades", str(scoring_trades), "--ticks-on", "0", "--ticks-off",
                 "0", "--bar-closes", "3" if quick else "7"], work, "scoring")
        if idle_trades:
            step(f"idle CPU, {idle_trades:,} trades")
            # 30 s in the full run: longer than the position poll's period at 100,000
            # positions (~10 s), so that the window holds polls, not only ticks
            results["idle"] = child(["idle", "--trades", str(idle_trades), "--seconds",
                                     "10" if quick else "30",
                                     "--quiet-seconds", "3" if quick else "30"], work, "idle")
        if storm_trades:
            step(f"crash storm, {storm_trades:,} trades")
            results["storm"] = child(["storm", "--trades", str(storm_trades), "--k", str(k),
                                      "--ticks-on", "30" if quick else "50"], work, "storm")
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m bench engine [--quick] [--sizes N,N] [--k K] [--json PATH]``."""
    p = argparse.ArgumentParser(prog="python -m bench engine", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1k and 10k trades, fewer ticks; idle with 10k, crash storm with 2k trades (< 2 min)")
    p.add_argument("--sizes", help="comma-separated trade counts for figures 1 and 3")
    p.add_argument("--k", type=int, default=K, help="triggers one tick crosses (<= 100)")
    p.add_argument("--idle-trades", type=int, help="trades for the idle CPU figure (0: skip)")
    p.add_argument("--no-scoring", action="store_true", help="skip the bar-close figure")
    p.add_argument("--storm-trades", type=int,
                   help="trades for the crash-storm figure (0: skip)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = p.parse_args(argv)
    sizes = (tuple(int(s) for s in args.sizes.split(",")) if args.sizes
             else QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if not 1 <= args.k <= 100 or any(n < 2 * args.k for n in sizes):
        p.error("--k must be in 1..100 and every size >= 2 * k")
    idle = args.idle_trades if args.idle_trades is not None else (
        10_000 if args.quick else 100_000)
    storm = args.storm_trades if args.storm_trades is not None else (
        QUICK_STORM_TRADES if args.quick else STORM_TRADES)
    results = run_bench(sizes, quick=args.quick, k=args.k, scoring=not args.no_scoring,
                        idle_trades=idle, storm_trades=storm)
    print(format_table(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bench": "engine", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cores": os.cpu_count(), "python": platform.python_version(), **results}, indent=2))
    return 0


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine --child")
    p.add_argument("--child", choices=("engine", "idle", "storm"), required=True)
    p.add_argument("--trades", type=int, required=True)
    p.add_argument("--k", type=int, default=K)
    p.add_argument("--ticks-on", type=int, default=50)
    p.add_argument("--ticks-off", type=int, default=10)
    p.add_argument("--bar-closes", type=int, default=0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--quiet-seconds", type=float, default=5.0)
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from dtms import logs

    logs.setup("INFO", "json")

    def emit(result: dict[str, Any]) -> None:
        Path(args.out).write_text(json.dumps(result))
        sys.stderr.flush()
        os._exit(0)   # the result is written: skip tearing the actors down

    if args.child == "engine":
        anyio.run(lambda: engine_run(
            args.trades, k=args.k, ticks_on=args.ticks_on, ticks_off=args.ticks_off,
            bar_closes=args.bar_closes, db_path=args.db, emit=emit))
    elif args.child == "storm":
        anyio.run(lambda: storm_run(args.trades, k=args.k, ticks=args.ticks_on, db_path=args.db,
                                    emit=emit))
    else:
        anyio.run(lambda: idle_run(args.trades, seconds=args.seconds,
                                   quiet_seconds=args.quiet_seconds, db_path=args.db, emit=emit))
    return 1   # emit never returns


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]) if "--child" in sys.argv[1:] else main(sys.argv[1:]))
