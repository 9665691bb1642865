"""The position watcher: one poll of the broker's open positions for all trades.

Every ``poll_interval_s`` it asks the broker for all open positions -- one terminal call no
matter how many trades are registered, answered with every position's mark (its volume, SL and
TP, packed) and, in full, only the positions whose mark changed since the last poll -- and
tells each watched trade actor what changed:
``PositionUpdate`` when volume, SL or TP differ from what it last reported, ``PositionGone`` when
the ticket is no longer open, with the number of polls in a row that have missed it (a
position back in a later poll starts again from 0: the trade confirms a close without a
closing deal only after ``broker.absent_polls``). A failed poll changes nothing (a broker
hiccup never closes or deletes a trade); it is logged, counted, and retried at the next
interval.

It also reports open positions carrying DTMS's magic number that no trade actor watches
(``unknown``), and counts successful polls (``polls_ok``): the first poll completed after the
registry recovered is the moment every stored trade has been reconciled against the broker.

The poll is a message the watcher sends itself, so all its state changes happen in ``handle``.
Its cost still grows with the number of positions (the terminal returns every row; reading
100,000 marks takes DTMS ~0.15 s): the pause after a poll is stretched so that polling holds the broker's one lane --
and the interpreter -- at most ``max_share`` of the time (:func:`poll_pause`). Registrations,
actions and ticks go through the same lane and would otherwise queue behind back-to-back polls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from dtms.actors.base import Actor, ActorCore, ActorStopped
from dtms.actors.trade import PositionGone, PositionUpdate
from dtms.errors import BrokerError, NotReady
from dtms.metrics import Metrics
from dtms.model import Position

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Watch:
    ticket: int
    actor: ActorCore


@dataclass(frozen=True, slots=True)
class Unwatch:
    ticket: int


@dataclass(frozen=True, slots=True)
class Poll:
    pass


def poll_pause(interval_s: float, took_s: float, max_share: float) -> float:
    """Seconds to wait after a poll that took ``took_s``: ``interval_s``, or longer so that
    polls take at most ``max_share`` of the time."""
    return max(interval_s, took_s * (1.0 - max_share) / max_share)


class PositionWatcher(Actor):
    def __init__(self, broker: Any, *, metrics: Metrics, interval_s: float, dtms_magic: int,
                 comment_tag: str = "DTMS", max_share: float = 1.0) -> None:
        super().__init__("positions", mailbox_size=0)  # unbounded: Watch must never block
        self.broker = broker
        self.metrics = metrics
        self.interval_s = interval_s
        self.max_share = max_share
        self.dtms_magic = dtms_magic
        self.comment_tag = comment_tag
        self.on_unknown: Callable[[list[int]], None] | None = None
        self.watched: dict[int, ActorCore] = {}
        self.last_seen: dict[int, bytes] = {}   # ticket -> mark (packed volume, SL, TP)
        self.ours: dict[int, int] = {}   # open DTMS-magic position -> the trade it hedges, or 0
        # watched ticket -> polls in a row without it (kept across a restart of the watcher:
        # the polls before it missed the position too)
        self.absent: dict[int, int] = {}
        self.unknown: list[int] = []
        self.polls_ok = 0
        self.last_poll_s = 0.0   # how long the last poll's terminal call took

    async def on_start(self) -> None:
        self.last_seen = {}
        self.ours = {}
        self.spawn(self._ticker)

    async def _ticker(self) -> None:
        # The first poll waits for the terminal: polled before the broker connects it could
        # only fail (a warning on every clean start). A disconnect later is logged and counted.
        while not self.broker.connected:
            await anyio.sleep(min(0.05, self.interval_s))
        while True:
            await self.ask(Poll(), timeout=max(60.0, self.interval_s * 10))
            await anyio.sleep(poll_pause(self.interval_s, self.last_poll_s, self.max_share))

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Watch):
            self.watched[message.ticket] = message.actor
            self.last_seen.pop(message.ticket, None)  # its trade hears of it at the next poll
            self.absent.pop(message.ticket, None)
            return None
        if isinstance(message, Unwatch):
            self.watched.pop(message.ticket, None)
            self.last_seen.pop(message.ticket, None)
            self.absent.pop(message.ticket, None)
            return None
        if isinstance(message, Poll):
            return await self._poll()
        raise TypeError(f"position watcher cannot handle {message!r}")

    async def _poll(self) -> None:
        polled_at = time.perf_counter()
        try:
            # last_seen is only read by the call; this actor handles nothing else meanwhile
            marks, changed = await self.broker.call("position_changes", known=self.last_seen)
            self.last_poll_s = time.perf_counter() - polled_at
        except (BrokerError, NotReady) as exc:
            self.metrics.position_polls.labels("error").inc()
            log.warning("position poll failed: %s", exc)
            return
        self.metrics.position_polls.labels("ok").inc()
        for ticket, actor in list(self.watched.items()):
            mark = marks.get(ticket)
            try:
                # snapshots: a trade takes them at once, the newest replacing a queued one, so
                # one slow or crashed trade never holds up the poll of all the others
                if mark is None:
                    # told again each poll until the actor confirms and exits (a confirmation
                    # that failed on a broker error is retried)
                    polls = self.absent[ticket] = self.absent.get(ticket, 0) + 1
                    actor.tell_nowait(PositionGone(polls))
                    continue
                if self.absent.pop(ticket, None):
                    log.warning("position %s is back at the broker after missing from a poll",
                                ticket, extra={"ticket": ticket})
                p = changed.get(ticket)
                if p is not None:
                    actor.tell_nowait(PositionUpdate(p, polled_at))
            except ActorStopped:
                self.watched.pop(ticket, None)
                self.absent.pop(ticket, None)
        # every open position's triple as of this poll (a watched one's: what its trade was
        # told); of those carrying DTMS's magic, the trade each hedges (from the comment, read
        # when the position first came back in full), to find the ones DTMS has no record of
        self.last_seen = marks
        for ticket, p in changed.items():
            if p.magic == self.dtms_magic:
                self.ours[ticket] = self._hedged_trade(p)
        self.ours = {t: h for t, h in self.ours.items() if t in marks}
        unknown = sorted(t for t, hedged in self.ours.items()
                         if t not in self.watched and hedged not in self.watched)
        new = sorted(set(unknown) - set(self.unknown))
        self.unknown = unknown
        self.metrics.unknown_positions.set(len(unknown))
        if new:
            log.warning("open positions with DTMS's magic %s that DTMS has no record of: %s",
                        self.dtms_magic, new, extra={"unknown_positions": new})
            if self.on_unknown is not None:
                self.on_unknown(new)
        self.polls_ok += 1

    def _hedged_trade(self, p: Position) -> int:
        """The trade a DTMS hedge belongs to, from its comment ``TAG:<ticket>:<seq>``; else 0."""
        parts = p.comment.split(":")
        if len(parts) == 3 and parts[0] == self.comment_tag and parts[1].isdigit():
            return int(parts[1])
        return 0
