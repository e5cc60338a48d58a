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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    pub id: String,
    /// Management address of the host: agents dial the controller, the leader
    /// sends its direct liveness probes here (`probe_port`).
    pub address: String,
    pub zone: String,
    /// Cloud volumes backing the DRBD resource on this server.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The cloud's id of the instance (EC2 instance id; local backend: netns name).
    #[serde(default)]
    pub instance_id: String,
    /// The cloud's id of the interface that carries the client IP (EC2 ENI id;
    /// local backend: `netns:ifname`).
    #[serde(default)]
    pub interface_id: String,
    /// UDP port of the agent's probe responder on `address` (its `probe_listen`).
    #[serde(default = "default_probe_port")]
    pub probe_port: u16,
}

fn default_probe_port() -> u16 {
    crate::probe::DEFAULT_PROBE_PORT
}

fn default_prefix_len() -> u8 {
    24
}
fn default_nfs_port() -> u16 {
    2049
}
fn default_export_path() -> String {
    "/".into()
}

/// A pair as configured by the operator (the inventory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSpec {
    pub id: String,
    /// DRBD resource name replicated between the two servers.
    pub resource: String,
    /// The client-facing address NFS clients mount through.
    pub client_ip: String,
    /// Availability zone of the pair's volumes.
    pub zone: String,
    /// Prefix length of the client IP on the servers' interfaces.
    #[serde(default = "default_prefix_len")]
    pub client_ip_prefix_len: u8,
    /// NFS as clients reach it: port and the exported (pseudo) path, for Verify.
    #[serde(default = "default_nfs_port")]
    pub nfs_port: u16,
    #[serde(default = "default_export_path")]
    pub export_path: String,
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
    /// The server holding the primary role now; `None` means `spec.primary`.
    #[serde(default)]
    pub serving: Option<String>,
    /// The failover plan in flight, if any (at most one per pair, S5).
    #[serde(default)]
    pub failover: Option<FailoverPlan>,
    /// When the last automatic failover of this pair finished (S5 hold-off).
    #[serde(default)]
    pub last_auto_failover_unix_ms: Option<i64>,
    /// An operator acknowledged the last automatic failover (lifts the hold-off).
    #[serde(default)]
    pub flap_acknowledged: bool,
}

/// The steps of an automatic failover (SPEC §5), in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Step {
    /// Both witnesses still hold (S2); the evidence is recorded.
    Confirm,
    /// Client IP taken from the old primary, its network isolated, a forced stop
    /// requested (S3).
    Fence,
    /// `drbdadm primary` on the backup.
    Promote,
    /// The replicated filesystem mounted on the backup.
    Mount,
    /// NFS exported on the backup.
    Export,
    /// The client IP configured on the backup, gratuitous ARP sent.
    ClaimIp,
    /// An NFS read through the client IP succeeds.
    Verify,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 7] = [
        Step::Confirm,
        Step::Fence,
        Step::Promote,
        Step::Mount,
        Step::Export,
        Step::ClaimIp,
        Step::Verify,
    ];
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where a step stands; committed before it runs and after (S7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StepStatus {
    Pending,
    /// Started by the leader of `term`; a new leader re-runs it (steps are idempotent).
    Running {
        term: u64,
        started_unix_ms: i64,
    },
    Done {
        duration_ms: u64,
        detail: String,
    },
    Failed {
        duration_ms: u64,
        reason: String,
    },
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub status: StepStatus,
    /// How many times the step was started (more than 1 after a leader change).
    pub attempts: u32,
}

/// A failover in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverPlan {
    pub epoch: u64,
    /// The server being failed away from (fenced).
    pub from: String,
    /// The server taking over.
    pub to: String,
    pub reason: String,
    pub automatic: bool,
    pub started_unix_ms: i64,
    pub steps: Vec<StepRecord>,
}

impl FailoverPlan {
    /// The first step not done yet.
    pub fn next_step(&self) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|s| !matches!(s.status, StepStatus::Done { .. }))
    }
}

impl PairRecord {
    /// The id of the server holding the primary role now.
    pub fn serving_id(&self) -> &str {
        self.serving.as_deref().unwrap_or(&self.spec.primary.id)
    }

    /// The server that is (or would be) the backup now.
    pub fn standby_id(&self) -> &str {
        if self.serving_id() == self.spec.primary.id {
            &self.spec.backup.id
        } else {
            &self.spec.primary.id
        }
    }

    /// The spec of a member server by id.
    pub fn server(&self, id: &str) -> Option<&ServerSpec> {
        [&self.spec.primary, &self.spec.backup]
            .into_iter()
            .find(|s| s.id == id)
    }

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
    /// Start a failover plan (S5: refused while one is in flight). Raises the epoch.
    StartFailover {
        pair_id: String,
        expect: PairState,
        expect_epoch: u64,
        from: String,
        to: String,
        reason: String,
        automatic: bool,
        at_unix_ms: i64,
    },
    /// Record a step's new status (before it runs and after, S7).
    StepUpdate {
        pair_id: String,
        epoch: u64,
        step: Step,
        status: StepStatus,
        at_unix_ms: i64,
    },
    /// End the plan: `Degraded` (serving from `to`) or `Blocked`.
    FinishFailover {
        pair_id: String,
        epoch: u64,
        state: PairState,
        reason: String,
        at_unix_ms: i64,
    },
    /// An operator acknowledges the last automatic failover (lifts the S5 hold-off).
    Acknowledge { pair_id: String, at_unix_ms: i64 },
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
            Request::StartFailover {
                pair_id, from, to, ..
            } => write!(f, "StartFailover({pair_id}: {from} -> {to})"),
            Request::StepUpdate {
                pair_id,
                epoch,
                step,
                status,
                ..
            } => write!(f, "StepUpdate({pair_id}@{epoch}: {step} {status:?})"),
            Request::FinishFailover {
                pair_id,
                epoch,
                state,
                ..
            } => write!(f, "FinishFailover({pair_id}@{epoch}: {state})"),
            Request::Acknowledge { pair_id, .. } => write!(f, "Acknowledge({pair_id})"),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

fn refused(reason: String) -> Response {
    Response::Refused { reason }
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
            Request::StartFailover {
                pair_id,
                expect,
                expect_epoch,
                from,
                to,
                reason,
                automatic,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                if let Some(f) = &pair.failover {
                    return refused(format!(
                        "pair {pair_id}: failover epoch {} is already in flight (S5: one at a time)",
                        f.epoch
                    ));
                }
                if pair.state != *expect || pair.epoch != *expect_epoch {
                    return refused(format!(
                        "pair {pair_id} is {} at epoch {}, not {expect} at epoch {expect_epoch}; decision taken on a stale view",
                        pair.state, pair.epoch
                    ));
                }
                if pair.server(from).is_none() || pair.server(to).is_none() || from == to {
                    return refused(format!("pair {pair_id}: bad failover {from} -> {to}"));
                }
                let prev = pair.state;
                pair.epoch += 1;
                pair.state = PairState::FailingOver;
                pair.state_reason = reason.clone();
                pair.state_since_unix_ms = *at_unix_ms;
                pair.failover = Some(FailoverPlan {
                    epoch: pair.epoch,
                    from: from.clone(),
                    to: to.clone(),
                    reason: reason.clone(),
                    automatic: *automatic,
                    started_unix_ms: *at_unix_ms,
                    steps: Step::ALL
                        .iter()
                        .map(|s| StepRecord {
                            step: *s,
                            status: StepStatus::Pending,
                            attempts: 0,
                        })
                        .collect(),
                });
                pair.record(
                    *at_unix_ms,
                    format!(
                        "{prev} -> FailingOver: {} failover {from} -> {to}: {reason}",
                        if *automatic { "automatic" } else { "manual" }
                    ),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::StepUpdate {
                pair_id,
                epoch,
                step,
                status,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                let Some(plan) = pair.failover.as_mut().filter(|f| f.epoch == *epoch) else {
                    return refused(format!(
                        "pair {pair_id}: no failover at epoch {epoch} in flight (stale executor)"
                    ));
                };
                let Some(rec) = plan.steps.iter_mut().find(|r| r.step == *step) else {
                    return refused(format!("pair {pair_id}: unknown step {step}"));
                };
                if matches!(rec.status, StepStatus::Done { .. }) {
                    return refused(format!("pair {pair_id}: step {step} is already done"));
                }
                rec.status = status.clone();
                if matches!(status, StepStatus::Running { .. }) {
                    rec.attempts += 1;
                }
                let line = match status {
                    StepStatus::Pending => None,
                    StepStatus::Running { term, .. } => Some(format!(
                        "step {step} started (attempt {}, leader term {term})",
                        rec.attempts
                    )),
                    StepStatus::Done {
                        duration_ms,
                        detail,
                    } => Some(format!("step {step} done in {duration_ms} ms: {detail}")),
                    StepStatus::Failed {
                        duration_ms,
                        reason,
                    } => Some(format!(
                        "step {step} failed after {duration_ms} ms: {reason}"
                    )),
                };
                if let Some(l) = line {
                    pair.record(*at_unix_ms, l);
                }
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::FinishFailover {
                pair_id,
                epoch,
                state,
                reason,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                let Some(plan) = pair.failover.take_if(|f| f.epoch == *epoch) else {
                    return refused(format!(
                        "pair {pair_id}: no failover at epoch {epoch} in flight (stale executor)"
                    ));
                };
                if *state == PairState::Degraded {
                    pair.serving = Some(plan.to.clone());
                    if plan.automatic {
                        pair.last_auto_failover_unix_ms = Some(*at_unix_ms);
                        pair.flap_acknowledged = false;
                    }
                }
                pair.state = *state;
                pair.state_reason = reason.clone();
                pair.state_since_unix_ms = *at_unix_ms;
                pair.record(
                    *at_unix_ms,
                    format!(
                        "FailingOver -> {state}: {reason} (plan took {} ms)",
                        at_unix_ms - plan.started_unix_ms
                    ),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::Acknowledge {
                pair_id,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                pair.flap_acknowledged = true;
                pair.record(
                    *at_unix_ms,
                    "operator acknowledged the last failover".into(),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
        }
    }

    fn pair_mut(&mut self, id: &str) -> Result<&mut PairRecord, Response> {
        self.pairs
            .get_mut(id)
            .ok_or_else(|| refused(format!("pair {id} is not in the inventory")))
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
                        serving: None,
                        failover: None,
                        last_auto_failover_unix_ms: None,
                        flap_acknowledged: false,
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
            ..Default::default()
        };
        PairSpec {
            id: id.into(),
            resource: "r0".into(),
            client_ip: ip.into(),
            zone: "z1".into(),
            primary: server(&format!("{id}-a")),
            backup: server(&format!("{id}-b")),
            ..Default::default()
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

    #[test]
    fn failover_plan_lifecycle_is_one_at_a_time_and_epoch_guarded() {
        let mut st = ClusterState::default();
        st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.10")],
            at_unix_ms: 1,
        });
        let start = |expect_epoch| Request::StartFailover {
            pair_id: "p1".into(),
            expect: PairState::Rebuilding,
            expect_epoch,
            from: "p1-a".into(),
            to: "p1-b".into(),
            reason: "test".into(),
            automatic: true,
            at_unix_ms: 10,
        };
        assert!(
            matches!(st.apply(&start(7)), Response::Refused { .. }),
            "stale epoch"
        );
        assert_eq!(st.apply(&start(0)), Response::StateChanged { epoch: 1 });
        assert_eq!(st.pairs["p1"].state, PairState::FailingOver);
        // S5: a second plan is refused while one is in flight.
        let again = Request::StartFailover {
            pair_id: "p1".into(),
            expect: PairState::FailingOver,
            expect_epoch: 1,
            from: "p1-a".into(),
            to: "p1-b".into(),
            reason: "test".into(),
            automatic: true,
            at_unix_ms: 12,
        };
        let r = st.apply(&again);
        assert!(
            matches!(&r, Response::Refused { reason } if reason.contains("already in flight")),
            "{r:?}"
        );
        // Steps: running then done; a stale executor (old epoch) is refused.
        let upd = |epoch, step, status| Request::StepUpdate {
            pair_id: "p1".into(),
            epoch,
            step,
            status,
            at_unix_ms: 11,
        };
        let running = StepStatus::Running {
            term: 2,
            started_unix_ms: 11,
        };
        assert!(matches!(
            st.apply(&upd(0, Step::Confirm, running.clone())),
            Response::Refused { .. }
        ));
        for step in Step::ALL {
            st.apply(&upd(1, step, running.clone()));
            st.apply(&upd(
                1,
                step,
                StepStatus::Done {
                    duration_ms: 5,
                    detail: "ok".into(),
                },
            ));
        }
        // Done is final: a re-run after a leader change cannot overwrite it.
        assert!(matches!(
            st.apply(&upd(1, Step::Fence, running.clone())),
            Response::Refused { .. }
        ));
        let plan = st.pairs["p1"].failover.clone().unwrap();
        assert!(plan.next_step().is_none());
        assert!(plan.steps.iter().all(|s| s.attempts == 1));
        st.apply(&Request::FinishFailover {
            pair_id: "p1".into(),
            epoch: 1,
            state: PairState::Degraded,
            reason: "done".into(),
            at_unix_ms: 20,
        });
        let p = &st.pairs["p1"];
        assert_eq!(p.state, PairState::Degraded);
        assert_eq!(p.serving_id(), "p1-b");
        assert_eq!(p.standby_id(), "p1-a");
        assert!(p.failover.is_none());
        assert_eq!(p.last_auto_failover_unix_ms, Some(20));
        assert!(p
            .history
            .iter()
            .any(|h| h.event.contains("plan took 10 ms")));
    }
}
