"""Rebuilding a whole bundle from a delta and the cached bundle it was made against.

The client sent an ordinary bundle archive holding the new, complete manifest
and only the files whose content the base lacks (``bundle.delta``). The delta
is extracted with the same checks as any bundle (every member it has must
match its manifest entry, in order; the digest must be the one announced),
the missing files are taken from the base by sha256, and the whole archive is
written again with the client's deterministic writer, which hashes every file
against the manifest as it goes. So what enters the cache is checked exactly
as a bundle uploaded whole would be.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bundle import archive
from bundle.errors import BundleError


def rebuild(delta_path: Path, base_path: Path, base_digest: str, digest: str, workdir: Path) -> Path:
    """Write the whole bundle ``digest`` into ``workdir``; return its path (the caller moves it into the cache)."""
    with tempfile.TemporaryDirectory(prefix=".rebuild-", dir=workdir) as tmp:
        new_root = Path(tmp) / "new"
        manifest = archive.extract(delta_path, new_root, expected_digest=digest, subset=True)
        missing = [e for e in manifest.files if not os.path.lexists(new_root / e.path)]
        if missing:
            base_root = Path(tmp) / "base"
            base = archive.extract(base_path, base_root, expected_digest=base_digest)
            by_sha = {f.sha256: base_root / f.path for f in base.files}
            for entry in missing:
                source = by_sha.get(entry.sha256)
                if source is None:
                    raise BundleError(
                        f"the delta leaves {entry.path!r} to bundle {base_digest[:12]}, which does not have it",
                        "submit again: the client sends the whole bundle",
                    )
                target = new_root / entry.path
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
        out = workdir / f"rebuilt.{digest[:16]}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            archive.write_archive(manifest, new_root, out)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    return out
