"""A trade's open figures for people (the CLI, the web view): its current price, open P/L in
money and in R. Pure: the broker's ``Position`` is the truth (its ``price_current`` and its
``profit``, in the account currency, as the terminal computes it)."""

from __future__ import annotations

from typing import Any

from dtms.model import Direction, Position, Trade


def open_figures(trade: Trade, position: Position | None) -> dict[str, Any]:
    """``price``, ``open_pl`` (money) and ``open_r`` (profit in units of the initial risk; None
    without an initial stop); all None when the position is not open at the broker."""
    if position is None:
        return {"price": None, "open_pl": None, "open_r": None}
    sign = 1.0 if trade.direction is Direction.BUY else -1.0
    risk = trade.initial_risk
    r = round(sign * (position.price_current - trade.entry_price) / risk, 2) if risk else None
    return {"price": position.price_current, "open_pl": round(position.profit, 2), "open_r": r}


__all__ = ["open_figures"]
