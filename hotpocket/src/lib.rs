//! The HotPocket-compatible instance runtime that runs inside every instance.
#![forbid(unsafe_code)]
