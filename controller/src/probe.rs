//! Direct liveness probes from the leader to the agents (UDP, `agent/src/probe.rs`
//! answers them).
//!
//! An agent's session stream is not a reliable witness of death for short
//! outages: after a sub-second network blip its TCP connection can stay in
//! retransmission back-off for seconds while the host is fine. So the leader asks
//! over a fresh path:
//! - [`watch`]: while a serving agent's stream has been silent for
//!   `after_silence_ms`, a probe every `interval_ms`; an answer is recorded in
//!   [`Liveness`] and the detector does not count the primary as silent while it
//!   answers (`AgentView::probe_answered_ms`);
//! - the failover Confirm step ([`crate::failover`]) probes for `confirm_window_ms`
//!   before anything is fenced; any answer stops the failover.
//!
//! A reply counts only if it echoes a nonce this leader sent (unpredictable,
//! single use, forgotten after [`PENDING_FOR`]), names the pair and server the
//! probe was for, and comes from the address it was sent to.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::net::UdpSocket;
use tokio::sync::watch as tokio_watch;
use understudy_proto::{ProbeReply, ProbeRequest};

use crate::leadership::LeaderView;
use crate::liveness::Liveness;
use crate::raft::store::SharedState;
use crate::state::{PairState, ServerSpec};

/// A probe not answered within this long is forgotten (a late reply is ignored).
pub const PENDING_FOR: Duration = Duration::from_secs(2);

/// Probe padding: makes the probe at least as large as the agent's reply, which
/// the agent requires (no amplification).
const PADDING: usize = 48;

/// The default UDP port of the agents' probe responder.
pub const DEFAULT_PROBE_PORT: u16 = 7201;

/// `[probe]` of the controller configuration, in milliseconds.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Probe a serving agent whose session has been silent this long.
    pub after_silence_ms: u64,
    /// One probe per server per this period while it stays silent (and during
    /// Confirm).
    pub interval_ms: u64,
    /// Confirm probes the old primary for this long before fencing it; any
    /// answer stops the failover.
    pub confirm_window_ms: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            after_silence_ms: 400,
            interval_ms: 100,
            confirm_window_ms: 300,
        }
    }
}

impl ProbeConfig {
    /// The configuration error, if any, worded for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_ms == 0 {
            return Err("probe: interval_ms must be above 0".into());
        }
        if self.confirm_window_ms < self.interval_ms {
            return Err(format!(
                "probe: confirm_window_ms ({}) must be at least interval_ms ({}) so Confirm sends more than one probe",
                self.confirm_window_ms, self.interval_ms
            ));
        }
        Ok(())
    }
}

/// A probe was sent and not answered yet.
struct Pending {
    pair_id: String,
    server_id: String,
    to: SocketAddr,
    sent: Instant,
}

/// The probes in flight by nonce, and their nonces in the order they were
/// sent: expired ones are dropped from the front, without a pass over all of
/// them for each probe sent (at thousands of silent servers, a leader's start,
/// that pass was a third of the leader's CPU).
#[derive(Default)]
struct InFlight {
    by_nonce: HashMap<u64, Pending>,
    order: std::collections::VecDeque<(Instant, u64)>,
}

impl InFlight {
    /// Forget the probes sent `PENDING_FOR` or longer ago.
    fn expire(&mut self, now: Instant) {
        while let Some(&(sent, nonce)) = self.order.front() {
            if now.saturating_duration_since(sent) < PENDING_FOR {
                break;
            }
            self.order.pop_front();
            self.by_nonce.remove(&nonce);
        }
    }
}

/// The leader's probe socket and the nonces in flight.
pub struct Prober {
    socket: UdpSocket,
    pending: Mutex<InFlight>,
    keys: RandomState,
    counter: AtomicU64,
    liveness: Arc<Liveness>,
}

/// Why a probe could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot resolve {server}'s probe address {addr}: {reason}; fix address or probe_port of {server} in the controller inventory")]
    Resolve {
        server: String,
        addr: String,
        reason: String,
    },
    #[error("cannot send a probe to {server} at {to}: {source}")]
    Send {
        server: String,
        to: SocketAddr,
        source: std::io::Error,
    },
}

impl Prober {
    /// Bind an ephemeral UDP port and start receiving replies.
    pub async fn bind(liveness: Arc<Liveness>) -> std::io::Result<Arc<Prober>> {
        let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
        let p = Arc::new(Prober {
            socket,
            pending: Mutex::default(),
            keys: RandomState::new(),
            counter: AtomicU64::new(1),
            liveness,
        });
        tokio::spawn(p.clone().receive());
        Ok(p)
    }

    /// An unpredictable, never-zero nonce.
    fn nonce(&self) -> u64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.keys.hash_one((n, Instant::now())).max(1)
    }

    /// Send one probe to `server` of `pair_id`.
    pub async fn probe(&self, pair_id: &str, server: &ServerSpec) -> Result<(), ProbeError> {
        let target = format!("{}:{}", server.address, server.probe_port);
        let to = tokio::net::lookup_host(&target)
            .await
            .map_err(|e| e.to_string())
            .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
            .map_err(|reason| ProbeError::Resolve {
                server: server.id.clone(),
                addr: target.clone(),
                reason,
            })?;
        let nonce = self.nonce();
        let req = ProbeRequest {
            pair_id: pair_id.into(),
            server_id: server.id.clone(),
            nonce,
            padding: vec![0; PADDING],
        };
        {
            let now = Instant::now();
            let mut pending = self.pending.lock().expect("probe lock");
            pending.expire(now);
            pending.order.push_back((now, nonce));
            pending.by_nonce.insert(
                nonce,
                Pending {
                    pair_id: pair_id.into(),
                    server_id: server.id.clone(),
                    to,
                    sent: now,
                },
            );
        }
        self.socket
            .send_to(&req.encode_to_vec(), to)
            .await
            .map_err(|source| ProbeError::Send {
                server: server.id.clone(),
                to,
                source,
            })?;
        Ok(())
    }

    /// Check a datagram against the probes in flight; the accepted reply (its
    /// nonce is then used up).
    fn accept(&self, datagram: &[u8], from: SocketAddr) -> Option<ProbeReply> {
        let reply = ProbeReply::decode(datagram).ok()?;
        let mut pending = self.pending.lock().expect("probe lock");
        let p = pending.by_nonce.get(&reply.nonce)?;
        if p.to != from
            || p.pair_id != reply.pair_id
            || p.server_id != reply.server_id
            || p.sent.elapsed() >= PENDING_FOR
        {
            return None;
        }
        // (Its place in `order` goes when it expires.)
        pending.by_nonce.remove(&reply.nonce);
        Some(reply)
    }

    async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 1024];
        loop {
            match self.socket.recv_from(&mut buf).await {
                Ok((n, from)) => match self.accept(&buf[..n], from) {
                    Some(r) => self.liveness.probe_answered(&r.server_id.clone(), r),
                    None => {
                        tracing::debug!(%from, "ignored a datagram that answers no probe of ours")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "probe socket: receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Probe `server` every `interval` for `window`; the first answer given to
    /// any probe after this call started, or `None` and how many probes were sent.
    pub async fn ask(
        &self,
        pair_id: &str,
        server: &ServerSpec,
        window: Duration,
        interval: Duration,
    ) -> Result<(Duration, ProbeReply), (u32, Vec<String>)> {
        let t0 = Instant::now();
        let mut sent = 0;
        let mut errors = Vec::new();
        let mut next = t0;
        loop {
            if let Some((at, reply)) = self.liveness.probe_answer(&server.id) {
                if at >= t0 {
                    return Ok((at - t0, reply));
                }
            }
            if t0.elapsed() >= window {
                return Err((sent, errors));
            }
            if Instant::now() >= next {
                match self.probe(pair_id, server).await {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        let e = e.to_string();
                        if !errors.contains(&e) {
                            errors.push(e);
                        }
                    }
                }
                next += interval;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// While this node leads: probe every serving agent whose session has been
/// silent for `after_silence_ms`, once per `interval_ms`.
pub async fn watch(
    prober: Arc<Prober>,
    liveness: Arc<Liveness>,
    state: SharedState,
    mut leader: tokio_watch::Receiver<LeaderView>,
    cfg: ProbeConfig,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = leader.changed() => if r.is_err() { return },
        }
        if !leader.borrow().is_leader {
            continue;
        }
        let now = Instant::now();
        let since = liveness.silence_origin();
        let snap = state.snapshot();
        let silent = liveness.silent_among(
            snap.state
                .pairs
                .values()
                .filter(|p| p.state != PairState::Paused),
            |p| p.serving_id(),
            now,
            since,
            cfg.after_silence_ms,
        );
        for pair in silent {
            let Some(server) = pair.server(pair.serving_id()) else {
                continue;
            };
            if let Err(e) = prober.probe(&pair.spec.id, server).await {
                let e = e.to_string();
                if warned.get(&server.id) != Some(&e) {
                    tracing::warn!(pair = %pair.spec.id, epoch = pair.epoch, server = %server.id, error = %e, "probe not sent");
                    warned.insert(server.id.clone(), e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_in_flight_expire_oldest_first_answered_or_not() {
        let t0 = Instant::now();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut f = InFlight::default();
        for n in 0..5u64 {
            let sent = t0 + Duration::from_millis(n * 500);
            f.order.push_back((sent, n));
            f.by_nonce.insert(
                n,
                Pending {
                    pair_id: "p".into(),
                    server_id: format!("s{n}"),
                    to,
                    sent,
                },
            );
        }
        // Nonce 1 was answered (accept removes it from the map only).
        f.by_nonce.remove(&1);
        f.expire(t0 + Duration::from_millis(1999));
        assert_eq!(f.by_nonce.len(), 4, "none is 2 s old yet");
        // At 2.6 s: probes 0 and 1 (sent at 0 and 0.5 s) are 2 s old or more.
        f.expire(t0 + Duration::from_millis(2600));
        let mut left: Vec<u64> = f.by_nonce.keys().copied().collect();
        left.sort();
        assert_eq!(left, vec![2, 3, 4]);
        assert_eq!(f.order.len(), 3);
        f.expire(t0 + Duration::from_secs(60));
        assert!(f.by_nonce.is_empty() && f.order.is_empty());
    }

    fn server(port: u16) -> ServerSpec {
        ServerSpec {
            id: "fs1-a".into(),
            address: "127.0.0.1".into(),
            probe_port: port,
            ..Default::default()
        }
    }

    /// A fake agent answering with `edit` applied to the correct reply.
    async fn fake_agent(edit: fn(&mut ProbeReply)) -> (u16, tokio::task::JoinHandle<()>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let mut buf = [0u8; 600];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                let req = ProbeRequest::decode(&buf[..n]).unwrap();
                let mut r = ProbeReply {
                    pair_id: req.pair_id,
                    server_id: req.server_id,
                    nonce: req.nonce,
                    highest_epoch: 3,
                    stream_healthy: false,
                    stream_silent_ms: 1500,
                };
                edit(&mut r);
                sock.send_to(&r.encode_to_vec(), from).await.unwrap();
            }
        });
        (port, h)
    }

    #[tokio::test]
    async fn an_answer_is_recorded_and_ends_the_confirm_window() {
        let live = Arc::new(Liveness::default());
        let p = Prober::bind(live.clone()).await.unwrap();
        let (port, h) = fake_agent(|_| {}).await;
        let got = p
            .ask(
                "fs1",
                &server(port),
                Duration::from_secs(2),
                Duration::from_millis(100),
            )
            .await
            .expect("answered");
        assert!(got.0 < Duration::from_secs(1));
        assert_eq!(got.1.highest_epoch, 3);
        assert!(!got.1.stream_healthy);
        assert!(live.probe_answer("fs1-a").is_some());
        h.abort();
    }

    #[tokio::test]
    async fn forged_or_misdirected_replies_do_not_count() {
        let edits: [fn(&mut ProbeReply); 3] = [
            |r| r.nonce = r.nonce.wrapping_add(1),
            |r| r.server_id = "fs1-b".into(),
            |r| r.pair_id = "fs2".into(),
        ];
        for edit in edits {
            let live = Arc::new(Liveness::default());
            let p = Prober::bind(live.clone()).await.unwrap();
            let (port, h) = fake_agent(edit).await;
            let r = p
                .ask(
                    "fs1",
                    &server(port),
                    Duration::from_millis(350),
                    Duration::from_millis(100),
                )
                .await;
            let (sent, errors) = r.expect_err("a wrong reply must not count");
            assert!(sent >= 3, "{sent}");
            assert!(errors.is_empty(), "{errors:?}");
            assert!(live.probe_answer("fs1-a").is_none());
            assert!(live.probe_answer("fs1-b").is_none());
            h.abort();
        }
        // Nobody listening: no answer, the probes were still sent.
        let live = Arc::new(Liveness::default());
        let p = Prober::bind(live.clone()).await.unwrap();
        let free = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (sent, _) = p
            .ask(
                "fs1",
                &server(free),
                Duration::from_millis(250),
                Duration::from_millis(100),
            )
            .await
            .expect_err("nobody answers");
        assert!(sent >= 2);
    }

    #[tokio::test]
    async fn a_reply_from_another_address_does_not_count() {
        let live = Arc::new(Liveness::default());
        let p = Prober::bind(live.clone()).await.unwrap();
        // The "agent" receives the probe but the reply comes from another socket.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let h = tokio::spawn(async move {
            let mut buf = [0u8; 600];
            let (n, from) = sock.recv_from(&mut buf).await.unwrap();
            let req = ProbeRequest::decode(&buf[..n]).unwrap();
            let r = ProbeReply {
                pair_id: req.pair_id,
                server_id: req.server_id,
                nonce: req.nonce,
                ..Default::default()
            };
            other.send_to(&r.encode_to_vec(), from).await.unwrap();
        });
        let r = p
            .ask(
                "fs1",
                &server(port),
                Duration::from_millis(300),
                Duration::from_millis(100),
            )
            .await;
        assert!(r.is_err());
        assert!(live.probe_answer("fs1-a").is_none());
        h.abort();
    }

    #[test]
    fn config_is_validated() {
        assert!(ProbeConfig::default().validate().is_ok());
        let c = ProbeConfig {
            confirm_window_ms: 50,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("confirm_window_ms"));
    }
}
