"""Where gcbundle keeps things cannot be used: the registry's folder, or
``$GCBUNDLE_HOME`` (the local endpoint's login-node side). Every command that
needs the place says so in one line, with its exit code (8 registry, 12
GCBUNDLE_HOME) and the ``--json`` envelope; ``doctor`` reports GCBUNDLE_HOME
as a failed check with the fix instead.

"Impossible" places (a file where a folder must be) are tested in-process;
"unwritable" ones in a subprocess that runs as an unprivileged user (as root,
permissions do not stop writes), or with the folder's write bit cleared when
the tests do not run as root.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle.cli import main
from bundle.registry import Registry
from tests.conftest import EXAMPLES, REPO
from tests.registry_rows import row

HELLO = str(EXAMPLES / "hello" / "workflow.py")
RUN = "0123456789ab"

REGISTRY_COMMANDS = [
    ["list"],
    ["status", RUN],
    ["logs", RUN],
    ["results", RUN],
    ["cancel", RUN],
    ["resume", RUN],
    ["submit", HELLO],
    ["prune", "--no-caches"],
]


def invoke_json(argv: list[str]) -> tuple[int, dict, str]:
    res = CliRunner().invoke(main, [*argv, "--json"])
    return res.exit_code, json.loads(res.stdout), res.stderr


@pytest.mark.parametrize("argv", REGISTRY_COMMANDS, ids=lambda a: a[0])
def test_an_impossible_registry_folder(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("GCBUNDLE_REGISTRY", str(tmp_path / "afile" / "registry.sqlite3"))
    code, env, err = invoke_json(argv)
    assert code == 8 and env["status"] == "error" and env["errors"][0]["type"] == "RegistryError", (env, err)
    folder = tmp_path / "afile"
    assert err.strip() == (
        f"gcbundle: error: cannot create the run registry's folder {str(folder)!r}: {folder} is a file, not a folder; "
        "make it writable, or set GCBUNDLE_REGISTRY to a file in a folder you can write"
    )
    runs = tmp_path / "gchome" / "runs"
    assert not runs.exists() or not list(runs.iterdir())  # nothing started


@pytest.mark.parametrize("argv", [["submit", HELLO], ["status", RUN], ["prune", "--no-caches"]], ids=lambda a: a[0])
def test_an_impossible_gcbundle_home(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    home = tmp_path / "afile" / "home"
    Registry().add(row(RUN, workflow=HELLO))
    monkeypatch.setenv("GCBUNDLE_HOME", str(home))
    code, env, err = invoke_json(argv)
    assert code == 12 and env["errors"][0]["type"] == "HomeError", (env, err)
    assert err.startswith(f"gcbundle: error: GCBUNDLE_HOME {str(home)!r} cannot be used: "
                          f"{tmp_path / 'afile'} is a file, not a folder; set GCBUNDLE_HOME to a folder")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["--local", "--endpoint=local"])
def test_doctor_reports_an_impossible_gcbundle_home_as_a_failed_check(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("GCBUNDLE_HOME", str(tmp_path / "afile" / "home"))
    code, env, err = invoke_json(["doctor", where])
    assert code == 10 and env["errors"][0]["type"] == "ChecksFailed", (env, err)
    checks = {c["name"]: c for c in env["data"]["checks"]}
    home_check = checks["GCBUNDLE_HOME"]
    assert home_check["status"] == "fail" and "is a file, not a folder" in home_check["detail"]
    assert "set GCBUNDLE_HOME to a writable directory" in home_check["fix"]
    assert [c["name"] for c in env["data"]["checks"] if c["status"] == "fail"] == ["GCBUNDLE_HOME"]


# -- unwritable: a real permission refusal ------------------------------------------------

@pytest.fixture
def other_user() -> Iterator[tuple[Path, dict[str, str], dict]]:
    """A scratch folder, an environment and subprocess arguments under which the
    gcbundle command runs without write permission where the test says."""
    scratch = Path(tempfile.mkdtemp(prefix="gcbundle-perm-", dir="/tmp"))
    os.chmod(scratch, 0o755)
    kwargs: dict = {}
    if os.geteuid() == 0:
        user = pwd.getpwnam("nobody")
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        os.chown(scratch, user.pw_uid, user.pw_gid)
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(scratch),
        "XDG_DATA_HOME": str(scratch / "data"),
        "XDG_CACHE_HOME": str(scratch / "cache"),
        "XDG_CONFIG_HOME": str(scratch / "config"),
        "GCBUNDLE_HOME": str(scratch / "gchome"),
        "GCBUNDLE_REGISTRY": str(scratch / "reg" / "registry.sqlite3"),
    }
    try:
        yield scratch, env, kwargs
    finally:
        for p in scratch.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
        shutil.rmtree(scratch, ignore_errors=True)


def _locked(path: Path) -> None:
    """A folder the command may read but not write (owned by root, or without its write bit)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o555)


def _gcbundle(args: list[str], env: dict[str, str], kwargs: dict, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bundle.cli", *args], env={**env, "PYTHONPATH": str(REPO)}, cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False, **kwargs)


def test_an_unwritable_registry_folder(other_user: tuple[Path, dict[str, str], dict]) -> None:
    scratch, env, kwargs = other_user
    _locked(scratch / "reg")
    proc = _gcbundle(["list", "--json"], env, kwargs, scratch)
    assert proc.returncode == 8, proc.stderr
    assert json.loads(proc.stdout)["errors"][0]["type"] == "RegistryError"
    assert proc.stderr.strip() == (
        f"gcbundle: error: the run registry's folder {str(scratch / 'reg')!r} is not writable; "
        "make it writable, or set GCBUNDLE_REGISTRY to a file in a folder you can write"
    )


def test_an_unwritable_gcbundle_home(other_user: tuple[Path, dict[str, str], dict]) -> None:
    scratch, env, kwargs = other_user
    _locked(scratch / "gchome")
    proc = _gcbundle(["submit", HELLO, "--json"], env, kwargs, scratch)
    assert proc.returncode == 12, proc.stderr
    assert json.loads(proc.stdout)["errors"][0]["type"] == "HomeError"
    assert proc.stderr.startswith(f"gcbundle: error: GCBUNDLE_HOME {str(scratch / 'gchome')!r} ")
    assert len(proc.stderr.splitlines()) == 1
    proc = _gcbundle(["doctor", "--local", "--json"], env, kwargs, scratch)
    assert proc.returncode == 10, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["data"]["checks"]}
    assert checks["GCBUNDLE_HOME"]["status"] == "fail" and "Permission denied" in checks["GCBUNDLE_HOME"]["detail"]


def test_an_impossible_results_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submit --wait into gcbundle's results dir, and results -o, under a file: exit 9,
    the run itself fine and its results still fetchable elsewhere."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "afile" / "data"))
    code, env, err = invoke_json(["submit", HELLO, "--wait"])
    assert code == 9 and env["errors"][0]["type"] == "ResultsError", (env, err)
    run_id = env["errors"][0]["hint"].split("`gcbundle results ")[1].split()[0]
    results_dir = tmp_path / "afile" / "data" / "gcbundle" / "results"
    assert err.strip().splitlines()[-1] == (
        f"gcbundle: error: cannot create the results folder {str(results_dir)!r}: "
        f"{tmp_path / 'afile'} is a file, not a folder; make it writable, or fetch them elsewhere: "
        f"`gcbundle results {run_id} -o DIR`"
    )
    code, env, err = invoke_json(["results", run_id, "-o", str(tmp_path / "afile" / "out")])
    assert code == 9 and "is a file, not a folder" in err
    code, env, err = invoke_json(["results", run_id, "-o", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / run_id / "result.json").is_file()
