#!/usr/bin/env bash
# scripts/bench.sh end to end at a tiny size, with every option it takes, as scripts/test.sh
# runs it: its table is parsed (each row named, six cells, a verdict, a figure), and its exit
# status is held against the verdicts and its closing line. The figures mean nothing at this
# size; that the benchmark still runs from a fresh checkout is the point.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
scripts/bench.sh --help | grep -q '^Usage: scripts/bench.sh \[--pods N\]' \
  || { echo "bench_check: scripts/bench.sh --help shows no usage" >&2; exit 1; }
status=0
scripts/bench.sh --pods 8 --runs 1 --reactions 4 --unrelated 20 --churn 5 --idle-secs 1 \
  --scaling 4,8 --api-objects 12,40 --api-pods 3 --api-changes 6 \
  --rows converge,daemon,api,scaling >"$out" 2>"$err" || status=$?
python3 - "$out" "$err" "$status" <<'PY'
import re, sys

table, log, status = open(sys.argv[1]).read(), open(sys.argv[2]).read(), int(sys.argv[3])
def fail(why):
    sys.exit(f"bench_check: {why}\n--- stdout\n{table}\n--- stderr\n{log}")

lines = [l for l in table.splitlines() if l.startswith("|")]
if len(lines) < 2 or [c.strip() for c in lines[0].strip("|").split("|")] != \
        ["row", "volumed", "baseline (same run)", "ratio", "target", "met"]:
    fail("no table header")
rows = [[c.strip() for c in l.strip().strip("|").split("|")] for l in lines[2:]]
expected = ["cold converge, 8 pods", "cold converge vs exec-based mounting", "teardown, 8 pods",
            "teardown right after the removal", "no-op pass", "reaction:", "teardown latency:",
            "idle:", "churn:", "mountinfo read + parse", "memory:",
            "API scale: daemon peak RSS, 40 PVs", "API scale: daemon CPU per change", "scaling:"]
if len(rows) != len(expected):
    fail(f"{len(rows)} rows, expected {len(expected)}")
for row, name in zip(rows, expected):
    if len(row) != 6 or not all(row):
        fail(f"row {row} does not have six filled cells")
    if not row[0].startswith(name):
        fail(f"row {row[0]!r} where {name!r} was expected")
    if row[5] not in ("yes", "**no**"):
        fail(f"row {row[0]!r} has verdict {row[5]!r}")
    if not re.search(r"\d", row[1]):
        fail(f"row {row[0]!r} has no figure: {row[1]!r}")
    if row[3] != "—" and not re.match(r"^\d+(\.\d+)?", row[3]):
        fail(f"row {row[0]!r} has ratio {row[3]!r}")
missed = sum(r[5] == "**no**" for r in rows)
if status != (1 if missed else 0):
    fail(f"exit status {status} with {missed} rows missing their target")
closing = re.search(r"bench: (\d+) of (\d+) rows miss their target", log)
if missed and (not closing or closing.groups() != (str(missed), str(len(rows)))):
    fail(f"stderr does not say {missed} of {len(rows)} rows miss their target")
print(f"bench_check: {len(rows)} rows, {missed} missing their target at this size; exit status {status} agrees")
PY
