"""Shared helpers and fixtures for tests that use the virtual site's schedulers.

``scripts/site.sh`` makes this machine a login node with compute nodes
``cn1``, ``cn2`` (network + UTS namespaces, reached over bridges named
``bond0`` and ``hsn0``); ``scripts/setup_slurm.sh`` runs Slurm over them and
``scripts/setup_pbs.sh`` a real OpenPBS (the open-source PBS Pro), both
started by ``scripts/setup.sh --test``.  Tests that need them fail, and never
skip, when they are not there.

Workers on a compute node cannot reach the login node's 127.0.0.1: the
interchange must listen on an address of the shared links
(``LOGIN_ADDRESS``, on bond0), as on a real site.
"""
from __future__ import annotations

import builtins
import json
import os
import shlex
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
SITE_SCRIPT = TESTS_DIR.parent / "scripts" / "site.sh"
SETUP_HINT = ("run `scripts/setup.sh --test` (it brings up the virtual site: compute nodes cn1 and cn2, "
              "Slurm and OpenPBS over them)")
#: The login node's addresses on the site's two links (scripts/site.sh).
LOGIN_ADDRESS = "10.250.0.1"      # bond0, the interface the polaris profile names
LOGIN_HSN_ADDRESS = "10.251.0.1"  # hsn0, the interface the perlmutter profile names
COMPUTE_NODES = ("cn1", "cn2")
#: Processes that belong on a compute node between runs (the node's daemons).
NODE_DAEMONS = ("sleep", "sshd", "slurmd", "pbs_mom")
CMD_TIMEOUT = 30
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

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
    # Open MPI started over ssh (PBS jobs here: Debian's Open MPI has no PBS
    # support) gives remote ranks only OMPI_* variables; PATH must follow.
    "OMPI_MCA_mca_base_env_list": "PATH",
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
    lines.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in MPI_ENV.items()))
    return "\n".join(lines)


def run(argv: list[str], *, env: dict[str, str] | None = None,
        timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


def site_problem() -> str | None:
    """Why the virtual site (login node + compute nodes) is not up, or None."""
    try:
        st = run(["bash", str(SITE_SCRIPT), "status"], timeout=30)
    except subprocess.TimeoutExpired:
        return "`scripts/site.sh status` timed out"
    if st.returncode != 0:
        return f"the virtual site is not up ({' / '.join(st.stdout.split(chr(10)))})"
    return None


def tools_and_site_problem(tools: Iterable[str]) -> str | None:
    """Which of `tools` is not installed, or why the virtual site is not up, or None."""
    for tool in tools:
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return site_problem()


def slurm_problem() -> str | None:
    """Why the site's Slurm cluster cannot take jobs on every compute node, or None when it can."""
    problem = tools_and_site_problem(("sinfo", "squeue", "sbatch", "scancel", "mpiexec"))
    if problem:
        return problem
    try:
        ping = run(["scontrol", "ping"], timeout=10)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            return f"slurmctld does not answer: {(ping.stdout + ping.stderr).strip()}"
        info = run(["sinfo", "-h", "-N", "-o", "%N %T"])
    except subprocess.TimeoutExpired as exc:
        return f"Slurm command timed out: {exc}"
    states = dict(line.split() for line in info.stdout.splitlines() if len(line.split()) == 2)
    usable = {n for n, s in states.items() if s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")}
    if not set(COMPUTE_NODES) <= usable:
        return f"not every compute node takes jobs (sinfo: {info.stdout.strip() or info.stderr.strip()})"
    return None


def pbs_problem() -> str | None:
    """Why the site's OpenPBS cannot take jobs on every compute node, or None when it can."""
    problem = tools_and_site_problem(("qsub", "qstat", "qdel", "pbsnodes", "mpiexec"))
    if problem:
        return problem
    try:
        server = run(["qstat", "-B"], timeout=20)
        if server.returncode != 0:
            return f"pbs_server does not answer: {(server.stdout + server.stderr).strip()}"
        nodes = run(["pbsnodes", "-a", "-F", "json"], timeout=20)
    except subprocess.TimeoutExpired as exc:
        return f"PBS command timed out: {exc}"
    try:
        states = {n: a.get("state", "") for n, a in json.loads(nodes.stdout).get("nodes", {}).items()}
    except ValueError:
        return f"pbsnodes gave no JSON: {nodes.stdout.strip() or nodes.stderr.strip()}"
    bad = {n: states.get(n, "missing") for n in COMPUTE_NODES
           if states.get(n, "missing") not in ("free", "job-busy", "job-exclusive")}
    if bad:
        return f"PBS nodes not usable: {bad}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The local Slurm cluster answers; fails (not skips) with how to fix it."""
    problem = slurm_problem()
    if problem:
        pytest.fail(f"the local Slurm cluster is not usable: {problem}; {SETUP_HINT}",
                    pytrace=False)


@pytest.fixture(scope="session")
def pbs_cluster() -> None:
    """The site's OpenPBS answers; fails (not skips) with how to fix it."""
    problem = pbs_problem()
    if problem:
        pytest.fail(f"the site's OpenPBS is not usable: {problem}; {SETUP_HINT}", pytrace=False)


@pytest.fixture
def parsl_env(slurm_cluster: None, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory for one Parsl run with the environment's bin/ on PATH.

    Jobs inherit the working directory (SlurmProvider) or are told to go
    there (PBS + `worker_init(cd=...)`), so files that launchers write next
    to the submitter stay inside tmp_path.
    """
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    yield work


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


def poll_until_empty(ask: Callable[[], T], timeout: float, interval: float = 0.5) -> T:
    """Call `ask` until its answer is empty or `timeout` seconds have passed; return the last answer."""
    deadline = time.monotonic() + timeout
    left = ask()
    while left and time.monotonic() < deadline:
        time.sleep(interval)
        left = ask()
    return left


def wait_until_gone(job_ids: Iterable[str], timeout: float = 60.0) -> dict[str, str]:
    """Poll squeue until none of `job_ids` is listed; return what is left."""
    ids = list(job_ids)
    return poll_until_empty(lambda: active_jobs(ids), timeout)


def scancel_quietly(job_ids: Iterable[str]) -> None:
    """Hygiene after a failed test: cancel what it left behind."""
    ids = [j.split(".")[0] for j in job_ids]
    if ids:
        run(["scancel", *ids])


def qstat_jobs(job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`qstat -x -f -F json` of `job_ids` (finished ones included): id -> attributes."""
    ids = list(job_ids)
    if not ids:
        return {}
    out = run(["qstat", "-x", "-f", "-F", "json", *ids])
    assert out.returncode == 0, f"qstat failed: {out.stderr}"
    return cast(dict[str, dict[str, Any]], json.loads(out.stdout).get("Jobs", {}))


def wait_pbs_finished(job_ids: Iterable[str], timeout: float = 60.0) -> dict[str, str]:
    """Poll qstat -x until every one of `job_ids` is F (finished); return the
    states of those that are not."""
    ids = list(job_ids)

    def unfinished() -> dict[str, str]:
        return {j: a.get("job_state", "?") for j, a in qstat_jobs(ids).items() if a.get("job_state") != "F"}

    return poll_until_empty(unfinished, timeout)


def qdel_quietly(job_ids: Iterable[str]) -> None:
    """Hygiene after a failed test: delete what it left behind."""
    ids = list(job_ids)
    if ids:
        run(["qdel", "-W", "force", *ids])


def netns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def node_processes(marker: str | None = None) -> dict[str, list[str]]:
    """Processes on each compute node other than its daemons: node -> command lines;
    with `marker` (a run id, a test's directory), only those whose command
    line or environment contains it (other users' jobs may share the nodes).

    The nodes share this machine's process table, so a process's node is the
    network namespace it lives in (`ip netns pids`)."""
    found: dict[str, list[str]] = {}
    for node in COMPUTE_NODES:
        pids = run(["ip", "netns", "pids", node]).stdout.split()
        for pid in pids:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if comm in NODE_DAEMONS and (comm != "sshd" or "[listener]" in cmdline):
                continue  # a daemon of the node (an sshd session is not)
            if marker is not None:
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
                except OSError:
                    environ = ""
                if marker not in cmdline and marker not in environ:
                    continue
            found.setdefault(node, []).append(f"{pid} {cmdline}")
    return found


def wait_nodes_quiet(marker: str | None = None, timeout: float = 30.0) -> dict[str, list[str]]:
    """Poll until no compute node runs anything (of `marker`) but its daemons; return what is left."""
    return poll_until_empty(lambda: node_processes(marker), timeout)
