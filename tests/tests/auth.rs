//! Authentication and roles over mutual TLS, against a real loopback cluster
//! (controllers, agents and `understudyctl` with certificates from
//! `understudy_controller::certs`, the code behind `understudyctl certs`).
//!
//! - an agent certificate for fs1-a saying hello (or asking for a fence) as
//!   fs1-b is refused, and nothing is recorded for fs1-b;
//! - a client without a client certificate (or with one from another CA) is
//!   refused, and `understudyctl` exits 7;
//! - a certificate that is not an operator's is refused by the operator API
//!   (exit 7); a viewer may read the status and history, but `promote` and
//!   `pause` are refused (exit 7) and change nothing;
//! - Raft messages from anything but a member controller are refused, before
//!   they are decoded: a vote with a far higher term leaves the term alone;
//! - none of this changes the cluster's state.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;
use understudy_controller::auth::Role;
use understudy_controller::certs::{Leaf, Written};
use understudy_controller::raft::network::channel;
use understudy_controller::raft::TypeConfig;
use understudy_proto::agent_message::Msg;
use understudy_proto::agent_service_client::AgentServiceClient;
use understudy_proto::operator_service_client::OperatorServiceClient;
use understudy_proto::raft_service_client::RaftServiceClient;
use understudy_proto::{
    AgentMessage, FencePeerRequest, GetStatusRequest, Hello, RaftMessage, Report, ServerRole,
};
use understudy_tests::{
    bin, free_udp_port, pair, pair_healthy, server, wait_for, Cluster, Creds, Pki, Proc,
};
use understudy_tls::ClientTls;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pki(c: &Cluster) -> &Pki {
    c.pki.as_ref().expect("a TLS cluster")
}

/// Client TLS presenting `w` (or no certificate at all).
fn client(pki: &Pki, w: Option<&Written>) -> ClientTls {
    ClientTls::load(&pki.ca(), w.map(|w| (w.cert.as_path(), w.key.as_path()))).unwrap()
}

/// A certificate the harness issued (not a new one: the processes hold those).
fn issued(pki: &Pki, stem: &str) -> Written {
    Written {
        cert: pki.dir.join(format!("{stem}.pem")),
        key: pki.dir.join(format!("{stem}.key")),
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What must not change: the Raft term, and the pair's epoch, state,
/// outdated mark and history.
fn state_of(s: &Value) -> Value {
    let p = pair(s, "fs1");
    serde_json::json!({
        "term": s["cluster"]["term"],
        "epoch": p["epoch"],
        "state": p["state"],
        "outdated": p["outdated"],
        "history": p["history"],
    })
}

#[test]
fn an_agent_certificate_cannot_report_or_fence_for_another_server() {
    let mut c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    c.wait_status("pair healthy", Duration::from_secs(60), pair_healthy);
    // fs1-b's own agent stops: from now on, any report for fs1-b would show.
    c.hosts[1].agent.take().expect("fs1-b's agent").kill();
    c.wait_status("fs1-b's agent gone", Duration::from_secs(10), |s| {
        server(s, "fs1", "fs1-b")["connected"] == false
            && server(s, "fs1", "fs1-b")["stale"] == true
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = c.try_status().unwrap();
    let age_before = server(&before, "fs1", "fs1-b")["last_report_age_ms"]
        .as_u64()
        .unwrap();
    let pki = pki(&c).clone();
    let fs1a = issued(&pki, "agent-fs1-a");
    let tls = client(&pki, Some(&fs1a));

    // A session with fs1-a's certificate saying hello as fs1-b, then a
    // report, at every controller (the check comes before any redirect).
    rt().block_on(async {
        for addr in &c.controllers.addrs {
            let ch = channel(addr, Duration::from_secs(2), Some(&tls)).unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for m in [
                Msg::Hello(Hello {
                    server_id: "fs1-b".into(),
                    pair_id: "fs1".into(),
                    role: ServerRole::Backup as i32,
                    agent_version: "impostor".into(),
                    highest_epoch: 0,
                    stall_ms: 0,
                    handoff_ok: false,
                }),
                Msg::Report(Report {
                    seq: 1,
                    observed_at_unix_ms: 1,
                    drbd: None,
                    host: None,
                }),
            ] {
                tx.send(AgentMessage { msg: Some(m) }).await.unwrap();
            }
            let e = AgentServiceClient::new(ch.clone())
                .session(ReceiverStream::new(rx))
                .await
                .expect_err("a hello for another server must be refused");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{addr}: {e:?}");
            assert!(
                e.message()
                    .contains("agent fs1-a may only report and act for fs1-a, not for \"fs1-b\""),
                "{e:?}"
            );
            // A fence-peer request for fs1-b: refused the same way.
            let e = AgentServiceClient::new(ch)
                .fence_peer(FencePeerRequest {
                    server_id: "fs1-b".into(),
                    pair_id: "fs1".into(),
                    resource: "r0".into(),
                    peer_node_id: Some(0),
                    highest_epoch: 0,
                })
                .await
                .expect_err("a fence-peer request for another server must be refused");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{addr}: {e:?}");
        }
    });

    // A real agent configured as fs1-b but holding fs1-a's certificate.
    let b = &c.hosts[1];
    let text = std::fs::read_to_string(&b.agent_config).unwrap();
    let fs1b = issued(&pki, "agent-fs1-b");
    let impostor = text
        .replace(
            &fs1b.cert.display().to_string(),
            &fs1a.cert.display().to_string(),
        )
        .replace(
            &fs1b.key.display().to_string(),
            &fs1a.key.display().to_string(),
        );
    assert_ne!(
        impostor, text,
        "the agent configuration names fs1-b's certificate"
    );
    let cfg = b.dir.join("impostor.toml");
    std::fs::write(&cfg, impostor).unwrap();
    let log = b.dir.join("impostor.log");
    let mut cmd = std::process::Command::new(bin("understudy-agent"));
    cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
    let agent = Proc::spawn("impostor agent", &mut cmd, &log);
    wait_for(
        "the impostor agent to be refused",
        Duration::from_secs(10),
        || {
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            (l.contains("controller refused this agent")
                && l.contains("may only report and act for fs1-a"))
            .then_some(())
        },
    );
    // Its fence-peer handler (same configuration) is refused too: exit 6, the
    // Primary's I/O would stay frozen, nothing outdated.
    let out = std::process::Command::new(bin("understudy-fence-peer"))
        .arg("--config")
        .arg(&cfg)
        .args(["--timeout-secs", "5"])
        .env("DRBD_RESOURCE", "r0")
        .env("DRBD_PEER_NODE_ID", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("may only report and act for fs1-a"),
        "{}",
        stderr(&out)
    );
    std::thread::sleep(Duration::from_secs(1));
    agent.kill();

    // Nothing was recorded for fs1-b: still disconnected, no newer report.
    let after = c.try_status().unwrap();
    let b = server(&after, "fs1", "fs1-b");
    assert_eq!(b["connected"], false, "{b}");
    assert!(
        b["last_report_age_ms"].as_u64().unwrap() > age_before,
        "a report was recorded for fs1-b: {b}"
    );
    assert_eq!(state_of(&after), state_of(&before));
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let before = c.wait_status("pair healthy", Duration::from_secs(60), pair_healthy);
    let pki = pki(&c).clone();
    let leader = before["cluster"]["leader_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let term = before["cluster"]["term"].as_u64().unwrap();

    // A gRPC client that trusts the CA but presents no certificate: the TLS
    // handshake is refused, whatever it calls. (TLS 1.3: the call sees the
    // controller's alert, or a reset if it had written its request already; a
    // bare handshake, `diagnose`, always sees the alert.)
    rt().block_on(async {
        let tls = client(&pki, None);
        let refused = |e: tonic::Status| {
            let tls = tls.clone();
            let leader = leader.clone();
            async move {
                match understudy_tls::auth_failure(&e) {
                    Some(why) => why,
                    None => understudy_tls::diagnose(&leader, &tls, Duration::from_secs(2))
                        .await
                        .unwrap_or_else(|| format!("not refused by TLS: {e:?}")),
                }
            }
        };
        let ch = channel(&leader, Duration::from_secs(2), Some(&tls)).unwrap();
        let e = OperatorServiceClient::new(ch.clone())
            .get_status(GetStatusRequest {})
            .await
            .expect_err("no client certificate");
        let why = refused(e).await;
        assert!(why.contains("requires a client certificate"), "{why}");
        let e = RaftServiceClient::new(ch)
            .vote(vote_with_term(term + 100))
            .await
            .expect_err("no client certificate");
        let why = refused(e).await;
        assert!(why.contains("requires a client certificate"), "{why}");
    });

    // understudyctl with the CA but no certificate: exit 7, saying why.
    let ca_only = Creds::Tls {
        ca: pki.ca(),
        cert: None,
        key: None,
    };
    let out = understudy_tests::ctl(&c.controllers.addrs, &ca_only)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("requires a client certificate"),
        "{}",
        stderr(&out)
    );

    // A certificate from another CA (a valid-looking admin): exit 7.
    let other = Pki::new(&c.dir.path().join("other-ca"));
    let w = other.issue(&Leaf::Operator {
        name: "mallory".into(),
        role: Role::Admin,
    });
    let foreign = Creds::Tls {
        ca: pki.ca(),
        cert: Some(w.cert.clone()),
        key: Some(w.key.clone()),
    };
    let out = understudy_tests::ctl(&c.controllers.addrs, &foreign)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused this client's certificate"),
        "{}",
        stderr(&out)
    );

    // An agent holding a certificate from another CA: it says, in its log,
    // that the controllers refuse its certificate.
    let b = &c.hosts[1];
    let fs1b = issued(&pki, "agent-fs1-b");
    // (fs1-b's own agent still runs: another probe port.)
    let text = std::fs::read_to_string(&b.agent_config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("probe_listen") {
                format!("probe_listen = \"127.0.0.1:{}\"", free_udp_port())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = b.dir.join("foreign.toml");
    std::fs::write(
        &cfg,
        text.replace(
            &fs1b.cert.display().to_string(),
            &w.cert.display().to_string(),
        )
        .replace(
            &fs1b.key.display().to_string(),
            &w.key.display().to_string(),
        ),
    )
    .unwrap();
    let log = b.dir.join("foreign.log");
    let mut cmd = std::process::Command::new(bin("understudy-agent"));
    cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
    let agent = Proc::spawn("agent with a foreign certificate", &mut cmd, &log);
    wait_for(
        "the agent to log that its certificate is refused",
        Duration::from_secs(10),
        || {
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            l.contains("refused this client's certificate")
                .then_some(())
        },
    );
    agent.kill();

    // Plain text against TLS controllers: nothing answers (exit 1), with a hint.
    let out = understudy_tests::ctl(&c.controllers.addrs, &Creds::Insecure)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pass --ca, --cert and --key"),
        "{}",
        stderr(&out)
    );

    let after = c.try_status().unwrap();
    assert_eq!(state_of(&after), state_of(&before));
}

#[test]
fn operator_calls_need_an_operator_certificate_and_raft_a_member_controller() {
    let c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let before = c.wait_status("pair healthy", Duration::from_secs(60), pair_healthy);
    let pki = pki(&c).clone();
    let term = before["cluster"]["term"].as_u64().unwrap();

    // A viewer reads the status (and TLS means no insecure warning).
    let viewer = pki.operator("vera", Role::Viewer);
    let out = understudy_tests::ctl(&c.controllers.addrs, &viewer)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("state Healthy"), "{table}");
    assert!(!table.contains("WARNING: insecure"), "{table}");
    assert_eq!(before["cluster"]["insecure"], false);
    let out = understudy_tests::ctl(&c.controllers.addrs, &viewer)
        .args(["check"])
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&out)
    );

    // A viewer may read the history, but not promote or pause: exit 7, and
    // nothing changes.
    let out = understudy_tests::ctl(&c.controllers.addrs, &viewer)
        .args(["history", "fs1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for args in [&["promote", "fs1"][..], &["pause", "fs1"]] {
        let out = understudy_tests::ctl(&c.controllers.addrs, &viewer)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("viewer"), "{}", stderr(&out));
    }
    let now = c.wait_status("status", Duration::from_secs(10), |_| true);
    assert_eq!(now["pairs"][0]["state"], "Healthy");
    assert_eq!(now["pairs"][0]["epoch"], before["pairs"][0]["epoch"]);

    // An agent's certificate is no operator's: refused, exit 7, at once.
    let fs1a = issued(&pki, "agent-fs1-a");
    let as_agent = Creds::Tls {
        ca: pki.ca(),
        cert: Some(fs1a.cert.clone()),
        key: Some(fs1a.key.clone()),
    };
    let out = understudy_tests::ctl(&c.controllers.addrs, &as_agent)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("agent fs1-a is not an operator"),
        "{}",
        stderr(&out)
    );

    // Raft messages: an agent, an admin operator, and a controller that is
    // not a member are refused before the message is even decoded.
    let outsider = pki.issue(&Leaf::Controller {
        node_id: 9,
        addrs: vec!["127.0.0.1".into()],
    });
    let admin = pki.issue(&Leaf::Operator {
        name: "ada".into(),
        role: Role::Admin,
    });
    rt().block_on(async {
        for (who, w, want) in [
            ("agent", &fs1a, "agent fs1-a may not send Raft messages"),
            ("admin", &admin, "ada (admin) may not send Raft messages"),
            ("outsider", &outsider, "controller 9 is not a member"),
        ] {
            for addr in &c.controllers.addrs {
                let tls = client(&pki, Some(w));
                let ch = channel(addr, Duration::from_secs(2), Some(&tls)).unwrap();
                let mut raft = RaftServiceClient::new(ch);
                let e = raft.vote(vote_with_term(term + 100)).await.expect_err(who);
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}: {e:?}");
                assert!(e.message().contains(want), "{who}: {e:?}");
                let e = raft
                    .append_entries(RaftMessage {
                        data: b"{}".to_vec(),
                    })
                    .await
                    .expect_err(who);
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}: {e:?}");
            }
        }
    });
    // The members still talk to each other; no vote was taken.
    std::thread::sleep(Duration::from_millis(500));
    let after = c.try_status().unwrap();
    assert_eq!(after["cluster"]["term"].as_u64(), Some(term), "{after}");
    assert_eq!(state_of(&after), state_of(&before));
    assert!(pair_healthy(&after), "{after}");
}

#[test]
fn insecure_mode_works_and_the_status_warns() {
    let c = Cluster::start_insecure(3);
    let _logs = c.keep_logs_on_panic();
    let s = c.wait_status("pair healthy", Duration::from_secs(60), pair_healthy);
    assert_eq!(s["cluster"]["insecure"], true);
    let out = c.controllers.ctl().arg("status").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        table.lines().next(),
        Some("WARNING: insecure mode: no TLS, any host that reaches the controllers can pose as an agent or operator"),
        "{table}"
    );
    // Credentials against plain-text controllers do not help: they cannot
    // speak TLS. (Not an authorisation failure: exit 1.)
    let pki = Pki::new(&c.dir.path().join("pki"));
    let admin = pki.operator("ada", Role::Admin);
    let out = understudy_tests::ctl(&c.controllers.addrs, &admin)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Without credentials or --insecure, understudyctl says what to pass.
    let out = std::process::Command::new(bin("understudyctl"))
        .args(["--controllers", &c.controllers.addrs.join(","), "status"])
        .env_remove("UNDERSTUDY_CA")
        .env_remove("UNDERSTUDY_CERT")
        .env_remove("UNDERSTUDY_KEY")
        .env_remove("UNDERSTUDY_INSECURE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--insecure"), "{}", stderr(&out));
}

/// `understudyctl certs` makes a CA and certificates as documented, keys 0600.
#[test]
fn understudyctl_certs_makes_a_ca_and_certificates() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("pki");
    let run = |args: &[&str]| {
        std::process::Command::new(bin("understudyctl"))
            .arg("certs")
            .args(args)
            .output()
            .unwrap()
    };
    let ds = d.to_str().unwrap();
    let out = run(&["init", "--dir", ds]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["init", "--dir", ds]);
    assert_eq!(out.status.code(), Some(1), "a second CA in the same place");
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    for args in [
        vec!["issue", "--dir", ds, "--agent", "fs1-a"],
        vec![
            "issue",
            "--dir",
            ds,
            "--controller",
            "2",
            "--addr",
            "127.0.0.1,198.18.3.1",
        ],
        vec![
            "issue",
            "--dir",
            ds,
            "--operator",
            "alice",
            "--role",
            "admin",
        ],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    for (f, mode) in [
        ("ca.key", 0o600),
        ("ca.pem", 0o644),
        ("agent-fs1-a.key", 0o600),
        ("agent-fs1-a.pem", 0o644),
        ("controller-2.key", 0o600),
        ("operator-alice.key", 0o600),
        ("operator-alice.pem", 0o644),
    ] {
        let m = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    // Usage errors: a controller without addresses, two kinds at once, a bad role.
    for args in [
        vec!["issue", "--dir", ds, "--controller", "2"],
        vec![
            "issue",
            "--dir",
            ds,
            "--agent",
            "a",
            "--operator",
            "b",
            "--role",
            "admin",
        ],
        vec!["issue", "--dir", ds, "--operator", "b", "--role", "root"],
        vec!["issue", "--dir", ds, "--agent", "a b"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert!(!Path::new(&d.join("agent-a b.pem")).exists());
}

/// A Raft vote request for `term` from a node 9 (JSON, as the transport sends it).
fn vote_with_term(term: u64) -> RaftMessage {
    let vote = openraft::alias::VoteOf::<TypeConfig>::new(term, 9);
    let req = openraft::raft::VoteRequest::<TypeConfig>::new(vote, None);
    RaftMessage {
        data: serde_json::to_vec(&req).unwrap(),
    }
}

/// Open an agent session at `addr` with `tls`, saying hello as `server`;
/// `relayed_by` adds the relay header a follower sets; `handoff_ok` says the
/// agent follows a leader's handoff to a follower.
async fn open_session(
    addr: &str,
    tls: &ClientTls,
    server: &str,
    relayed_by: Option<u64>,
    handoff_ok: bool,
) -> (
    tokio::sync::mpsc::Sender<AgentMessage>,
    Result<tonic::Streaming<understudy_proto::ControllerMessage>, tonic::Status>,
) {
    let ch = channel(addr, Duration::from_secs(2), Some(tls)).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(AgentMessage {
        msg: Some(Msg::Hello(Hello {
            server_id: server.into(),
            pair_id: "fs1".into(),
            role: ServerRole::Backup as i32,
            agent_version: "test".into(),
            highest_epoch: 0,
            stall_ms: 0,
            handoff_ok,
        })),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(id) = relayed_by {
        req.metadata_mut().insert(
            understudy_controller::relay::RELAYED_BY,
            id.to_string().parse().unwrap(),
        );
    }
    let r = AgentServiceClient::new(ch).session(req).await;
    (tx, r.map(|r| r.into_inner()))
}

#[test]
fn followers_relay_agent_sessions_and_the_leader_hands_off_the_ones_it_is_dialled_on() {
    use understudy_proto::controller_message::Msg as Out;
    let mut c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let s = c.wait_status("pair healthy", Duration::from_secs(60), pair_healthy);
    let leader = Cluster::leader_index(&s).expect("a leader");
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    // fs1-b's own agent stops: the session below is then fs1-b's only one.
    c.hosts[1].agent.take().expect("fs1-b's agent").kill();
    c.wait_status("fs1-b's agent gone", Duration::from_secs(10), |s| {
        server(s, "fs1", "fs1-b")["connected"] == false
    });
    let pki = pki(&c).clone();
    let agent = client(&pki, Some(&issued(&pki, "agent-fs1-b")));
    let addrs = c.controllers.addrs.clone();
    // One runtime for the whole test: the channels' tasks live on it.
    let rt = rt();
    let (tx, inbound) = rt.block_on(open_session(&addrs[follower], &agent, "fs1-b", None, true));
    let mut inbound = inbound.expect("the follower takes the session");
    // The leader's Welcome comes back through the follower, and the leader
    // acknowledges a heartbeat (every one: this hello gave no stall bound).
    rt.block_on(async {
        match inbound.message().await.unwrap().and_then(|m| m.msg) {
            Some(Out::Welcome(w)) => assert_eq!(w.node_id, leader as u64 + 1, "{w:?}"),
            other => panic!("expected the leader's Welcome, got {other:?}"),
        }
        tx.send(AgentMessage {
            msg: Some(Msg::Heartbeat(understudy_proto::Heartbeat {
                seq: 7,
                sent_at_unix_ms: 1,
            })),
        })
        .await
        .unwrap();
        match inbound.message().await.unwrap().and_then(|m| m.msg) {
            Some(Out::HeartbeatAck(a)) => assert_eq!(a.seq, 7),
            other => panic!("expected the acknowledgement, got {other:?}"),
        }
    });
    // The leader holds the session, relayed by the follower.
    c.wait_status(
        "fs1-b connected through the follower",
        Duration::from_secs(5),
        |s| server(s, "fs1", "fs1-b")["connected"] == true,
    );
    let log = c.dir.path().join(format!("controller-{}.log", leader + 1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("agent connected")
            && l.contains("fs1-b")
            && l.contains(&format!("relayed_by={}", follower + 1))),
        "{}",
        log.display()
    );
    // The agent's stream ends: the relayed session closes on the leader.
    // (Inside the runtime, which runs the connection's tasks only there.)
    rt.block_on(async {
        drop(tx);
        drop(inbound);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    c.wait_status("fs1-b disconnected again", Duration::from_secs(5), |s| {
        server(s, "fs1", "fs1-b")["connected"] == false
    });

    // A controller's certificate opens no session of its own at the leader,
    // and a session already relayed is redirected, never relayed again.
    let peer = client(
        &pki,
        Some(&issued(&pki, &format!("controller-{}", follower + 1))),
    );
    rt.block_on(async {
        let (_tx, r) = open_session(&addrs[leader], &peer, "fs1-b", None, true).await;
        let e = r.expect_err("a controller is not an agent");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let (_tx, r) = open_session(
            &addrs[other],
            &peer,
            "fs1-b",
            Some(follower as u64 + 1),
            true,
        )
        .await;
        let mut inbound = r.expect("answered");
        match inbound.message().await.unwrap().and_then(|m| m.msg) {
            Some(Out::Redirect(r)) => assert_eq!(r.leader_id, Some(leader as u64 + 1)),
            other => panic!("expected a redirect, got {other:?}"),
        }
    });

    // An agent that dials the leader itself and follows handoffs is handed to
    // a follower (the leader names itself as leader, the follower as `via`);
    // one that declines them is served by the leader.
    rt.block_on(async {
        let (_tx, r) = open_session(&addrs[leader], &agent, "fs1-b", None, true).await;
        let mut inbound = r.expect("answered");
        match inbound.message().await.unwrap().and_then(|m| m.msg) {
            Some(Out::Redirect(r)) => {
                assert_eq!(r.leader_id, Some(leader as u64 + 1), "{r:?}");
                assert_eq!(r.leader_addr, addrs[leader], "{r:?}");
                assert!(r.via_id != 0 && r.via_id != leader as u64 + 1, "{r:?}");
                assert_eq!(r.via_addr, addrs[r.via_id as usize - 1], "{r:?}");
            }
            other => panic!("expected a handoff, got {other:?}"),
        }
        let (_tx, r) = open_session(&addrs[leader], &agent, "fs1-b", None, false).await;
        let mut inbound = r.expect("answered");
        match inbound.message().await.unwrap().and_then(|m| m.msg) {
            Some(Out::Welcome(w)) => {
                assert_eq!(w.node_id, leader as u64 + 1, "{w:?}");
                assert_eq!(w.relayed_by, 0, "{w:?}");
            }
            other => panic!("expected the leader's Welcome, got {other:?}"),
        }
    });
}
