"""Parsl Config for the multisite example on real Globus Compute endpoints.

The driver calls ``make_config(**params)`` on the login node with the
``--set`` values of the submission. Pre-processing and analysis go to two other
endpoints through Parsl's ``GlobusComputeExecutor``; post-processing stays on
the login node, on HighThroughputExecutor workers it starts itself.

The GlobusComputeExecutors submit from the login node, so the driver needs
Globus credentials there (it runs detached, and cannot answer a login prompt):
client credentials in the endpoint's environment (GLOBUS_COMPUTE_CLIENT_ID and
GLOBUS_COMPUTE_CLIENT_SECRET), or tokens from one earlier login on the login
node with the Globus Compute SDK.
"""
from __future__ import annotations

import os
from typing import Any


def make_config(preprocess_endpoint: str, analysis_endpoint: str, workers: int = 4) -> Any:
    from globus_compute_sdk import Executor
    from parsl.config import Config
    from parsl.executors import GlobusComputeExecutor, HighThroughputExecutor
    from parsl.providers import LocalProvider

    _require_credentials()
    return Config(executors=[
        GlobusComputeExecutor(executor=Executor(endpoint_id=str(preprocess_endpoint)), label="preprocess"),
        GlobusComputeExecutor(executor=Executor(endpoint_id=str(analysis_endpoint)), label="analysis"),
        HighThroughputExecutor(
            label="postprocess",
            max_workers_per_node=int(workers),
            address="127.0.0.1",
            provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1),
        ),
    ])


def _require_credentials() -> None:
    """Fail with what to do, rather than wait for a login nobody can complete."""
    if os.environ.get("GLOBUS_COMPUTE_CLIENT_ID") and os.environ.get("GLOBUS_COMPUTE_CLIENT_SECRET"):
        return
    from globus_compute_sdk import Client

    from bundle.errors import SiteProfileError

    if Client(do_version_check=False).app.login_required():
        raise SiteProfileError(
            "the login node has no Globus credentials for the GlobusComputeExecutors",
            "set GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET in the endpoint's environment, "
            "or log in once on the login node with the Globus Compute SDK",
        )
