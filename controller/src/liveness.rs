//! The leader's in-memory view of the agents: who is connected, when each was last
//! heard from, and its latest report.
//!
//! None of this is written to Raft: heartbeats arrive several times a second from
//! every server and would flood the log. A newly elected leader starts with an
//! empty view and rebuilds it within one heartbeat interval, because agents follow
//! the leader and reconnect to it. Only the decisions taken from this view (pair
//! state changes) are committed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use understudy_proto::{ControllerMessage, Hello, Report};

/// What the leader knows about one server's agent right now.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub hello: Hello,
    /// An agent session to this node is open.
    pub connected: bool,
    /// Identifies the session that last touched this entry.
    pub session: u64,
    /// Last message of any kind (heartbeat or report).
    pub last_seen: Instant,
    pub last_report: Option<Report>,
    pub last_report_at: Option<Instant>,
}

/// A handle to send messages down an agent's open session.
pub type SessionTx = mpsc::Sender<Result<ControllerMessage, tonic::Status>>;

/// The live view of every agent; cheap to share.
pub struct Liveness {
    servers: Mutex<HashMap<String, ServerView>>,
    sessions: Mutex<HashMap<String, (u64, SessionTx)>>,
    changed: watch::Sender<u64>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            servers: Mutex::default(),
            sessions: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Liveness {
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Woken on every report, connect and disconnect.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// An agent said hello on a new session.
    pub fn connected(&self, session: u64, hello: Hello, tx: SessionTx) {
        let id = hello.server_id.clone();
        let now = Instant::now();
        {
            let mut s = self.servers.lock().expect("liveness lock");
            let e = s.entry(id.clone()).or_insert_with(|| ServerView {
                hello: hello.clone(),
                connected: true,
                session,
                last_seen: now,
                last_report: None,
                last_report_at: None,
            });
            e.hello = hello;
            e.connected = true;
            e.session = session;
            e.last_seen = now;
        }
        self.sessions
            .lock()
            .expect("liveness lock")
            .insert(id, (session, tx));
        self.bump();
    }

    /// Any message from the agent: it is alive.
    pub fn heard(&self, server_id: &str, session: u64) {
        if let Some(e) = self
            .servers
            .lock()
            .expect("liveness lock")
            .get_mut(server_id)
        {
            if e.session == session {
                e.last_seen = Instant::now();
            }
        }
    }

    /// A full report from the agent.
    pub fn report(&self, server_id: &str, session: u64, report: Report) {
        let mut changed = false;
        if let Some(e) = self
            .servers
            .lock()
            .expect("liveness lock")
            .get_mut(server_id)
        {
            if e.session == session {
                let now = Instant::now();
                e.last_seen = now;
                e.last_report_at = Some(now);
                e.last_report = Some(report);
                changed = true;
            }
        }
        if changed {
            self.bump();
        }
    }

    /// The session ended (stream closed or broken).
    pub fn disconnected(&self, server_id: &str, session: u64) {
        if let Some(e) = self
            .servers
            .lock()
            .expect("liveness lock")
            .get_mut(server_id)
        {
            if e.session == session {
                e.connected = false;
            }
        }
        let mut sessions = self.sessions.lock().expect("liveness lock");
        if sessions.get(server_id).map(|(s, _)| *s) == Some(session) {
            sessions.remove(server_id);
        }
        drop(sessions);
        self.bump();
    }

    /// A copy of one server's view.
    pub fn get(&self, server_id: &str) -> Option<ServerView> {
        self.servers
            .lock()
            .expect("liveness lock")
            .get(server_id)
            .cloned()
    }

    /// Forget everything (this node stopped being leader).
    pub fn clear(&self) {
        self.servers.lock().expect("liveness lock").clear();
        self.sessions.lock().expect("liveness lock").clear();
        self.bump();
    }

    /// Every open session, to tell them to follow a new leader.
    pub fn sessions(&self) -> Vec<SessionTx> {
        self.sessions
            .lock()
            .expect("liveness lock")
            .values()
            .map(|(_, tx)| tx.clone())
            .collect()
    }
}

/// Reduce a server's live view to the plain data [`crate::observe::observe`] takes,
/// picking the DRBD resource of the pair.
pub fn agent_view(
    v: Option<&ServerView>,
    resource: &str,
    now: Instant,
) -> crate::observe::AgentView {
    let Some(v) = v else {
        return crate::observe::AgentView::default();
    };
    let drbd = v.last_report.as_ref().and_then(|r| r.drbd.as_ref());
    let res = drbd.and_then(|d| d.resources.iter().find(|r| r.name == resource));
    crate::observe::AgentView {
        connected: v.connected,
        silent_ms: Some(now.saturating_duration_since(v.last_seen).as_millis() as u64),
        drbd: res.and_then(|r| r.summary.clone()),
        observer_error: match drbd {
            Some(d) if !d.observer_error.is_empty() => d.observer_error.clone(),
            Some(d) if d.observer_running && res.is_none() => {
                format!("DRBD resource {resource} is not configured on this host")
            }
            _ => String::new(),
        },
        unknown: res.map(|r| r.unknown.clone()).unwrap_or_default(),
    }
}
