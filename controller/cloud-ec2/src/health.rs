//! Cloud signals on EC2 ([`understudy_cloud::Cloud::instance_health`]):
//! `DescribeInstanceStatus` for the server's instance with `IncludeAllInstances`
//! (a stopped instance is listed too, its checks `not-applicable`), mapped by
//! [`health_from_sdk`]: the system and instance status checks as EC2 words them,
//! and each scheduled event (`instance-retirement`, `system-maintenance`,
//! `instance-reboot`, `system-reboot`, `instance-stop`) with its description
//! and window. Events EC2 marks `[Completed]` or `[Canceled]` are kept: the
//! controller skips them ([`understudy_cloud::ScheduledEvent::is_over`]).
//!
//! moto answers the status checks (`ok` while running, `not-applicable`
//! otherwise) but never schedules an event, so the event mapping is tested on
//! SDK values built here.

use aws_sdk_ec2::types::InstanceStatus;
use understudy_cloud::health::STATUS_UNKNOWN;
use understudy_cloud::{CloudError, CloudServer, InstanceHealth, ScheduledEvent};

use crate::{Ec2Cloud, PROVIDER};

/// One `InstanceStatus` of `DescribeInstanceStatus` as [`InstanceHealth`]. A
/// check EC2 leaves out is `unknown`; an event without `NotBefore` (EC2 always
/// sets it) gets 0: due now.
pub fn health_from_sdk(s: &InstanceStatus) -> InstanceHealth {
    let word = |x: Option<&aws_sdk_ec2::types::InstanceStatusSummary>| {
        x.and_then(|x| x.status())
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| STATUS_UNKNOWN.to_string())
    };
    let ms = |t: Option<&aws_sdk_ec2::primitives::DateTime>| t.and_then(|t| t.to_millis().ok());
    InstanceHealth {
        system_status: word(s.system_status()),
        instance_status: word(s.instance_status()),
        events: s
            .events()
            .iter()
            .map(|e| ScheduledEvent {
                code: e
                    .code()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_else(|| "unknown".into()),
                description: e.description().unwrap_or_default().to_string(),
                not_before_unix_ms: ms(e.not_before()).unwrap_or(0),
                not_after_unix_ms: ms(e.not_after()),
            })
            .collect(),
    }
}

/// See [`understudy_cloud::Cloud::instance_health`].
pub(crate) async fn instance_health(
    c: &Ec2Cloud,
    server: &CloudServer,
) -> Result<InstanceHealth, CloudError> {
    const OP: &str = "instance_health";
    let id = &server.instance_id;
    let out = c
        .call(
            OP,
            "DescribeInstanceStatus",
            id,
            c.client
                .describe_instance_status()
                .instance_ids(id)
                .include_all_instances(true)
                .send(),
        )
        .await?;
    out.instance_statuses()
        .iter()
        .find(|s| s.instance_id() == Some(id.as_str()))
        .map(health_from_sdk)
        .ok_or_else(|| CloudError::NotFound {
            provider: PROVIDER,
            what: "instance",
            id: format!("{id} (DescribeInstanceStatus does not list it)"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::primitives::DateTime;
    use aws_sdk_ec2::types::{
        EventCode, InstanceStatusEvent, InstanceStatusSummary, SummaryStatus,
    };

    fn summary(s: SummaryStatus) -> InstanceStatusSummary {
        InstanceStatusSummary::builder().status(s).build()
    }

    #[test]
    fn status_checks_and_events_as_ec2_words_them() {
        let s = InstanceStatus::builder()
            .instance_id("i-0abc")
            .system_status(summary(SummaryStatus::Impaired))
            .instance_status(summary(SummaryStatus::InsufficientData))
            .events(
                InstanceStatusEvent::builder()
                    .instance_event_id("instance-event-1")
                    .code(EventCode::InstanceRetirement)
                    .description("The instance is running on degraded hardware")
                    .not_before(DateTime::from_millis(1_767_225_600_000))
                    .not_after(DateTime::from_millis(1_767_312_000_000))
                    .build(),
            )
            .events(
                InstanceStatusEvent::builder()
                    .code(EventCode::SystemMaintenance)
                    .description("[Completed] Scheduled system maintenance")
                    .not_before(DateTime::from_millis(1_700_000_000_000))
                    .build(),
            )
            .events(
                InstanceStatusEvent::builder()
                    .code(EventCode::from("instance-hibernate"))
                    .build(),
            )
            .build();
        let h = health_from_sdk(&s);
        assert_eq!(h.system_status, "impaired");
        assert_eq!(h.instance_status, "insufficient-data");
        assert_eq!(
            h.events[0],
            ScheduledEvent {
                code: "instance-retirement".into(),
                description: "The instance is running on degraded hardware".into(),
                not_before_unix_ms: 1_767_225_600_000,
                not_after_unix_ms: Some(1_767_312_000_000),
            }
        );
        assert!(h.events[1].is_over());
        assert_eq!(h.events[1].not_after_unix_ms, None);
        // A code this version does not know is kept as reported.
        assert_eq!(h.events[2].code, "instance-hibernate");
        assert_eq!(h.events[2].not_before_unix_ms, 0);
        let codes: Vec<&str> = h.pending_events().iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, vec!["instance-hibernate", "instance-retirement"]);
    }

    #[test]
    fn every_event_code_maps_to_the_interface_word() {
        for (sdk, word) in [
            (EventCode::InstanceReboot, "instance-reboot"),
            (EventCode::SystemReboot, "system-reboot"),
            (EventCode::SystemMaintenance, "system-maintenance"),
            (EventCode::InstanceRetirement, "instance-retirement"),
            (EventCode::InstanceStop, "instance-stop"),
        ] {
            let s = InstanceStatus::builder()
                .events(InstanceStatusEvent::builder().code(sdk).build())
                .build();
            assert_eq!(health_from_sdk(&s).events[0].code, word);
            assert!(understudy_cloud::health::event_codes::ALL.contains(&word));
        }
        // Checks EC2 leaves out (a stopped instance without IncludeAllInstances
        // details) are unknown, not ok.
        let h = health_from_sdk(&InstanceStatus::builder().build());
        assert_eq!(
            (h.system_status.as_str(), h.instance_status.as_str()),
            ("unknown", "unknown")
        );
        let h = health_from_sdk(
            &InstanceStatus::builder()
                .system_status(summary(SummaryStatus::NotApplicable))
                .instance_status(summary(SummaryStatus::Ok))
                .build(),
        );
        assert_eq!(
            (h.system_status.as_str(), h.instance_status.as_str()),
            ("not-applicable", "ok")
        );
    }
}
