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

from bundle.errors import FunctionNotPermitted, GcbundleError, RunNotFound
from bundle.transport import get_transport
from tests.conftest import write_workflow
from tests.conftest_daemon import DaemonTier
from tests.daemon import alive, load_yaml, render_role
from tests.test_multisite import MULTISITE, load

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
        output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise AssertionError(f"gcbundle {' '.join(args)} exited {proc.returncode}\n{output}")
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


def test_two_user_endpoint_configs_start_two_user_endpoint_processes(gc_client: DaemonTier) -> None:
    """The service starts one user endpoint process per user_endpoint_config
    (a cold start and a worker each): the SDK's own Client, two configs, two
    processes at once, each task in its own. gcbundle's tasks all send the same
    one (test above), so they never pay for a second."""
    from globus_compute_sdk import Client

    tier = gc_client
    ep = tier.endpoint_id("gcbundle")

    # Defined in a __main__ namespace, so that it travels by value (the worker cannot import this module).
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("def endpoint_name():\n    import os\n    return os.environ['GLOBUS_COMPUTE_ENDPOINT_NAME']\n", ns)  # noqa: S102
    endpoint_name = ns["endpoint_name"]

    client = Client(do_version_check=False)
    fid = client.register_function(endpoint_name)
    tasks = {}
    for label, config in (("default", None), ("other", {"worker_init": "true"})):
        batch = client.create_batch(user_endpoint_config=config)
        batch.add(fid)
        tasks[label] = client.batch_run(ep, batch)["tasks"][fid][0]
    names = {}
    deadline = time.monotonic() + 240
    while len(names) < 2:
        assert time.monotonic() < deadline, f"tasks still pending: {tasks}"
        for label, tid in tasks.items():
            if label not in names and not client.get_task(tid)["pending"]:
                names[label] = client.get_result(tid)
        time.sleep(1)
    children = {c.name: c for c in tier.service.children(ep)}
    assert names["default"] != names["other"] and {names["default"], names["other"]} <= set(children)
    by_config = {json.dumps(c.user_endpoint_config, sort_keys=True): c for c in children.values()}
    assert by_config['{"worker_init": "true"}'].name == names["other"] and by_config["{}"].name == names["default"]
    pids = [c.pids[-1] for c in children.values()]
    assert len(set(pids)) == len(pids) and all(alive(p) for p in pids)  # separate processes, running side by side


def test_multisite_executor_path_through_the_daemon(gc_client: DaemonTier, tmp_path: Path) -> None:
    """The multisite example's real-site variant: its driver, detached on the
    login node, sends `preprocess` and `analyse` through the SDK's Executor
    (Parsl's GlobusComputeExecutor) to two more daemon endpoints, with the
    credentials the role gave the endpoint; results come back over AMQP."""
    tier = gc_client
    a, b = tier.endpoint_id("gcbundle"), tier.endpoint_id("gcbundle-idle")
    cli("endpoints", "add", "ms", a)
    first = len(tier.service.submissions)
    sub = cli_json(
        "submit", str(MULTISITE / "workflow.py"), "--endpoint", "ms",
        "--config", str(MULTISITE / "globus_config.py"),
        "--set", f"preprocess_endpoint={a}", "--set", f"analysis_endpoint={b}",
        "--wait", timeout=600,
    )  # fmt: skip
    assert sub["status"] == "success" and sub["data"]["state"]["state"] == "succeeded", sub
    run_id = sub["data"]["run_id"]
    out = tmp_path / "res"
    assert cli_json("results", run_id, "-o", str(out))["status"] == "success"
    value = json.loads((out / run_id / "result.json").read_text())

    wf = load("workflow")
    files = sorted((MULTISITE / "experiments").glob("*.csv"))
    expected = [len(wf._analyse(wf._preprocess(wf.read_experiment(str(p)), 3), 2.5)["events"]) for p in files]
    assert value["events_per_experiment"] == expected and sum(expected) > 0
    assert (out / run_id / "outputs" / "events.csv").is_file()
    # The Executor's submissions (batched, with a result queue): one task per app call, to each endpoint.
    executor = [s for s in tier.service.submissions[first:] if s.get("create_queue")]
    per_endpoint = {e: sum(s["task_count"] for s in executor if s["endpoint_id"] == e) for e in (a, b)}
    assert per_endpoint == {a: len(files), b: len(files)}, executor


def test_function_not_permitted_then_register_and_allow(gc_client: DaemonTier, tmp_path: Path) -> None:
    """An endpoint with allowed_functions refuses gcbundle's tasks (at the
    service, and again in the user endpoint process itself); `gcbundle register`
    prints the ids, the administrator puts them in the role's
    gcbundle_endpoint_allowed_functions and the role's handler restarts the
    unit; then the same command runs."""
    tier = gc_client
    name = "gcbundle-allow"
    ep = tier.endpoint_id(name)
    cli("endpoints", "add", "allow", ep)

    def status_task() -> Exception:
        """One gcbundle task to the alias (the status of a run the login node does not have)."""
        with pytest.raises(GcbundleError) as err:
            get_transport("allow").call("status", run_id="abcdef012345")
        return err.value

    refused = status_task()
    assert isinstance(refused, FunctionNotPermitted) and "only runs allow-listed functions" in str(refused), refused

    tier.service.check_allowed_at_submit = False  # as if the service let it through: the endpoint checks too
    try:
        refused = status_task()
    finally:
        tier.service.check_allowed_at_submit = True
    assert isinstance(refused, FunctionNotPermitted), refused
    assert "the endpoint refused to run the status task" in str(refused), refused
    assert "not permitted on endpoint" in str(refused)

    registered = cli_json("register", "--endpoint", "allow", "-o", str(tmp_path / "gcbundle-functions.yaml"))
    ids = registered["data"]["allowed_functions"]
    assert registered["status"] == "success" and len(ids) == len(set(ids)) > 1

    rendered = render_role(tier.base / "role", tier.user, tier.common_vars,
                           {name: {"gcbundle_endpoint_allowed_functions": ids}}, tier.base / "systemd")[name]
    assert load_yaml(rendered.ep_dir / "config.yaml")["allowed_functions"] == ids  # type: ignore[index]
    before = tier._registrations(name)
    tier.units[name].restart()  # the role's handler: systemctl restart
    tier.wait_online(name, before)
    assert tier.service.endpoint_named(name).allowed_functions == ids

    ran = status_task()  # now it runs on the login node (by the registered ids), which knows no such run
    assert isinstance(ran, RunNotFound), ran
