"""The engine benchmark's measuring functions run in a tiny configuration (no timing asserted)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import anyio

from bench.engine import HEADERS, engine_run, format_table, idle_run, rows_of, storm_run

N = 200
K = 10


def _numbers(cell: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*\.?\d*", cell)]


def test_engine_bench_fills_every_row_with_finite_numbers_and_the_index_tells_fewer_trades(
        tmp_path: Path):
    engine = anyio.run(lambda: engine_run(N, k=K, ticks_on=4, ticks_off=2, bar_closes=2,
                                          db_path=str(tmp_path / "engine.sqlite3")))
    idle = anyio.run(lambda: idle_run(N, symbols=3, seconds=0.5, quiet_seconds=0.5,
                                      db_path=str(tmp_path / "idle.sqlite3")))

    on, off = engine["on"], engine["off"]
    assert (on["ticks"], off["ticks"]) == (4, 2)
    assert on["events"] == on["decisions"] == 4 * K           # the index told the crossed trades
    assert off["events"] == off["decisions"] == 2 * N         # broadcast told every trade
    assert on["events"] / on["ticks"] < off["events"] / off["ticks"]
    scoring = engine["scoring"]
    assert scoring["bar_closes"] == 2 and scoring["decisions"] == scoring["expected"] == 2 * N
    assert on["restarts"] == off["restarts"] == scoring["restarts"] == 0
    assert idle["trades"] == 3 * (N // 3) and idle["ticking"]["events"] == 0
    for figure in (on, off, scoring):
        for key in ("p50_s", "p99_s", "tick_p50_s", "tick_p99_s"):
            assert math.isfinite(figure[key]) and figure[key] > 0
    # RSS may stay flat in so small a run (freed pages reused): only its order is pinned
    assert engine["rss_ready"] >= engine["rss_sim"] >= engine["rss_base"] > 0

    results = {"engine": [engine], "scoring": engine, "idle": idle}
    rows = rows_of(results)
    assert [r[0] for r in rows] == ["tick -> decision", "tick -> last decision",
                                    "bar close -> all scored", "market_signals", "RSS",
                                    "idle CPU"]
    for row in rows:
        assert len(row) == len(HEADERS)
        for cell in row[2:3] + row[4:5]:   # median and baseline always hold a figure
            values = _numbers(cell)
            assert values and all(math.isfinite(v) for v in values), row
    table = format_table(results).splitlines()
    assert len(table) >= 2 + len(rows)


def test_crash_storm_rotates_tickets_below_their_limit_and_no_supervisor_escalates(
        tmp_path: Path):
    from bench import summary

    storm = anyio.run(lambda: storm_run(N, k=K, ticks=3, per_ticket=3,
                                        db_path=str(tmp_path / "storm.sqlite3")))

    calm, during, crash = storm["calm"], storm["storm"], storm["crash"]
    assert storm["per_ticket"] == 3 < storm["max_restarts"]
    # only the crossed trades' decisions are sampled: k per tick, none of a restarted trade's
    for figure in (calm, during):
        assert figure["ticks"] == 3
        assert figure["events"] == figure["decisions"] == figure["expected"] == 3 * K
        for key in ("p50_s", "p99_s"):
            assert math.isfinite(figure[key]) and figure[key] > 0
    assert calm["restarts"] == 0 and during["restarts"] == crash["in_window"] > 0
    # every crash restarted and reloaded, tickets used in turn, nobody given up or escalated
    assert crash["crashes"] == crash["restarts"] == crash["reloaded"] > 0
    assert crash["give_ups"] == crash["escalations"] == 0
    assert crash["lasted"] and crash["tickets"] < crash["pool"]
    assert 3 * (crash["tickets"] - 1) < crash["crashes"] <= 3 * crash["tickets"]
    for key in ("p50_s", "p99_s", "decision_p50_s", "decision_p99_s", "reload_p50_s",
                "reload_p99_s"):
        assert math.isfinite(crash[key]) and crash[key] > 0

    rows = rows_of({"storm": storm})
    assert [r[0] for r in rows] == ["crash storm: others' tick -> decision",
                                    "supervised restart of a crashed trade"]
    assert all(len(r) == len(HEADERS) and r[-1] in ("pass", "FAIL") for r in rows)
    assert "backoff 2-20 ms" in rows[0][1] and "0 give-ups, 0 escalations" in rows[1][1]
    table = summary.summary_rows([], [], [], {"storm": storm})
    assert [r[0] for r in table] == ["supervised restart of one crashed trade actor"]
    assert table[0][-1] == "-"   # a tiny run is not the target's size
    assert "x p99 in the storm" in table[0][4]
