//! `understudy-controller --config controller.toml`: run one controller node.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use understudy_controller::{node, ControllerConfig};

/// jemalloc instead of glibc's malloc. A leader holds thousands of agent
/// connections, each with buffers of a few KiB that grow and shrink, and peaks
/// (snapshots, replication) come and go: glibc kept about 20 MB of that as
/// slack and refilled it, while jemalloc returns unused pages to the system
/// from a background thread. At 2000 pairs the leader's resident memory went
/// from 264-275 MB to 228-232 MB (ARCHITECTURE.md, scale).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment is applied after them): purge unused pages from a background
/// thread within about a second, and two arenas (the controller allocates from
/// a handful of threads; more arenas hold more idle pages).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A `const char *` jemalloc reads at start-up.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points to a static, immutable, NUL-terminated string.
unsafe impl Sync for MallocConf {}

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
