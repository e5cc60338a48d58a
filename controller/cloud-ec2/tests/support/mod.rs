//! moto's EC2 server on loopback for tests, shared by `cloud-ec2/tests/moto.rs`,
//! the controller's fence tests and the namespace cluster's EC2 backend
//! (`tests/src/ec2.rs`) (included there with `#[path]`): start a
//! `moto_server` (from the project's venv, see `scripts/install-deps.sh`, or from
//! PATH) on a free port, killed on drop; a missing `moto_server` fails the test
//! with the command that installs it, never skips it. Then a world of a VPC,
//! subnets in two zones and three instances.

// Each includer uses a part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use understudy_cloud::CloudServer;
use understudy_cloud_ec2::aws_sdk_ec2::types::{Filter, InstanceType};
use understudy_cloud_ec2::aws_sdk_ec2::Client;
use understudy_cloud_ec2::Ec2Config;

pub const CLIENT_IP: &str = "10.0.1.100";

/// A `moto_server` child process, killed on drop (also when a test panics).
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn find_moto_server() -> PathBuf {
    let venv = std::env::var_os("UNDERSTUDY_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/understudy-venv"))
        });
    if let Some(p) = venv.map(|v| v.join("bin/moto_server")) {
        if p.is_file() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("moto_server");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("moto_server not found: run ./scripts/install-deps.sh (pip install \"moto[server]\")");
}

pub fn start_moto() -> Moto {
    let bin = find_moto_server();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return moto;
        }
        if let Some(st) = moto.child.try_wait().unwrap() {
            panic!("{} exited with {st} before answering", bin.display());
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on 127.0.0.1:{port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The backend's configuration for `moto`. The call timeout is 10 s, not the
/// default 2 s: moto loads its EC2 backend on the first call, which takes seconds
/// on a loaded 2-core machine (the calls' real latencies are printed).
pub fn config(moto: &Moto) -> Ec2Config {
    Ec2Config {
        endpoint_url: Some(format!("http://127.0.0.1:{}", moto.port)),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        call_timeout_ms: 10_000,
        ..Ec2Config::new("us-east-1")
    }
}

/// Await `fut`, printing how long it took.
pub async fn timed<T>(label: &str, fut: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let r = fut.await;
    eprintln!(
        "latency {label}: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    r
}

/// VPC, subnets in us-east-1a and us-east-1b, a group for the servers, the file
/// server and the backup in 1a, another server in 1b; the client IP is a
/// secondary address of the file server's interface.
pub struct World {
    pub vpc: String,
    pub file_server: CloudServer,
    pub backup: CloudServer,
    pub other_zone: CloudServer,
}

pub async fn run_instance(
    ec2: &Client,
    image: &str,
    subnet: &str,
    group: &str,
    name: &str,
    zone: &str,
) -> CloudServer {
    let out = ec2
        .run_instances()
        .image_id(image)
        .instance_type(InstanceType::T2Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .security_group_ids(group)
        .send()
        .await
        .unwrap();
    let id = out.instances()[0].instance_id().unwrap().to_string();
    let enis = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let eni = enis.network_interfaces()[0]
        .network_interface_id()
        .unwrap()
        .to_string();
    CloudServer {
        server_id: name.into(),
        instance_id: id,
        interface_id: eni,
        zone: zone.into(),
    }
}

pub async fn setup(ec2: &Client) -> World {
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
    for (cidr, zone) in [("10.0.1.0/24", "us-east-1a"), ("10.0.2.0/24", "us-east-1b")] {
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
    let images = ec2.describe_images().send().await.unwrap();
    let image = images.images()[0].image_id().unwrap().to_string();
    let file_server = run_instance(ec2, &image, &subnets[0], &group, "fs1", "us-east-1a").await;
    let backup = run_instance(ec2, &image, &subnets[0], &group, "fs2", "us-east-1a").await;
    let other_zone = run_instance(ec2, &image, &subnets[1], &group, "fs3", "us-east-1b").await;
    ec2.assign_private_ip_addresses()
        .network_interface_id(&file_server.interface_id)
        .private_ip_addresses(CLIENT_IP)
        .send()
        .await
        .unwrap();
    World {
        vpc,
        file_server,
        backup,
        other_zone,
    }
}

/// The security groups of an interface, straight from moto.
pub async fn groups_of(ec2: &Client, eni: &str) -> Vec<String> {
    let out = ec2
        .describe_network_interfaces()
        .network_interface_ids(eni)
        .send()
        .await
        .unwrap();
    out.network_interfaces()[0]
        .groups()
        .iter()
        .map(|g| g.group_id().unwrap().to_string())
        .collect()
}
