"""msgpack-rpc framing for DTMS: message kinds, encoding, the bounded decoder, validation.

The wire format is the public msgpack-rpc spec, a plain msgpack stream on one TCP connection::

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]
    notification  [2, method, params]

``msgid`` is an int in ``0..2**32-1``. ``params`` is an array, in requests and notifications
alike; DTMS methods take one map of named arguments (``[{...}]``), ``[]`` means ``{}``, and DTMS
sends its notifications as ``[2, "trade.state", [{...}]]``. ``error`` is ``nil`` or the map of
:meth:`dtms.errors.DtmsError.to_wire`. A ``method`` may arrive as msgpack str or as bin holding
UTF-8 (pynvim sends bin): both are the same name.

What cannot be used: a request gets an error answer when its msgid is readable
(:class:`BadMessage`), else its connection is closed; a notification is never answered, so an
unusable one (:class:`BadNotification`) is logged, counted and ignored -- never a reason to close.

This module owns everything that is pure data: no sockets, no event loop. :class:`FrameDecoder`
wraps one ``msgpack.Unpacker`` with every limit (buffer, string/bin/array/map lengths, strict
map keys, no ext types -- including msgpack's built-in timestamp ext -1) and feeds it so that only
a *single* message larger than ``max_frame_bytes`` is rejected, never a burst of small pipelined
ones. Any decoder error is fatal for the stream: msgpack says an Unpacker must not be reused after
a failure, so the owner closes the connection.

Example::

    decoder = FrameDecoder(max_frame_bytes=1 << 20)
    for msg in decoder.feed(data):            # raises DecodeError subclasses on bad input
        outcome = parse_request(msg)          # Request | Notification | BadMessage | BadNotification
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from dtms.errors import DtmsError, InvalidArgument

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2
MAX_MSGID: Final = 2**32 - 1
#: The most rows one listing method (``trades``, ``actions``, ``transitions``, ``restarts``)
#: returns; the ``dtms`` command's ``--limit`` bounds are this too.
MAX_PAGE: Final = 1000

#: Upper bound on declared array/map lengths: msgpack pre-allocates containers from the declared
#: length, so without it 5 bytes could ask for a 4-billion-slot list.
MAX_CONTAINER_LEN: Final = 131_072


# --------------------------------------------------------------------------- decoding errors


class DecodeError(Exception):
    """The byte stream cannot be decoded; the connection must be closed.

    ``reason`` is a short, bounded label for metrics; ``str(exc)`` is the detail for logs.
    """

    reason: str = "malformed"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason


class FrameTooLarge(DecodeError):
    reason = "frame_too_large"


class ExtTypeRejected(DecodeError):
    reason = "ext_type"


def _reject_ext(code: int, data: bytes) -> Any:
    raise ExtTypeRejected(f"msgpack ext type {code} ({len(data)} bytes) is not accepted")


def make_unpacker(max_frame_bytes: int, *, max_container_len: int = MAX_CONTAINER_LEN
                  ) -> msgpack.Unpacker:
    """One streaming Unpacker with every limit set. Use one per connection, never reuse after an error."""
    container = max(1, min(max_container_len, max_frame_bytes))
    return msgpack.Unpacker(
        max_buffer_size=max_frame_bytes,
        strict_map_key=True,
        raw=False,
        ext_hook=_reject_ext,
        max_str_len=max_frame_bytes,
        max_bin_len=max_frame_bytes,
        max_array_len=container,
        max_map_len=container,
    )


def _check_no_timestamp(obj: Any) -> None:
    """msgpack decodes ext -1 (timestamp) itself, bypassing ``ext_hook``; reject it here."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())  # keys are str/bytes: strict_map_key
        elif isinstance(item, msgpack.Timestamp):
            raise ExtTypeRejected("msgpack ext type -1 (timestamp) is not accepted")


class FrameDecoder:
    """A bounded msgpack stream decoder. Fatal after the first error (``failed`` is then set)."""

    def __init__(self, max_frame_bytes: int, *, max_container_len: int = MAX_CONTAINER_LEN) -> None:
        if max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be > 0, got {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self._unpacker = make_unpacker(max_frame_bytes, max_container_len=max_container_len)
        self._fed = 0
        self.failed: DecodeError | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message held in the buffer."""
        return self._fed - self._unpacker.tell()

    def feed(self, data: bytes) -> Iterator[Any]:
        """Yield every complete message in ``data`` (plus what was buffered before).

        ``data`` is fed in slices no larger than the room left in the buffer, so the buffer only
        overflows when one message alone exceeds ``max_frame_bytes``. Raises :class:`DecodeError`
        (any msgpack or limit failure is converted); the decoder is unusable afterwards.
        """
        if self.failed is not None:
            raise DecodeError(f"decoder already failed: {self.failed}", reason="reused")
        view = memoryview(data)
        try:
            while view:
                room = self.max_frame_bytes - self.pending_bytes
                if room <= 0:
                    raise FrameTooLarge(
                        f"a message exceeds max_frame_bytes={self.max_frame_bytes}")
                piece, view = view[:room], view[room:]
                self._unpacker.feed(piece)
                self._fed += len(piece)
                for msg in self._unpacker:
                    _check_no_timestamp(msg)
                    yield msg
        except DecodeError as exc:
            self.failed = exc
            raise
        except msgpack.BufferFull as exc:
            self.failed = FrameTooLarge(f"a message exceeds max_frame_bytes={self.max_frame_bytes}")
            raise self.failed from exc
        except msgpack.StackError as exc:
            self.failed = DecodeError("msgpack nesting too deep", reason="too_deep")
            raise self.failed from exc
        except msgpack.FormatError as exc:
            self.failed = DecodeError(f"invalid msgpack byte {exc}".rstrip(), reason="format")
            raise self.failed from exc
        except ValueError as exc:
            # limits exceeded, invalid UTF-8, non-str map keys, ext_hook failures wrapped by msgpack
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ExtTypeRejected):
                self.failed = cause
            else:
                self.failed = DecodeError(f"{type(exc).__name__}: {exc}", reason="invalid")
            raise self.failed from exc
        except Exception as exc:  # msgpack documents no closed set; every failure is fatal
            self.failed = DecodeError(f"{type(exc).__name__}: {exc}", reason="unpack_error")
            raise self.failed from exc


# --------------------------------------------------------------------------- encoding


def pack(obj: Any) -> bytes:
    """Pack one message. Raises ``TypeError``/``ValueError`` for values msgpack cannot encode."""
    return msgpack.packb(obj, use_bin_type=True, datetime=False)


def encode_request(msgid: int, method: str, args: dict[str, Any] | None = None) -> bytes:
    return pack([REQUEST, msgid, method, [args] if args else []])


def encode_response(msgid: int, error: dict[str, Any] | None, result: Any) -> bytes:
    return pack([RESPONSE, msgid, error, result])


def encode_error(msgid: int, error: DtmsError) -> bytes:
    return encode_response(msgid, error.to_wire(), None)


def encode_notification(method: str, params: Any) -> bytes:
    """``[2, method, [params]]``: msgpack-rpc's params are an array, so the map is its one item."""
    return pack([NOTIFICATION, method, [params]])


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class Request:
    msgid: int
    method: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    msgid: int
    error: dict[str, Any] | None
    result: Any


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: Any


@dataclass(frozen=True, slots=True)
class BadMessage:
    """A message that must not be dispatched.

    With a ``msgid`` the peer gets ``error`` as the response; without one (``msgid is None``)
    there is nobody to answer and the connection is closed. ``reason`` is a bounded metrics label.
    """

    msgid: int | None
    error: DtmsError
    reason: str


@dataclass(frozen=True, slots=True)
class BadNotification:
    """A notification that cannot be used. Nobody waits for an answer: log it, count ``reason``
    (a bounded metrics label) and go on reading; ``detail`` says what was wrong."""

    detail: str
    reason: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def valid_msgid(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= MAX_MSGID


def args_from_params(params: Any) -> dict[str, Any]:
    """``[]`` -> ``{}``; ``[{...}]`` -> the map; anything else -> InvalidArgument(field="params")."""
    if not isinstance(params, list):
        raise InvalidArgument(f"must be an array, got {type(params).__name__}", field="params")
    if not params:
        return {}
    if len(params) != 1 or not isinstance(params[0], dict):
        raise InvalidArgument("must be [] or [{named arguments}]", field="params")
    args = params[0]
    bad = [k for k in args if not isinstance(k, str)]
    if bad:
        raise InvalidArgument(f"argument names must be strings, got {bad[0]!r:.40}", field="params")
    return args


def _method_name(value: Any) -> str | InvalidArgument:
    """The method name as a str, bin decoded as UTF-8; or the error naming ``method``."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return InvalidArgument(f"bin method name is not valid UTF-8 ({exc.reason} at byte "
                                   f"{exc.start}): {value[:40]!r}", field="method")
    if not isinstance(value, str) or not value:
        return InvalidArgument(f"must be a non-empty string (str or UTF-8 bin), got "
                               f"{value!r:.40}", field="method")
    return value


def _parse_notification(msg: list[Any], *, legacy_map: bool = False
                        ) -> Notification | BadNotification:
    method = _method_name(msg[1])
    if isinstance(method, InvalidArgument):
        return BadNotification(method.message, "notification_method")
    params = msg[2]
    if isinstance(params, list) or (legacy_map and isinstance(params, dict)):
        return Notification(method, params)
    return BadNotification(f"params: must be an array, got {type(params).__name__}",
                           "notification_params")


def parse_request(msg: Any) -> Request | Notification | BadMessage | BadNotification:
    """Validate one message received by the server.

    Returns a :class:`Request` to dispatch, a :class:`Notification` (a client may send them; DTMS
    has no notification methods, the server logs it), a :class:`BadNotification` (ignored) or a
    :class:`BadMessage`.
    """
    if not isinstance(msg, list):
        return BadMessage(None, InvalidArgument(f"message must be an array, got {type(msg).__name__}",
                                                field="message"), "not_array")
    if len(msg) == 3 and msg[0] == NOTIFICATION and _is_int(msg[0]):
        return _parse_notification(msg)
    if len(msg) < 2 or not _is_int(msg[1]):
        return BadMessage(None, InvalidArgument("no usable msgid", field="msgid"), "no_msgid")
    msgid = msg[1]
    if not 0 <= msgid <= MAX_MSGID:
        return BadMessage(msgid, InvalidArgument(f"must be an int in 0..{MAX_MSGID}, got {msgid}",
                                                 field="msgid"), "msgid_range")
    if not _is_int(msg[0]) or msg[0] != REQUEST:
        return BadMessage(msgid, InvalidArgument(
            f"expected 0 (request), got {msg[0]!r:.40}", field="type"), "type")
    if len(msg) != 4:
        return BadMessage(msgid, InvalidArgument(
            f"a request is [0, msgid, method, params], got {len(msg)} elements", field="message"),
            "shape")
    method = _method_name(msg[2])
    if isinstance(method, InvalidArgument):
        return BadMessage(msgid, method, "method_utf8" if isinstance(msg[2], bytes) else "method")
    try:
        args = args_from_params(msg[3])
    except InvalidArgument as err:
        return BadMessage(msgid, err, "params")
    return Request(msgid, method, args)


def parse_reply(msg: Any) -> Response | Notification | BadNotification:
    """Validate one message received by the client. Raises :class:`DecodeError` if malformed.

    A notification's params are the spec's array; a bare map (what DTMS sent before issue 13) is
    accepted too, so a new client still follows an older service.
    """
    if isinstance(msg, list) and msg and _is_int(msg[0]):
        if msg[0] == RESPONSE and len(msg) == 4 and valid_msgid(msg[1]) and (
                msg[2] is None or isinstance(msg[2], dict)):
            return Response(msg[1], msg[2], msg[3])
        if msg[0] == NOTIFICATION and len(msg) == 3:
            return _parse_notification(msg, legacy_map=True)
    raise DecodeError(f"unexpected message from server: {msg!r:.200}", reason="shape")


__all__ = [
    "REQUEST", "RESPONSE", "NOTIFICATION", "MAX_MSGID", "MAX_CONTAINER_LEN", "MAX_PAGE",
    "DecodeError", "FrameTooLarge", "ExtTypeRejected", "FrameDecoder", "make_unpacker",
    "pack", "encode_request", "encode_response", "encode_error", "encode_notification",
    "Request", "Response", "Notification", "BadMessage", "BadNotification",
    "valid_msgid", "args_from_params", "parse_request", "parse_reply",
]
