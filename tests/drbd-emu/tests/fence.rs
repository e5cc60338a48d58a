//! End-to-end tests of the `fencing` policy and the fence-peer /
//! unfence-peer handlers: real daemon processes, a handler script that
//! records its environment and exits with the code the test asks for.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Handler files: `NAME.code` (exit code, default 0), `NAME.sleep`
/// (seconds to sleep first); each run of handler NAME on node N writes its
/// environment to `NAME.N.env` and appends a line to `NAME.N.runs`.
struct Handlers {
    dir: tempfile::TempDir,
}

impl Handlers {
    fn new() -> Handlers {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let script = format!(
            "#!/bin/sh\nd='{d}'\nn=\"$1.$DRBD_MY_NODE_ID\"\nenv > \"$d/$n.env.tmp\" && mv \"$d/$n.env.tmp\" \"$d/$n.env\"\necho \"$$\" >> \"$d/$n.runs\"\nif [ -f \"$d/$1.sleep\" ]; then\n  sleep \"$(cat \"$d/$1.sleep\")\" &\n  echo $! > \"$d/$n.sleeppid\"\n  wait\nfi\nexit \"$(cat \"$d/$1.code\" 2>/dev/null || echo 0)\"\n"
        );
        std::fs::write(dir.path().join("handler.sh"), script).unwrap();
        Handlers { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn set_code(&self, name: &str, code: i32) {
        std::fs::write(self.path().join(format!("{name}.code")), code.to_string()).unwrap();
    }

    fn set_sleep(&self, name: &str, secs: u32) {
        std::fs::write(self.path().join(format!("{name}.sleep")), secs.to_string()).unwrap();
    }

    fn runs(&self, name: &str, node: u32) -> usize {
        std::fs::read_to_string(self.path().join(format!("{name}.{node}.runs")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn env(&self, name: &str, node: u32) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.path().join(format!("{name}.{node}.env")))
            .unwrap_or_else(|e| panic!("{name} on node {node} recorded no environment: {e}"));
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Config sections: fast ping, the policy, both handlers.
    fn tuning(&self, fencing: &str, timeout_ms: u64) -> String {
        let sh = self.path().join("handler.sh");
        format!(
            "ping_interval_ms = 100\nping_timeout_ms = 400\nconnect_retry_ms = 100\n[net]\nfencing = \"{fencing}\"\n[handlers]\nfence_peer = \"sh {0} fence\"\nunfence_peer = \"sh {0} unfence\"\nfence_peer_timeout_ms = {timeout_ms}\n",
            sh.display()
        )
    }
}

fn log(n: &Node) -> String {
    std::fs::read_to_string(&n.log).unwrap_or_default()
}

fn json_suspended(n: &Node) -> bool {
    n.status_json()[0]["suspended"]
        .as_bool()
        .expect("suspended is a JSON bool")
}

fn json_peer_disk(n: &Node) -> String {
    n.status_json()[0]["connections"][0]["peer_devices"][0]["peer-disk-state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn json_oos(n: &Node) -> u64 {
    n.status_json()[0]["connections"][0]["peer_devices"][0]["out-of-sync"]
        .as_u64()
        .unwrap()
}

fn is_susp(l: &str, v: &str) -> bool {
    l.starts_with("change resource ") && key(l, "suspended") == Some(v)
}

/// A change line that reports a new `suspended` value.
fn changed_suspended(l: &str) -> bool {
    l.starts_with("change ") && key(l, "suspended").is_some()
}

fn is_helper(l: &str, verb: &str, name: &str) -> bool {
    l.starts_with(&format!(
        "{verb} helper name:r0 peer-node-id:1 conn-name:fs2 "
    )) && key(l, "helper") == Some(name)
}

/// resource-and-stonith, handler exits 4: suspended, handler with DRBD's
/// environment, peer Outdated, resumed.
#[test]
fn stonith_handler_exit_4_suspends_outdates_peer_and_resumes() {
    let h = Handlers::new();
    h.set_code("fence", 4);
    let mut p = Pair::synced(&h.tuning("resource-and-stonith", 10_000));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");

    p.b.kill();
    let susp = ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
    assert_eq!(key(&susp, "role"), None, "role did not change: {susp}");
    ev.wait_line(5, "call helper fence-peer", |l| {
        is_helper(l, "call", "fence-peer")
    });
    let resp = ev.wait_line(5, "response helper fence-peer", |l| {
        is_helper(l, "response", "fence-peer")
    });
    assert_eq!(key(&resp, "status"), Some("1024"), "exit 4 << 8: {resp}");
    ev.wait_line(5, "peer-disk Outdated", |l| {
        l.starts_with("change peer-device ") && key(l, "peer-disk") == Some("Outdated")
    });
    ev.wait_line(5, "suspended:no", |l| is_susp(l, "no"));
    // the suspension came first, with the connection loss
    let preds: [&dyn Fn(&str) -> bool; 3] = [
        &|l| is_susp(l, "fencing"),
        &|l| is_helper(l, "call", "fence-peer"),
        &|l| is_helper(l, "response", "fence-peer"),
    ];
    let order: Vec<usize> = preds
        .iter()
        .map(|f| ev.seen.iter().position(|l| f(l)).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", ev.seen);

    assert_eq!(h.runs("fence", 0), 1);
    assert_eq!(h.runs("fence", 1), 0);
    let env = h.env("fence", 0);
    for (k, v) in [
        ("DRBD_RESOURCE", "r0"),
        ("DRBD_MINOR", "1000"),
        ("DRBD_MINOR_0", "1000"),
        ("DRBD_VOLUME", "0"),
        ("DRBD_PEER_NODE_ID", "1"),
        ("DRBD_MY_NODE_ID", "0"),
        ("DRBD_PEER_ADDRESS", "127.0.0.1"),
        ("DRBD_PEER_AF", "ipv4"),
        ("DRBD_MY_ADDRESS", "127.0.0.1"),
        ("DRBD_MY_AF", "ipv4"),
        ("DRBD_NODE_ID_0", "fs1"),
        ("DRBD_NODE_ID_1", "fs2"),
        ("UP_TO_DATE_NODES", "0x00000001"),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k} in {env:?}");
    }
    assert_eq!(
        env.get("DRBD_CONF").map(PathBuf::from),
        Some(p.a.config.clone()),
        "{env:?}"
    );
    assert_eq!(
        env.get("DRBD_BACKING_DEV_0").map(PathBuf::from),
        Some(p.a.data_dir.clone())
    );
    let cstate = env.get("DRBD_CSTATE").expect("DRBD_CSTATE");
    assert!(
        ["BrokenPipe", "Unconnected", "Connecting"].contains(&cstate.as_str()),
        "{cstate}"
    );

    assert!(!json_suspended(&p.a));
    assert_eq!(json_peer_disk(&p.a), "Outdated");
    p.a.wait_status(
        2,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    let l = log(&p.a);
    for want in [
        "drbd r0: susp-io( no -> fencing )",
        "drbd r0 fs2: helper command: /sbin/drbdadm fence-peer\n",
        "drbd r0 fs2: helper command: /sbin/drbdadm fence-peer exit code 4 (0x400)",
        "drbd r0 fs2: fence-peer helper returned 4 (peer was fenced)",
        "drbd r0/0 drbd1000 fs2: pdsk( DUnknown -> Outdated )",
        "drbd r0: susp-io( fencing -> no )",
    ] {
        assert!(l.contains(want), "log lacks {want:?}:\n{l}");
    }
}

/// Handler exits 1 ("broken"): I/O stays suspended, writes made meanwhile
/// are neither counted nor replicated, until `drbdadm resume-io`; then
/// they go to the peer once it is back. Demotion without frozen writes
/// keeps the suspension.
#[test]
fn failed_handler_keeps_io_suspended_until_resume_io() {
    let h = Handlers::new();
    h.set_code("fence", 1);
    let mut p = Pair::synced(&h.tuning("resource-and-stonith", 10_000));
    write_file(&p.a.data_dir.join("before.img"), 64 * 1024, 1);
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);
    wait_until(5, "out-of-sync 0", || (json_oos(&p.a) == 0).then_some(()));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");

    p.b.kill();
    ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
    let resp = ev.wait_line(5, "response helper", |l| {
        is_helper(l, "response", "fence-peer")
    });
    assert_eq!(key(&resp, "status"), Some("256"), "{resp}");
    wait_until(5, "kernel log of the failed handler", || {
        log(&p.a)
            .contains("drbd r0 fs2: fence-peer helper broken, returned 1")
            .then_some(())
    });
    assert!(log(&p.a)
        .contains("drbd r0 fs2: helper command: /sbin/drbdadm fence-peer exit code 1 (0x100)"));

    // a write while suspended: frozen, not counted as out of sync
    let gen = |n: &Node| -> serde_json::Value {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(n.state_dir.join("meta.json")).unwrap())
                .unwrap();
        m["gen"].clone()
    };
    let gen_before = gen(&p.a);
    assert!(gen_before.is_u64(), "meta.json has a gen: {gen_before}");
    write_file(&p.a.data_dir.join("frozen.img"), 256 * 1024, 2);
    std::thread::sleep(Duration::from_millis(600));
    assert!(json_suspended(&p.a));
    assert_eq!(json_oos(&p.a), 0, "a frozen write is not out of sync yet");
    assert_eq!(json_peer_disk(&p.a), "DUnknown");
    p.a.wait_status(
        2,
        "r0 role:Primary suspended:fencing\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    assert_eq!(
        gen_before,
        gen(&p.a),
        "no new data generation while suspended"
    );
    ev.settle(100);
    assert!(!ev.seen.iter().any(|l| is_susp(l, "no")), "{:?}", ev.seen);

    p.a.adm_ok(&["resume-io", "r0"]);
    ev.wait_line(5, "suspended:no after resume-io", |l| is_susp(l, "no"));
    assert!(!json_suspended(&p.a));
    let oos = wait_until(5, "frozen write counted after resume", || {
        let v = json_oos(&p.a);
        (v >= 256).then_some(v)
    });
    assert!(oos < 300, "only the frozen file: {oos} KiB");
    assert!(log(&p.a).contains("drbd r0: susp-io( fencing -> no )"));

    // the peer comes back: it gets the write by a resync (new generation)
    p.b.start();
    ev.wait_line(10, "SyncSource", |l| l.contains("replication:SyncSource"));
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);
    p.a.wait_status(
        10,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 role:Secondary\n    peer-disk:UpToDate\n",
    );

    // drbdsetup resume-io MINOR on a resource that is not suspended: ok
    let o = p.a.drbdsetup(&["resume-io", "1000"]);
    assert!(o.status.success(), "{o:?}");
}

/// The connection comes back while I/O is still suspended (DRBD's "case2"):
/// I/O resumes without a new generation and the frozen write is replicated.
#[test]
fn reconnect_while_suspended_resumes_and_replicates_frozen_write() {
    let h = Handlers::new();
    h.set_code("fence", 1);
    let mut p = Pair::synced(&h.tuning("resource-and-stonith", 10_000));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    p.b.kill();
    ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
    ev.wait_line(5, "response helper", |l| {
        is_helper(l, "response", "fence-peer")
    });
    write_file(&p.a.data_dir.join("frozen.img"), 128 * 1024, 3);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!p.b.data_dir.join("frozen.img").exists());
    assert!(json_suspended(&p.a));

    p.b.start();
    let resumed = ev.wait_line(10, "suspended:no on reconnect", |l| is_susp(l, "no"));
    let conn = ev.wait_line(2, "Connected", |l| {
        l.starts_with("change connection ") && l.contains("connection:Connected")
    });
    // one state change: the resource line, then the connection line
    let i = ev.seen.iter().position(|l| *l == resumed).unwrap();
    let j = ev.seen.iter().position(|l| *l == conn).unwrap();
    assert_eq!(j, i + 1, "{:?}", ev.seen);
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);
    // no resync: same generation, the frozen write went as replication
    assert!(
        !ev.seen.iter().any(|l| l.contains("replication:SyncSource")),
        "{:?}",
        ev.seen
    );
    assert!(log(&p.a).contains("I/O resumed: connection established again"));
}

/// A handler that runs longer than `fence_peer_timeout_ms` is killed (with
/// its children) and counts as failed: I/O stays suspended. A demotion
/// without frozen writes keeps the suspension; promoting again runs the
/// handler (which fails again) and is refused.
#[test]
fn handler_timeout_keeps_io_suspended() {
    let h = Handlers::new();
    h.set_sleep("fence", 30);
    h.set_code("fence", 4);
    let mut p = Pair::synced(&h.tuning("resource-and-stonith", 400));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    p.b.kill();
    ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
    let resp = ev.wait_line(5, "response helper after the timeout", |l| {
        is_helper(l, "response", "fence-peer")
    });
    assert_eq!(key(&resp, "status"), Some("9"), "SIGKILL: {resp}");
    let pid: i32 = std::fs::read_to_string(h.file("fence.0.sleeppid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(5, "the handler's child is killed too", || {
        // SAFETY: kill(2) with signal 0 only checks for existence.
        (unsafe { libc::kill(pid, 0) } != 0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(json_suspended(&p.a));
    assert_eq!(json_peer_disk(&p.a), "DUnknown");
    let l = log(&p.a);
    assert!(
        l.contains("did not finish within fence_peer_timeout_ms=400"),
        "{l}"
    );
    assert!(l.contains("fence-peer helper broken, returned 0"), "{l}");

    // demote: nothing frozen, the suspension stays
    p.a.adm_ok(&["secondary", "r0"]);
    p.a.wait_status(
        2,
        "r0 role:Secondary suspended:fencing\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    // promote: fencing runs the handler first; it times out again -> refused
    let o = p.a.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "r0: State change failed: (-7) Refusing to be Primary while peer is not outdated"
        ),
        "{err}"
    );
    assert!(err.contains("Command 'drbdsetup primary r0' terminated with exit code 11"));
    assert_eq!(h.runs("fence", 0), 2);
    p.a.adm_ok(&["resume-io", "r0"]);
    p.a.wait_status(
        2,
        "r0 role:Secondary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
}

/// resource-only: the handler runs, I/O is never suspended.
#[test]
fn resource_only_runs_handler_without_suspension() {
    let h = Handlers::new();
    h.set_code("fence", 4);
    let mut p = Pair::synced(&h.tuning("resource-only", 10_000));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    p.b.kill();
    ev.wait_line(5, "call helper", |l| is_helper(l, "call", "fence-peer"));
    ev.wait_line(5, "response helper", |l| {
        is_helper(l, "response", "fence-peer")
    });
    ev.wait_line(5, "peer-disk Outdated", |l| {
        key(l, "peer-disk") == Some("Outdated")
    });
    ev.settle(300);
    assert!(
        !ev.seen.iter().any(|l| changed_suspended(l)),
        "{:?}",
        ev.seen
    );
    assert!(!json_suspended(&p.a));
    assert_eq!(h.runs("fence", 0), 1);
    assert!(!log(&p.a).contains("susp-io"));
}

/// dont-care (the default): no handler runs even though one is configured.
#[test]
fn dont_care_runs_no_handler() {
    let h = Handlers::new();
    h.set_code("fence", 4);
    let mut p = Pair::synced(&h.tuning("dont-care", 10_000));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    p.b.kill();
    ev.wait_line(5, "Connecting", |l| l.contains("connection:Connecting"));
    ev.settle(800);
    assert_eq!(h.runs("fence", 0), 0);
    assert!(
        !ev.seen.iter().any(|l| l.contains(" helper ")
            || changed_suspended(l)
            || key(l, "peer-disk") == Some("Outdated")),
        "{:?}",
        ev.seen
    );
    assert!(!log(&p.a).contains("helper command"));
}

/// After the fenced peer comes back and the resync made it UpToDate, the
/// SyncSource runs unfence-peer.
#[test]
fn unfence_peer_runs_after_resync() {
    let h = Handlers::new();
    h.set_code("fence", 4);
    let mut p = Pair::synced(&h.tuning("resource-and-stonith", 10_000));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    // the initial sync (A was SyncSource) already ended with unfence-peer
    let before = wait_until(5, "unfence-peer after the initial sync", || {
        let n = h.runs("unfence", 0);
        (n == 1).then_some(n)
    });
    p.b.kill();
    ev.wait_line(5, "suspended:no", |l| is_susp(l, "no"));
    assert_eq!(h.runs("unfence", 0), before);
    p.b.start();
    ev.wait_line(10, "SyncSource", |l| l.contains("replication:SyncSource"));
    ev.wait_line(10, "Established", |l| l.contains("replication:Established"));
    ev.wait_line(5, "call helper unfence-peer", |l| {
        is_helper(l, "call", "unfence-peer")
    });
    let r = ev.wait_line(5, "response helper unfence-peer", |l| {
        is_helper(l, "response", "unfence-peer")
    });
    assert_eq!(key(&r, "status"), Some("0"));
    assert_eq!(h.runs("unfence", 0), before + 1);
    assert_eq!(h.runs("unfence", 1), 0, "only the SyncSource unfences");
    let env = h.env("unfence", 0);
    assert_eq!(env["UP_TO_DATE_NODES"], "0x00000003", "{env:?}");
    assert_eq!(env["DRBD_PEER_NODE_ID"], "1");
    assert_eq!(env["DRBD_CSTATE"], "Connected");
    assert!(log(&p.a).contains("helper command: /sbin/drbdadm unfence-peer exit code 0"));
}

/// A Secondary losing its Primary runs no handler and is not suspended;
/// promoting it runs fence-peer first (DRBD's SS_PRIMARY_NOP path): exit 4
/// lets it become Primary, a failure refuses the promotion.
#[test]
fn secondary_runs_no_handler_on_loss_but_before_promotion() {
    let h = Handlers::new();
    h.set_code("fence", 1);
    let mut p = Pair::synced(&h.tuning("resource-and-stonith", 10_000));
    let mut ev = p.b.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    p.a.kill();
    ev.wait_line(5, "Connecting", |l| l.contains("connection:Connecting"));
    ev.settle(800);
    assert_eq!(h.runs("fence", 1), 0, "no handler on a Secondary's loss");
    assert!(!json_suspended(&p.b));
    assert!(
        !ev.seen
            .iter()
            .any(|l| l.contains(" helper ") || changed_suspended(l)),
        "{:?}",
        ev.seen
    );

    // failing handler: promotion refused
    let o = p.b.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("(-7) Refusing to be Primary while peer is not outdated"));
    assert_eq!(h.runs("fence", 1), 1);
    p.b.wait_status(
        2,
        "r0 role:Secondary\n  disk:UpToDate\n  fs1 connection:Connecting\n",
    );

    // handler outdates the peer: promoted, peer-disk Outdated, not suspended
    h.set_code("fence", 4);
    p.b.adm_ok(&["primary", "r0"]);
    assert_eq!(h.runs("fence", 1), 2);
    p.b.wait_status(
        2,
        "r0 role:Primary\n  disk:UpToDate\n  fs1 connection:Connecting\n",
    );
    assert_eq!(json_peer_disk(&p.b), "Outdated");
    assert!(!json_suspended(&p.b));
    let env = h.env("fence", 1);
    assert_eq!(env["DRBD_PEER_NODE_ID"], "0");
    assert_eq!(env["DRBD_NODE_ID_0"], "fs1");
    assert_eq!(env["UP_TO_DATE_NODES"], "0x00000002");
    ev.wait_line(5, "role Primary", |l| {
        l.starts_with("change resource ") && key(l, "role") == Some("Primary")
    });
}

const SYNCED_A: &str =
    "r0 role:Primary\n  disk:UpToDate\n  fs2 role:Secondary\n    peer-disk:UpToDate\n";

/// A cut network (frozen peer, ping timeout) triggers fencing like a dead
/// peer: `NetworkFailure` and `suspended:fencing` in one state change.
#[test]
fn ping_timeout_triggers_fencing() {
    let h = Handlers::new();
    h.set_code("fence", 4);
    let p = Pair::synced(&h.tuning("resource-and-stonith", 10_000));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    p.b.signal(libc::SIGSTOP);
    let susp = ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
    let conn = ev.wait_line(1, "NetworkFailure", |l| {
        l.starts_with("change connection ") && l.contains("connection:NetworkFailure")
    });
    let (i, j) = (
        ev.seen.iter().position(|l| *l == susp).unwrap(),
        ev.seen.iter().position(|l| *l == conn).unwrap(),
    );
    assert_eq!(j, i + 1, "one state change: {:?}", ev.seen);
    ev.wait_line(5, "peer-disk Outdated", |l| {
        key(l, "peer-disk") == Some("Outdated")
    });
    ev.wait_line(5, "suspended:no", |l| is_susp(l, "no"));
    assert!(log(&p.a).contains("PingAck did not arrive in time."));
    assert_eq!(h.runs("fence", 0), 1);
    p.b.signal(libc::SIGCONT);
    p.a.wait_status(10, SYNCED_A);
}

/// Exit codes 3, 5, 7 outdate (or mark Inconsistent) the peer and resume
/// I/O; 6 ("peer is primary") cannot outdate a Primary: I/O stays
/// suspended.
#[test]
fn exit_codes_3_5_6_7() {
    let h = Handlers::new();
    let mut p = Pair::synced(&h.tuning("resource-and-stonith", 10_000));
    for (code, pdsk, text) in [
        (3, "Inconsistent", "peer is inconsistent or worse"),
        (5, "Outdated", "peer is unreachable, assumed to be dead"),
        (7, "Outdated", "peer was stonithed"),
    ] {
        h.set_code("fence", code);
        let mut ev = p.a.events(&[]);
        ev.wait_line(5, "exists -", |l| l == "exists -");
        p.b.kill();
        ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
        let r = ev.wait_line(5, "response", |l| is_helper(l, "response", "fence-peer"));
        assert_eq!(key(&r, "status"), Some((code << 8).to_string().as_str()));
        ev.wait_line(5, "peer-disk", |l| key(l, "peer-disk") == Some(pdsk));
        ev.wait_line(5, "suspended:no", |l| is_susp(l, "no"));
        let want = format!("drbd r0 fs2: fence-peer helper returned {code} ({text})");
        assert!(log(&p.a).contains(&want), "exit {code}: no {want:?}");
        p.b.start();
        p.a.wait_status(10, SYNCED_A);
    }
    assert!(!log(&p.a).contains("!= Stonith"), "7 with stonith is fine");

    h.set_code("fence", 6);
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    p.b.kill();
    ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
    ev.wait_line(5, "response", |l| is_helper(l, "response", "fence-peer"));
    wait_until(5, "exit 6 logged", || {
        log(&p.a)
            .contains("fence-peer helper returned 6 (peer is active)")
            .then_some(())
    });
    ev.settle(300);
    assert!(json_suspended(&p.a), "6 leaves I/O suspended");
    assert_eq!(json_peer_disk(&p.a), "DUnknown");
    p.a.wait_status(
        2,
        "r0 role:Primary suspended:fencing\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    let l = log(&p.a);
    assert!(
        l.contains("drbd r0 fs2: Peer is primary, outdating myself."),
        "{l}"
    );
    assert!(
        l.contains("drbd r0: State change failed: Need access to UpToDate data"),
        "{l}"
    );
    assert_eq!(h.runs("fence", 0), 4);
}

/// A write made while suspended is "frozen I/O": `drbdadm secondary` waits
/// for it until I/O resumes (DRBD's demotion flushes the device first).
#[test]
fn demotion_waits_for_frozen_write_until_resume() {
    let h = Handlers::new();
    h.set_code("fence", 1);
    let mut p = Pair::synced(&h.tuning("resource-and-stonith", 10_000));
    let mut ev = p.a.events(&[]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    p.b.kill();
    ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
    ev.wait_line(5, "response helper", |l| {
        is_helper(l, "response", "fence-peer")
    });
    write_file(&p.a.data_dir.join("frozen.img"), 64 * 1024, 4);

    let mut demote = std::process::Command::new(BIN)
        .args(["drbdadm", "secondary", "r0"])
        .env("DRBD_EMU_CONFIG", &p.a.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        demote.try_wait().unwrap().is_none(),
        "demotion must wait for the frozen write"
    );
    assert!(p
        .a
        .status()
        .starts_with("r0 role:Primary suspended:fencing\n"));

    p.a.adm_ok(&["resume-io", "r0"]);
    let st = wait_until(10, "demotion finishes after resume-io", || {
        demote.try_wait().unwrap()
    });
    assert!(st.success(), "{st:?}");
    p.a.wait_status(
        2,
        "r0 role:Secondary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    // the frozen write was taken into the new data generation: the peer
    // resyncs it when it is back
    p.b.start();
    wait_same_tree(&p.a.data_dir, &p.b.data_dir, 10);
}

/// A handler that cannot run (`sh: not found`, exit 127) and a missing
/// handler (drbdadm exits 0) both count as "broken": I/O stays suspended.
#[test]
fn unstartable_or_missing_handler_counts_as_failure() {
    let base = "ping_interval_ms = 100\nping_timeout_ms = 400\nconnect_retry_ms = 100\n[net]\nfencing = \"resource-and-stonith\"\n";
    for (handlers, code, raw) in [
        (
            "[handlers]\nfence_peer = \"/nonexistent/fence-peer --x\"\n",
            127,
            "32512",
        ),
        ("", 0, "0"),
    ] {
        let mut p = Pair::synced(&format!("{base}{handlers}"));
        let mut ev = p.a.events(&[]);
        ev.wait_line(5, "exists -", |l| l == "exists -");
        p.b.kill();
        ev.wait_line(5, "suspended:fencing", |l| is_susp(l, "fencing"));
        let r = ev.wait_line(5, "response", |l| is_helper(l, "response", "fence-peer"));
        assert_eq!(key(&r, "status"), Some(raw), "{r}");
        let want = format!("drbd r0 fs2: fence-peer helper broken, returned {code}");
        wait_until(5, &want, || log(&p.a).contains(&want).then_some(()));
        ev.settle(300);
        assert!(json_suspended(&p.a), "{handlers:?}: I/O stays suspended");
        assert!(!ev.seen.iter().any(|l| is_susp(l, "no")), "{:?}", ev.seen);
        if handlers.is_empty() {
            assert!(log(&p.a).contains("no fence-peer handler configured"));
        }
    }
}
