//! Benchmark `failover_rto`: recovery time of an NFS file server, measured end to end.
//!
//! A namespace cluster (root only; see `understudy_tests::nscluster`): 3 controllers,
//! file server and backup on the DRBD emulator with nfs-ganesha, a client. N times
//! (default 20) the serving host dies (SIGKILL of its agent, ganesha and emulator,
//! and its cable cut); the client polls `nfs-cat` of a file through the client IP
//! every 20 ms. Then the dead host is revived, rejoins as the backup and resyncs,
//! and the next run kills the other one.
//!
//! Reported per run and as p50/p95/p99: death → first successful client read, and
//! its split by step: detect (death → failover committed; bounded by the two
//! witness times), then each step's own duration from the pair's history, and
//! "ip+read": from Export done to the client's first successful read (the client
//! reads as soon as the address is on the new server, while ClaimIp is still
//! sending its gratuitous ARPs and before Verify).
//!
//! Usage: `cargo run --release -p understudy-tests --bin failover_rto [N]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use understudy_tests::nscluster::{serving_ok, NsCluster, NsOptions, PAIR};
use understudy_tests::pair;

const PHASES: [&str; 9] = [
    "detect", "Confirm", "Fence", "Promote", "Mount", "Export", "ClaimIp", "Verify", "ip+read",
];

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn pct(v: &[u64], p: f64) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[i.min(s.len() - 1)]
}

/// The step durations of failover `epoch` from the history, and when it started.
fn plan_timings(s: &Value, epoch: u64) -> (Option<i64>, BTreeMap<String, u64>) {
    let mut steps = BTreeMap::new();
    let mut started = None;
    for l in pair(s, PAIR)["history"].as_array().into_iter().flatten() {
        if l["epoch"].as_u64() != Some(epoch) {
            continue;
        }
        let ev = l["event"].as_str().unwrap_or_default();
        if ev.contains("-> FailingOver") {
            started = l["at_unix_ms"].as_i64();
        }
        if let Some(rest) = ev.strip_prefix("step ") {
            let mut it = rest.split_whitespace();
            let (name, done, _in, ms) = (it.next(), it.next(), it.next(), it.next());
            if done == Some("done") {
                if let (Some(n), Some(ms)) = (name, ms.and_then(|m| m.parse().ok())) {
                    steps.insert(n.to_string(), ms);
                }
            }
        }
    }
    (started, steps)
}

/// Start an `nfs-cat` of the probe file every 20 ms from the client namespace
/// until one returns the right bytes; the time of that success since `t0`.
fn first_read(c: &NsCluster, t0: Instant, run: usize) -> Duration {
    use std::process::Stdio;
    let mut live: Vec<(Instant, std::process::Child)> = Vec::new();
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            let child = c
                .net
                .cmd("client", "nfs-cat")
                .arg(c.url("rto.txt"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("nfs-cat");
            live.push((Instant::now(), child));
            next += Duration::from_millis(20);
        }
        let mut i = 0;
        while i < live.len() {
            match live[i].1.try_wait() {
                Ok(Some(st)) => {
                    let (_, child) = live.remove(i);
                    let out = child
                        .wait_with_output()
                        .map(|o| o.stdout)
                        .unwrap_or_default();
                    if st.success() && out == b"recovery time objective\n" {
                        let at = t0.elapsed();
                        for (_, mut ch) in live {
                            let _ = ch.kill();
                            let _ = ch.wait();
                        }
                        return at;
                    }
                }
                Ok(None) if live[i].0.elapsed() > Duration::from_secs(3) => {
                    let (_, mut ch) = live.remove(i);
                    let _ = ch.kill();
                    let _ = ch.wait();
                }
                _ => i += 1,
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no read within 60 s (run {run})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(20);
    let mut c = NsCluster::start_with(NsOptions {
        flap_holdoff_ms: Some(0),
        ..Default::default()
    });
    c.nfs_write("rto.txt", b"recovery time objective\n")
        .expect("write");
    let mut totals = Vec::new();
    let mut phases: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for run in 1..=n {
        let s = c.wait_status("healthy and serving", Duration::from_secs(120), |s| {
            let p = pair(s, PAIR);
            p["state"] == "Healthy" && p["serving"].as_str().is_some_and(|id| serving_ok(s, id))
        });
        c.wait_replicated(Duration::from_secs(4), Duration::from_secs(60));
        let serving = pair(&s, PAIR)["serving"].as_str().unwrap().to_string();
        let epoch = pair(&s, PAIR)["epoch"].as_u64().unwrap() + 1;
        let idx = c.hosts.iter().position(|h| h.server_id == serving).unwrap();
        let (t0, t0_ms) = (Instant::now(), unix_ms());
        c.kill_host(idx);
        // A new `nfs-cat` every 20 ms, each allowed 3 s: an attempt stuck on an
        // address nobody holds yet (ARP) must not delay the next one.
        let read_at = first_read(&c, t0, run);
        let s = c.wait_status("failover recorded", Duration::from_secs(30), |s| {
            pair(s, PAIR)["state"] == "Degraded"
        });
        let (started, steps) = plan_timings(&s, epoch);
        let detect = started.map(|t| (t - t0_ms).max(0) as u64).unwrap_or(0);
        let total = read_at.as_millis() as u64;
        // The client can read as soon as the address is on the new server (the
        // start of ClaimIp): "ip+read" is from Export done to the first read.
        let before_ip: u64 = detect
            + ["Confirm", "Fence", "Promote", "Mount", "Export"]
                .iter()
                .map(|p| steps.get(*p).copied().unwrap_or(0))
                .sum::<u64>();
        let read = total.saturating_sub(before_ip);
        print!("run {run:>2}: {serving} died; first read after {total:>5} ms  [detect {detect}");
        phases.entry("detect").or_default().push(detect);
        for p in &PHASES[1..8] {
            let v = steps.get(*p).copied().unwrap_or(0);
            print!(", {p} {v}");
            phases.entry(p).or_default().push(v);
        }
        println!(", ip+read {read}]");
        phases.entry("ip+read").or_default().push(read);
        totals.push(total);
        c.revive_host(idx);
    }
    println!();
    println!(
        "death -> first NFS read through the client IP, {n} runs: p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
        pct(&totals, 50.0),
        pct(&totals, 95.0),
        pct(&totals, 99.0),
        totals.iter().max().unwrap()
    );
    println!("{:<8} {:>7} {:>7} {:>7}", "phase", "p50", "p95", "p99");
    for p in PHASES {
        let v = &phases[p];
        println!(
            "{p:<8} {:>5}ms {:>5}ms {:>5}ms",
            pct(v, 50.0),
            pct(v, 95.0),
            pct(v, 99.0)
        );
    }
}
