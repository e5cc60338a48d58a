//! Property tests ("fuzzing in CI") of the `drbdsetup events2` parser and the
//! state it feeds: structured lines (well formed, and with one field mutated),
//! mutated fixture lines, and random bytes. The checks every input goes
//! through are in `fuzz_checks/mod.rs` (shared with the cargo-fuzz target
//! `events2`). The number of cases is proptest's (256), or `PROPTEST_CASES`
//! for a longer run (README, "Fuzzing").

mod common;
mod fuzz_checks;

use proptest::prelude::*;
use understudy_drbd::{
    parse_line, ConnectionState, DiskState, DrbdState, ParseError, ReplicationState, Role,
};

const ACTIONS: [&str; 6] = ["exists", "create", "change", "destroy", "call", "response"];
const ROLES: [&str; 3] = ["Primary", "Secondary", "Unknown"];
const DISKS: [&str; 10] = [
    "Diskless",
    "Attaching",
    "Detaching",
    "Failed",
    "Negotiating",
    "Inconsistent",
    "Outdated",
    "DUnknown",
    "Consistent",
    "UpToDate",
];
const CONNS: [&str; 10] = [
    "StandAlone",
    "Disconnecting",
    "Unconnected",
    "Timeout",
    "BrokenPipe",
    "NetworkFailure",
    "ProtocolError",
    "TearDown",
    "Connecting",
    "Connected",
];
const REPLS: [&str; 15] = [
    "Off",
    "Established",
    "StartingSyncS",
    "StartingSyncT",
    "WFBitMapS",
    "WFBitMapT",
    "WFSyncUUID",
    "SyncSource",
    "SyncTarget",
    "VerifyS",
    "VerifyT",
    "PausedSyncS",
    "PausedSyncT",
    "Ahead",
    "Behind",
];

/// A resource or connection name as drbdsetup prints it (no blanks, no `:`
/// needed, but `-`, `.` and `_` happen).
fn name() -> BoxedStrategy<String> {
    "[a-z][a-z0-9_.-]{0,11}".boxed()
}

/// A state word: a known one, or an unknown word (kept as `Other`).
fn word(known: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(known).prop_map(str::to_string),
        1 => "[A-Z][A-Za-z]{0,9}",
    ]
    .boxed()
}

fn yes_no() -> BoxedStrategy<String> {
    proptest::sample::select(&["yes", "no"][..])
        .prop_map(str::to_string)
        .boxed()
}

/// A `--timestamps` column: real ones start with a digit; drbd-utils' tests
/// mask them as a word (`TIME`), which is recognised by the action after it.
fn timestamp() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        1 => (2000u32..2100, 1u32..13, 1u32..29, 0u32..24, 0u32..60, 0u32..60, 0u32..1_000_000, -12i32..13)
            .prop_map(|(y, mo, d, h, mi, s, us, off)| Some(format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}{}{:02}:00",
                if off < 0 { '-' } else { '+' },
                off.abs()
            ))),
        1 => Just(Some("TIME".to_string())),
    ]
}

/// A value that may be printed as an `events2 --diff` change (`old->new`).
fn maybe_diff(v: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![
        3 => v.clone(),
        1 => (v.clone(), v).prop_map(|(a, b)| format!("{a}->{b}")),
    ]
    .boxed()
}

fn u64_value() -> BoxedStrategy<String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..10_000_000).prop_map(|n| n.to_string()),
        // An underflowed counter as DRBD prints it.
        Just("18446744073709551608".to_string()),
    ]
    .boxed()
}

fn f64_value() -> BoxedStrategy<String> {
    prop_oneof![
        (0u32..=10_000).prop_map(|n| format!("{}.{:02}", n / 100, n % 100)),
        (0u32..100_000).prop_map(|n| n.to_string()),
        proptest::sample::select(&["nan", "-nan", "inf", "1e3"][..]).prop_map(str::to_string),
    ]
    .boxed()
}

/// The fields of one object kind, well formed: identity keys first, then
/// any subset of the state keys in any order.
fn fields_for(object: &'static str) -> BoxedStrategy<Vec<(String, String)>> {
    let id_conn = (name(), 0u32..32, name())
        .prop_map(|(n, p, c)| {
            vec![
                ("name".to_string(), n),
                ("peer-node-id".to_string(), p.to_string()),
                ("conn-name".to_string(), c),
            ]
        })
        .boxed();
    let s =
        |k: &'static str, v: BoxedStrategy<String>| v.prop_map(move |v| (k.to_string(), v)).boxed();
    let (ids, rest): (
        BoxedStrategy<Vec<(String, String)>>,
        Vec<BoxedStrategy<(String, String)>>,
    ) = match object {
        "resource" => (
            name().prop_map(|n| vec![("name".into(), n)]).boxed(),
            vec![
                s("role", maybe_diff(word(&ROLES)).boxed()),
                s(
                    "suspended",
                    proptest::sample::select(
                        &["no", "yes", "user", "fencing", "quorum,user", "no-data"][..],
                    )
                    .prop_map(str::to_string)
                    .boxed(),
                ),
                s("may_promote", yes_no().boxed()),
                s("promotion_score", maybe_diff(u64_value()).boxed()),
                s("write-ordering", "[a-z]{1,8}".boxed()),
                s("force-io-failures", yes_no().boxed()),
            ],
        ),
        "device" => (
            (name(), 0u32..8)
                .prop_map(|(n, v)| vec![("name".into(), n), ("volume".into(), v.to_string())])
                .boxed(),
            vec![
                s("minor", any::<u32>().prop_map(|n| n.to_string()).boxed()),
                s("disk", maybe_diff(word(&DISKS)).boxed()),
                s("backing_dev", "(none|/dev/[a-z]{2,6})".boxed()),
                s("client", yes_no().boxed()),
                s("quorum", yes_no().boxed()),
                s("size", u64_value().boxed()),
                s("read", u64_value().boxed()),
                s("written", u64_value().boxed()),
                s("al-writes", u64_value().boxed()),
                s("upper-pending", u64_value().boxed()),
                s("blocked", "(no|upper|lower|upper,lower)".boxed()),
            ],
        ),
        "connection" => (
            id_conn.clone().boxed(),
            vec![
                s("connection", maybe_diff(word(&CONNS)).boxed()),
                s("role", maybe_diff(word(&ROLES)).boxed()),
                s("congested", yes_no().boxed()),
                s("ap-in-flight", u64_value().boxed()),
                s("rs-in-flight", u64_value().boxed()),
            ],
        ),
        "peer-device" => (
            (id_conn.clone(), 0u32..8)
                .prop_map(|(mut f, v)| {
                    f.push(("volume".into(), v.to_string()));
                    f
                })
                .boxed(),
            vec![
                s("replication", maybe_diff(word(&REPLS)).boxed()),
                s("peer-disk", maybe_diff(word(&DISKS)).boxed()),
                s("peer-client", yes_no().boxed()),
                s("resync-suspended", "(no|user|peer|dependency)".boxed()),
                s("done", f64_value().boxed()),
                s("eta", f64_value().boxed()),
                s("dbdt1", f64_value().boxed()),
                s("received", u64_value().boxed()),
                s("out-of-sync", u64_value().boxed()),
                s("pending", u64_value().boxed()),
            ],
        ),
        "path" => (
            (id_conn.clone(), 1u8..255, 1024u16.., 1u8..255, 1024u16..)
                .prop_map(|(mut f, a, pa, b, pb)| {
                    f.push(("local".into(), format!("ipv4:10.0.0.{a}:{pa}")));
                    f.push(("peer".into(), format!("ipv4:10.0.1.{b}:{pb}")));
                    f
                })
                .boxed(),
            vec![s("established", yes_no().boxed())],
        ),
        "helper" => (
            id_conn.boxed(),
            vec![
                s(
                    "helper",
                    "(fence-peer|unfence-peer|before-resync-target)".boxed(),
                ),
                s("volume", (0u32..8).prop_map(|n| n.to_string()).boxed()),
                s("status", any::<i32>().prop_map(|n| n.to_string()).boxed()),
            ],
        ),
        _ => (Just(Vec::new()).boxed(), vec![]),
    };
    let n = rest.len();
    (ids, proptest::sample::subsequence(rest, 0..=n))
        .prop_flat_map(|(ids, chosen)| (Just(ids), chosen, any::<u64>()))
        .prop_map(|(mut ids, mut chosen, seed)| {
            // Shuffle the state keys deterministically from the seed.
            let len = chosen.len();
            for i in (1..len).rev() {
                let j = (seed.rotate_left(i as u32) % (i as u64 + 1)) as usize;
                chosen.swap(i, j);
            }
            ids.extend(chosen);
            ids
        })
        .boxed()
}

/// A well-formed events2 line, as its parts.
#[derive(Debug, Clone)]
struct Line {
    timestamp: Option<String>,
    action: String,
    object: String,
    fields: Vec<(String, String)>,
}

impl Line {
    /// Rendered with the given separators between tokens and line ending.
    fn render(&self, seps: &[&str], ending: &str) -> String {
        let mut toks: Vec<String> = Vec::new();
        toks.extend(self.timestamp.clone());
        toks.push(self.action.clone());
        toks.push(self.object.clone());
        toks.extend(self.fields.iter().map(|(k, v)| format!("{k}:{v}")));
        let mut out = String::new();
        for (i, t) in toks.iter().enumerate() {
            if i > 0 {
                out.push_str(seps[i % seps.len()]);
            }
            out.push_str(t);
        }
        out.push_str(ending);
        out
    }
}

fn well_formed() -> impl Strategy<Value = Line> {
    let object = proptest::sample::select(
        &[
            "resource",
            "device",
            "connection",
            "peer-device",
            "path",
            "helper",
        ][..],
    );
    prop_oneof![
        9 => (timestamp(), proptest::sample::select(&ACTIONS[..]), object)
            .prop_flat_map(|(ts, a, o)| (Just(ts), Just(a), Just(o), fields_for(o)))
            .prop_map(|(timestamp, a, o, fields)| Line {
                timestamp,
                action: a.into(),
                object: o.into(),
                fields,
            }),
        1 => timestamp().prop_map(|timestamp| Line {
            timestamp,
            action: "exists".into(),
            object: "-".into(),
            fields: vec![],
        }),
    ]
}

fn separators() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(
        prop_oneof![4 => Just(" "), 1 => Just("  "), 1 => Just("\t")],
        1..4,
    )
}

fn ending() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&["", "\n", "\r\n"][..])
}

/// How to break one field of a well-formed line, and the error it must give.
#[derive(Debug, Clone)]
enum Mutation {
    /// A numeric key gets a value that is not a number of its kind.
    BadNumber(String),
    /// A token without `:`.
    NoColon(String),
    /// A token with an empty key.
    EmptyKey(String),
    /// The identity key `name` is left out.
    DropName,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop_oneof![
            Just("abc".to_string()),
            Just("".to_string()),
            Just("-1".to_string()),
            Just("1.5.5".to_string()),
            Just("0x10".to_string()),
            Just("99999999999999999999999".to_string()),
            Just("5->".to_string()),
            "[a-z]{1,5}",
        ]
        .prop_map(Mutation::BadNumber),
        "[a-z-]{1,10}".prop_map(Mutation::NoColon),
        "[a-z0-9]{0,6}".prop_map(|v| Mutation::EmptyKey(format!(":{v}"))),
        Just(Mutation::DropName),
    ]
}

/// Keys that must hold a number, and a value of theirs that is not one.
fn is_numeric(key: &str) -> bool {
    matches!(
        key,
        "volume"
            | "minor"
            | "peer-node-id"
            | "promotion_score"
            | "size"
            | "read"
            | "written"
            | "al-writes"
            | "bm-writes"
            | "upper-pending"
            | "lower-pending"
            | "ap-in-flight"
            | "rs-in-flight"
            | "received"
            | "sent"
            | "out-of-sync"
            | "pending"
            | "unacked"
            | "done"
            | "eta"
            | "dbdt1"
    )
}

/// A dump of one resource as drbdsetup prints it, with the values to expect.
#[derive(Debug, Clone)]
struct Dump {
    name: String,
    role: String,
    /// (volume, disk, size KiB)
    devices: Vec<(u32, String, u64)>,
    peer: u32,
    conn_name: String,
    connection: String,
    peer_role: String,
    /// (volume, replication, peer disk, out-of-sync KiB, done in hundredths)
    peer_devices: Vec<(u32, String, String, u64, Option<u32>)>,
}

fn dump() -> impl Strategy<Value = Dump> {
    (
        name(),
        word(&ROLES),
        proptest::collection::btree_map(0u32..4, (word(&DISKS), any::<u64>()), 1..4),
        0u32..32,
        name(),
        word(&CONNS),
        word(&ROLES),
        proptest::collection::btree_map(
            0u32..4,
            (
                word(&REPLS),
                word(&DISKS),
                any::<u64>(),
                proptest::option::of(0u32..=10_000),
            ),
            0..4,
        ),
    )
        .prop_map(
            |(name, role, devs, peer, conn_name, connection, peer_role, pds)| Dump {
                name,
                role,
                devices: devs.into_iter().map(|(v, (d, s))| (v, d, s)).collect(),
                peer,
                conn_name,
                connection,
                peer_role,
                peer_devices: pds
                    .into_iter()
                    .map(|(v, (r, d, o, done))| (v, r, d, o, done))
                    .collect(),
            },
        )
}

impl Dump {
    fn lines(&self) -> Vec<String> {
        let n = &self.name;
        let mut out = vec![format!(
            "exists resource name:{n} role:{} suspended:no may_promote:no promotion_score:0",
            self.role
        )];
        for (v, disk, size) in &self.devices {
            out.push(format!(
                "exists device name:{n} volume:{v} minor:{} disk:{disk} client:no quorum:yes size:{size}",
                v + 1
            ));
        }
        let c = format!(
            "name:{n} peer-node-id:{} conn-name:{}",
            self.peer, self.conn_name
        );
        out.push(format!(
            "exists connection {c} connection:{} role:{}",
            self.connection, self.peer_role
        ));
        for (v, repl, pdisk, oos, done) in &self.peer_devices {
            let mut l = format!(
                "exists peer-device {c} volume:{v} replication:{repl} peer-disk:{pdisk} peer-client:no resync-suspended:no out-of-sync:{oos}"
            );
            if let Some(d) = done {
                l.push_str(&format!(" done:{}.{:02}", d / 100, d % 100));
            }
            out.push(l);
        }
        out.push("exists -".into());
        out
    }
}

proptest! {
    /// Every well-formed line parses, to exactly the parts it was built from,
    /// whatever the separators and line ending; then it goes through the
    /// shared checks (round trip, apply).
    #[test]
    fn well_formed_lines_parse_to_their_parts(
        line in well_formed(),
        seps in separators(),
        end in ending(),
    ) {
        let text = line.render(&seps, end);
        let ev = parse_line(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(&ev.timestamp, &line.timestamp);
        prop_assert_eq!(ev.action.as_str(), line.action.as_str());
        prop_assert_eq!(ev.object.as_str(), line.object.as_str());
        prop_assert_eq!(&ev.fields, &line.fields);
        for (k, v) in &line.fields {
            prop_assert_eq!(ev.get_raw(k), Some(v.as_str()));
        }
        let mut state = DrbdState::default();
        prop_assert!(fuzz_checks::events2_line(&mut state, &text).is_ok());
    }

    /// A well-formed line with one field broken gives the error that names
    /// what is wrong (the key, the token, or the missing identity key).
    #[test]
    fn one_broken_field_gives_the_typed_error(
        line in well_formed().prop_filter("has fields", |l| !l.fields.is_empty()),
        m in mutation(),
        at in any::<prop::sample::Index>(),
    ) {
        let mut l = line.clone();
        let i = at.index(l.fields.len());
        let text;
        match &m {
            Mutation::BadNumber(bad) => {
                let Some(j) = (0..l.fields.len())
                    .map(|k| (i + k) % l.fields.len())
                    .find(|&j| is_numeric(&l.fields[j].0))
                else {
                    return Ok(());
                };
                let key = l.fields[j].0.clone();
                // `done`/`eta`/`dbdt1` take any float: only words are bad there.
                let bad = if matches!(key.as_str(), "done" | "eta" | "dbdt1")
                    && bad.parse::<f64>().is_ok()
                {
                    "x".to_string()
                } else {
                    bad.clone()
                };
                l.fields[j].1 = bad.clone();
                text = l.render(&[" "], "");
                prop_assert_eq!(
                    parse_line(&text),
                    Err(ParseError::InvalidNumber { line: text.clone(), key, value: bad })
                );
            }
            Mutation::NoColon(tok) => {
                let mut toks: Vec<String> =
                    l.fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                toks.insert(i, tok.clone());
                text = format!(
                    "{}{} {} {}",
                    l.timestamp.as_ref().map(|t| format!("{t} ")).unwrap_or_default(),
                    l.action,
                    l.object,
                    toks.join(" ")
                );
                // An earlier bad field would be named first; the generated
                // ones are all well formed.
                prop_assert_eq!(
                    parse_line(&text),
                    Err(ParseError::MissingColon { line: text.clone(), token: tok.clone() })
                );
            }
            Mutation::EmptyKey(tok) => {
                let mut toks: Vec<String> =
                    l.fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                toks.insert(i, tok.clone());
                text = format!(
                    "{}{} {} {}",
                    l.timestamp.as_ref().map(|t| format!("{t} ")).unwrap_or_default(),
                    l.action,
                    l.object,
                    toks.join(" ")
                );
                prop_assert_eq!(
                    parse_line(&text),
                    Err(ParseError::EmptyKey { line: text.clone(), token: tok.clone() })
                );
            }
            Mutation::DropName => {
                l.fields.retain(|(k, _)| k != "name");
                text = l.render(&[" "], "");
                let ev = parse_line(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut state = DrbdState::default();
                let applies = matches!(
                    (l.action.as_str(), l.object.as_str()),
                    ("call" | "response", "helper")
                        | ("exists" | "create" | "change" | "destroy",
                           "resource" | "device" | "connection" | "peer-device" | "path")
                );
                if applies {
                    prop_assert_eq!(
                        state.apply(&ev),
                        Err(ParseError::MissingKey { line: ev.to_string(), key: "name".into() })
                    );
                } else {
                    prop_assert_eq!(state.apply(&ev), Ok(false));
                }
                prop_assert_eq!(state, DrbdState::default());
            }
        }
        let mut state = DrbdState::default();
        let _ = fuzz_checks::events2_line(&mut state, &text);
    }

    /// An initial dump as drbdsetup prints it gives the state it describes.
    #[test]
    fn a_dump_gives_the_state_it_describes(d in dump()) {
        let lines = d.lines();
        let state = fuzz_checks::events2_text(&lines.join("\n"));
        prop_assert!(state.initial_dump_done);
        let r = &state.resources[&d.name];
        prop_assert_eq!(&r.role, &Role::from(d.role.as_str()));
        prop_assert_eq!(r.devices.len(), d.devices.len());
        for (v, disk, size) in &d.devices {
            let dev = &r.devices[v];
            prop_assert_eq!(&dev.disk, &DiskState::from(disk.as_str()));
            prop_assert_eq!(dev.size_kib, Some(*size));
            prop_assert_eq!(dev.minor, Some(v + 1));
        }
        let c = &r.connections[&d.peer];
        prop_assert_eq!(&c.conn_name, &d.conn_name);
        prop_assert_eq!(&c.connection, &ConnectionState::from(d.connection.as_str()));
        prop_assert_eq!(&c.peer_role, &Role::from(d.peer_role.as_str()));
        prop_assert_eq!(c.peer_devices.len(), d.peer_devices.len());
        for (v, repl, pdisk, oos, done) in &d.peer_devices {
            let p = &c.peer_devices[v];
            prop_assert_eq!(&p.replication, &ReplicationState::from(repl.as_str()));
            prop_assert_eq!(&p.peer_disk, &DiskState::from(pdisk.as_str()));
            prop_assert_eq!(p.out_of_sync_kib, Some(*oos));
            prop_assert_eq!(p.done_percent, done.map(|d| f64::from(d) / 100.0));
        }
    }

    /// Random bytes: never a panic, only typed errors (shared checks).
    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_checks::events2_bytes(&data);
    }

    /// Random text over the characters events2 lines are made of, so that
    /// tokens, keys, `->` diffs and numbers are hit far more often than by
    /// random bytes.
    #[test]
    fn random_events2_alphabet(
        text in "((exists|create|change|destroy|call|response|resource|device|connection|peer-device|path|helper|name|volume|peer-node-id|conn-name|local|peer|done|size|status|-|->|:|[0-9]{1,21}|[a-z]{1,3}|nan|[ \t]|\r?\n)){0,40}"
    ) {
        fuzz_checks::events2_text(&text);
    }

    /// Real lines from the fixtures with a byte range replaced by random
    /// bytes: still a value or a typed error, and the shared properties hold.
    #[test]
    fn mutated_fixture_lines(
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        len in 0usize..8,
        insert in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let lines = fixture_lines();
        let line = lines[pick.index(lines.len())].as_bytes();
        let start = at.index(line.len() + 1);
        let end = (start + len).min(line.len());
        let mut bytes = line[..start].to_vec();
        bytes.extend(&insert);
        bytes.extend(&line[end..]);
        fuzz_checks::events2_bytes(&bytes);
    }
}

/// Every line of the events2 fixtures.
fn fixture_lines() -> &'static [String] {
    static LINES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LINES.get_or_init(|| {
        let dir = common::fixtures_dir();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("events2-"))
            .collect();
        names.sort();
        let lines: Vec<String> = names
            .iter()
            .flat_map(|n| {
                common::read_fixture(n)
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(lines.len() > 100, "only {} fixture lines", lines.len());
        lines
    })
}

/// The fixtures themselves pass the shared checks line by line.
#[test]
fn fixtures_pass_the_shared_checks() {
    let text = fixture_lines().join("\n");
    let state = fuzz_checks::events2_text(&text);
    assert!(!state.resources.is_empty());
}
