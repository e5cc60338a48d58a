//! Understudy controller.
//!
//! A controller node is one member of a 3- or 5-node Raft group (openraft, with its
//! log and state machine durable in redb). The replicated state is the inventory of
//! pairs and each pair's state (`state`). The leader also keeps, in memory only,
//! the live view of every agent (`liveness`), serves the agent sessions
//! (`agents`), the operator API (`operator`) and decides what each pair's state
//! should be (`observe`).

pub mod raft;
pub mod state;
