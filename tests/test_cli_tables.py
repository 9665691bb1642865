"""The CLI's tables and times (issue 17 section 5): rich tables rendered to a string at a fixed
width, their rows and columns; ``--since`` forms; ``KEY=VALUE`` policy items; the watch
screen's "what changed"; every option's help, with the loaded settings' values."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from dtms import cli
from dtms.cli import tables
from dtms.cli.common import parse_since
from dtms.cli.parser import _policy_item, build_parser
from dtms.cli.watch import WatchScreen, changes
from dtms.config import Settings

T0 = datetime(2026, 12, 1, 10, 42, 7, tzinfo=UTC).timestamp()


def rows(text: str) -> list[list[str]]:
    """The table's lines split into cells (columns are 2+ spaces apart; rules dropped)."""
    import re
    out = []
    for line in text.splitlines():
        if not line.strip() or set(line.strip()) <= {"─", "━", " "}:
            continue
        out.append([c for c in re.split(r"\s{2,}", line.strip()) if c])
    return out


TRADE = {"ticket": 1001, "symbol": "EURUSD", "direction": "BUY", "volume": 0.1,
         "entry_price": 1.08512, "price": 1.08712, "sl": 1.08524, "tp": 0.0, "open_pl": 20.0,
         "open_r": 1.0, "state": "HEALTHY", "score": 0.5, "paused": True,
         "policy": {"mode": "shadow"}, "close_reason": "", "owner": "bot"}


def test_the_trades_table_has_price_open_pl_r_and_paused() -> None:
    text = tables.render(tables.trades_table([TRADE, {**TRADE, "ticket": 1002, "price": None,
                                                      "open_pl": None, "open_r": None,
                                                      "paused": False, "policy": {},
                                                      "sl": 0.0, "owner": ""}]), width=200)
    assert rows(text) == [
        ["TICKET", "SYMBOL", "DIR", "VOLUME", "ENTRY", "PRICE", "SL", "TP", "P/L", "R", "STATE",
         "SCORE", "PAUSED", "MODE", "CLOSE", "OWNER"],
        ["1001", "EURUSD", "BUY", "0.1", "1.08512", "1.08712", "1.08524", "-", "20.00", "+1.00",
         "HEALTHY", "0.5", "yes", "shadow", "-", "bot"],
        ["1002", "EURUSD", "BUY", "0.1", "1.08512", "-", "-", "-", "-", "-", "HEALTHY", "0.5",
         "no", "-", "-", "-"]]


def test_the_actions_transitions_and_restarts_tables() -> None:
    action = {"created_at": T0, "ticket": 1001, "seq": 3, "kind": "MODIFY_SL",
              "obligation": "sl:breakeven", "status": "shadow", "retcode": 0,
              "request": {"sl": 1.08524, "position": 1001, "action": 6, "magic": 1},
              "reason": "profit 1.00 R: SL to breakeven"}
    assert rows(tables.render(tables.actions_table([action]), width=200)) == [
        ["TIME", "TICKET", "SEQ", "KIND", "OBLIGATION", "STATUS", "RETCODE", "REQUEST",
         "REASON"],
        ["2026-12-01 10:42:07", "1001", "3", "MODIFY_SL", "sl:breakeven", "shadow", "-",
         "sl=1.08524 position=1001", "profit 1.00 R: SL to breakeven"]]
    transitions = [{"at": T0, "from_state": "", "to_state": "HEALTHY", "reason": "registered"},
                   {"at": T0 + 60, "from_state": "HEALTHY", "to_state": "WARNING_L1",
                    "reason": "score -2.10 <= -2.00"}]
    assert rows(tables.render(tables.transitions_table(transitions), width=120)) == [
        ["TIME", "FROM", "TO", "REASON"],
        ["2026-12-01 10:42:07", "(new)", "HEALTHY", "registered"],
        ["2026-12-01 10:43:07", "HEALTHY", "WARNING_L1", "score -2.10 <= -2.00"]]
    restart = {"at": T0, "kind": "trade", "supervisor": "trades", "child": "1001",
               "action": "restart", "attempt": 2, "backoff_s": 0.25,
               "exception": "RuntimeError('boom')"}
    assert rows(tables.render(tables.restarts_table([restart]), width=160)) == [
        ["TIME", "KIND", "SUPERVISOR", "CHILD", "ACTION", "ATTEMPT", "BACKOFF", "EXCEPTION"],
        ["2026-12-01 10:42:07", "trade", "trades", "1001", "restart", "2", "0.25s",
         "RuntimeError('boom')"]]


def test_the_shadow_report_table() -> None:
    report = {"since": T0, "actions": 3, "by_kind": {"CLOSE": 1, "MODIFY_SL": 2},
              "stops_moved": 2, "closed_volume": 0.1, "pnl_difference": -21.9,
              "trades": [{"ticket": 1001, "actions": 3, "closed_volume": 0.1,
                          "pnl_difference": -21.9}]}
    text = tables.render(tables.shadow_table(report), width=120)
    assert rows(text) == [
        ["TICKET", "ACTIONS", "CLOSED VOLUME", "P/L DIFFERENCE"],
        ["1001", "3", "0.1", "-21.90"],
        ["total", "3", "0.1", "-21.90"],
        ["since 2026-12-01 10:42:07 UTC: CLOSE 1, MODIFY_SL 2; stops moved 2 (not priced)"]]


@pytest.mark.parametrize(("text", "expected"), [
    ("10m", T0 - 600), ("2h", T0 - 7200), ("30s", T0 - 30), ("1d", T0 - 86_400),
    ("1.5h", T0 - 5400), ("2026-12-01T10:00", datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()),
    ("2026-12-01 10:00:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()),
    ("2026-12-01T12:00+02:00", datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()),
    ("1764585000", 1764585000.0), ("0", 0.0)])
def test_since_takes_a_duration_an_iso_time_or_a_timestamp(text: str, expected: float) -> None:
    assert parse_since(text, now=T0) == expected


@pytest.mark.parametrize("text", ["-5", "10 minutes", "yesterday", "2026-13-01", "nan", "5y"])
def test_a_bad_since_names_the_forms_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match=r"a duration back from now \(30s, 10m, 2h"):
        parse_since(text, now=T0)


def test_since_is_sent_as_epoch_seconds() -> None:
    parser = build_parser(Settings())
    for cmd in (["actions"], ["transitions", "5"], ["restarts"], ["shadow"]):
        args = parser.parse_args([*cmd, "--since", "2026-12-01T10:00Z"])
        assert args.since == datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()
    with pytest.raises(SystemExit):
        parser.parse_args(["actions", "--since", "soon"])


def test_policy_items_are_split_and_typed_for_the_service_to_check() -> None:
    assert _policy_item("mode=shadow") == ("mode", "shadow")
    assert _policy_item("breakeven_r=0.5") == ("breakeven_r", 0.5)
    assert _policy_item("requote_retries=3") == ("requote_retries", 3)
    assert _policy_item("l2_close_repeat=true") == ("l2_close_repeat", True)
    assert _policy_item("trail_atr_mult=null") == ("trail_atr_mult", None)
    assert _policy_item("partial_levels_r=1.5,2.5") == ("partial_levels_r", [1.5, 2.5])
    assert _policy_item("partial_fractions=[0.25]") == ("partial_fractions", [0.25])
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        _policy_item("breakeven_r")
    parser = build_parser(Settings())
    one = parser.parse_args(["policy", "7", "mode=live", "breakeven_r=2"])
    assert (one.ticket, one.all, one.changes) == (7, False, [("mode", "live"),
                                                             ("breakeven_r", 2)])
    every = parser.parse_args(["policy", "--all", "mode=shadow"])
    assert (every.ticket, every.all, every.changes) == (None, True, [("mode", "shadow")])


def test_the_watch_says_what_an_update_changed() -> None:
    old = {**TRADE, "paused": False, "pending": []}
    new = {**old, "sl": 1.086, "paused": True, "pending": ["sl:trail:1.086"]}
    assert changes(old, new) == ("sl 1.08524 -> 1.086, paused no -> yes, "
                                 "pending [] -> [sl:trail:1.086]")
    assert changes(None, new) == "new"
    assert changes(old, {**old, "score": -1.0}) == "no visible change"


def test_the_watch_screen_draws_trades_events_actions_and_restarts() -> None:
    import io
    out = io.StringIO()
    screen = WatchScreen("127.0.0.1:8001", limit=10, stream=out, width=200)
    released = {**TRADE, "ticket": 1002, "state": "RELEASED"}
    screen.draw({1001: TRADE, 1002: released}, ["1001: sl 1.08312 -> 1.08524"], [], [])
    text = out.getvalue()
    assert text.startswith("\x1b[H\x1b[2J")
    lines = text.splitlines()
    assert lines[0].endswith("DTMS watch  127.0.0.1:8001  HEALTHY=1  RELEASED=1")
    assert rows(text)[1][:6] == ["TICKET", "SYMBOL", "DIR", "VOLUME", "ENTRY", "PRICE"]
    assert rows(text)[2][:6] == ["1001", "EURUSD", "BUY", "0.1", "1.08512", "1.08712"]
    assert "(1 trade)" in lines
    assert "  1001: sl 1.08312 -> 1.08524" in lines
    assert lines[-7:] == ["  1001: sl 1.08312 -> 1.08524", "", "latest actions:", "  (none)", "",
                          "recent restarts:", "  (none)"]


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for inner in sub._actions:
                    yield name, inner
        else:
            yield "dtms", action


def test_every_option_has_help_and_help_shows_the_loaded_settings() -> None:
    settings = Settings().replace(policy={"mode": "shadow", "breakeven_r": 0.7},
                                  service={"log_format": "text"})
    parser = build_parser(settings)
    missing = [(cmd, a.dest) for cmd, a in _options(parser)
               if a.help in (None, "") and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []
    policy = parser._subparsers._group_actions[0].choices["policy"].format_help()
    assert "mode=shadow" in policy and "breakeven_r=0.7" in policy
    serve = parser._subparsers._group_actions[0].choices["serve"].format_help()
    assert "service.log_format, now text" in serve
    for cmd in ("trades", "actions", "transitions", "restarts", "shadow"):
        sub = parser._subparsers._group_actions[0].choices[cmd].format_help()
        assert "instead of a table" in sub, cmd
    assert cli.MAX_PAGE == 1000
