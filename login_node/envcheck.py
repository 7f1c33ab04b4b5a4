"""Before a run exists: does the driver's environment have what the workflow imports?

The launch task scans the cached bundle (``needed``) and checks the result
(``check``) before it creates the run directory, so a refusal leaves no run
directory, no registry row on the client and no DFK.

What is checked:

- every third-party module the workflow imports when the driver loads it
  (module-level imports of the entry, its ``--config`` module and the local
  modules they import; not those inside functions, ``try: ... except
  ImportError`` or ``if TYPE_CHECKING:``) resolves in the driver's
  environment, by ``importlib.util.find_spec`` on the top-level name, which
  runs no package code;
- Parsl is there, at the version the run's site profile needs
  (``Profile.parsl_requirement``: gcbundle's minimum, narrowed by the
  profile's ``parsl:``).

The login node scans the bundle itself rather than trusting a list from the
client: the bundle it is about to run is the truth, so a bundle made by
``gcbundle pack`` elsewhere, a resume of an older bundle, or a client of
another version get the same check; "local or third-party" is decided
against the bundle's own files; and the scan reads files the launch has just
already sit in the login node's cache, at no extra transfer or task (one
more read of the archive, which the launch then extracts).

``find_spec`` runs where the driver will run: in a child ``python -I`` of
the endpoint's environment (as the driver is started), not in the
endpoint's worker, whose ``sys.path`` may differ (``PYTHONPATH``, user
site-packages); or, for a run with ``driver_init``, inside the check that
``login_node.driverenv`` already runs in the user's environment
(``login_node.preflight``), whose answer arrives here as ``environment``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bundle import archive, imports
from bundle.errors import SiteEnvironmentError
from bundle.profiles import MIN_PARSL, Profile

#: Largest source file scanned.
MAX_SOURCE_BYTES = 4 * 1024 * 1024

#: Import names whose package is named otherwise on PyPI (for the install hint).
PIP_NAMES = {
    "yaml": "PyYAML", "sklearn": "scikit-learn", "skimage": "scikit-image", "cv2": "opencv-python",
    "PIL": "Pillow", "bs4": "beautifulsoup4", "Bio": "biopython", "dateutil": "python-dateutil",
    "attr": "attrs", "jwt": "PyJWT", "OpenSSL": "pyOpenSSL", "Crypto": "pycryptodome", "mpl_toolkits": "matplotlib",
}

_PROBE = r"""
import importlib.util, json, os, re, sys
missing = []
for name in json.loads(sys.argv[1]):
    try:
        if importlib.util.find_spec(name) is None:
            missing.append(name)
    except (ImportError, ValueError):
        missing.append(name)
parsl = None
spec = importlib.util.find_spec("parsl")
if spec is not None:
    # parsl/version.py read, not imported: cheaper than importlib.metadata, and runs nothing
    try:
        with open(os.path.join(list(spec.submodule_search_locations)[0], "version.py")) as f:
            found = re.search(r"^VERSION\s*=\s*[\x27\x22]([^\x27\x22]+)", f.read(), re.M)
        parsl = found.group(1) if found else "unknown"
    except (OSError, IndexError, TypeError):
        parsl = "unknown"
print(json.dumps({"missing": missing, "parsl": parsl}))
"""


def needed(bundle: Path) -> list[imports.ImportRef]:
    """The first import of each third-party top-level module that loading the workflow runs:
    module-level imports of the entry, its config module and the local modules they import."""
    manifest = archive.read_manifest(bundle)
    index = imports.ModuleIndex({f.path for f in manifest.files})
    sources = archive.read_sources(bundle, {f.path for f in manifest.files if f.path.endswith(".py")}, MAX_SOURCE_BYTES)
    roots = [manifest.entry]
    if manifest.config.get("kind") == "module" and isinstance(manifest.config.get("path"), str):
        roots.append(manifest.config["path"])
    found: dict[str, imports.ImportRef] = {}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        rel = todo.pop(0)
        if rel in seen or rel not in sources:
            continue
        seen.add(rel)
        tree = imports.parse(sources[rel], rel)
        if tree is None:
            continue  # the driver reports the syntax error with its traceback
        for ref in imports.scan(tree, rel):
            if not ref.module_level or ref.optional:
                continue
            if index.is_local(ref.top):
                for name in (ref.module, *(f"{ref.module}.{n}" for n in ref.names)):
                    target, _ = index.resolve(name)
                    if target:
                        todo.append(target)
            elif not imports.is_stdlib(ref.top) and ref.top not in found:
                found[ref.top] = ref
    return list(found.values())


def probe(names: list[str], timeout: float = 60.0) -> dict[str, Any]:
    """Ask a ``python -I`` like the driver's which of ``names`` it cannot find, and its Parsl version."""
    unasked = f"the login node's Python ({sys.executable}) could not be asked about the workflow's imports: "
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE, json.dumps(names)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SiteEnvironmentError(f"{unasked}{exc}", "check the environment with `gcbundle doctor`") from None
    try:
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        said = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SiteEnvironmentError(unasked + said, "check the environment with `gcbundle doctor`") from None


def check(
    needs: list[imports.ImportRef], site: dict[str, Any] | None, environment: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Refuse (``SiteEnvironmentError``) a run whose imports or Parsl the driver's environment lacks.

    ``environment`` is what the ``driver_init`` check found (``missing_imports``,
    ``parsl``, ``executable``); without it, the endpoint's own ``python -I`` is asked.
    Returns what was checked: the modules and the Parsl version.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if environment is not None:
        found = {"missing": environment.get("missing_imports") or [], "parsl": environment.get("parsl")}
        python = str(environment.get("executable") or "python3")
    else:
        found = probe([ref.top for ref in needs])
        python = sys.executable
    missing = [ref for ref in needs if ref.top in set(found.get("missing") or [])]
    if missing:
        listed = _and([f"{ref.top} (imported by {ref.where})" for ref in missing])
        packages = " ".join(PIP_NAMES.get(ref.top, ref.top) for ref in missing)
        where = "the environment driver_init activates" if environment is not None else \
            "the endpoint's environment; with the Ansible roles, list it in gcbundle_python_extra_packages"
        raise SiteEnvironmentError(
            f"the login node's environment lacks {listed}",
            f"install {'it' if len(missing) == 1 else 'them'} there: {python} -m pip install {packages} ({where})",
        )
    if site:
        profile, _ = Profile.from_spec(site)
        name, requirement = profile.name, profile.parsl_requirement()
    else:
        name, requirement = "", f">={MIN_PARSL}"
    version = found.get("parsl")
    if version is None:
        raise SiteEnvironmentError("the login node's environment lacks parsl, which the driver of every run needs",
                                   f"install it there: {python} -m pip install 'parsl{requirement}'")
    try:
        ok = Version(str(version)) in SpecifierSet(requirement)
    except InvalidVersion:
        ok = True  # a development build: let the driver try
    if not ok:
        whose = f"the site profile {name!r}" if name else "gcbundle"
        raise SiteEnvironmentError(
            f"the login node's environment has Parsl {version}, {whose} needs parsl{requirement}",
            f"install it there: {python} -m pip install 'parsl{requirement}'",
        )
    return {"imports": sorted(ref.top for ref in needs), "parsl": version}


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
