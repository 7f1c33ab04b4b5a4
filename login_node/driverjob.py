"""The login node's side of ``placement: batch`` (see ``bundle.placement``): submit
the driver's job, tell whether a queued job still waits, and end it.

The job is submitted by the launch task with the site profile's own Parsl
provider; the run's state is then ``queued`` with ``driver_job`` (provider,
job id, cancel command) until the driver starts inside the job and writes
``starting``. A queued run has no heartbeat: the ``status`` task asks the
scheduler instead, and a job that ended before its driver started makes the
run ``failed`` with what the job wrote to its stderr.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bundle import placement, prelude, profiles
from login_node import state
from login_node.rundir import Home, RunPaths

#: Seconds a scheduler query may take.
QUERY_TIMEOUT = 30


def submit(home: Home, paths: RunPaths, plan: dict[str, Any], site_worker_init: str) -> dict[str, Any]:
    """Submit the run's driver job; write and return the ``queued`` state."""
    rendered = plan["rendered"]
    node = placement.batch_provider_node(rendered)
    provider = profiles._build(node, "provider", "driver job")
    script_dir = paths.root / "driver-job"
    script_dir.mkdir(mode=0o700, exist_ok=True)
    worker_init = "\n".join(x for x in (site_worker_init.strip(), str(node.get("worker_init") or "").strip()) if x)
    placement.driver_job_provider(provider, worker_init + "\n" if worker_init else "", str(script_dir))
    if plan.get("driver_init"):
        python_lines = prelude.driver_in_user_env(plan["driver_init"], plan["lib"], str(paths.root))
    else:
        # The endpoint's environment, first on PATH as on the login node: HTEX starts interchange.py from PATH.
        bindir = shlex.quote(str(Path(sys.executable).parent))
        python = shlex.quote(sys.executable)
        python_lines = (f'export PATH={bindir}:"$PATH"\n'
                        f"exec {python} -I -u -m login_node.driver {shlex.quote(str(paths.root))}\n")
    exports = {k: v for k, v in os.environ.items() if k in ("GCBUNDLE_HEARTBEAT_SECONDS",)}
    command = placement.job_command(run_dir=str(paths.root), bundle_dir=str(paths.bundle), home=str(home.root),
                                    run_id=paths.run_id, exports=exports, python_lines=python_lines)
    job_id = placement.submit(provider, command, paths.run_id)
    kind = type(provider).__name__
    st = state.read_raw(paths)
    st.update(state="queued", placement="batch", queued=time.time(),
              driver_job={"provider": kind, "id": job_id, "cancel": placement.CANCEL[kind]})
    state.write(paths, st)
    return st


def job_gone(job: dict[str, Any]) -> str | None:
    """None while the scheduler still holds the driver's job; else what it says of it."""
    kind, job_id = job.get("provider"), str(job.get("id") or "")
    if kind == "SlurmProvider":
        argv = ["squeue", "-h", "-j", job_id, "-o", "%T"]
    else:
        argv = ["qstat", "-x", "-f", "-F", "json", job_id]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None  # cannot tell: keep waiting
    if kind == "SlurmProvider":
        said = proc.stdout.strip()
        if proc.returncode == 0 and said:
            return None
        return f"job {job_id} is no longer in squeue"
    try:
        data = json.loads(proc.stdout or "{}")
    except ValueError:
        return None
    info = (data.get("Jobs") or {}).get(job_id) or next(iter((data.get("Jobs") or {}).values()), None)
    if info is None:
        return f"job {job_id} is unknown to qstat" if proc.returncode != 0 else None
    if info.get("job_state") in ("F", "X"):
        return f"job {job_id} finished (Exit_status {info.get('Exit_status', '?')})"
    return None


def check_queued(paths: RunPaths, st: dict[str, Any]) -> dict[str, Any]:
    """A queued run whose job ended before its driver wrote a state: ``failed``, with the job's words."""
    job = st.get("driver_job") or {}
    if st.get("state") != "queued" or not job:
        return st
    gone = job_gone(job)
    if gone is None:
        return st
    fresh = state.read_raw(paths)
    if fresh.get("state") != "queued":  # the driver started meanwhile
        return state.effective(paths)
    tail = _stderr_tail(paths)
    message = f"the driver's batch job ended before the driver started: {gone}" + (f": {tail}" if tail else "")
    fresh.update(state="failed", finished=time.time(),
                 error={"type": "SchedulerError", "message": message,
                        "hint": "see `gcbundle logs RUN --name stderr` and the job's own output "
                                "in the run's driver-job/ folder"})
    if paths.cancel_marker.exists():
        fresh.update(state="cancelled", error=None, detail=f"cancel requested; {gone}")
    state.write(paths, fresh)
    return fresh


def _stderr_tail(paths: RunPaths) -> str:
    lines: list[str] = []
    for f in [paths.stderr, *sorted((paths.root / "driver-job").glob("*.stderr"))]:
        try:
            lines += [line.strip() for line in Path(f).read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            continue
    return lines[-1] if lines else ""


def cancel(st: dict[str, Any]) -> bool:
    """End the driver's job with the scheduler's own command; whether it was asked."""
    job = st.get("driver_job") or {}
    command = placement.CANCEL.get(str(job.get("provider")))
    job_id = str(job.get("id") or "")
    plain_id = job_id.replace(".", "").replace("-", "").replace("[", "").replace("]", "")
    if not command or not plain_id.isalnum() or not shutil.which(command):
        return False
    subprocess.run([command, job_id], capture_output=True, timeout=QUERY_TIMEOUT, check=False)
    return True
