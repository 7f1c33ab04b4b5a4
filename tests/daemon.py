"""The daemon tier's machinery: the role's files for an unprivileged account, and
its systemd unit run the way systemd runs it, on a cgroup-v2 directory.

``render_role`` runs our Ansible role ``gcbundle_endpoint`` for real, locally,
as the account (``connection: local``, no become), into a scratch directory:
``globus-compute-endpoint configure``, ``config.yaml``,
``user_config_template.yaml.j2``, ``user_environment.yaml``, the credentials
file and the systemd unit are exactly what the role writes on a login node.

``SystemdUnit`` runs that unit file as systemd would, because systemd is not
PID 1 on the test machines: it parses ``[Service]`` (ExecStart, User,
Environment, EnvironmentFile, KillMode, KillSignal, SendSIGKILL, Restart),
starts the main process in the unit's own cgroup (a directory of the cgroup-v2
hierarchy) as the unit's user with the unit's environment in a new session,
and stops it as systemd does for the unit's ``KillMode``:

    control-group (the default)  KillSignal to every process in the cgroup, then SIGKILL
    mixed                        KillSignal to the main process, then SIGKILL to the cgroup
    process                      KillSignal (then SIGKILL) to the main process only

``restart()`` is ``systemctl restart`` (stop, start; the cgroup stays, with
whatever survived the stop in it). ``main_exited()`` is what systemd does
when the main process dies on its own (a crash, or ``globus-compute-endpoint
stop``): the same kill of what remains, then ``Restart=always`` starts it again
after ``RestartSec``, as often as it takes. What it
does not emulate: the journal (output goes to a file), resource limits,
sandboxing options (the role's unit sets none).
"""
from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.conftest_ssh import controller_ansible_env

REPO = Path(__file__).resolve().parent.parent
ROLES = REPO / "ansible" / "roles"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
CGROUP_PARENT = f"gcbundle-daemon-tier-{os.getpid()}"


def run_as(
    user: pwd.struct_passwd,
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str = "/",
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """A command as ``user`` (Popen switches user itself), with only ``env``."""
    proc = subprocess.run(
        argv,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{output}")
    return proc


def user_env(user: pwd.struct_passwd, **extra: str) -> dict[str, str]:
    return {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "LANG": "C.UTF-8",
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **extra}


def chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)


# -- the role ------------------------------------------------------------------------------

PLAY_HEAD = """\
- name: The gcbundle_endpoint role, locally, as the endpoint's own account
  hosts: localhost
  connection: local
  gather_facts: true
  gather_subset: [min]
  roles:
"""


@dataclass(frozen=True)
class RenderedEndpoint:
    name: str
    ep_dir: Path
    unit: Path


def render_role(workdir: Path, user: pwd.struct_passwd, common: dict[str, object],
                endpoints: Mapping[str, dict[str, object]], unit_dir: Path) -> dict[str, RenderedEndpoint]:
    """Run the role once per endpoint (one play) as ``user``; what it wrote, by endpoint name.

    ``gcbundle_endpoint_start: false`` and the systemd keep-alive with a unit
    directory the account owns: the role writes everything and starts nothing
    (the tests start the unit themselves, the way systemd would).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    unit_dir.mkdir(parents=True, exist_ok=True)
    play = PLAY_HEAD + "".join(
        f"    - role: gcbundle_endpoint\n      vars: {json.dumps({'gcbundle_endpoint_name': name, **extra})}\n"
        for name, extra in endpoints.items()
    )
    (workdir / "play.yml").write_text(play)
    variables = {
        "ansible_python_interpreter": sys.executable,
        "gcbundle_endpoint_venv": sys.prefix,
        "gcbundle_endpoint_start": False,
        "gcbundle_endpoint_keepalive": "systemd",
        "gcbundle_endpoint_systemd_unit_dir": str(unit_dir),
        **common,
    }
    (workdir / "vars.json").write_text(json.dumps(variables))
    env = controller_ansible_env(workdir / "ansible", base=user_env(user))
    env["ANSIBLE_ROLES_PATH"] = str(ROLES)
    chown_tree(workdir, user)
    chown_tree(unit_dir, user)
    playbook = ["ansible-playbook", "-i", "localhost,", "play.yml", "-e", "@vars.json"]
    run_as(user, playbook, env=env, cwd=workdir, timeout=600)
    root = Path(str(common["gcbundle_endpoint_config_root"]))
    return {
        name: RenderedEndpoint(name, root / name, unit_dir / f"globus-compute-endpoint-{name}.service")
        for name in endpoints
    }


# -- systemd, emulated -----------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, list[str]]:
    """The ``[Service]`` section: key -> values, in order (keys may repeat)."""
    section, out = "", {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def cgroup_pids(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for procs in sorted(cgroup.rglob("cgroup.procs")):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            pass
    return pids


def alive(pid: int) -> bool:
    """Running, not a zombie (a killed process may linger as one until reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class SystemdUnit:
    """One unit file, run as systemd runs it (see the module docstring)."""

    path: Path
    log: Path
    #: Lines an admin's drop-in would add (``Environment=``): here, where the Globus service is.
    drop_in_env: dict[str, str] = field(default_factory=dict)
    timeout_stop: float = 30.0
    main: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.service = parse_unit(self.path)
        self.cgroup = CGROUP_ROOT / CGROUP_PARENT / self.path.name

    @property
    def kill_mode(self) -> str:
        return (self.service.get("KillMode") or ["control-group"])[-1]

    @property
    def kill_signal(self) -> int:
        name = (self.service.get("KillSignal") or ["SIGTERM"])[-1]
        return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))

    def environment(self) -> dict[str, str]:
        user = pwd.getpwnam(self.service["User"][-1])
        # What systemd gives every service with User=, then the unit's own lines.
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "SHELL": user.pw_shell,
               "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        for line in self.service.get("Environment", []):
            for item in shlex.split(line):
                key, _, value = item.partition("=")
                env[key] = value
        for spec in self.service.get("EnvironmentFile", []):
            optional, file = spec.startswith("-"), Path(spec.lstrip("-"))
            if file.exists():
                env.update(_env_file(file))
            elif not optional:
                raise RuntimeError(f"{self.path.name}: EnvironmentFile {file} is missing")
        env.update(self.drop_in_env)
        return env

    def start(self) -> int:
        """``systemctl start``: the main process, in the unit's cgroup; its pid."""
        if self.main is not None and self.main.poll() is None:
            return self.main.pid
        user = pwd.getpwnam(self.service["User"][-1])
        self.cgroup.mkdir(parents=True, exist_ok=True)
        argv = shlex.split(self.service["ExecStart"][-1])
        # Join the cgroup as root, then drop to the unit's user and exec ExecStart
        # (no process in between, so the main pid is ExecStart's, as under systemd).
        join_cgroup = ['/bin/sh', '-c', 'echo $$ > "$1" && shift && exec "$@"', "sh", str(self.cgroup / "cgroup.procs")]
        drop_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        with open(self.log, "ab") as out:
            self.main = subprocess.Popen(
                [*join_cgroup, *drop_user, *argv],
                env=self.environment(),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.starts += 1
        return self.main.pid

    def _signal(self, pids: list[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def _wait(self, pids: list[int], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            if self.main is not None:
                self.main.poll()  # reap the main process: ours, as systemd's
            left = [p for p in pids if alive(p)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def _kill(self, *, main_already_gone: bool) -> None:
        """The stop logic of the unit's KillMode."""
        mode = self.kill_mode
        main_pid = [self.main.pid] if self.main is not None and not main_already_gone else []
        send_sigkill = (self.service.get("SendSIGKILL") or ["yes"])[-1] != "no"
        if mode == "control-group":
            targets = cgroup_pids(self.cgroup)
            self._signal(targets, self.kill_signal)
            left = self._wait(targets, self.timeout_stop)
            if left and send_sigkill:
                self._signal(cgroup_pids(self.cgroup), signal.SIGKILL)
                self._wait(left, 10)
        elif mode == "mixed":
            self._signal(main_pid, self.kill_signal)
            self._wait(main_pid, self.timeout_stop)
            if send_sigkill:
                rest = cgroup_pids(self.cgroup)
                self._signal(rest, signal.SIGKILL)
                self._wait(rest, 10)
        elif mode == "process":
            self._signal(main_pid, self.kill_signal)
            if self._wait(main_pid, self.timeout_stop) and send_sigkill:
                self._signal(main_pid, signal.SIGKILL)
                self._wait(main_pid, 10)
        elif mode != "none":
            raise ValueError(f"unknown KillMode={mode}")
        if self.main is not None:
            try:
                self.main.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.main = None

    def stop(self) -> None:
        """``systemctl stop``."""
        if self.main is None:
            return
        self._kill(main_already_gone=self.main.poll() is not None)

    def restart(self) -> int:
        """``systemctl restart`` (what the role's handler asks for)."""
        self.stop()
        return self.start()

    def main_exited(self, up: Callable[[], bool], timeout: float = 120) -> int:
        """What systemd does once the main process died on its own, with ``Restart=always``.

        The stop logic of the KillMode for what remains, then a new start
        after ``RestartSec``; again whenever the new main process exits too
        (``StartLimitIntervalSec=0``: no limit), until ``up()`` says the
        service works or ``timeout`` passes. Returns the number of starts.
        """
        if (self.service.get("Restart") or ["no"])[-1] != "always":
            raise AssertionError(f"{self.path.name} would not be restarted by systemd")
        pause = float((self.service.get("RestartSec") or ["0.1"])[-1])
        deadline = time.monotonic() + timeout
        starts = 0
        while True:
            if self.main is not None and self.main.poll() is None:
                if up():
                    return starts
            else:
                if self.main is not None:
                    self._kill(main_already_gone=True)
                time.sleep(pause)
                self.start()
                starts += 1
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.path.name}: not up {timeout:.0f} s after its main process exited ({starts} starts)"
                )
            time.sleep(0.5)

    def remove(self, *, kill_rest: bool = True) -> None:
        """Stop, then remove the cgroup (SIGKILL to whatever is left in it when ``kill_rest``)."""
        self.stop()
        if kill_rest and self.cgroup.exists():
            rest = cgroup_pids(self.cgroup)
            self._signal(rest, signal.SIGKILL)
            self._wait(rest, 10)
        try:
            self.cgroup.rmdir()
        except OSError:
            pass


def load_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text())
