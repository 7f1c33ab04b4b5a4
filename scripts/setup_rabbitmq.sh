#!/usr/bin/env bash
# What the daemon tier of the test suite needs (tests/test_daemon.py): Debian's
# RabbitMQ, installed but NOT started (each test session starts a private
# broker on loopback, as an unprivileged user, and stops it again), and an
# unprivileged account that runs the real `globus-compute-endpoint` daemon.
# Run as root; idempotent: a second run changes nothing and takes a second.
#
#   rabbitmq-server        Debian's package (3.10 on bookworm). Its own system
#                          service is left alone: PID 1 is not systemd on the
#                          test machines, and where it is, the tests use their
#                          own node name, ports and directories anyway.
#   $GCBUNDLE_DAEMON_USER  (default gcbdaemon) home /home/gcbdaemon, bash,
#                          no password; it runs the endpoint, RabbitMQ and
#                          the drivers of the daemon tier. Not `gcbtest`: that
#                          account belongs to the Ansible tests.
set -euo pipefail

user="${GCBUNDLE_DAEMON_USER:-gcbdaemon}"
log() { echo "setup_rabbitmq: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -- bash "$0" "$@"; fi
  log "run as root (it installs packages and creates a user)"
  exit 1
fi

# util-linux for `runuser`, procps for `pkill -0`-free process checks in the tests.
missing=()
for p in rabbitmq-server util-linux procps; do
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
  # policy-rc.d (if any) keeps the package from starting its service; where
  # it does start (a CI machine with systemd), it listens on 5672 and the
  # tests' private broker on its own port, so the two do not meet.
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
test -x /usr/lib/rabbitmq/bin/rabbitmq-server || { log "rabbitmq-server is installed but /usr/lib/rabbitmq/bin/rabbitmq-server is missing"; exit 1; }

if ! id "$user" >/dev/null 2>&1; then
  log "creating user $user"
  useradd --create-home --shell /bin/bash "$user"
fi
home="$(getent passwd "$user" | cut -d: -f6)"
# The tests write the endpoint's configuration and RabbitMQ's data under
# $home/daemon-tier (fresh for every session); nothing else is needed here.
install -d -o "$user" -g "$(id -gn "$user")" -m 0755 "$home"
log "ready: $(dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server), user $user"
