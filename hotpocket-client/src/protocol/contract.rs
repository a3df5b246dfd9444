//! The document a contract reads on stdin (hpcore `src/sc/sc.cpp`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One user's entry: the output fd, then `[offset, length]` of each input in the memory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub out_fd: i32,
    pub inputs: Vec<(u64, u64)>,
}

impl Serialize for UserEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(1 + self.inputs.len()))?;
        seq.serialize_element(&self.out_fd)?;
        for (offset, len) in &self.inputs {
            seq.serialize_element(&[offset, len])?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for UserEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items: Vec<serde_json::Value> = Vec::deserialize(deserializer)?;
        let mut iter = items.into_iter();
        let out_fd = iter
            .next()
            .and_then(|v| v.as_i64())
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| serde::de::Error::custom("user entry lacks its output fd"))?;
        let inputs = iter
            .map(|v| {
                serde_json::from_value::<(u64, u64)>(v)
                    .map_err(|_| serde::de::Error::custom("user input is not [offset, length]"))
            })
            .collect::<Result<_, _>>()?;
        Ok(UserEntry { out_fd, inputs })
    }
}

/// A UNL member's entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnlEntry {
    pub active_on: u64,
}

/// The args JSON document given to the contract on stdin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContractArgs {
    pub hp_version: String,
    pub contract_id: String,
    pub public_key: String,
    pub private_key: String,
    /// Round time in ms since the epoch.
    pub timestamp: u64,
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lcl_seq_no: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lcl_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npl_fd: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_fd: Option<i32>,
    pub user_in_fd: i32,
    pub users: BTreeMap<String, UserEntry>,
    pub unl: BTreeMap<String, UnlEntry>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn user_entries_serialize_as_hotpocket_arrays() {
        let entry = UserEntry {
            out_fd: 7,
            inputs: vec![(0, 5), (5, 3)],
        };
        let text = serde_json::to_string(&entry).unwrap();
        assert_eq!(text, "[7,[0,5],[5,3]]");
        let back: UserEntry = serde_json::from_str(&text).unwrap();
        assert_eq!(back, entry);
    }
}
