"""What every benchmark shares: an isolated home, alternating timed runs, one result line.

Benchmarks compare gcbundle with a baseline in the same process, alternating
the two (and swapping which goes first each round) so that a noisy machine
slows both alike, and report the median ratio. They never touch the user's
gcbundle home, registry, caches or config: ``isolate()`` points every one of
them into a temporary directory before ``bundle`` is imported.

Every script prints one or more lines of the form

    RESULT <name>: ratio=<x> (target <op> <y>: met|MISSED) <details>

which is what ``tests/test_bench.py`` looks for.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a fresh clone without `pip install .`
    sys.path.insert(0, str(REPO))


def isolate(prefix: str = "gcbundle-bench-") -> Path:
    """Point GCBUNDLE_HOME, the registry and the XDG dirs into a fresh temp dir (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, True)
    env = {
        "GCBUNDLE_HOME": root / "home",
        "XDG_DATA_HOME": root / "xdg-data",
        "XDG_CONFIG_HOME": root / "xdg-config",
        "XDG_CACHE_HOME": root / "xdg-cache",
        "GCBUNDLE_REGISTRY": root / "registry.sqlite3",
        "GCBUNDLE_CONFIG": root / "xdg-config" / "gcbundle" / "endpoints.yaml",
    }
    for key, value in env.items():
        os.environ[key] = str(value)
    return root


def parser(description: str, runs: int = 5) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--tiny", action="store_true", help="a tiny size, to check that the script runs (no meaningful figures)"
    )
    p.add_argument("--runs", type=int, default=runs, help="rounds of each side (median reported)")
    return p


def parse(p: argparse.ArgumentParser, **tiny: Any) -> argparse.Namespace:
    """The command line's options; with ``--tiny``, the values in ``tiny`` stand in for the sizes given."""
    opts = p.parse_args()
    if opts.tiny:
        for name, value in tiny.items():
            setattr(opts, name, value)
    return opts


def workflow_dir(folder: Path, source: str) -> Path:
    """Make ``folder`` with a ``workflow.py`` that holds ``source``; return the folder."""
    folder.mkdir(parents=True)
    (folder / "workflow.py").write_text(source)
    return folder


def alternate(a: Callable[[], float | None], b: Callable[[], float | None], runs: int,
              setup: Callable[[], None] | None = None) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` ``runs`` times each, alternating and swapping the order every round.

    A callable may return its own measured seconds (when setup inside it must
    not count); otherwise its wall time is used.
    """
    ta: list[float] = []
    tb: list[float] = []
    for i in range(runs):
        order = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        for fn, out in order:
            if setup:
                setup()
            t0 = time.perf_counter()
            got = fn()
            out.append(got if got is not None else time.perf_counter() - t0)
    return ta, tb


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def result(name: str, ratio: float, op: str, target: float, details: str = "", label: str = "ratio") -> bool:
    """Print the result line; return whether the target is met."""
    met = ratio <= target if op == "<=" else ratio >= target
    value = f"{ratio:.6f}" if 0 < abs(ratio) < 0.01 else f"{ratio:.3f}"
    verdict = "met" if met else "MISSED"
    print(f"RESULT {name}: {label}={value} (target {op} {target:g}: {verdict}) {details}".rstrip(), flush=True)
    return met


DIRECT_RUNNER = '''
"""Run a function-mode workflow the way its author would without gcbundle:
load the `local` site profile's Config, call main(), clean up; print main's
return value as JSON."""
import json, sys
sys.path.insert(0, {wf_dir!r})
sys.path.insert(0, {repo!r})
import parsl
from bundle import profiles
from workflow import main
config = profiles.build_config(profiles.substitute(profiles.load("local"), {{}}))
config.run_dir = {run_dir!r}
parsl.load(config)
try:
    value = main(**json.loads(sys.argv[1]) if len(sys.argv) > 1 else {{}})
finally:
    parsl.dfk().cleanup()
print(json.dumps(value))
'''


def direct_runner(wf_dir: Path, run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``wf_dir/workflow.py`` directly (see DIRECT_RUNNER).

    The environment is a user's with the virtualenv activated (HTEX starts
    ``interchange.py`` from PATH) and the workflow's directory on the
    workers' import path.
    """
    import uuid

    script = wf_dir.parent / f"direct-{wf_dir.name}.py"
    script.write_text(DIRECT_RUNNER.format(wf_dir=str(wf_dir), repo=str(REPO), run_dir=str(run_dir)))
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(wf_dir), MARKER: uuid.uuid4().hex}
    atexit.register(sweep_direct, env)
    return [sys.executable, str(script)], env


def run_direct(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300.0) -> Any:
    """Run a workflow directly (``direct_runner``'s command and environment) to its end: main()'s value,
    which the runner prints last, as JSON."""
    done = subprocess.run(argv, check=True, timeout=timeout, cwd=str(cwd), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


#: Set in the direct runs' environment; every process they start (interchange,
#: workers) inherits it, so ``sweep_direct`` finds what a run left behind.
MARKER = "GCBUNDLE_BENCH_DIRECT"


def stop_direct(proc: subprocess.Popen[Any], env: dict[str, str], grace: float = 30.0) -> None:
    """Stop a direct run as a user would (Ctrl-C: its DFK cleans up), then anything it left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
    sweep_direct(env)


def sweep_direct(env: dict[str, str]) -> int:
    """Stop the processes of a direct run still alive (a killed DFK leaves its interchange and workers)."""
    from login_node.procs import terminate  # gcbundle is imported only after isolate() (see the docstring)

    needle = f"{MARKER}={env[MARKER]}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    if pids:
        terminate(pids, grace=5.0)
    return len(pids)


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def make_tree(root: Path, files: int, total: int, seed: int = 7) -> int:
    """A deterministic workflow-like tree of ``files`` files adding up to about ``total`` bytes.

    Half the files are text (Python-like source and CSV: gzip shrinks them about
    3x), half binary (random bytes, which do not compress, and packed floats,
    which compress a little); sizes are skewed like a real project's: many small
    files and a few large ones. A ``workflow.py`` with ``main`` is the entry point.
    Returns the bytes written.
    """
    import random
    import struct

    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 12))) for _ in range(4000)]
    pool = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(40000)).encode()
    weights = [rng.paretovariate(1.2) for _ in range(files)]
    scale = total / sum(weights)
    root.mkdir(parents=True, exist_ok=True)
    (root / "workflow.py").write_text("def main(**args):\n    return args\n")
    written = 0
    for i, w in enumerate(weights):
        size = max(16, int(w * scale))
        rel = Path(f"d{i % 37:02d}") / f"s{i % 5}" / (f"f{i:05d}.py" if i % 2 == 0 else f"f{i:05d}.bin")
        if i % 2 == 0:
            start = rng.randrange(0, max(1, len(pool) - size))
            data = (pool[start:start + size] * (size // max(1, len(pool)) + 1))[:size]
        elif i % 4 == 1:
            data = rng.randbytes(size)
        else:
            n = size // 8 + 1
            data = struct.pack(f"<{n}d", *(rng.gauss(0, 1) for _ in range(n)))[:size]
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
    return written
