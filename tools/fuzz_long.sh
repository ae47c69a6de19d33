#!/usr/bin/env bash
# The long fuzzing run of issue 6: tests/test_fuzz.py with >= 100,000 examples in total.
#
#   tools/fuzz_long.sh [TOTAL]        (default TOTAL=100000)
#
# The examples are split over ROUNDS separate pytest processes (each with its own hypothesis
# seed, SEED+round), so that a crash -- a segfault kills its process -- loses one round, is
# reported with the Python traceback of the crashing call (faulthandler), and the other rounds
# still run.  Each round has a wall-clock limit (a hang is a failure too).  It fuzzes the
# checkout as built (python -m pytest from the repository root): build it first.
#
# Environment: CSOFTMAX_FUZZ_ROUNDS (10), CSOFTMAX_FUZZ_SEED (the time), CSOFTMAX_FUZZ_LOG
# (/tmp/csoftmax-fuzz-SEED: one log per round, stats.jsonl with the outcome counts),
# CSOFTMAX_FUZZ_TIMEOUT (seconds per round, 7200), PYTHON (python).
#
# Exit status 0 when every round passed; the summary prints the examples run per test and
# function, and how each call ended (ok, TypeError, ValueError, AxisError, known-bug:...).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOTAL=${1:-${CSOFTMAX_FUZZ_TOTAL:-100000}}
ROUNDS=${CSOFTMAX_FUZZ_ROUNDS:-10}
SEED=${CSOFTMAX_FUZZ_SEED:-$(date +%s)}
LOG=${CSOFTMAX_FUZZ_LOG:-/tmp/csoftmax-fuzz-$SEED}
LIMIT=${CSOFTMAX_FUZZ_TIMEOUT:-7200}
PYTHON=${PYTHON:-python}
TESTS=3  # the three hypothesis tests of tests/test_fuzz.py
PER_TEST=$(( (TOTAL + TESTS * ROUNDS - 1) / (TESTS * ROUNDS) ))

mkdir -p "$LOG"
: > "$LOG/stats.jsonl"
echo "fuzzing $ROOT: $ROUNDS rounds x $TESTS tests x $PER_TEST examples (seed $SEED), logs in $LOG"
failed=0
start=$(date +%s)
for r in $(seq 1 "$ROUNDS"); do
    t0=$(date +%s)
    (cd "$ROOT" && timeout "$LIMIT" env CSOFTMAX_FUZZ_EXAMPLES="$PER_TEST" \
        CSOFTMAX_FUZZ_STATS="$LOG/stats.jsonl" PYTHONFAULTHANDLER=1 \
        "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_fuzz.py -k test_fuzz_ \
        --hypothesis-seed=$((SEED + r))) > "$LOG/round-$r.log" 2>&1
    rc=$?
    summary=$(grep -E "passed|failed|error" "$LOG/round-$r.log" | tail -1)
    echo "round $r/$ROUNDS (seed $((SEED + r))): exit $rc in $(( $(date +%s) - t0 )) s: $summary"
    if [[ $rc -ne 0 ]]; then
        failed=$((failed + 1))
        case $rc in
            124) echo "  HANG: the round ran past ${LIMIT} s" ;;
            13[0-9]) echo "  CRASH (signal $((rc - 128))): see $LOG/round-$r.log" ;;
        esac
        grep -E "^E  |Falsifying|Fatal Python error|File .*csoftmax" "$LOG/round-$r.log" | head -20
    fi
done

"$PYTHON" - "$LOG/stats.jsonl" <<'EOF'
import collections, json, sys
per_test = collections.defaultdict(collections.Counter)
with open(sys.argv[1]) as f:
    for line in f:
        rec = json.loads(line)
        test = rec.pop("test")
        rec.pop("pid", None)
        per_test[test].update(rec)
total = sum(c["examples"] for c in per_test.values())
print(f"\nexamples run (rounds that finished): {total}")
for test, counts in sorted(per_test.items()):
    print(f"  {test}: {counts['examples']}")
    for key, n in sorted(counts.items()):
        if key != "examples":
            print(f"      {key:45s} {n}")
EOF
echo "rounds failed: $failed of $ROUNDS; wall time $(( $(date +%s) - start )) s"
exit $(( failed > 0 ))
