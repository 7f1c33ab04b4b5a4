# TEST STAND-IN for the PBS Pro command-line tools (qsub, qstat, qdel).
#
# No PBS Pro server can be installed on the test machines, so these commands
# put a PBS Pro-shaped command line in front of the real (local) Slurm cluster:
#   qsub  reads the #PBS directives and options, translates them to `sbatch`
#         and submits a wrapper that gives the job a PBS Pro environment
#         (PBS_JOBID, PBS_NODEFILE, PBS_O_WORKDIR, TMPDIR, ... ; working
#         directory $HOME) and then runs the job script;
#   qstat answers from `squeue --json` in PBS Pro's formats (the default table,
#         `-f`, and `-f -F json`, with `-x` for finished jobs);
#   qdel  maps to `scancel`.
# It covers what Parsl's PBSProProvider and MpiExecLauncher use, and refuses
# (with a message naming the option) what it does not translate.  It is not
# PBS Pro: scheduling, queues and accounting are Slurm's underneath.
#
# Only the Python standard library is used, so any user's python3 can run it.
from __future__ import annotations

import base64
import getopt
import json
import os
import pwd
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

PBS_VERSION = "2022.1.0 (stand-in on Slurm)"
CMD_TIMEOUT = 60  # seconds for each Slurm command

# PBS Pro exit codes are pbs_errno % 256.
EXIT_UNKNOWN_JOB = 153      # PBSE_UNKJOBID 15001: "Unknown Job Id"
EXIT_FINISHED_JOB = 35      # PBSE_HISTJOBID 15139: "Job has finished"
EXIT_UNKNOWN_QUEUE = 170    # PBSE_UNKQUE 15018: "Unknown queue"
EXIT_RESOURCE_LIMIT = 188   # PBSE_EXCQRESC 15036: exceeds queue resource limits
EXIT_USAGE = 2

# Marks the Slurm --comment that qsub writes, holding the PBS-only attributes.
COMMENT_TAG = "pbs-standin:"


class PbsError(Exception):
    """A failure reported PBS-style: `<command>: <message>` and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def server_name() -> str:
    """The PBS server name used in job ids (`<seq>.<server>`)."""
    return os.environ.get("PBS_SERVER") or socket.gethostname().split(".")[0]


def run_slurm(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=CMD_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise PbsError(f"cannot run {argv[0]!r}: is Slurm installed? ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise PbsError(f"{argv[0]} did not answer within {CMD_TIMEOUT}s") from exc


def slurm_id(job_id: str) -> str:
    """`123.server` or `123` -> `123`; anything else is not a job id we know."""
    m = re.fullmatch(r"(\d+)(\.[A-Za-z0-9_.-]+)?", job_id.strip())
    if not m:
        raise PbsError(f"illegally formed job identifier: {job_id}", EXIT_UNKNOWN_JOB)
    return m.group(1)


def pbs_id(sid: str | int, server: str) -> str:
    return f"{sid}.{server}"


# --------------------------------------------------------------------------- time

def parse_walltime(text: str) -> int:
    """PBS walltime `[[HH:]MM:]SS[.ms]` (a bare number is seconds) -> seconds."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+(\.\d*)?", p) for p in parts):
        raise PbsError(f"illegal attribute or resource value for walltime: {text}", EXIT_USAGE)
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + float(p)
    return int(-(-seconds // 1))  # round up


def hms(seconds: int) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def slurm_time(seconds: int) -> str:
    """Seconds -> sbatch --time (`D-HH:MM:SS`); Slurm rounds up to minutes."""
    days, rest = divmod(max(1, seconds), 86400)
    return f"{days}-{hms(rest)}" if days else hms(rest)


def ctime(epoch: int) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(epoch))


# ------------------------------------------------------------------------ sizes

def parse_size_mb(text: str) -> int:
    """PBS size (`10gb`, `512mb`, `100kb`, `1tb`, bytes) -> MiB for sbatch --mem."""
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)(b|w)?", text.strip().lower())
    if not m:
        raise PbsError(f"illegal attribute or resource value for mem: {text}", EXIT_USAGE)
    value, unit = int(m.group(1)), m.group(2)
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
    if m.group(3) == "w":
        factor *= 8
    return max(1, -(-value * factor // (1 << 20)))


# ========================================================================== qsub

# Resources qsub translates: select (chunk count, ncpus, mpiprocs, mem),
# walltime, place (excl), mem, ncpus.  Every other resource (ngpus,
# filesystems, system, ...) is accepted and only recorded in Resource_List:
# it means nothing on this machine.


@dataclass
class QsubRequest:
    """What qsub was asked for, after directives and options are merged."""

    name: str | None = None
    queue: str | None = None
    account: str | None = None
    project: str | None = None
    output: str | None = None
    error: str | None = None
    join: str = "n"
    shell: str | None = None
    hold: bool = False
    rerunable: bool | None = None
    export_all: bool = False
    variables: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    depend: str | None = None
    quiet: bool = False  # -z: print no job id
    mail_points: str = "a"


QSUB_OPTSTRING = "a:A:c:C:e:fhIj:J:k:l:m:M:N:o:p:P:q:r:R:S:u:v:VW:XzG"
QSUB_UNSUPPORTED = {
    "-a": "deferred execution",
    "-c": "checkpointing",
    "-C": "a directive prefix",
    "-I": "interactive jobs",
    "-J": "array jobs",
    "-X": "X11 forwarding",
    "-G": "GUI jobs",
    "-R": "remove-file options",
    "-u": "a user list",
    "-f": "foreground qsub",
}


def _split_resource_list(text: str) -> list[tuple[str, str]]:
    """`walltime=1:00:00,select=2:ncpus=4` -> pairs (select keeps its colons)."""
    pairs: list[tuple[str, str]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise PbsError(f"illegal -l value: {item}", EXIT_USAGE)
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip()))
    return pairs


def _parse_variables(text: str, env: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" in item:
            key, value = item.split("=", 1)
            out[key] = value.strip("'\"")
        else:
            out[item] = env.get(item, "")
    return out


def apply_qsub_options(req: QsubRequest, argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """Merge options into `req` (later ones win); return the remaining arguments."""
    try:
        opts, rest = getopt.getopt(list(argv), QSUB_OPTSTRING)
    except getopt.GetoptError as exc:
        raise PbsError(f"{exc}\nusage: qsub [options] [script]", EXIT_USAGE) from exc
    for opt, val in opts:
        if opt in QSUB_UNSUPPORTED:
            raise PbsError(f"option {opt} ({QSUB_UNSUPPORTED[opt]}) is not supported by this "
                           "PBS stand-in", EXIT_USAGE)
        if opt == "-A":
            req.account = val
        elif opt == "-e":
            req.error = val
        elif opt == "-h":
            req.hold = True
        elif opt == "-j":
            req.join = val
        elif opt == "-k":
            pass  # keep files: output goes straight to its path here anyway
        elif opt == "-l":
            for key, value in _split_resource_list(val):
                req.resources[key] = value
        elif opt == "-m":
            req.mail_points = val
        elif opt == "-M":
            pass  # no mail is sent from the test machines
        elif opt == "-N":
            req.name = val
        elif opt == "-o":
            req.output = val
        elif opt == "-p":
            pass  # priority: recorded by nobody, Slurm decides
        elif opt == "-P":
            req.project = val
        elif opt == "-q":
            req.queue = val
        elif opt == "-r":
            req.rerunable = val.lower().startswith("y")
        elif opt == "-S":
            req.shell = val.split(",")[0].split("@")[0]
        elif opt == "-v":
            req.variables.update(_parse_variables(val, env))
        elif opt == "-V":
            req.export_all = True
        elif opt == "-W":
            for key, value in _split_resource_list(val):
                if key == "depend":
                    req.depend = value
                else:
                    raise PbsError(f"-W {key}=... is not supported by this PBS stand-in",
                                   EXIT_USAGE)
        elif opt == "-z":
            req.quiet = True
    return rest


def script_directives(script: str) -> list[str]:
    """The `#PBS` directive arguments, read up to the first executable line."""
    args: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#PBS"):
            try:
                args.extend(shlex.split(stripped[4:], comments=False))
            except ValueError as exc:
                raise PbsError(f"cannot parse directive {stripped!r}: {exc}", EXIT_USAGE) from exc
        elif not stripped.startswith("#"):
            break
    return args


@dataclass
class Chunks:
    count: int
    ncpus: int
    mpiprocs: int
    mem_mb: int | None
    select: str


def parse_select(resources: dict[str, str]) -> Chunks:
    """`-l select=N:ncpus=C:mpiprocs=M[:...]` (or bare `ncpus=`) -> one chunk shape."""
    select = resources.get("select")
    if select is None:
        ncpus = int(resources.get("ncpus", "1"))
        mem = resources.get("mem")
        spec = f"1:ncpus={ncpus}" + (f":mem={mem}" if mem else "")
        return Chunks(1, ncpus, 1 if ncpus > 0 else 0, parse_size_mb(mem) if mem else None, spec)
    if "nodes" in resources:
        raise PbsError("-l nodes= (old-style) together with select is not allowed", EXIT_USAGE)
    pieces = select.split("+")
    if len(set(pieces)) != 1:
        raise PbsError("select with different chunk shapes ('+') is not supported by this "
                       "PBS stand-in", EXIT_USAGE)
    fields = pieces[0].split(":")
    count = 1
    if fields and re.fullmatch(r"\d+", fields[0]):
        count = int(fields.pop(0))
    count *= len(pieces)
    values: dict[str, str] = {}
    for f in fields:
        if "=" not in f:
            raise PbsError(f"illegal select chunk element: {f}", EXIT_USAGE)
        key, value = f.split("=", 1)
        values[key] = value
    try:
        ncpus = int(values.get("ncpus", "1"))
        mpiprocs = int(values.get("mpiprocs", "1" if ncpus > 0 else "0"))
    except ValueError as exc:
        raise PbsError(f"illegal select value: {select}", EXIT_USAGE) from exc
    mem = values.get("mem")
    return Chunks(count, ncpus, mpiprocs, parse_size_mb(mem) if mem else None, select)


def _strip_host(path: str) -> str:
    """PBS paths may be `host:/path`; here every host shares the file system."""
    if ":" in path and not path.startswith("/"):
        return path.split(":", 1)[1]
    return path


def _out_path(path: str | None, workdir: str, default_name: str) -> str:
    if path is None:
        return os.path.join(workdir, default_name)
    path = _strip_host(path)
    if not os.path.isabs(path):
        path = os.path.join(workdir, path)
    if os.path.isdir(path):
        path = os.path.join(path, default_name)
    return path


def _b64_env(pairs: dict[str, str]) -> str:
    blob = b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs.items())
    return base64.b64encode(blob).decode()


WRAPPER = r"""#!/bin/bash
# Job wrapper written by the PBS Pro CLI TEST STAND-IN (qsub) on top of Slurm.
# It gives the job script the environment PBS Pro gives a batch job, then
# runs it and cleans up.
set -u
name=@NAME@
queue=@QUEUE@
export_all=@EXPORT_ALL@
jobid="${SLURM_JOB_ID}."@SERVER@
me="$(id -un)"
home="$(getent passwd "$me" | cut -d: -f6)"
login_shell="$(getent passwd "$me" | cut -d: -f7)"
[ -n "$home" ] || home=/
jobroot="$(mktemp -d "/tmp/pbs.${jobid}.XXXXXX")" || exit 1
mkdir -m 0700 "$jobroot/tmp" "$jobroot/aux"
cleanup() { rm -rf "$jobroot"; }
# On qdel (SIGTERM) clean up, then die of the signal as the job would.
trap 'cleanup; trap - TERM; kill -TERM $$' TERM
trap 'cleanup; trap - INT; kill -INT $$' INT

# PBS_NODEFILE: each host of the allocation, once per MPI rank slot (mpiprocs).
nodefile="$jobroot/aux/${jobid}"
: >"$nodefile"
for host in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
  for _ in $(seq 1 @MPIPROCS@); do echo "$host" >>"$nodefile"; done
done

printf '%s' '@SCRIPT@' | base64 -d >"$jobroot/aux/${jobid}.SC"
chmod 0700 "$jobroot/aux/${jobid}.SC"

declare -a envs=()
if [ "$export_all" = 1 ]; then
  while IFS= read -r -d '' kv; do envs+=("$kv"); done < <(env -0)
else
  envs+=("HOME=$home" "USER=$me" "LOGNAME=$me" "SHELL=${login_shell:-/bin/sh}"
         "PATH=/usr/local/bin:/usr/bin:/bin")
  # Not PBS: the Slurm allocation underneath stays visible (SLURM_*), so
  # srun and Open MPI's mpiexec see the job they run in.
  while IFS= read -r -d '' kv; do
    case "$kv" in SLURM_*) envs+=("$kv") ;; esac
  done < <(env -0)
fi
while IFS= read -r -d '' kv; do envs+=("$kv"); done < <(printf '%s' '@VARS@' | base64 -d)
envs+=("PBS_JOBID=$jobid" "PBS_JOBNAME=$name" "PBS_QUEUE=$queue"
       "PBS_NODEFILE=$nodefile" "PBS_ENVIRONMENT=PBS_BATCH" "PBS_JOBDIR=$home"
       "PBS_NODENUM=0" "PBS_TASKNUM=1" "TMPDIR=$jobroot/tmp"
       "NCPUS=@NCPUS@" "OMP_NUM_THREADS=@NCPUS@")

cd "$home" 2>/dev/null || cd /
env -i "${envs[@]}" @SHELL@ "$jobroot/aux/${jobid}.SC"
rc=$?
cleanup
exit "$rc"
"""


def build_wrapper(*, name: str, server: str, queue: str, script: str, shell: str,
                  mpiprocs: int, ncpus: int, export_all: bool,
                  variables: dict[str, str]) -> str:
    subs = {
        "@NAME@": shlex.quote(name),
        "@SERVER@": shlex.quote(server),
        "@QUEUE@": shlex.quote(queue),
        "@MPIPROCS@": str(max(1, mpiprocs)),
        "@NCPUS@": str(max(1, ncpus)),
        "@SCRIPT@": base64.b64encode(script.encode("utf-8", "surrogateescape")).decode(),
        "@EXPORT_ALL@": "1" if export_all else "0",
        "@VARS@": _b64_env(variables),
        "@SHELL@": shlex.quote(shell),
    }
    return re.sub(r"@[A-Z_]+@", lambda m: subs[m.group(0)], WRAPPER)


def default_queue() -> str:
    out = run_slurm(["sinfo", "-h", "-o", "%P"])
    for line in out.stdout.split():
        if line.endswith("*"):
            return line[:-1]
    return "workq"


def qsub_main(argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    req = QsubRequest()
    # Command-line options win over directives: read the script first.
    try:
        _, rest = getopt.getopt(list(argv), QSUB_OPTSTRING)
    except getopt.GetoptError as exc:
        raise PbsError(f"{exc}\nusage: qsub [options] [script]", EXIT_USAGE) from exc
    if rest and rest[0] == "--":
        raise PbsError("qsub -- command [args] is not supported by this PBS stand-in; "
                       "give a script", EXIT_USAGE)
    if len(rest) > 1:
        raise PbsError(f"options must come before the script; got {shlex.join(rest)}",
                       EXIT_USAGE)
    if rest and rest[0] != "-":
        script_path = rest[0]
        try:
            with open(script_path, encoding="utf-8", errors="surrogateescape") as f:
                script = f.read()
        except OSError as exc:
            raise PbsError(f"script file:: {script_path}: {exc.strerror}", EXIT_USAGE) from exc
        default_name = os.path.basename(script_path)
    else:
        script = sys.stdin.read()
        default_name = "STDIN"
    apply_qsub_options(req, script_directives(script), env)
    apply_qsub_options(req, argv, env)

    server = server_name()
    workdir = os.getcwd()
    name = req.name or default_name
    queue = req.queue or default_queue()
    chunks = parse_select(req.resources)
    walltime = parse_walltime(req.resources["walltime"]) if "walltime" in req.resources else None
    place = req.resources.get("place", "free")

    sbatch = ["sbatch", "--parsable", "--export=ALL", f"--job-name={name}",
              f"--chdir={workdir}", f"--nodes={chunks.count}",
              f"--ntasks-per-node={max(1, chunks.mpiprocs)}",
              f"--cpus-per-task={max(1, chunks.ncpus // max(1, chunks.mpiprocs))}"]
    if req.queue:
        sbatch.append(f"--partition={req.queue}")
    if req.account:
        sbatch.append(f"--account={req.account}")
    if walltime is not None:
        sbatch.append(f"--time={slurm_time(walltime)}")
    if chunks.mem_mb is not None:
        sbatch.append(f"--mem={chunks.mem_mb}M")
    if "excl" in place.split(":"):
        sbatch.append("--exclusive")
    if req.hold:
        sbatch.append("--hold")
    if req.rerunable is not None:
        sbatch.append("--requeue" if req.rerunable else "--no-requeue")
    if req.depend:
        kind, _, ids = req.depend.partition(":")
        sids = ":".join(slurm_id(i) for i in ids.split(":") if i)
        sbatch.append(f"--dependency={kind}:{sids}")
    out = _out_path(req.output, workdir, f"{name}.o%j")
    err = _out_path(req.error, workdir, f"{name}.e%j")
    if req.join.startswith("oe"):
        err = out
    elif req.join.startswith("eo"):
        out = err
    sbatch += [f"--output={out}", f"--error={err}"]

    resource_list: dict[str, Any] = {
        "ncpus": chunks.count * chunks.ncpus,
        "nodect": chunks.count,
        "place": place,
        "select": chunks.select,
    }
    if walltime is not None:
        resource_list["walltime"] = hms(walltime)
    for key, value in req.resources.items():
        resource_list.setdefault(key, value)
    meta = {"q": queue, "rl": resource_list, "j": req.join, "m": req.mail_points,
            "P": req.project or "_pbs_project_default",
            "r": "False" if req.rerunable is False else "True",
            "h": "u" if req.hold else "n",
            "a": shlex.join(argv)}
    comment = COMMENT_TAG + json.dumps(meta, separators=(",", ":"))
    if len(comment) > 1000:
        meta["a"] = meta["a"][:200] + " ..."
        comment = COMMENT_TAG + json.dumps(meta, separators=(",", ":"))
    sbatch.append(f"--comment={comment}")

    variables = {
        "PBS_O_HOME": env.get("HOME", ""),
        "PBS_O_HOST": socket.gethostname(),
        "PBS_O_LANG": env.get("LANG", ""),
        "PBS_O_LOGNAME": env.get("LOGNAME", env.get("USER", pwd.getpwuid(os.getuid()).pw_name)),
        "PBS_O_MAIL": env.get("MAIL", ""),
        "PBS_O_PATH": env.get("PATH", ""),
        "PBS_O_QUEUE": queue,
        "PBS_O_SHELL": env.get("SHELL", ""),
        "PBS_O_SYSTEM": os.uname().sysname,
        "PBS_O_WORKDIR": workdir,
    }
    variables.update(req.variables)
    shell = req.shell or _shebang(script) or pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    wrapper = build_wrapper(name=name, server=server, queue=queue, script=script, shell=shell,
                            mpiprocs=chunks.mpiprocs, ncpus=chunks.ncpus,
                            export_all=req.export_all, variables=variables)
    proc = run_slurm(sbatch, stdin=wrapper)
    if proc.returncode != 0:
        raise _sbatch_error(proc.stderr.strip() or proc.stdout.strip())
    sid = proc.stdout.strip().split(";")[0]
    if not sid.isdigit():
        raise PbsError(f"unexpected answer from sbatch: {proc.stdout.strip()!r}")
    if not req.quiet:
        print(pbs_id(sid, server))
    return 0


def _shebang(script: str) -> str | None:
    first = script.splitlines()[0] if script else ""
    if first.startswith("#!"):
        return first[2:].strip().split()[0] if first[2:].strip() else None
    return None


def _sbatch_error(message: str) -> PbsError:
    slurm_msg = message.replace("sbatch: error: ", "").replace("\n", "; ")
    lower = message.lower()
    if "invalid partition" in lower:
        return PbsError(f"Unknown queue (slurm: {slurm_msg})", EXIT_UNKNOWN_QUEUE)
    if ("node configuration is not available" in lower or "more processors" in lower
            or "node count specification" in lower or "time limit" in lower
            or "memory specification" in lower):
        return PbsError(f"Job violates queue and/or server resource limits (slurm: {slurm_msg})",
                        EXIT_RESOURCE_LIMIT)
    return PbsError(f"job submission failed (slurm: {slurm_msg})")


# ========================================================================= qstat

def slurm_jobs() -> list[dict[str, Any]]:
    """Every job slurmctld still knows (running, queued, and finished within MinJobAge)."""
    proc = run_slurm(["squeue", "--json"])
    if proc.returncode != 0:
        raise PbsError(f"cannot connect to server (slurm: {proc.stderr.strip()})", 15)
    return list(json.loads(proc.stdout).get("jobs", []))


FINISHED_SLURM = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                  "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"}
HELD_REASONS = {"JobHeldUser", "JobHeldAdmin", "held"}


def pbs_state(job: dict[str, Any]) -> str:
    """Slurm job state -> PBS Pro job_state letter."""
    state = str(job.get("job_state", "")).upper()
    if "COMPLETING" in state or "STAGE_OUT" in state:
        return "E"
    if state in FINISHED_SLURM:
        return "F"
    if state in ("PENDING", "REQUEUED", "CONFIGURING", "REQUEUE_FED"):
        return "H" if job.get("state_reason") in HELD_REASONS else "Q"
    if state in ("REQUEUE_HOLD", "SPECIAL_EXIT"):
        return "H"
    if state in ("SUSPENDED", "STOPPED"):
        return "S"
    if state in ("RUNNING", "RESIZING", "SIGNALING"):
        return "R"
    return "Q"


SUBSTATE = {"Q": 10, "H": 20, "R": 42, "S": 43, "E": 50}


def _substate(job: dict[str, Any], letter: str) -> int:
    if letter != "F":
        return SUBSTATE.get(letter, 10)
    state = str(job.get("job_state", "")).upper()
    if state == "CANCELLED":
        return 91  # terminated (deleted)
    if state == "COMPLETED":
        return 92  # finished
    return 93  # failed


def _meta(job: dict[str, Any]) -> dict[str, Any]:
    comment = str(job.get("comment") or "")
    if comment.startswith(COMMENT_TAG):
        try:
            meta = json.loads(comment[len(COMMENT_TAG):])
            if isinstance(meta, dict):
                return meta
        except ValueError:
            pass
    return {}


def _ran(job: dict[str, Any]) -> bool:
    """Whether the job got its allocation (a cancelled queued job has a start_time too)."""
    return bool(job.get("batch_host")) and bool(job.get("start_time"))


def _exit_status(job: dict[str, Any]) -> int | None:
    if not _ran(job):
        return None  # never ran
    if str(job.get("job_state", "")).upper() == "TIMEOUT":
        return -29  # JOB_EXEC_KILL_WALLTIME
    raw = int(job.get("exit_code") or 0)
    if raw & 0x7F:
        return 256 + (raw & 0x7F)  # killed by a signal, as PBS reports it
    return (raw >> 8) & 0xFF


def _hosts(job: dict[str, Any]) -> list[str]:
    res = job.get("job_resources") or {}
    names = [n.get("nodename") for n in res.get("allocated_nodes") or [] if n.get("nodename")]
    return names or ([job["batch_host"]] if job.get("batch_host") else [])


def pbs_job(job: dict[str, Any], server: str, now: int) -> dict[str, Any]:
    """One Slurm job (from `squeue --json`) as PBS Pro's `qstat -f` attributes."""
    meta = _meta(job)
    letter = pbs_state(job)
    owner = f"{job.get('user_name', '')}@{server}"
    submit = int(job.get("submit_time") or 0)
    start = int(job.get("start_time") or 0)
    end = int(job.get("end_time") or 0)
    cpus = int(job.get("cpus") or 1)
    nodes = int(job.get("node_count") or 1)
    rl: dict[str, Any] = dict(meta.get("rl") or {})
    if not rl:
        rl = {"ncpus": cpus, "nodect": nodes, "place": "free",
              "select": f"{nodes}:ncpus={max(1, cpus // max(1, nodes))}"}
        limit = job.get("time_limit")
        if isinstance(limit, int) and limit > 0:
            rl["walltime"] = hms(limit * 60)
    out: dict[str, Any] = {
        "Job_Name": job.get("name", ""),
        "Job_Owner": owner,
    }
    started = _ran(job) and letter in ("R", "E", "F", "S")
    if started:
        stop = end if letter == "F" and end else now
        out["resources_used"] = {"ncpus": cpus, "walltime": hms(stop - start)}
    out["job_state"] = letter
    out["queue"] = job.get("partition") or meta.get("q", "")
    out["server"] = server
    out["Checkpoint"] = "u"
    out["ctime"] = ctime(submit)
    out["Error_Path"] = f"{server}:{job.get('standard_error') or job.get('standard_output') or ''}"
    hosts = _hosts(job)
    if started and hosts:
        per = max(1, cpus // max(1, len(hosts)))
        out["exec_host"] = "+".join(f"{h}/0*{per}" if per > 1 else f"{h}/0" for h in hosts)
        out["exec_vnode"] = "+".join(f"({h}:ncpus={per})" for h in hosts)
    out["Hold_Types"] = "u" if letter == "H" else "n"
    out["Join_Path"] = meta.get("j", "n")
    out["Keep_Files"] = "n"
    out["Mail_Points"] = meta.get("m", "a")
    out["mtime"] = ctime(end if letter == "F" and end else now)
    out["Output_Path"] = f"{server}:{job.get('standard_output') or ''}"
    out["Priority"] = 0
    out["qtime"] = ctime(submit)
    out["Rerunable"] = meta.get("r", "True")
    out["Resource_List"] = rl
    if started:
        out["stime"] = ctime(start)
    if letter == "F" and end:
        out["obittime"] = ctime(end)
    out["substate"] = _substate(job, letter)
    workdir = job.get("current_working_directory") or ""
    out["Variable_List"] = {"PBS_O_QUEUE": meta.get("q", out["queue"]),
                            "PBS_O_WORKDIR": workdir,
                            "PBS_O_HOST": server}
    reason = job.get("state_reason") or "None"
    if letter in ("Q", "H"):
        out["comment"] = f"Not Running: {reason} (slurm)"
    elif started:
        where = "+".join(f"({h}:ncpus={max(1, cpus // max(1, len(hosts)))})" for h in hosts)
        tail = " and finished" if letter == "F" else ""
        out["comment"] = f"Job run at {ctime(start)} on {where}{tail}"
    else:
        out["comment"] = f"Job deleted before it ran ({str(job.get('job_state', '')).lower()})"
    out["etime"] = ctime(int(job.get("eligible_time") or submit))
    out["run_count"] = 1 if started else 0
    status = _exit_status(job) if letter == "F" else None
    if status is not None:
        out["Exit_status"] = status
    out["Submit_arguments"] = meta.get("a", "")
    if letter == "F" and end:
        out["history_timestamp"] = end
    out["project"] = meta.get("P", "_pbs_project_default")
    out["Submit_Host"] = server
    return out


def qstat_json(jobs: dict[str, dict[str, Any]], server: str, now: int) -> str:
    """PBS Pro's `qstat -f -F json` document (4-space indent, no space after colons)."""
    doc = {"timestamp": now, "pbs_version": PBS_VERSION, "pbs_server": server, "Jobs": jobs}
    if not jobs:
        del doc["Jobs"]
    return json.dumps(doc, indent=4, separators=(",", ":"))


def qstat_full_text(jobs: dict[str, dict[str, Any]]) -> str:
    """PBS Pro's `qstat -f` text."""
    lines: list[str] = []
    for job_id, attrs in jobs.items():
        lines.append(f"Job Id: {job_id}")
        for key, value in attrs.items():
            if isinstance(value, dict):
                if key == "Variable_List":
                    joined = ",".join(f"{k}={v}" for k, v in value.items())
                    lines.append(f"    {key} = {joined}")
                else:
                    lines.extend(f"    {key}.{k} = {v}" for k, v in value.items())
            else:
                lines.append(f"    {key} = {value}")
        lines.append("")
    return "\n".join(lines)


def qstat_table(jobs: dict[str, dict[str, Any]]) -> str:
    """PBS Pro's default `qstat` table."""
    rows = ["Job id            Name             User              Time Use S Queue",
            "----------------  ---------------- ----------------  -------- - -----"]
    for job_id, attrs in jobs.items():
        used = attrs.get("resources_used", {}).get("cput", "0")
        rows.append(f"{job_id[:16]:<17} {str(attrs['Job_Name'])[:16]:<16} "
                    f"{str(attrs['Job_Owner']).split('@')[0][:16]:<16}  "
                    f"{used:>8} {attrs['job_state']} {attrs['queue']}")
    return "\n".join(rows)


QSTAT_UNSUPPORTED = {"-B": "server status", "-Q": "queue status", "-q": "queue status",
                     "-a": "alternate format", "-n": "node lists", "-s": "comments",
                     "-T": "estimated start times", "-t": "subjobs", "-J": "array jobs",
                     "-p": "percentage completion", "-G": "sizes in GB", "-M": "sizes in MW",
                     "-i": "queued-only listing", "-r": "running-only listing",
                     "-1": "one-line output", "-E": "grouping", "-l": "long form"}


def qstat_main(argv: Sequence[str], jobs_source: Iterable[dict[str, Any]] | None = None,
               now: int | None = None, out: Any = None, err: Any = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        opts, ids = getopt.getopt(list(argv), "fF:xHwu:BQqanstTJpGMir1El")
    except getopt.GetoptError as exc:
        raise PbsError(f"{exc}\nusage: qstat [-f [-F json]] [-x] [-u user] [job_id ...]",
                       EXIT_USAGE) from exc
    full = history = False
    fmt = None
    users: set[str] | None = None
    for opt, val in opts:
        if opt in QSTAT_UNSUPPORTED:
            raise PbsError(f"option {opt} ({QSTAT_UNSUPPORTED[opt]}) is not supported by this "
                           "PBS stand-in", EXIT_USAGE)
        if opt == "-f":
            full = True
        elif opt == "-F":
            fmt = val.lower()
            if fmt != "json":
                raise PbsError(f"-F {val} is not supported by this PBS stand-in (json only)",
                               EXIT_USAGE)
        elif opt in ("-x", "-H"):
            history = True
        elif opt == "-u":
            users = {u.split("@")[0] for u in val.split(",")}
    if fmt and not full:
        raise PbsError("-F is only valid with -f", EXIT_USAGE)

    server = server_name()
    now = int(time.time()) if now is None else now
    by_id = {str(j["job_id"]): j for j in (slurm_jobs() if jobs_source is None else jobs_source)}
    selected: dict[str, dict[str, Any]] = {}
    code = 0
    if ids:
        for given in ids:
            try:
                sid = slurm_id(given)
            except PbsError:
                print(f"qstat: illegally formed job identifier: {given}", file=err)
                code = EXIT_UNKNOWN_JOB
                continue
            job = by_id.get(sid)
            if job is None:
                print(f"qstat: Unknown Job Id {given}", file=err)
                code = EXIT_UNKNOWN_JOB
                continue
            if pbs_state(job) == "F" and not history:
                print(f"qstat: {given} Job has finished, use -x or -H to obtain historical "
                      "job information", file=err)
                code = EXIT_FINISHED_JOB
                continue
            selected[pbs_id(sid, server)] = pbs_job(job, server, now)
    else:
        for sid in sorted(by_id, key=int):
            job = by_id[sid]
            if users is not None and job.get("user_name") not in users:
                continue
            if pbs_state(job) == "F" and not history:
                continue
            selected[pbs_id(sid, server)] = pbs_job(job, server, now)

    if fmt == "json":
        print(qstat_json(selected, server, now), file=out)
    elif full:
        if selected:
            print(qstat_full_text(selected), file=out)
    elif selected:
        print(qstat_table(selected), file=out)
    return code


# ========================================================================== qdel

def qdel_main(argv: Sequence[str], err: Any = None) -> int:
    err = err or sys.stderr
    try:
        opts, ids = getopt.getopt(list(argv), "W:xm:")
    except getopt.GetoptError as exc:
        raise PbsError(f"{exc}\nusage: qdel [-W force] [-x] job_id ...", EXIT_USAGE) from exc
    if not ids:
        raise PbsError("usage: qdel [-W force] [-x] job_id ...", EXIT_USAGE)
    history = any(opt == "-x" for opt, _ in opts)
    by_id = {str(j["job_id"]): j for j in slurm_jobs()}
    code = 0
    to_cancel: list[str] = []
    for given in ids:
        try:
            sid = slurm_id(given)
        except PbsError:
            print(f"qdel: illegally formed job identifier: {given}", file=err)
            code = EXIT_UNKNOWN_JOB
            continue
        job = by_id.get(sid)
        if job is None:
            print(f"qdel: Unknown Job Id {given}", file=err)
            code = EXIT_UNKNOWN_JOB
        elif pbs_state(job) == "F":
            if not history:
                print(f"qdel: Job has finished {given}", file=err)
                code = EXIT_FINISHED_JOB
        else:
            to_cancel.append(sid)
    if to_cancel:
        proc = run_slurm(["scancel", *to_cancel])
        if proc.returncode != 0:
            print(f"qdel: {proc.stderr.strip()}", file=err)
            code = code or 1
    return code


# ========================================================================= entry

def main(command: str, argv: Sequence[str]) -> NoReturn:
    handlers = {"qsub": qsub_main, "qstat": qstat_main, "qdel": qdel_main}
    try:
        code = handlers[command](argv)
    except PbsError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        code = exc.code
    sys.exit(code)

