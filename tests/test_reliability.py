"""Faults that must be survived: killed drivers, reboots, killed workers and
clients, full disks, many submits at once. Everything here is real: real
drivers, DFKs and HTEX workers on the local endpoint, real signals."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bundle import api, archive
from bundle.errors import RunStateError, TransportError
from bundle.limits import CHUNK_BYTES
from bundle.registry import Registry
from bundle.transport.local import LocalTransport
from login_node.procs import run_processes
from tests.conftest import write_workflow
from tests.faults import executions, kill_driver, parsl_processes_under, start_checkpoint_run, wait_for, worker_pid


def test_killed_driver_reads_lost_and_resume_reuses_checkpoints(tmp_path: Path) -> None:
    run, marks, release = start_checkpoint_run(tmp_path)
    assert run.status()["state"] == "running"
    kill_driver(run)
    t0 = time.monotonic()
    st = wait_for(lambda: (s := run.status())["state"] == "lost" and s, timeout=10, what="lost")
    assert time.monotonic() - t0 <= 2 * 1.0 + 1.0, "lost within two heartbeat periods"
    assert "last heartbeat" in st["detail"] and st["host"] in st["detail"] and "resume" in st["hint"]
    wait_for(lambda: run_processes(run.id) == [], timeout=15, what="orphans reaped")
    release.touch()
    new = api.resume(run.id, wait=True)
    assert new.last_state["state"] == "succeeded", new.last_state
    assert new.result(tmp_path / "res") == 61
    assert executions(marks) == {0: 1, 1: 1, 2: 1, 3: 1}, "completed cached apps must not run again"
    assert new.last_state["tasks"]["from_checkpoint"] == 4
    assert new.last_state["resumed_from"] == run.id
    assert Registry().get(new.id).resumed_from == run.id
    assert run_processes(new.id) == []
    # the killed run's interchange (renamed by setproctitle) is gone too
    wait_for(lambda: parsl_processes_under(tmp_path) == [], timeout=15, what="no interchange or worker pool left")


def test_reboot_kills_everything_then_resume(tmp_path: Path) -> None:
    run, marks, release = start_checkpoint_run(tmp_path)
    kill_driver(run, everything=True)
    assert wait_for(lambda: run.status()["state"] == "lost", timeout=10, what="lost")
    assert run_processes(run.id) == []
    release.touch()
    new = api.resume(run.id[:6], wait=True)
    assert new.last_state["state"] == "succeeded"
    assert sum(executions(marks).values()) == 4
    wait_for(lambda: parsl_processes_under(tmp_path) == [], timeout=15, what="no interchange or worker pool left")


def test_resume_is_refused_while_running_and_after_a_code_change(tmp_path: Path) -> None:
    run, marks, release = start_checkpoint_run(tmp_path)
    with pytest.raises(RunStateError, match="still running"):
        api.resume(run.id)
    run.cancel(grace=10)
    wf = tmp_path / "wf" / "workflow.py"
    wf.write_text(wf.read_text().replace("return i * 10", "return i * 100"))
    with pytest.raises(RunStateError, match="changed since run"):
        api.resume(run.id)
    release.touch()
    new = api.resume(run.id, allow_changed=True, wait=True)
    assert new.last_state["state"] == "succeeded"
    # Parsl memoizes by app name and arguments, not by code: the old results
    # (i * 10) come back although step now returns i * 100. This is why a
    # changed workflow is refused by default.
    assert new.result(tmp_path / "r") == 61
    assert sum(executions(marks).values()) == 4


def test_local_worker_killed_while_staging_leaves_no_partial_cache_entry(tmp_path: Path, home: Path) -> None:
    write_workflow(tmp_path / "wf", "def main():\n    return 7\n")
    (tmp_path / "wf" / "blob.bin").write_bytes(os.urandom(CHUNK_BYTES + 3_000_000))

    class KillsDuringLastChunk(LocalTransport):
        def _run(self, task, req):  # type: ignore[no-untyped-def]
            if task == "stage" and req["index"] == 1:
                def kill() -> None:
                    time.sleep(0.01)  # while the chunk is in flight or being assembled
                    pid = worker_pid(self)
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                threading.Thread(target=kill).start()
            return super()._run(task, req)

    outcome = None
    try:
        api.submit(tmp_path / "wf", "local", transport=KillsDuringLastChunk())
        outcome = "completed"
    except TransportError as exc:
        outcome = "killed"
        assert "worker died" in str(exc)
    for entry in (home / "cache").glob("*.tar.gz"):
        archive.verify(entry)  # whatever is at a cache name is complete and valid
    if outcome == "killed":
        # The kill may also land after the last chunk was committed (the
        # worker is fast): then the entry is complete, as verified above.
        assert Registry().list() == []
    run = api.submit(tmp_path / "wf", "local", wait=True)
    assert run.last_state["state"] == "succeeded"
    assert len(list((home / "cache").glob("*.tar.gz"))) == 1


def test_client_killed_during_results_then_resumes(tmp_path: Path) -> None:
    size = CHUNK_BYTES + 999
    wf = write_workflow(tmp_path / "wf", (
        "import os\n\ndef main():\n    out = os.environ['GCBUNDLE_OUTPUT_DIR']\n"
        "    for i in range(5):\n"
        "        with open(os.path.join(out, f'p{i}.bin'), 'wb') as f:\n"
        f"            f.write(os.urandom({size}))\n"
    ))
    run = api.submit(wf, "local", wait=True)
    dest = tmp_path / "res"
    partial = dest / f".{run.id}.partial"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bundle.cli", "results", run.id, "-o", str(dest)], env=os.environ.copy()
    )

    def first_chunk_on_disk() -> bool:
        return partial.is_dir() and sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) > CHUNK_BYTES + 1

    wait_for(first_chunk_on_disk, timeout=60, poll=0.005, what="the first chunk on disk")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not (dest / run.id).exists()
    fetched = run.results(dest)
    assert fetched.fetched_bytes <= fetched.bytes - CHUNK_BYTES, "the chunks already on disk are not fetched again"
    for i in range(5):
        assert (fetched.path / "outputs" / f"p{i}.bin").stat().st_size == size
    assert json.loads((fetched.path / ".gcbundle-results.json").read_text())["complete"]


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    argv = ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def test_disk_full_while_writing_results_ends_failed_and_corrupts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = tmp_path / "small"
    if not _can_mount_tmpfs(small):
        pytest.skip("needs root and mount(8) to put GCBUNDLE_HOME on a 24 MiB tmpfs")
    try:
        monkeypatch.setenv("GCBUNDLE_HOME", str(small / "home"))
        wf = write_workflow(tmp_path / "wf", "import os\n\ndef main():\n    return os.urandom(40 * 1024 * 1024)\n")
        run = api.submit(wf, "local", wait=True)
        st = run.last_state
        assert st["state"] == "failed"
        assert "No space left on device" in st["error"]["message"]
        run_dir = small / "home" / "runs" / run.id
        assert json.loads((run_dir / "state.json").read_text())["state"] == "failed"
        assert not (run_dir / "result.pkl").exists()
        assert not [p for p in run_dir.iterdir() if p.name.startswith(".result")], "no temp file left"
        for entry in (small / "home" / "cache").glob("*.tar.gz"):
            archive.verify(entry)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=30)


LIGHT = (
    "from parsl import python_app\nfrom parsl.config import Config\nfrom parsl.executors import ThreadPoolExecutor\n\n"
    "config = Config(executors=[ThreadPoolExecutor(max_threads=2)])\n\n"
    "@python_app\ndef add(a, b):\n    return a + b\n\n"
    "def main(x=1):\n    return add(x, 1).result()\n"
)


def test_twenty_concurrent_submits_and_two_runs_of_one_bundle(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "wf", LIGHT)
    procs = [
        subprocess.Popen([sys.executable, "-m", "bundle.cli", "submit", str(wf), "--arg", f"x={i}", "--wait", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
        for i in range(20)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out)["data"])
    assert sorted(r["result"] for r in results) == list(range(1, 21))
    rows = Registry().list(100)
    assert len(rows) == 20 and all(r.state == "succeeded" for r in rows)
    assert len({r.digest for r in rows}) == 1
    assert len(list((home / "cache").glob("*.tar.gz"))) == 1
    assert [p for p in (home / "cache" / ".staging").iterdir()] == []
    assert len([p for p in (home / "runs").iterdir() if not p.name.startswith(".")]) == 20
    assert [p for p in (home / "runs").iterdir() if p.name.startswith(".")] == []
