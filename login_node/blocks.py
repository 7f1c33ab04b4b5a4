"""The run's blocks at the batch scheduler: watching them, and cancelling them.

Parsl's providers submit, poll and cancel the blocks; the driver watches
them through the DFK's executors to record the job ids (``state.json``,
``report.json``), to notice a scheduler that refuses every block (a bad
partition, queue or account: Parsl would only log it and submit again), to
say in the scheduler's own words what became of a block job that died, and
to cancel, on every end, the jobs the DFK's cleanup left. The ``cancel``
task cancels the recorded jobs itself when it had to kill the driver.
Scheduler commands come from ``bundle.schedulers``.

Parsl's PBSProProvider reads only ``job_state`` from ``qstat``: a block whose
job exited non-zero, or was killed, is COMPLETED to it just like one that
ended normally, so Parsl submits the next block as if nothing happened (a
block that cannot start its workers is resubmitted for ever). It also asks
about all its blocks in one ``qstat -x -f -F json A B ...`` call, which
OpenPBS 23.06 answers for the first job only: every other block then looks
COMPLETED too. The driver (and ``gcbundle doctor --probe``) therefore gives
each PBS provider a status reader of its own (:func:`watch_pbs`): one
``qstat`` per job still worth asking about, and a job that finished with a
non-zero ``Exit_status`` that gcbundle did not cancel is FAILED, with PBS's
words. Parsl's block error handling then does the rest (with one block, the
executor fails its tasks and the run fails, saying which job died and why).

For Slurm, Parsl already reads FAILED, NODE_FAIL, TIMEOUT, ... from
``squeue``; :func:`failures` adds Slurm's reason and exit code
(``scontrol show job``) so that ``gcbundle status`` can say why.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
from collections.abc import Iterable
from typing import Any

from bundle import schedulers

log = logging.getLogger("gcbundle.driver")

#: Seconds a scheduler's cancel command may take.
CANCEL_TIMEOUT = 60
#: Seconds a scheduler's query may take.
SCHEDULER_TIMEOUT = 30
#: Parsl job states that mean the block did not end well.
BAD_STATES = ("FAILED", "TIMEOUT", "MISSING")
#: PBS's negative Exit_status values (JOB_EXEC_* in its headers) users meet.
PBS_EXEC_CODES = {
    -1: "the mom could not start the job",
    -2: "the job could not be started (retried)",
    -3: "the mom could not start the job (retried)",
    -4: "the job was aborted at start",
    -10: "the job's files could not be staged in",
    -11: "the job was killed: its walltime or another limit was exceeded (or it was aborted on the node)",
    -20: "the mom was restarted; the job could not be recovered",
    -29: "the job exceeded its walltime",
}


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
        failed = [s for s in statuses.values()
                  if getattr(getattr(s, "state", None), "name", "") in ("FAILED", "MISSING")]
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


def describe_pbs_exit(job_id: str, attrs: dict[str, Any]) -> str:
    """One sentence: which PBS job ended how, from its ``qstat -x -f`` attributes."""
    code = attrs.get("Exit_status")
    if isinstance(code, int) and code > 256:
        try:
            name = signal.Signals(code - 256).name
        except ValueError:
            name = f"signal {code - 256}"
        how = f"killed by {name}"
    elif isinstance(code, int) and code < 0:
        how = PBS_EXEC_CODES.get(code, "PBS could not run it")
    else:
        how = f"its script exited with {code}"
    text = f"PBS job {job_id} ended with Exit_status {code} ({how})"
    comment = str(attrs.get("comment") or "").strip()
    return f"{text}; PBS comment: {comment}" if comment else text


def watch_pbs(provider: Any) -> None:
    """Give a PBSProProvider a status reader that asks about one job at a time
    and calls a non-zero exit FAILED (jobs gcbundle or Parsl cancelled aside);
    any other provider is left as it is."""
    if type(provider).__name__ != "PBSProProvider" or getattr(provider, "_gcbundle_watched", False):
        return
    # Parsl is heavy, and the ``cancel`` task, which imports this module, needs none of it.
    from parsl.jobs.states import JobState, JobStatus
    from parsl.providers.torque.torque import translate_table

    cancelled: set[str] = set()
    settled: set[str] = set()  # finished, and what became of them is known
    died: dict[str, dict[str, Any]] = {}  # what PBS said of the jobs that died, for failures()
    original_cancel = provider.cancel

    def cancel(job_ids: list[str]) -> Any:
        cancelled.update(job_ids)
        return original_cancel(job_ids)

    def status_one_by_one() -> None:
        for job_id, info in list(provider.resources.items()):
            if job_id in settled:
                continue
            retcode, stdout, stderr = provider.execute_wait(f"qstat -x -f -F json {job_id}")
            if retcode != 0:
                log.warning("qstat %s failed (%s): %s", job_id, retcode, (stdout + stderr).strip())
                continue
            try:
                attrs = dict(json.loads(stdout).get("Jobs", {}).get(job_id) or {})
            except ValueError:
                log.warning("qstat %s gave no JSON: %s", job_id, stdout[:200])
                continue
            if not attrs:
                continue  # not known to the server (yet): leave Parsl's view
            state = translate_table.get(attrs.get("job_state"), JobState.UNKNOWN)
            message, code = None, attrs.get("Exit_status")
            if state == JobState.COMPLETED:
                settled.add(job_id)
                if job_id not in cancelled and isinstance(code, int) and code != 0:
                    state = JobState.FAILED
                    message = describe_pbs_exit(job_id, attrs)
                    died[job_id] = {"job": job_id, "provider": type(provider).__name__, "scheduler_state": "F",
                                    "exit_code": code, "why": message}
                    log.error("block job %s", message)
            info["status"] = JobStatus(state, message=message, exit_code=code if isinstance(code, int) else None,
                                       stdout_path=info.get("job_stdout_path"), stderr_path=info.get("job_stderr_path"))

    provider.cancel = cancel
    provider._status = status_one_by_one
    provider._gcbundle_watched = True
    provider._gcbundle_died = died


def slurm_reason(job_id: str) -> tuple[str, str | None, str] | None:
    """Slurm's own account of a job: (state, exit code, one sentence)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                             timeout=SCHEDULER_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    fields = dict(part.split("=", 1) for part in out.stdout.split() if "=" in part)
    parts = [f"Slurm job {job_id} {fields.get('JobState', '?')}"]
    if fields.get("Reason") and fields["Reason"] != "None":
        parts.append(f"reason {fields['Reason']}")
    if fields.get("ExitCode"):
        parts.append(f"exit code {fields['ExitCode']}")
    if fields.get("NodeList") and fields["NodeList"] != "(null)":
        parts.append(f"on {fields['NodeList']}")
    return fields.get("JobState", "?"), fields.get("ExitCode"), ", ".join(parts)


#: Slurm states of a job that died (not one that ended or was cancelled).
SLURM_DEATHS = ("FAILED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")
#: Slurm states of a job that ended without dying: what Slurm says of it will not change.
SLURM_ENDED = ("COMPLETED", "CANCELLED")


def failures(providers: Iterable[Any], known: dict[str, dict[str, Any]], final: bool = False) -> list[dict[str, Any]]:
    """Every block job of the run that died, in the scheduler's words (PBS:
    a non-zero Exit_status; Slurm: FAILED, NODE_FAIL, TIMEOUT, ... with its
    reason); `known` caches what was already found. (Parsl rewrites the
    state of a block whose workers never registered to MISSING: the record
    keeps the scheduler's own state.) With ``final`` (the run has ended, and
    Parsl may not have polled since a block died, e.g. when a lost manager
    ended the run first), every job is asked about once more."""
    for provider in providers:
        if final and getattr(provider, "_gcbundle_watched", False):
            try:
                provider._status()
            except Exception:  # noqa: BLE001 - the scheduler did not answer: keep what is known
                log.warning("could not ask PBS about the run's jobs", exc_info=True)
        for job_id, record in list((getattr(provider, "_gcbundle_died", None) or {}).items()):
            known.setdefault(job_id, record)
        if type(provider).__name__ != "SlurmProvider":
            continue
        # Jobs that ended without dying: asked about once, never again on later beats.
        settled: set[str] = provider.__dict__.setdefault("_gcbundle_settled", set())
        for job_id, info in list(getattr(provider, "resources", {}).items()):
            state = getattr(getattr(info.get("status"), "state", None), "name", "")
            if job_id in known or job_id in settled or not (final or state in BAD_STATES):
                continue
            said = slurm_reason(job_id)
            if said is None:
                continue
            slurm_state, exit_code, why = said
            if slurm_state not in SLURM_DEATHS:
                if slurm_state in SLURM_ENDED:
                    settled.add(job_id)
                continue  # running, ended well, or cancelled (by gcbundle, Parsl or the user): not a death
            known[job_id] = {"job": job_id, "provider": "SlurmProvider", "scheduler_state": slurm_state,
                             "exit_code": exit_code, "why": why}
    return list(known.values())


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
