#!/usr/bin/env bash
# Builds the DaemonSet's OCI image without pulling from any container registry: a minimal
# Debian root made by mmdebstrap from Debian's packages (util-linux's mount, wipefs and blkid,
# e2fsprogs' mkfs.ext4 and fsck, nfs-common's mount.nfs, libudev), the volumed binary at
# /usr/bin/volumed as the entrypoint, committed by buildah from scratch.
# Usage: scripts/image.sh [--tag NAME] [--binary FILE] [--archive FILE] [--mirror M]...
#   --tag      the image's name in the local container storage (default
#              localhost/volumed:dev, the name deploy/daemonset.yaml runs)
#   --binary   put this volumed in the image instead of building one (release)
#   --archive  also write the image as an OCI archive, for a node's runtime:
#              ctr -n k8s.io images import --index-name TAG FILE   (containerd)
#              podman load -i FILE                                 (CRI-O, podman)
#   --mirror   a Debian mirror URI, or a whole "deb URI SUITE COMPONENTS" line; repeat it
#              for updates and security (default: deb.debian.org with both)
# The root is this host's Debian release (bookworm on other hosts), since the binary links
# this host's glibc and libudev.
# buildah and mmdebstrap are installed when missing. The build runs as root (sudo when you
# are not root); the storage is buildah's and podman's own (CONTAINERS_STORAGE_CONF moves it).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=localhost/volumed:dev binary="" archive="" mirrors=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --archive) archive=$2; shift 2 ;;
    --mirror) mirrors+=("$2"); shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

scripts/deps.sh buildah mmdebstrap
if [ -z "$binary" ]; then
  cargo build --locked --release --quiet
  binary=target/release/volumed
fi
[ -x "$binary" ] || { echo "image.sh: $binary is not an executable" >&2; exit 1; }
binary=$(realpath "$binary")
[ -z "$archive" ] || archive=$(realpath -m "$archive")
suite=$(. /etc/os-release 2>/dev/null && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}" || true)
suite=${suite:-bookworm}
root=""
[ "$(id -u)" -eq 0 ] || root="sudo --preserve-env=CONTAINERS_STORAGE_CONF,CONTAINERS_CONF"
version=$("$binary" --version | awk '{print $2}')

work=$(mktemp -d)
container=""
cleanup() {
  [ -z "$container" ] || $root buildah rm "$container" >/dev/null 2>&1 || true
  $root rm -rf "$work"
}
trap cleanup EXIT

# What volumed execs, and what the binary links (libudev1); docs, man pages and locales left
# out. The essential variant has no apt: the image is rebuilt, never upgraded in place.
packages=mount,util-linux,e2fsprogs,nfs-common,libudev1
echo "image.sh: making a Debian $suite root with $packages" >&2
if ! $root mmdebstrap --quiet --variant=essential --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  "$suite" "$work/rootfs.tar" ${mirrors[@]+"${mirrors[@]}"} 2>"$work/mmdebstrap.log"; then
  cat "$work/mmdebstrap.log" >&2
  echo "image.sh: mmdebstrap failed (its output above); --mirror names another Debian mirror" >&2
  exit 1
fi

container=$($root buildah from scratch)
$root buildah add --quiet "$container" "$work/rootfs.tar" / >/dev/null
$root buildah copy --quiet --chmod 0755 "$container" "$binary" /usr/bin/volumed >/dev/null
$root buildah config --entrypoint '["/usr/bin/volumed"]' --cmd run \
  --label org.opencontainers.image.title=volumed \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.description="per-host volume daemon; Debian $suite root" \
  "$container"
$root buildah commit --quiet --rm "$container" "$tag" >/dev/null
container=""
if [ -n "$archive" ]; then
  rm -f "$archive"
  $root buildah push --quiet "$tag" "oci-archive:$archive:$tag"
fi
size=$($root buildah images --noheading --format '{{.Size}}' "$tag" 2>/dev/null || true)
echo "image.sh: built $tag (volumed $version, Debian $suite, ${size:-size unknown})${archive:+, archive $archive}" >&2
