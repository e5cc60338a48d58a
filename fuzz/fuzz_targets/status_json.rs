//! `drbdsetup status --json` output.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/drbd/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::status_json_bytes(data);
});
