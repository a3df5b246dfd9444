//! The Berth host agent: lease state machine, SQLite store and the host CLI.
#![forbid(unsafe_code)]
