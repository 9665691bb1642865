"""The store's side of the webhooks: which writes of a group commit are events, for which
endpoints, and the bound on what waits.

The store actor asks :meth:`WebhookQueue.plan` for the rows of every batch it commits and
inserts them in the same transaction, so an event is queued exactly when what caused it is
durable (a trade's transition, a journal row, a give-up in the restart history, an
``EnqueueEvent``). :meth:`committed` then counts them, wakes the delivery actor and counts the
events dropped because ``store.webhooks_max_queued`` deliveries were already waiting: a dead
endpoint fills the queue, never DTMS's memory or its engine.

The store is the single writer, so the count of waiting rows kept here is exact: read at open
(:meth:`opened`), raised by each commit's rows, lowered by ``MarkDeliveries``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from dtms.actors.store import AddRestart, EnqueueEvent, MarkDeliveries, _puts
from dtms.config import WebhookSettings
from dtms.events import ACTION_EVENT_STATUSES, giveup_data, trade_action_data, trade_state_data
from dtms.metrics import Metrics
from dtms.webhooks.payload import encode, envelope, matches

log = logging.getLogger("dtms.webhooks")


@dataclass(slots=True)
class Plan:
    """One batch's webhook rows (``webhook_deliveries`` columns), and what it drops/removes."""
    rows: list[tuple] = field(default_factory=list)
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)   # (label, event)
    removed: int = 0


class WebhookQueue:
    def __init__(self, hooks: Sequence[WebhookSettings], max_queued: int, metrics: Metrics,
                 new_id: Callable[[], str] | None = None, policy_mode: str = "live") -> None:
        self.hooks = tuple(hooks)
        self.policy_mode = policy_mode   # the configured policy.mode, for the trade views
        #: what every notified trade view carries besides its own fields (the service sets the
        #: guard's lock, as on the bus): a delivery's data is the notification's
        self.trade_extras: Callable[[], dict[str, Any]] | None = None
        self.max_queued = max_queued
        self.metrics = metrics
        # a delivery id: random for this process, then counted (a uuid4 per event cost 6 us)
        prefix, count = uuid.uuid4().hex, itertools.count(1)
        self.new_id = new_id or (lambda: f"{prefix}-{next(count)}")
        self.queued = 0                  # rows waiting in webhook_deliveries
        self.wake = anyio.Event()        # set when rows were added: the delivery actor looks
        self._routes: dict[str, tuple[WebhookSettings, ...]] = {}

    def routes(self, event: str) -> tuple[WebhookSettings, ...]:
        """The endpoints that take ``event``."""
        found = self._routes.get(event)
        if found is None:
            found = self._routes[event] = tuple(h for h in self.hooks
                                                if matches(h.events, event))
        return found

    def opened(self, queued: int) -> None:
        self.queued = queued
        self.metrics.webhook_queued.set(queued)
        if queued:
            self.wake.set()

    def _events(self, message: Any) -> Iterator[tuple[str, int, float, Callable[[], dict]]]:
        """``(event, ticket, at, data)`` of each event ``message`` makes (data built lazily:
        only when an endpoint takes the event)."""
        if isinstance(message, EnqueueEvent):
            yield message.event, message.ticket, message.at, lambda: message.data
        elif isinstance(message, AddRestart):
            e = message.event
            if e.action == "give_up":
                data = giveup_data(e)
                yield "supervisor.giveup", data["ticket"], e.at, lambda: data
        else:
            for put in _puts((message,)):
                if (t := put.transition) is not None:
                    yield ("trade.state", t.ticket, t.at,
                           functools.partial(self._state_data, put.trade, t))
                for a in put.actions:
                    if a.status in ACTION_EVENT_STATUSES:
                        yield ("trade.action", a.ticket, a.resolved_at or a.created_at,
                               functools.partial(trade_action_data, a, put.trade))

    def _state_data(self, trade: Any, t: Any) -> dict[str, Any]:
        data = trade_state_data(trade, t, self.policy_mode)
        if self.trade_extras is not None:
            data["trade"].update(self.trade_extras())
        return data

    def plan(self, messages: Sequence[Any]) -> Plan:
        plan = Plan()
        room = self.max_queued - self.queued
        for message in messages:
            if isinstance(message, MarkDeliveries):
                # rows it removes free their room only once committed: not counted here
                plan.removed += len(message.done) + len(message.dropped)
                continue
            for event, ticket, at, data in self._events(message):
                hooks = self.routes(event)
                if room < len(hooks):   # full: count, and build nothing for the dropped
                    for hook in hooks[max(0, room):]:
                        plan.dropped[(hook.label, event)] += 1
                    hooks = hooks[:max(0, room)]
                if not hooks:
                    continue
                built = encode(data())
                for hook in hooks:
                    delivery = self.new_id()
                    plan.rows.append((delivery, hook.url, event, ticket, at,
                                      envelope(event, delivery, at, built)))
                    room -= 1
        return plan

    def committed(self, plan: Plan) -> None:
        self.queued += len(plan.rows) - plan.removed
        self.metrics.webhook_queued.set(self.queued)
        for (label, event), n in plan.dropped.items():
            self.metrics.webhook_dropped.labels(label).inc(n)
            log.warning("webhook queue full (%d deliveries waiting, store.webhooks_max_queued):"
                        " %d %s event(s) for %s dropped", self.queued, n, event, label,
                        extra={"url": label, "event": event, "dropped": n,
                               "queued": self.queued})
        if plan.rows:
            self.wake.set()
