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

On request (``subscribe {events: [...]}``, not by default) also:

* ``trade.action`` ``{ticket, seq, kind, obligation, status, price, volume, sl, tp, reason,
  retcode, at}`` when an action is journaled (pending) or resolved (done, failed, uncertain,
  deferred, skipped), from the same commit;
* ``supervisor.giveup`` ``{supervisor, child, kind, ticket, reason, exception, attempt, at}``
  when a supervisor gives a child up (a trade actor past its restart limit), from the commit
  of the restart history row;
* ``service.not_ready`` ``{ready, reason, broker_connected, store_writable, at}`` when the
  service leaves ready (:func:`watch_readiness`).

The data maps are built here (``*_data``), once for the bus and the webhook queue alike.
``tap(fn)`` sees every published event whoever subscribed (the webhooks take the events that
are not from a store commit -- ``service.not_ready``, the account guard's ``guard.*`` -- to their
durable queue).

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio

if TYPE_CHECKING:
    from dtms.model import ActionRecord, Trade, Transition
    from dtms.supervisor import RestartEvent

log = logging.getLogger(__name__)

#: what ``subscribe`` sends when it names no events (what it always sent)
DEFAULT_EVENTS = frozenset({"trade.state", "trade.updated"})
#: every event ``subscribe`` may name
EVENTS = DEFAULT_EVENTS | {"trade.action", "supervisor.giveup", "service.not_ready",
                           # the account guard's (no ticket: every subscription naming it hears it)
                           "guard.locked", "guard.unlocked", "guard.tightened"}
#: journal statuses that are a ``trade.action`` ("sent" is a step between two of them)
ACTION_EVENT_STATUSES = frozenset({"pending", "done", "failed", "uncertain", "deferred",
                                   "skipped"})


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
        self._taps: list[Callable[[str, dict[str, Any]], None]] = []
        #: fields every notified trade view carries besides the trade's own (the service sets
        #: the account guard's lock here, as every method's trade view carries it)
        self.trade_extras: Callable[[], dict[str, Any]] | None = None

    def tap(self, fn: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``fn(method, params)`` (it must not block) on every publish; returns the undo."""
        self._taps.append(fn)
        return lambda: self._taps.remove(fn) if fn in self._taps else None

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, conn: Subscriber, *, tickets: set[int] | None = None,
                  events: set[str] | None = None) -> Subscription:
        sub = Subscription(next(self._ids), conn, frozenset(tickets) if tickets else None,
                           frozenset(events) if events else DEFAULT_EVENTS)
        self._subs[sub.id] = sub
        conn.on_close(lambda: self._subs.pop(sub.id, None))
        return sub

    def publish(self, method: str, params: dict[str, Any]) -> int:
        """Queue the event on every matching subscription; returns how many."""
        if self.trade_extras is not None and isinstance(params.get("trade"), dict):
            params = {**params, "trade": {**params["trade"], **self.trade_extras()}}
        for fn in self._taps:
            fn(method, params)
        ticket = params.get("ticket")
        sent = 0
        for sub in list(self._subs.values()):
            if method in sub.events and (sub.tickets is None or ticket is None
                                         or ticket in sub.tickets):
                sub.conn.notify_nowait(method, params)
                sent += 1
        return sent


# -- the data of each event (one builder each: the bus and the webhook queue share them) ------

def trade_state_data(trade: Trade, t: Transition, mode: str = "live") -> dict[str, Any]:
    """``mode``: the configured ``policy.mode`` (the view's ``mode`` unless the trade overrides
    it), as in every other view of the trade."""
    return {"ticket": t.ticket, "from_state": t.from_state, "to_state": t.to_state,
            "reason": t.reason, "at": t.at, "trade": trade.view(mode)}


def trade_updated_data(trade: Trade, mode: str = "live") -> dict[str, Any]:
    return {"ticket": trade.ticket, "trade": trade.view(mode)}


def trade_action_data(a: ActionRecord, trade: Trade | None = None) -> dict[str, Any]:
    """An action as a trader reads it: the price and volume it filled at when it did, else
    the ones requested; ``sl``/``tp`` the levels it set (0 when it set none)."""
    req, res = a.request, a.result
    data = {"ticket": a.ticket, "seq": a.seq, "kind": a.kind, "obligation": a.obligation,
            "status": a.status, "price": res.get("price") or req.get("price") or 0.0,
            "volume": res.get("volume") or req.get("volume") or 0.0,
            "sl": req.get("sl", 0.0), "tp": req.get("tp", 0.0), "reason": a.reason,
            "retcode": a.retcode, "at": a.resolved_at or a.created_at}
    if trade is not None:
        data["symbol"] = trade.symbol
        data["direction"] = trade.direction.value
    return data


def giveup_data(e: RestartEvent) -> dict[str, Any]:
    """``ticket`` is the trade's when the child given up is a trade actor, else 0."""
    ticket = int(e.child) if e.kind == "trade" and e.child.isdigit() else 0
    return {"supervisor": e.supervisor, "child": e.child, "kind": e.kind or e.child,
            "ticket": ticket, "reason": e.reason, "exception": e.exception,
            "attempt": e.attempt, "at": e.at}


async def watch_readiness(ready: Callable[[], bool], status: Callable[[], dict[str, Any]],
                          bus: EventBus, *, was_ready: bool = False,
                          interval_s: float = 0.1) -> None:
    """Publish ``service.not_ready`` each time ``ready()`` goes from true to false (starting
    is not leaving: the service calls it once first ready, ``was_ready=True``); ``status()``
    says why. It looks every ``interval_s``: a shorter blip goes unreported."""
    while True:
        now_ready = ready()
        if was_ready and not now_ready:
            data = {"ready": False, **status(), "at": time.time()}
            log.warning("DTMS is no longer ready: %s", data.get("reason"), extra=data)
            bus.publish("service.not_ready", data)
        was_ready = now_ready
        await anyio.sleep(interval_s)
