//! The checks run on every fuzz input of the agent protocol, shared by the
//! property tests (`fuzz_report.rs`) and the cargo-fuzz target `agent_report`
//! in `fuzz/` (which includes this file by path).

#![allow(dead_code)]

use std::time::Instant;

use prost::Message;
use understudy_controller::detector::{
    back_in_sync, backup_fresh, decide, failover_still_justified, replication_lost_while_serving,
    stand_down_steps, switchover_ready, witnesses, DetectorConfig,
};
use understudy_controller::liveness::{agent_view, Liveness};
use understudy_controller::observe::{observe, self_check_alerts, serving_state, AgentView};
use understudy_controller::preflight::{pair_findings, CloudFacts, Member, PreflightConfig};
use understudy_controller::state::{OutdatedMark, PairRecord, PairSpec, PairState, ServerSpec};
use understudy_proto::{
    AgentMessage, Command, CommandResult, ControllerMessage, FencePeerRequest, Heartbeat, Hello,
    ProbeReply, ProbeRequest, Report,
};

/// `data` decoded as `T`: a value or an error; a value re-encodes to bytes
/// that decode to a value encoding to the same bytes (encode ∘ decode is
/// stable).
fn decode_one<T: Message + Default>(data: &[u8]) {
    if let Ok(m) = T::decode(data) {
        let bytes = m.encode_to_vec();
        let again = T::decode(bytes.as_slice()).unwrap_or_else(|e| {
            panic!(
                "re-encoded {} does not decode: {e}",
                std::any::type_name::<T>()
            )
        });
        assert_eq!(
            again.encode_to_vec(),
            bytes,
            "{} does not re-encode stably",
            std::any::type_name::<T>()
        );
    }
}

/// Every message of the agent protocol, both directions, and the probes.
pub fn decode_all(data: &[u8]) {
    decode_one::<AgentMessage>(data);
    decode_one::<Report>(data);
    decode_one::<Hello>(data);
    decode_one::<Heartbeat>(data);
    decode_one::<CommandResult>(data);
    decode_one::<ControllerMessage>(data);
    decode_one::<Command>(data);
    decode_one::<ProbeRequest>(data);
    decode_one::<ProbeReply>(data);
    decode_one::<FencePeerRequest>(data);
}

/// A report's bytes decode to a report with the same bytes, inside its
/// `AgentMessage` envelope too. Returns the envelope's bytes.
pub fn report_round_trip(r: &Report) -> Vec<u8> {
    let bytes = r.encode_to_vec();
    let back = Report::decode(bytes.as_slice()).expect("an encoded report decodes");
    assert_eq!(back.encode_to_vec(), bytes);
    let msg = AgentMessage {
        msg: Some(understudy_proto::agent_message::Msg::Report(r.clone())),
    };
    let env = msg.encode_to_vec();
    let back = AgentMessage::decode(env.as_slice()).expect("an encoded message decodes");
    match &back.msg {
        Some(understudy_proto::agent_message::Msg::Report(b)) => {
            assert_eq!(b.encode_to_vec(), bytes)
        }
        other => panic!("the envelope decoded to {other:?}"),
    }
    env
}

/// Timings to put on a view instead of the ones the live clock gives, to
/// reach every branch of the detector.
#[derive(Debug, Clone)]
pub struct View {
    pub connected: bool,
    pub silent_ms: Option<u64>,
    pub peer_lost_ms: Option<u64>,
    pub report_age_ms: Option<u64>,
    pub probe_answered_ms: Option<u64>,
    pub stale_report: bool,
}

/// One pair, its two agents' hellos and reports, and the leader's situation.
#[derive(Debug, Clone)]
pub struct ReportCase {
    /// Reports of server `a` (the configured primary), in order.
    pub serving_reports: Vec<Report>,
    /// Reports of server `b` (the configured backup).
    pub standby_reports: Vec<Report>,
    pub serving_hello: Hello,
    pub standby_hello: Hello,
    /// Index into the pair states.
    pub state: usize,
    pub epoch: u64,
    /// The standby carries an S1 outdated mark.
    pub outdated_mark: bool,
    pub serving_view: Option<View>,
    pub standby_view: Option<View>,
    pub recovery_target_ms: u64,
    /// `b` serves (after a failover), `a` is the standby.
    pub swapped: bool,
}

const STATES: [PairState; 8] = [
    PairState::Healthy,
    PairState::Suspect,
    PairState::FailingOver,
    PairState::Degraded,
    PairState::Rebuilding,
    PairState::Blocked,
    PairState::Paused,
    PairState::SwitchingOver,
];

fn pair(c: &ReportCase, now_ms: i64) -> PairRecord {
    let s = |id: &str| ServerSpec {
        id: id.into(),
        zone: "z".into(),
        ..Default::default()
    };
    let standby = if c.swapped { "a" } else { "b" };
    PairRecord {
        spec: PairSpec {
            id: "p".into(),
            resource: "r0".into(),
            client_ip: "198.18.0.100".into(),
            zone: "z".into(),
            primary: s("a"),
            backup: s("b"),
            ..Default::default()
        },
        state: STATES[c.state % STATES.len()],
        state_reason: String::new(),
        epoch: c.epoch,
        state_since_unix_ms: now_ms - 1000,
        history: vec![],
        serving: c.swapped.then(|| "b".to_string()),
        failover: None,
        last_auto_failover_unix_ms: None,
        flap_acknowledged: false,
        stats: Default::default(),
        outdated: c.outdated_mark.then(|| OutdatedMark {
            server: standby.into(),
            lost_peer_unix_ms: now_ms - 5000,
            primary_alive_unix_ms: now_ms - 4000,
            source: "fuzz".into(),
        }),
        holdoff_elapsed_ms: 0,
        redundancy: Default::default(),
        ops: Default::default(),
    }
}

fn with_timings(mut v: AgentView, t: &Option<View>) -> AgentView {
    if let Some(t) = t {
        v.connected = t.connected;
        v.silent_ms = t.silent_ms;
        v.peer_lost_ms = t.peer_lost_ms;
        v.report_age_ms = t.report_age_ms;
        v.probe_answered_ms = t.probe_answered_ms;
        v.stale_report = t.stale_report;
    }
    v
}

/// The leader's path for the reports of `c`: liveness, views, every pure
/// decision function, preflight, the resync estimate. Panics only on a
/// broken property.
pub fn leader_path(c: &ReportCase) {
    let liveness = Liveness::default();
    let since = liveness.start_leading();
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    liveness.connected(1, c.serving_hello.clone(), tx.clone());
    liveness.connected(2, c.standby_hello.clone(), tx);
    for r in &c.serving_reports {
        liveness.report("a", 1, r.clone());
    }
    for r in &c.standby_reports {
        liveness.report("b", 2, r.clone());
        // A report on an old session is not taken.
        liveness.report("b", 1, Report::default());
    }
    let now_ms = understudy_controller::leadership::now_unix_ms();
    let p = pair(c, now_ms);
    let now = Instant::now();
    let res = p.spec.resource.clone();
    let live_a = liveness.get("a");
    let live_b = liveness.get("b");
    assert_eq!(
        live_a
            .as_ref()
            .and_then(|v| v.last_report.as_ref())
            .map(|r| r.seq),
        c.serving_reports.last().map(|r| r.seq)
    );
    let va = agent_view(live_a.as_ref(), &res, now, since);
    let vb = agent_view(live_b.as_ref(), &res, now, since);
    let (va, vb) = (
        with_timings(va, &c.serving_view),
        with_timings(vb, &c.standby_view),
    );
    let (sv, sb, s_id, b_id) = if c.swapped {
        (&vb, &va, "b", "a")
    } else {
        (&va, &vb, "a", "b")
    };
    let cfg = DetectorConfig::default();
    let dec = decide(&p, sv, sb, now_ms, &cfg);
    assert!(
        !dec.reason.is_empty() || dec.action == understudy_controller::detector::Action::Nothing
    );
    let obs = observe(&p, sv, sb, cfg.agent_timeout_ms);
    for a in obs.alerts.iter().chain(&dec.alerts) {
        assert!(!a.is_empty());
    }
    let _ = stand_down_steps(sv, sb, p.epoch, &cfg);
    let w = witnesses(s_id, b_id, sv, sb, &cfg);
    assert!(!w.evidence.is_empty());
    let _ = backup_fresh(sb);
    let _ = failover_still_justified(s_id, b_id, sv, sb, &cfg);
    let _ = switchover_ready(b_id, sb);
    let _ = serving_state(sb);
    let _ = replication_lost_while_serving(sv, sb, now_ms, &cfg);
    if let Some(m) = &p.outdated {
        let _ = back_in_sync(m, sv, sb, now_ms, &cfg);
    }
    for v in [&va, &vb] {
        if let Some(h) = &v.host {
            let _ = self_check_alerts("x", h);
        }
    }
    // Preflight, and its one arithmetic on reported values: ping-int +
    // ping-timeout beyond the recovery target is a finding, however large.
    let pcfg = PreflightConfig {
        recovery_target_ms: c.recovery_target_ms,
        ..Default::default()
    };
    let members = [
        Member {
            id: "a",
            view: &va,
            report: live_a.as_ref().and_then(|l| l.last_report.as_ref()),
            standby: b_id == "a",
        },
        Member {
            id: "b",
            view: &vb,
            report: live_b.as_ref().and_then(|l| l.last_report.as_ref()),
            standby: b_id == "b",
        },
    ];
    let findings = pair_findings(&p, &members, &CloudFacts::default(), now_ms, &pcfg);
    for m in &members {
        let net = m
            .report
            .and_then(|r| r.drbd.as_ref())
            .and_then(|d| d.resources.iter().find(|r| r.name == res))
            .and_then(|r| r.net.as_ref());
        let too_slow = net.is_some_and(|n| match (n.ping_int_ms, n.ping_timeout_ms) {
            (Some(pi), Some(pt)) => {
                u128::from(pi) + u128::from(pt) > u128::from(c.recovery_target_ms)
            }
            _ => false,
        });
        let found = findings
            .iter()
            .any(|f| f.subject == m.id && f.problem.starts_with("DRBD ping-int"));
        assert_eq!(
            found, too_slow,
            "{}: net {net:?}, target {}",
            m.id, c.recovery_target_ms
        );
    }
    for l in [&live_a, &live_b].into_iter().flatten() {
        if let Some(e) = l.resync.get(&res).and_then(|t| t.estimate()) {
            if let Some(r) = e.rate_bytes_per_s {
                assert!(r.is_finite() && r > 0.0, "rate {r}");
            }
        }
    }
}

/// Arbitrary bytes as the reports of a pair (cargo-fuzz): the first byte
/// picks the situation, the rest is split in two and decoded as one report
/// of each server; bytes that do not decode end the case (decode itself is
/// `decode_all`'s job).
pub fn leader_path_bytes(data: &[u8]) {
    decode_all(data);
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mid = rest.len() / 2;
    let (Ok(a), Ok(b)) = (Report::decode(&rest[..mid]), Report::decode(&rest[mid..])) else {
        return;
    };
    let hello = |id: &str| Hello {
        server_id: id.into(),
        pair_id: "p".into(),
        ..Default::default()
    };
    leader_path(&ReportCase {
        serving_reports: vec![a],
        standby_reports: vec![b],
        serving_hello: hello("a"),
        standby_hello: hello("b"),
        state: usize::from(sel & 7),
        epoch: u64::from(sel >> 3),
        outdated_mark: sel & 0x40 != 0,
        serving_view: None,
        standby_view: None,
        recovery_target_ms: 5000,
        swapped: sel & 0x80 != 0,
    });
}

#[path = "../../../agent/tests/fuzz_checks/toml_path.rs"]
mod toml_path;
#[allow(unused_imports)] // not every test binary that includes these checks edits TOML
pub use toml_path::{get_path, set_path};

/// Controller configuration text: a configuration or an error message,
/// never a panic; an accepted one holds what validation promises.
pub fn controller_config_text(text: &str) {
    match understudy_controller::ControllerConfig::parse(text) {
        Ok(c) => {
            assert!(matches!(c.members.len(), 1 | 3 | 5));
            assert!(c.member_addr(c.node_id).is_some());
            let t = &c.timing;
            assert!(t.raft_heartbeat_ms.saturating_mul(2) < t.election_timeout_min_ms);
            assert!(t.election_timeout_min_ms < t.election_timeout_max_ms);
            assert!(t.agent_heartbeat_ms > 0);
            assert!(c.detector.peer_loss_ms > 0);
            assert!(c.probe.interval_ms > 0 && c.signals.poll_ms > 0);
            for p in &c.pairs {
                assert!(p.client_ip.parse::<std::net::IpAddr>().is_ok());
            }
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

pub fn controller_config_bytes(data: &[u8]) {
    controller_config_text(&String::from_utf8_lossy(data));
}
