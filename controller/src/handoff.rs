//! The leader's handoff of agent sessions to its followers.
//!
//! A follower relays the sessions of the agents that dial it (`crate::relay`),
//! so the leader holds one connection per follower for them. An agent that
//! dials the leader itself would cost the leader its own TLS connection and
//! HTTP/2 state (about 41 KB, against about 14 KB for a relayed session, and a
//! `write` per message: ARCHITECTURE.md, Scale), and a third of the agents
//! dial it first. So the leader hands each such agent to a healthy follower:
//! it answers the `Hello` with a `Redirect` naming itself as leader and the
//! follower as `via_addr`, and the agent opens its session there at once.
//!
//! Only an agent that says it follows handoffs (`Hello.handoff_ok`) is handed
//! off, and never a relayed session. The agent sends `handoff_ok = false` for a
//! while after a follower it was handed to did not serve it (relaying turned
//! off there, or it could not reach the leader): the leader then serves it
//! itself, so the two never bounce an agent between them. A follower counts as
//! healthy while it acknowledged the leader's Raft heartbeats within the
//! lease; the agents are spread over the healthy followers by a stable hash of
//! their server id.

use std::time::Duration;

/// A follower the leader may hand agents to: its id and agent-facing address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follower {
    pub id: u64,
    pub addr: String,
}

/// The followers of `leader` that acknowledged its Raft heartbeats within
/// `lease`, from the leader's metrics (none on a node that does not lead).
pub fn healthy_followers(
    m: &openraft::RaftMetrics<crate::raft::TypeConfig>,
    leader: u64,
    lease: Duration,
) -> Vec<Follower> {
    let Some(acked) = m.heartbeat.as_ref() else {
        return Vec::new();
    };
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let nodes: Vec<Candidate> = membership
        .nodes()
        .map(|(id, node)| Candidate {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            acked_ago: acked
                .get(id)
                .and_then(|t| t.as_ref())
                .map(|t| openraft::Instant::elapsed(&**t)),
        })
        .collect();
    healthy(leader, lease, nodes)
}

/// A member as the leader's metrics show it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    /// How long ago it last acknowledged the leader (never: `None`).
    pub acked_ago: Option<Duration>,
}

/// The voters other than `leader` that acknowledged it within `lease`; pure.
pub fn healthy(leader: u64, lease: Duration, nodes: Vec<Candidate>) -> Vec<Follower> {
    nodes
        .into_iter()
        .filter(|c| c.id != leader && c.voter && c.acked_ago.is_some_and(|a| a < lease))
        .map(|c| Follower {
            id: c.id,
            addr: c.addr,
        })
        .collect()
}

/// Which of `followers` serves `server_id`'s agent: a stable hash of the id
/// over them (sorted by id), so each gets its share and an agent goes to the
/// same one every time the same followers are healthy.
pub fn pick<'a>(server_id: &str, followers: &'a [Follower]) -> Option<&'a Follower> {
    if followers.is_empty() {
        return None;
    }
    let mut sorted: Vec<&Follower> = followers.iter().collect();
    sorted.sort_by_key(|f| f.id);
    let h = crate::relay::stable_hash(server_id);
    Some(sorted[(h % sorted.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::{healthy, pick, Candidate, Follower};
    use std::time::Duration;

    fn f(id: u64) -> Follower {
        Follower {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
        }
    }

    #[test]
    fn only_voters_that_acknowledged_the_leader_within_its_lease_are_healthy() {
        let ms = Duration::from_millis;
        let c = |id, voter, acked_ago| Candidate {
            id,
            addr: format!("n{id}"),
            voter,
            acked_ago,
        };
        let nodes = vec![
            c(1, true, Some(ms(0))),   // the leader itself
            c(2, true, Some(ms(120))), // acknowledged recently
            c(3, true, Some(ms(900))), // past the lease: cut off, or dead
            c(4, true, None),          // never acknowledged this leader
            c(5, false, Some(ms(10))), // a learner
        ];
        let h = healthy(1, ms(500), nodes);
        assert_eq!(h.iter().map(|f| f.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(h[0].addr, "n2");
    }

    #[test]
    fn no_healthy_follower_no_handoff() {
        assert_eq!(pick("fs1-a", &[]), None);
    }

    #[test]
    fn agents_spread_evenly_and_stably_over_the_healthy_followers() {
        let both = [f(3), f(2)];
        let mut count = [0usize; 2];
        for i in 0..4000 {
            let id = format!("fs{i}-{}", if i % 2 == 0 { "a" } else { "b" });
            let p = pick(&id, &both).unwrap();
            // The order the followers come in does not matter.
            assert_eq!(Some(p), pick(&id, &[f(2), f(3)]));
            count[(p.id - 2) as usize] += 1;
        }
        assert!(
            count.iter().all(|&c| (1800..=2200).contains(&c)),
            "{count:?}"
        );
    }

    #[test]
    fn with_one_follower_left_every_agent_goes_to_it() {
        let one = [f(2)];
        for i in 0..100 {
            assert_eq!(pick(&format!("fs{i}-a"), &one).unwrap().id, 2);
        }
    }
}
