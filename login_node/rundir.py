"""Every file name on the login node, in one place.

``$GCBUNDLE_HOME`` (default ``~/.gcbundle``) holds the bundle cache and the
runs. A run directory says what happened to the run by its files alone:

    runs/<run_id>/
        run.json          the launch request: digest, args, site profile (written once, by launch)
        state.json        the state machine and heartbeat (written by launch once, then by the driver only)
        bundle/           the extracted bundle; the driver's working directory
        outputs/          GCBUNDLE_OUTPUT_DIR: part of the results
        runinfo/          Parsl's run_dir (parsl.log, checkpoints, executor logs)
        driver.log        the driver's own log
        stdout, stderr    the driver's standard streams (and so the workflow's prints)
        result.pkl        main()'s return value, cloudpickled
        result.json       the same, when it is JSON-able
        report.json       digest, config, versions, pip freeze, job ids, per-app counts
        cancel.requested  marker written by the cancel task
        results-manifest.json   cache of the results manifest (written by the results task)
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.errors import HomeError, RunNotFound
from bundle.fileio import folder_problem, write_atomic

RUN_ID = re.compile(r"^[0-9a-f]{12}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")


def home() -> Path:
    return Path(os.environ.get("GCBUNDLE_HOME") or Path.home() / ".gcbundle").expanduser()


def check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise RunNotFound(f"{str(run_id)[:40]!r} is not a run id", "run ids are 12 hex digits; `gcbundle list` shows them")
    return run_id


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def default(cls) -> Home:
        return cls(home())

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def staging(self) -> Path:
        return self.root / "cache" / ".staging"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def site_defaults(self) -> Path:
        return self.root / "site-defaults.yaml"

    @property
    def endpoint_workdir(self) -> Path:
        """Working directory of the embedded ``local`` endpoint's tasks."""
        return self.root / "local-endpoint" / "tasks_working_dir"

    def cached_bundle(self, digest: str) -> Path:
        assert DIGEST.fullmatch(digest)
        return self.cache / f"{digest}.tar.gz"

    def run(self, run_id: str) -> RunPaths:
        return RunPaths(self.runs / check_run_id(run_id))

    def ensure(self) -> None:
        """Create the folders (mode 0700) or fail with HomeError: one line that says what to do."""
        fix = ("set GCBUNDLE_HOME to a folder this user can write (for an endpoint: in its environment, "
               "e.g. user_environment.yaml), or fix the folder's permissions")
        try:
            for d in (self.root, self.cache, self.staging, self.runs):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            where = Path(exc.filename) if exc.filename else self.root
            raise HomeError(f"GCBUNDLE_HOME {str(self.root)!r} cannot be used: {folder_problem(where, exc)}", fix) from None
        for d in (self.root, self.cache, self.staging, self.runs):
            if not os.access(d, os.W_OK | os.X_OK):
                raise HomeError(f"GCBUNDLE_HOME {str(self.root)!r} is not writable" + ("" if d == self.root else f" ({d})"), fix)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def home(self) -> Home:
        """The ``$GCBUNDLE_HOME`` this run lives in (runs are ``<home>/runs/<run_id>``)."""
        return Home(self.root.parent.parent)

    def __getattr__(self, name: str) -> Path:
        try:
            return self.root / _FILES[name]
        except KeyError:
            raise AttributeError(name) from None

    def exists(self) -> bool:
        return (self.root / _FILES["request"]).is_file()

    def require(self) -> RunPaths:
        if not self.exists():
            raise RunNotFound(f"no run {self.run_id} on this login node", "check the id with `gcbundle list`, and that you asked the endpoint it ran on")
        return self

    def log_files(self) -> dict[str, Path]:
        """Named logs that ``gcbundle logs`` can read."""
        logs = {"driver": self.driver_log, "stdout": self.stdout, "stderr": self.stderr}
        parsl_log = self.parsl_log()
        if parsl_log:
            logs["parsl"] = parsl_log
        return logs

    def parsl_log(self) -> Path | None:
        runs = sorted(p for p in self.runinfo.glob("[0-9]*") if p.is_dir()) if self.runinfo.is_dir() else []
        return runs[-1] / "parsl.log" if runs and (runs[-1] / "parsl.log").is_file() else None


_FILES = {
    "request": "run.json",
    "state": "state.json",
    "bundle": "bundle",
    "outputs": "outputs",
    "runinfo": "runinfo",
    "driver_log": "driver.log",
    "stdout": "stdout",
    "stderr": "stderr",
    "result_pkl": "result.pkl",
    "result_json": "result.json",
    "report": "report.json",
    "cancel_marker": "cancel.requested",
    "results_manifest": "results-manifest.json",
}


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))
