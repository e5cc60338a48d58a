//! The HTTP side of a controller node (SPEC §6): a JSON API, server-sent events,
//! and load-balancer style health checks, served from the leader's view.
//!
//! - `GET /api/v1/status`, `/api/v1/pairs/{id}`, `/api/v1/history`: JSON, the same
//!   shapes as `understudyctl --output json` (`crate::status_json`). A follower
//!   answers `307` to the leader's HTTP address when it knows it
//!   (`X-Understudy-Role: follower`), `503` otherwise.
//! - `GET /api/v1/events`: server-sent events, one `event: history` per history
//!   line committed from now on (state changes, failover and rebuild steps);
//!   with `?status=1` also `event: status` snapshots (what the dashboard reads).
//! - `GET /metrics`: Prometheus text format ([`crate::metrics`]), every node.
//! - `GET /`: the live dashboard ([`crate::dashboard`]).
//! - `GET /health` (this node answers), `/health/leader` (200 only on the
//!   leader), `/health/pair/{id}` (200 only when the pair serves and is
//!   redundant, `Healthy`; 429 when it serves without a backup; 503 when it does
//!   not serve or the node cannot tell), like Patroni's role checks.
//!
//! Read-only: nothing here changes a pair. It listens on `[http] listen`
//! (plain HTTP: put it on the management network).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use openraft::async_runtime::watch::WatchReceiver;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::operator::OperatorGrpc;
use crate::state::PairState;

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where this node serves HTTP (`0.0.0.0:8080`).
    pub listen: SocketAddr,
}

/// Shared by the handlers.
#[derive(Clone)]
pub struct Http {
    pub op: Arc<OperatorGrpc>,
    /// Every member's HTTP address, by node id (for redirects).
    pub peers: Arc<std::collections::BTreeMap<u64, String>>,
    /// The gRPC listener's TLS handshake counters (`None` without TLS).
    pub handshakes: Option<Arc<crate::acceptor::AdmissionStats>>,
}

/// The router (also used by tests on an ephemeral port).
pub fn router(h: Http) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/pairs/{id}", get(pair))
        .route("/api/v1/history", get(history))
        .route("/api/v1/events", get(events))
        .route("/health", get(health))
        .route("/health/leader", get(health_leader))
        .route("/health/pair/{id}", get(health_pair))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .layer(axum::middleware::map_response(cors))
        .with_state(h)
}

/// Serve until the process ends.
pub async fn serve(cfg: HttpConfig, h: Http) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    tracing::info!(listen = %cfg.listen, "HTTP API and health checks");
    axum::serve(listener, router(h)).await
}

/// Read-only JSON and events may be read by the dashboard served by another
/// controller (it follows the leader).
async fn cors(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn role_header(h: &mut HeaderMap, role: &str) {
    h.insert(
        "x-understudy-role",
        HeaderValue::from_str(role).expect("ascii"),
    );
}

/// What a follower answers: a redirect to the leader, or 503.
fn not_leader(h: &Http, path: &str) -> Response {
    let view = h.op.leader.borrow().clone();
    let target = view
        .leader_id
        .and_then(|id| h.peers.get(&id))
        .map(|a| format!("http://{a}{path}"));
    let mut resp = match target {
        Some(url) => {
            let mut r = (
                StatusCode::TEMPORARY_REDIRECT,
                Json(json!({"role": "follower", "leader": url})),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "role": "follower",
                "error": "this node does not lead and knows no leader with an HTTP address",
            })),
        )
            .into_response(),
    };
    role_header(resp.headers_mut(), "follower");
    resp
}

/// The leader's status as JSON, or what a follower answers.
async fn leader_status(h: &Http, path: &str) -> Result<Value, Response> {
    if !h.op.leader.borrow().is_leader {
        return Err(not_leader(h, path));
    }
    match h.op.status().await {
        Ok(s) => Ok(status_with_http(h, &s)),
        Err(st) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"role": "leader", "error": st.message()})),
        )
            .into_response()),
    }
}

/// The status JSON, with every member's HTTP address (`cluster.http`).
fn status_with_http(h: &Http, s: &understudy_proto::GetStatusResponse) -> Value {
    let mut v = crate::status_json::status_json(s);
    if let Some(c) = v.get_mut("cluster").and_then(|c| c.as_object_mut()) {
        c.insert(
            "http".into(),
            h.peers
                .iter()
                .map(|(id, a)| (id.to_string(), Value::from(a.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }
    v
}

fn leader_json(v: Value) -> Response {
    let mut r = Json(v).into_response();
    role_header(r.headers_mut(), "leader");
    r
}

async fn status(State(h): State<Http>) -> Response {
    match leader_status(&h, "/api/v1/status").await {
        Ok(v) => leader_json(v),
        Err(r) => r,
    }
}

async fn pair(State(h): State<Http>, Path(id): Path<String>) -> Response {
    match leader_status(&h, &format!("/api/v1/pairs/{id}")).await {
        Ok(v) => match v["pairs"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["id"] == id.as_str()))
        {
            Some(p) => leader_json(p.clone()),
            None => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("no pair {id:?} in the inventory")})),
            )
                .into_response(),
        },
        Err(r) => r,
    }
}

async fn history(State(h): State<Http>) -> Response {
    if !h.op.leader.borrow().is_leader {
        return not_leader(&h, "/api/v1/history");
    }
    let data = h.op.state.snapshot();
    let pairs: Vec<Value> = data
        .state
        .pairs
        .values()
        .map(|p| {
            json!({
                "pair_id": p.spec.id,
                "lines": p.history.iter().map(|l| json!({
                    "at_unix_ms": l.at_unix_ms, "epoch": l.epoch, "event": l.event,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let audit: Vec<Value> = data
        .state
        .audit
        .iter()
        .map(|a| {
            json!({
                "at_unix_ms": a.at_unix_ms, "identity": a.identity, "pair_id": a.pair_id,
                "command": a.command, "accepted": a.accepted, "outcome": a.outcome,
            })
        })
        .collect();
    leader_json(json!({"pairs": pairs, "audit": audit}))
}

/// `?status=1`: also a `status` event (the whole status, as `/api/v1/status`)
/// at once, after every history line, and at least every second.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    status: Option<String>,
}

fn history_event(e: &understudy_proto::WatchEvent) -> Event {
    Event::default().event("history").data(
        json!({
            "at_unix_ms": e.at_unix_ms, "pair_id": e.pair_id, "epoch": e.epoch,
            "state": e.state, "event": e.event,
        })
        .to_string(),
    )
}

async fn events(
    State(h): State<Http>,
    Query(q): Query<EventsQuery>,
    uri: axum::http::Uri,
) -> Response {
    if !h.op.leader.borrow().is_leader {
        // The redirect keeps the query (`?status=1`).
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/api/v1/events");
        return not_leader(&h, path);
    }
    let with_status = q
        .status
        .as_deref()
        .is_some_and(|v| v != "0" && v != "false");
    let mut history =
        crate::command::watch_events(h.op.state.clone(), h.op.leader.clone(), String::new());
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = tokio::select! {
                e = history.recv() => match e {
                    None => return,
                    Some(Ok(e)) => {
                        if tx.send(history_event(&e)).await.is_err() {
                            return;
                        }
                        // The lines committed with it go before the status.
                        while let Ok(Ok(e)) = history.try_recv() {
                            if tx.send(history_event(&e)).await.is_err() {
                                return;
                            }
                        }
                        with_status
                    }
                    Some(Err(st)) => {
                        let _ = tx
                            .send(Event::default().event("error").data(st.message().to_string()))
                            .await;
                        return;
                    }
                },
                _ = tick.tick() => with_status,
                _ = tx.closed() => return,
            };
            if due {
                let ev = match h.op.status().await {
                    Ok(s) => Event::default().event("status").data(
                        json!({
                            "now_unix_ms": crate::leadership::now_unix_ms(),
                            "status": status_with_http(&h, &s),
                        })
                        .to_string(),
                    ),
                    Err(st) => Event::default()
                        .event("error")
                        .data(st.message().to_string()),
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    sse(futures::StreamExt::map(stream, Ok::<Event, Infallible>))
}

fn sse(s: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut r = Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
        .into_response();
    role_header(r.headers_mut(), "leader");
    r
}

async fn health(State(h): State<Http>) -> Response {
    let v = h.op.leader.borrow().clone();
    let role = if v.is_leader { "leader" } else { "follower" };
    let mut r = Json(json!({
        "node": h.op.cfg.node_id, "role": role, "term": v.term, "leader_id": v.leader_id,
    }))
    .into_response();
    role_header(r.headers_mut(), role);
    r
}

async fn health_leader(State(h): State<Http>) -> Response {
    let v = h.op.leader.borrow().clone();
    if v.is_leader {
        leader_json(json!({"node": h.op.cfg.node_id, "role": "leader", "term": v.term}))
    } else {
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"node": h.op.cfg.node_id, "role": "follower", "leader_id": v.leader_id})),
        )
            .into_response();
        role_header(r.headers_mut(), "follower");
        r
    }
}

/// This node's Raft figures, for `/metrics`.
fn raft_figures(h: &Http) -> crate::metrics::RaftFigures {
    let m = h.op.raft.metrics().borrow_watched().clone();
    let view = h.op.leader.borrow().clone();
    let voters = m.membership_config.membership().voter_ids().count();
    crate::metrics::RaftFigures {
        node_id: h.op.cfg.node_id,
        is_leader: view.is_leader,
        term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: m.last_log_index,
        committed_index: m.local_committed.map(|l| l.index),
        applied_index: m.last_applied.map(|l| l.index),
        voters,
        matched: m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != h.op.cfg.node_id)
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default(),
        millis_since_quorum_ack: m
            .last_quorum_acked
            .map(|t| openraft::Instant::elapsed(&*t).as_millis() as u64),
    }
}

/// `GET /metrics`: Prometheus text format; every node answers for itself (a
/// follower without the leader-only per-server figures).
async fn metrics(State(h): State<Http>) -> Response {
    let raft = raft_figures(&h);
    let status = if raft.is_leader {
        h.op.status().await.ok()
    } else {
        None
    };
    let data = h.op.state.snapshot();
    let text = crate::metrics::render(&crate::metrics::Inputs {
        raft: &raft,
        agent_sessions: h.op.liveness.sessions().len(),
        handshakes: h.handshakes.as_ref().map(|s| {
            let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            (n(&s.admitted), n(&s.shed), n(&s.failed))
        }),
        pairs: &data.state.pairs,
        status: status.as_ref(),
    });
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response();
    role_header(
        r.headers_mut(),
        if raft.is_leader { "leader" } else { "follower" },
    );
    r
}

/// The HTTP code of `/health/pair/{id}` for a pair in `state`: 200 serving and
/// redundant, 429 serving without a backup (or not known to be redundant now),
/// 503 not serving; pure.
pub fn pair_health_code(state: PairState) -> StatusCode {
    match state {
        PairState::Healthy => StatusCode::OK,
        PairState::Degraded | PairState::Rebuilding | PairState::Suspect | PairState::Paused => {
            StatusCode::TOO_MANY_REQUESTS
        }
        PairState::FailingOver | PairState::SwitchingOver | PairState::Blocked => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn health_pair(State(h): State<Http>, Path(id): Path<String>) -> Response {
    if !h.op.leader.borrow().is_leader {
        return not_leader(&h, &format!("/health/pair/{id}"));
    }
    let Some(p) = h.op.state.snapshot().state.pairs.get(&id).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no pair {id:?} in the inventory")})),
        )
            .into_response();
    };
    let code = pair_health_code(p.state);
    let mut r = (
        code,
        Json(json!({
            "pair": id, "state": p.state.to_string(), "reason": p.state_reason,
            "serving": p.serving_id(), "epoch": p.epoch,
        })),
    )
        .into_response();
    role_header(r.headers_mut(), "leader");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_health_codes() {
        assert_eq!(pair_health_code(PairState::Healthy), StatusCode::OK);
        for s in [
            PairState::Degraded,
            PairState::Rebuilding,
            PairState::Suspect,
            PairState::Paused,
        ] {
            assert_eq!(pair_health_code(s), StatusCode::TOO_MANY_REQUESTS, "{s}");
        }
        for s in [
            PairState::FailingOver,
            PairState::SwitchingOver,
            PairState::Blocked,
        ] {
            assert_eq!(pair_health_code(s), StatusCode::SERVICE_UNAVAILABLE, "{s}");
        }
    }
}
