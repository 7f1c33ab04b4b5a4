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
# (ALCF's page: TMPDIR=/tmp, cpu_affinity list, heartbeat 15/120, 32 cpus; the address on hsn0)
POLARIS_SCRIPT_SUBMIT = 'qsub -q debug -A myproj <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>'
POLARIS_SCRIPT = """#!/bin/bash

#PBS -S /bin/bash
#PBS -N parsl.htex.block-0.<time>
#PBS -m n
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=32:ngpus=4
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
export TMPDIR=/tmp


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
process_worker_pool.py   -a <address_by_interface(ifname='hsn0')> -p 0 -c 1.0 -m None --poll 10 --port=<port> --cert_dir <run>/runinfo/000/htex/certificates --logdir=<run>/runinfo/000/htex --logconf=None --block_id=0 --hb_period=15  --hb_threshold=120 --drain_period=None --cpu-affinity list:24-31,56-63:16-23,48-55:8-15,40-47:0-7,32-39  --mpi-launcher=mpiexec --available-accelerators 0 1 2 3
MPIEXEC_EOF
chmod u+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

mpiexec --cpu-bind none --depth=64 --ppn 1 -n $WORKERCOUNT --hostfile $HOSTFILE /usr/bin/sh ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

[[ "1" == "1" ]] && echo "All workers done"


"""

# gcbundle render --site pbspro --set queue=workq --set account=proj --set cpus_per_node=2
#     --set select_options=mpiprocs=2 --set walltime=1:00:00
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

# gcbundle render --site aurora --set account=myproj
# (ALCF's Aurora page: hsn0, 12 tiles, its cpu_affinity list, --ppn 1, filesystems=home:flare, TMPDIR=/tmp)
AURORA_SCRIPT_SUBMIT = 'qsub -q debug -A myproj <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>'
AURORA_SCRIPT = """#!/bin/bash

#PBS -S /bin/bash
#PBS -N parsl.htex.block-0.<time>
#PBS -m n
#PBS -l walltime=00:30:00
#PBS -l select=1:ncpus=208
#PBS -o <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stdout
#PBS -e <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stderr
#PBS -l filesystems=home:flare

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
export TMPDIR=/tmp


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
process_worker_pool.py  --max_workers_per_node=12 -a <address_by_interface(ifname='hsn0')> -p 0 -c 1.0 -m None --poll 10 --port=<port> --cert_dir <run>/runinfo/000/htex/certificates --logdir=<run>/runinfo/000/htex --logconf=None --block_id=0 --hb_period=30  --hb_threshold=120 --drain_period=None --cpu-affinity list:1-8,105-112:9-16,113-120:17-24,121-128:25-32,129-136:33-40,137-144:41-48,145-152:53-60,157-164:61-68,165-172:69-76,173-180:77-84,181-188:85-92,189-196:93-100,197-204  --mpi-launcher=mpiexec --available-accelerators 0.0 0.1 1.0 1.1 2.0 2.1 3.0 3.1 4.0 4.1 5.0 5.1
MPIEXEC_EOF
chmod u+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

mpiexec --cpu-bind none --ppn 1 -n $WORKERCOUNT --hostfile $HOSTFILE /usr/bin/sh ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

[[ "1" == "1" ]] && echo "All workers done"


"""

# gcbundle render --site perlmutter --set account=m0000 --set constraint=gpu --set gpus_per_node=4
#     --set accelerators=4 --set srun_overrides="-c 128"   (a GPU node, as Globus Compute publishes it)
PERLMUTTER_GPU_SCRIPT_SUBMIT = 'sbatch <run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>'
PERLMUTTER_GPU_SCRIPT = """#!/bin/bash

#SBATCH --job-name=parsl.htex.block-0.<time>
#SBATCH --output=<run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stdout
#SBATCH --error=<run>/runinfo/000/submit_scripts/parsl.htex.block-0.<time>.stderr
#SBATCH --nodes=1
#SBATCH --time=30
#SBATCH --ntasks-per-node=1

#SBATCH --exclusive
#SBATCH --account=m0000
#SBATCH --qos=debug
#SBATCH --constraint=gpu
#SBATCH --gpus-per-node=4


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
export CORES=$SLURM_CPUS_ON_NODE
export NODES=$SLURM_JOB_NUM_NODES

[[ "1" == "1" ]] && echo "Found cores : $CORES"
[[ "1" == "1" ]] && echo "Found nodes : $NODES"
WORKERCOUNT=1
SCRIPT_DIR="<run>/runinfo/000/submit_scripts"
[[ -d $SCRIPT_DIR ]] || SCRIPT_DIR=""

cat << SLURM_EOF > ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh
process_worker_pool.py   -a <address_by_interface(ifname='hsn0')> -p 0 -c 1 -m None --poll 10 --port=<port> --cert_dir <run>/runinfo/000/htex/certificates --logdir=<run>/runinfo/000/htex --logconf=None --block_id=0 --hb_period=30  --hb_threshold=120 --drain_period=None --cpu-affinity none  --mpi-launcher=mpiexec --available-accelerators 0 1 2 3
SLURM_EOF
chmod a+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh

srun --ntasks 1 -l -c 128 bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh

[[ "1" == "1" ]] && echo "Done"

"""

# gcbundle render --site slurm --set placement=batch --set partition=debug --set nodes_per_block=2
# (the driver's own job, written by Parsl's SlurmProvider with the profile's settings)
SLURM_DRIVER_JOB_SUBMIT = 'sbatch <run>/driver-job/gcbundle.<run_id>.<time>'
SLURM_DRIVER_JOB = r"""#!/bin/bash

#SBATCH --job-name=gcbundle.<run_id>.<time>
#SBATCH --output=<run>/driver-job/gcbundle.<run_id>.<time>.stdout
#SBATCH --error=<run>/driver-job/gcbundle.<run_id>.<time>.stderr
#SBATCH --nodes=2
#SBATCH --time=30
#SBATCH --ntasks-per-node=1

#SBATCH --exclusive
#SBATCH --partition=debug




export JOBNAME="gcbundle.<run_id>.<time>"

# gcbundle: the run's driver, in this job (placement=batch)
export GCBUNDLE_HOME='<home>' GCBUNDLE_RUN_ID='<run_id>' GCBUNDLE_RUN_DIR='<run>'
export GCBUNDLE_OUTPUT_DIR='<run>/outputs' PYTHONUNBUFFERED=1
export PYTHONPATH='<run>/bundle'${PYTHONPATH:+:$PYTHONPATH}
if [ -n "${SLURM_JOB_NODELIST:-}" ] && [ -z "${PBS_NODEFILE:-}" ]; then
  scontrol show hostnames "$SLURM_JOB_NODELIST" > '<run>/driver-job.nodes' && export PBS_NODEFILE='<run>/driver-job.nodes'
fi
if [ -z "${TMPDIR:-}" ] || [ "${#TMPDIR}" -gt 40 ] || [ ! -w "$TMPDIR" ]; then export TMPDIR=/tmp; fi
cd '<run>/bundle' || { echo "gcbundle: no "'<run>/bundle'" on $(hostname): put GCBUNDLE_HOME on a file system the compute nodes mount" >&2; exit 1; }
exec >> '<run>/stdout' 2>> '<run>/stderr'
export PATH=<env>/bin:"$PATH"
exec <env>/bin/python -I -u -m login_node.driver <run>

"""

# gcbundle render --site pbspro --set placement=batch --set queue=workq --set nodes_per_block=2
#     --set driver_init='source /opt/envs/science/bin/activate'
PBS_DRIVER_JOB_SUBMIT = 'qsub -q workq <run>/driver-job/gcbundle.<run_id>.<time>'
PBS_DRIVER_JOB = r"""#!/bin/bash

#PBS -S /bin/bash
#PBS -N gcbundle.<run_id>.<time>
#PBS -m n
#PBS -l walltime=00:30:00
#PBS -l select=2:ncpus=1
#PBS -o <run>/driver-job/gcbundle.<run_id>.<time>.stdout
#PBS -e <run>/driver-job/gcbundle.<run_id>.<time>.stderr




export JOBNAME="gcbundle.<run_id>.<time>"

# gcbundle: the run's driver, in this job (placement=batch)
export GCBUNDLE_HOME='<home>' GCBUNDLE_RUN_ID='<run_id>' GCBUNDLE_RUN_DIR='<run>'
export GCBUNDLE_OUTPUT_DIR='<run>/outputs' PYTHONUNBUFFERED=1
export PYTHONPATH='<run>/bundle'${PYTHONPATH:+:$PYTHONPATH}
if [ -n "${SLURM_JOB_NODELIST:-}" ] && [ -z "${PBS_NODEFILE:-}" ]; then
  scontrol show hostnames "$SLURM_JOB_NODELIST" > '<run>/driver-job.nodes' && export PBS_NODEFILE='<run>/driver-job.nodes'
fi
if [ -z "${TMPDIR:-}" ] || [ "${#TMPDIR}" -gt 40 ] || [ ! -w "$TMPDIR" ]; then export TMPDIR=/tmp; fi
cd '<run>/bundle' || { echo "gcbundle: no "'<run>/bundle'" on $(hostname): put GCBUNDLE_HOME on a file system the compute nodes mount" >&2; exit 1; }
exec >> '<run>/stdout' 2>> '<run>/stderr'
# gcbundle: the driver's environment (driver_init)
{
source /opt/envs/science/bin/activate
} || { code=$?; echo "gcbundle: driver_init failed (exit code $code)" >&2; exit 3; }
command -v python3 >/dev/null 2>&1 || { echo "gcbundle: no python3 on PATH after driver_init" >&2; exit 127; }
exec python3 -u -c 'import sys; sys.path.insert(0, '"'"'<home>/lib/<gcbundle>/gcbundle'"'"'); sys.path.append('"'"'<home>/lib/<gcbundle>/fallback'"'"'); from login_node.driver import main; main()' '<run>'


"""

def rendered_script(site: str, params: dict[str, object]) -> tuple[str, str]:
    out = render.render(profiles.load(site), params)
    assert len(out.scripts) == 1
    return out.scripts[0].submit_command, out.scripts[0].script


@pytest.mark.parametrize(("site", "params", "submit", "script"), [
    pytest.param("slurm", {"partition": "debug", "account": "proj"}, SLURM_SCRIPT_SUBMIT, SLURM_SCRIPT, id="slurm"),
    pytest.param("polaris", {"account": "myproj"}, POLARIS_SCRIPT_SUBMIT, POLARIS_SCRIPT, id="polaris"),
    pytest.param("aurora", {"account": "myproj"}, AURORA_SCRIPT_SUBMIT, AURORA_SCRIPT, id="aurora"),
    pytest.param("perlmutter",
                 profiles.parse_sets(["account=m0000", "constraint=gpu", "gpus_per_node=4", "accelerators=4",
                                      "srun_overrides=-c 128"]),
                 PERLMUTTER_GPU_SCRIPT_SUBMIT, PERLMUTTER_GPU_SCRIPT, id="perlmutter-gpu"),
    # 1:00:00 stays a walltime (YAML 1.1 would read it as the integer 3600)
    pytest.param("pbspro",
                 {"queue": "workq", "account": "proj", "cpus_per_node": 2, "select_options": "mpiprocs=2",
                  **profiles.parse_sets(["walltime=1:00:00"])},
                 PBSPRO_SCRIPT_SUBMIT, PBSPRO_SCRIPT, id="pbspro"),
])
def test_batch_script_exact_text(site: str, params: dict[str, object], submit: str, script: str) -> None:
    assert rendered_script(site, params) == (submit, script)


def test_perlmutter_cpu_defaults() -> None:
    submit, script = rendered_script("perlmutter", {"account": "m0000"})
    assert "#SBATCH --qos=debug\n#SBATCH --constraint=cpu\n" in script and "--gpus-per-node" not in script
    assert "srun --ntasks 1 -l -c 256 bash" in script and "-a <address_by_interface(ifname='hsn0')>" in script
    config = render.render(profiles.load("perlmutter"), {"account": "m0000"}).config
    assert "cmd_timeout=120" in config


@pytest.mark.parametrize("site", ["polaris", "aurora", "perlmutter"])
def test_facility_profiles_name_their_sources(site: str) -> None:
    """Each facility profile says, in comments at its top, what it was derived from."""
    text = profiles.load(site).text
    head = text.split("description:", 1)[0]
    sources = {"polaris": ["docs.alcf.anl.gov/polaris/workflows/parsl", "parsl/configs/polaris.py",
                           "docs/endpoints/configs/polaris.yaml"],
               "aurora": ["docs.alcf.anl.gov/aurora/workflows/parsl"],
               "perlmutter": ["docs/endpoints/configs/perlmutter.yaml", "docs.nersc.gov"]}[site]
    for source in sources:
        assert source in head, (site, source)


@pytest.mark.parametrize("site", ["polaris", "aurora"])
def test_alcf_profiles_keep_tmpdir_short_whatever_worker_init_says(site: str) -> None:
    """ALCF's known issue (AF_UNIX path too long): TMPDIR=/tmp comes before the user's own worker_init."""
    _, script = rendered_script(site, {"account": "p", "worker_init": "module load frameworks"})
    assert "exit 1; }\nexport TMPDIR=/tmp\nmodule load frameworks\n" in script


def test_batch_placement_slurm_driver_job_exact_text() -> None:
    out = render.render(profiles.load("slurm"), {"placement": "batch", "partition": "debug", "nodes_per_block": 2})
    assert [(s.executor, s.provider, s.submit_command, s.script) for s in out.scripts] == [
        ("driver", "SlurmProvider", SLURM_DRIVER_JOB_SUBMIT, SLURM_DRIVER_JOB)]
    # inside the job the DFK uses the job's nodes: no further sbatch
    assert "SlurmProvider(" not in out.config and "LocalProvider(" in out.config and "nodes_per_block=2" in out.config
    assert "launcher=MpiExecLauncher(" in out.config and "export PATH=\\'<env>/bin\\'" in out.config
    assert out.notes[0] == ("inside the driver's job, executor htex: "
                            "SlurmProvider -> LocalProvider over the job's 2 node(s)")


def test_batch_placement_pbs_driver_job_with_driver_init_exact_text() -> None:
    params = {"placement": "batch", "queue": "workq", "nodes_per_block": 2,
              "driver_init": "source /opt/envs/science/bin/activate"}
    out = render.render(profiles.load("pbspro"), params)
    assert [(s.provider, s.submit_command, s.script) for s in out.scripts] == [
        ("PBSProProvider", PBS_DRIVER_JOB_SUBMIT, PBS_DRIVER_JOB)]
    assert "PBSProProvider(" not in out.config and "LocalProvider(" in out.config


@pytest.mark.parametrize(("site", "params", "words"), [
    ("local", {"placement": "batch"}, ["placement=batch needs a batch provider", "LocalProvider"]),
    ("slurm", {"placement": "cloud"}, ["placement must be one of login, batch"]),
    ("slurm", {"driver_init": 3}, ["driver_init must be shell lines"]),
])
def test_driver_options_are_checked_before_anything_is_sent(site: str, params: dict[str, object],
                                                            words: list[str]) -> None:
    with pytest.raises(SiteProfileError) as info:
        render.check(profiles.load(site), params)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_every_profile_has_the_driver_parameters() -> None:
    for name in profiles.builtin_names():
        known = profiles.load(name).parameters()
        assert known["driver_init"].default == "" and known["placement"].default == "login", name
        assert not known["driver_init"].required and "Python 3.10+ and Parsl" in known["driver_init"].help


def test_slurm_with_srun_launcher() -> None:
    params = {"launcher": "SrunLauncher", "exclusive": False, "launcher_overrides": "--cpu-bind=none"}
    submit, script = rendered_script("slurm", params)
    assert submit.startswith("sbatch ")
    assert "srun --ntasks 1 -l --cpu-bind=none bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh" in script
    assert "mpiexec" not in script.replace("--mpi-launcher=mpiexec", "") and "#SBATCH --exclusive" not in script


def test_polaris_config_shows_the_address_function_unrun() -> None:
    out = render.render(profiles.load("polaris"), {"account": "myproj"})  # not run: no address is looked up
    assert "address=\"<address_by_interface(ifname='hsn0')>\"" in out.config
    assert "MpiExecLauncher(" in out.config and "bind_cmd='--cpu-bind'" in out.config
    assert "overrides='--depth=64 --ppn 1'" in out.config
    assert "select_options='ngpus=4'" in out.config
    assert "scheduler_options='#PBS -l filesystems=home:eagle'" in out.config
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
    for site, params in [("slurm", {}), ("perlmutter", {"account": "m0000"}), ("polaris", {"account": "x"}),
                         ("aurora", {"account": "x"}), ("pbspro", {})]:
        render.render(profiles.load(site), params)
        render.check(profiles.load(site), params)
    assert not tripwires.exists(), tripwires.read_text()


def test_cli_render_json_and_text() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["render", "--site", "slurm", "--set", "partition=debug", "--set", "account=proj",
                               "--json"])
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
    (["--site", "slurm", "--set", "launcher=NoSuchLauncher"],
     ["unknown launcher type 'NoSuchLauncher'", "MpiExecLauncher", "SrunLauncher"]),
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
    assert set(data) >= {"local", "slurm", "pbspro", "polaris", "aurora", "perlmutter"}
    params = {name: {p["name"]: p for p in s["parameters"]} for name, s in data.items()}
    assert params["polaris"]["account"]["required"] and params["perlmutter"]["account"]["required"]
    assert params["aurora"]["account"]["required"]
    assert params["aurora"]["accelerators"]["default"] == [f"{g}.{t}" for g in range(6) for t in range(2)]
    assert not params["slurm"]["account"]["required"] and params["slurm"]["account"]["default"] is None
    assert params["slurm"]["launcher"]["default"] == "MpiExecLauncher"
    res = CliRunner().invoke(main, ["sites"])
    assert "account (required)" in res.stdout and "partition (optional)" in res.stdout


def test_sites_shows_one_profile_by_name_or_path(tmp_path: Path) -> None:
    """What the Ansible role checks a site's parameters against."""
    res = CliRunner().invoke(main, ["sites", "slurm", "--json"])
    (one,) = json.loads(res.stdout)["data"]
    assert one["name"] == "slurm" and "partition" in {p["name"] for p in one["parameters"]}
    path = tmp_path / "mysite.yaml"
    path.write_text((Path(profiles.__file__).parent / "sites" / "local.yaml").read_text())
    res = CliRunner().invoke(main, ["sites", str(path), "--json"])
    (one,) = json.loads(res.stdout)["data"]
    assert one["name"] == "mysite" and "workers" in [p["name"] for p in one["parameters"]]
    res = CliRunner().invoke(main, ["sites", "nosuch", "--json"])
    env = json.loads(res.stdout)
    assert res.exit_code == SiteProfileError.exit_code and env["status"] == "error"
    assert env["errors"][0]["message"] == "unknown site profile 'nosuch'"

