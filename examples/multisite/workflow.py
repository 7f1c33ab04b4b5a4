"""A multi-site workflow, bundled: pre-processing on one Globus Compute endpoint,
analysis on another, post-processing on the login node's own workers.

This is the scenario of the Parsl + Globus Compute blog post on Parsl's
GlobusComputeExecutor (one Parsl program whose apps run at several sites): the
DataFlowKernel runs on the login node as a gcbundle run, and its apps pick where
they run by executor label:

    ./experiments/*.csv --preprocess--> clean series --analyse--> events --summarise--> outputs/events.csv
                        (label "preprocess":          (label "analysis":      (label "postprocess":
                         endpoint A)                   endpoint B)             HTEX on the login node)

The raw readings are the files of ./experiments, read by relative path as on
the laptop: the workflow's folder travels with it, so they are there on the
login node (the driver's working directory is the bundle's root). The driver
reads them and hands their contents to the apps, so endpoints A and B need
neither the files nor the bundle.

The labels are all the workflow knows. On real sites `globus_config.py` maps
"preprocess" and "analysis" to Parsl's GlobusComputeExecutor; offline,
`offline.yaml` maps all three to HighThroughputExecutors on this machine.
See README.md in this folder for both commands.
"""
from __future__ import annotations

import csv
import glob
import os
import types
from collections.abc import Callable
from typing import Any

from parsl import python_app


def shipped_by_value(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with empty globals, so that it travels by value.

    The pre-processing and analysis endpoints do not have this bundle. A
    function defined here would be pickled (by dill, inside Globus Compute) with
    a reference to this module, which they cannot import. A copy whose globals
    are a fresh dict is pickled whole instead. The price: its body may use only
    builtins and what it imports itself, which is the right discipline for code
    that runs somewhere else anyway.
    """
    copy = types.FunctionType(
        fn.__code__, {"__name__": "gcbundle_shipped"}, fn.__name__, fn.__defaults__, fn.__closure__
    )
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__doc__ = fn.__doc__
    copy.__qualname__ = fn.__qualname__
    copy.__annotations__ = dict(fn.__annotations__)
    return copy


def _preprocess(segment: list[float], window: int) -> list[float]:
    """Denoise one experiment's readings (trailing moving average over ``window`` samples) and standardise them."""
    import statistics

    smooth = []
    total = 0.0
    for i, x in enumerate(segment):
        total += x
        if i >= window:
            total -= segment[i - window]
        smooth.append(total / min(i + 1, window))
    mean = statistics.fmean(smooth)
    spread = statistics.pstdev(smooth) or 1.0
    return [(x - mean) / spread for x in smooth]


def _analyse(series: list[float], threshold: float) -> dict[str, Any]:
    """Events: local maxima at least ``threshold`` standard deviations high."""
    import platform

    events = [
        i for i in range(1, len(series) - 1)
        if series[i] >= threshold and series[i] >= series[i - 1] and series[i] > series[i + 1]
    ]
    return {"events": events, "peak": max(series), "host": platform.node()}


preprocess = python_app(executors=["preprocess"])(shipped_by_value(_preprocess))
analyse = python_app(executors=["analysis"])(shipped_by_value(_analyse))


@python_app(executors=["postprocess"])
def summarise(out_dir: str, inputs: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """Post-processing on the login node's workers: one CSV row per experiment, and totals."""
    import csv

    path = os.path.join(out_dir, "events.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["experiment", "events", "first_event", "peak"])
        for i, found in enumerate(inputs):
            first = found["events"][0] if found["events"] else ""
            writer.writerow([i, len(found["events"]), first, f"{found['peak']:.3f}"])
    return {
        "events_per_experiment": [len(found["events"]) for found in inputs],
        "analysed_on": sorted({found["host"] for found in inputs}),
        "csv": os.path.basename(path),
    }


def read_experiment(path: str) -> list[float]:
    """One experiment's raw readings: the ``signal`` column of its CSV file."""
    with open(path, newline="") as f:
        return [float(row["signal"]) for row in csv.DictReader(f)]


def main(window: int = 3, threshold: float = 2.5, experiments: str = "experiments") -> dict[str, Any]:
    out_dir = os.environ.get("GCBUNDLE_OUTPUT_DIR", "outputs")
    os.makedirs(out_dir, exist_ok=True)
    files = sorted(glob.glob(os.path.join(experiments, "*.csv")))
    if not files:
        raise FileNotFoundError(f"no experiments in ./{experiments}/ (run make_experiments.py)")
    clean = [preprocess(read_experiment(path), window) for path in files]
    found = [analyse(series, threshold) for series in clean]
    summary = summarise(out_dir, inputs=found).result()
    return {"window": window, "threshold": threshold, "experiments": [os.path.basename(p) for p in files], **summary}
