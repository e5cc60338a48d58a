//! Cloud signals: the provider says a file server is going away (an EC2
//! scheduled event: instance retirement, system maintenance, a reboot or a stop)
//! or its host is failing (system status check `impaired`), so the controller
//! proposes a planned switchover to the standby before it happens, and with
//! `[signals] auto_switchover = true` schedules it itself, inside an allowed
//! window.
//!
//! - The leader polls [`understudy_cloud::Cloud::instance_health`] of both
//!   servers of every pair every `poll_ms` ([`poll`]) and keeps the latest
//!   answer per server in leader memory ([`Signals`]); nothing is replicated.
//! - [`proposal`] (pure) turns a pair, the serving and standby servers' health
//!   and the standby's agent view into a [`Proposal`]: the switchover to
//!   propose, before when, and whether and when the controller schedules it
//!   ([`Schedule`]). Status (`CLOUD SIGNAL:`) and `explain` show it.
//! - With `auto_switchover`, the leader commits
//!   `OperatorCommand::ScheduleSwitchover` with identity
//!   `cloud signal (<event code>)` (audited like an operator's command) at the
//!   earliest time inside `window` ([`Window::earliest`]) before the event
//!   starts, once per event: not when a switchover is already scheduled, and
//!   not again for an event this node has handled (keyed by server, code and
//!   start, [`EventKey`]); a new leader sees the scheduled switchover in Raft.
//!   The scheduled switchover then runs like an operator's, its backup checked
//!   again when its time comes.
//! - Never scheduled while the standby is not UpToDate and in sync
//!   ([`crate::detector::switchover_ready`]), nor when the standby itself has an
//!   event or a failing host, nor while the pair is not `Healthy` (paused,
//!   suspect, blocked ...): the proposal says why.
//!
//! Depends on the small types only (state, the agent view, the cloud's health
//! types), not on `node`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use understudy_cloud::health::status;
use understudy_cloud::{Cloud, CloudServer, InstanceHealth, ScheduledEvent};

use crate::detector::switchover_ready;
use crate::liveness::IdMap;
use crate::observe::AgentView;
use crate::state::{fmt_unix_ms, PairRecord, PairState};

const DAY_MS: i64 = 86_400_000;

/// The code a proposal from a failed system status check carries (EC2 has no
/// event for it).
pub const IMPAIRED: &str = "system-status-impaired";

/// `[signals]` of the controller configuration. Every key is optional:
///
/// ```toml
/// [signals]
/// poll_ms = 60000            # how often the leader reads each server's health
/// auto_switchover = false    # true: schedule the proposed switchover itself
/// window = "02:00-04:00"     # UTC, HH:MM-HH:MM, may wrap midnight; absent: any time
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsConfig {
    /// How often the leader asks the cloud for each server's status checks and
    /// scheduled events, in milliseconds (default 60000; EC2 updates them
    /// every few minutes).
    pub poll_ms: u64,
    /// Schedule the proposed switchover (default false: only propose it, in
    /// status and `explain`).
    pub auto_switchover: bool,
    /// When an automatic switchover may run: `"HH:MM-HH:MM"` in UTC, start
    /// included, end excluded, wrapping midnight if the end is earlier than the
    /// start (`"22:00-02:00"`). Absent: any time.
    pub window: Option<Window>,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            poll_ms: 60_000,
            auto_switchover: false,
            window: None,
        }
    }
}

impl SignalsConfig {
    /// Check the values against each other; the error says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.poll_ms == 0 {
            return Err("signals: poll_ms must be above 0 (the default is 60000)".into());
        }
        Ok(())
    }
}

/// Why a `window` is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window {0:?} is not \"HH:MM-HH:MM\" (UTC), e.g. \"02:00-04:00\"")]
    Format(String),
    #[error("window {window:?}: {time:?} is not a time of day from 00:00 to 23:59")]
    Time { window: String, time: String },
    #[error("window {0:?} starts when it ends; leave window out to allow any time")]
    Empty(String),
}

/// A daily window in UTC: `[start, end)` in minutes after midnight, wrapping
/// midnight when `end < start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Window {
    pub start_min: u32,
    pub end_min: u32,
}

impl TryFrom<String> for Window {
    type Error = WindowError;
    fn try_from(s: String) -> Result<Window, WindowError> {
        s.parse()
    }
}

impl std::str::FromStr for Window {
    type Err = WindowError;
    fn from_str(s: &str) -> Result<Window, WindowError> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| WindowError::Format(s.into()))?;
        let minute = |t: &str| -> Result<u32, WindowError> {
            let t = t.trim();
            let (h, m) = t
                .split_once(':')
                .ok_or_else(|| WindowError::Format(s.into()))?;
            let bad = || WindowError::Time {
                window: s.into(),
                time: t.into(),
            };
            if h.len() != 2 || m.len() != 2 {
                return Err(bad());
            }
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let w = Window {
            start_min: minute(a)?,
            end_min: minute(b)?,
        };
        if w.start_min == w.end_min {
            return Err(WindowError::Empty(s.into()));
        }
        Ok(w)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02} UTC",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

impl Window {
    /// Whether `t` (Unix milliseconds) falls inside the window.
    pub fn contains(&self, t: i64) -> bool {
        let tod = t.rem_euclid(DAY_MS);
        let (s, e) = (
            i64::from(self.start_min) * 60_000,
            i64::from(self.end_min) * 60_000,
        );
        if s < e {
            s <= tod && tod < e
        } else {
            tod >= s || tod < e
        }
    }

    /// The earliest time at or after `t` inside the window: `t` itself if it
    /// is inside, else the next start.
    pub fn earliest(&self, t: i64) -> i64 {
        if self.contains(t) {
            return t;
        }
        let start = t - t.rem_euclid(DAY_MS) + i64::from(self.start_min) * 60_000;
        if start >= t {
            start
        } else {
            start + DAY_MS
        }
    }
}

/// The earliest time at or after `from` that `window` allows (any time when
/// `None`) and that is before `deadline` (no limit when `None`).
pub fn schedule_time(window: Option<&Window>, from: i64, deadline: Option<i64>) -> Option<i64> {
    let t = window.map_or(from, |w| w.earliest(from));
    match deadline {
        Some(d) if t >= d => None,
        _ => Some(t),
    }
}

/// One event as handled by the leader: (server, code, start).
pub type EventKey = (String, String, i64);

/// What the controller does about a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// `auto_switchover` is off: the operator decides.
    Manual,
    /// The leader schedules the switchover for this time.
    At(i64),
    /// A switchover is scheduled already (by whoever scheduled it).
    Scheduled { at_unix_ms: i64, by: String },
    /// No switchover is scheduled, and why.
    Not(String),
}

/// A switchover the cloud's signals call for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The serving server the signal is about.
    pub server: String,
    /// The standby to switch over to.
    pub to: String,
    /// The event's code, or [`IMPAIRED`].
    pub code: String,
    /// When the event may start (0 for a failed status check).
    pub not_before_unix_ms: i64,
    /// Switch over before this; `None`: as soon as possible.
    pub before_unix_ms: Option<i64>,
    /// `switchover to <standby> before <time>: <event>`.
    pub reason: String,
    pub schedule: Schedule,
}

impl Proposal {
    /// The key the leader remembers a handled event by.
    pub fn key(&self) -> EventKey {
        (
            self.server.clone(),
            self.code.clone(),
            self.not_before_unix_ms,
        )
    }

    /// The audit identity of a switchover the controller schedules for it.
    pub fn identity(&self) -> String {
        format!("cloud signal ({})", self.code)
    }

    /// The proposal and what is done about it, in one line (status, explain).
    pub fn line(&self, pair_id: &str) -> String {
        let what = match &self.schedule {
            Schedule::Manual => format!(
                "run `understudyctl switchover {pair_id}` (or set [signals] auto_switchover = true)"
            ),
            Schedule::At(t) => format!("the controller schedules it for {}", fmt_unix_ms(*t)),
            Schedule::Scheduled { at_unix_ms, by } => {
                format!("scheduled for {} by {by}", fmt_unix_ms(*at_unix_ms))
            }
            Schedule::Not(why) => format!("not scheduled: {why}"),
        };
        format!("{}; {what}", self.reason)
    }
}

/// `system-maintenance[ on SERVER][ from START], until END ("description")`.
fn describe(e: &ScheduledEvent, on: Option<&str>, from: bool) -> String {
    let mut s = e.code.clone();
    if let Some(server) = on {
        s.push_str(&format!(" on {server}"));
    }
    if from {
        s.push_str(&format!(" from {}", fmt_unix_ms(e.not_before_unix_ms)));
    }
    if let Some(end) = e.not_after_unix_ms {
        s.push_str(&format!(", until {}", fmt_unix_ms(end)));
    }
    if !e.description.is_empty() {
        s.push_str(&format!(" ({:?})", e.description));
    }
    s
}

/// The events of `h` that are not over at `now`, earliest first.
fn live_events(h: &InstanceHealth, now: i64) -> Vec<&ScheduledEvent> {
    h.pending_events()
        .into_iter()
        .filter(|e| e.not_after_unix_ms.is_none_or(|end| end > now))
        .collect()
}

/// What the cloud says of the standby that makes it a poor place to move to.
fn standby_trouble(standby: &str, h: &InstanceHealth, now: i64) -> Option<String> {
    if h.system_status == status::IMPAIRED {
        return Some(format!("{standby}'s own system status check is impaired"));
    }
    live_events(h, now).first().map(|e| {
        format!(
            "{standby} has its own {} from {}",
            e.code,
            fmt_unix_ms(e.not_before_unix_ms)
        )
    })
}

/// The switchover the serving server's health calls for, if any (pure).
///
/// An impaired system status check proposes a switchover as soon as possible;
/// else the earliest event that is not over proposes one before it starts.
/// Nothing is proposed while a plan is in flight. `standby_view` is the
/// standby's agent view: a switchover needs it UpToDate and in sync.
pub fn proposal(
    pair: &PairRecord,
    serving: &InstanceHealth,
    standby: Option<&InstanceHealth>,
    standby_view: &AgentView,
    now: i64,
    cfg: &SignalsConfig,
) -> Option<Proposal> {
    if pair.failover.is_some() {
        return None;
    }
    let (server, to) = (pair.serving_id(), pair.standby_id());
    let (code, not_before, before, what) = if serving.system_status == status::IMPAIRED {
        (
            IMPAIRED.to_string(),
            0,
            None,
            format!("{server}'s system status check is impaired (its host's hardware or network is failing)"),
        )
    } else {
        let e = *live_events(serving, now).first()?;
        (
            e.code.clone(),
            e.not_before_unix_ms,
            Some(e.not_before_unix_ms),
            describe(e, Some(server), false),
        )
    };
    let reason = match before {
        Some(t) if t > now => format!("switchover to {to} before {}: {what}", fmt_unix_ms(t)),
        Some(_) => format!("switchover to {to} now (the event is due): {what}"),
        None => format!("switchover to {to} as soon as possible: {what}"),
    };
    let schedule = if let Some(s) = &pair.ops.scheduled {
        Schedule::Scheduled {
            at_unix_ms: s.at_unix_ms,
            by: s.by.clone(),
        }
    } else if let Err(why) = switchover_ready(to, standby_view) {
        Schedule::Not(format!("{why}; a switchover waits for it"))
    } else if let Some(why) = standby.and_then(|h| standby_trouble(to, h, now)) {
        Schedule::Not(format!(
            "{why}: switch over by hand if moving there is still better"
        ))
    } else if !cfg.auto_switchover {
        Schedule::Manual
    } else if pair.state != PairState::Healthy {
        Schedule::Not(format!(
            "pair {} is {}, not Healthy: no automatic switchover",
            pair.spec.id, pair.state
        ))
    } else {
        // A second from now: a scheduled time must be in the future when committed.
        match schedule_time(cfg.window.as_ref(), now + 1000, before) {
            Some(t) => Schedule::At(t),
            None => Schedule::Not(format!(
                "no time inside the window {} before {}; switch over by hand",
                cfg.window.map(|w| w.to_string()).unwrap_or_default(),
                before.map(fmt_unix_ms).unwrap_or_default()
            )),
        }
    };
    Some(Proposal {
        server: server.to_string(),
        to: to.to_string(),
        code,
        not_before_unix_ms: not_before,
        before_unix_ms: before,
        reason,
        schedule,
    })
}

/// One server's health as the leader last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub at_unix_ms: i64,
    /// The provider's answer, or why it could not be read.
    pub health: Result<InstanceHealth, String>,
}

/// Leader memory: the latest health of each server and the events handled.
#[derive(Debug, Default)]
pub struct Signals {
    health: Mutex<IdMap<Observed>>,
    handled: Mutex<HashSet<EventKey>>,
}

impl Signals {
    /// Replace every server's health with a new poll's.
    pub fn set_all(&self, all: IdMap<Observed>) {
        *self.health.lock().unwrap() = all;
    }

    /// Set one server's health.
    pub fn set(&self, server: &str, o: Observed) {
        self.health.lock().unwrap().insert(server.to_string(), o);
    }

    /// A server's latest health, if it was read.
    pub fn get(&self, server: &str) -> Option<Observed> {
        self.health.lock().unwrap().get(server).cloned()
    }

    /// Whether this node has scheduled a switchover for this event already.
    pub fn handled(&self, key: &EventKey) -> bool {
        self.handled.lock().unwrap().contains(key)
    }

    /// Remember that a switchover was scheduled (or refused) for this event.
    pub fn mark_handled(&self, key: EventKey) {
        self.handled.lock().unwrap().insert(key);
    }

    /// The proposal for `pair` from the latest health; `Err`: the serving
    /// server's health could not be read.
    pub fn proposal_for(
        &self,
        pair: &PairRecord,
        standby_view: &AgentView,
        now: i64,
        cfg: &SignalsConfig,
    ) -> Result<Option<Proposal>, String> {
        // Read in place, under one lock: the leader asks this of every pair
        // it examines.
        let mut p = {
            let health = self.health.lock().unwrap();
            let Some(serving) = health.get(pair.serving_id()) else {
                return Ok(None);
            };
            let serving = serving.health.as_ref().map_err(|e| e.clone())?;
            let standby = health
                .get(pair.standby_id())
                .and_then(|o| o.health.as_ref().ok());
            proposal(pair, serving, standby, standby_view, now, cfg)
        };
        if let Some(p) = p.as_mut().filter(|p| matches!(p.schedule, Schedule::At(_))) {
            if self.handled(&p.key()) {
                p.schedule = Schedule::Not(
                    "this controller scheduled it once and it was cancelled or refused; switch over by hand".into(),
                );
            }
        }
        Ok(p)
    }

    /// The status line (`CLOUD SIGNAL:`): the proposal, a failed read, or an
    /// event on the standby; empty when the cloud says nothing.
    pub fn status_line(
        &self,
        pair: &PairRecord,
        standby_view: &AgentView,
        now: i64,
        cfg: &SignalsConfig,
    ) -> String {
        let proposal = self.proposal_for(pair, standby_view, now, cfg);
        self.line(pair, &proposal, now)
    }

    /// [`Signals::status_line`] from the [`Signals::proposal_for`] already
    /// read.
    pub fn line(
        &self,
        pair: &PairRecord,
        proposal: &Result<Option<Proposal>, String>,
        now: i64,
    ) -> String {
        match proposal {
            Ok(Some(p)) => p.line(&pair.spec.id),
            Err(e) => format!(
                "cannot read {}'s instance health: {e}",
                pair.serving_id()
            ),
            Ok(None) => self
                .health
                .lock()
                .unwrap()
                .get(pair.standby_id())
                .and_then(|o| o.health.as_ref().ok())
                .and_then(|h| standby_trouble(pair.standby_id(), h, now))
                .map(|why| format!("{why} (the standby: no switchover needed; replace it or expect its DRBD to disconnect)"))
                .unwrap_or_default(),
        }
    }

    /// `explain`'s inputs: each server's health as last read, and the proposal.
    pub fn explain_lines(
        &self,
        pair: &PairRecord,
        standby_view: &AgentView,
        now: i64,
        cfg: &SignalsConfig,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (id, role) in [
            (pair.serving_id(), "serving"),
            (pair.standby_id(), "standby"),
        ] {
            let line = match self.get(id) {
                None => "not read yet".to_string(),
                Some(o) => {
                    let age = (now - o.at_unix_ms).max(0);
                    match o.health {
                        Err(e) => format!("cannot be read ({e}), {age} ms ago"),
                        Ok(h) if !h.is_reported() => {
                            format!("not reported by this cloud (read {age} ms ago)")
                        }
                        Ok(h) => {
                            let events = live_events(&h, now);
                            format!(
                                "system {}, instance {}, {} (read {age} ms ago)",
                                h.system_status,
                                h.instance_status,
                                if events.is_empty() {
                                    "no event scheduled".to_string()
                                } else {
                                    events
                                        .iter()
                                        .map(|e| describe(e, None, true))
                                        .collect::<Vec<_>>()
                                        .join("; ")
                                }
                            )
                        }
                    }
                }
            };
            out.push(format!("cloud health of {role} {id}: {line}"));
        }
        let signal = self.status_line(pair, standby_view, now, cfg);
        out.push(format!(
            "cloud signal: {}",
            if signal.is_empty() {
                "none: no switchover proposed".to_string()
            } else {
                signal
            }
        ));
        out
    }
}

/// Read the health of `servers`, each call bounded by `timeout`.
pub async fn poll(
    cloud: &dyn Cloud,
    servers: &[CloudServer],
    now: impl Fn() -> i64,
    timeout: Duration,
) -> IdMap<Observed> {
    let mut out = IdMap::default();
    for s in servers {
        let health = match tokio::time::timeout(timeout, cloud.instance_health(s)).await {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "{} did not answer within {} ms",
                cloud.name(),
                timeout.as_millis()
            )),
        };
        if let Err(e) = &health {
            tracing::warn!(server = %s.server_id, error = %e, "cloud signals: cannot read instance health");
        }
        out.insert(
            s.server_id.clone(),
            Observed {
                at_unix_ms: now(),
                health,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ScheduledSwitchover;
    use crate::testutil::{pair, sum};
    use understudy_cloud::health::event_codes;

    /// 2030-01-01 00:00 UTC.
    const MIDNIGHT: i64 = 1_893_456_000_000;
    const HOUR: i64 = 3_600_000;

    fn w(s: &str) -> Window {
        s.parse().unwrap()
    }

    #[test]
    fn windows_parse_and_say_what_is_wrong() {
        assert_eq!(
            w("02:00-04:30"),
            Window {
                start_min: 120,
                end_min: 270
            }
        );
        assert_eq!(w("22:00-02:00").to_string(), "22:00-02:00 UTC");
        for (bad, want) in [
            ("0200-0400", "is not \"HH:MM-HH:MM\""),
            ("02:00", "is not \"HH:MM-HH:MM\""),
            ("24:00-01:00", "\"24:00\" is not a time of day"),
            ("02:60-03:00", "\"02:60\" is not a time of day"),
            ("2:00-03:00", "\"2:00\" is not a time of day"),
            ("03:00-03:00", "starts when it ends"),
        ] {
            let e = bad.parse::<Window>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn window_arithmetic_within_a_day_and_across_midnight() {
        let night = w("02:00-04:00");
        assert!(night.contains(MIDNIGHT + 2 * HOUR));
        assert!(night.contains(MIDNIGHT + 4 * HOUR - 1));
        assert!(!night.contains(MIDNIGHT + 4 * HOUR), "end excluded");
        assert!(!night.contains(MIDNIGHT + HOUR));
        // Inside: now. Before it: today's start. After it: tomorrow's.
        assert_eq!(night.earliest(MIDNIGHT + 3 * HOUR), MIDNIGHT + 3 * HOUR);
        assert_eq!(night.earliest(MIDNIGHT + HOUR), MIDNIGHT + 2 * HOUR);
        assert_eq!(night.earliest(MIDNIGHT + 5 * HOUR), MIDNIGHT + 26 * HOUR);
        let wrap = w("22:00-02:00");
        assert!(wrap.contains(MIDNIGHT + 23 * HOUR));
        assert!(wrap.contains(MIDNIGHT + HOUR));
        assert!(!wrap.contains(MIDNIGHT + 2 * HOUR));
        assert!(!wrap.contains(MIDNIGHT + 12 * HOUR));
        assert_eq!(wrap.earliest(MIDNIGHT + HOUR), MIDNIGHT + HOUR);
        assert_eq!(wrap.earliest(MIDNIGHT + 12 * HOUR), MIDNIGHT + 22 * HOUR);
        // Before 1970 too (rem_euclid).
        assert!(night.contains(-DAY_MS + 3 * HOUR));
    }

    #[test]
    fn schedule_time_is_the_earliest_allowed_time_before_the_deadline() {
        let night = w("02:00-04:00");
        let now = MIDNIGHT + 10 * HOUR;
        assert_eq!(schedule_time(None, now, None), Some(now));
        assert_eq!(schedule_time(None, now, Some(now + 1)), Some(now));
        assert_eq!(schedule_time(None, now, Some(now)), None);
        // Tonight's window (02:00 tomorrow) is before an event in two days...
        assert_eq!(
            schedule_time(Some(&night), now, Some(now + 48 * HOUR)),
            Some(MIDNIGHT + 26 * HOUR)
        );
        // ...but not before one at 01:00 tomorrow.
        assert_eq!(
            schedule_time(Some(&night), now, Some(MIDNIGHT + 25 * HOUR)),
            None
        );
        // Without a deadline (a failed status check): the next window.
        assert_eq!(
            schedule_time(Some(&night), now, None),
            Some(MIDNIGHT + 26 * HOUR)
        );
    }

    fn ready() -> AgentView {
        AgentView {
            connected: true,
            drbd: Some(sum(
                "Secondary",
                "UpToDate",
                "Connected",
                "Established",
                "UpToDate",
                Some(0),
            )),
            ..Default::default()
        }
    }

    fn event(code: &str, at: i64) -> ScheduledEvent {
        ScheduledEvent {
            code: code.into(),
            description: "Scheduled host maintenance".into(),
            not_before_unix_ms: at,
            not_after_unix_ms: Some(at + 2 * HOUR),
        }
    }

    fn with(events: Vec<ScheduledEvent>) -> InstanceHealth {
        InstanceHealth {
            events,
            ..InstanceHealth::ok()
        }
    }

    fn auto(window: Option<&str>) -> SignalsConfig {
        SignalsConfig {
            auto_switchover: true,
            window: window.map(w),
            ..Default::default()
        }
    }

    const NOW: i64 = MIDNIGHT + 10 * HOUR;

    #[test]
    fn an_event_on_the_serving_server_proposes_a_switchover_before_it() {
        let p = crate::testutil::pair(PairState::Healthy);
        let h = with(vec![event(event_codes::SYSTEM_MAINTENANCE, NOW + 5 * HOUR)]);
        let got = proposal(&p, &h, None, &ready(), NOW, &SignalsConfig::default()).unwrap();
        assert_eq!(got.server, "a");
        assert_eq!(got.to, "b");
        assert_eq!(got.code, "system-maintenance");
        assert_eq!(got.before_unix_ms, Some(NOW + 5 * HOUR));
        assert_eq!(got.schedule, Schedule::Manual);
        assert!(
            got.reason.starts_with(
                "switchover to b before 2030-01-01 15:00:00.000 UTC: system-maintenance"
            ),
            "{}",
            got.reason
        );
        assert!(
            got.line("p").contains("understudyctl switchover p"),
            "{}",
            got.line("p")
        );
        assert_eq!(got.identity(), "cloud signal (system-maintenance)");
        // Every code proposes; the earliest event wins.
        for code in event_codes::ALL {
            let h = with(vec![
                event(event_codes::INSTANCE_STOP, NOW + 9 * HOUR),
                event(code, NOW + HOUR),
            ]);
            let got = proposal(&p, &h, None, &ready(), NOW, &auto(None)).unwrap();
            assert_eq!(got.code, code);
            assert_eq!(got.schedule, Schedule::At(NOW + 1000));
        }
    }

    #[test]
    fn nothing_is_proposed_for_a_healthy_server_events_that_are_over_or_a_plan_in_flight() {
        let p = pair(PairState::Healthy);
        let cfg = auto(None);
        assert_eq!(
            proposal(&p, &InstanceHealth::ok(), None, &ready(), NOW, &cfg),
            None
        );
        assert_eq!(
            proposal(&p, &InstanceHealth::unreported(), None, &ready(), NOW, &cfg),
            None
        );
        let mut done = event(event_codes::INSTANCE_REBOOT, NOW - HOUR);
        done.description = "[Completed] reboot".into();
        let mut past = event(event_codes::SYSTEM_REBOOT, NOW - 3 * HOUR);
        past.not_after_unix_ms = Some(NOW - HOUR);
        assert_eq!(
            proposal(&p, &with(vec![done, past]), None, &ready(), NOW, &cfg),
            None
        );
        // An event already due (started, not over) still proposes, now.
        let due = with(vec![event(event_codes::INSTANCE_RETIREMENT, NOW - 60_000)]);
        let got = proposal(&p, &due, None, &ready(), NOW, &SignalsConfig::default()).unwrap();
        assert!(
            got.reason.starts_with("switchover to b now"),
            "{}",
            got.reason
        );
        let mut busy = pair(PairState::SwitchingOver);
        busy.failover = Some(crate::state::FailoverPlan {
            epoch: 4,
            from: "a".into(),
            to: "b".into(),
            reason: "x".into(),
            automatic: false,
            started_unix_ms: NOW,
            steps: vec![],
            force: false,
        });
        let h = with(vec![event(event_codes::SYSTEM_MAINTENANCE, NOW + HOUR)]);
        assert_eq!(proposal(&busy, &h, None, &ready(), NOW, &cfg), None);
        // The standby's event proposes nothing by itself.
        assert_eq!(
            proposal(&p, &InstanceHealth::ok(), Some(&h), &ready(), NOW, &cfg),
            None
        );
    }

    #[test]
    fn an_impaired_host_proposes_a_switchover_as_soon_as_the_window_allows() {
        let p = pair(PairState::Healthy);
        let h = InstanceHealth {
            system_status: "impaired".into(),
            ..InstanceHealth::ok()
        };
        let got = proposal(&p, &h, None, &ready(), NOW, &auto(Some("02:00-04:00"))).unwrap();
        assert_eq!(got.code, IMPAIRED);
        assert_eq!(got.before_unix_ms, None);
        assert_eq!(got.schedule, Schedule::At(MIDNIGHT + 26 * HOUR));
        assert!(got.reason.contains("as soon as possible"), "{}", got.reason);
        assert!(got.reason.contains("system status check is impaired"));
    }

    #[test]
    fn never_scheduled_without_an_in_sync_standby_a_safe_standby_or_a_window_before_the_event() {
        let p = pair(PairState::Healthy);
        let h = with(vec![event(
            event_codes::INSTANCE_RETIREMENT,
            NOW + 5 * HOUR,
        )]);
        // Resyncing standby: proposed, not scheduled, and says why.
        let mut resyncing = ready();
        resyncing.drbd = Some(sum(
            "Secondary",
            "Inconsistent",
            "Connected",
            "SyncTarget",
            "UpToDate",
            Some(4096),
        ));
        let got = proposal(&p, &h, None, &resyncing, NOW, &auto(None)).unwrap();
        let Schedule::Not(why) = &got.schedule else {
            panic!("{got:?}")
        };
        assert!(why.contains("not UpToDate and in sync"), "{why}");
        assert!(
            got.line("p").contains("not scheduled: b is Inconsistent"),
            "{}",
            got.line("p")
        );
        // Even with auto_switchover off, the operator learns the standby is not ready.
        let got = proposal(&p, &h, None, &resyncing, NOW, &SignalsConfig::default()).unwrap();
        assert!(matches!(got.schedule, Schedule::Not(_)));
        // A standby with its own event or a failing host.
        let standby = with(vec![event(event_codes::SYSTEM_REBOOT, NOW + 7 * HOUR)]);
        let got = proposal(&p, &h, Some(&standby), &ready(), NOW, &auto(None)).unwrap();
        let Schedule::Not(why) = &got.schedule else {
            panic!("{got:?}")
        };
        assert!(why.contains("b has its own system-reboot"), "{why}");
        // The window opens after the event starts (tomorrow 02:00 > 15:00 today).
        let got = proposal(&p, &h, None, &ready(), NOW, &auto(Some("02:00-04:00"))).unwrap();
        let Schedule::Not(why) = &got.schedule else {
            panic!("{got:?}")
        };
        assert!(
            why.contains("no time inside the window 02:00-04:00 UTC before 2030-01-01 15:00"),
            "{why}"
        );
        // A window that opens before it: scheduled at its start.
        let got = proposal(&p, &h, None, &ready(), NOW, &auto(Some("12:00-13:00"))).unwrap();
        assert_eq!(got.schedule, Schedule::At(MIDNIGHT + 12 * HOUR));
        // Paused (or anything but Healthy): no automatic action.
        for state in [PairState::Paused, PairState::Blocked, PairState::Suspect] {
            let got = proposal(&pair(state), &h, None, &ready(), NOW, &auto(None)).unwrap();
            assert!(
                matches!(&got.schedule, Schedule::Not(w) if w.contains(&format!("is {state}, not Healthy"))),
                "{got:?}"
            );
        }
        // Already scheduled (by an operator or a previous leader): shown, not again.
        let mut sch = pair(PairState::Healthy);
        sch.ops.scheduled = Some(ScheduledSwitchover {
            at_unix_ms: NOW + HOUR,
            to: "b".into(),
            by: "cloud signal (instance-retirement)".into(),
        });
        let got = proposal(&sch, &h, None, &ready(), NOW, &auto(None)).unwrap();
        assert_eq!(
            got.schedule,
            Schedule::Scheduled {
                at_unix_ms: NOW + HOUR,
                by: "cloud signal (instance-retirement)".into()
            }
        );
    }

    #[test]
    fn leader_memory_handles_an_event_once_and_reports_read_errors() {
        let s = Signals::default();
        let p = pair(PairState::Healthy);
        let cfg = auto(None);
        assert_eq!(s.proposal_for(&p, &ready(), NOW, &cfg), Ok(None));
        assert_eq!(s.status_line(&p, &ready(), NOW, &cfg), "");
        s.set(
            "a",
            Observed {
                at_unix_ms: NOW,
                health: Ok(with(vec![event(
                    event_codes::SYSTEM_MAINTENANCE,
                    NOW + HOUR,
                )])),
            },
        );
        let got = s.proposal_for(&p, &ready(), NOW, &cfg).unwrap().unwrap();
        assert_eq!(got.schedule, Schedule::At(NOW + 1000));
        s.mark_handled(got.key());
        let again = s.proposal_for(&p, &ready(), NOW, &cfg).unwrap().unwrap();
        assert!(matches!(&again.schedule, Schedule::Not(w) if w.contains("scheduled it once")));
        let lines = s.explain_lines(&p, &ready(), NOW + 500, &cfg);
        assert!(
            lines[0].starts_with(
                "cloud health of serving a: system ok, instance ok, system-maintenance"
            ),
            "{lines:?}"
        );
        assert!(lines[0].ends_with("(read 500 ms ago)"), "{lines:?}");
        assert_eq!(lines[1], "cloud health of standby b: not read yet");
        assert!(
            lines[2].starts_with("cloud signal: switchover to b before"),
            "{lines:?}"
        );
        s.set(
            "a",
            Observed {
                at_unix_ms: NOW,
                health: Err("ec2: DescribeInstanceStatus: UnauthorizedOperation".into()),
            },
        );
        assert!(s
            .status_line(&p, &ready(), NOW, &cfg)
            .contains("cannot read a's instance health: ec2: DescribeInstanceStatus"));
        // An event on the standby only: said, without a proposal.
        s.set(
            "a",
            Observed {
                at_unix_ms: NOW,
                health: Ok(InstanceHealth::ok()),
            },
        );
        s.set(
            "b",
            Observed {
                at_unix_ms: NOW,
                health: Ok(with(vec![event(
                    event_codes::INSTANCE_RETIREMENT,
                    NOW + HOUR,
                )])),
            },
        );
        let line = s.status_line(&p, &ready(), NOW, &cfg);
        assert!(
            line.starts_with("b has its own instance-retirement"),
            "{line}"
        );
        assert!(line.contains("no switchover needed"), "{line}");
    }

    #[tokio::test]
    async fn a_poll_reads_every_server_and_bounds_each_call() {
        use understudy_cloud::faulty::{FaultyCloud, Op};
        use understudy_cloud::strict::StrictCloud;
        let srv = |id: &str| CloudServer {
            server_id: id.into(),
            instance_id: format!("i-{id}"),
            interface_id: format!("eni-{id}"),
            zone: "z".into(),
        };
        let cloud = FaultyCloud::new(StrictCloud::default());
        cloud.inner().add_server(&srv("a"));
        cloud.inner().add_server(&srv("b"));
        cloud
            .inner()
            .inject_event("i-a", event(event_codes::INSTANCE_RETIREMENT, NOW + HOUR));
        let servers = [srv("a"), srv("b"), srv("gone")];
        let got = poll(&cloud, &servers, || NOW, Duration::from_millis(200)).await;
        assert_eq!(got["a"].health.as_ref().unwrap().events.len(), 1);
        assert_eq!(got["b"].health, Ok(InstanceHealth::ok()));
        assert!(got["gone"]
            .health
            .as_ref()
            .unwrap_err()
            .contains("not found"));
        assert_eq!(got["a"].at_unix_ms, NOW);
        // A hung cloud: each call ends at the bound, as an error.
        cloud.hang(Op::InstanceHealth);
        let t0 = std::time::Instant::now();
        let got = poll(&cloud, &servers[..1], || NOW, Duration::from_millis(200)).await;
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(
            got["a"].health,
            Err("strict did not answer within 200 ms".into())
        );
    }

    #[test]
    fn config_defaults_and_bad_values() {
        #[derive(Deserialize)]
        struct F {
            signals: SignalsConfig,
        }
        let f: F = toml::from_str("[signals]\n").unwrap();
        assert_eq!(f.signals, SignalsConfig::default());
        assert_eq!(f.signals.poll_ms, 60_000);
        let f: F = toml::from_str(
            "[signals]\npoll_ms = 500\nauto_switchover = true\nwindow = \"22:30-01:00\"\n",
        )
        .unwrap();
        assert_eq!(f.signals.window, Some(w("22:30-01:00")));
        assert!(f.signals.auto_switchover);
        let e = toml::from_str::<F>("[signals]\nwindow = \"2-4\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not \"HH:MM-HH:MM\""), "{e}");
        let e = toml::from_str::<F>("[signals]\nauto = true\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
        let zero = SignalsConfig {
            poll_ms: 0,
            ..Default::default()
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .contains("poll_ms must be above 0"));
    }
}
