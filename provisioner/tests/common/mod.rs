//! Test harness over the real Docker engine: one namespace per test, probe image, cleanup.
#![allow(clippy::unwrap_used, dead_code)]
use std::collections::BTreeSet;

use berth_provisioner::ports::allocate_many;
use berth_provisioner::{
    probe, DockerProvisioner, HostResources, InstanceIdentity, InstancePorts, InstanceSpec,
    PortRange, Provisioner, ProvisionerConfig,
};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use futures_util::StreamExt;

static PROBE_IMAGE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// The engine, or None when it is unreachable and BERTH_REQUIRE_DOCKER is not 1 (then the
/// test says it skipped). With BERTH_REQUIRE_DOCKER=1 an unreachable engine fails the test.
pub async fn docker() -> Option<Docker> {
    let connected = match Docker::connect_with_local_defaults() {
        Ok(docker) => docker.negotiate_version().await,
        Err(error) => Err(error),
    };
    match connected {
        Ok(docker) => Some(docker),
        Err(error) => {
            berth_test_support::docker_unreachable(error);
            None
        }
    }
}

/// A provisioner on its own namespace, with the probe image built; removes everything of the
/// namespace when dropped, also when the test fails.
pub struct Harness {
    pub provisioner: DockerProvisioner,
    pub docker: Docker,
    pub namespace: String,
}

/// A test namespace's config. Egress is left unfiltered: the iptables chain is one for the
/// whole engine, and only the egress test may rewrite it while the others run.
pub fn config(tag: &str, base_port: u16, resources: HostResources) -> ProvisionerConfig {
    let namespace = format!("bpt-{}-{tag}", std::process::id());
    let slots = u16::try_from(resources.instances).unwrap();
    let mut config = ProvisionerConfig::new(
        namespace,
        resources,
        PortRange::new(base_port, base_port + slots + 9),
        PortRange::new(base_port + 50, base_port + 50 + slots + 9),
    );
    config.egress = berth_provisioner::EgressPolicy::Allow;
    config
}

pub fn resources(instances: u32) -> HostResources {
    HostResources {
        cpu_millis: 1000 * u64::from(instances),
        memory_mib: 64 * u64::from(instances),
        swap_mib: 0,
        disk_mib: 64 * u64::from(instances),
        instances,
    }
}

impl Harness {
    pub async fn new(config: ProvisionerConfig) -> Option<Self> {
        let docker = docker().await?;
        let namespace = config.namespace.clone();
        cleanup(&docker, &namespace).await;
        let provisioner = DockerProvisioner::with_docker(docker.clone(), config)
            .await
            .unwrap();
        PROBE_IMAGE
            .get_or_init(|| async {
                let dir = std::env::temp_dir().join(format!("berth-probe-{}", std::process::id()));
                provisioner.ensure_image(&probe::image(dir)).await.unwrap();
            })
            .await;
        Some(Self {
            provisioner,
            docker,
            namespace,
        })
    }

    /// A probe instance with a fresh identity on the given ports.
    pub fn spec(&self, name: &str, lease: &str, ports: InstancePorts) -> InstanceSpec {
        probe::instance(InstanceSpec::hotpocket(name, lease, identity(name), ports))
    }

    /// `count` specs on free ports.
    pub async fn specs(&self, prefix: &str, count: usize) -> Vec<InstanceSpec> {
        let config = self.provisioner.config();
        let in_use = self.provisioner.ports_in_use().await.unwrap();
        allocate_many(config.user_ports, config.peer_ports, &in_use, count)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(index, ports)| {
                self.spec(
                    &format!("{prefix}{index}"),
                    &format!("lease-{prefix}{index}"),
                    ports,
                )
            })
            .collect()
    }

    /// Runs a command in the instance as its user; returns (exit code, output).
    pub async fn exec(&self, instance: &str, cmd: &[&str]) -> (i64, String) {
        let container = self.provisioner.container_name(instance);
        let options = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            ..Default::default()
        };
        let exec = self.docker.create_exec(&container, options).await.unwrap();
        let mut text = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await.unwrap()
        {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&chunk.to_string());
            }
        }
        let inspect = self.docker.inspect_exec(&exec.id).await.unwrap();
        (inspect.exit_code.unwrap_or(-1), text)
    }

    /// Waits until the instance's user port answers, up to `seconds`.
    pub async fn wait_answering(&self, port: u16, seconds: u64) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while std::time::Instant::now() < deadline {
            if self.provisioner.user_port_answers(port).await {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }

    pub fn ports_in(&self, ports: &[InstancePorts]) -> BTreeSet<u16> {
        ports.iter().flat_map(|p| [p.user, p.peer]).collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let namespace = self.namespace.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(docker) = Docker::connect_with_local_defaults() {
                    if let Ok(docker) = docker.negotiate_version().await {
                        cleanup(&docker, &namespace).await;
                    }
                }
            });
        })
        .join();
    }
}

/// Removes every container and volume labelled with the namespace.
pub async fn cleanup(docker: &Docker, namespace: &str) {
    use bollard::query_parameters::{
        ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
        RemoveVolumeOptions,
    };
    use std::collections::HashMap;
    let filters = HashMap::from([("label", vec![format!("berth.namespace={namespace}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for container in docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
    {
        if let Some(id) = container.id {
            let remove = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = docker.remove_container(&id, Some(remove)).await;
        }
    }
    let options = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    if let Ok(response) = docker.list_volumes(Some(options)).await {
        for volume in response.volumes.unwrap_or_default() {
            let _ = docker
                .remove_volume(&volume.name, None::<RemoveVolumeOptions>)
                .await;
        }
    }
}

pub fn identity(seed: &str) -> InstanceIdentity {
    let mut hex = String::new();
    for byte in seed.bytes().cycle().take(32) {
        hex.push_str(&format!("{byte:02x}"));
    }
    InstanceIdentity {
        contract_id: format!(
            "{}-{}-4{}-8{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..15],
            &hex[15..18],
            &hex[18..30]
        ),
        owner_pubkey: format!("ed{hex}"),
        node_secret: hex,
    }
}
