//! Understudy agent: runs on every file server and backup server.
//!
//! - `observer`: runs `drbdsetup events2` and keeps a typed picture of DRBD;
//! - `report`: turns that picture into the wire report;
//! - `session`: keeps a gRPC session open with the controller leader, sending
//!   reports on change and heartbeats in between;
//! - `redial`: the jittered, growing pause before dialling again after a
//!   failed session (thousands of agents must not re-dial in step);
//! - `probe`: answers the leader's direct liveness probes (UDP);
//! - `epoch`: the persisted highest fencing token (S4);
//! - `commands`: runs the controller's commands (checked against the token);
//! - `fence_peer`: DRBD's fence-peer handler (`understudy-fence-peer`), asking
//!   the controller to record the peer outdated (S1);
//! - `actions`: what runs on the host: drbdadm, mount, NFS export, client IP;
//! - `selfcheck`: the files and tools the agent needs exist with usable
//!   permissions (at start, every 60 s, and on the controller's command);
//! - `net_options`: DRBD's net options (`drbdsetup show --show-defaults`),
//!   attached to the DRBD report;
//! - `config`, `error`: TOML configuration and the error type.

pub mod actions;
pub mod commands;
pub mod config;
pub mod epoch;
pub mod error;
pub mod fence_peer;
pub mod net_options;
pub mod observer;
pub mod probe;
pub mod redial;
pub mod report;
pub mod selfcheck;
pub mod session;

pub use config::AgentConfig;
pub use error::AgentError;

/// Run the agent until the process is stopped.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let tls = cfg.client_tls()?;
    if tls.is_none() {
        tracing::warn!("INSECURE: [tls] insecure = true: the controller sessions are plain text and unauthenticated");
    }
    let tokens = epoch::EpochStore::open(&cfg.state_dir)?;
    let drbd = actions::DrbdActionsConfig::new(cfg.drbd.resource.clone(), cfg.drbd.drbdadm.clone());
    let host = actions::HostActions::new(drbd, cfg.serving.clone())?
        .with_configure(cfg.drbd.configure.clone());
    let handler = commands::Handler::new(
        cfg.pair_id.clone(),
        tokens,
        host,
        selfcheck::SelfCheckPlan::from_config(&cfg),
    );
    let probes = probe::ProbeState::new(cfg.pair_id.clone(), cfg.server_id.clone(), cfg.stall_ms);
    let socket = probe::bind(cfg.probe_listen).await?;
    tracing::info!(listen = %cfg.probe_listen, "answering liveness probes");
    let h = handler.clone();
    tokio::spawn(probe::serve(
        socket,
        probes.clone(),
        move || h.token().epoch,
        cfg.probe_max_per_sec,
    ));
    tokio::spawn(handler.clone().watch_host());
    let (observed_tx, observed_rx) =
        tokio::sync::watch::channel(understudy_proto::DrbdStatus::default());
    tokio::spawn(observer::run(cfg.drbd.clone(), observed_tx));
    // What the session reports: the observer's picture with DRBD's net options.
    let (tx, rx) = tokio::sync::watch::channel(understudy_proto::DrbdStatus::default());
    tokio::spawn(net_options::run(cfg.drbd.clone(), observed_rx, tx));
    session::run(cfg, tls, rx, handler, probes).await;
    Ok(())
}
