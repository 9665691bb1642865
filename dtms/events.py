"""Trade events pushed to subscribed connections (the ``subscribe`` method).

The store publishes every trade change right after it is committed, so a subscriber never hears
of a change that is not durable:

* ``[2, "trade.state", [{ticket, from_state, to_state, reason, at, trade}]]`` for a transition
  (registration, close, suspension, resumption, release...);
* ``[2, "trade.updated", [{ticket, trade}]]`` for any other stored change (SL/TP or volume
  changed at the broker, paused/resumed). Not for a bar close's new score alone: the market
  stores it for all of a symbol's trades in one write (``PutScores``), which notifies nobody;
  ``trade``/``trades`` read it, and any notification after it carries it.

* ``guard.locked`` ``{kind, reason, since, until}``, ``guard.unlocked`` ``{reason, by, kind,
  at}`` and ``guard.tightened`` ``{tightened: [{ticket, from, to, reason, result}]}`` from the
  account guard, after its state is stored (account-wide: not filtered by ticket).

(params are an array of one map, as msgpack-rpc says; ``publish`` takes the map.)

``publish`` never blocks and never awaits: each connection has a bounded notification queue and a
subscriber too slow to drain it is disconnected by the rpc server (logged and counted), never
silently skipped. Subscriptions end when their connection closes.

Usage::

    bus = EventBus()
    sub = bus.subscribe(conn, tickets={123}, events={"trade.state"})
    bus.publish("trade.state", {"ticket": 123, ...})
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

EVENTS = frozenset({"trade.state", "trade.updated",
                    # the account guard's (no ticket: every subscription with the event hears it)
                    "guard.locked", "guard.unlocked", "guard.tightened"})


class Subscriber(Protocol):
    def notify_nowait(self, method: str, params: Any) -> None: ...
    def on_close(self, callback: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    conn: Subscriber
    tickets: frozenset[int] | None
    events: frozenset[str]


class EventBus:
    def __init__(self) -> None:
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, conn: Subscriber, *, tickets: set[int] | None = None,
                  events: set[str] | None = None) -> Subscription:
        sub = Subscription(next(self._ids), conn, frozenset(tickets) if tickets else None,
                           frozenset(events) if events else EVENTS)
        self._subs[sub.id] = sub
        conn.on_close(lambda: self._subs.pop(sub.id, None))
        return sub

    def publish(self, method: str, params: dict[str, Any]) -> int:
        """Queue the event on every matching subscription; returns how many."""
        ticket = params.get("ticket")
        sent = 0
        for sub in list(self._subs.values()):
            if method in sub.events and (sub.tickets is None or ticket is None
                                         or ticket in sub.tickets):
                sub.conn.notify_nowait(method, params)
                sent += 1
        return sent
