//! `OperatorService`: what `understudyctl` and dashboards call.
//!
//! Reads are answered by the leader only, after a linearizable read barrier
//! (openraft's ReadIndex: the leader confirms with a quorum that it still leads and
//! waits until its state machine has applied everything committed). A follower
//! answers `FAILED_PRECONDITION` with the leader's address in the `understudy-leader`
//! metadata, and the CLI retries there. Only the leader has the live agent view, so
//! this is also the only place where report ages are meaningful.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ReadPolicy;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use understudy_proto::operator_service_server::OperatorService;
use understudy_proto::{
    ClusterStatus, FailoverStatus, GetStatusRequest, GetStatusResponse, HistoryLine,
    OutdatedStatus, PairStatus, RaftMember, ServerStatus, StepStatus as StepStatusMsg,
};

use crate::config::ControllerConfig;
use crate::detector::decide;
use crate::leadership::LeaderView;
use crate::liveness::{agent_view, Liveness};
use crate::raft::store::SharedState;
use crate::raft::Raft;
use crate::state::StepStatus;

pub use crate::leadership::LEADER_METADATA;

/// The operator-facing gRPC service of one controller node.
pub struct OperatorGrpc {
    pub raft: Raft,
    pub cfg: ControllerConfig,
    pub leader: watch::Receiver<LeaderView>,
    pub liveness: Arc<Liveness>,
    pub state: SharedState,
}

impl OperatorGrpc {
    /// Refuse unless this node leads with a quorum and has applied all it committed.
    async fn leader_barrier(&self) -> Result<LeaderView, Status> {
        let view = self.leader.borrow().clone();
        if !view.is_leader {
            return Err(crate::leadership::not_leader(&view));
        }
        match tokio::time::timeout(
            Duration::from_secs(3),
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(_)) => Ok(view),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "cannot confirm leadership with a quorum: {e}"
            ))),
            Err(_) => Err(Status::unavailable(
                "cannot confirm leadership with a quorum within 3 s; is a majority of controllers up?",
            )),
        }
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorGrpc {
    async fn get_status(
        &self,
        _req: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let view = self.leader_barrier().await?;
        let data = self.state.snapshot();
        let metrics = self.raft.metrics().borrow_watched().clone();
        let matched: std::collections::BTreeMap<u64, u64> = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter_map(|(id, l)| l.as_ref().map(|l| (*id, l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let membership = data.membership.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| RaftMember {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                leader: view.leader_id == Some(*id),
                matched_index: matched.get(id).copied(),
            })
            .collect();
        let now = Instant::now();
        let pairs = data
            .state
            .pairs
            .values()
            .map(|p| {
                let live_p = self.liveness.get(&p.spec.primary.id);
                let live_b = self.liveness.get(&p.spec.backup.id);
                let serving_is_primary = p.serving_id() == p.spec.primary.id;
                let res = &p.spec.resource;
                let since = self.liveness.leading_since();
                let vp = agent_view(live_p.as_ref(), res, now, since);
                let vb = agent_view(live_b.as_ref(), res, now, since);
                let (sv, sb) = if serving_is_primary {
                    (&vp, &vb)
                } else {
                    (&vb, &vp)
                };
                let decision = decide(
                    p,
                    sv,
                    sb,
                    crate::leadership::now_unix_ms(),
                    &self.cfg.detector,
                );
                let server =
                    |spec: &crate::state::ServerSpec,
                     role: &str,
                     live: Option<&crate::liveness::ServerView>,
                     v: crate::observe::AgentView| ServerStatus {
                        stale: v.gone(self.cfg.detector.agent_timeout_ms),
                        silent_ms: v.silent_ms,
                        id: spec.id.clone(),
                        configured_role: role.into(),
                        address: spec.address.clone(),
                        zone: spec.zone.clone(),
                        connected: v.connected,
                        last_report_age_ms: live
                            .and_then(|l| l.last_report_at)
                            .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                        drbd: v.drbd,
                        host: live
                            .and_then(|l| l.last_report.as_ref())
                            .and_then(|r| r.host.clone()),
                        drbd_net: live
                            .and_then(|l| l.last_report.as_ref())
                            .and_then(|r| r.drbd.as_ref())
                            .and_then(|d| d.resources.iter().find(|r| &r.name == res))
                            .and_then(|r| r.net.clone()),
                        unknown: v.unknown,
                        observer_error: v.observer_error,
                    };
                PairStatus {
                    id: p.spec.id.clone(),
                    state: p.state.to_string(),
                    state_reason: p.state_reason.clone(),
                    epoch: p.epoch,
                    resource: p.spec.resource.clone(),
                    client_ip: p.spec.client_ip.clone(),
                    zone: p.spec.zone.clone(),
                    servers: vec![
                        server(&p.spec.primary, "primary", live_p.as_ref(), vp),
                        server(&p.spec.backup, "backup", live_b.as_ref(), vb),
                    ],
                    alerts: decision.alerts,
                    serving: p.serving_id().to_owned(),
                    decision: decision.reason,
                    failover: p.failover.as_ref().map(|f| FailoverStatus {
                        epoch: f.epoch,
                        from: f.from.clone(),
                        to: f.to.clone(),
                        automatic: f.automatic,
                        started_unix_ms: f.started_unix_ms,
                        steps: f
                            .steps
                            .iter()
                            .map(|s| {
                                let (status, duration_ms, detail) = match &s.status {
                                    StepStatus::Pending => ("pending", None, String::new()),
                                    StepStatus::Running { .. } => ("running", None, String::new()),
                                    StepStatus::Done {
                                        duration_ms,
                                        detail,
                                    } => ("done", Some(*duration_ms), detail.clone()),
                                    StepStatus::Failed {
                                        duration_ms,
                                        reason,
                                    } => ("failed", Some(*duration_ms), reason.clone()),
                                };
                                StepStatusMsg {
                                    step: s.step.to_string(),
                                    status: status.into(),
                                    duration_ms,
                                    detail,
                                    attempts: s.attempts,
                                }
                            })
                            .collect(),
                    }),
                    outdated: p.outdated.as_ref().map(|m| OutdatedStatus {
                        server: m.server.clone(),
                        lost_peer_unix_ms: m.lost_peer_unix_ms,
                        primary_alive_unix_ms: m.primary_alive_unix_ms,
                        source: m.source.clone(),
                    }),
                    history: p
                        .history
                        .iter()
                        .rev()
                        .take(20)
                        .rev()
                        .map(|h| HistoryLine {
                            at_unix_ms: h.at_unix_ms,
                            epoch: h.epoch,
                            event: h.event.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(GetStatusResponse {
            cluster: Some(ClusterStatus {
                answered_by: self.cfg.node_id,
                leader_id: view.leader_id,
                leader_addr: view.leader_addr.unwrap_or_default(),
                term: view.term,
                last_applied_index: data.last_applied.map(|l| l.index).unwrap_or(0),
                members,
            }),
            pairs,
        }))
    }
}
