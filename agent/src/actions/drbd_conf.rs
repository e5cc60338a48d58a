//! Rewriting the DRBD resource configuration when the controller names a new
//! peer or a new volume (`DrbdConfigure`): a replacement server becomes the
//! backup (it gets a fresh volume and the serving server as its peer; the
//! serving server gets it as its new peer), or a spare takes over a dead file
//! server's volumes (S9).
//!
//! Then, as an operator would: `drbdadm create-md --force RES` on a fresh volume
//! only, and `drbdadm adjust RES`, which brings the resource up, or switches a
//! running one to the new peer (DRBD's del-peer / new-peer / connect).
//!
//! Formats: `emulator` (the DRBD emulator's host TOML: `node_id`, the `[peer]`
//! table and, with a volume, `[device] backing_file` and `meta_dir` inside it)
//! and `drbd9` (a `.res` file with `on HOST { node-id; address; device; disk;
//! meta-disk internal; }` sections for this host and its peer). The agent takes
//! the file as it is (or [`DrbdConfigureConfig::template`] on a server that has
//! none yet) and changes only those keys.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::command::{self, CommandLine};
use super::drbd::{classify, DrbdActionsConfig};
use super::ActionError;

/// The file format of the resource configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfFormat {
    /// The DRBD emulator's host TOML (`tests/drbd-emu`).
    Emulator,
    /// A DRBD 9 resource file (`/etc/drbd.d/RES.res`).
    Drbd9,
}

fn default_port() -> u16 {
    7789
}
fn default_minor() -> u32 {
    1
}

/// `[drbd.configure]` of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrbdConfigureConfig {
    pub format: ConfFormat,
    /// The file the DRBD tools read (written atomically).
    pub path: PathBuf,
    /// Taken as the base when `path` does not exist yet (a freshly launched server).
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// Attached volumes appear here by device name (`/dev` on EC2: `/dev/xvdf`).
    pub volume_dir: PathBuf,
    /// drbd9 format: this host's replication address (`ip:port`).
    #[serde(default)]
    pub address: String,
    /// drbd9 format: the replication port (peer addresses carry their own).
    #[serde(default = "default_port")]
    pub port: u16,
    /// drbd9 format: the device minor (`/dev/drbdN`).
    #[serde(default = "default_minor")]
    pub minor: u32,
    /// drbd9 format: this host's name in `on HOST` (its `uname -n`).
    #[serde(default)]
    pub hostname: String,
}

/// What the controller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configure {
    pub node_id: u32,
    pub peer_hostname: String,
    pub peer_node_id: u32,
    pub peer_address: String,
    /// Put the resource on this attached volume (a device name such as `xvdf`).
    pub volume_device: Option<String>,
    pub create_md: bool,
}

impl Configure {
    fn validate(&self) -> Result<(), ActionError> {
        let bad = |reason: String| ActionError::Config {
            section: "drbd.configure",
            reason,
        };
        let plain = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        };
        if !plain(&self.peer_hostname) {
            return Err(bad(format!(
                "peer host name {:?} is not a plain name",
                self.peer_hostname
            )));
        }
        if self.peer_address.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(format!(
                "peer address {:?} is not ip:port",
                self.peer_address
            )));
        }
        if self.node_id == self.peer_node_id {
            return Err(bad(format!(
                "this host and its peer both have node id {}",
                self.node_id
            )));
        }
        if let Some(d) = &self.volume_device {
            if !plain(d) || d.contains(':') {
                return Err(bad(format!("volume device {d:?} is not a device name")));
            }
        }
        Ok(())
    }
}

/// The emulator's host TOML with the new node id, peer and volume.
pub fn emulator_config(
    base: &str,
    req: &Configure,
    volume: Option<&Path>,
) -> Result<String, String> {
    let mut t: toml::Table = base.parse().map_err(|e| format!("not TOML: {e}"))?;
    t.insert("node_id".into(), toml::Value::Integer(req.node_id.into()));
    let mut peer = toml::Table::new();
    peer.insert("hostname".into(), req.peer_hostname.clone().into());
    peer.insert(
        "node_id".into(),
        toml::Value::Integer(req.peer_node_id.into()),
    );
    peer.insert("address".into(), req.peer_address.clone().into());
    t.insert("peer".into(), toml::Value::Table(peer));
    if let Some(v) = volume {
        let dev = t
            .entry("device")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or("[device] is not a table")?;
        dev.insert(
            "backing_file".into(),
            v.join("disk.img").display().to_string().into(),
        );
        dev.insert("meta_dir".into(), v.join("md").display().to_string().into());
    }
    Ok(toml::to_string(&t).map_err(|e| e.to_string())?)
}

/// A DRBD 9 resource file for this host and its peer.
pub fn drbd9_config(
    resource: &str,
    cfg: &DrbdConfigureConfig,
    req: &Configure,
    disk: &Path,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# written by understudy-agent: the controller's DrbdConfigure"
    );
    let _ = writeln!(s, "resource {resource} {{");
    let _ = writeln!(s, "  net {{ protocol C; fencing resource-and-stonith; }}");
    let _ = writeln!(s, "  on {} {{", cfg.hostname);
    let _ = writeln!(s, "    node-id {};", req.node_id);
    let _ = writeln!(s, "    address {};", cfg.address);
    let _ = writeln!(s, "    device minor {};", cfg.minor);
    let _ = writeln!(s, "    disk {};", disk.display());
    let _ = writeln!(s, "    meta-disk internal;");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  on {} {{", req.peer_hostname);
    let _ = writeln!(s, "    node-id {};", req.peer_node_id);
    let _ = writeln!(s, "    address {};", req.peer_address);
    let _ = writeln!(s, "    device minor {};", cfg.minor);
    let _ = writeln!(s, "    disk {};", disk.display());
    let _ = writeln!(s, "    meta-disk internal;");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

fn write_atomically(path: &Path, text: &str) -> Result<(), std::io::Error> {
    let tmp = path.with_extension("understudy-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Rewrite the configuration, create metadata on a fresh volume, `drbdadm adjust`.
/// Returns what was done, for the pair's history.
pub async fn configure(
    drbd: &DrbdActionsConfig,
    cfg: &DrbdConfigureConfig,
    req: &Configure,
) -> Result<String, ActionError> {
    req.validate()?;
    let failed = |what: String| ActionError::DrbdFailed {
        resource: drbd.resource.clone(),
        command: "configure".into(),
        code: None,
        stderr: what,
    };
    let volume = req.volume_device.as_ref().map(|d| cfg.volume_dir.join(d));
    if let Some(v) = &volume {
        if !v.exists() {
            return Err(failed(format!(
                "volume {} is not attached here ({} does not exist); attach it first",
                req.volume_device.as_deref().unwrap_or_default(),
                v.display()
            )));
        }
    }
    let text = match cfg.format {
        ConfFormat::Emulator => {
            let base_path = if cfg.path.exists() {
                cfg.path.clone()
            } else {
                cfg.template.clone().ok_or_else(|| {
                    failed(format!(
                        "{} does not exist and [drbd.configure] names no template",
                        cfg.path.display()
                    ))
                })?
            };
            let base = std::fs::read_to_string(&base_path)
                .map_err(|e| failed(format!("read {}: {e}", base_path.display())))?;
            emulator_config(&base, req, volume.as_deref())
                .map_err(|e| failed(format!("{}: {e}", base_path.display())))?
        }
        ConfFormat::Drbd9 => {
            let disk = match &volume {
                Some(v) => v.clone(),
                None => {
                    return Err(failed(
                        "the drbd9 format needs the volume device on every configure".into(),
                    ))
                }
            };
            drbd9_config(&drbd.resource, cfg, req, &disk)
        }
    };
    let changed = std::fs::read_to_string(&cfg.path).ok().as_deref() != Some(text.as_str());
    if changed {
        write_atomically(&cfg.path, &text)
            .map_err(|e| failed(format!("write {}: {e}", cfg.path.display())))?;
    }
    let mut done = vec![format!(
        "{} {} (peer {} node {} at {})",
        cfg.path.display(),
        if changed { "written" } else { "unchanged" },
        req.peer_hostname,
        req.peer_node_id,
        req.peer_address
    )];
    let timeout = std::time::Duration::from_secs(drbd.timeout_secs);
    // Fresh metadata only on a volume whose resource is not up yet: a repeated
    // command (a new leader resuming the step) must not wipe a running resync.
    let up = if req.create_md {
        let cmd = CommandLine::new(&drbd.drbdadm)
            .arg("dstate")
            .arg(&drbd.resource);
        command::run(&cmd, timeout).await?.success()
    } else {
        false
    };
    if up {
        done.push("metadata kept: the resource is already up".into());
    } else if req.create_md {
        let cmd = CommandLine::new(&drbd.drbdadm)
            .arg("create-md")
            .arg("--force")
            .arg(&drbd.resource);
        let out = command::run(&cmd, timeout).await?;
        classify(drbd, "metadata created", &cmd, &out)?;
        done.push("drbdadm create-md".into());
    }
    let cmd = CommandLine::new(&drbd.drbdadm)
        .arg("adjust")
        .arg(&drbd.resource);
    let out = command::run(&cmd, timeout).await?;
    classify(drbd, "adjusted", &cmd, &out)?;
    done.push("drbdadm adjust".into());
    Ok(done.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Configure {
        Configure {
            node_id: 0,
            peer_hostname: "fs1-fsb".into(),
            peer_node_id: 1,
            peer_address: "198.18.3.11:7789".into(),
            volume_device: Some("xvdf".into()),
            create_md: true,
        }
    }

    #[test]
    fn emulator_config_changes_only_node_peer_and_volume() {
        let base = r#"resource = "r0"
hostname = "fs1-i1"
node_id = 5
minor = 1000
state_dir = "/s"
listen = "198.18.3.50:7789"

[peer]
hostname = "old"
node_id = 9
address = "198.18.3.10:7789"

[device]
mode = "block"
size_mib = 64
"#;
        let out = emulator_config(base, &req(), Some(Path::new("/v/xvdf"))).unwrap();
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["node_id"].as_integer(), Some(0));
        assert_eq!(t["hostname"].as_str(), Some("fs1-i1"));
        assert_eq!(t["listen"].as_str(), Some("198.18.3.50:7789"));
        assert_eq!(t["peer"]["hostname"].as_str(), Some("fs1-fsb"));
        assert_eq!(t["peer"]["node_id"].as_integer(), Some(1));
        assert_eq!(t["peer"]["address"].as_str(), Some("198.18.3.11:7789"));
        assert_eq!(t["device"]["mode"].as_str(), Some("block"));
        assert_eq!(
            t["device"]["backing_file"].as_str(),
            Some("/v/xvdf/disk.img")
        );
        assert_eq!(t["device"]["meta_dir"].as_str(), Some("/v/xvdf/md"));
        // Without a volume the device section is left alone.
        let out = emulator_config(base, &req(), None).unwrap();
        let t: toml::Table = out.parse().unwrap();
        assert!(t["device"].get("backing_file").is_none());
        assert!(emulator_config("not = [toml", &req(), None).is_err());
    }

    #[test]
    fn drbd9_resource_file() {
        let cfg = DrbdConfigureConfig {
            format: ConfFormat::Drbd9,
            path: "/etc/drbd.d/r0.res".into(),
            template: None,
            volume_dir: "/dev".into(),
            address: "10.0.0.5:7789".into(),
            port: 7789,
            minor: 1,
            hostname: "fs1-c".into(),
        };
        let text = drbd9_config("r0", &cfg, &req(), Path::new("/dev/xvdf"));
        assert_eq!(
            text,
            "# written by understudy-agent: the controller's DrbdConfigure\n\
resource r0 {\n  net { protocol C; fencing resource-and-stonith; }\n  on fs1-c {\n    node-id 0;\n    address 10.0.0.5:7789;\n    device minor 1;\n    disk /dev/xvdf;\n    meta-disk internal;\n  }\n  on fs1-fsb {\n    node-id 1;\n    address 198.18.3.11:7789;\n    device minor 1;\n    disk /dev/xvdf;\n    meta-disk internal;\n  }\n}\n"
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = req();
        r.peer_node_id = 0;
        assert!(r.validate().is_err());
        let mut r = req();
        r.peer_address = "nowhere".into();
        assert!(r.validate().is_err());
        let mut r = req();
        r.volume_device = Some("../etc".into());
        assert!(r.validate().is_err());
        let mut r = req();
        r.peer_hostname = "-rf".into();
        assert!(r.validate().is_err());
        assert!(req().validate().is_ok());
    }
}
