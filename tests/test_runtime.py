"""The task-less actor runtime (dtms/actors/runtime.py): a cell holds a task only while it has
messages, handles them one at a time in order, supervises each cell on its own window, and
never lets a slow or crashed cell hold up a sender of snapshots or another cell."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.actors.base import ActorStopped, MailboxFull
from dtms.actors.runtime import Cell, Runtime
from dtms.errors import Conflict, Internal
from dtms.supervisor import Backoff, Intensity, RestartEvent

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Snap:
    n: int


class Recorder(Cell):
    """Records what it handled; ``"crash"`` raises, ``("wait", event)`` blocks on it."""

    snapshots = (Snap,)

    def __init__(self, name: str = "r", mailbox_size: int = 4) -> None:
        super().__init__(name, mailbox_size, kind="test")
        self.seen: list[Any] = []
        self.starts = 0
        self.stops = 0

    async def on_start(self) -> None:
        self.starts += 1

    async def on_stop(self) -> None:
        self.stops += 1

    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise TypeError("poison")
        if message == "conflict":
            raise Conflict("no", field="x")
        if isinstance(message, tuple) and message[0] == "wait":
            await message[1].wait()
        self.seen.append(message)
        return message


def runtime(events: list[RestartEvent] | None = None, **kw: Any) -> Runtime:
    gave_up: list[str] = []

    async def on_give_up(id: str, exc: BaseException | None) -> None:
        gave_up.append(id)

    rt = Runtime("test", backoff=Backoff(0.001, 0.002, 0.0), on_give_up=on_give_up,
                 on_event=(events.append if events is not None else None), **kw)
    rt.gave_up = gave_up  # type: ignore[attr-defined]
    return rt


async def test_an_idle_cell_holds_no_task_and_runs_its_messages_in_order() -> None:
    rt = runtime()
    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        cell = rt.start(Recorder())
        assert (cell.starts, rt.turns) == (0, 1)   # started in its first turn, not before
        assert await cell.ask("a") == "a"
        assert cell.starts == 1
        for m in range(3):
            cell.tell_nowait(m)
        assert await cell.ask("b") == "b"
        assert cell.seen == ["a", 0, 1, 2, "b"]
        await anyio.sleep(0.01)
        turns = rt.turns
        assert cell.idle and not cell._scheduled and cell._box is None   # no task, no deque
        await anyio.sleep(0.05)
        assert rt.turns == turns                  # idle costs no turn
        await rt.stop()
    assert cell.stops == 1


async def test_a_full_mailbox_refuses_commands_but_takes_snapshots_latest_wins() -> None:
    rt = runtime()
    gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        cell = rt.start(Recorder(mailbox_size=2))
        cell.tell_nowait(("wait", gate))          # the turn takes it and blocks
        await anyio.sleep(0.01)
        cell.tell_nowait(1)
        cell.tell_nowait(2)
        with pytest.raises(MailboxFull):
            cell.tell_nowait(3)
        for n in range(10):                       # a sender of snapshots never waits
            cell.tell_nowait(Snap(n))
        assert cell.mailbox_depth == 3

        async def late_tell() -> None:
            await cell.tell(4)                    # waits for room, then is queued

        tg.start_soon(late_tell)
        await anyio.sleep(0.01)
        gate.set()
        await anyio.sleep(0.05)
        assert cell.seen[1:] == [1, 2, Snap(9), 4]
        await rt.stop()


async def test_a_crash_restarts_only_that_cell_and_its_queued_asks_are_answered() -> None:
    events: list[RestartEvent] = []
    rt = runtime(events)
    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        bad, good = rt.start(Recorder("bad")), rt.start(Recorder("good"))
        bad.tell_nowait("crash")
        assert await bad.ask("after") == "after"     # queued behind the crash, then answered
        assert await good.ask("x") == "x"
        assert (bad.incarnation, bad.starts, bad.stops) == (2, 2, 1)
        assert (good.incarnation, good.starts) == (1, 1)
        with pytest.raises(Internal):
            await bad.ask("crash")                  # the asker of the crashing message
        with pytest.raises(Conflict):
            await bad.ask("conflict")               # an answer, not a crash
        assert bad.incarnation == 3
        assert [(e.supervisor, e.child, e.action, e.reason, e.kind) for e in events] == [
            ("test", "bad", "restart", "crash", "test")] * 2
        assert events[0].exception.startswith("TypeError(")
        await rt.stop()


async def test_past_its_own_window_a_cell_is_given_up_and_the_others_never_escalate(
        caplog) -> None:
    events: list[RestartEvent] = []
    rt = runtime(events, intensity=Intensity(2, 60.0))
    caplog.set_level(logging.WARNING, logger="dtms.supervisor")
    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        cells = [rt.start(Recorder(f"c{i}")) for i in range(20)]
        for c in cells:                          # 20 distinct cells crash twice each: fine
            for _ in range(2):
                c.tell_nowait("crash")
        await anyio.sleep(0.2)
        assert all(c.incarnation == 3 and not c.closed for c in cells)
        cells[0].tell_nowait("crash")            # its third within 60 s: given up
        await anyio.sleep(0.05)
        assert cells[0].closed and rt.gave_up == ["c0"]   # type: ignore[attr-defined]
        assert rt.which_children() == [f"c{i}" for i in range(1, 20)]
        with pytest.raises(ActorStopped):
            cells[0].tell_nowait("x")
        assert await cells[1].ask("still") == "still"
        assert [e.action for e in events].count("restart") == 40
        assert [e.action for e in events].count("give_up") == 1
        lines = [r for r in caplog.records if getattr(r, "event", "") == "give_up"]
        assert [(r.child, r.kind, r.exception_type) for r in lines] == [("c0", "test",
                                                                         "TypeError")]
        await rt.stop()


async def test_a_cell_stuck_on_io_never_delays_another() -> None:
    rt = runtime()
    never = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        stuck, other = rt.start(Recorder("stuck")), rt.start(Recorder("other"))
        stuck.tell_nowait(("wait", never))
        with anyio.fail_after(1):
            for i in range(100):
                assert await other.ask(i) == i
        assert stuck.mailbox_depth == 0 and stuck.handling == 1
        await rt.terminate("stuck")               # cancels the message in hand
        assert stuck.closed and stuck.stops == 1 and rt.which_children() == ["other"]
        await rt.stop()


async def test_background_work_that_fails_crashes_its_cell() -> None:
    events: list[RestartEvent] = []
    rt = runtime(events)

    async def fail() -> None:
        raise ValueError("background")

    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        cell = rt.start(Recorder())
        await cell.ask("up")
        cell.spawn(fail)
        await anyio.sleep(0.05)
        assert cell.incarnation == 2 and events[0].exception.startswith("ValueError(")
        await rt.stop()


async def test_stop_handles_what_is_queued_then_ends_for_good() -> None:
    rt = runtime()
    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        cell = rt.start(Recorder())
        for m in range(3):
            cell.tell_nowait(m)
        await cell.stop()
        await anyio.sleep(0.05)
        assert cell.seen == [0, 1, 2] and cell.closed and cell.stops == 1
        assert rt.which_children() == []
        await rt.stop()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 50).map(Snap), st.integers(100, 150)), max_size=40),
       st.integers(1, 5))
def test_property_commands_arrive_once_in_order_and_the_newest_snapshot_is_never_lost(
        messages: list[Any], budget: int) -> None:
    async def main() -> None:
        rt = Runtime("prop", budget=budget)
        gate = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(rt.run)
            cell = rt.start(Recorder(mailbox_size=1000))
            cell.tell_nowait(("wait", gate))
            await anyio.sleep(0)
            for m in messages:
                cell.tell_nowait(m)
            gate.set()
            await cell.ask("end")
            seen = cell.seen[1:-1]
            commands = [m for m in messages if not isinstance(m, Snap)]
            assert [m for m in seen if not isinstance(m, Snap)] == commands
            snaps = [m for m in messages if isinstance(m, Snap)]
            if snaps:
                assert [m for m in seen if isinstance(m, Snap)] == [snaps[-1]]
            await rt.stop()
    anyio.run(main)
