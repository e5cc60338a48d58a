//! EC2 backend of the Understudy cloud interface ([`understudy_cloud::Cloud`]),
//! built on aws-sdk-ec2.
//!
//! - Moving the client IP: `AssignPrivateIpAddresses` (reassignment allowed) on the
//!   target's interface, `UnassignPrivateIpAddresses` on the source's, then a
//!   `DescribeNetworkInterfaces` check that only the target holds it.
//! - Isolation: every interface of the instance gets exactly one security group,
//!   the isolating group: either `isolation_group_id` from the configuration, or a
//!   group `understudy-isolate-<vpc>` this backend creates once per VPC, with no
//!   ingress and every egress rule revoked. A configured group is the operator's:
//!   on first use (or [`Ec2Cloud::check_isolation_group`]) `DescribeSecurityGroups`
//!   must show it without any ingress or egress rule and in the instance's VPC,
//!   else isolation is refused with an [`IsolationGroupError`] saying what to fix.
//!   Isolation is not a fence by itself: EC2 keeps connections it already tracks
//!   when security groups change (the controller's fence needs the client IP
//!   moved or the instance stopped).
//! - Fencing: `StopInstances` with `Force`, without waiting for the stop.
//! - Provisioning (spares, replacement volumes, moving a dead server's volumes):
//!   see [`provision`] for what is called and checked. Spares launch from a
//!   launch template (`launch_template_id`) or an image (`image_id`,
//!   `instance_type`, `subnet_id`); see [`Ec2Config`].
//!
//! Nothing is left for EC2 (or moto, which enforces far less than EC2) to enforce:
//! zones, subnets, primary addresses and unrelated holders of the client IP are
//! checked here before anything changes, and every change is verified afterwards.
//! Every operation is idempotent, and every EC2 call is bounded by
//! `call_timeout_ms`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, IpPermission, NetworkInterface, SecurityGroup};
use aws_sdk_ec2::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use serde::Deserialize;
use understudy_cloud::{
    Cloud, CloudError, CloudServer, Instance, InstanceHealth, InstanceState, LaunchRequest, Tag,
    Volume, VolumeFilter, VolumeRequest,
};

pub mod health;
pub mod provision;

/// The SDK this backend is built on, for callers of [`Ec2Cloud::client`].
pub use aws_sdk_ec2;

/// Provider name in logs and errors.
const PROVIDER: &str = "ec2";

/// Prefix of the isolating security group this backend creates in a VPC.
pub const ISOLATION_GROUP_PREFIX: &str = "understudy-isolate-";

/// Configuration of the EC2 backend (the controller's `[cloud]` table with
/// `kind = "ec2"`). Unknown keys are rejected.
///
/// Fencing needs only `region` (and credentials). Launching spares needs either
/// a launch template or an image, instance type and subnet; volumes are created
/// in the pair's zone with `volume_type`:
///
/// ```toml
/// [cloud]
/// kind = "ec2"
/// region = "eu-west-1"
/// # isolation_group_id = "sg-0123456789abcdef0"
///
/// # Spares from a launch template: the zone is its subnet's (its first
/// # network interface's SubnetId, or subnet_id below), so it must be the
/// # pairs' zone.
/// launch_template_id = "lt-0123456789abcdef0"
/// launch_template_version = "$Default"   # optional: "$Latest" or a number
///
/// # ... or from an image, in a subnet (all three required together):
/// # image_id = "ami-0123456789abcdef0"
/// # instance_type = "m6i.large"
/// # subnet_id = "subnet-0123456789abcdef0"
/// # security_group_ids = ["sg-0123456789abcdef1"]
///
/// volume_type = "gp3"                    # default
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Config {
    /// EC2 endpoint; `None` for the region's public endpoint. moto:
    /// `http://127.0.0.1:PORT`.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Static access key id. If both keys are absent, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) are read from the
    /// environment once, at construction.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Static secret access key (goes with `access_key_id`).
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Security group to isolate servers with. `None`: the backend creates (once,
    /// idempotently) `understudy-isolate-<vpc>` in the instance's VPC, without any
    /// rule, and uses it.
    #[serde(default)]
    pub isolation_group_id: Option<String>,
    /// Upper bound of each EC2 call, in milliseconds (default 2000).
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Launch template spares are launched from (`lt-...`). Excludes `image_id`
    /// and `instance_type`. If the template has network interfaces, leave
    /// `subnet_id` and `security_group_ids` unset (EC2 refuses both together).
    #[serde(default)]
    pub launch_template_id: Option<String>,
    /// Version of `launch_template_id`: `$Default` (when unset), `$Latest` or a
    /// version number.
    #[serde(default)]
    pub launch_template_version: Option<String>,
    /// Image (AMI, `ami-...`) spares are launched from, without a launch
    /// template; needs `instance_type` and `subnet_id`.
    #[serde(default)]
    pub image_id: Option<String>,
    /// Instance type of spares launched from `image_id` (e.g. `m6i.large`).
    #[serde(default)]
    pub instance_type: Option<String>,
    /// Subnet spares are launched in (`subnet-...`); its zone is the launch
    /// zone. Required with `image_id`; with a launch template, overrides the
    /// template's.
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// Security groups of spares (`sg-...`); empty: the template's, or the
    /// subnet's VPC default group.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// EBS volume type of the volumes Understudy creates (default `gp3`).
    #[serde(default = "default_volume_type")]
    pub volume_type: String,
}

fn default_call_timeout_ms() -> u64 {
    2000
}

fn default_volume_type() -> String {
    "gp3".into()
}

/// The EBS volume types `volume_type` may name (io1 and io2 need provisioned
/// IOPS, which Understudy does not set).
pub const VOLUME_TYPES: &[&str] = &["gp3", "gp2", "st1", "sc1", "standard"];

impl Ec2Config {
    /// A configuration for `region` with every other key at its default.
    pub fn new(region: impl Into<String>) -> Self {
        Ec2Config {
            endpoint_url: None,
            region: region.into(),
            access_key_id: None,
            secret_access_key: None,
            isolation_group_id: None,
            call_timeout_ms: default_call_timeout_ms(),
            launch_template_id: None,
            launch_template_version: None,
            image_id: None,
            instance_type: None,
            subnet_id: None,
            security_group_ids: Vec::new(),
            volume_type: default_volume_type(),
        }
    }

    /// Whether spares can be launched: a launch template or an image is set.
    pub fn can_launch(&self) -> bool {
        self.launch_template_id.is_some() || self.image_id.is_some()
    }
}

/// The EC2 backend. See the module documentation.
pub struct Ec2Cloud {
    client: Client,
    timeout: Duration,
    isolation_group_id: Option<String>,
    /// VPC id -> id of the isolating group this backend found or created there.
    /// The async mutex serializes creation, so one process creates a group once.
    groups: tokio::sync::Mutex<BTreeMap<String, String>>,
    /// The configured isolating group, once checked without rules: its VPC.
    checked_group: tokio::sync::Mutex<Option<CheckedGroup>>,
    /// Interfaces of servers this backend was told about or has seen; `ip_holders`
    /// checks them directly besides asking EC2 to search (moto's address filter
    /// only matches primary addresses).
    known_interfaces: Mutex<BTreeSet<String>>,
    /// What spares launch from; `None`: launching is refused.
    launch: Option<provision::LaunchSource>,
    /// `subnet_id` of the configuration.
    subnet_id: Option<String>,
    /// `security_group_ids` of the configuration.
    security_group_ids: Vec<String>,
    /// `volume_type` of the configuration.
    volume_type: String,
    /// subnet id -> its zone (a subnet never changes zone).
    subnet_zones: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Ec2Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Cloud")
            .field("timeout", &self.timeout)
            .field("isolation_group_id", &self.isolation_group_id)
            .finish_non_exhaustive()
    }
}

fn config_error(reason: String) -> CloudError {
    CloudError::Refused {
        provider: PROVIDER,
        op: "configure",
        reason,
    }
}

/// A configured isolating group (`isolation_group_id`) that cannot isolate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsolationGroupError {
    #[error("isolation_group_id {group_id} does not exist in this account and region ({code}); create a security group without rules in the servers' VPC and set its id, or remove isolation_group_id to let Understudy create one")]
    NotFound { group_id: String, code: String },
    #[error("isolation_group_id {group_id} ({name}) has rules (ingress: {ingress:?}; egress: {egress:?}), so it does not isolate; remove every rule from it (a new VPC security group comes with an allow-all egress rule: revoke that too), or remove isolation_group_id to let Understudy create and manage {ISOLATION_GROUP_PREFIX}<vpc>")]
    HasRules {
        group_id: String,
        name: String,
        /// Each ingress rule, described (`tcp 2049 from 10.0.0.0/16`).
        ingress: Vec<String>,
        /// Each egress rule, described (`all traffic to 0.0.0.0/0`).
        egress: Vec<String>,
    },
    #[error("isolation_group_id {group_id} is in VPC {group_vpc} but server {server}'s instance is in VPC {server_vpc}; a security group only applies in its own VPC: use a group of {server_vpc} without rules, or remove isolation_group_id")]
    WrongVpc {
        group_id: String,
        group_vpc: String,
        server: String,
        server_vpc: String,
    },
    #[error("checking isolation_group_id: {0}")]
    Cloud(CloudError),
}

impl IsolationGroupError {
    /// As the cloud interface's error, for operation `op`: a configuration the
    /// operator must fix is a refusal; a failed EC2 call stays what it was.
    pub fn into_cloud_error(self, op: &'static str) -> CloudError {
        match self {
            IsolationGroupError::Cloud(e) => e,
            e => CloudError::Refused {
                provider: PROVIDER,
                op,
                reason: e.to_string(),
            },
        }
    }
}

/// The configured isolating group, checked.
#[derive(Debug, Clone)]
struct CheckedGroup {
    vpc_id: Option<String>,
}

/// One security-group rule in words: `tcp 2049 from 10.0.0.0/16, sg-1`.
fn describe_rule(p: &IpPermission, egress: bool) -> String {
    let proto = match p.ip_protocol() {
        Some("-1") | None => "all traffic".to_string(),
        Some(x) => {
            let name = match x {
                "6" => "tcp",
                "17" => "udp",
                "1" => "icmp",
                other => other,
            };
            match (p.from_port(), p.to_port()) {
                (Some(a), Some(b)) if a == b => format!("{name} {a}"),
                (Some(a), Some(b)) if a >= 0 => format!("{name} {a}-{b}"),
                _ => name.to_string(),
            }
        }
    };
    let peers: Vec<String> = p
        .ip_ranges()
        .iter()
        .filter_map(|r| r.cidr_ip().map(str::to_string))
        .chain(
            p.ipv6_ranges()
                .iter()
                .filter_map(|r| r.cidr_ipv6().map(str::to_string)),
        )
        .chain(
            p.user_id_group_pairs()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string)),
        )
        .chain(
            p.prefix_list_ids()
                .iter()
                .filter_map(|l| l.prefix_list_id().map(str::to_string)),
        )
        .collect();
    let dir = if egress { "to" } else { "from" };
    if peers.is_empty() {
        proto
    } else {
        format!("{proto} {dir} {}", peers.join(", "))
    }
}

/// Check a security group as EC2 describes it: no rule in either direction.
fn check_no_rules(g: &SecurityGroup, group_id: &str) -> Result<(), IsolationGroupError> {
    let ingress: Vec<String> = g
        .ip_permissions()
        .iter()
        .map(|p| describe_rule(p, false))
        .collect();
    let egress: Vec<String> = g
        .ip_permissions_egress()
        .iter()
        .map(|p| describe_rule(p, true))
        .collect();
    if ingress.is_empty() && egress.is_empty() {
        return Ok(());
    }
    Err(IsolationGroupError::HasRules {
        group_id: group_id.to_string(),
        name: g.group_name().unwrap_or("unnamed").to_string(),
        ingress,
        egress,
    })
}

impl Ec2Cloud {
    /// Build the backend from its configuration. Makes no call to EC2.
    pub fn new(cfg: Ec2Config) -> Result<Self, CloudError> {
        if cfg.region.trim().is_empty() {
            return Err(config_error(
                "region is empty; set the EC2 region (e.g. \"us-east-1\")".into(),
            ));
        }
        if cfg.call_timeout_ms == 0 {
            return Err(config_error(
                "call_timeout_ms is 0; set it to a few seconds (default 2000)".into(),
            ));
        }
        if let Some(url) = &cfg.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(config_error(format!(
                    "endpoint_url {url:?} is not an http:// or https:// URL; fix it or remove it to use the region's endpoint"
                )));
            }
        }
        if let Some(g) = &cfg.isolation_group_id {
            if !g.starts_with("sg-") {
                return Err(config_error(format!(
                    "isolation_group_id {g:?} is not a security group id (sg-...); fix it or remove it to let Understudy create one"
                )));
            }
        }
        let launch = provision::LaunchSource::from_config(&cfg).map_err(config_error)?;
        let credentials = match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(id), Some(secret)) => {
                Credentials::new(id, secret, None, None, "understudy-config")
            }
            (None, None) => {
                let id = std::env::var("AWS_ACCESS_KEY_ID").ok();
                let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
                match (id, secret) {
                    (Some(id), Some(secret)) => Credentials::new(
                        id,
                        secret,
                        std::env::var("AWS_SESSION_TOKEN").ok(),
                        None,
                        "understudy-env",
                    ),
                    _ => {
                        return Err(config_error(
                            "no AWS credentials: set access_key_id and secret_access_key in the ec2 configuration, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the controller's environment".into(),
                        ))
                    }
                }
            }
            _ => {
                return Err(config_error(
                    "only one of access_key_id and secret_access_key is set; set both or neither"
                        .into(),
                ))
            }
        };
        let timeout = Duration::from_millis(cfg.call_timeout_ms);
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::rustls(CryptoMode::Ring))
            .build_https();
        let mut b = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(credentials)
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            );
        if let Some(url) = &cfg.endpoint_url {
            b = b.endpoint_url(url);
        }
        Ok(Ec2Cloud {
            client: Client::from_conf(b.build()),
            timeout,
            isolation_group_id: cfg.isolation_group_id,
            groups: tokio::sync::Mutex::new(BTreeMap::new()),
            checked_group: tokio::sync::Mutex::new(None),
            known_interfaces: Mutex::new(BTreeSet::new()),
            launch,
            subnet_id: cfg.subnet_id,
            security_group_ids: cfg.security_group_ids,
            volume_type: cfg.volume_type,
            subnet_zones: Mutex::new(BTreeMap::new()),
        })
    }

    /// The SDK client this backend uses (same endpoint, region and credentials).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Tell the backend about the inventory's servers, so that [`Cloud::ip_holders`]
    /// checks their interfaces directly from the start (servers passed to any
    /// operation are remembered anyway).
    pub fn track_servers<'a>(&self, servers: impl IntoIterator<Item = &'a CloudServer>) {
        let mut k = self.known_interfaces.lock().unwrap();
        for s in servers {
            k.insert(s.interface_id.clone());
        }
    }

    fn remember(&self, s: &CloudServer) {
        self.track_servers([s]);
    }

    /// Run one EC2 call under the call timeout; the SDK's own error is returned
    /// as is, for callers that tolerate some errors.
    async fn timed<T, E>(
        &self,
        op: &'static str,
        call: &'static str,
        fut: impl Future<Output = Result<T, SdkError<E>>>,
    ) -> Result<Result<T, SdkError<E>>, CloudError> {
        let start = Instant::now();
        let r = tokio::time::timeout(self.timeout, fut).await;
        let took = start.elapsed();
        match r {
            Ok(r) => {
                tracing::debug!(op, call, ok = r.is_ok(), ?took, "ec2 call");
                Ok(r)
            }
            Err(_) => {
                tracing::warn!(op, call, ?took, "ec2 call timed out");
                Err(CloudError::Transient {
                    provider: PROVIDER,
                    op,
                    reason: format!(
                        "EC2 {call} did not answer within {} ms (call_timeout_ms); check the endpoint and the network path to it",
                        self.timeout.as_millis()
                    ),
                })
            }
        }
    }

    /// Run one EC2 call under the call timeout and map its errors.
    async fn call<T, E>(
        &self,
        op: &'static str,
        call: &'static str,
        id: &str,
        fut: impl Future<Output = Result<T, SdkError<E>>>,
    ) -> Result<T, CloudError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.timed(op, call, fut)
            .await?
            .map_err(|e| map_sdk_error(op, call, id, &e))
    }

    /// Describe `server`'s instance and interfaces, and check them against the
    /// inventory (zone; interface attached unless the instance is gone).
    async fn describe_server(
        &self,
        op: &'static str,
        server: &CloudServer,
    ) -> Result<InstanceView, CloudError> {
        self.remember(server);
        let id = &server.instance_id;
        let out = self
            .call(
                op,
                "DescribeInstances",
                id,
                self.client.describe_instances().instance_ids(id).send(),
            )
            .await?;
        let inst = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id.as_str()))
            .ok_or_else(|| CloudError::NotFound {
                provider: PROVIDER,
                what: "instance",
                id: id.clone(),
            })?;
        let state = inst
            .state()
            .and_then(|s| s.name())
            .map(|n| state_from_word(n.as_str()))
            .unwrap_or_else(|| InstanceState::Other("unreported".into()));
        let zone = inst
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string();
        let vpc_id = inst.vpc_id().map(str::to_string);
        let mut enis = self
            .describe_interfaces(op, id, "attachment.instance-id", vec![id.clone()])
            .await?;
        // Interfaces DescribeInstances reports but the search did not find.
        for ni in inst.network_interfaces() {
            let Some(eid) = ni.network_interface_id() else {
                continue;
            };
            if enis.iter().any(|e| e.id == eid) {
                continue;
            }
            enis.push(EniView {
                id: eid.to_string(),
                subnet_id: ni.subnet_id().map(str::to_string),
                groups: ni
                    .groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_string))
                    .collect(),
                primary_ip: ni.private_ip_address().map(str::to_string),
                ips: ni
                    .private_ip_addresses()
                    .iter()
                    .filter_map(|a| a.private_ip_address().map(str::to_string))
                    .chain(ni.private_ip_address().map(str::to_string))
                    .collect(),
            });
        }
        let view = InstanceView {
            state,
            zone,
            vpc_id,
            enis,
        };
        if view.zone != server.zone {
            return Err(CloudError::Refused {
                provider: PROVIDER,
                op,
                reason: format!(
                    "the inventory puts server {} (instance {}) in zone {:?} but EC2 reports {:?}; fix the inventory's zone (or the instance id) before failing over",
                    server.server_id, server.instance_id, server.zone, view.zone
                ),
            });
        }
        if !view.gone() && view.eni(&server.interface_id).is_none() {
            return Err(CloudError::Refused {
                provider: PROVIDER,
                op,
                reason: format!(
                    "interface {} of server {} is not attached to instance {} (EC2 reports {}); fix the inventory's interface id",
                    server.interface_id,
                    server.server_id,
                    server.instance_id,
                    view.eni_ids()
                ),
            });
        }
        Ok(view)
    }

    /// `DescribeNetworkInterfaces` with one filter, all pages.
    async fn describe_interfaces(
        &self,
        op: &'static str,
        id: &str,
        filter: &str,
        values: Vec<String>,
    ) -> Result<Vec<EniView>, CloudError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(
                    op,
                    "DescribeNetworkInterfaces",
                    id,
                    self.client
                        .describe_network_interfaces()
                        .filters(
                            Filter::builder()
                                .name(filter)
                                .set_values(Some(values.clone()))
                                .build(),
                        )
                        .set_next_token(token.take())
                        .send(),
                )
                .await?;
            out.extend(
                page.network_interfaces()
                    .iter()
                    .filter_map(EniView::from_sdk),
            );
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// Every interface holding `ip`: EC2's address search, plus a direct look at
    /// `extra` and the interfaces this backend knows, matched here.
    async fn holders(
        &self,
        op: &'static str,
        ip: &str,
        extra: &[&str],
    ) -> Result<Vec<EniView>, CloudError> {
        let mut known: Vec<String> = self
            .known_interfaces
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        known.extend(extra.iter().map(|s| s.to_string()));
        known.sort();
        known.dedup();
        let search =
            self.describe_interfaces(op, ip, "addresses.private-ip-address", vec![ip.into()]);
        let direct = async {
            if known.is_empty() {
                Ok(Vec::new())
            } else {
                self.describe_interfaces(op, ip, "network-interface-id", known.clone())
                    .await
            }
        };
        let (a, b) = tokio::try_join!(search, direct)?;
        let mut out: Vec<EniView> = Vec::new();
        for e in a.into_iter().chain(b) {
            if e.ips.iter().any(|x| x == ip) && !out.iter().any(|o| o.id == e.id) {
                out.push(e);
            }
        }
        out.sort_by(|x, y| x.id.cmp(&y.id));
        Ok(out)
    }

    /// Check the configured isolating group (`isolation_group_id`) with
    /// `DescribeSecurityGroups`: it must exist and have no ingress and no egress
    /// rule. Done on first use by isolation; call it at start to learn of a
    /// misconfiguration before a failover needs the group. A passed check is
    /// remembered; a failed one is repeated next time (after the operator's fix).
    /// Without a configured group there is nothing to check: the group Understudy
    /// creates is emptied by Understudy.
    pub async fn check_isolation_group(&self) -> Result<(), IsolationGroupError> {
        self.checked_isolation_group("check_isolation_group")
            .await
            .map(|_| ())
    }

    /// The configured group's VPC after a (remembered) check; `None` if no group
    /// is configured.
    async fn checked_isolation_group(
        &self,
        op: &'static str,
    ) -> Result<Option<(String, Option<String>)>, IsolationGroupError> {
        let Some(gid) = &self.isolation_group_id else {
            return Ok(None);
        };
        let mut checked = self.checked_group.lock().await;
        if let Some(c) = &*checked {
            return Ok(Some((gid.clone(), c.vpc_id.clone())));
        }
        let r = self
            .timed(
                op,
                "DescribeSecurityGroups",
                self.client.describe_security_groups().group_ids(gid).send(),
            )
            .await
            .map_err(IsolationGroupError::Cloud)?;
        let out = match r {
            Ok(out) => out,
            Err(e) => {
                let code = e.code().unwrap_or("").to_string();
                if code.starts_with("InvalidGroup") || code.starts_with("InvalidSecurityGroup") {
                    return Err(IsolationGroupError::NotFound {
                        group_id: gid.clone(),
                        code,
                    });
                }
                return Err(IsolationGroupError::Cloud(map_sdk_error(
                    op,
                    "DescribeSecurityGroups",
                    gid,
                    &e,
                )));
            }
        };
        let Some(g) = out
            .security_groups()
            .iter()
            .find(|g| g.group_id() == Some(gid.as_str()))
        else {
            return Err(IsolationGroupError::NotFound {
                group_id: gid.clone(),
                code: "not listed by DescribeSecurityGroups".into(),
            });
        };
        if let Err(e) = check_no_rules(g, gid) {
            tracing::error!(error = %e, "configured isolating group cannot isolate");
            return Err(e);
        }
        let vpc_id = g.vpc_id().map(str::to_string);
        tracing::info!(group = %gid, vpc = ?vpc_id, "configured isolating group checked: no rules");
        *checked = Some(CheckedGroup {
            vpc_id: vpc_id.clone(),
        });
        Ok(Some((gid.clone(), vpc_id)))
    }

    /// The isolating group for `vpc`: the configured one, or `understudy-isolate-<vpc>`
    /// (created without rules if `create` and missing; `None` if not `create` and
    /// missing).
    async fn isolation_group(
        &self,
        op: &'static str,
        server: &CloudServer,
        vpc: Option<&str>,
        create: bool,
    ) -> Result<Option<String>, CloudError> {
        if let Some((gid, group_vpc)) = self
            .checked_isolation_group(op)
            .await
            .map_err(|e| e.into_cloud_error(op))?
        {
            if let (Some(gv), Some(sv)) = (&group_vpc, vpc) {
                if gv != sv {
                    return Err(IsolationGroupError::WrongVpc {
                        group_id: gid,
                        group_vpc: gv.clone(),
                        server: server.server_id.clone(),
                        server_vpc: sv.to_string(),
                    }
                    .into_cloud_error(op));
                }
            }
            return Ok(Some(gid));
        }
        let Some(vpc) = vpc else {
            return Err(CloudError::Refused {
                provider: PROVIDER,
                op,
                reason: "EC2 reports no VPC for the instance, so Understudy cannot create an isolating group; set isolation_group_id in the ec2 configuration".into(),
            });
        };
        let mut groups = self.groups.lock().await;
        if let Some(g) = groups.get(vpc) {
            return Ok(Some(g.clone()));
        }
        let name = format!("{ISOLATION_GROUP_PREFIX}{vpc}");
        let gid = match self.find_group(op, vpc, &name).await? {
            Some(g) => g,
            None if !create => return Ok(None),
            None => {
                let r = self
                    .timed(
                        op,
                        "CreateSecurityGroup",
                        self.client
                            .create_security_group()
                            .group_name(&name)
                            .vpc_id(vpc)
                            .description(
                                "Understudy isolation: no ingress, no egress. Do not add rules.",
                            )
                            .send(),
                    )
                    .await?;
                match r {
                    Ok(out) => match out.group_id() {
                        Some(g) => g.to_string(),
                        None => {
                            return Err(CloudError::Transient {
                                provider: PROVIDER,
                                op,
                                reason: format!(
                                    "CreateSecurityGroup for {name} returned no group id"
                                ),
                            })
                        }
                    },
                    // Created meanwhile by another controller: use that one.
                    Err(e) if e.code() == Some("InvalidGroup.Duplicate") => {
                        match self.find_group(op, vpc, &name).await? {
                            Some(g) => g,
                            None => {
                                return Err(CloudError::Transient {
                                    provider: PROVIDER,
                                    op,
                                    reason: format!(
                                        "EC2 says {name} exists in {vpc} but does not list it"
                                    ),
                                })
                            }
                        }
                    }
                    Err(e) => return Err(map_sdk_error(op, "CreateSecurityGroup", &name, &e)),
                }
            }
        };
        tracing::info!(group = %gid, %vpc, "using isolating security group");
        self.empty_group(op, &gid).await?;
        groups.insert(vpc.to_string(), gid.clone());
        Ok(Some(gid))
    }

    async fn find_group(
        &self,
        op: &'static str,
        vpc: &str,
        name: &str,
    ) -> Result<Option<String>, CloudError> {
        let out = self
            .call(
                op,
                "DescribeSecurityGroups",
                name,
                self.client
                    .describe_security_groups()
                    .filters(Filter::builder().name("group-name").values(name).build())
                    .filters(Filter::builder().name("vpc-id").values(vpc).build())
                    .send(),
            )
            .await?;
        Ok(out
            .security_groups()
            .iter()
            .find(|g| g.group_name() == Some(name) && g.vpc_id() == Some(vpc))
            .and_then(|g| g.group_id().map(str::to_string)))
    }

    /// Revoke every rule of the (Understudy-created) isolating group `gid`, and
    /// check that none is left.
    async fn empty_group(&self, op: &'static str, gid: &str) -> Result<(), CloudError> {
        for attempt in 0..2 {
            let out = self
                .call(
                    op,
                    "DescribeSecurityGroups",
                    gid,
                    self.client.describe_security_groups().group_ids(gid).send(),
                )
                .await?;
            let Some(g) = out.security_groups().first() else {
                return Err(CloudError::NotFound {
                    provider: PROVIDER,
                    what: "security group",
                    id: gid.to_string(),
                });
            };
            let ingress: Vec<IpPermission> = g.ip_permissions().to_vec();
            let egress: Vec<IpPermission> = g.ip_permissions_egress().to_vec();
            if ingress.is_empty() && egress.is_empty() {
                return Ok(());
            }
            if attempt == 1 {
                break;
            }
            if !egress.is_empty() {
                tracing::info!(
                    group = gid,
                    rules = egress.len(),
                    "revoking egress rules of the isolating group"
                );
                self.call(
                    op,
                    "RevokeSecurityGroupEgress",
                    gid,
                    self.client
                        .revoke_security_group_egress()
                        .group_id(gid)
                        .set_ip_permissions(Some(egress))
                        .send(),
                )
                .await?;
            }
            if !ingress.is_empty() {
                tracing::info!(
                    group = gid,
                    rules = ingress.len(),
                    "revoking ingress rules of the isolating group"
                );
                self.call(
                    op,
                    "RevokeSecurityGroupIngress",
                    gid,
                    self.client
                        .revoke_security_group_ingress()
                        .group_id(gid)
                        .set_ip_permissions(Some(ingress))
                        .send(),
                )
                .await?;
            }
        }
        Err(CloudError::Unverified {
            provider: PROVIDER,
            op,
            reason: format!(
                "isolating security group {gid} still has rules after revoking them; remove its rules by hand, or set isolation_group_id to a group without rules"
            ),
        })
    }
}

/// What the backend needs to know about an instance.
#[derive(Debug)]
struct InstanceView {
    state: InstanceState,
    zone: String,
    vpc_id: Option<String>,
    enis: Vec<EniView>,
}

impl InstanceView {
    fn eni(&self, id: &str) -> Option<&EniView> {
        self.enis.iter().find(|e| e.id == id)
    }

    fn eni_ids(&self) -> String {
        if self.enis.is_empty() {
            return "no interface".into();
        }
        self.enis
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Terminated or terminating: its interfaces may be gone already.
    fn gone(&self) -> bool {
        matches!(
            self.state,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

/// What the backend needs to know about a network interface.
#[derive(Debug, Clone)]
struct EniView {
    id: String,
    subnet_id: Option<String>,
    groups: Vec<String>,
    primary_ip: Option<String>,
    /// Every private address, primary included.
    ips: Vec<String>,
}

impl EniView {
    fn from_sdk(ni: &NetworkInterface) -> Option<EniView> {
        Some(EniView {
            id: ni.network_interface_id()?.to_string(),
            subnet_id: ni.subnet_id().map(str::to_string),
            groups: ni
                .groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
            primary_ip: ni.private_ip_address().map(str::to_string),
            ips: ni
                .private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address().map(str::to_string))
                .chain(ni.private_ip_address().map(str::to_string))
                .collect(),
        })
    }

    fn holds(&self, ip: &str) -> bool {
        self.ips.iter().any(|x| x == ip)
    }

    fn isolated_by(&self, group: &str) -> bool {
        self.groups.len() == 1 && self.groups[0] == group
    }
}

/// EC2's instance state word -> [`InstanceState`].
pub fn state_from_word(word: &str) -> InstanceState {
    match word {
        "pending" => InstanceState::Pending,
        "running" => InstanceState::Running,
        "stopping" => InstanceState::Stopping,
        "stopped" => InstanceState::Stopped,
        "shutting-down" => InstanceState::ShuttingDown,
        "terminated" => InstanceState::Terminated,
        other => InstanceState::Other(other.to_string()),
    }
}

/// Error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "InsufficientInstanceCapacity",
    "InsufficientVolumeCapacity",
];

/// Which kind of resource a not-found (or malformed-id) error code is about.
fn not_found_what(code: &str) -> Option<&'static str> {
    let (prefix, suffix) = code.split_once('.')?;
    if !matches!(suffix, "NotFound" | "Malformed") {
        return None;
    }
    Some(match prefix {
        "InvalidInstanceID" => "instance",
        "InvalidNetworkInterfaceID" => "interface",
        "InvalidGroup" | "InvalidSecurityGroupID" => "security group",
        "InvalidVpcID" => "VPC",
        "InvalidSubnetID" => "subnet",
        "InvalidVolume" | "InvalidVolumeID" => "volume",
        "InvalidLaunchTemplateId" | "InvalidLaunchTemplateName" => "launch template",
        "InvalidAMIID" => "image",
        "InvalidAttachment" => "attachment",
        _ => "resource",
    })
}

/// Map an SDK error of EC2 call `call` (during operation `op`, about `id`).
fn map_sdk_error<E>(op: &'static str, call: &str, id: &str, e: &SdkError<E>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let message = se.err().message().unwrap_or("no message");
            if let Some(what) = not_found_what(code) {
                return CloudError::NotFound {
                    provider: PROVIDER,
                    what,
                    id: format!("{id} ({call}: {code}: {message})"),
                };
            }
            if status >= 500 || TRANSIENT_CODES.contains(&code) {
                return CloudError::Transient {
                    provider: PROVIDER,
                    op,
                    reason: format!("{call}: {code} (HTTP {status}): {message}"),
                };
            }
            let hint = match code {
                "AuthFailure" | "UnauthorizedOperation" | "Blocked" | "OptInRequired"
                | "InvalidClientTokenId" | "SignatureDoesNotMatch" => {
                    "check the controller's AWS credentials and that its IAM policy allows this call"
                }
                "InstanceLimitExceeded" | "VcpuLimitExceeded" | "VolumeLimitExceeded"
                | "MaxIOPSLimitExceeded" | "MaxSpotInstanceCountExceeded" => {
                    "raise the account's EC2 quota (Service Quotas) or free capacity"
                }
                "IdempotentParameterMismatch" => {
                    "the client token was used before with other parameters; a new request needs a new token"
                }
                _ => "check the inventory and the AWS account against this message",
            };
            CloudError::Refused {
                provider: PROVIDER,
                op,
                reason: format!("{call} on {id}: {code}: {message}; {hint}"),
            }
        }
        SdkError::ConstructionFailure(_) => CloudError::Refused {
            provider: PROVIDER,
            op,
            reason: format!(
                "{call} could not be built: {}; check the ec2 configuration (region, endpoint_url, credentials)",
                DisplayErrorContext(e)
            ),
        },
        _ => CloudError::Transient {
            provider: PROVIDER,
            op,
            reason: format!(
                "{call} on {id}: {}; check the endpoint and the network path to it",
                DisplayErrorContext(e)
            ),
        },
    }
}

/// Whether an `UnassignPrivateIpAddresses` error only says the address is not
/// (any more) on the interface.
fn is_not_assigned<E: ProvideErrorMetadata>(e: &SdkError<E>, ip: &str) -> bool {
    let Some(se) = e.as_service_error() else {
        return false;
    };
    let msg = se.message().unwrap_or("").to_ascii_lowercase();
    matches!(
        se.code(),
        Some("InvalidParameterValue" | "InvalidIPAddress.NotFound" | "InvalidParameter")
    ) && (msg.contains(ip) || msg.contains("not assigned"))
}

#[async_trait::async_trait]
impl Cloud for Ec2Cloud {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn move_client_ip(
        &self,
        client_ip: &str,
        from: &CloudServer,
        to: &CloudServer,
    ) -> Result<(), CloudError> {
        const OP: &str = "move_client_ip";
        let refuse = |reason: String| CloudError::Refused {
            provider: PROVIDER,
            op: OP,
            reason,
        };
        if from.zone != to.zone {
            return Err(refuse(format!(
                "{} is in zone {} and {} in zone {}: a private IP cannot move across zones; fail over to a server in {}",
                from.server_id, from.zone, to.server_id, to.zone, from.zone
            )));
        }
        let (fv, tv) =
            tokio::try_join!(self.describe_server(OP, from), self.describe_server(OP, to))?;
        let to_eni = tv.eni(&to.interface_id).cloned().ok_or_else(|| {
            refuse(format!(
                "instance {} of {} is {} and has no interface; start a replacement",
                to.instance_id, to.server_id, tv.state
            ))
        })?;
        if let Some(fe) = fv.eni(&from.interface_id) {
            if fe.subnet_id != to_eni.subnet_id {
                return Err(refuse(format!(
                    "interface {} ({}) is in subnet {} and {} ({}) in subnet {}: a secondary private IP only moves within a subnet; fix the inventory or the subnets",
                    from.interface_id,
                    from.server_id,
                    fe.subnet_id.as_deref().unwrap_or("?"),
                    to.interface_id,
                    to.server_id,
                    to_eni.subnet_id.as_deref().unwrap_or("?"),
                )));
            }
        }
        let holders = self
            .holders(OP, client_ip, &[&from.interface_id, &to.interface_id])
            .await?;
        for h in &holders {
            if h.id != from.interface_id && h.id != to.interface_id {
                return Err(refuse(format!(
                    "{client_ip} is held by interface {}, which is neither {} ({}) nor {} ({}); find out why and unassign it by hand",
                    h.id, from.interface_id, from.server_id, to.interface_id, to.server_id
                )));
            }
            if h.primary_ip.as_deref() == Some(client_ip) {
                return Err(refuse(format!(
                    "{client_ip} is the primary address of interface {}; the client IP must be a secondary private address, fix the setup",
                    h.id
                )));
            }
        }
        let to_holds = holders.iter().any(|h| h.id == to.interface_id);
        let from_holds = holders.iter().any(|h| h.id == from.interface_id);
        if !to_holds {
            tracing::info!(ip = client_ip, to = %to.interface_id, "assigning the client IP");
            self.call(
                OP,
                "AssignPrivateIpAddresses",
                &to.interface_id,
                self.client
                    .assign_private_ip_addresses()
                    .network_interface_id(&to.interface_id)
                    .private_ip_addresses(client_ip)
                    .allow_reassignment(true)
                    .send(),
            )
            .await?;
        }
        if from_holds && from.interface_id != to.interface_id {
            tracing::info!(ip = client_ip, from = %from.interface_id, "unassigning the client IP");
            let r = self
                .timed(
                    OP,
                    "UnassignPrivateIpAddresses",
                    self.client
                        .unassign_private_ip_addresses()
                        .network_interface_id(&from.interface_id)
                        .private_ip_addresses(client_ip)
                        .send(),
                )
                .await?;
            match r {
                Ok(_) => {}
                Err(e) if is_not_assigned(&e, client_ip) => {}
                Err(e) => {
                    return Err(map_sdk_error(
                        OP,
                        "UnassignPrivateIpAddresses",
                        &from.interface_id,
                        &e,
                    ))
                }
            }
        }
        // Verify: only `to` holds it now.
        let now = self
            .describe_interfaces(
                OP,
                client_ip,
                "network-interface-id",
                vec![from.interface_id.clone(), to.interface_id.clone()],
            )
            .await?;
        let holds = |id: &str| now.iter().any(|e| e.id == id && e.holds(client_ip));
        if from.interface_id != to.interface_id && holds(&from.interface_id) {
            return Err(CloudError::Unverified {
                provider: PROVIDER,
                op: OP,
                reason: format!(
                    "{client_ip} is still on interface {} of {}; unassign it by hand before clients are served by {}",
                    from.interface_id, from.server_id, to.server_id
                ),
            });
        }
        if !holds(&to.interface_id) {
            return Err(CloudError::Unverified {
                provider: PROVIDER,
                op: OP,
                reason: format!(
                    "{client_ip} is not on interface {} of {}; the step will be retried, or assign it by hand",
                    to.interface_id, to.server_id
                ),
            });
        }
        Ok(())
    }

    async fn ip_holders(&self, client_ip: &str) -> Result<Vec<String>, CloudError> {
        Ok(self
            .holders("ip_holders", client_ip, &[])
            .await?
            .into_iter()
            .map(|e| e.id)
            .collect())
    }

    async fn isolate(&self, server: &CloudServer) -> Result<(), CloudError> {
        const OP: &str = "isolate";
        let view = self.describe_server(OP, server).await?;
        if view.gone() {
            return Ok(());
        }
        let Some(group) = self
            .isolation_group(OP, server, view.vpc_id.as_deref(), true)
            .await?
        else {
            return Err(CloudError::Transient {
                provider: PROVIDER,
                op: OP,
                reason: "no isolating group could be found or created".into(),
            });
        };
        let mut changed = Vec::new();
        for eni in view.enis.iter().filter(|e| !e.isolated_by(&group)) {
            tracing::info!(server = %server.server_id, interface = %eni.id, %group, "isolating interface");
            self.call(
                OP,
                "ModifyNetworkInterfaceAttribute",
                &eni.id,
                self.client
                    .modify_network_interface_attribute()
                    .network_interface_id(&eni.id)
                    .groups(&group)
                    .send(),
            )
            .await?;
            changed.push(eni.id.clone());
        }
        if changed.is_empty() {
            return Ok(());
        }
        let mut now = self
            .describe_interfaces(
                OP,
                &server.instance_id,
                "network-interface-id",
                changed.clone(),
            )
            .await?;
        if view.enis.len() == 1 && now.iter().any(|e| !e.isolated_by(&group)) {
            // Some implementations (moto) also report the instance's own group
            // list on its interface; on a single-interface instance, replacing
            // that list is the same change, so make it too.
            tracing::info!(server = %server.server_id, %group, "isolating instance groups");
            self.call(
                OP,
                "ModifyInstanceAttribute",
                &server.instance_id,
                self.client
                    .modify_instance_attribute()
                    .instance_id(&server.instance_id)
                    .groups(&group)
                    .send(),
            )
            .await?;
            now = self
                .describe_interfaces(OP, &server.instance_id, "network-interface-id", changed)
                .await?;
        }
        if let Some(e) = now.iter().find(|e| !e.isolated_by(&group)) {
            return Err(CloudError::Unverified {
                provider: PROVIDER,
                op: OP,
                reason: format!(
                    "interface {} of {} has groups {:?}, not only {group}; the step will be retried, or set its groups by hand",
                    e.id, server.server_id, e.groups
                ),
            });
        }
        Ok(())
    }

    async fn is_isolated(&self, server: &CloudServer) -> Result<bool, CloudError> {
        const OP: &str = "is_isolated";
        let view = self.describe_server(OP, server).await?;
        if view.state == InstanceState::Terminated {
            return Ok(true);
        }
        let Some(group) = self
            .isolation_group(OP, server, view.vpc_id.as_deref(), false)
            .await?
        else {
            return Ok(false);
        };
        Ok(!view.enis.is_empty() && view.enis.iter().all(|e| e.isolated_by(&group)))
    }

    async fn force_stop(&self, server: &CloudServer) -> Result<(), CloudError> {
        const OP: &str = "force_stop";
        let view = self.describe_server(OP, server).await?;
        let stopping = |s: &InstanceState| {
            matches!(
                s,
                InstanceState::Stopping
                    | InstanceState::Stopped
                    | InstanceState::ShuttingDown
                    | InstanceState::Terminated
            )
        };
        if stopping(&view.state) {
            return Ok(());
        }
        tracing::info!(server = %server.server_id, instance = %server.instance_id, "requesting a forced stop");
        let r = self
            .timed(
                OP,
                "StopInstances",
                self.client
                    .stop_instances()
                    .instance_ids(&server.instance_id)
                    .force(true)
                    .send(),
            )
            .await?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("IncorrectInstanceState") => {
                let now = self.describe_server(OP, server).await?;
                if stopping(&now.state) {
                    Ok(())
                } else {
                    Err(CloudError::Transient {
                        provider: PROVIDER,
                        op: OP,
                        reason: format!(
                            "instance {} is {} and cannot be stopped yet",
                            server.instance_id, now.state
                        ),
                    })
                }
            }
            Err(e) => Err(map_sdk_error(OP, "StopInstances", &server.instance_id, &e)),
        }
    }

    async fn instance_state(&self, server: &CloudServer) -> Result<InstanceState, CloudError> {
        Ok(self.describe_server("instance_state", server).await?.state)
    }

    async fn instance_health(&self, server: &CloudServer) -> Result<InstanceHealth, CloudError> {
        health::instance_health(self, server).await
    }

    async fn launch_zone(&self) -> Result<String, CloudError> {
        provision::launch_zone(self).await
    }

    async fn launch_instance(&self, req: &LaunchRequest) -> Result<Instance, CloudError> {
        provision::launch_instance(self, req).await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, CloudError> {
        provision::describe_instance(self, instance_id).await
    }

    async fn terminate_instance(&self, instance_id: &str) -> Result<(), CloudError> {
        provision::terminate_instance(self, instance_id).await
    }

    async fn create_volume(&self, req: &VolumeRequest) -> Result<Volume, CloudError> {
        provision::create_volume(self, req).await
    }

    async fn describe_volumes(&self, filter: &VolumeFilter) -> Result<Vec<Volume>, CloudError> {
        provision::describe_volumes(self, filter).await
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), CloudError> {
        provision::attach_volume(self, volume_id, instance_id, device).await
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), CloudError> {
        provision::detach_volume(self, volume_id, instance_id, force).await
    }

    async fn tag_volume(&self, volume_id: &str, tags: &[Tag]) -> Result<(), CloudError> {
        provision::tag_volume(self, volume_id, tags).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: Ec2Config = serde_json::from_str(r#"{"region":"us-east-1"}"#).unwrap();
        assert_eq!(c, Ec2Config::new("us-east-1"));
        assert_eq!(c.call_timeout_ms, 2000);
        let e = serde_json::from_str::<Ec2Config>(r#"{"region":"us-east-1","regoin":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    /// The configuration as the controller reads it: the `[cloud]` table with
    /// `kind = "ec2"` (the controller's `CloudConfig` has these attributes).
    #[test]
    fn toml_launch_keys_as_the_controller_reads_them() {
        #[derive(Debug, Deserialize)]
        #[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
        enum CloudConfig {
            Ec2(Ec2Config),
        }
        #[derive(Debug, Deserialize)]
        struct File {
            cloud: CloudConfig,
        }
        let text = r#"
[cloud]
kind = "ec2"
region = "eu-west-1"
image_id = "ami-0123456789abcdef0"
instance_type = "m6i.large"
subnet_id = "subnet-0123456789abcdef0"
security_group_ids = ["sg-0123456789abcdef1", "sg-0123456789abcdef2"]
"#;
        let File {
            cloud: CloudConfig::Ec2(c),
        } = toml::from_str(text).unwrap();
        assert_eq!(c.image_id.as_deref(), Some("ami-0123456789abcdef0"));
        assert_eq!(c.instance_type.as_deref(), Some("m6i.large"));
        assert_eq!(c.subnet_id.as_deref(), Some("subnet-0123456789abcdef0"));
        assert_eq!(c.security_group_ids.len(), 2);
        assert_eq!(c.volume_type, "gp3");
        assert!(c.can_launch());
        let t: File = toml::from_str(
            "[cloud]\nkind = \"ec2\"\nregion = \"r\"\nlaunch_template_id = \"lt-1\"\nlaunch_template_version = \"3\"\nvolume_type = \"st1\"\n",
        )
        .unwrap();
        let CloudConfig::Ec2(t) = t.cloud;
        assert_eq!(
            (
                t.launch_template_id.as_deref(),
                t.launch_template_version.as_deref(),
                t.volume_type.as_str()
            ),
            (Some("lt-1"), Some("3"), "st1")
        );
        let e = toml::from_str::<File>(
            "[cloud]\nkind = \"ec2\"\nregion = \"r\"\nlaunch_template = \"lt-1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field"), "{e}");
        // The constructor checks the keys together.
        let mut bad = t.clone();
        bad.access_key_id = Some("a".into());
        bad.secret_access_key = Some("b".into());
        bad.image_id = Some("ami-1".into());
        let e = Ec2Cloud::new(bad).unwrap_err().to_string();
        assert!(
            e.contains("both launch_template_id and image_id are set"),
            "{e}"
        );
    }

    #[test]
    fn constructor_checks_config() {
        let mut c = Ec2Config::new("us-east-1");
        c.access_key_id = Some("a".into());
        let e = Ec2Cloud::new(c.clone()).unwrap_err().to_string();
        assert!(e.contains("set both or neither"), "{e}");
        c.secret_access_key = Some("b".into());
        c.endpoint_url = Some("127.0.0.1:5000".into());
        assert!(Ec2Cloud::new(c.clone()).is_err());
        c.endpoint_url = Some("http://127.0.0.1:5000".into());
        Ec2Cloud::new(c.clone()).unwrap();
        c.isolation_group_id = Some("bogus".into());
        assert!(Ec2Cloud::new(c).is_err());
    }

    #[test]
    fn rules_are_described_and_any_rule_refuses_the_group() {
        use aws_sdk_ec2::types::{IpRange, UserIdGroupPair};
        let nfs = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(2049)
            .to_port(2049)
            .ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/16").build())
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-peer").build())
            .build();
        assert_eq!(
            describe_rule(&nfs, false),
            "tcp 2049 from 10.0.0.0/16, sg-peer"
        );
        let all = IpPermission::builder()
            .ip_protocol("-1")
            .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
            .build();
        assert_eq!(describe_rule(&all, true), "all traffic to 0.0.0.0/0");
        let ports = IpPermission::builder()
            .ip_protocol("udp")
            .from_port(7788)
            .to_port(7790)
            .build();
        assert_eq!(describe_rule(&ports, false), "udp 7788-7790");

        let empty = SecurityGroup::builder()
            .group_id("sg-1")
            .group_name("iso")
            .build();
        assert_eq!(check_no_rules(&empty, "sg-1"), Ok(()));
        let default_egress = SecurityGroup::builder()
            .group_id("sg-1")
            .group_name("iso")
            .ip_permissions_egress(all)
            .build();
        let e = check_no_rules(&default_egress, "sg-1").unwrap_err();
        assert_eq!(
            e,
            IsolationGroupError::HasRules {
                group_id: "sg-1".into(),
                name: "iso".into(),
                ingress: vec![],
                egress: vec!["all traffic to 0.0.0.0/0".into()],
            }
        );
        let msg = e.clone().into_cloud_error("isolate").to_string();
        assert!(
            msg.starts_with("ec2: isolate refused: isolation_group_id sg-1 (iso) has rules"),
            "{msg}"
        );
        assert!(msg.contains("revoke that too"), "{msg}");
        let ingress_only = SecurityGroup::builder()
            .group_id("sg-1")
            .ip_permissions(nfs)
            .build();
        assert!(matches!(
            check_no_rules(&ingress_only, "sg-1"),
            Err(IsolationGroupError::HasRules { ingress, egress, .. }) if ingress.len() == 1 && egress.is_empty()
        ));
    }

    #[test]
    fn states_and_codes() {
        assert_eq!(state_from_word("stopping"), InstanceState::Stopping);
        assert_eq!(
            state_from_word("hibernating"),
            InstanceState::Other("hibernating".into())
        );
        assert_eq!(
            not_found_what("InvalidInstanceID.NotFound"),
            Some("instance")
        );
        assert_eq!(
            not_found_what("InvalidNetworkInterfaceID.Malformed"),
            Some("interface")
        );
        assert_eq!(not_found_what("InvalidParameterValue"), None);
    }
}
