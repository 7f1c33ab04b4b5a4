"""What gcbundle knows about batch schedulers and MPI launchers, in tables.

Parsl's providers run the scheduler's commands themselves; gcbundle needs
to know them only to check a login node (``gcbundle doctor``), to cancel
the jobs of a driver that was killed before its DFK could (the ``cancel``
task, from the job ids the driver recorded in ``state.json``), and to show a
batch script without submitting it (``gcbundle render``). Importable on both
sides: the client's ``render`` and the login node's doctor, driver and tasks.
To teach gcbundle a scheduler, add it to the tables at the top.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scheduler:
    """One batch scheduler's command line."""

    name: str
    submit: str
    status: str
    cancel: str
    #: What its submit command prints for job 1 (``gcbundle render`` answers with it).
    submitted: str
    #: Lists this user's jobs: ``{user}`` is replaced (``gcbundle doctor`` asks it).
    query: tuple[str, ...]

    @property
    def commands(self) -> tuple[str, str, str]:
        return (self.submit, self.status, self.cancel)


SCHEDULERS: dict[str, Scheduler] = {
    "slurm": Scheduler("slurm", "sbatch", "squeue", "scancel", "Submitted batch job 1\n",
                       ("squeue", "-h", "-o", "%i", "-u", "{user}")),
    "pbs": Scheduler("pbs", "qsub", "qstat", "qdel", "1.server\n", ("qstat", "-u", "{user}")),
}

#: Parsl provider class name -> the scheduler whose commands it runs (the ones doctor checks).
PROVIDER_SCHEDULER = {"SlurmProvider": "slurm", "PBSProProvider": "pbs", "TorqueProvider": "pbs"}

#: Parsl provider class name -> the command that cancels its jobs, for every batch
#: provider (also those doctor does not check): recorded jobs are cancelled with it.
CANCEL_COMMAND = {
    "SlurmProvider": "scancel", "PBSProProvider": "qdel", "TorqueProvider": "qdel",
    "LSFProvider": "bkill", "CondorProvider": "condor_rm", "GridEngineProvider": "qdel",
}

#: Submit commands of every batch provider (to find the submission among a provider's commands).
SUBMIT_COMMANDS = ("sbatch", "qsub", "bsub", "condor_submit")

#: Parsl launcher class name -> the command it runs in each block.
LAUNCHER_COMMAND = {
    "MpiExecLauncher": "mpiexec", "MpiRunLauncher": "mpirun", "SrunLauncher": "srun", "SrunMPILauncher": "srun",
}

def for_provider(provider: str) -> Scheduler | None:
    """The scheduler a provider class (by name) submits to, if gcbundle knows it."""
    name = PROVIDER_SCHEDULER.get(provider)
    return SCHEDULERS[name] if name else None


def query(scheduler: Scheduler, user: str) -> list[str]:
    """The argument list that lists ``user``'s jobs."""
    return [user if arg == "{user}" else arg for arg in scheduler.query]


def cancel_argv(provider: str, job_ids: list[str]) -> list[str] | None:
    """The command that cancels ``job_ids`` of a provider, or None (unknown provider, no valid id).

    Job ids come from ``state.json``: anything that does not look like one is
    dropped rather than passed to the command.
    """
    command = CANCEL_COMMAND.get(provider)
    ids = [i for i in job_ids if isinstance(i, str) and i.replace(".", "").replace("-", "").isalnum()]
    return [command, *ids] if command and ids else None


def dry_run_answer(cmd: str) -> tuple[int, str, str]:
    """What ``gcbundle render`` answers a provider that runs ``cmd``: a job id for a submission, else a refusal."""
    word = cmd.split()[0] if cmd.split() else ""
    for scheduler in SCHEDULERS.values():
        if word == scheduler.submit:
            return 0, scheduler.submitted, ""
    return 1, "", "gcbundle render: not run"
