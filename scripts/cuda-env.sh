# shellcheck shell=bash
# Source this file (`source scripts/cuda-env.sh`) to get NVRTC for kiln's CUDA kernels without a
# CUDA toolkit install. It exports:
#   LD_LIBRARY_PATH     with the directory holding libnvrtc.so.13 (cudarc loads it by name, and
#                       NVRTC itself opens libnvrtc-builtins.so.13.0 by name)
#   KILN_CUDA_INCLUDE   colon-separated include dirs (CUDA headers, and their cccl/ subdir if present)
#                       read by crates/kiln-tensor/src/cuda/nvrtc.rs
#   KILN_CUDA_SOURCE    "system" or "venv": where the two above came from
# Where NVRTC comes from, first match wins:
#   1. a real toolkit at $CUDA_HOME or /usr/local/cuda with libnvrtc.so.13 (the GPU machines; they
#      cannot reach a package registry, so nothing is installed there)
#   2. the git-ignored venv <repo>/.venv-cuda with the PyPI wheels pinned below, created on first
#      use (idempotent and quiet: pip runs only when the wheels are missing)
# Set KILN_CUDA_SOURCE=venv before sourcing to skip the system toolkit.
# Sourcing never exits the calling shell; on failure it prints one line and returns 1.

_kiln_cuda_env() {
  local repo_root venv site lib inc
  repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  venv="$repo_root/.venv-cuda"
  # The GPU machine has NVRTC 13.0; there is no nvidia-cuda-cccl 13.0.88, 13.0.85 is the closest.
  local pins=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85)

  if [[ "${KILN_CUDA_SOURCE:-}" != venv ]]; then
    local home
    for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
      [[ -n "$home" && -f "$home/include/cuda_runtime.h" ]] || continue
      for lib in "$home/lib64" "$home/targets/x86_64-linux/lib" "$home/lib"; do
        if compgen -G "$lib/libnvrtc.so.13*" >/dev/null; then
          inc="$home/include"
          [[ -d "$home/include/cccl" ]] && inc="$inc:$home/include/cccl"
          _kiln_cuda_export system "$lib" "$inc"
          return 0
        fi
      done
    done
  fi

  site="$(compgen -G "$venv/lib/python3*/site-packages" | head -n 1 || true)"
  if [[ -z "$site" || ! -f "$site/nvidia/cu13/lib/libnvrtc.so.13" \
        || ! -f "$site/nvidia/cu13/include/cuda_runtime.h" \
        || ! -d "$site/nvidia/cu13/include/cccl" ]]; then
    if [[ ! -x "$venv/bin/python" ]]; then
      python3 -m venv "$venv" >/dev/null 2>&1 || {
        echo "cuda-env: python3 -m venv $venv failed (Debian: apt install python3-venv)" >&2
        return 1
      }
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" >/dev/null 2>&1 || {
      echo "cuda-env: pip install ${pins[*]} into $venv failed" >&2
      return 1
    }
    site="$(compgen -G "$venv/lib/python3*/site-packages" | head -n 1 || true)"
  fi
  lib="$site/nvidia/cu13/lib"
  inc="$site/nvidia/cu13/include"
  if [[ ! -f "$lib/libnvrtc.so.13" ]]; then
    echo "cuda-env: $lib/libnvrtc.so.13 not found after installing the wheels" >&2
    return 1
  fi
  [[ -d "$inc/cccl" ]] && inc="$inc:$inc/cccl"
  _kiln_cuda_export venv "$lib" "$inc"
}

_kiln_cuda_export() {
  export KILN_CUDA_SOURCE="$1"
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$2:"*) ;;
    *) export LD_LIBRARY_PATH="$2${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
  esac
  export KILN_CUDA_INCLUDE="$3"
}

_kiln_cuda_env
_kiln_cuda_env_rc=$?
unset -f _kiln_cuda_env _kiln_cuda_export
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  echo "cuda-env: source this file (source $0); running it cannot change your shell" >&2
  exit "$_kiln_cuda_env_rc"
fi
return "$_kiln_cuda_env_rc"
