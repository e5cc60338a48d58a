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
    ClusterStatus, GetStatusRequest, GetStatusResponse, PairStatus, RaftMember, ServerStatus,
};

use crate::config::ControllerConfig;
use crate::liveness::{agent_view, Liveness};
use crate::node::LeaderView;
use crate::observe::observe;
use crate::raft::store::SharedState;
use crate::raft::Raft;

/// gRPC metadata key carrying the leader's address on a redirect.
pub const LEADER_METADATA: &str = "understudy-leader";

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
            let mut st = Status::failed_precondition(match &view.leader_addr {
                Some(a) => format!("this controller is not the leader; the leader is at {a}"),
                None => "no leader is known yet; retry in a moment".into(),
            });
            if let Some(a) = &view.leader_addr {
                if let Ok(v) = a.parse() {
                    st.metadata_mut().insert(LEADER_METADATA, v);
                }
            }
            return Err(st);
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
                let res = &p.spec.resource;
                let vp = agent_view(live_p.as_ref(), res, now);
                let vb = agent_view(live_b.as_ref(), res, now);
                let alerts = observe(p, &vp, &vb, self.cfg.timing.agent_timeout_ms).alerts;
                let server =
                    |spec: &crate::state::ServerSpec,
                     role: &str,
                     live: Option<&crate::liveness::ServerView>,
                     v: crate::observe::AgentView| ServerStatus {
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
                    alerts,
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
