//! State words and the serialisable state snapshot.
//!
//! The daemon publishes a [`Snapshot`] of its (single) resource whenever its
//! state changes; the CLIs turn snapshots into `drbdsetup status` text/JSON
//! and, by comparing consecutive snapshots, into `events2` change lines
//! (see `format.rs`). State words print exactly as DRBD 9 prints them.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($v:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[allow(missing_docs)]
        pub enum $name { $($v),+ }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($name::$v => stringify!($v)),+ })
            }
        }
    };
}

words!(
    /// Resource / peer role.
    Role { Primary, Secondary, Unknown }
);
words!(
    /// Local or peer disk state.
    DiskState { Diskless, Attaching, Detaching, Failed, Negotiating, Inconsistent, Outdated, DUnknown, Consistent, UpToDate }
);
words!(
    /// Connection state.
    ConnState { StandAlone, Disconnecting, Unconnected, Timeout, BrokenPipe, NetworkFailure, ProtocolError, TearDown, Connecting, Connected }
);
words!(
    /// Replication state of a peer device.
    Repl { Off, Established, StartingSyncS, StartingSyncT, WFBitMapS, WFBitMapT, WFSyncUUID, SyncSource, SyncTarget, PausedSyncS, PausedSyncT }
);

impl DiskState {
    /// Holds data that may serve as a resync source.
    pub fn has_good_data(self) -> bool {
        matches!(
            self,
            DiskState::UpToDate | DiskState::Outdated | DiskState::Consistent
        )
    }
}

impl Repl {
    /// A resync is running (`done:` is reported).
    pub fn is_syncing(self) -> bool {
        matches!(
            self,
            Repl::SyncSource | Repl::SyncTarget | Repl::PausedSyncS | Repl::PausedSyncT
        )
    }
}

/// The whole observable state of the resource at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Resource name.
    pub name: String,
    /// Local node id.
    pub node_id: u32,
    /// Local role.
    pub role: Role,
    /// I/O suspension as drbdsetup prints it: `no`, or the reason
    /// (`fencing` while a Primary waits for its fence-peer handler).
    pub suspended: String,
    /// Write ordering method (statistics key).
    pub write_ordering: String,
    /// `may_promote` of events2.
    pub may_promote: bool,
    /// `promotion_score` of events2.
    pub promotion_score: u32,
    /// Volume 0.
    pub device: DeviceSnap,
    /// The one connection.
    pub connection: ConnSnap,
    /// The peer device of volume 0.
    pub peer_device: PeerDeviceSnap,
    /// The one network path.
    pub path: PathSnap,
}

/// A local volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DeviceSnap {
    pub volume: u32,
    pub minor: u32,
    /// `None` prints as `backing_dev:none`.
    pub backing_dev: Option<String>,
    pub disk: DiskState,
    pub client: bool,
    pub open: bool,
    pub quorum: bool,
    /// KiB.
    pub size: u64,
    /// KiB read from the backing "device" (sent to the peer).
    pub read: u64,
    /// KiB written to the backing "device" (received from the peer).
    pub written: u64,
    pub al_writes: u64,
    pub bm_writes: u64,
    pub upper_pending: u64,
    pub lower_pending: u64,
    pub al_suspended: bool,
    pub blocked: bool,
}

/// The connection to the peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ConnSnap {
    pub peer_node_id: u32,
    pub conn_name: String,
    pub connection: ConnState,
    /// The peer's role as seen from here.
    pub peer_role: Role,
    pub congested: bool,
    pub ap_in_flight: u64,
    pub rs_in_flight: u64,
}

/// The peer's volume 0 as seen from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct PeerDeviceSnap {
    pub volume: u32,
    pub replication: Repl,
    pub peer_disk: DiskState,
    pub peer_client: bool,
    pub resync_suspended: String,
    /// KiB received from the peer.
    pub received: u64,
    /// KiB sent to the peer.
    pub sent: u64,
    /// KiB the sync target does not have yet.
    pub out_of_sync: u64,
    pub pending: u64,
    pub unacked: u64,
    /// Total KiB of the running resync (0 when not syncing).
    pub rs_total: u64,
    /// Milliseconds since the resync started.
    pub rs_elapsed_ms: u64,
    /// Percent done of the running resync.
    pub done: Option<f64>,
    /// Recent resync rate in MiB/s.
    pub dbdt1: Option<f64>,
    /// Estimated seconds to finish.
    pub eta: Option<u64>,
}

/// The network path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct PathSnap {
    /// `ipv4:IP:PORT`
    pub local: String,
    /// `ipv4:IP:PORT`
    pub peer: String,
    pub established: bool,
}

/// One message of the daemon's event stream: the state after a change,
/// `None` when the resource does not exist (down).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventMsg {
    /// Wall-clock time of the change, microseconds since the epoch.
    pub ts_us: i64,
    /// The new state.
    pub snap: Option<Snapshot>,
    /// A user-mode helper was called / returned (events2 `call helper` /
    /// `response helper`); the state is unchanged by such a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper: Option<HelperNote>,
}

/// A connection-level helper (`fence-peer`, `unfence-peer`) call or response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelperNote {
    /// Helper name as DRBD passes it to drbdadm (`fence-peer`).
    pub name: String,
    /// `None` for the call, the raw wait status (exit code << 8, or the
    /// signal number) for the response, as the kernel reports it.
    pub status: Option<i32>,
}

/// Formats an address as drbdsetup does (`ipv4:1.2.3.4:7789`).
pub fn drbd_addr(a: &std::net::SocketAddr) -> String {
    match a {
        std::net::SocketAddr::V4(v) => format!("ipv4:{}:{}", v.ip(), v.port()),
        std::net::SocketAddr::V6(v) => format!("ipv6:[{}]:{}", v.ip(), v.port()),
    }
}
