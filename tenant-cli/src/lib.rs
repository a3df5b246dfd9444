//! The Berth tenant CLI (`berth`): keys, host discovery and talking to an instance.
//!
//! The binary (`src/main.rs`) is a thin layer over these modules. `berth sandbox` is the
//! `berth-sandbox` binary of the `berth-sandbox` crate, which this crate does not depend on.
#![forbid(unsafe_code)]

pub mod anchor;
mod atomic;
pub mod book;
pub mod cluster;
pub mod hosts;
pub mod instance;
pub mod keys;
pub mod lease;
pub mod progress;
pub mod settings;
