//! The fence through the EC2 backend against moto's EC2 server on loopback: real
//! SDK calls and HTTP, the backend's own checks (zones, verification), moto's
//! instant stops. A missing `moto_server` fails these tests with the command that
//! installs it (`./scripts/install-deps.sh`).

#[path = "../../cloud-ec2/tests/support/mod.rs"]
mod support;

use support::*;
use understudy_cloud::faulty::{Fault, FaultyCloud, Op};
use understudy_cloud_ec2::Ec2Cloud;

use super::*;

fn fencer(cloud: Arc<dyn Cloud>, from: &CloudServer, to: &CloudServer, ms: u64) -> Fencer {
    Fencer {
        cloud,
        client_ip: CLIENT_IP.into(),
        from: from.clone(),
        to: to.clone(),
        deadline: Duration::from_millis(ms),
        retry_for: Duration::ZERO,
        forced_stop_deadline: Duration::from_secs(10),
    }
}

/// moto with the world of `support::setup`, and the backend tracking the servers.
async fn world() -> (Moto, Ec2Cloud, World) {
    let moto = start_moto();
    let cloud = Ec2Cloud::new(config(&moto)).unwrap();
    let w = setup(cloud.client()).await;
    cloud.track_servers([&w.file_server, &w.backup, &w.other_zone]);
    (moto, cloud, w)
}

#[tokio::test]
async fn ec2_fence_by_the_verified_ip_move() {
    let (_moto, cloud, w) = world().await;
    let cloud = Arc::new(cloud);
    let (fs, bk) = (&w.file_server, &w.backup);
    let run = fencer(cloud.clone(), fs, bk, 5000).run().await;
    let f = run.result.expect("fenced");
    eprintln!("{f}");
    let Proof::IpMoved { holders, .. } = &f.proof else {
        panic!("{f}")
    };
    assert_eq!(holders, &vec![bk.interface_id.clone()]);
    assert!(
        f.to_string().starts_with(&format!(
            "verified: client IP {CLIENT_IP} no longer on fs1's interface {}",
            fs.interface_id
        )),
        "{f}"
    );
    assert_eq!(
        run.forced_stop.await.unwrap(),
        StopOutcome::Requested { tries: 1 }
    );
    assert_eq!(run.isolation.await.unwrap(), Isolation::Verified);
    assert!(matches!(
        cloud.instance_state(fs).await.unwrap(),
        InstanceState::Stopping | InstanceState::Stopped
    ));
    assert!(cloud.is_isolated(fs).await.unwrap());
    assert_eq!(
        cloud.instance_state(bk).await.unwrap(),
        InstanceState::Running
    );
    assert_eq!(
        cloud.ip_holders(CLIENT_IP).await.unwrap(),
        vec![bk.interface_id.clone()]
    );
}

#[tokio::test]
async fn ec2_fence_falls_back_to_the_verified_stop() {
    // The backend refuses to move the IP across zones (EC2's rule, which moto
    // does not enforce); the forced stop goes through and moto stops at once.
    let (_moto, cloud, w) = world().await;
    let cloud = Arc::new(cloud);
    let (fs, other) = (&w.file_server, &w.other_zone);
    let run = fencer(cloud.clone(), fs, other, 5000).run().await;
    let f = run.result.expect("fenced by the stop");
    eprintln!("{f}");
    let Proof::Stopped {
        state, ip_failure, ..
    } = &f.proof
    else {
        panic!("{f}")
    };
    assert_eq!(*state, InstanceState::Stopped);
    assert!(
        ip_failure.contains("cannot move across zones"),
        "{ip_failure}"
    );
    assert!(f.to_string().contains("(fallback: client IP"), "{f}");
    assert_eq!(
        cloud.ip_holders(CLIENT_IP).await.unwrap(),
        vec![fs.interface_id.clone()]
    );
}

#[tokio::test]
async fn ec2_isolation_alone_does_not_fence() {
    // The move is refused (across zones) and so is the stop (as EC2 does for an
    // IAM policy without ec2:StopInstances): the old primary is isolated by its
    // security groups, which does not cut the connections EC2 tracks, and is
    // running. Not fenced.
    let (_moto, cloud, w) = world().await;
    let cloud = Arc::new(FaultyCloud::new(cloud));
    cloud.inject(
        Op::ForceStop,
        Fault::Error(CloudError::Refused {
            provider: "ec2",
            op: "force_stop",
            reason: "StopInstances: UnauthorizedOperation: You are not authorized to perform this operation".into(),
        }),
        None,
    );
    let (fs, other) = (&w.file_server, &w.other_zone);
    let run = fencer(cloud.clone(), fs, other, 1500).run().await;
    let e = run.result.expect_err("not fenced");
    eprintln!("{e}");
    let FenceError::NotFenced {
        stop_failure,
        isolation,
        ..
    } = &e;
    assert_eq!(*isolation, Isolation::Verified);
    assert!(stop_failure.contains("is Running"), "{stop_failure}");
    assert!(cloud.inner().is_isolated(fs).await.unwrap());
    assert_eq!(
        cloud.inner().instance_state(fs).await.unwrap(),
        InstanceState::Running
    );
    let out = run.forced_stop.await.unwrap();
    assert!(
        matches!(&out, StopOutcome::Failed(why) if why.contains("UnauthorizedOperation")),
        "{out}"
    );
}
