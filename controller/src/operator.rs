//! `OperatorService`: what `understudyctl` and dashboards call.
//!
//! Reads are answered by the leader only, after a linearizable read barrier
//! (openraft's ReadIndex: the leader confirms with a quorum that it still leads and
//! waits until its state machine has applied everything committed). A follower
//! answers `FAILED_PRECONDITION` with the leader's address in the `understudy-leader`
//! metadata, and the CLI retries there. Only the leader has the live agent view, so
//! this is also the only place where report ages are meaningful.
//!
//! Every call first checks the caller's role ([`Auth::operator`]): `GetStatus`
//! and `Check` need `viewer`; commands that change a pair need `admin`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ReadPolicy;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use understudy_proto::operator_service_server::OperatorService;
use understudy_proto::{
    CheckRequest, CheckResponse, ClusterStatus, FailoverStatus, GetStatusRequest,
    GetStatusResponse, HistoryLine, OutdatedStatus, PairFindings, PairStatus, RaftMember,
    ResyncStatus, RetiredStatus, ServerStatus, SpareStatus, StepStatus as StepStatusMsg,
};

use crate::auth::{Auth, Role};
use crate::config::ControllerConfig;
use crate::detector::decide;
use crate::leadership::LeaderView;
use crate::liveness::{agent_view, Liveness};
use crate::raft::store::SharedState;
use crate::raft::Raft;
use crate::state::StepStatus;

/// The operator-facing gRPC service of one controller node.
pub struct OperatorGrpc {
    pub raft: Raft,
    pub cfg: Arc<ControllerConfig>,
    pub leader: watch::Receiver<LeaderView>,
    pub liveness: Arc<Liveness>,
    pub state: SharedState,
    /// Spare launch errors (leader memory).
    pub provisioning: Arc<crate::redundancy::Provisioning>,
    /// The latest inventory preflight (leader memory).
    pub findings: Arc<crate::preflight::Findings>,
    /// For `Check`: volumes attached, the launch template's zone.
    pub cloud: Arc<dyn understudy_cloud::Cloud>,
    /// The latest cloud signals (leader memory).
    pub signals: Arc<crate::signals::Signals>,
    /// Who may call what (roles).
    pub auth: Auth,
}

impl OperatorGrpc {
    /// The status as the leader sees it (after a linearizable read barrier).
    pub async fn status(&self) -> Result<GetStatusResponse, Status> {
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
                let since = self.liveness.silence_origin();
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
                let resync = {
                    let standby = p.standby_id();
                    let live = if standby == p.spec.primary.id {
                        live_p.as_ref()
                    } else {
                        live_b.as_ref()
                    };
                    let v = if standby == p.spec.primary.id {
                        &vp
                    } else {
                        &vb
                    };
                    live.and_then(|l| l.resync.get(res))
                        .and_then(|t| t.estimate())
                        .map(|e| ResyncStatus {
                            server_id: standby.to_string(),
                            percent: v.drbd.as_ref().and_then(|d| d.done_percent),
                            out_of_sync_bytes: Some(e.out_of_sync_bytes),
                            rate_kib_per_s: e.rate_bytes_per_s.map(|r| r / 1024.0),
                            eta_ms: e.eta_ms,
                        })
                };
                let signal = self.signals.status_line(
                    p,
                    sb,
                    crate::leadership::now_unix_ms(),
                    &self.cfg.signals,
                );
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
                            .map(|s| step_status(&s.step.to_string(), &s.status, s.attempts))
                            .collect(),
                        kind: f.kind().into(),
                        ..Default::default()
                    }),
                    spare: p.redundancy.spare.as_ref().map(|s| SpareStatus {
                        server_id: s.server_id.clone(),
                        instance_id: s
                            .instance
                            .as_ref()
                            .map(|i| i.instance_id.clone())
                            .unwrap_or_default(),
                        address: s
                            .instance
                            .as_ref()
                            .map(|i| i.address.clone())
                            .unwrap_or_default(),
                        zone: s
                            .instance
                            .as_ref()
                            .map(|i| i.zone.clone())
                            .unwrap_or_default(),
                        state: if s.terminating {
                            "terminating"
                        } else if s.instance.is_some() {
                            "launched"
                        } else {
                            "requested"
                        }
                        .into(),
                        reason: s.reason.clone(),
                        requested_unix_ms: s.requested_unix_ms,
                    }),
                    rebuild: p.redundancy.rebuild.as_ref().map(|r| FailoverStatus {
                        epoch: r.id,
                        from: r.replaces.clone(),
                        to: r.spare.clone(),
                        automatic: true,
                        started_unix_ms: r.started_unix_ms,
                        steps: r
                            .steps
                            .iter()
                            .map(|s| step_status(&s.step.to_string(), &s.status, s.attempts))
                            .collect(),
                        kind: "rebuild".into(),
                        ..Default::default()
                    }),
                    last_failover: p.stats.last_failover.as_ref().map(finished_status),
                    last_rebuild: p.stats.last_rebuild.as_ref().map(finished_status),
                    retired: p
                        .redundancy
                        .retired
                        .iter()
                        .map(|x| RetiredStatus {
                            server_id: x.spec.id.clone(),
                            instance_id: x.spec.instance_id.clone(),
                            volumes: x.spec.volumes.clone(),
                            replaced_by: x.replaced_by.clone(),
                            terminated: x.terminated,
                        })
                        .collect(),
                    resync,
                    provisioning_error: self.provisioning.get(&p.spec.id).unwrap_or_default(),
                    findings: self.findings.get(&p.spec.id),
                    paused: p
                        .ops
                        .paused
                        .as_ref()
                        .map(|x| {
                            format!(
                                "paused by {} at {}",
                                x.by,
                                crate::state::fmt_unix_ms(x.at_unix_ms)
                            )
                        })
                        .unwrap_or_default(),
                    maintenance: p
                        .ops
                        .maintenance_at(crate::leadership::now_unix_ms())
                        .map(|m| {
                            format!(
                                "until {} by {}: {}",
                                crate::state::fmt_unix_ms(m.until_unix_ms),
                                m.by,
                                m.reason
                            )
                        })
                        .unwrap_or_default(),
                    scheduled_switchover: p
                        .ops
                        .scheduled
                        .as_ref()
                        .map(|x| {
                            format!(
                                "to {} at {} (by {})",
                                x.to,
                                crate::state::fmt_unix_ms(x.at_unix_ms),
                                x.by
                            )
                        })
                        .unwrap_or_default(),
                    signal,
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
                        .take(HISTORY_IN_STATUS)
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
        Ok(GetStatusResponse {
            cluster: Some(ClusterStatus {
                answered_by: self.cfg.node_id,
                leader_id: view.leader_id,
                leader_addr: view.leader_addr.unwrap_or_default(),
                term: view.term,
                last_applied_index: data.last_applied.map(|l| l.index).unwrap_or(0),
                members,
                insecure: self.auth.insecure,
            }),
            pairs,
        })
    }

    /// Refuse unless this node leads with a quorum and has applied all it committed.
    pub(crate) async fn leader_barrier(&self) -> Result<LeaderView, Status> {
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
    type WatchStream = crate::command::WatchStream;

    async fn command(
        &self,
        req: Request<understudy_proto::OperatorCommandRequest>,
    ) -> Result<Response<understudy_proto::OperatorCommandResponse>, Status> {
        self.run_command(req).await
    }

    async fn history(
        &self,
        req: Request<understudy_proto::HistoryRequest>,
    ) -> Result<Response<understudy_proto::HistoryResponse>, Status> {
        OperatorGrpc::history(self, req).await
    }

    async fn explain(
        &self,
        req: Request<understudy_proto::ExplainRequest>,
    ) -> Result<Response<understudy_proto::ExplainResponse>, Status> {
        OperatorGrpc::explain(self, req).await
    }

    async fn watch(
        &self,
        req: Request<understudy_proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        OperatorGrpc::watch(self, req).await
    }

    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        self.auth.operator(&req, Role::Viewer)?;
        let view = self.leader_barrier().await?;
        let only = req.into_inner().pair_id;
        let data = self.state.snapshot();
        if !only.is_empty() && !data.state.pairs.contains_key(&only) {
            return Err(Status::not_found(format!(
                "no pair {only:?} in the inventory"
            )));
        }
        // The agents re-run their self-checks first (read-only: any epoch).
        let mut waits = Vec::new();
        for p in data.state.pairs.values() {
            if !only.is_empty() && p.spec.id != only {
                continue;
            }
            for s in [&p.spec.primary, &p.spec.backup] {
                let cmd = understudy_proto::Command {
                    command_id: 0,
                    raft_term: view.term,
                    epoch: p.epoch,
                    pair_id: p.spec.id.clone(),
                    timeout_ms: 2000,
                    action: Some(understudy_proto::command::Action::SelfCheck(
                        understudy_proto::RunSelfCheck {},
                    )),
                };
                if let Ok(rx) = self.liveness.send_command(&s.id, cmd) {
                    waits.push(rx);
                }
            }
        }
        for rx in waits {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), rx).await;
        }
        // Their fresh reports follow the results on the same stream.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let data = self.state.snapshot();
        let all = crate::preflight::run_all(
            self.cloud.as_ref(),
            &data.state,
            &self.liveness,
            &self.cfg.preflight,
            self.cfg.spare.is_some(),
            (!only.is_empty()).then_some(only.as_str()),
        )
        .await;
        for (id, f) in &all {
            self.findings.set(id, f.clone());
        }
        Ok(Response::new(CheckResponse {
            pairs: all
                .into_iter()
                .map(|(pair_id, findings)| PairFindings { pair_id, findings })
                .collect(),
        }))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        self.auth.operator(&req, Role::Viewer)?;
        Ok(Response::new(self.status().await?))
    }
}

/// How many of a pair's latest history lines the status carries (a failover
/// and the rebuild after it fit).
pub const HISTORY_IN_STATUS: usize = 60;

/// A plan step as the status shows it.
fn step_status(step: &str, status: &StepStatus, attempts: u32) -> StepStatusMsg {
    let (word, duration_ms, detail, started_unix_ms) = match status {
        StepStatus::Pending => ("pending", None, String::new(), 0),
        StepStatus::Running {
            started_unix_ms, ..
        } => ("running", None, String::new(), *started_unix_ms),
        StepStatus::Done {
            duration_ms,
            detail,
        } => ("done", Some(*duration_ms), detail.clone(), 0),
        StepStatus::Failed {
            duration_ms,
            reason,
        } => ("failed", Some(*duration_ms), reason.clone(), 0),
    };
    StepStatusMsg {
        step: step.to_string(),
        status: word.into(),
        duration_ms,
        detail,
        attempts,
        started_unix_ms,
    }
}

/// A finished plan (`PairStats`) as the status shows it.
fn finished_status(f: &crate::state::stats::FinishedPlan) -> FailoverStatus {
    FailoverStatus {
        epoch: f.epoch,
        from: f.from.clone(),
        to: f.to.clone(),
        automatic: f.automatic,
        started_unix_ms: f.started_unix_ms,
        steps: f
            .steps
            .iter()
            .map(|s| StepStatusMsg {
                step: s.step.clone(),
                status: s.status.clone(),
                duration_ms: s.duration_ms,
                detail: s.detail.clone(),
                attempts: s.attempts,
                started_unix_ms: 0,
            })
            .collect(),
        finished_unix_ms: f.finished_unix_ms,
        outcome: f.outcome.clone(),
        kind: f.kind.clone(),
        end: f.end.clone(),
    }
}
