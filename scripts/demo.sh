#!/usr/bin/env bash
# The demo: a local 3 control-plane + 2 worker kubeadm-style cluster (the testbed) has its
# cluster CA and front-proxy CA rotated end to end by kubeca, typed as an operator would; then
# the testbed's trust monitor reports every TLS handshake it saw (the no-outage figure), and
# the testbed is taken down. Run by `make demo` (which installs what is missing first).
#
# Usage: scripts/demo.sh [DIR]   (default: a new directory under /tmp; kept for inspection)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: the testbed needs root (mount namespaces, sshd on port 22 of 127.0.0.x): run 'sudo make demo'" >&2
  exit 1
fi

dir=${1:-$(mktemp -d /tmp/kubeca-demo.XXXXXX)}
state="$dir/rotation"
echo "== building kubeca and the testbed"
cargo build --locked -p kubeca -p kubeca-tests --bins
bin=target/debug
testbed="$bin/kubeca-testbed"
kubeca() {
  # The command as typed, on stderr: stdout may be going to a file.
  printf '\n$ kubeca --state-dir %s %s\n' "$state" "$*" >&2
  "$bin/kubeca" --state-dir "$state" "$@"
}

cleanup() {
  echo
  echo "== taking the testbed down"
  "$testbed" down --dir "$dir/testbed" || true
}
trap cleanup EXIT

echo "== bringing up a 3 control-plane + 2 worker testbed in $dir/testbed"
"$testbed" up --dir "$dir/testbed" --control-planes 3 --workers 2
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
started=$(date +%s)

kubeca init --inventory "$dir/testbed/inventory.toml"
kubeca plan > "$dir/plan.txt"
head -n 40 "$dir/plan.txt"
echo "   ... ($(grep -c '^  ' "$dir/plan.txt") steps; the whole plan: $dir/plan.txt)"
tail -n 3 "$dir/plan.txt"
# The first run stops at the finalize gate (exit 75: paused, resumable).
rc=0; kubeca run || rc=$?
if [ "$rc" -ne 75 ]; then
  echo "demo: expected the run to pause at the finalize gate (exit 75), got $rc" >&2
  exit 1
fi
kubeca status
kubeca approve finalize
kubeca run
kubeca status
kubeca journal export --format csv -o "$dir/audit.csv"
kubeca journal verify
elapsed=$(( $(date +%s) - started ))

echo
echo "== the trust monitor: every TLS handshake of every component during the rotation"
"$testbed" report --dir "$dir/testbed" --since "$since"
echo
echo "== rotation finished in ${elapsed}s; audit export: $dir/audit.csv; journal: $state"
