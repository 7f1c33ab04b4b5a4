"""The login node's half of ``gcbundle doctor``: can this login node run gcbundle's workflows?

``site_report`` runs every check in this process and returns a JSON-able
report: the versions of this side, and a list of checks, each ``ok``,
``warn`` or ``fail`` with what was found and, when it is not ``ok``, how to
fix it. It runs inside the ``doctor`` task (a short Globus Compute task) and
in ``gcbundle doctor --local`` (the Ansible role's last task, on the login
node itself).

With a site profile it also builds the live Config as the driver would (the
address functions run here, on the login node), checks that the scheduler
commands its provider calls exist and answer, and runs the worker prelude
plus the profile's ``worker_init`` in a subshell with a bare environment, as
a batch job starts, to see which Python and Parsl the workers would get.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import profiles, schedulers
from bundle.errors import GcbundleError, HomeError
from bundle.prelude import worker_prelude
from bundle.versions import local_versions
from login_node import driverenv, pitfalls, reachprobe
from login_node.pitfalls import version_tuple
from login_node.rundir import Home
from login_node.siteconfig import SiteDefaults, render_site
from login_node.spawn import driver_env

#: Seconds the worker_init subshell and each scheduler command may take.
WORKER_INIT_TIMEOUT = 60
COMMAND_TIMEOUT = 20
#: Free space below which $GCBUNDLE_HOME is a warning (bundles, outputs, logs live there).
LOW_SPACE = 1 << 30

MARK = "gcbundle-doctor"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def site_report(home: Home, site: dict[str, Any] | None = None, probe: bool = False) -> dict[str, Any]:
    """Every check, for ``home`` and, if given, a site profile spec (``Profile.to_spec``);
    with ``probe``, also one short batch job per executor that checks a compute node
    reaches the executor's address (``login_node.reachprobe``)."""
    versions = local_versions()
    checks = [_versions(versions), _home(home)]
    built: _Built | None = None
    if site:
        built = _build(home, site)
        checks.append(built.check)
    checks.append(_scheduler(built))
    checks.append(_launchers(built))
    if built is not None and built.config is not None:
        checks += built.address_checks
    driver = _driver_environment(home, site, built)
    if driver.check is not None:
        checks.append(driver.check)
    checks.append(_worker_init(home, built, driver.versions or versions, driver))
    if probe and built is not None and built.config is not None:
        checks += _reach(home, built, driver)
    found = [c.to_json() for c in checks] + _pitfalls(home, built, driver.versions or versions, driver)
    return {
        "host": socket.gethostname(),
        "user": _user(),
        "python": sys.executable,
        "home": str(home.root),
        "site": (site or {}).get("name"),
        "versions": versions,
        "driver_versions": driver.versions or versions,
        "worker_versions": driver.workers,
        "checks": found,
        "ok": not any(c["status"] == "fail" for c in found),
    }


class _Driver:
    """The driver's environment: the endpoint's own (no driver_init), or the user's."""

    def __init__(self) -> None:
        self.init = ""
        self.check: Check | None = None
        self.versions: dict[str, str] = {}
        self.bindir = str(Path(sys.executable).parent)
        self.workers: dict[str, str] = {}
        self.where = "the endpoint's environment"


def _driver_environment(home: Home, site: dict[str, Any] | None, built: _Built | None) -> _Driver:
    """Run driver_init and the launch's preflight, as a launch would: which Python,
    Parsl and gcbundle the driver would run on, or why it cannot."""
    out = _Driver()
    init = ""
    if site and built is not None and built.check.status != "fail":
        try:
            profile, params = profiles.Profile.from_spec(site)
            init = profile.driver_options({**SiteDefaults.read(home).profile_params, **params})["driver_init"]
        except GcbundleError as exc:
            out.check = Check("driver environment", "fail", exc.message, exc.hint or "")
            return out
    init = init or SiteDefaults.read(home).driver_init
    if not init.strip():
        return out
    out.init, out.where = init, "the driver's environment (driver_init)"
    paths = home.run("000000000000")
    rendered = built.rendered if built is not None and built.rendered else None
    env = driverenv.env_for(paths, driver_env(paths))
    try:
        found = driverenv.preflight(paths, init, rendered, env, driverenv.ship(home))
    except GcbundleError as exc:
        out.check = Check("driver environment", "fail", exc.message, exc.hint or "")
        return out
    out.versions = {name: str(found.get(name)) for name in ("gcbundle", "python", "parsl")}
    out.bindir = str(Path(str(found.get("executable"))).parent)
    out.check = Check(
        "driver environment",
        "ok",
        f"driver_init gives Python {found.get('python')} ({found.get('executable')}), Parsl {found.get('parsl')}, "
        f"gcbundle {found.get('gcbundle')} (shipped with the launch)",
    )
    return out


def _pitfalls(home: Home, built: _Built | None, versions: dict[str, str], driver: _Driver) -> list[dict[str, str]]:
    """The known ways a queued run fails (``login_node.pitfalls``), for this site profile."""
    from parsl.providers.cluster_provider import ClusterProvider  # Parsl is heavy: only for a site's checks

    config = built.config if built is not None else None
    providers = [getattr(e, "provider", None) for e in (config.executors if config is not None else [])]
    providers = [p for p in providers if p is not None]
    batch = [p for p in providers if isinstance(p, ClusterProvider)]
    out = [
        pitfalls.pbs_job_states(versions.get("parsl", "absent"), [type(p).__name__ for p in providers], driver.where),
        pitfalls.endpoint_version(local_versions().get("globus-compute-endpoint", "absent")),
        pitfalls.run_dir_shared(home.root, batch=bool(batch)),
        pitfalls.idle_timers(os.environ.get("GLOBUS_COMPUTE_ENDPOINT_DIR")),
    ]
    if batch:
        base = home.root / ".doctor" if (home.root / ".doctor").is_dir() else Path(tempfile.gettempdir())
        prelude = SiteDefaults.read(home).prelude(
            home.root / "runs" / "doctor", "doctor", driver_init=driver.init, bindir=driver.bindir
        )
        scheduler = schedulers.PROVIDER_SCHEDULER.get(type(batch[0]).__name__)
        # Only the TMPDIR matters here: the prelude's `cd` to a run that does not exist is cut off.
        prelude = "\n".join(line for line in prelude.splitlines() if not line.startswith("cd ")) + "\n"
        launcher = type(getattr(batch[0], "launcher", None)).__name__
        worker_init = getattr(batch[0], "worker_init", "") or ""
        out.append(pitfalls.worker_tmpdir(prelude, worker_init, scheduler, launcher, base))
    return [c for c in out if c is not None]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _versions(versions: dict[str, str]) -> Check:
    detail = ", ".join(f"{k} {v}" for k, v in versions.items()) + f" ({sys.executable})"
    missing = [k for k in ("parsl", "globus-compute-endpoint") if versions.get(k) == "absent"]
    if missing:
        return Check(
            "login-node software",
            "fail",
            detail + f"; {', '.join(missing)} not installed",
            f"install them in this environment: {sys.executable} -m pip install {' '.join(missing)} "
            "(or re-run the Ansible playbook)",
        )
    return Check("login-node software", "ok", detail)


def _home(home: Home) -> Check:
    root = home.root
    try:
        home.ensure()
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-", delete=True) as f:
            f.write(b"x")
            f.flush()
    except (OSError, HomeError) as exc:
        why = exc.message if isinstance(exc, HomeError) else f"{root} is not writable: {exc.strerror or exc}"
        return Check(
            "GCBUNDLE_HOME",
            "fail",
            why,
            "set GCBUNDLE_HOME to a writable directory on a file system the compute nodes mount "
            "(the Ansible role's gcbundle_site_home)",
        )
    usage = shutil.disk_usage(root)
    detail = f"{root} writable, {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"
    if usage.free < LOW_SPACE:
        return Check(
            "GCBUNDLE_HOME",
            "warn",
            detail,
            "free space there (`gcbundle prune` removes finished runs), or move GCBUNDLE_HOME to a bigger file system",
        )
    return Check("GCBUNDLE_HOME", "ok", detail)


class _Built:
    def __init__(self) -> None:
        self.check = Check("site profile", "ok", "")
        self.config: Any = None
        self.rendered: dict[str, Any] = {}
        self.address_checks: list[Check] = []


def _build(home: Home, site: dict[str, Any]) -> _Built:
    """The live Config, as the driver builds it; address functions run here, each checked."""
    out = _Built()
    try:
        profile, out.rendered = render_site(home, site)
    except GcbundleError as exc:
        out.check = Check("site profile", "fail", str(exc.message), exc.hint or "fix the profile or its --set values")
        return out

    def factory(kind: str, target: Any, kwargs: dict[str, Any], where: str) -> Any:
        if kind != "address":
            return target(**kwargs)
        call = f"{target.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        try:
            value = target(**kwargs)
        except Exception as exc:  # noqa: BLE001 - reported as a check
            failed = Check(f"address of {_owner(where)}", "fail", f"{call} failed here: {exc}", _address_fix(kwargs))
            out.address_checks.append(failed)
            return None
        out.address_checks.append(_address_check(where, call, value, kwargs))
        return value

    try:
        out.config = profiles.build_config(out.rendered, factory=factory)
    except GcbundleError as exc:
        out.check = Check("site profile", "fail", str(exc.message), exc.hint or "fix the profile")
        return out
    except Exception as exc:  # noqa: BLE001 - what Parsl says when it refuses a value
        refused = f"{type(exc).__name__}: {exc}"
        out.check = Check("site profile", "fail", refused, "fix the profile's values (`gcbundle render` shows them)")
        return out
    names = [f"{type(e).__name__}/{type(getattr(e, 'provider', None)).__name__}" for e in out.config.executors]
    out.check = Check("site profile", "ok", f"{profile.name}: {', '.join(names)} built")
    return out


def _owner(where: str) -> str:
    """``executors[0]`` for ``executors[0].address``."""
    return where.rsplit(".", 1)[0] if where.endswith(".address") else where


#: Interfaces published site configs name for the login node's address (Polaris: hsn0 today, bond0
#: in Parsl's older config; Perlmutter and Aurora: hsn0; InfiniBand clusters: ib0).
KNOWN_INTERFACES = ("hsn0", "bond0", "ib0")


def _address_fix(kwargs: dict[str, Any]) -> str:
    if "ifname" in kwargs:
        try:
            here = [name for _index, name in socket.if_nameindex()]
        except OSError:
            here = []
        others = [name for name in KNOWN_INTERFACES if name in here and name != kwargs.get("ifname")]
        if others:
            return (
                f"no {kwargs.get('ifname')} on this login node, but it has {', '.join(others)}: "
                f"if compute nodes reach it there, --set ifname={others[0]} (`ip -br addr` lists every interface)"
            )
        return (
            "no such interface on this login node: list them with `ip -br addr` and set the one compute nodes reach, "
            "e.g. --set ifname=<name>"
        )
    return "set an address the compute nodes can reach (see the profile's parameters: `gcbundle sites`)"


def _address_check(where: str, call: str, value: Any, kwargs: dict[str, Any]) -> Check:
    if not isinstance(value, str) or not value:
        return Check(f"address of {_owner(where)}", "fail", f"{call} gave {value!r}", _address_fix(kwargs))
    try:
        with socket.socket(socket.AF_INET6 if ":" in value else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((value, 0))
    except OSError as exc:
        return Check(
            f"address of {_owner(where)}",
            "fail",
            f"{call} = {value}, but no listener can bind to it here: {exc.strerror or exc}",
            "the executor listens on this address: it must be one of this login node's own",
        )
    return Check(f"address of {_owner(where)}", "ok", f"{call} = {value}")


def _reach(home: Home, built: _Built, driver: _Driver) -> list[Check]:
    """A compute node connects to each batch executor's address, in a real job."""
    from parsl.providers.cluster_provider import ClusterProvider  # Parsl is heavy: only for a site's checks

    out = []
    assert built.config is not None
    for i, executor in enumerate(built.config.executors):
        provider = getattr(executor, "provider", None)
        if not isinstance(provider, ClusterProvider):
            continue
        name = f"compute node reaches executors[{i}]"
        address = getattr(executor, "address", None)
        if not isinstance(address, str) or not address:
            out.append(Check(
                name,
                "fail",
                "the executor has no single address to probe (Parsl would try every address of this node)",
                "set the profile's address or ifname to the interface the compute nodes reach",
            ))
            continue
        where = home.root / "probe"
        where.mkdir(parents=True, exist_ok=True)
        prelude = worker_prelude(
            bindir=driver.bindir, bundle_dir=str(where), outputs_dir=str(where), run_id="doctor-probe"
        )
        r = reachprobe.probe(executor, address, prelude=prelude, script_dir=str(where))
        job = f"probe job {r.job_id}" if r.job_id else "the probe job"
        if r.reached_from:
            reached = f"{job} on {', '.join(r.reached_from)} reached {address}:{r.port} in {r.seconds:.1f} s"
            out.append(Check(name, "ok", reached))
        elif r.error:
            out.append(Check(
                name,
                "fail",
                f"{job} could not run: {r.error}",
                "fix what the scheduler said (`gcbundle render` shows the batch script)",
            ))
        else:
            out.append(Check(
                name,
                "fail",
                f"{job} ({r.job_state.lower()}) ran, but nothing reached {address}:{r.port} within {r.seconds:.0f} s: "
                "workers would not reach the interchange",
                "set the profile's ifname (or address) to the login node's interface on the network the compute "
                "nodes share (`ip -br addr` lists them); ask the site if a firewall blocks the port range",
            ))
    return out


def _providers(built: _Built | None) -> list[str]:
    if built is None or built.config is None:
        return []
    return [type(e.provider).__name__ for e in built.config.executors if getattr(e, "provider", None) is not None]


def _launchers(built: _Built | None) -> Check:
    found = {cmd: shutil.which(cmd) for cmd in ("mpiexec", "srun")}
    detail = ", ".join(f"{cmd} {path or 'not found'}" for cmd, path in found.items())
    needed = []
    if built is not None and built.config is not None:
        for e in built.config.executors:
            launcher = getattr(getattr(e, "provider", None), "launcher", None)
            cmd = schedulers.LAUNCHER_COMMAND.get(type(launcher).__name__)
            if cmd:
                needed.append((type(launcher).__name__, cmd))
    missing = [(name, cmd) for name, cmd in needed if not shutil.which(cmd)]
    if missing:
        name, cmd = missing[0]
        return Check(
            "MPI launchers",
            "warn",
            detail + f"; {name} runs `{cmd}` in each block",
            f"`{cmd}` is not on this login node's PATH: make sure the compute nodes have it "
            "(a module load in worker_init, --set worker_init=...)",
        )
    if needed:
        return Check("MPI launchers", "ok", detail)
    if built is not None and built.config is not None:
        return Check("MPI launchers", "ok", detail + " (the profile starts its workers without one)")
    if not any(found.values()):
        return Check(
            "MPI launchers",
            "warn",
            detail,
            "no MPI launcher on this login node's PATH: profiles with MpiExecLauncher or SrunLauncher need one "
            "(load the MPI module in the endpoint's environment or in worker_init); the `local` profile needs none",
        )
    return Check("MPI launchers", "ok", detail)


def _scheduler(built: _Built | None) -> Check:
    found = {name: {cmd: shutil.which(cmd) for cmd in sched.commands} for name, sched in schedulers.SCHEDULERS.items()}
    detail = "; ".join(
        ", ".join(f"{cmd} {path or 'not found'}" for cmd, path in cmds.items()) for cmds in found.values()
    )
    needed = sorted({schedulers.PROVIDER_SCHEDULER[p] for p in _providers(built) if p in schedulers.PROVIDER_SCHEDULER})
    if not needed:
        complete = [name for name, cmds in found.items() if all(cmds.values())]
        if built is not None and built.config is not None:
            return Check("batch scheduler", "ok", detail + " (the profile submits no batch jobs)")
        if not complete:
            return Check(
                "batch scheduler",
                "warn",
                detail,
                "no complete set of Slurm or PBS commands on PATH: only the `local` profile can run here; "
                "load the scheduler's module in the endpoint's environment",
            )
        needed = complete
    for name in needed:
        missing = [cmd for cmd, path in found[name].items() if not path]
        if missing:
            commands = ", ".join(schedulers.SCHEDULERS[name].commands)
            return Check(
                "batch scheduler",
                "fail",
                detail,
                f"the profile needs {commands}: put {', '.join(missing)} on the PATH of the endpoint "
                "(the Globus Compute endpoint's environment, e.g. its worker_init or the Ansible role's variables)",
            )
        answer = _ask_scheduler(name)
        if answer:
            return Check(
                "batch scheduler",
                "fail",
                detail + f"; {answer}",
                "the scheduler does not answer from this login node: "
                "check that its daemons run and that this user may submit",
            )
    return Check("batch scheduler", "ok", detail + f"; {', '.join(needed)} answers")


def _ask_scheduler(name: str) -> str:
    """'' when the scheduler answers a query for this user's jobs, else what went wrong."""
    argv = schedulers.query(schedulers.SCHEDULERS[name], _user())
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(argv)}`: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`{' '.join(argv)}` exited {proc.returncode}: {lines[-1] if lines else 'no output'}"
    return ""


def _worker_init(home: Home, built: _Built | None, versions: dict[str, str], driver: _Driver) -> Check:
    """Run the job's prelude and worker_init in a subshell with a bare environment
    (PBS jobs inherit none), and see which Python and Parsl ``process_worker_pool.py`` gets:
    the interchange refuses managers of another Parsl, and apps pickled by one
    Python minor version do not load on another."""
    site = SiteDefaults.read(home)
    inits = [""]
    if built is not None and built.config is not None:
        providers = [e.provider for e in built.config.executors if getattr(e, "provider", None) is not None]
        inits = [getattr(p, "worker_init", "") or "" for p in providers] or [""]
    # Every command of the prelude and worker_init that fails is reported (a
    # batch job goes on after a failing line, so module loads that never ran
    # would only show later as missing software or another Parsl).
    trap = f"trap 'printf \"%s failed=%s %s\\\\n\" {MARK} \"$?\" \"$BASH_COMMAND\"' ERR\n"
    probe = (
        "\ntrap - ERR\n"
        "pool=$(command -v process_worker_pool.py || true)\n"
        f'echo "{MARK} pool=$pool"\n'
        'if [ -n "$pool" ]; then\n'
        "  interp=$(head -n 1 \"$pool\" | sed 's/^#! *//')\n"
        f"  $interp -c 'import sys, platform, parsl; print(\"{MARK} parsl=\" + parsl.__version__); "
        f"print(\"{MARK} python=\" + sys.executable); "
        f"print(\"{MARK} python_version=\" + platform.python_version())'\n"
        "fi\n"
    )
    base = home.root / ".doctor"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:  # GCBUNDLE_HOME's own check says why
        base = Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        (Path(tmp) / "bundle").mkdir()
        job_prelude = site.prelude(tmp, "doctor", driver_init=driver.init, bindir=driver.bindir)
        env = {k: v for k, v in os.environ.items() if k in ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")}
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        results = []
        for init in dict.fromkeys(inits):
            script = trap + job_prelude + init + probe
            try:
                proc = subprocess.run(
                    [shutil.which("bash") or "/bin/bash", "-c", script],
                    capture_output=True, text=True, timeout=WORKER_INIT_TIMEOUT,
                    check=False, env=env, cwd=tmp, stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                return Check(
                    "worker_init",
                    "fail",
                    f"the job's worker_init did not finish in {WORKER_INIT_TIMEOUT} s",
                    "a command in worker_init waits (for input, the network or a lock): fix or remove it",
                )
            results.append((init, proc))
    python = "?"
    for _init, proc in results:
        marks = [line[len(MARK) + 1:] for line in proc.stdout.splitlines() if line.startswith(MARK + " ")]
        failed = [m.split("=", 1)[1] for m in marks if m.startswith("failed=")]
        found = dict(m.split("=", 1) for m in marks if "=" in m and not m.startswith("failed="))
        errors = proc.stderr.strip().splitlines()
        said = f" (stderr: {errors[-1]})" if errors else ""
        if failed:
            code, _, command = failed[0].partition(" ")
            return Check(
                "worker_init",
                "fail",
                f"a line of the job's worker_init failed (exit {code}): {command}{said}",
                "fix or remove that line (site-defaults.yaml's worker_init: "
                "the Ansible role's gcbundle_site_worker_init_before; or the profile's worker_init); "
                "`module` is not defined in a batch job started from cron "
                "unless the line sources the site's modules set-up first",
            )
        if not found.get("pool"):
            return Check(
                "worker_init",
                "fail",
                f"process_worker_pool.py is not on the job's PATH after worker_init{said}",
                f"install parsl in {Path(driver.bindir).parent} (the driver's environment), "
                "which the job puts first on PATH",
            )
        if version_tuple(found.get("parsl", "")) != version_tuple(versions.get("parsl", "")):
            return Check(
                "worker_init",
                "fail",
                f"workers would run Parsl {found.get('parsl', '?')} ({found.get('python', found['pool'])}), "
                f"the driver runs {versions.get('parsl')}{said}",
                "the interchange refuses managers of another Parsl: "
                "remove what changes PATH after gcbundle's prelude from worker_init "
                "(e.g. a `conda activate` of another environment), or install the same parsl there",
            )
        worker_python = found.get("python_version")
        if worker_python and version_tuple(worker_python)[:2] != version_tuple(versions.get("python", ""))[:2]:
            return Check(
                "worker_init",
                "fail",
                f"workers would run Python {found['python_version']} ({found.get('python')}), "
                f"the driver runs {versions.get('python')}{said}",
                "Parsl sends apps pickled by the driver's Python: the workers need the same minor version; "
                "remove what changes PATH after gcbundle's prelude from worker_init",
            )
        python = found.get("python", python)
        driver.workers = {
            "python": found.get("python_version", "?"),
            "parsl": found.get("parsl", "?"),
            "executable": python,
        }
    return Check("worker_init", "ok", f"workers get Parsl {found.get('parsl', versions.get('parsl'))} from {python}")
