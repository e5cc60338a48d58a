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
    /// This node keeps its agents' sessions open: it leads, or it is still
    /// the Raft leader and its lease lapsed less than one more lease ago
    /// ([`holds_sessions`]). It acts on nothing while it only holds them.
    pub holds_sessions: bool,
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
    pub term: u64,
}

/// Whether a node keeps its agents' sessions: while it leads, and while it
/// is still the Raft leader (no other term seen) with its lease lapsed for
/// less than `grace` (one more lease).
///
/// A lapse of the lease stops everything the leader does at once (no
/// decision, command or answer: S6). Its sessions are another matter: closing
/// them sends every agent to dial again, and at thousands of agents a lapse
/// of a few hundred milliseconds (a busy machine: the followers' answers
/// late) became a storm of re-opened sessions that kept the machine busy and
/// the lease lapsing (ARCHITECTURE.md, Scale). A stall that passes within the
/// grace costs nothing now. Past it, or as soon as this node is no longer
/// the Raft leader (a higher term seen), the sessions are redirected as
/// before; by then, if the others elected a leader (they may from one lease
/// after the last acknowledgement), the agents find it at once, where at the
/// lapse itself they would have found no leader yet.
pub fn holds_sessions(
    raft_leader: bool,
    lease_ok: bool,
    lapsed_for: Option<Duration>,
    grace: Duration,
) -> bool {
    raft_leader && (lease_ok || lapsed_for.is_some_and(|d| d < grace))
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

/// The leader's address a [`not_leader`] answer names, for the client to
/// retry there.
pub fn referral(st: &tonic::Status) -> Option<&str> {
    st.metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
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

#[cfg(test)]
mod tests {
    use super::holds_sessions;
    use std::time::Duration;

    #[test]
    fn sessions_outlive_a_lapse_of_the_lease_by_one_lease_and_no_more() {
        let ms = Duration::from_millis;
        let grace = ms(400);
        // Leading: held.
        assert!(holds_sessions(true, true, None, grace));
        // Not the Raft leader (another term): never held, lease or not.
        for lapsed in [None, Some(ms(0)), Some(ms(100))] {
            assert!(!holds_sessions(false, false, lapsed, grace));
            assert!(!holds_sessions(false, true, lapsed, grace));
        }
        // Lapsed: held for less than the grace, then released.
        for t in (0..400).step_by(25) {
            assert!(holds_sessions(true, false, Some(ms(t)), grace), "{t}");
        }
        for t in [400, 401, 800, 10_000] {
            assert!(!holds_sessions(true, false, Some(ms(t)), grace), "{t}");
        }
        // A lapse not timed (never happens: the caller starts the clock with
        // the lapse) is not held.
        assert!(!holds_sessions(true, false, None, grace));
    }
}
