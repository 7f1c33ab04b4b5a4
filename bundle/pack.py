"""Packing a workflow: select its files, hash them into a manifest, write the archive.

The archive format (deterministic; reader and writer) is ``bundle.archive``.
Packing is as fast as ``tar -czf``: files are hashed on every core, the gzip
stream is compressed on every core (``bundle.gzipstream``), and a re-pack
reuses the hashes of unchanged files and, when the manifest is unchanged,
the archive itself (``bundle.packcache``).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bundle import gzipstream, packcache, preflight
from bundle.archive import FIXED_MTIME, GZIP_LEVEL, write_archive
from bundle.errors import BundleError
from bundle.limits import MAX_MEMBERS, MAX_UNPACKED_BYTES
from bundle.manifest import FileEntry, Manifest, check_path, hash_file
from bundle.output import OnProgress
from bundle.selection import Limits, Selection, select
from bundle.versions import local_versions


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


def build_manifest(sel: Selection, args: dict[str, Any] | None = None,
                   config: dict[str, Any] | None = None) -> Manifest:
    """Hash the selected files (reusing cached hashes of unchanged files) into a manifest."""
    for rel in sel.files:
        check_path(rel, "file path")
    if len(sel.files) > MAX_MEMBERS:
        raise BundleError(f"the workflow has {len(sel.files)} files, more than the cap of {MAX_MEMBERS}",
                          "leave some out with .gcbundleignore, or archive many small files into one")
    cache = packcache.HashCache(sel.root)
    stats = {rel: os.stat(sel.path(rel)) for rel in sel.files}
    digests = {rel: cache.get(rel, st) for rel, st in stats.items()}
    missing = [rel for rel, d in digests.items() if d is None]
    if missing:
        digests.update(_hash_all(sel, missing, stats, cache))
    cache.save()
    entries = [FileEntry(rel, stats[rel].st_size, 0o755 if stats[rel].st_mode & 0o111 else 0o644, digests[rel])
               for rel in sel.files]
    total = sum(e.size for e in entries)
    if total > MAX_UNPACKED_BYTES:
        raise BundleError(f"the workflow's files add up to {total} bytes, more than the cap of {MAX_UNPACKED_BYTES}",
                          "leave large data out with .gcbundleignore and stage it on the site's file system")
    return Manifest(
        entry=sel.entry,
        mode=sel.mode,
        files=tuple(entries),
        args=dict(args or {}),
        config=dict(config or {"kind": "workflow"}),
        client=local_versions(),
        created=_created(stats.values()),
    )


def _hash_all(sel: Selection, rels: list[str], stats: dict[str, os.stat_result],
              cache: packcache.HashCache) -> dict[str, str]:
    """Hash files on every core (hashlib releases the GIL) and remember the results.

    A file whose size when read differs from its stat changed while it was
    hashed: an error now rather than an archive that disagrees with its manifest.
    """
    def one(rel: str) -> tuple[str, str]:
        started = time.time_ns()
        digest, size = hash_file(sel.path(rel))
        st = stats[rel]
        if size != st.st_size:
            raise BundleError(f"{rel!r} changed while it was being packed",
                              "pack again once nothing writes to the workflow directory")
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


def pack(workflow: Path | str, output: Path | str, *, includes: tuple[str, ...] = (), entry: str | None = None,
         args: dict[str, Any] | None = None, config_module: Path | str | None = None,
         site: str | None = None, mode: str | None = None, progress: OnProgress | None = None,
         only_imports: bool = False, limits: Limits | None = None,
         run_args: dict[str, Any] | None = None) -> PackResult:
    """Select, check (``bundle.preflight``), hash and archive a workflow; the one entry point for packing.

    ``args`` are baked into the manifest; ``run_args`` travel beside it (a
    submit's ``--arg``, then every required parameter of ``main`` must have
    a value); both are checked against ``main``'s signature.
    """
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
    warnings = preflight.check_selection(
        sel, None if run_args is None else dict(run_args), dict(args or {}), config.get("path"),
    )
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
    os.chmod(output, 0o600)  # also a cached copy, and an -o file that existed with wider modes
    packcache.ManifestStore().put(manifest)
    return PackResult(Path(output), manifest, sha, size, sel.excluded, tuple(sel.summary()), tuple(warnings))
