"""``python -m bench all [--quick] [--json PATH]``: every benchmark, then one table of the
issue tracker's performance targets, each with its baseline measured in the same run.

The benchmarks' own tables are printed first (stdout), as each prints them alone; the summary
follows. ``--quick`` keeps the whole run under about two minutes on 2 cores by measuring fewer
and smaller configurations (the sizes are in the table); the default measures the targets'
own sizes (100,000 trades), median of several runs where a benchmark repeats, and takes about
an hour.

Rows (target from the performance issue; ``result`` is PASS or FAIL against it, ``-`` where
the run measured a smaller size than the target names):

* durable registrations/s, 64 clients pipelined -- vs the msgpack echo floor (ratio: share of
  the transport's rate) and vs baseline 1, the earlier design's HTTP pattern (x: times faster);
* one client registering sequentially (a bot registering the trade it just opened): p50
  latency, vs baseline 1's rate for the same client;
* registration p99 at 5,000/s offered (open loop), and the rate actually answered;
* live trades in one process: RSS of the largest engine size, projected to 100,000 when smaller;
* idle CPU with many trades over 20 symbols at 10 ticks/s each -- vs no ticks at all;
* tick -> decision p99 on one symbol, a tick crossing 10 triggers -- vs the index off
  (baseline 2: every tick to every trade of the symbol);
* bar close -> every trade re-scored, 10,000 trades -- vs the pure policy alone;
* cold start to ready with stored trades -- vs an empty store;
* durable writes/s with group commit vs one commit per write (64 writers): the store alone;
* one terminal call through ``dtms terminal-bridge`` over loopback (symbol_info_tick,
  positions_get, order_send): p50 and p99 -- vs the terminal embedded in the process (ratio of
  the medians) and ``dtms sim-terminal``; no target (the issue asks for the figure);
* supervised restart of one crashed trade actor (decision + state reload, backoff excluded)
  during a crash storm over 10,000 trades -- vs the others' tick -> decision p99 without the
  storm (ratio: storm p99 / no-storm p99; PASS needs restart p99 <= 1 ms, no give-up, no
  escalation and the ratio within ``engine.STORM_TOLERANCE``);
* ``dtms replay`` of one year of M5 bars with 100 trades: wall seconds and bars replayed/s --
  vs the pure policy alone on the same bars (``bench/replay.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import bridge, coldstart, commit, engine, registration
from bench import replay as replay_bench


def _rate(x: float) -> str:
    return f"{x:,.0f}/s"


def _verdict(ok: bool, measured_at_target: bool = True) -> str:
    return ("PASS" if ok else "FAIL") if measured_at_target else "-"


def summary_rows(reg: list[registration.Row], cold: list[coldstart.Row],
                 com: list[commit.Row], eng: dict[str, Any],
                 bri: list[bridge.Row] | None = None,
                 rep: replay_bench.Row | None = None) -> list[tuple[str, ...]]:
    """(figure, target, DTMS, baseline, ratio, result) for each target."""
    rows: list[tuple[str, ...]] = []
    by = {(r.clients, r.mode): r for r in reg}
    if (p := by.get((64, "pipelined"))) is not None:
        http = (f"; earlier design {_rate(p.http.rate)}" if p.http else "")
        rows.append(("registrations/s, 64 clients pipelined",
                     ">= 5x earlier design, >= 0.5 of floor, >= 10,000/s",
                     f"{_rate(p.dtms.rate)} (p50 {p.dtms.p50_ms:,.0f} ms)",
                     f"echo floor {_rate(p.floor.rate)}{http}",
                     f"{p.ratio:.3f} of floor" + (f"; {p.versus_http:.1f}x HTTP" if p.http
                                                 else ""),
                     _verdict(p.dtms.rate >= 10_000 and p.ratio >= 0.5
                              and (p.http is None or p.versus_http >= 5.0))))
    if (one := by.get((1, "sequential"))) is not None:
        rows.append(("one client, sequential: latency p50", "<= 0.5 ms, >= 2x earlier design",
                     f"p50 {one.dtms.p50_ms:.2f} ms ({_rate(one.dtms.rate)})",
                     f"earlier design {_rate(one.http.rate)}" if one.http else "-",
                     f"{one.versus_http:.2f}x HTTP" if one.http else "-",
                     _verdict(one.dtms.p50_ms <= 0.5
                              and (one.http is None or one.versus_http >= 2.0))))
    if (q := by.get((64, "paced"))) is not None:
        answered = q.dtms.rate
        rows.append(("registration p99 at 5,000/s offered", "<= 10 ms",
                     f"p99 {q.dtms.p99_ms:,.1f} ms (answered {_rate(answered)})",
                     f"echo floor p99 {q.floor.p99_ms:.2f} ms",
                     f"{q.dtms.p99_ms / q.floor.p99_ms:,.0f}x floor" if q.floor.p99_ms else "-",
                     _verdict(q.dtms.p99_ms <= 10.0 and answered >= 4_500)))
    engines = eng.get("engine", [])
    if engines:
        big = max(engines, key=lambda r: r["trades"])
        n = big["trades"]
        total = big["rss_ready"] - (big["rss_sim"] - big["rss_base"])
        per = (big["rss_ready"] - big["rss_sim"]) / n
        projected = big["rss_base"] + per * 100_000
        rows.append(("RSS, 100,000 live trades", "<= 0.5 GiB, <= 4 KiB/trade",
                     f"{engine._size(total)} at {n:,} ({per / 1024:.1f} KiB/trade)"
                     + ("" if n >= 100_000 else f"; 100k projected {engine._size(projected)}"),
                     f"before DTMS {engine._size(big['rss_sim'])}", "-",
                     _verdict(total <= 0.5 * engine.GIB and per <= 4096, n >= 100_000)))
        on, off = big["on"], big["off"]
        rows.append((f"tick -> decision p99, {n:,} trades, 10 crossed", "<= 2 ms",
                     f"p99 {engine._ms(on['p99_s'])} (p50 {engine._ms(on['p50_s'])})",
                     f"index off p99 {engine._ms(off['p99_s'])}",
                     f"{engine._x(off['p99_s'], on['p99_s'])} faster",
                     _verdict(on["p99_s"] <= 0.002, n >= 100_000)))
    if (idle := eng.get("idle")) is not None:
        t, quiet = idle["ticking"], idle["quiet"]
        rows.append((f"idle CPU, {idle['trades']:,} trades, 20 symbols x 10 ticks/s",
                     "<= 3 % of a core", f"{t['dtms'] * 100:.1f} %",
                     f"no ticks {quiet['dtms'] * 100:.1f} %",
                     engine._x(t["dtms"], quiet["dtms"]),
                     _verdict(t["dtms"] <= 0.03, idle["trades"] >= 100_000)))
    if (sc := eng.get("scoring")) is not None:
        s = sc["scoring"]
        rows.append((f"bar close -> all re-scored, {sc['trades']:,} trades", "<= 50 ms",
                     f"{engine._ms(s['tick_p50_s'])} (worst {engine._ms(s['tick_p99_s'])})",
                     f"policy alone {engine._ms(s['policy_s'])}",
                     engine._x(s["tick_p50_s"], s["policy_s"]),
                     _verdict(s["tick_p50_s"] <= 0.050)))
    if cold:
        empty = next((r for r in cold if r.stored == 0), None)
        big_c = max(cold, key=lambda r: r.stored)
        rows.append((f"cold start to ready, {big_c.stored:,} stored trades", "<= 10 s @100k",
                     f"{big_c.median_s:.2f} s (max {big_c.max_s:.2f} s)",
                     f"empty store {empty.median_s:.2f} s" if empty else "-",
                     f"{big_c.versus_empty:.1f}x empty",
                     _verdict(big_c.max_s <= 10.0, big_c.stored >= 100_000)))
    group = {(r.mode, r.writers): r for r in com}
    if (g := group.get(("group", 64))) and (s1 := group.get(("single", 64))):
        raw = group.get(("raw", 1))
        rows.append(("durable writes/s, store, 64 writers", "-",
                     f"group commit {_rate(g.run.rate)} (batch {g.run.batch:.0f})",
                     f"one commit each {_rate(s1.run.rate)}"
                     + (f"; raw sqlite3 {_rate(raw.run.rate)}" if raw else ""),
                     f"{g.versus:.1f}x", "-"))
    if (st := eng.get("storm")) is not None:
        c, calm, storm = st["crash"], st["calm"], st["storm"]
        restart_ok, unchanged = engine.storm_verdict(st)
        rows.append(("supervised restart of one crashed trade actor",
                     "<= 1 ms p99, others' tick-to-decision unchanged",
                     f"p99 {engine._ms(c['p99_s'])} (p50 {engine._ms(c['p50_s'])}), "
                     f"{c['crashes']:,} crashes, {c['give_ups']} give-ups, "
                     f"{c['escalations']} escalations; {st['trades']:,} trades",
                     f"others' p99 no storm {engine._ms(calm['p99_s'])}, storm "
                     f"{engine._ms(storm['p99_s'])}",
                     f"{storm['p99_s'] / calm['p99_s']:.2f}x p99 in the storm"
                     if calm["p99_s"] > 0 else "-",
                     _verdict(restart_ok and unchanged, st["trades"] >= engine.STORM_TRADES)))
    by_call = {(r.backend, r.call): r for r in bri or ()}
    for call in bridge.CALLS:
        b, e, sr = (by_call.get((k, call)) for k in ("bridge", "embedded", "sim-remote"))
        if b is not None and e is not None:
            rows.append((f"terminal call over the bridge, loopback: {call}", "-",
                         f"p50 {b.p50_us:,.0f} us (p99 {b.p99_us:,.0f} us)",
                         f"embedded p50 {e.p50_us:,.0f} us"
                         + (f"; sim-terminal {sr.p50_us:,.0f} us" if sr else ""),
                         f"{b.versus_embedded:.1f}x embedded", "-"))
    if rep is not None:
        rows.append(replay_bench.summary_row(rep, _verdict))
    return rows


HEADERS = ("figure", "target", "DTMS", "baseline (same run)", "ratio", "result")


def format_summary(rows: list[tuple[str, ...]], *, quick: bool, seconds: float) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    head = (f"DTMS performance summary  {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} "
            f"cores  Python {platform.python_version()}  {'--quick' if quick else 'full'} run, "
            f"{seconds / 60:.1f} min")
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench all", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one run each (< 2 min)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = p.parse_args(argv)
    quick = args.quick
    started = time.monotonic()

    def step(what: str) -> None:
        print(f"[bench all] {what} ({time.monotonic() - started:.0f} s)", file=sys.stderr,
              flush=True)

    step("registration")
    count = 2_000 if quick else registration.DEFAULT_COUNT
    reg_reps = 1 if quick else registration.DEFAULT_REPS
    only = {(1, "sequential"), (64, "pipelined"), (64, "paced")} if quick else None
    reg = registration.run_bench(count, reg_reps, only=only)
    print(registration.format_table(reg, count=count, reps=reg_reps), flush=True)

    step("commit")
    com_count = commit.QUICK_COUNT if quick else commit.DEFAULT_COUNT
    com_reps = 1 if quick else commit.DEFAULT_REPS
    com = commit.run_bench(com_count, reps=com_reps, writers=(1, 64) if quick else (1, 16, 64))
    print(commit.format_table(com, count=com_count, reps=com_reps), flush=True)

    step("coldstart")
    cold_sizes = (0, 10_000) if quick else (0, 10_000, 100_000)
    cold_reps = 1 if quick else coldstart.DEFAULT_REPS
    cold = coldstart.run_bench(cold_sizes, cold_reps)
    print(coldstart.format_table(cold, reps=cold_reps), flush=True)

    step("engine")
    eng = engine.run_bench((2_000,) if quick else engine.DEFAULT_SIZES, quick=quick,
                           idle_trades=2_000 if quick else 100_000,
                           scoring_trades=2_000 if quick else engine.SCORING_TRADES,
                           storm_trades=(engine.QUICK_STORM_TRADES if quick
                                         else engine.STORM_TRADES))
    print(engine.format_table(eng), flush=True)

    step("bridge")
    bri = bridge.run_bench(bridge.QUICK_COUNT if quick else bridge.DEFAULT_COUNT)
    print(bridge.format_table(bri), flush=True)

    step("replay")
    rep = replay_bench.run_bench(5_000 if quick else replay_bench.YEAR_BARS, 10 if quick else 100,
                                 policy_bars=500 if quick else 3_000)
    print(replay_bench.format_table(rep), flush=True)

    rows = summary_rows(reg, cold, com, eng, bri, rep)
    print(format_summary(rows, quick=quick, seconds=time.monotonic() - started), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bench": "all", "quick": quick, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "summary": [dict(zip(HEADERS, r, strict=True)) for r in rows],
            "registration": registration.to_json(reg, count=count, reps=reg_reps),
            "commit": commit.to_json(com, count=com_count, reps=com_reps),
            "coldstart": coldstart.to_json(cold, reps=cold_reps), "engine": eng,
            "bridge": bridge.to_json(bri),
            "replay": replay_bench.to_json(rep)}, indent=2))
    return 0
