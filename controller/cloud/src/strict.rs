//! A strict in-memory cloud: enforces what real EC2 enforces (an IP belongs to one
//! interface at a time, a reassignment must be allowed explicitly, instances and
//! interfaces live in one zone) and records every call, so executor tests can
//! assert order and idempotence. It can also be told to fail an operation.
//!
//! A forced stop leaves the instance `Stopping`, as EC2 does, until the test says
//! otherwise: [`StrictCloud::stop_completes_after`] makes stops complete by
//! themselves (`Stopped` that long after the request), [`StrictCloud::set_state`]
//! sets a state outright. For slow, hung or throttled calls, wrap it in
//! [`crate::faulty::FaultyCloud`].
//!
//! Provisioning follows EC2 too:
//!
//! - Launches go to one zone, [`StrictCloud::set_launch_zone`] (unset: every
//!   launch is refused); a launch for another zone is refused naming both. A new
//!   instance is `Pending`, then `Running` (at the next call, or
//!   [`StrictCloud::launch_completes_after`] later), with an interface and a
//!   private IP the other operations know (the client IP can move to it).
//! - A client token names one launch (one volume creation): the same token with
//!   the same request returns the same instance (volume), whatever happened to it
//!   since; with another request it is refused, as EC2 answers
//!   `IdempotentParameterMismatch`. What is made carries the token in tag
//!   [`crate::provision::tags::CLIENT_TOKEN`], as the EC2 backend does.
//! - Termination is idempotent (unknown or terminated: fine): `ShuttingDown`,
//!   then `Terminated` ([`StrictCloud::terminate_completes_after`]), which
//!   detaches its volumes and releases the addresses of its interface.
//! - A volume is `creating`, then `available`
//!   ([`StrictCloud::volume_creation_completes_after`]). Attaching needs it
//!   `available`, in the instance's zone, the instance `running` or `stopped` and
//!   the device free; then it is `in-use`, attachment `attached`. Attaching it
//!   again to the same instance as the same device changes nothing. Detaching
//!   (forced or not) needs it attached to that instance and makes it `available`.
//!   Describing an unknown volume id fails with `NotFound`, as in EC2.
//!
//! Health follows EC2's `DescribeInstanceStatus`: a running instance's checks
//! are `ok` and a stopped one's `not-applicable`, unless
//! [`StrictCloud::set_system_status`] says otherwise; events come from
//! [`StrictCloud::inject_event`].
//!
//! [`StrictCloud::fail`] takes the trait method names (`launch_instance`,
//! `attach_volume`, ...); [`StrictCloud::calls`] records them with their
//! arguments.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::health::status;
use crate::provision::{check_client_token, check_tags, merge_tags, tags};
use crate::{
    Cloud, CloudError, CloudServer, Instance, InstanceHealth, InstanceState, LaunchRequest,
    ScheduledEvent, Tag, Volume, VolumeAttachment, VolumeFilter, VolumeRequest, VolumeState,
};

const NAME: &str = "strict";

/// What the strict cloud knows of an instance besides its state.
#[derive(Debug, Clone)]
struct InstanceInfo {
    zone: String,
    interface_id: String,
    private_ip: String,
    tags: Vec<Tag>,
}

/// A volume and when its creation was requested.
#[derive(Debug, Clone)]
struct VolumeRecord {
    volume: Volume,
    created_at: Instant,
}

/// The request a client token was first used with: zone, tags sorted, size
/// (volumes only).
type TokenKey = (String, Vec<Tag>, u64);

fn token_key(zone: &str, tags: &[Tag], size_gib: u64) -> TokenKey {
    let mut t = tags.to_vec();
    t.sort();
    (zone.to_string(), t, size_gib)
}

#[derive(Debug, Default)]
struct Inner {
    /// instance id -> state
    instances: BTreeMap<String, InstanceState>,
    /// interface id -> instance id
    interfaces: BTreeMap<String, String>,
    /// ip -> interface id (one holder at most)
    ips: BTreeMap<String, String>,
    isolated: BTreeSet<String>,
    /// instance id -> when its forced stop was requested
    stop_requested: BTreeMap<String, Instant>,
    /// How long a requested stop takes; `None`: it never completes by itself.
    stop_time: Option<Duration>,
    fail: BTreeSet<&'static str>,
    calls: Vec<String>,
    /// instance id -> zone, interface, address, tags (every instance the cloud
    /// knows: added with `add_server` or launched)
    info: BTreeMap<String, InstanceInfo>,
    /// The zone launches go to; `None`: launches are refused.
    launch_zone: Option<String>,
    /// instance id -> when it was launched, while `Pending`
    launched_at: BTreeMap<String, Instant>,
    /// How long a launch stays `Pending` (zero: until the next call).
    launch_time: Duration,
    /// instance id -> when its termination was requested, while `ShuttingDown`
    terminate_requested: BTreeMap<String, Instant>,
    /// How long a termination stays `ShuttingDown` (zero: until the next call).
    terminate_time: Duration,
    /// Instances made by `launch_instance`, in launch order.
    launched: Vec<String>,
    /// client token -> (request, instance id)
    launch_tokens: BTreeMap<String, (TokenKey, String)>,
    volumes: BTreeMap<String, VolumeRecord>,
    /// How long a volume stays `creating` (zero: until the next call).
    volume_time: Duration,
    /// client token -> (request, volume id)
    volume_tokens: BTreeMap<String, (TokenKey, String)>,
    /// Ids handed out so far (instances, interfaces, addresses, volumes).
    next_id: u64,
    /// instance id -> system status set by the test (else from the state)
    system_status: BTreeMap<String, String>,
    /// instance id -> events injected by the test
    events: BTreeMap<String, Vec<ScheduledEvent>>,
}

impl Inner {
    /// Apply the state changes that time has completed: stops, launches,
    /// terminations, volume creations.
    fn settle(&mut self) {
        if let Some(t) = self.stop_time {
            let done: Vec<String> = self
                .stop_requested
                .iter()
                .filter(|(_, at)| at.elapsed() >= t)
                .map(|(id, _)| id.clone())
                .collect();
            for id in done {
                self.stop_requested.remove(&id);
                if let Some(st) = self.instances.get_mut(&id) {
                    if *st == InstanceState::Stopping {
                        *st = InstanceState::Stopped;
                    }
                }
            }
        }
        let launch_time = self.launch_time;
        let started: Vec<String> = self
            .launched_at
            .iter()
            .filter(|(_, at)| at.elapsed() >= launch_time)
            .map(|(id, _)| id.clone())
            .collect();
        for id in started {
            self.launched_at.remove(&id);
            if let Some(st) = self.instances.get_mut(&id) {
                if *st == InstanceState::Pending {
                    *st = InstanceState::Running;
                }
            }
        }
        let terminate_time = self.terminate_time;
        let gone: Vec<String> = self
            .terminate_requested
            .iter()
            .filter(|(_, at)| at.elapsed() >= terminate_time)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.terminate_requested.remove(&id);
            self.instances.insert(id.clone(), InstanceState::Terminated);
            self.release(&id);
        }
        let volume_time = self.volume_time;
        for r in self.volumes.values_mut() {
            if r.volume.state == VolumeState::Creating && r.created_at.elapsed() >= volume_time {
                r.volume.state = VolumeState::Available;
            }
        }
    }

    /// What EC2 does when an instance is terminated: its (non-root) volumes are
    /// detached and the addresses of its interfaces are released.
    fn release(&mut self, instance_id: &str) {
        for r in self.volumes.values_mut() {
            if r.volume
                .attachments
                .iter()
                .any(|a| a.instance_id == instance_id)
            {
                r.volume
                    .attachments
                    .retain(|a| a.instance_id != instance_id);
                if r.volume.attachments.is_empty() {
                    r.volume.state = VolumeState::Available;
                }
            }
        }
        let enis: BTreeSet<String> = self
            .interfaces
            .iter()
            .filter(|(_, i)| *i == instance_id)
            .map(|(e, _)| e.clone())
            .collect();
        self.ips.retain(|_, e| !enis.contains(e));
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn describe(&self, instance_id: &str) -> Option<Instance> {
        let state = self.instances.get(instance_id)?.clone();
        let info = self.info.get(instance_id);
        Some(Instance {
            instance_id: instance_id.to_string(),
            interface_id: info.map(|i| i.interface_id.clone()).unwrap_or_default(),
            private_ip: info.map(|i| i.private_ip.clone()).unwrap_or_default(),
            zone: info.map(|i| i.zone.clone()).unwrap_or_default(),
            state,
            tags: info.map(|i| i.tags.clone()).unwrap_or_default(),
        })
    }

    fn volume(&self, volume_id: &str) -> Result<&VolumeRecord, CloudError> {
        self.volumes
            .get(volume_id)
            .ok_or_else(|| CloudError::NotFound {
                provider: NAME,
                what: "volume",
                id: volume_id.to_string(),
            })
    }
}

fn refused(op: &'static str, reason: String) -> CloudError {
    CloudError::Refused {
        provider: NAME,
        op,
        reason,
    }
}

/// The refusal EC2 answers (`IdempotentParameterMismatch`) when a client token
/// comes back with another request.
fn token_mismatch(
    op: &'static str,
    token: &str,
    what: &str,
    id: &str,
    first: &TokenKey,
) -> CloudError {
    refused(
        op,
        format!(
            "IdempotentParameterMismatch: client token {token} made {what} {id} with other parameters (zone {}, tags {:?}{}); use a new token for a different request",
            first.0,
            first.1,
            if first.2 > 0 { format!(", {} GiB", first.2) } else { String::new() }
        ),
    )
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct StrictCloud {
    inner: Mutex<Inner>,
}

impl StrictCloud {
    /// Add a running instance with its interface.
    pub fn add_server(&self, s: &CloudServer) {
        let mut i = self.inner.lock().unwrap();
        i.instances
            .insert(s.instance_id.clone(), InstanceState::Running);
        i.interfaces
            .insert(s.interface_id.clone(), s.instance_id.clone());
        i.info.insert(
            s.instance_id.clone(),
            InstanceInfo {
                zone: s.zone.clone(),
                interface_id: s.interface_id.clone(),
                private_ip: String::new(),
                tags: Vec::new(),
            },
        );
    }

    /// Add a volume as it is (a file server's existing volume, attached to it or
    /// not). Its zone and attachments are taken as given.
    pub fn add_volume(&self, v: &Volume) {
        self.inner.lock().unwrap().volumes.insert(
            v.volume_id.clone(),
            VolumeRecord {
                volume: v.clone(),
                created_at: Instant::now(),
            },
        );
    }

    /// The zone launches go to (EC2: the launch template's subnet's zone).
    pub fn set_launch_zone(&self, zone: &str) {
        self.inner.lock().unwrap().launch_zone = Some(zone.into());
    }

    /// From now on a launched instance stays `Pending` this long (default: until
    /// the next call).
    pub fn launch_completes_after(&self, after: Duration) {
        self.inner.lock().unwrap().launch_time = after;
    }

    /// From now on a terminated instance stays `ShuttingDown` this long
    /// (default: until the next call).
    pub fn terminate_completes_after(&self, after: Duration) {
        self.inner.lock().unwrap().terminate_time = after;
    }

    /// From now on a new volume stays `creating` this long (default: until the
    /// next call).
    pub fn volume_creation_completes_after(&self, after: Duration) {
        self.inner.lock().unwrap().volume_time = after;
    }

    /// The instances `launch_instance` made, in launch order (a repeated token
    /// makes none).
    pub fn launched(&self) -> Vec<String> {
        self.inner.lock().unwrap().launched.clone()
    }

    /// Every volume, in id order (a test's view, not a recorded call).
    pub fn volumes(&self) -> Vec<Volume> {
        let mut i = self.inner.lock().unwrap();
        i.settle();
        i.volumes.values().map(|r| r.volume.clone()).collect()
    }

    /// Put an IP on an interface (initial placement).
    pub fn place_ip(&self, ip: &str, interface_id: &str) {
        self.inner
            .lock()
            .unwrap()
            .ips
            .insert(ip.into(), interface_id.into());
    }

    /// Set an instance's lifecycle state (an instance stopped or terminated by
    /// someone else, or a stop that completed).
    pub fn set_state(&self, instance_id: &str, state: InstanceState) {
        let mut i = self.inner.lock().unwrap();
        i.stop_requested.remove(instance_id);
        i.launched_at.remove(instance_id);
        i.terminate_requested.remove(instance_id);
        i.instances.insert(instance_id.into(), state);
    }

    /// From now on a forced stop completes by itself: the instance is `Stopped`
    /// `after` the request (`Stopping` before), as EC2 reports it.
    pub fn stop_completes_after(&self, after: Duration) {
        self.inner.lock().unwrap().stop_time = Some(after);
    }

    /// Schedule `event` for an instance, as EC2 announces a retirement or a
    /// maintenance ([`Cloud::instance_health`] lists it from now on).
    pub fn inject_event(&self, instance_id: &str, event: ScheduledEvent) {
        self.inner
            .lock()
            .unwrap()
            .events
            .entry(instance_id.into())
            .or_default()
            .push(event);
    }

    /// Drop every event injected for an instance.
    pub fn clear_events(&self, instance_id: &str) {
        self.inner.lock().unwrap().events.remove(instance_id);
    }

    /// Set an instance's system status check (`impaired`, `ok`, ...); it
    /// stays until set again.
    pub fn set_system_status(&self, instance_id: &str, status: &str) {
        self.inner
            .lock()
            .unwrap()
            .system_status
            .insert(instance_id.into(), status.into());
    }

    /// Make every call of operation `op` fail (a transient error) until cleared.
    pub fn fail(&self, op: &'static str, on: bool) {
        let mut i = self.inner.lock().unwrap();
        if on {
            i.fail.insert(op);
        } else {
            i.fail.remove(op);
        }
    }

    /// Every call made so far, as `op(args)`.
    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().unwrap().calls.clone()
    }

    fn enter(
        &self,
        op: &'static str,
        args: String,
    ) -> Result<std::sync::MutexGuard<'_, Inner>, CloudError> {
        let mut i = self.inner.lock().unwrap();
        i.settle();
        i.calls.push(format!("{op}({args})"));
        if i.fail.contains(op) {
            return Err(CloudError::Transient {
                provider: NAME,
                op,
                reason: "injected failure".into(),
            });
        }
        Ok(i)
    }
}

fn known(i: &Inner, s: &CloudServer) -> Result<(), CloudError> {
    if !i.instances.contains_key(&s.instance_id) {
        return Err(CloudError::NotFound {
            provider: NAME,
            what: "instance",
            id: s.instance_id.clone(),
        });
    }
    if i.interfaces.get(&s.interface_id) != Some(&s.instance_id) {
        return Err(CloudError::NotFound {
            provider: NAME,
            what: "interface",
            id: s.interface_id.clone(),
        });
    }
    Ok(())
}

#[async_trait::async_trait]
impl Cloud for StrictCloud {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn move_client_ip(
        &self,
        client_ip: &str,
        from: &CloudServer,
        to: &CloudServer,
    ) -> Result<(), CloudError> {
        let mut i = self.enter(
            "move_client_ip",
            format!("{client_ip}, {}, {}", from.server_id, to.server_id),
        )?;
        known(&i, from)?;
        known(&i, to)?;
        if from.zone != to.zone {
            return Err(CloudError::Refused {
                provider: NAME,
                op: "move_client_ip",
                reason: format!(
                    "{} is in {} and {} in {}: a private IP cannot move across zones",
                    from.server_id, from.zone, to.server_id, to.zone
                ),
            });
        }
        match i.ips.get(client_ip) {
            Some(h) if *h != from.interface_id && *h != to.interface_id => {
                return Err(CloudError::Refused {
                    provider: NAME,
                    op: "move_client_ip",
                    reason: format!("{client_ip} is held by an unrelated interface {h}"),
                })
            }
            _ => {}
        }
        i.ips.insert(client_ip.into(), to.interface_id.clone());
        Ok(())
    }

    async fn ip_holders(&self, client_ip: &str) -> Result<Vec<String>, CloudError> {
        let i = self.enter("ip_holders", client_ip.into())?;
        Ok(i.ips.get(client_ip).cloned().into_iter().collect())
    }

    async fn isolate(&self, server: &CloudServer) -> Result<(), CloudError> {
        let mut i = self.enter("isolate", server.server_id.clone())?;
        known(&i, server)?;
        i.isolated.insert(server.instance_id.clone());
        Ok(())
    }

    async fn is_isolated(&self, server: &CloudServer) -> Result<bool, CloudError> {
        let i = self.enter("is_isolated", server.server_id.clone())?;
        Ok(i.isolated.contains(&server.instance_id))
    }

    async fn force_stop(&self, server: &CloudServer) -> Result<(), CloudError> {
        let mut i = self.enter("force_stop", server.server_id.clone())?;
        known(&i, server)?;
        let st = i.instances.get_mut(&server.instance_id).expect("known");
        if matches!(st, InstanceState::Running | InstanceState::Pending) {
            *st = InstanceState::Stopping;
            i.stop_requested
                .insert(server.instance_id.clone(), Instant::now());
        }
        Ok(())
    }

    async fn instance_state(&self, server: &CloudServer) -> Result<InstanceState, CloudError> {
        let i = self.enter("instance_state", server.server_id.clone())?;
        i.instances
            .get(&server.instance_id)
            .cloned()
            .ok_or_else(|| CloudError::NotFound {
                provider: NAME,
                what: "instance",
                id: server.instance_id.clone(),
            })
    }

    async fn instance_health(&self, server: &CloudServer) -> Result<InstanceHealth, CloudError> {
        let i = self.enter("instance_health", server.server_id.clone())?;
        let state = i
            .instances
            .get(&server.instance_id)
            .ok_or_else(|| CloudError::NotFound {
                provider: NAME,
                what: "instance",
                id: server.instance_id.clone(),
            })?;
        let checked = if *state == InstanceState::Running {
            status::OK
        } else {
            status::NOT_APPLICABLE
        };
        Ok(InstanceHealth {
            system_status: i
                .system_status
                .get(&server.instance_id)
                .cloned()
                .unwrap_or_else(|| checked.into()),
            instance_status: checked.into(),
            events: i
                .events
                .get(&server.instance_id)
                .cloned()
                .unwrap_or_default(),
        })
    }

    async fn launch_zone(&self) -> Result<String, CloudError> {
        let i = self.enter("launch_zone", String::new())?;
        i.launch_zone.clone().ok_or_else(|| {
            refused(
                "launch_zone",
                "no launch zone is set (StrictCloud::set_launch_zone)".into(),
            )
        })
    }

    async fn launch_instance(&self, req: &LaunchRequest) -> Result<Instance, CloudError> {
        const OP: &str = "launch_instance";
        let mut i = self.enter(OP, format!("{}, {}", req.client_token, req.zone))?;
        check_client_token(NAME, OP, &req.client_token)?;
        check_tags(NAME, OP, &req.tags)?;
        let Some(zone) = i.launch_zone.clone() else {
            return Err(refused(
                OP,
                "no launch zone is set (StrictCloud::set_launch_zone)".into(),
            ));
        };
        if zone != req.zone {
            return Err(refused(
                OP,
                format!(
                    "the launch template launches in zone {zone}, not in zone {}: a server there could not attach the pair's volumes",
                    req.zone
                ),
            ));
        }
        let key = token_key(&req.zone, &req.tags, 0);
        if let Some((first, id)) = i.launch_tokens.get(&req.client_token) {
            if *first != key {
                return Err(token_mismatch(OP, &req.client_token, "instance", id, first));
            }
            let id = id.clone();
            return Ok(i.describe(&id).expect("a launched instance is known"));
        }
        let n = i.next_id();
        let id = format!("i-launched-{n}");
        let eni = format!("eni-launched-{n}");
        let mut tags = req.tags.clone();
        tags.push((tags::CLIENT_TOKEN.to_string(), req.client_token.clone()));
        i.instances.insert(id.clone(), InstanceState::Pending);
        i.interfaces.insert(eni.clone(), id.clone());
        i.info.insert(
            id.clone(),
            InstanceInfo {
                zone,
                interface_id: eni,
                private_ip: format!("10.250.{}.{}", n / 250, n % 250 + 4),
                tags,
            },
        );
        i.launched_at.insert(id.clone(), Instant::now());
        i.launched.push(id.clone());
        i.launch_tokens
            .insert(req.client_token.clone(), (key, id.clone()));
        Ok(i.describe(&id).expect("just added"))
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, CloudError> {
        let i = self.enter("describe_instance", instance_id.into())?;
        Ok(i.describe(instance_id))
    }

    async fn terminate_instance(&self, instance_id: &str) -> Result<(), CloudError> {
        let mut i = self.enter("terminate_instance", instance_id.into())?;
        match i.instances.get(instance_id) {
            None | Some(InstanceState::ShuttingDown | InstanceState::Terminated) => Ok(()),
            Some(_) => {
                i.stop_requested.remove(instance_id);
                i.launched_at.remove(instance_id);
                i.instances
                    .insert(instance_id.into(), InstanceState::ShuttingDown);
                i.terminate_requested
                    .insert(instance_id.into(), Instant::now());
                Ok(())
            }
        }
    }

    async fn create_volume(&self, req: &VolumeRequest) -> Result<Volume, CloudError> {
        const OP: &str = "create_volume";
        let mut i = self.enter(
            OP,
            format!("{}, {}, {}", req.client_token, req.zone, req.size_gib),
        )?;
        check_client_token(NAME, OP, &req.client_token)?;
        check_tags(NAME, OP, &req.tags)?;
        if req.size_gib == 0 {
            return Err(refused(OP, "a volume of 0 GiB cannot be created".into()));
        }
        if req.zone.is_empty() {
            return Err(refused(OP, "no zone given for the volume".into()));
        }
        let key = token_key(&req.zone, &req.tags, req.size_gib);
        if let Some((first, id)) = i.volume_tokens.get(&req.client_token) {
            if *first != key {
                return Err(token_mismatch(OP, &req.client_token, "volume", id, first));
            }
            return Ok(i.volume(id)?.volume.clone());
        }
        let id = format!("vol-created-{}", i.next_id());
        let mut tags = req.tags.clone();
        tags.push((tags::CLIENT_TOKEN.to_string(), req.client_token.clone()));
        let volume = Volume {
            volume_id: id.clone(),
            zone: req.zone.clone(),
            size_gib: req.size_gib,
            state: VolumeState::Creating,
            attachments: Vec::new(),
            tags,
        };
        i.volumes.insert(
            id.clone(),
            VolumeRecord {
                volume: volume.clone(),
                created_at: Instant::now(),
            },
        );
        i.volume_tokens.insert(req.client_token.clone(), (key, id));
        Ok(volume)
    }

    async fn describe_volumes(&self, filter: &VolumeFilter) -> Result<Vec<Volume>, CloudError> {
        let i = self.enter(
            "describe_volumes",
            format!(
                "[{}], {}",
                filter.volume_ids.join(" "),
                filter.attached_to.as_deref().unwrap_or("-")
            ),
        )?;
        for id in &filter.volume_ids {
            i.volume(id)?;
        }
        Ok(i.volumes
            .values()
            .map(|r| &r.volume)
            .filter(|v| filter.volume_ids.is_empty() || filter.volume_ids.contains(&v.volume_id))
            .filter(|v| match &filter.attached_to {
                Some(inst) => v.attachments.iter().any(|a| &a.instance_id == inst),
                None => true,
            })
            .cloned()
            .collect())
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<(), CloudError> {
        const OP: &str = "attach_volume";
        let mut i = self.enter(OP, format!("{volume_id}, {instance_id}, {device}"))?;
        let v = i.volume(volume_id)?.volume.clone();
        let Some(inst) = i.describe(instance_id) else {
            return Err(CloudError::NotFound {
                provider: NAME,
                what: "instance",
                id: instance_id.to_string(),
            });
        };
        if let Some(a) = v.attachments.iter().find(|a| a.instance_id == instance_id) {
            if a.device == device {
                return Ok(());
            }
            return Err(refused(
                OP,
                format!(
                    "volume {volume_id} is already attached to {instance_id} as {}, not {device}",
                    a.device
                ),
            ));
        }
        if v.state != VolumeState::Available {
            let on: Vec<&str> = v
                .attachments
                .iter()
                .map(|a| a.instance_id.as_str())
                .collect();
            return Err(refused(
                OP,
                format!(
                    "volume {volume_id} is {} (attached to {on:?}), not available; detach it first",
                    v.state
                ),
            ));
        }
        match inst.state {
            InstanceState::Running | InstanceState::Stopped => {}
            InstanceState::Pending => {
                return Err(CloudError::Transient {
                    provider: NAME,
                    op: OP,
                    reason: format!("instance {instance_id} is still pending"),
                })
            }
            st => {
                return Err(refused(
                    OP,
                    format!("instance {instance_id} is {st}: a volume attaches to a running or stopped instance"),
                ))
            }
        }
        if v.zone != inst.zone {
            return Err(refused(
                OP,
                format!(
                    "volume {volume_id} is in zone {} and instance {instance_id} in zone {}: a volume only attaches in its own zone",
                    v.zone, inst.zone
                ),
            ));
        }
        if let Some(other) = i.volumes.values().find(|r| {
            r.volume
                .attachments
                .iter()
                .any(|a| a.instance_id == instance_id && a.device == device)
        }) {
            return Err(refused(
                OP,
                format!(
                    "device {device} of instance {instance_id} is taken by volume {}",
                    other.volume.volume_id
                ),
            ));
        }
        let r = i.volumes.get_mut(volume_id).expect("checked");
        r.volume.state = VolumeState::InUse;
        r.volume.attachments = vec![VolumeAttachment {
            instance_id: instance_id.to_string(),
            device: device.to_string(),
            state: "attached".into(),
        }];
        Ok(())
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), CloudError> {
        const OP: &str = "detach_volume";
        let mut i = self.enter(
            OP,
            format!(
                "{volume_id}, {instance_id}{}",
                if force { ", force" } else { "" }
            ),
        )?;
        let v = &i.volume(volume_id)?.volume;
        if !v.attachments.iter().any(|a| a.instance_id == instance_id) {
            let on: Vec<&str> = v
                .attachments
                .iter()
                .map(|a| a.instance_id.as_str())
                .collect();
            return Err(refused(
                OP,
                format!(
                    "volume {volume_id} is not attached to {instance_id} (it is {}, attached to {on:?})",
                    v.state
                ),
            ));
        }
        let r = i.volumes.get_mut(volume_id).expect("checked");
        r.volume
            .attachments
            .retain(|a| a.instance_id != instance_id);
        if r.volume.attachments.is_empty() {
            r.volume.state = VolumeState::Available;
        }
        Ok(())
    }

    async fn tag_volume(&self, volume_id: &str, tags: &[Tag]) -> Result<(), CloudError> {
        let mut i = self.enter(
            "tag_volume",
            format!(
                "{volume_id}, {}",
                tags.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        )?;
        check_tags(NAME, "tag_volume", tags)?;
        i.volume(volume_id)?;
        let r = i.volumes.get_mut(volume_id).expect("checked");
        merge_tags(&mut r.volume.tags, tags);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(id: &str, zone: &str) -> CloudServer {
        CloudServer {
            server_id: id.into(),
            instance_id: format!("i-{id}"),
            interface_id: format!("eni-{id}"),
            zone: zone.into(),
        }
    }

    #[tokio::test]
    async fn one_holder_zone_rule_and_idempotence() {
        let c = StrictCloud::default();
        let (a, b, x) = (srv("a", "z1"), srv("b", "z1"), srv("x", "z2"));
        for s in [&a, &b, &x] {
            c.add_server(s);
        }
        c.place_ip("198.18.0.100", "eni-a");
        c.move_client_ip("198.18.0.100", &a, &b).await.unwrap();
        c.move_client_ip("198.18.0.100", &a, &b).await.unwrap();
        assert_eq!(c.ip_holders("198.18.0.100").await.unwrap(), vec!["eni-b"]);
        let err = c.move_client_ip("198.18.0.100", &b, &x).await.unwrap_err();
        assert!(err.to_string().contains("across zones"), "{err}");
        c.force_stop(&a).await.unwrap();
        c.force_stop(&a).await.unwrap();
        assert_eq!(c.instance_state(&a).await.unwrap(), InstanceState::Stopping);
        // Stops complete by themselves once told to.
        c.stop_completes_after(Duration::from_millis(50));
        c.force_stop(&b).await.unwrap();
        assert_eq!(c.instance_state(&b).await.unwrap(), InstanceState::Stopping);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(c.instance_state(&b).await.unwrap(), InstanceState::Stopped);
        c.set_state("i-x", InstanceState::Terminated);
        assert_eq!(
            c.instance_state(&x).await.unwrap(),
            InstanceState::Terminated
        );
        c.fail("isolate", true);
        assert!(matches!(
            c.isolate(&a).await,
            Err(CloudError::Transient { .. })
        ));
        c.fail("isolate", false);
        c.isolate(&a).await.unwrap();
        assert!(c.is_isolated(&a).await.unwrap());
    }

    #[tokio::test]
    async fn health_follows_the_state_and_what_the_test_injects() {
        let c = StrictCloud::default();
        let (a, b) = (srv("a", "z1"), srv("b", "z1"));
        c.add_server(&a);
        c.add_server(&b);
        assert_eq!(c.instance_health(&a).await.unwrap(), InstanceHealth::ok());
        let ev = ScheduledEvent {
            code: crate::health::event_codes::INSTANCE_RETIREMENT.into(),
            description: "The instance is running on degraded hardware".into(),
            not_before_unix_ms: 1_700_000_000_000,
            not_after_unix_ms: None,
        };
        c.inject_event("i-a", ev.clone());
        c.set_system_status("i-a", status::IMPAIRED);
        let h = c.instance_health(&a).await.unwrap();
        assert_eq!(h.system_status, "impaired");
        assert_eq!(h.instance_status, "ok");
        assert_eq!(h.events, vec![ev]);
        // Only the instance it was injected for.
        assert_eq!(c.instance_health(&b).await.unwrap(), InstanceHealth::ok());
        c.clear_events("i-a");
        assert!(c.instance_health(&a).await.unwrap().events.is_empty());
        // A stopped instance's checks do not apply (EC2's not-applicable).
        c.set_state("i-b", InstanceState::Stopped);
        let h = c.instance_health(&b).await.unwrap();
        assert_eq!(
            (h.system_status.as_str(), h.instance_status.as_str()),
            ("not-applicable", "not-applicable")
        );
        let e = c
            .instance_health(&srv("nope", "z1"))
            .await
            .expect_err("unknown instance");
        assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
        assert!(c.calls().contains(&"instance_health(a)".to_string()));
    }

    fn launch(token: &str, zone: &str, pair: &str) -> LaunchRequest {
        LaunchRequest {
            client_token: token.into(),
            zone: zone.into(),
            tags: crate::provision::tag_list(&[(tags::PAIR, pair), (tags::PURPOSE, "spare")]),
        }
    }

    fn volume_req(token: &str, zone: &str, size_gib: u64) -> VolumeRequest {
        VolumeRequest {
            client_token: token.into(),
            zone: zone.into(),
            size_gib,
            tags: crate::provision::tag_list(&[(tags::PAIR, "fs1")]),
        }
    }

    fn refused_with(r: Result<impl std::fmt::Debug, CloudError>, want: &str) -> String {
        let e = r.unwrap_err();
        assert!(matches!(e, CloudError::Refused { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(want), "{msg:?} should mention {want:?}");
        msg
    }

    #[tokio::test]
    async fn launches_go_to_the_launch_zone_once_per_token() {
        let c = StrictCloud::default();
        refused_with(c.launch_zone().await, "no launch zone");
        refused_with(
            c.launch_instance(&launch("t1", "z1", "fs1")).await,
            "no launch zone",
        );
        c.set_launch_zone("z1");
        assert_eq!(c.launch_zone().await.unwrap(), "z1");
        let msg = refused_with(
            c.launch_instance(&launch("t1", "z2", "fs1")).await,
            "launches in zone z1, not in zone z2",
        );
        assert!(msg.starts_with("strict: launch_instance refused"), "{msg}");
        assert!(c.launched().is_empty());

        let first = c.launch_instance(&launch("t1", "z1", "fs1")).await.unwrap();
        assert_eq!(first.state, InstanceState::Pending);
        assert_eq!(first.zone, "z1");
        assert!(!first.interface_id.is_empty() && !first.private_ip.is_empty());
        assert_eq!(first.tag(tags::PAIR), Some("fs1"));
        assert_eq!(first.tag(tags::CLIENT_TOKEN), Some("t1"));
        // Same token, same request (tags in another order): the same instance,
        // now running.
        let mut again = launch("t1", "z1", "fs1");
        again.tags.reverse();
        let second = c.launch_instance(&again).await.unwrap();
        assert_eq!(second.instance_id, first.instance_id);
        assert_eq!(second.state, InstanceState::Running);
        assert_eq!(c.launched(), vec![first.instance_id.clone()]);
        // Same token, another request: EC2's IdempotentParameterMismatch.
        refused_with(
            c.launch_instance(&launch("t1", "z1", "fs2")).await,
            "IdempotentParameterMismatch",
        );
        // Bad tokens and tags are refused before anything is made.
        refused_with(
            c.launch_instance(&launch("", "z1", "fs1")).await,
            "client token",
        );
        let mut reserved = launch("t9", "z1", "fs1");
        reserved.tags.push(("aws:x".into(), "y".into()));
        refused_with(c.launch_instance(&reserved).await, "reserved");
        assert_eq!(c.launched().len(), 1);

        // Another token: another instance, with its own interface and address.
        let other = c.launch_instance(&launch("t2", "z1", "fs1")).await.unwrap();
        assert_ne!(other.instance_id, first.instance_id);
        assert_ne!(other.interface_id, first.interface_id);
        assert_ne!(other.private_ip, first.private_ip);

        // A launched instance is a server like any other: the client IP moves to it.
        let a = srv("a", "z1");
        c.add_server(&a);
        c.place_ip("198.18.0.100", "eni-a");
        let spare = CloudServer {
            server_id: "spare".into(),
            instance_id: first.instance_id.clone(),
            interface_id: first.interface_id.clone(),
            zone: "z1".into(),
        };
        c.move_client_ip("198.18.0.100", &a, &spare).await.unwrap();
        assert_eq!(
            c.ip_holders("198.18.0.100").await.unwrap(),
            vec![first.interface_id.clone()]
        );
        assert_eq!(
            c.instance_state(&spare).await.unwrap(),
            InstanceState::Running
        );
        c.force_stop(&spare).await.unwrap();
        assert_eq!(
            c.instance_state(&spare).await.unwrap(),
            InstanceState::Stopping
        );
        // Servers added by hand are described too.
        let d = c.describe_instance("i-a").await.unwrap().unwrap();
        assert_eq!((d.zone.as_str(), d.interface_id.as_str()), ("z1", "eni-a"));
        assert_eq!(c.describe_instance("i-nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn launches_and_terminations_take_the_time_they_are_given() {
        let c = StrictCloud::default();
        c.set_launch_zone("z1");
        c.launch_completes_after(Duration::from_millis(80));
        c.terminate_completes_after(Duration::from_millis(80));
        let i = c.launch_instance(&launch("t1", "z1", "fs1")).await.unwrap();
        let state = |c: &StrictCloud, id: &str| c.inner.lock().unwrap().instances[id].clone();
        c.describe_instance(&i.instance_id).await.unwrap();
        assert_eq!(state(&c, &i.instance_id), InstanceState::Pending);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let d = c.describe_instance(&i.instance_id).await.unwrap().unwrap();
        assert_eq!(d.state, InstanceState::Running);
        c.terminate_instance(&i.instance_id).await.unwrap();
        let d = c.describe_instance(&i.instance_id).await.unwrap().unwrap();
        assert_eq!(d.state, InstanceState::ShuttingDown);
        c.terminate_instance(&i.instance_id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let d = c.describe_instance(&i.instance_id).await.unwrap().unwrap();
        assert_eq!(d.state, InstanceState::Terminated);
        // The token still names the terminated instance, as on EC2.
        let again = c.launch_instance(&launch("t1", "z1", "fs1")).await.unwrap();
        assert_eq!(
            (again.instance_id.as_str(), again.state),
            (i.instance_id.as_str(), InstanceState::Terminated)
        );
    }

    #[tokio::test]
    async fn termination_is_idempotent_and_releases_volumes_and_addresses() {
        let c = StrictCloud::default();
        c.set_launch_zone("z1");
        let i = c.launch_instance(&launch("t1", "z1", "fs1")).await.unwrap();
        let v = c.create_volume(&volume_req("v1", "z1", 10)).await.unwrap();
        c.attach_volume(&v.volume_id, &i.instance_id, "/dev/xvdf")
            .await
            .unwrap();
        c.place_ip("198.18.0.100", &i.interface_id);
        c.terminate_instance("i-unknown").await.unwrap();
        c.terminate_instance(&i.instance_id).await.unwrap();
        c.terminate_instance(&i.instance_id).await.unwrap();
        let d = c.describe_instance(&i.instance_id).await.unwrap().unwrap();
        assert_eq!(d.state, InstanceState::Terminated);
        c.terminate_instance(&i.instance_id).await.unwrap();
        let vols = c.describe_volumes(&VolumeFilter::default()).await.unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].state, VolumeState::Available);
        assert!(vols[0].attachments.is_empty());
        assert!(c.ip_holders("198.18.0.100").await.unwrap().is_empty());
        // Nothing attaches to a terminated instance.
        refused_with(
            c.attach_volume(&v.volume_id, &i.instance_id, "/dev/xvdf")
                .await,
            "is Terminated",
        );
    }

    #[tokio::test]
    async fn volumes_attach_in_their_zone_when_available_and_detach_from_their_instance() {
        let c = StrictCloud::default();
        let (a, x) = (srv("a", "z1"), srv("x", "z2"));
        c.add_server(&a);
        c.add_server(&x);
        c.set_launch_zone("z1");
        c.volume_creation_completes_after(Duration::from_millis(80));
        let spare = c.launch_instance(&launch("s1", "z1", "fs1")).await.unwrap();

        let v = c.create_volume(&volume_req("v1", "z1", 10)).await.unwrap();
        assert_eq!(v.state, VolumeState::Creating);
        assert_eq!(v.tag(tags::CLIENT_TOKEN), Some("v1"));
        // Same token: the same volume; other parameters: refused.
        let same = c.create_volume(&volume_req("v1", "z1", 10)).await.unwrap();
        assert_eq!(same.volume_id, v.volume_id);
        refused_with(
            c.create_volume(&volume_req("v1", "z1", 20)).await,
            "IdempotentParameterMismatch",
        );
        refused_with(c.create_volume(&volume_req("v2", "z1", 0)).await, "0 GiB");
        // Still creating: not attachable; the instance still pending: retry.
        refused_with(
            c.attach_volume(&v.volume_id, "i-a", "/dev/xvdf").await,
            "is creating",
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.launch_completes_after(Duration::from_secs(60));
        let pending = c.launch_instance(&launch("s2", "z1", "fs1")).await.unwrap();
        assert!(matches!(
            c.attach_volume(&v.volume_id, &pending.instance_id, "/dev/xvdf")
                .await,
            Err(CloudError::Transient { .. })
        ));
        // Another zone: refused, naming both.
        refused_with(
            c.attach_volume(&v.volume_id, "i-x", "/dev/xvdf").await,
            "is in zone z1 and instance i-x in zone z2",
        );
        assert!(matches!(
            c.attach_volume("vol-nope", "i-a", "/dev/xvdf").await,
            Err(CloudError::NotFound { what: "volume", .. })
        ));
        assert!(matches!(
            c.attach_volume(&v.volume_id, "i-nope", "/dev/xvdf").await,
            Err(CloudError::NotFound {
                what: "instance",
                ..
            })
        ));

        c.attach_volume(&v.volume_id, "i-a", "/dev/xvdf")
            .await
            .unwrap();
        // Again, the same: nothing changes; as another device: refused.
        c.attach_volume(&v.volume_id, "i-a", "/dev/xvdf")
            .await
            .unwrap();
        refused_with(
            c.attach_volume(&v.volume_id, "i-a", "/dev/xvdg").await,
            "already attached to i-a as /dev/xvdf",
        );
        let got = c
            .describe_volumes(&VolumeFilter {
                volume_ids: vec![v.volume_id.clone()],
                attached_to: None,
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].state, VolumeState::InUse);
        assert!(got[0].attached_to("i-a"));
        assert_eq!(got[0].attachments[0].device, "/dev/xvdf");
        // Attached elsewhere: refused for the spare.
        refused_with(
            c.attach_volume(&v.volume_id, &spare.instance_id, "/dev/xvdf")
                .await,
            "is in-use (attached to [\"i-a\"]), not available",
        );
        // The device is taken on i-a.
        let w = c.create_volume(&volume_req("v2", "z1", 10)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused_with(
            c.attach_volume(&w.volume_id, "i-a", "/dev/xvdf").await,
            "taken by volume",
        );

        // Filters.
        let on_a = c
            .describe_volumes(&VolumeFilter {
                volume_ids: vec![],
                attached_to: Some("i-a".into()),
            })
            .await
            .unwrap();
        assert_eq!(on_a.len(), 1);
        assert_eq!(on_a[0].volume_id, v.volume_id);
        let both = c
            .describe_volumes(&VolumeFilter {
                volume_ids: vec![v.volume_id.clone(), w.volume_id.clone()],
                attached_to: None,
            })
            .await
            .unwrap();
        assert_eq!(both.len(), 2);
        assert!(matches!(
            c.describe_volumes(&VolumeFilter {
                volume_ids: vec![v.volume_id.clone(), "vol-nope".into()],
                attached_to: None,
            })
            .await,
            Err(CloudError::NotFound { what: "volume", .. })
        ));

        // Detach: only from the instance it is attached to.
        refused_with(
            c.detach_volume(&v.volume_id, &spare.instance_id, true)
                .await,
            "is not attached to",
        );
        c.detach_volume(&v.volume_id, "i-a", true).await.unwrap();
        let got = &c.volumes()[0];
        assert_eq!(got.volume_id, v.volume_id);
        assert_eq!(got.state, VolumeState::Available);
        assert!(got.attachments.is_empty());
        refused_with(
            c.detach_volume(&v.volume_id, "i-a", false).await,
            "is not attached to i-a",
        );
        // Now the spare can have it.
        c.attach_volume(&v.volume_id, &spare.instance_id, "/dev/xvdf")
            .await
            .unwrap();
        c.detach_volume(&v.volume_id, &spare.instance_id, false)
            .await
            .unwrap();

        // Tags merge.
        c.tag_volume(
            &v.volume_id,
            &crate::provision::tag_list(&[(tags::PAIR, "fs2"), (tags::KEEP, "yes")]),
        )
        .await
        .unwrap();
        let got = c
            .describe_volumes(&VolumeFilter {
                volume_ids: vec![v.volume_id.clone()],
                attached_to: None,
            })
            .await
            .unwrap();
        assert_eq!(got[0].tag(tags::PAIR), Some("fs2"));
        assert_eq!(got[0].tag(tags::KEEP), Some("yes"));
        assert_eq!(got[0].tag(tags::CLIENT_TOKEN), Some("v1"));
        assert!(matches!(
            c.tag_volume("vol-nope", &[]).await,
            Err(CloudError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn seeded_volumes_move_from_a_dead_primary_to_a_spare() {
        let c = StrictCloud::default();
        let a = srv("a", "z1");
        c.add_server(&a);
        c.add_volume(&Volume {
            volume_id: "vol-a".into(),
            zone: "z1".into(),
            size_gib: 100,
            state: VolumeState::InUse,
            attachments: vec![VolumeAttachment {
                instance_id: "i-a".into(),
                device: "/dev/xvdf".into(),
                state: "attached".into(),
            }],
            tags: vec![],
        });
        c.set_launch_zone("z1");
        let spare = c.launch_instance(&launch("s1", "z1", "fs1")).await.unwrap();
        c.describe_instance(&spare.instance_id).await.unwrap();
        c.set_state("i-a", InstanceState::Stopping);
        refused_with(
            c.attach_volume("vol-a", &spare.instance_id, "/dev/xvdf")
                .await,
            "not available",
        );
        c.detach_volume("vol-a", "i-a", true).await.unwrap();
        c.attach_volume("vol-a", &spare.instance_id, "/dev/xvdf")
            .await
            .unwrap();
        let v = &c.volumes()[0];
        assert!(v.attached_to(&spare.instance_id));
        assert!(!v.attached_to("i-a"));
    }

    #[tokio::test]
    async fn provisioning_calls_fail_on_demand_and_are_recorded() {
        let c = StrictCloud::default();
        c.set_launch_zone("z1");
        for op in [
            "launch_zone",
            "launch_instance",
            "describe_instance",
            "terminate_instance",
            "create_volume",
            "describe_volumes",
            "attach_volume",
            "detach_volume",
            "tag_volume",
        ] {
            c.fail(op, true);
        }
        let transient = |r: Result<(), CloudError>| {
            assert!(matches!(r, Err(CloudError::Transient { .. })), "{r:?}");
        };
        transient(c.launch_zone().await.map(|_| ()));
        transient(
            c.launch_instance(&launch("t1", "z1", "fs1"))
                .await
                .map(|_| ()),
        );
        transient(c.describe_instance("i-1").await.map(|_| ()));
        transient(c.terminate_instance("i-1").await);
        transient(
            c.create_volume(&volume_req("v1", "z1", 1))
                .await
                .map(|_| ()),
        );
        transient(
            c.describe_volumes(&VolumeFilter::default())
                .await
                .map(|_| ()),
        );
        transient(c.attach_volume("vol-1", "i-1", "/dev/xvdf").await);
        transient(c.detach_volume("vol-1", "i-1", true).await);
        transient(c.tag_volume("vol-1", &[]).await);
        // A failed launch made nothing.
        assert!(c.launched().is_empty());
        assert!(c.volumes().is_empty());
        c.fail("launch_instance", false);
        c.launch_instance(&launch("t1", "z1", "fs1")).await.unwrap();
        assert_eq!(
            c.calls(),
            vec![
                "launch_zone()",
                "launch_instance(t1, z1)",
                "describe_instance(i-1)",
                "terminate_instance(i-1)",
                "create_volume(v1, z1, 1)",
                "describe_volumes([], -)",
                "attach_volume(vol-1, i-1, /dev/xvdf)",
                "detach_volume(vol-1, i-1, force)",
                "tag_volume(vol-1, )",
                "launch_instance(t1, z1)",
            ]
        );
    }
}
