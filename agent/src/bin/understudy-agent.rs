//! `understudy-agent --config agent.toml`: run the agent of one server.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use understudy_agent::AgentConfig;

/// Watch DRBD on this server and report to the Understudy controller.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path to the agent's TOML configuration.
    #[arg(long, short, env = "UNDERSTUDY_AGENT_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("understudy-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(async {
        tokio::select! {
            r = understudy_agent::run(cfg) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("understudy-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
