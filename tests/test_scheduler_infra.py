"""The scheduler infrastructure itself, with real Parsl and no gcbundle code.

The virtual site (scripts/site.sh): this machine is the login node, the
compute nodes cn1 and cn2 are network namespaces with their own hostnames,
reached over the bridge bond0; Slurm (scripts/setup_slurm.sh) and a real
OpenPBS (scripts/setup_pbs.sh) run over them.

- the site itself: own hostnames and addresses, root ssh between nodes;
- Parsl's SlurmProvider with MpiExecLauncher and with SrunLauncher runs apps
  inside jobs on the compute nodes, and a bash_app runs Open MPI's `mpiexec`
  there;
- Parsl's PBSProProvider with MpiExecLauncher runs a two-node block on the
  real PBS server: apps and ranks on both compute nodes;
- real qsub/qstat/qdel, parsed by PBSProProvider; what PBS says of a job
  that exits non-zero (Exit_status), which Parsl reads as COMPLETED.
Each DFK cleans up its blocks: no job of a test is left in squeue or qstat.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import parsl
import pytest
from parsl.app.app import bash_app, python_app
from parsl.app.errors import BashExitFailure
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.jobs.states import JobState, JobStatus
from parsl.launchers import MpiExecLauncher, SrunLauncher
from parsl.launchers.base import Launcher
from parsl.providers import PBSProProvider, SlurmProvider
from parsl.providers.base import ExecutionProvider

from tests.conftest_scheduler import (
    COMPUTE_NODES,
    DROP_OUTER_MPI_ENV,
    LOGIN_ADDRESS,
    SITE_SCRIPT,
    VENV_BIN,
    detached,
    qdel_quietly,
    qstat_jobs,
    run,
    scancel_quietly,
    wait_nodes_quiet,
    wait_pbs_finished,
    wait_until_gone,
    worker_init,
)

pytestmark = pytest.mark.slurm

APP_TIMEOUT = 180  # seconds for one app result (block start included)
HOST = socket.gethostname().split(".")[0]  # the login node
T = TypeVar("T")


def htex_config(provider: ExecutionProvider, run_dir: Path) -> Config:
    executor = HighThroughputExecutor(
        label="htex",
        address=LOGIN_ADDRESS,  # the login node on bond0: workers run on the compute nodes
        max_workers_per_node=2,
        cores_per_worker=1,
        heartbeat_period=5,
        heartbeat_threshold=30,
        provider=provider,
    )
    # strategy_period=1: the first block is submitted on the first strategy
    # pass, which by default (5 s) is most of the time to the first result.
    return Config(executors=[executor], run_dir=str(run_dir), strategy="simple",
                  strategy_period=1, max_idletime=60, initialize_logging=True)


def slurm_provider(launcher: Launcher, *, exclusive: bool = True) -> SlurmProvider:
    return SlurmProvider(
        partition="debug",
        nodes_per_block=1,
        init_blocks=1,
        min_blocks=0,
        max_blocks=1,
        walltime="00:10:00",
        exclusive=exclusive,
        worker_init=worker_init(),
        launcher=launcher,
    )


def run_workflow(config: Config, body: Callable[[], T]) -> tuple[T, list[str]]:
    """Load a DFK, run `body`, clean up; return its result and the block job ids."""
    job_ids: list[str] = []
    try:
        with parsl.load(config) as dfk:
            result = body()
            job_ids = list(dfk.executors["htex"].provider.resources)
    finally:
        parsl.clear()
    return result, job_ids


def check_cleaned_up(job_ids: list[str]) -> None:
    assert job_ids, "the provider recorded no block job"
    left = wait_until_gone(job_ids, timeout=60)
    if left:
        scancel_quietly(left)
    assert not left, f"jobs still in squeue after the DFK cleaned up: {left}"


def slurm_apps() -> dict[str, Any]:
    @python_app
    @detached
    def slurm_job_id() -> str:
        import os  # a detached app imports what it uses (see `detached`)

        return os.environ["SLURM_JOB_ID"]

    @bash_app
    @detached
    def shell(command: str, stdout: str | None = None, stderr: str | None = None) -> str:
        return command

    return {"job_id": slurm_job_id, "shell": shell}


def shell_run(tmp: Path, apps: dict[str, Any], command: str, tag: str) -> tuple[int, str, str]:
    """Run `command` in a bash_app; its exit code, stdout and stderr."""
    out, err = tmp / f"{tag}.out", tmp / f"{tag}.err"
    try:
        rc = apps["shell"](command, stdout=str(out), stderr=str(err)).result(timeout=APP_TIMEOUT)
    except BashExitFailure as exc:
        rc = exc.exitcode
    return rc, out.read_text(), err.read_text()


def mpi_run(tmp: Path, apps: dict[str, Any], command: str) -> tuple[str, list[str]]:
    """The Slurm job id an app sees, and what `command` (an mpiexec) prints."""
    job_id = apps["job_id"]().result(timeout=APP_TIMEOUT)
    rc, out, err = shell_run(tmp, apps, command, "mpi")
    assert rc == 0, f"{command!r} failed with exit code {rc}: {err}"
    return job_id, out.split()


@pytest.mark.timeout(300)
def test_slurm_provider_with_mpiexec_launcher(parsl_env: Path, tmp_path: Path) -> None:
    provider = slurm_provider(MpiExecLauncher())
    apps = slurm_apps()

    def body() -> tuple[tuple[int, str, str], tuple[str, list[str]]]:
        # The worker itself runs as a rank of Open MPI's mpiexec, so a plain
        # mpiexec in an app is refused; with the outer rank environment
        # dropped it runs.
        plain = shell_run(tmp_path, apps, "mpiexec -n 2 hostname", "plain")
        return plain, mpi_run(tmp_path, apps, DROP_OUTER_MPI_ENV + "mpiexec -n 2 hostname")

    (plain, (job_id, hosts)), job_ids = run_workflow(
        htex_config(provider, tmp_path / "runinfo"), body)
    assert plain[0] != 0 and "does not support recursive calls" in plain[1] + plain[2], plain
    assert job_id.isdigit()
    assert job_id in job_ids, f"app ran in job {job_id}, the provider submitted {job_ids}"
    assert len(hosts) == 2 and len(set(hosts)) == 1 and hosts[0] in COMPUTE_NODES, hosts  # one node's block
    check_cleaned_up(job_ids)


@pytest.mark.timeout(300)
def test_slurm_provider_with_srun_launcher(parsl_env: Path, tmp_path: Path) -> None:
    provider = slurm_provider(SrunLauncher(), exclusive=False)
    apps = slurm_apps()
    (job_id, hosts), job_ids = run_workflow(
        htex_config(provider, tmp_path / "runinfo"),
        lambda: mpi_run(tmp_path, apps, "mpiexec -n 2 hostname"))
    assert job_id in job_ids, f"app ran in job {job_id}, the provider submitted {job_ids}"
    assert len(hosts) == 2 and len(set(hosts)) == 1 and hosts[0] in COMPUTE_NODES, hosts
    check_cleaned_up(job_ids)


def test_the_site_nodes_have_own_names_addresses_and_ssh() -> None:
    """What the rest stands on: each compute node sees its own hostname and
    addresses, reaches the login node on bond0 (not on loopback), and root
    reaches the other node by ssh with the site's host keys."""
    ours = socket.gethostbyname(HOST)
    assert ours == LOGIN_ADDRESS, f"{HOST} resolves to {ours}; PBS needs the bond0 address"
    first, second = COMPUTE_NODES[:2]
    probe = ("import socket; s = socket.create_connection(({addr!r}, 22), timeout=5); "
             "print(socket.gethostname(), s.getsockname()[0])")
    out = run(["bash", str(SITE_SCRIPT), "exec", first, sys.executable, "-c",
               probe.format(addr=socket.gethostbyname(second))])
    assert out.returncode == 0, out.stderr
    name, src = out.stdout.split()
    assert name == first and src == socket.gethostbyname(first)
    ssh = run(["bash", str(SITE_SCRIPT), "exec", first, "ssh", second, "hostname"])
    assert ssh.returncode == 0 and ssh.stdout.strip() == second, ssh.stderr
    # The login node's loopback is not the nodes' loopback.
    loop = run(["bash", str(SITE_SCRIPT), "exec", first, sys.executable, "-c",
                "import socket; socket.create_connection(('127.0.0.1', 6817), timeout=3)"])
    assert loop.returncode != 0


def pbs_provider(**kw: Any) -> PBSProProvider:
    args: dict[str, Any] = dict(
        queue="workq",
        account="gcbundle-test",
        nodes_per_block=1,
        cpus_per_node=1,
        scheduler_options="#PBS -l filesystems=home",
        walltime="00:10:00",
        init_blocks=1,
        min_blocks=0,
        max_blocks=1,
        worker_init=worker_init(cd='"$PBS_O_WORKDIR"'),
        launcher=MpiExecLauncher(),
    )
    return PBSProProvider(**{**args, **kw})


@pytest.mark.timeout(300)
def test_pbspro_provider_runs_a_two_node_block(pbs_cluster: None, parsl_env: Path, tmp_path: Path) -> None:
    """Real OpenPBS: PBSProProvider + MpiExecLauncher, a block of both compute
    nodes (place=scatter); Open MPI starts the second node's manager over the
    site's ssh (Debian's Open MPI has no PBS support)."""
    provider = pbs_provider(nodes_per_block=2, scheduler_options="#PBS -l filesystems=home\n#PBS -l place=scatter",
                            launcher=MpiExecLauncher(bind_cmd="--bind-to", overrides="--map-by ppr:1:node"))

    @python_app
    @detached
    def pbs_view(i: int) -> dict[str, Any]:
        import os  # a detached app imports what it uses (see `detached`)
        import socket
        import time
        time.sleep(0.5)  # keep this worker busy so the others take the rest
        keys = ("PBS_JOBID", "PBS_NODEFILE", "PBS_ENVIRONMENT", "TMPDIR", "PATH")
        return {"host": socket.gethostname(), "cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}}

    def body() -> list[dict[str, Any]]:
        return [f.result(timeout=APP_TIMEOUT) for f in [pbs_view(i) for i in range(8)]]

    views, job_ids = run_workflow(htex_config(provider, tmp_path / "runinfo"), body)
    assert len(job_ids) == 1 and job_ids[0].endswith(f".{HOST}"), job_ids  # PBS ids: <n>.<server>
    assert {v["host"] for v in views} == set(COMPUTE_NODES[:2]), views  # both nodes, not the login node
    for view in views:
        assert view["cwd"] == str(parsl_env) and view["PATH"].startswith(VENV_BIN + ":")
    # The job's own node (mother superior) has the PBS job environment; the
    # other node's manager was started by Open MPI over ssh, which forwards
    # only what its env list names (PATH here).
    mother = {v["host"] for v in views if v["PBS_JOBID"]}
    assert len(mother) == 1, views
    for view in (v for v in views if v["PBS_JOBID"]):
        assert view["PBS_JOBID"] == job_ids[0] and view["PBS_ENVIRONMENT"] == "PBS_BATCH"
        assert sorted(Path(view["PBS_NODEFILE"]).read_text().split()) == sorted(COMPUTE_NODES[:2])
        assert view["TMPDIR"] and view["TMPDIR"].startswith(f"/var/tmp/pbs.{view['PBS_JOBID']}")
    # MpiExecLauncher wrote its deduplicated host file where worker_init went.
    assert list(parsl_env.glob("*.nodes")), "MpiExecLauncher's host file is not in PBS_O_WORKDIR"
    left = wait_pbs_finished(job_ids)
    if left:
        qdel_quietly(left)
    assert not left, f"blocks not finished after the DFK cleaned up: {left}"
    assert wait_nodes_quiet(str(tmp_path)) == {}


def parsed_by_pbspro_provider(job_ids: list[str]) -> dict[str, JobStatus]:
    """Feed real `qstat -x -f -F json` output through PBSProProvider's parser,
    one job per provider (see the multi-id test below for why)."""
    out = {}
    for j in job_ids:
        provider = PBSProProvider(launcher=MpiExecLauncher())
        provider.resources[j] = {"job_id": j, "status": JobStatus(JobState.PENDING),
                                 "job_stdout_path": None, "job_stderr_path": None}
        provider._status()
        out[j] = provider.resources[j]["status"]
    return out


@pytest.mark.timeout(120)
def test_real_pbs_round_trip_and_what_parsl_makes_of_a_failed_job(pbs_cluster: None, parsl_env: Path) -> None:
    """qsub/qstat/qdel on the real server, parsed by PBSProProvider. A job
    that exits non-zero has `Exit_status` in `qstat -x`, and Parsl still calls
    it COMPLETED: gcbundle's driver must read Exit_status itself."""
    script = parsl_env / "job.sh"
    script.write_text("#!/bin/bash\n#PBS -N rt\n#PBS -l select=1:ncpus=1\n"
                      "#PBS -l walltime=00:02:00\n#PBS -j oe\n"
                      "cd \"$PBS_O_WORKDIR\"\n"
                      "echo \"$PBS_JOBID $(hostname) $(wc -l < \"$PBS_NODEFILE\")\"\n"
                      "sleep \"${SLEEP:-0}\"\nexit \"${CODE:-0}\"\n")
    subs = {name: run(["qsub", "-v", env, "-N", name, str(script)])
            for name, env in (("quick", "SLEEP=0"), ("bad", "CODE=3"), ("slow", "SLEEP=120"))}
    assert all(p.returncode == 0 for p in subs.values()), {k: p.stderr for k, p in subs.items()}
    ids = {k: p.stdout.strip() for k, p in subs.items()}
    try:
        deadline = time.monotonic() + 60
        statuses: dict[str, JobStatus] = {}
        while time.monotonic() < deadline:
            statuses = parsed_by_pbspro_provider(list(ids.values()))
            if (statuses[ids["quick"]].terminal and statuses[ids["bad"]].terminal
                    and statuses[ids["slow"]].state == JobState.RUNNING):
                break
            time.sleep(0.5)
        assert statuses[ids["quick"]].state == JobState.COMPLETED, statuses
        assert statuses[ids["slow"]].state == JobState.RUNNING, statuses
        # The gap gcbundle closes: PBS says exit 3, Parsl says COMPLETED.
        assert statuses[ids["bad"]].state == JobState.COMPLETED, statuses
        assert qstat_jobs([ids["bad"]])[ids["bad"]]["Exit_status"] == 3
        output = parsl_env / f"quick.o{ids['quick'].split('.')[0]}"
        job, host, slots = output.read_text().split()
        assert job == ids["quick"] and host in COMPUTE_NODES and slots == "1"

        qdel = run(["qdel", ids["slow"]])
        assert qdel.returncode == 0, qdel.stderr
        assert not wait_pbs_finished([ids["slow"]], timeout=60)
        attrs = qstat_jobs([ids["slow"]])[ids["slow"]]
        assert attrs["job_state"] == "F"  # history: `qstat -x` still knows it
        again = run(["qdel", ids["slow"]])
        assert again.returncode != 0 and "Job has finished" in again.stderr
    finally:
        qdel_quietly([ids["slow"]])


@pytest.mark.timeout(60)
def test_this_openpbs_qstat_json_lists_only_the_first_of_several_jobs(pbs_cluster: None, parsl_env: Path) -> None:
    """A fact of OpenPBS 23.06.06 that gcbundle must live with: `qstat -f -F
    json A B` prints job A only (the text and dsv formats print both), so
    PBSProProvider, which asks about all its blocks in one call, takes every
    block but the first for COMPLETED. If this fails, OpenPBS fixed it."""
    ids = [run(["qsub", "--", "/bin/sleep", "30"]).stdout.strip() for _ in range(2)]
    try:
        assert all(ids), ids
        shown = qstat_jobs(ids)
        assert list(shown) == ids[:1], shown.keys()
        dsv = run(["qstat", "-x", "-f", "-F", "dsv", *ids])
        assert len(dsv.stdout.splitlines()) == 2
    finally:
        qdel_quietly(ids)


def test_qsub_reports_bad_queue(pbs_cluster: None, parsl_env: Path) -> None:
    proc = subprocess.run(["qsub", "-q", "no-such-queue"], input="true\n", capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode != 0
    assert proc.stderr.startswith("qsub: Unknown queue"), proc.stderr
