"""Deterministic bundle archives.

Archives are built the way flit builds an sdist: entries sorted, owners 0,
modes normalised to 0644/0755, a fixed mtime, PAX format, and a gzip header
without a timestamp, so packing the same tree twice gives the same bytes.
``gcbundle.json`` is the first member, so a reader validates the manifest
before it touches any other member.

Packing is as fast as ``tar -czf``: files are hashed on every core, the gzip
stream is compressed on every core (``bundle.gzipstream``), and a re-pack
reuses the hashes of unchanged files and, when the manifest is unchanged,
the archive itself (``bundle.packcache``).
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bundle import gzipstream, packcache
from bundle.errors import BundleError
from bundle.limits import MAX_BUNDLE_BYTES, MAX_MEMBERS, MAX_UNPACKED_BYTES
from bundle.manifest import MANIFEST_NAME, FileEntry, Manifest, check_path
from bundle.selection import Limits, Selection, select
from bundle.versions import local_versions

#: The mtime of every member: 1980-01-01, as reproducible-build tools use.
FIXED_MTIME = 315532800
GZIP_LEVEL = 6
_READ = 1024 * 1024

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PackResult:
    path: Path
    manifest: Manifest
    archive_sha256: str
    size: int
    excluded: tuple[tuple[str, str], ...]
    #: What was included and left out, a few lines for people (``Selection.summary``).
    summary: tuple[str, ...] = ()
    #: Preflight warnings: things that may be fine, said before anything is sent.
    warnings: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "digest": self.digest,
            "archive_sha256": self.archive_sha256,
            "size": self.size,
            "files": len(self.manifest.files),
            "bytes": self.manifest.total_size,
            "entry": self.manifest.entry,
            "mode": self.manifest.mode,
            "excluded": [{"path": p, "reason": r} for p, r in self.excluded],
            "summary": list(self.summary),
            "warnings": list(self.warnings),
        }


def clean_tarinfo(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def hash_file(path: Path) -> tuple[str, int]:
    return packcache.hash_file(path, _READ)


def build_manifest(sel: Selection, args: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> Manifest:
    """Hash the selected files (reusing cached hashes of unchanged files) into a manifest."""
    for rel in sel.files:
        check_path(rel, "file path")
    if len(sel.files) > MAX_MEMBERS:
        raise BundleError(f"the workflow has {len(sel.files)} files, more than the cap of {MAX_MEMBERS}", "leave some out with .gcbundleignore, or archive many small files into one")
    cache = packcache.HashCache(sel.root)
    stats = {rel: os.stat(sel.path(rel)) for rel in sel.files}
    digests = {rel: cache.get(rel, st) for rel, st in stats.items()}
    missing = [rel for rel, d in digests.items() if d is None]
    if missing:
        digests.update(_hash_all(sel, missing, stats, cache))
    cache.save()
    entries = [FileEntry(rel, stats[rel].st_size, 0o755 if stats[rel].st_mode & 0o111 else 0o644, digests[rel]) for rel in sel.files]
    total = sum(e.size for e in entries)
    if total > MAX_UNPACKED_BYTES:
        raise BundleError(f"the workflow's files add up to {total} bytes, more than the cap of {MAX_UNPACKED_BYTES}", "leave large data out with .gcbundleignore and stage it on the site's file system")
    return Manifest(
        entry=sel.entry,
        mode=sel.mode,
        files=tuple(entries),
        args=dict(args or {}),
        config=dict(config or {"kind": "workflow"}),
        client=local_versions(),
        created=_created(stats.values()),
    )


def _hash_all(sel: Selection, rels: list[str], stats: dict[str, os.stat_result], cache: packcache.HashCache) -> dict[str, str]:
    """Hash files on every core (hashlib releases the GIL) and remember the results.

    A file whose size when read differs from its stat changed while it was
    hashed: an error now rather than an archive that disagrees with its manifest.
    """
    def one(rel: str) -> tuple[str, str]:
        started = time.time_ns()
        digest, size = hash_file(sel.path(rel))
        st = stats[rel]
        if size != st.st_size:
            raise BundleError(f"{rel!r} changed while it was being packed", "pack again once nothing writes to the workflow directory")
        cache.put(rel, st, digest, started)
        return rel, digest

    workers = gzipstream.workers()
    if workers == 1 or len(rels) == 1:
        return dict(one(rel) for rel in rels)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gcbundle-hash") as pool:
        return dict(pool.map(one, rels))


def _created(stats: Any) -> str:
    """SOURCE_DATE_EPOCH if set, else the newest mtime among the files: a
    creation time that keeps the archive reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        ts = int(epoch)
    else:
        ts = max((int(st.st_mtime) for st in stats), default=FIXED_MTIME)
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def write_archive(manifest: Manifest, root: Path, output: Path, progress: Progress | None = None,
                  sources: dict[str, str] | None = None) -> tuple[str, int]:
    """Write the archive atomically; return (sha256 of its bytes, its size).

    Files are read from ``root``, except those ``sources`` places elsewhere.

    Each file is hashed again while it is written: a file that changed since
    the manifest was built is an error, not a silently inconsistent bundle.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    total = manifest.total_size
    done = 0
    try:
        with open(tmp, "wb") as raw:
            hashing = HashingWriter(raw)
            with gzipstream.ParallelGzipWriter(hashing, GZIP_LEVEL) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_READ) as tar:
                    data = manifest.dumps()
                    tar.addfile(clean_tarinfo(MANIFEST_NAME, len(data), 0o644), io.BytesIO(data))
                    for entry in manifest.files:
                        with open((sources or {}).get(entry.path) or root / entry.path, "rb") as f:
                            checked = _CheckedReader(f, entry)
                            tar.addfile(clean_tarinfo(entry.path, entry.size, entry.mode), checked)
                            checked.finish()
                        done += entry.size
                        if progress:
                            progress("pack", done, total)
            if hashing.size > MAX_BUNDLE_BYTES:
                raise BundleError(f"the bundle is {hashing.size} bytes, more than the cap of {MAX_BUNDLE_BYTES}", "leave large data out with .gcbundleignore and stage it on the site's file system")
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return hashing.sha256.hexdigest(), hashing.size


class HashingWriter(io.RawIOBase):
    """Passes bytes through to ``raw`` and counts and hashes them: the archive's sha256 and size."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:  # type: ignore[override]
        self.sha256.update(b)
        self.size += len(b)
        return self.raw.write(b)


class _CheckedReader:
    def __init__(self, f: Any, entry: FileEntry) -> None:
        self.f = f
        self.entry = entry
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.n += len(data)
        return data

    def finish(self) -> None:
        if self.n != self.entry.size or self.h.hexdigest() != self.entry.sha256 or self.f.read(1):
            raise BundleError(f"{self.entry.path!r} changed while it was being packed", "pack again once nothing writes to the workflow directory")


def pack(workflow: Path | str, output: Path | str, *, includes: tuple[str, ...] = (), entry: str | None = None,
         args: dict[str, Any] | None = None, config_module: Path | str | None = None,
         site: str | None = None, mode: str | None = None, progress: Progress | None = None,
         only_imports: bool = False, limits: Limits | None = None, run_args: dict[str, Any] | None = None) -> PackResult:
    """Select, check (``bundle.preflight``), hash and archive a workflow; the one entry point for packing.

    ``args`` are baked into the manifest; ``run_args`` travel beside it (a
    submit's ``--arg``, then every required parameter of ``main`` must have
    a value); both are checked against ``main``'s signature.
    """
    from bundle import preflight

    extra: tuple[Path, ...] = ()
    config: dict[str, Any] = {"kind": "workflow"}
    if config_module:
        extra = (Path(config_module).resolve(),)
    output = Path(output)
    sel = select(Path(workflow), includes=includes, entry=entry, extra_files=extra, mode=mode,
                 only_imports=only_imports, limits=limits, progress=progress, leave_out=(output,))
    if config_module:
        config = {"kind": "module", "path": Path(config_module).resolve().relative_to(sel.root).as_posix()}
    elif site:
        config = {"kind": "site"}
    warnings = preflight.check_selection(sel, None if run_args is None else dict(run_args), dict(args or {}), config.get("path"))
    manifest = build_manifest(sel, args=args, config=config)
    archives = packcache.ArchiveCache()
    key = archives.key(manifest.to_json(), GZIP_LEVEL)
    hit = archives.fetch(key, output)
    if hit is not None:
        sha, size = hit
        if progress:
            progress("pack", manifest.total_size, manifest.total_size)
    else:
        try:
            sha, size = write_archive(manifest, sel.root, output, progress, dict(sel.sources))
        except BundleError:
            # A file that disagrees with its hash: never trust a cached hash for it again.
            packcache.HashCache(sel.root).forget()
            raise
        archives.store(key, output, sha, size)
    packcache.ManifestStore().put(manifest)
    return PackResult(Path(output), manifest, sha, size, sel.excluded, tuple(sel.summary()), tuple(warnings))
