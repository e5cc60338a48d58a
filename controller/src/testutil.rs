//! Fixtures shared by the unit tests of the pure decision modules.

use understudy_proto::DrbdSummary;

use crate::state::{PairRecord, PairSpec, PairState, ServerSpec};

/// Pair `p` with file server `a` and backup `b`, in `state`, epoch 3.
pub fn pair(state: PairState) -> PairRecord {
    let s = |id: &str| ServerSpec {
        id: id.into(),
        zone: "z".into(),
        ..Default::default()
    };
    PairRecord {
        spec: PairSpec {
            id: "p".into(),
            resource: "r0".into(),
            client_ip: "198.18.0.100".into(),
            zone: "z".into(),
            primary: s("a"),
            backup: s("b"),
            ..Default::default()
        },
        state,
        state_reason: "because".into(),
        epoch: 3,
        state_since_unix_ms: 0,
        history: vec![],
        serving: None,
        failover: None,
        last_auto_failover_unix_ms: None,
        flap_acknowledged: false,
        outdated: None,
        holdoff_elapsed_ms: 0,
        redundancy: Default::default(),
        ops: Default::default(),
        stats: Default::default(),
    }
}

/// A DRBD summary as an agent reports it.
pub fn sum(
    role: &str,
    disk: &str,
    conn: &str,
    repl: &str,
    pdisk: &str,
    oos: Option<u64>,
) -> DrbdSummary {
    DrbdSummary {
        role: role.into(),
        disk: disk.into(),
        connection: conn.into(),
        replication: repl.into(),
        peer_disk: pdisk.into(),
        out_of_sync_bytes: oos,
        ..Default::default()
    }
}
