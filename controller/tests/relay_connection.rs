//! One HTTP/2 connection carrying thousands of agent sessions, as a
//! follower's relay to the leader does (`src/relay.rs`), survives a leader
//! that reads nothing for a while: the server and channel settings of
//! `src/transport.rs`, over real TCP on loopback.
//!
//! With hyper's defaults, h2 closes such a connection (GOAWAY,
//! `ENHANCE_YOUR_CALM`) once about 2 300 small DATA frames wait unread, and
//! every session on it ends at once.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use understudy_proto::agent_message::Msg;
use understudy_proto::agent_service_client::AgentServiceClient;
use understudy_proto::agent_service_server::{AgentService, AgentServiceServer};
use understudy_proto::{
    AgentMessage, ControllerMessage, FencePeerRequest, FencePeerResponse, Heartbeat,
};

/// Sessions on the one connection, and heartbeats each sends.
const SESSIONS: usize = 3000;
const BEATS: usize = 8;
/// How long the server leaves every session unread.
const LATE: Duration = Duration::from_millis(1500);

/// A leader that is late: it takes every session, reads nothing for
/// [`LATE`], then reads it to the end and closes its answer.
struct LateLeader {
    read: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl AgentService for LateLeader {
    type SessionStream =
        Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send + 'static>>;

    async fn fence_peer(
        &self,
        _req: Request<FencePeerRequest>,
    ) -> Result<Response<FencePeerResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let read = self.read.clone();
        let (tx, rx) = mpsc::channel::<Result<ControllerMessage, Status>>(1);
        tokio::spawn(async move {
            tokio::time::sleep(LATE).await;
            loop {
                match inbound.message().await {
                    Ok(Some(_)) => {
                        read.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break,
                    Err(st) => {
                        let _ = tx.send(Err(st)).await;
                        return;
                    }
                }
            }
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_connection_keeps_thousands_of_sessions_through_a_late_leader() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let read = Arc::new(AtomicUsize::new(0));
    let service = AgentServiceServer::new(LateLeader { read: read.clone() });
    let server = tokio::spawn(
        understudy_controller::transport::server()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // One channel, one connection: the follower's side of the relay.
    let channel =
        understudy_controller::raft::network::channel(&addr, Duration::from_secs(2), None).unwrap();
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let mut client = AgentServiceClient::new(channel.clone());
        sessions.push(tokio::spawn(async move {
            // One heartbeat every 50 ms, as an agent sends them: each its
            // own small DATA frame (messages sent together share one).
            let (tx, rx) = mpsc::channel(BEATS);
            tokio::spawn(async move {
                for n in 0..BEATS {
                    let beat = AgentMessage {
                        msg: Some(Msg::Heartbeat(Heartbeat {
                            seq: (i * BEATS + n) as u64,
                            sent_at_unix_ms: 1,
                        })),
                    };
                    if tx.send(beat).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let mut answer = client
                .session(ReceiverStream::new(rx))
                .await
                .map_err(|e| format!("session {i} not opened: {e}"))?
                .into_inner();
            // The server ends its answer once it read everything.
            match answer.message().await {
                Ok(None) => Ok(()),
                Ok(Some(m)) => Err(format!("session {i}: unexpected {m:?}")),
                Err(e) => Err(format!("session {i} broken: {e}")),
            }
        }));
    }
    let mut broken = Vec::new();
    for s in sessions {
        if let Err(e) = tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("every session ends within 30 s")
            .expect("session task")
        {
            broken.push(e);
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {SESSIONS} sessions broken, first: {}",
        broken.len(),
        broken[0]
    );
    assert_eq!(read.load(Ordering::Relaxed), SESSIONS * BEATS);
    server.abort();
}
