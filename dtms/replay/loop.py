"""Virtual time for replay: an asyncio event loop whose clock jumps from event to event.

This module owns :class:`VirtualTimeLoop` and :class:`LoopClock`. The loop's ``time()`` is
virtual: it stands still while anything is ready to run, and when every task is waiting it
jumps straight to the next timer instead of sleeping (the idea of trio's
``MockClock(autojump_threshold=0)`` and of the ``looptime`` package). Every ``anyio.sleep``,
``fail_after`` and actor timeout of the engine therefore runs in virtual seconds, and a year
of market time costs only the work done in it.

A jump is sound only if nothing outside the loop is about to wake it: replay runs the terminal
and SQLite inline (no worker threads, see ``dtms.replay.engine``), and while an executor job
(``run_in_executor``, e.g. a name lookup) is running the loop waits for it in real time.
:meth:`VirtualTimeLoop.skip_to` lets the driver skip an idle stretch (no trade open): at the
next moment every task waits, the clock moves to that time at once and every timer due by
then fires once (a periodic task runs once, not once per missed period).

:class:`LoopClock` is the simulated terminal's clock in a replay: epoch seconds = a fixed
start + the loop's time, so the terminal's market follows the engine's clock exactly.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from typing import Any


class _JumpSelector(selectors.DefaultSelector):
    """Polls for real without waiting; when the loop would wait for a timer, jumps instead."""

    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        loop = self.loop
        if timeout is None or loop.executor_jobs:
            return super().select(timeout)   # only the outside world can wake us
        loop.jump()
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring). ``time()`` starts at 0."""

    def __init__(self) -> None:
        selector = _JumpSelector()
        super().__init__(selector)
        selector.loop = self
        # asyncio runs a timer once ``when < time() + resolution``; the monotonic clock's 1 ns
        # is below a float's spacing after a year of seconds (3.7 ns), where a timer due now
        # would never run: virtual time resolves microseconds
        self._clock_resolution = 1e-6
        self._now = 0.0
        self._skip: float | None = None
        self.executor_jobs = 0
        self.jumps = 0

    def time(self) -> float:
        return self._now

    def skip_to(self, when: float) -> None:
        """At the next moment every task waits, move the clock to ``when`` (not backwards)."""
        self._skip = when if self._skip is None else max(self._skip, when)

    def jump(self) -> None:
        """Every task waits: move to the next timer (or the requested skip, if later)."""
        scheduled: list[Any] = self._scheduled   # type: ignore[attr-defined]
        target = scheduled[0].when() if scheduled else self._now
        if self._skip is not None:
            target = max(target, self._skip)
            self._skip = None
        self._now = max(self._now, target)
        self.jumps += 1

    def run_in_executor(self, executor: Any, func: Callable[..., Any],  # type: ignore[override]
                        *args: Any) -> Any:   # asyncio's generic signature, not needed here
        """As asyncio's, counting the job: the clock does not jump while one runs."""
        future = super().run_in_executor(executor, func, *args)
        self.executor_jobs += 1

        def done(_: Any) -> None:
            self.executor_jobs -= 1
        future.add_done_callback(done)
        return future


class LoopClock:
    """The simulated terminal's clock in a replay: ``start`` + the loop's (virtual) time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, start: float) -> None:
        self.loop = loop
        self.start = float(start)

    def now(self) -> float:
        return self.start + self.loop.time()

    def advance(self, seconds: float) -> None:
        raise RuntimeError("a replay's clock is the event loop's: it cannot be advanced by hand")
