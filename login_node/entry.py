"""The workflow's own modules, as the driver loads them from the run's bundle.

The entry (``workflow.py``, ``pkg/flow.py``) is imported by name when its
folders are packages, else from its own folder, as ``python path/to/flow.py``
would see it; a config module of the bundle is imported the same way.
"""
from __future__ import annotations

import importlib
import sys
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType
from typing import Any


def import_entry(root: Path, entry: str) -> ModuleType:
    """Import the bundle file ``entry`` (a path relative to the bundle ``root``)."""
    parts = entry[:-3].split("/") if entry.endswith(".py") else entry.split("/")
    packaged = all((root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts)))
    if not packaged:
        parent = str(root.joinpath(*parts[:-1]))
        if parent not in sys.path:
            sys.path.insert(0, parent)
        parts = parts[-1:]
    return importlib.import_module(".".join(parts))


def resolve(value: Any) -> Any:
    """A main() that returns futures gets their results stored instead."""
    if isinstance(value, Future):
        return value.result()
    if isinstance(value, (list, tuple)) and any(isinstance(v, Future) for v in value):
        return type(value)(v.result() if isinstance(v, Future) else v for v in value)
    if isinstance(value, dict) and any(isinstance(v, Future) for v in value.values()):
        return {k: (v.result() if isinstance(v, Future) else v) for k, v in value.items()}
    return value
