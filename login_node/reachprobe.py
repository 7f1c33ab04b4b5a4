"""Can a compute node reach the interchange? Ask one, with a real batch job.

A run's workers connect back to the interchange on the login node, at the
executor's address and a port in its ``worker_port_range``. When the address
is one the compute nodes cannot reach (loopback, an interface they are not
on, a firewalled port range), the run starts, its block starts, and the
workers time out unseen: the run waits for its heartbeat threshold before
anything says why. ``gcbundle doctor --probe`` finds that out in one short
job: it listens on the address the profile resolves to, at a port of the
executor's range, and submits, through the profile's own provider and
launcher, a job whose only command connects there (bash's ``/dev/tcp``, no
Python needed on the node) and says from which host. It reports which nodes
got through, or that the job ran and nothing arrived, and cancels the job.
"""
from __future__ import annotations

import random
import shlex
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from login_node import blocks

#: How long the probe waits for its job to start and connect.
PROBE_SECONDS = 120.0
DEFAULT_PORT_RANGE = (54000, 55000)


@dataclass(frozen=True)
class ProbeResult:
    """What one probe job saw."""

    address: str
    port: int
    job_id: str | None
    reached_from: tuple[str, ...]
    job_state: str
    seconds: float
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "job_id": self.job_id,
                "reached_from": list(self.reached_from), "job_state": self.job_state,
                "seconds": round(self.seconds, 1), "error": self.error}


def _listen(address: str, port_range: tuple[int, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    ports = list(range(port_range[0], port_range[1]))
    random.shuffle(ports)
    last: OSError | None = None
    for port in ports[:50]:
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.bind((address, port))
            s.listen(16)
            return s
        except OSError as exc:
            last = exc
            s.close()
    raise OSError(f"no free port in {port_range[0]}-{port_range[1]} on {address}: {last}")


def probe_command(address: str, port: int) -> str:
    """The job's command: connect and say who we are; exit non-zero if it cannot."""
    body = (f'exec 3<>/dev/tcp/{address}/{port} && echo "gcbundle-probe $(hostname)" >&3 && exec 3>&-'
            f' || {{ echo "gcbundle-probe: $(hostname) cannot reach {address}:{port}" >&2; exit 7; }}')
    return f"bash -c {shlex.quote(body)}"


def probe(executor: Any, address: str, *, prelude: str, script_dir: str,
          timeout: float = PROBE_SECONDS) -> ProbeResult:
    """Submit one probe job with the executor's provider and wait for it.

    ``prelude`` goes first in the job's ``worker_init`` (gcbundle's, as in a
    run: Open MPI's consent to run as root, ``cd`` to ``script_dir``, which
    must be on a file system the nodes mount, as a run's directory must)."""
    provider = executor.provider
    provider.worker_init = prelude + (provider.worker_init or "")
    blocks.watch_pbs(provider)  # PBS: a job that exited non-zero is FAILED, not COMPLETED
    port_range = tuple(getattr(executor, "worker_port_range", None) or DEFAULT_PORT_RANGE)
    t0 = time.monotonic()
    try:
        server = _listen(address, (int(port_range[0]), int(port_range[1])))
    except OSError as exc:
        return ProbeResult(address, 0, None, (), "not submitted", 0.0, str(exc))
    port = server.getsockname()[1]
    reached: list[str] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.5)
        while not done.is_set():
            try:
                conn, _peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    words = conn.recv(256).decode(errors="replace").split()
                except OSError:
                    continue
                if len(words) >= 2 and words[0] == "gcbundle-probe":
                    reached.append(words[1])

    listener = threading.Thread(target=accept, name="gcbundle-probe-listener", daemon=True)
    listener.start()
    job_id: str | None = None
    state = "not submitted"
    nodes = int(getattr(provider, "nodes_per_block", 1) or 1)
    with tempfile.TemporaryDirectory(prefix="gcbundle-probe-", dir=script_dir) as job_dir:
        provider.script_dir = job_dir
        try:
            job_id = provider.submit(probe_command(address, port), 1, "gcbundle-doctor-probe")
            state = "submitted"
            deadline = t0 + timeout
            while time.monotonic() < deadline and len(set(reached)) < nodes:
                status = provider.status([job_id])[0]
                state = status.state.name
                if status.terminal:
                    time.sleep(1.0)  # a connection made just before the end
                    break
                time.sleep(1.0)
        except Exception as exc:  # noqa: BLE001 - the scheduler's refusal is the finding
            done.set()
            server.close()
            return ProbeResult(address, port, job_id, tuple(sorted(set(reached))), state, time.monotonic() - t0,
                               f"{type(exc).__name__}: {exc}")
        finally:
            if job_id is not None:
                try:
                    if not provider.status([job_id])[0].terminal:
                        provider.cancel([job_id])
                except Exception:  # noqa: BLE001 - best effort: the job is short-lived anyway
                    pass
    done.set()
    server.close()
    listener.join(timeout=2)
    return ProbeResult(address, port, job_id, tuple(sorted(set(reached))), state, time.monotonic() - t0)
