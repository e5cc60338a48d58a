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
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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
    #[error("cannot serve TLS with [tls] cert, key and ca: {reason}; check that cert and key belong together and are PEM files from `understudyctl certs issue`")]
    Server { reason: String },
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
    /// every client to present one the CA signed (not optional); HTTP/2 only.
    /// The controller runs the handshakes itself (admitted a few at a time),
    /// so this is rustls' configuration, not tonic's.
    pub fn server(&self) -> Result<rustls::ServerConfig, TlsError> {
        let ca = read_certs("CA certificate", &self.ca)?;
        let cert = read_certs("certificate", &self.cert)?;
        let key = read_key(&self.key)?;
        let bad = |reason: String| TlsError::Server { reason };
        let roots = root_store(&ca).map_err(bad)?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad(e.to_string()))?;
        let (chain, key) = identity_der(&cert, &key).map_err(bad)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| bad(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// The CA certificates of a PEM file, as rustls' trust roots.
fn root_store(ca_pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// A certificate chain and its private key, from PEM, for rustls.
fn identity_der(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    Ok((chain, key))
}

/// What a client needs to dial a controller over TLS (PEM).
#[derive(Clone)]
pub struct ClientTls {
    ca: Vec<u8>,
    /// Certificate (chain) and key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
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
        let ca = read_certs("CA certificate", ca)?;
        let identity = match identity {
            Some((cert, key)) => Some((read_certs("certificate", cert)?, read_key(key)?)),
            None => None,
        };
        Ok(ClientTls { ca, identity })
    }

    /// Whether this client presents a certificate.
    pub fn has_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// The same configuration for rustls directly ([`diagnose`], and tests
    /// that speak TLS to a controller below gRPC).
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        let roots = root_store(&self.ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let mut cfg = match &self.identity {
            Some((cert, key)) => {
                let (chain, key) = identity_der(cert, key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// Whether a failed call may hide a TLS refusal worth [`diagnose`]: not when
/// the TCP connection itself failed (nobody listening, unreachable), nor when
/// the refusal is already plain.
pub fn worth_diagnosing(e: &(dyn StdError + 'static)) -> bool {
    auth_failure(e).is_none() && !error_chain(e).contains("tcp connect error")
}

/// Why a controller at `addr` refuses this client at the TLS layer, if it
/// does: a bare handshake, then a wait for the controller's first bytes.
///
/// With TLS 1.3 a client learns that its certificate was refused only after
/// its own handshake finished; a gRPC call that has already written its
/// request may then see the connection reset rather than the controller's
/// alert. This probe writes nothing, so the alert arrives intact. `None`: the
/// controller accepted the handshake, or could not be reached at all.
pub async fn diagnose(addr: &str, tls: &ClientTls, timeout: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let host = host_of(addr).ok()?.to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).ok()?;
    let cfg = tls.rustls_config().ok()?;
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
        let mut stream = match connector.connect(name, tcp).await {
            Ok(s) => s,
            Err(e) => return auth_failure(&e),
        };
        let mut buf = [0u8; 64];
        match stream.read(&mut buf).await {
            Err(e) => auth_failure(&e),
            Ok(_) => None,
        }
    };
    tokio::time::timeout(timeout, probe).await.ok().flatten()
}

/// Background [`diagnose`] after failed calls of a long-running client (an
/// agent, a Raft peer), at most once per interval, so a refused certificate is
/// logged as such instead of as a broken connection; the caller's retries go
/// on undelayed.
#[derive(Debug)]
pub struct Diagnosis {
    every: Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Diagnosis {
    pub fn new(every: Duration) -> Self {
        Diagnosis {
            every,
            last: std::sync::Mutex::new(None),
        }
    }

    /// A call to `addr` failed in transport (with `failure`, when there is an
    /// error to look at): unless a probe ran within the interval, probe in the background and log an error naming the reason
    /// if the controller refuses this client's certificate. Needs a tokio runtime.
    pub fn after_failure(
        &self,
        addr: &str,
        tls: &ClientTls,
        failure: Option<&(dyn StdError + 'static)>,
        who: &'static str,
    ) {
        if failure.is_some_and(|e| !worth_diagnosing(e)) {
            return;
        }
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.every) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let (addr, tls) = (addr.to_owned(), tls.clone());
        tokio::spawn(async move {
            if let Some(why) = diagnose(&addr, &tls, Duration::from_secs(2)).await {
                tracing::error!(controller = %addr, error = %why, "{who}: TLS refused");
            }
        });
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
                .ca_certificate(Certificate::from_pem(&t.ca))
                .domain_name(host.to_owned());
            if let Some((cert, key)) = &t.identity {
                cfg = cfg.identity(Identity::from_pem(cert, key));
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
///
/// rustls's error is matched by type where it survives, and by its text where
/// it does not: h2 keeps only the message of an I/O error it passes on.
pub fn auth_failure(e: &(dyn StdError + 'static)) -> Option<String> {
    walk(e, &mut |err| match err.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::AlertReceived(a)) => alert(&format!("{a:?}")),
        Some(rustls::Error::InvalidCertificate(c)) => Some(untrusted(&c.to_string())),
        Some(_) => None,
        None => {
            let text = err.to_string();
            if let Some(rest) = text.split("received fatal alert: ").nth(1) {
                alert(rest.split(|c: char| !c.is_ascii_alphanumeric()).next()?)
            } else {
                let rest = text.split("invalid peer certificate: ").nth(1)?;
                Some(untrusted(rest))
            }
        }
    })
}

/// A TLS alert from the controller that means it refused this client.
fn alert(name: &str) -> Option<String> {
    match name {
        "CertificateRequired" => Some(
            "the controller requires a client certificate: pass --cert and --key (or [tls] cert and key)".into(),
        ),
        "BadCertificate" | "UnknownCA" | "CertificateUnknown" | "CertificateExpired"
        | "CertificateRevoked" | "UnsupportedCertificate" | "AccessDenied" | "DecryptError" => {
            Some(format!(
                "the controller refused this client's certificate (TLS alert {name}): it must be signed by the cluster CA, unexpired, and made for this use by `understudyctl certs issue`"
            ))
        }
        _ => None,
    }
}

/// This client does not accept the controller's certificate.
fn untrusted(why: &str) -> String {
    format!(
        "the controller's certificate is not acceptable ({why}): check that --ca (or [tls] ca) is the cluster's CA and that the controller's certificate names the address dialled (`understudyctl certs issue --controller N --addr IP,...`)"
    )
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
    fn refusals_are_recognised_by_type_or_by_text() {
        let typed = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        assert!(auth_failure(&typed)
            .unwrap()
            .contains("requires a client certificate"));
        // As h2 passes it on: the message only.
        let text = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: UnknownCA",
        );
        assert!(auth_failure(&text).unwrap().contains("TLS alert UnknownCA"));
        let text = std::io::Error::other(
            "invalid peer certificate: certificate not valid for name \"10.0.0.1\"",
        );
        assert!(auth_failure(&text)
            .unwrap()
            .contains("not valid for name \"10.0.0.1\""));
        let other = std::io::Error::other("connection refused");
        assert_eq!(auth_failure(&other), None);
        let other = std::io::Error::other("received fatal alert: HandshakeFailure");
        assert_eq!(auth_failure(&other), None);
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
