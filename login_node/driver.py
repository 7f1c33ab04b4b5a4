"""The detached driver: one process per run that owns the run's DataFlowKernel.

Started by the ``launch`` task through ``login_node.spawn`` (detached, in
its own session). It is the only writer of ``state.json`` after launch, writes a
heartbeat there every ``GCBUNDLE_HEARTBEAT_SECONDS``, and on SIGTERM (cancel)
cleans up the DFK so that the provider cancels its blocks. Whatever happens,
it writes ``report.json`` and a terminal state before it exits, then stops any
process of the run still alive.

Here: the run's lifecycle (state, heartbeat, signals, the workflow's call).
The Config comes from ``siteconfig``, the blocks are watched and cancelled
by ``blocks``, the report is written by ``report``.

    python -m login_node.driver RUN_DIR
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from bundle import prelude
from bundle.errors import GcbundleError
from bundle.fileio import write_atomic
from login_node import blocks, procs, report, siteconfig, spawn, state
from login_node.entry import import_entry, resolve
from login_node.rundir import RunPaths, RunRequest
from login_node.timing import FirstWorkers

log = logging.getLogger("gcbundle.driver")

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


class Driver:
    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.home = paths.home
        self.request = RunRequest.read(paths)
        self.period = state.heartbeat_seconds()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.state: dict[str, Any] = state.read_raw(paths)
        self.dfk: Any = None
        self.config_repr = ""
        self.records: list[Any] = []
        self.first_workers: FirstWorkers | None = None  # when the run's first workers connected
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
            self.state["tasks"] = report.task_counts(self.records)
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
                blocks.failures(self.providers, self.block_failures)
            except Exception:  # noqa: BLE001 - Parsl's threads change what we read; next beat
                pass
            self._write_state()
            try:
                failure = blocks.scheduler_error(self.dfk) if self.scheduler_failure is None else None
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
        self.pip_freeze = report.in_background(report.pip_freeze, "gcbundle-pip-freeze")
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
            outcome = {"state": "failed", "error": blocks.scheduler_error(self.dfk) or _error(exc)}
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._cleanup()
        # The report's `pip freeze` runs as a process of the run (its environment and
        # working directory): have its answer before the sweep below would stop it.
        self.frozen = self.pip_freeze()
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
            blocks.failures(self.providers, self.block_failures, final=True)  # a block that died unpolled
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
                config = siteconfig.compose(self.home, self.paths, self.request)
            self._prepare(config)
            dfk = original_load(config, *a, **k)
            self._instrument(dfk)
            blocks.start_blocks(dfk)
            self.first_workers = FirstWorkers(dfk)
            self.first_workers.start()
            return dfk

        parsl.load = load  # script mode: the script's own parsl.load goes through here
        if req.mode == "script":
            return self._run_script(req)
        module = import_entry(self.paths.bundle, req.entry)
        main = getattr(module, "main", None)
        if not callable(main):
            raise GcbundleError(f"{req.entry} defines no main()", "define main(**args), or submit it as a script")
        load(siteconfig.compose(self.home, self.paths, req, module))
        self._write_state(state="running")
        self.timings["dfk_loaded"] = time.time()
        value = main(**req.args)
        value = resolve(value)
        self.timings["main_returned"] = time.time()
        return value

    def _run_script(self, req: RunRequest) -> Any:
        import runpy

        self._write_state(state="running")
        argv = [req.entry]
        for key, value in req.args.items():
            argv.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
        sys.argv = argv
        os.environ["GCBUNDLE_ARGS"] = json.dumps(req.args)
        runpy.run_path(str(self.paths.bundle / req.entry), run_name="__main__")
        self.timings["main_returned"] = time.time()
        return None

    def _prepare(self, config: Any) -> None:
        """Make the Config ours: run_dir in the run, task-exit checkpoints, and
        workers that see the bundle and the same Python as this driver."""
        from parsl.dataflow.memoization import BasicMemoizer
        from parsl.utils import get_all_checkpoints

        config.run_dir = str(self.paths.runinfo)
        for prev in self.request.checkpoint_runs:
            prev_runinfo = self.paths.root.parent / prev / "runinfo"
            if prev_runinfo.is_dir():
                self.checkpoint_files += get_all_checkpoints(str(prev_runinfo))
        memoizer = _checkpointing_memoizer(BasicMemoizer)
        config.memoizer = memoizer(checkpoint_mode="task_exit", checkpoint_files=self.checkpoint_files)
        # The run's driver_init comes first in every job too: the workers then
        # run in the environment the driver runs in (login_node.driverenv).
        site = siteconfig.SiteDefaults.read(self.home)
        driver_init = str(spawn.plan(self.paths).get("driver_init") or "")
        job_prelude = site.prelude(self.paths.root, self.paths.run_id, driver_init=driver_init)
        self.providers += prelude.prepend(config, job_prelude)
        for provider in self.providers:
            blocks.watch_pbs(provider)  # PBS: non-zero exits are failures; one qstat per job
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

    def _collect_job_ids(self) -> None:
        batch = dict(self.state.get("batch_jobs") or {})
        blocks.collect(self.dfk, self.job_ids, batch)
        if batch:
            self.state["batch_jobs"] = batch

    def _cleanup(self) -> None:
        import parsl

        if self.first_workers is not None:
            self.first_workers.stop()
            if self.first_workers.first is not None:
                self.timings["first_workers"] = self.first_workers.first
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
        blocks.cancel_blocks(self.providers)

    def _store_result(self, value: Any) -> None:
        import cloudpickle

        write_atomic(self.paths.result_pkl, cloudpickle.dumps(value))
        try:
            text = json.dumps(value, indent=1, sort_keys=True)
        except (TypeError, ValueError):
            return
        write_atomic(self.paths.result_json, (text + "\n").encode())

    def _write_report(self, outcome: dict[str, Any]) -> None:
        report.write(
            self.paths, self.request, outcome=outcome, records=self.records, checkpoint_files=self.checkpoint_files,
            config=self.config_repr, job_ids=self.job_ids, timings=self.timings,
            pip_freeze=self.frozen or [],
        )




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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
