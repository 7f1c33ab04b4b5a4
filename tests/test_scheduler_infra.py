"""The scheduler infrastructure itself, with real Parsl and no gcbundle code.

- Parsl's SlurmProvider with MpiExecLauncher and with SrunLauncher runs apps
  inside jobs of the local Slurm cluster (scripts/setup_slurm.sh), and a
  bash_app runs Open MPI's `mpiexec` there;
- Parsl's PBSProProvider with MpiExecLauncher runs apps through
  tests/pbs_standin: a TEST STAND-IN for the PBS Pro command line (qsub,
  qstat, qdel) on top of that Slurm, because no PBS Pro server can be
  installed here;
- the stand-in's `qstat -f -F json` text is what PBSProProvider parses.
Each DFK cleans up its blocks: no job of a test is left in squeue.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
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
    DROP_OUTER_MPI_ENV,
    PBS_STANDIN_DIR,
    detached,
    run,
    scancel_quietly,
    wait_until_gone,
    worker_init,
)

pytestmark = pytest.mark.slurm

APP_TIMEOUT = 180  # seconds for one app result (block start included)
HOST = socket.gethostname().split(".")[0]
T = TypeVar("T")


def htex_config(provider: ExecutionProvider, run_dir: Path) -> Config:
    executor = HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
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
        import os
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
    assert hosts == [HOST, HOST]
    check_cleaned_up(job_ids)


@pytest.mark.timeout(300)
def test_slurm_provider_with_srun_launcher(parsl_env: Path, tmp_path: Path) -> None:
    provider = slurm_provider(SrunLauncher(), exclusive=False)
    apps = slurm_apps()
    (job_id, hosts), job_ids = run_workflow(
        htex_config(provider, tmp_path / "runinfo"),
        lambda: mpi_run(tmp_path, apps, "mpiexec -n 2 hostname"))
    assert job_id in job_ids, f"app ran in job {job_id}, the provider submitted {job_ids}"
    assert hosts == [HOST, HOST]
    check_cleaned_up(job_ids)


@pytest.mark.timeout(300)
def test_pbspro_provider_through_the_standin(pbs_standin: Path, parsl_env: Path,
                                             tmp_path: Path) -> None:
    """PBSProProvider + MpiExecLauncher through the PBS Pro CLI TEST STAND-IN."""
    provider = PBSProProvider(
        queue="debug",
        account="gcbundle-test",
        nodes_per_block=1,
        cpus_per_node=2,
        select_options="mpiprocs=2",
        scheduler_options="#PBS -l filesystems=home\n#PBS -l place=scatter",
        walltime="00:10:00",
        init_blocks=1,
        min_blocks=0,
        max_blocks=1,
        worker_init=worker_init(cd='"$PBS_O_WORKDIR"'),
        launcher=MpiExecLauncher(),
    )

    @python_app
    @detached
    def pbs_view() -> dict[str, Any]:
        import os
        with open(os.environ["PBS_NODEFILE"]) as f:
            nodes = f.read().split()
        keys = ("PBS_JOBID", "PBS_O_WORKDIR", "PBS_ENVIRONMENT", "SLURM_JOB_ID", "TMPDIR")
        return {"nodes": nodes, "cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}}

    view, job_ids = run_workflow(htex_config(provider, tmp_path / "runinfo"),
                                 lambda: pbs_view().result(timeout=APP_TIMEOUT))
    assert job_ids and all(j.endswith(f".{HOST}") for j in job_ids), job_ids
    assert view["PBS_JOBID"] in job_ids
    assert view["SLURM_JOB_ID"] == view["PBS_JOBID"].split(".")[0]
    assert view["nodes"] == [HOST, HOST]  # one line per rank slot (mpiprocs=2)
    assert view["PBS_O_WORKDIR"] == str(parsl_env)
    assert view["cwd"] == str(parsl_env)
    assert view["PBS_ENVIRONMENT"] == "PBS_BATCH"
    assert view["TMPDIR"] and view["TMPDIR"].startswith(f"/tmp/pbs.{view['PBS_JOBID']}.")
    # MpiExecLauncher wrote its deduplicated host file where worker_init went.
    assert list(parsl_env.glob("*.nodes")), "MpiExecLauncher's host file is not in PBS_O_WORKDIR"
    check_cleaned_up(job_ids)
    # The cancelled block is history that `qstat -x` still reports.
    qstat = run(["qstat", "-x", "-f", "-F", "json", *job_ids])
    assert qstat.returncode == 0, qstat.stderr
    states = {j: a["job_state"] for j, a in json.loads(qstat.stdout)["Jobs"].items()}
    assert states == {j: "F" for j in job_ids}


# ------------------------------------------------- the stand-in's qstat text

def load_pbs_cli() -> ModuleType:
    """The stand-in's module (it is a script directory, not a package)."""
    name = "pbs_standin_cli"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PBS_STANDIN_DIR / "pbs_cli.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC (the PBS time stamps are local time)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


# Slurm jobs as `squeue --json` (Slurm 22.05) gives them, trimmed to the
# fields the stand-in reads.
T0 = 1_700_000_000
RUNNING_JOB = {
    "job_id": 41, "name": "parsl.pbspro.1700000000.5", "user_name": "alice",
    "job_state": "RUNNING", "state_reason": "None", "partition": "debug",
    "submit_time": T0, "eligible_time": T0, "start_time": T0 + 2, "end_time": T0 + 602,
    "cpus": 2, "node_count": 1, "batch_host": "node1", "exit_code": 0,
    "standard_output": "/home/alice/run/x.stdout", "standard_error": "/home/alice/run/x.stderr",
    "current_working_directory": "/home/alice/run",
    "job_resources": {"allocated_nodes": [{"nodename": "node1"}]},
    "comment": 'pbs-standin:{"q":"debug","rl":{"ncpus":2,"nodect":1,"place":"free",'
               '"select":"1:ncpus=2","walltime":"00:10:00"},"j":"n","m":"n",'
               '"P":"_pbs_project_default","r":"True","h":"n",'
               '"a":"-q debug -A proj /home/alice/run/x"}',
}

EXPECTED_RUNNING_JSON = """{
    "timestamp":1700000062,
    "pbs_version":"2022.1.0 (stand-in on Slurm)",
    "pbs_server":"srv",
    "Jobs":{
        "41.srv":{
            "Job_Name":"parsl.pbspro.1700000000.5",
            "Job_Owner":"alice@srv",
            "resources_used":{
                "ncpus":2,
                "walltime":"00:01:00"
            },
            "job_state":"R",
            "queue":"debug",
            "server":"srv",
            "Checkpoint":"u",
            "ctime":"Tue Nov 14 22:13:20 2023",
            "Error_Path":"srv:/home/alice/run/x.stderr",
            "exec_host":"node1/0*2",
            "exec_vnode":"(node1:ncpus=2)",
            "Hold_Types":"n",
            "Join_Path":"n",
            "Keep_Files":"n",
            "Mail_Points":"n",
            "mtime":"Tue Nov 14 22:14:22 2023",
            "Output_Path":"srv:/home/alice/run/x.stdout",
            "Priority":0,
            "qtime":"Tue Nov 14 22:13:20 2023",
            "Rerunable":"True",
            "Resource_List":{
                "ncpus":2,
                "nodect":1,
                "place":"free",
                "select":"1:ncpus=2",
                "walltime":"00:10:00"
            },
            "stime":"Tue Nov 14 22:13:22 2023",
            "substate":42,
            "Variable_List":{
                "PBS_O_QUEUE":"debug",
                "PBS_O_WORKDIR":"/home/alice/run",
                "PBS_O_HOST":"srv"
            },
            "comment":"Job run at Tue Nov 14 22:13:22 2023 on (node1:ncpus=2)",
            "etime":"Tue Nov 14 22:13:20 2023",
            "run_count":1,
            "Submit_arguments":"-q debug -A proj /home/alice/run/x",
            "project":"_pbs_project_default",
            "Submit_Host":"srv"
        }
    }
}"""


def test_standin_qstat_json_exact_text(utc: None) -> None:
    cli = load_pbs_cli()
    jobs = {"41.srv": cli.pbs_job(RUNNING_JOB, "srv", T0 + 62)}
    assert cli.qstat_json(jobs, "srv", T0 + 62) == EXPECTED_RUNNING_JSON


def variant(**changes: Any) -> dict[str, Any]:
    job = dict(RUNNING_JOB)
    job.update(changes)
    return job


# Slurm state -> (PBS letter, what PBSProProvider makes of it, Exit_status)
STATE_CASES = {
    "42": (variant(job_id=42, job_state="PENDING", state_reason="Resources", batch_host="",
                   start_time=0, job_resources=None), "Q", JobState.PENDING, None),
    "43": (variant(job_id=43, job_state="PENDING", state_reason="JobHeldUser", batch_host="",
                   start_time=0, job_resources=None), "H", JobState.HELD, None),
    "44": (variant(job_id=44), "R", JobState.RUNNING, None),
    "45": (variant(job_id=45, job_state="COMPLETING"), "E", JobState.COMPLETED, None),
    "46": (variant(job_id=46, job_state="COMPLETED"), "F", JobState.COMPLETED, 0),
    "47": (variant(job_id=47, job_state="FAILED", exit_code=3 << 8), "F", JobState.COMPLETED, 3),
    "48": (variant(job_id=48, job_state="CANCELLED", exit_code=15), "F", JobState.COMPLETED, 271),
    "49": (variant(job_id=49, job_state="TIMEOUT"), "F", JobState.COMPLETED, -29),
    "50": (variant(job_id=50, job_state="CANCELLED", batch_host="", job_resources=None),
           "F", JobState.COMPLETED, None),
    "51": (variant(job_id=51, job_state="SUSPENDED"), "S", JobState.HELD, None),
}


def parsed_by_pbspro_provider(stdout: str, job_ids: list[str]) -> dict[str, JobStatus]:
    """Run PBSProProvider's own status parsing on `stdout` as qstat's answer."""
    provider = PBSProProvider()
    provider.resources = {
        j: {"job_id": j, "status": JobStatus(JobState.UNKNOWN),
            "job_stdout_path": f"/tmp/{j}.out", "job_stderr_path": f"/tmp/{j}.err"}
        for j in job_ids}
    calls: list[str] = []

    def execute_wait(cmd: str, timeout: int | None = None) -> tuple[int, str, str]:
        calls.append(cmd)
        return 0, stdout, ""

    provider.execute_wait = execute_wait  # type: ignore[method-assign]
    provider._status()
    assert calls == [f"qstat -x -f -F json {' '.join(job_ids)}"]
    return {j: r["status"] for j, r in provider.resources.items()}


def test_standin_qstat_states_parse_with_pbspro_provider(utc: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBS_SERVER", "srv")
    cli = load_pbs_cli()
    source = [case[0] for case in STATE_CASES.values()]
    out, err = io.StringIO(), io.StringIO()
    ids = [f"{sid}.srv" for sid in STATE_CASES]
    code = cli.qstat_main(["-x", "-f", "-F", "json", *ids], jobs_source=source,
                          now=T0 + 62, out=out, err=err)
    assert code == 0 and not err.getvalue()
    text = out.getvalue()
    doc = json.loads(text)
    assert doc["pbs_server"] == "srv"
    for sid, (_, letter, _, exit_status) in STATE_CASES.items():
        attrs = doc["Jobs"][f"{sid}.srv"]
        assert attrs["job_state"] == letter, sid
        assert attrs.get("Exit_status") == exit_status, sid
    # PBSProProvider keeps the ids qsub printed; qstat answers with the same.
    ids = list(doc["Jobs"])
    statuses = parsed_by_pbspro_provider(text, ids)
    for sid, (_, _, state, _) in STATE_CASES.items():
        assert statuses[f"{sid}.srv"].state == state, sid


def test_standin_qstat_without_x_refuses_finished_jobs(utc: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBS_SERVER", "srv")
    cli = load_pbs_cli()
    out, err = io.StringIO(), io.StringIO()
    finished = variant(job_id=46, job_state="COMPLETED")
    code = cli.qstat_main(["-f", "-F", "json", "46.srv", "99.srv"], jobs_source=[finished],
                          now=T0, out=out, err=err)
    assert code == 153  # PBS Pro's exit status for an unknown job id
    assert err.getvalue() == (
        "qstat: 46.srv Job has finished, use -x or -H to obtain historical job information\n"
        "qstat: Unknown Job Id 99.srv\n")
    assert "Jobs" not in json.loads(out.getvalue())


@pytest.mark.timeout(120)
def test_standin_round_trip_with_real_jobs(pbs_standin: Path, parsl_env: Path) -> None:
    """Real qsub/qstat/qdel against Slurm, parsed by PBSProProvider."""
    script = parsl_env / "job.sh"
    script.write_text("#!/bin/bash\n#PBS -N standin-rt\n#PBS -l select=1:ncpus=1\n"
                      "#PBS -l walltime=00:02:00\n#PBS -j oe\n"
                      "echo \"$PBS_JOBID $(wc -l < \"$PBS_NODEFILE\")\"\n"
                      "sleep \"${SLEEP:-0}\"\n")
    quick = run(["qsub", "-v", "SLEEP=0", str(script)])
    slow = run(["qsub", "-v", "SLEEP=120", "-N", "standin-slow", str(script)])
    assert quick.returncode == 0 and slow.returncode == 0, quick.stderr + slow.stderr
    quick_id, slow_id = quick.stdout.strip(), slow.stdout.strip()
    try:
        deadline = time.monotonic() + 60
        statuses: dict[str, JobStatus] = {}
        while time.monotonic() < deadline:
            q = run(["qstat", "-x", "-f", "-F", "json", quick_id, slow_id])
            assert q.returncode == 0, q.stderr
            statuses = parsed_by_pbspro_provider(q.stdout, [quick_id, slow_id])
            if (statuses[quick_id].state == JobState.COMPLETED
                    and statuses[slow_id].state == JobState.RUNNING):
                break
            time.sleep(0.5)
        assert statuses[quick_id].state == JobState.COMPLETED, statuses
        assert statuses[slow_id].state == JobState.RUNNING, statuses
        output = parsl_env / f"standin-rt.o{quick_id.split('.')[0]}"
        assert output.read_text().split() == [quick_id, "1"]

        qdel = run(["qdel", slow_id])
        assert qdel.returncode == 0, qdel.stderr
        assert not wait_until_gone([slow_id], timeout=30)
        q = run(["qstat", "-x", "-f", "-F", "json", slow_id])
        attrs = json.loads(q.stdout)["Jobs"][slow_id]
        assert attrs["job_state"] == "F" and attrs["Exit_status"] == 271  # 256 + SIGTERM
        again = run(["qdel", slow_id])
        assert again.returncode == 35 and "Job has finished" in again.stderr
    finally:
        scancel_quietly([slow_id])


def test_standin_qsub_reports_bad_queue(pbs_standin: Path, parsl_env: Path) -> None:
    proc = subprocess.run(["qsub", "-q", "no-such-queue"], input="true\n", capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 170
    assert proc.stderr.startswith("qsub: Unknown queue")
