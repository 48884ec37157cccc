#!/usr/bin/env bash
# Installs what building, testing and demonstrating volumed needs on Debian, when missing:
# system packages through apt, rustfmt and clippy through rustup. Safe to run repeatedly.
# A caller that needs more Debian packages names them as arguments.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

packages=(pkg-config gcc libc6-dev libudev-dev util-linux mount fdisk e2fsprogs findutils python3 systemd "$@")
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # apt's own output is shown only when it fails.
  log=$(mktemp)
  $sudo apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; echo "deps: apt-get update failed" >&2; exit 1; }
  # Packages already installed that this would upgrade, named up front.
  upgrades=$(apt-get install -s --no-install-recommends "${missing[@]}" 2>/dev/null | apt_upgrades || true)
  echo "deps: installing ${missing[*]}${upgrades:+ (this also upgrades: ${upgrades% })}" >&2
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "deps: installing ${missing[*]} failed (apt's output above)" >&2
    exit 1
  fi
  rm -f "$log"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo not found. volumed needs Rust 1.85 or newer: install it with rustup (https://rustup.rs), then re-run." >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "deps: adding rustup component $component" >&2
    rustup component add "$component"
  fi
done
