//! The host's declared resources and the provisioner's configuration, validated with errors
//! that name the key.
use std::fmt;
use std::net::IpAddr;

use crate::error::ConfigError;

/// An inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Self {
        Self { first, last }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn len(&self) -> usize {
        usize::from(self.last.saturating_sub(self.first)) + usize::from(self.first <= self.last)
    }

    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    fn validate(&self, key: &'static str) -> Result<(), ConfigError> {
        if self.first == 0 || self.is_empty() {
            return Err(ConfigError::new(
                key,
                self,
                "must be a non-empty range of ports 1-65535",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The totals a host declares for all its instances together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResources {
    /// CPU in thousandths of a core (2 cores = 2000).
    pub cpu_millis: u64,
    pub memory_mib: u64,
    pub swap_mib: u64,
    pub disk_mib: u64,
    /// How many instances the host offers; each gets an equal share of the totals.
    pub instances: u32,
}

/// What one instance may use: an equal share of the host's totals plus fixed limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLimits {
    pub cpu_millis: u64,
    pub memory_bytes: i64,
    pub swap_bytes: i64,
    pub disk_bytes: u64,
    pub pids: i64,
    pub open_files: i64,
    pub tmpfs_bytes: u64,
}

impl InstanceLimits {
    /// The CFS period the CPU quota is counted against (100 ms, the kernel default).
    pub const CPU_PERIOD_MICROS: i64 = 100_000;

    /// The CFS quota in microseconds per period.
    pub fn cpu_quota_micros(&self) -> i64 {
        i64::try_from(self.cpu_millis).unwrap_or(i64::MAX / 1000) * Self::CPU_PERIOD_MICROS / 1000
    }

    /// Docker's `memory-swap`: memory plus swap.
    pub fn memory_swap_bytes(&self) -> i64 {
        self.memory_bytes.saturating_add(self.swap_bytes)
    }
}

const MIB: u64 = 1 << 20;

impl HostResources {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.instances == 0 {
            return Err(ConfigError::new(
                "resources.instances",
                self.instances,
                "must be at least 1",
            ));
        }
        let per = u64::from(self.instances);
        if self.cpu_millis / per < 10 {
            return Err(ConfigError::new(
                "resources.cpu_millis",
                self.cpu_millis,
                format!("gives less than 10 millicores to each of {per} instances"),
            ));
        }
        if self.memory_mib / per < 6 {
            return Err(ConfigError::new(
                "resources.memory_mib",
                self.memory_mib,
                format!("gives less than 6 MiB (docker's minimum) to each of {per} instances"),
            ));
        }
        if self.disk_mib / per < 1 {
            return Err(ConfigError::new(
                "resources.disk_mib",
                self.disk_mib,
                format!("gives less than 1 MiB to each of {per} instances"),
            ));
        }
        for (key, value) in [
            ("resources.memory_mib", self.memory_mib),
            ("resources.swap_mib", self.swap_mib),
            ("resources.disk_mib", self.disk_mib),
        ] {
            if value > (1 << 40) {
                return Err(ConfigError::new(key, value, "is larger than 1 EiB"));
            }
        }
        Ok(())
    }
}

/// How the disk quota of an instance is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskQuotaPolicy {
    /// Use the engine's `storage-opt size` when the storage driver supports it (the state
    /// volume is watched in any case).
    Auto,
    /// Only the watchdog over the state volume.
    Watchdog,
}

/// Everything the provisioner needs to know about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionerConfig {
    /// Prefix of container and volume names and value of the `berth.namespace` label: only
    /// containers and volumes of this namespace are listed, reconciled or removed.
    pub namespace: String,
    pub resources: HostResources,
    pub user_ports: PortRange,
    pub peer_ports: PortRange,
    /// Where instance ports are published.
    pub host_ip: IpAddr,
    /// An OCI runtime other than the engine's default, e.g. `runsc`.
    pub runtime: Option<String>,
    pub pids_limit: i64,
    pub open_files_limit: i64,
    pub tmpfs_mib: u64,
    pub disk_quota: DiskQuotaPolicy,
    /// Seconds an instance has to stop before it is killed.
    pub stop_timeout_secs: u32,
    /// The Docker network instances join: a bridge without inter-container traffic
    /// (`enable_icc=false`), made when missing and shared by every namespace, so that no
    /// instance reaches another directly, only through the ports they publish.
    pub network: String,
    /// Whether instances may reach private and link-local networks (see [`crate::egress`]).
    /// Default: blocked where the rules can be installed.
    pub egress: crate::egress::EgressPolicy,
    /// Private networks instances may still reach when they are blocked.
    pub egress_allow: Vec<crate::egress::Ipv4Net>,
}

/// The network instances join unless the config names another.
pub const DEFAULT_NETWORK: &str = "berth-instances";

impl ProvisionerConfig {
    /// A configuration with the default limits, for the given namespace, resources and ranges.
    pub fn new(
        namespace: impl Into<String>,
        resources: HostResources,
        user_ports: PortRange,
        peer_ports: PortRange,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            resources,
            user_ports,
            peer_ports,
            host_ip: IpAddr::from([0, 0, 0, 0]),
            runtime: None,
            pids_limit: 256,
            open_files_limit: 4096,
            tmpfs_mib: 16,
            disk_quota: DiskQuotaPolicy::Auto,
            stop_timeout_secs: 10,
            network: DEFAULT_NETWORK.to_owned(),
            egress: crate::egress::EgressPolicy::BlockIfPossible,
            egress_allow: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let namespace_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 32
            && self
                .namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && self.namespace.as_bytes()[0].is_ascii_lowercase();
        if !namespace_ok {
            return Err(ConfigError::new(
                "namespace",
                &self.namespace,
                "must be 1-32 of a-z, 0-9 and '-', starting with a letter",
            ));
        }
        self.resources.validate()?;
        self.user_ports.validate("user_ports")?;
        self.peer_ports.validate("peer_ports")?;
        if self.user_ports.overlaps(&self.peer_ports) {
            return Err(ConfigError::new(
                "peer_ports",
                self.peer_ports,
                "overlaps user_ports",
            ));
        }
        let slots = self.resources.instances as usize;
        for (key, range) in [
            ("user_ports", self.user_ports),
            ("peer_ports", self.peer_ports),
        ] {
            if range.len() < slots {
                return Err(ConfigError::new(
                    key,
                    range,
                    format!("has fewer ports than the {slots} instances of resources.instances"),
                ));
            }
        }
        if let Some(runtime) = &self.runtime {
            if runtime.is_empty()
                || !runtime
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(ConfigError::new(
                    "runtime",
                    runtime,
                    "must be a runtime name like runsc",
                ));
            }
        }
        if !(8..=1_000_000).contains(&self.pids_limit) {
            return Err(ConfigError::new(
                "pids_limit",
                self.pids_limit,
                "must be 8-1000000",
            ));
        }
        if !(64..=1_048_576).contains(&self.open_files_limit) {
            return Err(ConfigError::new(
                "open_files_limit",
                self.open_files_limit,
                "must be 64-1048576",
            ));
        }
        if !(1..=1024).contains(&self.tmpfs_mib) {
            return Err(ConfigError::new(
                "tmpfs_mib",
                self.tmpfs_mib,
                "must be 1-1024",
            ));
        }
        if self.stop_timeout_secs > 3600 {
            return Err(ConfigError::new(
                "stop_timeout_secs",
                self.stop_timeout_secs,
                "must be at most 3600",
            ));
        }
        Ok(())
    }

    /// Each instance's share of the host.
    pub fn instance_limits(&self) -> InstanceLimits {
        let per = u64::from(self.resources.instances.max(1));
        let bytes = |mib: u64| i64::try_from(mib / per * MIB).unwrap_or(i64::MAX);
        InstanceLimits {
            cpu_millis: self.resources.cpu_millis / per,
            memory_bytes: bytes(self.resources.memory_mib),
            swap_bytes: bytes(self.resources.swap_mib),
            disk_bytes: self.resources.disk_mib / per * MIB,
            pids: self.pids_limit,
            open_files: self.open_files_limit,
            tmpfs_bytes: self.tmpfs_mib * MIB,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProvisionerConfig {
        ProvisionerConfig::new(
            "berth",
            HostResources {
                cpu_millis: 2000,
                memory_mib: 4096,
                swap_mib: 1024,
                disk_mib: 8192,
                instances: 4,
            },
            PortRange::new(26000, 26099),
            PortRange::new(22000, 22099),
        )
    }

    #[test]
    fn each_instance_gets_an_equal_share() {
        let limits = config().instance_limits();
        assert_eq!(limits.cpu_millis, 500);
        assert_eq!(limits.cpu_quota_micros(), 50_000);
        assert_eq!(limits.memory_bytes, 1024 * 1024 * 1024);
        assert_eq!(limits.memory_swap_bytes(), (1024 + 256) * 1024 * 1024);
        assert_eq!(limits.disk_bytes, 2048 * 1024 * 1024);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut bad = config();
        bad.resources.instances = 0;
        assert_eq!(
            bad.validate().map_err(|e| e.key),
            Err("resources.instances")
        );
        let mut bad = config();
        bad.peer_ports = PortRange::new(26050, 26200);
        assert_eq!(bad.validate().map_err(|e| e.key), Err("peer_ports"));
        let mut bad = config();
        bad.user_ports = PortRange::new(26000, 26001);
        assert_eq!(bad.validate().map_err(|e| e.key), Err("user_ports"));
        let mut bad = config();
        bad.namespace = "Bad Name".into();
        let error = bad.validate().map_err(|e| e.to_string());
        assert_eq!(
            error,
            Err("invalid config key namespace = \"Bad Name\": must be 1-32 of a-z, 0-9 and '-', starting with a letter".into())
        );
        let mut bad = config();
        bad.resources.memory_mib = 10;
        assert_eq!(
            bad.validate().map_err(|e| e.key),
            Err("resources.memory_mib")
        );
        assert!(config().validate().is_ok());
    }
}
