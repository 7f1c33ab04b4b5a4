"""Reclaiming disk on the login node: finished runs, and cached bundles no run keeps.

Home quotas on login nodes are small, and every run keeps its bundle, outputs
and logs until someone removes them. ``prune`` removes what the client's
criteria select, and never:

- a run that has not ended (``staged``, ``starting``, ``running``): its driver
  may be writing there; nor a ``lost`` run whose driver ran on another host
  (it may only be out of touch), unless forced;
- a run whose results the asking client has not fetched (the client sends the
  ids it holds complete results of), unless forced;
- a cached bundle that a run which stays still uses (``gcbundle resume`` of that
  run needs it).

A run directory is first renamed to a hidden name, then deleted, so a prune
cut short leaves no half-deleted run behind a run id; the next prune finishes
it. With ``dry_run`` nothing is deleted and the report says what would be.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from bundle.contracts import DIGEST, RUN_ID, PruneCriteria
from bundle.fileio import tree_size
from login_node import state
from login_node.orphans import reap
from login_node.rundir import Home, RunPaths, read_json

#: Leftovers (half-created or half-pruned run directories, abandoned uploads)
#: are removed once they are at least this old, whatever the criteria.
LEFTOVER_AGE = 3600.0
def _file_size(path: Path) -> int:
    try:
        return path.lstat().st_blocks * 512
    except OSError:
        return 0


def _verdict(paths: RunPaths, st: dict[str, Any], criteria: PruneCriteria, now: float) -> tuple[bool, str]:
    """Whether to prune this run, and why (or why not)."""
    name = st.get("state")
    if not state.is_terminal(st):
        return False, f"{name}: not ended"
    if name == "lost" and st.get("host") not in (None, state.hostname()) and not criteria.force:
        return False, f"lost on host {st.get('host')}: its driver may only be out of touch (--force prunes it)"
    if name not in criteria.states:
        return False, f"{name}: state not selected"
    age = now - float(st.get("updated") or 0.0)
    if age < criteria.older_than:
        return False, f"ended {_age(age)} ago"
    if paths.run_id not in criteria.fetched and not criteria.force:
        return False, "results not fetched (fetch them, or --force)"
    forced = "" if paths.run_id in criteria.fetched else ", results not fetched (forced)"
    return True, f"{name}, ended {_age(age)} ago" + forced


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def prune(home: Home, criteria: PruneCriteria, now: float | None = None) -> dict[str, Any]:
    """Prune ``home`` by ``criteria``; the report lists every run and bundle with what was done and why."""
    now = time.time() if now is None else now
    runs: list[dict[str, Any]] = []
    kept_digests: set[str] = set()
    last_use: dict[str, float] = {}
    doomed: list[tuple[RunPaths, dict[str, Any]]] = []
    for entry in sorted(home.runs.iterdir()) if home.runs.is_dir() else []:
        if not RUN_ID.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        paths = RunPaths(entry)
        if not paths.exists():
            continue  # not a run directory (yet): launch renames a complete one into place
        st = state.effective(paths, now)
        try:
            digest = read_json(paths.request).get("digest")
        except (OSError, ValueError):
            digest = None
        prune_it, why = _verdict(paths, st, criteria, now)
        size = tree_size(entry)
        row = {"run_id": paths.run_id, "state": st.get("state"), "bytes": size, "digest": digest,
               "action": "prune" if prune_it else "keep", "reason": why}
        runs.append(row)
        if isinstance(digest, str) and DIGEST.fullmatch(digest):
            last_use[digest] = max(last_use.get(digest, 0.0), float(st.get("updated") or 0.0))
            if not prune_it:
                kept_digests.add(digest)
        if prune_it:
            doomed.append((paths, st))
    for paths, st in doomed:
        if not criteria.dry_run:
            reap(paths, st)  # what is left of a lost or cancelled run's processes on this host
            _remove(paths.root)
    bundles = _bundles(home, criteria, kept_digests, last_use, now)
    leftovers = _leftovers(home, criteria, now)
    freed = sum(r["bytes"] for r in runs if r["action"] == "prune")
    freed += sum(b["bytes"] for b in bundles if b["action"] == "prune")
    freed += sum(x["bytes"] for x in leftovers)
    for row in runs:
        if row["action"] == "prune" and not criteria.dry_run:
            row["action"] = "pruned"
    for row in bundles:
        if row["action"] == "prune" and not criteria.dry_run:
            row["action"] = "pruned"
    return {
        "home": str(home.root),
        "dry_run": criteria.dry_run,
        "runs": runs,
        "bundles": bundles,
        "leftovers": leftovers,
        "freed_bytes": freed,
        "free_bytes": _free(home.root),
    }


def _bundles(home: Home, criteria: PruneCriteria, kept: set[str], last_use: dict[str, float],
             now: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not criteria.bundles or not home.cache.is_dir():
        return out
    for path in sorted(home.cache.glob("*.tar.gz")):
        digest = path.name.removesuffix(".tar.gz")
        if not DIGEST.fullmatch(digest) or path.is_symlink():
            continue
        try:
            used = max(path.stat().st_mtime, last_use.get(digest, 0.0))
        except FileNotFoundError:
            continue
        if digest in kept:
            action, why = "keep", "a run that stays uses it"
        elif now - used < criteria.older_than:
            action, why = "keep", f"last used {_age(now - used)} ago"
        else:
            action, why = "prune", f"no run left uses it; last used {_age(now - used)} ago"
        size = _file_size(path)
        if action == "prune" and not criteria.dry_run:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        out.append({"digest": digest, "bytes": size, "action": action, "reason": why})
    return out


def _leftovers(home: Home, criteria: PruneCriteria, now: float) -> list[dict[str, Any]]:
    """Half-created or half-pruned run directories and abandoned uploads, once old."""
    out: list[dict[str, Any]] = []
    places = [(home.runs, lambda n: n.startswith(".")), (home.staging, lambda n: True)]
    for parent, match in places:
        if not parent.is_dir():
            continue
        for path in sorted(parent.iterdir()):
            try:
                age = now - path.lstat().st_mtime
            except FileNotFoundError:
                continue
            if not match(path.name) or age < max(LEFTOVER_AGE, criteria.older_than if parent == home.staging else 0.0):
                continue
            size = tree_size(path) if path.is_dir() and not path.is_symlink() else _file_size(path)
            if not criteria.dry_run:
                _remove(path)
            out.append({"path": str(path.relative_to(home.root)), "bytes": size})
    return out


def _remove(path: Path) -> None:
    """Delete a file or tree; a run directory is renamed out of its id first."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    target = path
    if RUN_ID.fullmatch(path.name):
        target = path.with_name(f".{path.name}.pruning.{os.getpid()}")
        os.rename(path, target)
    shutil.rmtree(target, ignore_errors=True)


def _free(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
