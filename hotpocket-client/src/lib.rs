//! The user side of HotPocket: what a tenant needs to talk to an instance, without the runtime.
//!
//! - [`protocol`]: HotPocket's wire formats (user messages in JSON and BSON, the contract's
//!   args document, the bundle's `contract.config`, bundle zips and the bootstrap's answer).
//!   Only this crate derives their serialization; the runtime (`berth-hotpocket`) uses them.
//! - [`client`]: a user connection to one node (handshake, inputs, outputs, reads, uploads).
//! - [`tls`]: the client TLS config that accepts a node's self-signed certificate.
#![forbid(unsafe_code)]

pub mod client;
pub mod protocol;
pub mod tls;
