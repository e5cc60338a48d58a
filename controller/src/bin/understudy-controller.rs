//! `understudy-controller --config controller.toml`: run one controller node.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use understudy_controller::{node, ControllerConfig};

/// Run one node of the Understudy controller cluster.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path to the node's TOML configuration.
    #[arg(long, short, env = "UNDERSTUDY_CONTROLLER_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let cfg = match ControllerConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("understudy-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let res = rt.block_on(node::run(cfg, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stop requested");
    }));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("understudy-controller: {e}");
            ExitCode::FAILURE
        }
    }
}
