//! What the provider says about an instance's health and what it plans to do
//! to it ([`crate::Cloud::instance_health`]): EC2's status checks and scheduled
//! events (`DescribeInstanceStatus`), the local cloud's injected ones.
//!
//! The words are EC2's, kept as reported: a status is `ok`, `impaired`,
//! `insufficient-data`, `not-applicable` (a stopped instance) or `initializing`;
//! [`STATUS_UNKNOWN`] is this interface's own, for a provider that cannot tell.
//! An event's code is one of [`event_codes`]; a code this version does not know
//! is kept as reported.

use serde::{Deserialize, Serialize};

/// The status word of a provider that reports no status checks.
pub const STATUS_UNKNOWN: &str = "unknown";

/// EC2's status-check words.
pub mod status {
    pub const OK: &str = "ok";
    pub const IMPAIRED: &str = "impaired";
    pub const INSUFFICIENT_DATA: &str = "insufficient-data";
    pub const NOT_APPLICABLE: &str = "not-applicable";
    pub const INITIALIZING: &str = "initializing";
}

/// EC2's scheduled-event codes (`EventCode`).
pub mod event_codes {
    /// The instance runs on degraded hardware and will be stopped or terminated.
    pub const INSTANCE_RETIREMENT: &str = "instance-retirement";
    /// Maintenance of the underlying host (may degrade or reboot the instance).
    pub const SYSTEM_MAINTENANCE: &str = "system-maintenance";
    /// The instance will be rebooted.
    pub const INSTANCE_REBOOT: &str = "instance-reboot";
    /// The underlying host will be rebooted.
    pub const SYSTEM_REBOOT: &str = "system-reboot";
    /// The instance will be stopped.
    pub const INSTANCE_STOP: &str = "instance-stop";
    /// Every code, in EC2's documentation order.
    pub const ALL: [&str; 5] = [
        INSTANCE_REBOOT,
        SYSTEM_REBOOT,
        SYSTEM_MAINTENANCE,
        INSTANCE_RETIREMENT,
        INSTANCE_STOP,
    ];
}

/// One event the provider has scheduled for an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledEvent {
    /// One of [`event_codes`] (or a code this version does not know, as reported).
    pub code: String,
    /// The provider's description. EC2 prefixes an event that is over with
    /// `[Completed]` or `[Canceled]` and keeps listing it for a while.
    pub description: String,
    /// The earliest time the event may start.
    pub not_before_unix_ms: i64,
    /// The latest time it may end, if the provider says.
    #[serde(default)]
    pub not_after_unix_ms: Option<i64>,
}

impl ScheduledEvent {
    /// Whether the provider says the event is over (completed or canceled).
    pub fn is_over(&self) -> bool {
        let d = self.description.trim_start();
        d.starts_with("[Completed]") || d.starts_with("[Canceled]") || d.starts_with("[Cancelled]")
    }
}

/// An instance's status checks and scheduled events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceHealth {
    /// The provider's check of the host the instance runs on (EC2's system
    /// status check): `impaired` means the hardware or its network fails.
    pub system_status: String,
    /// The check of the instance itself (EC2's instance status check).
    pub instance_status: String,
    /// Events scheduled for the instance, as the provider lists them.
    pub events: Vec<ScheduledEvent>,
}

impl InstanceHealth {
    /// What a provider without status checks or events answers: both statuses
    /// [`STATUS_UNKNOWN`], no event. It claims nothing: no event is not "no
    /// event planned", only "none reported".
    pub fn unreported() -> InstanceHealth {
        InstanceHealth {
            system_status: STATUS_UNKNOWN.into(),
            instance_status: STATUS_UNKNOWN.into(),
            events: Vec::new(),
        }
    }

    /// Healthy by the provider's checks, with no event.
    pub fn ok() -> InstanceHealth {
        InstanceHealth {
            system_status: status::OK.into(),
            instance_status: status::OK.into(),
            events: Vec::new(),
        }
    }

    /// Whether the provider reports anything at all.
    pub fn is_reported(&self) -> bool {
        self.system_status != STATUS_UNKNOWN
            || self.instance_status != STATUS_UNKNOWN
            || !self.events.is_empty()
    }

    /// The events that are not over, earliest first.
    pub fn pending_events(&self) -> Vec<&ScheduledEvent> {
        let mut v: Vec<&ScheduledEvent> = self.events.iter().filter(|e| !e.is_over()).collect();
        v.sort_by_key(|e| e.not_before_unix_ms);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: &str, description: &str, at: i64) -> ScheduledEvent {
        ScheduledEvent {
            code: code.into(),
            description: description.into(),
            not_before_unix_ms: at,
            not_after_unix_ms: None,
        }
    }

    #[test]
    fn events_that_are_over_are_not_pending_and_the_rest_come_earliest_first() {
        let h = InstanceHealth {
            events: vec![
                ev(event_codes::INSTANCE_STOP, "stop", 30),
                ev(
                    event_codes::SYSTEM_REBOOT,
                    "[Completed] scheduled reboot",
                    10,
                ),
                ev(event_codes::SYSTEM_MAINTENANCE, "maintenance", 20),
                ev(event_codes::INSTANCE_REBOOT, " [Canceled] reboot", 5),
            ],
            ..InstanceHealth::ok()
        };
        let codes: Vec<&str> = h.pending_events().iter().map(|e| e.code.as_str()).collect();
        assert_eq!(
            codes,
            vec![event_codes::SYSTEM_MAINTENANCE, event_codes::INSTANCE_STOP]
        );
        assert!(h.is_reported());
        assert!(!InstanceHealth::unreported().is_reported());
    }

    #[test]
    fn registry_records_without_not_after_still_parse() {
        let e: ScheduledEvent = serde_json::from_str(
            r#"{"code":"instance-retirement","description":"x","not_before_unix_ms":1}"#,
        )
        .unwrap();
        assert_eq!(e.not_after_unix_ms, None);
    }
}
