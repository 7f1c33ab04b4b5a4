"""Fetching a run's results package: verified, resumable, safe.

The login node lists the package (path, size, sha256) and serves it as one
byte stream in ``CHUNK_BYTES`` chunks. Files are written into
``DIR/.<run_id>.partial/`` in stream order, so after an interruption the bytes
already on disk say where to resume; every file is checked against its sha256
before the directory is renamed to ``DIR/<run_id>`` (or, when the run was
fetched there before, its files are moved over the earlier copies, and files
the user added stay). Everything the login node sends is checked before use:
paths like bundle paths, so a hostile listing cannot write outside the results
directory, and sizes, digests and totals, so a wrong one is one error line.
The listing comes in pages (protocol 3): any number of files. The announced
total is checked against free disk first, and every chunk against it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.contracts import ResultsChunkRequest, ResultsManifestRequest
from bundle.errors import GcbundleError, ProtocolMismatch, ResultsError
from bundle.fileio import folder_problem
from bundle.limits import MAX_NAME_BYTES, TASK_LIMIT, chunk_count
from bundle.manifest import check_path, listing_sha256, sha256_file
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


_SHA = re.compile(r"[0-9a-f]{64}")
#: Names the client keeps for itself beside and inside a results folder.
_RESERVED = (MARKER,)


def _bad(field: str, why: str = "") -> ResultsError:
    return ResultsError(f"the login node sent a results listing with a malformed `{field}`{': ' + why if why else ''}",
                        "refusing to write it; check the login node with `gcbundle doctor`")


def check_files(raw: Any) -> list[dict[str, Any]]:
    """The files of a results listing, every field checked, before anything is written.

    Paths are checked like bundle paths (relative, no ``..``, no control
    characters), each name at most ``MAX_NAME_BYTES`` long, no name twice
    (up to case and Unicode form), and none both a file and another's folder.
    """
    if not isinstance(raw, list):
        raise _bad("files", f"a {type(raw).__name__}, not a list")
    files = []
    seen: set[str] = set()
    for f in raw:
        if not isinstance(f, dict):
            raise _bad("files[]", f"a {type(f).__name__}, not an object")
        try:
            path = check_path(f.get("path"), "results path")
        except GcbundleError:
            raise ResultsError(f"the results listing names an unsafe path: {str(f.get('path'))[:80]!r}",
                               "refusing to write it; check the login node") from None
        if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in path.split("/")):
            raise _bad("files[].path", f"a name longer than {MAX_NAME_BYTES} bytes in {path[:60]!r}...")
        if path in _RESERVED or path.split("/")[0].startswith(".gcbundle-"):
            raise _bad("files[].path", f"{path!r} is reserved")
        size, sha = f.get("size"), f.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad("files[].size", f"{size!r} for {path!r}")
        if not isinstance(sha, str) or not _SHA.fullmatch(sha):
            raise _bad("files[].sha256", f"for {path!r}")
        key = unicodedata.normalize("NFKC", path).casefold()
        if key in seen:
            raise _bad("files[].path", f"{path!r} appears twice")
        seen.add(key)
        files.append({"path": path, "size": size, "sha256": sha})
    for f in files:
        parts = f["path"].split("/")
        for i in range(1, len(parts)):
            prefix = unicodedata.normalize("NFKC", "/".join(parts[:i])).casefold()
            if prefix in seen:
                raise _bad("files[].path", f"{'/'.join(parts[:i])!r} is both a file and the folder of {f['path']!r}")
    return files


def _check_head(listing: Any) -> dict[str, Any]:
    """The fields of a listing (or its first page) other than the files."""
    if not isinstance(listing, dict):
        raise _bad("reply", f"a {type(listing).__name__}, not an object")
    sha, chunk, total = listing.get("manifest_sha256"), listing.get("chunk_bytes"), listing.get("total")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise _bad("manifest_sha256")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 0 < chunk <= TASK_LIMIT:
        raise _bad("chunk_bytes", f"{chunk!r}, not a size in 1..{TASK_LIMIT}")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise _bad("total", repr(total)[:40])
    st = listing.get("state")
    if not isinstance(st, dict) or not isinstance(st.get("state"), str):
        raise _bad("state", "not an object with a `state` string")
    return {"manifest_sha256": sha, "chunk_bytes": chunk, "total": total, "state": st}


def _listing(transport: Transport, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole listing, page by page (protocol 3), or in one reply from an older login node."""
    try:
        first = transport.send(ResultsManifestRequest(run_id=run_id, page=0)).to_json()
    except ProtocolMismatch:
        first = transport.send(ResultsManifestRequest(run_id=run_id)).to_json()  # a protocol-2 login node: one reply
        files = check_files(first.get("files") if isinstance(first, dict) else None)
        head = _check_head(first)
    else:
        # an unsafe path is named first
        raw = list(check_files(first.get("files") if isinstance(first, dict) else None))
        head = _check_head(first)
        nxt = first.get("next_page")
        while nxt is not None:
            if not isinstance(nxt, int) or isinstance(nxt, bool) or nxt != len(raw):
                raise _bad("next_page", f"{nxt!r}, expected {len(raw)}")
            request = ResultsManifestRequest(run_id=run_id, page=nxt, manifest_sha256=head["manifest_sha256"])
            page = transport.send(request).to_json()
            continues = isinstance(page, dict) and page.get("manifest_sha256") == head["manifest_sha256"]
            if not continues or not isinstance(page.get("files"), list) or not page["files"]:
                raise _bad("page", f"page {nxt} does not continue the listing")
            raw += page["files"]
            nxt = page.get("next_page")
        files = check_files(raw)
    if listing_sha256(files) != head["manifest_sha256"]:
        raise _bad("manifest_sha256", "it does not match the files listed")
    if sum(f["size"] for f in files) != head["total"]:
        raise _bad("total", "it is not the sum of the files' sizes")
    return head, files


def _local_size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() and not path.is_symlink() else 0
    except OSError:
        return 0


@contextmanager
def _exclusive(dest: Path, run_id: str) -> Iterator[None]:
    """One ``results`` of a run into one folder at a time (a lock file beside the results).

    A POSIX record lock (``lockf``): the kernel releases it when its holder
    dies, so a killed fetch never blocks the next one, and unlike ``flock``
    it is not inherited by a forked child (the local endpoint's worker
    outlives a killed client for a moment). The holder's pid is written in
    the file to name it.
    """
    lock = dest / f".{run_id}.lock"
    key = os.path.realpath(lock)
    with _HELD_GUARD:  # record locks are per process: threads of one process exclude each other here
        if key in _HELD:
            raise ResultsError(f"another fetch in this process (pid {os.getpid()}) "
                               f"is fetching run {run_id} into {dest}",
                               "wait for it to finish; the results then are complete")
        _HELD.add(key)
    try:
        with _record_lock(lock, dest, run_id):
            yield
    finally:
        with _HELD_GUARD:
            _HELD.discard(key)


_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


@contextmanager
def _record_lock(lock: Path, dest: Path, run_id: str) -> Iterator[None]:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(fd)
            raise ResultsError(f"another `gcbundle results` (pid {holder}) is fetching run {run_id} into {dest}",
                               "wait for it to finish; the results then are complete") from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino:
                break  # still the file at that name (not one a finishing holder just removed)
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def _check_space(dest: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(dest).free
    except OSError:
        return
    if need > free:
        raise ResultsError(f"the results need {_human(need)} more, and {dest} has {_human(free)} free",
                           "free some space, or fetch into another folder with -o")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def fetch(transport: Transport, run_id: str, dest: Path | str, progress: OnProgress | None = None) -> Fetched:
    """Download, verify and place the results of a finished run in ``dest/<run_id>``.

    A fetch into a folder that already holds this run's results updates the
    package's own files there and leaves every other file alone (a user's
    notes, plots made from the results); files of the earlier package that
    the new one no longer has are removed only while unchanged.
    """
    dest = Path(dest)
    fix = f"make it writable, or fetch them elsewhere: `gcbundle results {run_id} -o DIR`"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"cannot create the results folder {str(dest)!r}: {folder_problem(dest, exc)}",
                           fix) from None
    if not os.access(dest, os.W_OK | os.X_OK):
        raise ResultsError(f"the results folder {str(dest)!r} is not writable", fix)
    tally = Tally()  # the tasks this fetch sends
    with _exclusive(dest, run_id), transport.observing(tally):
        return _fetch(transport, run_id, dest, tally, progress)


def _fetch(transport: Transport, run_id: str, dest: Path, tally: Tally, progress: OnProgress | None) -> Fetched:
    final = dest / run_id
    partial = dest / f".{run_id}.partial"
    head, files = _listing(transport, run_id)
    sha, chunk, total = head["manifest_sha256"], head["chunk_bytes"], head["total"]
    done = _read_marker(final / MARKER)
    if done.get("manifest_sha256") == sha and done.get("complete"):
        return Fetched(final, len(files), total, 0, sha, tally.sent, head["state"])
    marker = partial / MARKER
    if partial.is_dir() and _read_marker(marker).get("manifest_sha256") != sha:
        shutil.rmtree(partial)  # a different package: start over
    if partial.is_dir():
        _check_space(dest, total - sum(min(_local_size(partial / f["path"]), f["size"]) for f in files))
    else:
        _check_space(dest, total)
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
            raise ResultsError(f"{bad[0]['path']} failed verification twice",
                               "run `gcbundle results` again; "
                               "if it persists, the run directory on the login node is damaged")
    info = {"manifest_sha256": sha, "complete": True, "run_id": run_id, "files": len(files), "bytes": total,
            "package": {f["path"]: f["sha256"] for f in files}}
    (partial / MARKER).write_text(json.dumps(info))
    if os.path.lexists(final) and (final.is_symlink() or not final.is_dir()):
        raise ResultsError(f"{final} exists and is not a folder", "move it away, or fetch into another folder with -o")
    if final.is_dir():
        _merge(partial, final, files, done.get("package") if isinstance(done.get("package"), dict) else {})
    else:
        os.rename(partial, final)
    return Fetched(final, len(files), total, fetched, sha, tally.sent, head["state"])


def _merge(partial: Path, final: Path, files: list[dict[str, Any]], previous: dict[str, Any]) -> None:
    """Move a verified package over an earlier copy, touching only the package's own files."""
    made: set[Any] = set()
    (final / MARKER).unlink(missing_ok=True)  # incomplete until the end
    for f in files:
        target = _parents(final, f["path"], made)  # checks every folder on the way (no symlinks)
        if os.path.islink(target) or os.path.isdir(target):
            raise ResultsError(f"{target} is in the way of the results' {f['path']!r}", "move it away and fetch again")
        os.replace(os.path.join(partial, f["path"]), target)
    current = {f["path"] for f in files}
    for path, old_sha in previous.items():
        if path in current or not isinstance(path, str) or not isinstance(old_sha, str):
            continue
        try:
            target = final / check_path(path, "results path")
            if target.is_file() and not target.is_symlink() and sha256_file(target) == old_sha:
                target.unlink()  # the earlier package's, unchanged: not the user's
        except (GcbundleError, OSError):
            continue
    os.replace(partial / MARKER, final / MARKER)
    shutil.rmtree(partial, ignore_errors=True)


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
    requests = (ResultsChunkRequest(run_id=run_id, manifest_sha256=sha, index=index).to_json()
                for index in range(first, count))
    try:
        for index, reply in zip(range(first, count), transport.call_many("results_chunk", requests), strict=False):
            data = reply.get("data") if isinstance(reply, dict) else None
            if not isinstance(data, (bytes, bytearray)) or reply.get("index") != index:
                raise ResultsError(f"the login node sent a results chunk reply without the bytes of chunk {index}",
                                   "run `gcbundle results` again; "
                                   "if it persists, check the login node with `gcbundle doctor`")
            c_start = index * chunk
            expected = min(chunk, total - c_start)
            if len(data) != expected:
                raise ResultsError(f"results chunk {index} has {len(data)} bytes, expected {expected}",
                                   "run `gcbundle results` again")
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
        self.dirs: set[Any] = set()

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


def _open_at(root: Path, rel: str, offset: int, made: set[Any] | None = None) -> Any:
    """Open ``root/rel`` for writing at ``offset``, creating its folders, never through a symlink.

    Plain strings, not ``pathlib``: an 80,000-file package spent a sixth of its
    time building path objects here.
    """
    path = _parents(root, rel, made)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    f = os.fdopen(fd, "r+b")
    f.truncate(offset)
    f.seek(offset)
    return f


def _parents(root: Path, rel: str, made: set[Any] | None = None) -> str:
    """Create the folders of ``root/rel`` (refusing symlinks and non-folders on the way); return its path."""
    base = os.fspath(root)
    parent = base
    for part in rel.split("/")[:-1]:
        parent = os.path.join(parent, part)
        if made is not None and parent in made:
            continue
        if os.path.islink(parent):
            raise ResultsError(f"{parent} is a symlink; refusing to write through it")
        try:
            os.mkdir(parent, 0o700)
        except FileExistsError:
            if not os.path.isdir(parent):
                raise ResultsError(f"{parent} is in the way of {rel!r}: it is not a folder",
                                   "move it away and fetch again") from None
        if made is not None:
            made.add(parent)
    return os.path.join(base, rel)
