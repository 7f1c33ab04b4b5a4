"""Run drivers outlive the endpoint daemon: idle stops, `globus-compute-endpoint
stop`, a crashed manager, and restarts of the systemd unit the role writes.

The Globus Compute web service and Globus Auth are a STAND-IN
(tests/globus_service.py). The endpoint, RabbitMQ and the drivers are real;
systemd is emulated on a cgroup-v2 directory (tests/daemon.py: systemd is not
PID 1 on the test machines), from the unit file the role renders.
"""
from __future__ import annotations

import json
import os
import signal
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_workflow
from tests.conftest_daemon import DaemonTier
from tests.daemon import SystemdUnit, alive, cgroup_pids
from tests.test_daemon import cli, cli_json, wait_state

pytestmark = pytest.mark.daemon

#: One app that holds the run until a file appears (or ``limit`` seconds pass).
HELD = textwrap.dedent('''
    from parsl import python_app

    @python_app
    def held(path, limit):
        import os, time
        deadline = time.time() + limit
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.2)
        return os.path.exists(path)

    def main(release="", limit=600):
        return {"released": held(release, float(limit)).result()}
''')


def start_held_run(tier: DaemonTier, alias: str, tmp_path: Path) -> tuple[str, Path, dict[str, Any]]:
    """A run on ``alias`` that waits for its release file; (run id, release file, running state)."""
    release = tier.base / f"release-{uuid.uuid4().hex[:8]}"
    wf = write_workflow(tmp_path / f"held-{alias}", HELD)
    sub = cli_json("submit", str(wf), "--endpoint", alias, "--arg", f"release={release}")
    assert sub["status"] == "success", sub
    run_id = sub["data"]["run_id"]
    st = wait_state(run_id, {"running"})
    assert st["state"] == "running" and alive(int(st["pid"])), st
    return run_id, release, st


def finish(run_id: str, release: Path) -> dict[str, Any]:
    release.touch()
    done = cli("status", run_id, "--wait", "--json", timeout=600)
    st = json.loads(done.stdout)["data"]
    assert st["state"] == "succeeded", st
    return {"state": st, "stderr": done.stderr}


# -- systemd's kill modes, on a plain detached process ---------------------------------------

def _unit_with(tmp_path: Path, text: str, name: str) -> SystemdUnit:
    """``text`` with ExecStart replaced: a main process that starts a detached
    (new session) child, as the endpoint's worker starts a run driver."""
    script = tmp_path / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        "setsid sleep 300 </dev/null >/dev/null 2>&1 &\n"
        f"echo $! > {tmp_path}/{name}.child\n"
        "exec sleep 300\n"
    )
    script.chmod(0o755)
    lines = [f"ExecStart={script}" if line.startswith("ExecStart=") else line for line in text.splitlines()]
    path = tmp_path / f"{name}.service"
    path.write_text("\n".join(lines) + "\n")
    return SystemdUnit(path, tmp_path / f"{name}.log", timeout_stop=10)


def test_unit_restart_kills_detached_processes_only_without_killmode_process(daemon_tier: DaemonTier) -> None:
    """The role's unit (KillMode=process) keeps a detached child of the endpoint
    through `systemctl restart`; the unit `enable-on-boot` writes (the default
    KillMode=control-group) kills it, as it killed every run's driver."""
    from globus_compute_endpoint.boot_persistence import _SYSTEMD_UNIT_TEMPLATE

    work = daemon_tier.base / f"units-{uuid.uuid4().hex[:8]}"  # readable by the unit's user
    work.mkdir()
    os.chown(work, daemon_tier.user.pw_uid, daemon_tier.user.pw_gid)
    user = daemon_tier.user.pw_name
    ours = daemon_tier.rendered["gcbundle"].unit.read_text()
    assert "KillMode=process" in ours
    theirs = _SYSTEMD_UNIT_TEMPLATE.format(ep_name="gcbundle", gce_exe="/bin/false", user_account=user)
    for name, text, survives in (("role", ours, True), ("enable-on-boot", theirs, False)):
        unit = _unit_with(work, text, name)
        try:
            unit.start()
            child_file = work / f"{name}.child"
            deadline = time.monotonic() + 10
            while not child_file.exists() or not child_file.read_text().strip():
                assert time.monotonic() < deadline, f"{name}: the main process never started its child"
                time.sleep(0.1)
            child = int(child_file.read_text())
            assert child in cgroup_pids(unit.cgroup) and os.getsid(child) != os.getsid(unit.main.pid)  # type: ignore[union-attr]
            unit.restart()
            time.sleep(0.3)
            assert alive(child) is survives, f"{name}: detached child {'died' if survives else 'survived'} a restart"
        finally:
            unit.remove(kill_rest=True)


# -- the real daemon ----------------------------------------------------------------------------

def test_drivers_outlive_unit_restart_endpoint_stop_and_a_manager_crash(gc_client: DaemonTier, tmp_path: Path) -> None:
    tier = gc_client
    name, unit = "gcbundle", gc_client.units["gcbundle"]
    cli("endpoints", "add", "main", tier.endpoint_id(name))
    run_id, release, st = start_held_run(tier, "main", tmp_path)
    driver = int(st["pid"])

    # 1. `systemctl restart` (what the role's handler does on a configuration change)
    before = tier._registrations(name)
    old_main = unit.main.pid  # type: ignore[union-attr]
    unit.restart()
    assert not alive(old_main) and alive(driver), "the unit's restart took the driver down"
    tier.wait_online(name, before)

    # 2. `globus-compute-endpoint stop`; systemd then restarts the unit (Restart=always)
    before = tier._registrations(name)
    # (4.19's `stop` gives the manager 10 s, then says "Encountered timeout" and
    # exits 255 while the manager goes on stopping its user endpoint processes,
    # which takes up to 20 s: its exit code is not what is tested here.)
    tier.gce("stop", name, check=False)
    assert unit.main is not None and unit.main.wait(60) is not None
    assert alive(driver), "`globus-compute-endpoint stop` took the driver down"
    unit.main_exited(lambda: bool(tier.is_up(name, before)))

    # 3. the manager crashes (SIGKILL); systemd restarts it as soon as the
    #    crashed instance's pid file is stale (three heartbeats)
    before = tier._registrations(name)
    os.kill(unit.main.pid, signal.SIGKILL)  # type: ignore[union-attr]
    unit.main_exited(lambda: bool(tier.is_up(name, before)), timeout=180)
    assert alive(driver), "a manager crash took the driver down"

    done = finish(run_id, release)
    assert done["state"]["pid"] == driver


def test_user_endpoint_stops_on_idleness_mid_run_and_the_next_task_says_cold_start(
    gc_client: DaemonTier, tmp_path: Path
) -> None:
    """`gcbundle-idle` stops its user endpoint process after two idle 5 s
    heartbeats; the run goes on in its driver; the next task starts a new
    process (a cold start) and the client says so instead of looking hung."""
    tier = gc_client
    name = "gcbundle-idle"
    ep = tier.endpoint_id(name)
    cli("endpoints", "add", "idle", ep)
    run_id, release, st = start_held_run(tier, "idle", tmp_path)
    driver = int(st["pid"])
    (child,) = tier.service.children(ep)
    running = [p for p in child.pids if alive(p)]  # earlier tests may have had one stop already
    assert len(running) == 1, child.pids
    seen = len(child.pids)
    log_path = next(tier.config_root.glob(f"uep.{ep}.*/endpoint.log"))
    stops = log_path.read_text().count("Idle heartbeats reached.  Shutting down.")

    # No task moves now: the user endpoint process stops itself.
    tier.service.wait_for(lambda: not alive(running[0]), 90, "the idle user endpoint process to stop")
    assert log_path.read_text().count("Idle heartbeats reached.  Shutting down.") == stops + 1
    assert alive(driver), "the idle stop took the driver down"

    done = finish(run_id, release)
    assert "cold start" in done["stderr"], done["stderr"]
    assert done["state"]["pid"] == driver
    assert len(child.pids) == seen + 1 and alive(child.pids[-1])  # a new user endpoint process
