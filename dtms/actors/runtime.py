"""Actors without a task of their own: a :class:`Cell` is state + behaviour + a mailbox, and a
:class:`Runtime` runs it only while its mailbox holds messages -- the way Akka, Proto.Actor,
Orleans and the BEAM keep an idle actor free. DTMS runs its trade actors this way: 100,000
idle trades cost their objects, no task, no stream, no cancel scope.

Scheduling. A message put in an unscheduled cell's mailbox flags the cell *scheduled* and
starts one task for it (a "turn"); further messages join the mailbox. The turn handles them
one at a time, in order, then clears the flag and ends: an actor holds a task only while it
has work, including while a handler awaits I/O (the store's group commit, the broker), and
then none of its other messages run (one message at a time holds). No turn ever waits for
another actor's handler: one hung broker call stalls only its own trade, and many trades'
writes reach the store together, so group commit batches across them. Fairness: after
``budget`` messages in a row a turn yields to the event loop (``checkpoint``) before going on.

Backpressure. Commands and asks wait while the mailbox holds ``mailbox_size`` messages
(``tell``/``ask``), or get :class:`~dtms.actors.base.MailboxFull` (``tell_nowait``): never
dropped. Snapshot messages (a class's ``snapshots``: for a trade, a price or bar view, a
position) are full states: a newer one replaces the one still queued that it ``supersedes``
-- latest wins -- and they are always taken at once, so a sender of snapshots (a symbol's
market actor, the position watcher) never waits on a slow or crashed trade. A cell's mailbox
therefore holds at most ``mailbox_size`` commands plus one message per snapshot kind.

Crashes (OTP's one_for_one, per cell). A handler that raises anything but ``reply_errors``
crashes the cell: its asker gets ``Internal``, ``on_stop`` runs, and the cell is suspended
(its mailbox keeps what is queued and keeps taking messages up to its bound). The crash is
counted in the cell's own window (``intensity``: at most ``max_restarts`` within
``period``); within it the cell is restarted after ``backoff`` (``on_start`` again: a trade
reloads its state from the store), and its queued messages then go to the new incarnation;
past it the cell is *given up*: closed (queued asks fail with ``ActorStopped``) and
``on_give_up(id, error)`` called. Each decision is a :class:`~dtms.supervisor.RestartEvent`
(one structured log line, ``on_event``). Crashes of one cell never count against another, and
the runtime itself never escalates for them: a failure of the runtime's own task is the
registry's crash. Background work a cell starts with ``spawn`` runs on the runtime's task
group; if it raises, that is a crash of the cell.

Example::

    class Counter(Cell):
        async def on_start(self): self.n = 0
        async def handle(self, msg):
            self.n += msg
            return self.n

    rt = Runtime("counters")
    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        c = rt.start(Counter("c-1"))      # no task yet: on_start runs in its first turn
        assert await c.ask(2) == 2        # one turn: the start, then the message
        await rt.stop()
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from dtms.actors.base import ActorCore, ActorStopped, Envelope, MailboxFull, _Stop
from dtms.supervisor import (
    Backoff,
    EventCallback,
    GiveUpCallback,
    Intensity,
    RestartEvent,
    _admit,
    _describe,
    report,
)

log = logging.getLogger(__name__)

#: a trade's own restart limit by default, as OTP's intensity: 5 crashes within 60 s
DEFAULT_INTENSITY = Intensity(5, 60.0)
DEFAULT_BACKOFF = Backoff()


class Cell(ActorCore):
    """An actor run by a :class:`Runtime`. Subclasses implement ``handle`` (and the hooks);
    ``supersedes(new, old)`` says which queued snapshot a new message replaces. Cells have
    ``__slots__`` (a dict per object would be ~1.5 KiB of a trade's ~5); a subclass that
    declares none gets a dict as usual."""

    __slots__ = ("name", "id", "kind", "mailbox_size", "incarnation", "handling", "_box",
                 "_space", "_runtime", "_scheduled", "_starting", "_suspended", "_closed",
                 "_window", "_in_a_row", "_started_at", "_task")

    def __init__(self, name: str, mailbox_size: int = 64, *, id: str | None = None,
                 kind: str = "") -> None:
        self.name = name
        self.id = id or name
        self.kind = kind
        self.mailbox_size = mailbox_size if mailbox_size > 0 else 1 << 62
        self.incarnation = 0
        self.handling = 0
        self._box: deque[Envelope] | None = None    # made on the first message, dropped empty
        self._space: anyio.Event | None = None      # made when a sender waits for room
        self._runtime: Runtime | None = None
        self._scheduled = False
        self._starting = False      # the next turn runs on_start first
        self._suspended = False     # crashed: not run until restarted
        self._closed = False
        self._window: deque[float] | None = None    # crash times, made on the first crash
        self._in_a_row = 0                          # consecutive restarts (for the backoff)
        self._started_at = 0.0
        self._task: asyncio.Task[None] | None = None    # the turn running now, if any

    # -- messaging ---------------------------------------------------------------------------
    #: full-state messages: never refused for room, a newer one replaces a queued one
    snapshots: tuple[type, ...] = ()

    def supersedes(self, new: Any, old: Any) -> bool:
        """Does snapshot ``new`` make the queued ``old`` pointless? Default: same type."""
        return type(new) is type(old)

    def _take(self, env: Envelope) -> bool:
        """Queue ``env`` if there is room or it is a snapshot; False if full."""
        if self._closed:
            raise ActorStopped(self.name)
        box = self._box
        if box is None:
            box = self._box = deque()
        snapshot = env.reply is None and isinstance(env.message, self.snapshots)
        if snapshot:
            for i, old in enumerate(box):
                if (old.reply is None and isinstance(old.message, self.snapshots)
                        and self.supersedes(env.message, old.message)):
                    del box[i]   # the newer state goes to the back, after what came between
                    break
        elif len(box) >= self.mailbox_size:
            return False
        box.append(env)
        if self._runtime is not None:
            self._runtime._schedule(self)
        return True

    def _post_nowait(self, env: Envelope) -> None:
        if not self._take(env):
            raise MailboxFull(self.name)

    async def _post(self, env: Envelope) -> None:
        while not self._take(env):
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()

    def _made_room(self) -> None:
        if self._space is not None:
            space, self._space = self._space, None
            space.set()

    async def stop(self) -> None:
        """Finish what is queued, then end for good (``on_stop``): a normal exit."""
        if self._closed:
            return
        self._take_stop()

    def _take_stop(self) -> None:
        if self._box is None:
            self._box = deque()
        self._box.append(Envelope(_Stop(self.incarnation)))
        if self._runtime is not None:
            self._runtime._schedule(self)

    def close(self, reason: str = "stopped") -> int:
        """Stop for good now: fail queued asks with ActorStopped; returns how many were
        dropped."""
        self._closed = True
        box, self._box = self._box or deque(), None
        dropped = self._fail_queued(box, reason)
        self._made_room()
        if self._runtime is not None:
            self._runtime._forget(self)
        return dropped

    @property
    def mailbox_depth(self) -> int:
        return len(self._box) if self._box else 0

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing being handled, not starting (tests wait for this)."""
        return self.handling == 0 and not self._box and not self._starting

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run background work on the runtime; if it raises, this cell crashes."""
        if self._runtime is None:
            raise RuntimeError(f"{self.name}: spawn outside a runtime")
        self._runtime._spawn_for(self, fn, *args)


def _running(cell: Cell) -> bool:
    """Started and not crashed: ``on_start`` ran and ``on_stop`` has not yet."""
    return bool(cell.incarnation) and not cell._starting and not cell._suspended


class Runtime:
    """Runs :class:`Cell` s while they have messages and supervises each one. See the module
    docstring."""

    def __init__(self, name: str, *, budget: int = 32,
                 intensity: Intensity | None = DEFAULT_INTENSITY,
                 backoff: Backoff = DEFAULT_BACKOFF,
                 on_event: EventCallback | None = None,
                 on_give_up: GiveUpCallback | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 random: Callable[[], float] = _random.random) -> None:
        self.name = name
        self.budget = max(1, budget)
        self._intensity = intensity
        self._backoff = backoff
        self._on_event = on_event
        self._on_give_up = on_give_up
        self._clock = clock
        self._random = random
        self._cells: dict[str, Cell] = {}
        self._loop: asyncio.AbstractEventLoop | None = None   # while running
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: BaseException | None = None
        self._stopped: anyio.Event | None = None
        self.turns = 0            # turns started (statistics)
        self.yields = 0           # budgets used up

    # -- public ------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the cells' turns until :meth:`stop` or cancellation; then every cell's
        ``on_stop`` runs (shielded). A failure of the runtime's own code (never a handler's:
        that is the cell's crash) ends ``run`` with that error, the owner's crash.

        Turns are plain asyncio tasks (a turn costs ~3 us to start, an anyio task group's
        ``start_soon`` ~35 us here); anyio's cancel scopes and timeouts work inside them."""
        self._stopped = anyio.Event()
        self._failure = None
        self._loop = asyncio.get_running_loop()
        try:
            for cell in self._cells.values():    # kept across runs: start them again
                cell._scheduled = False
                self._begin(cell)
            task_status.started()
            await self._stopped.wait()
        finally:
            self._loop = None
            with anyio.CancelScope(shield=True):
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks)
                for cell in list(self._cells.values()):
                    cell._scheduled = False
                    if _running(cell):
                        await self._stop_hook(cell)
        if self._failure is not None:
            raise self._failure

    async def stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    def start(self, cell: Cell) -> Cell:
        """Take ``cell`` on and schedule its start (``on_start`` in its first turn); returns
        at once, before anything of it has run.

        :raises ValueError: a cell with that id is already running here."""
        if cell.id in self._cells:
            raise ValueError(f"{self.name}: {cell.id!r} is already started")
        cell._runtime = self
        self._cells[cell.id] = cell
        if self._loop is not None:
            self._begin(cell)
        return cell

    async def terminate(self, id: str) -> Cell | None:
        """End a cell for good: a message being handled is cancelled, queued asks fail with
        ActorStopped, ``on_stop`` runs; returns once nothing of it runs any more."""
        cell = self._cells.get(id)
        if cell is None:
            return None
        running = _running(cell)
        cell.close(f"terminated by {self.name}")
        task = cell._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])
        if running:
            await self._stop_hook(cell)
        return cell

    def which_children(self) -> list[str]:
        """Ids of the cells running or waiting to restart, oldest first."""
        return list(self._cells)

    def __len__(self) -> int:
        return len(self._cells)

    # -- scheduling --------------------------------------------------------------------------
    def _begin(self, cell: Cell) -> None:
        cell._starting = True
        cell.incarnation += 1
        cell._started_at = self._clock()
        self._schedule(cell)

    def _schedule(self, cell: Cell) -> None:
        if cell._scheduled or cell._suspended or cell._closed or self._loop is None:
            return
        cell._scheduled = True
        self.turns += 1
        cell._task = self._start_task(self._turn(cell))

    def _start_task(self, coro: Any) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._failure is None:   # a bug here, not a cell's crash
            log.error("%s: runtime task failed: %r", self.name, error, exc_info=error)
            self._failure = error
            if self._stopped is not None:
                self._stopped.set()

    async def _turn(self, cell: Cell) -> None:
        try:
            await self._run_turn(cell)
        finally:
            if cell._task is asyncio.current_task():
                cell._task = None

    async def _run_turn(self, cell: Cell) -> None:
        try:
            if cell._starting:
                await cell.on_start()
                cell._starting = False
            done = 0
            while cell._box and not cell._closed:
                env = cell._box.popleft()
                cell._made_room()
                if isinstance(env.message, _Stop):
                    if env.message.incarnation == cell.incarnation:
                        cell._scheduled = False
                        await self._stop_hook(cell)
                        cell.close("stopped")
                        return
                    continue
                await cell._deliver(env)
                done += 1
                if done >= self.budget:      # let the others (and the event loop) in
                    done = 0
                    self.yields += 1
                    await anyio.lowlevel.checkpoint()
            if cell._box is not None and not cell._box:
                cell._box = None
        except Exception as exc:
            cell._scheduled = False
            await self._crashed(cell, exc)
            return
        cell._scheduled = False
        if cell._box:                           # queued while this turn was ending
            self._schedule(cell)

    def _spawn_for(self, cell: Cell, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._loop is None:
            raise RuntimeError(f"{self.name} is not running")
        incarnation = cell.incarnation

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception as exc:
                if cell.incarnation == incarnation and not cell._closed and not cell._suspended:
                    await self._crashed(cell, exc)
                else:
                    log.warning("%s: background work of an ended incarnation failed: %r",
                                cell.name, exc)

        self._start_task(guarded())

    # -- supervision -------------------------------------------------------------------------
    async def _crashed(self, cell: Cell, error: Exception) -> None:
        cell._suspended = True
        cell._starting = False
        await self._stop_hook(cell)
        now = self._clock()
        if cell._window is None:
            cell._window = deque()
        if self._intensity is not None and not _admit(cell._window, now, self._intensity):
            await self._report(cell, "give_up", "crash", error, cell._in_a_row + 1, 0.0)
            cell.close(f"given up by {self.name}")
            if self._on_give_up is not None:
                try:
                    await self._on_give_up(cell.id, error)
                except Exception:
                    log.exception("%s: on_give_up(%s) failed", self.name, cell.id)
            return
        if now - cell._started_at >= self._backoff.quiet_period:
            cell._in_a_row = 0
        delay = self._backoff.delay(cell._in_a_row, self._random())
        cell._in_a_row += 1
        await self._report(cell, "restart", "crash", error, cell._in_a_row, delay)
        if self._loop is not None:
            self._start_task(self._restart(cell, delay))

    async def _restart(self, cell: Cell, delay: float) -> None:
        await anyio.sleep(delay)
        if cell._closed or self._cells.get(cell.id) is not cell:
            return
        cell._suspended = False
        self._begin(cell)

    async def _stop_hook(self, cell: Cell) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await cell.on_stop()
            except Exception:
                log.exception("%s: on_stop of %s failed", self.name, cell.name)

    async def _report(self, cell: Cell, action: str, reason: str, error: BaseException | None,
                      attempt: int, backoff_s: float) -> None:
        event = RestartEvent(self.name, cell.id, action, reason, _describe(error), attempt,
                             backoff_s, time.time(), cell.kind or cell.id)
        await report(event, error, self._on_event)

    def _forget(self, cell: Cell) -> None:
        if self._cells.get(cell.id) is cell:
            del self._cells[cell.id]


__all__ = ["Cell", "Runtime"]
