"""The DTMS client against a real RpcServer over TCP: retries, breaker, verify, sync facade."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal

from dtms.client import (
    CallTimeout,
    CircuitOpen,
    Client,
    ServiceUnavailable,
    SubscriptionLost,
    SyncClient,
    VerificationFailed,
)
from dtms.config import RpcSettings, Settings
from dtms.errors import InvalidArgument, NotFound, NotReady, Overloaded, Unauthenticated
from dtms.rpc.protocol import MAX_MSGID
from dtms.rpc.server import Connection, RpcServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class App:
    """A scriptable DTMS stand-in: ``fail[method]`` lists errors to raise on the next calls."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.fail: dict[str, list[Exception]] = {}
        self.ready_after = 0
        self.trade_ticket_offset = 0
        self.trade_changes: dict[str, Any] = {}   # how `trade` differs from what was registered
        self.views: dict[int, dict[str, Any]] = {}
        self.drop_register = False
        self.subscribers: list[Connection] = []

    async def __call__(self, method: str, args: dict[str, Any], conn: Connection) -> Any:
        n = self.calls[method] = self.calls.get(method, 0) + 1
        if self.fail.get(method):
            raise self.fail[method].pop(0)
        if method == "echo":
            return args
        if method == "sleep":
            await anyio.sleep(args["s"])
            return args.get("tag")
        if method == "drop_first":
            if n == 1:
                conn.close("test drops the connection")
                await anyio.sleep(5)
            return "second time lucky"
        if method == "health":
            return {"ready": n > self.ready_after, "calls": n}
        if method == "register" and self.drop_register:
            conn.close("test drops the connection after the request arrived")
            await anyio.sleep(5)
        if method == "register":
            view = {"ticket": args["ticket"], "symbol": args.get("symbol", "EURUSD").upper(),
                    "direction": args.get("direction", "BUY").upper(), "volume": 0.1}
            self.views[args["ticket"]] = view
            return {"created": True, "trade": view, "adjusted": {}}
        if method == "register_batch":
            return {"results": [{"ticket": t["ticket"]} for t in args["trades"]]}
        if method == "trade":
            view = self.views.get(args["ticket"], {"ticket": args["ticket"]})
            return {**view, "ticket": args["ticket"] + self.trade_ticket_offset,
                    "state": "HEALTHY", **self.trade_changes}
        if method == "subscribe":
            self.subscribers.append(conn)
            return {"subscribed": True}
        raise NotFound(f"unknown method {method!r}")

    async def publish(self, n: int) -> None:
        for conn in self.subscribers:
            for i in range(n):
                await conn.notify("trade_state", {"i": i})


@asynccontextmanager
async def serving(app: App, **settings: Any) -> AsyncIterator[RpcServer]:
    server = RpcServer(dataclasses.replace(RpcSettings(port=0), **settings), app)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        yield server
        tg.cancel_scope.cancel()


def fast(**kwargs: Any) -> dict[str, Any]:
    return {"backoff_min": 0.01, "backoff_max": 0.02, **kwargs}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- calls


async def test_call_returns_the_result_and_raises_the_specific_error():
    app = App()
    async with serving(app) as server, Client(port=server.port) as client:
        assert await client.call("echo", {"a": 1}) == {"a": 1}
        with pytest.raises(NotFound) as exc:
            await client.call("nope")
    assert exc.value.status == 404 and "nope" in exc.value.message


async def test_concurrent_calls_share_one_connection_and_complete_out_of_order():
    app = App()
    async with serving(app) as server, Client(port=server.port) as client:
        order: list[str] = []

        async def call(tag: str, s: float) -> None:
            assert await client.call("sleep", {"s": s, "tag": tag}) == tag
            order.append(tag)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "slow", 0.3)
            await anyio.sleep(0.05)
            tg.start_soon(call, "fast", 0.0)
        assert server.connections == 1
    assert order == ["fast", "slow"]


async def test_msgids_wrap_at_two_to_the_32():
    async with serving(App()) as server, Client(port=server.port) as client:
        client._msgid = MAX_MSGID - 1
        assert [await client.call("echo", {"i": i}) for i in range(3)] == [{"i": i} for i in
                                                                           range(3)]
        assert client._msgid == 1


async def test_not_ready_is_retried_honouring_retry_after_then_succeeds():
    app = App()
    app.fail["echo"] = [NotReady(retry_after=0.2), NotReady(retry_after=0.2)]
    async with serving(app) as server, Client(port=server.port, **fast()) as client:
        started = anyio.current_time()
        assert await client.call("echo", {"x": 1}) == {"x": 1}
        assert anyio.current_time() - started >= 0.4
    assert app.calls["echo"] == 3


async def test_overloaded_is_retried():
    app = App()
    app.fail["echo"] = [Overloaded(retry_after=0.01)]
    async with serving(app) as server, Client(port=server.port, **fast()) as client:
        assert await client.call("echo") == {}
    assert app.calls["echo"] == 2


async def test_not_ready_after_all_attempts_raises_not_ready():
    app = App()
    app.fail["echo"] = [NotReady(retry_after=0.01)] * 5
    async with serving(app) as server, Client(port=server.port, retries=2, **fast()) as client:
        with pytest.raises(NotReady):
            await client.call("echo")
    assert app.calls["echo"] == 2


async def test_invalid_argument_is_never_retried():
    app = App()
    app.fail["echo"] = [InvalidArgument("must be > 0", field="volume")]
    async with serving(app) as server, Client(port=server.port, **fast()) as client:
        with pytest.raises(InvalidArgument) as exc:
            await client.call("echo")
    assert app.calls["echo"] == 1 and exc.value.details["field"] == "volume"


async def test_connection_lost_before_the_response_is_retried():
    app = App()
    async with serving(app) as server, Client(port=server.port, **fast()) as client:
        assert await client.call("drop_first") == "second time lucky"
    assert app.calls["drop_first"] == 2


async def test_connection_lost_without_retry_raises_service_unavailable():
    app = App()
    async with serving(app) as server, Client(port=server.port, **fast()) as client:
        with pytest.raises(ServiceUnavailable, match="before the response"):
            await client.call("drop_first", retry=False)


async def test_unreachable_service_raises_service_unavailable_after_retries():
    async with Client(port=closed_port(), retries=3, **fast()) as client:
        with pytest.raises(ServiceUnavailable, match="after 3 attempt") as exc:
            await client.call("health")
    assert isinstance(exc.value, ConnectionError)


async def test_timeout_raises_call_timeout_and_is_not_retried():
    app = App()
    async with serving(app) as server, Client(port=server.port, **fast()) as client:
        with pytest.raises(CallTimeout):
            await client.call("sleep", {"s": 2}, timeout=0.1)
        assert await client.call("echo") == {}  # the connection is still usable
    assert app.calls["sleep"] == 1


async def test_client_must_be_entered():
    with pytest.raises(RuntimeError, match="async with"):
        await Client().call("health")


# ---------------------------------------------------------------- circuit breaker


async def test_breaker_opens_after_five_failures_against_a_closed_port_and_half_opens():
    clock = FakeClock()
    async with Client(port=closed_port(), retries=1, breaker_failures=5, breaker_reset_s=30,
                      clock=clock) as client:
        for _ in range(5):
            with pytest.raises(ServiceUnavailable):
                await client.call("health")
        assert client.breaker_state == "open"
        with pytest.raises(CircuitOpen) as exc:
            await client.call("health")
        assert 29 <= exc.value.retry_after <= 30
        clock.now += 30
        assert client.breaker_state == "half_open"
        with pytest.raises(ServiceUnavailable) as probe:
            await client.call("health")  # the probe goes to the network and fails
        assert not isinstance(probe.value, CircuitOpen)
        assert client.breaker_state == "open"


async def test_breaker_counts_a_call_once_however_many_retries_it_made():
    async with Client(port=closed_port(), retries=8, breaker_failures=5, clock=FakeClock(),
                      **fast()) as client:
        for _ in range(5):  # 8 attempts each, yet one failure each: never cut off half-way
            with pytest.raises(ServiceUnavailable, match="after 8 attempt") as exc:
                await client.call("health")
            assert not isinstance(exc.value, CircuitOpen)
        assert client.breaker_state == "open"
        with pytest.raises(CircuitOpen, match="after 5 consecutive failures"):
            await client.call("health")


async def test_a_call_that_succeeds_after_retries_resets_the_breaker():
    app = App()
    app.fail["echo"] = [NotReady(retry_after=0)] * 4
    async with serving(app) as server, Client(port=server.port, retries=5, breaker_failures=2,
                                              clock=FakeClock(), **fast()) as client:
        assert await client.call("echo") == {}
        assert client.breaker_state == "closed"
    assert app.calls["echo"] == 5


async def test_half_open_probe_success_closes_the_breaker():
    app, clock = App(), FakeClock()
    app.fail["echo"] = [NotReady(retry_after=0)] * 5
    async with serving(app) as server, Client(port=server.port, retries=1, clock=clock,
                                              breaker_reset_s=30) as client:
        for _ in range(5):
            with pytest.raises(NotReady):
                await client.call("echo")
        with pytest.raises(CircuitOpen):
            await client.call("echo")
        clock.now += 31
        assert await client.call("echo") == {}
        assert client.breaker_state == "closed"
    assert app.calls["echo"] == 6


async def test_client_errors_prove_the_service_is_up_and_do_not_open_the_breaker():
    app = App()
    async with serving(app) as server, Client(port=server.port, clock=FakeClock()) as client:
        for _ in range(8):
            with pytest.raises(NotFound):
                await client.call("nope")
        assert client.breaker_state == "closed"


# ---------------------------------------------------------------- high-level methods


async def test_wait_ready_polls_health_until_ready():
    app = App()
    app.ready_after = 3
    async with serving(app) as server, Client(port=server.port) as client:
        health = await client.wait_ready(timeout=5, interval=0.01)
    assert health == {"ready": True, "calls": 4}


async def test_wait_ready_times_out_with_the_last_health_seen():
    app = App()
    app.ready_after = 10**6
    async with serving(app) as server, Client(port=server.port) as client:
        with pytest.raises(TimeoutError, match="'ready': False"):
            await client.wait_ready(timeout=0.3, interval=0.05)


async def test_wait_ready_against_a_down_service_times_out_and_ignores_the_breaker():
    async with Client(port=closed_port(), breaker_failures=1) as client:
        with pytest.raises(TimeoutError, match="not ready"):
            await client.wait_ready(timeout=0.3, interval=0.02)
        assert client.breaker_state == "closed"


async def test_wait_ready_raises_at_once_on_a_wrong_token():
    async with serving(App(), token="s3cret") as server, \
            Client(port=server.port, token="wrong") as client:
        with anyio.fail_after(2), pytest.raises(Unauthenticated):
            await client.wait_ready(timeout=30)


async def test_register_verifies_the_trade_reads_back():
    app = App()
    async with serving(app) as server, Client(port=server.port) as client:
        result = await client.register({"ticket": 42, "symbol": "EURUSD"})
        await client.register({"ticket": 43}, verify=False)
    assert result["created"] is True and result["trade"]["ticket"] == 42
    assert app.calls["trade"] == 1


async def test_register_raises_verification_failed_when_trade_returns_another_ticket():
    app = App()
    app.trade_ticket_offset = 1
    async with serving(app) as server, Client(port=server.port) as client:
        with pytest.raises(VerificationFailed) as exc:
            await client.register({"ticket": 42})
    assert exc.value.ticket == 42 and exc.value.registration["created"] is True


async def test_register_raises_verification_failed_when_the_trade_is_unknown():
    app = App()
    app.fail["trade"] = [NotFound("no trade with ticket 42")]
    async with serving(app) as server, Client(port=server.port, verify=True) as client:
        with pytest.raises(VerificationFailed) as exc:
            await client.register({"ticket": 42})
    assert isinstance(exc.value.__cause__, NotFound)


@pytest.mark.parametrize(("asked", "changes", "named"), [
    ({"ticket": 42, "symbol": "EURUSD"}, {"symbol": "GBPUSD"}, "symbol 'GBPUSD'"),
    ({"ticket": 42, "direction": "buy"}, {"direction": "SELL"}, "direction 'SELL'"),
    ({"ticket": 42}, {"volume": 0.05}, "volume 0.05, registered as 0.1"),
    ({"ticket": 42, "volume": 0.3}, {"volume": 0.05}, "volume 0.05, registered as 0.1"),
])
async def test_register_verifies_symbol_direction_and_the_brokers_volume(asked, changes, named):
    app = App()
    app.trade_changes = changes
    async with serving(app) as server, Client(port=server.port) as client:
        with pytest.raises(VerificationFailed, match=named):
            await client.register(asked)


async def test_register_verification_takes_the_volume_dtms_reported_not_the_requests():
    app = App()
    async with serving(app) as server, Client(port=server.port) as client:
        # asked 0.3, the broker has 0.1: DTMS reports 0.1 and the read-back agrees
        result = await client.register({"ticket": 42, "symbol": "eurusd", "volume": 0.3})
    assert result["trade"]["volume"] == 0.1


async def test_service_unavailable_after_register_says_it_may_have_been_stored():
    app = App()
    async with serving(app) as server, Client(port=server.port, retries=2, **fast()) as client:
        app.drop_register = True
        with pytest.raises(ServiceUnavailable, match="may have been stored") as exc:
            await client.register({"ticket": 1})
        assert "after 2 attempt(s)" in str(exc.value)
        with pytest.raises(ServiceUnavailable) as exc:
            await client.call("drop_first", retry=False)
        assert "may have been stored" not in str(exc.value)   # not a registration
    async with Client(port=closed_port(), retries=2, **fast()) as client:
        with pytest.raises(ServiceUnavailable, match="cannot connect") as exc:
            await client.register({"ticket": 1})
        assert "may have been stored" not in str(exc.value)   # it never left the client


async def test_batch_trade_trades_and_status_call_their_methods():
    app = App()
    async with serving(app) as server, Client(port=server.port) as client:
        batch = await client.register_batch([{"ticket": 1}, {"ticket": 2}])
        assert batch == {"results": [{"ticket": 1}, {"ticket": 2}]}
        assert (await client.trade(7))["ticket"] == 7
        with pytest.raises(NotFound):
            await client.trades(state="managed")
        with pytest.raises(NotFound):
            await client.status()


async def test_token_is_sent_once_per_connection():
    app = App()
    async with serving(app, token="s3cret") as server:
        async with Client(port=server.port, token="s3cret") as client:
            assert await client.call("echo", {"x": 1}) == {"x": 1}
            assert await client.call("echo", {"x": 2}) == {"x": 2}
        async with Client(port=server.port) as anonymous:
            with pytest.raises(Unauthenticated, match="token required"):
                await anonymous.call("echo")
        async with Client(port=server.port, token="wrong") as wrong:
            with pytest.raises(Unauthenticated, match="wrong token"):
                await wrong.call("echo")


async def test_subscribe_yields_notifications_until_the_connection_closes():
    app = App()
    received: list[tuple[str, Any]] = []

    async def server_side() -> None:
        with anyio.fail_after(5):
            while not app.subscribers:
                await anyio.sleep(0.01)
            await app.publish(3)
            while len(received) < 3:
                await anyio.sleep(0.01)
        app.subscribers[0].close("test ends the subscription")

    async with serving(app) as server, Client(port=server.port) as client, \
            anyio.create_task_group() as tg:
        tg.start_soon(server_side)
        with pytest.raises(SubscriptionLost, match="server closed"):
            async for item in client.subscribe(kinds=["trade_state"]):
                received.append(item)
    assert received == [("trade_state", {"i": i}) for i in range(3)]
    assert app.calls["subscribe"] == 1


@pytest.fixture
def subscribed_app_publishes_first(monkeypatch) -> None:
    original = App.__call__

    async def call(self: App, method: str, args: dict[str, Any], conn: Connection) -> Any:
        result = await original(self, method, args, conn)
        if method == "subscribe":
            await conn.notify("trade_state", {"i": 0})  # before the response: must not be lost
        return result

    monkeypatch.setattr(App, "__call__", call)


async def test_notification_sent_before_the_subscribe_response_is_not_lost(
        subscribed_app_publishes_first):
    app = App()
    async with serving(app) as server, Client(port=server.port) as client:
        async for item in client.subscribe():
            assert item == ("trade_state", {"i": 0})
            break


def test_from_settings_takes_rpc_and_client_sections():
    settings = Settings().replace(rpc={"host": "0.0.0.0", "port": 8101, "token": "t"},
                                  client={"timeout_s": 2.5, "retries": 7, "verify": False})
    client = Client.from_settings(settings, retries=2)
    assert (client.host, client.port, client.token) == ("127.0.0.1", 8101, "t")
    assert (client.timeout, client.retries, client.verify) == (2.5, 2, False)


# ---------------------------------------------------------------- sync client


@pytest.fixture
def threaded_server() -> Iterator[tuple[RpcServer, App]]:
    app = App()
    with start_blocking_portal("asyncio") as portal:
        server = RpcServer(RpcSettings(port=0), app)
        future, _ = portal.start_task(server.run)
        yield server, app
        future.cancel()


def test_sync_client_works_from_plain_sync_code(threaded_server):
    server, app = threaded_server
    with SyncClient(port=server.port, **fast()) as client:
        assert client.wait_ready(timeout=5)["ready"] is True
        assert client.call("echo", {"x": 1}) == {"x": 1}
        assert client.register({"ticket": 9})["trade"]["ticket"] == 9
        with pytest.raises(NotFound):
            client.status()
        assert client.breaker_state == "closed"
    with pytest.raises(ServiceUnavailable, match="closed"):
        client.health()
    client.close()  # idempotent


def test_sync_client_subscribe_iterates(subscribed_app_publishes_first, threaded_server):
    server, app = threaded_server
    with SyncClient(port=server.port) as client:
        for item in client.subscribe():
            assert item == ("trade_state", {"i": 0})
            break
        assert client.call("echo") == {}
    assert app.calls["subscribe"] == 1


# ---------------------------------------------------------------- notifications on the wire


@asynccontextmanager
async def raw_server(frames_after_subscribe: list[Any]) -> AsyncIterator[int]:
    """A bare msgpack-rpc peer: answers ``subscribe`` and then sends ``frames`` exactly."""
    import msgpack

    async def handle(stream: Any) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        async with stream:
            while True:
                try:
                    unpacker.feed(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                for msg in unpacker:
                    await stream.send(msgpack.packb([1, msg[1], None, {"subscribed": True}]))
                    if msg[2] == "subscribe":
                        await stream.send(b"".join(msgpack.packb(f)
                                                   for f in frames_after_subscribe))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


async def test_subscribe_yields_the_map_of_spec_notifications_and_skips_unusable_ones(caplog):
    frames = [[2, "trade.state", [{"ticket": 1}]],      # the spec: params is [map]
              [2, "trade.state", 5],                     # unusable: logged, skipped
              [2, b"trade.updated", [{"ticket": 2}]],    # a bin method name
              [2, "trade.updated", {"ticket": 3}]]       # DTMS before issue 13: a bare map
    received = []
    async with raw_server(frames) as port, Client(port=port) as client:
        with anyio.fail_after(5):
            async for item in client.subscribe():
                received.append(item)
                if len(received) == 3:
                    break
        assert await client.call("echo") == {"subscribed": True}  # the connection lives
    assert received == [("trade.state", {"ticket": 1}), ("trade.updated", {"ticket": 2}),
                        ("trade.updated", {"ticket": 3})]
    assert any("unusable notification" in r.getMessage() for r in caplog.records)
