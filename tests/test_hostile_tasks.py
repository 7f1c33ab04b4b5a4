"""Hostile task arguments: every login-node task confines what it touches to
$GCBUNDLE_HOME, and a hostile bundle sent inline or in chunks leaves no cache
entry, no run directory and no file outside."""
from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from bundle.errors import BundleError, GcbundleError, RunNotFound, UsageError
from bundle.limits import CHUNK_BYTES
from bundle.transport.local import LocalTransport
from tests.hostile import manifest_for, manifest_member, reg, special, valid_bundle, write_tar

WF = b"def main():\n    return 1\n"
RUN = "0123456789ab"


@pytest.fixture
def t() -> LocalTransport:
    transport = LocalTransport()
    yield transport
    transport.close()


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _outside_untouched(tmp_path: Path) -> set[str]:
    return {p.name for p in tmp_path.iterdir()}


HOSTILE_DIGESTS = ["../" * 5 + "etc/passwd", "a" * 63, "A" * 64, "g" * 64, "/" + "a" * 63, "", None, 7, ["a" * 64]]


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
def test_hostile_digests_in_stage_launch_probe(t: LocalTransport, home: Path, digest: object) -> None:
    with pytest.raises(UsageError, match="digest"):
        t.call("stage", digest=digest, archive_sha256="a" * 64, size=10, index=0, data=b"0" * 10)
    with pytest.raises(UsageError, match="digest"):
        t.call("launch", run_id=RUN, digest=digest, spec={})
    with pytest.raises((UsageError, GcbundleError)):
        t.call("probe", digests=[digest])
    assert _snapshot(home / "cache") <= {".staging"} and _snapshot(home / "runs") == set()


@pytest.mark.parametrize("field,value", [
    ("run_id", "../" + RUN), ("run_id", RUN + "/.."), ("run_id", RUN.upper()), ("run_id", "x" * 12),
    ("spec", "not an object"), ("spec", None),
])
def test_hostile_launch_fields(t: LocalTransport, tmp_path: Path, home: Path, field: str, value: object) -> None:
    path, m = valid_bundle(tmp_path / "b.tar.gz")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    req = {"run_id": RUN, "digest": m["digest"], "archive_sha256": sha, "bundle": path.read_bytes(), "spec": {}}
    req[field] = value
    with pytest.raises((RunNotFound, UsageError)):
        t.call("launch", **req)
    assert _snapshot(home / "runs") == set()


def test_resume_from_a_hostile_run_id(t: LocalTransport, tmp_path: Path, home: Path) -> None:
    path, m = valid_bundle(tmp_path / "b.tar.gz")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(RunNotFound):
        t.call("launch", run_id=RUN, digest=m["digest"], archive_sha256=sha, bundle=path.read_bytes(),
               spec={"resumed_from": "../../x"})
    assert _snapshot(home / "runs") == set()


def _hostile_bundles(tmp_path: Path) -> dict[str, Path]:
    m = manifest_for({"workflow.py": WF})
    evil = {"path": "../../evil.py", "size": 1, "mode": 420, "sha256": "0" * 64}
    traversal = {**m, "files": [evil, *m["files"]], "digest": None}

    def special_a(kind: bytes, linkname: str = "") -> list[Any]:
        """A bundle whose ``a.py`` is a special member of ``kind`` instead of a file."""
        listed = manifest_member(manifest_for({"a.py": b"", "workflow.py": WF}))
        return [listed, special("a.py", kind, linkname), reg("workflow.py", WF)]

    out = {
        "traversal": write_tar(tmp_path / "t.tar.gz", [manifest_member(traversal), reg("../../evil.py", b"x"),
                                                        reg("workflow.py", WF)]),
        "symlink": write_tar(tmp_path / "s.tar.gz", special_a(tarfile.SYMTYPE, "/etc/passwd")),
        "hardlink": write_tar(tmp_path / "h.tar.gz", special_a(tarfile.LNKTYPE, "/etc/passwd")),
        "fifo": write_tar(tmp_path / "f.tar.gz", special_a(tarfile.FIFOTYPE)),
        "device": write_tar(tmp_path / "d.tar.gz", special_a(tarfile.CHRTYPE)),
        "wrong-hash": write_tar(tmp_path / "w.tar.gz", [manifest_member(m),
                                                         reg("workflow.py", WF.replace(b"1", b"9"))]),
        "truncated": None,  # filled below
    }
    good, _ = valid_bundle(tmp_path / "g.tar.gz", {"workflow.py": WF, "blob": os.urandom(100_000)})
    raw = good.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    out["truncated"] = tmp_path / "cut.tar.gz"
    return out  # type: ignore[return-value]


def test_hostile_bundles_inline_leave_no_cache_entry_and_no_run(t: LocalTransport, tmp_path: Path, home: Path) -> None:
    before = _outside_untouched(tmp_path)
    for name, path in _hostile_bundles(tmp_path).items():
        data = path.read_bytes()
        digest = hashlib.sha256(name.encode()).hexdigest()
        with pytest.raises(BundleError):
            t.call("launch", run_id=RUN, digest=digest, archive_sha256=hashlib.sha256(data).hexdigest(), bundle=data,
                   spec={})
        assert list((home / "cache").glob("*.tar.gz")) == [], name
        assert _snapshot(home / "runs") == set(), name
        assert [p for p in (home / "cache" / ".staging").iterdir()] == [], name
    assert not (home.parent / "evil.py").exists() and not (home / "evil.py").exists()
    made = {"t.tar.gz", "s.tar.gz", "h.tar.gz", "f.tar.gz", "d.tar.gz", "w.tar.gz", "g.tar.gz", "cut.tar.gz", "gchome"}
    assert _outside_untouched(tmp_path) - before <= made


def test_chunk_that_lies_about_the_archive_hash(t: LocalTransport, tmp_path: Path, home: Path) -> None:
    path, m = valid_bundle(tmp_path / "b.tar.gz")
    data = path.read_bytes()
    with pytest.raises(BundleError, match="corrupted"):
        t.call("stage", digest=m["digest"], archive_sha256="b" * 64, size=len(data), index=0, data=data)
    assert list((home / "cache").glob("*.tar.gz")) == [] and list((home / "cache" / ".staging").iterdir()) == []


@pytest.mark.parametrize("index,size,data", [(-1, 10, b"0" * 10), (1, 10, b"0" * 10), (0, 10, b"0" * 9), (0, 0, b""),
                                             (0, 10**13, b"0"), (True, 10, b"0" * 10), (0, 10, "text")])
def test_malformed_chunks(t: LocalTransport, home: Path, index: object, size: object, data: object) -> None:
    with pytest.raises((UsageError, BundleError)):
        t.call("stage", digest="a" * 64, archive_sha256="b" * 64, size=size, index=index, data=data)
    assert list((home / "cache").glob("*.tar.gz")) == []


def test_logs_name_and_offsets_cannot_escape(t: LocalTransport, tmp_path: Path, home: Path) -> None:
    from bundle import api

    run = api.submit(valid_bundle(tmp_path / "b.tar.gz")[0], "local", wait=True, transport=t)
    for name in ["../state.json", "/etc/passwd", "run.json", "driver/../../x", "certificates"]:
        with pytest.raises(UsageError, match="no log named"):
            t.call("logs", run_id=run.id, name=name)
    for bad in [-1, "0", 1.5, None]:
        with pytest.raises(UsageError):
            t.call("logs", run_id=run.id, name="driver", offset=bad)
    out = t.call("logs", run_id=run.id, name="driver", offset=10**12)
    assert out["data"] == b""


def test_results_listing_never_follows_symlinks_left_in_outputs(t: LocalTransport, tmp_path: Path) -> None:
    from bundle import api
    from tests.conftest import write_workflow

    wf = write_workflow(tmp_path / "wf", (
        "import os\n\ndef main():\n    out = os.environ['GCBUNDLE_OUTPUT_DIR']\n"
        "    os.symlink('/etc/passwd', os.path.join(out, 'passwd'))\n"
        "    os.symlink('/etc', os.path.join(out, 'etc'))\n"
        "    open(os.path.join(out, 'real.txt'), 'w').write('ok')\n"
    ))
    run = api.submit(wf, "local", wait=True, transport=t)
    listing = t.call("results_manifest", run_id=run.id)
    paths = {f["path"] for f in listing["files"]}
    assert "outputs/real.txt" in paths and "outputs/passwd" not in paths
    assert not any(p.startswith("outputs/etc") for p in paths)
    with pytest.raises(GcbundleError, match="changed since"):
        t.call("results_chunk", run_id=run.id, manifest_sha256="0" * 64, index=0)
    with pytest.raises(GcbundleError, match="outside"):
        t.call("results_chunk", run_id=run.id, manifest_sha256=listing["manifest_sha256"], index=10**6)


def test_a_hostile_results_listing_cannot_write_outside(tmp_path: Path) -> None:
    """The client validates paths the login node sends, as it validates bundles."""
    from bundle.errors import ResultsError
    from bundle.results import fetch
    from bundle.transport import Transport

    class Evil(Transport):
        def _run(self, task, req):  # type: ignore[no-untyped-def]
            return {"protocol": 1, "ok": True, "data": {
                "files": [{"path": "../../escaped.txt", "size": 1, "sha256": "0" * 64}],
                "manifest_sha256": "0" * 64, "chunk_bytes": CHUNK_BYTES, "total": 1, "state": {"state": "succeeded"}}}

    with pytest.raises(ResultsError, match="unsafe path"):
        fetch(Evil(), RUN, tmp_path / "res")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_a_hundred_thousand_tiny_members_are_refused_before_reading_them(tmp_path: Path) -> None:
    from bundle import archive

    files = {f"d/{i:06d}": b"" for i in range(100_000)} | {"workflow.py": WF}
    m = manifest_for(files)
    first = [reg(p, d) for p, d in sorted(files.items())][:50]
    path = write_tar(tmp_path / "many.tar.gz", [manifest_member(m), *first])
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match="100001 files, more than the cap"):
        archive.extract(path, dest)
    assert not dest.exists()
