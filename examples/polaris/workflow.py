"""The seed scenario: a Parsl workflow for ALCF Polaris (PBS Pro), shipped
from a laptop to a Polaris login node by gcbundle and run there with the
built-in `polaris` profile (PBSProProvider, MpiExecLauncher with ALCF's
`--cpu-bind` / `--depth=64 --ppn 1`, one worker per GPU, the login node's
address on hsn0). See README.md beside this file for the commands.
"""
from __future__ import annotations

import os

from parsl import bash_app, python_app


@python_app
def gpu_task(i: int) -> dict:
    """Runs on a compute node, one worker per GPU (Parsl sets CUDA_VISIBLE_DEVICES)."""
    import os
    import socket
    return {"i": i, "host": socket.gethostname(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "job": os.environ.get("PBS_JOBID")}


@bash_app
def nodefile(stdout: str | None = None) -> str:
    return 'echo "job $PBS_JOBID: $(sort -u "$PBS_NODEFILE" | tr "\\n" " ")"'


def main(n: int = 8) -> dict:
    futures = [gpu_task(i) for i in range(n)]
    out_dir = os.environ.get("GCBUNDLE_OUTPUT_DIR", "outputs")
    os.makedirs(out_dir, exist_ok=True)
    nodefile(stdout=os.path.join(out_dir, "nodes.txt")).result()
    results = [f.result() for f in futures]
    return {
        "tasks": len(results),
        "gpus": sorted({r["gpu"] for r in results if r["gpu"] is not None}),
        "hosts": sorted({r["host"] for r in results}),
        "jobs": sorted({r["job"] for r in results if r["job"]}),
    }
