//! Automatic failover end to end, with hosts in network namespaces (root only):
//! real DRBD emulator replication, nfs-ganesha, a floating client IP with
//! gratuitous ARP, and the `local` cloud fencing the dead file server.

use std::time::{Duration, Instant};

use understudy_tests::nscluster::{serving_ok, NsCluster, PAIR};
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
    // Acknowledged and replicated: nothing out of sync on either side, for
    // longer than the NFS lease (expired clients' records get rewritten).
    c.wait_replicated(Duration::from_secs(4), Duration::from_secs(30));
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
