"""doctor's checks of the known ways a queued run fails (login_node/pitfalls.py).

Each is run for real on this machine: the installed Parsl's own PBS state
table, a bash subshell running the job's prelude and the profile's
worker_init, this machine's /proc/self/mountinfo, an endpoint directory as a
Globus Compute endpoint lays it out. No scheduler command runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import parsl
import pytest
from parsl.jobs.states import JobState
from parsl.providers.torque.torque import translate_table

from bundle import prelude as job_prelude
from bundle import profiles, schedulers
from login_node import doctor as site_doctor
from login_node import pitfalls
from login_node.rundir import Home


def test_version_tuples() -> None:
    assert pitfalls.version_tuple("2026.04.13") == (2026, 4, 13) == pitfalls.version_tuple("2026.4.13")
    assert pitfalls.version_tuple("1.3.0.dev0") == (1, 3, 0)
    assert pitfalls.version_tuple("4.10.1rc2") == (4, 10, 1)


def test_pbs_states_check_agrees_with_the_installed_parsl() -> None:
    """The installed Parsl maps PBS Pro's F/T/U/X, and the check calls its version good."""
    assert translate_table["F"] == JobState.COMPLETED and translate_table["X"] == JobState.COMPLETED
    assert {"T", "U"} <= set(translate_table)
    ok = pitfalls.pbs_job_states(parsl.__version__, ["PBSProProvider"])
    assert ok is not None and ok["status"] == "ok" and parsl.__version__ in ok["detail"]


def test_pbs_states_check_fails_an_older_parsl() -> None:
    old = pitfalls.pbs_job_states("2026.4.6", ["PBSProProvider"], "the driver's environment")
    assert old is not None and old["status"] == "fail"
    assert "Parsl 2026.4.6 in the driver's environment" in old["detail"] and "UNKNOWN" in old["detail"]
    assert "parsl>=2026.4.13" in old["fix"]
    assert pitfalls.pbs_job_states("2025.1.13", ["SlurmProvider"]) is None  # not a PBS provider: not asked
    assert pitfalls.pbs_job_states("absent", ["TorqueProvider"])["status"] == "fail"  # type: ignore[index]


def test_endpoint_version() -> None:
    assert pitfalls.endpoint_version("4.19.0")["status"] == "ok"  # type: ignore[index]
    old = pitfalls.endpoint_version("4.10.0")
    assert old is not None and old["status"] == "warn" and "older than 4.10.1" in old["detail"]
    assert pitfalls.endpoint_version("absent") is None


def _tmpdir_check(site: str, params: dict[str, object], tmp_path: Path) -> dict[str, str]:
    def loopback_address(kind: str, cls: Any, kwargs: dict[str, Any], where: str) -> Any:
        return "127.0.0.1" if kind == "address" else cls(**kwargs)

    config = profiles.build_config(profiles.substitute(profiles.load(site), params), factory=loopback_address)
    provider = config.executors[0].provider
    prelude = job_prelude.worker_prelude(
        bindir="/usr/bin", bundle_dir=str(tmp_path / "b"), outputs_dir=str(tmp_path / "o"), run_id="x"
    )
    prelude = "\n".join(line for line in prelude.splitlines() if not line.startswith("cd ")) + "\n"
    scheduler = schedulers.PROVIDER_SCHEDULER.get(type(provider).__name__)
    return pitfalls.worker_tmpdir(prelude, provider.worker_init, scheduler, type(provider.launcher).__name__, tmp_path)


@pytest.fixture
def polaris_pbs_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pbs.conf naming Polaris' PBS server (the job ids of Parsl issue 3947)."""
    conf = tmp_path / "pbs.conf"
    conf.write_text("PBS_EXEC=/opt/pbs\nPBS_SERVER=polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n")
    monkeypatch.setenv("PBS_CONF_FILE", str(conf))


def test_pbs_tmpdir_too_long_without_the_alcf_fix(polaris_pbs_conf: None, tmp_path: Path) -> None:
    """The pbspro profile keeps PBS's per-job TMPDIR: on Polaris' server name, under PALS's mpiexec, too long."""
    found = _tmpdir_check("pbspro", {}, tmp_path)
    assert found["status"] == "fail", found
    assert "/var/tmp/pbs.1234567.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov" in found["detail"]
    assert "AF_UNIX path too long" in found["detail"] and "export TMPDIR=/tmp" in found["fix"]


@pytest.mark.parametrize("site", ["polaris", "aurora"])
def test_alcf_profiles_pass_the_tmpdir_check(site: str, polaris_pbs_conf: None, tmp_path: Path) -> None:
    found = _tmpdir_check(site, {"account": "p", "worker_init": "true"}, tmp_path)
    assert found["status"] == "ok" and "TMPDIR=/tmp from worker_init" in found["detail"], found


def test_a_long_tmpdir_set_in_worker_init_fails(tmp_path: Path) -> None:
    long = "/scratch/" + "x" * 80
    worker_init = f"mkdir -p {tmp_path}{long} && export TMPDIR={tmp_path}{long}"
    found = _tmpdir_check("slurm", {"worker_init": worker_init}, tmp_path)
    assert found["status"] == "fail" and f"TMPDIR={tmp_path}{long} from worker_init" in found["detail"], found


def test_slurm_jobs_keep_their_tmpdir(tmp_path: Path) -> None:
    found = _tmpdir_check("slurm", {}, tmp_path)
    assert found["status"] == "ok" and "Slurm sets none" in found["detail"], found


def test_run_dir_on_memory_fails_for_batch_jobs(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or pitfalls._mount_of(shm)[1] != "tmpfs":
        pytest.skip("this machine has no tmpfs at /dev/shm")
    assert pitfalls.run_dir_shared(shm / "gcbundle", batch=True)["status"] == "fail"
    assert pitfalls.run_dir_shared(shm / "gcbundle", batch=False)["status"] == "ok"
    here = pitfalls.run_dir_shared(tmp_path, batch=True)
    mount, fstype = pitfalls._mount_of(tmp_path)
    assert here["status"] == "ok" and f"on {fstype} ({mount})" in here["detail"]


def _endpoint_dir(tmp_path: Path, text: str) -> str:
    ep = tmp_path / "endpoint"
    ep.mkdir(parents=True)
    (ep / "config.yaml").write_text(text)
    return str(ep)


def test_idle_timers(tmp_path: Path) -> None:
    assert pitfalls.idle_timers(None) is None
    stays = pitfalls.idle_timers(_endpoint_dir(tmp_path, "engine:\n  type: ThreadPoolEngine\n"))
    assert stays is not None and stays["status"] == "ok" and "stays up" in stays["detail"]
    soft_timer = "idle_heartbeats_soft: 10\nheartbeat_period: 60\nengine:\n  type: ThreadPoolEngine\n"
    stops = pitfalls.idle_timers(_endpoint_dir(tmp_path / "b", soft_timer))
    assert stops is not None and stops["status"] == "warn"
    assert "stops after 10 min" in stops["detail"] and "the run goes on" in stops["detail"]
    assert "idle_heartbeats_soft: 0" in stops["fix"]


def test_doctor_report_carries_the_pitfall_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through site_report with the `local` profile (no scheduler asked): the checks that apply are there."""
    monkeypatch.setenv("GLOBUS_COMPUTE_ENDPOINT_DIR", _endpoint_dir(tmp_path, "idle_heartbeats_soft: 2\n"))
    report = site_doctor.site_report(Home.default(), profiles.load("local").to_spec({}))
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["endpoint idle timers"]["status"] == "warn"
    assert by_name["Globus Compute endpoint version"]["status"] == "ok"
    assert by_name["run directories on a shared file system"]["status"] == "ok"
    assert "Parsl reads PBS Pro job states" not in by_name and "TMPDIR of the batch jobs" not in by_name
    assert report["ok"], report


def test_a_missing_interface_names_the_known_ones_this_node_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """Polaris' address moved from bond0 to hsn0: on a login node with only the other, doctor says which to set.
    (The rule only: the list of this node's interfaces is given, as `ip -br addr` would show it.)"""
    import socket

    monkeypatch.setattr(socket, "if_nameindex", lambda: [(1, "lo"), (2, "eth0"), (3, "bond0")])
    fix = site_doctor._address_fix({"ifname": "hsn0"})
    assert "it has bond0" in fix and "--set ifname=bond0" in fix
    monkeypatch.setattr(socket, "if_nameindex", lambda: [(1, "lo"), (2, "eth0")])
    assert "--set ifname=<name>" in site_doctor._address_fix({"ifname": "hsn0"})
