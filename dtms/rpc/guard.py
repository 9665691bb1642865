"""The account guard's RPC methods (issue 15): ``guard``, ``guard_unlock``, ``flatten``,
``close`` and ``modify``; each checks its arguments and asks the guard actor
(:mod:`dtms.actors.guard`), which owns the answer. :func:`with_guard` puts the lock
(``guard: {locked, reason, since, until}``) into every trade view a method answers.

Answers:

* ``guard {}`` -> ``{locked, reason, since, until, kind, day, day_start_balance, daily_pnl,
  daily_limit, equity_peak, initial_balance, drawdown_pct, allowance, open_risk, naked,
  limits, evaluated_at, history}``;
* ``guard_unlock {reason, by?}`` -> the same with ``unlocked`` (false when it was not locked);
  with ``rpc.token`` set the connection has authenticated already (the server checks it);
* ``flatten {reason}`` -> ``{closed: [...], failed: [...]}``, each ``{ticket, result,
  retcode, reason}``;
* ``close {ticket, reason?}`` -> ``{ticket, result, retcode, reason}`` once done or failed;
* ``modify {ticket, sl?, tp?, force?, by?}`` -> the same; a loosening stop without
  ``force: true`` is refused with INVALID_ARGUMENT naming ``sl``, and nothing is sent.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dtms.actors.guard import Close, Flatten, GetGuard, Modify, Unlock
from dtms.errors import InvalidArgument
from dtms.rpc.args import int_arg, only, reason_arg

if TYPE_CHECKING:
    from dtms.service import Service

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
#: a close or a flatten waits for the terminal: longer than a plain ask
ACT_TIMEOUT_S = 120.0


def _price(args: dict[str, Any], name: str) -> float | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or value <= 0:
        raise InvalidArgument("must be a price > 0", field=name)
    return float(value)


class GuardMethods:
    def __init__(self, service: Service) -> None:
        self.service = service

    def table(self) -> dict[str, Handler]:
        return {"guard": self.guard, "guard_unlock": self.guard_unlock, "flatten": self.flatten,
                "close": self.close, "modify": self.modify}

    async def _ask(self, message: Any, timeout: float = 10.0) -> Any:
        return await self.service.guard.ask(message, timeout=timeout)

    async def guard(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, set())
        return await self._ask(GetGuard())

    async def guard_unlock(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"reason", "by"})
        return await self._ask(Unlock(reason_arg(args, "reason", required=True),
                                      reason_arg(args, "by", required=False, limit=64)))

    async def flatten(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"reason"})
        return await self._ask(Flatten(reason_arg(args, "reason", required=True)), ACT_TIMEOUT_S)

    async def close(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"ticket", "reason"})
        ticket = int_arg(args, "ticket", low=1)
        return await self._ask(Close(ticket, reason_arg(args, "reason", required=False)),
                               ACT_TIMEOUT_S)

    async def modify(self, args: dict[str, Any]) -> dict[str, Any]:
        only(args, {"ticket", "sl", "tp", "force", "by"})
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        for name, check in (("ticket", lambda: int_arg(args, "ticket", low=1)),
                            ("sl", lambda: _price(args, "sl")), ("tp", lambda: _price(args, "tp")),
                            ("by", lambda: reason_arg(args, "by", required=False, limit=64))):
            try:
                values[name] = check()
            except InvalidArgument as exc:
                errors[name] = exc.message.removeprefix(f"{name}: ")
        force = args.get("force", False)
        if not isinstance(force, bool):
            errors["force"] = "must be true or false"
        if "sl" not in errors and "tp" not in errors and values.get("sl") is None and values.get(
                "tp") is None:
            errors["sl"] = "give sl, tp or both"
        if errors:
            raise InvalidArgument.many(errors)
        return await self._ask(Modify(values["ticket"], values["sl"], values["tp"], force,
                                      values["by"]), ACT_TIMEOUT_S)


def with_guard(method: str, result: Any, lock: dict[str, Any]) -> Any:
    """``result`` with ``guard`` (the lock) in each trade view it holds."""
    if not isinstance(result, dict):
        return result
    if method in ("trade", "pause", "resume", "unregister") and "ticket" in result:
        result["guard"] = lock
    elif method == "register" and isinstance(result.get("trade"), dict):
        result["trade"]["guard"] = lock
    elif method == "trades":
        for view in result.get("trades", ()):
            view["guard"] = lock
    elif method == "register_batch":
        for item in result.get("results", ()):
            if isinstance(item.get("trade"), dict):
                item["trade"]["guard"] = lock
    return result
