//! Redundancy restored without a human (SPEC §5 Replace, S9): the leader
//! pre-spins a spare when a pair turns `Suspect`, makes it the new backup after a
//! failover (fresh volumes, DRBD up, full resync, `Rebuilding` with an ETA, then
//! `Healthy`), terminates a false alarm's spare after a keep time, terminates a
//! replaced server once the pair is `Healthy` again (its volumes kept), and,
//! when no backup is usable (S1 refused it), moves the dead primary's volumes to
//! the spare and serves from there (reattach, S9).
//!
//! [`need`] is pure: what a pair needs now, from its replicated record and its
//! agents' views. The leader (`leader.rs`) runs the answer through the
//! [`Executor`] methods here, each step committed before and after it runs
//! (S7), each cloud call carrying a client token derived from committed state
//! (a spare's `{pair}-spare-{n}`, a rebuild's volumes `{pair}-r{id}-v{k}`), so a
//! new leader that repeats a step launches or creates nothing twice.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::Instrument;
use understudy_cloud::provision::{tag_list, tags};
use understudy_cloud::{InstanceState, LaunchRequest, VolumeFilter, VolumeRequest, VolumeState};
use understudy_proto::command::Action as Cmd;
use understudy_proto::DrbdConfigure;

use crate::detector::DetectorConfig;
use crate::failover::{cloud_server, Executor};
use crate::leadership::now_unix_ms;
use crate::observe::AgentView;
use crate::state::{
    node_id, FailoverPlan, PairRecord, PairState, RebuildStep, RedundancyRequest, Request,
    ServerSpec, SpareInstance, StepStatus,
};

/// `[spare]`: pre-spun spares, replacement backups and reattach. Without this
/// section the controller never launches anything: a `Degraded` pair stays so
/// until its old server comes back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpareConfig {
    /// Size of each fresh volume of a replacement backup, in GiB.
    pub volume_size_gib: u64,
    /// Device name volumes are attached as (`xvdf`; EC2: `/dev/xvdf`).
    pub device: String,
    /// A spare launched for a false alarm is kept this long after the pair is
    /// `Healthy` again, then terminated.
    pub keep_ms: u64,
    /// From launch to its agent registered, at most.
    pub boot_timeout_ms: u64,
    /// A volume must be `available` / attached within this long.
    pub volume_timeout_ms: u64,
    /// Replace a dead standby of a `Degraded` pair once it has been silent this
    /// long (0: right after the failover: the fence stopped it).
    pub replace_after_ms: u64,
    /// Reattach the dead primary's volumes to the spare when no backup is usable (S9).
    pub reattach: bool,
}

impl Default for SpareConfig {
    fn default() -> Self {
        SpareConfig {
            volume_size_gib: 1,
            device: "xvdf".into(),
            keep_ms: 600_000,
            boot_timeout_ms: 300_000,
            volume_timeout_ms: 120_000,
            replace_after_ms: 0,
            reattach: true,
        }
    }
}

/// What a pair needs for its redundancy now ([`need`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// Request and launch a spare.
    Launch {
        reason: String,
    },
    /// A spare was requested but its launch not recorded: launch again, same token.
    ResumeLaunch,
    /// The spare is no longer needed: retire it.
    Retire {
        why: String,
    },
    /// The spare is retiring: terminate its instance.
    Terminate,
    /// Start a rebuild replacing the dead standby.
    StartRebuild {
        replaces: String,
    },
    /// A rebuild is in flight: run it.
    ResumeRebuild,
    /// Start a reattach plan (S9).
    StartReattach {
        from: String,
        to: String,
    },
    /// A replaced server's instance is to be terminated (the pair is Healthy).
    TerminateRetired {
        server: String,
    },
}

fn dead(v: &AgentView, for_ms: u64) -> bool {
    !v.connected && v.silent_ms.is_none_or(|s| s >= for_ms)
}

/// What `pair` needs now; pure. `serving` and `standby` are its agents' views.
pub fn need(
    pair: &PairRecord,
    serving: &AgentView,
    standby: &AgentView,
    now_unix_ms: i64,
    cfg: &SpareConfig,
    detector: &DetectorConfig,
) -> Need {
    let r = &pair.redundancy;
    if let Some(s) = &r.spare {
        if s.terminating {
            return Need::Terminate;
        }
    }
    if r.rebuild.is_some() {
        return Need::ResumeRebuild;
    }
    if let Some(s) = &r.spare {
        if s.instance.is_none() {
            return Need::ResumeLaunch;
        }
    }
    if pair.state == PairState::Paused {
        return Need::Nothing;
    }
    let launched = r
        .spare
        .as_ref()
        .filter(|s| s.instance.is_some() && !s.terminating);
    let standby_dead = dead(standby, cfg.replace_after_ms.max(detector.agent_timeout_ms));
    let serving_dead = dead(serving, detector.primary_silence_ms);
    // S9: the file server is dead and its backup cannot take over: marked
    // outdated (S1), not UpToDate (never synced, resyncing), or dead itself.
    let standby_unusable = pair
        .outdated
        .as_ref()
        .is_some_and(|m| m.server == pair.standby_id())
        || standby.drbd.as_ref().is_none_or(|d| d.disk != "UpToDate")
        || dead(standby, detector.agent_timeout_ms);
    let no_usable_backup = pair.state == PairState::Blocked
        && pair.failover.is_none()
        && serving_dead
        && standby_unusable;
    match pair.state {
        // Pre-spin; a reattach plan has (and adopts) its own spare.
        PairState::Suspect | PairState::FailingOver
            if r.spare.is_none() && !pair.failover.as_ref().is_some_and(|f| f.is_reattach()) =>
        {
            return Need::Launch {
                reason: format!(
                    "pre-spin: pair {} is {} ({})",
                    pair.spec.id, pair.state, pair.state_reason
                ),
            };
        }
        PairState::Degraded if pair.failover.is_none() && standby_dead => {
            return match launched {
                Some(_) => Need::StartRebuild {
                    replaces: pair.standby_id().to_string(),
                },
                None if r.spare.is_none() => Need::Launch {
                    reason: format!(
                        "replacement for {}: the pair serves without a backup",
                        pair.standby_id()
                    ),
                },
                None => Need::Nothing,
            };
        }
        PairState::Blocked if cfg.reattach && no_usable_backup => {
            return match launched {
                Some(s) => Need::StartReattach {
                    from: pair.serving_id().to_string(),
                    to: s.server_id.clone(),
                },
                None if r.spare.is_none() => Need::Launch {
                    reason: format!(
                        "reattach (S9): {} is dead and {} is not usable",
                        pair.serving_id(),
                        pair.standby_id()
                    ),
                },
                None => Need::Nothing,
            };
        }
        PairState::Healthy => {
            if let Some(x) = r.retired.iter().find(|x| !x.terminated) {
                return Need::TerminateRetired {
                    server: x.spec.id.clone(),
                };
            }
            if let Some(s) = launched {
                let since = pair.state_since_unix_ms.max(s.requested_unix_ms);
                if now_unix_ms - since >= cfg.keep_ms as i64 {
                    return Need::Retire {
                        why: format!(
                            "false alarm: pair {} Healthy for {} ms (keep time {} ms)",
                            pair.spec.id,
                            now_unix_ms - since,
                            cfg.keep_ms
                        ),
                    };
                }
            }
        }
        _ => {}
    }
    Need::Nothing
}

/// The spare's token and server id for the `n`th spare of a pair.
pub fn spare_names(pair_id: &str, n: u64) -> (String, String) {
    (format!("{pair_id}-spare-{n}"), format!("{pair_id}-s{n}"))
}

/// Device names for the `k`th volume: `xvdf`, `xvdg`, ...
fn device_name(base: &str, k: usize) -> String {
    if k == 0 {
        return base.to_string();
    }
    let mut b = base.as_bytes().to_vec();
    if let Some(last) = b.last_mut() {
        *last = last.wrapping_add(k as u8);
    }
    String::from_utf8_lossy(&b).into_owned()
}

impl Executor {
    fn spare_cfg(&self) -> Result<&SpareConfig, String> {
        self.spare
            .as_ref()
            .ok_or_else(|| "no [spare] section in the controller configuration".to_string())
    }

    async fn commit_r(&self, pair_id: &str, req: RedundancyRequest) -> Result<(), String> {
        self.commit(Request::redundancy(pair_id, req, now_unix_ms()))
            .await
    }

    /// Request (if `reason`) and launch the pair's spare; idempotent by token.
    pub async fn launch_spare(&self, pair_id: &str, reason: Option<String>) {
        let span = tracing::info_span!("spare", pair = %pair_id);
        async {
            match self.try_launch_spare(pair_id, reason).await {
                Ok(detail) => {
                    self.provisioning.clear(pair_id);
                    tracing::info!(%detail, "spare launched")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "spare not launched");
                    self.provisioning.set(pair_id, e);
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn try_launch_spare(
        &self,
        pair_id: &str,
        reason: Option<String>,
    ) -> Result<String, String> {
        let pair = self.pair(pair_id).ok_or("pair gone")?;
        // Never launch where the pair's volumes could not follow.
        let zone = self
            .cloud
            .launch_zone()
            .await
            .map_err(|e| format!("cannot tell the launch template's zone: {e}"))?;
        if zone != pair.spec.zone {
            return Err(format!(
                "not launching a spare for pair {pair_id}: the launch template's subnet is in zone {zone}, the pair's volumes are in zone {}; fix the template (or [cloud] subnet) to use a subnet in {}",
                pair.spec.zone, pair.spec.zone
            ));
        }
        if let Some(reason) = reason {
            if pair.redundancy.spare.is_none() {
                let (token, server_id) = spare_names(pair_id, pair.redundancy.spares_launched + 1);
                self.commit_r(
                    pair_id,
                    RedundancyRequest::SpareRequested {
                        token,
                        server_id,
                        reason,
                    },
                )
                .await?;
            }
        }
        let pair = self.pair(pair_id).ok_or("pair gone")?;
        let sp = pair.redundancy.spare.clone().ok_or("no spare requested")?;
        let req = LaunchRequest {
            client_token: sp.token.clone(),
            zone: pair.spec.zone.clone(),
            tags: tag_list(&[
                (tags::PAIR, pair_id),
                (tags::PURPOSE, "spare"),
                (tags::SERVER_ID, &sp.server_id),
                (tags::RESOURCE, &pair.spec.resource),
                (tags::NAME, &sp.server_id),
            ]),
        };
        let t0 = Instant::now();
        let inst = self
            .cloud
            .launch_instance(&req)
            .await
            .map_err(|e| format!("launch of {} failed: {e}", sp.server_id))?;
        if inst.zone != pair.spec.zone {
            return Err(format!(
                "the cloud launched {} in zone {}, not {}: not using it",
                inst.instance_id, inst.zone, pair.spec.zone
            ));
        }
        let instance = SpareInstance {
            instance_id: inst.instance_id.clone(),
            interface_id: inst.interface_id.clone(),
            address: inst.private_ip.clone(),
            zone: inst.zone.clone(),
        };
        self.commit_r(
            pair_id,
            RedundancyRequest::SpareLaunched {
                token: sp.token.clone(),
                instance,
            },
        )
        .await?;
        Ok(format!(
            "{} is instance {} at {} ({}), launch call {} ms",
            sp.server_id,
            inst.instance_id,
            inst.private_ip,
            inst.state,
            t0.elapsed().as_millis()
        ))
    }

    /// Retire (if `why`) and terminate the pair's spare.
    pub async fn retire_spare(&self, pair_id: &str, why: Option<String>) {
        let span = tracing::info_span!("spare", pair = %pair_id);
        async {
            let r = async {
                let pair = self.pair(pair_id).ok_or("pair gone")?;
                let sp = pair.redundancy.spare.clone().ok_or("no spare")?;
                if let Some(why) = why {
                    self.commit_r(
                        pair_id,
                        RedundancyRequest::SpareRetiring {
                            token: sp.token.clone(),
                            why,
                        },
                    )
                    .await?;
                }
                if let Some(i) = &sp.instance {
                    self.cloud
                        .terminate_instance(&i.instance_id)
                        .await
                        .map_err(|e| format!("terminate {}: {e}", i.instance_id))?;
                }
                self.commit_r(
                    pair_id,
                    RedundancyRequest::SpareGone {
                        token: sp.token.clone(),
                    },
                )
                .await?;
                Ok::<_, String>(sp.server_id)
            }
            .await;
            match r {
                Ok(s) => tracing::info!(spare = %s, "spare terminated"),
                Err(e) => tracing::warn!(error = %e, "spare not terminated yet"),
            }
        }
        .instrument(span)
        .await
    }

    /// Terminate a replaced server's instance (the pair is Healthy again); its
    /// volumes are tagged to be kept.
    pub async fn terminate_retired(&self, pair_id: &str, server: &str) {
        let span = tracing::info_span!("retire", pair = %pair_id, server);
        async {
            let r = async {
                let pair = self.pair(pair_id).ok_or("pair gone")?;
                let x = pair
                    .redundancy
                    .retired
                    .iter()
                    .find(|x| x.spec.id == server)
                    .cloned()
                    .ok_or("not retired")?;
                for v in &x.spec.volumes {
                    self.cloud
                        .tag_volume(
                            v,
                            &tag_list(&[
                                (tags::KEEP, "true"),
                                (tags::PURPOSE, "retired"),
                                (tags::PAIR, pair_id),
                                (tags::SERVER_ID, server),
                            ]),
                        )
                        .await
                        .map_err(|e| format!("tag {v}: {e}"))?;
                }
                let cs = cloud_server(&x.spec);
                self.cloud
                    .terminate_instance(&cs.instance_id)
                    .await
                    .map_err(|e| format!("terminate {}: {e}", cs.instance_id))?;
                self.commit_r(
                    pair_id,
                    RedundancyRequest::RetiredTerminated {
                        server: server.to_string(),
                    },
                )
                .await
            }
            .await;
            match r {
                Ok(()) => tracing::info!("replaced server terminated, volumes kept"),
                Err(e) => tracing::warn!(error = %e, "replaced server not terminated yet"),
            }
        }
        .instrument(span)
        .await
    }

    /// Start (if `replaces`) and run the pair's rebuild to its end.
    pub async fn rebuild(&self, pair_id: &str, replaces: Option<String>) {
        if let Some(replaces) = replaces {
            let reason = format!("{replaces} is dead: a spare becomes the backup");
            if let Err(e) = self
                .commit_r(
                    pair_id,
                    RedundancyRequest::StartRebuild { replaces, reason },
                )
                .await
            {
                tracing::warn!(pair = %pair_id, error = %e, "rebuild not started");
                return;
            }
        }
        loop {
            let view = self.leader.borrow().clone();
            if !view.is_leader {
                return;
            }
            let Some(pair) = self.pair(pair_id) else {
                return;
            };
            let Some(plan) = pair.redundancy.rebuild.clone() else {
                return;
            };
            let span =
                tracing::info_span!("rebuild", pair = %pair_id, epoch = pair.epoch, id = plan.id);
            let Some(rec) = plan.next_step().cloned() else {
                let total = now_unix_ms() - plan.started_unix_ms;
                let r = self
                    .commit_r(
                        pair_id,
                        RedundancyRequest::FinishRebuild {
                            id: plan.id,
                            ok: true,
                            reason: format!(
                                "{} is the backup of {} (set up in {total} ms); resyncing",
                                plan.spare,
                                pair.serving_id()
                            ),
                        },
                    )
                    .instrument(span.clone())
                    .await;
                if let Err(e) = r {
                    span.in_scope(|| tracing::warn!(error = %e, "could not finish the rebuild"));
                }
                return;
            };
            if let StepStatus::Failed { reason, .. } = &rec.status {
                // The spare stays; the next decision starts a new rebuild.
                let _ = self
                    .commit_r(
                        pair_id,
                        RedundancyRequest::FinishRebuild {
                            id: plan.id,
                            ok: false,
                            reason: format!("stopped at step {}: {reason}", rec.step),
                        },
                    )
                    .instrument(span.clone())
                    .await;
                return;
            }
            let res = async {
                self.commit_r(
                    pair_id,
                    RedundancyRequest::RebuildStep {
                        id: plan.id,
                        step: rec.step,
                        status: StepStatus::Running {
                            term: view.term,
                            started_unix_ms: now_unix_ms(),
                        },
                    },
                )
                .await?;
                tracing::info!("step started");
                if self.cfg.step_pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(self.cfg.step_pause_ms)).await;
                }
                let t0 = Instant::now();
                let out = self.rebuild_step(rec.step, &pair, &plan.replaces, &plan.spare, plan.id, view.term).await;
                let duration_ms = t0.elapsed().as_millis() as u64;
                let current = tracing::Span::current();
                current.record("duration_ms", duration_ms);
                current.record("outcome", if out.is_ok() { "done" } else { "failed" });
                match &out {
                    Ok(detail) => tracing::info!(duration_ms, %detail, "step done"),
                    Err(reason) => tracing::warn!(duration_ms, %reason, "step failed"),
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
                self.commit_r(
                    pair_id,
                    RedundancyRequest::RebuildStep {
                        id: plan.id,
                        step: rec.step,
                        status,
                    },
                )
                .await
            }
            .instrument(tracing::info_span!(parent: &span, "step", step = %rec.step, attempt = rec.attempts + 1, outcome = tracing::field::Empty, duration_ms = tracing::field::Empty))
            .await;
            if let Err(e) = res {
                span.in_scope(|| tracing::warn!(error = %e, "rebuild paused: cannot commit"));
                return;
            }
        }
    }

    async fn rebuild_step(
        &self,
        step: RebuildStep,
        pair: &PairRecord,
        replaces: &str,
        spare: &str,
        id: u64,
        term: u64,
    ) -> Result<String, String> {
        let cfg = self.spare_cfg()?.clone();
        match step {
            RebuildStep::WaitSpare => self.wait_spare(pair, spare).await,
            RebuildStep::Volumes => {
                let s = pair
                    .any_server(spare)
                    .ok_or_else(|| format!("{spare} is not known to the pair"))?;
                Ok(self.fresh_volumes(pair, &s, id, &cfg).await?.1)
            }
            RebuildStep::Adopt => {
                let s = pair
                    .any_server(spare)
                    .ok_or_else(|| format!("{spare} is not known to the pair"))?;
                let volumes = if pair.server(spare).is_some() {
                    s.volumes.clone()
                } else {
                    self.fresh_volumes(pair, &s, id, &cfg).await?.0
                };
                self.commit_r(
                    &pair.spec.id,
                    RedundancyRequest::Adopt {
                        replaces: replaces.to_string(),
                        volumes: volumes.clone(),
                    },
                )
                .await?;
                Ok(format!(
                    "{spare} replaces {replaces} in the inventory, volumes {}",
                    volumes.join(",")
                ))
            }
            RebuildStep::ConfigureNew => {
                let pair = self.pair(&pair.spec.id).ok_or("pair gone")?;
                let serving = pair.serving_id().to_string();
                self.configure(&pair, spare, &serving, Some(cfg.device.clone()), true, term)
                    .await
            }
            RebuildStep::ConfigureServing => {
                let pair = self.pair(&pair.spec.id).ok_or("pair gone")?;
                let serving = pair.serving_id().to_string();
                self.configure(&pair, &serving, spare, None, false, term)
                    .await
            }
        }
    }

    /// Until the spare's instance runs and its agent has registered.
    pub(crate) async fn wait_spare(
        &self,
        pair: &PairRecord,
        spare: &str,
    ) -> Result<String, String> {
        let cfg = self.spare_cfg()?;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(cfg.boot_timeout_ms);
        let mut last = String::from("not checked yet");
        while Instant::now() < deadline {
            if !self.leader.borrow().is_leader {
                return Err("this controller is no longer the leader".into());
            }
            let fresh = self.pair(&pair.spec.id).unwrap_or_else(|| pair.clone());
            let s = fresh
                .any_server(spare)
                .ok_or_else(|| format!("{spare} has no launched instance"))?;
            match self
                .cloud
                .describe_instance(&cloud_server(&s).instance_id)
                .await
            {
                Ok(Some(i)) if i.state == InstanceState::Running => {
                    match self.liveness.get(spare) {
                        Some(v) if v.connected => {
                            return Ok(format!(
                                "instance {} running, agent {spare} registered ({} ms waited)",
                                i.instance_id,
                                t0.elapsed().as_millis()
                            ))
                        }
                        _ => {
                            last = format!(
                                "instance {} running, agent not registered yet",
                                i.instance_id
                            )
                        }
                    }
                }
                Ok(Some(i))
                    if matches!(
                        i.state,
                        InstanceState::Terminated | InstanceState::ShuttingDown
                    ) =>
                {
                    return Err(format!("spare instance {} is {}", i.instance_id, i.state))
                }
                Ok(Some(i)) => last = format!("instance {} is {}", i.instance_id, i.state),
                Ok(None) => last = "the cloud does not know the instance".into(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "{spare} not ready within {} ms: {last}",
            cfg.boot_timeout_ms
        ))
    }

    /// Poll a volume until `ok` holds.
    async fn wait_volume(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&understudy_cloud::Volume) -> bool,
    ) -> Result<understudy_cloud::Volume, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self
                .cloud
                .describe_volumes(&VolumeFilter {
                    volume_ids: vec![id.to_string()],
                    attached_to: None,
                })
                .await
            {
                Ok(v) => match v.into_iter().find(|v| v.volume_id == id) {
                    Some(v) if ok(&v) => return Ok(v),
                    Some(v) => last = format!("{id} is {}", v.state),
                    None => last = format!("{id} not found"),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{id} not {what} within {timeout:?}: {last}"))
    }

    /// Create (by client token), confirm `available` in the pair's zone, attach to
    /// `s`, confirm `in-use` there. Idempotent. Returns the volume ids.
    async fn fresh_volumes(
        &self,
        pair: &PairRecord,
        s: &ServerSpec,
        id: u64,
        cfg: &SpareConfig,
    ) -> Result<(Vec<String>, String), String> {
        let timeout = Duration::from_millis(cfg.volume_timeout_ms);
        let inst = cloud_server(s).instance_id;
        let t0 = Instant::now();
        let req = VolumeRequest {
            client_token: format!("{}-r{id}-v0", pair.spec.id),
            zone: pair.spec.zone.clone(),
            size_gib: cfg.volume_size_gib,
            tags: tag_list(&[
                (tags::PAIR, &pair.spec.id),
                (tags::PURPOSE, "volume"),
                (tags::SERVER_ID, &s.id),
                (tags::RESOURCE, &pair.spec.resource),
            ]),
        };
        let v = self
            .cloud
            .create_volume(&req)
            .await
            .map_err(|e| format!("create volume: {e}"))?;
        let vid = v.volume_id.clone();
        if !v.attached_to(&inst) {
            let v = self
                .wait_volume(&vid, "available", timeout, |v| {
                    v.state == VolumeState::Available
                })
                .await?;
            if v.zone != s.zone {
                return Err(format!(
                    "{vid} is in zone {}, {} in zone {}: not attaching",
                    v.zone, s.id, s.zone
                ));
            }
            self.cloud
                .attach_volume(&vid, &inst, &cfg.device)
                .await
                .map_err(|e| format!("attach {vid} to {inst}: {e}"))?;
        }
        self.wait_volume(&vid, "in-use on the spare", timeout, |v| {
            v.state == VolumeState::InUse && v.attached_to(&inst)
        })
        .await?;
        Ok((
            vec![vid.clone()],
            format!(
                "{vid} ({} GiB, {}) created and attached to {inst} as {} in {} ms",
                cfg.volume_size_gib,
                pair.spec.zone,
                cfg.device,
                t0.elapsed().as_millis()
            ),
        ))
    }

    /// S9: force-detach `from`'s volumes, confirm `available`, check the zone,
    /// attach them to `to`, confirm `in-use` there.
    pub(crate) async fn move_volumes(
        &self,
        from: &ServerSpec,
        to: &ServerSpec,
    ) -> Result<String, String> {
        let cfg = self.spare_cfg()?.clone();
        let timeout = Duration::from_millis(cfg.volume_timeout_ms);
        let (old, new) = (cloud_server(from).instance_id, cloud_server(to).instance_id);
        if from.volumes.is_empty() {
            return Err(format!(
                "{} has no volumes in the inventory: nothing to reattach; add them to its `volumes`",
                from.id
            ));
        }
        let t0 = Instant::now();
        let mut done = Vec::new();
        for (k, vid) in from.volumes.iter().enumerate() {
            let device = device_name(&cfg.device, k);
            let vols = self
                .cloud
                .describe_volumes(&VolumeFilter {
                    volume_ids: vec![vid.clone()],
                    attached_to: None,
                })
                .await
                .map_err(|e| format!("describe {vid}: {e}"))?;
            let v = vols
                .into_iter()
                .find(|v| v.volume_id == *vid)
                .ok_or_else(|| format!("volume {vid} not found"))?;
            if v.attached_to(&new) {
                done.push(format!("{vid} already on {new}"));
                continue;
            }
            if let Some(a) = v.attachments.iter().find(|a| a.instance_id != new) {
                if a.instance_id != old {
                    return Err(format!(
                        "{vid} is attached to {}, neither {old} nor {new}: not touching it",
                        a.instance_id
                    ));
                }
                self.cloud
                    .detach_volume(vid, &old, true)
                    .await
                    .map_err(|e| format!("force-detach {vid} from {old}: {e}"))?;
            }
            let v = self
                .wait_volume(vid, "available", timeout, |v| {
                    v.state == VolumeState::Available && v.attachments.is_empty()
                })
                .await?;
            if v.zone != to.zone {
                return Err(format!(
                    "{vid} is in zone {}, {} in zone {}: a volume cannot move across zones",
                    v.zone, to.id, to.zone
                ));
            }
            self.cloud
                .attach_volume(vid, &new, &device)
                .await
                .map_err(|e| format!("attach {vid} to {new}: {e}"))?;
            self.wait_volume(vid, "in-use on the spare", timeout, |v| {
                v.state == VolumeState::InUse && v.attached_to(&new)
            })
            .await?;
            done.push(format!(
                "{vid} force-detached from {old}, attached to {new} as {device}"
            ));
        }
        Ok(format!(
            "{} in {} ms",
            done.join("; "),
            t0.elapsed().as_millis()
        ))
    }

    /// `DrbdConfigure` on `server`: its peer becomes `peer` (and its disk the
    /// attached `volume` when given).
    pub(crate) async fn configure(
        &self,
        pair: &PairRecord,
        server: &str,
        peer: &str,
        volume: Option<String>,
        create_md: bool,
        term: u64,
    ) -> Result<String, String> {
        let p = pair
            .any_server(peer)
            .ok_or_else(|| format!("{peer} is not known to the pair"))?;
        let action = Cmd::Configure(DrbdConfigure {
            node_id: node_id(pair, server).ok_or_else(|| format!("{server} is not a member"))?,
            peer_hostname: peer.to_string(),
            peer_node_id: node_id(pair, peer).ok_or_else(|| format!("{peer} is not a member"))?,
            peer_address: format!("{}:{}", p.address, pair.spec.drbd_port),
            volume_device: volume.unwrap_or_default(),
            create_md,
        });
        self.command(server, &pair.spec.id, pair.epoch, term, action)
            .await
    }

    /// Reattach's Confirm: the serving server is silent on its session and does
    /// not answer direct probes for the Confirm window. No S1 check: the point is
    /// that no backup is usable; its data comes with its volumes.
    pub(crate) async fn confirm_dead(
        &self,
        pair: &PairRecord,
        plan: &FailoverPlan,
    ) -> Result<String, String> {
        let from = pair
            .any_server(&plan.from)
            .ok_or_else(|| format!("{} is not in the pair", plan.from))?;
        let silent = |what: &str| -> Result<(), String> {
            if let Some(v) = self.liveness.get(&plan.from) {
                if v.connected && v.last_seen.elapsed() < Duration::from_millis(500) {
                    return Err(format!(
                        "{} answered again on its session {what}: not reattaching",
                        plan.from
                    ));
                }
            }
            Ok(())
        };
        silent("at Confirm")?;
        let window = Duration::from_millis(self.probe.confirm_window_ms);
        match self
            .prober
            .ask(
                &pair.spec.id,
                &from,
                window,
                Duration::from_millis(self.probe.interval_ms),
            )
            .await
        {
            Ok((after, _)) => Err(format!(
                "{} answered a direct probe {} ms after Confirm asked: alive, not reattaching its volumes",
                plan.from,
                after.as_millis()
            )),
            Err((sent, _)) => {
                silent("after the direct probes")?;
                Ok(format!(
                    "{} silent on its session and to {sent} direct probes in {} ms",
                    plan.from,
                    window.as_millis()
                ))
            }
        }
    }

    /// Reattach's last step: point the old backup at the new primary so it
    /// resyncs; an unreachable one is left to the rebuild.
    pub(crate) async fn repoint_standby(
        &self,
        pair: &PairRecord,
        term: u64,
    ) -> Result<String, String> {
        let pair = self.pair(&pair.spec.id).ok_or("pair gone")?;
        let standby = pair.standby_id().to_string();
        let serving = pair.serving_id().to_string();
        if !self.liveness.get(&standby).is_some_and(|v| v.connected) {
            return Ok(format!(
                "{standby}'s agent is unreachable: not repointed; a replacement backup will be built"
            ));
        }
        self.configure(&pair, &standby, &serving, None, false, term)
            .await
            .map(|d| format!("{standby} now replicates from {serving}: {d}"))
    }
}

/// The last launch error per pair, shown in status (leader memory only).
#[derive(Debug, Default)]
pub struct Provisioning {
    errors: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Provisioning {
    pub fn set(&self, pair: &str, e: String) {
        self.errors.lock().unwrap().insert(pair.to_string(), e);
    }
    pub fn clear(&self, pair: &str) {
        self.errors.lock().unwrap().remove(pair);
    }
    pub fn get(&self, pair: &str) -> Option<String> {
        self.errors.lock().unwrap().get(pair).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{OutdatedMark, RebuildPlan, RetiredServer, SpareRecord};
    use crate::testutil::pair;

    fn alive() -> AgentView {
        AgentView {
            connected: true,
            silent_ms: Some(0),
            ..Default::default()
        }
    }
    fn gone() -> AgentView {
        AgentView {
            connected: false,
            silent_ms: Some(60_000),
            ..Default::default()
        }
    }
    fn with_spare(mut p: PairRecord, launched: bool) -> PairRecord {
        p.redundancy.spare = Some(SpareRecord {
            token: "p1-spare-1".into(),
            server_id: "p1-s1".into(),
            reason: "test".into(),
            requested_unix_ms: 1_000,
            instance: launched.then(|| SpareInstance {
                instance_id: "i-1".into(),
                interface_id: "i-1:eth0".into(),
                address: "10.0.0.9".into(),
                zone: "z1".into(),
            }),
            terminating: false,
        });
        p.redundancy.spares_launched = 1;
        p
    }

    fn decide(p: &PairRecord, s: &AgentView, b: &AgentView, now: i64) -> Need {
        need(
            p,
            s,
            b,
            now,
            &SpareConfig::default(),
            &DetectorConfig::default(),
        )
    }

    #[test]
    fn suspect_pre_spins_once() {
        let p = pair(PairState::Suspect);
        assert!(matches!(
            decide(&p, &gone(), &alive(), 0),
            Need::Launch { .. }
        ));
        let p = with_spare(p, false);
        assert_eq!(decide(&p, &gone(), &alive(), 0), Need::ResumeLaunch);
        let p = with_spare(pair(PairState::Suspect), true);
        assert_eq!(decide(&p, &gone(), &alive(), 0), Need::Nothing);
    }

    #[test]
    fn degraded_with_a_dead_standby_is_rebuilt() {
        let p = pair(PairState::Degraded);
        assert!(matches!(
            decide(&p, &alive(), &gone(), 0),
            Need::Launch { .. }
        ));
        assert_eq!(decide(&p, &alive(), &alive(), 0), Need::Nothing);
        let p = with_spare(p, true);
        assert_eq!(
            decide(&p, &alive(), &gone(), 0),
            Need::StartRebuild {
                replaces: p.standby_id().into()
            }
        );
        // A standby that came back is not replaced.
        assert_eq!(decide(&p, &alive(), &alive(), 0), Need::Nothing);
        let mut q = p.clone();
        q.redundancy.rebuild = Some(RebuildPlan {
            id: 1,
            replaces: "x".into(),
            spare: "p1-s1".into(),
            reason: String::new(),
            started_unix_ms: 0,
            steps: vec![],
        });
        assert_eq!(decide(&q, &alive(), &alive(), 0), Need::ResumeRebuild);
    }

    #[test]
    fn blocked_on_a_stale_backup_reattaches() {
        let mut p = pair(PairState::Blocked);
        p.outdated = Some(OutdatedMark {
            server: p.standby_id().into(),
            lost_peer_unix_ms: 0,
            primary_alive_unix_ms: 0,
            source: "t".into(),
        });
        assert!(matches!(
            decide(&p, &gone(), &alive(), 0),
            Need::Launch { .. }
        ));
        // The primary alive: nothing to reattach.
        assert_eq!(decide(&p, &alive(), &alive(), 0), Need::Nothing);
        let p = with_spare(p, true);
        assert_eq!(
            decide(&p, &gone(), &alive(), 0),
            Need::StartReattach {
                from: p.serving_id().into(),
                to: "p1-s1".into()
            }
        );
        let cfg = SpareConfig {
            reattach: false,
            ..Default::default()
        };
        assert_eq!(
            need(&p, &gone(), &alive(), 0, &cfg, &DetectorConfig::default()),
            Need::Nothing
        );
        // Blocked for another reason with an UpToDate backup (a failed fence):
        // a person decides.
        let mut q = p.clone();
        q.outdated = None;
        let uptodate = AgentView {
            drbd: Some(understudy_proto::DrbdSummary {
                disk: "UpToDate".into(),
                ..Default::default()
            }),
            ..alive()
        };
        assert_eq!(decide(&q, &gone(), &uptodate, 0), Need::Nothing);
        // A backup still Inconsistent (initial sync) is unusable: reattach.
        let inconsistent = AgentView {
            drbd: Some(understudy_proto::DrbdSummary {
                disk: "Inconsistent".into(),
                ..Default::default()
            }),
            ..alive()
        };
        assert!(matches!(
            decide(&q, &gone(), &inconsistent, 0),
            Need::StartReattach { .. }
        ));
    }

    #[test]
    fn false_alarm_spare_is_retired_after_the_keep_time_and_retired_servers_terminated() {
        let mut p = with_spare(pair(PairState::Healthy), true);
        p.state_since_unix_ms = 5_000;
        let keep = SpareConfig::default().keep_ms as i64;
        assert_eq!(
            decide(&p, &alive(), &alive(), 5_000 + keep - 1),
            Need::Nothing
        );
        assert!(matches!(
            decide(&p, &alive(), &alive(), 5_000 + keep),
            Need::Retire { .. }
        ));
        p.redundancy.spare.as_mut().unwrap().terminating = true;
        assert_eq!(decide(&p, &alive(), &alive(), 0), Need::Terminate);
        let mut q = pair(PairState::Healthy);
        q.redundancy.retired.push(RetiredServer {
            spec: q.spec.primary.clone(),
            replaced_by: "p1-s1".into(),
            at_unix_ms: 0,
            terminated: false,
        });
        assert_eq!(
            decide(&q, &alive(), &alive(), 0),
            Need::TerminateRetired {
                server: q.spec.primary.id.clone()
            }
        );
        q.redundancy.retired[0].terminated = true;
        assert_eq!(decide(&q, &alive(), &alive(), 0), Need::Nothing);
    }

    #[test]
    fn paused_pairs_get_nothing_new() {
        let p = pair(PairState::Paused);
        assert_eq!(decide(&p, &gone(), &gone(), 0), Need::Nothing);
    }

    #[test]
    fn device_names_follow_on() {
        assert_eq!(device_name("xvdf", 0), "xvdf");
        assert_eq!(device_name("xvdf", 1), "xvdg");
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(
            spare_names("fs1", 2),
            ("fs1-spare-2".to_string(), "fs1-s2".to_string())
        );
    }
}
