# Shared by the scripts; source it, do not run it.

# Builds the privileged end-to-end test binary and prints its path, so that it alone can run
# under sudo while cargo runs as the user.
privileged_test_binary() {
  local path
  path=$(cargo test --locked --test privileged --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "privileged" and m.get("executable"):
        print(m["executable"])')
  if [ -z "$path" ]; then
    echo "cargo built no privileged test binary" >&2
    return 1
  fi
  echo "$path"
}

# Reads `apt-get install -s` output and prints, space-separated, the installed packages it
# would upgrade: its "Inst <name> [<installed version>] (<new version> ...)" lines.
apt_upgrades() {
  awk '/^Inst [^ ]+ \[/ {printf "%s%s", sep, $2; sep=" "}'
}

# Prints the path of a promtool (Prometheus's metrics checker): the one on PATH, or one taken
# out of Debian's prometheus package into the cache, without installing the package (which
# would start a Prometheus server on this machine).
promtool_binary() {
  if command -v promtool >/dev/null; then
    command -v promtool
    return
  fi
  local cache=${VOLUMED_CACHE:-$HOME/.cache/volumed}/promtool
  local tool=$cache/usr/bin/promtool
  if [ ! -x "$tool" ]; then
    mkdir -p "$cache/download"
    (
      cd "$cache/download"
      apt-get download -qq prometheus >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get download -qq prometheus >/dev/null; }
    ) || { echo "promtool: cannot download Debian's prometheus package" >&2; return 1; }
    dpkg -x "$cache"/download/prometheus_*.deb "$cache/unpacked"
    mkdir -p "$cache/usr/bin"
    mv "$cache/unpacked/usr/bin/promtool" "$tool"
    rm -rf "$cache/download" "$cache/unpacked"
  fi
  echo "$tool"
}
