"""The adapter over any module with the MetaTrader5 Python API.

Works unchanged with the real ``MetaTrader5`` package (Windows), DTMS's terminal bridge
(``broker.backend = "bridge"``, :mod:`dtms.bridge`), another module exposing the same functions
(e.g. ``mt5linux``, given constructor arguments by ``broker.module_args``), and DTMS's simulated
terminal, which is how every test runs it. ``load_module`` picks the module by the settings.
It converts the terminal's named tuples into DTMS's own types (``dtms.model``) and turns a
``None`` result into :class:`~dtms.errors.BrokerError` carrying ``last_error()``.

The adapter is blocking, as the package is. Only the broker actor calls it, from a worker
thread; a lock makes every terminal call strictly one at a time even if a timed-out call is
still running in an abandoned thread. The heartbeat of a linked terminal (``heartbeat``,
``abort``) never takes that lock.

Example::

    adapter = MT5Adapter(load_module(settings))
    adapter.connect()
    adapter.positions(ticket=50000001)
"""

from __future__ import annotations

import functools
import importlib
import struct
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from dtms.config import Settings, SimSettings
from dtms.errors import BrokerError
from dtms.model import Account, Deal, Direction, OrderResult, Position, SymbolSpec, Tick

# last_error() codes that mean the terminal link itself is down (MT5's RES_E_INTERNAL_FAIL_*)
#: a position's (volume, sl, tp) as 24 bytes: compared exactly, never tracked by the GC
_MARK = struct.Struct("<3d")

#: ... and -10100, the terminal bridge refused DTMS's token (broker.bridge_token)
DISCONNECTED_CODES = frozenset({-10000, -10001, -10002, -10003, -10004, -10005, -10100})

# MetaTrader5 timeframe constants
TIMEFRAMES = {"M1": 1, "M5": 5, "M15": 15, "M30": 30, "H1": 16385, "H4": 16388, "D1": 16408}


def load_module(settings: Settings) -> Any:
    """The terminal module the settings name: the simulated terminal (embedded or in its own
    process), the terminal bridge, MetaTrader5, or another module with its API --
    ``module:NAME`` (the module itself) or ``module:NAME:ATTR`` (an attribute of it; a class or
    function is called with ``broker.module_args`` as keyword arguments, e.g. mt5linux's
    ``MetaTrader5(host=..., port=...)``). RuntimeError says why it cannot be had."""
    b = settings.broker
    if b.backend == "sim":
        return sim_terminal(settings)
    if b.backend == "sim-remote":
        from dtms.brokers.sim.remote import RemoteTerminal
        return RemoteTerminal(settings.sim.remote_host, settings.sim.remote_port,
                              heartbeat_timeout=b.heartbeat_timeout_s)
    if b.backend == "bridge":
        return bridge_client(settings)
    name = b.module if b.backend == "mt5" else b.backend.split(":", 1)[1]
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = (" (pip install 'dtms[mt5]' on Windows; on Linux: broker.backend = \"bridge\" "
                "and `dtms terminal-bridge` next to the terminal)"
                if module_name == "MetaTrader5" else "")
        raise RuntimeError(f"broker module {module_name!r} cannot be imported{hint}: {exc}") from exc
    if not attr:
        if b.module_args:
            raise RuntimeError(f"broker.module_args needs a class or function to call: name it "
                               f"as {module_name}:ATTR")
        return module
    try:
        obj = getattr(module, attr)
    except AttributeError as exc:
        raise RuntimeError(f"broker module {module_name!r} has no {attr!r}: {exc}") from exc
    if not callable(obj):
        if b.module_args:
            raise RuntimeError(f"broker.module_args given but {name} is not callable")
        return obj
    try:
        return obj(**b.module_args)
    except Exception as exc:   # its constructor connects, checks arguments...: say which
        args = ", ".join(f"{k}={v!r}" for k, v in b.module_args.items())
        raise RuntimeError(f"{name}({args}) failed: {exc!r}") from exc


def bridge_client(settings: Settings) -> Any:
    """The client of ``dtms terminal-bridge`` the ``broker.bridge_*`` settings describe."""
    from dtms.bridge.client import TerminalClient, client_tls

    b = settings.broker
    try:
        tls = client_tls(ca=b.bridge_ca, verify=b.bridge_tls_verify) if b.bridge_tls else None
    except OSError as exc:   # ssl.SSLError included
        raise RuntimeError(f"broker.bridge_ca: cannot load {b.bridge_ca!r}: {exc}") from exc
    # the socket's own timeout only ends a call the bridge never answers (a dead link is found
    # by the heartbeat first; a stuck terminal is answered by the bridge at its call timeout)
    return TerminalClient(b.bridge_host, b.bridge_port, token=b.bridge_token, tls=tls,
                          timeout=max(30.0, 3 * b.call_timeout_s),
                          heartbeat_timeout=b.heartbeat_timeout_s)


def sim_terminal(settings: Settings) -> Any:
    """The simulated terminal the ``[sim]`` settings describe, running in (optionally
    accelerated) real time: embedded (``broker.backend = sim``) or served by ``dtms
    sim-terminal`` alike."""
    from dtms.brokers.sim import RealtimeClock, SimTerminal

    return SimTerminal(sim_config(settings.sim), clock=RealtimeClock(speed=settings.sim.speed))


def sim_config(s: SimSettings) -> Any:
    """The ``SimConfig`` of ``[sim]`` settings (every one of them reaches the terminal)."""
    from dtms.brokers.sim import SimConfig
    from dtms.brokers.sim import constants as c

    margin_mode = (c.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING if s.account == "hedging"
                   else c.ACCOUNT_MARGIN_MODE_RETAIL_NETTING)
    # A real server never reuses a ticket. The embedded terminal forgets its positions when the
    # process ends while the database remembers trades, so each run starts its tickets after the
    # previous run's (milliseconds since 2026-01-01): a stored ticket never names a new position.
    first = 50_000_001 + max(0, int((time.time() - 1_767_225_600) * 1000))
    return SimConfig(seed=s.seed, balance=s.balance, margin_mode=margin_mode,
                     symbol_suffix=s.symbol_suffix, tick_interval=s.tick_interval_s,
                     first_ticket=first, first_deal=first)


def _f(value: Any) -> float:
    return float(value or 0.0)


class MT5Adapter:
    """DTMS's one view of a terminal. Every method may raise BrokerError."""

    def __init__(self, module: Any, *, path: str = "", login: int = 0, password: str = "",
                 server: str = "", timeout_ms: int = 10_000) -> None:
        self.mt5 = module
        self._lock = threading.Lock()
        self._init_kwargs: dict[str, Any] = {"timeout": timeout_ms}
        if login:
            self._init_kwargs.update(login=login, password=password, server=server)
        self._path = path or None

    @classmethod
    def from_settings(cls, module: Any, settings: Settings) -> MT5Adapter:
        b = settings.broker
        return cls(module, path=b.path, login=b.login, password=b.password, server=b.server,
                   timeout_ms=int(b.call_timeout_s * 1000))

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, operation: str, fn: Callable[[], Any]) -> Any:
        with self._lock:
            result = fn()
            if result is None:
                code, message = self.mt5.last_error()
                raise BrokerError(operation, int(code), str(message))
            return result

    # -- connection --------------------------------------------------------------------------
    def connect(self) -> Account:
        with self._lock:
            args = (self._path,) if self._path else ()
            ok = self.mt5.initialize(*args, **self._init_kwargs)
            if not ok:
                code, message = self.mt5.last_error()
                raise BrokerError("initialize", int(code), str(message))
        return self.account()

    def disconnect(self) -> None:
        with self._lock:
            self.mt5.shutdown()

    @property
    def has_heartbeat(self) -> bool:
        """The module is reached over a link with a heartbeat (bridge, sim-remote)."""
        return callable(getattr(self.mt5, "ping", None))

    def heartbeat(self) -> None:
        """Ping the link, never waiting for the call lock (a long call may hold it): returns
        when the far side answers and its terminal is not stuck, else BrokerError."""
        try:
            answer = self.mt5.ping()
        except OSError as exc:   # refused, reset, timed out, wrong token
            raise BrokerError("ping", int(getattr(exc, "code", -10004)),
                              str(exc) or type(exc).__name__) from exc
        stuck = float(answer.get("stuck_s") or 0.0)
        if stuck > 0:
            raise BrokerError("ping", -10005, f"terminal stuck: a call is {stuck:.1f}s past "
                              "the bridge's call timeout")

    def abort(self) -> None:
        """Break the link now (a call blocked on a dead link fails at once), if it can be."""
        abort = getattr(self.mt5, "abort", None)
        if callable(abort):
            abort()

    def account(self) -> Account:
        a = self._call("account_info", self.mt5.account_info)
        hedging = int(a.margin_mode) == int(getattr(self.mt5, "ACCOUNT_MARGIN_MODE_RETAIL_HEDGING", 2))
        return Account(login=int(a.login), server=str(a.server), currency=str(a.currency),
                       balance=_f(a.balance), equity=_f(a.equity), hedging=hedging)

    # -- market ------------------------------------------------------------------------------
    def symbol(self, name: str) -> SymbolSpec:
        s = self._call("symbol_info", lambda: self.mt5.symbol_info(name))
        return SymbolSpec(name=str(s.name), digits=int(s.digits), point=_f(s.point),
                          volume_min=_f(s.volume_min), volume_max=_f(s.volume_max),
                          volume_step=_f(s.volume_step), stops_level=int(s.trade_stops_level),
                          freeze_level=int(s.trade_freeze_level), spread=int(s.spread),
                          filling_mode=int(s.filling_mode),
                          contract_size=_f(s.trade_contract_size))

    def tick(self, name: str) -> Tick:
        t = self._call("symbol_info_tick", lambda: self.mt5.symbol_info_tick(name))
        return Tick(symbol=name, time=int(t.time), bid=_f(t.bid), ask=_f(t.ask))

    def ticks(self, names: list[str]) -> tuple[dict[str, Tick], dict[str, str]]:
        """The latest tick of each of ``names`` in one hand-off, and why any could not be read
        (a symbol the terminal does not know...). A lost link fails the whole call."""
        found: dict[str, Tick] = {}
        failed: dict[str, str] = {}
        for name in names:
            try:
                found[name] = self.tick(name)
            except BrokerError as exc:
                if exc.code in DISCONNECTED_CODES:
                    raise
                failed[name] = str(exc)
        return found, failed

    def rates(self, name: str, timeframe: str, count: int, start_pos: int = 0) -> list[tuple]:
        """Bars oldest first as (time, open, high, low, close, tick_volume)."""
        tf = TIMEFRAMES[timeframe]
        rows = self._call("copy_rates_from_pos",
                          lambda: self.mt5.copy_rates_from_pos(name, tf, start_pos, count))
        # numpy records and named tuples both index by position in MT5's field order
        return [(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), int(r[5]))
                for r in rows]

    # -- positions and deals -----------------------------------------------------------------
    def _position(self, p: Any) -> Position:
        return Position(ticket=int(p.ticket), symbol=str(p.symbol),
                        direction=Direction.BUY if int(p.type) == 0 else Direction.SELL,
                        volume=_f(p.volume), price_open=_f(p.price_open), sl=_f(p.sl),
                        tp=_f(p.tp), price_current=_f(p.price_current), profit=_f(p.profit),
                        magic=int(p.magic), comment=str(p.comment), time=int(p.time))

    def positions(self, *, symbol: str | None = None, ticket: int | None = None) -> list[Position]:
        if ticket is not None:
            rows = self._call("positions_get", lambda: self.mt5.positions_get(ticket=ticket))
        elif symbol is not None:
            rows = self._call("positions_get", lambda: self.mt5.positions_get(symbol=symbol))
        else:
            rows = self._call("positions_get", self.mt5.positions_get)
        return [self._position(p) for p in rows]

    def position_changes(self, known: Mapping[int, bytes]
                         ) -> tuple[dict[int, bytes], dict[int, Position]]:
        """Every open position's mark -- its (volume, sl, tp), packed -- by ticket, and in full
        only those whose mark differs from ``known`` (or that ``known`` lacks): the watcher's
        poll. Turning every row into a Position cost ~9 us each (90 ms a poll at 10,000
        positions); reading three fields costs a fraction of that, and few positions change
        between two polls. A mark is bytes, exact and invisible to the cyclic GC: 100,000
        tuples a poll set off a full collection every few seconds."""
        rows = self._call("positions_get", self.mt5.positions_get)
        marks: dict[int, bytes] = {}
        changed: dict[int, Position] = {}
        pack = _MARK.pack
        for p in rows:
            ticket = int(p.ticket)
            mark = pack(float(p.volume), float(p.sl), float(p.tp))
            marks[ticket] = mark
            if known.get(ticket) != mark:
                changed[ticket] = self._position(p)
        return marks, changed

    def positions_of(self, tickets: list[int]) -> dict[int, Position]:
        """The open positions among ``tickets`` by ticket (absent: not open), in one hand-off
        to the terminal's thread however many tickets are asked about."""
        found: dict[int, Position] = {}
        for ticket in tickets:
            rows = self._call("positions_get",
                              functools.partial(self.mt5.positions_get, ticket=ticket))
            if rows:
                found[ticket] = self._position(rows[0])
        return found

    def _deal(self, d: Any) -> Deal:
        return Deal(ticket=int(d.ticket), position_id=int(d.position_id), symbol=str(d.symbol),
                    entry=int(d.entry), reason=int(d.reason), volume=_f(d.volume),
                    price=_f(d.price), profit=_f(d.profit), magic=int(d.magic),
                    comment=str(d.comment), time=int(d.time))

    def deals_for_position(self, position: int) -> list[Deal]:
        rows = self._call("history_deals_get",
                          lambda: self.mt5.history_deals_get(position=position))
        return [self._deal(d) for d in rows]

    def deals_between(self, start: float, end: float) -> list[Deal]:
        a = datetime.fromtimestamp(start, UTC).replace(tzinfo=None)
        b = datetime.fromtimestamp(end, UTC).replace(tzinfo=None)
        rows = self._call("history_deals_get", lambda: self.mt5.history_deals_get(a, b))
        return [self._deal(d) for d in rows]

    # -- orders ------------------------------------------------------------------------------
    def send(self, request: dict[str, Any]) -> OrderResult:
        r = self._call("order_send", lambda: self.mt5.order_send(request))
        return OrderResult(retcode=int(r.retcode), deal=int(r.deal), order=int(r.order),
                           volume=_f(r.volume), price=_f(r.price), comment=str(r.comment))
