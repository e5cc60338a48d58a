//! The HTTP/2 settings of a controller's gRPC server, and of its channels to
//! the other controllers, sized for a follower that relays thousands of agent
//! sessions to the leader as the streams of one connection (`crate::relay`).
//!
//! h2 guards a server against clients that make it buffer or reset much for
//! little, and closes the whole connection (GOAWAY, `ENHANCE_YOUR_CALM`) when
//! a guard trips. On a relay connection that is every session it carries:
//! they all end at once and their agents all dial again (at 10 000 pairs, 20 000
//! sessions closed within a second, again and again, until the limits below).
//! Two guards matter here:
//!
//! - **Buffered small DATA frames** (h2 0.4.20): their framing overhead may
//!   not exceed half the connection window. An agent heartbeat is a DATA frame
//!   of a few dozen bytes; hyper's default 1 MB window allows about 2 300 of
//!   them buffered, which a follower relaying 10 000 agents fills in a fifth of
//!   a second of the leader's lateness. [`CONNECTION_WINDOW`] (16 MB) allows
//!   about 36 000; each stream keeps its own 1 MB window.
//! - **Streams reset before the server took them** (the rapid-reset guard,
//!   20 by default): each agent that gives up on a session the leader has not
//!   taken yet (a start, a storm of re-dials) resets its relayed stream.
//!   [`PENDING_RESETS_MAX`] sizes it for the sessions one connection carries.
//!
//! Every client of this server holds a certificate of the cluster's CA; the
//! guards stay, with bounds that fit this traffic.

/// The HTTP/2 connection window of the server's connections and of the
/// channels between controllers.
pub const CONNECTION_WINDOW: u32 = 16 << 20;

/// Streams a client may have reset before the server took them, at once.
pub const PENDING_RESETS_MAX: usize = 16_384;

/// The gRPC server every controller runs (TLS handshakes are done by
/// `crate::acceptor`, a few at a time, not by tonic).
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_max_pending_accept_reset_streams(Some(PENDING_RESETS_MAX))
        .initial_connection_window_size(CONNECTION_WINDOW)
}
