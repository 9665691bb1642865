"""The actor: a bounded mailbox, ``tell``/``ask``, and a supervised ``run``.

An :class:`Actor` owns one anyio memory object stream as its mailbox. Other code talks to it
only by messages:

* ``await actor.tell(msg)`` -- fire and forget; waits while the mailbox is full (backpressure,
  never a silent drop). ``tell_nowait`` raises :class:`MailboxFull` instead of waiting.
* ``await actor.ask(msg, timeout=5)`` -- request/reply; raises :class:`AskTimeout` if no reply
  comes in time (the message may still be processed later).

Subclasses implement ``handle(msg)``; its return value is the reply. A :class:`DtmsError`
(or another class listed in ``reply_errors``) raised by ``handle`` is the reply and the actor
carries on. Any other
exception is a crash: the asker gets ``Internal`` and the exception propagates out of
``run`` to the supervisor.

Mailboxes across restarts: the mailbox belongs to the actor *object*, not to one run of it. A
supervisor restarts a crashed actor by calling ``run`` again on the same object, so messages
queued while it was down are delivered to the next incarnation, in order. Only when the actor is
given up or stopped for good (``close``) are queued asks failed with :class:`ActorStopped`, and
later sends raise it at once.

Example::

    class Counter(Actor):
        async def on_start(self): self.n = 0
        async def handle(self, msg):
            self.n += msg
            return self.n

    counter = Counter("counter")
    async with anyio.create_task_group() as tg:
        await tg.start(counter.run)
        assert await counter.ask(2) == 2
        await counter.stop()
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from dtms.errors import DtmsError, Internal
from dtms.logs import TRACE_ID, new_trace_id

log = logging.getLogger(__name__)


class ActorStopped(Exception):
    """The actor has stopped for good; the message was not and will not be processed."""


class MailboxFull(Exception):
    """``tell_nowait`` found the mailbox full."""


class AskTimeout(TimeoutError):
    """No reply within the ask timeout."""


@dataclass(frozen=True, slots=True)
class _Stop:
    """Process everything queued before it, then return normally.

    It names the incarnation it was meant for: a stop left in the mailbox by a run that was
    cancelled or crashed before reaching it must not stop the next run at once.
    """

    incarnation: int


class Reply:
    """A one-shot reply slot for ``ask``."""

    __slots__ = ("_event", "_value", "_error")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(slots=True)
class Envelope:
    message: Any
    reply: Reply | None = None
    #: the sender's trace id, restored while the message is handled
    trace_id: str = field(default_factory=TRACE_ID.get)


class ActorCore:
    """What every actor shares, whatever runs it: ``tell``/``tell_nowait``/``ask`` over the
    subclass's ``_post``/``_post_nowait``, one message handled at a time by ``_deliver``, and
    the hooks. :class:`Actor` runs on a task of its own; :class:`dtms.actors.runtime.Cell`
    runs on a task only while its mailbox has messages."""

    if not TYPE_CHECKING:   # (hidden from mypy, which takes () as "no attributes at all")
        __slots__ = ()   # a subclass decides: a Cell has slots (100,000 of them), an Actor a dict
    name: str
    handling: int    # messages being handled right now (for ``idle``)
    #: exceptions from ``handle`` that are answers to the asker, not crashes of the actor
    reply_errors: tuple[type[BaseException], ...] = (DtmsError,)

    async def _post(self, env: Envelope) -> None:
        raise NotImplementedError

    def _post_nowait(self, env: Envelope) -> None:
        raise NotImplementedError

    async def tell(self, message: Any) -> None:
        """Fire and forget; waits while the mailbox is full.

        :raises ActorStopped: the actor has stopped for good."""
        await self._post(Envelope(message))

    def tell_nowait(self, message: Any) -> None:
        """Fire and forget without waiting.

        :raises MailboxFull: the mailbox is full (nothing was queued).
        :raises ActorStopped: the actor has stopped for good."""
        self._post_nowait(Envelope(message))

    async def ask(self, message: Any, timeout: float = 5.0) -> Any:
        """Request/reply: the value ``handle`` returned, or the error it raised.

        :raises AskTimeout: no reply within ``timeout`` (the message may still be handled).
        :raises ActorStopped: the actor has stopped for good.
        :raises Internal: the actor crashed handling it."""
        reply = Reply()
        try:
            with anyio.fail_after(timeout):
                await self._post(Envelope(message, reply))
                return await reply.wait()
        except TimeoutError as exc:
            if isinstance(exc, AskTimeout):  # a timeout further down, answered to us
                raise
            raise AskTimeout(f"{self.name} did not answer {type(message).__name__} "
                             f"within {timeout}s") from exc

    async def _deliver(self, env: Envelope) -> None:
        """Handle one message under its trace id and answer its asker (any loop uses this)."""
        token = TRACE_ID.set(env.trace_id or new_trace_id())
        self.handling += 1
        try:
            result = await self.handle(env.message)
        except self.reply_errors as err:
            if env.reply is not None:
                env.reply.fail(err)
            else:
                log.warning("%s: told %s failed: %r", self.name, type(env.message).__name__, err)
            return
        except Exception as exc:
            if env.reply is not None:
                env.reply.fail(Internal(f"{self.name} crashed handling "
                                        f"{type(env.message).__name__}: {exc!r}"))
            raise
        finally:
            self.handling -= 1
            TRACE_ID.reset(token)
        if env.reply is not None:
            env.reply.set(result)

    def _fail_queued(self, envelopes: Iterable[Envelope], reason: str) -> int:
        """Closing for good: fail the asks among ``envelopes`` (stops aside) with ActorStopped,
        log how many messages were dropped; returns that number."""
        dropped = 0
        for env in envelopes:
            if isinstance(env.message, _Stop):
                continue
            dropped += 1
            if env.reply is not None:
                env.reply.fail(ActorStopped(f"{self.name}: {reason}"))
        if dropped:
            log.warning("actor %s closed (%s) with %d queued messages failed", self.name,
                        reason, dropped)
        return dropped

    # -- hooks ---------------------------------------------------------------------------------
    async def on_start(self) -> None:
        """Called at the start of every incarnation, before the actor is reported ready."""

    async def on_stop(self) -> None:
        """Called when an incarnation ends, for any reason (shielded from cancellation)."""

    async def handle(self, message: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not handle {message!r}")


class Actor(ActorCore):
    """Base class for DTMS's long-lived actors (store, broker, registry...), each on its own
    task. See the module docstring."""

    #: messages of these types queued back to back are taken together (up to ``max_batch``)
    #: and given to ``handle_batch`` in one call: the store's group commit, the registry's
    #: batched registrations. Order is kept: a message of another type ends the batch.
    batch_types: tuple[type, ...] = ()
    max_batch = 1

    def __init__(self, name: str, mailbox_size: int = 1024) -> None:
        self.name = name
        self._send, self._recv = anyio.create_memory_object_stream[Envelope](
            max_buffer_size=mailbox_size if mailbox_size > 0 else math.inf
        )
        self._closed = False
        self._tg: TaskGroup | None = None
        self._starting = False   # on_start of this incarnation has not returned yet
        self.incarnation = 0
        self.handling = 0

    # -- messaging ---------------------------------------------------------------------------
    async def _post(self, env: Envelope) -> None:
        try:
            await self._send.send(env)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise ActorStopped(self.name) from exc

    def _post_nowait(self, env: Envelope) -> None:
        try:
            self._send.send_nowait(env)
        except anyio.WouldBlock as exc:
            raise MailboxFull(self.name) from exc
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise ActorStopped(self.name) from exc

    async def stop(self) -> None:
        """Ask the actor to finish what is queued and return normally. An actor still in
        ``on_start`` has processed nothing yet: its start is cancelled (``on_stop`` still runs)
        rather than waited for -- it may be waiting on a sibling the same restart stopped (a
        registry recovering from a store that crashed), and a start is redone by the next
        incarnation anyway."""
        if self._starting and self._tg is not None:
            self._tg.cancel_scope.cancel()
            return
        try:
            await self._send.send(Envelope(_Stop(self.incarnation)))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug("stop of already closed actor %s", self.name)

    def close(self, reason: str = "stopped") -> int:
        """Stop for good: fail queued asks with ActorStopped; returns how many were dropped."""
        self._closed = True
        self._send.close()

        def queued() -> Iterator[Envelope]:
            while True:
                try:
                    yield self._recv.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    return
        return self._fail_queued(queued(), reason)

    @property
    def mailbox_depth(self) -> int:
        return self._send.statistics().current_buffer_used

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being handled (tests wait for this)."""
        return self.handling == 0 and self.mailbox_depth == 0

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """One incarnation: ``on_start``, ready, process messages until stopped, ``on_stop``."""
        self.incarnation += 1
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._starting = True
                try:
                    await self.on_start()
                finally:
                    self._starting = False
                task_status.started()
                await self._loop()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self.on_stop()

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run a background task for this incarnation; if it raises, the actor crashes."""
        if self._tg is None:
            raise RuntimeError(f"{self.name}: spawn outside run()")
        self._tg.start_soon(fn, *args, name=f"{self.name}:{getattr(fn, '__name__', 'task')}")

    async def _loop(self) -> None:
        held: Envelope | None = None   # taken from the mailbox while filling a batch
        while True:
            if held is not None:
                env, held = held, None
            else:
                try:
                    env = await self._recv.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return
            if isinstance(env.message, _Stop):
                if env.message.incarnation == self.incarnation:
                    return
                continue
            if not isinstance(env.message, self.batch_types):
                await self._deliver(env)
                continue
            # the first batchable message, then every one queued right behind it
            batch = [env]
            while len(batch) < self.max_batch:
                try:
                    env = self._recv.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                if not isinstance(env.message, self.batch_types):
                    held = env
                    break
                batch.append(env)
            await self.handle_batch(batch)

    async def handle_batch(self, batch: list[Envelope]) -> None:
        """Handle messages of ``batch_types`` together; must answer every asker in ``batch``.

        The default handles them one by one."""
        for env in batch:
            await self._deliver(env)
