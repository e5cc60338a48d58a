//! What the leader concludes from the latest agent reports: a pure function.
//!
//! [`observe`] takes a pair's replicated record and a plain-data view of its two
//! agents and returns the state the pair should move to (if any) and the alerts to
//! show, each with its reason as text. It does no I/O and reads no clock (ages are
//! inputs), so every case is a unit test.
//!
//! This covers the monitoring transitions (`Rebuilding` <-> `Healthy`), the
//! single-witness alerts of S2, and the agents' failed self-checks (errors, then
//! warnings marked as such, each with the agent's fix). Automatic failover, the decision that acts on two
//! witnesses, belongs to the failure detector and is out of this module's scope.

use understudy_proto::DrbdSummary;

use crate::state::{PairRecord, PairState};

/// The leader's view of one agent, reduced to plain data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentView {
    /// An agent session is open to the leader.
    pub connected: bool,
    /// Milliseconds since anything was heard from it; `None` if never.
    pub silent_ms: Option<u64>,
    /// Its latest DRBD summary for the pair's resource, if reported.
    pub drbd: Option<DrbdSummary>,
    /// DRBD observer error reported by the agent (empty if none).
    pub observer_error: String,
    /// Unknown DRBD words/keys the agent reported.
    pub unknown: Vec<String>,
    /// Milliseconds its DRBD connection has not been `Connected`; `None` if connected.
    pub peer_lost_ms: Option<u64>,
    /// Its last DRBD summary while still connected to the peer.
    pub last_connected: Option<DrbdSummary>,
    /// What it reports of its host (mount, exports, client IP).
    pub host: Option<understudy_proto::HostStatus>,
    /// The highest pair epoch the agent said (in its Hello) it has accepted (S4);
    /// `None` if it never said hello to this leader.
    pub highest_epoch: Option<u64>,
    /// `drbd` and `host` come from a report of an earlier session: the agent
    /// reconnected (maybe restarted) and has not reported on this one yet.
    pub stale_report: bool,
    /// Milliseconds since its last report was received; `None` if none.
    pub report_age_ms: Option<u64>,
    /// Milliseconds since it last answered a direct probe (a fresh path, not
    /// its session); `None` if never answered this leader.
    pub probe_answered_ms: Option<u64>,
}

/// Result of [`observe`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Move the pair to this state, for this reason.
    pub transition: Option<(PairState, String)>,
    /// Alerts to show now (not replicated; recomputed on every report).
    pub alerts: Vec<String>,
}

impl AgentView {
    /// A session is open and it was heard from within `timeout_ms`.
    pub fn reachable(&self, timeout_ms: u64) -> bool {
        self.connected && self.silent_ms.is_some_and(|s| s <= timeout_ms)
    }

    /// Not heard from for longer than the agent timeout (a new leader counts from
    /// the start of its leadership): its last report is stale, not the truth.
    pub fn gone(&self, timeout_ms: u64) -> bool {
        self.silent_ms.is_none_or(|s| s > timeout_ms)
    }
}

fn secs(ms: Option<u64>) -> String {
    ms.map(|m| format!("{:.1} s", m as f64 / 1000.0))
        .unwrap_or_else(|| "ever".into())
}

/// Whether the backup holds a complete, current copy (the S1 test on one report).
pub fn backup_in_sync(b: &DrbdSummary) -> bool {
    b.disk == "UpToDate"
        && b.connection == "Connected"
        && b.replication == "Established"
        && b.peer_disk == "UpToDate"
        && b.out_of_sync_bytes == Some(0)
}

/// The server's DRBD has no disk under it: `Diskless` (DRBD detached the
/// backing storage after an I/O error, `on-io-error detach`, or it was never
/// attached), `Failed` or `Detaching` on the way there. Such a backup holds
/// no copy at all: it protects nothing and can never be promoted (S1).
/// (`Attaching` is on the way back, not counted.)
pub fn has_no_disk(d: &DrbdSummary) -> bool {
    matches!(d.disk.as_str(), "Diskless" | "Failed" | "Detaching")
}

/// What a server serves according to its latest report: DRBD `Primary`, the
/// replicated filesystem mounted, NFS exported, the client IP configured. Empty when
/// it serves nothing. On the standby, anything here is the S10 evidence.
pub fn serving_state(v: &AgentView) -> Vec<&'static str> {
    let mut what = Vec::new();
    if v.drbd.as_ref().is_some_and(|d| d.role == "Primary") {
        what.push("Primary");
    }
    if let Some(h) = &v.host {
        if h.mounted {
            what.push("mounted");
        }
        if !h.exports.is_empty() {
            what.push("exporting");
        }
        if h.client_ip_present {
            what.push("holding the client IP");
        }
    }
    what
}

/// Alerts for the failed self-checks in an agent's last report: errors first
/// (a check without a severity, from an older agent, counts as one), then
/// warnings, each with the fix the agent suggests.
pub fn self_check_alerts(id: &str, host: &understudy_proto::HostStatus) -> Vec<String> {
    let failed = |warning: bool| {
        host.self_checks
            .iter()
            .filter(move |c| !c.ok && (c.severity == "warning") == warning)
    };
    let fix = |c: &understudy_proto::SelfCheck| {
        if c.fix.is_empty() {
            String::new()
        } else {
            format!("; fix: {}", c.fix)
        }
    };
    failed(false)
        .map(|c| format!("{id}: self-check {} failed: {}{}", c.name, c.detail, fix(c)))
        .chain(failed(true).map(|c| {
            format!(
                "{id}: self-check warning: {}: {}{}",
                c.name,
                c.detail,
                fix(c)
            )
        }))
        .collect()
}

/// The S10 alert: the standby `b_id` reports serving state (see [`serving_state`]).
fn standby_serving_alert(
    pair: &PairRecord,
    b_id: &str,
    backup: &AgentView,
    reachable: bool,
) -> Option<String> {
    let what = serving_state(backup);
    if what.is_empty()
        || matches!(
            pair.state,
            PairState::FailingOver | PairState::SwitchingOver
        )
    {
        return None;
    }
    let stale = match backup.highest_epoch {
        Some(e) if e < pair.epoch => {
            format!(
                " (stale: it said hello with epoch {e}, the pair's is {})",
                pair.epoch
            )
        }
        _ => String::new(),
    };
    let what = what.join("/");
    Some(match (reachable, pair.state) {
        (_, PairState::Paused | PairState::Blocked) => format!(
            "STANDBY SERVING: {b_id} is {what}{stale}, but the pair is {}: not standing it down automatically; stand it down by hand (release the IP, unexport, unmount, `drbdadm secondary`, `drbdadm connect --discard-my-data`)",
            pair.state
        ),
        (true, _) if backup.stale_report => format!(
            "STANDBY SERVING: {b_id} was {what} at its last report; its agent reconnected and has not reported yet"
        ),
        (true, _) => format!("STANDBY SERVING: {b_id} is {what}{stale}: standing it down"),
        (false, _) => format!(
            "STANDBY SERVING: {b_id} was {what} at its last report and its agent is unreachable: it is stood down as soon as it returns; until then only the fence keeps clients away from it"
        ),
    })
}

/// Decide what the pair's state should be, and which alerts hold, now.
/// `primary` is the agent of the server holding the primary role now
/// ([`PairRecord::serving_id`]), `backup` the other one.
pub fn observe(
    pair: &PairRecord,
    primary: &AgentView,
    backup: &AgentView,
    agent_timeout_ms: u64,
) -> Observation {
    let mut alerts = Vec::new();
    let p_up = primary.reachable(agent_timeout_ms);
    let b_up = backup.reachable(agent_timeout_ms);
    let (p_id, b_id) = (pair.serving_id(), pair.standby_id());
    let b_drbd = backup.drbd.as_ref().filter(|_| b_up);
    let p_drbd = primary.drbd.as_ref().filter(|_| p_up);

    // S2's single witnesses: each alone is an alert, never a failover.
    if !p_up {
        match b_drbd {
            Some(b) if b.connection == "Connected" => alerts.push(format!(
                "agent unreachable, data path healthy: no word from {p_id}'s agent, but {b_id} still replicates from it"
            )),
            Some(b) => alerts.push(format!(
                "primary {p_id} unreachable and {b_id} reports its DRBD connection {}",
                b.connection
            )),
            None => alerts.push(format!("primary {p_id}'s agent is unreachable")),
        }
    }
    if !b_up {
        alerts.push(format!(
            "backup {b_id}'s agent is unreachable (silent for {}): its last report is stale, not current",
            secs(backup.silent_ms)
        ));
    }
    if p_up && b_up {
        if let Some(b) = b_drbd {
            if b.connection != "Connected" {
                alerts.push(format!(
                    "replication down, running unprotected: both agents answer but {b_id}'s DRBD connection is {}",
                    b.connection
                ));
            }
        }
    }
    for (id, v) in [(p_id, primary), (b_id, backup)] {
        if !v.observer_error.is_empty() {
            alerts.push(format!("{id}: DRBD observer: {}", v.observer_error));
        }
        if !v.unknown.is_empty() {
            alerts.push(format!(
                "{id}: DRBD reported words this version does not know: {}",
                v.unknown.join(", ")
            ));
        }
        if let Some(h) = &v.host {
            alerts.extend(self_check_alerts(id, h));
        }
    }
    alerts.extend(standby_serving_alert(pair, b_id, backup, b_up));
    for (id, d) in [(p_id, p_drbd), (b_id, b_drbd)] {
        if let Some(d) = d.filter(|d| has_no_disk(d)) {
            alerts.push(format!(
                "{id}'s DRBD disk is {}: its backing storage failed and DRBD detached it (on-io-error detach); fix the storage (a full disk: free space), then `drbdadm attach {}` on {id}",
                d.disk, pair.spec.resource
            ));
        }
    }
    if let Some(p) = p_drbd {
        if p.role != "Primary" {
            alerts.push(format!(
                "{p_id} is the pair's file server but its DRBD role is {}",
                p.role
            ));
        }
    }

    // A backup that is gone leaves the pair serving without protection: never
    // Healthy, and not Rebuilding either (nothing is resynchronising).
    let b_gone = backup.gone(agent_timeout_ms);
    let transition = match pair.state {
        PairState::Healthy | PairState::Rebuilding if b_gone => Some((
            PairState::Degraded,
            format!(
                "backup {b_id} is gone (its agent silent for {}{}): serving from {p_id} without protection",
                secs(backup.silent_ms),
                match p_drbd {
                    Some(p) => format!(
                        "; {p_id}'s DRBD connection to it is {}, peer disk {}",
                        p.connection, p.peer_disk
                    ),
                    None => String::new(),
                }
            ),
        )),
        // Connected but without a disk (detached after an I/O error): no
        // copy at all, and nothing resynchronises until it is attached again.
        PairState::Healthy | PairState::Rebuilding
            if b_drbd.is_some_and(|b| b.connection == "Connected" && has_no_disk(b)) =>
        {
            Some((
                PairState::Degraded,
                format!(
                    "backup {b_id}'s DRBD disk is {} (its backing storage failed, DRBD detached it): serving from {p_id} without protection until it is attached again",
                    b_drbd.map(|b| b.disk.as_str()).unwrap_or_default()
                ),
            ))
        }
        PairState::Rebuilding => match b_drbd {
            Some(b) if backup_in_sync(b) => Some((
                PairState::Healthy,
                format!("{b_id} is UpToDate, connected and in sync"),
            )),
            _ => None,
        },
        // A disconnected backup is a witness (Suspect, decided by the failure
        // detector), not a resync.
        PairState::Healthy => match b_drbd.filter(|b| b.connection == "Connected") {
            Some(b) if b.disk != "UpToDate" || b.replication.starts_with("Sync") => Some((
                PairState::Rebuilding,
                format!(
                    "{b_id} is {} ({}{})",
                    b.disk,
                    b.replication,
                    b.done_percent
                        .map(|d| format!(" {d:.1}% done"))
                        .unwrap_or_default()
                ),
            )),
            _ => None,
        },
        // Other states are driven by failover, operators or maintenance.
        _ => None,
    };
    Observation { transition, alerts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{pair, sum};

    fn drbd(role: &str, disk: &str, conn: &str, repl: &str, pdisk: &str, oos: u64) -> DrbdSummary {
        sum(role, disk, conn, repl, pdisk, Some(oos))
    }

    fn up(d: DrbdSummary) -> AgentView {
        AgentView {
            connected: true,
            silent_ms: Some(10),
            drbd: Some(d),
            ..Default::default()
        }
    }

    fn primary_ok() -> AgentView {
        up(drbd(
            "Primary",
            "UpToDate",
            "Connected",
            "Established",
            "UpToDate",
            0,
        ))
    }
    fn backup_ok() -> AgentView {
        up(drbd(
            "Secondary",
            "UpToDate",
            "Connected",
            "Established",
            "UpToDate",
            0,
        ))
    }

    #[test]
    fn rebuilding_becomes_healthy_only_when_backup_fully_in_sync() {
        let o = observe(
            &pair(PairState::Rebuilding),
            &primary_ok(),
            &backup_ok(),
            1000,
        );
        assert_eq!(o.transition.unwrap().0, PairState::Healthy);
        assert!(o.alerts.is_empty(), "{:?}", o.alerts);

        let not_yet = [
            drbd(
                "Secondary",
                "Inconsistent",
                "Connected",
                "SyncTarget",
                "UpToDate",
                0,
            ),
            drbd(
                "Secondary",
                "UpToDate",
                "Connected",
                "Established",
                "UpToDate",
                4096,
            ),
            drbd("Secondary", "UpToDate", "Connecting", "Off", "DUnknown", 0),
            drbd(
                "Secondary",
                "Outdated",
                "Connected",
                "Established",
                "UpToDate",
                0,
            ),
        ];
        for d in not_yet {
            let o = observe(
                &pair(PairState::Rebuilding),
                &primary_ok(),
                &up(d.clone()),
                1000,
            );
            assert_eq!(o.transition, None, "{d:?}");
        }
        // Unknown out-of-sync (an underflowed counter) is not "in sync".
        let mut d = backup_ok();
        d.drbd.as_mut().unwrap().out_of_sync_bytes = None;
        assert_eq!(
            observe(&pair(PairState::Rebuilding), &primary_ok(), &d, 1000).transition,
            None
        );
    }

    #[test]
    fn healthy_becomes_rebuilding_when_backup_resyncs() {
        let mut d = drbd(
            "Secondary",
            "Inconsistent",
            "Connected",
            "SyncTarget",
            "UpToDate",
            1 << 20,
        );
        d.done_percent = Some(42.0);
        let o = observe(&pair(PairState::Healthy), &primary_ok(), &up(d), 1000);
        let (s, why) = o.transition.unwrap();
        assert_eq!(s, PairState::Rebuilding);
        assert!(why.contains("42.0% done"), "{why}");
    }

    #[test]
    fn controller_only_loss_is_an_alert_not_a_transition() {
        let silent = AgentView {
            connected: false,
            silent_ms: Some(5000),
            ..primary_ok()
        };
        let o = observe(&pair(PairState::Healthy), &silent, &backup_ok(), 1000);
        assert_eq!(o.transition, None);
        assert!(
            o.alerts[0].starts_with("agent unreachable, data path healthy"),
            "{:?}",
            o.alerts
        );
    }

    #[test]
    fn drbd_only_loss_is_running_unprotected() {
        let p = up(drbd(
            "Primary",
            "UpToDate",
            "Connecting",
            "Off",
            "DUnknown",
            0,
        ));
        let b = up(drbd(
            "Secondary",
            "UpToDate",
            "Connecting",
            "Off",
            "DUnknown",
            0,
        ));
        let o = observe(&pair(PairState::Healthy), &p, &b, 1000);
        assert_eq!(o.transition, None);
        assert!(
            o.alerts
                .iter()
                .any(|a| a.starts_with("replication down, running unprotected")),
            "{:?}",
            o.alerts
        );
    }

    #[test]
    fn a_backup_without_a_disk_degrades_the_pair() {
        for disk in ["Diskless", "Failed", "Detaching"] {
            let b = AgentView {
                drbd: Some(drbd(
                    "Secondary",
                    disk,
                    "Connected",
                    "Established",
                    "UpToDate",
                    0,
                )),
                ..backup_ok()
            };
            for state in [PairState::Healthy, PairState::Rebuilding] {
                let o = observe(&pair(state), &primary_ok(), &b, 1000);
                let (to, why) = o.transition.expect("a transition");
                assert_eq!(to, PairState::Degraded, "{state} {disk}");
                assert!(
                    why.starts_with(&format!("backup b's DRBD disk is {disk}")),
                    "{why}"
                );
                assert!(
                    o.alerts
                        .iter()
                        .any(|a| a.starts_with(&format!("b's DRBD disk is {disk}"))
                            && a.contains("drbdadm attach")),
                    "{:?}",
                    o.alerts
                );
            }
        }
        // Attaching again: on the way back, resynchronising.
        let b = AgentView {
            drbd: Some(drbd(
                "Secondary",
                "Inconsistent",
                "Connected",
                "SyncTarget",
                "UpToDate",
                4096,
            )),
            ..backup_ok()
        };
        assert_eq!(
            observe(&pair(PairState::Healthy), &primary_ok(), &b, 1000)
                .transition
                .map(|t| t.0),
            Some(PairState::Rebuilding)
        );
    }

    #[test]
    fn other_states_are_left_alone() {
        for s in [
            PairState::Blocked,
            PairState::Paused,
            PairState::FailingOver,
            PairState::Degraded,
            PairState::SwitchingOver,
            PairState::Suspect,
        ] {
            assert_eq!(
                observe(&pair(s), &primary_ok(), &backup_ok(), 1000).transition,
                None
            );
        }
    }

    #[test]
    fn a_stale_report_counts_as_unreachable() {
        let stale = AgentView {
            silent_ms: Some(1001),
            ..backup_ok()
        };
        // Its last report said in sync, but it is stale: the pair serves without
        // protection, neither Healthy nor Rebuilding.
        for state in [PairState::Rebuilding, PairState::Healthy] {
            let o = observe(&pair(state), &primary_ok(), &stale, 1000);
            let (to, why) = o.transition.expect("a transition");
            assert_eq!(to, PairState::Degraded, "{state}");
            assert!(
                why.starts_with("backup b is gone (its agent silent for 1.0 s"),
                "{why}"
            );
            assert!(o.alerts.iter().any(|a| a.contains(
                "backup b's agent is unreachable (silent for 1.0 s): its last report is stale"
            )));
        }
        // Within the timeout a quiet agent is still current.
        let fresh = AgentView {
            silent_ms: Some(1000),
            ..backup_ok()
        };
        assert_eq!(
            observe(&pair(PairState::Healthy), &primary_ok(), &fresh, 1000).transition,
            None
        );
        // A dead backup, as the file server's own DRBD sees it.
        let mut p = primary_ok();
        p.drbd = Some(drbd(
            "Primary",
            "UpToDate",
            "Connecting",
            "Off",
            "DUnknown",
            0,
        ));
        let gone = AgentView {
            connected: false,
            silent_ms: Some(13_000),
            ..backup_ok()
        };
        let (to, why) = observe(&pair(PairState::Healthy), &p, &gone, 1000)
            .transition
            .unwrap();
        assert_eq!(to, PairState::Degraded);
        assert!(
            why.contains("a's DRBD connection to it is Connecting, peer disk DUnknown"),
            "{why}"
        );
    }

    #[test]
    fn a_standby_that_serves_raises_the_s10_alert() {
        let host = |mounted: bool, export: bool, ip: bool| understudy_proto::HostStatus {
            mounted,
            exports: if export {
                vec!["/export".into()]
            } else {
                vec![]
            },
            client_ip_present: ip,
            self_checks: vec![],
            serving_managed: true,
            ..Default::default()
        };
        let mut b = up(drbd(
            "Primary",
            "UpToDate",
            "StandAlone",
            "Off",
            "DUnknown",
            0,
        ));
        b.host = Some(host(true, true, true));
        b.highest_epoch = Some(2);
        let o = observe(&pair(PairState::Degraded), &primary_ok(), &b, 1000);
        assert!(
            o.alerts.contains(&"STANDBY SERVING: b is Primary/mounted/exporting/holding the client IP (stale: it said hello with epoch 2, the pair's is 3): standing it down".to_string()),
            "{:?}",
            o.alerts
        );
        // Every single piece of serving state is enough, and named.
        for (role, h, want) in [
            ("Primary", host(false, false, false), "is Primary"),
            ("Secondary", host(true, false, false), "is mounted"),
            ("Secondary", host(false, true, false), "is exporting"),
            (
                "Secondary",
                host(false, false, true),
                "is holding the client IP",
            ),
        ] {
            let mut b = backup_ok();
            b.drbd.as_mut().unwrap().role = role.into();
            b.host = Some(h);
            let o = observe(&pair(PairState::Healthy), &primary_ok(), &b, 1000);
            let a: Vec<&String> = o
                .alerts
                .iter()
                .filter(|a| a.starts_with("STANDBY SERVING: b"))
                .collect();
            assert_eq!(a.len(), 1, "{:?}", o.alerts);
            assert!(a[0].contains(want), "{a:?}");
        }
        // Reconnected, not reported yet: from the last report, saying so.
        let mut reconnected = b.clone();
        reconnected.stale_report = true;
        let o = observe(
            &pair(PairState::Degraded),
            &primary_ok(),
            &reconnected,
            1000,
        );
        assert!(
            o.alerts.iter().any(|a| a.starts_with("STANDBY SERVING: b was Primary/mounted/exporting/holding the client IP at its last report; its agent reconnected")),
            "{:?}",
            o.alerts
        );
        // Unreachable: the last report still raises it, saying so.
        let mut silent = b.clone();
        silent.connected = false;
        silent.silent_ms = Some(60_000);
        let o = observe(&pair(PairState::Degraded), &primary_ok(), &silent, 1000);
        assert!(
            o.alerts.iter().any(|a| a.starts_with("STANDBY SERVING: b was Primary/mounted/exporting/holding the client IP at its last report and its agent is unreachable")),
            "{:?}",
            o.alerts
        );
        // Paused or Blocked: the alert tells the operator to act.
        let o = observe(&pair(PairState::Blocked), &primary_ok(), &b, 1000);
        assert!(
            o.alerts
                .iter()
                .any(|a| a.contains("not standing it down automatically")),
            "{:?}",
            o.alerts
        );
        // During a failover the target serving is the plan, not an alert.
        let o = observe(&pair(PairState::FailingOver), &primary_ok(), &b, 1000);
        assert!(
            !o.alerts.iter().any(|a| a.starts_with("STANDBY SERVING")),
            "{:?}",
            o.alerts
        );
        // A standby serving nothing: no alert.
        let mut quiet = backup_ok();
        quiet.host = Some(host(false, false, false));
        let o = observe(&pair(PairState::Healthy), &primary_ok(), &quiet, 1000);
        assert!(o.alerts.is_empty(), "{:?}", o.alerts);
    }

    #[test]
    fn failed_self_checks_are_alerts_with_their_fix() {
        let check = |name: &str, ok: bool, severity: &str, fix: &str| understudy_proto::SelfCheck {
            name: name.into(),
            ok,
            detail: format!("{name} detail"),
            severity: severity.into(),
            fix: fix.into(),
        };
        let mut p = primary_ok();
        p.host = Some(understudy_proto::HostStatus {
            self_checks: vec![
                check("agent_config", true, "", ""),
                check("fence_peer_handler", false, "warning", "chmod go-w /h"),
                check("drbdadm", false, "error", "chmod 755 /usr/sbin/drbdadm"),
                check("ganesha_answers", false, "", ""),
            ],
            ..Default::default()
        });
        let o = observe(&pair(PairState::Healthy), &p, &backup_ok(), 1000);
        assert_eq!(o.transition, None, "an alert, not a state change");
        assert_eq!(
            o.alerts,
            [
                "a: self-check drbdadm failed: drbdadm detail; fix: chmod 755 /usr/sbin/drbdadm",
                "a: self-check ganesha_answers failed: ganesha_answers detail",
                "a: self-check warning: fence_peer_handler: fence_peer_handler detail; fix: chmod go-w /h",
            ]
        );
        // The backup's are shown too, under its name.
        let mut b = backup_ok();
        b.host = p.host.clone();
        let o = observe(&pair(PairState::Healthy), &primary_ok(), &b, 1000);
        assert_eq!(o.alerts.len(), 3);
        assert!(
            o.alerts.iter().all(|a| a.starts_with("b: self-check")),
            "{:?}",
            o.alerts
        );
    }

    #[test]
    fn unknown_words_and_observer_errors_are_shown() {
        let mut p = primary_ok();
        p.unknown = vec!["device.disk=Frobnicated".into()];
        p.observer_error = "drbdsetup exited with status 10".into();
        let o = observe(&pair(PairState::Healthy), &p, &backup_ok(), 1000);
        assert!(o.alerts.iter().any(|a| a.contains("Frobnicated")));
        assert!(o.alerts.iter().any(|a| a.contains("exited with status 10")));
    }
}
