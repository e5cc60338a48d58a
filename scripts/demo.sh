#!/usr/bin/env bash
# The demo: a local cluster (3 controllers, a file server and its backup on the
# DRBD emulator, their agents) shown live in the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --workspace --bins --locked
exec cargo run --release --locked -q -p understudy-tests --bin understudy-demo -- "$@"
