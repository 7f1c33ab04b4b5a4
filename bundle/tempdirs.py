"""The client's temporary folders, and sweeping those a killed client left behind.

A submit packs into a temporary folder that the ``with`` block removes; a
client killed by SIGKILL (or a power cut) never gets there, and each such
folder holds a whole bundle. Every folder is named for the process that made
it (``gcbundle-<pid>-<start>-...``, the start time telling a reused pid
apart), so the next client can tell an abandoned folder from one in use and
remove it when it starts.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PREFIX = "gcbundle-"
_NAME = re.compile(r"gcbundle-(\d+)-(\d+)-.+")


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    return fields[19].decode() if len(fields) > 19 and fields[0] != b"Z" else None


def _owner_alive(pid: int, start: str) -> bool:
    if pid == os.getpid():
        return True
    if os.path.isdir("/proc"):
        return _start_time(pid) == start
    try:  # no /proc (macOS): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def workdir(purpose: str = "work") -> Iterator[Path]:
    """A private temporary folder, removed on exit (and by the next client if this one is killed)."""
    me = os.getpid()
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}{me}-{_start_time(me) or 0}-{purpose}-")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep(root: Path | str | None = None) -> list[str]:
    """Remove this user's gcbundle temporary folders whose process is gone; return their names."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    uid = os.getuid()
    for entry in entries:
        m = _NAME.fullmatch(entry.name)
        if not m:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid != uid or not entry.is_dir(follow_symlinks=False):
            continue
        if _owner_alive(int(m.group(1)), m.group(2)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return removed
