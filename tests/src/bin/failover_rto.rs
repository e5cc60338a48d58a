//! Benchmark `failover_rto`: recovery time of an NFS file server, measured end to end.
//!
//! A namespace cluster (root only; see `understudy_tests::nscluster`): 3 controllers,
//! file server and backup on the DRBD emulator with nfs-ganesha, a client. N times
//! (default 10, and as many again with the client's NFS state live) the serving host dies (SIGKILL of its agent, ganesha and emulator,
//! and its cable cut); the client polls `nfs-cat` of a file through the client IP
//! every 20 ms. Then the dead host is revived, rejoins as the backup and resyncs,
//! and the next run kills the other one.
//!
//! The emulators run in block mode (ext4 on a replicated device, protocol C).
//! Before each death the client writes a file (read back after the failover).
//! Odd runs wait until its NFS lease ran out; even runs kill while its state is
//! live, so the new server holds the NFS grace period (3 s in the harness) before
//! it lets anyone open a file: those are reported on their own. In the even runs a
//! client writes numbered files back to back through the client IP while the
//! server dies (no wait for replication); after the failover every write it got
//! an acknowledgement for is read back: "acknowledged writes lost" (must be 0).
//!
//! Reported per run and as p50/p95/p99: death → first successful client read, and
//! its split by step: detect (death → failover committed; bounded by the two
//! witness times), then each step's own duration from the pair's history, and
//! "ip+read": from Export done to the client's first successful read (the client
//! reads as soon as the address is on the new server, while ClaimIp is still
//! sending its gratuitous ARPs and before Verify).
//!
//! Then the trade-off with network blips: the serving host's cable is cut for X
//! ms and plugged back (X in 0.4, 0.6, 0.8, 1.0, 1.2, 1.5 s; 3 blips each, every
//! one from a Healthy, replicated pair, so S1 would allow a failover). A blip
//! "started a plan" if the epoch moved (Confirm may still stop it: the old
//! primary answered a direct probe) and "failed over" if the old primary was
//! fenced. Reported: the longest blip below which no blip failed over, and no
//! blip even started a plan.
//!
//! Both for the default profile and a faster one (primary silence 600 ms, peer
//! loss 300 ms, agent heartbeat 100 ms, probes after 200 ms of silence), printed
//! as one table at the end.
//!
//! A third variant, `default-arp1s` (blips only), runs the default profile on hosts
//! that keep Linux's ARP retry of 1 s: a cut cable drops the host's carrier and
//! flushes its ARP table, so a healed host stays unreachable for up to a second
//! more (the test network otherwise retries ARP every 100 ms, see `Net::cut`).
//!
//! Usage: `cargo run --release -p understudy-tests --bin failover_rto [N] [default|fast|default-arp1s|both|all]`
//! (`both`, the default: default and fast; `all`: the three).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use understudy_tests::nscluster::{serving_ok, NsCluster, NsOptions, Writer, PAIR};
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

/// Detector settings under test.
struct Profile {
    name: &'static str,
    primary_silence_ms: u64,
    peer_loss_ms: u64,
    heartbeat_ms: u64,
    probe_after_ms: u64,
    confirm_window_ms: u64,
    /// The hosts' ARP retry (`retrans_time_ms`): the test network sets 100 ms
    /// (see `Net::cut`); 1000 is Linux's default, under which a host whose cable
    /// was cut stays unreachable up to a second after it is back.
    arp_retrans_ms: u64,
    /// Measure RTO too (the ARP variant only measures blips).
    rto: bool,
}

const PROFILES: [Profile; 3] = [
    // The defaults of `[detector]`, `[timing]` and `[probe]`.
    Profile {
        name: "default",
        primary_silence_ms: 1000,
        peer_loss_ms: 500,
        heartbeat_ms: 200,
        probe_after_ms: 400,
        confirm_window_ms: 300,
        arp_retrans_ms: 100,
        rto: true,
    },
    Profile {
        name: "fast",
        primary_silence_ms: 600,
        peer_loss_ms: 300,
        heartbeat_ms: 100,
        probe_after_ms: 200,
        confirm_window_ms: 300,
        arp_retrans_ms: 100,
        rto: true,
    },
    // The default profile on hosts that keep Linux's ARP retry of 1 s.
    Profile {
        name: "default-arp1s",
        primary_silence_ms: 1000,
        peer_loss_ms: 500,
        heartbeat_ms: 200,
        probe_after_ms: 400,
        confirm_window_ms: 300,
        arp_retrans_ms: 1000,
        rto: false,
    },
];

const BLIPS_MS: [u64; 6] = [400, 600, 800, 1000, 1200, 1500];
const BLIPS_EACH: usize = 3;

/// What one profile measured.
struct Measured {
    /// Death -> first read, the writing client's lease expired before the death.
    rto: Vec<u64>,
    /// The same with the writing client's NFS state still live at the death.
    rto_stateful: Vec<u64>,
    /// Over those runs: writes a client made back to back through the death,
    /// acknowledged, and acknowledged but not read back after the failover.
    writes_acked: usize,
    writes_lost: usize,
    phases: BTreeMap<&'static str, Vec<u64>>,
    /// Per blip length: (blips, plans started, fenced, pair left Blocked).
    blips: Vec<(u64, usize, usize, usize, usize)>,
}

fn wait_healthy_replicated(c: &NsCluster) -> Value {
    let s = c.wait_status("healthy and serving", Duration::from_secs(120), |s| {
        let p = pair(s, PAIR);
        assert_ne!(
            p["state"], "Blocked",
            "the pair is blocked: {}",
            p["state_reason"]
        );
        p["state"] == "Healthy" && p["serving"].as_str().is_some_and(|id| serving_ok(s, id))
    });
    // Healthy: both UpToDate and connected, the resync of a revived host done;
    // with protocol C nothing acknowledged is missing on the backup.
    s
}

fn serving_index(c: &NsCluster, s: &Value) -> (usize, String, u64) {
    let serving = pair(s, PAIR)["serving"].as_str().unwrap().to_string();
    let idx = c.hosts.iter().position(|h| h.server_id == serving).unwrap();
    (idx, serving, pair(s, PAIR)["epoch"].as_u64().unwrap())
}

/// Cut the serving host's cable for `ms` and plug it back; whether a plan
/// started, whether the old primary was fenced, and the reason if the pair ended
/// `Blocked`. A fenced host is revived.
fn blip(c: &mut NsCluster, ms: u64) -> (bool, bool, Option<String>) {
    let s = wait_healthy_replicated(c);
    let (idx, serving, epoch) = serving_index(c, &s);
    let name = c.hosts[idx].name;
    c.net.cut(name);
    std::thread::sleep(Duration::from_millis(ms));
    c.net.heal(name);
    // Long enough for a failover caused by the blip to start and fence.
    std::thread::sleep(Duration::from_secs(4));
    let s = c.wait_status("no plan in flight", Duration::from_secs(60), |s| {
        pair(s, PAIR)["failover"].is_null()
    });
    let p = pair(&s, PAIR);
    if p["state"] == "Blocked" {
        let why = p["state_reason"].as_str().unwrap_or_default().to_string();
        return (p["epoch"].as_u64().unwrap() != epoch, false, Some(why));
    }
    let now_epoch = p["epoch"].as_u64().unwrap();
    let started = now_epoch != epoch;
    let (_, steps) = plan_timings(&s, now_epoch);
    let fenced = started && (steps.contains_key("Fence") || p["serving"] != serving.as_str());
    if fenced {
        // The local cloud isolated it and killed its processes: bring it back.
        c.wait_status("failed over", Duration::from_secs(30), |s| {
            pair(s, PAIR)["state"] == "Degraded"
        });
        c.revive_host(idx);
    }
    (started, fenced, None)
}

/// A namespace cluster with the profile's detector settings, serving rto.txt.
fn profile_cluster(prof: &Profile) -> NsCluster {
    let c = NsCluster::start_with(NsOptions {
        flap_holdoff_ms: Some(0),
        primary_silence_ms: Some(prof.primary_silence_ms),
        peer_loss_ms: Some(prof.peer_loss_ms),
        agent_heartbeat_ms: Some(prof.heartbeat_ms),
        probe_after_silence_ms: Some(prof.probe_after_ms),
        confirm_window_ms: Some(prof.confirm_window_ms),
        ..Default::default()
    });
    if prof.arp_retrans_ms != 100 {
        let arp = format!("retrans_time_ms={}", prof.arp_retrans_ms);
        for h in ["fsa", "fsb", "client"] {
            let ok = c
                .net
                .cmd(h, "sysctl")
                .args(["-qw", &format!("net.ipv4.neigh.eth0.{arp}")])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "sysctl in {h}");
        }
        let ok = std::process::Command::new("sysctl")
            .args([
                "-qw",
                &format!("net.ipv4.neigh.{}.{arp}", c.net.bridge_name()),
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "sysctl on the bridge");
    }
    c.nfs_write("rto.txt", b"recovery time objective\n")
        .expect("write");
    c
}

fn run_profile(prof: &Profile, n: usize) -> Measured {
    eprintln!("== profile {}", prof.name);
    let mut c = profile_cluster(prof);
    let mut blips = Vec::new();
    for ms in BLIPS_MS {
        let (mut started, mut fenced, mut blocked) = (0, 0, 0);
        for k in 1..=BLIPS_EACH {
            let (s, f, b) = blip(&mut c, ms);
            println!(
                "[{}] blip {ms:>4} ms #{k}: {}",
                prof.name,
                match (s, f, &b) {
                    (_, _, Some(why)) =>
                        format!("BLOCKED (an operator must act; a new cluster is started): {why}"),
                    (false, _, None) => "no plan started".into(),
                    (true, false, None) => "plan started, stopped at Confirm (no fence)".into(),
                    (true, true, None) => "FAILED OVER (old primary fenced)".into(),
                }
            );
            started += s as usize;
            fenced += f as usize;
            if b.is_some() {
                blocked += 1;
                // Nothing unblocks a pair but an operator (not built yet).
                drop(c);
                c = profile_cluster(prof);
            }
        }
        blips.push((ms, BLIPS_EACH, started, fenced, blocked));
    }
    let (mut rto, mut rto_stateful) = (Vec::new(), Vec::new());
    let (mut writes_acked, mut writes_lost) = (0, 0);
    let mut phases: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let n = if prof.rto { n } else { 0 };
    for run in 1..=2 * n {
        // Odd runs: the client's lease (3 s) runs out before the death, so the
        // new server has nobody to wait for. Even runs: the client wrote just
        // before the death and its state is live, so the new server holds its
        // NFS grace period (3 s here) before it lets anyone open a file.
        let stateful = run % 2 == 0;
        let s = wait_healthy_replicated(&c);
        // The client writes (protocol C: on the backup's disk once acknowledged).
        let name = format!("run-{run}.txt");
        c.nfs_write(&name, format!("run {run}\n").as_bytes())
            .expect("client write");
        let writer = if stateful {
            // A client writes files back to back through the client IP while
            // the server dies: no wait for anything before the kill.
            let w = c.start_writer(&format!("run-{run}-w"));
            w.wait_more_acked(5, Duration::from_secs(60));
            Some(w)
        } else {
            // Until the client's lease (3 s) has run out.
            std::thread::sleep(Duration::from_secs(4));
            None
        };
        let (idx, serving, epoch) = serving_index(&c, &s);
        let epoch = epoch + 1;
        let (t0, t0_ms) = (Instant::now(), unix_ms());
        c.kill_host(idx);
        // A new `nfs-cat` every 20 ms, each allowed 3 s: an attempt stuck on an
        // address nobody holds yet (ARP) must not delay the next one.
        let read_at = first_read(&c, t0, run);
        let s = c.wait_status("failover recorded", Duration::from_secs(30), |s| {
            pair(s, PAIR)["state"] == "Degraded"
        });
        assert_eq!(
            c.nfs_read(&name)
                .expect("the client's write after failover"),
            format!("run {run}\n").as_bytes()
        );
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
        print!(
            "[{}] run {run:>2} ({}): {serving} died; first read after {total:>5} ms  [detect {detect}",
            prof.name,
            if stateful { "client state live" } else { "client lease expired" }
        );
        for p in &PHASES[1..8] {
            print!(", {p} {}", steps.get(*p).copied().unwrap_or(0));
        }
        println!(", ip+read {read}]");
        if let Some(w) = writer {
            // The writer goes on through the new server, then every write it
            // got an acknowledgement for is read back through the client IP.
            w.wait_more_acked(3, Duration::from_secs(60));
            let client = w.client();
            let writes = w.stop();
            let check = Writer::verify(&client, &writes, Duration::from_secs(30));
            println!(
                "[{}] run {run:>2}: writing client: {} writes, {} acknowledged, acknowledged writes lost: {}{}",
                prof.name,
                check.attempted,
                check.acked,
                check.lost.len(),
                if check.lost.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", check.lost)
                }
            );
            writes_acked += check.acked;
            writes_lost += check.lost.len();
        }
        if stateful {
            rto_stateful.push(total);
            c.revive_host(idx);
            continue;
        }
        phases.entry("detect").or_default().push(detect);
        for p in &PHASES[1..8] {
            phases
                .entry(p)
                .or_default()
                .push(steps.get(*p).copied().unwrap_or(0));
        }
        phases.entry("ip+read").or_default().push(read);
        rto.push(total);
        c.revive_host(idx);
    }
    Measured {
        rto,
        rto_stateful,
        writes_acked,
        writes_lost,
        phases,
        blips,
    }
}

/// The longest blip length such that it and every shorter one had no event
/// counted by `f`; `None` if the shortest already had one.
fn longest_without(
    blips: &[(u64, usize, usize, usize, usize)],
    f: impl Fn(&(u64, usize, usize, usize, usize)) -> usize,
) -> String {
    let mut best = None;
    for b in blips {
        if f(b) > 0 {
            break;
        }
        best = Some(b.0);
    }
    match best {
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => format!("< {:.1} s", blips[0].0 as f64 / 1000.0),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(10);
    let which = args.next().unwrap_or_else(|| "both".into());
    let profiles: Vec<&Profile> = PROFILES
        .iter()
        .filter(|p| {
            which == "all" || which == p.name || (which == "both" && p.arp_retrans_ms == 100)
        })
        .collect();
    assert!(
        !profiles.is_empty(),
        "unknown profile {which:?}: default, fast, default-arp1s, both (default and fast) or all"
    );
    let results: Vec<(&Profile, Measured)> = profiles
        .into_iter()
        .map(|p| (p, run_profile(p, n)))
        .collect();
    for (p, r) in &results {
        println!();
        if !r.rto.is_empty() {
            println!(
                "profile {}: death -> first NFS read through the client IP, {} runs with the client's lease expired",
                p.name,
                r.rto.len()
            );
            println!("{:<8} {:>7} {:>7} {:>7}", "phase", "p50", "p95", "p99");
            for ph in PHASES {
                let v = &r.phases[ph];
                println!(
                    "{ph:<8} {:>5}ms {:>5}ms {:>5}ms",
                    pct(v, 50.0),
                    pct(v, 95.0),
                    pct(v, 99.0)
                );
            }
        }
        if !r.rto_stateful.is_empty() {
            println!(
                "profile {}: a client writing through the client IP across {} deaths: {} writes acknowledged, {} lost",
                p.name,
                r.rto_stateful.len(),
                r.writes_acked,
                r.writes_lost
            );
        }
        println!("profile {} (ARP retry {} ms):", p.name, p.arp_retrans_ms);
        println!("blips (cable cut X ms, {BLIPS_EACH} each): plans started / failed over");
        for (ms, k, started, fenced, blocked) in &r.blips {
            print!("  {ms:>5} ms: {started}/{k} started, {fenced}/{k} failed over");
            if *blocked > 0 {
                print!(", {blocked}/{k} left the pair Blocked (S1)");
            }
            println!();
        }
    }
    println!();
    println!(
        "| profile | primary silence / peer loss / heartbeat | hosts' ARP retry | RTO p50 | RTO p99 | RTO p50 / p99, client state live (NFS grace 3 s) | acknowledged writes lost (of acknowledged, client writing through the deaths) | longest blip never failing over | longest blip never starting a plan |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let ms = |v: &[u64], p: f64| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{} ms", pct(v, p))
        }
    };
    for (p, r) in &results {
        println!(
            "| {} | {} / {} / {} ms | {} ms | {} | {} | {} / {} | {} | {} | {} |",
            p.name,
            p.primary_silence_ms,
            p.peer_loss_ms,
            p.heartbeat_ms,
            p.arp_retrans_ms,
            ms(&r.rto, 50.0),
            ms(&r.rto, 99.0),
            ms(&r.rto_stateful, 50.0),
            ms(&r.rto_stateful, 99.0),
            if r.rto_stateful.is_empty() {
                "-".to_string()
            } else {
                format!("{} of {}", r.writes_lost, r.writes_acked)
            },
            longest_without(&r.blips, |b| b.3),
            longest_without(&r.blips, |b| b.2),
        );
    }
}
