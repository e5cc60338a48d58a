//! The EC2 backend against moto's EC2 server on loopback: real SDK calls, real
//! HTTP. Each test starts its own `moto_server` (from the project's venv, see
//! `scripts/install-deps.sh`, or from PATH) on a free port and kills it on drop.
//! A missing `moto_server` fails the test; it is never skipped.
//!
//! moto enforces far less than EC2 (instant state changes, no zone rules, an IP
//! may sit on two interfaces), so these tests check what the backend itself
//! guarantees. Latency of every call is printed (`--nocapture` to see it).

mod support;

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange};
use aws_sdk_ec2::Client;
use std::net::TcpListener;
use support::*;
use understudy_cloud::{Cloud, CloudError, CloudServer, InstanceState};
use understudy_cloud_ec2::{Ec2Cloud, Ec2Config, IsolationGroupError, ISOLATION_GROUP_PREFIX};

#[tokio::test]
async fn failover_moves_ip_isolates_and_stops() {
    let moto = start_moto();
    let cloud = Ec2Cloud::new(config(&moto)).unwrap();
    let ec2 = cloud.client().clone();
    let w = setup(&ec2).await;
    let (fs, bk) = (&w.file_server, &w.backup);
    // moto's address filter only matches primary addresses: tell the backend
    // which interfaces to look at directly, as the controller does at start.
    cloud.track_servers([fs, bk]);

    assert_eq!(
        timed("ip_holders (before)", cloud.ip_holders(CLIENT_IP))
            .await
            .unwrap(),
        vec![fs.interface_id.clone()]
    );
    timed("move_client_ip", cloud.move_client_ip(CLIENT_IP, fs, bk))
        .await
        .unwrap();
    assert_eq!(
        timed("ip_holders", cloud.ip_holders(CLIENT_IP))
            .await
            .unwrap(),
        vec![bk.interface_id.clone()]
    );

    assert!(!timed("is_isolated (before)", cloud.is_isolated(fs))
        .await
        .unwrap());
    timed("isolate (creates the group)", cloud.isolate(fs))
        .await
        .unwrap();
    assert!(timed("is_isolated", cloud.is_isolated(fs)).await.unwrap());
    let groups = groups_of(&ec2, &fs.interface_id).await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    let sg = ec2
        .describe_security_groups()
        .group_ids(&groups[0])
        .send()
        .await
        .unwrap();
    let sg = &sg.security_groups()[0];
    assert_eq!(
        sg.group_name().unwrap(),
        format!("{ISOLATION_GROUP_PREFIX}{}", w.vpc)
    );
    assert!(sg.ip_permissions().is_empty(), "{sg:?}");
    assert!(sg.ip_permissions_egress().is_empty(), "{sg:?}");
    // The backup is untouched.
    assert!(!cloud.is_isolated(bk).await.unwrap());

    assert_eq!(
        timed("instance_state (before)", cloud.instance_state(fs))
            .await
            .unwrap(),
        InstanceState::Running
    );
    timed("force_stop", cloud.force_stop(fs)).await.unwrap();
    let st = timed("instance_state", cloud.instance_state(fs))
        .await
        .unwrap();
    assert!(
        matches!(st, InstanceState::Stopping | InstanceState::Stopped),
        "{st:?}"
    );
    // Straight from DescribeInstances too.
    let out = ec2
        .describe_instances()
        .instance_ids(&fs.instance_id)
        .send()
        .await
        .unwrap();
    let word = out.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .as_str()
        .to_string();
    assert!(word == "stopping" || word == "stopped", "{word}");
    assert_eq!(
        cloud.instance_state(bk).await.unwrap(),
        InstanceState::Running
    );
}

#[tokio::test]
async fn every_operation_twice_is_fine() {
    let moto = start_moto();
    let cloud = Ec2Cloud::new(config(&moto)).unwrap();
    let w = setup(cloud.client()).await;
    let (fs, bk) = (&w.file_server, &w.backup);
    for round in 1..=2 {
        timed(
            &format!("move_client_ip #{round}"),
            cloud.move_client_ip(CLIENT_IP, fs, bk),
        )
        .await
        .unwrap();
        assert_eq!(
            cloud.ip_holders(CLIENT_IP).await.unwrap(),
            vec![bk.interface_id.clone()]
        );
        timed(&format!("isolate #{round}"), cloud.isolate(fs))
            .await
            .unwrap();
        assert!(cloud.is_isolated(fs).await.unwrap());
        timed(&format!("force_stop #{round}"), cloud.force_stop(fs))
            .await
            .unwrap();
        assert!(matches!(
            cloud.instance_state(fs).await.unwrap(),
            InstanceState::Stopping | InstanceState::Stopped
        ));
    }
    // A second backend (a new controller leader) finds the existing isolating
    // group instead of creating another one.
    let again = Ec2Cloud::new(config(&moto)).unwrap();
    timed("isolate (new backend)", again.isolate(bk))
        .await
        .unwrap();
    assert_eq!(
        groups_of(cloud.client(), &bk.interface_id).await,
        groups_of(cloud.client(), &fs.interface_id).await
    );
    let named = cloud
        .client()
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name("group-name")
                .values(format!("{ISOLATION_GROUP_PREFIX}{}", w.vpc))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(named.security_groups().len(), 1);
    again.track_servers([fs, bk]);
    // And moving back works, twice.
    for _ in 0..2 {
        cloud.move_client_ip(CLIENT_IP, bk, fs).await.unwrap();
    }
    assert_eq!(
        again.ip_holders(CLIENT_IP).await.unwrap(),
        vec![fs.interface_id.clone()]
    );
}

async fn create_group(ec2: &Client, vpc: &str, name: &str) -> String {
    ec2.create_security_group()
        .group_name(name)
        .description("operator's isolating group")
        .vpc_id(vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string()
}

fn rule(proto: &str, port: Option<i32>, cidr: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol(proto)
        .set_from_port(port)
        .set_to_port(port)
        .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
        .build()
}

#[tokio::test]
async fn a_configured_isolation_group_must_have_no_rules() {
    let moto = start_moto();
    let admin = Ec2Cloud::new(config(&moto)).unwrap();
    let ec2 = admin.client().clone();
    let w = setup(&ec2).await;
    let fs = &w.file_server;
    let before = groups_of(&ec2, &fs.interface_id).await;

    // The operator's group: a VPC group comes with an allow-all egress rule, and
    // this one also lets NFS in.
    let ops = create_group(&ec2, &w.vpc, "ops-isolation").await;
    let nfs = rule("tcp", Some(2049), "10.0.0.0/16");
    ec2.authorize_security_group_ingress()
        .group_id(&ops)
        .ip_permissions(nfs.clone())
        .send()
        .await
        .unwrap();
    let cloud = Ec2Cloud::new(Ec2Config {
        isolation_group_id: Some(ops.clone()),
        ..config(&moto)
    })
    .unwrap();
    let e = timed(
        "check_isolation_group (rules)",
        cloud.check_isolation_group(),
    )
    .await
    .unwrap_err();
    eprintln!("{e}");
    assert_eq!(
        e,
        IsolationGroupError::HasRules {
            group_id: ops.clone(),
            name: "ops-isolation".into(),
            ingress: vec!["tcp 2049 from 10.0.0.0/16".into()],
            egress: vec!["all traffic to 0.0.0.0/0".into()],
        }
    );
    assert!(e.to_string().contains("remove every rule from it"), "{e}");

    // Isolation with it is refused before anything changes.
    let e = timed("isolate (group with rules)", cloud.isolate(fs))
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::Refused { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "isolation_group_id {ops} (ops-isolation) has rules"
        )),
        "{e}"
    );
    assert_eq!(groups_of(&ec2, &fs.interface_id).await, before);
    assert!(matches!(
        cloud.is_isolated(fs).await,
        Err(CloudError::Refused { .. })
    ));

    // Ingress removed, the default egress rule still there: still refused.
    ec2.revoke_security_group_ingress()
        .group_id(&ops)
        .ip_permissions(nfs)
        .send()
        .await
        .unwrap();
    let e = cloud.check_isolation_group().await.unwrap_err();
    assert!(
        matches!(&e, IsolationGroupError::HasRules { ingress, egress, .. } if ingress.is_empty() && egress.len() == 1),
        "{e}"
    );

    // Egress revoked too: the group is accepted and used.
    ec2.revoke_security_group_egress()
        .group_id(&ops)
        .ip_permissions(rule("-1", None, "0.0.0.0/0"))
        .send()
        .await
        .unwrap();
    timed(
        "check_isolation_group (empty)",
        cloud.check_isolation_group(),
    )
    .await
    .unwrap();
    timed("isolate (operator's group)", cloud.isolate(fs))
        .await
        .unwrap();
    assert!(cloud.is_isolated(fs).await.unwrap());
    assert_eq!(groups_of(&ec2, &fs.interface_id).await, vec![ops.clone()]);
    // Understudy did not create a group of its own.
    let own = ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name("group-name")
                .values(format!("{ISOLATION_GROUP_PREFIX}{}", w.vpc))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(own.security_groups().is_empty(), "{own:?}");

    // A group that does not exist.
    let ghost = Ec2Cloud::new(Ec2Config {
        isolation_group_id: Some("sg-0123456789abcdef0".into()),
        ..config(&moto)
    })
    .unwrap();
    let e = ghost.check_isolation_group().await.unwrap_err();
    eprintln!("{e}");
    assert!(
        matches!(&e, IsolationGroupError::NotFound { group_id, .. } if group_id == "sg-0123456789abcdef0"),
        "{e}"
    );
    assert!(matches!(
        ghost.isolate(&w.backup).await,
        Err(CloudError::Refused { .. })
    ));

    // An empty group of another VPC cannot isolate these servers.
    let vpc2 = ec2
        .create_vpc()
        .cidr_block("10.1.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let elsewhere = create_group(&ec2, &vpc2, "ops-isolation-2").await;
    ec2.revoke_security_group_egress()
        .group_id(&elsewhere)
        .ip_permissions(rule("-1", None, "0.0.0.0/0"))
        .send()
        .await
        .unwrap();
    let wrong = Ec2Cloud::new(Ec2Config {
        isolation_group_id: Some(elsewhere.clone()),
        ..config(&moto)
    })
    .unwrap();
    wrong.check_isolation_group().await.unwrap();
    let bk_before = groups_of(&ec2, &w.backup.interface_id).await;
    let e = wrong.isolate(&w.backup).await.unwrap_err();
    eprintln!("{e}");
    assert!(
        e.to_string().contains(&format!(
            "isolation_group_id {elsewhere} is in VPC {vpc2} but server fs2's instance is in VPC {}",
            w.vpc
        )),
        "{e}"
    );
    assert_eq!(groups_of(&ec2, &w.backup.interface_id).await, bk_before);
}

#[tokio::test]
async fn inventory_mismatches_are_refused() {
    let moto = start_moto();
    let cloud = Ec2Cloud::new(config(&moto)).unwrap();
    let w = setup(cloud.client()).await;
    let (fs, other) = (&w.file_server, &w.other_zone);

    // Across zones: refused before any change.
    let e = timed(
        "move_client_ip (across zones)",
        cloud.move_client_ip(CLIENT_IP, fs, other),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, CloudError::Refused { .. }), "{e}");
    eprintln!("{e}");
    // Same, with the inventory lying about the target's zone: EC2's word wins.
    let liar = CloudServer {
        zone: "us-east-1a".into(),
        ..other.clone()
    };
    let e = timed(
        "move_client_ip (zone mismatch)",
        cloud.move_client_ip(CLIENT_IP, fs, &liar),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, CloudError::Refused { .. }), "{e}");
    eprintln!("{e}");
    assert_eq!(
        cloud.ip_holders(CLIENT_IP).await.unwrap(),
        vec![fs.interface_id.clone()]
    );
    for r in [
        cloud.isolate(&liar).await.map(|_| ()),
        cloud.force_stop(&liar).await,
        cloud.instance_state(&liar).await.map(|_| ()),
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, CloudError::Refused { .. }), "{e}");
    }
    assert_eq!(
        cloud.instance_state(other).await.unwrap(),
        InstanceState::Running
    );

    // An interface that is not the instance's.
    let wrong_eni = CloudServer {
        interface_id: w.backup.interface_id.clone(),
        ..fs.clone()
    };
    let e = cloud.isolate(&wrong_eni).await.unwrap_err();
    assert!(matches!(e, CloudError::Refused { .. }), "{e}");

    // Unknown instance.
    let ghost = CloudServer {
        instance_id: "i-0123456789abcdef0".into(),
        ..fs.clone()
    };
    let e = timed("instance_state (unknown)", cloud.instance_state(&ghost))
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    eprintln!("{e}");
    let e = cloud.force_stop(&ghost).await.unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    let e = cloud
        .move_client_ip(CLIENT_IP, fs, &ghost)
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    assert_eq!(
        cloud.instance_state(fs).await.unwrap(),
        InstanceState::Running
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_transient() {
    // A port nobody listens on: connection refused, mapped to Transient.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = Ec2Config {
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        call_timeout_ms: 500,
        ..Ec2Config::new("us-east-1")
    };
    let cloud = Ec2Cloud::new(cfg).unwrap();
    let e = timed("ip_holders (no endpoint)", cloud.ip_holders(CLIENT_IP))
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::Transient { .. }), "{e}");
    eprintln!("{e}");
}

/// `DescribeInstanceStatus` as moto answers it: the checks of a running
/// instance are `ok`, a stopped one's `not-applicable` (listed thanks to
/// `IncludeAllInstances`); moto schedules no event (the event mapping is
/// unit-tested in `health.rs`); an unknown instance is not found.
#[tokio::test]
async fn instance_health_reports_moto_status_checks() {
    let moto = start_moto();
    let cloud = Ec2Cloud::new(config(&moto)).unwrap();
    let w = setup(cloud.client()).await;
    let (fs, bk) = (&w.file_server, &w.backup);
    let h = timed("instance_health (running)", cloud.instance_health(fs))
        .await
        .unwrap();
    assert_eq!(
        (h.system_status.as_str(), h.instance_status.as_str()),
        ("ok", "ok"),
        "{h:?}"
    );
    assert!(h.events.is_empty(), "{h:?}");
    cloud.force_stop(fs).await.unwrap();
    let h = timed("instance_health (stopped)", cloud.instance_health(fs))
        .await
        .unwrap();
    assert_eq!(h.system_status, "not-applicable", "{h:?}");
    assert_eq!(h.instance_status, "not-applicable", "{h:?}");
    assert_eq!(cloud.instance_health(bk).await.unwrap().system_status, "ok");
    let ghost = CloudServer {
        instance_id: "i-0123456789abcdef0".into(),
        ..fs.clone()
    };
    let e = timed("instance_health (unknown)", cloud.instance_health(&ghost))
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    eprintln!("{e}");
}
