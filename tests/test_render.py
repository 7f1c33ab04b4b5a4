"""`gcbundle render` and the client's checks of a site profile.

The batch scripts below are compared as exact text: they are what Parsl's
own SlurmProvider / PBSProProvider write (their templates, filled) around the
worker command wrapped by their MpiExecLauncher, with gcbundle's worker
prelude first in worker_init. Values known only at run time are the
placeholders `<run>`, `<env>`, `<time>`, `<port>`, `<addresses>`; a real run
writes the same script with them filled in (tests/test_slurm_e2e.py checks
that against the script of a real block). Rendering submits nothing and runs
no scheduler command and no address function on the client.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import api, profiles, render
from bundle.cli import main
from bundle.errors import SiteProfileError
from bundle.registry import Registry
from tests.conftest import write_workflow

# gcbundle render --site slurm --set partition=debug --set account=proj
SLURM_SCRIPT_SUBMIT = 'sbatch <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>'
SLURM_SCRIPT = """#!/bin/bash

#SBATCH --job-name=parsl.htex.block-0.<time>
#SBATCH --output=<run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stdout
#SBATCH --error=<run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stderr
#SBATCH --nodes=1
#SBATCH --time=30
#SBATCH --ntasks-per-node=1

#SBATCH --exclusive
#SBATCH --partition=debug
#SBATCH --account=proj


# gcbundle: the driver's Python and Parsl, the bundle, a usable TMPDIR
export PATH='<env>/bin':"$PATH"
export PYTHONPATH='<run>/bundle'${PYTHONPATH:+:$PYTHONPATH}
export GCBUNDLE_OUTPUT_DIR='<run>/outputs'
export GCBUNDLE_RUN_ID='<run_id>'
if [ -z "${TMPDIR:-}" ] || [ ! -d "$TMPDIR" ] || [ ! -w "$TMPDIR" ]; then export TMPDIR=/tmp; fi
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_mca_base_env_list="PATH;PYTHONPATH;GCBUNDLE_OUTPUT_DIR;GCBUNDLE_RUN_ID${OMPI_MCA_mca_base_env_list:+;$OMPI_MCA_mca_base_env_list}"
if [ -z "${PBS_NODEFILE:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then export PBS_NODEFILE="$TMPDIR/gcbundle-nodes.$SLURM_JOB_ID"; scontrol show hostnames "$SLURM_JOB_NODELIST" >"$PBS_NODEFILE"; fi
cd '<run>/bundle' || { echo "gcbundle: no "'<run>/bundle'" on $(hostname): put GCBUNDLE_HOME on a file system the compute nodes mount" >&2; exit 1; }



export JOBNAME="parsl.htex.block-0.<time>"

set -e
export CORES=$(getconf _NPROCESSORS_ONLN)
[[ "1" == "1" ]] && echo "Found cores : $CORES"
WORKERCOUNT=1
SCRIPT_DIR="<run>/runinfo/000/submit_scripts"
[[ -d $SCRIPT_DIR ]] || SCRIPT_DIR=""

# Deduplicate the nodefile
HOSTFILE="$JOBNAME.nodes"
if [ -z "$PBS_NODEFILE" ]; then
    echo "localhost" > $HOSTFILE
else
    sort -u $PBS_NODEFILE > $HOSTFILE
fi

cat << MPIEXEC_EOF > ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh
process_worker_pool.py   -a <addresses> -p 0 -c 1 -m None --poll 10 --port=<port> --cert_dir <run>/runinfo/000/htex/certificates --logdir=<run>/runinfo/000/htex --logconf=None --block_id=0 --hb_period=30  --hb_threshold=120 --drain_period=None --cpu-affinity none  --mpi-launcher=mpiexec --available-accelerators\x20
MPIEXEC_EOF
chmod u+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

mpiexec --bind-to none  -n $WORKERCOUNT --hostfile $HOSTFILE /usr/bin/sh ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

[[ "1" == "1" ]] && echo "All workers done"

"""

# gcbundle render --site polaris --set account=myproj
POLARIS_SCRIPT_SUBMIT = 'qsub -q debug -A myproj <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>'
POLARIS_SCRIPT = """#!/bin/bash

#PBS -S /bin/bash
#PBS -N parsl.htex.block-0.<time>
#PBS -m n
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=64:ngpus=4
#PBS -o <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stdout
#PBS -e <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stderr
#PBS -l filesystems=home:eagle

# gcbundle: the driver's Python and Parsl, the bundle, a usable TMPDIR
export PATH='<env>/bin':"$PATH"
export PYTHONPATH='<run>/bundle'${PYTHONPATH:+:$PYTHONPATH}
export GCBUNDLE_OUTPUT_DIR='<run>/outputs'
export GCBUNDLE_RUN_ID='<run_id>'
if [ -z "${TMPDIR:-}" ] || [ ! -d "$TMPDIR" ] || [ ! -w "$TMPDIR" ]; then export TMPDIR=/tmp; fi
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_mca_base_env_list="PATH;PYTHONPATH;GCBUNDLE_OUTPUT_DIR;GCBUNDLE_RUN_ID${OMPI_MCA_mca_base_env_list:+;$OMPI_MCA_mca_base_env_list}"
if [ -z "${PBS_NODEFILE:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then export PBS_NODEFILE="$TMPDIR/gcbundle-nodes.$SLURM_JOB_ID"; scontrol show hostnames "$SLURM_JOB_NODELIST" >"$PBS_NODEFILE"; fi
cd '<run>/bundle' || { echo "gcbundle: no "'<run>/bundle'" on $(hostname): put GCBUNDLE_HOME on a file system the compute nodes mount" >&2; exit 1; }


export JOBNAME="parsl.htex.block-0.<time>"

set -e
export CORES=$(getconf _NPROCESSORS_ONLN)
[[ "1" == "1" ]] && echo "Found cores : $CORES"
WORKERCOUNT=1
SCRIPT_DIR="<run>/runinfo/000/submit_scripts"
[[ -d $SCRIPT_DIR ]] || SCRIPT_DIR=""

# Deduplicate the nodefile
HOSTFILE="$JOBNAME.nodes"
if [ -z "$PBS_NODEFILE" ]; then
    echo "localhost" > $HOSTFILE
else
    sort -u $PBS_NODEFILE > $HOSTFILE
fi

cat << MPIEXEC_EOF > ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh
process_worker_pool.py   -a <address_by_interface(ifname='bond0')> -p 0 -c 1.0 -m None --poll 10 --port=<port> --cert_dir <run>/runinfo/000/htex/certificates --logdir=<run>/runinfo/000/htex --logconf=None --block_id=0 --hb_period=30  --hb_threshold=120 --drain_period=None --cpu-affinity alternating  --mpi-launcher=mpiexec --available-accelerators 0 1 2 3
MPIEXEC_EOF
chmod u+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

mpiexec --cpu-bind none --depth=64 --ppn 1 -n $WORKERCOUNT --hostfile $HOSTFILE /usr/bin/sh ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

[[ "1" == "1" ]] && echo "All workers done"


"""

# gcbundle render --site pbspro --set queue=workq --set account=proj --set cpus_per_node=2 --set select_options=mpiprocs=2 --set walltime=1:00:00
PBSPRO_SCRIPT_SUBMIT = 'qsub -q workq -A proj <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>'
PBSPRO_SCRIPT = """#!/bin/bash

#PBS -S /bin/bash
#PBS -N parsl.htex.block-0.<time>
#PBS -m n
#PBS -l walltime=1:00:00
#PBS -l select=1:ncpus=2:mpiprocs=2
#PBS -o <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stdout
#PBS -e <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stderr


# gcbundle: the driver's Python and Parsl, the bundle, a usable TMPDIR
export PATH='<env>/bin':"$PATH"
export PYTHONPATH='<run>/bundle'${PYTHONPATH:+:$PYTHONPATH}
export GCBUNDLE_OUTPUT_DIR='<run>/outputs'
export GCBUNDLE_RUN_ID='<run_id>'
if [ -z "${TMPDIR:-}" ] || [ ! -d "$TMPDIR" ] || [ ! -w "$TMPDIR" ]; then export TMPDIR=/tmp; fi
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_mca_base_env_list="PATH;PYTHONPATH;GCBUNDLE_OUTPUT_DIR;GCBUNDLE_RUN_ID${OMPI_MCA_mca_base_env_list:+;$OMPI_MCA_mca_base_env_list}"
if [ -z "${PBS_NODEFILE:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then export PBS_NODEFILE="$TMPDIR/gcbundle-nodes.$SLURM_JOB_ID"; scontrol show hostnames "$SLURM_JOB_NODELIST" >"$PBS_NODEFILE"; fi
cd '<run>/bundle' || { echo "gcbundle: no "'<run>/bundle'" on $(hostname): put GCBUNDLE_HOME on a file system the compute nodes mount" >&2; exit 1; }


export JOBNAME="parsl.htex.block-0.<time>"

set -e
export CORES=$(getconf _NPROCESSORS_ONLN)
[[ "1" == "1" ]] && echo "Found cores : $CORES"
WORKERCOUNT=1
SCRIPT_DIR="<run>/runinfo/000/submit_scripts"
[[ -d $SCRIPT_DIR ]] || SCRIPT_DIR=""

# Deduplicate the nodefile
HOSTFILE="$JOBNAME.nodes"
if [ -z "$PBS_NODEFILE" ]; then
    echo "localhost" > $HOSTFILE
else
    sort -u $PBS_NODEFILE > $HOSTFILE
fi

cat << MPIEXEC_EOF > ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh
process_worker_pool.py   -a <addresses> -p 0 -c 1 -m None --poll 10 --port=<port> --cert_dir <run>/runinfo/000/htex/certificates --logdir=<run>/runinfo/000/htex --logconf=None --block_id=0 --hb_period=30  --hb_threshold=120 --drain_period=None --cpu-affinity none  --mpi-launcher=mpiexec --available-accelerators\x20
MPIEXEC_EOF
chmod u+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

mpiexec --bind-to none  -n $WORKERCOUNT --hostfile $HOSTFILE /usr/bin/sh ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

[[ "1" == "1" ]] && echo "All workers done"


"""

def rendered_script(site: str, params: dict[str, object]) -> tuple[str, str]:
    out = render.render(profiles.load(site), params)
    assert len(out.scripts) == 1
    return out.scripts[0].submit_command, out.scripts[0].script


def test_slurm_script_exact_text() -> None:
    assert rendered_script("slurm", {"partition": "debug", "account": "proj"}) == (SLURM_SCRIPT_SUBMIT, SLURM_SCRIPT)


def test_polaris_script_exact_text() -> None:
    assert rendered_script("polaris", {"account": "myproj"}) == (POLARIS_SCRIPT_SUBMIT, POLARIS_SCRIPT)


def test_pbspro_script_exact_text() -> None:
    # 1:00:00 stays a walltime (YAML 1.1 would read it as the integer 3600)
    params = {"queue": "workq", "account": "proj", "cpus_per_node": 2, "select_options": "mpiprocs=2"}
    params.update(profiles.parse_sets(["walltime=1:00:00"]))
    assert rendered_script("pbspro", params) == (PBSPRO_SCRIPT_SUBMIT, PBSPRO_SCRIPT)


def test_slurm_with_srun_launcher() -> None:
    submit, script = rendered_script("slurm", {"launcher": "SrunLauncher", "exclusive": False, "launcher_overrides": "--cpu-bind=none"})
    assert submit.startswith("sbatch ")
    assert "srun --ntasks 1 -l --cpu-bind=none bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh" in script
    assert "mpiexec" not in script.replace("--mpi-launcher=mpiexec", "") and "#SBATCH --exclusive" not in script


def test_polaris_config_shows_the_address_function_unrun() -> None:
    out = render.render(profiles.load("polaris"), {"account": "myproj"})  # there is no bond0 here
    assert "address=\"<address_by_interface(ifname='bond0')>\"" in out.config
    assert "MpiExecLauncher(" in out.config and "bind_cmd='--cpu-bind'" in out.config and "overrides='--depth=64 --ppn 1'" in out.config
    assert "select_options='ngpus=4'" in out.config and "scheduler_options='#PBS -l filesystems=home:eagle'" in out.config
    assert " at 0x" not in out.config  # no memory addresses: the text is stable


def test_local_profile_has_no_batch_script() -> None:
    out = render.render(profiles.load("local"), {})
    assert out.scripts == [] and out.notes == ["executor htex_local: LocalProvider submits no batch script"]


@pytest.fixture
def tripwires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Scheduler commands first on PATH that record being called."""
    bindir = tmp_path / "tripwires"
    bindir.mkdir()
    log = tmp_path / "called.log"
    for name in ("sbatch", "squeue", "sacct", "scancel", "qsub", "qstat", "qdel", "srun", "mpiexec"):
        path = bindir / name
        path.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {log}\nexit 1\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_render_runs_no_scheduler_command(tripwires: Path) -> None:
    for site, params in [("slurm", {}), ("perlmutter", {"account": "m0000"}), ("polaris", {"account": "x"}), ("pbspro", {})]:
        render.render(profiles.load(site), params)
        render.check(profiles.load(site), params)
    assert not tripwires.exists(), tripwires.read_text()


def test_cli_render_json_and_text() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["render", "--site", "slurm", "--set", "partition=debug", "--set", "account=proj", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["data"]
    assert data["site"] == "slurm" and data["params"] == {"partition": "debug", "account": "proj"}
    assert data["scripts"][0]["script"] == SLURM_SCRIPT and data["scripts"][0]["submit_command"] == SLURM_SCRIPT_SUBMIT
    assert data["scripts"][0]["provider"] == "SlurmProvider" and "SlurmProvider(" in data["config"]
    res = runner.invoke(main, ["render", "--site", "polaris", "--set", "account=myproj"])
    assert res.exit_code == 0, res.output
    assert "#   qsub -q debug -A myproj <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>" in res.stdout
    assert POLARIS_SCRIPT.rstrip("\n") in res.stdout


@pytest.mark.parametrize(("argv", "words"), [
    (["--site", "polaris"], ["needs account", "--set account=..."]),
    (["--site", "perlmutter"], ["needs account"]),
    (["--site", "slurm", "--set", "launcher=NoSuchLauncher"], ["unknown launcher type 'NoSuchLauncher'", "MpiExecLauncher", "SrunLauncher"]),
    (["--site", "slurm", "--set", "nodes_per_block=two"], ["SlurmProvider", "nodes_per_block"]),
    (["--site", "slurm", "--set", "colour=red"], ["has no parameter colour"]),
])
def test_cli_render_refuses_bad_profiles(argv: list[str], words: list[str]) -> None:
    res = CliRunner().invoke(main, ["render", *argv, "--json"])
    assert res.exit_code == SiteProfileError.exit_code, res.output
    err = json.loads(res.stdout)["errors"][0]
    text = f"{err['message']}; {err['hint']}"
    for word in words:
        assert word in text, text


BAD_PROFILES = {
    "unknown provider type": ("""
engine:
  type: HighThroughputExecutor
  provider:
    type: SbatchProvider
""", ["unknown provider type 'SbatchProvider'", "SlurmProvider", "PBSProProvider"]),
    "type outside parsl's namespaces": ("""
engine:
  type: HighThroughputExecutor
  provider:
    type: LocalProvider
    launcher:
      type: os.system
""", ["unknown launcher type 'os.system'"]),
    "unknown keyword": ("""
engine:
  type: HighThroughputExecutor
  provider:
    type: SlurmProvider
    partitoin: debug
""", ["SlurmProvider has no keyword 'partitoin'", "partition"]),
    "unknown address keyword, not run": ("""
engine:
  type: HighThroughputExecutor
  address:
    type: address_by_interface
    interface: bond0
  provider:
    type: LocalProvider
""", ["address_by_interface has no keyword 'interface'", "ifname"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_submit_refuses_a_bad_profile_before_sending_anything(case: str, tmp_path: Path, home: Path) -> None:
    text, words = BAD_PROFILES[case]
    site = tmp_path / "site.yaml"
    site.write_text(text)
    wf = write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    with pytest.raises(SiteProfileError) as info:
        api.submit(wf, "local", site=str(site))
    for word in words:
        assert word in str(info.value), str(info.value)
    assert Registry().list(10) == []
    assert not (home / "runs").exists() or not list((home / "runs").iterdir())


def test_submit_refuses_an_unset_account(tmp_path: Path, home: Path) -> None:
    wf = write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    res = CliRunner().invoke(main, ["submit", str(wf), "--site", "polaris", "--json"])
    assert res.exit_code == SiteProfileError.exit_code
    assert "needs account" in json.loads(res.stdout)["errors"][0]["message"]
    assert Registry().list(10) == [] and not (home / "cache").exists()


def test_sites_lists_every_builtin_with_parameters() -> None:
    res = CliRunner().invoke(main, ["sites", "--json"])
    data = {s["name"]: s for s in json.loads(res.stdout)["data"]}
    assert set(data) >= {"local", "slurm", "pbspro", "polaris", "perlmutter"}
    params = {name: {p["name"]: p for p in s["parameters"]} for name, s in data.items()}
    assert params["polaris"]["account"]["required"] and params["perlmutter"]["account"]["required"]
    assert not params["slurm"]["account"]["required"] and params["slurm"]["account"]["default"] is None
    assert params["slurm"]["launcher"]["default"] == "MpiExecLauncher"
    res = CliRunner().invoke(main, ["sites"])
    assert "account (required)" in res.stdout and "partition (optional)" in res.stdout
