"""The ``dtms`` command: run the service, and talk to it over the protocol.

``dtms serve`` runs the service (on the simulated terminal by default; ``--demo N`` opens N
positions in the simulated terminal and registers them through the protocol). The client
commands (``health``, ``status``, ``register``, ``trade``, ``trades``, ``transitions``,
``restarts``) read the same settings as the server, so they find it on the same port.
``dtms terminal-bridge`` runs :mod:`dtms.bridge.server` (next to a terminal, its own options).

Exit codes (also in ``--help``): 0 ok; 2 usage (bad arguments or configuration; the message
names the argument and its allowed values or bounds, which are the server's); 3 not ready
(the service answered NOT_READY, cannot be reached, or -- for ``serve`` -- failed to start, e.g.
a port in use, named with the setting that changes it, or to become ready within
``service.startup_timeout_s``); 4 not found (unknown ticket); 1 anything else, including
``serve`` stopping because the root supervisor exceeded its restart intensity. Errors from the
service are printed to stderr as their error map. ``--help`` shows the values of the loaded
settings (config file and ``DTMS_*`` variables), not built-in defaults.

The package: :mod:`~dtms.cli.parser` (arguments and help), :mod:`~dtms.cli.serve`,
:mod:`~dtms.cli.commands` (client commands), :mod:`~dtms.cli.watch`, :mod:`~dtms.cli.common`
(exit codes and output).
"""

from __future__ import annotations

import sys

from dtms import config
from dtms.cli.commands import client_command
from dtms.cli.common import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_USAGE,
    RESTART_KINDS,
    TRADE_STATES,
)
from dtms.cli.parser import _preload, _settings, build_parser
from dtms.cli.serve import _find, serve
from dtms.rpc.protocol import MAX_PAGE

__all__ = ["EXIT_ERROR", "EXIT_NOT_FOUND", "EXIT_NOT_READY", "EXIT_OK", "EXIT_USAGE", "MAX_PAGE",
           "RESTART_KINDS", "TRADE_STATES", "_find", "build_parser", "client_command", "config",
           "main", "serve"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    loaded = _preload(argv)
    args = build_parser(loaded if isinstance(loaded, config.Settings) else config.Settings()
                        ).parse_args(argv)
    if args.command == "terminal-bridge":   # needs no DTMS settings: it runs by the terminal
        from dtms.bridge.server import main as bridge_main
        return bridge_main(args.bridge_args, prog="dtms terminal-bridge")
    try:
        if isinstance(loaded, config.ConfigError):
            raise loaded
        settings = _settings(loaded, args)
    except config.ConfigError as exc:
        print(f"dtms: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        return serve(settings, demo=args.demo, adopt_account=args.adopt_account)
    if args.command == "replay":
        from dtms.replay import cli as replay_cli
        return replay_cli.run(args, settings)
    if args.command == "sim-terminal":
        from dtms.brokers.mt5 import sim_terminal
        from dtms.brokers.sim import remote

        # the same terminal as the embedded one: every [sim] setting applies
        remote.serve_process(sim_terminal(settings), settings.sim.remote_host,
                             settings.sim.remote_port, args.ready_file)
        return EXIT_OK
    return client_command(settings, args)
