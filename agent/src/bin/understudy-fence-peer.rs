//! `understudy-fence-peer --config agent.toml`: DRBD's fence-peer handler.
//!
//! Run by DRBD (`handlers { fence-peer "..."; }`, with `fencing
//! resource-and-stonith`) on a Primary that lost its replication connection, with
//! `DRBD_RESOURCE` and `DRBD_PEER_NODE_ID` in its environment. Exits 4 once the
//! controller has recorded the peer as outdated; 6 if the controller refuses
//! (this server no longer serves); 1 otherwise. See `understudy_agent::fence_peer`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use understudy_agent::fence_peer::{fence_peer, HandlerEnv, EXIT_FAILED, EXIT_PEER_OUTDATED};
use understudy_agent::AgentConfig;

/// Ask the Understudy controller to record this Primary's DRBD peer as outdated.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path to this server's agent configuration (controllers, ids, resource).
    #[arg(long, short, env = "UNDERSTUDY_AGENT_CONFIG")]
    config: PathBuf,
    /// Give up (and leave I/O suspended) after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("understudy-fence-peer: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let env = HandlerEnv::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(fence_peer(
        &cfg,
        &env,
        Duration::from_secs(args.timeout_secs),
    )) {
        Ok(r) => {
            eprintln!("understudy-fence-peer: {}", r.detail);
            ExitCode::from(EXIT_PEER_OUTDATED)
        }
        Err(e) => {
            eprintln!("understudy-fence-peer: resource {}: {e}", env.resource);
            ExitCode::from(e.exit_code())
        }
    }
}
