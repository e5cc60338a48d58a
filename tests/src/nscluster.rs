//! A whole Understudy cluster with its servers in network namespaces (root only).
//!
//! Hosts `fsa` (the file server), `fsb` (its backup) and `client` are network
//! namespaces on a bridge ([`crate::netns::Net`]). Three controllers run in the root
//! namespace, listening on the bridge address, with the `local` cloud backend
//! (fencing = taking the client IP off the old primary, cutting its cable, killing
//! its processes). In each server namespace run a DRBD emulator daemon
//! (replicating over the hosts' real addresses) and an agent configured to serve:
//! bind-mount the replicated directory, export it with nfs-ganesha, claim the
//! client IP. The client reads and writes through the client IP with libnfs
//! (`nfs-cp`, `nfs-cat`).
//!
//! Everything is removed on drop, also when a test panics: processes killed,
//! bind mounts lazily unmounted, namespaces and bridge deleted.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::Net;
use crate::{
    bin, emulator_wrappers, free_port, pair, server, Controllers, KeepLogs, Proc, RESOURCE,
};

/// The pair's id in the namespace cluster.
pub const PAIR: &str = "fs1";
/// NFS port the servers export on.
pub const NFS_PORT: u16 = 2049;
/// The NFSv4 pseudo path of the export.
pub const PSEUDO: &str = "/export";

/// The hosts of the controllers when they run in namespaces of their own.
pub const CONTROLLER_HOSTS: [&str; 3] = ["c1", "c2", "c3"];

/// Install hint for the tools the namespace tests need.
pub const INSTALL: &str = "apt-get install -y iproute2 iptables arping nfs-ganesha nfs-ganesha-vfs libnfs-utils (or run ./scripts/install-deps.sh)";

/// One server host (namespace) of the pair.
pub struct NsHost {
    pub name: &'static str,
    pub server_id: String,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub export_dir: PathBuf,
    pub emu_config: PathBuf,
    pub agent_config: PathBuf,
    pub drbdadm: PathBuf,
    pub drbdsetup: PathBuf,
    pub emu: Option<Proc>,
    pub agent: Option<Proc>,
}

/// Knobs of a namespace cluster.
#[derive(Debug, Clone, Default)]
pub struct NsOptions {
    /// `[executor] step_pause_ms` of the controllers.
    pub step_pause_ms: u64,
    /// `[executor] result_pause_ms`: after a step's action, before its result.
    pub result_pause_ms: u64,
    /// `[detector] flap_holdoff_ms`; `None` keeps the default (10 minutes).
    pub flap_holdoff_ms: Option<u64>,
    /// The emulators' `[tuning] resync_rate_kib` (replication throttle).
    pub resync_rate_kib: Option<u64>,
    /// `[cloud] kill_processes = false`: the fence takes the client IP away and
    /// cuts the cable but its forced stop kills nothing (an EC2 isolate whose stop
    /// has not landed), so a frozen file server survives its failover.
    pub fence_keeps_processes: bool,
    /// Run each controller in a namespace of its own (hosts `c1`..`c3`), so the
    /// links between controllers can be cut while agents still reach all three.
    pub controllers_in_namespaces: bool,
    /// `[detector] primary_silence_ms`; `None` keeps the default.
    pub primary_silence_ms: Option<u64>,
    /// `[detector] peer_loss_ms`; `None` keeps the default.
    pub peer_loss_ms: Option<u64>,
    /// `[timing] agent_heartbeat_ms`; `None` keeps the default.
    pub agent_heartbeat_ms: Option<u64>,
    /// `[probe] after_silence_ms`; `None` keeps the default.
    pub probe_after_silence_ms: Option<u64>,
    /// `[probe] confirm_window_ms`; `None` keeps the default.
    pub confirm_window_ms: Option<u64>,
}

impl NsOptions {
    /// The controllers' `[detector]`, `[timing]` and `[probe]` sections for these options.
    fn sections(&self) -> String {
        let section = |name: &str, kv: &[(&str, Option<u64>)]| {
            let lines: String = kv
                .iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}\n")))
                .collect();
            if lines.is_empty() {
                String::new()
            } else {
                format!("[{name}]\n{lines}")
            }
        };
        [
            section(
                "detector",
                &[
                    ("flap_holdoff_ms", self.flap_holdoff_ms),
                    ("primary_silence_ms", self.primary_silence_ms),
                    ("peer_loss_ms", self.peer_loss_ms),
                ],
            ),
            section("timing", &[("agent_heartbeat_ms", self.agent_heartbeat_ms)]),
            section(
                "probe",
                &[
                    ("after_silence_ms", self.probe_after_silence_ms),
                    ("confirm_window_ms", self.confirm_window_ms),
                ],
            ),
        ]
        .concat()
    }
}

/// A name (`ip netns attach`) for the namespace this test runs in, which holds the
/// bridge: controllers in namespaces of their own reach the root side through it.
/// Deliberately outside the test network's prefix, so no cleanup ever kills the
/// processes of the namespace it names; removing it only removes the name.
pub struct RootNetnsName(pub String);

impl RootNetnsName {
    fn attach(prefix: &str) -> RootNetnsName {
        let name = format!("understudy-root-{}", prefix.trim_start_matches("us"));
        crate::netns::run(
            "ip",
            &["netns", "attach", &name, &std::process::id().to_string()],
        )
        .unwrap_or_else(|e| panic!("ip netns attach {name}: {e}"));
        RootNetnsName(name)
    }
}

impl Drop for RootNetnsName {
    fn drop(&mut self) {
        let _ = crate::netns::run("ip", &["netns", "del", &self.0]);
    }
}

/// See the module documentation.
pub struct NsCluster {
    pub dir: tempfile::TempDir,
    pub net: Net,
    pub client_ip: Ipv4Addr,
    pub controllers: Controllers,
    pub hosts: Vec<NsHost>,
    /// Set when the controllers run in namespaces of their own.
    pub root_netns: Option<RootNetnsName>,
}

fn check_tools() {
    for tool in [
        "ganesha.nfsd",
        "nfs-cat",
        "nfs-cp",
        "nfs-ls",
        "arping",
        "iptables",
        "ip",
    ] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(found, "{tool} not found: {INSTALL}");
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "namespace tests need root");
}

impl NsCluster {
    /// Build the network, start 3 controllers, both emulators (initial sync from
    /// fsa) and both agents, and wait until fsa serves NFS on the client IP and the
    /// pair is Healthy.
    pub fn start() -> NsCluster {
        Self::start_with(NsOptions::default())
    }

    /// [`NsCluster::start`] with options.
    pub fn start_with(opts: NsOptions) -> NsCluster {
        check_tools();
        let mut host_names = vec!["fsa", "fsb", "client"];
        if opts.controllers_in_namespaces {
            host_names.extend(CONTROLLER_HOSTS);
        }
        let net = Net::new(&host_names).unwrap_or_else(|e| panic!("{e}"));
        let root_netns = opts
            .controllers_in_namespaces
            .then(|| RootNetnsName::attach(net.prefix()));
        let dir = tempfile::Builder::new()
            .prefix("understudy-ns-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        let client_ip = net.free_addr(0);
        let bridge = net.bridge_addr();
        let addrs: Vec<String> = (0..3)
            .map(|i| {
                if opts.controllers_in_namespaces {
                    format!("{}:7100", net.addr(CONTROLLER_HOSTS[i]))
                } else {
                    format!("{bridge}:{}", free_port())
                }
            })
            .collect();
        let members = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let names = ["fsa", "fsb"];
        let sid = |h: &str| format!("{PAIR}-{h}");
        let server_toml = |h: &str| {
            format!(
                "{{ id = \"{}\", address = \"{}\", zone = \"zone-a\", instance_id = \"{}\", interface_id = \"{}:eth0\" }}",
                sid(h),
                net.addr(h),
                net.ns_name(h),
                net.ns_name(h)
            )
        };
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

[executor]
step_pause_ms = {pause}
result_pause_ms = {rpause}
{sections}
[cloud]
kind = "local"
netns_prefix = "{prefix}"
prefix_len = 24
{root_netns}
kill_processes = {kill}

[[pairs]]
id = "{PAIR}"
resource = "{RESOURCE}"
client_ip = "{client_ip}"
client_ip_prefix_len = 24
zone = "zone-a"
nfs_port = {NFS_PORT}
export_path = "{PSEUDO}"
primary = {p}
backup = {b}
"#,
                    id = i + 1,
                    data = root.join(format!("controller-{}", i + 1)).display(),
                    prefix = net.prefix(),
                    root_netns = root_netns
                        .as_ref()
                        .map(|r| format!("root_netns = \"{}\"\n", r.0))
                        .unwrap_or_default(),
                    pause = opts.step_pause_ms,
                    rpause = opts.result_pause_ms,
                    kill = !opts.fence_keeps_processes,
                    sections = opts.sections(),
                    p = server_toml("fsa"),
                    b = server_toml("fsb"),
                ),
            )
            .expect("write controller config");
            configs.push(path);
        }
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let hdir = root.join(name);
            let data_dir = hdir.join("data");
            let export_dir = hdir.join("export");
            fs::create_dir_all(&data_dir).expect("data dir");
            fs::create_dir_all(&export_dir).expect("export dir");
            let peer = names[1 - i];
            let emu_config = hdir.join("drbd-emu.toml");
            fs::write(
                &emu_config,
                format!(
                    r#"resource = "{RESOURCE}"
hostname = "{}"
node_id = {i}
minor = 1000
state_dir = "{}"
data_dir = "{}"
listen = "{}:7789"

[net]
fencing = "resource-and-stonith"

[handlers]
fence_peer = "{} --config {} --timeout-secs 30"

[peer]
hostname = "{}"
node_id = {}
address = "{}:7789"
{}"#,
                    sid(name),
                    hdir.join("drbd-state").display(),
                    data_dir.display(),
                    net.addr(name),
                    bin("understudy-fence-peer").display(),
                    hdir.join("agent.toml").display(),
                    sid(peer),
                    1 - i,
                    net.addr(peer),
                    opts.resync_rate_kib
                        .map(|r| format!("\n[tuning]\nresync_rate_kib = {r}\n"))
                        .unwrap_or_default(),
                ),
            )
            .expect("emulator config");
            let (drbdsetup, drbdadm) = emulator_wrappers(&hdir, &emu_config);
            let agent_config = hdir.join("agent.toml");
            fs::write(
                &agent_config,
                agent_toml(&AgentTomlArgs {
                    server_id: &sid(name),
                    role: if i == 0 { "primary" } else { "backup" },
                    controllers: &addrs,
                    state_dir: &hdir.join("agent-state"),
                    drbdsetup: &drbdsetup,
                    drbdadm: &drbdadm,
                    data_dir: &data_dir,
                    export_dir: &export_dir,
                    ganesha_dir: &hdir.join("ganesha"),
                    client_ip,
                }),
            )
            .expect("agent config");
            hosts.push(NsHost {
                name,
                server_id: sid(name),
                dir: hdir,
                data_dir,
                export_dir,
                emu_config,
                agent_config,
                drbdadm,
                drbdsetup,
                emu: None,
                agent: None,
            });
        }
        let mut controllers = Controllers::new(addrs, configs);
        if opts.controllers_in_namespaces {
            for (i, h) in CONTROLLER_HOSTS.iter().enumerate() {
                controllers.netns[i] = Some(net.ns_name(h));
            }
        }
        let mut c = NsCluster {
            dir,
            net,
            client_ip,
            controllers,
            hosts,
            root_netns,
        };
        for i in 0..3 {
            c.start_controller(i);
        }
        for i in 0..2 {
            c.start_emulator(i);
        }
        // As an operator creates a resource: both sides up and connected, then
        // the file server forced Primary to start the initial sync.
        crate::wait_for("fsa and fsb connected", Duration::from_secs(20), || {
            let o = c.drbdadm(0, &["cstate", RESOURCE]);
            (String::from_utf8_lossy(&o.stdout).trim() == "Connected").then_some(())
        });
        let out = c.drbdadm(0, &["primary", "--force", RESOURCE]);
        assert!(
            out.status.success(),
            "drbdadm primary --force: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..2 {
            c.start_agent(i);
        }
        c.wait_status(
            "fsa serving and pair Healthy",
            Duration::from_secs(60),
            |s| pair(s, PAIR)["state"] == "Healthy" && serving_ok(s, &format!("{PAIR}-fsa")),
        );
        c
    }

    pub fn start_controller(&mut self, i: usize) {
        self.controllers.start(i);
    }

    pub fn kill_controller(&mut self, i: usize) {
        self.controllers.kill(i);
    }

    pub fn start_emulator(&mut self, i: usize) {
        let h = &self.hosts[i];
        let mut cmd = self
            .net
            .cmd(h.name, bin("drbd-emu").to_str().expect("utf8 path"));
        cmd.arg("daemon").arg("--config").arg(&h.emu_config);
        let p = Proc::spawn(
            &format!("drbd-emu {}", h.name),
            &mut cmd,
            &h.dir.join("emu.log"),
        );
        self.hosts[i].emu = Some(p);
        let setup = self.hosts[i].drbdsetup.clone();
        crate::wait_for("emulator answers", Duration::from_secs(10), || {
            Command::new(&setup)
                .args(["status", RESOURCE])
                .output()
                .ok()
                .filter(|o| o.status.success())
        });
    }

    pub fn start_agent(&mut self, i: usize) {
        let h = &self.hosts[i];
        let mut cmd = self
            .net
            .cmd(h.name, bin("understudy-agent").to_str().expect("utf8 path"));
        cmd.arg("--config")
            .arg(&h.agent_config)
            .env("RUST_LOG", "info");
        let p = Proc::spawn(
            &format!("agent {}", h.name),
            &mut cmd,
            &h.dir.join("agent.log"),
        );
        self.hosts[i].agent = Some(p);
    }

    /// Run the emulator's `drbdadm` of host `i`.
    pub fn drbdadm(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.hosts[i].drbdadm)
            .args(args)
            .output()
            .expect("drbdadm")
    }

    /// Bring a dead host back (cable, emulator, agent): it rejoins as a Secondary
    /// and resynchronises from the serving host.
    pub fn revive_host(&mut self, i: usize) {
        self.net.heal(self.hosts[i].name);
        self.start_emulator(i);
        self.start_agent(i);
    }

    /// The file server dies: every process in its namespace SIGKILLed (agent,
    /// ganesha, emulator) and its cable cut.
    pub fn kill_host(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if let Some(p) = h.agent.take() {
            p.kill();
        }
        if let Some(p) = h.emu.take() {
            p.kill();
        }
        crate::netns::kill_netns_pids(&self.net.ns_name(h.name));
        self.net.cut(h.name);
    }

    /// Freeze host `i`: SIGSTOP every process in its namespace (agent, DRBD
    /// emulator, ganesha and their children), as a hung VM. Its cable stays in.
    /// Short-lived `ip` commands are left alone: the harness (and a test's
    /// sampling thread) runs `ip -n NS ...`, which is in the namespace while it runs.
    pub fn freeze_host(&self, i: usize) {
        self.signal_host(i, libc::SIGSTOP);
    }

    /// Undo [`NsCluster::freeze_host`]: SIGCONT every process in the namespace.
    pub fn thaw_host(&self, i: usize) {
        self.signal_host(i, libc::SIGCONT);
    }

    fn signal_host(&self, i: usize, sig: i32) {
        let ns = self.net.ns_name(self.hosts[i].name);
        let pids = crate::netns::run("ip", &["netns", "pids", &ns])
            .unwrap_or_else(|e| panic!("listing the processes of {ns}: {e}"));
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() != "ip")
            })
            .collect();
        assert!(!pids.is_empty(), "no process in {ns} to signal");
        for pid in pids {
            // SAFETY: plain kill(2); a pid that exited meanwhile gives ESRCH, ignored.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Whether host `i`'s cable is in (the root side of its veth is up).
    pub fn link_up(&self, i: usize) -> bool {
        link_up(&self.net.root_veth(self.hosts[i].name))
    }

    /// `understudyctl --output json status`.
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

    /// Wait until both servers have reported nothing out of sync, the pair
    /// Healthy, for `quiet` without a break. The emulator replicates
    /// asynchronously and ganesha rewrites its recovery records (in the replicated
    /// directory) when an idle client's lease expires, so this is how a test makes
    /// sure every acknowledged write is on the backup before it kills the primary;
    /// otherwise S1 (rightly) refuses the promotion.
    pub fn wait_replicated(&self, quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut since: Option<Instant> = None;
        loop {
            let ok = self.try_status().is_ok_and(|s| {
                let a = &server(&s, PAIR, &format!("{PAIR}-fsa"))["drbd"];
                let b = &server(&s, PAIR, &format!("{PAIR}-fsb"))["drbd"];
                a["out_of_sync_bytes"] == 0
                    && b["out_of_sync_bytes"] == 0
                    && a["replication"] == "Established"
                    && pair(&s, PAIR)["state"] == "Healthy"
            });
            match (ok, since) {
                (true, Some(t)) if t.elapsed() >= quiet => return,
                (true, None) => since = Some(Instant::now()),
                (false, _) => since = None,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "not replicated and quiet for {quiet:?} within {timeout:?}; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The NFS URL of `path` (relative to the export) through the client IP.
    pub fn url(&self, path: &str) -> String {
        format!(
            "nfs://{}{PSEUDO}/{path}?version=4&nfsport={NFS_PORT}",
            self.client_ip
        )
    }

    /// Write `data` to `path` through NFS from the client namespace (`nfs-cp`),
    /// retrying for up to 10 s while the server is in its grace period (as an NFS
    /// client does on NFS4ERR_GRACE).
    /// nfs-cp refuses to overwrite, so the grace period is waited out with probe
    /// files of unique names before the real write.
    pub fn nfs_write(&self, path: &str, data: &[u8]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0.. {
            match self.nfs_write_once(&format!(".probe-{i}"), b"probe") {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("server not writable: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        self.nfs_write_once(path, data)
    }

    /// One `nfs-cp` attempt.
    pub fn nfs_write_once(&self, path: &str, data: &[u8]) -> Result<(), String> {
        let local = self
            .dir
            .path()
            .join(format!("upload-{}", path.replace('/', "_")));
        fs::write(&local, data).map_err(|e| e.to_string())?;
        let out = self
            .net
            .cmd("client", "nfs-cp")
            .arg(&local)
            .arg(self.url(path))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Read `path` through NFS from the client namespace (`nfs-cat`).
    pub fn nfs_read(&self, path: &str) -> Result<Vec<u8>, String> {
        let out = self
            .net
            .cmd("client", "nfs-cat")
            .arg(self.url(path))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "nfs-cat {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Which hosts have the client IP configured now.
    pub fn ip_holders(&self) -> Vec<&'static str> {
        ip_holders_in(&self.host_namespaces(), self.client_ip)
    }

    /// Which hosts run an NFS server now (a ganesha process in their namespace).
    pub fn exporting_hosts(&self) -> Vec<&'static str> {
        exporters_in(&self.host_namespaces())
    }

    /// (namespace, host) of every server host, for samplers in other threads.
    pub fn host_namespaces(&self) -> Vec<(String, &'static str)> {
        self.hosts
            .iter()
            .map(|h| (self.net.ns_name(h.name), h.name))
            .collect()
    }

    /// Cut the links between controller `i` and the other two (both ways), while
    /// every agent still reaches all three. Needs `controllers_in_namespaces`.
    pub fn partition_controller(&self, i: usize) {
        assert!(
            self.root_netns.is_some(),
            "partition_controller needs NsOptions::controllers_in_namespaces"
        );
        for j in (0..3).filter(|j| *j != i) {
            self.net
                .block(CONTROLLER_HOSTS[i], self.net.addr(CONTROLLER_HOSTS[j]));
        }
    }

    /// Undo [`NsCluster::partition_controller`].
    pub fn heal_controller(&self, i: usize) {
        for j in (0..3).filter(|j| *j != i) {
            self.net
                .unblock(CONTROLLER_HOSTS[i], self.net.addr(CONTROLLER_HOSTS[j]));
        }
    }

    pub fn keep_logs_on_panic(&self) -> KeepLogs {
        KeepLogs(self.dir.path().to_path_buf())
    }
}

impl Drop for NsCluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.agent.take();
            h.emu.take();
            crate::netns::kill_netns_pids(&self.net.ns_name(h.name));
        }
        for h in &self.hosts {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&h.export_dir)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Whether the root-namespace link `veth` is administratively up.
pub fn link_up(veth: &str) -> bool {
    crate::netns::run("ip", &["-o", "link", "show", "dev", veth])
        .map(|o| {
            o.split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
        })
        .unwrap_or(false)
}

/// Which of these (namespace, host) have `client_ip` configured now.
pub fn ip_holders_in(hosts: &[(String, &'static str)], client_ip: Ipv4Addr) -> Vec<&'static str> {
    let needle = format!(" {client_ip}/");
    hosts
        .iter()
        .filter(|(ns, _)| {
            Command::new("ip")
                .args(["-n", ns, "-o", "addr", "show"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&needle))
                .unwrap_or(false)
        })
        .map(|(_, h)| *h)
        .collect()
}

/// Which of these (namespace, host) run an NFS server now (a ganesha process).
pub fn exporters_in(hosts: &[(String, &'static str)]) -> Vec<&'static str> {
    hosts
        .iter()
        .filter(|(ns, _)| {
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            pids.split_whitespace().any(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().starts_with("ganesha"))
                    .unwrap_or(false)
            })
        })
        .map(|(_, h)| *h)
        .collect()
}

/// Whether `server` reports mounted, exporting and holding the client IP.
pub fn serving_ok(s: &Value, server_id: &str) -> bool {
    let h = &server(s, PAIR, server_id)["host"];
    h["mounted"] == true
        && h["client_ip_present"] == true
        && h["exports"].as_array().is_some_and(|e| !e.is_empty())
}

struct AgentTomlArgs<'a> {
    server_id: &'a str,
    role: &'a str,
    controllers: &'a [String],
    state_dir: &'a Path,
    drbdsetup: &'a Path,
    drbdadm: &'a Path,
    data_dir: &'a Path,
    export_dir: &'a Path,
    ganesha_dir: &'a Path,
    client_ip: Ipv4Addr,
}

fn agent_toml(a: &AgentTomlArgs) -> String {
    format!(
        r#"server_id = "{server_id}"
pair_id = "{PAIR}"
role = "{role}"
controllers = [{ctl}]
state_dir = "{state}"

[drbd]
resource = "{RESOURCE}"
drbdsetup = "{setup}"
drbdadm = "{adm}"

[serving.mount]
mode = "bind"
source_dir = "{data}"
mountpoint = "{export}"

[serving.nfs]
backend = "ganesha"
state_dir = "{ganesha}"
bind_addr = "0.0.0.0"
port = {NFS_PORT}
server_scope = "{PAIR}"
lease_lifetime_secs = 3
grace_period_secs = 3

[serving.export]
path = "{export}"
pseudo = "{PSEUDO}"

[serving.client_ip]
address = "{ip}"
prefix_len = 24
interface = "eth0"
"#,
        server_id = a.server_id,
        role = a.role,
        ctl = a
            .controllers
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
        state = a.state_dir.display(),
        setup = a.drbdsetup.display(),
        adm = a.drbdadm.display(),
        data = a.data_dir.display(),
        export = a.export_dir.display(),
        ganesha = a.ganesha_dir.display(),
        ip = a.client_ip,
    )
}
