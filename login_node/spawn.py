"""Starting a run's driver, detached from the task that starts it.

The ``launch`` task runs ``python -m login_node.spawn RUN_DIR``, an
intermediate process that starts the driver (``python -m login_node.driver
RUN_DIR``) in its own session, with stdin closed and stdout/stderr going to
the run directory, prints its pid and exits: the driver is re-parented to
init and never lingers as a zombie of the endpoint's worker, and it outlives
the task (and the endpoint's worker) by design. With a ``driver_init`` in the
run's plan (``login_node.driverenv``) the driver starts in the user's
environment, after those lines.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bundle import prelude
from login_node import driverenv
from login_node.rundir import RunPaths, read_json

#: Seconds the intermediate process may take to start the driver.
SPAWN_TIMEOUT = 60


def run_python() -> str:
    """The interpreter a run is started with: this one, its directory's symlinks
    resolved. The Ansible role installs versioned environments behind a stable
    symlink; a run keeps the environment it started in (its driver, interchange
    and every later batch job) even when an upgrade moves the symlink."""
    exe = Path(sys.executable)
    return str(exe.parent.resolve() / exe.name)


def driver_env(paths: RunPaths) -> dict[str, str]:
    """The environment of the driver and, through it, of every process of the run."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("GC_TASK_")]:
        env.pop(key)
    bindir = str(Path(run_python()).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "/usr/bin:/bin")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(paths.bundle), env.get("PYTHONPATH", "")] if p)
    env["GCBUNDLE_OUTPUT_DIR"] = str(paths.outputs)
    env["GCBUNDLE_RUN_ID"] = paths.run_id
    env["GCBUNDLE_RUN_DIR"] = str(paths.root)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(paths: RunPaths) -> int:
    """Start the driver detached; return its pid."""
    env = driver_env(paths)
    if plan(paths).get("driver_init"):
        env = driverenv.env_for(paths, env)
    proc = subprocess.run(
        [run_python(), "-I", "-m", "login_node.spawn", str(paths.root)],
        env=env, cwd=str(paths.bundle), capture_output=True, text=True, timeout=SPAWN_TIMEOUT, check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        lines = (proc.stderr or "no output").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit code {proc.returncode}")
    return int(proc.stdout.strip())


def plan(paths: RunPaths) -> dict[str, Any]:
    """The run's driver plan (``login_node.driverenv``), {} for a run launched before plans."""
    try:
        return read_json(paths.driver_plan)
    except (OSError, ValueError):
        return {}


def detach(root: Path) -> int:
    """Start the driver of the run in ``root`` in its own session; return its pid."""
    os.umask(0o077)
    paths = RunPaths(root)
    run_plan = plan(paths)
    argv = [sys.executable, "-I", "-u", "-m", "login_node.driver", str(root)]
    if run_plan.get("driver_init"):
        # The user's environment, as its own lines make it (see login_node.driverenv).
        text = prelude.driver_in_user_env(run_plan["driver_init"], run_plan["lib"], str(root))
        argv = [shutil.which("bash") or "/bin/bash", "-c", text]
    with open(paths.stdout, "ab") as out, open(paths.stderr, "ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(paths.bundle),
            start_new_session=True, close_fds=True,
        )
    return proc.pid


if __name__ == "__main__":
    print(detach(Path(sys.argv[1])), flush=True)
