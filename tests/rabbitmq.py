"""A private RabbitMQ broker on loopback for the daemon tier (Debian's rabbitmq-server).

Started without systemd (PID 1 is not systemd on the test machines): the
package's own ``rabbitmq-server`` script, as an unprivileged account, with its
own node name, ports, data and logs under one directory, listening on
127.0.0.1 only. Its Erlang port mapper (epmd) is started first, by us, on a
private port, so that stopping the broker leaves nothing behind.
"""
from __future__ import annotations

import os
import pwd
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
SETUP_HINT = (
    "install it with `scripts/setup.sh --test` (or `scripts/setup_rabbitmq.sh` as root): "
    "Debian's rabbitmq-server and the user gcbdaemon"
)


class MissingPrerequisite(RuntimeError):
    """Something the daemon tier needs is not installed; the message says how to install it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def epmd_binary() -> Path:
    for candidate in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd")) + [Path("/usr/bin/epmd")]:
        if candidate.exists():
            return candidate
    raise MissingPrerequisite(f"epmd (Erlang) is missing: {SETUP_HINT}")


def chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)


@dataclass
class RabbitMQ:
    """One broker: ``start()`` returns once it accepts AMQP connections; ``stop()`` ends it and its epmd."""

    base: Path
    user: str
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    username: str = "gcbundle"
    _proc: subprocess.Popen[bytes] | None = None
    _epmd: subprocess.Popen[bytes] | None = None
    _epmd_port: int = 0

    @property
    def url(self) -> str:
        return f"amqp://{self.username}:{self.password}@127.0.0.1:{self.port}/%2F"

    def _env(self) -> dict[str, str]:
        b = str(self.base)
        return {
            "HOME": b, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
            "RABBITMQ_CONF_ENV_FILE": "/nonexistent",  # not /etc/rabbitmq/rabbitmq-env.conf
            "RABBITMQ_NODENAME": f"gcbundle-test-{os.getpid()}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "ERL_EPMD_PORT": str(self._epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONFIG_FILE": f"{b}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{b}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{b}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{b}/mnesia", "RABBITMQ_LOG_BASE": f"{b}/log",
            "RABBITMQ_PID_FILE": f"{b}/rabbitmq.pid",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self, timeout: float = 120.0) -> RabbitMQ:
        if not RABBITMQ_SERVER.exists():
            raise MissingPrerequisite(f"RabbitMQ is not installed ({RABBITMQ_SERVER} is missing): {SETUP_HINT}")
        try:
            account = pwd.getpwnam(self.user)
        except KeyError:
            raise MissingPrerequisite(f"the account {self.user} does not exist: {SETUP_HINT}") from None
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self._dist_port, self._epmd_port = free_port(), free_port()
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"default_user = {self.username}\ndefault_pass = {self.password}\n"
            "loopback_users = none\nlog.console = false\nlog.file.level = warning\n"
            # The tests fill no disk; a shared machine's free space must not stop publishers.
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "advanced.config").write_text("[].\n")
        chown_tree(self.base, account)
        # Popen switches user itself (no runuser in between), so that each process
        # we start is our own child and is reaped by us when it ends.
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "env": self._env(),
                   "stdin": subprocess.DEVNULL, "start_new_session": True, "cwd": self.base}
        log = open(self.base / "server.out", "ab")
        self._epmd = subprocess.Popen([str(epmd_binary()), "-port", str(self._epmd_port), "-address", "127.0.0.1"],
                                      stdout=log, stderr=log, **as_user)
        self._proc = subprocess.Popen([str(RABBITMQ_SERVER)], stdout=log, stderr=log, **as_user)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import logging

        pika_log = logging.getLogger("pika")
        level = pika_log.level
        pika_log.setLevel(logging.CRITICAL)  # refused connections are expected until it is up
        try:
            self._poll_ready(timeout)
        finally:
            pika_log.setLevel(level)

    def _poll_ready(self, timeout: float) -> None:
        import pika

        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self._proc.returncode}: {self.tail()}")
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"RabbitMQ did not accept connections within {timeout:.0f} s: {self.tail()}"
                    ) from None
                time.sleep(0.5)

    def tail(self, lines: int = 20) -> str:
        texts = []
        for path in [self.base / "server.out", *sorted((self.base / "log").glob("*.log"))]:
            try:
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
            except OSError:
                pass
        return "\n".join(texts)[-4000:]

    def stop(self) -> None:
        """SIGTERM to the broker (it shuts down cleanly on it; its launching shell then exits), then to epmd."""
        if self._proc is not None:
            try:
                beam = int((self.base / "rabbitmq.pid").read_text().split()[0])
                os.kill(beam, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        if self._epmd is not None:
            self._epmd.terminate()
            try:
                self._epmd.wait(10)
            except subprocess.TimeoutExpired:
                self._epmd.kill()
                self._epmd.wait(10)
        self._proc = self._epmd = None
