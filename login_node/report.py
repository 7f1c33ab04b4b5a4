"""``report.json``: what a run was and how it went, written once by the driver at the end.

Bundle digest, entry and arguments, the site profile, the Config as built,
the login node's versions and ``pip freeze``, the scheduler's job ids,
per-app task counts and timings, and the outcome (with the error, if any).
The per-app task counts also go into ``state.json`` at every heartbeat
(``task_counts``).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from bundle.versions import local_versions
from login_node import state
from login_node.rundir import RunPaths, RunRequest, write_json
from login_node.timing import split

#: Seconds ``pip freeze`` may take (a big shared environment takes several).
PIP_FREEZE_TIMEOUT = 60


def status_name(record: Any) -> str:
    """A Parsl task record's state, by name."""
    status = record.get("status")
    return getattr(status, "name", str(status))


def task_counts(records: list[Any]) -> dict[str, int]:
    """Tasks by state, their total, and how many came from a checkpoint."""
    counts: dict[str, int] = {"total": len(records), "from_checkpoint": 0}
    for record in list(records):
        name = status_name(record)
        counts[name] = counts.get(name, 0) + 1
        if record.get("from_memo"):
            counts["from_checkpoint"] += 1
    return counts


def app_stats(records: list[Any], first_workers: float | None = None) -> dict[str, dict[str, Any]]:
    """Per app: task count, states, tasks from checkpoints, and where the time went
    (``login_node.timing``: waiting for inputs, queued until the first workers, running)."""
    apps: dict[str, dict[str, Any]] = {}
    for record in list(records):
        name = getattr(record.get("func"), "__name__", None) or record.get("func_name", "?")
        app = apps.setdefault(name, {"count": 0, "from_checkpoint": 0, "states": {},
                                     "waiting_s": 0.0, "queued_s": 0.0, "running_s": 0.0})
        app["count"] += 1
        st = status_name(record)
        app["states"][st] = app["states"].get(st, 0) + 1
        if record.get("from_memo"):
            app["from_checkpoint"] += 1
        for key, seconds in zip(("waiting_s", "queued_s", "running_s"), split(record, first_workers), strict=True):
            app[key] = round(app[key] + seconds, 6)
    return apps


def write(paths: RunPaths, request: RunRequest, *, outcome: dict[str, Any], records: list[Any],
          checkpoint_files: list[str], config: str, pip_freeze: list[str], job_ids: dict[str, str],
          timings: dict[str, float]) -> None:
    """Write the run's ``report.json`` (atomically)."""
    report = {
        "run_id": paths.run_id,
        "digest": request.digest,
        "entry": request.entry,
        "mode": request.mode,
        "args": request.args,
        "site": (request.site or {}).get("name"),
        "resumed_from": request.resumed_from,
        "checkpoint_files": checkpoint_files,
        "outcome": outcome,
        "config": config,
        "host": state.hostname(),
        "python": sys.executable,
        "versions": local_versions(),
        "client_versions": request.client,
        "pip_freeze": pip_freeze,
        "scheduler_job_ids": job_ids,
        "apps": app_stats(records, timings.get("first_workers")),
        "tasks": task_counts(records),
        "timings": timings,
    }
    write_json(paths.report, report)


def pip_freeze() -> list[str]:
    """``pip freeze --all`` of the driver's environment, or [] if it cannot be had."""
    # At the lowest CPU priority: it runs beside the DFK's start and the first
    # workers', which a short run waits for (a login node may have few cores).
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    try:
        out = subprocess.run([*nice, sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                             timeout=PIP_FREEZE_TIMEOUT, check=False)
        return out.stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return []


def in_background(fn: Callable[[], Any], name: str) -> Callable[[], Any]:
    """Start ``fn`` in a daemon thread; the returned callable waits for its value (None if it failed)."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()), name=name, daemon=True)
    thread.start()

    def value() -> Any:
        thread.join(timeout=90)
        return box[0] if box else None

    return value
