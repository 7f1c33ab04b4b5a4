"""The results package of a finished run: what it holds and how it is read in chunks.

The package is a list of files (path in the package, size, sha256) read as one
concatenated byte stream; chunk ``i`` is bytes ``[i*C, (i+1)*C)`` of it, with
``C = CHUNK_BYTES``, so fetching N bytes takes ``ceil(N / C)`` chunk tasks
whatever the number of files. Only regular files inside the run directory
are listed; symlinks a workflow left in ``outputs/`` are skipped, never followed.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from bundle.errors import ResultsError
from bundle.limits import CHUNK_BYTES
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


def _sources(paths: RunPaths) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for attr, name in _FILES:
        p: Path = getattr(paths, attr)
        if _regular(p):
            out.append((name, p))
    for attr, prefix in _TREES:
        top: Path = getattr(paths, attr)
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            # HTEX's CurveZMQ keys live in certificates/: never part of the results.
            dirnames[:] = sorted(d for d in dirnames if d != "certificates" and not os.path.islink(os.path.join(dirpath, d)))
            for fn in sorted(filenames):
                full = Path(dirpath) / fn
                if _regular(full):
                    out.append((f"{prefix}/{full.relative_to(top).as_posix()}", full))
    out.sort(key=lambda item: item[0])
    return out


def _regular(p: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except OSError:
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


def manifest(paths: RunPaths) -> dict[str, Any]:
    """The package's file list, hashing only files changed since the last call."""
    try:
        cached = {f["path"]: f for f in read_json(paths.results_manifest)["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        cached = {}
    files = []
    for name, full in _sources(paths):
        st = os.lstat(full)
        old = cached.get(name)
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            digest = old["sha256"]
        else:
            digest = _sha256(full)
        files.append({"path": name, "size": st.st_size, "sha256": digest, "mtime_ns": st.st_mtime_ns})
    listing = [{"path": f["path"], "size": f["size"], "sha256": f["sha256"]} for f in files]
    canonical = json.dumps(listing, sort_keys=True, separators=(",", ":")).encode()
    result = {
        "files": listing,
        "total": sum(f["size"] for f in files),
        "chunk_bytes": CHUNK_BYTES,
        "manifest_sha256": hashlib.sha256(canonical).hexdigest(),
    }
    if {f["path"]: f for f in files} != cached:
        write_json(paths.results_manifest, {"files": files})
    return result


def read_chunk(paths: RunPaths, manifest_sha256: str, index: int) -> bytes:
    current = manifest(paths)
    if current["manifest_sha256"] != manifest_sha256:
        raise ResultsError("the run's results changed since their manifest was read", "run `gcbundle results` again")
    total = current["total"]
    count = max(1, -(-total // CHUNK_BYTES))
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise ResultsError(f"chunk index {index!r} is outside 0..{count - 1}")
    start, end = index * CHUNK_BYTES, min(total, (index + 1) * CHUNK_BYTES)
    sources = dict(_sources(paths))
    out = bytearray()
    pos = 0
    for f in current["files"]:
        f_start, f_end = pos, pos + f["size"]
        pos = f_end
        if f_end <= start or f_start >= end:
            continue
        lo, hi = max(start, f_start) - f_start, min(end, f_end) - f_start
        fd = os.open(sources[f["path"]], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            fh.seek(lo)
            data = fh.read(hi - lo)
        if len(data) != hi - lo:
            raise ResultsError(f"{f['path']} shrank while it was being read", "run `gcbundle results` again")
        out += data
    return bytes(out)
