#!/usr/bin/env python3
"""gcbundle's versioned Python environments on this login node: which are in
use, and removing those no run needs any more.

The gcbundle_python Ansible role builds each environment once, in its own
directory named by a hash of its pins, and points a stable symlink at the
current one. A run keeps the environment it started with (its driver,
interchange and batch jobs run from it), so an environment stays while:

- it is the current one, or one of the KEEP most recently built others;
- a process on this host runs from it (its command line names a file in it);
- a run under a GCBUNDLE_HOME given with --home is not finished, its driver
  runs from it, and its heartbeat is fresh (drivers on other login nodes).

    gcbundle-envs.py status --envs DIR --current ENV [--home H ...]
    gcbundle-envs.py prune  --envs DIR --current ENV [--home H ...] [--keep N]

Both print one JSON object: each environment with why it is kept (or
"removed"). Only directories named like the role's environments (12 hex
digits) are ever removed. Standard library only: it runs with the interpreter
the environments are built from.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ENV_NAME = re.compile(r"^[0-9a-f]{12}$")
MARKER = "gcbundle-env.json"
TERMINAL = ("succeeded", "failed", "cancelled", "lost")
#: An environment directory without its marker this old is a build that died.
PARTIAL_AGE = 3600.0


def processes_using(env: Path) -> list[int]:
    """Pids on this host whose command line names a file in ``env``."""
    prefix = str(env) + "/"
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace").startswith(prefix) for a in argv):
            pids.append(int(entry.name))
    return pids


def runs_using(env: Path, homes: list[Path], now: float) -> list[str]:
    """Unfinished runs whose driver runs from ``env`` and still beats."""
    prefix = str(env) + "/"
    found = []
    for home in homes:
        runs = home / "runs"
        if not runs.is_dir():
            continue
        for state_file in runs.glob("*/state.json"):
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(state, dict) or state.get("state") in TERMINAL:
                continue
            if not str(state.get("python") or "").startswith(prefix):
                continue
            period = float(state.get("heartbeat_seconds") or 30.0)
            if now - float(state.get("updated") or 0.0) <= 3 * period + 60:
                found.append(state_file.parent.name)
    return found


def survey(envs: Path, current: Path, homes: list[Path], keep: int) -> dict[str, dict[str, object]]:
    now = time.time()
    found = {}
    built = []
    for entry in sorted(envs.iterdir()) if envs.is_dir() else []:
        if not (entry.is_dir() and not entry.is_symlink() and ENV_NAME.match(entry.name)):
            continue
        marker = entry / MARKER
        info: dict[str, object] = {"path": str(entry), "complete": marker.is_file()}
        if marker.is_file():
            try:
                info["pins"] = json.loads(marker.read_text()).get("versions")
            except (OSError, ValueError):
                pass
            built.append((marker.stat().st_mtime, entry))
        reasons = []
        if entry.resolve() == current.resolve():
            reasons.append("current")
        pids = processes_using(entry)
        if pids:
            reasons.append("used by pids " + " ".join(map(str, pids[:10])))
        runs = runs_using(entry, homes, now)
        if runs:
            reasons.append("unfinished runs " + " ".join(runs[:10]))
        if not marker.is_file() and now - entry.stat().st_mtime < PARTIAL_AGE:
            reasons.append("being built")
        info["kept"] = reasons
        found[str(entry)] = info
    # The most recently built others stay too (going back needs no rebuild).
    spare = [e for _, e in sorted(built, reverse=True) if not found[str(e)]["kept"]]
    for entry in spare[:max(keep, 0)]:
        found[str(entry)]["kept"] = ["recent"]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["status", "prune"])
    parser.add_argument("--envs", required=True, type=Path, help="the directory holding the environments")
    parser.add_argument("--current", required=True, type=Path, help="the current environment (or the symlink to it)")
    parser.add_argument("--home", action="append", default=[], type=Path, help="a GCBUNDLE_HOME whose runs count")
    parser.add_argument(
        "--keep", type=int, default=1, help="most recently built environments kept besides those in use"
    )
    args = parser.parse_args()
    found = survey(args.envs, args.current, args.home, args.keep)
    removed = []
    if args.action == "prune":
        for path, info in found.items():
            if not info["kept"]:
                shutil.rmtree(path)
                removed.append(path)
    lines = [f"{path}: removed" if path in removed else f"{path}: kept ({'; '.join(info['kept'])})"
             for path, info in found.items()]
    json.dump({"environments": found, "removed": removed, "lines": lines}, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
