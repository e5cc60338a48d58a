//! DRBD role changes through `drbdadm`: `drbdadm primary [--force] RES` to
//! promote and `drbdadm secondary RES` to demote; and the reconnection of a
//! stood-down old primary (S10): `drbdadm disconnect RES` then `drbdadm connect
//! [--discard-my-data] RES`, the operator's split-brain recovery.
//!
//! Both are idempotent as drbdadm 9 makes them: promoting a Primary or
//! demoting a Secondary prints nothing and exits 0. A refused state change
//! (exit 11, or "State change failed" on stderr: the peer is Primary, the disk
//! is not UpToDate, the device is in use...) is [`ActionError::DrbdRefused`];
//! any other failure is [`ActionError::DrbdFailed`]. The DRBD emulator used in
//! tests has the same contract (exit 10 for an unknown resource, 11 refused).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::command::{self, CommandLine, Outcome};
use super::ActionError;

/// How the agent drives DRBD roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrbdActionsConfig {
    /// The DRBD resource of the pair.
    pub resource: String,
    #[serde(default = "default_drbdadm")]
    pub drbdadm: PathBuf,
    /// Kill drbdadm after this long (a promotion can wait for the peer).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_drbdadm() -> PathBuf {
    "/usr/sbin/drbdadm".into()
}
fn default_timeout_secs() -> u64 {
    60
}

impl DrbdActionsConfig {
    /// Configuration with the default timeout.
    pub fn new(resource: impl Into<String>, drbdadm: impl Into<PathBuf>) -> Self {
        DrbdActionsConfig {
            resource: resource.into(),
            drbdadm: drbdadm.into(),
            timeout_secs: default_timeout_secs(),
        }
    }

    pub fn validate(&self) -> Result<(), ActionError> {
        let bad = |reason: String| ActionError::Config {
            section: "drbd",
            reason,
        };
        if self.resource.is_empty()
            || self.resource.starts_with('-')
            || self.resource.chars().any(|c| c.is_whitespace() || c == '/')
        {
            return Err(bad(format!(
                "resource {:?} is not a DRBD resource name",
                self.resource
            )));
        }
        if self.timeout_secs == 0 {
            return Err(bad("timeout_secs must be above 0".into()));
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// `drbdadm primary [--force] RES`.
pub fn primary_command(cfg: &DrbdActionsConfig, force: bool) -> CommandLine {
    let c = CommandLine::new(&cfg.drbdadm).arg("primary");
    let c = if force { c.arg("--force") } else { c };
    c.arg(&cfg.resource)
}

/// `drbdadm VERB RES`.
fn adm(cfg: &DrbdActionsConfig, verb: &str) -> CommandLine {
    CommandLine::new(&cfg.drbdadm).arg(verb).arg(&cfg.resource)
}

/// `drbdadm secondary RES`.
pub fn secondary_command(cfg: &DrbdActionsConfig) -> CommandLine {
    adm(cfg, "secondary")
}

/// A drbdadm command that failed, as the error to report.
fn failed(cfg: &DrbdActionsConfig, cmd: &CommandLine, out: &Outcome) -> ActionError {
    ActionError::DrbdFailed {
        resource: cfg.resource.clone(),
        command: cmd.to_string(),
        code: out.code,
        stderr: out.message(),
    }
}

/// A step of `reconnect` that failed, as the error to report.
fn connect_failed(cfg: &DrbdActionsConfig, cmd: &CommandLine, out: &Outcome) -> ActionError {
    ActionError::DrbdConnectFailed {
        resource: cfg.resource.clone(),
        command: cmd.to_string(),
        code: out.code,
        stderr: out.message(),
    }
}

/// `drbdadm status RES`.
pub fn status_command(cfg: &DrbdActionsConfig) -> CommandLine {
    adm(cfg, "status")
}

/// `drbdadm resume-io RES`.
pub fn resume_io_command(cfg: &DrbdActionsConfig) -> CommandLine {
    adm(cfg, "resume-io")
}

/// The suspend reason(s) `drbdadm status` prints on the resource line
/// (`r0 role:Primary suspended:fencing`), if I/O is suspended.
pub fn suspended_in_status(status: &str) -> Option<String> {
    let first = status.lines().next()?;
    first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("suspended:"))
        .filter(|v| *v != "no")
        .map(str::to_owned)
}

/// Before a server that is being stood down unmounts or demotes: if DRBD froze
/// its I/O (fencing: its fence-peer handler was refused because it no longer
/// serves), resume it. Safe only there: its client IP is released and NFS is
/// stopped, so nothing that completes now is acknowledged to a client, and its
/// data is discarded on reconnect. Without this, `umount` and `drbdadm
/// secondary` wait for the frozen writes forever.
pub async fn resume_io_if_suspended(
    cfg: &DrbdActionsConfig,
) -> Result<Option<String>, ActionError> {
    let cmd = status_command(cfg);
    let out = command::run(&cmd, cfg.timeout()).await?;
    let Some(why) = out
        .success()
        .then(|| suspended_in_status(&out.stdout))
        .flatten()
    else {
        return Ok(None);
    };
    tracing::warn!(resource = %cfg.resource, reason = %why, "DRBD I/O is suspended on a server being stood down: resuming it");
    let cmd = resume_io_command(cfg);
    let out = command::run(&cmd, cfg.timeout()).await?;
    if !out.success() {
        return Err(failed(cfg, &cmd, &out));
    }
    Ok(Some(why))
}

/// `drbdadm outdate RES`.
pub fn outdate_command(cfg: &DrbdActionsConfig) -> CommandLine {
    adm(cfg, "outdate")
}

/// `drbdadm role RES`: `Primary` or `Secondary` (DRBD 8.4: `Primary/Secondary`).
pub fn role_command(cfg: &DrbdActionsConfig) -> CommandLine {
    adm(cfg, "role")
}

/// `drbdadm disconnect RES`: to `StandAlone` (a no-op when already there).
pub fn disconnect_command(cfg: &DrbdActionsConfig) -> CommandLine {
    adm(cfg, "disconnect")
}

/// `drbdadm connect [--discard-my-data] RES`: leave `StandAlone`; with
/// `discard_my_data` this host becomes the SyncTarget of the next handshake.
pub fn connect_command(cfg: &DrbdActionsConfig, discard_my_data: bool) -> CommandLine {
    let c = CommandLine::new(&cfg.drbdadm).arg("connect");
    let c = if discard_my_data {
        c.arg("--discard-my-data")
    } else {
        c
    };
    c.arg(&cfg.resource)
}

/// Turn a drbdadm result into `Ok` or the right error. `target` is the role
/// asked for ("Primary" or "Secondary").
pub fn classify(
    cfg: &DrbdActionsConfig,
    target: &'static str,
    cmd: &CommandLine,
    out: &Outcome,
) -> Result<(), ActionError> {
    if out.success() {
        return Ok(());
    }
    let stderr = out.message();
    if out.code == Some(11) || stderr.contains("State change failed") {
        Err(ActionError::DrbdRefused {
            resource: cfg.resource.clone(),
            target,
            command: cmd.to_string(),
            stderr,
        })
    } else {
        Err(ActionError::DrbdFailed {
            resource: cfg.resource.clone(),
            command: cmd.to_string(),
            code: out.code,
            stderr,
        })
    }
}

/// Make this node Primary. `force` promotes a disk that is not UpToDate: only
/// for an operator's explicit forced promotion (S8).
pub async fn promote(cfg: &DrbdActionsConfig, force: bool) -> Result<(), ActionError> {
    let cmd = primary_command(cfg, force);
    let out = command::run(&cmd, cfg.timeout()).await?;
    classify(cfg, "Primary", &cmd, &out)
}

/// Make this node Secondary (the filesystem must be unmounted first).
pub async fn demote(cfg: &DrbdActionsConfig) -> Result<(), ActionError> {
    let cmd = secondary_command(cfg);
    let out = command::run(&cmd, cfg.timeout()).await?;
    classify(cfg, "Secondary", &cmd, &out)
}

/// Mark this node's disk Outdated (S1: it lost replication while the primary
/// went on writing, as DRBD's fence-peer handler would have it). DRBD refuses
/// while connected or Primary; a disk already Outdated or lower is fine.
pub async fn outdate(cfg: &DrbdActionsConfig) -> Result<(), ActionError> {
    let cmd = outdate_command(cfg);
    let out = command::run(&cmd, cfg.timeout()).await?;
    if out.message().contains("Disk state is lower than outdated") {
        return Ok(());
    }
    classify(cfg, "Outdated", &cmd, &out)
}

/// Reconnect the resource to its peer: `drbdadm disconnect` (whatever the
/// connection state was, including a split brain's `StandAlone`), then `drbdadm
/// connect`, with `--discard-my-data` when this host's data is to be thrown away
/// and resynchronised from the peer (a stood-down old primary, S10). Idempotent:
/// repeating it restarts the handshake, with the same outcome.
pub async fn reconnect(cfg: &DrbdActionsConfig, discard_my_data: bool) -> Result<(), ActionError> {
    if discard_my_data {
        // Never throw away the data of a Primary: it may be the one serving.
        let cmd = role_command(cfg);
        let out = command::run(&cmd, cfg.timeout()).await?;
        if !out.success() {
            return Err(connect_failed(cfg, &cmd, &out));
        }
        if out.stdout.trim().starts_with("Primary") {
            return Err(ActionError::DiscardOnPrimary {
                resource: cfg.resource.clone(),
            });
        }
    }
    for cmd in [
        disconnect_command(cfg),
        connect_command(cfg, discard_my_data),
    ] {
        let out = command::run(&cmd, cfg.timeout()).await?;
        if !out.success() {
            return Err(connect_failed(cfg, &cmd, &out));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DrbdActionsConfig {
        DrbdActionsConfig::new("r0", "/opt/drbd/drbdadm")
    }

    fn outcome(code: i32, stderr: &str) -> Outcome {
        Outcome {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            primary_command(&cfg(), false).argv(),
            ["/opt/drbd/drbdadm", "primary", "r0"]
        );
        assert_eq!(
            primary_command(&cfg(), true).argv(),
            ["/opt/drbd/drbdadm", "primary", "--force", "r0"]
        );
        assert_eq!(
            secondary_command(&cfg()).argv(),
            ["/opt/drbd/drbdadm", "secondary", "r0"]
        );
        assert_eq!(
            outdate_command(&cfg()).argv(),
            ["/opt/drbd/drbdadm", "outdate", "r0"]
        );
        assert_eq!(
            resume_io_command(&cfg()).argv(),
            ["/opt/drbd/drbdadm", "resume-io", "r0"]
        );
        assert_eq!(
            suspended_in_status("r0 role:Primary suspended:fencing\n  disk:UpToDate\n"),
            Some("fencing".into())
        );
        assert_eq!(
            suspended_in_status("r0 role:Primary suspended:user,fencing\n"),
            Some("user,fencing".into())
        );
        assert_eq!(
            suspended_in_status("r0 role:Primary\n  disk:UpToDate\n"),
            None
        );
        assert_eq!(
            suspended_in_status("r0 role:Secondary suspended:no\n"),
            None
        );
        assert_eq!(
            disconnect_command(&cfg()).argv(),
            ["/opt/drbd/drbdadm", "disconnect", "r0"]
        );
        assert_eq!(
            connect_command(&cfg(), true).argv(),
            ["/opt/drbd/drbdadm", "connect", "--discard-my-data", "r0"]
        );
        assert_eq!(
            connect_command(&cfg(), false).argv(),
            ["/opt/drbd/drbdadm", "connect", "r0"]
        );
    }

    #[tokio::test]
    async fn reconnect_runs_disconnect_then_connect_and_reports_failures() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let fake = dir.path().join("drbdadm");
        // Records every call; `role` says Primary when a marker file exists;
        // refuses `connect` when told to by another marker file.
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> '{log}'\nif [ \"$1\" = role ]; then if [ -e '{log}.primary' ]; then echo Primary; else echo Secondary; fi; exit 0; fi\nif [ \"$1\" = connect ] && [ -e '{log}.refuse' ]; then echo \"r0: Failure: (125) Device has a net-config (use disconnect first)\" >&2; exit 10; fi\nexit 0\n",
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = DrbdActionsConfig::new("r0", &fake);
        reconnect(&c, true).await.unwrap();
        reconnect(&c, false).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "role r0\ndisconnect r0\nconnect --discard-my-data r0\ndisconnect r0\nconnect r0\n"
        );
        // A Primary's data is never discarded; a plain connect is fine.
        std::fs::write(format!("{}.primary", log.display()), "").unwrap();
        std::fs::write(&log, "").unwrap();
        let e = reconnect(&c, true).await.unwrap_err();
        assert!(matches!(e, ActionError::DiscardOnPrimary { .. }), "{e}");
        assert!(e.to_string().contains("drbdadm secondary r0"), "{e}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "role r0\n");
        reconnect(&c, false).await.unwrap();
        std::fs::remove_file(format!("{}.primary", log.display())).unwrap();
        std::fs::write(format!("{}.refuse", log.display()), "").unwrap();
        let e = reconnect(&c, true).await.unwrap_err();
        assert!(
            matches!(e, ActionError::DrbdConnectFailed { code: Some(10), .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("net-config"), "{msg}");
        assert!(msg.contains("drbdadm status r0"), "{msg}");
    }

    #[test]
    fn classifies_results() {
        let c = cfg();
        let cmd = primary_command(&c, false);
        assert!(classify(&c, "Primary", &cmd, &outcome(0, "")).is_ok());
        let refused = classify(
            &c,
            "Primary",
            &cmd,
            &outcome(
                11,
                "r0: State change failed: (-1) Multiple primaries not allowed by config\nCommand 'drbdsetup primary r0' terminated with exit code 11",
            ),
        )
        .unwrap_err();
        assert!(matches!(refused, ActionError::DrbdRefused { .. }));
        let msg = refused.to_string();
        assert!(msg.contains("Multiple primaries"), "{msg}");
        assert!(msg.contains("drbdadm status r0"), "{msg}");
        // Refusal recognised by the message even with another exit code.
        assert!(matches!(
            classify(
                &c,
                "Secondary",
                &cmd,
                &outcome(
                    17,
                    "r0: State change failed: (-12) Device is held open by someone"
                )
            ),
            Err(ActionError::DrbdRefused { .. })
        ));
        let other = classify(
            &c,
            "Primary",
            &cmd,
            &outcome(10, "'r0' not defined in your config (for this host)."),
        )
        .unwrap_err();
        assert!(matches!(
            other,
            ActionError::DrbdFailed { code: Some(10), .. }
        ));
        assert!(other.to_string().contains("not defined"), "{other}");
    }

    #[test]
    fn config_parses_and_validates() {
        let c: DrbdActionsConfig = toml::from_str("resource = \"r0\"").unwrap();
        assert_eq!(c.drbdadm, PathBuf::from("/usr/sbin/drbdadm"));
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<DrbdActionsConfig>("resource = \"r0\"\nforce = true").is_err());
        assert!(DrbdActionsConfig::new("-x", "drbdadm").validate().is_err());
        assert!(DrbdActionsConfig::new("a b", "drbdadm").validate().is_err());
    }

    #[tokio::test]
    async fn runs_the_configured_executable() {
        // A stand-in drbdadm: refuses "primary" with exit 11, accepts "secondary".
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("drbdadm");
        std::fs::write(
            &fake,
            "#!/bin/sh\nif [ \"$1\" = primary ]; then echo \"$2: State change failed: (-2) Need access to UpToDate data\" >&2; exit 11; fi\nexit 0\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = DrbdActionsConfig::new("r0", &fake);
        demote(&c).await.unwrap();
        demote(&c).await.unwrap();
        let e = promote(&c, false).await.unwrap_err();
        assert!(e.to_string().contains("UpToDate data"), "{e}");
        let missing = DrbdActionsConfig::new("r0", dir.path().join("nope"));
        assert!(matches!(
            promote(&missing, false).await,
            Err(ActionError::Spawn { .. })
        ));
    }
}
