"""The bundle archive format: writing it deterministically, reading it safely.

Archives are built the way flit builds an sdist: entries sorted, owners 0,
modes normalised to 0644/0755, a fixed mtime, PAX format, and a gzip header
without a timestamp, so packing the same tree twice gives the same bytes.
``gcbundle.json`` is the first member, so a reader validates the manifest
before it touches any other member. The writer is used by ``bundle.pack``,
by the client's delta (``bundle.delta``) and by the login node when it
rebuilds a bundle from a delta.

The reader is used by ``gcbundle inspect`` on the client and by the login
node before a run starts. A bundle holds only regular files, each named in the manifest with its
size and sha256, in the manifest's order after ``gcbundle.json``. Anything
else (links, devices, directories, extra or missing members, a size or hash
that disagrees, a truncated or bomb-like stream) is refused. Extraction goes
to a fresh temporary directory that is renamed into place only once every
member has been verified, so a refused bundle leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bundle import gzipstream
from bundle.errors import BundleError, ManifestError
from bundle.limits import (
    MAX_BUNDLE_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_MEMBERS,
    MAX_UNPACKED_BYTES,
)
from bundle.manifest import MANIFEST_NAME, FileEntry, Manifest
from bundle.output import OnProgress

#: The mtime of every member: 1980-01-01, as reproducible-build tools use.
FIXED_MTIME = 315532800
GZIP_LEVEL = 6
_READ = 1024 * 1024


_COPY = 1024 * 1024
_HINT = "rebuild the bundle with `gcbundle pack`"
_DATA_FILTER = getattr(tarfile, "data_filter", None)  # PEP 706; absent before 3.11.4


# -- writing ----------------------------------------------------------------------------

def clean_tarinfo(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_archive(manifest: Manifest, root: Path, output: Path, progress: OnProgress | None = None,
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
        # The user's alone: a bundle may hold private code and data.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as raw:
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
                raise BundleError(f"the bundle is {hashing.size} bytes, more than the cap of {MAX_BUNDLE_BYTES}",
                                  "leave large data out with .gcbundleignore and stage it on the site's file system")
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
            raise BundleError(f"{self.entry.path!r} changed while it was being packed",
                              "pack again once nothing writes to the workflow directory")


# -- reading ----------------------------------------------------------------------------

def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r|gz")
    except FileNotFoundError:
        raise BundleError(f"bundle {str(path)!r} does not exist") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{Path(path).name} is not a gzip-compressed tar archive ({exc})", _HINT) from None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    count = 0
    while True:
        try:
            member = tar.next()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"the bundle is truncated or corrupt ({exc})", _HINT) from None
        if member is None:
            return
        count += 1
        if count > MAX_MEMBERS + 1:
            raise BundleError(f"the bundle has more than {MAX_MEMBERS} members", "include fewer files")
        yield member


def _check_member(member: tarfile.TarInfo, dest: str) -> None:
    if not member.isreg():
        kind = ("symlink" if member.issym() else "hardlink" if member.islnk()
                else "directory" if member.isdir() else "device or special file")
        raise BundleError(f"bundle member {member.name!r} is a {kind}; bundles hold only regular files", _HINT)
    if _DATA_FILTER is not None:
        try:
            _DATA_FILTER(member, dest)
        except tarfile.FilterError as exc:
            raise BundleError(f"bundle member {member.name!r} is unsafe: {exc}", _HINT) from None


def _read_exact(f: IO[bytes], size: int, name: str) -> bytes:
    try:
        data = f.read(size)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"the bundle is truncated or corrupt in {name!r} ({exc})", _HINT) from None
    if len(data) != size:
        raise BundleError(f"the bundle is truncated in {name!r}", _HINT)
    return data


def _read_manifest(tar: tarfile.TarFile, members: Iterator[tarfile.TarInfo]) -> Manifest:
    first = next(members, None)
    if first is None or first.name != MANIFEST_NAME:
        raise ManifestError(f"the bundle's first member is not {MANIFEST_NAME}", _HINT)
    _check_member(first, "/")
    if first.size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes", _HINT)
    f = tar.extractfile(first)
    assert f is not None
    manifest = Manifest.loads(_read_exact(f, first.size, MANIFEST_NAME))
    if manifest.total_size > MAX_UNPACKED_BYTES:
        raise BundleError(
            f"the bundle unpacks to {manifest.total_size} bytes, more than the cap of {MAX_UNPACKED_BYTES}",
            "leave large data out of the bundle",
        )
    return manifest


def read_manifest(path: Path | str) -> Manifest:
    """The validated manifest of a bundle, reading nothing past it."""
    with _open(Path(path)) as tar:
        return _read_manifest(tar, _members(tar))


def read_text(path: Path | str, name: str, limit: int = 1 << 20) -> str | None:
    """One small member's text (e.g. the entry file, for ``inspect``), or None if
    it is absent or larger than ``limit``; call after ``verify``, which checks it."""
    with _open(Path(path)) as tar:
        for member in _members(tar):
            if member.name == name and member.isreg() and member.size <= limit:
                f = tar.extractfile(member)
                assert f is not None
                return _read_exact(f, member.size, name).decode("utf-8", "replace")
    return None


def verify(path: Path | str, expected_digest: str | None = None) -> Manifest:
    """Read the whole bundle and check every member against the manifest, writing nothing."""
    return _walk(Path(path), None, expected_digest)


def extract(path: Path | str, dest: Path | str, expected_digest: str | None = None, subset: bool = False) -> Manifest:
    """Extract into ``dest`` (which must not exist) once every member checks out.

    With ``subset``, the archive may hold only some of the manifest's files
    (still in its order): a delta, whose other files come from a cached bundle.
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise BundleError(f"{str(dest)!r} already exists; refusing to overwrite it")
    tmp = dest.with_name(f".{dest.name}.extracting.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700, parents=True)
    try:
        manifest = _walk(Path(path), tmp, expected_digest, subset)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _walk(path: Path, dest: Path | None, expected_digest: str | None, subset: bool = False) -> Manifest:
    with _open(path) as tar:
        members = _members(tar)
        manifest = _read_manifest(tar, members)
        if expected_digest is not None and manifest.digest != expected_digest:
            raise BundleError(f"the bundle's digest is {manifest.digest[:12]}, not the expected {expected_digest[:12]}",
                              "the bundle was altered in transit or on disk; submit it again")
        expected = iter(manifest.files)
        root = str(dest) if dest else "/nonexistent-root"
        for member in members:
            entry = next(expected, None)
            while subset and entry is not None and entry.path != member.name:
                entry = next(expected, None)  # a file the delta leaves to its base
            if entry is None:
                raise BundleError(f"bundle member {member.name!r} is not listed in {MANIFEST_NAME}", _HINT)
            if member.name != entry.path:
                raise BundleError(
                    f"bundle member {member.name!r} is out of place (expected {entry.path!r}): "
                    "duplicate, extra or unsorted member",
                    _HINT,
                )
            _check_member(member, root)
            if member.size != entry.size:
                raise BundleError(
                    f"bundle member {member.name!r} is {member.size} bytes, the manifest says {entry.size}", _HINT
                )
            f = tar.extractfile(member)
            assert f is not None
            h = hashlib.sha256()
            out = _create(dest, entry.path, entry.mode) if dest else None
            try:
                left = entry.size
                while left:
                    data = _read_exact(f, min(_COPY, left), entry.path)
                    h.update(data)
                    if out is not None:
                        out.write(data)
                    left -= len(data)
            finally:
                if out is not None:
                    out.close()
            if h.hexdigest() != entry.sha256:
                raise BundleError(f"bundle member {entry.path!r} does not match its sha256 in {MANIFEST_NAME}",
                                  "the bundle was altered; rebuild it with `gcbundle pack`")
        missing = None if subset else next(expected, None)
        if missing is not None:
            raise BundleError(f"{missing.path!r} is listed in {MANIFEST_NAME} but missing from the archive", _HINT)
    return manifest


def _create(root: Path, rel: str, mode: int) -> IO[bytes]:
    """Create ``root/rel`` exclusively, never following a link on the way."""
    parts = rel.split("/")
    parent = root
    for part in parts[:-1]:
        parent = parent / part
        try:
            os.mkdir(parent, 0o700)
        except FileExistsError:
            if parent.is_symlink() or not parent.is_dir():
                raise BundleError(f"bundle member path {rel!r} crosses a non-directory") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(root / rel, flags, mode & 0o700 | 0o600)
    except FileExistsError:
        raise BundleError(f"bundle member {rel!r} appears twice", _HINT) from None
    return os.fdopen(fd, "wb")


def read_sources(path: Path | str, names: set[str], max_bytes: int) -> dict[str, bytes]:
    """The contents of the members named ``names`` (each up to ``max_bytes``), in one pass:
    the Python sources that preflight checks scan, without extracting anything."""
    out: dict[str, bytes] = {}
    with _open(Path(path)) as tar:
        for member in _members(tar):
            if member.isreg() and member.name in names and member.size <= max_bytes:
                f = tar.extractfile(member)
                if f is not None:
                    out[member.name] = _read_exact(f, member.size, member.name)
    return out
