"""The bridge benchmark runs end to end in its tiniest mode (no timing is asserted)."""

from __future__ import annotations

import math

from bench import bridge, summary


def test_bridge_bench_reports_every_backend_and_call_with_numbers_and_a_summary_row():
    rows = bridge.run_bench(20, progress=False)

    assert [(r.backend, r.call) for r in rows] == [
        (b, c) for b in bridge.BACKENDS for c in bridge.CALLS]
    for r in rows:
        assert r.count == 20
        for value in (r.p50_us, r.p99_us, r.versus_embedded):
            assert math.isfinite(value) and value > 0
        assert r.p50_us <= r.p99_us
    assert all(r.versus_embedded == 1.0 for r in rows if r.backend == "embedded")
    table = bridge.format_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    for line in table[2:]:
        cells = line.split()
        assert len(cells) == len(bridge.COLUMNS)
        for cell in cells[2:]:
            float(cell.replace(",", ""))
    assert bridge.to_json(rows)["rows"][0]["backend"] == "embedded"

    figures = summary.summary_rows([], [], [], {}, rows)
    assert [f[0] for f in figures] == [
        f"terminal call over the bridge, loopback: {c}" for c in bridge.CALLS]
    assert all("x embedded" in f[4] and "sim-terminal" in f[3] for f in figures)
