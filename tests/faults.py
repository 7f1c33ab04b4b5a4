"""Workflows and helpers for the fault-injection tests and bench/faults.py."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from bundle import api
from bundle.transport.local import LocalTransport
from login_node.procs import run_processes

#: Four cached apps that each leave a marker file per execution, then one app
#: that waits for a release file: a run can be killed while it waits.
CHECKPOINT_WORKFLOW = '''
import os, time
from parsl import python_app

@python_app(cache=True)
def step(i, marks):
    import os, uuid
    open(os.path.join(marks, f"step{i}-{uuid.uuid4().hex}"), "w").close()
    return i * 10

@python_app(cache=True)
def gate(release, total):
    import os, time
    while not os.path.exists(release):
        time.sleep(0.2)
    return total + 1

def main(marks, release):
    values = [step(i, marks).result() for i in range(4)]
    return gate(release, sum(values)).result()
'''


def worker_pid(transport: LocalTransport) -> int | None:
    """The pid of the local transport's worker process, to kill it mid-task (None before its first task)."""
    worker = transport._worker
    return worker.proc.pid if worker is not None else None


def executions(marks: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for p in marks.iterdir():
        i = int(p.name.split("-")[0][4:])
        counts[i] = counts.get(i, 0) + 1
    return counts


def wait_for(predicate, timeout: float = 90.0, poll: float = 0.3, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def start_checkpoint_run(tmp: Path) -> tuple[api.Run, Path, Path]:
    wf_dir = tmp / "wf"
    wf_dir.mkdir(parents=True, exist_ok=True)
    (wf_dir / "workflow.py").write_text(CHECKPOINT_WORKFLOW)
    marks, release = tmp / "marks", tmp / "release"
    marks.mkdir(exist_ok=True)
    run = api.submit(wf_dir / "workflow.py", "local", args={"marks": str(marks), "release": str(release)})
    wait_for(lambda: sum(executions(marks).values()) >= 4 and run.status().get("tasks", {}).get("exec_done", 0) >= 4,
             what="the four cached steps to finish")
    return run, marks, release


def kill_driver(run: api.Run, everything: bool = False) -> None:
    """SIGKILL the driver; with ``everything``, its interchange and workers too (a reboot)."""
    st = run.status()
    os.kill(st["pid"], signal.SIGKILL)
    if everything:
        for pid in run_processes(run.id):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def parsl_processes_under(top: Path) -> list[int]:
    """Parsl's interchanges and worker pools working below ``top``, found by
    their titles and working directories (independently of login_node.procs)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if ("interchange" in title or "process_worker_pool" in title) and cwd.startswith(str(top)):
            found.append(int(entry))
    return found
