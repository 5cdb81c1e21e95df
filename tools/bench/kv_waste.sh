#!/usr/bin/env bash
# KV-cache waste of a running `kiln serve` under a `kiln bench serve` workload: samples
# `kiln_kv_waste_ratio` (allocated KV slots holding no token) and `kiln_kv_blocks_used` from
# /metrics every INTERVAL seconds while the benchmark runs, then prints the samples taken with at
# least MIN_USED blocks in use (the steady state, not the ramp-up or the drain) and their mean.
#
#   tools/bench/kv_waste.sh URL [bench serve options...]
#   e.g. tools/bench/kv_waste.sh http://127.0.0.1:8123 --num-prompts 96 --max-concurrency 48 \
#        --input-len 256 --output-len 192 --range-ratio 0.5
#
# Environment: KILN (kiln binary) [target/release/kiln], INTERVAL [3], MIN_USED [32].
set -u -o pipefail
url=${1:?usage: kv_waste.sh URL [bench serve options...]}
shift
kiln=${KILN:-target/release/kiln}
interval=${INTERVAL:-3}
min_used=${MIN_USED:-32}
samples=$(mktemp)
trap 'rm -f "$samples"' EXIT

"$kiln" bench serve --url "$url" "$@" > "$samples.bench" 2>&1 &
bench=$!
while kill -0 "$bench" 2> /dev/null; do
    sleep "$interval"
    curl -fsS "$url/metrics" | awk '
        /^kiln_kv_waste_ratio / { w = $2 }
        /^kiln_kv_blocks_used / { u = $2 }
        END { if (w != "" && u != "") print w, u }' >> "$samples"
done
wait "$bench"
status=$?
if [ "$status" -ne 0 ]; then
    echo "kv_waste.sh: $kiln bench serve failed (exit $status):" >&2
    tail -5 "$samples.bench" >&2
fi
grep -E "Output token throughput|Total generated" "$samples.bench"
rm -f "$samples.bench"
awk -v min="$min_used" '
    $2 >= min { n++; s += $1; printf "waste %.2f%% with %d blocks in use\n", 100 * $1, $2 }
    END {
        if (n == 0) { print "no sample with enough blocks in use"; exit 1 }
        printf "mean KV waste over %d samples: %.2f%%\n", n, 100 * s / n
    }' "$samples" || status=1
exit $status
