#!/usr/bin/env bash
# Run the kill-and-rerun and concurrent-writer tests N times in a row (default 20) and stop at the first failure,
# to catch flakiness that one run would miss.
#
#   scripts/repeat_reliability.sh [N]
#
# PYTHON: the interpreter with stitchcli and its test extra installed (default: python).
# LOCK:   a lock file; each round then runs under `flock LOCK`, so rounds take turns with other test runs on a
#         shared machine (the time printed per round is pytest's own, without the wait for the lock).
set -u

rounds=${1:-20}
python=${PYTHON:-python}
cd "$(dirname "$0")/.." || exit 2

command=("$python" -m pytest -q -p no:cacheprovider tests/test_faults.py tests/test_concurrency.py)
if [ -n "${LOCK:-}" ]; then
    command=(flock "$LOCK" "${command[@]}")
fi

started=$SECONDS
for ((round = 1; round <= rounds; round++)); do
    if ! output=$("${command[@]}" 2>&1); then
        printf '%s\n' "$output"
        echo "FAILED in round $round of $rounds: $((round - 1)) clean round(s) before it, $((SECONDS - started)) s in all"
        exit 1
    fi
    echo "round $round of $rounds: $(printf '%s\n' "$output" | tail -n 1)"
done
echo "all $rounds rounds passed: $((SECONDS - started)) s in all"
