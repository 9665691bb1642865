"""History readers (MT5 bar and tick exports, plain CSV), ticks from bars, and the fill rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.brokers.sim import constants as c
from dtms.brokers.sim.history import (
    HistoryError,
    open_recorded,
    read_history,
    ticks_from_bars,
)
from dtms.replay.trades import read_trades

MT5_BARS = ("<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
            "2024.06.03\t00:00:00\t1.08500\t1.08540\t1.08490\t1.08520\t120\t0\t12\n"
            "2024.06.03\t00:05:00\t1.08520\t1.08530\t1.08400\t1.08410\t80\t0\t15\n"
            "2024.06.03\t00:10:00\t1.08410\t1.08450\t1.08410\t1.08440\t40\t0\t0\n")
MT5_TICKS = ("<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>\n"
             "2024.06.03\t00:00:00.120\t1.08500\t1.08512\t\t\t6\n"
             "2024.06.03\t00:00:00.480\t\t1.08514\t\t\t4\n"
             "2024.06.03\t00:00:01.000\t1.08490\t\t\t\t2\n")
START = 1_717_372_800.0   # 2024-06-03 00:00 UTC


def write(tmp_path: Path, text: str, encoding: str = "utf-8", newline: str = "\n",
          name: str = "h.csv") -> Path:
    path = tmp_path / name
    data = text.replace("\n", newline)
    if encoding == "utf-16":
        path.write_bytes(data.encode("utf-16"))   # with its BOM, as MT5 writes it
    else:
        path.write_bytes(data.encode(encoding))
    return path


@pytest.mark.parametrize(("encoding", "newline"), [("utf-16", "\r\n"), ("utf-16", "\n"),
                                                   ("utf-8", "\r\n"), ("utf-8-sig", "\n")])
def test_mt5_bar_exports_are_read_in_every_encoding_and_line_ending(tmp_path, encoding,
                                                                    newline):
    h = read_history(write(tmp_path, MT5_BARS, encoding, newline))
    assert (h.kind, h.timeframe) == ("bars", 300)
    assert h.bars == [[START, 1.085, 1.0854, 1.0849, 1.0852, 120.0, 12.0],
                      [START + 300, 1.0852, 1.0853, 1.084, 1.0841, 80.0, 15.0],
                      [START + 600, 1.0841, 1.0845, 1.0841, 1.0844, 40.0, 0.0]]


def test_mt5_tick_exports_keep_the_last_bid_or_ask_where_a_tick_changes_only_one(tmp_path):
    h = read_history(write(tmp_path, MT5_TICKS, "utf-16", "\r\n"))
    assert h.kind == "ticks"
    assert h.tick_rows == [(START + 0.12, 1.085, 1.08512), (START + 0.48, 1.085, 1.08514),
                           (START + 1.0, 1.0849, 1.08514)]
    ticks = h.ticks(spread=12, point=0.00001)
    assert ticks.spread == [12, 14, 24] and all(ticks.jump)


@pytest.mark.parametrize("times", [("2024-06-03T00:00:00", "2024-06-03T00:01:00Z"),
                                   ("1717372800", "1717372860"),
                                   ("2024-06-03 00:00", "2024-06-03 00:01")])
def test_plain_csv_with_iso_or_epoch_times_and_optional_columns(tmp_path, times):
    text = ("time,open,high,low,close\n"
            f"{times[0]},1.1,1.2,1.0,1.15\n{times[1]},1.15,1.16,1.14,1.15\n")
    h = read_history(write(tmp_path, text))
    assert (h.timeframe, h.bars[0][0], h.bars[1][0]) == (60, START, START + 60)
    assert h.bars[0][5:] == [0.0, 0.0]   # no volume, no spread: the symbol's spread applies


def test_ticks_from_bars_go_open_nearer_extreme_other_extreme_close_a_quarter_bar_apart():
    rising_tie = [START, 1.0, 1.2, 0.8, 1.1, 8, 0]     # tie, rising: low first
    falling_tie = [START + 300, 1.0, 1.2, 0.8, 0.9, 2, 15]  # tie, falling: high first
    high_near = [START + 600, 1.0, 1.1, 0.7, 0.8, 0, 0]
    t = ticks_from_bars([rising_tie, falling_tie, high_near], 300, spread=12)
    assert t.bid == [1.0, 0.8, 1.2, 1.1, 1.0, 1.2, 0.8, 0.9, 1.0, 1.1, 0.7, 0.8]
    assert t.time[:4] == [START, START + 75, START + 150, START + 225]
    assert t.jump == [True, False, False, False] * 3
    assert t.spread == [12] * 4 + [15] * 4 + [12] * 4
    assert t.volume == [2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]   # the bar's volume, shared out


@pytest.mark.parametrize(("text", "message"), [
    ("time,open,high,low,close\n1717372800,1.1,1.2,1.0,1.15\n1717372860,1.1,x,1.0,1.1\n",
     "line 3, column high: 'x' is not a number"),
    ("time,open,high,low,close\n1717372800,1.1,1.2,1.0,1.15\n1717372860,1.1,1.05,1.0,1.1\n",
     "line 3, column high: 1.05 is below the bar's open, low or close"),
    ("time,open,high,low,close\n1717372800,1.1,1.2,1.0,1.15\nyesterday,1.1,1.2,1.0,1.1\n",
     "line 3, column time: 'yesterday' is not a time"),
    ("time,open,high,low,close\n1717372860,1.1,1.2,1.0,1.15\n1717372800,1.1,1.2,1.0,1.1\n",
     "line 3, column time: not after the previous bar"),
    ("time,open,high,low,close\n1717372800,1.1,1.2,1.0,1.15\n1717372860,1.1,1.2\n",
     "line 3, column low: missing"),
    ("time,open,high,close\n1717372800,1.1,1.2,1.15\n", "line 1, column low: missing"),
    ("time,open,high,low,close\n1717372800,1.1,1.2,1.0,-1.15\n1717372860,1.1,1.2,1.0,1.1\n",
     "line 2, column close: '-1.15' must be a finite number > 0"),
    ("", "line 1: empty"),
])
def test_broken_files_name_the_line_and_the_column(tmp_path, text, message):
    with pytest.raises(HistoryError) as err:
        read_history(write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "h.csv") in str(err.value)


@pytest.mark.parametrize(("step", "found"), [(3600, "H1"), (86400, "D1"), (900, "M15")])
def test_bars_coarser_than_m5_are_refused_naming_the_timeframe_found_and_needed(tmp_path,
                                                                               step, found):
    text = ("time,open,high,low,close\n"
            f"{START:.0f},1.1,1.2,1.0,1.15\n{START + step:.0f},1.15,1.2,1.1,1.1\n")
    with pytest.raises(HistoryError) as err:
        read_history(write(tmp_path, text))
    assert f"the bars are {found}; replay needs M1 or M5 bars (or ticks)" in str(err.value)


def test_a_trades_file_with_a_stop_on_the_wrong_side_names_its_line_and_column(tmp_path):
    path = write(tmp_path, "ticket,symbol,direction,open_time,open_price,volume,sl,tp\n"
                           "7,EURUSD,SELL,1717372800,1.085,0.1,1.0840,0\n", name="t.csv")
    with pytest.raises(HistoryError) as err:
        read_trades(path)
    assert "line 2, column sl: 1.084 must be above the open price 1.085 of a SELL" in str(
        err.value)


def _sim(bars: list[list[float]]) -> tuple[SimTerminal, ManualClock]:
    clock = ManualClock(START)
    sim = SimTerminal(SimConfig(symbols=("EURUSD",), history_days=0.0,
                                initial_deposit_deal=False), clock=clock,
                      history={"EURUSD": ticks_from_bars(bars, 300, 12)})
    assert sim.initialize()
    return sim, clock


def _exit(sim: SimTerminal, ticket: int) -> tuple[float, int]:
    [out] = [d for d in sim.history_deals_get(position=ticket) if d.entry == c.DEAL_ENTRY_OUT]
    return out.price, out.reason


def test_a_stop_crossed_between_generated_ticks_fills_at_its_own_price():
    sim, clock = _sim([[START, 1.08500, 1.08500, 1.08300, 1.08350, 4, 0],
                       [START + 300, 1.08350, 1.08360, 1.08340, 1.08350, 4, 0]])
    ticket = open_recorded(sim, "EURUSD", "BUY", 0.1, 1.08512, sl=1.08420)
    clock.advance(300)
    sim.positions_get()   # catch up: the low tick (1.08300) passes through 1.08420
    assert _exit(sim, ticket) == (1.08420, c.DEAL_REASON_SL)


def test_a_bar_opening_beyond_a_stop_fills_at_the_open_as_on_a_gap():
    sim, clock = _sim([[START, 1.08500, 1.08510, 1.08490, 1.08500, 4, 0],
                       [START + 300, 1.08200, 1.08250, 1.08150, 1.08200, 4, 0]])
    ticket = open_recorded(sim, "EURUSD", "SELL", 0.1, 1.08500, sl=1.09000, tp=1.08300)
    clock.advance(300)
    sim.positions_get()
    # the SELL's TP (ask <= 1.08300) is passed by the gap: filled at the open's ask
    assert _exit(sim, ticket) == (1.08212, c.DEAL_REASON_TP)


@given(st.lists(st.tuples(st.integers(1, 400), st.integers(0, 400), st.integers(0, 400),
                          st.integers(0, 400)), min_size=1, max_size=30))
def test_generated_ticks_reproduce_each_bar_exactly(rows):
    """Whatever the bar, its four ticks open at its open, reach exactly its high and low and
    end at its close, inside the bar's time."""
    bars = []
    for i, (o, up, down, c_off) in enumerate(rows):
        o_ = 1.0 + o / 1e4
        high, low = o_ + up / 1e4, o_ - down / 1e4
        close = min(high, max(low, o_ + (c_off - 200) / 1e4))
        bars.append([START + 300 * i, o_, high, low, close, 10, 0])
    t = ticks_from_bars(bars, 300, 12)
    for i, bar in enumerate(bars):
        four = t.bid[4 * i: 4 * i + 4]
        assert (four[0], four[3], max(four), min(four)) == (bar[1], bar[4], bar[2], bar[3])
        assert all(bar[0] <= x < bar[0] + 300 for x in t.time[4 * i: 4 * i + 4])


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 300), st.integers(0, 300),
                          st.integers(0, 600)), min_size=2, max_size=40),
       st.integers(1, 400), st.booleans())
def test_a_stop_fills_at_its_level_inside_a_bar_and_never_better_than_it(rows, dist, buy):
    """Held to its stop over any bars: filled exactly at the stop when the path of a bar
    crossed it, at the price of a bar's open when the bar opened beyond it -- never at a
    better price than the stop."""
    from dtms.brokers.sim.history import hold_to_exit
    from dtms.brokers.sim.symbols import build_symbols
    spec = build_symbols(only=("EURUSD",))["EURUSD"]
    bars, p = [], 1.08500
    for i, (up, down, c_off, gap) in enumerate(rows):
        o = round(p + (gap - 300) / 1e5 * (i > 0), 5)
        high, low = round(o + up / 1e5, 5), round(o - down / 1e5, 5)
        close = round(min(high, max(low, o + (c_off - 300) / 1e5)), 5)
        bars.append([START + 300 * i, o, high, low, close, 4, 0])
        p = close
    ticks = ticks_from_bars(bars, 300, 12)
    entry = bars[0][1] + (0.00012 if buy else 0.0)
    # beyond the spread: a stop already passed when it is placed fills at the market at once
    sl = round(entry - (12 + dist) / 1e5, 5) if buy else round(entry + (12 + dist) / 1e5, 5)
    t, price, reason, _, _ = hold_to_exit(ticks, spec, buy, START + 10, sl, 0.0)
    if reason == "SL":
        assert (price <= sl + 1e-9) if buy else (price >= sl - 1e-9)
        i = ticks.time.index(t)
        assert ticks.jump[i] or price == sl
        if price != sl:
            assert t % 300 == 0   # only a bar's open fills past the stop


def test_mt5_positions_history_export_is_read_as_trades(tmp_path):
    text = ("Time\tPosition\tSymbol\tType\tVolume\tPrice\tS / L\tT / P\tTime\tPrice\t"
            "Commission\tSwap\tProfit\n"
            "2024.06.03 11:20:10\t51234\tEURUSD\tbuy\t0.10\t1.08512\t1.08312\t\t"
            "2024.06.03 11:22:30\t1.08312\t0.00\t0.00\t-20.00\n"
            "2024.06.03 09:00:00\t51200\tEURUSD\tsell\t0.20\t1.08500\t1.09500\t1.08000\t"
            "2024.06.03 12:00:00\t1.08662\t0.00\t0.00\t-32.40\n")
    trades = read_trades(write(tmp_path, text, "utf-16", "\r\n", name="positions.csv"))
    assert [(t.ticket, t.direction, t.open_time, t.open_price, t.volume, t.sl, t.tp)
            for t in trades] == [
        (51200, "SELL", START + 9 * 3600, 1.085, 0.2, 1.095, 1.08),
        (51234, "BUY", START + 11 * 3600 + 1210, 1.08512, 0.1, 1.08312, 0.0)]
