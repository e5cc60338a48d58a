//! Who is calling, and what they may do (SPEC §7).
//!
//! Every service asks [`Auth`] for the [`Caller`] of a request: an agent (may only
//! report and act for its own server), a Raft peer (its node id), or an operator
//! with a [`Role`] (`viewer`: status, history, explain, watch; `admin`:
//! everything). Without TLS (`[tls] insecure = true`, which the status warns
//! about) every caller is [`Caller::Insecure`] and may do everything.
//!
//! With TLS, rustls has already verified the client's certificate against the
//! cluster CA during the handshake (the server requires one: a client without
//! a certificate never gets a request through); here the leaf certificate's
//! `understudy:` URI SAN ([`crate::certs`]) says who the caller is. Each
//! service then checks what that caller may do:
//!
//! - `AgentService.Session`, `FencePeer` (`agents.rs`): an agent, for its own
//!   server only;
//! - `RaftService` (`raft/network.rs`): a controller that is a configured member;
//! - `OperatorService` (`operator.rs`): an operator with the role the call needs
//!   ([`Auth::operator`]).

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

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: use viewer or admin")),
        }
    }
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

/// Unit tests only: a request "from" this caller, as if its client
/// certificate named it (`req.extensions_mut().insert(TestCaller(..))`), so a
/// service's checks can be tested without a TLS connection. Not compiled into
/// the controller.
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct TestCaller(pub Caller);

/// How this node authenticates callers.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Plain text, no authentication (`[tls] insecure = true`).
    pub insecure: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth { insecure: true }
    }
}

impl Auth {
    /// Callers are named by their (CA-verified) TLS client certificates.
    pub fn tls() -> Self {
        Auth { insecure: false }
    }

    /// The caller of `req`.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if self.insecure {
            return Ok(Caller::Insecure);
        }
        #[cfg(test)]
        if let Some(TestCaller(c)) = req.extensions().get::<TestCaller>() {
            return Ok(c.clone());
        }
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: this controller requires mutual TLS; pass --ca/--cert/--key",
            )
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: this controller requires mutual TLS; pass --ca/--cert/--key",
            )
        })?;
        Self::caller_of_cert(leaf.as_ref())
    }

    /// The caller a (CA-verified) leaf certificate names.
    pub fn caller_of_cert(der: &[u8]) -> Result<Caller, Status> {
        crate::certs::caller_of_cert(der).map_err(Status::unauthenticated)
    }

    /// An operator allowed `need`; the identity for the audit history.
    pub fn operator<T>(&self, req: &Request<T>, need: Role) -> Result<String, Status> {
        Self::operator_allowed(self.caller(req)?, need)
    }

    /// Whether `caller` may make an operator call that needs `need`; the
    /// identity for the audit history.
    pub fn operator_allowed(caller: Caller, need: Role) -> Result<String, Status> {
        match caller {
            Caller::Insecure => Ok(Caller::Insecure.identity()),
            Caller::Operator { name, role } if role >= need => {
                Ok(Caller::Operator { name, role }.identity())
            }
            Caller::Operator { name, role } => Err(Status::permission_denied(format!(
                "{name} has the {role} role; this needs {need}"
            ))),
            other => Err(Status::permission_denied(format!(
                "{} is not an operator; use an operator certificate (`understudyctl certs issue --operator NAME --role {need}`)",
                other.identity()
            ))),
        }
    }

    /// An agent (or anybody, insecure) acting for `server_id`.
    pub fn agent_for<T>(&self, req: &Request<T>, server_id: &str) -> Result<Caller, Status> {
        let caller = self.caller(req)?;
        Self::agent_allowed(&caller, server_id)?;
        Ok(caller)
    }

    /// Whether `caller` may report or act for `server_id`.
    pub fn agent_allowed(caller: &Caller, server_id: &str) -> Result<(), Status> {
        match caller {
            Caller::Insecure => Ok(()),
            Caller::Agent { server_id: own } if own == server_id => Ok(()),
            Caller::Agent { server_id: own } => Err(Status::permission_denied(format!(
                "the certificate of agent {own} may only report and act for {own}, not for {server_id:?}; give this agent the certificate of {server_id:?}"
            ))),
            other => Err(Status::permission_denied(format!(
                "{} is not an agent; agents use certificates from `understudyctl certs issue --agent SERVER_ID`",
                other.identity()
            ))),
        }
    }

    /// A controller that is one of `members` (or anybody, insecure).
    pub fn peer<T>(&self, req: &Request<T>, members: &[u64]) -> Result<u64, Status> {
        match self.caller(req)? {
            Caller::Insecure => Ok(0),
            Caller::Peer { node_id } if members.contains(&node_id) => Ok(node_id),
            Caller::Peer { node_id } => Err(Status::permission_denied(format!(
                "controller {node_id} is not a member of this Raft group (members {members:?})"
            ))),
            other => Err(Status::permission_denied(format!(
                "{} may not send Raft messages; only member controllers may",
                other.identity()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer() -> Caller {
        Caller::Operator {
            name: "vera".into(),
            role: Role::Viewer,
        }
    }

    #[test]
    fn roles_are_ordered_viewer_below_admin() {
        assert!(Role::Viewer < Role::Admin);
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert_eq!("viewer".parse::<Role>().unwrap(), Role::Viewer);
        assert!("root".parse::<Role>().is_err());
        assert_eq!(Role::Admin.to_string(), "admin");
    }

    fn from(c: Caller) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(TestCaller(c));
        req
    }

    /// A viewer calling an admin-only RPC is refused, and an admin is not. No
    /// admin-only RPC exists in the proto yet: this is the check such an RPC
    /// (`promote`) makes first, `self.auth.operator(&req, Role::Admin)?`, on a
    /// request from a viewer. `tests/tests/auth.rs` shows over mutual TLS that
    /// a refusal (`PERMISSION_DENIED`) makes `understudyctl` exit 7.
    #[test]
    fn a_viewer_calling_an_admin_only_rpc_is_refused() {
        let auth = Auth::tls();
        let e = auth.operator(&from(viewer()), Role::Admin).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(e.message(), "vera has the viewer role; this needs admin");
        assert_eq!(
            auth.operator(&from(viewer()), Role::Viewer).unwrap(),
            "vera (viewer)"
        );
        let admin = Caller::Operator {
            name: "ada".into(),
            role: Role::Admin,
        };
        assert_eq!(
            auth.operator(&from(admin), Role::Admin).unwrap(),
            "ada (admin)"
        );
        // Insecure mode: everybody may do everything (and the status says so).
        assert_eq!(
            Auth::default()
                .operator(&Request::new(()), Role::Admin)
                .unwrap(),
            "anonymous (insecure mode)"
        );
    }

    #[test]
    fn a_viewer_may_read_but_not_administer() {
        let e = Auth::operator_allowed(viewer(), Role::Admin).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(e.message(), "vera has the viewer role; this needs admin");
        assert_eq!(
            Auth::operator_allowed(viewer(), Role::Viewer).unwrap(),
            "vera (viewer)"
        );
        let admin = Caller::Operator {
            name: "ada".into(),
            role: Role::Admin,
        };
        assert_eq!(
            Auth::operator_allowed(admin, Role::Viewer).unwrap(),
            "ada (admin)"
        );
        let agent = Caller::Agent {
            server_id: "fs1-a".into(),
        };
        let e = Auth::operator_allowed(agent, Role::Viewer).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("agent fs1-a is not an operator"));
        assert!(Auth::operator_allowed(Caller::Insecure, Role::Admin).is_ok());
    }

    #[test]
    fn an_agent_acts_for_its_own_server_only() {
        let a = Caller::Agent {
            server_id: "fs1-a".into(),
        };
        assert!(Auth::agent_allowed(&a, "fs1-a").is_ok());
        let e = Auth::agent_allowed(&a, "fs1-b").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("may only report and act for fs1-a"));
        assert!(Auth::agent_allowed(&Caller::Peer { node_id: 1 }, "fs1-a").is_err());
        assert!(Auth::agent_allowed(&viewer(), "fs1-a").is_err());
        assert!(Auth::agent_allowed(&Caller::Insecure, "fs1-b").is_ok());
    }

    #[test]
    fn without_a_client_certificate_nobody_is_anybody() {
        let req = Request::new(());
        let e = Auth::tls().caller(&req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(Auth::default().caller(&req).unwrap(), Caller::Insecure);
        assert_eq!(
            Auth::tls().peer(&req, &[1, 2, 3]).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            Auth::tls().operator(&req, Role::Viewer).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
