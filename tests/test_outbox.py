"""The durable outbox against a real DTMS: real TCP, real SQLite files, DTMS down then up."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from dtms.client import Client
from dtms.config import Settings
from dtms.errors import Conflict, InvalidArgument, NotFound
from dtms.outbox import Outbox
from tests.conftest import eventually, running

pytestmark = pytest.mark.anyio

MISSING_TICKET = 99_999_999  # no such position at the (simulated) broker


def free_port() -> int:
    """A loopback port nobody listens on (yet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite3"


@pytest.fixture
def on_port(settings: Settings, port: int) -> Settings:
    """The conftest settings, with DTMS on the port the client was pointed at while it was down."""
    return settings.replace(rpc={"port": port})


@asynccontextmanager
async def client(port: int) -> AsyncIterator[Client]:
    async with Client("127.0.0.1", port, retries=1, backoff_min=0.01, backoff_max=0.02,
                      timeout=2.0, breaker_reset_s=0.05) as c:
        yield c


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def test_queued_while_down_survives_restart_and_is_delivered_once(
        on_port, sim, port, outbox_path):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with client(port) as c:
        with Outbox(c, outbox_path) as outbox:
            result = await outbox.register({"ticket": ticket, "owner": "bot-a"})
            assert result.status == "queued" and result.reply is None
            assert result.id is not None and "ServiceUnavailable" in (result.error or "")
        # committed to the file, as a separate connection sees it
        assert rows(outbox_path, "SELECT id, ticket, payload, attempts FROM outbox") == [
            (result.id, ticket, f'{{"ticket":{ticket},"owner":"bot-a"}}', 1)]

    # the bot restarts: a new client and a new Outbox object on the same file
    async with client(port) as c:
        with Outbox(c, outbox_path) as outbox:
            [entry] = outbox.pending()
            assert (entry["id"], entry["ticket"], entry["trade"]) == (
                result.id, ticket, {"ticket": ticket, "owner": "bot-a"})
            # still down: the flush stops, keeps the entry, counts the attempt
            report = await outbox.flush()
            assert (report.delivered, report.dead, report.pending) == ([], [], 1)
            assert report.stopped_by and "ServiceUnavailable" in report.stopped_by
            assert outbox.pending()[0]["attempts"] == 2

            async with running(on_port, sim) as svc:
                assert svc.rpc.port == port
                report = await outbox.flush()
                assert [(d.id, d.ticket) for d in report.delivered] == [(result.id, ticket)]
                assert report.delivered[0].reply["created"] is True
                assert (report.dead, report.pending, report.stopped_by) == ([], 0, None)
                assert outbox.pending() == [] and outbox.dead() == []
                assert rows(outbox_path, "SELECT COUNT(*) FROM outbox") == [(0,)]

                again = await outbox.flush()
                assert (again.delivered, again.dead, again.pending) == ([], [], 0)

                listed = await c.trades()
                assert [t["ticket"] for t in listed["trades"]] == [ticket]
                assert listed["trades"][0]["owner"] == "bot-a"
                transitions = await c.call("transitions", {"ticket": ticket})
                assert [t["reason"] for t in transitions["transitions"]] == ["registered"]


async def test_queued_registrations_are_delivered_in_order(on_port, sim, port, outbox_path):
    tickets = [sim.open_position(sym, "SELL", 0.05) for sym in ("EURUSD", "USDJPY", "XAUUSD")]
    order = [tickets[2], tickets[0], tickets[1]]  # not the ticket order, not the open order
    async with client(port) as c:
        with Outbox(c, outbox_path) as outbox:
            ids = [(await outbox.register({"ticket": t})).id for t in order]
            assert ids == sorted(ids)
            assert [e["ticket"] for e in outbox.pending()] == order
            async with running(on_port, sim):
                report = await outbox.flush()
                assert [d.ticket for d in report.delivered] == order
                assert [d.id for d in report.delivered] == ids
                listed = (await c.trades())["trades"]
                by_creation = sorted(listed, key=lambda t: t["created_at"])
                assert [t["ticket"] for t in by_creation] == order
                assert outbox.pending() == []


async def test_refused_entry_goes_to_dead_and_the_next_is_still_delivered(
        on_port, sim, port, outbox_path):
    ticket = sim.open_position("GBPUSD", "BUY", 0.20)
    async with client(port) as c:
        with Outbox(c, outbox_path) as outbox:
            bad = await outbox.register({"ticket": MISSING_TICKET, "owner": "bot-a"})
            good = await outbox.register({"ticket": ticket})
            assert (bad.status, good.status) == ("queued", "queued")
            # the second register retried the head first, then queued behind it without a try
            assert [(e["id"], e["attempts"]) for e in outbox.pending()] == [(bad.id, 2),
                                                                             (good.id, 0)]
            assert "queued behind 1 pending" in (good.error or "")
            async with running(on_port, sim):
                report = await outbox.flush()
                assert [(d.id, d.ticket) for d in report.delivered] == [(good.id, ticket)]
                assert [(b.id, b.ticket, b.error["code"]) for b in report.dead] == [
                    (bad.id, MISSING_TICKET, "NOT_FOUND")]
                assert report.pending == 0
                [dead] = outbox.dead()
                assert (dead["id"], dead["ticket"], dead["trade"], dead["attempts"]) == (
                    bad.id, MISSING_TICKET, {"ticket": MISSING_TICKET, "owner": "bot-a"}, 3)
                assert dead["error"]["code"] == "NOT_FOUND"
                assert dead["error"]["status"] == 404 and dead["error"]["field"] == "ticket"
                assert outbox.pending() == []
                # dead entries are not retried
                assert (await outbox.flush()).dead == []
                assert [t["ticket"] for t in (await c.trades())["trades"]] == [ticket]
        # and they stay in the file
        assert [r[0] for r in rows(outbox_path, "SELECT ticket FROM dead")] == [MISSING_TICKET]


async def test_definitive_error_while_up_is_raised_and_nothing_queued(
        on_port, sim, port, outbox_path):
    ticket = sim.open_position("EURUSD", "BUY", 0.10)
    async with running(on_port, sim), client(port) as c:
        with Outbox(c, outbox_path) as outbox:
            with pytest.raises(NotFound):
                await outbox.register({"ticket": MISSING_TICKET})
            with pytest.raises(Conflict):
                await outbox.register({"ticket": ticket, "symbol": "GBPUSD"})
            with pytest.raises(InvalidArgument):
                await outbox.register({"ticket": -1, "colour": "red"})
            assert outbox.pending() == [] and outbox.dead() == []
            ok = await outbox.register({"ticket": ticket})
            assert (ok.status, ok.id, ok.reply["created"]) == ("delivered", None, True)
            assert ok.reply["trade"]["ticket"] == ticket
            assert outbox.pending() == []
    assert rows(outbox_path, "SELECT COUNT(*) FROM outbox") == [(0,)]


async def test_same_ticket_twice_is_kept_twice_and_delivered_idempotently(
        on_port, sim, port, outbox_path):
    ticket = sim.open_position("USDJPY", "SELL", 0.30)
    async with client(port) as c:
        with Outbox(c, outbox_path) as outbox:
            await outbox.register({"ticket": ticket, "comment": "first"})
            await outbox.register({"ticket": ticket, "comment": "second"})
            assert [e["trade"]["comment"] for e in outbox.pending()] == ["first", "second"]
            async with running(on_port, sim):
                report = await outbox.flush()
                assert [d.reply["created"] for d in report.delivered] == [True, False]
                assert (await c.trade(ticket))["comment"] == "first"
                transitions = await c.call("transitions", {"ticket": ticket})
                assert len(transitions["transitions"]) == 1
                assert outbox.pending() == []


async def test_new_registration_is_not_sent_ahead_of_pending_ones(
        on_port, sim, port, outbox_path):
    first, second = (sim.open_position("EURUSD", "BUY", 0.10),
                     sim.open_position("EURUSD", "BUY", 0.10))
    async with client(port) as c:
        with Outbox(c, outbox_path) as outbox:
            assert (await outbox.register({"ticket": second})).status == "queued"
            async with running(on_port, sim):
                result = await outbox.register({"ticket": first})
                assert result.status == "delivered"
                assert outbox.pending() == []
                listed = sorted((await c.trades())["trades"], key=lambda t: t["created_at"])
                assert [t["ticket"] for t in listed] == [second, first]


async def test_run_delivers_in_the_background_once_dtms_is_back(
        on_port, sim, port, outbox_path):
    ticket = sim.open_position("XAUUSD", "BUY", 0.01)
    with Outbox(Client("127.0.0.1", port), outbox_path) as outbox:
        async with client(port) as c, anyio.create_task_group() as tg:
            outbox.client = c
            await tg.start(outbox.run, 0.05)
            assert (await outbox.register({"ticket": ticket})).status == "queued"
            await anyio.sleep(0.2)  # a few flushes while still down: kept
            assert [e["ticket"] for e in outbox.pending()] == [ticket]
            assert outbox.pending()[0]["attempts"] > 1
            async with running(on_port, sim):
                await eventually(lambda: outbox.pending() == [], timeout=5)
                assert (await c.trade(ticket))["ticket"] == ticket
            tg.cancel_scope.cancel()
