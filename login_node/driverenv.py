"""The environment the driver runs in: the endpoint's own, or the user's (``driver_init``).

Researchers keep their science code in their own conda or venv environment;
the endpoint's environment has whatever Parsl ``globus-compute-endpoint``
pins and little else. With the site parameter ``driver_init`` (shell lines,
e.g. ``module load conda; conda activate myenv``, from ``--set``, an endpoint
alias or ``site-defaults.yaml``) the driver starts after those lines, with
the ``python3`` they put on PATH: the workflow, its DFK and, since the worker
prelude puts the driver's ``bin/`` first and runs the same lines first in
every batch job, its workers use that environment.

What that environment needs from gcbundle is small: **Python 3.10 or newer
and Parsl**. gcbundle ships the rest with the launch: its login-node code
(the ``bundle`` and ``login_node`` packages, as installed on the endpoint)
and pure-Python copies of PyYAML and cloudpickle, in a content-addressed
folder under ``$GCBUNDLE_HOME/lib/`` (shared with the compute nodes, so a
driver in a batch job finds it too). gcbundle's own packages come first on
``sys.path``; the two libraries come last, so the environment's own
versions win where it has them. The interpreter is not isolated (no ``-I``):
the user's environment may well be made of ``PYTHONPATH`` by its modules.

Before the driver starts, ``preflight`` runs the same lines and
``login_node.preflight`` in that interpreter, which builds the run's Config
without running anything: no Python, no Parsl, a Parsl too old for the
profile (a keyword it does not know, PBS Pro states it cannot read) is an
error of the launch task, and the run is not created.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bundle import __version__, prelude
from bundle.errors import SiteProfileError
from login_node.rundir import Home, RunPaths

#: Packages of the endpoint's environment copied as they are: gcbundle's own (first on sys.path)...
OWN = ("bundle", "login_node")
#: ...and pure-Python libraries the login-node code uses (last on sys.path: the environment's own win).
FALLBACK = ("yaml", "cloudpickle")
#: How long the driver_init lines plus the preflight may take.
PREFLIGHT_TIMEOUT = 120


def ship(home: Home) -> Path:
    """The folder holding gcbundle's login-node code and its fallbacks, made once per content.

    Its name is a hash of what it holds, so a new gcbundle gets a new folder
    and a running driver's files never change under it; it is made beside
    its final name and renamed into place (concurrent launches agree)."""
    sources: list[tuple[str, Path]] = []
    for group, names in (("gcbundle", OWN), ("fallback", FALLBACK)):
        for name in names:
            try:
                module = __import__(name)
            except ImportError:
                continue
            root = Path(module.__file__).parent  # type: ignore[arg-type]
            for f in sorted(root.rglob("*")):
                shipped = f.suffix == ".py" or (name == "bundle" and f.suffix == ".yaml")
                if f.is_file() and shipped and "__pycache__" not in f.parts:
                    sources.append((f"{group}/{name}/{f.relative_to(root).as_posix()}", f))
    digest = hashlib.sha256()
    for rel, f in sources:
        digest.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    lib = home.root / "lib" / f"gcbundle-{__version__}-{digest.hexdigest()[:16]}"
    if lib.is_dir():
        return lib
    tmp = lib.parent / f".{lib.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel, f in sources:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        try:
            os.rename(tmp, lib)
        except OSError:
            if not lib.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def env_for(paths: RunPaths, base: dict[str, str]) -> dict[str, str]:
    """The driver's environment without the endpoint's interpreter first on PATH."""
    env = dict(base)
    # Both spellings: the driver puts the resolved one first (login_node.spawn.run_python).
    bindirs = {str(Path(sys.executable).parent), str(Path(sys.executable).parent.resolve())}
    path = [p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p not in bindirs]
    env["PATH"] = os.pathsep.join(path) or "/usr/bin:/bin"
    env.pop("PYTHONHOME", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def preflight(paths: RunPaths, driver_init: str, rendered: dict[str, Any] | None, env: dict[str, str], lib: Path,
              imports: list[str] | None = None) -> dict[str, Any]:
    """Run ``login_node.preflight`` after ``driver_init``; its findings, or SiteProfileError.
    ``imports`` (top-level module names) come back in ``missing_imports`` when not found."""
    bash = shutil.which("bash") or "/bin/bash"
    request = {"rendered": rendered, "imports": list(imports or [])}
    text = prelude.driver_init_script(driver_init, ["-c", prelude.shipped_stub(lib, "preflight"), json.dumps(request)])
    cwd = str(paths.root if paths.root.is_dir() else Path.home())
    try:
        proc = subprocess.run([bash, "-c", text], capture_output=True, text=True, timeout=PREFLIGHT_TIMEOUT,
                              env=env, cwd=cwd, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise SiteProfileError("driver_init and the driver environment's check did not finish "
                               f"in {PREFLIGHT_TIMEOUT} s",
                               "a line of driver_init waits (for input, the network or a lock): "
                               "fix it, and try it with `gcbundle doctor`") from None
    found = _last_json(proc.stdout)
    if found is None:
        said = (proc.stderr or proc.stdout or "no output").strip().splitlines()
        last = said[-1] if said else "no output"
        raise SiteProfileError(f"the driver environment (driver_init) could not start Python: {last}",
                               "fix driver_init so that it activates an environment with Python 3.10+ and Parsl; "
                               "`gcbundle doctor --site ... --set driver_init=...` tries it")
    problems = found.get("problems") or []
    if problems:
        first = problems[0]
        where = f" ({found.get('executable')}, Python {found.get('python')}, Parsl {found.get('parsl', 'absent')})"
        raise SiteProfileError(f"the driver environment cannot run this workflow: {first['message']}{where}",
                               first.get("hint"))
    return found


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None
