"""A helper module: packed with the workflow because workflow.py imports it."""
from __future__ import annotations


def summarize(values: list[int]) -> dict[str, float]:
    return {"sum": sum(values), "mean": sum(values) / len(values) if values else 0.0}
