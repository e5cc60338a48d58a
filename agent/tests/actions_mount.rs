//! Bind mounts for real (root): mount, mount again, see it in
//! /proc/self/mountinfo (through a path with a space, so the octal escape is
//! exercised), unmount, unmount again; and a foreign mount on the mountpoint
//! is refused instead of used or removed. Fails (never skips) when not root.

use std::path::{Path, PathBuf};
use std::process::Command;

use understudy_agent::actions::mount::{self, MountConfig, MountMode, MountState};
use understudy_agent::actions::ActionError;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Lazily unmounts everything on the mountpoint when dropped.
struct Unmounter(PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        for _ in 0..4 {
            let ok = Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                break;
            }
        }
    }
}

fn mounted_here(mp: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mp = std::fs::canonicalize(mp).unwrap();
    mount::parse_mountinfo(&text)
        .iter()
        .filter(|e| e.mount_point == mp)
        .count()
}

#[tokio::test]
async fn bind_mount_is_idempotent_both_ways() {
    assert!(
        is_root(),
        "the bind-mount test must run as root (mount --bind)"
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("replicated dir");
    let mp = dir.path().join("mount point");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), b"on the volume").unwrap();
    let _guard = Unmounter(mp.clone());

    let mut cfg = MountConfig::new(MountMode::Bind, &mp);
    cfg.source_dir = Some(src.clone());
    assert!(!mount::is_mounted(&cfg).unwrap());
    mount::unmount(&cfg).await.unwrap(); // not mounted: fine

    mount::mount(&cfg).await.unwrap(); // creates the mountpoint too
    assert!(mount::is_mounted(&cfg).unwrap());
    assert_eq!(std::fs::read(mp.join("file")).unwrap(), b"on the volume");
    mount::mount(&cfg).await.unwrap();
    assert_eq!(mounted_here(&mp), 1, "mounted twice");

    mount::unmount(&cfg).await.unwrap();
    assert!(!mount::is_mounted(&cfg).unwrap());
    assert_eq!(mounted_here(&mp), 0);
    assert!(!mp.join("file").exists());
    mount::unmount(&cfg).await.unwrap();
}

#[tokio::test]
async fn a_foreign_mount_is_refused() {
    assert!(
        is_root(),
        "the bind-mount test must run as root (mount -t tmpfs)"
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mp = dir.path().join("mp");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mp).unwrap();
    let _guard = Unmounter(mp.clone());
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "us-foreign"])
        .arg(&mp)
        .status()
        .unwrap();
    assert!(st.success());

    let mut cfg = MountConfig::new(MountMode::Bind, &mp);
    cfg.source_dir = Some(src);
    match mount::mount_state(&cfg).unwrap() {
        MountState::Other { found } => assert!(found.contains("us-foreign"), "{found}"),
        other => panic!("{other:?}"),
    }
    let e = mount::mount(&cfg).await.unwrap_err();
    assert!(matches!(e, ActionError::MountpointBusy { .. }), "{e}");
    let e = mount::unmount(&cfg).await.unwrap_err();
    assert!(matches!(e, ActionError::MountpointBusy { .. }), "{e}");
    assert_eq!(mounted_here(&mp), 1, "the foreign mount was touched");

    // The same check for a device mount.
    let mut dev = MountConfig::new(MountMode::Device, &mp);
    dev.device = Some("/dev/drbd1000".into());
    assert!(matches!(
        mount::mount_state(&dev).unwrap(),
        MountState::Other { .. }
    ));
}
