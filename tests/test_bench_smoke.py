"""The registration benchmark runs end to end in its tiniest mode (no timing is asserted)."""

from __future__ import annotations

from bench.registration import (
    CLIENTS,
    HTTP_CONFIGS,
    MODES,
    PACED,
    PACED_CLIENTS,
    format_table,
    run_bench,
)


def test_registration_bench_reports_one_row_per_configuration_with_counts_that_add_up():
    count = 20
    rows = run_bench(count, reps=1, progress=False)

    assert [(r.clients, r.mode) for r in rows] == [
        (c, m) for c in CLIENTS for m in MODES if m not in PACED or c in PACED_CLIENTS]
    for row in rows:
        http = (row.clients, row.mode) in HTTP_CONFIGS
        for run in (row.dtms, row.floor, *([row.http] if http else [])):
            assert run.count == count
            assert run.ok == count and not run.errors  # every registration answered
        assert [r.target for r in row.runs] == ["dtms", "floor", *(["http"] if http else [])]
        assert (row.http is not None) == http
    table = format_table(rows, count=count, reps=1).splitlines()
    assert len(table) == 2 + len(rows)  # no error lines


def test_summary_table_has_every_target_row_from_a_tiny_run():
    from bench import summary
    from bench.registration import run_bench as registration_bench

    rows = registration_bench(20, reps=1, progress=False,
                              only={(64, "pipelined"), (64, "paced")})
    table = summary.summary_rows(rows, [], [], {})
    assert [r[0] for r in table] == ["registrations/s, 64 clients pipelined",
                                     "registration p99 at 5,000/s offered"]
    assert all(r[-1] in ("PASS", "FAIL", "-") for r in table)
    assert "x HTTP" in table[0][4]


def test_coldstart_bench_reports_the_empty_baseline_and_each_size_with_numbers():
    import math

    from bench import coldstart

    rows = coldstart.run_bench((20,), reps=1, progress=False)

    assert [r.stored for r in rows] == [0, 20]
    for row in rows:
        assert len(row.runs) == 1
        for value in (row.median_s, row.max_s, row.recovered_s, row.rss_mib, row.sim_mib,
                      row.versus_empty):
            assert math.isfinite(value) and value > 0
        assert row.median_s <= row.max_s
    assert rows[0].versus_empty == 1.0
    table = coldstart.format_table(rows, reps=1).splitlines()
    assert len(table) >= 2 + len(rows) + 1  # head, columns, rows, target line
    for line in table[2:2 + len(rows)]:
        cells = line.split()
        assert len(cells) == len(coldstart.COLUMNS)
        for cell in cells[:-1]:
            float(cell.replace(",", ""))


def test_commit_bench_reports_raw_then_group_and_single_per_writer_count_with_numbers():
    import math

    from bench import commit

    count, writers = 40, (1, 8)
    rows = commit.run_bench(count, reps=1, writers=writers, progress=False)

    assert [(r.mode, r.writers) for r in rows] == [
        ("raw", 1), ("group", 1), ("single", 1), ("group", 8), ("single", 8)]
    for row in rows:
        r = row.run
        assert r.count == count
        for value in (r.seconds, r.rate, r.p50_ms, r.p99_ms, r.batch, row.versus):
            assert math.isfinite(value) and value > 0
        assert r.p50_ms <= r.p99_ms
        assert r.batch >= 1.0
        if row.mode == "single":
            assert r.batch == 1.0 and row.versus == 1.0
    table = commit.format_table(rows, count=count, reps=1).splitlines()
    for line in table[2:2 + len(rows)]:
        cells = line.split()
        assert len(cells) == len(commit.COLUMNS)
        for cell in cells[1:]:
            float(cell.replace(",", ""))
