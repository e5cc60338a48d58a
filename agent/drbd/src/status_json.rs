//! Parser for `drbdsetup status --json` output.
//!
//! The JSON keys are renamed to their events2 equivalents and fed through the
//! same merge code as events2 lines (see `merge.rs`), so both formats share
//! one model:
//!
//! | JSON key | model |
//! | --- | --- |
//! | `disk-state` | `DeviceState::disk` |
//! | `connection-state`, `peer-role`, `name` (connection) | `ConnectionInfo::connection`, `peer_role`, `conn_name` |
//! | `replication-state`, `peer-disk-state` | `PeerDeviceState::replication`, `peer_disk` |
//! | `percent-resync-done`, else `percent-in-sync` | `PeerDeviceState::done_percent` |
//! | `estimated-seconds-to-finish` | `PeerDeviceState::eta_seconds` |
//! | `db1/dt1 [MiB/s]` | `PeerDeviceState::dbdt1` |
//! | `node-id` | `ResourceState::node_id` |
//!
//! Everything else that matches an events2 key (`quorum`, `out-of-sync`,
//! `size`, ...) maps like events2; unknown keys go to `extra` stringified
//! (`true`/`false` become `yes`/`no`, objects/arrays compact JSON). `null`
//! values leave the field `None`.
//!
//! Real drbdsetup prints non-finite floats as bare `nan` / `-nan` / `inf`,
//! which is not JSON: a pre-pass ([`sanitize_non_finite`]) replaces such bare
//! tokens *outside strings* with `null`.
//!
//! `drbdsetup show --json` (configuration, objects keyed by `resource`) is not
//! status output: it yields [`ParseError::UnexpectedJson`].

use serde_json::{Map, Value};

use crate::error::ParseError;
use crate::merge::{merge_connection, merge_device, merge_peer_device, merge_resource};
use crate::model::{
    synthetic_peer_id, ConnectionInfo, DeviceState, PeerDeviceState, ResourceState,
};

/// Replace bare `nan`, `-nan`, `inf`, `-inf`, `infinity`, `NaN`, `Infinity`
/// (any case, optional sign) outside JSON strings with `null`.
pub fn sanitize_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            continue;
        }
        let starts_word = c.is_ascii_alphabetic()
            || ((c == '-' || c == '+')
                && chars.peek().is_some_and(|(_, n)| n.is_ascii_alphabetic()));
        if !starts_word {
            out.push(c);
            continue;
        }
        let mut end = i + c.len_utf8();
        while let Some(&(j, n)) = chars.peek() {
            if n.is_ascii_alphanumeric() {
                end = j + n.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let word = &text[i..end];
        let bare = word.trim_start_matches(['-', '+']).to_ascii_lowercase();
        if matches!(bare.as_str(), "nan" | "inf" | "infinity") {
            out.push_str("null");
        } else {
            out.push_str(word);
        }
    }
    out
}

fn load(text: &str) -> Result<Value, ParseError> {
    serde_json::from_str(&sanitize_non_finite(text)).map_err(|e| ParseError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

fn unexpected(path: &str, message: impl Into<String>) -> ParseError {
    ParseError::UnexpectedJson {
        path: path.to_string(),
        message: message.into(),
    }
}

fn as_object<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>, ParseError> {
    v.as_object()
        .ok_or_else(|| unexpected(path, format!("expected an object, found {v}")))
}

fn as_array<'v>(v: Option<&'v Value>, path: &str) -> Result<&'v [Value], ParseError> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(unexpected(
            path,
            format!("expected an array, found {other}"),
        )),
    }
}

/// A scalar JSON value as the string events2 would print (`null` → None).
fn stringify(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Bool(true) => Some("yes".into()),
        Value::Bool(false) => Some("no".into()),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Convert an object's scalar members to `(events2-key, value)` pairs,
/// skipping the `children` keys.
fn pairs(
    obj: &Map<String, Value>,
    rename: &dyn Fn(&str) -> Option<&'static str>,
    children: &[&str],
) -> Vec<(String, String)> {
    obj.iter()
        .filter(|(k, _)| !children.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let key = rename(k).map(str::to_string).unwrap_or_else(|| k.clone());
            stringify(v).map(|s| (key, s))
        })
        .collect()
}

fn as_refs(p: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    p.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

fn get_u32(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u32>, ParseError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ParseError::InvalidNumber {
                line: path.to_string(),
                key: key.to_string(),
                value: v.to_string(),
            }),
    }
}

/// Parse `drbdsetup status --json` output (an array of resources; a single
/// resource object is accepted too).
pub fn parse_status_json(text: &str) -> Result<Vec<ResourceState>, ParseError> {
    let doc = load(text)?;
    let items: Vec<&Value> = match &doc {
        Value::Array(a) => a.iter().collect(),
        v @ Value::Object(_) => vec![v],
        other => return Err(unexpected("$", format!("expected an array, found {other}"))),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| resource_from_json(v, &format!("$[{i}]")))
        .collect()
}

/// Parse one element of a resource's `connections` array (a bare object, or
/// an array holding exactly one such object).
pub fn parse_connection_json(text: &str) -> Result<ConnectionInfo, ParseError> {
    let doc = load(text)?;
    match &doc {
        Value::Array(a) if a.len() == 1 => connection_from_json(&a[0], "$[0]"),
        Value::Array(a) => Err(unexpected(
            "$",
            format!("expected one connection object, found {} elements", a.len()),
        )),
        v => connection_from_json(v, "$"),
    }
}

fn resource_from_json(v: &Value, path: &str) -> Result<ResourceState, ParseError> {
    let obj = as_object(v, path)?;
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ if obj.contains_key("resource") => {
            return Err(unexpected(
                path,
                "object has \"resource\" but no \"name\": this looks like \
                 `drbdsetup show --json` configuration, not `status --json`",
            ))
        }
        _ => return Err(unexpected(path, "resource object has no string \"name\"")),
    };
    let mut r = ResourceState {
        name,
        ..Default::default()
    };
    let rename = |k: &str| match k {
        "may-promote" => Some("may_promote"),
        "promotion-score" => Some("promotion_score"),
        _ => None,
    };
    let p = pairs(obj, &rename, &["devices", "connections"]);
    merge_resource(&mut r, as_refs(&p), &|| path.to_string())?;

    for (i, dv) in as_array(obj.get("devices"), &format!("{path}.devices"))?
        .iter()
        .enumerate()
    {
        let dpath = format!("{path}.devices[{i}]");
        let d = device_from_json(dv, &dpath)?;
        r.devices.insert(d.volume, d);
    }
    for (i, cv) in as_array(obj.get("connections"), &format!("{path}.connections"))?
        .iter()
        .enumerate()
    {
        let c = connection_from_json(cv, &format!("{path}.connections[{i}]"))?;
        r.connections.insert(c.peer_node_id, c);
    }
    Ok(r)
}

fn device_from_json(v: &Value, path: &str) -> Result<DeviceState, ParseError> {
    let obj = as_object(v, path)?;
    let volume = get_u32(obj, "volume", path)?
        .ok_or_else(|| unexpected(path, "device has no \"volume\""))?;
    let mut d = DeviceState {
        volume,
        ..Default::default()
    };
    let rename = |k: &str| match k {
        "disk-state" => Some("disk"),
        _ => None,
    };
    let p = pairs(obj, &rename, &[]);
    merge_device(&mut d, as_refs(&p), &|| path.to_string())?;
    Ok(d)
}

fn connection_from_json(v: &Value, path: &str) -> Result<ConnectionInfo, ParseError> {
    let obj = as_object(v, path)?;
    let conn_name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let peer_node_id = match get_u32(obj, "peer-node-id", path)? {
        Some(id) => id,
        None if !conn_name.is_empty() => synthetic_peer_id(&conn_name),
        None => {
            return Err(unexpected(
                path,
                "connection has no \"peer-node-id\" or \"name\"",
            ))
        }
    };
    let mut c = ConnectionInfo {
        peer_node_id,
        conn_name,
        ..Default::default()
    };
    let rename = |k: &str| match k {
        "name" => Some("conn-name"),
        "connection-state" => Some("connection"),
        "peer-role" => Some("role"),
        _ => None,
    };
    let p = pairs(obj, &rename, &["peer_devices", "peer-devices", "paths"]);
    merge_connection(&mut c, as_refs(&p), &|| path.to_string())?;

    let pd_key = if obj.contains_key("peer_devices") {
        "peer_devices"
    } else {
        "peer-devices"
    };
    for (i, pv) in as_array(obj.get(pd_key), &format!("{path}.{pd_key}"))?
        .iter()
        .enumerate()
    {
        let pd = peer_device_from_json(pv, &format!("{path}.{pd_key}[{i}]"))?;
        c.peer_devices.insert(pd.volume, pd);
    }
    if let Some(paths) = obj.get("paths") {
        // Not printed by the drbdsetup versions we have samples of; kept.
        c.extra.insert("paths".into(), paths.to_string());
    }
    Ok(c)
}

fn peer_device_from_json(v: &Value, path: &str) -> Result<PeerDeviceState, ParseError> {
    let obj = as_object(v, path)?;
    let volume = get_u32(obj, "volume", path)?
        .ok_or_else(|| unexpected(path, "peer device has no \"volume\""))?;
    let mut p = PeerDeviceState {
        volume,
        ..Default::default()
    };
    let has_resync_done = obj.contains_key("percent-resync-done");
    let rename = move |k: &str| match k {
        "replication-state" => Some("replication"),
        "peer-disk-state" => Some("peer-disk"),
        "estimated-seconds-to-finish" => Some("eta"),
        "db1/dt1 [MiB/s]" => Some("dbdt1"),
        "percent-resync-done" => Some("done"),
        "percent-in-sync" if !has_resync_done => Some("done"),
        _ => None,
    };
    let pairs = pairs(obj, &rename, &[]);
    merge_peer_device(&mut p, as_refs(&pairs), &|| path.to_string())?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_only_touches_bare_tokens() {
        let s = sanitize_non_finite(
            r#"{"a": nan, "b": -nan, "c": "nan", "d": [inf, true, -1], "e\"nan": NaN}"#,
        );
        assert_eq!(
            s,
            r#"{"a": null, "b": null, "c": "nan", "d": [null, true, -1], "e\"nan": null}"#
        );
    }
}
