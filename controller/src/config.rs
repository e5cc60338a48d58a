//! Controller configuration, read from a TOML file.
//!
//! ```toml
//! node_id = 1
//! listen = "127.0.0.1:7101"          # gRPC: agents, operators and Raft peers
//! data_dir = "/var/lib/understudy/controller-1"
//!
//! [[members]]                        # the whole Raft group, the same on every node
//! id = 1
//! addr = "127.0.0.1:7101"
//!
//! [tls]                              # required: mutual TLS (see `understudyctl certs`) ...
//! ca = "/etc/understudy/pki/ca.pem"
//! cert = "/etc/understudy/pki/controller-1.pem"   # names understudy:controller:1 and the listen IP
//! key = "/etc/understudy/pki/controller-1.key"
//! # insecure = true                 # ... or explicitly none (plain text; the status warns)
//!
//! [timing]                           # all optional
//! raft_heartbeat_ms = 100
//! election_timeout_min_ms = 400
//! election_timeout_max_ms = 800
//! agent_heartbeat_ms = 200
//!
//! [detector]                         # all optional; checked against each other
//! primary_silence_ms = 1000
//! peer_loss_ms = 500
//! agent_timeout_ms = 1000
//! outdate_tolerance_ms = 300
//! flap_holdoff_ms = 600000
//!
//! [probe]                            # all optional: direct UDP liveness probes
//! after_silence_ms = 400             # probe a serving agent whose session is this silent
//! interval_ms = 100
//! confirm_window_ms = 300            # Confirm probes this long before fencing
//!
//! [[pairs]]
//! id = "fs1"
//! resource = "r0"
//! client_ip = "198.18.0.100"
//! zone = "zone-a"
//! # address:probe_port (default 7201) is where the agent answers probes
//! primary = { id = "fs1-a", address = "198.18.0.2", zone = "zone-a", volumes = ["vol-1"] }
//! backup  = { id = "fs1-b", address = "198.18.0.3", zone = "zone-a", volumes = ["vol-2"] }
//!
//! [cloud]                            # default: kind = "none" (no fencing)
//! kind = "ec2"
//! region = "us-east-1"
//! # isolation_group_id = "sg-..."    # default: understudy-isolate-<vpc>, created
//! # call_timeout_ms = 2000
//! # Spares (optional): a launch template whose subnet is in the pairs' zone ...
//! launch_template_id = "lt-0123456789abcdef0"
//! # launch_template_version = "$Latest"   # default: the template's default
//! # ... or an image, instance type and subnet (instead of launch_template_id):
//! # image_id = "ami-0123456789abcdef0"
//! # instance_type = "m6i.large"
//! # subnet_id = "subnet-0123456789abcdef0"
//! # security_group_ids = ["sg-0123456789abcdef1"]
//! # volume_type = "gp3"                   # EBS type of created volumes (default)
//!
//! [signals]                          # all optional: cloud signals (EC2 scheduled
//! poll_ms = 60000                    # events, failed system status checks)
//! auto_switchover = false            # true: schedule the proposed switchover
//! window = "02:00-04:00"             # UTC; may wrap midnight; absent: any time
//! ```
//!
//! The `[[pairs]]` inventory is proposed to Raft by the leader whenever it differs
//! from the replicated one, so the configuration files are the source of truth
//! for *what* is managed and Raft for *its state*.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ControllerError;
use crate::state::PairSpec;

/// One member of the Raft group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    /// Its `[http] listen` address, for followers' redirects to the leader.
    #[serde(default)]
    pub http: Option<String>,
}

/// Timings, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    pub raft_heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How often agents are asked to send a heartbeat.
    pub agent_heartbeat_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            raft_heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            agent_heartbeat_ms: 200,
        }
    }
}

/// The whole controller configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub members: Vec<Member>,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub pairs: Vec<PairSpec>,
    /// Failure detector timings.
    #[serde(default)]
    pub detector: crate::detector::DetectorConfig,
    /// Failover executor timings and the Verify probe.
    #[serde(default)]
    pub executor: crate::failover::ExecutorConfig,
    /// The cloud provider used to fence.
    #[serde(default)]
    pub cloud: CloudConfig,
    /// Direct liveness probes to agents (detector and Confirm).
    #[serde(default)]
    pub probe: crate::probe::ProbeConfig,
    /// Pre-spun spares, replacement backups, reattach (S9). Absent: off.
    #[serde(default)]
    pub spare: Option<crate::redundancy::SpareConfig>,
    /// `[http]`: the JSON API, event stream and health checks (absent: off).
    #[serde(default)]
    pub http: Option<crate::http::HttpConfig>,
    /// Inventory preflight timing and limits.
    #[serde(default)]
    pub preflight: crate::preflight::PreflightConfig,
    /// `[tls]`: the CA, this node's certificate and key, or `insecure = true`.
    /// Required: a missing section is an error, never plain text by default.
    #[serde(default)]
    pub tls: Option<understudy_tls::TlsSection>,
    /// Cloud signals: how often the cloud is asked about scheduled events and
    /// status checks, and whether (and when) the controller schedules the
    /// switchover they call for (`crate::signals`).
    #[serde(default)]
    pub signals: crate::signals::SignalsConfig,
    /// `[agents]`: how agent sessions reach the leader.
    #[serde(default)]
    pub agents: AgentsConfig,
}

/// `[agents]`: how agent sessions reach the leader.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// A follower relays the sessions of agents that dial it to the leader,
    /// over its one connection to the leader (`crate::relay`), instead of
    /// redirecting them: the leader then holds a connection per follower, not
    /// one per agent. `false`: followers redirect every agent to the leader.
    pub relay: bool,
    /// The leader hands the agents that dial it to a healthy follower, which
    /// relays them (`crate::handoff`), so it serves no agent connection of its
    /// own. Needs `relay` on the followers: an agent a follower did not serve
    /// comes back, and the leader serves it itself for a while.
    pub handoff: bool,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            relay: true,
            handoff: true,
        }
    }
}

/// Which cloud backend fences and moves the client IP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CloudConfig {
    /// No cloud: every fence fails, so automatic failover always ends `Blocked`.
    #[default]
    None,
    /// Hosts are network namespaces on this machine (demo, namespace tests).
    Local {
        #[serde(default = "default_netns_prefix")]
        netns_prefix: String,
        #[serde(default = "default_prefix_len")]
        prefix_len: u8,
        /// The named namespace holding the bridge, when the controller runs in
        /// a namespace of its own (namespace tests with controller partitions).
        #[serde(default)]
        root_netns: Option<String>,
        /// Whether the fence's forced stop SIGKILLs the server's processes
        /// (default true). false: the fence isolates without killing, like an
        /// EC2 isolate whose stop has not landed (tests of S10 use it).
        #[serde(default = "default_kill_processes")]
        kill_processes: bool,
        /// `[cloud.launch]`: how `RunInstances` makes a host (a namespace on
        /// the bridge running a boot command); without it nothing is launched.
        #[serde(default)]
        launch: Option<understudy_cloud::local::LocalLaunchConfig>,
    },
    /// Amazon EC2 (or moto's EC2 server, with `endpoint_url`). The keys are
    /// [`understudy_cloud_ec2::Ec2Config`]'s: `region`, `endpoint_url`,
    /// `access_key_id`, `secret_access_key`, `isolation_group_id`,
    /// `call_timeout_ms`, and for spares and volumes `launch_template_id`,
    /// `launch_template_version`, `image_id`, `instance_type`, `subnet_id`,
    /// `security_group_ids`, `volume_type` (see the module documentation).
    Ec2(understudy_cloud_ec2::Ec2Config),
}

fn default_netns_prefix() -> String {
    "us".into()
}
fn default_prefix_len() -> u8 {
    24
}
fn default_kill_processes() -> bool {
    true
}

impl CloudConfig {
    /// Build the configured backend; `servers` are the inventory's servers.
    pub fn build(
        &self,
        servers: &[understudy_cloud::CloudServer],
    ) -> Result<std::sync::Arc<dyn understudy_cloud::Cloud>, String> {
        match self {
            CloudConfig::Ec2(c) => {
                let cloud = std::sync::Arc::new(
                    understudy_cloud_ec2::Ec2Cloud::new(c.clone()).map_err(|e| e.to_string())?,
                );
                cloud.track_servers(servers.iter());
                // Check a configured isolation group at start, so a group with
                // rules is reported now rather than at the first failover (which
                // checks it again and refuses to isolate with it).
                if let (Some(_), Ok(rt)) =
                    (&c.isolation_group_id, tokio::runtime::Handle::try_current())
                {
                    let check = cloud.clone();
                    rt.spawn(async move {
                        match check.check_isolation_group().await {
                            Ok(()) => tracing::info!("ec2 isolation group checked: no rules"),
                            Err(e) => tracing::error!(error = %e, "ec2 isolation group cannot isolate; fix it before a failover needs it"),
                        }
                    });
                }
                // Likewise the launch configuration (template or subnet), so a
                // wrong one is reported now rather than when a spare is needed.
                if let (true, Ok(rt)) = (c.can_launch(), tokio::runtime::Handle::try_current()) {
                    let check = cloud.clone();
                    rt.spawn(async move {
                        match understudy_cloud::Cloud::launch_zone(&*check).await {
                            Ok(zone) => tracing::info!(%zone, "ec2 spares launch in this zone"),
                            Err(e) => tracing::error!(error = %e, "ec2 spares cannot be launched; fix the launch configuration before a spare is needed"),
                        }
                    });
                }
                Ok(cloud)
            }
            CloudConfig::None => Ok(std::sync::Arc::new(NoCloud)),
            CloudConfig::Local {
                netns_prefix,
                prefix_len,
                root_netns,
                kill_processes,
                launch,
            } => {
                let mut c =
                    understudy_cloud::local::LocalConfig::new(netns_prefix.clone(), *prefix_len);
                c.root_netns = root_netns.clone();
                c.kill_processes = *kill_processes;
                c.launch = launch.clone();
                Ok(std::sync::Arc::new(
                    understudy_cloud::local::LocalCloud::new(c),
                ))
            }
        }
    }
}

/// The cloud of `kind = "none"`: refuses every fence, so nothing is ever served
/// from a backup whose old primary could not be fenced (S3).
struct NoCloud;

#[async_trait::async_trait]
impl understudy_cloud::Cloud for NoCloud {
    fn name(&self) -> &'static str {
        "none"
    }
    async fn move_client_ip(
        &self,
        _ip: &str,
        _from: &understudy_cloud::CloudServer,
        _to: &understudy_cloud::CloudServer,
    ) -> Result<(), understudy_cloud::CloudError> {
        Err(no_cloud("move_client_ip"))
    }
    async fn ip_holders(&self, _ip: &str) -> Result<Vec<String>, understudy_cloud::CloudError> {
        Err(no_cloud("ip_holders"))
    }
    async fn isolate(
        &self,
        _s: &understudy_cloud::CloudServer,
    ) -> Result<(), understudy_cloud::CloudError> {
        Err(no_cloud("isolate"))
    }
    async fn is_isolated(
        &self,
        _s: &understudy_cloud::CloudServer,
    ) -> Result<bool, understudy_cloud::CloudError> {
        Err(no_cloud("is_isolated"))
    }
    async fn force_stop(
        &self,
        _s: &understudy_cloud::CloudServer,
    ) -> Result<(), understudy_cloud::CloudError> {
        Err(no_cloud("force_stop"))
    }
    async fn instance_state(
        &self,
        _s: &understudy_cloud::CloudServer,
    ) -> Result<understudy_cloud::InstanceState, understudy_cloud::CloudError> {
        Err(no_cloud("instance_state"))
    }
}

fn no_cloud(op: &'static str) -> understudy_cloud::CloudError {
    understudy_cloud::CloudError::Refused {
        provider: "none",
        op,
        reason: "no cloud is configured ([cloud] kind = \"none\"); configure one to allow fencing"
            .into(),
    }
}

impl ControllerConfig {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Self, ControllerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ControllerError::Config {
            path: path.to_owned(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text).map_err(|reason| ControllerError::Config {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parse and validate configuration text; the error says what to fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: ControllerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        self.tls_files().map_err(|e| e.to_string())?;
        if !matches!(self.members.len(), 1 | 3 | 5) {
            return Err(format!(
                "members lists {} nodes; use 3 or 5 (1 for a lab)",
                self.members.len()
            ));
        }
        let ids: BTreeSet<u64> = self.members.iter().map(|m| m.id).collect();
        if ids.len() != self.members.len() {
            return Err("members has duplicate ids".into());
        }
        if !ids.contains(&self.node_id) {
            return Err(format!(
                "node_id {} is not one of the members {:?}",
                self.node_id, ids
            ));
        }
        let t = &self.timing;
        if t.election_timeout_min_ms <= t.raft_heartbeat_ms * 2
            || t.election_timeout_max_ms <= t.election_timeout_min_ms
        {
            return Err(format!(
                "timing: need raft_heartbeat_ms*2 < election_timeout_min_ms < election_timeout_max_ms (got {} / {} / {})",
                t.raft_heartbeat_ms, t.election_timeout_min_ms, t.election_timeout_max_ms
            ));
        }
        if t.agent_heartbeat_ms == 0 {
            return Err("timing: agent_heartbeat_ms must be above 0".into());
        }
        self.detector.validate(t.agent_heartbeat_ms)?;
        let x = &self.executor;
        if x.fence_deadline_ms == 0 || x.forced_stop_deadline_ms == 0 {
            return Err(format!(
                "executor: fence_deadline_ms and forced_stop_deadline_ms must be above 0 (got {} / {}); the defaults are 3000 / 30000",
                x.fence_deadline_ms, x.forced_stop_deadline_ms
            ));
        }
        self.probe.validate()?;
        self.signals.validate()?;
        let mut pair_ids = BTreeSet::new();
        let mut server_ids = BTreeSet::new();
        for p in &self.pairs {
            if !pair_ids.insert(p.id.as_str()) {
                return Err(format!("pair id {:?} is listed twice", p.id));
            }
            for s in [&p.primary, &p.backup] {
                if !server_ids.insert(s.id.as_str()) {
                    return Err(format!(
                        "server id {:?} appears in more than one place (each pair's primary and backup need their own)",
                        s.id
                    ));
                }
            }
            if p.client_ip.parse::<std::net::IpAddr>().is_err() {
                return Err(format!(
                    "pair {}: client_ip {:?} is not an IP address",
                    p.id, p.client_ip
                ));
            }
        }
        Ok(())
    }

    /// The TLS certificate files, `None` when `[tls] insecure = true`.
    pub fn tls_files(&self) -> Result<Option<understudy_tls::TlsFiles>, understudy_tls::TlsError> {
        understudy_tls::TlsSection::files(self.tls.as_ref())
    }

    /// The gRPC address of a member.
    pub fn member_addr(&self, id: u64) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.addr.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 2
listen = "127.0.0.1:7102"
data_dir = "/tmp/x"
members = [ { id = 1, addr = "127.0.0.1:7101" }, { id = 2, addr = "127.0.0.1:7102" }, { id = 3, addr = "127.0.0.1:7103" } ]
[[pairs]]
id = "fs1"
resource = "r0"
client_ip = "198.18.0.100"
zone = "a"
primary = { id = "fs1-a", address = "198.18.0.2", zone = "a" }
backup = { id = "fs1-b", address = "198.18.0.3", zone = "a" }
[tls]
insecure = true
"#;

    #[test]
    fn local_cloud_kills_processes_unless_told_not_to() {
        let kills = |extra: &str| {
            let c = ControllerConfig::parse(&format!("{GOOD}\n[cloud]\nkind = \"local\"\n{extra}"))
                .unwrap();
            match c.cloud {
                CloudConfig::Local { kill_processes, .. } => kill_processes,
                other => panic!("{other:?}"),
            }
        };
        assert!(kills(""));
        assert!(!kills("kill_processes = false"));
        assert!(ControllerConfig::parse(&format!(
            "{GOOD}\n[cloud]\nkind = \"local\"\nkill_process = false"
        ))
        .unwrap_err()
        .contains("unknown field"));
    }

    #[test]
    fn ec2_cloud_with_launch_keys() {
        let c = ControllerConfig::parse(&format!(
            "{GOOD}\n[cloud]\nkind = \"ec2\"\nregion = \"us-east-1\"\nlaunch_template_id = \"lt-1\"\nlaunch_template_version = \"$Latest\"\nvolume_type = \"gp2\"\n"
        ))
        .unwrap();
        match c.cloud {
            CloudConfig::Ec2(e) => {
                assert_eq!(e.launch_template_id.as_deref(), Some("lt-1"));
                assert_eq!(e.launch_template_version.as_deref(), Some("$Latest"));
                assert_eq!(e.volume_type, "gp2");
                assert!(e.security_group_ids.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(ControllerConfig::parse(&format!(
            "{GOOD}\n[cloud]\nkind = \"ec2\"\nregion = \"us-east-1\"\nlaunch_templat_id = \"lt-1\"\n"
        ))
        .unwrap_err()
        .contains("unknown field"));
    }

    #[test]
    fn parses_a_good_config() {
        let c = ControllerConfig::parse(GOOD).unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.member_addr(3), Some("127.0.0.1:7103"));
        assert_eq!(c.pairs[0].backup.id, "fs1-b");
        assert_eq!(c.detector.agent_timeout_ms, 1000);
        // Inventories written before probes existed parse with the default port.
        assert_eq!(c.pairs[0].primary.probe_port, 7201);
        assert_eq!(c.probe, crate::probe::ProbeConfig::default());
        assert_eq!(c.signals, crate::signals::SignalsConfig::default());
        let c = ControllerConfig::parse(&format!(
            "{GOOD}[signals]\npoll_ms = 1000\nauto_switchover = true\nwindow = \"23:00-01:30\"\n"
        ))
        .unwrap();
        assert!(c.signals.auto_switchover);
        assert_eq!(c.signals.poll_ms, 1000);
        assert_eq!(
            c.signals.window.map(|w| w.to_string()).as_deref(),
            Some("23:00-01:30 UTC")
        );
    }

    #[test]
    fn rejects_bad_configs_with_a_reason() {
        let cases = [
            (
                GOOD.replace("node_id = 2", "node_id = 9"),
                "not one of the members",
            ),
            (
                GOOD.replace("198.18.0.100", "not-an-ip"),
                "not an IP address",
            ),
            (GOOD.replace("fs1-b", "fs1-a"), "more than one place"),
            (
                GOOD.replace("zone = \"a\"\nprimary", "zonee = \"a\"\nprimary"),
                "unknown field",
            ),
            (
                GOOD.replace(", { id = 3, addr = \"127.0.0.1:7103\" }", ""),
                "use 3 or 5",
            ),
            (
                format!("{GOOD}\n[timing]\nagent_timeout_ms = 1000\n"),
                "unknown field",
            ),
            (
                format!("{GOOD}\n[detector]\nprimary_silence_ms = 500\n"),
                "at least three agent heartbeats",
            ),
            (
                format!("{GOOD}\n[detector]\nagent_timeout_ms = 300\n"),
                "at least twice",
            ),
            (
                format!("{GOOD}\n[detector]\noutdate_tolerance_ms = 1000\n"),
                "below primary_silence_ms",
            ),
            (
                format!("{GOOD}\n[detector]\npeer_loss_ms = 0\n"),
                "peer_loss_ms must be above 0",
            ),
            (
                format!("{GOOD}[executor]\nforced_stop_deadline_ms = 0\n"),
                "forced_stop_deadline_ms must be above 0",
            ),
            (
                GOOD.replace("[[pairs]]", "[probe]\ninterval_ms = 0\n[[pairs]]"),
                "interval_ms must be above 0",
            ),
            (
                format!("{GOOD}[signals]\npoll_ms = 0\n"),
                "poll_ms must be above 0",
            ),
            (
                format!("{GOOD}[signals]\nwindow = \"02:00-02:00\"\n"),
                "starts when it ends",
            ),
            (
                format!("{GOOD}[signals]\nauto_switchover = \"yes\"\n"),
                "invalid type",
            ),
        ];
        let no_tls = GOOD.replace("[tls]\ninsecure = true\n", "");
        let cases = cases.into_iter().chain([
            (no_tls.clone(), "no [tls] section"),
            (
                format!("{no_tls}[tls]\ninsecure = true\nca = \"/ca.pem\"\n"),
                "choose one",
            ),
            (
                format!("{no_tls}[tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\n"),
                "lacks key",
            ),
            (format!("{no_tls}[tls]\ninsecur = true\n"), "unknown field"),
        ]);
        for (text, want) in cases {
            let err = ControllerConfig::parse(&text).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
