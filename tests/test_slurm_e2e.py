"""Bundles through the local endpoint onto the real local Slurm cluster.

The site profiles are the built-in `slurm` (SlurmProvider with
MpiExecLauncher, or SrunLauncher) and `perlmutter`; the login node is this
machine and the compute nodes are the virtual site's cn1 and cn2
(scripts/site.sh, scripts/setup_slurm.sh), which reach the login node only on
its bond0/hsn0 addresses. Apps return the SLURM_JOB_ID and hostname they see,
so they observably ran inside the block jobs the driver recorded, on compute
nodes; after every run, successful, failed or cancelled, no block is left in
squeue and no process of the run is left on any node.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundle import api, profiles, render
from bundle.cli import main
from bundle.registry import Registry
from login_node.blocks import cancel_blocks
from login_node.procs import run_processes
from tests.conftest import EXAMPLES, write_workflow
from tests.conftest_scheduler import (
    COMPUTE_NODES,
    LOGIN_ADDRESS,
    SITE_SCRIPT,
    active_jobs,
    poll_until_empty,
    scancel_quietly,
    wait_nodes_quiet,
    wait_until_gone,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

#: The profile's parameters for this machine: the debug partition, workers
#: connect back to the login node's bond0 address, one scaling pass per
#: second (a trivial app then takes ~2 s instead of ~7 s with Parsl's default
#: 5 s period).
FAST = {"partition": "debug", "address": LOGIN_ADDRESS, "strategy_period": 1, "walltime": "00:10:00"}
#: Two nodes per block, one manager per node (Open MPI's way of saying it).
TWO_NODES = {**FAST, "nodes_per_block": 2, "launcher_overrides": "--map-by ppr:1:node"}
#: The perlmutter profile as NERSC documents it; only what this machine lacks
#: is overridden: 2 CPUs per node, not 256 hardware threads.
PERLMUTTER_HERE = {"account": "m0000", "srun_overrides": "-c 2", "nodes_per_block": 2, "strategy_period": 1,
                   "walltime": "00:10:00"}

WHERE = '''\
import os
import socket

from parsl import python_app


@python_app
def where(i):
    import os, socket, sys, time
    import parsl
    time.sleep(0.3)  # keep this worker busy so that others take the rest
    return {"i": i, "job": os.environ.get("SLURM_JOB_ID"), "step": os.environ.get("SLURM_STEP_ID"),
            "host": socket.gethostname(), "cwd": os.getcwd(), "tmpdir": os.environ.get("TMPDIR"),
            "python": sys.executable, "parsl": parsl.__version__,
            "ompi_root": os.environ.get("OMPI_ALLOW_RUN_AS_ROOT"), "run": os.environ.get("GCBUNDLE_RUN_ID")}


def main(n=3):
    return [f.result() for f in [where(i) for i in range(n)]]
'''

SLOW = '''\
from parsl import python_app


@python_app
def slow(seconds):
    import os, time
    job = os.environ.get("SLURM_JOB_ID")
    open(os.path.join(os.environ["GCBUNDLE_OUTPUT_DIR"], f"started-{job}-{os.getpid()}"), "w").close()
    time.sleep(seconds)
    return job


def main(seconds=600):
    return [f.result() for f in [slow(seconds) for _ in range(2)]]
'''


def job_ids(st: dict[str, Any]) -> list[str]:
    return list(st.get("scheduler_job_ids") or [])


def assert_nothing_left(run_id: str, ids: list[str]) -> None:
    left = wait_until_gone(ids, timeout=60)
    if left:
        scancel_quietly(left)
    assert not left, f"blocks still in squeue after the run ended: {left}"
    assert no_processes_left(run_id) == [], "a process of the run is still alive"
    assert wait_nodes_quiet(run_id) == {}, "a process of the run is left on a compute node"


def no_processes_left(run_id: str, timeout: float = 20) -> list[int]:
    """The run's processes still alive once the driver had time to exit (it
    writes the final state, then stops what is left, within a few seconds)."""
    return poll_until_empty(lambda: run_processes(run_id), timeout, interval=0.2)


def wait_for_state(run: api.Run, wanted: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st = run.status()
    while st.get("state") != wanted and time.monotonic() < deadline:
        assert st.get("state") not in api.TERMINAL, st
        time.sleep(0.5)
        st = run.status()
    assert st.get("state") == wanted, st
    return st


def run_where(tmp_path: Path, params: dict[str, Any], n: int, site: str = "slurm") -> tuple[api.Run, list[str], float]:
    """Submit WHERE (`n` apps) and wait for it to succeed: the run, its block job ids, and the
    seconds from submit to result."""
    wf = write_workflow(tmp_path / "wf", WHERE)
    t0 = time.monotonic()
    run = api.submit(wf, "local", site=site, params=params, args={"n": n}, wait=True)
    elapsed = time.monotonic() - t0
    assert run.last_state["state"] == "succeeded", run.last_state
    return run, job_ids(run.last_state), elapsed


def wait_both_apps_running(run: api.Run, home: Path) -> Path:
    """Wait until the run is running and both apps of SLOW have started inside a block; the run's outputs."""
    wait_for_state(run, "running")
    outputs = home / "runs" / run.id / "outputs"
    deadline = time.monotonic() + 120
    while len(list(outputs.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    return outputs


@pytest.mark.timeout(300)
def test_mpiexec_launcher_apps_run_inside_slurm_jobs(tmp_path: Path, home: Path) -> None:
    import parsl

    run, ids, elapsed = run_where(tmp_path, FAST, 3)
    assert ids and all(i.isdigit() for i in ids), run.last_state
    value = run.result(tmp_path / "res")
    assert [v["i"] for v in value] == [0, 1, 2]
    for v in value:
        assert v["job"] in ids, f"app ran in job {v['job']}, the driver recorded {ids}"
        assert v["step"] is None  # mpiexec started the workers, not srun
        assert v["host"] in COMPUTE_NODES  # not the login node
        assert v["run"] == run.id and v["cwd"] == str(home / "runs" / run.id / "bundle")
        assert v["python"] == sys.executable and v["parsl"] == parsl.__version__
        assert v["tmpdir"] and Path(v["tmpdir"]).is_dir()
        assert v["ompi_root"] == ("1" if os.geteuid() == 0 else None)
    report = json.loads((tmp_path / "res" / run.id / "report.json").read_text())
    assert sorted(report["scheduler_job_ids"].values()) == sorted(ids) and "SlurmProvider" in report["config"]
    assert_nothing_left(run.id, ids)
    print(f"\nslurm+MpiExecLauncher: 3 trivial apps, submit to result {elapsed:.1f} s")


def test_the_rendered_script_is_the_one_submitted(tmp_path: Path, home: Path) -> None:
    """`gcbundle render` shows exactly what the driver gave sbatch, run-time values aside."""
    run, ids, _ = run_where(tmp_path, FAST, 1)
    submit_scripts = home / "runs" / run.id / "runinfo" / "000" / "submit_scripts"
    scripts = [p for p in submit_scripts.glob("parsl.htex.block-0.*") if not p.name.endswith((".stdout", ".stderr"))]
    assert len(scripts) == 1, scripts
    real = scripts[0].read_text()
    real = re.sub(r"parsl\.htex\.block-0\.\d+\.\d+", "parsl.htex.block-0.<time>", real)
    real = re.sub(r"--port=\d+", "--port=<port>", real)
    shown = render.render(profiles.load("slurm"), FAST).scripts[0].script
    shown = re.sub(r"'(<[^']*)'", r"\1", shown)  # placeholders are quoted; the real, plain paths are not
    shown = (shown.replace("<run_id>", run.id).replace("<run>", str(home / "runs" / run.id))
             .replace("<env>/bin", str(Path(sys.executable).parent)))
    assert real == shown
    assert_nothing_left(run.id, ids)


@pytest.mark.timeout(300)
def test_srun_launcher_apps_run_in_a_job_step(tmp_path: Path) -> None:
    run, ids, _ = run_where(tmp_path, {**FAST, "launcher": "SrunLauncher", "exclusive": False}, 2)
    value = run.result(tmp_path / "res")
    for v in value:
        assert v["job"] in ids and v["step"] is not None  # a step of the block job: srun started the workers
    assert_nothing_left(run.id, ids)


@pytest.mark.timeout(300)
def test_two_node_block_with_mpiexec_runs_apps_on_both_nodes(tmp_path: Path) -> None:
    run, ids, elapsed = run_where(tmp_path, TWO_NODES, 12)
    value = run.result(tmp_path / "res")
    assert {v["host"] for v in value} == set(COMPUTE_NODES[:2]), value  # both, and not the login node
    assert {v["job"] for v in value} <= set(ids)
    # Open MPI started the second node's manager through srun (a step of the
    # block), its own node's directly.
    assert {v["step"] is None for v in value} == {True, False}
    assert_nothing_left(run.id, ids)
    print(f"\nslurm+MpiExecLauncher, 2 nodes: 12 apps, submit to result {elapsed:.1f} s")


@pytest.mark.timeout(300)
def test_perlmutter_profile_srun_over_hsn0_on_two_nodes(tmp_path: Path) -> None:
    """The perlmutter profile: `--constraint cpu`, its QOS, an account, srun
    starting one manager per node, and the interchange on the login node's
    hsn0 address (address_by_interface, resolved on the login node)."""
    run, ids, _ = run_where(tmp_path, PERLMUTTER_HERE, 12, site="perlmutter")
    value = run.result(tmp_path / "res")
    assert {v["host"] for v in value} == set(COMPUTE_NODES[:2]), value
    assert all(v["job"] in ids and v["step"] is not None for v in value)  # steps of the block: srun
    report = json.loads((tmp_path / "res" / run.id / "report.json").read_text())
    assert "constraint='cpu'" in report["config"] and "account='m0000'" in report["config"]
    assert "address='10.251.0.1'" in report["config"]  # address_by_interface('hsn0'), on the login node
    assert_nothing_left(run.id, ids)


@pytest.mark.timeout(600)
def test_cancel_running_slurm_workflows_three_times(tmp_path: Path, home: Path) -> None:
    """Cancel with apps running in a block, three runs in a row (issue 6): each
    time the state is `cancelled`, squeue holds none of its jobs and no
    process of the run survives; a second cancel only says it had ended."""
    wf = write_workflow(tmp_path / "wf", SLOW)
    runner = CliRunner()
    for attempt in range(3):
        run = api.submit(wf, "local", site="slurm", params=FAST, args={"seconds": 600})
        outputs = wait_both_apps_running(run, home)
        st = run.status()
        ids = job_ids(st)
        started = {p.name.split("-")[1] for p in outputs.glob("started-*")}
        assert len(list(outputs.glob("started-*"))) == 2 and started <= set(ids), f"attempt {attempt}: {started} {st}"
        assert set(active_jobs(ids).values()) == {"RUNNING"}, f"attempt {attempt}: no block running: {st}"
        res = runner.invoke(main, ["cancel", run.id, "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["data"]["state"]["state"] == "cancelled"
        assert_nothing_left(run.id, ids)
        again = runner.invoke(main, ["cancel", run.id, "--json"])
        assert again.exit_code == 0 and json.loads(again.stdout)["data"]["already"] is True


@pytest.mark.timeout(300)
def test_bad_partition_fails_the_run_with_the_schedulers_message(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", WHERE)
    runner = CliRunner()
    sets = [f"--set={k}={v}" for k, v in {**FAST, "partition": "nosuchpartition"}.items()]
    res = runner.invoke(main, ["submit", str(wf), "--site", "slurm", *sets, "--wait", "--json"])
    assert res.exit_code != 0
    run_id = Registry().list(1)[0].run_id
    assert f"run {run_id} failed" in json.loads(res.stdout)["errors"][0]["message"]
    res = runner.invoke(main, ["status", run_id, "--json"])
    st = json.loads(res.stdout)["data"]
    assert st["state"] == "failed"
    assert "invalid partition specified: nosuchpartition" in st["error"]["message"], st["error"]
    assert st["error"]["message"].startswith("the scheduler could not start a block of executor htex: sbatch: error:")
    assert no_processes_left(run_id) == []


@pytest.mark.timeout(300)
def test_bad_partition_fails_a_workflow_that_does_not_wait_on_its_apps(tmp_path: Path) -> None:
    """Parsl only logs the refusal and fails the futures: the driver notices
    and ends the run, with the scheduler's words, within a few heartbeats."""
    wf = write_workflow(tmp_path / "wf", (
        "import time\nfrom parsl import python_app\n\n@python_app\ndef one():\n    return 1\n\n"
        "def main():\n    one()\n    time.sleep(600)\n    return 'not reached'\n"))
    t0 = time.monotonic()
    run = api.submit(wf, "local", site="slurm", params={**FAST, "partition": "nosuchpartition"}, wait=True)
    st = run.last_state
    assert st["state"] == "failed", st
    assert "invalid partition specified: nosuchpartition" in st["error"]["message"]
    assert time.monotonic() - t0 < 60
    assert no_processes_left(run.id) == []


@pytest.mark.timeout(300)
def test_slurm_example_runs(tmp_path: Path) -> None:
    run = api.submit(EXAMPLES / "slurm" / "workflow.py", "local", site="slurm", params=FAST, args={"n": 4}, wait=True)
    assert run.last_state["state"] == "succeeded", run.last_state
    value = run.result(tmp_path / "res")
    assert value["jobs"] and set(value["jobs"]) <= set(job_ids(run.last_state))
    assert value["squares"] == [i * i for i in range(4)]
    assert_nothing_left(run.id, job_ids(run.last_state))


@pytest.mark.timeout(120)
def test_driver_cancels_the_jobs_the_dfk_left(tmp_path: Path) -> None:
    """After a scheduler failure Parsl's cleanup skips scale-in (the executor is
    in a bad state): the driver then cancels, through the provider, every job
    it submitted and has not seen end."""
    from parsl.launchers import SimpleLauncher
    from parsl.providers import SlurmProvider

    provider = SlurmProvider(partition="debug", walltime="00:05:00", exclusive=False, launcher=SimpleLauncher())
    provider.script_dir = str(tmp_path)
    job = provider.submit("sleep 600", 1, "gcbundle-test-left-behind")
    try:
        assert active_jobs([job]), "the job did not reach squeue"
        cancel_blocks([provider])  # what the driver does with its providers on every end
        assert not wait_until_gone([job], timeout=30)
        assert provider.resources[job]["status"].terminal
    finally:
        scancel_quietly([job])


@pytest.mark.timeout(300)
def test_cancel_that_must_kill_the_driver_still_cancels_its_jobs(tmp_path: Path, home: Path) -> None:
    """With no grace the cancel task SIGKILLs the driver before its DFK can
    scale in; the batch jobs the driver recorded in state.json are then
    cancelled by the task itself (scancel), so nothing is left in squeue."""
    wf = write_workflow(tmp_path / "wf", SLOW)
    run = api.submit(wf, "local", site="slurm", params=FAST, args={"seconds": 600})
    wait_both_apps_running(run, home)
    time.sleep(1.5)  # one more heartbeat: the job ids are in state.json
    ids = job_ids(run.status())
    assert ids and set(active_jobs(ids).values()) == {"RUNNING"}
    reply = run.cancel(grace=0)
    assert reply["escalated"] >= 1 and reply["state"]["state"] == "cancelled"
    assert_nothing_left(run.id, ids)
    # Cancelled by the scheduler, not merely ended because a process sweep on
    # the login node reached the workers (on a real cluster it cannot).
    for job in ids:
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
        assert "JobState=CANCELLED" in shown, shown


@pytest.mark.timeout(300)
def test_a_block_that_exits_non_zero_fails_the_run_saying_which_job_and_why(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", WHERE)
    run = api.submit(wf, "local", site="slurm", params={**FAST, "worker_init": "exit 3"}, args={"n": 1}, wait=True)
    st = run.last_state
    assert st["state"] == "failed", st
    [job] = job_ids(st)
    [died] = st["block_failures"]
    assert died["job"] == job and died["scheduler_state"] == "FAILED" and died["exit_code"] == "3:0"
    assert died["why"].startswith(f"Slurm job {job} FAILED, reason NonZeroExitCode, exit code 3:0, on cn"), died
    res = CliRunner().invoke(main, ["status", run.id])
    assert f"died     {job}: Slurm job {job} FAILED, reason NonZeroExitCode" in res.stdout, res.stdout
    assert_nothing_left(run.id, [job])


@pytest.mark.timeout(420)
def test_a_compute_node_that_goes_away_mid_run_fails_the_run_saying_which_job_and_why(tmp_path: Path,
                                                                                      home: Path) -> None:
    """The node running the block crashes (scripts/site.sh kill-node: every
    process on it killed, its links down). Slurm marks the node down after
    SlurmdTimeout and ends the job NODE_FAIL; the run does not hang: it fails,
    and `status` names the job and Slurm's reason. The node is brought back
    afterwards (setup_slurm.sh, setup_pbs.sh)."""
    wf = write_workflow(tmp_path / "wf", SLOW)
    run = api.submit(wf, "local", site="slurm", params=FAST, args={"seconds": 600})
    node = None
    try:
        wait_both_apps_running(run, home)
        time.sleep(1.5)  # one more heartbeat: the job id is in state.json
        [job] = job_ids(run.status())
        squeue = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, timeout=30)
        node = squeue.stdout.strip()
        assert node in COMPUTE_NODES, node
        down = subprocess.run(["bash", str(SITE_SCRIPT), "kill-node", node], capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        st = run.wait(timeout=300)
        assert st["state"] == "failed", st
        [died] = st["block_failures"]
        assert died["job"] == job and died["scheduler_state"] == "NODE_FAIL", died
        assert died["why"].startswith(f"Slurm job {job} NODE_FAIL, reason NodeDown") and node in died["why"], died
        res = CliRunner().invoke(main, ["status", run.id])
        assert f"died     {job}: Slurm job {job} NODE_FAIL" in res.stdout, res.stdout
        assert not wait_until_gone([job], timeout=60)
        assert no_processes_left(run.id) == []
    finally:
        if node:  # bring the node back, with its daemons
            for script in ("setup_slurm.sh", "setup_pbs.sh"):
                subprocess.run(["bash", str(SITE_SCRIPT.parent / script)], capture_output=True, timeout=300,
                               check=False)
