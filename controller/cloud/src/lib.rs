//! The cloud-provider interface the controller fences and moves addresses with.
//!
//! Plain data in, plain data out, so the failover executor can run against any
//! backend: `ec2` (aws-sdk-ec2, crate `understudy-cloud-ec2`), `local` (network
//! namespaces on one machine, for the demo and namespace tests) and [`strict::StrictCloud`]
//! (in memory, enforcing the rules real EC2 enforces and moto does not, for
//! exhaustive executor tests), and [`faulty::FaultyCloud`] around any of them to make
//! chosen calls slow, hung or failing.
//!
//! Besides fencing and provisioning, a backend may report what the provider
//! plans for an instance and how its status checks look
//! ([`Cloud::instance_health`], [`health`]): the controller proposes (or
//! schedules) a switchover away from a file server before a scheduled event.
//!
//! Every operation is idempotent: the executor may repeat a step after a leader
//! change (S7). No backend may be trusted to enforce anything by itself: after
//! moving the client IP the caller checks [`Cloud::ip_holders`].

pub mod faulty;
pub mod health;
pub mod local;
pub mod provision;
pub mod strict;

pub use health::{InstanceHealth, ScheduledEvent};
pub use provision::{
    Instance, LaunchRequest, Tag, Volume, VolumeAttachment, VolumeFilter, VolumeRequest,
    VolumeState,
};

use std::fmt;

use serde::{Deserialize, Serialize};

/// A server as the cloud knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudServer {
    /// Understudy's server id (inventory).
    pub server_id: String,
    /// EC2: the instance id. Local backend: the network namespace name.
    pub instance_id: String,
    /// EC2: the network interface (ENI) that carries the client IP.
    /// Local backend: the interface name inside the namespace.
    pub interface_id: String,
    /// Availability zone of the instance.
    pub zone: String,
}

/// Lifecycle state of an instance, as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
    /// A state word this version does not know, kept as reported.
    Other(String),
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceState::Other(s) => f.write_str(s),
            s => fmt::Debug::fmt(s, f),
        }
    }
}

/// What can go wrong talking to a cloud.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    #[error("{provider}: {what} not found: {id}; check the inventory's cloud ids")]
    NotFound {
        provider: &'static str,
        what: &'static str,
        id: String,
    },
    #[error("{provider}: {op} refused: {reason}")]
    Refused {
        provider: &'static str,
        op: &'static str,
        reason: String,
    },
    #[error("{provider}: {op} failed: {reason}; the step will be retried")]
    Transient {
        provider: &'static str,
        op: &'static str,
        reason: String,
    },
    #[error("{provider}: after {op}, {reason}")]
    Unverified {
        provider: &'static str,
        op: &'static str,
        reason: String,
    },
}

/// What a provider without provisioning answers to a provisioning call.
pub fn unsupported(provider: &'static str, op: &'static str) -> CloudError {
    CloudError::Refused {
        provider,
        op,
        reason: "this cloud backend cannot launch servers or move volumes; \
                 configure [cloud] kind = \"local\" or \"ec2\" for spares and rebuilds"
            .into(),
    }
}

/// The operations failover needs from a cloud provider. The provisioning
/// operations (launch, terminate, volumes) default to [`unsupported`].
#[async_trait::async_trait]
pub trait Cloud: Send + Sync {
    /// Short provider name for logs and errors.
    fn name(&self) -> &'static str;

    /// Take `client_ip` away from `from` and give it to `to` (EC2: assign to `to`'s
    /// interface with reassignment allowed, then unassign from `from`). The caller
    /// verifies with [`Cloud::ip_holders`].
    async fn move_client_ip(
        &self,
        client_ip: &str,
        from: &CloudServer,
        to: &CloudServer,
    ) -> Result<(), CloudError>;

    /// The interfaces (`interface_id`s) that hold `client_ip` now.
    async fn ip_holders(&self, client_ip: &str) -> Result<Vec<String>, CloudError>;

    /// Cut `server` off the network (EC2: replace its security groups with the
    /// isolating group; local: take its link down).
    async fn isolate(&self, server: &CloudServer) -> Result<(), CloudError>;

    /// Whether `server` is isolated now.
    async fn is_isolated(&self, server: &CloudServer) -> Result<bool, CloudError>;

    /// Request a forced stop and return at once, without waiting for it to finish
    /// (a stop can take very long).
    async fn force_stop(&self, server: &CloudServer) -> Result<(), CloudError>;

    /// The instance's lifecycle state.
    async fn instance_state(&self, server: &CloudServer) -> Result<InstanceState, CloudError>;

    /// The provider's status checks of `server`'s instance and the events it
    /// has scheduled for it (EC2: `DescribeInstanceStatus` with every instance
    /// included). A provider without them answers
    /// [`InstanceHealth::unreported`]: statuses `unknown`, no event, which
    /// claims nothing.
    async fn instance_health(&self, _server: &CloudServer) -> Result<InstanceHealth, CloudError> {
        Ok(InstanceHealth::unreported())
    }

    /// The zone the configured launch template puts new instances in (EC2: the
    /// availability zone of the template's subnet). The controller compares it
    /// with the pair's zone before launching: a spare in another zone could
    /// never attach the pair's volumes.
    async fn launch_zone(&self) -> Result<String, CloudError> {
        Err(unsupported(self.name(), "launch_zone"))
    }

    /// Launch one server from the configured template (EC2 `RunInstances` with
    /// `ClientToken`). Returns at once (the instance is usually `Pending`); the
    /// same token returns the same instance.
    async fn launch_instance(&self, _req: &LaunchRequest) -> Result<Instance, CloudError> {
        Err(unsupported(self.name(), "launch_instance"))
    }

    /// Describe one instance; `Ok(None)` if the provider does not know it.
    async fn describe_instance(&self, _instance_id: &str) -> Result<Option<Instance>, CloudError> {
        Err(unsupported(self.name(), "describe_instance"))
    }

    /// Terminate an instance (idempotent: terminating a terminated or unknown
    /// instance is not an error).
    async fn terminate_instance(&self, _instance_id: &str) -> Result<(), CloudError> {
        Err(unsupported(self.name(), "terminate_instance"))
    }

    /// Create a volume (EC2 `CreateVolume` with `ClientToken`).
    async fn create_volume(&self, _req: &VolumeRequest) -> Result<Volume, CloudError> {
        Err(unsupported(self.name(), "create_volume"))
    }

    /// Describe volumes (by id, or those attached to an instance).
    async fn describe_volumes(&self, _filter: &VolumeFilter) -> Result<Vec<Volume>, CloudError> {
        Err(unsupported(self.name(), "describe_volumes"))
    }

    /// Attach a volume to an instance as `device`. The caller confirms `in-use`
    /// and the attachment with [`Cloud::describe_volumes`]; it must have
    /// confirmed the volume `available` and in the instance's zone first.
    async fn attach_volume(
        &self,
        _volume_id: &str,
        _instance_id: &str,
        _device: &str,
    ) -> Result<(), CloudError> {
        Err(unsupported(self.name(), "attach_volume"))
    }

    /// Detach a volume from an instance (`force`: EC2's forced detach, for an
    /// instance that cannot release it). The caller waits for `available`.
    async fn detach_volume(
        &self,
        _volume_id: &str,
        _instance_id: &str,
        _force: bool,
    ) -> Result<(), CloudError> {
        Err(unsupported(self.name(), "detach_volume"))
    }

    /// Add or replace tags on a volume.
    async fn tag_volume(&self, _volume_id: &str, _tags: &[Tag]) -> Result<(), CloudError> {
        Err(unsupported(self.name(), "tag_volume"))
    }
}
