//! Errors of the controller, each worded so an operator knows what to do next.

use std::path::PathBuf;

/// Everything that can stop a controller node or refuse an operator request.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("configuration {path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("cannot use data directory {path}: {source}; create it or fix its permissions")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("Raft storage: {0}; the data directory may be damaged or used by another process")]
    Storage(#[from] std::io::Error),

    #[error("Raft node stopped: {0}; see the log above for the cause and restart the controller")]
    RaftFatal(String),

    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    #[error("cannot start the {name} runtime: {source}; the controller needs three threads besides its main ones (check the process and memory limits)")]
    SideRuntime {
        name: String,
        source: std::io::Error,
    },

    #[error("cannot open a UDP socket for liveness probes: {source}; the controller needs one ephemeral UDP port")]
    ProbeSocket { source: std::io::Error },

    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),

    #[error("this node is not the Raft leader{}", leader_hint(.leader_addr))]
    NotLeader { leader_addr: Option<String> },

    #[error(
        "no quorum: {0}; check that a majority of controllers is running and can reach each other"
    )]
    NoQuorum(String),
}

fn leader_hint(addr: &Option<String>) -> String {
    match addr {
        Some(a) => format!("; the leader is at {a}"),
        None => "; no leader is known yet, retry in a moment".into(),
    }
}
