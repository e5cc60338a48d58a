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
        state,
        state_reason: "because".into(),
        epoch: 3,
        state_since_unix_ms: 0,
        ..PairRecord::new(
            PairSpec {
                id: "p".into(),
                resource: "r0".into(),
                client_ip: "198.18.0.100".into(),
                zone: "z".into(),
                primary: s("a"),
                backup: s("b"),
                ..Default::default()
            },
            0,
        )
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
