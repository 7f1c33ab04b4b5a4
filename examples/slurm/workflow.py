"""A workflow for a Slurm cluster: the DFK runs on the login node, the apps in
Slurm jobs whose workers MpiExecLauncher starts (the built-in `slurm` profile).

On this machine's local Slurm (scripts/setup.sh --test installs it):

    gcbundle submit examples/slurm/workflow.py --endpoint local --site slurm \
        --set partition=debug --set address=10.250.0.1 --arg n=8 --wait

On a real cluster, through its endpoint (an alias from `gcbundle endpoints add`):

    gcbundle submit examples/slurm/workflow.py --endpoint mycluster --site slurm \
        --set partition=<partition> --set account=<account> --arg n=8

`gcbundle render --site slurm --set partition=debug` prints the batch script
the run will submit.
"""
from __future__ import annotations

import os

from parsl import bash_app, python_app


@python_app(cache=True)
def square(x: int) -> int:
    return x * x


@python_app
def where() -> dict:
    import os
    import socket
    return {"job": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(),
            "cpus": os.environ.get("SLURM_CPUS_ON_NODE")}


@bash_app
def node_report(stdout: str | None = None) -> str:
    return 'echo "job $SLURM_JOB_ID on $(hostname): $(nproc) cores, $(free -g | awk \'/Mem:/ {print $2}\') GiB"'


def main(n: int = 8) -> dict:
    squares = [square(i) for i in range(n)]
    places = [where() for _ in range(min(n, 4))]
    out_dir = os.environ.get("GCBUNDLE_OUTPUT_DIR", "outputs")
    os.makedirs(out_dir, exist_ok=True)
    node_report(stdout=os.path.join(out_dir, "node.txt")).result()
    seen = [p.result() for p in places]
    return {
        "squares": [s.result() for s in squares],
        "jobs": sorted({p["job"] for p in seen if p["job"]}),
        "hosts": sorted({p["host"] for p in seen}),
    }
