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
        driver.json       how the driver starts: its environment (driver_init), checked by launch
        cancel.requested  marker written by the cancel task
        results-manifest.json   cache of the results manifest (written by the results task)
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bundle.contracts import DIGEST, Contract, check_run_id, contract_field
from bundle.errors import HomeError, RunNotFound, RunStateError
from bundle.fileio import folder_problem, write_atomic


def home() -> Path:
    return Path(os.environ.get("GCBUNDLE_HOME") or Path.home() / ".gcbundle").expanduser()


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
            problem = folder_problem(where, exc)
            raise HomeError(f"GCBUNDLE_HOME {str(self.root)!r} cannot be used: {problem}", fix) from None
        for d in (self.root, self.cache, self.staging, self.runs):
            if not os.access(d, os.W_OK | os.X_OK):
                which = "" if d == self.root else f" ({d})"
                raise HomeError(f"GCBUNDLE_HOME {str(self.root)!r} is not writable" + which, fix)


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

    @property
    def request(self) -> Path:
        """``run.json``: the launch request: digest, args, site profile (written once, by launch)."""
        return self.root / "run.json"

    @property
    def state(self) -> Path:
        """``state.json``: the state machine and heartbeat (launch writes it once, then the driver only)."""
        return self.root / "state.json"

    @property
    def bundle(self) -> Path:
        """``bundle``: the extracted bundle; the driver's working directory."""
        return self.root / "bundle"

    @property
    def outputs(self) -> Path:
        """``outputs``: GCBUNDLE_OUTPUT_DIR: part of the results."""
        return self.root / "outputs"

    @property
    def runinfo(self) -> Path:
        """``runinfo``: Parsl's run_dir (parsl.log, checkpoints, executor logs)."""
        return self.root / "runinfo"

    @property
    def driver_log(self) -> Path:
        """``driver.log``: the driver's own log."""
        return self.root / "driver.log"

    @property
    def stdout(self) -> Path:
        """``stdout``: the driver's standard output (and so the workflow's prints)."""
        return self.root / "stdout"

    @property
    def stderr(self) -> Path:
        """``stderr``: the driver's standard error."""
        return self.root / "stderr"

    @property
    def result_pkl(self) -> Path:
        """``result.pkl``: main()'s return value, cloudpickled."""
        return self.root / "result.pkl"

    @property
    def result_json(self) -> Path:
        """``result.json``: the same, when it is JSON-able."""
        return self.root / "result.json"

    @property
    def report(self) -> Path:
        """``report.json``: digest, config, versions, pip freeze, job ids, per-app counts."""
        return self.root / "report.json"

    @property
    def cancel_marker(self) -> Path:
        """``cancel.requested``: marker written by the cancel task."""
        return self.root / "cancel.requested"

    @property
    def driver_plan(self) -> Path:
        """``driver.json``: how the driver starts (``login_node.driverenv``; written by launch)."""
        return self.root / "driver.json"

    @property
    def results_manifest(self) -> Path:
        """``results-manifest.json``: cache of the results manifest (written by the results task)."""
        return self.root / "results-manifest.json"

    def exists(self) -> bool:
        return self.request.is_file()

    def require(self) -> RunPaths:
        if not self.exists():
            raise RunNotFound(f"no run {self.run_id} on this login node",
                              "check the id with `gcbundle list`, and that you asked the endpoint it ran on")
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


@dataclass(frozen=True, kw_only=True)
class RunRequest(Contract):
    """``run.json``: what the run was asked to be, as the launch task recorded it (written once).

    The bundle's manifest (entry, mode, config source, client versions) and
    the launch spec (arguments over the manifest's, site profile, parameters,
    what it resumes) in one record, read by the driver and by later resumes.
    """

    task: ClassVar[str] = "launch"
    run_id: str = contract_field("str")
    digest: str = contract_field("str")
    entry: str = contract_field("str")
    mode: str = contract_field("str")
    config: dict[str, Any] = contract_field("dict", default={"kind": "workflow"})
    args: dict[str, Any] = contract_field("dict", default={})
    site: dict[str, Any] | None = contract_field("dict", optional=True, default=None)
    params: dict[str, Any] = contract_field("dict", default={})
    resumed_from: str | None = contract_field("str", optional=True, default=None)
    #: Runs whose checkpoints this run loads: the one it resumes, and that one's own.
    checkpoint_runs: list[str] = contract_field("list", default=[])
    client: dict[str, Any] = contract_field("dict", default={})
    submitted: float = contract_field("number", default=0.0)

    @classmethod
    def _fail(cls, message: str) -> Exception:
        return RunStateError(
            f"the run's run.json {message}", "the run directory was changed or damaged: submit the run again"
        )

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def read(cls, paths: RunPaths) -> RunRequest:
        return cls.from_json(read_json(paths.request))


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))
