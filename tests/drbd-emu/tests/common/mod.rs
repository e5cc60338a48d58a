//! Test harness: a pair of real `drbd-emu daemon` processes on loopback with
//! unique temp dirs and free ports, CLI helpers and an `events2` reader.
//! Every child process is killed on drop (also when a test panics) and
//! every wait has a deadline and a descriptive panic.

#![allow(dead_code)]

pub mod blk;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_drbd-emu");
pub const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../agent/drbd/tests/fixtures"
);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}"))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Polls `f` until it returns Some, or panics after `secs` with `what`.
pub fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Node {
    pub name: String,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// The daemon's pid, while this harness runs it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.child = Some(child);
        let sock = self.state_dir.join("ctl.sock");
        let name = self.name.clone();
        wait_until(
            10,
            &format!("daemon {name} to answer on its socket"),
            || std::os::unix::net::UnixStream::connect(&sock).ok(),
        );
    }

    /// SIGKILL (or another signal) to the daemon; the child is reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(pid, sig);
        }
        if sig == libc::SIGSTOP {
            // kill(2) returns before every thread has stopped: a thread running
            // on the other CPU may still finish what it was doing (answer a
            // write, say). Frozen means every thread is in state T.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !all_threads_stopped(pid) {
                assert!(
                    Instant::now() < deadline,
                    "the emulator (pid {pid}) did not stop within 5 s of SIGSTOP"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    pub fn cli(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg(tool)
            .args(args)
            .env("DRBD_EMU_CONFIG", &self.config)
            .output()
            .expect("run cli")
    }

    pub fn drbdadm(&self, args: &[&str]) -> Output {
        self.cli("drbdadm", args)
    }

    pub fn drbdsetup(&self, args: &[&str]) -> Output {
        self.cli("drbdsetup", args)
    }

    /// `drbdadm ARGS` that must succeed.
    pub fn adm_ok(&self, args: &[&str]) {
        let o = self.drbdadm(args);
        assert!(
            o.status.success(),
            "{}: drbdadm {args:?} failed: {:?}\n{}{}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn status(&self) -> String {
        let o = self.drbdadm(&["status", "r0"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let o = self.drbdsetup(&["status", "r0", "--json"]);
        assert!(o.status.success(), "status --json failed");
        serde_json::from_slice(&o.stdout).expect("status --json is valid JSON")
    }

    /// Waits until `drbdadm status` equals `want`.
    pub fn wait_status(&self, secs: u64, want: &str) {
        let mut last;
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            last = self.status();
            if last == want {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: status did not become\n{want}--- within {secs}s; last was\n{last}--- daemon log:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn events(&self, args: &[&str]) -> Events {
        let mut child = Command::new(BIN)
            .arg("drbdsetup")
            .arg("events2")
            .args(args)
            .env("DRBD_EMU_CONFIG", &self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn events2");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                match l {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Events {
            child,
            rx,
            seen: Vec::new(),
            pos: 0,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGCONT in case a test stopped it
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        self.kill();
    }
}

/// A running `drbdsetup events2` with its output lines.
pub struct Events {
    pub child: Child,
    rx: mpsc::Receiver<String>,
    /// every line so far
    pub seen: Vec<String>,
    /// lines before this index were consumed by `wait_line`
    pos: usize,
}

impl Events {
    fn pump(&mut self, timeout: Duration) {
        if let Ok(l) = self.rx.recv_timeout(timeout) {
            self.seen.push(l);
            while let Ok(l) = self.rx.try_recv() {
                self.seen.push(l);
            }
        }
    }

    /// Waits for a line (after the last matched one) satisfying `pred`.
    pub fn wait_line(&mut self, secs: u64, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(i) = self.seen[self.pos..].iter().position(|l| pred(l)) {
                let idx = self.pos + i;
                self.pos = idx + 1;
                return self.seen[idx].clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {secs}s waiting for events2 line: {what}\nlines so far:\n{}",
                    self.seen.join("\n")
                );
            }
            self.pump(Duration::from_millis(50));
        }
    }

    /// Collects lines for `ms` milliseconds (to assert on what did not come).
    pub fn settle(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < deadline {
            self.pump(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        wait_until(secs, "events2 to exit", || self.child.try_wait().unwrap())
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
}

fn node_config(dir: &Path, me: (&str, u32, u16), peer: (&str, u32, u16), tuning: &str) -> Node {
    host(dir, me, peer, tuning, "")
}

/// Writes `DIR/NAME.toml` for host `me` = (hostname, node id, port) with
/// peer `peer`, `[tuning]` keys `tuning` and further sections `extra`
/// (`[device]`, `[net]` ...); state in `DIR/NAME/drbd`, data in
/// `DIR/NAME/data`, log `DIR/NAME.log`. Not started.
pub fn host(
    dir: &Path,
    me: (&str, u32, u16),
    peer: (&str, u32, u16),
    tuning: &str,
    extra: &str,
) -> Node {
    let base = dir.join(me.0);
    let state_dir = base.join("drbd");
    let data_dir = base.join("data");
    let config = dir.join(format!("{}.toml", me.0));
    std::fs::write(
        &config,
        format!(
            "resource = \"r0\"\nhostname = \"{}\"\nnode_id = {}\nminor = 1000\nstate_dir = \"{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\n[peer]\nhostname = \"{}\"\nnode_id = {}\naddress = \"127.0.0.1:{}\"\n[tuning]\n{tuning}\n{extra}",
            me.0,
            me.1,
            state_dir.display(),
            data_dir.display(),
            me.2,
            peer.0,
            peer.1,
            peer.2
        ),
    )
    .unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    Node {
        name: me.0.to_string(),
        config,
        state_dir,
        data_dir,
        log: dir.join(format!("{}.log", me.0)),
        child: None,
    }
}

impl Pair {
    /// Two configured (not started) hosts fs1 (node 0) and fs2 (node 1).
    pub fn new(tuning: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (free_port(), free_port());
        let a = node_config(dir.path(), ("fs1", 0, pa), ("fs2", 1, pb), tuning);
        let b = node_config(dir.path(), ("fs2", 1, pb), ("fs1", 0, pa), tuning);
        Pair { dir, a, b }
    }

    /// Both started and connected (fresh disks: both Inconsistent).
    pub fn started(tuning: &str) -> Pair {
        let mut p = Pair::new(tuning);
        p.a.start();
        p.b.start();
        p.a.wait_status(10, "r0 role:Secondary\n  disk:Inconsistent\n  fs2 role:Secondary\n    peer-disk:Inconsistent\n");
        p.b.wait_status(10, "r0 role:Secondary\n  disk:Inconsistent\n  fs1 role:Secondary\n    peer-disk:Inconsistent\n");
        p
    }

    /// Started, fs1 forced Primary and fully synced.
    pub fn synced(tuning: &str) -> Pair {
        let p = Pair::started(tuning);
        p.a.adm_ok(&["primary", "--force", "r0"]);
        p.a.wait_status(
            20,
            "r0 role:Primary\n  disk:UpToDate\n  fs2 role:Secondary\n    peer-disk:UpToDate\n",
        );
        p.b.wait_status(
            20,
            "r0 role:Secondary\n  disk:UpToDate\n  fs1 role:Primary\n    peer-disk:UpToDate\n",
        );
        p
    }
}

/// Writes `len` pseudo-random bytes (seeded) to `path`.
pub fn write_file(path: &Path, len: usize, seed: u64) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    std::fs::write(path, buf).unwrap();
}

/// Relative path -> (kind, mode, contents) of a tree, for comparison. The tree
/// may be changing (a resync writing it): an entry that vanishes between the
/// directory listing and its read is left out, and callers compare again
/// ([`wait_same_tree`]) until the trees hold still.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, (String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    fn gone(e: &std::io::Error) -> bool {
        e.kind() == std::io::ErrorKind::NotFound
    }
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<String, (String, u32, Vec<u8>)>,
    ) {
        let entries = match std::fs::read_dir(dir) {
            Err(e) if gone(&e) => return,
            r => r.unwrap(),
        };
        for e in entries {
            let p = match e {
                Err(e) if gone(&e) => continue,
                r => r.unwrap().path(),
            };
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = match std::fs::symlink_metadata(&p) {
                Err(e) if gone(&e) => continue,
                r => r.unwrap(),
            };
            let mode = md.permissions().mode() & 0o7777;
            if md.is_dir() {
                out.insert(rel, ("dir".into(), mode, Vec::new()));
                walk(root, &p, out);
            } else if md.file_type().is_symlink() {
                let t = match std::fs::read_link(&p) {
                    Err(e) if gone(&e) => continue,
                    r => r.unwrap(),
                };
                out.insert(
                    rel,
                    ("link".into(), 0, t.to_string_lossy().as_bytes().to_vec()),
                );
            } else {
                let data = match std::fs::read(&p) {
                    Err(e) if gone(&e) => continue,
                    r => r.unwrap(),
                };
                out.insert(rel, ("file".into(), mode, data));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Value of `key:` in an events2 line.
pub fn key<'a>(line: &'a str, k: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|t| t.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
}

/// Waits until both trees are identical.
pub fn wait_same_tree(a: &Path, b: &Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (ta, tb) = (tree(a), tree(b));
        if ta == tb {
            return;
        }
        if Instant::now() > deadline {
            let ka: Vec<_> = ta.keys().collect();
            let kb: Vec<_> = tb.keys().collect();
            panic!("trees differ after {secs}s:\n{ka:?}\n{kb:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every thread of `pid` is stopped (`T` in /proc/PID/task/TID/stat).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "T"))
            })
            .unwrap_or(true)
    })
}
