//! A recording provisioner for other crates' unit tests: keeps instances in memory, records
//! every call, and fails on request. It runs nothing; tests that need real containers use
//! [`crate::DockerProvisioner`].
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Mutex, MutexGuard};

use crate::config::{InstanceLimits, PortRange};
use crate::error::{Operation, ProvisionError};
use crate::image::{ImageOutcome, ImageSpec};
use crate::ports::{self, InstancePorts};
use crate::provisioner::{
    DestroyOutcome, DiskCheck, DiskQuotaMode, Health, HostStatus, InstanceState, InstanceStatus,
    InstanceSummary, Provisioner, ReconcileAction,
};
use crate::spec::InstanceSpec;

/// One call made to the [`RecordingProvisioner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    EnsureImage(String),
    AllocatePorts(BTreeSet<u16>),
    Create(Box<InstanceSpec>),
    Assign(String),
    Start(String),
    Stop(String),
    Destroy(String),
    Inspect(String),
    Health(String),
    Logs(String, usize),
    List,
    Reconcile(Vec<String>),
    HostStatus,
    EnforceDiskQuota,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    instances: BTreeMap<String, (InstanceSpec, InstanceState)>,
    failures: Vec<(Operation, String)>,
    images: HashSet<String>,
    disk_usage: BTreeMap<String, u64>,
}

/// In-memory [`Provisioner`] that records its calls.
#[derive(Debug)]
pub struct RecordingProvisioner {
    user_ports: PortRange,
    peer_ports: PortRange,
    capacity: u32,
    disk_quota_bytes: u64,
    state: Mutex<State>,
}

impl Default for RecordingProvisioner {
    fn default() -> Self {
        Self::new(
            PortRange::new(26000, 26099),
            PortRange::new(22000, 22099),
            100,
        )
    }
}

impl RecordingProvisioner {
    pub fn new(user_ports: PortRange, peer_ports: PortRange, capacity: u32) -> Self {
        Self {
            user_ports,
            peer_ports,
            capacity,
            disk_quota_bytes: 1 << 30,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Makes the next `op` on `instance` fail with an engine error.
    pub fn fail_next(&self, op: Operation, instance: &str) {
        self.state().failures.push((op, instance.to_owned()));
    }

    /// Sets an instance's state, as a crash or an engine restart would.
    pub fn set_state(&self, instance: &str, new_state: InstanceState) {
        if let Some((_, state)) = self.state().instances.get_mut(instance) {
            *state = new_state;
        }
    }

    /// What the next disk watchdog pass will measure for an instance (0 when not set).
    pub fn set_disk_usage(&self, instance: &str, bytes: u64) {
        self.state().disk_usage.insert(instance.to_owned(), bytes);
    }

    /// Removes an instance behind the provisioner's back.
    pub fn lose(&self, instance: &str) {
        self.state().instances.remove(instance);
    }

    fn begin(
        &self,
        call: Call,
        op: Operation,
        instance: &str,
    ) -> Result<MutexGuard<'_, State>, ProvisionError> {
        let mut state = self.state();
        state.calls.push(call);
        if let Some(index) = state
            .failures
            .iter()
            .position(|(o, i)| *o == op && i == instance)
        {
            state.failures.remove(index);
            let source = bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message: "injected failure".to_owned(),
            };
            return Err(ProvisionError::engine(instance, op, source));
        }
        Ok(state)
    }

    fn set_existing(
        state: &mut State,
        name: &str,
        new_state: InstanceState,
    ) -> Result<(), ProvisionError> {
        let (_, current) =
            state
                .instances
                .get_mut(name)
                .ok_or_else(|| ProvisionError::NotFound {
                    instance: name.to_owned(),
                })?;
        *current = new_state;
        Ok(())
    }

    fn summary(spec: &InstanceSpec, state: InstanceState) -> InstanceSummary {
        InstanceSummary {
            name: spec.name.clone(),
            lease_id: spec.lease_id.clone(),
            container_id: format!("fake-{}", spec.name),
            state,
            ports: Some(spec.ports),
        }
    }

    fn create_in(&self, state: &mut State, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        spec.validate()?;
        if state.instances.contains_key(&spec.name) {
            return Err(ProvisionError::AlreadyExists {
                instance: spec.name.clone(),
            });
        }
        if state.instances.len() >= self.capacity as usize {
            return Err(ProvisionError::CapacityReached {
                limit: self.capacity,
            });
        }
        for (other, _) in state.instances.values() {
            for port in [spec.ports.user, spec.ports.peer] {
                if port == other.ports.user || port == other.ports.peer {
                    return Err(ProvisionError::PortTaken {
                        instance: spec.name.clone(),
                        port,
                        holder: other.name.clone(),
                    });
                }
            }
        }
        state
            .instances
            .insert(spec.name.clone(), (spec.clone(), InstanceState::Created));
        Ok(())
    }
}

#[async_trait::async_trait]
impl Provisioner for RecordingProvisioner {
    async fn ensure_image(&self, image: &ImageSpec) -> Result<ImageOutcome, ProvisionError> {
        let mut state = self.begin(
            Call::EnsureImage(image.tag.clone()),
            Operation::Create,
            &image.tag,
        )?;
        Ok(if state.images.insert(image.tag.clone()) {
            ImageOutcome::Built
        } else {
            ImageOutcome::AlreadyPresent
        })
    }

    async fn allocate_ports(
        &self,
        reserved: &BTreeSet<u16>,
    ) -> Result<InstancePorts, ProvisionError> {
        let state = self.begin(
            Call::AllocatePorts(reserved.clone()),
            Operation::Create,
            "*",
        )?;
        let mut taken = reserved.clone();
        taken.extend(
            state
                .instances
                .values()
                .flat_map(|(spec, _)| [spec.ports.user, spec.ports.peer]),
        );
        ports::allocate(self.user_ports, self.peer_ports, &taken)
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        let mut state = self.begin(
            Call::Create(Box::new(spec.clone())),
            Operation::Create,
            &spec.name,
        )?;
        self.create_in(&mut state, spec)
    }

    async fn assign(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        let mut state = self.begin(
            Call::Assign(spec.name.clone()),
            Operation::Assign,
            &spec.name,
        )?;
        spec.validate_identity()?;
        let (current, _) =
            state
                .instances
                .get_mut(&spec.name)
                .ok_or_else(|| ProvisionError::NotFound {
                    instance: spec.name.clone(),
                })?;
        current.identity = spec.identity.clone();
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), ProvisionError> {
        let mut state = self.begin(Call::Start(name.to_owned()), Operation::Start, name)?;
        Self::set_existing(&mut state, name, InstanceState::Running)
    }

    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        let mut state = self.begin(Call::Stop(name.to_owned()), Operation::Stop, name)?;
        Self::set_existing(&mut state, name, InstanceState::Exited)
    }

    async fn destroy(&self, name: &str) -> Result<DestroyOutcome, ProvisionError> {
        let mut state = self.begin(Call::Destroy(name.to_owned()), Operation::Destroy, name)?;
        let removed = state.instances.remove(name).is_some();
        Ok(DestroyOutcome {
            container_removed: removed,
            volume_removed: removed,
        })
    }

    async fn inspect(&self, name: &str) -> Result<InstanceStatus, ProvisionError> {
        let state = self.begin(Call::Inspect(name.to_owned()), Operation::Inspect, name)?;
        let (spec, current) =
            state
                .instances
                .get(name)
                .ok_or_else(|| ProvisionError::NotFound {
                    instance: name.to_owned(),
                })?;
        Ok(InstanceStatus {
            summary: Self::summary(spec, *current),
            oom_killed: false,
            exit_code: (*current == InstanceState::Exited).then_some(0),
            restart_count: 0,
            started_at: None,
        })
    }

    async fn health(&self, name: &str) -> Result<Health, ProvisionError> {
        let state = self.begin(Call::Health(name.to_owned()), Operation::Inspect, name)?;
        let (_, current) = state
            .instances
            .get(name)
            .ok_or_else(|| ProvisionError::NotFound {
                instance: name.to_owned(),
            })?;
        Ok(match current {
            InstanceState::Running => Health::Answering,
            other => Health::NotRunning(*other),
        })
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String, ProvisionError> {
        let state = self.begin(Call::Logs(name.to_owned(), tail), Operation::Logs, name)?;
        if !state.instances.contains_key(name) {
            return Err(ProvisionError::NotFound {
                instance: name.to_owned(),
            });
        }
        Ok(String::new())
    }

    async fn list(&self) -> Result<Vec<InstanceSummary>, ProvisionError> {
        let state = self.begin(Call::List, Operation::List, "*")?;
        Ok(state
            .instances
            .values()
            .map(|(spec, current)| Self::summary(spec, *current))
            .collect())
    }

    async fn reconcile(
        &self,
        expected: &[InstanceSpec],
    ) -> Result<Vec<ReconcileAction>, ProvisionError> {
        let names = expected.iter().map(|spec| spec.name.clone()).collect();
        let mut state = self.begin(Call::Reconcile(names), Operation::Reconcile, "*")?;
        let wanted: HashSet<&str> = expected.iter().map(|spec| spec.name.as_str()).collect();
        let orphans: Vec<String> = state
            .instances
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        let mut actions = Vec::new();
        for orphan in orphans {
            state.instances.remove(&orphan);
            actions.push(ReconcileAction::RemovedOrphan { instance: orphan });
        }
        for spec in expected {
            let instance = spec.name.clone();
            let current = state
                .instances
                .get(&spec.name)
                .map(|(old, current)| (old.clone(), *current));
            let action = match current {
                None => self
                    .create_in(&mut state, spec)
                    .map(|()| ReconcileAction::Recreated {
                        instance: instance.clone(),
                    }),
                Some((old, _)) if !same_but_held(&old, spec) => {
                    state.instances.remove(&spec.name);
                    self.create_in(&mut state, spec)
                        .map(|()| ReconcileAction::Replaced {
                            instance: instance.clone(),
                        })
                }
                Some((_, InstanceState::Running)) if spec.held_stopped => {
                    Ok(ReconcileAction::Stopped {
                        instance: instance.clone(),
                    })
                }
                Some(_) if spec.held_stopped => Ok(ReconcileAction::Kept {
                    instance: instance.clone(),
                }),
                Some((_, InstanceState::Running)) => Ok(ReconcileAction::Kept {
                    instance: instance.clone(),
                }),
                Some(_) => Ok(ReconcileAction::Started {
                    instance: instance.clone(),
                }),
            };
            let action = match action {
                Ok(action) => {
                    if let Some((_, current)) = state.instances.get_mut(&spec.name) {
                        if matches!(action, ReconcileAction::Stopped { .. }) {
                            *current = InstanceState::Exited;
                        } else if !spec.held_stopped {
                            *current = InstanceState::Running;
                        }
                    }
                    action
                }
                Err(error) => ReconcileAction::Failed {
                    instance,
                    error: berth_log::chain(&error),
                },
            };
            actions.push(action);
        }
        Ok(actions)
    }

    async fn host_status(&self) -> Result<HostStatus, ProvisionError> {
        let state = self.begin(Call::HostStatus, Operation::Inspect, "*")?;
        Ok(HostStatus {
            storage_driver: "recording".to_owned(),
            disk_quota_mode: DiskQuotaMode::Watchdog,
            runtime: None,
            per_instance: InstanceLimits {
                cpu_millis: 0,
                memory_bytes: 0,
                swap_bytes: 0,
                disk_bytes: 0,
                pids: 0,
                open_files: 0,
                tmpfs_bytes: 0,
            },
            capacity: self.capacity,
            instances: state.instances.len(),
        })
    }

    /// Each instance's quota is 1 GiB; usage is what [`Self::set_disk_usage`] set.
    async fn enforce_disk_quota(&self) -> Result<Vec<DiskCheck>, ProvisionError> {
        let mut state = self.begin(Call::EnforceDiskQuota, Operation::MeasureDisk, "*")?;
        let state = &mut *state;
        let mut checks = Vec::new();
        for (name, (_, current)) in state.instances.iter_mut() {
            let used_bytes = state.disk_usage.get(name).copied().unwrap_or(0);
            let stopped = used_bytes > self.disk_quota_bytes && *current == InstanceState::Running;
            if stopped {
                *current = InstanceState::Exited;
            }
            checks.push(DiskCheck {
                instance: name.clone(),
                used_bytes,
                quota_bytes: self.disk_quota_bytes,
                stopped,
            });
        }
        Ok(checks)
    }
}

/// Whether two specs differ at most in [`InstanceSpec::held_stopped`], which reconcile
/// applies to the instance in place.
fn same_but_held(old: &InstanceSpec, new: &InstanceSpec) -> bool {
    let mut old = old.clone();
    old.held_stopped = new.held_stopped;
    old == *new
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::spec::InstanceIdentity;

    fn spec(name: &str, ports: InstancePorts) -> InstanceSpec {
        let identity = InstanceIdentity {
            contract_id: "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10".into(),
            owner_pubkey: format!("ed{}", "ab".repeat(32)),
            node_secret: "cd".repeat(32),
        };
        InstanceSpec::hotpocket(name, format!("lease-{name}"), identity, ports)
    }

    #[tokio::test]
    async fn recording_fake_records_calls_and_injects_failures() {
        let fake = RecordingProvisioner::default();
        let provisioner: &dyn Provisioner = &fake;
        let ports = provisioner.allocate_ports(&BTreeSet::new()).await.unwrap();
        assert_eq!(
            ports,
            InstancePorts {
                user: 26000,
                peer: 22000
            }
        );
        let a = spec("a", ports);
        provisioner.create(&a).await.unwrap();
        provisioner.start("a").await.unwrap();
        assert_eq!(provisioner.health("a").await.unwrap(), Health::Answering);
        let next = provisioner.allocate_ports(&BTreeSet::new()).await.unwrap();
        assert_eq!(
            next,
            InstancePorts {
                user: 26001,
                peer: 22001
            }
        );

        fake.fail_next(Operation::Start, "b");
        let b = spec("b", next);
        provisioner.create(&b).await.unwrap();
        let error = provisioner.start("b").await.unwrap_err();
        assert_eq!(error.to_string(), "cannot start instance b");
        assert!(matches!(
            provisioner.create(&spec("c", next)).await,
            Err(ProvisionError::PortTaken { port: 26001, .. })
        ));

        fake.lose("a");
        let actions = provisioner
            .reconcile(&[a.clone(), b.clone()])
            .await
            .unwrap();
        assert_eq!(
            actions,
            vec![
                ReconcileAction::Recreated {
                    instance: "a".into()
                },
                ReconcileAction::Started {
                    instance: "b".into()
                },
            ]
        );
        fake.set_disk_usage("b", 2 << 30);
        let checks = provisioner.enforce_disk_quota().await.unwrap();
        assert!(checks.iter().any(|c| c.instance == "b" && c.stopped));
        assert_eq!(
            provisioner.health("b").await.unwrap(),
            Health::NotRunning(InstanceState::Exited)
        );
        assert!(provisioner.destroy("a").await.unwrap().container_removed);
        assert!(provisioner.destroy("a").await.unwrap().was_already_gone());
        assert_eq!(
            fake.calls()[..3],
            [
                Call::AllocatePorts(BTreeSet::new()),
                Call::Create(Box::new(a)),
                Call::Start("a".into())
            ]
        );
    }
}
