"""The webhooks benchmark runs end to end at a tiny size (its figures are not asserted)."""

from __future__ import annotations

import json

from bench import webhooks


def test_the_webhooks_benchmark_prints_every_figure(tmp_path, capsys):
    out = tmp_path / "w.json"
    assert webhooks.main(["--count", "60", "--reps", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert list(figures) == ["commit none webhooks, 1 writers", "commit one webhooks, 1 writers",
                             "commit none webhooks, 256 writers",
                             "commit one webhooks, 256 writers", "drain to a loopback endpoint"]
    assert all(rate > 0 for rate in figures.values())
    printed = capsys.readouterr().out
    assert all(name in printed for name in figures)
