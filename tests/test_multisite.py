"""The multisite example: offline end to end, and what its real-site variant relies on.

The offline variant runs for real (local transport, real DFK, three real HTEX
executors). The real-site variant needs two more Globus Compute endpoints and
the Globus service, which cannot be reached from here: its config module is
built against a FAKED service (`responses`), and the property it depends on
(apps travel by value to endpoints that lack the bundle) is checked in a
separate interpreter that cannot import the workflow.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import responses
from click.testing import CliRunner

from bundle import api
from bundle.cli import main
from bundle.errors import SiteProfileError
from bundle.pack import pack
from tests.conftest import EXAMPLES
from tests.fake_globus import AUTH, COMPUTE, client_credentials_grant

MULTISITE = EXAMPLES / "multisite"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"multisite_{name}", MULTISITE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # importable by name, as the driver's import of the workflow is
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workflow() -> ModuleType:
    return load("workflow")


def test_offline_variant_runs_end_to_end(tmp_path: Path, workflow: ModuleType) -> None:
    """The command of the README, as written: the workflow reads every file of ./experiments,
    which travel with its folder and are found on the login node by the same relative path."""
    res = CliRunner().invoke(main, ["submit", str(MULTISITE / "workflow.py"), "--endpoint", "local",
                                    "--site", str(MULTISITE / "offline.yaml"), "--wait", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["data"]
    assert "included 9 files" in data["bundle"]["summary"][0] and not data["bundle"]["warnings"]
    run = api.get_run(data["run_id"])
    value = run.result(tmp_path / "res")

    files = sorted((MULTISITE / "experiments").glob("*.csv"))
    assert value["experiments"] == [p.name for p in files] == ["run-01.csv", "run-02.csv", "run-03.csv", "run-04.csv"]
    expected = [
        len(workflow._analyse(workflow._preprocess(workflow.read_experiment(str(p)), 3), 2.5)["events"])
        for p in files
    ]
    assert value["events_per_experiment"] == expected and sum(expected) > 0
    rows = list(csv.reader((tmp_path / "res" / run.id / "outputs" / "events.csv").read_text().splitlines()))
    assert rows[0] == ["experiment", "events", "first_event", "peak"] and [int(r[1]) for r in rows[1:]] == expected
    report = (tmp_path / "res" / run.id / "report.json").read_text()
    assert all(label in report for label in ("preprocess", "analysis", "postprocess"))


def test_without_its_folder_the_workflow_is_warned_about_experiments(tmp_path: Path) -> None:
    """--only-imports leaves ./experiments behind; the literal in main() is named before anything is sent."""
    res = pack(MULTISITE / "workflow.py", tmp_path / "b.tar.gz", only_imports=True)
    assert [f.path for f in res.manifest.files] == ["workflow.py"]
    assert len(res.warnings) == 1 and res.warnings[0].startswith("workflow.py:")
    assert "names 'experiments', which exists here but is left out of the bundle" in res.warnings[0]
    assert "--include experiments" in res.warnings[0]


def test_remote_apps_travel_by_value(tmp_path: Path, workflow: ModuleType) -> None:
    """What GlobusComputeExecutor hands the SDK for `preprocess` (Parsl's wrapper
    around the app) deserializes and runs where the bundle does not exist."""
    from globus_compute_sdk.serialize import ComputeSerializer

    serde = ComputeSerializer()
    shipped = tmp_path / "shipped.txt"
    shipped.write_text(serde.serialize(workflow.preprocess.func))
    plain = tmp_path / "plain.txt"
    plain.write_text(serde.serialize(workflow._preprocess))
    probe = (
        "import sys\n"
        "from globus_compute_sdk.serialize import ComputeSerializer\n"
        "f = ComputeSerializer().deserialize(open(sys.argv[1]).read())\n"
        "print(f([0.0, 3.0, 0.0, 3.0], 2))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run_probe(serialized: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", probe, str(serialized)]
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)

    ok = run_probe(shipped)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(workflow._preprocess([0.0, 3.0, 0.0, 3.0], 2))
    # the same function defined the ordinary way would need the workflow module there
    bad = run_probe(plain)
    assert bad.returncode != 0 and "No module named 'multisite_workflow'" in bad.stderr


@pytest.fixture
def faked_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[responses.RequestsMock]:
    """THE GLOBUS SERVICE IS FAKED: Globus Auth's token grant and the version route
    the SDK's Executor calls when it is created."""
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "globus_compute"))
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", "5c0ffee0-0000-4000-8000-000000000001")
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "fake-secret")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback("POST", f"{AUTH}/v2/oauth2/token", callback=client_credentials_grant)
        version = {"api": "1.0", "min_sdk_version": "1.0.0", "min_ep_version": "1.0.0"}
        rsps.add("GET", f"{COMPUTE}/v2/version", json=version)
        yield rsps


def test_real_site_config_maps_labels_to_globus_compute_executors(faked_service: responses.RequestsMock) -> None:
    from parsl.executors import GlobusComputeExecutor, HighThroughputExecutor

    a, b = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    config = load("globus_config").make_config(preprocess_endpoint=a, analysis_endpoint=b, workers=2)
    try:
        by_label = {e.label: e for e in config.executors}
        assert set(by_label) == {"preprocess", "analysis", "postprocess"}
        preprocess, analysis, postprocess = by_label["preprocess"], by_label["analysis"], by_label["postprocess"]
        assert isinstance(preprocess, GlobusComputeExecutor) and str(preprocess.executor.endpoint_id) == a
        assert isinstance(analysis, GlobusComputeExecutor) and str(analysis.executor.endpoint_id) == b
        assert isinstance(postprocess, HighThroughputExecutor) and postprocess.max_workers_per_node == 2
    finally:
        for e in config.executors:
            if isinstance(e, GlobusComputeExecutor):
                e.executor.shutdown(wait=False, cancel_futures=True)


def test_real_site_config_without_credentials_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "globus_compute"))
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    with pytest.raises(SiteProfileError, match="no Globus credentials") as err:
        load("globus_config").make_config(preprocess_endpoint="a", analysis_endpoint="b")
    assert "GLOBUS_COMPUTE_CLIENT_ID" in err.value.hint


def test_readme_commands_match_the_files() -> None:
    readme = (MULTISITE / "README.md").read_text()
    offline = (
        "gcbundle submit examples/multisite/workflow.py --endpoint local "
        "--site examples/multisite/offline.yaml --wait"
    )
    assert offline in readme
    assert "--config examples/multisite/globus_config.py" in readme
    for name in ("preprocess_endpoint", "analysis_endpoint"):
        assert f"--set {name}=" in readme and name in (MULTISITE / "globus_config.py").read_text()
