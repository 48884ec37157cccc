#!/usr/bin/env bash
# Runs the API end-to-end test (tests/privileged/api.rs) against a real kube-apiserver on
# loopback instead of the fake one: Debian's kubernetes source (1.20) built with Debian's
# Go 1.15 (newer Go breaks that tree's vendored reflect2), with Debian's etcd. Nothing is
# installed from these: apt reads them through a private state dir and they are unpacked into
# the cache, so the host's apt configuration and services are left as they were.
# The build (a few minutes) is cached in $VOLUMED_K8S_DIR (default ~/.cache/volumed-k8s).
# Not part of CI (it builds Kubernetes); run it by hand: scripts/real-apiserver-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
repo=$PWD
scripts/deps.sh rsync make openssl curl xz-utils
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

work=${VOLUMED_K8S_DIR:-$HOME/.cache/volumed-k8s}
mkdir -p "$work"
apiserver=$work/kube-apiserver
etcd=$work/etcd/usr/bin/etcd
if [ ! -x "$apiserver" ] || [ ! -x "$etcd" ]; then
  # A private apt view: bookworm's kubernetes source and etcd, bullseye's Go 1.15.
  apt_dir=$work/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  {
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main"
    echo "deb-src [signed-by=$keyring] http://deb.debian.org/debian bookworm main"
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian bullseye main"
  } >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1")
  apt-get "${apt_opts[@]}" update -qq
  download=$work/download
  rm -rf "$download"
  mkdir -p "$download"
  (
    cd "$download"
    apt-get "${apt_opts[@]}" source --download-only -qq kubernetes/bookworm
    apt-get "${apt_opts[@]}" download -qq golang-1.15-go golang-1.15-src etcd-server/bookworm
  )
  rm -rf "$work/go" "$work/etcd" "$work/src"
  mkdir -p "$work/go" "$work/etcd" "$work/src"
  for deb in "$download"/golang-1.15-*.deb; do dpkg -x "$deb" "$work/go"; done
  dpkg -x "$download"/etcd-server_*.deb "$work/etcd"
  origs=("$download"/kubernetes_*.orig.tar.*)
  if [ ${#origs[@]} -ne 1 ]; then
    echo "expected one kubernetes source tarball, found: ${origs[*]}" >&2
    exit 1
  fi
  tar xaf "${origs[0]}" -C "$work/src" --strip-components=1
  goroot=$work/go/usr/lib/go-1.15
  (
    cd "$work/src"
    mkdir -p .go/src/k8s.io
    ln -sfn ../../.. .go/src/k8s.io/kubernetes
    PATH=$goroot/bin:$PATH GOROOT=$goroot GOPATH=$work/src/.go CGO_ENABLED=0 HOME=$work \
      make WHAT=cmd/kube-apiserver
  )
  cp "$work/src/_output/bin/kube-apiserver" "$apiserver"
fi

run=$(mktemp -d)
# Three different free ports on loopback.
read -r etcd_port peer_port api_port < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    for log in etcd apiserver; do
      if [ -f "$run/$log.log" ]; then
        echo "--- last lines of $log.log" >&2
        tail -n 30 "$run/$log.log" >&2
      fi
    done
  fi
  rm -rf "$run"
}
trap cleanup EXIT
"$etcd" --data-dir "$run/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" >"$run/etcd.log" 2>&1 &
pids+=($!)
openssl genrsa -out "$run/sa.key" 2048 2>/dev/null
openssl rsa -in "$run/sa.key" -pubout -out "$run/sa.pub" 2>/dev/null
token=$(openssl rand -hex 16)
echo "$token,admin,admin,\"system:masters\"" >"$run/tokens.csv"
"$apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 --secure-port="$api_port" --cert-dir="$run/certs" \
  --authorization-mode=AlwaysAllow --token-auth-file="$run/tokens.csv" \
  --disable-admission-plugins=ServiceAccount --service-account-issuer=https://volumed.test \
  --service-account-key-file="$run/sa.pub" --service-account-signing-key-file="$run/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 >"$run/apiserver.log" 2>&1 &
pids+=($!)
ready=
for _ in $(seq 1 90); do
  if curl -sk -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" 2>/dev/null | grep -q '^ok'; then
    ready=1
    break
  fi
  sleep 1
done
if [ -z "$ready" ]; then
  echo "kube-apiserver did not become ready within 90s" >&2
  exit 1
fi
cat >"$run/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$run/certs/apiserver.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
EOF
curl -sk -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/version" | grep gitVersion
cd "$repo"
privileged=$(privileged_test_binary)
test_name=a_pod_created_through_the_api_gets_real_mounts_and_loses_them_when_deleted
sudo_if_needed env VOLUMED_REQUIRE_PRIVILEGED=1 VOLUMED_TEST_KUBECONFIG="$run/kubeconfig" \
  "$privileged" --exact "$test_name" | tee "$run/test.log"
# A renamed test would make --exact run nothing, and pass.
if ! grep -q "^test $test_name \.\.\. ok" "$run/test.log"; then
  echo "the API test did not run and pass" >&2
  exit 1
fi
