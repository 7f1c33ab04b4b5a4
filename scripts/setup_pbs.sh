#!/usr/bin/env bash
# Build OpenPBS (the open-source PBS Pro) from source, install it in /opt/pbs
# and start it over the virtual site of scripts/site.sh (brought up when it is
# not): pbs_server, pbs_sched, pbs_comm and PBS's own PostgreSQL datastore on
# the login node (this machine), one pbs_mom in each compute node's namespace.
# For a Debian machine whose PID 1 is not systemd; run as root (or via sudo).
#
# Idempotent: nothing is rebuilt when /opt/pbs is installed, nothing is
# restarted when the cluster is up, settings are only applied when they
# differ.  One status line on stdout at the end.
#
# Where the source comes from (OpenPBS is AGPL: it is built here, never kept
# in this repository):
#   OPENPBS_SRC=/path/to/openpbs.tar.gz   a tarball (`git archive` of the
#   OPENPBS_SRC=https://.../x.tar.gz      repository, or a release), or a URL
#   unset: ../shared/vendor/openpbs-*.tar.gz next to the repository when there
#   is one, else the upstream release $OPENPBS_RELEASE_URL (needs internet).
#
# The cluster, as an ALCF-like PBS Pro for the `polaris` and `pbspro`
# profiles: queues `workq` (default) and `debug`; a string resource
# `filesystems` (so `#PBS -l filesystems=home:eagle` is accepted, as on
# Polaris); root may submit (acl_roots); finished jobs stay visible to
# `qstat -x` (job history); a job whose node stops answering is requeued or
# ended after 30 s (node_fail_requeue).
set -euo pipefail

log() { echo "setup_pbs: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
  exec sudo -E -- bash "$0" "$@"
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SITE="$here/scripts/site.sh"
PBS_EXEC=/opt/pbs
PBS_HOME=/var/spool/pbs
PBS_CONF=/etc/pbs.conf
BUILD=/var/cache/gcbundle-openpbs
OPENPBS_RELEASE_URL="${OPENPBS_RELEASE_URL:-https://github.com/openpbs/openpbs/archive/refs/tags/v23.06.06.tar.gz}"
export PBS_CONF_FILE="$PBS_CONF"

# --- packages ------------------------------------------------------------------
# Debian names (they differ from OpenPBS's INSTALL file in places).
packages=(gcc g++ make autoconf automake libtool pkg-config bison flex
  libhwloc-dev libx11-dev libxt-dev libedit-dev libical-dev libexpat1-dev
  libncurses-dev libpq-dev perl postgresql postgresql-contrib python3-dev
  tcl-dev tk-dev swig libssl-dev libxext-dev libxft-dev libcjson-dev
  zlib1g-dev curl ca-certificates)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
fi

# --- build and install (once) ----------------------------------------------------
installed() { [ -x "$PBS_EXEC/sbin/pbs_server" ] && [ -x "$PBS_EXEC/sbin/pbs_mom" ] && [ -x "$PBS_EXEC/bin/qsub" ]; }

source_tarball() {
  local src="${OPENPBS_SRC:-}" vendored
  if [ -z "$src" ]; then
    vendored="$(ls "$here"/../shared/vendor/openpbs-*.tar.gz 2>/dev/null | head -n 1 || true)"
    src="${vendored:-$OPENPBS_RELEASE_URL}"
  fi
  case "$src" in
    http://* | https://*)
      log "downloading $src"
      curl -fsSL --retry 3 --max-time 600 -o "$BUILD/openpbs.tar.gz" "$src" \
        || die "could not download $src; set OPENPBS_SRC to a local tarball"
      echo "$BUILD/openpbs.tar.gz" ;;
    *)
      [ -f "$src" ] || die "OPENPBS_SRC=$src is not a file; give a tarball of the OpenPBS source or a URL"
      readlink -f "$src" ;;
  esac
}

if ! installed; then
  install -d "$BUILD"
  tarball="$(source_tarball)"
  rm -rf "$BUILD/src"
  mkdir -p "$BUILD/src"
  tar -xzf "$tarball" -C "$BUILD/src" --strip-components=1 \
    || die "could not unpack $tarball"
  [ -x "$BUILD/src/autogen.sh" ] || die "$tarball does not look like the OpenPBS source (no autogen.sh)"
  buildlog="$BUILD/build.log"
  : >"$buildlog"
  t0=$(date +%s)
  step() {  # step NAME CMD...: one phase of the build, its output in the log
    local name="$1"
    shift
    log "build: $name (log: $buildlog)"
    (cd "$BUILD/src" && "$@") >>"$buildlog" 2>&1 \
      || { tail -n 30 "$buildlog" >&2; die "OpenPBS build step '$name' failed; see $buildlog"; }
  }
  step autogen ./autogen.sh
  step configure ./configure --prefix="$PBS_EXEC"
  step "make -j$(nproc) (about 4 minutes on 2 cores)" make -j"$(nproc)"
  step "make install" make install
  log "built and installed OpenPBS in $PBS_EXEC in $(($(date +%s) - t0)) s"
  rm -rf "$BUILD/src"
fi
chmod 4755 "$PBS_EXEC/sbin/pbs_iff" "$PBS_EXEC/sbin/pbs_rcp"
# The PBS user and operator commands on every user's PATH, as a site's login
# node has them.  Not PBS's `mpiexec`/`pbsrun*` wrappers: Open MPI's mpiexec
# stays the one on PATH.
for name in qalter qdel qdisable qenable qhold qmgr qmove qmsg qorder qrerun qrls qrun \
    qselect qsig qstart qstat qstop qsub qterm pbsnodes pbsdsh tracejob printjob \
    pbs_rstat pbs_rsub pbs_rdel pbs_ralter pbs_release_nodes pbs_topologyinfo; do
  [ "$(readlink "/usr/local/bin/$name" 2>/dev/null)" = "$PBS_EXEC/bin/$name" ] \
    || ln -sfn "$PBS_EXEC/bin/$name" "/usr/local/bin/$name"
done

# --- the site ------------------------------------------------------------------
bash "$SITE" up
mapfile -t nodes < <(bash "$SITE" nodes)
server="$(hostname -s)"
addr="$(getent ahostsv4 "$server" | awk 'NR==1{print $1}')"
case "$addr" in
  127.*|'') die "$server resolves to '${addr:-nothing}': PBS daemons refuse loopback addresses (scripts/site.sh up maps it to bond0)" ;;
esac

# --- the login node: server, scheduler, comm (no mom) ---------------------------
server_conf="PBS_SERVER=$server
PBS_START_SERVER=1
PBS_START_SCHED=1
PBS_START_COMM=1
PBS_START_MOM=0
PBS_EXEC=$PBS_EXEC
PBS_HOME=$PBS_HOME
PBS_CORE_LIMIT=unlimited
PBS_SCP=/usr/bin/scp"

server_up() { "$PBS_EXEC/bin/qstat" -B >/dev/null 2>&1; }

fresh_home() {
  log "creating PBS_HOME $PBS_HOME (pbs_postinstall)"
  rm -rf "$PBS_HOME"
  rm -f "$PBS_CONF"
  # It also tries systemd and update-rc.d, which are absent here: harmless.
  "$PBS_EXEC/libexec/pbs_postinstall" >>"$BUILD/postinstall.log" 2>&1 || true
  [ -x /etc/init.d/pbs ] || install -m 0755 "$PBS_EXEC/libexec/pbs_init.d" /etc/init.d/pbs
  printf '%s\n' "$server_conf" >"$PBS_CONF"
}

start_server() {
  log "starting pbs_server, pbs_sched, pbs_comm"
  /etc/init.d/pbs start >>"$BUILD/start.log" 2>&1 || true
  for _ in $(seq 1 150); do server_up && return 0; sleep 0.2; done
  return 1
}

install -d "$BUILD"
if [ ! -s "$PBS_CONF" ] || [ ! -d "$PBS_HOME/server_priv" ]; then
  fresh_home
fi
if [ "$(cat "$PBS_CONF")" != "$server_conf" ]; then
  log "writing $PBS_CONF"
  server_up && /etc/init.d/pbs stop >>"$BUILD/start.log" 2>&1 || true
  printf '%s\n' "$server_conf" >"$PBS_CONF"
fi
if ! server_up; then
  if ! start_server; then
    # A first start that failed leaves a datastore on which pbs_server later
    # exits silently: start again from an empty PBS_HOME, once.
    log "pbs_server did not come up; starting again from an empty PBS_HOME"
    /etc/init.d/pbs stop >>"$BUILD/start.log" 2>&1 || true
    fresh_home
    start_server || die "pbs_server did not start; see $PBS_HOME/server_logs and $BUILD/start.log"
  fi
fi

# qmgr_set OBJECT ATTRIBUTE VALUE: set it when it differs.
qmgr() { "$PBS_EXEC/bin/qmgr" -c "$1" >/dev/null; }
qmgr_set() {
  local cur
  cur="$("$PBS_EXEC/bin/qmgr" -c "list $1" 2>/dev/null | awk -v a="$2" '$1 == a {sub(/^[^=]*= /, ""); print; exit}')"
  [ "$cur" = "$3" ] || qmgr "set $1 $2 = $3"
}
qmgr_set server acl_roots root
qmgr_set server flatuid True
qmgr_set server job_history_enable True
qmgr_set server node_fail_requeue 30
qmgr_set server scheduler_iteration 10
"$PBS_EXEC/bin/qmgr" -c "list resource filesystems" >/dev/null 2>&1 || qmgr "create resource filesystems type=string"
if ! "$PBS_EXEC/bin/qmgr" -c "list queue debug" >/dev/null 2>&1; then
  qmgr "create queue debug queue_type=execution"
fi
qmgr_set "queue debug" enabled True
qmgr_set "queue debug" started True

# --- a mom per compute node -------------------------------------------------------
mom_home() { echo "/var/spool/pbs-$1"; }
mom_conf() { echo "/etc/pbs-$1.conf"; }
mom_pid() {  # the node's pbs_mom pid, if it runs
  local f pid
  f="$(mom_home "$1")/mom_priv/mom.lock"
  [ -s "$f" ] || return 1
  pid="$(head -n 1 "$f" | tr -d ' ')"
  [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = pbs_mom ] && echo "$pid"
}

for n in "${nodes[@]}"; do
  home="$(mom_home "$n")"
  conf="PBS_SERVER=$server
PBS_START_SERVER=0
PBS_START_SCHED=0
PBS_START_COMM=0
PBS_START_MOM=1
PBS_EXEC=$PBS_EXEC
PBS_HOME=$home
PBS_MOM_NODE_NAME=$n
PBS_LEAF_NAME=$n
PBS_CORE_LIMIT=unlimited
PBS_SCP=/usr/bin/scp"
  [ "$(cat "$(mom_conf "$n")" 2>/dev/null)" = "$conf" ] || printf '%s\n' "$conf" >"$(mom_conf "$n")"
  if [ ! -d "$home/mom_priv" ]; then
    log "creating $home for the mom of $n"
    install -d -m 0755 "$home"
    install -d -m 0751 "$home/mom_priv" "$home/mom_priv/jobs" "$home/mom_priv/hooks" "$home/mom_priv/hooks/tmp"
    install -d -m 0755 "$home/mom_logs" "$home/aux" "$home/checkpoint"
    install -d -m 1777 "$home/spool" "$home/undelivered"
    cp "$PBS_HOME/pbs_environment" "$home/pbs_environment"
  fi
  # The server is the only client; job files are on the shared file system,
  # so output is copied locally (cp), not with scp.
  printf '%s\n' "\$clienthost $server" '$usecp *:/ /' '$logevent 0x1ff' >"$home/mom_priv/config.new"
  if ! cmp -s "$home/mom_priv/config.new" "$home/mom_priv/config"; then
    mv "$home/mom_priv/config.new" "$home/mom_priv/config"
    pid="$(mom_pid "$n" || true)"
    [ -n "$pid" ] && kill -HUP "$pid"
  else
    rm -f "$home/mom_priv/config.new"
  fi
  if ! mom_pid "$n" >/dev/null; then
    log "starting pbs_mom on $n"
    bash "$SITE" exec "$n" env PBS_CONF_FILE="$(mom_conf "$n")" "$PBS_EXEC/sbin/pbs_mom" </dev/null >/dev/null 2>&1 \
      || die "pbs_mom on $n did not start; see $home/mom_logs"
  fi
  "$PBS_EXEC/bin/pbsnodes" "$n" >/dev/null 2>&1 || qmgr "create node $n"
done
# The login node runs no jobs (no mom): drop a node of its name if an
# earlier set-up made one.
if "$PBS_EXEC/bin/pbsnodes" "$server" >/dev/null 2>&1; then qmgr "delete node $server"; fi

# --- wait until every node is free ----------------------------------------------
summary=()
for n in "${nodes[@]}"; do
  state=""
  for _ in $(seq 1 300); do
    state="$("$PBS_EXEC/bin/pbsnodes" "$n" 2>/dev/null | awk '$1 == "state" {print $3; exit}')"
    case "$state" in
      free | job-busy | job-exclusive | resv-exclusive) break ;;
      *offline*) "$PBS_EXEC/bin/pbsnodes" -r "$n" >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  case "$state" in
    free | job-busy | job-exclusive | resv-exclusive) ;;
    *) die "PBS node $n is '${state:-unknown}' after 60s; see $(mom_home "$n")/mom_logs and $PBS_HOME/server_logs" ;;
  esac
  summary+=("$n $state")
done
version="$("$PBS_EXEC/bin/qstat" --version 2>/dev/null | head -n 1)"
echo "pbs: server ${server} (${addr}), moms $(IFS=,; echo "${summary[*]}"); queues $("$PBS_EXEC/bin/qstat" -Q 2>/dev/null | awk 'NR>2{print $1}' | tr '\n' ' ' | sed 's/ $//'); ${version}"
