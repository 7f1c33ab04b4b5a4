"""The driver in the user's own environment (the site parameter ``driver_init``).

Two real environments besides the endpoint's, made with this machine's
/usr/bin/python3 and pip (from the package index, as a user would), once
and then kept in ``$GCBUNDLE_TEST_CACHE`` (default ~/.cache/gcbundle-tests):

- ``science``: Parsl 2026.7.27 (the endpoint's is another version) and
  ``six``, which the endpoint's environment does not have;
- ``old``: Parsl 2026.4.6, a week before Parsl read PBS Pro's F/T/U/X states.

and a bare venv (no Parsl) made per test. Runs go through the real local
endpoint path (execute_task, a detached driver, a real DFK, real HTEX
workers on this machine with the ``local`` profile); nothing here needs a
scheduler.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import parsl
import pytest
from click.testing import CliRunner

from bundle import api
from bundle.cli import main
from bundle.errors import SiteProfileError
from bundle.registry import Registry
from login_node.pitfalls import version_tuple
from login_node.procs import run_processes
from tests.conftest import write_workflow

SCIENCE_PARSL = "2026.7.27"
OLD_PARSL = "2026.4.6"
CACHE = Path(os.environ.get("GCBUNDLE_TEST_CACHE") or Path.home() / ".cache" / "gcbundle-tests")


def _venv(name: str, packages: list[str]) -> Path:
    """A venv of /usr/bin/python3 with ``packages``, built once (under a lock) and reused."""
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    root = CACHE / f"{name}-py{py}-{'-'.join(p.replace('==', '') for p in packages)}"
    done = root / ".complete"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            subprocess.run(["rm", "-rf", str(root)], check=True, timeout=120)
            subprocess.run(["/usr/bin/python3", "-m", "venv", str(root)], check=True, timeout=300)
            subprocess.run([str(root / "bin" / "pip"), "install", "-q", *packages], check=True, timeout=900)
            done.write_text("ok\n")
    return root


@pytest.fixture(scope="session")
def science_env() -> Path:
    return _venv("science", [f"parsl=={SCIENCE_PARSL}", "six"])


@pytest.fixture(scope="session")
def old_env() -> Path:
    return _venv("old", [f"parsl=={OLD_PARSL}"])


WORKFLOW = '''
import os, sys
from parsl import python_app


@python_app
def where():
    import os, sys
    import parsl, six
    return {"python": sys.executable, "parsl": parsl.__version__, "six": six.__version__}


def main():
    import parsl, six
    return {"driver": {"python": sys.executable, "parsl": parsl.__version__, "six": six.__version__},
            "worker": where().result()}
'''


def test_driver_init_runs_the_workflow_in_the_users_environment(tmp_path: Path, home: Path, science_env: Path) -> None:
    with pytest.raises(ImportError):
        import six  # noqa: F401 - the endpoint's environment has no six
    assert parsl.__version__ != "2026.07.27"
    wf = write_workflow(tmp_path / "wf", WORKFLOW)
    run = api.submit(wf, "local", site="local", params={"driver_init": f"source {science_env}/bin/activate"}, wait=True)
    assert run.last_state["state"] == "succeeded", run.last_state
    value = run.result(tmp_path / "res")
    for side in ("driver", "worker"):
        assert value[side]["python"].startswith(str(science_env)), value
        assert value[side]["parsl"] == "2026.07.27" and value[side]["six"], value
    report = json.loads((tmp_path / "res" / run.id / "report.json").read_text())
    assert version_tuple(report["versions"]["parsl"]) == (2026, 7, 27) and report["python"].startswith(str(science_env))
    assert any(line.startswith("six==") for line in report["pip_freeze"])
    plan = json.loads((home / "runs" / run.id / "driver.json").read_text())
    assert plan["environment"]["parsl"] == "2026.07.27" and plan["lib"].startswith(str(home / "lib"))
    assert run_processes(run.id) == []


def _submit_fails(tmp_path: Path, home: Path, site: str, params: dict[str, object]) -> SiteProfileError:
    wf = write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    with pytest.raises(SiteProfileError) as info:
        api.submit(wf, "local", site=site, params=params)
    assert Registry().list(10) == []
    assert not (home / "runs").exists() or [p.name for p in (home / "runs").iterdir()] == []
    return info.value


def test_preflight_refuses_an_environment_without_parsl(tmp_path: Path, home: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    err = _submit_fails(tmp_path, home, "local", {"driver_init": f"source {bare}/bin/activate"})
    assert "the driver environment cannot run this workflow: Parsl cannot be imported" in err.message
    assert str(bare) in err.message and "install parsl" in (err.hint or "")


def test_preflight_refuses_a_failing_driver_init(tmp_path: Path, home: Path) -> None:
    err = _submit_fails(tmp_path, home, "local", {"driver_init": "source /nonexistent/env/bin/activate"})
    assert "driver_init failed (exit code 1)" in err.message and "driver_init" in (err.hint or "")


def test_preflight_refuses_a_parsl_too_old_for_a_pbs_profile(tmp_path: Path, home: Path, old_env: Path) -> None:
    err = _submit_fails(tmp_path, home, "pbspro", {"driver_init": f"source {old_env}/bin/activate"})
    assert "Parsl 2026.04.06 in the driver's environment" in err.message and "UNKNOWN" in err.message, err.message
    assert "parsl>=2026.4.13" in (err.hint or "")


def test_placement_must_be_known(tmp_path: Path, home: Path) -> None:
    err = _submit_fails(tmp_path, home, "local", {"placement": "moon"})
    assert "placement must be one of login, batch" in err.message


def _doctor(*argv: str) -> tuple[int, dict[str, object], dict[str, dict[str, str]]]:
    res = CliRunner().invoke(main, ["doctor", "--local", *argv, "--json"])
    env = json.loads(res.stdout)
    return res.exit_code, env, {c["name"]: c for c in env["data"]["checks"]}


def test_doctor_reports_every_side_with_driver_init(home: Path, science_env: Path) -> None:
    code, env, by_name = _doctor("--site", "local", "--set", f"driver_init=source {science_env}/bin/activate")
    assert code == 0, env
    driver = by_name["driver environment"]
    assert driver["status"] == "ok" and "Parsl 2026.07.27" in driver["detail"] and str(science_env) in driver["detail"]
    sides = by_name["versions on every side"]["detail"]
    assert f"endpoint: Python {sys.version.split()[0]}, Parsl {parsl.__version__}" in sides, sides
    assert "driver: Python 3.11.2, Parsl 2026.07.27, gcbundle 0.1.0" in sides, sides
    assert "workers: Python 3.11.2, Parsl 2026.07.27" in sides, sides
    assert by_name["worker_init"]["status"] == "ok" and str(science_env) in by_name["worker_init"]["detail"]


LOCAL_WITH_WORKER_INIT = """
engine:
  type: HighThroughputExecutor
  label: htex_local
  provider:
    type: LocalProvider
    worker_init: ${worker_init}
"""


def test_doctor_flags_workers_on_another_parsl(tmp_path: Path, home: Path, science_env: Path, old_env: Path) -> None:
    """driver_init gives the driver Parsl 2026.7.27; a worker_init that activates another environment
    gives the workers 2026.4.6, which the interchange would refuse."""
    site = tmp_path / "mixed.yaml"
    site.write_text(LOCAL_WITH_WORKER_INIT)
    code, env, by_name = _doctor("--site", str(site), "--set", f"driver_init=source {science_env}/bin/activate",
                                 "--set", f"worker_init=source {old_env}/bin/activate")
    assert code != 0
    check = by_name["worker_init"]
    assert check["status"] == "fail" and "workers would run Parsl 2026.04.06" in check["detail"]
    assert "the driver runs 2026.07.27" in check["detail"]
    assert "refuses managers of another Parsl" in check["fix"]


def test_doctor_fails_a_driver_init_without_parsl(tmp_path: Path, home: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    code, env, by_name = _doctor("--site", "local", "--set", f"driver_init=source {bare}/bin/activate")
    assert code != 0 and by_name["driver environment"]["status"] == "fail"
    assert "Parsl cannot be imported" in by_name["driver environment"]["detail"]
