"""What the commands that wait say when a run does not simply succeed: a failed
run under ``submit --wait`` and ``resume --wait`` (alike: exit 11, the
envelope, results fetched on success), ``results`` of a running run, ``logs
--follow`` of a run that is cancelled. Real runs on the embedded endpoint."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import api
from bundle.cli import main
from tests.conftest import write_workflow
from tests.workflows import napping

FAILING = '''
from parsl import python_app


@python_app
def one():
    return 1


def main(fail: bool = True):
    value = one().result()
    if fail:
        raise RuntimeError("asked to fail")
    return {"value": value}
'''

SLOW = napping(60)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_submit_wait_and_resume_wait_end_alike(cwd: Path) -> None:
    wf = write_workflow(cwd / "wf", FAILING)
    runner = CliRunner()
    res = runner.invoke(main, ["submit", str(wf), "--wait", "--json"])
    assert res.exit_code == 11, res.stderr
    env = json.loads(res.stdout)
    assert env["status"] == "error" and env["command"] == "submit"
    assert env["errors"][0]["type"] == "RunFailed" and "asked to fail" in env["errors"][0]["message"]
    first = env["data"]["run_id"]
    assert env["data"]["state"]["state"] == "failed"
    assert res.stderr.splitlines()[-1].startswith(f"gcbundle: error: run {first} failed: ")

    # resume --wait of a run that fails again: the same code, envelope and line
    res = runner.invoke(main, ["resume", first, "--wait", "--json"])
    assert res.exit_code == 11, res.stderr
    env = json.loads(res.stdout)
    assert env["status"] == "error" and env["command"] == "resume" and env["errors"][0]["type"] == "RunFailed"
    assert env["data"]["resumed_from"] == first and env["data"]["state"]["state"] == "failed"
    second = env["data"]["run_id"]
    assert res.stderr.splitlines()[-1].startswith(f"gcbundle: error: run {second} failed: ")

    # ... and one that succeeds prints main()'s result and fetches the results, as submit --wait does
    res = runner.invoke(main, ["resume", second, "--arg", "fail=false", "--wait"])
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    third = lines[0].split()[1]
    assert lines[0] == f"run {third} succeeded" and lines[1].startswith("result: ")
    assert json.loads("\n".join(lines[1:-1]).removeprefix("result: ")) == {"value": 1}
    results_dir = Path(lines[-1].removeprefix("results in "))
    assert results_dir.name == third and (results_dir / "result.json").is_file()
    assert f"resumed run {second} as run {third}" in res.stderr
    assert api.get_run(third).local_results() == results_dir


def test_results_of_a_running_run_and_logs_follow_of_a_cancelled_one(cwd: Path) -> None:
    wf = write_workflow(cwd / "wf", SLOW)
    runner = CliRunner()
    res = runner.invoke(main, ["submit", str(wf)])
    assert res.exit_code == 0, res.stderr
    run_id = res.stdout.strip()
    try:
        _results_and_follow(runner, run_id)
    finally:
        api.get_run(run_id).cancel(grace=5)  # a no-op once it is cancelled; else nothing outlives the test


def _results_and_follow(runner: CliRunner, run_id: str) -> None:
    res = runner.invoke(main, ["results", run_id[:6]])
    assert res.exit_code == 6
    assert re.fullmatch(f"gcbundle: error: run {run_id} is still (starting|running); wait for it to end "
                        f"\\(`gcbundle status {run_id} --wait`\\), or stop it \\(`gcbundle cancel {run_id}`\\)",
                        res.stderr.strip()), res.stderr

    def cancel_later() -> None:
        run = api.get_run(run_id)
        deadline = time.monotonic() + 60
        while "started" not in "".join(run.logs("stdout")) and time.monotonic() < deadline:
            time.sleep(0.2)
        run.cancel(grace=10)

    canceller = threading.Thread(target=cancel_later)
    canceller.start()
    try:
        res = runner.invoke(main, ["logs", run_id, "--name", "stdout", "--follow"])
    finally:
        canceller.join(120)
    assert res.exit_code == 0, res.stderr
    assert "started" in res.stdout
    assert res.stderr.strip().splitlines()[-1] == f"gcbundle: run {run_id} ended: cancelled"
