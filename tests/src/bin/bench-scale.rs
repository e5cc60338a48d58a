//! Benchmark: the controller at scale, through the real interfaces.
//!
//! Starts a real 3-node controller cluster on loopback (mutual TLS, one agent
//! certificate per server) whose inventory holds `--pairs` pairs, then simulates
//! their 2 × pairs agents from this process: each opens its own TLS connection
//! and `AgentService.Session` stream (following redirects to the leader), says
//! hello (with the agent's default stall bound, 5 heartbeats), heartbeats as the agent
//! does (the interval the controller asks for, counted from its last message
//! of any kind), sends a full report `--rate` times a second, and answers
//! commands. Churn: every second,
//! `--churn` × pairs backups start a resync (SyncTarget, out-of-sync bytes
//! falling over three reports, then UpToDate again), so the pair goes
//! `Healthy -> Rebuilding -> Healthy` through Raft.
//!
//! Measured over `--duration` seconds of that load, in one run:
//! - the leader's CPU (user + system seconds per second, from /proc/PID/stat)
//!   and resident memory (VmRSS), and this process's own CPU apart;
//! - report-to-applied latency: from the report that makes a pair change state
//!   until the change is seen committed on the leader's `Watch` stream (p50/p99);
//! - Raft commits per second (the leader's applied index over the window);
//! - detection: a pair's primary goes silent (stream open, nothing sent, no
//!   probe answered) and its backup loses the DRBD peer; the time until the
//!   pair is `Suspect` and until its failover starts (`FailingOver`), under the
//!   load and, first, on an idle cluster of the same build (one pair);
//! - the latency of the other pairs' changes in the 5 s after each failover starts.
//!
//! Usage: `cargo run --release -p understudy-tests --bin bench-scale -- --pairs 2000
//! --rate 1 --churn 0.01 --duration 60` (build the workspace binaries first:
//! `cargo build --release --workspace --bins`). `BENCH_HEAPTRACK=DIR` runs every
//! controller under heaptrack (its files in DIR; `heaptrack_print` reads them).
//!
//! One process may hold only so many connections (its open files limit:
//! 20 000 on this machine, and not raisable without `CAP_SYS_RESOURCE`): past
//! that, the agents of the later pairs run in worker processes of this binary
//! (`--worker`, started and stopped by the bench), which report their
//! counters and the changes they cause on their stdout; the generator's CPU
//! is theirs and this process's together. `BENCH_AGENTS_PER_PROCESS=N` sets the
//! split, to try it at a small size.
//!
//! Operator commands: after the window, `--commands` switchovers (each of a
//! pair kept out of the churn), timed from the RPC sent to its answer and to
//! the plan's first step seen committed as started.

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use understudy_agent::redial::Redial;
use understudy_controller::auth::Role;
use understudy_controller::certs::{Leaf, Written};
use understudy_proto::agent_message::Msg;
use understudy_proto::agent_service_client::AgentServiceClient;
use understudy_proto::controller_message::Msg as Out;
use understudy_proto::operator_service_client::OperatorServiceClient;
use understudy_proto::{
    AgentMessage, CommandResult, DrbdResource, DrbdStatus, DrbdSummary, GetStatusRequest,
    GetStatusResponse, Heartbeat, Hello, Report, ServerRole, WatchRequest,
};
use understudy_tests::{bin, free_port, free_udp_port, spawn_controller, Creds, Pki, Proc};
use understudy_tls::ClientTls;

const RESOURCE: &str = "r0";

#[derive(Debug, Clone)]
struct Args {
    pairs: usize,
    rate: f64,
    churn: f64,
    duration: u64,
    kills: usize,
    /// Operator switchovers timed to their first step committed (under load).
    commands: usize,
    idle_baseline: bool,
    /// `perf record` the leader during the measured window into this file.
    profile: Option<PathBuf>,
    /// Keep the cluster's directory (configurations, logs) after the run.
    keep: bool,
    /// The controllers' `[timing] agent_heartbeat_ms` (default 200), with the
    /// detector's bounds scaled to it.
    heartbeat_ms: u64,
    /// The generator's nice value (its threads and workers; the controllers
    /// run at 0).
    nice: i32,
    /// Run as a worker of another bench-scale: the agents of pairs
    /// `first..first + count` (see [`worker`]).
    worker: Option<Worker>,
}

/// What a worker process is given by the bench that starts it.
#[derive(Debug, Clone)]
struct Worker {
    first: usize,
    count: usize,
    addrs: Vec<String>,
    pki: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-scale [--pairs N] [--rate REPORTS_PER_S] [--churn FRACTION_PER_S] [--duration S] [--kills K] [--commands C] [--heartbeat-ms MS] [--generator-nice N] [--no-idle] [--profile PERF_DATA] [--keep]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        pairs: 100,
        rate: 1.0,
        churn: 0.01,
        duration: 30,
        kills: 3,
        commands: 20,
        idle_baseline: true,
        profile: None,
        keep: false,
        heartbeat_ms: 200,
        nice: 10,
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--pairs" => a.pairs = val().parse().unwrap_or_else(|_| usage()),
            "--rate" => a.rate = val().parse().unwrap_or_else(|_| usage()),
            "--churn" => a.churn = val().parse().unwrap_or_else(|_| usage()),
            "--duration" => a.duration = val().parse().unwrap_or_else(|_| usage()),
            "--kills" => a.kills = val().parse().unwrap_or_else(|_| usage()),
            "--commands" => a.commands = val().parse().unwrap_or_else(|_| usage()),
            "--no-idle" => a.idle_baseline = false,
            "--profile" => a.profile = Some(val().into()),
            "--keep" => a.keep = true,
            "--heartbeat-ms" => a.heartbeat_ms = val().parse().unwrap_or_else(|_| usage()),
            "--generator-nice" => a.nice = val().parse().unwrap_or_else(|_| usage()),
            // Internal: how the bench starts its workers.
            "--worker" => {
                let (first, count) = (val(), val());
                a.worker = Some(Worker {
                    first: first.parse().unwrap_or_else(|_| usage()),
                    count: count.parse().unwrap_or_else(|_| usage()),
                    addrs: val().split(',').map(String::from).collect(),
                    pki: val().into(),
                });
            }
            _ => usage(),
        }
    }
    if a.worker.is_some() {
        return a;
    }
    if a.pairs < a.kills + a.commands + 1 || a.rate <= 0.0 || a.heartbeat_ms < 50 {
        usage()
    }
    a
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn pair_id(i: usize) -> String {
    format!("p{i:05}")
}

fn server_id(i: usize, backup: bool) -> String {
    format!("p{i:05}-{}", if backup { 'b' } else { 'a' })
}

/// What the simulated DRBD of one pair shows, driven by the churn and the kills.
#[derive(Default)]
struct PairSim {
    /// Reports left in the backup's current resync (0: in sync).
    resync_left: AtomicU64,
    /// The primary went silent (killed): nothing more from it.
    primary_dead: AtomicBool,
}

/// A change the bench made and expects to see committed.
struct Pending {
    since: Instant,
    want: &'static str,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<String, Pending>>,
    /// (when it was seen, latency) of every change seen committed.
    latencies: Mutex<Vec<(Instant, Duration)>>,
    /// Pair -> (state, when seen) for every state the watch saw.
    seen: Mutex<HashMap<String, Vec<(String, Instant)>>>,
    /// Pair -> when the watch first saw a plan step start ("step X started").
    step_started: Mutex<HashMap<String, Instant>>,
    welcomed: AtomicUsize,
    /// Sessions opened through a follower (relayed to the leader).
    relayed: AtomicUsize,
    /// Handoffs from the leader to a follower.
    handoffs: AtomicUsize,
    reports: AtomicU64,
    heartbeats: AtomicU64,
    /// Heartbeat acknowledgements received.
    acks: AtomicU64,
    commands: AtomicU64,
    /// Stop every agent (end of the run).
    stop: AtomicBool,
    /// This process is a worker: the changes it expects go to its stdout,
    /// for the bench that watches them.
    worker: bool,
}

impl Shared {
    /// The counters a worker reports to its bench, in [`Shared::add_counts`]'s
    /// order.
    fn counts(&self) -> [u64; 7] {
        let l = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        let q = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            l(&self.welcomed),
            l(&self.relayed),
            l(&self.handoffs),
            q(&self.reports),
            q(&self.heartbeats),
            q(&self.acks),
            q(&self.commands),
        ]
    }

    /// Add a worker's counts since its last report ([`Shared::counts`]).
    fn add_counts(&self, d: [u64; 7]) {
        self.welcomed.fetch_add(d[0] as usize, Ordering::Relaxed);
        self.relayed.fetch_add(d[1] as usize, Ordering::Relaxed);
        self.handoffs.fetch_add(d[2] as usize, Ordering::Relaxed);
        self.reports.fetch_add(d[3], Ordering::Relaxed);
        self.heartbeats.fetch_add(d[4], Ordering::Relaxed);
        self.acks.fetch_add(d[5], Ordering::Relaxed);
        self.commands.fetch_add(d[6], Ordering::Relaxed);
    }
}

fn summary(role: &str, disk: &str, conn: &str, repl: &str, oos: u64) -> DrbdSummary {
    DrbdSummary {
        role: role.into(),
        disk: disk.into(),
        peer_role: if role == "Primary" {
            "Secondary".into()
        } else {
            "Primary".into()
        },
        connection: conn.into(),
        replication: repl.into(),
        peer_disk: "UpToDate".into(),
        done_percent: (oos > 0).then_some(100.0 - (oos as f64 / 1e7)),
        eta_seconds: None,
        out_of_sync_bytes: Some(oos),
        quorum: Some(true),
    }
}

fn report(seq: u64, sum: DrbdSummary) -> Report {
    Report {
        seq,
        observed_at_unix_ms: now_ms(),
        drbd: Some(DrbdStatus {
            observer_running: true,
            resources: vec![DrbdResource {
                name: RESOURCE.into(),
                role: sum.role.clone(),
                last_connected: (sum.connection == "Connected").then(|| sum.clone()),
                summary: Some(sum),
                ..Default::default()
            }],
            ..Default::default()
        }),
        host: None,
    }
}

/// One simulated agent: connects (following redirects), reports and heartbeats
/// until the bench stops, re-dialling when the stream breaks.
#[allow(clippy::too_many_arguments)]
async fn agent(
    i: usize,
    backup: bool,
    addrs: Arc<Vec<String>>,
    tls: ClientTls,
    rate: f64,
    sim: Arc<PairSim>,
    shared: Arc<Shared>,
    dial: Arc<Semaphore>,
    stall_ms: u64,
) {
    let id = server_id(i, backup);
    let mut addr = addrs[i % addrs.len()].clone();
    let mut seq = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    // Spread the reports of all agents over the period.
    let phase = period.mul_f64(((i * 2 + backup as usize) % 997) as f64 / 997.0);
    // The agent's own re-dial policy (jittered, growing after failures).
    let mut redial = Redial::new();
    // Pause before the next dial, if the last session ended badly.
    let mut pause = Duration::ZERO;
    // The leader that handed this agent to a follower, until it is served;
    // until when the agent declines handoffs (agent/src/session.rs).
    let mut handed: Option<String> = None;
    let mut no_handoff_until = Instant::now();
    // The agent's keepalive for its stall bound.
    let (ping_every, ping_timeout) =
        understudy_agent::session::keepalive(Duration::from_millis(stall_ms));
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(std::mem::take(&mut pause)).await;
        let permit = dial.acquire().await.expect("semaphore");
        let ch = match understudy_tls::endpoint(&addr, Some(&tls)) {
            Ok(e) => {
                e.connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(ping_every)
                    .keep_alive_timeout(ping_timeout)
                    .keep_alive_while_idle(true)
                    .connect()
                    .await
            }
            Err(e) => panic!("endpoint {addr}: {e}"),
        };
        let ch = match ch {
            Ok(c) => c,
            Err(_) => {
                drop(permit);
                pause = redial.after_failure();
                addr = addrs[(i + seq as usize) % addrs.len()].clone();
                seq += 1;
                continue;
            }
        };
        let (tx, rx) = mpsc::channel::<AgentMessage>(16);
        let _ = tx
            .send(AgentMessage {
                msg: Some(Msg::Hello(Hello {
                    server_id: id.clone(),
                    pair_id: pair_id(i),
                    role: if backup {
                        ServerRole::Backup
                    } else {
                        ServerRole::Primary
                    } as i32,
                    agent_version: "bench-scale".into(),
                    highest_epoch: 0,
                    stall_ms,
                    handoff_ok: Instant::now() >= no_handoff_until,
                })),
            })
            .await;
        let resp = AgentServiceClient::new(ch)
            .max_decoding_message_size(16 << 20)
            .session(ReceiverStream::new(rx))
            .await;
        drop(permit);
        let mut inbound = match resp {
            Ok(r) => r.into_inner(),
            Err(_) => {
                pause = redial.after_failure();
                continue;
            }
        };
        let heartbeat = match inbound.message().await {
            Ok(Some(m)) => match m.msg {
                Some(Out::Welcome(w)) => {
                    handed = None;
                    if w.relayed_by != 0 {
                        shared.relayed.fetch_add(1, Ordering::Relaxed);
                    }
                    Duration::from_millis(w.heartbeat_interval_ms.max(10))
                }
                // As the agent does: the leader hands it to a follower.
                Some(Out::Redirect(r)) if !r.via_addr.is_empty() => {
                    redial.answered();
                    shared.handoffs.fetch_add(1, Ordering::Relaxed);
                    handed = Some(r.leader_addr);
                    addr = r.via_addr;
                    continue;
                }
                Some(Out::Redirect(r)) => {
                    redial.answered();
                    // The follower it was handed to did not relay: back to
                    // the leader, no handoff for a while.
                    if let (Some(leader), 0) = (handed.take(), r.relayed_by) {
                        no_handoff_until = Instant::now() + Duration::from_secs(60);
                        addr = leader;
                        continue;
                    }
                    if !r.leader_addr.is_empty() {
                        addr = r.leader_addr;
                    } else {
                        pause = redial.awaiting_leader();
                    }
                    continue;
                }
                _ => {
                    pause = redial.after_failure();
                    continue;
                }
            },
            _ => {
                pause = redial.after_failure();
                continue;
            }
        };
        shared.welcomed.fetch_add(1, Ordering::Relaxed);
        redial.answered();
        let mut hb = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut rep = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first report at once: the controller needs it to decide anything.
        let mut first = true;
        let mut peer_lost_sent = false;
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let dead = sim.primary_dead.load(Ordering::Relaxed);
            if dead && !backup {
                // Silent: keep the stream open, send nothing, answer nothing.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let send_report = first || (dead && backup && !peer_lost_sent);
            let msg = if send_report {
                None
            } else {
                tokio::select! {
                    _ = hb.tick() => {
                        seq += 1;
                        shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                        Some(Msg::Heartbeat(Heartbeat { seq, sent_at_unix_ms: now_ms() }))
                    }
                    _ = rep.tick() => None,
                    m = inbound.message() => match m {
                        Ok(Some(m)) => match m.msg {
                            Some(Out::Command(c)) => {
                                shared.commands.fetch_add(1, Ordering::Relaxed);
                                Some(Msg::CommandResult(CommandResult {
                                    command_id: c.command_id,
                                    ok: true,
                                    error: String::new(),
                                    duration_ms: 1,
                                    detail: "bench-scale: done".into(),
                                }))
                            }
                            Some(Out::Redirect(r)) => {
                                if !r.leader_addr.is_empty() {
                                    addr = r.leader_addr;
                                } else {
                                    pause = redial.awaiting_leader();
                                }
                                break;
                            }
                            Some(Out::HeartbeatAck(_)) => {
                                shared.acks.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            _ => continue,
                        },
                        _ => {
                            pause = redial.after_failure();
                            break;
                        }
                    }
                }
            };
            let msg = match msg {
                Some(m) => m,
                None => {
                    first = false;
                    seq += 1;
                    shared.reports.fetch_add(1, Ordering::Relaxed);
                    let sum = if !backup {
                        summary("Primary", "UpToDate", "Connected", "Established", 0)
                    } else if dead {
                        peer_lost_sent = true;
                        summary("Secondary", "UpToDate", "Connecting", "Off", 0)
                    } else {
                        let left = sim.resync_left.load(Ordering::Relaxed);
                        if left > 0 {
                            sim.resync_left.store(left - 1, Ordering::Relaxed);
                            if left == 4 {
                                expect(&shared, i, "Rebuilding");
                            } else if left == 1 {
                                expect(&shared, i, "Healthy");
                            }
                        }
                        // 4, 3, 2: SyncTarget with falling out-of-sync; 1: in sync.
                        if left > 1 {
                            summary(
                                "Secondary",
                                "Inconsistent",
                                "Connected",
                                "SyncTarget",
                                (left - 1) * 64 << 20,
                            )
                        } else {
                            summary("Secondary", "UpToDate", "Connected", "Established", 0)
                        }
                    };
                    Msg::Report(report(seq, sum))
                }
            };
            // As the agent does: a heartbeat is due a full interval after the
            // last message of any kind (a report is a sign of life too).
            let beat = matches!(msg, Msg::Heartbeat(_));
            if tx.send(AgentMessage { msg: Some(msg) }).await.is_err() {
                pause = redial.after_failure();
                break;
            }
            if !beat {
                hb.reset();
            }
        }
    }
}

fn expect(shared: &Shared, i: usize, want: &'static str) {
    if shared.worker {
        println!("expect {} {want} {}", pair_id(i), now_ms());
        return;
    }
    shared.pending.lock().unwrap().insert(
        pair_id(i),
        Pending {
            since: Instant::now(),
            want,
        },
    );
}

/// Follow the leader's `Watch` stream: every committed state change the bench
/// caused is a latency sample; every state seen is recorded for detection.
async fn watch(addrs: Arc<Vec<String>>, tls: ClientTls, shared: Arc<Shared>) {
    let mut k = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let addr = &addrs[k % addrs.len()];
        k += 1;
        let Ok(ch) =
            understudy_controller::raft::network::channel(addr, Duration::from_secs(2), Some(&tls))
        else {
            continue;
        };
        let mut c = OperatorServiceClient::new(ch).max_decoding_message_size(256 << 20);
        let Ok(r) = c
            .watch(WatchRequest {
                pair_id: String::new(),
            })
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut s = r.into_inner();
        while let Ok(Some(ev)) = s.message().await {
            let at = Instant::now();
            if ev.event.starts_with("step ") && ev.event.contains(" started") {
                shared
                    .step_started
                    .lock()
                    .unwrap()
                    .entry(ev.pair_id.clone())
                    .or_insert(at);
            }
            shared
                .seen
                .lock()
                .unwrap()
                .entry(ev.pair_id.clone())
                .or_default()
                .push((ev.state.clone(), at));
            let mut p = shared.pending.lock().unwrap();
            if let Some(want) = p.get(&ev.pair_id) {
                if want.want == ev.state {
                    let d = at - want.since;
                    p.remove(&ev.pair_id);
                    drop(p);
                    shared.latencies.lock().unwrap().push((at, d));
                }
            }
        }
    }
}

async fn status(addrs: &[String], tls: &ClientTls) -> Option<GetStatusResponse> {
    for addr in addrs {
        // The status of 10 000 pairs is about 5 MB from a busy leader: a
        // keepalive as long as the call's own bound, not Raft's 2 s.
        let Ok(ch) = understudy_controller::raft::network::channel_with_keepalive(
            addr,
            Duration::from_secs(2),
            Some(tls),
            Duration::from_secs(20),
        ) else {
            continue;
        };
        let mut c = OperatorServiceClient::new(ch).max_decoding_message_size(1 << 30);
        match tokio::time::timeout(Duration::from_secs(20), c.get_status(GetStatusRequest {})).await
        {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.cluster.as_ref().is_some_and(|c| c.leader_id.is_some()) {
                    return Some(r);
                }
            }
            Ok(Err(e)) => eprintln!("status from {addr}: {e}"),
            Err(_) => eprintln!("status from {addr}: no answer within 20 s"),
        }
    }
    None
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tick
}

fn rss_mb(pid: i32) -> f64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn pct(v: &mut [Duration], p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{} ms", d.as_millis()))
        .unwrap_or_else(|| "-".into())
}

fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max.max(1 << 20);
        r.rlim_max = r.rlim_cur;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// A running cluster and its simulated agents.
struct Run {
    /// The cluster's directory; `None` once kept (`--keep`: also on a panic).
    _dir: Option<tempfile::TempDir>,
    procs: Vec<Proc>,
    addrs: Arc<Vec<String>>,
    admin: ClientTls,
    /// The simulated DRBD of the pairs whose agents this process runs (the
    /// first ones; the others' are in the workers).
    sims: Vec<Arc<PairSim>>,
    shared: Arc<Shared>,
    workers: Vec<WorkerProc>,
    /// The leader's address as last seen: commands go there first (a
    /// follower refers them on), not after a 5 MB status at 10 000 pairs.
    known_leader: Mutex<Option<String>>,
}

/// A worker process of the bench: the agents of some of the pairs, in a
/// process of their own because one process may hold only so many
/// connections (`RLIMIT_NOFILE`, 20 000 here and not raisable without
/// `CAP_SYS_RESOURCE`), and 10 000 pairs are 20 000 agent connections.
/// Killed when dropped, and it exits by itself when its stdin closes.
struct WorkerProc {
    child: std::process::Child,
}

impl WorkerProc {
    fn spawn(
        root: &std::path::Path,
        k: usize,
        first: usize,
        count: usize,
        addrs: &[String],
        args: &Args,
        shared: Arc<Shared>,
    ) -> WorkerProc {
        use std::io::BufRead;
        let log = fs::File::create(root.join(format!("worker-{k}.log"))).expect("worker log");
        let mut child = std::process::Command::new(std::env::current_exe().expect("current_exe"))
            .arg("--worker")
            .arg(first.to_string())
            .arg(count.to_string())
            .arg(addrs.join(","))
            .arg(root.join("pki"))
            .args(["--rate", &args.rate.to_string()])
            .args(["--churn", &args.churn.to_string()])
            .args(["--heartbeat-ms", &args.heartbeat_ms.to_string()])
            .args(["--generator-nice", &args.nice.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start a bench-scale worker");
        let out = child.stdout.take().expect("worker stdout");
        // Its lines: the changes its agents caused (latency samples, as
        // `expect` here), and its counters, added to this process's.
        std::thread::spawn(move || {
            let mut last = [0u64; 7];
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let f: Vec<&str> = line.split_whitespace().collect();
                match f.as_slice() {
                    ["expect", pair, want, at] => {
                        let want = match *want {
                            "Rebuilding" => "Rebuilding",
                            "Healthy" => "Healthy",
                            _ => continue,
                        };
                        let ago = now_ms() - at.parse::<i64>().unwrap_or_else(|_| now_ms());
                        let since = Instant::now()
                            .checked_sub(Duration::from_millis(ago.max(0) as u64))
                            .unwrap_or_else(Instant::now);
                        shared
                            .pending
                            .lock()
                            .unwrap()
                            .insert(pair.to_string(), Pending { since, want });
                    }
                    ["counts", rest @ ..] if rest.len() == last.len() => {
                        let mut now = [0u64; 7];
                        for (n, v) in now.iter_mut().zip(rest) {
                            *n = v.parse().unwrap_or(0);
                        }
                        shared.add_counts(std::array::from_fn(|k| now[k].saturating_sub(last[k])));
                        last = now;
                    }
                    _ => {}
                }
            }
        });
        WorkerProc { child }
    }

    /// Tell the worker to start its pairs' churn.
    fn churn(&mut self) {
        use std::io::Write;
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "churn");
            let _ = stdin.flush();
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many agent connections one process of the bench may hold: its open
/// files limit, less room for everything else it opens
/// (`BENCH_AGENTS_PER_PROCESS` sets it, to try the workers at a small size).
fn agents_per_process() -> usize {
    if let Some(n) = std::env::var("BENCH_AGENTS_PER_PROCESS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) into a local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (r.rlim_cur as usize).saturating_sub(1024).max(1024)
}

/// A worker: the agents of pairs `first..first + count`, against the cluster
/// its bench started; counters every second and expected changes on stdout;
/// the churn once its stdin says so; gone when its stdin closes.
async fn worker(w: Worker, args: Args) {
    let shared = Arc::new(Shared {
        worker: true,
        ..Default::default()
    });
    let pki = Pki { dir: w.pki.clone() };
    let sims = spawn_agents(
        w.first..w.first + w.count,
        &pki,
        &Arc::new(w.addrs.clone()),
        &args,
        &shared,
    );
    let (tx, mut rx) = mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let _ = tx.blocking_send(line);
        }
        // The bench is gone: so is this worker.
        std::process::exit(0);
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let c = shared.counts().map(|v| v.to_string());
                println!("counts {}", c.join(" "));
            }
            line = rx.recv() => match line.as_deref() {
                Some("churn") => churn_task(sims.clone(), args.churn, 0, shared.clone()),
                Some(_) => {}
                None => std::process::exit(0),
            }
        }
    }
}

/// Start the agents of `pairs` (both of each), with the certificates issued
/// into `pki`, as [`agent`] simulates them; the pairs' simulated DRBD, in order.
fn spawn_agents(
    pairs: std::ops::Range<usize>,
    pki: &Pki,
    addrs: &Arc<Vec<String>>,
    args: &Args,
    shared: &Arc<Shared>,
) -> Vec<Arc<PairSim>> {
    let dial = Arc::new(Semaphore::new(64));
    pairs
        .map(|i| {
            let sim: Arc<PairSim> = Arc::default();
            for backup in [false, true] {
                let w = Written::at(
                    &pki.dir,
                    &Leaf::Agent {
                        server_id: server_id(i, backup),
                    },
                );
                let tls = ClientTls::load(&pki.ca(), Some((&w.cert, &w.key))).expect("agent TLS");
                tokio::spawn(agent(
                    i,
                    backup,
                    addrs.clone(),
                    tls,
                    args.rate,
                    sim.clone(),
                    shared.clone(),
                    dial.clone(),
                    // The agent's default bound is 5 heartbeats (1 s at 200 ms).
                    5 * args.heartbeat_ms,
                ));
            }
            sim
        })
        .collect()
}

impl Run {
    async fn start(pairs: usize, args: &Args, keep: bool) -> Run {
        let heartbeat_ms = args.heartbeat_ms;
        let dir = tempfile::Builder::new()
            .prefix("understudy-bench-scale-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        let dir = if keep {
            eprintln!("keeping {}", dir.keep().display());
            None
        } else {
            Some(dir)
        };
        let pki = Pki::new(&root.join("pki"));
        let addrs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let members = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        // Nobody answers this UDP port: a silent primary answers no probe.
        let probe = free_udp_port();
        let mut inventory = String::new();
        for i in 0..pairs {
            inventory.push_str(&format!(
                "\n[[pairs]]\nid = \"{p}\"\nresource = \"{RESOURCE}\"\nclient_ip = \"198.18.{hi}.{lo}\"\nzone = \"zone-a\"\nprimary = {{ id = \"{a}\", address = \"127.0.0.1\", zone = \"zone-a\", probe_port = {probe} }}\nbackup = {{ id = \"{b}\", address = \"127.0.0.1\", zone = \"zone-a\", probe_port = {probe} }}\n",
                p = pair_id(i),
                hi = i / 250,
                lo = i % 250 + 1,
                a = server_id(i, false),
                b = server_id(i, true),
            ));
        }
        // Another agent heartbeat: the detector's bounds in the same
        // proportions to it as the defaults to 200 ms.
        let timing = if heartbeat_ms == 200 {
            String::new()
        } else {
            let h = heartbeat_ms;
            format!(
                "[timing]\nagent_heartbeat_ms = {h}\n[detector]\nagent_timeout_ms = {}\nprimary_silence_ms = {}\noutdate_tolerance_ms = {}\n[probe]\nafter_silence_ms = {}\n",
                h * 5,
                h * 5,
                h * 3 / 2,
                h * 2
            )
        };
        let mut procs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let path = root.join(format!("controller-{}.toml", i + 1));
            let tls = pki.section(&pki.controller(i as u64 + 1, addr));
            fs::write(
                &path,
                format!(
                    "node_id = {id}\nlisten = \"{addr}\"\ndata_dir = \"{data}\"\nmembers = [ {members} ]\n{timing}{inventory}{tls}",
                    id = i + 1,
                    data = root.join(format!("controller-{}", i + 1)).display(),
                ),
            )
            .expect("write controller config");
            let log = root.join(format!("controller-{}.log", i + 1));
            procs.push(match std::env::var_os("BENCH_HEAPTRACK") {
                // A heap profile of every controller (heaptrack's own process
                // is then the one measured: use it for the profile only).
                Some(out) => at_normal_priority(args.nice, || {
                    Proc::spawn(
                        &format!("controller {} (heaptrack)", i + 1),
                        std::process::Command::new("heaptrack")
                            .process_group(0)
                            .arg("-o")
                            .arg(PathBuf::from(&out).join(format!("controller-{}", i + 1)))
                            .arg(bin("understudy-controller"))
                            .arg("--config")
                            .arg(&path)
                            .env("RUST_LOG", "info,openraft=warn"),
                        &log,
                    )
                }),
                None => at_normal_priority(args.nice, || spawn_controller(&path, &log, i)),
            });
        }
        // The agents of the first `own` pairs run here, the others' in
        // workers of at most as many pairs each.
        let per_process = agents_per_process();
        let processes = (2 * pairs).div_ceil(per_process);
        let own = pairs.div_ceil(processes);
        let t = Instant::now();
        for i in 0..pairs {
            pki.agent(&server_id(i, false));
            pki.agent(&server_id(i, true));
        }
        let admin = match pki.operator("bench", Role::Admin) {
            Creds::Tls {
                ca,
                cert: Some(c),
                key: Some(k),
            } => ClientTls::load(&ca, Some((&c, &k))).expect("admin TLS"),
            _ => unreachable!("the PKI issues TLS credentials"),
        };
        eprintln!(
            "{} agent certificates issued in {} ms{}",
            2 * pairs,
            t.elapsed().as_millis(),
            if processes > 1 {
                format!(
                    "; the agents of {own} pairs run here, the others' in {} worker processes (at most {per_process} connections per process)",
                    processes - 1,
                )
            } else {
                String::new()
            }
        );
        let addrs = Arc::new(addrs);
        // The inventory is replicated by the leader once elected.
        let t = Instant::now();
        loop {
            if let Some(s) = status(&addrs, &admin).await {
                if s.pairs.len() == pairs {
                    break;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "no leader with the inventory after 120 s: see {}",
                root.display()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let shared = Arc::new(Shared::default());
        tokio::spawn(watch(addrs.clone(), admin.clone(), shared.clone()));
        let sims = spawn_agents(0..own, &pki, &addrs, args, &shared);
        let workers = (1..processes)
            .map(|k| {
                let first = k * own;
                let count = own.min(pairs - first);
                WorkerProc::spawn(&root, k, first, count, &addrs, args, shared.clone())
            })
            .collect();
        let run = Run {
            _dir: dir,
            procs,
            addrs,
            admin,
            sims,
            shared,
            workers,
            known_leader: Mutex::new(None),
        };
        let t = Instant::now();
        loop {
            let s = status(&run.addrs, &run.admin).await;
            let healthy = s
                .as_ref()
                .map(|s| s.pairs.iter().filter(|p| p.state == "Healthy").count())
                .unwrap_or(0);
            let welcomed = run.shared.welcomed.load(Ordering::Relaxed);
            let relayed = run.shared.relayed.load(Ordering::Relaxed);
            let handoffs = run.shared.handoffs.load(Ordering::Relaxed);
            eprintln!(
                "{:>5.1} s: {welcomed} agent sessions opened ({relayed} relayed, {handoffs} handoffs), {healthy}/{pairs} pairs Healthy",
                t.elapsed().as_secs_f64()
            );
            if healthy == pairs {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "pairs not all Healthy after 600 s: see {}",
                root.display()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        run
    }

    async fn leader_pid(&self) -> (u64, i32, u64) {
        // A busy leader may take a while with 10 000 pairs' status: retry.
        let mut tries = 0;
        let s = loop {
            match status(&self.addrs, &self.admin).await {
                Some(s) => break s,
                None if tries < 10 => tries += 1,
                None => panic!("no status from any controller, 10 tries"),
            }
        };
        let c = s.cluster.expect("cluster");
        let id = c.leader_id.expect("leader");
        *self.known_leader.lock().unwrap() = Some(self.addrs[id as usize - 1].clone());
        (id, self.procs[id as usize - 1].pid(), c.last_applied_index)
    }

    /// Kill pair `i`'s primary (silent) and wait for detection; returns
    /// (kill time, time to Suspect, time to FailingOver).
    async fn kill(&self, i: usize) -> (Instant, Option<Duration>, Option<Duration>) {
        let id = pair_id(i);
        self.shared.pending.lock().unwrap().remove(&id);
        let t0 = Instant::now();
        self.sims[i].primary_dead.store(true, Ordering::Relaxed);
        let deadline = t0 + Duration::from_secs(15);
        let (mut suspect, mut failing) = (None, None);
        while Instant::now() < deadline && failing.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(v) = self.shared.seen.lock().unwrap().get(&id) {
                for (st, at) in v.iter().filter(|(_, at)| *at >= t0) {
                    if st == "Suspect" && suspect.is_none() {
                        suspect = Some(*at - t0);
                    }
                    if st == "FailingOver" && failing.is_none() {
                        failing = Some(*at - t0);
                    }
                }
            }
        }
        (t0, suspect, failing)
    }

    /// An operator switchover of pair `i` (to its backup) through the
    /// `OperatorService.Command` RPC on the leader: (the RPC answered, the
    /// plan's first step seen committed as started on the Watch stream).
    async fn switchover(&self, i: usize) -> (Option<Duration>, Option<Duration>) {
        use understudy_proto::operator_command_request::Command;
        use understudy_proto::{OperatorCommandRequest, SwitchoverCommand};
        let id = pair_id(i);
        self.shared.step_started.lock().unwrap().remove(&id);
        let known = self.known_leader.lock().unwrap().clone();
        let mut addr = match known {
            Some(a) => a,
            None => {
                let (leader, _, _) = self.leader_pid().await;
                self.addrs[leader as usize - 1].clone()
            }
        };
        let t0 = Instant::now();
        // As understudyctl does: a follower's refusal names the leader.
        let mut hops = 0;
        let r = loop {
            let Ok(ch) = understudy_controller::raft::network::channel(
                &addr,
                Duration::from_secs(2),
                Some(&self.admin),
            ) else {
                return (None, None);
            };
            let r = OperatorServiceClient::new(ch)
                .command(OperatorCommandRequest {
                    pair_id: id.clone(),
                    command: Some(Command::Switchover(SwitchoverCommand {
                        to: server_id(i, true),
                        at_unix_ms: 0,
                    })),
                })
                .await;
            let leader = r
                .as_ref()
                .err()
                .and_then(|e| understudy_controller::leadership::referral(e).map(str::to_owned));
            match leader {
                Some(l) if hops < 3 => {
                    hops += 1;
                    *self.known_leader.lock().unwrap() = Some(l.clone());
                    addr = l;
                }
                _ => break r,
            }
        };
        let answered = t0.elapsed();
        if let Err(e) = r {
            eprintln!("switchover of {id} refused: {}", e.message());
            return (None, None);
        }
        let deadline = t0 + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(at) = self.shared.step_started.lock().unwrap().get(&id) {
                return (Some(answered), Some(*at - t0));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (Some(answered), None)
    }

    fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if std::env::var_os("BENCH_HEAPTRACK").is_some() {
            // heaptrack runs the controller as its child: SIGTERM the group,
            // so the controller exits and heaptrack finishes its profile
            // (killing heaptrack alone left the controller running).
            for p in &self.procs {
                // SAFETY: a plain kill(2) of the process group heaptrack leads.
                unsafe { libc::kill(-p.pid(), libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            for p in &mut self.procs {
                // heaptrack exits once its profile is written.
                while Instant::now() < deadline && matches!(p.child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                // SAFETY: as above; whatever of the group is left.
                unsafe { libc::kill(-p.pid(), libc::SIGKILL) };
            }
        }
        for p in self.procs {
            p.kill();
        }
    }
}

fn churn_task(run_sims: Vec<Arc<PairSim>>, churn: f64, skip: usize, stop: Arc<Shared>) {
    tokio::spawn(async move {
        let n = run_sims.len();
        let per_s = churn * n as f64;
        let mut credit = 0.0;
        let mut next = skip;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !stop.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            credit += per_s / 10.0;
            while credit >= 1.0 {
                credit -= 1.0;
                // Round robin over the pairs not used for kills.
                let s = &run_sims[next];
                next = if next + 1 >= n { skip } else { next + 1 };
                if s.resync_left.load(Ordering::Relaxed) == 0 {
                    s.resync_left.store(4, Ordering::Relaxed);
                }
            }
        }
    });
}

/// Set the calling thread's nice value (Linux: per thread; the threads and
/// processes it starts inherit it).
fn set_thread_nice(n: i32) {
    // SAFETY: setpriority(2) of this thread's id, no memory involved.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, n);
    }
}

/// Run `f` (which starts a controller) at nice 0, from a generator thread at
/// `nice`: the controller inherits the priority of the thread that forks it.
fn at_normal_priority<T>(nice: i32, f: impl FnOnce() -> T) -> T {
    set_thread_nice(0);
    let r = f();
    set_thread_nice(nice);
    r
}

/// The generator runs below the controllers' priority (`--generator-nice`,
/// 10 by default): on this machine its agents share two cores with the three
/// controllers, where in production they are other machines; at 10 000 pairs
/// its 20 000 agents otherwise take CPU from the followers until the leader's
/// Raft heartbeats miss its lease. Its CPU is measured all the same.
fn main() {
    let args = parse_args();
    let nice = args.nice;
    set_thread_nice(nice);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || set_thread_nice(nice))
        .build()
        .expect("tokio runtime")
        .block_on(run(args))
}

async fn run(args: Args) {
    raise_fd_limit();
    if let Some(w) = args.worker.clone() {
        worker(w, args).await;
        return;
    }
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(tick > 0);

    let mut idle = Vec::new();
    if args.idle_baseline {
        eprintln!("idle baseline: one pair, no churn");
        let run = Run::start(args.kills.max(1) + 1, &args, false).await;
        for k in 0..args.kills.max(1) {
            let (_, s, f) = run.kill(k).await;
            eprintln!(
                "idle kill {k}: Suspect after {}, FailingOver after {}",
                ms(s),
                ms(f)
            );
            idle.push((s, f));
        }
        run.stop();
    }

    eprintln!(
        "load: {} pairs ({} agent streams), {} report/s each, churn {}/s",
        args.pairs,
        args.pairs * 2,
        args.rate,
        args.churn
    );
    let mut run = Run::start(args.pairs, &args, args.keep).await;
    // The generator: this process and its workers.
    let gen_pids: Vec<i32> = std::iter::once(std::process::id() as i32)
        .chain(run.workers.iter().map(|w| w.pid()))
        .collect();
    let gen_cpu = || gen_pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    assert!(
        run.sims.len() > args.kills + args.commands,
        "the killed and switched-over pairs are this process's"
    );
    // The first `kills` pairs are kept out of the churn: they are killed.
    // And the next `commands` pairs too: they are switched over.
    churn_task(
        run.sims.clone(),
        args.churn,
        args.kills + args.commands,
        run.shared.clone(),
    );
    for w in &mut run.workers {
        w.churn();
    }
    // Warm up: let the churn reach its steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.shared.latencies.lock().unwrap().clear();
    let (leader, pid, idx0) = run.leader_pid().await;
    let t0 = Instant::now();
    let (cpu0, self0) = (cpu_seconds(pid), gen_cpu());
    let (rep0, hb0, ack0) = (
        run.shared.reports.load(Ordering::Relaxed),
        run.shared.heartbeats.load(Ordering::Relaxed),
        run.shared.acks.load(Ordering::Relaxed),
    );
    let mut rss = Vec::new();
    // The followers too: they carry the agent connections they relay.
    let followers: Vec<i32> = (0..run.procs.len())
        .filter(|&k| k as u64 + 1 != leader)
        .map(|k| run.procs[k].pid())
        .collect();
    let fcpu0: Vec<f64> = followers.iter().map(|&p| cpu_seconds(p)).collect();
    let mut frss: Vec<f64> = Vec::new();
    let mut cpu_max: f64 = 0.0;
    let mut kills = Vec::new();
    let kill_every = args.duration as f64 / (args.kills as f64 + 1.0);
    let mut last = (Instant::now(), cpu0);
    // A flat profile of the leader over the first half of the window.
    let perf = args.profile.as_ref().map(|out| {
        // BENCH_PERF_CALL_GRAPH=dwarf (or fp) records call stacks too.
        let graph: Vec<String> = std::env::var("BENCH_PERF_CALL_GRAPH")
            .map(|g| vec!["--call-graph".into(), g])
            .unwrap_or_default();
        std::process::Command::new("perf")
            .args(["record", "-F", "499", "-p", &pid.to_string()])
            .args(graph)
            .arg("-o")
            .arg(out)
            .args(["--", "sleep", &(args.duration / 2).max(1).to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf record (install linux-perf)")
    });
    while t0.elapsed() < Duration::from_secs(args.duration) {
        let k = kills.len();
        if k < args.kills && t0.elapsed().as_secs_f64() >= kill_every * (k as f64 + 1.0) {
            let r = run.kill(k).await;
            eprintln!(
                "kill {k} under load: Suspect after {}, FailingOver after {}",
                ms(r.1),
                ms(r.2)
            );
            kills.push(r);
            continue;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (now, c) = (Instant::now(), cpu_seconds(pid));
        cpu_max = cpu_max.max((c - last.1) / (now - last.0).as_secs_f64());
        last = (now, c);
        rss.push(rss_mb(pid));
        frss.extend(followers.iter().map(|&p| rss_mb(p)));
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - cpu0) / wall;
    let fcpu: Vec<f64> = followers
        .iter()
        .zip(&fcpu0)
        .map(|(&p, c0)| (cpu_seconds(p) - c0) / wall)
        .collect();
    let self_cpu = (gen_cpu() - self0) / wall;
    let (leader2, _, idx1) = run.leader_pid().await;
    let reports = run.shared.reports.load(Ordering::Relaxed) - rep0;
    let heartbeats = run.shared.heartbeats.load(Ordering::Relaxed) - hb0;
    let acks = run.shared.acks.load(Ordering::Relaxed) - ack0;
    let lat = run.shared.latencies.lock().unwrap().clone();
    // Operator commands, still under the agents' load (after the CPU window:
    // their plans would count in it otherwise).
    let (mut cmd_rpc, mut cmd_step) = (Vec::new(), Vec::new());
    for k in 0..args.commands {
        let (rpc, step) = run.switchover(args.kills + k).await;
        cmd_rpc.extend(rpc);
        match step {
            Some(d) => cmd_step.push(d),
            None => eprintln!("switchover {k}: no step started within 10 s"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(mut p) = perf {
        let _ = p.wait();
        eprintln!(
            "leader profile: perf report -i {} --stdio --no-children",
            args.profile.as_ref().unwrap().display()
        );
    }
    let mut all: Vec<Duration> = lat.iter().map(|(_, d)| *d).collect();
    // Changes of other pairs committed within 5 s after a failover started.
    let mut during: Vec<Duration> = lat
        .iter()
        .filter(|(at, _)| {
            kills
                .iter()
                .any(|(k, _, _)| *at >= *k && *at < *k + Duration::from_secs(5))
        })
        .map(|(_, d)| *d)
        .collect();
    let rss_avg = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    let rss_max = rss.iter().cloned().fold(0.0, f64::max);
    let mut idle_s: Vec<Duration> = idle.iter().filter_map(|x| x.0).collect();
    let mut idle_f: Vec<Duration> = idle.iter().filter_map(|x| x.1).collect();
    let mut load_s: Vec<Duration> = kills.iter().filter_map(|x| x.1).collect();
    let mut load_f: Vec<Duration> = kills.iter().filter_map(|x| x.2).collect();

    println!();
    println!(
        "bench-scale: {} pairs ({} agent streams), {} report/s per agent, heartbeat every {} ms, churn {}/s ({:.0} resyncs/s), {:.0} s measured, generator at nice {} in {} process(es)",
        args.pairs,
        args.pairs * 2,
        args.rate,
        args.heartbeat_ms,
        args.churn,
        args.churn * args.pairs as f64,
        wall,
        args.nice,
        run.workers.len() + 1,
    );
    if leader != leader2 {
        println!("WARNING: the leader changed during the run ({leader} -> {leader2})");
    }
    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| leader CPU (user+sys), average | {cpu:.2} core |");
    println!("| leader CPU, busiest second | {cpu_max:.2} core |");
    println!("| leader resident memory, average / max | {rss_avg:.0} / {rss_max:.0} MB |");
    println!(
        "| each follower (relaying the sessions of agents that dial it): CPU average, RSS max | {} core, {:.0} MB |",
        fcpu.iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
        frss.iter().cloned().fold(0.0, f64::max)
    );
    println!("| load generator's own CPU (apart) | {self_cpu:.2} core |");
    println!(
        "| agent messages sent | {:.0} reports/s, {:.0} heartbeats/s |",
        reports as f64 / wall,
        heartbeats as f64 / wall
    );
    println!(
        "| heartbeat acknowledgements received | {:.0} /s |",
        acks as f64 / wall
    );
    println!(
        "| Raft commits (applied entries) | {:.1} /s |",
        (idx1.saturating_sub(idx0)) as f64 / wall
    );
    println!(
        "| report-to-applied latency p50 / p99 ({} changes) | {} / {} |",
        all.len(),
        ms(pct(&mut all, 0.5)),
        ms(pct(&mut all, 0.99))
    );
    println!(
        "| same, other pairs within 5 s of a failover start ({} changes) | {} / {} |",
        during.len(),
        ms(pct(&mut during, 0.5)),
        ms(pct(&mut during, 0.99))
    );
    println!(
        "| dead primary -> Suspect, idle p50 / max ({} kills) | {} / {} |",
        idle_s.len(),
        ms(pct(&mut idle_s, 0.5)),
        ms(pct(&mut idle_s, 1.0))
    );
    println!(
        "| dead primary -> Suspect, under load p50 / max ({} kills) | {} / {} |",
        load_s.len(),
        ms(pct(&mut load_s, 0.5)),
        ms(pct(&mut load_s, 1.0))
    );
    println!(
        "| dead primary -> failover started, idle p50 / max | {} / {} |",
        ms(pct(&mut idle_f, 0.5)),
        ms(pct(&mut idle_f, 1.0))
    );
    println!(
        "| dead primary -> failover started, under load p50 / max | {} / {} |",
        ms(pct(&mut load_f, 0.5)),
        ms(pct(&mut load_f, 1.0))
    );
    println!(
        "| operator switchover -> RPC answered p50 / p99 ({} commands) | {} / {} |",
        cmd_rpc.len(),
        ms(pct(&mut cmd_rpc, 0.5)),
        ms(pct(&mut cmd_rpc, 0.99))
    );
    println!(
        "| operator switchover -> first step committed p50 / p99 ({} of {}) | {} / {} |",
        cmd_step.len(),
        args.commands,
        ms(pct(&mut cmd_step, 0.5)),
        ms(pct(&mut cmd_step, 0.99))
    );
    println!("(latencies as seen on the leader's Watch stream by this process)");
    run.stop();
}
