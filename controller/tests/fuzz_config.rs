//! Property tests of the controller's TOML configuration parser
//! (`ControllerConfig::parse`): one key of a good configuration set to any
//! value (any integer TOML holds, negative, float, string, bool, array) is
//! accepted or rejected with an error that names the key; an unknown key is
//! rejected naming it; random or mutated text never panics. The checks are in
//! `fuzz_checks/mod.rs` (cargo-fuzz target `controller_config`).

mod fuzz_checks;

use proptest::prelude::*;
use understudy_controller::ControllerConfig;

const GOOD: &str = r#"
node_id = 2
listen = "127.0.0.1:7102"
data_dir = "/tmp/x"
members = [ { id = 1, addr = "127.0.0.1:7101" }, { id = 2, addr = "127.0.0.1:7102" }, { id = 3, addr = "127.0.0.1:7103" } ]
[timing]
raft_heartbeat_ms = 100
election_timeout_min_ms = 400
election_timeout_max_ms = 800
agent_heartbeat_ms = 200
[detector]
primary_silence_ms = 1000
peer_loss_ms = 500
agent_timeout_ms = 1000
outdate_tolerance_ms = 300
flap_holdoff_ms = 600000
[executor]
fence_deadline_ms = 3000
fence_retry_ms = 120000
step_attempts = 3
forced_stop_deadline_ms = 30000
[probe]
after_silence_ms = 400
interval_ms = 100
confirm_window_ms = 300
[preflight]
interval_ms = 30000
recovery_target_ms = 5000
[signals]
poll_ms = 60000
auto_switchover = false
window = "02:00-04:00"
[[pairs]]
id = "fs1"
resource = "r0"
client_ip = "198.18.0.100"
zone = "a"
primary = { id = "fs1-a", address = "198.18.0.2", zone = "a" }
backup = { id = "fs1-b", address = "198.18.0.3", zone = "a" }
[tls]
insecure = true
"#;

/// Every scalar key of GOOD, as a path (`section.key`, `pairs.0.key`, ...).
const KEYS: [&str; 33] = [
    "node_id",
    "listen",
    "data_dir",
    "timing.raft_heartbeat_ms",
    "timing.election_timeout_min_ms",
    "timing.election_timeout_max_ms",
    "timing.agent_heartbeat_ms",
    "detector.primary_silence_ms",
    "detector.peer_loss_ms",
    "detector.agent_timeout_ms",
    "detector.outdate_tolerance_ms",
    "detector.flap_holdoff_ms",
    "executor.fence_deadline_ms",
    "executor.fence_retry_ms",
    "executor.step_attempts",
    "executor.forced_stop_deadline_ms",
    "probe.after_silence_ms",
    "probe.interval_ms",
    "probe.confirm_window_ms",
    "preflight.interval_ms",
    "preflight.recovery_target_ms",
    "signals.poll_ms",
    "signals.auto_switchover",
    "signals.window",
    "pairs.0.id",
    "pairs.0.resource",
    "pairs.0.client_ip",
    "pairs.0.zone",
    "pairs.0.primary.id",
    "pairs.0.primary.address",
    "pairs.0.backup.id",
    "members.0.id",
    "tls.insecure",
];

fn value() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        3 => prop_oneof![
            Just(0i64),
            Just(1i64),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(-1i64),
            0i64..100_000,
            any::<i64>(),
        ]
        .prop_map(toml::Value::Integer),
        1 => any::<f64>().prop_map(toml::Value::Float),
        1 => any::<bool>().prop_map(toml::Value::Boolean),
        2 => prop_oneof![
            Just(String::new()),
            "[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}",
            "[0-9.:]{0,20}",
            ".{0,12}",
        ]
        .prop_map(toml::Value::String),
        1 => proptest::collection::vec(any::<i64>().prop_map(toml::Value::Integer), 0..3)
            .prop_map(toml::Value::Array),
    ]
}

proptest! {
    /// One key of a good configuration set to any value (or to another
    /// server's id): accepted, or an error naming the key.
    #[test]
    fn one_changed_key_is_accepted_or_named(
        k in proptest::sample::select(&KEYS[..]),
        v in prop_oneof![9 => value(), 1 => Just(toml::Value::String("fs1-b".into()))],
    ) {
        let mut doc: toml::Value = toml::from_str(GOOD).unwrap();
        fuzz_checks::set_path(&mut doc, k, v.clone());
        let text = toml::to_string(&doc).unwrap();
        fuzz_checks::controller_config_text(&text);
        let key = k.rsplit('.').next().unwrap();
        if let Err(e) = ControllerConfig::parse(&text) {
            // A member's id is named as the list it breaks.
            let names_it = e.contains(key) || (k == "members.0.id" && e.contains("members"));
            prop_assert!(names_it, "{}={} gives {:?}", k, v, e);
        }
    }

    /// A key the configuration does not have is rejected, naming it.
    #[test]
    fn unknown_keys_are_named(
        section in proptest::sample::select(&["", "timing", "detector", "executor", "probe", "preflight", "signals", "tls"][..]),
        key in "[a-z][a-z_]{2,12}x",
    ) {
        let mut doc: toml::Value = toml::from_str(GOOD).unwrap();
        let path = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
        fuzz_checks::set_path(&mut doc, &path, toml::Value::Integer(1));
        let text = toml::to_string(&doc).unwrap();
        let err = ControllerConfig::parse(&text).expect_err("an unknown key is an error");
        prop_assert!(err.contains(&key) && err.contains("unknown field"), "{}: {}", path, err);
    }

    /// A good configuration with a byte range replaced by random bytes.
    #[test]
    fn mutated_text_never_panics(
        at in any::<prop::sample::Index>(),
        len in 0usize..8,
        insert in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let good = GOOD.as_bytes();
        let start = at.index(good.len() + 1);
        let end = (start + len).min(good.len());
        let mut bytes = good[..start].to_vec();
        bytes.extend(&insert);
        bytes.extend(&good[end..]);
        fuzz_checks::controller_config_bytes(&bytes);
    }

    /// Random bytes.
    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz_checks::controller_config_bytes(&data);
    }
}

#[test]
fn the_good_configuration_parses() {
    let c = ControllerConfig::parse(GOOD).unwrap();
    assert_eq!(c.node_id, 2);
    assert_eq!(c.pairs.len(), 1);
    let doc: toml::Value = toml::from_str(GOOD).unwrap();
    for k in KEYS {
        let mut d = doc.clone();
        assert!(
            fuzz_checks::get_path(&mut d, k).is_some(),
            "{k} is not a key of GOOD"
        );
    }
}
