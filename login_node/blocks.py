"""The run's blocks at the batch scheduler: their job ids, a refusal, and cancelling them.

Parsl's providers submit, poll and cancel the blocks; the driver watches
them through the DFK's executors to record the job ids (``state.json``,
``report.json``), to notice a scheduler that refuses every block (a bad
partition, queue or account: Parsl would only log it and submit again), and
to cancel, on every end, the jobs the DFK's cleanup left. The ``cancel``
task cancels the recorded jobs itself when it had to kill the driver.
Scheduler commands come from ``bundle.schedulers``.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

from bundle import schedulers

log = logging.getLogger("gcbundle.driver")

#: Seconds a scheduler's cancel command may take.
CANCEL_TIMEOUT = 60


def start_blocks(dfk: Any) -> None:
    """Run Parsl's first scaling pass now, not one ``strategy_period`` after the DFK loads.

    This Parsl submits a Config's ``init_blocks`` only on the strategy's first
    tick, 5 s after load by default: every run would wait that long for its
    first workers (on ``local``, most of a short workflow's time). The pass
    is the poller's own, run once here; the poller's timer takes over after.
    """
    poller = getattr(dfk, "job_status_poller", None)
    if poller is None:
        return
    try:
        poller.poll()
    except Exception:  # noqa: BLE001 - the timer's pass will try again, as it would have anyway
        log.exception("the first scaling pass failed; Parsl's own will retry")


def collect(dfk: Any, job_ids: dict[str, str], batch_jobs: dict[str, list[str]]) -> None:
    """Add the DFK's blocks to ``job_ids`` (``executor/block`` -> job id) and, for batch
    providers, to ``batch_jobs`` (provider class -> job ids, kept after the blocks end)."""
    if dfk is None:
        return
    for executor in list(getattr(dfk, "executors", {}).values()):
        mapping = getattr(executor, "blocks_to_job_id", None) or {}
        for block, job in list(mapping.items()):
            job_ids[f"{executor.label}/{block}"] = str(job)
        kind = type(getattr(executor, "provider", None)).__name__
        if kind in schedulers.CANCEL_COMMAND and mapping:
            known = batch_jobs.setdefault(kind, [])
            known += [str(j) for j in mapping.values() if str(j) not in known]


def scheduler_error(dfk: Any) -> dict[str, str] | None:
    """The scheduler's own words when an executor cannot get its blocks:
    the executor is in a bad state, or every block it tried failed to
    submit (sbatch/qsub refused it); None otherwise."""
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
            "hint": "check the site profile's parameters (partition, queue, account); "
                    "`gcbundle render` shows the batch script and `gcbundle doctor` checks the scheduler",
            "traceback": str(getattr(executor, "executor_exception", "") or ""),
        }
    return None


def cancel_blocks(providers: list[Any]) -> None:
    """Cancel every batch job of the run that the scheduler may still hold.

    The DFK's cleanup scales in the blocks it knows of, but not those of
    an executor in a bad state (after a scheduler failure), nor a block
    whose submission was in flight; so ask each batch provider to cancel
    every job it submitted and has not seen end (scancel, qdel)."""
    from parsl.providers.cluster_provider import ClusterProvider  # Parsl is heavy: only when there is a run to clean up

    for provider in providers:
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


def cancel_recorded(batch_jobs: dict[str, Any]) -> None:
    """Cancel the batch jobs a killed driver recorded (``state.json``'s ``batch_jobs``), by the scheduler's command."""
    for kind, ids in (batch_jobs or {}).items():
        argv = schedulers.cancel_argv(kind, ids if isinstance(ids, list) else [])
        if argv and shutil.which(argv[0]):
            subprocess.run(argv, capture_output=True, timeout=CANCEL_TIMEOUT, check=False)
