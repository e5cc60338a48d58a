//! Merging `key:value` pairs into the model structs.
//!
//! Both the events2 parser and the `status --json` parser reduce their input
//! to `(events2-key, value-string)` pairs and call the functions here, so the
//! two formats share one interpretation of every key:
//!
//! * known keys set their typed field (only the keys present are touched,
//!   which is what makes `change` lines merge);
//! * identity keys (`name`, `volume`, `peer-node-id`, `conn-name`, ...) are
//!   consumed by the caller and ignored here;
//! * unknown keys, and values a known key cannot interpret (a bool key with a
//!   word other than yes/no), go to `extra`, so nothing is dropped;
//! * a non-numeric value for a numeric key is [`ParseError::InvalidNumber`].
//!
//! `ctx` renders the input (the events2 line or a JSON path) for errors.

use std::collections::BTreeMap;

use crate::error::ParseError;
use crate::model::{
    bool_word, ConnectionInfo, DeviceState, PathState, PeerDeviceState, ResourceState,
};

type Ctx<'a> = &'a dyn Fn() -> String;

fn bad_number(ctx: Ctx<'_>, key: &str, value: &str) -> ParseError {
    ParseError::InvalidNumber {
        line: ctx(),
        key: key.to_string(),
        value: value.to_string(),
    }
}

pub(crate) fn parse_u64(ctx: Ctx<'_>, key: &str, v: &str) -> Result<u64, ParseError> {
    v.parse().map_err(|_| bad_number(ctx, key, v))
}

pub(crate) fn parse_u32(ctx: Ctx<'_>, key: &str, v: &str) -> Result<u32, ParseError> {
    v.parse().map_err(|_| bad_number(ctx, key, v))
}

/// Non-finite values (`nan`, `inf`) mean "unknown" and become `None`.
fn parse_f64(ctx: Ctx<'_>, key: &str, v: &str) -> Result<Option<f64>, ParseError> {
    let f: f64 = v.parse().map_err(|_| bad_number(ctx, key, v))?;
    Ok(f.is_finite().then_some(f))
}

/// Set a yes/no field; a word that is neither keeps the raw value in `extra`.
fn set_bool(field: &mut Option<bool>, extra: &mut BTreeMap<String, String>, key: &str, v: &str) {
    *field = bool_word(v);
    if field.is_some() {
        extra.remove(key);
    } else {
        extra.insert(key.to_string(), v.to_string());
    }
}

pub(crate) fn merge_resource<'a>(
    r: &mut ResourceState,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ctx: Ctx<'_>,
) -> Result<(), ParseError> {
    for (k, v) in fields {
        match k {
            "name" => {}
            "role" => r.role = v.into(),
            "suspended" => {
                // DRBD prints `no` or the suspend reason(s): user, quorum, ...
                r.suspended = Some(v != "no");
                const KNOWN: [&str; 4] = ["user", "no-data", "fencing", "quorum"];
                let reasons: Vec<&str> = v.split(',').collect();
                r.suspended_reasons.clear();
                if bool_word(v).is_some() {
                    r.extra.remove(k);
                } else if reasons.iter().all(|w| KNOWN.contains(w)) {
                    r.suspended_reasons = reasons.iter().map(|w| w.to_string()).collect();
                    r.extra.remove(k);
                } else {
                    r.extra.insert(k.into(), v.into());
                }
            }
            "may_promote" => set_bool(&mut r.may_promote, &mut r.extra, k, v),
            "promotion_score" => r.promotion_score = Some(parse_u64(ctx, k, v)?),
            "write-ordering" => r.write_ordering = Some(v.into()),
            "force-io-failures" => set_bool(&mut r.force_io_failures, &mut r.extra, k, v),
            "node-id" => r.node_id = Some(parse_u32(ctx, k, v)?),
            _ => {
                r.extra.insert(k.into(), v.into());
            }
        }
    }
    Ok(())
}

pub(crate) fn merge_device<'a>(
    d: &mut DeviceState,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ctx: Ctx<'_>,
) -> Result<(), ParseError> {
    for (k, v) in fields {
        match k {
            "name" | "volume" => {}
            "minor" => d.minor = Some(parse_u32(ctx, k, v)?),
            "disk" => d.disk = v.into(),
            "backing_dev" | "backing-dev" => d.backing_dev = Some(v.into()),
            "client" => set_bool(&mut d.client, &mut d.extra, k, v),
            "open" => set_bool(&mut d.open, &mut d.extra, k, v),
            "quorum" => set_bool(&mut d.quorum, &mut d.extra, k, v),
            "size" => d.size_kib = Some(parse_u64(ctx, k, v)?),
            "read" => d.read_kib = Some(parse_u64(ctx, k, v)?),
            "written" => d.written_kib = Some(parse_u64(ctx, k, v)?),
            "al-writes" => d.al_writes = Some(parse_u64(ctx, k, v)?),
            "bm-writes" => d.bm_writes = Some(parse_u64(ctx, k, v)?),
            "upper-pending" => d.upper_pending = Some(parse_u64(ctx, k, v)?),
            "lower-pending" => d.lower_pending = Some(parse_u64(ctx, k, v)?),
            "al-suspended" => set_bool(&mut d.al_suspended, &mut d.extra, k, v),
            "blocked" => d.blocked = Some(v.into()),
            _ => {
                d.extra.insert(k.into(), v.into());
            }
        }
    }
    Ok(())
}

pub(crate) fn merge_connection<'a>(
    c: &mut ConnectionInfo,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ctx: Ctx<'_>,
) -> Result<(), ParseError> {
    for (k, v) in fields {
        match k {
            "name" | "peer-node-id" => {}
            "conn-name" => c.conn_name = v.into(),
            "connection" => c.connection = v.into(),
            "role" => c.peer_role = v.into(),
            "congested" => set_bool(&mut c.congested, &mut c.extra, k, v),
            "ap-in-flight" => c.ap_in_flight = Some(parse_u64(ctx, k, v)?),
            "rs-in-flight" => c.rs_in_flight = Some(parse_u64(ctx, k, v)?),
            _ => {
                c.extra.insert(k.into(), v.into());
            }
        }
    }
    Ok(())
}

pub(crate) fn merge_peer_device<'a>(
    p: &mut PeerDeviceState,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ctx: Ctx<'_>,
) -> Result<(), ParseError> {
    for (k, v) in fields {
        match k {
            "name" | "peer-node-id" | "conn-name" | "volume" => {}
            "replication" => p.replication = v.into(),
            "peer-disk" => p.peer_disk = v.into(),
            "peer-client" => set_bool(&mut p.peer_client, &mut p.extra, k, v),
            "resync-suspended" => p.resync_suspended = Some(v.into()),
            "received" => p.received_kib = Some(parse_u64(ctx, k, v)?),
            "sent" => p.sent_kib = Some(parse_u64(ctx, k, v)?),
            "out-of-sync" => p.out_of_sync_kib = Some(parse_u64(ctx, k, v)?),
            "pending" => p.pending = Some(parse_u64(ctx, k, v)?),
            "unacked" => p.unacked = Some(parse_u64(ctx, k, v)?),
            "done" => p.done_percent = parse_f64(ctx, k, v)?,
            "eta" => p.eta_seconds = parse_f64(ctx, k, v)?,
            "dbdt1" => p.dbdt1 = parse_f64(ctx, k, v)?,
            _ => {
                p.extra.insert(k.into(), v.into());
            }
        }
    }
    Ok(())
}

pub(crate) fn merge_path<'a>(
    p: &mut PathState,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    for (k, v) in fields {
        match k {
            "name" | "peer-node-id" | "conn-name" => {}
            "local" => p.local = v.into(),
            "peer" => p.peer = v.into(),
            "established" => set_bool(&mut p.established, &mut p.extra, k, v),
            _ => {
                p.extra.insert(k.into(), v.into());
            }
        }
    }
}
