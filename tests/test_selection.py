"""What travels: the workflow's folder, the ignore rules (checked against git itself), the size guard."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import selection
from bundle.cli import main
from bundle.errors import BundleError, UsageError
from bundle.pack import pack
from bundle.selection import Limits, describe_excluded, parse_size, select
from tests.conftest import write_workflow

MAIN = "def main():\n    return 0\n"


def make(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())


def git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout


def test_the_folder_travels_with_the_workflow_file(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "proj", "import os\n\ndef main():\n    return open('data/input.csv').read()\n")
    make(tmp_path / "proj", {"data/input.csv": "a,b\n", "notes/readme.md": "hi\n", "helper_not_imported.py": "X = 1\n"})
    sel = select(wf)
    assert set(sel.files) == {"workflow.py", "data/input.csv", "notes/readme.md", "helper_not_imported.py"}
    assert sel.summary()[0] == f"included 4 files, {sel.total_bytes} B"


def test_only_imports_ships_the_imports_and_named_paths_alone(tmp_path: Path) -> None:
    source = "import helper\nGCBUNDLE_INCLUDE = ['data/a.txt']\n\ndef main():\n    return 0\n"
    wf = write_workflow(tmp_path / "proj", source)
    make(tmp_path / "proj", {"helper.py": "X = 1\n", "data/a.txt": "a", "data/b.txt": "b", "other.py": ""})
    assert set(select(wf, only_imports=True).files) == {"workflow.py", "helper.py", "data/a.txt"}
    assert set(select(wf).files) == {"workflow.py", "helper.py", "data/a.txt", "data/b.txt", "other.py"}


def test_nested_gitignore_files_are_read_as_git_reads_them(tmp_path: Path) -> None:
    """The same tree, asked of git itself (`git ls-files --others --exclude-standard`) and of gcbundle."""
    root = tmp_path / "repo"
    make(root, {
        ".gitignore": "data/\n*.log\n!important.log\nkeep/*\n!keep/sub/\n/build\n",
        "a/.gitignore": "*.tmp\n!x.log\n",
        "a/b/.gitignore": "!*.tmp\n/only_here.txt\n",
        "workflow.py": MAIN, "data/x.csv": "1", "a/x.log": "", "a/y.log": "", "a/t.tmp": "", "a/b/t.tmp": "",
        "a/b/only_here.txt": "", "a/only_here.txt": "", "important.log": "", "logs/z.log": "", "keep/f": "",
        "keep/sub/g": "", "a/b/c.py": "", "build/out.o": "", "a/build/kept": "",
    })
    subprocess.run(["git", "init", "-q", str(root)], check=True, timeout=60)
    expected = set(git(root, "ls-files", "--others", "--exclude-standard").split())
    sel = select(root / "workflow.py")
    assert set(sel.files) == expected
    assert {"a/x.log", "a/b/t.tmp", "important.log", "keep/sub/g", "a/only_here.txt", "a/build/kept"} <= expected
    reasons = dict(sel.excluded)
    assert reasons["data/"] == "matched .gitignore (data/)"
    assert reasons["a/t.tmp"] == "matched a/.gitignore (*.tmp)"
    assert reasons["a/b/only_here.txt"] == "matched a/b/.gitignore (/only_here.txt)"
    assert reasons[".git/"] == "tool or cache directory"


def test_gitignore_above_the_folder_applies_inside_a_work_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make(repo, {".gitignore": "*.h5\nflows/scratch/\n", "flows/workflow.py": MAIN, "flows/model.h5": "x",
                "flows/scratch/tmp.txt": "", "flows/params.yaml": "a: 1\n"})
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=60)
    sel = select(repo / "flows" / "workflow.py")
    assert set(sel.files) == {"workflow.py", "params.yaml"}
    reasons = dict(sel.excluded)
    assert reasons["model.h5"] == "matched ../.gitignore (*.h5)"
    assert reasons["scratch/"] == "matched ../.gitignore (flows/scratch/)"


def test_gcbundleignore_leaves_out_and_its_negation_brings_back_what_git_ignores(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {
        "workflow.py": MAIN,
        ".gitignore": "data/\n*.csv\n",
        ".gcbundleignore": "!data/\n!inputs/*.csv\nscratch/\n",
        "data/big.bin": "x", "data/more/y.bin": "y", "inputs/a.csv": "1", "other.csv": "2", "scratch/s": "",
    })
    sel = select(root / "workflow.py")
    brought_back = {"data/big.bin", "data/more/y.bin", "inputs/a.csv"}
    assert set(sel.files) == {"workflow.py", ".gitignore", ".gcbundleignore", *brought_back}
    reasons = dict(sel.excluded)
    assert reasons["other.csv"] == "matched .gitignore (*.csv)"
    assert reasons["scratch/"] == "matched .gcbundleignore (scratch/)"


def test_include_of_an_ignored_directory_brings_it_but_not_its_secrets(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {"workflow.py": MAIN, ".gitignore": "data/\n", "data/in.csv": "1", "data/.env": "TOKEN=x"})
    sel = select(root / "workflow.py", includes=("data",))
    assert "data/in.csv" in sel.files and "data/.env" not in sel.files
    assert "secret" in dict(sel.excluded)["data/.env"]


def test_imported_module_comes_along_even_if_gitignored(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {
        "workflow.py": "from _version import V\n\ndef main():\n    return V\n",
        ".gitignore": "_version.py\n",
        "_version.py": "V = 1\n",
    })
    assert "_version.py" in select(root / "workflow.py").files


def test_default_excludes_parsl_runinfo_results_packages_and_the_archive_being_written(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {
        "workflow.py": MAIN,
        "runinfo/000/parsl.log": "x",
        "results/3f2a/.gcbundle-results.json": "{}",
        "results/3f2a/result.json": "1",
        "node_modules/x.js": "",
        "src/pkg/__pycache__/m.cpython-311.pyc": "",
        "env/conda-meta/history": "",
        "env/lib/python3.11/os.py": "",
        "venv/pyvenv.cfg": "",
        "venv/lib/x.py": "",
    })
    res = pack(root / "workflow.py", root / "bundle.tar.gz")
    assert [f.path for f in res.manifest.files] == ["workflow.py"]
    reasons = dict(res.excluded)
    assert reasons["runinfo/"] == "Parsl's run directory of local runs"
    assert reasons["results/3f2a/"] == "results package fetched by gcbundle"
    assert reasons["env/"] == "conda environment" and reasons["venv/"] == "virtualenv"
    again = pack(root / "workflow.py", root / "bundle.tar.gz")  # the archive from before is not packed into the next
    assert again.digest == res.digest


def test_local_module_from_outside_the_folder_travels_at_its_module_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    make(lib, {"shared/__init__.py": "", "shared/util.py": "def f():\n    return 41\n", "unrelated.py": ""})
    wf = write_workflow(tmp_path / "flows", "from shared.util import f\n\ndef main():\n    return f() + 1\n")
    monkeypatch.setenv("PYTHONPATH", str(lib))
    sel = select(wf)
    assert set(sel.files) == {"workflow.py", "shared/__init__.py", "shared/util.py"}
    assert sel.path("shared/util.py") == lib / "shared" / "util.py"
    assert "1 from outside the folder" not in sel.summary()[0] and "2 from outside the folder" in sel.summary()[0]
    res = pack(wf, tmp_path / "b.tar.gz")
    assert {f.path for f in res.manifest.files} == {"workflow.py", "shared/__init__.py", "shared/util.py"}


def test_a_big_ignored_directory_is_one_line_of_the_report(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {"workflow.py": MAIN, ".gitignore": "cache/\n*.log\n", **{f"cache/{i}.bin": "" for i in range(300)},
                **{f"logs/{i}.log": "" for i in range(5)}})
    lines = select(root / "workflow.py").summary()
    assert lines[1:] == [
        "left out logs/0.log, logs/1.log, logs/2.log and 2 more: matched .gitignore (*.log)",
        "left out cache/: matched .gitignore (cache/)",
    ]
    assert describe_excluded([]) == []


def test_size_guard_refuses_a_big_folder_at_once_naming_its_largest_entries(tmp_path: Path) -> None:
    root = tmp_path / "home"
    make(root, {
        "workflow.py": MAIN,
        "data/a.bin": b"x" * 3000,
        "data/b.bin": b"x" * 3000,
        "model.pt": b"y" * 2000,
        "small.txt": "z",
    })
    with pytest.raises(BundleError) as err:
        pack(root / "workflow.py", tmp_path / "b.tar.gz", limits=Limits(max_bytes=5000, max_files=100))
    text = str(err.value)
    assert "more to bundle than the size guard allows (4.9 KiB, 100 files" in text
    assert "largest: data/ 5.9 KiB (2 files)" in text
    assert ".gcbundleignore" in err.value.hint and "--only-imports" in err.value.hint and "--max-size" in err.value.hint
    assert "data/" in err.value.hint
    assert not (tmp_path / "b.tar.gz").exists()
    with pytest.raises(BundleError, match="it would bring 5 files"):
        select(root / "workflow.py", limits=Limits(max_bytes=10**9, max_files=2))
    assert len(select(root / "workflow.py", only_imports=True, limits=Limits(max_bytes=5000, max_files=2)).files) == 1


def test_size_guard_limits_come_from_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Limits.resolve() == Limits(256 * 1024**2, 5000)
    monkeypatch.setenv("GCBUNDLE_MAX_FOLDER_BYTES", "2G")
    monkeypatch.setenv("GCBUNDLE_MAX_FOLDER_FILES", "20000")
    assert Limits.resolve() == Limits(2 * 1024**3, 20000)
    assert Limits.resolve("1.5M", 7) == Limits(int(1.5 * 1024**2), 7)
    assert parse_size("10MB") == 10_000_000 and parse_size("123") == 123
    with pytest.raises(UsageError, match="not a size"):
        parse_size("lots")


def test_walk_reports_progress_through_the_callback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "proj"
    make(root, {"workflow.py": MAIN, **{f"d{i}/f.txt": "x" for i in range(50)}})
    clock = iter(range(0, 10_000))
    monkeypatch.setattr(selection.time, "monotonic", lambda: float(next(clock)))
    calls: list[tuple[str, int, int]] = []
    select(root / "workflow.py", progress=lambda *a: calls.append(a))
    assert calls and all(c[0] == "scan" for c in calls) and calls[-1][1] == 51
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_cli_shows_the_walk_on_a_terminal_only(tmp_path: Path) -> None:
    """stderr a real terminal (a pty): the walk's progress is drawn there; piped (above): not."""
    import pty
    import sys

    root = tmp_path / "proj"
    make(root, {"workflow.py": MAIN, **{f"d{i}/f.txt": "x" for i in range(200)}})
    leader, follower = pty.openpty()
    try:
        argv = [sys.executable, "-m", "bundle.cli", "pack", str(root / "workflow.py"), "-o", str(tmp_path / "b.tar.gz")]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, timeout=120,
                              check=False)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    text = seen.decode()
    assert "scanning the workflow's folder: " in text and "files to bundle so far" in text
    assert "included 201 files" in text


def test_cli_pack_says_what_it_included_and_left_out_and_refuses_big_folders(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(root, {
        "workflow.py": MAIN,
        ".gitignore": "big/\n",
        "big/x.bin": "x",
        "data.csv": "1",
        **{f"many/{i}": "" for i in range(30)},
    })
    runner = CliRunner()
    pack_argv = ["pack", str(root / "workflow.py"), "-o"]
    res = runner.invoke(main, [*pack_argv, str(tmp_path / "b.tar.gz")])
    assert res.exit_code == 0, res.output
    assert "included 33 files" in res.stderr and "left out big/: matched .gitignore (big/)" in res.stderr
    assert "scanning" not in res.stderr  # progress only on a terminal
    res = runner.invoke(main, [*pack_argv, str(tmp_path / "c.tar.gz"), "--max-files", "10", "--json"])
    assert res.exit_code == 3
    envelope = json.loads(res.stdout)
    assert envelope["status"] == "error" and "size guard" in envelope["errors"][0]["message"]
    assert "many/ 0 B (" in envelope["errors"][0]["message"]
    assert not (tmp_path / "c.tar.gz").exists()
    res = runner.invoke(main, [*pack_argv, str(tmp_path / "d.tar.gz"), "--only-imports", "--json"])
    data = json.loads(res.stdout)["data"]
    assert data["files"] == 1 and data["summary"][0].startswith("included 1 file,")
    os.remove(tmp_path / "b.tar.gz")
