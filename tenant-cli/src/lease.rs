//! A tenant's leases on the ledger: buying one (`acquire`, resumable by the purchase's hash),
//! extending, terminating, and listing what the account holds. The protocol is
//! `schemas/README.md` ("A tenant, step by step"); every request gets one answer from the
//! host naming it, which [`Tenant`] waits for in the tenant's validated account history.
//!
//! Money rules, from the tenant's side: the purchase is persisted (`book::PendingPurchase`)
//! before it is submitted, and the same signed transaction (same hash) is what a resume
//! submits, so an interrupted `acquire` never pays twice; a refusal is reported with the
//! host's code, reason and the amount it paid back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_mb_xrpl::events::{decode, MarketEvent};
use berth_mb_xrpl::history::account_history;
use berth_mb_xrpl::{
    Client, ClientError, SignedTx, SubmitConfig, SubmitError, Submitter, TxStatus,
};
use berth_schemas::field::{ContractId, NfTokenId};
use berth_schemas::key::PublicKey;
use berth_schemas::lease_uri::LeaseUri;
use berth_schemas::memo::Message;
use berth_schemas::message::{
    Acquire, AcquireRequest, ContractConfig, Extend, Failure, InstanceDetails, ReasonCode, Sealed,
    Terminate,
};
use berth_xrpl_core::KeyPair;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use serde_json::{json, Value};

use crate::book::{Book, BookError, Ended, LeaseRecord, PendingPurchase, PendingRequest};
use crate::hosts::{self, HostsError, Offer};
use crate::keys::{Keys, KeysError};

/// Fees are a few drops; this much is kept aside for them in balance checks.
const FEE_HEADROOM_DROPS: u64 = 10_000;
/// How often the wait for an answer prints where it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why a lease operation failed. Each message says what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("`{0}` is not an XRPL account address (r…); pick a host from `berth hosts`")]
    BadHost(String),
    #[error("account {host} does not exist on the ledger; pick a host from `berth hosts`")]
    UnknownHost { host: String },
    #[error("host {host} publishes no MessageKey, so a request to it cannot be sealed; it is not a running Berth host: pick another from `berth hosts`")]
    NoMessageKey { host: String },
    #[error("no host found: {host} has no live lease offer{filter} (all its slots are leased, or its agent is not running); pick another with `berth hosts`")]
    NoOffer { host: String, filter: String },
    #[error("host {host} has sent nothing to the ledger for {silent} (it heartbeats once per {moment_secs} s moment): its agent looks down and would not answer a purchase; pick another host with `berth hosts`, or pass --allow-silent to buy anyway")]
    HostSilent {
        host: String,
        silent: String,
        moment_secs: u32,
    },
    #[error("insufficient balance: {address} holds {balance}, and this needs {needed} ({spend} to pay, {reserve} of reserve the ledger keeps on the account, fees); fund {address} and try again")]
    InsufficientBalance {
        address: String,
        balance: Xrp,
        needed: Xrp,
        spend: Xrp,
        reserve: Xrp,
    },
    #[error("account {address} does not exist on the ledger: fund it (at least the reserve plus what you want to spend) and try again")]
    Unfunded { address: String },
    #[error("the offer for lease {lease} was taken by another buyer before the purchase {hash} validated ({result}); only the fee was spent: run `berth acquire` again")]
    OfferGone {
        lease: String,
        hash: String,
        result: String,
    },
    #[error("transaction {hash} failed on the ledger with {result}: {meaning}")]
    TxFailed {
        hash: String,
        result: String,
        meaning: String,
    },
    #[error("transaction {hash} never reached a validated ledger ({detail}); nothing was paid: run the command again")]
    NeverValidated { hash: String, detail: String },
    #[error("the host {host} refused {what} {request}: {code}: {message}; {refunded} paid back")]
    Refused {
        host: String,
        what: &'static str,
        request: String,
        code: String,
        message: String,
        refunded: Xrp,
    },
    #[error("no answer from host {host} to {what} {request} after {waited_secs} s; {hint}")]
    NoAnswer {
        host: String,
        what: &'static str,
        request: String,
        waited_secs: u64,
        hint: String,
    },
    #[error("the host's answer to {request} cannot be opened with this tenant's message key ({problem}); were the keys in this home replaced since the purchase?")]
    Unreadable { request: String, problem: String },
    #[error("the host's answer to {request} names lease {got}, not the lease bought ({want}); contact the host")]
    WrongLease {
        request: String,
        want: String,
        got: String,
    },
    #[error("lease {lease} expired at {at} (Unix seconds, {ago} s ago); acquire a new lease with `berth acquire <host>`")]
    Expired { lease: String, at: u64, ago: u64 },
    #[error("lease {lease} was terminated; acquire a new lease with `berth acquire <host>`")]
    Terminated { lease: String },
    #[error("a {what} of lease {lease} is still in flight (transaction {hash}); finish it first by running that command again")]
    InFlight {
        lease: String,
        what: String,
        hash: String,
    },
    #[error("transaction {hash} is not a lease purchase by {account}: {problem}")]
    NotAPurchase {
        hash: String,
        account: String,
        problem: String,
    },
    #[error("{moments} moments at {price} drops overflows an XRP amount")]
    Overflow { moments: u32, price: u64 },
    #[error(transparent)]
    Book(#[from] BookError),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Hosts(Box<HostsError>),
    #[error("ledger: {0}")]
    Submit(Box<SubmitError>),
    #[error("ledger: {0}")]
    Client(Box<ClientError>),
    #[error("building the request: {0}")]
    Build(String),
}

impl From<HostsError> for LeaseError {
    fn from(e: HostsError) -> Self {
        LeaseError::Hosts(Box::new(e))
    }
}

impl From<SubmitError> for LeaseError {
    fn from(e: SubmitError) -> Self {
        LeaseError::Submit(Box::new(e))
    }
}

impl From<ClientError> for LeaseError {
    fn from(e: ClientError) -> Self {
        LeaseError::Client(Box::new(e))
    }
}

/// An amount of XRP in drops, shown as XRP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Xrp(pub u64);

impl std::fmt::Display for Xrp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06} XRP", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// What `acquire` asks for.
#[derive(Debug, Clone)]
pub struct AcquireOptions {
    /// The instance's HotPocket contract id; a fresh random one when absent.
    pub contract_id: Option<ContractId>,
    /// Highest price per moment the tenant accepts, drops.
    pub max_price_drops: Option<u64>,
    /// Moments wanted in all (≥ 1): the purchase buys one, an extension the rest.
    pub moments: u32,
    /// How long to wait for each answer.
    pub wait: Duration,
    /// Buy even from a host silent for more than three of its moments.
    pub allow_silent: bool,
    /// Contract settings for the new node (a cluster node's); the host's defaults when
    /// absent.
    pub config: Option<ContractConfig>,
    /// Sell offers not to take (already taken by purchases prepared alongside).
    pub avoid_offers: Vec<String>,
}

/// A lease bought and its instance's details opened.
#[derive(Debug, Clone, Serialize)]
pub struct Acquired {
    pub purchase: String,
    pub record: LeaseRecord,
    /// The extension that bought moments beyond the first, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extended>,
}

/// An extension the host confirmed.
#[derive(Debug, Clone, Serialize)]
pub struct Extended {
    pub request: String,
    pub lease: String,
    pub moments: u32,
    pub expires_at: u64,
    /// What the host paid back (the remainder, or 1 drop).
    pub returned_drops: u64,
}

/// A lease as `berth leases` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeaseView {
    pub lease: String,
    pub host: String,
    pub slot: Option<u32>,
    /// `active`, `expired` (its end passed), `terminated`, or `gone` (the token left the
    /// account otherwise).
    pub state: &'static str,
    /// The account holds the token now.
    pub held: bool,
    /// `wss://host:port`, when the instance details are known.
    pub instance: Option<String>,
    pub contract_id: Option<String>,
    pub expires_at: Option<u64>,
    pub price_drops: Option<u64>,
    pub moment_secs: Option<u32>,
}

/// Progress lines for people (stderr in the CLI).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh random (version 4) contract id.
pub fn random_contract_id() -> ContractId {
    ContractId(uuid::Uuid::new_v4().into_bytes())
}

/// The issuer (the host) of a lease token.
pub fn token_issuer(token: &str) -> Option<String> {
    let id: NfTokenId = token.parse().ok()?;
    let parts = berth_xrpl_core::index::nftoken_parts(id.as_bytes());
    Some(berth_xrpl_core::address::encode_account_id(&parts.issuer))
}

/// What a failed transaction result means for a tenant.
fn meaning(result: &str) -> &'static str {
    match result {
        "tecUNFUNDED_PAYMENT" | "tecINSUFFICIENT_FUNDS" | "tecINSUF_RESERVE_NFTOKEN" => {
            "the account cannot pay this and keep its reserve; fund it and try again"
        }
        "tecNO_DST" | "tecNO_DST_INSUF_XRP" => "the host account does not exist",
        "tecNO_PERMISSION" => "the ledger does not allow this account to do it",
        _ => "see the XRP Ledger's transaction results",
    }
}

/// One tenant connected to a ledger: its keys, its lease book and a submitter.
pub struct Tenant {
    client: Client,
    submitter: Submitter,
    user: SigningKey,
    message: SigningKey,
    address: String,
    book: Book,
}

impl Tenant {
    pub fn new(client: Client, keys: &Keys, book: Book) -> Result<Tenant, LeaseError> {
        let seed = keys
            .wallet
            .seed()
            .ok_or_else(|| LeaseError::Build("the wallet has no seed".into()))?;
        let wallet = KeyPair::from_seed(&seed).map_err(|e| LeaseError::Build(e.to_string()))?;
        let submitter = Submitter::new(client.clone(), wallet, SubmitConfig::default())?;
        Ok(Tenant {
            client,
            submitter,
            user: keys.user.clone(),
            message: keys.message_key()?,
            address: keys.wallet.address(),
            book,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Signs a plain XRP payment of `drops` to `destination` (persist it, then
    /// [`Tenant::submit_signed`]).
    pub async fn prepare_payment(
        &self,
        destination: &str,
        drops: u64,
    ) -> Result<SignedTx, LeaseError> {
        Ok(self
            .submitter
            .prepare(json!({
                "TransactionType": "Payment",
                "Destination": destination,
                "Amount": drops.to_string(),
            }))
            .await?)
    }

    /// Submits a transaction of the tenant's account and waits until it is final.
    pub async fn submit_signed(
        &self,
        signed: &SignedTx,
    ) -> Result<berth_mb_xrpl::Validated, LeaseError> {
        Ok(self.submitter.submit_and_wait(signed).await?)
    }

    /// The account's balance and owner count; `None` when the account does not exist.
    async fn account(&self, account: &str) -> Result<Option<Value>, LeaseError> {
        Ok(self.client.account_data(account).await?)
    }

    /// (base, increment) reserve in drops, from `server_info`; the XRP Ledger's current
    /// values when the server does not say.
    pub async fn reserves(&self) -> (u64, u64) {
        let info = self.client.request("server_info", json!({})).await.ok();
        let xrp = |key: &str| {
            info.as_ref()
                .and_then(|i| i["info"]["validated_ledger"][key].as_f64())
                .map(|x| (x * 1e6).round() as u64)
        };
        (
            xrp("reserve_base_xrp").unwrap_or(1_000_000),
            xrp("reserve_inc_xrp").unwrap_or(200_000),
        )
    }

    /// Fails with [`LeaseError::InsufficientBalance`] unless the account can pay `spend`
    /// and keep its reserve with `new_objects` more objects.
    pub async fn check_funds(&self, spend: u64, new_objects: u32) -> Result<(), LeaseError> {
        let Some(data) = self.account(&self.address).await? else {
            return Err(LeaseError::Unfunded {
                address: self.address.clone(),
            });
        };
        let balance = data["Balance"]
            .as_str()
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(0);
        let owners = data["OwnerCount"].as_u64().unwrap_or(0);
        let (base, inc) = self.reserves().await;
        let reserve = base.saturating_add(inc.saturating_mul(owners + u64::from(new_objects)));
        let needed = spend
            .saturating_add(reserve)
            .saturating_add(FEE_HEADROOM_DROPS);
        if balance < needed {
            return Err(LeaseError::InsufficientBalance {
                address: self.address.clone(),
                balance: Xrp(balance),
                needed: Xrp(needed),
                spend: Xrp(spend),
                reserve: Xrp(reserve),
            });
        }
        Ok(())
    }

    async fn host_message_key(&self, host: &str) -> Result<PublicKey, LeaseError> {
        let Some(data) = self.account(host).await? else {
            return Err(LeaseError::UnknownHost {
                host: host.to_owned(),
            });
        };
        data["MessageKey"]
            .as_str()
            .and_then(|k| hex::decode(k).ok())
            .and_then(|bytes| PublicKey::from_bytes(&bytes).ok())
            .ok_or_else(|| LeaseError::NoMessageKey {
                host: host.to_owned(),
            })
    }

    /// Fails with [`LeaseError::HostSilent`] when the host's latest validated transaction
    /// (heartbeats, answers, mints) is older than
    /// [`hosts::SILENT_AFTER_MOMENTS`] of its moments.
    async fn check_alive(&self, host: &str, moment_secs: u32) -> Result<(), LeaseError> {
        let page = self
            .client
            .request(
                "account_tx",
                json!({"account": host, "ledger_index_min": -1, "ledger_index_max": -1,
                       "limit": 1, "forward": false}),
            )
            .await?;
        let latest = page["transactions"]
            .as_array()
            .and_then(|t| t.first())
            .and_then(berth_mb_xrpl::ValidatedTx::from_json)
            .and_then(|tx| tx.close_time_unix);
        let limit = hosts::SILENT_AFTER_MOMENTS.saturating_mul(u64::from(moment_secs));
        let silent = latest.map(|t| now_unix().saturating_sub(t));
        match silent {
            Some(secs) if secs <= limit => Ok(()),
            _ => Err(LeaseError::HostSilent {
                host: host.to_owned(),
                silent: silent.map_or_else(|| "ever".to_owned(), |s| format!("{s} s")),
                moment_secs,
            }),
        }
    }

    /// Buys the cheapest live lease offer of `host` and waits for the instance.
    pub async fn acquire(
        &self,
        host: &str,
        opts: &AcquireOptions,
        progress: Progress<'_>,
    ) -> Result<Acquired, LeaseError> {
        let pending = self.prepare_purchase(host, opts, true).await?;
        progress(&format!(
            "buying lease {} ({} per {} s moment) from {host}: purchase {}; if this is interrupted, `berth acquire --resume {}` picks it up",
            pending.lease,
            Xrp(pending.price_drops),
            pending.moment_secs,
            pending.signed.hash,
            pending.signed.hash
        ));
        self.finish(pending, opts.wait, progress).await
    }

    /// Signs a purchase of the cheapest live lease offer of `host` and records it in the
    /// book, without submitting it: [`Tenant::finish`] does (so does `acquire --resume`).
    /// `check_funds`: make sure the account can pay for it (a caller buying several at once
    /// checks the sum itself).
    pub async fn prepare_purchase(
        &self,
        host: &str,
        opts: &AcquireOptions,
        check_funds: bool,
    ) -> Result<PendingPurchase, LeaseError> {
        if !berth_xrpl_core::address::is_valid_address(host) {
            return Err(LeaseError::BadHost(host.to_owned()));
        }
        let host_key = self.host_message_key(host).await?;
        let offers = hosts::live_offers(&self.client, host).await?;
        let offer: Offer = offers
            .into_iter()
            .filter(|o| opts.max_price_drops.is_none_or(|max| o.amount_drops <= max))
            .filter(|o| !opts.avoid_offers.contains(&o.offer_id))
            .min_by_key(|o| (o.amount_drops, o.slot))
            .ok_or_else(|| LeaseError::NoOffer {
                host: host.to_owned(),
                filter: opts
                    .max_price_drops
                    .map(|max| format!(" at or below {max} drops per moment"))
                    .unwrap_or_default(),
            })?;
        if !opts.allow_silent {
            self.check_alive(host, offer.moment_secs).await?;
        }
        let moments = opts.moments.max(1);
        let extra = u64::from(moments - 1)
            .checked_mul(offer.amount_drops)
            .ok_or(LeaseError::Overflow {
                moments,
                price: offer.amount_drops,
            })?;
        if check_funds {
            self.check_funds(offer.amount_drops.saturating_add(extra), 1)
                .await?;
        }

        let contract_id = opts.contract_id.unwrap_or_else(random_contract_id);
        let request = AcquireRequest {
            owner_key: PublicKey::from_verifying_key(&self.user.verifying_key())
                .map_err(|e| LeaseError::Build(format!("owner key: {e}")))?,
            contract_id,
            reply_key: Some(
                PublicKey::from_verifying_key(&self.message.verifying_key())
                    .map_err(|e| LeaseError::Build(format!("reply key: {e}")))?,
            ),
            config: opts.config.clone(),
        };
        let sealed =
            Sealed::seal(&host_key, &request).map_err(|e| LeaseError::Build(e.to_string()))?;
        let memos = memos_json(&Message::Acquire(Acquire { sealed }))?;
        let signed = self
            .submitter
            .prepare(json!({
                "TransactionType": "NFTokenAcceptOffer",
                "Account": self.address,
                "NFTokenSellOffer": offer.offer_id,
                "Memos": memos,
            }))
            .await?;
        let pending = PendingPurchase {
            host: host.to_owned(),
            lease: offer.token_id.clone(),
            offer: offer.offer_id.clone(),
            price_drops: offer.amount_drops,
            moment_secs: offer.moment_secs,
            contract_id: contract_id.to_string(),
            moments,
            signed,
        };
        self.book.save_pending(&pending)?;
        tracing::info!(purchase = %pending.signed.hash, lease = %pending.lease, offer = %pending.offer, slot = offer.slot, host, "purchase recorded before submitting");
        Ok(pending)
    }

    /// Picks up a purchase by its hash: from the local pending record when there is one
    /// (submitting it if it never reached the ledger), else from the ledger.
    pub async fn resume(
        &self,
        hash: &str,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<Acquired, LeaseError> {
        let hash = hash.trim().to_uppercase();
        if let Some(pending) = self.book.pending(&hash)? {
            progress(&format!(
                "resuming purchase {hash} of lease {} from {}",
                pending.lease, pending.host
            ));
            return self.finish(pending, wait, progress).await;
        }
        // No local record: the ledger knows the purchase.
        let not = |problem: String| LeaseError::NotAPurchase {
            hash: hash.clone(),
            account: self.address.clone(),
            problem,
        };
        let status = self.submitter.status(&hash).await?;
        let TxStatus::Validated(validated) = status else {
            return Err(not(
                "it is not in a validated ledger and there is no pending record of it here".into(),
            ));
        };
        let tx = self
            .client
            .request("tx", json!({"transaction": hash}))
            .await?;
        let fields = tx.get("tx_json").unwrap_or(&tx);
        if fields["TransactionType"].as_str() != Some("NFTokenAcceptOffer")
            || fields["Account"].as_str() != Some(self.address.as_str())
        {
            return Err(not(format!(
                "it is a {} sent by {}",
                fields["TransactionType"].as_str().unwrap_or("?"),
                fields["Account"].as_str().unwrap_or("?")
            )));
        }
        if !validated.is_success() {
            return Err(LeaseError::TxFailed {
                meaning: meaning(&validated.result).into(),
                hash,
                result: validated.result,
            });
        }
        let lease = validated.meta["nftoken_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| not("its metadata names no nftoken_id".into()))?;
        let host = token_issuer(&lease).ok_or_else(|| not(format!("bad token id {lease}")))?;
        progress(&format!(
            "purchase {hash} of lease {lease} from {host} validated in ledger {}; waiting for the answer",
            validated.ledger_index
        ));
        let (price_drops, moment_secs) = self.token_terms(&lease).await.unwrap_or((0, 0));
        self.await_details(
            &host,
            &hash,
            &lease,
            (price_drops, moment_secs),
            validated.ledger_index,
            wait,
            progress,
        )
        .await
    }

    /// Price and moment of a token the account holds, from its URI.
    async fn token_terms(&self, lease: &str) -> Option<(u64, u32)> {
        let held = self.held_tokens().await.ok()?;
        held.into_iter()
            .find(|(id, _, _)| id.eq_ignore_ascii_case(lease))
            .map(|(_, _, uri)| (uri.price.get(), uri.moment_secs.get()))
    }

    /// Submits the pending purchase (if needed), waits for it and for the host's answer.
    pub async fn finish(
        &self,
        pending: PendingPurchase,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<Acquired, LeaseError> {
        let hash = pending.signed.hash.clone();
        let mut latest = pending.clone();
        let validated = self
            .settle(
                &pending.signed,
                |resigned| {
                    latest.signed = resigned.clone();
                    self.book.save_pending(&latest).map(|_| ())
                },
                |hash| self.book.remove_pending(hash),
            )
            .await?;
        if !validated.is_success() {
            let result = validated.result;
            return Err(match result.as_str() {
                "tecOBJECT_NOT_FOUND" | "tecNO_ENTRY" | "tecNO_PERMISSION" => {
                    LeaseError::OfferGone {
                        lease: pending.lease,
                        hash,
                        result,
                    }
                }
                "tecINSUFFICIENT_FUNDS" | "tecINSUFFICIENT_RESERVE" | "tecUNFUNDED_PAYMENT" => {
                    match self.check_funds(pending.price_drops, 1).await {
                        Err(e @ LeaseError::InsufficientBalance { .. }) => e,
                        _ => LeaseError::TxFailed {
                            meaning: meaning(&result).into(),
                            hash,
                            result,
                        },
                    }
                }
                _ => LeaseError::TxFailed {
                    meaning: meaning(&result).into(),
                    hash,
                    result,
                },
            });
        }
        progress(&format!(
            "purchase {hash} validated in ledger {}; waiting for the host to start the instance",
            validated.ledger_index
        ));
        let mut acquired = self
            .await_details(
                &pending.host,
                &hash,
                &pending.lease,
                (pending.price_drops, pending.moment_secs),
                validated.ledger_index,
                wait,
                progress,
            )
            .await?;
        if pending.moments > 1 {
            let extension = self
                .extend_record(&acquired.record, pending.moments - 1, wait, progress)
                .await?;
            acquired.record.expires_at = extension.expires_at;
            acquired.extension = Some(extension);
        }
        Ok(acquired)
    }

    /// Waits for the host's answer to the purchase `hash`, opens it and records the lease.
    #[allow(clippy::too_many_arguments)]
    async fn await_details(
        &self,
        host: &str,
        hash: &str,
        lease: &str,
        (price_drops, moment_secs): (u64, u32),
        from_ledger: u32,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<Acquired, LeaseError> {
        let hint = format!(
            "the purchase is recorded: `berth acquire --resume {hash}` waits again (and the host refunds what it cannot serve)"
        );
        let (message, amount) = self
            .wait_answer(host, hash, "purchase", from_ledger, wait, &hint, progress)
            .await?;
        match message {
            Message::AcquireOk(ok) => {
                let details: InstanceDetails =
                    ok.sealed
                        .open(&self.message)
                        .map_err(|e| LeaseError::Unreadable {
                            request: hash.to_owned(),
                            problem: e.to_string(),
                        })?;
                let got = details.lease.to_string();
                if !got.eq_ignore_ascii_case(lease) {
                    return Err(LeaseError::WrongLease {
                        request: hash.to_owned(),
                        want: lease.to_owned(),
                        got,
                    });
                }
                let mut record = record_of(host, hash, &details, price_drops, moment_secs);
                // A resume after the lease moved on (extended, ended) keeps what is known.
                if let Some(known) = self.book.lease(&record.lease)? {
                    record.expires_at = record.expires_at.max(known.expires_at);
                    record.ended = known.ended;
                    if record.price_drops == 0 {
                        (record.price_drops, record.moment_secs) =
                            (known.price_drops, known.moment_secs);
                    }
                }
                self.book.save_lease(&record)?;
                self.book.remove_pending(hash)?;
                Ok(Acquired {
                    purchase: hash.to_owned(),
                    record,
                    extension: None,
                })
            }
            Message::AcquireErr(f) | Message::Refund(f) => {
                self.book.remove_pending(hash)?;
                Err(refused(host, "purchase", &f, amount))
            }
            other => Err(LeaseError::Build(format!(
                "unexpected answer {} to purchase {hash}",
                other.kind().as_str()
            ))),
        }
    }

    /// Polls the account's validated history from `from_ledger` for the answer from `host`
    /// naming `request`.
    #[allow(clippy::too_many_arguments)]
    async fn wait_answer(
        &self,
        host: &str,
        request: &str,
        what: &'static str,
        from_ledger: u32,
        wait: Duration,
        hint: &str,
        progress: Progress<'_>,
    ) -> Result<(Message, u64), LeaseError> {
        let started = Instant::now();
        let mut noted = Instant::now();
        let mut cursor = from_ledger;
        loop {
            let validated = self.client.validated_ledger_index().await?;
            if validated >= cursor {
                let history = account_history(&self.client, &self.address, cursor).await?;
                for tx in &history.transactions {
                    if let Some(MarketEvent::Answer {
                        from,
                        request: answered,
                        message,
                        amount_drops,
                        ..
                    }) = decode(tx, &self.address)
                    {
                        if from == host && answered.to_string().eq_ignore_ascii_case(request) {
                            tracing::info!(request, answer = %tx.hash, kind = message.kind().as_str(), amount_drops, "answer found");
                            return Ok((message, amount_drops));
                        }
                    }
                }
                tracing::debug!(
                    request,
                    from = cursor,
                    through = history.validated_ledger,
                    "no answer yet"
                );
                cursor = history.validated_ledger.saturating_add(1);
            }
            if started.elapsed() >= wait {
                return Err(LeaseError::NoAnswer {
                    host: host.to_owned(),
                    what,
                    request: request.to_owned(),
                    waited_secs: started.elapsed().as_secs(),
                    hint: hint.to_owned(),
                });
            }
            if noted.elapsed() >= PROGRESS_EVERY {
                noted = Instant::now();
                progress(&format!(
                    "  still waiting for {host}'s answer to {what} {}… {} s (ledger {validated})",
                    short(request),
                    started.elapsed().as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The lease the argument names: a lease id or a unique part of it, from the local
    /// book; a full id not in the book is looked up on the ledger.
    pub async fn find(&self, arg: &str) -> Result<LeaseRecord, LeaseError> {
        match self.book.find(arg) {
            Ok(record) => Ok(record),
            Err(BookError::NoMatch { .. }) if arg.trim().len() == 64 => {
                self.leases(true).await?;
                Ok(self.book.find(arg)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Pays for `moments` more moments of a lease and waits for the host's answer.
    pub async fn extend(
        &self,
        arg: &str,
        moments: u32,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<Extended, LeaseError> {
        let record = live(self.find(arg).await?)?;
        self.extend_record(&record, moments, wait, progress).await
    }

    async fn extend_record(
        &self,
        record: &LeaseRecord,
        moments: u32,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<Extended, LeaseError> {
        let moments = moments.max(1);
        let amount = u64::from(moments)
            .checked_mul(record.price_drops)
            .filter(|a| *a > 0)
            .ok_or(LeaseError::Overflow {
                moments,
                price: record.price_drops,
            })?;
        self.check_funds(amount, 0).await?;
        let lease: NfTokenId = record
            .lease
            .parse()
            .map_err(|e| LeaseError::Build(format!("lease id: {e}")))?;
        let (validated, answer, returned) = self
            .request(
                record,
                amount,
                &Message::Extend(Extend { lease }),
                "extension",
                &format!("{} for {moments} moment(s)", Xrp(amount)),
                wait,
                progress,
            )
            .await?;
        match answer {
            Message::ExtendOk(ok) => {
                let mut updated = record.clone();
                updated.expires_at = ok.expires_at;
                self.book.save_lease(&updated)?;
                Ok(Extended {
                    request: validated.hash,
                    lease: record.lease.clone(),
                    moments: ok.moments.get(),
                    expires_at: ok.expires_at,
                    returned_drops: returned,
                })
            }
            Message::ExtendErr(f) | Message::Refund(f) => {
                Err(refused(&record.host, "extension", &f, returned))
            }
            other => Err(LeaseError::Build(format!(
                "unexpected answer {} to extension {}",
                other.kind().as_str(),
                validated.hash
            ))),
        }
    }

    /// Asks the host to end a lease now and waits for its answer.
    pub async fn terminate(
        &self,
        arg: &str,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<String, LeaseError> {
        let record = self.find(arg).await?;
        if record.ended == Some(Ended::Terminated) {
            return Err(LeaseError::Terminated {
                lease: record.lease,
            });
        }
        self.check_funds(1, 0).await?;
        let lease: NfTokenId = record
            .lease
            .parse()
            .map_err(|e| LeaseError::Build(format!("lease id: {e}")))?;
        let (validated, answer, returned) = self
            .request(
                &record,
                1,
                &Message::Terminate(Terminate { lease }),
                "termination",
                "1 drop",
                wait,
                progress,
            )
            .await?;
        match answer {
            Message::TerminateOk(_) => {
                let mut ended = record;
                ended.ended = Some(Ended::Terminated);
                self.book.save_lease(&ended)?;
                Ok(validated.hash)
            }
            Message::TerminateErr(f) | Message::Refund(f) => {
                let host = record.host.clone();
                if f.code == ReasonCode::LeaseExpired || f.code == ReasonCode::UnknownLease {
                    let mut ended = record;
                    ended.ended = Some(Ended::Expired);
                    self.book.save_lease(&ended)?;
                }
                Err(refused(&host, "termination", &f, returned))
            }
            other => Err(LeaseError::Build(format!(
                "unexpected answer {} to termination {}",
                other.kind().as_str(),
                validated.hash
            ))),
        }
    }

    /// Sends a request about `record` to its host (a payment of `amount` carrying `message`)
    /// and waits for the answer: (the request, the answer, what the answer paid back). The
    /// signed payment is recorded before it is submitted; a request of the same kind about
    /// the lease left in flight by an interrupted run is finished instead of paying again.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        record: &LeaseRecord,
        amount: u64,
        message: &Message,
        what: &'static str,
        paying: &str,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<(berth_mb_xrpl::Validated, Message, u64), LeaseError> {
        if let Some(earlier) = self.book.requests_for(&record.lease)?.into_iter().next() {
            if earlier.what != what {
                return Err(LeaseError::InFlight {
                    lease: record.lease.clone(),
                    what: earlier.what,
                    hash: earlier.signed.hash,
                });
            }
            progress(&format!(
                "an earlier {what} {} of lease {} was interrupted: finishing it instead of paying again (run the command again for more)",
                earlier.signed.hash,
                crate::book::short_lease(&record.lease)
            ));
            return self.finish_request(earlier, wait, progress).await;
        }
        let signed = self
            .submitter
            .prepare(json!({
                "TransactionType": "Payment",
                "Account": self.address,
                "Destination": record.host,
                "Amount": amount.to_string(),
                "Memos": memos_json(message)?,
            }))
            .await?;
        let pending = PendingRequest {
            lease: record.lease.clone(),
            host: record.host.clone(),
            what: what.to_owned(),
            amount_drops: amount,
            signed,
        };
        self.book.save_request(&pending)?;
        tracing::info!(tx = %pending.signed.hash, host = %record.host, amount, what, "request recorded before submitting");
        progress(&format!(
            "{what} {} of lease {} ({paying}) recorded; submitting",
            pending.signed.hash,
            crate::book::short_lease(&record.lease),
        ));
        self.finish_request(pending, wait, progress).await
    }

    /// Brings a transaction recorded in the book to a validated ledger: nothing to submit
    /// when it is validated already, else it is submitted as recorded, `record` getting each
    /// re-signed version (raised fee) before it is submitted. `forget` drops the book's
    /// record once the transaction provably did nothing: never validated, or a `tec` result
    /// (returned as the validated outcome for the caller to explain).
    async fn settle(
        &self,
        signed: &SignedTx,
        record: impl FnMut(&SignedTx) -> Result<(), BookError>,
        forget: impl Fn(&str) -> Result<(), BookError>,
    ) -> Result<berth_mb_xrpl::Validated, LeaseError> {
        let validated = match self.submitter.status_of(signed).await? {
            TxStatus::Validated(v) => v,
            _ => match self.submitter.submit_and_wait_with(signed, record).await {
                Ok(v) => v,
                Err(e @ (SubmitError::Expired { .. } | SubmitError::SequenceTaken { .. })) => {
                    forget(&signed.hash)?;
                    return Err(LeaseError::NeverValidated {
                        hash: signed.hash.clone(),
                        detail: e.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            },
        };
        if !validated.is_success() {
            forget(&signed.hash)?;
        }
        Ok(validated)
    }

    /// Submits a recorded request (unless it is validated already) and waits for its answer.
    async fn finish_request(
        &self,
        pending: PendingRequest,
        wait: Duration,
        progress: Progress<'_>,
    ) -> Result<(berth_mb_xrpl::Validated, Message, u64), LeaseError> {
        let hash = pending.signed.hash.clone();
        let mut latest = pending.clone();
        let validated = self
            .settle(
                &pending.signed,
                |resigned| {
                    latest.signed = resigned.clone();
                    self.book.save_request(&latest).map(|_| ())
                },
                |hash| self.book.remove_request(hash),
            )
            .await?;
        if !validated.is_success() {
            return Err(LeaseError::TxFailed {
                meaning: meaning(&validated.result).into(),
                hash: validated.hash,
                result: validated.result,
            });
        }
        let what = if pending.what == "termination" {
            "termination"
        } else {
            "extension"
        };
        progress(&format!(
            "{what} {} validated in ledger {}; waiting for the host",
            validated.hash, validated.ledger_index
        ));
        let command = if what == "termination" {
            "terminate"
        } else {
            "extend"
        };
        let hint = format!(
            "the {what} is on the ledger and the host answers it (or refunds it) when its agent runs: `berth {command} {}` waits again without paying twice",
            crate::book::short_lease(&pending.lease)
        );
        let (answer, returned) = self
            .wait_answer(
                &pending.host,
                &validated.hash,
                what,
                validated.ledger_index,
                wait,
                &hint,
                progress,
            )
            .await?;
        self.book.remove_request(&hash)?;
        Ok((validated, answer, returned))
    }

    /// Lease tokens the account holds: (id, issuer, URI).
    async fn held_tokens(&self) -> Result<Vec<(String, String, LeaseUri)>, LeaseError> {
        let mut out = Vec::new();
        let mut marker: Option<Value> = None;
        loop {
            let mut params =
                json!({"account": self.address, "limit": 400, "ledger_index": "validated"});
            if let Some(m) = marker.take() {
                params["marker"] = m;
            }
            let page = match self.client.request("account_nfts", params).await {
                Ok(p) => p,
                Err(e) if e.rpc_error() == Some("actNotFound") => return Ok(out),
                Err(e) => return Err(e.into()),
            };
            for nft in page["account_nfts"].as_array().into_iter().flatten() {
                let (Some(id), Some(issuer), Some(uri)) = (
                    nft["NFTokenID"].as_str(),
                    nft["Issuer"].as_str(),
                    nft["URI"].as_str(),
                ) else {
                    continue;
                };
                if let Ok(lease) = LeaseUri::from_hex(uri) {
                    out.push((id.to_uppercase(), issuer.to_owned(), lease));
                }
            }
            match page.get("marker") {
                Some(m) if !m.is_null() => marker = Some(m.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The account's leases, from the ledger: the lease tokens it holds, with instance
    /// details from the host's answers in its history (records missing from the local book
    /// are rebuilt and saved), and, with `all`, the leases of the book that ended.
    pub async fn leases(&self, all: bool) -> Result<Vec<LeaseView>, LeaseError> {
        let held = self.held_tokens().await?;
        let now = now_unix();
        let history = account_history(&self.client, &self.address, 1).await?;
        // Instance details and extensions, from the hosts' answers.
        let mut details: std::collections::BTreeMap<String, LeaseRecord> = Default::default();
        let mut extended: std::collections::BTreeMap<String, u64> = Default::default();
        for tx in &history.transactions {
            let Some(MarketEvent::Answer {
                from, to, message, ..
            }) = decode(tx, &self.address)
            else {
                continue;
            };
            if to != self.address {
                continue;
            }
            match message {
                Message::AcquireOk(ok) => {
                    if let Ok(d) = ok.sealed.open(&self.message) {
                        if token_issuer(&d.lease.to_string()).as_deref() == Some(from.as_str()) {
                            let record = record_of(&from, &ok.request.to_string(), &d, 0, 0);
                            details.insert(record.lease.clone(), record);
                        }
                    }
                }
                Message::ExtendOk(ok) => {
                    let at = extended.entry(ok.lease.to_string()).or_default();
                    *at = (*at).max(ok.expires_at);
                }
                _ => {}
            }
        }
        let mut views = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (token, issuer, uri) in &held {
            seen.insert(token.clone());
            let mut record = self.book.lease(token)?;
            if record.is_none() {
                if let Some(mut rebuilt) = details.get(token).cloned() {
                    rebuilt.price_drops = uri.price.get();
                    rebuilt.moment_secs = uri.moment_secs.get();
                    self.book.save_lease(&rebuilt)?;
                    record = Some(rebuilt);
                }
            }
            if let (Some(r), Some(at)) = (record.as_mut(), extended.get(token)) {
                if *at > r.expires_at {
                    r.expires_at = *at;
                    self.book.save_lease(r)?;
                }
            }
            let state = match &record {
                Some(r) if r.ended == Some(Ended::Terminated) => "terminated",
                Some(r) if r.expires_at <= now => "expired",
                _ => "active",
            };
            views.push(LeaseView {
                lease: token.clone(),
                host: issuer.clone(),
                slot: Some(uri.slot),
                state,
                held: true,
                instance: record.as_ref().map(LeaseRecord::instance_url),
                contract_id: record.as_ref().map(|r| r.contract_id.clone()),
                expires_at: record.as_ref().map(|r| r.expires_at),
                price_drops: Some(uri.price.get()),
                moment_secs: Some(uri.moment_secs.get()),
            });
        }
        for mut r in self.book.leases()? {
            if seen.contains(&r.lease) {
                continue;
            }
            // The token left the account: the lease ended one way or another.
            if r.ended.is_none() && r.expires_at <= now {
                r.ended = Some(Ended::Expired);
                self.book.save_lease(&r)?;
            }
            if !all {
                continue;
            }
            views.push(LeaseView {
                lease: r.lease.clone(),
                host: r.host.clone(),
                slot: None,
                state: match r.ended {
                    Some(Ended::Terminated) => "terminated",
                    Some(Ended::Expired) => "expired",
                    None => "gone",
                },
                held: false,
                instance: Some(r.instance_url()),
                contract_id: Some(r.contract_id.clone()),
                expires_at: Some(r.expires_at),
                price_drops: Some(r.price_drops),
                moment_secs: Some(r.moment_secs),
            });
        }
        views.sort_by(|a, b| (a.expires_at, &a.lease).cmp(&(b.expires_at, &b.lease)));
        Ok(views)
    }
}

/// A record that may still be used: not terminated, not past its end.
pub fn live(record: LeaseRecord) -> Result<LeaseRecord, LeaseError> {
    if record.ended == Some(Ended::Terminated) {
        return Err(LeaseError::Terminated {
            lease: record.lease,
        });
    }
    let now = now_unix();
    if record.expires_at <= now {
        return Err(LeaseError::Expired {
            ago: now - record.expires_at,
            at: record.expires_at,
            lease: record.lease,
        });
    }
    Ok(record)
}

fn record_of(
    host: &str,
    purchase: &str,
    d: &InstanceDetails,
    price_drops: u64,
    moment_secs: u32,
) -> LeaseRecord {
    LeaseRecord {
        lease: d.lease.to_string(),
        host: host.to_owned(),
        purchase: purchase.to_uppercase(),
        name: d.name.as_str().to_owned(),
        instance_host: d.host.as_str().to_owned(),
        user_port: d.user_port.get(),
        peer_port: d.peer_port.get(),
        peer_host: None,
        node_key: d.node_key.to_string(),
        contract_id: d.contract_id.to_string(),
        expires_at: d.expires_at,
        price_drops,
        moment_secs,
        ended: None,
    }
}

fn refused(host: &str, what: &'static str, f: &Failure, returned: u64) -> LeaseError {
    let code = serde_json::to_value(f.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", f.code));
    LeaseError::Refused {
        host: host.to_owned(),
        what,
        request: f.request.to_string(),
        code,
        message: f.message.as_str().to_owned(),
        refunded: Xrp(returned),
    }
}

fn memos_json(message: &Message) -> Result<Value, LeaseError> {
    let memo = message
        .to_memo()
        .map_err(|e| LeaseError::Build(e.to_string()))?
        .to_hex();
    Ok(json!([{"Memo": {
        "MemoType": memo.memo_type,
        "MemoFormat": memo.memo_format,
        "MemoData": memo.memo_data,
    }}]))
}

/// The first 8 characters of a hash or id, for progress lines.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn amounts_show_as_xrp_and_contract_ids_are_v4() {
        assert_eq!(Xrp(1_000_000).to_string(), "1.000000 XRP");
        assert_eq!(Xrp(12).to_string(), "0.000012 XRP");
        let id = random_contract_id().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(id.parse::<ContractId>().is_ok());
    }

    #[test]
    fn a_refusal_names_the_host_code_reason_and_refund() {
        let failure: Failure = serde_json::from_value(json!({
            "request": "AB".repeat(32), "code": "no_capacity",
            "message": "no free slot, the price is refunded",
        }))
        .unwrap();
        let text = refused("rHost", "purchase", &failure, 1_000_000).to_string();
        assert_eq!(
            text,
            format!(
                "the host rHost refused purchase {}: no_capacity: no free slot, the price is refunded; 1.000000 XRP paid back",
                "AB".repeat(32)
            )
        );
    }

    #[test]
    fn a_token_names_its_issuer() {
        let issuer = [7u8; 20];
        let id = berth_xrpl_core::index::nftoken_id(9, 0, &issuer, 1, 5);
        let address = berth_xrpl_core::address::encode_account_id(&issuer);
        assert_eq!(token_issuer(&hex::encode_upper(id)), Some(address));
        assert_eq!(token_issuer("nope"), None);
    }
}
