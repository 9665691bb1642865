"""Trade request parsing and result building for order_send / order_check.

This module owns the translation of the dict a caller passes to order_send
into a TradeRequest namedtuple (types checked as the real package does,
defaults zero), the per-action required fields, and the construction of
OrderSendResult / OrderCheckResult values. Rejected carries a trade-server
retcode out of deep validation code; RequestError is a client-side argument
error (order_send returns None and last_error is (-2, message)).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from . import constants as c
from .types import OrderSendResult, TradeRequest

_INT_FIELDS = ("action", "magic", "order", "deviation", "type", "type_filling", "type_time",
               "position", "position_by")
_FLOAT_FIELDS = ("volume", "price", "stoplimit", "sl", "tp")
_STR_FIELDS = ("symbol", "comment")

REQUIRED_FIELDS: dict[int, tuple[str, ...]] = {
    c.TRADE_ACTION_DEAL: ("symbol", "volume", "type"),
    c.TRADE_ACTION_PENDING: ("symbol", "volume", "type", "price"),
    c.TRADE_ACTION_SLTP: ("position",),
    c.TRADE_ACTION_MODIFY: ("order", "price"),
    c.TRADE_ACTION_REMOVE: ("order",),
    c.TRADE_ACTION_CLOSE_BY: ("position", "position_by"),
}


class RequestError(ValueError):
    """The request argument itself is malformed (maps to RES_E_INVALID_PARAMS)."""


class Rejected(Exception):  # noqa: N818 - it is a server verdict, not a programming error
    """The trade server refuses the request with `retcode`."""

    def __init__(self, retcode: int, *, bid: float = 0.0, ask: float = 0.0,
                 comment: str | None = None) -> None:
        super().__init__(retcode)
        self.retcode = retcode
        self.bid = bid
        self.ask = ask
        self.comment = comment if comment is not None else c.RETCODE_COMMENTS.get(retcode, "")


def to_epoch(value: Any) -> int:
    """datetime (naive = UTC) or number -> int epoch seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"expected datetime or epoch seconds, got {type(value).__name__}")
    return int(value)


def parse_request(request: object) -> TradeRequest:
    """Validate the shape of an order_send request dict and build a TradeRequest."""
    if not isinstance(request, dict):
        raise RequestError('Invalid "request" argument')
    values: dict[str, Any] = dict.fromkeys(_INT_FIELDS, 0)
    values.update(dict.fromkeys(_FLOAT_FIELDS, 0.0))
    values.update(dict.fromkeys(_STR_FIELDS, ""))
    values["expiration"] = 0
    for key, value in request.items():
        if key in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise RequestError(f'Invalid "{key}" argument: expected int')
            values[key] = value
        elif key in _FLOAT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestError(f'Invalid "{key}" argument: expected float')
            values[key] = float(value)
        elif key in _STR_FIELDS:
            if not isinstance(value, str):
                raise RequestError(f'Invalid "{key}" argument: expected str')
            values[key] = value
        elif key == "expiration":
            values[key] = to_epoch(value)
        else:
            raise RequestError(f'Invalid request field "{key}"')
    if "action" not in request:
        raise RequestError('Invalid "action" argument: missing')
    for key in REQUIRED_FIELDS.get(values["action"], ()):
        if key not in request:
            raise RequestError(f'Invalid "{key}" argument: missing')
    return TradeRequest(**values)


def send_result(req: TradeRequest, retcode: int, request_id: int, *, deal: int = 0,
                order: int = 0, volume: float = 0.0, price: float = 0.0, bid: float = 0.0,
                ask: float = 0.0, comment: str | None = None) -> OrderSendResult:
    """An OrderSendResult echoing the request."""
    return OrderSendResult(
        retcode=retcode, deal=deal, order=order, volume=volume, price=price, bid=bid, ask=ask,
        comment=comment if comment is not None else c.RETCODE_COMMENTS.get(retcode, ""),
        request_id=request_id, retcode_external=0, request=req,
    )
