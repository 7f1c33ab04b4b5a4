"""Fault injection, measured: what survives, what is repeated, what is left behind.

    .venv/bin/python bench/faults.py [--kills 3] [--tiny]

Runs on the embedded local endpoint in a temporary GCBUNDLE_HOME, with real
drivers, DFKs and HTEX workers. Prints: faults injected, runs recovered, app
executions repeated (cached apps that had completed and ran again: must be 0),
orphaned processes (must be 0), runs lost by a client stopped at the launch
(must be 0), hostile bundles tried and rejected, and hostile login-node replies
tried, with the tracebacks and escapes they caused (both must be 0).
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# gcbundle's modules (and the tests' helpers, which import them) are imported
# inside each part, after main() has pointed every gcbundle path into a
# temporary directory (_env).

WORKFLOW = '''
import os, time
from parsl import python_app

@python_app(cache=True)
def step(i, marks, seconds):
    import os, time, uuid
    time.sleep(seconds)
    open(os.path.join(marks, f"step{i}-{uuid.uuid4().hex}"), "w").close()
    return i

def main(marks, steps=6, seconds=1.0):
    return sum(step(i, marks, seconds).result() for i in range(steps))
'''


def _env(tmp: Path) -> None:
    os.environ.update({
        "GCBUNDLE_HOME": str(tmp / "home"), "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_CACHE_HOME": str(tmp / "cache"), "GCBUNDLE_REGISTRY": str(tmp / "registry.sqlite3"),
        "GCBUNDLE_HEARTBEAT_SECONDS": "1", "GCBUNDLE_POLL_SECONDS": "0.5",
    })


def driver_kills(tmp: Path, kills: int, steps: int, seconds: float, reboot_every: int = 2) -> dict[str, int]:
    """Kill the driver (and, every other time, every process of the run: a reboot) at a random moment, then resume."""
    from bundle import api
    from login_node.procs import run_processes
    from tests.faults import executions

    figures = {"faults": 0, "recovered": 0, "repeated": 0, "orphans": 0, "lost_seconds_max": 0}
    rng = random.Random(1234)
    for k in range(kills):
        wf = tmp / f"wf{k}"
        wf.mkdir()
        (wf / "workflow.py").write_text(WORKFLOW)
        marks = tmp / f"marks{k}"
        marks.mkdir()
        run = api.submit(wf / "workflow.py", "local", args={"marks": str(marks), "steps": steps, "seconds": seconds})
        time.sleep(rng.uniform(1.0, steps * seconds * 0.8 + 2.0))
        st = run.status()
        if st["state"] not in ("starting", "running"):
            continue
        completed_before = set(executions(marks))
        os.kill(st["pid"], signal.SIGKILL)
        if k % reboot_every == 1:
            for pid in run_processes(run.id):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        figures["faults"] += 1
        t0 = time.monotonic()
        while run.status()["state"] != "lost":
            time.sleep(0.1)
        figures["lost_seconds_max"] = max(figures["lost_seconds_max"], round(time.monotonic() - t0 + 0.5))
        new = api.resume(run.id, wait=True)
        if new.last_state["state"] == "succeeded" and new.result(tmp / "res") == sum(range(steps)):
            figures["recovered"] += 1
        counts = executions(marks)
        figures["repeated"] += sum(1 for i in completed_before if counts.get(i, 0) > 1)
        time.sleep(1.0)
        figures["orphans"] += len(run_processes(run.id)) + len(run_processes(new.id))
    return figures


def worker_kill_during_staging(tmp: Path) -> dict[str, int]:
    import threading

    from bundle import api, archive
    from bundle.errors import TransportError
    from bundle.limits import CHUNK_BYTES
    from bundle.transport.local import LocalTransport
    from tests.faults import worker_pid

    wf = tmp / "big"
    wf.mkdir()
    (wf / "workflow.py").write_text("def main():\n    return 1\n")
    (wf / "blob.bin").write_bytes(os.urandom(CHUNK_BYTES + 2_000_000))

    class Kills(LocalTransport):
        def _run(self, task, req):  # type: ignore[no-untyped-def]
            if task == "stage" and req["index"] == 1:
                threading.Timer(0.03, lambda: os.kill(worker_pid(self) or os.getpid(), signal.SIGKILL)).start()
            return super()._run(task, req)

    try:
        api.submit(wf, "local", transport=Kills())
    except TransportError:
        pass
    bad_entries = 0
    for entry in (Path(os.environ["GCBUNDLE_HOME"]) / "cache").glob("*.tar.gz"):
        try:
            archive.verify(entry)
        except Exception:  # noqa: BLE001
            bad_entries += 1
    run = api.submit(wf, "local", wait=True)
    return {"faults": 1, "recovered": int(run.last_state["state"] == "succeeded" and bad_entries == 0)}


def client_kill_during_results(tmp: Path) -> dict[str, int]:
    from bundle import api
    from bundle.limits import CHUNK_BYTES

    wf = tmp / "outs"
    wf.mkdir()
    (wf / "workflow.py").write_text(
        "import os\n\ndef main():\n    out = os.environ['GCBUNDLE_OUTPUT_DIR']\n"
        "    for i in range(4):\n"
        f"        open(os.path.join(out, f'p{{i}}.bin'), 'wb').write(os.urandom({CHUNK_BYTES}))\n"
    )
    run = api.submit(wf / "workflow.py", "local", wait=True)
    dest = tmp / "results"
    partial = dest / f".{run.id}.partial"
    proc = subprocess.Popen([sys.executable, "-m", "bundle.cli", "results", run.id, "-o", str(dest)], cwd=str(ROOT))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if partial.is_dir() and sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) > CHUNK_BYTES:
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    fetched = run.results(dest)
    whole = all((fetched.path / "outputs" / f"p{i}.bin").stat().st_size == CHUNK_BYTES for i in range(4))
    ok = fetched.fetched_bytes < fetched.bytes and whole
    return {"faults": 1, "recovered": int(ok)}


def repeated_cancels(tmp: Path, times: int) -> dict[str, int]:
    from bundle import api
    from login_node.procs import run_processes

    wf = tmp / "sleepy"
    wf.mkdir()
    (wf / "workflow.py").write_text(
        "from parsl import python_app\n\n@python_app\ndef nap():\n    import time\n    time.sleep(600)\n\n"
        "def main():\n    return [f.result() for f in [nap(), nap()]]\n"
    )
    figures = {"faults": 0, "recovered": 0, "orphans": 0}
    for _ in range(times):
        run = api.submit(wf / "workflow.py", "local")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(run_processes(run.id)) < 3:
            time.sleep(0.2)
        st = run.cancel(grace=10)["state"]
        figures["faults"] += 1
        figures["recovered"] += int(st["state"] == "cancelled")
        time.sleep(0.5)
        figures["orphans"] += len(run_processes(run.id))
    return figures


def hostile_cases(tmp: Path) -> tuple[int, int]:
    """Every crafted bundle of the test corpus, through the login node's extraction."""
    import tarfile

    from bundle import archive
    from bundle.errors import BundleError
    from tests.hostile import manifest_for, manifest_member, reg, special, write_tar

    wf = b"def main():\n    return 1\n"
    cases = []
    for name in ["/abs.py", "../up.py", "a/../../up.py", "./dot.py", "a//b.py", "caf\u0065\u0301.py"]:
        m = manifest_for({"workflow.py": wf})
        m["files"].append({"path": name, "size": 1, "mode": 420, "sha256": "0" * 64})
        m.pop("digest")
        cases.append([manifest_member(m), reg("workflow.py", wf), reg(name, b"x")])
    for kind, link in [(tarfile.SYMTYPE, "/etc/passwd"), (tarfile.SYMTYPE, "../x"), (tarfile.LNKTYPE, "/etc/passwd"),
                       (tarfile.CHRTYPE, ""), (tarfile.BLKTYPE, ""), (tarfile.FIFOTYPE, ""), (tarfile.DIRTYPE, "")]:
        manifest = manifest_member(manifest_for({"a.py": b"", "workflow.py": wf}))
        cases.append([manifest, special("a.py", kind, link), reg("workflow.py", wf)])
    m = manifest_for({"workflow.py": wf})
    cases += [
        [manifest_member(m), reg("workflow.py", wf), reg("workflow.py", wf)],
        [manifest_member(m), reg("workflow.py", wf.replace(b"1", b"2"))],
        [manifest_member({**m, "digest": "f" * 64}), reg("workflow.py", wf)],
        [manifest_member(b"{bad json"), reg("workflow.py", wf)],
        [reg("workflow.py", wf), manifest_member(m)],
        [manifest_member(manifest_for({"A.txt": b"", "a.txt": b"", "workflow.py": wf})),
         reg("A.txt", b""), reg("a.txt", b""), reg("workflow.py", wf)],
        [
            manifest_member(manifest_for({f"f/{i:06d}": b"" for i in range(100_000)} | {"workflow.py": wf})),
            reg("workflow.py", wf),
        ],
    ]
    tried = rejected = 0
    for i, members in enumerate(cases):
        path = write_tar(tmp / f"hostile{i}.tar.gz", members)
        tried += 1
        try:
            archive.extract(path, tmp / f"out{i}")
        except BundleError:
            rejected += int(not (tmp / f"out{i}").exists())
    bomb = tmp / "bomb.tar.gz"
    import gzip
    import io

    m = manifest_for({"workflow.py": wf})
    m["files"].insert(0, {"path": "a.bin", "size": 64 * 1024**3, "mode": 420, "sha256": "0" * 64})
    m.pop("digest")
    with gzip.open(bomb, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info, data = manifest_member(m)
        tar.addfile(info, io.BytesIO(data))
    tried += 1
    try:
        archive.extract(bomb, tmp / "outbomb")
    except BundleError:
        rejected += 1
    return tried, rejected


def hostile_replies(tmp: Path) -> dict[str, int]:
    """Every hostile login-node reply of the test corpus, through the real CLI.

    A traceback is any exception other than the CLI's own exit, or a
    "Traceback" in its output; an escape is a file written anywhere but the
    results folder, or an error that is not one line, or an escape sequence
    on the terminal.
    """
    from click.testing import CliRunner

    from bundle import api, transport
    from bundle import doctor as client_doctor
    from bundle.cli import main as cli
    from bundle.registry import Registry
    from tests.hostile_replies import ARGS, CASES, RUN, HostileLoginNode
    from tests.registry_rows import row

    root = tmp / "hostile-replies"
    wf = root / "wf"
    wf.mkdir(parents=True)
    (wf / "workflow.py").write_text("def main():\n    return 1\n")
    Registry().adopt(row(RUN))
    # Every module the client reaches the login node through (the client doctor imports get_transport itself).
    patched = (api, transport, client_doctor)
    saved = [module.get_transport for module in patched]
    figures = {"tried": 0, "refused": 0, "tracebacks": 0, "escapes": 0}
    try:
        for i, (command, replies) in enumerate(CASES.values()):
            dest = root / f"res{i}"
            before = {p for p in root.rglob("*") if not str(p).startswith(str(dest))}
            hostile = HostileLoginNode(replies)

            def to_hostile(endpoint: str, h: HostileLoginNode = hostile) -> HostileLoginNode:
                return h

            for module in patched:
                module.get_transport = to_hostile  # type: ignore[attr-defined]
            try:
                res = CliRunner().invoke(cli, [a.format(dest=dest, wf=wf / "workflow.py") for a in ARGS[command]])
            finally:
                hostile.close()
            Registry().update(RUN, state="running")  # some replies mark it gone: each case starts alike
            figures["tried"] += 1
            figures["refused"] += int(res.exit_code not in (0, 1))
            raised = res.exception is not None and not isinstance(res.exception, SystemExit)
            figures["tracebacks"] += int(raised or "Traceback" in res.output)
            after = {p for p in root.rglob("*") if not str(p).startswith(str(dest))}
            lines = [line for line in res.stderr.splitlines() if line.startswith("gcbundle: error:")]
            figures["escapes"] += int(bool(after - before) or len(lines) != 1 or "\x1b" in res.output)
    finally:
        for module, original in zip(patched, saved, strict=True):
            module.get_transport = original  # type: ignore[attr-defined]
    return figures


def launch_kills(tmp: Path) -> dict[str, int]:
    """A client stopped at the launch, before and after the task went out: is the run still reachable?"""
    from bundle import api
    from bundle.registry import Registry
    from bundle.transport.local import LocalTransport

    wf = tmp / "launchkill"
    wf.mkdir()
    (wf / "workflow.py").write_text("print('done')\n")
    lost = 0
    for after_send in (False, True):
        class Dies(LocalTransport):
            send_first = after_send  # bound now, not when call() runs

            def call(self, task, **fields):  # type: ignore[no-untyped-def]
                if task == "launch":
                    if self.send_first:
                        super().call(task, **fields)
                    raise KeyboardInterrupt
                return super().call(task, **fields)

        t = Dies()
        before = {r.run_id for r in Registry().list(0)}
        try:
            api.submit(wf / "workflow.py", "local", mode="script", transport=t)
        except KeyboardInterrupt:
            pass
        finally:
            t.close()
        new = [r for r in Registry().list(0) if r.run_id not in before]
        if len(new) != 1:
            lost += 1
            continue
        with LocalTransport() as t2:
            run = api.Run(new[0].run_id, "local", transport=t2)
            st = run.wait(timeout=60) if after_send else run.status()
        lost += int(st["state"] != ("succeeded" if after_send else "launching"))
    return {"faults": 2, "recovered": 2 - lost, "lost": lost}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=4, help="driver kills (every other one a simulated reboot)")
    ap.add_argument("--cancels", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="one kill, one cancel: for the test suite")
    args = ap.parse_args()
    if args.tiny:
        args.kills, args.cancels = 1, 1
    with tempfile.TemporaryDirectory(prefix="gcbundle-faults-") as t:
        tmp = Path(t)
        _env(tmp)
        parts = {
            "driver SIGKILL / reboot": driver_kills(tmp, args.kills, steps=6, seconds=1.0),
            "worker killed while staging": worker_kill_during_staging(tmp),
            "client killed during results": client_kill_during_results(tmp),
            "cancel": repeated_cancels(tmp, args.cancels),
            "client stopped at launch": launch_kills(tmp),
        }
        tried, rejected = hostile_cases(tmp)
        replies = hostile_replies(tmp)
        from tests.faults import parsl_processes_under

        time.sleep(2.0)
        stray = parsl_processes_under(tmp)  # interchanges and worker pools, found by title and directory
        parts["stray Parsl processes"] = {"orphans": len(stray)}
    faults = sum(p.get("faults", 0) for p in parts.values())
    recovered = sum(p.get("recovered", 0) for p in parts.values())
    repeated = sum(p.get("repeated", 0) for p in parts.values())
    orphans = sum(p.get("orphans", 0) for p in parts.values())
    for name, p in parts.items():
        print(f"{name:<30} " + ", ".join(f"{k}={v}" for k, v in p.items()))
    lost = sum(p.get("lost", 0) for p in parts.values())
    print(f"faults injected: {faults}; runs recovered: {recovered}; runs lost: {lost} (target 0); "
          f"app executions repeated: {repeated} (target 0); "
          f"orphaned processes: {orphans} (target 0); hostile bundles tried: {tried}, rejected: {rejected}")
    print(f"hostile replies tried: {replies['tried']}, refused: {replies['refused']}; "
          f"tracebacks: {replies['tracebacks']} (target 0); escapes: {replies['escapes']} (target 0)")
    ok_replies = replies["tracebacks"] == 0 and replies["escapes"] == 0 and replies["refused"] == replies["tried"]
    ok = (
        repeated == 0
        and orphans == 0
        and lost == 0
        and recovered == faults
        and tried == rejected
        and ok_replies
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
