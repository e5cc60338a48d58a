//! The controller's Raft group: type configuration, durable storage on redb and
//! the gRPC transport, in the layout of openraft's examples (one module each).

pub mod network;
pub mod store;
pub mod types;

pub use types::{Node, NodeId, Raft, TypeConfig};
