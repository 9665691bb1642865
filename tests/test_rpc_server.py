"""RpcServer over real TCP: dispatch, errors, limits, auth, notifications."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dtms.rpc.server as server_module
from dtms.config import RpcSettings
from dtms.errors import InvalidArgument, NotFound
from dtms.rpc.server import Connection, RpcServer, is_loopback, method_label

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingMetrics:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.opened = self.closed = 0
        self.rejected: list[str] = []

    def request(self, method: str, code: str, seconds: float) -> None:
        self.requests.append((method, code))

    def connection_opened(self) -> None:
        self.opened += 1

    def connection_closed(self) -> None:
        self.closed += 1

    def frame_rejected(self, reason: str) -> None:
        self.rejected.append(reason)


class App:
    """The test handler."""

    def __init__(self) -> None:
        self.running = self.max_running = 0
        self.seen_args: list[dict[str, Any]] = []
        self.closed_connections: list[int] = []

    async def __call__(self, method: str, args: dict[str, Any], conn: Connection) -> Any:
        self.seen_args.append(args)
        if method in ("echo", "health"):
            return args
        if method == "sleep":
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            try:
                await anyio.sleep(args.get("s", 0.05))
            finally:
                self.running -= 1
            return args.get("tag")
        if method == "not_found":
            raise NotFound("no trade with ticket 5", ticket=5)
        if method == "invalid":
            raise InvalidArgument("must be > 0", field="volume")
        if method == "bug":
            raise ValueError("boom")
        if method == "unencodable":
            return object()
        if method == "notify":
            conn.on_close(lambda: self.closed_connections.append(conn.id))
            for i in range(args["n"]):
                await conn.notify("tick", {"i": i})
            return {"sent": args["n"]}
        raise NotFound(f"unknown method {method!r}")


def rpc(**overrides: Any) -> RpcSettings:
    return dataclasses.replace(RpcSettings(port=0), **overrides)


@asynccontextmanager
async def serving(settings: RpcSettings | None = None, app: Any = None,
                  **kwargs: Any) -> AsyncIterator[RpcServer]:
    server = RpcServer(settings or rpc(), app or App(), **kwargs)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        yield server
        tg.cancel_scope.cancel()


class Raw:
    """A bare msgpack-over-TCP peer, to send anything at all."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[Raw]:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            yield cls(stream)

    async def send(self, *messages: Any) -> None:
        await self.stream.send(b"".join(msgpack.packb(m) for m in messages))

    async def recv(self, timeout: float = 5.0) -> Any:
        with anyio.fail_after(timeout):
            while True:
                for msg in self.unpacker:
                    return msg
                self.unpacker.feed(await self.stream.receive())

    async def call(self, msgid: int, method: str, args: dict[str, Any] | None = None) -> Any:
        await self.send([0, msgid, method, [args] if args is not None else []])
        return await self.recv()

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the server closes the connection (EOF or reset)."""
        with anyio.fail_after(timeout):
            try:
                while await self.stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True
        return False


# ---------------------------------------------------------------- dispatch and errors


async def test_pipelined_requests_are_answered_out_of_order_matched_by_msgid():
    async with serving() as server, Raw.connect(server.port) as peer:
        await peer.send([0, 1, "sleep", [{"s": 0.3, "tag": "slow"}]], [0, 2, "echo", [{"x": 1}]])
        first, second = await peer.recv(), await peer.recv()
    assert first == [1, 2, None, {"x": 1}]
    assert second == [1, 1, None, "slow"]


async def test_dtms_errors_become_error_maps_with_code_status_message_and_details():
    async with serving() as server, Raw.connect(server.port) as peer:
        not_found = await peer.call(1, "not_found", {})
        invalid = await peer.call(2, "invalid")
        unknown = await peer.call(3, "nope")
    assert not_found == [1, 1, {"code": "NOT_FOUND", "status": 404,
                                "message": "no trade with ticket 5", "ticket": 5}, None]
    assert invalid[2] == {"code": "INVALID_ARGUMENT", "status": 400,
                          "message": "volume: must be > 0", "field": "volume"}
    assert unknown[2]["code"] == "NOT_FOUND"


async def test_handler_bug_answers_internal_with_a_trace_id_that_is_logged(caplog):
    async with serving() as server, Raw.connect(server.port) as peer:
        _, _, error, result = await peer.call(1, "bug")
        unencodable = await peer.call(2, "unencodable")
    assert error["code"] == "INTERNAL" and error["status"] == 500 and result is None
    assert len(error["trace_id"]) == 32
    logged = [r for r in caplog.records if error["trace_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert unencodable[2]["code"] == "INTERNAL" and "trace_id" in unencodable[2]


async def test_request_running_past_request_timeout_answers_internal():
    async with serving(rpc(request_timeout_s=0.2)) as server, Raw.connect(server.port) as peer:
        _, msgid, error, _ = await peer.call(9, "sleep", {"s": 10})
    assert msgid == 9 and error["code"] == "INTERNAL" and "timed out" in error["message"]
    assert "trace_id" in error


@pytest.mark.parametrize(("message", "msgid", "field"), [
    ([0, 7, "echo"], 7, "message"),
    ([5, 7, "echo", []], 7, "type"),
    ([0, 7, 42, []], 7, "method"),
    ([0, 7, "echo", {"a": 1}], 7, "params"),
    ([0, 7, "echo", [1]], 7, "params"),
    ([0, 2**32, "echo", []], 2**32, "msgid"),
    ([0, -1, "echo", []], -1, "msgid"),
])
async def test_wrong_shape_with_readable_msgid_gets_invalid_argument_and_connection_lives(
        message, msgid, field):
    metrics = RecordingMetrics()
    async with serving(metrics=metrics) as server, Raw.connect(server.port) as peer:
        await peer.send(message)
        reply = await peer.recv()
        assert await peer.call(8, "echo", {"ok": 1}) == [1, 8, None, {"ok": 1}]
    assert reply[:2] == [1, msgid] and reply[3] is None
    assert reply[2]["code"] == "INVALID_ARGUMENT" and reply[2]["field"] == field
    assert len(metrics.rejected) == 1


@pytest.mark.parametrize("message", ["hello", {"a": 1}, [], [0], [0, "1", "echo", []], 17])
async def test_message_without_readable_msgid_closes_the_connection(message, caplog):
    metrics = RecordingMetrics()
    async with serving(metrics=metrics) as server, Raw.connect(server.port) as peer:
        await peer.send(message)
        assert await peer.closed_by_peer()
    assert len(metrics.rejected) == 1
    assert any("closing: malformed message" in r.getMessage() for r in caplog.records)


async def test_client_notification_is_logged_counted_and_not_fatal():
    metrics = RecordingMetrics()
    async with serving(metrics=metrics) as server, Raw.connect(server.port) as peer:
        await peer.send([2, "register", [{}]])
        assert await peer.call(1, "echo") == [1, 1, None, {}]
    assert metrics.rejected == ["client_notification"]


async def test_bin_method_names_are_answered_like_str_ones_over_tcp():
    """pynvim sends method names as msgpack bin: decoded as UTF-8, the connection lives."""
    metrics = RecordingMetrics()
    async with serving(metrics=metrics) as server, Raw.connect(server.port) as peer:
        await peer.send([2, b"nvim_subscribe", [b"BufEnter"]])    # bin notification first
        await peer.send([0, 1, b"echo", [{"x": 1}]])
        assert await peer.recv() == [1, 1, None, {"x": 1}]
        await peer.send([0, 2, b"\xff\xfeecho", []])              # bin, not UTF-8
        _, msgid, error, result = await peer.recv()
        assert (msgid, error["code"], error["field"], result) == (2, "INVALID_ARGUMENT",
                                                                  "method", None)
        assert "not valid UTF-8" in error["message"]
        assert await peer.call(3, "echo") == [1, 3, None, {}]
    assert metrics.rejected == ["client_notification", "method_utf8"]


@pytest.mark.parametrize(("notification", "reason"), [
    ([2, b"\xff\xfe", []], "notification_method"),
    ([2, 42, []], "notification_method"),
    ([2, "tick", {"not": "an array"}], "notification_params"),
])
async def test_unusable_notification_is_logged_counted_and_ignored_never_closing(
        notification, reason, caplog):
    metrics = RecordingMetrics()
    async with serving(metrics=metrics) as server, Raw.connect(server.port) as peer:
        await peer.send(notification)
        assert await peer.call(1, "echo", {"alive": True}) == [1, 1, None, {"alive": True}]
    assert metrics.rejected == [reason]
    assert any("ignored unusable notification" in r.getMessage() for r in caplog.records)


async def test_request_metrics_use_bounded_method_labels():
    metrics = RecordingMetrics()
    async with serving(metrics=metrics) as server, Raw.connect(server.port) as peer:
        await peer.call(1, "echo")
        await peer.call(2, "Weird-Method/../x")
        await peer.call(3, "invalid")
    assert metrics.requests == [("echo", "OK"), ("unknown", "NOT_FOUND"),
                                ("invalid", "INVALID_ARGUMENT")]
    assert metrics.opened == 1


def test_method_label_is_bounded():
    assert method_label("register_batch") == "register_batch"
    assert method_label("x" * 41) == "unknown"
    assert method_label("Register") == "unknown"
    assert method_label("") == "unknown"


# ---------------------------------------------------------------- hostile input and limits


async def test_frame_over_max_frame_bytes_closes_only_that_connection():
    metrics = RecordingMetrics()
    async with serving(rpc(max_frame_bytes=1024), metrics=metrics) as server, \
            Raw.connect(server.port) as bad, Raw.connect(server.port) as good:
        await bad.send([0, 1, "echo", [{"blob": "x" * 4000}]])
        assert await bad.closed_by_peer()
        assert await good.call(2, "echo", {"still": "here"}) == [1, 2, None, {"still": "here"}]
    assert metrics.rejected == ["frame_too_large"]


async def test_many_small_frames_larger_than_the_limit_together_are_fine():
    async with serving(rpc(max_frame_bytes=256)) as server, Raw.connect(server.port) as peer:
        await peer.send(*[[0, i, "echo", [{"i": i}]] for i in range(300)])
        replies = [await peer.recv() for _ in range(300)]
    assert sorted(r[1] for r in replies) == list(range(300))


@pytest.mark.parametrize("ext", [msgpack.ExtType(42, b"data"), msgpack.Timestamp(10, 0)])
async def test_ext_types_close_the_connection(ext):
    metrics = RecordingMetrics()
    async with serving(metrics=metrics) as server, Raw.connect(server.port) as peer:
        await peer.send([0, 1, "echo", [{"when": ext}]])
        assert await peer.closed_by_peer()
    assert metrics.rejected == ["ext_type"]


async def test_ten_thousand_pipelined_requests_on_one_connection_are_all_answered():
    n = 10_000
    async with serving() as server, Raw.connect(server.port) as peer:
        seen: set[int] = set()

        async def read_all() -> None:
            while len(seen) < n:
                reply = await peer.recv(timeout=10)
                assert reply[2] is None and reply[3] == {"i": reply[1]}
                seen.add(reply[1])

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_all)
            await peer.send(*[[0, i, "echo", [{"i": i}]] for i in range(n)])
    assert seen == set(range(n))


async def test_inflight_limit_stops_reading_until_a_request_finishes():
    app = App()
    async with serving(rpc(max_inflight_per_conn=3), app) as server, \
            Raw.connect(server.port) as peer:
        await peer.send(*[[0, i, "sleep", [{"s": 0.05, "tag": i}]] for i in range(12)])
        replies = [await peer.recv() for _ in range(12)]
    assert sorted(r[3] for r in replies) == list(range(12))
    assert app.max_running == 3


async def test_idle_connection_is_closed_but_not_while_a_request_runs():
    async with serving(rpc(idle_timeout_s=0.3)) as server:
        async with Raw.connect(server.port) as idle:
            started = anyio.current_time()
            assert await idle.closed_by_peer(timeout=3)
            assert 0.25 <= anyio.current_time() - started < 2.5
        async with Raw.connect(server.port) as busy:
            assert await busy.call(1, "sleep", {"s": 0.6, "tag": "done"}) == [1, 1, None, "done"]


async def trickle(peer: Raw, data: bytes, every_s: float = 0.05) -> None:
    """Send ``data`` one byte at a time (slowloris) until it is sent or the server hangs up."""
    try:
        for i in range(len(data)):
            await peer.stream.send(data[i:i + 1])
            await anyio.sleep(every_s)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return


def unfinished_frame() -> bytes:
    """The first bytes of a request whose last byte is never sent."""
    return msgpack.packb([0, 1, "echo", [{"blob": "x" * 2000}]])[:-1]


async def test_trickling_client_is_closed_after_the_frame_timeout_though_it_keeps_sending(caplog):
    metrics = RecordingMetrics()
    async with serving(rpc(frame_timeout_s=0.3, max_connections=4), metrics=metrics) as server, \
            Raw.connect(server.port) as slow, anyio.create_task_group() as tg:
        tg.start_soon(trickle, slow, unfinished_frame())  # ~100 s of bytes at one per 0.05 s
        assert await slow.closed_by_peer(timeout=5)
        tg.cancel_scope.cancel()
    assert metrics.rejected == ["frame_timeout"]
    assert any("frame did not complete within rpc.frame_timeout_s=0.3" in r.getMessage()
               for r in caplog.records)


async def test_idle_timer_counts_from_the_last_complete_message_not_the_last_byte():
    metrics = RecordingMetrics()
    async with serving(rpc(idle_timeout_s=0.4, frame_timeout_s=60), metrics=metrics) as server, \
            Raw.connect(server.port) as peer, anyio.create_task_group() as tg:
        assert await peer.call(1, "echo") == [1, 1, None, {}]
        tg.start_soon(trickle, peer, unfinished_frame())
        assert await peer.closed_by_peer(timeout=5)
        tg.cancel_scope.cancel()
    assert metrics.rejected == ["idle_timeout"]


async def test_a_frame_arriving_in_pieces_within_the_frame_timeout_is_answered():
    async with serving(rpc(frame_timeout_s=5)) as server, Raw.connect(server.port) as peer:
        data = msgpack.packb([0, 1, "echo", [{"n": 1}]]) + msgpack.packb([0, 2, "echo", []])
        for i in range(0, len(data), 3):
            await peer.stream.send(data[i:i + 3])
            await anyio.sleep(0.01)
        assert [await peer.recv(), await peer.recv()] == [[1, 1, None, {"n": 1}],
                                                          [1, 2, None, {}]]


async def test_new_client_gets_health_when_every_slot_is_held_by_idle_or_slow_clients():
    """At max_connections the connection idle longest (never sent a complete message first) is
    closed for the newcomer; one with a request in flight never is."""
    metrics = RecordingMetrics()
    async with serving(rpc(max_connections=4), metrics=metrics) as server, \
            Raw.connect(server.port) as used, Raw.connect(server.port) as idle, \
            Raw.connect(server.port) as slow1, Raw.connect(server.port) as slow2, \
            anyio.create_task_group() as tg:
        assert await used.call(1, "echo") == [1, 1, None, {}]  # completed a message: kept longest
        tg.start_soon(trickle, slow1, unfinished_frame())
        tg.start_soon(trickle, slow2, unfinished_frame())
        await anyio.sleep(0.1)
        assert server.connections == 4
        async with Raw.connect(server.port) as newcomer:
            assert await newcomer.call(1, "health") == [1, 1, None, {}]
            assert await idle.closed_by_peer()       # the oldest that never sent a message
        async with Raw.connect(server.port) as second:
            assert await second.call(1, "health") == [1, 1, None, {}]
            assert await slow1.closed_by_peer()
        assert await used.call(2, "echo", {"still": True}) == [1, 2, None, {"still": True}]
        tg.cancel_scope.cancel()
    assert metrics.rejected == ["evicted_idle", "evicted_idle"]


async def test_max_connections_all_busy_refuses_a_newcomer_evicts_none_and_recovers():
    metrics = RecordingMetrics()
    async with serving(rpc(max_connections=2), metrics=metrics) as server:
        async with Raw.connect(server.port) as a, Raw.connect(server.port) as b:
            await a.send([0, 1, "sleep", [{"s": 0.5, "tag": "a"}]])
            await b.send([0, 1, "sleep", [{"s": 0.5, "tag": "b"}]])
            await anyio.sleep(0.1)
            assert server.connections == 2
            async with Raw.connect(server.port) as c:
                assert await c.closed_by_peer()
            assert (await a.recv(), await b.recv()) == ([1, 1, None, "a"], [1, 1, None, "b"])
        with anyio.fail_after(5):
            while server.connections:
                await anyio.sleep(0.01)
        async with Raw.connect(server.port) as d:
            assert await d.call(1, "echo") == [1, 1, None, {}]
    assert metrics.rejected == ["max_connections"]


async def test_half_closed_peer_still_gets_its_in_flight_answers():
    async with serving() as server, Raw.connect(server.port) as peer:
        await peer.send([0, 1, "sleep", [{"s": 0.1, "tag": "a"}]], [0, 2, "echo", [{}]])
        await peer.stream.send_eof()
        replies = [await peer.recv(), await peer.recv()]
        assert await peer.closed_by_peer()
    assert sorted(r[1] for r in replies) == [1, 2]


# ---------------------------------------------------------------- notifications


async def test_notifications_reach_the_subscriber_on_its_connection():
    async with serving() as server, Raw.connect(server.port) as peer:
        await peer.send([0, 1, "notify", [{"n": 3}]])
        messages = [await peer.recv() for _ in range(4)]
    # msgpack-rpc: a notification is [2, method, params] with params an ARRAY ([map])
    assert [m for m in messages if m[0] == 2] == [[2, "tick", [{"i": i}]] for i in range(3)]
    assert [1, 1, None, {"sent": 3}] in messages


async def test_slow_subscriber_is_disconnected_not_blocking_and_on_close_runs(caplog):
    app, metrics = App(), RecordingMetrics()
    async with serving(rpc(notify_queue=4), app, metrics=metrics) as server, \
            Raw.connect(server.port) as peer:
        await peer.send([0, 1, "notify", [{"n": 50}]])
        assert await peer.closed_by_peer()
        with anyio.fail_after(5):
            while not app.closed_connections:
                await anyio.sleep(0.01)
    assert "notify_queue_full" in metrics.rejected
    assert any("slow subscriber" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- auth


async def test_token_required_for_all_but_public_methods():
    app = App()
    async with serving(rpc(token="s3cret"), app) as server, Raw.connect(server.port) as peer:
        _, _, error, _ = await peer.call(1, "echo", {"x": 1})
        health = await peer.call(2, "health")
    assert error["code"] == "UNAUTHENTICATED" and error["status"] == 401
    assert error["message"] == "token required"
    assert health == [1, 2, None, {}]


async def test_auth_method_authenticates_the_connection_and_wrong_token_keeps_it_open():
    app = App()
    async with serving(rpc(token="s3cret"), app) as server, Raw.connect(server.port) as peer:
        wrong = await peer.call(1, "auth", {"token": "nope"})
        right = await peer.call(2, "auth", {"token": "s3cret"})
        echoed = await peer.call(3, "echo", {"x": 1})
        async with Raw.connect(server.port) as other:
            unauth = await other.call(1, "echo")
    assert wrong[2]["code"] == "UNAUTHENTICATED" and wrong[2]["message"] == "wrong token"
    assert right == [1, 2, None, {"authenticated": True}]
    assert echoed == [1, 3, None, {"x": 1}]
    assert unauth[2]["code"] == "UNAUTHENTICATED"


async def test_per_call_token_is_checked_and_removed_before_the_handler():
    app = App()
    async with serving(rpc(token="s3cret"), app) as server, Raw.connect(server.port) as peer:
        ok = await peer.call(1, "echo", {"token": "s3cret", "x": 1})
        bad = await peer.call(2, "echo", {"token": "s3cre", "x": 1})
        not_str = await peer.call(3, "echo", {"token": 5})
    assert ok == [1, 1, None, {"x": 1}]
    assert bad[2]["code"] == not_str[2]["code"] == "UNAUTHENTICATED"
    assert all("token" not in a for a in app.seen_args)


async def test_token_comparison_is_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server_module.hmac, "compare_digest", spy)
    async with serving(rpc(token="s3cret")) as server, Raw.connect(server.port) as peer:
        await peer.call(1, "auth", {"token": "guess"})
        await peer.call(2, "echo", {"token": "s3cret"})
    assert calls == [(b"guess", b"s3cret"), (b"s3cret", b"s3cret")]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "", "example.com"])
def test_non_loopback_bind_without_token_is_refused(host):
    with pytest.raises(ValueError, match="without an auth token"):
        RpcServer(rpc(host=host), App())
    RpcServer(rpc(host=host, token="t"), App())  # with a token it is allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST"])
def test_loopback_hosts_need_no_token(host):
    assert is_loopback(host)
    RpcServer(rpc(host=host), App())


# ---------------------------------------------------------------- sync peers, one server thread


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[RpcServer]:
    with start_blocking_portal("asyncio") as portal:
        server = RpcServer(rpc(), App())
        future, _ = portal.start_task(server.run)
        yield server
        future.cancel()


def _sock_call(sock: socket.socket, unpacker: msgpack.Unpacker, message: Any) -> Any:
    sock.sendall(msgpack.packb(message))
    while True:
        for reply in unpacker:
            return reply
        data = sock.recv(65536)
        assert data, "server closed the connection"
        unpacker.feed(data)


def test_compatibility_with_a_plain_msgpack_rpc_peer(threaded_server):
    """Written from the public msgpack-rpc spec with only ``socket`` and ``msgpack``."""
    with socket.create_connection(("127.0.0.1", threaded_server.port), timeout=5) as sock:
        unpacker = msgpack.Unpacker(raw=False)
        assert _sock_call(sock, unpacker, [0, 1, "echo", [{"a": [1, 2.5, None, True]}]]) == \
            [1, 1, None, {"a": [1, 2.5, None, True]}]
        assert _sock_call(sock, unpacker, [0, 4294967295, "echo", []]) == [1, 4294967295, None, {}]
        _, msgid, error, result = _sock_call(sock, unpacker, [0, 2, "not_found", [{}]])
        assert (msgid, result) == (2, None)
        assert {"code", "status", "message"} <= error.keys() and error["status"] == 404
        sock.sendall(msgpack.packb([2, "fire_and_forget", []]))  # notifications get no reply
        assert _sock_call(sock, unpacker, [0, 3, "echo", [{"b": b"\x00"}]]) == \
            [1, 3, None, {"b": b"\x00"}]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=3000))
def test_random_bytes_never_crash_the_server(threaded_server, data):
    with socket.create_connection(("127.0.0.1", threaded_server.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass  # a close with unread input is a reset: fine, that is the point
    with socket.create_connection(("127.0.0.1", threaded_server.port), timeout=5) as sock:
        assert _sock_call(sock, msgpack.Unpacker(raw=False), [0, 1, "echo", [{"k": 1}]]) == \
            [1, 1, None, {"k": 1}]


def test_wrong_token_is_logged_without_the_token(caplog):
    caplog.set_level(logging.WARNING)
    async def main() -> None:
        async with serving(rpc(token="s3cret")) as server, Raw.connect(server.port) as peer:
            await peer.call(1, "auth", {"token": "leaked-guess"})
    anyio.run(main)
    assert any("wrong token" in r.getMessage() for r in caplog.records)
    assert not any("leaked-guess" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", [0, -1])
def test_frame_timeout_must_be_positive(value):
    from dtms.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=f"rpc.frame_timeout_s: must be > 0, got {value}"):
        Settings().replace(rpc={"frame_timeout_s": value})
