//! The failure detector: what to do with a pair now, as a pure function.
//!
//! [`decide`] takes the pair's replicated record, plain-data views of the agent of
//! the server holding the primary role ("serving") and of the other one
//! ("standby"), the wall clock and the configuration. It returns one [`Action`] and,
//! always, the reason for it as text, including why it does nothing. No I/O, no
//! clock of its own: every case is a unit test (see the table test below).
//!
//! The rules it implements:
//! - **S2, two witnesses.** A failover starts only when the serving agent has been
//!   silent for `primary_silence_ms` *and* the standby's DRBD has reported its
//!   connection to the serving server lost for `peer_loss_ms`. Either alone moves
//!   a `Healthy` pair to `Suspect` with an alert, never to a failover.
//! - **S1, fresh data only.** The standby is promoted automatically only if its disk
//!   is `UpToDate` now and its last report while still connected showed it in sync
//!   (Connected, Established, peer UpToDate, out-of-sync 0). Anything else, including
//!   an unknown out-of-sync, blocks the pair with the reason.
//! - **S5, one at a time, no flapping.** A pair with a plan in flight is only ever
//!   resumed. After an automatic failover, another one within `flap_holdoff_ms`
//!   blocks the pair unless an operator acknowledged.
//! - `Paused` and `Blocked` pairs get no automatic action.
//! - **S10, stand down.** A reachable standby that reports any serving state (DRBD
//!   Primary, mounted, exporting, the client IP) outside a failover plan is stood
//!   down before anything else is decided: release the IP, unexport, unmount,
//!   demote, then reconnect DRBD discarding its data (see [`stand_down_steps`]).

use crate::observe::{backup_in_sync, observe, serving_state, AgentView, Observation};
use crate::state::{PairRecord, PairState, StandDownStep, Step};

/// Detector timings, in milliseconds.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Witness 1: the serving server's agent silent this long.
    pub primary_silence_ms: u64,
    /// Witness 2: the standby's DRBD connection to it lost this long.
    pub peer_loss_ms: u64,
    /// An agent silent this long is unreachable (alerts, standby reachability).
    pub agent_timeout_ms: u64,
    /// Hold-off after an automatic failover (S5).
    pub flap_holdoff_ms: u64,
    /// S1: a standby whose replication was lost while the serving server was
    /// still heard from more than this long afterwards is outdated (the serving
    /// server may have acknowledged writes it does not have).
    pub outdate_tolerance_ms: u64,
}

impl DetectorConfig {
    /// Check the timings against each other and the agents' heartbeat.
    pub fn validate(&self, agent_heartbeat_ms: u64) -> Result<(), String> {
        if self.agent_timeout_ms < agent_heartbeat_ms * 2 {
            return Err(format!(
                "detector: agent_timeout_ms ({}) must be at least twice [timing] agent_heartbeat_ms ({agent_heartbeat_ms}), or one late heartbeat makes an agent unreachable",
                self.agent_timeout_ms
            ));
        }
        if self.primary_silence_ms < agent_heartbeat_ms * 3 {
            return Err(format!(
                "detector: primary_silence_ms ({}) must be at least three agent heartbeats ({} ms), or jitter fails a healthy server over",
                self.primary_silence_ms,
                agent_heartbeat_ms * 3
            ));
        }
        if self.peer_loss_ms == 0 {
            return Err("detector: peer_loss_ms must be above 0".into());
        }
        if self.outdate_tolerance_ms < agent_heartbeat_ms
            || self.outdate_tolerance_ms >= self.primary_silence_ms
        {
            return Err(format!(
                "detector: outdate_tolerance_ms ({}) must be at least one agent heartbeat ({agent_heartbeat_ms} ms) and below primary_silence_ms ({})",
                self.outdate_tolerance_ms, self.primary_silence_ms
            ));
        }
        Ok(())
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            primary_silence_ms: 1000,
            peer_loss_ms: 500,
            agent_timeout_ms: 1000,
            flap_holdoff_ms: 10 * 60 * 1000,
            outdate_tolerance_ms: 300,
        }
    }
}

/// What the leader should do with the pair.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing (the reason says why).
    Nothing,
    /// Move the pair to this monitoring state.
    SetState(PairState),
    /// Start an automatic failover from `from` to `to`.
    StartFailover { from: String, to: String },
    /// Refuse automatic action: the pair goes `Blocked`.
    Block,
    /// A plan is in flight: run its next step.
    ResumePlan,
    /// The serving server holds the DRBD primary role but does not serve yet
    /// (bring-up, or an agent restart): run these steps on it, no fencing needed.
    Serve(Vec<Step>),
    /// S10: the standby serves (or its DRBD must reconnect after serving): run
    /// these steps, in order, with the pair's current epoch. All on the standby
    /// except those of [`StandDownStep::on_serving`], on the serving server.
    StandDown(Vec<StandDownStep>),
    /// S1: commit that the standby `server` is outdated: it lost replication at
    /// `lost_peer_unix_ms` while the serving server was alive at
    /// `primary_alive_unix_ms`.
    MarkOutdated {
        server: String,
        lost_peer_unix_ms: i64,
        primary_alive_unix_ms: i64,
    },
    /// S1: a report received after the mark shows the marked standby connected
    /// and in sync again (DRBD resynchronised it): lift the mark.
    ClearOutdated { server: String, why: String },
    /// S1: the standby is marked outdated but its DRBD disk still says UpToDate:
    /// tell its agent to `drbdadm outdate` (as DRBD's fence-peer handler does).
    OutdateStandby(String),
}

/// S1: evidence that the standby lost replication while the serving server was
/// alive, from the live views: (lost at, serving alive at), in wall-clock ms.
/// Either side can show it: the standby's DRBD reporting its peer gone while the
/// serving agent is still heard from afterwards, or the serving server's own DRBD
/// (Primary) reporting the connection gone in a report sent after the loss.
pub fn replication_lost_while_serving(
    serving: &AgentView,
    standby: &AgentView,
    now_unix_ms: i64,
    cfg: &DetectorConfig,
) -> Option<(i64, i64)> {
    let silent = serving.silent_ms?;
    let alive_at = now_unix_ms - silent as i64;
    let standby_up = standby.reachable(cfg.agent_timeout_ms);
    let from_standby = standby
        .peer_lost_ms
        .filter(|_| standby_up)
        .filter(|lost| *lost > silent + cfg.outdate_tolerance_ms);
    let serving_primary = serving.drbd.as_ref().is_some_and(|d| d.role == "Primary");
    let from_serving = serving
        .peer_lost_ms
        .filter(|_| serving_primary)
        .filter(|lost| *lost > silent + cfg.outdate_tolerance_ms);
    let lost = from_standby.into_iter().chain(from_serving).max()?;
    Some((now_unix_ms - lost as i64, alive_at))
}

/// How much later than the mark a report must have been received to lift it:
/// covers the clock difference between the controller that marked and this one.
const CLEAR_MARGIN_MS: i64 = 1000;

/// S1: whether a report received after `mark` shows the standby connected and in
/// sync, from either side (the standby's own DRBD, or the serving Primary's view
/// of its peer: protocol C, nothing out of sync).
pub fn back_in_sync(
    mark: &crate::state::OutdatedMark,
    serving: &AgentView,
    standby: &AgentView,
    now_unix_ms: i64,
    cfg: &DetectorConfig,
) -> Option<String> {
    let fresh = |v: &AgentView| {
        v.reachable(cfg.agent_timeout_ms)
            && !v.stale_report
            && v.report_age_ms.is_some_and(|age| {
                now_unix_ms - age as i64 > mark.lost_peer_unix_ms + CLEAR_MARGIN_MS
            })
    };
    if fresh(standby) && standby.drbd.as_ref().is_some_and(backup_in_sync) {
        return Some(format!(
            "{} reports itself UpToDate, connected and in sync after the mark",
            mark.server
        ));
    }
    let primary_sees_it = serving.drbd.as_ref().is_some_and(|p| {
        p.role == "Primary"
            && p.connection == "Connected"
            && p.replication == "Established"
            && p.peer_disk == "UpToDate"
            && p.out_of_sync_bytes == Some(0)
    });
    (fresh(serving) && primary_sees_it).then(|| {
        format!(
            "the serving Primary reports {} UpToDate, connected, nothing out of sync, after the mark",
            mark.server
        )
    })
}

fn times(lost: i64, alive: i64) -> String {
    format!(
        "replication lost at {}, {:.1} s before {} was last heard from at {}",
        crate::state::fmt_unix_ms(lost),
        (alive - lost) as f64 / 1000.0,
        "the serving server",
        crate::state::fmt_unix_ms(alive)
    )
}

/// An action with its reason and the alerts that hold now.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
    pub alerts: Vec<String>,
}

fn ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v} ms"))
        .unwrap_or_else(|| "never".into())
}

/// S10: what it takes to stand the standby down and bring it back as a backup, in
/// order; empty when there is nothing to do. Pure.
///
/// - Only a reachable standby can be commanded; an unreachable one is an alert.
///   Only reports of the agents' current sessions count (`stale_report`).
/// - `ReleaseIp`, `UnexportNfs`, `Unmount` when it reports the client IP, exports,
///   a mount (only on an agent configured to serve: an observe-only agent cannot
///   act on them, the alert says it).
/// - `AnnounceServingIp` right after `ReleaseIp` when the serving server is
///   reachable and holds the client IP: its gratuitous ARP takes back clients
///   that resolved the address to the standby.
/// - `Demote` when it is DRBD Primary.
/// - `DiscardAndReconnect` when it was Primary (its data diverged from the serving
///   server's) or its DRBD is `StandAlone` (a split brain was detected), and only
///   if the serving server is reachable, Primary and UpToDate: its data is the one
///   kept.
/// - `ReconnectServing` when the serving server is reachable, Primary and
///   `StandAlone` (the split brain dropped its connection too) and the standby is,
///   or after these steps will be, a Secondary trying to connect.
/// - A stale standby (its highest epoch below `pair_epoch`) that is a DRBD
///   Secondary also gets `Demote`, a no-op there that carries the current epoch:
///   the agent persists it (S4), so commands of a deposed leader or of an earlier
///   epoch can no longer move it.
pub fn stand_down_steps(
    serving: &AgentView,
    standby: &AgentView,
    pair_epoch: u64,
    cfg: &DetectorConfig,
) -> Vec<StandDownStep> {
    let mut steps = Vec::new();
    // Only on what the agent reported on its current session: a reconnected
    // (maybe restarted) agent's previous report says nothing about it now.
    if !standby.reachable(cfg.agent_timeout_ms) || standby.stale_report {
        return steps;
    }
    let serving_current = serving.reachable(cfg.agent_timeout_ms) && !serving.stale_report;
    if let Some(h) = standby.host.as_ref().filter(|h| h.serving_managed) {
        if h.client_ip_present {
            steps.push(StandDownStep::ReleaseIp);
            let serving_holds =
                serving_current && serving.host.as_ref().is_some_and(|h| h.client_ip_present);
            if serving_holds {
                steps.push(StandDownStep::AnnounceServingIp);
            }
        }
        if !h.exports.is_empty() {
            steps.push(StandDownStep::UnexportNfs);
        }
        if h.mounted {
            steps.push(StandDownStep::Unmount);
        }
    }
    let b = standby.drbd.as_ref();
    let b_primary = b.is_some_and(|d| d.role == "Primary");
    let b_standalone = b.is_some_and(|d| d.connection == "StandAlone");
    let b_stale = standby.highest_epoch.is_some_and(|e| e < pair_epoch);
    if b_primary || (b_stale && b.is_some_and(|d| d.role == "Secondary")) {
        steps.push(StandDownStep::Demote);
    }
    let s = serving.drbd.as_ref().filter(|_| serving_current);
    let s_keeps = s.is_some_and(|d| d.role == "Primary" && d.disk == "UpToDate");
    let discard = (b_primary || b_standalone) && s_keeps;
    if discard {
        steps.push(StandDownStep::DiscardAndReconnect);
    }
    let b_trying = discard || (b.is_some() && !b_primary && !b_standalone);
    if s_keeps && s.is_some_and(|d| d.connection == "StandAlone") && b_trying {
        steps.push(StandDownStep::ReconnectServing);
    }
    steps
}

/// The two witnesses of S2 as [`decide`] reads them, with the evidence as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Witnesses {
    /// Witness 1: the serving agent silent for `primary_silence_ms`, on its
    /// session and to direct probes.
    pub primary_silent: bool,
    /// Witness 2: the reachable standby's DRBD peer connection lost for `peer_loss_ms`.
    pub peer_lost: bool,
    pub evidence: String,
}

/// The longest the leader's loop may leave a pair unexamined when nothing new
/// is heard from its agents, because time alone cannot change what it decides
/// before then: the pair is `Healthy`, or `Rebuilding` (its backup
/// resynchronising: at 10 000 pairs and a 40 s resync, a fifth of the pairs),
/// with nothing in flight or on a clock (no
/// plan, outdated mark, scheduled switchover, maintenance window, hold-off,
/// spare, rebuild or retired server to terminate), the decision is `Nothing`,
/// both agents are connected with their DRBD peer connected, and the silence
/// of each is below the detector's bounds by a margin. `None`: examine it on
/// every tick. At most `cap`. Any report, connect or disconnect of its agents
/// wakes the pair anyway (`Liveness::take_changed`); this only saves the
/// ticks, which at thousands of pairs were a third of the leader's CPU
/// (ARCHITECTURE.md, Scale).
pub fn calm_for(
    pair: &PairRecord,
    serving: &AgentView,
    standby: &AgentView,
    action: &Action,
    cfg: &DetectorConfig,
    cap: std::time::Duration,
) -> Option<std::time::Duration> {
    if *action != Action::Nothing || !settled(pair, cfg) {
        return None;
    }
    let mut silent = 0;
    for v in [serving, standby] {
        if !v.connected || v.peer_lost_ms.is_some() {
            return None;
        }
        silent = silent.max(v.silent_ms?);
    }
    calm_margin(silent, cfg, cap)
}

/// The silence half of [`calm_for`]: how long a pair whose agents are both
/// connected, the longer silent of them for `silent_ms`, stays calm. The
/// leader's loop also asks it alone when a calm pair's time is up and
/// nothing was heard of it but heartbeats (`sweep::Sweep`): only the
/// silence has moved since, so only the silence is read again.
pub fn calm_margin(
    silent_ms: u64,
    cfg: &DetectorConfig,
    cap: std::time::Duration,
) -> Option<std::time::Duration> {
    // The first silence bound any rule applies to agents whose peer is
    // connected: one agent unreachable, or the serving one silent (S2).
    let bound = cfg.agent_timeout_ms.min(cfg.primary_silence_ms);
    // Looked at again well before the silence can reach the bound (the
    // loop's tick is 50 ms; two of them spare).
    let margin = bound.checked_sub(silent_ms + CALM_SPARE_MS)?;
    (margin >= CALM_SPARE_MS).then(|| std::time::Duration::from_millis(margin).min(cap))
}

/// The record's half of [`calm_for`]: `Healthy` or `Rebuilding`, nothing in
/// flight or on a clock. A record changed since (an operator's switchover,
/// pause, maintenance window) is a new record, which the leader's loop looks
/// at on the next tick (`sweep::Sweep`).
pub fn settled(pair: &PairRecord, cfg: &DetectorConfig) -> bool {
    let r = &pair.redundancy;
    matches!(pair.state, PairState::Healthy | PairState::Rebuilding)
        && pair.failover.is_none()
        && pair.outdated.is_none()
        && pair.ops.scheduled.is_none()
        && pair.ops.maintenance.is_none()
        && !crate::holdoff::running(pair, cfg.flap_holdoff_ms)
        && r.spare.is_none()
        && r.rebuild.is_none()
        && r.retired.iter().all(|x| x.terminated)
}

/// What [`calm_for`] keeps between a pair's next look and the first silence
/// bound, and the shortest calm worth skipping ticks for.
const CALM_SPARE_MS: u64 = 100;

/// Read both witnesses (S2) from the views of the serving server `s_id` and the
/// standby `b_id`. A direct probe answered within `primary_silence_ms` means the
/// primary is not silent, whatever its session stream does (a stream can stay in
/// TCP back-off for seconds after a network blip).
pub fn witnesses(
    s_id: &str,
    b_id: &str,
    serving: &AgentView,
    standby: &AgentView,
    cfg: &DetectorConfig,
) -> Witnesses {
    let standby_up = standby.reachable(cfg.agent_timeout_ms);
    let probed = serving
        .probe_answered_ms
        .is_some_and(|p| p < cfg.primary_silence_ms);
    let primary_silent = !probed
        && serving
            .silent_ms
            .is_some_and(|s| s >= cfg.primary_silence_ms);
    let peer_lost = standby_up && standby.peer_lost_ms.is_some_and(|l| l >= cfg.peer_loss_ms);
    let probe = match serving.probe_answered_ms {
        Some(p) => format!(" (answered a direct probe {p} ms ago)"),
        None => String::new(),
    };
    Witnesses {
        primary_silent,
        peer_lost,
        evidence: format!(
            "{s_id}'s agent silent for {}{probe}; {b_id}'s DRBD peer connection lost for {}",
            ms(serving.silent_ms),
            ms(standby.peer_lost_ms)
        ),
    }
}

/// S1 on the standby's view: `Ok` if it is UpToDate now and was in sync at its
/// last report while connected, else what it was and is.
pub fn backup_fresh(standby: &AgentView) -> Result<(), String> {
    let now_ok = standby.drbd.as_ref().is_some_and(|b| b.disk == "UpToDate");
    let was_in_sync = standby.last_connected.as_ref().is_some_and(backup_in_sync);
    if now_ok && was_in_sync {
        return Ok(());
    }
    let now = standby
        .drbd
        .as_ref()
        .map(|b| format!("disk {}", b.disk))
        .unwrap_or_else(|| "no DRBD report".into());
    let before = match &standby.last_connected {
        Some(b) => format!(
            "{} {} peer-disk {} out-of-sync {}",
            b.disk,
            b.replication,
            b.peer_disk,
            b.out_of_sync_bytes
                .map(|v| format!("{v} B"))
                .unwrap_or_else(|| "unknown".into())
        ),
        None => "never seen connected by this leader".into(),
    };
    Err(format!("{now} now, and before the loss it was {before}"))
}

/// Confirm's re-check of a committed plan from `from` to `to`: both witnesses
/// (S2) and a fresh backup (S1) must still hold, as when [`decide`] started it.
/// `Ok` with the evidence, or `Err` with the check that no longer holds.
pub fn failover_still_justified(
    from: &str,
    to: &str,
    serving: &AgentView,
    standby: &AgentView,
    cfg: &DetectorConfig,
) -> Result<String, String> {
    let w = witnesses(from, to, serving, standby, cfg);
    if !w.primary_silent || !w.peer_lost {
        let which = match (w.primary_silent, w.peer_lost) {
            (false, false) => "neither witness holds",
            (false, true) => "witness 1 (primary silent) no longer holds",
            _ => "witness 2 (DRBD peer connection lost) no longer holds",
        };
        return Err(format!("S2: {which}: {}", w.evidence));
    }
    backup_fresh(standby).map_err(|stale| {
        format!(
            "S1: {to} is no longer a fresh copy: {stale} ({})",
            w.evidence
        )
    })?;
    Ok(format!(
        "S2 both witnesses: {}; S1: {to} is UpToDate and was in sync",
        w.evidence
    ))
}

/// Decide what to do with `pair` now. Pure; see the module documentation.
pub fn decide(
    pair: &PairRecord,
    serving: &AgentView,
    standby: &AgentView,
    now_unix_ms: i64,
    cfg: &DetectorConfig,
) -> Decision {
    let Observation {
        transition: monitoring,
        alerts,
    } = observe(pair, serving, standby, cfg.agent_timeout_ms);
    let d = |action: Action, reason: String| Decision {
        action,
        reason,
        alerts: alerts.clone(),
    };
    let (s_id, b_id) = (pair.serving_id(), pair.standby_id());
    let marked = pair.outdated.as_ref().filter(|m| m.server == b_id);
    // S10's steps, computed once: they also decide whether S1 marks first.
    let steps = stand_down_steps(serving, standby, pair.epoch, cfg);
    if !matches!(
        pair.state,
        PairState::FailingOver | PairState::SwitchingOver
    ) {
        // S1 first, in every state: a standby that lost replication while the
        // serving server went on is outdated, durably, before anything else but
        // its stand-down (S10, below), which comes first where it applies.
        let standing_down =
            !matches!(pair.state, PairState::Paused | PairState::Blocked) && !steps.is_empty();
        if let Some(why) = marked.and_then(|m| back_in_sync(m, serving, standby, now_unix_ms, cfg))
        {
            return d(
                Action::ClearOutdated {
                    server: b_id.to_owned(),
                    why: why.clone(),
                },
                format!("S1: {b_id} is no longer outdated: {why}"),
            );
        }
        if marked.is_none() && !standing_down {
            if let Some((lost, alive)) =
                replication_lost_while_serving(serving, standby, now_unix_ms, cfg)
            {
                return d(
                    Action::MarkOutdated {
                        server: b_id.to_owned(),
                        lost_peer_unix_ms: lost,
                        primary_alive_unix_ms: alive,
                    },
                    format!(
                        "S1: {b_id} is outdated: {} ({s_id} may have acknowledged writes it does not have)",
                        times(lost, alive)
                    ),
                );
            }
        }
    }
    // A maintenance window: planned DRBD disconnects are expected, not alarms,
    // and nothing fails over; S1 above and a stand-down (S10) still apply.
    if let Some(m) = pair.ops.maintenance_at(now_unix_ms) {
        // A standby that serves is still stood down; a disconnected one is
        // left alone (the planned disconnect), not reconnected.
        let serving_steps = steps.iter().any(|s| {
            !matches!(
                s,
                StandDownStep::DiscardAndReconnect | StandDownStep::ReconnectServing
            )
        });
        if !serving_steps
            && !matches!(
                pair.state,
                PairState::FailingOver | PairState::SwitchingOver
            )
        {
            return Decision {
                action: Action::Nothing,
                reason: format!(
                    "maintenance window until {} ({}, by {}): DRBD disconnects are expected; no automatic failover",
                    crate::state::fmt_unix_ms(m.until_unix_ms),
                    m.reason,
                    m.by
                ),
                alerts: alerts
                    .iter()
                    .filter(|a| a.contains("self-check") || a.starts_with("STANDBY SERVING"))
                    .cloned()
                    .collect(),
            };
        }
    }
    let dec = decide_main(pair, serving, standby, cfg, monitoring, steps, d);
    if dec.action != Action::Nothing
        || matches!(
            pair.state,
            PairState::FailingOver | PairState::SwitchingOver
        )
    {
        return dec;
    }
    // Nothing more pressing: make the standby's own DRBD agree with the mark.
    let standby_reachable = standby.reachable(cfg.agent_timeout_ms);
    if let (Some(_), true, Some(b)) = (marked, standby_reachable, standby.drbd.as_ref()) {
        if b.role == "Secondary"
            && b.connection != "Connected"
            && matches!(b.disk.as_str(), "UpToDate" | "Consistent")
        {
            return Decision {
                action: Action::OutdateStandby(b_id.to_owned()),
                reason: format!(
                    "S1: {b_id} is marked outdated but its DRBD disk says {}: outdating it (drbdadm outdate); {}",
                    b.disk, dec.reason
                ),
                alerts: dec.alerts,
            };
        }
    }
    dec
}

/// The decision once the S1 outdated mark is settled.
fn decide_main(
    pair: &PairRecord,
    serving: &AgentView,
    standby: &AgentView,
    cfg: &DetectorConfig,
    monitoring: Option<(PairState, String)>,
    steps: Vec<StandDownStep>,
    d: impl Fn(Action, String) -> Decision,
) -> Decision {
    let (s_id, b_id) = (pair.serving_id(), pair.standby_id());
    let marked = pair.outdated.as_ref().filter(|m| m.server == b_id);
    match pair.state {
        PairState::Paused => {
            return d(
                Action::Nothing,
                "paused for maintenance: no automatic action".into(),
            )
        }
        PairState::Blocked => {
            return d(
                Action::Nothing,
                format!("blocked ({}): an operator must act", pair.state_reason),
            )
        }
        PairState::FailingOver | PairState::SwitchingOver => {
            return match &pair.failover {
                Some(plan) => d(
                    Action::ResumePlan,
                    format!(
                        "plan epoch {} in flight at step {}",
                        plan.epoch,
                        plan.next_step()
                            .map(|s| s.step.to_string())
                            .unwrap_or_else(|| "end".into())
                    ),
                ),
                None => d(
                    Action::Block,
                    format!("{} without a plan: inconsistent, blocking", pair.state),
                ),
            }
        }
        _ => {}
    }

    // S10: a standby that serves is stood down before anything else.
    if !steps.is_empty() {
        let names: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        let what = serving_state(standby);
        let why = if what.is_empty() {
            match (standby.drbd.as_ref(), serving.drbd.as_ref()) {
                (Some(b), _) if b.connection == "StandAlone" => format!(
                    "{b_id}'s DRBD is StandAlone (split brain): it must resynchronise from {s_id}, discarding its data"
                ),
                (_, Some(s)) if s.connection == "StandAlone" && steps.contains(&StandDownStep::ReconnectServing) => format!(
                    "{s_id}'s DRBD is StandAlone (split brain with {b_id}): it must listen again so {b_id} resynchronises from it"
                ),
                _ => format!(
                    "{b_id} serves nothing but has not accepted epoch {} yet (a no-op demote carries it)",
                    pair.epoch
                ),
            }
        } else {
            format!(
                "{b_id} is {} while {s_id} is the pair's file server",
                what.join("/")
            )
        };
        let stale = match standby.highest_epoch {
            Some(e) if e < pair.epoch => {
                format!(" ({b_id} is stale: it said hello with epoch {e})")
            }
            _ => String::new(),
        };
        return d(
            Action::StandDown(steps),
            format!(
                "S10 stand down: {why}{stale}; with epoch {}: {}",
                pair.epoch,
                names.join(", ")
            ),
        );
    }

    let standby_up = standby.reachable(cfg.agent_timeout_ms);
    let Witnesses {
        primary_silent: w1,
        peer_lost: w2,
        evidence,
    } = witnesses(s_id, b_id, serving, standby, cfg);

    if w1 && w2 {
        if pair.state == PairState::Degraded {
            return d(
                Action::Nothing,
                format!(
                    "both witnesses hold ({evidence}) but the pair is Degraded: {b_id} is not a usable backup"
                ),
            );
        }
        if pair.last_auto_failover_unix_ms.is_some() {
            // Measured by monotonic clocks (`pair.holdoff_elapsed_ms`, committed in
            // ticks plus the leader's own time since its last tick), never by
            // the wall clock: a clock step cannot lift the hold-off early.
            let ago = pair.holdoff_elapsed_ms;
            if !pair.flap_acknowledged && ago < cfg.flap_holdoff_ms {
                return d(
                    Action::Block,
                    format!(
                        "S5: the last automatic failover was {} s ago (hold-off {} s) and was not acknowledged; not failing over again ({evidence}); run `understudyctl ack {}` or act by hand",
                        ago / 1000,
                        cfg.flap_holdoff_ms / 1000,
                        pair.spec.id
                    ),
                );
            }
        }
        if let Some(m) = marked {
            // Nothing will be promoted either way; blocking is for a file server
            // that is really gone. Give a blip (the link back, probes answered)
            // as long again as the silence threshold before saying so.
            let silent = serving.silent_ms.unwrap_or(u64::MAX);
            if silent < cfg.primary_silence_ms.saturating_mul(2) {
                return d(
                    Action::Nothing,
                    format!(
                        "both witnesses hold ({evidence}) but S1: {b_id} is outdated since {}: it will not be promoted; blocking if {s_id} stays silent for {} ms",
                        crate::state::fmt_unix_ms(m.lost_peer_unix_ms),
                        cfg.primary_silence_ms.saturating_mul(2)
                    ),
                );
            }
            return d(
                Action::Block,
                format!(
                    "S1: not promoting {b_id} automatically: it is outdated since {} (it lost replication while {s_id} was still alive at {}; {}; disk {} now), so it may lack writes {s_id} acknowledged ({evidence}); bring {s_id} back, or promote by hand only with --force --accept-data-loss, or reattach the volumes (S9)",
                    crate::state::fmt_unix_ms(m.lost_peer_unix_ms),
                    crate::state::fmt_unix_ms(m.primary_alive_unix_ms),
                    m.source,
                    standby.drbd.as_ref().map(|b| b.disk.as_str()).unwrap_or("unknown"),
                ),
            );
        }
        let Err(stale) = backup_fresh(standby) else {
            return d(
                Action::StartFailover {
                    from: s_id.to_owned(),
                    to: b_id.to_owned(),
                },
                format!(
                    "S2 both witnesses: {evidence}; S1: {b_id} is UpToDate and was in sync at its last report before the loss"
                ),
            );
        };
        return d(
            Action::Block,
            format!(
                "S1: not promoting {b_id} automatically: {stale} ({evidence}); promote by hand only with --force --accept-data-loss, or reattach the volumes (S9)"
            ),
        );
    }

    if w1 || w2 {
        let why = if w1 {
            let replicating = standby_up
                && standby
                    .drbd
                    .as_ref()
                    .is_some_and(|b| b.connection == "Connected");
            if replicating {
                format!(
                    "agent unreachable, data path healthy: {s_id}'s agent silent for {}, but {b_id} still replicates from it",
                    ms(serving.silent_ms)
                )
            } else if standby_up {
                format!(
                    "{s_id}'s agent silent for {}; {b_id}'s DRBD connection to it is {}, lost for {} (below the {} ms needed)",
                    ms(serving.silent_ms),
                    standby.drbd.as_ref().map(|b| b.connection.as_str()).unwrap_or("unknown"),
                    ms(standby.peer_lost_ms),
                    cfg.peer_loss_ms
                )
            } else {
                format!(
                    "{s_id}'s agent silent for {}, and {b_id}'s agent is unreachable too: no second witness, no failover",
                    ms(serving.silent_ms)
                )
            }
        } else {
            format!(
                "replication down, running unprotected: {b_id}'s DRBD peer connection lost for {}, but {s_id}'s agent answers{}",
                ms(standby.peer_lost_ms),
                match serving.probe_answered_ms {
                    Some(p) if serving.silent_ms.is_some_and(|s| s >= cfg.primary_silence_ms) =>
                        format!(" (its session silent for {}, but it answered a direct probe {p} ms ago)", ms(serving.silent_ms)),
                    _ => String::new(),
                }
            )
        };
        return match pair.state {
            PairState::Healthy => d(Action::SetState(PairState::Suspect), why),
            _ => d(
                Action::Nothing,
                format!("one witness only, no failover: {why}"),
            ),
        };
    }

    // No witness. First: the serving server must actually serve.
    let serving_up = serving.reachable(cfg.agent_timeout_ms);
    if let (true, Some(dr), Some(h)) = (serving_up, serving.drbd.as_ref(), serving.host.as_ref()) {
        // A serving server that rebooted (or whose DRBD restarted) comes back
        // Secondary, as DRBD always starts: it is promoted again, as a cluster
        // manager promotes its DRBD resource after a reboot. Only its own data,
        // UpToDate (S1: it holds every write acknowledged since it was made the
        // file server; the standby never served since, or it would be the
        // serving server), and never while the standby is Primary (S10 stands
        // that one down first; DRBD refuses a second Primary anyway, and with no
        // peer connected its fence-peer handler outdates the standby first).
        let standby_primary =
            standby.drbd.as_ref().is_some_and(|b| b.role == "Primary") || dr.peer_role == "Primary";
        let promote = dr.role == "Secondary" && dr.disk == "UpToDate" && !standby_primary;
        if h.serving_managed && (dr.role == "Primary" || promote) {
            let mut missing = Vec::new();
            if promote {
                missing.push(Step::Promote);
            }
            if !h.mounted {
                missing.push(Step::Mount);
            }
            if h.exports.is_empty() {
                missing.push(Step::Export);
            }
            if !h.client_ip_present {
                missing.push(Step::ClaimIp);
            }
            if !missing.is_empty() {
                let names: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
                return d(
                    Action::Serve(missing),
                    format!(
                        "{s_id} is DRBD Primary but does not serve yet: {} to do",
                        names.join(", ")
                    ),
                );
            }
        }
    }

    // Leave Suspect; otherwise the monitoring transitions.
    let in_sync = standby_up && standby.drbd.as_ref().is_some_and(backup_in_sync);
    match pair.state {
        PairState::Suspect if standby.gone(cfg.agent_timeout_ms) => d(
            Action::SetState(PairState::Degraded),
            format!(
                "backup {b_id}'s agent is gone (silent for {}): serving from {s_id} without protection",
                ms(standby.silent_ms)
            ),
        ),
        PairState::Suspect if in_sync => d(
            Action::SetState(PairState::Healthy),
            format!("witness cleared: {b_id} is connected and in sync again"),
        ),
        PairState::Suspect => d(
            Action::SetState(PairState::Rebuilding),
            format!("witness cleared, but {b_id} is not in sync yet"),
        ),
        PairState::Degraded => match standby.drbd.as_ref().filter(|_| standby_up) {
            Some(b)
                if b.connection == "Connected"
                    && b.role == "Secondary"
                    && !crate::observe::has_no_disk(b) =>
            {
                d(
                    Action::SetState(PairState::Rebuilding),
                    format!("{b_id} is back as a Secondary and connected: resynchronising"),
                )
            }
            _ => d(
                Action::Nothing,
                format!("serving from {s_id} without a usable backup"),
            ),
        },
        _ => match monitoring {
            Some((to, why)) => d(Action::SetState(to), why),
            None => d(
                Action::Nothing,
                format!(
                    "{} and nothing changed: no witness of a failure",
                    pair.state
                ),
            ),
        },
    }
}

/// Whether `to` may take over without losing data: `UpToDate`, connected,
/// replication established, nothing out of sync (a planned switchover, or a
/// promotion without `--force`). The refusal names the disk state and the
/// resync's progress; pure.
pub fn switchover_ready(to: &str, v: &AgentView) -> Result<String, String> {
    if !v.connected {
        return Err(format!("{to}'s agent is not connected"));
    }
    let Some(d) = v.drbd.as_ref() else {
        return Err(format!("{to} has not reported its DRBD state"));
    };
    let progress = d
        .done_percent
        .map(|p| format!(", {p:.1}% done"))
        .unwrap_or_default();
    let ok = d.disk == "UpToDate"
        && d.connection == "Connected"
        && d.replication == "Established"
        && d.out_of_sync_bytes == Some(0);
    if ok {
        Ok(format!(
            "{to} is UpToDate, connected and in sync (out-of-sync 0)"
        ))
    } else {
        Err(format!(
            "{to} is {} ({} {}{progress}, {} out of sync): not UpToDate and in sync",
            if d.disk.is_empty() {
                "unknown"
            } else {
                &d.disk
            },
            if d.connection.is_empty() {
                "-"
            } else {
                &d.connection
            },
            if d.replication.is_empty() {
                "-"
            } else {
                &d.replication
            },
            d.out_of_sync_bytes
                .map(|b| format!("{b} bytes"))
                .unwrap_or_else(|| "unknown".into())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{FailoverPlan, Step, StepRecord, StepStatus};
    use crate::testutil::{pair, sum};
    use understudy_proto::DrbdSummary;

    fn in_sync() -> DrbdSummary {
        sum(
            "Secondary",
            "UpToDate",
            "Connected",
            "Established",
            "UpToDate",
            Some(0),
        )
    }

    fn serving_alive() -> AgentView {
        AgentView {
            connected: true,
            silent_ms: Some(50),
            drbd: Some(sum(
                "Primary",
                "UpToDate",
                "Connected",
                "Established",
                "UpToDate",
                Some(0),
            )),
            ..Default::default()
        }
    }

    fn serving_silent(ms: u64) -> AgentView {
        AgentView {
            connected: false,
            silent_ms: Some(ms),
            ..serving_alive()
        }
    }

    /// A standby connected to the controller; `lost` = how long its DRBD peer is gone.
    fn standby(now: DrbdSummary, lost: Option<u64>, before: Option<DrbdSummary>) -> AgentView {
        AgentView {
            connected: true,
            silent_ms: Some(50),
            drbd: Some(now),
            peer_lost_ms: lost,
            last_connected: before,
            ..Default::default()
        }
    }

    fn lost_peer() -> DrbdSummary {
        sum(
            "Secondary",
            "UpToDate",
            "Connecting",
            "Off",
            "DUnknown",
            Some(0),
        )
    }

    const NOW: i64 = 100_000_000;

    fn cfg() -> DetectorConfig {
        DetectorConfig::default()
    }

    #[test]
    fn two_witnesses_and_fresh_backup_start_a_failover() {
        let dec = decide(
            &pair(PairState::Healthy),
            &serving_silent(1500),
            &standby(lost_peer(), Some(800), Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_eq!(
            dec.action,
            Action::StartFailover {
                from: "a".into(),
                to: "b".into()
            }
        );
        assert!(dec.reason.contains("S2 both witnesses"), "{}", dec.reason);
    }

    #[test]
    fn a_witness_below_its_time_does_not_count() {
        for (silent, lost) in [(999, 800), (1500, 499), (999, 499)] {
            let dec = decide(
                &pair(PairState::Healthy),
                &serving_silent(silent),
                &standby(lost_peer(), Some(lost), Some(in_sync())),
                NOW,
                &cfg(),
            );
            assert!(
                !matches!(dec.action, Action::StartFailover { .. }),
                "silent {silent} lost {lost}: {dec:?}"
            );
        }
    }

    #[test]
    fn a_primary_answering_direct_probes_is_not_silent() {
        // Its session stream is silent (TCP back-off after a blip) but it answered
        // a probe over a fresh path: witness 1 does not hold.
        let mut s = serving_silent(1500);
        s.probe_answered_ms = Some(120);
        let b = standby(lost_peer(), Some(800), Some(in_sync()));
        let dec = decide(&pair(PairState::Healthy), &s, &b, NOW, &cfg());
        assert!(
            !matches!(dec.action, Action::StartFailover { .. }),
            "{dec:?}"
        );
        assert!(
            dec.reason.contains("answered a direct probe 120 ms ago"),
            "{}",
            dec.reason
        );
        // An answer older than the silence threshold does not count.
        s.probe_answered_ms = Some(1000);
        assert!(matches!(
            decide(&pair(PairState::Healthy), &s, &b, NOW, &cfg()).action,
            Action::StartFailover { .. }
        ));
    }

    #[test]
    fn confirm_rechecks_witnesses_and_s1() {
        let ok_b = standby(lost_peer(), Some(800), Some(in_sync()));
        let r = failover_still_justified("a", "b", &serving_silent(1500), &ok_b, &cfg());
        assert!(
            r.as_ref().is_ok_and(|e| e.contains("S2 both witnesses")),
            "{r:?}"
        );
        // The primary's session spoke again.
        let r = failover_still_justified("a", "b", &serving_alive(), &ok_b, &cfg());
        assert!(
            r.as_ref()
                .is_err_and(|e| e.starts_with("S2: witness 1 (primary silent) no longer holds")),
            "{r:?}"
        );
        // It answered a probe.
        let mut probed = serving_silent(1500);
        probed.probe_answered_ms = Some(10);
        assert!(failover_still_justified("a", "b", &probed, &ok_b, &cfg()).is_err());
        // DRBD reconnected: witness 2 gone.
        let r = failover_still_justified(
            "a",
            "b",
            &serving_silent(1500),
            &standby(in_sync(), None, Some(in_sync())),
            &cfg(),
        );
        assert!(
            r.as_ref().is_err_and(|e| e.starts_with("S2: witness 2")),
            "{r:?}"
        );
        // The backup went stale after the plan was decided (S1).
        let stale = standby(
            sum(
                "Secondary",
                "Outdated",
                "Connecting",
                "Off",
                "DUnknown",
                Some(0),
            ),
            Some(800),
            Some(in_sync()),
        );
        let r = failover_still_justified("a", "b", &serving_silent(1500), &stale, &cfg());
        assert!(
            r.as_ref()
                .is_err_and(|e| e.starts_with("S1: b is no longer a fresh copy: disk Outdated")),
            "{r:?}"
        );
    }

    #[test]
    fn controller_only_loss_is_suspect_not_failover() {
        let dec = decide(
            &pair(PairState::Healthy),
            &serving_silent(60_000),
            &standby(in_sync(), None, Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::SetState(PairState::Suspect));
        assert!(
            dec.reason
                .starts_with("agent unreachable, data path healthy"),
            "{}",
            dec.reason
        );
        // Staying suspect: nothing more happens.
        let dec = decide(
            &pair(PairState::Suspect),
            &serving_silent(60_000),
            &standby(in_sync(), None, Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::Nothing);
    }

    fn marked(state: PairState, lost: i64, alive: i64) -> PairRecord {
        let mut p = pair(state);
        p.outdated = Some(crate::state::OutdatedMark {
            server: "b".into(),
            lost_peer_unix_ms: lost,
            primary_alive_unix_ms: alive,
            source: "test".into(),
        });
        p
    }

    #[test]
    fn replication_only_loss_is_running_unprotected() {
        // First, S1: the backup is outdated from the moment it lost the peer.
        let dec = decide(
            &pair(PairState::Healthy),
            &serving_alive(),
            &standby(lost_peer(), Some(60_000), Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_eq!(
            dec.action,
            Action::MarkOutdated {
                server: "b".into(),
                lost_peer_unix_ms: NOW - 60_000,
                primary_alive_unix_ms: NOW - 50,
            }
        );
        // Once that is committed: Suspect, running unprotected.
        let dec = decide(
            &marked(PairState::Healthy, NOW - 60_000, NOW - 50),
            &serving_alive(),
            &standby(lost_peer(), Some(60_000), Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::SetState(PairState::Suspect));
        assert!(
            dec.reason
                .starts_with("replication down, running unprotected"),
            "{}",
            dec.reason
        );
    }

    #[test]
    fn an_unreachable_standby_is_no_witness() {
        let mut b = standby(lost_peer(), Some(60_000), Some(in_sync()));
        b.connected = false;
        b.silent_ms = Some(5000);
        let dec = decide(
            &pair(PairState::Healthy),
            &serving_silent(60_000),
            &b,
            NOW,
            &cfg(),
        );
        assert!(
            !matches!(dec.action, Action::StartFailover { .. }),
            "{dec:?}"
        );
    }

    #[test]
    fn stale_or_unknown_backup_data_blocks_s1() {
        let cases = [
            // Still resyncing when the primary died.
            (
                sum(
                    "Secondary",
                    "Inconsistent",
                    "Connecting",
                    "Off",
                    "DUnknown",
                    Some(4096),
                ),
                Some(sum(
                    "Secondary",
                    "Inconsistent",
                    "Connected",
                    "SyncTarget",
                    "UpToDate",
                    Some(4096),
                )),
            ),
            // UpToDate now, but it had unreplicated writes outstanding before the loss.
            (
                lost_peer(),
                Some(sum(
                    "Secondary",
                    "UpToDate",
                    "Connected",
                    "Established",
                    "UpToDate",
                    Some(8192),
                )),
            ),
            // Out-of-sync unknown (an underflowed counter): not fresh.
            (
                lost_peer(),
                Some(sum(
                    "Secondary",
                    "UpToDate",
                    "Connected",
                    "Established",
                    "UpToDate",
                    None,
                )),
            ),
            // Outdated.
            (
                sum(
                    "Secondary",
                    "Outdated",
                    "Connecting",
                    "Off",
                    "DUnknown",
                    Some(0),
                ),
                Some(in_sync()),
            ),
            // Never seen connected by this leader.
            (lost_peer(), None),
        ];
        for (now, before) in cases {
            let dec = decide(
                &pair(PairState::Healthy),
                &serving_silent(1500),
                &standby(now.clone(), Some(800), before.clone()),
                NOW,
                &cfg(),
            );
            assert_eq!(dec.action, Action::Block, "{now:?} {before:?}: {dec:?}");
            assert!(
                dec.reason.starts_with("S1: not promoting b"),
                "{}",
                dec.reason
            );
        }
    }

    #[test]
    fn flapping_is_blocked_unless_acknowledged_s5() {
        let mut p = pair(PairState::Healthy);
        p.last_auto_failover_unix_ms = Some(NOW - 60_000);
        p.holdoff_elapsed_ms = 60_000;
        let args = (
            serving_silent(1500),
            standby(lost_peer(), Some(800), Some(in_sync())),
        );
        let dec = decide(&p, &args.0, &args.1, NOW, &cfg());
        assert_eq!(dec.action, Action::Block);
        assert!(dec.reason.starts_with("S5"), "{}", dec.reason);
        p.flap_acknowledged = true;
        assert!(matches!(
            decide(&p, &args.0, &args.1, NOW, &cfg()).action,
            Action::StartFailover { .. }
        ));
        p.flap_acknowledged = false;
        p.holdoff_elapsed_ms = 11 * 60_000;
        assert!(matches!(
            decide(&p, &args.0, &args.1, NOW, &cfg()).action,
            Action::StartFailover { .. }
        ));
    }

    /// A wall-clock step (on whichever controller leads) does not lift the
    /// hold-off: only the monotonic time measured since the failover counts.
    #[test]
    fn a_clock_step_does_not_lift_the_hold_off() {
        let mut p = pair(PairState::Healthy);
        p.last_auto_failover_unix_ms = Some(NOW);
        p.holdoff_elapsed_ms = 30_000;
        let args = (
            serving_silent(1500),
            standby(lost_peer(), Some(800), Some(in_sync())),
        );
        for wall in [NOW, NOW + 3_600_000, NOW + 86_400_000, NOW - 3_600_000] {
            let dec = decide(&p, &args.0, &args.1, wall, &cfg());
            assert_eq!(dec.action, Action::Block, "wall {wall}: {dec:?}");
            assert!(
                dec.reason
                    .starts_with("S5: the last automatic failover was 30 s ago"),
                "{}",
                dec.reason
            );
        }
    }

    #[test]
    fn after_a_failover_the_roles_are_swapped() {
        let mut p = pair(PairState::Healthy);
        p.serving = Some("b".into());
        let dec = decide(
            &p,
            &serving_silent(1500),
            &standby(lost_peer(), Some(800), Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_eq!(
            dec.action,
            Action::StartFailover {
                from: "b".into(),
                to: "a".into()
            }
        );
    }

    #[test]
    fn table_of_states_without_witnesses() {
        let plan = FailoverPlan {
            epoch: 4,
            from: "a".into(),
            to: "b".into(),
            reason: "x".into(),
            automatic: true,
            started_unix_ms: 0,
            steps: vec![StepRecord {
                step: Step::Fence,
                status: StepStatus::Pending,
                attempts: 0,
            }],
            force: false,
        };
        let healthy_views = (serving_alive(), standby(in_sync(), None, Some(in_sync())));
        let resync = standby(
            sum(
                "Secondary",
                "Inconsistent",
                "Connected",
                "SyncTarget",
                "UpToDate",
                Some(10),
            ),
            None,
            None,
        );
        let cases: Vec<(PairState, Option<FailoverPlan>, &AgentView, Action, &str)> = vec![
            (
                PairState::Paused,
                None,
                &healthy_views.1,
                Action::Nothing,
                "paused",
            ),
            (
                PairState::Blocked,
                None,
                &healthy_views.1,
                Action::Nothing,
                "blocked",
            ),
            (
                PairState::FailingOver,
                Some(plan.clone()),
                &healthy_views.1,
                Action::ResumePlan,
                "plan epoch 4 in flight at step Fence",
            ),
            (
                PairState::FailingOver,
                None,
                &healthy_views.1,
                Action::Block,
                "without a plan",
            ),
            (
                PairState::Suspect,
                None,
                &healthy_views.1,
                Action::SetState(PairState::Healthy),
                "witness cleared",
            ),
            (
                PairState::Suspect,
                None,
                &resync,
                Action::SetState(PairState::Rebuilding),
                "not in sync yet",
            ),
            (
                PairState::Rebuilding,
                None,
                &healthy_views.1,
                Action::SetState(PairState::Healthy),
                "in sync",
            ),
            (
                PairState::Rebuilding,
                None,
                &resync,
                Action::Nothing,
                "nothing changed",
            ),
            (
                PairState::Healthy,
                None,
                &healthy_views.1,
                Action::Nothing,
                "nothing changed",
            ),
            (
                PairState::Healthy,
                None,
                &resync,
                Action::SetState(PairState::Rebuilding),
                "SyncTarget",
            ),
            (
                PairState::Degraded,
                None,
                &resync,
                Action::SetState(PairState::Rebuilding),
                "back as a Secondary",
            ),
        ];
        for (state, plan, b, want, why) in cases {
            let mut p = pair(state);
            p.failover = plan;
            let dec = decide(&p, &healthy_views.0, b, NOW, &cfg());
            assert_eq!(dec.action, want, "{state}: {dec:?}");
            assert!(
                dec.reason.contains(why),
                "{state}: {:?} should contain {why:?}",
                dec.reason
            );
        }
        // Paused and Blocked ignore even two witnesses.
        for state in [PairState::Paused, PairState::Blocked] {
            let dec = decide(
                &pair(state),
                &serving_silent(60_000),
                &standby(lost_peer(), Some(60_000), Some(in_sync())),
                NOW,
                &cfg(),
            );
            assert_eq!(dec.action, Action::Nothing, "{state}");
        }
        // A connected Secondary without a disk (detached after an I/O error)
        // is no backup: the pair stays Degraded, nothing resynchronises.
        for disk in ["Diskless", "Failed", "Detaching"] {
            let diskless = standby(
                sum(
                    "Secondary",
                    disk,
                    "Connected",
                    "Established",
                    "UpToDate",
                    Some(0),
                ),
                None,
                None,
            );
            let dec = decide(
                &pair(PairState::Degraded),
                &healthy_views.0,
                &diskless,
                NOW,
                &cfg(),
            );
            assert_eq!(dec.action, Action::Nothing, "{disk}: {dec:?}");
            assert!(dec.reason.contains("without a usable backup"), "{dec:?}");
        }
        // Degraded with both witnesses: nothing to fail over to.
        let dec = decide(
            &pair(PairState::Degraded),
            &serving_silent(60_000),
            &standby(lost_peer(), Some(60_000), Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::Nothing);
        assert!(dec.reason.contains("not a usable backup"));
    }

    /// Exhaustive over a grid of inputs: the invariants hold for every combination.
    #[test]
    fn invariants_over_a_grid() {
        let disks = [
            "UpToDate",
            "Inconsistent",
            "Outdated",
            "DUnknown",
            "Frobnicated",
        ];
        let oos = [Some(0), Some(1), None];
        let states = [
            PairState::Healthy,
            PairState::Suspect,
            PairState::Rebuilding,
            PairState::Degraded,
            PairState::Paused,
            PairState::Blocked,
        ];
        let times = [
            None,
            Some(0),
            Some(499),
            Some(500),
            Some(999),
            Some(1000),
            Some(60_000),
        ];
        let mut n = 0;
        for state in states {
            for silent in times {
                for lost in times {
                    for disk in disks {
                        for o in oos {
                            for before in [
                                None,
                                Some(in_sync()),
                                Some(sum(
                                    "Secondary",
                                    disk,
                                    "Connected",
                                    "Established",
                                    "UpToDate",
                                    o,
                                )),
                            ] {
                                n += 1;
                                // A direct probe answer: never, recent, old
                                // (cycled through the grid).
                                let probe = [None, Some(100), Some(5000)][n % 3];
                                let s = AgentView {
                                    connected: silent.is_some_and(|s| s < 1000),
                                    silent_ms: silent,
                                    probe_answered_ms: probe,
                                    ..serving_alive()
                                };
                                let b = standby(
                                    sum(
                                        "Secondary",
                                        disk,
                                        if lost.is_some() {
                                            "Connecting"
                                        } else {
                                            "Connected"
                                        },
                                        "Off",
                                        "DUnknown",
                                        o,
                                    ),
                                    lost,
                                    before.clone(),
                                );
                                let dec = decide(&pair(state), &s, &b, NOW, &cfg());
                                assert!(!dec.reason.is_empty());
                                if let Action::MarkOutdated { .. } = dec.action {
                                    // Only when the serving server was heard
                                    // from well after the standby lost it.
                                    assert!(lost.unwrap() > silent.unwrap() + 300, "{dec:?}");
                                }
                                if let Action::StartFailover { .. } = dec.action {
                                    // S1: never when the serving server outlived
                                    // the replication loss by more than the tolerance.
                                    assert!(lost.unwrap() <= silent.unwrap() + 300, "{dec:?}");
                                    // Never without both witnesses held long enough.
                                    assert!(
                                        silent.unwrap() >= 1000 && lost.unwrap() >= 500,
                                        "{dec:?}"
                                    );
                                    // Never while the primary answers probes.
                                    assert!(probe.is_none_or(|p| p >= 1000), "{dec:?}");
                                    // Never a stale promotion.
                                    assert_eq!(disk, "UpToDate");
                                    assert!(before.as_ref().is_some_and(backup_in_sync));
                                    // Never from a state that forbids it.
                                    assert!(matches!(
                                        state,
                                        PairState::Healthy
                                            | PairState::Suspect
                                            | PairState::Rebuilding
                                    ));
                                }
                                if matches!(state, PairState::Paused | PairState::Blocked) {
                                    assert!(
                                        matches!(
                                            dec.action,
                                            Action::Nothing
                                                | Action::MarkOutdated { .. }
                                                | Action::OutdateStandby(_)
                                        ),
                                        "{state}: {dec:?}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(n > 5000, "{n}");
    }

    /// The issue's scenario: replication cut, the file server goes on for minutes,
    /// then dies. Both witnesses hold and the backup still says UpToDate with an
    /// in-sync report from before the cut: S1 must refuse, naming both times.
    #[test]
    fn a_backup_outdated_by_a_replication_cut_is_never_promoted() {
        let lost_at = NOW - 300_000;
        let died_at = NOW - 2_000;
        let p = marked(PairState::Suspect, lost_at, died_at);
        for s_silent in [1_000, 1_999, 2_000, 60_000] {
            for b_lost in [500, 2_000, 300_000] {
                let dec = decide(
                    &p,
                    &serving_silent(s_silent),
                    &standby(lost_peer(), Some(b_lost), Some(in_sync())),
                    NOW,
                    &cfg(),
                );
                if s_silent < 2_000 {
                    // Maybe a blip: not promoted, not blocked yet (outdating
                    // its disk is the one thing done meanwhile).
                    assert!(
                        matches!(dec.action, Action::Nothing | Action::OutdateStandby(_)),
                        "{s_silent} {b_lost}: {dec:?}"
                    );
                    assert!(
                        dec.reason.contains("S1: b is outdated since"),
                        "{}",
                        dec.reason
                    );
                    continue;
                }
                assert_eq!(dec.action, Action::Block, "{s_silent} {b_lost}: {dec:?}");
                assert!(dec.reason.starts_with("S1: not promoting b automatically: it is outdated since 1970-01-02 03:41:40.000 UTC"), "{}", dec.reason);
                assert!(
                    dec.reason
                        .contains("still alive at 1970-01-02 03:46:38.000 UTC"),
                    "{}",
                    dec.reason
                );
            }
        }
        // Without the mark (a leader that saw it all live): the live evidence marks first.
        let dec = decide(
            &pair(PairState::Suspect),
            &serving_silent(1_500),
            &standby(lost_peer(), Some(300_000), Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert!(matches!(dec.action, Action::MarkOutdated { .. }), "{dec:?}");
        // The serving server's own DRBD (Primary, connection lost, agent alive) is
        // evidence too, even when the standby's agent cannot be heard.
        let mut s = serving_alive();
        s.drbd = Some(sum(
            "Primary",
            "UpToDate",
            "Connecting",
            "Off",
            "DUnknown",
            Some(4096),
        ));
        s.peer_lost_ms = Some(5_000);
        let gone = AgentView {
            silent_ms: Some(5_000),
            ..Default::default()
        };
        let dec = decide(&pair(PairState::Healthy), &s, &gone, NOW, &cfg());
        assert_eq!(
            dec.action,
            Action::MarkOutdated {
                server: "b".into(),
                lost_peer_unix_ms: NOW - 5_000,
                primary_alive_unix_ms: NOW - 50,
            }
        );
    }

    /// A real death: the standby loses the peer at about the moment the serving
    /// agent goes silent (or later: DRBD's ping timeout). Within the tolerance it
    /// is not outdated, and the failover goes ahead.
    #[test]
    fn a_loss_within_the_tolerance_of_the_death_still_fails_over() {
        for (silent, lost) in [(1_000, 500), (1_000, 1_000), (1_200, 1_500), (2_000, 2_300)] {
            let dec = decide(
                &pair(PairState::Healthy),
                &serving_silent(silent),
                &standby(lost_peer(), Some(lost), Some(in_sync())),
                NOW,
                &cfg(),
            );
            assert!(
                matches!(dec.action, Action::StartFailover { .. }),
                "silent {silent} lost {lost}: {dec:?}"
            );
        }
        let dec = decide(
            &pair(PairState::Healthy),
            &serving_silent(1_000),
            &standby(lost_peer(), Some(1_301), Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert!(matches!(dec.action, Action::MarkOutdated { .. }), "{dec:?}");
    }

    /// A short loss (the fence-peer handler marked the standby, DRBD reconnected
    /// and resynchronised before any witness held): a report received after the
    /// mark showing it in sync lifts the mark; one from before never does.
    #[test]
    fn a_mark_is_lifted_only_by_an_in_sync_report_received_after_it() {
        let p = marked(PairState::Healthy, NOW - 10_000, NOW - 10_000);
        let mut b = standby(in_sync(), None, Some(in_sync()));
        b.report_age_ms = Some(2_000);
        let dec = decide(&p, &serving_alive(), &b, NOW, &cfg());
        assert!(
            matches!(&dec.action, Action::ClearOutdated { server, why } if server == "b" && why.contains("b reports itself UpToDate")),
            "{dec:?}"
        );
        // Received before the mark (or within the margin): stays marked.
        for age in [9_500, 10_000, 20_000] {
            b.report_age_ms = Some(age);
            let dec = decide(&p, &serving_alive(), &b, NOW, &cfg());
            assert!(
                !matches!(dec.action, Action::ClearOutdated { .. }),
                "{age}: {dec:?}"
            );
        }
        // Not in sync: stays marked.
        let mut syncing = standby(
            sum(
                "Secondary",
                "Inconsistent",
                "Connected",
                "SyncTarget",
                "UpToDate",
                Some(4096),
            ),
            None,
            None,
        );
        syncing.report_age_ms = Some(100);
        let dec = decide(&p, &serving_alive(), &syncing, NOW, &cfg());
        assert!(
            !matches!(dec.action, Action::ClearOutdated { .. }),
            "{dec:?}"
        );
        // The serving Primary's own fresh view of its peer is enough.
        let mut s = serving_alive();
        s.report_age_ms = Some(100);
        let gone = AgentView {
            silent_ms: Some(5_000),
            ..Default::default()
        };
        let dec = decide(&p, &s, &gone, NOW, &cfg());
        assert!(
            matches!(&dec.action, Action::ClearOutdated { why, .. } if why.contains("serving Primary reports b")),
            "{dec:?}"
        );
        // ... but not a report of an earlier session.
        s.stale_report = true;
        let dec = decide(&p, &s, &gone, NOW, &cfg());
        assert!(
            !matches!(dec.action, Action::ClearOutdated { .. }),
            "{dec:?}"
        );
    }

    #[test]
    fn a_marked_standby_that_still_says_up_to_date_is_told_to_outdate() {
        let p = marked(PairState::Suspect, NOW - 10_000, NOW - 50);
        let dec = decide(
            &p,
            &serving_alive(),
            &standby(lost_peer(), Some(10_000), Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::OutdateStandby("b".into()), "{dec:?}");
        // Already Outdated: nothing to do.
        let mut out = lost_peer();
        out.disk = "Outdated".into();
        let dec = decide(
            &p,
            &serving_alive(),
            &standby(out, Some(10_000), None),
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::Nothing, "{dec:?}");
        // Connected again (resync): DRBD would refuse; the resync brings it back.
        let dec = decide(
            &p,
            &serving_alive(),
            &standby(in_sync(), None, Some(in_sync())),
            NOW,
            &cfg(),
        );
        assert_ne!(dec.action, Action::OutdateStandby("b".into()), "{dec:?}");
    }

    #[test]
    fn a_dead_backup_is_not_healthy_and_is_not_a_witness() {
        let gone = AgentView {
            connected: false,
            silent_ms: Some(13_000),
            drbd: Some(in_sync()),
            ..Default::default()
        };
        let dec = decide(
            &pair(PairState::Healthy),
            &serving_alive(),
            &gone,
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::SetState(PairState::Degraded), "{dec:?}");
        // Then the file server dies too: no second witness, and no claim that the
        // dead backup "still replicates".
        let dec = decide(
            &pair(PairState::Degraded),
            &serving_silent(5_000),
            &gone,
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::Nothing, "{dec:?}");
        assert!(!dec.reason.contains("still replicates"), "{}", dec.reason);
        let dec = decide(
            &pair(PairState::Suspect),
            &serving_silent(5_000),
            &gone,
            NOW,
            &cfg(),
        );
        assert!(!dec.reason.contains("still replicates"), "{}", dec.reason);
        assert!(
            !matches!(dec.action, Action::StartFailover { .. }),
            "{dec:?}"
        );
    }

    #[test]
    fn detector_timings_are_validated() {
        assert!(cfg().validate(200).is_ok());
        let bad = [
            DetectorConfig {
                primary_silence_ms: 500,
                ..cfg()
            },
            DetectorConfig {
                agent_timeout_ms: 300,
                ..cfg()
            },
            DetectorConfig {
                outdate_tolerance_ms: 1000,
                ..cfg()
            },
            DetectorConfig {
                outdate_tolerance_ms: 100,
                ..cfg()
            },
            DetectorConfig {
                peer_loss_ms: 0,
                ..cfg()
            },
        ];
        for c in bad {
            assert!(c.validate(200).is_err(), "{c:?}");
        }
    }

    fn host(mounted: bool, exports: bool, ip: bool, managed: bool) -> understudy_proto::HostStatus {
        understudy_proto::HostStatus {
            mounted,
            exports: if exports {
                vec!["/export".into()]
            } else {
                vec![]
            },
            client_ip_present: ip,
            self_checks: vec![],
            serving_managed: managed,
            ..Default::default()
        }
    }

    /// The brief's scenario: the old primary thaws after the failover, still
    /// Primary, mounted and exporting (the fence took its IP), split-brained.
    #[test]
    fn a_thawed_old_primary_is_stood_down_with_the_current_epoch() {
        let mut p = pair(PairState::Degraded);
        p.serving = Some("b".into());
        let serving = AgentView {
            drbd: Some(sum(
                "Primary",
                "UpToDate",
                "StandAlone",
                "Off",
                "DUnknown",
                Some(4096),
            )),
            host: Some(host(true, true, true, true)),
            highest_epoch: Some(3),
            ..serving_alive()
        };
        let thawed = AgentView {
            connected: true,
            silent_ms: Some(20),
            drbd: Some(sum(
                "Primary",
                "UpToDate",
                "StandAlone",
                "Off",
                "DUnknown",
                Some(8192),
            )),
            peer_lost_ms: Some(30_000),
            host: Some(host(true, true, false, true)),
            highest_epoch: Some(2),
            ..Default::default()
        };
        let dec = decide(&p, &serving, &thawed, NOW, &cfg());
        assert_eq!(
            dec.action,
            Action::StandDown(vec![
                StandDownStep::UnexportNfs,
                StandDownStep::Unmount,
                StandDownStep::Demote,
                StandDownStep::DiscardAndReconnect,
                StandDownStep::ReconnectServing,
            ])
        );
        assert_eq!(
            dec.reason,
            "S10 stand down: a is Primary/mounted/exporting while b is the pair's file server (a is stale: it said hello with epoch 2); with epoch 3: UnexportNfs, Unmount, Demote, DiscardAndReconnect, ReconnectServing"
        );
        assert!(
            dec.alerts
                .iter()
                .any(|a| a.starts_with("STANDBY SERVING: a is Primary/mounted/exporting")),
            "{:?}",
            dec.alerts
        );
        // Just reconnected, still showing the report of its previous session: not
        // acted on until it reports on this one.
        let mut reconnected = thawed.clone();
        reconnected.stale_report = true;
        assert!(!matches!(
            decide(&p, &serving, &reconnected, NOW, &cfg()).action,
            Action::StandDown(_)
        ));
        // The serving server's report is from an earlier session: its data is
        // not known to be the one to keep, nothing is discarded yet.
        let mut serving_reconnected = serving.clone();
        serving_reconnected.stale_report = true;
        assert_eq!(
            decide(&p, &serving_reconnected, &thawed, NOW, &cfg()).action,
            Action::StandDown(vec![
                StandDownStep::UnexportNfs,
                StandDownStep::Unmount,
                StandDownStep::Demote,
            ])
        );
        // Stood down and reconnecting, the serving side still StandAlone: only
        // the serving side's reconnection is left.
        let mut after = thawed.clone();
        after.drbd = Some(sum(
            "Secondary",
            "UpToDate",
            "Connecting",
            "Off",
            "DUnknown",
            Some(0),
        ));
        after.host = Some(host(false, false, false, true));
        // It accepted epoch 3 with the stand-down's commands.
        after.highest_epoch = Some(3);
        let dec = decide(&p, &serving, &after, NOW, &cfg());
        assert_eq!(
            dec.action,
            Action::StandDown(vec![StandDownStep::ReconnectServing])
        );
        assert!(
            dec.reason.contains("b's DRBD is StandAlone"),
            "{}",
            dec.reason
        );
        // Both listening again: back to the usual Degraded -> Rebuilding path.
        let mut serving_back = serving.clone();
        serving_back.drbd = Some(sum(
            "Primary",
            "UpToDate",
            "Connected",
            "SyncSource",
            "Inconsistent",
            Some(4096),
        ));
        after.drbd = Some(sum(
            "Secondary",
            "Inconsistent",
            "Connected",
            "SyncTarget",
            "UpToDate",
            Some(4096),
        ));
        after.peer_lost_ms = None;
        let dec = decide(&p, &serving_back, &after, NOW, &cfg());
        assert_eq!(dec.action, Action::SetState(PairState::Rebuilding));
    }

    #[test]
    fn a_stale_standby_that_serves_nothing_is_given_the_current_epoch() {
        let mut stale = standby(in_sync(), None, Some(in_sync()));
        stale.highest_epoch = Some(2);
        let dec = decide(
            &pair(PairState::Healthy),
            &serving_alive(),
            &stale,
            NOW,
            &cfg(),
        );
        assert_eq!(dec.action, Action::StandDown(vec![StandDownStep::Demote]));
        assert!(
            dec.reason
                .contains("b serves nothing but has not accepted epoch 3 yet"),
            "{}",
            dec.reason
        );
        // At the pair's epoch (or above, or never said): nothing to do.
        for e in [Some(3), Some(4), None] {
            let mut b = stale.clone();
            b.highest_epoch = e;
            let dec = decide(&pair(PairState::Healthy), &serving_alive(), &b, NOW, &cfg());
            assert_eq!(dec.action, Action::Nothing, "{e:?}: {dec:?}");
        }
        // Unreachable: nothing can be sent. DRBD not reported or not a
        // Secondary: no demote that could not succeed.
        let mut gone = stale.clone();
        gone.connected = false;
        gone.silent_ms = Some(5000);
        let mut down = stale.clone();
        down.drbd = None;
        let mut unknown = stale.clone();
        unknown.drbd.as_mut().unwrap().role = "Unknown".into();
        let mut reconnected = stale.clone();
        reconnected.stale_report = true;
        for b in [gone, down, unknown, reconnected] {
            assert!(
                stand_down_steps(&serving_alive(), &b, 3, &cfg()).is_empty(),
                "{b:?}"
            );
        }
    }

    #[test]
    fn stand_down_is_never_automatic_when_paused_blocked_or_during_a_plan() {
        let b = AgentView {
            connected: true,
            silent_ms: Some(10),
            drbd: Some(sum(
                "Primary",
                "UpToDate",
                "StandAlone",
                "Off",
                "DUnknown",
                Some(0),
            )),
            host: Some(host(true, true, true, true)),
            ..Default::default()
        };
        for state in [
            PairState::Paused,
            PairState::Blocked,
            PairState::FailingOver,
            PairState::SwitchingOver,
        ] {
            let dec = decide(&pair(state), &serving_alive(), &b, NOW, &cfg());
            assert!(
                !matches!(dec.action, Action::StandDown(_)),
                "{state}: {dec:?}"
            );
        }
    }

    /// Every combination of what the standby and the serving server report:
    /// the steps are exactly those the rules call for, in order.
    #[test]
    fn stand_down_steps_over_every_combination() {
        let mut n = 0;
        let mut seen = std::collections::BTreeSet::new();
        for b_epoch in [None, Some(2u64)] {
            for b_reach in [true, false] {
                for b_role in ["Primary", "Secondary", "Unknown"] {
                    for b_conn in ["Connected", "Connecting", "StandAlone"] {
                        for (mounted, exports, ip) in
                            (0..8).map(|i| (i & 1 != 0, i & 2 != 0, i & 4 != 0))
                        {
                            for managed in [true, false] {
                                for s_reach in [true, false] {
                                    for s_role in ["Primary", "Secondary"] {
                                        for s_disk in ["UpToDate", "Outdated"] {
                                            for (s_conn, s_ip) in [
                                                ("Connected", true),
                                                ("StandAlone", true),
                                                ("Connected", false),
                                                ("StandAlone", false),
                                            ] {
                                                for state in [
                                                    PairState::Healthy,
                                                    PairState::Suspect,
                                                    PairState::Rebuilding,
                                                    PairState::Degraded,
                                                ] {
                                                    n += 1;
                                                    let b = AgentView {
                                                        connected: b_reach,
                                                        highest_epoch: b_epoch,
                                                        silent_ms: Some(if b_reach {
                                                            10
                                                        } else {
                                                            5000
                                                        }),
                                                        drbd: Some(sum(
                                                            b_role,
                                                            "UpToDate",
                                                            b_conn,
                                                            "Off",
                                                            "DUnknown",
                                                            Some(0),
                                                        )),
                                                        host: Some(host(
                                                            mounted, exports, ip, managed,
                                                        )),
                                                        ..Default::default()
                                                    };
                                                    let s = AgentView {
                                                        connected: s_reach,
                                                        silent_ms: Some(if s_reach {
                                                            10
                                                        } else {
                                                            5000
                                                        }),
                                                        drbd: Some(sum(
                                                            s_role,
                                                            s_disk,
                                                            s_conn,
                                                            "Off",
                                                            "DUnknown",
                                                            Some(0),
                                                        )),
                                                        host: Some(host(true, true, s_ip, true)),
                                                        ..Default::default()
                                                    };
                                                    let mut p = pair(state);
                                                    p.serving = Some("a".into());
                                                    let got =
                                                        stand_down_steps(&s, &b, p.epoch, &cfg());
                                                    // The rules, restated.
                                                    let mut want = Vec::new();
                                                    let keeps = s_reach
                                                        && s_role == "Primary"
                                                        && s_disk == "UpToDate";
                                                    if b_reach {
                                                        if managed && ip {
                                                            want.push(StandDownStep::ReleaseIp);
                                                        }
                                                        if managed && ip && s_reach && s_ip {
                                                            want.push(
                                                                StandDownStep::AnnounceServingIp,
                                                            );
                                                        }
                                                        if managed && exports {
                                                            want.push(StandDownStep::UnexportNfs);
                                                        }
                                                        if managed && mounted {
                                                            want.push(StandDownStep::Unmount);
                                                        }
                                                        let stale =
                                                            b_epoch.is_some_and(|e| e < p.epoch);
                                                        if b_role == "Primary"
                                                            || (stale && b_role == "Secondary")
                                                        {
                                                            want.push(StandDownStep::Demote);
                                                        }
                                                        let discard = keeps
                                                            && (b_role == "Primary"
                                                                || b_conn == "StandAlone");
                                                        if discard {
                                                            want.push(
                                                                StandDownStep::DiscardAndReconnect,
                                                            );
                                                        }
                                                        if keeps
                                                            && s_conn == "StandAlone"
                                                            && (discard
                                                                || (b_role != "Primary"
                                                                    && b_conn != "StandAlone"))
                                                        {
                                                            want.push(
                                                                StandDownStep::ReconnectServing,
                                                            );
                                                        }
                                                    }
                                                    assert_eq!(got, want, "b {b_reach} {b_role} {b_conn} m{mounted} e{exports} ip{ip} managed {managed}; s {s_reach} {s_role} {s_disk} {s_conn}");
                                                    // In order, each at most once.
                                                    assert!(
                                                        got.windows(2).all(|w| w[0] < w[1]),
                                                        "{got:?}"
                                                    );
                                                    // Never discard the data of a standby unless a
                                                    // live UpToDate Primary keeps its own.
                                                    if got.contains(
                                                        &StandDownStep::DiscardAndReconnect,
                                                    ) {
                                                        assert!(keeps);
                                                    }
                                                    // Demote always after the IP, NFS and mount are gone.
                                                    if let Some(i) = got
                                                        .iter()
                                                        .position(|s| *s == StandDownStep::Demote)
                                                    {
                                                        assert!(got[i..]
                                                            .iter()
                                                            .all(|s| *s >= StandDownStep::Demote));
                                                    }
                                                    // decide() acts on exactly these steps, before any other rule.
                                                    let dec = decide(&p, &s, &b, NOW, &cfg());
                                                    if got.is_empty() {
                                                        assert!(
                                                            !matches!(
                                                                dec.action,
                                                                Action::StandDown(_)
                                                            ),
                                                            "{dec:?}"
                                                        );
                                                    } else {
                                                        assert_eq!(
                                                            dec.action,
                                                            Action::StandDown(got.clone())
                                                        );
                                                        assert!(
                                                            dec.reason
                                                                .starts_with("S10 stand down: "),
                                                            "{}",
                                                            dec.reason
                                                        );
                                                    }
                                                    // A standby that serves never gets a failover on top.
                                                    if !serving_state(&b).is_empty() && b_reach {
                                                        assert!(!matches!(
                                                            dec.action,
                                                            Action::StartFailover { .. }
                                                        ));
                                                    }
                                                    seen.insert(got);
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(n > 10_000, "{n}");
        // The grid reaches the interesting step lists, not only the empty one.
        assert!(seen.len() > 20, "{}", seen.len());
        assert!(seen.contains(&vec![StandDownStep::ReconnectServing]));
        assert!(seen.contains(&vec![
            StandDownStep::ReleaseIp,
            StandDownStep::AnnounceServingIp
        ]));
        assert!(seen.contains(&vec![
            StandDownStep::DiscardAndReconnect,
            StandDownStep::ReconnectServing
        ]));
    }

    #[test]
    fn a_primary_that_does_not_serve_is_brought_up() {
        let mut s = serving_alive();
        s.host = Some(understudy_proto::HostStatus {
            mounted: true,
            exports: vec![],
            client_ip_present: false,
            self_checks: vec![],
            serving_managed: true,
            ..Default::default()
        });
        let b = standby(in_sync(), None, Some(in_sync()));
        let dec = decide(&pair(PairState::Healthy), &s, &b, NOW, &cfg());
        assert_eq!(dec.action, Action::Serve(vec![Step::Export, Step::ClaimIp]));
        // Not managed (observe-only agent): nothing to do.
        s.host.as_mut().unwrap().serving_managed = false;
        assert_eq!(
            decide(&pair(PairState::Healthy), &s, &b, NOW, &cfg()).action,
            Action::Nothing
        );
        // A serving server back Secondary with its UpToDate disk (a reboot:
        // DRBD starts Secondary) is promoted and brought up.
        s.host.as_mut().unwrap().serving_managed = true;
        s.host.as_mut().unwrap().mounted = false;
        s.drbd.as_mut().unwrap().role = "Secondary".into();
        s.drbd.as_mut().unwrap().peer_role = "Secondary".into();
        assert_eq!(
            decide(&pair(PairState::Healthy), &s, &b, NOW, &cfg()).action,
            Action::Serve(vec![
                Step::Promote,
                Step::Mount,
                Step::Export,
                Step::ClaimIp
            ])
        );
        // Also with the backup dead (Degraded): its fence-peer handler
        // outdates the backup before DRBD promotes it.
        let gone = AgentView {
            connected: false,
            silent_ms: Some(60_000),
            ..standby(in_sync(), None, Some(in_sync()))
        };
        assert_eq!(
            decide(&pair(PairState::Degraded), &s, &gone, NOW, &cfg()).action,
            Action::Serve(vec![
                Step::Promote,
                Step::Mount,
                Step::Export,
                Step::ClaimIp
            ])
        );
        // Never without UpToDate data of its own (S1) ...
        for disk in ["Outdated", "Inconsistent", "Consistent", "Diskless"] {
            s.drbd.as_mut().unwrap().disk = disk.into();
            assert_eq!(
                decide(&pair(PairState::Healthy), &s, &b, NOW, &cfg()).action,
                Action::Nothing,
                "{disk}"
            );
        }
        // ... nor while the standby is Primary.
        s.drbd.as_mut().unwrap().disk = "UpToDate".into();
        s.drbd.as_mut().unwrap().peer_role = "Primary".into();
        assert_ne!(
            decide(&pair(PairState::Healthy), &s, &b, NOW, &cfg()).action,
            Action::Serve(vec![
                Step::Promote,
                Step::Mount,
                Step::Export,
                Step::ClaimIp
            ])
        );
        let mut bp = b.clone();
        bp.drbd.as_mut().unwrap().role = "Primary".into();
        s.drbd.as_mut().unwrap().peer_role = "Secondary".into();
        assert!(!matches!(
            decide(&pair(PairState::Healthy), &s, &bp, NOW, &cfg()).action,
            Action::Serve(_)
        ));
    }
}

#[cfg(test)]
mod maintenance_tests {
    use super::*;
    use crate::state::Maintenance;
    use crate::testutil::{pair, sum};

    #[test]
    fn a_maintenance_window_silences_a_planned_disconnect_until_it_ends() {
        let mut p = pair(PairState::Healthy);
        p.ops.maintenance = Some(Maintenance {
            until_unix_ms: 10_000,
            reason: "snapshot".into(),
            by: "alice".into(),
        });
        let serving = AgentView {
            connected: true,
            silent_ms: Some(0),
            drbd: Some(sum(
                "Primary",
                "UpToDate",
                "Connecting",
                "Off",
                "DUnknown",
                None,
            )),
            ..Default::default()
        };
        let standby = AgentView {
            connected: true,
            silent_ms: Some(0),
            drbd: Some(sum(
                "Secondary",
                "Outdated",
                "StandAlone",
                "Off",
                "DUnknown",
                None,
            )),
            peer_lost_ms: Some(5_000),
            ..Default::default()
        };
        let cfg = DetectorConfig::default();
        let mut marked = p.clone();
        marked.outdated = Some(crate::state::OutdatedMark {
            server: "b".into(),
            lost_peer_unix_ms: 0,
            primary_alive_unix_ms: 1,
            source: "t".into(),
        });
        let d = decide(&marked, &serving, &standby, 5_000, &cfg);
        assert_eq!(d.action, Action::Nothing, "{}", d.reason);
        assert!(
            d.reason.starts_with("maintenance window until"),
            "{}",
            d.reason
        );
        assert!(d.alerts.is_empty(), "{:?}", d.alerts);
        // After the window: the usual decision (and its alarm) again.
        let d = decide(&marked, &serving, &standby, 10_000, &cfg);
        assert!(!d.reason.starts_with("maintenance"), "{}", d.reason);
        assert!(!d.alerts.is_empty());
        let _ = p;
    }
}

#[cfg(test)]
mod calm_tests {
    use super::*;
    use crate::testutil::{pair, sum};
    use std::time::Duration;

    const CAP: Duration = Duration::from_secs(1);

    fn view(role: &str, silent: u64, connected: bool, lost: Option<u64>) -> AgentView {
        let conn = if lost.is_some() {
            "Connecting"
        } else {
            "Connected"
        };
        AgentView {
            connected,
            silent_ms: Some(silent),
            drbd: Some(sum(
                role,
                "UpToDate",
                conn,
                "Established",
                "UpToDate",
                Some(0),
            )),
            peer_lost_ms: lost,
            ..Default::default()
        }
    }

    fn aged(v: &AgentView, t: u64) -> AgentView {
        AgentView {
            silent_ms: v.silent_ms.map(|s| s + t),
            peer_lost_ms: v.peer_lost_ms.map(|s| s + t),
            probe_answered_ms: v.probe_answered_ms.map(|s| s + t),
            ..v.clone()
        }
    }

    /// Over every state, connection, peer loss, probe answer and silence on a
    /// grid: while `calm_for` says a pair may go unexamined, time alone never
    /// changes what `decide` does with it (the views aged by every 10 ms of the
    /// calm give the same action), and only a settled `Healthy` pair is calm.
    #[test]
    fn a_calm_pair_decides_the_same_for_as_long_as_it_is_calm() {
        let cfg = DetectorConfig::default();
        let now = 1_000_000;
        let states = [
            PairState::Healthy,
            PairState::Suspect,
            PairState::Degraded,
            PairState::Rebuilding,
            PairState::Blocked,
            PairState::Paused,
        ];
        let silences = [0, 50, 200, 400, 700, 780, 800, 820, 900, 999, 1000, 1500];
        let mut calm_seen = 0;
        let mut rebuilding_calm = 0;
        for state in states {
            for &ss in &silences {
                for &bs in &silences {
                    for (sc, bc) in [(true, true), (false, true), (true, false)] {
                        for (lost, probe, syncing) in grid_extras() {
                            let (p, sv, sb) = case(state, (ss, sc), (bs, bc), lost, probe, syncing);
                            let dec = decide(&p, &sv, &sb, now, &cfg);
                            let Some(d) = calm_for(&p, &sv, &sb, &dec.action, &cfg, CAP) else {
                                continue;
                            };
                            calm_seen += 1;
                            rebuilding_calm +=
                                usize::from(state == PairState::Rebuilding && syncing);
                            assert!(
                                matches!(state, PairState::Healthy | PairState::Rebuilding),
                                "{state}"
                            );
                            assert!(d <= CAP);
                            decides_the_same_while_calm(
                                &p,
                                &sv,
                                &sb,
                                now,
                                d,
                                &dec.action,
                                &cfg,
                                &|| {
                                    format!("{state} serving {ss} ms {sc}, standby {bs} ms {bc} lost {lost:?}, probe {probe:?}, resync {syncing}")
                                },
                            );
                        }
                    }
                }
            }
        }
        assert!(calm_seen > 50, "the grid has calm pairs: {calm_seen}");
        assert!(
            rebuilding_calm > 10,
            "resyncing pairs are calm too: {rebuilding_calm}"
        );
    }

    /// `decide` does `expected` at every 10 ms of a calm of `d` from `t0`,
    /// the views aged as much; `what` names the case when it does not.
    #[allow(clippy::too_many_arguments)]
    fn decides_the_same_while_calm(
        p: &PairRecord,
        sv: &AgentView,
        sb: &AgentView,
        t0: i64,
        d: Duration,
        expected: &Action,
        cfg: &DetectorConfig,
        what: &dyn Fn() -> String,
    ) {
        for t in (0..=d.as_millis() as u64).step_by(10) {
            let later = decide(p, &aged(sv, t), &aged(sb, t), t0 + t as i64, cfg);
            assert_eq!(
                &later.action,
                expected,
                "{}: after {t} ms of a {d:?} calm: {}",
                what(),
                later.reason
            );
        }
    }

    /// A pair in `state` and its agents' views: the serving and the standby
    /// agent's (silence, connected), the standby's peer loss, the serving
    /// one's probe answer, and whether the backup resynchronises.
    fn case(
        state: PairState,
        (ss, sc): (u64, bool),
        (bs, bc): (u64, bool),
        lost: Option<u64>,
        probe: Option<u64>,
        syncing: bool,
    ) -> (PairRecord, AgentView, AgentView) {
        let mut sv = view("Primary", ss, sc, None);
        sv.probe_answered_ms = probe;
        let mut sb = view("Secondary", bs, bc, lost);
        if syncing {
            resyncing(&mut sv, &mut sb);
        }
        (pair(state), sv, sb)
    }

    /// The grid's other axes: the standby's peer loss, the serving server's
    /// probe answer, and whether the backup is resynchronising.
    fn grid_extras() -> Vec<(Option<u64>, Option<u64>, bool)> {
        let mut out = Vec::new();
        for lost in [None, Some(0), Some(400)] {
            for probe in [None, Some(10)] {
                for syncing in [false, true] {
                    out.push((lost, probe, syncing));
                }
            }
        }
        out
    }

    /// Both views as while the backup resynchronises from the serving
    /// Primary (SyncSource / SyncTarget, 1 MiB to go).
    fn resyncing(sv: &mut AgentView, sb: &mut AgentView) {
        let conn = |v: &AgentView| {
            v.drbd
                .as_ref()
                .map(|d| d.connection.clone())
                .unwrap_or_default()
        };
        let (sc, bc) = (conn(sv), conn(sb));
        sv.drbd = Some(sum(
            "Primary",
            "UpToDate",
            &sc,
            "SyncSource",
            "Inconsistent",
            Some(1 << 20),
        ));
        sb.drbd = Some(sum(
            "Secondary",
            "Inconsistent",
            &bc,
            "SyncTarget",
            "UpToDate",
            Some(1 << 20),
        ));
    }

    /// What `sweep::Sweep` relies on to renew a calm from the silence alone:
    /// a pair calm once, whose agents were heard of since only through
    /// heartbeats (any silence, any probe answer age, nothing else changed),
    /// decides the same for as long as `calm_margin` of its new silence says,
    /// over the same grid.
    #[test]
    fn a_calm_pair_renewed_from_its_silence_alone_decides_the_same_for_the_renewal() {
        let cfg = DetectorConfig::default();
        let now = 1_000_000;
        let silences = [0, 50, 200, 400, 700, 780, 800, 820, 900, 999, 1000, 1500];
        let mut renewed = 0;
        for (state, syncing, &ss, &bs, probe) in [PairState::Healthy, PairState::Rebuilding]
            .into_iter()
            .flat_map(|st| [(st, false), (st, true)])
            .flat_map(|(st, sy)| silences.iter().map(move |ss| (st, sy, ss)))
            .flat_map(|(st, sy, ss)| silences.iter().map(move |bs| (st, sy, ss, bs)))
            .flat_map(|(st, sy, ss, bs)| [None, Some(10)].map(|pr| (st, sy, ss, bs, pr)))
        {
            let (p, sv, sb) = case(state, (ss, true), (bs, true), None, probe, syncing);
            let dec = decide(&p, &sv, &sb, now, &cfg);
            if calm_for(&p, &sv, &sb, &dec.action, &cfg, CAP).is_none() {
                continue;
            }
            for &ss2 in &silences {
                for &bs2 in &silences {
                    for probe2 in [None, Some(10), Some(3_000), Some(60_000)] {
                        let Some(d) = calm_margin(ss2.max(bs2), &cfg, CAP) else {
                            continue;
                        };
                        renewed += 1;
                        let sv2 = AgentView {
                            silent_ms: Some(ss2),
                            probe_answered_ms: probe2,
                            ..sv.clone()
                        };
                        let sb2 = AgentView {
                            silent_ms: Some(bs2),
                            ..sb.clone()
                        };
                        decides_the_same_while_calm(
                            &p,
                            &sv2,
                            &sb2,
                            now + 60_000,
                            d,
                            &dec.action,
                            &cfg,
                            &|| {
                                format!("{state}, resync {syncing}: calm at {ss}/{bs} ms, renewed at {ss2}/{bs2} ms, probe {probe2:?}")
                            },
                        );
                    }
                }
            }
        }
        assert!(renewed > 100, "the grid renews calms: {renewed}");
    }

    #[test]
    fn anything_in_flight_or_on_a_clock_is_never_calm() {
        let cfg = DetectorConfig::default();
        let (sv, sb) = (
            view("Primary", 10, true, None),
            view("Secondary", 10, true, None),
        );
        let base = pair(PairState::Healthy);
        assert_eq!(
            calm_for(&base, &sv, &sb, &Action::Nothing, &cfg, CAP),
            Some(Duration::from_millis(1000 - 10 - CALM_SPARE_MS).min(CAP))
        );
        let edits: Vec<(&str, Box<dyn Fn(&mut PairRecord)>)> = vec![
            (
                "outdated",
                Box::new(|p| {
                    p.outdated = Some(crate::state::OutdatedMark {
                        server: "p-b".into(),
                        lost_peer_unix_ms: 1,
                        primary_alive_unix_ms: 2,
                        source: "test".into(),
                    })
                }),
            ),
            (
                "scheduled",
                Box::new(|p| {
                    p.ops.scheduled = Some(crate::state::ScheduledSwitchover {
                        to: "p-b".into(),
                        at_unix_ms: 5,
                        by: "alice".into(),
                    })
                }),
            ),
            (
                "maintenance",
                Box::new(|p| {
                    p.ops.maintenance = Some(crate::state::Maintenance {
                        until_unix_ms: 10,
                        reason: "r".into(),
                        by: "b".into(),
                    })
                }),
            ),
            (
                "hold-off",
                Box::new(|p| p.last_auto_failover_unix_ms = Some(1)),
            ),
            (
                "spare",
                Box::new(|p| {
                    p.redundancy.spare = Some(crate::state::SpareRecord {
                        token: "t".into(),
                        server_id: "p-s1".into(),
                        reason: "pre-spin".into(),
                        requested_unix_ms: 1,
                        instance: None,
                        terminating: false,
                    })
                }),
            ),
        ];
        for (what, edit) in edits {
            let mut p = base.clone();
            edit(&mut p);
            assert_eq!(
                calm_for(&p, &sv, &sb, &Action::Nothing, &cfg, CAP),
                None,
                "{what}"
            );
        }
        let busy = Action::ResumePlan;
        assert_eq!(calm_for(&base, &sv, &sb, &busy, &cfg, CAP), None);
        // Silence near the bound, a disconnected agent, a lost DRBD peer.
        let near = view("Primary", 850, true, None);
        assert_eq!(
            calm_for(&base, &near, &sb, &Action::Nothing, &cfg, CAP),
            None
        );
        let off = view("Secondary", 10, false, None);
        assert_eq!(
            calm_for(&base, &sv, &off, &Action::Nothing, &cfg, CAP),
            None
        );
        let lost = view("Secondary", 10, true, Some(0));
        assert_eq!(
            calm_for(&base, &sv, &lost, &Action::Nothing, &cfg, CAP),
            None
        );
    }
}
