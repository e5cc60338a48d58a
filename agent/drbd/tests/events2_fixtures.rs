//! Replays every `events2-*.txt` fixture through `parse_line` +
//! `DrbdState::apply` and asserts the final typed state.

mod common;

use common::{fixtures_dir, read_fixture, replay_fixture, replay_lines, unwrap_continuations};
use understudy_drbd::{
    parse_line, summarize, synthetic_peer_id, Action, ConnectionState, DiskState, DrbdState,
    Object, ParseError, ReplicationState, ResourceState, Role,
};

/// Every events2 fixture must have a test below; a new fixture fails this.
const COVERED: &[&str] = &[
    "events2-connect-uptodate-then-primary-diff.txt",
    "events2-connect-uptodate-then-primary-full.txt",
    "events2-connect-uptodate-then-primary-statistics.txt",
    "events2-connect-uptodate-then-primary-timestamps-masked.txt",
    "events2-connect-uptodate-then-primary.txt",
    "events2-connection-standalone-unconnected-connecting.txt",
    "events2-create-then-destroy-all.txt",
    "events2-diskless-may-promote-via-uptodate-peer.txt",
    "events2-helper-call-response.txt",
    "events2-initial-dump-then-changes.txt",
    "events2-initial-sync-syncsource-statistics.txt",
    "events2-initial-sync-syncsource.txt",
    "events2-local-inconsistent-peer-uptodate.txt",
    "events2-no-resources.txt",
    "events2-now-connected-uptodate-two-volumes.txt",
    "events2-peer-became-primary.txt",
    "events2-quorum-lost.txt",
    "events2-statistics-now-connected-uptodate-two-volumes.txt",
    "events2-timestamps-statistics-now-connected-uptodate.txt",
    "events2-timestamps-statistics-syncsource-drbd90.txt",
    "events2-two-volumes-promotion-score.txt",
];

#[test]
fn every_events2_fixture_is_covered() {
    let mut found: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("events2-") && n.ends_with(".txt"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no events2 fixtures found");
    for f in &found {
        assert!(COVERED.contains(&f.as_str()), "fixture {f} has no test");
    }
}

fn only_resource<'a>(st: &'a DrbdState, name: &str) -> &'a ResourceState {
    assert_eq!(st.resources.len(), 1, "{:?}", st.resources.keys());
    &st.resources[name]
}

/// Final state shared by the five `connect-uptodate-then-primary` variants.
fn assert_connect_then_primary(st: &DrbdState, statistics: bool) {
    assert!(st.initial_dump_done);
    let r = only_resource(st, "some-resource");
    assert_eq!(r.role, Role::Primary);
    assert_eq!(r.suspended, Some(false));
    assert_eq!(r.force_io_failures, Some(false));
    assert_eq!(r.may_promote, Some(false));
    assert_eq!(r.promotion_score, Some(10102));
    assert!(r.extra.is_empty(), "{:?}", r.extra);

    assert_eq!(r.devices.len(), 1);
    let d = &r.devices[&0];
    assert_eq!(d.minor, Some(1000));
    assert_eq!(d.disk, DiskState::UpToDate);
    assert_eq!(d.backing_dev.as_deref(), Some("/dev/sda"));
    assert_eq!(d.quorum, Some(true));
    assert_eq!(d.client, Some(false));
    assert_eq!(d.open, Some(false));

    assert_eq!(r.connections.len(), 1);
    let c = &r.connections[&1];
    assert_eq!(c.peer_node_id, 1);
    assert_eq!(c.conn_name, "some-peer");
    assert_eq!(c.connection, ConnectionState::Connected);
    assert_eq!(c.peer_role, Role::Secondary);
    assert_eq!(c.paths.len(), 1);
    assert_eq!(c.paths[0].local, "ipv4:1.2.3.4:7789");
    assert_eq!(c.paths[0].peer, "ipv4:5.6.7.8:7790");
    assert_eq!(c.paths[0].established, Some(true));
    assert_eq!(c.peer_devices.len(), 1);
    let p = &c.peer_devices[&0];
    assert_eq!(p.replication, ReplicationState::Established);
    assert_eq!(p.peer_disk, DiskState::UpToDate);
    assert_eq!(p.peer_client, Some(false));
    assert_eq!(p.resync_suspended.as_deref(), Some("no"));

    if statistics {
        assert_eq!(r.write_ordering.as_deref(), Some("none"));
        assert_eq!(d.size_kib, Some(5));
        assert_eq!(d.read_kib, Some(10));
        assert_eq!(d.written_kib, Some(15));
        assert_eq!(d.al_writes, Some(40));
        assert_eq!(d.bm_writes, Some(50));
        assert_eq!(d.upper_pending, Some(60));
        assert_eq!(d.lower_pending, Some(70));
        assert_eq!(d.al_suspended, Some(false));
        // `blocked` is only on the create line: merged, not lost.
        assert_eq!(d.blocked.as_deref(), Some("no"));
        assert_eq!(c.congested, Some(false));
        assert_eq!(c.ap_in_flight, Some(10));
        assert_eq!(c.rs_in_flight, Some(20));
        assert_eq!(p.received_kib, Some(5));
        assert_eq!(p.sent_kib, Some(10));
        assert_eq!(p.out_of_sync_kib, Some(0));
        assert_eq!(p.pending, Some(30));
        assert_eq!(p.unacked, Some(40));
    } else {
        assert_eq!(d.size_kib, None);
        assert_eq!(p.out_of_sync_kib, None);
    }

    let s = summarize(r);
    assert_eq!(s.name, "some-resource");
    assert_eq!(s.role, Role::Primary);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.peer_role, Role::Secondary);
    assert_eq!(s.connection, ConnectionState::Connected);
    assert_eq!(s.replication, ReplicationState::Established);
    assert_eq!(s.peer_disk, DiskState::UpToDate);
    assert_eq!(s.done_percent, None);
    assert_eq!(s.eta_seconds, None);
    assert_eq!(s.out_of_sync_bytes, if statistics { Some(0) } else { None });
    assert_eq!(s.may_promote, Some(false));
    assert_eq!(s.quorum, Some(true));
    assert!(s.unknown.is_empty(), "{:?}", s.unknown);
}

#[test]
fn connect_uptodate_then_primary() {
    assert_connect_then_primary(
        &replay_fixture("events2-connect-uptodate-then-primary.txt"),
        false,
    );
}

#[test]
fn connect_uptodate_then_primary_statistics() {
    assert_connect_then_primary(
        &replay_fixture("events2-connect-uptodate-then-primary-statistics.txt"),
        true,
    );
}

#[test]
fn connect_uptodate_then_primary_full() {
    assert_connect_then_primary(
        &replay_fixture("events2-connect-uptodate-then-primary-full.txt"),
        true,
    );
}

#[test]
fn connect_uptodate_then_primary_diff() {
    let st = replay_fixture("events2-connect-uptodate-then-primary-diff.txt");
    assert_connect_then_primary(&st, false);
    // `UNKNOWN->Secondary` style values never leak into the model.
    let ev = parse_line(
        "change resource name:some-resource role:Secondary->Primary may_promote:yes->no",
    )
    .unwrap();
    assert_eq!(ev.get("role"), Some("Primary"));
}

#[test]
fn connect_uptodate_then_primary_timestamps_masked() {
    let text = read_fixture("events2-connect-uptodate-then-primary-timestamps-masked.txt");
    for line in text.lines() {
        assert_eq!(parse_line(line).unwrap().timestamp.as_deref(), Some("TIME"));
    }
    assert_connect_then_primary(
        &replay_fixture("events2-connect-uptodate-then-primary-timestamps-masked.txt"),
        false,
    );
}

#[test]
fn connection_standalone_unconnected_connecting() {
    let text = read_fixture("events2-connection-standalone-unconnected-connecting.txt");
    let lines: Vec<&str> = text.lines().collect();
    // The first line is the guide's `...` elision, not drbdsetup output.
    assert_eq!(lines[0], "...");
    assert!(matches!(
        parse_line(lines[0]),
        Err(ParseError::MissingObject { ref line }) if line == "..."
    ));

    let mut st = DrbdState::default();
    let expected = [
        ConnectionState::StandAlone,
        ConnectionState::Unconnected,
        ConnectionState::Connecting,
    ];
    for (line, want) in lines[1..].iter().zip(expected) {
        assert!(st.apply(&parse_line(line).unwrap()).unwrap());
        assert_eq!(st.resources["r0"].connections[&1].connection, want);
    }
    assert!(!st.initial_dump_done);
    let r = only_resource(&st, "r0");
    // Changes for unknown objects create them with defaults.
    assert_eq!(r.role, Role::Unknown);
    assert!(r.devices.is_empty());
    assert_eq!(r.connections[&1].conn_name, "remote-host");
    let s = summarize(r);
    assert_eq!(s.connection, ConnectionState::Connecting);
    assert_eq!(s.disk, DiskState::Other("none".into()));
    assert_eq!(s.replication, ReplicationState::Off);
    assert_eq!(s.peer_disk, DiskState::DUnknown);
    assert!(s.unknown.is_empty());
}

#[test]
fn create_then_destroy_all() {
    let text = read_fixture("events2-create-then-destroy-all.txt");
    let mut st = DrbdState::default();
    for line in text.lines() {
        let ev = parse_line(line).unwrap();
        let changed = st.apply(&ev).unwrap();
        assert!(changed, "no change for {line}");
        if ev.object == Object::Path && ev.action == Action::Create {
            let r = &st.resources["some-resource"];
            assert_eq!(r.devices.len(), 1);
            assert_eq!(r.connections[&1].paths.len(), 1);
            assert_eq!(r.connections[&1].peer_devices.len(), 1);
        }
        if ev.action == Action::Destroy && ev.object == Object::Connection {
            assert!(st.resources["some-resource"].connections.is_empty());
            assert_eq!(st.resources["some-resource"].devices.len(), 1);
        }
    }
    assert!(st.initial_dump_done);
    assert!(st.resources.is_empty());
    // Destroying again is not a change.
    assert!(!st
        .apply_line("destroy resource name:some-resource")
        .unwrap());
}

#[test]
fn diskless_may_promote_via_uptodate_peer() {
    let st = replay_fixture("events2-diskless-may-promote-via-uptodate-peer.txt");
    let r = only_resource(&st, "some-resource");
    assert_eq!(r.role, Role::Secondary);
    assert_eq!(r.may_promote, Some(true));
    assert_eq!(r.promotion_score, Some(1));
    let d = &r.devices[&0];
    assert_eq!(d.disk, DiskState::Diskless);
    assert_eq!(d.backing_dev.as_deref(), Some("none"));
    let c = &r.connections[&1];
    assert!(c.paths.is_empty());
    let s = summarize(r);
    assert_eq!(s.disk, DiskState::Diskless);
    assert_eq!(s.connection, ConnectionState::Connected);
    assert_eq!(s.peer_role, Role::Secondary);
    assert_eq!(s.replication, ReplicationState::Established);
    assert_eq!(s.peer_disk, DiskState::UpToDate);
    assert_eq!(s.may_promote, Some(true));
    assert_eq!(s.quorum, Some(true));
}

#[test]
fn helper_call_response() {
    let text = read_fixture("events2-helper-call-response.txt");
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    let mut st = replay_lines(&lines[..n - 2]);
    assert!(st.resources["some-resource"].last_helper.is_none());

    assert!(st.apply_line(lines[n - 2]).unwrap());
    let h = st.resources["some-resource"].last_helper.clone().unwrap();
    assert!(!h.response);
    assert_eq!(h.helper, "before-resync-target");
    assert_eq!(h.peer_node_id, Some(1));
    assert_eq!(h.volume, Some(0));
    assert_eq!(h.status, None);

    assert!(st.apply_line(lines[n - 1]).unwrap());
    let r = only_resource(&st, "some-resource");
    let h = r.last_helper.as_ref().unwrap();
    assert!(h.response);
    assert_eq!(h.helper, "before-resync-target");
    assert_eq!(h.status, Some(1));
    assert!(h.extra.is_empty(), "{:?}", h.extra);

    // The helper lines do not touch the replication state.
    let s = summarize(r);
    assert_eq!(s.role, Role::Secondary);
    assert_eq!(s.disk, DiskState::Diskless);
    assert_eq!(s.connection, ConnectionState::StandAlone);
    assert_eq!(s.peer_role, Role::Unknown);
    assert_eq!(s.replication, ReplicationState::Off);
    assert_eq!(s.peer_disk, DiskState::DUnknown);
    assert_eq!(r.connections[&1].paths[0].established, Some(false));
}

/// `change` lines carry only changed keys: keys from `exists` survive.
#[test]
fn initial_dump_then_changes_merges() {
    let text = read_fixture("events2-initial-dump-then-changes.txt");
    let lines: Vec<&str> = text.lines().collect();
    let mut st = DrbdState::default();
    st.apply_line(lines[0]).unwrap();
    st.apply_line(lines[1]).unwrap();
    assert!(!st.initial_dump_done);
    assert!(st.apply_line(lines[2]).unwrap());
    assert!(st.initial_dump_done);

    st.apply_line(lines[3]).unwrap(); // may_promote:yes promotion_score:10101
    let r = &st.resources["some-resource"];
    assert_eq!(r.role, Role::Secondary, "role from exists kept");
    assert_eq!(r.suspended, Some(false));
    assert_eq!(r.may_promote, Some(true));
    assert_eq!(r.promotion_score, Some(10101));

    for l in &lines[4..] {
        st.apply_line(l).unwrap();
    }
    let r = only_resource(&st, "some-resource");
    assert_eq!(r.role, Role::Primary);
    assert_eq!(r.may_promote, Some(false));
    assert_eq!(r.promotion_score, Some(10101));
    // Never repeated by a change line:
    assert_eq!(r.suspended, Some(false));
    assert_eq!(r.force_io_failures, Some(false));
    let d = &r.devices[&0];
    assert_eq!(d.disk, DiskState::UpToDate);
    assert_eq!(d.backing_dev.as_deref(), Some("/dev/sda"));
    assert_eq!(d.minor, Some(1000));
    assert_eq!(d.quorum, Some(true));

    // Re-applying the same change is not a change.
    assert!(!st.apply_line(lines[5]).unwrap());
}

fn assert_initial_sync(st: &DrbdState, statistics: bool) {
    assert!(st.initial_dump_done);
    let r = only_resource(st, "some-resource");
    assert_eq!(r.role, Role::Secondary);
    assert_eq!(r.may_promote, Some(true));
    assert_eq!(r.promotion_score, Some(10101));
    let p = &r.connections[&1].peer_devices[&0];
    assert_eq!(p.replication, ReplicationState::SyncSource);
    assert_eq!(p.peer_disk, DiskState::Inconsistent);
    assert_eq!(p.done_percent, Some(37.5));
    assert_eq!(r.connections[&1].paths[0].established, Some(true));
    let s = summarize(r);
    assert_eq!(s.role, Role::Secondary);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.connection, ConnectionState::Connected);
    assert_eq!(s.peer_role, Role::Secondary);
    assert_eq!(s.replication, ReplicationState::SyncSource);
    assert_eq!(s.peer_disk, DiskState::Inconsistent);
    assert_eq!(s.done_percent, Some(37.5));
    assert_eq!(s.quorum, Some(true));
    if statistics {
        assert_eq!(p.out_of_sync_kib, Some(2500));
        assert_eq!(p.dbdt1, Some(0.24));
        assert_eq!(p.eta_seconds, Some(10.0));
        assert_eq!(p.received_kib, Some(5));
        assert_eq!(p.sent_kib, Some(10));
        assert_eq!(s.out_of_sync_bytes, Some(2500 * 1024));
        assert_eq!(s.eta_seconds, Some(10.0));
    } else {
        assert_eq!(p.out_of_sync_kib, None);
        assert_eq!(s.out_of_sync_bytes, None);
        assert_eq!(s.eta_seconds, None);
    }
}

#[test]
fn initial_sync_syncsource() {
    assert_initial_sync(
        &replay_fixture("events2-initial-sync-syncsource.txt"),
        false,
    );
}

#[test]
fn initial_sync_syncsource_statistics() {
    assert_initial_sync(
        &replay_fixture("events2-initial-sync-syncsource-statistics.txt"),
        true,
    );
}

#[test]
fn local_inconsistent_peer_uptodate() {
    let st = replay_fixture("events2-local-inconsistent-peer-uptodate.txt");
    let r = only_resource(&st, "some-resource");
    assert_eq!(r.devices[&0].disk, DiskState::Inconsistent);
    assert_eq!(r.devices[&0].backing_dev.as_deref(), Some("/dev/sda"));
    assert_eq!(r.promotion_score, Some(10001));
    let s = summarize(r);
    assert_eq!(s.disk, DiskState::Inconsistent);
    assert_eq!(s.peer_disk, DiskState::UpToDate);
    assert_eq!(s.replication, ReplicationState::Established);
    assert_eq!(s.connection, ConnectionState::Connected);
    assert_eq!(s.may_promote, Some(true));
}

#[test]
fn no_resources() {
    let st = replay_fixture("events2-no-resources.txt");
    assert!(st.initial_dump_done);
    assert!(st.resources.is_empty());
}

/// Guide samples are wrapped for display; real drbdsetup prints one line per
/// event, so the test joins continuation lines, and a bare continuation
/// fragment is a typed error.
fn assert_wrapped_fragments_are_errors(text: &str) {
    let mut n = 0;
    for line in text.lines().filter(|l| l.starts_with(' ')) {
        n += 1;
        match parse_line(line) {
            Err(ParseError::MissingAction { line: l, .. }) => assert_eq!(l, line),
            other => panic!("expected MissingAction for {line:?}, got {other:?}"),
        }
    }
    assert!(n > 0, "fixture is expected to be wrapped");
}

#[test]
fn now_connected_uptodate_two_volumes_wrapped() {
    let text = read_fixture("events2-now-connected-uptodate-two-volumes.txt");
    assert_wrapped_fragments_are_errors(&text);
    let st = replay_lines(&unwrap_continuations(&text));
    assert!(st.initial_dump_done);
    let r = only_resource(&st, "r0");
    assert_eq!(r.role, Role::Secondary);
    assert_eq!(r.suspended, Some(false));
    assert_eq!(r.devices.len(), 2);
    assert_eq!(r.devices[&0].minor, Some(7));
    assert_eq!(r.devices[&1].minor, Some(8));
    assert_eq!(r.connections.len(), 1);
    let c = &r.connections[&1];
    assert_eq!(c.conn_name, "remote-host");
    assert_eq!(c.peer_devices.len(), 2);
    for p in c.peer_devices.values() {
        assert_eq!(p.replication, ReplicationState::Established);
        assert_eq!(p.peer_disk, DiskState::UpToDate);
        assert_eq!(p.resync_suspended.as_deref(), Some("no"));
    }
    let s = summarize(r);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.connection, ConnectionState::Connected);
    assert_eq!(s.peer_role, Role::Secondary);
    assert_eq!(s.replication, ReplicationState::Established);
    assert_eq!(s.peer_disk, DiskState::UpToDate);
    assert_eq!(s.quorum, None);
    assert_eq!(s.may_promote, None);
}

#[test]
fn statistics_now_connected_uptodate_two_volumes_wrapped() {
    let text = read_fixture("events2-statistics-now-connected-uptodate-two-volumes.txt");
    assert_wrapped_fragments_are_errors(&text);
    let lines = unwrap_continuations(&text);
    assert_eq!(lines.len(), 7);
    let st = replay_lines(&lines);
    assert!(st.initial_dump_done);
    let r = only_resource(&st, "r0");
    assert_eq!(r.write_ordering.as_deref(), Some("drain"));
    let d0 = &r.devices[&0];
    assert_eq!(d0.size_kib, Some(6291228));
    assert_eq!(d0.read_kib, Some(6397188));
    assert_eq!(d0.written_kib, Some(131844));
    assert_eq!(d0.al_writes, Some(34));
    assert_eq!(d0.blocked.as_deref(), Some("no"));
    assert_eq!(d0.al_suspended, Some(false));
    let d1 = &r.devices[&1];
    assert_eq!(d1.size_kib, Some(104854364));
    assert_eq!(d1.written_kib, Some(6634548));
    assert_eq!(d1.al_writes, Some(417));
    let c = &r.connections[&1];
    assert_eq!(c.peer_role, Role::Secondary);
    assert_eq!(c.congested, Some(false));
    assert_eq!(c.peer_devices[&0].sent_kib, Some(131844));
    assert_eq!(c.peer_devices[&1].sent_kib, Some(6634548));
    let s = summarize(r);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.replication, ReplicationState::Established);
    assert_eq!(s.peer_disk, DiskState::UpToDate);
    assert_eq!(s.out_of_sync_bytes, Some(0));
    assert!(s.unknown.is_empty(), "{:?}", s.unknown);
}

#[test]
fn peer_became_primary() {
    let st = replay_fixture("events2-peer-became-primary.txt");
    let r = only_resource(&st, "some-resource");
    assert_eq!(r.role, Role::Secondary);
    assert_eq!(r.may_promote, Some(false));
    assert_eq!(r.promotion_score, Some(10101));
    let c = &r.connections[&1];
    assert_eq!(c.peer_role, Role::Primary);
    assert_eq!(
        c.connection,
        ConnectionState::Connected,
        "kept from earlier change"
    );
    let s = summarize(r);
    assert_eq!(s.peer_role, Role::Primary);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.connection, ConnectionState::Connected);
    // No peer-device change in this sample: still the created state.
    assert_eq!(s.replication, ReplicationState::Off);
    assert_eq!(s.peer_disk, DiskState::DUnknown);
}

#[test]
fn quorum_lost() {
    let st = replay_fixture("events2-quorum-lost.txt");
    let r = only_resource(&st, "some-resource");
    assert_eq!(r.may_promote, Some(false));
    assert_eq!(r.promotion_score, Some(0));
    assert_eq!(r.devices[&0].quorum, Some(false));
    assert!(r.connections.is_empty());
    let s = summarize(r);
    assert_eq!(s.quorum, Some(false));
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.connection, ConnectionState::Other("none".into()));
    assert_eq!(s.peer_role, Role::Unknown);
    assert_eq!(s.out_of_sync_bytes, None);
    assert!(s.unknown.is_empty());
}

#[test]
fn timestamps_statistics_now_connected_uptodate() {
    let text = read_fixture("events2-timestamps-statistics-now-connected-uptodate.txt");
    let first = parse_line(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first.timestamp.as_deref(),
        Some("2019-05-07T13:50:23.973595-07:00")
    );
    let last = parse_line(text.lines().last().unwrap()).unwrap();
    assert_eq!(last.object, Object::EndOfInitialDump);
    assert_eq!(
        last.timestamp.as_deref(),
        Some("2019-05-07T13:50:23.974032-07:00")
    );

    let st = replay_fixture("events2-timestamps-statistics-now-connected-uptodate.txt");
    assert!(st.initial_dump_done);
    let name = "pvc-0a2826c9-7108-11e9-8f74-0026b954ca4c";
    let r = only_resource(&st, name);
    assert_eq!(r.role, Role::Secondary);
    assert_eq!(r.write_ordering.as_deref(), Some("flush"));
    let d = &r.devices[&0];
    assert_eq!(d.minor, Some(1016));
    assert_eq!(d.size_kib, Some(515948));
    assert_eq!(d.read_kib, Some(2104));
    assert_eq!(d.quorum, Some(true));
    let c = &r.connections[&2];
    assert_eq!(c.conn_name, "kubelet-b");
    assert_eq!(c.ap_in_flight, Some(0));
    let s = summarize(r);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.connection, ConnectionState::Connected);
    assert_eq!(s.peer_role, Role::Secondary);
    assert_eq!(s.replication, ReplicationState::Established);
    assert_eq!(s.peer_disk, DiskState::UpToDate);
    assert_eq!(s.out_of_sync_bytes, Some(0));
    assert_eq!(s.quorum, Some(true));
}

/// DRBD 9.0 lines have no peer-node-id: keyed by synthetic_peer_id(conn-name).
#[test]
fn timestamps_statistics_syncsource_drbd90() {
    let st = replay_fixture("events2-timestamps-statistics-syncsource-drbd90.txt");
    assert!(!st.initial_dump_done, "sample has no `exists -`");
    let r = only_resource(&st, "test0");
    assert_eq!(r.role, Role::Primary);
    assert_eq!(r.devices[&0].size_kib, Some(4056));
    assert_eq!(r.connections.len(), 1);
    let id = synthetic_peer_id("peer");
    let c = &r.connections[&id];
    assert_eq!(c.peer_node_id, id);
    assert_eq!(c.conn_name, "peer");
    assert_eq!(c.connection, ConnectionState::Connected);
    let p = &c.peer_devices[&0];
    assert_eq!(p.sent_kib, Some(2050743348));
    assert_eq!(p.out_of_sync_kib, Some(205655500));
    let s = summarize(r);
    assert_eq!(s.role, Role::Primary);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.peer_role, Role::Secondary);
    assert_eq!(s.replication, ReplicationState::SyncSource);
    assert_eq!(s.peer_disk, DiskState::Inconsistent);
    assert_eq!(s.out_of_sync_bytes, Some(205655500 * 1024));
    assert_eq!(s.done_percent, None);
    assert_eq!(s.quorum, None);
}

#[test]
fn two_volumes_promotion_score() {
    let st = replay_fixture("events2-two-volumes-promotion-score.txt");
    let r = only_resource(&st, "some-resource");
    assert_eq!(r.devices.len(), 2);
    assert_eq!(r.devices[&1].minor, Some(1001));
    assert!(r.devices.values().all(|d| d.disk == DiskState::UpToDate));
    assert_eq!(r.may_promote, Some(true));
    assert_eq!(r.promotion_score, Some(10201));
    let s = summarize(r);
    assert_eq!(s.disk, DiskState::UpToDate);
    assert_eq!(s.quorum, Some(true));
}

#[test]
fn two_volumes_worst_disk_mid_replay() {
    // After `create device ... volume:1 ... disk:Diskless` the worst is Diskless.
    let text = read_fixture("events2-two-volumes-promotion-score.txt");
    let lines: Vec<&str> = text.lines().collect();
    let st = replay_lines(&lines[..lines.len() - 2]);
    let s = summarize(&st.resources["some-resource"]);
    assert_eq!(s.disk, DiskState::Diskless);
}

/// What drbd-emu prints (`tests/drbd-emu`, fencing `resource-and-stonith`)
/// when a Primary loses its peer and the fence-peer handler exits 4:
/// `suspended:fencing` (drbdsetup's word for `res_susp_fen`), a
/// connection-level helper without `volume:` whose `status:` is the raw
/// wait status (4 << 8), the peer disk Outdated while disconnected, then
/// `suspended:no`.
#[test]
fn fencing_suspension_and_fence_peer_helper() {
    let lines = [
        "exists resource name:r0 role:Primary suspended:no force-io-failures:no may_promote:no promotion_score:10102",
        "exists device name:r0 volume:0 minor:1000 backing_dev:/tmp/x/fs1/data disk:UpToDate client:no open:no quorum:yes",
        "exists connection name:r0 peer-node-id:1 conn-name:fs2 connection:Connected role:Secondary",
        "exists peer-device name:r0 peer-node-id:1 conn-name:fs2 volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no",
        "exists path name:r0 peer-node-id:1 conn-name:fs2 local:ipv4:127.0.0.1:7789 peer:ipv4:127.0.0.1:7790 established:yes",
        "exists -",
        "change resource name:r0 suspended:fencing may_promote:no promotion_score:10101",
        "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:BrokenPipe role:Unknown",
        "change peer-device name:r0 peer-node-id:1 conn-name:fs2 volume:0 replication:Off peer-disk:DUnknown peer-client:no",
        "change path name:r0 peer-node-id:1 conn-name:fs2 local:ipv4:127.0.0.1:7789 peer:ipv4:127.0.0.1:7790 established:no",
        "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:Unconnected",
        "call helper name:r0 peer-node-id:1 conn-name:fs2 helper:fence-peer",
    ];
    let mut st = replay_lines(&lines);
    {
        let r = &st.resources["r0"];
        assert_eq!(r.suspended, Some(true));
        assert_eq!(r.suspended_reasons, ["fencing"]);
        assert_eq!(r.extra.get("suspended"), None);
        let h = r.last_helper.as_ref().unwrap();
        assert!(!h.response);
        assert_eq!(h.helper, "fence-peer");
        assert_eq!(h.peer_node_id, Some(1));
        assert_eq!(h.volume, None, "connection-level helper");
        let s = summarize(r);
        assert_eq!(s.role, Role::Primary);
        assert_eq!(s.peer_disk, DiskState::DUnknown);
        // A known suspend reason is not an unknown word.
        assert!(s.unknown.is_empty(), "{:?}", s.unknown);
    }
    for l in [
        "response helper name:r0 peer-node-id:1 conn-name:fs2 helper:fence-peer status:1024",
        "change peer-device name:r0 peer-node-id:1 conn-name:fs2 volume:0 peer-disk:Outdated peer-client:no",
    ] {
        assert!(st.apply_line(l).unwrap(), "{l}");
    }
    {
        let r = &st.resources["r0"];
        let h = r.last_helper.as_ref().unwrap();
        assert!(h.response);
        assert_eq!(h.status, Some(1024));
        assert!(h.extra.is_empty(), "{:?}", h.extra);
        assert_eq!(r.suspended, Some(true));
        let s = summarize(r);
        assert_eq!(s.peer_disk, DiskState::Outdated);
        assert_eq!(s.connection, ConnectionState::Unconnected);
    }
    assert!(st
        .apply_line("change resource name:r0 suspended:no may_promote:no promotion_score:10101")
        .unwrap());
    let r = &st.resources["r0"];
    assert_eq!(r.suspended, Some(false));
    assert!(!r.extra.contains_key("suspended"), "{:?}", r.extra);
    assert!(
        summarize(r).unknown.is_empty(),
        "{:?}",
        summarize(r).unknown
    );
}
