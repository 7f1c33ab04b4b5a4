"""``placement: batch``: the driver inside one batch job, on the virtual site's
real Slurm and OpenPBS (compute nodes cn1 and cn2, scripts/site.sh).

The launch task submits the driver's job with the site profile's provider;
the driver runs on the job's first node (a compute node, another hostname
than this login node) and its DFK starts workers on the job's nodes with
MpiExecLauncher, no further job. Apps return the job id and host they saw;
status, logs, results and cancel go through the local endpoint as for any
run; after each run no job is left in the scheduler.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from bundle import api
from bundle.errors import SiteProfileError
from bundle.registry import Registry
from tests.conftest import write_workflow
from tests.conftest_scheduler import active_jobs, wait_until_gone

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

LOGIN = socket.gethostname()
SLURM_BATCH = {"placement": "batch", "partition": "debug", "nodes_per_block": 2, "walltime": "00:10:00", "strategy_period": 1}

WHERE = '''\
from parsl import python_app


@python_app
def where(i):
    import os, socket
    return {"i": i, "slurm": os.environ.get("SLURM_JOB_ID"), "pbs": os.environ.get("PBS_JOBID"), "host": socket.gethostname()}


def main(n=4):
    import os, socket
    return {"driver": {"host": socket.gethostname(), "slurm": os.environ.get("SLURM_JOB_ID"), "pbs": os.environ.get("PBS_JOBID")},
            "apps": [f.result() for f in [where(i) for i in range(n)]]}
'''

SLOW = '''\
from parsl import python_app


@python_app
def nap(i):
    import time
    time.sleep(300)
    return i


def main(n=2):
    return [f.result() for f in [nap(i) for i in range(n)]]
'''


def _driver_job(run: Any) -> dict[str, str]:
    job = run.last_state.get("driver_job") or run.status().get("driver_job")
    assert job, run.last_state
    return job


def test_slurm_driver_runs_in_its_job_and_uses_the_jobs_nodes(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", WHERE)
    run = api.submit(wf, "local", site="slurm", params=SLURM_BATCH, args={"n": 4})
    assert run.last_state["state"] == "queued" and run.last_state["placement"] == "batch"
    job = _driver_job(run)
    assert job["provider"] == "SlurmProvider" and job["cancel"] == "scancel"
    run.wait()
    assert run.last_state["state"] == "succeeded", run.last_state
    value = run.result(tmp_path / "res")
    assert value["driver"]["slurm"] == job["id"] and value["driver"]["host"] != LOGIN
    assert {a["slurm"] for a in value["apps"]} == {job["id"]}  # no further job: the workers are in the driver's job
    assert all(a["host"] != LOGIN for a in value["apps"])
    assert run.last_state["host"] == value["driver"]["host"]
    assert "placement=batch: htex: SlurmProvider -> LocalProvider over the job's 2 node(s)" in "".join(run.logs("driver"))
    assert wait_until_gone([job["id"]]) == {}


def test_slurm_cancel_ends_the_driver_and_its_job(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", SLOW)
    run = api.submit(wf, "local", site="slurm", params=SLURM_BATCH)
    job = _driver_job(run)
    deadline = time.monotonic() + 120
    while run.status()["state"] != "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert run.last_state["state"] == "running", run.last_state
    run.cancel()
    assert run.status()["state"] == "cancelled", run.last_state
    assert wait_until_gone([job["id"]]) == {}


def test_slurm_cancel_while_queued(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    params = {**SLURM_BATCH, "scheduler_options": "#SBATCH --begin=now+1hour"}
    run = api.submit(wf, "local", site="slurm", params=params)
    job = _driver_job(run)
    assert active_jobs([job["id"]]), "the job should wait in the queue"
    run.cancel()
    st = run.status()
    assert st["state"] == "cancelled" and "queued" in st.get("detail", ""), st
    assert wait_until_gone([job["id"]]) == {}


def test_slurm_job_that_ends_before_its_driver_fails_the_run(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    params = {**SLURM_BATCH, "worker_init": "echo 'no module named science' >&2; exit 7"}
    run = api.submit(wf, "local", site="slurm", params=params)
    job = _driver_job(run)
    assert wait_until_gone([job["id"]]) == {}
    st = run.status()
    assert st["state"] == "failed", st
    assert "the driver's batch job ended before the driver started" in st["error"]["message"]
    assert "no module named science" in st["error"]["message"]


def test_a_refused_driver_job_leaves_nothing(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    with pytest.raises(SiteProfileError) as info:
        api.submit(wf, "local", site="slurm", params={**SLURM_BATCH, "partition": "nosuchpartition"})
    assert "the scheduler refused the driver's job" in info.value.message and "nosuchpartition" in info.value.message.lower()
    assert Registry().list(10) == []
    assert [p.name for p in (home / "runs").iterdir()] == []


def test_slurm_resume_of_a_batch_run(tmp_path: Path) -> None:
    """A batch run resumed is a batch run again, reusing the first one's checkpoints."""
    body = '''\
from parsl import python_app


@python_app(cache=True)
def square(x):
    return x * x


def main(n=3, fail=False):
    values = [f.result() for f in [square(i) for i in range(n)]]
    if fail:
        raise RuntimeError("failing on purpose, after the apps")
    return values
'''
    wf = write_workflow(tmp_path / "wf", body)
    first = api.submit(wf, "local", site="slurm", params=SLURM_BATCH, args={"fail": True}, wait=True)
    assert first.last_state["state"] == "failed"
    second = api.resume(first.id, args={"fail": False}, wait=True)
    assert second.last_state["state"] == "succeeded", second.last_state
    assert second.last_state.get("placement") == "batch" and second.result(tmp_path / "res") == [0, 1, 4]
    assert second.last_state["tasks"]["from_checkpoint"] == 3
