//! The openraft type configuration of the controller cluster.
//!
//! Node ids are `u64`, nodes carry their gRPC address (`BasicNode`), and the
//! application data is [`crate::state::Request`], answered by
//! [`crate::state::Response`].

use crate::state::{Request, Response};

openraft::declare_raft_types!(
    /// Type configuration of the Understudy controller Raft group.
    pub TypeConfig:
        D = Request,
        R = Response,
);

/// The Raft handle used throughout the controller.
pub type Raft = openraft::Raft<TypeConfig, super::store::StateMachineStore>;
/// A controller node id.
pub type NodeId = u64;
/// The node record kept in the membership (its gRPC address).
pub type Node = openraft::BasicNode;
