"""Shared fixtures: every test gets its own login-node home, registry and XDG dirs.

The `local` transport is the real thing: tasks go through the endpoint's own
``execute_task`` in a separate process, and runs start real Parsl DFKs with
real HTEX workers. Only the Globus cloud service is faked (in the globus
transport's tests); Slurm and PBS Pro (OpenPBS) are real, on the virtual
site of scripts/site.sh.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

pytest_plugins = [
    name for name in ("tests.conftest_scheduler", "tests.conftest_ssh", "tests.conftest_daemon")
    if importlib.util.find_spec(name) is not None
]


@pytest.fixture(autouse=True)
def gc_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "gchome"
    monkeypatch.setenv("GCBUNDLE_HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("GCBUNDLE_REGISTRY", str(tmp_path / "registry.sqlite3"))
    monkeypatch.setenv("GCBUNDLE_CONFIG", str(tmp_path / "xdg-config" / "gcbundle" / "endpoints.yaml"))
    monkeypatch.setenv("GCBUNDLE_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("GCBUNDLE_POLL_SECONDS", "0.5")
    return home


@pytest.fixture
def home(gc_env: Path) -> Path:
    return gc_env


def write_workflow(root: Path, body: str, name: str = "workflow.py", **extra: str) -> Path:
    """A workflow file (and helper files) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in extra.items():
        path = root / rel.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    wf = root / name
    wf.write_text(body)
    return wf
