"""Fixtures of the daemon tier: a private RabbitMQ, the Globus service STAND-IN
(tests/globus_service.py), and the real ``globus-compute-endpoint`` daemon run
from the files our Ansible role writes, under its systemd unit (emulated on a
cgroup-v2 directory, see tests/daemon.py), as the unprivileged account
``gcbdaemon`` (scripts/setup_rabbitmq.sh creates it).

One set-up per test session (about 30 s: broker, role, three endpoint
managers); the tests share it. Missing prerequisites fail the tests, with the
command that installs them; nothing is skipped.
"""
from __future__ import annotations

import os
import pwd
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.daemon import (
    CGROUP_PARENT,
    CGROUP_ROOT,
    RenderedEndpoint,
    SystemdUnit,
    chown_tree,
    render_role,
    run_as,
    user_env,
)
from tests.globus_service import COMPUTE_PORT, Endpoint, GlobusStandIn
from tests.rabbitmq import SETUP_HINT, MissingPrerequisite, RabbitMQ

DAEMON_USER = os.environ.get("GCBUNDLE_DAEMON_USER", "gcbdaemon")
#: The endpoints the role provisions for the tier, with their role variables.
#: ``gcbundle``'s manager heartbeats every 5 s (the endpoint's minimum; a
#: crashed manager's pid file blocks a restart for three heartbeats: 15 s, not
#: 90 s). ``gcbundle-idle`` stops its user endpoint process after 2 idle
#: heartbeats, shortened to 5 s (see ``shorten_heartbeats``).
#: ``gcbundle-allow`` restricts functions (the register test replaces its list).
ENDPOINTS: dict[str, dict[str, object]] = {
    "gcbundle": {"gcbundle_endpoint_core_config_extra": {"heartbeat_period": 5}},
    "gcbundle-idle": {"gcbundle_endpoint_idle_heartbeats_soft": 2, "gcbundle_endpoint_idle_heartbeats_hard": 4},
    "gcbundle-allow": {"gcbundle_endpoint_allowed_functions": ["00000000-0000-4000-8000-00000000a110"]},
}
IDLE_HEARTBEAT_S = 5


@dataclass
class DaemonTier:
    base: Path
    user: pwd.struct_passwd
    rabbit: RabbitMQ
    service: GlobusStandIn
    client_id: str
    client_secret: str
    common_vars: dict[str, object]
    rendered: dict[str, RenderedEndpoint] = field(default_factory=dict)
    units: dict[str, SystemdUnit] = field(default_factory=dict)

    @property
    def config_root(self) -> Path:
        return Path(str(self.common_vars["gcbundle_endpoint_config_root"]))

    @property
    def gcbundle_home(self) -> Path:
        return Path(str(self.common_vars["gcbundle_endpoint_gcbundle_home"]))

    def endpoint_id(self, name: str) -> str:
        return self.service.endpoint_named(name).id

    def client_env(self) -> dict[str, str]:
        """What a gcbundle client (or any SDK user) needs to reach the stand-in as the endpoint's owner."""
        return {
            **self.service.environment(),
            "GLOBUS_COMPUTE_CLIENT_ID": self.client_id,
            "GLOBUS_COMPUTE_CLIENT_SECRET": self.client_secret,
        }

    def gce(self, *args: str, timeout: float = 120, check: bool = True) -> object:
        """``globus-compute-endpoint ARGS`` as the account, with the unit's environment."""
        env = self.units["gcbundle"].environment()
        gce = str(Path(sys.prefix) / "bin" / "globus-compute-endpoint")
        return run_as(self.user, [gce, *args], env=env, cwd=self.user.pw_dir, timeout=timeout, check=check)

    def start(self, name: str, timeout: float = 90) -> str:
        """Start (or restart) endpoint ``name``'s unit; its id once the stand-in sees it online."""
        unit = self.units[name]
        before = self._registrations(name)
        unit.start()
        return self.wait_online(name, before, timeout)

    def _registrations(self, name: str) -> int:
        try:
            return self.service.endpoint_named(name).registrations
        except KeyError:
            return 0

    def is_up(self, name: str, registrations_before: int) -> Endpoint | None:
        """Endpoint ``name`` has registered since and sends heartbeats: its record, else None."""
        try:
            ep = self.service.endpoint_named(name)
        except KeyError:
            return None
        return ep if ep.registrations > registrations_before and ep.online(time.time()) else None

    def wait_online(self, name: str, registrations_before: int, timeout: float = 90) -> str:
        def registered() -> Endpoint | None:
            return self.is_up(name, registrations_before)

        try:
            ep = self.service.wait_for(registered, timeout, f"endpoint {name} to register and send a heartbeat")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}\n--- {self.units[name].log}:\n{tail(self.units[name].log)}\n"
                f"--- endpoint.log:\n{tail(self.rendered[name].ep_dir / 'endpoint.log')}"
            ) from None
        return str(ep.id)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


def shorten_heartbeats(ep: RenderedEndpoint, seconds: int) -> None:
    """Test-only: shorter heartbeats in one rendered template, so idle limits take
    seconds, not minutes. The only change made to what the role wrote."""
    path = ep.ep_dir / "user_config_template.yaml.j2"
    text = path.read_text()
    marker = "engine:\n"
    assert marker in text and "heartbeat_period" not in text
    shorter = f"heartbeat_period: {seconds}  # test-only (tests/conftest_daemon.py)\n\n"
    path.write_text(text.replace(marker, shorter + marker, 1))


def check_prerequisites() -> pwd.struct_passwd:
    problems = []
    if os.geteuid() != 0:
        problems.append("the daemon tier runs as root (it starts the endpoint as another user and uses cgroups)")
    try:
        user = pwd.getpwnam(DAEMON_USER)
    except KeyError:
        user = None
        problems.append(f"the account {DAEMON_USER} does not exist")
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        problems.append("RabbitMQ (Debian's rabbitmq-server) is not installed")
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        problems.append(f"no cgroup-v2 hierarchy at {CGROUP_ROOT}")
    if problems or user is None:
        pytest.fail("daemon tier: " + "; ".join(problems) + f". {SETUP_HINT}", pytrace=False)
    return user


@pytest.fixture(scope="session")
def daemon_tier() -> Iterator[DaemonTier]:
    user = check_prerequisites()
    for old in Path(user.pw_dir).glob("daemon-tier-*"):  # earlier sessions' leftovers, once their process is gone
        if not Path(f"/proc/{old.name.rsplit('-', 1)[-1]}").exists():
            shutil.rmtree(old, ignore_errors=True)
    base = Path(user.pw_dir) / f"daemon-tier-{os.getpid()}"
    base.mkdir(mode=0o755)
    chown_tree(base, user)
    started = time.monotonic()
    rabbit = RabbitMQ(base / "rabbitmq", DAEMON_USER)
    try:
        rabbit.start()
    except MissingPrerequisite as exc:
        pytest.fail(str(exc), pytrace=False)
    client_id, secret = str(uuid.uuid4()), uuid.uuid4().hex
    service = GlobusStandIn(rabbit.url, {client_id: secret})
    try:
        service.start()
    except OSError as exc:
        rabbit.stop()
        pytest.fail(f"the Globus service stand-in cannot listen on localhost:{COMPUTE_PORT} ({exc}); "
                    "GLOBUS_SDK_ENVIRONMENT=local fixes that port: stop whatever holds it", pytrace=False)
    common = {
        "gcbundle_endpoint_config_root": str(base / "globus_compute"),
        "gcbundle_endpoint_gcbundle_home": str(base / "gchome"),
        "gcbundle_endpoint_client_id": client_id,
        "gcbundle_endpoint_client_secret": secret,
    }
    tier = DaemonTier(base=base, user=user, rabbit=rabbit, service=service, client_id=client_id, client_secret=secret,
                      common_vars=common)
    try:
        tier.rendered = render_role(base / "role", user, common, ENDPOINTS, base / "systemd")
        shorten_heartbeats(tier.rendered["gcbundle-idle"], IDLE_HEARTBEAT_S)
        for name, ep in tier.rendered.items():
            tier.units[name] = SystemdUnit(ep.unit, base / f"{name}.unit.log", drop_in_env=service.environment())
        before = {name: tier._registrations(name) for name in tier.units}
        for unit in tier.units.values():
            unit.start()
        for name in tier.units:
            tier.wait_online(name, before[name])
        print(f"\ndaemon tier ready in {time.monotonic() - started:.1f} s", flush=True)
        yield tier
    finally:
        for unit in tier.units.values():
            unit.remove(kill_rest=True)
        try:
            (CGROUP_ROOT / CGROUP_PARENT).rmdir()
        except OSError:
            pass
        service.stop()
        rabbit.stop()


@pytest.fixture
def gc_client(daemon_tier: DaemonTier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DaemonTier:
    """This test process as a gcbundle client of the tier's endpoints (headless client credentials)."""
    for key, value in daemon_tier.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "globus_compute"))
    monkeypatch.setenv("GCBUNDLE_NO_LOGIN", "1")
    return daemon_tier


__all__ = ["DaemonTier", "daemon_tier", "gc_client", "tail", "user_env"]
