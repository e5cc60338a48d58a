//! Errors of the agent, each worded so an operator knows what to do next.

use std::path::PathBuf;

/// Everything that can stop the agent or one of its parts.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration {path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("cannot use state directory {path}: {source}; create it or fix its permissions")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "cannot start {program}: {source}; check the drbdsetup path in the agent configuration"
    )]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },

    #[error("{program} exited ({status}){}", stderr_hint(.stderr))]
    ObserverExited {
        program: PathBuf,
        status: String,
        stderr: String,
    },

    #[error("cannot listen for probes on {addr} (UDP): {source}; set probe_listen in the agent configuration to a free address and port, and the same port as probe_port of this server in the controller inventory")]
    ProbeListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    #[error("controller {addr}: {reason}")]
    Controller { addr: String, reason: String },

    #[error(transparent)]
    Action(#[from] crate::actions::ActionError),

    #[error("the controller refused this agent: {0}; fix the agent or controller configuration")]
    Refused(String),

    #[error("the action did not finish within the {timeout_ms} ms the controller waits; it was stopped (the controller records the step failed; it may retry)")]
    ActionTimeout { timeout_ms: u64 },

    #[error("superseded: a newer command (epoch {newer_epoch} term {newer_term}) was accepted while this one (epoch {epoch} term {term}) waited for its turn; commands run in token order (S4)")]
    Superseded {
        epoch: u64,
        term: u64,
        newer_epoch: u64,
        newer_term: u64,
    },

    #[error("stale command refused: epoch {epoch} term {term} is older than the highest accepted (epoch {highest_epoch} term {highest_term}); it comes from a deposed leader or an earlier failover (S4)")]
    StaleToken {
        epoch: u64,
        term: u64,
        highest_epoch: u64,
        highest_term: u64,
    },
}

fn stderr_hint(s: &str) -> String {
    if s.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", s.trim())
    }
}
