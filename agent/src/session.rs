//! The agent's session with the controller leader.
//!
//! The agent dials the configured controllers in turn (starting with one chosen
//! by a hash of its server id), says `Hello`, and is served by the leader: directly,
//! or through the follower it dialled, which relays the session to the leader
//! (`controller/src/relay.rs`); a `Redirect` (a follower that cannot relay)
//! it follows straight to the leader. The leader itself hands the agent to a
//! healthy follower (a `Redirect` naming it in `via_addr`,
//! `controller/src/handoff.rs`); if that follower does not serve it, the agent
//! comes back to the leader and declines handoffs for [`HANDOFF_PAUSE`]
//! (`Hello.handoff_ok`), so the two never bounce it between them. While the session lasts it sends a `Report`
//! whenever what it observes changes and a `Heartbeat` every interval the leader
//! asked for. A broken stream (leader killed), a silent one (leader frozen: HTTP/2
//! keepalive notices within about 2 s with the defaults, [`keepalive`]) or a redirect (leadership moved) ends the
//! session and the agent dials again: at once after a redirect to a known leader,
//! otherwise after a jittered pause that grows while dials keep failing
//! ([`crate::redial`]).
//!
//! A heartbeat is due one interval after the agent's last message of any kind:
//! a report is a sign of life too, and at thousands of agents every message
//! the leader does not have to read counts (ARCHITECTURE.md, Scale). The
//! `Hello` carries the agent's `stall_ms`; the leader acknowledges the agent's
//! messages (`HeartbeatAck`) often enough for it: every other heartbeat with
//! the defaults (`controller/src/agents.rs::AckPacer`). Once it has, a
//! session that then carries nothing from the leader for `stall_ms` is stalled
//! (typically TCP retransmission back-off after a sub-second network blip, which
//! can keep an intact connection silent for seconds): the agent dials the same
//! controller again on a fresh connection instead of waiting it out.
//!
//! Losing the controller changes nothing locally (S6): the agent keeps its DRBD
//! role and service as they are.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use understudy_proto::agent_message::Msg;
use understudy_proto::agent_service_client::AgentServiceClient;
use understudy_proto::controller_message::Msg as In;
use understudy_proto::{
    AgentMessage, DrbdStatus, Heartbeat, Hello, HostStatus, Report, ServerRole,
};
use understudy_tls::ClientTls;

use std::sync::Arc;

use crate::commands::Handler;
use crate::config::{AgentConfig, Role};
use crate::error::AgentError;
use crate::probe::ProbeState;
use crate::redial::Redial;

/// How long an agent keeps coming back to a follower that asks it to (it
/// relays to the leader, and is waiting for the next one): an election takes
/// about a second; past this the agent tries the other controllers itself.
const RELAYED_RETRY: Duration = Duration::from_secs(3);

/// How long an agent that a leader handed to a follower which then did not
/// serve it (relaying off there, or the leader out of its reach) declines
/// handoffs (`Hello.handoff_ok = false`): the leader serves it itself.
const HANDOFF_PAUSE: Duration = Duration::from_secs(60);

/// How long a new session waits for a fresh read of the host state before its
/// first report.
const FIRST_REPORT_REFRESH: Duration = Duration::from_millis(1000);

/// The HTTP/2 keepalive of the agent's connection to a controller, from the
/// agent's stall bound: `(interval, timeout)`.
///
/// A ping goes out only after the connection has read nothing for the
/// interval. Once the leader has acknowledged a message, it acknowledges
/// again within three quarters of the stall bound (`AckPacer`) and the stall
/// check ends a silent session at the bound, so the keepalive is the backstop
/// for a session the leader has not answered yet (a frozen controller: noticed
/// within interval + timeout, 2 s with the defaults). Its interval is half the
/// bound, at least 500 ms: in steady state the acknowledgements come sooner
/// and no ping is sent. With a fixed 500 ms, an agent on a 1 s heartbeat
/// (acknowledged every 2 s) sent three pings per acknowledgement, each a TLS
/// record read, answered and read again: at 20 000 agents, 30 000 pings a
/// second on the followers, more than the heartbeats. Its timeout is the bound,
/// at least 1.5 s: a busy controller answers a ping as late as it answers a
/// heartbeat.
pub fn keepalive(stall: Duration) -> (Duration, Duration) {
    (
        (stall / 2).max(Duration::from_millis(500)),
        stall.max(Duration::from_millis(1500)),
    )
}

/// How a session ended.
enum Ended {
    /// Go to this leader (or wait: none known yet).
    Redirect(Option<String>),
    /// The leader at `leader` serves this agent through the follower at `via`.
    Handoff { via: String, leader: String },
    /// The controller said no; retrying soon will not help.
    Refused(String),
    /// Transport trouble; try the next controller.
    Broken(AgentError),
    /// The stream carried nothing from the leader for too long: dial it afresh.
    Stalled(u64),
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Keep a session open with the current leader, forever.
pub async fn run(
    cfg: AgentConfig,
    tls: Option<ClientTls>,
    drbd: watch::Receiver<DrbdStatus>,
    handler: Arc<Handler>,
    probes: Arc<ProbeState>,
) {
    let mut next = first_controller(&cfg.server_id, cfg.controllers.len());
    let mut redirect_to: Option<String> = None;
    let mut redirects_in_a_row = 0u32;
    // A session that fails before the leader's Welcome may be a refused
    // certificate that TLS 1.3 reports as a reset: probe now and then, and say so.
    let diagnosis = understudy_tls::Diagnosis::new(Duration::from_secs(10));
    let mut redial = Redial::new();
    // The connection of the last session that ended with a redirect (it
    // works): the next session to the same controller uses it, no handshake.
    let mut kept: Option<(String, Channel)> = None;
    // Since when the controller dialled keeps redirecting the agent back to
    // itself (a follower waiting for the next leader).
    let mut relayed_since: Option<Instant> = None;
    // The follower a leader just handed this agent to, and that leader.
    let mut handed: Option<(String, String)> = None;
    // Until when this agent declines handoffs (one did not work).
    let mut no_handoff_until: Option<Instant> = None;
    loop {
        let addr = match redirect_to.take() {
            Some(a) => a,
            None => {
                let a = cfg.controllers[next % cfg.controllers.len()].clone();
                next += 1;
                a
            }
        };
        let mut out = Outcome {
            channel: kept.take().filter(|(a, _)| *a == addr).map(|(_, c)| c),
            handoff_ok: no_handoff_until.is_none_or(|t| Instant::now() >= t),
            ..Outcome::default()
        };
        let ended = session(
            &cfg,
            tls.as_ref(),
            &diagnosis,
            &addr,
            drbd.clone(),
            handler.clone(),
            &probes,
            &mut out,
        )
        .await;
        if out.welcomed || matches!(ended, Ended::Redirect(_) | Ended::Handoff { .. }) {
            redial.answered();
        }
        // The follower this agent was handed to did not serve it (no Welcome,
        // and not a redirect it relayed): back to the leader, which serves
        // it itself while this agent declines handoffs.
        if let Some((via, leader)) = handed.take() {
            let relayed_redirect = out.relayed && matches!(ended, Ended::Redirect(_));
            if via == addr && !out.welcomed && !relayed_redirect {
                tracing::warn!(follower = %via, leader = %leader, pause_s = HANDOFF_PAUSE.as_secs(), "the follower the leader handed this agent to did not serve it: back to the leader, no handoff for a while");
                no_handoff_until = Some(Instant::now() + HANDOFF_PAUSE);
                redirect_to = Some(leader);
                continue;
            }
        }
        if matches!(ended, Ended::Redirect(_)) {
            kept = out.channel.take().map(|c| (addr.clone(), c));
        }
        // A streak of redirects relayed by the same follower ends with any
        // other outcome, and with a session that got going.
        if out.welcomed || !out.relayed {
            relayed_since = None;
        }
        match ended {
            Ended::Handoff { via, leader } => {
                tracing::info!(leader = %leader, via = %via, "the leader hands this agent to a follower");
                handed = Some((via.clone(), leader));
                redirect_to = Some(via);
            }
            // A follower relayed this redirect (the leader behind it moved or
            // went, or the node it relayed to does not lead yet): it relays
            // the next session to whichever leader it knows by then, over the
            // same connection (thousands of agents do not handshake again
            // with the new leader). If it cannot, it redirects unmarked.
            Ended::Redirect(to)
                if out.relayed
                    && relayed_since.get_or_insert_with(Instant::now).elapsed() < RELAYED_RETRY =>
            {
                tracing::info!(via = %addr, leader = ?to, "the leader moved: opening a new session through the same controller");
                tokio::time::sleep(redial.awaiting_leader()).await;
                redirect_to = Some(addr);
            }
            Ended::Redirect(Some(leader)) if redirects_in_a_row < 5 => {
                tracing::info!(from = %addr, to = %leader, "following the controller leader");
                redirects_in_a_row += 1;
                redirect_to = Some(leader);
            }
            Ended::Redirect(None) => {
                redirects_in_a_row = 0;
                tokio::time::sleep(redial.awaiting_leader()).await;
            }
            Ended::Redirect(Some(_)) => {
                // Redirected in circles (leadership moving): a failure.
                redirects_in_a_row = 0;
                tokio::time::sleep(redial.after_failure()).await;
            }
            Ended::Refused(why) => {
                tracing::error!(controller = %addr, reason = %why, "controller refused this agent");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ended::Stalled(ms) => {
                redirects_in_a_row = 0;
                tracing::warn!(controller = %addr, silent_ms = ms, "session stalled: dialling the leader again on a fresh connection");
                redirect_to = Some(addr);
            }
            Ended::Broken(e) => {
                redirects_in_a_row = 0;
                let pause = redial.after_failure();
                tracing::debug!(error = %e, failures = redial.failures(), pause_ms = pause.as_millis() as u64, "controller session ended");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Which of the `n` configured controllers this server dials first: spread
/// over all of them by a hash of its id, not all on the first one, since any
/// controller serves an agent session (a follower relays it to the leader,
/// `controller/src/relay.rs`) and the connections are most of a node's load.
fn first_controller(server_id: &str, n: usize) -> usize {
    // FNV-1a: stable across builds and processes (std's hasher is not).
    let h = server_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    (h % n.max(1) as u64) as usize
}

/// How a `Redirect` ends a session, before or after the `Welcome`: to the
/// leader it names (or none known yet), noting whether a follower relayed it;
/// or, naming a follower too (`via_addr`), the leader's handoff to it.
fn redirected(r: understudy_proto::Redirect, out: &mut Outcome) -> Ended {
    out.relayed = r.relayed_by != 0;
    if !r.via_addr.is_empty() && !r.leader_addr.is_empty() {
        return Ended::Handoff {
            via: r.via_addr,
            leader: r.leader_addr,
        };
    }
    Ended::Redirect((!r.leader_addr.is_empty()).then_some(r.leader_addr))
}

/// A refusal (this agent's certificate or its server) ends the session as
/// `Refused`, logged as an error; anything else is transport trouble.
fn refused_or_broken(st: &tonic::Status, broken: impl Fn(String) -> Ended) -> Ended {
    if matches!(
        st.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    ) {
        return Ended::Refused(st.message().to_owned());
    }
    match understudy_tls::auth_failure(st) {
        Some(why) => Ended::Refused(why),
        None => broken(understudy_tls::error_chain(st)),
    }
}

/// What a session leaves behind besides how it ended.
#[derive(Default)]
struct Outcome {
    /// The connection to use (in: one kept from the last session to this
    /// controller, if any; out: the one this session used).
    channel: Option<Channel>,
    /// The leader answered (the streak of failed dials is over).
    welcomed: bool,
    /// Through a follower that relayed the session (`Welcome.relayed_by`), or
    /// a redirect it relayed (`Redirect.relayed_by`): come back through it.
    relayed: bool,
    /// In: whether this agent accepts a handoff to a follower.
    handoff_ok: bool,
}

/// One session: dial `addr` (or use the connection in `out`), say `Hello`,
/// and serve until it ends.
#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &AgentConfig,
    tls: Option<&ClientTls>,
    diagnosis: &understudy_tls::Diagnosis,
    addr: &str,
    mut drbd: watch::Receiver<DrbdStatus>,
    handler: Arc<Handler>,
    probes: &ProbeState,
    out: &mut Outcome,
) -> Ended {
    let mut host = handler.host_status();
    let highest_epoch = handler.token().epoch;
    let broken = |reason: String| {
        Ended::Broken(AgentError::Controller {
            addr: addr.to_owned(),
            reason,
        })
    };
    // Before the Welcome: maybe TLS refused this agent (see `run`).
    let early = |reason: String| {
        if let Some(t) = tls {
            diagnosis.after_failure(addr, t, None, "agent session");
        }
        broken(reason)
    };
    let (ping_every, ping_timeout) = keepalive(Duration::from_millis(cfg.stall_ms));
    let endpoint = match understudy_tls::endpoint(addr, tls) {
        Ok(e) => e
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(ping_every)
            .keep_alive_timeout(ping_timeout)
            .keep_alive_while_idle(true),
        Err(e) => return Ended::Refused(e.to_string()),
    };
    let kept_connection = out.channel.is_some();
    let channel = match out.channel.take() {
        Some(c) => c,
        None => match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => match understudy_tls::auth_failure(&e) {
                Some(why) => return Ended::Refused(why),
                None => {
                    if let Some(t) = tls {
                        diagnosis.after_failure(addr, t, Some(&e), "agent session");
                    }
                    return broken(format!("connect: {}", understudy_tls::error_chain(&e)));
                }
            },
        },
    };
    out.channel = Some(channel.clone());
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(32);
    let hello = Hello {
        server_id: cfg.server_id.clone(),
        pair_id: cfg.pair_id.clone(),
        role: match cfg.role {
            Role::Primary => ServerRole::Primary,
            Role::Backup => ServerRole::Backup,
        } as i32,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        highest_epoch,
        stall_ms: cfg.stall_ms,
        handoff_ok: out.handoff_ok,
    };
    let _ = tx
        .send(AgentMessage {
            msg: Some(Msg::Hello(hello)),
        })
        .await;
    let mut inbound = match tokio::time::timeout(
        Duration::from_secs(2),
        client.session(ReceiverStream::new(rx)),
    )
    .await
    {
        Err(_) => return early("no answer to Hello within 2 s".into()),
        Ok(Err(st)) => return refused_or_broken(&st, early),
        Ok(Ok(r)) => r.into_inner(),
    };
    let welcome = match tokio::time::timeout(Duration::from_secs(2), inbound.message()).await {
        Err(_) => return early("no Welcome within 2 s".into()),
        Ok(Err(st)) => return refused_or_broken(&st, early),
        Ok(Ok(None)) => return early("stream closed before Welcome".into()),
        Ok(Ok(Some(m))) => match m.msg {
            Some(In::Welcome(w)) => w,
            Some(In::Redirect(r)) => return redirected(r, out),
            _ => return broken("unexpected first message from the controller".into()),
        },
    };
    tracing::info!(controller = %addr, node = welcome.node_id, term = welcome.raft_term, relayed_by = welcome.relayed_by, kept_connection, "session open with the controller leader");
    out.welcomed = true;
    out.relayed = welcome.relayed_by != 0;
    probes.heard_controller(unix_ms());
    // Stall detection starts with the leader's first heartbeat acknowledgement
    // (a leader of an older version never sends one).
    let mut acked = false;
    let mut last_in = tokio::time::Instant::now();
    let period = Duration::from_millis(if welcome.heartbeat_interval_ms > 0 {
        welcome.heartbeat_interval_ms
    } else {
        cfg.heartbeat_ms
    });
    let stall = Duration::from_millis(cfg.stall_ms);
    let mut beat = tokio::time::interval(period);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    // A full report at least every `report_refresh_ms`, changed or not.
    let mut refresh = (cfg.report_refresh_ms > 0).then(|| {
        let every = Duration::from_millis(cfg.report_refresh_ms);
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let report = |seq: u64, d: &DrbdStatus, h: &HostStatus| AgentMessage {
        msg: Some(Msg::Report(Report {
            seq,
            observed_at_unix_ms: unix_ms(),
            drbd: Some(d.clone()),
            host: Some(h.clone()),
        })),
    };
    // The first report of a session says what the host holds now, not what
    // was read before a freeze or a long stall (a thawed old primary would
    // otherwise report the client IP the fence already took), bounded so a
    // long-running command does not hold the report back.
    let _ = tokio::time::timeout(FIRST_REPORT_REFRESH, handler.refresh()).await;
    let first = report(seq, &drbd.borrow_and_update(), &host.borrow_and_update());
    if tx.send(first).await.is_err() {
        return broken("stream closed".into());
    }
    beat.reset();
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    last_in = tokio::time::Instant::now();
                    probes.heard_controller(unix_ms());
                    match m.msg {
                    Some(In::Redirect(r)) => return redirected(r, out),
                    Some(In::Command(c)) => {
                        let (handler, tx) = (handler.clone(), tx.clone());
                        tokio::spawn(async move {
                            let r = handler.handle(c).await;
                            let _ = tx.send(AgentMessage { msg: Some(Msg::CommandResult(r)) }).await;
                        });
                    }
                    Some(In::HeartbeatAck(_)) => acked = true,
                    _ => {}
                }},
                Ok(None) => return broken("the controller closed the session".into()),
                Err(st) => return broken(st.message().to_owned()),
            },
            r = drbd.changed() => {
                if r.is_err() {
                    return broken("DRBD observer stopped".into());
                }
                seq += 1;
                let msg = report(seq, &drbd.borrow_and_update(), &host.borrow_and_update());
                if tx.send(msg).await.is_err() {
                    return broken("stream closed".into());
                }
                beat.reset();
            }
            r = host.changed() => {
                if r.is_err() {
                    return broken("host status watcher stopped".into());
                }
                seq += 1;
                let msg = report(seq, &drbd.borrow_and_update(), &host.borrow_and_update());
                if tx.send(msg).await.is_err() {
                    return broken("stream closed".into());
                }
                beat.reset();
            }
            _ = async {
                match refresh.as_mut() {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            } => {
                seq += 1;
                let msg = report(seq, &drbd.borrow(), &host.borrow());
                if tx.send(msg).await.is_err() {
                    return broken("stream closed".into());
                }
                beat.reset();
            }
            // Its own timer, not the heartbeat's: reports arriving faster than
            // the interval postpone every heartbeat.
            _ = tokio::time::sleep_until(last_in + stall), if acked => {
                return Ended::Stalled(last_in.elapsed().as_millis() as u64);
            }
            _ = beat.tick() => {
                seq += 1;
                let hb = AgentMessage { msg: Some(Msg::Heartbeat(Heartbeat { seq, sent_at_unix_ms: unix_ms() })) };
                if tx.send(hb).await.is_err() {
                    return broken("stream closed".into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{first_controller, keepalive};
    use std::time::Duration;

    #[test]
    fn the_keepalive_follows_the_stall_bound_and_pings_no_acknowledged_session() {
        let ms = Duration::from_millis;
        // The defaults (stall 1 s): a frozen controller noticed within 2 s.
        assert_eq!(keepalive(ms(1000)), (ms(500), ms(1500)));
        // Never tighter than that, whatever the bound.
        assert_eq!(keepalive(ms(200)), (ms(500), ms(1500)));
        assert_eq!(keepalive(ms(5000)), (ms(2500), ms(5000)));
        // In steady state the leader acknowledges within stall/4 plus one
        // heartbeat (`AckPacer`): whenever the heartbeat is under a quarter
        // of the bound (the defaults: a fifth), that is before the interval,
        // and an acknowledged session sends no ping.
        for stall in (400..=20_000).step_by(100) {
            for heartbeat in (50..(stall + 3) / 4).step_by(10) {
                let gap = ms(stall / 4 + heartbeat);
                let (interval, timeout) = keepalive(ms(stall));
                assert!(gap < interval, "stall {stall} heartbeat {heartbeat}");
                assert!(timeout >= ms(stall), "a busy leader gets the bound");
            }
        }
    }

    #[test]
    fn servers_spread_their_first_dial_over_the_controllers() {
        let mut count = [0usize; 3];
        for i in 0..3000 {
            let id = format!("fs{i}-{}", if i % 2 == 0 { "a" } else { "b" });
            let k = first_controller(&id, 3);
            assert_eq!(k, first_controller(&id, 3), "stable");
            count[k] += 1;
        }
        // Each controller gets about a third (1000 ± 15 %).
        assert!(
            count.iter().all(|&c| (850..=1150).contains(&c)),
            "{count:?}"
        );
        assert_eq!(first_controller("fs1-a", 1), 0);
        assert_eq!(first_controller("fs1-a", 0), 0);
    }
}
