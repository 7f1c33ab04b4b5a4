"""5,000 no-op python apps in a bundled run, against the same workflow and HTEX Config run directly.

    .venv/bin/python bench/throughput.py           # 5,000 apps, 5 rounds
    .venv/bin/python bench/throughput.py --tiny    # 200 apps, 1 round

Target (issue 7): bundled apps/s >= 0.95x direct.

The workflow times itself: one app first (so the HTEX block is up), then it
submits N no-op apps and waits for all of them; apps/s = N / that time. The
bundled run goes through the detached driver (which wraps dfk.submit to
count tasks, writes heartbeats and the report); the direct run is the same
main() under a bare DFK with the same Config (the `local` site profile:
HTEX, 2 workers, LocalProvider).
"""
from __future__ import annotations

import json
import sys

from _common import alternate, direct_runner, isolate, median, parse, parser, result, run_direct, workflow_dir

WORKFLOW = '''
import time

from parsl import python_app


@python_app
def noop():
    return None


def main(n=5000):
    noop().result()  # the block is up and the workers are connected
    t0 = time.perf_counter()
    futures = [noop() for _ in range(n)]
    for f in futures:
        f.result()
    return {"n": n, "seconds": time.perf_counter() - t0}
'''


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--apps", type=int, default=5000)
    opts = parse(p, apps=200, runs=1)
    root = isolate()
    wf_dir = workflow_dir(root / "wf", WORKFLOW)
    direct_cmd, env = direct_runner(wf_dir, root / "direct-runinfo")

    # gcbundle is imported only now, after isolate() (see _common)
    import bundle
    from bundle.transport.local import LocalTransport

    transport = LocalTransport()
    rates: dict[str, list[float]] = {"bundled": [], "direct": []}

    def bundled() -> float:
        run = bundle.submit(
            wf_dir / "workflow.py", "local", args={"n": opts.apps}, transport=transport, wait=True
        )
        assert run.last_state["state"] == "succeeded", run.last_state
        value = run.result(root / "results")
        rates["bundled"].append(value["n"] / value["seconds"])
        return value["seconds"]

    def direct() -> float:
        value = run_direct([*direct_cmd, json.dumps({"n": opts.apps})], env, wf_dir, timeout=600)
        rates["direct"].append(value["n"] / value["seconds"])
        return float(value["seconds"])

    alternate(bundled, direct, opts.runs)
    transport.close()
    b, d = median(rates["bundled"]), median(rates["direct"])
    per_round = {side: [round(r) for r in rates[side]] for side in ("bundled", "direct")}
    print(f"apps/s per round: bundled {per_round['bundled']}, direct {per_round['direct']}")
    result("throughput: bundled / direct apps/s", b / d, ">=", 0.95,
           f"bundled {b:.0f} apps/s, direct {d:.0f} apps/s; {opts.apps} no-op apps, median of {opts.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
