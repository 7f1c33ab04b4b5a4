"""Malformed and hostile bundles: each is refused with a clear error and leaves nothing behind."""
from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pytest

from bundle import archive
from bundle.errors import BundleError
from tests.hostile import manifest_for, manifest_member, reg, special, valid_bundle, write_tar

WF = b"def main():\n    return 1\n"


def _refused(bundle: Path, dest: Path, match: str, digest: str | None = None) -> None:
    before = set(dest.parent.iterdir())
    with pytest.raises(BundleError, match=match):
        archive.extract(bundle, dest, expected_digest=digest)
    assert not dest.exists()
    assert set(dest.parent.iterdir()) == before, "extraction left something behind"


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d / "bundle"


def test_valid_bundle_extracts(tmp_path: Path, dest: Path) -> None:
    path, m = valid_bundle(tmp_path / "ok.tar.gz")
    got = archive.extract(path, dest, expected_digest=m["digest"])
    assert (dest / "workflow.py").read_bytes() == WF and got.digest == m["digest"]


@pytest.mark.parametrize("name", ["/etc/evil.py", "../evil.py", "a/../../evil.py", "./workflow.py", "a//b.py"])
def test_member_paths_that_escape_or_are_not_canonical(tmp_path: Path, dest: Path, name: str) -> None:
    files = {"workflow.py": WF}
    m = manifest_for(files)
    m["files"].append({"path": name, "size": 1, "mode": 420, "sha256": "0" * 64})
    m.pop("digest")
    bundle = write_tar(tmp_path / "b.tar.gz", [manifest_member(m), reg("workflow.py", WF), reg(name, b"x")])
    _refused(bundle, dest, "absolute|not a plain relative path")
    assert not (tmp_path / "evil.py").exists() and not Path("/etc/evil.py").exists()


@pytest.mark.parametrize("kind,linkname,what", [
    (tarfile.SYMTYPE, "/etc/passwd", "symlink"),
    (tarfile.SYMTYPE, "../../outside", "symlink"),
    (tarfile.LNKTYPE, "/etc/passwd", "hardlink"),
    (tarfile.CHRTYPE, "", "device"),
    (tarfile.BLKTYPE, "", "device"),
    (tarfile.FIFOTYPE, "", "special"),
    (tarfile.DIRTYPE, "", "directory"),
])
def test_links_devices_and_dirs_are_refused(tmp_path: Path, dest: Path, kind: bytes, linkname: str, what: str) -> None:
    files = {"link.py": b"", "workflow.py": WF}
    m = manifest_for(files)
    members = [manifest_member(m), special("link.py", kind, linkname), reg("workflow.py", WF)]
    bundle = write_tar(tmp_path / "b.tar.gz", members)
    _refused(bundle, dest, what)


def test_gzip_bomb_is_stopped_by_the_manifest_cap(tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_UNPACKED_BYTES", 50 * 1024 * 1024)
    big = 200 * 1024 * 1024
    files = {"workflow.py": WF}
    m = manifest_for(files)
    m["files"].insert(0, {"path": "a.bin", "size": big, "mode": 420, "sha256": "0" * 64})
    m.pop("digest")
    # a 200 MiB member of zeros compresses to about 200 KiB
    path = tmp_path / "bomb.tar.gz"
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.addfile(*manifest_member(m)[:1], fileobj=__import__("io").BytesIO(manifest_member(m)[1]))
        info = tarfile.TarInfo("a.bin")
        info.size = big
        tar.addfile(info, fileobj=open("/dev/zero", "rb"))
    assert path.stat().st_size < 1024 * 1024
    _refused(path, dest, "more than the cap")


def test_member_larger_than_its_manifest_entry_is_refused_before_reading(tmp_path: Path, dest: Path) -> None:
    files = {"workflow.py": WF}
    m = manifest_for(files)
    bundle = write_tar(tmp_path / "b.tar.gz", [manifest_member(m), reg("workflow.py", WF + b"# more" * 1000)])
    _refused(bundle, dest, "the manifest says")


def test_too_many_members(tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_MEMBERS", 10)
    files = {f"f{i}.txt": b"" for i in range(20)} | {"workflow.py": WF}
    m = manifest_for(files)
    bundle = write_tar(tmp_path / "b.tar.gz", [manifest_member(m), *(reg(p, d) for p, d in sorted(files.items()))])
    _refused(bundle, dest, "more than|cap")


def test_truncated_archive(tmp_path: Path, dest: Path) -> None:
    path, _ = valid_bundle(tmp_path / "ok.tar.gz", {"workflow.py": WF, "data.bin": os.urandom(300_000)})
    raw = path.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    _refused(cut, dest, "truncated|corrupt")


def test_not_gzip_at_all(tmp_path: Path, dest: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not an archive" * 10)
    _refused(bad, dest, "not a gzip-compressed tar|truncated or corrupt")


def test_content_that_disagrees_with_its_hash(tmp_path: Path, dest: Path) -> None:
    m = manifest_for({"workflow.py": WF})
    bundle = write_tar(tmp_path / "b.tar.gz", [manifest_member(m), reg("workflow.py", WF.replace(b"1", b"2"))])
    _refused(bundle, dest, "does not match its sha256")


def test_expected_digest_mismatch(tmp_path: Path, dest: Path) -> None:
    path, _ = valid_bundle(tmp_path / "ok.tar.gz")
    _refused(path, dest, "not the expected", digest="a" * 64)


def test_manifest_digest_that_lies(tmp_path: Path, dest: Path) -> None:
    m = manifest_for({"workflow.py": WF})
    m["digest"] = "f" * 64
    bundle = write_tar(tmp_path / "b.tar.gz", [manifest_member(m), reg("workflow.py", WF)])
    _refused(bundle, dest, "digest does not match")


@pytest.mark.parametrize("change,match", [
    ({"format": 99}, "format"),
    ({"format": "1"}, "format"),
    ({"entry": None}, "entry point"),
    ({"entry": "missing.py"}, "not among"),
    ({"mode": "daemon"}, "mode"),
    ({"files": "all"}, "files must be a list"),
    ({"files": [{"path": "workflow.py", "size": "25", "mode": 420, "sha256": "0" * 64}]}, "size"),
    ({"files": [{"path": "workflow.py", "size": 25, "mode": 0o4755, "sha256": "0" * 64}]}, "mode"),
    ({"files": [{"path": "workflow.py", "size": 25, "mode": 420}]}, "sha256"),
    ({"args": {"not an identifier": 1}}, "args"),
    ({"args": []}, "args"),
    ({"config": {"kind": "shell"}}, "config"),
])
def test_manifest_with_missing_or_wrong_typed_fields(tmp_path: Path, dest: Path, change: dict, match: str) -> None:
    m = manifest_for({"workflow.py": WF})
    m.pop("digest")
    m.update(change)
    bundle = write_tar(tmp_path / "b.tar.gz", [manifest_member(m), reg("workflow.py", WF)])
    _refused(bundle, dest, match)


def test_manifest_not_json_or_not_first(tmp_path: Path, dest: Path) -> None:
    bundle = write_tar(tmp_path / "b.tar.gz", [manifest_member(b"{not json"), reg("workflow.py", WF)])
    _refused(bundle, dest, "not valid JSON")
    m = manifest_for({"workflow.py": WF})
    bundle = write_tar(tmp_path / "c.tar.gz", [reg("workflow.py", WF), manifest_member(m)])
    _refused(bundle, dest, "first member")


def test_duplicate_extra_and_missing_members(tmp_path: Path, dest: Path) -> None:
    m = manifest_for({"workflow.py": WF})
    dup = write_tar(tmp_path / "dup.tar.gz", [manifest_member(m), reg("workflow.py", WF), reg("workflow.py", WF)])
    _refused(dup, dest, "not listed")
    extra = write_tar(tmp_path / "extra.tar.gz", [manifest_member(m), reg("workflow.py", WF), reg("zz.py", b"")])
    _refused(extra, dest, "not listed")
    m2 = manifest_for({"workflow.py": WF, "zz.py": b""})
    missing = write_tar(tmp_path / "missing.tar.gz", [manifest_member(m2), reg("workflow.py", WF)])
    _refused(missing, dest, "missing from the archive")


@pytest.mark.parametrize("names", [
    ["Data.txt", "data.txt"],
    ["caf\u00e9.txt", "cafe\u0301.txt"],
    ["a", "a/b.txt"],
])
def test_names_that_collide_by_case_unicode_or_prefix(tmp_path: Path, dest: Path, names: list[str]) -> None:
    files = {n: b"x" for n in names} | {"workflow.py": WF}
    m = manifest_for(files)
    m.pop("digest")
    bundle = write_tar(tmp_path / "b.tar.gz", [manifest_member(m), *(reg(p, d) for p, d in sorted(files.items()))])
    _refused(bundle, dest, "collide|NFC|both a file")


def test_existing_destination_is_never_overwritten(tmp_path: Path, dest: Path) -> None:
    path, _ = valid_bundle(tmp_path / "ok.tar.gz")
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(BundleError, match="already exists"):
        archive.extract(path, dest)
    assert (dest / "keep").read_text() == "mine"
