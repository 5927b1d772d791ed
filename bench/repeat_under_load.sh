#!/bin/bash
# Runs tests N times in a row with BURNERS busy-loop processes keeping the other CPU(s) busy, as a
# loaded CI machine would, and prints one row per run and the count that passed (BENCHMARKS.md,
# "CI reliability under CPU load"). Each run's output is kept in $OUT (default /tmp/repeat_under_load).
#   [BURNERS=1] [OUT=dir] bench/repeat_under_load.sh N PYTEST_ARGS...
set -uo pipefail
cd "$(dirname "$0")/.."
runs=$1; shift
out=${OUT:-/tmp/repeat_under_load}
mkdir -p "$out"
burners=()
for _ in $(seq 1 "${BURNERS:-1}"); do python3 -c 'while True: pass' & burners+=($!); done
trap 'kill "${burners[@]}"' EXIT
passed=0
echo "| run | result | seconds |"
echo "|---|---|---|"
for i in $(seq 1 "$runs"); do
    start=$(date +%s%N)
    if .venv/bin/pytest -q -p no:cacheprovider --basetemp="$out/tmp$i" "$@" >"$out/run$i.log" 2>&1; then
        result=passed; passed=$((passed + 1))
    else
        result="FAILED (see $out/run$i.log)"
    fi
    tenths=$((($(date +%s%N) - start) / 100000000))
    printf '| %d | %s | %d.%d |\n' "$i" "$result" $((tenths / 10)) $((tenths % 10))
done
echo "passed $passed of $runs"
