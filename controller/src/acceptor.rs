//! Accepting gRPC connections: TCP, then the TLS handshake, admitted a few at
//! a time.
//!
//! tonic's own TLS runs every handshake at once, however many arrive. When
//! thousands of agents dial together (a new leader, a leader that stood
//! down), each handshake's share of the CPU shrinks until most take longer
//! than the agent waits (its connect timeout, 500 ms): the agent gives up and
//! dials again, the controller finishes a handshake nobody waits for, and the
//! next wave adds to the queue. Here at most [`Admission::handshakes`] run at
//! once; the others wait their turn in arrival order, and one that waited
//! longer than [`Admission::queue_ms`] is closed without a handshake, because
//! its agent has given up on it already. The agents back off between dials
//! (`understudy_agent::redial`), so the queue drains.
//!
//! Connections from controllers (Raft) and operators go through the same
//! gate: who dials is only known once the handshake has been done.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// How many handshakes may run at once, and how long a connection may wait.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Handshakes in progress at most.
    pub handshakes: usize,
    /// A connection that waited this long for its turn is closed unanswered.
    pub queue_ms: u64,
    /// A handshake that takes longer fails (a client that stopped halfway).
    pub handshake_ms: u64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            handshakes: 32,
            queue_ms: 500,
            handshake_ms: 5000,
        }
    }
}

/// What the gate did, since the start (the `/metrics` counters).
#[derive(Debug, Default)]
pub struct AdmissionStats {
    /// Handshakes completed: connections handed to gRPC.
    pub admitted: AtomicU64,
    /// Closed unanswered after waiting longer than `queue_ms`.
    pub shed: AtomicU64,
    /// Handshakes that failed (refused certificate, client gone) or timed out.
    pub failed: AtomicU64,
}

/// Accept connections on `listener` and run their TLS handshakes through the
/// gate, on `handshakes` (a runtime of their own in the controller: see
/// `node.rs`); the stream yields the connections ready for gRPC. Accepting
/// stops when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    admission: Admission,
    stats: Arc<AdmissionStats>,
    handshakes: tokio::runtime::Handle,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(admission.handshakes.max(1));
    let acceptor = TlsAcceptor::from(config);
    let gate = Arc::new(Semaphore::new(admission.handshakes.max(1)));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset while
                    // queued: not fatal; pause on the former.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, gate, tx, stats) =
                (acceptor.clone(), gate.clone(), tx.clone(), stats.clone());
            handshakes.spawn(async move {
                if let Some(tls) = handshake(tcp, peer, &acceptor, &gate, admission, &stats).await {
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Wait for a turn, then run the handshake; `None` when shed or failed.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    gate: &Semaphore,
    admission: Admission,
    stats: &AdmissionStats,
) -> Option<TlsStream<TcpStream>> {
    let permit = match tokio::time::timeout(
        Duration::from_millis(admission.queue_ms),
        gate.acquire(),
    )
    .await
    {
        Ok(Ok(p)) => p,
        _ => {
            stats.shed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, queue_ms = admission.queue_ms, "connection closed unanswered: too many TLS handshakes waiting");
            return None;
        }
    };
    let r = tokio::time::timeout(
        Duration::from_millis(admission.handshake_ms),
        acceptor.accept(tcp),
    )
    .await;
    drop(permit);
    match r {
        Ok(Ok(tls)) => {
            stats.admitted.fetch_add(1, Ordering::Relaxed);
            Some(tls)
        }
        Ok(Err(e)) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, handshake_ms = admission.handshake_ms, "TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{init_ca, issue, Leaf, CA_CERT};
    use rustls::pki_types::ServerName;
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;
    use understudy_tls::{ClientTls, TlsFiles};

    /// A CA, a controller's server configuration, and two client
    /// configurations: one presenting an agent's certificate, one anonymous.
    struct Pki {
        server: rustls::ServerConfig,
        agent: Arc<rustls::ClientConfig>,
        anonymous: Arc<rustls::ClientConfig>,
    }

    fn pki(dir: &std::path::Path) -> Pki {
        let ca = dir.join("ca");
        init_ca(&ca, 30).unwrap();
        let out = dir.join("out");
        let ctl = issue(
            &ca,
            &out,
            &Leaf::Controller {
                node_id: 1,
                addrs: vec!["127.0.0.1".into()],
            },
            30,
        )
        .unwrap();
        let agent = issue(
            &ca,
            &out,
            &Leaf::Agent {
                server_id: "fs1-a".into(),
            },
            30,
        )
        .unwrap();
        let server = TlsFiles {
            ca: ca.join(CA_CERT),
            cert: ctl.cert,
            key: ctl.key,
        }
        .server()
        .unwrap();
        // The client configurations `understudyctl` and agents' diagnosis use.
        let client = |identity: Option<(&std::path::Path, &std::path::Path)>| {
            let tls = ClientTls::load(&ca.join(CA_CERT), identity).unwrap();
            Arc::new(tls.rustls_config().unwrap())
        };
        Pki {
            server,
            agent: client(Some((&agent.cert, &agent.key))),
            anonymous: client(None),
        }
    }

    /// The gate on an ephemeral loopback port.
    type Incoming = ReceiverStream<Result<TlsStream<TcpStream>, io::Error>>;
    async fn serve(
        server: rustls::ServerConfig,
        admission: Admission,
    ) -> (SocketAddr, Arc<AdmissionStats>, Incoming) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(AdmissionStats::default());
        let incoming = tls_incoming(
            listener,
            Arc::new(server),
            admission,
            stats.clone(),
            tokio::runtime::Handle::current(),
        );
        (addr, stats, incoming)
    }

    /// With one handshake allowed at a time: a client that connects and says
    /// nothing holds the turn; the next connection waits, is closed unanswered
    /// after `queue_ms` (shed), and the silent one fails after `handshake_ms`.
    /// Then a real client's handshake is admitted and handed on with its
    /// certificate (what `auth` reads through `peer_certs`).
    #[tokio::test]
    async fn one_at_a_time_the_late_are_shed_and_a_real_client_is_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let (addr, stats, mut incoming) = serve(
            pki.server,
            Admission {
                handshakes: 1,
                queue_ms: 200,
                handshake_ms: 800,
            },
        )
        .await;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);

        let silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut late = TcpStream::connect(addr).await.unwrap();
        let t = tokio::time::Instant::now();
        let mut buf = [0u8; 16];
        // Closed by the controller without a byte: EOF (or a reset).
        let r = tokio::time::timeout(Duration::from_secs(3), late.read(&mut buf))
            .await
            .expect("the late connection is closed within its queue time");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_millis(700),
            "shed after {waited:?}"
        );
        assert_eq!(n(&stats.shed), 1);

        // The silent client's handshake times out and frees the turn.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(n(&stats.failed), 1);
        drop(silent);

        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(pki.agent);
        let tls = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("handshake admitted");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let got = tokio::time::timeout(Duration::from_secs(3), incoming.next())
            .await
            .expect("handed on")
            .expect("stream open")
            .expect("a connection");
        let certs = got
            .get_ref()
            .1
            .peer_certificates()
            .expect("client certificate");
        assert_eq!(
            crate::certs::caller_of_cert(certs[0].as_ref()).unwrap(),
            crate::auth::Caller::Agent {
                server_id: "fs1-a".into()
            }
        );
        assert_eq!(n(&stats.admitted), 1);
    }

    /// A client without a certificate is refused in the handshake (mutual TLS
    /// is required), counted as failed, and never reaches gRPC.
    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let (addr, stats, mut incoming) = serve(pki.server, Admission::default()).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        // TLS 1.3: the client may finish its side before the refusal arrives;
        // reading then fails.
        if let Ok(mut s) = tokio_rustls::TlsConnector::from(pki.anonymous)
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
        {
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                .await
                .unwrap();
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while stats.failed.load(Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failed handshake counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stats.admitted.load(Ordering::Relaxed), 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), incoming.next())
                .await
                .is_err(),
            "nothing reaches gRPC"
        );
    }
}
