"""The web view's routes: three pages, the JSON they read, and the live event stream.

* ``/`` trades by state, ``/trade/{ticket}`` a trade's chart, journal and transitions,
  ``/restarts`` the supervision tree's restart history: static HTML + plain JS + CSS served
  from ``dtms/web/static`` (nothing is fetched from elsewhere at page load);
* ``/api/status`` (``health`` + the ``status`` method's broker map), ``/api/trades``,
  ``/api/trade/{ticket}`` (the trade, its journal, transitions, recent bars, the SL path and
  markers), ``/api/restarts``: answered by the RPC handlers of :mod:`dtms.rpc.methods` with the
  query string as their arguments, so the bounds and the errors are the protocol's (an error is
  its wire map with the HTTP status of its code: 400 naming the field, 404, 503 not ready);
* ``/events``: server-sent events. A browser is a subscriber of the :class:`~dtms.events.EventBus`
  like an rpc connection (``trade.state``, ``trade.updated`` with the trade view), plus, every
  ``QUOTE_INTERVAL_S``, ``quotes`` (current price, open P/L in money and in R of the open trades
  shown) and ``status`` (readiness, broker). A browser too slow to drain its bounded queue is
  disconnected (logged, ``dtms_web_streams_dropped_total``); EventSource reconnects and reloads.

Prices come from the broker actor (``positions_of`` for the price and the P/L the terminal
computes in the account currency; ``rates`` for bars; ``tick`` for the server clock), at most one
``positions_of`` per ``QUOTE_INTERVAL_S`` however many browsers are open.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dtms.actors.base import ActorStopped
from dtms.errors import BrokerError, DtmsError, InvalidArgument, NotReady
from dtms.model import Direction
from dtms.web import chart

if TYPE_CHECKING:
    from dtms.service import Service

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
QUOTE_INTERVAL_S = 2.0
#: events queued for one browser before it counts as too slow
STREAM_QUEUE = 1000
#: trades the trades page lists (the protocol's page size)
PAGE = 1000
_INT_ARGS = frozenset({"limit", "offset", "since"})


def _args(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The query string as method arguments: numbers as numbers, true/false as booleans (a value
    that is neither stays a string, and the handler's check names it); ``token`` is auth's."""
    args: dict[str, Any] = {}
    for key, value in request.query_params.items():
        if key == "token":
            continue
        if key not in allowed:
            raise InvalidArgument(f"unknown parameter; known: {', '.join(sorted(allowed))}",
                                  field=key)
        if key in _INT_ARGS:
            try:
                args[key] = float(value) if key == "since" else int(value)
            except ValueError:
                args[key] = value
        elif value in ("true", "false"):
            args[key] = value == "true"
        else:
            args[key] = value
    return args


def _error(err: DtmsError) -> JSONResponse:
    return JSONResponse({"error": err.to_wire()}, status_code=err.status)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Stream:
    """One browser's subscription: an :class:`~dtms.events.Subscriber` for the EventBus."""

    def __init__(self, view: WebView) -> None:
        self._view = view
        self._send, self.receive = anyio.create_memory_object_stream[bytes](STREAM_QUEUE)
        self._callbacks: list[Callable[[], None]] = []
        self.closed = False

    def notify_nowait(self, method: str, params: Any) -> None:
        if self.closed:
            return
        try:
            self._send.send_nowait(_sse(method, params))
        except anyio.WouldBlock:
            self._view.metrics.web_streams_dropped.inc()
            log.warning("web view: closing an event stream that fell %d events behind",
                        STREAM_QUEUE)
            self.close()

    def on_close(self, callback: Callable[[], None]) -> None:
        if self.closed:
            callback()
        else:
            self._callbacks.append(callback)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._send.close()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class WebView:
    """The web view of one service: its routes, and the event streams open on them."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = service.metrics
        self._streams: set[_Stream] = set()
        self._quotes: dict[int, dict[str, Any]] = {}
        self._quoted_at = -math.inf
        self._quote_lock = anyio.Lock()
        self._digits: dict[str, int] = {}   # symbol -> digits (a symbol's never change)

    def routes(self) -> list[BaseRoute]:
        page = self._page
        return [
            Route("/", page("index.html"), methods=["GET"]),
            Route("/trade/{ticket}", page("trade.html"), methods=["GET"]),
            Route("/restarts", page("restarts.html"), methods=["GET"]),
            Route("/api/status", self.api_status, methods=["GET"]),
            Route("/api/trades", self.api_trades, methods=["GET"]),
            Route("/api/trade/{ticket}", self.api_trade, methods=["GET"]),
            Route("/api/restarts", self.api_restarts, methods=["GET"]),
            Route("/events", self.events, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]

    def close(self) -> None:
        """End every open event stream (the server is stopping)."""
        for stream in list(self._streams):
            stream.close()

    @staticmethod
    def _page(name: str) -> Callable[[Request], Any]:
        async def page(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type="text/html",
                                headers={"Cache-Control": "no-store"})
        return page

    # -- reading through the rpc handlers ------------------------------------------------------
    async def call(self, method: str, args: dict[str, Any]) -> Any:
        """An rpc handler, gated on readiness as ``Service.dispatch`` gates it."""
        if not self.service.ready:
            raise self.service._not_ready()
        try:
            return await self.service.methods[method](args)
        except ActorStopped as exc:   # the core is restarting
            raise NotReady(f"DTMS is not ready: {exc}",
                           retry_after=self.service.settings.broker.connect_retry_s) from exc

    def status(self) -> dict[str, Any]:
        """``health`` plus what the header shows: why not ready, the broker's account."""
        svc = self.service
        h = svc.health()
        account = svc.broker.account
        h["broker"] = {"backend": svc.settings.broker.backend,
                       "connected": svc.broker.connected,
                       "login": account.login if account else 0,
                       "server": account.server if account else "",
                       "refused": svc.broker.refused}
        h["not_ready"] = None if h["ready"] else svc._not_ready().message
        h["now"] = time.time()
        return h

    async def api_status(self, request: Request) -> Response:
        return JSONResponse(self.status())

    async def api_trades(self, request: Request) -> Response:
        try:
            args = {"limit": PAGE, **_args(request, {"state", "symbol", "limit", "offset",
                                                       "open_only"})}
            page = await self.call("trades", args)
            page["quotes"] = await self.quotes(page["trades"])
            page["digits"] = await self.digits({t["symbol"] for t in page["trades"]})
        except DtmsError as err:
            return _error(err)
        return JSONResponse(page)

    async def api_restarts(self, request: Request) -> Response:
        try:
            return JSONResponse(await self.call("restarts",
                                                _args(request, {"limit", "since", "kind"})))
        except DtmsError as err:
            return _error(err)

    async def api_trade(self, request: Request) -> Response:
        raw = request.path_params["ticket"]
        try:
            ticket = int(raw) if raw.isdigit() else raw
            trade = await self.call("trade", {"ticket": ticket})
            actions = (await self.call("actions", {"ticket": ticket, "limit": 1000}))["actions"]
            transitions = (await self.call("transitions", {"ticket": ticket,
                                                           "limit": 1000}))["transitions"]
            quotes = await self.quotes([trade])
        except DtmsError as err:
            return _error(err)
        now = time.time()
        actions.sort(key=lambda a: a["seq"])
        bars, timeframe, offset, bars_error = await self._bars(trade, now)
        return JSONResponse({
            "trade": trade, "actions": actions, "transitions": transitions,
            "quote": quotes.get(trade["ticket"]),
            "digits": (await self.digits({trade["symbol"]})).get(trade["symbol"]), "bars": bars, "timeframe": timeframe,
            "bars_error": bars_error, "server_offset_s": offset,
            "sl_path": chart.sl_path(trade, actions, now),
            "marks": chart.marks(actions, transitions), "now": now})

    async def _bars(self, trade: dict[str, Any], now: float
                    ) -> tuple[list[Any], str, float, str | None]:
        """The symbol's recent bars through the broker actor, and the broker's clock offset
        (server time - wall time, from the latest tick). A broker that cannot answer leaves
        the chart without bars (and says why), not the page without its journal."""
        broker = self.service.broker
        symbol = trade["symbol"]
        start = trade["created_at"] or now
        try:
            tick = await broker.call("tick", name=symbol)
            offset = float(tick.time) - now
            timeframe, count = chart.pick_timeframe(start, now)
            bars = await broker.call("rates", name=symbol, timeframe=timeframe, count=count)
        except (BrokerError, DtmsError, ActorStopped, TimeoutError) as exc:
            log.warning("web view: bars of %s not read: %s", symbol, exc,
                        extra={"ticket": trade["ticket"], "symbol": symbol})
            return [], "", 0.0, str(exc)
        return [list(b) for b in bars], timeframe, offset, None

    async def digits(self, symbols: set[str]) -> dict[str, int]:
        """Each symbol's digits, for showing prices as the terminal does: from its market actor
        if it has one, else asked of the broker once (a symbol it cannot describe is left out:
        the page shows the price as the trade stores it)."""
        for symbol in sorted(symbols - set(self._digits)):
            market = self.service.market.symbols.get(symbol)
            if market is not None and market.spec is not None:
                self._digits[symbol] = market.spec.digits
                continue
            try:
                self._digits[symbol] = (await self.service.broker.call("symbol",
                                                                       name=symbol)).digits
            except (BrokerError, DtmsError, ActorStopped, TimeoutError) as exc:
                log.warning("web view: digits of %s not read: %s", symbol, exc,
                            extra={"symbol": symbol})
        return {s: self._digits[s] for s in symbols if s in self._digits}

    async def quotes(self, trades: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Price and open P/L of the open trades among ``trades`` (by ticket). Refreshed with
        one ``positions_of`` at most every QUOTE_INTERVAL_S (more often only for tickets not
        yet quoted); a terminal that cannot answer leaves the last known quotes."""
        open_ = {t["ticket"]: t for t in trades if t["state"] not in ("CLOSED", "RELEASED")}
        async with self._quote_lock:
            stale = time.monotonic() - self._quoted_at >= QUOTE_INTERVAL_S
            missing = [t for t in open_ if t not in self._quotes]
            wanted = sorted(open_) if stale else missing
            if wanted:
                try:
                    positions = await self.service.broker.call("positions_of", tickets=wanted)
                except (BrokerError, DtmsError, ActorStopped, TimeoutError) as exc:
                    log.warning("web view: prices of %d trades not read: %s", len(wanted), exc)
                    positions = None
                if positions is not None:
                    if stale:
                        self._quotes.clear()
                        self._quoted_at = time.monotonic()
                    for ticket, p in positions.items():
                        self._quotes[ticket] = quote(open_[ticket], p.price_current, p.profit)
        return {t: self._quotes[t] for t in open_ if t in self._quotes}

    # -- /events -------------------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        tickets = None
        raw = request.query_params.get("ticket")
        if raw is not None:
            if not raw.isdigit() or int(raw) < 1:
                return _error(InvalidArgument("must be a ticket (an integer > 0)",
                                              field="ticket"))
            tickets = {int(raw)}
        stream = _Stream(self)
        self._streams.add(stream)
        stream.on_close(lambda: self._streams.discard(stream))
        self.service.events.subscribe(stream, tickets=tickets)
        return StreamingResponse(self._stream(stream, tickets), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def _stream(self, stream: _Stream, tickets: set[int] | None) -> AsyncIterator[bytes]:
        """The bus's events as they come; between them, every QUOTE_INTERVAL_S, ``status`` and
        ``quotes`` (which also keep the connection from looking idle)."""
        try:
            yield b"retry: 2000\n\n" + _sse("status", self.status())
            due = time.monotonic() + QUOTE_INTERVAL_S
            while True:
                data = None
                # never yield inside the scope: the consumer would run in it
                with anyio.move_on_after(max(0.0, due - time.monotonic())):
                    try:
                        data = await stream.receive.receive()
                    except anyio.EndOfStream:
                        return   # closed: too slow, or the server is stopping
                if data is not None:
                    yield data
                    continue
                due = time.monotonic() + QUOTE_INTERVAL_S
                yield _sse("status", self.status())
                shown = await self._shown(tickets)
                if shown:
                    quotes = await self.quotes(shown)
                    yield _sse("quotes", {str(t): q for t, q in quotes.items()})
        finally:
            stream.close()

    async def _shown(self, tickets: set[int] | None) -> list[dict[str, Any]]:
        """The open trades a stream quotes: its ticket, or every open trade of the first page."""
        if not self.service.ready:
            return []
        try:
            if tickets is not None:
                return [await self.call("trade", {"ticket": next(iter(tickets))})]
            return (await self.call("trades", {"open_only": True, "limit": PAGE}))["trades"]
        except DtmsError as exc:
            log.debug("web view: no quotes this time: %s", exc)
            return []


def quote(trade: dict[str, Any], price: float, profit: float) -> dict[str, Any]:
    """The columns that move with the price: current price, open P/L in the account currency
    (the terminal's figure) and in R (price distance over the registration's risk; None without
    an initial stop)."""
    sign = 1.0 if trade["direction"] == Direction.BUY.value else -1.0
    risk = abs(trade["entry_price"] - trade["initial_sl"]) if trade["initial_sl"] else 0.0
    r = round(sign * (price - trade["entry_price"]) / risk, 2) if risk else None
    return {"price": price, "profit": profit, "r": r}
