//! What the leader concludes from the latest agent reports: a pure function.
//!
//! [`observe`] takes a pair's replicated record and a plain-data view of its two
//! agents and returns the state the pair should move to (if any) and the alerts to
//! show, each with its reason as text. It does no I/O and reads no clock (ages are
//! inputs), so every case is a unit test.
//!
//! This covers the monitoring transitions (`Rebuilding` <-> `Healthy`) and the
//! single-witness alerts of S2. Automatic failover, the decision that acts on two
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
    fn reachable(&self, timeout_ms: u64) -> bool {
        self.connected && self.silent_ms.is_some_and(|s| s <= timeout_ms)
    }
}

/// Whether the backup holds a complete, current copy (the S1 test on one report).
pub fn backup_in_sync(b: &DrbdSummary) -> bool {
    b.disk == "UpToDate"
        && b.connection == "Connected"
        && b.replication == "Established"
        && b.peer_disk == "UpToDate"
        && b.out_of_sync_bytes == Some(0)
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
        alerts.push(format!("backup {b_id}'s agent is unreachable"));
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
    }
    if let Some(p) = p_drbd {
        if p.role != "Primary" {
            alerts.push(format!(
                "{p_id} is the pair's file server but its DRBD role is {}",
                p.role
            ));
        }
    }

    let transition = match pair.state {
        PairState::Rebuilding => match b_drbd {
            Some(b) if backup_in_sync(b) => Some((
                PairState::Healthy,
                format!("{b_id} is UpToDate, connected and in sync"),
            )),
            _ => None,
        },
        PairState::Healthy => match b_drbd {
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
        let o = observe(&pair(PairState::Rebuilding), &primary_ok(), &stale, 1000);
        assert_eq!(o.transition, None);
        assert!(o
            .alerts
            .iter()
            .any(|a| a.contains("backup b's agent is unreachable")));
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
