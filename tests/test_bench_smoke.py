"""The registration benchmark runs end to end in its tiniest mode (no timing is asserted)."""

from __future__ import annotations

from bench.registration import CLIENTS, MODES, format_table, run_bench


def test_registration_bench_reports_one_row_per_configuration_with_counts_that_add_up():
    count = 20
    rows = run_bench(count, reps=1, progress=False)

    assert [(r.clients, r.mode) for r in rows] == [(c, m) for c in CLIENTS for m in MODES]
    for row in rows:
        for run in (row.dtms, row.floor):
            assert run.count == count
            assert run.ok + sum(run.errors.values()) == count
        assert [r.target for r in row.runs] == ["dtms", "floor"]
    table = format_table(rows, count=count, reps=1).splitlines()
    assert len(table) >= 2 + len(rows)
