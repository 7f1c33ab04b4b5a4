"""Sending only what changed: a bundle as a delta against one the login node already has.

A bundle's digest changes with any file, and the login node caches whole
bundles by digest, so a resubmit after a one-line edit used to send the whole
bundle again. When the login node holds an earlier bundle of ours (a base),
the client sends a delta instead: an ordinary bundle archive with the new,
complete manifest but only the files whose content (sha256) the base lacks.
The login node rebuilds the whole bundle from the two and checks it against
the manifest like any other (``login_node.delta``); a renamed or copied file
costs nothing, since files are matched by content.

Bases are the bundles this client packed recently (their manifests are kept
in ``bundle.packcache.ManifestStore``); ``probe`` asks which of those the
login node still has (protocol 2, see ``bundle.protocol``). A delta is sent
only when it carries at most ``WORTH`` of the bundle's bytes.
"""
from __future__ import annotations

import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import gzipstream
from bundle.archive import GZIP_LEVEL, HashingWriter, clean_tarinfo
from bundle.manifest import MANIFEST_NAME, Manifest
from bundle.packcache import ManifestStore

#: Bases offered to the login node in one probe.
MAX_BASES = 8
#: A delta is worth sending when its files hold at most this share of the bundle's bytes.
WORTH = 0.5


def _shared_bytes(manifest: Manifest, base: Manifest) -> int:
    have = {f.sha256 for f in base.files}
    return sum(f.size for f in manifest.files if f.sha256 in have)


def candidates(manifest: Manifest, store: ManifestStore | None = None) -> list[Manifest]:
    """Recently packed bundles that share content with ``manifest``, most bytes shared first."""
    scored = [(_shared_bytes(manifest, m), m) for m in (store or ManifestStore()).recent(exclude=manifest.digest)]
    scored = [(n, m) for n, m in scored if n > 0]
    scored.sort(key=lambda item: -item[0])
    return [m for _, m in scored[:MAX_BASES]]


@dataclass
class Delta:
    """A delta archive on disk (removed by ``close``)."""

    base: str
    path: Path
    sha256: str
    size: int
    files: int
    bytes: int

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Delta:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def build(archive_path: Path, manifest: Manifest, bases: list[Manifest], held: list[str],
          workdir: Path) -> Delta | None:
    """A delta of the bundle at ``archive_path`` against the best base the login node ``held``, if worth it."""
    usable = [m for m in bases if m.digest in set(held)]
    if not usable or manifest.total_size == 0:
        return None
    base = max(usable, key=lambda m: _shared_bytes(manifest, m))
    have = {f.sha256 for f in base.files}
    send = {f.path for f in manifest.files if f.sha256 not in have}
    carried = sum(f.size for f in manifest.files if f.path in send)
    if carried > WORTH * manifest.total_size:
        return None
    fd, name = tempfile.mkstemp(prefix=".delta-", suffix=".tar.gz", dir=workdir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw:
            sha, size = _write_delta(archive_path, send, raw)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Delta(base.digest, path, sha, size, len(send), carried)


def _write_delta(archive_path: Path, send: set[str], raw: Any) -> tuple[str, int]:
    """Copy the manifest and the ``send`` members of our own archive into a new one, same format."""
    out = HashingWriter(raw)
    with tarfile.open(archive_path, mode="r|gz") as src, \
            gzipstream.ParallelGzipWriter(out, GZIP_LEVEL) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=1024 * 1024) as dst:
        for member in src:
            if member.name != MANIFEST_NAME and member.name not in send:
                continue
            f = src.extractfile(member)
            assert f is not None
            data = f if member.name != MANIFEST_NAME else io.BytesIO(f.read())
            dst.addfile(clean_tarinfo(member.name, member.size, member.mode), data)
    return out.sha256.hexdigest(), out.size

