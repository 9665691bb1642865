"""Builders of the MetaTrader5 info records (symbol, tick, account, terminal) and filters.

This module owns the mapping from the simulator's internal state to the
SymbolInfo, Tick, AccountInfo and TerminalInfo namedtuples, and the MT5
"group" filter syntax ("*USD*,!EUR*") used by symbols_get / positions_get.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from . import constants as c
from .market import Market, SymbolState
from .trading import TradeEngine
from .types import AccountInfo, SimConfig, SymbolInfo, TerminalInfo, Tick

TERMINAL_BUILD = 4410
TERMINAL_VERSION = (500, TERMINAL_BUILD, "7 Jun 2024")


def matches_group(name: str, group: str | None) -> bool:
    """MT5 group filter: comma-separated wildcards, '!' excludes; case-insensitive."""
    if not group:
        return True
    patterns = [p.strip().upper() for p in group.split(",") if p.strip()]
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    name = name.upper()
    if any(fnmatchcase(name, p) for p in exclude):
        return False
    return not include or any(fnmatchcase(name, p) for p in include)


def tick_view(state: SymbolState) -> Tick:
    """Last tick of a symbol."""
    msc = state.last_tick_msc
    return Tick(time=msc // 1000, bid=state.stream.bid, ask=state.stream.ask, last=0.0,
                volume=0, time_msc=msc, flags=c.TICK_FLAG_BID | c.TICK_FLAG_ASK,
                volume_real=0.0)


def symbol_view(market: Market, state: SymbolState) -> SymbolInfo:
    """SymbolInfo of a symbol with current quotes."""
    spec = state.spec
    bid, ask = state.stream.bid, state.stream.ask
    spread_price = spec.spread * spec.point
    tick_value = market.tick_value(spec.name)
    change = (bid - state.day_open) / state.day_open * 100 if state.day_open else 0.0
    return SymbolInfo(
        custom=False, chart_mode=c.SYMBOL_CHART_MODE_BID, select=state.selected,
        visible=state.selected, session_deals=0, session_buy_orders=0, session_sell_orders=0,
        volume=0, volumehigh=0, volumelow=0, time=state.last_tick_msc // 1000,
        digits=spec.digits, spread=int(round((ask - bid) / spec.point)), spread_float=True,
        ticks_bookdepth=0, trade_calc_mode=spec.calc_mode, trade_mode=spec.trade_mode,
        start_time=0, expiration_time=0, trade_stops_level=spec.stops_level,
        trade_freeze_level=spec.freeze_level, trade_exemode=spec.exemode,
        swap_mode=c.SYMBOL_SWAP_MODE_POINTS, swap_rollover3days=c.DAY_OF_WEEK_WEDNESDAY,
        margin_hedged_use_leg=False, expiration_mode=spec.expiration_mode,
        filling_mode=spec.filling_mode, order_mode=spec.order_mode,
        order_gtc_mode=c.SYMBOL_ORDERS_GTC, option_mode=0, option_right=0,
        bid=bid, bidhigh=state.bid_high, bidlow=state.bid_low, ask=ask,
        askhigh=round(state.bid_high + spread_price, spec.digits),
        asklow=round(state.bid_low + spread_price, spec.digits),
        last=0.0, lasthigh=0.0, lastlow=0.0, volume_real=0.0, volumehigh_real=0.0,
        volumelow_real=0.0, option_strike=0.0, point=spec.point, trade_tick_value=tick_value,
        trade_tick_value_profit=tick_value, trade_tick_value_loss=tick_value,
        trade_tick_size=spec.point, trade_contract_size=spec.contract_size,
        trade_accrued_interest=0.0, trade_face_value=0.0, trade_liquidity_rate=0.0,
        volume_min=spec.volume_min, volume_max=spec.volume_max, volume_step=spec.volume_step,
        volume_limit=spec.volume_limit, swap_long=spec.swap_long, swap_short=spec.swap_short,
        margin_initial=0.0, margin_maintenance=0.0, session_volume=0.0, session_turnover=0.0,
        session_interest=0.0, session_buy_orders_volume=0.0, session_sell_orders_volume=0.0,
        session_open=state.day_open, session_close=0.0, session_aw=0.0,
        session_price_settlement=0.0, session_price_limit_min=0.0,
        session_price_limit_max=0.0, margin_hedged=spec.contract_size / 2,
        price_change=round(change, 4), price_volatility=0.0, price_theoretical=0.0,
        price_greeks_delta=0.0, price_greeks_theta=0.0, price_greeks_gamma=0.0,
        price_greeks_vega=0.0, price_greeks_rho=0.0, price_greeks_omega=0.0,
        price_sensitivity=0.0, basis="", category=spec.category,
        currency_base=spec.currency_base, currency_profit=spec.currency_profit,
        currency_margin=spec.currency_margin, bank="", description=spec.description,
        exchange="", formula="", isin="", name=spec.name, page="", path=spec.path,
    )


def account_view(config: SimConfig, engine: TradeEngine) -> AccountInfo:
    """AccountInfo with live equity and margin."""
    ledger = engine.ledger
    profit = engine.floating()
    equity = round(ledger.balance + ledger.credit + profit, 2)
    margin = engine.used_margin()
    return AccountInfo(
        login=config.login, trade_mode=config.trade_mode, leverage=config.leverage,
        limit_orders=config.limit_orders, margin_so_mode=c.ACCOUNT_STOPOUT_MODE_PERCENT,
        trade_allowed=True, trade_expert=True, margin_mode=config.margin_mode,
        currency_digits=2, fifo_close=False, balance=ledger.balance, credit=ledger.credit,
        profit=profit, equity=equity, margin=margin, margin_free=round(equity - margin, 2),
        margin_level=round(equity / margin * 100, 2) if margin else 0.0,
        margin_so_call=config.margin_so_call, margin_so_so=config.margin_so_so,
        margin_initial=0.0, margin_maintenance=0.0, assets=0.0, liabilities=0.0,
        commission_blocked=0.0, name=config.name, server=config.server,
        currency=config.currency, company=config.company,
    )


def terminal_view(config: SimConfig, connected: bool, algo_trading: bool) -> TerminalInfo:
    """TerminalInfo of the simulated terminal."""
    return TerminalInfo(
        community_account=False, community_connection=False, connected=connected,
        dlls_allowed=False, trade_allowed=algo_trading, tradeapi_disabled=False,
        email_enabled=False, ftp_enabled=False, notifications_enabled=False, mqid=False,
        build=TERMINAL_BUILD, maxbars=100_000, codepage=0, ping_last=20_000,
        community_balance=0.0, retransmission=0.0, company=config.company,
        name="DTMS Simulated MetaTrader 5", language="English",
        path="C:\\Program Files\\DTMS Sim MetaTrader 5",
        data_path="C:\\Program Files\\DTMS Sim MetaTrader 5",
        commondata_path="C:\\Users\\sim\\AppData\\Roaming\\MetaQuotes\\Terminal\\Common",
    )
