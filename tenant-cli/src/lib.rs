//! The Berth tenant CLI (`berth`): keys, host discovery and talking to an instance.
//!
//! The binary (`src/main.rs`) is a thin layer over these modules.
#![forbid(unsafe_code)]

pub mod book;
pub mod demo;
pub mod hosts;
pub mod instance;
pub mod keys;
pub mod lease;
pub mod sandbox;
pub mod settings;
