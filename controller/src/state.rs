//! The replicated state: the inventory of pairs and each pair's state.
//!
//! Everything here is committed through Raft, so it survives the loss of any
//! minority of controllers and a restart of all of them. What changes often and
//! matters only to the current leader (agent heartbeats, the latest DRBD report of
//! each server) is deliberately NOT here: it lives in memory on the leader (see
//! `liveness.rs`) and only the *decisions* taken from it are committed.
//!
//! `ClusterState::apply` is a pure function of (state, request): every node applies
//! the same log and reaches the same state.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many history records are kept per pair (oldest dropped first).
pub const HISTORY_LIMIT: usize = 200;

/// The states of a pair (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairState {
    /// Primary serving, backup UpToDate and in sync.
    Healthy,
    /// One witness of a failure is present; waiting for confirmation.
    Suspect,
    /// A failover plan is running.
    FailingOver,
    /// Serving without a usable backup.
    Degraded,
    /// The backup is (re)synchronising, or has not yet been seen in sync.
    Rebuilding,
    /// Automatic action refused by a safety rule; a person must act.
    Blocked,
    /// Maintenance: the controller takes no automatic action.
    Paused,
    /// A planned switchover is running.
    SwitchingOver,
}

impl fmt::Display for PairState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One server of a pair, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    pub id: String,
    /// Management address of the host (informational; agents dial the controller).
    pub address: String,
    pub zone: String,
    /// Cloud volumes backing the DRBD resource on this server.
    #[serde(default)]
    pub volumes: Vec<String>,
}

/// A pair as configured by the operator (the inventory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSpec {
    pub id: String,
    /// DRBD resource name replicated between the two servers.
    pub resource: String,
    /// The client-facing address NFS clients mount through.
    pub client_ip: String,
    /// Availability zone of the pair's volumes.
    pub zone: String,
    pub primary: ServerSpec,
    pub backup: ServerSpec,
}

/// One line of a pair's audit history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_unix_ms: i64,
    pub epoch: u64,
    pub event: String,
}

/// A pair as replicated: its spec plus its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub spec: PairSpec,
    pub state: PairState,
    pub state_reason: String,
    /// Failover epoch (S4); raised by every failover or manual role change.
    pub epoch: u64,
    pub state_since_unix_ms: i64,
    pub history: Vec<HistoryEntry>,
}

impl PairRecord {
    fn record(&mut self, at_unix_ms: i64, event: String) {
        self.history.push(HistoryEntry {
            at_unix_ms,
            epoch: self.epoch,
            event,
        });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

/// The whole replicated application state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub pairs: BTreeMap<String, PairRecord>,
}

/// A change proposed to the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Make the inventory match the configuration: add new pairs, update the spec
    /// of existing ones (their state is kept), remove pairs no longer configured.
    SyncInventory {
        pairs: Vec<PairSpec>,
        at_unix_ms: i64,
    },
    /// Move a pair to a new state, if it is still in `expect` (compare-and-set, so
    /// a decision taken on a stale view by an old leader cannot clobber a newer one).
    SetPairState {
        pair_id: String,
        expect: PairState,
        state: PairState,
        reason: String,
        at_unix_ms: i64,
    },
}

/// What applying a request did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Nothing to say (blank and membership entries).
    None,
    /// The inventory sync result.
    Inventory {
        added: Vec<String>,
        updated: Vec<String>,
        removed: Vec<String>,
    },
    /// The state change happened.
    StateChanged { epoch: u64 },
    /// The state change was refused; the pair's state is unchanged.
    Refused { reason: String },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::SyncInventory { pairs, .. } => {
                write!(f, "SyncInventory({} pairs)", pairs.len())
            }
            Request::SetPairState {
                pair_id,
                expect,
                state,
                ..
            } => write!(f, "SetPairState({pair_id}: {expect} -> {state})"),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl ClusterState {
    /// Apply one request. Pure: same state and request, same result, on every node.
    pub fn apply(&mut self, req: &Request) -> Response {
        match req {
            Request::SyncInventory { pairs, at_unix_ms } => self.sync_inventory(pairs, *at_unix_ms),
            Request::SetPairState {
                pair_id,
                expect,
                state,
                reason,
                at_unix_ms,
            } => {
                let Some(pair) = self.pairs.get_mut(pair_id) else {
                    return Response::Refused {
                        reason: format!("pair {pair_id} is not in the inventory"),
                    };
                };
                if pair.state != *expect {
                    return Response::Refused {
                        reason: format!(
                            "pair {pair_id} is {} now, not {expect}; decision taken on a stale view",
                            pair.state
                        ),
                    };
                }
                let from = pair.state;
                pair.state = *state;
                pair.state_reason = reason.clone();
                pair.state_since_unix_ms = *at_unix_ms;
                pair.record(*at_unix_ms, format!("{from} -> {state}: {reason}"));
                Response::StateChanged { epoch: pair.epoch }
            }
        }
    }

    fn sync_inventory(&mut self, pairs: &[PairSpec], at: i64) -> Response {
        let (mut added, mut updated, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for spec in pairs {
            match self.pairs.get_mut(&spec.id) {
                Some(rec) if rec.spec == *spec => {}
                Some(rec) => {
                    rec.spec = spec.clone();
                    rec.record(at, "inventory updated from configuration".into());
                    updated.push(spec.id.clone());
                }
                None => {
                    let mut rec = PairRecord {
                        spec: spec.clone(),
                        state: PairState::Rebuilding,
                        state_reason: "new pair: backup not yet seen in sync".into(),
                        epoch: 0,
                        state_since_unix_ms: at,
                        history: Vec::new(),
                    };
                    rec.record(at, "pair added to the inventory".into());
                    self.pairs.insert(spec.id.clone(), rec);
                    added.push(spec.id.clone());
                }
            }
        }
        let keep: std::collections::BTreeSet<&str> = pairs.iter().map(|p| p.id.as_str()).collect();
        self.pairs.retain(|id, _| {
            let k = keep.contains(id.as_str());
            if !k {
                removed.push(id.clone());
            }
            k
        });
        Response::Inventory {
            added,
            updated,
            removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, ip: &str) -> PairSpec {
        let server = |sid: &str| ServerSpec {
            id: sid.into(),
            address: "127.0.0.1".into(),
            zone: "z1".into(),
            volumes: vec![format!("vol-{sid}")],
        };
        PairSpec {
            id: id.into(),
            resource: "r0".into(),
            client_ip: ip.into(),
            zone: "z1".into(),
            primary: server(&format!("{id}-a")),
            backup: server(&format!("{id}-b")),
        }
    }

    #[test]
    fn inventory_sync_adds_updates_removes_and_keeps_state() {
        let mut st = ClusterState::default();
        let r = st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.10"), spec("p2", "198.18.0.11")],
            at_unix_ms: 1,
        });
        assert_eq!(
            r,
            Response::Inventory {
                added: vec!["p1".into(), "p2".into()],
                updated: vec![],
                removed: vec![]
            }
        );
        assert_eq!(st.pairs["p1"].state, PairState::Rebuilding);
        st.apply(&Request::SetPairState {
            pair_id: "p1".into(),
            expect: PairState::Rebuilding,
            state: PairState::Healthy,
            reason: "in sync".into(),
            at_unix_ms: 2,
        });
        let r = st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.20")],
            at_unix_ms: 3,
        });
        assert_eq!(
            r,
            Response::Inventory {
                added: vec![],
                updated: vec!["p1".into()],
                removed: vec!["p2".into()]
            }
        );
        assert_eq!(
            st.pairs["p1"].state,
            PairState::Healthy,
            "state survives a spec update"
        );
        assert_eq!(st.pairs["p1"].spec.client_ip, "198.18.0.20");
        // Same config again: no change at all.
        let before = st.clone();
        st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.20")],
            at_unix_ms: 4,
        });
        assert_eq!(st, before);
    }

    #[test]
    fn set_state_is_compare_and_set() {
        let mut st = ClusterState::default();
        st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.10")],
            at_unix_ms: 1,
        });
        let stale = Request::SetPairState {
            pair_id: "p1".into(),
            expect: PairState::Healthy,
            state: PairState::Blocked,
            reason: "x".into(),
            at_unix_ms: 2,
        };
        assert!(matches!(st.apply(&stale), Response::Refused { .. }));
        assert_eq!(st.pairs["p1"].state, PairState::Rebuilding);
        let unknown = Request::SetPairState {
            pair_id: "nope".into(),
            expect: PairState::Healthy,
            state: PairState::Blocked,
            reason: "x".into(),
            at_unix_ms: 2,
        };
        assert!(matches!(st.apply(&unknown), Response::Refused { .. }));
    }

    #[test]
    fn history_is_bounded() {
        let mut st = ClusterState::default();
        st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.10")],
            at_unix_ms: 0,
        });
        let mut cur = PairState::Rebuilding;
        for i in 0..(HISTORY_LIMIT as i64 + 50) {
            let next = if cur == PairState::Healthy {
                PairState::Rebuilding
            } else {
                PairState::Healthy
            };
            st.apply(&Request::SetPairState {
                pair_id: "p1".into(),
                expect: cur,
                state: next,
                reason: "flip".into(),
                at_unix_ms: i,
            });
            cur = next;
        }
        let h = &st.pairs["p1"].history;
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(h.last().unwrap().at_unix_ms, HISTORY_LIMIT as i64 + 49);
    }
}
