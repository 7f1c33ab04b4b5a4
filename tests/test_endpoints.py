"""Endpoint aliases: the config file, the CLI, and how alias defaults reach a submission.

No Globus service is involved here except in the last test, which says so:
aliases are a local file, and the submissions that use their defaults run on
the real embedded `local` endpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bundle import api, endpoints
from bundle.cli import main
from bundle.errors import SiteProfileError, UsageError
from bundle.transport import get_transport
from bundle.transport.globus import GlobusTransport
from bundle.transport.local import LocalTransport
from tests.conftest import EXAMPLES

UUID = "4b116d3c-1703-4f8f-9f6f-39921e5864df"
FID = "6d0ba55f-de15-4af2-827d-05c50c338aa7"


def cli(*args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(main, [*args, "--json"])
    return res.exit_code, json.loads(res.stdout)


def test_add_list_remove_with_json(tmp_path: Path) -> None:
    code, env = cli(
        "endpoints", "add", "polaris", UUID.upper(),
        "--site", "local", "--set", "workers=3", "--function", f"probe={FID}",
    )  # fmt: skip
    assert code == 0 and env["command"] == "endpoints add"
    assert env["data"] == {
        "name": "polaris",
        "uuid": UUID,
        "site": "local",
        "set": {"workers": 3},
        "functions": {"probe": FID},
        "missing_parameters": [],
    }
    code, env = cli("endpoints", "list")
    assert code == 0 and [e["name"] for e in env["data"]] == ["polaris"]
    text = CliRunner().invoke(main, ["endpoints", "list"]).stdout
    assert "polaris" in text and UUID in text and "workers=3" in text and "1 registered functions" in text
    code, env = cli("endpoints", "remove", "polaris")
    assert code == 0 and env["data"]["uuid"] == UUID
    code, env = cli("endpoints", "list")
    assert env["data"] == []


def test_the_file_lives_in_the_xdg_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCBUNDLE_CONFIG")
    endpoints.add("site-a", UUID)
    path = tmp_path / "xdg-config" / "gcbundle" / "endpoints.yaml"
    assert endpoints.config_path() == path
    assert yaml.safe_load(path.read_text()) == {"endpoints": {"site-a": {"uuid": UUID}}}


def test_gcbundle_config_overrides_the_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCBUNDLE_CONFIG", str(tmp_path / "elsewhere.yaml"))
    endpoints.add("site-a", UUID)
    assert (tmp_path / "elsewhere.yaml").is_file()


@pytest.mark.parametrize("args, message", [
    (["nope", UUID], None),
    (["local", UUID], "embedded endpoint"),
    ([UUID, UUID], "looks like an endpoint UUID"),
    (["bad name", UUID], "not a valid name"),
    (["site", "not-a-uuid"], "not an endpoint UUID"),
    (["site", UUID, "--set", "workers=2"], "--set needs --site"),
    (["site", UUID, "--function", f"frobnicate={FID}"], "unknown task"),
    (["site", UUID, "--function", "probe=xyz"], "not a UUID"),
    (["site", UUID, "--function", "probe"], "TASK=ID"),
])
def test_add_refuses_what_cannot_work(args: list[str], message: str | None) -> None:
    if message is None:  # the valid baseline
        assert cli("endpoints", "add", *args)[0] == 0
        return
    code, env = cli("endpoints", "add", *args)
    assert code != 0 and env["status"] == "error" and message in env["errors"][0]["message"]
    assert endpoints.load_all() == {}


def test_add_checks_the_site_and_its_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SiteProfileError, match="unknown site profile"):
        endpoints.add("s", UUID, site="no-such-site")
    with pytest.raises(SiteProfileError, match="has no parameter account"):
        endpoints.add("s", UUID, site="local", params={"account": "p"})
    monkeypatch.chdir(EXAMPLES / "multisite")
    ep = endpoints.add("s", UUID, site="offline.yaml")
    assert ep.site == str(EXAMPLES / "multisite" / "offline.yaml"), "a profile file is stored by absolute path"


def test_duplicates_need_replace() -> None:
    endpoints.add("s", UUID)
    with pytest.raises(UsageError, match="already exists"):
        endpoints.add("s", UUID, site="local")
    assert endpoints.add("s", UUID, site="local", replace=True).site == "local"


def test_remove_unknown() -> None:
    code, env = cli("endpoints", "remove", "ghost")
    assert code == UsageError.exit_code and "no endpoint alias 'ghost'" in env["errors"][0]["message"]


@pytest.mark.parametrize("text, message", [
    ("endpoints: [1, 2]", "must map alias names"),
    ("endpoints:\n  s: {uuid: nope}", "no valid uuid"),
    ("endpoints:\n  s: {uuid: " + UUID + ", set: [1]}", "`set` must map"),
    ("endpoints:\n  s: {uuid: " + UUID + ", functions: {probe: 12}}", "`functions` must map"),
    ("endpoints: {s: {uuid: x", "not valid YAML"),
])
def test_a_broken_file_says_where_and_what(text: str, message: str) -> None:
    path = endpoints.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        endpoints.load_all()
    assert str(path) in str(err.value)


def test_functions_file_from_register_output(tmp_path: Path) -> None:
    shared = tmp_path / "ids.json"
    shared.write_text(json.dumps({"command": "register", "data": {"functions": {"probe": FID, "status": FID}}}))
    code, env = cli("endpoints", "add", "s", UUID, "--functions", str(shared))
    assert code == 0 and env["data"]["functions"] == {"probe": FID, "status": FID}
    (tmp_path / "ids.yaml").write_text(f"launch: {FID}\n")
    assert endpoints.read_function_ids(tmp_path / "ids.yaml") == {"launch": FID}
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(UsageError, match="holds no function ids"):
        endpoints.read_function_ids(tmp_path / "empty.yaml")


def test_get_transport_local_uuid_alias_unknown() -> None:
    assert isinstance(get_transport("local"), LocalTransport)
    endpoints.add("polaris", UUID, functions={"probe": FID})
    t = get_transport("polaris")
    assert isinstance(t, GlobusTransport) and (t.endpoint_id, t.label, t.functions) == (UUID, "polaris", {"probe": FID})
    assert get_transport(UUID).label == "polaris", "a UUID an alias names behaves as that alias"
    with pytest.raises(UsageError) as err:
        get_transport("polaris2")
    assert "unknown endpoint 'polaris2'" in str(err.value)
    assert "polaris" in err.value.hint and "endpoints add" in err.value.hint


def test_submit_defaults_rules() -> None:
    endpoints.add("s", UUID, site="local", params={"workers": 3})
    d = endpoints.submit_defaults
    assert d("s", None, {}) == ("local", {"workers": 3})
    assert d("s", None, {"workers": 1}) == ("local", {"workers": 1}), "--set overrides the alias"
    assert d("s", "slurm", {}) == ("slurm", {}), "another site does not get the alias's values"
    assert d("s", None, {}, config="conf.py") == (None, {}), "--config replaces the site"
    assert d("local", None, {}) == (None, {})
    assert d(UUID, None, {}) == ("local", {"workers": 3})
    assert d("unknown-name", None, {}) == (None, {})


def test_alias_defaults_reach_the_login_node(home: Path, tmp_path: Path) -> None:
    """A submission names only the alias; its site and --set values arrive in the
    run's request on the login node (played by the real `local` transport here,
    since the Globus service cannot be reached)."""
    profile = tmp_path / "tiny.yaml"
    profile.write_text((EXAMPLES.parent / "bundle" / "sites" / "local.yaml").read_text())
    endpoints.add("mysite", UUID, site=str(profile), params={"workers": 1})
    run = api.submit(EXAMPLES / "hello" / "workflow.py", "mysite", args={"n": 2}, transport=LocalTransport(), wait=True)
    assert run.last_state["state"] == "succeeded"
    request = json.loads((home / "runs" / run.id / "run.json").read_text())
    assert request["params"] == {"workers": 1} and request["site"]["name"] == "tiny"
    assert run.record.site == str(profile.resolve()) and run.record.endpoint == "mysite"


def test_add_warns_when_the_site_lacks_a_required_parameter() -> None:
    """The alias is stored (a user may give --set account=... per submit), with a
    note that names the parameter and the command that stores it."""
    res = CliRunner().invoke(main, ["endpoints", "add", "polaris", UUID, "--site", "polaris", "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["data"]["missing_parameters"] == ["account"]
    assert res.stderr.count("\n") == 1 and "site polaris needs account" in res.stderr
    assert f"`gcbundle endpoints add polaris {UUID} --site polaris --set account=VALUE --replace`" in res.stderr
    # the command it prints works, and then there is nothing to say
    fixed = ["endpoints", "add", "polaris", UUID, "--site", "polaris", "--set", "account=p", "--replace"]
    res = CliRunner().invoke(main, fixed)
    assert res.exit_code == 0 and res.stderr == ""
    assert endpoints.missing_required(endpoints.resolve("polaris")) == []
