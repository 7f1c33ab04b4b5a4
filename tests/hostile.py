"""Builders of crafted bundles for the hostile-input tests."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from bundle.manifest import FileEntry, Manifest


def manifest_for(files: dict[str, bytes], entry: str = "workflow.py", **overrides: Any) -> dict[str, Any]:
    m = Manifest(
        entry=entry, mode="function",
        files=tuple(FileEntry(p, len(d), 0o644, hashlib.sha256(d).hexdigest()) for p, d in sorted(files.items())),
    )
    data = m.to_json()
    data.update(overrides)
    return data


def write_tar(path: Path, members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], gz: bool = True) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tuple):
                info, data = m
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(m)
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def reg(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def manifest_member(data: dict[str, Any] | bytes) -> tuple[tarfile.TarInfo, bytes]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return reg("gcbundle.json", raw)


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info


def valid_bundle(path: Path, files: dict[str, bytes] | None = None) -> tuple[Path, dict[str, Any]]:
    files = files or {"workflow.py": b"def main():\n    return 1\n"}
    m = manifest_for(files)
    write_tar(path, [manifest_member(m), *(reg(p, d) for p, d in sorted(files.items()))])
    return path, m
