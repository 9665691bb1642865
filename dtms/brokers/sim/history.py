"""Recorded history for the simulated terminal: readers, ticks from bars, and the replay feed.

This module owns three things:

* **Readers.** :func:`read_history` reads MetaTrader 5's own exports -- "Export bars"
  (``<DATE> <TIME> <OPEN> <HIGH> <LOW> <CLOSE> <TICKVOL> <VOL> <SPREAD>``, tab-separated) and
  "Export ticks" (``<DATE> <TIME> <BID> <ASK> <LAST> <VOLUME> <FLAGS>``) -- and plain CSV with
  a header (``time,open,high,low,close[,volume,spread]`` or ``time,bid,ask``; time ISO-8601 or
  epoch seconds). UTF-16 (with BOM) or UTF-8, CRLF or LF. A bad file raises
  :class:`HistoryError` naming the line (the header is line 1) and the column. Bars must be
  M1 or M5: coarser ones are refused naming the timeframe found and the one needed.
* **Ticks from bars**, the way MT5's tester makes them in its OHLC modes: for each bar the
  open, then the nearer extreme, the other extreme, the close, a quarter of the bar apart
  (a tie goes low first on a rising bar, high first on a falling one). The spread is the
  bar's (when the file has one) or the given one; the bar's tick volume is shared out over
  its four ticks.
* **The feed** (:class:`HistoryStream`), which replaces a symbol's random walk in
  :class:`~dtms.brokers.sim.market.Market`: :func:`advance` plays every recorded tick up to
  a time, all symbols merged in time order, each followed by the terminal's SL/TP checks. A
  stop or target crossed between two generated ticks of one bar fills at its own price; on a
  bar's open tick (or a real recorded tick) it fills at that tick's price -- a gap fills at
  the open, as MT5's tester fills them (:meth:`HistoryStream.fill_price`).

Example::

    history = read_history("EURUSD_M5.csv")          # History(kind="bars", timeframe=300)
    sim = SimTerminal(config, clock, history={"EURUSD": history.ticks(spread=12)})
"""

from __future__ import annotations

import bisect
import codecs
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .market import Market
    from .symbols import SymbolSpec

#: timeframes replay accepts (seconds) -- the engine scores on M5 and M15 closes
ACCEPTED = {60: "M1", 300: "M5"}
_NAMES = {60: "M1", 120: "M2", 180: "M3", 240: "M4", 300: "M5", 600: "M10", 900: "M15",
          1200: "M20", 1800: "M30", 3600: "H1", 7200: "H2", 14400: "H4", 86400: "D1",
          604800: "W1"}
_ALIASES = {"tickvol": "volume", "tick_volume": "volume", "vol": "real_volume",
            "real_volume": "real_volume", "volume": "volume", "timestamp": "time",
            "datetime": "time", "date": "date", "time": "time"}


class HistoryError(ValueError):
    """A history or trades file cannot be used; the message names the file, line and column."""


def timeframe_name(seconds: float) -> str:
    """MT5's name of a bar length (``M5``), or the seconds themselves."""
    return _NAMES.get(int(seconds), f"{seconds:g} s bars")


@dataclass(slots=True)
class Ticks:
    """Ticks of one symbol as parallel columns, oldest first. ``jump[i]``: the path from the
    previous tick to this one is unknown (a bar's open, a real tick): a level crossed on it
    fills at this tick's price, not its own."""
    time: list[float] = field(default_factory=list)
    bid: list[float] = field(default_factory=list)
    spread: list[int] = field(default_factory=list)
    volume: list[int] = field(default_factory=list)
    jump: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.time)

    def append(self, t: float, bid: float, spread: int, volume: int, jump: bool) -> None:
        self.time.append(t)
        self.bid.append(bid)
        self.spread.append(spread)
        self.volume.append(volume)
        self.jump.append(jump)


@dataclass(slots=True)
class History:
    """What one file holds: ``kind`` "bars" (rows [time, open, high, low, close, volume,
    spread], ``timeframe`` in seconds) or "ticks" (``tick_rows`` [time, bid, ask])."""
    path: str
    kind: str
    timeframe: int = 0
    bars: list[list[float]] = field(default_factory=list)
    tick_rows: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.bars[0][0] if self.kind == "bars" else self.tick_rows[0][0]

    @property
    def end(self) -> float:
        """Time of the last tick this history makes."""
        if self.kind == "bars":
            return self.bars[-1][0] + self.timeframe * 3 // 4
        return self.tick_rows[-1][0]

    @property
    def tick_step(self) -> float:
        """Seconds between generated ticks (0: recorded ticks, irregular)."""
        return self.timeframe / 4 if self.kind == "bars" else 0.0

    def ticks(self, spread: int, point: float) -> Ticks:
        """The tick stream: from bars (``spread`` points where the file has none), or as read."""
        if self.kind == "bars":
            return ticks_from_bars(self.bars, self.timeframe, spread)
        out = Ticks()
        for t, bid, ask in self.tick_rows:
            out.append(t, bid, max(0, int(round((ask - bid) / point))), 1, True)
        return out

    def last_price(self) -> float:
        return self.bars[-1][4] if self.kind == "bars" else self.tick_rows[-1][1]


def ticks_from_bars(bars: Iterable[list[float]], timeframe: int, spread: int) -> Ticks:
    """Open, nearer extreme, other extreme, close of every bar, ``timeframe / 4`` apart."""
    out = Ticks()
    step = timeframe / 4
    for t, o, h, low, close, volume, bar_spread in bars:
        if h - o < o - low or (h - o == o - low and close < o):
            path = (o, h, low, close)
        else:
            path = (o, low, h, close)
        s = int(bar_spread) if bar_spread > 0 else spread
        v = int(volume)
        share, rest = divmod(max(v, 4), 4)
        for k, price in enumerate(path):
            out.append(t + k * step, price, s, share + (1 if k < rest else 0), k == 0)
    return out


# --- reading -------------------------------------------------------------------------------------
def _decode(raw: bytes, path: str) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    if raw.startswith(codecs.BOM_UTF8):
        return raw[3:].decode("utf-8")
    if len(raw) > 1 and raw[1:2] == b"\x00":   # UTF-16 LE without a BOM (some exports)
        return raw.decode("utf-16-le")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HistoryError(f"{path}: not UTF-8 or UTF-16 text ({exc.reason} at byte "
                           f"{exc.start})") from exc


def _split(line: str, sep: str) -> list[str]:
    return [cell.strip() for cell in line.split(sep)]


def read_table(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(normalised column names, [(line number, cells)]) of a delimited text file. Names
    lose MT5's angle brackets and case; the separator is a tab, ``;`` or ``,``."""
    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise HistoryError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    lines = _decode(raw, path).splitlines()
    if not lines or not lines[0].strip():
        raise HistoryError(f"{path}: line 1: empty; a header line is needed")
    header = lines[0].lstrip("\ufeff")
    sep = "\t" if "\t" in header else ";" if ";" in header else ","
    names = [n.strip("<> ").lower() for n in _split(header, sep)]
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = _split(line, sep)
        if len(cells) < len(names):
            missing = names[len(cells)]
            raise HistoryError(f"{path}: line {number}, column {missing}: missing "
                               f"({len(cells)} of {len(names)} columns)")
        rows.append((number, cells))
    return names, rows


def parse_time(text: str) -> float:
    """Epoch seconds from epoch seconds (or ms), ISO-8601 or MT5's ``2024.06.03 00:05[:00]``;
    a time without a zone is taken as UTC (the history's own zone). Raises ValueError."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError("not a time")
        return value / 1000.0 if value > 1e11 else value   # epoch milliseconds
    normal = text.replace(".", "-", 2) if text[4:5] == "." else text
    dt = datetime.fromisoformat(normal.replace("/", "-"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _number(path: str, number: int, column: str, text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HistoryError(f"{path}: line {number}, column {column}: {text!r} is not a "
                           "number") from None
    if not math.isfinite(value) or (positive and value <= 0) or value < 0:
        bound = "> 0" if positive else ">= 0"
        raise HistoryError(f"{path}: line {number}, column {column}: {text!r} must be a "
                           f"finite number {bound}")
    return value


def _time_of(path: str, names: list[str], number: int, cells: list[str]) -> float:
    col = {n: i for i, n in enumerate(names)}
    if "date" in col:
        text = cells[col["date"]] + (" " + cells[col["time"]] if "time" in col else "")
        column = "date" if "time" not in col else "date/time"
    else:
        text, column = cells[col["time"]], "time"
    try:
        return parse_time(text)
    except ValueError:
        raise HistoryError(f"{path}: line {number}, column {column}: {text!r} is not a time "
                           "(ISO-8601, epoch seconds or YYYY.MM.DD HH:MM:SS)") from None


def read_history(path: str | Path) -> History:
    """Bars or ticks from one file (see the module docstring); raises HistoryError."""
    path = str(path)
    names, rows = read_table(path)
    names = [_ALIASES.get(n, n) for n in names]
    col = {n: i for i, n in enumerate(names)}
    if "time" not in col and "date" not in col:
        raise HistoryError(f"{path}: line 1, column time: missing; the header needs a time "
                           "(or <DATE> <TIME>) column")
    if {"open", "high", "low", "close"} <= col.keys():
        history = History(path, "bars")
        history.bars = _bars(path, names, col, rows)
        _check_timeframe(history)
        return history
    if "bid" in col:
        history = History(path, "ticks")
        history.tick_rows = _ticks(path, names, col, rows)
        return history
    missing = [n for n in ("open", "high", "low", "close") if n not in col]
    raise HistoryError(f"{path}: line 1, column {missing[0]}: missing; bars need "
                       "time,open,high,low,close (ticks: time,bid,ask)")


def _bars(path: str, names: list[str], col: dict[str, int],
          rows: list[tuple[int, list[str]]]) -> list[list[float]]:
    bars: list[list[float]] = []
    last = -math.inf
    for number, cells in rows:
        t = _time_of(path, names, number, cells)
        o, h, low, c = (_number(path, number, k, cells[col[k]], positive=True)
                        for k in ("open", "high", "low", "close"))
        volume = (_number(path, number, "volume", cells[col["volume"]], positive=False)
                  if "volume" in col and cells[col["volume"]] else 0.0)
        spread = (_number(path, number, "spread", cells[col["spread"]], positive=False)
                  if "spread" in col and cells[col["spread"]] else 0.0)
        if h < max(o, c, low):
            raise HistoryError(f"{path}: line {number}, column high: {h:g} is below the "
                               f"bar's open, low or close")
        if low > min(o, c):
            raise HistoryError(f"{path}: line {number}, column low: {low:g} is above the "
                               f"bar's open or close")
        if t <= last:
            raise HistoryError(f"{path}: line {number}, column time: not after the previous "
                               "bar (bars must be oldest first, one per time)")
        last = t
        bars.append([t, o, h, low, c, volume, spread])
    if len(bars) < 2:
        raise HistoryError(f"{path}: line {len(rows) + 1}: at least 2 bars are needed to "
                           f"tell the timeframe, found {len(bars)}")
    return bars


def _check_timeframe(history: History) -> None:
    bars = history.bars
    step = min(b[0] - a[0] for a, b in zip(bars, bars[1:], strict=False))
    if step not in ACCEPTED:
        raise HistoryError(f"{history.path}: the bars are {timeframe_name(step)}; replay "
                           "needs M1 or M5 bars (or ticks): the engine scores on M5 and M15 "
                           "closes")
    for i, bar in enumerate(bars):
        if bar[0] % step:
            raise HistoryError(f"{history.path}: line {i + 2}, column time: a "
                               f"{timeframe_name(step)} bar must open on a multiple of "
                               f"{int(step)} s")
    history.timeframe = int(step)


def _ticks(path: str, names: list[str], col: dict[str, int],
           rows: list[tuple[int, list[str]]]) -> list[tuple[float, float, float]]:
    out: list[tuple[float, float, float]] = []
    bid = ask = 0.0
    last = -math.inf
    for number, cells in rows:
        t = _time_of(path, names, number, cells)
        # MT5 writes only what changed: an empty BID or ASK keeps the previous one
        if cells[col["bid"]]:
            bid = _number(path, number, "bid", cells[col["bid"]], positive=True)
        if "ask" in col and cells[col["ask"]]:
            ask = _number(path, number, "ask", cells[col["ask"]], positive=True)
        if not bid or not ask:
            continue   # before the first full quote
        if ask < bid:
            raise HistoryError(f"{path}: line {number}, column ask: {ask:g} is below the bid "
                               f"{bid:g}")
        if t < last:
            raise HistoryError(f"{path}: line {number}, column time: before the previous tick "
                               "(ticks must be oldest first)")
        last = t
        out.append((t, bid, ask))
    if not out:
        raise HistoryError(f"{path}: line {len(rows) + 1}: no tick with both a bid and an ask")
    return out


# --- the feed ------------------------------------------------------------------------------------
class HistoryStream:
    """A symbol's quotes played from recorded ticks (the PriceStream of a replay)."""

    def __init__(self, spec: SymbolSpec, ticks: Ticks) -> None:
        if not len(ticks):
            raise ValueError(f"{spec.name}: no ticks to replay")
        self.spec = spec
        self.ticks = ticks
        self.next = 0               # index of the next tick to play
        self.time = ticks.time[0]
        self.bid = ticks.bid[0]
        self.spread = ticks.spread[0]
        self.volume = 0
        self.jump = True
        self.prev_bid = self.prev_ask = 0.0
        self.held = False           # no walk to hold: the history is the path

    @property
    def ask(self) -> float:
        return round(self.bid + self.spread * self.spec.point, self.spec.digits)

    @property
    def regime(self) -> int:
        return 0

    @property
    def next_time(self) -> float:
        """Time of the next tick to play (inf when the history is over)."""
        return self.ticks.time[self.next] if self.next < len(self.ticks) else math.inf

    def play_next(self) -> float:
        """Make the next recorded tick the current one; returns its time."""
        i, ticks = self.next, self.ticks
        self.prev_bid, self.prev_ask = self.bid, self.ask
        self.time, self.bid = ticks.time[i], ticks.bid[i]
        self.spread, self.volume, self.jump = ticks.spread[i], ticks.volume[i], ticks.jump[i]
        self.next = i + 1
        return self.time

    def step_to(self, t: float) -> float:   # the random walk's entry point: nothing to walk
        return self.bid

    def force(self, t: float, bid: float) -> None:
        """A test's scripted tick: this bid now (the next recorded tick follows as recorded)."""
        self.time = max(self.time, t)
        self.prev_bid, self.prev_ask = self.bid, self.ask
        self.bid = round(bid, self.spec.digits)
        self.jump = True

    def fill_price(self, level: float, price: float, buy: bool) -> float:
        """Where a stop or target at ``level`` that this tick has reached fills: at the level
        when the path from the previous tick passed through it, else at this tick's price."""
        if self.jump:
            return price
        prev = self.prev_bid if buy else self.prev_ask
        return level if min(prev, price) <= level <= max(prev, price) else price


def advance(market: Market, t: float, on_tick: Callable[[str], None],
            on_step: Callable[[], None]) -> int:
    """Play every recorded tick up to time ``t`` (all symbols in time order); returns how many.
    The market's time is ``t`` afterwards (orders sent now are stamped with it)."""
    streams = [(name, state, state.stream) for name, state in market.symbols.items()
               if isinstance(state.stream, HistoryStream)]
    played = 0
    if len(streams) == 1:   # the common case: no merge
        name, state, stream = streams[0]
        while stream.next_time <= t:
            market.now = stream.play_next()
            market.record(state, market.now)
            on_tick(name)
            on_step()
            played += 1
    else:
        while True:
            best = min(streams, key=lambda s: s[2].next_time, default=None)
            if best is None or best[2].next_time > t:
                break
            name, state, stream = best
            market.now = stream.play_next()
            market.record(state, market.now)
            on_tick(name)
            on_step()
            played += 1
    market.now = max(market.now, t)
    return played


def open_recorded(terminal: Any, symbol: str, direction: str, volume: float, price: float,
                  sl: float = 0.0, tp: float = 0.0, comment: str = "") -> int:
    """Open a position the way the trader's was filled: now, at its recorded ``price`` (not the
    replayed quote, which a trade taken between two generated ticks never saw); returns the
    ticket. A replay control of the SimTerminal, like its test controls."""
    from . import constants as c

    kind = {"BUY": c.ORDER_TYPE_BUY, "SELL": c.ORDER_TYPE_SELL}[direction.upper()]
    with terminal._lock:
        terminal._catch_up()
        engine = terminal._engine
        spec = terminal._state(symbol).spec
        pos = None if engine.hedging else engine.netting_position(symbol)
        ticket, _ = engine.execute(spec, kind, float(volume), round(price, spec.digits),
                                   round(sl, spec.digits), round(tp, spec.digits), 0, comment,
                                   pos, c.DEAL_REASON_CLIENT)
        if pos is not None:
            return pos.ticket
        return ticket


def hold_to_exit(ticks: Ticks, spec: SymbolSpec, buy: bool, opened: float, sl: float,
                 tp: float, until: float = math.inf) -> tuple[float, float, str, float, float]:
    """A position held to its own SL/TP, as the terminal fills them (``TradeEngine.on_tick``
    and :meth:`HistoryStream.fill_price`): (exit time, exit price, "SL"/"TP"/"END", worst
    and best closing price on the way). "END": still open at the history's end (or
    ``until``), valued at the last closing price."""
    stream = HistoryStream(spec, ticks)
    stream.next = bisect.bisect_right(ticks.time, opened)
    if stream.next:
        stream.next -= 1
        stream.play_next()
    price = stream.bid if buy else stream.ask
    worst = best = price
    while stream.next < len(ticks) and stream.next_time <= until:
        stream.play_next()
        price = stream.bid if buy else stream.ask
        if sl and (price <= sl if buy else price >= sl):
            fill = stream.fill_price(sl, price, buy)
            return stream.time, fill, "SL", *_extremes(worst, best, fill, buy)
        if tp and (price >= tp if buy else price <= tp):
            fill = stream.fill_price(tp, price, buy)
            return stream.time, fill, "TP", *_extremes(worst, best, fill, buy)
        worst, best = _extremes(worst, best, price, buy)
    return stream.time, price, "END", worst, best


def _extremes(worst: float, best: float, price: float, buy: bool) -> tuple[float, float]:
    if buy:
        return min(worst, price), max(best, price)
    return max(worst, price), min(best, price)
