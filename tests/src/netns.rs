//! Test hosts made of Linux network namespaces on this machine.
//!
//! [`Net::new`] builds, for one test:
//!
//! - a Linux bridge in the root namespace with the address `198.18.N.1/24` (or
//!   `198.19.N.1/24`): controllers started in the root namespace listen on it, so
//!   agents inside the namespaces reach them;
//! - one network namespace per host, with a veth pair: the root side is a port of
//!   the bridge, the namespace side is `eth0` with `198.18.N.<10+i>/24`, `lo` is up
//!   and the default route goes through the bridge address.
//!
//! Names: every object carries a short prefix unique to this `Net`, `us` and four
//! hex digits derived from the pid, a counter and the clock (`us1a2b`). The bridge
//! is `<prefix>br`, the root side of host `i`'s veth `<prefix>v<i>`, the namespace
//! `<prefix>-<host>` (Linux interface names have at most 15 characters).
//!
//! Subnets: N is one of the 512 /24s of 198.18.0.0/15 (benchmarking space, never
//! routed). A `Net` holds an exclusive `flock` on `/run/understudy-netns/subnet-N.lock`
//! for its whole life and checks that no address or route of the root namespace
//! uses the /24 before taking it, so parallel tests (threads or processes) never
//! collide. The lock file records the prefix of its holder: when a test process
//! died without cleaning up (SIGKILL), the next [`Net::new`] finds the file
//! unlocked but not empty and removes what the dead one left
//! ([`Net::cleanup_stale`]).
//!
//! [`Drop`] removes everything, also when the test panics: every process still in
//! the namespaces is SIGKILLed, then the iptables rules, veths, namespaces and the
//! bridge are deleted.
//!
//! Prerequisites: root, `ip` (iproute2), `iptables`, `arping` (Thomas Habets'
//! `arping` package) and `ping` (iputils-ping). When one is missing, [`Net::new`]
//! returns an error naming the install command ([`INSTALL_HINT`]); tests must fail
//! with it, never skip.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The command that installs everything this module needs (Debian/Ubuntu).
pub const INSTALL_HINT: &str = "apt-get install -y iproute2 iptables arping iputils-ping";

/// Where the per-subnet lock files live.
const LOCK_DIR: &str = "/run/understudy-netns";

/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/var/run/netns";

/// Number of /24 subnets in 198.18.0.0/15.
const SUBNETS: u16 = 512;

/// First host octet: host `i` gets `.10 + i`.
const HOST_BASE: u8 = 10;

/// First spare octet: [`Net::free_addr`]`(k)` is `.100 + k`.
const FREE_BASE: u8 = 100;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run a program to completion; `Ok(stdout)` on success, otherwise an error with
/// the command line, exit status and stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e} (install with: {INSTALL_HINT})"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

fn in_path(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .any(|d| Path::new(d).join(program).is_file());
    found
}

/// Check root and the tools; the error names what is missing and the install command.
pub fn check_prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "network-namespace tests need root (creating namespaces, veths, bridges)".into(),
        );
    }
    let missing: Vec<&str> = ["ip", "iptables", "arping", "ping"]
        .into_iter()
        .filter(|p| !in_path(p))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing {}: install with `{INSTALL_HINT}` (scripts/install-deps.sh does it)",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Names of all network namespaces (`ip netns list`).
pub fn netns_list() -> Result<Vec<String>, String> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Names of all links of the root namespace (`ip -o link`), without the `@peer` part.
pub fn root_links() -> Result<Vec<String>, String> {
    Ok(ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

/// SIGKILL every process in namespace `ns` and wait (bounded, 5 s) until none is left.
pub fn kill_netns_pids(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            if !pids.is_empty() {
                eprintln!("netns: processes {pids:?} still in {ns} after SIGKILL");
            }
            return;
        }
        for pid in pids {
            // SAFETY: plain kill(2); a pid that vanished gives ESRCH, ignored.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Switch the calling thread into namespace `ns` (sockets it creates belong there).
fn enter_netns(ns: &str) -> Result<(), String> {
    let path = PathBuf::from(NETNS_DIR).join(ns);
    let f = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: a valid fd of a namespace file; setns affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// With the lock of a subnet file held: remove what a dead holder left behind (its
/// prefix is still recorded), then forget it.
fn reap_dead_holder(f: &mut File) {
    let mut stale = String::new();
    let _ = f.rewind();
    let _ = f.read_to_string(&mut stale);
    let stale = stale.trim();
    if stale.starts_with("us") && stale.len() == 6 {
        eprintln!("netns: removing {stale}*, left by a test process that died");
        Net::cleanup_stale(stale);
        let _ = f.set_len(0);
    }
}

/// Clean up after every dead test process: a subnet lock file that can be locked
/// (its holder is gone) and still names a prefix.
fn reap_dead_nets() {
    let Ok(dir) = fs::read_dir(LOCK_DIR) else {
        return;
    };
    for entry in dir.flatten() {
        let Ok(mut f) = OpenOptions::new().read(true).write(true).open(entry.path()) else {
            continue;
        };
        if f.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
            continue;
        }
        // SAFETY: flock on a valid fd; released when `f` is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            reap_dead_holder(&mut f);
        }
    }
}

fn unique_prefix() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("us{:04x}", h.finish() & 0xffff)
}

/// The /24 number `n` (0..512) as its first three octets.
fn subnet_octets(n: u16) -> (u8, u8) {
    (18 + (n / 256) as u8, (n % 256) as u8)
}

/// A `Net`: see the module documentation.
pub struct Net {
    prefix: String,
    subnet: u16,
    hosts: Vec<String>,
    /// iptables rules added inside namespaces: (namespace, rule arguments after -I/-D).
    ns_rules: Mutex<Vec<(String, Vec<String>)>>,
    /// iptables rules added in the root namespace (arguments after -I/-D).
    root_rules: Vec<Vec<String>>,
    lock: File,
}

impl Net {
    /// Build the bridge and one namespace per host (names: letters, digits, `-`;
    /// at most 89 hosts). Fails with an operator-readable error, naming the install
    /// command when a prerequisite is missing. Whatever was created before an
    /// error is removed again.
    pub fn new(hosts: &[&str]) -> Result<Net, String> {
        check_prerequisites()?;
        if hosts.is_empty() || hosts.len() > (FREE_BASE - HOST_BASE) as usize {
            return Err(format!("between 1 and 90 hosts, not {}", hosts.len()));
        }
        for (i, h) in hosts.iter().enumerate() {
            if h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("host name {h:?}: use letters, digits and '-'"));
            }
            if hosts[..i].contains(h) {
                return Err(format!("host name {h:?} given twice"));
            }
        }
        let (subnet, lock) = Self::take_subnet()?;
        let mut last_err = String::new();
        for _ in 0..20 {
            let prefix = unique_prefix();
            let taken = netns_list()?.iter().any(|n| n.starts_with(&prefix))
                || root_links()?.iter().any(|n| n.starts_with(&prefix));
            if taken {
                continue;
            }
            let mut net = Net {
                prefix,
                subnet,
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                ns_rules: Mutex::new(Vec::new()),
                root_rules: Vec::new(),
                lock: lock.try_clone().map_err(|e| format!("dup lock: {e}"))?,
            };
            let mut l = &net.lock;
            let _ = l.set_len(0);
            let _ = l.rewind();
            let _ = l.write_all(net.prefix.as_bytes());
            match net.build() {
                Ok(()) => return Ok(net),
                // `net` is dropped here: everything built so far is removed.
                Err(e) => last_err = e,
            }
        }
        Err(format!("cannot build the test network: {last_err}"))
    }

    /// Take a free /24 of 198.18.0.0/15: lock its file, clean up after a dead
    /// previous holder, and check the root namespace does not use it.
    fn take_subnet() -> Result<(u16, File), String> {
        fs::create_dir_all(LOCK_DIR).map_err(|e| format!("create {LOCK_DIR}: {e}"))?;
        reap_dead_nets();
        let start = (RandomState::new().build_hasher().finish() % SUBNETS as u64) as u16;
        for k in 0..SUBNETS {
            let n = (start + k) % SUBNETS;
            if n == 0 {
                continue; // 198.18.0.0/24 is used in configurations as a placeholder
            }
            let path = format!("{LOCK_DIR}/subnet-{n}.lock");
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: flock on a valid fd.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue; // held by a live Net
            }
            reap_dead_holder(&mut f);
            let (b, c) = subnet_octets(n);
            let needle = format!(" 198.{b}.{c}.");
            let used = format!(
                " {} {}",
                ip(&["-o", "-4", "addr", "show"])?,
                ip(&["-4", "route", "show", "table", "all"])?
            )
            .replace(['\n', '/'], " ")
            .contains(&needle);
            if used {
                continue; // dropping `f` releases the lock
            }
            return Ok((n, f));
        }
        Err("no free /24 in 198.18.0.0/15: clean up with Net::cleanup_stale(\"us\")".into())
    }

    fn build(&mut self) -> Result<(), String> {
        let br = self.bridge_name();
        let br_cidr = format!("{}/24", self.bridge_addr());
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &br_cidr, "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        // See `cut`: ARP retried every 100 ms, not every second.
        run(
            "sysctl",
            &["-qw", &format!("net.ipv4.neigh.{br}.retrans_time_ms=100")],
        )?;
        // With br_netfilter loaded, bridged frames cross the root FORWARD chain: let
        // ours through when its policy is not ACCEPT.
        let forward = run("iptables", &["-S", "FORWARD"]).unwrap_or_default();
        if !forward.lines().any(|l| l.trim() == "-P FORWARD ACCEPT") {
            let rule: Vec<String> = [
                "FORWARD",
                "-i",
                &br,
                "-o",
                &br,
                "-m",
                "comment",
                "--comment",
                &self.prefix,
                "-j",
                "ACCEPT",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut args = vec!["-I"];
            args.extend(rule.iter().map(String::as_str));
            run("iptables", &args)?;
            self.root_rules.push(rule);
        }
        let gw = self.bridge_addr().to_string();
        for h in &self.hosts {
            let ns = self.ns_name(h);
            let veth = self.root_veth(h);
            let cidr = format!("{}/24", self.addr(h));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.neigh.eth0.retrans_time_ms=100",
                ],
            )?;
            ip(&["-n", &ns, "route", "add", "default", "via", &gw])?;
        }
        Ok(())
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("unknown host {host:?}; hosts are {:?}", self.hosts))
    }

    fn subnet_addr(&self, last: u8) -> Ipv4Addr {
        let (b, c) = subnet_octets(self.subnet);
        Ipv4Addr::new(198, b, c, last)
    }

    /// The unique prefix of every name this `Net` created (`us1a2b`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The host names, in the order given to [`Net::new`].
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The bridge's interface name in the root namespace (`<prefix>br`).
    pub fn bridge_name(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The network namespace of `host` (`<prefix>-<host>`). Panics on an unknown host.
    pub fn ns_name(&self, host: &str) -> String {
        self.index(host);
        format!("{}-{host}", self.prefix)
    }

    /// The address of `host`'s `eth0`: `198.18.N.(10 + index)`.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        self.subnet_addr(HOST_BASE + self.index(host) as u8)
    }

    /// The bridge's address in the root namespace (`198.18.N.1`), the hosts' default
    /// gateway; processes in the root namespace listening on it are reachable from
    /// every host.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.subnet_addr(1)
    }

    /// The prefix length of the subnet (24).
    pub fn subnet_prefix(&self) -> u8 {
        24
    }

    /// A spare address of the subnet that no interface has (`198.18.N.(100 + k)`,
    /// k < 150), e.g. a client IP to move between hosts.
    pub fn free_addr(&self, k: u8) -> Ipv4Addr {
        assert!(k < 150, "free_addr({k}): k must be below 150");
        self.subnet_addr(FREE_BASE + k)
    }

    /// The root-namespace side of `host`'s veth (`<prefix>v<index>`), a bridge port.
    pub fn root_veth(&self, host: &str) -> String {
        format!("{}v{}", self.prefix, self.index(host))
    }

    /// A command running `program` inside `host`'s namespace
    /// (`ip netns exec <ns> <program>`); add arguments with `.arg(...)`.
    pub fn cmd(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_name(host), program]);
        c
    }

    /// Run `ip -n <ns> <args>` in `host`'s namespace; `Ok(stdout)` or an error.
    pub fn ip_in(&self, host: &str, args: &[&str]) -> Result<String, String> {
        let ns = self.ns_name(host);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Pull `host`'s cable: take the root side of its veth down. The host loses all
    /// connectivity and cannot undo it from inside.
    ///
    /// Its `eth0` loses carrier, so the host's kernel flushes its ARP entries and
    /// re-resolves its peers after [`Net::heal`]. Linux retries an unanswered ARP
    /// request every `retrans_time_ms` (1 s by default), which would keep a healed
    /// host unreachable for up to a second more; the test network sets 100 ms on
    /// every interface so a healed link carries traffic again within about 100 ms
    /// (a blip of X ms is an outage of about X ms, as on a network that keeps
    /// carrier).
    pub fn cut(&self, host: &str) {
        ip(&["link", "set", &self.root_veth(host), "down"]).expect("cut");
    }

    /// Plug `host`'s cable back in (root side of its veth up).
    pub fn heal(&self, host: &str) {
        ip(&["link", "set", &self.root_veth(host), "up"]).expect("heal");
    }

    /// Partial partition: inside `host`'s namespace, DROP every packet to or from
    /// `peer` (iptables INPUT and OUTPUT). Other traffic is untouched. Idempotent.
    pub fn block(&self, host: &str, peer: Ipv4Addr) {
        let ns = self.ns_name(host);
        let peer = peer.to_string();
        let rules = [
            vec!["INPUT", "-s", peer.as_str(), "-j", "DROP"],
            vec!["OUTPUT", "-d", peer.as_str(), "-j", "DROP"],
        ];
        let mut added = self.ns_rules.lock().unwrap();
        for r in rules {
            let r: Vec<String> = r.iter().map(|s| s.to_string()).collect();
            if added.contains(&(ns.clone(), r.clone())) {
                continue;
            }
            let mut args = vec!["netns", "exec", ns.as_str(), "iptables", "-I"];
            args.extend(r.iter().map(String::as_str));
            run("ip", &args).expect("block");
            added.push((ns.clone(), r));
        }
    }

    /// Undo [`Net::block`] for this `host` and `peer`. Idempotent.
    pub fn unblock(&self, host: &str, peer: Ipv4Addr) {
        let ns = self.ns_name(host);
        let peer = peer.to_string();
        let mut added = self.ns_rules.lock().unwrap();
        added.retain(|(rns, r)| {
            let ours = *rns == ns && r.contains(&peer);
            if ours {
                let mut args = vec!["netns", "exec", ns.as_str(), "iptables", "-D"];
                args.extend(r.iter().map(String::as_str));
                run("ip", &args).expect("unblock");
            }
            !ours
        });
    }

    /// Run `f` on a thread that entered `host`'s namespace (sockets it opens live
    /// there), and return its result. No external program involved.
    pub fn run_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        self.spawn_in(host, f)
            .join()
            .map_err(|p| match p.downcast_ref::<String>() {
                Some(s) => s.clone(),
                None => p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "thread panicked".into()),
            })
    }

    /// Like [`Net::run_in`], without waiting. The thread panics if it cannot enter.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = self.ns_name(host);
        std::thread::spawn(move || {
            enter_netns(&ns).unwrap_or_else(|e| panic!("{e}"));
            f()
        })
    }

    /// A TCP echo server in `host`'s namespace bound to `bind` (e.g. `0.0.0.0:7000`:
    /// then it also answers on addresses added to the host later). Stops on drop.
    pub fn echo_server(&self, host: &str, bind: SocketAddr) -> Result<EchoServer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stop2 = stop.clone();
        let handle = self.spawn_in(host, move || {
            let l = match TcpListener::bind(bind).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(format!("bind {bind}: {e}")));
                    return;
                }
            };
            let _ = tx.send(l.local_addr().map_err(|e| e.to_string()));
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| format!("echo server in {host}: {e}"))??;
        Ok(EchoServer {
            addr,
            stop,
            handle: Some(handle),
        })
    }

    /// From inside `host`'s namespace: connect to `target` within `timeout`, send a
    /// line and expect it echoed back (see [`Net::echo_server`]).
    pub fn tcp_probe(&self, host: &str, target: SocketAddr, timeout: Duration) -> bool {
        self.run_in(host, move || probe(target, timeout))
            .unwrap_or(false)
    }

    /// Remove every namespace, link and root iptables rule whose name (or comment)
    /// starts with `prefix`, killing the processes in those namespaces first. For
    /// leftovers of a killed test run: `Net::cleanup_stale("us")` removes ALL test
    /// networks, including those of tests running now.
    pub fn cleanup_stale(prefix: &str) {
        if prefix.len() < 2 {
            return;
        }
        for ns in netns_list().unwrap_or_default() {
            if ns.starts_with(prefix) {
                kill_netns_pids(&ns);
                let _ = ip(&["netns", "del", &ns]);
            }
        }
        let links: Vec<String> = root_links()
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect();
        // veths first, then bridges
        for l in links.iter().filter(|l| !l.ends_with("br")) {
            let _ = ip(&["link", "del", l]);
        }
        for l in links.iter().filter(|l| l.ends_with("br")) {
            let _ = ip(&["link", "del", l]);
        }
        for line in run("iptables", &["-S", "FORWARD"])
            .unwrap_or_default()
            .lines()
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let tagged = words
                .windows(2)
                .any(|w| w[0] == "--comment" && w[1].trim_matches('"').starts_with(prefix));
            if tagged && words.first() == Some(&"-A") {
                let mut args = vec!["-D"];
                args.extend(words[1..].iter().map(|w| w.trim_matches('"')));
                let _ = run("iptables", &args);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let namespaces: Vec<String> = self.hosts.iter().map(|h| self.ns_name(h)).collect();
        for ns in &namespaces {
            kill_netns_pids(ns);
        }
        for (ns, r) in self.ns_rules.lock().unwrap().drain(..) {
            let mut args = vec!["netns", "exec", ns.as_str(), "iptables", "-D"];
            args.extend(r.iter().map(String::as_str));
            let _ = run("ip", &args);
        }
        for r in self.root_rules.drain(..) {
            let mut args = vec!["-D"];
            args.extend(r.iter().map(String::as_str));
            let _ = run("iptables", &args);
        }
        let links = root_links().unwrap_or_default();
        for h in self.hosts.clone() {
            let v = self.root_veth(&h);
            if links.contains(&v) {
                let _ = ip(&["link", "del", &v]);
            }
        }
        let existing = netns_list().unwrap_or_default();
        for ns in &namespaces {
            if existing.contains(ns) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
        // Hosts made under this prefix by others (the local cloud's launched
        // instances: `<prefix>-iN`, veth `<prefix>lN`) are this network's too.
        for ns in netns_list().unwrap_or_default() {
            if ns.starts_with(&self.prefix) {
                kill_netns_pids(&ns);
                let _ = ip(&["netns", "del", &ns]);
            }
        }
        for l in root_links().unwrap_or_default() {
            if l.starts_with(&self.prefix) && l != self.bridge_name() {
                let _ = ip(&["link", "del", &l]);
            }
        }
        if links.contains(&self.bridge_name()) {
            let _ = ip(&["link", "del", &self.bridge_name()]);
        }
        // Anything left (e.g. a failed delete) would be taken for a collision.
        let left_ns: Vec<String> = netns_list()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        let left_links: Vec<String> = root_links()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        if left_ns.is_empty() && left_links.is_empty() {
            let _ = self.lock.set_len(0);
        } else {
            eprintln!(
                "netns: {} left namespaces {left_ns:?} and links {left_links:?}",
                self.prefix
            );
        }
        // closing `lock` releases the subnet
    }
}

/// A TCP echo server in a namespace (see [`Net::echo_server`]).
pub struct EchoServer {
    /// The bound address (with the actual port when bound to port 0).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn echo(mut s: TcpStream) {
    use std::io::Read as _;
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Connect to `target` within `timeout`, send a line, expect the same line back.
pub fn probe(target: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(mut s) = TcpStream::connect_timeout(&target, timeout) else {
        return false;
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    let _ = s.set_read_timeout(Some(left));
    let _ = s.set_write_timeout(Some(left));
    let msg = b"understudy\n";
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut got = [0u8; 11];
    s.read_exact(&mut got).is_ok() && &got == msg
}
