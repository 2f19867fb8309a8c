#!/usr/bin/env bash
# Installs what kubeca's tests and demo need on a Debian machine, only when missing.
# Usage: scripts/setup.sh            (run as root, or have everything installed already)
set -euo pipefail

# Debian packages: command -> package. The testbed (tests/) adds its own below.
declare -A need=(
  [openssl]=openssl
  [curl]=curl
  [ip]=iproute2
  [sshd]=openssh-server
  [ssh]=openssh-client
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [haproxy]=haproxy
  [unshare]=util-linux
)

missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done
# kubectl ships on the machine image; Debian's kubernetes-client is the fallback.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)

if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}" >&2
    echo "setup: run 'sudo scripts/setup.sh' (or 'sudo make test') once to install them with apt-get" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi

# The testbed's kube-system/api-proxy pod runs a real kubectl of one minor version
# (tests/src/testbed/kubelet.rs, pinned_kubectl): kubectl.1.31 beside the kubectl on PATH (the
# machine image's Google Cloud SDK has one per version) or in $KUBECA_TESTBED_KUBECTL_DIR.
pinned=kubectl.1.31
found=""
for d in ${KUBECA_TESTBED_KUBECTL_DIR:-} $(dirname "$(readlink -f "$(command -v kubectl)")"); do
  if [ -x "$d/$pinned" ]; then found="$d/$pinned"; break; fi
done
if [ -z "$found" ]; then
  echo "setup: no $pinned binary beside $(command -v kubectl) nor in KUBECA_TESTBED_KUBECTL_DIR;" >&2
  echo "setup: put a kubectl v1.31 binary named $pinned in a directory and set KUBECA_TESTBED_KUBECTL_DIR to it" >&2
  exit 1
fi
