//! End-to-end tests of the block mode (`[device] mode = "block"`): real
//! daemons, the device file served through FUSE, loop devices on it.
//!
//! They need root, `/dev/fuse`, `losetup`/`blockdev` (util-linux) and
//! `mkfs.ext4` (e2fsprogs); when something is missing they FAIL with the
//! install command (scripts/install-deps.sh), they never skip.
//! Every loop device, FUSE mount and ext4 mount is released by a Drop guard
//! (also when a test fails); a daemon cleans up what crashed runs leaked.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::blk::{first_difference, pattern, read_at, require_env, run};
use common::*;

/// A pair of block-mode hosts; on drop: daemons killed, then ext4 mounts,
/// loop devices and FUSE mounts released.
struct BPair {
    p: Pair,
    mounts: Vec<PathBuf>,
}

fn block_sections(n: &Node, size_mib: u64, extra_net: &str) -> String {
    let base = n.state_dir.parent().unwrap();
    format!(
        "[device]\nmode = \"block\"\nsize_mib = {size_mib}\nbacking_file = \"{}\"\ndevice_link = \"{}\"\n[net]\n{extra_net}\n",
        base.join("disk.img").display(),
        base.join("drbd1000").display()
    )
}

impl BPair {
    /// Configured, not started. `tuning`: keys of `[tuning]`; `net`: keys
    /// of `[net]`; `more`: further sections (`[handlers]`).
    fn new(size_mib: u64, tuning: &str, net: &str, more: &str) -> BPair {
        require_env();
        let p = Pair::new(tuning);
        for n in [&p.a, &p.b] {
            let mut text = std::fs::read_to_string(&n.config).unwrap();
            text.push_str(&block_sections(n, size_mib, net));
            text.push_str(more);
            std::fs::write(&n.config, text).unwrap();
        }
        BPair {
            p,
            mounts: Vec::new(),
        }
    }

    fn started(size_mib: u64, tuning: &str, net: &str, more: &str) -> BPair {
        let mut bp = BPair::new(size_mib, tuning, net, more);
        bp.p.a.start();
        bp.p.b.start();
        bp.p.a.wait_status(10, "r0 role:Secondary\n  disk:Inconsistent\n  fs2 role:Secondary\n    peer-disk:Inconsistent\n");
        bp.p.b.wait_status(10, "r0 role:Secondary\n  disk:Inconsistent\n  fs1 role:Secondary\n    peer-disk:Inconsistent\n");
        bp
    }

    /// Started, fs1 forced Primary and the full initial sync done.
    fn synced(size_mib: u64, tuning: &str, net: &str, more: &str) -> BPair {
        let bp = BPair::started(size_mib, tuning, net, more);
        bp.p.a.adm_ok(&["primary", "--force", "r0"]);
        bp.p.a.wait_status(60, SYNCED_A);
        bp.p.b.wait_status(60, SYNCED_B);
        bp
    }

    fn mount_ext4(&mut self, dev: &str, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        run("mount", &["-t", "ext4", dev, &at.display().to_string()]);
        self.mounts.push(at.to_path_buf());
    }
}

impl Drop for BPair {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
        self.p.a.kill();
        self.p.b.kill();
        for n in [&self.p.a, &self.p.b] {
            if let Ok(d) = std::fs::read_to_string(n.state_dir.join("device")) {
                // only if it is still ours (a daemon of another test may
                // have cleaned it up and the number been reused)
                let d = d.trim();
                let short = d.trim_start_matches("/dev/");
                let back = std::fs::read_to_string(format!("/sys/block/{short}/loop/backing_file"))
                    .unwrap_or_default();
                if back.trim().trim_end_matches(" (deleted)") == dev_file(n).display().to_string() {
                    let _ = Command::new("losetup").arg("-d").arg(d).output();
                }
            }
            let _ = Command::new("umount")
                .arg("-l")
                .arg(n.state_dir.join("fuse"))
                .output();
        }
    }
}

const SYNCED_A: &str =
    "r0 role:Primary\n  disk:UpToDate\n  fs2 role:Secondary\n    peer-disk:UpToDate\n";
const SYNCED_B: &str =
    "r0 role:Secondary\n  disk:UpToDate\n  fs1 role:Primary\n    peer-disk:UpToDate\n";

fn dev_file(n: &Node) -> PathBuf {
    n.state_dir.join("fuse").join("drbd-emu-device")
}

fn backing(n: &Node) -> PathBuf {
    n.state_dir.parent().unwrap().join("disk.img")
}

fn loop_dev(n: &Node) -> String {
    let d = std::fs::read_to_string(n.state_dir.join("device"))
        .unwrap_or_else(|e| panic!("{}: no published device: {e}", n.name));
    let d = d.trim().to_string();
    assert!(d.starts_with("/dev/loop"), "{d}");
    let link = n.state_dir.parent().unwrap().join("drbd1000");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(&d));
    d
}

/// Starts `pwrite` (+ fsync) of `data` at `off` to the device file in a
/// thread; the receiver gets the result when the write returned.
fn write_async(n: &Node, off: u64, data: Vec<u8>) -> mpsc::Receiver<std::io::Result<()>> {
    let p = dev_file(n);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| {
            let f = std::fs::OpenOptions::new().write(true).open(&p)?;
            f.write_all_at(&data, off)?;
            f.sync_data()
        })();
        let _ = tx.send(r);
    });
    rx
}

fn write_sync(n: &Node, off: u64, data: &[u8]) {
    write_async(n, off, data.to_vec())
        .recv_timeout(Duration::from_secs(20))
        .expect("write did not return within 20s")
        .expect("write failed");
}

fn pd(n: &Node) -> serde_json::Value {
    n.status_json()[0]["connections"][0]["peer_devices"][0].clone()
}

fn oos(n: &Node) -> u64 {
    pd(n)["out-of-sync"].as_u64().unwrap()
}

fn received(n: &Node) -> u64 {
    pd(n)["received"].as_u64().unwrap()
}

fn log(n: &Node) -> String {
    std::fs::read_to_string(&n.log).unwrap_or_default()
}

/// Protocol C: a write is answered only after the peer has it; with the
/// peer frozen it blocks, and after the ping timeout it completes locally
/// and is counted out of sync; the reconnect resyncs it.
#[test]
fn protocol_c_write_waits_for_the_peer() {
    let bp = BPair::synced(
        16,
        "ping_interval_ms = 200\nping_timeout_ms = 2500\nconnect_retry_ms = 100",
        "",
        "",
    );
    let (a, b) = (&bp.p.a, &bp.p.b);
    // connected: the write is on the peer's backing file when it returns
    let d1 = pattern(8192, 1);
    write_sync(a, 4096 * 10, &d1);
    assert_eq!(read_at(&backing(b), 4096 * 10, 8192), d1);
    assert_eq!(oos(a), 0);

    // peer frozen: the write does not return ...
    b.signal(libc::SIGSTOP);
    let d2 = pattern(4096, 2);
    let rx = write_async(a, 4096 * 20, d2.clone());
    assert!(
        rx.recv_timeout(Duration::from_millis(1000)).is_err(),
        "a protocol C write returned while the peer was frozen"
    );
    // ... until the peer runs again and acknowledges it
    b.signal(libc::SIGCONT);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("write did not return after SIGCONT")
        .unwrap();
    assert_eq!(read_at(&backing(b), 4096 * 20, 4096), d2);
    a.wait_status(5, SYNCED_A);
    assert_eq!(oos(a), 0);

    // peer frozen past the ping timeout: answered locally, out of sync
    b.signal(libc::SIGSTOP);
    let t0 = Instant::now();
    let d3 = pattern(3 * 4096, 3);
    let rx = write_async(a, 4096 * 30, d3.clone());
    rx.recv_timeout(Duration::from_secs(15))
        .expect("write still blocked long after the ping timeout")
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2000),
        "write returned after {took:?}, before the ping timeout"
    );
    assert!(log(a).contains("PingAck did not arrive in time."));
    wait_until(5, "a counts 12 KiB out of sync", || {
        (oos(a) == 12).then_some(())
    });
    assert!(!a
        .status()
        .contains("fs2 role:Secondary\n    peer-disk:UpToDate"));
    b.signal(libc::SIGCONT);
    a.wait_status(15, SYNCED_A);
    b.wait_status(15, SYNCED_B);
    assert_eq!(oos(a), 0);
    assert_eq!(read_at(&backing(b), 4096 * 30, 3 * 4096), d3);
}

/// Protocol A: a write returns once it is local and handed to the link,
/// even with the peer frozen; it still reaches the peer.
#[test]
fn protocol_a_does_not_wait_for_the_peer() {
    let bp = BPair::synced(
        16,
        "ping_interval_ms = 200\nping_timeout_ms = 5000",
        "protocol = \"A\"",
        "",
    );
    let (a, b) = (&bp.p.a, &bp.p.b);
    b.signal(libc::SIGSTOP);
    let d = pattern(4096, 7);
    write_async(a, 0, d.clone())
        .recv_timeout(Duration::from_millis(1500))
        .expect("a protocol A write waited for the frozen peer")
        .unwrap();
    b.signal(libc::SIGCONT);
    wait_until(5, "the write reaches the peer", || {
        (read_at(&backing(b), 0, 4096) == d).then_some(())
    });
}

/// Disconnected writes are tracked in the bitmap; the reconnect resyncs
/// exactly those blocks, the target is Inconsistent until done, and
/// out-of-sync falls to 0 at the configured rate.
#[test]
fn resync_by_bitmap_after_reconnect() {
    // 2 MiB at 512 KiB/s: the initial full sync takes 4 s, the bitmap
    // resync below (388 KiB) about 0.8 s
    let bp = BPair::synced(2, "resync_rate_kib = 512", "", "");
    let (a, b) = (&bp.p.a, &bp.p.b);
    b.adm_ok(&["disconnect", "r0"]);
    a.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    // three 128 KiB regions far apart + one sub-block write = 97 blocks
    let mut expect = Vec::new();
    for (i, off) in [0u64, 640 << 10, 1536 << 10].iter().enumerate() {
        let d = pattern(128 << 10, 10 + i as u64);
        write_sync(a, *off, &d);
        expect.push((*off, d));
    }
    let small = pattern(100, 99);
    write_sync(a, (1200 << 10) + 1000, &small);
    assert_eq!(oos(a), 3 * 128 + 4, "out-of-sync KiB after the writes");
    let rx0 = received(b);
    let t0 = Instant::now();
    b.adm_ok(&["connect", "r0"]);
    // the target is Inconsistent and SyncTarget while the resync runs
    wait_until(10, "fs2 is SyncTarget and Inconsistent", || {
        let j = b.status_json();
        let p = &j[0]["connections"][0]["peer_devices"][0];
        (j[0]["devices"][0]["disk-state"] == "Inconsistent"
            && p["replication-state"] == "SyncTarget")
            .then_some(())
    });
    // the agent's parsers read the block mode's output mid-resync
    for n in [a, b] {
        let o = n.drbdsetup(&["events2", "--now", "--statistics", "r0"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut count = 0;
        for ev in understudy_drbd::events2::parse_lines(&text) {
            ev.unwrap_or_else(|e| panic!("{}: events2 line not parsed: {e:?}\n{text}", n.name));
            count += 1;
        }
        assert!(count >= 6, "{text}");
        let o = n.drbdsetup(&["status", "r0", "--json"]);
        let res =
            understudy_drbd::status_json::parse_status_json(&String::from_utf8_lossy(&o.stdout))
                .unwrap_or_else(|e| panic!("{}: status --json not parsed: {e:?}", n.name));
        assert_eq!(res.len(), 1);
    }
    let mut seen_partial = false;
    wait_until(20, "the resync to finish", || {
        let o = oos(a);
        if o > 0 && o < 388 {
            seen_partial = true;
        }
        (a.status() == SYNCED_A).then_some(())
    });
    assert!(seen_partial, "out-of-sync never fell gradually");
    // 388 KiB at resync_rate_kib = 512: at least ~0.75 s
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "resync faster than resync_rate_kib allows: {:?}",
        t0.elapsed()
    );
    b.wait_status(10, SYNCED_B);
    assert_eq!(oos(a), 0);
    assert_eq!(oos(b), 0);
    // only the changed blocks travelled
    assert_eq!(received(b) - rx0, 388, "KiB received by the resync");
    for (off, d) in &expect {
        assert_eq!(&read_at(&backing(b), *off, d.len()), d);
    }
    assert_eq!(read_at(&backing(b), (1200 << 10) + 1000, 100), small);
    assert_eq!(
        std::fs::read(backing(a)).unwrap(),
        std::fs::read(backing(b)).unwrap(),
        "backing files differ after the resync"
    );
}

/// Both sides Primary and writing while disconnected: split brain on
/// reconnect (both StandAlone, nothing synced); `--discard-my-data` on the
/// victim resolves it and its blocks are overwritten.
#[test]
fn split_brain_detected_and_resolved_with_discard_my_data() {
    let bp = BPair::synced(16, "", "", "");
    let (a, b) = (&bp.p.a, &bp.p.b);
    b.adm_ok(&["disconnect", "r0"]);
    a.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    let da = pattern(4096, 21);
    write_sync(a, 4096 * 100, &da);
    b.adm_ok(&["primary", "r0"]);
    let db = pattern(4096, 22);
    write_sync(b, 4096 * 200, &db);
    b.adm_ok(&["connect", "r0"]);
    a.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:StandAlone\n",
    );
    b.wait_status(
        5,
        "r0 role:Primary\n  disk:UpToDate\n  fs1 connection:StandAlone\n",
    );
    assert!(log(a).contains("Split-Brain detected but unresolved"));
    assert_eq!(read_at(&backing(b), 4096 * 100, 4096), vec![0; 4096]);
    b.adm_ok(&["secondary", "r0"]);
    b.adm_ok(&["connect", "--discard-my-data", "r0"]);
    a.adm_ok(&["connect", "r0"]);
    a.wait_status(20, SYNCED_A);
    b.wait_status(20, SYNCED_B);
    assert_eq!(read_at(&backing(b), 4096 * 100, 4096), da);
    assert_eq!(
        read_at(&backing(b), 4096 * 200, 4096),
        vec![0; 4096],
        "the victim's write survived discard-my-data"
    );
    assert_eq!(
        std::fs::read(backing(a)).unwrap(),
        std::fs::read(backing(b)).unwrap()
    );
}

/// resource-and-stonith: a Primary that loses its peer really suspends
/// I/O: a write blocks until the fence-peer handler returns 4.
#[test]
fn fencing_suspends_writes_until_the_handler_returns() {
    let hd = tempfile::tempdir().unwrap();
    let go = hd.path().join("go");
    let script = hd.path().join("fence.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.05; done\nexit 4\n",
            go.display()
        ),
    )
    .unwrap();
    let more = format!(
        "[handlers]\nfence_peer = \"sh {}\"\nfence_peer_timeout_ms = 60000\n",
        script.display()
    );
    let mut bp = BPair::synced(
        16,
        "ping_interval_ms = 100\nping_timeout_ms = 400\nconnect_retry_ms = 100",
        "fencing = \"resource-and-stonith\"",
        &more,
    );
    bp.p.b.kill();
    let a = &bp.p.a;
    wait_until(5, "fs1 suspended:fencing", || {
        (a.status_json()[0]["suspended"] == true).then_some(())
    });
    let d = pattern(4096, 31);
    let rx = write_async(a, 4096 * 5, d.clone());
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "a write returned while I/O was suspended for fencing"
    );
    assert_eq!(a.status_json()[0]["suspended"], true);
    std::fs::write(&go, "").unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("write still blocked after the handler returned 4")
        .unwrap();
    assert_eq!(a.status_json()[0]["suspended"], false);
    assert_eq!(pd(a)["peer-disk-state"], "Outdated");
    assert_eq!(read_at(&backing(a), 4096 * 5, 4096), d);
    assert_eq!(oos(a), 4);
    assert!(log(a).contains("fence-peer helper returned 4"));
}

/// A Secondary's device refuses to be opened for writing (file and loop
/// device); reads work; promotion is refused while the peer is Primary.
#[test]
fn secondary_refuses_writes_and_second_primary() {
    let bp = BPair::synced(16, "", "", "");
    let (a, b) = (&bp.p.a, &bp.p.b);
    let d = pattern(4096, 41);
    write_sync(a, 4096 * 7, &d);
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(dev_file(b))
        .expect_err("a Secondary's device opened for writing");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // the loop device is read-only (BLKROSET): writing to it fails
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(loop_dev(b))
        .and_then(|f| f.write_all_at(&[1u8; 4096], 0))
        .expect_err("a write to a Secondary's loop device succeeded");
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)
        ),
        "{e}"
    );
    assert_eq!(read_at(&backing(b), 0, 4096), read_at(&backing(a), 0, 4096));
    // reads as DRBD allows them
    assert_eq!(read_at(&dev_file(b), 4096 * 7, 4096), d);
    // the Primary's loop device is writable
    std::fs::OpenOptions::new()
        .write(true)
        .open(loop_dev(a))
        .expect("the Primary's loop device must open for writing");
    let o = b.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("(-1) Multiple primaries not allowed by config"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    b.wait_status(2, SYNCED_B);
}

/// ext4 on the Primary's loop device, fsync'd files, Primary SIGKILLed,
/// backup promoted: the file system mounts there (journal replay) and
/// every fsync'd file is byte-identical.
#[test]
fn ext4_survives_primary_crash() {
    let mut bp = BPair::synced(
        64,
        "ping_interval_ms = 100\nping_timeout_ms = 500\nconnect_retry_ms = 100",
        "",
        "",
    );
    let dev_a = loop_dev(&bp.p.a);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            &dev_a,
        ],
    );
    let mnt_a = bp.p.dir.path().join("mnt-a");
    bp.mount_ext4(&dev_a, &mnt_a);
    let mut files = Vec::new();
    std::fs::create_dir_all(mnt_a.join("dir")).unwrap();
    for i in 0..30u64 {
        let data = pattern(1000 + (i as usize * 7919) % 200_000, 100 + i);
        let p = mnt_a.join("dir").join(format!("f{i}"));
        let f = std::fs::File::create(&p).unwrap();
        use std::io::Write;
        (&f).write_all(&data).unwrap();
        f.sync_all().unwrap();
        files.push((format!("f{i}"), data));
    }
    // the directory entries are durable too
    std::fs::File::open(mnt_a.join("dir"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::File::open(&mnt_a).unwrap().sync_all().unwrap();
    // crash the Primary (no unmount, no flush)
    bp.p.a.kill();
    let _ = Command::new("umount").arg("-l").arg(&mnt_a).output();
    bp.p.b.wait_status(
        10,
        "r0 role:Secondary\n  disk:UpToDate\n  fs1 connection:Connecting\n",
    );
    bp.p.b.adm_ok(&["primary", "r0"]);
    let mnt_b = bp.p.dir.path().join("mnt-b");
    let dev_b = loop_dev(&bp.p.b);
    bp.mount_ext4(&dev_b, &mnt_b);
    for (name, data) in &files {
        let got = std::fs::read(mnt_b.join("dir").join(name))
            .unwrap_or_else(|e| panic!("{name} missing on the backup: {e}"));
        assert!(got == *data, "{name} differs on the backup");
    }
    // the backup's writes work on the promoted device
    std::fs::write(mnt_b.join("after-failover"), b"ok").unwrap();
    let u = Command::new("umount").arg(&mnt_b).output().expect("umount");
    assert!(u.status.success(), "umount: {u:?}");
    bp.mounts.retain(|m| m != &mnt_b);
    // the crashed host comes back: what it leaked (loop device on a dead
    // FUSE mount) is cleaned up, and it resyncs from the new Primary
    bp.p.a.start();
    let a_file = dev_file(&bp.p.a).display().to_string();
    // The restarted daemon attaches its loop device once its device is up
    // (the stale one is detached first): exactly one, within a bound.
    let attached = || {
        run("losetup", &["-l", "-n", "--raw", "-O", "BACK-FILE"])
            .lines()
            .filter(|l| l.replace("\\x20", " ").trim_end_matches(" (deleted)") == a_file)
            .count()
    };
    let t0 = std::time::Instant::now();
    while attached() != 1 && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(attached(), 1, "loop devices on {a_file} after the restart");
    assert_ne!(loop_dev(&bp.p.a), "", "no loop device after the restart");
    bp.p.b.wait_status(
        30,
        "r0 role:Primary\n  disk:UpToDate\n  fs1 role:Secondary\n    peer-disk:UpToDate\n",
    );
    bp.p.a.wait_status(
        30,
        "r0 role:Secondary\n  disk:UpToDate\n  fs2 role:Primary\n    peer-disk:UpToDate\n",
    );
    assert!(
        std::fs::read(backing(&bp.p.a)).unwrap() == std::fs::read(backing(&bp.p.b)).unwrap(),
        "backing files differ after the old Primary rejoined"
    );
    // Demoting is refused while the device is held open (as DRBD does); the
    // kernel may still hold it an instant after the unmount on a loaded machine.
    let t0 = std::time::Instant::now();
    loop {
        let o = bp.p.b.drbdadm(&["secondary", "r0"]);
        if o.status.success() {
            break;
        }
        let err =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("held open") && t0.elapsed() < std::time::Duration::from_secs(5),
            "drbdadm secondary r0: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A tmpfs of `size_mib` mounted on `at` (created); lazily unmounted on
/// drop, also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m"),
                "drbd-emu-test-thin",
                &at.display().to_string(),
            ],
        );
        Tmpfs(at.to_path_buf())
    }

    /// Fills the file system: a ballast file as large as the free space,
    /// then appended to until the file system says ENOSPC.
    fn fill(&self) -> PathBuf {
        let ballast = self.0.join("ballast");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ballast)
            .unwrap();
        let free = {
            let st = nix_statvfs(&self.0);
            st.0 * st.1
        };
        if free > 0 {
            run(
                "fallocate",
                &["-l", &free.to_string(), &ballast.display().to_string()],
            );
        }
        let chunk = vec![0xA5u8; 4096];
        loop {
            use std::io::Write;
            match (&f).write(&chunk) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.0.display()),
            }
        }
        ballast
    }

    /// Removes the ballast.
    fn free(&self) {
        std::fs::remove_file(self.0.join("ballast")).unwrap();
    }
}

/// (free blocks available, block size) of the file system holding `p`.
fn nix_statvfs(p: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    (st.f_bavail as u64, st.f_frsize as u64)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Bytes a file really occupies (it is sparse where nothing was written).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// A synced 8 MiB pair (fs1 Primary) whose fs2 (`on_primary`: fs1) has its
/// backing file on a 12 MiB tmpfs of its own.
fn thin_pair(on_primary: bool) -> (BPair, Tmpfs) {
    let size_mib = 8;
    let mut bp = BPair::new(
        size_mib,
        "ping_interval_ms = 200\nping_timeout_ms = 2500\nconnect_retry_ms = 100",
        "",
        "",
    );
    let n = if on_primary { &bp.p.a } else { &bp.p.b };
    let base = n.state_dir.parent().unwrap().to_path_buf();
    let thin = Tmpfs::mount(&base.join("thin"), 12);
    let text = std::fs::read_to_string(&n.config).unwrap();
    let old = format!("backing_file = \"{}\"", base.join("disk.img").display());
    assert!(text.contains(&old), "{text}");
    std::fs::write(
        &n.config,
        text.replace(
            &old,
            &format!("backing_file = \"{}\"", thin.0.join("disk.img").display()),
        ),
    )
    .unwrap();
    bp.p.a.start();
    bp.p.b.start();
    bp.p.a.wait_status(10, "r0 role:Secondary\n  disk:Inconsistent\n  fs2 role:Secondary\n    peer-disk:Inconsistent\n");
    bp.p.a.adm_ok(&["primary", "--force", "r0"]);
    bp.p.a.wait_status(60, SYNCED_A);
    bp.p.b.wait_status(60, SYNCED_B);
    (bp, thin)
}

/// DRBD's `on-io-error detach` on the Secondary: its backing file sits on
/// a small tmpfs that is filled up; the next replicated write fails with
/// ENOSPC there. The Secondary's disk goes `Failed` then `Diskless`
/// (events2, `status --json`), the connection stays `Connected`, the
/// Primary sees `peer-disk:Diskless`, its writes are acknowledged on its
/// own disk and counted out of sync; the Diskless backup cannot be
/// promoted. Space freed, `drbdadm attach` resyncs exactly what it missed
/// and both disks are UpToDate and identical. The initial sync keeps the
/// thin backing file thin (zero runs are discarded).
#[test]
fn disk_full_on_the_secondary_detaches_and_attach_resyncs() {
    let (bp, thin) = thin_pair(false);
    let thin_file = thin.0.join("disk.img");
    let (a, b) = (&bp.p.a, &bp.p.b);
    // the full initial sync sent zeros only: discarded, the file stays thin
    assert!(
        allocated(&thin_file) < 1 << 20,
        "the initial sync allocated {} bytes of the thin backing file",
        allocated(&thin_file)
    );
    let d1 = pattern(64 << 10, 21);
    write_sync(a, 0, &d1);
    assert_eq!(read_at(&thin_file, 0, d1.len()), d1);

    let mut ev_b = b.events(&["--statistics", "r0"]);
    let mut ev_a = a.events(&["r0"]);
    ev_b.wait_line(5, "fs2's initial state", |l| l == "exists -");
    ev_a.wait_line(5, "fs1's initial state", |l| l == "exists -");
    let ballast = thin.fill();

    // the next write needs a new block of the thin file: ENOSPC on fs2;
    // fs1 acknowledges it on its own disk
    let d2 = pattern(256 << 10, 22);
    write_sync(a, 1 << 20, &d2);
    ev_b.wait_line(10, "fs2 disk:Failed", |l| {
        l.starts_with("change device name:r0") && l.contains(" disk:Failed")
    });
    ev_b.wait_line(10, "fs2 disk:Diskless", |l| {
        l.starts_with("change device name:r0")
            && l.contains(" disk:Diskless")
            && l.contains("backing_dev:none")
    });
    ev_a.wait_line(10, "fs1 sees peer-disk:Diskless", |l| {
        l.starts_with("change peer-device name:r0") && l.contains("peer-disk:Diskless")
    });
    assert!(
        log(b).contains("Local IO failed in a replicated write"),
        "{}",
        log(b)
    );
    // more writes while the backup has no disk: acknowledged, out of sync
    let d3 = pattern(128 << 10, 23);
    write_sync(a, 3 << 20, &d3);
    let jb = b.status_json();
    assert_eq!(jb[0]["devices"][0]["disk-state"], "Diskless", "{jb}");
    assert_eq!(
        jb[0]["connections"][0]["connection-state"], "Connected",
        "{jb}"
    );
    let ja = a.status_json();
    assert_eq!(ja[0]["devices"][0]["disk-state"], "UpToDate", "{ja}");
    assert_eq!(
        ja[0]["connections"][0]["connection-state"], "Connected",
        "{ja}"
    );
    let pa = &ja[0]["connections"][0]["peer_devices"][0];
    assert_eq!(pa["peer-disk-state"], "Diskless", "{ja}");
    assert!(
        pa["out-of-sync"].as_u64().unwrap() >= 256 + 128,
        "out-of-sync after the writes: {ja}"
    );
    assert_eq!(
        b.status(),
        "r0 role:Secondary\n  disk:Diskless\n  fs1 role:Primary\n    peer-disk:UpToDate\n"
    );
    // the agent's parsers read it
    for n in [a, b] {
        let o = n.drbdsetup(&["events2", "--now", "--statistics", "r0"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        for ev in understudy_drbd::events2::parse_lines(&text) {
            ev.unwrap_or_else(|e| panic!("{}: events2 line not parsed: {e:?}\n{text}", n.name));
        }
        let o = n.drbdsetup(&["status", "r0", "--json"]);
        understudy_drbd::status_json::parse_status_json(&String::from_utf8_lossy(&o.stdout))
            .unwrap_or_else(|e| panic!("{}: status --json not parsed: {e:?}", n.name));
    }
    // a Diskless backup is never promotable, not even forced
    for args in [&["primary", "r0"][..], &["primary", "--force", "r0"][..]] {
        let o = b.drbdadm(args);
        assert_eq!(o.status.code(), Some(11), "drbdadm {args:?}: {o:?}");
    }
    // the data fs1 acknowledged is on fs1's disk
    assert_eq!(read_at(&backing(a), 1 << 20, d2.len()), d2);
    assert_eq!(read_at(&backing(a), 3 << 20, d3.len()), d3);
    // a new handshake with the Diskless side resyncs nothing and forgets
    // nothing: still Diskless, the same blocks out of sync
    let oos_before = oos(a);
    b.adm_ok(&["disconnect", "r0"]);
    b.adm_ok(&["connect", "r0"]);
    b.wait_status(
        10,
        "r0 role:Secondary\n  disk:Diskless\n  fs1 role:Primary\n    peer-disk:UpToDate\n",
    );
    a.wait_status(
        10,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 role:Secondary\n    peer-disk:Diskless\n",
    );
    assert_eq!(oos(a), oos_before, "out-of-sync after a reconnect");

    // space back, attach: fs2 resyncs what it missed
    std::fs::remove_file(&ballast).unwrap();
    let rx0 = received(b);
    b.adm_ok(&["attach", "r0"]);
    ev_b.wait_line(5, "fs2 disk:Attaching", |l| {
        l.starts_with("change device name:r0") && l.contains(" disk:Attaching")
    });
    ev_b.wait_line(10, "fs2 SyncTarget or done", |l| {
        (l.starts_with("change device name:r0") && l.contains(" disk:Inconsistent"))
            || l.contains("replication:SyncTarget")
    });
    a.wait_status(20, SYNCED_A);
    b.wait_status(20, SYNCED_B);
    ev_b.wait_line(10, "fs2 disk:UpToDate", |l| {
        l.starts_with("change device name:r0") && l.contains(" disk:UpToDate")
    });
    assert_eq!(oos(a), 0);
    // exactly the blocks written while it had no disk (and the failed one)
    assert_eq!(received(b) - rx0, 256 + 128, "KiB received by the resync");
    assert_eq!(
        first_difference(&backing(a), &thin_file),
        None,
        "backing files differ after the resync"
    );
    // attached again: a second attach is refused
    let o = b.drbdadm(&["attach", "r0"]);
    assert_eq!(o.status.code(), Some(10), "{o:?}");
    // and replication is synchronous again
    let d4 = pattern(8192, 24);
    write_sync(a, 5 << 20, &d4);
    assert_eq!(read_at(&thin_file, 5 << 20, d4.len()), d4);
    drop(thin);
}

/// `on-io-error detach` on the Primary: its own thin backing file runs
/// full. The write that fails returns EIO (it is never acknowledged), the
/// disk goes `Failed` → `Diskless`, and every read and write of the
/// Diskless Primary fails with EIO (the emulator does not serve I/O
/// through the peer's disk); the Secondary stays `UpToDate` with every
/// acknowledged write. Space freed, `attach`: the Primary becomes
/// SyncTarget of the peer, then `UpToDate` and writes replicate again.
#[test]
fn disk_full_on_the_primary_fails_the_write_and_detaches() {
    let (bp, thin) = thin_pair(true);
    let thin_file = thin.0.join("disk.img");
    let (a, b) = (&bp.p.a, &bp.p.b);
    let d1 = pattern(64 << 10, 31);
    write_sync(a, 0, &d1);
    let mut ev_a = a.events(&["r0"]);
    ev_a.wait_line(5, "fs1's initial state", |l| l == "exists -");
    thin.fill();
    let failed = write_async(a, 1 << 20, pattern(128 << 10, 32))
        .recv_timeout(Duration::from_secs(20))
        .expect("the write did not return");
    let e = failed.expect_err("a write the full disk could not store was acknowledged");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    ev_a.wait_line(10, "fs1 disk:Failed", |l| {
        l.starts_with("change device name:r0") && l.contains(" disk:Failed")
    });
    ev_a.wait_line(10, "fs1 disk:Diskless", |l| {
        l.starts_with("change device name:r0") && l.contains(" disk:Diskless")
    });
    assert!(log(a).contains("Local IO failed in a write"), "{}", log(a));
    b.wait_status(
        10,
        "r0 role:Secondary\n  disk:UpToDate\n  fs1 role:Primary\n    peer-disk:Diskless\n",
    );
    // a Diskless Primary: reads and writes fail
    let w = write_async(a, 2 << 20, pattern(4096, 33))
        .recv_timeout(Duration::from_secs(20))
        .expect("the write did not return");
    assert_eq!(w.expect_err("written").raw_os_error(), Some(libc::EIO));
    let r = std::fs::File::open(dev_file(a)).and_then(|f| {
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, 0)
    });
    assert_eq!(r.expect_err("read").raw_os_error(), Some(libc::EIO));
    // the acknowledged write is on the peer
    assert_eq!(read_at(&backing(b), 0, d1.len()), d1);
    // space back, attach: resynced from the peer, UpToDate, writing again
    thin.free();
    a.adm_ok(&["attach", "r0"]);
    a.wait_status(20, SYNCED_A);
    b.wait_status(20, SYNCED_B);
    let d4 = pattern(8192, 34);
    write_sync(a, 3 << 20, &d4);
    assert_eq!(read_at(&backing(b), 3 << 20, d4.len()), d4);
    assert_eq!(
        first_difference(&thin_file, &backing(b)),
        None,
        "backing files differ after the resync"
    );
}
