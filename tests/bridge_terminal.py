"""The scenario tests' simulated terminal (tests.test_scenarios.make_sim: seed 11, flat history,
a manual clock, EURUSD held) in a process of its own, for the bridge tests:
``python tests/bridge_terminal.py --ready-file F [--netting]``. Its test controls are reached
with a RemoteTerminal; the bridge serves it as the MetaTrader5 module
(``dtms terminal-bridge --module dtms.brokers.sim.bridged:remote``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtms.brokers.sim import remote  # noqa: E402
from tests.test_scenarios import make_sim  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ready-file", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--netting", action="store_true")
    args = p.parse_args()
    sim = make_sim(netting=args.netting)   # initialized: the test reads it through the API
    remote.serve_process(sim, "127.0.0.1", args.port, args.ready_file)


if __name__ == "__main__":
    main()
