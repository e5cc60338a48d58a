//! `AgentService`: the long-lived bidirectional session each agent opens.
//!
//! The agent sends `Hello` first. A node that is not the Raft leader answers
//! `Redirect` with the leader's address (or none yet) and ends the stream; the
//! agent follows it. The leader answers `Welcome`, then records every heartbeat and
//! report in [`Liveness`]. When this node loses leadership, every open session gets
//! a `Redirect` and is closed, so agents always talk to the current leader.
//!
//! With TLS, an agent's certificate names its server (`understudy:agent:<id>`):
//! a `Hello` for another server, or a `FencePeer` request for another server,
//! is refused with `PERMISSION_DENIED` before anything is recorded.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use understudy_proto::agent_message::Msg;
use understudy_proto::agent_service_server::AgentService;
use understudy_proto::controller_message::Msg as Out;
use understudy_proto::{
    AgentMessage, ControllerMessage, FencePeerRequest, FencePeerResponse, HeartbeatAck, Hello,
    Redirect, ServerRole, Welcome,
};

use openraft::async_runtime::watch::WatchReceiver;

use crate::auth::{Auth, Caller};
use crate::leadership::LeaderView;
use crate::liveness::{Liveness, SessionItem};
use crate::raft::store::SharedState;
use crate::relay::{NotRelayed, Relay};

/// How long a new session may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent-facing gRPC service of one controller node.
pub struct AgentGrpc {
    pub raft: crate::raft::Raft,
    pub node_id: u64,
    pub leader: watch::Receiver<LeaderView>,
    pub liveness: Arc<Liveness>,
    pub state: SharedState,
    pub heartbeat_ms: u64,
    /// Who may report for which server.
    pub auth: Auth,
    /// Relay sessions to the leader while a follower (`None`: redirect them).
    pub relay: Option<Arc<Relay>>,
    /// While leading, hand the agents that dial this node to a follower that
    /// acknowledged it within this lease (`crate::handoff`; `None`: serve them).
    pub handoff: Option<Duration>,
    next_session: AtomicU64,
}

impl AgentGrpc {
    pub fn new(
        raft: crate::raft::Raft,
        node_id: u64,
        leader: watch::Receiver<LeaderView>,
        liveness: Arc<Liveness>,
        state: SharedState,
        heartbeat_ms: u64,
        auth: Auth,
        relay: Option<Arc<Relay>>,
        handoff: Option<Duration>,
    ) -> Self {
        Self {
            raft,
            node_id,
            leader,
            liveness,
            state,
            heartbeat_ms,
            auth,
            relay,
            handoff,
            next_session: AtomicU64::new(1),
        }
    }

    /// Check that the hello names a server of the inventory, in the role it has there.
    fn check_hello(&self, h: &Hello) -> Result<(), Status> {
        let data = self.state.snapshot();
        let Some(pair) = data.state.pairs.get(&h.pair_id) else {
            return Err(Status::permission_denied(format!(
                "pair {:?} is not in the controller inventory; add it under [[pairs]] in the controller configuration",
                h.pair_id
            )));
        };
        let spec = &pair.spec;
        // A spare (not yet a member) and a server that replaced a member run
        // with whatever role their boot gave them: the inventory decides.
        let spare = pair
            .redundancy
            .spare
            .as_ref()
            .is_some_and(|s| s.server_id == h.server_id);
        let replacement = pair
            .redundancy
            .replacements
            .iter()
            .any(|r| r.new.id == h.server_id && pair.server(&h.server_id).is_some());
        if spare || replacement {
            return Ok(());
        }
        let expected = if spec.primary.id == h.server_id {
            ServerRole::Primary
        } else if spec.backup.id == h.server_id {
            ServerRole::Backup
        } else {
            return Err(Status::permission_denied(format!(
                "server {:?} is not a member of pair {:?} (members: {}, {})",
                h.server_id, h.pair_id, spec.primary.id, spec.backup.id
            )));
        };
        if h.role() != expected {
            return Err(Status::permission_denied(format!(
                "server {:?} says it is {:?} of pair {:?} but the inventory has it as {:?}; fix the agent configuration",
                h.server_id,
                h.role(),
                h.pair_id,
                expected
            )));
        }
        Ok(())
    }
}

/// Which of a session's messages to acknowledge: enough for the agent's stall
/// bound, not every one. An acknowledgement is a TLS record and a `write`
/// system call on the leader, and at thousands of agents those are most of
/// its CPU (ARCHITECTURE.md, Scale). The agent sends something at least every
/// heartbeat interval (a heartbeat, or a report: it counts its interval from
/// its last message of any kind), and answering the first message that comes
/// `stall_ms / 4` or more after the last answer keeps the longest gap the agent
/// sees within `stall_ms / 4` plus one interval: at most `3/4 × stall_ms`,
/// since an agent's `stall_ms` is at least twice its interval
/// (`agent/src/config.rs`). With the defaults (200 ms, 1 s): every other
/// heartbeat. An agent that gave no bound (0, an older agent) has every
/// message answered.
#[derive(Debug)]
pub struct AckPacer {
    every: Duration,
    last: Option<Instant>,
}

impl AckPacer {
    pub fn new(stall_ms: u64) -> Self {
        Self {
            every: Duration::from_millis(stall_ms / 4),
            last: None,
        }
    }

    /// A heartbeat arrived at `now`: answer it?
    pub fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|l| now.duration_since(l) >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Answer the agent's message `seq` if its pacer says one is due: lets the
/// agent tell a stalled stream (agent/src/session.rs).
fn acknowledge(tx: &mpsc::Sender<SessionItem>, acks: &mut AckPacer, seq: u64) {
    if acks.due(Instant::now()) {
        let _ = tx.try_send(Box::new(Ok(ControllerMessage {
            msg: Some(Out::HeartbeatAck(HeartbeatAck { seq })),
        })));
    }
}

/// The redirect to send when this node is not (or no longer) the leader.
pub fn redirect(view: &LeaderView, reason: &str) -> ControllerMessage {
    redirect_message(leader_redirect(view, reason))
}

/// A `Redirect` naming the leader `view` knows (none yet: empty), for
/// `reason`; callers mark it relayed or add a follower to go through.
pub fn leader_redirect(view: &LeaderView, reason: &str) -> Redirect {
    Redirect {
        leader_id: view.leader_id,
        leader_addr: view.leader_addr.clone().unwrap_or_default(),
        reason: reason.into(),
        ..Default::default()
    }
}

/// `r` as a message down an agent's session.
pub fn redirect_message(r: Redirect) -> ControllerMessage {
    ControllerMessage {
        msg: Some(Out::Redirect(r)),
    }
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    type SessionStream =
        Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send + 'static>>;

    async fn fence_peer(
        &self,
        req: Request<FencePeerRequest>,
    ) -> Result<Response<FencePeerResponse>, Status> {
        // Only the agent of the server the request names: another server's
        // agent could otherwise outdate a healthy peer.
        self.auth
            .agent_for(&req, &req.get_ref().server_id)
            .inspect_err(|e| tracing::warn!(error = %e.message(), "fence-peer request refused"))?;
        let view = self.leader.borrow().clone();
        crate::fence_peer::handle(&self.raft, &self.state, &view, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = self.auth.caller(&req)?;
        let relayed_by = crate::relay::relayed_by(&req);
        match (&caller, relayed_by) {
            (Caller::Agent { .. } | Caller::Insecure, _) => {}
            // A follower relaying an agent's session: it checked the agent's
            // certificate (below) before it opened this one.
            (Caller::Peer { node_id }, Some(via)) if *node_id == via => {}
            _ => {
                return Err(Status::permission_denied(format!(
                    "{} may not open an agent session; agents use certificates from `understudyctl certs issue --agent SERVER_ID`",
                    caller.identity()
                )))
            }
        }
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 5 s"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(Msg::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        // The certificate decides which server this agent speaks for: nothing
        // of a Hello for another server is recorded.
        if !matches!(caller, Caller::Peer { .. }) {
            Auth::agent_allowed(&caller, &hello.server_id).inspect_err(|e| {
                tracing::warn!(error = %e.message(), "agent session refused");
            })?;
        }
        let (tx, rx) = mpsc::channel(64);
        let view = self.leader.borrow().clone();
        if !view.is_leader {
            // Relay it to the leader if this node knows another one (and the
            // session is not relayed already), else redirect the agent.
            if let (Some(relay), None, Some(addr), true) = (
                &self.relay,
                relayed_by,
                view.leader_addr.as_ref(),
                view.leader_id.is_some_and(|l| l != self.node_id),
            ) {
                let server = hello.server_id.clone();
                let first = AgentMessage {
                    msg: Some(Msg::Hello(hello)),
                };
                // Given up as soon as this node learns of another leader
                // (the one it relays to was cut off and the others elected a
                // new one): the agent comes back at once and is relayed to
                // the new leader, instead of waiting out `OPEN_TIMEOUT`.
                let mut moved = self.leader.clone();
                let was = view.leader_id;
                let opened = tokio::select! {
                    r = relay.open(addr, first, inbound) => r,
                    _ = moved.wait_for(|v| v.leader_id != was) => Err(NotRelayed::Unreachable(
                        "this controller learned of another leader".into(),
                    )),
                };
                match opened {
                    Ok(up) => {
                        tracing::debug!(server = %server, leader = %addr, "agent session relayed to the leader");
                        return Ok(Response::new(Box::pin(crate::relay::downstream(
                            up,
                            self.node_id,
                        ))));
                    }
                    Err(NotRelayed::Refused(st)) => return Err(st),
                    Err(NotRelayed::Unreachable(why)) => {
                        // The leader just died, most often, and this node does
                        // not know the next one yet: the agent comes back here
                        // shortly, on its connection (and after a few seconds
                        // of this, tries the other controllers itself).
                        tracing::debug!(server = %server, reason = %why, "agent session not relayed: the agent is asked to come back");
                        let m = redirect_message(Redirect {
                            relayed_by: self.node_id,
                            ..leader_redirect(&view, &format!("not relayed: {why}"))
                        });
                        let _ = tx.send(Box::new(Ok(m))).await;
                        return Ok(Response::new(session_stream(rx)));
                    }
                }
            }
            let _ = tx
                .send(Box::new(Ok(redirect(
                    &view,
                    "this controller is not the leader",
                ))))
                .await;
            return Ok(Response::new(session_stream(rx)));
        }
        self.check_hello(&hello)?;
        // An agent that dialled the leader itself and follows handoffs: to a
        // healthy follower, which relays it (`crate::handoff`).
        if let (Some(lease), None, true) = (self.handoff, relayed_by, hello.handoff_ok) {
            let followers = crate::handoff::healthy_followers(
                &self.raft.metrics().borrow_watched(),
                self.node_id,
                lease,
            );
            if let Some(f) = crate::handoff::pick(&hello.server_id, &followers) {
                tracing::debug!(server = %hello.server_id, via = f.id, "agent handed to a follower");
                let m = redirect_message(Redirect {
                    via_addr: f.addr.clone(),
                    via_id: f.id,
                    ..leader_redirect(&view, "the leader serves agents through its followers")
                });
                let _ = tx.send(Box::new(Ok(m))).await;
                return Ok(Response::new(session_stream(rx)));
            }
        }
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let server_id = hello.server_id.clone();
        tracing::info!(server = %server_id, pair = %hello.pair_id, session, relayed_by, "agent connected");
        let _ = tx
            .send(Box::new(Ok(ControllerMessage {
                msg: Some(Out::Welcome(Welcome {
                    node_id: self.node_id,
                    raft_term: view.term,
                    heartbeat_interval_ms: self.heartbeat_ms,
                    relayed_by: relayed_by.unwrap_or(0),
                })),
            })))
            .await;
        let mut acks = AckPacer::new(hello.stall_ms);
        self.liveness.connected(session, hello, tx.clone());

        let liveness = self.liveness.clone();
        let mut leader = self.leader.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(AgentMessage { msg: Some(m) })) => match m {
                            Msg::Report(r) => {
                                let seq = r.seq;
                                liveness.report(&server_id, session, r);
                                acknowledge(&tx, &mut acks, seq);
                            }
                            Msg::Heartbeat(h) => {
                                liveness.heard(&server_id, session);
                                acknowledge(&tx, &mut acks, h.seq);
                            }
                            Msg::CommandResult(r) => {
                                liveness.heard(&server_id, session);
                                acknowledge(&tx, &mut acks, 0);
                                tracing::info!(server = %server_id, command = r.command_id, ok = r.ok, error = %r.error, "command result");
                                liveness.command_result(r);
                            }
                            Msg::Hello(_) => {
                                let _ = tx.send(Box::new(Err(Status::invalid_argument("Hello sent twice")))).await;
                                break;
                            }
                        },
                        Ok(Some(AgentMessage { msg: None })) => {}
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(server = %server_id, session, error = %e, "agent stream broken");
                            break;
                        }
                    },
                    changed = leader.changed() => {
                        let view = leader.borrow_and_update().clone();
                        // Kept through a short lapse of the lease
                        // (`leadership::holds_sessions`).
                        if changed.is_err() || !view.holds_sessions {
                            let _ = tx.send(Box::new(Ok(redirect(&view, "leadership moved")))).await;
                            break;
                        }
                    }
                }
            }
            tracing::info!(server = %server_id, session, "agent session closed");
            liveness.disconnected(&server_id, session);
        });
        Ok(Response::new(session_stream(rx)))
    }
}

/// The agent's side of its session: the boxed messages unboxed.
fn session_stream(rx: mpsc::Receiver<SessionItem>) -> <AgentGrpc as AgentService>::SessionStream {
    use tokio_stream::StreamExt;
    Box::pin(ReceiverStream::new(rx).map(|m| *m))
}

#[cfg(test)]
mod tests {
    use super::AckPacer;
    use std::time::{Duration, Instant};

    /// The acknowledgements `AckPacer` gives heartbeats that arrive at these
    /// offsets (ms), and the longest time the agent waits between two.
    fn run(stall_ms: u64, arrivals: &[u64]) -> (Vec<u64>, u64) {
        let t0 = Instant::now();
        let mut p = AckPacer::new(stall_ms);
        let acked: Vec<u64> = arrivals
            .iter()
            .copied()
            .filter(|&a| p.due(t0 + Duration::from_millis(a)))
            .collect();
        let gap = acked.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        (acked, gap)
    }

    #[test]
    fn with_the_default_bounds_every_other_heartbeat_is_answered() {
        let beats: Vec<u64> = (0..10).map(|i| i * 200).collect();
        let (acked, gap) = run(1000, &beats);
        assert_eq!(acked, vec![0, 400, 800, 1200, 1600]);
        assert_eq!(gap, 400);
    }

    #[test]
    fn an_agent_without_a_bound_has_every_heartbeat_answered() {
        let beats: Vec<u64> = (0..10).map(|i| i * 200).collect();
        assert_eq!(run(0, &beats).0, beats);
        // The tightest bound an agent may have (twice its interval): every one.
        assert_eq!(run(400, &beats).0, beats);
    }

    #[test]
    fn the_gap_stays_within_three_quarters_of_the_bound_whatever_the_timing() {
        // The agent sends something (heartbeat, report, result) at most one
        // interval after its last message; reports can come much closer.
        // Over a grid of intervals and bounds, with pseudo-random spacing in
        // (0, interval], the agent never waits more than bound / 4 plus one
        // interval between two answers: at most 3/4 of its bound.
        for interval in [50u64, 100, 200, 500] {
            for stall in [2 * interval, 3 * interval, 5 * interval, 10 * interval] {
                for seed in 0..50u64 {
                    let mut x = seed;
                    let mut t = 0;
                    let mut arrivals = Vec::new();
                    for _ in 0..500 {
                        arrivals.push(t);
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        t += 1 + (x >> 33) % interval;
                    }
                    let (acked, gap) = run(stall, &arrivals);
                    assert!(acked.len() > 1);
                    assert!(
                        gap <= stall / 4 + interval && gap * 4 <= stall * 3,
                        "interval {interval}, stall {stall}, seed {seed}: gap {gap}"
                    );
                }
            }
        }
    }
}
