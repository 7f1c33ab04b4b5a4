"""What is left of a run whose driver is gone: its orphaned processes on this host.

A driver that crashed, or a login node that rebooted, can leave the run's
interchange and workers running with no one to stop them. The login node
reaps them when it next looks at such a run: ``status`` and a resume
(``login_node.tasks``), and ``prune`` before it deletes the run
(``login_node.prune``). Its own module so that both import it at their top.
"""
from __future__ import annotations

from typing import Any

from login_node import procs, state
from login_node.rundir import RunPaths


def reap(paths: RunPaths, st: dict[str, Any]) -> int:
    """Stop what is left on this host of a run whose driver is gone (orphaned
    interchange and workers after a crash or reboot); return how many."""
    ended_here = st.get("state") in ("lost", "cancelled") and st.get("host") == state.hostname()
    if ended_here and not state.alive(st.get("pid"), st.get("pid_start")):
        return procs.sweep(paths.run_id, grace=2.0)
    return 0
