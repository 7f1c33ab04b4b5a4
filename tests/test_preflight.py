"""Preflight: mistakes found on the laptop before anything is sent, and on the login node
(in the launch task, through the real local endpoint) before a run exists."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import api
from bundle.cli import main
from bundle.errors import BundleError, SiteEnvironmentError, SiteProfileError, UsageError
from bundle.pack import pack
from bundle.preflight import parse_args
from bundle.registry import Registry
from tests.conftest import write_workflow
from tests.hostile import valid_bundle
from tests.test_driver_env import SCIENCE_PARSL, _venv
from tests.test_selection import make


def nothing_sent(home: Path) -> None:
    """No run directory on the login node, no cached bundle, no registry row."""
    runs = home / "runs"
    assert not runs.exists() or not list(runs.iterdir())
    cache = home / "cache"
    assert not cache.exists() or not list(cache.glob("*.tar.gz"))
    assert Registry().list(10) == []


# -- --arg ------------------------------------------------------------------------------

def test_arg_values_are_json_when_they_parse_and_errors_when_they_only_look_like_it() -> None:
    assert parse_args(["n=20", "x=1.5", "flag=true", "name=alice", "date=2024-01-01", "items=[1, 2]", 'q="7"']) == {
        "n": 20, "x": 1.5, "flag": True, "name": "alice", "date": "2024-01-01", "items": [1, 2], "q": "7"}
    with pytest.raises(UsageError, match=r"--arg n=\[1, looks like JSON but does not parse"):
        parse_args(["n=[1,"])
    with pytest.raises(UsageError, match="looks like JSON"):
        parse_args(['cfg={"a": 1'])
    with pytest.raises(UsageError, match="given twice"):
        parse_args(["n=1", "n=2"])


def test_arg_names_are_checked_against_main_with_a_did_you_mean(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "w", "def main(name, n=1, *, verbose=False):\n    return name\n")
    with pytest.raises(UsageError) as err:
        api.submit(wf, "local", args={"nmae": "x"})
    assert str(err.value.message) == "--arg nmae: main() in workflow.py:1 has no parameter 'nmae'"
    assert err.value.hint == "did you mean --arg name=...? main() takes: name, n, verbose"
    with pytest.raises(UsageError, match=r"main\(\) in workflow.py:1 needs name, which no --arg gives"):
        api.submit(wf, "local", args={"n": 2})
    nothing_sent(home)
    res = CliRunner().invoke(main, ["submit", str(wf), "--arg", "nmae=x", "--json"])
    assert res.exit_code == 2 and json.loads(res.stdout)["errors"][0]["hint"].startswith("did you mean --arg name=")
    res = CliRunner().invoke(main, ["submit", str(wf), "--arg", "name=[1,"])
    assert res.exit_code == 2 and "looks like JSON but does not parse" in res.stderr
    nothing_sent(home)
    # pack checks the names it is given, but arguments may still come at submit time
    pack(wf, tmp_path / "b.tar.gz")
    with pytest.raises(UsageError, match="no parameter 'nmae'"):
        pack(wf, tmp_path / "b.tar.gz", args={"nmae": 1})


def test_kwargs_positional_only_and_script_mode(tmp_path: Path) -> None:
    any_keyword = write_workflow(tmp_path / "a", "def main(**kw):\n    return kw\n")
    pack(any_keyword, tmp_path / "a.tar.gz", run_args={"anything": 1})
    positional_only = write_workflow(tmp_path / "b", "def main(n, /):\n    return n\n")
    with pytest.raises(UsageError, match="only by position"):
        pack(positional_only, tmp_path / "b.tar.gz", run_args={"n": 1})
    script = write_workflow(tmp_path / "c", "import sys\nprint(sys.argv)\n")
    pack(script, tmp_path / "c.tar.gz", run_args={"whatever": 1})


# -- local imports ------------------------------------------------------------------------

def test_a_local_import_that_resolves_to_nothing_is_an_error(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "w", "from mypkg import nothere\n\ndef main():\n    return 0\n")
    make(tmp_path / "w", {
        "mypkg/__init__.py": "from .real import thing\nVERSION = 1\n",
        "mypkg/real.py": "thing = 1\n",
    })
    with pytest.raises(BundleError) as err:
        api.submit(wf, "local")
    assert err.value.message == (
        "workflow.py:1 imports mypkg.nothere, but the bundle has no mypkg/nothere.py "
        "and mypkg/__init__.py defines no nothere"
    )
    nothing_sent(home)
    for ok in ("from mypkg import real, thing, VERSION", "import mypkg.real", "from mypkg.real import thing",
               "try:\n    from mypkg import nothere\nexcept ImportError:\n    nothere = None"):
        wf.write_text(ok + "\n\ndef main():\n    return 0\n")
        pack(wf, tmp_path / "ok.tar.gz")
    refused = (
        ("import mypkg.gone", "imports mypkg.gone, but the bundle has no mypkg/gone.py or mypkg/gone/"),
        ("from mypkg.real import other",
         "imports mypkg.real.other, but the bundle has no mypkg/real/other.py and mypkg/real.py defines no other"),
        ("import mypkg.real.deeper", "mypkg/real.py is a module, not a package"),
    )
    for bad, message in refused:
        wf.write_text(bad + "\n\ndef main():\n    return 0\n")
        with pytest.raises(BundleError, match=message.replace(".", r"\.")):
            pack(wf, tmp_path / "bad.tar.gz")


def test_a_local_module_left_out_by_gcbundleignore_is_named_with_the_rule(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "w", "import helpers\n\ndef main():\n    return 0\n")
    make(tmp_path / "w", {"helpers.py": "X = 1\n"})
    (tmp_path / "w" / ".gcbundleignore").write_text("helpers.py\n")
    with pytest.raises(BundleError) as err:
        pack(wf, tmp_path / "b.tar.gz")
    assert err.value.message == (
        "workflow.py:1 imports helpers, which is left out of the bundle: "
        "helpers.py matched .gcbundleignore (helpers.py)"
    )
    assert "--include helpers.py" in err.value.hint
    make(tmp_path / "w", {"tools/__init__.py": "", "tools/run.py": "def go():\n    pass\n"})
    wf.write_text("from tools.run import go\n\ndef main():\n    return 0\n")
    (tmp_path / "w" / ".gcbundleignore").write_text("tools/\n")
    with pytest.raises(BundleError) as err:
        pack(wf, tmp_path / "b.tar.gz")
    assert err.value.message == (
        "workflow.py:1 imports tools.run, which is left out of the bundle: tools/ matched .gcbundleignore (tools/)"
    )
    assert err.value.hint.startswith("bring it along with --include tools,")


def test_a_module_importing_an_absent_sibling_is_found_through_the_chain(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "w", "import stages\n\ndef main():\n    return 0\n")
    make(tmp_path / "w", {"stages.py": "from stages_impl import run\n", "stages_impl.py": "def go():\n    pass\n"})
    absent = r"stages\.py:1 imports stages_impl\.run, but .*stages_impl\.py defines no run"
    with pytest.raises(BundleError, match=absent):
        pack(wf, tmp_path / "b.tar.gz")


# -- paths named by string literals --------------------------------------------------------

def test_literal_paths_left_out_of_the_bundle_give_warnings(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    wf = write_workflow(root, (
        "import glob\n\n"
        "def main():\n"
        "    a = open('data/input.csv').read()\n"
        "    b = glob.glob('scratch/*.npy')\n"
        "    c = open('../shared.txt').read()\n"
        "    d = open('kept.txt').read()\n"
        "    e = open('not/there.txt')\n"
        "    return a, b, c, d, e\n"
    ))
    make(root, {"data/input.csv": "1", "scratch/a.npy": "", "kept.txt": "k"})
    (root / ".gitignore").write_text("data/\n")
    (root / ".gcbundleignore").write_text("scratch/\n")
    (tmp_path / "shared.txt").write_text("s")
    res = pack(wf, tmp_path / "b.tar.gz")
    assert res.warnings == (
        "workflow.py:4 names 'data/input.csv', which exists here but is left out of the bundle "
        "(data/ matched .gitignore (data/)); bring it with --include data/input.csv",
        "workflow.py:5 names 'scratch/*.npy', which exists here but is left out of the bundle "
        "(matched .gcbundleignore (scratch/)); bring it with --include scratch",
        "workflow.py:6 names '../shared.txt', which is outside the workflow's folder and does not travel; "
        "move it into the folder, or stage it on the site and use an absolute path there",
    )
    res = CliRunner().invoke(main, ["pack", str(wf), "-o", str(tmp_path / "c.tar.gz")])
    assert res.exit_code == 0 and res.stderr.count("warning: workflow.py:") == 3


# -- the folder model on the real local endpoint --------------------------------------------

def test_data_beside_the_workflow_is_found_on_the_login_node(tmp_path: Path) -> None:
    """The issue's first scenario: `data/input.csv` read by relative path."""
    wf = write_workflow(tmp_path / "analysis", (
        "import csv\n\n"
        "def main():\n"
        "    with open('data/input.csv') as f:\n"
        "        return sum(int(r['x']) for r in csv.DictReader(f))\n"
    ))
    make(tmp_path / "analysis", {"data/input.csv": "x\n1\n2\n39\n"})
    res = CliRunner().invoke(main, ["submit", str(wf), "--endpoint", "local", "--wait", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["data"]
    size = wf.stat().st_size + len("x\n1\n2\n39\n")
    assert data["result"] == 42
    assert data["bundle"]["summary"] == [f"included 2 files, {size} B"] and data["bundle"]["warnings"] == []


# -- the login node's environment -------------------------------------------------------------

def test_login_node_refuses_a_third_party_import_it_lacks_before_a_run_exists(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "w", (
        "import os\nimport json\nfrom parsl import python_app\nimport helper\n\n"
        "def main():\n    import numpy_only_on_workers  # inside a function: not the driver's to check\n    return 0\n"
    ))
    helper = (
        "try:\n    import fastjson_maybe\nexcept ImportError:\n    fastjson_maybe = None\n"
        "import gcb_absent_pkg.sub as sub\n"
    )
    make(tmp_path / "w", {"helper.py": helper})
    with pytest.raises(SiteEnvironmentError) as err:
        api.submit(wf, "local")
    assert err.value.message == "the login node's environment lacks gcb_absent_pkg (imported by helper.py:5)"
    assert err.value.hint.startswith("install it there: ") and "-m pip install gcb_absent_pkg" in err.value.hint
    runs = home / "runs"
    assert not runs.exists() or not list(runs.iterdir()), "no run directory, not even a half-made one"
    assert Registry().list(10) == []
    res = CliRunner().invoke(main, ["submit", str(wf), "--json"])
    assert res.exit_code == 13 and json.loads(res.stdout)["errors"][0]["type"] == "SiteEnvironmentError"


def test_login_node_refuses_a_parsl_older_than_the_site_profile_needs(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "w", "def main():\n    return 0\n")
    profile = tmp_path / "future.yaml"
    profile.write_text("parsl: '>=9999.1'\nexecutors:\n  - type: ThreadPoolExecutor\n    label: threads\n")
    with pytest.raises(SiteEnvironmentError) as err:
        api.submit(wf, "local", site=str(profile))
    assert err.value.message.startswith("the login node's environment has Parsl ")
    assert err.value.message.endswith("the site profile 'future' needs parsl>=2025.12.1,>=9999.1")
    assert "-m pip install 'parsl>=2025.12.1,>=9999.1'" in err.value.hint
    assert Registry().list(10) == []
    profile.write_text("parsl: 'soon'\nexecutors:\n  - type: ThreadPoolExecutor\n    label: threads\n")
    with pytest.raises(SiteProfileError, match="is not a version specifier"):
        api.submit(wf, "local", site=str(profile))


# -- bundles made by gcbundle pack ----------------------------------------------------------

def test_pack_once_submit_twice_through_the_same_checks(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "w", "def main(n):\n    return open('data/n.txt').read().strip() + str(n)\n")
    make(tmp_path / "w", {"data/n.txt": "n="})
    bundle = tmp_path / "wf.tar.gz"
    res = CliRunner().invoke(main, ["pack", str(wf), "-o", str(bundle)])
    assert res.exit_code == 0, res.output
    with pytest.raises(UsageError, match="did you mean --arg n="):
        api.submit(bundle, "local", args={"nn": 1})
    with pytest.raises(UsageError, match="needs n"):
        api.submit(bundle, "local")
    # the two options' names in either order
    cannot_change = (
        "--only-imports, --include cannot change a bundle made earlier"
        "|--include, --only-imports cannot change"
    )
    with pytest.raises(UsageError, match=cannot_change):
        api.submit(bundle, "local", args={"n": 1}, includes=("x",), only_imports=True)
    nothing_sent(home)
    first = api.submit(bundle, "local", args={"n": 1}, wait=True)
    second = api.submit(bundle, "local", args={"n": 2}, wait=True)
    assert first.result(tmp_path / "r1") == "n=1" and second.result(tmp_path / "r2") == "n=2"
    assert first.record.digest == second.record.digest
    assert first.bundle["summary"][0].startswith("bundle wf.tar.gz made by gcbundle pack: 2 files")


def test_a_bundle_with_a_broken_local_import_is_refused_before_sending(tmp_path: Path, home: Path) -> None:
    files = {"workflow.py": b"from lib import missing\n\ndef main():\n    return 0\n", "lib.py": b"x = 1\n"}
    bundle, _ = valid_bundle(tmp_path / "b.tar.gz", files)
    with pytest.raises(BundleError, match=r"workflow\.py:1 imports lib\.missing, but .*lib\.py defines no missing"):
        api.submit(bundle, "local")
    nothing_sent(home)


def test_with_driver_init_the_imports_are_looked_for_in_the_users_environment(tmp_path: Path, home: Path) -> None:
    """`six` is in the user's environment (driver_init) and not the endpoint's: found there;
    a module in neither is refused, with the user's Python in the hint."""
    science = _venv("science", [f"parsl=={SCIENCE_PARSL}", "six"])
    wf = write_workflow(tmp_path / "w", "import six\n\ndef main():\n    return six.__version__\n")
    with pytest.raises(SiteEnvironmentError, match=r"lacks six \(imported by workflow\.py:1\)"):
        api.submit(wf, "local")  # the endpoint's own environment has no six
    params = {"driver_init": f"source {science}/bin/activate"}
    run = api.submit(wf, "local", site="local", params=params, wait=True)
    assert run.last_state["state"] == "succeeded", run.last_state
    wf.write_text("import six\nimport gcb_absent_pkg\n\ndef main():\n    return 0\n")
    with pytest.raises(SiteEnvironmentError) as err:
        api.submit(wf, "local", site="local", params=params)
    assert err.value.message == "the login node's environment lacks gcb_absent_pkg (imported by workflow.py:2)"
    assert err.value.hint.startswith(f"install it there: {science}/bin/python") and "driver_init" in err.value.hint
    assert [r.run_id for r in Registry().list(10)] == [run.id]


def test_a_local_module_from_pythonpath_travels_and_imports_on_the_login_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    make(lib, {"shared/__init__.py": "", "shared/util.py": "def scale(x):\n    return x * 3\n"})
    wf = write_workflow(tmp_path / "flows", "from shared.util import scale\n\ndef main(x=14):\n    return scale(x)\n")
    monkeypatch.setenv("PYTHONPATH", str(lib))
    run = api.submit(wf, "local", wait=True)
    assert run.last_state["state"] == "succeeded", run.last_state
    assert run.result(tmp_path / "r") == 42
    summary = run.bundle["summary"][0]
    assert summary.startswith("included 3 files") and "(2 from outside the folder)" in summary
