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

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// How many history records of a pair stay live in the replicated state (what
/// the status, `watch` and decisions see). The storage (`raft/store.rs`) moves
/// older ones to its history archive after every applied batch: they stay
/// readable through `understudyctl history --pair` and travel in snapshots.
pub const HISTORY_LIMIT: usize = 64;

/// A safety cap applied by [`ClusterState::apply`] itself (oldest dropped
/// first), for a state used without the storage's compaction. Far above what
/// one applied batch adds to one pair, so the storage compacts long before.
pub const HISTORY_CAP: usize = 10_000;

mod operator;
mod redundancy;
pub mod stats;
pub use operator::*;
pub use redundancy::*;

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
    /// DRBD node id of this server in the resource; default 0 for the configured
    /// primary, 1 for the backup. A replacement inherits the replaced server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u32>,
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
fn default_drbd_port() -> u16 {
    7789
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
    /// DRBD replication port on every server of the pair.
    #[serde(default = "default_drbd_port")]
    pub drbd_port: u16,
    pub primary: ServerSpec,
    pub backup: ServerSpec,
}

/// One line of a pair's audit history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_unix_ms: i64,
    pub epoch: u64,
    pub event: String,
}

/// A pair as replicated: its spec plus its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The standby lost replication while the serving server was still alive, so
    /// it may lack acknowledged writes: it is outdated (S1, as DRBD's fence-peer
    /// handler marks it) until it is seen in sync again (the pair `Healthy`).
    #[serde(default)]
    pub outdated: Option<OutdatedMark>,
    /// S5: how long the hold-off after the last automatic failover has run, as
    /// measured by the leaders' monotonic clocks and committed in ticks
    /// (`Request::HoldoffElapsed`), so no wall-clock step lifts it early.
    #[serde(default)]
    pub holdoff_elapsed_ms: u64,
    /// Spare, rebuild, replaced and retired servers.
    #[serde(default)]
    pub redundancy: Redundancy,
    /// Pause, maintenance window, scheduled switchover.
    #[serde(default)]
    pub ops: Operations,
    /// What its plans did: counts, step durations, the last ones (metrics,
    /// dashboard timeline).
    #[serde(default)]
    pub stats: stats::PairStats,
}

/// Why and since when a standby is known to be outdated (S1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutdatedMark {
    /// The server whose data may be missing writes.
    pub server: String,
    /// When replication to it was lost (wall clock of the leader that saw it).
    pub lost_peer_unix_ms: i64,
    /// When the serving server was last known alive after that loss.
    pub primary_alive_unix_ms: i64,
    /// Who said so: the leader's view of the reports, or a DRBD fence-peer handler.
    pub source: String,
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
    /// Reattach (S9): the spare is running and its agent registered.
    WaitSpare,
    /// Reattach: the dead primary's volumes force-detached, confirmed
    /// `available`, attached to the spare (same zone, checked), confirmed `in-use`.
    MoveVolumes,
    /// Reattach: committed inventory change, the spare replaces the dead primary.
    Adopt,
    /// Reattach: on the spare, DRBD up on the moved volumes (peer: the old backup).
    BringUp,
    /// Reattach, after Verify: the old backup pointed at the new primary, so it
    /// resyncs from it (skipped, and said so, when its agent is unreachable).
    Repoint,
    /// Switchover: the backup is UpToDate, connected and in sync now.
    Check,
    /// Switchover: the client IP released by the old primary.
    ReleaseOld,
    /// Switchover: NFS no longer exported by the old primary.
    UnexportOld,
    /// Switchover: the file system unmounted on the old primary.
    UnmountOld,
    /// Switchover: `drbdadm secondary` on the old primary.
    DemoteOld,
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

    /// The reattach plan (S9): no usable backup, the dead primary's volumes move
    /// to a spare, which serves from them.
    pub const REATTACH: [Step; 12] = [
        Step::Confirm,
        Step::Fence,
        Step::WaitSpare,
        Step::MoveVolumes,
        Step::Adopt,
        Step::BringUp,
        Step::Promote,
        Step::Mount,
        Step::Export,
        Step::ClaimIp,
        Step::Verify,
        Step::Repoint,
    ];

    /// A planned switchover (SPEC §5): no fence, the old primary steps down first.
    pub const SWITCHOVER: [Step; 10] = [
        Step::Check,
        Step::ReleaseOld,
        Step::UnexportOld,
        Step::UnmountOld,
        Step::DemoteOld,
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

/// The steps of standing down a server that serves while it is not the pair's
/// serving server (S10), in the order they run. All run on the standby, with the
/// pair's current epoch as fencing token, except those of [`StandDownStep::on_serving`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StandDownStep {
    /// The client IP removed from the standby's interface.
    ReleaseIp,
    /// Right after `ReleaseIp`: the serving server, which holds the client IP,
    /// announces it again (gratuitous ARP), so clients that learned the
    /// standby's MAC meanwhile come back to it.
    AnnounceServingIp,
    /// NFS no longer exported by the standby.
    UnexportNfs,
    /// The replicated filesystem unmounted on the standby.
    Unmount,
    /// `drbdadm secondary` on the standby.
    Demote,
    /// `drbdadm disconnect; drbdadm connect --discard-my-data` on the standby: its
    /// divergent data is thrown away and resynchronised from the serving server.
    DiscardAndReconnect,
    /// `drbdadm disconnect; drbdadm connect` on the serving server, which went
    /// `StandAlone` on the split brain with the old primary: it listens again so
    /// the stood-down standby can resynchronise from it.
    ReconnectServing,
}

impl StandDownStep {
    /// Whether the step runs on the serving server (otherwise on the standby).
    pub fn on_serving(self) -> bool {
        matches!(
            self,
            StandDownStep::AnnounceServingIp | StandDownStep::ReconnectServing
        )
    }
}

impl fmt::Display for StandDownStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where a stand-down step stands: `Started` is committed before its command is
/// sent, `Done`/`Failed` after (S10, like S7 for failover steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StandDownStatus {
    Started { term: u64 },
    Done { duration_ms: u64, detail: String },
    Failed { duration_ms: u64, reason: String },
}

/// Where a step stands; committed before it runs and after (S7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub status: StepStatus,
    /// How many times the step was started (more than 1 after a leader change).
    pub attempts: u32,
}

/// A failover in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A manual promotion that accepted data loss (S8): `drbdadm primary --force`.
    #[serde(default)]
    pub force: bool,
}

impl FailoverPlan {
    /// A plan of `steps`, all pending.
    pub fn new(
        epoch: u64,
        from: &str,
        to: &str,
        reason: &str,
        automatic: bool,
        started_unix_ms: i64,
        steps: &[Step],
    ) -> FailoverPlan {
        FailoverPlan {
            epoch,
            from: from.to_string(),
            to: to.to_string(),
            reason: reason.to_string(),
            automatic,
            started_unix_ms,
            steps: steps
                .iter()
                .map(|s| StepRecord {
                    step: *s,
                    status: StepStatus::Pending,
                    attempts: 0,
                })
                .collect(),
            force: false,
        }
    }

    /// A reattach plan (S9) rather than a failover to the backup.
    pub fn is_reattach(&self) -> bool {
        self.steps.iter().any(|s| s.step == Step::MoveVolumes)
    }

    /// The first step not done yet.
    pub fn next_step(&self) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|s| !matches!(s.status, StepStatus::Done { .. }))
    }

    /// `failover`, `reattach`, `switchover` or `promote` (metrics, timeline).
    pub fn kind(&self) -> &'static str {
        if self.is_reattach() {
            "reattach"
        } else if self.steps.iter().any(|s| s.step == Step::Check) {
            "switchover"
        } else if self.automatic {
            "failover"
        } else {
            "promote"
        }
    }

    /// The plan as it finished, for [`stats::PairStats::finish`].
    fn finished(&self, at_unix_ms: i64, state: PairState, reason: &str) -> stats::FinishedPlan {
        stats::FinishedPlan {
            kind: self.kind().into(),
            epoch: self.epoch,
            from: self.from.clone(),
            to: self.to.clone(),
            automatic: self.automatic,
            started_unix_ms: self.started_unix_ms,
            finished_unix_ms: at_unix_ms,
            outcome: match state {
                PairState::Degraded | PairState::Healthy => "succeeded",
                PairState::Suspect => "aborted",
                _ => "failed",
            }
            .into(),
            end: format!("{state}: {reason}"),
            steps: self.steps.iter().map(StepRecord::finished).collect(),
        }
    }
}

impl StepRecord {
    /// The step as a finished plan's timeline shows it.
    pub fn finished(&self) -> stats::FinishedStep {
        stats::FinishedStep::of(&self.step.to_string(), &self.status, self.attempts)
    }
}

impl PairRecord {
    /// A pair as it enters the inventory at `at`: epoch 0, `Rebuilding` until
    /// its backup is seen in sync, nothing in flight, no history.
    pub fn new(spec: PairSpec, at: i64) -> Self {
        PairRecord {
            spec,
            state: PairState::Rebuilding,
            state_reason: "new pair: backup not yet seen in sync".into(),
            epoch: 0,
            state_since_unix_ms: at,
            history: Vec::new(),
            serving: None,
            failover: None,
            last_auto_failover_unix_ms: None,
            flap_acknowledged: false,
            outdated: None,
            holdoff_elapsed_ms: 0,
            redundancy: Redundancy::default(),
            ops: Operations::default(),
            stats: Default::default(),
        }
    }

    /// An automatic plan may start: none in flight (S5), and the pair is still
    /// in the state and at the epoch the decision saw.
    fn may_start_plan(&self, expect: PairState, expect_epoch: u64) -> Result<(), Response> {
        let pair_id = &self.spec.id;
        if let Some(f) = &self.failover {
            return Err(refused(format!(
                "pair {pair_id}: failover epoch {} is already in flight (S5: one at a time)",
                f.epoch
            )));
        }
        if self.state != expect || self.epoch != expect_epoch {
            return Err(refused(format!(
                "pair {pair_id} is {} at epoch {}, not {expect} at epoch {expect_epoch}; decision taken on a stale view",
                self.state, self.epoch
            )));
        }
        Ok(())
    }

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
        if self.history.len() > HISTORY_CAP {
            let excess = self.history.len() - HISTORY_CAP;
            self.history.drain(..excess);
        }
    }
}

/// The pairs by id, in id order: a persistent map (`imbl::OrdMap`), so that
/// a copy of the state shares the whole tree and a change copies only the
/// path to the record it changes, as the records themselves are shared
/// (`Arc`) and copied only when changed. Serialized as a map, as before.
pub type Pairs = imbl::OrdMap<String, Arc<PairRecord>>;

/// The whole replicated application state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Shared map and records: a copy of the state (what readers hold, what
    /// each applied batch starts from) copies one pointer; a change copies
    /// the one record it changes (`Arc::make_mut`) and the map's path to it.
    pub pairs: Pairs,
    /// Every operator command, accepted or refused, with who asked (S8);
    /// the last [`operator::AUDIT_LIMIT`]. Shared like the records: each
    /// applied batch starts from a copy of the state, and a thousand entries
    /// copied per batch cost more than the pairs at 2000 pairs; only a
    /// batch that audits copies it.
    #[serde(default)]
    pub audit: Arc<Vec<AuditEntry>>,
}

/// A change proposed to the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Make the inventory match the configuration: add new pairs, update the spec
    /// of existing ones (their state is kept), remove pairs no longer configured.
    /// (Written by earlier versions, still applied from their logs; the leader
    /// now proposes [`Request::PatchInventory`].)
    SyncInventory {
        pairs: Vec<PairSpec>,
        at_unix_ms: i64,
    },
    /// Bring part of the inventory in line with the configuration: add or
    /// update the pairs in `upsert` (an existing pair keeps its state), remove
    /// the pairs in `remove`. The leader sends only what differs, at most
    /// [`INVENTORY_BATCH`] pairs per entry (`inventory_patches`): the first
    /// start of a controller with 10 000 pairs is 40 entries, not one of
    /// several megabytes, and a restart with an unchanged configuration none.
    PatchInventory {
        upsert: Vec<PairSpec>,
        remove: Vec<String>,
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
    /// Start a reattach plan (S9): no usable backup; `to` (the pair's launched
    /// spare) takes over the volumes of `from` (the serving server). Raises the
    /// epoch; refused while a plan is in flight or on a stale view.
    StartReattach {
        pair_id: String,
        expect: PairState,
        expect_epoch: u64,
        from: String,
        to: String,
        reason: String,
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
    /// S5: the leader's monotonic clock measured `add_ms` more of the hold-off
    /// after the automatic failover of `epoch`.
    HoldoffElapsed {
        pair_id: String,
        epoch: u64,
        add_ms: u64,
    },
    /// Record that `server`, the pair's standby at `epoch`, is outdated (S1): it
    /// lost replication while the serving server was alive. A mark already held is
    /// kept (the earliest loss counts).
    MarkOutdated {
        pair_id: String,
        epoch: u64,
        server: String,
        lost_peer_unix_ms: i64,
        primary_alive_unix_ms: i64,
        source: String,
        at_unix_ms: i64,
    },
    /// A report after the mark shows `server` in sync again: lift it.
    ClearOutdated {
        pair_id: String,
        server: String,
        why: String,
        at_unix_ms: i64,
    },
    /// An agent holds a higher epoch than the replicated one (a pair re-added, a
    /// restored controller): raise the pair's epoch to it, never lower (S4).
    RaiseEpoch {
        pair_id: String,
        at_least: u64,
        server: String,
        at_unix_ms: i64,
    },
    /// A command that changes what a server serves or holds is about to be sent
    /// to `server` at `epoch`: committed first, so only a leader holding a quorum
    /// sends it, and it is in the history. Refused if the epoch moved on or a plan
    /// is in flight.
    IssueCommand {
        pair_id: String,
        epoch: u64,
        server: String,
        command: String,
        at_unix_ms: i64,
    },
    /// Record a stand-down step (S10) on `server`: `Started` before its command is
    /// sent, its result after. Refused for another epoch than the pair's (stale
    /// executor), while a failover plan is in flight (S5) or the pair is paused,
    /// and for a server that is not the one the step runs on.
    StandDownStep {
        pair_id: String,
        epoch: u64,
        server: String,
        step: StandDownStep,
        status: StandDownStatus,
        at_unix_ms: i64,
    },
    /// An operator command (see [`OperatorCommand`]), audited with `identity`
    /// whether it is accepted or refused.
    Operator {
        pair_id: String,
        identity: String,
        command: OperatorCommand,
        at_unix_ms: i64,
    },
    /// Spare, rebuild and inventory replacement (see [`RedundancyRequest`]).
    Redundancy {
        pair_id: String,
        req: RedundancyRequest,
        at_unix_ms: i64,
    },
}

impl Request {
    /// A redundancy request for `pair_id`.
    pub fn redundancy(pair_id: &str, req: RedundancyRequest, at_unix_ms: i64) -> Request {
        Request::Redundancy {
            pair_id: pair_id.to_string(),
            req,
            at_unix_ms,
        }
    }
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
            Request::PatchInventory { upsert, remove, .. } => write!(
                f,
                "PatchInventory({} added or updated, {} removed)",
                upsert.len(),
                remove.len()
            ),
            Request::Redundancy { pair_id, req, .. } => write!(f, "{req} for {pair_id}"),
            Request::Operator {
                pair_id,
                identity,
                command,
                ..
            } => write!(f, "Operator({pair_id}: {command} by {identity})"),
            Request::SetPairState {
                pair_id,
                expect,
                state,
                ..
            } => write!(f, "SetPairState({pair_id}: {expect} -> {state})"),
            Request::StartFailover {
                pair_id, from, to, ..
            } => write!(f, "StartFailover({pair_id}: {from} -> {to})"),
            Request::StartReattach {
                pair_id, from, to, ..
            } => write!(f, "StartReattach({pair_id}: volumes of {from} -> {to})"),
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
            Request::HoldoffElapsed {
                pair_id, add_ms, ..
            } => write!(f, "HoldoffElapsed({pair_id}: +{add_ms} ms)"),
            Request::MarkOutdated {
                pair_id, server, ..
            } => write!(f, "MarkOutdated({pair_id}: {server})"),
            Request::RaiseEpoch {
                pair_id, at_least, ..
            } => write!(f, "RaiseEpoch({pair_id}: >= {at_least})"),
            Request::ClearOutdated {
                pair_id, server, ..
            } => write!(f, "ClearOutdated({pair_id}: {server})"),
            Request::IssueCommand {
                pair_id,
                epoch,
                server,
                command,
                ..
            } => write!(f, "IssueCommand({pair_id}@{epoch}: {command} on {server})"),
            Request::StandDownStep {
                pair_id,
                epoch,
                server,
                step,
                status,
                ..
            } => write!(
                f,
                "StandDownStep({pair_id}@{epoch}: {server} {step} {status:?})"
            ),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A wall-clock time for operators: `2026-12-01 13:45:01.234 UTC`.
pub fn fmt_unix_ms(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn refused(reason: String) -> Response {
    Response::Refused { reason }
}

impl ClusterState {
    /// Apply one request. Pure: same state and request, same result, on every node.
    pub fn apply(&mut self, req: &Request) -> Response {
        match req {
            Request::SyncInventory { pairs, at_unix_ms } => self.sync_inventory(pairs, *at_unix_ms),
            Request::PatchInventory {
                upsert,
                remove,
                at_unix_ms,
            } => self.patch_inventory(upsert, remove, *at_unix_ms),
            Request::Redundancy {
                pair_id,
                req,
                at_unix_ms,
            } => self.apply_redundancy(pair_id, req, *at_unix_ms),
            Request::Operator {
                pair_id,
                identity,
                command,
                at_unix_ms,
            } => self.apply_operator(pair_id, identity, command, *at_unix_ms),
            Request::SetPairState {
                pair_id,
                expect,
                state,
                reason,
                at_unix_ms,
            } => {
                let Some(pair) = self.pairs.get_mut(pair_id).map(Arc::make_mut) else {
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
                if *state == PairState::Healthy {
                    // Healthy means the standby was seen connected and in sync.
                    if let Some(m) = pair.outdated.take() {
                        pair.record(
                            *at_unix_ms,
                            format!("{} is in sync again: no longer outdated", m.server),
                        );
                    }
                }
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
                if let Err(r) = pair.may_start_plan(*expect, *expect_epoch) {
                    return r;
                }
                if pair.server(from).is_none() || pair.server(to).is_none() || from == to {
                    return refused(format!("pair {pair_id}: bad failover {from} -> {to}"));
                }
                let prev = pair.state;
                pair.epoch += 1;
                pair.state = PairState::FailingOver;
                pair.state_reason = reason.clone();
                pair.state_since_unix_ms = *at_unix_ms;
                pair.failover = Some(FailoverPlan::new(
                    pair.epoch,
                    from,
                    to,
                    reason,
                    *automatic,
                    *at_unix_ms,
                    &Step::ALL,
                ));
                pair.record(
                    *at_unix_ms,
                    format!(
                        "{prev} -> FailingOver: {} failover {from} -> {to}: {reason}",
                        if *automatic { "automatic" } else { "manual" }
                    ),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::StartReattach {
                pair_id,
                expect,
                expect_epoch,
                from,
                to,
                reason,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                if let Err(r) = pair.may_start_plan(*expect, *expect_epoch) {
                    return r;
                }
                if pair.serving_id() != from {
                    return refused(format!(
                        "pair {pair_id}: {from} is not the serving server ({} is)",
                        pair.serving_id()
                    ));
                }
                let spare_ok =
                    pair.redundancy.spare.as_ref().is_some_and(|s| {
                        s.server_id == *to && s.instance.is_some() && !s.terminating
                    });
                if !spare_ok {
                    return refused(format!(
                        "pair {pair_id}: {to} is not a launched spare of the pair"
                    ));
                }
                let prev = pair.state;
                pair.epoch += 1;
                pair.state = PairState::FailingOver;
                pair.state_reason = reason.clone();
                pair.state_since_unix_ms = *at_unix_ms;
                pair.failover = Some(FailoverPlan::new(
                    pair.epoch,
                    from,
                    to,
                    reason,
                    true,
                    *at_unix_ms,
                    &Step::REATTACH,
                ));
                pair.record(
                    *at_unix_ms,
                    format!("{prev} -> FailingOver: reattach (S9) of {from}'s volumes to {to}: {reason}"),
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
                let kind = plan.kind();
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
                if let StepStatus::Done { duration_ms, .. }
                | StepStatus::Failed { duration_ms, .. } = status
                {
                    pair.stats
                        .observe_step(kind, &step.to_string(), *duration_ms);
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
                pair.stats
                    .finish(plan.finished(*at_unix_ms, *state, reason));
                if *state == PairState::Degraded {
                    pair.serving = Some(plan.to.clone());
                    // The mark named the server that now serves; the new standby
                    // (the old primary) has not been seen in sync with it. After a
                    // reattach the mark on the old backup stays: it is still stale.
                    if pair.outdated.as_ref().is_none_or(|m| m.server == plan.to) {
                        pair.outdated = None;
                    }
                    if plan.automatic {
                        pair.last_auto_failover_unix_ms = Some(*at_unix_ms);
                        pair.flap_acknowledged = false;
                        pair.holdoff_elapsed_ms = 0;
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
            Request::HoldoffElapsed {
                pair_id,
                epoch,
                add_ms,
            } => {
                let pair = match self.pair_at(pair_id, *epoch, "stale hold-off tick") {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                pair.holdoff_elapsed_ms = pair.holdoff_elapsed_ms.saturating_add(*add_ms);
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::MarkOutdated {
                pair_id,
                epoch,
                server,
                lost_peer_unix_ms,
                primary_alive_unix_ms,
                source,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                if pair.epoch != *epoch || pair.standby_id() != server {
                    return refused(format!(
                        "pair {pair_id}: {server} is not the standby at epoch {epoch} (epoch {}, standby {})",
                        pair.epoch,
                        pair.standby_id()
                    ));
                }
                if let Some(m) = pair.outdated.as_ref().filter(|m| m.server == *server) {
                    if m.source != *source {
                        let since = fmt_unix_ms(m.lost_peer_unix_ms);
                        pair.record(
                            *at_unix_ms,
                            format!(
                                "S1: {source} confirms {server} outdated (already since {since})"
                            ),
                        );
                    }
                    return Response::StateChanged { epoch: pair.epoch };
                }
                pair.outdated = Some(OutdatedMark {
                    server: server.clone(),
                    lost_peer_unix_ms: *lost_peer_unix_ms,
                    primary_alive_unix_ms: *primary_alive_unix_ms,
                    source: source.clone(),
                });
                pair.record(
                    *at_unix_ms,
                    format!(
                        "S1: {server} is outdated: it lost replication at {} while {} was alive at {} ({source}); it is not promoted automatically until it is in sync again",
                        fmt_unix_ms(*lost_peer_unix_ms),
                        pair.serving_id(),
                        fmt_unix_ms(*primary_alive_unix_ms),
                    ),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::ClearOutdated {
                pair_id,
                server,
                why,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                if pair.outdated.as_ref().is_none_or(|m| m.server != *server) {
                    return refused(format!("pair {pair_id}: {server} is not marked outdated"));
                }
                pair.outdated = None;
                pair.record(
                    *at_unix_ms,
                    format!("S1: {server} is no longer outdated: {why}"),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::RaiseEpoch {
                pair_id,
                at_least,
                server,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                if *at_least <= pair.epoch {
                    return Response::StateChanged { epoch: pair.epoch };
                }
                if pair.failover.is_some() {
                    return refused(format!(
                        "pair {pair_id}: a plan is in flight; the epoch is not raised under it"
                    ));
                }
                let old = pair.epoch;
                pair.epoch = *at_least;
                pair.record(
                    *at_unix_ms,
                    format!("epoch raised from {old} to {at_least}: {server}'s agent holds it (S4: an epoch never goes back)"),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::IssueCommand {
                pair_id,
                epoch,
                server,
                command,
                at_unix_ms,
            } => {
                let pair = match self.pair_at(pair_id, *epoch, "command not sent") {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                if let Some(f) = &pair.failover {
                    return refused(format!(
                        "pair {pair_id}: failover epoch {} is in flight: command not sent",
                        f.epoch
                    ));
                }
                if pair.server(server).is_none() {
                    return refused(format!("pair {pair_id}: {server} is not a member"));
                }
                pair.record(*at_unix_ms, format!("command {command} sent to {server}"));
                Response::StateChanged { epoch: pair.epoch }
            }
            Request::StandDownStep {
                pair_id,
                epoch,
                server,
                step,
                status,
                at_unix_ms,
            } => {
                let pair = match self.pair_mut(pair_id) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                if let Some(f) = &pair.failover {
                    return refused(format!(
                        "pair {pair_id}: failover epoch {} is in flight (S5): no stand-down meanwhile",
                        f.epoch
                    ));
                }
                if pair.epoch != *epoch {
                    return refused(format!(
                        "pair {pair_id} is at epoch {}, not {epoch}: stale stand-down",
                        pair.epoch
                    ));
                }
                if pair.state == PairState::Paused {
                    return refused(format!(
                        "pair {pair_id} is paused for maintenance: no automatic stand-down"
                    ));
                }
                let target = if step.on_serving() {
                    pair.serving_id()
                } else {
                    pair.standby_id()
                };
                if server != target {
                    return refused(format!(
                        "pair {pair_id}: stand-down step {step} runs on {target}, not {server}"
                    ));
                }
                let line = match status {
                    StandDownStatus::Started { term } => {
                        format!("S10 stand-down of {server}: {step} started (leader term {term})")
                    }
                    StandDownStatus::Done {
                        duration_ms,
                        detail,
                    } => format!(
                        "S10 stand-down of {server}: {step} done in {duration_ms} ms: {detail}"
                    ),
                    StandDownStatus::Failed {
                        duration_ms,
                        reason,
                    } => format!(
                        "S10 stand-down of {server}: {step} failed after {duration_ms} ms: {reason}"
                    ),
                };
                pair.record(*at_unix_ms, line);
                Response::StateChanged { epoch: pair.epoch }
            }
        }
    }

    /// The pair, if it is still at `epoch`; `what` says what is refused otherwise.
    fn pair_at(&mut self, id: &str, epoch: u64, what: &str) -> Result<&mut PairRecord, Response> {
        let pair = self.pair_mut(id)?;
        if pair.epoch != epoch {
            return Err(refused(format!(
                "pair {id} is at epoch {}, not {epoch}: {what}",
                pair.epoch
            )));
        }
        Ok(pair)
    }

    fn pair_mut(&mut self, id: &str) -> Result<&mut PairRecord, Response> {
        self.pairs
            .get_mut(id)
            .map(Arc::make_mut)
            .ok_or_else(|| refused(format!("pair {id} is not in the inventory")))
    }

    fn sync_inventory(&mut self, pairs: &[PairSpec], at: i64) -> Response {
        let (mut added, mut updated, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for spec in pairs {
            self.upsert_pair(spec, at, &mut added, &mut updated);
        }
        let keep: std::collections::BTreeSet<&str> = pairs.iter().map(|p| p.id.as_str()).collect();
        removed.extend(
            self.pairs
                .keys()
                .filter(|id| !keep.contains(id.as_str()))
                .cloned(),
        );
        for id in &removed {
            self.pairs.remove(id);
        }
        Response::Inventory {
            added,
            updated,
            removed,
        }
    }

    fn patch_inventory(&mut self, upsert: &[PairSpec], remove: &[String], at: i64) -> Response {
        let (mut added, mut updated) = (Vec::new(), Vec::new());
        for spec in upsert {
            self.upsert_pair(spec, at, &mut added, &mut updated);
        }
        let removed = remove
            .iter()
            .filter(|id| self.pairs.remove(id.as_str()).is_some())
            .cloned()
            .collect();
        Response::Inventory {
            added,
            updated,
            removed,
        }
    }

    /// Add `spec`'s pair, or update its spec (its state kept) if it differs.
    fn upsert_pair(
        &mut self,
        spec: &PairSpec,
        at: i64,
        added: &mut Vec<String>,
        updated: &mut Vec<String>,
    ) {
        match self.pairs.get_mut(&spec.id) {
            Some(rec) if rec.spec == effective_spec(spec, &rec.redundancy) => {}
            Some(rec) => {
                let rec = Arc::make_mut(rec);
                rec.spec = effective_spec(spec, &rec.redundancy);
                rec.record(at, "inventory updated from configuration".into());
                updated.push(spec.id.clone());
            }
            None => {
                let mut rec = PairRecord::new(spec.clone(), at);
                rec.record(at, "pair added to the inventory".into());
                self.pairs.insert(spec.id.clone(), Arc::new(rec));
                added.push(spec.id.clone());
            }
        }
    }
}

/// Most pairs one [`Request::PatchInventory`] entry adds or updates.
pub const INVENTORY_BATCH: usize = 250;

/// The entries that bring `state`'s inventory in line with the configured
/// `pairs`: the pairs that are new or whose configured spec differs (as
/// [`effective_spec`] sees it: a replaced member is not a difference), at most
/// `batch` per entry, and the pairs no longer configured (in the last entry).
/// None when nothing differs; pure.
pub fn inventory_patches(
    pairs: &[PairSpec],
    state: &ClusterState,
    batch: usize,
    at_unix_ms: i64,
) -> Vec<Request> {
    let upsert: Vec<PairSpec> = pairs
        .iter()
        .filter(|p| match state.pairs.get(&p.id) {
            Some(rec) => rec.spec != effective_spec(p, &rec.redundancy),
            None => true,
        })
        .cloned()
        .collect();
    let configured: std::collections::BTreeSet<&str> =
        pairs.iter().map(|p| p.id.as_str()).collect();
    let remove: Vec<String> = state
        .pairs
        .keys()
        .filter(|id| !configured.contains(id.as_str()))
        .cloned()
        .collect();
    let mut out: Vec<Request> = upsert
        .chunks(batch.max(1))
        .map(|c| Request::PatchInventory {
            upsert: c.to_vec(),
            remove: Vec::new(),
            at_unix_ms,
        })
        .collect();
    if !remove.is_empty() {
        match out.last_mut() {
            Some(Request::PatchInventory { remove: r, .. }) => *r = remove,
            _ => out.push(Request::PatchInventory {
                upsert: Vec::new(),
                remove,
                at_unix_ms,
            }),
        }
    }
    out
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
    fn inventory_patches_send_only_what_differs_in_bounded_batches() {
        let mut st = ClusterState::default();
        let ip = |i: usize| format!("198.18.{}.{}", i / 250, i % 250);
        let mut cfg: Vec<PairSpec> = (0..600)
            .map(|i| spec(&format!("p{i:03}"), &ip(i)))
            .collect();
        // A first start: every pair, 250 per entry.
        let patches = inventory_patches(&cfg, &st, 250, 1);
        let sizes: Vec<(usize, usize)> = patches
            .iter()
            .map(|r| match r {
                Request::PatchInventory { upsert, remove, .. } => (upsert.len(), remove.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![(250, 0), (250, 0), (100, 0)]);
        for r in &patches {
            st.apply(r);
        }
        assert_eq!(st.pairs.len(), 600);
        assert!(st.pairs.values().all(|p| p.state == PairState::Rebuilding));
        // The same configuration again: nothing to send.
        assert!(inventory_patches(&cfg, &st, 250, 2).is_empty());

        // One pair in service, its spec changed; one pair whose backup was
        // replaced by a spare (not a difference); two pairs dropped.
        st.apply(&Request::SetPairState {
            pair_id: "p007".into(),
            expect: PairState::Rebuilding,
            state: PairState::Healthy,
            reason: "in sync".into(),
            at_unix_ms: 3,
        });
        cfg[7].client_ip = "198.19.0.7".into();
        let spare = ServerSpec {
            id: "spare-1".into(),
            ..cfg[9].backup.clone()
        };
        let p9 = Arc::make_mut(st.pairs.get_mut("p009").unwrap());
        p9.redundancy.replacements.push(redundancy::Replacement {
            old: "p009-b".into(),
            new: spare.clone(),
        });
        p9.spec.backup = spare;
        cfg.retain(|p| p.id != "p100" && p.id != "p200");
        let patches = inventory_patches(&cfg, &st, 250, 4);
        assert_eq!(
            patches,
            vec![Request::PatchInventory {
                upsert: vec![cfg[7].clone()],
                remove: vec!["p100".into(), "p200".into()],
                at_unix_ms: 4,
            }]
        );
        let r = st.apply(&patches[0]);
        assert_eq!(
            r,
            Response::Inventory {
                added: vec![],
                updated: vec!["p007".into()],
                removed: vec!["p100".into(), "p200".into()],
            }
        );
        assert_eq!(st.pairs["p007"].state, PairState::Healthy, "state kept");
        assert_eq!(st.pairs["p007"].spec.client_ip, "198.19.0.7");
        assert_eq!(
            st.pairs["p009"].spec.backup.id, "spare-1",
            "replacement kept"
        );
        assert_eq!(st.pairs.len(), 598);
        assert!(inventory_patches(&cfg, &st, 250, 5).is_empty());
        // Only removals: one entry with no pair to add.
        let patches = inventory_patches(&cfg[..597], &st, 250, 6);
        assert_eq!(
            patches,
            vec![Request::PatchInventory {
                upsert: vec![],
                remove: vec![cfg[597].id.clone()],
                at_unix_ms: 6,
            }]
        );
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
        for i in 0..(HISTORY_CAP as i64 + 50) {
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
        assert_eq!(h.len(), HISTORY_CAP);
        assert_eq!(h.last().unwrap().at_unix_ms, HISTORY_CAP as i64 + 49);
    }

    #[test]
    fn stand_down_steps_are_recorded_and_guarded() {
        let mut st = ClusterState::default();
        st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.10")],
            at_unix_ms: 1,
        });
        let step = |epoch, server: &str, step, status| Request::StandDownStep {
            pair_id: "p1".into(),
            epoch,
            server: server.into(),
            step,
            status,
            at_unix_ms: 5,
        };
        let started = StandDownStatus::Started { term: 4 };
        // The standby is p1-b (p1-a serves): the standby steps run there only.
        assert_eq!(
            st.apply(&step(0, "p1-b", StandDownStep::Demote, started.clone())),
            Response::StateChanged { epoch: 0 }
        );
        assert_eq!(
            st.apply(&step(
                0,
                "p1-b",
                StandDownStep::Demote,
                StandDownStatus::Done {
                    duration_ms: 7,
                    detail: "drbdadm secondary".into()
                }
            )),
            Response::StateChanged { epoch: 0 }
        );
        let h: Vec<&str> = st.pairs["p1"]
            .history
            .iter()
            .map(|h| h.event.as_str())
            .collect();
        assert!(
            h.contains(&"S10 stand-down of p1-b: Demote started (leader term 4)"),
            "{h:?}"
        );
        assert!(
            h.contains(&"S10 stand-down of p1-b: Demote done in 7 ms: drbdadm secondary"),
            "{h:?}"
        );
        for (req, why) in [
            (
                step(0, "p1-a", StandDownStep::Demote, started.clone()),
                "runs on p1-b, not p1-a",
            ),
            (
                step(0, "p1-b", StandDownStep::ReconnectServing, started.clone()),
                "runs on p1-a, not p1-b",
            ),
            (
                step(1, "p1-b", StandDownStep::Demote, started.clone()),
                "stale stand-down",
            ),
        ] {
            let before = st.clone();
            let r = st.apply(&req);
            assert!(
                matches!(&r, Response::Refused { reason } if reason.contains(why)),
                "{r:?}"
            );
            assert_eq!(st, before, "a refusal changes nothing");
        }
        // The serving server's own step is accepted on it.
        assert_eq!(
            st.apply(&step(
                0,
                "p1-a",
                StandDownStep::ReconnectServing,
                started.clone()
            )),
            Response::StateChanged { epoch: 0 }
        );
        // No stand-down while a failover plan is in flight (S5).
        st.apply(&Request::StartFailover {
            pair_id: "p1".into(),
            expect: PairState::Rebuilding,
            expect_epoch: 0,
            from: "p1-a".into(),
            to: "p1-b".into(),
            reason: "test".into(),
            automatic: true,
            at_unix_ms: 6,
        });
        let r = st.apply(&step(1, "p1-b", StandDownStep::Demote, started.clone()));
        assert!(
            matches!(&r, Response::Refused { reason } if reason.contains("in flight")),
            "{r:?}"
        );
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

    /// A pair that failed over once: epoch 1, serving p1-b, Degraded.
    fn failed_over_once() -> ClusterState {
        let mut st = ClusterState::default();
        st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.10")],
            at_unix_ms: 1,
        });
        st.apply(&Request::StartFailover {
            pair_id: "p1".into(),
            expect: PairState::Rebuilding,
            expect_epoch: 0,
            from: "p1-a".into(),
            to: "p1-b".into(),
            reason: "test".into(),
            automatic: true,
            at_unix_ms: 10,
        });
        st.apply(&Request::FinishFailover {
            pair_id: "p1".into(),
            epoch: 1,
            state: PairState::Degraded,
            reason: "done".into(),
            at_unix_ms: 20,
        });
        st
    }

    #[test]
    fn an_inventory_change_never_touches_epoch_or_serving() {
        let mut st = failed_over_once();
        let mut changed = spec("p1", "198.18.0.10");
        changed.primary.volumes.push("vol-extra".into());
        changed.nfs_port = 2050;
        let r = st.apply(&Request::SyncInventory {
            pairs: vec![changed.clone()],
            at_unix_ms: 30,
        });
        assert!(matches!(r, Response::Inventory { ref updated, .. } if updated == &["p1"]));
        let p = &st.pairs["p1"];
        assert_eq!(p.spec, changed);
        assert_eq!(p.epoch, 1);
        assert_eq!(p.serving_id(), "p1-b");
        assert_eq!(p.state, PairState::Degraded);
        // The same through the patches the leader proposes now.
        changed.nfs_port = 2051;
        let patches = inventory_patches(std::slice::from_ref(&changed), &st, INVENTORY_BATCH, 31);
        assert_eq!(patches.len(), 1);
        let r = st.apply(&patches[0]);
        assert!(matches!(r, Response::Inventory { ref updated, .. } if updated == &["p1"]));
        let p = &st.pairs["p1"];
        assert_eq!(p.spec.nfs_port, 2051);
        assert_eq!(p.epoch, 1);
        assert_eq!(p.serving_id(), "p1-b");
        assert_eq!(p.state, PairState::Degraded);
    }

    #[test]
    fn the_epoch_is_raised_to_what_an_agent_holds_and_never_lowered() {
        let mut st = failed_over_once();
        let raise = |at_least| Request::RaiseEpoch {
            pair_id: "p1".into(),
            at_least,
            server: "p1-a".into(),
            at_unix_ms: 40,
        };
        assert_eq!(st.apply(&raise(5)), Response::StateChanged { epoch: 5 });
        assert_eq!(st.apply(&raise(2)), Response::StateChanged { epoch: 5 });
        assert_eq!(st.pairs["p1"].epoch, 5);
        assert!(st.pairs["p1"]
            .history
            .iter()
            .any(|h| h.event.contains("epoch raised from 1 to 5")));
        // Removing a pair and adding it back does not make its agents' epochs
        // acceptable again: the leader raises it from their Hello (RaiseEpoch).
        st.apply(&Request::SyncInventory {
            pairs: vec![],
            at_unix_ms: 50,
        });
        st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.10")],
            at_unix_ms: 51,
        });
        assert_eq!(st.pairs["p1"].epoch, 0);
        assert_eq!(st.apply(&raise(5)), Response::StateChanged { epoch: 5 });
    }

    #[test]
    fn an_outdated_mark_names_the_standby_and_is_cleared_by_healthy_only() {
        let mut st = ClusterState::default();
        st.apply(&Request::SyncInventory {
            pairs: vec![spec("p1", "198.18.0.10")],
            at_unix_ms: 1,
        });
        let mark = |server: &str, epoch, lost| Request::MarkOutdated {
            pair_id: "p1".into(),
            epoch,
            server: server.into(),
            lost_peer_unix_ms: lost,
            primary_alive_unix_ms: lost + 900,
            source: "test".into(),
            at_unix_ms: lost + 1000,
        };
        // Only the standby at the current epoch can be marked.
        assert!(matches!(
            st.apply(&mark("p1-a", 0, 100)),
            Response::Refused { .. }
        ));
        assert!(matches!(
            st.apply(&mark("p1-b", 4, 100)),
            Response::Refused { .. }
        ));
        assert!(matches!(
            st.apply(&mark("p1-b", 0, 100)),
            Response::StateChanged { .. }
        ));
        // The earliest loss is kept.
        st.apply(&mark("p1-b", 0, 5000));
        assert_eq!(
            st.pairs["p1"].outdated.as_ref().unwrap().lost_peer_unix_ms,
            100
        );
        let set = |expect, state| Request::SetPairState {
            pair_id: "p1".into(),
            expect,
            state,
            reason: "r".into(),
            at_unix_ms: 9000,
        };
        st.apply(&set(PairState::Rebuilding, PairState::Suspect));
        assert!(st.pairs["p1"].outdated.is_some(), "Suspect keeps the mark");
        st.apply(&set(PairState::Suspect, PairState::Healthy));
        assert!(st.pairs["p1"].outdated.is_none(), "in sync again clears it");
        // Lifted explicitly (a report after the mark shows it in sync).
        st.apply(&mark("p1-b", 0, 7000));
        let clear = |server: &str| Request::ClearOutdated {
            pair_id: "p1".into(),
            server: server.into(),
            why: "in sync".into(),
            at_unix_ms: 9500,
        };
        assert!(matches!(st.apply(&clear("p1-a")), Response::Refused { .. }));
        assert_eq!(
            st.apply(&clear("p1-b")),
            Response::StateChanged { epoch: 0 }
        );
        assert!(st.pairs["p1"].outdated.is_none());
        assert!(matches!(st.apply(&clear("p1-b")), Response::Refused { .. }));
        let h: Vec<&str> = st.pairs["p1"]
            .history
            .iter()
            .map(|h| h.event.as_str())
            .collect();
        assert!(
            h.iter().any(|e| e.starts_with(
                "S1: p1-b is outdated: it lost replication at 1970-01-01 00:00:00.100 UTC"
            )),
            "{h:?}"
        );
    }

    #[test]
    fn a_command_is_committed_only_at_the_current_epoch_and_without_a_plan() {
        let mut st = failed_over_once();
        let cmd = |epoch| Request::IssueCommand {
            pair_id: "p1".into(),
            epoch,
            server: "p1-b".into(),
            command: "Mount".into(),
            at_unix_ms: 60,
        };
        assert!(matches!(st.apply(&cmd(0)), Response::Refused { .. }));
        assert_eq!(st.apply(&cmd(1)), Response::StateChanged { epoch: 1 });
    }

    #[test]
    fn wall_clock_times_are_formatted_in_utc() {
        assert_eq!(fmt_unix_ms(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(
            fmt_unix_ms(1_796_131_501_234),
            "2026-12-01 13:25:01.234 UTC"
        );
        assert_eq!(fmt_unix_ms(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
    }
}
