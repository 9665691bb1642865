"""Fault injection for the simulated terminal: latency, failed calls, disconnects, timeouts.

This module owns Faults, the switchboard tests use to make the SimTerminal
misbehave the way a real MetaTrader 5 terminal does: slow IPC, calls that
return None with an error, a lost IPC connection, an order_send that
executes on the server but reports TRADE_RETCODE_TIMEOUT to the caller, and an
open position that positions_get leaves out for a while (a glitch of the
terminal's position cache, seen after reconnects), and the deals of a position
that the history leaves out for a while (the terminal's history catching up
after a close).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from . import constants as c

NO_IPC = (c.RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection")
DEFAULT_FAILURE = (c.RES_E_INTERNAL_FAIL_TIMEOUT, "timeout")


@dataclass
class _FailRule:
    remaining: int
    function: str | None
    error: tuple[int, str]


class Faults:
    """Injected faults; every method is thread-safe (shares the terminal's lock)."""

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self._lock = lock or threading.RLock()
        self.latency = 0.0
        self._latency_of: dict[str, float] = {}   # API function -> its own latency
        self.disconnected = False
        self._uncertain = 0
        self._rules: list[_FailRule] = []
        self._jumps: list[tuple[str, float]] = []
        self._hidden: dict[int, int | None] = {}   # ticket -> positions_get calls left, None: all
        self._late_deals: dict[int, int] = {}      # position -> history_deals_get calls left

    def set_latency(self, seconds: float, function: str | None = None) -> None:
        """Every API call (or only calls of ``function``, e.g. "order_send": a request in
        flight while prices are read) sleeps this long (outside the terminal lock) first."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            if function is None:
                self.latency = float(seconds)
            else:
                self._latency_of[function] = float(seconds)

    def latency_of(self, function: str) -> float:
        """The latency of a call of ``function``."""
        return self._latency_of.get(function, self.latency) if self._latency_of else self.latency

    def fail_next(self, n: int = 1, function: str | None = None,
                  error: tuple[int, str] = DEFAULT_FAILURE) -> None:
        """The next n calls (of `function`, or of any API function) return None with `error`.

        initialize() fails by returning False; last_error() and shutdown() are
        never failed.
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            self._rules.append(_FailRule(n, function, (int(error[0]), str(error[1]))))

    def disconnect(self) -> None:
        """Drop the IPC link: calls return None with (-10004, ...) until initialize()."""
        with self._lock:
            self.disconnected = True

    def uncertain_next_order(self, n: int = 1) -> None:
        """The next n order_send calls run normally but report TRADE_RETCODE_TIMEOUT."""
        with self._lock:
            self._uncertain += n

    def move_before_next_order(self, symbol: str, bid: float) -> None:
        """Just before the next order_send runs, the market moves to `bid`: the price the
        request carries is stale by then (a requote if beyond the request's deviation)."""
        with self._lock:
            self._jumps.append((symbol, float(bid)))

    def hide_position(self, ticket: int, calls: int | None = None) -> None:
        """positions_get leaves the open position ``ticket`` out of its next ``calls`` answers
        that would have shown it (None: until ``show_position``); no deal, nothing closes."""
        if calls is not None and calls < 1:
            raise ValueError("calls must be >= 1 (or None: until show_position)")
        with self._lock:
            self._hidden[int(ticket)] = calls

    def show_position(self, ticket: int) -> None:
        """positions_get shows ``ticket`` again (if it is still open)."""
        with self._lock:
            self._hidden.pop(int(ticket), None)

    def delay_deals(self, position: int, calls: int) -> None:
        """history_deals_get leaves the deals of ``position`` out of its next ``calls``
        answers that would have shown them: a deal the terminal's history has not caught up
        with yet."""
        if calls < 1:
            raise ValueError("calls must be >= 1")
        with self._lock:
            self._late_deals[int(position)] = int(calls)

    def take_late_deals(self, positions: set[int]) -> set[int]:
        """The positions whose deals this history_deals_get answer leaves out (consumes one
        call of each)."""
        with self._lock:
            late = positions & self._late_deals.keys()
            for p in late:
                self._late_deals[p] -= 1
                if self._late_deals[p] <= 0:
                    del self._late_deals[p]
            return late

    @property
    def hiding(self) -> bool:
        """Any position or deal hidden (the common case, none, costs a call one test)."""
        return bool(self._hidden or self._late_deals)

    def take_hidden(self, ticket: int) -> bool:
        """True if this positions_get answer must leave ``ticket`` out (consumes one call)."""
        with self._lock:
            if ticket not in self._hidden:
                return False
            left = self._hidden[ticket]
            if left is not None:
                if left <= 1:
                    del self._hidden[ticket]
                else:
                    self._hidden[ticket] = left - 1
            return True

    def take_jump(self) -> tuple[str, float] | None:
        """Consume one move_before_next_order."""
        with self._lock:
            return self._jumps.pop(0) if self._jumps else None

    def clear(self) -> None:
        """Remove every injected fault (the connection state is left alone)."""
        with self._lock:
            self.latency = 0.0
            self._latency_of.clear()
            self._uncertain = 0
            self._rules.clear()
            self._jumps.clear()
            self._hidden.clear()
            self._late_deals.clear()

    def take_failure(self, function: str) -> tuple[int, str] | None:
        """Consume one matching fail_next rule, returning its error."""
        with self._lock:
            for rule in self._rules:
                if rule.function is None or rule.function == function:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return rule.error
            return None

    def take_uncertain(self) -> bool:
        """Consume one uncertain_next_order token."""
        with self._lock:
            if self._uncertain > 0:
                self._uncertain -= 1
                return True
            return False
