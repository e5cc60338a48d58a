//! Host configuration: one TOML file per emulated host (`HOST.toml`).
//!
//! The daemon (`drbd-emu daemon --config HOST.toml`) and the two CLIs
//! (`DRBD_EMU_CONFIG=HOST.toml drbd-emu drbdsetup ...`) read the same file.
//! Unknown keys are rejected (`deny_unknown_fields`) and the values are
//! validated so that a typo fails loudly instead of producing a half-working
//! emulated host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Environment variable naming the host config for the CLIs.
pub const CONFIG_ENV: &str = "DRBD_EMU_CONFIG";

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected keys.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// The TOML error (names the key / line).
        source: toml::de::Error,
    },
    /// Keys are present but their values are inconsistent.
    #[error("invalid config {path}: {msg}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The file changed a key a running daemon cannot take over.
    #[error("{key} changed in {path}; that takes a restart of the emulator daemon (drbdadm down, stop the daemon, start it again)")]
    NeedsRestart {
        /// The config path.
        path: PathBuf,
        /// The key (`node_id`, `[device]` ...).
        key: &'static str,
    },
}

/// One emulated host of the pair.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// DRBD resource name (e.g. `r0`).
    pub resource: String,
    /// This host's name: the `conn-name` the peer shows for it.
    pub hostname: String,
    /// This host's DRBD node id.
    pub node_id: u32,
    /// Device minor (`/dev/drbdMINOR`), only reported.
    pub minor: u32,
    /// Control socket, lock file and (unless `[device] meta_dir` says
    /// otherwise) the persisted metadata live here.
    pub state_dir: PathBuf,
    /// The emulated backing device of the directory mode: a plain
    /// directory tree (unused, and optional, in block mode).
    #[serde(default)]
    pub data_dir: PathBuf,
    /// Replication TCP endpoint of this host (`IP:port`).
    pub listen: SocketAddr,
    /// Bring the resource up when the daemon starts (as after a boot with
    /// DRBD enabled). Default `true`.
    #[serde(default = "default_true")]
    pub auto_up: bool,
    /// The other host of the pair.
    pub peer: PeerConfig,
    /// Timing knobs.
    #[serde(default)]
    pub tuning: Tuning,
    /// DRBD `net { }` options (the fencing policy).
    #[serde(default)]
    pub net: NetOptions,
    /// DRBD `handlers { }`: commands run with `sh -c`.
    #[serde(default)]
    pub handlers: Handlers,
    /// The replicated device: directory mode (default) or block mode.
    #[serde(default)]
    pub device: DeviceOptions,
    /// The file this config was read from (`DRBD_CONF` of the handlers).
    #[serde(skip)]
    pub path: PathBuf,
}

/// DRBD's `fencing` policy (`net { fencing ...; }` in DRBD 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fencing {
    /// No fencing: the fence-peer handler never runs.
    #[default]
    DontCare,
    /// Run the fence-peer handler when a Primary loses its peer (and
    /// before a disconnected Secondary is promoted); I/O keeps going.
    ResourceOnly,
    /// Like `resource-only`, and a Primary that loses its peer suspends
    /// I/O (`suspended:fencing`) until the handler outdated the peer.
    ResourceAndStonith,
}

impl Fencing {
    /// The policy as DRBD spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Fencing::DontCare => "dont-care",
            Fencing::ResourceOnly => "resource-only",
            Fencing::ResourceAndStonith => "resource-and-stonith",
        }
    }
}

impl std::fmt::Display for Fencing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// DRBD's replication protocol (`net { protocol A|B|C; }`), block mode only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Protocol {
    /// Asynchronous: a write completes once it is on the local disk and
    /// handed to the network.
    A,
    /// Memory synchronous: ... once the peer has received it.
    B,
    /// Synchronous (default): ... once the peer has written it.
    #[default]
    C,
}

/// `[net]`: every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetOptions {
    /// `dont-care` (default), `resource-only`, `resource-and-stonith`.
    pub fencing: Fencing,
    /// `"A"`, `"B"` or `"C"` (default); only the block mode has write
    /// acknowledgements to hold back.
    pub protocol: Protocol,
}

/// What backs the replicated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceMode {
    /// `data_dir` is replicated by scanning it (the original emulator).
    #[default]
    Directory,
    /// A fixed-size block device: one file served through FUSE, with a
    /// loop device on it, replicated write by write.
    Block,
}

/// `[device]`: every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceOptions {
    /// `directory` (default) or `block`.
    pub mode: DeviceMode,
    /// Device size in MiB (block mode; required there).
    pub size_mib: u64,
    /// The backing "disk" of the block mode (created sparse at `size_mib`
    /// if missing). Default `STATE_DIR/backing.img`.
    pub backing_file: Option<PathBuf>,
    /// Where the FUSE file system serving the device file is mounted.
    /// Default `STATE_DIR/fuse`; the device file is `MOUNT_DIR/drbd-emu-device`.
    pub mount_dir: Option<PathBuf>,
    /// Set up a loop device on the device file (default true).
    pub loop_device: Option<bool>,
    /// A symlink created here points at the loop device (`/dev/loopN`),
    /// the `/dev/drbdMINOR` stand-in. The path is also written to
    /// `STATE_DIR/device`.
    pub device_link: Option<PathBuf>,
    /// Where the on-disk metadata lives (DRBD's internal meta data: disk
    /// state, generations, the out-of-sync bitmap, the peer manifest).
    /// Default `state_dir`. Pointing it next to `backing_file` makes a
    /// "volume" directory that can move to another host with its state.
    pub meta_dir: Option<PathBuf>,
    /// Block mode: the daemon unshares its mount namespace (and makes
    /// every mount in it private) before it mounts its FUSE file system,
    /// so that no other process sees that mount. The loop device on it is
    /// global. Default false.
    pub private_mount_namespace: bool,
}

/// Name of the device file inside `mount_dir` (also how leaked loop
/// devices of crashed daemons are recognised).
pub const DEVICE_FILE_NAME: &str = "drbd-emu-device";

/// Size of one bit of the out-of-sync bitmap.
pub const BM_BLOCK: u64 = 4096;

/// `[handlers]`: every key is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Handlers {
    /// `fence-peer` handler, run with `sh -c`.
    pub fence_peer: Option<String>,
    /// `unfence-peer` handler, run with `sh -c`.
    pub unfence_peer: Option<String>,
    /// Emulator-only bound on one handler run (DRBD waits forever): the
    /// handler's process group is killed after this and the run counts
    /// as failed. 0 = no bound.
    pub fence_peer_timeout_ms: u64,
}

impl Default for Handlers {
    fn default() -> Self {
        Handlers {
            fence_peer: None,
            unfence_peer: None,
            fence_peer_timeout_ms: 60_000,
        }
    }
}

/// The peer host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's hostname (our `conn-name` for it).
    pub hostname: String,
    /// The peer's node id.
    pub node_id: u32,
    /// The peer's replication endpoint (`IP:port`).
    pub address: SocketAddr,
}

/// Timing knobs; every key is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Keepalive ping interval.
    pub ping_interval_ms: u64,
    /// No frame from the peer within this => `NetworkFailure`.
    pub ping_timeout_ms: u64,
    /// Pause between connection attempts.
    pub connect_retry_ms: u64,
    /// How often a Primary rescans `data_dir` for changes.
    pub scan_interval_ms: u64,
    /// Replication / resync rate limit in KiB/s; 0 = unlimited.
    pub resync_rate_kib: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            ping_interval_ms: 200,
            ping_timeout_ms: 600,
            connect_retry_ms: 200,
            scan_interval_ms: 50,
            resync_rate_kib: 0,
        }
    }
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        cfg.validate().map_err(|msg| ConfigError::Invalid {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !name_ok(&self.resource) {
            return Err(format!(
                "resource name {:?} is not a valid name",
                self.resource
            ));
        }
        if !name_ok(&self.hostname) || !name_ok(&self.peer.hostname) {
            return Err("hostname and peer.hostname must be non-empty names".into());
        }
        if self.node_id == self.peer.node_id {
            return Err(format!(
                "node_id and peer.node_id are both {}; they must differ",
                self.node_id
            ));
        }
        for (k, id) in [
            ("node_id", self.node_id),
            ("peer.node_id", self.peer.node_id),
        ] {
            if id > 31 {
                return Err(format!("{k} {id} is not a DRBD node id (0..=31)"));
            }
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err("state_dir must be set".into());
        }
        if self.is_block() {
            if self.device.size_mib == 0 {
                return Err("device.size_mib must be > 0 in block mode".into());
            }
            if self.device.size_mib > 1 << 20 {
                return Err("device.size_mib must be at most 1048576 (1 TiB)".into());
            }
        } else {
            if self.data_dir.as_os_str().is_empty() {
                return Err("data_dir must be set (directory mode)".into());
            }
            if self.device.size_mib != 0
                || self.device.backing_file.is_some()
                || self.device.mount_dir.is_some()
                || self.device.loop_device.is_some()
                || self.device.device_link.is_some()
                || self.device.private_mount_namespace
            {
                return Err("device.size_mib, backing_file, mount_dir, loop_device, device_link and private_mount_namespace need device.mode = \"block\"".into());
            }
            if self
                .device
                .meta_dir
                .as_ref()
                .is_some_and(|d| d.starts_with(&self.data_dir))
            {
                return Err(
                    "device.meta_dir must not be inside data_dir (it would be replicated)".into(),
                );
            }
        }
        if self
            .device
            .meta_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err("device.meta_dir must not be empty (leave it out instead)".into());
        }
        if !self.is_block() && self.state_dir == self.data_dir {
            return Err("state_dir and data_dir must be different directories".into());
        }
        for (k, v) in [
            ("handlers.fence_peer", &self.handlers.fence_peer),
            ("handlers.unfence_peer", &self.handlers.unfence_peer),
        ] {
            if v.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(format!("{k} must not be empty (leave it out instead)"));
            }
        }
        let t = &self.tuning;
        for (k, v) in [
            ("ping_interval_ms", t.ping_interval_ms),
            ("connect_retry_ms", t.connect_retry_ms),
            ("scan_interval_ms", t.scan_interval_ms),
        ] {
            if v == 0 {
                return Err(format!("tuning.{k} must be > 0"));
            }
        }
        if t.ping_timeout_ms <= t.ping_interval_ms {
            return Err(format!(
                "tuning.ping_timeout_ms ({}) must be larger than ping_interval_ms ({})",
                t.ping_timeout_ms, t.ping_interval_ms
            ));
        }
        Ok(())
    }

    /// Path of the daemon's control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("ctl.sock")
    }

    /// The directory of the on-disk metadata (`[device] meta_dir`,
    /// default `state_dir`).
    pub fn meta_dir(&self) -> PathBuf {
        self.device
            .meta_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.clone())
    }

    /// Path of the persisted disk metadata.
    pub fn meta_path(&self) -> PathBuf {
        self.meta_dir().join("meta.json")
    }

    /// Block mode (`[device] mode = "block"`).
    pub fn is_block(&self) -> bool {
        self.device.mode == DeviceMode::Block
    }

    /// Device size in bytes (block mode).
    pub fn device_bytes(&self) -> u64 {
        self.device.size_mib << 20
    }

    /// The backing file of the block mode.
    pub fn backing_file(&self) -> PathBuf {
        self.device
            .backing_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("backing.img"))
    }

    /// The FUSE mount point of the block mode.
    pub fn mount_dir(&self) -> PathBuf {
        self.device
            .mount_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("fuse"))
    }

    /// The device file served through FUSE (block mode).
    pub fn device_file(&self) -> PathBuf {
        self.mount_dir().join(DEVICE_FILE_NAME)
    }

    /// Path of the persisted out-of-sync bitmap (block mode).
    pub fn bitmap_path(&self) -> PathBuf {
        self.meta_dir().join("bitmap")
    }

    /// What the handlers see as the backing device.
    pub fn backing_dev(&self) -> PathBuf {
        if self.is_block() {
            self.backing_file()
        } else {
            self.data_dir.clone()
        }
    }

    /// Path of the lock file held by a running daemon (it holds the
    /// daemon's pid).
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    /// Lock file of the metadata ("volume") when `meta_dir` is not
    /// `state_dir`: held as well, so that two hosts never attach the same
    /// volume at once.
    pub fn meta_lock_path(&self) -> Option<PathBuf> {
        let d = self.meta_dir();
        (d != self.state_dir).then(|| d.join("meta.lock"))
    }

    /// Path of the log of a daemon started by `drbdadm up`/`adjust`
    /// ("module autoload").
    pub fn daemon_log_path(&self) -> PathBuf {
        self.state_dir.join("daemon.log")
    }

    /// Reads this config's file again (as drbdadm reads it for every
    /// command); refuses a file that changed a key only a restart can
    /// change ([`Config::fixed_key_changed`]).
    pub fn reload(&self) -> Result<Config, ConfigError> {
        let new = Config::load(&self.path)?;
        match self.fixed_key_changed(&new) {
            Some(key) => Err(ConfigError::NeedsRestart {
                path: self.path.clone(),
                key,
            }),
            None => Ok(new),
        }
    }

    /// Which key differs in a way that needs a daemon restart (resource,
    /// node id, minor, directories, `[device]`), if any. Everything else
    /// (`[peer]`, `listen`, `hostname`, `[tuning]`, `[net]`, `[handlers]`,
    /// `auto_up`) can be applied to a running daemon.
    pub fn fixed_key_changed(&self, new: &Config) -> Option<&'static str> {
        if self.resource != new.resource {
            Some("resource")
        } else if self.node_id != new.node_id {
            Some("node_id")
        } else if self.minor != new.minor {
            Some("minor")
        } else if self.state_dir != new.state_dir {
            Some("state_dir")
        } else if self.data_dir != new.data_dir {
            Some("data_dir")
        } else if self.device != new.device {
            Some("[device]")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
resource = "r0"
hostname = "fs1"
node_id = 0
minor = 1000
state_dir = "/tmp/x/fs1/drbd"
data_dir = "/tmp/x/fs1/data"
listen = "127.0.0.1:7789"
[peer]
hostname = "fs2"
node_id = 1
address = "127.0.0.1:7790"
[tuning]
resync_rate_kib = 100
"#;

    /// Found by `config_props`: these errors did not say which key to fix.
    #[test]
    fn zero_intervals_and_bad_node_ids_name_their_key() {
        for (key, edit) in [
            (
                "tuning.ping_interval_ms",
                "resync_rate_kib = 100\nping_interval_ms = 0",
            ),
            (
                "tuning.connect_retry_ms",
                "resync_rate_kib = 100\nconnect_retry_ms = 0",
            ),
            (
                "tuning.scan_interval_ms",
                "resync_rate_kib = 100\nscan_interval_ms = 0",
            ),
        ] {
            let text = GOOD.replace("resync_rate_kib = 100", edit);
            let err = Config::parse(&text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
        let err = Config::parse(
            &GOOD.replace("node_id = 1", "node_id = 32"),
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("peer.node_id 32"), "{err}");
    }

    #[test]
    fn parses_good_config_with_defaults() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.resource, "r0");
        assert_eq!(c.peer.node_id, 1);
        assert_eq!(c.tuning.resync_rate_kib, 100);
        assert_eq!(c.tuning.ping_timeout_ms, 600);
        assert!(c.auto_up);
        assert_eq!(c.net.fencing, Fencing::DontCare);
        assert!(c.handlers.fence_peer.is_none());
        assert_eq!(c.handlers.fence_peer_timeout_ms, 60_000);
    }

    #[test]
    fn parses_fencing_and_handlers() {
        let text = format!(
            "{GOOD}[net]\nfencing = \"resource-and-stonith\"\n[handlers]\nfence_peer = \"/bin/true --x\"\nunfence_peer = \"/bin/true\"\nfence_peer_timeout_ms = 500\n"
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(c.net.fencing, Fencing::ResourceAndStonith);
        assert_eq!(c.handlers.fence_peer.as_deref(), Some("/bin/true --x"));
        assert_eq!(c.handlers.unfence_peer.as_deref(), Some("/bin/true"));
        assert_eq!(c.handlers.fence_peer_timeout_ms, 500);
        let c = Config::parse(
            &format!("{GOOD}[net]\nfencing = \"resource-only\"\n"),
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.net.fencing, Fencing::ResourceOnly);
        for bad in [
            "[net]\nfencing = \"stonith\"\n",
            "[net]\nfencin = \"dont-care\"\n",
            "[handlers]\nfence-peer = \"/bin/true\"\n",
            "[handlers]\nfence_peer = \" \"\n",
        ] {
            let e = Config::parse(&format!("{GOOD}{bad}"), Path::new("x.toml"));
            assert!(e.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parses_block_mode() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert!(!c.is_block());
        assert_eq!(c.net.protocol, Protocol::C);
        let text = GOOD.replace("data_dir = \"/tmp/x/fs1/data\"\n", "")
            + "[device]\nmode = \"block\"\nsize_mib = 64\ndevice_link = \"/tmp/x/drbd1000\"\n[net]\nprotocol = \"A\"\n";
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert!(c.is_block());
        assert_eq!(c.device_bytes(), 64 << 20);
        assert_eq!(c.net.protocol, Protocol::A);
        assert_eq!(c.backing_file(), Path::new("/tmp/x/fs1/drbd/backing.img"));
        assert_eq!(
            c.device_file(),
            Path::new("/tmp/x/fs1/drbd/fuse/drbd-emu-device")
        );
        for bad in [
            "[device]\nmode = \"block\"\n",
            "[device]\nmode = \"blocks\"\nsize_mib = 1\n",
            "[device]\nsize_mib = 1\n",
            "[net]\nprotocol = \"D\"\n",
        ] {
            let e = Config::parse(&format!("{GOOD}{bad}"), Path::new("x.toml"));
            assert!(e.is_err(), "{bad} accepted");
        }
        // directory mode still needs data_dir
        let e = Config::parse(
            &GOOD.replace("data_dir = \"/tmp/x/fs1/data\"\n", ""),
            Path::new("x.toml"),
        );
        assert!(e.is_err());
    }

    #[test]
    fn meta_dir_and_private_mount_namespace() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        // default: everything in state_dir, as before
        assert_eq!(c.meta_path(), Path::new("/tmp/x/fs1/drbd/meta.json"));
        assert_eq!(c.bitmap_path(), Path::new("/tmp/x/fs1/drbd/bitmap"));
        assert_eq!(c.meta_lock_path(), None);
        assert!(!c.device.private_mount_namespace);
        let block = GOOD.replace("data_dir = \"/tmp/x/fs1/data\"\n", "")
            + "[device]\nmode = \"block\"\nsize_mib = 8\nbacking_file = \"/vol/a/disk.img\"\nmeta_dir = \"/vol/a\"\nprivate_mount_namespace = true\n";
        let c = Config::parse(&block, Path::new("x.toml")).unwrap();
        assert_eq!(c.meta_path(), Path::new("/vol/a/meta.json"));
        assert_eq!(c.bitmap_path(), Path::new("/vol/a/bitmap"));
        assert_eq!(c.meta_lock_path().unwrap(), Path::new("/vol/a/meta.lock"));
        assert_eq!(c.socket_path(), Path::new("/tmp/x/fs1/drbd/ctl.sock"));
        assert_eq!(c.lock_path(), Path::new("/tmp/x/fs1/drbd/lock"));
        assert!(c.device.private_mount_namespace);
        // directory mode: meta_dir allowed (not inside data_dir), the
        // namespace option is block-only
        let c = Config::parse(
            &format!("{GOOD}[device]\nmeta_dir = \"/vol/b\"\n"),
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.meta_path(), Path::new("/vol/b/meta.json"));
        for bad in [
            "[device]\nmeta_dir = \"/tmp/x/fs1/data/meta\"\n",
            "[device]\nmeta_dir = \"\"\n",
            "[device]\nprivate_mount_namespace = true\n",
        ] {
            let e = Config::parse(&format!("{GOOD}{bad}"), Path::new("x.toml"));
            assert!(e.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn which_keys_a_running_daemon_can_take_over() {
        let a = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        let peer = GOOD
            .replace("hostname = \"fs2\"", "hostname = \"fs3\"")
            .replace("127.0.0.1:7790", "127.0.0.1:7791")
            .replace("resync_rate_kib = 100", "resync_rate_kib = 5");
        let b = Config::parse(&peer, Path::new("x.toml")).unwrap();
        assert_eq!(a.fixed_key_changed(&b), None);
        assert_ne!(a.peer, b.peer);
        let c = Config::parse(&GOOD.replace("minor = 1000", "minor = 7"), Path::new("x")).unwrap();
        assert_eq!(a.fixed_key_changed(&c), Some("minor"));
        let d = Config::parse(
            &GOOD.replace("node_id = 0", "node_id = 2"),
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(a.fixed_key_changed(&d), Some("node_id"));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let bad = GOOD.replace("minor = 1000", "minor = 1000\nminr = 3");
        let e = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("minr"), "{e}");
        let bad = GOOD.replace("node_id = 1", "node_id = 0");
        let e = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("must differ"), "{e}");
        let bad = GOOD.replace("[tuning]", "[tuning]\nping_timeout_ms = 100");
        assert!(Config::parse(&bad, Path::new("x.toml")).is_err());
    }
}
