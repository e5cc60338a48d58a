//! Replicated state of making a pair redundant again (SPEC §5 Replace, S9):
//! the pre-spun spare, the rebuild plan that turns it into the new backup, the
//! inventory changes (a replaced server and what replaced it) and the retired
//! servers whose instances are terminated once the pair is `Healthy` again.
//!
//! Like the failover plan, every step is committed `Running` before it runs and
//! `Done`/`Failed` after (S7), so a new leader resumes a rebuild where it stopped,
//! and every cloud call carries a client token derived from what was committed,
//! so a repeat never launches a second instance or creates a second volume set.

use serde::{Deserialize, Serialize};

use super::{refused, ClusterState, PairRecord, PairState, Response, ServerSpec, StepStatus};

/// A server launched ahead of need (pre-spin, when a pair turns `Suspect`) or to
/// replace a dead one, not yet a member of the pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpareRecord {
    /// The cloud client token of its launch (idempotency across leaders).
    pub token: String,
    /// The Understudy server id its agent runs as.
    pub server_id: String,
    pub reason: String,
    pub requested_unix_ms: i64,
    /// Filled once the cloud accepted the launch.
    pub instance: Option<SpareInstance>,
    /// Being terminated (a false alarm's spare past its keep time).
    pub terminating: bool,
}

/// What the cloud said about a launched spare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpareInstance {
    pub instance_id: String,
    pub interface_id: String,
    pub address: String,
    pub zone: String,
}

/// A member taken out of the pair. Its instance is terminated once the pair is
/// `Healthy` again; its volumes are kept (tagged) until an operator releases them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredServer {
    pub spec: ServerSpec,
    pub replaced_by: String,
    pub at_unix_ms: i64,
    pub terminated: bool,
}

/// An inventory change the configuration file does not know about yet: the
/// member `old` was replaced by `new`. Applied over the configured spec, so a
/// configuration sync never brings a dead server back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    pub old: String,
    pub new: ServerSpec,
}

/// The steps of a rebuild (a spare made the new backup), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RebuildStep {
    /// The spare is running and its agent has registered.
    WaitSpare,
    /// Fresh volumes created in the pair's zone (client tokens), attached to the
    /// spare, confirmed `in-use` by `DescribeVolumes`.
    Volumes,
    /// Committed inventory change: the spare replaces the dead member.
    Adopt,
    /// On the spare: DRBD metadata on the fresh volume, peer = the serving server, up.
    ConfigureNew,
    /// On the serving server: peer = the spare (`drbdadm adjust`): it connects and
    /// the full resync starts.
    ConfigureServing,
}

impl RebuildStep {
    pub const ALL: [RebuildStep; 5] = [
        RebuildStep::WaitSpare,
        RebuildStep::Volumes,
        RebuildStep::Adopt,
        RebuildStep::ConfigureNew,
        RebuildStep::ConfigureServing,
    ];
}

impl std::fmt::Display for RebuildStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One step of a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildStepRecord {
    pub step: RebuildStep,
    pub status: StepStatus,
    pub attempts: u32,
}

/// A rebuild in flight: the spare becomes the backup in place of `replaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildPlan {
    /// Per pair, increasing: names the plan's volumes' client tokens.
    pub id: u64,
    pub replaces: String,
    /// The spare's server id.
    pub spare: String,
    pub reason: String,
    pub started_unix_ms: i64,
    pub steps: Vec<RebuildStepRecord>,
}

impl RebuildPlan {
    /// The first step not done yet.
    pub fn next_step(&self) -> Option<&RebuildStepRecord> {
        self.steps
            .iter()
            .find(|s| !matches!(s.status, StepStatus::Done { .. }))
    }
}

/// Everything about restoring redundancy, per pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redundancy {
    #[serde(default)]
    pub spare: Option<SpareRecord>,
    /// Spares launched so far (names the next one's token and server id).
    #[serde(default)]
    pub spares_launched: u64,
    #[serde(default)]
    pub rebuild: Option<RebuildPlan>,
    #[serde(default)]
    pub rebuilds: u64,
    #[serde(default)]
    pub retired: Vec<RetiredServer>,
    #[serde(default)]
    pub replacements: Vec<Replacement>,
    /// When the last rebuild started and when the pair was Healthy after it.
    #[serde(default)]
    pub last_rebuild: Option<(i64, Option<i64>)>,
}

/// The requests of this module (wrapped in [`super::Request::Redundancy`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RedundancyRequest {
    /// About to launch a spare with `token` (committed first: a new leader
    /// repeats the launch with the same token). Refused if one is held.
    SpareRequested {
        token: String,
        server_id: String,
        reason: String,
    },
    /// The cloud accepted the launch.
    SpareLaunched {
        token: String,
        instance: SpareInstance,
    },
    /// The spare is no longer needed (false alarm past its keep time): about to
    /// terminate it.
    SpareRetiring { token: String, why: String },
    /// The spare's instance is terminated.
    SpareGone { token: String },
    /// Start a rebuild: the spare replaces `replaces` as the backup. Refused
    /// unless the pair is `Degraded` with no plan in flight and `replaces` is its
    /// standby.
    StartRebuild { replaces: String, reason: String },
    /// A rebuild step's new status (S7).
    RebuildStep {
        id: u64,
        step: RebuildStep,
        status: StepStatus,
    },
    /// End the rebuild.
    FinishRebuild { id: u64, ok: bool, reason: String },
    /// The inventory change: the spare takes `replaces`' place, with `volumes`,
    /// keeping its DRBD node id. Refused without a launched spare.
    Adopt {
        replaces: String,
        volumes: Vec<String>,
    },
    /// A retired server's instance is terminated (its volumes kept).
    RetiredTerminated { server: String },
}

impl std::fmt::Display for RedundancyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedundancyRequest::SpareRequested { server_id, .. } => {
                write!(f, "SpareRequested({server_id})")
            }
            RedundancyRequest::SpareLaunched { instance, .. } => {
                write!(f, "SpareLaunched({})", instance.instance_id)
            }
            RedundancyRequest::SpareRetiring { token, .. } => write!(f, "SpareRetiring({token})"),
            RedundancyRequest::SpareGone { token } => write!(f, "SpareGone({token})"),
            RedundancyRequest::StartRebuild { replaces, .. } => {
                write!(f, "StartRebuild(replacing {replaces})")
            }
            RedundancyRequest::RebuildStep { id, step, status } => {
                write!(f, "RebuildStep(#{id}: {step} {status:?})")
            }
            RedundancyRequest::FinishRebuild { id, ok, .. } => {
                write!(
                    f,
                    "FinishRebuild(#{id}: {})",
                    if *ok { "done" } else { "failed" }
                )
            }
            RedundancyRequest::Adopt { replaces, .. } => write!(f, "Adopt(replacing {replaces})"),
            RedundancyRequest::RetiredTerminated { server } => {
                write!(f, "RetiredTerminated({server})")
            }
        }
    }
}

/// The DRBD node id of a member: as configured, else 0 for the configured
/// primary and 1 for the backup (the usual two-node numbering).
pub fn node_id(pair: &PairRecord, server: &str) -> Option<u32> {
    let s = pair.server(server)?;
    Some(
        s.node_id
            .unwrap_or(if pair.spec.backup.id == server { 1 } else { 0 }),
    )
}

impl PairRecord {
    /// A server by id among the members, the retired and the spare (steps of a
    /// plan keep naming a server after the inventory changed under them).
    pub fn any_server(&self, id: &str) -> Option<ServerSpec> {
        if let Some(s) = self.server(id) {
            return Some(s.clone());
        }
        if let Some(r) = self.redundancy.retired.iter().find(|r| r.spec.id == id) {
            return Some(r.spec.clone());
        }
        self.spare_spec().filter(|s| s.id == id)
    }

    /// The spare as a server spec (once launched).
    pub fn spare_spec(&self) -> Option<ServerSpec> {
        let sp = self.redundancy.spare.as_ref()?;
        let i = sp.instance.as_ref()?;
        Some(ServerSpec {
            id: sp.server_id.clone(),
            address: i.address.clone(),
            zone: i.zone.clone(),
            volumes: Vec::new(),
            instance_id: i.instance_id.clone(),
            interface_id: i.interface_id.clone(),
            probe_port: crate::probe::DEFAULT_PROBE_PORT,
            node_id: None,
        })
    }
}

/// The configured spec with this pair's replacements applied.
pub fn effective_spec(configured: &super::PairSpec, r: &Redundancy) -> super::PairSpec {
    let mut spec = configured.clone();
    for rep in &r.replacements {
        for slot in [&mut spec.primary, &mut spec.backup] {
            if slot.id == rep.old {
                *slot = rep.new.clone();
            }
        }
    }
    spec
}

impl ClusterState {
    pub(super) fn apply_redundancy(
        &mut self,
        pair_id: &str,
        req: &RedundancyRequest,
        at: i64,
    ) -> Response {
        let pair = match self.pair_mut(pair_id) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let member = |id: &str| pair.server(id).is_some();
        let is_member = match req {
            RedundancyRequest::SpareRequested { server_id, .. } => member(server_id),
            _ => false,
        };
        let standby = pair.standby_id().to_string();
        let r = &mut pair.redundancy;
        match req {
            RedundancyRequest::SpareRequested {
                token,
                server_id,
                reason,
            } => {
                if let Some(s) = &r.spare {
                    return refused(format!(
                        "pair {pair_id} already has spare {} (token {})",
                        s.server_id, s.token
                    ));
                }
                if is_member {
                    return refused(format!("{server_id} is already a member of {pair_id}"));
                }
                r.spares_launched += 1;
                r.spare = Some(SpareRecord {
                    token: token.clone(),
                    server_id: server_id.clone(),
                    reason: reason.clone(),
                    requested_unix_ms: at,
                    instance: None,
                    terminating: false,
                });
                pair.record(at, format!("spare {server_id} requested: {reason}"));
                Response::StateChanged { epoch: pair.epoch }
            }
            RedundancyRequest::SpareLaunched { token, instance } => {
                let Some(s) = r.spare.as_mut().filter(|s| &s.token == token) else {
                    return refused(format!("pair {pair_id} holds no spare with token {token}"));
                };
                if s.instance.as_ref() == Some(instance) {
                    return Response::StateChanged { epoch: pair.epoch };
                }
                s.instance = Some(instance.clone());
                let line = format!(
                    "spare {} launched: instance {} at {} in {}",
                    s.server_id, instance.instance_id, instance.address, instance.zone
                );
                pair.record(at, line);
                Response::StateChanged { epoch: pair.epoch }
            }
            RedundancyRequest::SpareRetiring { token, why } => {
                let Some(s) = r.spare.as_mut().filter(|s| &s.token == token) else {
                    return refused(format!("pair {pair_id} holds no spare with token {token}"));
                };
                if r.rebuild.as_ref().is_some_and(|p| p.spare == s.server_id)
                    || pair.failover.as_ref().is_some_and(|f| f.to == s.server_id)
                {
                    return refused(format!("spare {} is in use by a plan", s.server_id));
                }
                if !s.terminating {
                    s.terminating = true;
                    let line = format!("spare {} retiring: {why}", s.server_id);
                    pair.record(at, line);
                }
                Response::StateChanged { epoch: pair.epoch }
            }
            RedundancyRequest::SpareGone { token } => {
                let Some(s) = r.spare.take_if(|s| &s.token == token) else {
                    return Response::StateChanged { epoch: pair.epoch };
                };
                pair.record(at, format!("spare {} terminated", s.server_id));
                Response::StateChanged { epoch: pair.epoch }
            }
            RedundancyRequest::StartRebuild { replaces, reason } => {
                if let Some(p) = &r.rebuild {
                    return refused(format!(
                        "pair {pair_id}: rebuild #{} is already in flight",
                        p.id
                    ));
                }
                if pair.failover.is_some() || pair.state != PairState::Degraded {
                    return refused(format!(
                        "pair {pair_id} is {}{}: a rebuild starts from Degraded only",
                        pair.state,
                        if pair.failover.is_some() {
                            " with a failover in flight"
                        } else {
                            ""
                        }
                    ));
                }
                if *replaces != standby {
                    return refused(format!(
                        "{replaces} is not the standby of {pair_id} ({standby} is)"
                    ));
                }
                let Some(spare) = r.spare.as_ref().filter(|s| !s.terminating) else {
                    return refused(format!("pair {pair_id} has no spare to rebuild with"));
                };
                r.rebuilds += 1;
                let plan = RebuildPlan {
                    id: r.rebuilds,
                    replaces: replaces.clone(),
                    spare: spare.server_id.clone(),
                    reason: reason.clone(),
                    started_unix_ms: at,
                    steps: RebuildStep::ALL
                        .iter()
                        .map(|s| RebuildStepRecord {
                            step: *s,
                            status: StepStatus::Pending,
                            attempts: 0,
                        })
                        .collect(),
                };
                let line = format!(
                    "rebuild #{} started: {} replaces {replaces}: {reason}",
                    plan.id, plan.spare
                );
                r.last_rebuild = Some((at, None));
                r.rebuild = Some(plan);
                pair.record(at, line);
                Response::StateChanged { epoch: pair.epoch }
            }
            RedundancyRequest::RebuildStep { id, step, status } => {
                let Some(plan) = r.rebuild.as_mut().filter(|p| p.id == *id) else {
                    return refused(format!("pair {pair_id}: rebuild #{id} is not in flight"));
                };
                let Some(rec) = plan.steps.iter_mut().find(|s| s.step == *step) else {
                    return refused(format!("rebuild #{id} has no step {step}"));
                };
                if matches!(rec.status, StepStatus::Done { .. }) {
                    return refused(format!("rebuild #{id}: step {step} is already done"));
                }
                if matches!(status, StepStatus::Running { .. }) {
                    rec.attempts += 1;
                }
                rec.status = status.clone();
                if let StepStatus::Done { duration_ms, .. }
                | StepStatus::Failed { duration_ms, .. } = status
                {
                    pair.stats
                        .observe_step("rebuild", &step.to_string(), *duration_ms);
                }
                let line = match status {
                    StepStatus::Done {
                        duration_ms,
                        detail,
                    } => Some(format!(
                        "rebuild #{id}: {step} done in {duration_ms} ms: {detail}"
                    )),
                    StepStatus::Failed {
                        duration_ms,
                        reason,
                    } => Some(format!(
                        "rebuild #{id}: {step} failed after {duration_ms} ms: {reason}"
                    )),
                    _ => None,
                };
                if let Some(l) = line {
                    pair.record(at, l);
                }
                Response::StateChanged { epoch: pair.epoch }
            }
            RedundancyRequest::FinishRebuild { id, ok, reason } => {
                let Some(plan) = r.rebuild.take_if(|p| p.id == *id) else {
                    return refused(format!("pair {pair_id}: rebuild #{id} is not in flight"));
                };
                pair.stats.finish(super::stats::FinishedPlan {
                    kind: "rebuild".into(),
                    epoch: plan.id,
                    from: plan.replaces.clone(),
                    to: plan.spare.clone(),
                    automatic: true,
                    started_unix_ms: plan.started_unix_ms,
                    finished_unix_ms: at,
                    outcome: if *ok { "succeeded" } else { "failed" }.into(),
                    end: reason.clone(),
                    steps: plan
                        .steps
                        .iter()
                        .map(|s| {
                            super::stats::FinishedStep::of(
                                &s.step.to_string(),
                                &s.status,
                                s.attempts,
                            )
                        })
                        .collect(),
                });
                pair.record(
                    at,
                    format!(
                        "rebuild #{} {}: {reason}",
                        plan.id,
                        if *ok { "finished" } else { "stopped" }
                    ),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
            RedundancyRequest::Adopt { replaces, volumes } => {
                if r.replacements.iter().any(|x| x.old == *replaces) {
                    // Already adopted (a repeated step).
                    return Response::StateChanged { epoch: pair.epoch };
                }
                let Some(mut new) = pair.spare_spec() else {
                    return refused(format!("pair {pair_id} has no launched spare to adopt"));
                };
                let Some(old) = pair.server(replaces).cloned() else {
                    return refused(format!("{replaces} is not a member of {pair_id}"));
                };
                new.node_id = node_id(pair, replaces);
                new.volumes = volumes.clone();
                new.probe_port = old.probe_port;
                let serving = pair.serving_id() == replaces;
                for slot in [&mut pair.spec.primary, &mut pair.spec.backup] {
                    if slot.id == *replaces {
                        *slot = new.clone();
                    }
                }
                if serving {
                    pair.serving = Some(new.id.clone());
                } else if pair.serving.is_none() && pair.spec.primary.id == new.id {
                    // The configured primary slot changed hands: keep serving
                    // where it was (the other member).
                    pair.serving = Some(pair.spec.backup.id.clone());
                }
                let r = &mut pair.redundancy;
                r.replacements.push(Replacement {
                    old: replaces.clone(),
                    new: new.clone(),
                });
                r.retired.push(RetiredServer {
                    spec: old.clone(),
                    replaced_by: new.id.clone(),
                    at_unix_ms: at,
                    terminated: false,
                });
                r.spare = None;
                if pair
                    .outdated
                    .as_ref()
                    .is_some_and(|m| m.server == *replaces)
                {
                    pair.outdated = None;
                }
                pair.record(
                    at,
                    format!(
                        "inventory: {} (instance {}, volumes {}) replaces {replaces} (instance {}, volumes {} kept)",
                        new.id,
                        new.instance_id,
                        new.volumes.join(","),
                        old.instance_id,
                        old.volumes.join(",")
                    ),
                );
                Response::StateChanged { epoch: pair.epoch }
            }
            RedundancyRequest::RetiredTerminated { server } => {
                let Some(x) = r.retired.iter_mut().find(|x| x.spec.id == *server) else {
                    return refused(format!("{server} is not a retired server of {pair_id}"));
                };
                if !x.terminated {
                    x.terminated = true;
                    let line = format!(
                        "retired {server}: instance {} terminated, volumes {} kept (tagged {}=true) until an operator releases them",
                        x.spec.instance_id,
                        x.spec.volumes.join(","),
                        understudy_cloud::provision::tags::KEEP
                    );
                    pair.record(at, line);
                }
                Response::StateChanged { epoch: pair.epoch }
            }
        }
    }
}
