"""The actor base's batches: messages of ``batch_types`` queued back to back reach
``handle_batch`` together, in order; any other message ends a batch and keeps its place."""

from __future__ import annotations

import anyio
import pytest

from dtms.actors.base import Actor, Envelope

pytestmark = pytest.mark.anyio


class Recorder(Actor):
    batch_types = (int,)
    max_batch = 3

    def __init__(self) -> None:
        super().__init__("recorder", 100)
        self.seen: list[object] = []
        self.gate = anyio.Event()

    async def handle(self, message: object) -> object:
        if message == "wait":
            await self.gate.wait()
        self.seen.append(message)
        return message

    async def handle_batch(self, batch: list[Envelope]) -> None:
        numbers = [env.message for env in batch]
        self.seen.append(tuple(numbers))
        for env in batch:
            if env.reply is not None:
                env.reply.set(sum(numbers))


async def test_queued_batchable_messages_are_handled_together_in_order_up_to_max_batch():
    actor = Recorder()
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        await actor.tell("wait")            # holds the actor while the rest queue up
        for m in (1, 2, 3, 4, "a", 5, 6):
            await actor.tell(m)
        actor.gate.set()
        assert await actor.ask(7) == 18      # joined 5 and 6, queued before it: 5 + 6 + 7
        assert await actor.ask(8) == 8       # nothing queued with it: a batch of one
        await actor.stop()
    assert actor.seen == ["wait", (1, 2, 3), (4,), "a", (5, 6, 7), (8,)]
