//! Block-mode helpers: environment check, shell commands, data patterns,
//! and guards that release loop devices, FUSE and ext4 mounts and kill the
//! daemons (also those the test did not spawn itself: started by
//! `drbdadm up`'s autoload) when a test ends or fails.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::Node;

pub const INSTALL: &str = "run `sudo scripts/install-deps.sh` (or: apt-get install -y fuse3 util-linux e2fsprogs) and run the tests as root";

/// The block-mode tests need root, `/dev/fuse`, util-linux and e2fsprogs;
/// they FAIL (never skip) with the install command when something is missing.
pub fn require_env() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the block-mode tests need root (FUSE mount, loop devices): {INSTALL}"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (FUSE kernel module): {INSTALL}"
    );
    for tool in ["losetup", "blockdev", "mkfs.ext4", "mount", "umount"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success() || !o.stderr.is_empty() || !o.stdout.is_empty());
        assert!(ok, "`{tool}` is missing: {INSTALL}");
    }
}

/// Runs a command that must succeed; its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}: {INSTALL}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `len` pseudo-random bytes (seeded).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(p).unwrap();
    let mut b = vec![0; len];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

/// `pwrite` + fdatasync through an open file (device file or loop device).
pub fn write_at(p: &Path, off: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", p.display()));
    f.write_all_at(data, off).unwrap();
    f.sync_data().unwrap();
}

/// The `[device]` section of a block-mode host: `size_mib`, the backing
/// file, and the metadata directory (`None`: the default, `state_dir`).
pub fn device_section(
    size_mib: u64,
    backing: &Path,
    meta_dir: Option<&Path>,
    more: &str,
) -> String {
    let mut s = format!(
        "[device]\nmode = \"block\"\nsize_mib = {size_mib}\nbacking_file = \"{}\"\n",
        backing.display()
    );
    if let Some(m) = meta_dir {
        s.push_str(&format!("meta_dir = \"{}\"\n", m.display()));
    }
    s.push_str(more);
    s
}

/// The device file served through FUSE (default `mount_dir`).
pub fn dev_file(n: &Node) -> PathBuf {
    n.state_dir.join("fuse").join("drbd-emu-device")
}

/// The loop device the daemon published in `STATE_DIR/device`.
pub fn loop_dev(n: &Node) -> String {
    published_loop(&n.state_dir).unwrap_or_else(|| panic!("{}: no published loop device", n.name))
}

fn published_loop(state_dir: &Path) -> Option<String> {
    let d = std::fs::read_to_string(state_dir.join("device")).ok()?;
    let d = d.trim().to_string();
    d.starts_with("/dev/loop").then_some(d)
}

/// The backing file of loop device `dev` as the kernel reports it to this
/// process (`/drbd-emu-device` for a daemon in a private mount namespace).
fn loop_backing(dev: &str) -> String {
    let short = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{short}/loop/backing_file"))
        .unwrap_or_default()
        .trim()
        .trim_end_matches(" (deleted)")
        .to_string()
}

/// Detaches the loop device published in `state_dir` if it is still that
/// host's: its backing file is the host's device file, or — only while the
/// daemon that set it up runs (`daemon_alive`) and so still holds it — the
/// `/drbd-emu-device` a daemon in a private mount namespace shows from here.
/// (`losetup -d` of a device still open only marks it for autoclear.)
pub fn detach_published_loop(state_dir: &Path, device_file: &Path, daemon_alive: bool) {
    let Some(d) = published_loop(state_dir) else {
        return;
    };
    let back = loop_backing(&d);
    if back == device_file.display().to_string() || (daemon_alive && back == "/drbd-emu-device") {
        let _ = Command::new("losetup").arg("-d").arg(&d).output();
    }
}

/// The pid in `STATE_DIR/lock` if that process runs `drbd-emu daemon` for
/// `config` (and is not a zombie).
pub fn daemon_pid(state_dir: &Path, config: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(state_dir.join("lock"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
    (cmdline.contains(" daemon ")
        && cmdline.contains(&config.display().to_string())
        && state != Some(Some('Z')))
    .then_some(pid)
}

/// SIGKILLs `pid` and waits (bounded) until it is gone: reaped when it is
/// our child (an autoloaded daemon is, through `PR_SET_CHILD_SUBREAPER`,
/// once the CLI that started it exited), else until it is a zombie.
pub fn kill_pid(pid: i32) {
    // SAFETY: kill(2) on a pid verified to be a drbd-emu daemon of this test.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        let mut status = 0;
        // SAFETY: waitpid(2) on one pid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        // reaped, gone, or a zombie someone else has to reap
        if r == pid || stat.is_empty() || (zombie && r < 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Block-mode hosts of one test, in a temp dir of their own. On drop
/// (also when the test panics): ext4 mounts unmounted, then per host the
/// published loop device detached while its daemon still runs, the daemon
/// killed (spawned by the harness, or found by the pid in its lock file
/// when `drbdadm` autoloaded it), its FUSE mount point lazily unmounted;
/// the temp dir goes last.
pub struct BlockHosts {
    pub nodes: Vec<Node>,
    pub mounts: Vec<PathBuf>,
    pub dir: tempfile::TempDir,
}

impl BlockHosts {
    pub fn new() -> BlockHosts {
        require_env();
        // daemons started by `drbdadm` (autoload) outlive the CLI: let them
        // become our children, so that killing them reaps them too
        // SAFETY: prctl(2) with an integer argument.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        }
        BlockHosts {
            nodes: Vec::new(),
            mounts: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The temp dir of the hosts.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn mount_ext4(&mut self, dev: &str, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        run("mount", &["-t", "ext4", dev, &at.display().to_string()]);
        self.mounts.push(at.to_path_buf());
    }

    /// Unmounts (normally) a mount made with `mount_ext4`.
    pub fn umount(&mut self, at: &Path) {
        run("umount", &[&at.display().to_string()]);
        self.mounts.retain(|m| m != at);
    }

    /// Releases one host now (as the drop does).
    pub fn release(n: &mut Node) {
        let pid = daemon_pid(&n.state_dir, &n.config);
        detach_published_loop(&n.state_dir, &dev_file(n), pid.is_some());
        n.kill();
        if let Some(pid) = daemon_pid(&n.state_dir, &n.config) {
            kill_pid(pid);
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(n.state_dir.join("fuse"))
            .output();
    }
}

impl Drop for BlockHosts {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
        for n in self.nodes.iter_mut() {
            BlockHosts::release(n);
        }
    }
}

/// Rewrites the `[peer]` section of a host config.
pub fn set_peer(config: &Path, peer: (&str, u32, u16)) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut out = String::new();
    let mut skip = 0;
    for l in text.lines() {
        if skip > 0
            && ["hostname", "node_id", "address"]
                .iter()
                .any(|k| l.starts_with(k))
        {
            skip -= 1;
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if l == "[peer]" {
            out.push_str(&format!(
                "hostname = \"{}\"\nnode_id = {}\naddress = \"127.0.0.1:{}\"\n",
                peer.0, peer.1, peer.2
            ));
            skip = 3;
        }
    }
    std::fs::write(config, out).unwrap();
}

/// Compares two files byte for byte (in chunks); the first differing offset.
pub fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    if la != lb {
        return Some(la.min(lb));
    }
    let mut off = 0;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    while off < la {
        let n = (la - off).min(1 << 20) as usize;
        fa.read_exact_at(&mut ba[..n], off).unwrap();
        fb.read_exact_at(&mut bb[..n], off).unwrap();
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Some(off + i as u64);
        }
        off += n as u64;
    }
    None
}

/// A daemon started by `drbdadm up`/`adjust` (autoload), not by the
/// harness: killed (and reaped) on drop, found by the pid in its lock file.
pub struct Autoloaded {
    pub state_dir: PathBuf,
    pub config: PathBuf,
}

impl Autoloaded {
    /// Guards the daemon a CLI will start for `n`.
    pub fn new(n: &Node) -> Autoloaded {
        // SAFETY: prctl(2) with an integer argument (see BlockHosts::new).
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        }
        Autoloaded {
            state_dir: n.state_dir.clone(),
            config: n.config.clone(),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        daemon_pid(&self.state_dir, &self.config)
    }
}

impl Drop for Autoloaded {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            kill_pid(pid);
        }
    }
}
