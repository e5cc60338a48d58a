//! Fault injection around any [`Cloud`]: a real cloud (usually
//! [`crate::strict::StrictCloud`]) whose calls can be made slow, hung or failing,
//! one operation at a time, for a number of calls or until cleared.
//!
//! The wrapped cloud's logic always runs unless a fault answers in its place:
//! [`Fault::Delay`] waits and then calls it, [`Fault::Hang`] never answers (the call
//! stays pending until the caller drops it, as a request to an endpoint that
//! accepted the connection and went silent), [`Fault::Error`] answers an error
//! without calling it (the request was refused before it did anything, as EC2 does
//! when it throttles), [`Fault::Unapplied`] acknowledges a change without making
//! it (moto keeps a reassigned IP on the old interface too; EC2 applies some
//! changes late), so the caller's verification has something to catch.
//!
//! Faults are queued per operation and consumed in order: `inject(op, f, Some(2))`
//! then `inject(op, g, None)` applies `f` to the next two calls of `op` and `g` to
//! every call after them. A call with no fault queued passes straight through.
//!
//! ```
//! # use std::sync::Arc;
//! # use understudy_cloud::faulty::{FaultyCloud, Op};
//! # use understudy_cloud::strict::StrictCloud;
//! let cloud = Arc::new(FaultyCloud::new(StrictCloud::default()));
//! // EC2 throttles the next three IP moves, then answers normally.
//! cloud.throttle(Op::MoveClientIp, 3);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::{
    Cloud, CloudError, CloudServer, Instance, InstanceHealth, InstanceState, LaunchRequest, Tag,
    Volume, VolumeFilter, VolumeRequest,
};

/// One operation of the [`Cloud`] trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    MoveClientIp,
    IpHolders,
    Isolate,
    IsIsolated,
    ForceStop,
    InstanceState,
    InstanceHealth,
    LaunchZone,
    LaunchInstance,
    DescribeInstance,
    TerminateInstance,
    CreateVolume,
    DescribeVolumes,
    AttachVolume,
    DetachVolume,
    TagVolume,
}

impl Op {
    /// Every operation, in trait order.
    pub const ALL: [Op; 16] = [
        Op::MoveClientIp,
        Op::IpHolders,
        Op::Isolate,
        Op::IsIsolated,
        Op::ForceStop,
        Op::InstanceState,
        Op::InstanceHealth,
        Op::LaunchZone,
        Op::LaunchInstance,
        Op::DescribeInstance,
        Op::TerminateInstance,
        Op::CreateVolume,
        Op::DescribeVolumes,
        Op::AttachVolume,
        Op::DetachVolume,
        Op::TagVolume,
    ];

    /// Whether the operation changes something (the others only read).
    pub fn is_change(self) -> bool {
        matches!(
            self,
            Op::MoveClientIp
                | Op::Isolate
                | Op::ForceStop
                | Op::LaunchInstance
                | Op::TerminateInstance
                | Op::CreateVolume
                | Op::AttachVolume
                | Op::DetachVolume
                | Op::TagVolume
        )
    }

    /// A change that returns nothing but success, so it can be acknowledged
    /// without being made ([`Fault::Unapplied`]); a launch or a volume creation
    /// must return what it made.
    pub fn can_be_unapplied(self) -> bool {
        self.is_change() && !matches!(self, Op::LaunchInstance | Op::CreateVolume)
    }

    /// The trait method's name (`move_client_ip`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::MoveClientIp => "move_client_ip",
            Op::IpHolders => "ip_holders",
            Op::Isolate => "isolate",
            Op::IsIsolated => "is_isolated",
            Op::ForceStop => "force_stop",
            Op::InstanceState => "instance_state",
            Op::InstanceHealth => "instance_health",
            Op::LaunchZone => "launch_zone",
            Op::LaunchInstance => "launch_instance",
            Op::DescribeInstance => "describe_instance",
            Op::TerminateInstance => "terminate_instance",
            Op::CreateVolume => "create_volume",
            Op::DescribeVolumes => "describe_volumes",
            Op::AttachVolume => "attach_volume",
            Op::DetachVolume => "detach_volume",
            Op::TagVolume => "tag_volume",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a call instead of (or before) the wrapped cloud's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then call the wrapped cloud.
    Delay(Duration),
    /// Never answer: the call stays pending until the caller drops it.
    Hang,
    /// Answer this error without calling the wrapped cloud.
    Error(CloudError),
    /// Answer success without calling the wrapped cloud. Only for the changes
    /// ([`Op::is_change`]: move the IP, isolate, force stop); the queries have no
    /// answer to invent, so [`FaultyCloud::inject`] refuses it for them.
    Unapplied,
}

#[derive(Debug)]
struct Queued {
    fault: Fault,
    /// Calls left; `None`: every call until cleared.
    left: Option<u32>,
}

#[derive(Debug, Default)]
struct State {
    faults: BTreeMap<Op, VecDeque<Queued>>,
    calls: BTreeMap<Op, u32>,
    faulted: BTreeMap<Op, u32>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FaultyCloud<C> {
    inner: C,
    state: Mutex<State>,
}

impl<C: Cloud> FaultyCloud<C> {
    /// Wrap `inner`; no fault is queued.
    pub fn new(inner: C) -> Self {
        FaultyCloud {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// The wrapped cloud (to set up or inspect its state).
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// Apply `fault` to the next `times` calls of `op` (`None`: every call until
    /// [`FaultyCloud::clear`]), after the faults already queued for `op`.
    ///
    /// # Panics
    ///
    /// If `fault` is [`Fault::Unapplied`] and `op` is a query: that is a mistake
    /// in the test's setup.
    pub fn inject(&self, op: Op, fault: Fault, times: Option<u32>) {
        assert!(
            op.can_be_unapplied() || fault != Fault::Unapplied,
            "Fault::Unapplied is for changes that return nothing, not for {op}"
        );
        if times == Some(0) {
            return;
        }
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(op)
            .or_default()
            .push_back(Queued { fault, left: times });
    }

    /// The next `times` calls of `op` are refused as EC2 refuses calls over its
    /// request rate (`RequestLimitExceeded`, a transient error).
    pub fn throttle(&self, op: Op, times: u32) {
        self.inject(
            op,
            Fault::Error(CloudError::Transient {
                provider: "faulty",
                op: op.as_str(),
                reason: "RequestLimitExceeded (HTTP 503): Request limit exceeded.".into(),
            }),
            Some(times),
        );
    }

    /// Every call of `op` hangs until cleared.
    pub fn hang(&self, op: Op) {
        self.inject(op, Fault::Hang, None);
    }

    /// Drop every fault queued for `op`.
    pub fn clear(&self, op: Op) {
        self.state.lock().unwrap().faults.remove(&op);
    }

    /// Calls of `op` so far (answered by a fault or not, finished or not).
    pub fn calls(&self, op: Op) -> u32 {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// Calls of `op` that met a fault so far.
    pub fn faulted(&self, op: Op) -> u32 {
        self.state
            .lock()
            .unwrap()
            .faulted
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// Count the call and take the fault that applies to it, if any.
    fn next_fault(&self, op: Op) -> Option<Fault> {
        let mut s = self.state.lock().unwrap();
        *s.calls.entry(op).or_default() += 1;
        let queue = s.faults.get_mut(&op)?;
        let front = queue.front_mut()?;
        let fault = front.fault.clone();
        if let Some(left) = &mut front.left {
            *left -= 1;
            if *left == 0 {
                queue.pop_front();
            }
        }
        *s.faulted.entry(op).or_default() += 1;
        Some(fault)
    }

    /// Apply the fault for this call of `op`: `Ok(true)` means call the wrapped
    /// cloud, `Ok(false)` answer success without calling it.
    async fn gate(&self, op: Op) -> Result<bool, CloudError> {
        match self.next_fault(op) {
            None => Ok(true),
            Some(Fault::Delay(d)) => {
                tracing::debug!(%op, ?d, "injected delay");
                tokio::time::sleep(d).await;
                Ok(true)
            }
            Some(Fault::Unapplied) => {
                tracing::debug!(%op, "change acknowledged, not applied");
                Ok(false)
            }
            Some(Fault::Hang) => {
                tracing::debug!(%op, "injected hang");
                std::future::pending::<()>().await;
                unreachable!("a pending future never completes")
            }
            Some(Fault::Error(e)) => {
                tracing::debug!(%op, error = %e, "injected error");
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl<C: Cloud> Cloud for FaultyCloud<C> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn move_client_ip(
        &self,
        client_ip: &str,
        from: &CloudServer,
        to: &CloudServer,
    ) -> Result<(), CloudError> {
        if !self.gate(Op::MoveClientIp).await? {
            return Ok(());
        }
        self.inner.move_client_ip(client_ip, from, to).await
    }

    async fn ip_holders(&self, client_ip: &str) -> Result<Vec<String>, CloudError> {
        self.gate(Op::IpHolders).await?;
        self.inner.ip_holders(client_ip).await
    }

    async fn isolate(&self, server: &CloudServer) -> Result<(), CloudError> {
        if !self.gate(Op::Isolate).await? {
            return Ok(());
        }
        self.inner.isolate(server).await
    }

    async fn is_isolated(&self, server: &CloudServer) -> Result<bool, CloudError> {
        self.gate(Op::IsIsolated).await?;
        self.inner.is_isolated(server).await
    }

    async fn force_stop(&self, server: &CloudServer) -> Result<(), CloudError> {
        if !self.gate(Op::ForceStop).await? {
            return Ok(());
        }
        self.inner.force_stop(server).await
    }

    async fn instance_state(&self, server: &CloudServer) -> Result<InstanceState, CloudError> {
        self.gate(Op::InstanceState).await?;
        self.inner.instance_state(server).await
    }

    async fn instance_health(&self, server: &CloudServer) -> Result<InstanceHealth, CloudError> {
        self.gate(Op::InstanceHealth).await?;
        self.inner.instance_health(server).await
    }

    async fn launch_zone(&self) -> Result<String, CloudError> {
        self.gate(Op::LaunchZone).await?;
        self.inner.launch_zone().await
    }

    async fn launch_instance(&self, req: &LaunchRequest) -> Result<Instance, CloudError> {
        self.gate(Op::LaunchInstance).await?;
        self.inner.launch_instance(req).await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, CloudError> {
        self.gate(Op::DescribeInstance).await?;
        self.inner.describe_instance(instance_id).await
    }

    async fn terminate_instance(&self, instance_id: &str) -> Result<(), CloudError> {
        if !self.gate(Op::TerminateInstance).await? {
            return Ok(());
        }
        self.inner.terminate_instance(instance_id).await
    }

    async fn create_volume(&self, req: &VolumeRequest) -> Result<Volume, CloudError> {
        self.gate(Op::CreateVolume).await?;
        self.inner.create_volume(req).await
    }

    async fn describe_volumes(&self, filter: &VolumeFilter) -> Result<Vec<Volume>, CloudError> {
        self.gate(Op::DescribeVolumes).await?;
        self.inner.describe_volumes(filter).await
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), CloudError> {
        if !self.gate(Op::AttachVolume).await? {
            return Ok(());
        }
        self.inner
            .attach_volume(volume_id, instance_id, device)
            .await
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), CloudError> {
        if !self.gate(Op::DetachVolume).await? {
            return Ok(());
        }
        self.inner
            .detach_volume(volume_id, instance_id, force)
            .await
    }

    async fn tag_volume(&self, volume_id: &str, tags: &[Tag]) -> Result<(), CloudError> {
        if !self.gate(Op::TagVolume).await? {
            return Ok(());
        }
        self.inner.tag_volume(volume_id, tags).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strict::StrictCloud;
    use std::time::Instant;

    fn srv(id: &str) -> CloudServer {
        CloudServer {
            server_id: id.into(),
            instance_id: format!("i-{id}"),
            interface_id: format!("eni-{id}"),
            zone: "z1".into(),
        }
    }

    fn world() -> (FaultyCloud<StrictCloud>, CloudServer, CloudServer) {
        let (a, b) = (srv("a"), srv("b"));
        let strict = StrictCloud::default();
        strict.add_server(&a);
        strict.add_server(&b);
        strict.place_ip("10.0.0.9", "eni-a");
        (FaultyCloud::new(strict), a, b)
    }

    #[tokio::test]
    async fn faults_are_consumed_in_order_then_calls_pass_through() {
        let (c, a, b) = world();
        c.throttle(Op::MoveClientIp, 2);
        c.inject(
            Op::MoveClientIp,
            Fault::Error(CloudError::Refused {
                provider: "test",
                op: "move_client_ip",
                reason: "no".into(),
            }),
            Some(1),
        );
        for _ in 0..2 {
            let e = c.move_client_ip("10.0.0.9", &a, &b).await.unwrap_err();
            assert!(e.to_string().contains("RequestLimitExceeded"), "{e}");
            assert!(matches!(e, CloudError::Transient { .. }), "{e}");
        }
        let e = c.move_client_ip("10.0.0.9", &a, &b).await.unwrap_err();
        assert!(matches!(e, CloudError::Refused { .. }), "{e}");
        // The strict cloud never saw the refused calls: the IP has not moved.
        assert_eq!(c.ip_holders("10.0.0.9").await.unwrap(), vec!["eni-a"]);
        assert!(c.inner().calls().iter().all(|s| !s.starts_with("move")));
        c.move_client_ip("10.0.0.9", &a, &b).await.unwrap();
        assert_eq!(c.ip_holders("10.0.0.9").await.unwrap(), vec!["eni-b"]);
        assert_eq!(c.calls(Op::MoveClientIp), 4);
        assert_eq!(c.faulted(Op::MoveClientIp), 3);
        assert_eq!(c.calls(Op::IpHolders), 2);
        assert_eq!(c.faulted(Op::IpHolders), 0);
    }

    #[tokio::test]
    async fn delay_then_call_and_hang_until_cleared() {
        let (c, a, _) = world();
        c.inject(
            Op::ForceStop,
            Fault::Delay(Duration::from_millis(150)),
            None,
        );
        let t0 = Instant::now();
        c.force_stop(&a).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(150));
        // The delayed call did reach the strict cloud.
        assert_eq!(
            c.inner().instance_state(&a).await.unwrap(),
            InstanceState::Stopping
        );
        c.hang(Op::InstanceState);
        let r = tokio::time::timeout(Duration::from_millis(200), c.instance_state(&a)).await;
        assert!(r.is_err(), "a hung call answered: {r:?}");
        c.clear(Op::InstanceState);
        assert_eq!(c.instance_state(&a).await.unwrap(), InstanceState::Stopping);
        assert_eq!(c.calls(Op::InstanceState), 2);
    }

    #[tokio::test]
    async fn unapplied_changes_are_acknowledged_and_not_made() {
        let (c, a, b) = world();
        c.inject(Op::MoveClientIp, Fault::Unapplied, Some(1));
        c.inject(Op::Isolate, Fault::Unapplied, Some(1));
        c.move_client_ip("10.0.0.9", &a, &b).await.unwrap();
        assert_eq!(c.ip_holders("10.0.0.9").await.unwrap(), vec!["eni-a"]);
        c.isolate(&a).await.unwrap();
        assert!(!c.is_isolated(&a).await.unwrap());
        // Next calls pass through.
        c.move_client_ip("10.0.0.9", &a, &b).await.unwrap();
        assert_eq!(c.ip_holders("10.0.0.9").await.unwrap(), vec!["eni-b"]);
        c.isolate(&a).await.unwrap();
        assert!(c.is_isolated(&a).await.unwrap());
    }

    #[tokio::test]
    async fn instance_health_passes_through_unless_faulted() {
        let (c, a, _) = world();
        c.inner().set_system_status("i-a", "impaired");
        c.throttle(Op::InstanceHealth, 1);
        let e = c.instance_health(&a).await.unwrap_err();
        assert!(matches!(e, CloudError::Transient { .. }), "{e}");
        assert_eq!(
            c.instance_health(&a).await.unwrap().system_status,
            "impaired"
        );
        assert_eq!(c.calls(Op::InstanceHealth), 2);
        assert_eq!(c.faulted(Op::InstanceHealth), 1);
    }

    #[test]
    #[should_panic(
        expected = "Fault::Unapplied is for changes that return nothing, not for ip_holders"
    )]
    fn unapplied_is_refused_for_queries() {
        let (c, _, _) = world();
        c.inject(Op::IpHolders, Fault::Unapplied, None);
    }
}
