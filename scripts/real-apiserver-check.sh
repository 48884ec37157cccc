#!/usr/bin/env bash
# Runs the API end-to-end test (tests/privileged/api.rs) against a real kube-apiserver on
# loopback instead of the fake one: Debian's kubernetes source (1.20) built with Debian's
# Go 1.15 (newer Go breaks that tree's vendored reflect2), with Debian's etcd. Nothing on the
# host's apt configuration changes: the sources are read through a private apt state dir.
# The build (a few minutes) is cached in $VOLUMED_K8S_DIR (default ~/.cache/volumed-k8s).
# Not part of CI (it builds Kubernetes); run it by hand: scripts/real-apiserver-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
repo=$PWD
scripts/deps.sh
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
for tool in etcd:etcd-server rsync:rsync make:make openssl:openssl curl:curl; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

work=${VOLUMED_K8S_DIR:-$HOME/.cache/volumed-k8s}
mkdir -p "$work"
apiserver=$work/kube-apiserver
if [ ! -x "$apiserver" ]; then
  # A private apt view: bookworm's kubernetes source, bullseye's Go 1.15.
  apt_dir=$work/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  cat >"$apt_dir/sources.list" <<'EOF'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
EOF
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work" && apt-get "${apt_opts[@]}" source --download-only -qq kubernetes \
    && apt-get "${apt_opts[@]}" download -qq golang-1.15-go golang-1.15-src)
  rm -rf "$work/go" "$work/src"
  mkdir -p "$work/go" "$work/src"
  for deb in "$work"/golang-1.15-*.deb; do dpkg -x "$deb" "$work/go"; done
  tar xzf "$work"/kubernetes_*.orig.tar.gz -C "$work/src" --strip-components=1
  goroot=$work/go/usr/lib/go-1.15
  (cd "$work/src" && mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes \
    && PATH=$goroot/bin:$PATH GOROOT=$goroot GOPATH=$work/src/.go CGO_ENABLED=0 HOME=$work \
      make WHAT=cmd/kube-apiserver)
  cp "$work/src/_output/bin/kube-apiserver" "$apiserver"
fi

run=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port)
api_port=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
etcd --data-dir "$run/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$(free_port)" \
  >"$run/etcd.log" 2>&1 &
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
for _ in $(seq 1 60); do
  curl -sk -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" 2>/dev/null | grep -q ok && break
  sleep 1
done
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
sudo_if_needed env VOLUMED_REQUIRE_PRIVILEGED=1 VOLUMED_TEST_KUBECONFIG="$run/kubeconfig" \
  "$privileged" --exact a_pod_created_through_the_api_gets_real_mounts_and_loses_them_when_deleted
