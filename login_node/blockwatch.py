"""What became of a run's batch jobs, in the scheduler's own words.

Parsl's PBSProProvider reads only ``job_state`` from ``qstat``: a block whose
job exited non-zero, or was killed, is COMPLETED to it just like one that
ended normally, so Parsl submits the next block as if nothing happened (a
block that cannot start its workers is resubmitted for ever). It also asks
about all its blocks in one ``qstat -x -f -F json A B ...`` call, which
OpenPBS 23.06 answers for the first job only: every other block then looks
COMPLETED too. The driver therefore gives each PBS provider a status reader
of its own (:func:`watch_pbs`): one ``qstat`` per job still worth asking
about, and a job that finished with a non-zero ``Exit_status`` that gcbundle
did not cancel is FAILED, with PBS's words. Parsl's block error handling then
does the rest (with one block, the executor fails its tasks and the run
fails, saying which job died and why).

For Slurm, Parsl already reads FAILED, NODE_FAIL, TIMEOUT, ... from
``squeue``; :func:`failures` adds Slurm's reason and exit code
(``scontrol show job``) so that ``gcbundle status`` can say why.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

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
    and calls a non-zero exit FAILED (jobs gcbundle or Parsl cancelled aside)."""
    from parsl.jobs.states import JobState, JobStatus
    from parsl.providers.torque.torque import translate_table

    if getattr(provider, "_gcbundle_watched", False):
        return
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
        for job_id, info in list(getattr(provider, "resources", {}).items()):
            state = getattr(getattr(info.get("status"), "state", None), "name", "")
            if job_id in known or not (final or state in BAD_STATES):
                continue
            said = slurm_reason(job_id)
            if said is None:
                continue
            slurm_state, exit_code, why = said
            if slurm_state not in SLURM_DEATHS:
                continue  # running, ended well, or cancelled (by gcbundle, Parsl or the user): not a death
            known[job_id] = {"job": job_id, "provider": "SlurmProvider", "scheduler_state": slurm_state,
                             "exit_code": exit_code, "why": why}
    return list(known.values())
