//! A whole Understudy cluster with its servers in network namespaces (root only).
//!
//! Hosts `fsa` (the file server), `fsb` (its backup) and `client` are network
//! namespaces on a bridge ([`crate::netns::Net`]). Three controllers run in the root
//! namespace, listening on the bridge address, with the `local` cloud backend
//! (fencing = taking the client IP off the old primary, cutting its cable, killing
//! its processes). In each server namespace run a DRBD emulator daemon
//! (replicating over the hosts' real addresses, in a private mount namespace of
//! its own) and an agent configured to serve: mount the replicated file system,
//! export it with nfs-ganesha, claim the client IP. The client reads and writes
//! through the client IP with libnfs (`nfs-cp`, `nfs-cat`); [`Writer`] is a
//! client writing back to back, recording which writes were acknowledged.
//!
//! By default ([`NsOptions::block_device`]) the emulators run in block mode:
//! a 64 MiB device (a loop device on the emulator's FUSE-served device file),
//! protocol C, ext4 made by the harness after the initial sync and mounted by the
//! agents with the `device` mount mode. [`NsOptions::directory`]: the emulator
//! replicates a directory (asynchronously) that the agents bind-mount.
//!
//! Every link runs over mutual TLS with certificates from a CA in the cluster's
//! directory ([`crate::Pki`]); [`NsOptions::insecure`] runs plain text.
//!
//! Everything is removed on drop, also when a test panics: processes killed,
//! mounts gone with their mount namespaces (bind mounts lazily unmounted), the
//! cluster's loop devices detached (and those of a crashed run at the next
//! start), namespaces and bridge deleted.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::Net;
use crate::{
    bin, emulator_wrappers, free_port, pair, server, Controllers, Creds, KeepLogs, Pki, Proc,
    INSECURE_SECTION, RESOURCE,
};
use understudy_controller::auth::Role;

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

/// Device size of the emulators in block mode.
pub const BLOCK_SIZE_MIB: u64 = 64;

/// Install hint for the block mode's tools.
pub const BLOCK_INSTALL: &str = "apt-get install -y util-linux e2fsprogs fuse3 (or run ./scripts/install-deps.sh); /dev/fuse must exist";

/// Where block-mode clusters register the temp dir whose loop devices they own
/// (one file per cluster, `flock`ed while the cluster lives).
const BLOCK_REGISTRY: &str = "/run/understudy-ns-block";

/// One server host (namespace) of the pair.
pub struct NsHost {
    pub name: &'static str,
    pub server_id: String,
    pub dir: PathBuf,
    /// Directory mode: the replicated directory.
    pub data_dir: PathBuf,
    pub export_dir: PathBuf,
    /// Block mode: the emulator's backing file (the "disk" under DRBD).
    pub backing_file: PathBuf,
    /// Block mode: symlink to the emulator's loop device (the `/dev/drbd1000` stand-in).
    pub device_link: PathBuf,
    pub emu_config: PathBuf,
    pub agent_config: PathBuf,
    pub drbdadm: PathBuf,
    pub drbdsetup: PathBuf,
    pub emu: Option<Proc>,
    pub agent: Option<Proc>,
    /// [`NsOptions::backup_disk_mib`]: the size-limited file system holding
    /// this host's backing file (fsb only).
    pub disk_fs: Option<DiskFs>,
}

/// A size-limited file system (a tmpfs) the harness mounts for a host's
/// backing file, as a thin-provisioned disk (DRBD's backing storage) on a
/// pool that can run full. [`DiskFs::fill`] fills it with a ballast file,
/// [`DiskFs::free`] removes it. Lazily unmounted on drop (also when the
/// cluster's start or a test panics); the emulator, in a private mount
/// namespace copied from the root one, keeps its own reference until it exits.
pub struct DiskFs {
    pub mount_point: PathBuf,
}

impl DiskFs {
    fn mount(at: &Path, size_mib: u64, tag: &str) -> DiskFs {
        fs::create_dir_all(at).expect("disk fs mount point");
        crate::netns::run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0700"),
                &format!("understudy-disk-{tag}"),
                &at.display().to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("mount a {size_mib} MiB tmpfs on {}: {e}", at.display()));
        DiskFs {
            mount_point: at.to_path_buf(),
        }
    }

    fn ballast(&self) -> PathBuf {
        self.mount_point.join("ballast")
    }

    /// Bytes free on the file system.
    pub fn free_bytes(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.mount_point.as_os_str().as_bytes())
            .expect("mount point path");
        // SAFETY: statvfs writes into the zeroed struct; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(
            rc,
            0,
            "statvfs {}: {}",
            self.mount_point.display(),
            std::io::Error::last_os_error()
        );
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Fill the file system: a ballast file as large as the free space
    /// (`fallocate`), then appended to until the file system answers ENOSPC.
    /// Returns the ballast's size.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let path = self.ballast();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let free = self.free_bytes();
        if free > 0 {
            let len = f.metadata().expect("ballast metadata").len() + free;
            // SAFETY: fallocate(2) on an open file descriptor; no pointers.
            let rc = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    0,
                    len as libc::off_t,
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "fallocate {}: {e}",
                    path.display()
                );
            }
        }
        let chunk = vec![0x5Au8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        f.metadata().expect("ballast metadata").len()
    }

    /// Remove the ballast: the space is free again.
    pub fn free(&self) {
        match fs::remove_file(self.ballast()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", self.ballast().display()),
        }
    }
}

impl Drop for DiskFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Knobs of a namespace cluster.
#[derive(Debug, Clone)]
pub struct NsOptions {
    /// `[executor] step_pause_ms` of the controllers.
    pub step_pause_ms: u64,
    /// The controllers log JSON lines (`--log-format json`).
    pub json_logs: bool,
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
    /// Run the DRBD emulators in block mode (`[device] mode = "block"`,
    /// [`BLOCK_SIZE_MIB`] MiB, protocol C): each host's "DRBD device" is a loop
    /// device on the emulator's FUSE-served device file, the harness makes an ext4
    /// file system on fsa's device after the initial sync, and the agents mount it
    /// with the `device` mount mode. Without it: directory mode (the emulator
    /// replicates a directory, asynchronously, which the agents bind-mount).
    /// The default: `true`; `false` for tests that write into the replicated
    /// directory themselves.
    pub block_device: bool,
    /// Spares (`[spare]` and the local cloud's `[cloud.launch]`): fsa's and
    /// fsb's disks are local-cloud volumes, and `RunInstances` boots a new host
    /// on the bridge running [`NsCluster::boot_script`]. Block mode only.
    pub spares: Option<SpareOptions>,
    /// Plain text everywhere (`[tls] insecure = true`, `understudyctl
    /// --insecure`) instead of mutual TLS.
    pub insecure: bool,
    /// The keys of the controllers' `[signals]` section as TOML lines
    /// (`"poll_ms = 300\nauto_switchover = true"`); `None`: no section (the
    /// defaults). Scheduled events are injected through [`NsCluster::cloud`].
    pub signals: Option<String>,
    /// `[cloud] kind = "ec2"` instead of the local cloud: a `moto_server` on
    /// loopback behind a fault proxy, the world created in it, and a VPC fabric
    /// applying moto's state to the namespaces ([`crate::ec2`]). No spares.
    pub ec2: bool,
    /// Block mode: fsb's backing file on a tmpfs of this many MiB the harness
    /// mounts (`NsHost::disk_fs`), so that its disk can really run full
    /// ([`NsCluster::fill_disk`]). The emulator's initial sync keeps the
    /// sparse backing file thin (zero runs are discarded), so only what the
    /// file system writes takes space. Not with spares.
    pub backup_disk_mib: Option<u64>,
}

/// Knobs of the spares of a namespace cluster.
#[derive(Debug, Clone)]
pub struct SpareOptions {
    /// The launch time of a spare (`[cloud.launch] boot_delay_ms`).
    pub boot_delay_ms: u64,
    /// `[spare] keep_ms`: a false alarm's spare is terminated this long after Healthy.
    pub keep_ms: u64,
    /// The launch template's zone (the pair is in `zone-a`).
    pub template_zone: String,
    /// `[spare] reattach`.
    pub reattach: bool,
}

impl Default for SpareOptions {
    fn default() -> Self {
        SpareOptions {
            boot_delay_ms: 1000,
            keep_ms: 600_000,
            template_zone: "zone-a".into(),
            reattach: true,
        }
    }
}

impl Default for NsOptions {
    fn default() -> Self {
        NsOptions {
            step_pause_ms: 0,
            json_logs: false,
            result_pause_ms: 0,
            flap_holdoff_ms: None,
            resync_rate_kib: None,
            fence_keeps_processes: false,
            controllers_in_namespaces: false,
            primary_silence_ms: None,
            peer_loss_ms: None,
            agent_heartbeat_ms: None,
            probe_after_silence_ms: None,
            confirm_window_ms: None,
            block_device: true,
            spares: None,
            insecure: false,
            signals: None,
            ec2: false,
            backup_disk_mib: None,
        }
    }
}

impl NsOptions {
    /// The directory mode: the emulator replicates a directory (asynchronously)
    /// that the agents bind-mount; tests that write into it or inspect it use this.
    pub fn directory() -> Self {
        NsOptions {
            block_device: false,
            ..NsOptions::default()
        }
    }
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
            self.spares
                .as_ref()
                .map(|s| {
                    format!(
                        "[spare]\nkeep_ms = {}\nboot_timeout_ms = 60000\nvolume_timeout_ms = 30000\nreattach = {}\n",
                        s.keep_ms, s.reattach
                    )
                })
                .unwrap_or_default(),
            self.signals
                .as_ref()
                .map(|s| format!("[signals]\n{s}\n"))
                .unwrap_or_default(),
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
    /// Each controller's `[http] listen` address (API, metrics, dashboard).
    pub http: Vec<String>,
    pub hosts: Vec<NsHost>,
    /// Set when the controllers run in namespaces of their own.
    pub root_netns: Option<RootNetnsName>,
    /// [`NsOptions::block_device`].
    pub block_device: bool,
    /// Block mode: the registration (held `flock`) of this cluster's temp dir,
    /// whose loop devices a later run detaches if this process dies uncleanly.
    block_registration: Option<(PathBuf, fs::File)>,
    /// With spares: the local cloud (the same registry the controllers use).
    pub cloud: Option<understudy_cloud::local::LocalCloud>,
    /// The CA and certificates (`None`: [`NsOptions::insecure`]).
    pub pki: Option<Pki>,
    /// [`NsOptions::ec2`]: moto, the fault proxy, the world, the VPC fabric.
    pub ec2: Option<crate::ec2::Ec2Harness>,
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
        "timeout",
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
        if opts.block_device {
            check_block_tools();
        }
        let mut host_names = vec!["fsa", "fsb", "client"];
        if opts.controllers_in_namespaces {
            host_names.extend(CONTROLLER_HOSTS);
        }
        let net = Net::new(&host_names).unwrap_or_else(|e| panic!("{e}"));
        if opts.block_device {
            cleanup_stale_block();
        }
        let root_netns = opts
            .controllers_in_namespaces
            .then(|| RootNetnsName::attach(net.prefix()));
        let dir = tempfile::Builder::new()
            .prefix("understudy-ns-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        let pki = (!opts.insecure).then(|| Pki::new(&root.join("pki")));
        let client_ip = net.free_addr(0);
        let bridge = net.bridge_addr();
        assert!(
            opts.spares.is_none() || opts.block_device,
            "spares need block mode (volumes hold the emulator's disk)"
        );
        assert!(
            !(opts.ec2 && opts.spares.is_some()),
            "spares need the local cloud"
        );
        // The proxy and moto listen on 127.0.0.1 of this namespace: controllers
        // in namespaces of their own would not reach them.
        assert!(
            !(opts.ec2 && opts.controllers_in_namespaces),
            "the EC2 backend needs the controllers in the root namespace (the proxy is on 127.0.0.1)"
        );
        // EC2: moto, the proxy, the world (an instance per server with the
        // host's address, the client IP on fsa's interface) and the fabric.
        let ec2 = opts.ec2.then(|| {
            let hosts: Vec<(&'static str, String, String, Ipv4Addr)> = ["fsa", "fsb"]
                .into_iter()
                .map(|h| (h, net.ns_name(h), net.root_veth(h), net.addr(h)))
                .collect();
            let o = bridge.octets();
            crate::ec2::Ec2Harness::start(
                &hosts,
                &format!("{}.{}.{}.0/24", o[0], o[1], o[2]),
                client_ip,
                &root.join("fabric.log"),
            )
        });
        let zone = if ec2.is_some() {
            crate::ec2::ZONE
        } else {
            "zone-a"
        };
        // With spares, fsa's and fsb's disks are volumes of the local cloud
        // (created and attached through it, as an operator's provisioning would),
        // so a reattach can move fsa's to a spare.
        let cloud = opts.spares.as_ref().map(|sp| {
            let mut c = understudy_cloud::local::LocalConfig::new(net.prefix(), 24);
            c.root_netns = root_netns.as_ref().map(|r| r.0.clone());
            c.launch = Some(understudy_cloud::local::LocalLaunchConfig {
                state_dir: root.join("cloud"),
                zone: sp.template_zone.clone(),
                bridge: net.bridge_name(),
                gateway: bridge,
                addresses: (20..30).map(|k| net.free_addr(k)).collect(),
                boot_command: root.join("boot.sh").display().to_string(),
                boot_delay_ms: sp.boot_delay_ms,
                mib_per_gib: BLOCK_SIZE_MIB,
            });
            understudy_cloud::local::LocalCloud::new(c)
        });
        let mut volumes: std::collections::HashMap<&str, (String, PathBuf)> =
            std::collections::HashMap::new();
        if let Some(c) = &cloud {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            for name in ["fsa", "fsb"] {
                let ns = net.ns_name(name);
                let (vol, dev) = rt
                    .block_on(async {
                        use understudy_cloud::provision::{tag_list, tags};
                        use understudy_cloud::Cloud;
                        let sid = format!("{PAIR}-{name}");
                        c.register_instance(&ns, &net.addr(name).to_string(), "zone-a", vec![])
                            .await?;
                        let v = c
                            .create_volume(&understudy_cloud::VolumeRequest {
                                client_token: format!("{}-{name}-disk", net.prefix()),
                                zone: "zone-a".into(),
                                size_gib: 1,
                                tags: tag_list(&[(tags::PAIR, PAIR), (tags::SERVER_ID, &sid)]),
                            })
                            .await?;
                        c.attach_volume(&v.volume_id, &ns, "xvdf").await?;
                        let dev = c
                            .instance_dir(&ns)
                            .expect("launch")
                            .join("dev")
                            .join("xvdf");
                        Ok::<_, understudy_cloud::CloudError>((v.volume_id, dev))
                    })
                    .unwrap_or_else(|e| panic!("local cloud volume for {name}: {e}"));
                fs::create_dir_all(dev.join("md")).expect("volume md dir");
                volumes.insert(name, (vol, dev));
            }
        }
        let addrs: Vec<String> = (0..3)
            .map(|i| {
                if opts.controllers_in_namespaces {
                    format!("{}:7100", net.addr(CONTROLLER_HOSTS[i]))
                } else {
                    format!("{bridge}:{}", free_port())
                }
            })
            .collect();
        let http: Vec<String> = (0..3)
            .map(|i| {
                if opts.controllers_in_namespaces {
                    format!("{}:7180", net.addr(CONTROLLER_HOSTS[i]))
                } else {
                    format!("{bridge}:{}", free_port())
                }
            })
            .collect();
        let members = addrs
            .iter()
            .zip(&http)
            .enumerate()
            .map(|(i, (a, h))| format!("{{ id = {}, addr = \"{a}\", http = \"{h}\" }}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let names = ["fsa", "fsb"];
        let sid = |h: &str| format!("{PAIR}-{h}");
        let server_toml = |h: &str| {
            format!(
                "{{ id = \"{}\", address = \"{}\", zone = \"{zone}\", instance_id = \"{}\", interface_id = \"{}\"{} }}",
                sid(h),
                net.addr(h),
                ec2.as_ref()
                    .map_or(net.ns_name(h), |e| e.host(h).instance_id.clone()),
                ec2.as_ref()
                    .map_or(format!("{}:eth0", net.ns_name(h)), |e| e.host(h).eni_id.clone()),
                volumes
                    .get(h)
                    .map(|(v, _)| format!(", volumes = [\"{v}\"]"))
                    .unwrap_or_default()
            )
        };
        let launch_section = cloud
            .as_ref()
            .and_then(|c| c.config().launch.as_ref())
            .map(|l| {
                format!(
                    "\n[cloud.launch]\nstate_dir = \"{}\"\nzone = \"{}\"\nbridge = \"{}\"\ngateway = \"{}\"\naddresses = [{}]\nboot_command = \"{}\"\nboot_delay_ms = {}\nmib_per_gib = {}\n",
                    l.state_dir.display(),
                    l.zone,
                    l.bridge,
                    l.gateway,
                    l.addresses
                        .iter()
                        .map(|a| format!("\"{a}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    l.boot_command,
                    l.boot_delay_ms,
                    l.mib_per_gib
                )
            })
            .unwrap_or_default();
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

[executor]
step_pause_ms = {pause}
result_pause_ms = {rpause}
{sections}
[cloud]
{cloud_section}
[[pairs]]
id = "{PAIR}"
resource = "{RESOURCE}"
client_ip = "{client_ip}"
client_ip_prefix_len = 24
zone = "{zone}"
nfs_port = {NFS_PORT}
export_path = "{PSEUDO}"
primary = {p}
backup = {b}
{tls}"#,
                    tls = match &pki {
                        Some(p) => p.section(&p.controller(i as u64 + 1, addr)),
                        None => INSECURE_SECTION.into(),
                    },
                    cloud_section = match &ec2 {
                        Some(e) => e.cloud_section(),
                        None => format!(
                            "kind = \"local\"\nnetns_prefix = \"{prefix}\"\nprefix_len = 24\n{root_netns}\nkill_processes = {kill}\n{launch_section}",
                            prefix = net.prefix(),
                            root_netns = root_netns
                                .as_ref()
                                .map(|r| format!("root_netns = \"{}\"\n", r.0))
                                .unwrap_or_default(),
                            kill = !opts.fence_keeps_processes,
                        ),
                    },
                    id = i + 1,
                    http_listen = http[i],
                    data = root.join(format!("controller-{}", i + 1)).display(),
                    pause = opts.step_pause_ms,
                    rpause = opts.result_pause_ms,
                    sections = opts.sections(),
                    p = server_toml("fsa"),
                    b = server_toml("fsb"),
                ),
            )
            .expect("write controller config");
            configs.push(path);
        }
        assert!(
            opts.backup_disk_mib.is_none() || (opts.block_device && opts.spares.is_none()),
            "backup_disk_mib needs block mode without spares"
        );
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let hdir = root.join(name);
            let data_dir = hdir.join("data");
            let export_dir = hdir.join("export");
            fs::create_dir_all(&data_dir).expect("data dir");
            fs::create_dir_all(&export_dir).expect("export dir");
            let peer = names[1 - i];
            let emu_config = hdir.join("drbd-emu.toml");
            let disk_fs = match opts.backup_disk_mib {
                Some(mib) if i == 1 => Some(DiskFs::mount(
                    &hdir.join("disk-fs"),
                    mib,
                    &format!("{}-{name}", net.prefix()),
                )),
                _ => None,
            };
            let backing_file = match (volumes.get(name), &disk_fs) {
                (Some((_, dev)), _) => dev.join("disk.img"),
                (None, Some(d)) => d.mount_point.join("disk.img"),
                (None, None) => hdir.join("disk.img"),
            };
            let device_link = hdir.join("drbd1000");
            fs::write(
                &emu_config,
                format!(
                    r#"resource = "{RESOURCE}"
hostname = "{}"
node_id = {i}
minor = 1000
state_dir = "{}"
{}
listen = "{}:7789"

[net]
fencing = "resource-and-stonith"
{}
[handlers]
fence_peer = "{} --config {} --timeout-secs 30"

[peer]
hostname = "{}"
node_id = {}
address = "{}:7789"
{}"#,
                    sid(name),
                    hdir.join("drbd-state").display(),
                    if opts.block_device {
                        String::new()
                    } else {
                        format!("data_dir = \"{}\"", data_dir.display())
                    },
                    net.addr(name),
                    if opts.block_device {
                        "protocol = \"C\"\n"
                    } else {
                        ""
                    },
                    bin("understudy-fence-peer").display(),
                    hdir.join("agent.toml").display(),
                    sid(peer),
                    1 - i,
                    net.addr(peer),
                    opts.resync_rate_kib
                        .map(|r| format!("\n[tuning]\nresync_rate_kib = {r}\n"))
                        .unwrap_or_default(),
                ) + &if opts.block_device {
                    format!(
                        "\n[device]\nmode = \"block\"\nsize_mib = {BLOCK_SIZE_MIB}\nbacking_file = \"{}\"\ndevice_link = \"{}\"\n{}",
                        backing_file.display(),
                        device_link.display(),
                        volumes
                            .get(name)
                            .map(|(_, dev)| format!("meta_dir = \"{}\"\n", dev.join("md").display()))
                            .unwrap_or_default()
                    )
                } else {
                    String::new()
                },
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
                    // `sync`: nfs-cp (libnfs 4.0) writes UNSTABLE and ignores the
                    // result of the COMMIT it sends on close, so its exit status
                    // says nothing about stable storage. With a synchronous mount
                    // every WRITE (and create) reply means "on disk", here and, by
                    // protocol C, on the peer: exit 0 is an acknowledgement.
                    mount: &if opts.block_device {
                        format!(
                            "mode = \"device\"\ndevice = \"{}\"\nfstype = \"ext4\"\noptions = \"sync\"",
                            device_link.display()
                        )
                    } else {
                        format!("mode = \"bind\"\nsource_dir = \"{}\"", data_dir.display())
                    },
                    export_dir: &export_dir,
                    ganesha_dir: &hdir.join("ganesha"),
                    client_ip,
                    tls: &match &pki {
                        Some(p) => p.section(&p.agent(&sid(name))),
                        None => INSECURE_SECTION.into(),
                    },
                }) + &volumes
                    .get(name)
                    .map(|(_, dev)| {
                        configure_section(
                            &emu_config.display().to_string(),
                            None,
                            &dev.parent().expect("dev dir").display().to_string(),
                        )
                    })
                    .unwrap_or_default(),
            )
            .expect("agent config");
            hosts.push(NsHost {
                name,
                server_id: sid(name),
                dir: hdir,
                data_dir,
                export_dir,
                backing_file,
                device_link,
                emu_config,
                agent_config,
                drbdadm,
                drbdsetup,
                emu: None,
                agent: None,
                disk_fs,
            });
        }
        if cloud.is_some() {
            write_boot_script(&root, &addrs, client_ip, opts.resync_rate_kib, pki.as_ref());
        }
        let creds = match &pki {
            Some(p) => p.operator("test-admin", Role::Admin),
            None => Creds::Insecure,
        };
        let mut controllers = Controllers::new(addrs, configs, creds);
        controllers.json_logs = opts.json_logs;
        if opts.controllers_in_namespaces {
            for (i, h) in CONTROLLER_HOSTS.iter().enumerate() {
                controllers.netns[i] = Some(net.ns_name(h));
            }
        }
        let block_registration = opts.block_device.then(|| register_block(&root));
        let mut c = NsCluster {
            dir,
            net,
            client_ip,
            controllers,
            http,
            hosts,
            root_netns,
            block_device: opts.block_device,
            block_registration,
            cloud,
            pki,
            ec2,
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
        if c.block_device {
            c.make_filesystem();
        }
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

    /// Block mode, as an operator makes the file system of a new resource: once
    /// the initial sync from fsa is done, `mkfs.ext4` on fsa's DRBD device (loop
    /// device); protocol C puts every block on fsb too.
    fn make_filesystem(&self) {
        crate::wait_for(
            "initial sync fsa -> fsb done",
            Duration::from_secs(120),
            || {
                let o = self.drbdadm(0, &["dstate", RESOURCE]);
                (String::from_utf8_lossy(&o.stdout).trim() == "UpToDate/UpToDate").then_some(())
            },
        );
        let dev = self.device(0);
        let out = Command::new("mkfs.ext4")
            .args([
                "-F",
                "-q",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                "-L",
                "understudy",
            ])
            .arg(&dev)
            .output()
            .unwrap_or_else(|e| panic!("mkfs.ext4: {e}: {BLOCK_INSTALL}"));
        assert!(
            out.status.success(),
            "mkfs.ext4 {dev}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Block mode: the loop device host `i`'s emulator published (`/dev/loopN`).
    pub fn device(&self, i: usize) -> String {
        let f = self.hosts[i].dir.join("drbd-state").join("device");
        crate::wait_for(
            "the emulator's loop device",
            Duration::from_secs(10),
            || {
                fs::read_to_string(&f)
                    .ok()
                    .map(|d| d.trim().to_string())
                    .filter(|d| d.starts_with("/dev/"))
            },
        )
    }

    pub fn start_controller(&mut self, i: usize) {
        self.controllers.start(i);
    }

    pub fn kill_controller(&mut self, i: usize) {
        self.controllers.kill(i);
    }

    pub fn start_emulator(&mut self, i: usize) {
        let h = &self.hosts[i];
        // The published loop device of a previous run of this host is gone.
        let _ = fs::remove_file(h.dir.join("drbd-state").join("device"));
        // In a private mount namespace of its own: in block mode its FUSE mount
        // must be invisible to every other process (nfs-ganesha stats every mount
        // it sees, and would hang on a frozen FUSE server). The loop device on it
        // is global; the agent mounts that.
        let mut cmd = self.net.cmd(h.name, "unshare");
        cmd.args(["-m", "--propagation", "private"])
            .arg(bin("drbd-emu"))
            .arg("daemon")
            .arg("--config")
            .arg(&h.emu_config);
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
        if self.block_device {
            // Record the loop device, so that it is detached when the cluster is
            // dropped (or by the next run if this process dies).
            let dev = self.device(i);
            let (d, ino) =
                loop_identity(&dev).unwrap_or_else(|e| panic!("{dev}: LOOP_GET_STATUS64: {e}"));
            let (path, _) = self.block_registration.as_ref().expect("registered");
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(path)
                .expect("block registration");
            use std::io::Write;
            writeln!(f, "{dev} {d} {ino}").expect("write block registration");
        }
    }

    /// Start host `i`'s agent. Each host has a blkid cache of its own
    /// (`BLKID_FILE`, inherited by ganesha and `mount`): the emulated hosts
    /// share one file system, and with the host's shared `/run/blkid/blkid.tab`
    /// nfs-ganesha's start on the backup verified every cached device with the
    /// same file-system UUID, the peer's replica included, and blocked in a
    /// read of a frozen peer's loop device until that peer was killed (12-24 s).
    pub fn start_agent(&mut self, i: usize) {
        let h = &self.hosts[i];
        let mut cmd = self
            .net
            .cmd(h.name, bin("understudy-agent").to_str().expect("utf8 path"));
        cmd.arg("--config")
            .arg(&h.agent_config)
            .env("RUST_LOG", "info")
            .env("BLKID_FILE", h.dir.join("blkid.tab"));
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
        if let Some(e) = &self.ec2 {
            // As an operator: the instance started and its security group
            // restored in EC2 first, or the VPC (fabric) keeps it off.
            e.power_on(self.hosts[i].name);
        }
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

    /// Fill host `i`'s disk file system ([`NsOptions::backup_disk_mib`]) up:
    /// the emulator's next write of a new block of its backing file fails with
    /// ENOSPC. Returns the ballast's size.
    pub fn fill_disk(&self, i: usize) -> u64 {
        self.disk_fs(i).fill()
    }

    /// Free host `i`'s disk file system again (the ballast removed).
    pub fn free_disk(&self, i: usize) {
        self.disk_fs(i).free()
    }

    fn disk_fs(&self, i: usize) -> &DiskFs {
        self.hosts[i].disk_fs.as_ref().unwrap_or_else(|| {
            panic!(
                "{} has no disk file system (NsOptions::backup_disk_mib)",
                self.hosts[i].name
            )
        })
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
        let n = self.signal_host_processes(i, sig);
        assert!(n > 0, "no process in {} to signal", self.hosts[i].name);
    }

    /// Send `sig` to every process in host `i`'s namespace (short-lived `ip`
    /// commands excepted, as in [`NsCluster::freeze_host`]); how many there were.
    /// Zero is no error here: a fence may have killed them all.
    pub fn signal_host_processes(&self, i: usize, sig: i32) -> usize {
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
        for pid in &pids {
            // SAFETY: plain kill(2); a pid that exited meanwhile gives ESRCH, ignored.
            unsafe {
                libc::kill(*pid, sig);
            }
        }
        pids.len()
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
    /// Healthy, for `quiet` without a break. Directory mode only needs it: the
    /// emulator replicates the directory asynchronously and ganesha rewrites its
    /// recovery records (in the replicated directory) when an idle client's lease
    /// expires, so this is how a test makes sure every acknowledged write is on the
    /// backup before it kills the primary; otherwise S1 (rightly) refuses the
    /// promotion. In block mode (protocol C) an acknowledged write is on the
    /// backup already; a real system has no such wait.
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
        self.client().url(path)
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
        self.client().write_once(path, data)
    }

    /// Read `path` through NFS from the client namespace (`nfs-cat`).
    pub fn nfs_read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.client().read(path)
    }

    /// An NFS client in the client namespace, for other threads.
    pub fn client(&self) -> NfsClient {
        NfsClient {
            ns: self.net.ns_name("client"),
            client_ip: self.client_ip,
            dir: self.dir.path().to_path_buf(),
        }
    }

    /// Start a client writing numbered files (`PREFIX-N.bin`, contents
    /// [`workload_data`]`(N)`) back to back through the client IP, each an
    /// `nfs-cp` of its own; a write that fails (or takes longer than
    /// [`NFS_OP_TIMEOUT_SECS`]) is recorded as not acknowledged and the next
    /// number is written, at most every 100 ms while writes fail.
    pub fn start_writer(&self, prefix: &str) -> Writer {
        let client = self.client();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (c2, s2, a2, prefix) = (
            client.clone(),
            stop.clone(),
            acked.clone(),
            prefix.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let mut writes = Vec::new();
            let mut i = 0u64;
            while !s2.load(Ordering::SeqCst) {
                let name = format!("{prefix}-{i}.bin");
                let started = Instant::now();
                let ok = c2.write_once(&name, &workload_data(i)).is_ok();
                if ok {
                    a2.fetch_add(1, Ordering::SeqCst);
                }
                writes.push(WriteRecord {
                    index: i,
                    name,
                    acked: ok,
                    started,
                    finished: Instant::now(),
                });
                i += 1;
                if !ok {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            writes
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
            client,
        }
    }

    /// Block mode: the files of host `i`'s ext4 file system as they are on its
    /// disk (the emulator's backing file) now, e.g. after the host died: a copy of
    /// the backing file, its journal replayed (`e2fsck`), the tree dumped
    /// (`debugfs rdump`) into a new directory, whose path is returned.
    pub fn dump_disk(&self, i: usize, tag: &str) -> PathBuf {
        let h = &self.hosts[i];
        self.dump_image(&h.backing_file, &format!("{}-{tag}", h.name))
    }

    /// The disk of the volume the local cloud created for server `server_id`
    /// (a replacement backup's), as [`NsCluster::dump_disk`] dumps it.
    pub fn dump_volume_of(&self, server_id: &str, tag: &str) -> PathBuf {
        let cloud = self.cloud.as_ref().expect("spares enabled");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let vols = rt
            .block_on(understudy_cloud::Cloud::describe_volumes(
                cloud,
                &understudy_cloud::VolumeFilter::default(),
            ))
            .expect("describe volumes");
        let v = vols
            .iter()
            .find(|v| {
                v.tag(understudy_cloud::provision::tags::SERVER_ID) == Some(server_id)
                    && v.tag(understudy_cloud::provision::tags::PURPOSE) == Some("volume")
            })
            .unwrap_or_else(|| panic!("no volume created for {server_id}: {vols:?}"));
        let img = cloud
            .volume_dir(&v.volume_id)
            .expect("launch")
            .join("disk.img");
        self.dump_image(&img, &format!("{server_id}-{tag}"))
    }

    /// Copy an ext4 image, check it (replaying its journal) and dump its files.
    pub fn dump_image(&self, image: &Path, tag: &str) -> PathBuf {
        let copy = self.dir.path().join(format!("{tag}.img"));
        let out = self.dir.path().join(format!("{tag}-files"));
        let run = |cmd: &str, args: &[&str], ok: &dyn Fn(i32) -> bool| {
            let o = Command::new(cmd)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{cmd}: {e}: {BLOCK_INSTALL}"));
            assert!(
                ok(o.status.code().unwrap_or(-1)),
                "{cmd} {args:?}: {}{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let (b, c, o) = (
            image.display().to_string(),
            copy.display().to_string(),
            out.display().to_string(),
        );
        run("cp", &["--sparse=always", &b, &c], &|r| r == 0);
        // 0: clean, 1: errors corrected (journal replayed), 2: same, reboot advised
        run("e2fsck", &["-fy", &c], &|r| (0..=2).contains(&r));
        fs::create_dir_all(&out).expect("dump dir");
        run("debugfs", &["-R", &format!("rdump / {o}"), &c], &|r| r == 0);
        out
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
        // The fabric first: it must not act on namespaces being removed.
        drop(self.ec2.take());
        for h in &mut self.hosts {
            h.agent.take();
            h.emu.take();
            crate::netns::kill_netns_pids(&self.net.ns_name(h.name));
        }
        // Before the temp dir goes (the fields drop after this): a mount
        // inside it would stop its removal.
        for h in &mut self.hosts {
            h.disk_fs.take();
        }
        for h in &self.hosts {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&h.export_dir)
                .stderr(std::process::Stdio::null())
                .status();
        }
        if self.cloud.is_some() {
            // Hosts the local cloud launched: their processes, mounts and the
            // loop devices their emulators set up (found by backing file).
            let prefix = format!("{}-i", self.net.prefix());
            for ns in crate::netns::netns_list().unwrap_or_default() {
                if ns.starts_with(&prefix) {
                    crate::netns::kill_netns_pids(&ns);
                }
            }
            let instances = self.dir.path().join("cloud").join("instances");
            for e in fs::read_dir(&instances).into_iter().flatten().flatten() {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(e.path().join("export"))
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            detach_loops_under(self.dir.path());
        }
        if let Some((file, _lock)) = self.block_registration.take() {
            detach_registered_loops(&file);
            let _ = fs::remove_file(file);
        }
    }
}

/// Detach every loop device whose backing file is under `dir` (the emulators of
/// hosts the local cloud launched, which the harness did not start itself).
fn detach_loops_under(dir: &Path) {
    let out = Command::new("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .output();
    let Ok(out) = out else { return };
    let prefix = dir.display().to_string();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = line.split_whitespace();
        if let (Some(name), Some(back)) = (it.next(), it.next()) {
            if back.starts_with(&prefix) {
                let _ = crate::netns::run("losetup", &["-d", name]);
            }
        }
    }
}

/// The agent's `[drbd.configure]`: the controller may point the resource at a
/// new peer or volume (replacement backup, reattach).
fn configure_section(path: &str, template: Option<&str>, instance_dir: &str) -> String {
    format!(
        "\n[drbd.configure]\nformat = \"emulator\"\npath = \"{path}\"\n{}volume_dir = \"{instance_dir}/dev\"\n",
        template
            .map(|t| format!("template = \"{t}\"\n"))
            .unwrap_or_default()
    )
}

/// The local cloud's boot command (its "user data"): on a launched host, write
/// the agent's and the emulator's configuration from templates and start the
/// agent. The emulator starts when the controller's `DrbdConfigure` runs
/// `drbdadm adjust` (autoloaded, in a private mount namespace); until then
/// the agent reports no resource.
///
/// With TLS the host needs an agent certificate naming its server id, which
/// only exists once the cloud has launched it: the script issues one with
/// `understudyctl certs issue --agent "$UNDERSTUDY_SERVER_ID"` from the test
/// CA's directory. In production the launch template's user data fetches the
/// certificate (and the CA) from a secrets store instead, and the CA key never
/// leaves the operators' PKI.
fn write_boot_script(
    root: &Path,
    controllers: &[String],
    client_ip: Ipv4Addr,
    rate: Option<u64>,
    pki: Option<&Pki>,
) {
    let tls = match pki {
        Some(p) => format!(
            "\n[tls]\nca = \"{}\"\ncert = \"@DIR@/agent-@SERVER_ID@.pem\"\nkey = \"@DIR@/agent-@SERVER_ID@.key\"\n",
            p.ca().display()
        ),
        None => INSECURE_SECTION.into(),
    };
    let issue = match pki {
        Some(p) => format!(
            "# Test stand-in for fetching this host's certificate from a secrets store.\n\"{}\" certs issue --dir \"{}\" --out \"$D\" --agent \"$UNDERSTUDY_SERVER_ID\" >> \"$D/agent.log\" 2>&1\n",
            bin("understudyctl").display(),
            p.dir.display()
        ),
        None => String::new(),
    };
    let agent = agent_toml(&AgentTomlArgs {
        server_id: "@SERVER_ID@",
        role: "backup",
        controllers,
        state_dir: Path::new("@DIR@/agent-state"),
        drbdsetup: Path::new("@DIR@/drbdsetup"),
        drbdadm: Path::new("@DIR@/drbdadm"),
        mount:
            "mode = \"device\"\ndevice = \"@DIR@/drbd1000\"\nfstype = \"ext4\"\noptions = \"sync\"",
        export_dir: Path::new("@DIR@/export"),
        ganesha_dir: &PathBuf::from("@DIR@/ganesha"),
        client_ip,
        tls: &tls,
    }) + &configure_section(
        "@DIR@/drbd-emu.toml",
        Some("@DIR@/drbd-emu.base.toml"),
        "@DIR@",
    );
    let emu = format!(
        r#"resource = "{RESOURCE}"
hostname = "@SERVER_ID@"
node_id = 0
minor = 1000
state_dir = "@DIR@/drbd-state"
listen = "@ADDRESS@:7789"

[net]
fencing = "resource-and-stonith"
protocol = "C"

[handlers]
fence_peer = "{} --config @DIR@/agent.toml --timeout-secs 30"

[peer]
hostname = "unconfigured"
node_id = 1
address = "127.0.0.1:7789"
{}
[device]
mode = "block"
size_mib = {BLOCK_SIZE_MIB}
device_link = "@DIR@/drbd1000"
private_mount_namespace = true
"#,
        bin("understudy-fence-peer").display(),
        rate.map(|r| format!(
            "
[tuning]
resync_rate_kib = {r}
"
        ))
        .unwrap_or_default(),
    );
    fs::write(root.join("agent.toml.in"), agent).expect("agent template");
    fs::write(root.join("drbd-emu.base.toml.in"), emu).expect("emulator template");
    let script = format!(
        r#"#!/bin/sh
# The local cloud's boot command: make this launched host an Understudy server.
set -e
D="$UNDERSTUDY_INSTANCE_DIR"
mkdir -p "$D/agent-state" "$D/export" "$D/ganesha" "$D/drbd-state" "$D/dev"
sysctl -qw net.ipv4.neigh.eth0.retrans_time_ms=100 || true
for f in agent.toml drbd-emu.base.toml; do
  sed -e "s|@SERVER_ID@|$UNDERSTUDY_SERVER_ID|g" -e "s|@ADDRESS@|$UNDERSTUDY_ADDRESS|g"       -e "s|@DIR@|$D|g" "{root}/$f.in" > "$D/$f"
done
for t in drbdsetup drbdadm; do
  printf '#!/bin/sh
DRBD_EMU_CONFIG=%s/drbd-emu.toml exec %s %s "$@"
' "$D" "{emu}" "$t" > "$D/$t"
  chmod 755 "$D/$t"
done
{issue}export BLKID_FILE="$D/blkid.tab"
RUST_LOG=info exec "{agent}" --config "$D/agent.toml" >> "$D/agent.log" 2>&1
"#,
        root = root.display(),
        emu = bin("drbd-emu").display(),
        agent = bin("understudy-agent").display(),
    );
    let p = root.join("boot.sh");
    fs::write(&p, script).expect("boot script");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod boot script");
}

fn check_block_tools() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (FUSE kernel module): {BLOCK_INSTALL}"
    );
    for tool in ["unshare", "losetup", "mkfs.ext4", "e2fsck", "debugfs"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(found, "{tool} not found: {BLOCK_INSTALL}");
    }
}

/// Register `dir` as a block-mode cluster's temp dir: a file in
/// [`BLOCK_REGISTRY`] naming it, `flock`ed for the cluster's life.
fn register_block(dir: &Path) -> (PathBuf, fs::File) {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    fs::create_dir_all(BLOCK_REGISTRY).expect("block registry dir");
    let name = dir
        .file_name()
        .expect("temp dir name")
        .to_string_lossy()
        .into_owned();
    let path = Path::new(BLOCK_REGISTRY).join(format!("{name}.lock"));
    let mut f = fs::File::create(&path).expect("block registration");
    // SAFETY: flock on an open file descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "flock {}", path.display());
    writeln!(f, "{}", dir.display()).expect("write block registration");
    (path, f)
}

/// Detach what block-mode clusters of dead processes left: for every registration
/// nobody holds, the loop devices it recorded, if they are still the same.
/// (Their emulators ran in mount namespaces that died with them, so the FUSE and
/// ext4 mounts are gone already; the netns cleanup kills leftover processes.)
fn cleanup_stale_block() {
    use std::os::unix::io::AsRawFd;
    let Ok(entries) = fs::read_dir(BLOCK_REGISTRY) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(f) = fs::OpenOptions::new().read(true).open(e.path()) else {
            continue;
        };
        // SAFETY: flock on an open file descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue; // a live cluster
        }
        detach_registered_loops(&e.path());
        let _ = fs::remove_file(e.path());
    }
}

/// `(lo_device, lo_inode)` of a loop device's backing file (`LOOP_GET_STATUS64`).
/// From outside the emulator's private mount namespace the backing file's path
/// reads `/drbd-emu-device`, so the path cannot say whose it is; this can (the
/// FUSE superblock, and so its device number, lives as long as the loop device
/// holds the file).
/// Fails with `ENOTCONN` when the FUSE server of the backing file is dead.
fn loop_identity(dev: &str) -> std::io::Result<(u64, u64)> {
    use std::os::unix::io::AsRawFd;
    const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
    let f = fs::File::open(dev)?;
    // struct loop_info64 is 232 bytes; lo_device and lo_inode come first.
    let mut info = [0u64; 29];
    // SAFETY: the buffer is as large as struct loop_info64 and outlives the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64, info.as_mut_ptr()) };
    if rc == 0 {
        Ok((info[0], info[1]))
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `losetup -d` every loop device recorded in registration `file` (lines
/// `NAME DEVICE INODE`) that still has the recorded backing file, or whose
/// backing file's FUSE server is dead (`ENOTCONN`: nobody's to keep, as the
/// emulator's own cleanup holds). A device still mounted is released by the
/// kernel when the last mount goes.
fn detach_registered_loops(file: &Path) {
    let text = fs::read_to_string(file).unwrap_or_default();
    for line in text.lines().skip(1) {
        let mut it = line.split_whitespace();
        let (Some(name), Some(d), Some(i)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let (Ok(d), Ok(i)) = (d.parse::<u64>(), i.parse::<u64>()) else {
            continue;
        };
        let ours = match loop_identity(name) {
            Ok(id) => id == (d, i),
            Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
        };
        if ours {
            if let Err(e) = crate::netns::run("losetup", &["-d", name]) {
                eprintln!("nscluster: {e}");
            }
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
    /// The `[serving.mount]` keys other than `mountpoint`.
    mount: &'a str,
    export_dir: &'a Path,
    ganesha_dir: &'a Path,
    client_ip: Ipv4Addr,
    /// The `[tls]` section.
    tls: &'a str,
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
{mount}
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
{tls}"#,
        tls = a.tls,
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
        mount = a.mount,
        export = a.export_dir.display(),
        ganesha = a.ganesha_dir.display(),
        ip = a.client_ip,
    )
}

/// An NFS client in the `client` namespace, usable from any thread: `nfs-cp` /
/// `nfs-cat` (libnfs) through the client IP.
#[derive(Debug, Clone)]
pub struct NfsClient {
    ns: String,
    client_ip: Ipv4Addr,
    /// Where upload files are staged.
    dir: PathBuf,
}

/// How long one `nfs-cp` / `nfs-cat` may take before it is killed (a client
/// whose server died may otherwise wait for ever); a killed write is not
/// acknowledged.
pub const NFS_OP_TIMEOUT_SECS: u64 = 10;

impl NfsClient {
    pub fn url(&self, path: &str) -> String {
        format!(
            "nfs://{}{PSEUDO}/{path}?version=4&nfsport={NFS_PORT}",
            self.client_ip
        )
    }

    fn cmd(&self, program: &str) -> Command {
        self.cmd_within(program, NFS_OP_TIMEOUT_SECS)
    }

    fn cmd_within(&self, program: &str, timeout_secs: u64) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "timeout", "-s", "KILL"])
            .arg(timeout_secs.to_string())
            .arg(program);
        c
    }

    /// One `nfs-cp` of `data` to `path`: `Ok` = acknowledged (exit 0).
    pub fn write_once(&self, path: &str, data: &[u8]) -> Result<(), String> {
        self.write_once_within(path, data, NFS_OP_TIMEOUT_SECS)
    }

    /// [`NfsClient::write_once`], killed after `timeout_secs`.
    pub fn write_once_within(
        &self,
        path: &str,
        data: &[u8],
        timeout_secs: u64,
    ) -> Result<(), String> {
        let local = self.dir.join(format!("upload-{}", path.replace('/', "_")));
        fs::write(&local, data).map_err(|e| e.to_string())?;
        let out = self
            .cmd_within("nfs-cp", timeout_secs)
            .arg(&local)
            .arg(self.url(path))
            .output()
            .map_err(|e| e.to_string());
        let _ = fs::remove_file(&local);
        let out = out?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nfs-cp {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `nfs-cat` of `path`.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        let out = self
            .cmd("nfs-cat")
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
}

/// The contents of write number `i` of a [`Writer`]: 1000..3899 bytes (libnfs
/// 4.0's nfs-cp fails above about 4000 bytes against ganesha 4.3), a pattern
/// that differs per write.
pub fn workload_data(i: u64) -> Vec<u8> {
    let len = 1000 + (i * 397 % 2900) as usize;
    let mut v = format!("write {i}\n").into_bytes();
    v.extend((0..len as u64).map(|k| (k.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8));
    v.truncate(len);
    v
}

/// One write of a [`Writer`].
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub index: u64,
    pub name: String,
    /// `nfs-cp` exited 0: the server acknowledged the write.
    pub acked: bool,
    /// When it was started and when it returned.
    pub started: Instant,
    pub finished: Instant,
}

/// A client writing numbered files back to back through the client IP, in a
/// thread of its own, recording which writes were acknowledged; see
/// [`NsCluster::start_writer`].
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<WriteRecord>>>,
    client: NfsClient,
}

/// What [`Writer::verify`] found.
#[derive(Debug, Clone)]
pub struct WriteCheck {
    /// Writes attempted / acknowledged.
    pub attempted: usize,
    pub acked: usize,
    /// Acknowledged writes that read back different or not at all, with why.
    pub lost: Vec<(String, String)>,
}

impl Writer {
    /// Acknowledged writes so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Wait until `n` more writes than now are acknowledged (writes go on).
    pub fn wait_more_acked(&self, n: u64, timeout: Duration) {
        let want = self.acked() + n;
        crate::wait_for(&format!("{n} more acknowledged writes"), timeout, || {
            (self.acked() >= want).then_some(())
        });
    }

    /// Stop after the write in progress; every write made.
    pub fn stop(mut self) -> Vec<WriteRecord> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("writer thread")
            .join()
            .expect("writer thread panicked")
    }

    /// Read every acknowledged write back through the client IP, retrying each
    /// for up to `timeout` (grace period, a server still coming up: as a client
    /// retries), and compare it byte for byte.
    pub fn verify(client: &NfsClient, writes: &[WriteRecord], timeout: Duration) -> WriteCheck {
        let mut lost = Vec::new();
        for w in writes.iter().filter(|w| w.acked) {
            let want = workload_data(w.index);
            let deadline = Instant::now() + timeout;
            loop {
                match client.read(&w.name) {
                    Ok(got) if got == want => break,
                    Ok(got) => {
                        lost.push((
                            w.name.clone(),
                            format!("{} bytes differ from the {} written", got.len(), want.len()),
                        ));
                        break;
                    }
                    Err(e) if Instant::now() > deadline => {
                        lost.push((w.name.clone(), e));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        WriteCheck {
            attempted: writes.len(),
            acked: writes.iter().filter(|w| w.acked).count(),
            lost,
        }
    }

    /// The client the writer uses (for reading back).
    pub fn client(&self) -> NfsClient {
        self.client.clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Samples every 100 ms, in a thread, which hosts hold the client IP and which
/// run an NFS server, and keeps the worst seen; [`Invariants::check`] panics if
/// two ever did at once ([`Invariants::finish`] reports it).
pub struct Invariants {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<InvariantReport>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What an [`Invariants`] sampler saw.
#[derive(Debug, Clone, Default)]
pub struct InvariantReport {
    /// The most hosts holding the client IP at once, and running an NFS server.
    pub max_ip_holders: usize,
    pub max_exporters: usize,
    /// The sample with the most of either.
    pub worst: String,
    /// Every sample with two or more of either, first 20 (with the time since
    /// the sampler started).
    pub doubles: Vec<String>,
    pub samples: u64,
}

impl InvariantReport {
    /// The violations: two holders of the client IP, or two NFS servers, at once.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.max_ip_holders > 1 {
            v.push(format!(
                "two holders of the client IP at once: {} (samples: {:?})",
                self.worst, self.doubles
            ));
        }
        if self.max_exporters > 1 {
            v.push(format!(
                "two NFS servers at once: {} (samples: {:?})",
                self.worst, self.doubles
            ));
        }
        v
    }
}

impl Invariants {
    pub fn watch(c: &NsCluster) -> Invariants {
        Self::watch_with(c, false)
    }

    /// With `reachable_only`, a host counts only while its cable is in (the
    /// root side of its veth up): a host the fence cut off but did not stop
    /// (`fence_keeps_processes`, an EC2 isolation whose stop has not landed) still
    /// holds the address and runs ganesha, unreachable, and that is the fence.
    pub fn watch_with(c: &NsCluster, reachable_only: bool) -> Invariants {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new(InvariantReport::default()));
        let ns = c.host_namespaces();
        let veths: std::collections::HashMap<&'static str, String> = c
            .hosts
            .iter()
            .map(|h| (h.name, c.net.root_veth(h.name)))
            .collect();
        let ip = c.client_ip;
        // Hosts the local cloud launches meanwhile count too.
        let launched = format!("{}-i", c.net.prefix());
        let (s2, w2) = (stop.clone(), worst.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut names: std::collections::HashMap<String, &'static str> =
                std::collections::HashMap::new();
            while !s2.load(Ordering::Relaxed) {
                let mut ns = ns.clone();
                for n in crate::netns::netns_list().unwrap_or_default() {
                    if n.starts_with(&launched) {
                        let name = *names
                            .entry(n.clone())
                            .or_insert_with(|| Box::leak(n.clone().into_boxed_str()));
                        ns.push((n, name));
                    }
                }
                let reachable =
                    |h: &&'static str| !reachable_only || veths.get(*h).is_none_or(|v| link_up(v));
                let holders: Vec<_> = ip_holders_in(&ns, ip)
                    .into_iter()
                    .filter(reachable)
                    .collect();
                let exporting: Vec<_> = exporters_in(&ns).into_iter().filter(reachable).collect();
                let mut w = w2.lock().unwrap();
                w.samples += 1;
                if holders.len() > w.max_ip_holders || exporting.len() > w.max_exporters {
                    w.max_ip_holders = w.max_ip_holders.max(holders.len());
                    w.max_exporters = w.max_exporters.max(exporting.len());
                    w.worst = format!("IP holders {holders:?}, exporters {exporting:?}");
                }
                if (holders.len() > 1 || exporting.len() > 1) && w.doubles.len() < 20 {
                    let at = t0.elapsed().as_secs_f64();
                    w.doubles.push(format!(
                        "{at:.1}s: IP holders {holders:?}, exporters {exporting:?}"
                    ));
                }
                drop(w);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Invariants {
            stop,
            worst,
            thread: Some(thread),
        }
    }

    /// Stop sampling and report what was seen.
    pub fn finish(mut self) -> InvariantReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let w = self.worst.lock().unwrap();
        w.clone()
    }

    /// Stop sampling; panics if two hosts ever held the IP or exported at once.
    /// Returns the number of samples taken.
    pub fn check(self) -> u64 {
        let r = self.finish();
        let v = r.violations();
        assert!(v.is_empty(), "{}", v.join("; "));
        r.samples
    }
}

impl Drop for Invariants {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
