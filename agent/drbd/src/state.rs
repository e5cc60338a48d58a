//! The live DRBD state, built by applying events2 [`Event`]s in order.
//!
//! Semantics of [`DrbdState::apply`]:
//!
//! * `exists` / `create`: (re)initialise the object from the line. The
//!   object's own keys are reset to defaults first; its children (a resource's
//!   devices and connections, a connection's peer devices and paths) are kept.
//! * `change`: merge — only the keys on the line are updated (without
//!   `--full`, drbdsetup prints only changed keys). A change for an object not
//!   yet known creates it (parents too), starting from defaults.
//! * `destroy`: remove the object (and its children).
//! * `exists -` ([`Object::EndOfInitialDump`]): sets `initial_dump_done`.
//! * `call helper` / `response helper`: recorded in
//!   [`ResourceState::last_helper`] (creating the resource if needed); this
//!   counts as a change because the resource value changed.
//! * Unknown actions or objects (`Other(..)`), `call`/`response` on anything
//!   but `helper`, and any other action on `helper` are ignored: `Ok(false)`.
//!
//! The return value is `true` when the state differs afterwards. An event that
//! fails (missing `name`, bad number) leaves the state untouched.
//!
//! Connections are keyed by `peer-node-id`. DRBD 9.0-era lines have only
//! `conn-name`; those are keyed by [`synthetic_peer_id`]`(conn-name)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ParseError;
use crate::events2::{current_value, parse_line, Action, Event, Object};
use crate::merge::{
    merge_connection, merge_device, merge_path, merge_peer_device, merge_resource, parse_u32,
};
use crate::model::{
    synthetic_peer_id, ConnectionInfo, DeviceState, HelperEvent, PathState, PeerDeviceState,
    ResourceState,
};

/// All resources reported by one `drbdsetup events2` child.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DrbdState {
    pub resources: BTreeMap<String, ResourceState>,
    /// Set once the `exists -` line has been seen.
    pub initial_dump_done: bool,
}

fn need<'e>(ev: &'e Event, key: &str) -> Result<&'e str, ParseError> {
    ev.get(key).ok_or_else(|| ParseError::MissingKey {
        line: ev.to_string(),
        key: key.to_string(),
    })
}

fn need_u32(ev: &Event, key: &str) -> Result<u32, ParseError> {
    let v = need(ev, key)?;
    parse_u32(&|| ev.to_string(), key, v)
}

/// The connection key: `peer-node-id`, else the synthetic id of `conn-name`.
fn peer_key(ev: &Event) -> Result<u32, ParseError> {
    if ev.get("peer-node-id").is_some() {
        return need_u32(ev, "peer-node-id");
    }
    match ev.get("conn-name") {
        Some(name) => Ok(synthetic_peer_id(name)),
        None => Err(ParseError::MissingKey {
            line: ev.to_string(),
            key: "peer-node-id".into(),
        }),
    }
}

fn new_connection(id: u32, ev: &Event) -> ConnectionInfo {
    ConnectionInfo {
        peer_node_id: id,
        conn_name: ev.get("conn-name").unwrap_or_default().to_string(),
        ..Default::default()
    }
}

impl DrbdState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget everything (call when the events2 child is restarted; it will
    /// dump the full state again).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Parse and apply one line.
    pub fn apply_line(&mut self, line: &str) -> Result<bool, ParseError> {
        self.apply(&parse_line(line)?)
    }

    /// Apply one event; returns whether the state changed.
    pub fn apply(&mut self, ev: &Event) -> Result<bool, ParseError> {
        let fresh = match (&ev.action, &ev.object) {
            (_, Object::EndOfInitialDump) => {
                let changed = !self.initial_dump_done;
                self.initial_dump_done = true;
                return Ok(changed);
            }
            (_, Object::Other(_)) | (Action::Other(_), _) => return Ok(false),
            (Action::Call | Action::Response, Object::Helper) => return self.helper(ev),
            (Action::Call | Action::Response, _) | (_, Object::Helper) => return Ok(false),
            (Action::Destroy, _) => return self.destroy(ev),
            (Action::Exists | Action::Create, _) => true,
            (Action::Change, _) => false,
        };

        let name = need(ev, "name")?;
        let before = self.resources.get(name);
        let mut r = before.cloned().unwrap_or_else(|| ResourceState {
            name: name.to_string(),
            ..Default::default()
        });
        let ctx = || ev.to_string();
        let fields = || {
            ev.fields
                .iter()
                .map(|(k, v)| (k.as_str(), current_value(k, v)))
        };

        match ev.object {
            Object::Resource => {
                if fresh {
                    r = ResourceState {
                        name: name.to_string(),
                        devices: std::mem::take(&mut r.devices),
                        connections: std::mem::take(&mut r.connections),
                        last_helper: r.last_helper.take(),
                        ..Default::default()
                    };
                }
                merge_resource(&mut r, fields(), &ctx)?;
            }
            Object::Device => {
                let vol = need_u32(ev, "volume")?;
                let d = r.devices.entry(vol).or_default();
                if fresh {
                    *d = DeviceState::default();
                }
                d.volume = vol;
                merge_device(d, fields(), &ctx)?;
            }
            Object::Connection => {
                let id = peer_key(ev)?;
                let c = r
                    .connections
                    .entry(id)
                    .or_insert_with(|| new_connection(id, ev));
                if fresh {
                    *c = ConnectionInfo {
                        peer_devices: std::mem::take(&mut c.peer_devices),
                        paths: std::mem::take(&mut c.paths),
                        ..new_connection(id, ev)
                    };
                }
                merge_connection(c, fields(), &ctx)?;
            }
            Object::PeerDevice => {
                let id = peer_key(ev)?;
                let vol = need_u32(ev, "volume")?;
                let c = r
                    .connections
                    .entry(id)
                    .or_insert_with(|| new_connection(id, ev));
                let p = c.peer_devices.entry(vol).or_default();
                if fresh {
                    *p = PeerDeviceState::default();
                }
                p.volume = vol;
                merge_peer_device(p, fields(), &ctx)?;
            }
            Object::Path => {
                let id = peer_key(ev)?;
                let local = need(ev, "local")?;
                let peer = need(ev, "peer")?;
                let c = r
                    .connections
                    .entry(id)
                    .or_insert_with(|| new_connection(id, ev));
                let idx = match c
                    .paths
                    .iter()
                    .position(|p| p.local == local && p.peer == peer)
                {
                    Some(i) => i,
                    None => {
                        c.paths.push(PathState::default());
                        c.paths.len() - 1
                    }
                };
                let p = &mut c.paths[idx];
                if fresh {
                    *p = PathState::default();
                }
                merge_path(p, fields());
            }
            // Handled by the early returns above.
            Object::Helper | Object::EndOfInitialDump | Object::Other(_) => {}
        }

        let changed = before != Some(&r);
        self.resources.insert(name.to_string(), r);
        Ok(changed)
    }

    fn destroy(&mut self, ev: &Event) -> Result<bool, ParseError> {
        let name = need(ev, "name")?;
        if ev.object == Object::Resource {
            return Ok(self.resources.remove(name).is_some());
        }
        // Validate keys even when the resource is unknown.
        let (vol, id) = match ev.object {
            Object::Device => (Some(need_u32(ev, "volume")?), None),
            Object::Connection | Object::Path => (None, Some(peer_key(ev)?)),
            Object::PeerDevice => (Some(need_u32(ev, "volume")?), Some(peer_key(ev)?)),
            _ => return Ok(false),
        };
        let Some(r) = self.resources.get_mut(name) else {
            return Ok(false);
        };
        let removed = match (&ev.object, vol, id) {
            (Object::Device, Some(v), _) => r.devices.remove(&v).is_some(),
            (Object::Connection, _, Some(i)) => r.connections.remove(&i).is_some(),
            (Object::PeerDevice, Some(v), Some(i)) => r
                .connections
                .get_mut(&i)
                .is_some_and(|c| c.peer_devices.remove(&v).is_some()),
            (Object::Path, _, Some(i)) => {
                let local = need(ev, "local")?;
                let peer = need(ev, "peer")?;
                r.connections.get_mut(&i).is_some_and(|c| {
                    let n = c.paths.len();
                    c.paths.retain(|p| !(p.local == local && p.peer == peer));
                    c.paths.len() != n
                })
            }
            _ => false,
        };
        Ok(removed)
    }

    fn helper(&mut self, ev: &Event) -> Result<bool, ParseError> {
        let name = need(ev, "name")?;
        let ctx = || ev.to_string();
        let peer_node_id = if ev.get("peer-node-id").is_some() || ev.get("conn-name").is_some() {
            Some(peer_key(ev)?)
        } else {
            None
        };
        let volume = match ev.get("volume") {
            Some(_) => Some(need_u32(ev, "volume")?),
            None => None,
        };
        let status = match ev.get("status") {
            Some(v) => Some(v.parse::<i64>().map_err(|_| ParseError::InvalidNumber {
                line: ctx(),
                key: "status".into(),
                value: v.into(),
            })?),
            None => None,
        };
        let extra = ev
            .fields
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "name" | "peer-node-id" | "conn-name" | "volume" | "helper" | "status"
                )
            })
            .map(|(k, v)| (k.clone(), current_value(k, v).to_string()))
            .collect();
        let helper = HelperEvent {
            response: ev.action == Action::Response,
            helper: ev.get("helper").unwrap_or_default().to_string(),
            peer_node_id,
            volume,
            status,
            timestamp: ev.timestamp.clone(),
            extra,
        };
        let r = self
            .resources
            .entry(name.to_string())
            .or_insert_with(|| ResourceState {
                name: name.to_string(),
                ..Default::default()
            });
        let changed = r.last_helper.as_ref() != Some(&helper);
        r.last_helper = Some(helper);
        Ok(changed)
    }
}
