//! Operator commands through `understudyctl` against a namespace cluster (root
//! only): switchover under writes, refusals while the backup resyncs, a forced
//! promotion in the audit log, pause / resume, a maintenance window, and a
//! command that survives the death of the leader that accepted it.

use std::time::{Duration, Instant};

use serde_json::Value;
use understudy_tests::nscluster::{Invariants, NsCluster, Writer, PAIR};
use understudy_tests::{pair, server, wait_for, Cluster, RESOURCE};

const FSA: &str = "fs1-fsa";
const FSB: &str = "fs1-fsb";

/// `understudyctl ARGS` against the cluster: (exit code, stdout, stderr).
fn ctl(c: &NsCluster, args: &[&str]) -> (i32, String, String) {
    let o = c
        .controllers
        .ctl()
        .args(args)
        .output()
        .expect("understudyctl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn history_json(c: &NsCluster) -> Value {
    let (code, out, err) = ctl(c, &["--output", "json", "history", PAIR]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn lines(h: &Value) -> String {
    h["pairs"][0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest time the client went without an acknowledged write, from the
/// writes' completion times.
fn longest_stall(writes: &[understudy_tests::nscluster::WriteRecord]) -> Duration {
    let mut done: Vec<Instant> = writes
        .iter()
        .filter(|w| w.acked)
        .map(|w| w.finished)
        .collect();
    done.sort();
    done.windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// A planned switchover while a client writes back to back: no acknowledged
/// write lost; fsb serves NFS through the client IP, fsa is its in-sync backup;
/// the file written before is intact; the history has each step's timing.
#[test]
fn a_switchover_under_writes_loses_nothing_and_swaps_the_roles() {
    let c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("before.txt", b"written before the switchover")
        .unwrap();
    let inv = Invariants::watch(&c);
    let writer = c.start_writer("sw");
    writer.wait_more_acked(10, Duration::from_secs(30));
    let t0 = Instant::now();
    let (code, out, err) = ctl(&c, &["switchover", PAIR]);
    assert_eq!(code, 0, "{out}{err}");
    let s = c.wait_status("fsb serves, fsa in sync", Duration::from_secs(60), |s| {
        let p = pair(s, PAIR);
        p["serving"] == FSB
            && p["state"] == "Healthy"
            && server(s, PAIR, FSA)["drbd"]["out_of_sync_bytes"] == 0
    });
    let took = t0.elapsed();
    let more = writer.acked() + 5;
    writer.wait_more_acked(more - writer.acked(), Duration::from_secs(30));
    let client = writer.client();
    let writes = writer.stop();
    inv.check();
    let check = Writer::verify(&client, &writes, Duration::from_secs(60));
    assert!(
        check.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        check.lost
    );
    assert_eq!(
        c.nfs_read("before.txt").unwrap(),
        b"written before the switchover"
    );
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    assert_eq!(c.ip_holders(), vec!["fsb"]);
    let a = server(&s, PAIR, FSA);
    assert_eq!(a["drbd"]["role"], "Secondary");
    assert_eq!(a["drbd"]["disk"], "UpToDate");
    let h = lines(&history_json(&c));
    for step in [
        "Check",
        "ReleaseOld",
        "UnexportOld",
        "UnmountOld",
        "DemoteOld",
        "Promote",
        "Mount",
        "Export",
        "ClaimIp",
        "Verify",
    ] {
        assert!(h.contains(&format!("step {step} done in ")), "{step}: {h}");
    }
    assert!(h.contains("switched over from fs1-fsa to fs1-fsb"), "{h}");
    assert!(
        !h.contains("step Fence"),
        "a switchover fences nothing: {h}"
    );
    for w in writes.iter().filter(|w| {
        w.finished + Duration::from_secs(2) > t0 && w.started < t0 + took + Duration::from_secs(12)
    }) {
        eprintln!(
            "  write {} started {:+.2}s took {:.2}s {}",
            w.index,
            w.started.saturating_duration_since(t0).as_secs_f64()
                - t0.saturating_duration_since(w.started).as_secs_f64(),
            (w.finished - w.started).as_secs_f64(),
            if w.acked { "acked" } else { "FAILED" }
        );
    }
    eprintln!(
        "switchover: {} writes acknowledged, 0 lost; the client's longest stall {:?}; Healthy again {:?} after the command",
        check.acked,
        longest_stall(&writes),
        took
    );
}

fn set_resync_rate(c: &NsCluster, i: usize, kib: u64) {
    let path = &c.hosts[i].emu_config;
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str(&format!("\n[tuning]\nresync_rate_kib = {kib}\n"));
    std::fs::write(path, text).unwrap();
    let o = c.drbdadm(i, &["adjust", RESOURCE]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// While the backup resyncs, a switchover and a promotion are refused, naming
/// its disk state and progress; `promote --force --accept-data-loss` goes
/// ahead and the audit log says who forced it. Refusals are audited too.
#[test]
fn switchover_and_promote_are_refused_while_the_backup_resyncs_and_a_forced_promote_is_audited() {
    let c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    set_resync_rate(&c, 0, 32);
    set_resync_rate(&c, 1, 32);
    // Replication cut while fsa goes on writing: fsb falls behind.
    c.net.block("fsa", c.net.addr("fsb"));
    for i in 0..20 {
        c.nfs_write(
            &format!("cut-{i}.txt"),
            format!("written during the cut #{i}").as_bytes(),
        )
        .unwrap();
    }
    c.net.unblock("fsa", c.net.addr("fsb"));
    c.wait_status("fsb resyncing", Duration::from_secs(30), |s| {
        server(s, PAIR, FSB)["drbd"]["replication"] == "SyncTarget"
    });
    let (code, _, err) = ctl(&c, &["switchover", PAIR]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("Inconsistent") && err.contains("SyncTarget") && err.contains("% done"),
        "{err}"
    );
    let (code, _, err) = ctl(&c, &["promote", PAIR]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("S1") && err.contains("Inconsistent") && err.contains("% done"),
        "{err}"
    );
    let s = c.try_status().unwrap();
    assert_eq!(pair(&s, PAIR)["epoch"], 0, "refusals change nothing");
    let (code, out, err) = ctl(
        &c,
        &[
            "--output",
            "json",
            "promote",
            PAIR,
            "--force",
            "--accept-data-loss",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    c.wait_status(
        "fsb serves after the forced promotion",
        Duration::from_secs(60),
        |s| {
            let p = pair(s, PAIR);
            p["serving"] == FSB && p["failover"].is_null()
        },
    );
    let h = history_json(&c);
    let audit = h["audit"].as_array().unwrap();
    let forced = audit
        .iter()
        .find(|a| {
            a["command"]
                .as_str()
                .unwrap()
                .contains("--force --accept-data-loss")
        })
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(forced["accepted"], true);
    assert!(forced["identity"].as_str().unwrap().len() > 3);
    let refused: Vec<&Value> = audit.iter().filter(|a| a["accepted"] == false).collect();
    assert_eq!(refused.len(), 2, "{audit:?}");
    assert!(
        lines(&h).contains("forced: S1 waived, data loss accepted (S8)"),
        "{}",
        lines(&h)
    );
}

/// A paused pair does not fail over when its file server dies; resumed, it does.
#[test]
fn a_paused_pair_does_not_fail_over_until_resumed() {
    let mut c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    let (code, _, err) = ctl(&c, &["pause", PAIR]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ctl(&c, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("state Paused"), "{out}");
    c.kill_host(0);
    std::thread::sleep(Duration::from_secs(4));
    let s = c.try_status().unwrap();
    assert_eq!(pair(&s, PAIR)["state"], "Paused");
    assert_eq!(pair(&s, PAIR)["epoch"], 0, "no failover while paused");
    let (code, _, err) = ctl(&c, &["resume", PAIR]);
    assert_eq!(code, 0, "{err}");
    c.wait_status("failed over after resume", Duration::from_secs(30), |s| {
        let p = pair(s, PAIR);
        p["serving"] == FSB && p["state"] == "Degraded"
    });
}

/// In a maintenance window a planned DRBD disconnect is no alarm and fails
/// nothing over; when the window ends the alarm is back.
#[test]
fn a_maintenance_window_silences_a_planned_disconnect_until_it_ends() {
    let c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    let (code, _, err) = ctl(
        &c,
        &[
            "maintenance",
            PAIR,
            "--for",
            "8s",
            "--reason",
            "snapshot of the backup",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let o = c.drbdadm(1, &["disconnect", RESOURCE]);
    assert!(o.status.success());
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let s = c.try_status().unwrap();
        let p = pair(&s, PAIR);
        assert_eq!(p["state"], "Healthy", "{p}");
        assert!(
            p["alerts"].as_array().unwrap().is_empty(),
            "{}",
            p["alerts"]
        );
        assert!(
            p["maintenance"].as_str().unwrap().contains("snapshot"),
            "{p}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The alarm is back: an alert, or (the controller reconnects the backup
    // within milliseconds) the state change it raised, in the history.
    let s = c.wait_status(
        "alarm back after the window",
        Duration::from_secs(20),
        |s| {
            let p = pair(s, PAIR);
            let raised = p["history"].as_array().unwrap().iter().any(|h| {
                h["event"]
                    .as_str()
                    .unwrap_or("")
                    .contains("-> Suspect: replication down")
            });
            p["maintenance"] == "" && (!p["alerts"].as_array().unwrap().is_empty() || raised)
        },
    );
    assert_eq!(pair(&s, PAIR)["epoch"], 0);
    // Out of the window, the controller reconnects the StandAlone backup itself
    // (it resyncs from the file server) and the pair is Healthy again.
    c.wait_status("Healthy again", Duration::from_secs(40), |s| {
        pair(s, PAIR)["state"] == "Healthy"
    });
}

/// A command accepted just before its leader is killed is in the history the
/// next leader serves; an unknown pair is exit 5; explain names the rules.
#[test]
fn a_command_accepted_before_the_leader_dies_is_still_in_the_history() {
    let mut c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    let s = c.try_status().unwrap();
    let leader = Cluster::leader_index(&s).unwrap();
    let (code, _, err) = ctl(&c, &["ack", PAIR]);
    assert_eq!(code, 0, "{err}");
    c.kill_controller(leader);
    let audit = wait_for(
        "a new leader serves the history",
        Duration::from_secs(20),
        || {
            let (code, out, _) = ctl(&c, &["--output", "json", "history", PAIR]);
            (code == 0).then(|| serde_json::from_str::<Value>(&out).unwrap()["audit"].clone())
        },
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["command"] == "ack" && a["accepted"] == true),
        "{audit}"
    );
    let (code, _, err) = ctl(&c, &["pause", "no-such-pair"]);
    assert_eq!(code, 5, "{err}");
    let (code, out, _) = ctl(&c, &["explain", PAIR]);
    assert_eq!(code, 0);
    assert!(
        out.contains("S2 witness 1") && out.contains("S1: standby"),
        "{out}"
    );
}
