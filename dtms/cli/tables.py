"""The CLI's tables for people, drawn with rich: trades, actions, transitions, restarts and the
shadow report. Each ``*_table`` returns a :class:`rich.table.Table`; :func:`render` draws any
renderable to text at a fixed width (what the tests read) and :func:`show` prints it.

Times are shown in UTC (``2026-12-01 10:42:07``), prices as the service sent them, a missing
value as ``-``. ``--json`` bypasses all of this: scripts get the service's own maps.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

#: the request fields worth a glance in an action row, in this order
_REQUEST_FIELDS = ("sl", "volume", "price", "position")


def _cell(value: Any, fmt: str = "{}") -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}" if fmt == "{}" else fmt.format(value)
    return fmt.format(value)


def when(ts: Any) -> str:
    """An epoch time as UTC text; 0 or none as ``-``."""
    if not isinstance(ts, int | float) or ts <= 0:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def trades_table(trades: Iterable[Mapping[str, Any]]) -> Table:
    """One row per trade: its position, its current price and open P/L (money and R) when the
    service sent them (``trades --market``), its state, and whether it is paused."""
    table = _table("TICKET", "SYMBOL", "DIR", "VOLUME", "ENTRY", "PRICE", "SL", "TP", "P/L", "R",
                   "STATE", "SCORE", "PAUSED", "MODE", "CLOSE", "OWNER")
    for t in trades:
        policy = t.get("policy") or {}
        table.add_row(
            _cell(t.get("ticket")), _cell(t.get("symbol")), _cell(t.get("direction")),
            _cell(t.get("volume")), _cell(t.get("entry_price")), _cell(t.get("price")),
            _cell(t.get("sl") or None), _cell(t.get("tp") or None),
            _cell(t.get("open_pl"), "{:.2f}"), _cell(t.get("open_r"), "{:+.2f}"),
            _cell(t.get("state")), _cell(t.get("score")),
            "yes" if t.get("paused") else "no", _cell(t.get("mode") or policy.get("mode")),
            _cell(t.get("close_reason")), _cell(t.get("owner")))
    return table


def _request(request: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_cell(request[k])}" for k in _REQUEST_FIELDS if k in request)


def actions_table(actions: Iterable[Mapping[str, Any]]) -> Table:
    table = _table("TIME", "TICKET", "SEQ", "KIND", "OBLIGATION", "STATUS", "RETCODE",
                   "REQUEST", "REASON")
    for a in actions:
        table.add_row(when(a.get("created_at")), _cell(a.get("ticket")), _cell(a.get("seq")),
                      _cell(a.get("kind")), _cell(a.get("obligation")), _cell(a.get("status")),
                      _cell(a.get("retcode") or None), _request(a.get("request") or {}) or "-",
                      _cell(a.get("reason")))
    return table


def transitions_table(transitions: Iterable[Mapping[str, Any]]) -> Table:
    table = _table("TIME", "FROM", "TO", "REASON")
    for t in transitions:
        table.add_row(when(t.get("at")), t.get("from_state") or "(new)", _cell(t.get("to_state")),
                      _cell(t.get("reason")))
    return table


def restarts_table(restarts: Iterable[Mapping[str, Any]]) -> Table:
    table = _table("TIME", "KIND", "SUPERVISOR", "CHILD", "ACTION", "ATTEMPT", "BACKOFF",
                   "EXCEPTION")
    for r in restarts:
        table.add_row(when(r.get("at")), _cell(r.get("kind")), _cell(r.get("supervisor")),
                      _cell(r.get("child")), _cell(r.get("action")), _cell(r.get("attempt")),
                      _cell(r.get("backoff_s"), "{:.2f}s"), _cell(r.get("exception")))
    return table


def shadow_table(report: Mapping[str, Any]) -> Group:
    """The shadow report: a row per trade, the totals, then what it would have done."""
    table = _table("TICKET", "ACTIONS", "CLOSED VOLUME", "P/L DIFFERENCE")
    for t in report.get("trades", ()):
        table.add_row(_cell(t["ticket"]), _cell(t["actions"]), _cell(t["closed_volume"]),
                      _cell(t["pnl_difference"], "{:+.2f}"))
    table.add_section()
    table.add_row("total", _cell(report.get("actions")), _cell(report.get("closed_volume")),
                  _cell(report.get("pnl_difference"), "{:+.2f}"))
    by_kind = ", ".join(f"{k} {n}" for k, n in (report.get("by_kind") or {}).items())
    return Group(table, Text(f"since {when(report.get('since'))} UTC: {by_kind or 'nothing'}; "
                             f"stops moved {report.get('stops_moved', 0)} (not priced)"))


def count_line(n: int, noun: str) -> str:
    return f"({n} {noun}{'s' if n != 1 else ''})"


def render(*renderables: RenderableType, width: int = 120) -> str:
    """``renderables`` drawn as plain text (no colours) at ``width`` columns."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False,
                      legacy_windows=False, soft_wrap=False)
    for r in renderables:
        console.print(r)
    return out.getvalue()


def show(*renderables: RenderableType, stream: Any = None) -> None:
    """Print to a terminal (its width and colours) or, piped, as plain text."""
    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    # piped (grep, a file): one line per row, not folded at 80 columns
    width = None if tty else 240
    console = Console(file=stream, soft_wrap=False, width=width)
    for r in renderables:
        console.print(r)


__all__ = ["actions_table", "count_line", "render", "restarts_table", "shadow_table", "show",
           "trades_table", "transitions_table", "when"]
