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
    /// Log lines as text, or as JSON objects (one per line, with the span
    /// fields: pair, epoch, step, outcome, duration_ms) for a log pipeline.
    #[arg(
        long,
        env = "UNDERSTUDY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr; `RUST_LOG` filters.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => b.json().with_current_span(true).with_span_list(true).init(),
    }
}

const DEFAULT_FILTER: &str = "info";

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
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
