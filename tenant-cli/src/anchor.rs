//! A cluster's state anchored on the XRP Ledger.
//!
//! - `setup`: a new account for the cluster, funded from the tenant's wallet, whose signer
//!   list is the UNL's node keys (each as an XRPL ed25519 signer, weight 1) with the quorum
//!   of the cluster's threshold, then its master key disabled. The account's seed is kept in
//!   the cluster's record only until the master key is disabled (so an interrupted setup
//!   finishes), and the funding payment is in the record before it is submitted.
//! - `checkpoint`: one `AccountSet` of the cluster's account with a `berth/checkpoint` memo
//!   (`berth_schemas::checkpoint`) naming a ledger the nodes closed; each node is asked for
//!   its `Signer` entry (a node signs only its own ledger) and once a quorum answered the
//!   multi-signed transaction is submitted.
//! - `verify`: needs only the ledger and the nodes' user ports, so a third party can run it:
//!   it reads the account's checkpoints, checks their signatures against the signer list in
//!   effect, and asks each node for the same ledgers: agrees, lags, or contradicts.

use std::time::{Duration, Instant};

use berth_hotpocket_client::protocol::anchor::{signer_quorum, CheckpointSigner};
use berth_hotpocket_client::protocol::bundle::Consensus;
use berth_hotpocket_client::protocol::pubkey_bytes_from_hex;
use berth_mb_xrpl::multisign;
use berth_mb_xrpl::{Client, ClientError, SignedTx, SubmitConfig, SubmitError, Submitter};
use berth_schemas::checkpoint::{Checkpoint, CHECKPOINT_MEMO_TYPE};
use berth_schemas::memo::Memo;
use berth_xrpl_core::codec::StObject;
use berth_xrpl_core::keys::account_id_of;
use berth_xrpl_core::{encode_account_id, KeyPair, KeyType};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

use crate::cluster::{ClusterError, ClusterRecord, Clusters, NodeState};
use crate::instance::Instance;
use crate::lease::{LeaseError, Progress};

/// The highest fee of one checkpoint, in drops.
pub const MAX_CHECKPOINT_FEE_DROPS: u64 = 100_000;

/// Ledgers a checkpoint may take to be validated before it is prepared again.
const LAST_LEDGER_OFFSET: u32 = 20;

/// `asfDisableMaster`.
const ASF_DISABLE_MASTER: u32 = 4;

/// Why anchoring or verifying failed; each names the cluster, account or node.
#[derive(Debug, Error)]
pub enum AnchorError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Lease(Box<LeaseError>),
    #[error("cluster account {account}")]
    Submit {
        account: String,
        #[source]
        source: Box<SubmitError>,
    },
    #[error("reading the ledger for account {account}")]
    Ledger {
        account: String,
        #[source]
        source: ClientError,
    },
    #[error("cluster account {account}: {what} ended with {result}")]
    Failed {
        account: String,
        what: &'static str,
        result: String,
    },
    #[error("cluster {cluster} has no account on the ledger yet: run `berth cluster anchor --setup --cluster {cluster}`")]
    NotSetUp { cluster: String },
    #[error("cluster {cluster} is anchored to {account} already")]
    AlreadySetUp { cluster: String, account: String },
    #[error("cluster {cluster}: no ledger to anchor yet (no node has closed ledger {seq})")]
    NoLedger { cluster: String, seq: u64 },
    #[error("cluster {cluster}: {got} of the {need} signatures a checkpoint of ledger {seq} needs; {detail}")]
    NoQuorum {
        cluster: String,
        seq: u64,
        got: usize,
        need: usize,
        detail: String,
    },
    #[error("`{0}` is not an XRPL account address (r…)")]
    BadAccount(String),
    #[error("cluster {cluster}: its members are not the signer list of {account}; run `berth cluster anchor --update-signers --cluster {cluster}` first")]
    StaleSigners { cluster: String, account: String },
}

impl From<LeaseError> for AnchorError {
    fn from(e: LeaseError) -> Self {
        AnchorError::Lease(Box::new(e))
    }
}

fn submit_err(account: &str) -> impl FnOnce(SubmitError) -> AnchorError + '_ {
    move |e| AnchorError::Submit {
        account: account.to_owned(),
        source: Box::new(e),
    }
}

/// The cluster's account as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorAccount {
    pub account: String,
    /// The account's seed, only until its master key is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_seed: Option<String>,
    /// The funding payment (an `berth_mb_xrpl::SignedTx`), signed, written before it is
    /// submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funding: Option<Value>,
    /// The node keys (`ed…`) of the signer list.
    pub signers: Vec<String>,
    pub quorum: u32,
    /// The last ledger anchored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

/// The XRPL account of a node key (`ed…`).
pub fn node_account(key: &str) -> Option<String> {
    pubkey_bytes_from_hex(key).map(|b| encode_account_id(&account_id_of(&b)))
}

/// What `anchor --setup` did.
#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub cluster: String,
    pub account: String,
    /// (node key, its XRPL account) of each signer.
    pub signers: Vec<(String, String)>,
    pub quorum: u32,
    pub funded_drops: u64,
    /// The account's reserve: base + one owner reserve for the signer list.
    pub reserve_drops: u64,
    /// Fees of the signer list and the master key's disabling.
    pub fees_drops: u64,
    pub transactions: Vec<String>,
}

/// A multi-signed transaction of the cluster's account, validated.
struct Multisigned {
    validated: berth_mb_xrpl::Validated,
    fee_drops: u64,
    refusals: Vec<String>,
}

/// A signer list update written.
#[derive(Debug, Clone, Serialize)]
pub struct SignersReport {
    pub cluster: String,
    pub account: String,
    pub signers: Vec<String>,
    pub quorum: u32,
    pub tx: String,
    pub fee_drops: u64,
}

/// One checkpoint written.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    pub cluster: String,
    pub account: String,
    pub seq: u64,
    pub ledger: String,
    pub state: String,
    pub bundle: String,
    pub tx: String,
    pub xrpl_ledger: u32,
    pub fee_drops: u64,
    pub signers: usize,
    /// From the HotPocket ledger's close to the checkpoint validated, by this machine's clock.
    pub close_to_validated_ms: u64,
    /// Nodes that refused or did not answer, with why.
    pub refusals: Vec<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn threshold_of(record: &ClusterRecord) -> u32 {
    record
        .threshold
        .unwrap_or_else(|| Consensus::default().threshold)
}

fn memo_json(memo: &Memo) -> Value {
    let hex = memo.to_hex();
    json!({"Memo": {"MemoType": hex.memo_type, "MemoFormat": hex.memo_format, "MemoData": hex.memo_data}})
}

fn signer_entries(keys: &[String]) -> Vec<Value> {
    keys.iter()
        .filter_map(|k| node_account(k))
        .map(|a| json!({"SignerEntry": {"Account": a, "SignerWeight": 1}}))
        .collect()
}

impl Clusters<'_> {
    /// The node keys of the cluster's members, from the lease records.
    fn member_keys(&self, record: &ClusterRecord) -> Result<Vec<(usize, String)>, ClusterError> {
        record
            .live_nodes()
            .filter(|(_, n)| n.state == NodeState::Member)
            .map(|(i, n)| Ok((i, self.lease_of(n)?.node_key)))
            .collect()
    }

    /// `berth cluster anchor --setup`: makes, funds and locks the cluster's account. Run
    /// again after an interruption, it finishes the same account.
    pub async fn anchor_setup(
        &self,
        name: &str,
        fund_drops: Option<u64>,
        progress: Progress<'_>,
    ) -> Result<SetupReport, AnchorError> {
        let mut record = self.load(name)?;
        let client = self.tenant.client().clone();
        let mut anchor = match record.anchor.clone() {
            Some(a) if a.setup_seed.is_none() => {
                return Err(AnchorError::AlreadySetUp {
                    cluster: record.name.clone(),
                    account: a.account,
                })
            }
            Some(a) => a,
            None => {
                let keys: Vec<String> = self
                    .member_keys(&record)?
                    .into_iter()
                    .map(|(_, k)| k)
                    .collect();
                let wallet = KeyPair::generate(KeyType::Ed25519);
                let quorum = signer_quorum(keys.len(), threshold_of(&record));
                let a = AnchorAccount {
                    account: wallet.address(),
                    setup_seed: wallet.seed(),
                    funding: None,
                    signers: keys,
                    quorum,
                    last_seq: None,
                };
                record.anchor = Some(a.clone());
                self.save(&record)?;
                a
            }
        };
        let account = anchor.account.clone();
        let (base, inc) = self.tenant.reserves().await;
        let fund_drops = fund_drops.unwrap_or(base + inc + 1_000_000);
        let mut transactions = Vec::new();
        let exists = client
            .account_data(&account)
            .await
            .map_err(|source| AnchorError::Ledger {
                account: account.clone(),
                source,
            })?
            .is_some();
        if !exists || anchor.funding.is_some() {
            let kept = anchor
                .funding
                .clone()
                .and_then(|v| serde_json::from_value::<SignedTx>(v).ok());
            let signed = match kept {
                Some(s) => s,
                None => {
                    let s = self.tenant.prepare_payment(&account, fund_drops).await?;
                    anchor.funding = serde_json::to_value(&s).ok();
                    record.anchor = Some(anchor.clone());
                    self.save(&record)?;
                    s
                }
            };
            progress(&format!(
                "funding the cluster's account {account} with {} drops…",
                fund_drops
            ));
            let v = self.tenant.submit_signed(&signed).await?;
            if !v.is_success() {
                return Err(AnchorError::Failed {
                    account,
                    what: "the funding payment",
                    result: v.result,
                });
            }
            transactions.push(v.hash);
            anchor.funding = None;
            record.anchor = Some(anchor.clone());
            self.save(&record)?;
        }
        let seed = anchor.setup_seed.clone().unwrap_or_default();
        let wallet = KeyPair::from_seed(&seed)
            .map_err(|e| LeaseError::Build(format!("the cluster account's seed: {e}")))?;
        let submitter = Submitter::new(client.clone(), wallet, SubmitConfig::default())
            .map_err(submit_err(&account))?;
        let mut fees = 0;
        progress(&format!(
            "setting its signer list: {} node(s), quorum {}…",
            anchor.signers.len(),
            anchor.quorum
        ));
        for (what, tx) in [
            (
                "the signer list",
                json!({
                    "TransactionType": "SignerListSet",
                    "SignerQuorum": anchor.quorum,
                    "SignerEntries": signer_entries(&anchor.signers),
                }),
            ),
            (
                "disabling the master key",
                json!({"TransactionType": "AccountSet", "SetFlag": ASF_DISABLE_MASTER}),
            ),
        ] {
            let signed = submitter.prepare(tx).await.map_err(submit_err(&account))?;
            let v = submitter
                .submit_and_wait(&signed)
                .await
                .map_err(submit_err(&account))?;
            if !v.is_success() {
                return Err(AnchorError::Failed {
                    account,
                    what,
                    result: v.result,
                });
            }
            fees += signed.fee_drops;
            transactions.push(v.hash);
        }
        anchor.setup_seed = None;
        record.anchor = Some(anchor.clone());
        self.save(&record)?;
        progress(&format!(
            "cluster {} is anchored to {account}; its master key is disabled",
            record.name
        ));
        Ok(SetupReport {
            cluster: record.name.clone(),
            account,
            signers: anchor
                .signers
                .iter()
                .map(|k| (k.clone(), node_account(k).unwrap_or_default()))
                .collect(),
            quorum: anchor.quorum,
            funded_drops: fund_drops,
            reserve_drops: base + inc,
            fees_drops: fees,
            transactions,
        })
    }

    /// The cluster's record and its account, once set up.
    fn anchored(&self, name: &str) -> Result<(ClusterRecord, AnchorAccount), AnchorError> {
        let record = self.load(name)?;
        match record.anchor.clone() {
            Some(a) if a.setup_seed.is_none() => Ok((record, a)),
            _ => Err(AnchorError::NotSetUp {
                cluster: record.name.clone(),
            }),
        }
    }

    /// After a UNL change (`add-node`, `remove-node`, `replace-node`): sets the cluster
    /// account's signer list to the current members' keys, signed by a quorum of the old
    /// list through the nodes (each signs only a list naming its own current UNL). `None`
    /// when the list is current.
    pub async fn update_signers(
        &self,
        name: &str,
        progress: Progress<'_>,
    ) -> Result<Option<SignersReport>, AnchorError> {
        let (mut record, anchor) = self.anchored(name)?;
        let keys: Vec<String> = self
            .member_keys(&record)?
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        let mut sorted_new = keys.clone();
        sorted_new.sort();
        let mut sorted_old = anchor.signers.clone();
        sorted_old.sort();
        if sorted_new == sorted_old {
            return Ok(None);
        }
        let quorum = signer_quorum(keys.len(), threshold_of(&record));
        let tx = json!({
            "TransactionType": "SignerListSet",
            "Account": anchor.account,
            "SignerQuorum": quorum,
            "SignerEntries": signer_entries(&keys),
        });
        progress(&format!(
            "asking the nodes to sign the new signer list ({} node(s), quorum {quorum}); the old list needs {}…",
            keys.len(),
            anchor.quorum
        ));
        // Every node the record still has may sign, members or leaving: the old list's.
        let done = self
            .multisigned(
                &record,
                &anchor,
                tx,
                0,
                "the signer list update",
                |_| true,
                progress,
            )
            .await?;
        if let Some(a) = record.anchor.as_mut() {
            a.signers = keys.clone();
            a.quorum = quorum;
        }
        self.save(&record)?;
        Ok(Some(SignersReport {
            cluster: record.name.clone(),
            account: anchor.account,
            signers: keys,
            quorum,
            tx: done.validated.hash,
            fee_drops: done.fee_drops,
        }))
    }

    /// Prepares `tx` of the cluster's account, gathers a quorum of the signer list's
    /// entries from the nodes `which` admits, submits it and waits until it succeeded.
    #[allow(clippy::too_many_arguments)]
    async fn multisigned(
        &self,
        record: &ClusterRecord,
        anchor: &AnchorAccount,
        tx: Value,
        seq: u64,
        what: &'static str,
        which: impl Fn(NodeState) -> bool,
        progress: Progress<'_>,
    ) -> Result<Multisigned, AnchorError> {
        let need = anchor.quorum as usize;
        let client = self.tenant.client();
        let unsigned = multisign::prepare(
            client,
            tx,
            need,
            MAX_CHECKPOINT_FEE_DROPS,
            LAST_LEDGER_OFFSET,
        )
        .await
        .map_err(submit_err(&anchor.account))?;
        let (mut signers, refusals) = self.gather(record, &unsigned, &anchor.signers, which).await;
        if signers.len() < need {
            return Err(AnchorError::NoQuorum {
                cluster: record.name.clone(),
                seq,
                got: signers.len(),
                need,
                detail: refusals.join("; "),
            });
        }
        signers.truncate(need);
        let signed = unsigned.combine(signers);
        progress(&format!(
            "{what}: submitting {} ({need} signatures, fee {} drops)…",
            signed.hash, unsigned.fee_drops
        ));
        let validated = multisign::submit_and_wait(client, &signed, Duration::from_millis(500))
            .await
            .map_err(submit_err(&anchor.account))?;
        if !validated.is_success() {
            return Err(AnchorError::Failed {
                account: anchor.account.clone(),
                what,
                result: validated.result,
            });
        }
        Ok(Multisigned {
            validated,
            fee_drops: unsigned.fee_drops,
            refusals,
        })
    }

    /// Asks the record's nodes (those `which` admits) for their `Signer` entries, keeping
    /// those of the signer list `list` that verify.
    async fn gather(
        &self,
        record: &ClusterRecord,
        unsigned: &multisign::Unsigned,
        list: &[String],
        which: impl Fn(NodeState) -> bool,
    ) -> (Vec<StObject>, Vec<String>) {
        let bytes = unsigned.to_bytes();
        let asks = record
            .live_nodes()
            .filter(|(_, n)| which(n.state))
            .map(|(i, _)| {
                let bytes = &bytes;
                async move {
                    let answer = match self.connect(record, i).await {
                        Ok(n) => {
                            let a = n
                                .sign_checkpoint(bytes)
                                .await
                                .map_err(|e| berth_log::chain(&e).to_string());
                            n.close().await;
                            a
                        }
                        Err(e) => Err(berth_log::chain(&e).to_string()),
                    };
                    (i, answer)
                }
            });
        let mut signers = Vec::new();
        let mut refusals = Vec::new();
        for (i, answer) in futures_util::future::join_all(asks).await {
            match answer.and_then(|s| checked_signer(&s, &unsigned.tx, list)) {
                Ok(entry) => signers.push(entry),
                Err(why) => refusals.push(format!("node {}: {why}", i + 1)),
            }
        }
        (signers, refusals)
    }

    /// Writes one checkpoint: of the latest ledger the nodes closed, or with `every` of the
    /// latest multiple of it. `None` when that ledger is anchored already.
    pub async fn checkpoint(
        &self,
        name: &str,
        every: Option<u64>,
        progress: Progress<'_>,
    ) -> Result<Option<CheckpointReport>, AnchorError> {
        let (mut record, anchor) = self.anchored(name)?;
        let members = self.member_keys(&record)?;
        let mut current: Vec<&String> = members.iter().map(|(_, k)| k).collect();
        current.sort();
        let mut listed: Vec<&String> = anchor.signers.iter().collect();
        listed.sort();
        if current != listed {
            return Err(AnchorError::StaleSigners {
                cluster: record.name.clone(),
                account: anchor.account,
            });
        }
        let connects = members.iter().map(|(i, _)| self.connect(&record, *i));
        let nodes: Vec<(usize, Result<Instance, ClusterError>)> = members
            .iter()
            .map(|(i, _)| *i)
            .zip(futures_util::future::join_all(connects).await)
            .collect();
        let mut lcl = 0;
        for (_, node) in &nodes {
            if let Ok(n) = node {
                if let Ok(stat) = n.stat().await {
                    if stat.in_sync {
                        lcl = lcl.max(stat.ledger_seq_no);
                    }
                }
            }
        }
        let seq = match every {
            Some(k) if k > 0 => lcl / k * k,
            _ => lcl,
        };
        if seq == 0 || anchor.last_seq.is_some_and(|s| s >= seq) {
            close_all(nodes).await;
            return Ok(None);
        }
        // The hashes most nodes report for that ledger.
        let mut answers = Vec::new();
        for (_, node) in &nodes {
            if let Ok(n) = node {
                if let Ok(a) = n.ledger_at(seq).await {
                    answers.extend(a.ledger);
                }
            }
        }
        let Some(own) = answers
            .iter()
            .max_by_key(|a| answers.iter().filter(|b| *b == *a).count())
            .copied()
        else {
            close_all(nodes).await;
            return Err(AnchorError::NoLedger {
                cluster: record.name.clone(),
                seq,
            });
        };
        let cp = Checkpoint {
            contract: record.contract_id.clone(),
            seq,
            ledger: own.hash,
            state: own.state_hash,
            bundle: own.bundle_hash,
        };
        let tx = json!({
            "TransactionType": "AccountSet",
            "Account": anchor.account,
            "Memos": [memo_json(&cp.to_memo())],
        });
        close_all(nodes).await;
        let done = self
            .multisigned(
                &record,
                &anchor,
                tx,
                seq,
                "the checkpoint",
                |s| s == NodeState::Member,
                progress,
            )
            .await?;
        let validated_at = now_ms();
        if let Some(a) = record.anchor.as_mut() {
            a.last_seq = Some(seq);
        }
        self.save(&record)?;
        Ok(Some(CheckpointReport {
            cluster: record.name.clone(),
            account: anchor.account,
            seq,
            ledger: hex::encode(cp.ledger),
            state: hex::encode(cp.state),
            bundle: hex::encode(cp.bundle),
            tx: done.validated.hash,
            xrpl_ledger: done.validated.ledger_index,
            fee_drops: done.fee_drops,
            signers: anchor.quorum as usize,
            close_to_validated_ms: validated_at.saturating_sub(own.time_ms),
            refusals: done.refusals,
        }))
    }
}

async fn close_all(nodes: Vec<(usize, Result<Instance, ClusterError>)>) {
    for (_, node) in nodes {
        if let Ok(n) = node {
            n.close().await;
        }
    }
}

/// A node's `Signer` entry, checked: one of the signer list, a valid signature.
fn checked_signer(
    s: &CheckpointSigner,
    tx: &StObject,
    list: &[String],
) -> Result<StObject, String> {
    if !list
        .iter()
        .any(|k| node_account(k).as_deref() == Some(&s.account))
    {
        return Err(format!(
            "signed as {}, which is not on the signer list",
            s.account
        ));
    }
    let entry = multisign::signer_entry(&s.account, &s.signing_pub_key, &s.txn_signature)
        .ok_or("a malformed signature")?;
    let mut unsigned = tx.clone();
    unsigned.set(
        "SigningPubKey",
        berth_xrpl_core::codec::Value::Blob(Vec::new()),
    );
    let id = entry.account("Account").unwrap_or_default();
    let payload = berth_xrpl_core::tx::multisigning_payload(&unsigned, &id);
    let ok = berth_xrpl_core::keys::verify(
        entry.blob("SigningPubKey").unwrap_or_default(),
        &payload,
        entry.blob("TxnSignature").unwrap_or_default(),
    );
    match ok {
        true => Ok(entry),
        false => Err("a signature that does not verify".into()),
    }
}

/// A node to check: its user port, and its key when known.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    pub label: String,
    pub url: String,
    pub key: Option<String>,
}

/// One checkpoint found on the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct FoundCheckpoint {
    pub seq: u64,
    pub ledger: String,
    pub state: String,
    pub bundle: String,
    pub contract: String,
    pub tx: String,
    pub xrpl_ledger: u32,
    /// Signer accounts.
    pub signers: Vec<String>,
    /// Signatures valid and a quorum of the signer list in effect.
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip)]
    parsed: Option<Checkpoint>,
}

/// A node's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Agrees,
    Lags,
    Contradicts,
}

/// What `verify` says of one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeVerdict {
    pub node: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lcl_seq: Option<u64>,
}

/// `berth cluster verify`'s report.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub account: String,
    pub signer_list: Vec<String>,
    pub quorum: u32,
    pub checkpoints: Vec<FoundCheckpoint>,
    pub nodes: Vec<NodeVerdict>,
}

impl VerifyReport {
    /// Whether a node contradicts a checkpoint, or a checkpoint is not validly signed.
    pub fn contradicted(&self) -> bool {
        self.nodes.iter().any(|n| n.verdict == Verdict::Contradicts)
            || self.checkpoints.iter().any(|c| !c.valid)
    }
}

/// Reads the account's checkpoints, checking each against the signer list in effect.
pub async fn checkpoints_of(
    client: &Client,
    account: &str,
) -> Result<(Vec<FoundCheckpoint>, Vec<String>, u32), AnchorError> {
    if !berth_xrpl_core::address::is_valid_address(account) {
        return Err(AnchorError::BadAccount(account.to_owned()));
    }
    let history = berth_mb_xrpl::history::account_history(client, account, 0)
        .await
        .map_err(|source| AnchorError::Ledger {
            account: account.to_owned(),
            source,
        })?;
    let mut list: Vec<String> = Vec::new();
    let mut quorum = 0u32;
    let mut found = Vec::new();
    for tx in history.transactions {
        if !tx.result.starts_with("tes") || tx.account() != account {
            continue;
        }
        match tx.tx_type() {
            "SignerListSet" => {
                quorum = tx.tx["SignerQuorum"].as_u64().unwrap_or(0) as u32;
                list = tx.tx["SignerEntries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["SignerEntry"]["Account"].as_str().map(str::to_owned))
                    .collect();
            }
            "AccountSet" => {
                let Some(memos) = tx.tx["Memos"].as_array() else {
                    continue;
                };
                let memo = memos.iter().find_map(|m| {
                    let m = &m["Memo"];
                    let memo = Memo::from_hex(
                        m["MemoType"].as_str(),
                        m["MemoFormat"].as_str(),
                        m["MemoData"].as_str(),
                    )
                    .ok()?;
                    (memo.memo_type == CHECKPOINT_MEMO_TYPE.as_bytes()).then_some(memo)
                });
                let Some(memo) = memo else { continue };
                found.push(judge(&tx, &memo, &list, quorum));
            }
            _ => {}
        }
    }
    Ok((found, list, quorum))
}

fn judge(
    tx: &berth_mb_xrpl::ValidatedTx,
    memo: &Memo,
    list: &[String],
    quorum: u32,
) -> FoundCheckpoint {
    let signers: Vec<String> = tx.tx["Signers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["Signer"]["Account"].as_str().map(str::to_owned))
        .collect();
    let parsed = Checkpoint::from_memo(memo);
    let mut problem = None;
    let sig_check = StObject::from_json(&tx.tx)
        .map_err(|e| e.to_string())
        .and_then(|obj| berth_xrpl_core::tx::verify_signatures(&obj));
    if let Err(e) = sig_check {
        problem = Some(format!("signatures do not verify: {e}"));
    } else if let Some(stranger) = signers.iter().find(|s| !list.contains(s)) {
        problem = Some(format!("{stranger} is not on the signer list in effect"));
    } else if (signers.len() as u32) < quorum || quorum == 0 {
        problem = Some(format!(
            "{} signature(s), the quorum is {quorum}",
            signers.len()
        ));
    }
    if let Err(e) = &parsed {
        problem = Some(berth_log::chain(e).to_string());
    }
    let cp = parsed.ok();
    FoundCheckpoint {
        seq: cp.as_ref().map_or(0, |c| c.seq),
        ledger: cp
            .as_ref()
            .map_or_else(String::new, |c| hex::encode(c.ledger)),
        state: cp
            .as_ref()
            .map_or_else(String::new, |c| hex::encode(c.state)),
        bundle: cp
            .as_ref()
            .map_or_else(String::new, |c| hex::encode(c.bundle)),
        contract: cp.as_ref().map_or_else(String::new, |c| c.contract.clone()),
        tx: tx.hash.clone(),
        xrpl_ledger: tx.ledger_index,
        signers,
        valid: problem.is_none(),
        problem,
        parsed: cp,
    }
}

/// How many of the latest checkpoints each node is asked about.
const CHECKPOINTS_ASKED: usize = 16;

/// `berth cluster verify`: the account's checkpoints, and each node's verdict against them.
pub async fn verify(
    client: &Client,
    account: &str,
    nodes: &[NodeTarget],
    timeout: Duration,
    progress: Progress<'_>,
) -> Result<VerifyReport, AnchorError> {
    progress(&format!("reading the checkpoints of {account}…"));
    let (checkpoints, signer_list, quorum) = checkpoints_of(client, account).await?;
    progress(&format!(
        "{} checkpoint(s); asking {} node(s)…",
        checkpoints.len(),
        nodes.len()
    ));
    let valid: Vec<&Checkpoint> = checkpoints
        .iter()
        .filter(|c| c.valid)
        .filter_map(|c| c.parsed.as_ref())
        .rev()
        .take(CHECKPOINTS_ASKED)
        .collect();
    let asks = nodes.iter().map(|n| judge_node(n, &valid, timeout));
    let nodes = futures_util::future::join_all(asks).await;
    Ok(VerifyReport {
        account: account.to_owned(),
        signer_list,
        quorum,
        checkpoints,
        nodes,
    })
}

async fn judge_node(
    target: &NodeTarget,
    latest_first: &[&Checkpoint],
    timeout: Duration,
) -> NodeVerdict {
    let mut verdict = NodeVerdict {
        node: target.label.clone(),
        url: target.url.clone(),
        key: target.key.clone(),
        verdict: Verdict::Lags,
        detail: String::new(),
        lcl_seq: None,
    };
    // Any user may ask: a throwaway key.
    let user = SigningKey::from_bytes(&rand::random());
    let instance = match Instance::connect(&target.url, &user, timeout).await {
        Ok(i) => i,
        Err(e) => {
            verdict.detail = format!("unreachable: {}", berth_log::chain(&e));
            return verdict;
        }
    };
    if let (Some(want), Some(got)) = (&target.key, instance.node_key()) {
        if !want.eq_ignore_ascii_case(got) {
            verdict.detail = format!("answered with node key {got}, not {want}");
            instance.close().await;
            return verdict;
        }
    }
    verdict.key = instance.node_key().map(str::to_owned).or(verdict.key);
    let Some(latest) = latest_first.first() else {
        verdict.verdict = Verdict::Agrees;
        verdict.detail = "no checkpoint to compare with".into();
        instance.close().await;
        return verdict;
    };
    let mut missing = None;
    for cp in latest_first {
        let answer = match instance.ledger_at(cp.seq).await {
            Ok(a) => a,
            Err(e) => {
                verdict.detail = format!("no answer: {}", berth_log::chain(&e));
                instance.close().await;
                return verdict;
            }
        };
        verdict.lcl_seq = Some(verdict.lcl_seq.unwrap_or(0).max(answer.lcl_seq));
        let Some(l) = answer.ledger else {
            missing.get_or_insert(cp.seq);
            continue;
        };
        let mut differs = Vec::new();
        if l.hash != cp.ledger {
            differs.push(format!("ledger hash {}", hex::encode(l.hash)));
        }
        if l.state_hash != cp.state {
            differs.push(format!("state hash {}", hex::encode(l.state_hash)));
        }
        if !differs.is_empty() {
            verdict.verdict = Verdict::Contradicts;
            verdict.detail = format!(
                "contradicts the checkpoint of ledger {}: its {}",
                cp.seq,
                differs.join(", ")
            );
            instance.close().await;
            return verdict;
        }
    }
    instance.close().await;
    match missing {
        Some(seq) if seq == latest.seq => {
            verdict.detail = format!(
                "lags: its last ledger is {}, the last checkpoint is of ledger {seq}",
                verdict.lcl_seq.unwrap_or(0)
            );
        }
        Some(seq) => {
            verdict.verdict = Verdict::Agrees;
            verdict.detail = format!(
                "agrees with the checkpoint of ledger {} (has no ledger {seq})",
                latest.seq
            );
        }
        None => {
            verdict.verdict = Verdict::Agrees;
            verdict.detail = format!(
                "agrees with {} checkpoint(s), the last of ledger {}",
                latest_first.len(),
                latest.seq
            );
        }
    }
    verdict
}

/// The nodes of a cluster's record to verify (every leased node, members or not).
pub fn targets_of(book: &crate::book::Book, record: &ClusterRecord) -> Vec<NodeTarget> {
    record
        .live_nodes()
        .filter_map(|(i, n)| {
            let lease = book.find(&n.lease).ok()?;
            Some(NodeTarget {
                label: format!("{}", i + 1),
                url: lease.instance_url(),
                key: Some(lease.node_key),
            })
        })
        .collect()
}

/// Runs [`Clusters::checkpoint`] as ledgers close, until `stop` resolves.
pub async fn anchor_every(
    clusters: &Clusters<'_>,
    name: &str,
    every: u64,
    stop: impl std::future::Future<Output = ()>,
    mut on_checkpoint: impl FnMut(&CheckpointReport),
    progress: Progress<'_>,
) -> Result<(), AnchorError> {
    tokio::pin!(stop);
    let started = Instant::now();
    loop {
        match clusters.checkpoint(name, Some(every), progress).await {
            Ok(Some(r)) => on_checkpoint(&r),
            Ok(None) => {}
            Err(e @ (AnchorError::NoQuorum { .. } | AnchorError::Submit { .. })) => {
                progress(&format!(
                    "checkpoint failed, trying again: {}",
                    berth_log::chain(&e)
                ));
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        tracing::debug!(secs = started.elapsed().as_secs(), "anchoring");
    }
}
