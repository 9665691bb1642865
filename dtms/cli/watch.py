"""``dtms watch``: a live view of the trades, redrawn on every event of ``subscribe`` and every
``--refresh`` seconds (prices and open P/L come from the broker, read with ``trades``).

An update says what changed (``123: sl 1.08312 -> 1.08524, paused no -> yes``), computed by
:func:`changes` from the trade's previous view; the latest actions are read again after each
event, so an action shows up with the update it caused.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from typing import Any

import anyio
from rich.console import Group
from rich.text import Text

from dtms import config
from dtms.cli import tables
from dtms.cli.common import EXIT_ERROR, EXIT_NOT_READY, EXIT_OK, print_json
from dtms.errors import DtmsError

#: the fields of a trade an update may change that a person watches, in this order
WATCHED = ("state", "volume", "sl", "tp", "paused", "hedge_ticket", "hedge_volume", "pending",
           "policy", "close_reason")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_text(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What an update changed in a trade's view: ``sl 1.1 -> 1.2, paused no -> yes``; ``new``
    for a trade not seen before, ``no visible change`` when only other fields moved."""
    if old is None:
        return "new"
    parts = [f"{k} {_text(old.get(k))} -> {_text(new.get(k))}" for k in WATCHED
             if old.get(k) != new.get(k)]
    return ", ".join(parts) or "no visible change"


def watch(settings: config.Settings, *, limit: int = 40, refresh_s: float = 2.0) -> int:
    """Redraw a live view on every event and every ``refresh_s`` until interrupted."""
    from dtms.client import Client, ClientError

    async def run() -> None:
        async with Client.from_settings(settings) as client:
            await client.wait_ready(timeout=settings.client.timeout_s * 6)
            screen = WatchScreen(f"{settings.rpc.host}:{settings.rpc.port}", limit)
            state: dict[str, Any] = {"trades": {}, "events": [], "actions": [], "restarts": []}

            async def reload() -> None:
                listed = await client.trades(open_only=True, limit=1000, market=True)
                fresh = {t["ticket"]: t for t in listed["trades"]}
                # keep what is no longer open (RELEASED, CLOSED) as the events left it
                kept = {k: v for k, v in state["trades"].items() if k not in fresh}
                state["trades"] = {**kept, **fresh}
                state["actions"] = (await client.call("actions", {"limit": 5}))["actions"]
                state["restarts"] = (await client.call("restarts", {"limit": 5}))["restarts"]

            def draw() -> None:
                screen.draw(state["trades"], state["events"][-8:], state["actions"],
                            state["restarts"])

            async def refresh() -> None:
                while True:
                    await anyio.sleep(refresh_s)
                    await reload()
                    draw()

            await reload()
            draw()
            async with anyio.create_task_group() as tg:
                tg.start_soon(refresh)
                async for method, params in client.subscribe():
                    trade = params.get("trade")
                    ticket = params.get("ticket")
                    old = state["trades"].get(ticket)
                    if trade is not None:
                        # the notification has no price: keep the last one read
                        figures = {k: old[k] for k in ("price", "open_pl", "open_r")
                                   if old is not None and k in old}
                        state["trades"][ticket] = {**trade, **figures}
                    if method == "trade.state":
                        state["events"].append(
                            f"{ticket}: {params['from_state'] or 'new'} -> "
                            f"{params['to_state']} ({params['reason']})")
                    elif method == "trade.updated" and trade is not None:
                        state["events"].append(f"{ticket}: {changes(old, trade)}")
                    state["actions"] = (await client.call("actions", {"limit": 5}))["actions"]
                    draw()
                tg.cancel_scope.cancel()   # the subscription ended: so does the refresh

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        return EXIT_OK
    except DtmsError as err:
        print_json(err.to_wire(), stream=sys.stderr)
        return EXIT_NOT_READY if err.code == "NOT_READY" else EXIT_ERROR
    except (ClientError, ConnectionError, TimeoutError) as exc:
        print(f"dtms: lost DTMS at {settings.rpc.host}:{settings.rpc.port}: {exc}",
              file=sys.stderr)
        return EXIT_NOT_READY
    return EXIT_OK


class WatchScreen:
    """Draws the watch view: clear, then trades by state, latest events, actions, restarts."""

    def __init__(self, address: str, limit: int, stream: Any = None, width: int | None = None
                 ) -> None:
        self.address = address
        self.limit = limit
        self.stream = stream or sys.stdout
        self.width = width

    def render(self, trades: dict[int, dict[str, Any]], events: list[str],
               actions: list[dict[str, Any]], restarts: list[dict[str, Any]]) -> Group:
        live = [t for t in trades.values() if t["state"] not in ("CLOSED", "RELEASED")]
        by_state: dict[str, int] = {}
        for t in trades.values():
            by_state[t["state"]] = by_state.get(t["state"], 0) + 1
        shown = sorted(live, key=lambda t: (t["state"], t["ticket"]))[: self.limit]
        header = f"DTMS watch  {self.address}  " + "  ".join(
            f"{k}={v}" for k, v in sorted(by_state.items()))
        return Group(
            Text(header, style="bold"), tables.trades_table(shown),
            Text(tables.count_line(len(live), "trade")),
            Text("\nlatest events:"), Text("\n".join(f"  {e}" for e in events) or "  (none)"),
            Text("\nlatest actions:"),
            tables.actions_table(actions) if actions else Text("  (none)"),
            Text("\nrecent restarts:"),
            tables.restarts_table(restarts) if restarts else Text("  (none)"))

    def draw(self, trades: dict[int, dict[str, Any]], events: list[str],
             actions: list[dict[str, Any]], restarts: list[dict[str, Any]]) -> None:
        view = self.render(trades, events, actions, restarts)
        width = self.width or shutil.get_terminal_size((160, 40)).columns
        text = tables.render(view, width=width)
        self.stream.write("\x1b[H\x1b[2J" + text)
        self.stream.flush()
