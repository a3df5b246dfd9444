//! The peer port: how the nodes of a cluster talk.
//!
//! - [`wire`]: the versioned message format (the only owner of its serialization).
//! - [`net`]: TLS WebSocket sessions, the challenge handshake that proves each side's node
//!   key, one session per key, dialing known peers with backoff and jitter.
pub mod net;
pub mod wire;
