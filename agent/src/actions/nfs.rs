//! NFS exports of the replicated filesystem, with two backends:
//!
//! - **nfs-ganesha** (user space; exercised for real in tests): the agent writes a
//!   ganesha configuration with exactly one NFSv4 export and runs
//!   `ganesha.nfsd -F -f CONF -L LOG -p PIDFILE -N LEVEL` as a supervised child.
//!   Export starts it (same configuration already running: no-op; different:
//!   restart), unexport stops it (SIGTERM, then SIGKILL). NFSv4 client state is
//!   kept in `RecoveryRoot` on the replicated volume and both servers of a pair
//!   share `Server_Scope`, so clients reclaim their state after a failover.
//!   SIGHUP is not used for changes: ganesha 4.3 reloads only EXPORT blocks on
//!   SIGHUP, and a changed Path under the same Export_Id is rejected and leaves
//!   the export withdrawn. A restart takes well under a second.
//!   Ganesha is started in its own process group and is not killed when the
//!   agent exits (a serving primary keeps serving, S6); a restarted agent finds
//!   it again through the pid file.
//! - **kernel nfsd** (production): `exportfs -o OPTIONS,fsid=N CLIENT:PATH`,
//!   `exportfs -u CLIENT:PATH`, and `exportfs -v` to see what is served.
//!
//! `exports()` lists the paths NFSv4 clients mount: the `Pseudo` path for
//! ganesha, the exported directory for kernel nfsd.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use understudy_proto::SelfCheck;

use super::command::{self, unescape_octal, CommandLine};
use super::ActionError;
use crate::selfcheck::{fail, pass, ERROR};

/// Which NFS server exports the filesystem, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum NfsConfig {
    Ganesha(GaneshaConfig),
    Kernel(KernelNfsConfig),
}

/// The one export of a pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// The exported directory: the mountpoint or a directory under it.
    pub path: PathBuf,
    /// NFSv4 pseudo path clients mount with ganesha, e.g. `/data`.
    pub pseudo: String,
    /// Ganesha Export_Id (1..65535).
    #[serde(default = "default_export_id")]
    pub export_id: u16,
    /// Stable filesystem id, the same on both servers of the pair: kernel
    /// `fsid=N`; ganesha `Filesystem_id = <fsid_major>.N`.
    #[serde(default = "default_fsid")]
    pub fsid: u32,
    /// Who may mount: `*`, a host, an address or a network (`10.0.0.0/16`).
    #[serde(default = "default_clients")]
    pub clients: Vec<String>,
}

fn default_export_id() -> u16 {
    1
}
fn default_fsid() -> u32 {
    1
}
fn default_clients() -> Vec<String> {
    vec!["*".into()]
}

/// Characters that would break out of a quoted ganesha value or a config line.
fn unsafe_for_config(s: &str) -> bool {
    s.chars().any(|c| {
        c == '"' || c == '\\' || c == ';' || c == '{' || c == '}' || c == '#' || c.is_control()
    })
}

impl ExportSpec {
    pub fn new(path: impl Into<PathBuf>, pseudo: impl Into<String>) -> Self {
        ExportSpec {
            path: path.into(),
            pseudo: pseudo.into(),
            export_id: default_export_id(),
            fsid: default_fsid(),
            clients: default_clients(),
        }
    }

    pub fn validate(&self) -> Result<(), ActionError> {
        let bad = |reason: String| ActionError::Config {
            section: "export",
            reason,
        };
        let path = self.path.to_string_lossy();
        if !self.path.is_absolute() || unsafe_for_config(&path) {
            return Err(bad(format!(
                "path {path:?} must be absolute and free of quotes, backslashes, ; {{ }} #"
            )));
        }
        if !self.pseudo.starts_with('/')
            || self.pseudo == "/"
            || unsafe_for_config(&self.pseudo)
            || self.pseudo.chars().any(char::is_whitespace)
        {
            return Err(bad(format!(
                "pseudo {:?} must be an absolute path other than / without spaces or quotes, e.g. \"/data\"",
                self.pseudo
            )));
        }
        if self.export_id == 0 {
            return Err(bad(
                "export_id 0 is ganesha's pseudo root; use 1 or more".into()
            ));
        }
        if self.clients.is_empty() {
            return Err(bad("clients is empty; use [\"*\"] for everyone".into()));
        }
        for c in &self.clients {
            if c.is_empty()
                || unsafe_for_config(c)
                || c.contains(['(', ')', ',', ':'])
                || c.chars().any(char::is_whitespace)
            {
                return Err(bad(format!(
                    "client {c:?} is not a host, address, network or *"
                )));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- ganesha ---

/// nfs-ganesha run by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaneshaConfig {
    #[serde(default = "default_ganesha")]
    pub ganesha_nfsd: PathBuf,
    /// Where the agent writes ganesha.conf, ganesha.log, ganesha.pid and
    /// ganesha.out (its stdout/stderr). Local to the server.
    pub state_dir: PathBuf,
    /// The address ganesha listens on (0.0.0.0: all).
    #[serde(default = "default_bind_addr")]
    pub bind_addr: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The same on both servers of the pair (use the pair id), so that clients
    /// see one server and reclaim their state after a failover.
    pub server_scope: String,
    /// NFSv4 recovery state; must be on the replicated volume. Default:
    /// `<export path>/.understudy/nfs-recovery`.
    #[serde(default)]
    pub recovery_root: Option<PathBuf>,
    /// NFSv4 lease, seconds (ganesha accepts 1..=120).
    #[serde(default = "default_lease")]
    pub lease_lifetime_secs: u32,
    /// Grace period after a start, seconds (0..=180, at least the lease).
    /// Ganesha ends it early once every known client has reclaimed.
    #[serde(default = "default_grace")]
    pub grace_period_secs: u32,
    /// First part of ganesha's `Filesystem_id = MAJOR.<export fsid>`.
    #[serde(default = "default_fsid_major")]
    pub fsid_major: u32,
    /// Ganesha's `-N` level, e.g. NIV_EVENT, NIV_WARN, NIV_DEBUG.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// How long ganesha may take until its port accepts connections.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_secs: u64,
    /// How long ganesha may take to exit after SIGTERM before SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u64,
    /// Sends signals to ganesha.
    #[serde(default = "default_kill")]
    pub kill: PathBuf,
}

fn default_ganesha() -> PathBuf {
    "/usr/bin/ganesha.nfsd".into()
}
fn default_bind_addr() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn default_port() -> u16 {
    2049
}
fn default_lease() -> u32 {
    10
}
fn default_grace() -> u32 {
    15
}
fn default_fsid_major() -> u32 {
    100
}
fn default_log_level() -> String {
    "NIV_EVENT".into()
}
fn default_start_timeout() -> u64 {
    // Generous: a start is resumed by the next export rather than restarted,
    // and ganesha has been seen to need 12-24 s (it reads block devices while
    // loading its exports, and one did not answer), so only a start that is
    // truly stuck is killed.
    30
}
fn default_stop_timeout() -> u64 {
    10
}
fn default_kill() -> PathBuf {
    "/usr/bin/kill".into()
}

impl GaneshaConfig {
    /// A configuration with every default.
    pub fn new(state_dir: impl Into<PathBuf>, server_scope: impl Into<String>) -> Self {
        GaneshaConfig {
            ganesha_nfsd: default_ganesha(),
            state_dir: state_dir.into(),
            bind_addr: default_bind_addr(),
            port: default_port(),
            server_scope: server_scope.into(),
            recovery_root: None,
            lease_lifetime_secs: default_lease(),
            grace_period_secs: default_grace(),
            fsid_major: default_fsid_major(),
            log_level: default_log_level(),
            start_timeout_secs: default_start_timeout(),
            stop_timeout_secs: default_stop_timeout(),
            kill: default_kill(),
        }
    }

    pub fn validate(&self) -> Result<(), ActionError> {
        let bad = |reason: String| ActionError::Config {
            section: "nfs (ganesha)",
            reason,
        };
        if !self.state_dir.is_absolute() {
            return Err(bad("state_dir must be an absolute path".into()));
        }
        if self.port == 0 {
            return Err(bad("port must be above 0".into()));
        }
        if self.server_scope.is_empty()
            || unsafe_for_config(&self.server_scope)
            || self.server_scope.chars().any(char::is_whitespace)
        {
            return Err(bad(format!(
                "server_scope {:?} must be a non-empty word (use the pair id)",
                self.server_scope
            )));
        }
        if let Some(r) = &self.recovery_root {
            if !r.is_absolute() || unsafe_for_config(&r.to_string_lossy()) {
                return Err(bad(
                    "recovery_root must be an absolute path without quotes".into()
                ));
            }
        }
        if !(1..=120).contains(&self.lease_lifetime_secs) {
            return Err(bad("lease_lifetime_secs must be 1..=120".into()));
        }
        if self.grace_period_secs > 180 || self.grace_period_secs < self.lease_lifetime_secs {
            return Err(bad(
                "grace_period_secs must be at least lease_lifetime_secs and at most 180".into(),
            ));
        }
        if !self.log_level.starts_with("NIV_")
            || !self.log_level[4..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
        {
            return Err(bad(format!(
                "log_level {:?} is not a ganesha level such as NIV_EVENT",
                self.log_level
            )));
        }
        if self.start_timeout_secs == 0 || self.stop_timeout_secs == 0 {
            return Err(bad(
                "start_timeout_secs and stop_timeout_secs must be above 0".into(),
            ));
        }
        Ok(())
    }

    pub fn config_path(&self) -> PathBuf {
        self.state_dir.join("ganesha.conf")
    }
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("ganesha.log")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.state_dir.join("ganesha.pid")
    }
    /// ganesha's stdout and stderr (messages before its log is open).
    pub fn out_path(&self) -> PathBuf {
        self.state_dir.join("ganesha.out")
    }

    /// Where NFSv4 recovery state goes for `spec`.
    pub fn recovery_root_for(&self, spec: &ExportSpec) -> PathBuf {
        self.recovery_root
            .clone()
            .unwrap_or_else(|| spec.path.join(".understudy").join("nfs-recovery"))
    }

    /// The address to probe for "ganesha is serving".
    pub fn probe_addr(&self) -> SocketAddr {
        let ip = match self.bind_addr {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            a => a,
        };
        SocketAddr::new(ip, self.port)
    }
}

/// `ganesha.nfsd -F -f CONF -L LOG -p PIDFILE -N LEVEL`.
pub fn ganesha_command(cfg: &GaneshaConfig) -> CommandLine {
    CommandLine::new(&cfg.ganesha_nfsd)
        .arg("-F")
        .arg("-f")
        .arg(cfg.config_path())
        .arg("-L")
        .arg(cfg.log_path())
        .arg("-p")
        .arg(cfg.pid_path())
        .arg("-N")
        .arg(&cfg.log_level)
}

/// The ganesha configuration serving `spec`.
pub fn render_ganesha_config(cfg: &GaneshaConfig, spec: &ExportSpec) -> String {
    let everyone = spec.clients.iter().any(|c| c == "*");
    let mut s = String::new();
    s.push_str("# Written by the Understudy agent on every export; edits are lost.\n");
    s.push_str("NFS_CORE_PARAM {\n");
    s.push_str("    Protocols = 4;\n");
    s.push_str("    Enable_NLM = false;\n");
    s.push_str("    Enable_RQUOTA = false;\n");
    s.push_str("    Enable_UDP = false;\n");
    s.push_str(&format!("    NFS_Port = {};\n", cfg.port));
    s.push_str(&format!("    Bind_addr = {};\n", cfg.bind_addr));
    s.push_str("}\n");
    s.push_str("NFS_KRB5 {\n    Active_krb5 = false;\n}\n");
    s.push_str("NFSV4 {\n");
    s.push_str("    RecoveryBackend = fs;\n");
    s.push_str(&format!(
        "    RecoveryRoot = \"{}\";\n",
        cfg.recovery_root_for(spec).display()
    ));
    s.push_str(&format!("    Grace_Period = {};\n", cfg.grace_period_secs));
    s.push_str(&format!(
        "    Lease_Lifetime = {};\n",
        cfg.lease_lifetime_secs
    ));
    s.push_str(&format!("    Server_Scope = \"{}\";\n", cfg.server_scope));
    s.push_str("    Only_Numeric_Owners = true;\n");
    s.push_str("}\n");
    s.push_str("EXPORT {\n");
    s.push_str(&format!("    Export_Id = {};\n", spec.export_id));
    s.push_str(&format!("    Path = \"{}\";\n", spec.path.display()));
    s.push_str(&format!("    Pseudo = \"{}\";\n", spec.pseudo));
    s.push_str(if everyone {
        "    Access_Type = RW;\n"
    } else {
        "    Access_Type = None;\n"
    });
    s.push_str("    Squash = No_Root_Squash;\n");
    s.push_str("    SecType = sys;\n");
    s.push_str("    Protocols = 4;\n");
    s.push_str("    Transports = TCP;\n");
    s.push_str(&format!(
        "    Filesystem_id = {}.{};\n",
        cfg.fsid_major, spec.fsid
    ));
    if !everyone {
        s.push_str("    CLIENT {\n");
        s.push_str(&format!("        Clients = {};\n", spec.clients.join(", ")));
        s.push_str("        Access_Type = RW;\n");
        s.push_str("    }\n");
    }
    s.push_str("    FSAL {\n        Name = VFS;\n    }\n");
    s.push_str("}\n");
    s
}

/// The `Pseudo` paths of a ganesha configuration.
pub fn ganesha_pseudo_paths(conf: &str) -> Vec<String> {
    conf.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("Pseudo")?.trim_start().strip_prefix('=')?;
            let v = rest.trim().trim_end_matches(';').trim().trim_matches('"');
            Some(v.to_string())
        })
        .collect()
}

fn proc_alive(pid: u32) -> bool {
    // A zombie has exited; only its parent has not collected it yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether `pid` is a ganesha started with configuration file `conf`.
fn is_our_ganesha(pid: u32, conf: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let argv0_ok = args
        .first()
        .map(|a| String::from_utf8_lossy(a).contains("ganesha"))
        .unwrap_or(false);
    let conf = conf.as_os_str().as_encoded_bytes();
    let conf_ok = args.windows(2).any(|w| w[0] == b"-f" && w[1] == conf);
    argv0_ok && conf_ok && proc_alive(pid)
}

async fn port_answers(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// How long an NFS server may take to answer the NULL call before it counts as
/// not serving (a frozen ganesha still completes TCP handshakes in the kernel).
pub const NFS_NULL_TIMEOUT: Duration = Duration::from_millis(500);

/// An NFSv4 NULL call (ONC RPC program 100003, version 4, procedure 0, AUTH_NONE)
/// over TCP: what a client's first ping is. `Ok` only for an accepted, successful
/// reply to our xid within `timeout`.
pub async fn nfs_null(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let xid: u32 = nanos ^ std::process::id().rotate_left(16);
    let words: [u32; 10] = [xid, 0, 2, 100_003, 4, 0, 0, 0, 0, 0];
    let mut msg = Vec::with_capacity(44);
    msg.extend_from_slice(&(0x8000_0000u32 | 40).to_be_bytes());
    for w in words {
        msg.extend_from_slice(&w.to_be_bytes());
    }
    let call = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(&msg).await.map_err(|e| format!("send: {e}"))?;
        let mut mark = [0u8; 4];
        s.read_exact(&mut mark)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
        if !(24..=4096).contains(&len) {
            return Err(format!("reply of {len} bytes is not an RPC reply"));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)
            .await
            .map_err(|e| format!("read: {e}"))?;
        parse_null_reply(&body, xid)
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Check an RPC reply body: our xid, REPLY, MSG_ACCEPTED, SUCCESS.
fn parse_null_reply(body: &[u8], xid: u32) -> Result<(), String> {
    let word = |i: usize| -> Result<u32, String> {
        body.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "truncated RPC reply".to_string())
    };
    if word(0)? != xid {
        return Err("reply to another call".into());
    }
    if word(1)? != 1 {
        return Err("not an RPC reply".into());
    }
    if word(2)? != 0 {
        return Err("RPC call denied".into());
    }
    let verf_len = word(4)? as usize;
    let at = 5 + verf_len.div_ceil(4);
    match word(at)? {
        0 => Ok(()),
        2 => Err("NFS version 4 is not served (PROG_MISMATCH)".into()),
        n => Err(format!("RPC accept status {n}")),
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// nfs-ganesha as a supervised child.
#[derive(Debug)]
pub struct GaneshaBackend {
    cfg: GaneshaConfig,
    child: Option<tokio::process::Child>,
    /// The last NFS NULL call's outcome for a pid, taken by the next
    /// `self_checks` so one status refresh asks ganesha once, not twice.
    last_null: Option<(u32, Result<(), String>)>,
    /// A ganesha spawned here whose port has not answered yet.
    starting: Option<Starting>,
}

/// A ganesha start in progress: it outlives an `export` call that the
/// controller's step bound cut short, so the next call resumes the wait.
#[derive(Debug)]
struct Starting {
    pid: u32,
    since: Instant,
    /// ganesha.log's length at the spawn: what it logged since is its own.
    log_start: u64,
    /// The configuration it was started with.
    config: String,
}

impl GaneshaBackend {
    pub fn new(cfg: GaneshaConfig) -> Result<Self, ActionError> {
        cfg.validate()?;
        Ok(GaneshaBackend {
            cfg,
            child: None,
            last_null: None,
            starting: None,
        })
    }

    pub fn config(&self) -> &GaneshaConfig {
        &self.cfg
    }

    /// The pid of the running ganesha of this configuration: our child, or
    /// one found through the pid file (started by an earlier agent).
    pub fn running_pid(&mut self) -> Option<u32> {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => {
                    if let Some(pid) = child.id() {
                        return Some(pid);
                    }
                }
                Ok(Some(status)) => {
                    tracing::warn!(%status, "nfs-ganesha exited");
                    self.child = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check nfs-ganesha");
                    self.child = None;
                }
            }
        }
        let pid: u32 = std::fs::read_to_string(self.cfg.pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_our_ganesha(pid, &self.cfg.config_path()).then_some(pid)
    }

    /// Serve `spec`. Already serving it: no-op. Serving something else:
    /// restart with the new configuration.
    pub async fn export(&mut self, spec: &ExportSpec) -> Result<(), ActionError> {
        spec.validate()?;
        let text = render_ganesha_config(&self.cfg, spec);
        if !spec.path.is_dir() {
            return Err(ActionError::NotADirectory {
                path: spec.path.clone(),
                reason: "missing or not a directory".into(),
                hint: "mount the replicated filesystem before exporting it",
            });
        }
        let recovery = self.cfg.recovery_root_for(spec);
        for dir in [&self.cfg.state_dir, &recovery] {
            std::fs::create_dir_all(dir).map_err(|source| ActionError::Io {
                context: format!("cannot create {}", dir.display()),
                source,
            })?;
        }
        let conf = self.cfg.config_path();
        let running = self.running_pid();
        if let Some(st) = &self.starting {
            if running == Some(st.pid) && st.config == text {
                tracing::info!(
                    pid = st.pid,
                    started_ms_ago = st.since.elapsed().as_millis() as u64,
                    "nfs-ganesha is still starting: waiting for it"
                );
                return self.finish_start().await;
            }
        }
        self.starting = None;
        if let Some(pid) = running {
            let same = std::fs::read_to_string(&conf)
                .map(|t| t == text)
                .unwrap_or(false);
            let answers = nfs_null(self.cfg.probe_addr(), NFS_NULL_TIMEOUT).await;
            if same && answers.is_ok() {
                return Ok(());
            }
            match answers {
                Err(why) if same => {
                    // Frozen or wedged: it would not act on SIGTERM either.
                    tracing::warn!(pid, %why, "nfs-ganesha does not answer an NFS NULL call: killing and restarting it");
                    self.signal(pid, "KILL").await?;
                    if !self.wait_gone(pid, Duration::from_secs(5)).await {
                        return Err(ActionError::GaneshaStop {
                            pid,
                            reason: "it survived SIGKILL for 5s (stuck in the kernel on I/O?)"
                                .into(),
                        });
                    }
                    let _ = std::fs::remove_file(self.cfg.pid_path());
                }
                _ => {
                    tracing::info!(pid, "nfs-ganesha configuration changed: restarting it");
                    self.stop(pid).await?;
                }
            }
        }
        let tmp = self.cfg.state_dir.join("ganesha.conf.tmp");
        std::fs::write(&tmp, &text)
            .and_then(|_| std::fs::rename(&tmp, &conf))
            .map_err(|source| ActionError::Io {
                context: format!("cannot write {}", conf.display()),
                source,
            })?;
        self.start(text).await
    }

    /// What ganesha.log holds past byte `log_start`.
    fn log_since(&self, log_start: u64) -> String {
        std::fs::read(self.cfg.log_path())
            .map(|b| String::from_utf8_lossy(&b[(log_start as usize).min(b.len())..]).into_owned())
            .unwrap_or_default()
    }

    /// ganesha's startup failure, with what it logged since `log_start`.
    fn start_error(&self, log_start: u64, reason: String) -> ActionError {
        let new_log = self.log_since(log_start);
        let out = std::fs::read_to_string(self.cfg.out_path()).unwrap_or_default();
        let mut log_tail = tail(&new_log, 25);
        if !out.trim().is_empty() {
            log_tail.push_str(&format!("\n(stdout/stderr:) {}", tail(&out, 10)));
        }
        if log_tail.trim().is_empty() {
            log_tail = "(nothing)".into();
        }
        ActionError::GaneshaStart {
            addr: self.cfg.probe_addr().to_string(),
            reason,
            log: self.cfg.log_path(),
            log_tail,
        }
    }

    /// Start ganesha with `config`, the configuration just written.
    async fn start(&mut self, config: String) -> Result<(), ActionError> {
        let addr = self.cfg.probe_addr();
        let log_start = std::fs::metadata(self.cfg.log_path())
            .map(|m| m.len())
            .unwrap_or(0);
        if port_answers(addr).await {
            return Err(self.start_error(
                log_start,
                format!(
                    "another process already listens on {addr} (see `ss -ltnp sport = :{}`)",
                    addr.port()
                ),
            ));
        }
        let out = std::fs::File::create(self.cfg.out_path()).map_err(|source| ActionError::Io {
            context: format!("cannot create {}", self.cfg.out_path().display()),
            source,
        })?;
        let err = out.try_clone().map_err(|source| ActionError::Io {
            context: "cannot duplicate a file handle".into(),
            source,
        })?;
        let cmd = ganesha_command(&self.cfg);
        let since = Instant::now();
        let child = tokio::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .current_dir(&self.cfg.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| ActionError::Spawn {
                program: cmd.program.clone(),
                source,
            })?;
        // Remembered before the first wait: when the controller's bound for
        // this step runs out, this future is dropped mid-start, and the next
        // export must find the start in progress and wait for it, not take a
        // ganesha that is still starting for a frozen one and kill it.
        self.starting = child.id().map(|pid| Starting {
            pid,
            since,
            log_start,
            config,
        });
        self.child = Some(child);
        self.finish_start().await
    }

    /// Wait for the ganesha in `self.starting` until its port accepts
    /// connections, within `start_timeout_secs` of its spawn; past that it
    /// is killed.
    async fn finish_start(&mut self) -> Result<(), ActionError> {
        let Some(&Starting {
            pid,
            since,
            log_start,
            ..
        }) = self.starting.as_ref()
        else {
            return Ok(());
        };
        let addr = self.cfg.probe_addr();
        let deadline = since + Duration::from_secs(self.cfg.start_timeout_secs);
        loop {
            let answers = port_answers(addr).await;
            // Checked after the port too: another process may hold it.
            let exited = match &mut self.child {
                Some(c) => c.try_wait().ok().flatten().map(|s| s.to_string()),
                None => (!proc_alive(pid)).then(|| "gone".to_string()),
            };
            if let Some(status) = exited {
                self.starting = None;
                self.child = None;
                return Err(
                    self.start_error(log_start, format!("it exited during startup ({status})"))
                );
            }
            if answers {
                break;
            }
            if Instant::now() >= deadline {
                self.starting = None;
                if let Some(c) = &mut self.child {
                    let _ = c.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
                }
                self.child = None;
                return Err(self.start_error(
                    log_start,
                    format!(
                        "its port did not accept connections within {}s; it was killed",
                        self.cfg.start_timeout_secs
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.starting = None;
        for l in self.log_since(log_start).lines() {
            if l.contains("Unknown parameter")
                || l.contains("validation error")
                || l.contains("Errors processing block")
            {
                tracing::warn!(
                    line = l,
                    "nfs-ganesha did not accept part of its configuration"
                );
            }
        }
        tracing::info!(
            pid,
            %addr,
            elapsed_ms = since.elapsed().as_millis() as u64,
            "nfs-ganesha is serving"
        );
        Ok(())
    }

    async fn signal(&self, pid: u32, sig: &str) -> Result<(), ActionError> {
        let cmd = CommandLine::new(&self.cfg.kill)
            .arg(format!("-{sig}"))
            .arg(pid.to_string());
        let out = command::run(&cmd, Duration::from_secs(5)).await?;
        if out.success() || !proc_alive(pid) {
            Ok(())
        } else {
            Err(ActionError::GaneshaStop {
                pid,
                reason: format!("`{cmd}` failed: {}", out.message()),
            })
        }
    }

    /// Wait until `pid` is gone; reaps it when it is our child.
    async fn wait_gone(&mut self, pid: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let ours = self.child.as_ref().and_then(|c| c.id()) == Some(pid);
            if ours {
                if let Some(c) = &mut self.child {
                    if let Ok(Some(_)) = c.try_wait() {
                        self.child = None;
                        return true;
                    }
                }
            } else if !proc_alive(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(&mut self, pid: u32) -> Result<(), ActionError> {
        let t0 = Instant::now();
        self.signal(pid, "TERM").await?;
        if !self
            .wait_gone(pid, Duration::from_secs(self.cfg.stop_timeout_secs))
            .await
        {
            tracing::warn!(pid, "nfs-ganesha ignored SIGTERM: killing it");
            self.signal(pid, "KILL").await?;
            if !self.wait_gone(pid, Duration::from_secs(5)).await {
                return Err(ActionError::GaneshaStop {
                    pid,
                    reason: "it survived SIGKILL for 5s (stuck in the kernel on I/O?)".into(),
                });
            }
        }
        let _ = std::fs::remove_file(self.cfg.pid_path());
        tracing::info!(
            pid,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "nfs-ganesha stopped"
        );
        Ok(())
    }

    /// Stop serving. Not running: success.
    pub async fn unexport(&mut self) -> Result<(), ActionError> {
        match self.running_pid() {
            Some(pid) => self.stop(pid).await,
            None => Ok(()),
        }
    }

    /// An NFS NULL call to ganesha (`pid`), remembered for `self_checks`.
    async fn answers(&mut self, pid: u32) -> Result<(), String> {
        let r = nfs_null(self.cfg.probe_addr(), NFS_NULL_TIMEOUT).await;
        self.last_null = Some((pid, r.clone()));
        r
    }

    /// The pseudo paths served now: empty when ganesha is not running or does
    /// not answer an NFS NULL call (frozen: the kernel still accepts connections).
    pub async fn exports(&mut self) -> Result<Vec<String>, ActionError> {
        let Some(pid) = self.running_pid() else {
            return Ok(Vec::new());
        };
        if let Err(why) = self.answers(pid).await {
            tracing::warn!(pid, %why, "nfs-ganesha is running but does not answer NFS: not exporting");
            return Ok(Vec::new());
        }
        let conf =
            std::fs::read_to_string(self.cfg.config_path()).map_err(|source| ActionError::Io {
                context: format!("cannot read {}", self.cfg.config_path().display()),
                source,
            })?;
        Ok(ganesha_pseudo_paths(&conf))
    }

    /// The state of ganesha (its binary is checked by [`crate::selfcheck`]).
    pub async fn self_checks(&mut self) -> Vec<SelfCheck> {
        let mut v = Vec::new();
        let running = self.running_pid();
        // Not running is a state (e.g. on the backup), not a fault.
        v.push(pass(
            "ganesha_running",
            match running {
                Some(pid) => format!("pid {pid}, port {}", self.cfg.probe_addr()),
                None => "not running".into(),
            },
        ));
        if let Some(pid) = running {
            let answers = match self.last_null.take() {
                Some((p, r)) if p == pid => r,
                _ => self.answers(pid).await,
            };
            v.push(match answers {
                Ok(()) => pass(
                    "ganesha_answers",
                    format!("pid {pid} answers an NFSv4 NULL call"),
                ),
                Err(why) => fail(
                    "ganesha_answers",
                    ERROR,
                    format!(
                        "pid {pid} runs but does not answer an NFSv4 NULL call ({why}): frozen or overloaded; clients hang"
                    ),
                    format!(
                        "tail -n 50 {}; the next export restarts it (or kill -9 {pid})",
                        self.cfg.log_path().display()
                    ),
                ),
            });
        }
        v
    }
}

// ----------------------------------------------------------- kernel nfsd ---

/// Kernel nfsd driven through exportfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelNfsConfig {
    #[serde(default = "default_exportfs")]
    pub exportfs: PathBuf,
    /// Export options; `fsid=N` from the export is appended.
    #[serde(default = "default_kernel_options")]
    pub options: String,
    #[serde(default = "default_kernel_timeout")]
    pub timeout_secs: u64,
}

fn default_exportfs() -> PathBuf {
    "/usr/sbin/exportfs".into()
}
fn default_kernel_options() -> String {
    "rw,sync,no_subtree_check,no_root_squash".into()
}
fn default_kernel_timeout() -> u64 {
    30
}

impl Default for KernelNfsConfig {
    fn default() -> Self {
        KernelNfsConfig {
            exportfs: default_exportfs(),
            options: default_kernel_options(),
            timeout_secs: default_kernel_timeout(),
        }
    }
}

impl KernelNfsConfig {
    pub fn validate(&self) -> Result<(), ActionError> {
        if self.options.is_empty()
            || self.options.chars().any(char::is_whitespace)
            || self.options.split(',').any(|o| o.starts_with("fsid="))
        {
            return Err(ActionError::Config {
                section: "nfs (kernel)",
                reason: "options must be a comma-separated list without spaces and without fsid= (it comes from the export)".into(),
            });
        }
        if self.timeout_secs == 0 {
            return Err(ActionError::Config {
                section: "nfs (kernel)",
                reason: "timeout_secs must be above 0".into(),
            });
        }
        Ok(())
    }
}

fn client_path(client: &str, path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(client);
    s.push(":");
    s.push(path);
    s
}

/// `exportfs -o OPTIONS,fsid=N CLIENT:PATH...`.
pub fn exportfs_export_command(cfg: &KernelNfsConfig, spec: &ExportSpec) -> CommandLine {
    let mut c = CommandLine::new(&cfg.exportfs)
        .arg("-o")
        .arg(format!("{},fsid={}", cfg.options, spec.fsid));
    for client in &spec.clients {
        c = c.arg(client_path(client, &spec.path));
    }
    c
}

/// `exportfs -u CLIENT:PATH...`.
pub fn exportfs_unexport_command(
    cfg: &KernelNfsConfig,
    path: &Path,
    clients: &[String],
) -> CommandLine {
    let mut c = CommandLine::new(&cfg.exportfs).arg("-u");
    for client in clients {
        c = c.arg(client_path(client, path));
    }
    c
}

/// `exportfs -v`.
pub fn exportfs_list_command(cfg: &KernelNfsConfig) -> CommandLine {
    CommandLine::new(&cfg.exportfs).arg("-v")
}

/// One line of `exportfs -v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelExport {
    pub path: PathBuf,
    /// As exportfs prints it, except `<world>` which is given as `*`.
    pub client: String,
    pub options: Vec<String>,
}

/// Parse `exportfs -v`: `PATH<ws>CLIENT(OPTS)`, where a long path is alone
/// on its line and its clients follow on indented lines; paths have octal
/// escapes (`\040`).
pub fn parse_exportfs_v(text: &str) -> Vec<KernelExport> {
    let mut out = Vec::new();
    let mut path: Option<PathBuf> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let mut tokens = line.split_whitespace();
        if !line.starts_with(char::is_whitespace) {
            path = tokens.next().map(|p| PathBuf::from(unescape_octal(p)));
        }
        let Some(p) = &path else { continue };
        for tok in tokens {
            let (client, opts) = match tok.find('(') {
                Some(i) if tok.ends_with(')') => (&tok[..i], &tok[i + 1..tok.len() - 1]),
                _ => (tok, ""),
            };
            let client = if client == "<world>" { "*" } else { client };
            out.push(KernelExport {
                path: p.clone(),
                client: client.to_string(),
                options: opts
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(String::from)
                    .collect(),
            });
        }
    }
    out
}

/// Kernel nfsd through exportfs.
#[derive(Debug)]
pub struct KernelNfsBackend {
    cfg: KernelNfsConfig,
    export: ExportSpec,
}

impl KernelNfsBackend {
    pub fn new(cfg: KernelNfsConfig, export: ExportSpec) -> Result<Self, ActionError> {
        cfg.validate()?;
        Ok(KernelNfsBackend { cfg, export })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.timeout_secs)
    }

    async fn run_exportfs(&self, cmd: &CommandLine) -> Result<String, ActionError> {
        let out = command::run(cmd, self.timeout()).await?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(ActionError::ExportFailed {
                command: cmd.to_string(),
                code: out.code,
                stderr: out.message(),
            })
        }
    }

    /// Everything exportfs reports.
    pub async fn list(&self) -> Result<Vec<KernelExport>, ActionError> {
        let text = self.run_exportfs(&exportfs_list_command(&self.cfg)).await?;
        Ok(parse_exportfs_v(&text))
    }

    /// Export (or re-export with the same options; exportfs makes that a no-op).
    pub async fn export(&mut self, spec: &ExportSpec) -> Result<(), ActionError> {
        spec.validate()?;
        if !spec.path.is_dir() {
            return Err(ActionError::NotADirectory {
                path: spec.path.clone(),
                reason: "missing or not a directory".into(),
                hint: "mount the replicated filesystem before exporting it",
            });
        }
        self.run_exportfs(&exportfs_export_command(&self.cfg, spec))
            .await?;
        self.export = spec.clone();
        Ok(())
    }

    /// Withdraw the export for the clients that still have it. Not exported: success.
    pub async fn unexport(&mut self) -> Result<(), ActionError> {
        let listed = self.list().await?;
        let present: Vec<String> = self
            .export
            .clients
            .iter()
            .filter(|c| {
                listed
                    .iter()
                    .any(|e| e.path == self.export.path && &e.client == *c)
            })
            .cloned()
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        self.run_exportfs(&exportfs_unexport_command(
            &self.cfg,
            &self.export.path,
            &present,
        ))
        .await
        .map(|_| ())
    }

    /// The exported directories.
    pub async fn exports(&mut self) -> Result<Vec<String>, ActionError> {
        let mut paths: Vec<String> = Vec::new();
        for e in self.list().await? {
            let p = e.path.to_string_lossy().into_owned();
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
        Ok(paths)
    }
}

// --------------------------------------------------------------- backend ---

/// The configured NFS server.
#[derive(Debug)]
pub enum NfsBackend {
    Ganesha(Box<GaneshaBackend>),
    Kernel(KernelNfsBackend),
}

impl NfsBackend {
    /// `export` is what `unexport` withdraws until `export()` is given another.
    pub fn new(cfg: &NfsConfig, export: &ExportSpec) -> Result<Self, ActionError> {
        export.validate()?;
        Ok(match cfg {
            NfsConfig::Ganesha(g) => NfsBackend::Ganesha(Box::new(GaneshaBackend::new(g.clone())?)),
            NfsConfig::Kernel(k) => {
                NfsBackend::Kernel(KernelNfsBackend::new(k.clone(), export.clone())?)
            }
        })
    }

    pub async fn export(&mut self, spec: &ExportSpec) -> Result<(), ActionError> {
        match self {
            NfsBackend::Ganesha(g) => g.export(spec).await,
            NfsBackend::Kernel(k) => k.export(spec).await,
        }
    }

    pub async fn unexport(&mut self) -> Result<(), ActionError> {
        match self {
            NfsBackend::Ganesha(g) => g.unexport().await,
            NfsBackend::Kernel(k) => k.unexport().await,
        }
    }

    /// What NFSv4 clients can mount now (ganesha: pseudo paths; kernel: directories).
    pub async fn exports(&mut self) -> Result<Vec<String>, ActionError> {
        match self {
            NfsBackend::Ganesha(g) => g.exports().await,
            NfsBackend::Kernel(k) => k.exports().await,
        }
    }

    /// Checks of the NFS server's state (ganesha: running, answering; kernel
    /// nfsd: none beyond `exports`).
    pub async fn self_checks(&mut self) -> Vec<SelfCheck> {
        match self {
            NfsBackend::Ganesha(g) => g.self_checks().await,
            NfsBackend::Kernel(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcfg() -> GaneshaConfig {
        let mut c = GaneshaConfig::new("/var/lib/understudy/ganesha", "fs1");
        c.bind_addr = "198.18.0.10".parse().unwrap();
        c.port = 20049;
        c
    }

    #[test]
    fn renders_ganesha_config() {
        let spec = ExportSpec::new("/srv/nfs", "/data");
        let text = render_ganesha_config(&gcfg(), &spec);
        for line in [
            "NFS_CORE_PARAM {",
            "    Protocols = 4;",
            "    Enable_NLM = false;",
            "    Enable_RQUOTA = false;",
            "    NFS_Port = 20049;",
            "    Bind_addr = 198.18.0.10;",
            "NFSV4 {",
            "    RecoveryBackend = fs;",
            "    RecoveryRoot = \"/srv/nfs/.understudy/nfs-recovery\";",
            "    Grace_Period = 15;",
            "    Lease_Lifetime = 10;",
            "    Server_Scope = \"fs1\";",
            "    Only_Numeric_Owners = true;",
            "EXPORT {",
            "    Export_Id = 1;",
            "    Path = \"/srv/nfs\";",
            "    Pseudo = \"/data\";",
            "    Access_Type = RW;",
            "    Squash = No_Root_Squash;",
            "    SecType = sys;",
            "    Transports = TCP;",
            "    Filesystem_id = 100.1;",
            "        Name = VFS;",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("CLIENT"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert_eq!(ganesha_pseudo_paths(&text), ["/data"]);

        let mut c = gcfg();
        c.recovery_root = Some("/srv/nfs/state".into());
        let mut spec = ExportSpec::new("/srv/nfs/home", "/home");
        spec.clients = vec!["10.0.0.0/16".into(), "web1".into()];
        spec.fsid = 7;
        spec.export_id = 3;
        let text = render_ganesha_config(&c, &spec);
        assert!(text.contains("    RecoveryRoot = \"/srv/nfs/state\";\n"));
        assert!(text.contains("    Access_Type = None;\n"));
        assert!(text.contains("        Clients = 10.0.0.0/16, web1;\n        Access_Type = RW;\n"));
        assert!(text.contains("    Filesystem_id = 100.7;\n"));
        assert!(text.contains("    Export_Id = 3;\n"));
    }

    #[test]
    fn ganesha_command_line() {
        assert_eq!(
            ganesha_command(&gcfg()).argv(),
            [
                "/usr/bin/ganesha.nfsd",
                "-F",
                "-f",
                "/var/lib/understudy/ganesha/ganesha.conf",
                "-L",
                "/var/lib/understudy/ganesha/ganesha.log",
                "-p",
                "/var/lib/understudy/ganesha/ganesha.pid",
                "-N",
                "NIV_EVENT"
            ]
        );
        assert_eq!(gcfg().probe_addr().to_string(), "198.18.0.10:20049");
        // RPC NULL replies: accepted/success, wrong xid, denied, PROG_MISMATCH.
        let reply = |xid: u32, stat: u32, accept: u32| -> Vec<u8> {
            [xid, 1, stat, 0, 0, accept]
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect()
        };
        assert!(parse_null_reply(&reply(7, 0, 0), 7).is_ok());
        assert!(parse_null_reply(&reply(8, 0, 0), 7).is_err());
        assert!(parse_null_reply(&reply(7, 1, 0), 7).is_err());
        assert!(parse_null_reply(&reply(7, 0, 2), 7)
            .unwrap_err()
            .contains("PROG_MISMATCH"));
        assert!(parse_null_reply(&reply(7, 0, 0)[..12], 7).is_err());
        assert_eq!(
            GaneshaConfig::new("/x", "p").probe_addr().to_string(),
            "127.0.0.1:2049"
        );
    }

    #[test]
    fn validation_rejects_config_injection_and_bad_timers() {
        assert!(ExportSpec::new("/srv/nfs", "/data").validate().is_ok());
        assert!(ExportSpec::new("/srv/\"x", "/data").validate().is_err());
        assert!(ExportSpec::new("/srv/nfs", "data").validate().is_err());
        assert!(ExportSpec::new("/srv/nfs", "/").validate().is_err());
        assert!(ExportSpec::new("/srv/nfs", "/a;b").validate().is_err());
        let mut s = ExportSpec::new("/srv/nfs", "/data");
        s.clients = vec!["a(rw)".into()];
        assert!(s.validate().is_err());
        let mut c = gcfg();
        c.grace_period_secs = 5;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("grace_period_secs"));
        let mut c = gcfg();
        c.server_scope = "a\"b".into();
        assert!(c.validate().is_err());
        let mut c = gcfg();
        c.log_level = "debug".into();
        assert!(c.validate().is_err());
        assert!(gcfg().validate().is_ok());
    }

    #[test]
    fn nfs_config_is_tagged_and_strict() {
        let g: NfsConfig = toml::from_str(
            "backend = \"ganesha\"\nstate_dir = \"/var/lib/understudy/ganesha\"\nserver_scope = \"fs1\"\nport = 2050",
        )
        .unwrap();
        match g {
            NfsConfig::Ganesha(g) => {
                assert_eq!(g.port, 2050);
                assert_eq!(g.lease_lifetime_secs, 10);
            }
            other => panic!("{other:?}"),
        }
        let k: NfsConfig = toml::from_str("backend = \"kernel\"").unwrap();
        assert_eq!(k, NfsConfig::Kernel(KernelNfsConfig::default()));
        let typo = toml::from_str::<NfsConfig>("backend = \"kernel\"\nexport_fs = \"/x\"");
        assert!(typo.is_err(), "{typo:?}");
        let typo = toml::from_str::<NfsConfig>(
            "backend = \"ganesha\"\nstate_dir = \"/x\"\nserver_scope = \"p\"\nleas = 3",
        );
        assert!(typo.is_err(), "{typo:?}");
        assert!(toml::from_str::<NfsConfig>("backend = \"knfsd\"").is_err());
        let e: ExportSpec = toml::from_str("path = \"/srv/nfs\"\npseudo = \"/data\"").unwrap();
        assert_eq!(e, ExportSpec::new("/srv/nfs", "/data"));
        assert!(
            toml::from_str::<ExportSpec>("path = \"/srv/nfs\"\npseudo = \"/data\"\nfs_id = 2")
                .is_err()
        );
    }

    #[test]
    fn exportfs_command_lines() {
        let k = KernelNfsConfig::default();
        let mut spec = ExportSpec::new("/srv/nfs", "/data");
        spec.fsid = 12;
        assert_eq!(
            exportfs_export_command(&k, &spec).argv(),
            [
                "/usr/sbin/exportfs",
                "-o",
                "rw,sync,no_subtree_check,no_root_squash,fsid=12",
                "*:/srv/nfs"
            ]
        );
        spec.clients = vec!["10.0.0.0/16".into(), "web1".into()];
        assert_eq!(
            exportfs_export_command(&k, &spec).argv()[3..],
            ["10.0.0.0/16:/srv/nfs", "web1:/srv/nfs"]
        );
        assert_eq!(
            exportfs_unexport_command(&k, &spec.path, &["web1".to_string()]).argv(),
            ["/usr/sbin/exportfs", "-u", "web1:/srv/nfs"]
        );
        assert_eq!(
            exportfs_list_command(&k).argv(),
            ["/usr/sbin/exportfs", "-v"]
        );
        let bad = KernelNfsConfig {
            options: "rw,fsid=3".into(),
            ..KernelNfsConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn parses_exportfs_v() {
        let text = "/srv/nfs      \t<world>(sync,wdelay,hide,no_subtree_check,fsid=1,sec=sys,rw,secure,no_root_squash,no_all_squash)\n\
/srv/a\\040very/long/path/name\n\
\t\t10.0.0.0/16(sync,wdelay,hide,no_subtree_check,sec=sys,rw,secure,root_squash,no_all_squash)\n\
\t\tweb1.example.com(sync,ro)\n\
/srv/nfs      \t198.18.0.7(sync,rw)\n\n";
        let e = parse_exportfs_v(text);
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!(e[0].path, PathBuf::from("/srv/nfs"));
        assert_eq!(e[0].client, "*");
        assert!(e[0].options.contains(&"fsid=1".to_string()));
        assert_eq!(e[1].path, PathBuf::from("/srv/a very/long/path/name"));
        assert_eq!(e[1].client, "10.0.0.0/16");
        assert_eq!(e[2].path, PathBuf::from("/srv/a very/long/path/name"));
        assert_eq!(e[2].client, "web1.example.com");
        assert_eq!(e[2].options, ["sync", "ro"]);
        assert_eq!(e[3].client, "198.18.0.7");
        assert!(parse_exportfs_v("").is_empty());
    }

    #[tokio::test]
    async fn kernel_backend_runs_exportfs() {
        // A stand-in exportfs that keeps its table in a file.
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("table");
        let fake = dir.path().join("exportfs");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nT={t}\ncase \"$1\" in\n-v) if [ -f $T ]; then cat $T; fi ;;\n-o) p=${{3#*:}}; printf '%s\\t<world>(%s)\\n' \"$p\" \"$2\" >> $T ;;\n-u) : > $T ;;\nesac\n",
                t = table.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let k = KernelNfsConfig {
            exportfs: fake,
            ..KernelNfsConfig::default()
        };
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let spec = ExportSpec::new(&data, "/data");
        let mut b = NfsBackend::new(&NfsConfig::Kernel(k), &spec).unwrap();
        assert!(b.exports().await.unwrap().is_empty());
        b.unexport().await.unwrap();
        b.export(&spec).await.unwrap();
        assert_eq!(
            b.exports().await.unwrap(),
            [data.to_string_lossy().to_string()]
        );
        b.unexport().await.unwrap();
        assert!(b.exports().await.unwrap().is_empty());
        let missing = ExportSpec::new(dir.path().join("nope"), "/data");
        assert!(matches!(
            b.export(&missing).await,
            Err(ActionError::NotADirectory { .. })
        ));
    }
}
