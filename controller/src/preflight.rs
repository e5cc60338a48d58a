//! Inventory preflight (SPEC §6): what would make a failover or a rebuild fail or
//! lose data, found before it is needed. Run by the leader every
//! `[preflight] interval_ms` (shown in status) and on demand (`understudyctl
//! check`). Each finding has a severity and a fix.
//!
//! [`pair_findings`] is pure: the pair's record, its agents' views and reports,
//! and what the cloud said (volumes attached to each member, the launch
//! template's zone). [`check`] gathers the cloud's part.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Deserialize;
use understudy_cloud::{Cloud, Volume, VolumeFilter};
use understudy_proto::{Finding, Report};

use crate::failover::cloud_server;
use crate::observe::AgentView;
use crate::state::{PairRecord, PairState};

/// `[preflight]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreflightConfig {
    /// How often the leader runs the checks.
    pub interval_ms: u64,
    /// The recovery time the DRBD settings must allow (death to serving again).
    pub recovery_target_ms: u64,
    /// A backup disconnected or resyncing longer than this is a finding.
    pub out_of_sync_limit_ms: u64,
}

impl Default for PreflightConfig {
    fn default() -> Self {
        PreflightConfig {
            interval_ms: 30_000,
            recovery_target_ms: 5_000,
            out_of_sync_limit_ms: 300_000,
        }
    }
}

/// What the cloud said, per pair.
#[derive(Debug, Clone, Default)]
pub struct CloudFacts {
    /// Per member server id: the volumes attached to its instance, or the error.
    pub attached: HashMap<String, Result<Vec<Volume>, String>>,
    /// The launch template's zone, when spares are configured.
    pub launch_zone: Option<Result<String, String>>,
}

/// One member as the checks see it.
pub struct Member<'a> {
    pub id: &'a str,
    pub view: &'a AgentView,
    pub report: Option<&'a Report>,
    pub standby: bool,
}

fn finding(severity: &str, subject: &str, problem: String, fix: String) -> Finding {
    Finding {
        severity: severity.into(),
        subject: subject.into(),
        problem,
        fix,
    }
}

/// The findings of one pair; pure.
pub fn pair_findings(
    pair: &PairRecord,
    members: &[Member<'_>],
    facts: &CloudFacts,
    now_unix_ms: i64,
    cfg: &PreflightConfig,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let id = &pair.spec.id;
    // Zones: every member, and the spare template, where the volumes are.
    for s in [&pair.spec.primary, &pair.spec.backup] {
        if s.zone != pair.spec.zone {
            out.push(finding(
                "error",
                &s.id,
                format!(
                    "{} is in zone {}, pair {id}'s volumes in zone {}: a volume cannot move to it, a client IP cannot follow it",
                    s.id, s.zone, pair.spec.zone
                ),
                format!("replace {} with a server in {}", s.id, pair.spec.zone),
            ));
        }
    }
    match &facts.launch_zone {
        Some(Ok(z)) if *z != pair.spec.zone => out.push(finding(
            "error",
            id,
            format!(
                "the spare launch template's subnet is in zone {z}, pair {id}'s volumes in zone {}: no spare can be launched for it",
                pair.spec.zone
            ),
            format!(
                "point the launch template (or [cloud] subnet_id) at a subnet in {}",
                pair.spec.zone
            ),
        )),
        Some(Err(e)) => out.push(finding(
            "warning",
            id,
            format!("cannot tell the spare launch template's zone: {e}"),
            "check the [cloud] launch settings".into(),
        )),
        _ => {}
    }
    for m in members {
        let spec = pair.server(m.id);
        // Volumes attached to the server that no DRBD resource replicates.
        match facts.attached.get(m.id) {
            Some(Ok(vols)) => {
                let known = spec.map(|s| s.volumes.clone()).unwrap_or_default();
                for v in vols.iter().filter(|v| !known.contains(&v.volume_id)) {
                    out.push(finding(
                        "error",
                        &v.volume_id,
                        format!(
                            "volume {} ({} GiB) is attached to {} but under no DRBD resource the controller knows: its data is not replicated and is lost with the server",
                            v.volume_id, v.size_gib, m.id
                        ),
                        format!(
                            "put it under the pair's DRBD resource and list it in {}'s `volumes`, or move its data onto the replicated volume and detach it",
                            m.id
                        ),
                    ));
                }
            }
            Some(Err(e)) => out.push(finding(
                "warning",
                m.id,
                format!("cannot list the volumes attached to {}: {e}", m.id),
                "check the cloud credentials and the server's instance_id".into(),
            )),
            None => {}
        }
        // The agent's own self-checks.
        if let Some(host) = m.report.and_then(|r| r.host.as_ref()) {
            for c in host.self_checks.iter().filter(|c| !c.ok) {
                let sev = if c.severity == "warning" {
                    "warning"
                } else {
                    "error"
                };
                out.push(finding(
                    sev,
                    m.id,
                    format!("self-check {} failed: {}", c.name, c.detail),
                    if c.fix.is_empty() {
                        "see the agent's log".into()
                    } else {
                        c.fix.clone()
                    },
                ));
            }
        }
        // DRBD timing that makes the recovery target impossible.
        let net = m
            .report
            .and_then(|r| r.drbd.as_ref())
            .and_then(|d| d.resources.iter().find(|r| r.name == pair.spec.resource))
            .and_then(|r| r.net.as_ref());
        if let Some(n) = net {
            if let (Some(pi), Some(pt)) = (n.ping_int_ms, n.ping_timeout_ms) {
                // Reported values: any u64 (an agent's bug or a hostile one)
                // must not overflow, and a huge one is the finding itself.
                let detect_ms = pi.saturating_add(pt);
                if detect_ms > cfg.recovery_target_ms {
                    out.push(finding(
                        "error",
                        m.id,
                        format!(
                            "DRBD ping-int {} s + ping-timeout {} s on {}: the backup may take {} ms to see a dead primary, beyond the {} ms recovery target",
                            pi as f64 / 1000.0,
                            pt as f64 / 1000.0,
                            m.id,
                            detect_ms,
                            cfg.recovery_target_ms
                        ),
                        format!(
                            "set `net {{ ping-int 1; ping-timeout 5; }}` in resource {} (1 s and 0.5 s) and run `drbdadm adjust {}`",
                            pair.spec.resource, pair.spec.resource
                        ),
                    ));
                }
            }
        }
        if !m.standby {
            continue;
        }
        // The backup's sync.
        let d = m.view.drbd.as_ref();
        if d.is_some_and(|d| d.disk == "Inconsistent") {
            let rebuilding = matches!(pair.state, PairState::Rebuilding | PairState::Degraded);
            out.push(finding(
                if rebuilding { "warning" } else { "error" },
                m.id,
                format!(
                    "backup {} has not completed its initial sync (Inconsistent{}): it cannot take over",
                    m.id,
                    d.and_then(|d| d.done_percent)
                        .map(|p| format!(", {p:.1}% done"))
                        .unwrap_or_default()
                ),
                "let the resync finish (status shows its ETA); until then a failure of the file server needs the reattach path".into(),
            ));
        }
        if let Some(lost) = m
            .view
            .peer_lost_ms
            .filter(|l| *l > cfg.out_of_sync_limit_ms)
        {
            out.push(finding(
                "error",
                m.id,
                format!(
                    "backup {} has been disconnected from the file server for {} s (limit {} s): it falls further behind",
                    m.id,
                    lost / 1000,
                    cfg.out_of_sync_limit_ms / 1000
                ),
                "check the replication link and `drbdadm status` on both servers".into(),
            ));
        } else if pair.state == PairState::Rebuilding
            && now_unix_ms - pair.state_since_unix_ms > cfg.out_of_sync_limit_ms as i64
        {
            out.push(finding(
                "warning",
                m.id,
                format!(
                    "backup {} has been resyncing for {} s (limit {} s)",
                    m.id,
                    (now_unix_ms - pair.state_since_unix_ms) / 1000,
                    cfg.out_of_sync_limit_ms / 1000
                ),
                "check the resync rate (DRBD resync-rate / c-max-rate) and the link".into(),
            ));
        }
    }
    out
}

/// Ask the cloud what [`pair_findings`] needs.
pub async fn cloud_facts(cloud: &dyn Cloud, pair: &PairRecord, spares: bool) -> CloudFacts {
    let mut facts = CloudFacts::default();
    for s in [&pair.spec.primary, &pair.spec.backup] {
        let inst = cloud_server(s).instance_id;
        let r = cloud
            .describe_volumes(&VolumeFilter {
                volume_ids: vec![],
                attached_to: Some(inst),
            })
            .await;
        match r {
            // A provider that cannot list volumes: nothing to check.
            Err(e) if e == understudy_cloud::unsupported(cloud.name(), "describe_volumes") => {}
            r => {
                facts
                    .attached
                    .insert(s.id.clone(), r.map_err(|e| e.to_string()));
            }
        }
    }
    if spares {
        facts.launch_zone = Some(cloud.launch_zone().await.map_err(|e| e.to_string()));
    }
    facts
}

/// Run the checks on every pair (or `only` that one) now.
pub async fn run_all(
    cloud: &dyn Cloud,
    state: &crate::state::ClusterState,
    liveness: &crate::liveness::Liveness,
    cfg: &PreflightConfig,
    spares: bool,
    only: Option<&str>,
) -> Vec<(String, Vec<Finding>)> {
    let now = std::time::Instant::now();
    let since = liveness.silence_origin();
    let mut out = Vec::new();
    for pair in state.pairs.values() {
        if only.is_some_and(|o| o != pair.spec.id) {
            continue;
        }
        let facts = cloud_facts(cloud, pair, spares).await;
        let ids = [pair.spec.primary.id.clone(), pair.spec.backup.id.clone()];
        let lives: Vec<_> = ids.iter().map(|id| liveness.get(id)).collect();
        let views: Vec<AgentView> = lives
            .iter()
            .map(|l| crate::liveness::agent_view(l.as_ref(), &pair.spec.resource, now, since))
            .collect();
        let members: Vec<Member<'_>> = ids
            .iter()
            .zip(lives.iter().zip(views.iter()))
            .map(|(id, (l, v))| Member {
                id,
                view: v,
                report: l.as_ref().and_then(|l| l.last_report.as_ref()),
                standby: id == pair.standby_id(),
            })
            .collect();
        let f = pair_findings(
            pair,
            &members,
            &facts,
            crate::leadership::now_unix_ms(),
            cfg,
        );
        out.push((pair.spec.id.clone(), f));
    }
    out
}

/// The latest findings per pair (leader memory).
#[derive(Debug, Default)]
pub struct Findings {
    by_pair: Mutex<HashMap<String, Vec<Finding>>>,
}

impl Findings {
    pub fn set(&self, pair: &str, f: Vec<Finding>) {
        self.by_pair.lock().unwrap().insert(pair.to_string(), f);
    }
    pub fn get(&self, pair: &str) -> Vec<Finding> {
        self.by_pair
            .lock()
            .unwrap()
            .get(pair)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pair;
    use understudy_cloud::VolumeState;
    use understudy_proto::{DrbdNetOptions, DrbdResource, DrbdStatus, HostStatus, SelfCheck};

    fn vol(id: &str) -> Volume {
        Volume {
            volume_id: id.into(),
            zone: "z".into(),
            size_gib: 8,
            state: VolumeState::InUse,
            attachments: vec![],
            tags: vec![],
        }
    }

    fn run(
        p: &PairRecord,
        facts: &CloudFacts,
        report: Option<&Report>,
        standby: AgentView,
    ) -> Vec<Finding> {
        let alive = AgentView {
            connected: true,
            ..Default::default()
        };
        let members = [
            Member {
                id: "a",
                view: &alive,
                report,
                standby: false,
            },
            Member {
                id: "b",
                view: &standby,
                report: None,
                standby: true,
            },
        ];
        pair_findings(p, &members, facts, 0, &PreflightConfig::default())
    }

    #[test]
    fn a_clean_pair_has_no_findings() {
        let mut p = pair(PairState::Healthy);
        p.spec.primary.volumes = vec!["vol-a".into()];
        let mut f = CloudFacts::default();
        f.attached.insert("a".into(), Ok(vec![vol("vol-a")]));
        f.launch_zone = Some(Ok("z".into()));
        assert!(run(&p, &f, None, AgentView::default()).is_empty());
    }

    #[test]
    fn an_unreplicated_volume_and_a_wrong_template_zone_are_errors() {
        let mut p = pair(PairState::Healthy);
        p.spec.primary.volumes = vec!["vol-a".into()];
        let mut f = CloudFacts::default();
        f.attached
            .insert("a".into(), Ok(vec![vol("vol-a"), vol("vol-logs")]));
        f.launch_zone = Some(Ok("z2".into()));
        let out = run(&p, &f, None, AgentView::default());
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out
            .iter()
            .all(|x| x.severity == "error" && !x.fix.is_empty()));
        assert_eq!(out[0].subject, "p");
        assert!(out[0].problem.contains("z2") && out[0].problem.contains("zone z"));
        assert_eq!(out[1].subject, "vol-logs");
        assert!(out[1].problem.contains("under no DRBD resource"));
    }

    #[test]
    fn members_in_other_zones_self_checks_and_drbd_timing() {
        let mut p = pair(PairState::Healthy);
        p.spec.backup.zone = "z9".into();
        let report = Report {
            host: Some(HostStatus {
                self_checks: vec![SelfCheck {
                    name: "drbdadm".into(),
                    ok: false,
                    detail: "mode 600".into(),
                    severity: "error".into(),
                    fix: "chmod 755 /usr/sbin/drbdadm".into(),
                }],
                ..Default::default()
            }),
            drbd: Some(DrbdStatus {
                resources: vec![DrbdResource {
                    name: "r0".into(),
                    net: Some(DrbdNetOptions {
                        ping_int_ms: Some(10_000),
                        ping_timeout_ms: Some(500),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = run(
            &p,
            &CloudFacts::default(),
            Some(&report),
            AgentView::default(),
        );
        let problems: Vec<&str> = out.iter().map(|f| f.problem.as_str()).collect();
        assert_eq!(out.len(), 3, "{problems:?}");
        assert!(problems[0].contains("zone z9"));
        assert!(problems[1].contains("self-check drbdadm"));
        assert_eq!(out[1].fix, "chmod 755 /usr/sbin/drbdadm");
        assert!(problems[2].contains("ping-int 10 s"));
    }

    /// Found by the property test `controller/tests/fuzz_report.rs`: a
    /// report whose ping-int + ping-timeout overflows u64 panicked the
    /// leader's preflight (debug) or wrapped past the check (release).
    #[test]
    fn huge_reported_drbd_timing_is_a_finding_not_an_overflow() {
        let p = pair(PairState::Healthy);
        for (pi, pt) in [(u64::MAX, 1), (u64::MAX, u64::MAX), (1 << 63, 1 << 63)] {
            let report = Report {
                drbd: Some(DrbdStatus {
                    resources: vec![DrbdResource {
                        name: "r0".into(),
                        net: Some(DrbdNetOptions {
                            ping_int_ms: Some(pi),
                            ping_timeout_ms: Some(pt),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let out = run(
                &p,
                &CloudFacts::default(),
                Some(&report),
                AgentView::default(),
            );
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(out[0].problem.contains(&format!("{} ms", u64::MAX)));
        }
    }

    #[test]
    fn a_backup_that_never_synced_or_is_long_disconnected() {
        let p = pair(PairState::Healthy);
        let standby = AgentView {
            drbd: Some(understudy_proto::DrbdSummary {
                disk: "Inconsistent".into(),
                done_percent: Some(42.0),
                ..Default::default()
            }),
            peer_lost_ms: Some(400_000),
            ..Default::default()
        };
        let out = run(&p, &CloudFacts::default(), None, standby);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].problem.contains("initial sync") && out[0].problem.contains("42.0%"));
        assert_eq!(out[0].severity, "error");
        assert!(out[1].problem.contains("disconnected"));
    }
}
