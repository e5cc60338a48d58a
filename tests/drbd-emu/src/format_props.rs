//! Property tests: everything the emulator prints, the agent's parsers read
//! back to the values it printed (`understudy-drbd` is the reader). Random
//! snapshots (any state words, counters up to `u64::MAX`, resync progress)
//! rendered as events2 `exists` dumps, as `change`/`create`/`destroy` lines
//! between two snapshots (with and without `--statistics` / `--full`), as
//! helper lines with timestamps, and as `status --json`.

use proptest::prelude::*;
use understudy_drbd as agent;

use crate::format::{change_lines, exists_lines, helper_line, status_json, timestamp, EventOpts};
use crate::model::*;

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Primary),
        Just(Role::Secondary),
        Just(Role::Unknown)
    ]
}

fn disk() -> impl Strategy<Value = DiskState> {
    proptest::sample::select(vec![
        DiskState::Diskless,
        DiskState::Attaching,
        DiskState::Detaching,
        DiskState::Failed,
        DiskState::Negotiating,
        DiskState::Inconsistent,
        DiskState::Outdated,
        DiskState::DUnknown,
        DiskState::Consistent,
        DiskState::UpToDate,
    ])
}

fn conn() -> impl Strategy<Value = ConnState> {
    proptest::sample::select(vec![
        ConnState::StandAlone,
        ConnState::Disconnecting,
        ConnState::Unconnected,
        ConnState::Timeout,
        ConnState::BrokenPipe,
        ConnState::NetworkFailure,
        ConnState::ProtocolError,
        ConnState::TearDown,
        ConnState::Connecting,
        ConnState::Connected,
    ])
}

fn repl() -> impl Strategy<Value = Repl> {
    proptest::sample::select(vec![
        Repl::Off,
        Repl::Established,
        Repl::StartingSyncS,
        Repl::StartingSyncT,
        Repl::WFBitMapS,
        Repl::WFBitMapT,
        Repl::WFSyncUUID,
        Repl::SyncSource,
        Repl::SyncTarget,
        Repl::PausedSyncS,
        Repl::PausedSyncT,
    ])
}

/// A counter: small, or anything a u64 holds (DRBD's underflow included).
fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..1_000_000, 1 => any::<u64>()]
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    let device = (
        (
            0u32..4,
            0u32..1_048_576,
            proptest::option::of("/dev/[a-z]{2,5}"),
            disk(),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            0u64..(1 << 40),
            counter(),
            counter(),
            counter(),
            counter(),
            counter(),
            counter(),
        ),
    )
        .prop_map(
            |(
                (volume, minor, backing_dev, disk),
                (client, open, quorum, al_suspended, blocked),
                (size, read, written, al_writes, bm_writes, upper_pending, lower_pending),
            )| DeviceSnap {
                volume,
                minor,
                backing_dev,
                disk,
                client,
                open,
                quorum,
                size,
                read,
                written,
                al_writes,
                bm_writes,
                upper_pending,
                lower_pending,
                al_suspended,
                blocked,
            },
        );
    let connection = (
        0u32..32,
        "[a-z][a-z0-9-]{0,10}",
        conn(),
        role(),
        any::<bool>(),
        counter(),
        counter(),
    )
        .prop_map(
            |(peer_node_id, conn_name, connection, peer_role, congested, ap, rs)| ConnSnap {
                peer_node_id,
                conn_name,
                connection,
                peer_role,
                congested,
                ap_in_flight: ap,
                rs_in_flight: rs,
            },
        );
    let peer_device = (
        (
            repl(),
            disk(),
            any::<bool>(),
            "(no|user|peer|dependency|user,peer)",
        ),
        (counter(), counter(), 0u64..(1 << 40), counter(), counter()),
        (
            0u64..(1 << 40),
            0u64..(1 << 40),
            proptest::option::of(0.0f64..=100.0),
            proptest::option::of(0.0f64..10_000.0),
            proptest::option::of(0u64..10_000_000),
        ),
    )
        .prop_map(
            |(
                (replication, peer_disk, peer_client, resync_suspended),
                (received, sent, out_of_sync, pending, unacked),
                (rs_total, rs_elapsed_ms, done, dbdt1, eta),
            )| PeerDeviceSnap {
                volume: 0,
                replication,
                peer_disk,
                peer_client,
                resync_suspended,
                received,
                sent,
                out_of_sync,
                pending,
                unacked,
                rs_total,
                rs_elapsed_ms,
                done,
                dbdt1,
                eta,
            },
        );
    let path = (1u8..255, 1024u16.., 1u8..255, 1024u16.., any::<bool>()).prop_map(
        |(a, pa, b, pb, established)| PathSnap {
            local: format!("ipv4:10.0.0.{a}:{pa}"),
            peer: format!("ipv4:10.0.1.{b}:{pb}"),
            established,
        },
    );
    (
        (
            "[a-z][a-z0-9_-]{0,10}",
            0u32..32,
            role(),
            "(no|user|fencing|quorum|no-data)",
            "(none|drain|flush)",
            any::<bool>(),
            any::<u32>(),
        ),
        device,
        connection,
        peer_device,
        path,
    )
        .prop_map(
            |(
                (name, node_id, role, suspended, write_ordering, may_promote, promotion_score),
                device,
                connection,
                mut peer_device,
                path,
            )| {
                peer_device.volume = device.volume;
                Snapshot {
                    name,
                    node_id,
                    role,
                    suspended,
                    write_ordering,
                    may_promote,
                    promotion_score,
                    device,
                    connection,
                    peer_device,
                    path,
                }
            },
        )
}

fn opts() -> impl Strategy<Value = EventOpts> {
    (any::<bool>(), any::<bool>()).prop_map(|(statistics, full)| EventOpts { statistics, full })
}

/// Parse and apply every line; every line must parse and apply.
fn apply_all(state: &mut agent::DrbdState, lines: &[String]) -> Result<(), TestCaseError> {
    for l in lines {
        let ev = agent::parse_line(l)
            .map_err(|e| TestCaseError::fail(format!("the agent cannot parse {l:?}: {e}")))?;
        state
            .apply(&ev)
            .map_err(|e| TestCaseError::fail(format!("the agent cannot apply {l:?}: {e}")))?;
    }
    Ok(())
}

/// A value printed with two decimals, read back.
fn two_decimals(v: f64) -> f64 {
    format!("{v:.2}").parse().unwrap()
}

/// The agent's resource holds the snapshot's values (statistics only when
/// they were printed; resync progress only when `progress`).
fn check_resource(
    r: &agent::ResourceState,
    s: &Snapshot,
    stats: bool,
    progress: bool,
) -> Result<(), TestCaseError> {
    let word = |w: &dyn std::fmt::Display| w.to_string();
    prop_assert_eq!(&r.name, &s.name);
    prop_assert_eq!(r.role.as_str(), word(&s.role));
    prop_assert_eq!(r.suspended, Some(s.suspended != "no"));
    prop_assert_eq!(r.may_promote, Some(s.may_promote));
    prop_assert_eq!(r.promotion_score, Some(u64::from(s.promotion_score)));
    let d = &r.devices[&s.device.volume];
    prop_assert_eq!(d.minor, Some(s.device.minor));
    prop_assert_eq!(d.disk.as_str(), word(&s.device.disk));
    prop_assert_eq!(
        d.backing_dev.as_deref(),
        Some(s.device.backing_dev.as_deref().unwrap_or("none"))
    );
    prop_assert_eq!(d.client, Some(s.device.client));
    prop_assert_eq!(d.quorum, Some(s.device.quorum));
    if stats {
        prop_assert_eq!(d.size_kib, Some(s.device.size));
        prop_assert_eq!(d.read_kib, Some(s.device.read));
        prop_assert_eq!(d.written_kib, Some(s.device.written));
        prop_assert_eq!(d.al_writes, Some(s.device.al_writes));
        prop_assert_eq!(d.lower_pending, Some(s.device.lower_pending));
        prop_assert_eq!(d.al_suspended, Some(s.device.al_suspended));
    }
    let c = &r.connections[&s.connection.peer_node_id];
    prop_assert_eq!(&c.conn_name, &s.connection.conn_name);
    prop_assert_eq!(c.connection.as_str(), word(&s.connection.connection));
    prop_assert_eq!(c.peer_role.as_str(), word(&s.connection.peer_role));
    if stats {
        prop_assert_eq!(c.congested, Some(s.connection.congested));
        prop_assert_eq!(c.ap_in_flight, Some(s.connection.ap_in_flight));
        prop_assert_eq!(c.rs_in_flight, Some(s.connection.rs_in_flight));
    }
    let pd = &s.peer_device;
    let p = &c.peer_devices[&pd.volume];
    prop_assert_eq!(p.replication.as_str(), word(&pd.replication));
    prop_assert_eq!(p.peer_disk.as_str(), word(&pd.peer_disk));
    prop_assert_eq!(p.peer_client, Some(pd.peer_client));
    prop_assert_eq!(
        p.resync_suspended.as_deref(),
        Some(pd.resync_suspended.as_str())
    );
    if progress {
        prop_assert_eq!(p.done_percent, pd.done.map(two_decimals));
    }
    if stats {
        prop_assert_eq!(p.received_kib, Some(pd.received));
        prop_assert_eq!(p.out_of_sync_kib, Some(pd.out_of_sync));
        prop_assert_eq!(p.unacked, Some(pd.unacked));
        if progress {
            prop_assert_eq!(p.dbdt1, pd.dbdt1.map(two_decimals));
            prop_assert_eq!(p.eta_seconds, pd.eta.map(|e| e as f64));
        }
    }
    prop_assert_eq!(c.paths.len(), 1);
    prop_assert_eq!(&c.paths[0].local, &s.path.local);
    prop_assert_eq!(&c.paths[0].peer, &s.path.peer);
    prop_assert_eq!(c.paths[0].established, Some(s.path.established));
    // Nothing the emulator prints is unknown to the agent.
    let unknown = agent::summarize(r).unknown;
    prop_assert!(unknown.is_empty(), "the agent does not know {:?}", unknown);
    Ok(())
}

proptest! {
    /// The emulator's initial dump (`exists` lines, `exists -`) is read back
    /// by the agent as the snapshot it was printed from.
    #[test]
    fn the_agent_reads_every_exists_dump(s in snapshot(), o in opts()) {
        let mut lines = exists_lines(Some(&s), o);
        lines.push("exists -".into());
        let mut state = agent::DrbdState::default();
        apply_all(&mut state, &lines)?;
        prop_assert!(state.initial_dump_done);
        prop_assert_eq!(state.resources.len(), 1);
        check_resource(&state.resources[&s.name], &s, o.statistics || o.full, true)?;
    }

    /// After the dump of `old`, the change lines from `old` to `new` leave
    /// the agent with `new`'s values (a renamed peer or path: the destroy and
    /// create lines the emulator prints), timestamped or not.
    #[test]
    fn the_agent_follows_every_change(
        old in snapshot(),
        new in snapshot(),
        same in any::<bool>(),
        o in opts(),
        ts in proptest::option::of(0i64..4_000_000_000_000_000),
    ) {
        // Mostly the same resource and peer, so that lines are `change`s.
        let new = if same {
            Snapshot {
                name: old.name.clone(),
                device: DeviceSnap { volume: old.device.volume, ..new.device },
                connection: ConnSnap {
                    peer_node_id: old.connection.peer_node_id,
                    conn_name: old.connection.conn_name.clone(),
                    ..new.connection
                },
                peer_device: PeerDeviceSnap { volume: old.device.volume, ..new.peer_device },
                path: old.path.clone(),
                ..new
            }
        } else {
            new
        };
        let stamp = |l: String| match ts {
            Some(t) => format!("{} {l}", timestamp(t)),
            None => l,
        };
        let mut state = agent::DrbdState::default();
        let mut dump = exists_lines(Some(&old), o);
        dump.push("exists -".into());
        apply_all(&mut state, &dump.into_iter().map(stamp).collect::<Vec<_>>())?;
        let changes: Vec<String> = change_lines(Some(&old), Some(&new), o).into_iter().map(stamp).collect();
        apply_all(&mut state, &changes)?;
        let stats = o.statistics || o.full;
        if old.name != new.name {
            // The old resource was destroyed, the new one created.
            prop_assert!(!state.resources.contains_key(&old.name) || old.name == new.name);
        }
        // Resync progress is merged (DRBD stops printing `done:`), so it is
        // compared only where the new snapshot prints it.
        let progress = new.peer_device.done.is_some() && new.peer_device.dbdt1.is_some() && new.peer_device.eta.is_some();
        check_resource(&state.resources[&new.name], &new, stats, progress)?;
    }

    /// A resource going down: the destroy lines remove it from the agent.
    #[test]
    fn the_agent_forgets_a_destroyed_resource(s in snapshot(), o in opts()) {
        let mut state = agent::DrbdState::default();
        apply_all(&mut state, &exists_lines(Some(&s), o))?;
        apply_all(&mut state, &change_lines(Some(&s), None, o))?;
        prop_assert!(state.resources.is_empty(), "{:?}", state.resources.keys());
    }

    /// Helper lines (with the timestamp column) are read with their helper,
    /// peer and raw wait status as drbdsetup prints it (`%u`).
    #[test]
    fn the_agent_reads_helper_lines(
        s in snapshot(),
        name in "(fence-peer|unfence-peer)",
        status in proptest::option::of(any::<i32>()),
        ts in 0i64..4_000_000_000_000_000,
    ) {
        let h = HelperNote { name: name.clone(), status };
        let stamp = timestamp(ts);
        let line = format!("{stamp} {}", helper_line(&s, &h));
        let mut state = agent::DrbdState::default();
        apply_all(&mut state, &[line])?;
        let last = state.resources[&s.name].last_helper.clone().unwrap();
        prop_assert_eq!(&last.helper, &name);
        prop_assert_eq!(last.response, status.is_some());
        prop_assert_eq!(last.status, status.map(|st| i64::from(st as u32)));
        prop_assert_eq!(last.peer_node_id, Some(s.connection.peer_node_id));
        prop_assert_eq!(last.timestamp.as_deref(), Some(stamp.as_str()));
    }

    /// `status --json` is read back as the snapshot.
    #[test]
    fn the_agent_reads_status_json(s in snapshot()) {
        let text = status_json(Some(&s));
        let rs = agent::parse_status_json(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(rs.len(), 1);
        let r = &rs[0];
        prop_assert_eq!(&r.name, &s.name);
        prop_assert_eq!(r.node_id, Some(s.node_id));
        prop_assert_eq!(r.role.as_str(), s.role.to_string());
        let d = &r.devices[&s.device.volume];
        prop_assert_eq!(d.disk.as_str(), s.device.disk.to_string());
        prop_assert_eq!(d.size_kib, Some(s.device.size));
        prop_assert_eq!(d.quorum, Some(s.device.quorum));
        let c = &r.connections[&s.connection.peer_node_id];
        prop_assert_eq!(&c.conn_name, &s.connection.conn_name);
        prop_assert_eq!(c.connection.as_str(), s.connection.connection.to_string());
        prop_assert_eq!(c.peer_role.as_str(), s.connection.peer_role.to_string());
        let pd = &s.peer_device;
        let p = &c.peer_devices[&pd.volume];
        prop_assert_eq!(p.replication.as_str(), pd.replication.to_string());
        prop_assert_eq!(p.peer_disk.as_str(), pd.peer_disk.to_string());
        prop_assert_eq!(p.out_of_sync_kib, Some(pd.out_of_sync));
        if pd.replication.is_syncing() {
            prop_assert_eq!(p.done_percent, Some(two_decimals(pd.done.unwrap_or(0.0))));
            prop_assert_eq!(p.eta_seconds, Some(pd.eta.unwrap_or(0) as f64));
        }
        prop_assert!(agent::summarize(r).unknown.iter().all(|u| !u.contains("disk") && !u.contains("replication")));
    }
}
