//! Automatic failover end to end, with hosts in network namespaces (root only):
//! real DRBD emulator replication, nfs-ganesha, a floating client IP with
//! gratuitous ARP, and the `local` cloud fencing the dead file server.

use std::time::{Duration, Instant};

use understudy_tests::nscluster::{
    serving_ok, workload_data, Invariants, NsCluster, NsOptions, Writer, PAIR,
};
use understudy_tests::{pair, wait_for};

fn history(s: &serde_json::Value) -> Vec<String> {
    understudy_tests::history_lines(s, PAIR)
}

#[test]
fn a_file_written_before_the_failure_is_read_back_after_failover() {
    let mut c = NsCluster::start();
    let _logs = c.keep_logs_on_panic();
    // libnfs 4.0's nfs-cp fails client-side on a file of about 4000 bytes or more
    // against ganesha 4.3 (it never sends the WRITE), so each file stays below.
    let files: Vec<(String, Vec<u8>)> = (0..4u32)
        .map(|f| {
            let data = (0..3000u32)
                .map(|i| (i.wrapping_mul(7).wrapping_add(f * 13) % 251) as u8)
                .collect();
            (format!("precious-{f}.bin"), data)
        })
        .collect();
    for (name, data) in &files {
        c.nfs_write(name, data).expect("write through NFS");
        assert_eq!(&c.nfs_read(name).expect("read back"), data);
    }
    // No wait for replication: protocol C, acknowledged means on fsb's disk.
    let t0 = Instant::now();
    c.kill_host(0);
    let s = c.wait_status("failover to fsb", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Degraded" && pair(s, PAIR)["serving"] == "fs1-fsb"
    });
    let took = t0.elapsed();
    eprintln!("failover completed {took:?} after the kill");
    assert!(serving_ok(&s, "fs1-fsb"), "{s}");
    for (name, data) in &files {
        let got = wait_for(
            "NFS read through the client IP",
            Duration::from_secs(15),
            || c.nfs_read(name).ok(),
        );
        assert_eq!(got.len(), data.len(), "{name}");
        assert!(&got == data, "{name} differs after failover");
    }
    eprintln!("first file read back {:?} after the kill", t0.elapsed());
    // Never two holders of the client IP, never two NFS servers.
    assert_eq!(c.ip_holders(), vec!["fsb"]);
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    // Every step is in the history, in order, each with its timing.
    let h = history(&s).join("\n");
    let mut at = 0;
    for step in [
        "Confirm", "Fence", "Promote", "Mount", "Export", "ClaimIp", "Verify",
    ] {
        let needle = format!("step {step} done in ");
        let pos = h[at..]
            .find(&needle)
            .unwrap_or_else(|| panic!("no {needle:?} after offset {at} in\n{h}"));
        at += pos + needle.len();
    }
    assert!(h.contains("FailingOver -> Degraded"), "{h}");
    assert_eq!(pair(&s, PAIR)["epoch"], 1);
}

fn block_cluster() -> NsCluster {
    NsCluster::start_with(NsOptions {
        block_device: true,
        ..NsOptions::default()
    })
}

/// Issue 7: "no acknowledged write is lost". The DRBD emulator in block mode
/// (protocol C, ext4 on its device), a client writing numbered files back to back
/// through the client IP, the file server SIGKILLed in the middle of the writes
/// with no wait for replication: after the failover every acknowledged write reads
/// back byte-identical through the client IP.
#[test]
fn no_acknowledged_write_is_lost_when_the_file_server_dies_mid_write() {
    let mut c = block_cluster();
    let _logs = c.keep_logs_on_panic();
    let inv = Invariants::watch(&c);
    let w = c.start_writer("w");
    w.wait_more_acked(20, Duration::from_secs(60));
    let t0 = Instant::now();
    let acked_before = w.acked();
    c.kill_host(0);
    let s = c.wait_status("failover to fsb", Duration::from_secs(60), |s| {
        pair(s, PAIR)["state"] == "Degraded" && pair(s, PAIR)["serving"] == "fs1-fsb"
    });
    eprintln!("failover completed {:?} after the kill", t0.elapsed());
    assert!(serving_ok(&s, "fs1-fsb"), "{s}");
    // The client's writes go on through the new server (after its grace period).
    w.wait_more_acked(10, Duration::from_secs(60));
    let client = w.client();
    let writes = w.stop();
    let during: Vec<_> = writes
        .iter()
        .filter(|r| r.started <= t0 && r.finished >= t0)
        .map(|r| (r.name.clone(), r.acked))
        .collect();
    let check = Writer::verify(&client, &writes, Duration::from_secs(30));
    eprintln!(
        "writes: {} attempted, {} acknowledged ({acked_before} before the kill), {} lost; in flight at the kill: {during:?}",
        check.attempted,
        check.acked,
        check.lost.len()
    );
    assert!(
        check.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        check.lost
    );
    assert!(check.acked as u64 >= acked_before + 10);
    let samples = inv.check();
    assert!(samples > 10, "only {samples} invariant samples");
    assert_eq!(c.ip_holders(), vec!["fsb"]);
    assert_eq!(c.exporting_hosts(), vec!["fsb"]);
    assert_eq!(pair(&s, PAIR)["epoch"], 1);
}

/// Issue 7, S1 on a real block device: the replication link is cut, the client
/// goes on writing (fsa's I/O suspended until its fence-peer handler got fsb
/// marked outdated, then acknowledged by fsa alone), then fsa dies. Nothing is
/// promoted, the IP does not move, the pair is Blocked, and every acknowledged
/// write is on the dead server's disk (its backing file, journal replayed).
#[test]
fn writes_acknowledged_after_a_replication_cut_stay_on_the_dead_server_and_block_the_pair() {
    let mut c = block_cluster();
    let _logs = c.keep_logs_on_panic();
    let inv = Invariants::watch(&c);
    let w = c.start_writer("w");
    w.wait_more_acked(10, Duration::from_secs(60));
    let cut_at = Instant::now();
    c.net.block("fsa", c.net.addr("fsb"));
    c.wait_status("fsb marked outdated", Duration::from_secs(30), |s| {
        pair(s, PAIR)["outdated"]["server"] == "fs1-fsb"
    });
    let log = wait_for(
        "fence-peer handler ran on fsa",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(c.hosts[0].dir.join("emu.log"))
                .ok()
                .filter(|l| l.contains("fence-peer helper returned 4"))
        },
    );
    assert!(log.contains("susp-io( no -> fencing )"), "{log}");
    // Writes go on, acknowledged by fsa alone, for a few seconds.
    w.wait_more_acked(5, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    c.kill_host(0);
    let killed_at = Instant::now();
    let s = c.wait_status("pair blocked", Duration::from_secs(30), |s| {
        pair(s, PAIR)["state"] == "Blocked"
    });
    let why = pair(&s, PAIR)["state_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.starts_with("S1: not promoting fs1-fsb automatically: it is outdated since "),
        "{why}"
    );
    // Nothing promoted, exported or moved, for longer than a failover takes.
    std::thread::sleep(Duration::from_secs(3));
    let writes = w.stop();
    let s = c.try_status().unwrap();
    assert_eq!(
        pair(&s, PAIR)["state"],
        "Blocked",
        "{}",
        history(&s).join("\n")
    );
    assert_eq!(pair(&s, PAIR)["epoch"], 0, "no failover was started");
    assert_eq!(
        understudy_tests::server(&s, PAIR, "fs1-fsb")["drbd"]["role"],
        "Secondary"
    );
    assert!(c.exporting_hosts().is_empty());
    assert_eq!(c.ip_holders(), vec!["fsa"]);
    let samples = inv.check();
    assert!(samples > 10, "only {samples} invariant samples");
    let acked: Vec<_> = writes.iter().filter(|r| r.acked).collect();
    // Nobody served a write started after the file server was dead.
    let late: Vec<_> = acked
        .iter()
        .filter(|r| r.started >= killed_at)
        .map(|r| &r.name)
        .collect();
    assert!(late.is_empty(), "acknowledged after the kill: {late:?}");
    let after_cut = acked.iter().filter(|r| r.started >= cut_at).count();
    assert!(
        after_cut >= 5,
        "only {after_cut} writes acknowledged after the cut"
    );
    // Every acknowledged write is on the dead server's disk.
    let fsa = c.dump_disk(0, "after-kill");
    let mut lost = Vec::new();
    for r in &acked {
        match std::fs::read(fsa.join(&r.name)) {
            Ok(got) if got == workload_data(r.index) => {}
            Ok(got) => lost.push(format!("{}: {} bytes differ", r.name, got.len())),
            Err(e) => lost.push(format!("{}: {e}", r.name)),
        }
    }
    // fsb misses the writes made after the cut: promoting it would have lost them.
    let fsb = c.dump_disk(1, "after-kill");
    let missing_on_fsb = acked
        .iter()
        .filter(|r| std::fs::read(fsb.join(&r.name)).ok() != Some(workload_data(r.index)))
        .count();
    eprintln!(
        "writes: {} attempted, {} acknowledged ({after_cut} after the cut), {} lost from fsa's disk, {missing_on_fsb} missing on fsb",
        writes.len(),
        acked.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost from fsa's disk: {lost:?}"
    );
    assert!(
        missing_on_fsb > 0,
        "fsb has every write: the cut did not cut"
    );
}
