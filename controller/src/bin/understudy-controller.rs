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

const DEFAULT_FILTER: &str = "info,openraft=warn";

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
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
