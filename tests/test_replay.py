"""`dtms replay` on hand-made bar files whose right answers are worked out by hand.

Every case is EURUSD (5 digits, 12 points of spread from the file, stops level 10, freeze
level 5, 100,000 per lot) on M5 bars from Monday 2024-06-03 08:00 UTC, written by ``bars``;
the replay makes four ticks per bar, 75 s apart: open, nearer extreme, other extreme, close.
A BUY closes at the bid, a SELL at the ask (bid + 0.00012). The engine runs with the session
and volatility multipliers at 1, as the scenario tests do, so the thresholds are the policy's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dtms.brokers.sim.history import read_history
from dtms.config import Settings
from dtms.errors import InvalidArgument
from dtms.replay.cli import split_values, variants
from dtms.replay.engine import replay
from dtms.replay.report import build_report, totals
from dtms.replay.trades import RecordedTrade

T0 = 1_717_401_600   # 2024-06-03 08:00 UTC
BAR = 300
FLAT = [(1.08500, 1.08500, 1.08500, 1.08500)] * 40   # 08:00 .. 11:15: nothing happens
OPEN = T0 + 40 * BAR + 10                            # 11:20:10, just after bar 40 opened


def bars(path: Path, rows: list[tuple[float, ...]]) -> Path:
    with path.open("w") as f:
        f.write("time,open,high,low,close,volume,spread\n")
        for i, (o, h, low, c) in enumerate(rows):
            f.write(f"{T0 + BAR * i},{o:.5f},{h:.5f},{low:.5f},{c:.5f},100,12\n")
    return path


def settings() -> Settings:
    neutral = {"asia": 1.0, "london": 1.0, "overlap": 1.0, "newyork": 1.0, "late": 1.0}
    return Settings().replace(signals={
        "session_multipliers": neutral,
        "volatility_multipliers": {"low": 1, "normal": 1, "high": 1}})


def run_one(tmp_path: Path, rows: list[tuple[float, ...]], trade: RecordedTrade,
            policy: dict | None = None) -> dict:
    history = read_history(bars(tmp_path / "EURUSD_M5.csv", rows))
    raw = replay({"EURUSD": history}, [trade], settings(), policy=policy)
    [report] = build_report(raw)["trades"]
    return report


def moves(report: dict) -> list[tuple]:
    return [(a["time"] - T0, a["kind"], a["price"], a["volume"]) for a in report["actions"]]


def test_buy_to_one_r_and_back_exits_at_breakeven_with_dtms_and_at_its_stop_without(tmp_path):
    """BUY 0.10 at 1.08512 (the ask of bid 1.08500), SL 1.08312: 1 R = 0.00200 = 20.00.

    Bar 40: O 1.08500 H 1.08720 L 1.08270 C 1.08270; the high is nearer the open (22 < 23
    points), so the ticks are 1.08500 (11:20:00), 1.08720 (11:21:15), 1.08270 (11:22:30),
    1.08270 (11:23:45).
    With DTMS: at 11:21:15 the bid is 1.04 R up (>= breakeven_r 1.0): SL to the entry plus one
    spread, 1.08512 + 0.00012 = 1.08524. The next tick falls through it within the bar: filled
    at the stop itself, 1.08524: P/L (1.08524 - 1.08512) * 10,000 = +1.20 (the buffer), 0.06 R.
    Without: the same fall crosses the SL 1.08312: filled there, -20.00, -1 R.
    """
    t = run_one(tmp_path, [*FLAT, (1.08500, 1.08720, 1.08270, 1.08270),
                           *[(1.08270,) * 4] * 3],
                RecordedTrade(1, "EURUSD", "BUY", OPEN, 1.08512, 0.10, 1.08312, 0.0))
    assert moves(t) == [(12075.0, "MODIFY_SL", 1.08524, 0.0)]
    assert t["exit_with"] == {"time": T0 + 12150.0, "price": 1.08524, "reason": "SL"}
    assert (t["pnl_with"], t["r_with"]) == (1.20, 0.06)
    assert t["exit_without"] == {"time": T0 + 12150.0, "price": 1.08312, "reason": "SL"}
    assert (t["pnl_without"], t["r_without"]) == (-20.00, -1.0)
    assert [s["state"] for s in t["states"]] == ["HEALTHY", "CLOSED"]


def test_sell_trending_through_the_trail_activation_exits_at_the_trailed_stop(tmp_path):
    """SELL 0.10 at 1.08000 (bar 40's open), SL 1.08200: 1 R = 0.00200 = 20.00.

    Every bar falls 50 points from its open (O = H, L = C = O - 0.0005), so each true range,
    and the 14-bar ATR, is 0.00050. Bar j's low tick (j*300 + 150 s) has bid
    1.08000 - 0.0005 * (j - 39) and ask 12 points above it.
    - Bar 44 (bid 1.07750, ask 1.07762, 1.19 R): breakeven, SL = 1.08000 - 0.00012 = 1.07988.
    - Bar 46 (ask 1.07662, 1.69 R >= trail_activation_r 1.5): trail, SL = ask + 2 ATR = 1.07762.
    - Bars 47, 48, 49: each new low moves it 50 points (>= the 10-point step): 1.07712,
      1.07662, 1.07612.
    - Bar 50 turns: O 1.07500 L 1.07500 H 1.07800 C 1.07700; at the high the ask (1.07812)
      is past the stop: filled at the stop, 1.07612: P/L (1.08000 - 1.07612) * 10,000 =
      +38.80, 1.94 R.
    Without: the SL 1.08200 is never reached; held to the history's end (flat at 1.07700,
    ask 1.07712): +28.80, 1.44 R.
    """
    rows, p = [], 1.10000
    for _ in range(50):
        rows.append((p, p, round(p - 0.0005, 5), round(p - 0.0005, 5)))
        p = round(p - 0.0005, 5)
    rows += [(1.07500, 1.07800, 1.07500, 1.07700), *[(1.07700,) * 4] * 3]
    t = run_one(tmp_path, rows, RecordedTrade(2, "EURUSD", "SELL", OPEN, 1.08000, 0.10,
                                              1.08200, 0.0))
    assert moves(t) == [(44 * BAR + 150.0, "MODIFY_SL", 1.07988, 0.0),
                        (46 * BAR + 150.0, "MODIFY_SL", 1.07762, 0.0),
                        (47 * BAR + 150.0, "MODIFY_SL", 1.07712, 0.0),
                        (48 * BAR + 150.0, "MODIFY_SL", 1.07662, 0.0),
                        (49 * BAR + 150.0, "MODIFY_SL", 1.07612, 0.0)]
    assert [a["reason"] for a in t["actions"]][1:] == ["trailing 2 ATR"] * 4
    assert t["exit_with"] == {"time": T0 + 50 * BAR + 150.0, "price": 1.07612, "reason": "SL"}
    assert (t["pnl_with"], t["r_with"]) == (38.80, 1.94)
    assert (t["exit_without"]["price"], t["exit_without"]["reason"]) == (1.07712, "END")
    assert (t["pnl_without"], t["r_without"]) == (28.80, 1.44)


def test_a_partial_ladder_takes_each_rung_then_the_rest_leaves_at_breakeven(tmp_path):
    """BUY 0.20 at 1.08512, SL 1.08312 (1 R = 0.00200 = 40.00), ladder 1 R and 2 R, 25 % each.

    Bar 40: O 1.08500 H 1.08960 L 1.08400 C 1.08400 (low nearer): ticks 1.08500, 1.08400,
    1.08960 (11:22:30), 1.08400. At 1.08960 the BUY is 2.24 R up: breakeven (SL 1.08524), then
    rung 1 (0.05 at 1.08960: +22.40), then rung 2 (0.05 at 1.08960: +22.40). The close falls
    through 1.08524 within the bar: the last 0.10 at 1.08524, +1.20. With DTMS: +46.00, 1.15 R.
    Without: bar 41 (O 1.08400 L 1.08300) crosses the SL 1.08312: -40.00, -1 R.
    """
    t = run_one(tmp_path, [*FLAT, (1.08500, 1.08960, 1.08400, 1.08400),
                           (1.08400, 1.08400, 1.08300, 1.08300), *[(1.08300,) * 4] * 2],
                RecordedTrade(3, "EURUSD", "BUY", OPEN, 1.08512, 0.20, 1.08312, 0.0),
                policy={"partial_levels_r": [1.0, 2.0], "partial_fractions": [0.25, 0.25]})
    at = 40 * BAR + 150.0
    assert moves(t) == [(at, "MODIFY_SL", 1.08524, 0.0), (at, "PARTIAL_CLOSE", 1.0896, 0.05),
                        (at, "PARTIAL_CLOSE", 1.0896, 0.05)]
    assert t["exit_with"] == {"time": T0 + 40 * BAR + 225.0, "price": 1.08524, "reason": "SL"}
    assert (t["pnl_with"], t["r_with"]) == (46.00, 1.15)
    assert t["exit_without"] == {"time": T0 + 41 * BAR + 150.0, "price": 1.08312,
                                 "reason": "SL"}
    assert (t["pnl_without"], t["r_without"]) == (-40.00, -1.0)


def test_a_losing_sell_walks_the_defensive_ladder_into_a_hedge_and_the_flat_timer(tmp_path):
    """SELL 0.20 at 1.08500, SL 1.09500 (1 R = 0.01000 = 200.00), policy hedge_score -4.7.

    Bars 40-42 rise 50 points each (O = L, H = C), then the market is flat at 1.08650. The
    scores at the bar closes are -4.43, -4.77, -5.10 (the engine's signals on these bars):
    - 11:25 WARNING_L1: SL to 0.3 R behind the ask 1.08562: 1.08862.
    - 11:30 WARNING_L2: close half, 0.10 at the ask 1.08612: -11.20 (no breakeven stop: it
      would sit past the price).
    - 11:35 HEDGED: BUY 0.05 (hedge_ratio 0.5) at the ask 1.08662.
    - 12:40, 75 min after WARNING_L1 (flat_timer_min): close the SELL, 0.10 at the ask
      1.08662 (-16.20), and the hedge at the bid 1.08650 (-0.60).
    With DTMS: -11.20 - 16.20 - 0.60 = -28.00, -0.14 R. Without: held to the end at the ask
    1.08662: -32.40, -0.162 R.
    """
    rows = [*FLAT, (1.08500, 1.08550, 1.08500, 1.08550), (1.08550, 1.08600, 1.08550, 1.08600),
            (1.08600, 1.08650, 1.08600, 1.08650), *[(1.08650,) * 4] * 20]
    t = run_one(tmp_path, rows, RecordedTrade(4, "EURUSD", "SELL", OPEN, 1.08500, 0.20,
                                              1.09500, 0.0), policy={"hedge_score": -4.7})
    assert moves(t) == [(41 * BAR, "MODIFY_SL", 1.08862, 0.0),
                        (42 * BAR, "PARTIAL_CLOSE", 1.08612, 0.1),
                        (43 * BAR, "HEDGE", 1.08662, 0.05),
                        (56 * BAR, "CLOSE", 1.08662, 0.1),
                        (56 * BAR, "CLOSE_HEDGE", 1.0865, 0.05)]
    assert [(s["time"] - T0, s["state"]) for s in t["states"]][:4] == [
        (40 * BAR + 10, "HEALTHY"), (41 * BAR, "WARNING_L1"), (42 * BAR, "WARNING_L2"),
        (43 * BAR, "HEDGED")]
    assert t["states"][-1]["state"] == "CLOSED"
    assert len(t["hedges"]) == 1
    assert t["exit_with"] == {"time": T0 + 56 * BAR, "price": 1.08662, "reason": "FLAT_TIMER"}
    assert (t["pnl_with"], t["r_with"]) == (-28.00, -0.14)
    assert (t["pnl_without"], t["r_without"]) == (-32.40, -0.162)


def test_totals_count_wins_average_r_and_the_drawdown_of_closed_trades():
    """Closed in time order: +10, -30, +5, -10: equity 10, -20, -15, -25: peak 10, drawdown 35."""
    trades = [{"ticket": i, "pnl_with": p, "r_with": r, "exit_with": {"time": t}}
              for i, (p, r, t) in enumerate([(10.0, 0.5, 1.0), (-10.0, None, 9.0),
                                             (-30.0, -1.5, 2.0), (5.0, 0.25, 3.0)])]
    assert totals(trades, "with") == {"pnl": -25.0, "win_rate": 0.5, "avg_r": -0.25,
                                      "max_drawdown": 35.0, "trades": 4}


def test_a_bad_policy_override_is_refused_before_anything_runs(tmp_path):
    history = read_history(bars(tmp_path / "h.csv", FLAT))
    with pytest.raises(InvalidArgument) as err:
        replay({"EURUSD": history}, [RecordedTrade(1, "EURUSD", "BUY", OPEN - 600, 1.08512,
                                                   0.1, 1.08312)],
               settings(), policy={"breakeven_r": -1, "nonsense": 1})
    fields = err.value.to_wire()["errors"]
    assert set(fields) == {"policy.breakeven_r", "policy.nonsense"}


def test_sweep_variants_make_a_grid_and_lists_keep_their_commas():
    assert split_values("0.5,1.0,[1.5,2.5]") == ["0.5", "1.0", "[1.5,2.5]"]
    assert variants({"hedge_ratio": 0.5}, [("breakeven_r", "0.5,1"), ("trail_atr_mult", "2,3")]) == [
        {"hedge_ratio": 0.5, "breakeven_r": 0.5, "trail_atr_mult": 2},
        {"hedge_ratio": 0.5, "breakeven_r": 0.5, "trail_atr_mult": 3},
        {"hedge_ratio": 0.5, "breakeven_r": 1, "trail_atr_mult": 2},
        {"hedge_ratio": 0.5, "breakeven_r": 1, "trail_atr_mult": 3}]


def _trades_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("ticket,symbol,direction,open_time,open_price,volume,sl,tp\n"
                    + "\n".join(rows) + "\n")
    return path


def test_the_command_writes_report_json_pictures_and_an_html_page_naming_them(tmp_path):
    from dtms.cli import main
    history = bars(tmp_path / "EURUSD_M5.csv", [*FLAT, (1.08500, 1.08720, 1.08270, 1.08270),
                                                *[(1.08270,) * 4] * 3])
    trades = _trades_csv(tmp_path / "trades.csv",
                         ["1,EURUSD,BUY,2024-06-03T11:20:10,1.08512,0.10,1.08312,0"])
    out = tmp_path / "report"
    assert main(["replay", "--bars", f"EURUSD={history}", "--trades", str(trades),
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    [t] = report["trades"]
    for key in ("ticket", "symbol", "direction", "pnl_without", "pnl_with", "r_without",
                "r_with", "exit_without", "exit_with", "actions"):
        assert key in t
    assert (t["ticket"], t["pnl_with"], t["pnl_without"]) == (1, 1.2, -20.0)
    assert set(t["actions"][0]) == {"time", "kind", "price", "volume", "reason"}
    assert set(report["totals"]["with"]) >= {"pnl", "win_rate", "avg_r", "max_drawdown"}
    assert report["totals"]["with"]["win_rate"] == 1.0
    assert report["totals"]["without"]["max_drawdown"] == 20.0
    for name in ("equity.png", "trade_1.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert "equity.png" in page and "trade_1.png" in page
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page   # no network


def test_the_command_refuses_bad_input_naming_the_line_and_column(tmp_path, capsys):
    from dtms.cli import main
    history = bars(tmp_path / "EURUSD_M5.csv", FLAT)
    trades = _trades_csv(tmp_path / "trades.csv",
                         ["1,EURUSD,BUY,2024-06-03T09:00:00,1.08512,0.10,1.09000,0"])
    assert main(["replay", "--bars", f"EURUSD={history}", "--trades", str(trades),
                 "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "line 2, column sl: 1.09 must be below the open price 1.08512 of a BUY" in (
        capsys.readouterr().err)
    assert main(["replay", "--bars", f"EURUSD={history}", "--trades", str(trades),
                 "--policy", "breakeven_r=-1", "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "policy.breakeven_r" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_runs_each_variant_in_its_own_process_best_first(tmp_path, capsys):
    """The breakeven case with breakeven_r 1.0 (exit at breakeven, +1.20) and 2.0 (never
    reached: the stop at 1.08312, -20.00): ranked by P/L, 1.0 first."""
    from dtms.cli import main
    history = bars(tmp_path / "EURUSD_M5.csv", [*FLAT, (1.08500, 1.08720, 1.08270, 1.08270),
                                                *[(1.08270,) * 4] * 3])
    trades = _trades_csv(tmp_path / "trades.csv",
                         ["1,EURUSD,BUY,1717413610,1.08512,0.10,1.08312,0"])
    out = tmp_path / "sweep"
    assert main(["replay", "--bars", f"EURUSD={history}", "--trades", str(trades),
                 "--sweep", "breakeven_r=2.0,1.0", "--out", str(out), "--quiet",
                 "--workers", "2"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["rank"] == "pnl"
    assert [(v["policy"], v["totals"]["with"]["pnl"]) for v in sweep["variants"]] == [
        ({"breakeven_r": 1.0}, 1.2), ({"breakeven_r": 2.0}, -20.0)]
    assert all(v["totals"]["without"]["pnl"] == -20.0 for v in sweep["variants"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("breakeven_r=1.0") and printed[2].startswith("breakeven_r=2.0")


def test_recorded_ticks_replay_with_a_gap_through_the_stop_filled_at_the_tick(tmp_path):
    """An MT5 tick export (UTF-16): 1.08500/1.08512 every 10 s from 11:00, then at 11:10 a
    tick at 1.08300 -- past the BUY's SL 1.08400 with nothing in between. A recorded tick is
    where the price was: filled there, 1.08300: (1.08300 - 1.08512) * 10,000 = -21.20, with
    DTMS (nothing to do on a flat market) and without."""
    start = T0 + 3 * 3600
    lines = ["<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>"]
    for i in range(70):
        bid = 1.08500 if i < 60 else 1.08300
        stamp = _mt5_time(start + 10 * i)
        lines.append(f"{stamp}\t{bid:.5f}\t{bid + 0.00012:.5f}\t\t\t6")
    path = tmp_path / "EURUSD_ticks.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-16"))
    history = read_history(path)
    raw = replay({"EURUSD": history}, [RecordedTrade(9, "EURUSD", "BUY", start + 305, 1.08512,
                                                     0.10, 1.08400)], settings())
    [t] = build_report(raw)["trades"]
    assert t["exit_with"] == {"time": start + 600.0, "price": 1.083, "reason": "SL"}
    assert t["exit_without"] == {"time": start + 600.0, "price": 1.083, "reason": "SL"}
    assert (t["pnl_with"], t["pnl_without"]) == (-21.20, -21.20)


def _mt5_time(t: float) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(t, UTC).strftime("%Y.%m.%d\t%H:%M:%S.000")


def test_the_progress_bar_on_stderr_says_what_runs_and_how_far(tmp_path, capsys):
    from dtms.cli import main
    history = bars(tmp_path / "EURUSD_M5.csv", [*FLAT, (1.08500, 1.08720, 1.08270, 1.08270),
                                                *[(1.08270,) * 4] * 3])
    trades = _trades_csv(tmp_path / "trades.csv",
                         ["1,EURUSD,BUY,1717413610,1.08512,0.10,1.08312,0"])
    assert main(["replay", "--bars", f"EURUSD={history}", "--trades", str(trades),
                 "--out", str(tmp_path / "r"), "--no-pictures"]) == 0
    out = capsys.readouterr()
    assert "replaying EURUSD: 1/1 trades opened" in out.err and "100%" in out.err
    assert "with DTMS:" in out.out and "replaying" not in out.out


def test_two_symbols_replay_together_each_on_its_own_history(tmp_path):
    """The breakeven case on EURUSD while a GBPUSD BUY (0.10 at 1.27012, the ask of a flat
    1.27000) waits: the EURUSD trade ends at breakeven (+1.20), the GBPUSD one is still open
    at the end, valued at the last bid 1.27000: -1.20, with and without DTMS."""
    eur = read_history(bars(tmp_path / "EURUSD.csv", [*FLAT, (1.08500, 1.08720, 1.08270,
                                                             1.08270), *[(1.08270,) * 4] * 3]))
    gbp = read_history(bars(tmp_path / "GBPUSD.csv", [(1.27000,) * 4] * 44))
    raw = replay({"EURUSD": eur, "GBPUSD": gbp},
                 [RecordedTrade(1, "EURUSD", "BUY", OPEN, 1.08512, 0.10, 1.08312),
                  RecordedTrade(2, "GBPUSD", "BUY", OPEN - 300, 1.27012, 0.10, 1.26500)],
                 settings())
    report = build_report(raw)
    by = {t["ticket"]: t for t in report["trades"]}
    assert (by[1]["pnl_with"], by[1]["exit_with"]["reason"], by[1]["pnl_without"]) == (
        1.20, "SL", -20.00)
    assert (by[2]["pnl_with"], by[2]["exit_with"]["reason"]) == (-1.20, "END")
    assert (by[2]["pnl_without"], by[2]["exit_without"]["reason"]) == (-1.20, "END")
    assert report["totals"]["with"]["pnl"] == 0.0


def test_without_matplotlib_the_command_says_how_to_get_pictures_before_replaying(
        tmp_path, monkeypatch, capsys):
    """A core install has no matplotlib: the command refuses at once, naming the extra and
    --no-pictures (before, it replayed, then died in a traceback while drawing)."""
    import importlib.util

    from dtms.cli import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    bars = tmp_path / "bars.csv"
    bars.write_text("time,open,high,low,close\n" + "".join(
        f"{1717372800 + i * 300},1.085,1.0852,1.0848,1.0851\n" for i in range(50)))
    trades = tmp_path / "trades.csv"
    trades.write_text("ticket,symbol,direction,open_time,open_price,volume,sl,tp\n"
                      "1,EURUSD,BUY,1717375800,1.085,0.1,1.082,1.091\n")
    code = main(["replay", "--bars", f"EURUSD={bars}", "--trades", str(trades),
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "the pictures need matplotlib: pip install 'dtms[replay]', or pass --no-pictures" in err
    assert not (tmp_path / "out").exists()
