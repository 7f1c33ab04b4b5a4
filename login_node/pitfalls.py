"""Known ways a site's run fails after it was queued, checked before it is.

Each function returns one doctor check (a dict with ``name``, ``status``
``ok``/``warn``/``fail``, ``detail`` and ``fix``) for a pitfall that real
sites have published or that gcbundle's users met:

- a Parsl too old to read PBS Pro's job states F, T, U, X (Parsl fixed the
  table in 2026.04.13; before, a finished block read UNKNOWN and Parsl kept
  counting it as alive);
- a TMPDIR too long for a Unix socket path ("OSError: AF_UNIX path too
  long", ALCF's known issue on Polaris and Aurora, Parsl issue 3947: PBS's
  per-job TMPDIR is /var/tmp/pbs.<job id>, the mpiexec of HPE's PALS adds
  /<uuid>/tmp to it for the processes it starts, and Python's
  multiprocessing puts its sockets two levels below that);
- a run directory on a file system that only the login node has (Parsl's
  HTEX encrypts by default: its certificates are in the run directory,
  and workers read them from there);
- an endpoint older than 4.10.1, the first whose configuration is always
  a template (and whose Parsl reads PBS Pro's states);
- an endpoint whose idle timers stop it between gcbundle's short tasks:
  what that means for a run in flight.

Nothing here starts a job or needs the network; each reads this machine's
files and versions, or runs the batch job's ``worker_init`` in a subshell.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

#: The first Parsl that maps PBS Pro's F (finished), T, U and X job states.
PARSL_PBS_STATES = (2026, 4, 13)
#: The first Globus Compute endpoint whose configuration is always a template.
ENDPOINT_TEMPLATES = (4, 10, 1)
#: The longest Unix socket path Linux takes (sun_path is 108 bytes, NUL included).
AF_UNIX_MAX = 107
#: What multiprocessing adds below TMPDIR for a listener: /pymp-XXXXXXXX/listener-XXXXXXXX.
SOCKET_SUFFIX = len("/pymp-abcdefgh/listener-abcdefgh")
#: What the mpiexec of HPE's PALS (Polaris, Aurora) adds to TMPDIR for what it starts (Parsl issue 3947).
PALS_SUFFIX = len("/3faf840a-5bc3-49e5-8d4f-59b55d844dc5/tmp")
#: File systems that compute nodes share with login nodes.
SHARED_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "cephfs", "panfs", "wekafs",
             "dvs", "fuse.dvs", "glusterfs", "fuse.glusterfs", "orangefs", "pvfs2", "9p", "virtiofs"}
#: File systems no other node can see.
NODE_LOCAL_FS = {"tmpfs", "ramfs", "devtmpfs"}
PBS_PROVIDERS = ("PBSProProvider", "TorqueProvider")
TIMEOUT = 60


def check(name: str, status: str, detail: str, fix: str = "") -> dict[str, str]:
    return {"name": name, "status": status, "detail": detail, "fix": fix if status != "ok" else ""}


def version_tuple(version: str) -> tuple[int, ...]:
    """``2026.4.20`` -> (2026, 4, 20); what is not a number ends the tuple (``1.3.0.dev0`` -> (1, 3, 0))."""
    out = []
    for part in str(version).split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
        if m.group() != part:
            break
    return tuple(out)


def pbs_job_states(
    parsl_version: str, providers: list[str], where: str = "the driver's environment"
) -> dict[str, str] | None:
    """Fail when a PBS provider would run on a Parsl that reads finished PBS Pro jobs as UNKNOWN."""
    if not any(p in PBS_PROVIDERS for p in providers):
        return None
    name = "Parsl reads PBS Pro job states"
    if parsl_version in ("", "absent", "?"):
        return check(name, "fail", f"no Parsl in {where}", "install parsl>=2026.4.13 there")
    if version_tuple(parsl_version) < PARSL_PBS_STATES:
        return check(
            name,
            "fail",
            f"Parsl {parsl_version} in {where} reads PBS Pro's finished (F), moved (T, U) "
            "and subjob-finished (X) jobs as UNKNOWN: "
            "a block that ended still counts as alive, and the run waits for workers that never come",
            "install parsl>=2026.4.13 there (`pip install -U parsl`), "
            "or choose an environment that has it (driver_init)",
        )
    return check(name, "ok", f"Parsl {parsl_version} in {where} maps F, T, U, X")


def endpoint_version(version: str) -> dict[str, str] | None:
    """Warn about an endpoint older than the first whose configuration is always a template (4.10.1)."""
    if version in ("", "absent"):
        return None
    name = "Globus Compute endpoint version"
    if version_tuple(version) < ENDPOINT_TEMPLATES:
        return check(
            name,
            "warn",
            f"globus-compute-endpoint {version} is older than 4.10.1: its configuration may be a fixed config.yaml "
            "rather than a template, and the Parsl it brings reads PBS Pro's finished jobs as UNKNOWN",
            "upgrade the endpoint (`pip install -U globus-compute-endpoint`, or re-run the Ansible playbook) and "
            "re-create its configuration from a template",
        )
    return check(name, "ok", f"globus-compute-endpoint {version} (template-capable configuration)")


def pbs_job_tmpdir() -> str:
    """The TMPDIR a PBS Pro mom gives a job by default: ``/var/tmp/pbs.<job id>``, with a
    seven-digit sequence number and this site's server name (from pbs.conf)."""
    server = ""
    conf = Path(os.environ.get("PBS_CONF_FILE") or "/etc/pbs.conf")
    try:
        for line in conf.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "PBS_SERVER":
                server = value.strip()
    except OSError:
        pass
    server = server or os.environ.get("PBS_SERVER") or "pbs-server"
    return f"/var/tmp/pbs.1234567.{server}"


def worker_tmpdir(prelude: str, worker_init: str, scheduler: str | None, launcher: str, base: Path) -> dict[str, str]:
    """Run the job's prelude and worker_init in a subshell with the TMPDIR the
    scheduler sets, and check the TMPDIR the workers end with against AF_UNIX's limit.

    Under PBS, MpiExecLauncher's ``mpiexec`` may be PALS's, which adds 41
    characters to TMPDIR: counted, since a Cray system cannot be told from here."""
    name = "TMPDIR of the batch jobs"
    job_tmp = pbs_job_tmpdir() if scheduler == "pbs" else ""
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        sentinel = Path(tmp) / "job-tmpdir"
        sentinel.mkdir()
        env = {k: v for k, v in os.environ.items() if k in ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")}
        env.update(PATH="/usr/local/bin:/usr/bin:/bin", TMPDIR=str(sentinel))
        script = prelude + worker_init + '\nprintf "gcbundle-tmpdir=%s\\n" "$TMPDIR"\n'
        try:
            proc = subprocess.run([shutil.which("bash") or "/bin/bash", "-c", script], capture_output=True, text=True,
                                  timeout=TIMEOUT, check=False, env=env, cwd=tmp, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return check(name, "warn", f"worker_init did not finish in {TIMEOUT} s", "see the worker_init check")
        found = [line.split("=", 1)[1] for line in proc.stdout.splitlines() if line.startswith("gcbundle-tmpdir=")]
        if not found:
            return check(name, "warn", "worker_init did not run to its end here", "see the worker_init check")
        tmpdir = found[-1]
        inherited = tmpdir == str(sentinel)
    if inherited:
        if not job_tmp:
            return check(name, "ok", "workers keep the TMPDIR the scheduler gives the job (Slurm sets none: /tmp)")
        tmpdir = job_tmp
        said = f"workers keep PBS's per-job TMPDIR, e.g. {tmpdir}"
    else:
        said = f"workers get TMPDIR={tmpdir} from worker_init"
    longest = len(tmpdir) + SOCKET_SUFFIX
    if scheduler == "pbs" and launcher == "MpiExecLauncher":
        longest += PALS_SUFFIX
        said += " (PALS's mpiexec adds /<uuid>/tmp)"
    if longest > AF_UNIX_MAX:
        return check(
            name,
            "fail",
            f"{said}: Python's multiprocessing sockets below it take {longest} characters, "
            f"more than a Unix socket path may ({AF_UNIX_MAX}): workers fail with 'OSError: AF_UNIX path too long'",
            "add `export TMPDIR=/tmp` to worker_init (--set worker_init='export TMPDIR=/tmp', or `tmpdir: /tmp` in "
            "site-defaults.yaml), as ALCF documents for Polaris and Aurora",
        )
    return check(name, "ok", f"{said} ({longest} of {AF_UNIX_MAX} characters for a socket path)")


def _mount_of(path: Path) -> tuple[str, str]:
    """(mount point, file system type) of the mount that holds ``path``."""
    target = os.path.realpath(path)
    best = ("/", "?")
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rest = left.split(), right.split()
                if len(fields) < 5 or not rest:
                    continue
                mount = fields[4].replace("\\040", " ")
                if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[0]):
                    best = (mount, rest[0])
    except OSError:
        pass
    return best


def run_dir_shared(home_root: Path, batch: bool) -> dict[str, str]:
    """Can the compute nodes see ``$GCBUNDLE_HOME`` (each run's run_dir, and HTEX's certificates in it)?"""
    name = "run directories on a shared file system"
    mount, fstype = _mount_of(home_root)
    where = f"{home_root} is on {fstype} ({mount})"
    if not batch:
        return check(name, "ok", where + "; the profile runs its workers on this node")
    if fstype in NODE_LOCAL_FS:
        return check(
            name,
            "fail",
            where + ": memory of this login node, which no compute node sees; Parsl's workers read the run's "
            "certificates (HTEX encrypts) and the bundle from the run directory",
            "set GCBUNDLE_HOME to a directory on a file system the compute nodes mount (home or project space; "
            "the Ansible role's gcbundle_site_home)",
        )
    if fstype in SHARED_FS or fstype.startswith("fuse.") or fstype.startswith("nfs"):
        return check(name, "ok", where + ", a network file system")
    return check(
        name,
        "ok",
        where + ": a file system of this node; the compute nodes must mount it too "
        "(every batch job checks it first and fails with 'gcbundle: no ... on <node>' if not)",
    )


def idle_timers(endpoint_dir: str | None) -> dict[str, str] | None:
    """What the endpoint's idle timers mean for a run in flight (its config.yaml, if this runs under one)."""
    if not endpoint_dir:
        return None
    import yaml

    name = "endpoint idle timers"
    root = Path(endpoint_dir)
    data: dict[str, Any] = {}
    source = None
    for candidate in ("config.yaml", "user_config_template.yaml.j2", "user_config_template.yaml"):
        try:
            text = (root / candidate).read_text()
        except OSError:
            continue
        source = candidate
        try:
            loaded = yaml.safe_load(re.sub(r"\{\{.*?\}\}|\{%.*?%\}", "", text))
            data = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            data = {}
        break
    if source is None:
        return check(name, "ok", f"no configuration found in {root}")
    try:
        soft = int(data.get("idle_heartbeats_soft") or 0)
        hard = int(data.get("idle_heartbeats_hard") or 5760)
        period = float(data.get("heartbeat_period") or 30)
    except (TypeError, ValueError):
        not_numbers = f"{root / source}: idle timers are not numbers"
        return check(name, "warn", not_numbers, "fix idle_heartbeats_soft/hard there")
    if soft <= 0:
        stays_up = f"{source}: idle_heartbeats_soft {soft}: the endpoint stays up while no task is in flight"
        return check(name, "ok", stays_up)
    idle = soft * period
    return check(
        name,
        "warn",
        f"{source}: the endpoint stops after {idle / 60:.0f} min without a task (idle_heartbeats_soft {soft} x "
        f"heartbeat_period {period:g} s; idle_heartbeats_hard {hard}). "
        "gcbundle's tasks are short, so it stops while a run is in flight: "
        "the run goes on (its driver is detached from the endpoint), but status, logs, results "
        "and cancel wait until the endpoint runs again (a multi-user endpoint starts it on the next task; "
        "a single-user endpoint must be started again)",
        "set idle_heartbeats_soft: 0 in the endpoint's configuration to keep it up, or be ready to start it again "
        "(`globus-compute-endpoint start NAME`) before asking about a run",
    )
