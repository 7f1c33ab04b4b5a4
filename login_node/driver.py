"""The detached driver: one process per run that owns the run's DataFlowKernel.

Started by the ``launch`` task through an intermediate process (so it is
re-parented to init and never lingers as a zombie of the endpoint's worker),
in its own session, with stdin closed and stdout/stderr going to the run
directory. It is the only writer of ``state.json`` after launch, writes a
heartbeat there every ``GCBUNDLE_HEARTBEAT_SECONDS``, and on SIGTERM (cancel)
cleans up the DFK so that the provider cancels its blocks. Whatever happens,
it writes ``report.json`` and a terminal state before it exits, then stops any
process of the run still alive.

    python -m login_node.driver RUN_DIR
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bundle.errors import GcbundleError, SiteProfileError
from bundle.versions import local_versions
from login_node import blockwatch, procs, state
from login_node.rundir import RunPaths, read_json, write_json

log = logging.getLogger("gcbundle.driver")

#: Batch providers and the command that cancels their jobs: recorded in
#: state.json so that a cancel which had to kill the driver still cancels them.
BATCH_CANCEL = {"SlurmProvider": "scancel", "PBSProProvider": "qdel", "TorqueProvider": "qdel",
                "LSFProvider": "bkill", "CondorProvider": "condor_rm", "GridEngineProvider": "qdel"}

#: A file the driver deletes to make room for its last state on a full disk.
RESERVE = ".reserve"
RESERVE_BYTES = 256 * 1024


class Cancelled(BaseException):
    """Raised in the driver's main thread by SIGTERM; a BaseException so that
    a workflow's ``except Exception`` does not swallow it."""


class SchedulerFailed(BaseException):
    """Raised in the driver's main thread when the scheduler refuses the run's
    blocks (a bad partition, queue or account) and the workflow has not
    failed of it by itself: Parsl would only log it and submit again."""


# -- starting -----------------------------------------------------------------------

def driver_env(paths: RunPaths) -> dict[str, str]:
    """The environment of the driver and, through it, of every process of the run."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("GC_TASK_")]:
        env.pop(key)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "/usr/bin:/bin")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(paths.bundle), env.get("PYTHONPATH", "")] if p)
    env["GCBUNDLE_OUTPUT_DIR"] = str(paths.outputs)
    env["GCBUNDLE_RUN_ID"] = paths.run_id
    env["GCBUNDLE_RUN_DIR"] = str(paths.root)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(paths: RunPaths) -> int:
    """Start the driver detached; return its pid."""
    env = driver_env(paths)
    if _plan(paths).get("driver_init"):
        from login_node.driverenv import env_for

        env = env_for(paths, env)
    proc = subprocess.run(
        [sys.executable, "-I", "-m", "login_node.driver", "--detach", str(paths.root)],
        env=env, cwd=str(paths.bundle), capture_output=True, text=True, timeout=60, check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        lines = (proc.stderr or "no output").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit code {proc.returncode}")
    return int(proc.stdout.strip())


def _plan(paths: RunPaths) -> dict[str, Any]:
    """The run's driver plan (``login_node.driverenv``), {} for a run launched before plans."""
    from login_node.driverenv import plan_path

    try:
        return read_json(plan_path(paths))
    except (OSError, ValueError):
        return {}


def _detach(root: Path) -> None:
    os.umask(0o077)
    paths = RunPaths(root)
    plan = _plan(paths)
    argv = [sys.executable, "-I", "-u", "-m", "login_node.driver", str(root)]
    if plan.get("driver_init"):
        from login_node import driverenv

        # The user's environment, as its own lines make it (see login_node.driverenv).
        text = driverenv.script(plan["driver_init"], ["-u", "-c", driverenv.stub(Path(plan["lib"]), "driver"), str(root)])
        argv = [shutil.which("bash") or "/bin/bash", "-c", text]
    with open(paths.stdout, "ab") as out, open(paths.stderr, "ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(paths.bundle),
            start_new_session=True, close_fds=True,
        )
    print(proc.pid, flush=True)


# -- the run --------------------------------------------------------------------------

class Driver:
    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.request: dict[str, Any] = read_json(paths.request)
        self.period = state.heartbeat_seconds()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.state: dict[str, Any] = state.read_raw(paths)
        self.dfk: Any = None
        self.config_repr = ""
        self.records: list[Any] = []
        self.job_ids: dict[str, str] = {}
        self.timings: dict[str, float] = {"started": time.time()}
        self.checkpoint_files: list[str] = []
        self.providers: list[Any] = []
        self.scheduler_failure: dict[str, str] | None = None
        self.block_failures: dict[str, dict[str, Any]] = {}

    # state.json has one writer: this process, through this method.
    def _write_state(self, **changes: Any) -> None:
        with self.lock:
            self.state.update(changes)
            self.state["tasks"] = self._task_counts()
            self.state["scheduler_job_ids"] = sorted(set(self.job_ids.values()))
            if self.block_failures:
                self.state["block_failures"] = list(self.block_failures.values())
            try:
                state.write(self.paths, self.state)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or not self._release_reserve():
                    raise
                log.error("the run directory's file system is full; released the reserve to record the state")
                state.write(self.paths, self.state)

    def _make_reserve(self) -> None:
        """Set aside a little disk so the final state can be written on a full file system."""
        try:
            with open(self.paths.root / RESERVE, "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
        except OSError:
            pass

    def _release_reserve(self) -> bool:
        try:
            (self.paths.root / RESERVE).unlink()
            return True
        except FileNotFoundError:
            return False

    def _heartbeat(self) -> None:
        seen_failure = 0
        while not self.stop.wait(self.period):
            self._collect_job_ids()
            try:
                blockwatch.failures(self.providers, self.block_failures)
            except Exception:  # noqa: BLE001 - Parsl's threads change what we read; next beat
                pass
            self._write_state()
            try:
                failure = self._scheduler_error() if self.scheduler_failure is None else None
            except Exception:  # noqa: BLE001 - Parsl's threads change what we read; next beat
                failure = None
            if failure is not None:
                seen_failure += 1
                if seen_failure >= 3:  # the workflow did not fail of it by itself: stop it
                    self.scheduler_failure = failure
                    log.error("%s", failure["message"])
                    os.kill(os.getpid(), signal.SIGTERM)
            if self.paths.cancel_marker.exists() and not self.state.get("cancelling"):
                # A cancel written from another login host: act as if signalled.
                self.state["cancelling"] = True
                os.kill(os.getpid(), signal.SIGTERM)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.state.get("stopping"):
            return
        self.state["stopping"] = True
        if self.scheduler_failure is not None and not self.paths.cancel_marker.exists():
            raise SchedulerFailed(self.scheduler_failure["message"])
        raise Cancelled()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        host = state.hostname()
        self._make_reserve()
        self._write_state(
            state="starting", pid=os.getpid(), pid_start=state.process_start_time(os.getpid()), host=host,
            heartbeat_seconds=self.period, started=self.timings["started"], python=sys.executable,
        )
        beat = threading.Thread(target=self._heartbeat, name="gcbundle-heartbeat", daemon=True)
        beat.start()
        # pip freeze takes from a fraction of a second to several on a big shared
        # environment: run it now, beside the workflow, not after it ends.
        self.pip_freeze = _in_background(_pip_freeze, "gcbundle-pip-freeze")
        outcome: dict[str, Any]
        try:
            if self.paths.cancel_marker.exists():
                raise Cancelled()
            value = self._run_workflow()
            self._store_result(value)
            outcome = {"state": "succeeded"}
        except Cancelled:
            log.info("cancelled")
            outcome = {"state": "cancelled"}
        except BaseException as exc:  # noqa: BLE001 - everything ends in a state
            log.exception("the workflow failed")
            outcome = {"state": "failed", "error": self._scheduler_error() or _error(exc)}
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._cleanup()
        # Before the final state, not after: a client that sees the run end
        # (at once, with the status long poll) must find nothing of it running.
        leftovers = procs.sweep(self.paths.run_id, grace=5.0)
        if leftovers:
            log.warning("stopped %d leftover process(es) of the run", leftovers)
        if outcome["state"] == "succeeded" and self.paths.cancel_marker.exists() and self.state.get("stopping"):
            outcome = {"state": "cancelled"}
        self.timings["finished"] = time.time()
        self.stop.set()
        try:
            blockwatch.failures(self.providers, self.block_failures)  # a block that died in the last beat
        except Exception:  # noqa: BLE001
            log.exception("could not read what became of the block jobs")
        try:
            self._write_report(outcome)
        except OSError as exc:
            log.error("could not write report.json: %s", exc)
            if outcome["state"] == "succeeded":
                outcome = {"state": "failed", "error": _error(exc)}
        self._write_state(finished=self.timings["finished"], **outcome)
        self._release_reserve()
        return 0 if outcome["state"] == "succeeded" else 1

    # -- the workflow -----------------------------------------------------------------
    def _run_workflow(self) -> Any:
        req = self.request
        bundle_dir = str(self.paths.bundle)
        os.chdir(bundle_dir)
        if bundle_dir not in sys.path:
            sys.path.insert(0, bundle_dir)
        import parsl

        original_load = parsl.load

        def load(config: Any = None, *a: Any, **k: Any) -> Any:
            if config is None:
                config = self._site_config() or _default_config()
            self._prepare(config)
            dfk = original_load(config, *a, **k)
            self._instrument(dfk)
            return dfk

        parsl.load = load  # script mode: the script's own parsl.load goes through here
        if req["mode"] == "script":
            return self._run_script(req)
        module = _import_entry(self.paths.bundle, req["entry"])
        main = getattr(module, "main", None)
        if not callable(main):
            raise GcbundleError(f"{req['entry']} defines no main()", "define main(**args), or submit it as a script")
        config = self._site_config() or self._module_config(module) or _default_config()
        load(config)
        self._write_state(state="running")
        self.timings["dfk_loaded"] = time.time()
        value = main(**req["args"])
        value = _resolve(value)
        self.timings["main_returned"] = time.time()
        return value

    def _run_script(self, req: dict[str, Any]) -> Any:
        import runpy

        self._write_state(state="running")
        argv = [req["entry"]]
        for key, value in req["args"].items():
            argv.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
        sys.argv = argv
        os.environ["GCBUNDLE_ARGS"] = json.dumps(req["args"])
        runpy.run_path(str(self.paths.bundle / req["entry"]), run_name="__main__")
        self.timings["main_returned"] = time.time()
        return None

    def _site_config(self) -> Any:
        req = self.request
        if req.get("site"):
            from bundle import profiles

            profile, params = profiles.Profile.from_spec(req["site"])
            params = {**_site_defaults(self.paths, profile), **params}
            rendered = profiles.render(profile, params)
            if _plan(self.paths).get("placement") == "batch":
                from bundle.placement import use_the_jobs_nodes

                rendered, replaced = use_the_jobs_nodes(rendered)  # this job's nodes, no further job
                for line in replaced:
                    log.info("placement=batch: %s", line)
            return profiles.build_config(rendered)
        if req["config"].get("kind") == "module":
            module = _import_entry(self.paths.bundle, req["config"]["path"])
            make = getattr(module, "make_config", None)
            if not callable(make):
                raise SiteProfileError(f"config module {req['config']['path']} defines no make_config()", "define make_config(**params) -> parsl.Config")
            return make(**(req.get("params") or {}))
        return None

    @staticmethod
    def _module_config(module: Any) -> Any:
        make = getattr(module, "make_config", None)
        if callable(make):
            return make()
        return getattr(module, "config", None)

    def _prepare(self, config: Any) -> None:
        """Make the Config ours: run_dir in the run, task-exit checkpoints, and
        workers that see the bundle and the same Python as this driver."""
        from parsl.dataflow.memoization import BasicMemoizer
        from parsl.utils import get_all_checkpoints

        config.run_dir = str(self.paths.runinfo)
        for prev in self.request.get("checkpoint_runs") or []:
            prev_runinfo = self.paths.root.parent / prev / "runinfo"
            if prev_runinfo.is_dir():
                self.checkpoint_files += get_all_checkpoints(str(prev_runinfo))
        config.memoizer = _checkpointing_memoizer(BasicMemoizer)(checkpoint_mode="task_exit", checkpoint_files=self.checkpoint_files)
        prefix = worker_prelude(self.paths)
        for executor in config.executors:
            provider = getattr(executor, "provider", None)
            if provider is not None and hasattr(provider, "worker_init"):
                provider.worker_init = prefix + (provider.worker_init or "")
            if provider is not None:
                self.providers.append(provider)
                if type(provider).__name__ == "PBSProProvider":
                    blockwatch.watch_pbs(provider)  # non-zero exits are failures; one qstat per job
        self.config_repr = repr(config)

    def _instrument(self, dfk: Any) -> None:
        """Keep every task record, for per-app counts and timings in the report."""
        self.dfk = dfk
        submit = dfk.submit

        def counting_submit(*a: Any, **k: Any) -> Any:
            future = submit(*a, **k)
            record = getattr(future, "task_record", None)
            if record is not None:
                with self.lock:
                    self.records.append(record)
            return future

        dfk.submit = counting_submit

    def _task_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {"total": len(self.records), "from_checkpoint": 0}
        for record in list(self.records):
            name = _status_name(record)
            counts[name] = counts.get(name, 0) + 1
            if record.get("from_memo"):
                counts["from_checkpoint"] += 1
        return counts

    def _collect_job_ids(self) -> None:
        dfk = self.dfk
        if dfk is None:
            return
        for executor in list(getattr(dfk, "executors", {}).values()):
            mapping = getattr(executor, "blocks_to_job_id", None) or {}
            for block, job in list(mapping.items()):
                self.job_ids[f"{executor.label}/{block}"] = str(job)
            provider = getattr(executor, "provider", None)
            kind = type(provider).__name__
            if kind in BATCH_CANCEL and mapping:
                self.state.setdefault("batch_jobs", {}).setdefault(kind, [])
                known = self.state["batch_jobs"][kind]
                known += [str(j) for j in mapping.values() if str(j) not in known]

    def _cleanup(self) -> None:
        import parsl

        self._collect_job_ids()
        dfk = self.dfk
        try:
            current = parsl.dfk()
        except Exception:  # noqa: BLE001 - no DFK loaded
            current = None
        for d in {id(x): x for x in (dfk, current) if x is not None}.values():
            try:
                d.cleanup()
            except Exception:  # noqa: BLE001
                log.exception("DFK cleanup failed")
        try:
            parsl.clear()
        except Exception:  # noqa: BLE001
            pass
        self._cancel_blocks()

    def _cancel_blocks(self) -> None:
        """Cancel every batch job of the run that the scheduler may still hold.

        The DFK's cleanup scales in the blocks it knows of, but not those of
        an executor in a bad state (after a scheduler failure), nor a block
        whose submission was in flight; so ask each batch provider to cancel
        every job it submitted and has not seen end (scancel, qdel)."""
        from parsl.providers.cluster_provider import ClusterProvider

        for provider in self.providers:
            if not isinstance(provider, ClusterProvider):
                continue  # LocalProvider's workers are processes of the run: procs.sweep stops them
            ids = [jid for jid, info in list(provider.resources.items())
                   if not getattr(info.get("status"), "terminal", False)]
            if not ids:
                continue
            try:
                provider.cancel(ids)
                log.info("cancelled batch jobs %s", " ".join(ids))
            except Exception:  # noqa: BLE001
                log.exception("could not cancel batch jobs %s", " ".join(ids))

    def _scheduler_error(self) -> dict[str, str] | None:
        """The scheduler's own words when an executor cannot get its blocks:
        the executor is in a bad state, or every block it tried failed to
        submit (sbatch/qsub refused it); None otherwise."""
        dfk = self.dfk
        for executor in list(getattr(dfk, "executors", {}).values()) if dfk is not None else []:
            try:
                statuses = dict(getattr(executor, "_status", None) or {})
            except RuntimeError:  # changed size while copied: Parsl's poller is updating it
                continue
            failed = [s for s in statuses.values() if getattr(getattr(s, "state", None), "name", "") in ("FAILED", "MISSING")]
            bad = bool(getattr(executor, "bad_state_is_set", False))
            never_submitted = len(failed) >= 2 and not getattr(executor, "blocks_to_job_id", None)
            if not failed or not (bad or never_submitted):
                continue
            said = []
            for st in failed:
                text = str(getattr(st, "message", None) or "")
                if "stderr=" in text:
                    text = text.split("stderr=", 1)[1]
                elif not text:
                    text = f"a block job ended with exit code {getattr(st, 'exit_code', '?')}"
                    tail = (getattr(st, "stderr_summary", None) or "").strip()
                    text += f": {tail}" if tail else ""
                text = "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())
                if text and text not in said:
                    said.append(text)
            refused = any("Failed to start block" in str(getattr(st, "message", None) or "") for st in failed)
            what = "the scheduler could not start a block" if refused else "the block jobs failed"
            message = f"{what} of executor {executor.label}: " + " | ".join(said)
            return {
                "type": "SchedulerError",
                "message": message,
                "hint": "check the site profile's parameters (partition, queue, account); `gcbundle render` shows the batch script and `gcbundle doctor` checks the scheduler",
                "traceback": str(getattr(executor, "executor_exception", "") or ""),
            }
        return None

    def _store_result(self, value: Any) -> None:
        import cloudpickle

        from login_node.rundir import write_atomic

        write_atomic(self.paths.result_pkl, cloudpickle.dumps(value))
        try:
            text = json.dumps(value, indent=1, sort_keys=True)
        except (TypeError, ValueError):
            return
        write_atomic(self.paths.result_json, (text + "\n").encode())

    def _write_report(self, outcome: dict[str, Any]) -> None:
        apps: dict[str, dict[str, Any]] = {}
        for record in list(self.records):
            name = getattr(record.get("func"), "__name__", None) or record.get("func_name", "?")
            app = apps.setdefault(name, {"count": 0, "from_checkpoint": 0, "states": {}, "seconds": 0.0})
            app["count"] += 1
            st = _status_name(record)
            app["states"][st] = app["states"].get(st, 0) + 1
            if record.get("from_memo"):
                app["from_checkpoint"] += 1
            t0, t1 = record.get("time_invoked"), record.get("time_returned")
            if t0 and t1:
                app["seconds"] += (t1 - t0).total_seconds()
        report = {
            "run_id": self.paths.run_id,
            "digest": self.request["digest"],
            "entry": self.request["entry"],
            "mode": self.request["mode"],
            "args": self.request["args"],
            "site": (self.request.get("site") or {}).get("name"),
            "resumed_from": self.request.get("resumed_from"),
            "checkpoint_files": self.checkpoint_files,
            "outcome": outcome,
            "config": self.config_repr,
            "host": state.hostname(),
            "python": sys.executable,
            "versions": local_versions(),
            "client_versions": self.request.get("client", {}),
            "pip_freeze": (self.pip_freeze() if hasattr(self, "pip_freeze") else _pip_freeze()) or [],
            "scheduler_job_ids": self.job_ids,
            "apps": apps,
            "tasks": self._task_counts(),
            "timings": self.timings,
        }
        write_json(self.paths.report, report)


def worker_prelude(paths: RunPaths) -> str:
    """Shell lines put before a provider's ``worker_init``.

    Workers must import the bundle's modules (Parsl may pickle apps by
    reference), run the same Python and Parsl as the driver (the interchange
    refuses mismatched managers), and find the run's outputs directory; batch
    jobs do not always inherit the driver's environment (PBS does not).
    """
    from bundle.profiles import worker_prelude as prelude

    site = _site_file(paths)
    # The driver's own environment lines come first in every job too: the
    # workers then run in the environment the driver runs in.
    init = "\n".join(x for x in (str(site.get("worker_init") or "").strip(), str(_plan(paths).get("driver_init") or "").strip()) if x)
    return prelude(
        bindir=str(Path(sys.executable).parent), bundle_dir=str(paths.bundle), outputs_dir=str(paths.outputs),
        run_id=paths.run_id, site_init=init, tmpdir=str(site.get("tmpdir") or ""),
    )


def site_file(home: Any) -> dict[str, Any]:
    """``$GCBUNDLE_HOME/site-defaults.yaml`` (written by the Ansible role), or {}."""
    import yaml

    try:
        data = yaml.safe_load((Path(home.root) / "site-defaults.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def site_defaults(home: Any, profile: Any) -> dict[str, Any]:
    """Site-wide parameter defaults (``$GCBUNDLE_HOME/site-defaults.yaml``,
    written by the Ansible role), limited to what the profile declares."""
    params = site_file(home).get("profile_params") or {}
    known = profile.parameters()
    return {k: v for k, v in params.items() if k in known} if isinstance(params, dict) else {}


def _home_of(paths: RunPaths) -> Any:
    from login_node.rundir import Home

    return Home(paths.root.parent.parent)


def _site_file(paths: RunPaths) -> dict[str, Any]:
    return site_file(_home_of(paths))


def _site_defaults(paths: RunPaths, profile: Any) -> dict[str, Any]:
    return site_defaults(_home_of(paths), profile)


def _default_config() -> Any:
    from bundle import profiles

    return profiles.build_config(profiles.render(profiles.load("local"), {}))


def _import_entry(root: Path, entry: str) -> Any:
    import importlib

    parts = entry[:-3].split("/") if entry.endswith(".py") else entry.split("/")
    packaged = all((root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts)))
    if not packaged:
        parent = str(root.joinpath(*parts[:-1]))
        if parent not in sys.path:
            sys.path.insert(0, parent)
        parts = parts[-1:]
    return importlib.import_module(".".join(parts))


def _resolve(value: Any) -> Any:
    """A main() that returns futures gets their results stored instead."""
    from concurrent.futures import Future

    if isinstance(value, Future):
        return value.result()
    if isinstance(value, (list, tuple)) and any(isinstance(v, Future) for v in value):
        return type(value)(v.result() if isinstance(v, Future) else v for v in value)
    if isinstance(value, dict) and any(isinstance(v, Future) for v in value.values()):
        return {k: (v.result() if isinstance(v, Future) else v) for k, v in value.items()}
    return value


def _status_name(record: Any) -> str:
    status = record.get("status")
    return getattr(status, "name", str(status))


def _error(exc: BaseException) -> dict[str, str]:
    return {
        "type": type(exc).__name__,
        "message": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def _driver_log_filter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.startswith("gcbundle")


def _checkpointing_memoizer(base: type) -> type:
    """``base`` (parsl's BasicMemoizer) for task-exit checkpoints, minus the cost
    for tasks that have nothing to checkpoint.

    With ``checkpoint_mode="task_exit"`` parsl opens the checkpoint file for
    every finished task and, while nothing has been checkpointed yet, logs a
    warning, even for apps without ``cache=True``, which never have a hash
    and are never written. Skipping those is exactly what parsl would do,
    without the file and the log line per task.
    """
    class TaskExitMemoizer(base):  # type: ignore[misc, valid-type]
        def update_memo_result(self, task: Any, r: Any) -> None:
            if task.get("hashsum"):
                super().update_memo_result(task, r)

        def update_memo_exception(self, task: Any, e: BaseException) -> None:
            if task.get("hashsum"):
                super().update_memo_exception(task, e)

    return TaskExitMemoizer


def _in_background(fn: Callable[[], Any], name: str) -> Callable[[], Any]:
    """Start ``fn`` in a daemon thread; the returned callable waits for its value (None if it failed)."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()), name=name, daemon=True)
    thread.start()

    def value() -> Any:
        thread.join(timeout=90)
        return box[0] if box else None

    return value


def _pip_freeze() -> list[str]:
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, timeout=60, check=False)
        return out.stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return []


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--detach":
        _detach(Path(argv[1]))
        return 0
    os.umask(0o077)
    paths = RunPaths(Path(argv[0]))
    # Parsl logs to its own parsl.log; driver.log keeps our lines and others' warnings.
    logging.basicConfig(
        filename=str(paths.driver_log), level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The root logger's level does not stop records that propagate up from parsl's
    # DEBUG-level logger: without a filter on the handler every line of parsl.log
    # was written to driver.log too (440,000 lines, and 15% of the DFK's
    # throughput, for 20,000 no-op apps).
    for handler in logging.getLogger().handlers:
        handler.addFilter(_driver_log_filter)
    log.setLevel(logging.INFO)
    log.info("driver for run %s starting (pid %d on %s)", paths.run_id, os.getpid(), state.hostname())
    driver = Driver(paths)
    code = driver.run()
    log.info("driver for run %s finished: %s", paths.run_id, driver.state.get("state"))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for threads a workflow left behind


if __name__ == "__main__":
    sys.exit(main())
