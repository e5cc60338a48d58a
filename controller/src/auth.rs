//! Who is calling, and what they may do (SPEC §7).
//!
//! Every service asks [`Auth`] for the [`Caller`] of a request: an agent (may only
//! report and act for its own server), a Raft peer (its node id), or an operator
//! with a [`Role`] (`viewer`: status, history, explain, watch; `admin`:
//! everything). Without TLS (`--insecure`, which the status warns about) every
//! caller is [`Caller::Insecure`] and may do everything.

use std::fmt;

use serde::Deserialize;
use tonic::{Request, Status};

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Status, history, explain, watch, check.
    Viewer,
    /// Everything, including commands that change a pair.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        })
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plain-text mode: nobody is authenticated, everything is allowed.
    Insecure,
    /// An agent; its certificate names its server.
    Agent { server_id: String },
    /// A controller node; its certificate names its node id.
    Peer { node_id: u64 },
    /// A person or tool with a role.
    Operator { name: String, role: Role },
}

impl Caller {
    /// How the audit history names the caller.
    pub fn identity(&self) -> String {
        match self {
            Caller::Insecure => "anonymous (insecure mode)".into(),
            Caller::Agent { server_id } => format!("agent {server_id}"),
            Caller::Peer { node_id } => format!("controller {node_id}"),
            Caller::Operator { name, role } => format!("{name} ({role})"),
        }
    }
}

/// How this node authenticates callers.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Plain text, no authentication (`--insecure`).
    pub insecure: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth { insecure: true }
    }
}

impl Auth {
    /// The caller of `req`.
    pub fn caller<T>(&self, _req: &Request<T>) -> Result<Caller, Status> {
        if self.insecure {
            return Ok(Caller::Insecure);
        }
        Err(Status::unauthenticated(
            "no client certificate: this controller requires mutual TLS; pass --ca/--cert/--key",
        ))
    }

    /// An operator allowed `need`; the identity for the audit history.
    pub fn operator<T>(&self, req: &Request<T>, need: Role) -> Result<String, Status> {
        match self.caller(req)? {
            Caller::Insecure => Ok(Caller::Insecure.identity()),
            Caller::Operator { name, role } if role >= need => {
                Ok(Caller::Operator { name, role }.identity())
            }
            Caller::Operator { name, role } => Err(Status::permission_denied(format!(
                "{name} has the {role} role; this needs {need}"
            ))),
            other => Err(Status::permission_denied(format!(
                "{} is not an operator",
                other.identity()
            ))),
        }
    }
}
