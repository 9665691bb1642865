"""msgpack-rpc framing: validation of incoming messages and the bounded decoder."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.errors import InvalidArgument
from dtms.rpc.protocol import (
    MAX_MSGID,
    BadMessage,
    BadNotification,
    DecodeError,
    ExtTypeRejected,
    FrameDecoder,
    FrameTooLarge,
    Notification,
    Request,
    Response,
    args_from_params,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
    parse_reply,
    parse_request,
)


def test_request_with_one_map_of_named_arguments_is_dispatchable():
    assert parse_request([0, 7, "trade", [{"ticket": 1}]]) == Request(7, "trade", {"ticket": 1})


def test_empty_params_mean_no_arguments():
    assert parse_request([0, MAX_MSGID, "health", []]) == Request(MAX_MSGID, "health", {})


@pytest.mark.parametrize(("msg", "msgid", "field"), [
    ([0, 2**32, "echo", []], 2**32, "msgid"),
    ([0, -1, "echo", []], -1, "msgid"),
    ([5, 7, "echo", []], 7, "type"),
    ([1, 7, None, None], 7, "type"),
    ([0, 7, "echo"], 7, "message"),
    ([0, 7, "echo", [], "extra"], 7, "message"),
    ([0, 7, 42, []], 7, "method"),
    ([0, 7, "", []], 7, "method"),
    ([0, 7, "echo", {"a": 1}], 7, "params"),
    ([0, 7, "echo", [1]], 7, "params"),
    ([0, 7, "echo", [{}, {}]], 7, "params"),
    ([0, 7, "echo", [{b"k": 1}]], 7, "params"),
])
def test_bad_message_with_readable_msgid_is_answered_naming_the_field(msg, msgid, field):
    outcome = parse_request(msg)
    assert isinstance(outcome, BadMessage)
    assert outcome.msgid == msgid
    assert isinstance(outcome.error, InvalidArgument)
    assert outcome.error.to_wire()["field"] == field


@pytest.mark.parametrize("msg", [
    "hello", 42, None, {"a": 1}, [], [0], [0, "1", "echo", []], [0, None, "echo", []],
    [0, True, "echo", []], [0, 1.0, "echo", []],
])
def test_bad_message_without_usable_msgid_cannot_be_answered(msg):
    outcome = parse_request(msg)
    assert isinstance(outcome, BadMessage)
    assert outcome.msgid is None


def test_client_notification_is_recognised():
    assert parse_request([2, "ping", []]) == Notification("ping", [])


def test_bin_method_names_are_decoded_as_utf8_in_requests_and_notifications():
    # pynvim, a real msgpack-rpc peer, sends its first notification's name as bin
    assert parse_request([0, 7, b"trade", [{"ticket": 1}]]) == Request(7, "trade", {"ticket": 1})
    assert parse_request([0, 7, "h\u00e9".encode(), []]) == Request(7, "h\u00e9", {})
    assert parse_request([2, b"nvim_subscribe", [b"x"]]) == Notification("nvim_subscribe",
                                                                          [b"x"])


def test_request_with_a_bin_method_that_is_not_utf8_is_answered_naming_the_method():
    outcome = parse_request([0, 7, b"\xff\xfeecho", []])
    assert isinstance(outcome, BadMessage)
    assert (outcome.msgid, outcome.reason) == (7, "method_utf8")
    wire = outcome.error.to_wire()
    assert (wire["code"], wire["field"]) == ("INVALID_ARGUMENT", "method")
    assert "not valid UTF-8" in wire["message"]


@pytest.mark.parametrize(("msg", "reason"), [
    ([2, 5, []], "notification_method"),
    ([2, None, []], "notification_method"),
    ([2, "", []], "notification_method"),
    ([2, b"\xff", []], "notification_method"),
    ([2, "tick", {"i": 1}], "notification_params"),
    ([2, "tick", None], "notification_params"),
])
def test_unusable_notification_is_to_be_ignored_not_a_reason_to_close(msg, reason):
    outcome = parse_request(msg)
    assert isinstance(outcome, BadNotification)
    assert outcome.reason == reason


def test_args_from_params_rejects_non_arrays():
    with pytest.raises(InvalidArgument) as exc:
        args_from_params("x")
    assert exc.value.to_wire()["field"] == "params"


def test_encoders_follow_the_public_spec():
    assert msgpack.unpackb(encode_request(3, "trade", {"ticket": 9})) == [0, 3, "trade",
                                                                          [{"ticket": 9}]]
    assert msgpack.unpackb(encode_request(3, "health")) == [0, 3, "health", []]
    assert msgpack.unpackb(encode_response(3, None, {"ok": True})) == [1, 3, None, {"ok": True}]
    # msgpack-rpc: params of a notification are an array, as a request's are
    assert msgpack.unpackb(encode_notification("tick", {"i": 1})) == [2, "tick", [{"i": 1}]]
    wire = msgpack.unpackb(encode_error(4, InvalidArgument("must be > 0", field="volume")))
    assert wire == [1, 4, {"code": "INVALID_ARGUMENT", "status": 400,
                           "message": "volume: must be > 0", "field": "volume"}, None]


def test_parse_reply_accepts_responses_and_notifications_only():
    assert parse_reply([1, 3, None, 5]) == Response(3, None, 5)
    assert parse_reply([2, "tick", [{"i": 1}]]) == Notification("tick", [{"i": 1}])
    assert parse_reply([2, b"tick", [{"i": 1}]]) == Notification("tick", [{"i": 1}])
    assert parse_reply([2, "tick", {"i": 1}]) == Notification("tick", {"i": 1})  # DTMS < 13
    assert isinstance(parse_reply([2, b"\xff", []]), BadNotification)
    assert isinstance(parse_reply([2, "tick", 5]), BadNotification)
    for bad in ([1, 3, "error", None], [0, 1, "x", []], "x", [1, -1, None, None]):
        with pytest.raises(DecodeError):
            parse_reply(bad)


# ---------------------------------------------------------------- decoder


def test_many_small_pipelined_frames_exceeding_the_limit_in_total_decode():
    decoder = FrameDecoder(64)
    frames = b"".join(encode_request(i, "echo", {"i": i}) for i in range(500))
    assert len(frames) > 64 * 50
    assert [m[1] for m in decoder.feed(frames)] == list(range(500))


def test_message_split_at_every_byte_decodes():
    decoder = FrameDecoder(1024)
    data = encode_request(1, "echo", {"text": "x" * 100})
    out = [m for i in range(len(data)) for m in decoder.feed(data[i:i + 1])]
    assert out == [[0, 1, "echo", [{"text": "x" * 100}]]]


def test_one_frame_over_the_limit_is_rejected_and_the_decoder_is_dead():
    decoder = FrameDecoder(100)
    with pytest.raises(FrameTooLarge):
        list(decoder.feed(encode_request(1, "echo", {"text": "x" * 200})))
    with pytest.raises(DecodeError):
        list(decoder.feed(encode_request(2, "echo")))


@pytest.mark.parametrize("value", [
    msgpack.packb(msgpack.ExtType(5, b"abc")),
    msgpack.packb(msgpack.Timestamp(1, 0)),
    b"\xc7\x03\x80abc",  # ext8 with a negative (reserved) type
])
def test_ext_types_are_rejected(value):
    frame = b"\x94\x00\x01\xa4echo\x91\x81\xa1v" + value  # [0, 1, "echo", [{"v": <ext>}]]
    with pytest.raises(ExtTypeRejected):
        list(FrameDecoder(1024).feed(frame))


@pytest.mark.parametrize(("data", "reason"), [
    (b"\xdd\xff\xff\xff\xff", "invalid"),        # array declaring 4 billion elements
    (b"\xdf\xff\xff\xff\xff", "invalid"),        # map likewise
    (b"\x81\x01\x02", "invalid"),                # int map key (strict_map_key)
    (b"\xa2\xff\xfe", "invalid"),                # invalid UTF-8
    (b"\xc1", "format"),                         # reserved byte
    (b"\x91" * 5000 + b"\xc0", "too_deep"),      # nesting bomb
])
def test_hostile_inputs_raise_decode_error_with_a_reason(data, reason):
    with pytest.raises(DecodeError) as exc:
        list(FrameDecoder(1 << 20).feed(data))
    assert exc.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_either_decode_or_raise_decode_error(data):
    decoder = FrameDecoder(256)
    try:
        for msg in decoder.feed(data):
            parse_request(msg)  # must not raise either
    except DecodeError:
        assert decoder.failed is not None


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=5),
    max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, MAX_MSGID), st.dictionaries(st.text(max_size=8),
                                                                      json_like, max_size=4)),
                min_size=1, max_size=10),
       st.integers(1, 64))
def test_requests_survive_arbitrary_chunking(requests, chunk):
    data = b"".join(encode_request(msgid, "m", args) for msgid, args in requests)
    decoder = FrameDecoder(4096)
    out = [parse_request(m) for i in range(0, len(data), chunk)
           for m in decoder.feed(data[i:i + chunk])]
    assert out == [Request(msgid, "m", args) for msgid, args in requests]


_wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8)


@given(method=_wire_values, params=_wire_values)
@settings(max_examples=300, deadline=None)
def test_no_notification_is_ever_a_reason_to_close(method, params):
    """Whatever a peer sends as [2, method, params], it is used or ignored -- never fatal."""
    outcome = parse_request([2, method, params])
    assert isinstance(outcome, Notification | BadNotification)
    if isinstance(outcome, Notification):
        assert isinstance(outcome.method, str) and outcome.method
        assert isinstance(outcome.params, list)


@given(msgid=st.integers(0, MAX_MSGID), method=_wire_values, params=_wire_values)
@settings(max_examples=300, deadline=None)
def test_a_request_with_a_valid_msgid_is_always_answered(msgid, method, params):
    outcome = parse_request([0, msgid, method, params])
    assert isinstance(outcome, Request) or (isinstance(outcome, BadMessage)
                                            and outcome.msgid == msgid)
