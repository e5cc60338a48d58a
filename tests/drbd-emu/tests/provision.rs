//! Provisioning in block mode: a volume (backing file + metadata in
//! `meta_dir`) moved to another host; `drbdadm adjust` switching a mounted,
//! writing Primary to a freshly created spare (full resync); `drbdadm up`
//! starting the daemon itself ("module autoload") in a private mount
//! namespace.
//!
//! They need root, `/dev/fuse`, util-linux and e2fsprogs and FAIL (never
//! skip) with the install command when something is missing. Daemons (also
//! autoloaded ones), loop devices, FUSE and ext4 mounts are released by the
//! `BlockHosts` guard, also when a test fails.

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::blk::*;
use common::*;

const TUNING: &str = "ping_interval_ms = 100\nping_timeout_ms = 1000\nconnect_retry_ms = 100";

fn meta_json(vol: &Path) -> serde_json::Value {
    let bytes = std::fs::read(vol.join("meta.json"))
        .unwrap_or_else(|e| panic!("{}/meta.json: {e}", vol.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn oos(n: &Node) -> u64 {
    n.status_json()[0]["connections"][0]["peer_devices"][0]["out-of-sync"]
        .as_u64()
        .unwrap()
}

/// (a) A volume directory (backing file + metadata) taken to another host
/// config (other hostname, node id, ports, state_dir) comes up with the
/// disk state and generation it had: UpToDate is promotable without
/// `--force`; Outdated and, after `create-md` (written to the volume),
/// Inconsistent are refused with exit 11.
#[test]
fn moved_volume_comes_up_with_its_disk_state_and_generation() {
    let mut bh = BlockHosts::new();
    let d = &bh.path();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let vol_a = d.join("vol-a");
    bh.nodes.push(host(
        d,
        ("fs1", 0, ports[0]),
        ("fs2", 1, ports[1]),
        TUNING,
        &device_section(8, &vol_a.join("disk.img"), Some(&vol_a), ""),
    ));
    bh.nodes[0].start();
    let a = &bh.nodes[0];
    a.wait_status(
        10,
        "r0 role:Secondary\n  disk:Inconsistent\n  fs2 connection:Connecting\n",
    );
    // the metadata is on the volume; state_dir keeps socket, lock, log
    assert!(
        vol_a.join("meta.json").exists(),
        "no meta.json on the volume"
    );
    assert!(vol_a.join("bitmap").exists(), "no bitmap on the volume");
    assert!(!a.state_dir.join("meta.json").exists());
    assert!(!a.state_dir.join("bitmap").exists());
    assert!(a.state_dir.join("ctl.sock").exists() && a.state_dir.join("lock").exists());
    a.adm_ok(&["primary", "--force", "r0"]);
    let data = pattern(64 << 10, 1);
    write_at(&dev_file(a), 1 << 20, &data);
    let gen = meta_json(&vol_a)["gen"].as_u64().unwrap();
    assert_ne!(gen, 0);
    assert_eq!(meta_json(&vol_a)["disk"], "UpToDate");
    a.adm_ok(&["secondary", "r0"]);
    a.adm_ok(&["down", "r0"]);
    BlockHosts::release(&mut bh.nodes[0]);

    // the volume moves to a host with another name, node id, ports, state
    let vol_b = d.join("vol-b");
    std::fs::rename(&vol_a, &vol_b).unwrap();
    bh.nodes.push(host(
        d,
        ("spare", 3, ports[2]),
        ("fs2", 1, ports[3]),
        TUNING,
        &device_section(8, &vol_b.join("disk.img"), Some(&vol_b), ""),
    ));
    bh.nodes[1].start();
    let b = &bh.nodes[1];
    b.wait_status(
        10,
        "r0 role:Secondary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    assert_eq!(meta_json(&vol_b)["gen"].as_u64(), Some(gen));
    // promotable without --force, the data is there
    b.adm_ok(&["primary", "r0"]);
    assert_eq!(read_at(&dev_file(b), 1 << 20, data.len()), data);
    assert_eq!(
        meta_json(&vol_b)["gen"].as_u64(),
        Some(gen),
        "promotion alone started a new generation"
    );
    // one daemon per volume: another config on the same volume is refused
    let other = host(
        d,
        ("intruder", 5, ports[4]),
        ("fs2", 1, ports[3]),
        TUNING,
        &device_section(8, &vol_b.join("disk.img"), Some(&vol_b), ""),
    );
    let o = std::process::Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&other.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is in use by another daemon"),
        "{}",
        stderr(&o)
    );
    b.adm_ok(&["secondary", "r0"]);
    b.adm_ok(&["outdate", "r0"]);
    b.adm_ok(&["down", "r0"]);
    BlockHosts::release(&mut bh.nodes[1]);

    // Outdated travels too, and is refused
    let vol_c = d.join("vol-c");
    std::fs::rename(&vol_b, &vol_c).unwrap();
    bh.nodes.push(host(
        d,
        ("third", 4, ports[5]),
        ("fs2", 1, ports[3]),
        TUNING,
        &device_section(8, &vol_c.join("disk.img"), Some(&vol_c), ""),
    ));
    bh.nodes[2].start();
    let c = &bh.nodes[2];
    c.wait_status(
        10,
        "r0 role:Secondary\n  disk:Outdated\n  fs2 connection:Connecting\n",
    );
    let o = c.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("r0: State change failed: (-2) Need access to UpToDate data"),
        "{}",
        stderr(&o)
    );
    // create-md writes to the volume: Inconsistent, generation 0, refused
    c.adm_ok(&["down", "r0"]);
    c.adm_ok(&["create-md", "--force", "r0"]);
    assert_eq!(meta_json(&vol_c)["gen"].as_u64(), Some(0));
    assert_eq!(meta_json(&vol_c)["disk"], "Inconsistent");
    c.adm_ok(&["up", "r0"]);
    c.wait_status(
        10,
        "r0 role:Secondary\n  disk:Inconsistent\n  fs2 connection:Connecting\n",
    );
    let o = c.drbdadm(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert_eq!(read_at(&vol_c.join("disk.img"), 1 << 20, data.len()), data);
}

/// (b) A Primary with ext4 mounted and written to loses its peer; a spare
/// is launched with a fresh volume (`create-md`) under the dead peer's node
/// id; the Primary's config is changed to name it and `drbdadm adjust`
/// switches over while the writes go on. events2 destroys the old
/// connection and creates the new one (`conn-name:fs3`), the spare gets a
/// FULL resync at `resync_rate_kib` (done: rising, out-of-sync falling from
/// the whole device), both end UpToDate with identical disks.
#[test]
fn adjust_switches_a_writing_primary_to_a_fresh_spare_with_a_full_resync() {
    let mut bh = BlockHosts::new();
    let d = &bh.path();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let tuning = "ping_interval_ms = 200\nping_timeout_ms = 2000\nconnect_retry_ms = 100";
    let dev_section = |name: &str| {
        let vol = d.join(name).join("vol");
        device_section(24, &vol.join("disk.img"), Some(&vol), "")
    };
    bh.nodes.push(host(
        d,
        ("fs1", 0, p1),
        ("fs2", 1, p2),
        tuning,
        &dev_section("fs1"),
    ));
    bh.nodes.push(host(
        d,
        ("fs2", 1, p2),
        ("fs1", 0, p1),
        tuning,
        &dev_section("fs2"),
    ));
    bh.nodes[0].start();
    bh.nodes[1].start();
    bh.nodes[0].wait_status(
        10,
        "r0 role:Secondary\n  disk:Inconsistent\n  fs2 role:Secondary\n    peer-disk:Inconsistent\n",
    );
    bh.nodes[0].adm_ok(&["primary", "--force", "r0"]);
    bh.nodes[0].wait_status(
        60,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 role:Secondary\n    peer-disk:UpToDate\n",
    );
    let dev1 = loop_dev(&bh.nodes[0]);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            &dev1,
        ],
    );
    let mnt = d.join("mnt");
    bh.mount_ext4(&dev1, &mnt);

    // a writer: files rewritten and fsync'd, until told to stop
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, count, mnt) = (stop.clone(), count.clone(), mnt.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 200_000 {
                let f = std::fs::File::create(mnt.join(format!("f{}", i % 40)))?;
                (&f).write_all(&pattern(32 << 10, i))?;
                f.sync_all()?;
                count.fetch_add(1, Ordering::SeqCst);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })
    };
    let writes = || count.load(Ordering::SeqCst);
    wait_until(20, "the writer to get going", || {
        (writes() >= 5).then_some(())
    });

    // the peer dies; the Primary goes on alone
    bh.nodes[1].kill();
    bh.nodes[0].wait_status(
        10,
        "r0 role:Primary\n  disk:UpToDate\n  fs2 connection:Connecting\n",
    );
    let alone = writes();
    wait_until(20, "writes without the peer", || {
        (writes() > alone + 3).then_some(())
    });

    // a freshly launched spare takes the dead peer's node id: empty
    // volume, create-md, daemon up
    let spare = host(
        d,
        ("fs3", 1, p3),
        ("fs1", 0, p1),
        tuning,
        &dev_section("fs3"),
    );
    spare.adm_ok(&["create-md", "r0"]);
    assert!(d.join("fs3/vol/meta.json").exists());
    bh.nodes.push(spare);
    bh.nodes[2].start();
    bh.nodes[2].wait_status(
        10,
        "r0 role:Secondary\n  disk:Inconsistent\n  fs1 connection:Connecting\n",
    );

    // the Primary's config names the spare (and a resync rate to watch)
    let mut ev = bh.nodes[0].events(&["--statistics", "r0"]);
    ev.wait_line(5, "exists -", |l| l == "exists -");
    let cfg1 = bh.nodes[0].config.clone();
    set_peer(&cfg1, ("fs3", 1, p3));
    let text = std::fs::read_to_string(&cfg1)
        .unwrap()
        .replace("[tuning]\n", "[tuning]\nresync_rate_kib = 4096\n");
    std::fs::write(&cfg1, text).unwrap();
    let t0 = Instant::now();
    bh.nodes[0].adm_ok(&["adjust", "r0"]);

    // events2: old objects destroyed, new ones created, as DRBD does
    ev.wait_line(10, "the old connection torn down", |l| {
        l.starts_with(
            "change connection name:r0 peer-node-id:1 conn-name:fs2 connection:StandAlone",
        )
    });
    ev.wait_line(5, "destroy path fs2", |l| {
        l.starts_with("destroy path name:r0 peer-node-id:1 conn-name:fs2 ")
    });
    ev.wait_line(5, "destroy peer-device fs2", |l| {
        l == "destroy peer-device name:r0 peer-node-id:1 conn-name:fs2 volume:0"
    });
    ev.wait_line(5, "destroy connection fs2", |l| {
        l == "destroy connection name:r0 peer-node-id:1 conn-name:fs2"
    });
    ev.wait_line(5, "create connection fs3", |l| {
        l.starts_with("create connection name:r0 peer-node-id:1 conn-name:fs3 connection:StandAlone role:Unknown")
    });
    ev.wait_line(5, "create peer-device fs3", |l| {
        l.starts_with("create peer-device name:r0 peer-node-id:1 conn-name:fs3 volume:0 replication:Off peer-disk:DUnknown")
    });
    let peer_addr = format!("peer:ipv4:127.0.0.1:{p3} established:no");
    ev.wait_line(5, "create path fs3", |l| {
        l.starts_with("create path name:r0 peer-node-id:1 conn-name:fs3 ")
            && l.ends_with(&peer_addr)
    });
    ev.wait_line(10, "connected to fs3", |l| {
        l.starts_with("change connection name:r0 peer-node-id:1 conn-name:fs3 connection:Connected")
    });
    ev.wait_line(10, "fs3's disk Inconsistent", |l| {
        l.starts_with(
            "change peer-device name:r0 peer-node-id:1 conn-name:fs3 volume:0 peer-disk:Inconsistent ",
        )
    });
    ev.wait_line(10, "SyncSource", |l| {
        l.starts_with("change peer-device name:r0 peer-node-id:1 conn-name:fs3 volume:0 replication:SyncSource ")
    });
    let at_sync_start = writes();
    ev.wait_line(120, "the resync to finish", |l| {
        l.starts_with("change peer-device name:r0 peer-node-id:1 conn-name:fs3 volume:0 replication:Established ")
    });
    let took = t0.elapsed();
    let at_sync_end = writes();
    assert!(
        at_sync_end > at_sync_start,
        "no write completed during the resync ({at_sync_start} -> {at_sync_end})"
    );
    // a FULL resync: out-of-sync starts at the whole device (24 MiB) and
    // falls, done: rises
    let progress: Vec<(f64, u64)> = ev
        .seen
        .iter()
        .filter(|l| l.starts_with("change peer-device name:r0 peer-node-id:1 conn-name:fs3 "))
        .filter_map(|l| {
            let done = key(l, "done")?.parse().ok()?;
            let oos = key(l, "out-of-sync")?.parse().ok()?;
            Some((done, oos))
        })
        .collect();
    assert!(progress.len() >= 4, "too few progress lines: {progress:?}");
    assert_eq!(progress[0].1, 24 << 10, "not a full resync: {progress:?}");
    for w in progress.windows(2) {
        assert!(
            w[1].1 <= w[0].1 && w[1].0 >= w[0].0,
            "progress went backwards: {progress:?}"
        );
    }
    assert!(
        progress
            .iter()
            .any(|(d, o)| *d > 10.0 && *d < 90.0 && *o > 0),
        "no progress in between: {progress:?}"
    );
    // 24 MiB at resync_rate_kib = 4096: about 6 s
    assert!(
        took >= Duration::from_secs(4),
        "the resync took {took:?}, faster than resync_rate_kib allows"
    );
    bh.nodes[0].wait_status(
        10,
        "r0 role:Primary\n  disk:UpToDate\n  fs3 role:Secondary\n    peer-disk:UpToDate\n",
    );
    bh.nodes[2].wait_status(
        10,
        "r0 role:Secondary\n  disk:UpToDate\n  fs1 role:Primary\n    peer-disk:UpToDate\n",
    );
    let show = bh.nodes[0].drbdsetup(&["show", "r0"]);
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.contains("_name           \t\"fs3\";"), "{show}");
    assert!(
        show.contains(&format!("_remote_host ipv4 127.0.0.1:{p3};")),
        "{show}"
    );
    assert!(
        show.contains("resync-rate     \t4096k; # bytes/second"),
        "{show}"
    );

    // stop writing, flush the file system to the device, compare the disks
    stop.store(true, Ordering::SeqCst);
    writer
        .join()
        .expect("writer panicked")
        .expect("a write failed on the Primary");
    bh.umount(&mnt);
    wait_until(10, "fs1 has nothing out of sync", || {
        (oos(&bh.nodes[0]) == 0).then_some(())
    });
    let (b1, b3) = (d.join("fs1/vol/disk.img"), d.join("fs3/vol/disk.img"));
    assert_eq!(
        first_difference(&b1, &b3),
        None,
        "the spare's disk differs from the Primary's"
    );
    // the agent's events2 parser reads every line
    let text = ev.seen.join("\n");
    for e in understudy_drbd::events2::parse_lines(&text) {
        e.unwrap_or_else(|e| panic!("events2 line not parsed: {e:?}"));
    }
}

/// (c) `drbdadm up` with no daemon running starts one ("module autoload"):
/// detached in a session of its own, stdin /dev/null, output in
/// `STATE_DIR/daemon.log`; with `auto_up = false` the `up` itself brings
/// the resource up. With `private_mount_namespace = true` its FUSE mount is
/// not in this process's mountinfo, while the loop device on it works from
/// here (read, write, an ext4 mount; `secondary` sees that mount).
#[test]
fn up_autoloads_the_daemon_in_a_private_mount_namespace() {
    let mut bh = BlockHosts::new();
    let d = &bh.path();
    let (pa, pb) = (free_port(), free_port());
    let vol = d.join("vol");
    let n = host(
        d,
        ("autoload1", 0, pa),
        ("autoload2", 1, pb),
        TUNING,
        &device_section(
            8,
            &vol.join("disk.img"),
            Some(&vol),
            "private_mount_namespace = true\n",
        ),
    );
    let text = std::fs::read_to_string(&n.config).unwrap().replacen(
        "minor = 1000\n",
        "minor = 1000\nauto_up = false\n",
        1,
    );
    std::fs::write(&n.config, text).unwrap();
    bh.nodes.push(n);
    let n = &bh.nodes[0];
    assert!(daemon_pid(&n.state_dir, &n.config).is_none());
    // only up/adjust load the "module"
    let o = n.drbdadm(&["status", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    assert!(daemon_pid(&n.state_dir, &n.config).is_none());

    let o = n.drbdadm(&["up", "r0"]);
    assert!(o.status.success(), "drbdadm up: {}", stderr(&o));
    let pid = daemon_pid(&n.state_dir, &n.config).expect("no daemon after drbdadm up");
    // a session of its own; stdin /dev/null; stdout and stderr to daemon.log
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(fields[3], pid.to_string(), "not a session leader: {stat}");
    let fd = |i: u32| std::fs::read_link(format!("/proc/{pid}/fd/{i}")).unwrap();
    assert_eq!(fd(0), Path::new("/dev/null"));
    assert_eq!(fd(1), n.state_dir.join("daemon.log"));
    assert_eq!(fd(2), n.state_dir.join("daemon.log"));
    n.wait_status(
        10,
        "r0 role:Secondary\n  disk:Inconsistent\n  autoload2 connection:Connecting\n",
    );
    let log = std::fs::read_to_string(n.state_dir.join("daemon.log")).unwrap();
    assert!(
        log.contains("running in a private mount namespace"),
        "{log}"
    );
    // up again: already up; adjust: nothing to do
    let o = n.drbdadm(&["up", "r0"]);
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    n.adm_ok(&["adjust", "r0"]);
    assert_eq!(daemon_pid(&n.state_dir, &n.config), Some(pid));

    // the FUSE mount: in the daemon's namespace only
    let mdir = n.state_dir.join("fuse").display().to_string();
    let here = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !here.contains(&mdir) && !here.contains("drbd-emu:r0:autoload1"),
        "the FUSE mount is visible here:\n{here}"
    );
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        theirs.contains(&mdir),
        "no FUSE mount in the daemon's namespace:\n{theirs}"
    );
    // the loop device on it is global and works from here
    let dev = loop_dev(n);
    assert_eq!(
        run("blockdev", &["--getsize64", &dev]).trim(),
        (8u64 << 20).to_string()
    );
    n.adm_ok(&["primary", "--force", "r0"]);
    let data = pattern(128 << 10, 5);
    write_at(Path::new(&dev), 4096 * 3, &data);
    assert_eq!(read_at(&vol.join("disk.img"), 4096 * 3, data.len()), data);
    assert_eq!(read_at(Path::new(&dev), 4096 * 3, data.len()), data);
    // others can mount it; the daemon sees that mount (held open)
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            &dev,
        ],
    );
    let mnt = d.join("mnt");
    bh.mount_ext4(&dev, &mnt);
    std::fs::write(mnt.join("hello"), b"world").unwrap();
    let o = bh.nodes[0].drbdadm(&["secondary", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(-12) Device is held open by someone"),
        "{}",
        stderr(&o)
    );
    bh.umount(&mnt);
    bh.nodes[0].adm_ok(&["secondary", "r0"]);
    bh.nodes[0].wait_status(
        5,
        "r0 role:Secondary\n  disk:UpToDate\n  autoload2 connection:Connecting\n",
    );
}
