//! Certificates of a cluster: a CA and the leaf certificates it signs (rcgen,
//! pure Rust). `understudyctl certs` and the test harnesses call this module.
//!
//! Who a certificate names is one URI subject alternative name (the common name
//! is only for people reading it):
//!
//! | URI SAN                                   | Caller                        | key usage           |
//! |-------------------------------------------|-------------------------------|---------------------|
//! | `understudy:agent:<server_id>`            | the agent of that server      | client              |
//! | `understudy:controller:<node_id>`         | a controller (Raft peer)      | server and client   |
//! | `understudy:operator:<name>:<role>`       | an operator, `viewer`/`admin` | client              |
//!
//! A controller's certificate also carries its listen addresses (IP address SANs,
//! DNS names for host names), which agents, operators and peers verify when they
//! dial it. A certificate with no `understudy:` URI, or more than one, names nobody.
//!
//! Files: the CA is `ca.pem` and `ca.key` in its directory; a leaf is
//! `<kind>-<name>.pem` and `.key` (`agent-fs1-a`, `controller-2`,
//! `operator-alice`). Keys are written readable by their owner only (0600).

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::auth::{Caller, Role};

/// The CA certificate's file name in its directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in its directory.
pub const CA_KEY: &str = "ca.key";
/// The scheme of Understudy's URI names.
pub const SCHEME: &str = "understudy";

/// What a leaf certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// The agent of one server: it may report and act for that server only.
    Agent { server_id: String },
    /// A controller node, serving on (and dialled at) `addrs` (IPs or host names).
    Controller { node_id: u64, addrs: Vec<String> },
    /// An operator with a role.
    Operator { name: String, role: Role },
}

impl Leaf {
    /// The caller this certificate authenticates.
    pub fn caller(&self) -> Caller {
        match self {
            Leaf::Agent { server_id } => Caller::Agent {
                server_id: server_id.clone(),
            },
            Leaf::Controller { node_id, .. } => Caller::Peer { node_id: *node_id },
            Leaf::Operator { name, role } => Caller::Operator {
                name: name.clone(),
                role: *role,
            },
        }
    }

    /// The file name stem: `agent-fs1-a`, `controller-2`, `operator-alice`.
    pub fn stem(&self) -> String {
        match self {
            Leaf::Agent { server_id } => format!("agent-{server_id}"),
            Leaf::Controller { node_id, .. } => format!("controller-{node_id}"),
            Leaf::Operator { name, .. } => format!("operator-{name}"),
        }
    }
}

/// Why certificates could not be made or read; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0} already exists: a CA is made once; keep using it, or pick another --dir to start a new one (every certificate must then be issued again)")]
    CaExists(PathBuf),
    #[error("cannot read the CA in {dir}: {reason}; run `understudyctl certs init --dir {dir}` first, or give the --dir holding ca.pem and ca.key", dir = .dir.display())]
    NoCa { dir: PathBuf, reason: String },
    #[error("cannot write {path}: {source}; check that the directory exists and is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    BadName(String),
    #[error("controller certificate: {0:?} is neither an IP address nor a host name; pass the addresses the controller listens on, comma-separated, without ports")]
    BadAddr(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate and key written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Written {
    /// Where [`issue`] writes `leaf`'s certificate and key in `dir`.
    pub fn at(dir: &Path, leaf: &Leaf) -> Written {
        Written {
            cert: dir.join(format!("{}.pem", leaf.stem())),
            key: dir.join(format!("{}.key", leaf.stem())),
        }
    }
}

/// The URI naming `caller` (`None` for [`Caller::Insecure`], which has no name).
pub fn uri(caller: &Caller) -> Option<String> {
    Some(match caller {
        Caller::Insecure => return None,
        Caller::Agent { server_id } => format!("{SCHEME}:agent:{server_id}"),
        Caller::Peer { node_id } => format!("{SCHEME}:controller:{node_id}"),
        Caller::Operator { name, role } => format!("{SCHEME}:operator:{name}:{role}"),
    })
}

/// A name as certificates may carry it: ASCII letters, digits, `.`, `_`, `-`, `@`.
pub fn check_name(what: &str, name: &str) -> Result<(), CertsError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(CertsError::BadName(format!(
            "{what} {name:?} cannot be put in a certificate: use 1 to 128 ASCII letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

/// The caller an Understudy URI names: `Ok(None)` for a URI of another scheme,
/// `Err` for an `understudy:` URI that is malformed.
pub fn parse_uri(uri: &str) -> Result<Option<Caller>, String> {
    let Some(rest) = uri.strip_prefix(SCHEME).and_then(|r| r.strip_prefix(':')) else {
        return Ok(None);
    };
    let bad = |why: &str| Err(format!("certificate name {uri:?}: {why}"));
    let (kind, rest) = match rest.split_once(':') {
        Some(x) => x,
        None => return bad("expected understudy:<agent|controller|operator>:..."),
    };
    let caller = match kind {
        "agent" => {
            if check_name("server id", rest).is_err() {
                return bad("not a valid server id");
            }
            Caller::Agent {
                server_id: rest.to_owned(),
            }
        }
        "controller" => match rest.parse::<u64>() {
            Ok(node_id) => Caller::Peer { node_id },
            Err(_) => return bad("the node id is not a number"),
        },
        "operator" => {
            let Some((name, role)) = rest.rsplit_once(':') else {
                return bad("expected understudy:operator:<name>:<viewer|admin>");
            };
            if check_name("operator name", name).is_err() {
                return bad("not a valid operator name");
            }
            let role = match role.parse::<Role>() {
                Ok(r) => r,
                Err(e) => return bad(&e),
            };
            Caller::Operator {
                name: name.to_owned(),
                role,
            }
        }
        other => return bad(&format!("unknown kind {other:?}")),
    };
    Ok(Some(caller))
}

/// The caller a DER certificate names (its one `understudy:` URI SAN). The
/// certificate's signature and validity are rustls's business (checked against
/// the CA during the handshake); this only reads the name.
pub fn caller_of_cert(der: &[u8]) -> Result<Caller, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?;
    let mut found: Vec<Caller> = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(u) = name {
            if let Some(c) = parse_uri(u)? {
                found.push(c);
            }
        }
    }
    match found.len() {
        1 => Ok(found.pop().expect("one")),
        0 => Err("the client certificate names no Understudy identity (no understudy: URI SAN); issue it with `understudyctl certs issue`".into()),
        _ => Err("the client certificate names more than one Understudy identity; issue one certificate per identity".into()),
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    // Replace, never widen: remove an older file so `mode` applies afresh.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

fn validity(p: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a host whose clock is a little behind still accepts it.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(i64::from(days.max(1)));
}

/// Make a new CA in `dir` (`ca.pem`, and `ca.key` readable by the owner only),
/// valid for `days`. Refuses to replace an existing one.
pub fn init_ca(dir: &Path, days: u32) -> Result<Written, CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let out = Written {
        cert: dir.join(CA_CERT),
        key: dir.join(CA_KEY),
    };
    for p in [&out.cert, &out.key] {
        if p.exists() {
            return Err(CertsError::CaExists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Understudy");
    dn.push(DnType::CommonName, "Understudy cluster CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, days);
    let cert = p.self_signed(&key)?;
    write_file(&out.key, &key.serialize_pem(), 0o600)?;
    write_file(&out.cert, &cert.pem(), 0o644)?;
    Ok(out)
}

/// Issue `leaf`, signed by the CA in `ca_dir`, into `out_dir` (made if
/// missing) as `<stem>.pem` and `<stem>.key` (0600), valid for `days`. An
/// earlier certificate of the same name is replaced.
pub fn issue(ca_dir: &Path, out_dir: &Path, leaf: &Leaf, days: u32) -> Result<Written, CertsError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Understudy");
    let uri = uri(&leaf.caller()).expect("a leaf names somebody");
    match leaf {
        Leaf::Agent { server_id } => {
            check_name("server id", server_id)?;
            dn.push(DnType::CommonName, format!("agent {server_id}"));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        Leaf::Controller { node_id, addrs } => {
            dn.push(DnType::CommonName, format!("controller {node_id}"));
            if addrs.is_empty() {
                return Err(CertsError::BadName(
                    "a controller certificate needs the addresses it is dialled at (--addr IP,...)"
                        .into(),
                ));
            }
            for a in addrs {
                let a = a.trim();
                p.subject_alt_names.push(match a.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) if check_name("host name", a).is_ok() && !a.contains('@') => {
                        SanType::DnsName(
                            a.try_into()
                                .map_err(|_| CertsError::BadAddr(a.to_owned()))?,
                        )
                    }
                    Err(_) => return Err(CertsError::BadAddr(a.to_owned())),
                });
            }
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        Leaf::Operator { name, role } => {
            check_name("operator name", name)?;
            dn.push(DnType::CommonName, format!("operator {name} ({role})"));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    p.subject_alt_names.push(SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|_| CertsError::BadName(format!("{uri:?} is not ASCII")))?,
    ));
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days);

    let no_ca = |reason: String| CertsError::NoCa {
        dir: ca_dir.to_owned(),
        reason,
    };
    let ca_pem = std::fs::read_to_string(ca_dir.join(CA_CERT))
        .map_err(|e| no_ca(format!("{}: {e}", ca_dir.join(CA_CERT).display())))?;
    let ca_key_pem = std::fs::read_to_string(ca_dir.join(CA_KEY))
        .map_err(|e| no_ca(format!("{}: {e}", ca_dir.join(CA_KEY).display())))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| no_ca(format!("ca.key: {e}")))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| no_ca(format!("ca.pem: {e}")))?;

    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out_dir).map_err(|source| CertsError::Write {
        path: out_dir.to_owned(),
        source,
    })?;
    let out = Written::at(out_dir, leaf);
    write_file(&out.key, &key.serialize_pem(), 0o600)?;
    write_file(&out.cert, &cert.pem(), 0o644)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn der(path: &Path) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(path)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn uris_round_trip_and_malformed_ones_are_refused() {
        for c in [
            Caller::Agent {
                server_id: "fs1-a".into(),
            },
            Caller::Peer { node_id: 2 },
            Caller::Operator {
                name: "alice".into(),
                role: Role::Viewer,
            },
            Caller::Operator {
                name: "bob@example.com".into(),
                role: Role::Admin,
            },
        ] {
            let u = uri(&c).unwrap();
            assert_eq!(parse_uri(&u).unwrap(), Some(c), "{u}");
        }
        assert_eq!(
            uri(&Caller::Operator {
                name: "alice".into(),
                role: Role::Admin
            })
            .unwrap(),
            "understudy:operator:alice:admin"
        );
        assert_eq!(uri(&Caller::Insecure), None);
        assert_eq!(parse_uri("https://example.com/x").unwrap(), None);
        assert_eq!(parse_uri("understudyx:agent:a").unwrap(), None);
        for bad in [
            "understudy:agent:",
            "understudy:agent:a b",
            "understudy:controller:two",
            "understudy:operator:alice",
            "understudy:operator:alice:root",
            "understudy:operator::admin",
            "understudy:robot:x",
            "understudy:",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn issued_certificates_name_their_caller_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let w = init_ca(&ca, 30).unwrap();
        assert_eq!(
            std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(init_ca(&ca, 30), Err(CertsError::CaExists(_))));
        let leaves = [
            Leaf::Agent {
                server_id: "fs1-a".into(),
            },
            Leaf::Controller {
                node_id: 2,
                addrs: vec!["127.0.0.1".into(), "198.18.3.1".into(), "ctl-2".into()],
            },
            Leaf::Operator {
                name: "alice".into(),
                role: Role::Viewer,
            },
        ];
        let out = dir.path().join("out");
        for leaf in &leaves {
            let w = issue(&ca, &out, leaf, 30).unwrap();
            assert_eq!(w.cert, out.join(format!("{}.pem", leaf.stem())));
            assert_eq!(
                std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(caller_of_cert(&der(&w.cert)).unwrap(), leaf.caller());
        }
        // Issuing again replaces the files (a renewal).
        issue(&ca, &out, &leaves[0], 30).unwrap();
        // The CA names nobody.
        let e = caller_of_cert(&der(&ca.join(CA_CERT))).unwrap_err();
        assert!(
            e.contains("no subject alternative") || e.contains("names no"),
            "{e}"
        );
        // A wrong CA directory says what to do.
        let e = issue(&out, &out, &leaves[0], 30).unwrap_err().to_string();
        assert!(e.contains("understudyctl certs init"), "{e}");
        let e = issue(
            &ca,
            &out,
            &Leaf::Agent {
                server_id: "a/b".into(),
            },
            30,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot be put in a certificate"), "{e}");
        let e = issue(
            &ca,
            &out,
            &Leaf::Controller {
                node_id: 1,
                addrs: vec!["not an address".into()],
            },
            30,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("neither an IP address nor a host name"), "{e}");
    }
}
