//! What the caller asks for: one instance, with the container contract of the `hotpocket`
//! runtime as defaults (command, environment, state mount, user).
use std::collections::HashMap;

use crate::error::ProvisionError;
use crate::ports::InstancePorts;

/// Labels every managed container and volume carries.
pub mod labels {
    pub const MANAGED: &str = "berth.managed";
    pub const NAMESPACE: &str = "berth.namespace";
    pub const INSTANCE: &str = "berth.instance";
    pub const LEASE: &str = "berth.lease";
    pub const CONTRACT: &str = "berth.contract";
    pub const USER_PORT: &str = "berth.user-port";
    pub const PEER_PORT: &str = "berth.peer-port";
}

/// The identity an instance runs with.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    /// A UUID, e.g. `3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10`.
    pub contract_id: String,
    /// The tenant's key: `ed` followed by 64 hex digits.
    pub owner_pubkey: String,
    /// The node's ed25519 seed: 64 hex digits.
    pub node_secret: String,
}

impl std::fmt::Debug for InstanceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceIdentity")
            .field("contract_id", &self.contract_id)
            .field("owner_pubkey", &self.owner_pubkey)
            .field("node_secret", &"<redacted>")
            .finish()
    }
}

/// One instance as the caller wants it. Build it with [`InstanceSpec::hotpocket`] and change
/// the layout fields when running another image (the tests' probe image does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Short name, unique on the host: 1-40 of a-z, 0-9 and '-'.
    pub name: String,
    pub lease_id: String,
    pub image: String,
    pub identity: InstanceIdentity,
    pub ports: InstancePorts,
    pub command: Vec<String>,
    /// Where the state volume is mounted.
    pub state_dir: String,
    /// `uid:gid` the process runs as; never root.
    pub user: String,
    /// Settings of the node's contract at its creation, as the runtime's `HP_*` variables
    /// (only the names in [`CONTRACT_ENV`]).
    pub contract_env: Vec<(String, String)>,
    /// Added to the environment after the `HP_*` variables.
    pub extra_env: Vec<(String, String)>,
    /// A pooled instance: created and started before it is sold, without an owner. Its
    /// environment carries no identity; it waits for [`ASSIGNED_MARKER`] in its state
    /// directory and then runs with the `HP_*` variables of [`ASSIGNMENT_ENV`] (written by
    /// [`crate::Provisioner::assign`]). `identity` is then only what `assign` will hand over.
    pub awaits_assignment: bool,
    /// The instance is held stopped (its owner went over the disk quota): reconcile keeps it
    /// as it is when stopped and stops it when it runs, instead of starting it.
    pub held_stopped: bool,
}

/// The `HP_*` variables [`InstanceSpec::contract_env`] may set: a cluster node's settings.
pub const CONTRACT_ENV: [&str; 6] = [
    "HP_UNL",
    "HP_PEERS",
    "HP_ROUNDTIME_MS",
    "HP_THRESHOLD",
    "HP_OBSERVER",
    "HP_AWAIT_CLUSTER",
];

/// File in the state directory that hands a pooled instance its `HP_*` identity.
pub const ASSIGNMENT_ENV: &str = "assign.env";
/// File in the state directory written after [`ASSIGNMENT_ENV`]: the instance may start.
pub const ASSIGNED_MARKER: &str = "assigned";

/// The instance image of the hotpocket runtime.
pub const HOTPOCKET_IMAGE: &str = "berth-hotpocket:latest";
pub const DEFAULT_USER: &str = "10001:10001";
pub const DEFAULT_STATE_DIR: &str = "/state";

impl InstanceSpec {
    /// An instance of the hotpocket runtime: `/hotpocket run --state-dir /state` as 10001.
    pub fn hotpocket(
        name: impl Into<String>,
        lease_id: impl Into<String>,
        identity: InstanceIdentity,
        ports: InstancePorts,
    ) -> Self {
        Self {
            name: name.into(),
            lease_id: lease_id.into(),
            image: HOTPOCKET_IMAGE.to_owned(),
            identity,
            ports,
            command: ["/hotpocket", "run", "--state-dir", DEFAULT_STATE_DIR]
                .map(String::from)
                .to_vec(),
            state_dir: DEFAULT_STATE_DIR.to_owned(),
            user: DEFAULT_USER.to_owned(),
            contract_env: Vec::new(),
            extra_env: Vec::new(),
            awaits_assignment: false,
            held_stopped: false,
        }
    }

    /// This spec as a pooled instance (see [`InstanceSpec::awaits_assignment`]). The
    /// hotpocket runtime is run with `--await-assignment`: it blocks on an inotify watch of
    /// its state directory (no CPU) until [`ASSIGNED_MARKER`] appears, then takes its identity
    /// from [`ASSIGNMENT_ENV`]. Other commands (the tests' probe) wait for the assignment
    /// themselves.
    pub fn awaiting_assignment(mut self) -> Self {
        if self.awaits_assignment {
            return self;
        }
        self.awaits_assignment = true;
        if self.command.first().map(String::as_str) == Some("/hotpocket") {
            self.command.push("--await-assignment".into());
        }
        self
    }

    /// The content of [`ASSIGNMENT_ENV`]: the identity as `HP_*` lines.
    pub fn assignment_env(&self) -> String {
        format!(
            "HP_CONTRACT_ID={}\nHP_OWNER_PUBKEY={}\nHP_NODE_SECRET={}\n",
            self.identity.contract_id, self.identity.owner_pubkey, self.identity.node_secret
        )
    }

    /// Checks the identity fields; the error names the instance and the field.
    pub fn validate_identity(&self) -> Result<(), ProvisionError> {
        if !is_uuid(&self.identity.contract_id) {
            return Err(self.invalid(
                "contract_id",
                "must be a uuid like 3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10",
            ));
        }
        let key = &self.identity.owner_pubkey;
        if !(key.len() == 66 && key.starts_with("ed") && is_hex(&key[2..])) {
            return Err(self.invalid("owner_pubkey", "must be 'ed' followed by 64 hex digits"));
        }
        let seed = &self.identity.node_secret;
        if !(seed.len() == 64 && is_hex(seed)) {
            return Err(self.invalid("node_secret", "must be 64 hex digits"));
        }
        Ok(())
    }

    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> ProvisionError {
        ProvisionError::InvalidSpec {
            instance: self.name.clone(),
            field,
            reason: reason.into(),
        }
    }

    /// Checks every field; the error names the instance and the field.
    pub fn validate(&self) -> Result<(), ProvisionError> {
        validate_name(&self.name)?;
        if self.lease_id.is_empty()
            || self.lease_id.len() > 128
            || !self
                .lease_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(self.invalid("lease_id", "must be 1-128 of A-Z, a-z, 0-9 and -_.:"));
        }
        if self.image.is_empty() {
            return Err(self.invalid("image", "must not be empty"));
        }
        if !self.awaits_assignment {
            self.validate_identity()?;
        }
        if self.ports.user == 0 || self.ports.peer == 0 || self.ports.user == self.ports.peer {
            return Err(self.invalid("ports", "must be two different non-zero ports"));
        }
        if self.command.is_empty() {
            return Err(self.invalid("command", "must not be empty"));
        }
        if !self.state_dir.starts_with('/') || self.state_dir == "/" || self.state_dir.contains(':')
        {
            return Err(self.invalid("state_dir", "must be an absolute path below /"));
        }
        let non_root = self.user.split_once(':').is_some_and(|(uid, gid)| {
            matches!((uid.parse::<u32>(), gid.parse::<u32>()), (Ok(u), Ok(g)) if u != 0 && g != 0)
        });
        if !non_root {
            return Err(self.invalid("user", "must be numeric uid:gid, neither 0"));
        }
        for (key, value) in &self.contract_env {
            if !CONTRACT_ENV.contains(&key.as_str()) {
                return Err(self.invalid(
                    "contract_env",
                    format!("{key:?} is not one of {}", CONTRACT_ENV.join(", ")),
                ));
            }
            if value.contains(['\0', '\n']) {
                return Err(self.invalid("contract_env", format!("{key} has a NUL or newline")));
            }
        }
        for (key, _) in &self.extra_env {
            if key.is_empty() || key.contains('=') || key.starts_with("HP_") {
                return Err(self.invalid(
                    "extra_env",
                    format!("key {key:?} is empty, has '=' or starts with HP_"),
                ));
            }
        }
        Ok(())
    }

    /// The container's environment: the `HP_*` contract, then the extras.
    /// A pooled instance's has no identity (see [`InstanceSpec::awaits_assignment`]).
    pub fn env(&self) -> Vec<String> {
        let mut env = Vec::new();
        if !self.awaits_assignment {
            env.extend([
                format!("HP_CONTRACT_ID={}", self.identity.contract_id),
                format!("HP_OWNER_PUBKEY={}", self.identity.owner_pubkey),
                format!("HP_NODE_SECRET={}", self.identity.node_secret),
            ]);
        }
        env.extend([
            format!("HP_USER_PORT={}", self.ports.user),
            format!("HP_PEER_PORT={}", self.ports.peer),
        ]);
        env.extend(
            self.contract_env
                .iter()
                .map(|(key, value)| format!("{key}={value}")),
        );
        env.extend(
            self.extra_env
                .iter()
                .map(|(key, value)| format!("{key}={value}")),
        );
        env
    }

    /// The labels tying the container and its volume to the lease.
    pub fn labels(&self, namespace: &str) -> HashMap<String, String> {
        [
            (labels::MANAGED, "true".to_owned()),
            (labels::NAMESPACE, namespace.to_owned()),
            (labels::INSTANCE, self.name.clone()),
            (labels::LEASE, self.lease_id.clone()),
            (
                labels::CONTRACT,
                if self.awaits_assignment {
                    "pooled".to_owned()
                } else {
                    self.identity.contract_id.clone()
                },
            ),
            (labels::USER_PORT, self.ports.user.to_string()),
            (labels::PEER_PORT, self.ports.peer.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }
}

/// Instance names become part of container and volume names.
pub fn validate_name(name: &str) -> Result<(), ProvisionError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::InvalidSpec {
            instance: name.to_owned(),
            field: "name",
            reason: "must be 1-40 of a-z, 0-9 and '-', not starting with '-'".into(),
        })
    }
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && is_hex(group))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec::hotpocket(
            "alpha-1",
            "lease-7",
            InstanceIdentity {
                contract_id: "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10".into(),
                owner_pubkey: format!("ed{}", "ab".repeat(32)),
                node_secret: "cd".repeat(32),
            },
            InstancePorts {
                user: 26000,
                peer: 22000,
            },
        )
    }

    #[test]
    fn hotpocket_defaults_follow_the_container_contract() {
        let spec = spec();
        assert!(spec.validate().is_ok());
        assert_eq!(spec.command, ["/hotpocket", "run", "--state-dir", "/state"]);
        assert_eq!(spec.user, "10001:10001");
        let env = spec.env();
        assert!(env.contains(&"HP_USER_PORT=26000".to_owned()));
        assert!(env.contains(&"HP_PEER_PORT=22000".to_owned()));
        assert_eq!(
            spec.labels("berth").get("berth.lease").map(String::as_str),
            Some("lease-7")
        );
        assert!(!format!("{:?}", spec.identity).contains(&"cd".repeat(32)));
    }

    #[test]
    fn bad_fields_are_named_with_the_instance() {
        type Change = Box<dyn Fn(&mut InstanceSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("name", Box::new(|s| s.name = "Alpha".into())),
            (
                "contract_id",
                Box::new(|s| s.identity.contract_id = "not-a-uuid".into()),
            ),
            (
                "owner_pubkey",
                Box::new(|s| s.identity.owner_pubkey = "ab".repeat(33)),
            ),
            (
                "node_secret",
                Box::new(|s| s.identity.node_secret = "zz".repeat(32)),
            ),
            ("user", Box::new(|s| s.user = "0:0".into())),
            ("ports", Box::new(|s| s.ports.peer = s.ports.user)),
            ("state_dir", Box::new(|s| s.state_dir = "/".into())),
        ];
        for (field, change) in cases {
            let mut bad = spec();
            change(&mut bad);
            match bad.validate() {
                Err(ProvisionError::InvalidSpec { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{field}: expected an invalid spec error, got {other:?}"),
            }
        }
        let mut bad = spec();
        bad.user = "root".into();
        let message = bad
            .validate()
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(
            message.contains("alpha-1") && message.contains("user"),
            "{message}"
        );
    }
}
