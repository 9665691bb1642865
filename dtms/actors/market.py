"""Market data: one actor per symbol, and the hub that starts them.

A :class:`SymbolMarket` owns one symbol's market data. Every ``tick_poll_s`` the hub reads the
tick of every symbol in one terminal call and tells each symbol's actor (one hand-off to the
terminal's thread per interval, however many symbols and trades). When the tick's time
passes the end of the forming M5 bar, that bar has closed: the actor reloads the closed M5 and
M15 bars, computes the market signals once (``dtms.policy.signals.market_signals``) and from
them the score once per direction (``trade_score``: it depends on the signals and the
direction alone), tells the store to persist both scores for all the symbol's trades in one
write (``PutScores``), then tells every subscribed trade (``BarClose``; the view carries the
scores and each trade decides with its own direction's) -- bar closes drive the scoring. A
trade whose only change is its score writes no row of its own. A ``ScoringError`` is the
symbol's, not a trade's: logged, counted (``dtms_scoring_errors_total{symbol}``), and that
direction's trades decide this bar without a fresh score (their stops and timers still run,
their stored score stays the last good one) instead of every trade crashing on the same
bad data. A tick more than ``gap_bars`` bars after the previous one is a gap: logged,
counted, and the bars reloaded.

Between bar closes, trades are not told about every tick. Each trade leaves a one-shot watch
("tell me when my closing price -- the bid for a BUY, the ask for a SELL -- reaches X or falls
to Y, or market time reaches T") in a :class:`~dtms.triggers.TriggerIndex`; a tick costs
O(log n + k) for k fired watches, and only those k trades get a ``PriceEvent``. A tick is new
when its time, bid or ask differs from the last one (a SELL's levels move with the ask alone).
``broadcast_ticks=True`` switches the index off (every tick to every trade): the baseline the
benchmarks compare against.

No crossing is lost to a busy trade. Every view carries the number (``seq``) of its tick, and a
trade arms its next watch with the ``seq`` of the tick it decided on. The ticks read since then
(the last ``RECENT_TICKS`` are kept) were never checked against the new watch: the first of
them that meets it fires it at once, with that tick's view -- so a level crossed while the
trade was acting is acted on even if the price has come back since. (The tick it decided on
is not checked again: its levels were set from it.) ``again=True`` (the trade
has just acted: what it owes may have changed) also tells it the current view when nothing is
met.

The account mode (hedging or netting) comes with the symbol's data and again with every
(re)connect of the broker (``Connected``): a reconnect to another kind of account changes
every decision after it (each symbol's actor listens to the broker, which tells it
``Connected`` before it lets a call through on the new connection).

The :class:`MarketHub` is the tree's ``market`` node: it starts a ``SymbolMarket`` under its
own dynamic supervisor the first time a trade subscribes to a symbol, and routes messages.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from dtms.actors.base import Actor, ActorCore, ActorStopped
from dtms.actors.broker import Connected, Listen
from dtms.actors.store import PutScores
from dtms.config import Settings
from dtms.errors import BrokerError, NotReady
from dtms.metrics import Metrics
from dtms.model import Direction, SymbolSpec, Tick
from dtms.policy.lifecycle import stored_score
from dtms.policy.signals import (
    Bars,
    MarketSignals,
    Score,
    ScoringError,
    market_signals,
    trade_score,
)
from dtms.supervisor import Backoff, ChildSpec, DynamicSupervisor, Intensity, Restart
from dtms.triggers import TriggerIndex

log = logging.getLogger(__name__)

M5 = 300
#: ticks a symbol keeps to check a newly armed watch against what it has not seen yet; a
#: trade acts for about a second, far fewer ticks than this at any tick_poll_s
RECENT_TICKS = 512


@dataclass(frozen=True, slots=True)
class MarketOf:
    """Asked of the hub: the symbol's actor (started on first use)."""
    symbol: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """A trade wants this symbol's bar closes and price events (told, not asked: starting
    100,000 trades must not wait on 100,000 round trips). It is told a PriceEvent with the
    current view at once, or, while the symbol's data is not loaded yet, once it is."""
    ticket: int
    actor: ActorCore


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    ticket: int


@dataclass(frozen=True, slots=True)
class WatchLevels:
    """One-shot: tell the trade when its price >= above, <= below, or market time >= at.

    The price is the bid, or the ask with ``ask=True`` (a SELL). ``since`` is the ``seq`` of
    the tick the trade decided on: every tick read after it is checked at once (None: only the
    current tick). ``again``: tell the trade the current view even if nothing is met."""
    ticket: int
    above: float | None = None
    below: float | None = None
    at: float | None = None
    ask: bool = False
    since: int | None = None
    again: bool = False


@dataclass(frozen=True, slots=True)
class MarketView:
    """What a trade needs to evaluate: the spec, the latest tick and the latest signals.
    ``seq`` numbers the tick among the ticks this symbol has read (0: none yet). ``scores``:
    each direction's score from these signals (a direction whose score failed is missing);
    a trade takes its own on a ``BarClose`` only."""
    spec: SymbolSpec
    tick: Tick | None
    signals: MarketSignals | None
    hedging: bool
    seq: int = 0
    scores: Mapping[Direction, Score] | None = None
    median_spread: float = 0.0   # of the recent ticks, price units: the spread guard's reference


@dataclass(frozen=True, slots=True)
class PriceEvent:
    """A watched level or time was reached. ``seen`` is the perf_counter of the tick's arrival."""
    view: MarketView
    seen: float


@dataclass(frozen=True, slots=True)
class BarClose:
    """A bar closed; ``view.signals`` and ``view.scores`` are fresh. Every subscribed trade
    decides with its direction's score (already persisted for it by ``PutScores``)."""
    view: MarketView
    seen: float


@dataclass(frozen=True, slots=True)
class TickRead:
    """The hub read this symbol's latest tick at ``seen`` (perf_counter)."""
    tick: Tick
    seen: float


class SymbolMarket(Actor):
    def __init__(self, symbol: str, *, broker: Any, settings: Settings, metrics: Metrics,
                 broadcast_ticks: bool = False, store: Actor | None = None) -> None:
        super().__init__(f"market-{symbol}", mailbox_size=0)  # unbounded: never block a trade
        self.symbol = symbol
        self.broker = broker
        self.store = store     # persists each bar's scores; None: not persisted (tests)
        self.settings = settings
        self.metrics = metrics
        self.broadcast_ticks = broadcast_ticks
        self.subscribers: dict[int, ActorCore] = {}
        self.index = TriggerIndex()
        self.spec: SymbolSpec | None = None
        self.hedging = True
        self.tick: Tick | None = None
        self.signals: MarketSignals | None = None
        self.scores: dict[Direction, Score] = {}
        self.bar_end = 0       # market time at which the forming M5 bar closes
        self.bar_closes = 0    # bar closes seen = times the signals were computed
        self.ticks = 0         # new ticks read (the seq of the latest)
        self.recent: deque[tuple[int, Tick]] = deque(maxlen=RECENT_TICKS)
        # n -> (bid range, ask range) of the last n ticks: after a bar close 100,000
        # trades arm watches from the same tick; the extremes are read once, not per trade
        self._extremes: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {}
        self.events_sent = 0   # PriceEvents told to trades (the index's k per tick)
        self._median = (-1, 0.0)   # (tick number, median spread of ``recent`` then)

    def view(self, seq: int | None = None, tick: Tick | None = None) -> MarketView:
        """The current view, or the view as of an earlier tick of ``recent``."""
        assert self.spec is not None
        if seq is None:
            return MarketView(self.spec, self.tick, self.signals, self.hedging, self.ticks,
                              self.scores, self.median_spread())
        return MarketView(self.spec, tick, self.signals, self.hedging, seq, self.scores,
                          self.median_spread())

    def median_spread(self) -> float:
        """The median spread (ask - bid) of the recent ticks, once per tick however many
        trades look (the spread guard, ``policy.max_spread_mult``)."""
        if self._median[0] != self.ticks:
            spreads = sorted(t.ask - t.bid for _, t in self.recent)
            self._median = (self.ticks, spreads[len(spreads) // 2] if spreads else 0.0)
        return self._median[1]

    def _new_tick(self, tick: Tick) -> None:
        self.tick = tick
        self.ticks += 1
        self.recent.append((self.ticks, tick))
        self._extremes.clear()

    async def on_start(self) -> None:
        # nothing here may fail on a broker hiccup: the data loads on the first poll that works
        self.index = TriggerIndex()
        self.spec = None
        self.recent.clear()

    async def _load(self) -> bool:
        try:
            spec = await self.broker.call("symbol", name=self.symbol)
            account = await self.broker.call("account")
            tick = await self.broker.call("tick", name=self.symbol)
            self.hedging = account.hedging
            self.spec = spec
            self._new_tick(tick)
            await self._load_bars()
        except (BrokerError, NotReady) as exc:
            self.spec = None
            log.warning("market data of %s not loaded: %s", self.symbol, exc,
                        extra={"symbol": self.symbol})
            return False
        # every subscriber evaluates now (after a restart their watches were lost)
        event = PriceEvent(self.view(), time.perf_counter())
        for ticket in list(self.subscribers):
            await self._tell(ticket, event)
        return True

    async def _load_bars(self) -> None:
        n = self.settings.market.bars
        m5 = await self.broker.call("rates", name=self.symbol, timeframe="M5", count=n,
                                    start_pos=1)
        m15 = await self.broker.call("rates", name=self.symbol, timeframe="M15", count=n,
                                     start_pos=1)
        if m5:
            self.bar_end = m5[-1][0] + 2 * M5   # the bar after the last closed one ends here
            self.signals = market_signals(Bars.from_rows(m5), Bars.from_rows(m15),
                                          symbol=self.symbol, settings=self.settings.signals)
            self.scores = self._score(self.signals)

    def _score(self, signals: MarketSignals) -> dict[Direction, Score]:
        """Each direction's score, once for all of the symbol's trades of that direction.

        A ScoringError (a non-finite layer, a missing weight) is the symbol's data: logged
        and counted, and that direction is left out -- its trades decide without a fresh
        score -- rather than crashing every trade of the symbol on the same data."""
        scores = {}
        for direction in Direction:
            try:
                scores[direction] = trade_score(signals, direction)
            except ScoringError as exc:
                self.metrics.scoring_errors.labels(self.symbol).inc()
                log.error("%s: %s trades not scored at this bar: %s", self.symbol,
                          direction.value, exc,
                          extra={"symbol": self.symbol, "direction": direction.value,
                                 "error": str(exc)})
        return scores

    async def handle(self, message: Any) -> Any:
        if isinstance(message, TickRead):
            if self.spec is None:  # loads on the first tick read after (re)start
                await self._load()
                return None
            return await self._on_tick(message.tick, message.seen)
        if isinstance(message, Subscribe):
            self.subscribers[message.ticket] = message.actor
            if self.spec is not None:
                await self._tell(message.ticket, PriceEvent(self.view(), time.perf_counter()))
            return None
        if isinstance(message, Unsubscribe):
            self.subscribers.pop(message.ticket, None)
            self.index.cancel(message.ticket)
            return None
        if isinstance(message, WatchLevels):
            return await self._arm(message)
        if isinstance(message, Connected):
            if message.account.hedging != self.hedging:
                log.info("%s: the account is %s now", self.symbol,
                         "hedging" if message.account.hedging else "netting",
                         extra={"symbol": self.symbol, "hedging": message.account.hedging})
            self.hedging = message.account.hedging
            return None
        raise TypeError(f"market {self.symbol} cannot handle {message!r}")

    async def _arm(self, message: WatchLevels) -> None:
        ticket = message.ticket
        if ticket not in self.subscribers:
            return
        self.index.watch(ticket, above=message.above, below=message.below, at=message.at,
                         ask=message.ask)
        if self.spec is None or self.tick is None:
            return   # no data yet: the load tells every subscriber
        view = self._met_since(ticket, message.since)
        if view is not None:
            self.events_sent += 1   # a crossing, as if the tick had fired it
        elif message.again:         # a second look after acting, not a crossing
            self.index.cancel(ticket)
            view = self.view()
        if view is not None:
            await self._tell(ticket, PriceEvent(view, time.perf_counter()))

    def _met_since(self, ticket: int, since: int | None) -> MarketView | None:
        """The view of the first tick after ``since`` that meets ticket's watch (which then
        ends), or None. Without ``since`` only the current tick is checked."""
        unseen = 1 if since is None else min(max(0, self.ticks - since), len(self.recent))
        if not unseen or self.tick is None:
            return None
        ranges = self._extremes.get(unseen)
        if ranges is None:
            ticks = [t for _, t in itertools.islice(reversed(self.recent), unseen)]
            ranges = self._extremes[unseen] = (
                (min(t.bid for t in ticks), max(t.bid for t in ticks)),
                (min(t.ask for t in ticks), max(t.ask for t in ticks)))
        if not self.index.met_within(ticket, *ranges, float(self.tick.time)):
            return None   # the common case: one look at the extremes
        newest_first = itertools.islice(reversed(self.recent), unseen)
        for seq, tick in reversed(list(newest_first)):
            if self.index.met(ticket, tick.bid, float(tick.time), tick.ask):
                return self.view(seq, tick)
        return None

    async def _on_tick(self, tick: Tick, seen: float) -> None:
        previous = self.tick
        if previous is not None and (tick.time, tick.bid, tick.ask) == (
                previous.time, previous.bid, previous.ask):
            return  # no new tick
        self._new_tick(tick)
        if previous is not None and tick.time - previous.time > self.settings.market.gap_bars * M5:
            self.metrics.market_gaps.labels(self.symbol).inc()
            log.warning("gap in %s ticks: %ss without a tick", self.symbol,
                        tick.time - previous.time,
                        extra={"symbol": self.symbol, "gap_s": tick.time - previous.time})
        if self.bar_end and tick.time >= self.bar_end:
            await self._bar_closed(seen)
            return
        if self.broadcast_ticks:
            fired = list(self.subscribers)
        else:
            fired = self.index.fire(tick.bid, float(tick.time), tick.ask)
        if fired:
            event = PriceEvent(self.view(), seen)
            self.events_sent += len(fired)
            for ticket in fired:
                await self._tell(ticket, event)

    async def _bar_closed(self, seen: float) -> None:
        started = time.perf_counter()
        try:
            await self._load_bars()
        except (BrokerError, NotReady) as exc:
            log.warning("bars of %s not read: %s", self.symbol, exc, extra={"symbol": self.symbol})
            return  # the bar end has not moved: the next poll tries again
        self.bar_closes += 1
        self.metrics.market_bar_seconds.observe(time.perf_counter() - started)
        if self.store is not None and self.scores:
            # before any trade hears of the bar: a trade's read (or a restart) after its
            # decision finds the bar's score stored. Told, not asked: the trades do not wait
            # on the commit (a failed commit is the store's to log and count)
            scores = {d: stored_score(s) for d, s in self.scores.items()}
            try:
                await self.store.tell(PutScores(self.symbol, scores))
            except ActorStopped:
                log.warning("%s: scores of this bar not stored: the store has stopped",
                            self.symbol, extra={"symbol": self.symbol})
        event = BarClose(self.view(), seen)
        for ticket in list(self.subscribers):
            await self._tell(ticket, event)

    async def _tell(self, ticket: int, event: Any) -> None:
        actor = self.subscribers.get(ticket)
        if actor is None:
            return
        try:
            actor.tell_nowait(event)   # a snapshot: a trade takes it at once, never blocking us
        except ActorStopped:
            self.subscribers.pop(ticket, None)
            self.index.cancel(ticket)


class MarketHub(Actor):
    """The ``market`` node: routes to per-symbol actors, starting each on first use."""

    def __init__(self, *, broker: Any, settings: Settings, metrics: Metrics,
                 on_event: Any = None, broadcast_ticks: bool = False,
                 store: Actor | None = None) -> None:
        super().__init__("market", mailbox_size=0)
        self.broker = broker
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.on_event = on_event
        self.broadcast_ticks = broadcast_ticks
        self.symbols: dict[str, SymbolMarket] = {}
        self.supervisor: DynamicSupervisor | None = None

    async def on_start(self) -> None:
        sup = self.settings.supervisor
        self.symbols.clear()
        self.supervisor = DynamicSupervisor(
            "markets", intensity=Intensity(sup.trades_max_restarts, sup.trades_period_s),
            backoff=Backoff(sup.min_backoff_s, sup.max_backoff_s, sup.jitter),
            child_intensity=Intensity(self.settings.trades.max_restarts,
                                      self.settings.trades.restart_period_s),
            on_event=self.on_event)
        assert self._tg is not None
        await self._tg.start(self.supervisor.run)
        self.spawn(self._ticker)

    async def _ticker(self) -> None:
        """Every ``tick_poll_s``, every started symbol's tick in one terminal call (one
        hand-off to the terminal's thread for 20 symbols, not 20), told to its actor."""
        interval = self.settings.market.tick_poll_s
        while True:
            await anyio.sleep(interval)
            names = list(self.symbols)
            if not names:
                continue
            try:
                ticks, failed = await self.broker.call("ticks", names=names)
            except (BrokerError, NotReady) as exc:
                log.warning("ticks of %d symbols not read: %s", len(names), exc)
                continue
            seen = time.perf_counter()
            for name, error in failed.items():
                log.warning("tick of %s not read: %s", name, error, extra={"symbol": name})
            for name, tick in ticks.items():
                market = self.symbols.get(name)
                if market is None:
                    continue
                try:
                    market.tell_nowait(TickRead(tick, seen))   # unbounded: never blocks
                except ActorStopped:
                    log.info("tick of %s not delivered: its actor has stopped", name)

    async def on_stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        for market in self.symbols.values():
            market.close("market hub stopping")
        self.symbols.clear()

    async def _market(self, symbol: str) -> SymbolMarket:
        market = self.symbols.get(symbol)
        if market is None:
            market = SymbolMarket(symbol, broker=self.broker, settings=self.settings,
                                  metrics=self.metrics, broadcast_ticks=self.broadcast_ticks,
                                  store=self.store)
            assert self.supervisor is not None
            await self.supervisor.start_child(ChildSpec(
                symbol, market.run, restart=Restart.PERMANENT, stop=market.stop,
                shutdown_timeout=self.settings.supervisor.shutdown_timeout_s, kind="market"))
            self.symbols[symbol] = market
            await self.broker.tell(Listen(market))   # the mode of every (re)connect
        return market

    async def handle(self, message: Any) -> Any:
        if isinstance(message, MarketOf):
            return await self._market(message.symbol)
        raise TypeError(f"market hub cannot handle {message!r}")
