//! Bytes decoded as every agent-protocol message, then as two reports on the leader's whole path (liveness, views, decisions, preflight).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../controller/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::leader_path_bytes(data);
});
