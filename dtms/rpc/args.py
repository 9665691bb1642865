"""Argument checks shared by the RPC method handlers: each names the field and its bound in the
:class:`~dtms.errors.InvalidArgument` it raises (``int_arg(args, "limit", low=1, high=500)``)."""

from __future__ import annotations

import math
from typing import Any

from dtms.errors import InvalidArgument


def int_arg(args: dict[str, Any], name: str, *, default: int | None = None, low: int = 0,
             high: int = 2**63 - 1) -> int:
    value = args.get(name, default)
    if value is None:
        raise InvalidArgument("required", field=name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"must be an integer in {low}..{high}", field=name)
    return value


def bool_arg(args: dict[str, Any], name: str, default: bool = False) -> bool:
    value = args.get(name, default)
    if not isinstance(value, bool):
        raise InvalidArgument("must be true or false", field=name)
    return value


def str_arg(args: dict[str, Any], name: str, limit: int = 64) -> str | None:
    value = args.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise InvalidArgument(f"must be a string of at most {limit} characters", field=name)
    return value


def reason_arg(args: dict[str, Any], name: str, *, required: bool, limit: int = 256) -> str:
    """A person's reason (or name): stripped; blank counts as missing."""
    value = args.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidArgument("required: a non-empty string saying why", field=name)
        return ""
    text = str_arg(args, name, limit)
    assert text is not None
    return text.strip()


def only(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in args if k not in allowed)
    if unknown:
        raise InvalidArgument.many({k: "unknown field" for k in unknown})


def since_arg(args: dict[str, Any], default: float = 0.0) -> float:
    """``since``: epoch seconds, finite and >= 0 (NaN and infinities are refused too)."""
    since = args.get("since", default)
    if (isinstance(since, bool) or not isinstance(since, int | float)
            or not 0 <= since < math.inf):
        raise InvalidArgument("must be a timestamp in seconds >= 0", field="since")
    return float(since)
