//! End-to-end tests of the DRBD emulator: real daemon processes on loopback,
//! driven through the drbdadm / drbdsetup CLIs exactly as the agent would.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SYNCED_A: &str =
    "r0 role:Primary\n  disk:UpToDate\n  fs2 role:Secondary\n    peer-disk:UpToDate\n";
const SYNCED_B: &str =
    "r0 role:Secondary\n  disk:UpToDate\n  fs1 role:Primary\n    peer-disk:UpToDate\n";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn oos(line: &str) -> Option<u64> {
    key(line, "out-of-sync").and_then(|v| v.parse().ok())
}

fn done(line: &str) -> Option<f64> {
    key(line, "done").and_then(|v| v.parse().ok())
}

/// Test 1: Initial sync of two fresh disks after `primary --force`.
#[test]
fn initial_sync_after_forced_primary() {
    let p = Pair::started("resync_rate_kib = 1024");
    for i in 0..4 {
        write_file(&p.a.data_dir.join(format!("dir/f{i}")), 512 * 1024, i);
    }
    let mut ea = p.a.events(&[]);
    let mut eb = p.b.events(&[]);
    ea.wait_line(5, "exists -", |l| l == "exists -");
    eb.wait_line(5, "exists -", |l| l == "exists -");

    p.a.adm_ok(&["primary", "--force", "r0"]);

    ea.wait_line(5, "resource becomes Primary", |l| {
        l.starts_with("change resource name:r0 role:Primary")
    });
    ea.wait_line(5, "device becomes UpToDate", |l| {
        l.starts_with("change device ") && l.contains(" disk:UpToDate")
    });
    let first = ea.wait_line(5, "SyncSource with done:", |l| {
        l.starts_with("change peer-device ")
            && l.contains("replication:SyncSource")
            && l.contains(" done:")
    });
    let d0 = done(&first).unwrap();
    let later = ea.wait_line(10, "done: rising", |l| {
        done(l).is_some_and(|d| d > d0 && d < 100.0)
    });
    assert!(done(&later).unwrap() > d0);
    let est = ea.wait_line(15, "replication Established", |l| {
        l.starts_with("change peer-device ") && l.contains("replication:Established")
    });
    if !est.contains("peer-disk:UpToDate") {
        ea.wait_line(5, "peer-disk UpToDate", |l| {
            l.contains("peer-disk:UpToDate")
        });
    }

    eb.wait_line(5, "SyncTarget", |l| {
        l.contains("replication:SyncTarget") && l.contains("peer-disk:UpToDate")
    });
    eb.wait_line(15, "local disk UpToDate", |l| {
        l.starts_with("change device ") && l.contains(" disk:UpToDate")
    });
    let est = eb
        .seen
        .iter()
        .any(|l| l.starts_with("change peer-device ") && l.contains("replication:Established"));
    if !est {
        eb.wait_line(5, "target Established", |l| {
            l.contains("replication:Established")
        });
    }
    p.a.wait_status(5, SYNCED_A);
    p.b.wait_status(5, SYNCED_B);
    assert_eq!(tree(&p.a.data_dir), tree(&p.b.data_dir));
    // the new UpToDate state is persisted
    let meta = std::fs::read_to_string(p.b.state_dir.join("meta.json")).unwrap();
    assert!(meta.contains("\"disk\":\"UpToDate\""), "{meta}");
}

/// Test 2: Writes on the Primary: out-of-sync rises, falls to 0, trees match.
#[test]
fn replication_out_of_sync_rises_and_falls_and_trees_match() {
    use std::os::unix::fs::PermissionsExt;
    let p = Pair::synced("resync_rate_kib = 2048");
    let mut ev = p.a.events(&["--statistics"]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    let d = &p.a.data_dir;
    for i in 0..3 {
        write_file(
            &d.join(format!("export/vol{i}.img")),
            1024 * 1024 + 777,
            10 + i,
        );
    }
    write_file(&d.join("export/small"), 10, 99);
    std::fs::set_permissions(
        d.join("export/small"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("vol0.img", d.join("export/link")).unwrap();

    let up = ev.wait_line(5, "out-of-sync > 0", |l| {
        l.starts_with("change peer-device ") && oos(l).is_some_and(|v| v > 0)
    });
    let mut max = oos(&up).unwrap();
    let mut between = false;
    let t0 = Instant::now();
    loop {
        let l = ev.wait_line(15, "further peer-device statistics", |l| {
            l.starts_with("change peer-device ") && oos(l).is_some()
        });
        let v = oos(&l).unwrap();
        assert!(
            !l.contains("replication:") || l.contains("replication:Established"),
            "replication of new writes is not a resync: {l}"
        );
        if v > max {
            max = v;
        } else if v > 0 && v < max {
            between = true;
        }
        if v == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "out-of-sync did not reach 0"
        );
    }
    // the scan may already have shipped part of the first file
    assert!(
        max >= 2 * 1024,
        "out-of-sync should cover MiBs, max was {max}"
    );
    assert!(between, "out-of-sync should fall gradually (throttled)");
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);

    // changes and deletions replicate too
    std::fs::remove_file(d.join("export/vol1.img")).unwrap();
    write_file(&d.join("export/vol2.img"), 4096, 1234);
    std::fs::remove_dir_all(d.join("export")).ok();
    write_file(&d.join("export"), 5, 7); // a directory replaced by a file
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);
    p.b.wait_status(5, SYNCED_B);
}

/// Test 3: SIGKILL of the secondary is noticed; after restart only the changes
/// are resynced.
#[test]
fn killed_secondary_detected_then_resynced_after_restart() {
    let mut p = Pair::synced("resync_rate_kib = 4096");
    write_file(&p.a.data_dir.join("base.img"), 4 * 1024 * 1024, 1);
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 20);
    let mut ev = p.a.events(&["--statistics"]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    wait_until(10, "out-of-sync 0 after base sync", || {
        let j = p.a.status_json();
        (j[0]["connections"][0]["peer_devices"][0]["out-of-sync"] == 0).then_some(())
    });

    let t0 = Instant::now();
    p.b.kill();
    let lost = ev.wait_line(3, "connection leaves Connected", |l| {
        l.starts_with("change connection ")
            && key(l, "connection").is_some_and(|c| c != "Connected")
    });
    let within = Duration::from_millis(600 + 1500);
    assert!(
        t0.elapsed() < within,
        "peer loss noticed after {:?}",
        t0.elapsed()
    );
    let c = key(&lost, "connection").unwrap();
    assert!(c == "BrokenPipe" || c == "NetworkFailure", "{lost}");
    assert_eq!(key(&lost, "role"), Some("Unknown"), "{lost}");
    ev.wait_line(2, "peer-disk DUnknown", |l| {
        l.starts_with("change peer-device ")
            && l.contains("replication:Off")
            && l.contains("peer-disk:DUnknown")
    });
    ev.wait_line(3, "Connecting", |l| l.contains("connection:Connecting"));
    p.a.wait_status(
        2,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );

    // writes while the peer is away are tracked
    write_file(&p.a.data_dir.join("new.img"), 1024 * 1024, 2);
    let grown = wait_until(5, "out-of-sync grows while disconnected", || {
        let j = p.a.status_json();
        let v = j[0]["connections"][0]["peer_devices"][0]["out-of-sync"].as_u64()?;
        (v >= 1024).then_some(v)
    });
    assert!(
        grown < 1200,
        "only the new file is out of sync, got {grown} KiB"
    );

    p.b.start();
    // restarted as after a reboot: Secondary, disk from metadata
    let l = ev.wait_line(10, "resync after reconnect", |l| {
        l.starts_with("change peer-device ") && l.contains("replication:SyncSource")
    });
    let total = oos(&l).expect("statistics on the SyncSource line");
    assert!(
        (1024..1200).contains(&total),
        "resync only what changed (~1 MiB), got {total} KiB: {l}"
    );
    ev.wait_line(10, "Established again", |l| {
        l.contains("replication:Established")
    });
    p.a.wait_status(10, SYNCED_A);
    p.b.wait_status(10, SYNCED_B);
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);
}

/// Test 3b: A frozen peer (no pongs, TCP still open, like a cut network) is
/// detected by the ping timeout.
#[test]
fn frozen_peer_detected_by_ping_timeout() {
    let p = Pair::synced("ping_interval_ms = 100\nping_timeout_ms = 500");
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    let t0 = Instant::now();
    p.b.signal(libc::SIGSTOP);
    ev.wait_line(5, "NetworkFailure", |l| {
        l.contains("connection:NetworkFailure")
    });
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(500 + 1500),
        "ping timeout detection took {took:?}"
    );
    ev.wait_line(2, "peer-disk DUnknown", |l| {
        l.contains("peer-disk:DUnknown")
    });
    p.b.signal(libc::SIGCONT);
    p.a.wait_status(10, SYNCED_A);
    p.b.wait_status(10, SYNCED_B);
}

/// Test 4: Promotion rules.
#[test]
fn primary_refusals_and_role_switch() {
    let p = Pair::started("");
    let o = p.a.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("r0: State change failed: (-2) Need access to UpToDate data"),
        "{}",
        stderr(&o)
    );
    let o = p.a.drbdsetup(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11));

    p.a.adm_ok(&["primary", "--force", "r0"]);
    p.a.wait_status(10, SYNCED_A);
    p.b.wait_status(10, SYNCED_B);

    let o = p.b.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(-1) Multiple primaries not allowed by config"),
        "{}",
        stderr(&o)
    );
    // outdate: refused on a Primary and while connected
    let o = p.a.drbdadm(&["outdate", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    let o = p.b.drbdadm(&["outdate", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Outdated while Connected"),
        "{}",
        stderr(&o)
    );

    // switch over
    write_file(&p.a.data_dir.join("before"), 100_000, 3);
    p.a.adm_ok(&["secondary", "r0"]);
    // demotion flushed everything to the peer
    assert_eq!(tree(&p.a.data_dir), tree(&p.b.data_dir));
    p.b.adm_ok(&["primary", "r0"]);
    p.a.wait_status(
        5,
        "r0 role:Secondary\n  disk:UpToDate\n  fs2 role:Primary\n    peer-disk:UpToDate\n",
    );
    p.b.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs1 role:Secondary\n    peer-disk:UpToDate\n",
    );
    let o = p.b.drbdadm(&["role", "r0"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Primary\n");
    // data now flows the other way
    write_file(&p.b.data_dir.join("after"), 200_000, 4);
    wait_same_tree(&p.b.data_dir, &p.a.data_dir, 10);

    // an outdated disk refuses plain promotion
    p.a.adm_ok(&["disconnect", "r0"]);
    p.a.wait_status(
        5,
        "r0 role:Secondary\n  disk:UpToDate\n  fs2 connection:StandAlone\n",
    );
    p.a.adm_ok(&["outdate", "r0"]);
    p.a.wait_status(
        5,
        "r0 role:Secondary\n  disk:Outdated\n  fs2 connection:StandAlone\n",
    );
    let o = p.a.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11));
    // reconnecting brings it back to UpToDate from the Primary
    p.a.adm_ok(&["connect", "r0"]);
    p.a.wait_status(
        10,
        "r0 role:Secondary\n  disk:UpToDate\n  fs2 role:Primary\n    peer-disk:UpToDate\n",
    );
}

/// Line structure: indentation plus key names (values and names masked).
fn shape(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            let keys: Vec<&str> = l
                .split_whitespace()
                .map(|t| t.split_once(':').map_or("<name>", |(k, _)| k))
                .collect();
            format!("{indent}:{}", keys.join(" "))
        })
        .collect()
}

fn json_keys(text: &str) -> Vec<String> {
    // every "key": in document order
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('"') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('"') else { break };
        let tail = after[j + 1..].trim_start();
        if tail.starts_with(':') {
            out.push(after[..j].to_string());
        }
        rest = &after[j + 1..];
    }
    out
}

/// Test 5: Status output has the fixtures' layout.
#[test]
fn status_layouts_match_fixtures() {
    let mut p = Pair::started("resync_rate_kib = 256");
    assert_eq!(
        shape(&p.a.status()),
        shape(&fixture("drbdadm-status-both-secondary-inconsistent.txt"))
    );
    write_file(&p.a.data_dir.join("data.img"), 2 * 1024 * 1024, 5);
    p.a.adm_ok(&["primary", "--force", "r0"]);
    // during the resync
    let sa = wait_until(5, "SyncSource status", || {
        let s = p.a.status();
        s.contains("done:").then_some(s)
    });
    assert_eq!(
        shape(&sa),
        shape(&fixture("drbdadm-status-syncsource-done-percent.txt")),
        "{sa}"
    );
    let sb = wait_until(5, "SyncTarget status", || {
        let s = p.b.status();
        (s.contains("done:") && !s.contains("done:0.00")).then_some(s)
    });
    assert_eq!(
        shape(&sb),
        shape(&fixture(
            "drbdadm-status-backup-synctarget-done-percent.txt"
        )),
        "{sb}"
    );
    let o =
        p.b.drbdsetup(&["status", "r0", "--verbose", "--statistics"]);
    let ours = String::from_utf8_lossy(&o.stdout).into_owned();
    let fx = fixture("drbdsetup-status-verbose-statistics-synctarget-peer-diskless-primary.txt");
    let want: Vec<String> = shape(&fx).into_iter().take(7).collect();
    let got: Vec<String> = shape(&ours)
        .into_iter()
        .map(|l| l.replace(" done", ""))
        .collect();
    assert_eq!(got, want, "ours:\n{ours}");
    assert!(ours.contains("replication:SyncTarget"), "{ours}");
    // JSON while syncing has the sync details
    let j = p.a.status_json();
    let pd = &j[0]["connections"][0]["peer_devices"][0];
    assert_eq!(pd["replication-state"], "SyncSource");
    assert_eq!(pd["has-sync-details"], true);
    assert!(pd["percent-resync-done"].as_f64().is_some());

    p.a.wait_status(20, SYNCED_A);
    p.b.wait_status(20, SYNCED_B);
    assert_eq!(
        shape(&p.b.status()),
        shape(&fixture("drbdadm-status-backup-uptodate-after-sync.txt"))
    );
    assert_eq!(
        shape(&p.a.status()),
        shape(&fixture(
            "drbdadm-status-forced-primary-peer-inconsistent.txt"
        ))
    );
    // drbdsetup status == drbdadm status
    let o = p.a.drbdsetup(&["status", "r0"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), SYNCED_A);
    // --json: same keys in the same order as real drbdsetup
    let o = p.a.drbdsetup(&["status", "r0", "--json"]);
    let ours = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        json_keys(&ours),
        json_keys(&fixture("status-json-primary-connected-uptodate.json"))
    );
    let j: serde_json::Value = serde_json::from_str(&ours).unwrap();
    assert_eq!(j[0]["role"], "Primary");
    assert_eq!(j[0]["devices"][0]["disk-state"], "UpToDate");
    assert_eq!(j[0]["connections"][0]["connection-state"], "Connected");
    assert_eq!(
        j[0]["connections"][0]["peer_devices"][0]["peer-disk-state"],
        "UpToDate"
    );
    assert_eq!(
        j[0]["connections"][0]["peer_devices"][0]["percent-in-sync"],
        100.0
    );

    p.b.kill();
    p.a.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    assert_eq!(
        shape(&p.a.status()),
        shape(&fixture(
            "drbdadm-status-backup-connecting-inconsistent.txt"
        ))
    );
    let j = p.a.status_json();
    assert_eq!(
        j[0]["connections"][0]["peer_devices"][0]["peer-disk-state"],
        "DUnknown"
    );
}

/// Key names of an events2 line.
fn line_keys(l: &str) -> Vec<String> {
    l.split(' ')
        .skip(2)
        .map(|t| t.split_once(':').map_or(t, |(k, _)| k).to_string())
        .collect()
}

/// Test 6: events2 stream: dump, minimal change lines, exit on daemon death.
#[test]
fn events2_change_lines_and_exit_on_daemon_death() {
    let mut p = Pair::synced("");
    // --now: dump and exit, same objects and keys as real drbdsetup
    let o = p.a.drbdsetup(&["events2", "--now", "r0"]);
    assert!(o.status.success());
    let dump = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.last(), Some(&"exists -"), "{dump}");
    let fx = fixture("events2-connect-uptodate-then-primary.txt");
    let creates: Vec<&str> = fx.lines().filter(|l| l.starts_with("create ")).collect();
    assert_eq!(lines.len(), creates.len() + 1, "{dump}");
    for (ours, real) in lines.iter().zip(&creates) {
        assert_eq!(line_keys(ours), line_keys(real), "\n{ours}\n{real}");
        assert_eq!(ours.split(' ').nth(1), real.split(' ').nth(1));
    }
    assert_eq!(
        lines[0],
        "exists resource name:r0 role:Primary suspended:no force-io-failures:no may_promote:no promotion_score:10102"
    );
    assert_eq!(
        lines[3],
        "exists peer-device name:r0 peer-node-id:1 conn-name:fs2 volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no"
    );
    // --statistics --timestamps
    let o =
        p.a.drbdsetup(&["events2", "--now", "--statistics", "--timestamps", "all"]);
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    let first = s.lines().next().unwrap();
    let ts = first.split(' ').next().unwrap();
    assert_eq!(
        ts.len(),
        "2017-03-27T08:28:17.072611-07:00".len(),
        "{first}"
    );
    assert_eq!(&ts[10..11], "T");
    assert_eq!(&ts[19..20], ".");
    assert!(s.contains(" out-of-sync:0 "), "{s}");
    // another resource: nothing but the end marker
    let o = p.a.drbdsetup(&["events2", "--now", "r7"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "exists -\n");

    let mut ev = p.a.events(&[]);
    let mut full = p.a.events(&["--full"]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    full.wait_line(5, "exists -", |l| l == "exists -");
    p.a.adm_ok(&["secondary", "r0"]);
    ev.wait_line(5, "demotion change line", |l| {
        l == "change resource name:r0 role:Secondary may_promote:yes promotion_score:10102"
    });
    full.wait_line(5, "full demotion change line", |l| {
        l.starts_with("change resource name:r0 role:Secondary suspended:no force-io-failures:no write-ordering:flush may_promote:yes")
    });
    p.a.adm_ok(&["primary", "r0"]);
    ev.wait_line(5, "promotion change line", |l| {
        l == "change resource name:r0 role:Primary may_promote:no promotion_score:10102"
    });
    // peer disconnects: role is repeated only where it changed
    p.b.adm_ok(&["disconnect", "r0"]);
    let l = ev.wait_line(5, "connection lost", |l| {
        l.starts_with("change connection ")
    });
    assert!(
        l == "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:BrokenPipe role:Unknown"
            || l == "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:NetworkFailure role:Unknown",
        "{l}"
    );
    ev.wait_line(5, "peer device off", |l| {
        l == "change peer-device name:r0 peer-node-id:1 conn-name:fs2 volume:0 replication:Off peer-disk:DUnknown peer-client:no"
    });
    ev.wait_line(5, "path down", |l| {
        l.starts_with("change path name:r0 peer-node-id:1 conn-name:fs2 local:ipv4:127.0.0.1:")
            && l.ends_with(" established:no")
    });
    ev.wait_line(5, "Unconnected", |l| {
        l == "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:Unconnected"
    });
    ev.wait_line(5, "Connecting", |l| {
        l == "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:Connecting"
    });
    p.b.adm_ok(&["connect", "r0"]);
    ev.wait_line(5, "Connected", |l| {
        l == "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:Connected role:Secondary"
    });
    // down/up: destroy and create lines
    let mut eb = p.b.events(&[]);
    eb.wait_line(5, "exists -", |l| l == "exists -");
    p.b.adm_ok(&["down", "r0"]);
    eb.wait_line(5, "destroy path", |l| {
        l.starts_with("destroy path name:r0 peer-node-id:0 conn-name:fs1 local:")
    });
    eb.wait_line(5, "destroy resource", |l| l == "destroy resource name:r0");
    p.b.adm_ok(&["up", "r0"]);
    eb.wait_line(5, "create resource", |l| {
        l.starts_with("create resource name:r0 role:Secondary")
    });
    eb.wait_line(10, "UpToDate again", |l| {
        l.contains("replication:Established")
    });

    // the daemon dies: events2 exits non-zero
    p.a.kill();
    let st = ev.wait_exit(5);
    assert!(
        !st.success(),
        "events2 must fail when the daemon dies: {st:?}"
    );
}

/// Test 7: Split brain: both sides wrote independently => both StandAlone, no
/// sync; resolved with `connect --discard-my-data` on the victim.
#[test]
fn split_brain_goes_standalone_and_can_be_resolved() {
    let p = Pair::synced("");
    p.b.adm_ok(&["disconnect", "r0"]);
    p.a.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    write_file(&p.a.data_dir.join("from-a"), 1000, 1);
    p.b.adm_ok(&["primary", "r0"]);
    std::thread::sleep(Duration::from_millis(200));
    write_file(&p.b.data_dir.join("from-b"), 1000, 2);
    std::thread::sleep(Duration::from_millis(300)); // let both scans see the write
    p.b.adm_ok(&["connect", "r0"]);
    p.a.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:StandAlone\n",
    );
    p.b.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs1 connection:StandAlone\n",
    );
    assert!(!p.a.data_dir.join("from-b").exists());
    assert!(!p.b.data_dir.join("from-a").exists());
    // resolve: b is the victim
    p.b.adm_ok(&["secondary", "r0"]);
    p.b.adm_ok(&["connect", "--discard-my-data", "r0"]);
    p.a.adm_ok(&["connect", "r0"]);
    p.a.wait_status(10, SYNCED_A);
    p.b.wait_status(10, SYNCED_B);
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);
    assert!(!p.b.data_dir.join("from-b").exists());
}

/// Test 8: CLI behaviour without a daemon, argv[0] dispatch, config errors,
/// create-md, up/down.
#[test]
fn cli_without_daemon_argv0_and_config_errors() {
    let mut p = Pair::new("");
    let o = p.a.drbdadm(&["status", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    assert!(
        stderr(&o).contains("r0: No such resource"),
        "{}",
        stderr(&o)
    );
    let o = p.a.drbdsetup(&["status", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    let o = p.a.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    let o = p.a.drbdsetup(&["events2", "--now"]);
    assert!(!o.status.success());
    let o = p.a.drbdadm(&["status", "r9"]);
    assert_eq!(o.status.code(), Some(10));
    assert!(
        stderr(&o).contains("'r9' not defined in your config"),
        "{}",
        stderr(&o)
    );
    // no config at all
    let o = std::process::Command::new(BIN)
        .args(["drbdsetup", "status"])
        .env_remove("DRBD_EMU_CONFIG")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DRBD_EMU_CONFIG"), "{}", stderr(&o));
    // create-md without a daemon
    let o = p.a.drbdadm(&["create-md", "--force", "r0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains("New drbd meta data block successfully created."));
    // bad config is rejected clearly
    let bad = p.dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&p.a.config)
        .unwrap()
        .replace("minor = 1000", "minor = 1000\nbogus = 1");
    std::fs::write(&bad, text).unwrap();
    let o = std::process::Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bogus"), "{}", stderr(&o));

    // argv[0] dispatch through symlinks, --emu-config
    let bin = p.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("drbdadm")).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("drbdsetup")).unwrap();
    p.a.start();
    let o = std::process::Command::new(bin.join("drbdadm"))
        .args(["status", "r0"])
        .env("DRBD_EMU_CONFIG", &p.a.config)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "r0 role:Secondary\n  disk:Inconsistent\n  fs2 connection:Connecting\n"
    );
    let o = std::process::Command::new(bin.join("drbdsetup"))
        .arg("--emu-config")
        .arg(&p.a.config)
        .args(["status", "r0"])
        .env_remove("DRBD_EMU_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "r0 role:Secondary\n  disk:Inconsistent\n  fs2 connection:Connecting\n"
    );
    // up while up, down, status of a down resource, create-md while up
    let o = p.a.drbdadm(&["up", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    let o = p.a.drbdadm(&["create-md", "r0"]);
    assert!(!o.status.success());
    p.a.adm_ok(&["down", "r0"]);
    let o = p.a.drbdadm(&["status", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    let o = p.a.drbdsetup(&["events2", "--now"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "exists -\n");
    p.a.adm_ok(&["up", "r0"]);
    p.a.wait_status(
        5,
        "r0 role:Secondary\n  disk:Inconsistent\n  fs2 connection:Connecting\n",
    );
    // a second daemon for the same host is refused
    let o = std::process::Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&p.a.config)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("another daemon"), "{}", stderr(&o));
}

/// The replication port of a host config (`listen = "127.0.0.1:PORT"`).
fn port_of(n: &Node) -> u16 {
    let text = std::fs::read_to_string(&n.config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|r| r.trim_end_matches('"').parse().ok())
        .expect("listen port")
}

/// `drbdsetup show`: drbd-utils' layout with this host's running values
/// (ping/timeout/retry in DRBD units, rounded up), `--show-defaults`,
/// `_is_standalone`, unknown / down resources.
#[test]
fn drbdsetup_show_prints_the_running_config() {
    let mut p = Pair::new(
        "ping_interval_ms = 250\nping_timeout_ms = 950\nconnect_retry_ms = 300\nresync_rate_kib = 1000",
    );
    let mut text = std::fs::read_to_string(&p.a.config).unwrap();
    text.push_str("[net]\nfencing = \"resource-only\"\n");
    std::fs::write(&p.a.config, text).unwrap();
    let (pa, pb) = (port_of(&p.a), port_of(&p.b));
    // no daemon: nothing configured
    let o = p.a.drbdsetup(&["show"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "# No currently configured DRBD found.\n"
    );
    p.a.start();
    let data = p.a.data_dir.display();
    let head = format!(
        "resource \"r0\" {{
    options {{
        auto-promote    \tno;
    }}
    _this_host {{
        node-id\t\t\t0;
        volume 0 {{
            device\t\t\tminor 1000;
            disk\t\t\t\"{data}\";
            meta-disk\t\t\tinternal;
        }}
    }}
    connection {{
        _peer_node_id 1;
        path {{
            _this_host ipv4 127.0.0.1:{pa};
            _remote_host ipv4 127.0.0.1:{pb};
        }}
"
    );
    let tail = "        volume 0 {
            disk {
                resync-rate     \t1000k; # bytes/second
            }
        }
    }
}

";
    let want = format!(
        "{head}        net {{
            connect-int     \t1; # seconds
            ping-int        \t1; # seconds
            ping-timeout    \t10; # 1/10 seconds
            fencing         \tresource-only;
            _name           \t\"fs2\";
        }}
{tail}"
    );
    for args in [&["show"][..], &["show", "r0"], &["show", "all"]] {
        let o = p.a.drbdsetup(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{args:?}");
    }
    // --show-defaults, and a StandAlone connection
    p.a.adm_ok(&["disconnect", "r0"]);
    let o = p.a.drbdsetup(&["show", "--show-defaults", "r0"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "{}        _is_standalone;
        net {{
            protocol        \tC; # default
            connect-int     \t1; # seconds
            ping-int        \t1; # seconds
            allow-two-primaries\tno; # default
            after-sb-0pri   \tdisconnect; # default
            after-sb-1pri   \tdisconnect; # default
            after-sb-2pri   \tdisconnect; # default
            ping-timeout    \t10; # 1/10 seconds
            fencing         \tresource-only;
            _name           \t\"fs2\";
        }}
{tail}",
            head.replace(
                "        auto-promote    \tno;\n",
                "        auto-promote    \tno;\n        quorum          \toff; # default\n"
            )
        )
    );
    // unknown resource; a resource that is down
    let o = p.a.drbdsetup(&["show", "r9"]);
    assert_eq!(o.status.code(), Some(10));
    assert_eq!(stderr(&o), "r9: No such resource\n");
    p.a.adm_ok(&["down", "r0"]);
    let o = p.a.drbdsetup(&["show", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    assert_eq!(stderr(&o), "r0: No such resource\n");
    let o = p.a.drbdsetup(&["show"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "# No currently configured DRBD found.\n"
    );
}

/// `drbdadm adjust` with a changed `[peer]` (directory mode): the Primary
/// drops the dead peer and connects to a fresh one that reuses its node
/// id; events2 destroys / creates the connection objects; the new peer
/// gets the whole tree. Without changes adjust does nothing; a key that
/// needs a restart is refused.
#[test]
fn adjust_switches_to_a_new_peer() {
    let mut p = Pair::synced("");
    common::write_file(&p.a.data_dir.join("dir/one"), 100_000, 1);
    common::write_file(&p.a.data_dir.join("two"), 5_000, 2);
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);
    p.b.kill();
    p.a.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    common::write_file(&p.a.data_dir.join("three"), 7_000, 3);
    // a fresh host with fs2's node id
    let pc = free_port();
    let pa = port_of(&p.a);
    let mut c = host(p.dir.path(), ("fs3", 1, pc), ("fs1", 0, pa), "", "");
    c.start();
    c.wait_status(
        5,
        "r0 role:Secondary\n  disk:Inconsistent\n  fs1 connection:Connecting\n",
    );
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    // nothing changed: nothing happens
    p.a.adm_ok(&["adjust", "r0"]);
    // a key that needs a restart is refused
    let orig = std::fs::read_to_string(&p.a.config).unwrap();
    std::fs::write(&p.a.config, orig.replace("minor = 1000", "minor = 1001")).unwrap();
    let o = p.a.drbdadm(&["adjust", "r0"]);
    assert_eq!(o.status.code(), Some(20), "{}", stderr(&o));
    assert!(stderr(&o).contains("minor changed"), "{}", stderr(&o));
    std::fs::write(&p.a.config, &orig).unwrap();
    common::blk::set_peer(&p.a.config, ("fs3", 1, pc));
    p.a.adm_ok(&["adjust", "r0"]);
    for (what, want) in [
        ("StandAlone", "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:StandAlone".to_string()),
        ("destroy path", format!("destroy path name:r0 peer-node-id:1 conn-name:fs2 local:ipv4:127.0.0.1:{pa} peer:ipv4:127.0.0.1:{}", port_of(&p.b))),
        ("destroy peer-device", "destroy peer-device name:r0 peer-node-id:1 conn-name:fs2 volume:0".to_string()),
        ("destroy connection", "destroy connection name:r0 peer-node-id:1 conn-name:fs2".to_string()),
        ("create connection", "create connection name:r0 peer-node-id:1 conn-name:fs3 connection:StandAlone role:Unknown".to_string()),
        ("create peer-device", "create peer-device name:r0 peer-node-id:1 conn-name:fs3 volume:0 replication:Off peer-disk:DUnknown peer-client:no resync-suspended:no".to_string()),
        ("create path", format!("create path name:r0 peer-node-id:1 conn-name:fs3 local:ipv4:127.0.0.1:{pa} peer:ipv4:127.0.0.1:{pc} established:no")),
        ("Unconnected", "change connection name:r0 peer-node-id:1 conn-name:fs3 connection:Unconnected".to_string()),
    ] {
        ev.wait_line(10, what, |l| l == want);
    }
    ev.wait_line(10, "SyncSource to fs3", |l| {
        l.starts_with("change peer-device name:r0 peer-node-id:1 conn-name:fs3 volume:0 replication:SyncSource")
    });
    p.a.wait_status(
        20,
        "r0 role:Primary\n  disk:UpToDate\n  fs3 role:Secondary\n    peer-disk:UpToDate\n",
    );
    c.wait_status(
        20,
        "r0 role:Secondary\n  disk:UpToDate\n  fs1 role:Primary\n    peer-disk:UpToDate\n",
    );
    wait_same_tree(&p.a.data_dir, &c.data_dir, 10);
    // adjust again: nothing to do, no objects replaced
    p.a.adm_ok(&["adjust", "r0"]);
    ev.settle(300);
    assert!(
        !ev.seen
            .iter()
            .any(|l| l.contains("conn-name:fs3") && l.starts_with("destroy")),
        "{:?}",
        ev.seen
    );
}

/// `drbdadm adjust` / `up` with no daemon start one (module autoload): with
/// `auto_up = false` the command brings the resource up; with the default
/// `auto_up = true` `up` finds it up and succeeds. The two autoloaded hosts
/// connect.
#[test]
fn adjust_and_up_autoload_the_daemon() {
    let p = Pair::new("");
    let text = std::fs::read_to_string(&p.a.config).unwrap().replacen(
        "minor = 1000\n",
        "minor = 1000\nauto_up = false\n",
        1,
    );
    std::fs::write(&p.a.config, text).unwrap();
    let (ga, gb) = (
        common::blk::Autoloaded::new(&p.a),
        common::blk::Autoloaded::new(&p.b),
    );
    // other commands do not load the "module"
    assert_eq!(p.a.drbdadm(&["primary", "r0"]).status.code(), Some(10));
    assert!(ga.pid().is_none());
    p.a.adm_ok(&["adjust", "r0"]);
    assert!(ga.pid().is_some(), "no daemon after drbdadm adjust");
    p.a.wait_status(
        5,
        "r0 role:Secondary\n  disk:Inconsistent\n  fs2 connection:Connecting\n",
    );
    let log = std::fs::read_to_string(p.a.state_dir.join("daemon.log")).unwrap();
    assert!(log.contains("running, control socket"), "{log}");
    p.b.adm_ok(&["up", "r0"]);
    assert!(gb.pid().is_some(), "no daemon after drbdadm up");
    p.a.wait_status(10, "r0 role:Secondary\n  disk:Inconsistent\n  fs2 role:Secondary\n    peer-disk:Inconsistent\n");
    // a second up: already up (exit 10), the daemon stays the same
    let pid = gb.pid();
    assert_eq!(p.b.drbdadm(&["up", "r0"]).status.code(), Some(10));
    assert_eq!(gb.pid(), pid);
}
