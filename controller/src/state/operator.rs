//! Replicated state of operator commands (SPEC §5 planned switchover, §6; S5, S8):
//! pause and resume, maintenance windows, acknowledging the flap hold-off,
//! unblocking, manual promotion (forced or not), switchover now or scheduled,
//! and the audit log: every accepted or refused operator command with who asked
//! and the outcome, committed to Raft so it survives the loss of any leader.

use serde::{Deserialize, Serialize};

use super::{fmt_unix_ms, refused, ClusterState, FailoverPlan, PairState, Response, Step};

/// Audit entries kept (oldest dropped first).
pub const AUDIT_LIMIT: usize = 1000;

/// A pair paused by an operator: no automatic action until resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// The state to return to on resume.
    pub from: PairState,
    pub by: String,
    pub at_unix_ms: i64,
}

/// A maintenance window: planned DRBD disconnects are expected, not alarms, and
/// no automatic failover happens; it ends by itself at `until_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub until_unix_ms: i64,
    pub reason: String,
    pub by: String,
}

/// A switchover scheduled for later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSwitchover {
    pub at_unix_ms: i64,
    pub to: String,
    pub by: String,
}

/// Operator state of a pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operations {
    #[serde(default)]
    pub paused: Option<Pause>,
    #[serde(default)]
    pub maintenance: Option<Maintenance>,
    #[serde(default)]
    pub scheduled: Option<ScheduledSwitchover>,
}

impl Operations {
    /// The maintenance window in force at `now`, if any.
    pub fn maintenance_at(&self, now_unix_ms: i64) -> Option<&Maintenance> {
        self.maintenance
            .as_ref()
            .filter(|m| m.until_unix_ms > now_unix_ms)
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_unix_ms: i64,
    pub identity: String,
    pub pair_id: String,
    pub command: String,
    pub accepted: bool,
    pub outcome: String,
}

/// What an operator asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperatorCommand {
    Pause,
    Resume,
    Maintenance {
        until_unix_ms: i64,
        reason: String,
    },
    EndMaintenance,
    /// Lift the S5 hold-off after an automatic failover.
    Ack,
    /// Clear `Blocked` (the leader checked that it is safe).
    Unblock {
        reason: String,
    },
    /// Manual failover to `to`. `force`: the operator accepted data loss (S8).
    Promote {
        to: String,
        force: bool,
        reason: String,
    },
    /// Planned move to `to` now (SPEC §5); the leader checked the backup.
    Switchover {
        to: String,
    },
    ScheduleSwitchover {
        to: String,
        at_unix_ms: i64,
    },
    CancelSwitchover,
    /// A command the leader refused before proposing (kept for the audit).
    Refused {
        command: String,
        reason: String,
    },
}

impl std::fmt::Display for OperatorCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatorCommand::Pause => f.write_str("pause"),
            OperatorCommand::Resume => f.write_str("resume"),
            OperatorCommand::Maintenance {
                until_unix_ms,
                reason,
            } => write!(
                f,
                "maintenance until {}: {reason}",
                fmt_unix_ms(*until_unix_ms)
            ),
            OperatorCommand::EndMaintenance => f.write_str("end maintenance"),
            OperatorCommand::Ack => f.write_str("ack"),
            OperatorCommand::Unblock { reason } => write!(f, "unblock: {reason}"),
            OperatorCommand::Promote { to, force, .. } => write!(
                f,
                "promote {to}{}",
                if *force {
                    " --force --accept-data-loss"
                } else {
                    ""
                }
            ),
            OperatorCommand::Switchover { to } => write!(f, "switchover to {to}"),
            OperatorCommand::ScheduleSwitchover { to, at_unix_ms } => {
                write!(f, "switchover to {to} at {}", fmt_unix_ms(*at_unix_ms))
            }
            OperatorCommand::CancelSwitchover => f.write_str("cancel scheduled switchover"),
            OperatorCommand::Refused { command, .. } => f.write_str(command),
        }
    }
}

impl ClusterState {
    fn audit(&mut self, e: AuditEntry) {
        let audit = std::sync::Arc::make_mut(&mut self.audit);
        audit.push(e);
        if audit.len() > AUDIT_LIMIT {
            let excess = audit.len() - AUDIT_LIMIT;
            audit.drain(..excess);
        }
    }

    pub(super) fn apply_operator(
        &mut self,
        pair_id: &str,
        identity: &str,
        cmd: &OperatorCommand,
        at: i64,
    ) -> Response {
        let resp = self.operator_inner(pair_id, identity, cmd, at);
        let (accepted, outcome) = match (&resp, cmd) {
            (_, OperatorCommand::Refused { reason, .. }) => (false, reason.clone()),
            (Response::Refused { reason }, _) => (false, reason.clone()),
            (Response::StateChanged { epoch }, _) => (true, format!("done (epoch {epoch})")),
            _ => (true, "done".to_string()),
        };
        if let Some(p) = self.pairs.get_mut(pair_id).map(std::sync::Arc::make_mut) {
            let line = format!(
                "operator {identity}: {cmd}: {}",
                if accepted {
                    "accepted".to_string()
                } else {
                    format!("refused: {outcome}")
                }
            );
            p.record(at, line);
        }
        self.audit(AuditEntry {
            at_unix_ms: at,
            identity: identity.to_string(),
            pair_id: pair_id.to_string(),
            command: cmd.to_string(),
            accepted,
            outcome,
        });
        resp
    }

    fn operator_inner(
        &mut self,
        pair_id: &str,
        identity: &str,
        cmd: &OperatorCommand,
        at: i64,
    ) -> Response {
        let pair = match self.pair_mut(pair_id) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let in_flight = pair.failover.as_ref().map(|f| f.epoch);
        match cmd {
            OperatorCommand::Refused { reason, .. } => refused(reason.clone()),
            OperatorCommand::Pause => {
                if pair.state == PairState::Paused {
                    return Response::StateChanged { epoch: pair.epoch };
                }
                if let Some(e) = in_flight {
                    return refused(format!(
                        "pair {pair_id}: plan epoch {e} is in flight; pause once it has finished"
                    ));
                }
                pair.ops.paused = Some(Pause {
                    from: pair.state,
                    by: identity.to_string(),
                    at_unix_ms: at,
                });
                pair.state = PairState::Paused;
                pair.state_reason = format!("paused by {identity}: no automatic action");
                pair.state_since_unix_ms = at;
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::Resume => {
                let Some(p) = pair.ops.paused.take() else {
                    return refused(format!("pair {pair_id} is not paused"));
                };
                pair.state = p.from;
                pair.state_reason = format!(
                    "resumed by {identity}; the controller decides from the agents' reports again"
                );
                pair.state_since_unix_ms = at;
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::Maintenance {
                until_unix_ms,
                reason,
            } => {
                if *until_unix_ms <= at {
                    return refused("the maintenance window ends before it starts".into());
                }
                pair.ops.maintenance = Some(Maintenance {
                    until_unix_ms: *until_unix_ms,
                    reason: reason.clone(),
                    by: identity.to_string(),
                });
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::EndMaintenance => {
                if pair.ops.maintenance.take().is_none() {
                    return refused(format!("pair {pair_id} has no maintenance window"));
                }
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::Ack => {
                pair.flap_acknowledged = true;
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::Unblock { reason } => {
                if pair.state != PairState::Blocked {
                    return refused(format!("pair {pair_id} is {}, not Blocked", pair.state));
                }
                if let Some(e) = in_flight {
                    return refused(format!("pair {pair_id}: plan epoch {e} is in flight"));
                }
                pair.state = PairState::Suspect;
                pair.state_reason = format!(
                    "unblocked by {identity} ({reason}); the controller decides from the agents' reports again"
                );
                pair.state_since_unix_ms = at;
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::Promote { to, force, reason } => {
                if let Some(e) = in_flight {
                    return refused(format!(
                        "pair {pair_id}: plan epoch {e} is in flight (S5: one at a time)"
                    ));
                }
                let from = pair.serving_id().to_string();
                if *to == from || pair.server(to).is_none() {
                    return refused(format!(
                        "{to} is not the standby of pair {pair_id} ({} is)",
                        pair.standby_id()
                    ));
                }
                pair.epoch += 1;
                let mut p = FailoverPlan::new(pair.epoch, &from, to, reason, false, at, &Step::ALL);
                p.force = *force;
                pair.failover = Some(p);
                pair.state = PairState::FailingOver;
                pair.state_reason = format!("manual failover by {identity}: {reason}");
                pair.state_since_unix_ms = at;
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::Switchover { to } => {
                if let Some(e) = in_flight {
                    return refused(format!(
                        "pair {pair_id}: plan epoch {e} is in flight (S5: one at a time)"
                    ));
                }
                let from = pair.serving_id().to_string();
                if *to == from || pair.server(to).is_none() {
                    return refused(format!(
                        "{to} is not the standby of pair {pair_id} ({} is)",
                        pair.standby_id()
                    ));
                }
                pair.epoch += 1;
                let reason = format!("planned switchover by {identity}: {from} -> {to}");
                pair.failover = Some(FailoverPlan::new(
                    pair.epoch,
                    &from,
                    to,
                    &reason,
                    false,
                    at,
                    &Step::SWITCHOVER,
                ));
                pair.ops.scheduled = None;
                pair.state = PairState::SwitchingOver;
                pair.state_reason = reason;
                pair.state_since_unix_ms = at;
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::ScheduleSwitchover { to, at_unix_ms } => {
                if pair.server(to).is_none() || *to == pair.serving_id() {
                    return refused(format!(
                        "{to} is not the standby of pair {pair_id} ({} is)",
                        pair.standby_id()
                    ));
                }
                if *at_unix_ms <= at {
                    return refused("the switchover time is in the past".into());
                }
                pair.ops.scheduled = Some(ScheduledSwitchover {
                    at_unix_ms: *at_unix_ms,
                    to: to.clone(),
                    by: identity.to_string(),
                });
                Response::StateChanged { epoch: pair.epoch }
            }
            OperatorCommand::CancelSwitchover => {
                if pair.ops.scheduled.take().is_none() {
                    return refused(format!("pair {pair_id} has no scheduled switchover"));
                }
                Response::StateChanged { epoch: pair.epoch }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{PairRecord, Request};

    fn cluster(state: PairState) -> ClusterState {
        let mut p: PairRecord = crate::testutil::pair(state);
        p.spec.id = "p".into();
        let mut c = ClusterState::default();
        c.pairs.insert("p".into(), std::sync::Arc::new(p));
        c
    }

    fn op(c: &mut ClusterState, cmd: OperatorCommand) -> Response {
        c.apply(&Request::Operator {
            pair_id: "p".into(),
            identity: "alice (admin)".into(),
            command: cmd,
            at_unix_ms: 1_000,
        })
    }

    #[test]
    fn pause_and_resume_return_to_the_state_before() {
        let mut c = cluster(PairState::Degraded);
        assert!(matches!(
            op(&mut c, OperatorCommand::Pause),
            Response::StateChanged { .. }
        ));
        assert_eq!(c.pairs["p"].state, PairState::Paused);
        assert!(matches!(
            op(&mut c, OperatorCommand::Resume),
            Response::StateChanged { .. }
        ));
        assert_eq!(c.pairs["p"].state, PairState::Degraded);
        assert!(matches!(
            op(&mut c, OperatorCommand::Resume),
            Response::Refused { .. }
        ));
        // Every command is audited, the refused one too, with who asked.
        assert_eq!(c.audit.len(), 3);
        assert!(c.audit.iter().all(|a| a.identity == "alice (admin)"));
        assert!(!c.audit[2].accepted);
        assert!(c.pairs["p"]
            .history
            .iter()
            .any(|h| h.event.contains("operator alice (admin): pause: accepted")));
    }

    #[test]
    fn promote_and_switchover_start_their_plans() {
        let mut c = cluster(PairState::Healthy);
        let r = op(
            &mut c,
            OperatorCommand::Promote {
                to: "b".into(),
                force: true,
                reason: "test".into(),
            },
        );
        assert_eq!(r, Response::StateChanged { epoch: 4 });
        let f = c.pairs["p"].failover.clone().unwrap();
        assert!(f.force && !f.automatic);
        assert_eq!(f.steps.len(), Step::ALL.len());
        // One at a time.
        assert!(matches!(
            op(&mut c, OperatorCommand::Switchover { to: "b".into() }),
            Response::Refused { .. }
        ));
        let mut c = cluster(PairState::Healthy);
        op(&mut c, OperatorCommand::Switchover { to: "b".into() });
        let p = &c.pairs["p"];
        assert_eq!(p.state, PairState::SwitchingOver);
        let steps: Vec<Step> = p
            .failover
            .as_ref()
            .unwrap()
            .steps
            .iter()
            .map(|s| s.step)
            .collect();
        assert_eq!(steps, Step::SWITCHOVER.to_vec());
        assert!(!steps.contains(&Step::Fence), "a switchover fences nothing");
        // Not to the serving server, nor to a stranger.
        let mut c = cluster(PairState::Healthy);
        for to in ["a", "x"] {
            assert!(matches!(
                op(&mut c, OperatorCommand::Switchover { to: to.into() }),
                Response::Refused { .. }
            ));
        }
    }

    #[test]
    fn maintenance_ends_by_itself_and_unblock_only_from_blocked() {
        let mut c = cluster(PairState::Healthy);
        op(
            &mut c,
            OperatorCommand::Maintenance {
                until_unix_ms: 5_000,
                reason: "snapshot".into(),
            },
        );
        let ops = &c.pairs["p"].ops;
        assert!(ops.maintenance_at(4_999).is_some());
        assert!(ops.maintenance_at(5_000).is_none());
        assert!(matches!(
            op(&mut c, OperatorCommand::Unblock { reason: "x".into() }),
            Response::Refused { .. }
        ));
        let mut c = cluster(PairState::Blocked);
        op(
            &mut c,
            OperatorCommand::Unblock {
                reason: "fixed".into(),
            },
        );
        assert_eq!(c.pairs["p"].state, PairState::Suspect);
    }

    #[test]
    fn the_audit_log_is_bounded() {
        let mut c = cluster(PairState::Healthy);
        for _ in 0..AUDIT_LIMIT + 5 {
            op(&mut c, OperatorCommand::Ack);
        }
        assert_eq!(c.audit.len(), AUDIT_LIMIT);
    }
}
