"""Structured logs: JSON lines carrying each record's context; the supervisor log file."""

from __future__ import annotations

import json
import logging

from dtms import logs


def test_json_lines_carry_the_context_and_the_supervisor_file_gets_restarts(tmp_path, capsys):
    path = tmp_path / "sup" / "supervisor.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("INFO", "json", str(path))
        logging.getLogger("dtms.registry").info("registered trade %s", 7,
                                                extra={"ticket": 7, "symbol": "EURUSD"})
        logging.getLogger("dtms.supervisor").warning(
            "supervisor trades: restart child 7", extra={
                "supervisor": "trades", "child": "7", "kind": "trade", "event": "restart",
                "reason": "crash", "exception_type": "TypeError", "exception": "TypeError('x')",
                "attempt": 1, "backoff_s": 0.1})
        for h in logging.getLogger("dtms.supervisor").handlers:
            h.flush()
    finally:
        sup = logging.getLogger("dtms.supervisor")
        for h in sup.handlers[:]:
            sup.removeHandler(h)
            h.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err.strip().splitlines()
    first = json.loads(err[0])
    assert (first["msg"], first["ticket"], first["symbol"], first["level"]) == (
        "registered trade 7", 7, "EURUSD", "INFO")
    lines = path.read_text().strip().splitlines()
    assert len(lines) == 1  # only the supervisor's records go to its file
    rec = json.loads(lines[0])
    assert {k: rec[k] for k in ("supervisor", "child", "kind", "event", "reason", "exception_type",
                                "exception", "attempt", "backoff_s")} == {
        "supervisor": "trades", "child": "7", "kind": "trade", "event": "restart",
        "reason": "crash", "exception_type": "TypeError", "exception": "TypeError('x')",
        "attempt": 1, "backoff_s": 0.1}
