#!/usr/bin/env bash
# Invariants of the device layer that CI holds (ARCHITECTURE.md, "Layers and backends"):
#   1. nothing outside kiln-tensor and kiln-quant names `cpu::`: layers, models and the engine
#      call tensor ops, which dispatch on the tensor's device; kiln-nn's host KV stores reach
#      their in-place kernels through the one named seam, `kiln_tensor::host_kv`;
#   2. kiln-tensor's Backend trait stays crate-private;
#   3. every Storage match is exhaustive (no `_ =>` arm hides a device in storage.rs/backend.rs);
#   4. no public function of the layers (kiln-nn), the models or the engine takes an f32 slice:
#      they take tensors, which carry their device. The host edges are the exception, by name:
#      sampling (logits come to the host to be sampled and beams selected: kiln-engine
#      sampling.rs, sampling/, beam/, sequence.rs) and pooling of an encoder's output
#      (kiln-models pooling.rs, after the copy to the host).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
if hits=$(grep -rnE '\bcpu::' crates --include=*.rs | grep -vE '^crates/kiln-(tensor|quant)/' | grep -vE '^\S+:\s*//'); then
  echo "check-invariants: code outside kiln-tensor/kiln-quant names cpu:: (use Tensor ops, or kiln_tensor::host_kv for the host KV stores):"
  echo "$hits"
  fail=1
fi
if grep -nE '^\s*pub (trait|use .*Backend)' crates/kiln-tensor/src/backend.rs crates/kiln-tensor/src/lib.rs; then
  echo "check-invariants: the Backend trait must stay pub(crate)"
  fail=1
fi
if grep -nE '^\s*_ =>' crates/kiln-tensor/src/storage.rs crates/kiln-tensor/src/backend.rs; then
  echo "check-invariants: a wildcard arm in a Storage/Device dispatch"
  fail=1
fi
# Public fns whose parameter list (balanced parentheses) names `[f32]`.
if hits=$(find crates/kiln-nn/src crates/kiln-models/src crates/kiln-engine/src -name '*.rs' \
    ! -path crates/kiln-engine/src/sampling.rs ! -path 'crates/kiln-engine/src/sampling/*' \
    ! -path 'crates/kiln-engine/src/beam/*' ! -path crates/kiln-engine/src/sequence.rs \
    ! -path crates/kiln-models/src/pooling.rs -print0 \
  | xargs -0 perl -0777 -ne '
      while (/\bpub\s+fn\s+(\w+)\s*(?:<[^{]*?>)?\s*\((?<args>(?:[^()]++|\((?&args)\))*)\)/g) {
        my ($name, $args) = ($1, $+{args});
        print "$ARGV: fn $name\n" if $args =~ /\[\s*f32\s*\]/;
      }') && [[ -n "$hits" ]]; then
  echo "check-invariants: public layer/model/engine functions take f32 slices (take a Tensor):"
  echo "$hits"
  fail=1
fi
[[ $fail == 0 ]] && echo "check-invariants: ok"
exit $fail
