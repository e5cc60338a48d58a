#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds every binary, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# The cluster tests start the workspace's binaries: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast -- --test-threads="${UNDERSTUDY_TEST_THREADS:-2}"
