"""Fetching a run's results package: verified, resumable, safe.

The login node lists the package (path, size, sha256) and serves it as one
byte stream in ``CHUNK_BYTES`` chunks. Files are written into
``DIR/.<run_id>.partial/`` in stream order, so after an interruption the bytes
already on disk say where to resume; every file is checked against its sha256
before the directory is renamed to ``DIR/<run_id>``. Paths from the login node
are validated like bundle paths: a hostile listing cannot write outside the
results directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.contracts import (
    ResultsChunkRequest,
    ResultsManifestReply,
    ResultsManifestRequest,
)
from bundle.errors import GcbundleError, ResultsError
from bundle.limits import chunk_count
from bundle.manifest import check_path, sha256_file
from bundle.output import OnProgress
from bundle.transport import Tally, Transport

MARKER = ".gcbundle-results.json"


@dataclass(frozen=True)
class Fetched:
    path: Path
    files: int
    bytes: int
    fetched_bytes: int
    manifest_sha256: str
    tasks: int
    state: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "files": self.files, "bytes": self.bytes, "fetched_bytes": self.fetched_bytes,
                "manifest_sha256": self.manifest_sha256, "tasks": self.tasks, "state": self.state.get("state")}


def _check_listing(listing: Any) -> list[dict[str, Any]]:
    if not isinstance(listing, dict) or not isinstance(listing.get("files"), list):
        raise ResultsError("the login node sent a malformed results manifest", "check the login node with `gcbundle doctor`")
    files = []
    for f in listing["files"]:
        try:
            path = check_path(f["path"], "results path")
        except (GcbundleError, KeyError, TypeError):
            raise ResultsError(f"the results manifest names an unsafe path: {str(f)[:80]}", "refusing to write it; check the login node") from None
        if path == MARKER or not isinstance(f.get("size"), int) or f["size"] < 0 or not isinstance(f.get("sha256"), str):
            raise ResultsError(f"the results manifest has a malformed entry for {path!r}")
        files.append({"path": path, "size": f["size"], "sha256": f["sha256"]})
    return files


def _local_size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() and not path.is_symlink() else 0
    except OSError:
        return 0




def fetch(transport: Transport, run_id: str, dest: Path | str, progress: OnProgress | None = None) -> Fetched:
    """Download, verify and place the results of a finished run in ``dest/<run_id>``."""
    tally = Tally()
    with transport.observing(tally):
        return _fetch(transport, run_id, Path(dest), tally, progress)


def _fetch(transport: Transport, run_id: str, dest: Path, tally: Tally, progress: OnProgress | None) -> Fetched:
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / run_id
    partial = dest / f".{run_id}.partial"
    reply = transport.send(ResultsManifestRequest(run_id=run_id))
    assert isinstance(reply, ResultsManifestReply)
    listing = reply.to_json()
    files = _check_listing(listing)
    sha = reply.manifest_sha256
    chunk = reply.chunk_bytes
    total = sum(f["size"] for f in files)
    done_marker = final / MARKER
    if done_marker.is_file():
        try:
            if json.loads(done_marker.read_text()).get("manifest_sha256") == sha:
                return Fetched(final, len(files), total, 0, sha, tally.sent, listing["state"])
        except (OSError, ValueError):
            pass
    marker = partial / MARKER
    if partial.is_dir():
        try:
            previous = json.loads(marker.read_text()).get("manifest_sha256")
        except (OSError, ValueError):
            previous = None
        if previous != sha:
            shutil.rmtree(partial)  # a different package: start over
    partial.mkdir(mode=0o700, exist_ok=True)
    (partial / MARKER).write_text(json.dumps({"manifest_sha256": sha, "complete": False}))
    fetched = 0
    for attempt in range(2):
        got, streamed = _download(transport, run_id, sha, chunk, files, partial, total, progress)
        fetched += got
        # Files written whole in this pass were hashed as they were written;
        # the rest (already here from an interrupted fetch) are read back.
        bad = [f for f in files if _local_size(partial / f["path"]) != f["size"]
               or (streamed.get(f["path"]) or sha256_file(partial / f["path"])) != f["sha256"]]
        if not bad:
            break
        for f in bad:
            (partial / f["path"]).unlink(missing_ok=True)
        if attempt:
            raise ResultsError(f"{bad[0]['path']} failed verification twice", "run `gcbundle results` again; if it persists, the run directory on the login node is damaged")
    (partial / MARKER).write_text(json.dumps({"manifest_sha256": sha, "complete": True, "run_id": run_id, "files": len(files), "bytes": total}))
    if final.exists():
        old = dest / f".{run_id}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(partial, final)
    return Fetched(final, len(files), total, fetched, sha, tally.sent, listing["state"])


def _download(transport: Transport, run_id: str, sha: str, chunk: int, files: list[dict[str, Any]], root: Path,
              total: int, progress: OnProgress | None) -> tuple[int, dict[str, str]]:
    """Fetch every chunk that holds bytes not yet on disk.

    Return the bytes fetched and the sha256 of each file written from its
    first byte to its last in this pass (hashed as it was written, so a
    download is not read back from disk to be verified).
    """
    spans = []  # (stream start, file entry)
    pos = 0
    resume = None
    for f in files:
        spans.append((pos, f))
        have = _local_size(root / f["path"])
        if resume is None and have < f["size"]:
            resume = pos + have
        elif resume is not None and have:
            (root / f["path"]).unlink()  # beyond the resume point: rewrite in order
        pos += f["size"]
    writer = _StreamWriter(root, spans, resume if resume is not None else total)
    for _start, f in spans:  # empty files have no bytes to fetch
        if f["size"] == 0:
            writer.touch(f["path"])
    if resume is None:
        return 0, writer.digests
    fetched = 0
    first = resume // chunk
    count = chunk_count(total, chunk)
    requests = (ResultsChunkRequest(run_id=run_id, manifest_sha256=sha, index=index).to_json() for index in range(first, count))
    try:
        for index, reply in zip(range(first, count), transport.call_many("results_chunk", requests)):
            data = reply["data"]
            c_start = index * chunk
            if len(data) != min(chunk, total - c_start):
                raise ResultsError(f"results chunk {index} has {len(data)} bytes, expected {min(chunk, total - c_start)}", "run `gcbundle results` again")
            fetched += len(data)
            writer.write(c_start, data)
            if progress:
                progress("results", min(total, c_start + len(data)), total)
    finally:
        writer.close()
    return fetched, writer.digests


class _StreamWriter:
    """Writes the package's byte stream into its files, in order, hashing each file as it goes.

    One file is open at a time (the stream visits each file once), and each
    directory is created and checked once, not once per file and chunk.
    """

    def __init__(self, root: Path, spans: list[tuple[int, dict[str, Any]]], resume: int) -> None:
        self.root = root
        self.spans = spans
        self.resume = resume
        self.next = 0  # index in spans of the first file not finished
        self.current: tuple[dict[str, Any], Any, Any, int] | None = None  # (entry, handle, hasher, written up to)
        self.digests: dict[str, str] = {}
        self.dirs: set[Path] = set()

    def touch(self, rel: str) -> None:
        _open_at(self.root, rel, 0, self.dirs).close()
        self.digests[rel] = hashlib.sha256().hexdigest()

    def write(self, c_start: int, data: bytes) -> None:
        view = memoryview(data)
        c_end = c_start + len(data)
        while self.next < len(self.spans):
            f_start, f = self.spans[self.next]
            f_end = f_start + f["size"]
            if f_end <= max(c_start, self.resume) or f["size"] == 0:
                self.next += 1  # before the resume point, or empty: nothing to write
                continue
            if f_start >= c_end:
                return
            lo, hi = max(c_start, f_start, self.resume), min(c_end, f_end)
            handle, hasher = self._open(f, f_start, lo)
            piece = view[lo - c_start:hi - c_start]
            handle.write(piece)
            hasher.update(piece)
            if hi == f_end:
                handle.close()
                self.digests[f["path"]] = hasher.hexdigest()
                self.current = None
                self.next += 1
            else:
                self.current = (f, handle, hasher, hi)
                return

    def _open(self, f: dict[str, Any], f_start: int, at: int) -> tuple[Any, Any]:
        if self.current is not None and self.current[0] is f and self.current[3] == at:
            return self.current[1], self.current[2]
        self.close()
        handle = _open_at(self.root, f["path"], at - f_start, self.dirs)
        hasher = hashlib.sha256()
        if at > f_start:  # resuming inside this file: hash what is already there
            handle.seek(0)
            left = at - f_start
            while left:
                block = handle.read(min(left, 1024 * 1024))
                if not block:
                    break
                hasher.update(block)
                left -= len(block)
            handle.seek(at - f_start)
        return handle, hasher

    def close(self) -> None:
        if self.current is not None:
            self.current[1].close()
            self.current = None


def _open_at(root: Path, rel: str, offset: int, made: set[Path] | None = None) -> Any:
    path = root / rel
    parent = root
    for part in rel.split("/")[:-1]:
        parent = parent / part
        if made is not None and parent in made:
            continue
        if parent.is_symlink():
            raise ResultsError(f"{parent} is a symlink; refusing to write through it")
        parent.mkdir(mode=0o700, exist_ok=True)
        if made is not None:
            made.add(parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    f = os.fdopen(fd, "r+b")
    f.truncate(offset)
    f.seek(offset)
    return f
