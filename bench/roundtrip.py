"""Submit -> results of a 5 s workflow on the `local` endpoint, against python running it directly.

    .venv/bin/python bench/roundtrip.py           # 5 s workflow, 5 rounds
    .venv/bin/python bench/roundtrip.py --tiny    # a 0.5 s workflow, 1 round

Targets (issue 7): added time <= 1.0 s; ratio <= 1.2.

Beside it, the time to the first result (issue 13): a trivial workflow (one
app returning 1) from `bundle.submit` to main()'s value back in this process,
through the results package (`run.result()`), median of the same rounds;
target < 3 s. The driver runs Parsl's first scaling pass when the DFK loads,
not one `strategy_period` (5 s) later.

Direct: `python direct.py` loads the same Config (the `local` site profile:
HTEX + LocalProvider), calls main(), cleans up the DFK; timed from process
start to exit. gcbundle: `bundle.submit(..., wait=True)` then
`run.results(dir)` in this process, with a fresh local transport each round
(so the transport's worker start-up counts); timed from submit to the verified
results on disk. Both include the interpreter and Parsl start-up of the
process that runs the DFK (the detached driver, or direct.py).
"""
from __future__ import annotations

import json
import sys
import time

from _common import alternate, direct_runner, fmt_s, isolate, median, parse, parser, result, run_direct, workflow_dir

WORKFLOW = '''
"""A workflow that takes SECONDS on the local profile's 2 workers: two waves of apps, then one that joins them."""
import os
import time

from parsl import python_app

SECONDS = {seconds}


@python_app
def work(i, seconds):
    import time
    time.sleep(seconds)
    return i


@python_app
def total(*parts):
    return sum(parts)


def main(n=4):
    parts = [work(i, SECONDS / 2) for i in range(n)]  # 2 workers: two waves
    value = total(*parts).result()
    with open(os.path.join(os.environ.get("GCBUNDLE_OUTPUT_DIR", "."), "total.txt"), "w") as f:
        f.write(str(value))
    return value
'''


TRIVIAL = '''
from parsl import python_app


@python_app
def one():
    return 1


def main():
    return one().result()
'''


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="how long the workflow runs")
    opts = parse(p, seconds=0.5, runs=1)
    root = isolate()
    wf_dir = workflow_dir(root / "wf", WORKFLOW.format(seconds=opts.seconds))
    direct_cmd, env = direct_runner(wf_dir, root / "direct-runinfo")
    out = root / "results"

    # gcbundle is imported only now, after isolate() (see _common)
    import bundle
    from bundle.transport.local import LocalTransport

    breakdown: list[dict[str, float]] = []

    def bundled() -> float:
        t0 = time.perf_counter()
        with LocalTransport() as transport:
            run = bundle.submit(wf_dir / "workflow.py", "local", transport=transport, wait=True)
            t_done = time.perf_counter()
            fetched = run.results(out)
        t1 = time.perf_counter()
        assert run.last_state["state"] == "succeeded", run.last_state
        assert (fetched.path / "outputs" / "total.txt").read_text() == "6"
        report = json.loads((fetched.path / "report.json").read_text())
        tm = report["timings"]
        state = json.loads((fetched.path / "state.json").read_text())
        breakdown.append({
            "total": t1 - t0, "wait_end": t_done - t0, "results": t1 - t_done,
            "driver_to_dfk": tm.get("dfk_loaded", 0) - tm["started"],
            "main": tm.get("main_returned", 0) - tm.get("dfk_loaded", 0),
            "cleanup_report": state.get("updated", 0) - tm.get("main_returned", 0),
        })
        return t1 - t0

    def plain() -> float:
        t0 = time.perf_counter()
        value = run_direct(direct_cmd, env, wf_dir)
        assert value == 6, value
        return time.perf_counter() - t0

    plain()  # warm the page cache and the byte-code caches
    g, d = alternate(bundled, plain, opts.runs)
    added = median(g) - median(d)
    b = {k: median([x[k] for x in breakdown]) for k in breakdown[0]}
    print(f"gcbundle medians: total {fmt_s(b['total'])} = until state succeeded {fmt_s(b['wait_end'])} "
          f"+ results {fmt_s(b['results'])}; "
          f"in the driver: start -> DFK loaded {fmt_s(b['driver_to_dfk'])}, main {fmt_s(b['main'])}, "
          f"main returned -> final state {fmt_s(b['cleanup_report'])}")
    result("roundtrip: added time (gcbundle - direct)", added, "<=", 1.0,
           f"seconds; gcbundle {fmt_s(median(g))}, direct {fmt_s(median(d))}", label="added_s")
    result("roundtrip: gcbundle / direct", median(g) / median(d), "<=", 1.2,
           f"{opts.seconds:g} s workflow, median of {opts.runs}")

    trivial_dir = workflow_dir(root / "trivial", TRIVIAL)
    trivial_cmd, trivial_env = direct_runner(trivial_dir, root / "trivial-direct-runinfo")

    def first_bundled() -> float:
        t0 = time.perf_counter()
        with LocalTransport() as transport:
            run = bundle.submit(trivial_dir / "workflow.py", "local", transport=transport, wait=True)
            value = run.result(root / "trivial-results")
        assert value == 1, value
        return time.perf_counter() - t0

    def first_plain() -> float:
        t0 = time.perf_counter()
        value = run_direct(trivial_cmd, trivial_env, trivial_dir)
        assert value == 1, value
        return time.perf_counter() - t0

    fg, fd = alternate(first_bundled, first_plain, opts.runs)
    result("roundtrip: time to first result on local (trivial workflow)", median(fg), "<=", 3.0,
           f"seconds, submit -> main()'s value, median of {opts.runs}; plain Parsl with the same Config "
           f"(which waits one strategy_period for its first block) {fmt_s(median(fd))}", label="seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
