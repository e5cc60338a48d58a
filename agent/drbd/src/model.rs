//! The typed DRBD 9 state model shared by every parser in this crate.
//!
//! State words (`role:Primary`, `disk:UpToDate`, ...) become enums. Each enum
//! has an `Other(String)` catch-all so a word this crate does not know (a newer
//! DRBD, a typo in a fixture) is *kept* and can be shown to an operator instead
//! of being silently dropped. Parsing a word never fails: see the `From<&str>`
//! and `FromStr` (with `Err = Infallible`) impls. On the wire (serde) every
//! state word is the plain DRBD string, e.g. `"UpToDate"`.
//!
//! The structs mirror the objects `drbdsetup events2` reports: a resource owns
//! devices (one per volume) and connections (one per peer); a connection owns
//! peer devices (one per volume) and network paths. Every struct carries an
//! `extra` map holding keys the parsers do not know, again so nothing is lost.
//!
//! Counters are KiB exactly as DRBD prints them. DRBD sometimes prints a
//! counter that underflowed below zero as a huge `u64`
//! (`18446744073709551608`); such values are stored as-is and
//! [`sane_counter`] tells them apart.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Generates a state-word enum with `Other(String)`, `as_str`, `From<&str>`,
/// `FromStr`, `Display`, `Default` and string-valued serde impls.
macro_rules! state_word {
    (
        $(#[$meta:meta])*
        $name:ident, default = $default:ident,
        { $( $(#[$vmeta:meta])* $variant:ident => $word:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A word this crate does not know; kept verbatim.
            Other(String),
        }

        impl $name {
            /// The word exactly as DRBD prints it.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $word, )+
                    $name::Other(s) => s.as_str(),
                }
            }

            /// True for the `Other(..)` catch-all.
            pub fn is_other(&self) -> bool {
                matches!(self, $name::Other(_))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $word => $name::$variant, )+
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl FromStr for $name {
            type Err = Infallible;
            fn from_str(s: &str) -> Result<Self, Infallible> {
                Ok($name::from(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok($name::from(s.as_str()))
            }
        }
    };
}

state_word! {
    /// Resource role (`role:` on resources, peer role on connections).
    /// Default: `Unknown`.
    Role, default = Unknown, {
        Primary => "Primary",
        Secondary => "Secondary",
        Unknown => "Unknown",
    }
}

state_word! {
    /// Local (`disk:`) or peer (`peer-disk:`) disk state.
    /// Default: `DUnknown` ("not reported yet").
    DiskState, default = DUnknown, {
        Diskless => "Diskless",
        Attaching => "Attaching",
        Detaching => "Detaching",
        Failed => "Failed",
        Negotiating => "Negotiating",
        Inconsistent => "Inconsistent",
        Outdated => "Outdated",
        DUnknown => "DUnknown",
        Consistent => "Consistent",
        UpToDate => "UpToDate",
    }
}

state_word! {
    /// Connection state (`connection:`). Default: `StandAlone`, the state DRBD
    /// gives a freshly created connection object.
    ConnectionState, default = StandAlone, {
        StandAlone => "StandAlone",
        Disconnecting => "Disconnecting",
        Unconnected => "Unconnected",
        Timeout => "Timeout",
        BrokenPipe => "BrokenPipe",
        NetworkFailure => "NetworkFailure",
        ProtocolError => "ProtocolError",
        TearDown => "TearDown",
        Connecting => "Connecting",
        Connected => "Connected",
    }
}

state_word! {
    /// Replication state of a peer device (`replication:`). Default: `Off`.
    ReplicationState, default = Off, {
        Off => "Off",
        Established => "Established",
        StartingSyncS => "StartingSyncS",
        StartingSyncT => "StartingSyncT",
        WFBitMapS => "WFBitMapS",
        WFBitMapT => "WFBitMapT",
        WFSyncUUID => "WFSyncUUID",
        SyncSource => "SyncSource",
        SyncTarget => "SyncTarget",
        VerifyS => "VerifyS",
        VerifyT => "VerifyT",
        PausedSyncS => "PausedSyncS",
        PausedSyncT => "PausedSyncT",
        Ahead => "Ahead",
        Behind => "Behind",
    }
}

impl DiskState {
    /// Health rank used to pick the "worst" disk: higher is healthier.
    ///
    /// `Other(..)` words = 0 (unknown counts as worst); Diskless, Attaching,
    /// Detaching, Failed, Negotiating and DUnknown = 1; Inconsistent = 2;
    /// Outdated = 3; Consistent = 4; UpToDate = 5.
    pub fn rank(&self) -> u8 {
        match self {
            DiskState::Other(_) => 0,
            DiskState::Diskless
            | DiskState::Attaching
            | DiskState::Detaching
            | DiskState::Failed
            | DiskState::Negotiating
            | DiskState::DUnknown => 1,
            DiskState::Inconsistent => 2,
            DiskState::Outdated => 3,
            DiskState::Consistent => 4,
            DiskState::UpToDate => 5,
        }
    }
}

/// Values above this are treated as an underflowed (negative) counter.
pub const SANE_COUNTER_MAX: u64 = 1 << 62;

/// `Some(v)` for a plausible counter, `None` for a value above 2^62, which is
/// what a counter that DRBD decremented below zero looks like
/// (e.g. `18446744073709551608` = -8 as u64).
pub fn sane_counter(v: u64) -> Option<u64> {
    if v > SANE_COUNTER_MAX {
        None
    } else {
        Some(v)
    }
}

/// One DRBD resource as seen from this node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResourceState {
    pub name: String,
    pub role: Role,
    /// `suspended:no` → `Some(false)`; `yes` or any suspend reason
    /// (`user`, `no-data`, `fencing`, `quorum`) → `Some(true)`. The known
    /// reasons are in `suspended_reasons`; an unknown reason word is kept in
    /// `extra["suspended"]`.
    pub suspended: Option<bool>,
    /// Why I/O is suspended, as DRBD says it (`fencing`: a fence-peer handler
    /// runs or failed; `user`: `drbdadm suspend-io`; ...). Empty when not.
    #[serde(default)]
    pub suspended_reasons: Vec<String>,
    pub may_promote: Option<bool>,
    pub promotion_score: Option<u64>,
    pub write_ordering: Option<String>,
    pub force_io_failures: Option<bool>,
    /// Local node id; only `status --json` reports it (`node-id`).
    pub node_id: Option<u32>,
    /// Local volumes, keyed by volume number.
    pub devices: BTreeMap<u32, DeviceState>,
    /// Connections keyed by peer-node-id (or a synthetic id for DRBD 9.0
    /// lines without `peer-node-id`, see [`synthetic_peer_id`]).
    pub connections: BTreeMap<u32, ConnectionInfo>,
    /// Most recent `call helper` / `response helper` event for this resource.
    pub last_helper: Option<HelperEvent>,
    /// Keys the parser does not know (or values it could not interpret).
    pub extra: BTreeMap<String, String>,
}

/// One local volume (a DRBD minor device).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceState {
    pub volume: u32,
    pub minor: Option<u32>,
    pub disk: DiskState,
    /// As printed; `none` when diskless.
    pub backing_dev: Option<String>,
    pub client: Option<bool>,
    pub open: Option<bool>,
    pub quorum: Option<bool>,
    pub size_kib: Option<u64>,
    pub read_kib: Option<u64>,
    pub written_kib: Option<u64>,
    pub al_writes: Option<u64>,
    pub bm_writes: Option<u64>,
    pub upper_pending: Option<u64>,
    pub lower_pending: Option<u64>,
    pub al_suspended: Option<bool>,
    /// `no`, `upper`, `lower` or `upper,lower`, as printed.
    pub blocked: Option<String>,
    pub extra: BTreeMap<String, String>,
}

/// One connection to a peer node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The peer's node id, or the synthetic id from [`synthetic_peer_id`].
    pub peer_node_id: u32,
    pub conn_name: String,
    pub connection: ConnectionState,
    pub peer_role: Role,
    pub congested: Option<bool>,
    pub ap_in_flight: Option<u64>,
    pub rs_in_flight: Option<u64>,
    /// Peer volumes keyed by volume number.
    pub peer_devices: BTreeMap<u32, PeerDeviceState>,
    pub paths: Vec<PathState>,
    pub extra: BTreeMap<String, String>,
}

/// One volume as replicated to one peer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PeerDeviceState {
    pub volume: u32,
    pub replication: ReplicationState,
    pub peer_disk: DiskState,
    pub peer_client: Option<bool>,
    /// `no`, `user`, `peer`, `dependency` (comma-joined), as printed.
    pub resync_suspended: Option<String>,
    pub received_kib: Option<u64>,
    pub sent_kib: Option<u64>,
    pub out_of_sync_kib: Option<u64>,
    pub pending: Option<u64>,
    pub unacked: Option<u64>,
    /// Resync progress in percent (`done:` / `percent-resync-done`).
    pub done_percent: Option<f64>,
    pub eta_seconds: Option<f64>,
    /// Recent resync rate in MiB/s (`dbdt1:`).
    pub dbdt1: Option<f64>,
    pub extra: BTreeMap<String, String>,
}

/// One network path of a connection (`local:ipv4:1.2.3.4:7789`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PathState {
    pub local: String,
    pub peer: String,
    pub established: Option<bool>,
    pub extra: BTreeMap<String, String>,
}

/// A `call helper` or `response helper` line (e.g. `before-resync-target`,
/// `split-brain`, `quorum-lost`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HelperEvent {
    /// `true` for `response helper` (then `status` is set), `false` for
    /// `call helper`.
    pub response: bool,
    pub helper: String,
    pub peer_node_id: Option<u32>,
    pub volume: Option<u32>,
    /// The kernel passes the raw wait status of the helper (DRBD's
    /// `drbd_khelper()` returns what `call_usermodehelper()` returned): the
    /// exit code is `(status >> 8) & 0xff`, e.g. `status:1024` = exit 4.
    pub status: Option<i64>,
    pub timestamp: Option<String>,
    pub extra: BTreeMap<String, String>,
}

/// Synthetic ids start here; real DRBD node ids are 0..=31.
pub const SYNTHETIC_PEER_ID_BASE: u32 = 0x8000_0000;

/// Stable id for a connection that has no `peer-node-id` (DRBD 9.0-era
/// events2 lines only carry `conn-name`).
///
/// It is `SYNTHETIC_PEER_ID_BASE | (FNV-1a-32(conn_name) & 0x7fff_ffff)`: the
/// same name always gives the same id (across restarts and hosts), and it can
/// never collide with a real node id (0..=31).
pub fn synthetic_peer_id(conn_name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in conn_name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    SYNTHETIC_PEER_ID_BASE | (h & 0x7fff_ffff)
}

/// `yes`/`true` → `Some(true)`, `no`/`false` → `Some(false)`, else `None`.
pub(crate) fn bool_word(v: &str) -> Option<bool> {
    match v {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_is_kept() {
        assert_eq!(Role::from("Primary"), Role::Primary);
        assert_eq!(
            "WFBitMapS".parse::<ReplicationState>().unwrap(),
            ReplicationState::WFBitMapS
        );
        let w: DiskState = "Frobnicated".parse().unwrap();
        assert_eq!(w, DiskState::Other("Frobnicated".into()));
        assert_eq!(w.to_string(), "Frobnicated");
        assert_eq!(
            serde_json::to_string(&ConnectionState::Connected).unwrap(),
            "\"Connected\""
        );
        let back: ConnectionState = serde_json::from_str("\"Weird\"").unwrap();
        assert_eq!(back, ConnectionState::Other("Weird".into()));
    }

    #[test]
    fn sane_counter_rejects_underflow() {
        assert_eq!(sane_counter(0), Some(0));
        assert_eq!(sane_counter(205655500), Some(205655500));
        assert_eq!(sane_counter(18446744073709551608), None);
    }

    #[test]
    fn synthetic_ids_are_stable_and_out_of_range() {
        let a = synthetic_peer_id("peer");
        assert_eq!(a, synthetic_peer_id("peer"));
        assert!(a >= SYNTHETIC_PEER_ID_BASE);
        assert_ne!(a, synthetic_peer_id("other"));
    }
}
