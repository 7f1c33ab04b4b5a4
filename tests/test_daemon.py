"""gcbundle through the REAL globus-compute-endpoint daemon (fixtures: tests/conftest_daemon.py).

The Globus Compute web service and Globus Auth are a STAND-IN
(tests/globus_service.py): closed-source cloud services this machine cannot
reach. Everything else is real: the gcbundle CLI and the SDK's ``Client``
here; RabbitMQ; the endpoint manager started from the unit and the files our
Ansible role writes, as an unprivileged account; the user endpoint processes
it starts from the role's template, their GlobusComputeEngine and worker; and
gcbundle's login-node tasks and detached drivers under them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_workflow
from tests.conftest_daemon import DaemonTier

pytestmark = pytest.mark.daemon

GCBUNDLE = str(Path(sys.executable).parent / "gcbundle")

#: A workflow whose first run can be cancelled mid-way and resumed: ``step``
#: apps are checkpointed (cache=True); ``hold`` keeps the run going for as
#: long as asked; its argument is part of its memo key, so a resume with
#: hold=0 runs it anew and reuses every step.
RESUMABLE = textwrap.dedent('''
    import os, time
    from parsl import python_app

    @python_app(cache=True)
    def step(i):
        return i * i

    @python_app(cache=True)
    def hold(seconds):
        import time
        time.sleep(seconds)
        return seconds

    def main(n=4, hold_s=0):
        squares = [step(i).result() for i in range(n)]
        out = os.environ["GCBUNDLE_OUTPUT_DIR"]
        with open(os.path.join(out, "squares.txt"), "w") as f:
            f.write(" ".join(map(str, squares)))
        hold(float(hold_s)).result()
        return {"squares": squares, "user": os.environ.get("USER"), "home": os.environ.get("GCBUNDLE_HOME")}
''')


def cli(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The gcbundle command, as a user types it (this process's environment)."""
    proc = subprocess.run([GCBUNDLE, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"gcbundle {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def cli_json(*args: str, timeout: float = 300, check: bool = True) -> dict[str, Any]:
    proc = cli(*args, "--json", timeout=timeout, check=check)
    return json.loads(proc.stdout)


def wait_state(run_id: str, states: set[str], timeout: float = 120, done: int = 0) -> dict[str, Any]:
    """Poll `gcbundle status` until the run is in one of ``states`` with at least ``done`` apps done."""
    deadline = time.monotonic() + timeout
    while True:
        st = cli_json("status", run_id)["data"]
        if (st["state"] in states and st.get("tasks", {}).get("exec_done", 0) >= done) or time.monotonic() > deadline:
            return st
        time.sleep(1)


def test_submit_status_logs_cancel_resume_results_through_the_daemon(gc_client: DaemonTier, tmp_path: Path) -> None:
    tier = gc_client
    ep = tier.endpoint_id("gcbundle")
    cli("endpoints", "add", "daemon", ep)
    wf = write_workflow(tmp_path / "wf", RESUMABLE)
    first_submit = len(tier.service.submissions)

    submitted = cli_json("submit", str(wf), "--endpoint", "daemon", "--arg", "n=4", "--arg", "hold_s=300")
    assert submitted["status"] == "success", submitted
    run_id = submitted["data"]["run_id"]

    st = wait_state(run_id, {"running"}, done=4)  # the steps are checkpointed; hold runs
    assert st["state"] == "running" and st["tasks"]["exec_done"] == 4, st
    # The run lives in the endpoint account's GCBUNDLE_HOME, as the role set it.
    run_dir = tier.gcbundle_home / "runs" / run_id
    assert (run_dir / "state.json").is_file()
    assert run_dir.stat().st_uid == tier.user.pw_uid

    logs = cli("logs", run_id)
    assert logs.stdout.strip(), logs

    cancelled = cli_json("cancel", run_id)
    assert cancelled["status"] == "success", cancelled
    st = wait_state(run_id, {"cancelled", "failed", "succeeded", "lost"})
    assert st["state"] == "cancelled", st

    resumed = cli_json("resume", run_id, "--arg", "hold_s=0", "--wait", timeout=600)
    assert resumed["status"] == "success", resumed
    new_id = resumed["data"]["run_id"]
    assert new_id != run_id and resumed["data"]["state"]["state"] == "succeeded", resumed
    tasks = resumed["data"]["state"]["tasks"]
    assert tasks["from_checkpoint"] == 4, tasks  # the four steps came from the cancelled run's checkpoints

    out = tmp_path / "results"
    fetched = cli_json("results", new_id, "-o", str(out))
    assert fetched["status"] == "success", fetched
    result = json.loads((out / new_id / "result.json").read_text())
    assert result["squares"] == [0, 1, 4, 9]
    assert result["user"] == tier.user.pw_name and result["home"] == str(tier.gcbundle_home)
    assert (out / new_id / "outputs" / "squares.txt").read_text() == "0 1 4 9"

    # Every task of the alias went to the same endpoint with the same
    # user_endpoint_config, so all ran in one user endpoint process.
    sent = tier.service.submissions[first_submit:]
    assert len(sent) >= 8
    assert {s["endpoint_id"] for s in sent} == {ep}
    assert {json.dumps(s.get("user_endpoint_config"), sort_keys=True) for s in sent} == {"null"}
    assert len(tier.service.children(ep)) == 1
