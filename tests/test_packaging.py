"""The packaging metadata: building gcbundle says nothing (scripts/setup.sh used
to print ~94 lines of setuptools warnings on every run), and the wheel holds
every package and the site profiles."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_building_the_wheel_prints_no_warnings(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("gcbundle-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {
        p.parent.relative_to(REPO).as_posix()
        for top in ("bundle", "login_node")
        for p in (REPO / top).rglob("__init__.py")
    }
    missing = packages - {n.rsplit("/", 1)[0] for n in names}
    assert packages and all(f"{pkg}/__init__.py" in names for pkg in packages), missing
    sites = {f"bundle/sites/{p.name}" for p in (REPO / "bundle" / "sites").glob("*.yaml")}
    assert sites and sites <= names
    metadata = next(n for n in names if n.endswith("/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()
