"""The RPC methods of live policy changes and shadow mode: ``set_policy`` and ``shadow_report``.

``set_policy {ticket | all: true, policy: {key: value, ...}}`` merges ``policy`` into the trade's
stored overrides (``null`` puts a key back to the configured value), validated exactly like a
registration's ``policy`` map (:mod:`dtms.policy.overrides`: every bad ``policy.<key>`` named
with its bound, nothing changed), journaled as a transition naming the old and new values,
persisted with the trade, and in effect from the trade's next evaluation (at once). With
``all: true`` every managed trade takes it; a trade whose own overrides make the change invalid
is listed in ``errors`` and left as it was. ``policy: {mode: "live"}`` on a shadow trade starts
from the broker's current position (``dtms.policy.shadow``).

``shadow_report {ticket?, since?}``: totals of the journal's ``shadow`` rows since ``since``
(default: 00:00 UTC today) -- what DTMS would have done and the P/L difference of the closes it
would have made against the current price, valued as the terminal values each open position
(:func:`dtms.policy.shadow.report`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from dtms.actors.base import ActorStopped
from dtms.actors.registry import ChangePolicy
from dtms.actors.store import GetTrade, ListActions
from dtms.errors import BrokerError, InvalidArgument, NotReady
from dtms.model import TradeState
from dtms.policy.overrides import TYPES, resolve_policy
from dtms.policy.shadow import SHADOW, Quote, quote_of, report
from dtms.rpc.args import int_arg, only, since_arg

if TYPE_CHECKING:
    from dtms.service import Service

log = logging.getLogger(__name__)

#: shadow rows read at most for one report
MAX_REPORT_ROWS = 100_000


class PolicyMethods:
    def __init__(self, service: Service) -> None:
        self.service = service

    def table(self) -> dict[str, Any]:
        return {"set_policy": self.set_policy, "shadow_report": self.shadow_report}

    async def set_policy(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"ticket", "all", "policy"})
        every = args.get("all", False)
        if not isinstance(every, bool):
            raise InvalidArgument("must be true or false", field="all")
        if every == ("ticket" in args):
            raise InvalidArgument("give either a ticket or all: true", field="ticket")
        changes = args.get("policy")
        if not isinstance(changes, dict) or not changes or not all(
                isinstance(k, str) for k in changes):
            raise InvalidArgument("must be a non-empty map of policy keys", field="policy")
        given = {k: v for k, v in changes.items() if v is not None}   # None: back to config
        problems = {f"policy.{k}": "unknown setting" for k in changes
                    if changes[k] is None and k not in TYPES}
        try:   # each given value typed and bounded, every bad one named
            resolve_policy(self.service.settings.policy, given)
        except InvalidArgument as exc:
            problems.update(exc.details.get("errors") or {exc.details["field"]: exc.message})
        if problems:
            raise InvalidArgument.many(problems)
        ticket = None if every else int_arg(args, "ticket", low=1)
        timeout = 60.0 if every else self.service.settings.registry.ask_timeout_s
        return await self.service.registry.ask(ChangePolicy(ticket, dict(changes)),
                                               timeout=timeout)

    async def shadow_report(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"ticket", "since"})
        ticket = int_arg(args, "ticket", low=1) if "ticket" in args else None
        now = time.time()
        since = since_arg(args, default=now - now % 86_400)   # by default 00:00 UTC today
        store, broker = self.service.store, self.service.broker
        rows = [a for a in await store.ask(ListActions(ticket, float(since), MAX_REPORT_ROWS))
                if a.status == SHADOW]
        trades = {}
        for t in sorted({a.ticket for a in rows}):
            trade = await store.ask(GetTrade(t))
            if trade is not None:
                trades[t] = trade
        quotes: dict[int, Quote] = {}
        open_ = [t for t, trade in trades.items() if trade.state is not TradeState.CLOSED]
        try:   # the positions' own valuation, in one call; the contract size as a fallback
            positions = await broker.call("positions_of", tickets=open_) if open_ else {}
            sizes = {}
            for symbol in sorted({p.symbol for p in positions.values()}):
                sizes[symbol] = (await broker.call("symbol", name=symbol)).contract_size
        except (BrokerError, NotReady, TimeoutError, ActorStopped) as exc:
            log.warning("shadow report unpriced: %s", exc)   # counted, listed in ``unpriced``
            positions = {}
        for ticket, position in positions.items():
            quotes[ticket] = quote_of(position, sizes[position.symbol])
        return {"since": float(since), **report(rows, trades, quotes)}
