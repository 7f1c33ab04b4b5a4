"""Results that any number of files, a full disk, two fetches at once or a
user's own files in the folder cannot break. Real runs on the local endpoint."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import api, protocol, results
from bundle.cli import main
from bundle.errors import ResultsError
from bundle.transport import Tally
from bundle.transport.local import LocalTransport
from login_node import results as login_results
from tests.conftest import write_workflow

MANY = '''import json, os
out = os.environ["GCBUNDLE_OUTPUT_DIR"]
n = json.loads(os.environ.get("GCBUNDLE_ARGS") or "{}").get("n", 10)
for d in range(0, n, 1000):
    os.makedirs(os.path.join(out, f"d{d // 1000:03d}"))
for i in range(n):
    with open(os.path.join(out, f"d{i // 1000:03d}", f"file-{i:06d}.txt"), "w") as f:
        f.write(str(i))
'''


def _run_with_files(tmp_path: Path, t: LocalTransport, n: int) -> api.Run:
    wf = write_workflow(tmp_path / "many", MANY)
    run = api.submit(wf, "local", mode="script", args={"n": n}, transport=t, wait=True)
    assert run.last_state["state"] == "succeeded", run.last_state
    return run


@pytest.mark.slow
def test_eighty_thousand_files_come_back_through_a_paged_listing(tmp_path: Path) -> None:
    with LocalTransport() as t:
        run = _run_with_files(tmp_path, t, 80_000)
        calls = Tally.attach(t).calls
        fetched = run.results(tmp_path / "res")
        pages = calls["results_manifest"]
    assert pages >= 2, "one reply would be over the service's 10 MiB limit"
    out = fetched.path / "outputs"
    assert sum(1 for _ in out.rglob("file-*.txt")) == 80_000
    assert (out / "d079" / "file-079999.txt").read_text() == "79999"
    assert fetched.files >= 80_000


def test_a_listing_in_many_pages_is_joined_and_checked_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before the worker forks: it serves pages of ~3 files
    monkeypatch.setattr(login_results, "LISTING_PAGE_BYTES", 400)
    with LocalTransport() as t:
        run = _run_with_files(tmp_path, t, 30)
        calls = Tally.attach(t).calls
        fetched = run.results(tmp_path / "res")
        assert calls["results_manifest"] >= 10
    assert sum(1 for _ in (fetched.path / "outputs").rglob("file-*.txt")) == 30


@pytest.fixture
def finished(tmp_path: Path) -> api.Run:
    with LocalTransport() as t:
        run = _run_with_files(tmp_path, t, 20)
    return api.get_run(run.id)


def test_the_announced_total_is_checked_against_free_disk_first(
    finished: api.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for a nearly full disk (filling the real one would hurt the shared machine):
    # the file system reports 10 bytes free.
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(results.shutil, "disk_usage", lambda path: usage(100, 90, 10))
    dest = tmp_path / "res"
    with pytest.raises(ResultsError, match="free"):
        finished.results(dest)
    assert not (dest / finished.id).exists()
    assert not any(p.is_file() and p.stat().st_size for p in dest.rglob("*")), "nothing downloaded"


def test_two_fetches_of_one_run_into_one_folder_exclude_each_other(finished: api.Run, tmp_path: Path) -> None:
    dest = tmp_path / "res"
    dest.mkdir()
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
            "print('held', flush=True)\ntime.sleep(30)\n")
    lock = dest / f".{finished.id}.lock"
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        res = CliRunner().invoke(main, ["results", finished.id, "-o", str(dest)])
        assert res.exit_code == 9 and f"pid {holder.pid}" in res.output and "wait for it" in res.output, res.output
        assert not (dest / finished.id).exists()
    finally:
        holder.kill()
        holder.wait(10)
    fetched = finished.results(dest)  # the holder is gone: the lock goes with it
    assert (fetched.path / "result.json").is_file() or (fetched.path / "state.json").is_file()
    assert not (dest / f".{finished.id}.lock").exists()


def test_a_refetch_updates_the_package_and_keeps_the_users_files(finished: api.Run, tmp_path: Path, home: Path) -> None:
    dest = tmp_path / "res"
    first = finished.results(dest)
    mine = first.path / "my-notes.md"
    mine.write_text("what I found")
    (first.path / "outputs" / "my-plot.png").write_bytes(b"png")
    gone_later = first.path / "outputs" / "d000" / "file-000001.txt"
    assert gone_later.is_file()
    # the package changes on the login node: a file added, one removed
    out = home / "runs" / finished.id / "outputs"
    (out / "late.txt").write_text("late")
    (out / "d000" / "file-000001.txt").unlink()
    second = finished.results(dest)
    assert second.manifest_sha256 != first.manifest_sha256 and second.fetched_bytes > 0
    assert (second.path / "outputs" / "late.txt").read_text() == "late"
    assert mine.read_text() == "what I found" and (second.path / "outputs" / "my-plot.png").read_bytes() == b"png"
    assert not gone_later.exists(), "the earlier package's own file, unchanged, goes with it"
    assert json.loads((second.path / ".gcbundle-results.json").read_text())["manifest_sha256"] == second.manifest_sha256
    assert [p.name for p in dest.iterdir()] == [finished.id], "no partial, old or lock folder left beside it"


def test_a_protocol_2_login_node_gets_one_whole_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older login node refuses the paged request (protocol 3) and the client asks for the whole listing."""
    with LocalTransport() as t:
        run = _run_with_files(tmp_path, t, 5)
    monkeypatch.setattr(protocol, "PROTOCOL", 2)  # stand-in for an older install: patched before its worker forks
    with LocalTransport() as t:
        tally = Tally.attach(t)
        fetched = api.Run(run.id, "local", transport=t).results(tmp_path / "res")
        assert tally.calls["results_manifest"] == 2, "one refused page request, one whole listing"
    assert sum(1 for _ in (fetched.path / "outputs").rglob("file-*.txt")) == 5
