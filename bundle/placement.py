"""``placement: batch``: the driver inside one batch job that gcbundle submits.

Some sites forbid long-lived processes on login nodes, and ALCF documents,
for Aurora, running a whole workflow inside one PBS job with the DFK on the
job's first node. With ``--set placement=batch`` the launch task submits one
job with the site profile's own provider (its account, queue or partition,
walltime, nodes, scheduler options and worker_init, through Parsl's own
batch-script template, so ``gcbundle render`` shows it exactly); the job runs
the driver on its first node, and the driver's DFK gets that job's nodes: each
executor's batch provider becomes a ``LocalProvider`` of the same node count
with the profile's launcher (``MpiExecLauncher`` reads ``$PBS_NODEFILE``;
under Slurm the job writes its node list to a file and points
``PBS_NODEFILE`` at it; ``SrunLauncher`` uses the allocation itself), so no
further job is queued.

The run directory is on a shared file system (as for any batch run), so
``status``, ``logs``, ``results`` and ``resume`` read it as they do for a
driver on the login node; the driver's heartbeat says whether it is alive;
``cancel`` asks the driver to stop through the run directory, then ends the
job with the scheduler's own command.

Used on both sides: the client's ``render``, with placeholders, and the
login node's launch and driver.
"""
from __future__ import annotations

import copy
import shlex
from typing import Any

from bundle.errors import SiteProfileError

#: Parsl batch providers gcbundle can put a driver job on, and the command that ends such a job.
CANCEL = {"SlurmProvider": "scancel", "PBSProProvider": "qdel", "TorqueProvider": "qdel"}
#: The job's name (Parsl adds ``.<time>``); ``gcbundle.<run_id>`` finds it in squeue/qstat.
JOB_NAME = "gcbundle.{run_id}"


def batch_provider_node(rendered: dict[str, Any], where: str = "the site profile") -> dict[str, Any]:
    """The rendered ``provider:`` node whose settings the driver job uses: the first
    executor's, which must be a batch provider gcbundle can submit to."""
    executors = rendered.get("executors") if "executors" in rendered else [rendered.get("engine") or {}]
    nodes = [e.get("provider") for e in executors or [] if isinstance(e, dict) and isinstance(e.get("provider"), dict)]
    if not nodes or nodes[0].get("type") not in CANCEL:
        kind = nodes[0].get("type") if nodes else "no provider"
        raise SiteProfileError(f"placement=batch needs a batch provider in {where} ({', '.join(CANCEL)}); "
                               f"its first executor has {kind}",
                               "use placement=login with this profile, or a Slurm or PBS profile")
    return nodes[0]


def job_command(*, run_dir: str, bundle_dir: str, home: str, run_id: str, exports: dict[str, str],
                python_lines: str) -> str:
    """The job's command: the run's environment, the Slurm node list as a host file,
    the bundle as working directory, the driver's streams to the run's files, then
    ``python_lines`` (which exec the driver)."""
    q = shlex.quote
    lines = ["# gcbundle: the run's driver, in this job (placement=batch)"]
    lines += [f"export {k}={q(v)}" for k, v in sorted(exports.items())]
    lines += [
        f"export GCBUNDLE_HOME={q(home)} GCBUNDLE_RUN_ID={q(run_id)} GCBUNDLE_RUN_DIR={q(run_dir)}",
        f"export GCBUNDLE_OUTPUT_DIR={q(run_dir + '/outputs')} PYTHONUNBUFFERED=1",
        f"export PYTHONPATH={q(bundle_dir)}${{PYTHONPATH:+:$PYTHONPATH}}",
        # MpiExecLauncher's script reads the job's nodes from $PBS_NODEFILE, which Slurm does not set.
        'if [ -n "${SLURM_JOB_NODELIST:-}" ] && [ -z "${PBS_NODEFILE:-}" ]; then',
        f'  scontrol show hostnames "$SLURM_JOB_NODELIST" > {q(run_dir + "/driver-job.nodes")}'
        f' && export PBS_NODEFILE={q(run_dir + "/driver-job.nodes")}',
        "fi",
        # The driver's DFK makes Unix sockets below TMPDIR: PBS's per-job TMPDIR is too long for them.
        'if [ -z "${TMPDIR:-}" ] || [ "${#TMPDIR}" -gt 40 ] || [ ! -w "$TMPDIR" ]; then export TMPDIR=/tmp; fi',
        f'cd {q(bundle_dir)} || {{ echo "gcbundle: no "{q(bundle_dir)}" on $(hostname): '
        'put GCBUNDLE_HOME on a file system the compute nodes mount" >&2; exit 1; }',
        f"exec >> {q(run_dir + '/stdout')} 2>> {q(run_dir + '/stderr')}",
        python_lines.rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"


def driver_job_provider(provider: Any, worker_init: str, script_dir: str) -> Any:
    """``provider`` (built from the profile) made ready to submit the driver's job:
    the driver runs once, on the job's first node (SimpleLauncher)."""
    # Parsl is heavy: the client's CLI imports this module (through render) for every command.
    from parsl.launchers import SimpleLauncher

    class FirstNode(SimpleLauncher):  # type: ignore[misc]
        """SimpleLauncher without its warning about multi-node blocks: one driver per job is meant."""

        def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int, script_dir: str = "") -> str:
            return command

    provider.launcher = FirstNode(debug=False)
    provider.worker_init = worker_init
    provider.script_dir = script_dir
    return provider


def submit(provider: Any, command: str, run_id: str) -> str:
    """Submit the driver's job; its id, or SiteProfileError with the scheduler's words."""
    from parsl.providers.errors import ExecutionProviderException  # Parsl is heavy: see driver_job_provider

    try:
        job_id = provider.submit(command, 1, job_name=JOB_NAME.format(run_id=run_id))
    except (ExecutionProviderException, OSError) as exc:  # Parsl's SubmitException carries the scheduler's stderr
        said = "; ".join(line.strip() for line in str(getattr(exc, "stderr", "") or exc).splitlines() if line.strip())
        raise SiteProfileError(f"the scheduler refused the driver's job: {said}",
                               "check the profile's account, queue/partition and walltime "
                               "(`gcbundle render --set placement=batch` shows the job)") from None
    if not job_id:
        raise SiteProfileError("the scheduler gave no job id for the driver's job",
                               "check the scheduler with `gcbundle doctor`")
    return str(job_id)


def use_the_jobs_nodes(rendered: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Inside the driver's job: the rendered profile with every batch provider
    replaced by a LocalProvider over the job's nodes, with the same launcher,
    node count and worker_init; and what was replaced, for the report."""
    out = copy.deepcopy(rendered)
    executors = out["executors"] if "executors" in out else [out["engine"]]
    replaced = []
    for i, executor in enumerate(executors):
        node = executor.get("provider") if isinstance(executor, dict) else None
        if not isinstance(node, dict) or node.get("type") not in CANCEL:
            continue
        nodes = node.get("nodes_per_block") or 1
        local: dict[str, Any] = {"type": "LocalProvider", "nodes_per_block": nodes,
                                 "worker_init": node.get("worker_init") or "",
                                 "init_blocks": 1, "min_blocks": 0, "max_blocks": 1}
        if node.get("launcher") is not None:
            local["launcher"] = node["launcher"]
        executor["provider"] = local
        label = executor.get("label") or f"executors[{i}]"
        replaced.append(f"{label}: {node['type']} -> LocalProvider over the job's {nodes} node(s)")
    return out, replaced
