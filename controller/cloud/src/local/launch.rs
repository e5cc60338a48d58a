//! Provisioning in the local cloud: `RunInstances` makes a new network namespace
//! on the bridge that "boots" after a delay by running the configured boot command
//! in it (the stand-in for an AMI's init plus EC2 user data: in the demo and the
//! namespace tests it writes the agent's and the DRBD emulator's configuration and
//! starts the agent); volumes are directories holding the emulator's backing file
//! and its metadata, which attach and detach move between hosts.
//!
//! State shared by every controller node (each has its own `LocalCloud`) lives in
//! [`LocalLaunchConfig::state_dir`]:
//!
//! - `registry.json`: instances (client token, address, zone, tags, terminated,
//!   and the health a test injected: scheduled events and a system status, see
//!   [`LocalCloud::inject_event`]) and volumes (client token, zone, size, tags, attachment), read and written
//!   under an exclusive `flock` on `registry.lock`, so two leaders repeating one
//!   launch with the same client token get one instance;
//! - `instances/<netns>/`: the host's directory (`boot.log`, `booted` once the boot
//!   delay has passed, and `dev/<device>`: a symlink to each attached volume, the
//!   stand-in for `/dev/xvdf`);
//! - `volumes/<vol-id>/`: a volume; `disk.img` (sparse, `size_gib` ×
//!   [`LocalLaunchConfig::mib_per_gib`] MiB) and whatever the host's DRBD keeps with
//!   it (the emulator's internal metadata, `md/`).
//!
//! Like EC2 it moves data, not trust: `attach_volume` refuses a volume that is
//! not `available` or in another zone, but the controller checks both itself
//! before calling (moto checks neither). A forced detach removes the device even
//! while the old host has it open, as EC2's does; the controller only force
//! detaches the volumes of a fenced server.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{LocalCloud, NAME};
use crate::health::status;
use crate::provision::{check_client_token, check_tags, merge_tags, tags, Tag};
use crate::{
    CloudError, CloudServer, Instance, InstanceHealth, InstanceState, LaunchRequest,
    ScheduledEvent, Volume, VolumeAttachment, VolumeFilter, VolumeRequest, VolumeState,
};

fn default_boot_delay_ms() -> u64 {
    1000
}

fn default_mib_per_gib() -> u64 {
    1024
}

/// `[cloud.launch]` of the local backend: how `RunInstances` makes a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLaunchConfig {
    /// Registry, host directories and volumes (shared by every controller node).
    pub state_dir: PathBuf,
    /// The zone new hosts are in (the "template's subnet").
    pub zone: String,
    /// The bridge new hosts' veths are plugged into (in `root_netns` if set).
    pub bridge: String,
    /// The bridge's address: new hosts' default route.
    pub gateway: Ipv4Addr,
    /// Addresses handed to new hosts, first free one first.
    pub addresses: Vec<Ipv4Addr>,
    /// Run with `sh -c` inside the new namespace once it has booted, with
    /// `UNDERSTUDY_INSTANCE_ID`, `UNDERSTUDY_ADDRESS`, `UNDERSTUDY_PREFIX_LEN`,
    /// `UNDERSTUDY_GATEWAY`, `UNDERSTUDY_ZONE`, `UNDERSTUDY_INSTANCE_DIR`,
    /// `UNDERSTUDY_SERVER_ID` and `UNDERSTUDY_PAIR` (from the tags) set.
    pub boot_command: String,
    /// Launch time: the boot command runs this long after `RunInstances`.
    #[serde(default = "default_boot_delay_ms")]
    pub boot_delay_ms: u64,
    /// Size of one "GiB" of a local volume, in MiB (test volumes are small).
    #[serde(default = "default_mib_per_gib")]
    pub mib_per_gib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Registry {
    next: u64,
    instances: BTreeMap<String, InstanceRec>,
    volumes: BTreeMap<String, VolumeRec>,
}

impl Registry {
    /// Volume `id`, or NotFound as EC2 answers for an unknown volume.
    fn volume_mut(&mut self, id: &str) -> Result<&mut VolumeRec, CloudError> {
        self.volumes
            .get_mut(id)
            .ok_or_else(|| CloudError::NotFound {
                provider: NAME,
                what: "volume",
                id: id.into(),
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceRec {
    client_token: Option<String>,
    address: String,
    zone: String,
    tags: Vec<Tag>,
    /// Launched by this cloud (false: an existing host registered by its owner).
    launched: bool,
    terminated: bool,
    launched_unix_ms: i64,
    /// The system status check a test set ([`LocalCloud::set_system_status`]);
    /// `None`: `ok` while running.
    #[serde(default)]
    system_status: Option<String>,
    /// Events a test scheduled ([`LocalCloud::inject_event`]).
    #[serde(default)]
    events: Vec<ScheduledEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolumeRec {
    client_token: Option<String>,
    zone: String,
    size_gib: u64,
    tags: Vec<Tag>,
    /// (instance id, device)
    attachment: Option<(String, String)>,
}

/// The registry, locked for the life of this value.
struct Locked {
    _lock: fs::File,
    path: PathBuf,
    reg: Registry,
}

impl Locked {
    fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.reg).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn refused(op: &'static str, reason: String) -> CloudError {
    CloudError::Refused {
        provider: NAME,
        op,
        reason,
    }
}

fn io_err(op: &'static str, what: &str, e: std::io::Error) -> CloudError {
    CloudError::Transient {
        provider: NAME,
        op,
        reason: format!("{what}: {e}"),
    }
}

/// The registry's record of `instance_id`, or `NotFound`.
fn registered<'a>(
    reg: &'a mut Registry,
    instance_id: &str,
) -> Result<&'a mut InstanceRec, CloudError> {
    reg.instances
        .get_mut(instance_id)
        .ok_or_else(|| CloudError::NotFound {
            provider: NAME,
            what: "instance",
            id: instance_id.to_string(),
        })
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl LocalCloud {
    fn launch_cfg(&self, op: &'static str) -> Result<&LocalLaunchConfig, CloudError> {
        // Without [cloud.launch] this cloud only fences and moves the IP.
        self.cfg
            .launch
            .as_ref()
            .ok_or_else(|| crate::unsupported(NAME, op))
    }

    /// The directory of host `instance_id` (its `dev/` holds attached volumes).
    pub fn instance_dir(&self, instance_id: &str) -> Option<PathBuf> {
        let l = self.cfg.launch.as_ref()?;
        Some(l.state_dir.join("instances").join(instance_id))
    }

    /// The directory of volume `volume_id`.
    pub fn volume_dir(&self, volume_id: &str) -> Option<PathBuf> {
        let l = self.cfg.launch.as_ref()?;
        Some(l.state_dir.join("volumes").join(volume_id))
    }

    async fn lock(&self, op: &'static str) -> Result<Locked, CloudError> {
        let l = self.launch_cfg(op)?;
        fs::create_dir_all(&l.state_dir)
            .map_err(|e| io_err(op, &format!("create {}", l.state_dir.display()), e))?;
        let lock_path = l.state_dir.join("registry.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(op, &format!("open {}", lock_path.display()), e))?;
        let deadline = Instant::now() + Duration::from_millis(self.cfg.command_timeout_ms);
        loop {
            // SAFETY: flock on a valid, owned file descriptor.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(CloudError::Transient {
                    provider: NAME,
                    op,
                    reason: format!("{} is held by another caller", lock_path.display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let path = l.state_dir.join("registry.json");
        let reg = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                refused(
                    op,
                    format!("{} is not a registry: {e}; move it away", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::default(),
            Err(e) => return Err(io_err(op, &format!("read {}", path.display()), e)),
        };
        Ok(Locked {
            _lock: f,
            path,
            reg,
        })
    }

    /// Register a host this cloud did not launch (the harness's or an operator's
    /// existing file servers), so volumes can be attached to it and it is listed.
    pub async fn register_instance(
        &self,
        instance_id: &str,
        address: &str,
        zone: &str,
        tags: Vec<Tag>,
    ) -> Result<(), CloudError> {
        const OP: &str = "register_instance";
        let mut l = self.lock(OP).await?;
        l.reg
            .instances
            .entry(instance_id.to_string())
            .or_insert(InstanceRec {
                client_token: None,
                address: address.to_string(),
                zone: zone.to_string(),
                tags,
                launched: false,
                terminated: false,
                launched_unix_ms: now_unix_ms(),
                system_status: None,
                events: Vec::new(),
            });
        let dev = self
            .instance_dir(instance_id)
            .expect("launch config")
            .join("dev");
        fs::create_dir_all(&dev)
            .map_err(|e| io_err(OP, &format!("create {}", dev.display()), e))?;
        l.save().map_err(|e| io_err(OP, "write the registry", e))
    }

    /// Schedule `event` for `instance_id`, as EC2 announces a retirement or a
    /// maintenance: recorded in the registry, so every controller's
    /// [`crate::Cloud::instance_health`] lists it from now on.
    pub async fn inject_event(
        &self,
        instance_id: &str,
        event: ScheduledEvent,
    ) -> Result<(), CloudError> {
        const OP: &str = "inject_event";
        let mut l = self.lock(OP).await?;
        let r = registered(&mut l.reg, instance_id)?;
        tracing::info!(instance = %instance_id, code = %event.code, not_before_unix_ms = event.not_before_unix_ms, "scheduled event injected");
        r.events.push(event);
        l.save().map_err(|e| io_err(OP, "write the registry", e))
    }

    /// Drop every event scheduled for `instance_id`.
    pub async fn clear_events(&self, instance_id: &str) -> Result<(), CloudError> {
        const OP: &str = "clear_events";
        let mut l = self.lock(OP).await?;
        registered(&mut l.reg, instance_id)?.events.clear();
        l.save().map_err(|e| io_err(OP, "write the registry", e))
    }

    /// Set the system status check of `instance_id` (`impaired`, `ok`, ...;
    /// recorded in the registry until set again).
    pub async fn set_system_status(
        &self,
        instance_id: &str,
        status: &str,
    ) -> Result<(), CloudError> {
        const OP: &str = "set_system_status";
        let mut l = self.lock(OP).await?;
        registered(&mut l.reg, instance_id)?.system_status = Some(status.to_string());
        tracing::info!(instance = %instance_id, status, "system status set");
        l.save().map_err(|e| io_err(OP, "write the registry", e))
    }

    /// Health as the registry has it: a registered instance's checks are `ok`
    /// while it runs (`not-applicable` otherwise) unless a test set the system
    /// status, with the events a test injected. Without `[cloud.launch]` there
    /// is no registry, and an instance it does not list (a host nobody
    /// registered) is not watched: both answer [`InstanceHealth::unreported`].
    pub(super) async fn local_instance_health(
        &self,
        server: &CloudServer,
    ) -> Result<InstanceHealth, CloudError> {
        if self.cfg.launch.is_none() {
            return Ok(InstanceHealth::unreported());
        }
        let rec = {
            let l = self.lock("instance_health").await?;
            l.reg.instances.get(&server.instance_id).cloned()
        };
        let Some(rec) = rec else {
            return Ok(InstanceHealth::unreported());
        };
        let running = !rec.terminated
            && crate::Cloud::instance_state(self, server).await? == InstanceState::Running;
        let checked = if running {
            status::OK
        } else {
            status::NOT_APPLICABLE
        };
        Ok(InstanceHealth {
            system_status: rec.system_status.unwrap_or_else(|| checked.into()),
            instance_status: checked.into(),
            events: rec.events,
        })
    }

    /// Every instance id in the registry that is not terminated.
    pub async fn instances(&self) -> Result<Vec<String>, CloudError> {
        let l = self.lock("instances").await?;
        Ok(l.reg
            .instances
            .iter()
            .filter(|(_, r)| !r.terminated)
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn describe_rec(&self, id: &str, r: &InstanceRec) -> Result<Instance, CloudError> {
        let state = if r.terminated {
            InstanceState::Terminated
        } else if r.launched
            && !self
                .instance_dir(id)
                .map(|d| d.join("booted").exists())
                .unwrap_or(false)
        {
            InstanceState::Pending
        } else {
            let server = crate::CloudServer {
                server_id: id.to_string(),
                instance_id: id.to_string(),
                interface_id: format!("{id}:eth0"),
                zone: r.zone.clone(),
            };
            crate::Cloud::instance_state(self, &server).await?
        };
        Ok(Instance {
            instance_id: id.to_string(),
            interface_id: format!("{id}:eth0"),
            private_ip: r.address.clone(),
            zone: r.zone.clone(),
            state,
            tags: r.tags.clone(),
        })
    }

    async fn ip_root(&self, op: &'static str, args: &[&str]) -> Result<String, CloudError> {
        let args = self.cfg.root_ip(args);
        self.must(op, "ip", &args).await
    }

    /// Build the host's network: namespace, veth on the bridge, address, route.
    async fn make_host(
        &self,
        op: &'static str,
        ns: &str,
        veth: &str,
        address: Ipv4Addr,
    ) -> Result<(), CloudError> {
        let l = self.launch_cfg(op)?;
        let cidr = format!("{address}/{}", self.cfg.prefix_len);
        let gw = l.gateway.to_string();
        if !self.netns_exists(op, ns).await? {
            self.must(op, "ip", &["netns", "add", ns]).await?;
        }
        let links = self.ip_root(op, &["-o", "link", "show"]).await?;
        if !super::parse_links(&links).iter().any(|k| k.name == veth) {
            self.ip_root(
                op,
                &[
                    "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            )
            .await?;
        }
        self.ip_root(op, &["link", "set", veth, "master", &l.bridge, "up"])
            .await?;
        self.must(op, "ip", &["-n", ns, "link", "set", "lo", "up"])
            .await?;
        let addrs = self
            .must(op, "ip", &["-n", ns, "-o", "-4", "addr", "show"])
            .await?;
        if !super::parse_addrs(&addrs).iter().any(|a| a.addr == address) {
            self.must(op, "ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"])
                .await?;
        }
        self.must(op, "ip", &["-n", ns, "link", "set", "eth0", "up"])
            .await?;
        let _ = self
            .exec(
                op,
                "ip",
                &["-n", ns, "route", "replace", "default", "via", &gw],
            )
            .await?;
        Ok(())
    }

    /// Start the boot: after the boot delay, mark the host booted and run the boot
    /// command in its namespace. Detached (`setsid -f`): it outlives this process.
    async fn boot(
        &self,
        op: &'static str,
        ns: &str,
        address: Ipv4Addr,
        zone: &str,
        tags: &[Tag],
    ) -> Result<(), CloudError> {
        let l = self.launch_cfg(op)?;
        let dir = self.instance_dir(ns).expect("launch config");
        let log = dir.join("boot.log");
        let script = format!(
            "sleep {delay}; touch \"$UNDERSTUDY_INSTANCE_DIR/booted\"; \
             exec ip netns exec \"$UNDERSTUDY_INSTANCE_ID\" sh -c \"$UNDERSTUDY_BOOT\" \
             >>\"$UNDERSTUDY_INSTANCE_DIR/boot.log\" 2>&1 </dev/null",
            delay = l.boot_delay_ms as f64 / 1000.0
        );
        let status = tokio::process::Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .env("UNDERSTUDY_INSTANCE_ID", ns)
            .env("UNDERSTUDY_ADDRESS", address.to_string())
            .env("UNDERSTUDY_PREFIX_LEN", self.cfg.prefix_len.to_string())
            .env("UNDERSTUDY_GATEWAY", l.gateway.to_string())
            .env("UNDERSTUDY_ZONE", zone)
            .env("UNDERSTUDY_INSTANCE_DIR", &dir)
            .env(
                "UNDERSTUDY_SERVER_ID",
                tag(tags, tags::SERVER_ID).unwrap_or(ns),
            )
            .env("UNDERSTUDY_PAIR", tag(tags, tags::PAIR).unwrap_or(""))
            .env("UNDERSTUDY_BOOT", &l.boot_command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| io_err(op, "run setsid (util-linux)", e))?;
        if !status.success() {
            return Err(CloudError::Transient {
                provider: NAME,
                op,
                reason: format!(
                    "`setsid -f sh -c ...` failed ({status}); see {}",
                    log.display()
                ),
            });
        }
        Ok(())
    }

    fn volume_view(&self, id: &str, r: &VolumeRec) -> Volume {
        Volume {
            volume_id: id.to_string(),
            zone: r.zone.clone(),
            size_gib: r.size_gib,
            state: if r.attachment.is_some() {
                VolumeState::InUse
            } else {
                VolumeState::Available
            },
            attachments: r
                .attachment
                .iter()
                .map(|(i, d)| VolumeAttachment {
                    instance_id: i.clone(),
                    device: d.clone(),
                    state: "attached".into(),
                })
                .collect(),
            tags: r.tags.clone(),
        }
    }

    pub(super) async fn local_launch_zone(&self) -> Result<String, CloudError> {
        Ok(self.launch_cfg("launch_zone")?.zone.clone())
    }

    pub(super) async fn local_launch(&self, req: &LaunchRequest) -> Result<Instance, CloudError> {
        const OP: &str = "launch_instance";
        let cfg = self.launch_cfg(OP)?.clone();
        check_client_token(NAME, OP, &req.client_token)?;
        check_tags(NAME, OP, &req.tags)?;
        let mut l = self.lock(OP).await?;
        if let Some((id, r)) = l
            .reg
            .instances
            .iter()
            .find(|(_, r)| r.client_token.as_deref() == Some(req.client_token.as_str()))
        {
            if r.zone != req.zone {
                return Err(refused(
                    OP,
                    format!(
                        "client token {} was used for a launch in zone {}, not {} (IdempotentParameterMismatch)",
                        req.client_token, r.zone, req.zone
                    ),
                ));
            }
            return self.describe_rec(id, r).await;
        }
        if cfg.zone != req.zone {
            return Err(refused(
                OP,
                format!(
                    "the launch template's subnet is in zone {}, the request is for zone {}",
                    cfg.zone, req.zone
                ),
            ));
        }
        let used: Vec<&str> = l
            .reg
            .instances
            .values()
            .filter(|r| !r.terminated)
            .map(|r| r.address.as_str())
            .collect();
        let address = *cfg
            .addresses
            .iter()
            .find(|a| !used.contains(&a.to_string().as_str()))
            .ok_or_else(|| {
                refused(
                    OP,
                    format!(
                        "no free address left in [cloud.launch] addresses ({} configured, all in use)",
                        cfg.addresses.len()
                    ),
                )
            })?;
        l.reg.next += 1;
        let n = l.reg.next;
        let prefix = if self.cfg.netns_prefix.is_empty() {
            "us"
        } else {
            &self.cfg.netns_prefix
        };
        let ns = format!("{prefix}-i{n}");
        let veth = format!("{prefix}l{n}");
        if veth.len() > 15 {
            return Err(refused(
                OP,
                format!("interface name {veth} is longer than Linux's 15 characters: use a shorter netns_prefix"),
            ));
        }
        let dir = self.instance_dir(&ns).expect("launch config");
        fs::create_dir_all(dir.join("dev"))
            .map_err(|e| io_err(OP, &format!("create {}", dir.display()), e))?;
        // Recorded before anything is built: a repeat of this token finds it.
        l.reg.instances.insert(
            ns.clone(),
            InstanceRec {
                client_token: Some(req.client_token.clone()),
                address: address.to_string(),
                zone: req.zone.clone(),
                tags: req.tags.clone(),
                launched: true,
                terminated: false,
                launched_unix_ms: now_unix_ms(),
                system_status: None,
                events: Vec::new(),
            },
        );
        l.save().map_err(|e| io_err(OP, "write the registry", e))?;
        self.make_host(OP, &ns, &veth, address).await?;
        self.boot(OP, &ns, address, &req.zone, &req.tags).await?;
        tracing::info!(instance = %ns, %address, zone = %req.zone, token = %req.client_token, "launched");
        let r = l.reg.instances[&ns].clone();
        self.describe_rec(&ns, &r).await
    }

    pub(super) async fn local_describe_instance(
        &self,
        instance_id: &str,
    ) -> Result<Option<Instance>, CloudError> {
        let l = self.lock("describe_instance").await?;
        match l.reg.instances.get(instance_id) {
            Some(r) => Ok(Some(self.describe_rec(instance_id, r).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn local_terminate(&self, instance_id: &str) -> Result<(), CloudError> {
        const OP: &str = "terminate_instance";
        let mut l = self.lock(OP).await?;
        let Some(rec) = l.reg.instances.get(instance_id).cloned() else {
            return Ok(());
        };
        if rec.terminated {
            return Ok(());
        }
        let ns = instance_id;
        if self.netns_exists(OP, ns).await? {
            // Every process dies (even with kill_processes = false: a terminate
            // always lands), then the namespace and its veth go.
            for _ in 0..50 {
                let pids = self.pids(OP, ns).await?;
                if pids.is_empty() {
                    break;
                }
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                let mut args = vec!["-KILL"];
                args.extend(pids.iter().map(String::as_str));
                let _ = self.exec(OP, "kill", &args).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let links = self
                .must(OP, "ip", &["-n", ns, "-o", "link", "show"])
                .await?;
            if let Some(peer) = super::parse_links(&links)
                .into_iter()
                .find(|k| k.name == "eth0")
                .and_then(|k| k.peer_index)
            {
                let root = self.ip_root(OP, &["-o", "link", "show"]).await?;
                if let Some(v) = super::parse_links(&root)
                    .into_iter()
                    .find(|k| k.index == peer)
                {
                    let _ = self.ip_root(OP, &["link", "del", &v.name]).await;
                }
            }
            self.must(OP, "ip", &["netns", "del", ns]).await?;
        }
        // EC2 detaches data volumes at termination and keeps them.
        let dev = self.instance_dir(ns).expect("launch config").join("dev");
        for (_, v) in l.reg.volumes.iter_mut() {
            if let Some((i, d)) = &v.attachment {
                if i == instance_id {
                    let _ = fs::remove_file(dev.join(d));
                    v.attachment = None;
                }
            }
        }
        if let Some(r) = l.reg.instances.get_mut(instance_id) {
            r.terminated = true;
        }
        l.save().map_err(|e| io_err(OP, "write the registry", e))?;
        tracing::info!(instance = %instance_id, "terminated");
        Ok(())
    }

    pub(super) async fn local_create_volume(
        &self,
        req: &VolumeRequest,
    ) -> Result<Volume, CloudError> {
        const OP: &str = "create_volume";
        let cfg = self.launch_cfg(OP)?.clone();
        check_client_token(NAME, OP, &req.client_token)?;
        check_tags(NAME, OP, &req.tags)?;
        let mut l = self.lock(OP).await?;
        if let Some((id, r)) = l
            .reg
            .volumes
            .iter()
            .find(|(_, r)| r.client_token.as_deref() == Some(req.client_token.as_str()))
        {
            if r.zone != req.zone || r.size_gib != req.size_gib {
                return Err(refused(
                    OP,
                    format!(
                        "client token {} was used for a volume of {} GiB in zone {} (IdempotentParameterMismatch)",
                        req.client_token, r.size_gib, r.zone
                    ),
                ));
            }
            return Ok(self.volume_view(id, r));
        }
        l.reg.next += 1;
        let id = format!("vol-{:08x}{:04x}", std::process::id(), l.reg.next);
        let dir = cfg.state_dir.join("volumes").join(&id);
        fs::create_dir_all(&dir)
            .map_err(|e| io_err(OP, &format!("create {}", dir.display()), e))?;
        let disk =
            fs::File::create(dir.join("disk.img")).map_err(|e| io_err(OP, "create disk.img", e))?;
        disk.set_len(req.size_gib * cfg.mib_per_gib * 1024 * 1024)
            .map_err(|e| io_err(OP, "size disk.img", e))?;
        let rec = VolumeRec {
            client_token: Some(req.client_token.clone()),
            zone: req.zone.clone(),
            size_gib: req.size_gib,
            tags: req.tags.clone(),
            attachment: None,
        };
        let view = self.volume_view(&id, &rec);
        l.reg.volumes.insert(id.clone(), rec);
        l.save().map_err(|e| io_err(OP, "write the registry", e))?;
        tracing::info!(volume = %id, zone = %req.zone, size_gib = req.size_gib, "volume created");
        Ok(view)
    }

    pub(super) async fn local_describe_volumes(
        &self,
        filter: &VolumeFilter,
    ) -> Result<Vec<Volume>, CloudError> {
        let l = self.lock("describe_volumes").await?;
        Ok(l.reg
            .volumes
            .iter()
            .filter(|(id, _)| filter.volume_ids.is_empty() || filter.volume_ids.contains(id))
            .filter(|(_, r)| match &filter.attached_to {
                Some(i) => r.attachment.as_ref().map(|a| &a.0) == Some(i),
                None => true,
            })
            .map(|(id, r)| self.volume_view(id, r))
            .collect())
    }

    pub(super) async fn local_attach(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), CloudError> {
        const OP: &str = "attach_volume";
        let mut l = self.lock(OP).await?;
        let inst = l
            .reg
            .instances
            .get(instance_id)
            .filter(|r| !r.terminated)
            .cloned()
            .ok_or_else(|| CloudError::NotFound {
                provider: NAME,
                what: "instance",
                id: instance_id.into(),
            })?;
        let vol = l.reg.volume_mut(volume_id)?;
        if device.is_empty() || device.contains('/') || device.starts_with('.') {
            return Err(refused(
                OP,
                format!("device name {device:?} must be a plain name like xvdf"),
            ));
        }
        match &vol.attachment {
            Some((i, d)) if i == instance_id && d == device => return Ok(()),
            Some((i, d)) => {
                return Err(refused(
                    OP,
                    format!("{volume_id} is in-use: attached to {i} as {d}; detach it first"),
                ))
            }
            None => {}
        }
        if vol.zone != inst.zone {
            return Err(refused(
                OP,
                format!(
                    "{volume_id} is in zone {}, instance {instance_id} in zone {}",
                    vol.zone, inst.zone
                ),
            ));
        }
        let link = self
            .instance_dir(instance_id)
            .expect("launch config")
            .join("dev")
            .join(device);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(|e| io_err(OP, "create dev/", e))?;
        }
        let target = self.volume_dir(volume_id).expect("launch config");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|e| io_err(OP, &format!("link {}", link.display()), e))?;
        vol.attachment = Some((instance_id.to_string(), device.to_string()));
        l.save().map_err(|e| io_err(OP, "write the registry", e))?;
        tracing::info!(volume = %volume_id, instance = %instance_id, device, "volume attached");
        Ok(())
    }

    pub(super) async fn local_detach(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), CloudError> {
        const OP: &str = "detach_volume";
        let mut l = self.lock(OP).await?;
        let vol = l.reg.volume_mut(volume_id)?;
        let Some((i, d)) = vol.attachment.clone() else {
            return Ok(());
        };
        if i != instance_id {
            return Err(refused(
                OP,
                format!("{volume_id} is attached to {i}, not {instance_id}"),
            ));
        }
        let link = self
            .instance_dir(&i)
            .expect("launch config")
            .join("dev")
            .join(&d);
        if !force && device_in_use(&link) {
            return Err(refused(
                OP,
                format!(
                    "{volume_id} is busy on {i} (a process holds files under it); use a forced detach for a dead or fenced instance"
                ),
            ));
        }
        let _ = fs::remove_file(&link);
        vol.attachment = None;
        l.save().map_err(|e| io_err(OP, "write the registry", e))?;
        tracing::info!(volume = %volume_id, instance = %instance_id, force, "volume detached");
        Ok(())
    }

    pub(super) async fn local_tag_volume(
        &self,
        volume_id: &str,
        new: &[Tag],
    ) -> Result<(), CloudError> {
        const OP: &str = "tag_volume";
        let mut l = self.lock(OP).await?;
        let vol = l.reg.volume_mut(volume_id)?;
        merge_tags(&mut vol.tags, new);
        l.save().map_err(|e| io_err(OP, "write the registry", e))
    }
}

/// Whether a process has a file open under the volume `link` points to (the
/// local stand-in for EC2's `busy` attachment), from `/proc/*/fd`.
fn device_in_use(link: &Path) -> bool {
    let Ok(target) = fs::canonicalize(link) else {
        return false;
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(t) = fs::read_link(fd.path()) {
                if t.starts_with(&target) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_device_is_not_busy() {
        let d = tempfile_dir();
        let v = d.join("vol");
        fs::create_dir_all(&v).unwrap();
        let link = d.join("xvdf");
        std::os::unix::fs::symlink(&v, &link).unwrap();
        assert!(!device_in_use(&link));
        let _held = fs::File::create(v.join("disk.img")).unwrap();
        assert!(device_in_use(&link));
        let _ = fs::remove_dir_all(&d);
    }

    /// Injected health lives in the registry: a second cloud over the same
    /// state directory (another controller) sees it. No namespace is made: the
    /// registered host does not run, so its checks do not apply.
    #[tokio::test]
    async fn injected_events_and_status_are_shared_through_the_registry() {
        let d = tempfile_dir();
        let cloud = || {
            let mut c = super::super::LocalConfig::new("ushealth-", 24);
            c.launch = Some(LocalLaunchConfig {
                state_dir: d.clone(),
                zone: "z".into(),
                bridge: "none".into(),
                gateway: "198.18.0.1".parse().unwrap(),
                addresses: vec![],
                boot_command: "true".into(),
                boot_delay_ms: 0,
                mib_per_gib: 1,
            });
            LocalCloud::new(c)
        };
        let (a, b) = (cloud(), cloud());
        let server = CloudServer {
            server_id: "fs1-a".into(),
            instance_id: "ushealth-a".into(),
            interface_id: "ushealth-a:eth0".into(),
            zone: "z".into(),
        };
        let ev = ScheduledEvent {
            code: crate::health::event_codes::SYSTEM_MAINTENANCE.into(),
            description: "scheduled host maintenance".into(),
            not_before_unix_ms: now_unix_ms() + 3_600_000,
            not_after_unix_ms: Some(now_unix_ms() + 7_200_000),
        };
        // Not registered: not watched, and nothing can be injected for it.
        assert_eq!(
            crate::Cloud::instance_health(&a, &server).await.unwrap(),
            InstanceHealth::unreported()
        );
        let e = a.inject_event("ushealth-a", ev.clone()).await.unwrap_err();
        assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
        a.register_instance("ushealth-a", "198.18.0.5", "z", vec![])
            .await
            .unwrap();
        a.inject_event("ushealth-a", ev.clone()).await.unwrap();
        a.set_system_status("ushealth-a", "impaired").await.unwrap();
        let h = crate::Cloud::instance_health(&b, &server).await.unwrap();
        assert_eq!(h.events, vec![ev]);
        assert_eq!(h.system_status, "impaired");
        assert_eq!(h.instance_status, "not-applicable");
        b.clear_events("ushealth-a").await.unwrap();
        assert!(crate::Cloud::instance_health(&a, &server)
            .await
            .unwrap()
            .events
            .is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "understudy-local-launch-{}-{}",
            std::process::id(),
            now_unix_ms()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
