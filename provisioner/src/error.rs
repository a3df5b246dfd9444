//! Errors of the provisioner: each names the instance, image or key it is about.
use std::fmt;

/// What the provisioner was doing when the engine refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Start,
    Stop,
    Destroy,
    Inspect,
    Logs,
    List,
    Reconcile,
    MeasureDisk,
    Assign,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Create => "create",
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Destroy => "destroy",
            Operation::Inspect => "inspect",
            Operation::Logs => "read the logs of",
            Operation::List => "list",
            Operation::Reconcile => "reconcile",
            Operation::MeasureDisk => "measure the disk use of",
            Operation::Assign => "assign",
        })
    }
}

/// A bad value in the provisioner's configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid config key {key} = {value:?}: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(
        key: &'static str,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            key,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot reach the docker engine")]
    Connect {
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot {op} instance {instance}")]
    Engine {
        instance: String,
        op: Operation,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot {op} the instances of namespace {namespace}")]
    EngineNamespace {
        namespace: String,
        op: Operation,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot keep the instances of network {network} off private networks: {reason} (set runtime.private_egress = \"allow\" to run without)")]
    Egress { network: String, reason: String },
    #[error("instance {instance} does not exist")]
    NotFound { instance: String },
    #[error("instance {instance} already exists")]
    AlreadyExists { instance: String },
    #[error("invalid spec of instance {instance}: {field} {reason}")]
    InvalidSpec {
        instance: String,
        field: &'static str,
        reason: String,
    },
    #[error("state volume {volume} of instance {instance} belongs to lease {lease:?}")]
    ForeignVolume {
        instance: String,
        volume: String,
        lease: String,
    },
    #[error("port {port} of instance {instance} is already used by instance {holder}")]
    PortTaken {
        instance: String,
        port: u16,
        holder: String,
    },
    #[error("no free port left in the {kind} port range {range}")]
    PortsExhausted { kind: &'static str, range: String },
    #[error("host capacity reached: {limit} instances")]
    CapacityReached { limit: u32 },
    #[error("cannot inspect image {tag}")]
    ImageInspect {
        tag: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot prepare the build context of image {tag}")]
    ImageContext {
        tag: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build image {tag}")]
    ImageBuild {
        tag: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot read the state volume {volume} of instance {instance} at {path}")]
    VolumeRead {
        instance: String,
        volume: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the assignment archive of instance {instance}")]
    Archive {
        instance: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ProvisionError {
    pub(crate) fn engine(instance: &str, op: Operation, source: bollard::errors::Error) -> Self {
        Self::Engine {
            instance: instance.to_owned(),
            op,
            source,
        }
    }
}

/// True when the engine answered 404 (no such container, volume or image).
pub(crate) fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// True when the engine answered 409 because another call is removing the container
/// already (a process killed while it removed it, then started again, asks once more).
pub(crate) fn is_removal_in_progress(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        } if message.contains("already in progress")
    )
}

/// True when the engine answered 304 (already started / already stopped).
pub(crate) fn is_not_modified(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

/// True when the engine answered 409 (name conflict, removal in progress).
pub(crate) fn is_conflict(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}
