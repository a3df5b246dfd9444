//! HotPocket instances as hardened Docker containers, through bollard.
#![forbid(unsafe_code)]
