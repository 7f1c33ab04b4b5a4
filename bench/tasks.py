"""Transport tasks per operation: submit, status, wait, logs, results of N bytes, cancel.

    .venv/bin/python bench/tasks.py           # bundles and results of a few chunks
    .venv/bin/python bench/tasks.py --tiny    # the same, smaller

Targets (issue 7): status 1 task; results of N bytes ceil(N / chunk) + 1 tasks.

Counted by a ``Tally`` observing the transport (``bundle.transport.Tally``), on
the local transport and on the globus transport. The globus transport runs
against the HTTP-level fake of the Globus Compute service that its tests use
(tests/fake_globus.py: the SDK's real Client and HTTP layer, tasks run by the
endpoint's real execute_task, on this machine); for it the HTTPS requests
per operation are counted too. Task counts do not depend on timing, so one
round.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import fmt_bytes, isolate, parser, result, workflow_dir

EP = "2b3c4d5e-0000-4000-8000-00000000e0e0"

WORKFLOW = '''
import os, time


def main(nbytes=0, seconds=0.0):
    out = os.environ["GCBUNDLE_OUTPUT_DIR"]
    left, i = nbytes, 0
    while left > 0:
        n = min(left, 3_000_000)
        with open(os.path.join(out, f"part{i}.bin"), "wb") as f:
            f.write(os.urandom(n))
        left, i = left - n, i + 1
    time.sleep(seconds)
    return nbytes
'''


#: Per operation: the tasks sent, by task name, and the HTTPS requests (None when not counted).
Rows = dict[str, tuple[dict[str, int], int | None]]


def measure(
    tally: Any, fn: Callable[[], Any], requests: Callable[[], int] | None
) -> tuple[dict[str, int], int | None, Any]:
    before = dict(tally.calls)
    r0 = requests() if requests else None
    value = fn()
    counts = {k: v - before.get(k, 0) for k, v in tally.calls.items() if v - before.get(k, 0)}
    return counts, (requests() - r0 if requests and r0 is not None else None), value


def scenario(
    label: str,
    make_transport: Callable[[], Any],
    root: Path,
    wf_small: Path,
    wf_big: Path,
    nbytes: int,
    requests: Callable[[], int] | None = None,
    wait_ok: bool = True,
) -> Rows:
    """Every operation once on a fresh transport; the tasks (and HTTPS requests) each sent."""
    # gcbundle is imported only now, after isolate() (see _common)
    import bundle
    from bundle.limits import CHUNK_BYTES
    from bundle.registry import Registry
    from bundle.transport import Tally

    t = make_transport()
    tally = Tally.attach(t)
    endpoint = getattr(t, "endpoint_id", "local")
    reg = Registry(root / f"registry-{label}.sqlite3")
    rows: Rows = {}

    def op(name: str, fn: Callable[[], Any]) -> Any:
        counts, reqs, value = measure(tally, fn, requests)
        rows[name] = (counts, reqs)
        return value

    def submit(workflow: Path, **kwargs: Any) -> Any:
        return bundle.submit(workflow, endpoint, transport=t, registry=reg, **kwargs)

    run = op("submit (new small bundle, sent inline)", lambda: submit(wf_small, args={"nbytes": nbytes}))
    op("submit again (bundle cached)", lambda: submit(wf_small, args={"nbytes": 0}))
    big = os.path.getsize(wf_big / "data.bin")
    op(f"submit (new {fmt_bytes(big)} bundle, staged in chunks)", lambda: submit(wf_big))
    run = bundle.Run(run.id, endpoint, registry=reg, transport=t)
    op("status", run.status)
    if wait_ok:
        op("wait (run of ~3 s)", lambda: submit(wf_small, args={"seconds": 3.0}).wait())
    run.wait() if wait_ok else _wait_quietly(run)
    op("logs (driver log)", lambda: "".join(run.logs("driver")))
    results_dir = root / f"results-{label}"
    fetched = op(f"results of the run ({nbytes // CHUNK_BYTES}+ chunks)", lambda: run.results(results_dir))
    rows["_results_bytes"] = ({"bytes": fetched.bytes}, None)
    op("results again (nothing new)", lambda: run.results(results_dir))
    long_run = submit(wf_small, args={"seconds": 60.0})
    op("cancel", lambda: long_run.cancel(grace=10))
    t.close()
    return rows


def _wait_quietly(run: Any) -> None:
    import time

    while run.status().get("state") not in ("succeeded", "failed", "cancelled", "lost"):
        time.sleep(0.5)


def globus_scenario(root: Path, *args: Any) -> tuple[Rows | None, str]:
    """The same operations through the globus transport and the fake service, or why not."""
    try:
        import responses

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.fake_globus import FakeComputeService, store_login
    except ImportError as exc:
        return None, f"globus transport not measured: {exc} (install the test extra: pip install -e '.[test]')"
    # after isolate(), and only when the fake service is there to talk to
    import bundle.transport.globus as g
    from bundle.transport.globus import GlobusTransport, RateLimiter

    compute_dir = root / "globus_compute"
    os.environ["GLOBUS_COMPUTE_USER_DIR"] = str(compute_dir)
    for key in ("GLOBUS_COMPUTE_CLIENT_ID", "GLOBUS_COMPUTE_CLIENT_SECRET", "GLOBUS_SDK_ENVIRONMENT"):
        os.environ.pop(key, None)
    store_login(compute_dir)
    os.environ["GCBUNDLE_HOME"] = str(root / "home-globus")  # a login node that has seen nothing yet

    class Clock:  # the fake runs each task at once; spend no real time in polls or pacing
        t = 1000.0

        def now(self) -> float:
            return self.t

        def sleep(self, s: float) -> None:
            self.t += s

    clock = Clock()
    g._SHARED_LIMITER = RateLimiter(clock=clock.now, sleep=clock.sleep)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        svc = FakeComputeService(rsps, EP, root / "endpoint-tasks")
        def transport() -> GlobusTransport:
            return GlobusTransport(EP, label="bench", interactive=False, sleep=clock.sleep, clock=clock.now)

        try:
            rows = scenario("globus", transport, root, *args, requests=lambda: len(svc.log), wait_ok=False)
        finally:
            svc.close()
    return rows, ""


def main() -> int:
    p = parser(__doc__.splitlines()[0], runs=1)
    opts = p.parse_args()
    root = isolate()
    # gcbundle is imported only now, after isolate() (see _common)
    from bundle.limits import CHUNK_BYTES
    from bundle.transport.local import LocalTransport

    chunks = 1.5 if opts.tiny else 3.5
    nbytes = int(CHUNK_BYTES * chunks)
    wf_small = workflow_dir(root / "small", WORKFLOW) / "workflow.py"
    wf_big = workflow_dir(root / "big", WORKFLOW)
    (wf_big / "data.bin").write_bytes(os.urandom(int(CHUNK_BYTES * (1.2 if opts.tiny else 2.5))))


    local = scenario("local", LocalTransport, root, wf_small, wf_big, nbytes)
    remote, why = globus_scenario(root, wf_small, wf_big, nbytes)
    print(f"chunk = {fmt_bytes(CHUNK_BYTES)} ({CHUNK_BYTES} bytes)")
    print(f"{'operation':44s} {'local: tasks':>14s}   {'globus: tasks':>14s} {'HTTPS requests':>15s}   tasks sent")
    for name, (counts, _) in local.items():
        if name.startswith("_"):
            continue
        g_counts, g_reqs = remote.get(name, ({}, None)) if remote else ({}, None)
        if g_counts:
            g_text = f"{sum(g_counts.values()):>14d} {g_reqs if g_reqs is not None else '-':>15}"
        else:
            g_text = f"{'-':>14s} {'-':>15s}"
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"{name:44s} {sum(counts.values()):>14d}   {g_text}   {detail}")
    if why:
        print(why)
    status = sum(local["status"][0].values())
    result("tasks: status", status, "<=", 1, "task (local)", label="tasks")
    results_name = next(k for k in local if k.startswith("results of"))
    got = sum(local[results_name][0].values())
    n = local["_results_bytes"][0]["bytes"]
    expected = -(-n // CHUNK_BYTES) + 1
    result(f"tasks: results of {n} bytes", got, "<=", expected,
           f"tasks (local); ceil({n} / {CHUNK_BYTES}) + 1 = {expected}", label="tasks")
    if remote:
        g_status = sum(remote["status"][0].values())
        g_got = sum(remote[results_name][0].values())
        g_n = remote["_results_bytes"][0]["bytes"]
        result("tasks: status (globus)", g_status, "<=", 1,
               f"task, {remote['status'][1]} HTTPS requests", label="tasks")
        result(f"tasks: results of {g_n} bytes (globus)", g_got, "<=", -(-g_n // CHUNK_BYTES) + 1,
               f"tasks, {remote[results_name][1]} HTTPS requests", label="tasks")
        print("globus HTTPS requests: one submit and at least one status poll per task "
              "(the fake finishes tasks at once; a real endpoint takes longer, so more polls, "
              "paced at most 18 requests per 10 s), plus one registration the first time "
              "each task function is used (remembered on disk), plus one endpoint status check per transport")
    return 0


if __name__ == "__main__":
    sys.exit(main())
