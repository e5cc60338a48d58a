//! The failover executor: runs a pair's plan (SPEC §5) step by step on the leader.
//!
//! Confirm → Fence → Promote → Mount → Export → ClaimIp → Verify, then the pair is
//! `Degraded` (serving from the former backup, without a backup of its own).
//!
//! - **S7, durable steps.** Each step's `Running` status is committed to Raft
//!   before the step runs and its `Done`/`Failed` result after. A new leader finds
//!   the plan in the replicated state and re-runs the first step not `Done`; every
//!   step is idempotent (moving an IP that has moved, promoting a Primary, exporting
//!   what is exported are all no-ops), so a repeat is harmless.
//! - **S3, fence before serve.** Promote, Export and ClaimIp only run after Fence is
//!   `Done`, which needs the client IP verified away from the old primary or, as a
//!   fallback, its instance verified stopped or terminated (`crate::fence`).
//!   Isolation runs too but is never a fence by itself; a forced stop is fired and
//!   not awaited. Fence has a deadline per round; a round that failed only on
//!   transient cloud errors is repeated until `fence_retry_ms`; past it (or on a
//!   refusal) the plan fails and the pair is `Blocked`.
//! - **S4, fencing tokens.** Every agent command carries the leader's Raft term and
//!   the plan's epoch; agents refuse older ones.
//! - **S6.** The executor only runs on a leader, and every status change it commits
//!   goes through `client_write`, which needs a quorum: a deposed leader's executor
//!   stops at its next commit.
//!
//! Every step runs inside a `tracing` span carrying the pair id and the epoch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument;
use understudy_cloud::{Cloud, CloudServer};
use understudy_proto::command::Action as Cmd;
use understudy_proto::{
    ClaimIp, Command, DrbdConnect, DrbdDemote, DrbdPromote, ExportNfs, Mount, ReleaseIp,
    UnexportNfs, Unmount,
};

use crate::detector::{failover_still_justified, DetectorConfig};
use crate::fence::Fencer;
use crate::leadership::{now_unix_ms, write, LeaderView};
use crate::liveness::{agent_view, Liveness};
use crate::probe::{ProbeConfig, Prober};
use crate::raft::store::SharedState;
use crate::raft::Raft;
use crate::state::{
    FailoverPlan, PairRecord, PairState, Request, Response, ServerSpec, StandDownStatus,
    StandDownStep, Step, StepStatus,
};

/// Executor timings and the Verify probe.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// One round of Fence must be verified within this long.
    pub fence_deadline_ms: u64,
    /// A round that failed only on transient cloud errors (the API slow,
    /// throttled, failing, hung) is followed by another until this long after
    /// Fence started; then (or after a refusal) the plan fails and the pair is
    /// blocked. 0: a single round.
    pub fence_retry_ms: u64,
    /// The forced stop of the old primary (fired by Fence, not awaited) is
    /// retried for this long.
    pub forced_stop_deadline_ms: u64,
    /// An agent step (promote, mount, export, claim) must succeed within this long.
    pub agent_step_timeout_ms: u64,
    /// Verify must read through the client IP within this long.
    pub verify_timeout_ms: u64,
    /// A serving step after the fence (Promote, Mount, Export, ClaimIp, Verify)
    /// that failed is run again, up to this many attempts in all, with a pause
    /// of a second times the attempts made: each is idempotent, the old primary
    /// is fenced, and an export slow to start on a loaded host is no reason to
    /// leave the pair without a server. Then the pair is `Blocked`. 1: no retry.
    pub step_attempts: u32,
    /// The NFS read used by Verify: `PROGRAM nfs://IP/PATH?version=4&nfsport=PORT`
    /// (libnfs-utils' `nfs-ls`).
    pub verify_program: String,
    /// Pause after a step is committed as running, before it runs. 0 in production;
    /// fault-injection tests use it to kill the leader in the middle of a step, and
    /// the demo to let people watch the steps.
    pub step_pause_ms: u64,
    /// Pause after a step's action ran, before its result is committed. 0 in
    /// production; fault-injection tests kill the leader there (the action is
    /// done on the host but Raft still says Running: the next leader re-runs it).
    pub result_pause_ms: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            fence_deadline_ms: 3000,
            fence_retry_ms: 120_000,
            forced_stop_deadline_ms: 30_000,
            agent_step_timeout_ms: 5000,
            verify_timeout_ms: 10_000,
            step_attempts: 3,
            verify_program: "nfs-ls".into(),
            step_pause_ms: 0,
            result_pause_ms: 0,
        }
    }
}

/// The pause before a failed serving step runs again, times its attempts so far.
const STEP_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Whether a failed step runs again: only the serving steps after the fence,
/// which are idempotent (S7) and safe once the old primary is fenced (S3), and
/// only while fewer than `max_attempts` were made. Confirm and Check judge
/// whether to act at all, Fence retries its own rounds, and the rebuild and
/// reattach steps change the inventory and the cloud: a failure of those ends
/// the plan at once.
pub fn run_failed_step_again(step: Step, attempts: u32, max_attempts: u32) -> bool {
    matches!(
        step,
        Step::Promote | Step::Mount | Step::Export | Step::ClaimIp | Step::Verify
    ) && attempts < max_attempts
}

/// How long past a command's bound the executor waits for the agent's answer
/// (transport and reporting time).
const RESULT_GRACE: Duration = Duration::from_secs(2);

/// Runs plans; one per controller node, used while it leads.
pub struct Executor {
    pub raft: Raft,
    pub state: SharedState,
    pub liveness: Arc<Liveness>,
    pub cloud: Arc<dyn Cloud>,
    pub cfg: ExecutorConfig,
    /// The detector's timings: Confirm re-runs its checks.
    pub detector: DetectorConfig,
    pub probe: ProbeConfig,
    /// Confirm asks the old primary directly before anything is fenced.
    pub prober: Arc<Prober>,
    pub leader: watch::Receiver<LeaderView>,
    /// `[spare]`: pre-spin, rebuild and reattach (`crate::redundancy`); `None`: off.
    pub spare: Option<crate::redundancy::SpareConfig>,
    /// The last provisioning error per pair, for status.
    pub provisioning: Arc<crate::redundancy::Provisioning>,
    /// The latest inventory preflight per pair, for status.
    pub findings: Arc<crate::preflight::Findings>,
    /// The latest cloud signals per server (leader memory, `crate::signals`).
    pub signals: Arc<crate::signals::Signals>,
}

/// A server of the inventory as the cloud knows it.
pub fn cloud_server(s: &ServerSpec) -> CloudServer {
    CloudServer {
        server_id: s.id.clone(),
        instance_id: if s.instance_id.is_empty() {
            s.id.clone()
        } else {
            s.instance_id.clone()
        },
        interface_id: s.interface_id.clone(),
        zone: s.zone.clone(),
    }
}

impl Executor {
    pub(crate) async fn commit(&self, req: Request) -> Result<(), String> {
        let what = req.to_string();
        match write(&self.raft, req).await? {
            Response::Refused { reason } => Err(format!("{what} refused: {reason}")),
            _ => Ok(()),
        }
    }

    pub(crate) fn pair(&self, id: &str) -> Option<PairRecord> {
        self.state
            .snapshot()
            .state
            .pairs
            .get(id)
            .map(|p| PairRecord::clone(p))
    }

    /// Run the plan of `pair_id` to its end (or until this node stops leading).
    pub async fn run(&self, pair_id: &str) {
        loop {
            let view = self.leader.borrow().clone();
            if !view.is_leader {
                return;
            }
            let Some(pair) = self.pair(pair_id) else {
                return;
            };
            let Some(plan) = pair.failover.clone() else {
                return;
            };
            let span = tracing::info_span!("failover", pair = %pair_id, epoch = plan.epoch, kind = plan.kind());
            let Some(rec) = plan.next_step().cloned() else {
                let total = now_unix_ms() - plan.started_unix_ms;
                let r = self
                    .commit(Request::FinishFailover {
                        pair_id: pair_id.into(),
                        epoch: plan.epoch,
                        state: PairState::Degraded,
                        reason: if plan.steps.iter().any(|s| s.step == Step::Check) {
                            format!(
                                "switched over from {} to {} in {total} ms; {} resynchronises as the backup",
                                plan.from, plan.to, plan.from
                            )
                        } else {
                            format!(
                                "failed over from {} to {} in {total} ms; serving without a backup",
                                plan.from, plan.to
                            )
                        },
                        at_unix_ms: now_unix_ms(),
                    })
                    .instrument(span.clone())
                    .await;
                if let Err(e) = r {
                    span.in_scope(|| tracing::warn!(error = %e, "could not finish the plan"));
                }
                return;
            };
            if let StepStatus::Failed { reason, .. } = &rec.status {
                if !run_failed_step_again(rec.step, rec.attempts, self.cfg.step_attempts) {
                    let state = if matches!(rec.step, Step::Confirm | Step::Check) {
                        PairState::Suspect
                    } else {
                        PairState::Blocked
                    };
                    let r = self
                        .commit(Request::FinishFailover {
                            pair_id: pair_id.into(),
                            epoch: plan.epoch,
                            state,
                            reason: format!("failover stopped at step {}: {reason}", rec.step),
                            at_unix_ms: now_unix_ms(),
                        })
                        .instrument(span.clone())
                        .await;
                    if let Err(e) = r {
                        span.in_scope(|| tracing::warn!(error = %e, "could not end the plan"));
                    }
                    return;
                }
                span.in_scope(|| {
                    tracing::warn!(step = %rec.step, attempts = rec.attempts, %reason, "step failed; running it again (idempotent, the old primary is fenced)")
                });
                tokio::time::sleep(STEP_RETRY_PAUSE * rec.attempts).await;
                if !self.leader.borrow().is_leader {
                    return;
                }
                // (and on to run it again below)
            }
            let step_span = tracing::info_span!(parent: &span, "step", step = %rec.step, attempt = rec.attempts + 1, outcome = tracing::field::Empty, duration_ms = tracing::field::Empty);
            let res = async {
                // S7: committed before it runs.
                self.commit(Request::StepUpdate {
                    pair_id: pair_id.into(),
                    epoch: plan.epoch,
                    step: rec.step,
                    status: StepStatus::Running {
                        term: view.term,
                        started_unix_ms: now_unix_ms(),
                    },
                    at_unix_ms: now_unix_ms(),
                })
                .await?;
                tracing::info!("step started");
                if self.cfg.step_pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(self.cfg.step_pause_ms)).await;
                }
                let t0 = Instant::now();
                let out = self.run_step(rec.step, &pair, &plan, view.term).await;
                let duration_ms = t0.elapsed().as_millis() as u64;
                let current = tracing::Span::current();
                current.record("duration_ms", duration_ms);
                current.record("outcome", if out.is_ok() { "done" } else { "failed" });
                match &out {
                    Ok(detail) => tracing::info!(duration_ms, %detail, "step done"),
                    Err(reason) => tracing::warn!(duration_ms, %reason, "step failed"),
                }
                if self.cfg.result_pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(self.cfg.result_pause_ms)).await;
                }
                let status = match out {
                    Ok(detail) => StepStatus::Done {
                        duration_ms,
                        detail,
                    },
                    Err(reason) => StepStatus::Failed {
                        duration_ms,
                        reason,
                    },
                };
                // S7: and its result after.
                self.commit(Request::StepUpdate {
                    pair_id: pair_id.into(),
                    epoch: plan.epoch,
                    step: rec.step,
                    status,
                    at_unix_ms: now_unix_ms(),
                })
                .await
            }
            .instrument(step_span)
            .await;
            if let Err(e) = res {
                span.in_scope(|| tracing::warn!(error = %e, "plan paused: cannot commit"));
                return;
            }
        }
    }

    async fn run_step(
        &self,
        step: Step,
        pair: &PairRecord,
        plan: &FailoverPlan,
        term: u64,
    ) -> Result<String, String> {
        let from = pair
            .any_server(&plan.from)
            .ok_or_else(|| format!("{} is not in the pair", plan.from))?;
        let to = pair
            .any_server(&plan.to)
            .ok_or_else(|| format!("{} is not in the pair", plan.to))?;
        match step {
            Step::Confirm if plan.is_reattach() => self.confirm_dead(pair, plan).await,
            Step::Confirm => self.confirm(pair, plan).await,
            Step::Fence => self.fence(pair, &from, &to).await,
            Step::WaitSpare => self.wait_spare(pair, &plan.to).await,
            Step::MoveVolumes => self.move_volumes(&from, &to).await,
            Step::Adopt => {
                self.commit(Request::redundancy(
                    &pair.spec.id,
                    crate::state::RedundancyRequest::Adopt {
                        replaces: plan.from.clone(),
                        volumes: from.volumes.clone(),
                    },
                    now_unix_ms(),
                ))
                .await?;
                Ok(format!(
                    "{} replaces {} in the inventory with its volumes {}",
                    plan.to,
                    plan.from,
                    from.volumes.join(",")
                ))
            }
            Step::BringUp => {
                let pair = self.pair(&pair.spec.id).ok_or("pair gone")?;
                let device = self
                    .spare
                    .as_ref()
                    .map(|c| c.device.clone())
                    .unwrap_or_else(|| "xvdf".into());
                self.configure(
                    &pair,
                    &plan.to,
                    pair.standby_id(),
                    Some(device),
                    false,
                    term,
                )
                .await
            }
            Step::Repoint => self.repoint_standby(pair, term).await,
            Step::Promote => {
                // DRBD refuses a second Primary: after a fence of a live old
                // primary (a manual promotion) wait, bounded, until the target
                // no longer sees it as a connected Primary.
                let waited = self.until_peer_not_primary(&plan.to).await;
                self.agent(
                    pair,
                    plan,
                    term,
                    Cmd::Promote(DrbdPromote { force: plan.force }),
                )
                .await
                .map(|d| match waited {
                    Some(ms) if ms > 0 => {
                        format!("{d}; waited {ms} ms for the fenced peer's DRBD connection to drop")
                    }
                    _ => d,
                })
            }
            Step::Check => self.switchover_check(pair, plan).await,
            Step::ReleaseOld => {
                self.old(
                    pair,
                    plan,
                    term,
                    Cmd::ReleaseIp(ReleaseIp {
                        ip: pair.spec.client_ip.clone(),
                        prefix_len: pair.spec.client_ip_prefix_len as u32,
                    }),
                )
                .await
            }
            Step::UnexportOld => {
                self.old(pair, plan, term, Cmd::UnexportNfs(UnexportNfs {}))
                    .await
            }
            Step::UnmountOld => self.old(pair, plan, term, Cmd::Unmount(Unmount {})).await,
            Step::DemoteOld => self.old(pair, plan, term, Cmd::Demote(DrbdDemote {})).await,
            Step::Mount => self.agent(pair, plan, term, Cmd::Mount(Mount {})).await,
            Step::Export => {
                self.agent(pair, plan, term, Cmd::ExportNfs(ExportNfs {}))
                    .await
            }
            Step::ClaimIp => {
                self.agent(
                    pair,
                    plan,
                    term,
                    Cmd::ClaimIp(ClaimIp {
                        ip: pair.spec.client_ip.clone(),
                        prefix_len: pair.spec.client_ip_prefix_len as u32,
                    }),
                )
                .await
            }
            Step::Verify => self.verify(pair).await,
        }
    }

    /// Bring-up: the serving server holds the DRBD primary role but does not serve.
    /// Runs the missing steps on it with the pair's current epoch (no fencing: it
    /// is the only Primary, and no failover is in flight).
    pub async fn serve(&self, pair_id: &str, steps: Vec<Step>) {
        let view = self.leader.borrow().clone();
        let Some(pair) = self.pair(pair_id) else {
            return;
        };
        if !view.is_leader || pair.failover.is_some() {
            return;
        }
        let span = tracing::info_span!("serve", pair = %pair_id, epoch = pair.epoch, server = %pair.serving_id());
        async {
            let plan = FailoverPlan {
                epoch: pair.epoch,
                from: pair.standby_id().to_owned(),
                to: pair.serving_id().to_owned(),
                reason: "bring-up".into(),
                automatic: false,
                started_unix_ms: now_unix_ms(),
                steps: vec![],
                force: false,
            };
            for step in steps {
                // Committed before it is sent: only a leader holding a quorum
                // brings a server up, and the history says so.
                if let Err(e) = self
                    .commit(Request::IssueCommand {
                        pair_id: pair_id.into(),
                        epoch: pair.epoch,
                        server: pair.serving_id().into(),
                        command: format!("bring-up {step}"),
                        at_unix_ms: now_unix_ms(),
                    })
                    .await
                {
                    tracing::warn!(step = %step, error = %e, "bring-up step not committed: not sent");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                }
                let t0 = Instant::now();
                match self.run_step(step, &pair, &plan, view.term).await {
                    Ok(detail) => tracing::info!(step = %step, duration_ms = t0.elapsed().as_millis() as u64, %detail, "bring-up step done"),
                    Err(reason) => {
                        tracing::warn!(step = %step, %reason, "bring-up step failed");
                        // Let the next decision retry, not too eagerly.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// S1: tell the standby's agent to mark its disk Outdated (`drbdadm outdate`),
    /// committed first, with the pair's current fencing token.
    pub async fn outdate_standby(&self, pair_id: &str, epoch: u64, server: &str) {
        let view = self.leader.borrow().clone();
        if !view.is_leader {
            return;
        }
        let span = tracing::info_span!("outdate", pair = %pair_id, epoch, server = %server);
        async {
            if let Err(e) = self
                .commit(Request::IssueCommand {
                    pair_id: pair_id.into(),
                    epoch,
                    server: server.into(),
                    command: "drbdadm outdate (S1)".into(),
                    at_unix_ms: now_unix_ms(),
                })
                .await
            {
                tracing::warn!(error = %e, "outdate not committed: not sent");
                return;
            }
            let outdate = Cmd::Outdate(understudy_proto::DrbdOutdate {});
            match self
                .command(server, pair_id, epoch, view.term, outdate)
                .await
            {
                Ok(detail) => tracing::info!(%detail, "standby outdated"),
                Err(error) => tracing::warn!(%error, "standby not outdated"),
            }
        }
        .instrument(span)
        .await
    }

    /// The views [`crate::detector::decide`] takes, for the plan's old primary
    /// and its target, from this leader's live view now.
    fn plan_views(
        &self,
        pair: &PairRecord,
        plan: &FailoverPlan,
    ) -> (crate::observe::AgentView, crate::observe::AgentView) {
        let (now, since) = (Instant::now(), self.liveness.silence_origin());
        let res = &pair.spec.resource;
        (
            agent_view(self.liveness.get(&plan.from).as_ref(), res, now, since),
            agent_view(self.liveness.get(&plan.to).as_ref(), res, now, since),
        )
    }

    /// Confirm, before anything is fenced:
    /// 1. the detector's checks still hold (both witnesses, S2, and a fresh
    ///    backup, S1): a plan can commit late, or be resumed by a new leader, which
    ///    waits (up to `agent_step_timeout_ms`) for the agents to find it and for
    ///    the witness times to pass again under its own clock;
    /// 2. the old primary does not answer direct probes over a fresh path for
    ///    `confirm_window_ms` (its session stream may be in TCP back-off after a
    ///    network blip, so its silence there proves nothing on its own);
    /// 3. the checks still hold after the probe window.
    ///
    /// An error sends the pair back to `Suspect` (see [`Executor::run`]).
    async fn confirm(&self, pair: &PairRecord, plan: &FailoverPlan) -> Result<String, String> {
        if !plan.automatic {
            // An operator's promotion: the operator is the witness. S1 was
            // checked when the command was accepted, or waived with
            // --force --accept-data-loss (S8); Fence still comes first (S3).
            return Ok(format!(
                "manual promotion of {} ({}): {}",
                plan.to,
                if plan.force {
                    "forced: S1 waived, data loss accepted (S8)"
                } else {
                    "S1 checked when the command was accepted"
                },
                plan.reason
            ));
        }
        let deadline = Instant::now() + Duration::from_millis(self.cfg.agent_step_timeout_ms);
        let d = &self.detector;
        // A new leader counts silence from its own start: give the witnesses
        // their full times (and the agents a heartbeat or two to dial it).
        let settle =
            Duration::from_millis(d.primary_silence_ms.max(d.peer_loss_ms) + d.agent_timeout_ms);
        let from = pair
            .server(&plan.from)
            .ok_or_else(|| format!("{} is not in the pair", plan.from))?;
        let check = |what: &str| -> Result<Result<String, String>, String> {
            let pair = self.pair(&pair.spec.id).unwrap_or_else(|| pair.clone());
            if let Some(v) = self.liveness.get(&plan.from) {
                if v.connected && v.last_seen.elapsed() < Duration::from_millis(500) {
                    return Err(format!(
                        "{} answered again on its session {what}: not failing over",
                        plan.from
                    ));
                }
            }
            // S1: a standby marked outdated after the plan was decided (a late
            // fence-peer handler, a report) is never promoted.
            if let Some(m) = pair.outdated.as_ref().filter(|m| m.server == plan.to) {
                return Err(format!(
                    "S1: {} is outdated since {} ({}) {what}: not promoting it",
                    plan.to,
                    crate::state::fmt_unix_ms(m.lost_peer_unix_ms),
                    m.source
                ));
            }
            let (sv, sb) = self.plan_views(&pair, plan);
            if !sb.connected {
                return Ok(Err(format!(
                    "{}'s agent is not connected: cannot promote it",
                    plan.to
                )));
            }
            match failover_still_justified(&plan.from, &plan.to, &sv, &sb, d) {
                Ok(evidence) => Ok(Ok(evidence)),
                Err(why) if self.liveness.leading_since().elapsed() < settle => Ok(Err(why)),
                Err(why) => Err(format!("{why} {what}: not failing over")),
            }
        };
        loop {
            match check("at Confirm")? {
                Ok(_) => break,
                Err(why) if Instant::now() >= deadline => return Err(why),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let window = Duration::from_millis(self.probe.confirm_window_ms);
        let asked = self
            .prober
            .ask(
                &pair.spec.id,
                from,
                window,
                Duration::from_millis(self.probe.interval_ms),
            )
            .await;
        let (sent, errors) = match asked {
            Ok((after, r)) => {
                return Err(format!(
                    "{} answered a direct probe {} ms after Confirm asked (highest epoch {}, its session to the leader {}, last heard from a controller {}): alive, not fencing it",
                    plan.from,
                    after.as_millis(),
                    r.highest_epoch,
                    if r.stream_healthy { "healthy" } else { "stalled" },
                    if r.stream_silent_ms == u64::MAX {
                        "never".to_string()
                    } else {
                        format!("{} ms ago", r.stream_silent_ms)
                    }
                ))
            }
            Err(e) => e,
        };
        let evidence = match check("after the direct probes")? {
            Ok(e) => e,
            Err(why) => return Err(why),
        };
        let errors = if errors.is_empty() {
            String::new()
        } else {
            format!(" (probe errors: {})", errors.join("; "))
        };
        Ok(format!(
            "{evidence}; {} did not answer {sent} direct probes in {} ms{errors}; {} connected",
            plan.from,
            window.as_millis(),
            plan.to
        ))
    }

    /// S3: the client IP verified away from the old primary, or (fallback) its
    /// instance verified stopped; isolation and a forced stop fired alongside. See
    /// [`crate::fence`].
    async fn fence(
        &self,
        pair: &PairRecord,
        from: &ServerSpec,
        to: &ServerSpec,
    ) -> Result<String, String> {
        let fencer = Fencer {
            cloud: self.cloud.clone(),
            client_ip: pair.spec.client_ip.clone(),
            from: cloud_server(from),
            to: cloud_server(to),
            deadline: Duration::from_millis(self.cfg.fence_deadline_ms),
            retry_for: Duration::from_millis(self.cfg.fence_retry_ms),
            forced_stop_deadline: Duration::from_millis(self.cfg.forced_stop_deadline_ms),
        };
        // The forced stop and a still-running isolation go on in their own tasks
        // (dropping the handles detaches them) and log their outcomes in this span.
        let run = fencer.run().await;
        run.result.map(|f| f.to_string()).map_err(|e| e.to_string())
    }

    /// Wait (up to `agent_step_timeout_ms`) until `server` reports its DRBD peer
    /// not connected as a Primary; the milliseconds waited, `None` on timeout.
    async fn until_peer_not_primary(&self, server: &str) -> Option<u64> {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(self.cfg.agent_step_timeout_ms);
        loop {
            let v = self.liveness.get(server);
            let busy = v
                .as_ref()
                .and_then(|v| v.last_report.as_ref())
                .and_then(|r| r.drbd.as_ref())
                .map(|d| {
                    d.resources.iter().any(|r| {
                        r.summary.as_ref().is_some_and(|s| {
                            s.connection == "Connected" && s.peer_role == "Primary"
                        })
                    })
                })
                .unwrap_or(false);
            if !busy {
                return Some(t0.elapsed().as_millis() as u64);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send a command to the old primary's agent (a switchover) and wait for its result.
    async fn old(
        &self,
        pair: &PairRecord,
        plan: &FailoverPlan,
        term: u64,
        action: Cmd,
    ) -> Result<String, String> {
        self.command(&plan.from, &pair.spec.id, plan.epoch, term, action)
            .await
    }

    /// Switchover's first step: the target is UpToDate, connected and in sync
    /// now, and both agents answer (no data may be lost, SPEC §5).
    async fn switchover_check(
        &self,
        pair: &PairRecord,
        plan: &FailoverPlan,
    ) -> Result<String, String> {
        let now = Instant::now();
        let since = self.liveness.silence_origin();
        let res = &pair.spec.resource;
        let from = agent_view(self.liveness.get(&plan.from).as_ref(), res, now, since);
        let to = agent_view(self.liveness.get(&plan.to).as_ref(), res, now, since);
        if !from.connected {
            return Err(format!(
                "{}'s agent is not connected: a switchover needs it to step down; use promote if it is dead",
                plan.from
            ));
        }
        crate::detector::switchover_ready(&plan.to, &to)
    }

    /// Send a command to the new primary's agent and wait for its result.
    async fn agent(
        &self,
        pair: &PairRecord,
        plan: &FailoverPlan,
        term: u64,
        action: Cmd,
    ) -> Result<String, String> {
        self.command(&plan.to, &pair.spec.id, plan.epoch, term, action)
            .await
    }

    /// Send a command carrying the fencing token (`epoch`, `term`) to `server`'s
    /// agent and wait for its result, retrying while its session is not there,
    /// for up to `agent_step_timeout_ms`.
    pub(crate) async fn command(
        &self,
        server: &str,
        pair_id: &str,
        epoch: u64,
        term: u64,
        action: Cmd,
    ) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.agent_step_timeout_ms);
        let mut last = String::new();
        while Instant::now() < deadline {
            // S6: a node that stopped leading (lease lost) sends nothing.
            if !self.leader.borrow().is_leader {
                return Err("this controller is no longer the leader: command not sent".into());
            }
            // The agent stops its action at this bound and always answers, so
            // the result recorded is the definite one (never "failed" for an
            // action that then succeeds late).
            let bound = deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(Duration::from_millis(200))
                .max(Duration::from_millis(100));
            let cmd = Command {
                command_id: 0,
                raft_term: term,
                epoch,
                pair_id: pair_id.to_owned(),
                timeout_ms: bound.as_millis() as u64,
                action: Some(action.clone()),
            };
            match self.liveness.send_command(server, cmd) {
                Err(e) => last = e,
                Ok(rx) => {
                    let left = bound + RESULT_GRACE;
                    match tokio::time::timeout(left, rx).await {
                        Ok(Ok(r)) if r.ok => {
                            self.liveness.note_epoch(server, epoch);
                            return Ok(format!("{} ({} ms on the agent)", r.detail, r.duration_ms));
                        }
                        Ok(Ok(r)) => return Err(format!("{server} refused: {}", r.error)),
                        Ok(Err(_)) => {
                            last = format!("{server}'s session closed before answering")
                        }
                        Err(_) => {
                            return Err(format!(
                                "{} gave no answer within {} ms of its {} ms bound: its agent is stuck; check it before retrying",
                                server,
                                RESULT_GRACE.as_millis(),
                                bound.as_millis()
                            ))
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "no result within {} ms: {last}",
            self.cfg.agent_step_timeout_ms
        ))
    }

    /// S10: stand down the standby that serves, then let it reconnect as the
    /// backup, discarding its data: each step's command carries the pair's current
    /// epoch (so a stale old primary learns it, S4) and is recorded in Raft
    /// (`Started` committed before the command is sent, the result after). Stops at
    /// the first failure; the next decision retries from what the agents report.
    pub async fn stand_down(&self, pair_id: &str, steps: Vec<StandDownStep>) {
        let view = self.leader.borrow().clone();
        let Some(pair) = self.pair(pair_id) else {
            return;
        };
        if !view.is_leader || pair.failover.is_some() {
            return;
        }
        let (serving, standby) = (pair.serving_id().to_owned(), pair.standby_id().to_owned());
        let span = tracing::info_span!("stand_down", pair = %pair_id, epoch = pair.epoch, server = %standby);
        let commanded: std::collections::BTreeSet<&str> = steps
            .iter()
            .map(|s| {
                if s.on_serving() {
                    serving.as_str()
                } else {
                    standby.as_str()
                }
            })
            .collect();
        async {
            for step in steps {
                let server = if step.on_serving() { &serving } else { &standby };
                let record = |status| Request::StandDownStep {
                    pair_id: pair_id.into(),
                    epoch: pair.epoch,
                    server: server.clone(),
                    step,
                    status,
                    at_unix_ms: now_unix_ms(),
                };
                if let Err(e) = self
                    .commit(record(StandDownStatus::Started { term: view.term }))
                    .await
                {
                    tracing::warn!(%step, error = %e, "stand-down paused: cannot commit");
                    return;
                }
                let t0 = Instant::now();
                let out = self
                    .command(server, pair_id, pair.epoch, view.term, stand_down_command(step, &pair))
                    .await;
                let duration_ms = t0.elapsed().as_millis() as u64;
                let status = match &out {
                    Ok(detail) => {
                        tracing::info!(%step, on = %server, duration_ms, %detail, "stand-down step done");
                        StandDownStatus::Done {
                            duration_ms,
                            detail: detail.clone(),
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(%step, on = %server, duration_ms, %reason, "stand-down step failed");
                        StandDownStatus::Failed {
                            duration_ms,
                            reason: reason.clone(),
                        }
                    }
                };
                if let Err(e) = self.commit(record(status)).await {
                    tracing::warn!(%step, error = %e, "stand-down paused: cannot commit");
                    return;
                }
                if out.is_err() {
                    // Let the next decision retry, not too eagerly.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                }
            }
            // Decide again only on reports sent after the last command, so the
            // same steps are not started twice on a view from before them.
            let done = Instant::now();
            let deadline = done + Duration::from_secs(2);
            while Instant::now() < deadline {
                let fresh = |id: &str| {
                    self.liveness
                        .get(id)
                        .and_then(|v| v.last_report_at)
                        .is_some_and(|t| t > done)
                };
                if commanded.iter().all(|id| fresh(id)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        .instrument(span)
        .await
    }

    /// An NFS read through the client IP, as a client would do it.
    async fn verify(&self, pair: &PairRecord) -> Result<String, String> {
        let url = format!(
            "nfs://{}{}?version=4&nfsport={}",
            pair.spec.client_ip, pair.spec.export_path, pair.spec.nfs_port
        );
        let deadline = Instant::now() + Duration::from_millis(self.cfg.verify_timeout_ms);
        let mut tries = 0;
        loop {
            tries += 1;
            let out = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::process::Command::new(&self.cfg.verify_program)
                    .arg(&url)
                    .kill_on_drop(true)
                    .output(),
            )
            .await;
            let why = match out {
                Ok(Ok(o)) if o.status.success() => {
                    let n = String::from_utf8_lossy(&o.stdout).lines().count();
                    return Ok(format!(
                        "{} read {url}: {n} entries (try {tries})",
                        self.cfg.verify_program
                    ));
                }
                Ok(Ok(o)) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Ok(Err(e)) => format!(
                    "cannot run {}: {e} (apt-get install libnfs-utils)",
                    self.cfg.verify_program
                ),
                Err(_) => "no answer within 3 s".into(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "no NFS read through {url} after {tries} tries: {why}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The agent command of a stand-down step (S10).
fn stand_down_command(step: StandDownStep, pair: &PairRecord) -> Cmd {
    match step {
        StandDownStep::ReleaseIp => Cmd::ReleaseIp(ReleaseIp {
            ip: pair.spec.client_ip.clone(),
            prefix_len: pair.spec.client_ip_prefix_len as u32,
        }),
        StandDownStep::AnnounceServingIp => Cmd::ClaimIp(ClaimIp {
            ip: pair.spec.client_ip.clone(),
            prefix_len: pair.spec.client_ip_prefix_len as u32,
        }),
        StandDownStep::UnexportNfs => Cmd::UnexportNfs(UnexportNfs {}),
        StandDownStep::Unmount => Cmd::Unmount(Unmount {}),
        StandDownStep::Demote => Cmd::Demote(DrbdDemote {}),
        StandDownStep::DiscardAndReconnect => Cmd::Connect(DrbdConnect {
            discard_my_data: true,
        }),
        StandDownStep::ReconnectServing => Cmd::Connect(DrbdConnect {
            discard_my_data: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step; the match makes a new step a compile error here until it
    /// is listed (and its retry policy decided).
    fn all_steps() -> Vec<Step> {
        let all = vec![
            Step::Confirm,
            Step::Fence,
            Step::Promote,
            Step::Mount,
            Step::Export,
            Step::ClaimIp,
            Step::Verify,
            Step::WaitSpare,
            Step::MoveVolumes,
            Step::Adopt,
            Step::BringUp,
            Step::Repoint,
            Step::Check,
            Step::ReleaseOld,
            Step::UnexportOld,
            Step::UnmountOld,
            Step::DemoteOld,
        ];
        for s in &all {
            match s {
                Step::Confirm
                | Step::Fence
                | Step::Promote
                | Step::Mount
                | Step::Export
                | Step::ClaimIp
                | Step::Verify
                | Step::WaitSpare
                | Step::MoveVolumes
                | Step::Adopt
                | Step::BringUp
                | Step::Repoint
                | Step::Check
                | Step::ReleaseOld
                | Step::UnexportOld
                | Step::UnmountOld
                | Step::DemoteOld => {}
            }
        }
        all
    }

    #[test]
    fn only_the_serving_steps_after_the_fence_run_again_and_only_up_to_the_bound() {
        let serving = [
            Step::Promote,
            Step::Mount,
            Step::Export,
            Step::ClaimIp,
            Step::Verify,
        ];
        for step in all_steps() {
            for max in 0..5u32 {
                for attempts in 0..7u32 {
                    let again = run_failed_step_again(step, attempts, max);
                    let want = serving.contains(&step) && attempts < max;
                    assert_eq!(again, want, "{step} after {attempts} of {max} attempts");
                }
            }
        }
        // The default: three attempts in all, so two more after a first failure.
        let d = ExecutorConfig::default().step_attempts;
        assert_eq!(d, 3);
        assert!(run_failed_step_again(Step::Export, 1, d));
        assert!(run_failed_step_again(Step::Export, 2, d));
        assert!(!run_failed_step_again(Step::Export, 3, d));
        // Confirm's failure means "do not act": never repeated.
        assert!(!run_failed_step_again(Step::Confirm, 1, d));
        assert!(!run_failed_step_again(Step::Fence, 1, d));
    }
}
