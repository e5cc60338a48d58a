//! The emulated backing device: a directory tree.
//!
//! A tree is described by a manifest: relative path (`/`-separated, UTF-8)
//! -> [`Entry`] (regular file with size/mtime/mode, directory with mode, or
//! symlink with target). Two entries are "in sync" when equal (rsync's quick
//! check: size + mtime + mode; contents are not hashed).
//!
//! `out-of-sync` is computed from the difference of two manifests in DRBD's
//! 4 KiB bitmap granularity: a differing file counts `ceil(size / 4 KiB)`
//! blocks (at least one), a directory, symlink or deletion one block.
//!
//! Temp files of in-flight transfers are named `.drbd-emu.tmp.*`; scans skip
//! them and the daemon removes leftovers at start.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of temp files inside the data directory.
pub const TMP_PREFIX: &str = ".drbd-emu.tmp.";

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Entry {
    /// Regular file.
    File {
        /// Bytes.
        size: u64,
        /// Modification time, seconds.
        mtime: i64,
        /// Modification time, nanoseconds.
        mtime_ns: u32,
        /// Permission bits.
        mode: u32,
    },
    /// Directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// Symbolic link.
    Symlink {
        /// Link target.
        target: String,
    },
}

/// A manifest: relative path -> entry.
pub type Manifest = BTreeMap<String, Entry>;

impl Entry {
    /// The entry describing `md` (None for sockets, fifos, devices).
    pub fn from_metadata(md: &fs::Metadata, path: &Path) -> Option<Entry> {
        let ft = md.file_type();
        if ft.is_symlink() {
            let t = fs::read_link(path).ok()?;
            Some(Entry::Symlink {
                target: t.to_str()?.to_string(),
            })
        } else if ft.is_dir() {
            Some(Entry::Dir {
                mode: md.permissions().mode() & 0o7777,
            })
        } else if ft.is_file() {
            Some(Entry::File {
                size: md.len(),
                mtime: md.mtime(),
                mtime_ns: md.mtime_nsec() as u32,
                mode: md.permissions().mode() & 0o7777,
            })
        } else {
            None
        }
    }

    /// Bitmap blocks (4 KiB) this entry accounts for when out of sync.
    pub fn blocks(&self) -> u64 {
        match self {
            Entry::File { size, .. } => size.div_ceil(4096).max(1),
            _ => 1,
        }
    }
}

/// Scans `root` into a manifest (missing root = empty manifest).
pub fn scan(root: &Path) -> io::Result<Manifest> {
    let mut out = Manifest::new();
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    scan_dir(root, "", &mut out)?;
    Ok(out)
}

fn scan_dir(dir: &Path, prefix: &str, out: &mut Manifest) -> io::Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for de in rd {
        let de = match de {
            Ok(de) => de,
            Err(_) => continue,
        };
        let Some(name) = de.file_name().to_str().map(str::to_string) else {
            continue; // non-UTF-8 names are not replicated
        };
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let path = de.path();
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue; // vanished meanwhile
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if let Some(e) = Entry::from_metadata(&md, &path) {
            let is_dir = matches!(e, Entry::Dir { .. });
            out.insert(rel.clone(), e);
            if is_dir {
                scan_dir(&path, &rel, out)?;
            }
        }
    }
    Ok(())
}

/// One step that brings the peer's tree closer to ours.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Remove this path (and everything below it) on the peer.
    Delete(String),
    /// Create / replace this path on the peer.
    Put(String, Entry),
}

/// The next operation turning `peer` into `local`: deletions first (deepest
/// first), then creations in path order (parents before children).
pub fn next_op(local: &Manifest, peer: &Manifest) -> Option<Op> {
    if let Some(p) = peer.keys().rev().find(|p| !local.contains_key(*p)) {
        return Some(Op::Delete(p.clone()));
    }
    local
        .iter()
        .find(|(p, e)| peer.get(*p) != Some(e))
        .map(|(p, e)| Op::Put(p.clone(), e.clone()))
}

/// KiB out of sync between `local` (the source) and `peer`.
pub fn out_of_sync_kib(local: &Manifest, peer: &Manifest) -> u64 {
    let mut blocks = 0;
    for (p, e) in local {
        if peer.get(p) != Some(e) {
            blocks += e.blocks();
        }
    }
    for p in peer.keys() {
        if !local.contains_key(p) {
            blocks += 1;
        }
    }
    blocks * 4
}

/// Resolves a relative path received from the peer, refusing anything that
/// would escape `root`.
pub fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.is_absolute() {
        return None;
    }
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(root.join(p))
    } else {
        None
    }
}

/// Temp name next to `target` for an in-flight transfer.
pub fn tmp_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("x")
        .to_string();
    target.with_file_name(format!("{TMP_PREFIX}{name}"))
}

/// Removes whatever is at `path` (file, symlink or directory tree).
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
}

/// fsyncs a directory (makes a rename durable).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes leftover temp files of interrupted transfers below `root`.
pub fn remove_temp_files(root: &Path) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for de in rd.flatten() {
        let path = de.path();
        let is_tmp = de
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX));
        if is_tmp {
            let _ = remove_any(&path);
        } else if de.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_temp_files(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Entry {
        Entry::File {
            size,
            mtime: 1,
            mtime_ns: 0,
            mode: 0o644,
        }
    }

    #[test]
    fn diff_orders_deletes_then_parents_first() {
        let mut local = Manifest::new();
        local.insert("a".into(), Entry::Dir { mode: 0o755 });
        local.insert("a/b".into(), file(5000));
        let mut peer = Manifest::new();
        peer.insert("z".into(), Entry::Dir { mode: 0o755 });
        peer.insert("z/y".into(), file(1));
        assert_eq!(out_of_sync_kib(&local, &peer), (1 + 2 + 1 + 1) * 4);
        assert_eq!(next_op(&local, &peer), Some(Op::Delete("z/y".into())));
        peer.clear();
        assert_eq!(
            next_op(&local, &peer),
            Some(Op::Put("a".into(), Entry::Dir { mode: 0o755 }))
        );
        peer = local.clone();
        assert_eq!(next_op(&local, &peer), None);
        assert_eq!(out_of_sync_kib(&local, &peer), 0);
    }

    #[test]
    fn safe_join_rejects_escapes() {
        let r = Path::new("/r");
        assert!(safe_join(r, "../x").is_none());
        assert!(safe_join(r, "/etc").is_none());
        assert!(safe_join(r, "a/./b").is_some());
        assert_eq!(safe_join(r, "a/b").unwrap(), Path::new("/r/a/b"));
    }

    #[test]
    fn scan_sees_files_dirs_symlinks_and_skips_temp() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), b"hello").unwrap();
        fs::write(d.path().join(format!("{TMP_PREFIX}x")), b"tmp").unwrap();
        std::os::unix::fs::symlink("sub/f", d.path().join("l")).unwrap();
        let m = scan(d.path()).unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(matches!(m["sub/f"], Entry::File { size: 5, .. }));
        assert_eq!(
            m["l"],
            Entry::Symlink {
                target: "sub/f".into()
            }
        );
        remove_temp_files(d.path());
        assert!(!d.path().join(format!("{TMP_PREFIX}x")).exists());
    }
}
