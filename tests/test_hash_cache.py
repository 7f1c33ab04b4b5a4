"""The pack caches: a file's hash is reused only while its stat is unchanged,
and a cached archive is byte-identical to one written from scratch.

Most tests set the "racy" margin to zero, so that files written by the test
itself can be cached at once; ``test_a_file_written_just_before_the_pack_is_not_trusted``
checks the real margin.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bundle import pack as pack_module
from bundle import packcache
from bundle.errors import BundleError
from bundle.manifest import hash_file
from bundle.pack import pack


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files hashed from their bytes (cache misses), in the order hashed."""
    seen: list[str] = []
    real = pack_module.hash_file

    def counting(path: Path, chunk: int = 1024 * 1024) -> tuple[str, int]:
        seen.append(Path(path).name)
        return real(path, chunk)

    monkeypatch.setattr(pack_module, "hash_file", counting)
    return seen


@pytest.fixture
def no_racy_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packcache, "_RACY_NS", 0)


def _tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "workflow.py").write_text("def main():\n    return 1\n")
    (root / "data.txt").write_text("abcdefgh\n")
    (root / "blob.bin").write_bytes(os.urandom(300_000))
    return root


def _files(res: pack_module.PackResult) -> dict[str, str]:
    return {f.path: f.sha256 for f in res.manifest.files}


def _restore_mtime(path: Path, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _cache_dir() -> Path:
    """Where the pack caches live: under the test's own ``XDG_CACHE_HOME``."""
    return Path(os.environ["XDG_CACHE_HOME"]) / "gcbundle"


def _repack_hashes_only_data_txt(tree: Path, hashed: list[str], out: Path) -> None:
    """Pack ``tree`` again: ``data.txt`` alone is hashed from its bytes, and
    the manifest holds its new hash, not the cached one."""
    hashed.clear()
    res = pack(tree, out)
    assert hashed == ["data.txt"]
    assert _files(res)["data.txt"] == hash_file(tree / "data.txt")[0]


def test_unchanged_tree_is_not_hashed_again(tmp_path: Path, hashed: list[str], no_racy_margin: None) -> None:
    tree = _tree(tmp_path / "wf")
    first = pack(tree, tmp_path / "1.tar.gz")
    assert sorted(hashed) == ["blob.bin", "data.txt", "workflow.py"]
    hashed.clear()
    second = pack(tree, tmp_path / "2.tar.gz")
    assert hashed == []
    assert second.digest == first.digest
    assert (tmp_path / "1.tar.gz").read_bytes() == (tmp_path / "2.tar.gz").read_bytes()


def test_the_cache_lives_under_xdg_cache_home(tmp_path: Path, no_racy_margin: None) -> None:
    pack(_tree(tmp_path / "wf"), tmp_path / "1.tar.gz")
    base = _cache_dir()
    (entry,) = (base / "hashes").glob("*.json")
    data = json.loads(entry.read_text())
    assert data["root"] == str((tmp_path / "wf").resolve())
    assert set(data["files"]) == {"blob.bin", "data.txt", "workflow.py"}
    assert len(list((base / "archives").glob("*.tar.gz"))) == 1


def test_same_size_edit_with_mtime_put_back_is_seen(tmp_path: Path, hashed: list[str], no_racy_margin: None) -> None:
    """``cp -p``/``rsync -t``-style: content changes, size and mtime do not; ctime does."""
    tree = _tree(tmp_path / "wf")
    pack(tree, tmp_path / "1.tar.gz")
    before = os.stat(tree / "data.txt")
    (tree / "data.txt").write_text("ABCDEFGH\n")
    _restore_mtime(tree / "data.txt", before)
    after = os.stat(tree / "data.txt")
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    _repack_hashes_only_data_txt(tree, hashed, tmp_path / "2.tar.gz")


def test_a_file_replaced_by_rename_is_seen(tmp_path: Path, hashed: list[str], no_racy_margin: None) -> None:
    """Editors write a new file and rename it over the old one: a new inode."""
    tree = _tree(tmp_path / "wf")
    pack(tree, tmp_path / "1.tar.gz")
    before = os.stat(tree / "data.txt")
    tmp = tree / ".data.txt.swp"
    tmp.write_text("12345678\n")
    os.replace(tmp, tree / "data.txt")
    _restore_mtime(tree / "data.txt", before)
    _repack_hashes_only_data_txt(tree, hashed, tmp_path / "2.tar.gz")


def test_size_change_touch_and_chmod_are_seen(tmp_path: Path, hashed: list[str], no_racy_margin: None) -> None:
    tree = _tree(tmp_path / "wf")
    first = pack(tree, tmp_path / "1.tar.gz")
    with open(tree / "blob.bin", "ab") as f:
        f.write(b"x")
    hashed.clear()
    grown = pack(tree, tmp_path / "2.tar.gz")
    assert hashed == ["blob.bin"] and grown.digest != first.digest
    os.utime(tree / "workflow.py")  # touch: rehashed, same content, same digest
    hashed.clear()
    touched = pack(tree, tmp_path / "3.tar.gz")
    assert hashed == ["workflow.py"] and touched.digest == grown.digest
    os.chmod(tree / "data.txt", 0o755)
    hashed.clear()
    chmodded = pack(tree, tmp_path / "4.tar.gz")
    assert hashed == ["data.txt"]
    assert {f.path: f.mode for f in chmodded.manifest.files}["data.txt"] == 0o755 and chmodded.digest != grown.digest


def test_a_file_written_just_before_the_pack_is_not_trusted(tmp_path: Path, hashed: list[str]) -> None:
    """A write in the same clock tick as the hash would leave the stat unchanged: such files are not cached."""
    tree = _tree(tmp_path / "wf")
    old = os.stat(tree / "blob.bin").st_mtime - 3600
    for name in ("workflow.py", "blob.bin"):
        os.utime(tree / name, (old, old))  # mtime in the past; ctime is still now
    pack(tree, tmp_path / "1.tar.gz")
    hashed.clear()
    pack(tree, tmp_path / "2.tar.gz")
    assert sorted(hashed) == ["blob.bin", "data.txt", "workflow.py"]


def test_a_damaged_cache_file_is_ignored(tmp_path: Path, no_racy_margin: None) -> None:
    tree = _tree(tmp_path / "wf")
    first = pack(tree, tmp_path / "1.tar.gz")
    for entry in (_cache_dir() / "hashes").glob("*.json"):
        entry.write_text("{not json")
    assert pack(tree, tmp_path / "2.tar.gz").digest == first.digest


def test_a_wrong_cached_hash_never_makes_a_bad_archive(tmp_path: Path, no_racy_margin: None) -> None:
    """A cache entry whose stat matches but whose hash is wrong (a damaged or
    hand-edited cache): the archive writer's own check refuses it, and the
    cache of that tree is dropped, so the next pack is right."""
    tree = _tree(tmp_path / "wf")
    pack(tree, tmp_path / "1.tar.gz")
    (entry,) = (_cache_dir() / "hashes").glob("*.json")
    data = json.loads(entry.read_text())
    data["files"]["data.txt"][-1] = "0" * 64
    entry.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="changed while it was being packed"):
        pack(tree, tmp_path / "2.tar.gz")
    assert not (tmp_path / "2.tar.gz").exists()
    res = pack(tree, tmp_path / "3.tar.gz")
    assert _files(res)["data.txt"] == hash_file(tree / "data.txt")[0]


def test_cached_archive_is_identical_to_one_written_without_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_racy_margin: None
) -> None:
    tree = _tree(tmp_path / "wf")
    pack(tree, tmp_path / "warm-up.tar.gz")
    calls: list[int] = []
    real = pack_module.write_archive
    monkeypatch.setattr(pack_module, "write_archive", lambda *a, **k: calls.append(1) or real(*a, **k))
    cached = pack(tree, tmp_path / "cached.tar.gz")
    assert calls == []  # copied from the archive cache
    monkeypatch.setenv("GCBUNDLE_PACK_CACHE", "0")
    fresh = pack(tree, tmp_path / "fresh.tar.gz")
    assert calls == [1]
    assert (tmp_path / "cached.tar.gz").read_bytes() == (tmp_path / "fresh.tar.gz").read_bytes()
    assert (cached.archive_sha256, cached.size) == (fresh.archive_sha256, fresh.size)
    # after an edit the archive is written again and matches a cache-less pack of the new tree
    (tree / "data.txt").write_text("changed!\n")
    monkeypatch.delenv("GCBUNDLE_PACK_CACHE")
    edited = pack(tree, tmp_path / "edited.tar.gz")
    assert calls == [1, 1]
    monkeypatch.setenv("GCBUNDLE_PACK_CACHE", "0")
    pack(tree, tmp_path / "edited-fresh.tar.gz")
    assert (tmp_path / "edited.tar.gz").read_bytes() == (tmp_path / "edited-fresh.tar.gz").read_bytes()
    assert edited.digest != cached.digest


def test_pack_cache_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCBUNDLE_PACK_CACHE", "0")
    pack(_tree(tmp_path / "wf"), tmp_path / "1.tar.gz")
    assert not _cache_dir().exists()


def test_archive_cache_keeps_the_newest_within_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_racy_margin: None
) -> None:
    monkeypatch.setenv("GCBUNDLE_ARCHIVE_CACHE_BYTES", "700000")  # room for two ~300 kB archives
    tree = _tree(tmp_path / "wf")
    for i in range(4):
        (tree / "data.txt").write_text(f"version {i}\n")
        pack(tree, tmp_path / f"{i}.tar.gz")
    kept = list((_cache_dir() / "archives").glob("*.tar.gz"))
    assert len(kept) == 2 and sum(p.stat().st_size for p in kept) <= 700000
