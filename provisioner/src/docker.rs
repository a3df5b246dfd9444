//! The real provisioner: the Docker engine through bollard.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, HostConfig,
    HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount, MountType, PortBinding,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::config::{DiskQuotaPolicy, InstanceLimits, ProvisionerConfig};
use crate::egress::{self, EgressPolicy, EgressStatus};
use crate::error::{
    is_conflict, is_not_found, is_not_modified, is_removal_in_progress, Operation, ProvisionError,
};
use crate::image::{ensure_image, ImageOutcome, ImageSpec};
use crate::ports::{self, InstancePorts};
use crate::provisioner::{
    DestroyOutcome, DiskCheck, DiskQuotaMode, Health, HostStatus, InstanceState, InstanceStatus,
    InstanceSummary, Provisioner, ReconcileAction,
};
use crate::spec::{labels, validate_name, InstanceSpec};

/// Storage drivers whose `storage-opt size` Docker supports (overlay2 only on xfs with pquota).
const QUOTA_DRIVERS: [&str; 4] = ["devicemapper", "btrfs", "zfs", "windowsfilter"];

/// Instances as hardened containers on the local Docker engine.
#[derive(Debug, Clone)]
pub struct DockerProvisioner {
    docker: Docker,
    config: ProvisionerConfig,
    limits: InstanceLimits,
    storage_driver: String,
    disk_mode: DiskQuotaMode,
    /// What was done about instances' egress, once per provisioner (`secure_network`).
    egress: std::sync::Arc<tokio::sync::OnceCell<EgressStatus>>,
}

impl DockerProvisioner {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and negotiates the
    /// API version.
    pub async fn connect(config: ProvisionerConfig) -> Result<Self, ProvisionError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|source| ProvisionError::Connect { source })?
            .negotiate_version()
            .await
            .map_err(|source| ProvisionError::Connect { source })?;
        Self::with_docker(docker, config).await
    }

    /// Uses an existing connection; reads the storage driver to pick the disk quota mode.
    pub async fn with_docker(
        docker: Docker,
        config: ProvisionerConfig,
    ) -> Result<Self, ProvisionError> {
        config.validate()?;
        let info = docker
            .info()
            .await
            .map_err(|source| ProvisionError::Connect { source })?;
        let storage_driver = info.driver.unwrap_or_default();
        let backing_xfs = info.driver_status.unwrap_or_default().iter().any(|pair| {
            pair.first().is_some_and(|k| k == "Backing Filesystem")
                && pair.get(1).is_some_and(|v| v == "xfs")
        });
        let supported = QUOTA_DRIVERS.contains(&storage_driver.as_str())
            || (storage_driver == "overlay2" && backing_xfs);
        let disk_mode = match config.disk_quota {
            DiskQuotaPolicy::Auto if supported => DiskQuotaMode::StorageOptAndWatchdog,
            _ => DiskQuotaMode::Watchdog,
        };
        tracing::info!(storage_driver, %disk_mode, namespace = config.namespace, "docker provisioner ready");
        let limits = config.instance_limits();
        Ok(Self {
            docker,
            config,
            limits,
            storage_driver,
            disk_mode,
            egress: Default::default(),
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Makes the instances' network and, as `config.egress` says, the rules that keep
    /// instances off private and link-local networks ([`crate::egress`]). Done once per
    /// provisioner; later calls return what the first one did. `Block` fails when the rules
    /// cannot be installed; `BlockIfPossible` reports it in the status.
    pub async fn secure_network(&self) -> Result<EgressStatus, ProvisionError> {
        self.ensure_network().await?;
        self.egress
            .get_or_try_init(|| async {
                let policy = self.config.egress;
                if policy == EgressPolicy::Allow {
                    return Ok(EgressStatus::NotFiltered);
                }
                let installed = match self.bridge_of(&self.config.network).await {
                    Ok(bridge) => egress::install(
                        &egress::SystemIptables,
                        &bridge,
                        &self.config.egress_allow,
                    )
                    .await
                    .map(|()| bridge),
                    Err(e) => Err(e.to_string()),
                };
                match installed {
                    Ok(bridge) => {
                        let status = EgressStatus::Filtered {
                            bridge,
                            allowed: self.config.egress_allow.clone(),
                        };
                        tracing::info!(network = self.config.network, %status, "instances' egress");
                        Ok(status)
                    }
                    Err(reason) if policy == EgressPolicy::BlockIfPossible => {
                        tracing::warn!(network = self.config.network, reason,
                            "instances can reach private networks: the egress rules could not be installed");
                        Ok(EgressStatus::Failed { reason })
                    }
                    Err(reason) => Err(ProvisionError::Egress {
                        network: self.config.network.clone(),
                        reason,
                    }),
                }
            })
            .await
            .cloned()
    }

    async fn inspect_network(
        &self,
        name: &str,
    ) -> Result<bollard::models::NetworkInspect, ProvisionError> {
        self.docker
            .inspect_network(name, None)
            .await
            .map_err(|source| ProvisionError::EngineNamespace {
                namespace: self.config.namespace.clone(),
                op: Operation::Inspect,
                source,
            })
    }

    /// The Linux bridge of a Docker network: its `bridge.name` option, else `br-<id prefix>`.
    async fn bridge_of(&self, network: &str) -> Result<String, ProvisionError> {
        let inspected = self.inspect_network(network).await?;
        if let Some(name) = inspected
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name"))
        {
            return Ok(name.clone());
        }
        let id = inspected.id.unwrap_or_default();
        match id.get(..12) {
            Some(prefix) => Ok(format!("br-{prefix}")),
            None => Err(ProvisionError::Egress {
                network: network.to_owned(),
                reason: format!("the engine gave the network an unexpected id `{id}`"),
            }),
        }
    }

    /// Makes the instances' network (a bridge with `enable_icc=false`) when it is missing.
    /// Another provisioner making it at the same time is fine.
    async fn ensure_network(&self) -> Result<(), ProvisionError> {
        let name = &self.config.network;
        let engine = |source| ProvisionError::EngineNamespace {
            namespace: self.config.namespace.clone(),
            op: Operation::Create,
            source,
        };
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(engine(error)),
        }
        let request = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_owned()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            )])),
            labels: Some(HashMap::from([(
                labels::MANAGED.to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {
                tracing::info!(
                    network = name,
                    "made the instances' network (no inter-container traffic)"
                );
                Ok(())
            }
            // Made meanwhile by another provisioner.
            Err(_) if self.docker.inspect_network(name, None).await.is_ok() => Ok(()),
            Err(error) => Err(engine(error)),
        }
    }

    /// The gateway address of Docker's default `bridge` network: an address of this machine
    /// that containers on the bridge reach (published ports included). `None` when the
    /// engine names none.
    pub async fn bridge_gateway(&self) -> Result<Option<std::net::IpAddr>, ProvisionError> {
        let network = self.inspect_network("bridge").await?;
        Ok(network
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .filter_map(|c| c.gateway)
            .find_map(|g| g.parse::<std::net::Ipv4Addr>().ok())
            .map(std::net::IpAddr::V4))
    }

    pub fn config(&self) -> &ProvisionerConfig {
        &self.config
    }

    pub fn disk_quota_mode(&self) -> DiskQuotaMode {
        self.disk_mode
    }

    pub fn container_name(&self, instance: &str) -> String {
        format!("{}-{}", self.config.namespace, instance)
    }

    pub fn volume_name(&self, instance: &str) -> String {
        format!("{}-{}-state", self.config.namespace, instance)
    }

    fn namespace_error(
        &self,
        op: Operation,
    ) -> impl FnOnce(bollard::errors::Error) -> ProvisionError + '_ {
        move |source| ProvisionError::EngineNamespace {
            namespace: self.config.namespace.clone(),
            op,
            source,
        }
    }

    fn namespace_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{}=true", labels::MANAGED),
                format!("{}={}", labels::NAMESPACE, self.config.namespace),
            ],
        )])
    }

    /// Ports held by the instances of this namespace, per the engine.
    pub async fn ports_in_use(&self) -> Result<BTreeSet<u16>, ProvisionError> {
        Ok(self
            .list()
            .await?
            .iter()
            .filter_map(|summary| summary.ports)
            .flat_map(|ports| [ports.user, ports.peer])
            .collect())
    }

    fn host_config(&self, spec: &InstanceSpec) -> HostConfig {
        let limits = &self.limits;
        let host_ip = self.config.host_ip.to_string();
        let port_bindings = [spec.ports.user, spec.ports.peer]
            .into_iter()
            .map(|port| {
                let binding = PortBinding {
                    host_ip: Some(host_ip.clone()),
                    host_port: Some(port.to_string()),
                };
                (format!("{port}/tcp"), Some(vec![binding]))
            })
            .collect();
        let storage_opt = (self.disk_mode == DiskQuotaMode::StorageOptAndWatchdog)
            .then(|| HashMap::from([("size".to_owned(), limits.disk_bytes.to_string())]));
        HostConfig {
            cpu_period: Some(InstanceLimits::CPU_PERIOD_MICROS),
            cpu_quota: Some(limits.cpu_quota_micros()),
            memory: Some(limits.memory_bytes),
            memory_swap: Some(limits.memory_swap_bytes()),
            pids_limit: Some(limits.pids),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".to_owned()),
                soft: Some(limits.open_files),
                hard: Some(limits.open_files),
            }]),
            mounts: Some(vec![Mount {
                target: Some(spec.state_dir.clone()),
                source: Some(self.volume_name(&spec.name)),
                typ: Some(MountType::VOLUME),
                read_only: Some(false),
                ..Default::default()
            }]),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                format!(
                    "rw,noexec,nosuid,nodev,size={},mode=1777",
                    limits.tmpfs_bytes
                ),
            )])),
            port_bindings: Some(port_bindings),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            readonly_rootfs: Some(true),
            // docker-init as PID 1: forwards SIGTERM to the runtime and reaps zombies.
            init: Some(true),
            privileged: Some(false),
            network_mode: Some(self.config.network.clone()),
            ipc_mode: Some("private".to_owned()),
            cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
            runtime: self.config.runtime.clone(),
            storage_opt,
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "10m".to_owned()),
                    ("max-file".to_owned(), "3".to_owned()),
                ])),
            }),
            ..Default::default()
        }
    }

    fn container_body(&self, spec: &InstanceSpec) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            // The spec's command is the whole argv: it replaces the image's ENTRYPOINT
            // (the hotpocket image has one), and the image's CMD is then not inherited.
            entrypoint: Some(spec.command.clone()),
            cmd: None,
            env: Some(spec.env()),
            user: Some(spec.user.clone()),
            hostname: Some(spec.name.clone()),
            labels: Some(spec.labels(&self.config.namespace)),
            exposed_ports: Some(vec![
                format!("{}/tcp", spec.ports.user),
                format!("{}/tcp", spec.ports.peer),
            ]),
            stop_timeout: Some(i64::from(self.config.stop_timeout_secs)),
            host_config: Some(self.host_config(spec)),
            ..Default::default()
        }
    }

    /// The lease label of the instance's state volume, `None` when there is no volume.
    async fn volume_lease(
        &self,
        instance: &str,
        op: Operation,
    ) -> Result<Option<String>, ProvisionError> {
        match self
            .docker
            .inspect_volume(&self.volume_name(instance))
            .await
        {
            Ok(volume) => Ok(Some(
                volume
                    .labels
                    .get(labels::LEASE)
                    .cloned()
                    .unwrap_or_default(),
            )),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(source) => Err(ProvisionError::engine(instance, op, source)),
        }
    }

    /// Creates the state volume unless it exists; true when this call created it. A volume
    /// left by another lease is refused: its state must not be handed over.
    async fn ensure_volume(&self, spec: &InstanceSpec) -> Result<bool, ProvisionError> {
        let volume = self.volume_name(&spec.name);
        match self.volume_lease(&spec.name, Operation::Create).await? {
            Some(lease) if lease == spec.lease_id => return Ok(false),
            Some(lease) => {
                return Err(ProvisionError::ForeignVolume {
                    instance: spec.name.clone(),
                    volume,
                    lease,
                })
            }
            None => {}
        }
        let request = VolumeCreateRequest {
            name: Some(volume),
            labels: Some(spec.labels(&self.config.namespace)),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map_err(|source| ProvisionError::engine(&spec.name, Operation::Create, source))?;
        Ok(true)
    }

    async fn remove_volume(&self, instance: &str, op: Operation) -> Result<bool, ProvisionError> {
        let volume = self.volume_name(instance);
        let mut attempt = 0;
        loop {
            match self
                .docker
                .remove_volume(
                    &volume,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => return Ok(true),
                Err(error) if is_not_found(&error) => return Ok(false),
                // The engine may still hold the volume for a moment after a forced removal.
                Err(error) if is_conflict(&error) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(source) => return Err(ProvisionError::engine(instance, op, source)),
            }
        }
    }

    async fn remove_container(
        &self,
        instance: &str,
        op: Operation,
    ) -> Result<bool, ProvisionError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(false)
            .build();
        match self
            .docker
            .remove_container(&self.container_name(instance), Some(options))
            .await
        {
            Ok(()) => Ok(true),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) if is_removal_in_progress(&error) => {
                self.await_removal(instance, op, error).await
            }
            Err(source) => Err(ProvisionError::engine(instance, op, source)),
        }
    }

    /// Waits (up to a minute) until a container another call is removing is gone.
    async fn await_removal(
        &self,
        instance: &str,
        op: Operation,
        error: bollard::errors::Error,
    ) -> Result<bool, ProvisionError> {
        tracing::info!(
            instance,
            "container removal already in progress, waiting for it"
        );
        for _ in 0..600 {
            match self
                .docker
                .inspect_container(&self.container_name(instance), None)
                .await
            {
                Err(e) if is_not_found(&e) => return Ok(true),
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                Err(source) => return Err(ProvisionError::engine(instance, op, source)),
            }
        }
        Err(ProvisionError::engine(instance, op, error))
    }

    async fn create_checked(
        &self,
        spec: &InstanceSpec,
        existing: &[InstanceSummary],
    ) -> Result<(), ProvisionError> {
        spec.validate()?;
        self.secure_network().await?;
        for (range, port, field) in [
            (self.config.user_ports, spec.ports.user, "user port"),
            (self.config.peer_ports, spec.ports.peer, "peer port"),
        ] {
            if !range.contains(port) {
                return Err(ProvisionError::InvalidSpec {
                    instance: spec.name.clone(),
                    field: "ports",
                    reason: format!("{field} {port} is outside the configured range {range}"),
                });
            }
        }
        if existing.iter().any(|other| other.name == spec.name) {
            return Err(ProvisionError::AlreadyExists {
                instance: spec.name.clone(),
            });
        }
        let limit = self.config.resources.instances;
        if existing.len() >= limit as usize {
            return Err(ProvisionError::CapacityReached { limit });
        }
        for other in existing {
            if let Some(ports) = other.ports {
                for port in [spec.ports.user, spec.ports.peer] {
                    if port == ports.user || port == ports.peer {
                        return Err(ProvisionError::PortTaken {
                            instance: spec.name.clone(),
                            port,
                            holder: other.name.clone(),
                        });
                    }
                }
            }
        }
        let created_volume = self.ensure_volume(spec).await?;
        let options = CreateContainerOptionsBuilder::default()
            .name(&self.container_name(&spec.name))
            .build();
        if let Err(source) = self
            .docker
            .create_container(Some(options), self.container_body(spec))
            .await
        {
            // A name conflict means another caller created this instance meanwhile: what
            // exists is theirs.
            if is_conflict(&source) {
                return Err(ProvisionError::AlreadyExists {
                    instance: spec.name.clone(),
                });
            }
            // Leave nothing behind: a half-made container (after a lost answer) and the volume
            // this call made.
            let _ = self.remove_container(&spec.name, Operation::Create).await;
            if created_volume {
                if let Err(cleanup) = self.remove_volume(&spec.name, Operation::Create).await {
                    tracing::warn!(instance = spec.name, error = %berth_log::chain(&cleanup), "failed create left its volume");
                }
            }
            return Err(ProvisionError::engine(
                &spec.name,
                Operation::Create,
                source,
            ));
        }
        tracing::info!(
            instance = spec.name,
            lease = spec.lease_id,
            user_port = spec.ports.user,
            peer_port = spec.ports.peer,
            "instance created"
        );
        Ok(())
    }

    /// Whether the user port answers: a connection that brings data or stays open. Docker's
    /// userland proxy accepts and then closes at once while nothing listens inside.
    pub async fn user_port_answers(&self, port: u16) -> bool {
        let ip = match self.config.host_ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ip => ip,
        };
        let connect = tokio::net::TcpStream::connect(SocketAddr::new(ip, port));
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
            return false;
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut byte)).await {
            Ok(Ok(read)) => read > 0,
            Ok(Err(_)) => false,
            Err(_elapsed) => true,
        }
    }

    /// Bytes used by an instance's state volume, measured on the host filesystem (the caller
    /// must be able to read Docker's volume directory, as root can).
    pub async fn volume_usage(&self, instance: &str) -> Result<u64, ProvisionError> {
        let volume = self.volume_name(instance);
        let info = self
            .docker
            .inspect_volume(&volume)
            .await
            .map_err(|source| ProvisionError::engine(instance, Operation::MeasureDisk, source))?;
        let path = std::path::PathBuf::from(info.mountpoint);
        let measured = path.clone();
        tokio::task::spawn_blocking(move || disk_usage(&measured))
            .await
            .map_err(std::io::Error::other)
            .and_then(|usage| usage)
            .map_err(|source| ProvisionError::VolumeRead {
                instance: instance.to_owned(),
                volume,
                path: path.display().to_string(),
                source,
            })
    }

    /// Hands a pooled instance its identity through its state volume's directory on this
    /// host, when this process may write there (root, the local volume driver): two small
    /// files, written and synced in order, with no engine call but two inspections. The
    /// engine's archive API runs an untar process per call, and a burst of them queues for
    /// seconds. False when the directory is not writable here (then the caller uploads);
    /// `NotFound` when the container is gone.
    async fn assign_through_volume(&self, spec: &InstanceSpec) -> Result<bool, ProvisionError> {
        match self
            .docker
            .inspect_container(&self.container_name(&spec.name), None)
            .await
        {
            Ok(_) => {}
            Err(error) if is_not_found(&error) => {
                tracing::warn!(instance = spec.name, %error, "the engine does not know the instance");
                return Err(ProvisionError::NotFound {
                    instance: spec.name.clone(),
                });
            }
            Err(source) => {
                return Err(ProvisionError::engine(
                    &spec.name,
                    Operation::Assign,
                    source,
                ))
            }
        }
        let Ok(volume) = self
            .docker
            .inspect_volume(&self.volume_name(&spec.name))
            .await
        else {
            return Ok(false);
        };
        let dir = std::path::PathBuf::from(volume.mountpoint);
        let env = spec.assignment_env();
        let written =
            tokio::task::spawn_blocking(move || write_assignment(&dir, env.as_bytes())).await;
        match written {
            Ok(Ok(())) => Ok(true),
            Ok(Err(error)) => {
                tracing::debug!(instance = spec.name, %error, "state volume not writable here: assigning through the engine");
                Ok(false)
            }
            Err(error) => {
                tracing::debug!(instance = spec.name, %error, "assignment task failed: assigning through the engine");
                Ok(false)
            }
        }
    }

    /// One pass of the disk watchdog: measures every instance's state volume and stops the
    /// running ones over their quota.
    pub async fn enforce_disk_quota(&self) -> Result<Vec<DiskCheck>, ProvisionError> {
        let quota = self.limits.disk_bytes;
        let mut checks = Vec::new();
        for summary in self.list().await? {
            let used = match self.volume_usage(&summary.name).await {
                Ok(used) => used,
                Err(error) => {
                    tracing::warn!(instance = summary.name, error = %berth_log::chain(&error), "cannot measure state volume");
                    continue;
                }
            };
            let over = used > quota;
            let stopped = over && summary.state == InstanceState::Running;
            if stopped {
                tracing::warn!(
                    instance = summary.name,
                    used,
                    quota,
                    "instance over its disk quota: stopping"
                );
                self.stop(&summary.name).await?;
            }
            checks.push(DiskCheck {
                instance: summary.name,
                used_bytes: used,
                quota_bytes: quota,
                stopped,
            });
        }
        Ok(checks)
    }

    /// Runs the disk watchdog every `interval` until `shutdown` is cancelled. The caller owns
    /// the task (spawn it on its `TaskTracker`).
    pub async fn run_disk_watchdog(
        self,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    if let Err(error) = self.enforce_disk_quota().await {
                        tracing::warn!(error = %berth_log::chain(&error), "disk watchdog pass failed");
                    }
                }
            }
        }
        tracing::debug!("disk watchdog stopped");
    }

    async fn reconcile_one(
        &self,
        spec: &InstanceSpec,
        existing: Option<&InstanceSummary>,
    ) -> Result<ReconcileAction, ProvisionError> {
        let instance = spec.name.clone();
        let Some(current) = existing else {
            let lease = self.volume_lease(&spec.name, Operation::Reconcile).await?;
            if lease.is_some_and(|lease| lease != spec.lease_id) {
                self.remove_volume(&spec.name, Operation::Reconcile).await?;
            }
            self.create_and_start(spec).await?;
            return Ok(ReconcileAction::Recreated { instance });
        };
        let image = self
            .docker
            .inspect_container(&self.container_name(&spec.name), None)
            .await
            .map_err(|source| ProvisionError::engine(&spec.name, Operation::Reconcile, source))?
            .config
            .and_then(|config| config.image);
        let drifted = current.lease_id != spec.lease_id
            || current.ports != Some(spec.ports)
            || image.is_some_and(|image| image != spec.image);
        match current.state {
            _ if drifted => {
                self.remove_container(&spec.name, Operation::Reconcile)
                    .await?;
                if current.lease_id != spec.lease_id {
                    self.remove_volume(&spec.name, Operation::Reconcile).await?;
                }
                self.create_and_start(spec).await?;
                Ok(ReconcileAction::Replaced { instance })
            }
            InstanceState::Created | InstanceState::Exited if spec.held_stopped => {
                Ok(ReconcileAction::Kept { instance })
            }
            InstanceState::Running | InstanceState::Restarting if spec.held_stopped => {
                self.stop(&spec.name).await?;
                Ok(ReconcileAction::Stopped { instance })
            }
            InstanceState::Dead | InstanceState::Removing | InstanceState::Unknown => {
                self.remove_container(&spec.name, Operation::Reconcile)
                    .await?;
                self.create_and_start(spec).await?;
                Ok(ReconcileAction::Replaced { instance })
            }
            // The restart policy is already bringing it back.
            InstanceState::Running | InstanceState::Restarting => {
                Ok(ReconcileAction::Kept { instance })
            }
            InstanceState::Paused => {
                self.docker
                    .unpause_container(&self.container_name(&spec.name))
                    .await
                    .map_err(|source| {
                        ProvisionError::engine(&spec.name, Operation::Start, source)
                    })?;
                Ok(ReconcileAction::Started { instance })
            }
            InstanceState::Created | InstanceState::Exited => {
                self.start(&spec.name).await?;
                Ok(ReconcileAction::Started { instance })
            }
        }
    }

    async fn create_and_start(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        let others = self.list().await?;
        self.create_checked(spec, &others).await?;
        self.start(&spec.name).await
    }

    async fn managed_volumes(&self) -> Result<Vec<String>, ProvisionError> {
        let options = ListVolumesOptionsBuilder::default()
            .filters(&self.namespace_filter())
            .build();
        let response = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(self.namespace_error(Operation::Reconcile))?;
        Ok(response
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|volume| volume.labels.get(labels::INSTANCE).cloned())
            .collect())
    }
}

/// Writes [`crate::spec::ASSIGNMENT_ENV`] (through a temporary file and a rename), then
/// [`crate::spec::ASSIGNED_MARKER`], each synced, mode 0644 (the engine's upload makes the
/// same files, owned by root, readable by the instance's user).
fn write_assignment(dir: &std::path::Path, env: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a directory here", dir.display()),
        ));
    }
    let write = |path: &std::path::Path, bytes: &[u8]| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    let temporary = dir.join(format!(".{}.tmp", crate::spec::ASSIGNMENT_ENV));
    write(&temporary, env)?;
    std::fs::rename(&temporary, dir.join(crate::spec::ASSIGNMENT_ENV))?;
    write(&dir.join(crate::spec::ASSIGNED_MARKER), b"assigned\n")
}

fn disk_usage(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            total = total.saturating_add(metadata.blocks().saturating_mul(512));
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

fn summary_state(state: Option<ContainerSummaryStateEnum>) -> InstanceState {
    match state {
        Some(ContainerSummaryStateEnum::CREATED) => InstanceState::Created,
        Some(ContainerSummaryStateEnum::RUNNING) => InstanceState::Running,
        Some(ContainerSummaryStateEnum::PAUSED) => InstanceState::Paused,
        Some(ContainerSummaryStateEnum::RESTARTING) => InstanceState::Restarting,
        Some(ContainerSummaryStateEnum::EXITED) => InstanceState::Exited,
        Some(ContainerSummaryStateEnum::DEAD) => InstanceState::Dead,
        Some(ContainerSummaryStateEnum::REMOVING) => InstanceState::Removing,
        _ => InstanceState::Unknown,
    }
}

fn inspect_state(state: Option<ContainerStateStatusEnum>) -> InstanceState {
    match state {
        Some(ContainerStateStatusEnum::CREATED) => InstanceState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => InstanceState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => InstanceState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => InstanceState::Restarting,
        Some(ContainerStateStatusEnum::EXITED) => InstanceState::Exited,
        Some(ContainerStateStatusEnum::DEAD) => InstanceState::Dead,
        Some(ContainerStateStatusEnum::REMOVING) => InstanceState::Removing,
        _ => InstanceState::Unknown,
    }
}

/// Starting a running or stopping a stopped container (304) succeeds.
fn already_done_is_done(
    name: &str,
    op: Operation,
    result: Result<(), bollard::errors::Error>,
) -> Result<(), ProvisionError> {
    match result {
        Ok(()) => Ok(()),
        Err(error) if is_not_modified(&error) => Ok(()),
        Err(error) if is_not_found(&error) => {
            tracing::warn!(instance = name, %op, %error, "the engine does not know the instance");
            Err(ProvisionError::NotFound {
                instance: name.to_owned(),
            })
        }
        Err(source) => Err(ProvisionError::engine(name, op, source)),
    }
}

fn ports_from_labels(labels: &HashMap<String, String>) -> Option<InstancePorts> {
    let user = labels.get(labels::USER_PORT)?.parse().ok()?;
    let peer = labels.get(labels::PEER_PORT)?.parse().ok()?;
    Some(InstancePorts { user, peer })
}

/// True when something on this host already listens on `ip:port`.
fn host_port_busy(ip: IpAddr, port: u16) -> bool {
    TcpListener::bind(SocketAddr::new(ip, port)).is_err()
}

#[async_trait::async_trait]
impl Provisioner for DockerProvisioner {
    async fn ensure_image(&self, image: &ImageSpec) -> Result<ImageOutcome, ProvisionError> {
        ensure_image(&self.docker, image).await
    }

    async fn allocate_ports(
        &self,
        reserved: &BTreeSet<u16>,
    ) -> Result<InstancePorts, ProvisionError> {
        let mut taken: BTreeSet<u16> = self.ports_in_use().await?;
        taken.extend(reserved);
        // Skip ports something else on the host listens on; the engine would refuse them at start.
        loop {
            let pair = ports::allocate(self.config.user_ports, self.config.peer_ports, &taken)?;
            let busy: Vec<u16> = [pair.user, pair.peer]
                .into_iter()
                .filter(|port| host_port_busy(self.config.host_ip, *port))
                .collect();
            if busy.is_empty() {
                return Ok(pair);
            }
            taken.extend(busy);
        }
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        let existing = self.list().await?;
        self.create_checked(spec, &existing).await
    }

    async fn assign(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        validate_name(&spec.name)?;
        spec.validate_identity()?;
        if self.assign_through_volume(spec).await? {
            tracing::info!(instance = spec.name, "pooled instance assigned");
            return Ok(());
        }
        // One archive, extracted in order: the marker only after the identity is complete.
        // Docker extracts into the state volume (not the read-only root) as root, mode 0644,
        // so the instance's user can read it; the runtime keeps its own copy in hp.cfg.
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in [
            (
                crate::spec::ASSIGNMENT_ENV,
                spec.assignment_env().into_bytes(),
            ),
            (crate::spec::ASSIGNED_MARKER, b"assigned\n".to_vec()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, bytes.as_slice())
                .map_err(|source| ProvisionError::Archive {
                    instance: spec.name.clone(),
                    source,
                })?;
        }
        let archive = builder
            .into_inner()
            .map_err(|source| ProvisionError::Archive {
                instance: spec.name.clone(),
                source,
            })?;
        let options = bollard::query_parameters::UploadToContainerOptionsBuilder::default()
            .path(&spec.state_dir)
            .build();
        match self
            .docker
            .upload_to_container(
                &self.container_name(&spec.name),
                Some(options),
                bollard::body_full(archive.into()),
            )
            .await
        {
            Ok(()) => {
                tracing::info!(instance = spec.name, "pooled instance assigned");
                Ok(())
            }
            Err(error) if is_not_found(&error) => {
                tracing::warn!(instance = spec.name, %error, "the engine does not know the instance (or its state directory)");
                Err(ProvisionError::NotFound {
                    instance: spec.name.clone(),
                })
            }
            Err(source) => Err(ProvisionError::engine(
                &spec.name,
                Operation::Assign,
                source,
            )),
        }
    }

    async fn start(&self, name: &str) -> Result<(), ProvisionError> {
        validate_name(name)?;
        let result = self
            .docker
            .start_container(&self.container_name(name), None)
            .await;
        already_done_is_done(name, Operation::Start, result)
    }

    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        validate_name(name)?;
        let timeout = i32::try_from(self.config.stop_timeout_secs).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(timeout).build();
        let result = self
            .docker
            .stop_container(&self.container_name(name), Some(options))
            .await;
        already_done_is_done(name, Operation::Stop, result)
    }

    async fn destroy(&self, name: &str) -> Result<DestroyOutcome, ProvisionError> {
        validate_name(name)?;
        let container_removed = self.remove_container(name, Operation::Destroy).await?;
        let volume_removed = self.remove_volume(name, Operation::Destroy).await?;
        tracing::info!(
            instance = name,
            container_removed,
            volume_removed,
            "instance destroyed"
        );
        Ok(DestroyOutcome {
            container_removed,
            volume_removed,
        })
    }

    async fn inspect(&self, name: &str) -> Result<InstanceStatus, ProvisionError> {
        validate_name(name)?;
        let response = match self
            .docker
            .inspect_container(&self.container_name(name), None)
            .await
        {
            Ok(response) => response,
            Err(error) if is_not_found(&error) => {
                return Err(ProvisionError::NotFound {
                    instance: name.to_owned(),
                })
            }
            Err(source) => return Err(ProvisionError::engine(name, Operation::Inspect, source)),
        };
        let labels = response
            .config
            .as_ref()
            .and_then(|config| config.labels.clone())
            .unwrap_or_default();
        let state = response.state.unwrap_or_default();
        Ok(InstanceStatus {
            summary: InstanceSummary {
                name: name.to_owned(),
                lease_id: labels.get(labels::LEASE).cloned().unwrap_or_default(),
                container_id: response.id.unwrap_or_default(),
                state: inspect_state(state.status),
                ports: ports_from_labels(&labels),
            },
            oom_killed: state.oom_killed.unwrap_or(false),
            exit_code: state.exit_code,
            restart_count: response.restart_count.unwrap_or(0),
            started_at: state.started_at,
        })
    }

    async fn health(&self, name: &str) -> Result<Health, ProvisionError> {
        let status = self.inspect(name).await?;
        let state = status.summary.state;
        match (state, status.summary.ports) {
            (InstanceState::Running, Some(ports)) => {
                Ok(if self.user_port_answers(ports.user).await {
                    Health::Answering
                } else {
                    Health::NotAnswering
                })
            }
            (InstanceState::Running, None) => Ok(Health::NotAnswering),
            (other, _) => Ok(Health::NotRunning(other)),
        }
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String, ProvisionError> {
        validate_name(name)?;
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let mut stream = self.docker.logs(&self.container_name(name), Some(options));
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(output) => text.push_str(&output.to_string()),
                Err(error) if is_not_found(&error) => {
                    return Err(ProvisionError::NotFound {
                        instance: name.to_owned(),
                    })
                }
                Err(source) => return Err(ProvisionError::engine(name, Operation::Logs, source)),
            }
        }
        Ok(text)
    }

    async fn list(&self) -> Result<Vec<InstanceSummary>, ProvisionError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&self.namespace_filter())
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(self.namespace_error(Operation::List))?;
        let mut summaries: Vec<InstanceSummary> = containers
            .into_iter()
            .filter_map(|container| {
                let labels = container.labels.unwrap_or_default();
                Some(InstanceSummary {
                    name: labels.get(labels::INSTANCE)?.clone(),
                    lease_id: labels.get(labels::LEASE).cloned().unwrap_or_default(),
                    container_id: container.id.unwrap_or_default(),
                    state: summary_state(container.state),
                    ports: ports_from_labels(&labels),
                })
            })
            .collect();
        summaries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(summaries)
    }

    async fn reconcile(
        &self,
        expected: &[InstanceSpec],
    ) -> Result<Vec<ReconcileAction>, ProvisionError> {
        let existing = self.list().await?;
        let wanted: HashSet<&str> = expected.iter().map(|spec| spec.name.as_str()).collect();
        let mut actions = Vec::new();
        let record = |instance: &str, result: Result<ReconcileAction, ProvisionError>| match result
        {
            Ok(action) => action,
            Err(error) => {
                let error = berth_log::chain(&error);
                tracing::warn!(instance, %error, "reconcile step failed");
                ReconcileAction::Failed {
                    instance: instance.to_owned(),
                    error,
                }
            }
        };
        for orphan in existing
            .iter()
            .filter(|summary| !wanted.contains(summary.name.as_str()))
        {
            let result = self
                .destroy(&orphan.name)
                .await
                .map(|_| ReconcileAction::RemovedOrphan {
                    instance: orphan.name.clone(),
                });
            actions.push(record(&orphan.name, result));
        }
        let with_container: HashSet<&str> = existing
            .iter()
            .map(|summary| summary.name.as_str())
            .collect();
        for volume_owner in self.managed_volumes().await? {
            if !wanted.contains(volume_owner.as_str())
                && !with_container.contains(volume_owner.as_str())
            {
                let result = self
                    .remove_volume(&volume_owner, Operation::Reconcile)
                    .await
                    .map(|_| ReconcileAction::RemovedOrphanVolume {
                        instance: volume_owner.clone(),
                    });
                actions.push(record(&volume_owner, result));
            }
        }
        for spec in expected {
            let current = existing.iter().find(|summary| summary.name == spec.name);
            let result = self.reconcile_one(spec, current).await;
            actions.push(record(&spec.name, result));
        }
        Ok(actions)
    }

    async fn host_status(&self) -> Result<HostStatus, ProvisionError> {
        Ok(HostStatus {
            storage_driver: self.storage_driver.clone(),
            disk_quota_mode: self.disk_mode,
            runtime: self.config.runtime.clone(),
            per_instance: self.limits.clone(),
            capacity: self.config.resources.instances,
            instances: self.list().await?.len(),
        })
    }

    async fn enforce_disk_quota(&self) -> Result<Vec<DiskCheck>, ProvisionError> {
        DockerProvisioner::enforce_disk_quota(self).await
    }
}
