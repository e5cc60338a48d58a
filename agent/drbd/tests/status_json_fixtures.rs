//! `drbdsetup status --json` fixtures parsed into the shared model.

mod common;

use common::{fixtures_dir, read_fixture};
use understudy_drbd::{
    parse_connection_json, parse_status_json, sane_counter, summarize, ConnectionState, DiskState,
    ParseError, ReplicationState, Role,
};

#[test]
fn every_status_json_fixture_parses() {
    let mut n = 0;
    for e in std::fs::read_dir(fixtures_dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("status-json-") && name.ends_with(".json") {
            n += 1;
            let text = read_fixture(&name);
            if name.contains("connections-fragment") {
                parse_connection_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                parse_status_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
    assert_eq!(n, 5, "expected five status-json fixtures");
}

#[test]
fn primary_connected_uptodate() {
    let rs =
        parse_status_json(&read_fixture("status-json-primary-connected-uptodate.json")).unwrap();
    assert_eq!(rs.len(), 1);
    let r = &rs[0];
    assert_eq!(r.name, "beijing");
    assert_eq!(r.node_id, Some(1));
    assert_eq!(r.role, Role::Primary);
    assert_eq!(r.suspended, Some(false));
    assert_eq!(r.write_ordering.as_deref(), Some("flush"));
    let d = &r.devices[&0];
    assert_eq!(d.minor, Some(5));
    assert_eq!(d.disk, DiskState::UpToDate);
    assert_eq!(d.client, Some(false));
    assert_eq!(d.quorum, Some(true));
    assert_eq!(d.size_kib, Some(307152));
    let c = &r.connections[&2];
    assert_eq!(c.conn_name, "salt-node3");
    assert_eq!(c.connection, ConnectionState::Connected);
    assert_eq!(c.peer_role, Role::Secondary);
    assert_eq!(c.congested, Some(false));
    let p = &c.peer_devices[&0];
    assert_eq!(p.replication, ReplicationState::Established);
    assert_eq!(p.peer_disk, DiskState::UpToDate);
    assert_eq!(p.resync_suspended.as_deref(), Some("no"));
    assert_eq!(p.done_percent, Some(100.0));
    assert_eq!(p.extra["has-sync-details"], "no");

    let s = summarize(r);
    assert_eq!(s.role, Role::Primary);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.peer_role, Role::Secondary);
    assert_eq!(s.connection, ConnectionState::Connected);
    assert_eq!(s.replication, ReplicationState::Established);
    assert_eq!(s.peer_disk, DiskState::UpToDate);
    assert_eq!(s.out_of_sync_bytes, Some(0));
    assert_eq!(s.quorum, Some(true));
    // Unknown keys are reported, not dropped.
    assert!(s
        .unknown
        .contains(&"peer-device[2][0].has-online-verify-details=no".to_string()));
}

#[test]
fn secondary_connected_uptodate() {
    let rs = parse_status_json(&read_fixture(
        "status-json-secondary-connected-uptodate.json",
    ))
    .unwrap();
    let r = &rs[0];
    assert_eq!(r.name, "shanghai");
    assert_eq!(r.role, Role::Secondary);
    assert_eq!(r.devices[&0].size_kib, Some(699332));
    assert_eq!(r.connections[&2].conn_name, "dummytest-drbd02");
    let s = summarize(r);
    assert_eq!(s.role, Role::Secondary);
    assert_eq!(s.peer_role, Role::Secondary);
    assert_eq!(s.replication, ReplicationState::Established);
}

#[test]
fn syncsource_with_bare_nan() {
    let text = read_fixture("status-json-primary-syncsource-sync-details-nan.json");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "fixture is expected to be invalid JSON (bare nan)"
    );
    let rs = parse_status_json(&text).unwrap();
    let r = &rs[0];
    assert_eq!(r.name, "shanghai");
    assert_eq!(r.devices[&0].lower_pending, Some(3));
    let p = &r.connections[&2].peer_devices[&0];
    assert_eq!(p.replication, ReplicationState::SyncSource);
    assert_eq!(p.peer_disk, DiskState::Inconsistent);
    assert_eq!(p.eta_seconds, None, "nan → None");
    assert_eq!(p.done_percent, Some(0.0));
    assert_eq!(p.dbdt1, Some(0.0));
    assert_eq!(p.out_of_sync_kib, Some(409600));
    assert_eq!(p.extra["rs-total"], "819200");
    assert!(p.extra.contains_key("db/dt [MiB/s]"));
    assert!(!p.extra.contains_key("estimated-seconds-to-finish"));
    let s = summarize(r);
    assert_eq!(s.role, Role::Primary);
    assert_eq!(s.replication, ReplicationState::SyncSource);
    assert_eq!(s.peer_disk, DiskState::Inconsistent);
    assert_eq!(s.eta_seconds, None);
    assert_eq!(s.done_percent, Some(0.0));
    assert_eq!(s.out_of_sync_bytes, Some(409600 * 1024));
}

#[test]
fn two_resources_one_without_quorum() {
    let rs = parse_status_json(&read_fixture(
        "status-json-two-resources-one-without-quorum.json",
    ))
    .unwrap();
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0].name, "1-single-0");
    assert_eq!(rs[1].name, "1-single-1");
    assert_eq!(rs[0].devices[&0].quorum, Some(true));
    assert_eq!(rs[1].devices[&0].quorum, Some(false));
    assert_eq!(rs[1].devices[&0].size_kib, Some(10200));
    let p = &rs[0].connections[&1].peer_devices[&0];
    assert_eq!(p.received_kib, Some(456));
    assert_eq!(p.sent_kib, Some(654));
    assert_eq!(p.pending, Some(3));
    assert_eq!(p.unacked, Some(4));
    assert_eq!(p.done_percent, Some(100.0));
    let s0 = summarize(&rs[0]);
    let s1 = summarize(&rs[1]);
    assert_eq!(s0.quorum, Some(true));
    assert_eq!(s1.quorum, Some(false));
    assert_eq!(s1.peer_role, Role::Primary);
    assert_eq!(s1.role, Role::Secondary);
}

#[test]
fn connection_fragment_with_underflow() {
    let c = parse_connection_json(&read_fixture(
        "status-json-connections-fragment-connecting-apinflight-underflow.json",
    ))
    .unwrap();
    assert_eq!(c.peer_node_id, 0);
    assert_eq!(c.conn_name, "4b");
    assert_eq!(c.connection, ConnectionState::Connecting);
    assert_eq!(c.peer_role, Role::Unknown);
    assert_eq!(c.ap_in_flight, Some(18446744073709551608));
    assert_eq!(sane_counter(c.ap_in_flight.unwrap()), None);
    assert_eq!(c.rs_in_flight, Some(0));
    let p = &c.peer_devices[&0];
    assert_eq!(p.replication, ReplicationState::Off);
    assert_eq!(p.peer_disk, DiskState::DUnknown);
}

#[test]
fn show_json_config_is_a_typed_error() {
    let text = read_fixture("show-json-resource-config-duplicate-disk-key.json");
    match parse_status_json(&text) {
        Err(ParseError::UnexpectedJson { path, message }) => {
            assert_eq!(path, "$[0]");
            assert!(message.contains("show --json"), "{message}");
        }
        other => panic!("expected UnexpectedJson, got {other:?}"),
    }
    // Fed to the connection parser it must not panic either (result unspecified).
    let _ = parse_connection_json(&text);
}

#[test]
fn bad_json_is_a_typed_error() {
    assert!(matches!(
        parse_status_json("[{\"name\": "),
        Err(ParseError::Json { .. })
    ));
    assert!(matches!(
        parse_status_json("42"),
        Err(ParseError::UnexpectedJson { .. })
    ));
    match parse_status_json(r#"[{"name":"r","devices":[{"volume":0,"size":"big"}]}]"#) {
        Err(ParseError::InvalidNumber { line, key, value }) => {
            assert_eq!(line, "$[0].devices[0]");
            assert_eq!(key, "size");
            assert_eq!(value, "big");
        }
        other => panic!("expected InvalidNumber, got {other:?}"),
    }
    assert!(matches!(
        parse_connection_json("[]"),
        Err(ParseError::UnexpectedJson { .. })
    ));
}
