//! DRBD's fence-peer handler, controller side (S1).
//!
//! With `fencing resource-and-stonith`, a DRBD Primary that loses its replication
//! connection suspends its I/O and runs its `fence-peer` handler; the agent ships
//! one (`understudy-fence-peer`, like Pacemaker's `crm-fence-peer.9.sh`) that
//! calls `AgentService.FencePeer` here. The leader commits to Raft that the peer
//! is outdated from now on, and only then answers: the handler exits 4 ("peer
//! outdated") and DRBD resumes I/O. So no write is acknowledged by the Primary
//! while the controller could still promote the peer, closing the window between
//! the link loss and the controller noticing it from the reports.
//!
//! Refusals keep the Primary's I/O frozen, on purpose: a server that is not the
//! pair's serving server (a former primary after a failover, S10), or a pair
//! whose failover is in flight, must not write unprotected.

use tonic::Status;
use tracing::Instrument;
use understudy_proto::{FencePeerRequest, FencePeerResponse};

use crate::leadership::{not_leader, now_unix_ms, write, LeaderView};
use crate::raft::store::SharedState;
use crate::raft::Raft;
use crate::state::{PairRecord, Request, Response};

/// What to do with a request that passed [`check`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The serving server lost its peer: record the peer outdated.
    Outdate,
    /// The failover target promotes (DRBD runs the handler before promoting
    /// without a connected peer): its peer, the old primary, is already fenced
    /// by the plan's Fence step; nothing to record.
    AlreadyFenced(String),
}

/// Why a fence-peer request is refused before anything is committed; pure.
pub fn check(pair: &PairRecord, req: &FencePeerRequest) -> Result<Verdict, Status> {
    if pair.server(&req.server_id).is_none() {
        return Err(Status::permission_denied(format!(
            "server {:?} is not a member of pair {:?}",
            req.server_id, pair.spec.id
        )));
    }
    if req.resource != pair.spec.resource {
        return Err(Status::invalid_argument(format!(
            "pair {} replicates DRBD resource {:?}, not {:?}",
            pair.spec.id, pair.spec.resource, req.resource
        )));
    }
    if let Some(plan) = &pair.failover {
        let fenced = plan.steps.iter().any(|s| {
            s.step == crate::state::Step::Fence
                && matches!(s.status, crate::state::StepStatus::Done { .. })
        });
        if fenced && req.server_id == plan.to {
            return Ok(Verdict::AlreadyFenced(format!(
                "{} was fenced by failover epoch {} (step Fence done): {} may promote",
                plan.from, plan.epoch, plan.to
            )));
        }
        return Err(Status::failed_precondition(format!(
            "pair {} is failing over from {} to {} (epoch {}): {} must not write unprotected; its I/O stays suspended",
            pair.spec.id, plan.from, plan.to, plan.epoch, req.server_id
        )));
    }
    if pair.serving_id() != req.server_id {
        return Err(Status::permission_denied(format!(
            "{} is not the serving server of pair {} at epoch {} ({} is): it was failed over and must be stood down (S10); its I/O stays suspended",
            req.server_id,
            pair.spec.id,
            pair.epoch,
            pair.serving_id()
        )));
    }
    if req.highest_epoch > pair.epoch {
        return Err(Status::failed_precondition(format!(
            "{} holds epoch {} but pair {} is at epoch {}: the controller's state is behind; retry",
            req.server_id, req.highest_epoch, pair.spec.id, pair.epoch
        )));
    }
    Ok(Verdict::Outdate)
}

/// Handle one request on this node.
pub async fn handle(
    raft: &Raft,
    state: &SharedState,
    view: &LeaderView,
    req: FencePeerRequest,
) -> Result<FencePeerResponse, Status> {
    if !view.is_leader {
        return Err(not_leader(view));
    }
    let pair = state
        .snapshot()
        .state
        .pairs
        .get(&req.pair_id)
        .cloned()
        .ok_or_else(|| {
            Status::not_found(format!(
                "pair {:?} is not in the controller inventory",
                req.pair_id
            ))
        })?;
    if let Verdict::AlreadyFenced(detail) = check(&pair, &req)? {
        tracing::info!(pair = %pair.spec.id, server = %req.server_id, %detail, "fence-peer before promotion");
        return Ok(FencePeerResponse {
            outdated_server: pair
                .failover
                .as_ref()
                .map(|p| p.from.clone())
                .unwrap_or_default(),
            epoch: pair.epoch,
            detail,
        });
    }
    let peer = pair.standby_id().to_owned();
    let now = now_unix_ms();
    let span = tracing::info_span!("fence_peer", pair = %pair.spec.id, epoch = pair.epoch, server = %req.server_id, peer = %peer);
    span.in_scope(|| tracing::warn!("DRBD fence-peer handler: recording the peer as outdated"));
    let resp = write(
        raft,
        Request::MarkOutdated {
            pair_id: pair.spec.id.clone(),
            epoch: pair.epoch,
            server: peer.clone(),
            lost_peer_unix_ms: now,
            primary_alive_unix_ms: now,
            source: format!("DRBD fence-peer handler on {}", req.server_id),
            at_unix_ms: now,
        },
    )
    .instrument(span.clone())
    .await
    .map_err(|e| {
        Status::unavailable(format!(
            "{e}; the peer is NOT recorded outdated, so the Primary's I/O stays suspended"
        ))
    })?;
    match resp {
        Response::StateChanged { epoch } => Ok(FencePeerResponse {
            outdated_server: peer.clone(),
            epoch,
            detail: format!(
                "{peer} is recorded outdated at epoch {epoch}: it will not be promoted automatically until it is in sync again"
            ),
        }),
        Response::Refused { reason } => Err(Status::failed_precondition(reason)),
        other => Err(Status::internal(format!("unexpected answer: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PairState;
    use crate::testutil::pair;

    fn req(server: &str) -> FencePeerRequest {
        FencePeerRequest {
            server_id: server.into(),
            pair_id: "p".into(),
            resource: "r0".into(),
            peer_node_id: Some(1),
            highest_epoch: 3,
        }
    }

    #[test]
    fn only_the_serving_server_may_outdate_its_peer() {
        let p = pair(PairState::Healthy);
        assert_eq!(check(&p, &req("a")).unwrap(), Verdict::Outdate);
        let e = check(&p, &req("b")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("stood down (S10)"), "{}", e.message());
        let e = check(&p, &req("zz")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let mut other = req("a");
        other.resource = "r9".into();
        assert_eq!(
            check(&p, &other).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut ahead = req("a");
        ahead.highest_epoch = 4;
        assert_eq!(
            check(&p, &ahead).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn a_pair_failing_over_keeps_the_primary_frozen() {
        let mut p = pair(PairState::FailingOver);
        p.failover = Some(crate::state::FailoverPlan {
            epoch: 4,
            from: "a".into(),
            to: "b".into(),
            reason: "test".into(),
            automatic: true,
            started_unix_ms: 0,
            steps: crate::state::Step::ALL
                .iter()
                .map(|s| crate::state::StepRecord {
                    step: *s,
                    status: crate::state::StepStatus::Pending,
                    attempts: 0,
                })
                .collect(),
            force: false,
        });
        let e = check(&p, &req("a")).unwrap_err();
        assert!(e.message().contains("stays suspended"), "{}", e.message());
        // The target promoting before the old primary is fenced: refused too.
        assert!(check(&p, &req("b")).is_err());
        // Once Fence is done, the target's promotion may go ahead.
        let plan = p.failover.as_mut().unwrap();
        plan.steps[1].status = crate::state::StepStatus::Done {
            duration_ms: 5,
            detail: "fenced".into(),
        };
        assert!(matches!(
            check(&p, &req("b")).unwrap(),
            Verdict::AlreadyFenced(d) if d.contains("a was fenced by failover epoch 4")
        ));
        assert!(
            check(&p, &req("a")).is_err(),
            "the old primary stays frozen"
        );
    }
}
