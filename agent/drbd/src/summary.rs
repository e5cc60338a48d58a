//! A flat, one-line-per-resource view of a [`ResourceState`] for the
//! controller.
//!
//! Rules:
//!
//! * `disk`: the worst local volume by [`DiskState::rank`] (ties: lowest
//!   volume). No local volumes → `DiskState::Other("none")`.
//! * Peer fields come from ONE connection: the first in peer-node-id order
//!   (for the usual 2-node pair there is only one). No connection at all →
//!   `connection = ConnectionState::Other("none")`, `peer_role = Unknown`,
//!   `replication = Off`, `peer_disk = DUnknown` (what DRBD shows for a peer
//!   it cannot see). These synthetic `none` words are not listed in `unknown`.
//! * Over that connection's peer devices: `replication` is the first one
//!   (volume order) that is not `Established`, else the first; `peer_disk` is
//!   the worst; `done_percent` is the minimum and `eta_seconds` the maximum of
//!   the known values; `out_of_sync_bytes` is the sum of out-of-sync KiB × 1024
//!   — `None` if there are no peer devices, any value is missing, or any value
//!   is an underflowed counter ([`sane_counter`]).
//! * `quorum`: `Some(false)` if any volume reports no quorum, `Some(true)` if
//!   all that report it have quorum, `None` if none reports it.
//! * `unknown`: `object.key=value` for every `extra` key and every `Other(..)`
//!   word anywhere in the resource, where object is `resource`,
//!   `device[VOL]`, `connection[PEER]`, `peer-device[PEER][VOL]` or
//!   `path[PEER][INDEX]`.

use serde::{Deserialize, Serialize};

use crate::model::{
    sane_counter, ConnectionState, DiskState, ReplicationState, ResourceState, Role,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceSummary {
    pub name: String,
    pub role: Role,
    pub disk: DiskState,
    pub peer_role: Role,
    pub connection: ConnectionState,
    pub replication: ReplicationState,
    pub peer_disk: DiskState,
    pub done_percent: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub out_of_sync_bytes: Option<u64>,
    pub may_promote: Option<bool>,
    pub quorum: Option<bool>,
    pub unknown: Vec<String>,
}

fn worst<'a>(it: impl Iterator<Item = &'a DiskState>) -> Option<&'a DiskState> {
    // min_by_key returns the first minimum, i.e. the lowest volume on ties.
    it.min_by_key(|d| d.rank())
}

fn add_extra<'a>(
    out: &mut Vec<String>,
    obj: &str,
    extra: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (k, v) in extra {
        out.push(format!("{obj}.{k}={v}"));
    }
}

fn add_word(out: &mut Vec<String>, obj: &str, key: &str, is_other: bool, word: &str) {
    if is_other {
        out.push(format!("{obj}.{key}={word}"));
    }
}

fn unknown_items(r: &ResourceState) -> Vec<String> {
    let mut out = Vec::new();
    add_word(
        &mut out,
        "resource",
        "role",
        r.role.is_other(),
        r.role.as_str(),
    );
    add_extra(&mut out, "resource", &r.extra);
    for (vol, d) in &r.devices {
        let obj = format!("device[{vol}]");
        add_word(&mut out, &obj, "disk", d.disk.is_other(), d.disk.as_str());
        add_extra(&mut out, &obj, &d.extra);
    }
    for (id, c) in &r.connections {
        let obj = format!("connection[{id}]");
        let cs = &c.connection;
        add_word(&mut out, &obj, "connection", cs.is_other(), cs.as_str());
        let pr = &c.peer_role;
        add_word(&mut out, &obj, "role", pr.is_other(), pr.as_str());
        add_extra(&mut out, &obj, &c.extra);
        for (vol, p) in &c.peer_devices {
            let obj = format!("peer-device[{id}][{vol}]");
            let rs = &p.replication;
            add_word(&mut out, &obj, "replication", rs.is_other(), rs.as_str());
            let pd = &p.peer_disk;
            add_word(&mut out, &obj, "peer-disk", pd.is_other(), pd.as_str());
            add_extra(&mut out, &obj, &p.extra);
        }
        for (i, p) in c.paths.iter().enumerate() {
            add_extra(&mut out, &format!("path[{id}][{i}]"), &p.extra);
        }
    }
    out
}

/// Summarise one resource (see the module docs for the rules).
pub fn summarize(r: &ResourceState) -> ResourceSummary {
    let disk = worst(r.devices.values().map(|d| &d.disk))
        .cloned()
        .unwrap_or_else(|| DiskState::Other("none".into()));

    let quorums: Vec<bool> = r.devices.values().filter_map(|d| d.quorum).collect();
    let quorum = if quorums.is_empty() {
        None
    } else {
        Some(quorums.iter().all(|q| *q))
    };

    let mut s = ResourceSummary {
        name: r.name.clone(),
        role: r.role.clone(),
        disk,
        peer_role: Role::Unknown,
        connection: ConnectionState::Other("none".into()),
        replication: ReplicationState::Off,
        peer_disk: DiskState::DUnknown,
        done_percent: None,
        eta_seconds: None,
        out_of_sync_bytes: None,
        may_promote: r.may_promote,
        quorum,
        unknown: unknown_items(r),
    };

    let Some(c) = r.connections.values().next() else {
        return s;
    };
    s.peer_role = c.peer_role.clone();
    s.connection = c.connection.clone();
    let pds: Vec<_> = c.peer_devices.values().collect();
    if let Some(first) = pds.first() {
        s.replication = pds
            .iter()
            .find(|p| p.replication != ReplicationState::Established)
            .unwrap_or(first)
            .replication
            .clone();
    }
    if let Some(d) = worst(pds.iter().map(|p| &p.peer_disk)) {
        s.peer_disk = d.clone();
    }
    // Progress counts only while a resync runs: DRBD stops printing `done:`
    // when it ends, and a merged state would otherwise keep the last value.
    let resyncing = |p: &&&crate::model::PeerDeviceState| {
        matches!(
            p.replication,
            ReplicationState::SyncSource
                | ReplicationState::SyncTarget
                | ReplicationState::PausedSyncS
                | ReplicationState::PausedSyncT
                | ReplicationState::VerifyS
                | ReplicationState::VerifyT
        )
    };
    s.done_percent = pds
        .iter()
        .filter(resyncing)
        .filter_map(|p| p.done_percent)
        .reduce(f64::min);
    s.eta_seconds = pds
        .iter()
        .filter(resyncing)
        .filter_map(|p| p.eta_seconds)
        .reduce(f64::max);
    if !pds.is_empty() {
        s.out_of_sync_bytes = pds.iter().try_fold(0u64, |acc, p| {
            let kib = sane_counter(p.out_of_sync_kib?)?;
            acc.checked_add(kib.checked_mul(1024)?)
        });
    }
    s
}
