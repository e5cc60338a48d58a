//! Safety holes closed, each proved through real processes in network namespaces
//! (root only): a backup that missed writes is never promoted (S1); a leader cut
//! off from its peers stands down so the others can fail over (S6); a dead backup
//! is not `Healthy` and its stale report is no witness; epochs never go back (S4).

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;
use understudy_tests::nscluster::{Invariants, NsCluster, NsOptions, PAIR};
use understudy_tests::{pair, server, wait_for, Cluster};

const FSA: &str = "fs1-fsa";
const FSB: &str = "fs1-fsb";

fn history(s: &Value) -> String {
    understudy_tests::history_lines(s, PAIR).join("\n")
}

fn reason(s: &Value) -> String {
    pair(s, PAIR)["state_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Issue item 1: replication cut, the file server goes on acknowledging writes,
/// then dies. The backup still calls itself UpToDate and its last connected
/// report was in sync, but it misses those writes: it must not be promoted.
#[test]
fn a_backup_that_missed_acknowledged_writes_is_never_promoted() {
    // Reads the replicated directories itself (the block-mode version of this
    // test is in ns_failover.rs).
    let mut c = NsCluster::start_with(NsOptions::directory());
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("before.txt", b"replicated before the cut")
        .unwrap();
    c.wait_replicated(Duration::from_secs(4), Duration::from_secs(30));
    let inv = Invariants::watch(&c);
    // Only the replication link is cut; both agents still reach the controllers.
    c.net.block("fsa", c.net.addr("fsb"));
    let s = c.wait_status("fsb marked outdated", Duration::from_secs(15), |s| {
        pair(s, PAIR)["outdated"]["server"] == FSB
    });
    let o = &pair(&s, PAIR)["outdated"];
    assert!(
        o["primary_alive_unix_ms"].as_i64().unwrap() >= o["lost_peer_unix_ms"].as_i64().unwrap(),
        "{o}"
    );
    // fsa's DRBD suspended its I/O and ran the fence-peer handler, which got
    // the mark committed (exit 4) before I/O resumed.
    let log = wait_for(
        "fence-peer handler ran on fsa",
        Duration::from_secs(10),
        || {
            fs::read_to_string(c.hosts[0].dir.join("emu.log"))
                .ok()
                .filter(|l| l.contains("fence-peer helper returned 4"))
        },
    );
    assert!(log.contains("susp-io( no -> fencing )"), "{log}");
    let now = c.try_status().unwrap();
    assert!(
        history(&now).contains("DRBD fence-peer handler on fs1-fsa"),
        "{}",
        history(&now)
    );
    // The controller told fsb's DRBD so (drbdadm outdate through its agent).
    c.wait_status("fsb's disk Outdated", Duration::from_secs(15), |s| {
        server(s, PAIR, FSB)["drbd"]["disk"] == "Outdated"
    });
    // Clients go on writing through the client IP for a few seconds.
    let mut acked = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    for i in 0.. {
        if Instant::now() > until {
            break;
        }
        let name = format!("after-cut-{i}.txt");
        let body = format!("write {i} acknowledged while unprotected");
        if c.nfs_write_once(&name, body.as_bytes()).is_ok() {
            acked.push((name, body));
        }
    }
    assert!(acked.len() >= 5, "only {} writes acknowledged", acked.len());
    c.kill_host(0);
    let s = c.wait_status("pair blocked", Duration::from_secs(20), |s| {
        pair(s, PAIR)["state"] == "Blocked"
    });
    let why = reason(&s);
    assert!(
        why.starts_with("S1: not promoting fs1-fsb automatically: it is outdated since "),
        "{why}"
    );
    assert!(why.contains("was still alive at "), "{why}");
    // Nothing is promoted, exported or moved, for longer than a failover takes.
    std::thread::sleep(Duration::from_secs(3));
    let s = c.try_status().unwrap();
    assert_eq!(pair(&s, PAIR)["state"], "Blocked", "{}", history(&s));
    assert_eq!(pair(&s, PAIR)["epoch"], 0, "no failover was started");
    assert_eq!(server(&s, PAIR, FSB)["drbd"]["role"], "Secondary");
    assert!(c.exporting_hosts().is_empty());
    // Never moved: still configured on the dead server only.
    assert_eq!(c.ip_holders(), vec!["fsa"]);
    inv.check();
    // Every acknowledged write is on the dead server's disk.
    for (name, body) in &acked {
        let got = fs::read_to_string(c.hosts[0].data_dir.join(name))
            .unwrap_or_else(|e| panic!("acknowledged {name} lost from fsa's disk: {e}"));
        assert_eq!(&got, body);
    }
    // And fsb does not have them: promoting it would have lost them.
    let missing = acked
        .iter()
        .filter(|(n, _)| !c.hosts[1].data_dir.join(n).exists())
        .count();
    assert!(missing > 0, "fsb has every write: the cut did not cut");
}

/// Issue item 2: the leader is cut off from the other two controllers while the
/// agents still reach all three, and the file server dies. The cut-off leader
/// must stop leading (redirect its agents, send nothing), so the new leader hears
/// both agents and fails over: once.
#[test]
fn a_leader_cut_off_from_its_peers_stands_down_and_the_others_fail_over() {
    let mut c = NsCluster::start_with(NsOptions {
        controllers_in_namespaces: true,
        ..Default::default()
    });
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("precious.txt", b"kept").unwrap();
    let s = c.try_status().unwrap();
    let old = Cluster::leader_index(&s).expect("leader");
    let inv = Invariants::watch(&c);
    c.partition_controller(old);
    let t0 = Instant::now();
    c.kill_host(0);
    let s = c.wait_status(
        "failover by the majority side",
        Duration::from_secs(30),
        |s| pair(s, PAIR)["state"] == "Degraded",
    );
    let took = t0.elapsed();
    eprintln!(
        "partitioned leader {}: failover done {took:?} after the death",
        old + 1
    );
    let new = Cluster::leader_index(&s).expect("new leader");
    assert_ne!(
        new, old,
        "the cut-off node cannot be the one that failed over"
    );
    assert_eq!(pair(&s, PAIR)["epoch"], 1, "exactly one failover");
    assert_eq!(pair(&s, PAIR)["serving"], FSB);
    let h = history(&s);
    assert_eq!(h.matches("FailingOver -> Degraded").count(), 1, "{h}");
    // A failover takes about 1.5 s; one election adds about 1.5 s more. Far less
    // than "for as long as the partition lasts".
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // The cut-off node does not answer as a leader.
    let alone = c.controllers.status_at(&[c.controllers.addrs[old].clone()]);
    assert!(
        alone.is_err()
            || alone
                .as_ref()
                .is_ok_and(|s| Cluster::leader_index(s) != Some(old)),
        "{alone:?}"
    );
    let got = wait_for("read after failover", Duration::from_secs(15), || {
        c.nfs_read("precious.txt").ok()
    });
    assert_eq!(got, b"kept");
    c.heal_controller(old);
    std::thread::sleep(Duration::from_secs(2));
    let s = c.try_status().unwrap();
    assert_eq!(pair(&s, PAIR)["epoch"], 1, "{}", history(&s));
    inv.check();
    assert_eq!(c.ip_holders(), vec!["fsb"]);
}

/// Issue item 7: the backup host dies. The pair is not Healthy (serving without
/// protection), fsb's last report is marked stale, and when the file server then
/// dies too, nothing claims the dead backup "still replicates".
#[test]
fn a_dead_backup_is_degraded_and_its_last_report_is_stale() {
    let mut c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    c.kill_host(1);
    let s = c.wait_status("pair degraded", Duration::from_secs(15), |s| {
        pair(s, PAIR)["state"] == "Degraded"
    });
    let why = reason(&s);
    assert!(why.starts_with("backup fs1-fsb is gone"), "{why}");
    assert!(
        why.contains("serving from fs1-fsa without protection"),
        "{why}"
    );
    let b = server(&s, PAIR, FSB);
    assert_eq!(b["stale"], true, "{b}");
    assert!(b["silent_ms"].as_u64().unwrap() > 1000, "{b}");
    assert_eq!(server(&s, PAIR, FSA)["stale"], false);
    // The table says so too.
    let out = c.controllers.ctl().arg("status").output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("STALE"), "{table}");
    assert!(table.contains("fs1-fsb: nothing heard for"), "{table}");
    // Then the file server dies: no failover to a dead backup, no false claim.
    c.kill_host(0);
    std::thread::sleep(Duration::from_secs(4));
    let s = c.try_status().unwrap();
    assert_eq!(pair(&s, PAIR)["state"], "Degraded", "{}", history(&s));
    assert_eq!(pair(&s, PAIR)["epoch"], 0);
    let decision = pair(&s, PAIR)["decision"].as_str().unwrap_or_default();
    assert!(!decision.contains("still replicates"), "{decision}");
    let alerts = pair(&s, PAIR)["alerts"].to_string();
    assert!(!alerts.contains("still replicates"), "{alerts}");
}

/// Issue item 4: after a failover, the controllers restart with a changed
/// inventory; the epoch must not go back (the agents hold it and would refuse
/// every command), so a second failover still works.
#[test]
fn epochs_never_go_back_and_a_second_failover_works_after_an_inventory_change() {
    let mut c = NsCluster::start_with(NsOptions {
        flap_holdoff_ms: Some(0),
        ..Default::default()
    });
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("one.txt", b"before the first failover")
        .unwrap();
    c.kill_host(0);
    c.wait_status("first failover", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Degraded" && pair(s, PAIR)["serving"] == FSB
    });
    c.revive_host(0);
    c.wait_status("fsa back as the backup", Duration::from_secs(60), |s| {
        pair(s, PAIR)["state"] == "Healthy"
    });
    // All controllers down; the inventory changes (volumes listed); all back.
    for i in 0..3 {
        c.kill_controller(i);
    }
    for cfg in &c.controllers.configs {
        let text = fs::read_to_string(cfg).unwrap();
        let changed = text.replace(
            "zone = \"zone-a\", instance_id",
            "zone = \"zone-a\", volumes = [\"vol-test-1\"], instance_id",
        );
        assert_ne!(text, changed);
        fs::write(cfg, changed).unwrap();
    }
    for i in 0..3 {
        c.start_controller(i);
    }
    let s = c.wait_status(
        "back, healthy, inventory updated",
        Duration::from_secs(30),
        |s| {
            pair(s, PAIR)["state"] == "Healthy"
                && history(s).contains("inventory updated from configuration")
        },
    );
    assert_eq!(pair(&s, PAIR)["epoch"], 1, "{}", history(&s));
    assert_eq!(pair(&s, PAIR)["serving"], FSB);
    c.nfs_write("two.txt", b"before the second failover")
        .unwrap();
    c.kill_host(1);
    let s = c.wait_status("second failover", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Degraded" && pair(s, PAIR)["serving"] == FSA
    });
    assert_eq!(pair(&s, PAIR)["epoch"], 2, "{}", history(&s));
    for (f, want) in [
        ("one.txt", &b"before the first failover"[..]),
        ("two.txt", &b"before the second failover"[..]),
    ] {
        let got = wait_for(
            "read after the second failover",
            Duration::from_secs(15),
            || c.nfs_read(f).ok(),
        );
        assert_eq!(got, want);
    }
}
