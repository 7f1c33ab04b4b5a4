"""``gcbundle prune``: reclaim disk on the login nodes and on this machine.

A run keeps its bundle, outputs and logs on the login node, and the client
keeps packed archives, manifests and file hashes in its cache dir, and the
results ``submit --wait`` fetched in its data dir. Under home quotas that
adds up fast. ``prune`` removes, by age and by state:

- on the login node behind each endpoint (one ``prune`` task per endpoint,
  ``login_node.prune``): finished runs whose results this client has fetched
  (``--force``: also those it has not), and cached bundles that no remaining
  run uses. Never a run that has not ended;
- here: the pack caches (rebuilt on the next pack, at the cost of time) and,
  with ``--results``, the results packages in gcbundle's own results dir
  (never a directory given to ``results -o``: those are the user's).

``--dry-run`` reports the same, sizes included, and deletes nothing.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import transport
from bundle.api import default_results_dir
from bundle.contracts import TERMINAL, PruneCriteria, PruneRequest
from bundle.errors import GcbundleError, ProtocolMismatch, TransportError, UsageError
from bundle.fileio import tree_size
from bundle.packcache import cache_dir
from bundle.registry import Registry, RunRecord
from bundle.results import MARKER

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str | None) -> float:
    """``--older-than``: ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or plain seconds."""
    if text is None or text == "":
        return 0.0
    m = _AGE.match(text)
    if not m:
        raise UsageError(f"--older-than {text!r} is not an age", "write e.g. --older-than 7d (s, m, h, d or w)")
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclass(frozen=True)
class Options:
    older_than: float = 0.0
    states: tuple[str, ...] = TERMINAL
    force: bool = False
    dry_run: bool = False
    endpoints: tuple[str, ...] = ()  # default: every endpoint this client's registry has runs on
    login_node: bool = True
    caches: bool = True
    results: bool = False


def prune(options: Options, registry: Registry | None = None, transport_for: Callable[[str], Any] | None = None,
          now: float | None = None) -> dict[str, Any]:
    """Prune the login nodes and this machine; the report of each, and the bytes freed."""
    registry = registry or Registry()
    now = time.time() if now is None else now
    for s in options.states:
        if s not in TERMINAL:
            raise UsageError(f"--state {s!r} cannot be pruned",
                             f"choose among {', '.join(TERMINAL)}: a run that has not ended is never pruned")
    records = registry.list(limit=1 << 30)
    report: dict[str, Any] = {"dry_run": options.dry_run, "endpoints": {}, "client": {}, "freed_bytes": 0}
    failures: list[GcbundleError] = []
    if options.login_node:
        endpoints = list(dict.fromkeys(options.endpoints or [r.endpoint for r in records]))
        connect = transport_for or transport.get_transport
        for endpoint in endpoints:
            try:
                rep = _prune_endpoint(endpoint, options, records, connect(endpoint))
            except TransportError as exc:
                failures.append(exc)
                report["endpoints"][endpoint] = {"error": exc.to_json()}
                continue
            report["endpoints"][endpoint] = rep
            report["freed_bytes"] += rep["freed_bytes"]
            if not options.dry_run:
                _record(registry, endpoint, rep, now)
    if options.caches:
        report["client"]["caches"] = _prune_caches(options, now)
        report["freed_bytes"] += sum(x["bytes"] for x in report["client"]["caches"])
    if options.results:
        report["client"]["results"] = _prune_results(options, records, now)
        report["freed_bytes"] += sum(x["bytes"] for x in report["client"]["results"])
    if failures:
        first = failures[0]
        plural = "s" if len(failures) > 1 else ""
        exc = type(first)(f"{len(failures)} endpoint{plural} not pruned: {first.message}", first.hint)
        exc.data = report  # what was done elsewhere, for --json
        raise exc
    return report


def _criteria(options: Options, fetched: list[str]) -> PruneCriteria:
    return PruneCriteria(older_than=options.older_than, states=tuple(options.states), fetched=frozenset(fetched),
                         force=options.force, dry_run=options.dry_run, bundles=True)


def _fetched(records: list[RunRecord], endpoint: str) -> list[str]:
    """Runs on ``endpoint`` whose results this client holds complete."""
    return [r.run_id for r in records if r.endpoint == endpoint and r.results_sha and r.state in TERMINAL]


def _prune_endpoint(endpoint: str, options: Options, records: list[RunRecord], transport: Any) -> dict[str, Any]:
    """One ``prune`` task. A login node older than the task fails to load its function,
    which the transport reports as ProtocolMismatch, "upgrade the login node"."""
    try:
        return transport.send(PruneRequest(prune=_criteria(options, _fetched(records, endpoint)))).to_json()
    except ProtocolMismatch as exc:
        raise ProtocolMismatch(f"endpoint {endpoint}: {exc.message}",
                               f"{exc.hint}; `gcbundle prune --no-login-node` prunes this machine only") from None


def _record(registry: Registry, endpoint: str, rep: dict[str, Any], now: float) -> None:
    """The registry learns which runs and bundles the login node no longer has."""
    for row in rep.get("runs", []):
        if row.get("action") != "pruned":
            continue
        try:
            rec = registry.get(row["run_id"])
        except GcbundleError:
            continue  # a run of another client
        extra = json.loads(rec.extra or "{}")
        extra["pruned"] = now
        registry.update(rec.run_id, extra=json.dumps(extra, sort_keys=True))
    for row in rep.get("bundles", []):
        if row.get("action") == "pruned":
            registry.forget_cached(endpoint, row["digest"])


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return tree_size(path)
    try:
        return path.lstat().st_blocks * 512
    except OSError:
        return 0


def _prune_caches(options: Options, now: float) -> list[dict[str, Any]]:
    """The pack caches: archives, manifests (delta bases), file hashes. Only caches:
    the next pack rebuilds what it needs."""
    out = []
    root = cache_dir()
    for kind in ("archives", "manifests", "hashes"):
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            try:
                age = now - path.lstat().st_mtime
            except FileNotFoundError:
                continue
            if age < options.older_than:
                continue
            size = _size(path)
            if not options.dry_run:
                _remove(path)
            out.append({"kind": kind, "path": str(path), "bytes": size})
    return out


def _prune_results(options: Options, records: list[RunRecord], now: float) -> list[dict[str, Any]]:
    """Results packages in gcbundle's own results dir (where ``submit --wait`` puts
    them), of runs in the chosen states, fetched longer ago than ``older_than``."""
    root = default_results_dir()
    by_id = {r.run_id: r for r in records}
    out = []
    if not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        marker = path / MARKER
        if path.is_symlink() or not marker.is_file():
            continue  # not a complete package gcbundle wrote (a download may be under way)
        rec = by_id.get(path.name)
        state = rec.state if rec else None
        if rec is not None and state not in options.states:
            continue
        age = now - marker.stat().st_mtime
        if age < options.older_than:
            continue
        size = _size(path)
        if not options.dry_run:
            _remove(path)
        out.append({"run_id": path.name, "state": state, "path": str(path), "bytes": size})
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
