#!/usr/bin/env bash
# One-stop set-up on a fresh Debian machine, idempotent.
#   scripts/setup.sh          the client and the local endpoint in .venv
#   scripts/setup.sh --test   plus what the test suite needs: the virtual site
#                             (scripts/site.sh: compute nodes cn1, cn2 as network
#                             namespaces behind bridges bond0, hsn0), Slurm with munge
#                             and Open MPI over it, OpenPBS built from source over
#                             it (OPENPBS_SRC, see scripts/setup_pbs.sh), and a
#                             loopback sshd with an unprivileged user for the
#                             Ansible tests, and Debian's RabbitMQ with an
#                             unprivileged user for the tests that run the real
#                             globus-compute-endpoint daemon
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Debian's own interpreter: it is readable by every user, which the login-node
# tests (run as an unprivileged user) rely on.
apt_install python3 python3-venv python3-pip git
PY="${GCBUNDLE_PYTHON:-/usr/bin/python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras=""
[ "$with_tests" = 1 ] && extras="[test,ansible]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extras}"

if [ "$with_tests" = 1 ]; then
  # setup_slurm.sh and setup_pbs.sh each bring the site up first (idempotent).
  for script in scripts/setup_slurm.sh scripts/setup_pbs.sh scripts/setup_sshd.sh scripts/setup_rabbitmq.sh; do
    if [ -f "$script" ]; then bash "$script"; fi
  done
fi
echo "setup: ready ($(.venv/bin/gcbundle --version 2>/dev/null || echo gcbundle))" >&2
