//! Provisioning: launching and terminating servers and moving volumes, what the
//! controller needs to make a pair redundant again by itself (pre-spun spare,
//! replacement backup, reattaching a dead file server's volumes to a spare).
//!
//! EC2 names are used throughout (`RunInstances`, `CreateVolume`, `AttachVolume`,
//! `DetachVolume` with `Force`, `DescribeVolumes`). Every call is idempotent where
//! EC2 makes it so: a launch or a volume creation carries a client token, and a
//! new leader that repeats it with the same token gets the same instance or volume
//! back instead of a second one. No backend is trusted to enforce zones or
//! exclusive attachment (moto does neither): callers compare zones themselves and
//! confirm `available` / `in-use` with [`crate::Cloud::describe_volumes`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InstanceState;

/// Tag keys Understudy puts on what it launches and creates.
pub mod tags {
    /// The pair the resource belongs to.
    pub const PAIR: &str = "understudy:pair";
    /// Why it exists: `spare` (a server launched ahead of need), `volume` (a
    /// replacement backup's disk), `retired` (kept after its server was replaced).
    pub const PURPOSE: &str = "understudy:purpose";
    /// The Understudy server id the instance runs as (its agent's `server_id`).
    pub const SERVER_ID: &str = "understudy:server-id";
    /// The DRBD resource a volume backs.
    pub const RESOURCE: &str = "understudy:resource";
    /// Set on the volumes of a replaced server: kept until an operator releases them.
    pub const KEEP: &str = "understudy:keep";
    /// The EC2 console's name tag.
    pub const NAME: &str = "Name";
}

/// One key/value tag.
pub type Tag = (String, String);

/// A request to launch a server from the configured template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRequest {
    /// Idempotency token (EC2 `ClientToken`): the same token always names the same
    /// instance, so a new leader that repeats a launch does not launch twice.
    pub client_token: String,
    /// The zone the instance must run in (the pair's volumes' zone). A backend
    /// whose template launches elsewhere refuses with [`crate::CloudError::Refused`].
    pub zone: String,
    /// Tags for the instance (see [`tags`]).
    pub tags: Vec<Tag>,
}

/// An instance as the provider describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: String,
    /// The network interface that will carry the client IP (EC2: the primary ENI;
    /// local: `netns:eth0`).
    pub interface_id: String,
    /// Its private (management) address; empty until the provider assigned one.
    pub private_ip: String,
    pub zone: String,
    pub state: InstanceState,
    pub tags: Vec<Tag>,
}

impl Instance {
    /// The value of tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        tag_value(&self.tags, key)
    }
}

/// Lifecycle state of a volume (EC2's words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Error,
    Other(String),
}

impl fmt::Display for VolumeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::InUse => "in-use",
            VolumeState::Deleting => "deleting",
            VolumeState::Deleted => "deleted",
            VolumeState::Error => "error",
            VolumeState::Other(s) => s,
        })
    }
}

impl VolumeState {
    /// EC2's word (`available`, `in-use`, ...) to a state.
    pub fn from_word(w: &str) -> VolumeState {
        match w {
            "creating" => VolumeState::Creating,
            "available" => VolumeState::Available,
            "in-use" => VolumeState::InUse,
            "deleting" => VolumeState::Deleting,
            "deleted" => VolumeState::Deleted,
            "error" => VolumeState::Error,
            other => VolumeState::Other(other.to_string()),
        }
    }
}

/// One attachment of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    pub instance_id: String,
    /// The device name it is attached as (`/dev/xvdf`; local: `xvdf`).
    pub device: String,
    /// `attaching`, `attached`, `detaching`, `detached`, `busy`.
    pub state: String,
}

/// A volume as the provider describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub volume_id: String,
    pub zone: String,
    pub size_gib: u64,
    pub state: VolumeState,
    pub attachments: Vec<VolumeAttachment>,
    pub tags: Vec<Tag>,
}

impl Volume {
    /// The value of tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        tag_value(&self.tags, key)
    }

    /// Attached (state `attached`) to `instance_id`.
    pub fn attached_to(&self, instance_id: &str) -> bool {
        self.attachments
            .iter()
            .any(|a| a.instance_id == instance_id && a.state == "attached")
    }
}

/// A request to create a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRequest {
    /// Idempotency token (EC2 `ClientToken`).
    pub client_token: String,
    pub zone: String,
    pub size_gib: u64,
    pub tags: Vec<Tag>,
}

/// Which volumes [`crate::Cloud::describe_volumes`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFilter {
    /// These volume ids (empty: any).
    pub volume_ids: Vec<String>,
    /// Attached to this instance (EC2 filter `attachment.instance-id`).
    pub attached_to: Option<String>,
}

fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Tags as owned pairs, for building requests.
pub fn tag_list(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_words_round_trip() {
        for w in [
            "creating",
            "available",
            "in-use",
            "deleting",
            "deleted",
            "error",
        ] {
            assert_eq!(VolumeState::from_word(w).to_string(), w);
        }
        assert_eq!(
            VolumeState::from_word("optimizing"),
            VolumeState::Other("optimizing".into())
        );
    }

    #[test]
    fn attachment_and_tags() {
        let v = Volume {
            volume_id: "vol-1".into(),
            zone: "zone-a".into(),
            size_gib: 1,
            state: VolumeState::InUse,
            attachments: vec![VolumeAttachment {
                instance_id: "i-1".into(),
                device: "/dev/xvdf".into(),
                state: "attached".into(),
            }],
            tags: tag_list(&[(tags::PAIR, "fs1")]),
        };
        assert!(v.attached_to("i-1"));
        assert!(!v.attached_to("i-2"));
        assert_eq!(v.tag(tags::PAIR), Some("fs1"));
        assert_eq!(v.tag(tags::KEEP), None);
    }
}
