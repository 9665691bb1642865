"""An actor's stop: finish what is queued, except while it is still starting."""

from __future__ import annotations

import anyio
import pytest

from dtms.actors.base import Actor

pytestmark = pytest.mark.anyio


class Starting(Actor):
    """on_start waits for something that never comes: a store that crashed under it."""

    def __init__(self) -> None:
        super().__init__("starting", 10)
        self.stopped = False
        self.handled: list[object] = []

    async def on_start(self) -> None:
        await anyio.Event().wait()

    async def on_stop(self) -> None:
        self.stopped = True

    async def handle(self, message: object) -> object:
        self.handled.append(message)
        return message


async def test_a_stop_while_starting_cancels_the_start_instead_of_waiting_for_it() -> None:
    """Before, stop() queued a stop message behind a start that never returned: a core restart
    while the registry recovered from a crashed store waited the whole shutdown timeout (5 s) per
    restart, and a crash storm never escalated within 20 s."""
    actor = Starting()
    async with anyio.create_task_group() as tg:
        tg.start_soon(actor.run)
        await anyio.sleep(0.05)
        await actor.tell("queued")
        with anyio.fail_after(5):   # hangs forever on the old code
            await actor.stop()
            while not actor.stopped:
                await anyio.sleep(0.01)
    assert actor.stopped is True
    assert actor.handled == []   # nothing was processed: the start never finished


class Started(Starting):
    async def on_start(self) -> None:
        pass


async def test_a_started_actor_still_finishes_what_is_queued_before_stopping() -> None:
    actor = Started()
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        await actor.tell("a")
        await actor.tell("b")
        await actor.stop()
    assert actor.handled == ["a", "b"] and actor.stopped is True
