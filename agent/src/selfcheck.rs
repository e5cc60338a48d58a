//! The agent's self-check: the files it needs exist with usable permissions.
//!
//! A deploy that ships files with the wrong mode (600 instead of 755) breaks a
//! server silently until the next failover needs it; this module finds that at
//! agent start, every [`SELF_CHECK_EVERY`], and on the controller's
//! `RunSelfCheck` command. It checks:
//!
//! - `agent_config`: the agent's own configuration file is a readable regular
//!   file, not writable by everyone, not writable by a group other than root
//!   (error: whoever can change it chooses what the agent runs as root), and,
//!   when the agent runs as root, owned by root (warning);
//! - the programs it runs (`drbdadm`, `drbdsetup`, the fence-peer handler when
//!   `[drbd] fence_peer_handler` is set, and when serving `mount`/`umount`,
//!   `ip`, `arping`, `ganesha_nfsd` and `kill` or `exportfs`): each exists and is
//!   executable. A file without any `x` bit is not executable even for root,
//!   whose `execve` needs at least one (error, fix `chmod 755 PATH`); one that
//!   others can write is a warning;
//! - `state_dir` (the persisted fencing token) and ganesha's `ganesha_state_dir`
//!   (its configuration, log and pid file): directories the agent can write, by
//!   creating and removing a probe file (both are local, never replicated).
//!
//! Every failed check has a severity (`error` breaks serving or failover,
//! `warning` does not) and a fix an operator can paste. Checks of host state
//! (mounted, exports, client IP) are not here: they are re-read every 500 ms
//! with the host status (`actions::host_status`).
//!
//! The checks only read metadata, except the probe file; they never change a
//! mode or create a missing directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use understudy_proto::SelfCheck;

use crate::actions::command::find_executable;
use crate::actions::{ArpingFlavor, MountMode, NfsConfig, ServingConfig};
use crate::config::AgentConfig;

/// Severity of a failed check that breaks serving or failover.
pub const ERROR: &str = "error";
/// Severity of a failed check that does not (yet) break anything.
pub const WARNING: &str = "warning";

/// How often the checks run without being asked.
pub const SELF_CHECK_EVERY: Duration = Duration::from_secs(60);

/// A passed check.
pub fn pass(name: &str, detail: impl Into<String>) -> SelfCheck {
    SelfCheck {
        name: name.to_owned(),
        ok: true,
        detail: detail.into(),
        severity: String::new(),
        fix: String::new(),
    }
}

/// A failed check: what is wrong, how bad ([`ERROR`] or [`WARNING`]), the fix.
pub fn fail(
    name: &str,
    severity: &str,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> SelfCheck {
    SelfCheck {
        name: name.to_owned(),
        ok: false,
        detail: detail.into(),
        severity: severity.to_owned(),
        fix: fix.into(),
    }
}

/// Whether a failed check is a warning (an unknown severity counts as error).
pub fn is_warning(c: &SelfCheck) -> bool {
    !c.ok && c.severity == WARNING
}

/// One line for an operator: `7 checks, 1 failed: drbdadm /usr/sbin/drbdadm is
/// not executable (mode 600): chmod 755 /usr/sbin/drbdadm`.
pub fn summary(checks: &[SelfCheck]) -> String {
    let errors: Vec<&SelfCheck> = checks.iter().filter(|c| !c.ok && !is_warning(c)).collect();
    let warnings: Vec<&SelfCheck> = checks.iter().filter(|c| is_warning(c)).collect();
    if errors.is_empty() && warnings.is_empty() {
        return format!("{} checks, all passed", checks.len());
    }
    let mut counts = Vec::new();
    if !errors.is_empty() {
        counts.push(format!("{} failed", errors.len()));
    }
    if !warnings.is_empty() {
        counts.push(format!(
            "{} warning{}",
            warnings.len(),
            if warnings.len() == 1 { "" } else { "s" }
        ));
    }
    let item = |c: &SelfCheck, tag: &str| {
        let fix = if c.fix.is_empty() {
            String::new()
        } else {
            format!(": {}", c.fix)
        };
        format!("{}{tag} {}{fix}", c.name, c.detail)
    };
    let items: Vec<String> = errors
        .iter()
        .map(|c| item(c, ""))
        .chain(warnings.iter().map(|c| item(c, " (warning)")))
        .collect();
    format!(
        "{} checks, {}: {}",
        checks.len(),
        counts.join(", "),
        items.join("; ")
    )
}

/// What the agent checks, taken from its configuration.
#[derive(Debug, Clone)]
pub struct SelfCheckPlan {
    /// The configuration file (`None`: not loaded from a file, not checked).
    pub config_path: Option<PathBuf>,
    pub drbdadm: PathBuf,
    pub drbdsetup: PathBuf,
    pub fence_peer_handler: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub serving: Option<ServingConfig>,
}

impl SelfCheckPlan {
    pub fn from_config(cfg: &AgentConfig) -> Self {
        SelfCheckPlan {
            config_path: cfg.config_path.clone(),
            drbdadm: cfg.drbd.drbdadm.clone(),
            drbdsetup: cfg.drbd.drbdsetup.clone(),
            fence_peer_handler: cfg.drbd.fence_peer_handler.clone(),
            state_dir: cfg.state_dir.clone(),
            serving: cfg.serving.clone(),
        }
    }

    /// The configuration file named in fix hints.
    fn config_name(&self) -> String {
        self.config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the agent configuration".into())
    }

    /// Run every check now. Reads metadata only (plus a probe file in the
    /// writable directories), so it is cheap; call it off the async threads
    /// anyway (a stat can hang on a broken mount).
    pub fn run(&self) -> Vec<SelfCheck> {
        let who = Identity::current();
        let cfg = self.config_name();
        let mut v = Vec::new();
        if let Some(p) = &self.config_path {
            v.push(config_file_check(p, &who));
        }
        let drbd = "apt-get install -y drbd-utils";
        v.push(executable_check(
            "drbdadm",
            &self.drbdadm,
            &who,
            &format!("{drbd} (or set drbdadm under [drbd] in {cfg} to its path)"),
        ));
        v.push(executable_check(
            "drbdsetup",
            &self.drbdsetup,
            &who,
            &format!("{drbd} (or set drbdsetup under [drbd] in {cfg} to its path)"),
        ));
        if let Some(h) = &self.fence_peer_handler {
            v.push(executable_check(
                "fence_peer_handler",
                h,
                &who,
                &format!("install understudy-fence-peer there (or set fence_peer_handler under [drbd] in {cfg} to its path)"),
            ));
        }
        v.push(writable_dir_check("state_dir", &self.state_dir, false));
        let Some(s) = &self.serving else {
            return v;
        };
        let set =
            |key: &str, section: &str| format!("set {key} under [serving.{section}] in {cfg}");
        if s.mount.mode != MountMode::Check {
            for (name, p) in [("mount", &s.mount.mount), ("umount", &s.mount.umount)] {
                v.push(executable_check(
                    name,
                    p,
                    &who,
                    &format!("apt-get install -y mount (or {})", set(name, "mount")),
                ));
            }
        }
        v.push(executable_check(
            "ip",
            &s.client_ip.ip,
            &who,
            &format!(
                "apt-get install -y iproute2 (or {})",
                set("ip", "client_ip")
            ),
        ));
        if s.client_ip.arping_flavor != ArpingFlavor::None {
            v.push(executable_check(
                "arping",
                &s.client_ip.arping,
                &who,
                &format!(
                    "apt-get install -y iputils-arping (or {})",
                    set("arping", "client_ip")
                ),
            ));
        }
        match &s.nfs {
            NfsConfig::Ganesha(g) => {
                v.push(executable_check(
                    "ganesha_nfsd",
                    &g.ganesha_nfsd,
                    &who,
                    &format!(
                        "apt-get install -y nfs-ganesha nfs-ganesha-vfs (or {})",
                        set("ganesha_nfsd", "nfs")
                    ),
                ));
                v.push(executable_check(
                    "kill",
                    &g.kill,
                    &who,
                    &format!("apt-get install -y procps (or {})", set("kill", "nfs")),
                ));
                v.push(writable_dir_check("ganesha_state_dir", &g.state_dir, true));
            }
            NfsConfig::Kernel(k) => v.push(executable_check(
                "exportfs",
                &k.exportfs,
                &who,
                &format!(
                    "apt-get install -y nfs-kernel-server (or {})",
                    set("exportfs", "nfs")
                ),
            )),
        }
        v
    }
}

/// Who the agent runs as: effective uid and gid, supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    /// Read from `/proc/self/status`; root if it cannot be read.
    pub fn current() -> Identity {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|w| w.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        // `Uid:`/`Gid:` list real, effective, saved and filesystem ids.
        Identity {
            uid: field("Uid:").get(1).copied().unwrap_or(0),
            gid: field("Gid:").get(1).copied().unwrap_or(0),
            groups: field("Groups:"),
        }
    }

    pub fn root() -> Identity {
        Identity {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    /// Whether `execve` lets this identity run a regular file of `mode` owned by
    /// `uid`:`gid`. Root needs any `x` bit; others the bit of their class.
    pub fn may_execute(&self, mode: u32, uid: u32, gid: u32) -> bool {
        if self.uid == 0 {
            mode & 0o111 != 0
        } else if uid == self.uid {
            mode & 0o100 != 0
        } else if gid == self.gid || self.groups.contains(&gid) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }
}

/// Who besides root can write a file of `mode` owned by `uid`:`gid`, if anyone.
fn writable_by_others(mode: u32, uid: u32, gid: u32) -> Option<String> {
    if mode & 0o002 != 0 {
        Some("everyone".into())
    } else if mode & 0o020 != 0 && gid != 0 {
        Some(format!("group {gid}"))
    } else if mode & 0o200 != 0 && uid != 0 {
        Some(format!("its owner, uid {uid}"))
    } else {
        None
    }
}

fn mode_str(mode: u32) -> String {
    format!("{:03o}", mode & 0o7777)
}

/// The agent's configuration file: a readable regular file that only root can
/// change.
pub fn config_file_check(path: &Path, who: &Identity) -> SelfCheck {
    const NAME: &str = "agent_config";
    let p = path.display();
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(
                NAME,
                ERROR,
                format!("{p} no longer exists; the agent read it at start but cannot start again"),
                format!("restore {p} from your configuration management"),
            )
        }
        Err(e) => {
            return fail(
                NAME,
                ERROR,
                format!("{p}: {e}"),
                format!("ls -ld {p} $(dirname {p}) and fix what denies access"),
            )
        }
    };
    if !m.is_file() {
        return fail(
            NAME,
            ERROR,
            format!("{p} is not a regular file"),
            format!("replace {p} with the agent's TOML configuration file"),
        );
    }
    let mode = m.permissions().mode();
    if let Err(e) = std::fs::File::open(path) {
        return fail(
            NAME,
            ERROR,
            format!("{p} cannot be read (mode {}): {e}", mode_str(mode)),
            format!("chmod 644 {p}"),
        );
    }
    match writable_by_others(mode, m.uid(), m.gid()) {
        Some(w) if w == "everyone" || w.starts_with("group") => {
            return fail(
                NAME,
                ERROR,
                format!(
                    "{p} is writable by {w} (mode {}): whoever can change it chooses what the agent runs as root",
                    mode_str(mode)
                ),
                format!("chmod go-w {p}"),
            )
        }
        _ => {}
    }
    if who.uid == 0 && m.uid() != 0 {
        return fail(
            NAME,
            WARNING,
            format!(
                "{p} is owned by uid {} (mode {}): that user can change what the agent runs as root",
                m.uid(),
                mode_str(mode)
            ),
            format!("chown root:root {p}"),
        );
    }
    pass(
        NAME,
        format!(
            "{p} is a readable regular file (mode {}) only root can change",
            mode_str(mode)
        ),
    )
}

/// Where a program resolves: the path itself, or for a bare name the first
/// executable file of that name in `PATH`, else the first file of that name
/// (to say what is wrong with it).
fn resolve(program: &Path) -> Result<PathBuf, String> {
    if program.as_os_str().is_empty() {
        return Err("the path is empty".into());
    }
    if program.is_absolute() || program.components().count() > 1 {
        return Ok(program.to_path_buf());
    }
    if let Some(p) = find_executable(program) {
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("not found in PATH ({})", path.to_string_lossy()))
}

/// A program the agent (or DRBD, for the handler) runs: it exists, is a
/// regular file this identity may execute, and only root can change it.
/// `install` is the fix when it is missing.
pub fn executable_check(name: &str, program: &Path, who: &Identity, install: &str) -> SelfCheck {
    let path = match resolve(program) {
        Ok(p) => p,
        Err(why) => {
            return fail(
                name,
                ERROR,
                format!("{} is {why}", program.display()),
                install,
            )
        }
    };
    let p = path.display();
    let m = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(name, ERROR, format!("{p} does not exist"), install)
        }
        Err(e) => {
            return fail(
                name,
                ERROR,
                format!("{p}: {e}"),
                format!("ls -ld {p} $(dirname {p}) and fix what denies access"),
            )
        }
    };
    if !m.is_file() {
        return fail(name, ERROR, format!("{p} is not a regular file"), install);
    }
    let mode = m.permissions().mode();
    if !who.may_execute(mode, m.uid(), m.gid()) {
        return fail(
            name,
            ERROR,
            format!("{p} is not executable (mode {})", mode_str(mode)),
            format!("chmod 755 {p}"),
        );
    }
    if let Some(w) = writable_by_others(mode, m.uid(), m.gid()) {
        let fix = if w.starts_with("its owner") {
            format!("chown root:root {p}")
        } else {
            format!("chmod go-w {p}")
        };
        return fail(
            name,
            WARNING,
            format!(
                "{p} is writable by {w} (mode {}): whoever can change it chooses what runs as root",
                mode_str(mode)
            ),
            fix,
        );
    }
    pass(name, format!("{p} is executable (mode {})", mode_str(mode)))
}

/// A local directory the agent writes to: it exists, is a directory, and a
/// probe file can be created and removed in it. `created_later`: a missing
/// directory whose parent exists is fine (the agent creates it when needed).
pub fn writable_dir_check(name: &str, dir: &Path, created_later: bool) -> SelfCheck {
    let d = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return fail(
                name,
                ERROR,
                format!("{d} is not a directory"),
                format!("mv {d} {d}.bak && mkdir -p {d}"),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent_ok = dir
                .parent()
                .map(|p| p.as_os_str().is_empty() || p.is_dir())
                .unwrap_or(true);
            return if created_later && parent_ok {
                pass(
                    name,
                    format!("{d} does not exist yet; the agent creates it when it first needs it"),
                )
            } else {
                fail(
                    name,
                    ERROR,
                    format!("{d} does not exist"),
                    format!("mkdir -p {d}"),
                )
            };
        }
        Err(e) => {
            return fail(
                name,
                ERROR,
                format!("{d}: {e}"),
                format!("ls -ld {d} and fix what denies access"),
            )
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let probe = dir.join(format!(
        ".understudy-selfcheck.{}.{nanos}",
        std::process::id()
    ));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match created {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            pass(name, format!("{d} is a writable directory"))
        }
        Err(e) => {
            let fix = if e.raw_os_error() == Some(30) {
                format!("findmnt -T {d}; remount that filesystem read-write once it is checked")
            } else {
                format!("chown root:root {d} && chmod 755 {d}")
            };
            fail(name, ERROR, format!("{d} is not writable: {e}"), fix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{ExportSpec, GaneshaConfig, IpConfig, KernelNfsConfig, MountConfig};

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn execute_permission_follows_execve() {
        let root = Identity::root();
        // Root reads a 600 file but cannot run it: execve needs an x bit.
        assert!(!root.may_execute(0o600, 0, 0));
        assert!(!root.may_execute(0o666, 0, 0));
        assert!(root.may_execute(0o700, 5, 5));
        assert!(root.may_execute(0o001, 5, 5));
        let user = Identity {
            uid: 1000,
            gid: 1000,
            groups: vec![27],
        };
        assert!(user.may_execute(0o700, 1000, 0));
        assert!(!user.may_execute(0o070, 1000, 1000), "owner class decides");
        assert!(user.may_execute(0o010, 0, 27), "supplementary group");
        assert!(!user.may_execute(0o750, 0, 0));
        assert!(user.may_execute(0o755, 0, 0));
    }

    #[test]
    fn executables_by_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = Identity::root();
        let check = |mode: u32| {
            let p = file(dir.path(), &format!("prog{mode:o}"), mode);
            (
                p.clone(),
                executable_check("drbdadm", &p, &root, "install it"),
            )
        };
        let (p, c) = check(0o600);
        assert!(!c.ok);
        assert_eq!(c.severity, ERROR);
        assert_eq!(
            c.detail,
            format!("{} is not executable (mode 600)", p.display())
        );
        assert_eq!(c.fix, format!("chmod 755 {}", p.display()));
        // It really cannot be run, even by root.
        assert!(std::process::Command::new(&p).status().is_err());

        let (p, c) = check(0o666);
        assert!(!c.ok && c.severity == ERROR, "{c:?}");
        assert_eq!(c.fix, format!("chmod 755 {}", p.display()));

        let (p, c) = check(0o755);
        assert!(c.ok, "{c:?}");
        assert!(c.severity.is_empty() && c.fix.is_empty());
        assert_eq!(
            c.detail,
            format!("{} is executable (mode 755)", p.display())
        );
        assert!(std::process::Command::new(&p).status().unwrap().success());

        let (p, c) = check(0o777);
        assert!(!c.ok);
        assert_eq!(c.severity, WARNING, "runs, but anyone can replace it");
        assert!(
            c.detail.contains("writable by everyone (mode 777)"),
            "{c:?}"
        );
        assert_eq!(c.fix, format!("chmod go-w {}", p.display()));

        let missing = dir.path().join("nope");
        let c = executable_check("drbdadm", &missing, &root, "apt-get install -y drbd-utils");
        assert!(!c.ok && c.severity == ERROR);
        assert_eq!(c.detail, format!("{} does not exist", missing.display()));
        assert_eq!(c.fix, "apt-get install -y drbd-utils");

        let c = executable_check("drbdadm", dir.path(), &root, "x");
        assert!(!c.ok && c.detail.contains("not a regular file"), "{c:?}");
        let c = executable_check("sh", Path::new("sh"), &root, "x");
        assert!(c.ok, "a bare name resolves through PATH: {c:?}");
        let c = executable_check("x", Path::new("understudy-no-such-program"), &root, "x");
        assert!(!c.ok && c.detail.contains("not found in PATH"), "{c:?}");
    }

    #[test]
    fn config_file_by_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = Identity::root();
        let check = |mode: u32| {
            let p = file(dir.path(), &format!("agent{mode:o}.toml"), mode);
            (p.clone(), config_file_check(&p, &root))
        };
        // Mode 600: root reads it; nobody else can change it.
        let (_, c) = check(0o600);
        assert!(c.ok, "{c:?}");
        let (_, c) = check(0o644);
        assert!(c.ok, "{c:?}");
        let (p, c) = check(0o666);
        assert!(!c.ok && c.severity == ERROR, "{c:?}");
        assert!(
            c.detail.contains("writable by everyone (mode 666)"),
            "{c:?}"
        );
        assert_eq!(c.fix, format!("chmod go-w {}", p.display()));
        let (_, c) = check(0o777);
        assert!(!c.ok && c.severity == ERROR, "{c:?}");
        // Group-writable: fine for group root (the tempfile's group here).
        let (_, c) = check(0o664);
        assert!(c.ok, "group root may write: {c:?}");

        let c = config_file_check(dir.path(), &root);
        assert!(!c.ok && c.detail.contains("not a regular file"), "{c:?}");
        let gone = dir.path().join("gone.toml");
        let c = config_file_check(&gone, &root);
        assert!(!c.ok && c.detail.contains("no longer exists"), "{c:?}");
    }

    #[test]
    fn others_who_can_write() {
        assert_eq!(writable_by_others(0o644, 0, 0), None);
        assert_eq!(writable_by_others(0o664, 0, 0), None);
        assert_eq!(writable_by_others(0o664, 0, 50), Some("group 50".into()));
        assert_eq!(writable_by_others(0o646, 0, 0), Some("everyone".into()));
        assert_eq!(
            writable_by_others(0o644, 1000, 0),
            Some("its owner, uid 1000".into())
        );
    }

    #[test]
    fn writable_directories() {
        let dir = tempfile::tempdir().unwrap();
        let c = writable_dir_check("state_dir", dir.path(), false);
        assert!(c.ok, "{c:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe removed"
        );
        let missing = dir.path().join("later");
        assert!(writable_dir_check("ganesha_state_dir", &missing, true).ok);
        let c = writable_dir_check("state_dir", &missing, false);
        assert!(!c.ok);
        assert_eq!(c.fix, format!("mkdir -p {}", missing.display()));
        let f = file(dir.path(), "plain", 0o644);
        let c = writable_dir_check("state_dir", &f, false);
        assert!(!c.ok && c.detail.contains("not a directory"), "{c:?}");
    }

    #[test]
    fn the_plan_checks_what_the_configuration_names() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_file = file(dir.path(), "agent.toml", 0o644);
        let adm = file(dir.path(), "drbdadm", 0o600);
        let setup = file(dir.path(), "drbdsetup", 0o755);
        let handler = file(dir.path(), "understudy-fence-peer", 0o755);
        let mut plan = SelfCheckPlan {
            config_path: Some(cfg_file),
            drbdadm: adm.clone(),
            drbdsetup: setup,
            fence_peer_handler: Some(handler),
            state_dir: dir.path().join("state"),
            serving: None,
        };
        std::fs::create_dir(&plan.state_dir).unwrap();
        let names = |v: &[SelfCheck]| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        let v = plan.run();
        assert_eq!(
            names(&v),
            [
                "agent_config",
                "drbdadm",
                "drbdsetup",
                "fence_peer_handler",
                "state_dir"
            ]
        );
        assert_eq!(
            summary(&v),
            format!(
                "5 checks, 1 failed: drbdadm {p} is not executable (mode 600): chmod 755 {p}",
                p = adm.display()
            )
        );
        std::fs::set_permissions(&adm, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(summary(&plan.run()), "5 checks, all passed");

        let mut ip = IpConfig::new("198.18.0.10".parse().unwrap(), 24, "eth0");
        ip.arping_flavor = ArpingFlavor::None;
        ip.ip = file(dir.path(), "ip", 0o755);
        let mut g = GaneshaConfig::new(dir.path().join("ganesha"), "fs1");
        g.ganesha_nfsd = file(dir.path(), "ganesha.nfsd", 0o644);
        g.kill = file(dir.path(), "kill", 0o755);
        plan.serving = Some(ServingConfig {
            mount: MountConfig::new(MountMode::Check, dir.path()),
            nfs: NfsConfig::Ganesha(g),
            export: ExportSpec::new(dir.path(), "/data"),
            client_ip: ip.clone(),
        });
        let v = plan.run();
        assert_eq!(
            names(&v)[5..],
            ["ip", "ganesha_nfsd", "kill", "ganesha_state_dir"]
        );
        let g = v.iter().find(|c| c.name == "ganesha_nfsd").unwrap();
        assert!(!g.ok && g.fix.starts_with("chmod 755 "), "{g:?}");
        assert!(v.iter().find(|c| c.name == "ganesha_state_dir").unwrap().ok);

        plan.serving = Some(ServingConfig {
            mount: MountConfig::new(MountMode::Bind, dir.path()),
            nfs: NfsConfig::Kernel(KernelNfsConfig {
                exportfs: dir.path().join("no-exportfs"),
                ..KernelNfsConfig::default()
            }),
            export: ExportSpec::new(dir.path(), "/data"),
            client_ip: ip,
        });
        let v = plan.run();
        assert_eq!(names(&v)[5..], ["mount", "umount", "ip", "exportfs"]);
        let e = v.iter().find(|c| c.name == "exportfs").unwrap();
        assert!(
            e.fix.starts_with("apt-get install -y nfs-kernel-server"),
            "{e:?}"
        );
    }

    #[test]
    fn summary_lists_errors_then_warnings() {
        let v = vec![
            pass("a", "fine"),
            fail("b", WARNING, "b is loose", "chmod go-w b"),
            fail("c", ERROR, "c is broken", "fix c"),
            fail("d", "", "old agent", ""),
        ];
        assert_eq!(
            summary(&v),
            "4 checks, 2 failed, 1 warning: c c is broken: fix c; d old agent; b (warning) b is loose: chmod go-w b"
        );
    }
}
