"""Whole runs through the real local endpoint path: execute_task, a detached
driver, a real DFK with real HTEX workers."""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import api
from bundle.cli import main
from bundle.errors import ProtocolMismatch, RunNotFound, RunStateError, SiteProfileError
from bundle.limits import CHUNK_BYTES
from bundle.protocol import unwrap
from bundle.registry import Registry
from bundle.transport import Tally
from bundle.transport.local import LocalTransport, _execute
from bundle.transport.wire import pack_task, unpack_result
from login_node import tasks
from login_node.procs import run_processes
from tests.conftest import EXAMPLES, write_workflow
from tests.hostile import valid_bundle


def test_hello_runs_end_to_end_with_results_and_report(tmp_path: Path, home: Path) -> None:
    run = api.submit(EXAMPLES / "hello" / "workflow.py", "local", args={"n": 5}, wait=True)
    assert run.last_state["state"] == "succeeded"
    value = run.result(tmp_path / "res")
    assert value["sum_of_squares"] == sum(i * i for i in range(5))
    assert value["word_lengths"] == [3, 5, 5, 3, 5, 4, 3, 4, 3]
    res = tmp_path / "res" / run.id
    assert "hello from" in (res / "outputs" / "greeting.txt").read_text()
    assert (res / "outputs" / "squares.csv").read_text().splitlines()[1:] == [f"{i},{i * i}" for i in range(5)]
    assert json.loads((res / "result.json").read_text())["n"] == 5
    report = json.loads((res / "report.json").read_text())
    assert report["apps"]["square"]["count"] == 5 and report["apps"]["greet"]["count"] == 1
    assert report["versions"]["parsl"] and report["pip_freeze"] and "HighThroughputExecutor" in report["config"]
    assert report["digest"] == run.record.digest
    assert (res / "logs" / "driver.log").is_file() and list((res / "logs" / "runinfo").glob("*/parsl.log"))
    assert not list(res.rglob("*key_secret*")), "HTEX keys must not leave the login node"
    # the run directory on the "login node"
    run_dir = home / "runs" / run.id
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700" and oct(home.stat().st_mode & 0o777) == "0o700"
    assert run_processes(run.id) == []


def test_cli_submit_status_logs_results_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["submit", str(EXAMPLES / "hello" / "workflow.py"), "--arg", "n=3", "--json"])
    assert res.exit_code == 0, res.output
    env = json.loads(res.stdout)
    run_id = env["data"]["run_id"]
    assert env["data"]["state"]["state"] in ("starting", "running", "succeeded")
    res = runner.invoke(main, ["status", run_id[:5], "--wait", "--json"])
    assert json.loads(res.stdout)["data"]["state"] == "succeeded", res.output
    res = runner.invoke(main, ["status", run_id[:5]])
    assert "succeeded" in res.stdout and run_id in res.stdout
    res = runner.invoke(main, ["logs", run_id])
    assert f"driver for run {run_id} finished: succeeded" in res.stdout
    res = runner.invoke(main, ["logs", run_id, "--name", "parsl", "--json"])
    assert "Unregistering log handler" in json.loads(res.stdout)["data"]["text"]
    res = runner.invoke(main, ["results", run_id, "-o", "out", "--json"])
    data = json.loads(res.stdout)["data"]
    assert data["fetched_bytes"] == data["bytes"] > 0
    res = runner.invoke(main, ["results", run_id, "-o", "out", "--json"])
    assert json.loads(res.stdout)["data"]["fetched_bytes"] == 0  # nothing new
    assert (tmp_path / "out" / run_id / "outputs" / "squares.csv").is_file()
    res = runner.invoke(main, ["list", "--json"])
    rows = json.loads(res.stdout)["data"]
    assert rows[0]["run_id"] == run_id and rows[0]["state"] == "succeeded" and rows[0]["results_path"].endswith(run_id)


def test_cli_submit_wait_prints_the_result() -> None:
    res = CliRunner().invoke(main, ["submit", str(EXAMPLES / "hello" / "workflow.py"), "--arg", "n=4", "--wait"])
    assert res.exit_code == 0, res.output
    assert "succeeded" in res.stdout and '"sum_of_squares": 14' in res.stdout


def test_a_workflow_that_raises_fails_with_traceback_and_keeps_outputs(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", (
        "import os\nfrom parsl import python_app\n\n@python_app\ndef one():\n    return 1\n\n"
        "def main():\n"
        "    with open(os.path.join(os.environ['GCBUNDLE_OUTPUT_DIR'], 'partial.txt'), 'w') as f:\n"
        "        f.write(str(one().result()))\n"
        "    raise ValueError('the analysis diverged')\n"
    ))
    run = api.submit(wf, "local", wait=True)
    st = run.last_state
    assert st["state"] == "failed"
    assert "ValueError: the analysis diverged" in st["error"]["message"]
    assert "raise ValueError" in st["error"]["traceback"]
    res = CliRunner().invoke(main, ["status", run.id])
    assert "the analysis diverged" in res.stdout and "Traceback" in res.stdout
    fetched = run.results(tmp_path / "res")
    assert (fetched.path / "outputs" / "partial.txt").read_text() == "1"
    assert "diverged" in json.loads((fetched.path / "state.json").read_text())["error"]["message"]
    assert "diverged" in json.loads((fetched.path / "report.json").read_text())["outcome"]["error"]["traceback"]
    with pytest.raises(RunStateError, match="failed"):
        run.result(tmp_path / "res2")
    res = CliRunner().invoke(main, ["submit", str(wf), "--wait"])
    assert res.exit_code != 0 and "the analysis diverged" in res.stderr


def test_function_mode_bundle_without_main_fails_clearly(tmp_path: Path) -> None:
    bundle, _ = valid_bundle(tmp_path / "nomain.tar.gz", {"workflow.py": b"x = 1\n"})
    run = api.submit(bundle, "local", wait=True)
    assert run.last_state["state"] == "failed"
    assert "defines no main()" in run.last_state["error"]["message"]


def test_script_mode_example(tmp_path: Path) -> None:
    run = api.submit(EXAMPLES / "script" / "workflow.py", "local", args={"count": 4}, wait=True)
    assert run.last_state["state"] == "succeeded", run.last_state
    fetched = run.results(tmp_path / "res")
    assert (fetched.path / "outputs" / "doubled.txt").read_text().split() == ["0", "2", "4", "6"]
    assert "doubled 4 numbers" in (fetched.path / "logs" / "stdout").read_text()


def test_unknown_site_profile_sends_nothing_and_records_nothing(home: Path) -> None:
    with pytest.raises(SiteProfileError, match="unknown site profile 'nowhere'"):
        api.submit(EXAMPLES / "hello" / "workflow.py", "local", site="nowhere")
    assert Registry().list() == []
    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []
    res = CliRunner().invoke(main, ["submit", str(EXAMPLES / "hello" / "workflow.py"), "--site", "nowhere", "--json"])
    env = json.loads(res.stdout)
    assert res.exit_code == 4 and env["status"] == "error" and env["errors"][0]["type"] == "SiteProfileError"


@pytest.mark.parametrize("command", ["status", "logs", "results", "cancel"])
@pytest.mark.parametrize("bad", ["../x", "0123456789abcdef0123", "zzzz", "abc123"])
def test_bad_run_ids_are_one_line_errors(command: str, bad: str) -> None:
    res = CliRunner().invoke(main, [command, bad])
    assert res.exit_code == RunNotFound.exit_code, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "gcbundle list" in res.stderr


@pytest.mark.parametrize("task", ["status", "logs", "results_manifest", "results_chunk", "cancel"])
@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "0123456789ab/../x", "", None, 12])
def test_login_node_tasks_refuse_path_like_run_ids(task: str, bad: object, home: Path) -> None:
    t = LocalTransport()
    with pytest.raises(RunNotFound):
        t.call(task, run_id=bad, manifest_sha256="0", index=0)
    t.close()
    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []


def test_protocol_mismatch_says_which_side_to_upgrade() -> None:
    newer = {"protocol": 99, "client_version": "9.9", "run_id": "0123456789ab"}
    _, packed = pack_task(tasks.status, newer)
    with pytest.raises(ProtocolMismatch, match="upgrade gcbundle on the login node"):
        unwrap(unpack_result(_execute(packed, uuid.uuid4(), os.getcwd())))
    older = {"protocol": 0, "run_id": "0123456789ab"}
    _, packed = pack_task(tasks.status, older)
    with pytest.raises(ProtocolMismatch, match="upgrade your gcbundle client"):
        unwrap(unpack_result(_execute(packed, uuid.uuid4(), os.getcwd())))


def test_cancel_stops_the_driver_and_every_process(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", (
        "from parsl import python_app\n\n@python_app\ndef nap(s):\n    import time\n    time.sleep(s)\n    return s\n\n"
        "def main():\n    return sum(f.result() for f in [nap(300) for _ in range(2)])\n"
    ))
    run = api.submit(wf, "local")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = run.status()
        if st["state"] == "running" and st.get("tasks", {}).get("total", 0) >= 2 and len(run_processes(run.id)) >= 3:
            break
        time.sleep(0.5)
    assert len(run_processes(run.id)) >= 3, "driver, interchange and workers should be running"
    res = CliRunner().invoke(main, ["cancel", run.id[:6], "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data"]["state"]["state"] == "cancelled"
    assert run.status()["state"] == "cancelled"
    deadline = time.monotonic() + 15
    while run_processes(run.id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_processes(run.id) == []
    res = CliRunner().invoke(main, ["cancel", run.id])
    assert "already ended: cancelled" in res.stdout


def test_large_bundle_is_staged_in_chunks_once(tmp_path: Path, home: Path) -> None:
    write_workflow(tmp_path / "wf", "import os\n\ndef main():\n    return os.path.getsize('blob.bin')\n")
    (tmp_path / "wf" / "blob.bin").write_bytes(os.urandom(CHUNK_BYTES + 1_000_000))
    t = LocalTransport()
    calls = Tally.attach(t).calls
    run = api.submit(tmp_path / "wf", "local", transport=t, wait=True)
    assert run.result(tmp_path / "r") == CHUNK_BYTES + 1_000_000
    assert calls["stage"] == 2 and calls["launch"] == 1 and calls["probe"] == 1  # staged first, then one launch
    assert len(list((home / "cache").glob("*.tar.gz"))) == 1
    assert list((home / "cache" / ".staging").iterdir()) == []
    t2 = LocalTransport()
    calls2 = Tally.attach(t2).calls
    run2 = api.submit(tmp_path / "wf", "local", transport=t2)
    assert calls2["stage"] == 0 and calls2["launch"] == 1 and calls2["probe"] == 0
    run2.wait()
    t.close()
    t2.close()


def test_results_resume_after_the_client_dies(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", (
        "import os\n\ndef main():\n    out = os.environ['GCBUNDLE_OUTPUT_DIR']\n"
        f"    for i in range(3):\n        with open(os.path.join(out, f'part{{i}}.bin'), 'wb') as f:\n            "
        f"f.write(os.urandom({CHUNK_BYTES // 2 + 12345}))\n"
        "    return 'done'\n"
    ))
    run = api.submit(wf, "local", wait=True)

    class Dies(LocalTransport):
        chunks = 0

        def call(self, task: str, **fields: object) -> object:
            if task == "results_chunk":
                if self.chunks >= 1:
                    raise KeyboardInterrupt("client killed")
                self.chunks += 1
            return super().call(task, **fields)

    dying = Run = api.Run(run.id, "local", transport=Dies())
    with pytest.raises(KeyboardInterrupt):
        dying.results(tmp_path / "res")
    partial = tmp_path / "res" / f".{run.id}.partial"
    assert partial.is_dir() and not (tmp_path / "res" / run.id).exists()
    t = LocalTransport()
    calls = Tally.attach(t).calls
    fetched = api.Run(run.id, "local", transport=t).results(tmp_path / "res")
    assert fetched.fetched_bytes < fetched.bytes  # resumed, not restarted
    assert calls["results_chunk"] == -(-fetched.bytes // CHUNK_BYTES) - 1
    assert not partial.exists()
    import hashlib
    listing = json.loads((home_results := fetched.path / ".gcbundle-results.json").read_text())
    assert listing["complete"] and home_results.is_file()
    for i in range(3):
        assert (fetched.path / "outputs" / f"part{i}.bin").stat().st_size == CHUNK_BYTES // 2 + 12345
    del Run, hashlib


def test_logs_follow_streams_until_the_run_ends(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", (
        "import time\nfrom parsl.config import Config\nfrom parsl.executors import ThreadPoolExecutor\n\n"
        "config = Config(executors=[ThreadPoolExecutor(max_threads=1)])\n\n"
        "def main():\n    for i in range(4):\n        print(f'tick {i}', flush=True)\n        time.sleep(0.7)\n"
    ))
    run = api.submit(wf, "local")
    res = CliRunner().invoke(main, ["logs", run.id, "--name", "stdout", "--follow"])
    assert res.exit_code == 0, res.output
    assert [line for line in res.stdout.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(4)]
    assert run.status()["state"] == "succeeded"
