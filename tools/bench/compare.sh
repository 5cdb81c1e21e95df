#!/usr/bin/env bash
# Side-by-side prefill/decode throughput: llama.cpp (via tools/bench/llamacpp_bench.py) vs kiln
# (`kiln bench`), same model files, same threads/prompt/gen/repeats, runs interleaved.
#
#   tools/bench/compare.sh [options] [MODEL.gguf ...]
#
# Default models: models/SmolLM2-135M-Instruct.Q4_1.gguf and models/SmolLM2-135M-Instruct.Q8_0.gguf
# (make the Q8_0 one with tools/bench/requantize.py, see tools/bench/README.md).
#
# Options (defaults in brackets):
#   --threads N         [2]    n_threads for both engines
#   --prompt-tokens P   [512]
#   --gen-tokens G      [128]
#   --repeats R         [3]    timed repeats inside each engine invocation (median reported)
#   --rounds K          [2]    how many times each (engine, model) pair runs; order per round is
#                              llama.cpp then kiln for each model, so the sequence is
#                              llama.cpp, kiln, llama.cpp, kiln, ... and load drift hits both.
#                              The table shows the median over rounds of each run's median.
#   --out DIR           [target/bench/<timestamp>]  raw outputs of every run
# Environment:
#   KILN       kiln binary                     [target/release/kiln]
#   LLAMA_PY   python with llama-cpp-python    [$LLAMA_PY, else tools/bench/.venv/bin/python,
#                                               else /work/llamavenv/bin/python]
#   BENCH_TIMEOUT  seconds per engine invocation [1800]
#
# Both engines must print one JSON object (last line starting with '{') with at least
# prefill_tokens_per_s and decode_tokens_per_s. Missing kiln binary or failing kiln runs are
# reported and shown as n/a; llama.cpp numbers are still produced. Exit status 0 iff every run of
# both engines produced numbers.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

THREADS=2 PROMPT=512 GEN=128 REPEATS=3 ROUNDS=2 OUT=""
MODELS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --prompt-tokens) PROMPT="$2"; shift 2 ;;
    --gen-tokens) GEN="$2"; shift 2 ;;
    --repeats) REPEATS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) MODELS+=("$1"); shift ;;
  esac
done
if [ ${#MODELS[@]} -eq 0 ]; then
  MODELS=(models/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct.Q8_0.gguf)
fi
for m in "${MODELS[@]}"; do
  if [ ! -e "$m" ]; then
    echo "error: model $m not found." >&2
    case "$m" in *Q8_0*) echo "  make it with: \$LLAMA_PY tools/bench/requantize.py models/SmolLM2-135M-Instruct.Q4_1.gguf $m Q8_0" >&2 ;; esac
    exit 2
  fi
done

if [ -z "${LLAMA_PY:-}" ]; then
  for c in tools/bench/.venv/bin/python /work/llamavenv/bin/python; do
    if [ -x "$c" ]; then LLAMA_PY="$c"; break; fi
  done
fi
if [ -z "${LLAMA_PY:-}" ] || ! "$LLAMA_PY" -c 'import llama_cpp' 2>/dev/null; then
  echo "error: no python with llama-cpp-python (set LLAMA_PY; setup in tools/bench/README.md)" >&2
  exit 2
fi
KILN="${KILN:-target/release/kiln}"
TIMEOUT="${BENCH_TIMEOUT:-1800}"
OUT="${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

KILN_OK=1
if [ ! -x "$KILN" ]; then
  KILN_OK=0
  echo "##################################################################" >&2
  echo "# kiln binary '$KILN' NOT FOUND -- kiln columns will be n/a."       >&2
  echo "# Build it with: cargo build --release -p kiln-cli"                 >&2
  echo "# (or point KILN=/path/to/kiln). Running llama.cpp only."           >&2
  echo "##################################################################" >&2
fi

GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then GIT_REV="$GIT_REV-dirty"; fi
CPU="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
UPTIME_START="$(uptime)"
STATUS=0

# run_one ENGINE MODEL ROUND -> writes $OUT/<engine>.<model>.r<round>.{out,err,time}, echoes "pp tg" or "n/a n/a"
run_one() {
  local engine="$1" model="$2" round="$3" base rc
  base="$OUT/$engine.$(basename "$model" .gguf).r$round"
  local TIMEFORMAT='%R %U %S'  # wall, user, sys of the whole engine process -> $base.time
  if [ "$engine" = llamacpp ]; then
    { time timeout "$TIMEOUT" "$LLAMA_PY" tools/bench/llamacpp_bench.py --model "$model" --threads "$THREADS" \
      --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --repeats "$REPEATS" --json >"$base.out" 2>"$base.err"; } 2>"$base.time"
  else
    if [ "$KILN_OK" = 0 ]; then echo "n/a n/a"; return 1; fi
    { time timeout "$TIMEOUT" "$KILN" bench --model "$model" --threads "$THREADS" \
      --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --repeats "$REPEATS" --json >"$base.out" 2>"$base.err"; } 2>"$base.time"
  fi
  rc=$?
  "$LLAMA_PY" - "$base.out" "$rc" <<'PY'
import json, sys
path, rc = sys.argv[1], int(sys.argv[2])
obj = None
for line in open(path, errors="replace"):
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            pass
try:
    print(f"{float(obj['prefill_tokens_per_s']):.2f} {float(obj['decode_tokens_per_s']):.2f}")
except Exception:
    print("n/a n/a")
    sys.exit(1)
sys.exit(0 if rc == 0 else 1)
PY
}

RESULTS="$OUT/results.tsv"
printf 'round\tengine\tmodel\tprefill_tps\tdecode_tps\tloadavg\tcpu_share\n' >"$RESULTS"
for ((r = 1; r <= ROUNDS; r++)); do
  for m in "${MODELS[@]}"; do
    for engine in llamacpp kiln; do
      if [ "$engine" = kiln ] && [ "$KILN_OK" = 0 ]; then continue; fi
      load="$(cut -d' ' -f1-3 /proc/loadavg)"
      echo "[round $r/$ROUNDS] $engine $(basename "$m")  (load: $load)" >&2
      res="$(run_one "$engine" "$m" "$r")" || {
        STATUS=1
        base="$OUT/$engine.$(basename "$m" .gguf).r$r"
        echo "  !! $engine failed or printed no JSON with prefill_tokens_per_s/decode_tokens_per_s; last lines of $base.{out,err}:" >&2
        tail -n 5 "$base.out" "$base.err" 2>/dev/null | sed 's/^/     /' >&2
      }
      echo "  -> prefill/decode t/s: $res" >&2
      # (user + sys) / (wall * threads) of the whole process (load + warm-up + runs): well below 1
      # means other jobs held the cores during this run, so its numbers are not representative.
      share="$(awk -v t="$THREADS" 'NF == 3 && $1 > 0 { printf "%.2f", ($2 + $3) / ($1 * t) }' \
        "$OUT/$engine.$(basename "$m" .gguf).r$r.time" 2>/dev/null)"
      echo "  -> cpu share (user+sys)/(wall*threads): ${share:-n/a}" >&2
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$engine" "$m" "${res%% *}" "${res##* }" "$load" "${share:-n/a}" >>"$RESULTS"
    done
  done
done
UPTIME_END="$(uptime)"
[ "$KILN_OK" = 0 ] && STATUS=1

SYSINFO="$(grep -h -m1 '^system_info:' "$OUT"/llamacpp.*.out 2>/dev/null | head -1 | sed 's/^system_info: //')"
LLVER="$("$LLAMA_PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"

# median over rounds (ignoring n/a) and the ratio table
{
  echo "## kiln vs llama.cpp — threads $THREADS, pp$PROMPT, tg$GEN @ d$PROMPT, $REPEATS repeats x $ROUNDS rounds (interleaved)"
  echo
  echo "- date: $(date -Iseconds)"
  echo "- kiln: git $GIT_REV ($KILN$([ "$KILN_OK" = 0 ] && echo ': NOT FOUND'))"
  echo "- llama.cpp: llama-cpp-python $LLVER; $SYSINFO"
  echo "- CPU: $CPU ($(nproc) CPUs visible)"
  echo "- uptime at start: $UPTIME_START"
  echo "- uptime at end:   $UPTIME_END"
  echo "- raw outputs: $OUT"
  echo
  "$LLAMA_PY" - "$RESULTS" "${MODELS[@]}" <<'PY'
import csv, statistics, sys
results, models = sys.argv[1], sys.argv[2:]
rows = list(csv.DictReader(open(results), delimiter="\t"))
def med(kind, engine, m):
    col = "prefill_tps" if kind == "pp" else "decode_tps"
    vals = [float(r[col]) for r in rows if r["engine"] == engine and r["model"] == m and r[col] != "n/a"]
    return (statistics.median(vals), vals) if vals else (None, vals)
def f(x): return "n/a" if x is None else f"{x:.2f}"
def ratio(k, l): return "n/a" if k is None or l is None else f"{k / l:.2f}x"
print("| model | llama.cpp pp t/s | kiln pp t/s | kiln/llama.cpp pp | llama.cpp tg t/s | kiln tg t/s | kiln/llama.cpp tg |")
print("| ----- | ---------------: | ----------: | ----------------: | ---------------: | ----------: | ----------------: |")
for m in models:
    lp, _ = med("pp", "llamacpp", m); kp, _ = med("pp", "kiln", m)
    lt, _ = med("tg", "llamacpp", m); kt, _ = med("tg", "kiln", m)
    print(f"| {m.rsplit('/', 1)[-1]} | {f(lp)} | {f(kp)} | {ratio(kp, lp)} | {f(lt)} | {f(kt)} | {ratio(kt, lt)} |")
print()
print("Every run in order (each value is that run's median over its repeats; load = 1/5/15-min loadavg at its")
print("start; cpu share = (user+sys)/(wall*threads) of the whole process, < ~0.9 means it did not get its cores):")
print()
print("| round | engine | model | pp t/s | tg t/s | load | cpu share |")
print("| ----: | ------ | ----- | -----: | -----: | ---- | --------: |")
for r in rows:
    print(f"| {r['round']} | {r['engine']} | {r['model'].rsplit('/', 1)[-1]} | {r['prefill_tps']} | {r['decode_tps']} | {r['loadavg']} | {r['cpu_share']} |")
contended = [r for r in rows if r["cpu_share"] != "n/a" and float(r["cpu_share"]) < 0.9]
if contended:
    print()
    print(f"WARNING: {len(contended)} of {len(rows)} runs got < 90% of their cores (cpu share column): "
          "the machine was busy, treat those numbers as invalid.")
PY
} | tee "$OUT/summary.md"
exit $STATUS
