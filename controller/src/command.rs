//! Operator commands (SPEC §5, §6; S5, S8): pause / resume, maintenance windows,
//! ack, unblock, promote (forced or not), switchover (now or scheduled), and the
//! read side: history with the audit log, explain, watch.
//!
//! Each command is checked on the leader against the agents' live views (S1 for a
//! promotion without `--force`, a switchover's backup in sync, an unblock that is
//! safe now); accepted or refused, it is committed to Raft as
//! `Request::Operator` with the caller's identity, so the audit log survives the
//! loss of any leader. Refusals answer `FAILED_PRECONDITION` with the reason.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use tonic::{Request, Response, Status};
use understudy_proto::operator_command_request::Command as Cmd;
use understudy_proto::{
    AuditLine, ExplainRequest, ExplainResponse, HistoryLine, HistoryRequest, HistoryResponse,
    OperatorCommandRequest, OperatorCommandResponse, PairHistory, WatchEvent, WatchRequest,
};

use crate::auth::Role;
use crate::detector::{decide, switchover_ready};
use crate::leadership::{now_unix_ms, write};
use crate::liveness::agent_view;
use crate::observe::AgentView;
use crate::operator::OperatorGrpc;
use crate::state::{fmt_unix_ms, OperatorCommand, PairRecord, PairState, Request as Req};

/// When a maintenance window of `duration_ms` (as the operator sent it, any
/// u64) that starts at `now` ends; a duration that does not fit in the clock is
/// refused instead of wrapping into the past (or overflowing).
fn maintenance_until(now: i64, duration_ms: u64) -> Result<i64, Status> {
    i64::try_from(duration_ms)
        .ok()
        .and_then(|d| now.checked_add(d))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "a maintenance window of {duration_ms} ms ends beyond the clock's range; give a shorter duration"
            ))
        })
}

/// The stream of `Watch`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

impl OperatorGrpc {
    fn views(&self, p: &PairRecord) -> (AgentView, AgentView) {
        let now = Instant::now();
        let since = self.liveness.silence_origin();
        let res = &p.spec.resource;
        (
            agent_view(self.liveness.get(p.serving_id()).as_ref(), res, now, since),
            agent_view(self.liveness.get(p.standby_id()).as_ref(), res, now, since),
        )
    }

    /// Commit `cmd` (accepted or, with `Refused`, only audited); map the outcome.
    async fn commit(
        &self,
        pair_id: &str,
        identity: &str,
        cmd: OperatorCommand,
    ) -> Result<OperatorCommandResponse, Status> {
        let r = write(
            &self.raft,
            Req::Operator {
                pair_id: pair_id.to_string(),
                identity: identity.to_string(),
                command: cmd.clone(),
                at_unix_ms: now_unix_ms(),
            },
        )
        .await
        .map_err(|e| Status::unavailable(format!("not committed (no quorum?): {e}")))?;
        let pair = self.state.snapshot().state.pairs.get(pair_id).cloned();
        match r {
            crate::state::Response::Refused { reason } => Err(Status::failed_precondition(reason)),
            _ => Ok(OperatorCommandResponse {
                outcome: format!("{cmd}: done"),
                epoch: pair.as_ref().map(|p| p.epoch).unwrap_or(0),
                state: pair.map(|p| p.state.to_string()).unwrap_or_default(),
            }),
        }
    }

    /// Refuse `what` with `reason`, recording the refusal in the audit log.
    async fn refuse(
        &self,
        pair_id: &str,
        identity: &str,
        what: String,
        reason: String,
    ) -> Result<OperatorCommandResponse, Status> {
        let _ = self
            .commit(
                pair_id,
                identity,
                OperatorCommand::Refused {
                    command: what,
                    reason: reason.clone(),
                },
            )
            .await;
        Err(Status::failed_precondition(reason))
    }

    pub(crate) async fn run_command(
        &self,
        req: Request<OperatorCommandRequest>,
    ) -> Result<Response<OperatorCommandResponse>, Status> {
        let identity = self.auth.operator(&req, Role::Admin)?;
        self.leader_barrier().await?;
        let r = req.into_inner();
        let pair = self
            .state
            .snapshot()
            .state
            .pairs
            .get(&r.pair_id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!("no pair {:?} in the inventory", r.pair_id))
            })?;
        let id = r.pair_id.as_str();
        let cmd = r
            .command
            .ok_or_else(|| Status::invalid_argument("no command given"))?;
        let resp = match cmd {
            Cmd::Pause(_) => self.commit(id, &identity, OperatorCommand::Pause).await,
            Cmd::Resume(_) => self.commit(id, &identity, OperatorCommand::Resume).await,
            Cmd::Maintenance(m) => {
                if m.duration_ms == 0 || m.reason.trim().is_empty() {
                    return Err(Status::invalid_argument(
                        "a maintenance window needs a duration above 0 and a reason",
                    ));
                }
                let until = maintenance_until(now_unix_ms(), m.duration_ms)?;
                self.commit(
                    id,
                    &identity,
                    OperatorCommand::Maintenance {
                        until_unix_ms: until,
                        reason: m.reason,
                    },
                )
                .await
            }
            Cmd::EndMaintenance(_) => {
                self.commit(id, &identity, OperatorCommand::EndMaintenance)
                    .await
            }
            Cmd::Ack(_) => self.commit(id, &identity, OperatorCommand::Ack).await,
            Cmd::Unblock(u) => {
                let what = "unblock".to_string();
                if pair.state != PairState::Blocked {
                    return self
                        .refuse(
                            id,
                            &identity,
                            what,
                            format!("pair {id} is {}, not Blocked", pair.state),
                        )
                        .await
                        .map(Response::new);
                }
                // Safe now: the serving server is alive, or the standby could take
                // over without losing data.
                let (sv, sb) = self.views(&pair);
                let serving_alive = sv.connected;
                let standby_fresh =
                    switchover_ready(pair.standby_id(), &sb).is_ok() && pair.outdated.is_none();
                if !serving_alive && !standby_fresh {
                    let why = switchover_ready(pair.standby_id(), &sb)
                        .err()
                        .unwrap_or_else(|| "it is marked outdated (S1)".into());
                    return self
                        .refuse(
                            id,
                            &identity,
                            what,
                            format!(
                                "not safe: {} is not heard from and {why}; bring {} back, or `promote --force --accept-data-loss` after deciding which data to keep",
                                pair.serving_id(),
                                pair.serving_id()
                            ),
                        )
                        .await
                        .map(Response::new);
                }
                let reason = if u.reason.is_empty() {
                    "operator acted".to_string()
                } else {
                    u.reason
                };
                self.commit(id, &identity, OperatorCommand::Unblock { reason })
                    .await
            }
            Cmd::Promote(p) => {
                let to = if p.to.is_empty() {
                    pair.standby_id().to_string()
                } else {
                    p.to
                };
                let what = format!("promote {to}{}", if p.force { " --force" } else { "" });
                if p.force && !p.accept_data_loss {
                    return Err(Status::invalid_argument(
                        "--force promotes a backup that may lack acknowledged writes: add --accept-data-loss to say you accept that (S8)",
                    ));
                }
                if !p.force {
                    let (_, sb) = self.views(&pair);
                    let fresh = switchover_ready(&to, &sb).and_then(|ok| {
                        match pair.outdated.as_ref().filter(|m| m.server == to) {
                            Some(m) => Err(format!(
                                "{to} is marked outdated since {} (S1)",
                                fmt_unix_ms(m.lost_peer_unix_ms)
                            )),
                            None => Ok(ok),
                        }
                    });
                    if let Err(why) = fresh {
                        return self
                            .refuse(
                                id,
                                &identity,
                                what,
                                format!(
                                    "S1: {why}; promote --force --accept-data-loss to promote it anyway (S8)"
                                ),
                            )
                            .await
                            .map(Response::new);
                    }
                }
                let reason = if p.force {
                    format!("forced promotion of {to} by {identity}: data loss accepted (S8)")
                } else {
                    format!("manual promotion of {to} by {identity}")
                };
                self.commit(
                    id,
                    &identity,
                    OperatorCommand::Promote {
                        to,
                        force: p.force,
                        reason,
                    },
                )
                .await
            }
            Cmd::Switchover(s) => {
                let to = if s.to.is_empty() {
                    pair.standby_id().to_string()
                } else {
                    s.to
                };
                if s.at_unix_ms > 0 {
                    self.commit(
                        id,
                        &identity,
                        OperatorCommand::ScheduleSwitchover {
                            to,
                            at_unix_ms: s.at_unix_ms,
                        },
                    )
                    .await
                } else {
                    let (sv, sb) = self.views(&pair);
                    let ready = if !sv.connected {
                        Err(format!(
                            "{}'s agent is not connected: a switchover needs it to step down",
                            pair.serving_id()
                        ))
                    } else {
                        switchover_ready(&to, &sb)
                    };
                    if let Err(why) = ready {
                        return self
                            .refuse(id, &identity, format!("switchover to {to}"), why)
                            .await
                            .map(Response::new);
                    }
                    self.commit(id, &identity, OperatorCommand::Switchover { to })
                        .await
                }
            }
            Cmd::CancelSwitchover(_) => {
                self.commit(id, &identity, OperatorCommand::CancelSwitchover)
                    .await
            }
        }?;
        // A plan started (promote, switchover) is run by the leader's loop, which
        // resumes every plan in flight on its next tick (50 ms).
        Ok(Response::new(resp))
    }

    pub(crate) async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        self.auth.operator(&req, Role::Viewer)?;
        self.leader_barrier().await?;
        let only = req.into_inner().pair_id;
        let data = self.state.snapshot();
        if !only.is_empty() && !data.state.pairs.contains_key(&only) {
            return Err(Status::not_found(format!(
                "no pair {only:?} in the inventory"
            )));
        }
        // One pair: its archived lines too (older than the live ones); every
        // pair: the live lines only (the archive can be long).
        let archived = if only.is_empty() {
            Vec::new()
        } else {
            self.state.archived_history(&only).map_err(|e| {
                Status::internal(format!(
                    "cannot read the history archive of {only}: {e}; check the controller's data_dir"
                ))
            })?
        };
        let line = |h: &crate::state::HistoryEntry| HistoryLine {
            at_unix_ms: h.at_unix_ms,
            epoch: h.epoch,
            event: h.event.clone(),
        };
        let pairs = data
            .state
            .pairs
            .values()
            .filter(|p| only.is_empty() || p.spec.id == only)
            .map(|p| PairHistory {
                pair_id: p.spec.id.clone(),
                lines: archived.iter().chain(&p.history).map(line).collect(),
            })
            .collect();
        let audit = data
            .state
            .audit
            .iter()
            .filter(|a| only.is_empty() || a.pair_id == only)
            .map(|a| AuditLine {
                at_unix_ms: a.at_unix_ms,
                identity: a.identity.clone(),
                pair_id: a.pair_id.clone(),
                command: a.command.clone(),
                accepted: a.accepted,
                outcome: a.outcome.clone(),
            })
            .collect();
        Ok(Response::new(HistoryResponse { pairs, audit }))
    }

    pub(crate) async fn explain(
        &self,
        req: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        self.auth.operator(&req, Role::Viewer)?;
        self.leader_barrier().await?;
        let id = req.into_inner().pair_id;
        let pair = self
            .state
            .snapshot()
            .state
            .pairs
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no pair {id:?} in the inventory")))?;
        let (sv, sb) = self.views(&pair);
        let now = now_unix_ms();
        let dec = decide(&pair, &sv, &sb, now, &self.cfg.detector);
        let d = &self.cfg.detector;
        let ms = |v: Option<u64>| v.map(|x| format!("{x} ms")).unwrap_or("never".into());
        let drbd = |v: &AgentView| {
            v.drbd
                .as_ref()
                .map(|d| {
                    format!(
                        "{} {} {} {} peer {} out-of-sync {}",
                        d.role,
                        d.disk,
                        d.connection,
                        d.replication,
                        d.peer_disk,
                        d.out_of_sync_bytes
                            .map(|b| format!("{b} B"))
                            .unwrap_or("unknown".into())
                    )
                })
                .unwrap_or_else(|| "no DRBD report".into())
        };
        let mut inputs = vec![
            format!(
                "S2 witness 1: serving {} is {}, silent for {} (threshold {} ms), last answered a direct probe {} ago",
                pair.serving_id(),
                if sv.connected { "connected" } else { "not connected" },
                ms(sv.silent_ms),
                d.primary_silence_ms,
                ms(sv.probe_answered_ms)
            ),
            format!(
                "S2 witness 2: standby {}'s DRBD peer connection lost for {} (threshold {} ms)",
                pair.standby_id(),
                ms(sb.peer_lost_ms),
                d.peer_loss_ms
            ),
            format!("serving {} DRBD: {}", pair.serving_id(), drbd(&sv)),
            format!("standby {} DRBD: {}", pair.standby_id(), drbd(&sb)),
            format!(
                "S1: standby {}",
                match switchover_ready(pair.standby_id(), &sb) {
                    Ok(_) => "UpToDate and in sync now".to_string(),
                    Err(why) => why,
                }
            ),
        ];
        if let Some(m) = &pair.outdated {
            inputs.push(format!(
                "S1 mark: {} outdated since {} ({})",
                m.server,
                fmt_unix_ms(m.lost_peer_unix_ms),
                m.source
            ));
        }
        if let Some(t) = pair.last_auto_failover_unix_ms {
            inputs.push(format!(
                "S5 hold-off: last automatic failover at {}, {} of {} ms elapsed, {}",
                fmt_unix_ms(t),
                pair.holdoff_elapsed_ms,
                d.flap_holdoff_ms,
                if pair.flap_acknowledged {
                    "acknowledged"
                } else {
                    "not acknowledged (`understudyctl ack` lifts it)"
                }
            ));
        }
        if let Some(p) = &pair.ops.paused {
            inputs.push(format!(
                "paused by {} at {}: no automatic action",
                p.by,
                fmt_unix_ms(p.at_unix_ms)
            ));
        }
        if let Some(m) = pair.ops.maintenance_at(now) {
            inputs.push(format!(
                "maintenance until {} by {}: {}",
                fmt_unix_ms(m.until_unix_ms),
                m.by,
                m.reason
            ));
        }
        if let Some(f) = &pair.failover {
            inputs.push(format!(
                "plan epoch {} in flight: {} -> {}, next step {}",
                f.epoch,
                f.from,
                f.to,
                f.next_step()
                    .map(|s| s.step.to_string())
                    .unwrap_or("finish".into())
            ));
        }
        inputs.extend(
            self.signals
                .explain_lines(&pair, &sb, now, &self.cfg.signals),
        );
        let redundancy = match &self.cfg.spare {
            Some(sc) => format!("{:?}", crate::redundancy::need(&pair, &sv, &sb, now, sc, d)),
            None => "no [spare] configured: nothing is launched".into(),
        };
        Ok(Response::new(ExplainResponse {
            pair_id: id,
            state: pair.state.to_string(),
            action: format!("{:?}", dec.action),
            reason: dec.reason,
            inputs,
            alerts: dec.alerts,
            redundancy,
        }))
    }

    pub(crate) async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.auth.operator(&req, Role::Viewer)?;
        self.leader_barrier().await?;
        let only = req.into_inner().pair_id;
        let rx = watch_events(self.state.clone(), self.leader.clone(), only);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// History lines as they are committed (for `Watch` and the HTTP event stream):
/// nothing already there, only what comes from now on; ends when this node
/// stops leading (with an `UNAVAILABLE` item).
pub fn watch_events(
    state: crate::raft::store::SharedState,
    leader: tokio::sync::watch::Receiver<crate::leadership::LeaderView>,
    only: String,
) -> tokio::sync::mpsc::Receiver<Result<WatchEvent, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        // Lines already there are not sent; only what is committed from now on.
        // The pairs as last looked at: the state is a persistent map, so this
        // is a pointer, and the difference with the next state visits only
        // the records changed since (the rest of the tree is shared).
        let last = |p: &PairRecord| p.history.last().map(|h| (h.at_unix_ms, h.event.clone()));
        let mut applied = state.subscribe();
        let mut seen = state.snapshot().state.pairs.clone();
        loop {
            // Woken by every applied batch (and every 100 ms to notice a
            // change of leader).
            tokio::select! {
                _ = applied.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if !leader.borrow().is_leader {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "leadership moved: watch again (understudyctl follows the new leader)",
                    )))
                    .await;
                return;
            }
            let snap = state.snapshot();
            for d in seen.diff(&snap.state.pairs) {
                let (id, p, prev) = match d {
                    imbl::ordmap::DiffItem::Add(id, p) => (id, p, None),
                    imbl::ordmap::DiffItem::Update {
                        old: (_, before),
                        new: (id, p),
                    } => (id, p, last(before)),
                    imbl::ordmap::DiffItem::Remove(..) => continue,
                };
                if !only.is_empty() && *id != only {
                    continue;
                }
                // The lines after the last one sent (history is bounded: if that
                // one was compacted away, the lines after its time).
                let start = match prev {
                    None => 0,
                    Some((at, ev)) => p
                        .history
                        .iter()
                        .rposition(|h| h.at_unix_ms == at && h.event == ev)
                        .map(|i| i + 1)
                        .unwrap_or_else(|| {
                            p.history
                                .iter()
                                .position(|h| h.at_unix_ms > at)
                                .unwrap_or(p.history.len())
                        }),
                };
                for h in &p.history[start..] {
                    let ev = WatchEvent {
                        at_unix_ms: h.at_unix_ms,
                        pair_id: p.spec.id.clone(),
                        epoch: h.epoch,
                        state: p.state.to_string(),
                        event: h.event.clone(),
                    };
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
            seen = snap.state.pairs.clone();
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found reviewing what the controller does with decoded values (issue 11's
    /// fuzzing): `duration_ms as i64` wrapped a huge duration into the past,
    /// or overflowed the add (a panic in debug builds).
    #[test]
    fn a_maintenance_duration_beyond_the_clock_is_refused() {
        let now = 1_700_000_000_000;
        assert_eq!(maintenance_until(now, 60_000).unwrap(), now + 60_000);
        for huge in [u64::MAX, 1 << 63, i64::MAX as u64, i64::MAX as u64 - 1000] {
            let e = maintenance_until(now, huge).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("maintenance window"), "{e}");
        }
    }
}
