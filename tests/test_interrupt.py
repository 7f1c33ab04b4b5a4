"""Ctrl-C in a terminal while a command waits on a run: exit 130, no traceback
(the local endpoint's worker is in the terminal's process group and gets the
SIGINT too), and a line that says the run keeps going and how to reach it.

A real pseudo-terminal: the command is a session leader with the pty as its
controlling terminal, and the test types Ctrl-C (``\\x03``) into it, so the
kernel's line discipline sends SIGINT to the whole foreground process group,
exactly as in a terminal.
"""
from __future__ import annotations

import fcntl
import os
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from bundle import api
from tests.conftest import REPO, write_workflow
from tests.workflows import napping

SLOW = napping(120)


def _set_ctty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A command running on a new pty; what it prints, as it prints it."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=os.environ.copy(),
                                     start_new_session=True, preexec_fn=_set_ctty, close_fds=True)
        os.close(slave)
        self.text = ""

    def read_until(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text)
            if m:
                return m
            self._read(0.2)
        raise AssertionError(f"{pattern!r} not seen in {timeout} s; the terminal shows:\n{self.text}")

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every process holding the pty's other end has exited
            return False
        if not data:
            return False
        self.text += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return True

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        while self._read(0.2):  # what is left in the pty, and what the worker may still print
            if not select.select([self.master], [], [], 0.5)[0]:
                break
        os.close(self.master)
        return code


def _group_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of the command's process group (its session) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("command", ["submit", "status", "logs"])
def test_ctrl_c_while_waiting_says_where_the_run_is(command: str, tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", SLOW)
    gcbundle = [sys.executable, "-m", "bundle.cli"]
    run_id = None
    if command != "submit":
        run = api.submit(wf, "local")
        run_id = run.id
        if command == "status":
            argv = [*gcbundle, "status", run_id, "--wait"]
        else:
            argv = [*gcbundle, "logs", run_id, "--name", "stdout", "--follow"]
    else:
        argv = [*gcbundle, "submit", str(wf), "--wait"]
    term = Terminal(argv, cwd=REPO)
    try:
        if command == "submit":
            run_id = term.read_until(r"submitted run ([0-9a-f]{12})", 120).group(1)
        elif command == "logs":
            term.read_until("started", 120)
        time.sleep(1.5)  # well inside the wait: a status task is holding the worker
        term.ctrl_c()
        code = term.finish(60)
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        if run_id is not None:
            api.get_run(run_id).cancel(grace=5)  # the run kept going: stop it once the checks below have their state
    assert code == 130, term.text
    assert _group_gone(term.proc.pid, 5), "the local endpoint's worker outlived the command"
    assert "Traceback" not in term.text and "KeyboardInterrupt" not in term.text, term.text
    assert (f"gcbundle: interrupted; run {run_id} keeps going on endpoint local: `gcbundle status {run_id}` shows it, "
            f"`gcbundle cancel {run_id}` stops it") in term.text, term.text
    # it kept going until the test cancelled it: cancelled, not lost or failed
    assert api.get_run(run_id).status()["state"] == "cancelled"
