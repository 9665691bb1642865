"""The account guard's own journal: the closes of positions no trade actor manages
(``on_breach = "close_all"``, positions opened while the account is locked, a ``close`` of an
unregistered position).

Exactly once, as for a trade's actions (SPEC section 5): the row is written ``pending``, then
``sent`` with its request (comment ``TAG:<ticket>:G<n>``) before ``order_send``, then
``done``/``failed``/``skipped``; an uncertain answer (``None``, a timeout, 10012/10031/10011)
is ``uncertain`` and resolved from the position's deals before anything is resent, and so is a
row a crash left ``sent``. A position whose close is done or unresolved is never sent another.
With ``policy.mode = "shadow"`` nothing is sent: the row is ``shadow`` with the request it would
have sent (once per position, as a sent close would be).
The rows are stored with the guard's state (``meta["guard"]``) by the guard actor's ``save``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dtms.config import Settings
from dtms.errors import BrokerError, NotReady
from dtms.model import DEAL_ENTRY_OUT, ActionIntent, ActionKind, Position, SymbolSpec
from dtms.policy.execution import (
    Deferred,
    RetcodeClass,
    Skipped,
    Target,
    build_request,
    classify,
)
from dtms.policy.shadow import SHADOW  # policy.mode: decided and journaled, never sent

log = logging.getLogger("dtms.actors.guard")

KEPT = 200             # rows kept (unresolved ones always)
UNRESOLVED = ("pending", "sent", "uncertain")


class OwnCloses:
    """The rows (``"<ticket>:<n>"`` -> row) and the sends; owned by the guard actor, which
    calls it from its own turn only."""

    def __init__(self, settings: Settings, broker: Any, *, save: Callable[[], Awaitable[None]],
                 on_failed: Callable[[int], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.broker = broker
        self._save = save
        self.on_failed = on_failed
        self.clock = clock
        self.rows: dict[str, dict[str, Any]] = {}

    def kept(self) -> dict[str, dict[str, Any]]:
        """The rows to store: the newest ``KEPT``, and every unresolved one."""
        keep = sorted(self.rows.items(), key=lambda kv: kv[1]["created_at"])
        self.rows = dict(kv for i, kv in enumerate(keep)
                         if kv[1]["status"] in UNRESOLVED or i >= len(keep) - KEPT)
        return self.rows

    async def close(self, p: Position, reason: str, spec: SymbolSpec | None = None
                    ) -> dict[str, Any]:
        """Close a position no trade actor manages: journaled here, sent once."""
        done = [r for r in self.rows.values() if r["ticket"] == p.ticket
                and r["status"] in ("done", SHADOW, *UNRESOLVED)]
        if done:
            return {"ticket": p.ticket, "result": "refused", "retcode": done[0]["retcode"],
                    "reason": f"its close is already {done[0]['status']}"}
        n = 1 + sum(1 for r in self.rows.values() if r["ticket"] == p.ticket)
        key = f"{p.ticket}:{n}"
        comment = f"{self.settings.broker.comment_tag}:{p.ticket}:G{n}"
        row = {"ticket": p.ticket, "n": n, "status": "pending", "reason": reason,
               "created_at": self.clock(), "request": {}, "retcode": 0, "result": {}}
        self.rows[key] = row
        bs = self.settings.broker
        try:
            spec = spec or await self.broker.call("symbol", name=p.symbol)
            for attempt in range(self.settings.policy.requote_retries + 1):
                tick = await self.broker.call("tick", name=p.symbol)
                built = build_request(
                    ActionIntent(ActionKind.CLOSE, "guard:close", reason),
                    Target(ticket=p.ticket, symbol=p.symbol, direction=p.direction,
                           volume=p.volume, sl=p.sl, tp=p.tp), spec, tick, magic=bs.magic,
                    comment=comment, deviation=bs.deviation_points)
                if isinstance(built, Deferred | Skipped):
                    return await self._settle(key, "skipped", 0, {"reason": built.reason})
                if self.settings.policy.mode == SHADOW:   # decide and journal, never send
                    row.update(request=dict(built.fields, market_time=tick.time))
                    return await self._settle(key, SHADOW, 0, {"shadow": True,
                                                               "volume": built.volume})
                row.update(status="sent", request=dict(built.fields, market_time=tick.time))
                await self._save()
                try:
                    result = await self.broker.call("send", request=built.fields)
                except NotReady as exc:
                    return await self._settle(key, "failed", 0, {"error": str(exc)})
                except (BrokerError, TimeoutError):
                    result = None
                cls = classify(result.retcode if result else None, ActionKind.CLOSE)
                retcode = result.retcode if result else 0
                if cls is RetcodeClass.SUCCESS:
                    return await self._settle(key, "done", retcode, {"deal": result.deal})
                if cls is RetcodeClass.UNCERTAIN:
                    row.update(status="uncertain", retcode=retcode)
                    await self._save()
                    await self.resolve()
                    return self._answer(self.rows[key])
                if cls is RetcodeClass.RETRY and attempt < self.settings.policy.requote_retries:
                    continue
                return await self._settle(key, "failed", retcode, {"class": cls.value})
        except (BrokerError, NotReady, TimeoutError) as exc:
            if row["status"] == "pending":
                return await self._settle(key, "failed", 0, {"error": str(exc)})
            raise
        return self._answer(row)   # pragma: no cover - the loop always returns

    async def _settle(self, key: str, status: str, retcode: int,
                      result: dict[str, Any]) -> dict[str, Any]:
        row = self.rows[key]
        row.update(status=status, retcode=retcode or row["retcode"],
                   result={**row["result"], **result}, resolved_at=self.clock())
        if status not in ("done", SHADOW):   # never made: it may be ordered again
            self.on_failed(row["ticket"])
        await self._save()
        log.log(logging.INFO if status in ("done", SHADOW) else logging.WARNING,
                "account guard closed position %s: %s (%s)", row["ticket"], status,
                row["reason"], extra={"ticket": row["ticket"], "status": status,
                                      "retcode": retcode})
        return self._answer(row)

    @staticmethod
    def _answer(row: dict[str, Any]) -> dict[str, Any]:
        status = row["status"]
        return {"ticket": row["ticket"],
                "result": "uncertain" if status in UNRESOLVED else status,
                "retcode": row["retcode"], "reason": row["result"].get("reason", "")}

    async def resolve(self) -> bool:
        """Settle the guard's own rows left pending, sent or uncertain (a crash, a lost
        answer) from the broker's deals; False while one cannot be read."""
        for key, row in list(self.rows.items()):
            if row["status"] == "pending":   # journaled, never sent: "sent" is written first
                await self._settle(key, "failed", 0, {"reason": "never sent"})
                continue
            if row["status"] not in UNRESOLVED:
                continue
            try:
                deals = await self.broker.call("deals_for_position", position=row["ticket"])
            except (BrokerError, NotReady, TimeoutError) as exc:
                log.warning("account guard: close of %s still uncertain: %s", row["ticket"],
                            exc, extra={"ticket": row["ticket"]})
                return False
            comment = row["request"].get("comment", "")
            ours = [d for d in deals if d.entry in DEAL_ENTRY_OUT and d.comment == comment
                    and d.magic == self.settings.broker.magic]
            await self._settle(key, "done" if ours else "failed", row["retcode"],
                               {"reconciled": "executed" if ours else "not executed"})
        return True
