"""The RPC methods a client calls: each handler checks its arguments, asks the actor that owns
the answer, and returns the wire map (SPEC section 3).

:class:`Methods` holds no state of its own: it reads through the :class:`~dtms.service.Service`
it is given (store, registry, broker, watcher, events, metrics). ``Methods(service).table()`` is
the name -> handler map the service dispatches to; ``connection_table()`` the methods that also
need the caller's connection (``subscribe``). A handler of another group (e.g. the account
guard) lives in its own module and joins the table in :meth:`Methods.table`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from dtms.actors.base import ActorStopped
from dtms.actors.registry import Pause, PauseAll, Register, Resume, Unregister
from dtms.actors.store import (
    CountByState,
    GetTrade,
    ListActions,
    ListRestarts,
    ListTrades,
    ListTransitions,
)
from dtms.errors import BrokerError, DtmsError, InvalidArgument, NotFound, Overloaded
from dtms.events import EVENTS
from dtms.metrics import ACTOR_KINDS
from dtms.model import TradeState, parse_registration
from dtms.policy.figures import open_figures
from dtms.policy.overrides import resolve_policy
from dtms.rpc.args import bool_arg, int_arg, only, since_arg, str_arg
from dtms.rpc.guard import GuardMethods
from dtms.rpc.policy import PolicyMethods
from dtms.rpc.protocol import MAX_PAGE
from dtms.rpc.server import Connection

if TYPE_CHECKING:
    from dtms.service import Service

log = logging.getLogger(__name__)

MAX_BATCH = 1000

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
ConnectionHandler = Callable[[dict[str, Any], Connection], Awaitable[Any]]


class Methods:
    """The handlers of one service's RPC methods."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def table(self) -> dict[str, Handler]:
        return {**PolicyMethods(self.service).table(),
            "health": self.health, "status": self.status, "register": self.register,
            "register_batch": self.register_batch, "trade": self.trade, "trades": self.trades,
            "transitions": self.transitions, "restarts": self.restarts,
            "pause": self.pause, "resume": self.resume, "unregister": self.unregister,
            "actions": self.actions,
            **GuardMethods(self.service).table(),
        }

    def connection_table(self) -> dict[str, ConnectionHandler]:
        return {"subscribe": self.subscribe}

    async def subscribe(self, args: dict[str, Any], conn: Connection) -> dict[str, Any]:
        only(args, {"tickets", "events"})
        tickets = args.get("tickets")
        if tickets is not None and (not isinstance(tickets, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in tickets)):
            raise InvalidArgument("must be an array of tickets (integers > 0)", field="tickets")
        events = args.get("events")
        if events is not None and (not isinstance(events, list) or not set(events) <= EVENTS):
            raise InvalidArgument(f"must be an array of {', '.join(sorted(EVENTS))}",
                                  field="events")
        sub = self.service.events.subscribe(conn, tickets=set(tickets) if tickets else None,
                                    events=set(events) if events else None)
        return {"subscribed": True, "id": sub.id, "events": sorted(sub.events),
                "tickets": sorted(sub.tickets) if sub.tickets else None}

    async def health(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.service.health()

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, set())
        counts = await self.service.store.ask(CountByState())
        by_state = {s.value: counts.get(s.value, 0) for s in TradeState}
        account = self.service.broker.account
        return {**self.service.health(), "trades_by_state": by_state,
                "unknown_positions": list(self.service.watcher.unknown),
                "mode": self.service.settings.policy.mode,   # a trade's policy may override it
                "broker": {"backend": self.service.settings.broker.backend,
                           "login": account.login if account else 0,
                           "server": account.server if account else "",
                           "hedging": account.hedging if account else None},
                "rpc": {"host": self.service.settings.rpc.host, "port": self.service.rpc.port,
                        "connections": self.service.rpc.connections}}

    async def register_one(self, args: Any) -> dict[str, Any]:
        try:
            reg = parse_registration(args)
            resolve_policy(self.service.settings.policy, reg.policy)  # names every bad policy.<key>
        except InvalidArgument:
            self.service.metrics.registrations.labels("invalid").inc()
            raise
        limit = self.service.settings.registry.mailbox_size
        if self.service.registry.mailbox_depth >= limit:
            raise Overloaded(f"registry has {limit} registrations queued", retry_after=0.5)
        return await self.service.registry.ask(Register(reg), timeout=self.service.settings.registry.ask_timeout_s)

    async def register(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.register_one(args)

    async def register_batch(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"trades"})
        items = args.get("trades")
        if not isinstance(items, list) or not items:
            raise InvalidArgument("must be a non-empty array of registration maps", field="trades")
        if len(items) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} per batch, got {len(items)}",
                                  field="trades")
        results: list[dict[str, Any]] = [{} for _ in items]

        async def one(i: int, item: Any) -> None:
            try:
                results[i] = {"ok": True, **await self.register_one(item)}
            except DtmsError as err:
                results[i] = {"ok": False, "error": err.to_wire()}

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(one, i, item)
        return {"results": results, "created": sum(1 for r in results if r.get("created")),
                "failed": sum(1 for r in results if not r["ok"])}

    async def trade(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"ticket", "market"})
        ticket = int_arg(args, "ticket", low=1)
        market = bool_arg(args, "market")
        trade = await self.service.store.ask(GetTrade(ticket))
        if trade is None:
            raise NotFound(f"ticket {ticket} is not registered with DTMS", field="ticket")
        # the figures cost a terminal call: asked for (the CLI, the web view), not by default
        # (a client's verify-after-register reads every trade it registers)
        return (await self.with_figures([trade]))[0] if market else self.view(trade)

    def view(self, trade: Any) -> dict[str, Any]:
        """A trade's wire view, with the ``mode`` it is managed in (its override or the
        configured ``policy.mode``)."""
        return trade.view(self.service.settings.policy.mode)

    async def with_figures(self, trades: list[Any]) -> list[dict[str, Any]]:
        """The views of ``trades``, each open one with its price, open P/L and R read from the
        broker's positions in one call (None where the broker cannot say)."""
        views = [self.view(t) for t in trades]
        open_ = [t.ticket for t in trades if t.state is not TradeState.CLOSED]
        positions: dict[int, Any] = {}
        if open_:
            try:
                positions = await self.service.broker.call("positions_of", tickets=open_)
            except (BrokerError, DtmsError, TimeoutError, ActorStopped) as exc:   # figures only
                log.warning("open figures unavailable: %s", exc)
        for t, view in zip(trades, views, strict=True):
            view.update(open_figures(t, positions.get(t.ticket)))
        return views

    async def trades(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"state", "symbol", "limit", "offset", "open_only", "market"})
        state = str_arg(args, "state")
        if state is not None:
            state = state.upper()
            if state not in TradeState.__members__:
                raise InvalidArgument(f"must be one of {', '.join(TradeState.__members__)}",
                                      field="state")
        symbol = str_arg(args, "symbol")
        limit = int_arg(args, "limit", default=100, low=1, high=MAX_PAGE)
        offset = int_arg(args, "offset", default=0)
        open_only = args.get("open_only", False)
        if not isinstance(open_only, bool):
            raise InvalidArgument("must be true or false", field="open_only")
        market = bool_arg(args, "market")
        trades = await self.service.store.ask(ListTrades(state, symbol, open_only, limit, offset))
        views = await self.with_figures(trades) if market else [self.view(t) for t in trades]
        return {"trades": views, "count": len(trades), "offset": offset, "limit": limit}

    async def pause(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.set_paused(args, True)

    async def resume(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.set_paused(args, False)

    async def set_paused(self, args: dict[str, Any], paused: bool) -> dict[str, Any]:
        """One ticket, or ``all: true`` (every managed trade; SUSPENDED ones stay suspended)."""
        only(args, {"ticket", "all"})
        every = args.get("all", False)
        if not isinstance(every, bool):
            raise InvalidArgument("must be true or false", field="all")
        if every == ("ticket" in args):
            raise InvalidArgument("give either a ticket or all: true", field="ticket")
        if every:
            return await self.service.registry.ask(PauseAll(paused), timeout=60.0)
        ticket = int_arg(args, "ticket", low=1)
        message = Pause(ticket) if paused else Resume(ticket)
        return await self.service.registry.ask(message, timeout=self.service.settings.registry.ask_timeout_s)

    async def unregister(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"ticket"})
        return await self.service.registry.ask(Unregister(int_arg(args, "ticket", low=1)),
                                       timeout=self.service.settings.registry.ask_timeout_s)

    async def actions(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"ticket", "limit", "since"})
        ticket = int_arg(args, "ticket", low=1) if "ticket" in args else None
        limit = int_arg(args, "limit", default=100, low=1, high=MAX_PAGE)
        since = since_arg(args)
        rows = await self.service.store.ask(ListActions(ticket, since, limit))
        return {"actions": [dataclasses.asdict(a) for a in rows]}

    async def transitions(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"ticket", "limit", "since"})
        ticket = int_arg(args, "ticket", low=1)
        limit = int_arg(args, "limit", default=100, low=1, high=MAX_PAGE)
        since = since_arg(args)
        return {"ticket": ticket, "transitions": await self.service.store.ask(
            ListTransitions(ticket, limit, since))}

    async def restarts(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"limit", "since", "kind"})
        limit = int_arg(args, "limit", default=100, low=1, high=MAX_PAGE)
        since = since_arg(args)
        kind = str_arg(args, "kind")
        if kind is not None and kind not in ACTOR_KINDS:
            raise InvalidArgument(f"must be one of {', '.join(ACTOR_KINDS)}", field="kind")
        return {"restarts": await self.service.store.ask(ListRestarts(limit, since, kind))}
