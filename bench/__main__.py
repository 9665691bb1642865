"""``python -m bench {all,registration} [--quick] [--json PATH] ...``: run benchmarks, print tables."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import registration

BENCHES: dict[str, Callable[[list[str]], int]] = {"registration": registration.main}
SUMMARIES = {"registration": "registrations/s, p50/p99 over TCP vs a bare echo floor"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*BENCHES, "all"):
        print(f"usage: python -m bench {{all,{','.join(BENCHES)}}} [--quick] [--json PATH]\n"
              "  all           run every benchmark (options are passed to each)\n"
              + "".join(f"  {name:<13} {SUMMARIES[name]}\n" for name in BENCHES)
              + "  python -m bench NAME --help for a benchmark's own options", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    if name != "all":
        return BENCHES[name](rest)
    status = 0
    for bench in BENCHES.values():
        status = bench(rest) or status
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
