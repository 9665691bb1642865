"""The replay's figures: per trade with and without DTMS, the totals, and ``report.json``.

This module owns :func:`build_report` (a :class:`~dtms.replay.engine.RawRun` in, the report
dict out) and :func:`totals`. Units, as issue 16 fixes them: P/L in the account currency net
of swap and commission; R = P/L over the money the initial stop put at risk (``null`` without
a stop); ``exit_*`` is ``{"time", "price", "reason"}``; an action's ``price`` is the new level
for a stop move and the fill price for a close; ``win_rate`` is a fraction (P/L > 0 wins);
``max_drawdown`` is a positive amount of money on the closed-trade equity curve (trades in
the order they closed). MAE/MFE are the worst and best open P/L of the initial volume on the
way (money).

Without DTMS a trade is held to its own SL/TP, filled by the terminal's rules
(:func:`~dtms.brokers.sim.history.hold_to_exit`), or to the history's end.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from dtms.brokers.sim import constants as c
from dtms.brokers.sim.history import hold_to_exit
from dtms.replay.engine import RawRun, TradeRun

_DEAL_REASON = {c.DEAL_REASON_SL: "SL", c.DEAL_REASON_TP: "TP", c.DEAL_REASON_SO: "STOP_OUT"}
#: journal kinds whose price is a fill (the others move a stop)
_FILLS = {"PARTIAL_CLOSE", "CLOSE", "HEDGE", "CLOSE_HEDGE"}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(deal: Any) -> float:
    return deal.profit + deal.commission + deal.swap + getattr(deal, "fee", 0.0)


def _r(pnl: float, risk: float | None) -> float | None:
    return round(pnl / risk, 4) if risk else None


def actions_of(run: TradeRun) -> list[dict[str, Any]]:
    """DTMS's actions that were carried out, in order, as the report shows them."""
    out = []
    for a in run.actions:
        if a["status"] != "done":
            continue
        req, res = a["request"], a["result"]
        fill = a["kind"] in _FILLS
        price = res.get("price") if fill else req.get("sl")
        out.append({"time": a["created_at"], "kind": a["kind"],
                    "price": float(price or 0.0),
                    "volume": float(res.get("volume") or req.get("volume") or 0.0) if fill
                    else 0.0,
                    "reason": a.get("reason", "")})
    return out


def _exit_with(run: TradeRun) -> dict[str, Any]:
    outs = [d for d in run.deals if d.position_id == run.ticket and d.entry != c.DEAL_ENTRY_IN]
    if not outs:
        return {"time": None, "price": None, "reason": "OPEN"}
    last = outs[-1]
    if run.ended:
        reason = "END"
    elif run.row.get("close_reason"):
        reason = run.row["close_reason"]
    else:
        reason = _DEAL_REASON.get(last.reason, "CLOSED")
    return {"time": last.time_msc / 1000.0, "price": last.price, "reason": reason}


def trade_report(raw: RawRun, run: TradeRun) -> dict[str, Any]:
    t = run.trade
    spec = raw.specs[t.symbol]
    ticks = raw.ticks[t.symbol]
    buy = t.direction == "BUY"

    def money(close: float) -> float:
        return raw.profit(t.symbol, t.direction, t.volume, t.open_price, close)

    risk = abs(money(t.sl)) if t.sl else None
    out_time, out_price, out_reason, worst, best = hold_to_exit(ticks, spec, buy, t.open_time,
                                                                t.sl, t.tp)
    pnl_without = money(out_price)
    exit_with = _exit_with(run)
    pnl_with = round(sum(_money(d) for d in run.deals), 2)
    until = exit_with["time"] if exit_with["time"] is not None else math.inf
    *_, worst_w, best_w = hold_to_exit(ticks, spec, buy, t.open_time, 0.0, 0.0, until=until)
    return {
        "ticket": t.ticket, "symbol": t.symbol, "direction": t.direction,
        "open_time": t.open_time, "open_price": t.open_price, "volume": t.volume,
        "sl": t.sl, "tp": t.tp, "risk": round(risk, 2) if risk else None,
        "pnl_without": round(pnl_without, 2), "pnl_with": pnl_with,
        "r_without": _r(pnl_without, risk), "r_with": _r(pnl_with, risk),
        "exit_without": {"time": out_time, "price": out_price, "reason": out_reason},
        "exit_with": exit_with,
        "mae_without": round(min(0.0, money(worst)), 2),
        "mfe_without": round(max(0.0, money(best)), 2),
        "mae_with": round(min(0.0, money(worst_w)), 2),
        "mfe_with": round(max(0.0, money(best_w)), 2),
        "actions": actions_of(run),
        "states": [{"time": s["at"], "state": s["to_state"], "reason": s["reason"]}
                   for s in run.transitions],
        "hedges": run.hedges,
        "managed": not run.error, "error": run.error,
    }


def totals(trades: list[dict[str, Any]], side: str) -> dict[str, Any]:
    """pnl, win_rate, avg_r, max_drawdown of one side ("with" / "without")."""
    pnls = [t[f"pnl_{side}"] for t in trades]
    rs = [t[f"r_{side}"] for t in trades if t[f"r_{side}"] is not None]
    order = sorted(trades, key=lambda t: (t[f"exit_{side}"]["time"] or math.inf, t["ticket"]))
    equity = peak = drawdown = 0.0
    for t in order:
        equity += t[f"pnl_{side}"]
        peak = max(peak, equity)
        drawdown = max(drawdown, peak - equity)
    return {"pnl": round(sum(pnls), 2),
            "win_rate": round(sum(1 for p in pnls if p > 0) / len(pnls), 4) if pnls else 0.0,
            "avg_r": round(sum(rs) / len(rs), 4) if rs else None,
            "max_drawdown": round(drawdown, 2), "trades": len(pnls)}


def build_report(raw: RawRun) -> dict[str, Any]:
    trades = [trade_report(raw, run) for run in raw.runs]
    return {"trades": trades,
            "totals": {"with": totals(trades, "with"), "without": totals(trades, "without")},
            "replay": {"start": iso(raw.start), "end": iso(raw.end), "policy": raw.policy,
                       "symbols": sorted(raw.ticks), "ticks": {s: len(t) for s, t in
                                                               raw.ticks.items()},
                       "wall_s": round(raw.wall_s, 3)}}


def table(report: dict[str, Any]) -> str:
    """The per-trade table and the totals as plain text (what ``dtms replay`` prints)."""
    lines = [f"{'ticket':>10} {'symbol':<8} {'dir':<4} {'without':>10} {'R':>6} {'exit':<6} "
             f"{'with':>10} {'R':>6} {'exit':<12} actions"]

    def r(v: float | None) -> str:
        return "" if v is None else f"{v:.2f}"
    for t in report["trades"]:
        lines.append(f"{t['ticket']:>10} {t['symbol']:<8} {t['direction']:<4} "
                     f"{t['pnl_without']:>10.2f} {r(t['r_without']):>6} "
                     f"{t['exit_without']['reason']:<6} {t['pnl_with']:>10.2f} "
                     f"{r(t['r_with']):>6} {t['exit_with']['reason']:<12} "
                     f"{len(t['actions'])}")
    for side in ("without", "with"):
        s = report["totals"][side]
        lines.append(f"{side + ' DTMS:':<14} P/L {s['pnl']:.2f}  win rate {s['win_rate']:.0%}  "
                     f"avg R {r(s['avg_r']) or '-'}  max drawdown {s['max_drawdown']:.2f}")
    return "\n".join(lines)
