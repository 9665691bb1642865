"""The client commands (``health``, ``status``, ``register``, ``trade``, ``trades``,
``transitions``, ``restarts``, ``actions``, ``pause``, ``resume``, ``unregister``, ``policy``,
``shadow``, and the account guard's in :mod:`dtms.cli.guard`): one call to the service each, its
answer printed -- a table for the listings (:mod:`dtms.cli.tables`; ``--json`` for the service's
map), JSON for the rest -- and its error mapped to an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from dtms import config
from dtms.cli import guard as guard_cli
from dtms.cli import tables
from dtms.cli.common import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_USAGE,
    print_json,
)
from dtms.cli.watch import watch
from dtms.errors import DtmsError


def _query(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The wire arguments of ``names`` that were given (None: the service's default)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _listing(client: Any, args: argparse.Namespace) -> tuple[dict[str, Any], list[Any]]:
    """The service's answer to a listing command, and what to print for people."""
    cmd = args.command
    if cmd == "trades":
        query = {"limit": args.limit, "offset": args.offset, "market": True,
                 **_query(args, "state", "symbol")}
        if args.open:
            query["open_only"] = True
        result = client.trades(**query)
        rows = result["trades"]
        return result, [tables.trades_table(rows), tables.count_line(len(rows), "trade")]
    if cmd == "actions":
        result = client.call("actions", _query(args, "ticket", "limit", "since"))
        rows = result["actions"]
        return result, [tables.actions_table(rows), tables.count_line(len(rows), "action")]
    if cmd == "transitions":
        result = client.call("transitions", _query(args, "ticket", "limit", "since"))
        rows = result["transitions"]
        return result, [tables.transitions_table(rows),
                        tables.count_line(len(rows), "transition")]
    if cmd == "restarts":
        result = client.call("restarts", _query(args, "limit", "kind", "since"))
        rows = result["restarts"]
        return result, [tables.restarts_table(rows), tables.count_line(len(rows), "restart")]
    result = client.call("shadow_report", _query(args, "ticket", "since"))
    return result, [tables.shadow_table(result)]


def client_command(settings: config.Settings, args: argparse.Namespace) -> int:
    from dtms.client import ClientError, SyncClient

    cmd = args.command
    if cmd == "watch":
        return watch(settings, limit=args.limit, refresh_s=args.refresh)
    if cmd in ("pause", "resume", "policy") and args.all == (args.ticket is not None):
        print(f"dtms {cmd}: give a ticket or --all", file=sys.stderr)
        return EXIT_USAGE
    try:
        with SyncClient.from_settings(settings, retries=1) as client:
            if cmd == "health":
                h = client.health()
                print_json(h)
                return EXIT_OK if h.get("ready") else EXIT_NOT_READY
            if cmd == "status":
                print_json(client.status())
            elif cmd == "register":
                fields = _query(args, "symbol", "direction", "entry_price", "volume", "sl", "tp",
                                "strategy_type", "owner", "magic", "comment")
                if args.policy:
                    fields["policy"] = dict(args.policy)
                print_json(client.register({"ticket": args.ticket, **fields}))
            elif cmd == "trade":
                print_json(client.call("trade", {"ticket": args.ticket, "market": True}))
            elif cmd in ("trades", "actions", "transitions", "restarts", "shadow"):
                result, shown = _listing(client, args)
                if args.json:
                    print_json(result)
                else:
                    tables.show(*shown)
            elif cmd in ("pause", "resume"):
                print_json(client.call(cmd, {"all": True} if args.all
                                        else {"ticket": args.ticket}))
            elif cmd == "policy":
                target = {"all": True} if args.all else {"ticket": args.ticket}
                print_json(client.call("set_policy", {**target, "policy": dict(args.changes)}))
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
