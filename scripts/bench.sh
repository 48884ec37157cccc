#!/usr/bin/env bash
# Measures volumed against baselines run in the same session on the same workload (N pods,
# each with a Memory emptyDir and a pre-bound local PV, one manifest file per pod): the
# syscall floor, exec-based mounting, and a kubelet-style loop polling mountinfo; and in API
# mode against the test API server, a small cluster against a big one. Prints one markdown
# table on stdout (progress on stderr); exits 1 when a row misses its target. Runs as root
# (sudo when you are not) in a private mount namespace: the host is left as it was.
# Usage: scripts/bench.sh [--pods N] [--runs R] [--reactions N] [--unrelated N] [--churn N]
#   [--idle-secs S] [--scaling 100,1000,5000] [--api-objects 100,10000] [--api-pods N]
#   [--api-changes N] [--rows converge,daemon,api,scaling]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
scripts/deps.sh strace
target="${CARGO_TARGET_DIR:-$PWD/target}"
# The engine first: building it builds a test-featured volumed binary at the same path,
# which the plain release build below then replaces.
harness=$(cargo bench --locked --bench harness --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "harness" and m.get("executable"):
        print(m["executable"])')
[ -n "$harness" ] || { echo "bench: cargo built no harness (run: cargo bench --bench harness --no-run)" >&2; exit 1; }
cargo build --locked --release --quiet --bin volumed
work=$(mktemp -d /tmp/volumed-bench.XXXXXX)
tools=$(mktemp -d /tmp/volumed-bench-bin.XXXXXX)
cp "$target/release/volumed" "$harness" "$tools/"
root=""
[ "$(id -u)" -eq 0 ] || root="sudo"
status=0
$root unshare --mount --propagation private -- \
  "$tools/$(basename "$harness")" run --volumed "$tools/volumed" --work "$work" "$@" || status=$?
rmdir "$work" 2>/dev/null || true
rm -rf "$tools"
exit "$status"
