//! Benchmark: Raft leader re-election time, measured through the real interfaces.
//!
//! Starts a cluster (3 controllers, 2 agents on the DRBD emulator), then N times
//! (default 10): SIGKILL the leader, time until `understudyctl status` answers from
//! a new leader, then until both agents report to it; restart the killed node and
//! let it catch up. Prints each run and the median / max.
//!
//! Usage: `cargo run --release -p understudy-tests --bin bench-reelection [N]`
//! (build the workspace binaries first: `cargo build --release --workspace --bins`).

use std::time::{Duration, Instant};

use understudy_tests::{pair_healthy, server, Cluster};

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let med = v[v.len() / 2];
    (v[0], med, *v.last().unwrap())
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(10);
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
    let (lo, med, hi) = stats(elect);
    println!(
        "leader re-election over {n} kills: min {} ms, median {} ms, max {} ms",
        lo.as_millis(),
        med.as_millis(),
        hi.as_millis()
    );
    let (lo, med, hi) = stats(agents);
    println!(
        "agents reporting to the new leader: min {} ms, median {} ms, max {} ms",
        lo.as_millis(),
        med.as_millis(),
        hi.as_millis()
    );
    println!("(timings include understudyctl process start-up, polled every 100 ms)");
}
