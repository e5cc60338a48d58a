//! The namespace cluster on the EC2 backend ([`crate::nscluster::NsOptions::ec2`]):
//! the controllers run `[cloud] kind = "ec2"` against a real `moto_server` on
//! loopback, reached through a [`FaultProxy`] that the fault matrix switches at
//! run time (pass, delay, EC2 errors, hang), and a [`VpcFabric`] makes the
//! namespaces obey moto's state as a VPC obeys the EC2 API.
//!
//! - [`Ec2Harness::start`] starts moto (`find_moto_server` of the EC2 backend's
//!   tests: a missing `moto_server` fails with the install command, never skips),
//!   the proxy on 127.0.0.1, and creates the world in moto, directly: a VPC and a
//!   subnet (zone `us-east-1a`) of the namespaces' /24, a security group for the
//!   servers, one instance per server host whose primary private address is the
//!   host's own (`RunInstances` with `PrivateIpAddress`), and the client IP as a
//!   secondary private address of fsa's interface (ENI).
//! - The controllers run in the root namespace, so they reach the proxy on
//!   127.0.0.1 directly; the proxy forwards to moto on 127.0.0.1.
//! - [`VpcFabric`]: a thread that polls moto directly (not through the proxy)
//!   every 50 ms and applies it to the namespaces as the local cloud's fence does:
//!   a host whose ENI does not hold the client IP in moto loses the address
//!   (`ip addr del`, the local cloud's IP move); a host whose ENI has lost the
//!   servers' security group (the fence's isolating group) has its cable cut
//!   (the local cloud's isolation); an instance `stopped` or `terminated` in
//!   moto is powered off: every process killed, cable cut, the client IP gone
//!   with the OS's runtime state (the local cloud's forced stop). So the fence is
//!   done on the data plane only when moto's state says so; the invariant checker
//!   still samples the real namespaces. What this cannot model faithfully:
//!   ARCHITECTURE.md, "Tests".
//!
//! Everything stops on drop, also when a test panics: fabric thread joined,
//! proxy threads joined, moto killed.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use understudy_cloud_ec2::aws_sdk_ec2::types::{Filter, InstanceType};
use understudy_cloud_ec2::aws_sdk_ec2::Client;
use understudy_cloud_ec2::Ec2Cloud;

// The EC2 backend's own moto helpers (find, start and kill `moto_server`, its
// client configuration), shared rather than copied.
#[path = "../../controller/cloud-ec2/tests/support/mod.rs"]
mod moto_support;

pub use moto_support::{find_moto_server, Moto};

/// The zone of the world's subnet (the pair's and the servers' zone).
pub const ZONE: &str = "us-east-1a";

/// What the proxy does with each EC2 request it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFault {
    /// Forward to moto and back.
    Pass,
    /// Hold every request this many milliseconds, then forward it.
    Delay(u64),
    /// Answer every request at once with this HTTP status and EC2 error code
    /// (EC2's XML error format), without forwarding it.
    Error(u16, &'static str),
    /// Accept the request and never answer (until the client gives up).
    Hang,
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct ProxyEntry {
    pub at: Instant,
    /// The EC2 action (`Action=` of the form body).
    pub action: String,
    /// What the proxy did with it.
    pub fault: ApiFault,
}

/// A TCP/HTTP proxy on 127.0.0.1 in front of moto; see [`ApiFault`]. One request
/// per connection (it answers `Connection: close`).
pub struct FaultProxy {
    pub port: u16,
    mode: Arc<Mutex<ApiFault>>,
    log: Arc<Mutex<Vec<ProxyEntry>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listen on a free port of 127.0.0.1, forwarding to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("proxy addr").port();
        let mode = Arc::new(Mutex::new(ApiFault::Pass));
        let log: Arc<Mutex<Vec<ProxyEntry>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (m2, l2, s2) = (mode.clone(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let (m3, l3, s3) = (m2.clone(), l2.clone(), s2.clone());
                        conns.push(std::thread::spawn(move || {
                            if let Err(e) = serve(sock, upstream, &m3, &l3, &s3) {
                                eprintln!("fault proxy: {e}");
                            }
                        }));
                        conns.retain(|c| !c.is_finished());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => {
                        eprintln!("fault proxy: accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FaultProxy {
            port,
            mode,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// From now on, every request gets `fault`.
    pub fn set(&self, fault: ApiFault) {
        *self.mode.lock().unwrap() = fault;
    }

    pub fn mode(&self) -> ApiFault {
        *self.mode.lock().unwrap()
    }

    /// Every request received so far.
    pub fn log(&self) -> Vec<ProxyEntry> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one HTTP request (head and `Content-Length` body); `None` if the
/// client closed first or the proxy stops.
fn read_request(sock: &mut TcpStream, stop: &AtomicBool) -> std::io::Result<Option<Vec<u8>>> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if head.contains("transfer-encoding: chunked") {
                return Err(std::io::Error::other(
                    "chunked request bodies are not supported by the fault proxy",
                ));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.truncate(end + 4 + len);
                return Ok(Some(buf));
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match sock.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A message's head with its `Connection` headers replaced by `Connection: close`.
fn close_head(msg: &[u8]) -> Vec<u8> {
    let end = find(msg, b"\r\n\r\n").unwrap_or(msg.len());
    let head = String::from_utf8_lossy(&msg[..end]);
    let mut out: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n\r\n");
    let mut v = out.into_bytes();
    if end + 4 <= msg.len() {
        v.extend_from_slice(&msg[end + 4..]);
    }
    v
}

/// The EC2 action of a query-protocol request (`Action=X&...` in the body).
fn action_of(req: &[u8]) -> String {
    let body = find(req, b"\r\n\r\n").map_or(&req[..0], |e| &req[e + 4..]);
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?")
        .to_string()
}

/// EC2's error response (`<Response><Errors><Error>...`).
fn ec2_error(status: u16, code: &str) -> Vec<u8> {
    let reason = match status {
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let message = match code {
        "RequestLimitExceeded" => "Request limit exceeded.",
        "ServiceUnavailable" => "The service is unavailable. Please try again shortly.",
        _ => "An internal error has occurred.",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>understudy-fault-proxy</RequestID></Response>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn serve(
    mut sock: TcpStream,
    upstream: u16,
    mode: &Mutex<ApiFault>,
    log: &Mutex<Vec<ProxyEntry>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut sock, stop)? else {
        return Ok(());
    };
    let fault = *mode.lock().unwrap();
    log.lock().unwrap().push(ProxyEntry {
        at: Instant::now(),
        action: action_of(&req),
        fault,
    });
    match fault {
        ApiFault::Error(status, code) => {
            sock.write_all(&ec2_error(status, code))?;
            let _ = sock.shutdown(Shutdown::Both);
            return Ok(());
        }
        ApiFault::Hang => {
            // Never answer: wait until the client gives up (or the proxy stops).
            let mut b = [0u8; 1024];
            while !stop.load(Ordering::Relaxed) {
                match sock.read(&mut b) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            return Ok(());
        }
        ApiFault::Delay(ms) => {
            let until = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        ApiFault::Pass => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    up.write_all(&close_head(&req))?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    // The client may have given up meanwhile: a failed write is its timeout.
    let _ = sock.write_all(&close_head(&resp));
    let _ = sock.shutdown(Shutdown::Both);
    Ok(())
}

/// One server host as the world in moto has it.
#[derive(Debug, Clone)]
pub struct Ec2Host {
    pub name: &'static str,
    pub ns: String,
    /// Root side of its veth (its cable).
    pub veth: String,
    pub addr: Ipv4Addr,
    pub instance_id: String,
    pub eni_id: String,
}

/// moto, the proxy, the world and the fabric; see the module documentation.
/// Field order is drop order: the fabric stops first, moto last.
pub struct Ec2Harness {
    pub fabric: VpcFabric,
    pub proxy: FaultProxy,
    pub hosts: Vec<Ec2Host>,
    pub vpc: String,
    /// The servers' security group (the fence replaces it by its isolating group).
    pub servers_group: String,
    pub client_ip: Ipv4Addr,
    client: Client,
    rt: tokio::runtime::Runtime,
    pub moto: Moto,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An SDK client straight to moto (not through the proxy).
fn direct_client(moto: &Moto) -> Client {
    let cfg = moto_support::config(moto);
    Ec2Cloud::new(cfg).expect("ec2 client").client().clone()
}

impl Ec2Harness {
    /// Start moto and the proxy, create the world for `hosts` (name, namespace,
    /// veth, address; the first one holds `client_ip`) in the /24 `cidr`, and
    /// start the fabric, logging to `log`.
    pub fn start(
        hosts: &[(&'static str, String, String, Ipv4Addr)],
        cidr: &str,
        client_ip: Ipv4Addr,
        log: &Path,
    ) -> Ec2Harness {
        let moto = moto_support::start_moto();
        let proxy = FaultProxy::start(moto.port);
        let client = direct_client(&moto);
        let rt = runtime();
        let (vpc, group, ids) = rt
            .block_on(create_world(&client, cidr, hosts, client_ip))
            .unwrap_or_else(|e| panic!("creating the world in moto: {e}"));
        let hosts: Vec<Ec2Host> = hosts
            .iter()
            .zip(ids)
            .map(|((name, ns, veth, addr), (inst, eni))| Ec2Host {
                name,
                ns: ns.clone(),
                veth: veth.clone(),
                addr: *addr,
                instance_id: inst,
                eni_id: eni,
            })
            .collect();
        let fabric = VpcFabric::start(
            direct_client(&moto),
            vpc.clone(),
            group.clone(),
            hosts.clone(),
            client_ip,
            log.to_path_buf(),
        );
        fabric.wait_polls(2);
        Ec2Harness {
            fabric,
            proxy,
            hosts,
            vpc,
            servers_group: group,
            client_ip,
            client,
            rt,
            moto,
        }
    }

    /// The controllers' `[cloud]` section: EC2 through the proxy.
    pub fn cloud_section(&self) -> String {
        format!(
            "kind = \"ec2\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
            self.proxy.port
        )
    }

    pub fn host(&self, name: &str) -> &Ec2Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the EC2 world"))
    }

    /// As an operator brings a fenced server back: start its instance in moto
    /// if it is stopped, give its interface the servers' security group back,
    /// and wait until the fabric has seen it running (it powers it off no
    /// more); the harness then boots the host. The fence's forced stop and
    /// isolation go on in the background after a verified IP move, until the
    /// fence's deadline (`controller/src/fence.rs`); under a slow EC2 API
    /// one of them can land after this start and take the server off or
    /// isolate it again, so, as an operator would, this checks for 3 s that
    /// it stays on and in the servers' group, and starts it again if not,
    /// for up to 30 s.
    pub fn power_on(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.start_and_unisolate(name);
            // Running and in the servers' group, and still so 3 s later.
            let settled = Instant::now() + Duration::from_secs(3);
            let mut ok = true;
            while ok && Instant::now() < settled {
                self.fabric.wait_polls(1);
                ok = !self.fabric.powered_off(name) && !self.fabric.isolated(name);
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the fabric still has {name} powered off or isolated 30 s after it was powered on"
            );
            eprintln!(
                "{name} is powered off or isolated again (the fence's background stop or isolation landed after the start): powering it on again"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Start `name`'s instance if it is not running, wait until moto says it
    /// runs, and give its interface the servers' security group back.
    fn start_and_unisolate(&self, name: &str) {
        let h = self.host(name).clone();
        let c = &self.client;
        let group = self.servers_group.clone();
        self.rt
            .block_on(async {
                let st = instance_state(c, &h.instance_id).await?;
                if st != "running" {
                    c.start_instances()
                        .instance_ids(&h.instance_id)
                        .send()
                        .await
                        .map_err(|e| format!("StartInstances: {e:?}"))?;
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while instance_state(c, &h.instance_id).await? != "running" {
                    if Instant::now() > deadline {
                        return Err(format!("{} not running in moto after 30 s", h.instance_id));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                c.modify_network_interface_attribute()
                    .network_interface_id(&h.eni_id)
                    .groups(&group)
                    .send()
                    .await
                    .map_err(|e| format!("ModifyNetworkInterfaceAttribute: {e:?}"))?;
                Ok::<_, String>(())
            })
            .unwrap_or_else(|e| panic!("powering {name} on in moto: {e}"));
    }

    /// The instance state of host `name` in moto.
    pub fn state(&self, name: &str) -> String {
        let id = self.host(name).instance_id.clone();
        self.rt
            .block_on(instance_state(&self.client, &id))
            .unwrap_or_else(|e| e)
    }
}

async fn instance_state(c: &Client, id: &str) -> Result<String, String> {
    let out = c
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| format!("DescribeInstances: {e:?}"))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| {
            i.state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
        })
        .unwrap_or_else(|| "unknown".into()))
}

fn sdk_err<E, R>(
    what: &'static str,
) -> impl FnOnce(understudy_cloud_ec2::aws_sdk_ec2::error::SdkError<E, R>) -> String
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    move |e| {
        format!(
            "{what}: {}",
            understudy_cloud_ec2::aws_sdk_ec2::error::DisplayErrorContext(e)
        )
    }
}

/// VPC, subnet, group, an instance per host with its address, the client IP on
/// the first host's ENI. Returns (vpc, group, [(instance, eni)]).
async fn create_world(
    c: &Client,
    cidr: &str,
    hosts: &[(&'static str, String, String, Ipv4Addr)],
    client_ip: Ipv4Addr,
) -> Result<(String, String, Vec<(String, String)>), String> {
    let vpc = c
        .create_vpc()
        .cidr_block(cidr)
        .send()
        .await
        .map_err(sdk_err("CreateVpc"))?
        .vpc()
        .and_then(|v| v.vpc_id())
        .ok_or("CreateVpc: no id")?
        .to_string();
    let subnet = c
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block(cidr)
        .availability_zone(ZONE)
        .send()
        .await
        .map_err(sdk_err("CreateSubnet"))?
        .subnet()
        .and_then(|s| s.subnet_id())
        .ok_or("CreateSubnet: no id")?
        .to_string();
    let group = c
        .create_security_group()
        .group_name("understudy-ns-servers")
        .description("the namespace cluster's servers")
        .vpc_id(&vpc)
        .send()
        .await
        .map_err(sdk_err("CreateSecurityGroup"))?
        .group_id()
        .ok_or("CreateSecurityGroup: no id")?
        .to_string();
    let images = c
        .describe_images()
        .send()
        .await
        .map_err(sdk_err("DescribeImages"))?;
    let image = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .ok_or("moto lists no image")?
        .to_string();
    let mut ids = Vec::new();
    for (_, _, _, addr) in hosts {
        let out = c
            .run_instances()
            .image_id(&image)
            .instance_type(InstanceType::T2Micro)
            .min_count(1)
            .max_count(1)
            .subnet_id(&subnet)
            .security_group_ids(&group)
            .private_ip_address(addr.to_string())
            .send()
            .await
            .map_err(sdk_err("RunInstances"))?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or("RunInstances: no instance")?
            .to_string();
        let enis = c
            .describe_network_interfaces()
            .filters(
                Filter::builder()
                    .name("attachment.instance-id")
                    .values(&id)
                    .build(),
            )
            .send()
            .await
            .map_err(sdk_err("DescribeNetworkInterfaces"))?;
        let eni = enis
            .network_interfaces()
            .iter()
            .find(|n| n.private_ip_address() == Some(addr.to_string().as_str()))
            .ok_or_else(|| {
                format!(
                    "no interface of {id} has the private address {addr} (moto reports {:?})",
                    enis.network_interfaces()
                        .iter()
                        .map(|n| n.private_ip_address())
                        .collect::<Vec<_>>()
                )
            })?
            .network_interface_id()
            .ok_or("no interface id")?
            .to_string();
        ids.push((id, eni));
    }
    c.assign_private_ip_addresses()
        .network_interface_id(&ids[0].1)
        .private_ip_addresses(client_ip.to_string())
        .send()
        .await
        .map_err(sdk_err("AssignPrivateIpAddresses"))?;
    Ok((vpc, group, ids))
}

/// What the fabric saw and did.
#[derive(Debug, Default)]
struct FabricState {
    polls: u64,
    /// Hosts it powered off (their instance stopped or terminated in moto),
    /// until moto reports them running again.
    off: Vec<&'static str>,
    /// Hosts whose interface was not in the servers' group at the last poll.
    isolated: Vec<&'static str>,
    /// The last poll's error, if it failed.
    error: Option<String>,
}

/// See the module documentation.
pub struct VpcFabric {
    state: Arc<Mutex<FabricState>>,
    stop: Arc<AtomicBool>,
    polls: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl VpcFabric {
    fn start(
        client: Client,
        vpc: String,
        servers_group: String,
        hosts: Vec<Ec2Host>,
        client_ip: Ipv4Addr,
        log: PathBuf,
    ) -> VpcFabric {
        let state: Arc<Mutex<FabricState>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicU64::new(0));
        let (st2, s2, p2) = (state.clone(), stop.clone(), polls.clone());
        let thread = std::thread::spawn(move || {
            let rt = runtime();
            let t0 = Instant::now();
            let note = |what: String| {
                let line = format!("{:8.3}s {what}\n", t0.elapsed().as_secs_f64());
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                {
                    let _ = f.write_all(line.as_bytes());
                }
            };
            note(format!(
                "fabric started: vpc {vpc}, servers group {servers_group}, hosts {:?}",
                hosts
                    .iter()
                    .map(|h| (h.name, &h.instance_id, &h.eni_id))
                    .collect::<Vec<_>>()
            ));
            while !s2.load(Ordering::Relaxed) {
                let r = rt.block_on(poll(&client, &vpc, &hosts));
                match r {
                    Ok(view) => {
                        apply(&view, &hosts, &servers_group, client_ip, &st2, &note);
                        st2.lock().unwrap().error = None;
                    }
                    Err(e) => {
                        let mut s = st2.lock().unwrap();
                        if s.error.as_deref() != Some(e.as_str()) {
                            note(format!("poll failed: {e}"));
                        }
                        s.error = Some(e);
                    }
                }
                st2.lock().unwrap().polls += 1;
                p2.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
            note("fabric stopped".into());
        });
        VpcFabric {
            state,
            stop,
            polls,
            thread: Some(thread),
        }
    }

    /// Wait until `n` more polls than now have finished (at most 30 s), and
    /// the last one succeeded.
    pub fn wait_polls(&self, n: u64) {
        let want = self.polls.load(Ordering::SeqCst) + n;
        crate::wait_for(
            &format!("{n} polls of moto by the VPC fabric"),
            Duration::from_secs(30),
            || {
                (self.polls.load(Ordering::SeqCst) >= want
                    && self.state.lock().unwrap().error.is_none())
                .then_some(())
            },
        );
    }

    /// Whether the fabric has `name` powered off (its instance stopped in moto).
    pub fn powered_off(&self, name: &str) -> bool {
        self.state.lock().unwrap().off.contains(&name)
    }

    /// Whether host `name`'s interface was outside the servers' group at the
    /// last poll (its cable is cut).
    pub fn isolated(&self, name: &str) -> bool {
        self.state.lock().unwrap().isolated.contains(&name)
    }
}

impl Drop for VpcFabric {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// moto's view of one host.
#[derive(Debug)]
struct HostView {
    state: String,
    ips: Vec<String>,
    groups: Vec<String>,
}

async fn poll(c: &Client, vpc: &str, hosts: &[Ec2Host]) -> Result<Vec<HostView>, String> {
    let ids: Vec<String> = hosts.iter().map(|h| h.instance_id.clone()).collect();
    let insts = c
        .describe_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .map_err(|e| format!("DescribeInstances: {e:?}"))?;
    let enis = c
        .describe_network_interfaces()
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .send()
        .await
        .map_err(|e| format!("DescribeNetworkInterfaces: {e:?}"))?;
    Ok(hosts
        .iter()
        .map(|h| {
            let state = insts
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(h.instance_id.as_str()))
                .and_then(|i| i.state().and_then(|s| s.name()))
                .map_or("unknown".to_string(), |n| n.as_str().to_string());
            let eni = enis
                .network_interfaces()
                .iter()
                .find(|n| n.network_interface_id() == Some(h.eni_id.as_str()));
            HostView {
                state,
                ips: eni
                    .map(|n| {
                        n.private_ip_addresses()
                            .iter()
                            .filter_map(|a| a.private_ip_address().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                groups: eni
                    .map(|n| {
                        n.groups()
                            .iter()
                            .filter_map(|g| g.group_id().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// Whether namespace `ns` has `ip` configured.
fn holds(ns: &str, ip: Ipv4Addr) -> bool {
    crate::netns::run("ip", &["-n", ns, "-o", "-4", "addr", "show"])
        .map(|o| o.contains(&format!(" {ip}/")))
        .unwrap_or(false)
}

fn drop_ip(ns: &str, ip: Ipv4Addr) -> Result<String, String> {
    crate::netns::run(
        "ip",
        &["-n", ns, "addr", "del", &format!("{ip}/24"), "dev", "eth0"],
    )
}

fn cut(veth: &str) -> Result<String, String> {
    crate::netns::run("ip", &["link", "set", veth, "down"])
}

/// Apply moto's view to the namespaces (see the module documentation).
fn apply(
    view: &[HostView],
    hosts: &[Ec2Host],
    servers_group: &str,
    client_ip: Ipv4Addr,
    state: &Mutex<FabricState>,
    note: &dyn Fn(String),
) {
    let ip = client_ip.to_string();
    for (h, v) in hosts.iter().zip(view) {
        let off = matches!(v.state.as_str(), "stopped" | "terminated");
        let was_off = state.lock().unwrap().off.contains(&h.name);
        if off {
            if !was_off {
                // Powered off: the OS and everything in it gone, cable out.
                crate::netns::kill_netns_pids(&h.ns);
                let c = cut(&h.veth);
                let d = holds(&h.ns, client_ip).then(|| drop_ip(&h.ns, client_ip));
                note(format!(
                    "{}: instance {} is {} in moto: processes killed, cable cut ({c:?}), client IP dropped ({d:?})",
                    h.name, h.instance_id, v.state
                ));
                state.lock().unwrap().off.push(h.name);
            }
            continue;
        }
        if was_off && v.state == "running" {
            note(format!(
                "{}: instance {} running again in moto",
                h.name, h.instance_id
            ));
            state.lock().unwrap().off.retain(|n| *n != h.name);
        }
        let isolated = !v.groups.iter().any(|g| g == servers_group);
        {
            let mut st = state.lock().unwrap();
            st.isolated.retain(|n| *n != h.name);
            if isolated {
                st.isolated.push(h.name);
            }
        }
        if isolated && crate::nscluster::link_up(&h.veth) {
            let c = cut(&h.veth);
            note(format!(
                "{}: interface {} has groups {:?} in moto, not the servers' group: cable cut ({c:?})",
                h.name, h.eni_id, v.groups
            ));
        }
        if !v.ips.contains(&ip) && holds(&h.ns, client_ip) {
            let d = drop_ip(&h.ns, client_ip);
            note(format!(
                "{}: interface {} does not hold {ip} in moto (it has {:?}): address removed ({d:?})",
                h.name, h.eni_id, v.ips
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_rewrites_connection_headers_and_reads_the_action() {
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\ncontent-length: 27\r\n\r\nAction=DescribeInstances&V=1";
        let out = close_head(req);
        let s = String::from_utf8_lossy(&out);
        assert!(!s.contains("keep-alive"), "{s}");
        assert!(s.contains("Connection: close\r\n\r\nAction="), "{s}");
        assert_eq!(action_of(req), "DescribeInstances");
        let e = String::from_utf8(ec2_error(503, "RequestLimitExceeded")).unwrap();
        assert!(e.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{e}");
        assert!(
            e.contains("<Errors><Error><Code>RequestLimitExceeded</Code>"),
            "{e}"
        );
    }
}
