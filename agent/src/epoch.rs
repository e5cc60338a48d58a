//! The highest pair epoch this agent has accepted, persisted across restarts (S4).
//!
//! Written with write-to-temp, fsync, rename, so a crash leaves either the old or
//! the new value, never a torn file. Sent in `Hello` so a new controller leader
//! knows which epoch the agent already holds.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// The persisted epoch file under the agent's state directory.
pub struct EpochStore {
    path: PathBuf,
}

impl EpochStore {
    /// Open the store, creating the state directory if needed.
    pub fn open(state_dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(state_dir).map_err(|source| AgentError::StateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        Ok(Self {
            path: state_dir.join("highest-epoch"),
        })
    }

    /// The highest epoch seen, 0 if none yet.
    pub fn load(&self) -> Result<u64, AgentError> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) => s.trim().parse().map_err(|_| AgentError::StateDir {
                path: self.path.clone(),
                source: std::io::Error::other(format!(
                    "holds {s:?}, not an epoch number; restore it or remove it only if this server holds no role"
                )),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(AgentError::StateDir {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Durably record a new highest epoch.
    pub fn store(&self, epoch: u64) -> Result<(), AgentError> {
        let tmp = self.path.with_extension("tmp");
        let err = |source| AgentError::StateDir {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(epoch.to_string().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let d = tempfile::tempdir().unwrap();
        let s = EpochStore::open(d.path()).unwrap();
        assert_eq!(s.load().unwrap(), 0);
        s.store(7).unwrap();
        assert_eq!(EpochStore::open(d.path()).unwrap().load().unwrap(), 7);
        std::fs::write(d.path().join("highest-epoch"), "x").unwrap();
        assert!(s
            .load()
            .unwrap_err()
            .to_string()
            .contains("not an epoch number"));
    }
}
