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

/// The emulator's resync rate of host `i`, taken over by `drbdadm adjust`.
fn set_resync_rate(c: &NsCluster, i: usize, kib: u64) {
    let path = &c.hosts[i].emu_config;
    let mut text = fs::read_to_string(path).unwrap();
    assert!(!text.contains("[tuning]"), "{text}");
    text.push_str(&format!("\n[tuning]\nresync_rate_kib = {kib}\n"));
    fs::write(path, text).unwrap();
    let o = c.drbdadm(i, &["adjust", understudy_tests::RESOURCE]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn registry(c: &NsCluster) -> Value {
    serde_json::from_slice(&fs::read(c.dir.path().join("cloud").join("registry.json")).unwrap())
        .unwrap()
}

/// Instances the local cloud launched (not the harness's fsa and fsb).
fn launched(c: &NsCluster) -> Vec<Value> {
    registry(c)["instances"]
        .as_object()
        .unwrap()
        .values()
        .filter(|i| i["launched"] == true)
        .cloned()
        .collect()
}

/// The backup is still `Inconsistent` (a full resync running) when the file
/// server dies: no backup is usable, so the controller fences the dead server,
/// force-detaches its volume, attaches it to the spare, brings DRBD up there as
/// Primary (ext4 journal replayed on mount), exports and claims the client IP
/// (S9): the files written before the failure are served by the spare.
#[test]
fn with_no_usable_backup_the_dead_servers_volume_moves_to_the_spare() {
    let mut c = NsCluster::start_with(NsOptions {
        spares: Some(SpareOptions::default()),
        ..NsOptions::default()
    });
    let _logs = c.keep_logs_on_panic();
    // fsb loses its data (new metadata) and resyncs from scratch, slowly.
    use understudy_tests::RESOURCE;
    set_resync_rate(&c, 0, 512);
    set_resync_rate(&c, 1, 512);
    for args in [
        &["down", RESOURCE][..],
        &["create-md", "--force", RESOURCE],
        &["up", RESOURCE],
    ] {
        let o = c.drbdadm(1, args);
        assert!(
            o.status.success(),
            "drbdadm {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    c.wait_status(
        "fsb resyncing, Inconsistent",
        Duration::from_secs(30),
        |s| {
            let d = &understudy_tests::server(s, PAIR, FSB)["drbd"];
            d["disk"] == "Inconsistent" && d["replication"] == "SyncTarget"
        },
    );
    let mut written = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}.txt");
        let body = format!("written before the failure, #{i}");
        c.nfs_write(&name, body.as_bytes()).unwrap();
        written.push((name, body));
    }
    let inv = Invariants::watch(&c);
    let died = Instant::now();
    c.kill_host(0);
    // The first successful read through the client IP after the death.
    let client = c.client();
    let first_read = wait_for(
        "a read through the client IP",
        Duration::from_secs(120),
        || client.read(&written[0].0).ok().map(|_| died.elapsed()),
    );
    let s = c.wait_status("serving from the spare", Duration::from_secs(30), |s| {
        let p = pair(s, PAIR);
        p["state"] != "FailingOver" && p["serving"].as_str().unwrap_or("").starts_with("fs1-s")
    });
    let h = history(&s);
    let p = pair(&s, PAIR);
    assert!(h.contains("reattach (S9)"), "{h}");
    assert_eq!(p["retired"][0]["server_id"], FSA, "{h}");
    let spare = p["serving"].as_str().unwrap().to_string();
    // The spare serves from fsa's own volume.
    let fsa_volume = p["retired"][0]["volumes"][0].as_str().unwrap().to_string();
    assert!(h.contains(&format!("{fsa_volume} force-detached")), "{h}");
    assert_eq!(
        c.ip_holders().len(),
        0,
        "fsa holds nothing (the spare is not a harness host)"
    );
    for (name, body) in &written {
        assert_eq!(
            client.read(name).unwrap_or_else(|e| panic!("{name}: {e}")),
            body.as_bytes(),
            "{name}"
        );
    }
    // The old backup resyncs from the spare now.
    c.wait_status(
        "fsb resyncing from the spare",
        Duration::from_secs(30),
        |s| {
            let d = &understudy_tests::server(s, PAIR, FSB)["drbd"];
            d["connection"] == "Connected"
        },
    );
    inv.check();
    let plan: Vec<String> = h
        .lines()
        .filter(|l| l.contains(" done in "))
        .map(str::to_string)
        .collect();
    eprintln!(
        "reattach: death -> first read through the client IP {first_read:?} (NFS grace 3 s included); serving from {spare}\n{}",
        plan.join("\n")
    );
}

/// The launch template's subnet is in another zone: no spare is launched, the
/// status and the preflight name both zones. A volume attached to the file
/// server outside DRBD is a preflight finding too (`understudyctl check`
/// exits 3).
#[test]
fn a_template_in_another_zone_launches_nothing_and_preflight_finds_the_unreplicated_volume() {
    let c = NsCluster::start_with(NsOptions {
        spares: Some(SpareOptions {
            template_zone: "zone-b".into(),
            ..SpareOptions::default()
        }),
        ..NsOptions::default()
    });
    let _logs = c.keep_logs_on_panic();
    // The seed's forgotten log volume: attached to fsa, under no DRBD resource.
    let cloud = c.cloud.as_ref().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let logs = rt
        .block_on(async {
            use understudy_cloud::Cloud;
            let v = cloud
                .create_volume(&understudy_cloud::VolumeRequest {
                    client_token: format!("{}-logs", c.net.prefix()),
                    zone: "zone-a".into(),
                    size_gib: 1,
                    tags: vec![],
                })
                .await?;
            cloud
                .attach_volume(&v.volume_id, &c.net.ns_name("fsa"), "xvdg")
                .await?;
            Ok::<_, understudy_cloud::CloudError>(v.volume_id)
        })
        .unwrap();
    let out = c
        .controllers
        .ctl()
        .args(["--output", "json", "check"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = v["pairs"][0]["findings"].as_array().unwrap().clone();
    let text = serde_json::to_string(&findings).unwrap();
    assert!(
        findings.iter().any(|f| f["subject"] == logs.as_str()
            && f["problem"]
                .as_str()
                .unwrap()
                .contains("under no DRBD resource")
            && f["severity"] == "error"),
        "{text}"
    );
    assert!(
        findings.iter().any(|f| {
            let p = f["problem"].as_str().unwrap();
            p.contains("zone-b") && p.contains("zone-a") && f["severity"] == "error"
        }),
        "{text}"
    );
    assert!(
        findings
            .iter()
            .all(|f| !f["fix"].as_str().unwrap().is_empty()),
        "{text}"
    );
    // The file server dies: the failover goes on, no spare is launched.
    let mut c = c;
    c.kill_host(0);
    let s = c.wait_status("Degraded without a spare", Duration::from_secs(30), |s| {
        let p = pair(s, PAIR);
        p["state"] == "Degraded" && !p["provisioning_error"].as_str().unwrap_or("").is_empty()
    });
    let err = pair(&s, PAIR)["provisioning_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("zone zone-b") && err.contains("zone-a"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(launched(&c).is_empty(), "{:?}", launched(&c));
    assert!(pair(&c.try_status().unwrap(), PAIR)["spare"].is_null());
}

/// A false alarm: the file server is cut from the controllers only (one
/// witness: Suspect, no failover), a spare is pre-spun, the server comes back.
/// The spare is terminated after the keep time, once, although the leader was
/// killed meanwhile.
#[test]
fn a_false_alarms_spare_is_terminated_after_the_keep_time_once() {
    let mut c = NsCluster::start_with(NsOptions {
        spares: Some(SpareOptions {
            keep_ms: 6000,
            ..SpareOptions::default()
        }),
        ..NsOptions::default()
    });
    let _logs = c.keep_logs_on_panic();
    let bridge = c.net.bridge_addr();
    c.net.block("fsa", bridge);
    c.wait_status("spare launched on Suspect", Duration::from_secs(30), |s| {
        let p = pair(s, PAIR);
        p["spare"]["state"] == "launched"
    });
    c.net.unblock("fsa", bridge);
    let s = c.wait_status("Healthy again", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Healthy"
    });
    assert_eq!(pair(&s, PAIR)["epoch"], 0, "no failover: {}", history(&s));
    // The leader dies during the keep time.
    let leader = understudy_tests::Cluster::leader_index(&s).unwrap();
    c.kill_controller(leader);
    let s = c.wait_status("spare terminated", Duration::from_secs(60), |s| {
        pair(s, PAIR)["spare"].is_null()
    });
    let h = history(&s);
    assert_eq!(h.matches("spare fs1-s1 terminated").count(), 1, "{h}");
    assert_eq!(h.matches("spare fs1-s1 requested").count(), 1, "{h}");
    let l = launched(&c);
    assert_eq!(l.len(), 1, "one spare launched: {l:?}");
    assert_eq!(l[0]["terminated"], true);
    // And none launched after: the pair is Healthy.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(launched(&c).len(), 1);
}

/// The leader is killed in the middle of a rebuild: the next leader resumes it
/// at its first step not done; one spare, one new volume, pair Healthy.
#[test]
fn a_rebuild_survives_the_leaders_death_without_a_second_instance_or_volume() {
    let mut c = NsCluster::start_with(spares(SpareOptions::default()));
    let _logs = c.keep_logs_on_panic();
    c.kill_host(0);
    let s = c.wait_status("rebuild under way", Duration::from_secs(60), |s| {
        pair(s, PAIR)["rebuild"]["steps"]
            .as_array()
            .is_some_and(|st| st.iter().any(|x| x["status"] == "done"))
    });
    let leader = understudy_tests::Cluster::leader_index(&s).unwrap();
    c.kill_controller(leader);
    let s = c.wait_status("Healthy with the spare", Duration::from_secs(180), |s| {
        let p = pair(s, PAIR);
        p["state"] == "Healthy" && members(s).iter().any(|m| m.starts_with("fs1-s"))
    });
    let h = history(&s);
    assert_eq!(launched(&c).len(), 1, "{h}");
    let vols = registry(&c)["volumes"].as_object().unwrap().len();
    assert_eq!(vols, 3, "fsa's, fsb's and one new volume: {h}");
    assert_eq!(h.matches("rebuild #1 finished").count(), 1, "{h}");
    assert!(!h.contains("rebuild #2"), "{h}");
}
