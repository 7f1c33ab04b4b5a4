"""`gcbundle doctor`: through the local endpoint (one task, the same code path as
a real endpoint) and `--local` (in this process, what the Ansible role runs
last on a login node), on this machine, the virtual site's login node, with
its real Slurm, OpenPBS, Open MPI and the bond0/hsn0 links (scripts/site.sh)."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import parsl
import pytest
from click.testing import CliRunner

from bundle.cli import main
from bundle.errors import ChecksFailed
from bundle.versions import local_versions
from login_node import doctor as site_doctor
from login_node.rundir import Home
from tests.conftest_scheduler import LOGIN_HSN_ADDRESS

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def doctor(*argv: str) -> tuple[int, dict[str, Any], dict[str, dict[str, str]]]:
    res = CliRunner().invoke(main, ["doctor", *argv, "--json"])
    env = json.loads(res.stdout)
    data = env["data"]
    return res.exit_code, env, {c["name"]: c for c in data["checks"]}


def test_local_mode_passes_on_this_machine(home: Path) -> None:
    code, env, by_name = doctor("--local")
    assert code == 0 and env["status"] == "success", env
    data = env["data"]
    assert data["ok"] and data["home"] == str(home) and data["versions"] == local_versions()
    scheduler, launchers, gc_home = by_name["batch scheduler"], by_name["MPI launchers"], by_name["GCBUNDLE_HOME"]
    assert scheduler["status"] == "ok"
    assert "/usr/bin/sbatch" in scheduler["detail"] and "qsub /" in scheduler["detail"]
    assert scheduler["detail"].endswith("slurm, pbs answers")
    assert launchers["status"] == "ok" and "mpiexec /usr/bin/mpiexec" in launchers["detail"]
    assert gc_home["status"] == "ok" and "GiB free" in gc_home["detail"]
    assert by_name["worker_init"] == {
        "name": "worker_init",
        "status": "ok",
        "fix": "",
        "detail": f"workers get Parsl {parsl.__version__} from {sys.executable}",
    }


def test_endpoint_mode_with_the_slurm_profile(home: Path) -> None:
    code, env, by_name = doctor("--endpoint", "local", "--site", "slurm", "--set", "partition=debug")
    assert code == 0, env
    assert env["data"]["site"] == "slurm" and env["data"]["where"] == "local"
    for both in ("gcbundle, both sides", "Python, both sides", "Globus Compute, both sides", "Parsl, both sides"):
        assert by_name[both]["status"] == "ok", by_name[both]
    assert by_name["site profile"]["detail"] == "slurm: HighThroughputExecutor/SlurmProvider built"
    res = CliRunner().invoke(main, ["doctor", "--endpoint", "local", "--site", "slurm"])
    assert res.exit_code == 0 and res.stdout.rstrip().endswith("all checks passed")
    assert "  ok    batch scheduler" in res.stdout


def test_polaris_profile_fails_here_and_says_how_to_fix(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A login node without PBS commands nor the interface the profile names."""
    without_pbs = [d for d in os.environ["PATH"].split(os.pathsep) if not Path(d, "qsub").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(without_pbs))
    polaris = ("--local", "--site", "polaris", "--set", "account=proj", "--set", "ifname=nosuch0")
    code, env, by_name = doctor(*polaris)
    assert code == ChecksFailed.exit_code and env["status"] == "error"
    assert "2 doctor checks failed: batch scheduler, address of executors[0]" in env["errors"][0]["message"]
    assert by_name["batch scheduler"]["status"] == "fail" and "qsub, qstat, qdel" in by_name["batch scheduler"]["fix"]
    address = by_name["address of executors[0]"]
    assert address["status"] == "fail" and "address_by_interface(ifname='nosuch0') failed here" in address["detail"]
    assert "--set ifname=" in address["fix"]
    res = CliRunner().invoke(main, ["doctor", *polaris])
    assert res.exit_code == ChecksFailed.exit_code
    assert "  FAIL  address of executors[0]" in res.stdout
    assert "fix: no nosuch0 on this login node, but it has hsn0, bond0" in res.stdout
    assert "gcbundle: error: 2 doctor checks failed" in res.stderr


def test_polaris_profile_passes_on_the_virtual_login_node(pbs_cluster: None, home: Path) -> None:
    """The real OpenPBS answers and hsn0 exists, as on a Polaris login node."""
    code, env, by_name = doctor("--endpoint", "local", "--site", "polaris", "--set", "account=proj")
    assert code == 0, env
    assert by_name["batch scheduler"]["detail"].endswith("pbs answers")
    address = by_name["address of executors[0]"]
    assert address["detail"] == f"address_by_interface(ifname='hsn0') = {LOGIN_HSN_ADDRESS}"


def test_missing_required_parameter_is_a_failing_check(home: Path) -> None:
    code, _, by_name = doctor("--local", "--site", "perlmutter")
    assert code == ChecksFailed.exit_code
    assert by_name["site profile"]["status"] == "fail" and "needs account" in by_name["site profile"]["detail"]


def test_site_defaults_give_the_account(home: Path) -> None:
    """A parameter the Ansible role wrote into site-defaults.yaml counts, as in the driver."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "site-defaults.yaml").write_text(
        "profile_params:\n  account: m0000\n  ifname: lo\nworker_init: export GCBUNDLE_DOCTOR_SITE=1\n"
    )
    _, _, by_name = doctor("--local", "--site", "perlmutter")
    assert by_name["site profile"]["status"] == "ok"
    assert by_name["address of executors[0]"]["status"] == "ok"


def fake_parsl_env(root: Path) -> str:
    """A bin/ whose process_worker_pool.py runs another Parsl (1999.1.1)."""
    (root / "lib" / "parsl").mkdir(parents=True)
    (root / "lib" / "parsl" / "__init__.py").write_text("__version__ = '1999.1.1'\n")
    (root / "bin").mkdir()
    pool = root / "bin" / "process_worker_pool.py"
    pool.write_text(f"#!{sys.executable}\n")
    pool.chmod(pool.stat().st_mode | stat.S_IXUSR)
    return f"export PATH={root}/bin:$PATH PYTHONPATH={root}/lib"


def test_worker_init_that_changes_parsl_fails(tmp_path: Path, home: Path) -> None:
    init = fake_parsl_env(tmp_path / "other-env")
    code, _, by_name = doctor("--local", "--site", "slurm", "--set", f"worker_init={init}")
    assert code == ChecksFailed.exit_code
    check = by_name["worker_init"]
    assert check["status"] == "fail"
    assert check["detail"].startswith(
        f"workers would run Parsl 1999.1.1 ({sys.executable}), the driver runs {parsl.__version__}"
    )
    assert "the interchange refuses managers of another Parsl" in check["fix"]


def test_worker_init_that_hangs_fails(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site_doctor, "WORKER_INIT_TIMEOUT", 1)
    code, _, by_name = doctor("--local", "--site", "slurm", "--set", "worker_init=sleep 30")
    assert code == ChecksFailed.exit_code
    assert by_name["worker_init"]["detail"] == "the job's worker_init did not finish in 1 s"


def test_unwritable_home_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    report = site_doctor.site_report(Home(blocker / "home"))
    by_name = {c["name"]: c for c in report["checks"]}
    assert not report["ok"] and by_name["GCBUNDLE_HOME"]["status"] == "fail"
    assert "set GCBUNDLE_HOME to a writable directory" in by_name["GCBUNDLE_HOME"]["fix"]


def test_missing_scheduler_commands(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    code, _, by_name = doctor("--local", "--site", "slurm")
    assert code == ChecksFailed.exit_code
    scheduler, launchers = by_name["batch scheduler"], by_name["MPI launchers"]
    assert scheduler["status"] == "fail" and "sbatch not found" in scheduler["detail"]
    assert launchers["status"] == "warn" and "MpiExecLauncher runs `mpiexec`" in launchers["detail"]


def test_no_mpi_launcher_is_a_warning_not_ok(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither mpiexec nor srun on PATH: without a profile that is a warning (with the
    fix), with a profile that starts its workers without one it is fine."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    _, _, by_name = doctor("--local")
    launchers = by_name["MPI launchers"]
    assert launchers["status"] == "warn" and launchers["detail"] == "mpiexec not found, srun not found"
    assert "no MPI launcher on this login node's PATH" in launchers["fix"]
    _, _, by_name = doctor("--local", "--site", "local")
    launchers = by_name["MPI launchers"]
    assert launchers["status"] == "ok" and launchers["detail"].endswith("(the profile starts its workers without one)")


def test_doctor_needs_an_endpoint_or_local() -> None:
    res = CliRunner().invoke(main, ["doctor"])
    assert res.exit_code == 2 and "--endpoint E" in res.stderr and "--local" in res.stderr


#: The polaris profile on the virtual site: only what the machine lacks overridden (see tests/test_pbs_e2e.py).
POLARIS_HERE = (
    "--set", "account=proj",
    "--set", "bind_cmd=--bind-to",
    "--set", "mpi_overrides=",
    "--set", "cpus_per_node=2",
    "--set", "select_options=mpiprocs=1",
    "--set", "cpu_affinity=alternating",
)  # fmt: skip


@pytest.mark.timeout(300)
def test_probe_job_reaches_the_login_node_on_hsn0(pbs_cluster: None, home: Path) -> None:
    """`--probe` submits one real PBS job; a compute node connects to the address
    the profile resolved (hsn0) at a port of the executor's range."""
    code, env, by_name = doctor("--local", "--site", "polaris", *POLARIS_HERE, "--probe")
    assert code == 0, env
    reach = by_name["compute node reaches executors[0]"]
    assert reach["status"] == "ok"
    reached = rf"probe job \d+\.\S+ on cn\d reached {re.escape(LOGIN_HSN_ADDRESS)}:5\d{{4}} in [\d.]+ s"
    assert re.fullmatch(reached, reach["detail"]), reach


@pytest.mark.timeout(300)
def test_probe_catches_an_address_the_compute_nodes_cannot_reach(pbs_cluster: None, home: Path) -> None:
    """An interface of this login node outside the site's links (eth0 here):
    the address check passes, but the compute nodes have no route to it, and
    only the probe can tell."""
    ip = subprocess.run(["ip", "-4", "-br", "addr"], capture_output=True, text=True, timeout=30, check=True)
    shown = ip.stdout.split("\n")
    outside = [
        line.split()[0].split("@")[0]
        for line in shown
        if len(line.split()) >= 3 and line.split()[0].split("@")[0] not in ("lo", "bond0", "hsn0")
    ]
    assert outside, f"this login node has no interface outside the site's links: {shown}"
    code, env, by_name = doctor(
        "--local", "--site", "polaris", *POLARIS_HERE, "--set", f"ifname={outside[0]}", "--probe"
    )
    assert code == ChecksFailed.exit_code
    assert by_name["address of executors[0]"]["status"] == "ok"
    reach = by_name["compute node reaches executors[0]"]
    assert reach["status"] == "fail" and "(failed) ran, but nothing reached" in reach["detail"], reach
    assert "workers would not reach the interchange" in reach["detail"] and "ifname" in reach["fix"]
    assert "compute node reaches executors[0]" in env["errors"][0]["message"]
