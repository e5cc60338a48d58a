//! The leader's loop: while this node leads (with a quorum, within its lease),
//! keep the replicated inventory in line with the configuration and, on every
//! agent report and a short tick, ask the pure [`crate::detector::decide`] what
//! each pair needs, commit it, and run what it says (failover plans, bring-up,
//! stand-down, S1 outdating) through the [`Executor`]. Depends on the small
//! leader-state type in `leadership`, not on `node`, which only wires it up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::agents::redirect;
use crate::config::ControllerConfig;
use crate::detector::{decide, Action};
use crate::failover::Executor;
use crate::leadership::{now_unix_ms, write, LeaderView};
use crate::liveness::{agent_view, Liveness};
use crate::raft::store::SharedState;
use crate::raft::Raft;
use crate::state::{PairState, Request, Response};

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

/// The leader's work: keep the inventory in line with the configuration, decide
/// what each pair needs ([`crate::detector::decide`]) on every report and tick, and
/// run failover plans ([`Executor`]).
pub async fn leader_duties(
    raft: Raft,
    cfg: ControllerConfig,
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
        loop {
            if !inventory_synced {
                let current: Vec<_> = shared
                    .snapshot()
                    .state
                    .pairs
                    .values()
                    .map(|p| p.spec.clone())
                    .collect();
                let mut wanted = cfg.pairs.clone();
                wanted.sort_by(|a, b| a.id.cmp(&b.id));
                inventory_synced = current == wanted
                    || propose(
                        &raft,
                        Request::SyncInventory {
                            pairs: cfg.pairs.clone(),
                            at_unix_ms: now_unix_ms(),
                        },
                    )
                    .await
                    .is_some();
            }
            running.retain(|_, h| !h.is_finished());
            let now = Instant::now();
            for pair in shared.snapshot().state.pairs.values() {
                // S4: an epoch never goes back. An agent that holds a higher one
                // (the pair was re-added, the controllers restored) raises it.
                let live_s = liveness.get(pair.serving_id());
                let live_b = liveness.get(pair.standby_id());
                let held = [(pair.serving_id(), &live_s), (pair.standby_id(), &live_b)]
                    .into_iter()
                    .filter_map(|(id, v)| v.as_ref().map(|v| (id, v.hello.highest_epoch)))
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
                let res = &pair.spec.resource;
                let sv = agent_view(live_s.as_ref(), res, now, leading_since);
                let sb = agent_view(live_b.as_ref(), res, now, leading_since);
                let dec = decide(pair, &sv, &sb, now_unix_ms(), &cfg.detector);
                let id = pair.spec.id.clone();
                if said.get(&id) != Some(&dec.reason) {
                    tracing::info!(pair = %id, epoch = pair.epoch, state = %pair.state, action = ?dec.action, reason = %dec.reason, "decision");
                    said.insert(id.clone(), dec.reason.clone());
                }
                let at_unix_ms = now_unix_ms();
                match dec.action {
                    Action::Nothing => {}
                    Action::SetState(state) => {
                        propose(
                            &raft,
                            Request::SetPairState {
                                pair_id: id,
                                expect: pair.state,
                                state,
                                reason: dec.reason,
                                at_unix_ms,
                            },
                        )
                        .await;
                    }
                    Action::Block => {
                        propose(
                            &raft,
                            Request::SetPairState {
                                pair_id: id,
                                expect: pair.state,
                                state: PairState::Blocked,
                                reason: dec.reason,
                                at_unix_ms,
                            },
                        )
                        .await;
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
                        propose(
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
                        )
                        .await;
                    }
                    Action::ClearOutdated { server, why } => {
                        propose(
                            &raft,
                            Request::ClearOutdated {
                                pair_id: id,
                                server,
                                why,
                                at_unix_ms,
                            },
                        )
                        .await;
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
            tokio::select! {
                _ = live.changed() => {}
                _ = tick.tick() => {}
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
        let view = leader.borrow().clone();
        for tx in liveness.sessions() {
            let _ = tx.try_send(Ok(redirect(&view, "leadership moved")));
        }
        liveness.clear();
    }
}
