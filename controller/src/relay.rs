//! A follower's relay of agent sessions to the leader.
//!
//! An agent may dial any controller. The leader serves its session itself; a
//! follower that knows the leader opens the same `AgentService.Session` on the
//! leader for it, over one of the follower's few connections to the leader
//! ([`CONNECTIONS`]; HTTP/2 streams share them), and pipes both directions
//! unchanged: the agent's `Hello`, reports, heartbeats and command results up,
//! the leader's `Welcome`, acknowledgements, commands and redirects down. The
//! leader therefore holds a few connections per follower, not one per agent:
//! at thousands of agents the TLS and HTTP/2 state of their connections was
//! most of the leader's memory and its `write` calls most of its CPU
//! (ARCHITECTURE.md, Scale), and now the followers carry it (the leader hands
//! them the agents that dial it: `crate::handoff`).
//!
//! Nothing about the session changes meaning: the leader decides, records and
//! acknowledges as for a direct session, so the agent's stall detection still
//! measures the whole path to the leader, and a leader that loses its
//! leadership redirects relayed sessions like direct ones. The follower issues
//! nothing of its own (S6): it forwards what the leader sent on the stream the
//! leader answered. A relayed request carries [`RELAYED_BY`]; a node never relays
//! one again (no loops when followers disagree about who leads), and the leader
//! accepts a session from a controller's certificate only with it, the
//! follower having checked the agent's own certificate first.
//!
//! When the leader's connection breaks under a relayed session, the agent gets
//! a `Redirect` naming no leader ([`downstream`]). That one, any redirect the
//! node behind the follower sends (it stood down, or does not lead yet), and
//! the follower's own answer when it cannot reach the leader (no connection,
//! no answer within [`OPEN_TIMEOUT`]: the leader just died, most often) carry
//! `relayed_by`, and the agent opens its next session through the same
//! follower, on its connection, after a short pause, for up to 3 s before it
//! tries the other controllers itself (`agent/src/session.rs`): after an
//! election only the agents that were connected to the old leader itself
//! handshake again.

use std::sync::Mutex;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};
use understudy_proto::agent_service_client::AgentServiceClient;
use understudy_proto::controller_message::Msg as Out;
use understudy_proto::{AgentMessage, ControllerMessage, Redirect};
use understudy_tls::ClientTls;

use crate::agents::redirect_message;

/// Request metadata naming the follower that relays a session.
pub const RELAYED_BY: &str = "understudy-relayed-by";

/// How long a follower waits for the leader to take a relayed session before
/// it asks the agent to come back (the agent waits 2 s for an answer).
pub const OPEN_TIMEOUT: Duration = Duration::from_millis(1500);

/// How many connections a follower opens to the leader for the sessions it
/// relays (each session on one of them, by a hash of its server id). One
/// connection for thousands of sessions is one task on the leader for all of
/// their frames, and one keepalive, one flow-control window and one set of
/// h2 guards for all of them: when it goes, every session on it goes
/// (`crate::transport`). Spread over several, a connection's trouble ends a
/// share of them, and the leader's threads share the work. Each costs a
/// little CPU on both sides (fewer frames written per system call): at 2000
/// pairs a follower used 0.36 core with one connection, 0.39 with eight.
pub const CONNECTIONS: usize = 4;

/// A relay connection counts as dead when the leader has not answered its
/// HTTP/2 ping for this long. Longer than the Raft channels' 2 s: liveness is
/// the agents' own concern (their stall bound measures the whole path to the
/// leader, in about a second), and a leader that is only late (a start, a
/// storm) must not lose every relayed session for it, which makes all of
/// them dial again at once and makes it later still.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The follower's side: lazily connected channels to the current leader.
pub struct Relay {
    node_id: u64,
    tls: Option<ClientTls>,
    leader: Mutex<Option<(String, Vec<AgentServiceClient<Channel>>)>>,
}

/// Why a session could not be relayed.
pub enum NotRelayed {
    /// The leader did not take it (unreachable, no answer): the agent is asked
    /// to come back.
    Unreachable(String),
    /// The leader answered with a refusal: pass it on to the agent.
    Refused(Status),
}

impl Relay {
    pub fn new(node_id: u64, tls: Option<ClientTls>) -> Self {
        Self {
            node_id,
            tls,
            leader: Mutex::new(None),
        }
    }

    /// The client for `server`'s session to `addr`, reusing the connections
    /// while the leader stays.
    fn client(&self, addr: &str, server: &str) -> Result<AgentServiceClient<Channel>, String> {
        let k = shard(server, CONNECTIONS);
        let mut l = self.leader.lock().expect("relay lock");
        if let Some((a, c)) = l.as_ref() {
            if a == addr {
                return Ok(c[k].clone());
            }
        }
        let clients = (0..CONNECTIONS)
            .map(|_| {
                let ch = crate::raft::network::channel_with_keepalive(
                    addr,
                    Duration::from_millis(500),
                    self.tls.as_ref(),
                    KEEPALIVE_TIMEOUT,
                )
                .map_err(|e| e.to_string())?;
                Ok(AgentServiceClient::new(ch).max_decoding_message_size(16 << 20))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let c = clients[k].clone();
        *l = Some((addr.to_string(), clients));
        Ok(c)
    }

    /// Open `hello`'s session on the leader at `addr` and pipe the agent's
    /// `inbound` messages to it; the stream returned is the leader's answer.
    pub async fn open(
        &self,
        addr: &str,
        hello: AgentMessage,
        inbound: Streaming<AgentMessage>,
    ) -> Result<Streaming<ControllerMessage>, NotRelayed> {
        let server = match hello.msg.as_ref() {
            Some(understudy_proto::agent_message::Msg::Hello(h)) => h.server_id.clone(),
            _ => String::new(),
        };
        let mut client = self
            .client(addr, &server)
            .map_err(NotRelayed::Unreachable)?;
        // The agent's messages until its stream ends or breaks; then the
        // upstream request ends too and the leader closes the session.
        let up = tokio_stream::once(hello).chain(inbound.map_while(Result::ok));
        let mut req = Request::new(up);
        req.metadata_mut().insert(
            RELAYED_BY,
            self.node_id.to_string().parse().expect("a number is ASCII"),
        );
        match tokio::time::timeout(OPEN_TIMEOUT, client.session(req)).await {
            Err(_) => Err(NotRelayed::Unreachable(format!(
                "the leader at {addr} did not answer within {} ms",
                OPEN_TIMEOUT.as_millis()
            ))),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(st)) if refusal(&st) => Err(NotRelayed::Refused(st)),
            Ok(Err(st)) => Err(NotRelayed::Unreachable(format!(
                "the leader at {addr}: {}",
                understudy_tls::error_chain(&st)
            ))),
        }
    }
}

/// The agent's side of a relayed session: the leader's messages as they come.
/// When the connection to the leader breaks (the leader died, or this node lost
/// it), the agent gets a `Redirect` naming no leader instead of an error: it
/// opens its next session through this follower again, on the connection it
/// has, and this follower relays it to the next leader once it knows it.
pub fn downstream(
    up: Streaming<ControllerMessage>,
    node_id: u64,
) -> impl Stream<Item = Result<ControllerMessage, Status>> + Send + 'static {
    up.map(move |m| match m {
        Err(st) if !refusal(&st) => Ok(redirect_message(Redirect {
            reason: format!(
                "the connection to the leader broke: {}",
                understudy_tls::error_chain(&st)
            ),
            relayed_by: node_id,
            ..Default::default()
        })),
        // A redirect from the node this follower took for the leader (not,
        // or no longer, leading): marked, so the agent comes back here.
        Ok(ControllerMessage {
            msg: Some(Out::Redirect(r)),
        }) => Ok(redirect_message(Redirect {
            relayed_by: node_id,
            ..r
        })),
        other => other,
    })
}

/// A status the leader's session sends on purpose (a refused certificate,
/// server or message), passed on to the agent as it is; any other (reset,
/// unavailable, an HTTP/2 error) says the leader was not reached or lost.
fn refusal(st: &Status) -> bool {
    matches!(
        st.code(),
        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
    )
}

/// A hash of a server id that is the same in every process and build
/// (FNV-1a; std's hasher is seeded per process): spreads agents over relay
/// connections here and over followers in `crate::handoff`.
pub fn stable_hash(server: &str) -> u64 {
    server.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Which of `n` connections carries `server`'s session.
fn shard(server: &str, n: usize) -> usize {
    (stable_hash(server) % n.max(1) as u64) as usize
}

/// The follower that relays this request, if it is relayed.
pub fn relayed_by<T>(req: &Request<T>) -> Option<u64> {
    req.metadata()
        .get(RELAYED_BY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
