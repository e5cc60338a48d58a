//! Fault tests in network namespaces (root only): single witnesses never fail
//! over (S2), a backup that is not UpToDate is never promoted (S1), and killing the
//! Raft leader in the middle of any failover step still completes the plan exactly
//! once with never two NFS servers (S7, S3).

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;
use understudy_tests::nscluster::{NsCluster, NsOptions, PAIR};
use understudy_tests::{pair, server, wait_for, Cluster};

fn alerts(s: &Value) -> Vec<String> {
    pair(s, PAIR)["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn history(s: &Value) -> String {
    understudy_tests::history_lines(s, PAIR).join("\n")
}

/// A single witness holds: the pair is Suspect with `alert`, and stays served
/// by fsa with no failover, for longer than both witness times.
fn assert_single_witness(c: &NsCluster, alert: &str) {
    let s = c.wait_status(alert, Duration::from_secs(15), |s| {
        pair(s, PAIR)["state"] == "Suspect" && alerts(s).iter().any(|a| a.starts_with(alert))
    });
    assert_eq!(pair(&s, PAIR)["epoch"], 0);
    std::thread::sleep(Duration::from_secs(3));
    let s = c.try_status().expect("status");
    assert_eq!(pair(&s, PAIR)["state"], "Suspect", "{}", history(&s));
    assert_eq!(pair(&s, PAIR)["serving"], "fs1-fsa");
    assert_eq!(pair(&s, PAIR)["epoch"], 0, "no failover may start");
    assert_eq!(c.exporting_hosts(), vec!["fsa"]);
    assert_eq!(c.ip_holders(), vec!["fsa"]);
    assert_eq!(
        c.nfs_read("witness.txt").expect("still served"),
        b"still here"
    );
}

#[test]
fn controller_only_partition_alerts_and_does_not_fail_over() {
    let c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("witness.txt", b"still here").unwrap();
    // fsa can no longer reach the controllers; DRBD to fsb and NFS clients still work.
    c.net.block("fsa", c.net.bridge_addr());
    assert_single_witness(&c, "agent unreachable, data path healthy");
    c.net.unblock("fsa", c.net.bridge_addr());
    c.wait_status("healthy again", Duration::from_secs(20), |s| {
        pair(s, PAIR)["state"] == "Healthy"
    });
}

#[test]
fn replication_only_cut_runs_unprotected_and_does_not_fail_over() {
    let c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("witness.txt", b"still here").unwrap();
    // Only the link between the two servers is cut; both agents reach the controllers.
    c.net.block("fsa", c.net.addr("fsb"));
    assert_single_witness(&c, "replication down, running unprotected");
    c.net.unblock("fsa", c.net.addr("fsb"));
    c.wait_status("healthy again", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Healthy"
    });
}

#[test]
fn a_backup_still_syncing_is_not_promoted_and_the_pair_is_blocked() {
    // Replication throttled to 256 KiB/s, so a resync takes a while.
    let mut c = NsCluster::start_with(NsOptions {
        resync_rate_kib: Some(256),
        // writes into the replicated directories itself
        ..NsOptions::directory()
    });
    let _logs = c.keep_logs_on_panic();
    // Give fsb a brand-new (Inconsistent) disk, as after a storage upgrade: kill
    // its emulator, wipe its metadata and data.
    if let Some(p) = c.hosts[1].emu.take() {
        p.kill();
    }
    fs::remove_dir_all(c.hosts[1].dir.join("drbd-state")).unwrap();
    fs::remove_dir_all(&c.hosts[1].data_dir).unwrap();
    fs::create_dir_all(&c.hosts[1].data_dir).unwrap();
    // Data on the file server to resync: 4 MiB at 256 KiB/s.
    fs::write(c.hosts[0].data_dir.join("bulk.bin"), vec![7u8; 4 << 20]).unwrap();
    c.start_emulator(1);
    c.wait_status("fsb resyncing", Duration::from_secs(20), |s| {
        let b = &server(s, PAIR, "fs1-fsb")["drbd"];
        b["disk"] == "Inconsistent" && b["replication"] == "SyncTarget"
    });
    c.kill_host(0);
    let s = c.wait_status("pair blocked", Duration::from_secs(20), |s| {
        pair(s, PAIR)["state"] == "Blocked"
    });
    let reason = pair(&s, PAIR)["state_reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("S1: not promoting fs1-fsb"), "{reason}");
    assert!(reason.contains("Inconsistent"), "{reason}");
    std::thread::sleep(Duration::from_secs(2));
    let s = c.try_status().unwrap();
    assert_eq!(pair(&s, PAIR)["state"], "Blocked");
    assert_eq!(pair(&s, PAIR)["epoch"], 0, "no failover was started");
    assert_eq!(server(&s, PAIR, "fs1-fsb")["drbd"]["role"], "Secondary");
    assert!(c.exporting_hosts().is_empty());
    assert!(!c.ip_holders().contains(&"fsb"));
}

/// Kill the Raft leader while `step` of a running failover is in progress:
/// before its action runs, or (`after_action`) once its action ran on the host
/// but before its result is committed.
fn leader_killed_during(step: &str) {
    leader_killed(step, false)
}

fn leader_killed(step: &str, after_action: bool) {
    let mut c = NsCluster::start_with(if after_action {
        NsOptions {
            result_pause_ms: 2500,
            ..Default::default()
        }
    } else {
        NsOptions {
            step_pause_ms: 1500,
            ..Default::default()
        }
    });
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("precious.txt", b"acknowledged before the failure")
        .unwrap();
    // No wait: protocol C, the write is on fsb's disk once acknowledged.
    c.kill_host(0);
    let s = c.wait_status(
        &format!("step {step} running"),
        Duration::from_secs(30),
        |s| {
            pair(s, PAIR)["failover"]["steps"]
                .as_array()
                .is_some_and(|st| {
                    st.iter()
                        .any(|x| x["step"] == step && x["status"] == "running")
                })
        },
    );
    let leader = Cluster::leader_index(&s).expect("leader");
    if after_action {
        // Every action here takes well under this (Verify's read ~10 ms, ClaimIp's
        // ARP train ~300 ms); the result is still uncommitted for 2.5 s.
        std::thread::sleep(Duration::from_millis(900));
        let s = c.try_status().expect("status");
        let st = pair(&s, PAIR)["failover"]["steps"]
            .as_array()
            .and_then(|st| st.iter().find(|x| x["step"] == step).cloned())
            .expect("the step");
        assert_eq!(st["status"], "running", "result committed too early: {st}");
    }
    c.kill_controller(leader);
    let killed = Instant::now();
    let mut most_exporting = 0;
    let mut most_holders = 0;
    let s = c.wait_status(
        "failover completed by the new leader",
        Duration::from_secs(60),
        |s| {
            most_exporting = most_exporting.max(c.exporting_hosts().len());
            // Every host counts, the old primary included.
            most_holders = most_holders.max(c.ip_holders().len());
            pair(s, PAIR)["state"] == "Degraded"
        },
    );
    eprintln!(
        "leader killed during {step} (after its action: {after_action}); plan finished {:?} later",
        killed.elapsed()
    );
    assert_ne!(Cluster::leader_index(&s), Some(leader));
    assert!(most_exporting <= 1, "two NFS servers at once");
    assert!(most_holders <= 1, "two holders of the client IP");
    assert_eq!(pair(&s, PAIR)["serving"], "fs1-fsb");
    assert_eq!(pair(&s, PAIR)["epoch"], 1, "exactly one failover");
    let h = history(&s);
    assert_eq!(h.matches("FailingOver -> Degraded").count(), 1, "{h}");
    for st in [
        "Confirm", "Fence", "Promote", "Mount", "Export", "ClaimIp", "Verify",
    ] {
        assert_eq!(
            h.matches(&format!("step {st} done in")).count(),
            1,
            "{st}:\n{h}"
        );
    }
    assert!(
        h.contains(&format!("step {step} started (attempt 2")),
        "{h}"
    );
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    assert_eq!(c.ip_holders(), vec!["fsb"]);
    let got = wait_for("read after failover", Duration::from_secs(15), || {
        c.nfs_read("precious.txt").ok()
    });
    assert_eq!(got, b"acknowledged before the failure");
}

#[test]
fn leader_killed_during_confirm() {
    leader_killed_during("Confirm");
}
#[test]
fn leader_killed_during_fence() {
    leader_killed_during("Fence");
}
#[test]
fn leader_killed_during_promote() {
    leader_killed_during("Promote");
}
#[test]
fn leader_killed_during_mount() {
    leader_killed_during("Mount");
}
#[test]
fn leader_killed_during_export() {
    leader_killed_during("Export");
}
#[test]
fn leader_killed_during_claim_ip() {
    leader_killed_during("ClaimIp");
}
#[test]
fn leader_killed_during_verify() {
    leader_killed_during("Verify");
}
#[test]
fn leader_killed_after_confirm_ran() {
    leader_killed("Confirm", true);
}
#[test]
fn leader_killed_after_fence_ran() {
    leader_killed("Fence", true);
}
#[test]
fn leader_killed_after_promote_ran() {
    leader_killed("Promote", true);
}
#[test]
fn leader_killed_after_mount_ran() {
    leader_killed("Mount", true);
}
#[test]
fn leader_killed_after_export_ran() {
    leader_killed("Export", true);
}
#[test]
fn leader_killed_after_claim_ip_ran() {
    leader_killed("ClaimIp", true);
}
#[test]
fn leader_killed_after_verify_ran() {
    leader_killed("Verify", true);
}

#[test]
fn a_leader_without_quorum_takes_no_action() {
    let mut c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("precious.txt", b"kept").unwrap();
    let s = c.try_status().unwrap();
    let leader = Cluster::leader_index(&s).expect("leader");
    // Freeze both followers: the leader keeps running but has no quorum (S6).
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for f in &followers {
        c.controllers.signal(*f, libc::SIGSTOP);
    }
    c.kill_host(0);
    std::thread::sleep(Duration::from_secs(6));
    // Nothing happened on the backup: still Secondary, not exporting, no client IP.
    let out = std::process::Command::new(&c.hosts[1].drbdadm)
        .args(["role", "r0"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Secondary");
    assert!(c.exporting_hosts().is_empty());
    assert!(c.ip_holders().is_empty() || c.ip_holders() == vec!["fsa"]);
    assert!(
        c.try_status().is_err(),
        "a leader without quorum must not answer reads"
    );
    // Quorum back: the failover happens, once.
    for f in &followers {
        c.controllers.signal(*f, libc::SIGCONT);
    }
    let s = c.wait_status(
        "failover after quorum returns",
        Duration::from_secs(30),
        |s| pair(s, PAIR)["state"] == "Degraded",
    );
    assert_eq!(pair(&s, PAIR)["epoch"], 1);
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    let got = wait_for("read after failover", Duration::from_secs(15), || {
        c.nfs_read("precious.txt").ok()
    });
    assert_eq!(got, b"kept");
}
