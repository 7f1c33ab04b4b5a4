"""PBS Pro end to end, on a real OpenPBS server (the open-source PBS Pro).

scripts/setup_pbs.sh builds OpenPBS and runs pbs_server on the login node
(this machine) and a pbs_mom on each compute node of the virtual site
(scripts/site.sh: cn1, cn2, network namespaces with their own hostnames,
reached over the bridge `bond0`). Bundles go through the local endpoint;
Parsl's real PBSProProvider with MpiExecLauncher submits the blocks with
`qsub`, polls `qstat -x -f -F json`, cancels with `qdel`; workers on the
compute nodes reach the interchange at the login node's hsn0 address, which
the polaris profile finds with `address_by_interface("hsn0")` as on Polaris
(the generic pbspro profile is given the bond0 address).

Debian's Open MPI has no PBS (tm) support: in a two-node block it starts the
second node's manager over ssh (keys and host keys made by scripts/site.sh).
"""
from __future__ import annotations

import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundle import api, profiles, render
from bundle.cli import main
from login_node.procs import run_processes
from tests.conftest import EXAMPLES, write_workflow
from tests.conftest_scheduler import (
    COMPUTE_NODES,
    LOGIN_ADDRESS,
    LOGIN_HSN_ADDRESS,
    poll_until_empty,
    qdel_quietly,
    qstat_jobs,
    wait_nodes_quiet,
    wait_pbs_finished,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("pbs_cluster")]

SERVER = socket.gethostname().split(".")[0]
#: The generic pbspro profile here: one CPU per chunk, workers connect back
#: to the login node's bond0 address, one scaling pass per second.
PBSPRO = {"address": LOGIN_ADDRESS, "strategy_period": 1, "walltime": "00:10:00", "queue": "workq",
          "account": "gcbundle-test", "cpus_per_node": 1, "scheduler_options": "#PBS -l filesystems=home"}
#: Two nodes per block, one manager per node (Open MPI's spelling of it).
PBSPRO_TWO = {**PBSPRO, "nodes_per_block": 2, "launcher_overrides": "--map-by ppr:1:node",
              "scheduler_options": "#PBS -l filesystems=home\n#PBS -l place=scatter"}
#: The Polaris profile's parameters that this machine cannot honour; everything
#: else stays as ALCF documents it (queue debug, `#PBS -l filesystems=home:eagle`,
#: address_by_interface("hsn0"), one worker per GPU): an account, 2 CPUs per
#: node and no GPUs to select, Open MPI's mpiexec instead of Cray MPICH's
#: (`--bind-to` for `--cpu-bind`, no `--depth=64 --ppn 1`).
POLARIS_HERE = {"account": "gcbundle-test", "bind_cmd": "--bind-to", "mpi_overrides": "",
                "cpus_per_node": 2, "select_options": "mpiprocs=1", "strategy_period": 1,
                "cpu_affinity": "alternating"}  # ALCF's list names cores 0-63; this machine has two

VIEW = '''\
from parsl import python_app


@python_app
def view(seconds=0):
    import os, socket, time
    out = os.environ["GCBUNDLE_OUTPUT_DIR"]
    job = os.environ.get("PBS_JOBID")
    open(os.path.join(out, f"started-{job}-{socket.gethostname()}-{os.getpid()}"), "w").close()
    time.sleep(seconds)
    script = None
    if job:  # the job script as the mom runs it: what qsub sent the server
        path = f"/var/spool/pbs-{socket.gethostname()}/mom_priv/jobs/{job}.SC"
        if os.path.exists(path):
            script = open(path).read()
    keys = ("PBS_JOBID", "PBS_ENVIRONMENT", "PBS_NODEFILE", "TMPDIR", "GCBUNDLE_RUN_ID")
    return {"host": socket.gethostname(), "cwd": os.getcwd(), "script": script,
            **{k: os.environ.get(k) for k in keys}}


def main(n=1, seconds=0):
    return [f.result() for f in [view(seconds) for _ in range(n)]]
'''

#: A multi-stage workflow: a helper package and a data file shipped in the
#: bundle, python, bash and join apps, and a final python app that joins.
MULTI = '''\
import os

from parsl import bash_app, join_app, python_app

from siteprobe import scale

GCBUNDLE_INCLUDE = ["data/inputs.txt"]


@python_app
def probe(x):
    from siteprobe import scale, where
    return {**where(), "value": scale(x)}


@bash_app
def count(path, stdout=None):
    return f'echo "$PBS_JOBID $(hostname) $(wc -w < {path})"'


@join_app
def fan_out(xs):
    return [probe(x) for x in xs]


@python_app
def total(parts):
    return sum(p["value"] for p in parts)


def main():
    with open("data/inputs.txt") as f:
        xs = [int(w) for w in f.read().split()]
    out = os.environ["GCBUNDLE_OUTPUT_DIR"]
    counted = count(os.path.abspath("data/inputs.txt"), stdout=os.path.join(out, "count.txt"))
    parts = fan_out(xs)
    result = {"total": total(parts).result(), "parts": parts.result(), "expected": scale(sum(xs))}
    counted.result()
    return result
'''
SITEPROBE = '''\
"""A helper package: packed with the workflow because workflow.py imports it."""


def scale(x):
    return 10 * x


def where():
    import os, socket
    return {"host": socket.gethostname(), "job": os.environ.get("PBS_JOBID")}
'''


def finished(run_id: str, ids: list[str]) -> None:
    """Every block F in `qstat -x`, no process of the run left on the login
    node nor anything but the daemons on a compute node."""
    left = wait_pbs_finished(ids, timeout=60)
    if left:
        qdel_quietly(left)
    assert not left, f"blocks not finished after the run ended: {left}"
    poll_until_empty(lambda: run_processes(run_id), 20, interval=0.2)
    assert run_processes(run_id) == []
    assert wait_nodes_quiet(run_id) == {}, "a process of the run is left on a compute node"


@pytest.mark.timeout(300)
def test_polaris_profile_multi_stage_workflow_on_real_pbs(tmp_path: Path, home: Path) -> None:
    """The polaris profile (address on hsn0, queue debug, filesystems line)
    on the real server: apps of every kind ran in a PBS job on a compute node."""
    root = tmp_path / "wf"
    wf = write_workflow(root, MULTI)
    (root / "siteprobe").mkdir()
    (root / "siteprobe" / "__init__.py").write_text(SITEPROBE)
    (root / "data").mkdir()
    (root / "data" / "inputs.txt").write_text("1 2 3 4 5 6\n")
    t0 = time.monotonic()
    run = api.submit(wf, "local", site="polaris", params=POLARIS_HERE, wait=True)
    elapsed = time.monotonic() - t0
    st = run.last_state
    assert st["state"] == "succeeded", st
    ids = st["scheduler_job_ids"]
    assert ids and all(j.endswith(f".{SERVER}") for j in ids), ids  # PBS ids: <n>.<server>
    value = run.result(tmp_path / "res")
    assert value["total"] == value["expected"] == 210
    assert [p["value"] for p in value["parts"]] == [10, 20, 30, 40, 50, 60]
    for part in value["parts"]:
        assert part["job"] in ids and part["host"] in COMPUTE_NODES, part
    job, host, words = (tmp_path / "res" / run.id / "outputs" / "count.txt").read_text().split()
    assert job in ids and host in COMPUTE_NODES and words == "6"
    report = json.loads((tmp_path / "res" / run.id / "report.json").read_text())
    assert "queue='debug'" in report["config"] and "filesystems=home:eagle" in report["config"]
    finished(run.id, ids)
    print(f"\npolaris on OpenPBS, 1 node: multi-stage workflow, submit to result {elapsed:.1f} s")


@pytest.mark.timeout(300)
def test_polaris_rendered_script_is_what_pbs_runs(tmp_path: Path, home: Path) -> None:
    """`gcbundle render` shows exactly the script the mom runs (its copy of
    what qsub sent), run-time values aside."""
    wf = write_workflow(tmp_path / "wf", VIEW)
    run = api.submit(wf, "local", site="polaris", params=POLARIS_HERE, args={"n": 1}, wait=True)
    assert run.last_state["state"] == "succeeded", run.last_state
    [v] = run.result(tmp_path / "res")
    assert v["host"] in COMPUTE_NODES and v["PBS_JOBID"] in run.last_state["scheduler_job_ids"]
    assert v["PBS_ENVIRONMENT"] == "PBS_BATCH" and v["GCBUNDLE_RUN_ID"] == run.id
    # PBS jobs inherit no environment and start in $HOME: the prelude set all of it
    assert v["cwd"] == str(home / "runs" / run.id / "bundle")
    real = v["script"]
    assert real, "the app could not read its job script"
    submitted = [p for p in (home / "runs" / run.id / "runinfo" / "000" / "submit_scripts").glob("parsl.htex.block-0.*")
                 if not p.name.endswith((".stdout", ".stderr"))]
    assert len(submitted) == 1 and submitted[0].read_text() == real  # Parsl's file is what PBS got
    real = re.sub(r"parsl\.htex\.block-0\.\d+\.\d+", "parsl.htex.block-0.<time>", real)
    real = re.sub(r"--port=\d+", "--port=<port>", real)
    # the address function ran on the login node: hsn0's address
    real = real.replace(f"-a {LOGIN_HSN_ADDRESS} ", "-a <address_by_interface(ifname='hsn0')> ")
    shown = render.render(profiles.load("polaris"), POLARIS_HERE).scripts[0].script
    shown = re.sub(r"'(<[^']*)'", r"\1", shown)  # placeholders are quoted; the real, plain paths are not
    shown = (shown.replace("<run_id>", run.id).replace("<run>", str(home / "runs" / run.id))
             .replace("<env>/bin", str(Path(sys.executable).parent)))
    assert real == shown
    finished(run.id, run.last_state["scheduler_job_ids"])


@pytest.mark.timeout(300)
def test_two_node_block_runs_apps_on_both_compute_nodes(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "wf", VIEW)
    t0 = time.monotonic()
    run = api.submit(wf, "local", site="pbspro", params=PBSPRO_TWO, args={"n": 12, "seconds": 0.3}, wait=True)
    elapsed = time.monotonic() - t0
    st = run.last_state
    assert st["state"] == "succeeded", st
    ids = st["scheduler_job_ids"]
    views = run.result(tmp_path / "res")
    assert {v["host"] for v in views} == set(COMPUTE_NODES[:2]), views  # both nodes, none on the login node
    for v in views:
        assert v["GCBUNDLE_RUN_ID"] == run.id and v["cwd"] == str(home / "runs" / run.id / "bundle")
    # The job's first node has PBS's environment; Open MPI gave the other
    # node's manager gcbundle's variables only (its env list).
    mother = [v for v in views if v["PBS_JOBID"]]
    assert mother and {v["PBS_JOBID"] for v in mother} <= set(ids)
    assert sorted(Path(mother[0]["PBS_NODEFILE"]).read_text().split()) == sorted(COMPUTE_NODES[:2])
    finished(run.id, ids)
    print(f"\npbspro on OpenPBS, 2 nodes: 12 apps, submit to result {elapsed:.1f} s")


@pytest.mark.timeout(300)
def test_cancel_with_running_blocks_deletes_them(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "wf", VIEW)
    run = api.submit(wf, "local", site="pbspro", params=PBSPRO_TWO, args={"n": 2, "seconds": 600})
    outputs = home / "runs" / run.id / "outputs"
    deadline = time.monotonic() + 120
    while len(list(outputs.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # one more heartbeat: the job ids are in state.json
    st = run.status()
    ids = st["scheduler_job_ids"]
    assert len(list(outputs.glob("started-*"))) == 2 and ids, st
    assert {a["job_state"] for a in qstat_jobs(ids).values()} == {"R"}
    res = CliRunner().invoke(main, ["cancel", run.id, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data"]["state"]["state"] == "cancelled"
    finished(run.id, ids)
    # qdel was issued: the server's history says the job was deleted.
    server_log = Path("/var/spool/pbs/server_logs") / time.strftime("%Y%m%d")
    for job in ids:
        assert f";{job};delete job request received" in server_log.read_text(errors="replace"), job


@pytest.mark.timeout(300)
def test_unknown_queue_fails_the_run_with_qsubs_message(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", VIEW)
    run = api.submit(wf, "local", site="pbspro", params={**PBSPRO, "queue": "nosuchqueue"}, wait=True)
    st: dict[str, Any] = run.last_state
    assert st["state"] == "failed", st
    refused = "the scheduler could not start a block of executor htex: qsub: Unknown queue"
    assert st["error"]["message"].startswith(refused), st["error"]
    poll_until_empty(lambda: run_processes(run.id), 20, interval=0.2)
    assert run_processes(run.id) == []


@pytest.mark.timeout(300)
def test_polaris_example_on_real_pbs(tmp_path: Path) -> None:
    """The seed scenario: examples/polaris as its README runs it here."""
    run = api.submit(EXAMPLES / "polaris" / "workflow.py", "local", site="polaris", params=POLARIS_HERE,
                     args={"n": 8}, wait=True)
    st = run.last_state
    assert st["state"] == "succeeded", st
    value = run.result(tmp_path / "res")
    assert value["tasks"] == 8 and len(value["hosts"]) == 1 and value["hosts"][0] in COMPUTE_NODES
    # one worker per accelerator, as on Polaris: each app saw one CUDA_VISIBLE_DEVICES of four
    assert value["gpus"] and set(value["gpus"]) <= {"0", "1", "2", "3"}
    assert value["jobs"] and set(value["jobs"]) <= set(st["scheduler_job_ids"])
    nodes = (tmp_path / "res" / run.id / "outputs" / "nodes.txt").read_text()
    assert nodes.startswith(f"job {value['jobs'][0]}: {value['hosts'][0]}")
    finished(run.id, st["scheduler_job_ids"])


@pytest.mark.timeout(300)
def test_a_block_that_exits_non_zero_fails_the_run_saying_which_job_and_why(tmp_path: Path) -> None:
    """A block that cannot start its workers: Parsl alone calls the PBS job
    that exited 3 COMPLETED (then MISSING, as no worker registered); gcbundle
    reads PBS's Exit_status: the run fails, and `status` names the job and why."""
    wf = write_workflow(tmp_path / "wf", VIEW)
    run = api.submit(wf, "local", site="pbspro", params={**PBSPRO, "worker_init": "exit 3"}, args={"n": 1}, wait=True)
    st = run.last_state
    assert st["state"] == "failed", st
    jobs = st["scheduler_job_ids"]
    # On a busy machine Parsl may submit a second block before the first one's end is read;
    # every block the run reports as dead must then be one of its jobs, dead for the same reason.
    assert 1 <= len(jobs) <= 2, jobs
    failures = [(d["job"], d["scheduler_state"], d["exit_code"]) for d in st["block_failures"]]
    assert failures and {job for job, _, _ in failures} <= set(jobs), (failures, jobs)
    assert all((state, code) == ("F", 3) for _, state, code in failures), failures
    job = failures[0][0]
    said = f"PBS job {job} ended with Exit_status 3 (its script exited with 3)"
    assert qstat_jobs([job])[job]["Exit_status"] == 3
    assert said in st["error"]["message"]
    assert st["error"]["message"].startswith("the block jobs failed of executor htex")
    res = CliRunner().invoke(main, ["status", run.id])
    assert f"died     {job}: {said}" in res.stdout, res.stdout
    finished(run.id, jobs)

