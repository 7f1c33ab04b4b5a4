"""PBS Pro end to end, through a STAND-IN for the PBS Pro command line.

No PBS Pro server can be installed on the test machines. `tests/pbs_standin/`
provides `qsub`, `qstat -x -f -F json` and `qdel` in PBS Pro's shapes on top
of the local Slurm cluster (it is not PBS Pro). With it first on PATH (the
local endpoint's worker, and so the driver, inherit this process's
environment), Parsl's real PBSProProvider with MpiExecLauncher submits the
blocks, polls them, runs the apps on the nodes of $PBS_NODEFILE and cancels
them. The exact `#PBS` scripts are in tests/test_render.py.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundle import api
from bundle.cli import main
from login_node.procs import run_processes
from tests.conftest import EXAMPLES, write_workflow
from tests.conftest_scheduler import scancel_quietly, wait_until_gone

pytestmark = [pytest.mark.slurm]

HOST = socket.gethostname().split(".")[0]
STANDIN = {"address": "127.0.0.1", "strategy_period": 1, "walltime": "00:10:00", "queue": "debug", "account": "gcbundle-test",
           "cpus_per_node": 2, "select_options": "mpiprocs=2", "scheduler_options": "#PBS -l filesystems=home"}
#: The Polaris profile's parameters that this two-core machine cannot honour; everything else stays.
POLARIS_HERE = {"account": "gcbundle-test", "ifname": "lo", "bind_cmd": "--bind-to", "mpi_overrides": "",
                "cpus_per_node": 2, "select_options": "mpiprocs=2", "strategy_period": 1,
                "cpu_affinity": "alternating"}  # ALCF's list names cores 0-63; this machine has two

VIEW = '''\
from parsl import python_app


@python_app
def view(seconds=0):
    import os, time
    with open(os.environ["PBS_NODEFILE"]) as f:
        nodes = f.read().split()
    out = os.environ["GCBUNDLE_OUTPUT_DIR"]
    open(os.path.join(out, f"started-{os.environ['PBS_JOBID']}-{os.getpid()}"), "w").close()
    time.sleep(seconds)
    keys = ("PBS_JOBID", "PBS_ENVIRONMENT", "SLURM_JOB_ID", "TMPDIR", "GCBUNDLE_RUN_ID")
    return {"nodes": nodes, "cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}}


def main(n=1, seconds=0):
    return [f.result() for f in [view(seconds) for _ in range(n)]]
'''


def qstat_states(job_ids: list[str]) -> dict[str, str]:
    proc = subprocess.run(["qstat", "-x", "-f", "-F", "json", *job_ids], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return {j: a["job_state"] for j, a in json.loads(proc.stdout)["Jobs"].items()}


def finished(run_id: str, ids: list[str]) -> None:
    """No block left in qstat (all F) nor in squeue underneath, no process of the run left."""
    left = wait_until_gone(ids, timeout=60)
    if left:
        scancel_quietly(left)
    assert not left, f"blocks still queued after the run ended: {left}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(qstat_states(ids).values()) != {"F"}:
        time.sleep(0.5)
    assert set(qstat_states(ids).values()) == {"F"}
    deadline = time.monotonic() + 20
    while run_processes(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_processes(run_id) == []


@pytest.mark.timeout(300)
def test_pbspro_provider_runs_apps_on_the_nodefile(pbs_standin: Path, tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "wf", VIEW)
    run = api.submit(wf, "local", site="pbspro", params=STANDIN, args={"n": 2}, wait=True)
    st = run.last_state
    assert st["state"] == "succeeded", st
    ids = st["scheduler_job_ids"]
    assert ids and all(j.endswith(f".{HOST}") for j in ids), ids  # PBS Pro ids: <n>.<server>
    for v in run.result(tmp_path / "res"):
        assert v["PBS_JOBID"] in ids and v["PBS_ENVIRONMENT"] == "PBS_BATCH"
        assert v["SLURM_JOB_ID"] == v["PBS_JOBID"].split(".")[0]  # the stand-in's Slurm job underneath
        assert v["nodes"] == [HOST, HOST]  # one line per rank slot (mpiprocs=2)
        # PBS jobs inherit no environment and start in $HOME: the prelude set all of it
        assert v["cwd"] == str(home / "runs" / run.id / "bundle") and v["GCBUNDLE_RUN_ID"] == run.id
        assert v["TMPDIR"] and v["TMPDIR"].startswith(f"/tmp/pbs.{v['PBS_JOBID']}.")
    # MpiExecLauncher's host file went where the prelude's cd went.
    assert list((home / "runs" / run.id / "bundle").glob("parsl.htex.block-*.nodes"))
    finished(run.id, ids)


@pytest.mark.timeout(300)
def test_cancel_through_the_standin_deletes_the_blocks(pbs_standin: Path, tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "wf", VIEW)
    run = api.submit(wf, "local", site="pbspro", params=STANDIN, args={"n": 2, "seconds": 600})
    outputs = home / "runs" / run.id / "outputs"
    deadline = time.monotonic() + 120
    while len(list(outputs.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    st = run.status()
    ids = st["scheduler_job_ids"]
    assert len(list(outputs.glob("started-*"))) == 2 and ids, st
    assert set(qstat_states(ids).values()) == {"R"}
    res = CliRunner().invoke(main, ["cancel", run.id, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data"]["state"]["state"] == "cancelled"
    finished(run.id, ids)


@pytest.mark.timeout(300)
def test_unknown_queue_fails_the_run_with_qsubs_message(pbs_standin: Path, tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", VIEW)
    run = api.submit(wf, "local", site="pbspro", params={**STANDIN, "queue": "nosuchqueue"}, wait=True)
    st: dict[str, Any] = run.last_state
    assert st["state"] == "failed", st
    assert st["error"]["message"].startswith("the scheduler could not start a block of executor htex: qsub: Unknown queue"), st["error"]
    deadline = time.monotonic() + 20
    while run_processes(run.id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_processes(run.id) == []


@pytest.mark.timeout(300)
def test_polaris_example_through_the_standin(pbs_standin: Path, tmp_path: Path) -> None:
    """The seed scenario: the Polaris profile as ALCF documents it, only what
    this machine cannot honour overridden (see examples/polaris/README.md)."""
    run = api.submit(EXAMPLES / "polaris" / "workflow.py", "local", site="polaris", params=POLARIS_HERE, args={"n": 8}, wait=True)
    st = run.last_state
    assert st["state"] == "succeeded", st
    value = run.result(tmp_path / "res")
    assert value["tasks"] == 8 and value["hosts"] == [HOST]
    # one worker per accelerator, as on Polaris: each app saw one CUDA_VISIBLE_DEVICES of four
    assert value["gpus"] and set(value["gpus"]) <= {"0", "1", "2", "3"}
    assert value["jobs"] and set(value["jobs"]) <= set(st["scheduler_job_ids"])
    nodes = (tmp_path / "res" / run.id / "outputs" / "nodes.txt").read_text()
    assert nodes.startswith(f"job {value['jobs'][0]}: {HOST}")
    report = json.loads((tmp_path / "res" / run.id / "report.json").read_text())
    assert "scheduler_options='#PBS -l filesystems=home:eagle'" in report["config"] and "queue='debug'" in report["config"]
    finished(run.id, st["scheduler_job_ids"])
