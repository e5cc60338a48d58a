//! Conversion of the typed DRBD state into the wire report.
//!
//! State words travel as DRBD prints them, so words this version does not know
//! reach the controller unchanged; the summary's `unknown` list names them.

use understudy_drbd::summary::summarize;
use understudy_drbd::{sane_counter, DrbdState};
use understudy_proto::{
    DrbdConnection, DrbdDevice, DrbdPeerDevice, DrbdResource, DrbdStatus, DrbdSummary,
};

/// The report of everything the observer sees.
pub fn drbd_status(state: &DrbdState, last_error: &str, restarts: u32) -> DrbdStatus {
    DrbdStatus {
        observer_running: state.initial_dump_done,
        observer_error: last_error.to_owned(),
        observer_restarts: restarts,
        resources: state
            .resources
            .values()
            .map(|r| {
                let s = summarize(r);
                DrbdResource {
                    name: r.name.clone(),
                    role: r.role.to_string(),
                    may_promote: r.may_promote,
                    promotion_score: r.promotion_score,
                    suspended: r.suspended,
                    devices: r
                        .devices
                        .values()
                        .map(|d| DrbdDevice {
                            volume: d.volume,
                            minor: d.minor,
                            disk: d.disk.to_string(),
                            quorum: d.quorum,
                            client: d.client,
                            size_kib: d.size_kib.and_then(sane_counter),
                        })
                        .collect(),
                    connections: r
                        .connections
                        .values()
                        .map(|c| DrbdConnection {
                            peer_node_id: c.peer_node_id,
                            conn_name: c.conn_name.clone(),
                            connection: c.connection.to_string(),
                            peer_role: c.peer_role.to_string(),
                            peer_devices: c
                                .peer_devices
                                .values()
                                .map(|p| DrbdPeerDevice {
                                    volume: p.volume,
                                    replication: p.replication.to_string(),
                                    peer_disk: p.peer_disk.to_string(),
                                    done_percent: p.done_percent,
                                    eta_seconds: p.eta_seconds,
                                    out_of_sync_kib: p.out_of_sync_kib.and_then(sane_counter),
                                })
                                .collect(),
                        })
                        .collect(),
                    summary: Some(DrbdSummary {
                        role: s.role.to_string(),
                        disk: s.disk.to_string(),
                        peer_role: s.peer_role.to_string(),
                        connection: s.connection.to_string(),
                        replication: s.replication.to_string(),
                        peer_disk: s.peer_disk.to_string(),
                        done_percent: s.done_percent,
                        eta_seconds: s.eta_seconds,
                        out_of_sync_bytes: s.out_of_sync_bytes,
                        quorum: s.quorum,
                    }),
                    unknown: s.unknown,
                    // Filled in by the observer, which remembers it across reports.
                    last_connected: None,
                    // Attached by `net_options`, which reads them separately.
                    net: None,
                }
            })
            .collect(),
    }
}
