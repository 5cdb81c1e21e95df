#!/usr/bin/env bash
# The server test suite: builds the kiln binary, installs the pinned Python packages of
# tests/server/requirements.txt into the git-ignored .venv-server/ (pip, PyPI only), and runs
# pytest on tests/server/, which starts `kiln serve` on loopback ports of its own choosing.
# Real-model cases use models/ (scripts/fetch-models.sh) and are skipped when a model is absent.
# Usage: scripts/test-server.sh [pytest args...]     Honours CARGO_TARGET_DIR and KILN_BIN.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="$repo_root/.venv-server"
req="$repo_root/tests/server/requirements.txt"

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" || {
    echo "test-server: python3 -m venv failed (Debian: apt install python3-venv)" >&2
    exit 1
  }
fi
# Reinstall only when the pins changed.
stamp="$venv/.requirements.sha"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# KILN_BIN: a kiln binary to test instead of building one. The build uses the test profile
# (optimised, like `cargo test`), so after `cargo test --workspace` only kiln-cli recompiles.
if [[ -z "${KILN_BIN:-}" ]]; then
  cargo build -p kiln-cli --profile test
  target="${CARGO_TARGET_DIR:-$repo_root/target}"
  export KILN_BIN="$target/debug/kiln"
fi

exec "$venv/bin/python" -m pytest -q tests/server "$@"
