//! The message board: a client of rippled's WebSocket API, reliable submission
//! and typed marketplace events. Used by the host agent and the tenant CLI.
#![forbid(unsafe_code)]
