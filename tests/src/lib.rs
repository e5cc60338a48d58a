//! Test harness: a whole Understudy cluster made of real processes on loopback.
//!
//! [`Cluster::start`] writes configurations into a fresh temporary directory and
//! starts N controller processes, two DRBD emulator daemons (the file server and
//! its backup, replicating a data directory over TCP), and one agent per host. The
//! harness drives and inspects it only through real interfaces: process signals,
//! the emulator's `drbdadm`, and `understudyctl --output json status`.
//!
//! Every process is killed (SIGKILL) and reaped when the harness is dropped, also
//! when a test panics; every port is a fresh free one, so tests run in parallel.
//! The binaries come from the workspace's target directory: build them first with
//! `cargo build --workspace --bins` (plain `cargo test` at the workspace root does).
//!
//! Clusters run with mutual TLS by default: [`Pki`] makes a CA and every
//! process's certificate in the cluster's directory (`pki/`) through
//! `understudy_controller::certs`, the code behind `understudyctl certs`, and
//! `understudyctl` is called with an admin operator's certificate ([`Creds`]).
//! [`Cluster::start_insecure`] runs everything in plain text instead.

pub mod ec2;
pub mod faults;
pub mod netns;
pub mod nscluster;
pub mod webdriver;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use understudy_controller::auth::Role;
use understudy_controller::certs::{self, Leaf, Written};

/// The resource name the harness gives the pair.
pub const RESOURCE: &str = "r0";

/// Path of a workspace binary, next to the test executable's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// A free TCP port, for a daemon a test starts to bind.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`): a port
/// that `bind(0)` hands out, released, can be taken by any outgoing
/// connection's source port before the daemon it was meant for binds it (an
/// `ns_dashboard` run failed with "Address already in use" on a controller's
/// HTTP port). Free means bindable on every address, and a port is handed out
/// once per test process.
pub fn free_port() -> u16 {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, last) = (10_000u16, low.saturating_sub(1));
    if last <= first + 1000 {
        // An unusual ephemeral range: the kernel's choice it is.
        return TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .expect("local addr")
            .port();
    }
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // A different start in each process (tests may run in several at once).
    let span = u32::from(last - first);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for i in 0..span {
        let p = first + ((seed.wrapping_add(i.wrapping_mul(7_919))) % span) as u16;
        if given.contains(&p) {
            continue;
        }
        if TcpListener::bind(("0.0.0.0", p)).is_ok() {
            given.insert(p);
            return p;
        }
    }
    panic!("no free TCP port in {first}..={last}");
}

/// A free UDP port on 127.0.0.1 (bound then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind udp 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A child process killed and reaped on drop; its output goes to a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log: log.into(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a signal (e.g. libc::SIGSTOP / SIGCONT) without reaping.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` every 50 ms until it returns `Some`, or panic after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Write `drbdsetup` and `drbdadm` wrapper scripts into `dir` that run the DRBD
/// emulator for the host configured in `emu_config`; returns their paths.
pub fn emulator_wrappers(dir: &Path, emu_config: &Path) -> (PathBuf, PathBuf) {
    let wrapper = |tool: &str| {
        let p = dir.join(tool);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\nDRBD_EMU_CONFIG='{}' exec '{}' {tool} \"$@\"\n",
                emu_config.display(),
                bin("drbd-emu").display()
            ),
        )
        .expect("write wrapper");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    };
    (wrapper("drbdsetup"), wrapper("drbdadm"))
}

/// Start controller number `i` (0-based) with `config`, logging next to it.
pub fn spawn_controller(config: &Path, log: &Path, i: usize) -> Proc {
    let mut cmd = Command::new(bin("understudy-controller"));
    controller_args(&mut cmd, config, false);
    Proc::spawn(&format!("controller {}", i + 1), &mut cmd, log)
}

/// The controller's arguments and environment: its config, the log filter, and
/// text or JSON log lines.
fn controller_args(cmd: &mut Command, config: &Path, json_logs: bool) {
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,openraft=warn")
        .env(
            "UNDERSTUDY_LOG_FORMAT",
            if json_logs { "json" } else { "text" },
        );
}

/// A test cluster's CA and certificates, in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> Pki {
        certs::init_ca(dir, 30).unwrap_or_else(|e| panic!("test CA: {e}"));
        Pki { dir: dir.into() }
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join(certs::CA_CERT)
    }

    /// Issue a certificate into the PKI directory.
    pub fn issue(&self, leaf: &Leaf) -> Written {
        certs::issue(&self.dir, &self.dir, leaf, 30).unwrap_or_else(|e| panic!("{leaf:?}: {e}"))
    }

    /// An agent's certificate.
    pub fn agent(&self, server_id: &str) -> Written {
        self.issue(&Leaf::Agent {
            server_id: server_id.into(),
        })
    }

    /// A controller's certificate for its listen address (`host:port`).
    pub fn controller(&self, node_id: u64, addr: &str) -> Written {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        self.issue(&Leaf::Controller {
            node_id,
            addrs: vec![host.to_string()],
        })
    }

    /// An operator's credentials for `understudyctl`.
    pub fn operator(&self, name: &str, role: Role) -> Creds {
        let w = self.issue(&Leaf::Operator {
            name: name.into(),
            role,
        });
        Creds::Tls {
            ca: self.ca(),
            cert: Some(w.cert),
            key: Some(w.key),
        }
    }

    /// The `[tls]` section for a process holding `w`.
    pub fn section(&self, w: &Written) -> String {
        format!(
            "\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.ca().display(),
            w.cert.display(),
            w.key.display()
        )
    }
}

/// The `[tls]` section of a plain-text process.
pub const INSECURE_SECTION: &str = "\n[tls]\ninsecure = true\n";

/// How `understudyctl` authenticates.
#[derive(Debug, Clone)]
pub enum Creds {
    /// `--insecure`.
    Insecure,
    /// `--ca`, and `--cert`/`--key` when given (without them the controllers refuse).
    Tls {
        ca: PathBuf,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    },
}

impl Creds {
    /// The `understudyctl` arguments.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        match self {
            Creds::Insecure => vec!["--insecure".into()],
            Creds::Tls { ca, cert, key } => {
                let mut a: Vec<std::ffi::OsString> = vec!["--ca".into(), ca.into()];
                if let (Some(c), Some(k)) = (cert, key) {
                    a.extend(["--cert".into(), c.into(), "--key".into(), k.into()]);
                }
                a
            }
        }
    }
}

/// `understudyctl` with `--controllers` and the credentials; add the rest.
pub fn ctl(addrs: &[String], creds: &Creds) -> Command {
    let mut cmd = Command::new(bin("understudyctl"));
    cmd.arg("--controllers")
        .arg(addrs.join(","))
        .args(creds.args())
        // The caller's environment must not add credentials of its own.
        .env_remove("UNDERSTUDY_CA")
        .env_remove("UNDERSTUDY_CERT")
        .env_remove("UNDERSTUDY_KEY")
        .env_remove("UNDERSTUDY_INSECURE");
    cmd
}

/// `understudyctl --output json status` against the controllers at `addrs`.
pub fn ctl_status(addrs: &[String], creds: &Creds) -> Result<Value, String> {
    let out = ctl(addrs, creds)
        .args(["--timeout-ms", "1000", "--output", "json", "status"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Poll [`ctl_status`] every 50 ms until `pred` holds; panics after `timeout` with
/// the last status seen and where the logs are.
pub fn wait_status_at(
    addrs: &[String],
    creds: &Creds,
    logs: &Path,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match ctl_status(addrs, creds) {
            Ok(v) if pred(&v) => return v,
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\nlast status: {last}\nlogs in {}",
                logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The controller processes of a test cluster: their addresses, configuration
/// files and processes (log files next to the configurations).
pub struct Controllers {
    pub addrs: Vec<String>,
    pub configs: Vec<PathBuf>,
    pub procs: Vec<Option<Proc>>,
    /// The network namespace each controller runs in (`None`: this one).
    pub netns: Vec<Option<String>>,
    /// What `understudyctl` authenticates with (an admin, or `--insecure`).
    pub creds: Creds,
    /// Log JSON lines (`--log-format json`) rather than text.
    pub json_logs: bool,
    /// Extra environment of each controller's process (e.g. `LD_PRELOAD` of
    /// libfaketime for a clock jump on one controller), applied at its next start.
    pub env: Vec<Vec<(String, String)>>,
}

impl Controllers {
    /// Controllers with these addresses and configuration files, none started.
    pub fn new(addrs: Vec<String>, configs: Vec<PathBuf>, creds: Creds) -> Controllers {
        let procs = addrs.iter().map(|_| None).collect();
        let netns = addrs.iter().map(|_| None).collect();
        let env = addrs.iter().map(|_| Vec::new()).collect();
        Controllers {
            addrs,
            configs,
            procs,
            netns,
            creds,
            json_logs: false,
            env,
        }
    }

    /// `understudyctl --controllers ... <credentials>`; add the rest.
    pub fn ctl(&self) -> Command {
        ctl(&self.addrs, &self.creds)
    }

    /// `understudyctl --output json status` against some of them only.
    pub fn status_at(&self, addrs: &[String]) -> Result<Value, String> {
        ctl_status(addrs, &self.creds)
    }

    /// Start controller `i` (0-based); its log is `controller-N.log` beside its config.
    pub fn start(&mut self, i: usize) {
        let log = self.configs[i].with_file_name(format!("controller-{}.log", i + 1));
        let (mut cmd, name) = match &self.netns[i] {
            None => (
                Command::new(bin("understudy-controller")),
                format!("controller {}", i + 1),
            ),
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns])
                    .arg(bin("understudy-controller"));
                (cmd, format!("controller {} in {ns}", i + 1))
            }
        };
        controller_args(&mut cmd, &self.configs[i], self.json_logs);
        cmd.envs(self.env[i].iter().map(|(k, v)| (k, v)));
        self.procs[i] = Some(Proc::spawn(&name, &mut cmd, &log));
    }

    /// SIGKILL controller `i` (0-based) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.procs[i].take() {
            p.kill();
        }
    }

    /// Send a signal (SIGSTOP, SIGCONT) to controller `i`.
    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(p) = &self.procs[i] {
            p.signal(sig);
        }
    }

    /// `understudyctl --output json status` against them.
    pub fn status(&self) -> Result<Value, String> {
        ctl_status(&self.addrs, &self.creds)
    }

    /// Wait until the status satisfies `pred`; panics with the last status seen.
    pub fn wait_status(
        &self,
        logs: &Path,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        wait_status_at(&self.addrs, &self.creds, logs, what, timeout, pred)
    }
}

/// One emulated host of the pair: a DRBD emulator daemon and an agent.
pub struct Host {
    pub name: String,
    pub role: &'static str,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub emu_config: PathBuf,
    pub agent_config: PathBuf,
    pub drbdadm: PathBuf,
    pub drbdsetup: PathBuf,
    pub emu: Option<Proc>,
    pub agent: Option<Proc>,
}

impl Host {
    /// Run this host's `drbdadm` (the emulator's) with arguments.
    pub fn drbdadm(&self, args: &[&str]) -> Output {
        Command::new(&self.drbdadm)
            .args(args)
            .output()
            .expect("run drbdadm")
    }

    /// Run this host's `drbdsetup` with arguments.
    pub fn drbdsetup(&self, args: &[&str]) -> Output {
        Command::new(&self.drbdsetup)
            .args(args)
            .output()
            .expect("run drbdsetup")
    }

    pub fn start_emulator(&mut self) {
        let mut cmd = Command::new(bin("drbd-emu"));
        cmd.arg("daemon").arg("--config").arg(&self.emu_config);
        self.emu = Some(Proc::spawn(
            &format!("drbd-emu {}", self.name),
            &mut cmd,
            &self.dir.join("emu.log"),
        ));
        let setup = self.drbdsetup.clone();
        wait_for(
            &format!("{}'s DRBD emulator to answer", self.name),
            Duration::from_secs(10),
            || {
                Command::new(&setup)
                    .args(["status", RESOURCE])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
            },
        );
    }

    pub fn start_agent(&mut self) {
        let mut cmd = Command::new(bin("understudy-agent"));
        cmd.arg("--config")
            .arg(&self.agent_config)
            .env("RUST_LOG", "info");
        self.agent = Some(Proc::spawn(
            &format!("agent {}", self.name),
            &mut cmd,
            &self.dir.join("agent.log"),
        ));
    }
}

/// A cluster of real processes; see the module documentation.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub controllers: Controllers,
    pub hosts: Vec<Host>,
    pub pair_id: String,
    /// The CA and certificates (`None`: plain text).
    pub pki: Option<Pki>,
    /// Each controller's `[http] listen` address.
    pub http: Vec<String>,
}

impl Cluster {
    /// Start `n` controllers and a pair (file server + backup on the emulator)
    /// with its two agents, all over mutual TLS. The file server is promoted
    /// with `--force` to start the initial sync, as an operator does when
    /// creating a DRBD resource.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, true)
    }

    /// [`Cluster::start`] in plain text (`[tls] insecure = true`, `--insecure`).
    pub fn start_insecure(n: usize) -> Cluster {
        Self::start_with(n, false)
    }

    fn start_with(n: usize, tls: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("understudy-test-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        let pki = tls.then(|| Pki::new(&root.join("pki")));
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let http: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let members = addrs
            .iter()
            .zip(&http)
            .enumerate()
            .map(|(i, (a, h))| format!("{{ id = {}, addr = \"{a}\", http = \"{h}\" }}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let pair_id = "fs1".to_string();
        let names = ["fs1-a", "fs1-b"];
        // Both agents answer probes on 127.0.0.1: one UDP port each.
        let probe_ports = [free_udp_port(), free_udp_port()];
        let mut configs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let path = root.join(format!("controller-{}.toml", i + 1));
            fs::write(
                &path,
                format!(
                    r#"node_id = {id}
listen = "{addr}"
data_dir = "{data}"
members = [ {members} ]

[http]
listen = "{http_listen}"

[[pairs]]
id = "{pair_id}"
resource = "{RESOURCE}"
client_ip = "198.18.0.100"
zone = "zone-a"
primary = {{ id = "{a}", address = "127.0.0.1", zone = "zone-a", volumes = ["vol-a"], probe_port = {pa} }}
backup = {{ id = "{b}", address = "127.0.0.1", zone = "zone-a", volumes = ["vol-b"], probe_port = {pb} }}
{tls}"#,
                    tls = match &pki {
                        Some(p) => p.section(&p.controller(i as u64 + 1, addr)),
                        None => INSECURE_SECTION.into(),
                    },
                    id = i + 1,
                    http_listen = http[i],
                    pa = probe_ports[0],
                    pb = probe_ports[1],
                    data = root.join(format!("controller-{}", i + 1)).display(),
                    a = names[0],
                    b = names[1],
                ),
            )
            .expect("write controller config");
            configs.push(path);
        }
        let repl_ports = [free_port(), free_port()];
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let hdir = root.join(name);
            let data_dir = hdir.join("data");
            fs::create_dir_all(&data_dir).expect("host dir");
            let emu_config = hdir.join("drbd-emu.toml");
            let peer = 1 - i;
            fs::write(
                &emu_config,
                format!(
                    r#"resource = "{RESOURCE}"
hostname = "{name}"
node_id = {i}
minor = 1000
state_dir = "{state}"
data_dir = "{data}"
listen = "127.0.0.1:{port}"

[peer]
hostname = "{peer_name}"
node_id = {peer}
address = "127.0.0.1:{peer_port}"
"#,
                    state = hdir.join("drbd-state").display(),
                    data = data_dir.display(),
                    port = repl_ports[i],
                    peer_name = names[peer],
                    peer_port = repl_ports[peer],
                ),
            )
            .expect("write emulator config");
            let (drbdsetup, drbdadm) = emulator_wrappers(&hdir, &emu_config);
            let agent_config = hdir.join("agent.toml");
            fs::write(
                &agent_config,
                format!(
                    r#"server_id = "{name}"
pair_id = "{pair_id}"
role = "{role}"
controllers = [{ctl}]
state_dir = "{state}"
probe_listen = "127.0.0.1:{probe}"

[drbd]
resource = "{RESOURCE}"
drbdsetup = "{setup}"
drbdadm = "{adm}"
{tls}"#,
                    tls = match &pki {
                        Some(p) => p.section(&p.agent(name)),
                        None => INSECURE_SECTION.into(),
                    },
                    role = if i == 0 { "primary" } else { "backup" },
                    probe = probe_ports[i],
                    ctl = addrs
                        .iter()
                        .map(|a| format!("\"{a}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    state = hdir.join("agent-state").display(),
                    setup = drbdsetup.display(),
                    adm = drbdadm.display(),
                ),
            )
            .expect("write agent config");
            hosts.push(Host {
                name: name.to_string(),
                role: if i == 0 { "primary" } else { "backup" },
                dir: hdir,
                data_dir,
                emu_config,
                agent_config,
                drbdadm,
                drbdsetup,
                emu: None,
                agent: None,
            });
        }
        let creds = match &pki {
            Some(p) => p.operator("test-admin", Role::Admin),
            None => Creds::Insecure,
        };
        let mut c = Cluster {
            dir,
            controllers: Controllers::new(addrs, configs, creds),
            hosts,
            pair_id,
            pki,
            http,
        };
        for i in 0..n {
            c.start_controller(i);
        }
        for h in &mut c.hosts {
            h.start_emulator();
        }
        // As an operator creates a resource: both sides up and connected, then
        // the file server forced Primary to start the initial sync.
        wait_for("both sides connected", Duration::from_secs(20), || {
            let o = c.hosts[0].drbdadm(&["cstate", RESOURCE]);
            (String::from_utf8_lossy(&o.stdout).trim() == "Connected").then_some(())
        });
        let out = c.hosts[0].drbdadm(&["primary", "--force", RESOURCE]);
        assert!(
            out.status.success(),
            "initial drbdadm primary --force failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for h in &mut c.hosts {
            h.start_agent();
        }
        c
    }

    pub fn start_controller(&mut self, i: usize) {
        self.controllers.start(i);
    }

    /// SIGKILL controller `i` (0-based).
    pub fn kill_controller(&mut self, i: usize) {
        self.controllers.kill(i);
    }

    /// `understudyctl --output json status` against the running controllers.
    pub fn try_status(&self) -> Result<Value, String> {
        self.controllers.status()
    }

    /// Wait until the status satisfies `pred`; panics with the last status seen.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        self.controllers
            .wait_status(self.dir.path(), what, timeout, pred)
    }

    /// The leader's 0-based index, as reported by the status.
    pub fn leader_index(status: &Value) -> Option<usize> {
        status["cluster"]["leader_id"]
            .as_u64()
            .map(|id| id as usize - 1)
    }

    /// Keep the logs of a failed test: call at the start of a test and keep the guard.
    pub fn keep_logs_on_panic(&self) -> KeepLogs {
        KeepLogs(self.dir.path().to_path_buf())
    }
}

/// On a panic, copies the cluster's directory (configs and logs) to
/// `$UNDERSTUDY_TEST_LOGS` (default /tmp/understudy-failed-tests) for inspection.
pub struct KeepLogs(PathBuf);

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // For debugging by hand: keep everything running for a while.
            if let Some(secs) = std::env::var("UNDERSTUDY_PAUSE_ON_FAILURE")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                eprintln!("pausing {secs} s; cluster in {}", self.0.display());
                std::thread::sleep(std::time::Duration::from_secs(secs));
            }
            let copied = copy_logs(&self.0);
            match copied {
                Ok(dest) => eprintln!("cluster logs kept in {}", dest.display()),
                Err(e) => eprintln!(
                    "cluster logs NOT kept ({e}); they were in {}",
                    self.0.display()
                ),
            }
        }
    }
}

/// Copy a cluster's directory (configurations and logs) to
/// `$UNDERSTUDY_TEST_LOGS` (default /tmp/understudy-failed-tests); the copy's path.
pub fn copy_logs(dir: &Path) -> Result<PathBuf, String> {
    let dest = PathBuf::from(
        std::env::var("UNDERSTUDY_TEST_LOGS")
            .unwrap_or_else(|_| "/tmp/understudy-failed-tests".into()),
    )
    .join(dir.file_name().unwrap_or_default());
    dest.parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    // Sockets and FIFOs of the cluster are skipped (-r without -a copies
    // regular files and directories); a partial copy still keeps the logs, so
    // cp's own complaints are shown.
    let out = Command::new("cp")
        .arg("-r")
        .arg(dir)
        .arg(&dest)
        .output()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if dest.is_dir() {
        Ok(dest)
    } else {
        Err(format!(
            "cp -r {} {} failed: {}",
            dir.display(),
            dest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The history lines of `pair` in a status JSON (the latest 20), oldest first.
pub fn history_lines(status: &Value, pair_id: &str) -> Vec<String> {
    pair(status, pair_id)["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|l| l["event"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A server entry of a pair in a status JSON.
pub fn server<'a>(status: &'a Value, pair: &str, server: &str) -> &'a Value {
    status["pairs"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == pair))
        .and_then(|p| p["servers"].as_array())
        .and_then(|ss| ss.iter().find(|s| s["id"] == server))
        .unwrap_or(&Value::Null)
}

/// A pair entry in a status JSON.
pub fn pair<'a>(status: &'a Value, pair: &str) -> &'a Value {
    status["pairs"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == pair))
        .unwrap_or(&Value::Null)
}

/// Both servers connected, UpToDate, Connected, Established, nothing out of sync,
/// the file server Primary; and the pair `Healthy`.
pub fn pair_healthy(s: &Value) -> bool {
    let ok = |id: &str, role: &str| {
        let sv = server(s, "fs1", id);
        sv["connected"] == true
            && sv["drbd"]["role"] == role
            && sv["drbd"]["disk"] == "UpToDate"
            && sv["drbd"]["connection"] == "Connected"
            && sv["drbd"]["replication"] == "Established"
            && sv["drbd"]["peer_disk"] == "UpToDate"
            && sv["drbd"]["out_of_sync_bytes"] == 0
    };
    ok("fs1-a", "Primary") && ok("fs1-b", "Secondary") && pair(s, "fs1")["state"] == "Healthy"
}

/// A plain HTTP/1.1 GET: (status code, headers lowercased, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_lowercase(), body.to_string())
}
