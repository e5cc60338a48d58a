//! Property tests of the `drbdsetup status --json` parser: well-formed
//! documents give the values they were built from; documents with one value
//! replaced (wrong type, bare `nan`, huge or negative numbers) and random
//! bytes give a value or a typed error. Shared checks: `fuzz_checks/mod.rs`
//! (also the cargo-fuzz target `status_json`).

mod common;
mod fuzz_checks;

use proptest::prelude::*;
use serde_json::{json, Value};
use understudy_drbd::{parse_status_json, ConnectionState, DiskState, ReplicationState, Role};

#[derive(Debug, Clone)]
struct PeerDev {
    volume: u32,
    replication: String,
    peer_disk: String,
    out_of_sync: u64,
    in_sync: u32,
}

#[derive(Debug, Clone)]
struct Doc {
    name: String,
    node_id: u32,
    role: String,
    devices: Vec<(u32, String, u64, bool)>,
    peer: u32,
    conn_name: String,
    connection: String,
    peer_role: String,
    peer_devices: Vec<PeerDev>,
}

fn word(known: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(known).prop_map(str::to_string),
        1 => "[A-Za-z ]{0,10}",
    ]
    .boxed()
}

fn doc() -> impl Strategy<Value = Doc> {
    (
        (
            "[a-z][a-z0-9_.-]{0,11}",
            0u32..32,
            word(&["Primary", "Secondary", "Unknown"]),
            proptest::collection::btree_map(
                0u32..4,
                (
                    word(&["UpToDate", "Inconsistent", "Diskless", "Outdated"]),
                    any::<u64>(),
                    any::<bool>(),
                ),
                0..4,
            ),
        ),
        (
            0u32..32,
            "[a-z][a-z0-9-]{0,8}",
            word(&["Connected", "Connecting", "StandAlone"]),
            word(&["Primary", "Secondary", "Unknown"]),
            proptest::collection::btree_map(
                0u32..4,
                (
                    word(&["Established", "SyncSource", "SyncTarget", "Off"]),
                    word(&["UpToDate", "Inconsistent", "DUnknown"]),
                    any::<u64>(),
                    0u32..=10_000,
                ),
                0..4,
            ),
        ),
    )
        .prop_map(
            |((name, node_id, role, devs), (peer, conn_name, connection, peer_role, pds))| Doc {
                name,
                node_id,
                role,
                devices: devs
                    .into_iter()
                    .map(|(v, (d, s, q))| (v, d, s, q))
                    .collect(),
                peer,
                conn_name,
                connection,
                peer_role,
                peer_devices: pds
                    .into_iter()
                    .map(
                        |(volume, (replication, peer_disk, out_of_sync, in_sync))| PeerDev {
                            volume,
                            replication,
                            peer_disk,
                            out_of_sync,
                            in_sync,
                        },
                    )
                    .collect(),
            },
        )
}

impl Doc {
    fn json(&self) -> Value {
        json!([{
            "name": self.name,
            "node-id": self.node_id,
            "role": self.role,
            "suspended": false,
            "devices": self.devices.iter().map(|(v, d, s, q)| json!({
                "volume": v, "minor": v + 1, "disk-state": d, "size": s, "quorum": q,
            })).collect::<Vec<_>>(),
            "connections": [{
                "peer-node-id": self.peer,
                "name": self.conn_name,
                "connection-state": self.connection,
                "peer-role": self.peer_role,
                "peer_devices": self.peer_devices.iter().map(|p| json!({
                    "volume": p.volume,
                    "replication-state": p.replication,
                    "peer-disk-state": p.peer_disk,
                    "out-of-sync": p.out_of_sync,
                    "percent-in-sync": f64::from(p.in_sync) / 100.0,
                })).collect::<Vec<_>>(),
            }],
        }])
    }
}

/// A JSON value of any shape, for replacing one value of a document.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z -]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("(name|volume|peer-node-id|[a-z]{1,4})", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every value of `v` by path, depth first.
fn paths(v: &Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let mut p = at.clone();
                p.push(i.to_string());
                paths(x, p, out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                let mut p = at.clone();
                p.push(k.clone());
                paths(x, p, out);
            }
        }
        _ => {}
    }
}

fn replace(v: &mut Value, path: &[String], with: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = with;
        return;
    };
    let next = match v {
        Value::Array(a) => a.get_mut(first.parse::<usize>().unwrap()),
        Value::Object(m) => m.get_mut(first),
        _ => None,
    };
    if let Some(n) = next {
        replace(n, rest, with);
    }
}

proptest! {
    /// A well-formed document gives exactly the values it was built from.
    #[test]
    fn well_formed_documents_give_their_values(d in doc()) {
        let text = serde_json::to_string_pretty(&d.json()).unwrap();
        fuzz_checks::status_json_text(&text);
        let rs = parse_status_json(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(rs.len(), 1);
        let r = &rs[0];
        prop_assert_eq!(&r.name, &d.name);
        prop_assert_eq!(r.node_id, Some(d.node_id));
        prop_assert_eq!(&r.role, &Role::from(d.role.as_str()));
        prop_assert_eq!(r.suspended, Some(false));
        prop_assert_eq!(r.devices.len(), d.devices.len());
        for (v, disk, size, quorum) in &d.devices {
            let dev = &r.devices[v];
            prop_assert_eq!(&dev.disk, &DiskState::from(disk.as_str()));
            prop_assert_eq!(dev.size_kib, Some(*size));
            prop_assert_eq!(dev.quorum, Some(*quorum));
            prop_assert_eq!(dev.minor, Some(v + 1));
        }
        let c = &r.connections[&d.peer];
        prop_assert_eq!(&c.conn_name, &d.conn_name);
        prop_assert_eq!(&c.connection, &ConnectionState::from(d.connection.as_str()));
        prop_assert_eq!(&c.peer_role, &Role::from(d.peer_role.as_str()));
        prop_assert_eq!(c.peer_devices.len(), d.peer_devices.len());
        for p in &d.peer_devices {
            let got = &c.peer_devices[&p.volume];
            prop_assert_eq!(&got.replication, &ReplicationState::from(p.replication.as_str()));
            prop_assert_eq!(&got.peer_disk, &DiskState::from(p.peer_disk.as_str()));
            prop_assert_eq!(got.out_of_sync_kib, Some(p.out_of_sync));
            prop_assert_eq!(got.done_percent, Some(f64::from(p.in_sync) / 100.0));
        }
    }

    /// One value of a well-formed document replaced by any JSON value (or a
    /// bare `nan` / `-inf` as drbdsetup prints them): a value or a typed
    /// error, never a panic.
    #[test]
    fn one_replaced_value_never_panics(
        d in doc(),
        at in any::<prop::sample::Index>(),
        with in any_json(),
        bare in proptest::option::of(proptest::sample::select(&["nan", "-nan", "inf", "-Infinity"][..])),
    ) {
        let mut v = d.json();
        let mut all = Vec::new();
        paths(&v, Vec::new(), &mut all);
        let path = all[at.index(all.len())].clone();
        let marker = "\"\u{1}BARE\u{1}\"";
        let with = if bare.is_some() { json!("\u{1}BARE\u{1}") } else { with };
        replace(&mut v, &path, with);
        let mut text = serde_json::to_string(&v).unwrap();
        if let Some(b) = bare {
            text = text.replace(marker, b);
        }
        fuzz_checks::status_json_text(&text);
    }

    /// Random bytes.
    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_checks::status_json_bytes(&data);
    }

    /// Random text over JSON's punctuation and DRBD's keys and non-finite words.
    #[test]
    fn random_json_alphabet(
        text in "([\\[\\]{},:\" \\\\]|name|volume|devices|connections|peer_devices|peer-node-id|nan|-nan|inf|true|null|-?[0-9]{1,22}(\\.[0-9]{1,3})?(e[0-9]{1,3})?|[a-z]{1,3}){0,60}"
    ) {
        fuzz_checks::status_json_text(&text);
    }

    /// The JSON fixtures with a byte range replaced by random bytes.
    #[test]
    fn mutated_fixtures(
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        len in 0usize..16,
        insert in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let docs = fixtures();
        let doc = docs[pick.index(docs.len())].as_bytes();
        let start = at.index(doc.len() + 1);
        let end = (start + len).min(doc.len());
        let mut bytes = doc[..start].to_vec();
        bytes.extend(&insert);
        bytes.extend(&doc[end..]);
        fuzz_checks::status_json_bytes(&bytes);
    }
}

fn fixtures() -> &'static [String] {
    static DOCS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    DOCS.get_or_init(|| {
        let dir = common::fixtures_dir();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        assert!(names.len() >= 4, "JSON fixtures: {names:?}");
        names.iter().map(|n| common::read_fixture(n)).collect()
    })
}

/// The fixtures themselves pass the shared checks.
#[test]
fn fixtures_pass_the_shared_checks() {
    for doc in fixtures() {
        fuzz_checks::status_json_text(doc);
    }
}
