"""Price-level and time triggers of one symbol: which watches does this tick meet?

This module owns :class:`TriggerIndex`, the pure data structure behind the market actor's
subscriptions (DESIGN principle 5). A trade actor does not receive every tick; it asks to be
told once when its closing price rises to a level, falls to a level, or the market time reaches
a moment. The closing price is the bid for a BUY and the ask for a SELL, so a watch's levels are
on one side of the quote: bid levels (the default) or ask levels (``ask=True``); comparing a SELL's
ask levels with the bid would need the spread of some earlier moment, which is wrong as soon as
the spread changes. The index answers each tick in O(log n + k) for k met watches, independent
of the number n of trades watching, by keeping five heaps: per side the ``above`` levels
(min-heap) and the ``below`` levels (max-heap, stored negated), and the ``at`` times (min-heap).
No I/O, no clock, no locking.

Semantics:

* **Keyed, replacing.** Watches are keyed by an int (a trade ticket). ``watch`` for a key that
  already has one replaces it: the old levels never fire again. A watch with no condition
  (``above``, ``below`` and ``at`` all None) is the same as ``cancel``.
* **Conditions.** A bid watch is met when ``bid >= above``, or ``bid <= below``, or
  ``now >= at``, whichever comes first; an ask watch the same with ``ask`` in place of ``bid``.
  Nothing checks that ``below < price < above``: a level already crossed simply fires on the
  next ``fire``. ``met`` answers for one key and one quote (the market actor checks a newly
  armed watch against the ticks it has already seen).
* **One-shot.** ``fire`` returns each met key once (even if two conditions are met at once),
  in ascending order, and removes its watch. To keep watching, watch again.
* **Unhappy paths.** A NaN or infinite level, time or bid raises ValueError and changes nothing.
  ``cancel`` of an unknown key does nothing.

Replaced, cancelled and fired watches leave stale heap entries behind (lazy deletion: each entry
carries the generation of the watch that pushed it and is skipped when that watch is gone).
When the stale entries outnumber twice the live ones, the heaps are rebuilt from the live
watches, so memory stays proportional to the live watches under any amount of re-watching, at
amortised O(1) extra cost per operation.

Example::

    index = TriggerIndex()
    index.watch(50_000_001, above=1.0860, below=1.0820)   # take-profit / stop level
    index.watch(50_000_002, at=1_717_376_400.0)           # time stop
    index.watch(50_000_003, below=1.0830, ask=True)       # a SELL: its ask falls to 1.0830
    index.fire(bid=1.0840, ask=1.0841, now=1_717_372_860.0)   # -> []
    index.fire(bid=1.0861, ask=1.0862, now=1_717_372_861.0)   # -> [50000001]
    index.fire(bid=1.0829, ask=1.0830, now=1_717_372_862.0)   # -> [50000003]
    50_000_001 in index                                   # -> False (one-shot)
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

# Below this many stale entries, never compact: rebuilding tiny heaps over and over buys nothing.
DEFAULT_COMPACT_FLOOR = 32
# Compact when stale entries exceed this multiple of the live entries.
_COMPACT_RATIO = 2

_Entry = tuple[float, int, int]  # (heap key, generation, watch key)


@dataclass(frozen=True, slots=True)
class TriggerStats:
    """A snapshot of a TriggerIndex's internals, for metrics and tests."""

    watches: int  # live watches (== len(index))
    above: int  # entries in the above-level heaps (bid and ask), stale ones included
    below: int  # entries in the below-level heaps (bid and ask), stale ones included
    times: int  # entries in the time heap, stale ones included
    stale: int  # heap entries whose watch was replaced, cancelled or fired
    compactions: int  # times the heaps were rebuilt from the live watches

    @property
    def entries(self) -> int:
        """All heap entries, live and stale."""
        return self.above + self.below + self.times


@dataclass(frozen=True, slots=True)
class _Watch:
    generation: int
    above: float | None
    below: float | None
    at: float | None
    ask: bool

    @property
    def entries(self) -> int:
        return (self.above is not None) + (self.below is not None) + (self.at is not None)

    def met(self, bid: float, ask: float | None, now: float) -> bool:
        return self.met_within(bid, bid, ask, ask, now)

    def met_within(self, bid_low: float, bid_high: float, ask_low: float | None,
                   ask_high: float | None, now: float) -> bool:
        low, high = (ask_low, ask_high) if self.ask else (bid_low, bid_high)
        return ((self.at is not None and now >= self.at)
                or (high is not None and self.above is not None and high >= self.above)
                or (low is not None and self.below is not None and low <= self.below))


def _finite(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


class TriggerIndex:
    """One-shot watches keyed by an id (a trade ticket). A new watch for an id replaces its old one."""

    __slots__ = ("_above", "_ask_above", "_ask_below", "_below", "_compact_floor",
                 "_compactions", "_generation", "_live_entries", "_times", "_watches")

    def __init__(self, *, compact_floor: int = DEFAULT_COMPACT_FLOOR) -> None:
        """An empty index; compact_floor is the stale-entry count below which it never compacts."""
        if compact_floor < 0:
            raise ValueError("compact_floor must be >= 0")
        self._compact_floor = compact_floor
        self._watches: dict[int, _Watch] = {}
        self._above: list[_Entry] = []  # (level, generation, key): lowest level on top
        self._below: list[_Entry] = []  # (-level, generation, key): highest level on top
        self._ask_above: list[_Entry] = []  # the same for ask watches
        self._ask_below: list[_Entry] = []
        self._times: list[_Entry] = []  # (time, generation, key): earliest on top
        # One counter for all keys: a generation then identifies a watch, and it also breaks
        # ties in the heaps so keys are never compared.
        self._generation = 0
        self._live_entries = 0
        self._compactions = 0

    def watch(self, key: int, *, above: float | None = None, below: float | None = None,
              at: float | None = None, ask: bool = False) -> None:
        """Watch for ``bid >= above``, ``bid <= below`` or ``now >= at`` (with ``ask=True`` the
        levels are the ask's), replacing key's watch.

        With all three None this is ``cancel(key)``. Raises ValueError (and keeps the old
        watch) if a given level or time is NaN or infinite.
        """
        above, below, at = _finite("above", above), _finite("below", below), _finite("at", at)
        self._drop(key)
        if above is None and below is None and at is None:
            self._maybe_compact()
            return
        self._generation += 1
        generation = self._generation
        watch = _Watch(generation, above, below, at, bool(ask))
        self._watches[key] = watch
        self._live_entries += watch.entries
        if above is not None:
            heapq.heappush(self._ask_above if ask else self._above, (above, generation, key))
        if below is not None:
            heapq.heappush(self._ask_below if ask else self._below, (-below, generation, key))
        if at is not None:
            heapq.heappush(self._times, (at, generation, key))
        self._maybe_compact()

    def cancel(self, key: int) -> None:
        """Forget key's watch; nothing happens if it has none."""
        self._drop(key)
        self._maybe_compact()

    def fire(self, bid: float, now: float, ask: float | None = None) -> list[int]:
        """Keys whose watch this quote or time meets, ascending, each once; their watches end.

        Without ``ask`` only bid levels and times are checked (ask watches wait for a quote
        that has an ask). Raises ValueError (and fires nothing) if bid, ask or now is NaN or
        infinite.
        """
        bid = _finite("bid", bid)  # type: ignore[assignment]
        ask = _finite("ask", ask)
        now = _finite("now", now)  # type: ignore[assignment]
        fired: set[int] = set()
        self._pop_met(self._above, bid, fired)
        self._pop_met(self._below, -bid, fired)  # -level <= -bid  <=>  bid <= level
        if ask is not None:
            self._pop_met(self._ask_above, ask, fired)
            self._pop_met(self._ask_below, -ask, fired)
        self._pop_met(self._times, now, fired)
        for key in fired:
            self._drop(key)
        self._maybe_compact()
        return sorted(fired)

    def met(self, key: int, bid: float, now: float, ask: float | None = None) -> bool:
        """True if key's watch is met by this quote or time; the watch then ends (as if it
        had fired). False, and nothing changes, if it is not met or key has none."""
        watch = self._watches.get(key)
        if watch is None or not watch.met(bid, ask, now):
            return False
        self._drop(key)
        self._maybe_compact()
        return True

    def met_within(self, key: int, bid: tuple[float, float], ask: tuple[float, float],
                   now: float) -> bool:
        """Could a quote with bid in ``bid`` = (low, high) and ask in ``ask`` by time ``now``
        meet key's watch? (Some quote of a series whose extremes these are does.) Changes
        nothing; False if key has no watch."""
        watch = self._watches.get(key)
        return watch is not None and watch.met_within(bid[0], bid[1], ask[0], ask[1], now)

    def _pop_met(self, heap: list[_Entry], value: float, fired: set[int]) -> None:
        """Pop every entry with heap key <= value; collect the keys of the live ones."""
        watches = self._watches
        while heap and heap[0][0] <= value:
            _, generation, key = heapq.heappop(heap)
            watch = watches.get(key)
            if watch is not None and watch.generation == generation:
                fired.add(key)

    def _drop(self, key: int) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None:
            self._live_entries -= watch.entries

    def _stale(self) -> int:
        return (len(self._above) + len(self._below) + len(self._ask_above)
                + len(self._ask_below) + len(self._times) - self._live_entries)

    def _maybe_compact(self) -> None:
        if self._stale() > max(_COMPACT_RATIO * self._live_entries, self._compact_floor):
            self._compact()

    def _compact(self) -> None:
        watches = self._watches

        def live(heap: list[_Entry]) -> list[_Entry]:
            kept = [e for e in heap if (w := watches.get(e[2])) is not None
                    and w.generation == e[1]]
            heapq.heapify(kept)
            return kept

        self._above = live(self._above)
        self._below = live(self._below)
        self._ask_above = live(self._ask_above)
        self._ask_below = live(self._ask_below)
        self._times = live(self._times)
        self._compactions += 1

    def __len__(self) -> int:
        """Number of live watches."""
        return len(self._watches)

    def __contains__(self, key: object) -> bool:
        """True while key has a live watch."""
        return key in self._watches

    def levels(self, key: int) -> tuple[float | None, float | None, float | None] | None:
        """(above, below, at) of key's live watch, or None if it has none."""
        watch = self._watches.get(key)
        return None if watch is None else (watch.above, watch.below, watch.at)

    def on_ask(self, key: int) -> bool:
        """True if key's live watch has ask levels (False for bid levels or no watch)."""
        watch = self._watches.get(key)
        return watch is not None and watch.ask

    def stats(self) -> TriggerStats:
        """Sizes of the live set and the heaps (stale entries included)."""
        return TriggerStats(watches=len(self._watches),
                            above=len(self._above) + len(self._ask_above),
                            below=len(self._below) + len(self._ask_below), times=len(self._times),
                            stale=self._stale(), compactions=self._compactions)
