//! The agent's probe responder: a small UDP port on the management address that
//! answers the controller leader's direct liveness probes.
//!
//! Why: after a sub-second network blip the agent's session stream can sit in TCP
//! retransmission back-off for a second or more although the host is fine. The
//! leader's failover Confirm step (and its detector, while the stream is silent)
//! asks the agent directly with a fresh datagram instead; any answer means the
//! file server is alive and must not be fenced.
//!
//! The protocol is one datagram each way (`ProbeRequest`, `ProbeReply` in
//! `understudy.proto`):
//! - a probe is answered only if it names this agent's pair id and server id; the
//!   reply echoes the probe's nonce, which the leader checks against the nonces it
//!   sent (a reply to someone else's probe, or a replayed one, is ignored there);
//! - datagrams larger than [`MAX_DATAGRAM`] are dropped, and the reply is never
//!   larger than the probe (the probe carries padding), so the port cannot be
//!   used to amplify traffic;
//! - replies are rate limited ([`RateLimit`], `probe_max_per_sec`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tokio::net::UdpSocket;
use understudy_proto::{ProbeReply, ProbeRequest};

use crate::error::AgentError;

/// Probes and replies larger than this are dropped.
pub const MAX_DATAGRAM: usize = 512;

/// What the responder needs to know about the agent, shared with the session.
pub struct ProbeState {
    pub pair_id: String,
    pub server_id: String,
    /// Unix ms of the last message received from a controller on the session
    /// (0: none yet), written by `session.rs`.
    pub last_controller_msg_unix_ms: AtomicI64,
    /// The session's stream is considered stalled after this much silence.
    pub stall_ms: u64,
}

impl ProbeState {
    pub fn new(pair_id: String, server_id: String, stall_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            pair_id,
            server_id,
            last_controller_msg_unix_ms: AtomicI64::new(0),
            stall_ms,
        })
    }

    /// The session heard from the controller now.
    pub fn heard_controller(&self, now_unix_ms: i64) {
        self.last_controller_msg_unix_ms
            .store(now_unix_ms, Ordering::Relaxed);
    }

    /// Milliseconds since the controller was last heard from; `None` if never.
    pub fn controller_silent_ms(&self, now_unix_ms: i64) -> Option<u64> {
        match self.last_controller_msg_unix_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now_unix_ms.saturating_sub(t).max(0) as u64),
        }
    }
}

/// The reply to `datagram`, or `None` if it must be dropped (malformed, too
/// large, not for this agent, or the reply would be larger than the probe).
/// Pure: the whole protocol check, unit-tested below.
pub fn answer(
    datagram: &[u8],
    state: &ProbeState,
    highest_epoch: u64,
    now_unix_ms: i64,
) -> Option<Vec<u8>> {
    if datagram.len() > MAX_DATAGRAM {
        return None;
    }
    let req = ProbeRequest::decode(datagram).ok()?;
    if req.pair_id != state.pair_id || req.server_id != state.server_id || req.nonce == 0 {
        return None;
    }
    let silent = state.controller_silent_ms(now_unix_ms);
    let reply = ProbeReply {
        pair_id: req.pair_id,
        server_id: req.server_id,
        nonce: req.nonce,
        highest_epoch,
        stream_healthy: silent.is_some_and(|s| s < state.stall_ms),
        stream_silent_ms: silent.unwrap_or(u64::MAX),
    };
    let out = reply.encode_to_vec();
    (out.len() <= datagram.len()).then_some(out)
}

/// A token bucket: at most `per_sec` replies a second, bursts of `per_sec`.
pub struct RateLimit {
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec: per_sec as f64,
            tokens: per_sec as f64,
            at: Instant::now(),
        }
    }

    /// Take one token if there is one at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.per_sec);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Bind the probe port; the error says what to change.
pub async fn bind(listen: SocketAddr) -> Result<UdpSocket, AgentError> {
    UdpSocket::bind(listen)
        .await
        .map_err(|source| AgentError::ProbeListen {
            addr: listen,
            source,
        })
}

/// Answer probes on `socket` forever.
pub async fn serve(
    socket: UdpSocket,
    state: Arc<ProbeState>,
    epoch: impl Fn() -> u64,
    max_per_sec: u32,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut limit = RateLimit::new(max_per_sec);
    let mut dropped = 0u64;
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "probe port: receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(reply) = answer(&buf[..n], &state, epoch(), crate::session::unix_ms()) else {
            dropped += 1;
            if dropped.is_power_of_two() {
                tracing::debug!(%from, dropped, "probe port: ignored a datagram that is not a probe for this agent");
            }
            continue;
        };
        if !limit.allow(Instant::now()) {
            dropped += 1;
            continue;
        }
        if let Err(e) = socket.send_to(&reply, from).await {
            tracing::debug!(%from, error = %e, "probe port: reply not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state() -> Arc<ProbeState> {
        ProbeState::new("fs1".into(), "fs1-a".into(), 1000)
    }

    fn probe(pair: &str, server: &str, nonce: u64) -> Vec<u8> {
        ProbeRequest {
            pair_id: pair.into(),
            server_id: server.into(),
            nonce,
            padding: vec![0; 48],
        }
        .encode_to_vec()
    }

    #[test]
    fn answers_only_probes_for_this_agent() {
        let st = state();
        st.heard_controller(10_000);
        let out = answer(&probe("fs1", "fs1-a", 42), &st, 7, 10_300).expect("answered");
        let r = ProbeReply::decode(out.as_slice()).unwrap();
        assert_eq!(
            r,
            ProbeReply {
                pair_id: "fs1".into(),
                server_id: "fs1-a".into(),
                nonce: 42,
                highest_epoch: 7,
                stream_healthy: true,
                stream_silent_ms: 300,
            }
        );
        // The stream is stalled after stall_ms of silence; never heard: unhealthy.
        let r = ProbeReply::decode(
            answer(&probe("fs1", "fs1-a", 43), &st, 7, 12_000)
                .unwrap()
                .as_slice(),
        )
        .unwrap();
        assert!(!r.stream_healthy);
        assert_eq!(r.stream_silent_ms, 2000);
        let fresh = state();
        let r = ProbeReply::decode(
            answer(&probe("fs1", "fs1-a", 44), &fresh, 0, 12_000)
                .unwrap()
                .as_slice(),
        )
        .unwrap();
        assert!(!r.stream_healthy);
        // Wrong pair, wrong server, no nonce, garbage: dropped.
        assert_eq!(answer(&probe("fs2", "fs1-a", 1), &st, 7, 10_000), None);
        assert_eq!(answer(&probe("fs1", "fs1-b", 1), &st, 7, 10_000), None);
        assert_eq!(answer(&probe("fs1", "fs1-a", 0), &st, 7, 10_000), None);
        assert_eq!(answer(b"\xff\xff\xff\xff", &st, 7, 10_000), None);
    }

    #[test]
    fn never_amplifies_and_drops_large_datagrams() {
        let st = state();
        // A probe without padding is smaller than the reply would be: dropped.
        let bare = ProbeRequest {
            pair_id: "fs1".into(),
            server_id: "fs1-a".into(),
            nonce: u64::MAX,
            padding: vec![],
        }
        .encode_to_vec();
        assert_eq!(answer(&bare, &st, u64::MAX, 10_000), None);
        for pad in [24usize, 48, 200] {
            let p = ProbeRequest {
                pair_id: "fs1".into(),
                server_id: "fs1-a".into(),
                nonce: u64::MAX,
                padding: vec![0; pad],
            }
            .encode_to_vec();
            if let Some(r) = answer(&p, &st, u64::MAX, 10_000) {
                assert!(r.len() <= p.len(), "{} > {}", r.len(), p.len());
            }
        }
        let big = ProbeRequest {
            pair_id: "fs1".into(),
            server_id: "fs1-a".into(),
            nonce: 5,
            padding: vec![0; MAX_DATAGRAM],
        }
        .encode_to_vec();
        assert_eq!(answer(&big, &st, 1, 10_000), None);
    }

    #[test]
    fn rate_limit_bounds_replies() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(10);
        let burst = (0..100).filter(|_| l.allow(t0)).count();
        assert_eq!(burst, 10);
        // 500 ms later: 5 more tokens.
        let later = t0 + Duration::from_millis(500);
        assert_eq!((0..100).filter(|_| l.allow(later)).count(), 5);
    }

    #[tokio::test]
    async fn a_real_socket_answers_and_ignores() {
        let st = state();
        let sock = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(serve(sock, st, || 9, 100));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&probe("fs1", "fs1-b", 5), addr)
            .await
            .unwrap();
        client
            .send_to(&probe("fs1", "fs1-a", 6), addr)
            .await
            .unwrap();
        let mut buf = [0u8; 600];
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .expect("a reply")
            .unwrap();
        let r = ProbeReply::decode(&buf[..n]).unwrap();
        // The first probe (wrong server) got no reply: this one is for nonce 6.
        assert_eq!((r.nonce, r.highest_epoch), (6, 9));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf))
                .await
                .is_err(),
            "no second reply"
        );
    }
}
