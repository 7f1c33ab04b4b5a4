"""Versions of the parts that must agree between client, login node and workers."""
from __future__ import annotations

import platform
from importlib import metadata

from bundle import __version__

PACKAGES = ("parsl", "globus-compute-sdk", "globus-compute-endpoint")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def local_versions() -> dict[str, str]:
    """The versions of this side, as recorded in manifests, reports and doctor."""
    out = {"gcbundle": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        out[name] = package_version(name)
    return out
