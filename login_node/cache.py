"""The content-addressed bundle cache on the login node.

``cache/<digest>.tar.gz`` exists only once the whole archive has arrived and
every member has been checked against its manifest (``bundle.archive.verify``):
chunks land in ``cache/.staging/`` and the finished archive is moved into place
with one ``os.replace``. A task killed half-way leaves at most staging files,
which the next upload of the same bundle reuses.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from bundle import archive
from bundle.contracts import check_digest
from bundle.errors import BundleError, UsageError
from bundle.limits import CHUNK_BYTES, MAX_BUNDLE_BYTES, chunk_count
from bundle.manifest import sha256_file
from login_node.delta import rebuild
from login_node.rundir import Home, write_atomic

#: Staging directories untouched this long are abandoned uploads.
STALE_STAGING = 7 * 24 * 3600


class Cache:
    def __init__(self, home: Home) -> None:
        self.home = home
        home.ensure()

    def has(self, digest: str) -> bool:
        return self.home.cached_bundle(check_digest(digest)).is_file()

    def path(self, digest: str) -> Path:
        path = self.home.cached_bundle(check_digest(digest))
        if not path.is_file():
            raise BundleError(
                f"bundle {digest[:12]} is not in the login node's cache",
                "submit the workflow again; the client uploads it",
            )
        return path

    def evict(self, digest: str) -> None:
        """Remove an entry that failed verification, so the next launch asks the client to send it again.

        A cache entry is checked when it is made, so one that fails later was
        damaged on disk (a bad block, a full disk during a copy, a hand edit):
        keeping it would make every later launch of that bundle fail the same way.
        """
        self.home.cached_bundle(check_digest(digest)).unlink(missing_ok=True)

    def _staging_dir(self, digest: str, archive_sha256: str) -> Path:
        return self.home.staging / f"{digest}-{archive_sha256[:16]}"

    def staged_chunks(self, digest: str, archive_sha256: str) -> list[int]:
        d = self._staging_dir(check_digest(digest), check_digest(archive_sha256, "archive_sha256"))
        if not d.is_dir():
            return []
        return sorted(int(p.stem) for p in d.glob("*.part") if p.stem.isdigit())

    def put_chunk(
        self, digest: str, archive_sha256: str, size: int, index: int, data: bytes, base: str | None = None
    ) -> bool:
        """Store one chunk; return True once the bundle is complete and cached.

        With ``base``, the chunks make up a delta against that cached bundle
        (``archive_sha256`` is the delta's), and the whole bundle is rebuilt
        from the two once the last one arrives.
        """
        check_digest(digest)
        check_digest(archive_sha256, "archive_sha256")
        if base is not None:
            self.path(check_digest(base, "base"))  # refuse a delta against a bundle we do not have, at once
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE_BYTES:
            raise BundleError(
                f"bundle size {size!r} is outside 1..{MAX_BUNDLE_BYTES} bytes", "leave large data out of the bundle"
            )
        count = chunk_count(size)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            raise UsageError(f"chunk index {index!r} is outside 0..{count - 1}")
        expected = CHUNK_BYTES if index < count - 1 else size - CHUNK_BYTES * (count - 1)
        if not isinstance(data, (bytes, bytearray)) or len(data) != expected:
            held = len(data) if isinstance(data, (bytes, bytearray)) else "?"
            raise BundleError(f"chunk {index} holds {held} bytes, expected {expected}", "upload the bundle again")
        if self.has(digest):
            return True
        d = self._staging_dir(digest, archive_sha256)
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(d / f"{index}.part", bytes(data))
            if len(self.staged_chunks(digest, archive_sha256)) < count:
                return False
            self._assemble(digest, archive_sha256, size, count, d, base)
        except FileNotFoundError:
            # Another upload of the same bundle finished and removed the staging directory.
            if not self.has(digest):
                raise
        return True

    def put_whole(self, digest: str, archive_sha256: str, data: bytes) -> None:
        """Store a bundle that arrived in one piece (inside a launch task)."""
        check_digest(digest)
        check_digest(archive_sha256, "archive_sha256")
        if not isinstance(data, (bytes, bytearray)) or not 0 < len(data) <= MAX_BUNDLE_BYTES:
            raise BundleError("the inline bundle is empty, too large or not bytes", "submit it again")
        if self.has(digest):
            return
        tmp = self.home.staging / f"whole.{digest[:16]}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            write_atomic(tmp, bytes(data))
            self._commit(digest, archive_sha256, len(data), tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _assemble(
        self, digest: str, archive_sha256: str, size: int, count: int, d: Path, base: str | None = None
    ) -> None:
        tmp = self.home.staging / f"assembled.{digest[:16]}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            with open(tmp, "wb") as out:
                for i in range(count):
                    with open(d / f"{i}.part", "rb") as f:
                        shutil.copyfileobj(f, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            self._commit(digest, archive_sha256, size, tmp, base)
        except BundleError:
            shutil.rmtree(d, ignore_errors=True)  # bad chunks must not be reused
            raise
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)
        self.sweep_staging()

    def _commit(self, digest: str, archive_sha256: str, size: int, tmp: Path, base: str | None = None) -> None:
        """Check a complete archive and move it to its cache name: the only way an entry appears."""
        if tmp.stat().st_size != size or sha256_file(tmp) != archive_sha256:
            raise BundleError(f"bundle {digest[:12]} arrived corrupted (its sha256 does not match)", "submit it again")
        if base is not None:
            whole = rebuild(tmp, self.path(base), base, digest, self.home.staging)
            try:
                os.replace(whole, tmp)  # checked file by file as it was written
            finally:
                whole.unlink(missing_ok=True)
        else:
            archive.verify(tmp, expected_digest=digest)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.home.cached_bundle(digest))

    def sweep_staging(self) -> None:
        now = time.time()
        for d in self.home.staging.iterdir():
            try:
                if now - d.lstat().st_mtime > STALE_STAGING:
                    if d.is_dir() and not d.is_symlink():
                        shutil.rmtree(d, ignore_errors=True)
                    else:
                        d.unlink()
            except FileNotFoundError:
                pass

