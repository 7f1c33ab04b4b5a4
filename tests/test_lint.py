"""The linter, as configured in pyproject.toml ([tool.ruff]), finds nothing in the code and tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKED = ("bundle", "login_node", "tests", "bench")


def test_ruff_finds_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *CHECKED], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert "No module named ruff" not in proc.stderr, "ruff is part of the test extra: pip install -e '.[test]'"
    assert proc.returncode == 0, f"ruff check {' '.join(CHECKED)} found:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"
