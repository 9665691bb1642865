"""Supervision semantics: order, strategies, restart types, intensity, backoff, dynamic children."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.actors.base import Actor
from dtms.supervisor import (
    AlreadyStarted,
    Backoff,
    ChildSpec,
    DynamicSupervisor,
    Intensity,
    Restart,
    RestartEvent,
    Strategy,
    Supervisor,
    SupervisorEscalation,
)

pytestmark = pytest.mark.anyio

FAST = Backoff(min=0.0, max=0.0, jitter=0.0, reset_after=60.0)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Boom(Exception):
    pass


class Probe:
    """A child driven by the test; each lifecycle step is appended to a shared journal."""

    def __init__(self, id: str, journal: list[str], *, start_delay: float = 0.0,
                 fail_starts: int = 0) -> None:
        self.id, self.journal = id, journal
        self.start_delay, self.fail_starts = start_delay, fail_starts
        self.starts = 0
        self._command: anyio.Event | None = None
        self._what = ""

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        self.journal.append(f"start:{self.id}")
        await anyio.sleep(self.start_delay)
        if self.fail_starts:
            self.fail_starts -= 1
            raise Boom(f"{self.id} cannot start")
        self._command = command = anyio.Event()
        self.journal.append(f"ready:{self.id}")
        task_status.started()
        try:
            await command.wait()
        except anyio.get_cancelled_exc_class():
            self.journal.append(f"cancel:{self.id}")
            raise
        finally:
            self._command = None
        self.journal.append(f"{self._what}:{self.id}")
        if self._what == "crash":
            raise Boom(self.id)

    def _send(self, what: str) -> None:
        assert self._command is not None, f"{self.id} is not running"
        self._what = what
        self._command.set()

    def crash(self) -> None:
        self._send("crash")

    def exit(self) -> None:
        self._send("exit")

    async def stop(self) -> None:
        if self._command is not None:
            self._send("stop")

    @property
    def running(self) -> bool:
        return self._command is not None

    def spec(self, **kwargs: Any) -> ChildSpec:
        return ChildSpec(self.id, self.run, stop=self.stop, **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0)


def probes(journal: list[str], ids: str = "abc", **kwargs: Any) -> list[Probe]:
    return [Probe(i, journal, **kwargs) for i in ids]


@asynccontextmanager
async def supervising(sup: Supervisor | DynamicSupervisor) -> AsyncIterator[dict[str, Any]]:
    """Run ``sup``; the yielded dict gets "escalation" if run() raised SupervisorEscalation."""
    outcome: dict[str, Any] = {}

    async def runner(*, task_status: Any) -> None:
        try:
            await sup.run(task_status=task_status)
        except SupervisorEscalation as exc:
            outcome["escalation"] = exc

    async with anyio.create_task_group() as tg:
        await tg.start(runner)
        yield outcome
        await sup.stop()


def all_running(sup: Supervisor) -> bool:
    return all(state == "running" for _, state in sup.which_children())


# -- order ---------------------------------------------------------------------------------
async def test_children_start_in_order_each_ready_before_next_and_stop_in_reverse() -> None:
    journal: list[str] = []
    sup = Supervisor("s", [p.spec() for p in probes(journal, start_delay=0.01)])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        journal.append("supervisor-ready")
        assert sup.which_children() == [("a", "running"), ("b", "running"), ("c", "running")]
        await sup.stop()
    assert journal == ["start:a", "ready:a", "start:b", "ready:b", "start:c", "ready:c",
                       "supervisor-ready", "stop:c", "stop:b", "stop:a"]
    assert sup.which_children() == [("a", "stopped"), ("b", "stopped"), ("c", "stopped")]


async def test_child_ignoring_stop_is_cancelled_after_its_shutdown_timeout() -> None:
    journal: list[str] = []
    stubborn = Probe("stubborn", journal)

    async def ignore_stop() -> None:
        journal.append("asked:stubborn")

    sup = Supervisor("s", [ChildSpec("stubborn", stubborn.run, stop=ignore_stop,
                                     shutdown_timeout=0.1)])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        began = time.monotonic()
        await sup.stop()
        waited = time.monotonic() - began
    assert journal[-2:] == ["asked:stubborn", "cancel:stubborn"]
    assert 0.1 <= waited < 1.0


async def test_cancelling_run_stops_children_in_reverse_and_propagates() -> None:
    journal: list[str] = []
    sup = Supervisor("s", [p.spec() for p in probes(journal)])
    seen: list[str] = []

    async def runner(*, task_status: Any) -> None:
        try:
            await sup.run(task_status=task_status)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        await tg.start(runner)
        tg.cancel_scope.cancel()
    assert seen == ["cancelled"]
    assert journal[-3:] == ["stop:c", "stop:b", "stop:a"]


async def test_child_failing_to_start_fails_run_after_stopping_the_started_ones() -> None:
    journal: list[str] = []
    a, b, c = Probe("a", journal), Probe("b", journal, fail_starts=1), Probe("c", journal)
    sup = Supervisor("s", [a.spec(), b.spec(), c.spec()])
    with pytest.raises(Boom, match="b cannot start"):
        await sup.run()
    assert journal == ["start:a", "ready:a", "start:b", "stop:a"]
    assert c.starts == 0


# -- strategies and restart types --------------------------------------------------------------
@pytest.mark.parametrize(("strategy", "restarted", "stopped"), [
    (Strategy.ONE_FOR_ONE, "b", []),
    (Strategy.ONE_FOR_ALL, "abcd", ["stop:d", "stop:c", "stop:a"]),
    (Strategy.REST_FOR_ONE, "bcd", ["stop:d", "stop:c"]),
])
async def test_strategy_restarts_exactly_its_children_in_order(
        strategy: Strategy, restarted: str, stopped: list[str]) -> None:
    journal: list[str] = []
    children = probes(journal, "abcd")
    events: list[RestartEvent] = []

    async def record(event: RestartEvent) -> None:  # an async on_event is awaited
        events.append(event)

    sup = Supervisor("s", [p.spec() for p in children], strategy=strategy, backoff=FAST,
                     on_event=record)
    async with supervising(sup):
        del journal[:]
        children[1].crash()
        await until(lambda: all(p.starts == (2 if p.id in restarted else 1) for p in children)
                    and all_running(sup))
    restarts = [f"start:{i}" for i in restarted]
    assert journal[:1 + len(stopped)] == ["crash:b", *stopped]
    assert [e for e in journal if e.startswith("start:")] == restarts
    assert [(e.child, e.action, e.reason) for e in events] == [("b", "restart", "crash")] + [
        (i, "restart", "sibling") for i in restarted if i != "b"]
    assert events[0].exception == "Boom('b')"


async def test_permanent_normal_exit_is_restarted() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a")
    events: list[RestartEvent] = []
    sup = Supervisor("s", [a.spec()], backoff=FAST, on_event=events.append)
    async with supervising(sup):
        a.exit()
        await until(lambda: a.starts == 2 and a.running)
    assert [(e.action, e.reason, e.exception) for e in events] == [("restart", "normal", "")]


async def test_transient_restarted_after_crash_but_not_after_normal_exit() -> None:
    journal: list[str] = []
    (t,) = probes(journal, "t")
    events: list[RestartEvent] = []
    sup = Supervisor("s", [t.spec(restart=Restart.TRANSIENT)], backoff=FAST,
                     on_event=events.append)
    async with supervising(sup):
        t.crash()
        await until(lambda: t.starts == 2 and t.running)
        t.exit()
        await until(lambda: sup.which_children() == [("t", "stopped")])
        await anyio.sleep(0.02)
        assert t.starts == 2
    assert [(e.action, e.reason) for e in events] == [("restart", "crash")]


async def test_temporary_is_never_restarted_even_when_one_for_all_takes_it_down() -> None:
    journal: list[str] = []
    a, t, c = probes(journal, "atc")
    events: list[RestartEvent] = []
    sup = Supervisor("s", [a.spec(), t.spec(restart=Restart.TEMPORARY), c.spec()],
                     strategy=Strategy.ONE_FOR_ALL, backoff=FAST, on_event=events.append)
    async with supervising(sup):
        a.crash()
        await until(lambda: a.starts == 2 and c.starts == 2 and a.running and c.running)
        await anyio.sleep(0.02)
        assert t.starts == 1
        assert "stop:t" in journal
        assert sup.which_children() == [("a", "running"), ("t", "stopped"), ("c", "running")]
    assert [(e.child, e.action, e.reason) for e in events] == [
        ("a", "restart", "crash"), ("c", "restart", "sibling"), ("t", "shutdown", "sibling")]


async def test_temporary_crash_gives_up_without_touching_siblings() -> None:
    journal: list[str] = []
    a, t = probes(journal, "at")
    events: list[RestartEvent] = []
    sup = Supervisor("s", [a.spec(), t.spec(restart=Restart.TEMPORARY)],
                     strategy=Strategy.ONE_FOR_ALL, backoff=FAST, on_event=events.append)
    async with supervising(sup):
        t.crash()
        await until(lambda: len(events) == 1)
        await anyio.sleep(0.02)
        assert (a.starts, t.starts) == (1, 1)
    assert [(e.child, e.action, e.reason) for e in events] == [("t", "give_up", "crash")]


async def test_restart_that_fails_to_start_counts_as_another_crash() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a")
    events: list[RestartEvent] = []
    sup = Supervisor("s", [a.spec()], backoff=FAST, on_event=events.append)
    async with supervising(sup):
        a.fail_starts = 1
        a.crash()
        await until(lambda: a.starts == 3 and a.running)
    assert [(e.reason, e.attempt, e.exception) for e in events] == [
        ("crash", 1, "Boom('a')"), ("crash", 2, "Boom('a cannot start')")]


# -- intensity -----------------------------------------------------------------------------
async def test_intensity_allows_max_restarts_across_children_then_escalates() -> None:
    journal: list[str] = []
    a, b, c = children = probes(journal)
    events: list[RestartEvent] = []
    clock = FakeClock()
    sup = Supervisor("s", [p.spec() for p in children], intensity=Intensity(3, 10.0),
                     backoff=FAST, clock=clock, on_event=events.append)
    async with supervising(sup) as outcome:
        for n, victim in enumerate([a, c, a], start=1):  # three restarts, two children
            clock.now += 3.0
            victim.crash()
            await until(lambda n=n: len(events) == n and all_running(sup))
        clock.now += 0.5
        del journal[:]
        b.crash()
        await until(lambda: "escalation" in outcome)
    assert journal == ["crash:b", "stop:c", "stop:a"]
    assert [(e.child, e.action, e.reason) for e in events[3:]] == [("b", "escalate", "intensity")]
    escalation = outcome["escalation"]
    assert escalation.supervisor == "s" and escalation.child == "b"
    assert isinstance(escalation.__cause__, Boom)
    assert not any(p.running for p in children)


async def test_window_is_inclusive_of_its_period_like_otp() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a")
    clock = FakeClock()
    sup = Supervisor("s", [a.spec()], intensity=Intensity(1, 5.0), backoff=FAST, clock=clock)
    async with supervising(sup) as outcome:
        a.crash()
        await until(lambda: a.starts == 2 and a.running)
        clock.now += 5.0  # the first restart is exactly one period old: still counted
        a.crash()
        await until(lambda: "escalation" in outcome)


async def test_restarts_spaced_beyond_the_period_never_escalate() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a")
    clock = FakeClock()
    sup = Supervisor("s", [a.spec()], intensity=Intensity(1, 5.0), backoff=FAST, clock=clock)
    async with supervising(sup) as outcome:
        for n in range(2, 12):
            clock.now += 5.001
            a.crash()
            await until(lambda n=n: a.starts == n and a.running)
        assert outcome == {}


# -- backoff -------------------------------------------------------------------------------
@pytest.mark.parametrize(("u", "factor"), [(0.0, 1.0), (0.5, 1.1)])
def test_backoff_doubles_from_min_up_to_max_times_jitter(u: float, factor: float) -> None:
    backoff = Backoff(min=0.1, max=1.0, jitter=0.2)
    delays = [backoff.delay(n, u) for n in range(7)]
    assert delays == pytest.approx([d * factor for d in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0)])
    assert backoff.delay(5000, u) == pytest.approx(factor)
    assert backoff.quiet_period == pytest.approx(0.55)


async def test_restart_backoff_grows_per_child_and_resets_after_quiet_period() -> None:
    journal: list[str] = []
    a, b = probes(journal, "ab")
    events: list[RestartEvent] = []
    clock = FakeClock()
    sup = Supervisor("s", [a.spec(), b.spec()], intensity=Intensity(100, 1.0), clock=clock,
                     backoff=Backoff(min=0.001, max=0.004, jitter=0.5, reset_after=10.0),
                     random=lambda: 0.5, on_event=events.append)

    async def crash(p: Probe) -> RestartEvent:
        n, starts = len(events), p.starts
        p.crash()
        await until(lambda: p.starts == starts + 1 and p.running)
        assert len(events) == n + 1
        return events[-1]

    async with supervising(sup):
        streak = [await crash(a) for _ in range(4)]
        other = await crash(b)  # b has its own streak
        clock.now += 9.0
        still = await crash(a)  # ran 9 s < reset_after: the streak goes on
        clock.now += 10.0
        reset = await crash(a)
    assert [e.attempt for e in streak] == [1, 2, 3, 4]
    assert [e.backoff_s for e in streak] == pytest.approx([0.00125, 0.0025, 0.005, 0.005])
    assert (other.attempt, other.backoff_s) == (1, pytest.approx(0.00125))
    assert (still.attempt, still.backoff_s) == (5, pytest.approx(0.005))
    assert (reset.attempt, reset.backoff_s) == (1, pytest.approx(0.00125))


async def test_one_childs_backoff_does_not_delay_another_childs_restart() -> None:
    journal: list[str] = []
    a, b = probes(journal, "ab")
    draws = iter([0.99, 0.0])  # a waits 0.003 * (1 + 0.99 * 100) = 0.3 s, b 0.003 s
    sup = Supervisor("s", [a.spec(), b.spec()], random=lambda: next(draws),
                     backoff=Backoff(min=0.003, max=0.003, jitter=100.0))
    async with supervising(sup):
        began = time.monotonic()
        a.crash()
        await until(lambda: sup.which_children()[0] == ("a", "restarting"))
        b.crash()
        await until(lambda: b.starts == 2 and b.running)
        assert sup.which_children() == [("a", "restarting"), ("b", "running")]
        await until(lambda: a.starts == 2 and a.running)
        assert time.monotonic() - began >= 0.29


# -- history -------------------------------------------------------------------------------
async def test_each_decision_is_one_structured_log_line_and_a_failing_on_event_is_survived(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dtms.supervisor")
    journal: list[str] = []
    (a,) = probes(journal, "a")

    def broken(event: RestartEvent) -> None:
        raise RuntimeError("history store down")

    sup = Supervisor("s", [a.spec()], backoff=FAST, on_event=broken)
    async with supervising(sup):
        for n in (2, 3):
            a.crash()
            await until(lambda n=n: a.starts == n and a.running)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "restart"]
    assert [(r.supervisor, r.child, r.kind, r.reason, r.exception_type, r.exception,  # type: ignore[attr-defined]
             r.attempt, r.backoff_s) for r in lines] == [  # type: ignore[attr-defined]
        ("s", "a", "a", "crash", "Boom", "Boom('a')", 1, 0.0),
        ("s", "a", "a", "crash", "Boom", "Boom('a')", 2, 0.0)]
    failures = [r for r in caplog.records if "on_event failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)


# -- nesting and actors --------------------------------------------------------------------
async def test_nested_supervisor_escalation_is_a_crash_its_parent_handles() -> None:
    journal: list[str] = []
    ok, bad = probes(journal, "ox")
    events: list[RestartEvent] = []
    inner = Supervisor("inner", [bad.spec()], intensity=Intensity(1, 60.0), backoff=FAST,
                       clock=FakeClock())
    root = Supervisor("root", [ok.spec(), ChildSpec("inner", inner.run, stop=inner.stop)],
                      intensity=Intensity(1, 60.0), backoff=FAST, clock=FakeClock(),
                      on_event=events.append)
    async with supervising(root) as outcome:
        for round_ in (1, 2):
            for _ in range(2):  # the second crash exceeds inner's intensity
                starts = bad.starts
                bad.crash()
                await until(lambda s=starts: bad.starts == s + 1 and bad.running
                            or "escalation" in outcome)
            if round_ == 1:
                assert inner.which_children() == [("x", "running")]  # a fresh inner run
        await until(lambda: "escalation" in outcome)
    assert [(e.child, e.action, e.reason) for e in events] == [
        ("inner", "restart", "crash"), ("inner", "escalate", "intensity")]
    assert events[0].exception.startswith("SupervisorEscalation(")
    escalation = outcome["escalation"]
    assert escalation.supervisor == "root"
    assert isinstance(escalation.__cause__, SupervisorEscalation)
    assert escalation.__cause__.supervisor == "inner"
    assert journal[-1] == "stop:o" and not ok.running


class Flaky(Actor):
    def __init__(self) -> None:
        super().__init__("flaky")
        self.seen: list[tuple[int, str]] = []

    async def handle(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        self.seen.append((self.incarnation, message))
        return message


async def test_actor_child_is_restarted_with_its_mailbox() -> None:
    actor = Flaky()
    events: list[RestartEvent] = []
    sup = Supervisor("s", [ChildSpec("flaky", actor.run, stop=actor.stop)],
                     backoff=Backoff(min=0.05, max=0.05, jitter=0.0), on_event=events.append)
    async with supervising(sup):
        await actor.tell("before")
        await actor.tell("boom")
        await until(lambda: sup.which_children() == [("flaky", "restarting")])
        await actor.tell("while-down")
        assert await actor.ask("after") == "after"
    assert actor.seen == [(1, "before"), (2, "while-down"), (2, "after")]
    assert [(e.action, e.exception) for e in events] == [("restart", "ValueError('boom')")]


# -- dynamic ---------------------------------------------------------------------------------
async def test_dynamic_start_child_and_terminate_child() -> None:
    journal: list[str] = []
    a, b = probes(journal, "ab")
    events: list[RestartEvent] = []
    dyn = DynamicSupervisor("trades", backoff=FAST, on_event=events.append)
    async with supervising(dyn):
        await dyn.start_child(a.spec())
        assert a.running  # start_child returns once the child reported started
        await dyn.start_child(b.spec())
        assert dyn.which_children() == ["a", "b"] and len(dyn) == 2
        await dyn.terminate_child("a")
        await dyn.terminate_child("unknown")
        assert journal[-1] == "stop:a" and dyn.which_children() == ["b"]
        await anyio.sleep(0.02)
        assert a.starts == 1 and not a.running
    assert journal[-1] == "stop:b" and events == []


async def test_dynamic_start_child_of_a_live_id_raises_already_started() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a")
    dyn = DynamicSupervisor("trades", backoff=Backoff(min=0.2, max=0.2, jitter=0.0))
    async with supervising(dyn):
        await dyn.start_child(a.spec())
        with pytest.raises(AlreadyStarted):
            await dyn.start_child(a.spec())
        a.crash()
        await until(lambda: not a.running)
        with pytest.raises(AlreadyStarted):  # restarting is live too
            await dyn.start_child(a.spec())
        await dyn.terminate_child("a")  # cancels the pending restart
        await anyio.sleep(0.3)
        assert a.starts == 1
        await dyn.start_child(a.spec())
        assert a.starts == 2


async def test_dynamic_child_failing_to_start_raises_to_caller_and_leaves_nothing() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a", fail_starts=1)
    dyn = DynamicSupervisor("trades", backoff=FAST)
    async with supervising(dyn):
        with pytest.raises(Boom, match="a cannot start"):
            await dyn.start_child(a.spec())
        assert len(dyn) == 0
        await dyn.start_child(a.spec())
        assert dyn.which_children() == ["a"]


async def test_dynamic_transient_normal_exit_is_removed_silently() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a")
    events: list[RestartEvent] = []
    dyn = DynamicSupervisor("trades", backoff=FAST, on_event=events.append)
    async with supervising(dyn):
        await dyn.start_child(a.spec(restart=Restart.TRANSIENT))
        a.exit()
        await until(lambda: len(dyn) == 0)
    assert events == [] and a.starts == 1


async def test_dynamic_gives_up_a_crash_looping_child_and_the_others_keep_running() -> None:
    journal: list[str] = []
    poison, other = probes(journal, "po")
    events: list[RestartEvent] = []
    given_up: list[tuple[str, BaseException | None]] = []

    async def on_give_up(id: str, exc: BaseException | None) -> None:
        given_up.append((id, exc))

    # the defaults the service uses: one child's 5 restarts must not escalate at 3
    dyn = DynamicSupervisor("trades", intensity=Intensity(3, 5.0),
                            child_intensity=Intensity(5, 60.0), backoff=FAST, clock=FakeClock(),
                            on_event=events.append, on_give_up=on_give_up)
    async with supervising(dyn) as outcome:
        await dyn.start_child(other.spec())
        await dyn.start_child(poison.spec())
        for n in range(2, 7):
            poison.crash()
            await until(lambda n=n: poison.starts == n and poison.running)
        poison.crash()
        await until(lambda: given_up != [])
        await anyio.sleep(0.02)
        assert outcome == {}
        assert dyn.which_children() == ["o"] and other.running and other.starts == 1
        assert poison.starts == 6 and not poison.running
    assert [(e.action, e.reason) for e in events] == [("restart", "crash")] * 5 + [
        ("give_up", "intensity")]
    assert len(given_up) == 1 and given_up[0][0] == "p" and isinstance(given_up[0][1], Boom)


async def test_dynamic_escalates_when_too_many_children_restart_within_its_period() -> None:
    journal: list[str] = []
    children = probes(journal, "abcd")
    dyn = DynamicSupervisor("trades", intensity=Intensity(3, 5.0), backoff=FAST,
                            clock=FakeClock())
    async with supervising(dyn) as outcome:
        for p in children:
            await dyn.start_child(p.spec())
        for p in children[:3]:
            p.crash()
            await until(lambda p=p: p.starts == 2 and p.running)
        del journal[:]
        children[3].crash()
        await until(lambda: "escalation" in outcome)
    assert journal == ["crash:d", "stop:c", "stop:b", "stop:a"]
    assert outcome["escalation"].supervisor == "trades"


async def test_dynamic_supervisor_nested_under_a_supervisor_restarts_with_its_children() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a")
    dyn = DynamicSupervisor("trades", intensity=Intensity(0, 5.0), backoff=FAST)
    root = Supervisor("root", [ChildSpec("trades", dyn.run, stop=dyn.stop)], backoff=FAST)
    async with supervising(root):
        await dyn.start_child(a.spec())
        a.crash()  # exceeds trades' intensity of 0: root restarts trades, which restarts a
        await until(lambda: a.starts == 2 and a.running and all_running(root))
        assert dyn.which_children() == ["a"]
    assert journal[-1] == "stop:a"


# -- property ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(strategy=st.sampled_from(Strategy), max_restarts=st.integers(0, 3),
       period=st.sampled_from([1.0, 5.0]),
       storm=st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0.0, 0.4, 1.0, 2.5, 5.0, 6.0])),
                      min_size=1, max_size=12))
async def test_crash_storm_escalates_exactly_when_the_window_first_overflows(
        strategy: Strategy, max_restarts: int, period: float,
        storm: list[tuple[int, float]]) -> None:
    expected, window, now = None, [], 1000.0
    for step, (_, dt) in enumerate(storm):
        now += dt
        window = [t for t in window if t >= now - period] + [now]
        if len(window) > max_restarts:
            expected = step
            break

    journal: list[str] = []
    children = probes(journal)
    temporary = Probe("t", journal)  # never crashed itself; siblings' deaths may take it down
    events: list[RestartEvent] = []
    clock = FakeClock()
    sup = Supervisor("storm", [p.spec() for p in children] + [temporary.spec(
                     restart=Restart.TEMPORARY)], strategy=strategy, clock=clock,
                     intensity=Intensity(max_restarts, period), backoff=FAST,
                     on_event=events.append)

    def settled() -> bool:
        return all(state == "running" for id, state in sup.which_children() if id != "t")

    escalated_at = None
    async with supervising(sup) as outcome:
        for step, (victim, dt) in enumerate(storm):
            clock.now += dt
            await until(settled)
            crashes = sum(e.reason == "crash" for e in events)
            survivors = [p.id for p in [*children, temporary]
                         if p.running and p is not children[victim]]
            mark = len(journal)
            children[victim].crash()
            await until(lambda c=crashes: "escalation" in outcome
                        or sum(e.reason == "crash" for e in events) == c + 1)
            if "escalation" in outcome:
                escalated_at = step
                break
        if escalated_at is None:
            await until(settled)
            survivors = [p.id for p in [*children, temporary] if p.running]
            mark = len(journal)
    # invariants: escalation exactly when the window first overflows; a temporary child is
    # never restarted; the final teardown stops children in reverse start order
    assert escalated_at == expected
    assert temporary.starts == 1
    teardown = [e.split(":")[1] for e in journal[mark:] if e.split(":")[0] in ("stop", "cancel")]
    assert teardown == list(reversed(survivors))
    if expected is not None:
        assert not any(p.running for p in children)
        assert events[-1].action == "escalate"


# -- races -----------------------------------------------------------------------------------
async def test_crash_during_a_group_restart_supersedes_it() -> None:
    journal: list[str] = []
    a, b = Probe("a", journal), Probe("b", journal, start_delay=0.05)
    events: list[RestartEvent] = []
    sup = Supervisor("s", [a.spec(), b.spec()], strategy=Strategy.ONE_FOR_ALL, backoff=FAST,
                     on_event=events.append)
    async with supervising(sup):
        a.crash()
        await until(lambda: a.starts == 2 and a.running and b.starts == 2)
        assert not b.running  # the restart is still starting b
        del journal[:]
        a.crash()
        await until(lambda: a.starts == 3 and all_running(sup))
        assert b.starts == 3
    assert journal[:5] == ["crash:a", "start:a", "ready:a", "start:b", "ready:b"]
    assert [(e.child, e.reason) for e in events] == [("a", "crash"), ("b", "sibling")] * 2


async def test_stop_during_backoff_cancels_the_pending_restart() -> None:
    journal: list[str] = []
    (a,) = probes(journal, "a")
    sup = Supervisor("s", [a.spec()], backoff=Backoff(min=5.0, max=5.0, jitter=0.0))
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        a.crash()
        await until(lambda: sup.which_children() == [("a", "restarting")])
        with anyio.fail_after(1):
            await sup.stop()
    assert a.starts == 1 and sup.which_children() == [("a", "stopped")]


async def test_flag_wakes_its_waiters_once_set_and_holds_no_event_unless_waited() -> None:
    from dtms.supervisor import Flag

    flag = Flag()
    assert not flag.is_set() and flag._event is None   # nothing allocated until a wait
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await flag.wait()
        woken.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(waiter, i)
        await anyio.sleep(0.01)
        assert woken == [] and flag._event is not None
        flag.set()
    assert sorted(woken) == [0, 1, 2] and flag.is_set() and flag._event is None
    with anyio.fail_after(1):
        await flag.wait()   # already set: returns at once
