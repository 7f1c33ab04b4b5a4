"""What packing remembers between runs: file hashes by stat, archives by manifest.

Both live under the user cache dir (``platformdirs.user_cache_dir("gcbundle")``,
so ``$XDG_CACHE_HOME/gcbundle``); both are only caches: deleting them, or a
damaged file in them, costs time, never correctness. ``GCBUNDLE_PACK_CACHE=0``
turns them off.

File hashes. A re-pack of an unchanged tree should not read every byte
again. A file's sha256 is reused when its (path, size, mtime_ns, ctime_ns,
inode, device) are all unchanged. Any write changes mtime and ctime; setting
mtime back (``touch -d``, ``cp -p``, ``rsync -t``) still changes ctime, which
only the kernel sets; a replaced file (editors that write and rename) has a
new inode. The one gap is a write within the timestamp granularity of the
hash itself (the "racy git" problem): a file modified less than
``RACY_SECONDS`` before it was hashed is not cached, so a write landing in
the same clock tick as the hash cannot be mistaken for the hashed content.

Archives. Archives are deterministic: the same manifest bytes (which hold
every file's sha256) give the same archive bytes, for a given archive writer
and zlib. So a finished archive is kept under the sha256 of those, and a
re-pack whose manifest is unchanged copies it instead of compressing again.
The cache keeps the newest archives up to ``GCBUNDLE_ARCHIVE_CACHE_BYTES``
(default 1 GiB).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

from bundle.errors import GcbundleError
from bundle.fileio import write_atomic
from bundle.manifest import Manifest

#: A file whose mtime or ctime is this close to the time it was hashed is not cached.
RACY_SECONDS = 3.0
_RACY_NS = int(RACY_SECONDS * 1e9)
#: Changes whenever the archive writer would write different bytes for the same manifest.
ARCHIVE_WRITER = "tar-pax/fixed-mtime/pgzip-1MiB/v1"
DEFAULT_ARCHIVE_CACHE_BYTES = 1024**3


def enabled() -> bool:
    return os.environ.get("GCBUNDLE_PACK_CACHE", "1").strip().lower() not in ("0", "no", "false", "off")


def cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("gcbundle"))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, durable=False)


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class HashCache:
    """sha256 of the files under one root, keyed by their stat; one JSON file per root."""

    def __init__(self, root: Path, directory: Path | None = None) -> None:
        self.root = Path(root)
        self.on = enabled()
        name = hashlib.sha256(os.fsencode(str(self.root))).hexdigest()[:32]
        self.path = (directory or cache_dir()) / "hashes" / f"{name}.json"
        self.old: dict[str, list[Any]] = self._load() if self.on else {}
        self.new: dict[str, list[Any]] = {}

    def _load(self) -> dict[str, list[Any]]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("root") != str(self.root) or not isinstance(data.get("files"), dict):
            return {}
        return data["files"]

    def get(self, rel: str, st: os.stat_result) -> str | None:
        """The cached sha256 of ``rel`` if its stat is unchanged, else None."""
        entry = self.old.get(rel)
        if not entry or entry[:-1] != stat_key(st) or not isinstance(entry[-1], str):
            return None
        self.new[rel] = entry
        return entry[-1]

    def put(self, rel: str, st: os.stat_result, sha256: str, hashed_at_ns: int) -> None:
        """Remember ``sha256`` for ``rel``; ``hashed_at_ns`` is ``time.time_ns()`` taken before reading it."""
        if max(st.st_mtime_ns, st.st_ctime_ns) < hashed_at_ns - _RACY_NS:
            self.new[rel] = [*stat_key(st), sha256]

    def save(self) -> None:
        """Write the entries seen in this pack (files no longer selected are forgotten)."""
        if not self.on or self.new == self.old:
            return
        data = json.dumps({"root": str(self.root), "files": self.new}, separators=(",", ":")).encode()
        try:
            _write_atomic(self.path, data)
        except OSError:
            pass  # a read-only or full cache dir costs speed, not correctness


    def forget(self) -> None:
        """Drop every cached hash of this root (the archive writer found one that was wrong)."""
        self.old, self.new = {}, {}
        try:
            self.path.unlink()
        except OSError:
            pass


class ArchiveCache:
    """Finished archives, keyed by the manifest bytes they start with."""

    def __init__(self, directory: Path | None = None) -> None:
        self.on = enabled()
        self.dir = (directory or cache_dir()) / "archives"
        try:
            self.limit = int(os.environ.get("GCBUNDLE_ARCHIVE_CACHE_BYTES", DEFAULT_ARCHIVE_CACHE_BYTES))
        except ValueError:
            self.limit = DEFAULT_ARCHIVE_CACHE_BYTES

    @staticmethod
    def key(manifest_json: dict[str, Any], level: int) -> str:
        """The archive's identity: the whole manifest (its files' sha256 included) and the writer.

        Canonical compact JSON rather than the manifest's own indented bytes:
        the same information, and json's C encoder makes it several times faster.
        """
        h = hashlib.sha256(f"{ARCHIVE_WRITER}\0level={level}\0zlib={zlib.ZLIB_RUNTIME_VERSION}\0".encode())
        canonical = json.dumps(manifest_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        h.update(canonical.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def fetch(self, key: str, output: Path) -> tuple[str, int] | None:
        """Copy the cached archive for ``key`` to ``output``; return (its sha256, size), or None."""
        if not self.on:
            return None
        meta_path, data_path = self.dir / f"{key}.json", self.dir / f"{key}.tar.gz"
        try:
            meta = json.loads(meta_path.read_bytes())
            sha, size = meta["sha256"], meta["size"]
            if data_path.stat().st_size != size:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            got, got_size = _copy_hashing(data_path, tmp)
            if got_size != size or got != sha:
                # Damaged on disk since it was stored: drop it, and the caller packs afresh.
                self.evict(key)
                return None
            os.replace(tmp, output)
        except OSError:
            return None
        finally:
            if tmp.exists():
                tmp.unlink()
        now = time.time()
        try:
            os.utime(meta_path, (now, now))  # recently used: evicted last
        except OSError:
            pass
        return sha, size

    def evict(self, key: str) -> None:
        for p in (self.dir / f"{key}.json", self.dir / f"{key}.tar.gz"):
            try:
                p.unlink()
            except OSError:
                pass

    def store(self, key: str, archive: Path, sha256: str, size: int) -> None:
        """Keep a copy of a freshly written archive (if it fits), then trim the cache."""
        if not self.on or size > self.limit // 2:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.dir / f".{key}.{os.getpid()}.tmp"
            try:
                shutil.copyfile(archive, tmp)
                os.replace(tmp, self.dir / f"{key}.tar.gz")
            finally:
                if tmp.exists():
                    tmp.unlink()
            _write_atomic(self.dir / f"{key}.json", json.dumps({"sha256": sha256, "size": size}).encode())
            self.trim()
        except OSError:
            pass

    def trim(self) -> None:
        """Drop the least recently used archives beyond the size limit."""
        entries = []
        for meta in self.dir.glob("*.json"):
            data = meta.with_suffix(".tar.gz")
            try:
                entries.append((meta.stat().st_mtime, data.stat().st_size if data.exists() else 0, meta, data))
            except OSError:
                continue
        entries.sort(reverse=True)
        total = 0
        for _, size, meta, data in entries:
            total += size
            if total > self.limit:
                for p in (meta, data):
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        pass


def _copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` and return the sha256 and size of what was copied.

    A cached archive is checked against the digest recorded when it was
    stored on every reuse: one damaged byte would otherwise travel in every
    later bundle (and be refused by the login node each time). Hashing as it
    is copied reads the file once.
    """
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fin, open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fout:
        while block := fin.read(1024 * 1024):
            h.update(block)
            fout.write(block)
            n += len(block)
    return h.hexdigest(), n


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class ManifestStore:
    """The manifests of recently packed bundles, by digest: the bases a delta upload can name.

    A resubmit after a small edit need only send the files the login node's
    copy of an earlier bundle lacks; finding them takes that bundle's file
    list, kept here (a few hundred bytes per file; the newest ``KEEP``).
    """

    KEEP = 32

    def __init__(self, directory: Path | None = None) -> None:
        self.on = enabled()
        self.dir = (directory or cache_dir()) / "manifests"

    def put(self, manifest: Any) -> None:
        if not self.on:
            return
        path = self.dir / f"{manifest.digest}.json"
        try:
            if path.exists():
                os.utime(path)
            else:
                _write_atomic(path, manifest.dumps())
            old = sorted(self.dir.glob("*.json"), key=_mtime, reverse=True)[self.KEEP:]
            for p in old:
                p.unlink(missing_ok=True)
        except OSError:
            pass

    def recent(self, exclude: str = "") -> list[Any]:
        """Stored manifests, newest first (damaged ones skipped)."""
        if not self.on or not self.dir.is_dir():
            return []
        out = []
        paths = sorted(self.dir.glob("*.json"), key=_mtime, reverse=True)
        for p in paths:
            if p.stem == exclude:
                continue
            try:
                m = Manifest.loads(p.read_bytes())
            except (OSError, GcbundleError):
                continue
            if m.digest == p.stem:
                out.append(m)
        return out
