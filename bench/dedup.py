"""Bytes sent to the login node by a resubmit: unchanged, and with one file changed, vs the first submit.

    .venv/bin/python bench/dedup.py           # a 200-file / 30 MB workflow directory
    .venv/bin/python bench/dedup.py --tiny    # 20 files / 1 MB

Targets (issue 7): an unchanged resubmit sends <= 1% of the first submit's
bytes. One file changed: the figure is reported (no target); a bundle larger
than the launch task's inline limit then travels as a delta against the one
the login node has (bundle/delta.py).

Bytes are counted where they leave the client: the serialized task (the
messagepack ``Task`` the local endpoint receives, which is what Globus
Compute would carry), summed over every task the submit sends. Figures are
deterministic (no timing), so one round each.
"""
from __future__ import annotations

import sys

from _common import fmt_bytes, isolate, make_tree, parse, parser, result


def main() -> int:
    p = parser(__doc__.splitlines()[0], runs=1)
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--mb", type=float, default=30)
    opts = parse(p, files=20, mb=1)
    root = isolate()
    tree = root / "wf"
    make_tree(tree, opts.files, int(opts.mb * 1e6))

    # gcbundle is imported only now, after isolate() (see _common)
    import bundle
    from bundle.transport.local import LocalTransport

    sent: list[tuple[str, int]] = []

    def submit() -> tuple[int, dict[str, int]]:
        sent.clear()
        with LocalTransport() as t:
            t.observe(lambda task, nbytes: sent.append((task, nbytes)))
            run = bundle.submit(tree, "local", transport=t)
            of_submit = list(sent)
            st = run.wait()  # so that the next submit finds a quiet login node
            assert st["state"] == "succeeded", st
        by_task: dict[str, int] = {}
        for name, n in of_submit:
            by_task[name] = by_task.get(name, 0) + n
        return sum(by_task.values()), by_task

    first, first_tasks = submit()
    again, again_tasks = submit()
    victim = sorted(tree.rglob("*.py"))[len(list(tree.rglob("*.py"))) // 2]
    victim.write_text(victim.read_text() + "\n# one more line\n")
    changed, changed_tasks = submit()
    victim_size = fmt_bytes(victim.stat().st_size)
    print(f"workflow: {opts.files} files, {opts.mb:g} MB; changed file: {victim.relative_to(tree)} ({victim_size})")
    rows = (
        ("first submit", first, first_tasks),
        ("unchanged resubmit", again, again_tasks),
        ("one file changed", changed, changed_tasks),
    )
    for label, total, tasks in rows:
        per_task = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sorted(tasks.items()))
        print(f"  {label:20s} {fmt_bytes(total):>10s} in tasks " + per_task)
    result("dedup: unchanged resubmit / first submit (bytes)", again / first, "<=", 0.01, f"{again} of {first} bytes")
    ratio = changed / first
    if 0 < changed_tasks.get("stage", 0) < first / 2:
        how = ("a delta: the new manifest and the changed file, against the bundle the login node already has "
               "(protocol 2; it rebuilds and checks the whole bundle)")
    elif "stage" not in changed_tasks:
        how = "the whole bundle again (bundles up to the inline size travel whole inside the launch task: one task)"
    else:
        how = "the whole bundle again"
    print(f"RESULT dedup: one file changed / first submit (bytes): ratio={ratio:.6f} (no target: reported) "
          f"{fmt_bytes(changed)} of {fmt_bytes(first)}: {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
