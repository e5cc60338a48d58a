//! Mounting the replicated filesystem on the server that serves it.
//!
//! Three modes:
//! - `device` (production): `mount [-t FSTYPE] [-o OPTS] DEVICE MOUNTPOINT`, the
//!   DRBD device (e.g. `/dev/drbd1000`) on the export mountpoint;
//! - `bind` (the DRBD emulator replicates a directory, which plays the device):
//!   `mount --bind SOURCE_DIR MOUNTPOINT`;
//! - `check`: nothing is mounted; the mountpoint must exist and be a directory.
//!
//! Whether something is mounted is read from `/proc/self/mountinfo` (the last
//! entry for a mountpoint is the visible one). For `device` the entry's source
//! must be the device; for `bind` the mountpoint must be the same inode as the
//! source directory. Something else mounted there is an error, never silently
//! used or unmounted. `unmount` of what is not mounted is a success.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::command::{self, unescape_octal, CommandLine};
use super::ActionError;

/// How the filesystem gets onto the mountpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountMode {
    Device,
    Bind,
    Check,
}

/// What to mount where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    pub mode: MountMode,
    /// `device` mode: the block device, e.g. `/dev/drbd1000`.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// `bind` mode: the directory to bind onto the mountpoint.
    #[serde(default)]
    pub source_dir: Option<PathBuf>,
    pub mountpoint: PathBuf,
    /// `device` mode: `-t`; without it mount detects the type.
    #[serde(default)]
    pub fstype: Option<String>,
    /// `device` mode: `-o`, e.g. `noatime`.
    #[serde(default)]
    pub options: Option<String>,
    #[serde(default = "default_mount")]
    pub mount: PathBuf,
    #[serde(default = "default_umount")]
    pub umount: PathBuf,
    /// Kill mount/umount after this long (journal replay can take a while).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_mount() -> PathBuf {
    "/usr/bin/mount".into()
}
fn default_umount() -> PathBuf {
    "/usr/bin/umount".into()
}
fn default_timeout_secs() -> u64 {
    120
}

impl MountConfig {
    /// A configuration with the default executables and timeout.
    pub fn new(mode: MountMode, mountpoint: impl Into<PathBuf>) -> Self {
        MountConfig {
            mode,
            device: None,
            source_dir: None,
            mountpoint: mountpoint.into(),
            fstype: None,
            options: None,
            mount: default_mount(),
            umount: default_umount(),
            timeout_secs: default_timeout_secs(),
        }
    }

    pub fn validate(&self) -> Result<(), ActionError> {
        let bad = |reason: String| ActionError::Config {
            section: "mount",
            reason,
        };
        if !self.mountpoint.is_absolute() {
            return Err(bad(format!(
                "mountpoint {} must be an absolute path",
                self.mountpoint.display()
            )));
        }
        if self.timeout_secs == 0 {
            return Err(bad("timeout_secs must be above 0".into()));
        }
        match self.mode {
            MountMode::Device => {
                if self.device.is_none() {
                    return Err(bad(
                        "mode \"device\" needs `device` (e.g. /dev/drbd1000)".into()
                    ));
                }
                if self.source_dir.is_some() {
                    return Err(bad("`source_dir` is for mode \"bind\"; remove it".into()));
                }
            }
            MountMode::Bind => {
                let Some(src) = &self.source_dir else {
                    return Err(bad("mode \"bind\" needs `source_dir`".into()));
                };
                if !src.is_absolute() || src == &self.mountpoint {
                    return Err(bad(
                        "source_dir must be an absolute path other than the mountpoint".into(),
                    ));
                }
                if self.device.is_some() || self.fstype.is_some() || self.options.is_some() {
                    return Err(bad(
                        "device, fstype and options are for mode \"device\"; remove them".into(),
                    ));
                }
            }
            MountMode::Check => {
                if self.device.is_some() || self.source_dir.is_some() {
                    return Err(bad(
                        "mode \"check\" mounts nothing; remove device/source_dir".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// The mount command for the configured mode; `None` for `check`.
pub fn mount_command(cfg: &MountConfig) -> Result<Option<CommandLine>, ActionError> {
    cfg.validate()?;
    Ok(match cfg.mode {
        MountMode::Check => None,
        MountMode::Device => {
            let mut c = CommandLine::new(&cfg.mount);
            if let Some(t) = &cfg.fstype {
                c = c.arg("-t").arg(t);
            }
            if let Some(o) = &cfg.options {
                c = c.arg("-o").arg(o);
            }
            let dev = cfg.device.as_ref().expect("validated");
            Some(c.arg(dev).arg(&cfg.mountpoint))
        }
        MountMode::Bind => Some(
            CommandLine::new(&cfg.mount)
                .arg("--bind")
                .arg(cfg.source_dir.as_ref().expect("validated"))
                .arg(&cfg.mountpoint),
        ),
    })
}

/// `umount MOUNTPOINT`.
pub fn umount_command(cfg: &MountConfig) -> CommandLine {
    CommandLine::new(&cfg.umount).arg(&cfg.mountpoint)
}

/// One line of `/proc/self/mountinfo` (see proc(5)), escapes undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfoEntry {
    pub mount_id: u64,
    pub parent_id: u64,
    /// `major:minor` of the filesystem's device.
    pub dev: String,
    /// The directory of the filesystem that is mounted (not `/` for bind mounts).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub mount_options: String,
    pub fstype: String,
    pub source: OsString,
    pub super_options: String,
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfoEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfoEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 || fields.len() < sep + 3 {
        return None;
    }
    Some(MountInfoEntry {
        mount_id: fields[0].parse().ok()?,
        parent_id: fields[1].parse().ok()?,
        dev: fields[2].to_string(),
        root: unescape_octal(fields[3]).into(),
        mount_point: unescape_octal(fields[4]).into(),
        mount_options: fields[5].to_string(),
        fstype: unescape_octal(fields[sep + 1])
            .to_string_lossy()
            .into_owned(),
        source: unescape_octal(fields[sep + 2]),
        super_options: fields.get(sep + 3).unwrap_or(&"").to_string(),
    })
}

/// The mount visible at `mountpoint` (the last one listed), if any.
pub fn find_mount<'a>(
    entries: &'a [MountInfoEntry],
    mountpoint: &Path,
) -> Option<&'a MountInfoEntry> {
    entries.iter().rev().find(|e| e.mount_point == mountpoint)
}

/// What is on the mountpoint now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    /// The configured device/directory is mounted (`check`: the mountpoint is a directory).
    Mounted,
    NotMounted,
    /// Something else is mounted there.
    Other {
        found: String,
    },
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn read_mountinfo() -> Result<Vec<MountInfoEntry>, ActionError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| ActionError::Io {
            context: "cannot read /proc/self/mountinfo (is /proc mounted?)".into(),
            source,
        })?;
    Ok(parse_mountinfo(&text))
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Find out what is on the configured mountpoint.
pub fn mount_state(cfg: &MountConfig) -> Result<MountState, ActionError> {
    if cfg.mode == MountMode::Check {
        return Ok(if cfg.mountpoint.is_dir() {
            MountState::Mounted
        } else {
            MountState::NotMounted
        });
    }
    let mp = canonical(&cfg.mountpoint);
    let entries = read_mountinfo()?;
    let Some(e) = find_mount(&entries, &mp) else {
        return Ok(MountState::NotMounted);
    };
    let describe = |e: &MountInfoEntry| {
        format!(
            "{} ({}, root {})",
            e.source.to_string_lossy(),
            e.fstype,
            e.root.display()
        )
    };
    let ours = match cfg.mode {
        MountMode::Device => {
            let dev = cfg.device.as_ref().expect("validated");
            canonical(dev) == canonical(Path::new(&e.source))
        }
        MountMode::Bind => same_inode(&mp, cfg.source_dir.as_ref().expect("validated")),
        MountMode::Check => unreachable!(),
    };
    Ok(if ours {
        MountState::Mounted
    } else {
        MountState::Other { found: describe(e) }
    })
}

/// Whether the configured filesystem is mounted (`check`: the mountpoint is a directory).
pub fn is_mounted(cfg: &MountConfig) -> Result<bool, ActionError> {
    Ok(mount_state(cfg)? == MountState::Mounted)
}

fn expected(cfg: &MountConfig) -> String {
    match cfg.mode {
        MountMode::Device => cfg
            .device
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        MountMode::Bind => cfg
            .source_dir
            .as_ref()
            .map(|d| format!("a bind mount of {}", d.display()))
            .unwrap_or_default(),
        MountMode::Check => String::new(),
    }
}

/// Mount the configured filesystem (creating the mountpoint if needed).
/// Already mounted: success. Something else mounted there: error.
pub async fn mount(cfg: &MountConfig) -> Result<(), ActionError> {
    cfg.validate()?;
    if cfg.mode == MountMode::Check {
        return match std::fs::metadata(&cfg.mountpoint) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ActionError::NotADirectory {
                path: cfg.mountpoint.clone(),
                reason: "it is a file".into(),
                hint: "mode \"check\" needs the export directory to exist",
            }),
            Err(e) => Err(ActionError::NotADirectory {
                path: cfg.mountpoint.clone(),
                reason: e.to_string(),
                hint: "mode \"check\" needs the export directory to exist; create it",
            }),
        };
    }
    if let Some(src) = &cfg.source_dir {
        if !src.is_dir() {
            return Err(ActionError::NotADirectory {
                path: src.clone(),
                reason: "missing or not a directory".into(),
                hint: "the bind source is the replicated directory: is the DRBD emulator running and Primary here?",
            });
        }
    }
    match mount_state(cfg)? {
        MountState::Mounted => return Ok(()),
        MountState::Other { found } => {
            return Err(ActionError::MountpointBusy {
                mountpoint: cfg.mountpoint.clone(),
                found,
                expected: expected(cfg),
            })
        }
        MountState::NotMounted => {}
    }
    std::fs::create_dir_all(&cfg.mountpoint).map_err(|source| ActionError::Io {
        context: format!("cannot create mountpoint {}", cfg.mountpoint.display()),
        source,
    })?;
    let cmd = mount_command(cfg)?.expect("not check mode");
    let out = command::run(&cmd, cfg.timeout()).await?;
    let fail = |stderr: String, code| ActionError::MountFailed {
        command: cmd.to_string(),
        code,
        stderr,
        fstype: cfg.fstype.clone().unwrap_or_else(|| "known".into()),
    };
    if !out.success() {
        return Err(fail(out.message(), out.code));
    }
    match mount_state(cfg)? {
        MountState::Mounted => Ok(()),
        other => Err(fail(
            format!("mount exited 0 but the mountpoint is now {other:?}"),
            out.code,
        )),
    }
}

/// Unmount the configured filesystem. Not mounted: success. Something else
/// mounted there: error (it is not ours to unmount).
pub async fn unmount(cfg: &MountConfig) -> Result<(), ActionError> {
    cfg.validate()?;
    if cfg.mode == MountMode::Check {
        return Ok(());
    }
    // Stacked copies of our mount (from a crash between mount and bookkeeping)
    // are taken off one by one.
    for _ in 0..8 {
        match mount_state(cfg)? {
            MountState::NotMounted => return Ok(()),
            MountState::Other { found } => {
                return Err(ActionError::MountpointBusy {
                    mountpoint: cfg.mountpoint.clone(),
                    found,
                    expected: expected(cfg),
                })
            }
            MountState::Mounted => {}
        }
        let cmd = umount_command(cfg);
        let out = command::run(&cmd, cfg.timeout()).await?;
        if !out.success() {
            let msg = out.message();
            if msg.contains("not mounted") {
                return Ok(());
            }
            return Err(ActionError::UnmountFailed {
                command: cmd.to_string(),
                mountpoint: cfg.mountpoint.clone(),
                code: out.code,
                stderr: msg,
            });
        }
    }
    Err(ActionError::UnmountFailed {
        command: umount_command(cfg).to_string(),
        mountpoint: cfg.mountpoint.clone(),
        code: Some(0),
        stderr: "still mounted after 8 unmounts".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 27 147:1000 / /srv/nfs\\040data rw,noatime shared:7 master:2 - xfs /dev/drbd1000 rw,attr2
41 27 259:2 /var/lib/emu/r0\\040a /srv/bind rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
42 27 0:50 / /srv/bind rw - tmpfs tmpfs\\134x rw,size=1k
garbage line
";

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let e = parse_mountinfo(MOUNTINFO);
        assert_eq!(e.len(), 6);
        assert_eq!(e[2].root, PathBuf::from("/mnt1"));
        assert_eq!(e[2].mount_point, PathBuf::from("/mnt2"));
        assert_eq!(e[2].fstype, "ext3");
        assert_eq!(e[2].super_options, "rw,errors=continue");
        assert_eq!(e[3].mount_point, PathBuf::from("/srv/nfs data"));
        assert_eq!(e[3].source, OsString::from("/dev/drbd1000"));
        assert_eq!(e[3].dev, "147:1000");
        assert_eq!(e[4].root, PathBuf::from("/var/lib/emu/r0 a"));
        assert_eq!(e[5].source, OsString::from("tmpfs\\x"));
        // The last mount on a mountpoint is the visible one.
        assert_eq!(find_mount(&e, Path::new("/srv/bind")).unwrap().mount_id, 42);
        assert!(find_mount(&e, Path::new("/srv/none")).is_none());
    }

    fn device_cfg() -> MountConfig {
        let mut c = MountConfig::new(MountMode::Device, "/srv/nfs");
        c.device = Some("/dev/drbd1000".into());
        c.fstype = Some("xfs".into());
        c.options = Some("noatime,nodiratime".into());
        c
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            mount_command(&device_cfg()).unwrap().unwrap().argv(),
            [
                "/usr/bin/mount",
                "-t",
                "xfs",
                "-o",
                "noatime,nodiratime",
                "/dev/drbd1000",
                "/srv/nfs"
            ]
        );
        let mut bare = device_cfg();
        bare.fstype = None;
        bare.options = None;
        assert_eq!(
            mount_command(&bare).unwrap().unwrap().argv(),
            ["/usr/bin/mount", "/dev/drbd1000", "/srv/nfs"]
        );
        let mut bind = MountConfig::new(MountMode::Bind, "/srv/nfs");
        bind.source_dir = Some("/var/lib/drbd-emu/r0/data".into());
        bind.mount = "/bin/mount".into();
        assert_eq!(
            mount_command(&bind).unwrap().unwrap().argv(),
            [
                "/bin/mount",
                "--bind",
                "/var/lib/drbd-emu/r0/data",
                "/srv/nfs"
            ]
        );
        assert_eq!(
            mount_command(&MountConfig::new(MountMode::Check, "/srv/nfs")).unwrap(),
            None
        );
        assert_eq!(
            umount_command(&bind).argv(),
            ["/usr/bin/umount", "/srv/nfs"]
        );
    }

    #[test]
    fn config_parses_and_validates() {
        let c: MountConfig = toml::from_str(
            "mode = \"device\"\ndevice = \"/dev/drbd1000\"\nmountpoint = \"/srv/nfs\"\nfstype = \"ext4\"",
        )
        .unwrap();
        assert_eq!(c, {
            let mut d = device_cfg();
            d.fstype = Some("ext4".into());
            d.options = None;
            d
        });
        c.validate().unwrap();
        assert!(toml::from_str::<MountConfig>("mode = \"loop\"\nmountpoint = \"/x\"").is_err());
        assert!(
            toml::from_str::<MountConfig>("mode = \"check\"\nmountpoint = \"/x\"\nfs = 1").is_err()
        );
        let no_dev = MountConfig::new(MountMode::Device, "/srv/nfs");
        assert!(no_dev
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs `device`"));
        let no_src = MountConfig::new(MountMode::Bind, "/srv/nfs");
        assert!(no_src.validate().is_err());
        assert!(MountConfig::new(MountMode::Check, "relative")
            .validate()
            .is_err());
    }

    #[tokio::test]
    async fn check_mode_verifies_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let c = MountConfig::new(MountMode::Check, dir.path());
        mount(&c).await.unwrap();
        assert!(is_mounted(&c).unwrap());
        unmount(&c).await.unwrap();
        let missing = MountConfig::new(MountMode::Check, dir.path().join("nope"));
        assert!(!is_mounted(&missing).unwrap());
        let e = mount(&missing).await.unwrap_err();
        assert!(matches!(e, ActionError::NotADirectory { .. }), "{e}");
    }
}
