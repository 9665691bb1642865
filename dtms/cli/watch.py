"""``dtms watch``: a live view of the trades, redrawn on every event of ``subscribe``."""

from __future__ import annotations

import sys
from typing import Any

import anyio

from dtms import config
from dtms.cli.common import EXIT_ERROR, EXIT_NOT_READY, EXIT_OK, format_trades, print_json
from dtms.errors import DtmsError


def watch(settings: config.Settings, *, limit: int = 40) -> int:
    """Redraw a live view on every event until interrupted."""
    from dtms.client import Client, ClientError

    async def run() -> None:
        async with Client.from_settings(settings) as client:
            await client.wait_ready(timeout=settings.client.timeout_s * 6)
            listed = await client.trades(open_only=True, limit=1000)
            trades = {t["ticket"]: t for t in listed["trades"]}
            events: list[str] = []
            actions = (await client.call("actions", {"limit": 5}))["actions"]
            restarts = (await client.call("restarts", {"limit": 5}))["restarts"]
            screen = WatchScreen(f"{settings.rpc.host}:{settings.rpc.port}", limit)
            screen.draw(trades, events, actions, restarts)
            async for method, params in client.subscribe():
                trade = params.get("trade")
                if trade is not None:
                    trades[trade["ticket"]] = trade
                if method == "trade.state":
                    events.append(f"{params['ticket']}: {params['from_state'] or 'new'} -> "
                                  f"{params['to_state']} ({params['reason']})")
                elif method == "trade.updated":
                    events.append(f"{params['ticket']}: updated")
                screen.draw(trades, events[-8:], actions, restarts)

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

    def __init__(self, address: str, limit: int, stream: Any = None) -> None:
        self.address = address
        self.limit = limit
        self.stream = stream or sys.stdout

    def draw(self, trades: dict[int, dict[str, Any]], events: list[str],
             actions: list[dict[str, Any]], restarts: list[dict[str, Any]]) -> None:
        live = [t for t in trades.values() if t["state"] not in ("CLOSED", "RELEASED")]
        by_state: dict[str, int] = {}
        for t in trades.values():
            by_state[t["state"]] = by_state.get(t["state"], 0) + 1
        out = ["\x1b[H\x1b[2J", f"DTMS watch  {self.address}  "
               + "  ".join(f"{k}={v}" for k, v in sorted(by_state.items())), ""]
        shown = sorted(live, key=lambda t: (t["state"], t["ticket"]))[: self.limit]
        out.append(format_trades(shown))
        out += ["", "latest events:"] + ([f"  {e}" for e in events] or ["  (none)"])
        out += ["", "latest actions:"] + ([f"  {a['ticket']} {a['kind']} {a['status']}"
                                           for a in actions] or ["  (none)"])
        out += ["", "recent restarts:"] + ([f"  {r['supervisor']}/{r['child']} {r['action']} "
                                            f"{r['exception']}" for r in restarts] or ["  (none)"])
        self.stream.write("\n".join(out) + "\n")
        self.stream.flush()
