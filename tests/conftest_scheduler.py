"""Shared helpers and fixtures for tests that use the local Slurm cluster.

The cluster is installed and started by ``scripts/setup_slurm.sh`` (which
``scripts/setup.sh --test`` runs).  Tests that need it fail, and never skip,
when it is not there.

PBS Pro: no PBS Pro server can be installed on the test machines, so
``tests/pbs_standin/`` holds a stand-in for its command line (``qsub``,
``qstat``, ``qdel``) that runs jobs on this Slurm cluster.
"""
from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

TESTS_DIR = Path(__file__).resolve().parent
PBS_STANDIN_DIR = TESTS_DIR / "pbs_standin"
SETUP_HINT = "run `scripts/setup.sh --test` (it installs and starts the local Slurm cluster)"
CMD_TIMEOUT = 30
F = TypeVar("F", bound=Callable[..., Any])

# The bin/ of the environment running the tests (not resolved: a venv's
# python is a symlink to the base interpreter).  HTEX starts `interchange.py`
# from PATH on the submitting side and `process_worker_pool.py` in the job.
VENV_BIN = str(Path(sys.executable).parent)

# Open MPI 4.1 refuses to run as root without these, and refuses more ranks
# than the slots Slurm granted (ntasks) without oversubscription.  Harmless
# for other users.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}

# An HTEX worker started by MpiExecLauncher is itself an Open MPI rank: its
# environment carries OMPI_*/PMIX_* variables from the outer mpiexec, and an
# `mpiexec` run from an app then stops with "mpiexec does not support
# recursive calls".  Apps that call mpiexec drop those variables first (and
# keep the ones set on purpose in MPI_ENV).  Bash.
DROP_OUTER_MPI_ENV = (
    "unset $(compgen -e | grep -E '^(OMPI|PMIX)_' "
    "| grep -vxE 'OMPI_ALLOW_RUN_AS_ROOT|OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"
    "|OMPI_MCA_rmaps_base_oversubscribe'); "
)


def detached(fn: F) -> F:
    """`fn` with globals of its own, for use as a Parsl app defined in a test.

    dill pickles a function whose globals are an importable module's by
    reference to that module, and HTEX workers cannot import test modules.
    With private globals it travels by value; it must import what it uses.
    """
    clean = types.FunctionType(fn.__code__, {"__name__": "gcbundle_test_app",
                                             "__builtins__": builtins},
                               fn.__name__, fn.__defaults__, fn.__closure__)
    clean.__kwdefaults__ = fn.__kwdefaults__
    clean.__doc__ = fn.__doc__
    return cast(F, clean)


def worker_init(*, cd: str | None = None) -> str:
    """A provider `worker_init` for jobs on the local cluster.

    Puts this environment's bin/ first on PATH (same Python and Parsl as the
    submitting side) and exports the Open MPI settings; `cd` (a shell word,
    e.g. '"$PBS_O_WORKDIR"') changes directory first, so that
    MpiExecLauncher's `$JOBNAME.nodes` file lands there and not in $HOME.
    """
    lines = []
    if cd:
        lines.append(f"cd {cd}")
    lines.append(f"export PATH={VENV_BIN}:$PATH")
    lines.append("export " + " ".join(f"{k}={v}" for k, v in MPI_ENV.items()))
    return "\n".join(lines)


def run(argv: list[str], *, env: dict[str, str] | None = None,
        timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


def slurm_problem() -> str | None:
    """Why the local Slurm cluster cannot take jobs, or None when it can."""
    for tool in ("sinfo", "squeue", "sbatch", "scancel", "mpiexec"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        ping = run(["scontrol", "ping"], timeout=10)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            return f"slurmctld does not answer: {(ping.stdout + ping.stderr).strip()}"
        info = run(["sinfo", "-h", "-N", "-o", "%N %T"])
    except subprocess.TimeoutExpired as exc:
        return f"Slurm command timed out: {exc}"
    states = [line.split()[1] for line in info.stdout.splitlines() if len(line.split()) == 2]
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no node takes jobs (sinfo: {info.stdout.strip() or info.stderr.strip()})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The local Slurm cluster answers; fails (not skips) with how to fix it."""
    problem = slurm_problem()
    if problem:
        pytest.fail(f"the local Slurm cluster is not usable: {problem}; {SETUP_HINT}",
                    pytrace=False)


@pytest.fixture
def parsl_env(slurm_cluster: None, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory for one Parsl run with the environment's bin/ on PATH.

    Jobs inherit the working directory (SlurmProvider) or are told to go
    there (PBS stand-in + `worker_init(cd=...)`), so files that launchers
    write next to the submitter stay inside tmp_path.
    """
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    yield work


@pytest.fixture
def pbs_standin(parsl_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The PBS Pro CLI stand-in (`qsub`, `qstat`, `qdel`) first on PATH."""
    monkeypatch.setenv("PATH", f"{PBS_STANDIN_DIR}{os.pathsep}{os.environ['PATH']}")
    return PBS_STANDIN_DIR


def active_jobs(job_ids: Iterable[str]) -> dict[str, str]:
    """Those of `job_ids` (Slurm ids, or PBS ids `N.server`) that squeue still
    lists as pending, running, completing, ... -> their state."""
    wanted = {j.split(".")[0] for j in job_ids}
    out = run(["squeue", "-h", "-o", "%i %T"])
    assert out.returncode == 0, f"squeue failed: {out.stderr}"
    found = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in wanted:
            found[parts[0]] = parts[1]
    return found


def wait_until_gone(job_ids: Iterable[str], timeout: float = 60.0) -> dict[str, str]:
    """Poll squeue until none of `job_ids` is listed; return what is left."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    left = active_jobs(ids)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = active_jobs(ids)
    return left


def scancel_quietly(job_ids: Iterable[str]) -> None:
    """Hygiene after a failed test: cancel what it left behind."""
    ids = [j.split(".")[0] for j in job_ids]
    if ids:
        run(["scancel", *ids])
