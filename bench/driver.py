"""The detached driver's CPU and memory while its workflow waits on long apps, against a bare DFK.

    .venv/bin/python bench/driver.py           # 3 rounds, 30 s windows
    .venv/bin/python bench/driver.py --tiny    # 1 round, 3 s window

Targets (issue 7): the driver's CPU <= 1% of a core; its RSS <= 1.2x the bare DFK's.

Each round starts the same workflow twice, side by side, so both see the same
machine: once bundled (the detached driver on the local endpoint, with its
default 30 s heartbeat) and once directly (a python process that loads the
same Config, the `local` site profile, and calls main()). The workflow
submits two apps that sleep far longer than the window; once both are
running, the CPU time (utime + stime from /proc) of the driver process and
of the direct process is sampled over the window, and their RSS at its end.
Only that one process is measured on each side: the interchange and workers
are the same programs on both.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _common import direct_runner, fmt_bytes, isolate, median, parse, parser, result, stop_direct, workflow_dir

WORKFLOW = '''
import os, time
from parsl import python_app


@python_app
def long_app(seconds, flag):
    import os, time
    open(flag, "w").close()
    time.sleep(seconds)
    return seconds


def main(seconds=120, flags="."):
    futures = [long_app(seconds, os.path.join(flags, f"{i}-{os.getpid()}")) for i in range(2)]
    return sum(f.result() for f in futures)
'''

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    p = parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("--window", type=float, default=30.0, help="seconds of measurement per round")
    opts = parse(p, runs=1, window=3.0)
    root = isolate()
    wf_dir = workflow_dir(root / "wf", WORKFLOW)
    direct_cmd, env = direct_runner(wf_dir, root / "direct-runinfo")

    # gcbundle is imported only now, after isolate() (see _common)
    import bundle
    from bundle.transport.local import LocalTransport

    cpu: dict[str, list[float]] = {"driver": [], "direct": []}
    rss: dict[str, list[int]] = {"driver": [], "direct": []}
    seconds = opts.window + 60
    with LocalTransport() as transport:
        for i in range(opts.runs):
            flags = root / f"flags{i}"
            (flags / "b").mkdir(parents=True)
            (flags / "d").mkdir()
            args = {"seconds": seconds, "flags": str(flags)}
            bundled_args = {**args, "flags": str(flags / "b")}
            run = bundle.submit(wf_dir / "workflow.py", "local", args=bundled_args, transport=transport)
            direct = subprocess.Popen(
                [*direct_cmd, json.dumps({**args, "flags": str(flags / "d")})],
                cwd=str(wf_dir),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                driver_pid = wait_for(lambda r=run: r.status().get("pid"), 60, "the driver")
                wait_for(
                    lambda f=flags: len(list((f / "b").iterdir())) >= 2 and len(list((f / "d").iterdir())) >= 2,
                    120,
                    "both workflows' apps to start",
                )
                time.sleep(1.0)  # let start-up settle
                pids = {"driver": int(driver_pid), "direct": direct.pid}
                c0 = {k: cpu_seconds(p) for k, p in pids.items()}
                t0 = time.monotonic()
                time.sleep(opts.window)
                dt = time.monotonic() - t0
                for k, pid in pids.items():
                    cpu[k].append((cpu_seconds(pid) - c0[k]) / dt)
                    rss[k].append(rss_bytes(pid))
                print(f"round {i + 1}: CPU driver {cpu['driver'][-1]:.2%}, bare DFK {cpu['direct'][-1]:.2%}; "
                      f"RSS driver {fmt_bytes(rss['driver'][-1])}, bare DFK {fmt_bytes(rss['direct'][-1])}", flush=True)
            finally:
                stop_direct(direct, env)
                run.cancel(grace=10)
    d_cpu, b_cpu = median(cpu["driver"]), median(cpu["direct"])
    d_rss, b_rss = median([float(x) for x in rss["driver"]]), median([float(x) for x in rss["direct"]])
    result("driver: CPU while waiting (fraction of a core)", d_cpu, "<=", 0.01,
           f"driver {d_cpu:.2%}, bare DFK {b_cpu:.2%} of a core over {opts.window:g} s", label="cpu")
    rss_details = f"driver {fmt_bytes(d_rss)}, bare DFK {fmt_bytes(b_rss)}"
    result("driver: RSS driver / bare DFK", d_rss / b_rss, "<=", 1.2, rss_details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
