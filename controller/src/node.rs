//! One controller node: opens the durable Raft storage, starts the Raft node and
//! the gRPC server (Raft transport, agent sessions, operator API), bootstraps the
//! cluster on first start, publishes who leads (with the leader lease, S6), and
//! starts the leader's loop (`leader.rs`) and the services. Nothing imports
//! `node`: the services depend on the small `leadership` type.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use understudy_proto::agent_service_server::AgentServiceServer;
use understudy_proto::operator_service_server::OperatorServiceServer;
use understudy_proto::raft_service_server::RaftServiceServer;

use crate::agents::AgentGrpc;
use crate::auth::Auth;
use crate::config::ControllerConfig;
use crate::error::ControllerError;
use crate::failover::Executor;
use crate::leadership::LeaderView;
use crate::liveness::Liveness;
use crate::operator::OperatorGrpc;
use crate::raft::network::{Network, RaftGrpc};
use crate::raft::store::{open_database, LogStore, StateMachineStore};
use crate::raft::Raft;

/// Run a controller node until `shutdown` resolves.
pub async fn run(
    cfg: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    // One copy, shared: the inventory in it is megabytes at thousands of pairs.
    let cfg = Arc::new(cfg);
    // Mutual TLS (the same certificate serves and dials peers), or explicitly
    // none; the files are read first, so a wrong path stops nothing half-started.
    let tls_err = |e: understudy_tls::TlsError| ControllerError::Config {
        path: "[tls]".into(),
        reason: e.to_string(),
    };
    let (server_tls, client_tls, auth) = match &cfg.tls_files().map_err(tls_err)? {
        Some(f) => (
            Some(f.server().map_err(tls_err)?),
            Some(f.client().map_err(tls_err)?),
            Auth::tls(),
        ),
        None => {
            tracing::warn!(node = cfg.node_id, "INSECURE: [tls] insecure = true: no TLS, any host that reaches {} can pose as an agent, an operator or a controller", cfg.listen);
            (None, None, Auth::default())
        }
    };
    // TLS handshakes are run by `acceptor`, a few at a time, not by tonic.
    let mut server = crate::transport::server();
    let handshakes = server_tls
        .as_ref()
        .map(|_| Arc::new(crate::acceptor::AdmissionStats::default()));
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ControllerError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let db = open_database(&cfg.data_dir.join("raft.redb"))?;
    let sm = StateMachineStore::open(db.clone())?;
    let shared = sm.shared();
    let log = LogStore::new(db);

    let t = &cfg.timing;
    let raft_cfg = openraft::Config {
        cluster_name: "understudy".into(),
        heartbeat_interval: t.raft_heartbeat_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ControllerError::Config {
        path: "timing".into(),
        reason: e.to_string(),
    })?;
    let relay = cfg
        .agents
        .relay
        .then(|| Arc::new(crate::relay::Relay::new(cfg.node_id, client_tls.clone())));
    let network = Network { tls: client_tls };
    // Raft's core, its replication streams (the clients dialled to the peers)
    // and the state machine run on a runtime of their own, on threads of their own:
    // thousands of agent sessions (their TLS handshakes above all) on the main
    // runtime cannot delay a heartbeat past the leader's lease (S6) and make it
    // stand down, which would redirect every session and start a reconnect storm.
    let raft_rt = SideRuntime::start("understudy-raft", 2)?;
    // The TLS handshakes of the connections this node accepts run on one
    // thread of their own too: thousands of them after an election or a
    // restart are CPU-bound work that, on the main runtime, queued every
    // other task behind it, the Raft RPCs this node answers among them
    // (a follower that answers its leader late makes it lose its lease:
    // ARCHITECTURE.md, Scale). On a thread of their own they compete with
    // the main runtime's threads for the CPU, fairly, and queue nothing.
    let tls_rt = SideRuntime::start("understudy-tls", 1)?;
    let node_id = cfg.node_id;
    let raft = raft_rt
        .handle()
        .spawn(async move { Raft::new(node_id, Arc::new(raft_cfg), network, log, sm).await })
        .await
        .map_err(|e| ControllerError::RaftFatal(e.to_string()))?
        .map_err(|e| ControllerError::RaftFatal(e.to_string()))?;

    let (leader_tx, leader_rx) = watch::channel(LeaderView::default());
    tokio::spawn(follow_leader(raft.clone(), cfg.clone(), leader_tx));

    let liveness = Arc::new(Liveness::default());
    let listener =
        TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ControllerError::Listen {
                addr: cfg.listen,
                source,
            })?;
    tracing::info!(node = cfg.node_id, listen = %cfg.listen, "controller listening");

    tokio::spawn(bootstrap(raft.clone(), cfg.clone()));
    let prober = crate::probe::Prober::bind(liveness.clone())
        .await
        .map_err(|source| ControllerError::ProbeSocket { source })?;
    tokio::spawn(crate::probe::watch(
        prober.clone(),
        liveness.clone(),
        shared.clone(),
        leader_rx.clone(),
        cfg.probe.clone(),
    ));
    let findings = Arc::new(crate::preflight::Findings::default());
    let executor = Arc::new(Executor {
        raft: raft.clone(),
        state: shared.clone(),
        liveness: liveness.clone(),
        cloud: cfg
            .cloud
            .build(&inventory_servers(&cfg))
            .map_err(|reason| ControllerError::Config {
                path: "[cloud]".into(),
                reason,
            })?,
        cfg: cfg.executor.clone(),
        detector: cfg.detector.clone(),
        probe: cfg.probe.clone(),
        prober,
        spare: cfg.spare.clone(),
        provisioning: Default::default(),
        findings: findings.clone(),
        signals: Default::default(),
        leader: leader_rx.clone(),
    });
    tokio::spawn(crate::leader::leader_duties(
        raft.clone(),
        cfg.clone(),
        shared.clone(),
        liveness.clone(),
        executor.clone(),
        leader_rx.clone(),
    ));

    let agents = AgentGrpc::new(
        raft.clone(),
        cfg.node_id,
        leader_rx.clone(),
        liveness.clone(),
        shared.clone(),
        cfg.timing.agent_heartbeat_ms,
        auth.clone(),
        relay,
        cfg.agents
            .handoff
            .then(|| Duration::from_millis(cfg.timing.election_timeout_min_ms)),
    );
    let operator = Arc::new(OperatorGrpc {
        raft: raft.clone(),
        cfg: cfg.clone(),
        leader: leader_rx,
        liveness,
        state: shared,
        provisioning: executor.provisioning.clone(),
        findings: findings.clone(),
        cloud: executor.cloud.clone(),
        signals: executor.signals.clone(),
        auth: auth.clone(),
    });
    if let Some(http) = cfg.http.clone() {
        let peers = cfg
            .members
            .iter()
            .filter_map(|m| m.http.clone().map(|a| (m.id, a)))
            .collect();
        let h = crate::http::Http {
            op: operator.clone(),
            peers: Arc::new(peers),
            handshakes: handshakes.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(http.clone(), h).await {
                tracing::error!(listen = %http.listen, error = %e, "HTTP server stopped: check that [http] listen is free");
            }
        });
    }
    let members = cfg.members.iter().map(|m| m.id).collect();
    let router = server
        .add_service(RaftServiceServer::new(RaftGrpc::new(
            raft.clone(),
            auth,
            members,
        )))
        .add_service(AgentServiceServer::new(agents))
        .add_service(OperatorServiceServer::from_arc(operator.clone()));
    let served = match (server_tls, handshakes) {
        (Some(tls), Some(stats)) => {
            let incoming = crate::acceptor::tls_incoming(
                listener,
                Arc::new(tls),
                crate::acceptor::Admission::default(),
                stats,
                tls_rt.handle().clone(),
            );
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        _ => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
    };
    tracing::info!(node = cfg.node_id, "shutting down Raft");
    let _ = raft.shutdown().await;
    drop(raft_rt);
    drop(tls_rt);
    served.map_err(ControllerError::from)
}

/// A runtime of its own, on threads of its own: Raft's (two worker threads:
/// the state machine's disk writes block one while the other keeps the
/// heartbeats going) and the TLS handshakes' (one); dropping it shuts it down
/// with everything still spawned on it.
struct SideRuntime {
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl SideRuntime {
    fn start(name: &str, threads: usize) -> Result<SideRuntime, ControllerError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|source| ControllerError::SideRuntime {
                name: name.to_string(),
                source,
            })?;
        Ok(SideRuntime { rt: Some(rt) })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        // (Called from the main runtime: a blocking shutdown is not allowed there.)
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Every server of the configured inventory, as the cloud knows it.
fn inventory_servers(cfg: &ControllerConfig) -> Vec<understudy_cloud::CloudServer> {
    cfg.pairs
        .iter()
        .flat_map(|p| [&p.primary, &p.backup])
        .map(crate::failover::cloud_server)
        .collect()
}

/// Publish who leads, from Raft's metrics and the leader's lease.
///
/// S6: openraft's leader keeps calling itself leader while it is cut off from
/// its peers (it only fails new proposals). Here a leader counts as leading only
/// while a quorum acknowledged it within the lease (the minimum election
/// timeout, after which the others may elect a new leader). Past it, everything
/// that follows `is_leader` stops: the leader loop and executor stop, no
/// command is sent, no read is answered. Agent sessions are redirected and
/// closed one lease later unless the lease is back by then
/// ([`crate::leadership::holds_sessions`]), at once if another term is seen.
async fn follow_leader(raft: Raft, cfg: Arc<ControllerConfig>, tx: watch::Sender<LeaderView>) {
    let mut metrics = raft.metrics();
    let lease = Duration::from_millis(cfg.timing.election_timeout_min_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when the lease is lapsed (this node still the Raft leader).
    let mut lapsed_since: Option<Instant> = None;
    loop {
        let view = {
            let m = metrics.borrow_watched();
            let raft_leader =
                m.state == ServerState::Leader && m.current_leader == Some(cfg.node_id);
            let alone = m.membership_config.membership().voter_ids().count() == 1;
            let acked = m
                .last_quorum_acked
                .as_ref()
                .is_some_and(|t| openraft::Instant::elapsed(&**t) < lease);
            let lease_ok = alone || acked;
            let lease_lost = raft_leader && !lease_ok;
            // (Right after an election nothing is acknowledged yet: not worth a warning.)
            if lease_lost && lapsed_since.is_none() && m.last_quorum_acked.is_some() {
                tracing::warn!(node = cfg.node_id, term = m.current_term, lease_ms = lease.as_millis() as u64, "no quorum acknowledged this leader within its lease: standing down (no commands; agent sessions kept one more lease)");
            }
            lapsed_since = match lapsed_since {
                _ if !lease_lost => None,
                None => Some(Instant::now()),
                since => since,
            };
            let holds = crate::leadership::holds_sessions(
                raft_leader,
                lease_ok,
                lapsed_since.map(|t| t.elapsed()),
                lease,
            );
            let current_leader = m.current_leader.filter(|_| !lease_lost);
            let leader_addr = current_leader.and_then(|id| {
                m.membership_config
                    .membership()
                    .nodes()
                    .find(|(n, _)| **n == id)
                    .map(|(_, node)| node.addr.clone())
                    .or_else(|| cfg.member_addr(id).map(str::to_owned))
            });
            LeaderView {
                is_leader: raft_leader && lease_ok,
                holds_sessions: holds,
                leader_id: current_leader,
                leader_addr,
                term: m.current_term,
            }
        };
        tx.send_if_modified(|cur| {
            if *cur != view {
                if cur.leader_id != view.leader_id {
                    tracing::info!(node = cfg.node_id, leader = ?view.leader_id, term = view.term, "leader changed");
                }
                *cur = view;
                true
            } else {
                false
            }
        });
        tokio::select! {
            r = metrics.changed() => if r.is_err() {
                return;
            },
            _ = tick.tick() => {}
        }
    }
}

/// On the very first start, the member with the lowest id initializes the cluster
/// with the configured membership; every later start recovers it from disk.
async fn bootstrap(raft: Raft, cfg: Arc<ControllerConfig>) {
    let lowest = cfg.members.iter().map(|m| m.id).min();
    if lowest != Some(cfg.node_id) {
        return;
    }
    match raft.is_initialized().await {
        Ok(true) | Err(_) => return,
        Ok(false) => {}
    }
    let members: BTreeMap<u64, BasicNode> = cfg
        .members
        .iter()
        .map(|m| (m.id, BasicNode::new(m.addr.clone())))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(node = cfg.node_id, "cluster initialized"),
        Err(e) => tracing::warn!(node = cfg.node_id, error = %e, "cluster initialization refused"),
    }
}
