"""Reading bundles safely: the manifest first, then members checked one by one.

Used by ``gcbundle inspect`` on the client and by the login node before a run
starts. A bundle holds only regular files, each named in the manifest with its
size and sha256, in the manifest's order after ``gcbundle.json``. Anything
else (links, devices, directories, extra or missing members, a size or hash
that disagrees, a truncated or bomb-like stream) is refused. Extraction goes
to a fresh temporary directory that is renamed into place only once every
member has been verified, so a refused bundle leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import IO, Iterator

from bundle.errors import BundleError, ManifestError
from bundle.limits import MAX_MANIFEST_BYTES, MAX_MEMBERS, MAX_UNPACKED_BYTES
from bundle.manifest import MANIFEST_NAME, Manifest

_COPY = 1024 * 1024
_HINT = "rebuild the bundle with `gcbundle pack`"
_DATA_FILTER = getattr(tarfile, "data_filter", None)  # PEP 706; absent before 3.11.4


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
        kind = "symlink" if member.issym() else "hardlink" if member.islnk() else "directory" if member.isdir() else "device or special file"
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
        raise BundleError(f"the bundle unpacks to {manifest.total_size} bytes, more than the cap of {MAX_UNPACKED_BYTES}", "leave large data out of the bundle")
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
            raise BundleError(f"the bundle's digest is {manifest.digest[:12]}, not the expected {expected_digest[:12]}", "the bundle was altered in transit or on disk; submit it again")
        expected = iter(manifest.files)
        root = str(dest) if dest else "/nonexistent-root"
        for member in members:
            entry = next(expected, None)
            while subset and entry is not None and entry.path != member.name:
                entry = next(expected, None)  # a file the delta leaves to its base
            if entry is None:
                raise BundleError(f"bundle member {member.name!r} is not listed in {MANIFEST_NAME}", _HINT)
            if member.name != entry.path:
                raise BundleError(f"bundle member {member.name!r} is out of place (expected {entry.path!r}): duplicate, extra or unsorted member", _HINT)
            _check_member(member, root)
            if member.size != entry.size:
                raise BundleError(f"bundle member {member.name!r} is {member.size} bytes, the manifest says {entry.size}", _HINT)
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
                raise BundleError(f"bundle member {entry.path!r} does not match its sha256 in {MANIFEST_NAME}", "the bundle was altered; rebuild it with `gcbundle pack`")
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
