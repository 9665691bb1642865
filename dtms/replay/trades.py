"""The trades a replay manages: ``trades.csv`` as a trader has them.

This module owns :class:`RecordedTrade` and :func:`read_trades`. The header is
``ticket,symbol,direction,open_time,open_price,volume,sl,tp`` (any order, more columns
ignored; MT5's angle brackets and case do not matter); times are ISO-8601 or epoch seconds in
the history's time zone; ``sl``/``tp`` 0 or empty mean none. The CSV export of MT5's positions
history report (``Time, Position, Symbol, Type, Volume, Price, S / L, T / P, ...``) is read as
well. A bad file raises
:class:`~dtms.brokers.sim.history.HistoryError` naming the line (the header is line 1) and the
column, like the history readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dtms.brokers.sim.history import HistoryError, parse_time, read_table

COLUMNS = ("ticket", "symbol", "direction", "open_time", "open_price", "volume", "sl", "tp")
#: the columns of MT5's positions history report (Toolbox > History > Positions, exported):
#: ``Time, Position, Symbol, Type, Volume, Price, S / L, T / P, Time, Price, Commission, Swap,
#: Profit`` -- the first Time and Price are the open's
MT5_POSITIONS = {"time": "open_time", "position": "ticket", "type": "direction",
                 "price": "open_price", "s / l": "sl", "t / p": "tp"}


@dataclass(frozen=True, slots=True)
class RecordedTrade:
    ticket: int
    symbol: str
    direction: str        # "BUY" or "SELL"
    open_time: float      # epoch seconds
    open_price: float
    volume: float
    sl: float = 0.0
    tp: float = 0.0


def read_trades(path: str | Path) -> list[RecordedTrade]:
    """The trades of ``path``, oldest open first; raises HistoryError."""
    path = str(path)
    names, rows = read_table(path)
    col: dict[str, int] = {}
    for i, name in enumerate(names):   # the first of a repeated name (MT5: open, then close)
        col.setdefault(MT5_POSITIONS.get(name, name) if "ticket" not in names else name, i)
    missing = [c for c in COLUMNS[:6] if c not in col]
    if missing:
        raise HistoryError(f"{path}: line 1, column {missing[0]}: missing; the header needs "
                           f"{','.join(COLUMNS)}")
    trades: list[RecordedTrade] = []
    seen: dict[int, int] = {}

    def bad(number: int, column: str, why: str) -> HistoryError:
        return HistoryError(f"{path}: line {number}, column {column}: {why}")

    for number, cells in rows:
        cell = {n: cells[i] for n, i in col.items()}
        try:
            ticket = int(cell["ticket"])
        except ValueError:
            raise bad(number, "ticket", f"{cell['ticket']!r} is not an integer") from None
        if ticket <= 0:
            raise bad(number, "ticket", "must be > 0")
        if ticket in seen:
            raise bad(number, "ticket", f"{ticket} is already on line {seen[ticket]}")
        seen[ticket] = number
        symbol = cell["symbol"].upper()
        if not symbol:
            raise bad(number, "symbol", "empty")
        direction = cell["direction"].upper()
        if direction not in ("BUY", "SELL"):
            raise bad(number, "direction", f"{cell['direction']!r} must be BUY or SELL")
        try:
            opened = parse_time(cell["open_time"])
        except ValueError:
            raise bad(number, "open_time", f"{cell['open_time']!r} is not a time (ISO-8601 or "
                                           "epoch seconds)") from None
        values = {}
        for name in ("open_price", "volume", "sl", "tp"):
            text = cell.get(name, "") or "0"
            try:
                values[name] = float(text)
            except ValueError:
                raise bad(number, name, f"{text!r} is not a number") from None
            if values[name] < 0 or values[name] != values[name]:
                raise bad(number, name, f"{text!r} must be >= 0")
        for name in ("open_price", "volume"):
            if values[name] <= 0:
                raise bad(number, name, "must be > 0")
        sl, tp, price = values["sl"], values["tp"], values["open_price"]
        sign = 1 if direction == "BUY" else -1
        if sl and sign * (price - sl) <= 0:
            side = "below" if direction == "BUY" else "above"
            raise bad(number, "sl", f"{sl:g} must be {side} the open price {price:g} of a "
                                    f"{direction}")
        if tp and sign * (tp - price) <= 0:
            side = "above" if direction == "BUY" else "below"
            raise bad(number, "tp", f"{tp:g} must be {side} the open price {price:g} of a "
                                    f"{direction}")
        trades.append(RecordedTrade(ticket, symbol, direction, opened, price, values["volume"],
                                    sl, tp))
    if not trades:
        raise HistoryError(f"{path}: line 2: no trades")
    return sorted(trades, key=lambda t: (t.open_time, t.ticket))
