#!/usr/bin/env bash
# Everything CI checks: formatting, lints, and all tests. The privileged end-to-end tests need
# root: as root they run directly; otherwise the rest runs as you and only that test binary
# runs under sudo. Either way they must run, never be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
# buildah, mmdebstrap, podman and runc: the image test builds the DaemonSet's image and runs it.
scripts/deps.sh buildah mmdebstrap podman runc

# Prometheus's checker, for the metrics test.
VOLUMED_PROMTOOL=$(promtool_binary)
export VOLUMED_PROMTOOL

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
if [ "$(id -u)" -eq 0 ]; then
  VOLUMED_REQUIRE_PRIVILEGED=1 cargo test --locked --all-targets
  # The benchmark end to end at a tiny size (it sudoes itself when not root).
  scripts/bench_check.sh
  exit 0
fi
cargo test --locked --all-targets
echo "test.sh: running the privileged tests with sudo" >&2
privileged=$(privileged_test_binary)
sudo env VOLUMED_REQUIRE_PRIVILEGED=1 VOLUMED_PROMTOOL="$VOLUMED_PROMTOOL" \
  ${VOLUMED_TEST_KUBECONFIG:+VOLUMED_TEST_KUBECONFIG="$VOLUMED_TEST_KUBECONFIG"} \
  ${VOLUMED_TEST_NODE:+VOLUMED_TEST_NODE="$VOLUMED_TEST_NODE"} "$privileged"
scripts/bench_check.sh
