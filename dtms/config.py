"""Typed settings, loaded and validated once, then passed down explicitly.

Sources, later ones winning:

1. the defaults below (identical to the shipped, commented ``config/dtms.toml``; a test keeps
   them in step);
2. a TOML file: ``--config PATH``, else ``$DTMS_CONFIG``, else ``./config/dtms.toml`` if present;
3. environment variables ``DTMS_<SECTION>_<KEY>``, e.g. ``DTMS_RPC_PORT=8101``.

The server and the client commands read the same settings, so they always agree on the port.
No other module reads ``os.environ`` or a file for settings.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ENV_PREFIX = "DTMS_"
DEFAULT_FILE = Path("config/dtms.toml")
_ZONE_HINT = ('an IANA time zone name such as "Europe/Athens" (UTC+2, UTC+3 in summer) or '
              '"Etc/GMT-2" (UTC+2 all year)')
#: settings that were replaced, and by what: an old file or variable is told what to use
REPLACED = {"signals.server_utc_offset_h": f"signals.server_timezone, {_ZONE_HINT}"}


class ConfigError(ValueError):
    """A setting is unknown or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    startup_timeout_s: float = 60.0
    log_level: str = "INFO"
    log_format: str = "json"
    supervisor_log: str = "data/supervisor.log"
    switch_interval_ms: float = 0.5
    gc_freeze: bool = True
    gc_gen0_threshold: int = 50_000


@dataclass(frozen=True, slots=True)
class RpcSettings:
    host: str = "127.0.0.1"
    port: int = 8001
    token: str = ""
    max_frame_bytes: int = 1_048_576
    max_connections: int = 1024
    max_inflight_per_conn: int = 128
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 10.0     # a message must arrive whole this soon after its first byte
    request_timeout_s: float = 30.0
    notify_queue: int = 1024


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108
    token: str = ""                   # Bearer token; required for a non-loopback host


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    backend: str = "sim"
    module: str = "MetaTrader5"
    path: str = ""
    login: int = 0
    password: str = ""
    server: str = ""
    call_timeout_s: float = 10.0
    connect_retry_s: float = 2.0
    poll_interval_s: float = 0.25
    poll_max_share: float = 0.1
    magic: int = 770077
    comment_tag: str = "DTMS"
    deviation_points: int = 20
    absent_polls: int = 3   # a position missing this many polls in a row, no closing deal: UNKNOWN
    module_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of NAME:ATTR(...)
    bridge_host: str = "127.0.0.1"    # `dtms terminal-bridge` (backend = "bridge")
    bridge_port: int = 8003
    bridge_token: str = ""
    bridge_tls: bool = False
    bridge_ca: str = ""               # PEM file the bridge's certificate must chain to; "" = system CAs
    bridge_tls_verify: bool = True
    heartbeat_interval_s: float = 0.5   # a ping to the terminal link this often...
    heartbeat_timeout_s: float = 1.0    # ...unanswered this long: NOT_READY, reconnect


@dataclass(frozen=True, slots=True)
class SimSettings:
    seed: int = 42
    speed: float = 1.0
    account: str = "hedging"
    balance: float = 10_000.0
    symbol_suffix: str = ""
    tick_interval_s: float = 1.0
    remote_host: str = "127.0.0.1"
    remote_port: int = 8002


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: str = "data/dtms.sqlite3"
    synchronous: str = "FULL"
    busy_timeout_ms: int = 5000
    max_batch: int = 512
    max_size_mb: float = 0.0          # cap on the database file; 0 = no cap (the disk's size)
    retention_days: float = 30.0
    archive_interval_s: float = 3600.0
    webhooks_max_queued: int = 10_000  # undelivered webhook deliveries kept; beyond: dropped


@dataclass(frozen=True, slots=True)
class RecoverySettings:
    adopt_unknown: bool = False       # manage open positions with DTMS's magic it has no record of


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    mailbox_size: int = 4096
    max_trades: int = 200_000
    ask_timeout_s: float = 10.0
    max_batch: int = 256
    owned_elsewhere_strategies: tuple[str, ...] = ()
    owned_elsewhere_owners: tuple[str, ...] = ()
    owned_elsewhere_magics: tuple[int, ...] = ()   # positions with these magics -> OWNED_ELSEWHERE


@dataclass(frozen=True, slots=True)
class TradeSettings:
    mailbox_size: int = 64
    max_restarts: int = 5
    restart_period_s: float = 60.0


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Rule parameters of SPEC section 5; a trade's ``policy`` map overrides any of them."""
    l1_score: float = -2.0            # HEALTHY -> WARNING_L1 at or below
    l2_score: float = -4.0            # WARNING_L1 -> WARNING_L2 at or below
    hedge_score: float = -6.0         # WARNING_L2 -> HEDGED at or below
    l1_exit_score: float = 0.0        # WARNING_L1 -> HEALTHY at or above (hysteresis)
    l2_exit_score: float = -2.0       # WARNING_L2 -> WARNING_L1 at or above
    recovery_score: float = 1.0       # RECOVERING -> HEALTHY after the recovery timer
    flat_timer_min: float = 75.0      # started in WARNING_L1; HEDGED past it -> close all
    recovery_min: float = 30.0
    l1_tighten_r: float = 0.3         # WARNING_L1: SL this many R behind price
    l2_close_fraction: float = 0.5    # WARNING_L2: close this part
    hedge_ratio: float = 0.5          # HEDGED: hedge this part of the volume
    breakeven_r: float = 1.0          # profit in R that moves the SL to breakeven
    breakeven_buffer_spreads: float = 1.0
    trail_activation_r: float = 1.5   # profit in R from which the ATR trail runs
    trail_atr_mult: float = 2.0
    trail_step_points: float = 10.0   # smallest SL improvement worth a request
    partial_levels_r: tuple[float, ...] = ()     # profit ladder, e.g. [1.5, 2.5]
    partial_fractions: tuple[float, ...] = ()    # of the initial volume, e.g. [0.25, 0.25]
    time_stop_min: float = 0.0        # close a HEALTHY trade after this long; 0 = off
    score_cooldown_s: float = 60.0    # fast (tick) re-scoring at most this often
    requote_retries: int = 3
    retry_after_s: float = 10.0       # a failed action is offered again after this (market time)
    l2_close_repeat: bool = False     # WARNING_L2: close again at every re-entry
    mode: str = "live"                # "shadow": decide and journal, never send (README)
    # the broker-side floor and the per-trade guards (issue 15)
    attach_sl_atr: float = 3.0        # a trade registered without an SL gets one this many ATRs away
    attach_sl_points: float = 0.0     # ... or this many points (0 = use the ATR)
    max_loss_r: float = 0.0           # no stop DTMS sets is farther than this many R from entry; 0 = off
    max_spread_mult: float = 0.0      # no trailing/tightening while spread > this x median; 0 = off


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The account guard (issue 15, SPEC section 11): account-level limits, in the account's
    currency; time is the terminal's, in ``signals.server_timezone``."""
    daily_loss_limit: float = 0.0     # money; 0 = off
    daily_loss_pct: float = 0.0       # % of the day's start; 0 = off (both set: the tighter wins)
    day_start: str = "balance"        # balance or equity at the day reset
    day_reset_hour: int = 0           # 0-23, server time
    max_drawdown_pct: float = 0.0     # 0 = off
    drawdown_mode: str = "trailing"   # trailing (from the equity peak) or static (initial_balance)
    initial_balance: float = 0.0      # 0 = the balance when the guard first saw the account
    daily_profit_target: float = 0.0  # money; 0 = off
    on_profit: str = "lock"           # lock (tighten every managed stop) or close
    on_breach: str = "close_managed"  # close_managed, close_all or alert_only
    close_new_while_locked: bool = True
    risk_budget: bool = False         # tighten stops so the worst case fits the daily limit
    weekend_time: str = ""            # HH:MM on the last trading day (server time); "" = off
    on_weekend: str = "breakeven"     # breakeven or close
    poll_s: float = 1.0               # the guard reads the account and positions this often


@dataclass(frozen=True, slots=True)
class SignalSettings:
    weight_structure: float = 3.0
    weight_vwap: float = 2.0
    weight_momentum: float = 2.0
    weight_ema: float = 1.5
    weight_delta: float = 1.0
    weight_candle: float = 1.0
    atr_period: int = 14
    atr_baseline_bars: int = 96       # ATR ratio = ATR now / its mean over these bars
    vol_low_ratio: float = 0.7
    vol_high_ratio: float = 1.3
    bb_period: int = 20
    bb_stddev: float = 2.0
    range_bb_width: float = 0.004     # Bollinger width / middle below this = range
    confluence_ratio: float = 0.70
    swing_strength: int = 2           # bars each side of a swing high/low
    server_timezone: str = "UTC"      # the broker server's IANA time zone, for sessions and VWAP
    session_multipliers: dict[str, float] = field(default_factory=lambda: {
        "asia": 1.2, "london": 1.0, "overlap": 0.9, "newyork": 1.0, "late": 1.2})
    volatility_multipliers: dict[str, float] = field(default_factory=lambda: {
        "low": 0.85, "normal": 1.0, "high": 1.25})
    symbol_multipliers: dict[str, float] = field(default_factory=lambda: {
        "XAUUSD": 1.2, "BTCUSD": 1.5})


@dataclass(frozen=True, slots=True)
class MarketSettings:
    bars: int = 300                   # closed M5/M15 bars kept per symbol
    tick_poll_s: float = 0.25         # how often each symbol's tick is read
    gap_bars: int = 2                 # a tick this many bars after the last one is a gap


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    root_max_restarts: int = 2
    root_period_s: float = 10.0
    trades_max_restarts: int = 3      # the market supervisor's (symbols); trades: [trades]
    trades_period_s: float = 5.0
    min_backoff_s: float = 0.1
    max_backoff_s: float = 30.0
    jitter: float = 0.2
    shutdown_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Retries back off from ``backoff_min_s`` doubling up to ``backoff_max_s`` (with jitter):
    the defaults wait 3.9 to 7.8 s over 7 attempts, longer than a restart of DTMS (~1 s)."""
    timeout_s: float = 5.0
    retries: int = 7
    backoff_min_s: float = 0.25
    backoff_max_s: float = 2.0
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    verify: bool = True


# -- webhooks ([[webhooks]], issue 17 part 2) ------------------------------------------------
#: events a webhook may name; ``guard.*`` (or one ``guard.<name>``) matches the account guard's
WEBHOOK_EVENTS = ("trade.state", "trade.action", "supervisor.giveup", "service.not_ready")
WEBHOOK_PREFIXES = ("guard",)
WEBHOOK_FORMATS = ("dtms", "slack", "discord", "telegram")
WEBHOOK_MAX_BACKOFF_S = 30.0      # the cap between two tries


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """One ``[[webhooks]]`` table: where to POST which events. ``format`` "dtms" posts the
    envelope ``{event, delivery, at, data}``; "slack", "discord" and "telegram" post the body
    those services accept (a one-line text; telegram needs ``chat_id``). ``name`` labels the
    endpoint in metrics and logs (default: the URL's scheme and host, never its path, which
    often holds a token)."""
    url: str = ""
    events: tuple[str, ...] = ()
    secret: str = ""
    format: str = "dtms"
    chat_id: str = ""
    name: str = ""
    timeout_s: float = 10.0
    min_backoff_s: float = 1.0
    max_backoff_s: float = WEBHOOK_MAX_BACKOFF_S

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        from urllib.parse import urlsplit
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _webhooks(value: Any) -> tuple[WebhookSettings, ...]:
    """``[[webhooks]]`` (a list of tables) as settings; every bad key is named."""
    if isinstance(value, Mapping):
        raise ConfigError("webhooks: must be an array of tables, [[webhooks]] in the config "
                          "file (not [webhooks], nor DTMS_WEBHOOKS_* variables)")
    if not isinstance(value, list | tuple):
        raise ConfigError(f"webhooks: must be an array of tables ([[webhooks]]), got {value!r}")
    types = typing.get_type_hints(WebhookSettings)
    hooks, problems = [], []
    for i, table in enumerate(value):
        if isinstance(table, WebhookSettings):
            hooks.append(table)
            continue
        if not isinstance(table, Mapping):
            problems.append(f"webhooks[{i}]: must be a table, got {table!r}")
            continue
        values = {}
        for key, v in table.items():
            if key not in types:
                problems.append(f"webhooks[{i}].{key}: unknown setting; known: "
                                + ", ".join(types))
                continue
            try:
                values[key] = _coerce(v, types[key], f"webhooks[{i}].{key}")
            except ConfigError as exc:
                problems.append(str(exc))
        hooks.append(WebhookSettings(**values))
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(hooks)


def webhook_problems(hooks: tuple[WebhookSettings, ...]) -> list[str]:
    """Every invalid ``[[webhooks]]`` key, named ``webhooks[i].key`` with its bound."""
    from urllib.parse import urlsplit
    problems: list[str] = []
    seen: dict[str, int] = {}
    known = ", ".join([*WEBHOOK_EVENTS, *(f"{p}.*" for p in WEBHOOK_PREFIXES)])
    for i, h in enumerate(hooks):
        at = f"webhooks[{i}]"
        try:
            parts = urlsplit(h.url)
            usable = (parts.scheme in ("http", "https") and bool(parts.hostname)
                      and parts.port != 0 and not any(c.isspace() for c in h.url))
        except ValueError:   # e.g. a port out of range
            usable = False
        if not usable:
            problems.append(f"{at}.url: must be an http:// or https:// URL with a host "
                            f"(and a port in 1..65535), got {h.url!r}")
        if h.url in seen:
            problems.append(f"{at}.url: the same URL as webhooks[{seen[h.url]}]; name each "
                            "endpoint once with all its events")
        seen.setdefault(h.url, i)
        if not h.events:
            problems.append(f"{at}.events: must name at least one of {known}")
        for event in h.events:
            prefix, _, rest = event.partition(".")
            if event not in WEBHOOK_EVENTS and not (prefix in WEBHOOK_PREFIXES and rest):
                problems.append(f"{at}.events: unknown event {event!r}; known: {known}")
        if h.format not in WEBHOOK_FORMATS:
            problems.append(f"{at}.format: must be one of {', '.join(WEBHOOK_FORMATS)}, "
                            f"got {h.format!r}")
        if h.format == "telegram" and not h.chat_id:
            problems.append(f"{at}.chat_id: required with format = \"telegram\"")
        if h.chat_id and h.format != "telegram":
            problems.append(f"{at}.chat_id: only for format = \"telegram\", got format "
                            f"{h.format!r}")
        if not 0 < h.timeout_s <= 300:
            problems.append(f"{at}.timeout_s: must be in (0, 300], got {h.timeout_s:g}")
        if not 0 < h.min_backoff_s <= h.max_backoff_s <= WEBHOOK_MAX_BACKOFF_S:
            problems.append(f"{at}.min_backoff_s, {at}.max_backoff_s: must be 0 < min <= max "
                            f"<= {WEBHOOK_MAX_BACKOFF_S:g}, got {h.min_backoff_s:g}, "
                            f"{h.max_backoff_s:g}")
    return problems


@dataclass(frozen=True, slots=True)
class Settings:
    service: ServiceSettings = field(default_factory=ServiceSettings)
    rpc: RpcSettings = field(default_factory=RpcSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    sim: SimSettings = field(default_factory=SimSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    trades: TradeSettings = field(default_factory=TradeSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    signals: SignalSettings = field(default_factory=SignalSettings)
    market: MarketSettings = field(default_factory=MarketSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    webhooks: tuple[WebhookSettings, ...] = ()    # [[webhooks]]: no default endpoint

    def replace(self, **sections: Any) -> Settings:
        """A copy with some keys of some sections changed: ``s.replace(rpc={"port": 0})``;
        ``webhooks`` is replaced whole: ``s.replace(webhooks=[{"url": ..., "events": [...]}])``."""
        return _build({name: values if name == "webhooks"
                       else {**_as_dict(getattr(self, name)), **dict(values)}
                       for name, values in sections.items()}, base=self)


def _as_dict(section: Any) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """A TOML or environment value as the setting's type. Loose on purpose (env vars are text:
    "5", "1.5,2.5", "true"); never for the wire, whose policy map is typed exactly by
    ``dtms.policy.overrides``."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if isinstance(value, str):  # env form: "XAUUSD=1.2,BTCUSD=1.5"
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError(f"{where}: expected KEY=VALUE pairs, got {value!r}")
            value = {k.strip(): v.strip() for k, v in pairs}
            if typing.get_args(kind)[1] is Any:   # env text spelling TOML values
                value = {k: _toml_value(v) for k, v in value.items()}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        item = typing.get_args(kind)[1]
        return {str(k): _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if kind is Any:
        return value      # a TOML value, its type kept
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from exc
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from exc
    if kind is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {kind!r}")  # pragma: no cover


def _toml_value(text: str) -> Any:
    """An environment variable's text as the TOML value it spells (``18812`` an integer,
    ``true`` a boolean, ``"x"`` a string), else the text itself: ``module_args``' types are
    kept from the environment as from the file."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(data: Mapping[str, Mapping[str, Any]], base: Settings | None = None) -> Settings:
    base = base or Settings()
    hints = typing.get_type_hints(Settings)
    sections: dict[str, Any] = {}
    for name, values in data.items():
        if name not in hints:
            raise ConfigError(f"unknown config section [{name}]")
        if name == "webhooks":
            sections[name] = _webhooks(values)
            continue
        klass = hints[name]
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table")
        field_types = typing.get_type_hints(klass)
        current = _as_dict(getattr(base, name))
        for key, value in values.items():
            if key not in field_types:
                instead = REPLACED.get(f"{name}.{key}")
                raise ConfigError(f"unknown setting {name}.{key}"
                                  + (f": replaced by {instead}" if instead else ""))
            current[key] = _coerce(value, field_types[key], f"{name}.{key}")
        sections[name] = klass(**current)
    settings = dataclasses.replace(base, **sections)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    problems: list[str] = []
    for name, port in (("rpc.port", s.rpc.port), ("metrics.port", s.metrics.port)):
        if not 0 <= port <= 65535:
            problems.append(f"{name}: must be 0..65535, got {port}")
    if (s.broker.backend not in ("sim", "sim-remote", "mt5", "bridge")
            and not s.broker.backend.startswith("module:")):
        problems.append("broker.backend: must be sim, sim-remote, mt5, bridge or module:NAME, "
                        f"got {s.broker.backend!r}")
    if not 0 <= s.broker.bridge_port <= 65535:
        problems.append(f"broker.bridge_port: must be 0..65535, got {s.broker.bridge_port}")
    bad_args = sorted(k for k in s.broker.module_args if not k.isidentifier())
    if bad_args:
        problems.append("broker.module_args: keys must be Python identifiers (keyword "
                        f"arguments), got {bad_args}")
    if s.broker.module_args and s.broker.backend in ("sim", "sim-remote", "bridge"):
        problems.append("broker.module_args: only for backend mt5 or module:NAME:ATTR, not "
                        f"{s.broker.backend!r}")
    from dtms.net import is_loopback  # it imports this module (ENV_PREFIX)
    if s.broker.backend == "bridge" and not s.broker.bridge_token and not is_loopback(
            s.broker.bridge_host):
        problems.append(f"broker.bridge_token: required for a bridge off loopback "
                        f"(broker.bridge_host = {s.broker.bridge_host!r}): the bridge's --token")
    if s.broker.bridge_ca and not s.broker.bridge_tls:
        problems.append("broker.bridge_ca: needs broker.bridge_tls = true")
    for name, value in (("broker.heartbeat_interval_s", s.broker.heartbeat_interval_s),
                        ("broker.heartbeat_timeout_s", s.broker.heartbeat_timeout_s)):
        if value <= 0:
            problems.append(f"{name}: must be > 0, got {value}")
    if s.sim.account not in ("hedging", "netting"):
        problems.append(f"sim.account: must be hedging or netting, got {s.sim.account!r}")
    if s.store.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        problems.append(f"store.synchronous: must be OFF/NORMAL/FULL/EXTRA, got {s.store.synchronous!r}")
    if s.service.log_format not in ("json", "text"):
        problems.append(f"service.log_format: must be json or text, got {s.service.log_format!r}")
    for name, value in (("rpc.max_frame_bytes", s.rpc.max_frame_bytes),
                        ("rpc.max_connections", s.rpc.max_connections),
                        ("rpc.max_inflight_per_conn", s.rpc.max_inflight_per_conn),
                        ("rpc.frame_timeout_s", s.rpc.frame_timeout_s),
                        ("service.startup_timeout_s", s.service.startup_timeout_s),
                        ("broker.poll_interval_s", s.broker.poll_interval_s)):
        if value <= 0:
            problems.append(f"{name}: must be > 0, got {value}")
    if not 0 < s.broker.poll_max_share <= 1:
        problems.append(f"broker.poll_max_share: must be in (0, 1], got {s.broker.poll_max_share}")
    if any(m < 0 for m in s.registry.owned_elsewhere_magics):
        problems.append("registry.owned_elsewhere_magics: each must be >= 0, got "
                        f"{list(s.registry.owned_elsewhere_magics)}")
    if s.broker.magic in s.registry.owned_elsewhere_magics:
        problems.append(f"registry.owned_elsewhere_magics: must not hold DTMS's own "
                        f"broker.magic ({s.broker.magic})")
    if s.client.retries < 1:
        problems.append(f"client.retries: must be >= 1, got {s.client.retries}")
    if not 0 < s.client.backoff_min_s <= s.client.backoff_max_s:
        problems.append("client.backoff_min_s, client.backoff_max_s: must be 0 < min <= max, got "
                        f"{s.client.backoff_min_s:g}, {s.client.backoff_max_s:g}")
    from dtms.policy.overrides import policy_problems  # it imports this module's dataclasses
    problems.extend(f"policy.{k}: {v}" for k, v in policy_problems(s.policy).items())
    try:
        ZoneInfo(s.signals.server_timezone)   # read once here; scoring finds it cached
    except (ZoneInfoNotFoundError, ValueError, OSError):
        problems.append(f"signals.server_timezone: unknown time zone "
                        f"{s.signals.server_timezone!r}, expected {_ZONE_HINT}")
    problems.extend(_guard_problems(s.guard))
    if s.broker.absent_polls < 1:
        problems.append(f"broker.absent_polls: must be >= 1, got {s.broker.absent_polls}")
    if s.store.webhooks_max_queued < 1:
        problems.append(f"store.webhooks_max_queued: must be >= 1, got "
                        f"{s.store.webhooks_max_queued}")
    problems.extend(webhook_problems(s.webhooks))
    if problems:
        raise ConfigError("; ".join(problems))


_CHOICES = {"day_start": ("balance", "equity"), "drawdown_mode": ("trailing", "static"),
            "on_profit": ("lock", "close"), "on_breach": ("close_managed", "close_all",
                                                          "alert_only"),
            "on_weekend": ("breakeven", "close")}


def _guard_problems(g: GuardSettings) -> list[str]:
    problems = [f"guard.{k}: must be one of {', '.join(v)}, got {getattr(g, k)!r}"
                for k, v in _CHOICES.items() if getattr(g, k) not in v]
    for name in ("daily_loss_limit", "daily_loss_pct", "max_drawdown_pct", "initial_balance",
                 "daily_profit_target"):
        value = getattr(g, name)
        if not (value >= 0 and value != float("inf")):
            problems.append(f"guard.{name}: must be a finite number >= 0, got {value}")
    for name in ("daily_loss_pct", "max_drawdown_pct"):
        if getattr(g, name) > 100:
            problems.append(f"guard.{name}: must be <= 100 (percent), got {getattr(g, name)}")
    if not 0 <= g.day_reset_hour <= 23:
        problems.append(f"guard.day_reset_hour: must be 0..23, got {g.day_reset_hour}")
    if g.weekend_time and not _hhmm(g.weekend_time):
        problems.append(f"guard.weekend_time: must be HH:MM (00:00-23:59) or \"\", "
                        f"got {g.weekend_time!r}")
    if not g.poll_s > 0:
        problems.append(f"guard.poll_s: must be > 0, got {g.poll_s}")
    return problems


def _hhmm(text: str) -> tuple[int, int] | None:
    """``"21:30"`` -> (21, 30); None when it is not a time of day."""
    hh, sep, mm = text.partition(":")
    if not (sep and hh.isdigit() and mm.isdigit() and len(mm) == 2 and len(hh) <= 2):
        return None
    h, m = int(hh), int(mm)
    return (h, m) if h <= 23 and m <= 59 else None


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    hints = typing.get_type_hints(Settings)
    out: dict[str, dict[str, Any]] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == "DTMS_CONFIG":
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section = next((s for s in hints if rest.startswith(s + "_")), None)
        if section is None:
            continue  # not a setting (e.g. DTMS_SOMETHING_ELSE used by a wrapper script)
        out.setdefault(section, {})[rest[len(section) + 1:]] = value
    return out


def load(path: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings once: defaults, then the TOML file, then ``DTMS_*`` variables."""
    environ = os.environ if environ is None else environ
    file = Path(path) if path else (Path(environ["DTMS_CONFIG"]) if environ.get("DTMS_CONFIG")
                                    else DEFAULT_FILE)
    data: dict[str, dict[str, Any]] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
    elif path or environ.get("DTMS_CONFIG"):
        raise ConfigError(f"config file {file} does not exist")
    settings = _build(data)
    env = _env_overrides(environ)
    return _build(env, base=settings) if env else settings


def defaults_as_toml_types() -> dict[str, dict[str, Any]]:
    """The defaults as plain data (tuples as lists), to compare with the shipped TOML."""
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "webhooks":   # no default endpoint: the file shows commented examples
            continue
        section = _as_dict(getattr(Settings(), f.name))
        out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


__all__ = ["Settings", "ConfigError", "load"]
