//! Understudy agent: runs on every file server and backup server.
//!
//! - `observer`: runs `drbdsetup events2` and keeps a typed picture of DRBD;
//! - `report`: turns that picture into the wire report;
//! - `session`: keeps a gRPC session open with the controller leader, sending
//!   reports on change and heartbeats in between;
//! - `epoch`: the persisted highest failover epoch (S4);
//! - `config`, `error`: TOML configuration and the error type.

pub mod config;
pub mod epoch;
pub mod error;
pub mod observer;
pub mod report;
pub mod session;

pub use config::AgentConfig;
pub use error::AgentError;

/// Run the agent until the process is stopped.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let epoch = epoch::EpochStore::open(&cfg.state_dir)?.current().epoch;
    let (tx, rx) = tokio::sync::watch::channel(understudy_proto::DrbdStatus::default());
    tokio::spawn(observer::run(cfg.drbd.clone(), tx));
    session::run(cfg, rx, epoch).await;
    Ok(())
}
