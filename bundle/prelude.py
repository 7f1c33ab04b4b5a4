"""The shell lines gcbundle puts before Python starts: in every batch job's
``worker_init``, and before the driver in the user's environment, each assembled in one place.

The driver (with the run's real paths and the site's lines from
``site-defaults.yaml``), ``gcbundle doctor`` (with a scratch run, to see
which Parsl the workers would get) and ``gcbundle render`` (with
placeholders) all call ``for_run``, and add the result to a Config with
``prepend``: the batch script ``render`` shows is the one the driver submits.

With the site parameter ``driver_init`` the driver starts after those lines
(``driver_init_script``, running the shipped code by ``shipped_stub``): on
the login node (``login_node.spawn``), in the driver's own batch job
(``login_node.driverjob``, and ``gcbundle render`` with placeholders), and
for the launch's check of that environment (``login_node.driverenv``, which
also ships the code and runs the check). The text is built here, on both
sides, without running anything.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

#: The interpreter looked for on PATH after driver_init.
PYTHON = "python3"


def for_run(run_dir: str | Path, run_id: str, *, bindir: str | None = None, site_init: str = "",
            tmpdir: str = "") -> str:
    """The prelude of a run whose directory is ``run_dir`` (its ``bundle/`` and ``outputs/`` inside).

    ``bindir`` defaults to this interpreter's ``bin/``: the driver's environment.
    """
    root = str(run_dir).rstrip("/")
    return worker_prelude(
        bindir=bindir if bindir is not None else str(Path(sys.executable).parent),
        bundle_dir=f"{root}/bundle", outputs_dir=f"{root}/outputs", run_id=run_id,
        site_init=site_init, tmpdir=tmpdir,
    )


def prepend(config: Any, prelude: str) -> list[Any]:
    """Put ``prelude`` first in the ``worker_init`` of every provider of ``config``; return the providers."""
    providers = []
    for executor in config.executors:
        provider = getattr(executor, "provider", None)
        if provider is None:
            continue
        if hasattr(provider, "worker_init"):
            provider.worker_init = prelude + (provider.worker_init or "")
        providers.append(provider)
    return providers


def worker_prelude(*, bindir: str, bundle_dir: str, outputs_dir: str, run_id: str,
                   site_init: str = "", tmpdir: str = "") -> str:
    """Shell lines the driver puts before every provider's ``worker_init``.

    Batch jobs do not always inherit the driver's environment (PBS Pro jobs
    do not) and start in the scheduler's idea of a working directory, so the
    job itself must get: the site's own set-up (``site_init``: module loads,
    the environment's activation, from ``site-defaults.yaml``); the driver's
    ``bin/`` first on PATH, so that ``process_worker_pool.py`` runs on the
    same Python and Parsl as the driver (the interchange refuses managers of
    another version); the bundle on PYTHONPATH (Parsl may pickle apps by
    reference); the run's id (which finds every process of the run) and
    outputs directory; a TMPDIR that exists on the node (Open MPI's
    ``mpiexec`` keeps its session directory there); Open MPI's consent to
    run as root, only for root; Open MPI's list of variables to pass to
    ranks on other nodes (started over ssh, as on a PBS site whose Open MPI
    has no PBS support, they get no other environment: Cray's and MPICH's
    mpiexec pass it all and ignore the list); under Slurm, the job's nodes in
    a file named by ``PBS_NODEFILE`` when the scheduler set none, since
    Parsl's MpiExecLauncher takes its hosts from there and would otherwise
    start every manager on the first node; and the bundle as working directory, where
    MpiExecLauncher writes its host file and where apps find the files they
    found on the laptop. Here it also fails loudly when the run directory is
    not visible on the node, instead of starting workers that cannot import
    the workflow.
    """
    q = shlex.quote
    lines = ["# gcbundle: the driver's Python and Parsl, the bundle, a usable TMPDIR"]
    if site_init.strip():
        lines.append(site_init.strip())
    lines += [
        f'export PATH={q(bindir)}:"$PATH"',
        f"export PYTHONPATH={q(bundle_dir)}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export GCBUNDLE_OUTPUT_DIR={q(outputs_dir)}",
        f"export GCBUNDLE_RUN_ID={q(run_id)}",
    ]
    if tmpdir.strip():
        lines.append(f"export TMPDIR={q(tmpdir.strip())}")
    lines += [
        'if [ -z "${TMPDIR:-}" ] || [ ! -d "$TMPDIR" ] || [ ! -w "$TMPDIR" ]; then export TMPDIR=/tmp; fi',
        'if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi',
        ('export OMPI_MCA_mca_base_env_list="PATH;PYTHONPATH;GCBUNDLE_OUTPUT_DIR;GCBUNDLE_RUN_ID'
         '${OMPI_MCA_mca_base_env_list:+;$OMPI_MCA_mca_base_env_list}"'),
        ('if [ -z "${PBS_NODEFILE:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then'
         ' export PBS_NODEFILE="$TMPDIR/gcbundle-nodes.$SLURM_JOB_ID";'
         ' scontrol show hostnames "$SLURM_JOB_NODELIST" >"$PBS_NODEFILE"; fi'),
        (f'cd {q(bundle_dir)} || {{ echo "gcbundle: no "{q(bundle_dir)}" on $(hostname):'
         ' put GCBUNDLE_HOME on a file system the compute nodes mount" >&2; exit 1; }'),
    ]
    return "\n".join(lines) + "\n"


def shipped_stub(lib: str | Path, module: str) -> str:
    """``python3 -c`` code that runs ``login_node.<module>.main()`` from the code shipped to ``lib``
    (``login_node.driverenv.ship``: gcbundle's packages first on ``sys.path``, its fallbacks last)."""
    lib = Path(lib)
    return (f"import sys; sys.path.insert(0, {str(lib / 'gcbundle')!r}); "
            f"sys.path.append({str(lib / 'fallback')!r}); "
            f"from login_node.{module} import main; main()")


def driver_init_script(driver_init: str, argv_after_python: list[str]) -> str:
    """The bash script that runs ``driver_init`` and then ``exec python3 ARGS``; a failing
    ``driver_init`` or no python3 after it ends it with a line that says so."""
    lines = driver_init.strip()
    args = " ".join(shlex.quote(a) for a in argv_after_python)
    return (
        "# gcbundle: the driver's environment (driver_init)\n"
        f"{{\n{lines}\n}} || {{ code=$?; echo \"gcbundle: driver_init failed (exit code $code)\" >&2; exit 3; }}\n"
        f"command -v {PYTHON} >/dev/null 2>&1"
        f" || {{ echo \"gcbundle: no {PYTHON} on PATH after driver_init\" >&2; exit 127; }}\n"
        f"exec {PYTHON} {args}\n"
    )


def driver_in_user_env(driver_init: str, lib: str | Path, run_dir: str) -> str:
    """The lines that start the driver of the run in ``run_dir`` after ``driver_init``,
    from the code shipped to ``lib``."""
    return driver_init_script(driver_init, ["-u", "-c", shipped_stub(lib, "driver"), run_dir])
