//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Every node exposes its own Raft figures and agent sessions, and the pairs'
//! replicated state (state, epoch, plans finished, step durations), which every
//! node holds alike. The leader also exposes what only it sees: each server's
//! DRBD states, out-of-sync bytes, resync progress, report age and client IP.
//! Scrape every node; `understudy_raft_is_leader == 1` picks the leader's view.
//!
//! [`render`] is pure: it takes the numbers, not the node.

use std::collections::BTreeMap;
use std::fmt::Write;

use understudy_proto::GetStatusResponse;

use crate::state::stats::Histogram;
use crate::state::PairState;

/// This node's Raft figures.
#[derive(Debug, Clone, Default)]
pub struct RaftFigures {
    pub node_id: u64,
    pub is_leader: bool,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub voters: usize,
    /// Leader only: `(peer, matched index)`.
    pub matched: Vec<(u64, Option<u64>)>,
    /// Leader only: how long ago a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
}

/// What a scrape shows.
pub struct Inputs<'a> {
    pub raft: &'a RaftFigures,
    /// Agent sessions open on this node (only the leader keeps them).
    pub agent_sessions: usize,
    /// TLS handshakes: `(admitted, shed, failed)` since the start; `None`
    /// without TLS.
    pub handshakes: Option<(u64, u64, u64)>,
    pub pairs: &'a crate::state::Pairs,
    /// The leader's status (per-server figures); `None` on a follower.
    pub status: Option<&'a GetStatusResponse>,
}

/// The pair states, for the state-set gauge (one series per state, 1 for the
/// current one).
pub const PAIR_STATES: [PairState; 8] = [
    PairState::Healthy,
    PairState::Suspect,
    PairState::FailingOver,
    PairState::SwitchingOver,
    PairState::Degraded,
    PairState::Rebuilding,
    PairState::Blocked,
    PairState::Paused,
];

/// One metric family being written: its samples follow its HELP and TYPE.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(self.name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    fn value(&mut self, labels: &[(&str, &str)], value: f64) {
        self.sample("", labels, value);
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

/// A label value escaped as the format wants (`\\`, `\"`, `\n`).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn opt(v: Option<u64>) -> f64 {
    v.map(|x| x as f64).unwrap_or(f64::NAN)
}

/// The whole exposition.
pub fn render(i: &Inputs) -> String {
    let mut out = String::with_capacity(4096 + i.pairs.len() * 2048);
    let r = i.raft;
    let node = r.node_id.to_string();
    let node_l = [("node", node.as_str())];

    family(
        &mut out,
        "understudy_raft_is_leader",
        "gauge",
        "1 when this node is the Raft leader.",
    )
    .value(&node_l, r.is_leader as u8 as f64);
    family(
        &mut out,
        "understudy_raft_term",
        "gauge",
        "This node's current Raft term.",
    )
    .value(&node_l, r.term as f64);
    family(
        &mut out,
        "understudy_raft_leader_id",
        "gauge",
        "The leader this node knows (0: none).",
    )
    .value(&node_l, r.leader_id.unwrap_or(0) as f64);
    family(
        &mut out,
        "understudy_raft_last_log_index",
        "gauge",
        "Index of the last entry in this node's Raft log.",
    )
    .value(&node_l, opt(r.last_log_index));
    family(
        &mut out,
        "understudy_raft_commit_index",
        "gauge",
        "Index of the last entry this node knows committed.",
    )
    .value(&node_l, opt(r.committed_index));
    family(
        &mut out,
        "understudy_raft_applied_index",
        "gauge",
        "Index of the last entry applied to this node's state machine.",
    )
    .value(&node_l, opt(r.applied_index));
    family(
        &mut out,
        "understudy_raft_apply_lag_entries",
        "gauge",
        "Committed entries not yet applied on this node.",
    )
    .value(
        &node_l,
        r.committed_index
            .unwrap_or(0)
            .saturating_sub(r.applied_index.unwrap_or(0)) as f64,
    );
    family(
        &mut out,
        "understudy_raft_voters",
        "gauge",
        "Voters in the Raft membership.",
    )
    .value(&node_l, r.voters as f64);
    if r.is_leader {
        let mut f = family(
            &mut out,
            "understudy_raft_replication_lag_entries",
            "gauge",
            "Leader only: entries a follower has not matched yet.",
        );
        for (peer, matched) in &r.matched {
            let lag = match (r.last_log_index, matched) {
                (Some(last), Some(m)) => last.saturating_sub(*m) as f64,
                (Some(last), None) => last as f64,
                _ => 0.0,
            };
            f.value(&[("node", &node), ("peer", &peer.to_string())], lag);
        }
        family(
            &mut out,
            "understudy_raft_quorum_ack_age_seconds",
            "gauge",
            "Leader only: time since a quorum last acknowledged this leader.",
        )
        .value(
            &node_l,
            r.millis_since_quorum_ack
                .map(|m| m as f64 / 1000.0)
                .unwrap_or(f64::NAN),
        );
    }
    family(
        &mut out,
        "understudy_agent_sessions",
        "gauge",
        "Agent sessions open on this node (agents stream to the leader).",
    )
    .value(&node_l, i.agent_sessions as f64);
    if let Some((admitted, shed, failed)) = i.handshakes {
        let mut f = family(
            &mut out,
            "understudy_tls_handshakes_total",
            "counter",
            "Incoming TLS handshakes by outcome: admitted (handed to gRPC), shed (closed unanswered after waiting too long for a turn: too many clients dialling at once), failed (refused certificate, client gone, timed out).",
        );
        for (outcome, n) in [("admitted", admitted), ("shed", shed), ("failed", failed)] {
            f.value(&[("node", node.as_str()), ("outcome", outcome)], n as f64);
        }
    }

    pair_metrics(&mut out, i.pairs);
    if let Some(st) = i.status {
        server_metrics(&mut out, st);
    }
    out
}

/// From the replicated state: the same on every node.
fn pair_metrics(out: &mut String, pairs: &crate::state::Pairs) {
    let mut f = family(
        out,
        "understudy_pair_state",
        "gauge",
        "The pair's state: 1 for the current one, 0 for the others.",
    );
    for p in pairs.values() {
        for s in PAIR_STATES {
            let name = s.to_string();
            f.value(
                &[("pair", &p.spec.id), ("state", &name)],
                (p.state == s) as u8 as f64,
            );
        }
    }
    let mut f = family(
        out,
        "understudy_pair_state_since_seconds",
        "gauge",
        "Unix time the pair entered its current state.",
    );
    for p in pairs.values() {
        f.value(
            &[("pair", &p.spec.id)],
            p.state_since_unix_ms as f64 / 1000.0,
        );
    }
    let mut f = family(
        out,
        "understudy_pair_epoch",
        "gauge",
        "The pair's failover epoch (fencing token, S4).",
    );
    for p in pairs.values() {
        f.value(&[("pair", &p.spec.id)], p.epoch as f64);
    }
    let mut f = family(
        out,
        "understudy_pair_serving",
        "gauge",
        "1 for the server the pair serves from.",
    );
    for p in pairs.values() {
        f.value(&[("pair", &p.spec.id), ("server", p.serving_id())], 1.0);
    }
    let mut f = family(
        out,
        "understudy_pair_outdated",
        "gauge",
        "1 when the pair's standby is marked outdated (S1: it may lack acknowledged writes).",
    );
    for p in pairs.values() {
        f.value(&[("pair", &p.spec.id)], p.outdated.is_some() as u8 as f64);
    }
    let mut f = family(
        out,
        "understudy_failovers_total",
        "counter",
        "Plans finished, by kind (failover, reattach, promote, switchover) and outcome (succeeded, failed, aborted).",
    );
    for p in pairs.values() {
        for (kind, outcome, n) in p.stats.finished_by_kind().filter(|x| x.0 != "rebuild") {
            f.value(
                &[("pair", &p.spec.id), ("kind", kind), ("outcome", outcome)],
                n as f64,
            );
        }
    }
    let mut f = family(
        out,
        "understudy_rebuilds_total",
        "counter",
        "Rebuilds (a spare made the new backup) finished, by outcome.",
    );
    for p in pairs.values() {
        for (_, outcome, n) in p.stats.finished_by_kind().filter(|x| x.0 == "rebuild") {
            f.value(&[("pair", &p.spec.id), ("outcome", outcome)], n as f64);
        }
    }
    let mut f = family(
        out,
        "understudy_last_failover_duration_seconds",
        "gauge",
        "How long the pair's last finished failover (or switchover) took, start to end.",
    );
    for p in pairs.values() {
        if let Some(l) = &p.stats.last_failover {
            let secs = (l.finished_unix_ms - l.started_unix_ms).max(0) as f64 / 1000.0;
            f.value(&[("pair", &p.spec.id), ("kind", &l.kind)], secs);
        }
    }
    // Step durations, over all pairs (per pair would multiply the series).
    let mut steps: BTreeMap<(&str, &str), Histogram> = BTreeMap::new();
    for p in pairs.values() {
        for (kind, step, h) in p.stats.step_histograms() {
            steps.entry((kind, step)).or_default().merge(h);
        }
    }
    let mut f = family(
        out,
        "understudy_step_duration_seconds",
        "histogram",
        "Duration of each plan step (failover, switchover, reattach, rebuild), over all pairs.",
    );
    for ((kind, step), h) in &steps {
        for (le, n) in h.cumulative() {
            let le = le
                .map(|ms| number(ms as f64 / 1000.0))
                .unwrap_or_else(|| "+Inf".into());
            f.sample(
                "_bucket",
                &[("kind", kind), ("step", step), ("le", &le)],
                n as f64,
            );
        }
        f.sample(
            "_sum",
            &[("kind", kind), ("step", step)],
            h.sum_ms as f64 / 1000.0,
        );
        f.sample("_count", &[("kind", kind), ("step", step)], h.count as f64);
    }
}

/// From the leader's live view of the agents.
fn server_metrics(out: &mut String, st: &GetStatusResponse) {
    let servers: Vec<(&str, &understudy_proto::ServerStatus)> = st
        .pairs
        .iter()
        .flat_map(|p| p.servers.iter().map(move |s| (p.id.as_str(), s)))
        .collect();
    let mut f = family(
        out,
        "understudy_server_connected",
        "gauge",
        "1 when the server's agent has a session with the leader.",
    );
    for (p, s) in &servers {
        f.value(
            &[("pair", p), ("server", &s.id), ("role", &s.configured_role)],
            s.connected as u8 as f64,
        );
    }
    let mut f = family(
        out,
        "understudy_server_report_age_seconds",
        "gauge",
        "Age of the server's last report (NaN: never reported to this leader).",
    );
    for (p, s) in &servers {
        f.value(
            &[("pair", p), ("server", &s.id)],
            s.last_report_age_ms
                .map(|m| m as f64 / 1000.0)
                .unwrap_or(f64::NAN),
        );
    }
    let mut f = family(
        out,
        "understudy_server_stale",
        "gauge",
        "1 when the server's last report is older than the agent timeout (not current).",
    );
    for (p, s) in &servers {
        f.value(&[("pair", p), ("server", &s.id)], s.stale as u8 as f64);
    }
    let mut f = family(
        out,
        "understudy_server_client_ip",
        "gauge",
        "1 when the server reports holding the pair's client IP.",
    );
    for (p, s) in &servers {
        let held = s.host.as_ref().is_some_and(|h| h.client_ip_present);
        f.value(&[("pair", p), ("server", &s.id)], held as u8 as f64);
    }
    let mut f = family(
        out,
        "understudy_server_exporting",
        "gauge",
        "1 when the server reports exporting the pair's file system over NFS.",
    );
    for (p, s) in &servers {
        let on = s.host.as_ref().is_some_and(|h| !h.exports.is_empty());
        f.value(&[("pair", p), ("server", &s.id)], on as u8 as f64);
    }
    type Pick = fn(&understudy_proto::DrbdSummary) -> &str;
    let states: [(&'static str, &str, &str, Pick); 4] = [
        (
            "understudy_drbd_role",
            "role",
            "DRBD role of the server's resource: 1 for the current one.",
            |d| &d.role,
        ),
        (
            "understudy_drbd_disk_state",
            "disk",
            "DRBD disk state of the server's resource: 1 for the current one.",
            |d| &d.disk,
        ),
        (
            "understudy_drbd_connection_state",
            "connection",
            "DRBD connection state to the peer: 1 for the current one.",
            |d| &d.connection,
        ),
        (
            "understudy_drbd_replication_state",
            "replication",
            "DRBD replication state to the peer: 1 for the current one.",
            |d| &d.replication,
        ),
    ];
    for (name, label, help, pick) in states {
        let mut f = family(out, name, "gauge", help);
        for (p, s) in &servers {
            if let Some(d) = &s.drbd {
                let v = pick(d);
                if !v.is_empty() {
                    f.value(&[("pair", p), ("server", &s.id), (label, v)], 1.0);
                }
            }
        }
    }
    let mut f = family(
        out,
        "understudy_drbd_out_of_sync_bytes",
        "gauge",
        "Bytes the server's resource knows out of sync with its peer.",
    );
    for (p, s) in &servers {
        if let Some(b) = s.drbd.as_ref().and_then(|d| d.out_of_sync_bytes) {
            f.value(&[("pair", p), ("server", &s.id)], b as f64);
        }
    }
    let mut f = family(
        out,
        "understudy_drbd_resync_done_ratio",
        "gauge",
        "Resync progress of a resyncing resource, 0 to 1.",
    );
    for (p, s) in &servers {
        if let Some(pc) = s.drbd.as_ref().and_then(|d| d.done_percent) {
            f.value(&[("pair", p), ("server", &s.id)], pc / 100.0);
        }
    }
    let mut f = family(
        out,
        "understudy_resync_eta_seconds",
        "gauge",
        "Estimated time to the end of the standby's resync, from the observed rate.",
    );
    for p in &st.pairs {
        if let Some(eta) = p.resync.as_ref().and_then(|r| r.eta_ms) {
            f.value(
                &[
                    ("pair", &p.id),
                    ("server", &p.resync.as_ref().unwrap().server_id),
                ],
                eta as f64 / 1000.0,
            );
        }
    }
    let mut f = family(
        out,
        "understudy_pair_alerts",
        "gauge",
        "Alerts the leader raises for the pair now.",
    );
    for p in &st.pairs {
        f.value(&[("pair", &p.id)], p.alerts.len() as f64);
    }
    let mut f = family(
        out,
        "understudy_preflight_findings",
        "gauge",
        "Inventory preflight findings for the pair, by severity.",
    );
    for p in &st.pairs {
        let mut by: BTreeMap<&str, u64> = BTreeMap::new();
        for x in &p.findings {
            *by.entry(x.severity.as_str()).or_default() += 1;
        }
        for sev in ["error", "warning"] {
            f.value(
                &[("pair", &p.id), ("severity", sev)],
                by.get(sev).copied().unwrap_or(0) as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::stats::FinishedPlan;
    use crate::testutil;

    #[test]
    fn label_values_are_escaped_and_numbers_formatted() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }

    #[test]
    fn a_pair_with_a_finished_failover_exposes_counters_and_histograms() {
        let mut p = testutil::pair(PairState::Degraded);
        p.stats.observe_step("failover", "Promote", 12);
        p.stats.observe_step("failover", "Promote", 700);
        p.stats.finish(FinishedPlan {
            kind: "failover".into(),
            epoch: 1,
            from: "a".into(),
            to: "b".into(),
            automatic: true,
            started_unix_ms: 1_000,
            finished_unix_ms: 2_100,
            outcome: "succeeded".into(),
            end: "Degraded".into(),
            steps: vec![],
        });
        let id = p.spec.id.clone();
        let pairs: crate::state::Pairs =
            [(id.clone(), std::sync::Arc::new(p))].into_iter().collect();
        let raft = RaftFigures {
            node_id: 2,
            is_leader: true,
            term: 3,
            leader_id: Some(2),
            last_log_index: Some(40),
            committed_index: Some(40),
            applied_index: Some(38),
            voters: 3,
            matched: vec![(1, Some(40)), (3, None)],
            millis_since_quorum_ack: Some(20),
        };
        let text = render(&Inputs {
            raft: &raft,
            agent_sessions: 2,
            handshakes: Some((7, 2, 1)),
            pairs: &pairs,
            status: None,
        });
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        has("understudy_raft_apply_lag_entries{node=\"2\"} 2");
        has("understudy_tls_handshakes_total{node=\"2\",outcome=\"shed\"} 2");
        has("understudy_raft_replication_lag_entries{node=\"2\",peer=\"3\"} 40");
        has(&format!(
            "understudy_pair_state{{pair=\"{id}\",state=\"Degraded\"}} 1"
        ));
        has(&format!(
            "understudy_pair_state{{pair=\"{id}\",state=\"Healthy\"}} 0"
        ));
        has(&format!(
            "understudy_failovers_total{{pair=\"{id}\",kind=\"failover\",outcome=\"succeeded\"}} 1"
        ));
        has("understudy_step_duration_seconds_bucket{kind=\"failover\",step=\"Promote\",le=\"0.025\"} 1");
        has("understudy_step_duration_seconds_bucket{kind=\"failover\",step=\"Promote\",le=\"1\"} 2");
        has("understudy_step_duration_seconds_bucket{kind=\"failover\",step=\"Promote\",le=\"+Inf\"} 2");
        has("understudy_step_duration_seconds_count{kind=\"failover\",step=\"Promote\"} 2");
        has(&format!(
            "understudy_last_failover_duration_seconds{{pair=\"{id}\",kind=\"failover\"}} 1.1"
        ));
        // A real text-format parser reads every line, and the histogram whole.
        for l in text.lines() {
            assert!(
                !matches!(
                    prometheus_parse::LineInfo::parse(l),
                    prometheus_parse::LineInfo::Ignored
                ),
                "unparsable line {l:?}"
            );
        }
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let h = scrape
            .samples
            .iter()
            .find(|s| s.metric == "understudy_step_duration_seconds")
            .expect("the step histogram");
        assert_eq!(h.labels.get("step"), Some("Promote"));
        let prometheus_parse::Value::Histogram(b) = &h.value else {
            panic!("not a histogram: {:?}", h.value)
        };
        assert_eq!(b.len(), crate::state::stats::STEP_BUCKETS_MS.len() + 1);
        assert_eq!(b.last().unwrap().count, 2.0);
        assert!(b.last().unwrap().less_than.is_infinite());
        let c = scrape
            .samples
            .iter()
            .find(|s| s.metric == "understudy_failovers_total")
            .unwrap();
        assert_eq!(c.value, prometheus_parse::Value::Counter(1.0));
        // Every family is announced once, before its samples.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut uniq = types.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(types.len(), uniq.len());
    }
}
