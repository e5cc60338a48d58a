//! The controller's TOML configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../controller/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::controller_config_bytes(data);
});
