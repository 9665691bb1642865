"""The virtual-time loop: timers fire in order at their own virtual time, without sleeping;
an executor job holds the clock; a skip moves it once every task waits."""

from __future__ import annotations

import asyncio
import threading

import anyio

from dtms.replay.loop import LoopClock, VirtualTimeLoop


def run(main):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


def test_sleeps_end_at_their_virtual_time_in_order():
    async def main(loop):
        seen = []

        async def sleeper(name, seconds):
            await asyncio.sleep(seconds)
            seen.append((name, loop.time()))
        await asyncio.gather(sleeper("day", 86_400.0), sleeper("bar", 300.0),
                             sleeper("tick", 75.0))
        return seen, loop.jumps
    seen, jumps = run(main)
    assert seen == [("tick", 75.0), ("bar", 300.0), ("day", 86_400.0)]
    assert jumps == 3


def test_anyio_timeouts_run_in_virtual_seconds():
    async def main(loop):
        with anyio.move_on_after(3600.0) as scope:
            await anyio.sleep(7200.0)
        return scope.cancelled_caught, loop.time()
    assert run(main) == (True, 3600.0)


def test_an_executor_job_holds_the_clock_until_it_is_done():
    release = threading.Event()

    async def main(loop):
        order = []

        async def timer():
            await asyncio.sleep(10.0)
            order.append(("timer", loop.time()))

        def job():
            release.wait(5)
            return "job"
        task = asyncio.ensure_future(timer())
        fut = loop.run_in_executor(None, job)
        await asyncio.sleep(0)
        assert loop.executor_jobs == 1
        loop.call_soon(release.set)
        order.append((await fut, loop.time()))   # the clock did not jump while it ran
        await task
        return order
    assert run(main) == [("job", 0.0), ("timer", 10.0)]


def test_skip_to_moves_the_clock_once_and_a_periodic_timer_fires_once():
    async def main(loop):
        ticks = []

        async def ticker():
            while True:
                await asyncio.sleep(75.0)
                ticks.append(loop.time())
        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(150.0)
        loop.skip_to(30_000.0)
        await asyncio.sleep(30_000.0 - loop.time())
        await asyncio.sleep(160.0)
        task.cancel()
        return ticks
    assert run(main) == [75.0, 150.0, 30_000.0, 30_075.0, 30_150.0]


def test_the_terminal_clock_follows_the_loop():
    async def main(loop):
        clock = LoopClock(loop, 1_717_372_800.0)
        await asyncio.sleep(300.0)
        return clock.now()
    assert run(main) == 1_717_373_100.0


def test_timers_still_fire_after_years_of_virtual_time():
    """At 3e7 s (a year) a float's spacing (3.7 ns) is coarser than the monotonic clock's
    resolution asyncio uses by default: a timer due now would never be run."""
    async def main(loop):
        await asyncio.sleep(10 * 365 * 86_400.0)
        for _ in range(3):
            await asyncio.sleep(75.0)
        return loop.time()
    result: list[float] = []
    worker = threading.Thread(target=lambda: result.append(run(main)), daemon=True)
    worker.start()
    worker.join(60)   # a guard against the spin, not a timing: it takes milliseconds
    assert result == [10 * 365 * 86_400.0 + 225.0]
