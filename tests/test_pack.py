"""Packing: selection, determinism, the manifest, and what is left out."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import archive
from bundle.cli import main
from bundle.errors import BundleError
from bundle.pack import pack
from tests.conftest import EXAMPLES, write_workflow


def test_only_imports_follows_imports_and_declared_includes(tmp_path: Path) -> None:
    (tmp_path / "wf" / "helper.py").parent.mkdir(parents=True)
    wf = write_workflow(
        tmp_path / "wf",
        "import helper\nfrom pkg import mod\nfrom pkg.sub import deep\nimport numpy\n"
        "GCBUNDLE_INCLUDE = ['data/in.txt']\n\ndef main(n=1):\n    return n\n",
    )
    tree = {
        "helper.py": "X = 1\n",
        "pkg/__init__.py": "",
        "pkg/mod.py": "from . import sibling\n",
        "pkg/sibling.py": "Y = 2\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/deep.py": "Z = 3\n",
        "data/in.txt": "hi\n",
        "unused.py": "u = 1\n",
    }
    for rel, text in tree.items():
        p = tmp_path / "wf" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    res = pack(wf, tmp_path / "b.tar.gz", only_imports=True)
    paths = [f.path for f in res.manifest.files]
    assert paths == [
        "data/in.txt",
        "helper.py",
        "pkg/__init__.py",
        "pkg/mod.py",
        "pkg/sibling.py",
        "pkg/sub/__init__.py",
        "pkg/sub/deep.py",
        "workflow.py",
    ]
    assert res.manifest.mode == "function"
    assert res.manifest.entry == "workflow.py"


def test_same_tree_gives_byte_identical_archives(tmp_path: Path) -> None:
    a = pack(EXAMPLES / "hello" / "workflow.py", tmp_path / "a.tar.gz")
    os.utime(EXAMPLES / "hello" / "stats.py")  # mtimes do not matter... except the informative created time
    b = pack(EXAMPLES / "hello" / "workflow.py", tmp_path / "b.tar.gz")
    assert a.digest == b.digest
    pack(EXAMPLES / "hello" / "workflow.py", tmp_path / "c.tar.gz")
    assert (tmp_path / "b.tar.gz").read_bytes() == (tmp_path / "c.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "c.tar.gz") as tar:
        members = tar.getmembers()
    assert members[0].name == "gcbundle.json"
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.mtime == members[0].mtime for m in members)
    assert [m.name for m in members[1:]] == sorted(m.name for m in members[1:])
    raw = (tmp_path / "c.tar.gz").read_bytes()
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime 0


def test_digest_changes_with_content_and_args_but_not_mtime(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "w", "def main(n=1):\n    return 1\n")
    first = pack(wf, tmp_path / "1.tar.gz").digest
    os.utime(wf, (1, 1))
    assert pack(wf, tmp_path / "2.tar.gz").digest == first
    assert pack(wf, tmp_path / "3.tar.gz", args={"n": 2}).digest != first
    wf.write_text("def main(n=1):\n    return 2\n")
    assert pack(wf, tmp_path / "4.tar.gz").digest != first


def test_directory_excludes_secrets_tools_and_ignored_files_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write_workflow(root, "def main():\n    return 0\n")
    tools = (".git/config", "venv/pyvenv.cfg", "venv/lib/x.py", "__pycache__/a.pyc")
    secrets = (".env", "keys/server.pem", "id_rsa", ".netrc")
    for rel in (*tools, *secrets, "big/data.bin", "keep/data.bin", "notes.txt"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    (root / ".gcbundleignore").write_text("big/\n*.txt\n")
    os.symlink("/etc/hostname", root / "escape")
    res = pack(root, tmp_path / "b.tar.gz")
    paths = {f.path for f in res.manifest.files}
    assert paths == {".gcbundleignore", "workflow.py", "keep/data.bin"}
    reasons = dict(res.excluded)
    assert "secret" in reasons[".env"] and "secret" in reasons["keys/server.pem"]
    assert "secret" in reasons["id_rsa"] and "secret" in reasons[".netrc"]
    assert reasons["big/"] == "matched .gcbundleignore (big/)"
    assert reasons["notes.txt"] == "matched .gcbundleignore (*.txt)"
    assert "virtualenv" in reasons["venv/"] and "tool" in reasons[".git/"]
    assert "outside" in reasons["escape"]


def test_a_secret_named_explicitly_is_bundled(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "w", "def main():\n    return 0\n")
    (tmp_path / "w" / ".env").write_text("A=1")
    res = pack(wf, tmp_path / "b.tar.gz", includes=(".env",))
    assert ".env" in {f.path for f in res.manifest.files}


def test_modes_are_normalised(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "w", "def main():\n    return 0\n")
    run = tmp_path / "w" / "run.sh"
    run.write_text("#!/bin/sh\n")
    run.chmod(0o700)
    wf.chmod(0o600)
    res = pack(tmp_path / "w", tmp_path / "b.tar.gz")
    modes = {f.path: f.mode for f in res.manifest.files}
    assert modes == {"run.sh": 0o755, "workflow.py": 0o644}


def test_script_mode_detected_and_function_mode_without_main_refused(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "w", "import parsl\nprint('hi')\n")
    assert pack(wf, tmp_path / "b.tar.gz").manifest.mode == "script"
    with pytest.raises(BundleError, match="defines no main"):
        pack(wf, tmp_path / "c.tar.gz", mode="function")
    assert not (tmp_path / "c.tar.gz").exists()


def test_include_outside_root_and_missing_paths_are_errors(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "w", "def main():\n    return 0\n")
    (tmp_path / "outside.txt").write_text("x")
    with pytest.raises(BundleError, match="outside the workflow directory"):
        pack(wf, tmp_path / "b.tar.gz", includes=("../outside.txt",))
    with pytest.raises(BundleError, match="does not exist"):
        pack(wf, tmp_path / "b.tar.gz", includes=("nope.txt",))
    with pytest.raises(BundleError, match="does not exist"):
        pack(tmp_path / "missing.py", tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()


def test_syntax_error_is_a_clear_error(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "w", "def main(:\n")
    with pytest.raises(BundleError, match=r"workflow.py:1: syntax error"):
        pack(wf, tmp_path / "b.tar.gz")


def test_bundle_over_the_size_cap_is_refused_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_workflow(tmp_path / "w", "def main():\n    return 0\n")
    (tmp_path / "w" / "blob.bin").write_bytes(os.urandom(200_000))
    monkeypatch.setattr(archive, "MAX_BUNDLE_BYTES", 100_000)
    with pytest.raises(BundleError, match="more than the cap"):
        pack(tmp_path / "w", tmp_path / "b.tar.gz")
    assert list(tmp_path.glob("*.tar.gz")) == [] and list(tmp_path.glob(".*tmp")) == []


def test_cli_pack_and_inspect(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "hello.tar.gz"
    res = runner.invoke(main, ["pack", str(EXAMPLES / "hello" / "workflow.py"), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    env = json.loads(res.stdout)
    assert env["version"] == 1 and env["status"] == "success" and env["command"] == "pack"
    digest = env["data"]["digest"]
    res = runner.invoke(main, ["inspect", str(out), "--json"])
    data = json.loads(res.stdout)["data"]
    assert data["digest"] == digest
    assert {f["path"] for f in data["files"]} == {"workflow.py", "stats.py", "data/words.txt"}
    assert set(data["client"]) >= {"python", "parsl", "globus-compute-sdk", "gcbundle"}
    res = runner.invoke(main, ["inspect", str(out)])
    assert digest in res.stdout and "stats.py" in res.stdout
    res = runner.invoke(main, ["inspect", str(tmp_path / "nope.tar.gz")])
    assert res.exit_code != 0 and "does not exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_manifest_roundtrip_through_archive(tmp_path: Path) -> None:
    res = pack(EXAMPLES / "hello" / "workflow.py", tmp_path / "b.tar.gz", args={"n": 3})
    m = archive.read_manifest(tmp_path / "b.tar.gz")
    assert m == res.manifest and m.args == {"n": 3}
