#!/usr/bin/env bash
# The demo (as root): a local cluster in network namespaces (3 controllers, a file
# server and its backup on the DRBD emulator with nfs-ganesha, a client) shown
# live in the terminal while the file server dies and the backup takes over.
# Debug build: the same one the tests use, so it is built once.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --workspace --bins --locked
exec cargo run --locked -q -p understudy-tests --bin understudy-demo -- "$@"
