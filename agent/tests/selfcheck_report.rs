//! The whole agent against a stand-in controller leader (an `AgentService` in
//! this test): its first reports carry the self-checks run at start (a mode 600
//! `drbdadm` failing with its fix) and DRBD's net options read with
//! `drbdsetup show`; a `RunSelfCheck` command, sent with an old epoch, is
//! answered with a summary and followed by a fresh report.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use understudy_agent::AgentConfig;
use understudy_proto::agent_message::Msg;
use understudy_proto::agent_service_server::{AgentService, AgentServiceServer};
use understudy_proto::command::Action;
use understudy_proto::controller_message::Msg as Out;
use understudy_proto::{
    AgentMessage, Command, CommandResult, ControllerMessage, FencePeerRequest, FencePeerResponse,
    Report, RunSelfCheck, Welcome,
};

/// Where the test sends the leader's messages on the open session.
type Outbox = Arc<Mutex<Option<mpsc::Sender<Result<ControllerMessage, Status>>>>>;

/// A leader that welcomes the agent, hands every message it sends to the test,
/// and lets the test send commands.
struct FakeLeader {
    seen: mpsc::Sender<AgentMessage>,
    out: Outbox,
}

#[tonic::async_trait]
impl AgentService for FakeLeader {
    type SessionStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if seen.send(m).await.is_err() {
                    break;
                }
            }
        });
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(ControllerMessage {
            msg: Some(Out::Welcome(Welcome {
                node_id: 1,
                raft_term: 1,
                heartbeat_interval_ms: 200,
                relayed_by: 0,
            })),
        }))
        .await
        .unwrap();
        *self.out.lock().unwrap() = Some(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fence_peer(
        &self,
        _req: Request<FencePeerRequest>,
    ) -> Result<Response<FencePeerResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

fn script(path: &Path, body: &str, mode: u32) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

const SHOW: &str = r#"resource "r0" {
    _this_host {
        node-id			0;
    }
    connection {
        _peer_node_id 1;
        path {
            _this_host ipv4 127.0.0.1:7789;
            _remote_host ipv4 127.0.0.1:7790;
        }
        _cstate Connected;
        net {
            timeout         	60; # 1/10 seconds, default
            connect-int     	10; # seconds, default
            ping-int        	10; # seconds, default
            ping-timeout    	5; # 1/10 seconds, default
            protocol        	C; # default
            fencing         	resource-and-stonith;
            _name           	"fs1-b";
        }
    }
}
"#;

/// The next message matching `pick`, within 15 s.
async fn next<T>(
    rx: &mut mpsc::Receiver<AgentMessage>,
    mut pick: impl FnMut(&AgentMessage) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let m = rx.recv().await.expect("agent session open");
            if let Some(t) = pick(&m) {
                return t;
            }
        }
    })
    .await
    .expect("the awaited message within 15 s")
}

fn report(m: &AgentMessage) -> Option<Report> {
    match &m.msg {
        Some(Msg::Report(r)) => Some(r.clone()),
        _ => None,
    }
}

fn check<'a>(r: &'a Report, name: &str) -> Option<&'a understudy_proto::SelfCheck> {
    r.host.as_ref()?.self_checks.iter().find(|c| c.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_checks_and_net_options_reach_the_leader_and_run_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = mpsc::channel(256);
    let out: Outbox = Arc::new(Mutex::new(None));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(FakeLeader {
                seen: seen_tx,
                out: out.clone(),
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // drbdsetup: events2 prints an initial dump and waits; show prints SHOW.
    let show = dir.path().join("show.txt");
    std::fs::write(&show, SHOW).unwrap();
    let drbdsetup = dir.path().join("drbdsetup");
    script(
        &drbdsetup,
        &format!(
            "case \"$1\" in\nevents2) echo 'exists resource name:r0 role:Secondary suspended:no'; echo 'exists -'; exec sleep 3600 ;;\nshow) cat {} ;;\n*) exit 20 ;;\nesac",
            show.display()
        ),
        0o755,
    );
    // The broken deploy: drbdadm shipped mode 600.
    let drbdadm: PathBuf = dir.path().join("drbdadm");
    script(&drbdadm, "exit 0", 0o600);
    let handler = dir.path().join("understudy-fence-peer");
    script(&handler, "exit 4", 0o755);
    let cfg_path = dir.path().join("agent.toml");
    // The fake leader speaks plain text: the agent must be told so explicitly.
    std::fs::write(
        &cfg_path,
        format!(
            "server_id = \"fs1-a\"\npair_id = \"p\"\nrole = \"primary\"\ncontrollers = [\"{addr}\"]\nstate_dir = \"{state}\"\nprobe_listen = \"127.0.0.1:0\"\n[drbd]\nresource = \"r0\"\ndrbdsetup = \"{setup}\"\ndrbdadm = \"{adm}\"\nfence_peer_handler = \"{handler}\"\n[tls]\ninsecure = true\n",
            state = dir.path().join("state").display(),
            setup = drbdsetup.display(),
            adm = drbdadm.display(),
            handler = handler.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = AgentConfig::load(&cfg_path).unwrap();
    tokio::spawn(understudy_agent::run(cfg));

    next(&mut seen, |m| {
        matches!(m.msg, Some(Msg::Hello(_))).then_some(())
    })
    .await;
    // The checks run at start (drbdadm fails with its fix, the rest passes),
    // and DRBD's net options are read with `drbdsetup show r0 --show-defaults`.
    let first = next(&mut seen, |m| {
        report(m).filter(|r| {
            r.host.as_ref().is_some_and(|h| h.self_check_at_unix_ms > 0)
                && r.drbd
                    .as_ref()
                    .is_some_and(|d| d.resources.iter().any(|r| r.net.is_some()))
        })
    })
    .await;
    let adm = check(&first, "drbdadm").unwrap();
    assert!(!adm.ok, "{adm:?}");
    assert_eq!(adm.severity, "error");
    assert_eq!(
        adm.detail,
        format!("{} is not executable (mode 600)", drbdadm.display())
    );
    assert_eq!(adm.fix, format!("chmod 755 {}", drbdadm.display()));
    for name in [
        "agent_config",
        "drbdsetup",
        "fence_peer_handler",
        "state_dir",
    ] {
        let c = check(&first, name).unwrap_or_else(|| panic!("{name} checked"));
        assert!(c.ok, "{c:?}");
    }
    let net = first.drbd.as_ref().unwrap().resources[0]
        .net
        .clone()
        .unwrap();
    assert_eq!(net.error, "");
    assert_eq!(net.ping_int_ms, Some(10_000));
    assert_eq!(net.ping_timeout_ms, Some(500));
    assert_eq!(net.fencing, "resource-and-stonith");

    // The operator fixes the mode and asks for a self-check, with an old epoch.
    std::fs::set_permissions(&drbdadm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let at_start = first.host.unwrap().self_check_at_unix_ms;
    let tx = out.lock().unwrap().clone().unwrap();
    tx.send(Ok(ControllerMessage {
        msg: Some(Out::Command(Command {
            command_id: 77,
            raft_term: 1,
            epoch: 0,
            pair_id: "p".into(),
            timeout_ms: 5000,
            action: Some(Action::SelfCheck(RunSelfCheck {})),
        })),
    }))
    .await
    .unwrap();
    let mut result: Option<CommandResult> = None;
    let mut fresh: Option<Report> = None;
    while result.is_none() || fresh.is_none() {
        next(&mut seen, |m| {
            match &m.msg {
                Some(Msg::CommandResult(r)) => result = Some(r.clone()),
                Some(Msg::Report(r))
                    if r.host
                        .as_ref()
                        .is_some_and(|h| h.self_check_at_unix_ms > at_start) =>
                {
                    fresh = Some(r.clone())
                }
                _ => return None,
            }
            Some(())
        })
        .await;
    }
    let result = result.unwrap();
    assert_eq!(result.command_id, 77);
    assert!(result.ok, "{result:?}");
    assert_eq!(result.detail, "5 checks, all passed");
    let fresh = fresh.unwrap();
    assert!(check(&fresh, "drbdadm").unwrap().ok, "{fresh:?}");
}
