//! `drbdsetup events2` output: parse, round trip, apply, summarize (see the checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/drbd/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::events2_bytes(data);
});
