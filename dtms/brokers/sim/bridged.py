"""The simulated terminal as the ``--module`` of ``dtms terminal-bridge`` (tests, benchmarks,
trying the bridge without a terminal).

``dtms terminal-bridge --module dtms.brokers.sim.bridged:embedded`` serves a simulated terminal
living in the bridge's own process; ``...:remote`` serves the one ``dtms sim-terminal`` runs in
its own process (``sim.remote_host``/``sim.remote_port``), as the real bridge serves a terminal
that outlives it: kill the bridge and the positions live on. Both read DTMS's settings (config
file and ``DTMS_*`` variables) for the ``[sim]`` section.
"""

from __future__ import annotations

from typing import Any


def embedded() -> Any:
    """A SimTerminal in this process, as ``broker.backend = "sim"`` builds it."""
    from dtms import config
    from dtms.brokers.mt5 import sim_terminal

    return sim_terminal(config.load())


def remote() -> Any:
    """The client of ``dtms sim-terminal`` (a stand-in for the MetaTrader5 module)."""
    from dtms import config
    from dtms.brokers.sim.remote import RemoteTerminal

    s = config.load().sim
    return RemoteTerminal(s.remote_host, s.remote_port)
