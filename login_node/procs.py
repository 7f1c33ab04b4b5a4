"""Finding and stopping every process that belongs to a run.

The driver exports ``GCBUNDLE_RUN_ID`` and every process it starts inherits
it (local workers, launcher wrappers), so ``/proc/*/environ`` finds them even
after they have left the driver's process group. Parsl's interchange renames
itself with setproctitle, which overwrites the memory ``environ`` shows, so a
Parsl process (by its title or command line) is also the run's when its
working directory lies inside the run directory (the driver and everything
it starts work in ``bundle/``). Used
after a cancel, after the DFK's own cleanup and for lost runs, so no orphan
survives a run.
"""
from __future__ import annotations

import os
import signal
import time

from login_node.rundir import Home


def run_processes(run_id: str, exclude: set[int] | None = None) -> list[int]:
    """Pids of this user's processes whose environment carries the run id, or
    whose working directory is inside the run's directory."""
    needle = f"GCBUNDLE_RUN_ID={run_id}".encode()
    run_dir = os.path.realpath(Home.default().run(run_id).root)
    me = os.getuid()
    skip = {os.getpid(), *(exclude or set())}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != me:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0") or (_is_parsl(entry) and _inside(_cwd(entry), run_dir)):
            found.append(int(entry))
    return found


def _is_parsl(pid: str) -> bool:
    """Only Parsl's own processes are matched by directory: a user's shell that
    happens to sit in the run directory is not the run's."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return cmdline.startswith(b"parsl:") or b"process_worker_pool" in cmdline or b"interchange" in cmdline


def _cwd(pid: str) -> str:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
    return cwd[: -len(" (deleted)")] if cwd.endswith(" (deleted)") else cwd


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top + os.sep)


def terminate(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, wait up to ``grace`` seconds, SIGKILL what is left; return the pids that had to be killed."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = list(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _running(p)]
    for pid in left:
        _signal(pid, signal.SIGKILL)
    return left


def sweep(run_id: str, grace: float = 5.0, exclude: set[int] | None = None) -> int:
    """Stop every process of the run except ``exclude``; return how many there were."""
    pids = run_processes(run_id, exclude)
    if pids:
        terminate(pids, grace)
    return len(pids)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False
