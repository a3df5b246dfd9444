//! HotPocket instances as hardened Docker containers, through bollard.
//!
//! The agent holds a [`Provisioner`]: [`DockerProvisioner`] on a real host,
//! `RecordingProvisioner` in its unit tests. The recording fake and the probe image (a
//! stand-in runtime) are test support, built only with the `test-support` feature. Ports are allocated by the pure functions of
//! [`ports`] over the ports in use, so the agent can keep its own record.
//!
//! **Invariant**: only containers and volumes labelled `berth.managed=true` and
//! `berth.namespace=<namespace>` are ever listed, reconciled or removed.
#![forbid(unsafe_code)]

pub mod config;
pub mod docker;
pub mod egress;
pub mod error;
#[cfg(feature = "test-support")]
pub mod fake;
pub mod image;
pub mod ports;
#[cfg(feature = "test-support")]
pub mod probe;
pub mod provisioner;
pub mod spec;

pub use config::{DiskQuotaPolicy, HostResources, InstanceLimits, PortRange, ProvisionerConfig};
pub use docker::DockerProvisioner;
pub use egress::{EgressPolicy, EgressStatus};
pub use error::{ConfigError, Operation, ProvisionError};
#[cfg(feature = "test-support")]
pub use fake::{Call, RecordingProvisioner};
pub use image::{BuildContext, ContextDir, ImageOutcome, ImageSpec};
pub use ports::InstancePorts;
pub use provisioner::{
    DestroyOutcome, DiskCheck, DiskQuotaMode, Health, HostStatus, InstanceState, InstanceStatus,
    InstanceSummary, Provisioner, ReconcileAction,
};
pub use spec::{InstanceIdentity, InstanceSpec};
