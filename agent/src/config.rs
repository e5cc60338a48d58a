//! Agent configuration, read from a TOML file.
//!
//! ```toml
//! server_id = "fs1-a"
//! pair_id = "fs1"
//! role = "primary"                 # or "backup": as in the controller inventory
//! controllers = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
//! state_dir = "/var/lib/understudy/agent"
//! probe_listen = "0.0.0.0:7201"   # UDP: the leader's direct liveness probes
//!
//! [tls]                            # required: mutual TLS with the controllers ...
//! ca = "/etc/understudy/pki/ca.pem"
//! cert = "/etc/understudy/pki/agent-fs1-a.pem"   # names understudy:agent:fs1-a
//! key = "/etc/understudy/pki/agent-fs1-a.key"
//! # insecure = true               # ... or explicitly none (plain text)
//!
//! [drbd]
//! resource = "r0"
//! drbdsetup = "/usr/sbin/drbdsetup"   # any executable with the drbdsetup contract
//! drbdadm = "/usr/sbin/drbdadm"
//! # DRBD's fence-peer handler as configured in the DRBD resource; the agent
//! # self-check verifies it is executable (optional).
//! fence_peer_handler = "/usr/local/bin/understudy-fence-peer"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::AgentError;

/// The role this server has in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Backup,
}

/// How the agent reaches DRBD.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrbdConfig {
    /// The DRBD resource of the pair.
    pub resource: String,
    #[serde(default = "default_drbdsetup")]
    pub drbdsetup: PathBuf,
    #[serde(default = "default_drbdadm")]
    pub drbdadm: PathBuf,
    /// Arguments of the long-running observer. Without `--now`, drbdsetup prints
    /// the current state as `exists` lines, then `exists -`, then every change.
    #[serde(default = "default_events_args")]
    pub events_args: Vec<String>,
    /// Wait this long before restarting a dead observer (doubles up to 10x).
    #[serde(default = "default_restart_ms")]
    pub restart_backoff_ms: u64,
    /// Let the controller rewrite the resource for a new peer or volume (a
    /// replacement backup, a spare taking over volumes). Without it, such
    /// commands are refused.
    #[serde(default)]
    pub configure: Option<crate::actions::DrbdConfigureConfig>,
    /// The `understudy-fence-peer` program DRBD runs as its fence-peer handler
    /// (`handlers { fence-peer "..."; }`); when set, the self-check verifies it
    /// is executable.
    #[serde(default)]
    pub fence_peer_handler: Option<PathBuf>,
}

fn default_drbdsetup() -> PathBuf {
    "/usr/sbin/drbdsetup".into()
}
fn default_drbdadm() -> PathBuf {
    "/usr/sbin/drbdadm".into()
}
fn default_events_args() -> Vec<String> {
    ["events2", "--timestamps", "--statistics", "all"]
        .map(String::from)
        .to_vec()
}
fn default_restart_ms() -> u64 {
    200
}
fn default_report_refresh_ms() -> u64 {
    5000
}

fn default_heartbeat_ms() -> u64 {
    200
}
fn default_probe_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], DEFAULT_PROBE_PORT))
}
fn default_probe_max_per_sec() -> u32 {
    50
}
fn default_stall_ms() -> u64 {
    1000
}

/// The probe port agents listen on unless configured otherwise; the controller's
/// inventory has the same default (`probe_port` of a server).
pub const DEFAULT_PROBE_PORT: u16 = 7201;

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub server_id: String,
    pub pair_id: String,
    pub role: Role,
    /// Controller gRPC addresses (`host:port`); the agent finds the leader.
    pub controllers: Vec<String>,
    /// Where the agent keeps what must survive a restart (the highest epoch seen).
    pub state_dir: PathBuf,
    /// Heartbeat period until the controller asks for another.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A full report is re-sent at least this often even when nothing changed,
    /// so the controller always holds a recent one (a DRBD state that changed
    /// and came back between two reports is confirmed current, e.g. to lift an
    /// S1 outdated mark after a short loss). 0: only on change.
    #[serde(default = "default_report_refresh_ms")]
    pub report_refresh_ms: u64,
    pub drbd: DrbdConfig,
    /// What this server mounts, exports and claims when it serves. Without it,
    /// the agent only observes and reports.
    #[serde(default)]
    pub serving: Option<crate::actions::ServingConfig>,
    /// UDP address answering the leader's direct liveness probes (`probe.rs`);
    /// its port must be this server's `probe_port` in the controller inventory.
    #[serde(default = "default_probe_listen")]
    pub probe_listen: std::net::SocketAddr,
    /// At most this many probe replies a second.
    #[serde(default = "default_probe_max_per_sec")]
    pub probe_max_per_sec: u32,
    /// A session on which the leader has acknowledged heartbeats but then sent
    /// nothing for this long is stalled (TCP back-off after a network blip): the
    /// agent dials a fresh one.
    #[serde(default = "default_stall_ms")]
    pub stall_ms: u64,
    /// `[tls]`: the CA, this agent's certificate (naming `server_id`) and key,
    /// or `insecure = true`; required. `understudy-fence-peer` uses it too.
    #[serde(default)]
    pub tls: Option<understudy_tls::TlsSection>,
    /// The file this configuration was loaded from (set by [`AgentConfig::load`],
    /// not a key): the self-check verifies its permissions.
    #[serde(skip)]
    pub config_path: Option<PathBuf>,
}

impl AgentConfig {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            path: path.to_owned(),
            reason: format!("cannot read it: {e}"),
        })?;
        let mut c = Self::parse(&text).map_err(|reason| AgentError::Config {
            path: path.to_owned(),
            reason,
        })?;
        c.config_path = Some(path.to_owned());
        Ok(c)
    }

    /// Parse and validate configuration text; the error says what to fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if c.controllers.is_empty() {
            return Err("controllers is empty; list the controller gRPC addresses".into());
        }
        if c.server_id.is_empty() || c.pair_id.is_empty() {
            return Err("server_id and pair_id must not be empty".into());
        }
        if c.heartbeat_ms == 0 {
            return Err("heartbeat_ms must be above 0".into());
        }
        if c.stall_ms < 2 * c.heartbeat_ms {
            return Err(format!(
                "stall_ms ({}) must be at least twice heartbeat_ms ({})",
                c.stall_ms, c.heartbeat_ms
            ));
        }
        if c.probe_max_per_sec == 0 {
            return Err("probe_max_per_sec must be above 0".into());
        }
        c.tls_files().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// The TLS certificate files, `None` when `[tls] insecure = true`.
    pub fn tls_files(&self) -> Result<Option<understudy_tls::TlsFiles>, understudy_tls::TlsError> {
        understudy_tls::TlsSection::files(self.tls.as_ref())
    }

    /// What dialling a controller needs (the files read now): `None` plain text.
    pub fn client_tls(&self) -> Result<Option<understudy_tls::ClientTls>, AgentError> {
        let err = |e: understudy_tls::TlsError| AgentError::Config {
            path: self.config_path.clone().unwrap_or_default(),
            reason: e.to_string(),
        };
        match self.tls_files().map_err(err)? {
            Some(f) => Ok(Some(f.client().map_err(err)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_rejects_typos() {
        let good = r#"
server_id = "fs1-a"
pair_id = "fs1"
role = "primary"
controllers = ["127.0.0.1:7101"]
state_dir = "/tmp/a"
[drbd]
resource = "r0"
[tls]
insecure = true
"#;
        let c = AgentConfig::parse(good).unwrap();
        assert_eq!(c.role, Role::Primary);
        assert_eq!(c.drbd.events_args[0], "events2");
        assert!(!c.drbd.events_args.contains(&"--now".to_string()));
        assert_eq!(c.probe_listen, "0.0.0.0:7201".parse().unwrap());
        assert_eq!(c.stall_ms, 1000);
        assert_eq!(c.drbd.fence_peer_handler, None);
        assert_eq!(c.config_path, None);
        let c = AgentConfig::parse(&good.replace(
            "resource = \"r0\"",
            "resource = \"r0\"\nfence_peer_handler = \"/usr/local/bin/understudy-fence-peer\"",
        ))
        .unwrap();
        assert_eq!(
            c.drbd.fence_peer_handler.as_deref(),
            Some(Path::new("/usr/local/bin/understudy-fence-peer"))
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, good).unwrap();
        assert_eq!(
            AgentConfig::load(&file).unwrap().config_path.as_deref(),
            Some(file.as_path())
        );
        let c = AgentConfig::parse(&good.replace(
            "[drbd]",
            "probe_listen = \"198.18.0.2:7300\"\nprobe_max_per_sec = 5\n[drbd]",
        ))
        .unwrap();
        assert_eq!(c.probe_listen, "198.18.0.2:7300".parse().unwrap());
        assert_eq!(c.probe_max_per_sec, 5);
        let err =
            AgentConfig::parse(&good.replace("[drbd]", "stall_ms = 100\n[drbd]")).unwrap_err();
        assert!(err.contains("stall_ms"), "{err}");
        let err = AgentConfig::parse(&good.replace("role", "rol")).unwrap_err();
        assert!(
            err.contains("unknown field") || err.contains("missing field"),
            "{err}"
        );
        let err = AgentConfig::parse(&good.replace("[\"127.0.0.1:7101\"]", "[]")).unwrap_err();
        assert!(err.contains("controllers is empty"), "{err}");
        let err = AgentConfig::parse(&good.replace("\"primary\"", "\"boss\"")).unwrap_err();
        assert!(err.contains("unknown variant"), "{err}");
        // TLS is configured, or insecure explicitly; never by default.
        let err = AgentConfig::parse(&good.replace("[tls]\ninsecure = true\n", "")).unwrap_err();
        assert!(err.contains("no [tls] section"), "{err}");
        let c = AgentConfig::parse(&good.replace(
            "insecure = true",
            "ca = \"/pki/ca.pem\"\ncert = \"/pki/agent-fs1-a.pem\"\nkey = \"/pki/agent-fs1-a.key\"",
        ))
        .unwrap();
        assert_eq!(
            c.tls_files().unwrap().unwrap().cert,
            Path::new("/pki/agent-fs1-a.pem")
        );
        let err = AgentConfig::parse(&good.replace("insecure = true", "ca = \"/pki/ca.pem\""))
            .unwrap_err();
        assert!(err.contains("lacks cert"), "{err}");
    }
}
