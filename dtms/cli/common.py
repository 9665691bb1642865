"""What every ``dtms`` command shares: exit codes, JSON output for scripts, and ``--since``
parsing (tables for people are in :mod:`dtms.cli.tables`)."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from dtms.metrics import ACTOR_KINDS
from dtms.model import TradeState

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_READY, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
#: What the server accepts for ``trades`` ``state`` and ``restarts`` ``kind``.
TRADE_STATES = tuple(TradeState.__members__)
RESTART_KINDS = ACTOR_KINDS


def print_json(value: Any, stream: Any = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str), file=stream or sys.stdout)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_SINCE_HELP = ("a duration back from now (30s, 10m, 2h, 1d, 1w), an ISO time (2026-12-01T10:00, "
               "UTC unless it names its offset) or a Unix timestamp")


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` as the wire's epoch seconds: ``10m`` / ``2h`` back from ``now``, an ISO time
    (naive = UTC), or a Unix timestamp; raises ValueError naming the forms it takes."""
    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", t.lower())
    if m:
        now = time.time() if now is None else now
        return max(0.0, now - float(m.group(1)) * _UNITS[m.group(2)])
    try:
        value = float(t)
    except ValueError:
        pass
    else:
        if value >= 0 and math.isfinite(value):
            return value
        raise ValueError(f"must be {_SINCE_HELP}, got {text!r}")
    try:
        moment = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"must be {_SINCE_HELP}, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp())
