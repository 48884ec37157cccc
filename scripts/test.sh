#!/usr/bin/env bash
# Everything CI checks: formatting, lints, and all tests. As root the privileged end-to-end
# tests run (in their own mount namespace) and must not be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
if [ "$(id -u)" -eq 0 ]; then
  export VOLUMED_REQUIRE_PRIVILEGED=1
else
  echo "test.sh: not root, the privileged tests will be reported as ignored" >&2
fi
cargo test --locked --all-targets
