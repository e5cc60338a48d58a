#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer on the STABLE toolchain: builds one
# target of this directory with the SanitizerCoverage flags cargo-fuzz would
# pass (no sanitizer, no nightly needed) and runs it for SECONDS.
#
#   fuzz/run.sh TARGET [SECONDS] [libFuzzer options...]
#   fuzz/run.sh events2 600
#   fuzz/run.sh all 120            # every target in turn (controller ones last)
#
# Targets: events2 status_json show (agent/drbd), agent_config probe_request
# (agent), agent_report controller_config (controller: a long first build).
# The corpus grows in fuzz/corpus/TARGET (seeded from the repository's
# fixtures and fuzz/seeds), crashes land in fuzz/artifacts/TARGET; both are git-ignored.
# Replay a crash: fuzz/run.sh TARGET 0 fuzz/artifacts/TARGET/crash-...
# With a nightly toolchain and cargo-fuzz, `cargo fuzz run TARGET` works as
# well (add `--features agent` or `--features controller` for those targets).
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer options...]}
secs=${2:-60}
shift $(($# < 2 ? $# : 2))

if [ "$target" = all ]; then
    for t in events2 status_json show agent_config probe_request agent_report controller_config; do
        "$0" "$t" "$secs" "$@"
    done
    exit 0
fi

case $target in
events2 | status_json | show) features= ;;
agent_config | probe_request) features=agent ;;
agent_report | controller_config) features=controller ;;
*)
    echo "unknown target $target" >&2
    exit 2
    ;;
esac

triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps these flags off build scripts and the artifacts apart from
# the main workspace's.
cargo build --release --target "$triple" ${features:+--features "$features"} --bin "$target"
target_dir=$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')
bin="$target_dir/$triple/release/$target"

mkdir -p "corpus/$target" "artifacts/$target"
seeds=()
fixtures=../agent/drbd/tests/fixtures
case $target in
events2) seeds=("$fixtures"/events2-*.txt) ;;
status_json) seeds=("$fixtures"/*.json) ;;
show) seeds=("$fixtures"/show-*.txt) ;;
agent_config | controller_config) seeds=(seeds/"$target"/*) ;;
esac
if [ ${#seeds[@]} -gt 0 ] && [ -z "$(ls -A "corpus/$target")" ]; then
    cp "${seeds[@]}" "corpus/$target/"
fi

if [ "$secs" = 0 ]; then
    # Replay the given inputs.
    exec "$bin" "$@"
fi
exec "$bin" "corpus/$target" -max_total_time="$secs" -max_len=8192 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 "$@"
