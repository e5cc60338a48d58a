//! S10 "Stand down", end to end in network namespaces (root only).
//!
//! A fence that isolates but does not kill: the file server fsa is frozen
//! (SIGSTOP on every process of its namespace, as a hung VM), the failover runs
//! with the local cloud's `kill_processes = false` (the client IP is taken away and
//! the cable cut, but the forced stop never lands, like an EC2 stop still pending),
//! then fsa is thawed: still DRBD Primary, mounted and exporting, with a stale epoch
//! and data that diverged from the new file server's. Its network comes back and
//! the controller must stand it down (unexport, unmount, demote, reconnect
//! discarding its data) before it rejoins as an in-sync backup.
//!
//! A background thread samples every 100 ms for the whole scenario, the old file
//! server included: never the client IP on two hosts whose cable is in, never two
//! NFS servers a client can reach (an exporter behind a cut cable, or one whose
//! traffic from the client is dropped, is not reachable).

use std::collections::BTreeSet;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use understudy_tests::nscluster::{link_up, serving_ok, NsCluster, NsOptions, PAIR};
use understudy_tests::{pair, server, wait_for};

/// One host as the sampler sees it.
#[derive(Clone)]
struct Probe {
    name: &'static str,
    ns: String,
    veth: String,
}

/// What one sample found.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    /// How long taking it took.
    took: Duration,
    /// Hosts with the client IP configured and their cable in.
    ip_up: Vec<&'static str>,
    /// Hosts running an NFS server (whatever their cable).
    exporting: Vec<&'static str>,
    /// Hosts running an NFS server a client can reach: cable in, client not blocked.
    reachable: Vec<&'static str>,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Sample>>>,
}

fn has_ip(ns: &str, ip: &str) -> bool {
    understudy_tests::netns::run("ip", &["-n", ns, "-o", "-4", "addr", "show"])
        .map(|o| o.contains(&format!(" {ip}/")))
        .unwrap_or(false)
}

fn runs_ganesha(ns: &str) -> bool {
    understudy_tests::netns::run("ip", &["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .any(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().starts_with("ganesha"))
                .unwrap_or(false)
        })
}

impl Sampler {
    /// Sample every 100 ms until [`Sampler::finish`]. `client_blocked` names the
    /// hosts whose traffic from the client is dropped at the moment.
    fn start(
        hosts: Vec<Probe>,
        client_ip: String,
        client_blocked: Arc<Mutex<BTreeSet<&'static str>>>,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let tick = Instant::now();
                let mut s = Sample {
                    at: t0.elapsed(),
                    took: Duration::ZERO,
                    ip_up: vec![],
                    exporting: vec![],
                    reachable: vec![],
                };
                let blocked = client_blocked.lock().unwrap().clone();
                for h in &hosts {
                    let up = link_up(&h.veth);
                    if up && has_ip(&h.ns, &client_ip) {
                        s.ip_up.push(h.name);
                    }
                    if runs_ganesha(&h.ns) {
                        s.exporting.push(h.name);
                        if up && !blocked.contains(h.name) {
                            s.reachable.push(h.name);
                        }
                    }
                }
                s.took = tick.elapsed();
                samples.push(s);
                std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
            }
            samples
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("sampler thread")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn alerts(s: &Value) -> Vec<String> {
    strings(&pair(s, PAIR)["alerts"])
}

fn history(s: &Value) -> Vec<String> {
    understudy_tests::history_lines(s, PAIR)
}

/// Whether `server_id` reports no serving state at all (Secondary, nothing
/// mounted, nothing exported, no client IP).
fn serves_nothing(s: &Value, server_id: &str) -> bool {
    let v = server(s, PAIR, server_id);
    v["drbd"]["role"] == "Secondary"
        && v["host"]["mounted"] != true
        && v["host"]["client_ip_present"] != true
        && v["host"]["exports"].as_array().is_none_or(|e| e.is_empty())
}

#[test]
fn a_thawed_old_primary_is_stood_down_and_returns_as_an_in_sync_backup() {
    let c = NsCluster::start_with(NsOptions {
        fence_keeps_processes: true,
        // inspects the replicated directories itself
        ..NsOptions::directory()
    });
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("before.txt", b"written before the freeze")
        .expect("write through NFS");
    c.wait_replicated(Duration::from_secs(4), Duration::from_secs(30));

    let client_blocked = Arc::new(Mutex::new(BTreeSet::new()));
    let probes: Vec<Probe> = c
        .hosts
        .iter()
        .map(|h| Probe {
            name: h.name,
            ns: c.net.ns_name(h.name),
            veth: c.net.root_veth(h.name),
        })
        .collect();
    let sampler = Sampler::start(probes, c.client_ip.to_string(), client_blocked.clone());
    let mut seen_history: Vec<String> = Vec::new();
    let mut note = |s: &Value| {
        for l in history(s) {
            if !seen_history.contains(&l) {
                seen_history.push(l);
            }
        }
    };

    // 1. fsa hangs; the failover runs; the fence isolates it without killing.
    let t0 = Instant::now();
    c.freeze_host(0);
    let s = c.wait_status("failover to fsb", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Degraded" && pair(s, PAIR)["serving"] == "fs1-fsb"
    });
    note(&s);
    eprintln!("failover done {:?} after the freeze", t0.elapsed());
    assert!(serving_ok(&s, "fs1-fsb"), "{s}");
    assert_eq!(pair(&s, PAIR)["epoch"], 1);
    assert!(!c.link_up(0), "the fence cut fsa's cable");
    assert_eq!(
        c.exporting_hosts(),
        vec!["fsa", "fsb"],
        "the fence did not kill fsa's (frozen) NFS server"
    );
    // Until fsa is stood down, the status says so loudly, from its last report.
    let s = c.wait_status(
        "S10 alert for the unreachable old primary",
        Duration::from_secs(5),
        |s| {
            alerts(s).iter().any(|a| {
                a.starts_with("STANDBY SERVING: fs1-fsa was Primary/mounted/exporting")
                    && a.contains("its agent is unreachable")
            })
        },
    );
    note(&s);

    // 2. New data on the new file server only.
    c.nfs_write("after.txt", b"written to fsb after the failover")
        .expect("write through NFS after the failover");

    // 3. fsa thaws behind its cut cable: still Primary, mounted, exporting, and it
    //    writes on its own (its data diverges from fsb's).
    c.thaw_host(0);
    std::thread::sleep(Duration::from_secs(1));
    let role = c.drbdadm(0, &["role", "r0"]);
    assert_eq!(
        String::from_utf8_lossy(&role.stdout).trim(),
        "Primary",
        "the thawed old primary is still DRBD Primary"
    );
    assert!(c.exporting_hosts().contains(&"fsa"));
    fs::write(
        c.hosts[0].data_dir.join("stale.txt"),
        b"written by the stale primary",
    )
    .unwrap();
    let epoch_file = c.hosts[0].dir.join("agent-state").join("highest-epoch");
    let stale_epoch = fs::read_to_string(&epoch_file).unwrap_or_default();
    assert!(
        stale_epoch.trim().is_empty() || stale_epoch.starts_with("0 "),
        "fsa has not learnt the new epoch yet: {stale_epoch:?}"
    );

    // 4. Its network comes back: the controllers and fsb reach it again; the
    //    client does not until it is stood down (clients reach NFS through the
    //    client IP, which is on fsb).
    let client_addr = c.net.addr("client");
    c.net.block("fsa", client_addr);
    client_blocked.lock().unwrap().insert("fsa");
    let healed = Instant::now();
    c.net.heal("fsa");
    let mut alert_seen = false;
    let s = c.wait_status("fsa stood down", Duration::from_secs(30), |s| {
        note(s);
        alert_seen |= alerts(s)
            .iter()
            .any(|a| a.starts_with("STANDBY SERVING: fs1-fsa is "));
        serves_nothing(s, "fs1-fsa")
    });
    note(&s);
    eprintln!(
        "fsa stood down {:?} after its cable came back (reachable-alert seen: {alert_seen})",
        healed.elapsed()
    );
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    c.net.unblock("fsa", client_addr);
    client_blocked.lock().unwrap().remove("fsa");

    // 5. It resynchronises from fsb, discarding its own data: the pair is Healthy.
    let s = c.wait_status(
        "pair Healthy with fsa an in-sync backup",
        Duration::from_secs(60),
        |s| {
            note(s);
            let a = &server(s, PAIR, "fs1-fsa")["drbd"];
            pair(s, PAIR)["state"] == "Healthy"
                && a["role"] == "Secondary"
                && a["disk"] == "UpToDate"
                && a["connection"] == "Connected"
                && a["replication"] == "Established"
        },
    );
    note(&s);
    c.wait_replicated(Duration::from_secs(2), Duration::from_secs(30));
    let samples = sampler.finish();

    // The invariants, over the whole scenario.
    let two_ips: Vec<&Sample> = samples.iter().filter(|s| s.ip_up.len() > 1).collect();
    let two_nfs: Vec<&Sample> = samples.iter().filter(|s| s.reachable.len() > 1).collect();
    let both: Vec<&Sample> = samples.iter().filter(|s| s.exporting.len() > 1).collect();
    eprintln!(
        "{} samples; {} with two NFS servers running (one behind a cut cable or unreachable to the client), from {:?} to {:?}",
        samples.len(),
        both.len(),
        both.first().map(|s| s.at),
        both.last().map(|s| s.at),
    );
    assert!(samples.len() > 50, "only {} samples", samples.len());
    let slow: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.took > Duration::from_millis(500))
        .collect();
    assert!(slow.is_empty(), "samples not taken every 100 ms: {slow:?}");
    assert!(
        samples.iter().any(|s| s.exporting.len() > 1),
        "the scenario never had the stale NFS server running: it tested nothing"
    );
    assert!(
        two_ips.is_empty(),
        "client IP on two hosts with their cable in: {two_ips:?}"
    );
    assert!(
        two_nfs.is_empty(),
        "two NFS servers reachable by the client: {two_nfs:?}"
    );

    // The end state: one server, fsb; fsa an in-sync backup at the new epoch.
    let s = c.try_status().expect("status");
    assert_eq!(pair(&s, PAIR)["state"], "Healthy");
    assert_eq!(pair(&s, PAIR)["serving"], "fs1-fsb");
    assert_eq!(pair(&s, PAIR)["epoch"], 1, "no second failover");
    assert!(
        !alerts(&s).iter().any(|a| a.starts_with("STANDBY SERVING")),
        "{:?}",
        alerts(&s)
    );
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    assert_eq!(c.ip_holders(), vec!["fsb"]);
    let learnt = fs::read_to_string(&epoch_file).expect("fsa's persisted epoch");
    assert!(
        learnt.starts_with("1 "),
        "fsa learnt the new epoch: {learnt:?}"
    );
    // fsb's data on fsa; fsa's divergent write discarded.
    let on_fsa = |f: &str| fs::read(c.hosts[0].data_dir.join(f)).ok();
    assert_eq!(
        wait_for("after.txt on fsa", Duration::from_secs(10), || on_fsa(
            "after.txt"
        )),
        b"written to fsb after the failover"
    );
    assert_eq!(
        on_fsa("before.txt").as_deref(),
        Some(&b"written before the freeze"[..])
    );
    assert_eq!(
        on_fsa("stale.txt"),
        None,
        "the stale primary's own write was discarded"
    );
    // Clients read fsb's data through the client IP.
    let got = wait_for("NFS read", Duration::from_secs(15), || {
        c.nfs_read("after.txt").ok()
    });
    assert_eq!(got, b"written to fsb after the failover");

    // Every stand-down step was committed before its command and recorded after,
    // in order, on fsa.
    let h = seen_history.join("\n");
    for l in seen_history.iter().filter(|l| l.contains("S10")) {
        eprintln!("history: {l}");
    }
    let mut at = 0;
    for step in ["UnexportNfs", "Unmount", "Demote", "DiscardAndReconnect"] {
        for phase in ["started", "done in"] {
            let needle = format!("S10 stand-down of fs1-fsa: {step} {phase}");
            let pos = h[at..]
                .find(&needle)
                .unwrap_or_else(|| panic!("no {needle:?} after offset {at} in\n{h}"));
            at += pos + needle.len();
        }
    }
    assert!(
        !h.contains("stand-down of fs1-fsa: ReleaseIp"),
        "the fence had taken the IP: nothing to release\n{h}"
    );
    assert!(!h.contains("stand-down of fs1-fsb: UnexportNfs"), "{h}");
    eprintln!(
        "fsb reconnected by the controller after the split brain: {}",
        h.contains("stand-down of fs1-fsb: ReconnectServing done")
    );
    assert!(h.contains("Degraded -> Rebuilding"), "{h}");
    assert!(h.contains("Rebuilding -> Healthy"), "{h}");
}

/// Any standby that serves is stood down, not only a returning old primary: the
/// client IP configured by mistake on the backup (which stays a DRBD Secondary) is
/// released, and the file server re-announces it so clients come back to it.
#[test]
fn a_backup_holding_the_client_ip_is_made_to_release_it() {
    let c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("kept.txt", b"served by fsa")
        .expect("write through NFS");
    let cidr = format!("{}/24", c.client_ip);
    c.net
        .ip_in("fsb", &["addr", "add", &cidr, "dev", "eth0"])
        .expect("configure the client IP on fsb");
    let mut seen: Vec<String> = Vec::new();
    let mut alert_seen = false;
    let s = c.wait_status("fsb released the client IP", Duration::from_secs(20), |s| {
        alert_seen |= alerts(s)
            .iter()
            .any(|a| a == "STANDBY SERVING: fs1-fsb is holding the client IP: standing it down");
        for l in history(s) {
            if !seen.contains(&l) {
                seen.push(l);
            }
        }
        server(s, PAIR, "fs1-fsb")["host"]["client_ip_present"] == false
            && seen
                .iter()
                .any(|l| l.starts_with("S10 stand-down of fs1-fsa: AnnounceServingIp done"))
    });
    let h = seen.join("\n");
    let release = h
        .find("S10 stand-down of fs1-fsb: ReleaseIp started")
        .unwrap_or_else(|| panic!("{h}"));
    let released = h
        .find("S10 stand-down of fs1-fsb: ReleaseIp done")
        .unwrap_or_else(|| panic!("{h}"));
    let announced = h
        .find("S10 stand-down of fs1-fsa: AnnounceServingIp done")
        .unwrap_or_else(|| panic!("{h}"));
    assert!(release < released && released < announced, "{h}");
    assert!(
        !h.contains("fs1-fsb: Demote"),
        "a Secondary is not demoted:\n{h}"
    );
    assert!(
        !h.contains("DiscardAndReconnect"),
        "nothing to discard:\n{h}"
    );
    eprintln!("S10 alert seen while fsb held the IP: {alert_seen}");
    assert_eq!(c.ip_holders(), vec!["fsa"]);
    assert_eq!(c.exporting_hosts(), vec!["fsa"]);
    assert_eq!(pair(&s, PAIR)["serving"], "fs1-fsa");
    assert_eq!(pair(&s, PAIR)["epoch"], 0, "no failover");
    let after = c.try_status().expect("status");
    assert!(
        !alerts(&after)
            .iter()
            .any(|a| a.starts_with("STANDBY SERVING")),
        "{:?}",
        alerts(&after)
    );
    let got = wait_for("NFS read from fsa", Duration::from_secs(15), || {
        c.nfs_read("kept.txt").ok()
    });
    assert_eq!(got, b"served by fsa");
}

/// The old primary that died (fenced and killed as usual) and comes back clean is
/// still stale: it said hello with the old epoch. The controller gives it the
/// current one (a no-op demote), so commands of the earlier epoch can no longer
/// move it, and it rejoins as the in-sync backup.
#[test]
fn a_killed_old_primary_that_returns_learns_the_epoch_and_rejoins() {
    let mut c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    c.nfs_write("kept.txt", b"before the crash")
        .expect("write through NFS");
    c.kill_host(0);
    c.wait_status("failover to fsb", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Degraded" && pair(s, PAIR)["serving"] == "fs1-fsb"
    });
    let epoch_file = c.hosts[0].dir.join("agent-state").join("highest-epoch");
    let before = fs::read_to_string(&epoch_file).unwrap_or_default();
    assert!(
        before.trim().is_empty() || before.starts_with("0 "),
        "{before:?}"
    );
    c.revive_host(0);
    let mut seen: Vec<String> = Vec::new();
    c.wait_status(
        "pair Healthy with fsa back as the backup",
        Duration::from_secs(60),
        |s| {
            for l in history(s) {
                if !seen.contains(&l) {
                    seen.push(l);
                }
            }
            let a = &server(s, PAIR, "fs1-fsa")["drbd"];
            pair(s, PAIR)["state"] == "Healthy"
                && a["role"] == "Secondary"
                && a["disk"] == "UpToDate"
                && a["replication"] == "Established"
        },
    );
    // It accepts (and persists) the current epoch with a no-op demote.
    wait_for("fsa at epoch 1", Duration::from_secs(10), || {
        fs::read_to_string(&epoch_file)
            .ok()
            .filter(|e| e.starts_with("1 "))
    });
    let s = c.wait_status("the demote in the history", Duration::from_secs(5), |s| {
        for l in history(s) {
            if !seen.contains(&l) {
                seen.push(l);
            }
        }
        seen.iter()
            .any(|l| l.starts_with("S10 stand-down of fs1-fsa: Demote done"))
    });
    let h = seen.join("\n");
    // Nothing but the demote: the restarted agent's report from before the crash
    // (Primary, mounted, exporting, client IP) is not acted on.
    let s10: Vec<&String> = seen.iter().filter(|l| l.starts_with("S10")).collect();
    assert_eq!(s10.len(), 2, "{h}");
    assert!(
        s10[0].starts_with("S10 stand-down of fs1-fsa: Demote started"),
        "{h}"
    );
    assert!(
        s10[1].starts_with("S10 stand-down of fs1-fsa: Demote done"),
        "{h}"
    );
    assert_eq!(pair(&s, PAIR)["epoch"], 1);
    assert_eq!(pair(&s, PAIR)["serving"], "fs1-fsb");
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    assert_eq!(c.ip_holders(), vec!["fsb"]);
    let got = wait_for("NFS read", Duration::from_secs(15), || {
        c.nfs_read("kept.txt").ok()
    });
    assert_eq!(got, b"before the crash");
}
