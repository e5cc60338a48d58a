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
    /// The client token a launch or a volume creation was made with. Backends
    /// set it themselves on what they make (callers need not), and look it up
    /// before making anything: EC2 keeps client tokens for a limited time only,
    /// and moto does not honour them.
    pub const CLIENT_TOKEN: &str = "understudy:client-token";
}

/// The longest client token EC2 accepts (ASCII characters).
pub const MAX_CLIENT_TOKEN_LEN: usize = 64;

/// Check a client token as EC2 would (1 to [`MAX_CLIENT_TOKEN_LEN`] printable
/// ASCII characters), before anything is made with it.
pub fn check_client_token(
    provider: &'static str,
    op: &'static str,
    token: &str,
) -> Result<(), crate::CloudError> {
    if token.is_empty()
        || token.len() > MAX_CLIENT_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(crate::CloudError::Refused {
            provider,
            op,
            reason: format!(
                "client token {token:?} is not 1 to {MAX_CLIENT_TOKEN_LEN} printable ASCII characters without spaces; derive a shorter one (e.g. pair id and a counter)"
            ),
        });
    }
    Ok(())
}

/// Check request tags as EC2 would: no empty or duplicate key, no key in the
/// reserved `aws:` namespace, and not [`tags::CLIENT_TOKEN`] (the backend sets it).
pub fn check_tags(
    provider: &'static str,
    op: &'static str,
    tags: &[Tag],
) -> Result<(), crate::CloudError> {
    let refuse = |reason: String| crate::CloudError::Refused {
        provider,
        op,
        reason,
    };
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in tags {
        if k.is_empty() {
            return Err(refuse("a tag has an empty key".into()));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(refuse(format!(
                "tag key {k:?} is in the reserved aws: namespace"
            )));
        }
        if k == tags::CLIENT_TOKEN {
            return Err(refuse(format!(
                "tag key {k:?} is set by the backend from the client token; leave it out"
            )));
        }
        if !seen.insert(k.as_str()) {
            return Err(refuse(format!("tag key {k:?} is given twice")));
        }
    }
    Ok(())
}

/// `tags` with `updates` merged in: an update replaces the value of a key it
/// shares, other updates are appended (EC2's `CreateTags`).
pub fn merge_tags(tags: &mut Vec<Tag>, updates: &[Tag]) {
    for (k, v) in updates {
        match tags.iter_mut().find(|(tk, _)| tk == k) {
            Some(t) => t.1 = v.clone(),
            None => tags.push((k.clone(), v.clone())),
        }
    }
}

/// Whether every tag of `wanted` is on `have` with the same value.
pub fn has_tags(have: &[Tag], wanted: &[Tag]) -> bool {
    wanted
        .iter()
        .all(|(k, v)| tag_value(have, k) == Some(v.as_str()))
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

    #[test]
    fn tokens_and_tags_are_checked_as_ec2_does() {
        check_client_token("t", "op", "fs1-spare-1").unwrap();
        check_client_token("t", "op", &"x".repeat(MAX_CLIENT_TOKEN_LEN)).unwrap();
        for bad in [
            String::new(),
            "x".repeat(MAX_CLIENT_TOKEN_LEN + 1),
            "a b".into(),
            "é".into(),
        ] {
            let e = check_client_token("t", "op", &bad).unwrap_err();
            assert!(matches!(e, crate::CloudError::Refused { .. }), "{e}");
        }
        check_tags(
            "t",
            "op",
            &tag_list(&[(tags::PAIR, "fs1"), (tags::NAME, "x")]),
        )
        .unwrap();
        for (bad, want) in [
            (tag_list(&[("", "x")]), "empty key"),
            (tag_list(&[("aws:foo", "x")]), "reserved"),
            (tag_list(&[(tags::CLIENT_TOKEN, "x")]), "set by the backend"),
            (tag_list(&[("a", "1"), ("a", "2")]), "twice"),
        ] {
            let e = check_tags("t", "op", &bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let mut t = tag_list(&[("a", "1"), ("b", "2")]);
        merge_tags(&mut t, &tag_list(&[("b", "3"), ("c", "4")]));
        assert_eq!(t, tag_list(&[("a", "1"), ("b", "3"), ("c", "4")]));
        assert!(has_tags(&t, &tag_list(&[("c", "4"), ("a", "1")])));
        assert!(!has_tags(&t, &tag_list(&[("b", "2")])));
    }
}
