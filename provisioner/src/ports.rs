//! Port allocation as pure functions over the ports in use, so the agent can keep its own
//! record (SQLite) and the engine's list of instances can be folded in.
use std::collections::BTreeSet;

use crate::config::PortRange;
use crate::error::ProvisionError;

/// The two host ports of an instance (published on the same container ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstancePorts {
    pub user: u16,
    pub peer: u16,
}

/// The lowest port of `range` that is not in `in_use`, so freed ports are reused first.
pub fn lowest_free(range: PortRange, in_use: &BTreeSet<u16>) -> Option<u16> {
    (range.first..=range.last).find(|port| !in_use.contains(port))
}

/// A user port and a peer port that are both free.
pub fn allocate(
    user_range: PortRange,
    peer_range: PortRange,
    in_use: &BTreeSet<u16>,
) -> Result<InstancePorts, ProvisionError> {
    let user = lowest_free(user_range, in_use).ok_or_else(|| ProvisionError::PortsExhausted {
        kind: "user",
        range: user_range.to_string(),
    })?;
    let peer = lowest_free(peer_range, in_use).ok_or_else(|| ProvisionError::PortsExhausted {
        kind: "peer",
        range: peer_range.to_string(),
    })?;
    Ok(InstancePorts { user, peer })
}

/// `count` distinct port pairs, none of them in `in_use`.
pub fn allocate_many(
    user_range: PortRange,
    peer_range: PortRange,
    in_use: &BTreeSet<u16>,
    count: usize,
) -> Result<Vec<InstancePorts>, ProvisionError> {
    let mut taken = in_use.clone();
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let pair = allocate(user_range, peer_range, &taken)?;
        taken.insert(pair.user);
        taken.insert(pair.peer);
        pairs.push(pair);
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_ports_are_reused_first() {
        let users = PortRange::new(100, 104);
        let peers = PortRange::new(200, 204);
        let in_use: BTreeSet<u16> = [100, 101, 102, 200, 201, 202].into();
        assert_eq!(
            allocate(users, peers, &in_use).ok(),
            Some(InstancePorts {
                user: 103,
                peer: 203
            })
        );
        let freed: BTreeSet<u16> = [100, 102, 200, 202].into();
        assert_eq!(
            allocate(users, peers, &freed).ok(),
            Some(InstancePorts {
                user: 101,
                peer: 201
            })
        );
    }

    #[test]
    fn exhausted_range_is_named() {
        let users = PortRange::new(100, 101);
        let peers = PortRange::new(200, 209);
        let error = allocate_many(users, peers, &BTreeSet::new(), 3)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            error,
            Err("no free port left in the user port range 100-101".into())
        );
        let pairs = allocate_many(users, peers, &BTreeSet::new(), 2).unwrap_or_default();
        assert_eq!(
            pairs,
            vec![
                InstancePorts {
                    user: 100,
                    peer: 200
                },
                InstancePorts {
                    user: 101,
                    peer: 201
                }
            ]
        );
    }
}
