//! `understudyctl`: the operator CLI.
//!
//! Every read goes to the Raft leader (linearizable): the CLI tries the given
//! controllers in turn and follows a follower's redirect to the leader.
//!
//! Calls run over mutual TLS: `--ca` (the cluster CA), `--cert` and `--key` (an
//! operator certificate naming a role, from `understudyctl certs issue
//! --operator NAME --role viewer|admin`), or the `UNDERSTUDY_CA`,
//! `UNDERSTUDY_CERT`, `UNDERSTUDY_KEY` environment variables; `--insecure`
//! (`UNDERSTUDY_INSECURE=true`) talks plain text to controllers configured with
//! `[tls] insecure = true`, and `status` then warns on its first line.
//!
//! `understudyctl certs init --dir D` makes a cluster CA; `understudyctl certs
//! issue --dir D (--agent ID | --controller N --addr IP,... | --operator NAME
//! --role viewer|admin)` a certificate signed by it (see
//! `understudy_controller::certs`).
//!
//! Exit codes: 0 done; 1 no controller could answer (for `certs`: the files
//! could not be read or written); 2 bad usage (including unreadable or missing
//! `--ca/--cert/--key`); 3 `check` found at least one error; 4 refused (the
//! reason is printed: a safety rule, a plan in flight, a backup not in sync); 5
//! no such pair; 6 no quorum (the controllers answer but cannot commit or
//! confirm leadership); 7 unauthorised: a controller refused these credentials
//! (no or unknown client certificate, or a role that may not make the call;
//! gRPC `UNAUTHENTICATED` or `PERMISSION_DENIED`), or the controller's
//! certificate is not trusted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};

#[path = "understudyctl/ops.rs"]
mod ops;
use understudy_controller::auth::Role;
use understudy_controller::certs::{self, CertsError, Leaf};
use understudy_controller::raft::network::channel;
use understudy_controller::status_json::{finding_json, status_json};
use understudy_proto::operator_service_client::OperatorServiceClient;
use understudy_proto::{CheckRequest, CheckResponse, Finding, GetStatusRequest, GetStatusResponse};
use understudy_tls::ClientTls;

/// Operate an Understudy cluster.
#[derive(Parser)]
#[command(version, about)]
pub struct Args {
    /// Controller gRPC addresses (host:port), comma-separated; any of them will do.
    #[arg(
        long,
        short,
        env = "UNDERSTUDY_CONTROLLERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
    )]
    controllers: Vec<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Give up on a controller after this many milliseconds.
    #[arg(long, default_value_t = 3000, global = true)]
    timeout_ms: u64,
    /// The cluster CA's certificate (PEM): controllers must present one it signed.
    #[arg(
        long,
        env = "UNDERSTUDY_CA",
        global = true,
        conflicts_with = "insecure"
    )]
    ca: Option<PathBuf>,
    /// This operator's certificate (PEM), naming its role.
    #[arg(long, env = "UNDERSTUDY_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// This operator's private key (PEM).
    #[arg(long, env = "UNDERSTUDY_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// Plain text, no authentication: only for controllers configured with
    /// `[tls] insecure = true`.
    #[arg(long, env = "UNDERSTUDY_INSECURE", global = true)]
    insecure: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pairs, servers, DRBD state, the Raft leader and members.
    Status,
    /// Inventory preflight now: volumes outside DRBD, zones, agent
    /// self-checks (re-run first), initial sync, DRBD timing. Exit 3 when a
    /// finding is an error.
    Check {
        /// Only this pair.
        pair: Option<String>,
    },
    /// Planned move of the file service to the backup, no data lost: refused
    /// unless the backup is UpToDate and in sync. `--at` schedules it;
    /// `--cancel` cancels a scheduled one.
    Switchover {
        pair: String,
        /// The server to move to (default: the pair's backup).
        #[arg(long, default_value = "")]
        to: String,
        /// When: `+10m` from now, or `2026-12-01T18:00:00Z` (UTC).
        #[arg(long)]
        at: Option<String>,
        /// Cancel the scheduled switchover.
        #[arg(long, conflicts_with_all = ["at", "to"])]
        cancel: bool,
    },
    /// Manual failover to the backup. Refused unless it is UpToDate and in sync
    /// (S1), unless `--force --accept-data-loss` (S8: recorded with who asked).
    Promote {
        pair: String,
        /// The server to promote (default: the pair's backup).
        #[arg(long, default_value = "")]
        to: String,
        /// Promote even a backup that may lack acknowledged writes.
        #[arg(long, requires = "accept_data_loss")]
        force: bool,
        /// Required with --force: you accept losing what the backup lacks.
        #[arg(long, requires = "force")]
        accept_data_loss: bool,
    },
    /// No automatic action on the pair (reports still flow) until `resume`.
    /// Without PAIR: every pair.
    Pause { pair: Option<String> },
    /// Undo `pause`. Without PAIR: every paused pair.
    Resume { pair: Option<String> },
    /// A maintenance window: planned DRBD disconnects (snapshots of the backup)
    /// are expected, not alarms; no automatic failover. Ends by itself.
    Maintenance {
        pair: String,
        /// How long: `30m`, `2h`, ...
        #[arg(long = "for", required_unless_present = "end")]
        duration: Option<String>,
        /// Why (kept in the history).
        #[arg(long, required_unless_present = "end")]
        reason: Option<String>,
        /// End the window now.
        #[arg(long)]
        end: bool,
    },
    /// Lift the hold-off after an automatic failover (S5): the next failure
    /// fails over automatically again.
    Ack { pair: String },
    /// Clear a Blocked pair once you have acted; refused unless safe now.
    #[command(alias = "resolve")]
    Unblock {
        pair: String,
        /// What you did (kept in the history).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Every failover, switchover, block and command, with who, when, why and
    /// each step's timing; then the audit log of operator commands.
    History { pair: Option<String> },
    /// What the controller would do now and why, including why it would not
    /// fail over (which rule, which inputs).
    Explain { pair: String },
    /// A live stream of history lines and state changes (Ctrl-C ends it).
    Watch { pair: Option<String> },
    /// Make a cluster CA and the certificates it signs (for a test or demo
    /// cluster; production may use its own PKI with the same names).
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Make a new CA in --dir: ca.pem (give it to every process) and ca.key
    /// (keep it secret: it can mint any identity).
    Init {
        /// Directory for ca.pem and ca.key (made if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate and key signed by the CA in --dir.
    Issue(IssueArgs),
}

/// Exactly one of --agent, --controller, --operator.
#[derive(clap::Args)]
#[command(group(ArgGroup::new("kind").required(true).args(["agent", "controller", "operator"])))]
struct IssueArgs {
    /// The CA's directory (ca.pem, ca.key).
    #[arg(long)]
    dir: PathBuf,
    /// Where to write <name>.pem and <name>.key (default: --dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// An agent certificate for this server id: it may report and act for
    /// that server only.
    #[arg(long, value_name = "SERVER_ID")]
    agent: Option<String>,
    /// A controller certificate for this node id (serves, and dials its peers).
    #[arg(long, value_name = "NODE_ID", requires = "addr")]
    controller: Option<u64>,
    /// The controller's addresses (IPs or host names, no ports), comma-separated:
    /// clients verify the address they dial against them.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "IP",
        requires = "controller"
    )]
    addr: Vec<String>,
    /// An operator certificate for this name.
    #[arg(long, value_name = "NAME", requires = "role")]
    operator: Option<String>,
    /// The operator's role: viewer (status, check, history) or admin (everything).
    #[arg(long, value_parser = parse_role, requires = "operator")]
    role: Option<Role>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("no controller answered ({0}); check the --controllers addresses and that a majority of controllers runs")]
    NoController(String),
    #[error("no controller answered ({0}); with --insecure: if the controllers run with TLS, pass --ca, --cert and --key instead")]
    NoControllerInsecure(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("no quorum: {0}; is a majority of controllers up and connected?")]
    NoQuorum(String),
    #[error("{0}")]
    Usage(String),
    #[error("controller {addr} refused: {reason}; use an operator certificate with the role this needs (`understudyctl certs issue --operator NAME --role viewer|admin`) signed by the cluster CA")]
    Unauthorized { addr: String, reason: String },
}

impl CtlError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CtlError::NoController(_) | CtlError::NoControllerInsecure(_) => ExitCode::from(1),
            CtlError::Unauthorized { .. } => ExitCode::from(EXIT_UNAUTHORIZED),
            CtlError::Usage(_) => ExitCode::from(2),
            CtlError::Refused(_) => ExitCode::from(4),
            CtlError::NotFound(_) => ExitCode::from(5),
            CtlError::NoQuorum(_) => ExitCode::from(6),
        }
    }
}

/// Exit code: a controller refused these credentials.
const EXIT_UNAUTHORIZED: u8 = 7;

/// How to reach the controllers: `None` plain text (`--insecure`).
fn client_tls(args: &Args) -> Result<Option<ClientTls>, String> {
    if args.insecure {
        return Ok(None);
    }
    let Some(ca) = &args.ca else {
        return Err("no credentials: pass --ca, --cert and --key (or set UNDERSTUDY_CA, UNDERSTUDY_CERT, UNDERSTUDY_KEY); an operator certificate comes from `understudyctl certs issue --operator NAME --role viewer|admin`; for controllers with `[tls] insecure = true`, pass --insecure".into());
    };
    let identity = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        // Without a client certificate the controllers refuse (exit 7, saying so).
        _ => None,
    };
    ClientTls::load(ca, identity)
        .map(Some)
        .map_err(|e| e.to_string())
}

async fn get_status(args: &Args, tls: Option<&ClientTls>) -> Result<GetStatusResponse, CtlError> {
    leader_call(args, tls, |mut c| async move {
        c.get_status(GetStatusRequest {}).await
    })
    .await
}

async fn check(
    args: &Args,
    tls: Option<&ClientTls>,
    pair: &Option<String>,
) -> Result<CheckResponse, CtlError> {
    let pair_id = pair.clone().unwrap_or_default();
    leader_call(args, tls, move |mut c| {
        let pair_id = pair_id.clone();
        async move { c.check(CheckRequest { pair_id }).await }
    })
    .await
}

type Client = OperatorServiceClient<tonic::transport::Channel>;

/// The largest answer read from a controller. tonic's default, 4 MB, is a
/// status of about 7 000 pairs (about 550 bytes each, more with long
/// histories): at 10 000 pairs `status` failed with "decoded message length
/// too large". 256 MB is a status of several hundred thousand pairs.
const MAX_ANSWER: usize = 256 << 20;

/// Call the leader: try the controllers in turn, follow redirects. A refusal
/// of the credentials ends it at once: every controller would refuse them.
pub async fn leader_call<T, F, Fut>(
    args: &Args,
    tls: Option<&ClientTls>,
    call: F,
) -> Result<T, CtlError>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut tried = Vec::new();
    let mut no_quorum = None;
    let mut queue: Vec<String> = args.controllers.clone();
    let mut hops = 0;
    while let Some(addr) = (!queue.is_empty()).then(|| queue.remove(0)) {
        let timeout = Duration::from_millis(args.timeout_ms);
        let ch = match channel(&addr, timeout, tls) {
            Ok(c) => c,
            Err(e) => {
                tried.push(format!("{addr}: {e}"));
                continue;
            }
        };
        let client = OperatorServiceClient::new(ch).max_decoding_message_size(MAX_ANSWER);
        match tokio::time::timeout(timeout, call(client)).await {
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(st)) => {
                if matches!(
                    st.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) {
                    return Err(CtlError::Unauthorized {
                        addr,
                        reason: st.message().to_owned(),
                    });
                }
                if let Some(reason) = understudy_tls::auth_failure(&st) {
                    return Err(CtlError::Unauthorized { addr, reason });
                }
                // TLS 1.3 tells a refused client only after its handshake:
                // the call may have seen a reset instead of the alert. Ask
                // the controller again with a bare handshake.
                let transport = matches!(
                    st.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                );
                if let (Some(t), true) = (tls, transport && understudy_tls::worth_diagnosing(&st)) {
                    if let Some(reason) =
                        understudy_tls::diagnose(&addr, t, timeout.min(Duration::from_secs(2)))
                            .await
                    {
                        return Err(CtlError::Unauthorized { addr, reason });
                    }
                }
                tried.push(format!("{addr}: {}", understudy_tls::error_chain(&st)));
                if let Some(leader) = understudy_controller::leadership::referral(&st) {
                    if hops < 3 {
                        hops += 1;
                        queue.insert(0, leader.to_owned());
                    }
                    continue;
                }
                use tonic::Code;
                let msg = st.message().to_string();
                match st.code() {
                    Code::FailedPrecondition if msg.starts_with("no leader is known") => {
                        no_quorum = Some(msg)
                    }
                    Code::Unavailable if !msg.is_empty() && !transport_only(&st) => {
                        no_quorum = Some(msg)
                    }
                    Code::FailedPrecondition => return Err(CtlError::Refused(msg)),
                    Code::NotFound => return Err(CtlError::NotFound(msg)),
                    Code::InvalidArgument => return Err(CtlError::Usage(msg)),
                    _ => {}
                }
            }
            Err(_) => tried.push(format!("{addr}: no answer within {timeout:?}")),
        }
    }
    if let Some(m) = no_quorum {
        Err(CtlError::NoQuorum(m))
    } else if args.insecure {
        Err(CtlError::NoControllerInsecure(tried.join("; ")))
    } else {
        Err(CtlError::NoController(tried.join("; ")))
    }
}

/// An `UNAVAILABLE` from the transport (connection refused, reset), not from
/// a controller that answered without a quorum.
fn transport_only(st: &tonic::Status) -> bool {
    use std::error::Error;
    st.source().is_some()
}

/// The first line of `status` when the controllers run without TLS.
const INSECURE_WARNING: &str = "WARNING: insecure mode: no TLS, any host that reaches the controllers can pose as an agent or operator";

fn certs(cmd: &CertsCmd) -> Result<(), CertsError> {
    match cmd {
        CertsCmd::Init { dir, days } => {
            let w = certs::init_ca(dir, *days)?;
            println!(
                "wrote {} (give it to every controller, agent and operator as the CA)",
                w.cert.display()
            );
            println!(
                "wrote {} (keep it secret, readable by you only: it can mint any identity)",
                w.key.display()
            );
        }
        CertsCmd::Issue(a) => {
            let leaf = if let Some(server_id) = &a.agent {
                Leaf::Agent {
                    server_id: server_id.clone(),
                }
            } else if let Some(node_id) = a.controller {
                Leaf::Controller {
                    node_id,
                    addrs: a.addr.clone(),
                }
            } else {
                Leaf::Operator {
                    name: a.operator.clone().unwrap_or_default(),
                    role: a.role.unwrap_or(Role::Viewer),
                }
            };
            let w = certs::issue(&a.dir, a.out.as_deref().unwrap_or(&a.dir), &leaf, a.days)?;
            println!(
                "wrote {} and {} ({})",
                w.cert.display(),
                w.key.display(),
                certs::uri(&leaf.caller()).unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "-".into())
}

fn print_table(s: &GetStatusResponse) {
    if let Some(c) = &s.cluster {
        if c.insecure {
            println!("{INSECURE_WARNING}");
        }
        println!(
            "controller leader: {} ({})  term {}  applied index {}  answered by {}",
            fmt_opt(c.leader_id, ""),
            c.leader_addr,
            c.term,
            c.last_applied_index,
            c.answered_by
        );
        for m in &c.members {
            println!(
                "  member {:>2} {:<22} {:<8} {}",
                m.id,
                m.addr,
                if m.leader {
                    "leader"
                } else if m.voter {
                    "voter"
                } else {
                    "learner"
                },
                fmt_opt(m.matched_index, "").replace('-', "")
            );
        }
    }
    for p in &s.pairs {
        println!();
        println!(
            "pair {}  state {}  epoch {}  resource {}  client ip {}  zone {}",
            p.id, p.state, p.epoch, p.resource, p.client_ip, p.zone
        );
        if !p.state_reason.is_empty() {
            println!("  reason: {}", p.state_reason);
        }
        println!(
            "  serving: {}   controller's view: {}",
            p.serving, p.decision
        );
        if let Some(f) = &p.failover {
            println!(
                "  failover epoch {} {} -> {} ({})",
                f.epoch,
                f.from,
                f.to,
                if f.automatic { "automatic" } else { "manual" }
            );
            for st in &f.steps {
                println!(
                    "    {:<8} {:<8} {:>8} {}",
                    st.step,
                    st.status,
                    fmt_opt(st.duration_ms, " ms"),
                    st.detail
                );
            }
        }
        println!(
            "  {:<12} {:<8} {:<6} {:<10} {:<12} {:<12} {:<12} {:<10} {:>7} {:>10} {:>9}",
            "SERVER",
            "ROLE",
            "AGENT",
            "DRBD-ROLE",
            "DISK",
            "CONNECTION",
            "REPLICATION",
            "PEER-DISK",
            "SYNC",
            "OOS",
            "REPORTED"
        );
        for sv in &p.servers {
            let d = sv.drbd.clone().unwrap_or_default();
            let sync = match d.done_percent {
                Some(p) => format!("{p:.1}%"),
                None if d.replication == "Established" && d.out_of_sync_bytes == Some(0) => {
                    "100%".into()
                }
                None => "-".into(),
            };
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            println!(
                "  {:<12} {:<8} {:<6} {:<10} {:<12} {:<12} {:<12} {:<10} {:>7} {:>10} {:>9}",
                sv.id,
                sv.configured_role,
                if sv.stale {
                    "STALE"
                } else if sv.connected {
                    "up"
                } else {
                    "down"
                },
                dash(&d.role),
                dash(&d.disk),
                dash(&d.connection),
                dash(&d.replication),
                dash(&d.peer_disk),
                sync,
                fmt_opt(d.out_of_sync_bytes, "B"),
                fmt_opt(sv.last_report_age_ms, "ms ago"),
            );
        }
        for sv in &p.servers {
            if let Some(n) = &sv.drbd_net {
                println!("  DRBD net of {}: {}", sv.id, drbd_net_line(n));
            }
        }
        for sv in p.servers.iter().filter(|sv| sv.stale) {
            println!(
                "  {}: nothing heard for {}: the DRBD columns above are its LAST report, not its current state",
                sv.id,
                fmt_opt(sv.silent_ms, "ms")
            );
        }
        if let Some(o) = &p.outdated {
            println!(
                "  OUTDATED: {} lost replication at {} ms (unix) while {} was alive at {} ms; not promoted automatically until in sync again ({})",
                o.server, o.lost_peer_unix_ms, p.serving, o.primary_alive_unix_ms, o.source
            );
        }
        if let Some(r) = &p.resync {
            println!(
                "  RESYNC: {} {} done, {} out of sync, {} KiB/s observed, ETA {}",
                r.server_id,
                fmt_opt(r.percent.map(|x| format!("{x:.1}")), "%"),
                fmt_opt(r.out_of_sync_bytes, " B"),
                fmt_opt(r.rate_kib_per_s.map(|x| format!("{x:.0}")), ""),
                fmt_opt(r.eta_ms.map(|x| format!("{:.1}", x as f64 / 1000.0)), " s"),
            );
        }
        if let Some(sp) = &p.spare {
            println!(
                "  SPARE: {} {} {} {} ({})",
                sp.server_id,
                sp.state,
                if sp.instance_id.is_empty() {
                    "-"
                } else {
                    &sp.instance_id
                },
                if sp.address.is_empty() {
                    "-"
                } else {
                    &sp.address
                },
                sp.reason
            );
        }
        if let Some(r) = &p.rebuild {
            println!("  REBUILD #{}: {} replaces {}", r.epoch, r.to, r.from);
            for st in &r.steps {
                println!(
                    "    {:<16} {:<8} {:>8}  {}",
                    st.step,
                    st.status,
                    fmt_opt(st.duration_ms, " ms"),
                    st.detail
                );
            }
        }
        for x in &p.retired {
            println!(
                "  REPLACED: {} (instance {}, {}) by {}; volumes {} kept until released",
                x.server_id,
                x.instance_id,
                if x.terminated {
                    "terminated"
                } else {
                    "to terminate once Healthy"
                },
                x.replaced_by,
                x.volumes.join(",")
            );
        }
        if !p.paused.is_empty() {
            println!(
                "  PAUSED: {}: no automatic action until `understudyctl resume {}`",
                p.paused, p.id
            );
        }
        if !p.maintenance.is_empty() {
            println!(
                "  MAINTENANCE {}: DRBD disconnects expected, no automatic failover",
                p.maintenance
            );
        }
        if !p.scheduled_switchover.is_empty() {
            println!("  SWITCHOVER SCHEDULED {}", p.scheduled_switchover);
        }
        if !p.signal.is_empty() {
            println!("  CLOUD SIGNAL: {}", p.signal);
        }
        if !p.provisioning_error.is_empty() {
            println!("  SPARE NOT LAUNCHED: {}", p.provisioning_error);
        }
        for f in &p.findings {
            println!("  {}", finding_line(f));
        }
        for a in &p.alerts {
            println!("  ALERT: {a}");
        }
    }
}

fn finding_line(f: &Finding) -> String {
    format!(
        "{}: {}: {} (fix: {})",
        f.severity.to_uppercase(),
        f.subject,
        f.problem,
        f.fix
    )
}

/// `ping-int 10 s, ping-timeout 0.5 s, connect-int 10 s, timeout 6 s, protocol
/// C, fencing dont-care`, or why the agent could not read them.
fn drbd_net_line(n: &understudy_proto::DrbdNetOptions) -> String {
    if !n.error.is_empty() {
        return format!("unknown ({})", n.error);
    }
    let secs = |ms: Option<u64>| {
        ms.map(|m| format!("{} s", m as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let word = |w: &str| {
        if w.is_empty() {
            "-".to_string()
        } else {
            w.to_string()
        }
    };
    format!(
        "ping-int {}, ping-timeout {}, connect-int {}, timeout {}, protocol {}, fencing {}",
        secs(n.ping_int_ms),
        secs(n.ping_timeout_ms),
        secs(n.connect_int_ms),
        secs(n.timeout_ms),
        word(&n.protocol),
        word(&n.fencing)
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Cmd::Certs { cmd } = &args.cmd {
        return match certs(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("understudyctl: {e}");
                ExitCode::from(match e {
                    CertsError::BadName(_) | CertsError::BadAddr(_) => 2,
                    _ => 1,
                })
            }
        };
    }
    let tls = match client_tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("understudyctl: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match &args.cmd {
        Cmd::Certs { .. } => unreachable!("handled above"),
        Cmd::Status => match rt.block_on(get_status(&args, tls.as_ref())) {
            Ok(s) => {
                if args.output == Output::Json && s.cluster.as_ref().is_some_and(|c| c.insecure) {
                    eprintln!("{INSECURE_WARNING}");
                }
                match args.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&status_json(&s)).expect("json")
                    ),
                    Output::Table => print_table(&s),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("understudyctl: {e}");
                e.exit_code()
            }
        },
        Cmd::Check { pair } => match rt.block_on(check(&args, tls.as_ref(), pair)) {
            Ok(r) => {
                match args.output {
                    Output::Json => {
                        let v = serde_json::json!({
                            "pairs": r.pairs.iter().map(|p| serde_json::json!({
                                "pair_id": p.pair_id,
                                "findings": p.findings.iter().map(finding_json).collect::<Vec<_>>(),
                            })).collect::<Vec<_>>(),
                        });
                        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                    }
                    Output::Table => {
                        for p in &r.pairs {
                            if p.findings.is_empty() {
                                println!("pair {}: no findings", p.pair_id);
                            } else {
                                println!("pair {}: {} finding(s)", p.pair_id, p.findings.len());
                            }
                            for f in &p.findings {
                                println!("  {}", finding_line(f));
                            }
                        }
                    }
                }
                let errors = r
                    .pairs
                    .iter()
                    .flat_map(|p| p.findings.iter())
                    .any(|f| f.severity == "error");
                if errors {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("understudyctl: {e}");
                e.exit_code()
            }
        },
        Cmd::History { pair } => done(rt.block_on(ops::history(&args, tls.as_ref(), pair.clone()))),
        Cmd::Explain { pair } => done(rt.block_on(ops::explain(&args, tls.as_ref(), pair.clone()))),
        Cmd::Watch { pair } => done(rt.block_on(ops::watch(&args, tls.as_ref(), pair.clone()))),
        cmd => {
            let changes = match changes(cmd) {
                Ok(c) => c,
                Err(e) => return done(Err(e)),
            };
            let pairs = match rt.block_on(targets(&args, tls.as_ref(), cmd)) {
                Ok(p) => p,
                Err(e) => return done(Err(e)),
            };
            let mut last = Ok(());
            for pair in pairs {
                let r = rt.block_on(ops::change(&args, tls.as_ref(), &pair, changes()));
                match &r {
                    Ok(resp) => match args.output {
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({
                                "pair": pair, "outcome": resp.outcome,
                                "epoch": resp.epoch, "state": resp.state,
                            })
                        ),
                        Output::Table => println!(
                            "pair {pair}: {} (state {}, epoch {})",
                            resp.outcome, resp.state, resp.epoch
                        ),
                    },
                    Err(e) => {
                        if args.output == Output::Json {
                            println!(
                                "{}",
                                serde_json::json!({"pair": pair, "error": e.to_string()})
                            );
                        }
                        eprintln!("understudyctl: pair {pair}: {e}");
                    }
                }
                if let Err(e) = r {
                    last = Err(e);
                }
            }
            done_quiet(last)
        }
    }
}

fn done(r: Result<(), CtlError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("understudyctl: {e}");
            e.exit_code()
        }
    }
}

fn done_quiet(r: Result<(), CtlError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit_code(),
    }
}

/// The change a subcommand asks for (a maker: one per pair).
fn changes(cmd: &Cmd) -> Result<Box<dyn Fn() -> ops::Change>, CtlError> {
    Ok(match cmd {
        Cmd::Pause { .. } => Box::new(|| ops::Change::Pause),
        Cmd::Resume { .. } => Box::new(|| ops::Change::Resume),
        Cmd::Ack { .. } => Box::new(|| ops::Change::Ack),
        Cmd::Unblock { reason, .. } => {
            let reason = reason.clone();
            Box::new(move || ops::Change::Unblock {
                reason: reason.clone(),
            })
        }
        Cmd::Maintenance { end: true, .. } => Box::new(|| ops::Change::EndMaintenance),
        Cmd::Maintenance {
            duration, reason, ..
        } => {
            let d = ops::parse_duration(duration.as_deref().unwrap_or_default())
                .map_err(CtlError::Usage)?;
            let reason = reason.clone().unwrap_or_default();
            Box::new(move || ops::Change::Maintenance {
                duration: d,
                reason: reason.clone(),
            })
        }
        Cmd::Promote {
            to,
            force,
            accept_data_loss,
            ..
        } => {
            let (to, force, accept) = (to.clone(), *force, *accept_data_loss);
            Box::new(move || ops::Change::Promote {
                to: to.clone(),
                force,
                accept_data_loss: accept,
            })
        }
        Cmd::Switchover { cancel: true, .. } => Box::new(|| ops::Change::CancelSwitchover),
        Cmd::Switchover { to, at, .. } => {
            let (to, at) = (to.clone(), at.clone());
            Box::new(move || ops::Change::Switchover {
                to: to.clone(),
                at: at.clone(),
            })
        }
        _ => return Err(CtlError::Usage("not a command that changes a pair".into())),
    })
}

/// The pairs a subcommand applies to (`pause`/`resume` without PAIR: all).
async fn targets(args: &Args, tls: Option<&ClientTls>, cmd: &Cmd) -> Result<Vec<String>, CtlError> {
    let one = match cmd {
        Cmd::Pause { pair } | Cmd::Resume { pair } => pair.clone(),
        Cmd::Switchover { pair, .. }
        | Cmd::Promote { pair, .. }
        | Cmd::Maintenance { pair, .. }
        | Cmd::Ack { pair }
        | Cmd::Unblock { pair, .. } => Some(pair.clone()),
        _ => None,
    };
    match one {
        Some(p) => Ok(vec![p]),
        None => {
            let s = get_status(args, tls).await?;
            let resume = matches!(cmd, Cmd::Resume { .. });
            Ok(s.pairs
                .iter()
                .filter(|p| !resume || p.state == "Paused")
                .map(|p| p.id.clone())
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_proto::{DrbdNetOptions, HostStatus, PairStatus, SelfCheck, ServerStatus};

    #[test]
    fn json_carries_net_options_and_self_checks() {
        let sv = ServerStatus {
            id: "fs1-a".into(),
            drbd_net: Some(DrbdNetOptions {
                ping_int_ms: Some(10_000),
                ping_timeout_ms: Some(500),
                connect_int_ms: Some(10_000),
                timeout_ms: Some(6_000),
                protocol: "C".into(),
                fencing: "dont-care".into(),
                error: String::new(),
            }),
            host: Some(HostStatus {
                self_check_at_unix_ms: 1_700_000_000_000,
                self_checks: vec![SelfCheck {
                    name: "drbdadm".into(),
                    ok: false,
                    detail: "/usr/sbin/drbdadm is not executable (mode 600)".into(),
                    severity: "error".into(),
                    fix: "chmod 755 /usr/sbin/drbdadm".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = status_json(&GetStatusResponse {
            cluster: None,
            pairs: vec![PairStatus {
                id: "fs1".into(),
                servers: vec![sv.clone()],
                ..Default::default()
            }],
        });
        let s = &v["pairs"][0]["servers"][0];
        assert_eq!(s["drbd_net"]["ping_int_ms"], 10_000);
        assert_eq!(s["drbd_net"]["ping_timeout_ms"], 500);
        assert_eq!(s["drbd_net"]["fencing"], "dont-care");
        assert_eq!(s["host"]["self_check_at_unix_ms"], 1_700_000_000_000i64);
        let c = &s["host"]["self_checks"][0];
        assert_eq!(c["severity"], "error");
        assert_eq!(c["fix"], "chmod 755 /usr/sbin/drbdadm");
        assert_eq!(
            drbd_net_line(sv.drbd_net.as_ref().unwrap()),
            "ping-int 10 s, ping-timeout 0.5 s, connect-int 10 s, timeout 6 s, protocol C, fencing dont-care"
        );
        let failed = DrbdNetOptions {
            error: "`drbdsetup show r0 --show-defaults` failed (exit 20): usage".into(),
            ..Default::default()
        };
        assert!(drbd_net_line(&failed).starts_with("unknown (`drbdsetup show"));
        assert!(
            understudy_controller::status_json::server_json(&ServerStatus::default())["drbd_net"]
                .is_null()
        );
    }
}
