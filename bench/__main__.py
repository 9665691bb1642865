"""``python -m bench {all,NAME} [--quick] [--json PATH] ...``: run benchmarks, print tables."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import bridge, coldstart, commit, engine, registration, replay

BENCHES: dict[str, Callable[[list[str]], int]] = {"registration": registration.main,
                                                  "coldstart": coldstart.main,
                                                  "commit": commit.main,
                                                  "engine": engine.main,
                                                   "bridge": bridge.main,
                                                   "replay": replay.main}
SUMMARIES = {"registration": "registrations/s, p50/p99 over TCP vs a bare echo floor",
             "coldstart": "seconds from start to ready with 10k/100k stored trades vs none",
             "commit": "durable writes/s, group commit vs one commit each vs raw sqlite3",
             "engine": "tick->decision (index on/off), bar-close scoring, RSS, idle CPU",
             "bridge": "terminal call p50/p99: terminal bridge vs sim-terminal vs embedded",
             "replay": "dtms replay: one year of M5 bars, 100 trades; bars/s vs the policy"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*BENCHES, "all"):
        print(f"usage: python -m bench {{all,{','.join(BENCHES)}}} [--quick] [--json PATH]\n"
              "  all           every benchmark, then the targets' summary table [--quick]\n"
              + "".join(f"  {name:<13} {SUMMARIES[name]}\n" for name in BENCHES)
              + "  python -m bench NAME --help for a benchmark's own options", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        from bench import summary
        return summary.main(rest)
    return BENCHES[name](rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
