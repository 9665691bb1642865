"""What a trade's chart shows, as pure functions of the trade view, its journal and its
transitions (no I/O, no clock: ``now`` is passed in).

* :func:`pick_timeframe` -- the bar size that shows the trade's whole life in at most
  ``MAX_BARS`` bars (never fewer than ``MIN_BARS`` bars of context);
* :func:`sl_path` -- the stop as DTMS moved it: the stop at registration, then each stop
  modification the broker accepted (``MODIFY_SL`` rows ``done``, the ``sl`` of their request), at the
  time it was resolved, then the trade's stop now (a change made at the broker by hand shows as a
  last step);
* :func:`marks` -- the journal's actions and the state changes as points in time, for markers.

Times are wall-clock Unix seconds as the journal stores them; bars carry the broker's server time,
which is shifted by :func:`to_server_time` (MT5 servers count their own zone's clock as epoch).
"""

from __future__ import annotations

import math
from typing import Any

#: bar sizes the terminal serves, in seconds
TIMEFRAMES = (("M1", 60), ("M5", 300), ("M15", 900), ("M30", 1800), ("H1", 3600),
              ("H4", 14400), ("D1", 86400))
MAX_BARS = 300
MIN_BARS = 60
#: the journal kind that moves the stop (breakeven, trail, tighten: its obligation says which)
SL_KIND = "MODIFY_SL"


def pick_timeframe(opened_at: float, now: float) -> tuple[str, int]:
    """(timeframe, bar count) covering ``opened_at`` .. ``now`` plus some bars before it."""
    life = max(0.0, now - opened_at)
    for name, seconds in TIMEFRAMES:
        bars = math.ceil(life / seconds) + MIN_BARS // 4
        if bars <= MAX_BARS:
            return name, max(MIN_BARS, bars)
    return TIMEFRAMES[-1][0], MAX_BARS


def sl_path(trade: dict[str, Any], actions: list[dict[str, Any]], now: float
            ) -> list[tuple[float, float]]:
    """[(at, stop)] in time order, each point the stop from then on (0 = no stop)."""
    start = float(trade.get("created_at") or 0.0)
    path = [(start, float(trade.get("initial_sl") or 0.0))]
    moves = sorted((float(a["resolved_at"] or a["created_at"]), float(a["request"]["sl"]))
                   for a in actions
                   if a.get("kind") == SL_KIND and a.get("status") == "done"
                   and isinstance(a.get("request"), dict) and "sl" in a["request"])
    for at, sl in moves:
        if sl != path[-1][1]:
            path.append((max(at, start), sl))
    current = float(trade.get("sl") or 0.0)
    end = float(trade.get("closed_at") or 0.0) or now
    if current != path[-1][1]:
        path.append((max(float(trade.get("updated_at") or end), path[-1][0]), current))
    path.append((max(end, path[-1][0]), path[-1][1]))
    return path


def marks(actions: list[dict[str, Any]], transitions: list[dict[str, Any]]
          ) -> list[dict[str, Any]]:
    """Markers in time order: ``{"at", "type": "action"|"state", "label", "status"}``; an
    action is labelled with its obligation (``sl:breakeven``, ``L2:partial``...)."""
    out = [{"at": float(a["created_at"]), "type": "action",
            "label": a.get("obligation") or a["kind"], "status": a["status"], "seq": a["seq"]}
           for a in actions]
    out += [{"at": float(t["at"]), "type": "state",
             "label": f"{t['from_state'] or '-'} -> {t['to_state']}", "status": t["reason"]}
            for t in transitions]
    return sorted(out, key=lambda m: m["at"])


def to_server_time(at: float, offset_s: float) -> float:
    """A wall-clock time on the bars' axis (the broker's server time)."""
    return at + offset_s if at else 0.0
