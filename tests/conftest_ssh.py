"""Shared fixtures for tests that reach the loopback sshd (marker ``ssh``).

``scripts/setup_sshd.sh`` starts a private sshd on 127.0.0.1 and creates an
unprivileged account; it writes what a client needs into an env file
(``GCBUNDLE_SSHD_ENV`` overrides its default path, see ``SSHD_ENV_FILE``).
These fixtures read that file and run commands as that account over real SSH.

Registered from ``tests/conftest.py`` (``pytest_plugins``); it provides
the fixtures ``ssh_target`` and ``ansible_env`` and the helpers below.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "SSHD_ENV_FILE",
    "SshTarget",
    "ansible_env",
    "controller_ansible_env",
    "read_sshd_env",
    "ssh_target",
]

#: Where scripts/setup_sshd.sh writes the connection details.
SSHD_ENV_FILE = Path(
    os.environ.get("GCBUNDLE_SSHD_ENV", "/var/lib/gcbundle-test-sshd/env")
)


def read_sshd_env(path: Path = SSHD_ENV_FILE) -> dict[str, str]:
    """Parse the KEY=VALUE lines of the sshd env file."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class SshTarget:
    """The unprivileged account behind the loopback sshd."""

    host: str
    port: int
    user: str
    home: str
    key: Path
    known_hosts: Path

    @classmethod
    def from_env_file(cls, path: Path = SSHD_ENV_FILE) -> SshTarget:
        env = read_sshd_env(path)
        return cls(
            host=env["GCBUNDLE_SSH_HOST"],
            port=int(env["GCBUNDLE_SSH_PORT"]),
            user=env["GCBUNDLE_SSH_USER"],
            home=env["GCBUNDLE_SSH_HOME"],
            key=Path(env["GCBUNDLE_SSH_KEY"]),
            known_hosts=Path(env["GCBUNDLE_SSH_KNOWN_HOSTS"]),
        )

    @property
    def ssh_options(self) -> list[str]:
        return [
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def ssh_argv(self, command: str) -> list[str]:
        return [
            "ssh", "-i", str(self.key), "-p", str(self.port), *self.ssh_options,
            f"{self.user}@{self.host}", command,
        ]  # fmt: skip

    def run(
        self,
        command: str | Sequence[str],
        *,
        input: bytes | str | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as the account (a shell string, or an argv that is
        quoted for the remote shell). Input may be text or bytes (a tar
        stream, say); the output is returned as text."""
        remote = command if isinstance(command, str) else shlex.join(command)
        proc = subprocess.run(
            self.ssh_argv(remote),
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        out = subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"ssh {self.user}@{self.host}: {remote!r} exited {out.returncode}\n"
                f"--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
            )
        return out

    def put(self, text: str, remote_path: str, mode: str = "0644") -> None:
        """Write a text file on the target, as the account."""
        q = shlex.quote(remote_path)
        self.run(
            f"mkdir -p \"$(dirname {q})\" && cat > {q} && chmod {mode} {q}",
            input=text,
            check=True,
        )

    def ansible_host_vars(self) -> dict[str, object]:
        """Inventory variables that reach this account with Ansible's ssh."""
        return {
            "ansible_host": self.host,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": " ".join(
                [
                    f"-o UserKnownHostsFile={self.known_hosts}",
                    "-o StrictHostKeyChecking=yes",
                    "-o IdentitiesOnly=yes",
                ]
            ),
            # Debian's interpreter: readable by every account.
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_pipelining": True,
        }


def _missing(reason: str) -> None:
    # In CI the set-up script must have run: a missing sshd is a failure there.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ssh_target() -> SshTarget:
    """The loopback sshd's account; skips (fails under CI) without it."""
    if not SSHD_ENV_FILE.is_file():
        _missing(f"{SSHD_ENV_FILE} not found: run scripts/setup_sshd.sh as root")
    target = SshTarget.from_env_file()
    probe = target.run("true", timeout=30)
    if probe.returncode != 0:
        _missing(
            f"cannot log in as {target.user}@{target.host}:{target.port} "
            f"({probe.stderr.strip()}): run scripts/setup_sshd.sh as root"
        )
    return target


def controller_ansible_env(
    workdir: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for running Ansible's commands from this interpreter's
    environment, with its state (ANSIBLE_HOME, temp files) under workdir."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    home = workdir / "ansible-home"
    home.mkdir(parents=True, exist_ok=True)
    config = workdir / "ansible.cfg"  # empty: no ansible.cfg from the cwd or home
    config.write_text("[defaults]\n")
    env.update(
        {
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "1",
            "ANSIBLE_CONFIG": str(config),
            "PY_COLORS": "0",
        }
    )
    # Only this workdir's settings count, not the invoking shell's.
    for key in ("ANSIBLE_INVENTORY", "ANSIBLE_ROLES_PATH", "ANSIBLE_VAULT_PASSWORD_FILE"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="session")
def ansible_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for ansible-playbook, ansible-lint and yamllint."""
    yield controller_ansible_env(tmp_path_factory.mktemp("ansible"))
