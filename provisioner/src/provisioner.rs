//! The narrow interface the agent uses, and the values it returns. [`crate::DockerProvisioner`]
//! is the real implementation; `RecordingProvisioner` (feature `test-support`) records calls for unit tests.
use std::collections::BTreeSet;
use std::fmt;

use crate::config::InstanceLimits;
use crate::error::ProvisionError;
use crate::image::{ImageOutcome, ImageSpec};
use crate::ports::InstancePorts;
use crate::spec::InstanceSpec;

/// The life-cycle state of an instance's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
    Removing,
    Unknown,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceState::Created => "created",
            InstanceState::Running => "running",
            InstanceState::Paused => "paused",
            InstanceState::Restarting => "restarting",
            InstanceState::Exited => "exited",
            InstanceState::Dead => "dead",
            InstanceState::Removing => "removing",
            InstanceState::Unknown => "unknown",
        })
    }
}

/// One instance as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSummary {
    pub name: String,
    pub lease_id: String,
    pub container_id: String,
    pub state: InstanceState,
    pub ports: Option<InstancePorts>,
}

/// One instance in detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub summary: InstanceSummary,
    pub oom_killed: bool,
    pub exit_code: Option<i64>,
    pub restart_count: i64,
    pub started_at: Option<String>,
}

/// Whether the instance answers on its user port, as seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Running and the user port accepted a connection that stayed open or sent data.
    Answering,
    /// Running but the user port refused or closed at once.
    NotAnswering,
    NotRunning(InstanceState),
}

/// What [`Provisioner::destroy`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestroyOutcome {
    pub container_removed: bool,
    pub volume_removed: bool,
}

impl DestroyOutcome {
    pub fn was_already_gone(&self) -> bool {
        !self.container_removed && !self.volume_removed
    }
}

/// One step [`Provisioner::reconcile`] took (or found unnecessary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileAction {
    /// Expected and running: nothing to do.
    Kept { instance: String },
    /// Expected, existed but was not running: started.
    Started { instance: String },
    /// Expected to be held stopped ([`crate::InstanceSpec::held_stopped`]) but running:
    /// stopped.
    Stopped { instance: String },
    /// Expected but missing: created (reusing its state volume if one was left) and started.
    Recreated { instance: String },
    /// Existed with another lease, ports or image: destroyed and created anew.
    Replaced { instance: String },
    /// Not expected: container and volume removed.
    RemovedOrphan { instance: String },
    /// A state volume without container, not expected: removed.
    RemovedOrphanVolume { instance: String },
    /// The step for this instance failed; the others went on.
    Failed { instance: String, error: String },
}

/// How the disk quota is enforced on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskQuotaMode {
    /// The engine caps each container's writable layer (`storage-opt size`); the state volume
    /// is watched as well, since no engine quota covers named volumes.
    StorageOptAndWatchdog,
    /// The storage driver has no quota: the watchdog measures each state volume and stops an
    /// instance over its quota.
    Watchdog,
}

impl fmt::Display for DiskQuotaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskQuotaMode::StorageOptAndWatchdog => "storage-opt+watchdog",
            DiskQuotaMode::Watchdog => "watchdog",
        })
    }
}

/// The provisioner's view of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub storage_driver: String,
    pub disk_quota_mode: DiskQuotaMode,
    pub runtime: Option<String>,
    pub per_instance: InstanceLimits,
    pub capacity: u32,
    pub instances: usize,
}

/// What one pass of the disk watchdog found for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCheck {
    pub instance: String,
    pub used_bytes: u64,
    pub quota_bytes: u64,
    /// True when this pass stopped the instance for being over its quota.
    pub stopped: bool,
}

/// Instances as the agent sees them. Names are the short instance names of [`InstanceSpec`].
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync {
    /// Makes sure the instance image exists, building it when missing.
    async fn ensure_image(&self, image: &ImageSpec) -> Result<ImageOutcome, ProvisionError>;
    /// A free user port and peer port: not used by any instance nor in `reserved`.
    async fn allocate_ports(
        &self,
        reserved: &BTreeSet<u16>,
    ) -> Result<InstancePorts, ProvisionError>;
    /// Creates the container and its state volume, not started. On failure nothing is left.
    async fn create(&self, spec: &InstanceSpec) -> Result<(), ProvisionError>;
    /// Hands a pooled instance (created with [`InstanceSpec::awaiting_assignment`], usually
    /// running already) its identity: `spec.identity` is written into its state directory,
    /// where it waits for it. Assigning again the same identity succeeds. `NotFound` when the
    /// container does not exist.
    async fn assign(&self, spec: &InstanceSpec) -> Result<(), ProvisionError>;
    /// Starts it; starting a running instance succeeds.
    async fn start(&self, name: &str) -> Result<(), ProvisionError>;
    /// Stops it; stopping a stopped instance succeeds.
    async fn stop(&self, name: &str) -> Result<(), ProvisionError>;
    /// Removes container, state volume and so its ports; what is already gone succeeds.
    async fn destroy(&self, name: &str) -> Result<DestroyOutcome, ProvisionError>;
    async fn inspect(&self, name: &str) -> Result<InstanceStatus, ProvisionError>;
    async fn health(&self, name: &str) -> Result<Health, ProvisionError>;
    /// The last `tail` lines of stdout and stderr.
    async fn logs(&self, name: &str, tail: usize) -> Result<String, ProvisionError>;
    async fn list(&self) -> Result<Vec<InstanceSummary>, ProvisionError>;
    /// Brings the engine in line with `expected`: removes orphans, recreates what is missing,
    /// starts what is stopped; reports each instance's action.
    async fn reconcile(
        &self,
        expected: &[InstanceSpec],
    ) -> Result<Vec<ReconcileAction>, ProvisionError>;
    async fn host_status(&self) -> Result<HostStatus, ProvisionError>;
    /// One pass of the disk watchdog: measures each state volume, stops instances over quota.
    async fn enforce_disk_quota(&self) -> Result<Vec<DiskCheck>, ProvisionError>;
}
