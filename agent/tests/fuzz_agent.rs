//! Property tests of what the agent parses or decodes:
//!
//! * its TOML configuration (`AgentConfig::parse`): one key of a good
//!   configuration set to any value is accepted or rejected naming the key,
//!   an unknown key is named, random and mutated text never panics;
//! * the probe port (`probe::answer`): any datagram, structured probes with
//!   the right or wrong ids, never a panic, never a reply larger than the
//!   probe, a reply only to a probe for this agent;
//! * events2 output all the way to the wire report (`report::drbd_status`).
//!
//! The checks are in `fuzz_checks/mod.rs` (cargo-fuzz targets `agent_config`
//! and `probe_request`). Cases: proptest's 256, or `PROPTEST_CASES`.

mod fuzz_checks;

use proptest::prelude::*;
use prost::Message;
use understudy_agent::AgentConfig;
use understudy_proto::ProbeRequest;

const GOOD: &str = r#"
server_id = "fs1-a"
pair_id = "fs1"
role = "primary"
controllers = ["127.0.0.1:7101", "127.0.0.1:7102"]
state_dir = "/tmp/a"
heartbeat_ms = 200
report_refresh_ms = 5000
probe_listen = "0.0.0.0:7201"
probe_max_per_sec = 50
stall_ms = 1000
[drbd]
resource = "r0"
drbdsetup = "/usr/sbin/drbdsetup"
drbdadm = "/usr/sbin/drbdadm"
restart_backoff_ms = 200
events_args = ["events2", "--timestamps", "--statistics", "all"]
fence_peer_handler = "/usr/local/bin/understudy-fence-peer"
[tls]
insecure = true
"#;

const KEYS: [&str; 17] = [
    "server_id",
    "pair_id",
    "role",
    "controllers",
    "state_dir",
    "heartbeat_ms",
    "report_refresh_ms",
    "probe_listen",
    "probe_max_per_sec",
    "stall_ms",
    "drbd.resource",
    "drbd.drbdsetup",
    "drbd.drbdadm",
    "drbd.restart_backoff_ms",
    "drbd.events_args",
    "drbd.fence_peer_handler",
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
            Just("backup".to_string()),
            "[0-9.:]{0,20}",
            ".{0,12}",
        ]
        .prop_map(toml::Value::String),
        1 => proptest::collection::vec(".{0,6}".prop_map(toml::Value::String), 0..3)
            .prop_map(toml::Value::Array),
    ]
}

proptest! {
    /// One key of a good configuration set to any value: accepted, or an
    /// error naming the key.
    #[test]
    fn one_changed_key_is_accepted_or_named(k in proptest::sample::select(&KEYS[..]), v in value()) {
        let mut doc: toml::Value = toml::from_str(GOOD).unwrap();
        fuzz_checks::set_path(&mut doc, k, v.clone());
        let text = toml::to_string(&doc).unwrap();
        fuzz_checks::agent_config_text(&text);
        let key = k.rsplit('.').next().unwrap();
        if let Err(e) = AgentConfig::parse(&text) {
            prop_assert!(e.contains(key), "{}={} gives {:?}", k, v, e);
        }
    }

    /// A key the configuration does not have is rejected, naming it.
    #[test]
    fn unknown_keys_are_named(
        section in proptest::sample::select(&["", "drbd", "tls"][..]),
        key in "[a-z][a-z_]{2,12}x",
    ) {
        let mut doc: toml::Value = toml::from_str(GOOD).unwrap();
        let path = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
        fuzz_checks::set_path(&mut doc, &path, toml::Value::Integer(1));
        let text = toml::to_string(&doc).unwrap();
        let err = AgentConfig::parse(&text).expect_err("an unknown key is an error");
        prop_assert!(err.contains(&key) && err.contains("unknown field"), "{}: {}", path, err);
    }

    /// A good configuration with a byte range replaced by random bytes.
    #[test]
    fn mutated_config_never_panics(
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
        fuzz_checks::agent_config_bytes(&bytes);
    }

    #[test]
    fn random_config_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz_checks::agent_config_bytes(&data);
    }

    /// Any datagram on the probe port.
    #[test]
    fn random_datagrams(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        silent in proptest::option::of(any::<i64>()),
    ) {
        fuzz_checks::probe_datagram(&data, silent);
    }

    /// Structured probes: this agent's ids or others, any nonce, any padding
    /// (so both sides of the no-amplification size rule are reached).
    #[test]
    fn structured_probes(
        pair in prop_oneof![Just("p".to_string()), ".{0,3}"],
        server in prop_oneof![Just("s".to_string()), ".{0,3}"],
        nonce in prop_oneof![Just(0u64), any::<u64>()],
        padding in 0usize..80,
        silent in proptest::option::of(prop_oneof![0i64..5000, any::<i64>()]),
        trailing in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let req = ProbeRequest { pair_id: pair, server_id: server, nonce, padding: vec![0; padding] };
        let mut bytes = req.encode_to_vec();
        fuzz_checks::probe_datagram(&bytes, silent);
        bytes.extend(trailing);
        fuzz_checks::probe_datagram(&bytes, silent);
    }

    /// events2 output to the wire report: random alphabet lines.
    #[test]
    fn events2_to_report(
        text in "((exists|create|change|destroy) (resource|device|connection|peer-device|path|-)( (name:r0|volume:[0-9]|peer-node-id:[0-9]|conn-name:b|role:(Primary|Secondary)|disk:(UpToDate|Weird)|connection:Connected|replication:SyncTarget|out-of-sync:[0-9]{1,20}|size:[0-9]{1,20}|done:[0-9.]{1,5}|local:x|peer:y)){0,8}\n){0,12}"
    ) {
        fuzz_checks::events2_report(&text);
    }
}

#[test]
fn the_good_configuration_parses() {
    let c = AgentConfig::parse(GOOD).unwrap();
    assert_eq!(c.pair_id, "fs1");
    let doc: toml::Value = toml::from_str(GOOD).unwrap();
    for k in KEYS {
        let mut d = doc.clone();
        assert!(
            fuzz_checks::get_path(&mut d, k).is_some(),
            "{k} is not a key of GOOD"
        );
    }
}
