"""Caches heal, nothing is orphaned, nothing is invented (issue: trust nothing
that crosses the wire). Real parts throughout: the local endpoint's real
``execute_task``, real detached drivers, real SQLite and real signals; the
one stand-in is named where it is used."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundle import api, packcache, tempdirs
from bundle.cli import main
from bundle.contracts import check_digest, check_run_id
from bundle.errors import (
    BundleError,
    GcbundleError,
    ManifestError,
    ProtocolMismatch,
    RegistryError,
    RegistryLocked,
    RemoteError,
    RunNotFound,
    RunStateError,
    UsageError,
)
from bundle.manifest import Manifest
from bundle.pack import pack
from bundle.registry import Registry
from bundle.transport import Tally
from bundle.transport import local as local_endpoint
from bundle.transport.local import LocalTransport
from login_node.procs import run_processes, sweep
from tests.conftest import write_workflow
from tests.faults import wait_for
from tests.hostile import manifest_for, reg, write_tar
from tests.registry_rows import row

#: A script-mode workflow: no DFK, so a run takes a couple of seconds. It
#: sleeps for the seconds in its `s` argument (a run to cancel or lose).
SCRIPT = '''import json, os, time
time.sleep(float(json.loads(os.environ.get("GCBUNDLE_ARGS") or "{}").get("s", 0)))
print("done")
'''


def _wf(tmp_path: Path, name: str = "wf") -> Path:
    return write_workflow(tmp_path / name, SCRIPT)


@pytest.fixture
def t() -> Any:
    transport = LocalTransport()
    yield transport
    transport.close()


def _sweep(run_id: str) -> None:
    sweep(run_id, grace=1.0)


# -- caches heal ----------------------------------------------------------------------

def test_damaged_login_node_cache_entry_is_dropped_and_the_bundle_resent_once(
    tmp_path: Path, home: Path, t: LocalTransport
) -> None:
    wf = _wf(tmp_path)
    first = api.submit(wf, "local", mode="script", transport=t, wait=True)
    assert first.last_state["state"] == "succeeded"
    [entry] = (home / "cache").glob("*.tar.gz")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bad byte on the login node's disk
    entry.write_bytes(bytes(data))
    calls = Tally.attach(t).calls
    launches = calls["launch"]
    # the registry says "cached": no upload first
    second = api.submit(wf, "local", mode="script", transport=t, wait=True)
    assert second.last_state["state"] == "succeeded", second.last_state
    assert calls["launch"] - launches == 2, "one launch found the entry bad, the second carried the bundle again"
    assert entry.read_bytes() != bytes(data), "the entry was replaced by a good copy"
    third = api.submit(wf, "local", mode="script", transport=t)  # and it stays healed: one launch
    assert calls["launch"] - launches == 3
    third.wait()
    entry.write_bytes(bytes(data))  # damaged again: a resume heals it the same way
    resumed = api.resume(first.id, transport=t, wait=True)
    assert resumed.last_state["state"] == "succeeded", resumed.last_state
    assert calls["launch"] - launches == 5


def test_damaged_archive_cache_is_detected_by_digest_and_rebuilt(tmp_path: Path) -> None:
    wf = _wf(tmp_path)
    one = pack(wf, tmp_path / "one.tar.gz", mode="script")
    [cached] = (packcache.cache_dir() / "archives").glob("*.tar.gz")
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte off: a size check alone would reuse it
    cached.write_bytes(bytes(data))
    two = pack(wf, tmp_path / "two.tar.gz", mode="script")
    assert two.archive_sha256 == one.archive_sha256
    assert (tmp_path / "two.tar.gz").read_bytes() == (tmp_path / "one.tar.gz").read_bytes()
    assert cached.read_bytes() == (tmp_path / "one.tar.gz").read_bytes(), "the cache holds a good copy again"


def test_pack_writes_the_archive_for_the_user_alone(tmp_path: Path) -> None:
    wf = _wf(tmp_path)
    old = os.umask(0o022)
    try:
        out = tmp_path / "b.tar.gz"
        out.write_bytes(b"old")
        os.chmod(out, 0o644)
        pack(wf, out, mode="script")
        assert out.stat().st_mode & 0o777 == 0o600
        again = tmp_path / "again.tar.gz"
        pack(wf, again, mode="script")  # from the archive cache
        assert again.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


MALFORMED_MANIFESTS = {
    "deep nesting in args": lambda m: json.dumps({**m, "args": {"x": None}}).replace("null", _deep(100_000)).encode(),
    "deep nesting in config": lambda m: (
        json.dumps({**m, "config": {"kind": "site", "x": None}}).replace("null", _deep(50_000)).encode()
    ),
    "huge integer": lambda m: json.dumps({**m, "args": {"x": 0}}).replace('"x": 0', '"x": ' + "9" * 5000).encode(),
    "huge size": lambda m: json.dumps(m).replace('"size": 25', '"size": ' + "9" * 5000).encode(),
    "lone surrogate": lambda m: json.dumps({**m, "args": {"x": "\ud800"}}).encode(),
    "files is an object": lambda m: json.dumps({**m, "files": {"a": 1}}).encode(),
    "file entry is a number": lambda m: json.dumps({**m, "files": [5]}).encode(),
    "mode is a list": lambda m: json.dumps({**m, "mode": ["function"]}).encode(),
    "entry is a number": lambda m: json.dumps({**m, "entry": 7}).encode(),
    "args is a list": lambda m: json.dumps({**m, "args": [1]}).encode(),
    "config is a string": lambda m: json.dumps({**m, "config": "site"}).encode(),
    "config path is an object": lambda m: json.dumps({**m, "config": {"kind": "module", "path": {}}}).encode(),
    "client values are numbers": lambda m: json.dumps({**m, "client": {"python": 3}}).encode(),
    "digest is a number": lambda m: json.dumps({**m, "digest": 5}).encode(),
    "the whole is a list": lambda m: b"[]",
    "not UTF-8": lambda m: b"\xff\xfe{}",
    "empty": lambda m: b"",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_MANIFESTS))
def test_any_malformed_manifest_is_a_manifest_error(case: str) -> None:
    m = manifest_for({"workflow.py": b"def main():\n    return 1\n"})
    m.pop("digest")
    with pytest.raises(ManifestError):
        Manifest.loads(MALFORMED_MANIFESTS[case](m))


@pytest.mark.parametrize("case", ["deep nesting in args", "huge integer", "lone surrogate", "deep nesting in config"])
def test_a_malformed_manifest_sent_to_the_login_node_leaves_nothing(
    case: str, tmp_path: Path, home: Path, t: LocalTransport
) -> None:
    wf = b"def main():\n    return 1\n"
    m = manifest_for({"workflow.py": wf})
    m.pop("digest")
    members = [reg("gcbundle.json", MALFORMED_MANIFESTS[case](m)), reg("workflow.py", wf)]
    bundle = write_tar(tmp_path / "b.tar.gz", members)
    raw = bundle.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    with pytest.raises(BundleError):
        t.call("launch", run_id="0123456789ab", digest="a" * 64, archive_sha256=sha, bundle=raw, spec={})
    with pytest.raises(BundleError):  # in chunks too: the staging area is emptied
        t.call("stage", digest="a" * 64, archive_sha256=sha, size=len(raw), index=0, data=raw)
    assert list((home / "cache").rglob("*")) == [home / "cache" / ".staging"]
    assert list((home / "runs").iterdir()) == []


# -- nothing orphaned -----------------------------------------------------------------

class _DiesAtLaunch(LocalTransport):
    """The client is stopped at the launch: before the task goes out, or after it went but before the answer."""

    def __init__(self, after_send: bool) -> None:
        super().__init__()
        self.after_send = after_send

    def call(self, task: str, **fields: Any) -> Any:
        if task == "launch":
            if self.after_send:
                super().call(task, **fields)
            raise KeyboardInterrupt
        return super().call(task, **fields)


@pytest.mark.parametrize("after_send", [False, True])
def test_a_client_stopped_mid_launch_leaves_a_row_that_status_resolves(
    after_send: bool, tmp_path: Path, home: Path
) -> None:
    wf = _wf(tmp_path)
    dying = _DiesAtLaunch(after_send)
    try:
        with pytest.raises(KeyboardInterrupt):
            api.submit(wf, "local", mode="script", transport=dying)
    finally:
        dying.close()
    [rec] = Registry().list()
    assert rec.state == "launching"
    with LocalTransport() as t:
        run = api.Run(rec.run_id, "local", transport=t)
        if after_send:  # the login node has it: status learns its real state
            st = run.wait(timeout=60)
            assert st["state"] == "succeeded"
            assert Registry().get(rec.run_id).state == "succeeded"
            return
        st = run.status()
        assert st["state"] == "launching" and "not reached the login node" in st["detail"]
        with pytest.raises(RunStateError, match="has not reached the login node"):
            run.cancel()
        long_ago = time.time() - api.launch_grace() - 1  # it is not coming
        with sqlite3.connect(Registry().path) as db:
            db.execute("UPDATE runs SET submitted = ? WHERE run_id = ?", (long_ago, rec.run_id))
        st = run.status()
        assert st["state"] == "unlaunched" and "never received" in st["detail"]
        assert run.cancel()["already"] is True
        assert Registry().get(rec.run_id).state == "unlaunched"


def test_a_launch_the_login_node_refuses_leaves_no_row(tmp_path: Path, t: LocalTransport) -> None:
    run = _start_sleeping(tmp_path, t)
    try:
        with pytest.raises(GcbundleError, match="still running"):  # the login node refuses to resume a running run
            api.resume(run.id, transport=t)
        assert [r.run_id for r in Registry().list()] == [run.id]
    finally:
        run.cancel(grace=2)
        _sweep(run.id)


def _hold_registry_lock(path: Path) -> subprocess.Popen[str]:
    code = ("import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_registry_names_its_holder_and_says_wait(tmp_path: Path) -> None:
    reg_ = Registry()
    proc = _hold_registry_lock(reg_.path)
    try:
        with pytest.raises(RegistryLocked) as err:
            Registry(timeout=0.3).list()
        assert f"pid {proc.pid}" in err.value.message and "wait" in (err.value.hint or "")
        assert "not damaged" in err.value.hint and "move" not in err.value.hint
        res = CliRunner(env={"GCBUNDLE_REGISTRY_TIMEOUT": "0.3"}).invoke(main, ["list", "--offline"])
        assert res.exit_code == 8 and "locked by pid" in res.output and "Traceback" not in res.output
    finally:
        proc.kill()
        proc.wait(10)
    assert Registry().list() == []  # untouched, usable again


def test_a_damaged_registry_says_how_to_rebuild_it(tmp_path: Path) -> None:
    path = Registry().path
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError) as err:
        Registry()
    assert not isinstance(err.value, RegistryLocked)
    assert "damaged" in err.value.message and "list --endpoint" in err.value.hint
    res = CliRunner().invoke(main, ["list", "--offline"])
    assert res.exit_code == 8 and "damaged" in res.output and "Traceback" not in res.output
    assert path.read_bytes() == b"this is not a database" * 100, "gcbundle never moves or rewrites it by itself"


def test_list_endpoint_adopts_the_login_node_runs_and_rebuilds_a_lost_registry(tmp_path: Path, home: Path) -> None:
    wf = _wf(tmp_path)
    with LocalTransport() as t:
        done = api.submit(wf, "local", mode="script", transport=t, wait=True)
        long = _start_sleeping(tmp_path, t)
    Registry().path.unlink()  # the row is lost (another laptop, a wiped home)
    runner = CliRunner()
    res = runner.invoke(main, ["list", "--endpoint", "local", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["data"]
    assert {r["run_id"]: r["state"] for r in data} == {done.id: "succeeded", long.id: "running"}
    assert "adopted 2 runs" in res.stderr
    try:
        res = runner.invoke(main, ["cancel", long.id[:6], "--grace", "5"])  # adopted: it can be cancelled
        assert res.exit_code == 0 and "cancelled" in res.output, res.output
        wait_for(lambda: run_processes(long.id) == [], timeout=15, what="no process of the cancelled run")
        res = runner.invoke(main, ["list", "--endpoint", "local"])
        assert "adopted" not in res.stderr and long.id in res.stdout
    finally:
        _sweep(long.id)


def test_list_refreshes_unfinished_runs_with_one_task_per_endpoint(tmp_path: Path) -> None:
    wf = _wf(tmp_path)
    with LocalTransport() as t:
        runs = [api.submit(wf, "local", mode="script", transport=t) for _ in range(3)]
        for run in runs:
            run.wait(timeout=60)
    reg_ = Registry()
    for run in runs:
        reg_.update(run.id, state="running")  # as a client that never asked again would have it
    with LocalTransport() as t:
        tally = Tally.attach(t)
        listing = api.listing(registry=reg_, transports={"local": t})
        assert tally.calls["runs"] == 1 and tally.sent == 1
    assert {r.run_id: r.state for r in listing.runs} == {r.id: "succeeded" for r in runs}
    with LocalTransport() as t:  # nothing unfinished: no task at all
        tally = Tally.attach(t)
        api.listing(registry=reg_, transports={"local": t})
        assert tally.sent == 0


def _old_login_node(req: Any) -> Any:
    """What a protocol-2 login node does with a `runs` task: it has no such function."""
    raise AttributeError("module 'login_node.tasks' has no attribute 'runs'")


def test_an_old_login_node_without_the_runs_task_is_told_to_upgrade(
    t: LocalTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for an old install: the endpoint runs a function that fails as
    # a missing `login_node.tasks.runs` does there (the local endpoint looks
    # task functions up through its module's task_function).
    real = local_endpoint.task_function
    monkeypatch.setattr(local_endpoint, "task_function", lambda name: _old_login_node if name == "runs" else real(name))
    with pytest.raises(ProtocolMismatch, match="upgrade gcbundle on the login node"):
        t.call("runs", after=None)
    res = CliRunner().invoke(main, ["list", "--endpoint", "local"])
    assert res.exit_code == 7 and "no `runs` task" in res.output, res.output


def _start_sleeping(tmp_path: Path, t: LocalTransport, seconds: float = 120) -> api.Run:
    run = api.submit(_wf(tmp_path, "sleep"), "local", mode="script", args={"s": seconds}, transport=t)
    wait_for(lambda: run.status()["state"] == "running", timeout=30, what="running")
    return run


@pytest.mark.parametrize("damage", ["missing", "not json", "a list", "a state that is a dict"])
def test_a_run_without_a_readable_state_is_unknown_and_cancel_still_stops_it(damage: str, tmp_path: Path, home: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCBUNDLE_HEARTBEAT_SECONDS", "600")  # the driver must not rewrite state.json during the test
    with LocalTransport() as t:
        run = _start_sleeping(tmp_path, t)
        try:
            state_file = home / "runs" / run.id / "state.json"
            if damage == "missing":
                state_file.unlink()
            else:
                damaged = {
                    "not json": "{\"state\": ",
                    "a list": "[1, 2]",
                    "a state that is a dict": '{"state": {"x": 1}}',
                }
                state_file.write_text(damaged[damage])
            st = run.status()
            assert st["state"] == "unknown" and "state.json" in st["detail"], st
            assert "1970" not in json.dumps(st) and "staged" not in json.dumps(st)
            res = CliRunner().invoke(main, ["status", run.id])
            assert "unknown" in res.output and "state.json" in res.output
            assert run_processes(run.id), "the driver still runs"
            reply = run.cancel(grace=5)
            assert reply["state"]["state"] == "cancelled", reply
            assert run_processes(run.id) == []
        finally:
            _sweep(run.id)


def test_a_run_deleted_during_status_wait_is_reported_gone(tmp_path: Path, home: Path) -> None:
    with LocalTransport() as t:
        run = _start_sleeping(tmp_path, t)
        try:
            threading.Timer(1.0, shutil.rmtree, args=(home / "runs" / run.id,), kwargs={"ignore_errors": True}).start()
            res = CliRunner().invoke(main, ["status", run.id, "--wait"])
            assert res.exit_code == 5 and "is gone" in res.output and "Traceback" not in res.output, res.output
            assert Registry().get(run.id).state == "gone"
        finally:
            _sweep(run.id)


@pytest.mark.parametrize("value", ["0123456789ab\n", "0123456789ab\r", " 0123456789ab", "0123456789ab\x00"])
def test_ids_are_matched_whole(value: str, t: LocalTransport) -> None:
    with pytest.raises(RunNotFound):
        check_run_id(value)
    with pytest.raises(RunNotFound):
        Registry().get(value)
    with pytest.raises(UsageError):
        check_digest("a" * 64 + value[-1])
    with pytest.raises(RunNotFound):
        t.call("status", run_id=value)


def test_a_killed_clients_temporary_folders_are_swept_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    code = ("import os\nfrom bundle import tempdirs\n"
            "with tempdirs.workdir('submit') as d:\n    (d / 'bundle.tar.gz').write_bytes(b'x' * 1000)\n"
            "    print(d, flush=True)\n    os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    left = Path(proc.stdout.strip())
    assert proc.returncode == -9 and left.is_dir() and left.parent == tmp_path
    live = tmp_path / f"gcbundle-{os.getpid()}-{tempdirs._start_time(os.getpid())}-submit-x"  # a client still at work
    live.mkdir()
    (tmp_path / "gcbundle-not-ours").mkdir()
    res = CliRunner().invoke(main, ["sites"])  # any command: the CLI sweeps when it starts
    assert res.exit_code == 0 and not left.exists()
    assert live.is_dir() and (tmp_path / "gcbundle-not-ours").is_dir()


# -- secrets stay home ----------------------------------------------------------------

SECRETS = [
    ".aws/credentials", ".aws/config", ".kube/config", ".docker/config.json",
    ".config/gcloud/application_default_credentials.json",
    "keys/application_default_credentials.json", "my-project-service-account.json", "gcp_service_account_key.json",
    ".npmrc", ".vault-token", ".s3cfg", ".boto", ".my.cnf", "host.keytab", ".gnupg/pubring.kbx", "prod.env", ".envrc",
    "ID_RSA", ".ENV", "Credentials.JSON", "sub/.Netrc",
]
KEPT = ["environment.yml", "keynote.txt", "envoy.py", "data/config.json", "docs/aws.md"]


def test_the_secret_list_covers_cloud_and_cluster_credentials_case_insensitively_and_symlink_targets(
    tmp_path: Path,
) -> None:
    root = tmp_path / "wf"
    write_workflow(root, "def main():\n    return 1\n")
    for rel in SECRETS + KEPT:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "notes.txt").symlink_to(root / ".aws" / "credentials")  # judged by its target
    (root / "readme.txt").symlink_to(root / "prod.env")
    res = pack(root, tmp_path / "b.tar.gz")
    packed = {f.path for f in res.manifest.files}
    assert packed == {"workflow.py", *KEPT}, packed
    reasons = dict(res.excluded)
    secrets = ["my-project-service-account.json", ".npmrc", "host.keytab", "prod.env", "ID_RSA"]
    for rel in [*secrets, "notes.txt", "readme.txt"]:  # the last two: symlinks to secrets
        assert "secret" in reasons[rel], (rel, reasons.get(rel))
    assert "secret" in reasons[".aws/"] and "secret" in reasons[".gnupg/"]


# -- hostile task arguments -------------------------------------------------------------

HOSTILE_ARGS = [
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"site": "slurm"}}),
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"site": {"text": 5}}}),
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"site": {"text": "", "params": [1]}}}),
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"args": [1, 2]}}),
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"args": {"not an identifier": 1}}}),
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"params": "account=x"}}),
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"resumed_from": 5}}),
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"inherit": "yes"}}),
    ("launch", {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {"surprise": 1}}),
    ("launch",
     {"run_id": "0123456789ab", "digest": "a" * 64, "spec": {}, "bundle": "not bytes", "archive_sha256": "a" * 64}),
    ("status", {"run_id": "0123456789ab", "wait": "10"}),
    ("status", {"run_id": "0123456789ab", "wait": 1e9}),
    ("status", {"run_id": ["0123456789ab"]}),
    ("logs", {"run_id": "0123456789ab", "name": 5}),
    ("logs", {"run_id": "0123456789ab", "tail": "yes"}),
    ("logs", {"run_id": "0123456789ab", "offset": -1}),
    ("logs", {"run_id": "0123456789ab", "max_bytes": 10**12}),
    ("results_manifest", {"run_id": "0123456789ab", "partial": "yes"}),
    ("results_manifest", {"run_id": "0123456789ab", "page": -1}),
    ("results_manifest", {"run_id": "0123456789ab", "page": "0"}),
    ("results_manifest", {"run_id": "0123456789ab", "page": 1, "manifest_sha256": "../x"}),
    ("results_chunk", {"run_id": "0123456789ab", "manifest_sha256": 5, "index": 0}),
    ("results_chunk", {"run_id": "0123456789ab", "manifest_sha256": "a" * 64, "index": True}),
    ("cancel", {"run_id": "0123456789ab", "grace": "30"}),
    ("cancel", {"run_id": "0123456789ab", "grace": 10**9}),
    ("doctor", {"site": "slurm"}),
    ("doctor", {"site": {"name": [], "text": "x"}}),
    ("runs", {"run_ids": "0123456789ab"}),
    ("runs", {"run_ids": ["../../etc"]}),
    ("runs", {"after": "../x"}),
    ("runs", {"after": None, "limit": 0}),
    ("runs", {"after": None, "limit": "all"}),
    ("probe", {"digests": "a" * 64}),
    ("probe", {"digests": [], "bases": "a" * 64}),
    ("stage", {"digest": "a" * 64, "archive_sha256": "a" * 64, "size": "10", "index": 0, "data": b"x" * 10}),
    ("stage", {"digest": "a" * 64, "archive_sha256": "a" * 64, "size": 10, "index": 0, "data": "x" * 10}),
]


@pytest.mark.parametrize("task,fields", HOSTILE_ARGS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(HOSTILE_ARGS)])
def test_every_field_of_a_tasks_arguments_is_checked_at_the_edge(
    task: str, fields: dict[str, Any], t: LocalTransport, home: Path, tmp_path: Path
) -> None:
    """A hostile client's arguments: a gcbundle error naming the field, from the login node's
    own checks (never an exception of another kind, which would arrive as a RemoteError)."""
    run_dir = home / "runs" / "0123456789ab"  # a finished run, as launch and the driver leave it
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text('{"run_id": "0123456789ab", "digest": "' + "a" * 64 + '"}')
    (run_dir / "state.json").write_text('{"run_id": "0123456789ab", "state": "succeeded", "updated": 1.0}')
    (run_dir / "driver.log").write_text("log")
    runs_before = set((home / "runs").iterdir())
    with pytest.raises(GcbundleError) as err:
        t.call(task, **fields)
    assert not isinstance(err.value, RemoteError), err.value
    assert set((home / "runs").iterdir()) == runs_before, "no run directory made"
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == ["driver.log", "run.json", "state.json"], "nothing written into the run"


def test_list_shows_recorded_states_with_a_note_when_an_endpoint_cannot_be_asked(tmp_path: Path) -> None:
    Registry().add(row("00000000000a", endpoint="nosuchalias"))
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code == 0, res.output
    assert "00000000000a  running" in res.stdout
    assert "gcbundle: note: could not refresh 1 run on nosuchalias" in res.stderr
    res = CliRunner().invoke(main, ["list", "--offline"])
    assert res.exit_code == 0 and "note" not in res.stderr and "00000000000a" in res.stdout
