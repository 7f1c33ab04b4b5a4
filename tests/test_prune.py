"""``gcbundle prune``: real runs on the embedded endpoint, pruned by state, age and
whether their results were fetched; never a run that has not ended; the
client's caches and results; a login node without the prune task."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import api, packcache
from bundle import prune as pruning
from bundle.cli import main
from bundle.contracts import PruneCriteria
from bundle.errors import UsageError
from bundle.registry import Registry
from bundle.transport import Tally
from bundle.transport.local import LocalTransport
from login_node import tasks
from login_node.prune import prune as prune_home
from login_node.rundir import Home
from tests.conftest import write_workflow
from tests.registry_rows import row

WORKFLOW = '''
from parsl import python_app


@python_app
def nap(s):
    import time
    time.sleep(s)
    return s


def main(s: float = 0, fail: bool = False):
    with open("big.bin", "wb") as f:
        f.write(b"x" * 300_000)
    value = nap(s).result()
    if fail:
        raise RuntimeError("asked to fail")
    return value
'''


def prune(*args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(main, ["prune", *args, "--json"])
    assert res.stdout, res.stderr
    return res.exit_code, json.loads(res.stdout)


def actions(env: dict) -> dict[str, str]:
    return {r["run_id"]: r["action"] for r in env["data"]["endpoints"]["local"]["runs"]}


def test_prune_by_state_age_and_fetched_never_a_running_run(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    wf = write_workflow(tmp_path / "wf", WORKFLOW)
    done = api.submit(wf, "local", wait=True)  # succeeded, results fetched below
    done.results(tmp_path / "res")
    failed = api.submit(wf, "local", args={"fail": True}, wait=True)  # failed, results not fetched
    slow_wf = write_workflow(tmp_path / "slow", WORKFLOW.replace("s: float = 0", "s: float = 120"))
    running = api.submit(slow_wf, "local")
    try:
        _prune_all_ways(home, done, failed, running, wf)
    finally:
        running.cancel(grace=5)


def _prune_all_ways(home: Path, done: api.Run, failed: api.Run, running: api.Run, wf: Path) -> None:
    assert done.last_state["state"] == "succeeded" and failed.last_state["state"] == "failed"
    assert running.status()["state"] in ("starting", "running")
    before = {r: (home / "runs" / r).is_dir() for r in (done.id, failed.id, running.id)}
    assert all(before.values())

    # --dry-run: sizes and verdicts, nothing deleted
    code, env = prune("--dry-run")
    assert code == 0 and env["status"] == "success" and env["data"]["dry_run"] is True
    assert actions(env) == {done.id: "prune", failed.id: "keep", running.id: "keep"}
    rows = {r["run_id"]: r for r in env["data"]["endpoints"]["local"]["runs"]}
    assert rows[done.id]["bytes"] > 300_000 and rows[failed.id]["reason"].startswith("results not fetched")
    assert rows[running.id]["reason"].endswith("not ended")
    assert all((home / "runs" / r).is_dir() for r in before)
    res = CliRunner().invoke(main, ["prune", "--dry-run"])
    assert f"prune run {done.id}" in res.stdout and "(dry run: nothing deleted)" in res.stdout
    assert "kept 1 runs whose results you have not fetched" in res.stdout

    # by age: everything ended seconds ago
    code, env = prune("--older-than", "1h", "--force")
    assert code == 0 and set(actions(env).values()) == {"keep"}
    # by state: only failed runs, and forced (its results were never fetched)
    code, env = prune("--state", "failed", "--force")
    assert actions(env) == {done.id: "keep", failed.id: "pruned", running.id: "keep"}
    assert not (home / "runs" / failed.id).exists() and (home / "runs" / done.id).is_dir()
    # default: the fetched one goes; --force never takes the running one
    code, env = prune("--force")
    assert actions(env) == {done.id: "pruned", running.id: "keep"}
    assert not (home / "runs" / done.id).exists() and (home / "runs" / running.id).is_dir()
    assert running.status()["state"] in ("starting", "running")
    # the bundle the running run uses stays; the other one went, and the registry knows
    bundles = {b["digest"]: b["action"] for b in env["data"]["endpoints"]["local"]["bundles"]}
    assert bundles[running.record.digest] == "keep" and bundles[done.record.digest] == "pruned"
    assert (home / "cache" / f"{running.record.digest}.tar.gz").is_file()
    assert not (home / "cache" / f"{done.record.digest}.tar.gz").exists()
    reg = Registry()
    assert not reg.is_cached("local", done.record.digest)
    assert json.loads(reg.get(done.id).extra)["pruned"] > 0
    res = CliRunner().invoke(main, ["status", done.id])
    assert res.exit_code == 5 and f"run {done.id} was pruned from the login node of local on " in res.stderr
    assert f"its results are in {done.local_results()}" in res.stderr
    # a resubmit of the pruned bundle uploads it again and runs
    again = api.submit(wf, "local", wait=True)
    assert again.last_state["state"] == "succeeded"


def test_client_caches_and_results(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wf = write_workflow(tmp_path / "wf", WORKFLOW)
    res = CliRunner().invoke(main, ["submit", str(wf), "--wait"])
    assert res.exit_code == 0, res.stderr
    results_dir = Path(res.stdout.splitlines()[-1].removeprefix("results in "))
    caches = packcache.cache_dir()
    cached = [p for p in caches.rglob("*") if p.is_file()]
    assert results_dir.is_dir() and cached

    code, env = prune("--no-login-node", "--older-than", "1d")  # all younger than a day
    assert code == 0 and env["data"]["client"]["caches"] == [] and env["data"]["endpoints"] == {}
    code, env = prune("--no-login-node", "--dry-run", "--results")
    assert {c["kind"] for c in env["data"]["client"]["caches"]} >= {"archives", "manifests"}
    assert [r["path"] for r in env["data"]["client"]["results"]] == [str(results_dir)]
    results_bytes = env["data"]["client"]["results"][0]["bytes"]
    assert results_bytes > 0 and all(p.exists() for p in cached) and results_dir.is_dir()
    code, env = prune("--no-login-node")  # without --results: the results stay
    assert code == 0 and results_dir.is_dir() and "results" not in env["data"]["client"]
    assert not [p for p in caches.rglob("*") if p.is_file()]
    code, env = prune("--no-login-node", "--results")
    assert code == 0 and not results_dir.exists() and env["data"]["freed_bytes"] == results_bytes
    # a directory given to `results -o` is the user's: never touched
    run_id = results_dir.name
    assert CliRunner().invoke(main, ["results", run_id, "-o", "mine"]).exit_code == 0
    prune("--no-login-node", "--results")
    assert (tmp_path / "mine" / run_id / "result.json").is_file()


def test_a_login_node_without_the_prune_task_says_to_upgrade(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older login node: its ``login_node.tasks`` has no ``prune``. The local
    endpoint's worker is forked while the function is missing, so the task
    fails there as it would on an endpoint running an older gcbundle."""
    transport = LocalTransport()
    fn = tasks.prune
    monkeypatch.delattr(tasks, "prune")
    transport.call("probe", digests=[])  # the worker starts without it
    monkeypatch.setattr(tasks, "prune", fn, raising=False)
    monkeypatch.setattr("bundle.transport.get_transport", lambda endpoint: transport)
    code, env = prune("--endpoint", "local", "--no-caches")
    transport.close()
    assert code == 7 and env["errors"][0]["type"] == "ProtocolMismatch", env
    assert env["errors"][0]["message"] == (
        "1 endpoint not pruned: endpoint local: "
        "the login node's gcbundle has no `prune` task (it came with gcbundle protocol 3)"
    )
    assert env["errors"][0]["hint"].startswith("upgrade gcbundle on the login node")


def test_bad_prune_options_and_requests(home: Path) -> None:
    assert prune("--older-than", "soon")[0] == 2
    assert prune("--state", "running")[0] == 2
    transport = LocalTransport()
    bad_requests = (
        {"states": ["running"]},
        {"older_than": -1},
        {"fetched": ["../x"]},
        {"dry_run": "yes"},
        {"zap": 1},
        [],
    )
    try:
        for bad in bad_requests:
            with pytest.raises(UsageError):
                transport.call("prune", prune=bad)
    finally:
        transport.close()


def test_leftovers_of_an_interrupted_prune_are_finished(home: Path) -> None:
    h = Home(home)
    h.ensure()
    half = h.runs / ".0123456789ab.pruning.999"
    (half / "outputs").mkdir(parents=True)
    (half / "outputs" / "x").write_bytes(b"x" * 10_000)
    fresh = h.runs / ".0123456789ac.creating.999"  # a launch under way: too young to touch
    fresh.mkdir()
    old = time.time() - 2 * 3600
    os.utime(half, (old, old))
    rep = prune_home(h, PruneCriteria())
    assert [x["path"] for x in rep["leftovers"]] == ["runs/.0123456789ab.pruning.999"]
    assert not half.exists() and fresh.is_dir()


def test_one_prune_task_per_endpoint(home: Path) -> None:
    """However many runs the registry has there: one task for the endpoint."""
    reg = Registry()
    for i in range(5):
        reg.add(row(f"{i:012x}", state="succeeded", results_sha="x"))
    transport = LocalTransport()
    tally = Tally.attach(transport)
    try:
        report = pruning.prune(pruning.Options(caches=False), registry=reg, transport_for=lambda endpoint: transport)
    finally:
        transport.close()
    assert dict(tally.calls) == {"prune": 1}
    assert list(report["endpoints"]) == ["local"] and report["endpoints"]["local"]["runs"] == []
