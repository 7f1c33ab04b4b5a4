#!/usr/bin/env bash
# Install and start a Slurm cluster (plus Open MPI) for the test suite over the
# virtual site of scripts/site.sh (which it brings up when it is not): slurmctld
# on the login node (this machine), one slurmd in each compute node's
# namespace. For a Debian machine whose PID 1 is not systemd.  Idempotent:
#   - installs slurm-wlm, munge and openmpi-bin only when missing;
#   - rewrites /etc/slurm/slurm.conf only when its content would change (and
#     then restarts slurmctld and slurmd so they read it);
#   - starts munged, slurmctld and each node's slurmd directly (no init
#     system) when they are not running, e.g. after a reboot of the machine;
#   - waits until `sinfo` shows every node usable, resuming a node Slurm left
#     down or drained, and prints one status line on stdout.
#
# Jobs can be submitted by root and by any unprivileged user (munge
# authenticates every local user; slurmd runs as root and switches to the
# job's user).
#
# The cluster: the controller on the login node at its bond0 address
# (10.250.0.1); compute nodes cn1, cn2, ... (scripts/site.sh) at their bond0
# addresses, each with the CPUs, cores and memory that `slurmd -C` detects
# (the machine's: the nodes share it); partitions `debug` (default) and
# `long`; no slurmdbd, so `sacct` is disabled and Parsl's SlurmProvider falls
# back to `squeue`.  munged runs on the login node; the slurmds reach its
# socket through the shared file system.
#
# Open MPI inside jobs: `mpiexec` is /usr/bin/mpiexec (Open MPI 4.1).  Run as
# root it refuses to start unless the job environment has
#     export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# and with more ranks than the slots Slurm granted it needs `--oversubscribe`
# or, equivalently, in the environment
#     export OMPI_MCA_rmaps_base_oversubscribe=1
# Put these in the provider's `worker_init` (they are harmless for other
# users); this script deliberately changes no system-wide MPI setting.
set -euo pipefail

log() { echo "setup_slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
  exec sudo -- bash "$0" "$@"
fi

SLURM_CONF=/etc/slurm/slurm.conf
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd-%n.pid     # one per compute node (%n: its name)
OLD_SLURMD_PID=/run/slurmd.pid    # the single-node cluster of earlier versions
SITE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/site.sh"
MUNGE_PID=/run/munge/munged.pid

# --- packages ----------------------------------------------------------------
packages=(slurm-wlm munge openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
fi

# --- the virtual site ---------------------------------------------------------
bash "$SITE" up
mapfile -t nodes < <(bash "$SITE" nodes)
login_addr=10.250.0.1   # the login node on bond0 (scripts/site.sh)

# --- directories and the munge key -----------------------------------------
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0700 /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating the munge key"
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o slurm -g slurm -m 0755 "$STATE_DIR" "$LOG_DIR"
install -d -o root -g root -m 0755 "$SPOOL_DIR" /etc/slurm
for n in "${nodes[@]}"; do install -d -o root -g root -m 0755 "$SPOOL_DIR/$n"; done

# --- slurm.conf ----------------------------------------------------------------
host="$(hostname -s)"
# `slurmd -C` prints this machine's real layout, e.g.
#   NodeName=node1 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
hw="$(slurmd -C | head -n 1)"
case "$hw" in NodeName=*) ;; *) die "unexpected output of 'slurmd -C': $hw" ;; esac
node_hw="${hw#NodeName=* }"   # everything after the node name

new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# slurm.conf written by scripts/setup_slurm.sh (gcbundle test cluster).
# Rewritten whenever it would change; edit the script, not this file.

# One cluster: the controller on the login node (this host), reached on its
# bond0 address; the compute nodes are scripts/site.sh's namespaces.
ClusterName=gcbundle
SlurmctldHost=${host}(${login_addr})
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none

# No systemd and no cgroup set-up on these machines: track job processes via
# /proc and bind no tasks to CPUs.  (Deliberately no cgroup.conf.)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none

# Where the daemons keep state, logs and pid files.
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}/%n
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

# Scheduling: cores are the consumable resource; memory is not tracked, so
# jobs without --mem can share the node.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Start batch jobs as soon as they are submitted (the default batches them
# for up to 3 s), and reject at submission a job that no node or partition
# could ever run (instead of leaving it pending forever).
SchedulerParameters=batch_sched_delay=0
EnforcePartLimits=ALL

# No slurmdbd: accounting is off, so \`sacct\` reports "disabled" and Parsl's
# SlurmProvider uses \`squeue\` for job status.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none

# Timers tuned for tests: cancelled jobs get SIGKILL 5 s after SIGTERM;
# finished jobs stay visible (\`squeue -t all\`, \`squeue --json\`) for a day,
# so the reason a block ended can still be read after it ended;
# a node that went down (e.g. the machine rebooted) returns to service when
# slurmd registers; a node whose slurmd stops answering is DOWN after 30 s
# (so a test that kills a node sees its job end within a minute).
KillWait=5
MinJobAge=86400
# A batch job whose node fails ends NODE_FAIL (not requeued under the same
# id, unseen): Parsl then sees the block fail and the driver can say why.
JobRequeue=0
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
MailProg=/bin/true

# The compute nodes, with the layout and memory \`slurmd -C\` reports, and
# the feature \`cpu\` (as Perlmutter's CPU nodes: \`--constraint cpu\`).
$(for n in "${nodes[@]}"; do
  echo "NodeName=$n NodeAddr=$(getent hosts "$n" | cut -d' ' -f1) ${node_hw} Features=cpu State=UNKNOWN"
done)

# Partitions: \`debug\` is the default; \`long\` is a second queue for tests
# that select a partition.  Both generous, so walltimes never bite by surprise.
PartitionName=debug Nodes=ALL Default=YES MaxTime=2-00:00:00 State=UP
PartitionName=long  Nodes=ALL Default=NO  MaxTime=7-00:00:00 State=UP
EOF

conf_changed=0
if ! cmp -s "$new_conf" "$SLURM_CONF"; then
  log "writing $SLURM_CONF"
  install -o root -g root -m 0644 "$new_conf" "$SLURM_CONF"
  conf_changed=1
fi

# --- daemons -------------------------------------------------------------------
# pid_alive PIDFILE NAME: the pid file names a live process called NAME.
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}

# stop_daemon PIDFILE NAME: stop the daemon this script started (by its pid).
stop_daemon() {
  local pid _
  pid_alive "$1" "$2" || return 0
  pid="$(cat "$1")"
  log "stopping $2 (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    [ -d "/proc/$pid" ] || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds.
wait_for() {
  local what="$1" secs="$2" _
  shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up within ${secs}s"
}

munge_works() { munge -n </dev/null | unmunge >/dev/null; }

if ! munge_works 2>/dev/null; then
  log "starting munged"
  rm -f "$MUNGE_PID" /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 \
    || die "munged failed to start; see /var/log/munge/munged.log"
  wait_for munged 20 munge_works
fi

stop_daemon "$OLD_SLURMD_PID" slurmd   # a slurmd of the single-node layout
if [ "$conf_changed" = 1 ]; then
  for n in "${nodes[@]}"; do stop_daemon "${SLURMD_PID//%n/$n}" slurmd; done
  stop_daemon "$CTLD_PID" slurmctld
fi

if ! pid_alive "$CTLD_PID" slurmctld; then
  log "starting slurmctld"
  /usr/sbin/slurmctld </dev/null >/dev/null 2>&1 \
    || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
  wait_for slurmctld 30 scontrol ping
fi
for n in "${nodes[@]}"; do
  if ! pid_alive "${SLURMD_PID//%n/$n}" slurmd; then
    log "starting slurmd on $n"
    bash "$SITE" exec "$n" /usr/sbin/slurmd -N "$n" </dev/null >/dev/null 2>&1 \
      || die "slurmd on $n failed to start; see $LOG_DIR/slurmd-$n.log"
  fi
done

# --- wait until every node takes jobs ----------------------------------------
# node_state NODE: its state as sinfo prints it (idle, mixed, down*, ...).
node_state() { sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n 1 || true; }
summary=()
for n in "${nodes[@]}"; do
  state=""
  for _ in $(seq 1 300); do
    state="$(node_state "$n")"
    case "$state" in
      idle | mixed | allocated | completing) break ;;
      down* | drain* | fail*)
        # e.g. "Node unexpectedly rebooted", or a test killed it: it is back.
        scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  case "$state" in
    idle | mixed | allocated | completing) ;;
    *) die "node $n is '${state:-unknown}' after 60s; see $LOG_DIR/slurmd-$n.log and slurmctld.log" ;;
  esac
  summary+=("$n $state")
done

cpus="$(sinfo -h -N -n "${nodes[0]}" -o %c | head -n 1)"
mem="$(sinfo -h -N -n "${nodes[0]}" -o %m | head -n 1)"
parts="$(sinfo -h -o %P | tr '\n' ' ' | sed 's/ $//')"
echo "slurm: controller ${host} (${login_addr}), nodes $(IFS=,; echo "${summary[*]}") with ${cpus} CPUs, ${mem} MB each; partitions: ${parts}; $(mpiexec --version 2>/dev/null | head -n 1)"
