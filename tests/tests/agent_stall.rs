//! A real agent process against a minimal AgentService written for the test (on
//! loopback): once the leader has acknowledged its heartbeats, a session that
//! then carries nothing from the leader (TCP back-off after a network blip looks
//! like this) is abandoned and dialled again on a fresh connection; a session that
//! keeps being acknowledged, or a leader that never acknowledges (an older
//! version), is kept. The agent's probe port reports the session's health.

use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use understudy_proto::agent_message::Msg;
use understudy_proto::agent_service_server::{AgentService, AgentServiceServer};
use understudy_proto::controller_message::Msg as Out;
use understudy_proto::{
    AgentMessage, ControllerMessage, HeartbeatAck, ProbeReply, ProbeRequest, Welcome,
};
use understudy_tests::{bin, free_udp_port, Proc};

/// How the fake leader treats heartbeats on the n-th session (0-based).
#[derive(Clone, Copy)]
enum Acks {
    /// Acknowledge the first `k` heartbeats of session 0, then go silent; later
    /// sessions are acknowledged forever.
    StallFirstSessionAfter(usize),
    /// Never acknowledge (a leader of an older version).
    Never,
}

struct FakeLeader {
    sessions: Arc<AtomicUsize>,
    hellos: mpsc::Sender<usize>,
    acks: Acks,
}

#[tonic::async_trait]
impl AgentService for FakeLeader {
    type SessionStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn fence_peer(
        &self,
        _req: Request<understudy_proto::FencePeerRequest>,
    ) -> Result<Response<understudy_proto::FencePeerResponse>, Status> {
        Err(Status::unimplemented(
            "this minimal leader only tests stalled sessions",
        ))
    }

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let hello = inbound.message().await?;
        assert!(matches!(hello.and_then(|m| m.msg), Some(Msg::Hello(_))));
        let n = self.sessions.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(64);
        tx.send(Ok(ControllerMessage {
            msg: Some(Out::Welcome(Welcome {
                node_id: 1,
                raft_term: 1,
                heartbeat_interval_ms: 100,
                relayed_by: 0,
            })),
        }))
        .await
        .unwrap();
        let _ = self.hellos.send(n).await;
        let acks = self.acks;
        tokio::spawn(async move {
            let mut acked = 0;
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(Msg::Heartbeat(h)) = m.msg {
                    let ack = match acks {
                        Acks::StallFirstSessionAfter(k) => n > 0 || acked < k,
                        Acks::Never => false,
                    };
                    if ack {
                        acked += 1;
                        let _ = tx
                            .send(Ok(ControllerMessage {
                                msg: Some(Out::HeartbeatAck(HeartbeatAck { seq: h.seq })),
                            }))
                            .await;
                    }
                }
            }
            // Keep `tx` (the stream to the agent) open until the agent leaves.
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Agent {
    _proc: Proc,
    _dir: tempfile::TempDir,
    probe: SocketAddr,
    hellos: mpsc::Receiver<usize>,
}

async fn start(acks: Acks) -> Agent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, hellos) = mpsc::channel(16);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(FakeLeader {
                sessions: Arc::default(),
                hellos: tx,
                acks,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let probe: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let cfg = dir.path().join("agent.toml");
    // The fake leader speaks plain text: the agent must be told so explicitly.
    std::fs::write(
        &cfg,
        format!(
            "server_id = \"fs1-a\"\npair_id = \"fs1\"\nrole = \"primary\"\ncontrollers = [\"{addr}\"]\nstate_dir = \"{}\"\nprobe_listen = \"{probe}\"\nstall_ms = 600\n[drbd]\nresource = \"r0\"\ndrbdsetup = \"/nonexistent/drbdsetup\"\ndrbdadm = \"/bin/true\"\n[tls]\ninsecure = true\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        "agent",
        Process::new(bin("understudy-agent"))
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info"),
        &dir.path().join("agent.log"),
    );
    Agent {
        _proc: proc,
        _dir: dir,
        probe,
        hellos,
    }
}

async fn next_hello(a: &mut Agent, within: Duration) -> Option<usize> {
    tokio::time::timeout(within, a.hellos.recv())
        .await
        .ok()
        .flatten()
}

/// Probe the agent's probe port; its reply.
async fn probe(a: &Agent) -> ProbeReply {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req = ProbeRequest {
        pair_id: "fs1".into(),
        server_id: "fs1-a".into(),
        nonce: 77,
        padding: vec![0; 48],
    };
    let mut buf = [0u8; 600];
    for _ in 0..20 {
        sock.send_to(&req.encode_to_vec(), a.probe).await.unwrap();
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(250), sock.recv(&mut buf)).await
        {
            let r = ProbeReply::decode(&buf[..n]).unwrap();
            assert_eq!((r.nonce, r.server_id.as_str()), (77, "fs1-a"));
            return r;
        }
    }
    panic!("the agent's probe port {} never answered", a.probe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_is_dialled_again_and_an_acknowledged_one_is_kept() {
    let mut a = start(Acks::StallFirstSessionAfter(3)).await;
    assert_eq!(next_hello(&mut a, Duration::from_secs(10)).await, Some(0));
    // Session 0 goes silent after 3 acknowledgements: the agent dials again.
    assert_eq!(
        next_hello(&mut a, Duration::from_secs(10)).await,
        Some(1),
        "the agent did not dial a fresh session after its stream stalled"
    );
    // Session 1 is acknowledged: it is kept, and the probe port says healthy.
    assert_eq!(
        next_hello(&mut a, Duration::from_secs(3)).await,
        None,
        "an acknowledged session must be kept"
    );
    let r = probe(&a).await;
    assert!(r.stream_healthy, "{r:?}");
    assert!(r.stream_silent_ms < 600, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_never_acknowledges_is_not_left() {
    let mut a = start(Acks::Never).await;
    assert_eq!(next_hello(&mut a, Duration::from_secs(10)).await, Some(0));
    assert_eq!(
        next_hello(&mut a, Duration::from_secs(3)).await,
        None,
        "no acknowledgements at all (an older leader) must not cause re-dials"
    );
    // Nothing heard since the Welcome: the probe port reports the stream stalled.
    let r = probe(&a).await;
    assert!(!r.stream_healthy, "{r:?}");
}
