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

use tokio::sync::{mpsc, oneshot, watch};
use understudy_proto::{CommandResult, ControllerMessage, DrbdSummary, Hello, ProbeReply, Report};

/// What the leader knows about one server's agent right now.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub hello: Hello,
    /// An agent session to this node is open.
    pub connected: bool,
    /// Identifies the session that last touched this entry.
    pub session: u64,
    /// When the current session opened: a report older than this was sent by an
    /// earlier session (maybe an earlier agent process) and is not current.
    pub session_started: Instant,
    /// Last message of any kind (heartbeat or report).
    pub last_seen: Instant,
    pub last_report: Option<Report>,
    pub last_report_at: Option<Instant>,
    /// Per DRBD resource: since when its connection has not been `Connected`.
    pub conn_lost_since: HashMap<String, Instant>,
    /// Per DRBD resource: the last summary reported while still `Connected`
    /// (the S1 evidence: was this server in sync right before it lost its peer?).
    pub last_connected: HashMap<String, DrbdSummary>,
    /// When it last answered a direct probe (`probe.rs`), whatever its session does.
    pub probe_answered_at: Option<Instant>,
    /// Per DRBD resource: its resync as a SyncTarget, for the ETA.
    pub resync: HashMap<String, crate::resync::Track>,
}

/// A handle to send messages down an agent's open session.
/// A message to an agent's session stream, boxed: a channel allocates its
/// slots 32 at a time, and unboxed (about 150 bytes each) that was 9 KB of
/// heap per agent session (heaptrack, `bench-scale`).
pub type SessionItem = Box<Result<ControllerMessage, tonic::Status>>;
pub type SessionTx = mpsc::Sender<SessionItem>;

/// A map keyed by server or pair id, with a fast hasher: the leader looks
/// these up tens of thousands of times a second at 10 000 pairs.
pub type IdMap<V> = foldhash::HashMap<String, V>;
/// A set of pair or server ids ([`IdMap`]'s hasher).
pub type Ids = foldhash::HashSet<String>;

/// The live view of every agent; cheap to share.
pub struct Liveness {
    servers: Mutex<IdMap<ServerView>>,
    sessions: Mutex<IdMap<(u64, SessionTx)>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<CommandResult>>>,
    probes: Mutex<IdMap<(Instant, ProbeReply)>>,
    next_command: std::sync::atomic::AtomicU64,
    leading_since: Mutex<Instant>,
    /// When the first agent session of this leadership opened.
    first_contact: Mutex<Option<Instant>>,
    changed: watch::Sender<u64>,
    /// Pairs whose agents' view changed since the leader's loop last looked
    /// ([`Liveness::take_changed`]): a session opened or closed, a report that
    /// differs from the previous one.
    changed_pairs: Mutex<Ids>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            servers: Mutex::default(),
            sessions: Mutex::default(),
            pending: Mutex::default(),
            probes: Mutex::default(),
            next_command: std::sync::atomic::AtomicU64::new(1),
            leading_since: Mutex::new(Instant::now()),
            first_contact: Mutex::new(None),
            changed: watch::channel(0).0,
            changed_pairs: Mutex::default(),
        }
    }
}

impl Liveness {
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// `pair_id`'s view changed: note it, wake the leader's loop.
    fn changed(&self, pair_id: &str) {
        {
            let mut c = self.changed_pairs.lock().expect("liveness lock");
            if !c.contains(pair_id) {
                c.insert(pair_id.to_string());
            }
        }
        self.bump();
    }

    /// The pairs whose view changed since the last call (and forget them).
    pub fn take_changed(&self) -> Ids {
        std::mem::take(&mut *self.changed_pairs.lock().expect("liveness lock"))
    }

    /// Woken on every connect, disconnect and report that differs from the
    /// agent's previous one (not on heartbeats, nor on a report that repeats).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// An agent said hello on a new session.
    pub fn connected(&self, session: u64, hello: Hello, tx: SessionTx) {
        let id = hello.server_id.clone();
        let pair = hello.pair_id.clone();
        let now = Instant::now();
        self.first_contact
            .lock()
            .expect("liveness lock")
            .get_or_insert(now);
        {
            let mut s = self.servers.lock().expect("liveness lock");
            let e = s.entry(id.clone()).or_insert_with(|| ServerView {
                hello: hello.clone(),
                connected: true,
                session,
                session_started: now,
                last_seen: now,
                last_report: None,
                last_report_at: None,
                conn_lost_since: HashMap::new(),
                last_connected: HashMap::new(),
                probe_answered_at: None,
                resync: HashMap::new(),
            });
            e.hello = hello;
            e.connected = true;
            e.session = session;
            e.session_started = now;
            e.last_seen = now;
        }
        self.sessions
            .lock()
            .expect("liveness lock")
            .insert(id, (session, tx));
        self.changed(&pair);
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

    /// A full report from the agent. One that repeats the previous report of
    /// the same session (same DRBD and host state) only counts as a sign of
    /// life, like a heartbeat: it does not wake the leader's loop.
    pub fn report(&self, server_id: &str, session: u64, report: Report) {
        let mut changed = None;
        if let Some(e) = self
            .servers
            .lock()
            .expect("liveness lock")
            .get_mut(server_id)
        {
            if e.session == session {
                let now = Instant::now();
                let repeat = e.last_report_at.is_some_and(|t| t >= e.session_started)
                    && e.last_report
                        .as_ref()
                        .is_some_and(|old| old.drbd == report.drbd && old.host == report.host);
                e.last_seen = now;
                e.last_report_at = Some(now);
                for r in report.drbd.iter().flat_map(|d| d.resources.iter()) {
                    let Some(sum) = &r.summary else { continue };
                    e.resync.entry(r.name.clone()).or_default().observe(
                        now,
                        sum.out_of_sync_bytes,
                        sum.replication == "SyncTarget",
                    );
                    if repeat {
                        continue;
                    }
                    if sum.connection == "Connected" {
                        e.conn_lost_since.remove(&r.name);
                        e.last_connected.insert(r.name.clone(), sum.clone());
                    } else {
                        e.conn_lost_since.entry(r.name.clone()).or_insert(now);
                        // The agent's own record of its last connected state, so a
                        // leader elected during the outage still has the evidence.
                        if let Some(lc) = &r.last_connected {
                            e.last_connected.insert(r.name.clone(), lc.clone());
                        }
                    }
                }
                if !repeat {
                    e.last_report = Some(report);
                    changed = Some(e.hello.pair_id.clone());
                } else if let Some(old) = e.last_report.as_mut() {
                    // The same content: keep it, but it is this report now (its
                    // sequence number and observation time), without a wake-up.
                    old.seq = report.seq;
                    old.observed_at_unix_ms = report.observed_at_unix_ms;
                }
            }
        }
        if let Some(pair) = changed {
            self.changed(&pair);
        }
    }

    /// The session ended (stream closed or broken).
    pub fn disconnected(&self, server_id: &str, session: u64) {
        let mut pair = None;
        if let Some(e) = self
            .servers
            .lock()
            .expect("liveness lock")
            .get_mut(server_id)
        {
            if e.session == session {
                e.connected = false;
            }
            pair = Some(e.hello.pair_id.clone());
        }
        let mut sessions = self.sessions.lock().expect("liveness lock");
        if sessions.get(server_id).map(|(s, _)| *s) == Some(session) {
            sessions.remove(server_id);
        }
        drop(sessions);
        match pair {
            Some(p) => self.changed(&p),
            None => self.bump(),
        }
    }

    /// `server_id`'s agent accepted a command carrying `epoch` (it persisted it,
    /// S4): its view's highest epoch is at least that now, until it says hello again.
    pub fn note_epoch(&self, server_id: &str, epoch: u64) {
        if let Some(e) = self
            .servers
            .lock()
            .expect("liveness lock")
            .get_mut(server_id)
        {
            e.hello.highest_epoch = e.hello.highest_epoch.max(epoch);
        }
    }

    /// A copy of one server's view. A server that answered a direct probe but
    /// has no session with this leader yet gets a disconnected view carrying it.
    pub fn get(&self, server_id: &str) -> Option<ServerView> {
        let probe = self.probe_answer(server_id).map(|(at, _)| at);
        let v = self
            .servers
            .lock()
            .expect("liveness lock")
            .get(server_id)
            .cloned();
        match (v, probe) {
            (Some(mut v), p) => {
                v.probe_answered_at = p;
                Some(v)
            }
            (None, Some(at)) => Some(ServerView {
                hello: Hello {
                    server_id: server_id.into(),
                    ..Default::default()
                },
                connected: false,
                session: 0,
                last_seen: self.leading_since(),
                session_started: self.leading_since(),
                last_report: None,
                last_report_at: None,
                conn_lost_since: HashMap::new(),
                last_connected: HashMap::new(),
                probe_answered_at: Some(at),
                resync: HashMap::new(),
            }),
            (None, None) => None,
        }
    }

    /// [`agent_view`] of one server, read in place: what the leader's loop
    /// needs of every pair on every tick, without copying the whole view and
    /// its last report as [`Liveness::get`] does.
    pub fn agent_view(
        &self,
        server_id: &str,
        resource: &str,
        now: Instant,
        leading_since: Instant,
    ) -> crate::observe::AgentView {
        let probe = self.probe_answered_at(server_id);
        {
            let servers = self.servers.lock().expect("liveness lock");
            if let Some(v) = servers.get(server_id) {
                let mut view = agent_view(Some(v), resource, now, leading_since);
                view.probe_answered_ms =
                    probe.map(|t| now.saturating_duration_since(t).as_millis() as u64);
                return view;
            }
        }
        // No session yet (maybe a probe answer): as `get` makes it.
        agent_view(self.get(server_id).as_ref(), resource, now, leading_since)
    }

    /// An agent answered a direct probe (the reply is checked by `probe.rs`).
    pub fn probe_answered(&self, server_id: &str, reply: ProbeReply) {
        self.probes
            .lock()
            .expect("liveness lock")
            .insert(server_id.into(), (Instant::now(), reply));
        self.bump();
    }

    /// When a server last answered a direct probe (the answer is not copied).
    pub fn probe_answered_at(&self, server_id: &str) -> Option<Instant> {
        self.probes
            .lock()
            .expect("liveness lock")
            .get(server_id)
            .map(|(at, _)| *at)
    }

    /// How long a server's agent has been silent, counted as [`agent_view`]
    /// counts it (from this node's election at the earliest), read in place:
    /// the probe watcher asks it of every serving server several times a
    /// second and needs nothing else of the view.
    pub fn silent_ms(&self, server_id: &str, now: Instant, leading_since: Instant) -> u64 {
        let last_seen = self
            .servers
            .lock()
            .expect("liveness lock")
            .get(server_id)
            .map(|v| v.last_seen);
        silence(last_seen, now, leading_since)
    }

    /// Those of `items` whose server (`id`) has been silent `at_least_ms` or
    /// more, as [`Liveness::silent_ms`] counts it, read under one lock: the
    /// probe watcher asks it of every serving server ten times a second.
    pub fn silent_among<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        id: impl Fn(&T) -> &str,
        now: Instant,
        leading_since: Instant,
        at_least_ms: u64,
    ) -> Vec<T> {
        // Nobody can have been silent that long yet: no lookups at all.
        if silence(None, now, leading_since) < at_least_ms {
            return Vec::new();
        }
        let servers = self.servers.lock().expect("liveness lock");
        items
            .into_iter()
            .filter(|t| {
                let last_seen = servers.get(id(t)).map(|v| v.last_seen);
                silence(last_seen, now, leading_since) >= at_least_ms
            })
            .collect()
    }

    /// The last direct probe answer of a server, and when it came.
    pub fn probe_answer(&self, server_id: &str) -> Option<(Instant, ProbeReply)> {
        self.probes
            .lock()
            .expect("liveness lock")
            .get(server_id)
            .cloned()
    }

    /// This node starts leading now: silence is counted from here for agents not
    /// heard from yet (a new leader knows nothing of the time before it).
    pub fn start_leading(&self) -> Instant {
        let now = Instant::now();
        *self.leading_since.lock().expect("liveness lock") = now;
        *self.first_contact.lock().expect("liveness lock") = None;
        now
    }

    /// From when the silence of an agent this leader has not heard from yet
    /// is counted: its election, or, once an agent has opened a session, that
    /// first session. Controllers that started long before their agents (a
    /// cold start of everything) would otherwise take the second agent of a
    /// pair for gone the instant the first one connects, tens of milliseconds
    /// before the second does, and launch a spare for it; with this, every
    /// agent has `agent_timeout_ms` from the first contact. After an election
    /// the first agent is back within about 100 ms, so the clock moves by
    /// that much at most; an agent heard from is unaffected.
    pub fn silence_origin(&self) -> Instant {
        let since = self.leading_since();
        self.first_contact
            .lock()
            .expect("liveness lock")
            .map_or(since, |t| t.max(since))
    }

    /// When this node started leading.
    pub fn leading_since(&self) -> Instant {
        *self.leading_since.lock().expect("liveness lock")
    }

    /// Forget everything (this node stopped being leader).
    pub fn clear(&self) {
        self.servers.lock().expect("liveness lock").clear();
        self.sessions.lock().expect("liveness lock").clear();
        self.probes.lock().expect("liveness lock").clear();
        self.bump();
    }

    /// Send a command to a server's agent; the receiver gets its result. Fails at
    /// once if the agent has no open session with this leader.
    pub fn send_command(
        &self,
        server_id: &str,
        mut cmd: understudy_proto::Command,
    ) -> Result<oneshot::Receiver<CommandResult>, String> {
        let tx = self
            .sessions
            .lock()
            .expect("liveness lock")
            .get(server_id)
            .map(|(_, tx)| tx.clone())
            .ok_or_else(|| format!("{server_id}'s agent is not connected to this controller"))?;
        cmd.command_id = self
            .next_command
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (rtx, rrx) = oneshot::channel();
        self.pending
            .lock()
            .expect("liveness lock")
            .insert(cmd.command_id, rtx);
        let msg = ControllerMessage {
            msg: Some(understudy_proto::controller_message::Msg::Command(cmd)),
        };
        tx.try_send(Box::new(Ok(msg)))
            .map_err(|e| format!("{server_id}'s session is not accepting commands: {e}"))?;
        Ok(rrx)
    }

    /// A command result came back on a session.
    pub fn command_result(&self, r: CommandResult) {
        if let Some(tx) = self
            .pending
            .lock()
            .expect("liveness lock")
            .remove(&r.command_id)
        {
            let _ = tx.send(r);
        }
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

/// Milliseconds an agent last heard at `last_seen` (never: `None`) has been
/// silent at `now`, counted from this node's election at the earliest (a new
/// leader knows nothing of the time before it).
fn silence(last_seen: Option<Instant>, now: Instant, leading_since: Instant) -> u64 {
    let from = last_seen.map_or(leading_since, |t| t.max(leading_since));
    now.saturating_duration_since(from).as_millis() as u64
}

/// Reduce a server's live view to the plain data [`crate::observe::observe`] takes,
/// picking the DRBD resource of the pair.
pub fn agent_view(
    v: Option<&ServerView>,
    resource: &str,
    now: Instant,
    leading_since: Instant,
) -> crate::observe::AgentView {
    let Some(v) = v else {
        return crate::observe::AgentView {
            silent_ms: Some(silence(None, now, leading_since)),
            ..Default::default()
        };
    };
    let drbd = v.last_report.as_ref().and_then(|r| r.drbd.as_ref());
    let res = drbd.and_then(|d| d.resources.iter().find(|r| r.name == resource));
    crate::observe::AgentView {
        connected: v.connected,
        silent_ms: Some(silence(Some(v.last_seen), now, leading_since)),
        peer_lost_ms: v
            .conn_lost_since
            .get(resource)
            .map(|t| now.saturating_duration_since(*t).as_millis() as u64),
        last_connected: v.last_connected.get(resource).cloned(),
        host: v.last_report.as_ref().and_then(|r| r.host.clone()),
        drbd: res.and_then(|r| r.summary.clone()),
        observer_error: match drbd {
            Some(d) if !d.observer_error.is_empty() => d.observer_error.clone(),
            Some(d) if d.observer_running && res.is_none() => {
                format!("DRBD resource {resource} is not configured on this host")
            }
            _ => String::new(),
        },
        unknown: res.map(|r| r.unknown.clone()).unwrap_or_default(),
        highest_epoch: Some(v.hello.highest_epoch),
        stale_report: v.last_report_at.is_none_or(|t| t < v.session_started),
        report_age_ms: v
            .last_report_at
            .map(|t| now.saturating_duration_since(t).as_millis() as u64),
        probe_answered_ms: v
            .probe_answered_at
            .map(|t| now.saturating_duration_since(t).as_millis() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The `Hello` of `server`'s agent, of pair fs1.
    fn hello(server: &str) -> Hello {
        Hello {
            server_id: server.into(),
            pair_id: "fs1".into(),
            ..Default::default()
        }
    }

    /// A cold start: controllers leading for a while before any agent. The
    /// silence of an agent not heard yet counts from the first session, so
    /// the second agent of a pair is not gone the instant the first connects.
    #[test]
    fn silence_of_an_agent_not_heard_yet_counts_from_the_first_contact() {
        let live = Liveness::default();
        let since = live.start_leading();
        assert_eq!(live.silence_origin(), since, "no agent yet: the election");
        std::thread::sleep(Duration::from_millis(30));
        let (tx, _rx) = mpsc::channel(1);
        live.connected(1, hello("fs1-a"), tx.clone());
        let origin = live.silence_origin();
        assert!(origin >= since + Duration::from_millis(30));
        let now = origin + Duration::from_millis(5);
        // fs1-b, never heard: 5 ms silent, not 35.
        assert_eq!(
            live.agent_view("fs1-b", "r0", now, origin).silent_ms,
            Some(5)
        );
        assert_eq!(live.silent_ms("fs1-b", now, origin), 5);
        // A second session does not move it; a new leadership resets it.
        live.connected(2, hello("fs1-b"), tx);
        assert_eq!(live.silence_origin(), origin);
        let again = live.start_leading();
        assert_eq!(live.silence_origin(), again);
    }

    /// The in-place readers the sweeps use say what the full view says.
    #[test]
    fn silence_and_probe_time_read_in_place_agree_with_the_full_view() {
        let live = Liveness::default();
        let since = live.start_leading();
        let (tx, _rx) = mpsc::channel(1);
        live.connected(7, hello("fs1-a"), tx);
        live.probe_answered(
            "fs1-b",
            ProbeReply {
                server_id: "fs1-b".into(),
                ..Default::default()
            },
        );
        std::thread::sleep(Duration::from_millis(20));
        live.heard("fs1-a", 7);
        let now = Instant::now() + Duration::from_millis(300);
        // Connected, probe-only and unknown servers.
        for id in ["fs1-a", "fs1-b", "fs1-c"] {
            let full = agent_view(live.get(id).as_ref(), "r0", now, since);
            assert_eq!(Some(live.silent_ms(id, now, since)), full.silent_ms, "{id}");
            let in_place = live.agent_view(id, "r0", now, since);
            assert_eq!(in_place.silent_ms, full.silent_ms, "{id}");
            assert_eq!(
                live.probe_answered_at(id),
                live.probe_answer(id).map(|(at, _)| at),
                "{id}"
            );
        }
        assert!(live.silent_ms("fs1-a", now, since) < live.silent_ms("fs1-c", now, since));
        // The probe watcher's reading of many at once says the same, at every
        // threshold around their silences.
        let ids = ["fs1-a", "fs1-b", "fs1-c"];
        let silences: Vec<u64> = ids
            .iter()
            .map(|id| live.silent_ms(id, now, since))
            .collect();
        for at_least in silences
            .iter()
            .flat_map(|s| [s.saturating_sub(1), *s, s + 1])
        {
            let one_by_one: Vec<&str> = ids
                .iter()
                .copied()
                .filter(|id| live.silent_ms(id, now, since) >= at_least)
                .collect();
            assert_eq!(
                live.silent_among(ids, |id| id, now, since, at_least),
                one_by_one,
                "{at_least} ms"
            );
        }
        // Right after an election nobody can be silent long.
        assert!(live
            .silent_among(ids, |id| id, since + Duration::from_millis(5), since, 400)
            .is_empty());
    }
}
