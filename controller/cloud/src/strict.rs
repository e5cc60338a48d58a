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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Cloud, CloudError, CloudServer, InstanceState};

const NAME: &str = "strict";

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
        i.instances.insert(instance_id.into(), state);
    }

    /// From now on a forced stop completes by itself: the instance is `Stopped`
    /// `after` the request (`Stopping` before), as EC2 reports it.
    pub fn stop_completes_after(&self, after: Duration) {
        self.inner.lock().unwrap().stop_time = Some(after);
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
        let mut i = self.enter("instance_state", server.server_id.clone())?;
        let done = match (i.stop_time, i.stop_requested.get(&server.instance_id)) {
            (Some(t), Some(at)) => at.elapsed() >= t,
            _ => false,
        };
        if done {
            i.stop_requested.remove(&server.instance_id);
            i.instances
                .insert(server.instance_id.clone(), InstanceState::Stopped);
        }
        i.instances
            .get(&server.instance_id)
            .cloned()
            .ok_or_else(|| CloudError::NotFound {
                provider: NAME,
                what: "instance",
                id: server.instance_id.clone(),
            })
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
}
