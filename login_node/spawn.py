"""Starting a run's driver, detached from the task that starts it.

The ``launch`` task runs ``python -m login_node.spawn RUN_DIR``, an
intermediate process that starts the driver (``python -m login_node.driver
RUN_DIR``) in its own session, with stdin closed and stdout/stderr going to
the run directory, prints its pid and exits: the driver is re-parented to
init and never lingers as a zombie of the endpoint's worker, and it outlives
the task (and the endpoint's worker) by design.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from login_node.rundir import RunPaths

#: Seconds the intermediate process may take to start the driver.
SPAWN_TIMEOUT = 60


def driver_env(paths: RunPaths) -> dict[str, str]:
    """The environment of the driver and, through it, of every process of the run."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("GC_TASK_")]:
        env.pop(key)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "/usr/bin:/bin")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(paths.bundle), env.get("PYTHONPATH", "")] if p)
    env["GCBUNDLE_OUTPUT_DIR"] = str(paths.outputs)
    env["GCBUNDLE_RUN_ID"] = paths.run_id
    env["GCBUNDLE_RUN_DIR"] = str(paths.root)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(paths: RunPaths) -> int:
    """Start the driver detached; return its pid."""
    proc = subprocess.run(
        [sys.executable, "-I", "-m", "login_node.spawn", str(paths.root)],
        env=driver_env(paths), cwd=str(paths.bundle), capture_output=True, text=True, timeout=SPAWN_TIMEOUT, check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        lines = (proc.stderr or "no output").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit code {proc.returncode}")
    return int(proc.stdout.strip())


def detach(root: Path) -> int:
    """Start the driver of the run in ``root`` in its own session; return its pid."""
    os.umask(0o077)
    paths = RunPaths(root)
    with open(paths.stdout, "ab") as out, open(paths.stderr, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-u", "-m", "login_node.driver", str(root)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(paths.bundle),
            start_new_session=True, close_fds=True,
        )
    return proc.pid


if __name__ == "__main__":
    print(detach(Path(sys.argv[1])), flush=True)
