//! Availability under network blips, in network namespaces (root only): a blip of
//! the file server's link shorter than the detection time never fails over. After
//! the link is back, the agent's session stream can stay in TCP retransmission
//! back-off for a second or more; the leader asks the agent directly over UDP
//! (detector and Confirm), so the healthy file server is never fenced.
//!
//! Blips of 0.6 s never even start a plan. Blips a little longer than the
//! detection time (1.1 s against 1 s of primary silence and 0.5 s of peer loss)
//! can start one (both witnesses hold while the link is down), but Confirm's
//! direct probes find the file server alive once the link is back and stop the
//! plan before Fence.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use understudy_tests::nscluster::{serving_ok, NsCluster, PAIR};
use understudy_tests::pair;

/// What the status showed while blips ran.
#[derive(Default, Debug)]
struct Seen {
    samples: usize,
    unanswered: usize,
    states: BTreeSet<String>,
    max_epoch: u64,
}

/// Cut fsa's cable for `down` every `period`, `blips` times, sampling the
/// status every 100 ms until 4 s after the last blip; `check` runs on every
/// sample's pair.
fn blip_fsa(
    c: &NsCluster,
    blips: usize,
    down: Duration,
    period: Duration,
    mut check: impl FnMut(&Value),
) -> Seen {
    let done = AtomicBool::new(false);
    let mut seen = Seen::default();
    std::thread::scope(|s| {
        let blipper = s.spawn(|| {
            for _ in 0..blips {
                let t0 = Instant::now();
                c.net.cut("fsa");
                std::thread::sleep(down);
                c.net.heal("fsa");
                std::thread::sleep(period.saturating_sub(t0.elapsed()));
            }
            // Long enough after the last blip for any failover it caused to fence.
            std::thread::sleep(Duration::from_secs(4));
            done.store(true, Ordering::SeqCst);
        });
        while !done.load(Ordering::SeqCst) {
            let t = Instant::now();
            match c.try_status() {
                Ok(st) => {
                    seen.samples += 1;
                    let p = pair(&st, PAIR);
                    seen.states
                        .insert(p["state"].as_str().unwrap_or_default().to_string());
                    seen.max_epoch = seen.max_epoch.max(p["epoch"].as_u64().unwrap_or(0));
                    check(p);
                }
                Err(_) => seen.unanswered += 1,
            }
            std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
        }
        blipper.join().expect("blipper");
    });
    eprintln!("{blips} blips of {down:?}: {seen:?}");
    // Sampling really ran through the blips (about one sample per 100 ms).
    assert!(
        seen.samples >= blips * period.as_millis() as usize / 200,
        "only {} status samples",
        seen.samples
    );
    seen
}

/// fsa still serves: client IP, export, Healthy again, the file reads back.
fn assert_fsa_still_serves(c: &NsCluster) -> Value {
    assert_eq!(c.ip_holders(), vec!["fsa"]);
    assert_eq!(c.exporting_hosts(), vec!["fsa"]);
    let s = c.wait_status("healthy again", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Healthy" && serving_ok(s, "fs1-fsa")
    });
    assert_eq!(pair(&s, PAIR)["serving"], "fs1-fsa");
    assert_eq!(
        c.nfs_read("blip.txt").expect("read after blips"),
        b"still here"
    );
    s
}

fn cluster() -> NsCluster {
    let c = NsCluster::start();
    c.nfs_write("blip.txt", b"still here").unwrap();
    // Protocol C: the write is on fsb, the pair Healthy: S1 would allow a
    // failover, only S2 and Confirm stand between a blip and fencing the
    // healthy file server.
    c
}

#[test]
fn sub_second_blips_of_the_file_server_never_start_a_failover() {
    let c = cluster();
    let _logs = c.keep_logs_on_panic();
    let seen = blip_fsa(
        &c,
        6,
        Duration::from_millis(600),
        Duration::from_millis(2600),
        |p| {
            assert_eq!(
                p["epoch"], 0,
                "a blip of 0.6 s started a failover: {:#}",
                p["history"]
            );
            assert_eq!(p["serving"], "fs1-fsa", "{:#}", p["history"]);
            assert!(p["failover"].is_null(), "{:#}", p["failover"]);
        },
    );
    assert!(!seen.states.contains("FailingOver") && !seen.states.contains("Degraded"));
    let s = assert_fsa_still_serves(&c);
    assert_eq!(pair(&s, PAIR)["epoch"], 0);
}

#[test]
fn blips_just_past_the_detection_time_are_stopped_by_confirm_before_fence() {
    let c = cluster();
    let _logs = c.keep_logs_on_panic();
    let seen = blip_fsa(
        &c,
        4,
        Duration::from_millis(1100),
        Duration::from_millis(5000),
        |p| {
            assert_eq!(p["serving"], "fs1-fsa", "{:#}", p["history"]);
            let fenced = p["failover"]["steps"].as_array().is_some_and(|st| {
                st.iter()
                    .any(|x| x["step"] == "Fence" && x["status"] != "pending")
            });
            assert!(
                !fenced,
                "the healthy file server is being fenced: {:#}",
                p["failover"]
            );
        },
    );
    assert!(!seen.states.contains("Degraded"), "{seen:?}");
    let s = assert_fsa_still_serves(&c);
    // Every plan a blip started was stopped at Confirm (the primary answered a
    // direct probe, or the re-checked witnesses no longer held).
    let history: Vec<String> = pair(&s, PAIR)["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["event"].as_str().unwrap_or_default().to_string())
        .collect();
    let h = history.join("\n");
    assert!(!h.contains("step Fence"), "{h}");
    let started = history
        .iter()
        .filter(|e| e.contains("-> FailingOver"))
        .count();
    let stopped = history
        .iter()
        .filter(|e| e.contains("FailingOver -> Suspect: failover stopped at step Confirm"))
        .count();
    eprintln!("{started} plans started, {stopped} stopped at Confirm (last 20 history lines)");
    // The status shows the last 20 history lines: a plan's start may be cut off,
    // never its end (no plan is in flight now).
    assert!(pair(&s, PAIR)["failover"].is_null());
    assert!(stopped >= started, "{h}");
}
