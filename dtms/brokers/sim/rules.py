"""Stateless MetaTrader 5 trade-request rules: volume, filling, trade mode, price grid, stops.

This module owns the checks that depend only on a symbol's specification and
the request (no account or position state). Each raises requests.Rejected with
the retcode a real trade server would return.
"""

from __future__ import annotations

from . import constants as c
from .requests import Rejected
from .symbols import SymbolSpec

EPS = 1e-9


def check_volume(spec: SymbolSpec, volume: float) -> None:
    """volume_min <= volume <= volume_max and a multiple of volume_step."""
    if volume < spec.volume_min - EPS or volume > spec.volume_max + EPS:
        raise Rejected(c.TRADE_RETCODE_INVALID_VOLUME)
    steps = round(volume / spec.volume_step)
    if abs(volume - steps * spec.volume_step) > EPS:
        raise Rejected(c.TRADE_RETCODE_INVALID_VOLUME)


def check_filling(spec: SymbolSpec, filling: int) -> None:
    """FOK needs SYMBOL_FILLING_FOK, IOC needs SYMBOL_FILLING_IOC, RETURN always ok."""
    if filling == c.ORDER_FILLING_RETURN:
        return
    if filling == c.ORDER_FILLING_FOK and spec.filling_mode & c.SYMBOL_FILLING_FOK:
        return
    if filling == c.ORDER_FILLING_IOC and spec.filling_mode & c.SYMBOL_FILLING_IOC:
        return
    raise Rejected(c.TRADE_RETCODE_INVALID_FILL)


def check_direction_allowed(spec: SymbolSpec, order_type: int) -> None:
    """Symbol trade modes that forbid opening in a direction."""
    buy = order_type in (c.ORDER_TYPE_BUY, c.ORDER_TYPE_BUY_LIMIT, c.ORDER_TYPE_BUY_STOP,
                         c.ORDER_TYPE_BUY_STOP_LIMIT)
    if spec.trade_mode == c.SYMBOL_TRADE_MODE_CLOSEONLY:
        raise Rejected(c.TRADE_RETCODE_CLOSE_ONLY)
    if spec.trade_mode == c.SYMBOL_TRADE_MODE_LONGONLY and not buy:
        raise Rejected(c.TRADE_RETCODE_LONG_ONLY)
    if spec.trade_mode == c.SYMBOL_TRADE_MODE_SHORTONLY and buy:
        raise Rejected(c.TRADE_RETCODE_SHORT_ONLY)


def normalized(spec: SymbolSpec, price: float) -> float:
    """Price rounded to digits, or Rejected(INVALID_STOPS) if not on the tick grid."""
    if price < 0:
        raise Rejected(c.TRADE_RETCODE_INVALID_STOPS)
    ticks = price / spec.point
    if abs(ticks - round(ticks)) > 1e-4:
        raise Rejected(c.TRADE_RETCODE_INVALID_STOPS)
    return round(price, spec.digits)


def check_stops(spec: SymbolSpec, pos_type: int, ref: float, sl: float, tp: float) -> None:
    """SL/TP strictly more than stops_level points away from ref, on the right side.

    MT5's documentation states ">= stops_level"; servers differ at the exact
    boundary, so the simulator takes the stricter reading.
    """
    need = spec.stops_level + 1 - 1e-6
    sign = 1.0 if pos_type == c.POSITION_TYPE_BUY else -1.0
    if sl and sign * (ref - sl) / spec.point < need:
        raise Rejected(c.TRADE_RETCODE_INVALID_STOPS)
    if tp and sign * (tp - ref) / spec.point < need:
        raise Rejected(c.TRADE_RETCODE_INVALID_STOPS)
