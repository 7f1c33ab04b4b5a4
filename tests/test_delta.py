"""Delta uploads (protocol 2): after a small edit only the changed files travel, and
the login node rebuilds, checks and caches the whole bundle; an old login node,
a missing base or a hostile delta never gets a wrong bundle into the cache."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bundle import api, archive, protocol
from bundle.errors import BundleError, ProtocolMismatch
from bundle.limits import CHUNK_BYTES
from bundle.transport.local import LocalTransport
from login_node import tasks
from login_node.cache import Cache
from login_node.rundir import Home
from tests.conftest import write_workflow
from tests.hostile import manifest_for, manifest_member, reg, valid_bundle, write_tar

#: (task, serialized bytes) of every task the client sends.
Sent = list[tuple[str, int]]
WORKFLOW = "import os\n\nVERSION = {v}\n\ndef main():\n    return [VERSION, os.path.getsize('blob.bin')]\n"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    """(task, serialized bytes) of every task the client sends."""
    out: Sent = []
    real = LocalTransport.__init__

    def observed(self: LocalTransport) -> None:
        real(self)
        self.observe(lambda task, nbytes: out.append((task, nbytes)))

    monkeypatch.setattr(LocalTransport, "__init__", observed)
    return out


def _workflow(root: Path) -> Path:
    write_workflow(root, WORKFLOW.format(v=1))
    (root / "blob.bin").write_bytes(os.urandom(CHUNK_BYTES + 1_000_000))  # too big to travel inside the launch task
    return root


def _submit(root: Path) -> api.Run:
    with LocalTransport() as t:
        run = api.submit(root, "local", transport=t)
        run.wait()
    return run


def test_a_small_edit_sends_a_small_delta_and_the_run_sees_it(tmp_path: Path, home: Path, sent: Sent) -> None:
    root = _workflow(tmp_path / "wf")
    first = _submit(root)
    assert first.result(tmp_path / "r1") == [1, CHUNK_BYTES + 1_000_000]
    whole = sum(n for task, n in sent if task == "stage")
    (root / "workflow.py").write_text(WORKFLOW.format(v=2))
    sent.clear()
    second = _submit(root)
    stage = [n for task, n in sent if task == "stage"]
    assert len(stage) == 1 and sum(stage) < 20_000 < whole // 100
    assert second.result(tmp_path / "r2") == [2, CHUNK_BYTES + 1_000_000]
    digest = second.record.digest
    assert digest != first.record.digest
    cached = Cache(Home.default()).path(digest)
    assert archive.verify(cached, expected_digest=digest).digest == digest
    assert list((home / "cache" / ".staging").iterdir()) == []


def test_no_delta_when_the_login_node_no_longer_has_the_base(tmp_path: Path, home: Path, sent: Sent) -> None:
    root = _workflow(tmp_path / "wf")
    first = _submit(root)
    Cache(Home.default()).path(first.record.digest).unlink()
    (root / "workflow.py").write_text(WORKFLOW.format(v=3))
    sent.clear()
    second = _submit(root)
    assert len([1 for task, _ in sent if task == "stage"]) == 2  # the whole bundle, in two chunks
    assert second.result(tmp_path / "r") == [3, CHUNK_BYTES + 1_000_000]


def test_an_older_login_node_gets_the_whole_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sent: Sent) -> None:
    """A protocol-1 login node ignores ``bases`` and refuses protocol-2 requests: the client sends everything."""
    monkeypatch.setattr(protocol, "PROTOCOL", 1)  # read by check_request on the "login node"
    monkeypatch.setattr(tasks, "PROTOCOL", 1)
    root = _workflow(tmp_path / "wf")
    _submit(root)
    (root / "workflow.py").write_text(WORKFLOW.format(v=4))
    sent.clear()
    second = _submit(root)
    assert len([1 for task, _ in sent if task == "stage"]) == 2
    assert second.result(tmp_path / "r") == [4, CHUNK_BYTES + 1_000_000]
    with LocalTransport() as t, pytest.raises(ProtocolMismatch, match="upgrade gcbundle on the login node"):
        t.call("stage", digest="0" * 64, archive_sha256="1" * 64, size=1, index=0, data=b"x", base="2" * 64)


def _base(home: Path, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    files = {"workflow.py": b"def main():\n    return 1\n", "data.txt": b"shared data\n"}
    path, m = valid_bundle(tmp_path / "base.tar.gz", files)
    Cache(Home.default()).put_whole(m["digest"], hashlib.sha256(path.read_bytes()).hexdigest(), path.read_bytes())
    return m["digest"], files


def _stage_delta(
    tmp_path: Path, base: str, files: dict[str, bytes], members: dict[str, bytes]
) -> tuple[str, Exception | None]:
    m = manifest_for(files)
    path = write_tar(tmp_path / "delta.tar.gz", [manifest_member(m), *(reg(p, d) for p, d in sorted(members.items()))])
    data = path.read_bytes()
    try:
        Cache(Home.default()).put_chunk(m["digest"], hashlib.sha256(data).hexdigest(), len(data), 0, data, base=base)
    except BundleError as exc:
        return m["digest"], exc
    return m["digest"], None


def test_a_delta_that_needs_a_file_the_base_lacks_is_refused(tmp_path: Path, home: Path) -> None:
    base, files = _base(home, tmp_path)
    new = {**files, "extra.txt": b"not sent, not in the base\n"}
    digest, err = _stage_delta(tmp_path, base, new, {})
    assert err is not None and "does not have it" in str(err)
    assert not Cache(Home.default()).has(digest)
    assert [p for p in (home / "cache" / ".staging").iterdir() if not p.name.startswith(".")] == []


def test_a_delta_member_that_disagrees_with_its_manifest_is_refused(tmp_path: Path, home: Path) -> None:
    base, files = _base(home, tmp_path)
    new = {**files, "workflow.py": b"def main():\n    return 2\n"}
    digest, err = _stage_delta(tmp_path, base, new, {"workflow.py": b"def main():\n    return 666\n"})
    assert err is not None and not Cache(Home.default()).has(digest)


def test_a_delta_against_an_unknown_base_is_refused_at_once(tmp_path: Path, home: Path) -> None:
    _base(home, tmp_path)
    digest, err = _stage_delta(tmp_path, "f" * 64, {"workflow.py": b"x = 1\n"}, {"workflow.py": b"x = 1\n"})
    assert err is not None and "not in the login node's cache" in str(err)


def test_a_good_hand_made_delta_rebuilds_the_same_bundle_as_a_whole_upload(tmp_path: Path, home: Path) -> None:
    base, files = _base(home, tmp_path)
    new = {**files, "workflow.py": b"def main():\n    return 2\n", "renamed.txt": files["data.txt"]}
    digest, err = _stage_delta(tmp_path, base, new, {"workflow.py": new["workflow.py"]})
    assert err is None
    m = archive.verify(Cache(Home.default()).path(digest), expected_digest=digest)
    assert {f.path for f in m.files} == set(new)
