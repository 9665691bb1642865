"""The delivery actor: POSTs the queued webhook deliveries, retries them, and queues the
events that are no store write of their own.

One loop asks the store for the deliveries that are due -- the oldest undelivered row of each
``(url, ticket)`` stream, so a trade's later event waits until its earlier one was taken -- and
POSTs each on a task of its own (at most ``max_in_flight`` at once, ``max_per_url`` to one
endpoint, one per stream: a slow endpoint cannot take every slot). A 2xx
answer deletes the row (``MarkDeliveries``); anything else (a refused connection, a timeout, a
non-2xx status) keeps it for a retry after :func:`~dtms.webhooks.payload.retry_delay` (1 s
doubling to 30 s by default, ``Retry-After`` honoured up to that cap). A refused connection,
a timeout, 429 or 5xx also hold the whole endpoint for that delay, so a dead endpoint is tried
by one request at a time, not by every stream. Delivery is at least once: a row is deleted
only after its endpoint answered 2xx, so a crash or a restart in between sends it again, with
the same ``X-DTMS-Delivery``.

Nothing here is on the engine's path: trades, the store and the endpoints only meet in the
store's queue table, whose size is bounded (:mod:`dtms.webhooks.queue`).

The HTTP client is httpx: anyio-native (it runs on the service's event loop, a timeout or a
shutdown cancels a POST cleanly), with connection pooling and keep-alive per endpoint and TLS
verified against certifi's CA bundle. The stdlib's ``urllib`` would need a thread per request,
which cannot be cancelled. Redirects are not followed and proxy variables are not read
(settings come from the config only).

``tap`` (on the service's :class:`~dtms.events.EventBus`) takes the events published there that
no commit queues -- ``service.not_ready``, the account guard's ``guard.*`` -- to the store as
``EnqueueEvent``; while the store refuses writes it retries, and its own bounded mailbox drops
(counted) beyond ``mailbox_size``.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from dtms.actors.base import Actor, ActorStopped, AskTimeout, MailboxFull
from dtms.actors.store import DueDeliveries, EnqueueEvent, MarkDeliveries
from dtms.config import WebhookSettings
from dtms.errors import DtmsError
from dtms.metrics import Metrics
from dtms.webhooks.payload import headers, render, retry_delay
from dtms.webhooks.queue import WebhookQueue

log = logging.getLogger("dtms.webhooks")

#: events a store commit queues itself; the tap leaves them alone
COMMITTED_EVENTS = frozenset({"trade.state", "trade.updated", "trade.action",
                              "supervisor.giveup"})
#: answers that say the endpoint (not this one payload) is in trouble: hold the endpoint
_ENDPOINT_TROUBLE = {408, 429}


@dataclass(frozen=True, slots=True)
class Offer:
    """An event from the bus, to be queued durably."""
    event: str
    data: dict[str, Any]
    at: float


class WebhookDelivery(Actor):
    def __init__(self, hooks: Sequence[WebhookSettings], *, store: Actor, queue: WebhookQueue,
                 metrics: Metrics, max_in_flight: int = 16, max_per_url: int = 4,
                 mailbox_size: int = 1024, clock: Callable[[], float] = time.time,
                 jitter: Callable[[], float] = random.random) -> None:
        super().__init__("webhooks", mailbox_size)
        self.hooks = {h.url: h for h in hooks}
        self.store = store
        self.queue = queue
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.jitter = jitter
        self.max_per_url = max_per_url
        self.in_flight: dict[int, str] = {}   # delivery row id -> its url, while being tried
        self.held: dict[str, float] = {}      # url -> no try before this time
        self.trouble: dict[str, int] = {}     # url -> endpoint failures in a row
        self.client: httpx.AsyncClient | None = None
        metrics.webhook_endpoints(h.label for h in hooks)

    # -- events with no store write of their own -------------------------------------------
    def tap(self, event: str, data: dict[str, Any]) -> None:
        """The bus's tap: never blocks; a full mailbox drops the event (counted, logged)."""
        if event in COMMITTED_EVENTS or not self.queue.routes(event):
            return
        try:
            self.tell_nowait(Offer(event, data, data.get("at") or self.clock()))
        except (MailboxFull, ActorStopped) as exc:
            for hook in self.queue.routes(event):
                self.metrics.webhook_dropped.labels(hook.label).inc()
            log.error("webhook event %s dropped before it was queued (%r)", event, exc,
                      extra={"event": event})

    async def handle(self, message: Any) -> Any:
        if not isinstance(message, Offer):
            raise TypeError(f"webhooks cannot handle {message!r}")
        ticket = message.data.get("ticket")
        queued = EnqueueEvent(message.event, message.data, message.at,
                              ticket if isinstance(ticket, int) else 0)
        while True:   # the store refusing writes is temporary (NOT_READY): wait it out
            try:
                await self.store.ask(queued, timeout=30.0)
                return None
            except (DtmsError, AskTimeout) as exc:
                log.warning("webhook event %s not queued yet: %s; retrying", message.event,
                            exc, extra={"event": message.event})
                await anyio.sleep(1.0)

    # -- delivering ------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.in_flight.clear()
        self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self.spawn(self._post_due)

    async def on_stop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.aclose()

    async def _post_due(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                now = self.clock()
                busy = Counter(self.in_flight.values())   # url -> its tries in flight
                held = tuple(u for u in self.hooks if self.held.get(u, 0.0) > now
                             or busy[u] >= self.max_per_url)
                room = self.max_in_flight - len(self.in_flight)
                wake = self.queue.wake = anyio.Event()   # before looking: what comes after wakes us
                rows: list[dict[str, Any]] = []
                next_at = math.inf
                if room > 0:
                    try:
                        rows, next_at = await self.store.ask(
                            DueDeliveries(now, held, tuple(self.in_flight), room), timeout=30.0)
                    except (AskTimeout, DtmsError) as exc:   # the store's trouble is its own
                        log.warning("webhooks: the store did not answer (%s); looking again "
                                    "in 1 s", exc)
                        next_at = now + 1.0
                started = 0
                for row in rows:
                    if busy[row["url"]] >= self.max_per_url:
                        continue   # at its cap now: the next look leaves its url out
                    busy[row["url"]] += 1
                    self.in_flight[row["id"]] = row["url"]
                    tg.start_soon(self._try, row)
                    started += 1
                if started:
                    continue
                # nothing to start: sleep until a try ends, a commit queues rows, the next
                # row falls due or a hold ends (a url at its cap waits for a try to end)
                wake_at = min([next_at, *(self.held[u] for u in held
                                          if self.held.get(u, 0.0) > now)])
                with anyio.move_on_after(max(0.0, wake_at - now)):
                    await wake.wait()

    async def _try(self, row: dict[str, Any]) -> None:
        try:
            await self._send_one(row)
        finally:
            self.in_flight.pop(row["id"], None)
            self.queue.wake.set()   # its stream's next row may be due now

    async def _send_one(self, row: dict[str, Any]) -> None:
        url = row["url"]
        hook = self.hooks.get(url)
        if hook is None:   # its [[webhooks]] entry was removed since it was queued
            await self._drop(row, _label(url), "its endpoint is no longer configured")
            return
        try:
            body = render(hook, row["body"])
        except (ValueError, KeyError, TypeError) as exc:   # a row no format can send
            await self._drop(row, hook.label, f"its body cannot be sent as {hook.format}: "
                                              f"{exc!r}")
            return
        assert self.client is not None
        retry_after: float | None = None
        try:
            answer = await self.client.post(url, content=body, timeout=hook.timeout_s,
                                            headers=headers(hook, row["event"],
                                                            row["delivery"], body))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error, trouble = f"{type(exc).__name__}: {exc}", True
        else:
            if 200 <= answer.status_code < 300:
                await self._delivered(hook, row)
                return
            error = f"HTTP {answer.status_code}: {answer.text[:200]}"
            trouble = answer.status_code >= 500 or answer.status_code in _ENDPOINT_TROUBLE
            retry_after = _retry_after(answer.headers.get("retry-after"), self.clock())
        await self._failed(hook, row, error, trouble, retry_after)

    async def _drop(self, row: dict[str, Any], label: str, why: str) -> None:
        """A row that can never be delivered leaves the queue, counted and logged (a row that
        crashed the actor each time it came due would take the service down with it)."""
        self.metrics.webhook_dropped.labels(label).inc()
        log.error("webhook delivery %s (%s) to %s dropped: %s", row["delivery"], row["event"],
                  label, why, extra={"delivery": row["delivery"], "event": row["event"],
                                     "url": label})
        await self._mark(row, MarkDeliveries(dropped=(row["id"],)))

    async def _delivered(self, hook: WebhookSettings, row: dict[str, Any]) -> None:
        self.metrics.webhook_deliveries.labels(hook.label, "delivered").inc()
        self.held.pop(hook.url, None)
        self.trouble.pop(hook.url, None)
        log.debug("webhook delivery %s (%s) taken by %s", row["delivery"], row["event"],
                  hook.label)
        await self._mark(row, MarkDeliveries(done=(row["id"],)))

    async def _failed(self, hook: WebhookSettings, row: dict[str, Any], error: str,
                      trouble: bool, retry_after: float | None) -> None:
        self.metrics.webhook_deliveries.labels(hook.label, "failed").inc()
        now = self.clock()
        attempts = row["attempts"] + 1
        delay = retry_delay(hook, attempts, self.jitter())
        if retry_after is not None:
            delay = min(hook.max_backoff_s, max(delay, retry_after))
        if trouble:
            self._hold(hook, retry_after)
        log.warning("webhook delivery %s (%s) to %s failed (try %d): %s; next try in %.1fs",
                    row["delivery"], row["event"], hook.label, attempts, error, delay,
                    extra={"delivery": row["delivery"], "event": row["event"],
                           "url": hook.label, "attempts": attempts, "error": error})
        await self._mark(row, MarkDeliveries(retry=((row["id"], attempts, now + delay,
                                                     error[:500]),)))

    async def _mark(self, row: dict[str, Any], outcome: MarkDeliveries) -> None:
        """Record a try's outcome. While the store refuses writes (NOT_READY) the row stays
        in flight, so it is not tried again meanwhile; a restart before it is recorded sends
        it again (at least once, with the same X-DTMS-Delivery)."""
        while True:
            try:
                await self.store.ask(outcome, timeout=30.0)
                return
            except (DtmsError, AskTimeout) as exc:
                log.warning("webhook delivery %s: its outcome is not recorded yet (%s); "
                            "retrying", row["delivery"], exc,
                            extra={"delivery": row["delivery"]})
                await anyio.sleep(1.0)

    def _hold(self, hook: WebhookSettings, retry_after: float | None = None) -> None:
        """No try to ``hook`` for a while, longer each time in a row (reset by a success)."""
        failures = self.trouble[hook.url] = self.trouble.get(hook.url, 0) + 1
        hold = retry_delay(hook, failures, self.jitter())
        if retry_after is not None:
            hold = min(hook.max_backoff_s, max(hold, retry_after))
        self.held[hook.url] = max(self.held.get(hook.url, 0.0), self.clock() + hold)


def _label(url: str) -> str:
    return WebhookSettings(url=url).label


def _retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now (a number of seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            return None
