//! Redundancy restored without a human (issue 8), through real processes in
//! network namespaces (root only): the local cloud launches spares as new
//! namespace hosts that boot an agent; volumes are the emulator's disks, moved by
//! attach and detach. Pre-spin, replace (fresh volume, full resync, `Healthy`),
//! reattach (S9), a template in the wrong zone, a false alarm's spare, and the
//! leader killed in the middle of a rebuild.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;
use understudy_tests::nscluster::{Invariants, NsCluster, NsOptions, SpareOptions, Writer, PAIR};
use understudy_tests::{pair, wait_for};

const FSA: &str = "fs1-fsa";
const FSB: &str = "fs1-fsb";

fn history(s: &Value) -> String {
    understudy_tests::history_lines(s, PAIR).join("\n")
}

fn spares(opts: SpareOptions) -> NsOptions {
    NsOptions {
        spares: Some(opts),
        // A resync of the 64 MiB disk that takes long enough to watch.
        resync_rate_kib: Some(16 * 1024),
        ..NsOptions::default()
    }
}

fn members(s: &Value) -> Vec<String> {
    pair(s, PAIR)["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Files `writes` acknowledged that are missing or different in `dump`.
fn missing_in(
    dump: &std::path::Path,
    writes: &[understudy_tests::nscluster::WriteRecord],
) -> Vec<String> {
    writes
        .iter()
        .filter(|w| w.acked)
        .filter(|w| {
            fs::read(dump.join(&w.name)).ok()
                != Some(understudy_tests::nscluster::workload_data(w.index))
        })
        .map(|w| w.name.clone())
        .collect()
}

/// The file server dies while a client writes: a spare is launched (in the
/// volumes' zone) before the failover finishes, gets a fresh volume, becomes
/// the backup, resyncs fully (progress and ETA shown), and the pair is
/// `Healthy` again; every acknowledged write is on the new backup's disk; the
/// dead instance is terminated only then, its volume kept.
#[test]
fn a_dead_file_server_is_replaced_by_a_spare_and_the_pair_is_healthy_again() {
    let mut c = NsCluster::start_with(spares(SpareOptions::default()));
    let _logs = c.keep_logs_on_panic();
    let inv = Invariants::watch(&c);
    let writer: Writer = c.start_writer("w");
    writer.wait_more_acked(10, Duration::from_secs(30));
    let died = Instant::now();
    c.kill_host(0);
    // Sample the status every 100 ms until Healthy with a new member.
    let mut spare_launched_during_failover = None;
    let mut degraded_at = None;
    let mut rebuilding_seen = None;
    let mut eta_seen = None;
    let mut spare_id = String::new();
    let healthy = wait_for(
        "pair Healthy again with a replacement backup",
        Duration::from_secs(180),
        || {
            let s = c.try_status().ok()?;
            let p = pair(&s, PAIR);
            if let Some(sp) = p["spare"].as_object() {
                if !sp["instance_id"].as_str().unwrap_or_default().is_empty() {
                    spare_id = sp["server_id"].as_str().unwrap_or_default().to_string();
                    if spare_launched_during_failover.is_none() {
                        spare_launched_during_failover =
                            Some((p["state"].clone(), sp["zone"].clone()));
                    }
                }
            }
            if p["state"] == "Degraded" && degraded_at.is_none() {
                degraded_at = Some(died.elapsed());
            }
            if p["state"] == "Rebuilding" && rebuilding_seen.is_none() {
                rebuilding_seen = Some(died.elapsed());
            }
            if p["resync"]["eta_ms"].as_u64().is_some() && eta_seen.is_none() {
                eta_seen = Some(p["resync"].clone());
            }
            let m = members(&s);
            (p["state"] == "Healthy" && !m.iter().any(|x| x == FSA) && p["serving"] == FSB)
                .then_some(s)
        },
    );
    let healthy_after = died.elapsed();
    let writes = writer.stop();
    let h = history(&healthy);
    let (state_at_launch, zone) = spare_launched_during_failover.expect("a spare was launched");
    assert!(
        state_at_launch == "Suspect" || state_at_launch == "FailingOver",
        "the spare was launched only in state {state_at_launch}: {h}"
    );
    assert_eq!(zone, "zone-a", "the spare is in the volumes' zone");
    assert!(rebuilding_seen.is_some(), "never Rebuilding: {h}");
    let eta = eta_seen.unwrap_or_else(|| panic!("no resync ETA shown: {h}"));
    assert!(eta["rate_kib_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{eta}");
    let m = members(&healthy);
    assert!(
        m.contains(&spare_id.clone()) || m.iter().any(|x| x.starts_with("fs1-s")),
        "{m:?}"
    );
    let new_backup = m.iter().find(|x| *x != FSB).unwrap().clone();
    assert!(h.contains(&format!("inventory: {new_backup}")), "{h}");
    assert!(h.contains("replaces fs1-fsa"), "{h}");
    // The dead instance is terminated once Healthy; its volume kept.
    let s = c.wait_status("fsa terminated", Duration::from_secs(30), |s| {
        pair(s, PAIR)["retired"][0]["terminated"] == true
    });
    let retired = &pair(&s, PAIR)["retired"][0];
    assert_eq!(retired["server_id"], FSA);
    assert_eq!(retired["volumes"].as_array().unwrap().len(), 1);
    inv.check();
    // Every acknowledged write reads back through the client IP ...
    let acked: Vec<_> = writes.iter().filter(|w| w.acked).collect();
    assert!(
        acked.len() >= 10,
        "only {} writes acknowledged",
        acked.len()
    );
    let check = Writer::verify(&c.client(), &writes, Duration::from_secs(60));
    assert!(
        check.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        check.lost
    );
    // ... and is on the new backup's own disk (protocol C, resync done).
    c.wait_status("new backup in sync", Duration::from_secs(30), |s| {
        understudy_tests::server(s, PAIR, &new_backup)["drbd"]["disk"] == "UpToDate"
            && understudy_tests::server(s, PAIR, &new_backup)["drbd"]["out_of_sync_bytes"] == 0
    });
    let dump = c.dump_volume_of(&new_backup, "after");
    let missing = missing_in(&dump, &writes);
    assert!(
        missing.is_empty(),
        "not on the new backup's disk: {missing:?}"
    );
    eprintln!(
        "death -> Degraded {:?}, -> Rebuilding {:?}, -> Healthy {:?}; resync seen: {eta}; {} writes acknowledged",
        degraded_at,
        rebuilding_seen,
        healthy_after,
        acked.len()
    );
    let volumes: BTreeSet<String> = fs::read_dir(c.dir.path().join("cloud").join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        volumes.len(),
        3,
        "fsa's, fsb's and one new volume: {volumes:?}"
    );
}
