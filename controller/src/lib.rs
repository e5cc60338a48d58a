//! Understudy controller.
//!
//! A controller node is one member of a 3- or 5-node Raft group (openraft, with its
//! log and state machine durable in redb). Modules, from the bottom up:
//!
//! - `state`: the replicated data (inventory of pairs, each pair's state and
//!   history) and its pure `apply`;
//! - `raft`: openraft type configuration, redb storage, gRPC transport;
//! - `liveness`: the leader's in-memory view of agents (never written to Raft);
//! - `observe`: the pure function from (pair, agent views) to state changes and alerts;
//! - `leadership`: the small leader-state type (who leads, the commit helper)
//!   that the service modules depend on instead of `node`;
//! - `detector`, `failover`: the pure failure detector and the plan executor;
//! - `agents`, `operator`: the agent-session and operator gRPC services;
//! - `relay`: a follower's relay of the agent sessions it is dialled on to the
//!   leader (one connection to the leader instead of one per agent);
//! - `handoff`: the leader's handoff of the agents that dial it to a healthy
//!   follower (which relays them);
//! - `fence_peer`: DRBD fence-peer requests from a Primary's handler (S1);
//! - `fence`: S3, the fence of an old primary through a cloud (no Raft needed);
//! - `probe`: the leader's direct UDP liveness probes to agents;
//! - `leader`: the leader's loop (decisions, commits, dispatch to the executor);
//! - `holdoff`: S5's hold-off on monotonic clocks;
//! - `signals`: cloud signals (scheduled events, failed status checks) and the
//!   switchover they propose or schedule;
//! - `node`: wiring, cluster bootstrap, who leads (with the lease);
//! - `acceptor`: the gRPC listener's TLS handshakes, admitted a few at a time
//!   (thousands of agents dialling at once must not starve each other);
//! - `auth`, `certs`: who calls (mutual TLS certificate names) and what they
//!   may do; the cluster's CA and certificates (`understudyctl certs`);
//! - `transport`: the HTTP/2 settings of the server and of the channels
//!   between controllers (sized for relayed sessions);
//! - `config`, `error`: the TOML configuration and the error type.

pub mod acceptor;
pub mod agents;
pub mod auth;
pub mod certs;
pub mod command;
pub mod config;
pub mod dashboard;
pub mod detector;
pub mod error;
pub mod failover;
pub mod fence;
pub mod fence_peer;
pub mod handoff;
pub mod holdoff;
pub mod http;
pub mod leader;
pub mod leadership;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod observe;
pub mod operator;
pub mod preflight;
pub mod probe;
pub mod raft;
pub mod redundancy;
pub mod relay;
pub mod resync;
pub mod signals;
pub mod state;
pub mod status_json;
pub mod sweep;
#[cfg(test)]
mod testutil;
pub mod transport;

pub use config::ControllerConfig;
pub use error::ControllerError;
