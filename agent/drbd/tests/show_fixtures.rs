//! `drbdsetup show` fixtures (drbd-utils' own, and `--show-defaults` output built
//! with drbd-utils' printing rule; see `fixtures/SOURCES.md` G) parsed into
//! resources and typed net options.

mod common;

use common::{fixtures_dir, read_fixture};
use understudy_drbd::{net_options, parse_show, ShowError};

#[test]
fn every_show_fixture_parses() {
    let mut n = 0;
    for e in std::fs::read_dir(fixtures_dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("show-") && name.ends_with(".txt") {
            n += 1;
            let rs = parse_show(&read_fixture(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(rs.len(), 1, "{name}");
            assert_eq!(rs[0].name, "r0", "{name}");
            assert!(!rs[0].connections.is_empty(), "{name}");
        }
    }
    assert_eq!(n, 5, "expected five show fixtures");
}

#[test]
fn drbd_utils_show_without_defaults() {
    let rs = parse_show(&read_fixture(
        "show-drbd-utils-switch-interface-two-connections.txt",
    ))
    .unwrap();
    let r = &rs[0];
    assert_eq!(r.node_id, Some(2));
    assert_eq!(r.options["quorum"], "majority");
    assert_eq!(
        r.options["on-suspended-primary-outdated"],
        "force-secondary"
    );
    assert_eq!(r.connections.len(), 2);
    let c = &r.connections[0];
    assert_eq!(c.peer_node_id, Some(0));
    assert_eq!(c.name.as_deref(), Some("n1.ryzen9.home"));
    assert_eq!(c.cstate.as_deref(), Some("Connecting"));
    assert_eq!(c.paths.len(), 1);
    assert_eq!(c.paths[0].this_host, "ipv4 192.168.122.49:7000");
    assert_eq!(c.paths[0].remote_host, "ipv4 192.168.122.47:7000");
    // Options at their default are not printed without --show-defaults.
    assert_eq!(c.net.ping_int_ms, None);
    assert_eq!(c.net.ping_timeout_ms, None);
    assert_eq!(c.net.other["rr-conflict"], "retry-connect");
    assert_eq!(c.net.other["verify-alg"], "md5");
    assert_eq!(r.connections[1].cstate.as_deref(), Some("Connected"));

    let rs = parse_show(&read_fixture(
        "show-drbd-utils-tiebreaker-swap-tab-indent.txt",
    ))
    .unwrap();
    let peers: Vec<_> = rs[0]
        .connections
        .iter()
        .map(|c| (c.peer_node_id, c.name.clone(), c.cstate.clone()))
        .collect();
    assert_eq!(
        peers,
        [
            (Some(0), Some("peer0".into()), Some("Connecting".into())),
            (Some(2), Some("peer2".into()), Some("Connected".into()))
        ]
    );
}

#[test]
fn show_defaults_all_at_drbds_defaults() {
    let text = read_fixture("show-defaults-constructed-drbd9-all-defaults.txt");
    let n = net_options(&text, "r0").unwrap();
    assert_eq!(n.ping_int_ms, Some(10_000), "ping-int 10 s");
    assert_eq!(n.ping_timeout_ms, Some(500), "ping-timeout 5 tenths");
    assert_eq!(n.connect_int_ms, Some(10_000));
    assert_eq!(n.timeout_ms, Some(6_000));
    assert_eq!(n.protocol.as_deref(), Some("C"));
    assert_eq!(n.fencing.as_deref(), Some("dont-care"));
    for k in [
        "ping-int",
        "ping-timeout",
        "connect-int",
        "timeout",
        "fencing",
    ] {
        assert!(n.defaults.contains(k), "{k} marked default");
    }
    assert_eq!(n.other["_name"], "fs1-b");
    assert_eq!(n.other["max-buffers"], "2048");
    assert_eq!(n.other["cram-hmac-alg"], "");
    let rs = parse_show(&text).unwrap();
    assert_eq!(rs[0].options["auto-promote"], "yes");
    assert_eq!(rs[0].options["cpu-mask"], "");
}

#[test]
fn show_defaults_tuned() {
    let n = net_options(
        &read_fixture("show-defaults-constructed-drbd9-tuned-fencing.txt"),
        "r0",
    )
    .unwrap();
    assert_eq!(n.ping_int_ms, Some(1_000));
    assert_eq!(n.ping_timeout_ms, Some(300));
    assert_eq!(n.connect_int_ms, Some(2_000));
    assert_eq!(n.timeout_ms, Some(2_000));
    assert_eq!(n.fencing.as_deref(), Some("resource-and-stonith"));
    assert!(!n.defaults.contains("ping-int"));
    assert!(!n.defaults.contains("fencing"));
    assert!(n.defaults.contains("protocol"));
    assert_eq!(n.other["max-buffers"], "8000");
}

#[test]
fn a_missing_resource_names_the_ones_found() {
    let e = net_options(
        &read_fixture("show-defaults-constructed-drbd9-tuned-fencing.txt"),
        "r9",
    )
    .unwrap_err();
    assert_eq!(
        e,
        ShowError::ResourceNotFound {
            resource: "r9".into(),
            found: vec!["r0".into()]
        }
    );
    assert!(e.to_string().contains("found: r0"), "{e}");
}
