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

use crate::observe::{backup_in_sync, observe, AgentView, Observation};
use crate::state::{PairRecord, PairState, Step};

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
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            primary_silence_ms: 1000,
            peer_loss_ms: 500,
            agent_timeout_ms: 1000,
            flap_holdoff_ms: 10 * 60 * 1000,
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
    let standby_up =
        standby.connected && standby.silent_ms.is_some_and(|s| s <= cfg.agent_timeout_ms);
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

    let standby_up =
        standby.connected && standby.silent_ms.is_some_and(|s| s <= cfg.agent_timeout_ms);
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
        if let Some(last) = pair.last_auto_failover_unix_ms {
            let ago = now_unix_ms.saturating_sub(last);
            if !pair.flap_acknowledged && ago < cfg.flap_holdoff_ms as i64 {
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
            format!(
                "agent unreachable, data path healthy: {s_id}'s agent silent for {}, but {b_id} still replicates from it",
                ms(serving.silent_ms)
            )
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
    let serving_up =
        serving.connected && serving.silent_ms.is_some_and(|s| s <= cfg.agent_timeout_ms);
    if let (true, Some(dr), Some(h)) = (serving_up, serving.drbd.as_ref(), serving.host.as_ref()) {
        if h.serving_managed && dr.role == "Primary" {
            let mut missing = Vec::new();
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
        PairState::Suspect if in_sync => d(
            Action::SetState(PairState::Healthy),
            format!("witness cleared: {b_id} is connected and in sync again"),
        ),
        PairState::Suspect => d(
            Action::SetState(PairState::Rebuilding),
            format!("witness cleared, but {b_id} is not in sync yet"),
        ),
        PairState::Degraded => match standby.drbd.as_ref().filter(|_| standby_up) {
            Some(b) if b.connection == "Connected" && b.role == "Secondary" => d(
                Action::SetState(PairState::Rebuilding),
                format!("{b_id} is back as a Secondary and connected: resynchronising"),
            ),
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

    #[test]
    fn replication_only_loss_is_running_unprotected() {
        let dec = decide(
            &pair(PairState::Healthy),
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
        p.last_auto_failover_unix_ms = Some(NOW - 11 * 60_000);
        assert!(matches!(
            decide(&p, &args.0, &args.1, NOW, &cfg()).action,
            Action::StartFailover { .. }
        ));
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
                                if let Action::StartFailover { .. } = dec.action {
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
                                    assert_eq!(dec.action, Action::Nothing);
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(n > 5000, "{n}");
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
        // A Secondary is never brought up.
        s.host.as_mut().unwrap().serving_managed = true;
        s.drbd.as_mut().unwrap().role = "Secondary".into();
        assert_eq!(
            decide(&pair(PairState::Healthy), &s, &b, NOW, &cfg()).action,
            Action::Nothing
        );
    }
}
