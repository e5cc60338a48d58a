//! Mutual TLS for Understudy's gRPC links (rustls, through tonic).
//!
//! Every link is mutually authenticated against the cluster's own CA: a
//! controller presents its certificate as a server (to agents, operators and
//! peers) and as a client (to its Raft peers); agents and operators present
//! theirs as clients. Who a certificate names (`understudy:agent:<server>`,
//! `understudy:controller:<node>`, `understudy:operator:<name>:<role>` URI SANs)
//! is decided by the controller (`understudy_controller::auth`); this crate only
//! reads the `[tls]` configuration section and builds the server and client
//! configurations.
//!
//! ```toml
//! [tls]
//! ca = "/etc/understudy/pki/ca.pem"        # the cluster CA's certificate
//! cert = "/etc/understudy/pki/agent-fs1-a.pem"
//! key = "/etc/understudy/pki/agent-fs1-a.key"
//! # or, and only then is the link plain text and unauthenticated:
//! # insecure = true
//! ```

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The `[tls]` section of a controller's or an agent's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The cluster CA's certificate (PEM): peers must present a certificate it signed.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM), signed by the CA.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM; readable by the owner only).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Plain text, nobody authenticated: anyone who reaches the port may pose
    /// as an agent, an operator or a controller. Must be set explicitly.
    #[serde(default)]
    pub insecure: bool,
}

/// The certificate files of a TLS-configured process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why TLS cannot be set up; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no [tls] section: configure mutual TLS (`[tls]` with ca, cert and key; `understudyctl certs init` and `understudyctl certs issue` make them) or, to run without any authentication, set `insecure = true` under [tls] explicitly")]
    Missing,
    #[error("[tls] sets insecure = true and also {0}: choose one, either the certificate files or insecure = true")]
    Both(&'static str),
    #[error("[tls] lacks {0}: set ca, cert and key (see `understudyctl certs issue`), or insecure = true to run without authentication")]
    Incomplete(&'static str),
    #[error("cannot read the TLS {what} {path}: {source}; check the path in [tls] and that this user may read it")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a PEM {what} ({reason}); give the file that `understudyctl certs` wrote"
    )]
    NotPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("bad controller address {addr:?}: {reason}; use host:port")]
    Address { addr: String, reason: String },
}

impl TlsSection {
    /// The certificate files, or `None` when explicitly insecure. A missing
    /// section (`None`) is an error: plain text must be chosen, not defaulted to.
    pub fn files(section: Option<&TlsSection>) -> Result<Option<TlsFiles>, TlsError> {
        let s = section.ok_or(TlsError::Missing)?;
        if s.insecure {
            for (name, v) in [("ca", &s.ca), ("cert", &s.cert), ("key", &s.key)] {
                if v.is_some() {
                    return Err(TlsError::Both(name));
                }
            }
            return Ok(None);
        }
        let need =
            |name: &'static str, v: &Option<PathBuf>| v.clone().ok_or(TlsError::Incomplete(name));
        Ok(Some(TlsFiles {
            ca: need("ca", &s.ca)?,
            cert: need("cert", &s.cert)?,
            key: need("key", &s.key)?,
        }))
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Read a PEM certificate (chain) file, checking it holds one.
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(what, path)?;
    let not_pem = |reason: String| TlsError::NotPem {
        what,
        path: path.to_owned(),
        reason,
    };
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&pem) {
        c.map_err(|e| not_pem(e.to_string()))?;
        n += 1;
    }
    if n == 0 {
        return Err(not_pem("no CERTIFICATE block".into()));
    }
    Ok(pem)
}

/// Read a PEM private key file, checking it holds one.
fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NotPem {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(pem)
}

impl TlsFiles {
    /// The client side: trust the CA, present this certificate.
    pub fn client(&self) -> Result<ClientTls, TlsError> {
        ClientTls::load(&self.ca, Some((&self.cert, &self.key)))
    }

    /// The server side (controllers): present this certificate and require
    /// every client to present one the CA signed (not optional).
    pub fn server(&self) -> Result<ServerTlsConfig, TlsError> {
        let ca = read_certs("CA certificate", &self.ca)?;
        let cert = read_certs("certificate", &self.cert)?;
        let key = read_key(&self.key)?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false)
            .timeout(Duration::from_secs(5)))
    }
}

/// What a client needs to dial a controller over TLS.
#[derive(Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Option<Identity>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Trust `ca`; present `identity` (certificate, key) when given. Without
    /// one the controller refuses the connection (it requires client
    /// certificates), which `understudyctl` reports as unauthorised.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let ca = Certificate::from_pem(read_certs("CA certificate", ca)?);
        let identity = match identity {
            Some((cert, key)) => Some(Identity::from_pem(
                read_certs("certificate", cert)?,
                read_key(key)?,
            )),
            None => None,
        };
        Ok(ClientTls { ca, identity })
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
pub fn host_of(addr: &str) -> Result<&str, TlsError> {
    let bad = |reason: &str| TlsError::Address {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(host)
}

/// An endpoint for a controller at `addr` (`host:port`): plain text without
/// `tls`, else TLS verifying the controller's certificate for `host` (an IP
/// address SAN for an IP) and presenting the client's certificate.
pub fn endpoint(addr: &str, tls: Option<&ClientTls>) -> Result<Endpoint, TlsError> {
    let host = host_of(addr)?;
    let bad = |e: tonic::transport::Error| TlsError::Address {
        addr: addr.to_owned(),
        reason: error_chain(&e),
    };
    match tls {
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(bad),
        Some(t) => {
            let mut cfg = ClientTlsConfig::new()
                .ca_certificate(t.ca.clone())
                .domain_name(host.to_owned());
            if let Some(id) = &t.identity {
                cfg = cfg.identity(id.clone());
            }
            Endpoint::from_shared(format!("https://{addr}"))
                .and_then(|e| e.tls_config(cfg))
                .map_err(bad)
        }
    }
}

/// An error and its sources, `a: b: c` (an `io::Error` wrapping another error
/// is followed into it; repeated messages are left out).
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    walk(e, &mut |err| {
        let s = err.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        None::<()>
    });
    parts.join(": ")
}

/// Visit `e` and its sources (into `io::Error`s' inner errors) until `f` says stop.
fn walk<T>(
    e: &(dyn StdError + 'static),
    f: &mut dyn FnMut(&(dyn StdError + 'static)) -> Option<T>,
) -> Option<T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(v) = f(err) {
            return Some(v);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(v) = walk(inner, f) {
                return Some(v);
            }
        }
        cur = err.source();
    }
    None
}

/// When a call failed because TLS authentication failed (the controller
/// refused this client's certificate or its absence, or this client does not
/// trust the controller's), what an operator should fix; `None` for other
/// failures.
pub fn auth_failure(e: &(dyn StdError + 'static)) -> Option<String> {
    use rustls::AlertDescription as A;
    walk(e, &mut |err| {
        let r = err.downcast_ref::<rustls::Error>()?;
        Some(match r {
            rustls::Error::AlertReceived(A::CertificateRequired) => {
                "the controller requires a client certificate: pass --cert and --key (or [tls] cert and key)".to_string()
            }
            rustls::Error::AlertReceived(
                a @ (A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied
                | A::DecryptError),
            ) => format!(
                "the controller refused this client's certificate (TLS alert {a:?}): it must be signed by the cluster CA, unexpired, and made for this use by `understudyctl certs issue`"
            ),
            rustls::Error::InvalidCertificate(c) => format!(
                "the controller's certificate is not acceptable ({c:?}): check that the CA is the cluster's and that the controller's certificate names the address dialled (`understudyctl certs issue --controller N --addr IP,...`)"
            ),
            _ => return None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_of_insecure_and_files() {
        assert!(matches!(TlsSection::files(None), Err(TlsError::Missing)));
        let msg = TlsSection::files(None).unwrap_err().to_string();
        assert!(msg.contains("insecure = true") && msg.contains("understudyctl certs"));
        let insecure = TlsSection {
            insecure: true,
            ..Default::default()
        };
        assert_eq!(TlsSection::files(Some(&insecure)).unwrap(), None);
        let both = TlsSection {
            insecure: true,
            ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            TlsSection::files(Some(&both)),
            Err(TlsError::Both("ca"))
        ));
        let partial = TlsSection {
            ca: Some("/ca.pem".into()),
            cert: Some("/c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            TlsSection::files(Some(&partial)),
            Err(TlsError::Incomplete("key"))
        ));
        let full = TlsSection {
            key: Some("/c.key".into()),
            ..partial
        };
        assert_eq!(
            TlsSection::files(Some(&full)).unwrap(),
            Some(TlsFiles {
                ca: "/ca.pem".into(),
                cert: "/c.pem".into(),
                key: "/c.key".into()
            })
        );
        // Nothing at all set is not "insecure" either.
        assert!(matches!(
            TlsSection::files(Some(&TlsSection::default())),
            Err(TlsError::Incomplete("ca"))
        ));
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7101").unwrap(), "127.0.0.1");
        assert_eq!(host_of("[::1]:7101").unwrap(), "::1");
        assert_eq!(host_of("ctl-1.example:7101").unwrap(), "ctl-1.example");
        assert!(host_of("127.0.0.1").is_err());
        assert!(host_of(":7101").is_err());
    }

    #[test]
    fn unreadable_or_non_pem_files_are_named() {
        let dir = std::env::temp_dir().join(format!("understudy-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = ClientTls::load(&junk, None).unwrap_err().to_string();
        assert!(e.contains("junk.pem is not a PEM CA certificate"), "{e}");
        let e = ClientTls::load(&dir.join("absent.pem"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the TLS CA certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
