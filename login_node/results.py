"""The results package of a finished run: what it holds and how it is read in chunks.

The package is a list of files (path in the package, size, sha256) read as one
concatenated byte stream; chunk ``i`` is bytes ``[i*C, (i+1)*C)`` of it, with
``C = CHUNK_BYTES``, so fetching N bytes takes ``ceil(N / C)`` chunk tasks
whatever the number of files. Only regular files inside the run directory
are listed; symlinks a workflow left in ``outputs/`` are skipped, never followed.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from bundle.errors import ResultsError
from bundle.limits import CHUNK_BYTES, LISTING_PAGE_BYTES, chunk_count
from bundle.manifest import check_path, listing_sha256, sha256_file
from login_node.rundir import RunPaths, read_json, write_json

#: (directory in the run, prefix in the package); single files listed apart.
_TREES = (("outputs", "outputs"), ("runinfo", "logs/runinfo"))
_FILES = (
    ("result_json", "result.json"),
    ("result_pkl", "result.pkl"),
    ("report", "report.json"),
    ("request", "run.json"),
    ("state", "state.json"),
    ("driver_log", "logs/driver.log"),
    ("stdout", "logs/stdout"),
    ("stderr", "logs/stderr"),
)


def _scan(paths: RunPaths) -> list[tuple[str, str, os.stat_result]]:
    """(name in the package, path on disk, lstat) of every regular file, sorted by name.

    ``os.scandir`` and plain strings: a chunk task used to spend most of its
    time building ``pathlib`` objects for thousands of outputs.
    """
    out: list[tuple[str, str, os.stat_result]] = []
    for attr, name in _FILES:
        full = str(getattr(paths, attr))
        st = _lstat(full)
        if st is not None and stat.S_ISREG(st.st_mode):
            out.append((name, full, st))
    for attr, prefix in _TREES:
        top = str(getattr(paths, attr))
        st = _lstat(top)
        if st is not None and stat.S_ISDIR(st.st_mode):
            _scan_tree(top, prefix, out)
    out.sort(key=lambda item: item[0])
    return out


def _scan_tree(directory: str, prefix: str, out: list[tuple[str, str, os.stat_result]]) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            # HTEX's CurveZMQ keys live in certificates/: never part of the results.
            if entry.name != "certificates":
                _scan_tree(entry.path, f"{prefix}/{entry.name}", out)
        elif stat.S_ISREG(st.st_mode):
            out.append((f"{prefix}/{entry.name}", entry.path, st))


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None




def manifest(paths: RunPaths) -> dict[str, Any]:
    """The package's file list, hashing only files changed since the last call."""
    try:
        cached = {f["path"]: f for f in read_json(paths.results_manifest)["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        cached = {}
    files = []
    for name, full, st in _scan(paths):
        old = cached.get(name)
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            digest = old["sha256"]
        else:
            digest = sha256_file(Path(full))
        files.append({"path": name, "size": st.st_size, "sha256": digest, "mtime_ns": st.st_mtime_ns})
    listing = [{"path": f["path"], "size": f["size"], "sha256": f["sha256"]} for f in files]
    result = {
        "files": listing,
        "total": sum(f["size"] for f in files),
        "chunk_bytes": CHUNK_BYTES,
        "manifest_sha256": listing_sha256(listing),
    }
    if {f["path"]: f for f in files} != cached:
        write_json(paths.results_manifest, {"files": files})
    return result


def page(paths: RunPaths, start: int, manifest_sha256: str | None) -> dict[str, Any]:
    """Files ``start`` onwards of the package's listing, as many as fit in ``LISTING_PAGE_BYTES``.

    Page 0 (no ``manifest_sha256`` yet) lists the package afresh; later pages
    come from the listing cached by that first one, named by its sha256, so
    every page describes the same package (or the client is told it changed).
    An 80,000-file package is a few pages instead of one reply over the
    service's 10 MiB limit.
    """
    if manifest_sha256 is None:
        head = manifest(paths)
        files, sha = head["files"], head["manifest_sha256"]
    else:
        cached = _cached_listing(paths, manifest_sha256)
        if cached is None:
            raise ResultsError(
                "the run's results changed since their listing was started", "run `gcbundle results` again"
            )
        files = [{"path": f["path"], "size": f["size"], "sha256": f["sha256"]} for f in cached]
        sha = manifest_sha256
    if not 0 <= start <= len(files):
        raise ResultsError(f"listing page {start} is outside 0..{len(files)}")
    out, used, end = [], 0, start
    while end < len(files) and (used < LISTING_PAGE_BYTES or not out):
        f = files[end]
        out.append(f)
        used += len(f["path"].encode("utf-8", "surrogatepass")) + 120
        end += 1
    return {
        "files": out, "page": start, "next_page": end if end < len(files) else None, "file_count": len(files),
        "total": sum(f["size"] for f in files), "chunk_bytes": CHUNK_BYTES, "manifest_sha256": sha,
    }


#: The last results manifest read by ``read_chunk``, by (file, mtime_ns, size):
#: an endpoint worker serves the chunks of one download one after another.
_LISTING: dict[str, Any] = {}


def _cached_listing(paths: RunPaths, manifest_sha256: str) -> list[dict[str, Any]] | None:
    """The files of the manifest the client holds, from the cache ``manifest()`` wrote, if it is that one."""
    try:
        st = os.stat(paths.results_manifest)
    except OSError:
        return None
    key = (str(paths.results_manifest), st.st_mtime_ns, st.st_size)
    if _LISTING.get("key") != key:
        try:
            files = read_json(paths.results_manifest)["files"]
            sha = listing_sha256([{"path": f["path"], "size": f["size"], "sha256": f["sha256"]} for f in files])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        _LISTING.clear()
        _LISTING.update(key=key, files=files, sha=sha)
    return _LISTING["files"] if _LISTING["sha"] == manifest_sha256 else None


_SINGLE = {name: attr for attr, name in _FILES}


def _source(paths: RunPaths, name: str) -> str:
    """Where a package path lives in the run directory (names come from our own cache file: checked anyway)."""
    check_path(name, "results path")
    if name in _SINGLE:
        return str(getattr(paths, _SINGLE[name]))
    for attr, prefix in _TREES:
        if name.startswith(prefix + "/"):
            return os.path.join(str(getattr(paths, attr)), name[len(prefix) + 1:])
    raise ResultsError(f"{name!r} is not part of a results package")


def read_chunk(paths: RunPaths, manifest_sha256: str, index: int) -> bytes:
    """Bytes ``[index*C, (index+1)*C)`` of the package the client's manifest describes.

    Served from the listing ``manifest()`` cached, checking only the files the
    chunk touches (type, size and mtime unchanged); without that cache, the
    package is listed again. Either way a package that changed since the
    client read its manifest is an error, and the client verifies every
    file's sha256 in the end.
    """
    files = _cached_listing(paths, manifest_sha256)
    if files is None:
        current = manifest(paths)
        if current["manifest_sha256"] != manifest_sha256:
            raise ResultsError(
                "the run's results changed since their manifest was read", "run `gcbundle results` again"
            )
        files = _cached_listing(paths, manifest_sha256) or [dict(f, mtime_ns=None) for f in current["files"]]
    total = sum(f["size"] for f in files)
    count = chunk_count(total)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise ResultsError(f"chunk index {index!r} is outside 0..{count - 1}")
    start, end = index * CHUNK_BYTES, min(total, (index + 1) * CHUNK_BYTES)
    out = bytearray()
    pos = 0
    for f in files:
        f_start, f_end = pos, pos + f["size"]
        pos = f_end
        if f_start >= end:
            break
        if f_end <= start:
            continue
        lo, hi = max(start, f_start) - f_start, min(end, f_end) - f_start
        try:
            fd = os.open(_source(paths, f["path"]), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise ResultsError(
                f"{f['path']} disappeared since the results manifest was read", "run `gcbundle results` again"
            ) from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if (
                not stat.S_ISREG(st.st_mode)
                or st.st_size != f["size"]
                or (f.get("mtime_ns") is not None and st.st_mtime_ns != f["mtime_ns"])
            ):
                raise ResultsError(
                    "the run's results changed since their manifest was read", "run `gcbundle results` again"
                )
            fh.seek(lo)
            data = fh.read(hi - lo)
        if len(data) != hi - lo:
            raise ResultsError(f"{f['path']} shrank while it was being read", "run `gcbundle results` again")
        out += data
    return bytes(out)
