//! Property tests of the agent protocol as the controller decodes and uses it:
//!
//! * random bytes through prost's decode of every message an agent (or a
//!   probed host) sends, and of what the controller sends the agent: a value
//!   or a `DecodeError`, and a decoded value re-encodes stably;
//! * structured reports with hostile values (unknown state words, empty
//!   strings, `u64::MAX`, NaN and infinite doubles, absent optionals)
//!   round-trip through encode/decode, and then go the whole way a report goes
//!   on the leader: [`Liveness::report`], [`agent_view`], the pure decision
//!   functions (`observe`, `decide`, witnesses, S1/S10 checks, switchover
//!   readiness), preflight's findings and the resync estimate. None may panic.
//!
//! The checks are in `fuzz_checks/mod.rs` (shared with the cargo-fuzz target
//! `agent_report`). Cases: proptest's 256, or `PROPTEST_CASES`.

mod fuzz_checks;

use proptest::prelude::*;
use understudy_proto::{
    DrbdConnection, DrbdDevice, DrbdNetOptions, DrbdPeerDevice, DrbdResource, DrbdStatus,
    DrbdSummary, Hello, HostStatus, Report, SelfCheck,
};

use fuzz_checks::{ReportCase, View};

/// A state word as an agent could send it: the ones the controller compares
/// against, an unknown one, empty, or arbitrary text.
fn word() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(
            &[
                "Primary", "Secondary", "Unknown", "UpToDate", "Inconsistent", "Outdated",
                "Consistent", "Diskless", "DUnknown", "Connected", "Connecting", "StandAlone",
                "Established", "SyncSource", "SyncTarget", "PausedSyncT", "Off",
            ][..],
        )
        .prop_map(str::to_string),
        1 => Just(String::new()),
        1 => ".{0,12}",
    ]
    .boxed()
}

fn text() -> BoxedStrategy<String> {
    prop_oneof![Just(String::new()), "r0", ".{0,16}"].boxed()
}

fn big_u64() -> BoxedStrategy<u64> {
    prop_oneof![
        2 => 0u64..10_000_000,
        1 => Just(u64::MAX),
        1 => Just(1u64 << 62),
        1 => any::<u64>(),
    ]
    .boxed()
}

fn double() -> BoxedStrategy<f64> {
    prop_oneof![
        3 => 0.0f64..=100.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-1.0),
        1 => any::<f64>(),
    ]
    .boxed()
}

fn summary() -> BoxedStrategy<DrbdSummary> {
    (
        (word(), word(), word(), word(), word(), word()),
        (
            proptest::option::of(double()),
            proptest::option::of(double()),
            proptest::option::of(big_u64()),
            proptest::option::of(any::<bool>()),
        ),
    )
        .prop_map(
            |((role, disk, peer_role, connection, replication, peer_disk), (done, eta, oos, q))| {
                DrbdSummary {
                    role,
                    disk,
                    peer_role,
                    connection,
                    replication,
                    peer_disk,
                    done_percent: done,
                    eta_seconds: eta,
                    out_of_sync_bytes: oos,
                    quorum: q,
                }
            },
        )
        .boxed()
}

fn net() -> BoxedStrategy<DrbdNetOptions> {
    (
        proptest::option::of(big_u64()),
        proptest::option::of(big_u64()),
        proptest::option::of(big_u64()),
        proptest::option::of(big_u64()),
        text(),
        text(),
        text(),
    )
        .prop_map(|(pi, pt, ci, t, protocol, fencing, error)| DrbdNetOptions {
            ping_int_ms: pi,
            ping_timeout_ms: pt,
            connect_int_ms: ci,
            timeout_ms: t,
            protocol,
            fencing,
            error,
        })
        .boxed()
}

fn resource() -> BoxedStrategy<DrbdResource> {
    let device = (
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        word(),
        proptest::option::of(any::<bool>()),
        proptest::option::of(big_u64()),
    )
        .prop_map(|(volume, minor, disk, quorum, size)| DrbdDevice {
            volume,
            minor,
            disk,
            quorum,
            client: None,
            size_kib: size,
        });
    let peer_device = (
        any::<u32>(),
        word(),
        word(),
        proptest::option::of(double()),
        proptest::option::of(big_u64()),
    )
        .prop_map(
            |(volume, replication, peer_disk, done, oos)| DrbdPeerDevice {
                volume,
                replication,
                peer_disk,
                done_percent: done,
                eta_seconds: None,
                out_of_sync_kib: oos,
            },
        );
    let connection = (
        any::<u32>(),
        text(),
        word(),
        word(),
        proptest::collection::vec(peer_device, 0..3),
    )
        .prop_map(
            |(peer_node_id, conn_name, connection, peer_role, peer_devices)| DrbdConnection {
                peer_node_id,
                conn_name,
                connection,
                peer_role,
                peer_devices,
            },
        );
    (
        (
            prop_oneof![3 => Just("r0".to_string()), 1 => text()],
            word(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(big_u64()),
            proptest::option::of(any::<bool>()),
        ),
        (
            proptest::collection::vec(device, 0..3),
            proptest::collection::vec(connection, 0..2),
            proptest::option::of(summary()),
            proptest::collection::vec(text(), 0..3),
            proptest::option::of(summary()),
            proptest::option::of(net()),
        ),
    )
        .prop_map(
            |(
                (name, role, may_promote, promotion_score, suspended),
                (devices, connections, summary, unknown, last_connected, net),
            )| DrbdResource {
                name,
                role,
                may_promote,
                promotion_score,
                suspended,
                devices,
                connections,
                summary,
                unknown,
                last_connected,
                net,
            },
        )
        .boxed()
}

fn host() -> BoxedStrategy<HostStatus> {
    let check = (text(), any::<bool>(), text(), word(), text()).prop_map(
        |(name, ok, detail, severity, fix)| SelfCheck {
            name,
            ok,
            detail,
            severity: if severity.len() % 3 == 0 {
                "warning".into()
            } else {
                severity
            },
            fix,
        },
    );
    (
        any::<bool>(),
        proptest::collection::vec(text(), 0..3),
        any::<bool>(),
        proptest::collection::vec(check, 0..3),
        any::<bool>(),
        any::<i64>(),
    )
        .prop_map(
            |(mounted, exports, client_ip_present, self_checks, serving_managed, at)| HostStatus {
                mounted,
                exports,
                client_ip_present,
                self_checks,
                serving_managed,
                self_check_at_unix_ms: at,
            },
        )
        .boxed()
}

fn report() -> BoxedStrategy<Report> {
    (
        any::<u64>(),
        any::<i64>(),
        proptest::option::of(
            (
                any::<bool>(),
                text(),
                any::<u32>(),
                proptest::collection::vec(resource(), 0..3),
            )
                .prop_map(|(running, error, restarts, resources)| DrbdStatus {
                    observer_running: running,
                    observer_error: error,
                    observer_restarts: restarts,
                    resources,
                }),
        ),
        proptest::option::of(host()),
    )
        .prop_map(|(seq, at, drbd, host)| Report {
            seq,
            observed_at_unix_ms: at,
            drbd,
            host,
        })
        .boxed()
}

fn hello(server: &'static str) -> impl Strategy<Value = Hello> {
    (0i32..4, big_u64()).prop_map(move |(role, epoch)| Hello {
        server_id: server.into(),
        pair_id: "p".into(),
        role,
        agent_version: String::new(),
        highest_epoch: epoch,
        stall_ms: 0,
        handoff_ok: false,
    })
}

fn view() -> impl Strategy<Value = View> {
    (
        any::<bool>(),
        proptest::option::of(0u64..10_000_000_000),
        proptest::option::of(0u64..10_000_000_000),
        proptest::option::of(0u64..10_000_000_000),
        proptest::option::of(0u64..10_000_000_000),
        any::<bool>(),
    )
        .prop_map(
            |(connected, silent_ms, peer_lost_ms, report_age_ms, probe_answered_ms, stale)| View {
                connected,
                silent_ms,
                peer_lost_ms,
                report_age_ms,
                probe_answered_ms,
                stale_report: stale,
            },
        )
}

fn case() -> impl Strategy<Value = ReportCase> {
    (
        (
            proptest::collection::vec(report(), 1..3),
            proptest::collection::vec(report(), 0..3),
            hello("a"),
            hello("b"),
        ),
        (
            0usize..8,
            big_u64(),
            any::<bool>(),
            proptest::option::of(view()),
            proptest::option::of(view()),
            0u64..100_000,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (serving_reports, standby_reports, serving_hello, standby_hello),
                (state, epoch, outdated_mark, serving_view, standby_view, target, swapped),
            )| ReportCase {
                serving_reports,
                standby_reports,
                serving_hello,
                standby_hello,
                state,
                epoch,
                outdated_mark,
                serving_view,
                standby_view,
                recovery_target_ms: target,
                swapped,
            },
        )
}

proptest! {
    /// Random bytes through the decode of every message of the agent
    /// protocol: a value or an error, and stable re-encoding.
    #[test]
    fn random_bytes_decode(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_checks::decode_all(&data);
    }

    /// A structured report, encoded, becomes the same bytes again after a
    /// decode; its AgentMessage envelope too, and any prefix of those bytes
    /// (a truncated frame) decodes or fails cleanly.
    #[test]
    fn reports_round_trip(r in report(), cut in any::<prop::sample::Index>()) {
        let bytes = fuzz_checks::report_round_trip(&r);
        let cut = cut.index(bytes.len() + 1);
        fuzz_checks::decode_all(&bytes[..cut]);
    }

    /// Whatever the reports say, the leader's whole path from a report to a
    /// decision, a status and preflight findings never panics.
    #[test]
    fn decoded_reports_never_panic_the_leader(c in case()) {
        fuzz_checks::leader_path(&c);
    }
}
