//! Host-side actions of a failover (SPEC §5): promote/demote DRBD, mount and
//! unmount the replicated filesystem, export/unexport NFS (nfs-ganesha or
//! kernel nfsd), claim/release the client IP with a gratuitous ARP, and the
//! host part of the agent's report (mounted, exports, client IP, and the checks
//! of that state; files and tools are checked by [`crate::selfcheck`]).
//!
//! Every action is idempotent: repeating it after it succeeded is a no-op
//! success, so a failover step can be retried or resumed by a new leader (S7).
//! Every failure is an [`ActionError`] whose message says what to do. Every
//! executable is a configurable path, and every command line is built by a
//! pure function (see [`CommandLine`]) so it can be unit-tested.
//!
//! The actions are `async` (tokio processes with timeouts); they block nothing.
//! [`HostActions`] bundles the configuration of one server and is what the
//! session code is meant to hold.

pub mod command;
pub mod drbd;
pub mod drbd_conf;
pub mod ip;
pub mod mount;
pub mod nfs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use understudy_proto::{HostStatus, SelfCheck};

use crate::selfcheck::{fail, pass, ERROR};

pub use command::CommandLine;
pub use drbd::DrbdActionsConfig;
pub use drbd_conf::{ConfFormat, Configure, DrbdConfigureConfig};
pub use ip::{ArpingFlavor, IpConfig};
pub use mount::{MountConfig, MountMode, MountState};
pub use nfs::{ExportSpec, GaneshaConfig, KernelNfsConfig, NfsBackend, NfsConfig};

use command::fmt_code;

/// Why a host action failed, worded for the operator who reads it.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("cannot run {program}: {source}; check that it is installed and that its path in the agent configuration is right")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },

    #[error("`{command}` did not finish within {:.1}s and was killed; look for hung storage or network on this host, then retry", timeout.as_secs_f64())]
    Timeout { command: String, timeout: Duration },

    #[error("invalid {section} configuration: {reason}")]
    Config {
        section: &'static str,
        reason: String,
    },

    #[error("this agent has no serving configuration (mount, nfs, export, client_ip), so it cannot {action}; add it to the agent configuration of this server")]
    NotManaged { action: &'static str },

    #[error("DRBD refused to make resource {resource} {target} (`{command}`): {stderr}; run `drbdadm status {resource}`: another node may still be Primary (fence or demote it first), or the local disk is not UpToDate (only an operator's forced promotion may accept that data loss, S8)")]
    DrbdRefused {
        resource: String,
        target: &'static str,
        command: String,
        stderr: String,
    },

    #[error("`{command}` failed ({}): {stderr}; check that resource {resource} is defined in this host's DRBD configuration and that DRBD is running (`drbdadm status {resource}`)", fmt_code(*.code))]
    DrbdFailed {
        resource: String,
        command: String,
        code: Option<i32>,
        stderr: String,
    },

    #[error("`{command}` failed ({}): {stderr}; see `drbdadm status {resource}`: the resource must be up on this host; to recover by hand, run `drbdadm disconnect {resource}` then `drbdadm connect --discard-my-data {resource}` on the server whose data is to be discarded (the one that is not serving), and `drbdadm connect {resource}` on the serving one if it is StandAlone", fmt_code(*.code))]
    DrbdConnectFailed {
        resource: String,
        command: String,
        code: Option<i32>,
        stderr: String,
    },

    #[error("refusing `drbdadm connect --discard-my-data {resource}`: this host is DRBD Primary and may be serving; stop serving and demote it first (unexport, unmount, `drbdadm secondary {resource}`), then retry")]
    DiscardOnPrimary { resource: String },

    #[error("`{command}` failed ({}): {stderr}; check that the device exists and holds a {fstype} filesystem (is DRBD Primary here?) and that the mountpoint is free", fmt_code(*.code))]
    MountFailed {
        command: String,
        code: Option<i32>,
        stderr: String,
        fstype: String,
    },

    #[error("{mountpoint} already has {found} mounted on it, not {expected}; find out what it is (`findmnt {mountpoint}`) and unmount it by hand")]
    MountpointBusy {
        mountpoint: PathBuf,
        found: String,
        expected: String,
    },

    #[error("`{command}` failed ({}): {stderr}; something still uses {mountpoint} (see `fuser -vm {mountpoint}`): unexport NFS first, then retry", fmt_code(*.code))]
    UnmountFailed {
        command: String,
        mountpoint: PathBuf,
        code: Option<i32>,
        stderr: String,
    },

    #[error("{path} is not a directory ({reason}); {hint}")]
    NotADirectory {
        path: PathBuf,
        reason: String,
        hint: &'static str,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },

    #[error("`{command}` failed ({}): {stderr}; check that the kernel NFS server is running (`systemctl status nfs-server`) and the export path exists", fmt_code(*.code))]
    ExportFailed {
        command: String,
        code: Option<i32>,
        stderr: String,
    },

    #[error("nfs-ganesha did not start serving on {addr}: {reason}; its log {log} ends with:\n{log_tail}")]
    GaneshaStart {
        addr: String,
        reason: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("nfs-ganesha (pid {pid}) did not stop: {reason}; kill it by hand (`kill -9 {pid}`) before exporting from another server")]
    GaneshaStop { pid: u32, reason: String },

    #[error("`{command}` failed ({}): {stderr}; check that interface exists on this host and the address/prefix in the client_ip configuration", fmt_code(*.code))]
    IpFailed {
        command: String,
        code: Option<i32>,
        stderr: String,
    },

    #[error("gratuitous ARP `{command}` failed: {detail}; the address is on the interface but clients may keep the old MAC until their ARP cache expires; check the arping path and arping_flavor, then retry the claim")]
    ArpFailed { command: String, detail: String },
}

/// What a server mounts, exports and claims when it serves; absent on an agent
/// that only observes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    pub mount: MountConfig,
    pub nfs: NfsConfig,
    pub export: ExportSpec,
    pub client_ip: IpConfig,
}

/// The host actions of one server: DRBD always, serving when configured.
#[derive(Debug)]
pub struct HostActions {
    drbd: DrbdActionsConfig,
    serving: Option<(ServingConfig, NfsBackend)>,
    configure: Option<DrbdConfigureConfig>,
}

impl HostActions {
    /// Validate the configuration; nothing is run.
    pub fn new(
        drbd: DrbdActionsConfig,
        serving: Option<ServingConfig>,
    ) -> Result<Self, ActionError> {
        drbd.validate()?;
        let serving = match serving {
            None => None,
            Some(s) => {
                s.mount.validate()?;
                s.client_ip.validate()?;
                let nfs = NfsBackend::new(&s.nfs, &s.export)?;
                Some((s, nfs))
            }
        };
        Ok(HostActions {
            drbd,
            serving,
            configure: None,
        })
    }

    /// Let the controller rewrite the DRBD resource (`DrbdConfigure`).
    pub fn with_configure(mut self, c: Option<DrbdConfigureConfig>) -> Self {
        self.configure = c;
        self
    }

    /// Rewrite the DRBD resource for a new peer and/or volume, then adjust it.
    pub async fn configure(&self, req: &Configure) -> Result<String, ActionError> {
        let c = self.configure.as_ref().ok_or(ActionError::NotManaged {
            action: "DRBD configure (this agent has no [drbd.configure] section)",
        })?;
        drbd_conf::configure(&self.drbd, c, req).await
    }

    pub fn drbd_config(&self) -> &DrbdActionsConfig {
        &self.drbd
    }

    pub fn serving_config(&self) -> Option<&ServingConfig> {
        self.serving.as_ref().map(|(s, _)| s)
    }

    fn serving(
        &mut self,
        action: &'static str,
    ) -> Result<&mut (ServingConfig, NfsBackend), ActionError> {
        self.serving
            .as_mut()
            .ok_or(ActionError::NotManaged { action })
    }

    /// `drbdadm primary [--force]`.
    pub async fn promote(&self, force: bool) -> Result<(), ActionError> {
        drbd::promote(&self.drbd, force).await
    }

    /// `drbdadm secondary`.
    /// A server told to demote is being stood down (or switched over): its
    /// client IP and NFS are gone first, so frozen I/O is resumed before.
    pub async fn demote(&self) -> Result<(), ActionError> {
        drbd::resume_io_if_suspended(&self.drbd).await?;
        drbd::demote(&self.drbd).await
    }

    /// `drbdadm outdate`.
    pub async fn outdate(&self) -> Result<(), ActionError> {
        drbd::outdate(&self.drbd).await
    }

    /// `drbdadm disconnect` then `drbdadm connect [--discard-my-data]`.
    pub async fn reconnect(&self, discard_my_data: bool) -> Result<(), ActionError> {
        drbd::reconnect(&self.drbd, discard_my_data).await
    }

    pub async fn mount(&mut self) -> Result<(), ActionError> {
        let (s, _) = self.serving("mount")?;
        mount::mount(&s.mount).await
    }

    pub async fn unmount(&mut self) -> Result<(), ActionError> {
        // A filesystem on frozen DRBD I/O cannot be unmounted; see `demote`.
        drbd::resume_io_if_suspended(&self.drbd).await?;
        let (s, _) = self.serving("unmount")?;
        mount::unmount(&s.mount).await
    }

    pub async fn export(&mut self) -> Result<(), ActionError> {
        let (s, nfs) = self.serving("export NFS")?;
        nfs.export(&s.export).await
    }

    pub async fn unexport(&mut self) -> Result<(), ActionError> {
        let (_, nfs) = self.serving("unexport NFS")?;
        nfs.unexport().await
    }

    pub async fn claim_ip(&mut self) -> Result<(), ActionError> {
        let (s, _) = self.serving("claim the client IP")?;
        ip::claim(&s.client_ip).await
    }

    pub async fn release_ip(&mut self) -> Result<(), ActionError> {
        let (s, _) = self.serving("release the client IP")?;
        ip::release(&s.client_ip).await
    }

    /// The host part of the agent's report.
    pub async fn status(&mut self) -> HostStatus {
        match &mut self.serving {
            None => host_status(None).await,
            Some((s, nfs)) => host_status(Some((s, nfs))).await,
        }
    }
}

/// Whether `dir` is on a writable mount, without writing anything: the
/// directory is replicated, and a probe file written every few hundred
/// milliseconds would keep DRBD's out-of-sync counter from ever settling at 0
/// (which S1 requires before an automatic promotion).
fn writable_check(name: &str, dir: &Path) -> SelfCheck {
    let ro_mount = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| {
            let entries = mount::parse_mountinfo(&t);
            mount::find_mount(&entries, dir).map(|e| e.mount_options.split(',').any(|o| o == "ro"))
        });
    let ro_perm = std::fs::metadata(dir)
        .map(|m| m.permissions().readonly())
        .unwrap_or(true);
    let d = dir.display();
    match (ro_mount, ro_perm) {
        (Some(true), _) => fail(
            name,
            ERROR,
            format!("{d} is mounted read-only; check the filesystem (remounted read-only after errors?)"),
            format!("dmesg | tail -n 50; findmnt -T {d}"),
        ),
        (_, true) => fail(
            name,
            ERROR,
            format!("{d} is not writable (permissions)"),
            format!("chmod u+w {d}"),
        ),
        _ => pass(name, format!("{d} is writable")),
    }
}

/// The host part of the agent's report: whether the filesystem is mounted,
/// what NFS serves, whether the client IP is here, and the checks of that
/// state (the checks of files and tools are [`crate::selfcheck`]'s). Never
/// fails: what cannot be found out is reported as a failed check.
pub async fn host_status(serving: Option<(&ServingConfig, &mut NfsBackend)>) -> HostStatus {
    let mut checks = Vec::new();
    let Some((s, nfs)) = serving else {
        return HostStatus {
            mounted: false,
            exports: Vec::new(),
            client_ip_present: false,
            self_checks: checks,
            serving_managed: false,
            self_check_at_unix_ms: 0,
        };
    };
    let mp = s.mount.mountpoint.display();

    let mounted = match mount::mount_state(&s.mount) {
        Ok(MountState::Mounted) => true,
        Ok(MountState::NotMounted) => false,
        Ok(MountState::Other { found }) => {
            checks.push(fail(
                "mount_state",
                ERROR,
                format!("{mp} has {found} mounted on it instead of the configured source"),
                format!("findmnt {mp}; umount {mp} once you know what it is"),
            ));
            false
        }
        Err(e) => {
            checks.push(fail(
                "mount_state",
                ERROR,
                e.to_string(),
                "cat /proc/self/mountinfo",
            ));
            false
        }
    };
    match std::fs::metadata(&s.mount.mountpoint) {
        Ok(m) if m.is_dir() => {
            checks.push(pass("mountpoint", format!("{mp} is a directory")));
            if mounted {
                checks.push(writable_check("mountpoint_writable", &s.mount.mountpoint));
                if s.export.path != s.mount.mountpoint {
                    let e = s.export.path.display();
                    checks.push(if s.export.path.is_dir() {
                        writable_check("export_dir", &s.export.path)
                    } else {
                        fail(
                            "export_dir",
                            ERROR,
                            format!(
                                "{e} (the exported directory) is missing on the mounted filesystem"
                            ),
                            format!("mkdir -p {e}"),
                        )
                    });
                }
            }
        }
        Ok(_) => checks.push(fail(
            "mountpoint",
            ERROR,
            format!("{mp} is not a directory"),
            format!("mv {mp} {mp}.bak && mkdir -p {mp}"),
        )),
        Err(e) => checks.push(fail(
            "mountpoint",
            ERROR,
            format!("{mp}: {e}"),
            format!("mkdir -p {mp}"),
        )),
    }

    // Exports first: its NFS NULL call to ganesha is reused by the self-checks.
    let exports = match nfs.exports().await {
        Ok(e) => e,
        Err(e) => {
            let fix = match &s.nfs {
                NfsConfig::Ganesha(g) => format!("tail -n 50 {}", g.log_path().display()),
                NfsConfig::Kernel(_) => "systemctl status nfs-server".to_string(),
            };
            checks.push(fail("nfs_exports", ERROR, e.to_string(), fix));
            Vec::new()
        }
    };
    checks.extend(nfs.self_checks().await);

    let client_ip_present = match ip::is_present(&s.client_ip).await {
        Ok(p) => p,
        Err(e) => {
            checks.push(fail(
                "client_ip",
                ERROR,
                e.to_string(),
                format!("ip -o addr show dev {}", s.client_ip.interface),
            ));
            false
        }
    };

    HostStatus {
        mounted,
        exports,
        client_ip_present,
        self_checks: checks,
        serving_managed: true,
        self_check_at_unix_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn host_status_reports_state_and_self_checks() {
        let dir = tempfile::tempdir().unwrap();
        let drbd = DrbdActionsConfig::new("r0", "/nonexistent/drbdadm");
        let observer = HostActions::new(drbd.clone(), None).unwrap().status().await;
        assert!(!observer.serving_managed);
        assert!(observer.self_checks.is_empty(), "{observer:?}");

        let mut client_ip = IpConfig::new("127.0.0.1".parse().unwrap(), 8, "lo");
        client_ip.ip = "ip".into();
        client_ip.arping_flavor = ArpingFlavor::None;
        let serving = ServingConfig {
            mount: MountConfig::new(MountMode::Check, dir.path()),
            nfs: NfsConfig::Kernel(KernelNfsConfig {
                exportfs: "/nonexistent/exportfs".into(),
                ..KernelNfsConfig::default()
            }),
            export: ExportSpec::new(dir.path().join("export"), "/data"),
            client_ip,
        };
        let mut host = HostActions::new(drbd, Some(serving)).unwrap();
        let s = host.status().await;
        assert!(s.serving_managed);
        assert!(s.mounted);
        assert!(s.exports.is_empty());
        let by_name = |n: &str| s.self_checks.iter().find(|c| c.name == n).unwrap().clone();
        assert!(by_name("mountpoint").ok);
        assert!(by_name("mountpoint_writable").ok);
        let e = by_name("export_dir");
        assert!(!e.ok && e.severity == ERROR, "{e:?}");
        assert_eq!(
            e.fix,
            format!("mkdir -p {}", dir.path().join("export").display())
        );
        let n = by_name("nfs_exports");
        assert!(!n.ok && n.fix == "systemctl status nfs-server", "{n:?}");
        assert!(
            s.self_checks.iter().all(|c| c.name != "exportfs"),
            "tools are the self-check's"
        );
        std::fs::create_dir(dir.path().join("export")).unwrap();
        assert!(host
            .status()
            .await
            .self_checks
            .iter()
            .any(|c| c.name == "export_dir" && c.ok));
        if command::find_executable(std::path::Path::new("ip")).is_some() {
            assert!(s.client_ip_present, "{s:?}");
        }
        let e = HostActions::new(DrbdActionsConfig::new("r0", "x"), None)
            .unwrap()
            .claim_ip()
            .await
            .unwrap_err();
        assert!(matches!(e, ActionError::NotManaged { .. }), "{e}");
    }
}
