//! Persisted disk metadata (the emulated DRBD meta-data area).
//!
//! Stored as `META_DIR/meta.json` (`[device] meta_dir`, default `state_dir`;
//! with the block mode's bitmap next to it this is DRBD's internal meta
//! data, which travels with the volume), always replaced atomically (write a temp
//! file, fsync, rename, fsync the directory), so a daemon killed with SIGKILL
//! at any instant leaves either the old or the new metadata, never a torn one.
//!
//! * `disk`: the disk state at attach time (`Inconsistent` for a new disk,
//!   `UpToDate`, `Outdated`).
//! * `gen` / `history`: the data generation (DRBD's current UUID) and the
//!   generations it descends from (bitmap/history UUIDs). `0` = a brand-new
//!   disk that never held valid data. The pair of (gen, history) of both
//!   hosts decides resync direction and split brain (see `repl::decide`).
//! * `peer_known`: what this host believes the peer holds (the last
//!   acknowledged manifest). A Primary computes `out-of-sync` against it while
//!   disconnected; on connect it is replaced by the peer's real manifest.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::DiskState;
use crate::tree::Entry;

/// The persisted metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Format version.
    pub version: u32,
    /// Disk state when attached.
    pub disk: DiskState,
    /// Current data generation (0 = never held valid data).
    pub gen: u64,
    /// Older generations this data descends from, newest first.
    pub history: Vec<u64>,
    /// What the peer holds, as far as this host knows.
    pub peer_known: BTreeMap<String, Entry>,
    /// Block mode: the bitmap cannot be trusted (it could not be written
    /// when the disk was detached after an I/O error): the next attach
    /// marks every block out of sync (DRBD's `MDF_FULL_SYNC`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_sync: bool,
}

impl Meta {
    /// Metadata of a freshly created disk (`create-md`).
    pub fn fresh() -> Meta {
        Meta {
            version: 1,
            disk: DiskState::Inconsistent,
            gen: 0,
            history: Vec::new(),
            peer_known: BTreeMap::new(),
            full_sync: false,
        }
    }

    /// Loads the metadata; `Ok(None)` if none was created yet.
    pub fn load(path: &Path) -> std::io::Result<Option<Meta>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Atomically replaces the metadata file.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_atomic(path, &bytes)
    }

    /// Starts a new data generation (after `primary --force`, or the first
    /// write of a Primary that is not connected to its peer).
    pub fn new_generation(&mut self) {
        if self.gen != 0 {
            self.history.insert(0, self.gen);
            self.history.truncate(32);
        }
        self.gen = new_gen_id();
    }
}

/// Writes `bytes` to `path` via temp file + fsync + rename + dir fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("meta"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A random-ish, non-zero 64-bit generation id (DRBD UUIDs are random too).
fn new_gen_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() & !1) | 2 // never 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_roundtrip_and_generations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.json");
        assert!(Meta::load(&p).unwrap().is_none());
        let mut m = Meta::fresh();
        m.new_generation();
        assert_ne!(m.gen, 0);
        assert!(m.history.is_empty());
        let g1 = m.gen;
        m.new_generation();
        assert_eq!(m.history, vec![g1]);
        m.store(&p).unwrap();
        assert_eq!(Meta::load(&p).unwrap().unwrap(), m);
    }
}
