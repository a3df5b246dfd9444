//! Keeps instances off private and link-local networks.
//!
//! An instance's contract is the tenant's code; from the instances' bridge it could reach the
//! host's LAN, a cloud's metadata service (169.254.169.254) or anything else behind the host.
//! The provisioner installs one iptables chain, [`CHAIN`], jumped to from Docker's
//! `DOCKER-USER` chain for packets that come in from the instances' bridge:
//!
//! 1. replies of connections made to the instance (its published ports) pass;
//! 2. destinations in the host's allow-list (`runtime.egress_allow`: a ledger node or cluster
//!    peers on the host's own LAN) pass;
//! 3. every other destination in [`BLOCKED`] is rejected (`icmp-admin-prohibited`, so a
//!    contract sees "unreachable" at once instead of a time-out).
//!
//! Public addresses (the XRP Ledger, peers on other hosts) are not touched, nor the host's own
//! addresses: those are routed to the host (iptables `INPUT`), not forwarded, which is how
//! instances reach the ledger and peers of a sandbox on this machine. The rules are rebuilt
//! from scratch each time the provisioner starts (flush and refill), so a changed allow-list
//! takes effect at the next start; the jump is added once. All namespaces on one Docker
//! network share its chain. IPv6 is not filtered: the instances' network has none.
//!
//! iptables is a command, not a library: [`Iptables`] is the narrow boundary, [`SystemIptables`]
//! runs `iptables -w`, tests record the calls.

pub use ipnet::Ipv4Net;

/// The chain the provisioner owns.
pub const CHAIN: &str = "BERTH-EGRESS";

/// The networks instances may not reach unless allowed: RFC 1918, shared address space
/// (RFC 6598), link-local (cloud metadata), benchmarking (RFC 2544), "this network",
/// multicast and reserved.
pub const BLOCKED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "198.18.0.0/15",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Whether the provisioner filters instances' egress to [`BLOCKED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressPolicy {
    /// Install the rules; fail when they cannot be installed (needs root and iptables).
    #[default]
    Block,
    /// Install the rules where possible; otherwise log a warning and go on unfiltered.
    BlockIfPossible,
    /// No rules (instances reach whatever the host routes to).
    Allow,
}

/// What the provisioner did about egress, for `status` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressStatus {
    /// The chain is in place for this bridge.
    Filtered {
        bridge: String,
        allowed: Vec<Ipv4Net>,
    },
    /// The policy is `Allow`.
    NotFiltered,
    /// `BlockIfPossible` and the rules could not be installed.
    Failed { reason: String },
}

impl std::fmt::Display for EgressStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EgressStatus::Filtered { bridge, allowed } if allowed.is_empty() => {
                write!(f, "private networks blocked (bridge {bridge})")
            }
            EgressStatus::Filtered { bridge, allowed } => {
                let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "private networks blocked (bridge {bridge}) except {}",
                    allowed.join(", ")
                )
            }
            EgressStatus::NotFiltered => {
                f.write_str("not filtered (runtime.private_egress = allow)")
            }
            EgressStatus::Failed { reason } => write!(f, "NOT filtered: {reason}"),
        }
    }
}

/// The iptables boundary: runs one `iptables` call (`-w` is added).
#[async_trait::async_trait]
pub trait Iptables: Send + Sync {
    /// Ok when the call exited 0; otherwise its stderr.
    async fn run(&self, args: &[String]) -> Result<(), String>;
}

/// `iptables -w …` on this host.
pub struct SystemIptables;

#[async_trait::async_trait]
impl Iptables for SystemIptables {
    async fn run(&self, args: &[String]) -> Result<(), String> {
        let output = tokio::process::Command::new("iptables")
            .arg("-w")
            .args(args)
            .output()
            .await
            .map_err(|e| format!("running iptables: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// The calls that make [`CHAIN`] what it must be, in order (after the chain exists).
pub fn chain_rules(allow: &[Ipv4Net]) -> Vec<Vec<String>> {
    let mut calls = vec![
        args(&["-F", CHAIN]),
        args(&[
            "-A",
            CHAIN,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "RETURN",
        ]),
    ];
    for net in allow {
        calls.push(args(&["-A", CHAIN, "-d", &net.to_string(), "-j", "RETURN"]));
    }
    for net in BLOCKED {
        calls.push(args(&[
            "-A",
            CHAIN,
            "-d",
            net,
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-admin-prohibited",
        ]));
    }
    calls
}

/// Installs the chain for packets from `bridge`. Idempotent.
pub async fn install(
    iptables: &dyn Iptables,
    bridge: &str,
    allow: &[Ipv4Net],
) -> Result<(), String> {
    // The chain may exist already (an earlier start, another namespace).
    if let Err(e) = iptables.run(&args(&["-N", CHAIN])).await {
        if !e.contains("exists") {
            return Err(format!("making chain {CHAIN}: {e}"));
        }
    }
    for call in chain_rules(allow) {
        iptables
            .run(&call)
            .await
            .map_err(|e| format!("iptables {}: {e}", call.join(" ")))?;
    }
    let jump = args(&["DOCKER-USER", "-i", bridge, "-j", CHAIN]);
    let mut check = vec!["-C".to_owned()];
    check.extend(jump.iter().cloned());
    if iptables.run(&check).await.is_err() {
        let mut insert = vec!["-I".to_owned()];
        insert.extend(jump.iter().cloned());
        iptables.run(&insert).await.map_err(|e| {
            format!("adding the jump from DOCKER-USER (is Docker's iptables integration on?): {e}")
        })?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorded {
        calls: Mutex<Vec<String>>,
        existing_jump: bool,
    }

    #[async_trait::async_trait]
    impl Iptables for Recorded {
        async fn run(&self, args: &[String]) -> Result<(), String> {
            let line = args.join(" ");
            self.calls.lock().unwrap().push(line.clone());
            if line.starts_with("-N") {
                return Err("iptables: Chain already exists.".into());
            }
            if line.starts_with("-C") && !self.existing_jump {
                return Err("iptables: Bad rule".into());
            }
            Ok(())
        }
    }

    #[test]
    fn replies_pass_first_then_the_allow_list_then_the_blocked_ranges() {
        let allow = ["192.168.5.0/24".parse().unwrap()];
        let rules: Vec<String> = chain_rules(&allow).iter().map(|c| c.join(" ")).collect();
        assert_eq!(rules[0], format!("-F {CHAIN}"));
        assert!(rules[1].contains("ESTABLISHED,RELATED -j RETURN"));
        assert_eq!(rules[2], format!("-A {CHAIN} -d 192.168.5.0/24 -j RETURN"));
        assert_eq!(rules.len(), 3 + BLOCKED.len());
        assert!(rules[3..].iter().all(|r| r.contains("-j REJECT")));
        assert!(rules.iter().any(|r| r.contains("169.254.0.0/16")));
    }

    #[tokio::test]
    async fn the_jump_is_added_once() {
        let fresh = Recorded::default();
        install(&fresh, "br-x", &[]).await.unwrap();
        let calls = fresh.calls.lock().unwrap().clone();
        assert_eq!(
            calls.last().unwrap(),
            &format!("-I DOCKER-USER -i br-x -j {CHAIN}")
        );
        let again = Recorded {
            existing_jump: true,
            ..Recorded::default()
        };
        install(&again, "br-x", &[]).await.unwrap();
        let calls = again.calls.lock().unwrap().clone();
        assert!(!calls.iter().any(|c| c.starts_with("-I")), "{calls:?}");
    }
}
