//! Shared test harness: a machine over a temporary store, the recording provisioner and
//! `FakeLedger` (a fake of the narrow ledger trait: it signs nothing and validates every
//! transaction at once; tests against localnet use the real client).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth_agent::ledger::{
    Ledger, LedgerAction, LedgerError, LedgerEvent, PreparedTx, TxOutcome, TxResult,
};
use berth_agent::machine::{Machine, MachineSettings};
use berth_agent::store::Store;
use berth_provisioner::{PortRange, RecordingProvisioner};
use berth_schemas::config::HostConfig;
use berth_schemas::field::{AccountAddress, NfTokenId, TxHash};
use berth_schemas::key::PublicKey;
use berth_schemas::memo::{Memo, Message};
use berth_schemas::message::{Acquire, AcquireRequest, Sealed};
use ed25519_dalek::SigningKey;

pub const HOST: &str = "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh";
pub const PRICE: u64 = 1_000_000;
pub const MOMENT: u64 = 3600;
pub const GRACE: u64 = 300;

pub fn config(slots: u32) -> HostConfig {
    HostConfig::from_toml(&format!(
        r#"
[ledger]
servers = ["ws://127.0.0.1:1"]
registry = "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh"
[host]
domain = "host1.example.com"
country = "DE"
[lease]
slots = {slots}
price_drops = "{PRICE}"
moment_secs = {MOMENT}
grace_secs = {GRACE}
[resources]
cpu_millicores = 4000
memory_mb = 8192
disk_mb = 40960
"#
    ))
    .unwrap()
}

/// A fake of the ledger trait: records what is prepared and submitted, validates everything
/// with `tesSUCCESS` (or a result set per action kind), and knows MessageKeys given to it.
#[derive(Default)]
pub struct FakeLedger {
    pub prepared: Mutex<Vec<LedgerAction>>,
    pub submitted: Mutex<Vec<String>>,
    actions: Mutex<BTreeMap<TxHash, LedgerAction>>,
    pub message_keys: Mutex<BTreeMap<String, PublicKey>>,
    pub results: Mutex<BTreeMap<&'static str, String>>,
    counter: Mutex<u64>,
    /// When set, the next submission is re-signed once (as a raised fee would) before it
    /// validates; (old hash, new hash) pairs are recorded.
    pub resign_next: Mutex<bool>,
    pub resigned: Mutex<Vec<(String, String)>>,
    /// Token → holding account, as the ledger would know it: set by purchases handled
    /// through [`Harness::handle`] and by [`FakeLedger::transfer`].
    pub holders: Mutex<BTreeMap<String, String>>,
}

fn kind(action: &LedgerAction) -> &'static str {
    match action {
        LedgerAction::Payment { .. } => "payment",
        LedgerAction::Mint { .. } => "mint",
        LedgerAction::Offer { .. } => "offer",
        LedgerAction::Burn { .. } => "burn",
        LedgerAction::CancelOffer { .. } => "cancel",
        LedgerAction::SetMessageKey { .. } => "message_key",
    }
}

impl FakeLedger {
    /// Payments prepared, as (destination, amount, message).
    pub fn payments(&self) -> Vec<(String, u64, Message)> {
        self.prepared
            .lock()
            .unwrap()
            .iter()
            .filter_map(|action| match action {
                LedgerAction::Payment {
                    destination,
                    amount_drops,
                    memo,
                } => Some((
                    destination.to_string(),
                    *amount_drops,
                    Message::from_memo(&memo.to_memo().unwrap()).unwrap(),
                )),
                _ => None,
            })
            .collect()
    }

    /// The token changes hands (a resale on the DEX, which the host does not see).
    pub fn transfer(&self, token: &str, to: &str) {
        self.holders
            .lock()
            .unwrap()
            .insert(token.to_owned(), to.to_owned());
    }

    pub fn count(&self, which: &str) -> usize {
        self.prepared
            .lock()
            .unwrap()
            .iter()
            .filter(|a| kind(a) == which)
            .count()
    }
}

#[async_trait::async_trait]
impl Ledger for FakeLedger {
    async fn prepare(&self, action: &LedgerAction) -> Result<PreparedTx, LedgerError> {
        let mut counter = self.counter.lock().unwrap();
        *counter += 1;
        let hash: TxHash = format!("{:064X}", *counter).parse().unwrap();
        self.prepared.lock().unwrap().push(action.clone());
        self.actions.lock().unwrap().insert(hash, action.clone());
        Ok(PreparedTx {
            hash,
            blob: format!("BLOB{hash}"),
            last_ledger: 100,
        })
    }

    async fn submit_and_wait(
        &self,
        tx: &PreparedTx,
        on_resigned: &(dyn for<'p> Fn(&'p PreparedTx) -> Result<(), String> + Send + Sync),
    ) -> Result<TxOutcome, LedgerError> {
        let resign = std::mem::take(&mut *self.resign_next.lock().unwrap());
        let resigned;
        let tx = if resign {
            let action = self.actions.lock().unwrap().get(&tx.hash).cloned();
            let new_hash: TxHash = {
                let mut counter = self.counter.lock().unwrap();
                *counter += 1;
                format!("{:064X}", *counter).parse().unwrap()
            };
            if let Some(a) = action {
                self.actions.lock().unwrap().insert(new_hash, a);
            }
            resigned = PreparedTx {
                hash: new_hash,
                blob: format!("BLOB{new_hash}"),
                last_ledger: tx.last_ledger,
            };
            on_resigned(&resigned).map_err(LedgerError::Protocol)?;
            self.resigned
                .lock()
                .unwrap()
                .push((tx.hash.to_string(), new_hash.to_string()));
            &resigned
        } else {
            tx
        };
        self.submitted.lock().unwrap().push(tx.hash.to_string());
        let action = self
            .actions
            .lock()
            .unwrap()
            .get(&tx.hash)
            .cloned()
            .ok_or_else(|| LedgerError::Protocol(format!("unknown tx {}", tx.hash)))?;
        let result = self
            .results
            .lock()
            .unwrap()
            .get(kind(&action))
            .cloned()
            .unwrap_or_else(|| "tesSUCCESS".into());
        let hash = tx.hash.to_string();
        let (nftoken_id, offer_id) = match &action {
            LedgerAction::Mint { .. } => (
                Some(
                    format!("{:0>64}", hash[48..].to_owned() + "AA")
                        .parse()
                        .unwrap(),
                ),
                None,
            ),
            LedgerAction::Offer { .. } => (
                None,
                Some(
                    format!("{:0>64}", hash[48..].to_owned() + "BB")
                        .parse()
                        .unwrap(),
                ),
            ),
            _ => (None, None),
        };
        Ok(TxOutcome::Validated {
            result: TxResult::from_token(&result),
            nftoken_id,
            offer_id,
        })
    }

    async fn message_key(
        &self,
        account: &AccountAddress,
    ) -> Result<Option<PublicKey>, LedgerError> {
        Ok(self
            .message_keys
            .lock()
            .unwrap()
            .get(&account.to_string())
            .copied())
    }

    async fn holds(
        &self,
        account: &AccountAddress,
        token: &NfTokenId,
        _ledger: u32,
    ) -> Result<bool, LedgerError> {
        Ok(self
            .holders
            .lock()
            .unwrap()
            .get(&token.to_string())
            .is_some_and(|holder| *holder == account.to_string()))
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub machine: Arc<Machine>,
    pub provisioner: Arc<RecordingProvisioner>,
    pub ledger: Arc<FakeLedger>,
    pub host_key: SigningKey,
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from_verifying_key(&key.verifying_key()).unwrap()
}

impl Harness {
    pub fn new(slots: u32) -> Self {
        Self::new_with(slots, |_| {})
    }

    /// A harness whose host config `edit` changed.
    pub fn new_with(slots: u32, edit: impl FnOnce(&mut HostConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut host = config(slots.max(1));
        edit(&mut host);
        Self::open(
            dir,
            host,
            Arc::new(RecordingProvisioner::new(
                PortRange::new(26201, 26300),
                PortRange::new(22861, 22960),
                100,
            )),
            Arc::new(FakeLedger::default()),
        )
    }

    /// A machine over the same store, provisioner and ledger: what a restart sees.
    pub fn restart(self) -> Self {
        let Harness {
            dir,
            provisioner,
            ledger,
            machine,
            ..
        } = self;
        drop(machine);
        Self::open(dir, config(1), provisioner, ledger)
    }

    fn open(
        dir: tempfile::TempDir,
        host: HostConfig,
        provisioner: Arc<RecordingProvisioner>,
        ledger: Arc<FakeLedger>,
    ) -> Self {
        let store = Store::open(&dir.path().join("agent.db")).unwrap();
        let host_key = key(7);
        let machine = Arc::new(Machine::new(
            store,
            provisioner.clone(),
            ledger.clone(),
            host,
            HOST.parse().unwrap(),
            host_key.clone(),
            MachineSettings {
                stall_secs: 60,
                customize: |spec| spec,
                parallel_jobs: 8,
            },
        ));
        Self {
            dir,
            machine,
            provisioner,
            ledger,
            host_key,
        }
    }

    /// Mints and offers every slot through the fake ledger.
    pub async fn offer_all(&self) {
        self.machine.ensure_slots().unwrap();
        for _ in 0..3 {
            self.machine.flush_outbox().await.unwrap();
        }
    }

    pub fn token(&self, slot: u32) -> String {
        token_of(&self.machine, slot)
    }

    /// Handles an event and runs its jobs, as `run` does.
    pub async fn handle(&self, event: LedgerEvent) {
        if let LedgerEvent::Purchase {
            buyer, token_id, ..
        } = &event
        {
            self.ledger
                .transfer(&token_id.to_string(), &buyer.to_string());
        }
        for job in self.machine.handle(&event).await.unwrap() {
            self.machine.run_job(job).await.unwrap();
        }
    }

    pub fn acquire_memo(&self, tenant: &SigningKey) -> Memo {
        acquire_memo_to(&public(&self.host_key), tenant)
    }
}

/// A `berth/acquire` memo sealed to `host`, asking for an instance owned by `tenant`.
pub fn acquire_memo_to(host: &PublicKey, tenant: &SigningKey) -> Memo {
    acquire_memo_with(host, tenant, None)
}

/// A `berth/acquire` memo sealed to `host` with contract settings.
pub fn acquire_memo_with(
    host: &PublicKey,
    tenant: &SigningKey,
    config: Option<berth_schemas::message::ContractConfig>,
) -> Memo {
    let request = AcquireRequest {
        owner_key: public(tenant),
        contract_id: "3f1c0d6e-5b7a-4c2e-9a51-0d2b7e8f9a10".parse().unwrap(),
        reply_key: Some(public(tenant)),
        config,
    };
    let sealed = Sealed::seal(host, &request).unwrap();
    Message::Acquire(Acquire { sealed }).to_memo().unwrap()
}

/// The current token of `slot`, as text.
pub fn token_of(machine: &Machine, slot: u32) -> String {
    machine
        .store()
        .read()
        .slot(slot)
        .unwrap()
        .unwrap()
        .token_id
        .unwrap()
        .to_string()
}

pub fn hash(n: u8) -> String {
    format!("{:02X}", n).repeat(32)
}

/// The instance name of purchase `n` ([`hash`]).
pub fn instance_of(n: u8) -> String {
    berth_agent::machine::instance_name(&hash(n).parse().unwrap())
}

pub fn purchase(
    tx: u8,
    buyer: &str,
    token: &str,
    amount: u64,
    memos: Vec<Memo>,
    close_time: u64,
) -> LedgerEvent {
    LedgerEvent::Purchase {
        tx_hash: hash(tx).parse().unwrap(),
        ledger: 10,
        close_time,
        buyer: buyer.parse().unwrap(),
        token_id: token.parse().unwrap(),
        amount_drops: amount,
        memos,
    }
}

pub fn payment(tx: u8, from: &str, amount: u64, message: Option<Message>) -> LedgerEvent {
    LedgerEvent::Payment {
        tx_hash: hash(tx).parse().unwrap(),
        ledger: 11,
        close_time: 2000,
        from: from.parse().unwrap(),
        amount_drops: Some(amount),
        memos: message
            .map(|m| vec![m.to_memo().unwrap()])
            .unwrap_or_default(),
    }
}
