#!/usr/bin/env bash
# A virtual HPC site on this one machine, for the test suite:
#
#   this machine      the login node (keeps its hostname; the schedulers'
#                     servers, the local endpoint and the driver run here)
#   cn1, cn2, ...     compute nodes: each a network namespace with its own
#                     UTS namespace (own hostname), its own addresses, and an
#                     sshd whose host keys this script makes
#
# Two "fabrics" connect them, each a Linux bridge on the login node named as
# the site profiles expect the login node's interface to be named:
#   bond0  10.250.0.0/24   (ALCF Polaris, `polaris` profile)
#   hsn0   10.251.0.0/24   (NERSC Perlmutter, `perlmutter` profile)
# The login node is .1 on both; compute node i is .(10+i), with interfaces
# also named bond0 and hsn0 inside its namespace.  Nothing is routed beyond
# these two links (the namespaces have no default route), and no address but
# the ones this script creates is used.
#
# File systems are the machine's own, shared by every node as on a real site.
# /etc/hosts gets the node names (and the login node's name on bond0, since
# PBS daemons refuse loopback addresses); the original is kept and put back.
# Root on any node can ssh to any compute node with a key this script makes
# (/etc/ssh/ssh_config.d/gcbundle-site.conf names it), which is how Open MPI
# (built without PBS support) starts ranks on the other nodes of a PBS job.
#
#   scripts/site.sh up        bring the site up (idempotent: a re-run of a
#                             running site changes nothing)
#   scripts/site.sh down      stop everything the test site runs (its PBS and
#                             Slurm daemons and munged included), remove the
#                             namespaces and bridges, restore /etc/hosts
#   scripts/site.sh status    one line per node; exit 1 if the site is not up
#   scripts/site.sh exec NODE CMD...   run CMD on a compute node
#   scripts/site.sh nodes     the compute node names, one per line
#   scripts/site.sh kill-node NODE     a node "crashes": its daemons are
#                             killed and its links go down (for fault tests);
#                             `up` brings it back
#
# Settings (environment): GCBUNDLE_SITE_NODES (number of compute nodes, 2).
set -euo pipefail

log() { echo "site: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
  exec sudo -- bash "$0" "$@"
fi

NODES="${GCBUNDLE_SITE_NODES:-2}"
case "$NODES" in ''|*[!0-9]*) die "GCBUNDLE_SITE_NODES must be a number, not '$NODES'" ;; esac
[ "$NODES" -ge 1 ] && [ "$NODES" -le 50 ] || die "GCBUNDLE_SITE_NODES must be 1..50"
FABRICS=(bond0 hsn0)
declare -A NET=([bond0]=10.250.0 [hsn0]=10.251.0)
STATE=/var/lib/gcbundle-site
RUN=/run/gcbundle-site
SSH_DIR="$STATE/ssh"
SSH_CLIENT_CONF=/etc/ssh/ssh_config.d/gcbundle-site.conf
HOSTS=/etc/hosts
HOSTS_ORIG="$STATE/hosts.orig"
MARK="# gcbundle virtual site (scripts/site.sh up); \`scripts/site.sh down\` restores the original"
LOGIN="$(hostname -s)"

node_names() { local i; for i in $(seq 1 "$NODES"); do echo "cn$i"; done; }
node_ip() { echo "${NET[$2]}.$((10 + ${1#cn}))"; }   # node_ip cnI FABRIC
login_ip() { echo "${NET[$1]}.1"; }

# holder_pid NODE: the pid of the process that holds the node's UTS
# namespace (and lives in its network namespace), if it is alive.
holder_pid() {
  local f="$RUN/$1.holder.pid" pid
  [ -s "$f" ] || return 1
  pid="$(cat "$f")"
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "^gcbundle-site-node $1 " || return 1
  echo "$pid"
}

# on NODE CMD...: run CMD in the node's network and UTS namespaces.
on() {
  local node="$1" pid
  shift
  pid="$(holder_pid "$node")" || die "compute node $node is not up; run scripts/site.sh up"
  nsenter -t "$pid" -n -u -- "$@"
}

pid_alive() {  # pid_alive PIDFILE COMM
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}

stop_pidfile() {  # stop_pidfile PIDFILE COMM
  local pid _
  pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
  pid="$(cat "$1")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

# --- /etc/hosts --------------------------------------------------------------
hosts_block() {
  local n f
  echo "$MARK"
  echo "$(login_ip bond0) $LOGIN"
  echo "$(login_ip hsn0) $LOGIN-hsn"
  for n in $(node_names); do
    echo "$(node_ip "$n" bond0) $n"
    echo "$(node_ip "$n" hsn0) $n-hsn"
  done
}

write_hosts() {
  local want tmp
  if [ ! -s "$HOSTS_ORIG" ]; then
    grep -qF "$MARK" "$HOSTS" && die "$HOSTS has the site's lines but $HOSTS_ORIG is gone; remove them by hand"
    cp -p "$HOSTS" "$HOSTS_ORIG"
  fi
  # The original, minus the login node's name on loopback lines (PBS must
  # resolve it to bond0's address), plus the site's names.
  want="$(awk -v me="$LOGIN" '
    $1 ~ /^127\./ || $1 == "::1" {
      line = $1; kept = 0
      for (i = 2; i <= NF; i++) if ($i != me) { line = line " " $i; kept++ }
      if (kept) print line
      next
    }
    { print }' "$HOSTS_ORIG"; hosts_block)"
  if [ "$(cat "$HOSTS")" != "$want" ]; then
    log "writing $HOSTS (original kept in $HOSTS_ORIG)"
    tmp="$(mktemp)"
    printf '%s\n' "$want" >"$tmp"
    # Written whole, in place: /etc/hosts may be a bind mount.
    cat "$tmp" >"$HOSTS"
    rm -f "$tmp"
  fi
}

restore_hosts() {
  if [ -s "$HOSTS_ORIG" ]; then
    if ! cmp -s "$HOSTS_ORIG" "$HOSTS"; then
      log "restoring $HOSTS"
      cat "$HOSTS_ORIG" >"$HOSTS"
    fi
    rm -f "$HOSTS_ORIG"
  fi
}

# --- links and namespaces ----------------------------------------------------
bridge_up() {  # bridge_up FABRIC
  local br="$1" addr
  addr="$(login_ip "$br")/24"
  ip link show "$br" >/dev/null 2>&1 || { log "creating bridge $br"; ip link add "$br" type bridge; }
  ip -4 addr show dev "$br" | grep -q "inet $addr " || ip addr add "$addr" dev "$br"
  ip link set "$br" up
}

node_up() {  # node_up NODE
  local n="$1" f host_end pid
  if ! ip netns list | grep -qw "^$n"; then
    log "creating network namespace $n"
    ip netns add "$n"
  fi
  ip netns exec "$n" ip link set lo up
  for f in "${FABRICS[@]}"; do
    host_end="$n-$f"   # e.g. cn1-bond0, a port of bridge bond0
    if ! ip link show "$host_end" >/dev/null 2>&1; then
      ip link add "$host_end" type veth peer name "$n-$f-n"
      ip link set "$n-$f-n" netns "$n"
      ip netns exec "$n" ip link set "$n-$f-n" name "$f"
    fi
    ip link set "$host_end" master "$f"
    ip link set "$host_end" up
    ip netns exec "$n" ip -4 addr show dev "$f" | grep -q "inet $(node_ip "$n" "$f")/24 " \
      || ip netns exec "$n" ip addr add "$(node_ip "$n" "$f")/24" dev "$f"
    ip netns exec "$n" ip link set "$f" up
  done
  if ! holder_pid "$n" >/dev/null; then
    # One long-lived process holds the node's own UTS namespace (hostname);
    # every daemon of the node is started inside it with nsenter.
    setsid ip netns exec "$n" unshare --uts -- bash -c \
      "hostname $n; echo \$\$ >$RUN/$n.holder.pid; exec -a 'gcbundle-site-node $n' sleep infinity" \
      </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 50); do holder_pid "$n" >/dev/null && break; sleep 0.1; done
    holder_pid "$n" >/dev/null || die "could not start the holder of $n"
  fi
  pid="$(holder_pid "$n")"
  [ "$(nsenter -t "$pid" -u hostname)" = "$n" ] || die "$n: hostname in its UTS namespace is not $n"
}

# --- ssh between nodes -------------------------------------------------------
ssh_keys() {
  local n known="" key
  install -d -m 0700 "$SSH_DIR"
  [ -s "$SSH_DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "gcbundle-site root" -f "$SSH_DIR/id_ed25519"
  cp "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/authorized_keys.new"
  mv "$SSH_DIR/authorized_keys.new" "$SSH_DIR/authorized_keys"
  chmod 0600 "$SSH_DIR/authorized_keys"
  for n in $(node_names); do
    install -d -m 0700 "$SSH_DIR/$n"
    [ -s "$SSH_DIR/$n/ssh_host_ed25519_key" ] \
      || ssh-keygen -q -t ed25519 -N '' -C "$n" -f "$SSH_DIR/$n/ssh_host_ed25519_key"
    key="$(cut -d' ' -f1,2 "$SSH_DIR/$n/ssh_host_ed25519_key.pub")"
    known+="$n,$n-hsn,$(node_ip "$n" bond0),$(node_ip "$n" hsn0) $key"$'\n'
    cat >"$SSH_DIR/$n/sshd_config" <<EOF
# sshd of compute node $n (scripts/site.sh)
ListenAddress $(node_ip "$n" bond0)
ListenAddress $(node_ip "$n" hsn0)
HostKey $SSH_DIR/$n/ssh_host_ed25519_key
PidFile $RUN/$n.sshd.pid
AuthorizedKeysFile $SSH_DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AcceptEnv OMPI_* PMIX_*
LogLevel ERROR
EOF
  done
  printf '%s' "$known" >"$SSH_DIR/known_hosts"
  local hosts_pat
  hosts_pat="$(node_names | tr '\n' ' ')$(node_names | sed 's/$/-hsn/' | tr '\n' ' ')${NET[bond0]}.* ${NET[hsn0]}.*"
  local conf
  conf="# The gcbundle test site's compute nodes (scripts/site.sh); removed by \`scripts/site.sh down\`.
Host $hosts_pat
    IdentityFile $SSH_DIR/id_ed25519
    UserKnownHostsFile $SSH_DIR/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10"
  if [ "$(cat "$SSH_CLIENT_CONF" 2>/dev/null)" != "$conf" ]; then
    install -d /etc/ssh/ssh_config.d
    printf '%s\n' "$conf" >"$SSH_CLIENT_CONF"
  fi
}

sshd_up() {  # sshd_up NODE
  local n="$1"
  pid_alive "$RUN/$n.sshd.pid" sshd && return 0
  install -d -m 0755 /run/sshd
  on "$n" /usr/sbin/sshd -f "$SSH_DIR/$n/sshd_config" -E "$STATE/$n.sshd.log" \
    || die "sshd of $n did not start; see $STATE/$n.sshd.log"
  for _ in $(seq 1 50); do pid_alive "$RUN/$n.sshd.pid" sshd && return 0; sleep 0.1; done
  die "sshd of $n did not start; see $STATE/$n.sshd.log"
}

# --- commands -----------------------------------------------------------------
# The site's own tools: ip (links, namespaces), sshd and ssh-keygen (the nodes'
# sshds, the MPI key). A minimal Debian image has none of them.
site_packages() {
  local p missing=()
  for p in iproute2 openssh-server openssh-client; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

cmd_up() {
  site_packages
  install -d -m 0755 "$STATE" "$RUN"
  write_hosts
  for f in "${FABRICS[@]}"; do bridge_up "$f"; done
  ssh_keys
  for n in $(node_names); do node_up "$n"; sshd_up "$n"; done
  cmd_status >/dev/null || { cmd_status; die "the site did not come up"; }
  log "up: login node $LOGIN ($(login_ip bond0) on bond0, $(login_ip hsn0) on hsn0), compute nodes $(node_names | tr '\n' ' ')"
}

# kill_in_netns NODE: SIGKILL every process left in the node's namespace
# (job processes, daemons), except its holder.
kill_in_netns() {
  local n="$1" holder pids
  holder="$(holder_pid "$n" 2>/dev/null || true)"
  pids="$(ip netns pids "$n" 2>/dev/null | grep -vx "${holder:-none}" || true)"
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
}

node_down() {  # node_down NODE
  local n="$1" pid f
  # Daemons the scheduler scripts started on the node (by their pid files).
  stop_pidfile "$RUN/$n.sshd.pid" sshd
  for f in /var/spool/pbs-"$n"/mom_priv/mom.lock; do
    [ -s "$f" ] && kill -9 "$(head -n 1 "$f")" 2>/dev/null || true
  done
  stop_pidfile "/run/slurmd-$n.pid" slurmd
  kill_in_netns "$n"
  if pid="$(holder_pid "$n")"; then kill "$pid" 2>/dev/null || true; fi
  rm -f "$RUN/$n.holder.pid"
  for f in "${FABRICS[@]}"; do ip link del "$n-$f" 2>/dev/null || true; done
  ip netns del "$n" 2>/dev/null || true
}

cmd_down() {
  local n f
  # The schedulers first (their own scripts know how), then the nodes.
  if [ -x /etc/init.d/pbs ] && [ -s /etc/pbs.conf ]; then
    /etc/init.d/pbs stop >/dev/null 2>&1 || true
  fi
  for n in $(node_names) $(ls "$RUN" 2>/dev/null | sed -n 's/\.holder\.pid$//p'); do
    node_down "$n"
  done
  stop_pidfile /run/slurmctld.pid slurmctld
  stop_pidfile /run/munge/munged.pid munged
  for f in "${FABRICS[@]}"; do ip link del "$f" 2>/dev/null || true; done
  rm -f "$SSH_CLIENT_CONF"
  restore_hosts
  rm -rf "$RUN"
  log "down: namespaces, bridges and daemons gone, $HOSTS restored"
}

cmd_status() {
  local ok=0 n f pid line
  for f in "${FABRICS[@]}"; do
    if ip -4 addr show dev "$f" 2>/dev/null | grep -q "inet $(login_ip "$f")/"; then
      echo "login $LOGIN: $f $(login_ip "$f")"
    else
      echo "login $LOGIN: $f missing"; ok=1
    fi
  done
  for n in $(node_names); do
    if pid="$(holder_pid "$n")"; then
      line="node $n: up (hostname $(nsenter -t "$pid" -u hostname)"
      for f in "${FABRICS[@]}"; do line+=", $f $(node_ip "$n" "$f")"; done
      if pid_alive "$RUN/$n.sshd.pid" sshd; then line+=", sshd"; else line+=", no sshd"; ok=1; fi
      echo "$line)"
    else
      echo "node $n: down"; ok=1
    fi
  done
  return "$ok"
}

cmd_kill_node() {  # a crash: every process of the node dies, its links go down
  local n="$1" f
  holder_pid "$n" >/dev/null || die "no compute node $n is up"
  stop_pidfile "$RUN/$n.sshd.pid" sshd
  kill_in_netns "$n"
  for f in "${FABRICS[@]}"; do ip link set "$n-$f" down 2>/dev/null || true; done
  log "node $n killed (its processes and links); scripts/site.sh up brings it back"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  nodes) node_names ;;
  exec) shift; [ $# -ge 2 ] || die "usage: scripts/site.sh exec NODE CMD..."; n="$1"; shift; on "$n" "$@" ;;
  kill-node) [ $# = 2 ] || die "usage: scripts/site.sh kill-node NODE"; cmd_kill_node "$2" ;;
  *) echo "usage: scripts/site.sh up|down|status|nodes|exec NODE CMD...|kill-node NODE" >&2; exit 2 ;;
esac
