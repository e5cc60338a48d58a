//! A datagram on the agent's probe port (the first byte picks how long the controller has been silent).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    let silent = data.first().map(|b| i64::from(*b) * 100);
    checks::probe_datagram(data, silent);
});
