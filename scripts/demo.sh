#!/usr/bin/env bash
# Builds volumed and runs it once on deploy/examples, inside a private mount namespace so the
# host's mount table is left as it was. Builds as you; the mounting part runs as root (sudo
# when you are not root), since the mounts are real.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=/tmp/volumed-demo
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/volumed"

if [ "${1:-}" != "--inside" ]; then
  scripts/deps.sh
  cargo build --locked
  root=""
  [ "$(id -u)" -eq 0 ] || root="sudo"
  created=""
  [ -e "$demo" ] || { $root mkdir -p "$demo"; created=1; }
  status=0
  $root unshare --mount --propagation private -- "$PWD/scripts/demo.sh" --inside "$bin" || status=$?
  [ -z "$created" ] || $root rmdir "$demo"
  exit "$status"
fi
bin="$2"

# From here on we are in the private namespace: nothing below propagates to the host.
mount -t tmpfs -o size=64m volumed-demo "$demo"
# Shared, as a host's root dir must be (volumed checks): its only peer is itself, here.
mount --make-shared "$demo"
mkdir -p "$demo/disks/vol-small" "$demo/disks/vol-large"
echo "data that lives on local volume vol-small" > "$demo/disks/vol-small/README"
# A copy of the manifests, so the demo can take a pod away at the end.
cp -r deploy/examples "$demo/manifests"
args=(--manifests "$demo/manifests" --root-dir "$demo/root" --node-name demo-node --host-path-root "$demo")

echo "== volumed plan (what run --once will do)"
"$bin" plan "${args[@]}"
echo
echo "== volumed run --once"
"$bin" --log warn run --once "${args[@]}"
echo
echo "== mounts volumed made"
findmnt --list --noheadings -o TARGET,FSTYPE,OPTIONS | grep "$demo/root" | sed "s|$demo/root/||"
echo
echo "== the claim shop/web-data got the smallest fitting volume:"
cat "$demo"/root/pods/*/volumes/kubernetes.io~local-volume/*/README
echo
echo "== volumed status"
"$bin" status "${args[@]}"
echo
echo "== a second run changes nothing"
"$bin" plan "${args[@]}"
echo
echo "== shop/web's manifest removed: teardown plan, then run --once"
rm "$demo/manifests/web.yaml"
"$bin" plan "${args[@]}" | sed "s|$demo/root/||"
"$bin" --log warn run --once "${args[@]}"
echo "mounts left under the root dir: $(grep -c "$demo/root" /proc/self/mountinfo || true)"
echo "local volume data kept: $(cat "$demo/disks/vol-small/README")"
