#!/usr/bin/env bash
# A private sshd on loopback and an unprivileged account, for the Ansible tests
# (tests/test_ansible.py, marker `ssh`). Run as root; idempotent: a second run
# changes nothing and takes a second, and it restarts a dead sshd.
#
# What it sets up (nothing of the system's own sshd is touched):
#   $GCBUNDLE_SSHD_DIR (default /var/lib/gcbundle-test-sshd), mode 0700:
#     sshd_config, ssh_host_ed25519_key   the private sshd's config and host key
#     sshd.pid, sshd.log                  its pid file and log
#     client_ed25519(.pub)                root's client key, authorised for the user
#     known_hosts                         the host key, for StrictHostKeyChecking=yes
#     env                                 KEY=VALUE lines the tests read (see below)
#   an account $GCBUNDLE_SSH_USER (default gcbtest): home /home/gcbtest, bash,
#     unlocked (`usermod -p '*'`: sshd with UsePAM no refuses locked accounts),
#     root's client key in ~/.ssh/authorized_keys.
#   sshd listens on 127.0.0.1:$GCBUNDLE_SSHD_PORT (default 2222; the next free
#     port up to 2299 if something else holds it).
#
# The env file (shell syntax, also read by tests/conftest_ssh.py):
#   GCBUNDLE_SSH_HOST GCBUNDLE_SSH_PORT GCBUNDLE_SSH_USER GCBUNDLE_SSH_KEY
#   GCBUNDLE_SSH_KNOWN_HOSTS GCBUNDLE_SSH_HOME
# Try it: . /var/lib/gcbundle-test-sshd/env &&
#   ssh -i "$GCBUNDLE_SSH_KEY" -p "$GCBUNDLE_SSH_PORT" \
#       -o UserKnownHostsFile="$GCBUNDLE_SSH_KNOWN_HOSTS" \
#       "$GCBUNDLE_SSH_USER@$GCBUNDLE_SSH_HOST" true
set -euo pipefail

dir="${GCBUNDLE_SSHD_DIR:-/var/lib/gcbundle-test-sshd}"
user="${GCBUNDLE_SSH_USER:-gcbtest}"
want_port="${GCBUNDLE_SSHD_PORT:-2222}"
host=127.0.0.1

log() { echo "setup_sshd: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup_sshd: run as root (it installs packages and creates a user)" >&2
  exit 1
fi

# --- packages -----------------------------------------------------------------
# openssh-server for sshd, python3-venv so the user can build a venv from
# Debian's /usr/bin/python3 (the Ansible roles do that), python3 for Ansible's
# modules on the target; cron for the `crontab` command (the endpoint role
# writes a user crontab; no cron daemon is started).
missing=()
for p in openssh-server openssh-client python3 python3-venv iproute2 cron; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Another set-up script may run apt at the same time: wait for its locks.
  for try in 1 2 3; do
    apt-get -o DPkg::Lock::Timeout=600 update -qq && break
    [ "$try" = 3 ] && exit 1
    sleep 10
  done
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the account ----------------------------------------------------------------
if ! getent passwd "$user" >/dev/null; then
  log "creating user $user"
  useradd --create-home --home-dir "/home/$user" --shell /bin/bash "$user"
fi
home="$(getent passwd "$user" | cut -d: -f6)"
if [ "$(getent shadow "$user" | cut -d: -f2)" != '*' ]; then
  usermod -p '*' "$user"
fi

# --- keys -----------------------------------------------------------------------
install -d -m 0700 -o root -g root "$dir"
install -d -m 0755 -o root -g root /run/sshd   # sshd's privilege-separation dir
[ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C gcbundle-test-host -f "$dir/ssh_host_ed25519_key"
[ -f "$dir/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C gcbundle-test-client -f "$dir/client_ed25519"

pubkey="$(cat "$dir/client_ed25519.pub")"
install -d -m 0700 -o "$user" -g "$(id -gn "$user")" "$home/.ssh"
auth="$home/.ssh/authorized_keys"
if ! { [ -f "$auth" ] && grep -qxF "$pubkey" "$auth"; }; then
  log "authorising root's client key for $user"
  printf '%s\n' "$pubkey" >>"$auth"
fi
chown "$user:$(id -gn "$user")" "$auth"
chmod 0600 "$auth"

# --- the daemon -----------------------------------------------------------------
pidfile="$dir/sshd.pid"
running_pid() {
  local pid
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
     && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/sshd ]; then
    echo "$pid"
  fi
}
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }

pid="$(running_pid)"
port=""
if [ -f "$dir/env" ]; then
  port="$(sed -n 's/^GCBUNDLE_SSH_PORT=//p' "$dir/env")"
fi
if [ -z "$pid" ] || [ -z "$port" ]; then
  # Not running: take the wanted port, or the next free one.
  port=""
  for p in $(seq "$want_port" 2299); do
    if ! port_busy "$p"; then port="$p"; break; fi
  done
  [ -n "$port" ] || { echo "setup_sshd: no free port in $want_port..2299" >&2; exit 1; }
fi

conf_new="$(mktemp)"
trap 'rm -f "$conf_new"' EXIT
cat >"$conf_new" <<EOF
# Private sshd for gcbundle's Ansible tests (written by scripts/setup_sshd.sh).
Port $port
ListenAddress $host
HostKey $dir/ssh_host_ed25519_key
PidFile $pidfile
AllowUsers $user
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# tests/test_ansible.py's upgrade test sets the keep-alive's stand-in for
# "globus-compute-endpoint start" in ~/.ssh/environment (only that name).
PermitUserEnvironment GCBUNDLE_ENDPOINT_GCE
StrictModes yes
X11Forwarding no
PrintMotd no
MaxStartups 50:30:100
MaxSessions 50
Subsystem sftp internal-sftp
EOF
restart=0
if ! cmp -s "$conf_new" "$dir/sshd_config"; then
  install -m 0600 "$conf_new" "$dir/sshd_config"
  restart=1
fi
/usr/sbin/sshd -t -f "$dir/sshd_config"

if [ -n "$pid" ] && [ "$restart" = 1 ]; then
  log "config changed: restarting sshd ($pid)"
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  pid=""
fi
if [ -z "$pid" ]; then
  log "starting sshd on $host:$port"
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  for _ in $(seq 50); do port_busy "$port" && break; sleep 0.1; done
fi

# --- what the tests read --------------------------------------------------------
kh_new="[$host]:$port $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")"
if [ "$(cat "$dir/known_hosts" 2>/dev/null)" != "$kh_new" ]; then
  printf '%s\n' "$kh_new" >"$dir/known_hosts"
  chmod 0600 "$dir/known_hosts"
fi
env_new="$(cat <<EOF
GCBUNDLE_SSH_HOST=$host
GCBUNDLE_SSH_PORT=$port
GCBUNDLE_SSH_USER=$user
GCBUNDLE_SSH_HOME=$home
GCBUNDLE_SSH_KEY=$dir/client_ed25519
GCBUNDLE_SSH_KNOWN_HOSTS=$dir/known_hosts
EOF
)"
if [ "$(cat "$dir/env" 2>/dev/null)" != "$env_new" ]; then
  printf '%s\n' "$env_new" >"$dir/env"
  chmod 0600 "$dir/env"
fi

# --- check ----------------------------------------------------------------------
ok=0
for _ in $(seq 30); do
  if ssh -q -i "$dir/client_ed25519" -p "$port" -o BatchMode=yes -o IdentitiesOnly=yes \
       -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$dir/known_hosts" \
       -o ConnectTimeout=5 "$user@$host" true </dev/null; then
    ok=1; break
  fi
  sleep 0.2
done
if [ "$ok" != 1 ]; then
  echo "setup_sshd: cannot log in as $user on $host:$port; see $dir/sshd.log" >&2
  exit 1
fi
log "ready: $user@$host:$port (env: $dir/env)"
