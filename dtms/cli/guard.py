"""The account guard's commands (issue 15): ``dtms guard``, ``dtms guard unlock --reason``,
``dtms flatten --reason [--yes]``, ``dtms close TICKET`` and ``dtms modify TICKET --sl X [--tp Y]
[--force]``. :func:`add_commands` adds them to the parser; :func:`run` makes the one call each
needs (``flatten`` asks for confirmation on a terminal unless ``--yes``)."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from dtms.cli.common import EXIT_OK, EXIT_USAGE, print_json

COMMANDS = ("guard", "flatten", "close", "modify")


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a price > 0, got {text!r}")
    return value


def add_commands(sub: Any, ticket: Callable[[str], int]) -> None:
    g = sub.add_parser("guard", help="the account guard: lock, today's P/L, drawdown, limits")
    gs = g.add_subparsers(dest="guard_command")
    u = gs.add_parser("unlock", help="unlock the account (recorded with who and why)")
    u.add_argument("--reason", required=True, help="why (recorded)")
    u.add_argument("--by", help="who (default: the user running the command)")
    u.add_argument("--json", action="store_true", help="JSON output (the default)")
    f = sub.add_parser("flatten", help="close every managed position now (journaled)")
    f.add_argument("--reason", required=True, help="why (recorded)")
    f.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    c = sub.add_parser("close", help="close one position now")
    c.add_argument("ticket", type=ticket, help="the position's ticket")
    c.add_argument("--reason", default="", help="why (recorded)")
    m = sub.add_parser("modify", help="move the SL/TP of one trade (tighter only unless --force)")
    m.add_argument("ticket", type=ticket, help="the trade's ticket")
    m.add_argument("--sl", type=_price, help="the new stop loss (a price > 0; tighter only unless --force)")
    m.add_argument("--tp", type=_price, help="the new take profit (a price > 0)")
    m.add_argument("--force", action="store_true", help="allow a looser stop (recorded)")


def run(client: Any, args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "guard" and getattr(args, "guard_command", None) == "unlock":
        print_json(client.call("guard_unlock", {"reason": args.reason,
                                                "by": args.by or getpass.getuser()}))
    elif cmd == "guard":
        print_json(client.call("guard"))
    elif cmd == "flatten":
        if not args.yes:
            if not sys.stdin.isatty():
                print("dtms flatten: not a terminal to confirm on; add --yes", file=sys.stderr)
                return EXIT_USAGE
            try:
                answer = input("Close every position DTMS manages now? [y/N] ")
            except EOFError:   # Ctrl-D (the end of input) is no answer: a no
                answer = ""
                print(file=sys.stdout)
            if answer.strip().lower() not in ("y", "yes"):
                print("dtms flatten: nothing done", file=sys.stderr)
                return EXIT_OK
        print_json(client.call("flatten", {"reason": args.reason}, timeout=120.0))
    elif cmd == "close":
        query: dict[str, Any] = {"ticket": args.ticket}
        if args.reason:
            query["reason"] = args.reason
        print_json(client.call("close", query, timeout=120.0))
    elif cmd == "modify":
        if args.sl is None and args.tp is None:
            print("dtms modify: give --sl, --tp or both", file=sys.stderr)
            return EXIT_USAGE
        query = {"ticket": args.ticket, "by": getpass.getuser()}
        for name in ("sl", "tp"):
            if getattr(args, name) is not None:
                query[name] = getattr(args, name)
        if args.force:
            query["force"] = True
        print_json(client.call("modify", query, timeout=120.0))
    return EXIT_OK
