"""The run state machine, and how a reader tells a live run from a lost one.

    staged [-> queued] -> starting -> running -> succeeded | failed | cancelled | lost

(``queued``: placement=batch, the driver's job waits in the scheduler's queue.)

``state.json`` is written by the launch task once (``staged``) and by the
driver after that. ``lost`` is never written: a reader derives it when the
state is not terminal and the driver is gone (its pid is dead, or reused by
another process, on this host) or its heartbeat is older than two periods
plus a grace, which also covers a driver on another login host behind the same
name. Likewise a cancel request whose driver is gone reads as ``cancelled``.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any

from login_node.rundir import RunPaths, read_json, write_json

STATES = ("staged", "queued", "starting", "running", "succeeded", "failed", "cancelled", "lost")
TERMINAL = ("succeeded", "failed", "cancelled", "lost")
DEFAULT_HEARTBEAT = 30.0
#: A heartbeat older than MISSED periods plus GRACE seconds means the driver is gone.
MISSED = 2
GRACE = 5.0
#: A run still ``staged`` this long after launch never got a driver.
STAGED_TIMEOUT = 120.0


def heartbeat_seconds() -> float:
    try:
        return max(0.2, float(os.environ.get("GCBUNDLE_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT)))
    except ValueError:
        return DEFAULT_HEARTBEAT


def hostname() -> str:
    return socket.gethostname()


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if gone.

    Together with the pid it identifies a process even after pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None  # zombie: as good as gone
    return fields[19]


def alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    now = process_start_time(pid)
    return now is not None and (start is None or now == start)


def write(paths: RunPaths, state: dict[str, Any]) -> None:
    state = dict(state)
    state["updated"] = time.time()
    write_json(paths.state, state)


def read_raw(paths: RunPaths) -> dict[str, Any]:
    try:
        return read_json(paths.state)
    except FileNotFoundError:
        return {"run_id": paths.run_id, "state": "staged", "updated": 0.0}


def effective(paths: RunPaths, now: float | None = None) -> dict[str, Any]:
    """The state as a reader should report it, with ``lost`` and late cancels derived."""
    state = read_raw(paths)
    now = time.time() if now is None else now
    if state.get("state") in TERMINAL:
        return state
    period = float(state.get("heartbeat_seconds") or DEFAULT_HEARTBEAT)
    age = now - float(state.get("updated") or 0.0)
    same_host = state.get("host") == hostname()
    reason = None
    if state.get("state") == "queued":
        pass  # placement=batch: no heartbeat before the job starts; the status task asks the scheduler
    elif state.get("state") == "staged":
        if age > STAGED_TIMEOUT:
            reason = "the driver never started"
    elif same_host and not alive(state.get("pid"), state.get("pid_start")):
        reason = f"the driver (pid {state.get('pid')}) is gone"
    elif age > MISSED * period + GRACE:
        reason = f"no heartbeat for {age:.0f} s (period {period:g} s)"
    if reason:
        state = dict(state)
        if paths.cancel_marker.exists():
            state["state"] = "cancelled"
            state["detail"] = f"cancel requested; {reason}"
        else:
            state["state"] = "lost"
            state["detail"] = f"{reason}; last heartbeat {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(state.get('updated') or 0)))} on {state.get('host', '?')}"
            state["hint"] = "`gcbundle resume` starts it again, reusing completed apps' checkpoints"
    return state


def is_terminal(state: dict[str, Any]) -> bool:
    return state.get("state") in TERMINAL

