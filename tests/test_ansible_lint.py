"""Static checks of the Ansible content: ansible-lint (production profile,
from ansible/.ansible-lint), yamllint (ansible/.yamllint), and the roles'
variables: each is prefixed by its role's name and documented in the role's
README with its default."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bundle import profiles

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
ROLES = sorted(p.name for p in (ANSIBLE_DIR / "roles").iterdir() if p.is_dir())


def run_tool(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_ansible_lint_production_profile(ansible_env: dict[str, str]) -> None:
    proc = run_tool(["ansible-lint", "--offline", "--profile", "production", "--strict"], ansible_env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]


def test_yamllint(ansible_env: dict[str, str]) -> None:
    proc = run_tool(["yamllint", "--strict", "."], ansible_env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_playbook_syntax(ansible_env: dict[str, str]) -> None:
    for inventory in sorted((ANSIBLE_DIR / "inventory").glob("*.yml")):
        proc = run_tool(
            ["ansible-playbook", "--syntax-check", "-i", str(inventory), "site.yml"], ansible_env
        )
        assert proc.returncode == 0, f"{inventory.name}: {proc.stdout}{proc.stderr}"


def test_example_inventories_resolve(ansible_env: dict[str, str]) -> None:
    """Each example inventory puts its hosts under gcbundle_login_nodes (the
    group site.yml targets) and gives them their group_vars."""
    for name, var in (("polaris", "gcbundle_site_queue"), ("perlmutter", "gcbundle_site_queue")):
        proc = run_tool(
            ["ansible-inventory", "-i", f"inventory/{name}.yml", "--list"], ansible_env
        )
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert name in data["gcbundle_login_nodes"]["children"]
        (host,) = data[name]["hosts"]
        assert var in data["_meta"]["hostvars"][host]


@pytest.mark.parametrize("site", ["polaris", "perlmutter"])
def test_example_site_values_fit_their_profile(site: str) -> None:
    """What the role's check-profile step refuses never ships in an example:
    each site parameter the example sets is one its profile has, and
    gcbundle comes from the wheel step 4 of ansible/README.md builds."""
    values = yaml.safe_load((ANSIBLE_DIR / "inventory" / "group_vars" / site / "main.yml").read_text())
    known = profiles.load(values["gcbundle_site_profile"]).parameters()
    params = dict(values["gcbundle_site_profile_params"])
    for var, name in (("gcbundle_site_account", "account"), ("gcbundle_site_queue", "queue")):
        if values.get(var):
            params[name] = values[var]
    assert set(params) <= set(known), set(params) - set(known)
    missing = [n for n, p in known.items() if p.required and n not in params]
    assert not missing, f"{site}: the example leaves required parameters unset: {missing}"
    assert values["gcbundle_python_gcbundle_source"] == "wheel"
    assert values["gcbundle_python_gcbundle_wheel"] == "{{ playbook_dir }}/../dist/gcbundle-*.whl"
    assert "python -m pip wheel --no-deps -w dist ." in (ANSIBLE_DIR / "README.md").read_text()


@pytest.mark.parametrize("role", ROLES)
def test_role_layout_and_variables(role: str) -> None:
    root = ANSIBLE_DIR / "roles" / role
    for part in ("defaults", "tasks", "handlers", "meta"):
        assert (root / part / "main.yml").is_file(), f"{role}: no {part}/main.yml"
    assert (root / "templates").is_dir()
    defaults = yaml.safe_load((root / "defaults" / "main.yml").read_text())
    readme = (root / "README.md").read_text()
    for name, value in defaults.items():
        assert name.startswith(f"{role}_"), f"{role}: {name} lacks the role prefix"
        assert f"`{name}`" in readme, f"{role}: {name} is not in README.md"
        for shown in _scalars(value):
            assert shown in readme, f"{role}: the default of {name} ({shown!r}) is not in README.md"
    # Every variable does something: a task, handler or template of the role
    # reads it (directly, or through another default that one reads).
    used = "\n".join(
        p.read_text() for part in ("tasks", "handlers", "templates")
        for p in sorted((root / part).rglob("*")) if p.is_file()
    )  # fmt: skip
    reached = {name for name in defaults if re.search(rf"\b{name}\b", used)}
    grew = True
    while grew:
        more = {name for name in defaults if name not in reached
                and any(re.search(rf"\b{name}\b", yaml.safe_dump(defaults[r])) for r in reached)}
        reached |= more
        grew = bool(more)
    unused = sorted(set(defaults) - reached)
    assert not unused, f"{role}: variables no task, handler or template reads: {unused}"


def _scalars(value: object) -> list[str]:
    """How a default reads in a README: a scalar as YAML writes it, a list
    or mapping as its flow form when empty, else its scalar members."""
    if isinstance(value, (list, dict)) and value:
        items = value.values() if isinstance(value, dict) else value
        return [s for item in items for s in _scalars(item)]
    if isinstance(value, str):
        return [value]
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return [text.removesuffix("\n...")]
