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
from tests.conftest_scheduler import (
    COMPUTE_NODES,
    active_jobs,
    qstat_jobs,
    wait_pbs_finished,
    wait_until_gone,
)
from tests.test_driver_env import science_env  # noqa: F401 - the fixture: a second environment, built once

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

LOGIN = socket.gethostname()
#: The slurm profile with the driver in its own job of two nodes, one worker manager per node
#: (Open MPI's way of saying it). No address: the driver runs on a compute node, and Parsl
#: offers the workers every address of that node.
SLURM_BATCH = {"placement": "batch", "partition": "debug", "nodes_per_block": 2,
               "launcher_overrides": "--map-by ppr:1:node", "walltime": "00:10:00", "strategy_period": 1}

WHERE = '''\
from parsl import python_app


@python_app
def where(i):
    import os, socket
    return {"i": i, "slurm": os.environ.get("SLURM_JOB_ID"), "pbs": os.environ.get("PBS_JOBID"),
            "host": socket.gethostname()}


def main(n=4):
    import os, socket
    driver = {"host": socket.gethostname(), "slurm": os.environ.get("SLURM_JOB_ID"), "pbs": os.environ.get("PBS_JOBID")}
    return {"driver": driver, "apps": [f.result() for f in [where(i) for i in range(n)]]}
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


def _cancel_once_running(tmp_path: Path, site: str, params: dict[str, Any]) -> dict[str, str]:
    """Submit SLOW, wait until its driver runs in its job, cancel: the run says cancelled. The driver's job."""
    wf = write_workflow(tmp_path / "wf", SLOW)
    run = api.submit(wf, "local", site=site, params=params)
    job = _driver_job(run)
    deadline = time.monotonic() + 120
    while run.status()["state"] != "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert run.last_state["state"] == "running", run.last_state
    run.cancel()
    assert run.status()["state"] == "cancelled", run.last_state
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
    said = "placement=batch: htex: SlurmProvider -> LocalProvider over the job's 2 node(s)"
    assert said in "".join(run.logs("driver"))
    assert wait_until_gone([job["id"]]) == {}


def test_slurm_cancel_ends_the_driver_and_its_job(tmp_path: Path) -> None:
    job = _cancel_once_running(tmp_path, "slurm", SLURM_BATCH)
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
    assert "the scheduler refused the driver's job" in info.value.message
    assert "nosuchpartition" in info.value.message.lower()
    assert Registry().list(10) == []
    assert [p.name for p in (home / "runs").iterdir()] == []


def test_slurm_resume_of_a_batch_run(tmp_path: Path) -> None:
    """A batch run resumed is a batch run again (its site and parameters are inherited),
    reusing the first one's checkpoints."""
    mark = tmp_path / "fail-after-the-apps"
    mark.touch()
    body = f'''\
import os
from parsl import python_app


@python_app(cache=True)
def square(x):
    return x * x


def main(n=3):
    values = [f.result() for f in [square(i) for i in range(n)]]
    if os.path.exists({str(mark)!r}):
        raise RuntimeError("failing on purpose, after the apps")
    return values
'''
    wf = write_workflow(tmp_path / "wf", body)
    first = api.submit(wf, "local", site="slurm", params={**SLURM_BATCH, "nodes_per_block": 1}, wait=True)
    assert first.last_state["state"] == "failed" and "failing on purpose" in first.last_state["error"]["message"]
    mark.unlink()
    second = api.resume(first.id, wait=True)
    assert second.last_state["state"] == "succeeded", second.last_state
    assert second.last_state.get("placement") == "batch"
    assert second.last_state["driver_job"]["id"] != first.last_state["driver_job"]["id"]
    assert second.result(tmp_path / "res") == [0, 1, 4]
    assert second.last_state["tasks"]["from_checkpoint"] == 3
    assert wait_until_gone([first.last_state["driver_job"]["id"], second.last_state["driver_job"]["id"]]) == {}


#: The pbspro profile with the driver in its own two-node job on the real OpenPBS, one worker
#: manager per node (scattered chunks; Open MPI's spelling of one per node).
PBS_BATCH = {"placement": "batch", "queue": "workq", "account": "gcbundle-test", "cpus_per_node": 1,
             "nodes_per_block": 2, "launcher_overrides": "--map-by ppr:1:node",
             "scheduler_options": "#PBS -l filesystems=home\n#PBS -l place=scatter",
             "walltime": "00:10:00", "strategy_period": 1}


@pytest.mark.usefixtures("pbs_cluster")
def test_pbs_driver_runs_in_its_job_and_uses_the_jobs_nodes(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", WHERE)
    run = api.submit(wf, "local", site="pbspro", params=PBS_BATCH, args={"n": 6})
    job = _driver_job(run)
    assert run.last_state["state"] == "queued" and job["provider"] == "PBSProProvider" and job["cancel"] == "qdel"
    run.wait()
    assert run.last_state["state"] == "succeeded", run.last_state
    value = run.result(tmp_path / "res")
    assert value["driver"]["pbs"] == job["id"] and value["driver"]["host"] in COMPUTE_NODES
    hosts = {a["host"] for a in value["apps"]}
    assert hosts <= set(COMPUTE_NODES) and LOGIN not in hosts
    # no block job: the workers are in the driver's job
    assert {a["pbs"] for a in value["apps"] if a["pbs"]} <= {job["id"]}
    assert wait_pbs_finished([job["id"]]) == {}  # the job ended with its driver
    assert qstat_jobs([job["id"]])[job["id"]]["job_state"] == "F"


@pytest.mark.usefixtures("pbs_cluster")
def test_pbs_cancel_ends_the_driver_and_its_job(tmp_path: Path) -> None:
    job = _cancel_once_running(tmp_path, "pbspro", PBS_BATCH)
    assert wait_pbs_finished([job["id"]]) == {}


SCIENCE = '''\
from parsl import python_app


@python_app
def where():
    import os, socket, sys
    import parsl, six
    return {"python": sys.executable, "parsl": parsl.__version__, "job": os.environ.get("SLURM_JOB_ID"),
            "host": socket.gethostname()}


def main():
    import os, sys
    import parsl, six
    return {"driver": {"python": sys.executable, "parsl": parsl.__version__, "job": os.environ.get("SLURM_JOB_ID")},
            "worker": where().result()}
'''


def test_slurm_batch_driver_in_the_users_environment(tmp_path: Path, science_env: Path) -> None:  # noqa: F811 - a pytest fixture
    """placement=batch and driver_init together: the job runs the user's environment's lines
    before the driver, and the workers in the job use that environment too."""
    wf = write_workflow(tmp_path / "wf", SCIENCE)
    params = {**SLURM_BATCH, "nodes_per_block": 1, "driver_init": f"source {science_env}/bin/activate"}
    run = api.submit(wf, "local", site="slurm", params=params, wait=True)
    assert run.last_state["state"] == "succeeded", run.last_state
    value = run.result(tmp_path / "res")
    job = run.last_state["driver_job"]["id"]
    for side in ("driver", "worker"):
        assert value[side]["python"].startswith(str(science_env)) and value[side]["parsl"] == "2026.07.27", value
        assert value[side]["job"] == job
    assert wait_until_gone([job]) == {}
