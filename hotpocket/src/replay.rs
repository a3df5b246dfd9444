//! Replaying a contract's history (`hotpocket replay`, under `berth audit`): the hash chain
//! is checked first, then every ledger is executed again in a throw-away directory with the
//! runtime's own exec path (`exec::run_contract` through the same [`crate::exec::Jail`]), the
//! ledger's inputs in consensus order and its timestamp, and the state hash and output root
//! are recomputed with the runtime's own functions (`state`, `ledger`). Ledger *N*'s result
//! is what ledger *N+1* names (`state_hash`, `output_hash`), so the last ledger of a history
//! is replayed but verified only by the next one.
//!
//! What is not re-made: the installer's answers (upload, status and cluster requests) are
//! taken from the record, and a bundle goes live at the ledger after the one that carried
//! its upload, as it does when the UNL agrees on it (a later upload replaces the contract the
//! same way). Cluster requests after the install (UNL changes) and contracts that speak NPL
//! are outside what a replay can re-make; the first is refused by name, the second shows as
//! a difference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bootstrap::{self, BootstrapInput, BundleError, ContractFs};
use crate::config::{BootstrapSection, ContractSection, DEFAULT_EXEC_TIMEOUT_MS};
use crate::exec::{self, ContractCommand, ExecError, Jail, NplLink, RunContext, RunEnd};
use crate::ledger::{self, Hash, LclId, ZERO_HASH};
use crate::protocol::history::{InputRecord, LedgerRecord};
use crate::state::StateTree;

/// Why a history is refused before any replay.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("the history holds no ledger")]
    Empty,
    #[error("ledger {seq}: `{field}` is not 32 bytes")]
    BadField { seq: u64, field: &'static str },
    #[error("ledger {seq}: its hash does not match its fields (blake3(prev_hash ‖ data_hash))")]
    Hash { seq: u64 },
    #[error("ledger {seq}: the history jumps to it from ledger {prev}")]
    Gap { seq: u64, prev: u64 },
    #[error("ledger {seq}: prev_hash does not name ledger {prev}'s hash")]
    Link { seq: u64, prev: u64 },
    #[error("ledger 1: prev_hash is not genesis (all zero)")]
    Genesis,
    #[error("ledger {seq}: its inputs do not hash to its input_hash")]
    Inputs { seq: u64 },
    #[error("ledger {seq}: its inputs' users do not hash to its user_hash")]
    Users { seq: u64 },
    #[error("ledger {seq}: an input's user key or hash is malformed")]
    BadInput { seq: u64 },
    #[error("ledger {seq}: the history lacks its raw {what}; download it with inputs and outputs")]
    NotRaw { seq: u64, what: &'static str },
}

/// Why a replay could not run to a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("history refused before replay")]
    Chain(#[from] ChainError),
    #[error("the history starts at ledger {0}; a replay starts at genesis (ledger 1)")]
    NotFromGenesis(u64),
    #[error("ledger {seq}: the bundle uploaded there cannot be installed")]
    Bundle { seq: u64, source: BundleError },
    #[error("ledger {seq}: {reason}; a replay cannot re-make it")]
    Unsupported { seq: u64, reason: &'static str },
    #[error("ledger {seq}: running the contract")]
    Exec { seq: u64, source: ExecError },
    #[error("replay directory {path}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting contract processes")]
    Jail(#[source] crate::node::NodeError),
}

/// What the replay is told besides the ledgers.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// The contract id the node announced (the contract reads it in its args).
    pub contract_id: String,
    /// The UNL (`ed…` keys) the contract is told.
    pub unl: Vec<String>,
    /// The bundle zip: only an upload of these bytes installs the contract (one of other
    /// bytes leaves it uninstalled, which shows as a state difference at the ledger after
    /// it); without it, the owner's first upload in the history is used.
    pub bundle: Option<Vec<u8>>,
    /// The owner's key (`ed…`); without it, the user whose upload is used.
    pub owner: Option<String>,
    /// An empty directory the replay may fill (the caller removes it).
    pub work_dir: PathBuf,
    /// The `hotpocket` executable contract processes start through.
    pub wrapper: PathBuf,
    /// Ledgers before this one are replayed but not compared or counted.
    pub compare_from: u64,
}

/// One input as a report shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShownInput {
    pub user: String,
    pub nonce: u64,
    /// The input as text when it is UTF-8, else hex.
    pub input: String,
}

/// The first difference found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    pub seq_no: u64,
    /// `state` (the state after execution), `outputs` (one user's outputs as the node
    /// recorded them), or `output_root` (the root the next ledger names).
    pub what: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the node's record says (hex hash, or the outputs as text).
    pub recorded: String,
    /// What the replay gave.
    pub replayed: String,
    /// The ledger's inputs in consensus order.
    pub inputs: Vec<ShownInput>,
}

/// The outcome of a replay.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// True when every compared ledger matched.
    pub verified: bool,
    /// Ledgers whose state and outputs matched what the next ledger names.
    pub ledgers_verified: u64,
    /// Ledgers executed (compared or not).
    pub ledgers_replayed: u64,
    /// Inputs executed.
    pub inputs_replayed: u64,
    /// The ledger whose upload was installed.
    pub install_ledger: Option<u64>,
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
}

fn hash32(seq: u64, field: &'static str, bytes: &[u8]) -> Result<Hash, ChainError> {
    bytes
        .try_into()
        .map_err(|_| ChainError::BadField { seq, field })
}

/// Checks the hash chain: each ledger's hash against its fields, each link to the previous
/// ledger (the first one's to genesis when it is ledger 1), and, where raw inputs are
/// present, the input and user hashes against them.
pub fn check_chain(ledgers: &[LedgerRecord]) -> Result<(), ChainError> {
    if ledgers.is_empty() {
        return Err(ChainError::Empty);
    }
    let mut prev: Option<(u64, Hash)> = None;
    for l in ledgers {
        let seq = l.seq_no;
        let h = |field, bytes: &[u8]| hash32(seq, field, bytes);
        let (hash, prev_hash) = (h("hash", &l.hash)?, h("prev_hash", &l.prev_hash)?);
        let (user_hash, input_hash) = (
            h("user_hash", &l.user_hash)?,
            h("input_hash", &l.input_hash)?,
        );
        let data = ledger::data_hash(
            seq,
            l.timestamp,
            &h("state_hash", &l.state_hash)?,
            &h("config_hash", &l.config_hash)?,
            &user_hash,
            &input_hash,
            &h("output_hash", &l.output_hash)?,
        );
        if ledger::ledger_hash(&prev_hash, &data) != hash {
            return Err(ChainError::Hash { seq });
        }
        match prev {
            Some((p, _)) if p + 1 != seq => return Err(ChainError::Gap { seq, prev: p }),
            Some((p, ph)) if ph != prev_hash => return Err(ChainError::Link { seq, prev: p }),
            None if seq == 1 && prev_hash != ZERO_HASH => return Err(ChainError::Genesis),
            _ => {}
        }
        if let Some(inputs) = &l.inputs {
            let mut hashes = Vec::with_capacity(inputs.len());
            let mut users = BTreeSet::new();
            for i in inputs {
                let key: [u8; 33] = i
                    .pubkey
                    .as_slice()
                    .try_into()
                    .map_err(|_| ChainError::BadInput { seq })?;
                users.insert(key);
                hashes.push(
                    hash32(seq, "inputs.hash", &i.hash)
                        .map_err(|_| ChainError::BadInput { seq })?,
                );
            }
            if ledger::input_hash(&hashes) != input_hash {
                return Err(ChainError::Inputs { seq });
            }
            let users: Vec<[u8; 33]> = users.into_iter().collect();
            if ledger::user_hash(&users) != user_hash {
                return Err(ChainError::Users { seq });
            }
        }
        prev = Some((seq, hash));
    }
    Ok(())
}

/// Runs `post_exec.sh` in `state_dir` after a run that exited, as hpcore does: one argument
/// `"<seq> <hash>"`; exit 0 deletes it. Shared by the round loop and the replay.
pub async fn post_exec(jail: &Jail, state_dir: &Path, lcl: LclId, timeout: Duration) {
    if !state_dir.join("post_exec.sh").is_file() {
        return;
    }
    let args = vec![format!("{} {}", lcl.seq_no, hex::encode(lcl.hash))];
    match exec::run_script(jail, state_dir, "post_exec.sh", &args, timeout).await {
        Ok(Some(0)) => {
            if let Err(e) = std::fs::remove_file(state_dir.join("post_exec.sh")) {
                tracing::warn!(error = %berth_log::chain(&e), "removing post_exec.sh failed");
            }
        }
        Ok(other) => tracing::warn!(?other, "post_exec.sh failed; it stays for the next round"),
        Err(e) => tracing::warn!(error = %berth_log::chain(&e), "post_exec.sh could not run"),
    }
}

fn shown(inputs: &[InputRecord]) -> Vec<ShownInput> {
    inputs
        .iter()
        .map(|i| ShownInput {
            user: hex::encode(&i.pubkey),
            nonce: i.nonce,
            input: String::from_utf8(i.blob.clone()).unwrap_or_else(|_| hex::encode(&i.blob)),
        })
        .collect()
}

fn show_outputs(outputs: Option<&Vec<Vec<u8>>>) -> String {
    let list: Vec<String> = outputs
        .into_iter()
        .flatten()
        .map(|o| String::from_utf8(o.clone()).unwrap_or_else(|_| hex::encode(o)))
        .collect();
    format!("{list:?}")
}

/// A contract section with nothing installed; the bundle's `contract.config` fills it.
fn empty_contract(cfg: &ReplayConfig) -> ContractSection {
    ContractSection {
        id: cfg.contract_id.clone(),
        version: "1.0".to_owned(),
        unl: cfg.unl.clone(),
        bin_path: String::new(),
        bin_args: String::new(),
        environment: BTreeMap::new(),
        max_input_ledger_offset: 10,
        consensus: Default::default(),
        npl: Default::default(),
        round_limits: Default::default(),
    }
}

/// Replays `ledgers` (from ledger 1, with raw inputs and outputs) and reports the first
/// ledger that differs, or how many were verified. `progress` is called after each ledger
/// with (ledgers replayed, ledgers in the history).
pub async fn replay(
    ledgers: &[LedgerRecord],
    cfg: &ReplayConfig,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, ReplayError> {
    let started = Instant::now();
    check_chain(ledgers)?;
    for l in ledgers {
        if l.inputs.is_none() {
            return Err(ChainError::NotRaw {
                seq: l.seq_no,
                what: "inputs",
            }
            .into());
        }
        if l.outputs.is_none() {
            return Err(ChainError::NotRaw {
                seq: l.seq_no,
                what: "outputs",
            }
            .into());
        }
    }
    match ledgers.first() {
        Some(l) if l.seq_no != 1 => return Err(ReplayError::NotFromGenesis(l.seq_no)),
        _ => {}
    }
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReplayError::Dir { path, source }
    };
    let fs = ContractFs {
        root: cfg.work_dir.join("contract_fs"),
    };
    let state_dir = fs.state_dir();
    std::fs::create_dir_all(&state_dir).map_err(dir_err(&state_dir))?;
    let jail = crate::node::jail(&crate::node::StartOptions::new(
        cfg.work_dir.clone(),
        cfg.wrapper.clone(),
    ))
    .map_err(ReplayError::Jail)?;
    let bootstrap_cfg = BootstrapSection::for_owner(cfg.owner.clone().unwrap_or_default());
    let wanted_bundle = cfg
        .bundle
        .as_ref()
        .map(|z| ledger::hash_parts([z.as_slice()]));
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let replay_key = crate::protocol::pubkey_hex(&signing.verifying_key());
    let private_key = format!(
        "ed{}{}",
        hex::encode(signing.to_bytes()),
        hex::encode(signing.verifying_key().as_bytes())
    );

    let mut contract = empty_contract(cfg);
    let mut owner = cfg.owner.clone();
    let mut installed = false;
    let mut pending: Option<(bootstrap::PreparedBundle, String)> = None;
    let mut install_ledger = None;
    let mut tree = StateTree::default();
    let mut report = Report {
        verified: true,
        ledgers_verified: 0,
        ledgers_replayed: 0,
        inputs_replayed: 0,
        install_ledger: None,
        elapsed_ms: 0,
        mismatch: None,
    };
    let total = ledgers.len() as u64;

    for (i, rec) in ledgers.iter().enumerate() {
        let seq = rec.seq_no;
        let inputs = rec.inputs.as_deref().unwrap_or_default();
        let recorded: BTreeMap<String, Vec<Vec<u8>>> = rec
            .outputs
            .iter()
            .flatten()
            .map(|o| (hex::encode(&o.pubkey), o.blobs.clone()))
            .collect();
        let mut outputs: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        // Users whose outputs this ledger come from the installer: taken from the record.
        let mut installer_users: BTreeSet<String> = BTreeSet::new();
        if let Some((prepared, uploader)) = pending.take() {
            bootstrap::commit_bundle(prepared, &fs, &mut contract)
                .map_err(|source| ReplayError::Bundle { seq, source })?;
            installed = true;
            installer_users.insert(uploader);
        }
        let mut contract_users: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for input in inputs {
            let user = hex::encode(&input.pubkey);
            match bootstrap::parse_request(&input.blob, installed) {
                None => contract_users
                    .entry(user)
                    .or_default()
                    .push(input.blob.clone()),
                // The owner's upload: the first one (the one given, when one is) installs
                // the contract, later ones replace it, as on a node.
                Some(BootstrapInput::Upload { zip: Some(zip) })
                    if pending.is_none()
                        && owner.as_ref().is_none_or(|o| o.eq_ignore_ascii_case(&user))
                        && (installed
                            || wanted_bundle
                                .is_none_or(|w| w == ledger::hash_parts([zip.as_slice()]))) =>
                {
                    let staged = bootstrap::stage_bundle(&zip, &fs, &bootstrap_cfg)
                        .map_err(|source| ReplayError::Bundle { seq, source })?;
                    let prepared = bootstrap::prepare_bundle(staged, &fs, &bootstrap_cfg, &jail)
                        .await
                        .map_err(|source| ReplayError::Bundle { seq, source })?;
                    tracing::info!(
                        seq,
                        user,
                        "replay: bundle uploaded here goes live at the next ledger"
                    );
                    owner = Some(user.clone());
                    install_ledger.get_or_insert(seq);
                    pending = Some((prepared, user));
                }
                Some(BootstrapInput::Cluster { .. }) if installed => {
                    return Err(ReplayError::Unsupported {
                        seq,
                        reason: "a cluster request (a UNL change through patch.cfg)",
                    })
                }
                Some(_) => {
                    installer_users.insert(user);
                }
            }
            // Before the install every input is the installer's.
            if !installed {
                installer_users.insert(hex::encode(&input.pubkey));
            }
        }
        for user in &installer_users {
            if let Some(first) = recorded.get(user) {
                // The owner's upload answer comes first in its outputs; other installer
                // answers are the user's whole outputs.
                let taken = if contract_users.contains_key(user) {
                    first.iter().take(1).cloned().collect()
                } else {
                    first.clone()
                };
                outputs.insert(user.clone(), taken);
            }
        }

        if installed {
            let timeout = match contract.round_limits.exec_timeout {
                0 => DEFAULT_EXEC_TIMEOUT_MS,
                ms => ms,
            };
            let cmd = ContractCommand {
                jail: jail.clone(),
                state_dir: state_dir.clone(),
                bin_path: contract.bin_path.clone(),
                bin_args: contract.bin_args.clone(),
                environment: contract.environment.clone(),
                limits: contract.round_limits.clone(),
                timeout: Duration::from_millis(timeout),
            };
            let ctx = RunContext {
                hp_version: crate::protocol::HP_VERSION.to_owned(),
                contract_id: cfg.contract_id.clone(),
                public_key: replay_key.clone(),
                private_key: private_key.clone(),
                timestamp: rec.timestamp,
                readonly: false,
                lcl: Some((seq, hex::encode(&rec.hash))),
                unl: contract.unl.clone(),
            };
            // NPL has no peers in a replay: what the contract sends goes nowhere.
            let (npl_out, _npl_out_rx) = tokio::sync::mpsc::channel(1024);
            let (_npl_in, npl_in_rx) = tokio::sync::mpsc::channel(1);
            let link = NplLink {
                outgoing: npl_out,
                incoming: npl_in_rx,
            };
            let run = exec::run_contract(&cmd, &ctx, &contract_users, Some(link))
                .await
                .map_err(|source| ReplayError::Exec { seq, source })?;
            for (user, msgs) in run.outputs {
                if !msgs.is_empty() {
                    outputs.entry(user).or_default().extend(msgs);
                }
            }
            if matches!(run.end, RunEnd::Exited(_)) {
                let lcl = LclId {
                    seq_no: seq,
                    hash: hash32(seq, "hash", &rec.hash)?,
                };
                post_exec(&jail, &state_dir, lcl, cmd.timeout).await;
            }
        }
        report.ledgers_replayed += 1;
        report.inputs_replayed += inputs.len() as u64;

        let state_hash = tree.rehash(&state_dir).map_err(dir_err(&state_dir))?;
        let root = ledger::leaves_root(&ledger::output_leaves(&outputs, state_hash));
        progress(report.ledgers_replayed, total);
        if seq < cfg.compare_from {
            continue;
        }
        let differs = |what, user: Option<String>, recorded: String, replayed: String| Mismatch {
            seq_no: seq,
            what,
            user,
            recorded,
            replayed,
            inputs: shown(inputs),
        };
        let next = ledgers.get(i + 1);
        let mismatch = if let Some(next) = next.filter(|n| n.state_hash != state_hash) {
            Some(differs(
                "state",
                None,
                hex::encode(&next.state_hash),
                hex::encode(state_hash),
            ))
        } else if let Some(user) = recorded
            .keys()
            .chain(outputs.keys())
            .find(|u| recorded.get(*u) != outputs.get(*u))
        {
            Some(differs(
                "outputs",
                Some(user.clone()),
                show_outputs(recorded.get(user)),
                show_outputs(outputs.get(user)),
            ))
        } else {
            next.filter(|n| n.output_hash != root).map(|n| {
                differs(
                    "output_root",
                    None,
                    hex::encode(&n.output_hash),
                    hex::encode(root),
                )
            })
        };
        if let Some(m) = mismatch {
            report.verified = false;
            report.mismatch = Some(m);
            break;
        }
        if next.is_some() {
            report.ledgers_verified += 1;
        }
    }
    report.install_ledger = install_ledger;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ledger::{close_ledger, RoundOutcome};

    fn chain(n: u64) -> Vec<LedgerRecord> {
        let mut prev = LclId::GENESIS;
        let mut out = Vec::new();
        for k in 0..n {
            let user = [0xed; 33];
            let input_hash = [k as u8; 32];
            let l = close_ledger(
                prev,
                &RoundOutcome {
                    time: 1000 + k,
                    state_hash: [1; 32],
                    patch_hash: ZERO_HASH,
                    users: &[user],
                    input_hashes: &[input_hash],
                    output_hash: [2; 32],
                },
            );
            prev = l.id();
            out.push(LedgerRecord {
                inputs: Some(vec![InputRecord {
                    pubkey: user.to_vec(),
                    hash: input_hash.to_vec(),
                    nonce: k + 1,
                    blob: b"x".to_vec(),
                }]),
                outputs: Some(Vec::new()),
                ..crate::history::header(&l)
            });
        }
        out
    }

    #[test]
    fn a_sound_chain_passes_and_each_fault_is_named() {
        let good = chain(4);
        assert_eq!(check_chain(&good), Ok(()));

        let mut time = good.clone();
        time[2].timestamp += 1;
        assert_eq!(check_chain(&time), Err(ChainError::Hash { seq: 3 }));

        let mut gap = good.clone();
        gap.remove(1);
        assert_eq!(check_chain(&gap), Err(ChainError::Gap { seq: 3, prev: 1 }));

        let mut swapped = good.clone();
        swapped[2] = chain(4)
            .into_iter()
            .map(|mut l| {
                l.prev_hash = vec![9; 32];
                l
            })
            .nth(2)
            .unwrap();
        assert!(matches!(
            check_chain(&swapped),
            Err(ChainError::Hash { seq: 3 })
        ));

        let mut input = good.clone();
        input[1].inputs.as_mut().unwrap()[0].hash = vec![0xaa; 32];
        assert_eq!(check_chain(&input), Err(ChainError::Inputs { seq: 2 }));

        let mut short = good;
        short[0].state_hash.pop();
        assert_eq!(
            check_chain(&short),
            Err(ChainError::BadField {
                seq: 1,
                field: "state_hash"
            })
        );
    }
}
