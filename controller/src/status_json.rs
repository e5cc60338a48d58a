//! The status as JSON: one shape for `understudyctl --output json status` and
//! the HTTP API (`GET /api/v1/status`).

use understudy_proto::{Finding, GetStatusResponse};

/// One preflight finding.
pub fn finding_json(f: &Finding) -> serde_json::Value {
    serde_json::json!({
        "severity": f.severity, "subject": f.subject, "problem": f.problem, "fix": f.fix,
    })
}

/// One server of `status --output json`.
pub fn server_json(sv: &understudy_proto::ServerStatus) -> serde_json::Value {
    use serde_json::json;
    let drbd = sv.drbd.as_ref().map(|d| {
        json!({
            "role": d.role, "disk": d.disk, "peer_role": d.peer_role,
            "connection": d.connection, "replication": d.replication,
            "peer_disk": d.peer_disk, "done_percent": d.done_percent,
            "eta_seconds": d.eta_seconds, "out_of_sync_bytes": d.out_of_sync_bytes,
            "quorum": d.quorum,
        })
    });
    let drbd_net = sv.drbd_net.as_ref().map(|n| {
        json!({
            "ping_int_ms": n.ping_int_ms, "ping_timeout_ms": n.ping_timeout_ms,
            "connect_int_ms": n.connect_int_ms, "timeout_ms": n.timeout_ms,
            "protocol": n.protocol, "fencing": n.fencing, "error": n.error,
        })
    });
    let host = sv.host.as_ref().map(|h| {
        let checks: Vec<serde_json::Value> = h
            .self_checks
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "ok": c.ok, "detail": c.detail,
                    "severity": c.severity, "fix": c.fix,
                })
            })
            .collect();
        json!({
            "mounted": h.mounted, "exports": h.exports,
            "client_ip_present": h.client_ip_present,
            "self_check_at_unix_ms": h.self_check_at_unix_ms,
            "self_checks": checks,
        })
    });
    json!({
        "id": sv.id, "configured_role": sv.configured_role, "address": sv.address,
        "zone": sv.zone, "connected": sv.connected,
        "last_report_age_ms": sv.last_report_age_ms, "drbd": drbd, "drbd_net": drbd_net,
        "stale": sv.stale, "silent_ms": sv.silent_ms,
        "unknown": sv.unknown, "observer_error": sv.observer_error,
        "host": host,
    })
}

/// A plan in flight or finished (failover, switchover, rebuild...). A rebuild's
/// `epoch` is its id, `from` the replaced server, `to` the spare.
pub fn plan_json(f: &understudy_proto::FailoverStatus) -> serde_json::Value {
    use serde_json::json;
    json!({
        "kind": f.kind, "epoch": f.epoch, "from": f.from, "to": f.to, "automatic": f.automatic,
        "started_unix_ms": f.started_unix_ms,
        "finished_unix_ms": (f.finished_unix_ms != 0).then_some(f.finished_unix_ms),
        "outcome": f.outcome, "end": f.end,
        "steps": f.steps.iter().map(|st| json!({
            "step": st.step, "status": st.status, "duration_ms": st.duration_ms,
            "detail": st.detail, "attempts": st.attempts,
            "started_unix_ms": (st.started_unix_ms != 0).then_some(st.started_unix_ms),
        })).collect::<Vec<_>>(),
    })
}

/// A rebuild: a plan whose `id` is its epoch, replacing `from` by the spare `to`.
fn rebuild_json(f: &understudy_proto::FailoverStatus) -> serde_json::Value {
    let mut v = plan_json(f);
    v["id"] = f.epoch.into();
    v["replaces"] = f.from.clone().into();
    v["spare"] = f.to.clone().into();
    v
}

/// The whole status.
pub fn status_json(s: &GetStatusResponse) -> serde_json::Value {
    use serde_json::json;
    json!({
        "cluster": s.cluster.as_ref().map(|c| json!({
            "answered_by": c.answered_by, "leader_id": c.leader_id, "leader_addr": c.leader_addr,
            "term": c.term, "last_applied_index": c.last_applied_index,
            "insecure": c.insecure,
            "members": c.members.iter().map(|m| json!({
                "id": m.id, "addr": m.addr, "voter": m.voter, "leader": m.leader,
                "matched_index": m.matched_index,
            })).collect::<Vec<_>>(),
        })),
        "pairs": s.pairs.iter().map(|p| json!({
            "id": p.id, "state": p.state, "state_reason": p.state_reason, "epoch": p.epoch,
            "resource": p.resource, "client_ip": p.client_ip, "zone": p.zone, "alerts": p.alerts,
            "serving": p.serving, "decision": p.decision,
            "outdated": p.outdated.as_ref().map(|o| json!({
                "server": o.server, "lost_peer_unix_ms": o.lost_peer_unix_ms,
                "primary_alive_unix_ms": o.primary_alive_unix_ms, "source": o.source,
            })),
            "failover": p.failover.as_ref().map(plan_json),
            "last_failover": p.last_failover.as_ref().map(plan_json),
            "spare": p.spare.as_ref().map(|sp| json!({
                "server_id": sp.server_id, "instance_id": sp.instance_id, "address": sp.address,
                "zone": sp.zone, "state": sp.state, "reason": sp.reason,
                "requested_unix_ms": sp.requested_unix_ms,
            })),
            "rebuild": p.rebuild.as_ref().map(rebuild_json),
            "last_rebuild": p.last_rebuild.as_ref().map(rebuild_json),
            "retired": p.retired.iter().map(|x| json!({
                "server_id": x.server_id, "instance_id": x.instance_id, "volumes": x.volumes,
                "replaced_by": x.replaced_by, "terminated": x.terminated,
            })).collect::<Vec<_>>(),
            "resync": p.resync.as_ref().map(|r| json!({
                "server_id": r.server_id, "percent": r.percent,
                "out_of_sync_bytes": r.out_of_sync_bytes, "rate_kib_per_s": r.rate_kib_per_s,
                "eta_ms": r.eta_ms,
            })),
            "provisioning_error": p.provisioning_error,
            "paused": p.paused, "maintenance": p.maintenance,
            "scheduled_switchover": p.scheduled_switchover,
            "signal": p.signal,
            "findings": p.findings.iter().map(finding_json).collect::<Vec<_>>(),
            "history": p.history.iter().map(|h| json!({
                "at_unix_ms": h.at_unix_ms, "epoch": h.epoch, "event": h.event,
            })).collect::<Vec<_>>(),
            "servers": p.servers.iter().map(server_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
