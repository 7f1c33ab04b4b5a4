"""The client's side of ``gcbundle doctor``: send the short ``doctor`` task (or,
with ``local``, run its checks in this process), add what only the client can
compare (its own versions against the login node's), and lay out the table."""
from __future__ import annotations

from typing import Any

from bundle import profiles
from bundle.contracts import DoctorRequest
from bundle.endpoints import site_choice
from bundle.errors import UsageError
from bundle.protocol import request, unwrap
from bundle.transport import Transport, get_transport
from bundle.transport.wire import task_function
from bundle.versions import local_versions

STATUS_WORD = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


def run(*, endpoint: str | None = None, local: bool = False, site: str | None = None,
        params: dict[str, Any] | None = None, transport: Transport | None = None,
        probe: bool = False) -> dict[str, Any]:
    """The doctor report of an endpoint's login node, or of this machine (``local``)."""
    if bool(endpoint) == bool(local):
        raise UsageError("doctor needs either --endpoint E (checks that endpoint's login node) "
                         "or --local (checks this machine)",
                         "e.g. `gcbundle doctor --endpoint polaris`, "
                         "or on the login node itself `gcbundle doctor --local`")
    site, params = site_choice(endpoint, site, dict(params or {}))
    spec = profiles.load(site).to_spec(params) if site else None
    client = local_versions()
    if local:
        report = unwrap(task_function("doctor")(request(site=spec, **({"probe": True} if probe else {}))))
        report["where"] = None  # this machine
    else:
        assert endpoint is not None
        transport = transport or get_transport(endpoint)
        report = transport.send(DoctorRequest(site=spec, probe=True if probe else None)).to_json()
        report["where"] = endpoint
        versions = compare(client, report.get("versions") or {}, report.get("driver_versions"))
        report["checks"] = versions + list(report.get("checks") or [])
    report["checks"] = [every_side(client, report)] + list(report["checks"])
    report["client_versions"] = client
    report["ok"] = not any(c.get("status") == "fail" for c in report["checks"])
    return report


def every_side(client: dict[str, str], report: dict[str, Any]) -> dict[str, str]:
    """Python, Parsl and gcbundle where each part of a run runs: here, the endpoint, the driver, the workers."""
    def side(name: str, v: dict[str, str] | None) -> str:
        if not v:
            return f"{name} ?"
        gcbundle = f", gcbundle {v['gcbundle']}" if v.get("gcbundle") else ""
        return f"{name} Python {v.get('python', '?')}, Parsl {v.get('parsl', '?')}{gcbundle}"

    endpoint = report.get("versions") or {}
    driver = report.get("driver_versions") or endpoint
    workers = report.get("worker_versions") or {}
    parts = [side("client:", client), side("endpoint:", endpoint), side("driver:", driver), side("workers:", workers)]
    return {"name": "versions on every side", "status": "ok", "detail": "; ".join(parts), "fix": ""}


def compare(client: dict[str, str], login: dict[str, str],
            driver: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Versions on both sides, and whether they go together (``driver``: the driver's
    environment when driver_init makes it another than the endpoint's)."""
    def check(name: str, status: str, detail: str, fix: str = "") -> dict[str, str]:
        return {"name": name, "status": status, "detail": detail, "fix": fix}

    out = []
    c, s = client.get("gcbundle", "?"), login.get("gcbundle", "?")
    if c == s:
        out.append(check("gcbundle, both sides", "ok", f"{c} here, {s} on the login node"))
    else:
        out.append(check("gcbundle, both sides", "warn",
                         f"{c} here, {s} on the login node (same protocol, or this task would have failed)",
                         "upgrade the older side: `pip install -U gcbundle` here, "
                         "or re-run the Ansible playbook on the login node"))
    c, s = _minor(client.get("python", "")), _minor(login.get("python", ""))
    pythons = f"{client.get('python')} here, {login.get('python')} on the login node"
    if c == s:
        out.append(check("Python, both sides", "ok", pythons))
    else:
        out.append(check("Python, both sides", "warn", pythons,
                         f"Globus Compute serializes gcbundle's task functions with this Python: "
                         f"use Python {s} here (a venv), "
                         "or register the functions once (`gcbundle register`) so that they go by id"))
    c, s = client.get("globus-compute-sdk", "absent"), login.get("globus-compute-endpoint", "absent")
    same = c.split(".")[0] == s.split(".")[0]
    out.append(check("Globus Compute, both sides", "ok" if same else "warn",
                     f"globus-compute-sdk {c} here, globus-compute-endpoint {s} on the login node",
                     "" if same else "use the same major version of globus-compute-sdk here as the endpoint's"))
    c, s = client.get("parsl", "absent"), (driver or login).get("parsl", "absent")
    same = _release(c) == _release(s)
    fix = "" if same else (f"site profiles are checked here against Parsl {c}: "
                           f"install parsl=={s} here so that both agree on its keywords")
    out.append(check("Parsl, both sides", "ok" if same else "warn",
                     f"{c} here (checks site profiles), {s} on the login node (runs them)", fix))
    return out


def _release(version: str) -> tuple[int, ...]:
    """``2026.07.27`` and ``2026.7.27`` are the same release."""
    out = []
    for part in version.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def table(report: dict[str, Any]) -> str:
    where = report.get("where")
    how = f" behind endpoint {where}" if where else ", checked in this process"
    site = f", site {report['site']}" if report.get("site") else ""
    lines = [f"login node {report.get('host')} ({report.get('user')}){how}, GCBUNDLE_HOME {report.get('home')}{site}"]
    width = max((len(c["name"]) for c in report["checks"]), default=10)
    for c in report["checks"]:
        lines.append(f"  {STATUS_WORD.get(c['status'], c['status']):<4}  {c['name']:<{width}}  {c['detail']}")
        if c.get("fix") and c["status"] != "ok":
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {c['fix']}")
    failed = sum(c["status"] == "fail" for c in report["checks"])
    warned = sum(c["status"] == "warn" for c in report["checks"])
    if failed:
        lines.append(f"{failed} check{'s' if failed != 1 else ''} failed")
    else:
        lines.append("all checks passed" + (f" ({warned} warning{'s' if warned != 1 else ''})" if warned else ""))
    return "\n".join(lines)
