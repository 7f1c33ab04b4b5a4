"""The Ansible roles, run for real: ansible-playbook over SSH (loopback sshd
from scripts/setup_sshd.sh) provisions an unprivileged account as a site user
would (no become), twice; then the result is checked as that account.

Here the endpoint is not started against the Globus Compute service
(``globus-compute-endpoint start`` registers with the cloud service, which
this machine cannot reach). Everything up to it is tested: ``configure``, the
files the role writes, ``globus-compute-endpoint list``, the endpoint's own
config loader and template renderer, and the engine from that configuration
executing a packed task offline. The keep-alive script is run for real with a
stand-in for ``globus-compute-endpoint start`` (the only part replaced), and
the systemd unit is rendered by the role and compared with what
``globus-compute-endpoint enable-on-boot`` writes (no systemd runs here).

The start itself is tested by the daemon tier (tests/test_daemon.py and
tests/test_daemon_restarts.py, set up in tests/conftest_daemon.py): the real
endpoint daemon, started from the files and systemd unit this role writes,
registers with a stand-in of the Globus service (tests/globus_service.py),
heartbeats and runs gcbundle's tasks over a real RabbitMQ.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest_ssh import SshTarget

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
ROLES = ANSIBLE_DIR / "roles"

# Where the test provisions, under the account's home (removed first).
TEST_DIR = "gcbundle-test"
ENDPOINT = "gcbundle"

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def role_defaults(role: str) -> dict[str, object]:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())


@dataclass
class PlayRun:
    returncode: int
    output: str
    seconds: float
    recap: dict[str, int] = field(default_factory=dict)


def parse_recap(output: str) -> dict[str, int]:
    matches = list(RECAP.finditer(output))
    assert len(matches) == 1, f"expected one host in the recap:\n{output[-3000:]}"
    return {k: int(v) for k, v in matches[0].groupdict().items() if k != "host"}


@dataclass
class Provisioned:
    target: SshTarget
    workdir: Path
    inventory: Path
    env: dict[str, str]
    runs: list[PlayRun]
    # Where the play puts things on the account (strings: paths over SSH), and
    # the checkout it runs from.
    venv: str = field(init=False)
    envs_dir: str = field(init=False)
    gcbundle_home: str = field(init=False)
    ep_dir: str = field(init=False)
    checkout: Path = field(init=False)

    def __post_init__(self) -> None:
        home = self.target.home
        self.venv = f"{home}/{TEST_DIR}/venv"
        self.envs_dir = f"{self.venv}-envs"
        self.gcbundle_home = f"{home}/{TEST_DIR}/home"
        self.ep_dir = f"{home}/.globus_compute/{ENDPOINT}"
        self.checkout = self.workdir / "checkout"

    def play(self, *extra: str, timeout: float = 900, ok: bool = True) -> PlayRun:
        # Provision without starting (starting needs the Globus service),
        # given on the command line as ansible/README.md's step 6 does.
        return run_playbook(
            self.inventory, self.env, self.checkout,
            "-e", "gcbundle_endpoint_start=false", *extra, timeout=timeout, ok=ok,
        )  # fmt: skip

    def current_env(self) -> str:
        """The versioned environment gcbundle_python_venv points at."""
        return self.target.run(["readlink", self.venv], check=True).stdout.strip()


def run_playbook(
    inventory: Path, env: dict[str, str], checkout: Path, *extra: str, timeout: float = 900,
    ok: bool = True,
) -> PlayRun:
    """ansible-playbook with the checkout's site.yml, from the checkout's top
    (where ansible/README.md runs it)."""
    start = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "ansible/site.yml", *extra],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    run = PlayRun(proc.returncode, output, seconds)
    if ok:
        assert proc.returncode == 0, f"ansible-playbook failed:\n{output[-6000:]}"
    else:
        assert proc.returncode != 0, f"ansible-playbook should have failed:\n{output[-6000:]}"
    run.recap = parse_recap(proc.stdout)
    return run


#: The build line ansible/README.md gives (step 4), run at the checkout's top.
WHEEL_BUILD = "python -m pip wheel --no-deps -w dist ."


def copy_checkout(dest: Path, version: str | None = None) -> Path:
    """What a gcbundle checkout holds for building and provisioning (a copy,
    so no build/, dist/ or egg-info lands in the work tree); ``version``
    replaces the package's version (an upgrade)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".cache")
    for tree in ("bundle", "login_node", "ansible"):
        shutil.copytree(REPO / tree, dest / tree, ignore=ignore)
    if version:
        pyproject = dest / "pyproject.toml"
        text = pyproject.read_text()
        assert len(re.findall(r'(?m)^version = "', text)) == 1  # [project]'s, not e.g. ruff's target-version
        pyproject.write_text(re.sub(r'(?m)^version = "[^"]*"', f'version = "{version}"', text))
    return dest


def build_wheel(checkout: Path) -> Path:
    """Build gcbundle's wheel with the documented line, at the checkout's top."""
    assert WHEEL_BUILD in (REPO / "ansible" / "README.md").read_text()
    argv = [sys.executable, *WHEEL_BUILD.split()[1:]]
    proc = subprocess.run(argv, cwd=checkout, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"building gcbundle's wheel failed:\n{proc.stderr[-4000:]}"
    (wheel,) = (checkout / "dist").glob("gcbundle-*.whl")
    return wheel


def example_group_vars(site: str) -> dict[str, object]:
    return yaml.safe_load((ANSIBLE_DIR / "inventory" / "group_vars" / site / "main.yml").read_text())


#: A site profile given by path (gcbundle_site_profile): the built-in local one,
#: plus the `account` and `queue` parameters of a batch profile, which show in
#: the workers' environment. Written to the account's home by the fixture.
SITE_PROFILE = """\
description: LocalProvider workers, with a batch profile's account and queue parameters (for the role's test)
parameters:
  account:
    required: false
  queue:
    required: false
  workers:
    default: 2
engine:
  type: HighThroughputExecutor
  label: htex_local
  max_workers_per_node: ${workers}
  cores_per_worker: 1
  address: 127.0.0.1
  provider:
    type: LocalProvider
    init_blocks: 1
    min_blocks: 0
    max_blocks: 1
    worker_init: "export GCBUNDLE_TEST_ACCOUNT=${account} GCBUNDLE_TEST_QUEUE=${queue}"
"""
#: Two lines, as a YAML block gives them: each must run in the job.
WORKER_INIT_BEFORE = "export GCBUNDLE_SITE_A=1\nexport GCBUNDLE_SITE_B='two words'\n"


def write_inventory(workdir: Path, target: SshTarget) -> Path:
    inv = workdir / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    hosts = {
        "gcbundle_login_nodes": {
            "children": {"loopback": {"hosts": {"gcbtest-loopback": target.ansible_host_vars()}}}
        }
    }
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    # gcbundle's source exactly as the examples give it (the documented first run).
    example = example_group_vars("polaris")
    source = {k: v for k, v in example.items() if k.startswith("gcbundle_python_gcbundle_")}
    assert source["gcbundle_python_gcbundle_source"] == "wheel", source
    group_vars = {
        "gcbundle_python_venv": f"{target.home}/{TEST_DIR}/venv",
        **source,
        "gcbundle_endpoint_name": ENDPOINT,
        "gcbundle_endpoint_keepalive": "cron",
        "gcbundle_endpoint_amqp_port": 443,
        "gcbundle_endpoint_allowed_functions": ["00000000-0000-4000-8000-000000000001"],
        "gcbundle_endpoint_max_workers_per_node": 2,
        "gcbundle_site_home": f"{target.home}/{TEST_DIR}/home",
        "gcbundle_site_profile": f"{target.home}/{TEST_DIR}/site-profile.yaml",
        "gcbundle_site_account": "testproj",
        "gcbundle_site_queue": "debug",
        "gcbundle_site_tmpdir": "/tmp",
        "gcbundle_site_worker_init_before": WORKER_INIT_BEFORE,
        "gcbundle_site_profile_params": {"workers": 2},
    }
    (inv / "group_vars" / "loopback.yml").write_text(yaml.safe_dump(group_vars, sort_keys=False))
    return inv / "hosts.yml"


@pytest.fixture(scope="module")
def provisioned(
    ssh_target: SshTarget,
    ansible_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Provisioned]:
    """Provision the account from scratch (its pip cache stays), then again."""
    workdir = tmp_path_factory.mktemp("provision")
    # A clean slate (the account's pip cache stays): stop what an earlier,
    # interrupted run's keep-alive test left running, by its recorded pid.
    ssh_target.run(
        f"f=~/.globus_compute/{ENDPOINT}/gcbundle-keepalive.pid; "
        'if [ -f "$f" ]; then read -r h p < "$f"; '
        '[ "$h" = "$(hostname)" ] && kill "$p" 2>/dev/null; fi; '
        f"rm -rf ~/{TEST_DIR} ~/.globus_compute/{ENDPOINT}; crontab -r 2>/dev/null; true",
        check=True,
    )
    ssh_target.put(SITE_PROFILE, f"{ssh_target.home}/{TEST_DIR}/site-profile.yaml")
    build_wheel(copy_checkout(workdir / "checkout"))
    inventory = write_inventory(workdir, ssh_target)
    prov = Provisioned(ssh_target, workdir, inventory, ansible_env, runs=[])
    prov.runs.append(prov.play())
    prov.runs.append(prov.play())
    yield prov


def test_first_run_provisions(provisioned: Provisioned) -> None:
    first = provisioned.runs[0]
    assert first.recap["failed"] == 0 and first.recap["unreachable"] == 0
    assert first.recap["changed"] > 0


def test_second_run_changes_nothing(
    provisioned: Provisioned, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = provisioned.runs
    assert second.recap["changed"] == 0, second.output[-6000:]
    assert second.recap["failed"] == 0
    with capsys.disabled():
        print(
            f"\nansible provisioning over ssh: first run {first.seconds:.1f} s "
            f"(changed={first.recap['changed']}), second run {second.seconds:.1f} s "
            f"(changed={second.recap['changed']})"
        )


def test_venv_has_the_pinned_versions(provisioned: Provisioned) -> None:
    defaults = role_defaults("gcbundle_python")
    script = textwrap.dedent(
        """
        import json, importlib.metadata as m
        import parsl, globus_compute_endpoint, globus_compute_sdk, bundle, login_node
        print(json.dumps({d: m.version(d) for d in
              ("parsl", "globus-compute-endpoint", "globus-compute-sdk",
               "texttable", "gcbundle")}))
        """
    )
    proc = provisioned.target.run([f"{provisioned.venv}/bin/python", "-c", script], check=True)
    versions = json.loads(proc.stdout.strip().splitlines()[-1])
    assert versions["parsl"] == defaults["gcbundle_python_parsl_version"]
    assert versions["globus-compute-endpoint"] == defaults["gcbundle_python_endpoint_version"]
    assert versions["globus-compute-sdk"] == defaults["gcbundle_python_endpoint_version"]
    assert versions["texttable"] == "1.7.0"
    assert versions["gcbundle"]
    # Built from Debian's interpreter, not the system Python changed.
    cfg = provisioned.target.run(["cat", f"{provisioned.venv}/pyvenv.cfg"], check=True).stdout
    assert "include-system-site-packages = false" in cfg


def test_endpoint_list_shows_the_endpoint(provisioned: Provisioned) -> None:
    proc = provisioned.target.run(
        [f"{provisioned.venv}/bin/globus-compute-endpoint", "list"], check=True, timeout=120
    )
    rows = [line for line in proc.stdout.splitlines() if f"| {ENDPOINT} " in line]
    assert rows, proc.stdout
    assert "Initialized" in rows[0], proc.stdout


def test_files_and_modes(provisioned: Provisioned) -> None:
    t = provisioned
    proc = t.target.run(
        [
            "stat", "-c", "%a %n",
            t.gcbundle_home, f"{t.gcbundle_home}/site-defaults.yaml",
            f"{t.ep_dir}/config.yaml", f"{t.ep_dir}/user_config_template.yaml.j2",
            f"{t.ep_dir}/gcbundle-keepalive.sh",
        ],
        check=True,
    )  # fmt: skip
    modes = {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in proc.stdout.splitlines()}
    assert modes[t.gcbundle_home] == "700"
    assert modes[f"{t.gcbundle_home}/site-defaults.yaml"] == "600"
    assert modes[f"{t.ep_dir}/config.yaml"] == "600"
    assert modes[f"{t.ep_dir}/gcbundle-keepalive.sh"] == "700"

    site = yaml.safe_load(
        t.target.run(["cat", f"{t.gcbundle_home}/site-defaults.yaml"], check=True).stdout
    )
    assert site["tmpdir"] == "/tmp"
    # Real newlines: one command per line, the activation last.
    assert site["worker_init"].splitlines() == [
        "export GCBUNDLE_SITE_A=1", "export GCBUNDLE_SITE_B='two words'", f"source {t.venv}/bin/activate",
    ]
    # gcbundle_site_account and gcbundle_site_queue are the profile's account and queue.
    assert site["profile_params"] == {"account": "testproj", "queue": "debug", "workers": 2}
    assert set(site) == {"worker_init", "tmpdir", "profile_params"}

    template = t.target.run(
        ["cat", f"{t.ep_dir}/user_config_template.yaml.j2"], check=True
    ).stdout
    assert "curl" not in template and "uv " not in template

    # No credentials given: none written.
    creds = t.target.run(["test", "-e", f"{t.ep_dir}/gcbundle-credentials.env"])
    assert creds.returncode == 1


def test_crontab_entries_written_disabled(provisioned: Provisioned) -> None:
    """gcbundle_endpoint_start: false writes the keep-alive entries commented
    out; a cron daemon would run nothing."""
    crontab = provisioned.target.run(["crontab", "-l"], check=True).stdout
    script = f"{provisioned.ep_dir}/gcbundle-keepalive.sh run"
    lines = [line for line in crontab.splitlines() if script in line]
    assert len(lines) == 2, crontab
    assert all(line.startswith("#") for line in lines), crontab
    assert any(line.startswith("#@reboot ") for line in lines), crontab
    assert any(line.startswith("#*/10 * * * * ") for line in lines), crontab


ENGINE_CHECK = r'''
"""Load the endpoint "{name}" the way the endpoint does, and run one task
through the engine its template describes (no Globus service involved)."""
import json, os, pathlib, pwd, sys, tempfile, uuid

import yaml
from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Task
from globus_compute_endpoint.endpoint.config import CoreEndpointConfig, UserEndpointConfig
from globus_compute_endpoint.endpoint.config.utils import (
    get_config, load_config_yaml, load_user_config_schema, load_user_config_template,
    render_config_user_template,
)
from globus_compute_endpoint.endpoint.endpoint import Endpoint
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.serialize import ComputeSerializer

ep_dir = pathlib.Path.home() / ".globus_compute" / "{name}"
core = get_config(ep_dir)
assert isinstance(core, CoreEndpointConfig), type(core)

# As the core endpoint does before it starts a user endpoint process.
tmpl_path = Endpoint.user_config_template_path(ep_dir, core)
template = load_user_config_template(tmpl_path)
schema = load_user_config_schema(Endpoint.user_config_schema_path(ep_dir, core))
identity = MappedPosixIdentity(pwd.getpwuid(os.getuid()), [], None)
rendered = render_config_user_template(core, template, tmpl_path, identity, schema, {{}}, {{}})
env_file = yaml.safe_load((ep_dir / "user_environment.yaml").read_text()) or {{}}
os.environ.update({{k: str(v) for k, v in env_file.items()}})

uep = load_config_yaml(rendered)
assert isinstance(uep, UserEndpointConfig), type(uep)
engine = uep.engine


def probe(x):
    import os, sys
    return {{"value": x + 1, "GCBUNDLE_HOME": os.environ.get("GCBUNDLE_HOME"),
            "PATH": os.environ.get("PATH"), "executable": sys.executable}}


serde = ComputeSerializer()
task_id = uuid.uuid4()
body = serde.pack_buffers([serde.serialize(probe), serde.serialize((41,)), serde.serialize({{}})])
packed = messagepack.pack(Task(task_id=task_id, task_buffer=body))

run_dir = tempfile.mkdtemp(prefix="gcbundle-engine-")
engine.start(endpoint_id=uuid.uuid4(), run_dir=run_dir)
try:
    future = GCFuture(task_id)
    engine.submit(future, packed, resource_specification={{}})
    result = messagepack.unpack(future.result(timeout=180))
finally:
    engine.shutdown()

assert result.task_id == task_id
if result.is_error:
    sys.exit("task failed: " + result.data)
print(json.dumps({{
    "result": serde.deserialize(result.data),
    "engine": type(engine).__name__,
    "provider": type(engine.provider).__name__,
    "idle_heartbeats_soft": uep.idle_heartbeats_soft,
    "idle_heartbeats_hard": uep.idle_heartbeats_hard,
    "amqp_port": core.amqp_port,
    "allowed_functions": [str(f) for f in core.allowed_functions or []],
    "worker_init": engine.provider.worker_init,
}}))
'''


def test_endpoint_config_runs_a_task_offline(provisioned: Provisioned) -> None:
    t = provisioned
    script = f"{t.target.home}/{TEST_DIR}/engine_check.py"
    t.target.put(ENGINE_CHECK.format(name=ENDPOINT), script)
    # A bare environment, as cron or the endpoint would give: the venv's
    # python by path, nothing else on PATH.
    proc = t.target.run(
        ["env", "-i", f"HOME={t.target.home}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8",
         f"{t.venv}/bin/python", script],
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["result"]["value"] == 42
    assert report["engine"] == "GlobusComputeEngine"
    assert report["provider"] == "LocalProvider"
    assert report["result"]["GCBUNDLE_HOME"] == t.gcbundle_home
    # The endpoint's files name the versioned environment gcbundle_python_venv
    # points at: a new one changes them, which restarts the endpoint.
    env = t.current_env()
    assert env.startswith(f"{t.envs_dir}/")
    assert report["result"]["PATH"].split(":")[0] == f"{env}/bin"
    assert report["result"]["executable"].startswith(f"{env}/")
    assert report["idle_heartbeats_soft"] >= 7 * 2880  # a week of 30 s heartbeats
    assert report["idle_heartbeats_hard"] >= 7 * 2880
    assert report["amqp_port"] == 443
    assert report["allowed_functions"] == ["00000000-0000-4000-8000-000000000001"]
    assert "curl" not in report["worker_init"]

    # The engine's shutdown left no interchange or worker pool behind.
    deadline = time.monotonic() + 30
    while True:
        left = t.target.run(["pgrep", "-u", t.target.user, "-f", "process_worker_pool|interchange"])
        if left.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert left.returncode != 0, f"leftover processes: {left.stdout}"


RUN_CHECK = r"""
# Through the engine that the provisioned endpoint configuration describes,
# send gcbundle's own login-node tasks (launch, status, results_manifest) for a
# small bundle, as the gcbundle client would, and wait for the run to succeed.
import json, os, pathlib, pwd, sys, tempfile, time, uuid

import yaml
from globus_compute_endpoint.endpoint.config.utils import (
    get_config, load_config_yaml, load_user_config_schema, load_user_config_template,
    render_config_user_template,
)
from globus_compute_endpoint.endpoint.endpoint import Endpoint
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
from globus_compute_endpoint.engines.base import GCFuture

from bundle.pack import pack
from bundle.protocol import request, unwrap
from bundle.transport.wire import pack_task, task_function, unpack_result

ep_dir = pathlib.Path.home() / ".globus_compute" / "{name}"
core = get_config(ep_dir)
tmpl_path = Endpoint.user_config_template_path(ep_dir, core)
rendered = render_config_user_template(
    core, load_user_config_template(tmpl_path), tmpl_path,
    MappedPosixIdentity(pwd.getpwuid(os.getuid()), [], None),
    load_user_config_schema(Endpoint.user_config_schema_path(ep_dir, core)), {{}}, {{}},
)
env_file = yaml.safe_load((ep_dir / "user_environment.yaml").read_text()) or {{}}
os.environ.update({{k: str(v) for k, v in env_file.items()}})
engine = load_config_yaml(rendered).engine

work = pathlib.Path(tempfile.mkdtemp(prefix="gcbundle-run-"))
(work / "wf").mkdir()
(work / "wf" / "workflow.py").write_text(
    "import os, sys\nfrom parsl import python_app\n\n@python_app\ndef cube(x):\n    return x ** 3\n\n"
    "@python_app\ndef job_env():\n    import os, sys\n"
    "    names = ('GCBUNDLE_SITE_A', 'GCBUNDLE_SITE_B', 'GCBUNDLE_TEST_ACCOUNT', 'GCBUNDLE_TEST_QUEUE')\n"
    "    return dict({{n: os.environ.get(n) for n in names}}, python=sys.executable)\n\n"
    "def main(n=3):\n    return {{'cubes': [cube(i).result() for i in range(n)], 'python': sys.executable, "
    "'home': os.environ.get('GCBUNDLE_HOME'), 'job': job_env().result()}}\n"
)
# The site profile the role names (gcbundle_site_profile), as submit --site sends it.
profile_text = (pathlib.Path.home() / "{test_dir}" / "site-profile.yaml").read_text()
site = {{"name": "site-profile", "text": profile_text, "params": {{}}}}
packed = pack(work / "wf" / "workflow.py", work / "b.tar.gz")


def call(task, **fields):
    task_id, body = pack_task(task_function(task), request(**fields))
    future = GCFuture(task_id)
    engine.submit(future, body, resource_specification={{}})
    return unwrap(unpack_result(future.result(timeout=180)))


engine.start(endpoint_id=uuid.uuid4(), run_dir=str(work / "engine"))
try:
    run_id = uuid.uuid4().hex[:12]
    launched = call("launch", run_id=run_id, digest=packed.digest, archive_sha256=packed.archive_sha256,
                    bundle=packed.path.read_bytes(), spec={{"args": {{"n": 4}}, "site": site}})
    deadline = time.monotonic() + 240
    st = launched["state"]
    while st["state"] not in ("succeeded", "failed", "cancelled", "lost") and time.monotonic() < deadline:
        time.sleep(1)
        st = call("status", run_id=run_id)
    listing = call("results_manifest", run_id=run_id)
finally:
    engine.shutdown()
run_dir = pathlib.Path(os.environ["GCBUNDLE_HOME"]) / "runs" / run_id
print(json.dumps({{
    "state": st,
    "files": [f["path"] for f in listing["files"]],
    "result": json.loads((run_dir / "result.json").read_text()) if st["state"] == "succeeded" else None,
    "run_dir_mode": oct(run_dir.stat().st_mode & 0o777),
    "run_id": run_id,
}}))
"""


def test_a_bundle_runs_to_succeeded_on_the_provisioned_account(provisioned: Provisioned) -> None:
    """The whole login-node side, as the site user: the role's venv, GCBUNDLE_HOME
    and engine configuration run gcbundle's task functions and a real DFK."""
    t = provisioned
    script = f"{t.target.home}/{TEST_DIR}/run_check.py"
    t.target.put(RUN_CHECK.format(name=ENDPOINT, test_dir=TEST_DIR), script)
    proc = t.target.run(
        ["env", "-i", f"HOME={t.target.home}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", f"{t.venv}/bin/python", script],
        timeout=420,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["state"]["state"] == "succeeded", report["state"]
    assert report["result"]["cubes"] == [0, 1, 8, 27]
    assert report["result"]["python"].startswith(t.current_env() + "/")
    assert report["result"]["home"] == t.gcbundle_home
    # The batch-like prelude ran both lines of gcbundle_site_worker_init_before,
    # and the site's account and queue reached the profile's parameters.
    job = report["result"]["job"]
    assert job["GCBUNDLE_SITE_A"] == "1" and job["GCBUNDLE_SITE_B"] == "two words", job
    assert job["GCBUNDLE_TEST_ACCOUNT"] == "testproj" and job["GCBUNDLE_TEST_QUEUE"] == "debug", job
    assert job["python"].startswith(t.current_env() + "/"), job
    assert report["run_dir_mode"] == "0o700"
    assert {"result.json", "report.json", "logs/driver.log"} <= set(report["files"])
    # nothing of the run left running under the account
    left = t.target.run(["pgrep", "-u", t.target.user, "-f", "process_worker_pool|interchange|login_node.driver"])
    assert left.returncode != 0, f"leftover processes: {left.stdout}"


FAKE_GCE = """#!/bin/bash
# Stand-in for `globus-compute-endpoint start NAME`, whose real form needs the
# Globus service: stays up and refreshes daemon.pid as the endpoint does.
[ "$1" = start ] || exit 2
pidf="$GLOBUS_COMPUTE_USER_DIR/$2/daemon.pid"
trap 'rm -f "$pidf"; exit 0' TERM
while :; do echo $$ > "$pidf"; sleep 1; done
"""


def test_keepalive_script(provisioned: Provisioned) -> None:
    """run/status/stop, and another login node's claim respected while its
    heartbeat is fresh and taken over once stale."""
    t = provisioned
    fake = f"{t.target.home}/{TEST_DIR}/fake-gce"
    t.target.put(FAKE_GCE, fake, mode="0755")
    ka = f"{t.ep_dir}/gcbundle-keepalive.sh"
    pidfile = f"{t.ep_dir}/gcbundle-keepalive.pid"
    daemon_pid = f"{t.ep_dir}/daemon.pid"
    here = t.target.run(["hostname"], check=True).stdout.strip()

    def ka_run(*args: str) -> subprocess.CompletedProcess[str]:
        return t.target.run(["env", f"GCBUNDLE_ENDPOINT_GCE={fake}", ka, *args], timeout=120)

    try:
        status = ka_run("status")
        assert status.returncode == 3 and "not running" in status.stdout

        started = ka_run("run")
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith(f"started on {here}")
        host, pid = t.target.run(["cat", pidfile], check=True).stdout.split()
        assert host == here and pid.isdigit()

        status = ka_run("status")
        assert status.returncode == 0 and f"running on {here} (pid {pid})" in status.stdout
        again = ka_run("run")
        assert again.returncode == 0 and again.stdout.startswith(f"running on {here}")

        stopped = ka_run("stop")
        assert stopped.returncode == 0 and stopped.stdout.startswith("stopped")
        # Gone (a zombie awaiting its reaper has an empty command line).
        gone = t.target.run(f"tr -d '\\0' < /proc/{pid}/cmdline 2>/dev/null | grep -q . || echo gone")
        assert gone.stdout.strip() == "gone"

        # Another login node holds it and its heartbeat is fresh: leave it.
        t.target.run(
            f"echo 'login-other 4242' > {pidfile} && touch {daemon_pid}", check=True
        )
        held = ka_run("run")
        assert held.returncode == 0 and held.stdout.startswith("running on login-other")

        # A restart (the role's handler) while another login node runs it:
        # a request that node's keep-alive acts on, said in the output.
        restart_file = f"{t.ep_dir}/gcbundle-keepalive.restart"
        asked = ka_run("restart")
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.startswith("running on login-other (pid 4242): asked its keep-alive to restart it")
        assert t.target.run(["test", "-f", restart_file]).returncode == 0

        # Its heartbeat went stale: this node takes over (and the request is done with).
        t.target.run(["touch", "-d", "-10 minutes", daemon_pid], check=True)
        taken = ka_run("run")
        assert taken.returncode == 0 and taken.stdout.startswith(f"started on {here}"), taken
        _, pid = t.target.run(["cat", pidfile], check=True).stdout.split()
        assert ka_run("run").stdout.startswith(f"running on {here} (pid {pid})")

        # Another node's playbook asks this one to restart (a request newer
        # than this node's start): its next run restarts it.
        t.target.run(f"touch -d '-1 minute' {pidfile} && date +%s > {restart_file}", check=True)
        restarted = ka_run("run")
        assert restarted.returncode == 0 and restarted.stdout.startswith(f"restarted on {here}"), restarted
        _, new_pid = t.target.run(["cat", pidfile], check=True).stdout.split()
        assert new_pid != pid
        assert t.target.run(["test", "-e", restart_file]).returncode == 1
        assert ka_run("run").stdout.startswith(f"running on {here} (pid {new_pid})")
    finally:
        ka_run("stop")
        t.target.run(["rm", "-f", pidfile, daemon_pid])


def test_systemd_unit_matches_enable_on_boot(provisioned: Provisioned) -> None:
    """The role's systemd branch, rendered into a directory the account owns
    (no systemd runs here), against the endpoint's own enable-on-boot unit."""
    t = provisioned
    unit_dir = f"{t.target.home}/{TEST_DIR}/systemd"
    t.target.run(["mkdir", "-p", unit_dir], check=True)
    run = t.play(
        "-e", "gcbundle_endpoint_keepalive=systemd",
        "-e", f"gcbundle_endpoint_systemd_unit_dir={unit_dir}",
    )  # fmt: skip
    assert run.recap["failed"] == 0
    unit = t.target.run(
        ["cat", f"{unit_dir}/globus-compute-endpoint-{ENDPOINT}.service"], check=True
    ).stdout
    theirs = t.target.run(
        [
            f"{t.venv}/bin/python", "-c",
            (
                "import sys; from globus_compute_endpoint.boot_persistence import"
                " _SYSTEMD_UNIT_TEMPLATE as T; print(T.format(ep_name=sys.argv[1],"
                " gce_exe=sys.argv[2], user_account=sys.argv[3]))"
            ),
            ENDPOINT, f"{t.current_env()}/bin/globus-compute-endpoint", t.target.user,
        ],
        check=True,
    ).stdout  # fmt: skip
    ours = [line for line in unit.splitlines() if line and not line.startswith("#")]
    wanted = [line for line in theirs.splitlines() if line]
    # Every line of enable-on-boot's unit, in its order; ours only adds the
    # environment lines and KillMode=process (a restart must not kill the
    # detached run drivers in the unit's cgroup; tests/test_daemon_restarts.py).
    positions = [ours.index(line) for line in wanted]
    assert positions == sorted(positions), unit
    extra = [line for line in ours if line not in wanted]
    assert all(
        line.startswith(("Environment=", "EnvironmentFile=")) or line == "KillMode=process" for line in extra
    ), extra
    t.target.run(["rm", "-rf", unit_dir], check=True)


def installed_from(t: Provisioned) -> dict[str, object]:
    """direct_url.json of the venv's gcbundle, and where `bundle` imports from."""
    script = (
        "import json, importlib.metadata as m, bundle; print(json.dumps({'direct_url':"
        " json.loads(m.distribution('gcbundle').read_text('direct_url.json') or '{}'),"
        " 'file': bundle.__file__}))"
    )
    proc = t.target.run([f"{t.venv}/bin/python", "-c", script], check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: Mistakes an administrator makes, each as -e arguments, and what the play
#: must say. The first four stop in the first checks, before anything is
#: installed; the last three once the new environment is built, before it is
#: made current (their environment exists already here).
MISTAKES = [
    (("-e", "gcbundle_python_gcbundle_wheel=/nonexistent/dist/gcbundle-*.whl"),
     ['gcbundle_python_gcbundle_wheel is "/nonexistent/dist/gcbundle-*.whl", which matches 0 file(s)',
      "python -m pip wheel --no-deps -w dist ."]),
    (("-e", "gcbundle_endpoint_keepalive=crom"),
     ['gcbundle_endpoint_keepalive is "crom": use auto, systemd, cron or none.']),
    (("-e", "gcbundle_python_interpreter=/opt/nope/bin/python3.11",
      "-e", "ansible_python_interpreter=/opt/nope/bin/python3.11"),
     ["gcbundle_python_interpreter (/opt/nope/bin/python3.11) cannot build the environment"]),
    (("-e", "gcbundle_endpoint_start=true"),
     ["gcbundle_endpoint_start is true, but neither gcbundle_endpoint_client_id/gcbundle_endpoint_client_secret",
      "globus-compute-endpoint login` once", "Nothing was changed."]),
    (("-e", json.dumps({"gcbundle_site_profile_params": {"workers": 2, "walltme": "01:00:00"}})),
     ["gcbundle_site_profile_params sets walltme, which site profile", "does not have. Its parameters: account, "]),
    (("-e", "gcbundle_site_profile=local"),
     ["gcbundle_site_account is set, but site profile local has no `account` parameter.",
      "gcbundle_site_queue is set, but site profile local has no `queue` parameter."]),
    (("-e", "gcbundle_site_profile=nosuch"),
     ['gcbundle_site_profile is "nosuch": unknown site profile \'nosuch\'']),
]


def test_mistakes_are_caught_first_naming_the_variable(provisioned: Provisioned) -> None:
    """Each mistake stops the play before anything changes (changed=0, the
    environments, the symlink and the crontab as they were), with a message
    that names the variable; no Globus login URL is printed."""
    t = provisioned
    state = f"ls {t.envs_dir}; readlink {t.venv}; crontab -l; md5sum {t.gcbundle_home}/site-defaults.yaml"
    before = t.target.run(state, check=True).stdout
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(lambda case: t.play(*case[0], ok=False), MISTAKES))
    for (extra, said), run in zip(MISTAKES, runs, strict=True):
        flat = " ".join(run.output.split())
        for text in said:
            assert text in flat, f"{extra}: {text!r} not in:\n{run.output[-4000:]}"
        assert run.recap["changed"] == 0 and run.recap["failed"] == 1, (extra, run.recap)
        assert "oauth2/authorize" not in run.output
    assert t.target.run(state, check=True).stdout == before
    # The crontab entries stayed disabled.
    crontab = t.target.run(["crontab", "-l"], check=True).stdout
    assert all(line.startswith("#") for line in crontab.splitlines() if "gcbundle-keepalive.sh" in line), crontab


def test_a_failing_worker_init_line_fails_the_play(provisioned: Provisioned) -> None:
    """The role's last task, gcbundle doctor --local, runs the job's prelude
    with the site's lines and stops the play when one fails; its findings
    are in the play's output."""
    t = provisioned
    run = t.play("-e", json.dumps({"gcbundle_site_worker_init_before": "gcbundle-no-such-command --flag"}), ok=False)
    flat = " ".join(run.output.split())
    failed = "a line of the job's worker_init failed (exit 127): gcbundle-no-such-command --flag"
    assert failed in flat, run.output[-4000:]
    assert "FAIL  worker_init" in run.output and "ok    GCBUNDLE_HOME" in run.output
    assert f"by hand: GCBUNDLE_HOME={t.gcbundle_home} {t.venv}/bin/gcbundle doctor --local --site" in run.output
    assert run.recap["failed"] == 1


def test_gcbundle_from_a_source_tree_then_back_to_the_wheel(provisioned: Provisioned) -> None:
    """Source `path` (an editable install of a checkout on the host), then
    `wheel` again: each switch reinstalls, each repeat changes nothing."""
    t = provisioned
    wheel_env = t.current_env()
    src = f"{t.target.home}/{TEST_DIR}/src"
    tree = subprocess.run(
        ["tar", "-C", str(t.checkout), "--exclude", "./build", "--exclude", "./dist", "--exclude", "./ansible",
         "--exclude", "*.egg-info", "-cf", "-", "."],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    t.target.run(f"rm -rf {src} && mkdir -p {src} && tar -C {src} -xf -", input=tree.stdout, check=True)

    path_vars = ("-e", "gcbundle_python_gcbundle_source=path", "-e", f"gcbundle_python_gcbundle_path={src}")
    switched = t.play(*path_vars)
    assert switched.recap["changed"] > 0
    assert t.play(*path_vars).recap["changed"] == 0
    now = installed_from(t)
    assert now["direct_url"]["url"] == f"file://{src}"
    assert now["direct_url"]["dir_info"]["editable"] is True
    assert str(now["file"]).startswith(f"{src}/"), now
    # Its own environment, beside the wheel's.
    assert t.current_env() != wheel_env and t.current_env().startswith(f"{t.envs_dir}/")

    back = t.play()
    assert back.recap["changed"] > 0
    now = installed_from(t)
    assert str(now["direct_url"]["url"]).endswith(".whl"), now
    assert str(now["file"]).startswith(f"{t.venv}/"), now
    # The wheel's environment was kept (gcbundle_python_keep_envs) and is current again.
    assert t.current_env() == wheel_env
    assert t.play().recap["changed"] == 0


MULTI_USER_PLAY = """
- name: The endpoint role alone, multi-user, on this machine
  hosts: localhost
  connection: local
  gather_facts: true
  roles:
    - role: gcbundle_endpoint
"""


def test_multi_user_endpoint_config_loads(
    ansible_env: dict[str, str], tmp_path: Path
) -> None:
    """Multi-user mode needs root: the endpoint role alone, run locally as
    root into a scratch directory (start: false), then loaded and rendered
    with the endpoint's own functions for an unprivileged account."""
    if os.geteuid() != 0:
        pytest.skip("multi-user mode needs root")
    from globus_compute_endpoint.endpoint.config import (
        CoreEndpointConfig,
        UserEndpointConfig,
    )
    from globus_compute_endpoint.endpoint.config.utils import (
        get_config,
        load_config_yaml,
        load_user_config_template,
        render_config_user_template,
    )
    from globus_compute_endpoint.endpoint.endpoint import Endpoint
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

    root = tmp_path / "globus_compute"
    mapping = [
        {
            "DATA_TYPE": "expression_identity_mapping#1.0.0",
            "mappings": [{"source": "{username}", "match": r"(.*)@example\.org", "output": "{0}"}],
        }
    ]
    extra_vars = {
        "ansible_python_interpreter": sys.executable,
        "gcbundle_endpoint_venv": sys.prefix,
        "gcbundle_endpoint_config_root": str(root),
        "gcbundle_endpoint_multi_user": True,
        "gcbundle_endpoint_contact_email": "hpc-admins@example.org",
        "gcbundle_endpoint_identity_mapping": mapping,
        "gcbundle_endpoint_start": False,
        "gcbundle_endpoint_keepalive": "none",
        "gcbundle_endpoint_amqp_port": 443,
    }
    (tmp_path / "play.yml").write_text(MULTI_USER_PLAY)
    (tmp_path / "vars.json").write_text(json.dumps(extra_vars))
    env = {**ansible_env, "ANSIBLE_ROLES_PATH": str(ROLES)}
    proc = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "play.yml", "-e", "@vars.json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    ep_dir = root / ENDPOINT
    core = get_config(ep_dir)
    assert isinstance(core, CoreEndpointConfig)
    assert core.email == "hpc-admins@example.org"
    assert core.amqp_port == 443 and core.public is False
    assert core.identity_mapping_config_path == ep_dir / "identity_mapping_config.json"
    assert json.loads(core.identity_mapping_config_path.read_text()) == mapping
    tmpl_path = Endpoint.user_config_template_path(ep_dir, core)
    assert oct(tmpl_path.stat().st_mode & 0o777) == "0o644"  # read by each mapped user

    user = pwd.getpwnam("nobody")
    rendered = render_config_user_template(
        core, load_user_config_template(tmpl_path), tmpl_path,
        MappedPosixIdentity(user, [], "someone@example.org"), None, {}, {},
    )  # fmt: skip
    uep = load_config_yaml(rendered)
    assert isinstance(uep, UserEndpointConfig)
    # Each mapped user's own GCBUNDLE_HOME, not the provisioning account's.
    assert 'GCBUNDLE_HOME="${GCBUNDLE_HOME:-$HOME/.gcbundle}"' in uep.engine.provider.worker_init
    env_file = yaml.safe_load((ep_dir / "user_environment.yaml").read_text())
    assert "GCBUNDLE_HOME" not in env_file and env_file["PATH"].startswith(f"{sys.prefix}/bin:")


def test_doctor_passes_on_the_provisioned_account(provisioned: Provisioned) -> None:
    """The role's last task is `gcbundle doctor --local`; run it again as the
    account and read its verdict."""
    t = provisioned
    proc = t.target.run(
        ["env", "-i", f"HOME={t.target.home}", f"PATH={t.venv}/bin:/usr/bin:/bin", "LANG=C.UTF-8",
         f"GCBUNDLE_HOME={t.gcbundle_home}", f"{t.venv}/bin/gcbundle", "doctor", "--local", "--json"],
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    envelope = json.loads(proc.stdout)
    assert envelope["status"] == "success" and envelope["command"] == "doctor"
    assert envelope["data"]["ok"] is True
    assert all(c["status"] != "fail" for c in envelope["data"]["checks"]), envelope["data"]["checks"]


# -- upgrades keep runs alive -------------------------------------------------------

#: Parsl and gcbundle of the upgrade: an earlier Parsl release that the pinned
#: globus-compute-endpoint accepts (it requires parsl>=2026.7.27), and the
#: checkout's gcbundle under another version.
UPGRADE_PARSL = "2026.10.19"

STANDIN_GCE = r'''#!/usr/bin/env python3
"""STAND-IN for `globus-compute-endpoint start NAME`: the real command registers
with the Globus Compute service and takes its tasks from the service's AMQP
queues, which this machine cannot reach. Everything else is as the endpoint
does it on the login node: it is started by the role's keep-alive (which puts
the endpoint's environment first on PATH, so this runs on that Python), loads
the endpoint's configuration and user template with the endpoint's own
functions, starts the engine they describe, and runs gcbundle's task functions
through it. Tasks arrive as files in a spool directory beside this script
(in/ID.json) and results leave as out/ID.json. TERM shuts the engine down, as
the endpoint does."""
import json, os, pathlib, pwd, signal, sys, threading, time, uuid
import importlib.metadata as m

import yaml
from globus_compute_endpoint.endpoint.config.utils import (
    get_config, load_config_yaml, load_user_config_schema, load_user_config_template,
    render_config_user_template,
)
from globus_compute_endpoint.endpoint.endpoint import Endpoint
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
from globus_compute_endpoint.engines.base import GCFuture

from bundle.pack import pack
from bundle.protocol import request, unwrap
from bundle.transport.wire import pack_task, task_function, unpack_result

if sys.argv[1:2] != ["start"] or len(sys.argv) != 3:
    sys.exit("usage: standin-gce start NAME")
ep_dir = pathlib.Path(os.environ["GLOBUS_COMPUTE_USER_DIR"]) / sys.argv[2]
spool = pathlib.Path(__file__).resolve().parent / "standin-spool"
for sub in ("in", "out", "work"):
    (spool / sub).mkdir(parents=True, exist_ok=True)

core = get_config(ep_dir)
tmpl_path = Endpoint.user_config_template_path(ep_dir, core)
rendered = render_config_user_template(
    core, load_user_config_template(tmpl_path), tmpl_path,
    MappedPosixIdentity(pwd.getpwuid(os.getuid()), [], None),
    load_user_config_schema(Endpoint.user_config_schema_path(ep_dir, core)), {}, {},
)
env_file = yaml.safe_load((ep_dir / "user_environment.yaml").read_text()) or {}
os.environ.update({k: str(v) for k, v in env_file.items()})
engine = load_config_yaml(rendered).engine
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
engine.start(endpoint_id=uuid.uuid4(), run_dir=str(spool / "work" / str(os.getpid())))
me = {"pid": os.getpid(), "python": sys.executable, "parsl": m.version("parsl"), "gcbundle": m.version("gcbundle")}
(spool / f"endpoint-{os.getpid()}.json").write_text(json.dumps(me))
pending = {}
try:
    while not stop.is_set():
        (ep_dir / "daemon.pid").write_text(f"{os.getpid()}\n")  # the endpoint's heartbeat
        for path in sorted((spool / "in").glob("*.json")):
            ask = json.loads(path.read_text())
            path.unlink()
            fields = ask["fields"]
            if ask.get("workflow"):
                packed = pack(pathlib.Path(ask["workflow"]), spool / "work" / (ask["id"] + ".tar.gz"))
                fields.update(
                    digest=packed.digest, archive_sha256=packed.archive_sha256, bundle=packed.path.read_bytes()
                )
            task_id, body = pack_task(task_function(ask["task"]), request(**fields))
            future = GCFuture(task_id)
            engine.submit(future, body, resource_specification={})
            pending[ask["id"]] = future
        for key, future in list(pending.items()):
            if future.done():
                del pending[key]
                try:
                    reply = {"ok": unwrap(unpack_result(future.result())), "endpoint": me}
                except Exception as exc:
                    reply = {"error": f"{type(exc).__name__}: {exc}", "endpoint": me}
                tmp = spool / "out" / f".{key}.tmp"
                tmp.write_text(json.dumps(reply, default=str))
                tmp.rename(spool / "out" / f"{key}.json")
        time.sleep(0.2)
finally:
    engine.shutdown()
    (ep_dir / "daemon.pid").unlink(missing_ok=True)
'''

UPGRADE_WORKFLOW = '''\
import importlib.metadata as m
import os, sys, time

import parsl
from parsl import python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider


PROVIDER = "local"  # the test writes a copy with "slurm"


def make_config(provider=PROVIDER):
    # Blocks end when idle: the app after the wait starts a new block (a new
    # batch job), after the upgrade. Slurm: the test site's compute nodes,
    # which reach the login node on bond0.
    if provider == "slurm":
        from parsl.addresses import address_by_interface
        from parsl.launchers import SingleNodeLauncher
        from parsl.providers import SlurmProvider

        address = address_by_interface("bond0")
        blocks = SlurmProvider(partition="debug", walltime="00:10:00", nodes_per_block=1, init_blocks=1, min_blocks=0,
                               max_blocks=1, exclusive=False, launcher=SingleNodeLauncher())
    else:
        address, blocks = "127.0.0.1", LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
    return Config(
        executors=[HighThroughputExecutor(label="htex", address=address, max_workers_per_node=1, provider=blocks)],
        max_idletime=1, strategy_period=0.5,
    )


@python_app
def versions(release=""):
    import importlib.metadata as m, os, sys, time, parsl
    if release:
        open(release + ".started", "w").close()
        while not os.path.exists(release):
            time.sleep(0.2)
    import socket
    return {"parsl": parsl.__version__, "gcbundle": m.version("gcbundle"), "python": sys.executable, "pid": os.getpid(),
            "host": socket.gethostname()}


def main(release=""):
    first = versions(release).result()
    htex = parsl.dfk().executors["htex"]
    deadline = time.monotonic() + 120
    while any(mgr["active"] for mgr in htex.connected_managers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    second = versions().result()
    return {"driver": {"parsl": parsl.__version__, "gcbundle": m.version("gcbundle"), "python": sys.executable},
            "first": first, "second": second}
'''


class StandinEndpoint:
    """Talks to the stand-in endpoint through its spool, over SSH."""

    def __init__(self, t: Provisioned) -> None:
        self.t = t
        self.script = f"{t.target.home}/{TEST_DIR}/standin-gce"
        self.spool = f"{t.target.home}/{TEST_DIR}/standin-spool"

    def endpoints(self, count: int = 1, timeout: float = 180) -> list[dict[str, object]]:
        """What each stand-in endpoint started so far recorded (waits for ``count``)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.t.target.run(f"cat {self.spool}/endpoint-*.json 2>/dev/null; true", check=True).stdout
            found = [json.loads(line) for line in out.replace("}{", "}\n{").splitlines() if line.strip()]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(1)

    def call(self, task: str, timeout: float = 180, workflow: str = "", **fields: object) -> dict[str, object]:
        key = uuid.uuid4().hex
        ask = json.dumps({"id": key, "task": task, "fields": fields, "workflow": workflow})
        self.t.target.put(ask, f"{self.spool}/.{key}.tmp")
        self.t.target.run(["mv", f"{self.spool}/.{key}.tmp", f"{self.spool}/in/{key}.json"], check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.t.target.run(f"cat {self.spool}/out/{key}.json 2>/dev/null")
            if got.returncode == 0 and got.stdout.strip():
                reply = json.loads(got.stdout)
                assert "error" not in reply, reply
                return reply
            time.sleep(0.5)
        raise AssertionError(f"no reply to {task} in {timeout} s")

    def wait_state(self, run_id: str, states: tuple[str, ...], timeout: float = 240) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.call("status", run_id=run_id)["ok"]
            if st["state"] in states or time.monotonic() > deadline:
                return st
            time.sleep(1)


@pytest.mark.slurm
def test_upgrade_keeps_runs_in_flight_and_the_next_run_uses_the_new_versions(
    provisioned: Provisioned, slurm_cluster: None
) -> None:
    """Two runs in flight, one with LocalProvider blocks and one with Slurm
    blocks on the test site's compute nodes, survive a playbook run that
    changes the Parsl pin and gcbundle's wheel (a new version): each finishes
    with the Parsl, gcbundle and Python it started with, even in a block (a
    Slurm job) started after the upgrade; the endpoint restarted on the new
    environment, so the next run (on Slurm) gets the new versions; the old
    environment stays while the runs use it and is removed afterwards."""
    t = provisioned
    ep = StandinEndpoint(t)
    old_env = t.current_env()
    old_version = installed_version(t)
    new_version = f"{old_version}.post1"
    wf_dir = f"{t.target.home}/{TEST_DIR}/upgrade-wf"
    workflows = {kind: f"{wf_dir}/{kind}/workflow.py" for kind in ("local", "slurm")}
    releases = {kind: f"{wf_dir}/release-{kind}" for kind in workflows}
    t.target.put(STANDIN_GCE, ep.script, mode="0755")
    for kind, path in workflows.items():
        t.target.put(UPGRADE_WORKFLOW.replace('PROVIDER = "local"', f'PROVIDER = "{kind}"'), path)
    # The keep-alive starts GCBUNDLE_ENDPOINT_GCE instead of the endpoint's
    # command when set; the test sshd lets the account set it at login
    # (PermitUserEnvironment), so the role's own tasks and handler start it.
    t.target.put(f"GCBUNDLE_ENDPOINT_GCE={ep.script}\n", f"{t.target.home}/.ssh/environment", mode="0600")
    start = ("-e", "gcbundle_endpoint_start=true",
             "-e", "gcbundle_endpoint_client_id=00000000-0000-4000-8000-00000000c1d0",
             "-e", "gcbundle_endpoint_client_secret=not-a-real-secret")  # fmt: skip
    launched: list[str] = []
    try:
        started = t.play(*start)
        assert "started on" in started.output, started.output[-4000:]
        crontab = t.target.run(["crontab", "-l"], check=True).stdout
        enabled = [line for line in crontab.splitlines() if not line.startswith("#")]
        assert [line for line in enabled if "gcbundle-keepalive.sh run" in line]
        (first_ep,) = ep.endpoints()
        assert first_ep["python"].startswith(old_env + "/") and first_ep["gcbundle"] == old_version

        run_ids = {kind: uuid.uuid4().hex[:12] for kind in workflows}
        for kind, run_id in run_ids.items():
            launched.append(run_id)
            ep.call("launch", run_id=run_id, spec={"args": {"release": releases[kind]}}, workflow=workflows[kind])
        deadline = time.monotonic() + 240
        for kind, run_id in run_ids.items():
            while t.target.run(["test", "-e", releases[kind] + ".started"]).returncode != 0:
                assert time.monotonic() < deadline, (kind, ep.call("status", run_id=run_id))
                time.sleep(1)

        # The upgrade: a new Parsl pin and a new gcbundle wheel, from a new checkout.
        nxt = copy_checkout(t.workdir / "checkout-next", version=new_version)
        build_wheel(nxt)
        upgraded = run_playbook(
            t.inventory, t.env, nxt, "-e", "gcbundle_endpoint_start=true", *start[2:],
            "-e", f"gcbundle_python_parsl_version={UPGRADE_PARSL}",
        )  # fmt: skip
        new_env = t.current_env()
        assert new_env != old_env
        assert "stopped on" in upgraded.output and "started on" in upgraded.output, upgraded.output[-6000:]
        kept = rf"{re.escape(old_env)}: kept \([^)]*(used by pids|unfinished runs)"
        assert re.search(kept, upgraded.output), upgraded.output[-4000:]
        second_ep = [e for e in ep.endpoints(count=2) if e["pid"] != first_ep["pid"]]
        assert len(second_ep) == 1, ep.endpoints()
        assert second_ep[0]["python"].startswith(new_env + "/"), second_ep
        assert second_ep[0]["parsl"] == UPGRADE_PARSL and second_ep[0]["gcbundle"] == new_version

        # The runs in flight go on, and end with what they started with.
        defaults = role_defaults("gcbundle_python")
        for kind, run_id in run_ids.items():
            assert ep.call("status", run_id=run_id)["ok"]["state"] == "running", kind
            t.target.run(["touch", releases[kind]], check=True)
        for kind, run_id in run_ids.items():
            st = ep.wait_state(run_id, ("succeeded", "failed", "cancelled", "lost"))
            assert st["state"] == "succeeded", (kind, st)
            result = run_result(t, run_id)
            for part in ("driver", "first", "second"):
                assert result[part]["parsl"] == defaults["gcbundle_python_parsl_version"], (kind, result)
                assert result[part]["gcbundle"] == old_version, (kind, result)
                assert result[part]["python"].startswith(old_env + "/"), (kind, result)
            new_block = result["second"]["pid"] != result["first"]["pid"]
            assert new_block, f"{kind}: the second app should run in a new block"
            if kind == "slurm":
                assert result["first"]["host"].startswith("cn") and result["second"]["host"].startswith("cn"), result

        # The next run gets the new versions, on a compute node too.
        next_id = uuid.uuid4().hex[:12]
        launched.append(next_id)
        ep.call("launch", run_id=next_id, spec={"args": {}}, workflow=workflows["slurm"])
        st = ep.wait_state(next_id, ("succeeded", "failed", "cancelled", "lost"))
        assert st["state"] == "succeeded", st
        result = run_result(t, next_id)
        for part in ("driver", "first", "second"):
            assert result[part]["parsl"] == UPGRADE_PARSL and result[part]["gcbundle"] == new_version, result
            assert result[part]["python"].startswith(new_env + "/"), result

        # No run uses the old environment any more: the next play removes it.
        pruned = run_playbook(
            t.inventory, t.env, nxt, "-e", "gcbundle_endpoint_start=true", *start[2:],
            "-e", f"gcbundle_python_parsl_version={UPGRADE_PARSL}", "-e", "gcbundle_python_keep_envs=0",
        )  # fmt: skip
        assert pruned.recap["changed"] == 1, pruned.output[-6000:]
        assert f"{old_env}: removed" in pruned.output
        assert t.target.run(["test", "-e", old_env]).returncode == 1
    finally:
        keepalive = f"{t.ep_dir}/gcbundle-keepalive.sh"
        t.target.run(["env", f"GCBUNDLE_ENDPOINT_GCE={ep.script}", keepalive, "stop"], timeout=120)
        t.target.run("rm -f ~/.ssh/environment; crontab -r 2>/dev/null; true")
        for rid in launched:  # a driver a failed assertion left running, by its pid
            st = t.target.run(["cat", f"{t.gcbundle_home}/runs/{rid}/state.json"])
            data = json.loads(st.stdout) if st.returncode == 0 and st.stdout.strip() else {}
            if data.get("pid") and data.get("state") not in ("succeeded", "failed", "cancelled", "lost"):
                t.target.run(["kill", str(data["pid"])])


def run_result(t: Provisioned, run_id: str) -> dict[str, Any]:
    """The result.json of a run on the provisioned account."""
    return json.loads(t.target.run(["cat", f"{t.gcbundle_home}/runs/{run_id}/result.json"], check=True).stdout)


def installed_version(t: Provisioned) -> str:
    proc = t.target.run(
        [f"{t.venv}/bin/python", "-c", "import importlib.metadata as m; print(m.version('gcbundle'))"], check=True
    )
    return proc.stdout.strip()
