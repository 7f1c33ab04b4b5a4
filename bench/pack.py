"""`gcbundle pack` against `tar -czf` of the same files, and a re-pack of an unchanged tree.

    .venv/bin/python bench/pack.py            # 2,000 files / 60 MB, 5 rounds
    .venv/bin/python bench/pack.py --tiny     # a quick check that it runs

Targets (issue 7):
  cold `gcbundle pack` / `tar -czf`   <= 1.0   (both commands, as a user runs them)
  re-pack of the unchanged tree / cold pack  <= 0.1  (the `pack()` API in this process,
      so the ~80 ms of interpreter start-up that any command pays is not counted;
      the command-line figure is printed too)

`tar -czf` uses gzip's default level, 6, the level gcbundle writes. "Cold"
means gcbundle's caches (file hashes and archives, under the user cache dir)
are emptied first; the file contents are in the page cache for both sides.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from _common import (
    REPO,
    alternate,
    fmt_bytes,
    fmt_s,
    isolate,
    make_tree,
    median,
    parse,
    parser,
    result,
)


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--mb", type=float, default=60)
    opts = parse(p, files=40, mb=1, runs=2)
    root = isolate()
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "gcbundle"
    tree = root / "tree"
    total = make_tree(tree, opts.files, int(opts.mb * 1e6))
    out = root / "out"
    out.mkdir()
    print(f"tree: {opts.files} files, {fmt_bytes(total)}; {opts.runs} rounds, alternating")

    # gcbundle is imported only now, after isolate() (see _common)
    from bundle.pack import pack

    def command_pack(target: Path) -> None:
        subprocess.run([sys.executable, "-m", "bundle.cli", "pack", str(tree), "-o", str(target)], cwd=REPO,
                       check=True, stdout=subprocess.DEVNULL, timeout=600)

    def api_pack(target: Path) -> None:
        pack(tree, target)

    def tar_czf(target: Path) -> None:
        subprocess.run(["tar", "-czf", str(target), "-C", str(tree), "."], check=True, timeout=600)

    def timed(make: Callable[[Path], object], target: Path, cold: bool) -> float:
        """Seconds ``make`` takes to write ``target`` afresh; ``cold`` empties gcbundle's caches first."""
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        target.unlink(missing_ok=True)
        t0 = time.perf_counter()
        make(target)
        return time.perf_counter() - t0

    cli_pack = partial(timed, command_pack, out / "cli.tar.gz", cold=True)
    cli_warm = partial(timed, command_pack, out / "cli.tar.gz", cold=False)
    tar = partial(timed, tar_czf, out / "tar.tar.gz", cold=False)
    api_cold = partial(timed, api_pack, out / "api.tar.gz", cold=True)
    api_warm = partial(timed, api_pack, out / "api.tar.gz", cold=False)

    tar()  # warm the page cache and the interpreter's imports
    api_cold()
    g, t = alternate(cli_pack, tar, opts.runs)
    sizes = (out / "cli.tar.gz").stat().st_size, (out / "tar.tar.gz").stat().st_size
    result("pack: gcbundle pack / tar -czf", median(g) / median(t), "<=", 1.0,
           f"gcbundle {fmt_s(median(g))}, tar {fmt_s(median(t))}; "
           f"archives {fmt_bytes(sizes[0])} vs {fmt_bytes(sizes[1])}")

    # A first pack after the tree was written may find its newest files too
    # fresh to trust their cached hashes (see bundle/packcache.py); one more
    # pack settles the cache, as it would be for a tree edited minutes ago.
    api_warm()
    api_warm()
    cold, warm = alternate(api_cold, api_warm, opts.runs)
    result("pack: re-pack unchanged / cold pack (API)", median(warm) / median(cold), "<=", 0.1,
           f"re-pack {fmt_s(median(warm))}, cold {fmt_s(median(cold))}")
    cold_cli, warm_cli = alternate(cli_pack, cli_warm, max(2, opts.runs // 2))
    print(f"info: re-pack unchanged / cold pack as commands: {median(warm_cli) / median(cold_cli):.3f} "
          f"(re-pack {fmt_s(median(warm_cli))}, cold {fmt_s(median(cold_cli))}; both include interpreter start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
