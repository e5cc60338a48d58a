//! DRBD's fence-peer handler (`understudy-fence-peer`) against a real controller
//! cluster on loopback (S1): run as DRBD runs it, on the Primary that lost its
//! replication connection, it makes the leader record the peer as outdated and
//! exits 4; the backup (or a former primary) is refused with 6; a wrong resource
//! or no reachable controller exits 1, so DRBD keeps the Primary's I/O frozen.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use understudy_tests::{bin, pair, pair_healthy, server, Cluster};

fn handler(agent_config: &std::path::Path, resource: &str, timeout_secs: u64) -> Output {
    Command::new(bin("understudy-fence-peer"))
        .arg("--config")
        .arg(agent_config)
        .arg("--timeout-secs")
        .arg(timeout_secs.to_string())
        .env("DRBD_RESOURCE", resource)
        .env("DRBD_PEER_NODE_ID", "1")
        .output()
        .expect("run understudy-fence-peer")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_fence_peer_handler_outdates_the_peer_through_the_leader() {
    let mut c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    c.wait_status("pair healthy", Duration::from_secs(60), pair_healthy);
    // Replication lost: the Primary disconnects (as a cut link would).
    let out = c.hosts[0].drbdadm(&["disconnect", "r0"]);
    assert!(out.status.success(), "{}", text(&out));
    // DRBD runs the handler on the Primary; it asks any controller (a follower
    // redirects it to the leader) and exits 4 once the mark is committed.
    let t0 = Instant::now();
    let out = handler(&c.hosts[0].agent_config, "r0", 10);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("fs1-b is recorded outdated"),
        "{}",
        text(&out)
    );
    eprintln!("fence-peer handler answered in {took:?}");
    let s = c.try_status().unwrap();
    assert_eq!(pair(&s, "fs1")["outdated"]["server"], "fs1-b", "{s}");
    // The controller may have seen the loss in the reports first; either way
    // the handler's request is in the history.
    let h = pair(&s, "fs1")["history"].to_string();
    assert!(h.contains("DRBD fence-peer handler on fs1-a"), "{h}");
    // The backup's handler (it is not the serving server) is refused: its I/O
    // would stay frozen.
    let out = handler(&c.hosts[1].agent_config, "r0", 5);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(text(&out).contains("stood down (S10)"), "{}", text(&out));
    // A resource this agent does not manage: 1.
    let out = handler(&c.hosts[0].agent_config, "r7", 5);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("DRBD_RESOURCE is \"r7\""),
        "{}",
        text(&out)
    );
    // Replication back: the resync brings the backup in sync and the mark goes.
    // (The controller may have reconnected the StandAlone file server itself:
    // S10 `ReconnectServing`; then DRBD says it has a net-config already.)
    let out = c.hosts[0].drbdadm(&["connect", "r0"]);
    assert!(
        out.status.success() || text(&out).contains("Device has a net-config"),
        "{}",
        text(&out)
    );
    let s = c.wait_status(
        "healthy again, mark cleared",
        Duration::from_secs(30),
        |s| pair_healthy(s) && pair(s, "fs1")["outdated"].is_null(),
    );
    assert_eq!(server(&s, "fs1", "fs1-b")["drbd"]["disk"], "UpToDate");
    // No controller at all: the handler gives up at its timeout with 1, and
    // DRBD keeps the I/O suspended.
    for i in 0..3 {
        c.kill_controller(i);
    }
    let t0 = Instant::now();
    let out = handler(&c.hosts[0].agent_config, "r0", 2);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert!(text(&out).contains("I/O stays suspended"), "{}", text(&out));
}
