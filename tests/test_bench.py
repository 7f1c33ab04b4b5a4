"""Every benchmark runs from a fresh checkout with one command and prints its figures.

Benchmarks are not tests: this only runs each one at its ``--tiny`` size and
checks that it finishes, prints its ratio line(s), and leaves the caller's
gcbundle home, registry and XDG directories alone. No timing is asserted.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = ["pack", "roundtrip", "throughput", "dedup", "results", "driver", "tasks"]
LINE = re.compile(r"^RESULT .+: \w+=-?\d+\.\d+ \(target (<=|>=) [\d.]+: (met|MISSED)\)", re.MULTILINE)


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_runs_at_tiny_size(name: str, tmp_path: Path) -> None:
    homes = ("GCBUNDLE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
    sentinels = {key: tmp_path / key.lower() for key in homes}
    sentinels["GCBUNDLE_REGISTRY"] = tmp_path / "registry.sqlite3"
    scratch = tmp_path / "tmp"  # the bench's own temporary directories land here (TMPDIR)
    scratch.mkdir()
    env = {**os.environ, **{k: str(v) for k, v in sentinels.items()}, "TMPDIR": str(scratch)}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), "--tiny"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert LINE.search(done.stdout), done.stdout
    touched = [k for k, p in sentinels.items() if p.exists()]
    assert not touched, f"the benchmark wrote into the caller's {touched}"
    assert _processes_under(scratch) == [], "the benchmark left processes running (interchange, workers, drivers)"


def _processes_under(directory: Path) -> list[str]:
    """Command lines of processes whose working directory or command line is under ``directory``."""
    needle = str(directory)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(needle) or needle in cmd:
            found.append(f"{entry}: {cmd[:120]}")
    return found
