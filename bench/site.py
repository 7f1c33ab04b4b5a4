"""Submit to first app result on the virtual site's real schedulers, and how long the site takes to come up.

    .venv/bin/python bench/site.py              # 3 rounds: PBS and Slurm, 1 and 2 nodes per block
    .venv/bin/python bench/site.py --tiny       # 1 round, 1 node per block
    .venv/bin/python bench/site.py --bring-up   # ALSO takes the site down and up again (stops every
                                                # job on it: not while others use the site)

Needs the virtual site (`scripts/setup.sh --test`). Each round submits the
same one-app workflow through the local endpoint with `--wait`, alternating
PBS (the `pbspro` profile) and Slurm (`slurm`), one and two nodes per block,
Parsl's scaling period 1 s (the block is submitted on the first pass), and
times `submit` to the app's result printed. Reported: medians, and the
ratios PBS/Slurm and two nodes/one node (targets: PBS within 3x of Slurm; a
second node adds less than 2x). `--bring-up` times `scripts/site.sh down`
then `setup_slurm.sh` and `setup_pbs.sh` from built (OpenPBS installed, no
daemon, no namespace), and a re-run of both on the running site (nothing
changes).
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from _common import REPO, isolate, median, parse, parser, result, workflow_dir

WORKFLOW = '''
from parsl import python_app


@python_app
def where():
    import socket
    return socket.gethostname()


def main():
    return where().result()
'''
LOGIN = "10.250.0.1"  # the login node on bond0 (scripts/site.sh)
PROFILES = {
    ("pbs", 1): ("pbspro", {"address": LOGIN, "queue": "workq", "cpus_per_node": 1}),
    ("pbs", 2): ("pbspro", {"address": LOGIN, "queue": "workq", "cpus_per_node": 1, "nodes_per_block": 2,
                            "launcher_overrides": "--map-by ppr:1:node", "scheduler_options": "#PBS -l place=scatter"}),
    ("slurm", 1): ("slurm", {"address": LOGIN, "partition": "debug"}),
    ("slurm", 2): ("slurm", {"address": LOGIN, "partition": "debug", "nodes_per_block": 2,
                             "launcher_overrides": "--map-by ppr:1:node"}),
}


def first_result(wf: Path, key: tuple[str, int]) -> float:
    from bundle import api  # gcbundle is imported only after isolate() (see _common)

    site, params = PROFILES[key]
    t0 = time.monotonic()
    run = api.submit(wf, "local", site=site, params={**params, "strategy_period": 1, "walltime": "00:10:00"}, wait=True)
    elapsed = time.monotonic() - t0
    if run.last_state.get("state") != "succeeded":
        raise SystemExit(f"bench: the {site} run failed: {run.last_state.get('error')}")
    return elapsed


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=900)
    return time.monotonic() - t0


def bring_up() -> None:
    scripts = REPO / "scripts"
    down = timed(["bash", str(scripts / "site.sh"), "down"])
    slurm = timed(["bash", str(scripts / "setup_slurm.sh")])
    pbs = timed(["bash", str(scripts / "setup_pbs.sh")])
    again = timed(["bash", str(scripts / "setup_slurm.sh")]) + timed(["bash", str(scripts / "setup_pbs.sh")])
    up = slurm + pbs
    print(f"site down {down:.1f} s; up from built: setup_slurm.sh {slurm:.1f} s + setup_pbs.sh {pbs:.1f} s "
          f"= {up:.1f} s; re-run on the running site {again:.1f} s")
    result("site: re-run / bring-up from built", again / up, "<=", 0.5, f"({again:.1f} s vs {up:.1f} s)")


def main() -> None:
    p = parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("--bring-up", action="store_true", help="also time taking the site down and up (disruptive)")
    args = parse(p, runs=1)
    root = isolate()
    wf = workflow_dir(root / "wf", WORKFLOW) / "workflow.py"
    if args.bring_up:
        bring_up()
    keys = [("pbs", 1), ("slurm", 1)] if args.tiny else list(PROFILES)
    runs = args.runs
    times: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
    for i in range(runs):
        for key in (keys if i % 2 == 0 else list(reversed(keys))):
            times[key].append(first_result(wf, key))
    for key in keys:
        print(f"{key[0]:<5} {key[1]} node(s) per block: submit to first result {median(times[key]):.1f} s "
              f"(median of {len(times[key])}: {', '.join(f'{t:.1f}' for t in times[key])})")
    result("site: PBS / Slurm, 1 node", median(times[("pbs", 1)]) / median(times[("slurm", 1)]), "<=", 3.0)
    if not args.tiny:
        result("site: PBS / Slurm, 2 nodes", median(times[("pbs", 2)]) / median(times[("slurm", 2)]), "<=", 3.0)
        for s in ("pbs", "slurm"):
            result(f"site: {s} 2 nodes / 1 node", median(times[(s, 2)]) / median(times[(s, 1)]), "<=", 2.0)


if __name__ == "__main__":
    main()
