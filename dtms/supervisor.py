"""OTP supervision: restart strategies, restart types, an intensity window, backoff, history.

A :class:`Supervisor` runs a fixed, ordered list of children; a :class:`DynamicSupervisor` runs
children added and removed at run time (one trade actor each). A child is a :class:`ChildSpec`
whose ``start`` is awaited as ``await start(task_status=...)``: it calls ``task_status.started()``
when ready; returning is a normal exit; raising is a crash. Supervisors are children too
(``ChildSpec("trades", dyn.run, stop=dyn.stop)``), which is how the tree nests.

Semantics (OTP's, with OTP's words):

* **Start/stop order.** Children start in order, each reported started before the next is
  started; ``run`` reports started after all of them. They stop in reverse order, each by
  awaiting its ``stop`` (if any), waiting up to ``shutdown_timeout``, then cancelling it.
* **Restart types.** ``PERMANENT`` is always restarted; ``TRANSIENT`` only after a crash;
  ``TEMPORARY`` never, not even when a sibling's death takes it down.
* **Strategies.** ``ONE_FOR_ONE`` restarts the dead child; ``ONE_FOR_ALL`` stops all the others
  (reverse order) and restarts them all (in order); ``REST_FOR_ONE`` does that for the dead child
  and the children started after it. Only the death of a child that is to be restarted triggers
  the strategy (a temporary child's death, or a transient child's normal exit, does not).
* **Intensity.** Every restart decision is timestamped on the monotonic ``clock``, across all
  children, in a sliding window: a timestamp ``t`` is in the window at ``now`` while
  ``now - t <= period``. If a restart would put more than ``max_restarts`` in the window, the
  supervisor restarts nothing: it stops every child (reverse order), emits an ``escalate`` event
  and raises :class:`SupervisorEscalation` out of ``run`` -- a crash to its parent.
* **Backoff.** A restart waits ``Backoff.delay(n, random())``, ``n`` being the child's count of
  consecutive restarts (0 for the first); ``n`` goes back to 0 once the child has run
  ``reset_after`` seconds. Backoffs run in their own tasks: while one child waits, the others run
  and their deaths are handled. A newer decision that takes in children of a pending restart
  (``ONE_FOR_ALL``/``REST_FOR_ONE``) cancels that restart and takes its children over.
* **History.** Each decision is one :class:`RestartEvent`, logged as one structured line on
  ``dtms.supervisor`` and passed to ``on_event``; a failing ``on_event`` is logged, not fatal.
* **Cancellation.** Cancelling the task that runs ``run`` stops the children in reverse order
  (shielded, each bounded by its ``shutdown_timeout``) and then propagates the cancellation.
  Children run in shielded scopes, so only their supervisor ever cancels them.

Example::

    sup = Supervisor("root", [
        ChildSpec("store", store.run, stop=store.stop),
        ChildSpec("broker", broker.run, stop=broker.stop),
        ChildSpec("trades", trades.run, stop=trades.stop, shutdown_timeout=30),
    ], strategy=Strategy.REST_FOR_ONE, intensity=Intensity(3, 5.0))
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)          # all three are up
        await trades.start_child(ChildSpec("trade-42", actor.run, stop=actor.stop))
        ...
        await sup.stop()                 # trades, broker, store -- in that order
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import random as _random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = [
    "AlreadyStarted", "Backoff", "ChildExitedBeforeStart", "ChildSpec", "DynamicSupervisor",
    "Intensity", "Restart", "RestartEvent", "Strategy", "Supervisor", "SupervisorEscalation",
    "SupervisorNotRunning",
]

log = logging.getLogger("dtms.supervisor")

EventCallback = Callable[["RestartEvent"], Awaitable[None] | None]
GiveUpCallback = Callable[[str, BaseException | None], Awaitable[None]]


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


@dataclass(frozen=True)
class Intensity:
    """At most ``max_restarts`` restarts within any ``period`` seconds."""

    max_restarts: int = 3
    period: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or not self.period > 0:
            raise ValueError(f"invalid intensity {self!r}: need max_restarts >= 0, period > 0")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter; ``reset_after=None`` means ``(min + max) / 2``."""

    min: float = 0.1
    max: float = 30.0
    jitter: float = 0.2
    reset_after: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max or self.jitter < 0 or (self.reset_after or 0) < 0:
            raise ValueError(f"invalid backoff {self!r}")

    @property
    def quiet_period(self) -> float:
        """Seconds of uptime after which a child's restart count goes back to 0."""
        return (self.min + self.max) / 2 if self.reset_after is None else self.reset_after

    def delay(self, n: int, u: float) -> float:
        """``min(max, min * 2**n) * (1 + u * jitter)`` for the ``n``-th restart, ``u`` in [0, 1)."""
        if n < 0:
            raise ValueError(f"restart count must be >= 0, got {n}")
        base = self.max if n > 1000 else min(self.max, self.min * 2.0**n)
        return base * (1 + u * self.jitter)


@dataclass(frozen=True)
class ChildSpec:
    """How to run, stop and restart one child. ``stop=None`` means: cancel it at once."""

    id: str
    start: Callable[..., Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    stop: Callable[[], Awaitable[None]] | None = None
    kind: str = ""  # what sort of child, for the restart history and metrics; "" -> its id


@dataclass(frozen=True)
class RestartEvent:
    """One restart decision: ``action`` is restart | give_up | escalate | shutdown, ``reason``
    crash | normal | sibling | intensity. Sibling events carry the dead child's attempt and
    backoff."""

    supervisor: str
    child: str
    action: str
    reason: str
    exception: str
    attempt: int
    backoff_s: float
    at: float
    kind: str = ""


class SupervisorEscalation(Exception):
    """A supervisor exceeded its restart intensity; ``__cause__`` is the last child's error."""

    def __init__(self, supervisor: str, child: str, intensity: Intensity) -> None:
        super().__init__(f"supervisor {supervisor!r}: child {child!r} would make more than "
                         f"{intensity.max_restarts} restarts within {intensity.period}s")
        self.supervisor = supervisor
        self.child = child


class AlreadyStarted(Exception):
    """``start_child`` with the id of a child that is running or restarting."""

    def __init__(self, child: str) -> None:
        super().__init__(f"child {child!r} is already started")
        self.child = child


class SupervisorNotRunning(RuntimeError):
    """``start_child`` on a supervisor that is not running (or is shutting down)."""


class ChildExitedBeforeStart(RuntimeError):
    """A child returned without calling ``task_status.started()``."""


# -- internals -------------------------------------------------------------------------------
class Flag:
    """A one-shot event that costs two slots until someone waits on it.

    The supervisor keeps two per running child (done, and started-or-done). anyio's Event on
    asyncio carries an asyncio.Event with its deque, ~0.9 KiB: 1.8 KiB per trade actor, an
    eighth of a trade's memory. Most are never waited on; the event is made on first wait.
    """

    __slots__ = ("_set", "_event")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._event is not None:   # its waiters hold it; the flag needs it no more
            event, self._event = self._event, None
            event.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()  # a wait is always a checkpoint, as anyio's
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


@dataclass(eq=False)
class _Run:
    """One incarnation of a child: its own shielded scope, and what became of it."""

    scope: anyio.CancelScope
    done: Flag = field(default_factory=lambda: Flag())
    settled: Flag = field(default_factory=lambda: Flag())  # started, or done
    started_at: float | None = None
    stopping: bool = False  # its exit is expected and is not a death to handle
    stop_requested: bool = False  # spec.stop() already awaited for this run
    error: Exception | None = None


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    run: _Run | None = None
    job: _Job | None = None  # the pending restart that will start this child
    streak: int = 0  # consecutive restarts, for backoff
    window: deque[float] | None = None  # per-child intensity (dynamic), made on a restart

    @property
    def state(self) -> str:
        run = self.run
        if run and run.started_at is not None and not run.stopping and not run.done.is_set():
            return "running"
        return "stopped" if self.job is None else "restarting"


@dataclass(eq=False)
class _Job:
    """A restart: stop ``to_stop`` (reverse), sleep ``delay``, start ``to_start`` (in order)."""

    to_stop: list[_Child]
    to_start: list[_Child]
    delay: float
    replaces: list[_Job]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(frozen=True, eq=False)
class _Exited:
    child: _Child
    run: _Run
    error: Exception | None


@dataclass(frozen=True, eq=False)
class _StartFailed:
    child: _Child
    job: _Job | None
    error: Exception


class _StopRequested:
    pass


@dataclass(frozen=True, eq=False)
class _Escalated:
    child: _Child
    error: Exception | None


@dataclass(frozen=True, eq=False)
class _InitFailed:
    error: Exception


_Message = _Exited | _StartFailed | _StopRequested


class _Status:
    """The ``task_status`` handed to a child: marks its run started."""

    __slots__ = ("_run", "_clock")

    def __init__(self, run: _Run, clock: Callable[[], float]) -> None:
        self._run, self._clock = run, clock

    def started(self, value: object = None) -> None:
        if self._run.started_at is not None:
            raise RuntimeError("task_status.started() called twice")
        self._run.started_at = self._clock()
        self._run.settled.set()


def _admit(window: deque[float], now: float, intensity: Intensity) -> bool:
    """Record a restart at ``now``; False if the window then holds more than allowed."""
    while window and window[0] < now - intensity.period:
        window.popleft()
    window.append(now)
    return len(window) <= intensity.max_restarts


def _innermost(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]  # Actor.run's task group wraps the real crash
    return error


def _describe(error: BaseException | None) -> str:
    return "" if error is None else repr(_innermost(error))


async def report(event: RestartEvent, error: BaseException | None,
                 on_event: EventCallback | None) -> None:
    """Log one decision as one structured line on ``dtms.supervisor`` and pass it to
    ``on_event``; a failing ``on_event`` is logged, never fatal. Every supervisor of DTMS (the
    two here and the trade runtime's) reports through this."""
    level = {"restart": logging.WARNING, "shutdown": logging.INFO}.get(event.action,
                                                                       logging.ERROR)
    log.log(level, "supervisor %s: %s child %s (%s) attempt=%d backoff=%.3fs %s",
            event.supervisor, event.action, event.child, event.reason, event.attempt,
            event.backoff_s, event.exception,
            extra={"supervisor": event.supervisor, "child": event.child, "kind": event.kind,
                   "event": event.action, "reason": event.reason,
                   "exception_type": type(_innermost(error)).__name__ if error else "",
                   "exception": event.exception, "attempt": event.attempt,
                   "backoff_s": event.backoff_s})
    if on_event is None:
        return
    try:
        result = on_event(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("supervisor %s: on_event failed for %r; supervision goes on",
                      event.supervisor, event)


class _Supervision:
    """The machinery shared by both supervisors; subclasses say which children a death
    affects and how a restart is counted."""

    def __init__(self, name: str, *, strategy: Strategy, intensity: Intensity,
                 backoff: Backoff, on_event: EventCallback | None,
                 clock: Callable[[], float], random: Callable[[], float]) -> None:
        self.name = name
        self._strategy = strategy
        self._intensity = intensity
        self._backoff = backoff
        self._on_event = on_event
        self._clock = clock
        self._random = random
        self._children: dict[str, _Child] = {}
        self._jobs: set[_Job] = set()
        self._tg: TaskGroup | None = None
        self._inbox: MemoryObjectSendStream[_Message] | None = None
        self._accepting = False
        self._finished: anyio.Event | None = None

    # -- subclass hooks ---------------------------------------------------------------------
    def _reset(self) -> None:
        raise NotImplementedError

    async def _start_all(self) -> _InitFailed | None:
        raise NotImplementedError

    def _count_restart(self, child: _Child, now: float) -> str:
        """'ok', 'give_up' (dynamic only) or 'escalate'."""
        raise NotImplementedError

    def _forget(self, child: _Child) -> None:
        """A child that will not be restarted."""

    async def _gave_up(self, child: _Child, error: Exception | None) -> None:
        """A child that died and will not be restarted (after its event)."""

    # -- public -----------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the children, supervise them until :meth:`stop`, cancellation or escalation.

        Raises :class:`SupervisorEscalation` past the intensity, or the exception of a child
        that failed to start (after stopping those already started).
        """
        if self._finished is not None and not self._finished.is_set():
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._finished = finished = anyio.Event()
        self._reset()
        send, recv = anyio.create_memory_object_stream[_Message](math.inf)
        self._inbox = send
        outcome: _Escalated | _InitFailed | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    outcome = await self._supervise(recv, task_status)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._shutdown()
                if isinstance(outcome, _Escalated):
                    await self._report(outcome.child, "escalate", "intensity", outcome.error,
                                       outcome.child.streak + 1, 0.0)
        finally:
            self._tg = None
            self._inbox = None
            self._accepting = False
            send.close()
            recv.close()
            finished.set()
        if isinstance(outcome, _Escalated):
            raise SupervisorEscalation(self.name, outcome.child.spec.id,
                                       self._intensity) from outcome.error
        if isinstance(outcome, _InitFailed):
            raise outcome.error

    async def stop(self) -> None:
        """Stop all children in reverse order and make ``run`` return normally; returns when
        ``run`` has. No-op if not running. Do not await it from ``on_event`` (deadlock)."""
        finished, inbox = self._finished, self._inbox
        if finished is None or inbox is None or finished.is_set():
            return
        self._accepting = False
        inbox.send_nowait(_StopRequested())
        await finished.wait()

    # -- the control loop -------------------------------------------------------------------
    async def _supervise(self, recv: MemoryObjectReceiveStream[_Message],
                         task_status: TaskStatus[None]) -> _Escalated | _InitFailed | None:
        failed = await self._start_all()
        if failed is not None:
            return failed
        self._accepting = True
        task_status.started()
        async for msg in recv:
            if isinstance(msg, _StopRequested):
                return None
            child = msg.child
            if self._children.get(child.spec.id) is not child:
                continue  # terminated or given up meanwhile
            if isinstance(msg, _Exited):
                if child.run is not msg.run or msg.run.stopping:
                    continue  # an exit we caused
                escalated = await self._died(child, msg.error, msg.run.started_at)
            else:
                if child.job is not msg.job:
                    continue  # superseded by a newer restart
                child.job = None
                escalated = await self._died(child, msg.error, None)
            if escalated is not None:
                return escalated
        return None

    async def _died(self, child: _Child, error: Exception | None,
                    started_at: float | None) -> _Escalated | None:
        """Decide what a death means: nothing, give up, restart or escalate."""
        spec, now = child.spec, self._clock()
        reason = "normal" if error is None else "crash"
        if spec.restart is Restart.TEMPORARY or (spec.restart is Restart.TRANSIENT
                                                 and error is None):
            self._forget(child)
            if error is None:
                log.info("supervisor %s: child %s exited normally; not restarted (%s)",
                         self.name, spec.id, spec.restart.value)
            else:
                await self._report(child, "give_up", reason, error, child.streak + 1, 0.0)
                await self._gave_up(child, error)
            return None
        verdict = self._count_restart(child, now)
        if verdict == "escalate":
            return _Escalated(child, error)
        if verdict == "give_up":
            self._forget(child)
            await self._report(child, "give_up", "intensity", error, child.streak + 1, 0.0)
            await self._gave_up(child, error)
            return None
        if started_at is not None and now - started_at >= self._backoff.quiet_period:
            child.streak = 0
        attempt = child.streak + 1
        child.streak = attempt
        delay = self._backoff.delay(attempt - 1, self._random())
        job, shut = self._schedule(child, delay)
        await self._report(child, "restart", reason, error, attempt, delay)
        for other in job.to_start:
            if other is not child:
                await self._report(other, "restart", "sibling", None, attempt, delay)
        for other in shut:
            await self._report(other, "shutdown", "sibling", None, attempt, delay)
        return None

    def _schedule(self, child: _Child, delay: float) -> tuple[_Job, list[_Child]]:
        """Mark what ``child``'s death takes down, and spawn the restart job (synchronously, so
        the exits it causes are known to be expected before any of them is received)."""
        ordered = list(self._children.values())
        if self._strategy is Strategy.ONE_FOR_ALL:
            affected = ordered
        elif self._strategy is Strategy.REST_FOR_ONE:
            affected = ordered[ordered.index(child):]
        else:
            affected = [child]
        replaces = {c.job for c in affected if c.job is not None}
        for old in replaces:
            old.scope.cancel()
        taken = set(affected) | {c for c in ordered if c.job in replaces}
        to_stop = [c for c in ordered if c in taken and c is not child]
        to_start = [c for c in ordered if c in taken and (
            c is child or c.spec.restart is not Restart.TEMPORARY)]
        shut = [c for c in to_stop if c not in to_start and c.state == "running"]
        for c in to_stop:
            if c.run is not None:
                c.run.stopping = True
        job = _Job(to_stop, to_start, delay, list(replaces))
        for c in to_start:
            c.job = job
        for c in shut:
            self._forget(c)
        assert self._tg is not None
        self._jobs.add(job)
        self._tg.start_soon(self._run_job, job, name=f"{self.name}:restart:{child.spec.id}")
        return job, shut

    async def _run_job(self, job: _Job) -> None:
        try:
            with job.scope:
                for old in job.replaces:
                    await old.done.wait()
                for c in reversed(job.to_stop):
                    await self._stop_child(c)
                await anyio.sleep(job.delay)
                for c in job.to_start:
                    if c.job is not job:
                        continue  # terminated meanwhile
                    try:
                        await self._start_child(c)
                    except Exception as exc:
                        assert self._inbox is not None
                        self._inbox.send_nowait(_StartFailed(c, job, exc))  # a death like any
                        return
                    c.job = None
        finally:
            job.done.set()
            self._jobs.discard(job)

    # -- one child --------------------------------------------------------------------------
    async def _start_child(self, child: _Child) -> None:
        """Start one incarnation; return once it called ``started()``, raise if it died first."""
        assert self._tg is not None
        run = _Run(anyio.CancelScope(shield=True))
        child.run = run
        self._tg.start_soon(self._child_main, child, run, name=f"{self.name}/{child.spec.id}")
        try:
            await run.settled.wait()
        except anyio.get_cancelled_exc_class():
            run.stopping = True
            run.scope.cancel()
            raise
        if run.started_at is None:
            raise run.error or ChildExitedBeforeStart(
                f"{self.name}/{child.spec.id} returned without calling task_status.started()")

    async def _child_main(self, child: _Child, run: _Run) -> None:
        """The task around one incarnation: its death becomes a message, never an error in the
        supervisor's task group."""
        try:
            with run.scope:
                await child.spec.start(task_status=_Status(run, self._clock))
        except Exception as exc:
            run.error = exc
        finally:
            run.done.set()
            run.settled.set()
        if run.started_at is None:
            return  # _start_child raises run.error in the starter's task
        if run.stopping or child.run is not run or self._inbox is None:
            if run.error is not None:
                log.warning("supervisor %s: child %s raised while being stopped: %r",
                            self.name, child.spec.id, run.error, exc_info=run.error)
            return
        self._inbox.send_nowait(_Exited(child, run, run.error))

    async def _stop_child(self, child: _Child) -> None:
        """Graceful stop (``spec.stop``), wait up to ``shutdown_timeout``, then cancel."""
        run, spec = child.run, child.spec
        if run is None:
            return
        run.stopping = True
        if run.done.is_set():
            return
        graceful = spec.stop is not None and run.started_at is not None
        if graceful:
            with anyio.move_on_after(spec.shutdown_timeout):
                if not run.stop_requested:  # once per run: a second stop() could outlive it
                    run.stop_requested = True
                    assert spec.stop is not None   # graceful: it has one
                    try:
                        await spec.stop()
                    except Exception:
                        log.exception("supervisor %s: stop() of child %s raised; cancelling it",
                                      self.name, spec.id)
                        graceful = False
                if graceful:
                    await run.done.wait()
        if not run.done.is_set():
            if spec.stop is not None:
                log.warning("supervisor %s: child %s did not stop within %ss; cancelling it",
                            self.name, spec.id, spec.shutdown_timeout)
            run.scope.cancel()
            await run.done.wait()

    async def _shutdown(self) -> None:
        self._accepting = False
        jobs = list(self._jobs)
        for job in jobs:
            job.scope.cancel()
        for job in jobs:
            await job.done.wait()
        for child in reversed(list(self._children.values())):
            child.job = None
            await self._stop_child(child)

    # -- history ----------------------------------------------------------------------------
    async def _report(self, child: _Child, action: str, reason: str, error: BaseException | None,
                      attempt: int, backoff_s: float) -> None:
        event = RestartEvent(self.name, child.spec.id, action, reason, _describe(error), attempt,
                             backoff_s, time.time(), child.spec.kind or child.spec.id)
        await report(event, error, self._on_event)


class Supervisor(_Supervision):
    """A fixed, ordered list of children under one strategy. See the module docstring.

    ``run`` may be called again after it returned (a parent restarting this subtree): each run
    starts with fresh children and an empty intensity window, as a new OTP process would.
    """

    def __init__(self, name: str, children: Sequence[ChildSpec], *,
                 strategy: Strategy = Strategy.ONE_FOR_ONE, intensity: Intensity = Intensity(),
                 backoff: Backoff = Backoff(), on_event: EventCallback | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 random: Callable[[], float] = _random.random) -> None:
        super().__init__(name, strategy=strategy, intensity=intensity, backoff=backoff,
                         on_event=on_event, clock=clock, random=random)
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"supervisor {name!r}: duplicate child ids in {ids}")
        self._specs = tuple(children)
        self._window: deque[float] = deque()
        self._reset()

    def which_children(self) -> list[tuple[str, str]]:
        """``(id, "running" | "restarting" | "stopped")`` in start order."""
        return [(c.spec.id, c.state) for c in self._children.values()]

    def _reset(self) -> None:
        self._children = {spec.id: _Child(spec) for spec in self._specs}
        self._window = deque()

    async def _start_all(self) -> _InitFailed | None:
        for child in self._children.values():
            try:
                await self._start_child(child)
            except Exception as exc:
                log.error("supervisor %s: child %s failed to start: %r", self.name, child.spec.id,
                          exc, exc_info=exc)
                return _InitFailed(exc)
        return None

    def _count_restart(self, child: _Child, now: float) -> str:
        return "ok" if _admit(self._window, now, self._intensity) else "escalate"


class DynamicSupervisor(_Supervision):
    """Children added and removed at run time, restarted one_for_one, in no particular order.

    Each child also has its own ``child_intensity`` window: past it the child is *given up* --
    not restarted, removed, a ``give_up`` event emitted and ``on_give_up(id, exc)`` awaited (in
    the control loop: keep it short; ``exc`` is None if a permanent child kept returning). A
    temporary child that crashes is given up the same way. A give-up never escalates.

    The supervisor's own ``intensity`` counts the *children* restarted within ``period`` (each
    at most once, at its latest restart): a single crash-looping child is bounded by its
    ``child_intensity`` and can never take the others down; ``max_restarts + 1`` distinct
    children restarting within ``period`` is a systemic failure and escalates.

    Children are kept across runs: if ``run`` returns or raises and is called again (its parent
    restarted it), the children that were not terminated or given up are started again; one
    that fails to start then counts as a crash of that child.
    """

    def __init__(self, name: str, *, intensity: Intensity = Intensity(3, 5.0),
                 backoff: Backoff = Backoff(),
                 child_intensity: Intensity | None = Intensity(5, 60.0),
                 on_event: EventCallback | None = None, on_give_up: GiveUpCallback | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 random: Callable[[], float] = _random.random) -> None:
        super().__init__(name, strategy=Strategy.ONE_FOR_ONE, intensity=intensity,
                         backoff=backoff, on_event=on_event, clock=clock, random=random)
        self._child_intensity = child_intensity
        self._on_give_up = on_give_up
        self._recent: dict[str, float] = {}

    async def start_child(self, spec: ChildSpec) -> None:
        """Start a child; return once it reported started.

        Raises :class:`AlreadyStarted` if ``spec.id`` is running or restarting,
        :class:`SupervisorNotRunning` if the supervisor is not running, and whatever the child
        raised if it died before reporting started (then nothing of it is left behind).
        """
        if not self._accepting or self._tg is None:
            raise SupervisorNotRunning(f"supervisor {self.name!r} is not running")
        if spec.id in self._children:
            raise AlreadyStarted(spec.id)
        child = _Child(spec)
        self._children[spec.id] = child
        try:
            await self._start_child(child)
        except BaseException as exc:
            self._forget(child)
            if not self._accepting and isinstance(exc, ChildExitedBeforeStart):
                raise SupervisorNotRunning(f"supervisor {self.name!r} stopped") from exc
            raise

    async def terminate_child(self, id: str) -> None:
        """Stop a child gracefully (then cancel it) for good; no error if ``id`` is unknown."""
        child = self._children.pop(id, None)
        if child is None:
            return
        job, child.job = child.job, None
        if job is not None:
            job.scope.cancel()
            await job.done.wait()
        await self._stop_child(child)
        log.info("supervisor %s: child %s terminated", self.name, id)

    def which_children(self) -> list[str]:
        """Ids of the children running or restarting, oldest first."""
        return list(self._children)

    def __len__(self) -> int:
        return len(self._children)

    def _reset(self) -> None:
        self._recent = {}

    async def _start_all(self) -> None:
        assert self._inbox is not None
        for child in list(self._children.values()):
            try:
                await self._start_child(child)
            except Exception as exc:
                self._inbox.send_nowait(_StartFailed(child, None, exc))
        return None

    def _count_restart(self, child: _Child, now: float) -> str:
        if child.window is None:
            child.window = deque()
        if self._child_intensity is not None and not _admit(child.window, now,
                                                            self._child_intensity):
            return "give_up"
        threshold = now - self._intensity.period
        self._recent = {k: t for k, t in self._recent.items() if t >= threshold}
        self._recent[child.spec.id] = now
        return "ok" if len(self._recent) <= self._intensity.max_restarts else "escalate"

    def _forget(self, child: _Child) -> None:
        if self._children.get(child.spec.id) is child:
            del self._children[child.spec.id]

    async def _gave_up(self, child: _Child, error: Exception | None) -> None:
        if self._on_give_up is None:
            return
        try:
            await self._on_give_up(child.spec.id, error)
        except Exception:
            log.exception("supervisor %s: on_give_up(%s) failed", self.name, child.spec.id)
