//! Cloud signals through real processes in network namespaces (root only): a
//! scheduled event injected into the local cloud's registry (the stand-in for
//! EC2's `DescribeInstanceStatus` events) on the serving file server makes the
//! leader propose a switchover in status and `explain`; with
//! `[signals] auto_switchover = true` it schedules the switchover itself, which
//! then runs (fsb serves, fsa is its in-sync backup) with `cloud signal` in the
//! audit log.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use understudy_cloud::health::event_codes;
use understudy_cloud::ScheduledEvent;
use understudy_tests::nscluster::{NsCluster, NsOptions, SpareOptions, PAIR};
use understudy_tests::{pair, server, wait_for};

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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A cluster whose local cloud has a registry (spares), with these `[signals]` keys.
fn start(signals: &str) -> NsCluster {
    NsCluster::start_with(NsOptions {
        spares: Some(SpareOptions::default()),
        signals: Some(signals.into()),
        ..NsOptions::default()
    })
}

/// Schedule host maintenance on `host`'s instance in two hours, in the registry
/// every controller's local cloud reads.
fn inject_maintenance(c: &NsCluster, host: &str) -> ScheduledEvent {
    let ev = ScheduledEvent {
        code: event_codes::SYSTEM_MAINTENANCE.into(),
        description: "The instance is scheduled for system maintenance".into(),
        not_before_unix_ms: now_ms() + 2 * 3_600_000,
        not_after_unix_ms: Some(now_ms() + 4 * 3_600_000),
    };
    let cloud = c
        .cloud
        .as_ref()
        .expect("spares: the local cloud has a registry");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(cloud.inject_event(&c.net.ns_name(host), ev.clone()))
        .unwrap_or_else(|e| panic!("inject the event: {e}"));
    ev
}

fn signal(s: &Value) -> String {
    pair(s, PAIR)["signal"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Without `auto_switchover` the controller only proposes: status (JSON and
/// table) and `explain` show the switchover to fsb before the maintenance,
/// and nothing is scheduled or moved.
#[test]
fn a_scheduled_event_on_the_file_server_proposes_a_switchover_in_status_and_explain() {
    let c = start("poll_ms = 300");
    let _logs = c.keep_logs_on_panic();
    let s = c.try_status().unwrap();
    assert_eq!(signal(&s), "", "no event, no signal");
    inject_maintenance(&c, "fsa");
    let s = c.wait_status("the proposal in status", Duration::from_secs(20), |s| {
        signal(s).contains("system-maintenance")
    });
    let line = signal(&s);
    assert!(
        line.starts_with(&format!("switchover to {FSB} before ")),
        "{line}"
    );
    assert!(
        line.contains(&format!("system-maintenance on {FSA}, until ")),
        "{line}"
    );
    assert!(line.contains("understudyctl switchover fs1"), "{line}");
    let (code, out, err) = ctl(&c, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("CLOUD SIGNAL: switchover to {FSB} before")),
        "{out}"
    );
    eprintln!("status:\n{out}");
    let (code, out, err) = ctl(&c, &["explain", PAIR]);
    assert_eq!(code, 0, "{err}");
    eprintln!("explain:\n{out}");
    assert!(
        out.contains(&format!("cloud signal: switchover to {FSB} before")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "cloud health of serving {FSA}: system ok, instance ok, system-maintenance"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "cloud health of standby {FSB}: system ok, instance ok, no event scheduled"
        )),
        "{out}"
    );
    // Only proposed: a few polls later nothing is scheduled and fsa still serves.
    std::thread::sleep(Duration::from_secs(2));
    let s = c.try_status().unwrap();
    let p = pair(&s, PAIR);
    assert_eq!(p["scheduled_switchover"], "", "{p}");
    assert_eq!(p["serving"], FSA);
    assert_eq!(p["state"], "Healthy");
}

/// With `auto_switchover` and no window, the leader schedules the switchover
/// at once and it runs: fsb serves through the client IP, fsa is its in-sync
/// backup, the audit log names `cloud signal (system-maintenance)`; the
/// maintenance, now on the standby, is still shown and moves nothing back.
#[test]
fn with_auto_switchover_the_controller_schedules_the_switchover_and_it_happens() {
    let c = start("poll_ms = 300\nauto_switchover = true");
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("before.txt", b"written before the cloud signal")
        .unwrap();
    inject_maintenance(&c, "fsa");
    let s = c.wait_status("fsb serves, fsa in sync", Duration::from_secs(90), |s| {
        let p = pair(s, PAIR);
        p["serving"] == FSB
            && p["state"] == "Healthy"
            && server(s, PAIR, FSA)["drbd"]["out_of_sync_bytes"] == 0
            && server(s, PAIR, FSA)["drbd"]["disk"] == "UpToDate"
    });
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    assert_eq!(c.ip_holders(), vec!["fsb"]);
    // Read back through the client IP once fsb's grace period is over.
    let data = wait_for("the file through fsb", Duration::from_secs(120), || {
        c.nfs_read("before.txt").ok()
    });
    assert_eq!(data, b"written before the cloud signal");
    assert_eq!(server(&s, PAIR, FSA)["drbd"]["role"], "Secondary");
    let (code, out, err) = ctl(&c, &["--output", "json", "history", PAIR]);
    assert_eq!(code, 0, "{err}");
    let h: Value = serde_json::from_str(&out).unwrap();
    let audit = h["audit"].as_array().unwrap();
    let by = |identity: &str, command: &str| {
        audit.iter().any(|a| {
            a["identity"] == identity
                && a["accepted"] == true
                && a["command"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(command))
        })
    };
    assert!(
        by(
            "cloud signal (system-maintenance)",
            &format!("switchover to {FSB} at ")
        ),
        "{audit:?}"
    );
    assert!(
        by(
            "schedule of cloud signal (system-maintenance)",
            &format!("switchover to {FSB}")
        ),
        "{audit:?}"
    );
    let scheduled = audit
        .iter()
        .filter(|a| a["identity"] == "cloud signal (system-maintenance)")
        .count();
    assert_eq!(scheduled, 1, "scheduled once: {audit:?}");
    // The maintenance is now the standby's: said, and nothing moves back.
    let s = c.wait_status(
        "the standby's event in status",
        Duration::from_secs(10),
        |s| signal(s).starts_with(&format!("{FSA} has its own system-maintenance")),
    );
    assert!(
        signal(&s).contains("no switchover needed"),
        "{}",
        signal(&s)
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = c.try_status().unwrap();
    let p = pair(&s, PAIR);
    assert_eq!(p["serving"], FSB);
    assert_eq!(p["scheduled_switchover"], "", "{p}");
}
