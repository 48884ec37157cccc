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
