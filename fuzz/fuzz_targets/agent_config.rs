//! The agent's TOML configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::agent_config_bytes(data);
});
