"""What every ``dtms`` command shares: exit codes, the demo constants, and output helpers
(JSON for scripts, a fixed-width table of trades for people)."""

from __future__ import annotations

import json
import sys
from typing import Any

from dtms.metrics import ACTOR_KINDS
from dtms.model import TradeState

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_READY, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
#: What the server accepts for ``trades`` ``state`` and ``restarts`` ``kind``.
TRADE_STATES = tuple(TradeState.__members__)
RESTART_KINDS = ACTOR_KINDS


def print_json(value: Any, stream: Any = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str), file=stream or sys.stdout)


def format_trades(trades: list[dict[str, Any]]) -> str:
    """A fixed-width table of trades for people."""
    cols = [("TICKET", "ticket", "{}"), ("SYMBOL", "symbol", "{}"), ("DIR", "direction", "{}"),
            ("VOLUME", "volume", "{:g}"), ("ENTRY", "entry_price", "{:g}"), ("SL", "sl", "{:g}"),
            ("TP", "tp", "{:g}"), ("STATE", "state", "{}"), ("SCORE", "score", "{:g}"),
            ("DEFENSIVE", "defensive", "{}"),
            ("CLOSE", "close_reason", "{}"), ("OWNER", "owner", "{}")]
    rows = [[h for h, _, _ in cols]]
    rows += [[fmt.format(t.get(k, "")) if t.get(k, "") != "" else "-" for _, k, fmt in cols]
             for t in trades]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"({len(trades)} trade{'s' if len(trades) != 1 else ''})")
    return "\n".join(lines)
