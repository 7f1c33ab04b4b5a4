"""Can this interpreter run a gcbundle driver? Run in the driver's environment, after ``driver_init``.

    python3 -c '<stub: shipped code on sys.path>; from login_node.preflight import main; main()' REQUEST_JSON

prints one JSON line: this interpreter's Python, Parsl and gcbundle (the
shipped copy) versions and its executable, ``problems``, each a
``message`` and a ``hint``, and which of the request's ``imports`` (the
workflow's third-party modules) it cannot find (``missing_imports``; judged
by ``login_node.envcheck``). It builds the run's Config from the rendered
site profile as ``gcbundle render`` does (no address function, no scheduler
command), so a keyword this Parsl does not know is found here. Kept to
syntax every Python 3 reads, so that a too-old Python is told it is.
"""
from __future__ import annotations

import json
import sys

MIN_PYTHON = (3, 10)


def check(request: dict) -> dict:
    out = {"python": ".".join(str(v) for v in sys.version_info[:3]), "executable": sys.executable, "problems": []}
    problems = out["problems"]
    if sys.version_info[:2] < MIN_PYTHON:
        problems.append({"message": "Python {} is older than 3.10, which gcbundle's driver needs".format(out["python"]),
                         "hint": "activate an environment with Python 3.10 or newer in driver_init"})
        return out
    names = request.get("imports") or []
    if names:
        # The workflow's third-party imports (login_node.envcheck): found without importing them.
        import importlib.util

        missing = []
        for name in names:
            try:
                if importlib.util.find_spec(name) is None:
                    missing.append(name)
            except (ImportError, ValueError):
                missing.append(name)
        out["missing_imports"] = missing
    try:
        import parsl
    except ImportError as exc:
        problems.append({
            "message": f"Parsl cannot be imported: {exc}",
            "hint": "install parsl in that environment (`pip install parsl`), "
                    "or activate one that has it in driver_init",
        })
        return out
    # gcbundle's own modules are imported only now, after Python and Parsl were
    # found usable: this runs in the user's environment (driver_init), and each
    # missing piece is reported as a problem rather than a traceback.
    from bundle import __version__  # local on purpose: after the Python and Parsl checks above

    out["parsl"] = parsl.__version__
    out["gcbundle"] = __version__
    rendered = request.get("rendered")
    if rendered:
        # Local on purpose, as above; only a launch with a site profile needs them.
        from bundle import profiles, render
        from bundle.errors import GcbundleError
        from login_node import pitfalls

        try:
            config = profiles.build_config(rendered, factory=render._dry_factory({}))
        except GcbundleError as exc:
            problems.append({
                "message": f"Parsl {parsl.__version__} cannot build the site profile's Config: {exc.message}",
                "hint": "upgrade parsl there (`pip install -U parsl`) to a version that has these keywords",
            })
            return out
        except Exception as exc:  # noqa: BLE001 - Parsl refusing a value
            problems.append({
                "message": f"Parsl {parsl.__version__} refuses the site profile: {type(exc).__name__}: {exc}",
                "hint": "upgrade parsl there (`pip install -U parsl`), or fix the profile's values",
            })
            return out
        providers = [type(getattr(e, "provider", None)).__name__ for e in config.executors]
        pbs = pitfalls.pbs_job_states(parsl.__version__, providers)
        if pbs is not None and pbs["status"] == "fail":
            problems.append({"message": pbs["detail"], "hint": pbs["fix"]})
    return out


def main() -> None:
    request = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print(json.dumps(check(request)), flush=True)
