"""The run state machine, and how a reader tells a live run from a lost one.

    staged [-> queued] -> starting -> running -> succeeded | failed | cancelled | lost

(``queued``: placement=batch, the driver's job waits in the scheduler's queue.)

and ``unknown`` (with the reason) when ``state.json`` is missing or damaged.

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

from bundle.contracts import STATES, TERMINAL
from login_node.procs import run_processes
from login_node.rundir import RunPaths, read_json, write_json

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
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    now = process_start_time(pid)
    return now is not None and (start is None or now == start)


def write(paths: RunPaths, state: dict[str, Any]) -> None:
    state = dict(state)
    state["updated"] = time.time()
    write_json(paths.state, state)


def read_raw(paths: RunPaths) -> dict[str, Any]:
    """``state.json`` as written, or ``unknown`` with the reason when it cannot be read.

    Launch writes the file before the run directory gets its name, and every
    later write replaces it whole, so a missing, unreadable or malformed file
    means damage (a full disk, a hand edit, a cleanup script): the state is
    then not known, and is reported so rather than guessed.
    """
    reason = None
    try:
        data = read_json(paths.state)
    except FileNotFoundError:
        reason = "state.json is missing"
    except (OSError, ValueError, RecursionError) as exc:
        reason = f"state.json is unreadable: {type(exc).__name__}: {str(exc)[:120]}"
    else:
        if not isinstance(data, dict):
            reason = f"state.json holds a {type(data).__name__}, not an object"
        elif not isinstance(data.get("state"), str) or data["state"] not in STATES:
            reason = f"state.json has no valid state ({str(data.get('state'))[:40]!r})"
        else:
            return data
    return {
        "run_id": paths.run_id,
        "state": "unknown",
        "detail": reason,
        "hint": f"`gcbundle cancel {paths.run_id}` still stops whatever runs of it; "
        "`gcbundle results` fetches what it left",
    }


def effective(paths: RunPaths, now: float | None = None) -> dict[str, Any]:
    """The state as a reader should report it, with ``lost`` and late cancels derived."""
    state = read_raw(paths)
    now = time.time() if now is None else now
    if state.get("state") in TERMINAL:
        return state
    if state["state"] == "unknown":
        if paths.cancel_marker.exists() and not _has_processes(paths.run_id):
            return {**state, "state": "cancelled", "detail": f"cancel requested; {state['detail']}"}
        return state
    period = _number(state.get("heartbeat_seconds")) or DEFAULT_HEARTBEAT
    age = now - _number(state.get("updated"))
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
            last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_number(state.get("updated"))))
            state["detail"] = f"{reason}; last heartbeat {last} on {state.get('host', '?')}"
            state["hint"] = "`gcbundle resume` starts it again, reusing completed apps' checkpoints"
    return state


def _number(value: Any) -> float:
    """A number from ``state.json``, 0 for anything else (the file is ours, but a reader must not crash on it)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else 0.0


def _has_processes(run_id: str) -> bool:
    return bool(run_processes(run_id))


def is_terminal(state: dict[str, Any]) -> bool:
    return state.get("state") in TERMINAL

