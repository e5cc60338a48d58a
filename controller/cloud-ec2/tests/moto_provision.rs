//! Provisioning of the EC2 backend against moto's EC2 server on loopback:
//! launching spares (from a launch template or an image), client tokens,
//! termination, and volumes created, attached, force-detached and tagged.
//! Each test starts its own `moto_server` (see `support`); a missing
//! `moto_server` fails the test with the command that installs it, never skips.
//!
//! moto ignores client tokens and zones, lets a volume attached to one instance
//! be attached to another, and ignores a launch template's network interfaces
//! (the instance goes to its default subnet of us-east-1a): these tests check
//! what the backend guarantees by itself.

mod support;

use aws_sdk_ec2::types::{
    Filter, LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, RequestLaunchTemplateData,
};
use aws_sdk_ec2::Client;
use support::*;
use understudy_cloud::provision::{tag_list, tags};
use understudy_cloud::{
    Cloud, CloudError, InstanceState, LaunchRequest, VolumeFilter, VolumeRequest, VolumeState,
};
use understudy_cloud_ec2::{Ec2Cloud, Ec2Config};

const ZONE_A: &str = "us-east-1a";
const ZONE_B: &str = "us-east-1b";

/// A VPC with a subnet in each of two zones, a security group and an image.
struct Net {
    subnet_a: String,
    subnet_b: String,
    group: String,
    image: String,
}

async fn net(ec2: &Client) -> Net {
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let mut subnets = Vec::new();
    for (cidr, zone) in [("10.0.1.0/24", ZONE_A), ("10.0.2.0/24", ZONE_B)] {
        subnets.push(
            ec2.create_subnet()
                .vpc_id(&vpc)
                .cidr_block(cidr)
                .availability_zone(zone)
                .send()
                .await
                .unwrap()
                .subnet()
                .unwrap()
                .subnet_id()
                .unwrap()
                .to_string(),
        );
    }
    let group = ec2
        .create_security_group()
        .group_name("understudy-servers")
        .description("NFS servers")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    // moto comes with many public images; any will do.
    let images = ec2.describe_images().send().await.unwrap();
    let image = images.images()[0].image_id().unwrap().to_string();
    Net {
        subnet_b: subnets.pop().unwrap(),
        subnet_a: subnets.pop().unwrap(),
        group,
        image,
    }
}

/// A launch template for `image` whose first interface is in `subnet` (no
/// subnet: no network interface at all).
async fn template(ec2: &Client, name: &str, image: &str, subnet: Option<&str>) -> String {
    let mut data = RequestLaunchTemplateData::builder()
        .image_id(image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro);
    if let Some(s) = subnet {
        data = data.network_interfaces(
            LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                .device_index(0)
                .subnet_id(s)
                .build(),
        );
    }
    ec2.create_launch_template()
        .launch_template_name(name)
        .launch_template_data(data.build())
        .send()
        .await
        .unwrap()
        .launch_template()
        .unwrap()
        .launch_template_id()
        .unwrap()
        .to_string()
}

/// Every instance moto knows, whatever its state.
async fn instance_count(ec2: &Client) -> usize {
    ec2.describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .map(|r| r.instances().len())
        .sum()
}

fn spare(token: &str, zone: &str) -> LaunchRequest {
    LaunchRequest {
        client_token: token.into(),
        zone: zone.into(),
        tags: tag_list(&[
            (tags::PAIR, "fs1"),
            (tags::PURPOSE, "spare"),
            (tags::NAME, "fs1-spare"),
        ]),
    }
}

fn refused(r: Result<impl std::fmt::Debug, CloudError>, wants: &[&str]) -> String {
    let e = r.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, CloudError::Refused { .. }), "{msg}");
    for w in wants {
        assert!(msg.contains(w), "{msg:?} should mention {w:?}");
    }
    msg
}

#[tokio::test]
async fn a_template_launch_happens_once_per_token_with_its_tags() {
    let moto = start_moto();
    let admin = Ec2Cloud::new(config(&moto)).unwrap();
    let ec2 = admin.client().clone();
    let n = net(&ec2).await;
    let lt = template(&ec2, "spare-a", &n.image, Some(&n.subnet_a)).await;
    let cloud = Ec2Cloud::new(Ec2Config {
        launch_template_id: Some(lt.clone()),
        ..config(&moto)
    })
    .unwrap();
    assert_eq!(
        timed("launch_zone (template)", cloud.launch_zone())
            .await
            .unwrap(),
        ZONE_A
    );

    let before = instance_count(&ec2).await;
    let first = timed(
        "launch_instance",
        cloud.launch_instance(&spare("fs1-s1", ZONE_A)),
    )
    .await
    .unwrap();
    eprintln!("{first:?}");
    assert_eq!(first.zone, ZONE_A);
    assert!(first.instance_id.starts_with("i-"), "{first:?}");
    assert!(first.interface_id.starts_with("eni-"), "{first:?}");
    assert!(!first.private_ip.is_empty(), "{first:?}");
    assert_eq!(first.tag(tags::PAIR), Some("fs1"));
    assert_eq!(first.tag(tags::CLIENT_TOKEN), Some("fs1-s1"));
    // The same token again (a new leader repeating the step, here a new backend):
    // the same instance, none launched.
    let again = Ec2Cloud::new(Ec2Config {
        launch_template_id: Some(lt.clone()),
        ..config(&moto)
    })
    .unwrap();
    let second = timed(
        "launch_instance (same token)",
        again.launch_instance(&spare("fs1-s1", ZONE_A)),
    )
    .await
    .unwrap();
    assert_eq!(second.instance_id, first.instance_id);
    assert_eq!(second.interface_id, first.interface_id);
    assert_eq!(instance_count(&ec2).await, before + 1);

    // The tags, straight from moto, on the instance and its root volume.
    let out = ec2
        .describe_instances()
        .instance_ids(&first.instance_id)
        .send()
        .await
        .unwrap();
    let inst = &out.reservations()[0].instances()[0];
    let tag = |k: &str| {
        inst.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag(tags::PAIR).as_deref(), Some("fs1"));
    assert_eq!(tag(tags::PURPOSE).as_deref(), Some("spare"));
    assert_eq!(tag(tags::NAME).as_deref(), Some("fs1-spare"));
    assert_eq!(tag(tags::CLIENT_TOKEN).as_deref(), Some("fs1-s1"));
    let root = cloud
        .describe_volumes(&VolumeFilter {
            volume_ids: vec![],
            attached_to: Some(first.instance_id.clone()),
        })
        .await
        .unwrap();
    assert!(!root.is_empty());
    assert!(
        root.iter()
            .all(|v| v.tag(tags::CLIENT_TOKEN) == Some("fs1-s1")),
        "{root:?}"
    );

    // Described: running now, with the same interface.
    let d = timed(
        "describe_instance",
        cloud.describe_instance(&first.instance_id),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(d.state, InstanceState::Running);
    assert_eq!(d.interface_id, first.interface_id);
    assert_eq!(
        cloud
            .describe_instance("i-0123456789abcdef0")
            .await
            .unwrap(),
        None
    );

    // The token with another request: refused, nothing launched.
    let mut other = spare("fs1-s1", ZONE_A);
    other.tags = tag_list(&[(tags::PAIR, "fs2")]);
    refused(
        cloud.launch_instance(&other).await,
        &[
            "client token fs1-s1 already launched",
            &first.instance_id,
            "understudy:pair=fs1 (asked: fs2)",
        ],
    );
    assert_eq!(instance_count(&ec2).await, before + 1);

    // A new token: a new instance.
    let third = cloud
        .launch_instance(&spare("fs1-s2", ZONE_A))
        .await
        .unwrap();
    assert_ne!(third.instance_id, first.instance_id);
    assert_eq!(instance_count(&ec2).await, before + 2);

    // Terminate twice, and an unknown instance: all fine.
    timed(
        "terminate_instance",
        cloud.terminate_instance(&third.instance_id),
    )
    .await
    .unwrap();
    timed(
        "terminate_instance (again)",
        cloud.terminate_instance(&third.instance_id),
    )
    .await
    .unwrap();
    cloud
        .terminate_instance("i-0123456789abcdef0")
        .await
        .unwrap();
    let d = cloud
        .describe_instance(&third.instance_id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            d.state,
            InstanceState::ShuttingDown | InstanceState::Terminated
        ),
        "{d:?}"
    );
    // The first spare is untouched.
    assert_eq!(
        cloud
            .describe_instance(&first.instance_id)
            .await
            .unwrap()
            .unwrap()
            .state,
        InstanceState::Running
    );
}

#[tokio::test]
async fn a_launch_for_another_zone_is_refused_before_run_instances() {
    let moto = start_moto();
    let admin = Ec2Cloud::new(config(&moto)).unwrap();
    let ec2 = admin.client().clone();
    let n = net(&ec2).await;
    let before = instance_count(&ec2).await;

    // A template whose subnet is in us-east-1b, for a pair in us-east-1a.
    let lt_b = template(&ec2, "spare-b", &n.image, Some(&n.subnet_b)).await;
    let cloud = Ec2Cloud::new(Ec2Config {
        launch_template_id: Some(lt_b.clone()),
        launch_template_version: Some("$Latest".into()),
        ..config(&moto)
    })
    .unwrap();
    assert_eq!(cloud.launch_zone().await.unwrap(), ZONE_B);
    refused(
        timed(
            "launch_instance (template in another zone)",
            cloud.launch_instance(&spare("fs1-s1", ZONE_A)),
        )
        .await,
        &[
            "spares launch in zone us-east-1b",
            &format!(
                "subnet {} of launch template {lt_b} version $Latest",
                n.subnet_b
            ),
            "must run in zone us-east-1a",
        ],
    );
    // An image in a subnet of us-east-1b, the same.
    let image_b = Ec2Cloud::new(Ec2Config {
        image_id: Some(n.image.clone()),
        instance_type: Some("t3.micro".into()),
        subnet_id: Some(n.subnet_b.clone()),
        ..config(&moto)
    })
    .unwrap();
    refused(
        image_b.launch_instance(&spare("fs1-s1", ZONE_A)).await,
        &[
            "spares launch in zone us-east-1b",
            &format!("(subnet_id {})", n.subnet_b),
            "must run in zone us-east-1a",
        ],
    );
    assert_eq!(
        instance_count(&ec2).await,
        before,
        "an instance was launched"
    );

    // Launch configurations that cannot say where spares would go.
    let no_subnet = template(&ec2, "no-subnet", &n.image, None).await;
    let c = Ec2Cloud::new(Ec2Config {
        launch_template_id: Some(no_subnet.clone()),
        ..config(&moto)
    })
    .unwrap();
    refused(
        c.launch_zone().await,
        &[
            &format!("launch template {no_subnet} version $Default names no subnet"),
            "set subnet_id",
        ],
    );
    refused(
        c.launch_instance(&spare("fs1-s1", ZONE_A)).await,
        &["names no subnet"],
    );
    // ... unless subnet_id says it.
    let c = Ec2Cloud::new(Ec2Config {
        launch_template_id: Some(no_subnet),
        subnet_id: Some(n.subnet_a.clone()),
        ..config(&moto)
    })
    .unwrap();
    assert_eq!(c.launch_zone().await.unwrap(), ZONE_A);
    // A template with interfaces does not go with subnet_id.
    let c = Ec2Cloud::new(Ec2Config {
        launch_template_id: Some(lt_b.clone()),
        subnet_id: Some(n.subnet_a.clone()),
        ..config(&moto)
    })
    .unwrap();
    refused(
        c.launch_zone().await,
        &["has network interfaces", "remove subnet_id"],
    );
    for (cfg, wants) in [
        (
            Ec2Config {
                launch_template_id: Some("lt-0123456789abcdef0".into()),
                ..config(&moto)
            },
            vec![
                "launch template lt-0123456789abcdef0 version $Default cannot be read",
                "fix launch_template_id",
            ],
        ),
        (
            Ec2Config {
                launch_template_id: Some(lt_b.clone()),
                launch_template_version: Some("7".into()),
                ..config(&moto)
            },
            vec!["version 7 cannot be read"],
        ),
        (
            Ec2Config {
                image_id: Some(n.image.clone()),
                instance_type: Some("t3.micro".into()),
                subnet_id: Some("subnet-0123456789abcdef0".into()),
                ..config(&moto)
            },
            vec![
                "subnet_id subnet-0123456789abcdef0 cannot be found",
                "fix subnet_id",
            ],
        ),
        (
            config(&moto),
            vec!["no launch configuration", "launch_template_id"],
        ),
    ] {
        let c = Ec2Cloud::new(cfg).unwrap();
        refused(c.launch_instance(&spare("fs1-s1", ZONE_A)).await, &wants);
    }
    assert_eq!(
        instance_count(&ec2).await,
        before,
        "an instance was launched"
    );
}

#[tokio::test]
async fn an_image_launch_goes_to_the_configured_subnet_and_groups() {
    let moto = start_moto();
    let admin = Ec2Cloud::new(config(&moto)).unwrap();
    let ec2 = admin.client().clone();
    let n = net(&ec2).await;
    let cloud = Ec2Cloud::new(Ec2Config {
        image_id: Some(n.image.clone()),
        instance_type: Some("t3.micro".into()),
        subnet_id: Some(n.subnet_b.clone()),
        security_group_ids: vec![n.group.clone()],
        ..config(&moto)
    })
    .unwrap();
    assert_eq!(
        timed("launch_zone (image)", cloud.launch_zone())
            .await
            .unwrap(),
        ZONE_B
    );
    let before = instance_count(&ec2).await;
    let i = timed(
        "launch_instance (image)",
        cloud.launch_instance(&spare("fs9-s1", ZONE_B)),
    )
    .await
    .unwrap();
    let j = cloud
        .launch_instance(&spare("fs9-s1", ZONE_B))
        .await
        .unwrap();
    assert_eq!(i.instance_id, j.instance_id);
    assert_eq!(instance_count(&ec2).await, before + 1);
    assert_eq!(i.zone, ZONE_B);
    let out = ec2
        .describe_instances()
        .instance_ids(&i.instance_id)
        .send()
        .await
        .unwrap();
    let inst = &out.reservations()[0].instances()[0];
    assert_eq!(inst.image_id(), Some(n.image.as_str()));
    assert_eq!(inst.instance_type().map(|t| t.as_str()), Some("t3.micro"));
    assert_eq!(inst.subnet_id(), Some(n.subnet_b.as_str()));
    let groups: Vec<&str> = inst
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id())
        .collect();
    assert_eq!(groups, vec![n.group.as_str()]);
    // Its interface is the one the instance reports.
    let enis = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&i.instance_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(enis
        .network_interfaces()
        .iter()
        .any(|e| e.network_interface_id() == Some(i.interface_id.as_str())));
}

#[tokio::test]
async fn volumes_are_created_attached_force_detached_and_tagged() {
    let moto = start_moto();
    let admin = Ec2Cloud::new(config(&moto)).unwrap();
    let ec2 = admin.client().clone();
    let n = net(&ec2).await;
    let lt = template(&ec2, "spare-a", &n.image, Some(&n.subnet_a)).await;
    let cloud = Ec2Cloud::new(Ec2Config {
        launch_template_id: Some(lt),
        ..config(&moto)
    })
    .unwrap();
    let primary = run_instance(&ec2, &n.image, &n.subnet_a, &n.group, "fs1-a", ZONE_A).await;
    let far = run_instance(&ec2, &n.image, &n.subnet_b, &n.group, "fs1-x", ZONE_B).await;
    let sp = cloud
        .launch_instance(&spare("fs1-s1", ZONE_A))
        .await
        .unwrap();

    let req = VolumeRequest {
        client_token: "fs1-r0-v1".into(),
        zone: ZONE_A.into(),
        size_gib: 20,
        tags: tag_list(&[(tags::PAIR, "fs1"), (tags::RESOURCE, "r0")]),
    };
    let v = timed("create_volume", cloud.create_volume(&req))
        .await
        .unwrap();
    eprintln!("{v:?}");
    assert_eq!((v.zone.as_str(), v.size_gib), (ZONE_A, 20));
    assert_eq!(v.tag(tags::CLIENT_TOKEN), Some("fs1-r0-v1"));
    let again = timed("create_volume (same token)", cloud.create_volume(&req))
        .await
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    let made = ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name(format!("tag:{}", tags::CLIENT_TOKEN))
                .values("fs1-r0-v1")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(made.volumes().len(), 1, "{made:?}");
    assert_eq!(
        made.volumes()[0].volume_type().map(|t| t.as_str()),
        Some("gp3")
    );
    refused(
        cloud
            .create_volume(&VolumeRequest {
                size_gib: 30,
                ..req.clone()
            })
            .await,
        &[
            "client token fs1-r0-v1 already created volume",
            &v.volume_id,
            "20 GiB (asked: 30)",
        ],
    );

    let by_id = VolumeFilter {
        volume_ids: vec![v.volume_id.clone()],
        attached_to: None,
    };
    let got = timed("describe_volumes", cloud.describe_volumes(&by_id))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].state, VolumeState::Available);

    // Attach to the primary: in-use, attached.
    timed(
        "attach_volume",
        cloud.attach_volume(&v.volume_id, &primary.instance_id, "/dev/xvdf"),
    )
    .await
    .unwrap();
    let got = cloud.describe_volumes(&by_id).await.unwrap();
    assert_eq!(got[0].state, VolumeState::InUse);
    assert!(got[0].attached_to(&primary.instance_id), "{got:?}");
    assert_eq!(got[0].attachments[0].device, "/dev/xvdf");
    // Again: nothing changes.
    cloud
        .attach_volume(&v.volume_id, &primary.instance_id, "/dev/xvdf")
        .await
        .unwrap();
    // Attached elsewhere: refused for the spare (moto would take it).
    refused(
        timed(
            "attach_volume (attached elsewhere)",
            cloud.attach_volume(&v.volume_id, &sp.instance_id, "/dev/xvdf"),
        )
        .await,
        &[
            &format!("volume {} is in-use", v.volume_id),
            &primary.instance_id,
            "detach it",
        ],
    );
    assert!(cloud.describe_volumes(&by_id).await.unwrap()[0].attached_to(&primary.instance_id));
    let on_primary = cloud
        .describe_volumes(&VolumeFilter {
            volume_ids: vec![],
            attached_to: Some(primary.instance_id.clone()),
        })
        .await
        .unwrap();
    assert!(on_primary.iter().any(|x| x.volume_id == v.volume_id));
    assert!(on_primary
        .iter()
        .all(|x| x.attached_to(&primary.instance_id)));

    // Not attached to the spare: nothing to detach from it.
    refused(
        cloud
            .detach_volume(&v.volume_id, &sp.instance_id, true)
            .await,
        &["is not attached to", &sp.instance_id],
    );
    // The primary is dead: forced detach.
    timed(
        "detach_volume (force)",
        cloud.detach_volume(&v.volume_id, &primary.instance_id, true),
    )
    .await
    .unwrap();
    let got = cloud.describe_volumes(&by_id).await.unwrap();
    assert_eq!(got[0].state, VolumeState::Available);
    assert!(got[0].attachments.is_empty(), "{got:?}");
    refused(
        cloud
            .detach_volume(&v.volume_id, &primary.instance_id, true)
            .await,
        &["is not attached to"],
    );

    // Another zone: refused, naming both.
    refused(
        timed(
            "attach_volume (another zone)",
            cloud.attach_volume(&v.volume_id, &far.instance_id, "/dev/xvdf"),
        )
        .await,
        &["is in zone us-east-1a", "in zone us-east-1b"],
    );
    assert_eq!(
        cloud.describe_volumes(&by_id).await.unwrap()[0].state,
        VolumeState::Available
    );

    // To the spare.
    cloud
        .attach_volume(&v.volume_id, &sp.instance_id, "/dev/xvdf")
        .await
        .unwrap();
    let on_spare = cloud
        .describe_volumes(&VolumeFilter {
            volume_ids: vec![v.volume_id.clone()],
            attached_to: Some(sp.instance_id.clone()),
        })
        .await
        .unwrap();
    assert_eq!(on_spare.len(), 1);
    assert!(on_spare[0].attached_to(&sp.instance_id));
    // Its device is taken now.
    let w = cloud
        .create_volume(&VolumeRequest {
            client_token: "fs1-r0-v2".into(),
            ..req.clone()
        })
        .await
        .unwrap();
    refused(
        cloud
            .attach_volume(&w.volume_id, &sp.instance_id, "/dev/xvdf")
            .await,
        &["device /dev/xvdf", "taken by volume", &v.volume_id],
    );
    let both = cloud
        .describe_volumes(&VolumeFilter {
            volume_ids: vec![v.volume_id.clone(), w.volume_id.clone()],
            attached_to: None,
        })
        .await
        .unwrap();
    assert_eq!(both.len(), 2);

    // Tags.
    timed(
        "tag_volume",
        cloud.tag_volume(
            &v.volume_id,
            &tag_list(&[(tags::KEEP, "true"), (tags::PAIR, "fs2")]),
        ),
    )
    .await
    .unwrap();
    let got = cloud.describe_volumes(&by_id).await.unwrap();
    assert_eq!(got[0].tag(tags::KEEP), Some("true"));
    assert_eq!(got[0].tag(tags::PAIR), Some("fs2"));
    assert_eq!(got[0].tag(tags::RESOURCE), Some("r0"));
    assert_eq!(got[0].tag(tags::CLIENT_TOKEN), Some("fs1-r0-v1"));

    // Unknown volumes.
    for r in [
        cloud
            .describe_volumes(&VolumeFilter {
                volume_ids: vec!["vol-0123456789abcdef0".into()],
                attached_to: None,
            })
            .await
            .map(|_| ()),
        cloud
            .tag_volume("vol-0123456789abcdef0", &tag_list(&[("a", "b")]))
            .await,
        cloud
            .attach_volume("vol-0123456789abcdef0", &sp.instance_id, "/dev/xvdg")
            .await,
    ] {
        let e = r.unwrap_err();
        eprintln!("{e}");
        assert!(
            matches!(e, CloudError::NotFound { what: "volume", .. }),
            "{e}"
        );
    }
    let e = cloud
        .attach_volume(&w.volume_id, "i-0123456789abcdef0", "/dev/xvdg")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CloudError::NotFound {
                what: "instance",
                ..
            }
        ),
        "{e}"
    );

    // A terminated spare lets its volumes go.
    cloud.terminate_instance(&sp.instance_id).await.unwrap();
    let got = cloud.describe_volumes(&by_id).await.unwrap();
    assert_eq!(got[0].state, VolumeState::Available, "{got:?}");
}
