//! S4 through the real interface: an agent process talks to a controller (here a
//! minimal AgentService written for the test, on loopback) that sends commands with
//! fencing tokens. The agent runs a current one, refuses older ones with a clear
//! error, and still refuses them after a restart (the token is persisted).

use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use understudy_proto::agent_message::Msg;
use understudy_proto::agent_service_server::{AgentService, AgentServiceServer};
use understudy_proto::command::Action;
use understudy_proto::controller_message::Msg as Out;
use understudy_proto::{
    AgentMessage, Command, CommandResult, ControllerMessage, DrbdDemote, Welcome,
};
use understudy_tests::{bin, Proc};

/// Accepts agent sessions; the newest one receives the commands the test sends
/// (through [`FakeController::current`]); results and hellos go to the test.
struct FakeController {
    current: Arc<Mutex<Option<mpsc::Sender<Result<ControllerMessage, Status>>>>>,
    hellos: mpsc::Sender<()>,
    results: mpsc::Sender<CommandResult>,
}

#[tonic::async_trait]
impl AgentService for FakeController {
    type SessionStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn fence_peer(
        &self,
        _req: Request<understudy_proto::FencePeerRequest>,
    ) -> Result<Response<understudy_proto::FencePeerResponse>, Status> {
        Err(Status::unimplemented(
            "this minimal controller only tests fencing tokens",
        ))
    }

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let hello = inbound.message().await?;
        assert!(matches!(hello.and_then(|m| m.msg), Some(Msg::Hello(_))));
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(ControllerMessage {
            msg: Some(Out::Welcome(Welcome {
                node_id: 1,
                raft_term: 9,
                heartbeat_interval_ms: 200,
                relayed_by: 0,
            })),
        }))
        .await
        .unwrap();
        *self.current.lock().await = Some(tx);
        let _ = self.hellos.send(()).await;
        let results = self.results.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(Msg::CommandResult(r)) = m.msg {
                    let _ = results.send(r).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn demote(id: u64, epoch: u64, term: u64) -> Command {
    Command {
        command_id: id,
        raft_term: term,
        epoch,
        pair_id: "fs1".into(),
        timeout_ms: 5000,
        action: Some(Action::Demote(DrbdDemote {})),
    }
}

async fn wait_hello(rx: &mut mpsc::Receiver<()>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no agent session within 10 s");
}

async fn result(rx: &mut mpsc::Receiver<CommandResult>) -> CommandResult {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no command result within 10 s")
        .expect("controller stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fencing_tokens_are_refused_even_after_a_restart() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (hello_tx, mut hello_rx) = mpsc::channel(8);
    let (res_tx, mut res_rx) = mpsc::channel(8);
    let current = Arc::new(Mutex::new(None));
    let svc = FakeController {
        current: current.clone(),
        hellos: hello_tx,
        results: res_tx,
    };
    let send = |c: Command| {
        let current = current.clone();
        async move {
            let tx = current.lock().await.clone().expect("an agent session");
            tx.send(Ok(ControllerMessage {
                msg: Some(Out::Command(c)),
            }))
            .await
            .expect("session open");
        }
    };

    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    // `drbdadm secondary` is /bin/true here: the test is about the token check
    // that comes first; drbdsetup is absent, so the observer only reports errors.
    // The fake leader speaks plain text: the agent must be told so explicitly.
    std::fs::write(
        &cfg,
        format!(
            "server_id = \"fs1-b\"\npair_id = \"fs1\"\nrole = \"backup\"\ncontrollers = [\"{addr}\"]\nstate_dir = \"{}\"\nprobe_listen = \"127.0.0.1:0\"\n[drbd]\nresource = \"r0\"\ndrbdsetup = \"/nonexistent/drbdsetup\"\ndrbdadm = \"/bin/true\"\n[tls]\ninsecure = true\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let start = || {
        Proc::spawn(
            "agent",
            Process::new(bin("understudy-agent"))
                .arg("--config")
                .arg(&cfg),
            &dir.path().join("agent.log"),
        )
    };
    let agent = start();
    wait_hello(&mut hello_rx).await;

    send(demote(1, 5, 2)).await;
    let r = result(&mut res_rx).await;
    assert!(r.ok, "a current token is accepted: {r:?}");

    send(demote(2, 4, 99)).await;
    let r = result(&mut res_rx).await;
    assert!(!r.ok);
    assert!(
        r.error.contains("stale command refused: epoch 4 term 99"),
        "{}",
        r.error
    );

    send(demote(3, 5, 1)).await;
    let r = result(&mut res_rx).await;
    assert!(
        !r.ok && r.error.contains("epoch 5 term 1"),
        "same epoch, older leader: {r:?}"
    );

    send(demote(4, 5, 3)).await;
    assert!(result(&mut res_rx).await.ok, "same epoch, newer leader");

    // Restart: the highest token survives.
    agent.kill();
    let _agent = start();
    wait_hello(&mut hello_rx).await;
    send(demote(5, 5, 2)).await;
    let r = result(&mut res_rx).await;
    assert!(
        !r.ok && r.error.contains("highest accepted (epoch 5 term 3)"),
        "{r:?}"
    );
}
