"""The client commands (``health``, ``status``, ``register``, ``trade``, ``trades``,
``transitions``, ``restarts``, ``actions``, ``pause``, ``resume``, ``unregister``, and the
account guard's in :mod:`dtms.cli.guard`): one call to the
service each, its answer printed, its error mapped to an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from dtms import config
from dtms.cli import guard as guard_cli
from dtms.cli.common import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_USAGE,
    format_trades,
    print_json,
)
from dtms.cli.watch import watch
from dtms.errors import DtmsError


def client_command(settings: config.Settings, args: argparse.Namespace) -> int:
    from dtms.client import ClientError, SyncClient

    cmd = args.command
    if cmd == "watch":
        return watch(settings, limit=args.limit)
    try:
        with SyncClient.from_settings(settings, retries=1) as client:
            if cmd == "health":
                h = client.health()
                print_json(h)
                return EXIT_OK if h.get("ready") else EXIT_NOT_READY
            if cmd == "status":
                print_json(client.status())
            elif cmd == "register":
                fields = {k: getattr(args, k) for k in ("symbol", "direction", "entry_price",
                                                        "volume", "sl", "tp", "strategy_type",
                                                        "owner", "magic", "comment")}
                trade = {"ticket": args.ticket, **{k: v for k, v in fields.items() if v is not None}}
                print_json(client.register(trade))
            elif cmd == "trade":
                print_json(client.trade(args.ticket))
            elif cmd == "trades":
                filters: dict[str, Any] = {"limit": args.limit, "offset": args.offset}
                if args.state:
                    filters["state"] = args.state
                if args.symbol:
                    filters["symbol"] = args.symbol
                if args.open:
                    filters["open_only"] = True
                result = client.trades(**filters)
                if args.json:
                    print_json(result)
                else:
                    print(format_trades(result["trades"]))
            elif cmd == "transitions":
                print_json(client.call("transitions", {"ticket": args.ticket}))
            elif cmd == "restarts":
                query: dict[str, Any] = {"limit": args.limit}
                if args.kind:
                    query["kind"] = args.kind
                if args.since is not None:
                    query["since"] = args.since
                print_json(client.call("restarts", query))
            elif cmd == "actions":
                query = {"limit": args.limit}
                if args.ticket is not None:
                    query["ticket"] = args.ticket
                if args.since is not None:
                    query["since"] = args.since
                print_json(client.call("actions", query))
            elif cmd in ("pause", "resume") and args.all == (args.ticket is not None):
                print(f"dtms {cmd}: give a ticket or --all", file=sys.stderr)
                return EXIT_USAGE
            elif cmd in ("pause", "resume"):
                print_json(client.call(cmd, {"all": True} if args.all
                                        else {"ticket": args.ticket}))
            elif cmd == "unregister":
                print_json(client.call(cmd, {"ticket": args.ticket}))
            elif cmd in guard_cli.COMMANDS:
                return guard_cli.run(client, args)
    except DtmsError as err:
        print_json(err.to_wire(), stream=sys.stderr)
        return {"NOT_READY": EXIT_NOT_READY, "NOT_FOUND": EXIT_NOT_FOUND}.get(err.code, EXIT_ERROR)
    except BrokenPipeError:
        # our stdout was closed early (e.g. `dtms trades | head`): not a connection problem
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (ClientError, ConnectionError, TimeoutError) as exc:
        print(f"dtms: cannot reach DTMS at {settings.rpc.host}:{settings.rpc.port}: {exc}",
              file=sys.stderr)
        return EXIT_NOT_READY
    return EXIT_OK
