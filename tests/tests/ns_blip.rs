//! Availability under network blips, in network namespaces (root only): a blip of
//! the file server's link shorter than the detection time never fails over. After
//! the link is back, the agent's session stream can stay in TCP retransmission
//! back-off for a second or more; the leader asks the agent directly over UDP
//! (detector and Confirm), so the healthy file server is never fenced.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use understudy_tests::nscluster::{serving_ok, NsCluster, PAIR};
use understudy_tests::pair;

const BLIPS: usize = 6;
const DOWN: Duration = Duration::from_millis(600);
const PERIOD: Duration = Duration::from_millis(2600);

#[test]
fn sub_second_blips_of_the_file_server_never_fail_over() {
    let c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("blip.txt", b"still here").unwrap();
    // Everything replicated: S1 would allow a failover, only S2 and Confirm stand
    // between a blip and fencing the healthy file server.
    c.wait_replicated(Duration::from_secs(4), Duration::from_secs(30));

    let done = AtomicBool::new(false);
    let mut samples = 0usize;
    let mut failed_samples = 0usize;
    let mut states = BTreeSet::new();
    let mut blips_done = 0;
    std::thread::scope(|s| {
        let blipper = s.spawn(|| {
            let mut n = 0;
            for _ in 0..BLIPS {
                let t0 = Instant::now();
                c.net.cut("fsa");
                std::thread::sleep(DOWN);
                c.net.heal("fsa");
                n += 1;
                std::thread::sleep(PERIOD.saturating_sub(t0.elapsed()));
            }
            // Long enough after the last blip for any failover it caused to start.
            std::thread::sleep(Duration::from_secs(3));
            done.store(true, Ordering::SeqCst);
            n
        });
        while !done.load(Ordering::SeqCst) {
            let t = Instant::now();
            match c.try_status() {
                Ok(st) => {
                    samples += 1;
                    let p = pair(&st, PAIR);
                    states.insert(p["state"].as_str().unwrap_or_default().to_string());
                    assert_eq!(
                        p["epoch"], 0,
                        "a blip of {DOWN:?} started a failover: {:#}",
                        p["history"]
                    );
                    assert_eq!(p["serving"], "fs1-fsa", "{:#}", p["history"]);
                    assert!(p["failover"].is_null(), "{:#}", p["failover"]);
                }
                Err(_) => failed_samples += 1,
            }
            std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
        }
        blips_done = blipper.join().expect("blipper");
    });
    eprintln!(
        "{blips_done} blips of {DOWN:?}: {samples} status samples ({failed_samples} unanswered), pair states seen {states:?}"
    );
    assert_eq!(blips_done, BLIPS);
    // Sampling really ran through the blips (about one sample per 100 ms).
    assert!(samples >= BLIPS * 10, "only {samples} status samples");
    assert!(!states.contains("FailingOver") && !states.contains("Degraded"));
    // fsa still holds the client IP and exports, and clients read through it.
    assert_eq!(c.ip_holders(), vec!["fsa"]);
    assert_eq!(c.exporting_hosts(), vec!["fsa"]);
    let s = c.wait_status("healthy again", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Healthy" && serving_ok(s, "fs1-fsa")
    });
    assert_eq!(pair(&s, PAIR)["epoch"], 0);
    assert_eq!(
        c.nfs_read("blip.txt").expect("read after blips"),
        b"still here"
    );
}
