"""The replay's pictures (matplotlib, Agg, PNG) and the one self-contained HTML page.

This module owns :func:`write_pictures` and :func:`write_html`:

* ``equity.png``: the closed-trade equity curve with and without DTMS;
* ``trade_<ticket>.png`` per trade: the price (the bid) with the entry, the SL path as DTMS
  moved it, the TP, partial closes and hedges marked, both exits, and the state ladder as a
  coloured band underneath;
* ``report.html``: the totals, the per-trade table and every picture, embedded (data URIs:
  the page needs no network and no files next to it), each captioned with its file name.

matplotlib is the ``replay`` extra's: imported here only, when pictures are made.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from dtms.brokers.sim.history import Ticks
from dtms.replay.report import iso

STATE_COLOURS = {"HEALTHY": "#4caf50", "WARNING_L1": "#ffc107", "WARNING_L2": "#ff9800",
                 "HEDGED": "#e53935", "RECOVERING": "#42a5f5", "CLOSED": "#9e9e9e"}
_MARKERS = {"PARTIAL_CLOSE": ("v", "#6a1b9a", "partial close"),
            "CLOSE": ("X", "#000000", "DTMS close"),
            "HEDGE": ("^", "#e53935", "hedge"),
            "CLOSE_HEDGE": ("s", "#e53935", "hedge closed")}


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _dates(times: list[float]) -> list[Any]:
    from datetime import UTC, datetime
    return [datetime.fromtimestamp(t, UTC) for t in times]


def equity_figure(report: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    for side, colour in (("without", "#9e9e9e"), ("with", "#1565c0")):
        order = sorted(report["trades"], key=lambda t: (t[f"exit_{side}"]["time"] or math.inf))
        times, equity, total = [], [], 0.0
        for t in order:
            if t[f"exit_{side}"]["time"] is None:
                continue
            total += t[f"pnl_{side}"]
            times.append(t[f"exit_{side}"]["time"])
            equity.append(total)
        if times:
            ax.step(_dates([times[0], *times]), [0.0, *equity], where="post", color=colour,
                    label=f"{side} DTMS: {report['totals'][side]['pnl']:.2f}")
    ax.axhline(0.0, color="#cccccc", linewidth=0.8)
    ax.set_title("Closed-trade equity, with and without DTMS")
    ax.set_ylabel("P/L")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def trade_figure(trade: dict[str, Any], ticks: Ticks, path: Path) -> Path:
    import bisect

    plt = _plt()
    opened = trade["open_time"]
    ends = [e["time"] for e in (trade["exit_with"], trade["exit_without"]) if e["time"]]
    closed = max(ends) if ends else ticks.time[-1]
    span = max(closed - opened, 3600.0)
    lo = bisect.bisect_left(ticks.time, opened - span * 0.15)
    hi = bisect.bisect_right(ticks.time, closed + span * 0.1)
    times, bids = ticks.time[lo:hi], ticks.bid[lo:hi]
    fig, (ax, band) = plt.subplots(2, 1, figsize=(9, 4.2), dpi=90, sharex=True,
                                   gridspec_kw={"height_ratios": [12, 1]})
    ax.plot(_dates(times), bids, color="#607d8b", linewidth=0.8, label="bid")
    ax.axhline(trade["open_price"], color="#1565c0", linewidth=0.8, linestyle="--",
               label=f"entry {trade['open_price']}")
    if trade["tp"]:
        ax.axhline(trade["tp"], color="#2e7d32", linewidth=0.8, linestyle=":",
                   label=f"TP {trade['tp']}")
    end_with = trade["exit_with"]["time"] or closed
    if trade["sl"]:
        sl_t, sl_v = [opened], [trade["sl"]]
        for a in trade["actions"]:
            if a["kind"] == "MODIFY_SL" and a["price"]:
                sl_t.append(a["time"])
                sl_v.append(a["price"])
        sl_t.append(end_with)
        sl_v.append(sl_v[-1])
        ax.step(_dates(sl_t), sl_v, where="post", color="#c62828", linewidth=1.0,
                label="SL (as DTMS moved it)")
    seen = set()
    for a in trade["actions"]:
        if a["kind"] in _MARKERS:
            marker, colour, label = _MARKERS[a["kind"]]
            ax.scatter(_dates([a["time"]]), [a["price"]], marker=marker, color=colour, zorder=5,
                       label=None if label in seen else label)
            seen.add(label)
    for side, marker, colour in (("without", "o", "#9e9e9e"), ("with", "D", "#1565c0")):
        e = trade[f"exit_{side}"]
        if e["time"]:
            ax.scatter(_dates([e["time"]]), [e["price"]], marker=marker, color=colour, zorder=6,
                       label=f"exit {side} ({e['reason']})")
    ax.set_title(f"#{trade['ticket']} {trade['direction']} {trade['symbol']} {trade['volume']} "
                 f"-- with DTMS {trade['pnl_with']:.2f}, without {trade['pnl_without']:.2f}")
    ax.legend(loc="best", fontsize=7)
    states = trade["states"]
    for i, s in enumerate(states):
        start = s["time"]
        stop = states[i + 1]["time"] if i + 1 < len(states) else end_with
        if s["state"] == "CLOSED":
            continue
        band.axvspan(_dates([start])[0], _dates([max(stop, start + 1)])[0],
                     color=STATE_COLOURS.get(s["state"], "#bdbdbd"))
    band.set_yticks([])
    band.set_ylabel("state", fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_pictures(report: dict[str, Any], ticks: dict[str, Ticks], out: Path,
                   progress: Any = None) -> list[Path]:
    """equity.png and one trade_<ticket>.png per trade in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [equity_figure(report, out / "equity.png")]
    for i, trade in enumerate(report["trades"]):
        paths.append(trade_figure(trade, ticks[trade["symbol"]],
                                  out / f"trade_{trade['ticket']}.png"))
        if progress is not None:
            progress(i + 1, len(report["trades"]))
    return paths


def write_html(report: dict[str, Any], table_text: str, pictures: list[Path], out: Path) -> Path:
    """report.html: totals, the table and every picture embedded, captioned by file name."""
    rows = []
    for t in report["trades"]:
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            t["ticket"], t["symbol"], t["direction"], iso(t["open_time"]), t["pnl_without"],
            t["r_without"], t["exit_without"]["reason"], t["pnl_with"], t["r_with"],
            t["exit_with"]["reason"], len(t["actions"]))) + "</tr>")
    tot = []
    for side in ("without", "with"):
        s = report["totals"][side]
        tot.append(f"<tr><th>{side} DTMS</th><td>{s['pnl']}</td><td>{s['win_rate']:.0%}</td>"
                   f"<td>{s['avg_r']}</td><td>{s['max_drawdown']}</td></tr>")
    figures = []
    for p in pictures:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{p.name}">'
                       f"<figcaption>{html.escape(p.name)}</figcaption></figure>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>DTMS replay</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:2px 6px;text-align:right}}
figure{{margin:1em 0}}img{{max-width:100%}}</style></head><body>
<h1>DTMS replay: {report['replay']['start']} .. {report['replay']['end']}</h1>
<p>Policy overrides: {html.escape(str(report['replay']['policy'] or 'none'))}</p>
<h2>Totals</h2>
<table><tr><th></th><th>P/L</th><th>win rate</th><th>avg R</th><th>max drawdown</th></tr>
{''.join(tot)}</table>
<h2>Trades</h2>
<table><tr><th>ticket</th><th>symbol</th><th>dir</th><th>open</th><th>P/L without</th>
<th>R</th><th>exit</th><th>P/L with</th><th>R</th><th>exit</th><th>actions</th></tr>
{''.join(rows)}</table>
<h2>Figures</h2>
{''.join(figures)}
<pre>{html.escape(table_text)}</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
