//! Property tests of the emulator's host configuration and of its
//! `drbdsetup show` output as the agent reads it:
//!
//! * one key of a good configuration set to any value: accepted, or an error
//!   naming the key; random bytes never panic;
//! * for any accepted tuning, `show_text` (with and without
//!   `--show-defaults`, any connection state) is read by the agent's
//!   `net_options` as the values the emulator runs with, in DRBD's units.

use std::path::Path;

use proptest::prelude::*;

use crate::config::{Config, Fencing, Protocol};
use crate::format::show_text;
use crate::model::ConnState;

const GOOD: &str = r#"
resource = "r0"
hostname = "fs1"
node_id = 0
minor = 1000
state_dir = "/tmp/x/fs1/drbd"
data_dir = "/tmp/x/fs1/data"
listen = "127.0.0.1:7789"
auto_up = true
[peer]
hostname = "fs2"
node_id = 1
address = "127.0.0.1:7790"
[tuning]
ping_interval_ms = 1000
ping_timeout_ms = 2000
connect_retry_ms = 500
scan_interval_ms = 100
resync_rate_kib = 100
[net]
fencing = "dont-care"
protocol = "C"
[handlers]
fence_peer = "/bin/true"
fence_peer_timeout_ms = 1000
"#;

const KEYS: [&str; 20] = [
    "resource",
    "hostname",
    "node_id",
    "minor",
    "state_dir",
    "data_dir",
    "listen",
    "auto_up",
    "peer.hostname",
    "peer.node_id",
    "peer.address",
    "tuning.ping_interval_ms",
    "tuning.ping_timeout_ms",
    "tuning.connect_retry_ms",
    "tuning.scan_interval_ms",
    "tuning.resync_rate_kib",
    "net.fencing",
    "net.protocol",
    "handlers.fence_peer",
    "handlers.fence_peer_timeout_ms",
];

fn set(doc: &mut toml::Table, path: &str, v: toml::Value) {
    match path.split_once('.') {
        Some((section, key)) => {
            doc.entry(section)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .expect("a section")
                .insert(key.into(), v);
        }
        None => {
            doc.insert(path.into(), v);
        }
    }
}

fn value() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        3 => prop_oneof![Just(0i64), Just(-1i64), Just(i64::MAX), 0i64..100_000, any::<i64>()]
            .prop_map(toml::Value::Integer),
        1 => any::<bool>().prop_map(toml::Value::Boolean),
        2 => prop_oneof![
            Just(String::new()),
            Just(" ".to_string()),
            Just("/tmp/x/fs1/data/meta".to_string()),
            "[0-9.:]{0,20}",
            ".{0,10}",
        ]
        .prop_map(toml::Value::String),
        1 => any::<f64>().prop_map(toml::Value::Float),
    ]
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("host.toml")).map_err(|e| e.to_string())
}

proptest! {
    /// One key set to any value: accepted, or an error naming the key.
    #[test]
    fn one_changed_key_is_accepted_or_named(k in proptest::sample::select(&KEYS[..]), v in value()) {
        let mut doc: toml::Table = GOOD.parse().unwrap();
        set(&mut doc, k, v.clone());
        let text = toml::to_string(&doc).unwrap();
        if let Err(e) = parse(&text) {
            let key = k.rsplit('.').next().unwrap();
            prop_assert!(e.contains(key), "{}={} gives {:?}", k, v, e);
        }
    }

    /// Random bytes and mutated text: a configuration or an error.
    #[test]
    fn random_text_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..256),
        at in any::<prop::sample::Index>(),
    ) {
        let _ = parse(&String::from_utf8_lossy(&data));
        let good = GOOD.as_bytes();
        let i = at.index(good.len());
        let mut bytes = good[..i].to_vec();
        bytes.extend(&data[..data.len().min(8)]);
        bytes.extend(&good[(i + 4).min(good.len())..]);
        let _ = parse(&String::from_utf8_lossy(&bytes));
    }

    /// What the emulator shows as its net options is what the agent reads:
    /// ping-int and connect-int in whole seconds, ping-timeout in tenths
    /// (rounded up, clamped to DRBD's ranges), protocol, fencing, the peer's
    /// name, and `default` marks exactly on DRBD's defaults.
    #[test]
    fn the_agent_reads_the_emulators_show(
        ping in 1u64..200_000,
        timeout_extra in 1u64..100_000,
        connect in 1u64..200_000,
        protocol in proptest::sample::select(&["A", "B", "C"][..]),
        fencing in proptest::sample::select(&["dont-care", "resource-only", "resource-and-stonith"][..]),
        defaults in any::<bool>(),
        standalone in any::<bool>(),
        peer in "[a-z0-9][a-z0-9._-]{0,10}",
    ) {
        let mut doc: toml::Table = GOOD.parse().unwrap();
        let int = |n: u64| toml::Value::Integer(n as i64);
        set(&mut doc, "tuning.ping_interval_ms", int(ping));
        set(&mut doc, "tuning.ping_timeout_ms", int(ping + timeout_extra));
        set(&mut doc, "tuning.connect_retry_ms", int(connect));
        set(&mut doc, "net.protocol", toml::Value::String(protocol.into()));
        set(&mut doc, "net.fencing", toml::Value::String(fencing.into()));
        set(&mut doc, "peer.hostname", toml::Value::String(peer.clone()));
        let cfg = parse(&toml::to_string(&doc).unwrap()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(cfg.net.protocol, match protocol { "A" => Protocol::A, "B" => Protocol::B, _ => Protocol::C });
        let conn = if standalone { ConnState::StandAlone } else { ConnState::Connected };
        let text = show_text(&cfg, conn, defaults);
        let n = understudy_drbd::net_options(&text, "r0")
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let units = |ms: u64, unit: u64, max: u64| ms.div_ceil(unit).clamp(1, max);
        let (pi, pt, ci) = (
            units(ping, 1000, 120),
            units(ping + timeout_extra, 100, 300),
            units(connect, 1000, 120),
        );
        // A value at DRBD's default is printed only with --show-defaults.
        let shown = |v: u64, default: u64| (defaults || v != default).then_some(v);
        prop_assert_eq!(n.ping_int_ms, shown(pi, 10).map(|s| s * 1000));
        prop_assert_eq!(n.ping_timeout_ms, shown(pt, 5).map(|s| s * 100));
        prop_assert_eq!(n.connect_int_ms, shown(ci, 10).map(|s| s * 1000));
        prop_assert_eq!(n.protocol.as_deref(), (defaults || protocol != "C").then_some(protocol));
        let fence_default = fencing == Fencing::DontCare.as_str();
        prop_assert_eq!(n.fencing.as_deref(), (defaults || !fence_default).then_some(fencing));
        prop_assert_eq!(n.other.get("_name"), Some(&peer));
        prop_assert_eq!(n.defaults.contains("ping-int"), defaults && pi == 10);
        let rs = understudy_drbd::parse_show(&text).unwrap();
        prop_assert_eq!(rs[0].node_id, Some(cfg.node_id));
        prop_assert_eq!(rs[0].connections[0].peer_node_id, Some(cfg.peer.node_id));
    }
}
