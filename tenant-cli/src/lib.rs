//! The Berth tenant CLI (`berth`): keys, host discovery, leases and deployment.
#![forbid(unsafe_code)]
