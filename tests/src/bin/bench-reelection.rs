//! Benchmark: Raft leader re-election time, measured through the real interfaces.
//!
//! Starts a cluster (3 controllers, 2 agents on the DRBD emulator), then N times
//! (default 20): SIGKILL the leader, time until `understudyctl status` answers from
//! a new leader, then until both agents report to it; restart the killed node and
//! let it catch up. Prints each run and min / p50 / p99 / max. Then M times
//! (default 20) an operator command (`pause`, then `resume`, through the
//! `OperatorService.Command` RPC): the time until the RPC answers (the command
//! committed) and until its audit line is seen on the leader's `Watch` stream.
//!
//! Usage: `cargo run --release -p understudy-tests --bin bench-reelection [N] [M]`
//! (build the workspace binaries first: `cargo build --release --workspace --bins`).

use std::time::{Duration, Instant};

use understudy_tests::{pair_healthy, server, Cluster};

/// min, p50, p99, max.
fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    (v[0], at(0.5), at(0.99), *v.last().unwrap())
}

fn line(what: &str, v: Vec<Duration>) {
    let n = v.len();
    let (lo, p50, p99, hi) = stats(v);
    println!(
        "| {what} | {n} | {} | {} | {} | {} |",
        lo.as_millis(),
        p50.as_millis(),
        p99.as_millis(),
        hi.as_millis()
    );
}

/// Operator commands through the gRPC API: (RPC answered, audit line seen on
/// the leader's watch stream) for each.
fn operator_commands(c: &Cluster, m: usize) -> (Vec<Duration>, Vec<Duration>) {
    use understudy_proto::operator_command_request::Command;
    use understudy_proto::operator_service_client::OperatorServiceClient;
    use understudy_proto::{OperatorCommandRequest, PauseCommand, ResumeCommand, WatchRequest};
    let tls = match &c.controllers.creds {
        understudy_tests::Creds::Tls {
            ca,
            cert: Some(cert),
            key: Some(key),
        } => understudy_tls::ClientTls::load(ca, Some((cert, key))).expect("operator TLS"),
        _ => panic!("the harness runs with TLS"),
    };
    let s = c.wait_status("a leader", Duration::from_secs(10), |s| {
        Cluster::leader_index(s).is_some()
    });
    let addr = c.controllers.addrs[Cluster::leader_index(&s).unwrap()].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ch = understudy_controller::raft::network::channel(
            &addr,
            Duration::from_secs(2),
            Some(&tls),
        )
        .expect("channel");
        let mut client = OperatorServiceClient::new(ch);
        let mut watch = client
            .watch(WatchRequest {
                pair_id: "fs1".into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let (mut rpc, mut seen) = (Vec::new(), Vec::new());
        for k in 0..m {
            let (cmd, word) = if k % 2 == 0 {
                (Command::Pause(PauseCommand {}), "pause")
            } else {
                (Command::Resume(ResumeCommand {}), "resume")
            };
            let t0 = Instant::now();
            client
                .command(OperatorCommandRequest {
                    pair_id: "fs1".into(),
                    command: Some(cmd),
                })
                .await
                .unwrap_or_else(|e| panic!("{word}: {e}"));
            rpc.push(t0.elapsed());
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(5), watch.message())
                    .await
                    .expect("the command's line on the watch stream within 5 s")
                    .expect("watch")
                    .expect("watch ended");
                if ev.event.contains(&format!(": {word}")) && ev.event.contains("accepted") {
                    break;
                }
            }
            seen.push(t0.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (rpc, seen)
    })
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(20);
    let m: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("M must be a number"))
        .unwrap_or(20);
    let mut c = Cluster::start(3);
    c.wait_status("pair healthy", Duration::from_secs(60), pair_healthy);
    let (mut elect, mut agents) = (Vec::new(), Vec::new());
    for run in 1..=n {
        let s = c.wait_status("a leader", Duration::from_secs(10), |s| {
            Cluster::leader_index(s).is_some() && pair_healthy(s)
        });
        let old = Cluster::leader_index(&s).unwrap();
        let t0 = Instant::now();
        c.kill_controller(old);
        c.wait_status("new leader", Duration::from_secs(10), |s| {
            Cluster::leader_index(s).is_some_and(|l| l != old)
        });
        let e = t0.elapsed();
        c.wait_status("agents on new leader", Duration::from_secs(10), |s| {
            ["fs1-a", "fs1-b"]
                .iter()
                .all(|id| server(s, "fs1", id)["connected"] == true)
                && pair_healthy(s)
        });
        let a = t0.elapsed();
        println!(
            "run {run:>2}: killed controller {}; new leader after {:>4} ms; agents reporting to it after {:>4} ms",
            old + 1,
            e.as_millis(),
            a.as_millis()
        );
        elect.push(e);
        agents.push(a);
        c.start_controller(old);
        c.wait_status("killed node caught up", Duration::from_secs(10), |s| {
            s["cluster"]["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["matched_index"].as_u64().is_some()))
        });
    }
    let (cmd_rpc, cmd_seen) = operator_commands(&c, m);
    println!();
    println!("| measure (ms) | runs | min | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    line("leader SIGKILL -> a new leader answers status", elect);
    line("leader SIGKILL -> both agents report to it", agents);
    line("operator command -> committed (RPC answered)", cmd_rpc);
    line(
        "operator command -> its line on the leader's watch",
        cmd_seen,
    );
    println!("(kill timings include understudyctl process start-up, polled every 50 ms)");
}
