//! The small leader-state type every service module depends on (instead of on
//! `node`): who leads as seen from this node, the Raft commit helper, the clock
//! for history records.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::raft::Raft;
use crate::state::{Request, Response};

/// Who leads, as seen from this node. `is_leader` is true only while this node
/// is the Raft leader *and* a quorum acknowledged it within its lease (S6).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaderView {
    pub is_leader: bool,
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
    pub term: u64,
}

/// gRPC metadata key carrying the leader's address on a redirect.
pub const LEADER_METADATA: &str = "understudy-leader";

/// What a node that is not the leader answers a request only the leader may
/// take: `FAILED_PRECONDITION`, with the leader's address (if known) in the
/// `understudy-leader` metadata so the client retries there.
pub fn not_leader(view: &LeaderView) -> tonic::Status {
    let mut st = tonic::Status::failed_precondition(match &view.leader_addr {
        Some(a) => format!("this controller is not the leader; the leader is at {a}"),
        None => "no leader is known yet; retry in a moment".into(),
    });
    if let Some(a) = &view.leader_addr {
        if let Ok(v) = a.parse() {
            st.metadata_mut().insert(LEADER_METADATA, v);
        }
    }
    st
}

/// Milliseconds since the Unix epoch, for history records.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Commit a request through Raft (only a leader with a quorum can) and return
/// what applying it said; the error names the request.
pub async fn write(raft: &Raft, req: Request) -> Result<Response, String> {
    let what = req.to_string();
    match tokio::time::timeout(Duration::from_secs(3), raft.client_write(req)).await {
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(e)) => Err(format!("{what} not committed: {e}")),
        Err(_) => Err(format!("{what} not committed within 3 s (no quorum?)")),
    }
}
