//! The local cloud: servers are network namespaces on this machine (the demo and
//! the namespace failover tests; see `tests/src/netns.rs`).
//!
//! Mapping to [`CloudServer`]:
//!
//! - `instance_id`: the network namespace name (`us1a2b-fsa`);
//! - `interface_id`: `"<netns>:<ifname>"` (`us1a2b-fsa:eth0`), a veth whose peer is
//!   in the root namespace (a bridge port);
//! - `zone`: free text; a move between servers of different zones is refused, as
//!   EC2 refuses to move a private IP across availability zones.
//!
//! Operations, all through `ip` (iproute2) and `kill` run with a timeout:
//!
//! - [`Cloud::move_client_ip`] removes the address from `from`'s interface and does
//!   **not** add it to `to`: like EC2, which moves the address at the VPC level
//!   only, the backup's agent claims it on its own interface in a later step. So
//!   right after a move, [`Cloud::ip_holders`] lists no holder.
//! - [`Cloud::ip_holders`] scans the namespaces whose names start with
//!   [`LocalConfig::netns_prefix`].
//! - [`Cloud::isolate`] takes the root-side peer of the server's veth down: the host
//!   cannot undo it from inside, like a security group outside the instance.
//! - [`Cloud::force_stop`] SIGKILLs every process in the namespace without waiting;
//!   [`Cloud::instance_state`] is `Running` while the namespace has processes,
//!   `Stopped` when it has none and `Terminated` when it is gone. With
//!   [`LocalConfig::kill_processes`] `= false` it kills nothing: the stop is
//!   requested but never lands, like an EC2 forced stop that has not taken effect
//!   yet, so a fenced server keeps running behind its cut cable (an isolate that
//!   does not kill). Tests use it to thaw a frozen file server after its failover
//!   and check that the controller stands it down (S10).
//! - [`Cloud::instance_health`] reads the registry of `[cloud.launch]`: tests
//!   schedule events and set a system status there
//!   ([`LocalCloud::inject_event`], [`LocalCloud::set_system_status`]) for every
//!   controller to see; without `[cloud.launch]` nothing is reported.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::{
    Cloud, CloudError, CloudServer, Instance, InstanceHealth, InstanceState, LaunchRequest, Tag,
    Volume, VolumeFilter, VolumeRequest,
};

mod launch;
pub use launch::LocalLaunchConfig;

const NAME: &str = "local";

fn default_timeout_ms() -> u64 {
    5000
}

/// Configuration of the local backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalConfig {
    /// Only namespaces whose names start with this are servers of this cloud
    /// (scanned by `ip_holders`, accepted by the other operations). Empty: all.
    pub netns_prefix: String,
    /// Prefix length of the client IP on the interfaces (24 for `198.18.N.0/24`).
    pub prefix_len: u8,
    /// Time limit of each `ip`/`kill` command, in milliseconds (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub command_timeout_ms: u64,
    /// The named network namespace (`ip netns`) that holds the bridge and the
    /// root side of the servers' veths, when the controller itself runs in a
    /// namespace of its own; `None`: the controller's own namespace.
    #[serde(default)]
    pub root_netns: Option<String>,
    /// Whether `force_stop` SIGKILLs the server's processes (default true). With
    /// false the stop never lands: the fence isolates (client IP removed, cable
    /// cut) without killing, like an EC2 isolate whose stop is still pending.
    #[serde(default = "default_kill_processes")]
    pub kill_processes: bool,
    /// Provisioning (`RunInstances`, volumes): see [`launch`]. Without it the
    /// local cloud only fences and moves the client IP.
    #[serde(default)]
    pub launch: Option<LocalLaunchConfig>,
}

fn default_kill_processes() -> bool {
    true
}

impl LocalConfig {
    /// A configuration with the default command timeout.
    pub fn new(netns_prefix: impl Into<String>, prefix_len: u8) -> LocalConfig {
        LocalConfig {
            netns_prefix: netns_prefix.into(),
            prefix_len,
            command_timeout_ms: default_timeout_ms(),
            kill_processes: default_kill_processes(),
            root_netns: None,
            launch: None,
        }
    }

    /// `ip` arguments run against the root side (the bridge's namespace).
    fn root_ip<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        match &self.root_netns {
            Some(ns) => ["-n", ns.as_str()]
                .into_iter()
                .chain(args.iter().copied())
                .collect(),
            None => args.to_vec(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct LocalCloud {
    cfg: LocalConfig,
}

/// One IPv4 address of an interface, from `ip -o -4 addr show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrEntry {
    pub ifname: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// One link, from `ip -o link show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// The peer's ifindex for a veth (`eth0@if7` -> 7), in the peer's namespace.
    pub peer_index: Option<u32>,
    /// Administratively up (`UP` among the flags).
    pub up: bool,
    /// `link-netns NAME` when iproute2 could name the peer's namespace.
    pub link_netns: Option<String>,
}

/// Parse `ip -o -4 addr show` output; lines that are not IPv4 addresses are skipped.
///
/// `2: eth0    inet 198.18.3.10/24 brd 198.18.3.255 scope global eth0\       valid_lft ...`
pub fn parse_addrs(text: &str) -> Vec<AddrEntry> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let ifname = words.get(1)?.trim_end_matches(':');
            let ifname = ifname.split('@').next()?;
            let i = words.iter().position(|w| *w == "inet")?;
            let (addr, len) = words.get(i + 1)?.split_once('/')?;
            Some(AddrEntry {
                ifname: ifname.to_string(),
                addr: addr.parse().ok()?,
                prefix_len: len.parse().ok()?,
            })
        })
        .collect()
}

/// Parse one line of `ip -o link show`.
///
/// `7: us1a2bv0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 ... link-netns us1a2b-fsa`
pub fn parse_link(line: &str) -> Option<LinkInfo> {
    let (index, rest) = line.split_once(": ")?;
    let (name_field, rest) = rest.split_once(": ")?;
    let (name, peer) = match name_field.split_once('@') {
        Some((n, p)) => (n, p.strip_prefix("if").and_then(|p| p.parse().ok())),
        None => (name_field, None),
    };
    let flags = rest.strip_prefix('<')?.split_once('>')?.0;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let link_netns = words
        .windows(2)
        .find(|w| w[0] == "link-netns")
        .map(|w| w[1].to_string());
    Some(LinkInfo {
        index: index.trim().parse().ok()?,
        name: name.to_string(),
        peer_index: peer,
        up: flags.split(',').any(|f| f == "UP"),
        link_netns,
    })
}

/// Parse `ip -o link show` output (several lines).
pub fn parse_links(text: &str) -> Vec<LinkInfo> {
    text.lines().filter_map(parse_link).collect()
}

/// Parse `ip netns list` output (`name (id: 3)` or `name`).
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Split an interface id `"<netns>:<ifname>"`.
pub fn parse_interface_id(id: &str) -> Option<(&str, &str)> {
    let (ns, ifname) = id.split_once(':')?;
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (ok(ns) && ok(ifname) && ns != "." && ns != "..").then_some((ns, ifname))
}

/// `ip addr del` said the address is not there.
fn addr_absent(stderr: &str) -> bool {
    stderr.contains("Cannot assign requested address") || stderr.contains("Address not found")
}

/// iproute2 said the device does not exist.
fn device_absent(stderr: &str) -> bool {
    stderr.contains("Cannot find device") || stderr.contains("does not exist")
}

/// iproute2 could not open the namespace.
fn netns_absent(stderr: &str) -> bool {
    stderr.contains("Cannot open network namespace")
}

/// Output of a finished command.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl LocalCloud {
    pub fn new(cfg: LocalConfig) -> LocalCloud {
        LocalCloud { cfg }
    }

    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    async fn exec(
        &self,
        op: &'static str,
        program: &str,
        args: &[&str],
    ) -> Result<Out, CloudError> {
        let cmdline = format!("{program} {}", args.join(" "));
        let limit = Duration::from_millis(self.cfg.command_timeout_ms);
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CloudError::Transient {
                provider: NAME,
                op,
                reason: format!(
                    "cannot run `{program}`: {e} (the local cloud needs iproute2 and procps, and root)"
                ),
            })?;
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| CloudError::Transient {
                provider: NAME,
                op,
                reason: format!("`{cmdline}` did not finish within {limit:?}"),
            })?
            .map_err(|e| CloudError::Transient {
                provider: NAME,
                op,
                reason: format!("`{cmdline}`: {e}"),
            })?;
        let out = Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        };
        tracing::debug!(op, %cmdline, ok = out.ok, stderr = %out.stderr, "local cloud command");
        Ok(out)
    }

    /// Run a command that must succeed; its stdout.
    async fn must(
        &self,
        op: &'static str,
        program: &str,
        args: &[&str],
    ) -> Result<String, CloudError> {
        let out = self.exec(op, program, args).await?;
        if out.ok {
            Ok(out.stdout)
        } else {
            Err(CloudError::Transient {
                provider: NAME,
                op,
                reason: format!("`{program} {}` failed: {}", args.join(" "), out.stderr),
            })
        }
    }

    async fn namespaces(&self, op: &'static str) -> Result<Vec<String>, CloudError> {
        Ok(parse_netns_list(
            &self.must(op, "ip", &["netns", "list"]).await?,
        ))
    }

    async fn netns_exists(&self, op: &'static str, ns: &str) -> Result<bool, CloudError> {
        Ok(self.namespaces(op).await?.iter().any(|n| n == ns))
    }

    /// The (namespace, interface) of a server, checked for consistency.
    fn locate<'a>(
        &self,
        op: &'static str,
        s: &'a CloudServer,
    ) -> Result<(&'a str, &'a str), CloudError> {
        let refused = |reason: String| CloudError::Refused {
            provider: NAME,
            op,
            reason,
        };
        let (ns, ifname) = parse_interface_id(&s.interface_id).ok_or_else(|| {
            refused(format!(
                "{}: interface id {:?} is not \"<netns>:<ifname>\" (e.g. \"us1a2b-fsa:eth0\")",
                s.server_id, s.interface_id
            ))
        })?;
        if ns != s.instance_id {
            return Err(refused(format!(
                "{}: interface {} is not in namespace {} (the instance id)",
                s.server_id, s.interface_id, s.instance_id
            )));
        }
        if !ns.starts_with(&self.cfg.netns_prefix) {
            return Err(refused(format!(
                "{}: namespace {ns} is outside this cloud (prefix {:?})",
                s.server_id, self.cfg.netns_prefix
            )));
        }
        Ok((ns, ifname))
    }

    /// The link of `ifname` in `ns`; NotFound when the namespace or device is absent.
    async fn ns_link(
        &self,
        op: &'static str,
        ns: &str,
        ifname: &str,
    ) -> Result<LinkInfo, CloudError> {
        let out = self
            .exec(op, "ip", &["-n", ns, "-o", "link", "show", "dev", ifname])
            .await?;
        if !out.ok {
            if netns_absent(&out.stderr) {
                return Err(CloudError::NotFound {
                    provider: NAME,
                    what: "network namespace",
                    id: ns.to_string(),
                });
            }
            if device_absent(&out.stderr) {
                return Err(CloudError::NotFound {
                    provider: NAME,
                    what: "interface",
                    id: format!("{ns}:{ifname}"),
                });
            }
            return Err(CloudError::Transient {
                provider: NAME,
                op,
                reason: format!("`ip -n {ns} link show dev {ifname}` failed: {}", out.stderr),
            });
        }
        parse_links(&out.stdout)
            .into_iter()
            .next()
            .ok_or_else(|| CloudError::Transient {
                provider: NAME,
                op,
                reason: format!("unexpected `ip -o link` output in {ns}: {:?}", out.stdout),
            })
    }

    /// The root-namespace end of the server's veth.
    async fn root_peer(&self, op: &'static str, s: &CloudServer) -> Result<LinkInfo, CloudError> {
        let (ns, ifname) = self.locate(op, s)?;
        let link = self.ns_link(op, ns, ifname).await?;
        let peer = link.peer_index.ok_or_else(|| CloudError::Refused {
            provider: NAME,
            op,
            reason: format!(
                "{}: {ns}:{ifname} has no peer link (not a veth): cannot cut it from outside",
                s.server_id
            ),
        })?;
        let root = parse_links(
            &self
                .must(op, "ip", &self.cfg.root_ip(&["-o", "link", "show"]))
                .await?,
        );
        root.into_iter()
            .find(|l| {
                l.index == peer
                    && l.peer_index == Some(link.index)
                    && l.link_netns.as_deref().is_none_or(|n| n == ns)
            })
            .ok_or_else(|| CloudError::NotFound {
                provider: NAME,
                what: "root-namespace veth peer",
                id: format!("{ns}:{ifname} (peer ifindex {peer})"),
            })
    }

    async fn pids(&self, op: &'static str, ns: &str) -> Result<Vec<u32>, CloudError> {
        Ok(self
            .must(op, "ip", &["netns", "pids", ns])
            .await?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

#[async_trait::async_trait]
impl Cloud for LocalCloud {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn move_client_ip(
        &self,
        client_ip: &str,
        from: &CloudServer,
        to: &CloudServer,
    ) -> Result<(), CloudError> {
        const OP: &str = "move_client_ip";
        let ip: Ipv4Addr = client_ip.parse().map_err(|_| CloudError::Refused {
            provider: NAME,
            op: OP,
            reason: format!("{client_ip:?} is not an IPv4 address"),
        })?;
        if from.zone != to.zone {
            return Err(CloudError::Refused {
                provider: NAME,
                op: OP,
                reason: format!(
                    "{} is in {} and {} in {}: a private IP cannot move across zones",
                    from.server_id, from.zone, to.server_id, to.zone
                ),
            });
        }
        let (from_ns, from_if) = self.locate(OP, from)?;
        let (to_ns, to_if) = self.locate(OP, to)?;
        // The destination must exist (EC2 refuses an unknown interface).
        self.ns_link(OP, to_ns, to_if).await?;

        let cidr = format!("{ip}/{}", self.cfg.prefix_len);
        let out = self
            .exec(
                OP,
                "ip",
                &["-n", from_ns, "addr", "del", &cidr, "dev", from_if],
            )
            .await?;
        if !out.ok {
            if addr_absent(&out.stderr) {
                tracing::debug!(%ip, ns = from_ns, "client IP already absent from the old holder");
            } else if netns_absent(&out.stderr) || device_absent(&out.stderr) {
                // A server that no longer exists holds no address.
                tracing::warn!(%ip, ns = from_ns, ifname = from_if, stderr = %out.stderr,
                    "old holder's namespace or interface is gone: nothing to remove");
                return Ok(());
            } else {
                return Err(CloudError::Transient {
                    provider: NAME,
                    op: OP,
                    reason: format!(
                        "`ip -n {from_ns} addr del {cidr} dev {from_if}` failed: {}",
                        out.stderr
                    ),
                });
            }
        }
        // Verify: no interface of the old holder has it any more.
        let out = self
            .exec(OP, "ip", &["-n", from_ns, "-o", "-4", "addr", "show"])
            .await?;
        if !out.ok {
            if netns_absent(&out.stderr) {
                return Ok(());
            }
            return Err(CloudError::Unverified {
                provider: NAME,
                op: OP,
                reason: format!("cannot list {from_ns}'s addresses: {}", out.stderr),
            });
        }
        let still: Vec<String> = parse_addrs(&out.stdout)
            .into_iter()
            .filter(|a| a.addr == ip)
            .map(|a| format!("{from_ns}:{}/{}", a.ifname, a.prefix_len))
            .collect();
        if !still.is_empty() {
            return Err(CloudError::Unverified {
                provider: NAME,
                op: OP,
                reason: format!(
                    "{ip} is still on {} (configured prefix length {})",
                    still.join(", "),
                    self.cfg.prefix_len
                ),
            });
        }
        Ok(())
    }

    async fn ip_holders(&self, client_ip: &str) -> Result<Vec<String>, CloudError> {
        const OP: &str = "ip_holders";
        let ip: Ipv4Addr = client_ip.parse().map_err(|_| CloudError::Refused {
            provider: NAME,
            op: OP,
            reason: format!("{client_ip:?} is not an IPv4 address"),
        })?;
        let mut holders = BTreeSet::new();
        for ns in self.namespaces(OP).await? {
            if !ns.starts_with(&self.cfg.netns_prefix) {
                continue;
            }
            let out = self
                .exec(OP, "ip", &["-n", &ns, "-o", "-4", "addr", "show"])
                .await?;
            if !out.ok {
                if netns_absent(&out.stderr) {
                    continue; // deleted during the scan: holds nothing
                }
                return Err(CloudError::Transient {
                    provider: NAME,
                    op: OP,
                    reason: format!("cannot list {ns}'s addresses: {}", out.stderr),
                });
            }
            for a in parse_addrs(&out.stdout) {
                if a.addr == ip {
                    holders.insert(format!("{ns}:{}", a.ifname));
                }
            }
        }
        Ok(holders.into_iter().collect())
    }

    async fn isolate(&self, server: &CloudServer) -> Result<(), CloudError> {
        const OP: &str = "isolate";
        let peer = self.root_peer(OP, server).await?;
        if peer.up {
            self.must(
                OP,
                "ip",
                &self
                    .cfg
                    .root_ip(&["link", "set", "dev", &peer.name, "down"]),
            )
            .await?;
        }
        if !self.is_isolated(server).await? {
            return Err(CloudError::Unverified {
                provider: NAME,
                op: OP,
                reason: format!(
                    "{}'s root-side link {} is still up",
                    server.server_id, peer.name
                ),
            });
        }
        tracing::info!(server = %server.server_id, link = %peer.name, "isolated (root-side link down)");
        Ok(())
    }

    async fn is_isolated(&self, server: &CloudServer) -> Result<bool, CloudError> {
        Ok(!self.root_peer("is_isolated", server).await?.up)
    }

    async fn force_stop(&self, server: &CloudServer) -> Result<(), CloudError> {
        const OP: &str = "force_stop";
        let (ns, _) = self.locate(OP, server)?;
        if !self.netns_exists(OP, ns).await? {
            tracing::info!(server = %server.server_id, ns, "force_stop: namespace already gone");
            return Ok(());
        }
        if !self.cfg.kill_processes {
            tracing::warn!(server = %server.server_id, ns,
                "force_stop: kill_processes = false, the stop is requested but does not land: its processes keep running behind the isolation");
            return Ok(());
        }
        let pids = self.pids(OP, ns).await?;
        if pids.is_empty() {
            return Ok(());
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut args = vec!["-KILL"];
        args.extend(pids.iter().map(String::as_str));
        let out = self.exec(OP, "kill", &args).await?;
        // A process that exited meanwhile is fine; anything else is not.
        let other: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("No such process"))
            .collect();
        if !other.is_empty() {
            return Err(CloudError::Transient {
                provider: NAME,
                op: OP,
                reason: format!("kill -KILL in {ns}: {}", other.join("; ")),
            });
        }
        tracing::info!(server = %server.server_id, ns, pids = %pids.join(","), "force_stop: SIGKILL sent");
        Ok(())
    }

    async fn instance_state(&self, server: &CloudServer) -> Result<InstanceState, CloudError> {
        const OP: &str = "instance_state";
        let (ns, _) = self.locate(OP, server)?;
        if !self.netns_exists(OP, ns).await? {
            return Ok(InstanceState::Terminated);
        }
        let out = self.exec(OP, "ip", &["netns", "pids", ns]).await?;
        if !out.ok {
            if netns_absent(&out.stderr) {
                return Ok(InstanceState::Terminated);
            }
            return Err(CloudError::Transient {
                provider: NAME,
                op: OP,
                reason: format!("`ip netns pids {ns}` failed: {}", out.stderr),
            });
        }
        Ok(if out.stdout.split_whitespace().next().is_some() {
            InstanceState::Running
        } else {
            InstanceState::Stopped
        })
    }

    async fn instance_health(&self, server: &CloudServer) -> Result<InstanceHealth, CloudError> {
        self.local_instance_health(server).await
    }

    async fn launch_zone(&self) -> Result<String, CloudError> {
        self.local_launch_zone().await
    }

    async fn launch_instance(&self, req: &LaunchRequest) -> Result<Instance, CloudError> {
        self.local_launch(req).await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, CloudError> {
        self.local_describe_instance(instance_id).await
    }

    async fn terminate_instance(&self, instance_id: &str) -> Result<(), CloudError> {
        self.local_terminate(instance_id).await
    }

    async fn create_volume(&self, req: &VolumeRequest) -> Result<Volume, CloudError> {
        self.local_create_volume(req).await
    }

    async fn describe_volumes(&self, filter: &VolumeFilter) -> Result<Vec<Volume>, CloudError> {
        self.local_describe_volumes(filter).await
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), CloudError> {
        self.local_attach(volume_id, instance_id, device).await
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), CloudError> {
        self.local_detach(volume_id, instance_id, force).await
    }

    async fn tag_volume(&self, volume_id: &str, tags: &[Tag]) -> Result<(), CloudError> {
        self.local_tag_volume(volume_id, tags).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
2: eth0    inet 198.18.3.10/24 brd 198.18.3.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
2: eth0    inet 198.18.3.100/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever\n\
3: eth1@if9    inet 10.0.0.1/16 scope global eth1\n\
4: eth2    inet6 fe80::1/64 scope link\n\
garbage\n";
        let a = parse_addrs(text);
        assert_eq!(a.len(), 4);
        assert_eq!(
            a[2],
            AddrEntry {
                ifname: "eth0".into(),
                addr: "198.18.3.100".parse().unwrap(),
                prefix_len: 24
            }
        );
        assert_eq!(a[3].ifname, "eth1");
        assert_eq!(a[3].prefix_len, 16);
        assert!(parse_addrs("").is_empty());
    }

    #[test]
    fn links() {
        let ns = "2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 9a:a2:13:6f:f9:7b brd ff:ff:ff:ff:ff:ff link-netnsid 0";
        assert_eq!(
            parse_link(ns),
            Some(LinkInfo {
                index: 2,
                name: "eth0".into(),
                peer_index: Some(7),
                up: true,
                link_netns: None,
            })
        );
        let root = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n\
7: us1a2bv0@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue master us1a2bbr state DOWN mode DEFAULT group default qlen 1000\\    link/ether 6a:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff link-netns us1a2b-fsa\n\
8: us1a2bbr: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state DOWN mode DEFAULT group default qlen 1000\\    link/ether 6a:00:00:00:00:02 brd ff:ff:ff:ff:ff:ff\n";
        let l = parse_links(root);
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].name, "us1a2bv0");
        assert_eq!(l[1].peer_index, Some(2));
        assert!(!l[1].up, "no UP flag: administratively down");
        assert_eq!(l[1].link_netns.as_deref(), Some("us1a2b-fsa"));
        assert_eq!(l[2].name, "us1a2bbr");
        assert_eq!(l[2].peer_index, None);
        assert!(l[2].up, "NO-CARRIER but UP");
        // a veth whose peer was deleted
        let none = parse_link("5: eth0@NONE: <BROADCAST,MULTICAST> mtu 1500 state DOWN").unwrap();
        assert_eq!(none.peer_index, None);
        assert_eq!(parse_link("not a link line"), None);
    }

    #[test]
    fn netns_list_and_interface_ids() {
        assert_eq!(
            parse_netns_list("us1a2b-fsb (id: 1)\nus1a2b-fsa (id: 0)\nplain\n"),
            vec!["us1a2b-fsb", "us1a2b-fsa", "plain"]
        );
        assert_eq!(
            parse_interface_id("us1a2b-fsa:eth0"),
            Some(("us1a2b-fsa", "eth0"))
        );
        for bad in [
            "eth0", ":eth0", "ns:", "-n:eth0", "ns:-x", "a/b:eth0", "..:eth0", "ns:e th0",
        ] {
            assert_eq!(parse_interface_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn iproute2_error_words() {
        assert!(addr_absent("Error: ipv4: Address not found."));
        assert!(addr_absent(
            "RTNETLINK answers: Cannot assign requested address"
        ));
        assert!(device_absent("Cannot find device \"nope\""));
        assert!(device_absent("Device \"nope\" does not exist."));
        assert!(netns_absent(
            "Cannot open network namespace \"x\": No such file or directory"
        ));
        assert!(!addr_absent("RTNETLINK answers: Operation not permitted"));
    }

    fn srv(ns: &str, ifname: &str, zone: &str) -> CloudServer {
        CloudServer {
            server_id: ns.into(),
            instance_id: ns.into(),
            interface_id: format!("{ns}:{ifname}"),
            zone: zone.into(),
        }
    }

    #[tokio::test]
    async fn refusals_before_any_command() {
        let c = LocalCloud::new(LocalConfig::new("ustest-", 24));
        let a = srv("ustest-a", "eth0", "z1");
        let b = srv("ustest-b", "eth0", "z2");
        let e = c.move_client_ip("198.18.1.100", &a, &b).await.unwrap_err();
        assert!(matches!(e, CloudError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("across zones"), "{e}");
        let e = c.move_client_ip("nope", &a, &a).await.unwrap_err();
        assert!(e.to_string().contains("not an IPv4 address"), "{e}");
        let outside = srv("other-a", "eth0", "z1");
        let e = c.isolate(&outside).await.unwrap_err();
        assert!(e.to_string().contains("outside this cloud"), "{e}");
        let mut wrong = srv("ustest-a", "eth0", "z1");
        wrong.interface_id = "ustest-b:eth0".into();
        let e = c.force_stop(&wrong).await.unwrap_err();
        assert!(e.to_string().contains("is not in namespace"), "{e}");
        let mut bad = srv("ustest-a", "eth0", "z1");
        bad.interface_id = "eth0".into();
        let e = c.instance_state(&bad).await.unwrap_err();
        assert!(e.to_string().contains("<netns>:<ifname>"), "{e}");
    }
}
