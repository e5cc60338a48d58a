//! Output formatting, byte-compatible with DRBD 9's drbdsetup.
//!
//! * `events2` lines: `exists|create|change|destroy OBJECT key:value ...`
//!   with the key order and the "which keys appear on a change line" rules
//!   of drbd-utils' own golden tests (fixtures `events2-*.txt`): identifying
//!   keys always; resource `role`/`suspended`, connection `connection`/`role`,
//!   peer-device `replication`/`peer-disk`/`resync-suspended` and path
//!   `established` only when changed; device keys, `may_promote`,
//!   `promotion_score`, `peer-client` and `done` always; with `--statistics`
//!   the object's statistics block when any counter changed; `--full` prints
//!   every key on every line.
//! * `drbdsetup status` / `drbdadm status` text (fixtures
//!   `drbdadm-status-*.txt`, `drbdsetup-status-*.txt`).
//! * `drbdsetup status --json` (fixtures `status-json-*.json`), written by
//!   hand in drbdsetup's layout and number formatting (`100.00`).
//! * `drbdsetup show [--show-defaults]`: the running configuration in
//!   drbd-utils' `show_resource_list()` / `print_options()` layout.

use std::fmt::Write as _;

use crate::config::{Config, Fencing, Protocol};
use crate::model::{drbd_addr, ConnState, HelperNote, Repl, Snapshot};

/// How a key behaves on `change` lines.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// Identifies the object: on every line, also `destroy`.
    Id,
    /// Printed on change lines only when its value changed.
    Diff,
    /// Printed on every create/change line.
    Always,
    /// Statistics: only with `--statistics` / `--full`.
    Stat,
}

struct Obj {
    kind: &'static str,
    keys: Vec<(&'static str, String, Class)>,
}

impl Obj {
    fn value(&self, k: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(n, _, _)| *n == k)
            .map(|(_, v, _)| v.as_str())
    }
}

fn yn(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn objects(s: &Snapshot) -> Vec<Obj> {
    use Class::*;
    let name = s.name.clone();
    let d = &s.device;
    let c = &s.connection;
    let pd = &s.peer_device;
    let res = Obj {
        kind: "resource",
        keys: vec![
            ("name", name.clone(), Id),
            ("role", s.role.to_string(), Diff),
            ("suspended", s.suspended.clone(), Diff),
            ("force-io-failures", yn(false), Diff),
            ("write-ordering", s.write_ordering.clone(), Stat),
            ("may_promote", yn(s.may_promote), Always),
            ("promotion_score", s.promotion_score.to_string(), Always),
        ],
    };
    let dev = Obj {
        kind: "device",
        keys: vec![
            ("name", name.clone(), Id),
            ("volume", d.volume.to_string(), Id),
            ("minor", d.minor.to_string(), Always),
            (
                "backing_dev",
                d.backing_dev.clone().unwrap_or_else(|| "none".into()),
                Always,
            ),
            ("disk", d.disk.to_string(), Always),
            ("client", yn(d.client), Always),
            ("open", yn(d.open), Always),
            ("quorum", yn(d.quorum), Always),
            ("size", d.size.to_string(), Stat),
            ("read", d.read.to_string(), Stat),
            ("written", d.written.to_string(), Stat),
            ("al-writes", d.al_writes.to_string(), Stat),
            ("bm-writes", d.bm_writes.to_string(), Stat),
            ("upper-pending", d.upper_pending.to_string(), Stat),
            ("lower-pending", d.lower_pending.to_string(), Stat),
            ("al-suspended", yn(d.al_suspended), Stat),
            ("blocked", yn(d.blocked), Stat),
        ],
    };
    let peer_id = c.peer_node_id.to_string();
    let conn = Obj {
        kind: "connection",
        keys: vec![
            ("name", name.clone(), Id),
            ("peer-node-id", peer_id.clone(), Id),
            ("conn-name", c.conn_name.clone(), Id),
            ("connection", c.connection.to_string(), Diff),
            ("role", c.peer_role.to_string(), Diff),
            ("congested", yn(c.congested), Stat),
            ("ap-in-flight", c.ap_in_flight.to_string(), Stat),
            ("rs-in-flight", c.rs_in_flight.to_string(), Stat),
        ],
    };
    let mut pkeys = vec![
        ("name", name.clone(), Id),
        ("peer-node-id", peer_id.clone(), Id),
        ("conn-name", c.conn_name.clone(), Id),
        ("volume", pd.volume.to_string(), Id),
        ("replication", pd.replication.to_string(), Diff),
        ("peer-disk", pd.peer_disk.to_string(), Diff),
        ("peer-client", yn(pd.peer_client), Always),
        ("resync-suspended", pd.resync_suspended.clone(), Diff),
    ];
    if let Some(done) = pd.done {
        pkeys.push(("done", format!("{done:.2}"), Always));
    }
    pkeys.extend([
        ("received", pd.received.to_string(), Stat),
        ("sent", pd.sent.to_string(), Stat),
        ("out-of-sync", pd.out_of_sync.to_string(), Stat),
        ("pending", pd.pending.to_string(), Stat),
        ("unacked", pd.unacked.to_string(), Stat),
    ]);
    if let Some(r) = pd.dbdt1 {
        pkeys.push(("dbdt1", format!("{r:.2}"), Stat));
    }
    if let Some(eta) = pd.eta {
        pkeys.push(("eta", eta.to_string(), Stat));
    }
    let pdev = Obj {
        kind: "peer-device",
        keys: pkeys,
    };
    let path = Obj {
        kind: "path",
        keys: vec![
            ("name", name, Id),
            ("peer-node-id", peer_id, Id),
            ("conn-name", c.conn_name.clone(), Id),
            ("local", s.path.local.clone(), Id),
            ("peer", s.path.peer.clone(), Id),
            ("established", yn(s.path.established), Diff),
        ],
    };
    vec![res, dev, conn, pdev, path]
}

/// Output options of `drbdsetup events2`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventOpts {
    /// `--statistics`
    pub statistics: bool,
    /// `--full`
    pub full: bool,
}

fn line(verb: &str, o: &Obj, stats: bool) -> String {
    let mut out = format!("{verb} {}", o.kind);
    for (k, v, c) in &o.keys {
        if *c != Class::Stat || stats {
            let _ = write!(out, " {k}:{v}");
        }
    }
    out
}

/// `exists` lines (without the final `exists -`) for a snapshot.
pub fn exists_lines(s: Option<&Snapshot>, opts: EventOpts) -> Vec<String> {
    let stats = opts.statistics || opts.full;
    match s {
        None => Vec::new(),
        Some(s) => objects(s)
            .iter()
            .map(|o| line("exists", o, stats))
            .collect(),
    }
}

/// The events2 lines for the transition `old` -> `new`.
pub fn change_lines(
    old: Option<&Snapshot>,
    new: Option<&Snapshot>,
    opts: EventOpts,
) -> Vec<String> {
    let stats = opts.statistics || opts.full;
    match (old, new) {
        (None, None) => Vec::new(),
        (None, Some(n)) => objects(n)
            .iter()
            .map(|o| line("create", o, stats))
            .collect(),
        (Some(o), None) => objects(o).iter().rev().map(destroy_line).collect(),
        (Some(o), Some(n)) => {
            let (old_objs, new_objs) = (objects(o), objects(n));
            // An object whose identifying keys changed (another peer after
            // `adjust`: del-peer + new-peer + new-path) is a different
            // object: the old one is destroyed (path, peer-device,
            // connection, as the kernel does), the new one created.
            let replaced: Vec<bool> = old_objs
                .iter()
                .zip(&new_objs)
                .map(|(a, b)| id_keys(a) != id_keys(b))
                .collect();
            let mut out = Vec::new();
            for (i, (oo, no)) in old_objs.iter().zip(&new_objs).enumerate() {
                if replaced[i] {
                    continue;
                }
                let changed = |k: &str, v: &str| oo.value(k) != Some(v);
                let state_changed = no
                    .keys
                    .iter()
                    .any(|(k, v, c)| matches!(c, Class::Diff | Class::Always) && changed(k, v))
                    || oo
                        .keys
                        .iter()
                        .any(|(k, _, c)| *c == Class::Always && no.value(k).is_none());
                let stats_changed = stats
                    && (no
                        .keys
                        .iter()
                        .any(|(k, v, c)| *c == Class::Stat && changed(k, v))
                        || oo
                            .keys
                            .iter()
                            .any(|(k, _, c)| *c == Class::Stat && no.value(k).is_none()));
                if !state_changed && !stats_changed {
                    continue;
                }
                if opts.full {
                    out.push(line("change", no, true));
                    continue;
                }
                let mut l = format!("change {}", no.kind);
                for (k, v, c) in &no.keys {
                    let print = match c {
                        Class::Id | Class::Always => true,
                        Class::Diff => changed(k, v),
                        Class::Stat => stats_changed,
                    };
                    if print {
                        let _ = write!(l, " {k}:{v}");
                    }
                }
                out.push(l);
            }
            for (i, oo) in old_objs.iter().enumerate().rev() {
                if replaced[i] {
                    out.push(destroy_line(oo));
                }
            }
            for (i, no) in new_objs.iter().enumerate() {
                if replaced[i] {
                    out.push(line("create", no, stats));
                }
            }
            out
        }
    }
}

fn id_keys(o: &Obj) -> Vec<(&'static str, &str)> {
    o.keys
        .iter()
        .filter(|(_, _, c)| *c == Class::Id)
        .map(|(k, v, _)| (*k, v.as_str()))
        .collect()
}

fn destroy_line(o: &Obj) -> String {
    let mut out = format!("destroy {}", o.kind);
    for (k, v) in id_keys(o) {
        let _ = write!(out, " {k}:{v}");
    }
    out
}

/// The `call helper` / `response helper` line of a connection-level helper
/// (drbdsetup prints no `volume:` when the kernel passed no device).
pub fn helper_line(s: &Snapshot, h: &HelperNote) -> String {
    let verb = if h.status.is_some() {
        "response"
    } else {
        "call"
    };
    let mut l = format!(
        "{verb} helper name:{} peer-node-id:{} conn-name:{} helper:{}",
        s.name, s.connection.peer_node_id, s.connection.conn_name, h.name
    );
    if let Some(st) = h.status {
        // drbdsetup prints the kernel's int with %u
        let _ = write!(l, " status:{}", st as u32);
    }
    l
}

/// A timestamp as `drbdsetup events2 --timestamps` prints it
/// (`2017-03-27T08:28:17.072611-07:00`, local time).
pub fn timestamp(ts_us: i64) -> String {
    let secs = ts_us.div_euclid(1_000_000);
    let us = ts_us.rem_euclid(1_000_000);
    // SAFETY: localtime_r only writes into the provided, zero-initialised tm.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t: libc::time_t = secs as libc::time_t;
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return format!("{secs}.{us:06}");
    }
    let off = tm.tm_gmtoff;
    let sign = if off < 0 { '-' } else { '+' };
    let off = off.abs();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{}{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        us,
        sign,
        off / 3600,
        (off % 3600) / 60
    )
}

/// Options of `drbdsetup status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusOpts {
    /// `--verbose`
    pub verbose: bool,
    /// `--statistics`
    pub statistics: bool,
}

/// `drbdsetup status` / `drbdadm status` text for one resource.
pub fn status_text(s: &Snapshot, o: StatusOpts) -> String {
    let mut out = String::new();
    let d = &s.device;
    let c = &s.connection;
    let pd = &s.peer_device;
    // resource line
    out.push_str(&s.name);
    if o.verbose {
        let _ = write!(out, " node-id:{}", s.node_id);
    }
    let _ = write!(out, " role:{}", s.role);
    if o.verbose || s.suspended != "no" {
        let _ = write!(out, " suspended:{}", s.suspended);
    }
    out.push('\n');
    if o.statistics {
        let _ = writeln!(out, "    write-ordering:{}", s.write_ordering);
    }
    // device
    out.push_str("  ");
    if o.verbose {
        let _ = write!(out, "volume:{} minor:{} ", d.volume, d.minor);
    }
    let _ = write!(out, "disk:{}", d.disk);
    if o.verbose || !d.quorum {
        let _ = write!(out, " quorum:{}", yn(d.quorum));
    }
    out.push('\n');
    if o.statistics {
        let _ = writeln!(
            out,
            "      size:{} read:{} written:{} al-writes:{} bm-writes:{} upper-pending:{} lower-pending:{} al-suspended:{} blocked:{}",
            d.size,
            d.read,
            d.written,
            d.al_writes,
            d.bm_writes,
            d.upper_pending,
            d.lower_pending,
            yn(d.al_suspended),
            yn(d.blocked)
        );
    }
    // connection
    let connected = c.connection == ConnState::Connected;
    let _ = write!(out, "  {}", c.conn_name);
    if o.verbose {
        let _ = write!(out, " node-id:{}", c.peer_node_id);
    }
    if o.verbose || !connected {
        let _ = write!(out, " connection:{}", c.connection);
    }
    if connected {
        let _ = write!(out, " role:{}", c.peer_role);
    }
    if o.statistics && connected {
        let _ = write!(
            out,
            " congested:{} ap-in-flight:{} rs-in-flight:{}",
            yn(c.congested),
            c.ap_in_flight,
            c.rs_in_flight
        );
    }
    out.push('\n');
    // peer device
    if connected {
        out.push_str("    ");
        if o.verbose {
            let _ = write!(out, "volume:{} ", pd.volume);
        }
        if o.verbose || pd.replication != Repl::Established {
            let _ = write!(out, "replication:{} ", pd.replication);
        }
        let _ = write!(out, "peer-disk:{}", pd.peer_disk);
        if pd.peer_client {
            out.push_str(" peer-client:yes");
        }
        if o.verbose || pd.resync_suspended != "no" {
            let _ = write!(out, " resync-suspended:{}", pd.resync_suspended);
        }
        if let Some(done) = pd.done {
            let _ = write!(out, " done:{done:.2}");
        }
        out.push('\n');
        if o.statistics {
            let _ = writeln!(
                out,
                "        received:{} sent:{} out-of-sync:{} pending:{} unacked:{}",
                pd.received, pd.sent, pd.out_of_sync, pd.pending, pd.unacked
            );
        }
    }
    out
}

/// One option line of `drbdsetup show`: name, value as drbdsetup prints
/// it, DRBD's default value, unit (for the comment).
struct ShowOpt {
    name: &'static str,
    value: String,
    default: Option<&'static str>,
    unit: Option<&'static str>,
}

impl ShowOpt {
    fn new(name: &'static str, value: impl Into<String>) -> ShowOpt {
        ShowOpt {
            name,
            value: value.into(),
            default: None,
            unit: None,
        }
    }

    fn default(mut self, d: &'static str) -> ShowOpt {
        self.default = Some(d);
        self
    }

    fn unit(mut self, u: &'static str) -> ShowOpt {
        self.unit = Some(u);
        self
    }
}

const INDENT: &str = "    ";

/// drbdsetup's `print_options()`: `name<pad to 16>\tvalue;` and a comment
/// with the unit and `default`; default values only with `--show-defaults`;
/// nothing (not even the section) when no option is printed.
fn show_section(out: &mut String, depth: usize, section: &str, opts: &[ShowOpt], defaults: bool) {
    let pad = INDENT.repeat(depth);
    let mut opened = false;
    for o in opts {
        let is_default = o.default == Some(o.value.as_str());
        if is_default && !defaults {
            continue;
        }
        if !opened {
            let _ = writeln!(out, "{pad}{section} {{");
            opened = true;
        }
        let _ = write!(out, "{pad}{INDENT}{:<16}\t{};", o.name, o.value);
        if o.unit.is_some() || is_default {
            out.push_str(" # ");
            if let Some(u) = o.unit {
                out.push_str(u);
            }
            if o.unit.is_some() && is_default {
                out.push_str(", ");
            }
            if is_default {
                out.push_str("default");
            }
        }
        out.push('\n');
    }
    if opened {
        let _ = writeln!(out, "{pad}}}");
    }
}

/// Milliseconds in DRBD's unit of `unit_ms`, rounded up (a sub-unit value
/// never shows as shorter than it is), clamped to DRBD's `min..=max`.
fn to_drbd_units(ms: u64, unit_ms: u64, min: u64, max: u64) -> u64 {
    ms.div_ceil(unit_ms).clamp(min, max)
}

fn double_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        if ch == '\\' || ch == '"' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// `drbdsetup show [--show-defaults]` for the running config `cfg`
/// (`conn`: the connection state; StandAlone prints `_is_standalone;`).
///
/// Printed are the options the emulator implements, with the emulator's
/// real values in DRBD's units and DRBD's option order: resource options
/// `auto-promote` (no: opening a Secondary's device never promotes it) and
/// `quorum` (off); net options `protocol`, `connect-int`
/// (`connect_retry_ms`), `ping-int` (`ping_interval_ms`),
/// `allow-two-primaries`, `after-sb-*pri`, `ping-timeout`
/// (`ping_timeout_ms`), `fencing`, `_name`; the peer device's
/// `resync-rate` (`resync_rate_kib`, when not 0 = unlimited).
pub fn show_text(cfg: &Config, conn: ConnState, defaults: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "resource {} {{", double_quote(&cfg.resource));
    show_section(
        &mut out,
        1,
        "options",
        &[
            ShowOpt::new("auto-promote", "no").default("yes"),
            ShowOpt::new("quorum", "off").default("off"),
        ],
        defaults,
    );
    let i1 = INDENT;
    let i2 = INDENT.repeat(2);
    let i3 = INDENT.repeat(3);
    let _ = writeln!(out, "{i1}_this_host {{");
    let _ = writeln!(out, "{i2}node-id\t\t\t{};", cfg.node_id);
    let _ = writeln!(out, "{i2}volume 0 {{");
    let _ = writeln!(out, "{i3}device\t\t\tminor {};", cfg.minor);
    let disk = cfg.backing_dev().display().to_string();
    let _ = writeln!(out, "{i3}disk\t\t\t{};", double_quote(&disk));
    let _ = writeln!(out, "{i3}meta-disk\t\t\tinternal;");
    let _ = writeln!(out, "{i2}}}");
    let _ = writeln!(out, "{i1}}}");
    let _ = writeln!(out, "{i1}connection {{");
    let _ = writeln!(out, "{i2}_peer_node_id {};", cfg.peer.node_id);
    let addr = |a: &std::net::SocketAddr| drbd_addr(a).replacen(':', " ", 1);
    let _ = writeln!(out, "{i2}path {{");
    let _ = writeln!(out, "{i3}_this_host {};", addr(&cfg.listen));
    let _ = writeln!(out, "{i3}_remote_host {};", addr(&cfg.peer.address));
    let _ = writeln!(out, "{i2}}}");
    if conn == ConnState::StandAlone {
        let _ = writeln!(out, "{i2}_is_standalone;");
    }
    let t = &cfg.tuning;
    let protocol = match cfg.net.protocol {
        Protocol::A => "A",
        Protocol::B => "B",
        Protocol::C => "C",
    };
    let net = [
        ShowOpt::new("protocol", protocol).default("C"),
        ShowOpt::new(
            "connect-int",
            to_drbd_units(t.connect_retry_ms, 1000, 1, 120).to_string(),
        )
        .default("10")
        .unit("seconds"),
        ShowOpt::new(
            "ping-int",
            to_drbd_units(t.ping_interval_ms, 1000, 1, 120).to_string(),
        )
        .default("10")
        .unit("seconds"),
        ShowOpt::new("allow-two-primaries", "no").default("no"),
        ShowOpt::new("after-sb-0pri", "disconnect").default("disconnect"),
        ShowOpt::new("after-sb-1pri", "disconnect").default("disconnect"),
        ShowOpt::new("after-sb-2pri", "disconnect").default("disconnect"),
        ShowOpt::new(
            "ping-timeout",
            to_drbd_units(t.ping_timeout_ms, 100, 1, 300).to_string(),
        )
        .default("5")
        .unit("1/10 seconds"),
        ShowOpt::new("fencing", cfg.net.fencing.to_string()).default(Fencing::DontCare.as_str()),
        ShowOpt::new("_name", double_quote(&cfg.peer.hostname)),
    ];
    show_section(&mut out, 2, "net", &net, defaults);
    if t.resync_rate_kib > 0 {
        let rate = [
            ShowOpt::new("resync-rate", format!("{}k", t.resync_rate_kib))
                .default("250k")
                .unit("bytes/second"),
        ];
        let mut vol = String::new();
        show_section(&mut vol, 3, "disk", &rate, defaults);
        if !vol.is_empty() {
            let _ = writeln!(out, "{i2}volume 0 {{");
            out.push_str(&vol);
            let _ = writeln!(out, "{i2}}}");
        }
    }
    let _ = writeln!(out, "{i1}}}");
    out.push_str("}\n\n");
    out
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `drbdsetup status --json` (an array of resources; empty if down).
pub fn status_json(s: Option<&Snapshot>) -> String {
    let Some(s) = s else {
        return "[\n]\n".into();
    };
    let d = &s.device;
    let c = &s.connection;
    let pd = &s.peer_device;
    let b = |v: bool| if v { "true" } else { "false" };
    let mut o = String::new();
    o.push_str("[\n{\n");
    let _ = writeln!(o, "  \"name\": {},", json_str(&s.name));
    let _ = writeln!(o, "  \"node-id\": {},", s.node_id);
    let _ = writeln!(o, "  \"role\": \"{}\",", s.role);
    let _ = writeln!(o, "  \"suspended\": {},", b(s.suspended != "no"));
    let _ = writeln!(o, "  \"write-ordering\": {},", json_str(&s.write_ordering));
    o.push_str("  \"devices\": [\n    {\n");
    let _ = writeln!(o, "      \"volume\": {},", d.volume);
    let _ = writeln!(o, "      \"minor\": {},", d.minor);
    let _ = writeln!(o, "      \"disk-state\": \"{}\",", d.disk);
    let _ = writeln!(o, "      \"client\": {},", b(d.client));
    let _ = writeln!(o, "      \"quorum\": {},", b(d.quorum));
    let _ = writeln!(o, "      \"size\": {},", d.size);
    let _ = writeln!(o, "      \"read\": {},", d.read);
    let _ = writeln!(o, "      \"written\": {},", d.written);
    let _ = writeln!(o, "      \"al-writes\": {},", d.al_writes);
    let _ = writeln!(o, "      \"bm-writes\": {},", d.bm_writes);
    let _ = writeln!(o, "      \"upper-pending\": {},", d.upper_pending);
    let _ = writeln!(o, "      \"lower-pending\": {}", d.lower_pending);
    o.push_str("    } ],\n  \"connections\": [\n    {\n");
    let _ = writeln!(o, "      \"peer-node-id\": {},", c.peer_node_id);
    let _ = writeln!(o, "      \"name\": {},", json_str(&c.conn_name));
    let _ = writeln!(o, "      \"connection-state\": \"{}\",", c.connection);
    let _ = writeln!(o, "      \"congested\": {},", b(c.congested));
    let _ = writeln!(o, "      \"peer-role\": \"{}\",", c.peer_role);
    let _ = writeln!(o, "      \"ap-in-flight\": {},", c.ap_in_flight);
    let _ = writeln!(o, "      \"rs-in-flight\": {},", c.rs_in_flight);
    o.push_str("      \"peer_devices\": [\n        {\n");
    let i = "          ";
    let _ = writeln!(o, "{i}\"volume\": {},", pd.volume);
    let _ = writeln!(o, "{i}\"replication-state\": \"{}\",", pd.replication);
    let _ = writeln!(o, "{i}\"peer-disk-state\": \"{}\",", pd.peer_disk);
    let _ = writeln!(o, "{i}\"peer-client\": {},", b(pd.peer_client));
    let _ = writeln!(
        o,
        "{i}\"resync-suspended\": {},",
        json_str(&pd.resync_suspended)
    );
    let _ = writeln!(o, "{i}\"received\": {},", pd.received);
    let _ = writeln!(o, "{i}\"sent\": {},", pd.sent);
    let _ = writeln!(o, "{i}\"out-of-sync\": {},", pd.out_of_sync);
    let _ = writeln!(o, "{i}\"pending\": {},", pd.pending);
    let _ = writeln!(o, "{i}\"unacked\": {},", pd.unacked);
    let syncing = pd.replication.is_syncing();
    let _ = writeln!(o, "{i}\"has-sync-details\": {},", b(syncing));
    let _ = writeln!(o, "{i}\"has-online-verify-details\": false,");
    let size = d.size.max(1);
    let pct_in_sync = 100.0 * (size.saturating_sub(pd.out_of_sync)) as f64 / size as f64;
    if syncing {
        let _ = writeln!(o, "{i}\"percent-in-sync\": {pct_in_sync:.2},");
        let elapsed = pd.rs_elapsed_ms;
        let done_kib = pd.rs_total.saturating_sub(pd.out_of_sync);
        let rate = if elapsed > 0 {
            done_kib as f64 / 1024.0 / (elapsed as f64 / 1000.0)
        } else {
            0.0
        };
        let _ = writeln!(o, "{i}\"rs-total\": {},", pd.rs_total * 2);
        let _ = writeln!(o, "{i}\"rs-dt-start-ms\": {elapsed},");
        let _ = writeln!(o, "{i}\"rs-paused-ms\": 0,");
        let _ = writeln!(o, "{i}\"rs-dt0-ms\": {elapsed},");
        let _ = writeln!(o, "{i}\"rs-db0-sectors\": {},", done_kib * 2);
        let _ = writeln!(o, "{i}\"rs-dt1-ms\": {elapsed},");
        let _ = writeln!(o, "{i}\"rs-db1-sectors\": {},", done_kib * 2);
        let _ = writeln!(o, "{i}\"rs-failed\": 0,");
        let _ = writeln!(o, "{i}\"rs-same-csum\": 0,");
        let _ = writeln!(o, "{i}\"want\": 0.00,");
        let _ = writeln!(o, "{i}\"db0/dt0 [MiB/s]\": {rate:.2},");
        let _ = writeln!(
            o,
            "{i}\"db1/dt1 [MiB/s]\": {:.2},",
            pd.dbdt1.unwrap_or(rate)
        );
        let _ = writeln!(
            o,
            "{i}\"estimated-seconds-to-finish\": {},",
            pd.eta.unwrap_or(0)
        );
        let _ = writeln!(o, "{i}\"db/dt [MiB/s]\": {rate:.2},");
        let _ = writeln!(
            o,
            "{i}\"percent-resync-done\": {:.2}",
            pd.done.unwrap_or(0.0)
        );
    } else {
        let _ = writeln!(o, "{i}\"percent-in-sync\": {pct_in_sync:.2}");
    }
    o.push_str("        } ]\n    } ]\n}\n]\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn snap() -> Snapshot {
        Snapshot {
            name: "some-resource".into(),
            node_id: 0,
            role: Role::Secondary,
            suspended: "no".into(),
            write_ordering: "flush".into(),
            may_promote: false,
            promotion_score: 0,
            device: DeviceSnap {
                volume: 0,
                minor: 1000,
                backing_dev: None,
                disk: DiskState::Diskless,
                client: false,
                open: false,
                quorum: true,
                size: 5,
                read: 10,
                written: 15,
                al_writes: 40,
                bm_writes: 50,
                upper_pending: 60,
                lower_pending: 70,
                al_suspended: false,
                blocked: false,
            },
            connection: ConnSnap {
                peer_node_id: 1,
                conn_name: "some-peer".into(),
                connection: ConnState::StandAlone,
                peer_role: Role::Unknown,
                congested: false,
                ap_in_flight: 10,
                rs_in_flight: 20,
            },
            peer_device: PeerDeviceSnap {
                volume: 0,
                replication: Repl::Off,
                peer_disk: DiskState::DUnknown,
                peer_client: false,
                resync_suspended: "no".into(),
                received: 5,
                sent: 10,
                out_of_sync: 0,
                pending: 30,
                unacked: 40,
                rs_total: 0,
                rs_elapsed_ms: 0,
                done: None,
                dbdt1: None,
                eta: None,
            },
            path: PathSnap {
                local: "ipv4:1.2.3.4:7789".into(),
                peer: "ipv4:5.6.7.8:7790".into(),
                established: false,
            },
        }
    }

    /// Replays the drbd-utils golden test `events2-all-create-change` and
    /// compares with the fixtures verbatim.
    #[test]
    fn matches_drbd_utils_golden_events2() {
        let fixtures = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../agent/drbd/tests/fixtures"
        );
        let mut states = vec![None, Some(snap())];
        let mut s = snap();
        s.may_promote = true;
        s.promotion_score = 10101;
        states.push(Some(s.clone()));
        s.device.backing_dev = Some("/dev/sda".into());
        s.device.disk = DiskState::UpToDate;
        states.push(Some(s.clone()));
        s.path.established = true;
        states.push(Some(s.clone()));
        s.connection.connection = ConnState::Connected;
        s.connection.peer_role = Role::Secondary;
        states.push(Some(s.clone()));
        s.promotion_score = 10102;
        states.push(Some(s.clone()));
        s.peer_device.replication = Repl::Established;
        s.peer_device.peer_disk = DiskState::UpToDate;
        states.push(Some(s.clone()));
        s.role = Role::Primary;
        s.may_promote = false;
        states.push(Some(s.clone()));
        for (file, opts) in [
            (
                "events2-connect-uptodate-then-primary.txt",
                EventOpts::default(),
            ),
            (
                "events2-connect-uptodate-then-primary-statistics.txt",
                EventOpts {
                    statistics: true,
                    full: false,
                },
            ),
        ] {
            let mut got = vec!["exists -".to_string()];
            for w in states.windows(2) {
                got.extend(change_lines(w[0].as_ref(), w[1].as_ref(), opts));
            }
            let want = std::fs::read_to_string(format!("{fixtures}/{file}")).unwrap();
            let want: Vec<&str> = want.lines().collect();
            // The golden device lines lack the stats keys because the
            // recorded netlink messages did not change them; our rule prints
            // the stats block only when a counter changed: same result.
            // The fixture's create resource line prints write-ordering:none.
            let got: Vec<String> = got
                .into_iter()
                .map(|l| l.replace("write-ordering:flush", "write-ordering:none"))
                .collect();
            assert_eq!(got, want, "{file}");
        }
    }

    /// `adjust` to another peer: the old path, peer-device and connection
    /// are destroyed (kernel order), the new ones created; a changed
    /// address alone replaces only the path.
    #[test]
    fn another_peer_destroys_and_creates_the_connection_objects() {
        let old = snap();
        let mut new = snap();
        new.connection.conn_name = "new-peer".into();
        new.path.peer = "ipv4:5.6.7.9:7791".into();
        let lines = change_lines(Some(&old), Some(&new), EventOpts::default());
        assert_eq!(
            lines,
            vec![
                "destroy path name:some-resource peer-node-id:1 conn-name:some-peer local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.8:7790",
                "destroy peer-device name:some-resource peer-node-id:1 conn-name:some-peer volume:0",
                "destroy connection name:some-resource peer-node-id:1 conn-name:some-peer",
                "create connection name:some-resource peer-node-id:1 conn-name:new-peer connection:StandAlone role:Unknown",
                "create peer-device name:some-resource peer-node-id:1 conn-name:new-peer volume:0 replication:Off peer-disk:DUnknown peer-client:no resync-suspended:no",
                "create path name:some-resource peer-node-id:1 conn-name:new-peer local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.9:7791 established:no",
            ]
        );
        let mut moved = snap();
        moved.path.peer = "ipv4:5.6.7.9:7791".into();
        moved.connection.connection = ConnState::Unconnected;
        let lines = change_lines(Some(&old), Some(&moved), EventOpts::default());
        assert_eq!(
            lines,
            vec![
                "change connection name:some-resource peer-node-id:1 conn-name:some-peer connection:Unconnected",
                "destroy path name:some-resource peer-node-id:1 conn-name:some-peer local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.8:7790",
                "create path name:some-resource peer-node-id:1 conn-name:some-peer local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.9:7791 established:no",
            ]
        );
    }

    fn show_cfg(extra: &str) -> Config {
        let text = format!(
            "resource = \"r0\"\nhostname = \"fs1\"\nnode_id = 0\nminor = 1000\nstate_dir = \"/s\"\nlisten = \"10.0.0.1:7789\"\n{extra}[peer]\nhostname = \"fs2\"\nnode_id = 1\naddress = \"10.0.0.2:7789\"\n[device]\nmode = \"block\"\nsize_mib = 8\nbacking_file = \"/vol/disk.img\"\n[tuning]\nping_interval_ms = 1500\nping_timeout_ms = 2050\nconnect_retry_ms = 10000\nresync_rate_kib = 250\n[net]\nfencing = \"resource-and-stonith\"\n"
        );
        Config::parse(&text, std::path::Path::new("x.toml")).unwrap()
    }

    /// drbd-utils' `show_resource_list()` layout (`print_options()`:
    /// `%-16s\t%s;` and `# unit, default` comments), values in DRBD units
    /// rounded up.
    #[test]
    fn drbdsetup_show_layout() {
        let cfg = show_cfg("");
        assert_eq!(
            show_text(&cfg, ConnState::Connected, false),
            "resource \"r0\" {
    options {
        auto-promote    \tno;
    }
    _this_host {
        node-id\t\t\t0;
        volume 0 {
            device\t\t\tminor 1000;
            disk\t\t\t\"/vol/disk.img\";
            meta-disk\t\t\tinternal;
        }
    }
    connection {
        _peer_node_id 1;
        path {
            _this_host ipv4 10.0.0.1:7789;
            _remote_host ipv4 10.0.0.2:7789;
        }
        net {
            ping-int        \t2; # seconds
            ping-timeout    \t21; # 1/10 seconds
            fencing         \tresource-and-stonith;
            _name           \t\"fs2\";
        }
    }
}

"
        );
        assert_eq!(
            show_text(&cfg, ConnState::StandAlone, true),
            "resource \"r0\" {
    options {
        auto-promote    \tno;
        quorum          \toff; # default
    }
    _this_host {
        node-id\t\t\t0;
        volume 0 {
            device\t\t\tminor 1000;
            disk\t\t\t\"/vol/disk.img\";
            meta-disk\t\t\tinternal;
        }
    }
    connection {
        _peer_node_id 1;
        path {
            _this_host ipv4 10.0.0.1:7789;
            _remote_host ipv4 10.0.0.2:7789;
        }
        _is_standalone;
        net {
            protocol        \tC; # default
            connect-int     \t10; # seconds, default
            ping-int        \t2; # seconds
            allow-two-primaries\tno; # default
            after-sb-0pri   \tdisconnect; # default
            after-sb-1pri   \tdisconnect; # default
            after-sb-2pri   \tdisconnect; # default
            ping-timeout    \t21; # 1/10 seconds
            fencing         \tresource-and-stonith;
            _name           \t\"fs2\";
        }
        volume 0 {
            disk {
                resync-rate     \t250k; # bytes/second, default
            }
        }
    }
}

"
        );
    }

    #[test]
    fn status_text_layouts() {
        let mut s = snap();
        s.device.disk = DiskState::Inconsistent;
        s.connection.connection = ConnState::Connecting;
        assert_eq!(
            status_text(&s, StatusOpts::default()),
            "some-resource role:Secondary\n  disk:Inconsistent\n  some-peer connection:Connecting\n"
        );
        s.connection.connection = ConnState::Connected;
        s.connection.peer_role = Role::Primary;
        s.peer_device.replication = Repl::SyncTarget;
        s.peer_device.peer_disk = DiskState::UpToDate;
        s.peer_device.done = Some(0.08);
        assert_eq!(
            status_text(&s, StatusOpts::default()),
            "some-resource role:Secondary\n  disk:Inconsistent\n  some-peer role:Primary\n    replication:SyncTarget peer-disk:UpToDate done:0.08\n"
        );
        let j: serde_json::Value = serde_json::from_str(&status_json(Some(&s))).unwrap();
        assert_eq!(
            j[0]["connections"][0]["peer_devices"][0]["replication-state"],
            "SyncTarget"
        );
    }

    #[test]
    fn fencing_suspension_and_helper_lines() {
        let mut s = snap();
        s.role = Role::Primary;
        s.device.disk = DiskState::UpToDate;
        s.connection.connection = ConnState::Connecting;
        let mut f = s.clone();
        f.suspended = "fencing".into();
        let lines = change_lines(Some(&s), Some(&f), EventOpts::default());
        assert_eq!(
            lines,
            vec!["change resource name:some-resource suspended:fencing may_promote:no promotion_score:0"]
        );
        let back = change_lines(Some(&f), Some(&s), EventOpts::default());
        assert_eq!(
            back,
            vec![
                "change resource name:some-resource suspended:no may_promote:no promotion_score:0"
            ]
        );
        assert!(status_text(&f, StatusOpts::default())
            .starts_with("some-resource role:Primary suspended:fencing\n"));
        assert!(status_text(&s, StatusOpts::default()).starts_with("some-resource role:Primary\n"));
        let j: serde_json::Value = serde_json::from_str(&status_json(Some(&f))).unwrap();
        assert_eq!(j[0]["suspended"], true);
        let j: serde_json::Value = serde_json::from_str(&status_json(Some(&s))).unwrap();
        assert_eq!(j[0]["suspended"], false);
        let call = HelperNote {
            name: "fence-peer".into(),
            status: None,
        };
        assert_eq!(
            helper_line(&s, &call),
            "call helper name:some-resource peer-node-id:1 conn-name:some-peer helper:fence-peer"
        );
        let resp = HelperNote {
            name: "fence-peer".into(),
            status: Some(4 << 8),
        };
        assert_eq!(
            helper_line(&s, &resp),
            "response helper name:some-resource peer-node-id:1 conn-name:some-peer helper:fence-peer status:1024"
        );
    }
}
