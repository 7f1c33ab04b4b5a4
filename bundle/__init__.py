"""gcbundle: run a whole Parsl workflow on an HPC login node through Globus Compute.

The Python API (the CLI is a thin layer over it)::

    import bundle
    run = bundle.submit("workflow.py", endpoint="local", args={"n": 20})
    run.wait()
    print(run.result())
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"submit", "get_run", "list_runs", "Run", "prepare", "upload"}
__all__ = sorted(_API | {"__version__"})


def __getattr__(name: str) -> Any:
    # Lazy, so that the login node's task functions import only what they use: every
    # `import bundle.x` runs this file, and bundle.api pulls in packing, the transports
    # and the registry.
    if name in _API:
        from bundle import api

        return getattr(api, name)
    raise AttributeError(name)
