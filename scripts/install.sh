#!/usr/bin/env bash
# Builds volumed (release) and installs it for a bare-metal host:
#   <prefix>/bin/volumed
#   <unitdir>/volumed.service        (ExecStart pointing at that binary)
#   <confdir>/config.toml.example    (and config.toml with `manifests`, and manifests/,
#                                     made when missing)
#   <docdir>/README.md
# Usage: scripts/install.sh [--prefix DIR] [--unitdir DIR] [--confdir DIR] [--binary FILE]
# Defaults: --prefix /usr/local, --unitdir /etc/systemd/system, --confdir /etc/volumed.
# With --prefix other than /usr/local, unitdir and confdir default to <prefix>/lib/systemd/system
# and <prefix>/etc/volumed, so a test can install into a temp dir. --binary installs that
# binary instead of building one. Then, on the host:
#   systemctl daemon-reload && systemctl enable --now volumed
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local unitdir="" confdir="" binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --unitdir) unitdir=$2; shift 2 ;;
    --confdir) confdir=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
prefix=$(realpath -m "$prefix")
if [ "$prefix" = /usr/local ]; then
  unitdir=${unitdir:-/etc/systemd/system}
  confdir=${confdir:-/etc/volumed}
else
  unitdir=${unitdir:-$prefix/lib/systemd/system}
  confdir=${confdir:-$prefix/etc/volumed}
fi

if [ -z "$binary" ]; then
  scripts/deps.sh
  cargo build --locked --release --quiet
  binary=target/release/volumed
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

install -D -m 0755 "$binary" "$prefix/bin/volumed"
install -d -m 0755 "$unitdir"
sed -e "s|@BINDIR@|$prefix/bin|g" -e "s|@DOCDIR@|$prefix/share/doc/volumed|g" systemd/volumed.service >"$unitdir/volumed.service"
chmod 0644 "$unitdir/volumed.service"
install -D -m 0644 deploy/config.toml "$confdir/config.toml.example"
# The settings the unit runs with; an existing config is left as it is.
if [ ! -e "$confdir/config.toml" ]; then
  printf '%s\n' "# volumed's settings: every flag has a key (see config.toml.example, volumed check-config)." \
    "manifests = \"$confdir/manifests\"" >"$confdir/config.toml"
  chmod 0644 "$confdir/config.toml"
fi
install -d -m 0755 "$confdir/manifests"
install -D -m 0644 README.md "$prefix/share/doc/volumed/README.md"
echo "installed volumed to $prefix/bin, its unit to $unitdir, an example config to $confdir" >&2
