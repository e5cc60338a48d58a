//! DRBD's `fence-peer` handler (the `understudy-fence-peer` program), agent side.
//!
//! Configured in the DRBD resource as Pacemaker clusters configure
//! `crm-fence-peer.9.sh`:
//!
//! ```text
//! net      { fencing resource-and-stonith; }
//! handlers { fence-peer "/usr/lib/understudy/understudy-fence-peer --config /etc/understudy/agent.toml"; }
//! ```
//!
//! When this server is DRBD Primary and loses its replication connection, DRBD
//! suspends its I/O and runs the handler, which asks the controller leader
//! (`AgentService.FencePeer`) to record the peer as outdated in Raft (S1). Exit
//! codes, as DRBD reads them: **4** the peer is outdated (I/O resumes); **6** the
//! controller refused because this server is not (or no longer) the one serving,
//! or a failover of the pair is in flight (the peer is, or is becoming, primary:
//! I/O stays suspended); **1** no controller could record it in time (I/O stays
//! suspended until an operator runs `drbdadm resume-io` after checking).

use std::time::{Duration, Instant};

use understudy_proto::agent_service_client::AgentServiceClient;
use understudy_proto::{FencePeerRequest, FencePeerResponse};
use understudy_tls::ClientTls;

use crate::config::AgentConfig;

/// DRBD's fence-peer exit code: the peer's disk is now Outdated.
pub const EXIT_PEER_OUTDATED: u8 = 4;
/// DRBD's fence-peer exit code: the peer is primary (refused; I/O stays frozen).
pub const EXIT_PEER_PRIMARY: u8 = 6;
/// Any other failure: DRBD keeps I/O frozen.
pub const EXIT_FAILED: u8 = 1;

/// Metadata key a follower puts the leader's address in.
const LEADER_METADATA: &str = "understudy-leader";

/// Why the peer could not be recorded as outdated.
#[derive(Debug, thiserror::Error)]
pub enum FencePeerError {
    #[error("DRBD_RESOURCE is {got:?} but this agent manages resource {want:?}; check the handler in the DRBD configuration of {got:?}")]
    WrongResource { got: String, want: String },
    #[error("the controller refused: {0}; this Primary's I/O stays suspended (it must not write unprotected)")]
    Refused(String),
    #[error("no controller recorded the peer as outdated within {secs} s ({last}); I/O stays suspended: check the controllers, then `drbdadm resume-io RES` only once the peer is known to be outdated or this server is the only one serving")]
    Unreachable { secs: u64, last: String },
    #[error(transparent)]
    Agent(#[from] crate::error::AgentError),
}

impl FencePeerError {
    /// The exit code DRBD expects for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            FencePeerError::Refused(_) => EXIT_PEER_PRIMARY,
            _ => EXIT_FAILED,
        }
    }
}

/// What DRBD tells a handler in its environment.
#[derive(Debug, Clone, Default)]
pub struct HandlerEnv {
    pub resource: String,
    pub peer_node_id: Option<u32>,
}

impl HandlerEnv {
    /// Read `DRBD_RESOURCE` and `DRBD_PEER_NODE_ID`.
    pub fn from_env() -> HandlerEnv {
        HandlerEnv {
            resource: std::env::var("DRBD_RESOURCE").unwrap_or_default(),
            peer_node_id: std::env::var("DRBD_PEER_NODE_ID")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// Ask the controllers, following the leader, until one records the peer as
/// outdated, one refuses for good, or `timeout` passes.
pub async fn fence_peer(
    cfg: &AgentConfig,
    env: &HandlerEnv,
    timeout: Duration,
) -> Result<FencePeerResponse, FencePeerError> {
    if env.resource != cfg.drbd.resource {
        return Err(FencePeerError::WrongResource {
            got: env.resource.clone(),
            want: cfg.drbd.resource.clone(),
        });
    }
    // The agent's own certificate: the controller accepts the request only for
    // the server it names.
    let tls = cfg.client_tls()?;
    let highest_epoch = crate::epoch::EpochStore::open(&cfg.state_dir)?
        .current()
        .epoch;
    let req = FencePeerRequest {
        server_id: cfg.server_id.clone(),
        pair_id: cfg.pair_id.clone(),
        resource: env.resource.clone(),
        peer_node_id: env.peer_node_id,
        highest_epoch,
    };
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no controller tried");
    let mut next: Option<String> = None;
    let mut i = 0usize;
    while Instant::now() < deadline {
        let addr = next.take().unwrap_or_else(|| {
            let a = cfg.controllers[i % cfg.controllers.len()].clone();
            i += 1;
            a
        });
        match ask(&addr, tls.as_ref(), req.clone()).await {
            Ok(r) => return Ok(r),
            Err(st) => {
                last = format!("{addr}: {}", st.message());
                match st.code() {
                    tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::InvalidArgument
                    | tonic::Code::NotFound => {
                        return Err(FencePeerError::Refused(st.message().to_owned()))
                    }
                    tonic::Code::FailedPrecondition => {
                        match st
                            .metadata()
                            .get(LEADER_METADATA)
                            .and_then(|v| v.to_str().ok())
                        {
                            Some(leader) => {
                                next = Some(leader.to_owned());
                                continue;
                            }
                            None if st.message().contains("is failing over") => {
                                return Err(FencePeerError::Refused(st.message().to_owned()))
                            }
                            None => {}
                        }
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(FencePeerError::Unreachable {
        secs: timeout.as_secs(),
        last,
    })
}

async fn ask(
    addr: &str,
    tls: Option<&ClientTls>,
    req: FencePeerRequest,
) -> Result<FencePeerResponse, tonic::Status> {
    let endpoint = understudy_tls::endpoint(addr, tls)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5));
    let answer = match endpoint.connect().await {
        Ok(channel) => match AgentServiceClient::new(channel).fence_peer(req).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(st) => st,
        },
        Err(e) => match understudy_tls::auth_failure(&e) {
            // A refused certificate will not heal by retrying: refuse (exit 6).
            Some(why) => return Err(tonic::Status::permission_denied(why)),
            None if !understudy_tls::worth_diagnosing(&e) => {
                return Err(tonic::Status::unavailable(format!(
                    "connect: {}",
                    understudy_tls::error_chain(&e)
                )))
            }
            None => {
                tonic::Status::unavailable(format!("connect: {}", understudy_tls::error_chain(&e)))
            }
        },
    };
    // TLS 1.3 may have shown the refusal of this certificate as a reset:
    // ask again with a bare handshake.
    if let (Some(t), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) =
        (tls, answer.code())
    {
        let why = match understudy_tls::auth_failure(&answer) {
            Some(why) => Some(why),
            None => understudy_tls::diagnose(addr, t, Duration::from_secs(1)).await,
        };
        if let Some(why) = why {
            return Err(tonic::Status::permission_denied(why));
        }
    }
    Err(answer)
}
