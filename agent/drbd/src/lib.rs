//! Typed model and parsers for DRBD 9 state as reported by `drbdsetup`.
//!
//! The Understudy agent runs `drbdsetup events2 --timestamps --statistics` as
//! a long-running child and feeds every stdout line through
//! [`events2::parse_line`] and [`DrbdState::apply`]; the resulting
//! [`ResourceState`]s (or their flat [`ResourceSummary`]) are streamed to the
//! controller. `drbdsetup status --json` output can be read into the same
//! model with [`parse_status_json`].
//!
//! Modules:
//!
//! * [`model`]: state-word enums (unknown words kept as `Other(..)`) and the
//!   resource / device / connection / peer-device / path structs.
//! * [`events2`]: one-line parser producing [`Event`]s.
//! * [`state`]: [`DrbdState`], which applies events (merging `change` lines).
//! * [`status_json`]: `drbdsetup status --json` parser (tolerates bare `nan`).
//! * [`summary`]: [`summarize`] a resource into one flat record.
//! * [`show`]: `drbdsetup show --show-defaults` parser; [`net_options`] gives
//!   a resource's typed [`NetOptions`] (ping-int, ping-timeout, ... in ms).
//! * [`error`]: [`ParseError`] and the line-numbered [`LineError`].
//!
//! ```
//! use understudy_drbd::{parse_line, summarize, DrbdState, Role};
//!
//! let mut state = DrbdState::default();
//! for line in [
//!     "exists resource name:r0 role:Secondary suspended:no",
//!     "exists -",
//!     "change resource name:r0 role:Primary",
//! ] {
//!     state.apply(&parse_line(line).unwrap()).unwrap();
//! }
//! assert!(state.initial_dump_done);
//! assert_eq!(summarize(&state.resources["r0"]).role, Role::Primary);
//! ```

pub mod error;
pub mod events2;
mod merge;
pub mod model;
pub mod show;
pub mod state;
pub mod status_json;
pub mod summary;

pub use error::{LineError, ParseError};
pub use events2::{parse_line, parse_lines, Action, Event, Object};
pub use model::{
    sane_counter, synthetic_peer_id, ConnectionInfo, ConnectionState, DeviceState, DiskState,
    HelperEvent, PathState, PeerDeviceState, ReplicationState, ResourceState, Role,
    SANE_COUNTER_MAX, SYNTHETIC_PEER_ID_BASE,
};
pub use show::{net_options, parse_show, NetOptions, ShowConnection, ShowError, ShowResource};
pub use state::DrbdState;
pub use status_json::{parse_connection_json, parse_status_json, sanitize_non_finite};
pub use summary::{summarize, ResourceSummary};
