//! Fencing tokens on the agent (S4): the highest (epoch, Raft term) this agent has
//! accepted, persisted across restarts.
//!
//! Every controller command carries the pair's failover epoch and the Raft term of
//! the leader that sent it. The agent accepts a command only if its (epoch, term)
//! is not older than the highest it has accepted (compared epoch first, then
//! term), and records it durably *before* acting. So a deposed leader, or a
//! delayed command from an earlier failover, can never make this server act again.
//!
//! Written with write-to-temp, fsync, rename: a crash leaves the old or the new
//! value, never a torn file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::AgentError;

/// A fencing token: pair epoch, then the Raft term of the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Token {
    pub epoch: u64,
    pub term: u64,
}

/// The persisted highest token.
pub struct EpochStore {
    path: PathBuf,
    current: Mutex<Token>,
}

impl EpochStore {
    /// Open the store (creating the state directory) and load the token.
    pub fn open(state_dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(state_dir).map_err(|source| AgentError::StateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join("highest-epoch");
        let current = match std::fs::read_to_string(&path) {
            Ok(s) => parse(&s).ok_or_else(|| AgentError::StateDir {
                path: path.clone(),
                source: std::io::Error::other(format!(
                    "holds {s:?}, not \"EPOCH TERM\"; restore it, or remove it only if this server holds no role"
                )),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Token::default(),
            Err(source) => return Err(AgentError::StateDir { path, source }),
        };
        Ok(Self {
            path,
            current: Mutex::new(current),
        })
    }

    /// The highest token accepted so far.
    pub fn current(&self) -> Token {
        *self.current.lock().expect("epoch lock")
    }

    /// Accept `t` if it is not older than the highest so far, persisting it first.
    pub fn accept(&self, t: Token) -> Result<(), AgentError> {
        let mut cur = self.current.lock().expect("epoch lock");
        if t < *cur {
            return Err(AgentError::StaleToken {
                epoch: t.epoch,
                term: t.term,
                highest_epoch: cur.epoch,
                highest_term: cur.term,
            });
        }
        if t > *cur {
            self.persist(t)?;
            *cur = t;
        }
        Ok(())
    }

    fn persist(&self, t: Token) -> Result<(), AgentError> {
        let tmp = self.path.with_extension("tmp");
        let err = |source| AgentError::StateDir {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(format!("{} {}\n", t.epoch, t.term).as_bytes())
            .map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

fn parse(s: &str) -> Option<Token> {
    let mut it = s.split_whitespace();
    let epoch = it.next()?.parse().ok()?;
    let term = it.next().map(|t| t.parse().ok()).unwrap_or(Some(0))?;
    Some(Token { epoch, term })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_newer_refuses_older_and_survives_restart() {
        let d = tempfile::tempdir().unwrap();
        let s = EpochStore::open(d.path()).unwrap();
        assert_eq!(s.current(), Token::default());
        s.accept(Token { epoch: 2, term: 5 }).unwrap();
        s.accept(Token { epoch: 2, term: 5 }).unwrap(); // same: fine (retries)
        s.accept(Token { epoch: 2, term: 7 }).unwrap(); // new leader, same plan
        let err = s.accept(Token { epoch: 1, term: 9 }).unwrap_err();
        assert!(err.to_string().contains("stale"), "{err}");
        let err = s.accept(Token { epoch: 2, term: 6 }).unwrap_err();
        assert!(err.to_string().contains("epoch 2 term 6"), "{err}");
        drop(s);
        let s = EpochStore::open(d.path()).unwrap();
        assert_eq!(s.current(), Token { epoch: 2, term: 7 });
        assert!(s
            .accept(Token {
                epoch: 1,
                term: 100
            })
            .is_err());
        std::fs::write(d.path().join("highest-epoch"), "x").unwrap();
        assert!(EpochStore::open(d.path())
            .err()
            .unwrap()
            .to_string()
            .contains("not \"EPOCH TERM\""));
    }
}
