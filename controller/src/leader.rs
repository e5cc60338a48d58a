//! The leader's loop: while this node leads (with a quorum, within its lease),
//! keep the replicated inventory in line with the configuration and, on every
//! agent report and a short tick, ask the pure [`crate::detector::decide`] what
//! each pair needs, commit it, and run what it says (failover plans, bring-up,
//! stand-down, S1 outdating) through the [`Executor`]. It also polls the
//! cloud's signals and schedules the switchover they call for
//! (`crate::signals`). Depends on the small leader-state type in
//! `leadership`, not on `node`, which only wires it up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::agents::redirect;
use crate::config::ControllerConfig;
use crate::detector::{calm_for, calm_margin, decide, Action};
use crate::failover::Executor;
use crate::leadership::{now_unix_ms, write, LeaderView};
use crate::liveness::Liveness;
use crate::raft::store::SharedState;
use crate::raft::Raft;
use crate::redundancy::Need;
use crate::state::{OperatorCommand, PairState, Request, Response};

/// The longest a pair is left calm before its agents' silence is read again
/// (`crate::sweep`).
const CALM_CAP: Duration = Duration::from_secs(1);

/// Propose a request, logging refusals; `None` if this node cannot commit now.
async fn propose(raft: &Raft, req: Request) -> Option<crate::state::Response> {
    match write(raft, req).await {
        Ok(resp) => Some(resp),
        Err(e) => {
            tracing::warn!(error = %e, "proposal not committed");
            None
        }
    }
}

/// Whether two texts differ at most in their digits.
fn same_but_numbers(a: &str, b: &str) -> bool {
    a.chars()
        .filter(|c| !c.is_ascii_digit())
        .eq(b.chars().filter(|c| !c.is_ascii_digit()))
}

/// The leader's work: keep the inventory in line with the configuration, decide
/// what each pair needs ([`crate::detector::decide`]) on every report and tick, and
/// run failover plans ([`Executor`]).
pub async fn leader_duties(
    raft: Raft,
    cfg: Arc<ControllerConfig>,
    shared: SharedState,
    liveness: Arc<Liveness>,
    executor: Arc<Executor>,
    mut leader: watch::Receiver<LeaderView>,
) {
    loop {
        while !leader.borrow_and_update().is_leader {
            if leader.changed().await.is_err() {
                return;
            }
        }
        let term = leader.borrow().term;
        let leading_since = liveness.start_leading();
        tracing::info!(node = cfg.node_id, term, "leading: syncing inventory");
        let mut inventory_synced = false;
        let mut live = liveness.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut said: HashMap<String, String> = HashMap::new();
        let mut outdating: HashMap<String, Instant> = HashMap::new();
        let mut holdoff = crate::holdoff::HoldoffClock::default();
        // Spare, rebuild and retirement tasks, apart from `running` (a spare is
        // launched while the failover runs), and when each last started.
        let mut provisioning: HashMap<String, (tokio::task::JoinHandle<()>, Instant)> =
            HashMap::new();
        let mut preflight: Option<(tokio::task::JoinHandle<()>, Instant)> = None;
        // Cloud signals: the health poll, and the last signal line logged per pair.
        let mut signals_poll: Option<(tokio::task::JoinHandle<()>, Instant)> = None;
        let mut signal_said: HashMap<String, String> = HashMap::new();
        // A tick looks at the pairs that are not calm (`detector::calm_for`:
        // time alone cannot change their decision before then), a wake-up by
        // the agents' view only at the pairs whose view changed
        // (`crate::sweep`). The first tick after a cloud-signal poll
        // finished looks at every pair.
        let mut sweep_all = true;
        let mut sweep = crate::sweep::Sweep::default();
        let mut signals_swept = true;
        let mut full_due = false;
        loop {
            if !inventory_synced {
                // What differs from the configuration, a bounded batch of
                // pairs per entry; synced once every entry committed (a
                // failed one is computed again on the next pass).
                let snap = shared.snapshot();
                let patches = crate::state::inventory_patches(
                    &cfg.pairs,
                    &snap.state,
                    crate::state::INVENTORY_BATCH,
                    now_unix_ms(),
                );
                drop(snap);
                inventory_synced = true;
                for req in patches {
                    if propose(&raft, req).await.is_none() {
                        inventory_synced = false;
                        break;
                    }
                }
            }
            running.retain(|_, h| !h.is_finished());
            // Inventory preflight, every `[preflight] interval_ms` (the first soon
            // after taking the lead, once agents had a moment to report).
            let every = Duration::from_millis(cfg.preflight.interval_ms);
            let due = match &preflight {
                None => leading_since.elapsed() >= Duration::from_secs(2),
                Some((h, at)) => h.is_finished() && at.elapsed() >= every,
            };
            if due {
                let ex = executor.clone();
                let (st, lv, pc) = (shared.clone(), liveness.clone(), cfg.preflight.clone());
                preflight = Some((
                    tokio::spawn(async move {
                        let data = st.snapshot();
                        let all = crate::preflight::run_all(
                            ex.cloud.as_ref(),
                            &data.state,
                            &lv,
                            &pc,
                            ex.spare.is_some(),
                            None,
                        )
                        .await;
                        for (id, f) in all {
                            ex.findings.set(&id, f);
                        }
                    }),
                    Instant::now(),
                ));
            }
            // Cloud signals: every `[signals] poll_ms`, the health of every server.
            let every = Duration::from_millis(cfg.signals.poll_ms);
            if !signals_swept && signals_poll.as_ref().is_some_and(|(h, _)| h.is_finished()) {
                signals_swept = true;
                full_due = true;
            }
            if signals_poll
                .as_ref()
                .is_none_or(|(h, at)| h.is_finished() && at.elapsed() >= every)
            {
                let ex = executor.clone();
                let servers: Vec<_> = shared
                    .snapshot()
                    .state
                    .pairs
                    .values()
                    .flat_map(|p| [&p.spec.primary, &p.spec.backup])
                    .map(crate::failover::cloud_server)
                    .collect();
                let limit = Duration::from_millis(cfg.signals.poll_ms.clamp(1000, 10_000));
                signals_swept = false;
                signals_poll = Some((
                    tokio::spawn(async move {
                        let all =
                            crate::signals::poll(ex.cloud.as_ref(), &servers, now_unix_ms, limit)
                                .await;
                        ex.signals.set_all(all);
                    }),
                    Instant::now(),
                ));
            }
            let now = Instant::now();
            let origin = liveness.silence_origin();
            let changed = liveness.take_changed();
            let full = sweep_all && full_due;
            if full {
                full_due = false;
            }
            // A calm pair whose calm is over, nothing heard of it but
            // heartbeats: calm again if its agents' silence says so.
            let renew = |p: &crate::state::PairRecord| {
                let silent = liveness
                    .silent_ms(p.serving_id(), now, origin)
                    .max(liveness.silent_ms(p.standby_id(), now, origin));
                calm_margin(silent, &cfg.detector, CALM_CAP)
            };
            // State changes decided in this pass, proposed together (Raft
            // batches them into one append) once every pair was looked at.
            let mut batch = Vec::new();
            let snap = shared.snapshot();
            for crate::sweep::Due { pair, slot } in
                sweep.due(&snap.state.pairs, &changed, sweep_all, full, now, renew)
            {
                sweep.set_calm(slot, None);
                // S4: an epoch never goes back. An agent that holds a higher one
                // (the pair was re-added, the controllers restored) raises it.
                let res = &pair.spec.resource;
                let sv = liveness.agent_view(pair.serving_id(), res, now, origin);
                let sb = liveness.agent_view(pair.standby_id(), res, now, origin);
                let held = [(pair.serving_id(), &sv), (pair.standby_id(), &sb)]
                    .into_iter()
                    .filter_map(|(id, v)| v.highest_epoch.map(|e| (id, e)))
                    .max_by_key(|(_, e)| *e);
                if let Some((server, at_least)) = held.filter(|(_, e)| *e > pair.epoch) {
                    if pair.failover.is_none() {
                        tracing::warn!(pair = %pair.spec.id, epoch = pair.epoch, server, at_least, "an agent holds a higher epoch: raising the pair's");
                        propose(
                            &raft,
                            Request::RaiseEpoch {
                                pair_id: pair.spec.id.clone(),
                                at_least,
                                server: server.to_owned(),
                                at_unix_ms: now_unix_ms(),
                            },
                        )
                        .await;
                        continue;
                    }
                }
                let hold = cfg.detector.flap_holdoff_ms;
                let mono = Instant::now();
                if let Some(add_ms) = holdoff.due(pair, mono, hold) {
                    let r = propose(
                        &raft,
                        Request::HoldoffElapsed {
                            pair_id: pair.spec.id.clone(),
                            epoch: pair.epoch,
                            add_ms,
                        },
                    )
                    .await;
                    if matches!(r, Some(Response::StateChanged { .. })) {
                        holdoff.ticked(pair, mono);
                    }
                }
                let pair = &*holdoff.view(pair, mono, hold);
                let dec = decide(pair, &sv, &sb, now_unix_ms(), &cfg.detector);
                let id = pair.spec.id.clone();
                // Logged when it changes, not when only its numbers do (a
                // silence growing by the millisecond would log every pair on
                // every tick while agents are away).
                if !said
                    .get(&id)
                    .is_some_and(|s| same_but_numbers(s, &dec.reason))
                {
                    tracing::info!(pair = %id, epoch = pair.epoch, state = %pair.state, action = ?dec.action, reason = %dec.reason, "decision");
                    said.insert(id.clone(), dec.reason.clone());
                }
                let at_unix_ms = now_unix_ms();
                // A cloud signal: log what it proposes when that changes and, with
                // `auto_switchover`, schedule the switchover once per event.
                let proposal = executor
                    .signals
                    .proposal_for(pair, &sb, at_unix_ms, &cfg.signals);
                let line = executor.signals.line(pair, &proposal, at_unix_ms);
                // Nothing in flight for it here either (a plan, a spare or
                // rebuild task), and no cloud signal: then maybe calm.
                if line.is_empty()
                    && !running.contains_key(&id)
                    && provisioning.get(&id).is_none_or(|(h, _)| h.is_finished())
                {
                    if let Some(d) = calm_for(pair, &sv, &sb, &dec.action, &cfg.detector, CALM_CAP)
                    {
                        sweep.set_calm(slot, Some(now + d));
                    }
                }
                if signal_said.get(&id) != Some(&line) {
                    if !line.is_empty() {
                        tracing::warn!(pair = %id, signal = %line, "cloud signal");
                    }
                    signal_said.insert(id.clone(), line);
                }
                if let Ok(Some(p)) = proposal {
                    if let crate::signals::Schedule::At(t) = p.schedule {
                        let r = propose(
                            &raft,
                            Request::Operator {
                                pair_id: id.clone(),
                                identity: p.identity(),
                                command: OperatorCommand::ScheduleSwitchover {
                                    to: p.to.clone(),
                                    at_unix_ms: t,
                                },
                                at_unix_ms,
                            },
                        )
                        .await;
                        match r {
                            Some(Response::Refused { reason }) => {
                                tracing::warn!(pair = %id, code = %p.code, %reason, "cloud signal: the switchover could not be scheduled");
                                executor.signals.mark_handled(p.key());
                            }
                            Some(_) => {
                                tracing::info!(pair = %id, code = %p.code, to = %p.to, at = %crate::state::fmt_unix_ms(t), "cloud signal: switchover scheduled");
                                executor.signals.mark_handled(p.key());
                            }
                            None => {}
                        }
                        continue;
                    }
                }
                // A scheduled switchover whose time has come.
                if let Some(sch) = pair
                    .ops
                    .scheduled
                    .as_ref()
                    .filter(|x| x.at_unix_ms <= at_unix_ms && pair.failover.is_none())
                {
                    let ready = if pair.state == PairState::Paused {
                        Err(format!("pair {id} is paused"))
                    } else if !sv.connected {
                        Err(format!("{}'s agent is not connected", pair.serving_id()))
                    } else {
                        crate::detector::switchover_ready(&sch.to, &sb)
                    };
                    let identity = format!("schedule of {}", sch.by);
                    let command = match ready {
                        Ok(_) => OperatorCommand::Switchover { to: sch.to.clone() },
                        Err(why) => OperatorCommand::Refused {
                            command: format!("scheduled switchover to {}", sch.to),
                            reason: why,
                        },
                    };
                    let refused = matches!(command, OperatorCommand::Refused { .. });
                    propose(
                        &raft,
                        Request::Operator {
                            pair_id: id.clone(),
                            identity: identity.clone(),
                            command,
                            at_unix_ms,
                        },
                    )
                    .await;
                    if refused {
                        propose(
                            &raft,
                            Request::Operator {
                                pair_id: id.clone(),
                                identity,
                                command: OperatorCommand::CancelSwitchover,
                                at_unix_ms,
                            },
                        )
                        .await;
                    }
                    continue;
                }
                if let Some(sc) = &executor.spare {
                    let busy = provisioning.get(&id).is_some_and(|(h, started)| {
                        // After a failed attempt, wait before the next one.
                        let pause = if executor.provisioning.get(&id).is_some() {
                            Duration::from_secs(5)
                        } else {
                            Duration::from_millis(500)
                        };
                        !h.is_finished() || started.elapsed() < pause
                    });
                    let need =
                        crate::redundancy::need(pair, &sv, &sb, at_unix_ms, sc, &cfg.detector);
                    if !busy && need != Need::Nothing {
                        tracing::info!(pair = %id, epoch = pair.epoch, need = ?need, "redundancy");
                        let ex = executor.clone();
                        let pid = id.clone();
                        let task = match need {
                            Need::Nothing => None,
                            Need::Launch { reason } => Some(tokio::spawn(async move {
                                ex.launch_spare(&pid, Some(reason)).await
                            })),
                            Need::ResumeLaunch => {
                                Some(tokio::spawn(
                                    async move { ex.launch_spare(&pid, None).await },
                                ))
                            }
                            Need::Retire { why } => Some(tokio::spawn(async move {
                                ex.retire_spare(&pid, Some(why)).await
                            })),
                            Need::Terminate => {
                                Some(tokio::spawn(
                                    async move { ex.retire_spare(&pid, None).await },
                                ))
                            }
                            Need::StartRebuild { replaces } => Some(tokio::spawn(async move {
                                ex.rebuild(&pid, Some(replaces)).await
                            })),
                            Need::ResumeRebuild => {
                                Some(tokio::spawn(async move { ex.rebuild(&pid, None).await }))
                            }
                            Need::TerminateRetired { server } => Some(tokio::spawn(async move {
                                ex.terminate_retired(&pid, &server).await
                            })),
                            Need::StartReattach { from, to } => {
                                let started = propose(
                                    &raft,
                                    Request::StartReattach {
                                        pair_id: id.clone(),
                                        expect: pair.state,
                                        expect_epoch: pair.epoch,
                                        from: from.clone(),
                                        to: to.clone(),
                                        reason: format!(
                                            "S9: no usable backup ({}); {from} is dead: its volumes move to {to}",
                                            pair.state_reason
                                        ),
                                        at_unix_ms,
                                    },
                                )
                                .await;
                                if matches!(started, Some(Response::StateChanged { .. })) {
                                    running.entry(id.clone()).or_insert_with(|| {
                                        tokio::spawn(async move { ex.run(&pid).await })
                                    });
                                }
                                continue;
                            }
                        };
                        if let Some(t) = task {
                            provisioning.insert(id.clone(), (t, Instant::now()));
                        }
                    }
                }
                match dec.action {
                    Action::Nothing => {}
                    Action::SetState(state) => {
                        batch.push(propose(
                            &raft,
                            Request::SetPairState {
                                pair_id: id,
                                expect: pair.state,
                                state,
                                reason: dec.reason,
                                at_unix_ms,
                            },
                        ));
                    }
                    Action::Block => {
                        batch.push(propose(
                            &raft,
                            Request::SetPairState {
                                pair_id: id,
                                expect: pair.state,
                                state: PairState::Blocked,
                                reason: dec.reason,
                                at_unix_ms,
                            },
                        ));
                    }
                    Action::StartFailover { from, to } => {
                        let started = propose(
                            &raft,
                            Request::StartFailover {
                                pair_id: id.clone(),
                                expect: pair.state,
                                expect_epoch: pair.epoch,
                                from,
                                to,
                                reason: dec.reason,
                                automatic: true,
                                at_unix_ms,
                            },
                        )
                        .await;
                        if matches!(started, Some(Response::StateChanged { .. })) {
                            let ex = executor.clone();
                            running
                                .entry(id.clone())
                                .or_insert_with(|| tokio::spawn(async move { ex.run(&id).await }));
                        }
                    }
                    Action::Serve(steps) => {
                        if !running.contains_key(&id) {
                            let ex = executor.clone();
                            running.insert(
                                id.clone(),
                                tokio::spawn(async move { ex.serve(&id, steps).await }),
                            );
                        }
                    }
                    Action::MarkOutdated {
                        server,
                        lost_peer_unix_ms,
                        primary_alive_unix_ms,
                    } => {
                        batch.push(propose(
                            &raft,
                            Request::MarkOutdated {
                                pair_id: id,
                                epoch: pair.epoch,
                                server,
                                lost_peer_unix_ms,
                                primary_alive_unix_ms,
                                source: "seen by the controller in the agents' DRBD reports".into(),
                                at_unix_ms,
                            },
                        ));
                    }
                    Action::ClearOutdated { server, why } => {
                        batch.push(propose(
                            &raft,
                            Request::ClearOutdated {
                                pair_id: id,
                                server,
                                why,
                                at_unix_ms,
                            },
                        ));
                    }
                    Action::OutdateStandby(server) => {
                        let due = outdating
                            .get(&id)
                            .is_none_or(|t| t.elapsed() >= Duration::from_secs(3));
                        if due && !running.contains_key(&id) {
                            outdating.insert(id.clone(), Instant::now());
                            let ex = executor.clone();
                            let epoch = pair.epoch;
                            running.insert(
                                id.clone(),
                                tokio::spawn(async move {
                                    ex.outdate_standby(&id, epoch, &server).await
                                }),
                            );
                        }
                    }
                    Action::StandDown(steps) => {
                        if !running.contains_key(&id) {
                            let ex = executor.clone();
                            running.insert(
                                id.clone(),
                                tokio::spawn(async move { ex.stand_down(&id, steps).await }),
                            );
                        }
                    }
                    Action::ResumePlan => {
                        if !running.contains_key(&id) {
                            let ex = executor.clone();
                            running
                                .insert(id.clone(), tokio::spawn(async move { ex.run(&id).await }));
                        }
                    }
                }
            }
            futures::future::join_all(batch).await;
            tokio::select! {
                _ = live.changed() => sweep_all = false,
                _ = tick.tick() => sweep_all = true,
                r = leader.changed() => {
                    if r.is_err() || !leader.borrow().is_leader {
                        break;
                    }
                }
            }
        }
        tracing::info!(node = cfg.node_id, "no longer leading");
        for (_, h) in running.drain() {
            h.abort();
        }
        for (_, (h, _)) in provisioning.drain() {
            h.abort();
        }
        if let Some((h, _)) = preflight.take() {
            h.abort();
        }
        if let Some((h, _)) = signals_poll.take() {
            h.abort();
        }
        // The agents' sessions stay while the lease may come back
        // (`leadership::holds_sessions`): if it does, this node leads again
        // with what they told it meanwhile.
        let view = loop {
            let view = leader.borrow_and_update().clone();
            if view.is_leader || !view.holds_sessions || leader.changed().await.is_err() {
                break view;
            }
        };
        if view.is_leader {
            tracing::info!(
                node = cfg.node_id,
                term = view.term,
                "lease back within the grace: leading again, agent sessions kept"
            );
            continue;
        }
        for tx in liveness.sessions() {
            let _ = tx.try_send(Box::new(Ok(redirect(&view, "leadership moved"))));
        }
        liveness.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::same_but_numbers;

    #[test]
    fn a_reason_whose_numbers_alone_changed_is_the_same() {
        assert!(same_but_numbers(
            "p1-a's agent silent for 1048 ms",
            "p1-a's agent silent for 11098 ms"
        ));
        assert!(!same_but_numbers(
            "p1-a's agent silent for 1048 ms",
            "p1-b's agent silent for 1048 ms"
        ));
    }
}
