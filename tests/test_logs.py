"""Structured logs: JSON lines carrying each record's context; the supervisor log file."""

from __future__ import annotations

import json
import logging

import pytest

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


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.mark.anyio
async def test_trace_id_follows_a_message_from_actor_to_actor():
    import anyio

    from dtms.actors.base import Actor

    log = logging.getLogger("dtms.test.trace")

    class Second(Actor):
        async def handle(self, message):
            log.warning("second handles %s", message)

    class First(Actor):
        def __init__(self, second):
            super().__init__("first")
            self.second = second

        async def handle(self, message):
            log.warning("first handles %s", message)
            await self.second.tell(message)

    capture = _Capture()
    log.addHandler(capture)
    try:
        second = Second("second")
        first = First(second)
        async with anyio.create_task_group() as tg:
            await tg.start(second.run)
            await tg.start(first.run)
            token = logs.TRACE_ID.set("abc123")
            await first.ask("one")
            logs.TRACE_ID.reset(token)
            await first.ask("two")  # no trace in the sender: the actor starts a new one
            while len(capture.lines) < 4:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    finally:
        log.removeHandler(capture)
    traces = {line["msg"]: line["trace_id"] for line in capture.lines}
    assert traces["first handles one"] == traces["second handles one"] == "abc123"
    assert traces["first handles two"] == traces["second handles two"]
    assert len(traces["first handles two"]) == 16 and traces["first handles two"] != "abc123"
