//! The Raft transport over gRPC (`understudy.v1.RaftService`).
//!
//! openraft's request and response types are serialized as JSON into the bytes of
//! a `RaftMessage`; the workspace pins the openraft version, so both ends agree.
//! The client side ([`Network`]) keeps one lazily-connected tonic channel per peer
//! and maps transport failures to `Unreachable` (openraft then backs off); the
//! server side ([`RaftGrpc`]) hands requests to the local Raft node, once the
//! caller proved (its TLS client certificate) to be a member controller.

use std::future::Future;
use std::time::Duration;

use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use understudy_proto::raft_service_client::RaftServiceClient;
use understudy_proto::raft_service_server::RaftService;
use understudy_proto::{RaftMessage, SnapshotChunk};
use understudy_tls::ClientTls;

use super::types::{Node, NodeId, Raft, TypeConfig};
use crate::auth::Auth;

/// Size of one snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Open a lazily-connecting channel to a controller's gRPC address (`host:port`):
/// mutual TLS with `tls` (the controller's certificate must name the host),
/// plain text without.
pub fn channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Channel, understudy_tls::TlsError> {
    channel_with_keepalive(addr, connect_timeout, tls, Duration::from_secs(2))
}

/// [`channel`], counted dead after `keepalive_timeout` without an answer to
/// its HTTP/2 ping (sent every second): a follower's relay connections wait
/// longer than Raft's 2 s (`crate::relay::KEEPALIVE_TIMEOUT`).
pub fn channel_with_keepalive(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTls>,
    keepalive_timeout: Duration,
) -> Result<Channel, understudy_tls::TlsError> {
    Ok(understudy_tls::endpoint(addr, tls)?
        .connect_timeout(connect_timeout)
        .initial_connection_window_size(crate::transport::CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(keepalive_timeout)
        .connect_lazy())
}

/// Creates one [`PeerClient`] per Raft peer.
#[derive(Clone, Default)]
pub struct Network {
    /// This node's certificate (a controller's names its node id) and the CA;
    /// `None`: plain text (`[tls] insecure = true`).
    pub tls: Option<ClientTls>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            client: None,
            tls: self.tls.clone(),
            diagnosis: understudy_tls::Diagnosis::new(Duration::from_secs(10)),
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftServiceClient<Channel>>,
    tls: Option<ClientTls>,
    /// Says so in the log when the peer refuses this node's certificate.
    diagnosis: understudy_tls::Diagnosis,
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
}

fn unreachable<E: std::fmt::Display>(target: NodeId, addr: &str, e: E) -> Unreachable<TypeConfig> {
    Unreachable::from_string(format!("controller {target} at {addr}: {e}"))
}

impl PeerClient {
    /// Why a call failed; a refusal of this node (its certificate, or its
    /// membership) is logged as an error: it will not heal by retrying.
    fn failed(&self, status: &Status) -> String {
        if let Some(why) = understudy_tls::auth_failure(status) {
            tracing::error!(peer = self.target, error = %why, "a Raft peer refused this controller's certificate");
            return why;
        }
        if matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ) {
            tracing::error!(peer = self.target, error = %status.message(), "a Raft peer refused this controller");
            return status.message().to_owned();
        }
        if let Some(tls) = &self.tls {
            self.diagnosis
                .after_failure(&self.addr, tls, Some(status), "Raft peer");
        }
        understudy_tls::error_chain(status)
    }

    fn client(&mut self) -> Result<RaftServiceClient<Channel>, Unreachable<TypeConfig>> {
        if self.client.is_none() {
            let ch = channel(&self.addr, Duration::from_millis(500), self.tls.as_ref())
                .map_err(|e| unreachable(self.target, &self.addr, e))?;
            self.client = Some(RaftServiceClient::new(ch));
        }
        Ok(self.client.clone().expect("set above"))
    }

    async fn call<Req, Resp, F, Fut>(
        &mut self,
        req: &Req,
        ttl: Duration,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        F: FnOnce(RaftServiceClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<Response<RaftMessage>, Status>>,
    {
        let data =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let client = self.client()?;
        let reply = match tokio::time::timeout(ttl, f(client, RaftMessage { data })).await {
            Err(_) => {
                return Err(RPCError::Unreachable(unreachable(
                    self.target,
                    &self.addr,
                    format!("no answer within {ttl:?}"),
                )))
            }
            Ok(Err(status)) => {
                // A broken channel is re-created on the next call.
                self.client = None;
                return Err(RPCError::Unreachable(unreachable(
                    self.target,
                    &self.addr,
                    self.failed(&status),
                )));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<Resp, String> = serde_json::from_slice(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        res.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.append_entries(m).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.vote(m).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.hard_ttl(), |mut c, m| async move {
            c.pre_vote(m).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = serde_json::to_vec(&SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
        })
        .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        let mut chunks = vec![SnapshotChunk {
            header,
            data: Vec::new(),
        }];
        for c in snapshot.snapshot.chunks(SNAPSHOT_CHUNK) {
            chunks.push(SnapshotChunk {
                header: Vec::new(),
                data: c.to_vec(),
            });
        }
        let mut client = self.client()?;
        let send = client.install_full_snapshot(tokio_stream::iter(chunks));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(option.hard_ttl().max(Duration::from_secs(10)), send) => r,
        };
        let reply = match reply {
            Err(_) => {
                return Err(StreamingError::Unreachable(unreachable(
                    self.target,
                    &self.addr,
                    "snapshot transfer timed out",
                )))
            }
            Ok(Err(status)) => {
                self.client = None;
                return Err(StreamingError::Unreachable(unreachable(
                    self.target,
                    &self.addr,
                    self.failed(&status),
                )));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<SnapshotResponse<TypeConfig>, String> = serde_json::from_slice(&reply.data)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        res.map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
    }
}

/// Server side of the Raft transport: hands requests to the local node.
pub struct RaftGrpc {
    raft: Raft,
    auth: Auth,
    /// The configured members' ids: only they may send Raft messages.
    members: Vec<u64>,
}

impl RaftGrpc {
    pub fn new(raft: Raft, auth: Auth, members: Vec<u64>) -> Self {
        Self {
            raft,
            auth,
            members,
        }
    }

    /// Refuse anyone but a member controller (a peer certificate naming a
    /// configured node id); logged, as it means a misconfiguration or an attack.
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.auth
            .peer(req, &self.members)
            .map(|_| ())
            .inspect_err(|e| {
                tracing::warn!(error = %e.message(), "Raft message refused");
            })
    }
}

fn decode<T: for<'de> Deserialize<'de>>(m: &RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&m.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<RaftMessage>, Status> {
    let r = r.map_err(|e| e.to_string());
    let data = serde_json::to_vec(&r).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { data }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        encode(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check(&req)?;
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        encode(self.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check(&req)?;
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        encode(self.raft.pre_vote(rpc).await)
    }

    async fn install_full_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check(&req)?;
        let mut stream = req.into_inner();
        let mut header: Option<SnapshotHeader> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if !chunk.header.is_empty() {
                header = Some(serde_json::from_slice(&chunk.header).map_err(|e| {
                    Status::invalid_argument(format!("undecodable snapshot header: {e}"))
                })?);
            }
            data.extend_from_slice(&chunk.data);
        }
        let h = header.ok_or_else(|| Status::invalid_argument("snapshot without header"))?;
        let snap = SnapshotOf::<TypeConfig, Vec<u8>> {
            meta: h.meta,
            snapshot: data,
        };
        encode(self.raft.install_full_snapshot(h.vote, snap).await)
    }
}
