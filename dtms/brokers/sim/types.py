"""Result record shapes of the `MetaTrader5` package, plus the simulator's SimConfig.

This module owns the namedtuples the simulated terminal returns (field names
and order as in the real package, so consumers may read by name or position)
and the SimConfig dataclass that parametrises a SimTerminal.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any

from . import constants as c

AccountInfo = namedtuple(
    "AccountInfo",
    "login trade_mode leverage limit_orders margin_so_mode trade_allowed trade_expert "
    "margin_mode currency_digits fifo_close balance credit profit equity margin "
    "margin_free margin_level margin_so_call margin_so_so margin_initial "
    "margin_maintenance assets liabilities commission_blocked name server currency company",
)

TerminalInfo = namedtuple(
    "TerminalInfo",
    "community_account community_connection connected dlls_allowed trade_allowed "
    "tradeapi_disabled email_enabled ftp_enabled notifications_enabled mqid build "
    "maxbars codepage ping_last community_balance retransmission company name "
    "language path data_path commondata_path",
)

SymbolInfo = namedtuple(
    "SymbolInfo",
    "custom chart_mode select visible session_deals session_buy_orders "
    "session_sell_orders volume volumehigh volumelow time digits spread spread_float "
    "ticks_bookdepth trade_calc_mode trade_mode start_time expiration_time "
    "trade_stops_level trade_freeze_level trade_exemode swap_mode swap_rollover3days "
    "margin_hedged_use_leg expiration_mode filling_mode order_mode order_gtc_mode "
    "option_mode option_right bid bidhigh bidlow ask askhigh asklow last lasthigh "
    "lastlow volume_real volumehigh_real volumelow_real option_strike point "
    "trade_tick_value trade_tick_value_profit trade_tick_value_loss trade_tick_size "
    "trade_contract_size trade_accrued_interest trade_face_value trade_liquidity_rate "
    "volume_min volume_max volume_step volume_limit swap_long swap_short margin_initial "
    "margin_maintenance session_volume session_turnover session_interest "
    "session_buy_orders_volume session_sell_orders_volume session_open session_close "
    "session_aw session_price_settlement session_price_limit_min "
    "session_price_limit_max margin_hedged price_change price_volatility "
    "price_theoretical price_greeks_delta price_greeks_theta price_greeks_gamma "
    "price_greeks_vega price_greeks_rho price_greeks_omega price_sensitivity basis "
    "category currency_base currency_profit currency_margin bank description exchange "
    "formula isin name page path",
)

Tick = namedtuple("Tick", "time bid ask last volume time_msc flags volume_real")

# The real package returns a numpy structured array with these columns.
Rate = namedtuple("Rate", "time open high low close tick_volume spread real_volume")

TradePosition = namedtuple(
    "TradePosition",
    "ticket time time_msc time_update time_update_msc type magic identifier reason "
    "volume price_open sl tp price_current swap profit symbol comment external_id",
)

TradeOrder = namedtuple(
    "TradeOrder",
    "ticket time_setup time_setup_msc time_done time_done_msc time_expiration type "
    "type_time type_filling state magic position_id position_by_id reason "
    "volume_initial volume_current price_open sl tp price_current price_stoplimit "
    "symbol comment external_id",
)

TradeDeal = namedtuple(
    "TradeDeal",
    "ticket order time time_msc type entry magic position_id reason volume price "
    "commission swap profit fee symbol comment external_id",
)

TradeRequest = namedtuple(
    "TradeRequest",
    "action magic order symbol volume price stoplimit sl tp deviation type "
    "type_filling type_time expiration comment position position_by",
)

OrderSendResult = namedtuple(
    "OrderSendResult",
    "retcode deal order volume price bid ask comment request_id retcode_external request",
)

OrderCheckResult = namedtuple(
    "OrderCheckResult",
    "retcode balance equity profit margin margin_free margin_level comment request",
)


HISTORY_MODES = ("random", "flat")


@dataclass
class SimConfig:
    """Everything that parametrises a SimTerminal. All fields have working defaults.

    symbol_overrides patches symbol spec fields by base name, e.g.
    ``{"BTCUSD": {"filling_mode": 2, "trade_mode": 3}}``; field names are those
    of ``symbols.SymbolSpec``. ``symbols`` restricts the terminal to a subset of
    the built-in symbols (base names, without suffix). ``history_mode`` picks the
    pre-start M1 history: ``"random"`` (the seeded walk) or ``"flat"`` (every bar at the
    symbol's start bid, so indicators over history are exactly known).
    """

    seed: int = 1
    login: int = 5_001_234
    password: str | None = None
    server: str = "DTMS-Sim"
    name: str = "DTMS Simulator"
    company: str = "DTMS Simulated Broker Ltd"
    currency: str = "USD"
    balance: float = 10_000.0
    leverage: int = 100
    margin_mode: int = c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
    trade_mode: int = c.ACCOUNT_TRADE_MODE_DEMO
    margin_so_call: float = 100.0
    margin_so_so: float = 50.0
    limit_orders: int = 200
    limit_positions: int = 0  # 0 = unlimited
    commission_per_lot: float = 0.0  # charged (negative) on every deal, per lot
    symbol_suffix: str = ""
    symbols: tuple[str, ...] | None = None
    symbol_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    closed_markets: tuple[str, ...] = ()  # base names whose market starts closed
    algo_trading: bool = True  # terminal "Algo Trading" button
    tick_interval: float = 1.0  # sim seconds between generated ticks
    max_catchup_steps: int = 10_000  # per catch-up; coarser steps beyond this
    history_days: float = 14.0  # M1 history generated before the start time
    history_mode: str = "random"  # "random" walk, or "flat" at the start bid
    initial_deposit_deal: bool = True  # a DEAL_TYPE_BALANCE deal for the deposit
    regime_mean_seconds: float = 7_200.0  # mean lifetime of a price regime
    first_ticket: int = 50_000_001  # first order/position ticket (deals have their own counter)
    first_deal: int = 40_000_001
    stop_out: bool = True  # close the worst position when margin level < margin_so_so

    def __post_init__(self) -> None:
        if self.history_mode not in HISTORY_MODES:
            raise ValueError(f"history_mode must be one of {HISTORY_MODES}, "
                             f"got {self.history_mode!r}")
