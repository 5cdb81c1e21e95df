#!/usr/bin/env bash
# kiln's GPU proof, in two halves (the GPU machine has CUDA but no Rust and no network):
#
#   scripts/test-gpu.sh build   here: builds the CUDA test binaries and `kiln` with
#                               --features cuda into gpu/bin, and splits the default model into
#                               gpu/model.part-* (each under the device tool's 64 MiB carry)
#   scripts/test-gpu.sh run     on the GPU machine, from the repo root with gpu/ carried: runs
#                               the op-by-op conformance suite (CUDA vs the CPU backend by NMSE),
#                               the decoder fixture models on CUDA vs the CPU (f32 within 1e-4,
#                               bf16 within 1e-1 of the largest logit), the encoder (BERT family)
#                               and encoder-decoder (T5, BART, mBART, Marian) fixtures (f32 within
#                               1e-4 of transformers, bf16 within 1e-1 of the CPU), SmolLM2's chat
#                               answer, perplexity and bench; prints one PASS/FAIL line per part
#                               and exits non-zero on any failure.
#
# `gpu/` is git-ignored. On the device, `run` needs LD_LIBRARY_PATH with libcuda/libnvrtc/
# libcublasLt (it adds /usr/local/cuda/lib64) and the CUDA headers for NVRTC (it sets
# KILN_CUDA_INCLUDE to /usr/local/cuda/include and its cccl/).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

build() {
  mkdir -p gpu/bin
  local tests=(
    "kiln-tensor device_ops"
    "kiln-tensor kernels_compile"
    "kiln-models device_fixtures"
    "kiln-models device_encoders"
  )
  for t in "${tests[@]}"; do
    set -- $t
    local exe
    exe=$(cargo test --release -p "$1" --features kiln-tensor/cuda --test "$2" --no-run \
      --message-format=json 2>/dev/null \
      | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2" | tail -n 1)
    [[ -n "$exe" ]] || { echo "test-gpu: building test $2 failed" >&2; exit 1; }
    cp "$exe" "gpu/bin/$2"
  done
  cargo build --release -p kiln-cli --features cuda
  cp target/release/kiln gpu/bin/kiln
  strip gpu/bin/* 2>/dev/null || true
  local model=models/SmolLM2-135M-Instruct.Q4_1.gguf
  [[ -f "$model" ]] || ./scripts/fetch-models.sh
  rm -f gpu/model.part-*
  # 20 MiB parts: the tree itself (~18 MiB with the fixtures) travels with every carry.
  split -b 20M -d "$model" gpu/model.part-
  (cd gpu && sha256sum ../"$model" | awk '{print $1}' > model.sha256)
  cp /usr/share/common-licenses/GPL-3 gpu/GPL-3
  du -sh gpu/bin/* gpu/model.part-*
}

run() {
  export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export KILN_CUDA_INCLUDE="/usr/local/cuda/include:/usr/local/cuda/include/cccl"
  export KILN_KERNEL_CACHE="${TMPDIR:-/tmp}/kiln-kernels"
  export KILN_REQUIRE_GPU=1 KILN_REQUIRE_NVRTC=1 KILN_FIXTURES="$root/tests/fixtures"
  local failed=0
  part() {
    local name=$1; shift
    if "$@"; then echo "test-gpu: PASS $name"; else echo "test-gpu: FAIL $name"; failed=1; fi
  }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  part "kernels compile (sm_90a)" gpu/bin/kernels_compile --nocapture
  part "op conformance, CUDA vs CPU" gpu/bin/device_ops --nocapture --test-threads=1
  part "decoder fixtures, CUDA vs CPU" gpu/bin/device_fixtures --nocapture --test-threads=1
  part "encoder and encoder-decoder fixtures on CUDA" gpu/bin/device_encoders --nocapture --test-threads=1
  # The CLI end to end on the fixtures: seq2seq greedy and beam search, BERT classify and embed,
  # on CUDA (f32) against the same binary on the CPU.
  local fx
  for fx in t5 flan_t5 bart mbart marian; do
    for beams in 1 4; do
      local want got
      want=$(gpu/bin/kiln generate -m "tests/fixtures/$fx" -p "hello world" --max-tokens 8 --temperature 0 \
        --num-beams $beams --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_ids"])') || want=cpu-failed
      got=$(gpu/bin/kiln generate -m "tests/fixtures/$fx" -p "hello world" --max-tokens 8 --temperature 0 \
        --num-beams $beams --json --device cuda --dtype f32 | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_ids"])') || got=cuda-failed
      echo "$fx generate (beams $beams): cpu $want, cuda $got"
      part "$fx generate on CUDA, $beams beam(s): the CPU's tokens" test "$want" == "$got"
    done
  done
  for cmd in classify embed; do
    local a b
    a=$(gpu/bin/kiln $cmd -m tests/fixtures/bert --text "hello world" --json) || a='{}'
    b=$(gpu/bin/kiln $cmd -m tests/fixtures/bert --text "hello world" --json --device cuda --dtype f32) || b='{}'
    part "bert $cmd on CUDA equals the CPU within 1e-4" python3 -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
flat = lambda v: [x for r in v for x in (r if isinstance(r, list) else [r])]
va = flat(a.get("embeddings", [])) or [l["score"] for l in a.get("labels", [])]
vb = flat(b.get("embeddings", [])) or [l["score"] for l in b.get("labels", [])]
ok = len(va) > 0 and len(va) == len(vb) and max(abs(x - y) for x, y in zip(va, vb)) <= 1e-4 * max(map(abs, va))
print("cpu", va[:3], "cuda", vb[:3])
sys.exit(0 if ok else 1)' "$a" "$b"
  done
  local model="${TMPDIR:-/tmp}/SmolLM2-135M-Instruct.Q4_1.gguf"
  if compgen -G "gpu/model.part-*" >/dev/null; then
    cat gpu/model.part-* > "$model"
    part "SmolLM2 file intact" bash -c "[[ \$(sha256sum '$model' | awk '{print \$1}') == \$(cat gpu/model.sha256) ]]"
    local out
    out=$(gpu/bin/kiln generate -m "$model" --device cuda --dtype f32 --chat \
      --temperature 0 --max-tokens 24 -p "What is the capital of France?" 2>&1) || true
    echo "$out"
    part "SmolLM2 chat on CUDA (f32) answers as transformers: Paris" grep -q "The capital of France is Paris." <<<"$out"
    # Perplexity of GPL-3 in 512-token windows; transformers (f32, the same dequantized weights)
    # gives 22.0477 (tests/fixtures/smollm2/score_gpl3_ctx512.json). f32 on CUDA must be within
    # 0.1%, bf16 within 2% (bf16's greedy answer may take another branch at the reference's
    # first step, a 0.08-logit near-tie, so its text is not compared).
    for spec in "f32 0.001" "bf16 0.02"; do
      set -- $spec
      local ppl
      ppl=$(gpu/bin/kiln score -m "$model" --device cuda --dtype "$1" --file gpu/GPL-3 \
        --context 512 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])') || ppl=nan
      echo "SmolLM2 GPL-3 ctx512 perplexity on CUDA ($1): $ppl (transformers f32: 22.0477)"
      part "SmolLM2 perplexity on CUDA ($1) within $2 of transformers" \
        python3 -c "import sys; sys.exit(0 if abs(float('$ppl') / 22.04765651069876 - 1) < $2 else 1)"
    done
    part "SmolLM2 bench on CUDA (bf16)" gpu/bin/kiln bench -m "$model" --device cuda
    part "SmolLM2 bench on CUDA (f32)" gpu/bin/kiln bench -m "$model" --device cuda --dtype f32
  else
    echo "test-gpu: FAIL SmolLM2: gpu/model.part-* not carried"; failed=1
  fi
  return $failed
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/test-gpu.sh build|run" >&2; exit 2 ;;
esac
