//! The transaction engine: checks and applies one transaction to a ledger state,
//! producing rippled's result code and metadata.
//!
//! Stages follow rippled's transactors: preflight (the transaction alone), the
//! common checks against the ledger (account, sequence, expiry, fee, key), then the
//! type's own checks and changes. A `tec` result keeps only the fee and sequence;
//! `tef`, `tel`, `tem` and `ter` results change nothing.

use std::collections::{BTreeMap, BTreeSet};

use berth_xrpl_core::fields::{Field, FieldType, FIELDS};
use berth_xrpl_core::index::{self, nftoken_parts};
use berth_xrpl_core::keys::{account_id_of, public_key_type};
use berth_xrpl_core::tx::{MAX_MULTI_SIGNERS, MIN_MULTI_SIGNERS};
use berth_xrpl_core::{Amount, StObject, Ter, Value};
use serde_json::{Map, Value as Json};

use crate::state::{balance, get_u32, set_balance, Key, State};

/// Fee and reserve settings, in drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    pub base: i64,
    pub reserve_base: i64,
    pub reserve_inc: i64,
}

impl Default for Fees {
    /// rippled's defaults: 10 drops, 10 XRP, 2 XRP.
    fn default() -> Self {
        Fees {
            base: 10,
            reserve_base: 10_000_000,
            reserve_inc: 2_000_000,
        }
    }
}

impl Fees {
    pub fn reserve(&self, owner_count: u32) -> i64 {
        self.reserve_base + self.reserve_inc * i64::from(owner_count)
    }
}

/// What the engine knows of the ledger a transaction goes into.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    /// Sequence of the open ledger.
    pub seq: u32,
    /// Close time of the parent ledger (seconds since 2000-01-01).
    pub parent_close_time: u32,
    pub fees: Fees,
}

// Ledger flags.
const LSF_REQUIRE_DEST_TAG: u32 = 0x0002_0000;
const LSF_REQUIRE_AUTH: u32 = 0x0004_0000;
const LSF_DISALLOW_XRP: u32 = 0x0008_0000;
const LSF_DISABLE_MASTER: u32 = 0x0010_0000;
const LSF_DEFAULT_RIPPLE: u32 = 0x0080_0000;
const LSF_DEPOSIT_AUTH: u32 = 0x0100_0000;
const LSF_DISALLOW_INCOMING_NFT_OFFER: u32 = 0x0400_0000;
const LSF_SELL_NFTOKEN: u32 = 0x0000_0001;
/// A SignerList that costs one owner count (the MultiSignReserve amendment's lists).
const LSF_ONE_OWNER_COUNT: u32 = 0x0001_0000;

// Transaction flags.
const TF_FULLY_CANONICAL_SIG: u32 = 0x8000_0000;
const TF_SELL_NFTOKEN: u32 = 0x0000_0001;
const TF_BURNABLE: u16 = 0x0001;
const TF_TRANSFERABLE: u16 = 0x0008;

const NFT_PAGE_SIZE: usize = 32;
const ENTRY_ACCOUNT_ROOT: u16 = 0x61;
const ENTRY_NFT_OFFER: u16 = 0x37;
const ENTRY_NFT_PAGE: u16 = 0x50;
const ENTRY_SIGNER_LIST: u16 = 0x53;

/// The transaction types localnet applies.
pub const SUPPORTED_TYPES: &[&str] = &[
    "Payment",
    "AccountSet",
    "SetRegularKey",
    "SignerListSet",
    "NFTokenMint",
    "NFTokenBurn",
    "NFTokenCreateOffer",
    "NFTokenCancelOffer",
    "NFTokenAcceptOffer",
];

/// A transaction that was included in the ledger (`tes` or `tec`).
#[derive(Debug, Clone)]
pub struct Applied {
    pub ter: Ter,
    pub changes: BTreeMap<Key, Option<StObject>>,
    pub meta: StObject,
    /// Fields rippled adds to the metadata it answers with (nftoken_id, offer_id, …).
    pub extra: Map<String, Json>,
    pub fee: i64,
}

/// The outcome of applying a transaction.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Not included: nothing changed.
    Rejected(Ter),
    Included(Box<Applied>),
}

/// rippled's limit on the serialized `Memos` array of one transaction.
pub const MEMOS_LIMIT: usize = 1024;

/// rippled's local checks of memos (`isMemoOkay`): the reason, as `submit` gives it after
/// "fails local checks: ", or `None` when the memos are fine.
pub fn memo_problem(tx: &StObject) -> Option<&'static str> {
    let memos = tx.get("Memos")?;
    let mut only = StObject::new();
    only.set("Memos", memos.clone());
    // The field's own header and the array's end marker are not the array's data.
    if only.to_bytes().len().saturating_sub(2) > MEMOS_LIMIT {
        return Some("The memo exceeds the maximum allowed size.");
    }
    let berth_xrpl_core::codec::Value::Array(items) = memos else {
        return Some("The memo array is malformed.");
    };
    for (field, memo) in items {
        if field.name != "Memo" {
            return Some("A memo array may contain only Memo objects.");
        }
        for (inner, value) in memo.fields() {
            let url_safe = |bytes: &[u8]| {
                bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(b))
            };
            match (inner.name, value) {
                ("MemoData", _) => {}
                ("MemoType" | "MemoFormat", berth_xrpl_core::codec::Value::Blob(bytes)) => {
                    if !url_safe(bytes) {
                        return Some("The MemoType and MemoFormat fields may only contain characters that are allowed in URLs under RFC 3986.");
                    }
                }
                _ => {
                    return Some("A memo may contain only MemoType, MemoData or MemoFormat fields.")
                }
            }
        }
    }
    None
}

/// Checks a decoded transaction's shape before it reaches the engine; the error is
/// the reason rippled's `submit` would give as `invalidTransaction`.
pub fn check_format(tx: &StObject) -> Result<&'static str, String> {
    let ty = tx
        .transaction_type()
        .ok_or_else(|| "missing or unknown TransactionType".to_string())?;
    for f in ["Account", "Fee", "Sequence", "SigningPubKey"] {
        if !tx.contains(f) {
            return Err(format!("Field '{f}' is required but missing."));
        }
    }
    let required: &[&str] = match ty {
        "Payment" => &["Amount", "Destination"],
        "NFTokenMint" => &["NFTokenTaxon"],
        "NFTokenBurn" => &["NFTokenID"],
        "NFTokenCreateOffer" => &["NFTokenID", "Amount"],
        "NFTokenCancelOffer" => &["NFTokenOffers"],
        "SignerListSet" => &["SignerQuorum"],
        _ => &[],
    };
    for f in required {
        if !tx.contains(f) {
            return Err(format!("Field '{f}' is required but missing."));
        }
    }
    // Inner objects have templates too (rippled's InnerObjectFormats).
    for (array, inner, fields) in [
        (
            "Signers",
            "Signer",
            &["Account", "SigningPubKey", "TxnSignature"][..],
        ),
        (
            "SignerEntries",
            "SignerEntry",
            &["Account", "SignerWeight"][..],
        ),
    ] {
        if let Some(Value::Array(items)) = tx.get(array) {
            for (f, o) in items.iter().filter(|(f, _)| f.name == inner) {
                if let Some(missing) = fields.iter().find(|n| !o.contains(n)) {
                    return Err(format!(
                        "{}: Field '{missing}' is required but missing.",
                        f.name
                    ));
                }
            }
        }
    }
    let multi_signed = tx.blob("SigningPubKey").is_some_and(|k| k.is_empty());
    if !multi_signed && !tx.contains("TxnSignature") {
        return Err("Field 'TxnSignature' is required but missing.".into());
    }
    Ok(ty)
}

/// One entry of a signer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignerEntry {
    pub account: [u8; 20],
    pub weight: u16,
    /// `WalletLocator`: a tag the ExpandedSignerList amendment lets an entry carry.
    pub tag: Option<Key>,
}

/// The `SignerEntries` of a transaction or a SignerList, sorted by account (rippled's
/// `SignerEntries::deserialize`): anything but complete `SignerEntry` objects is
/// `temMALFORMED`.
pub fn signer_entries(obj: &StObject) -> Result<Vec<SignerEntry>, Ter> {
    let Some(Value::Array(items)) = obj.get("SignerEntries") else {
        return Err(Ter::temMALFORMED);
    };
    let mut out = items
        .iter()
        .map(|(f, e)| {
            if f.name != "SignerEntry" {
                return Err(Ter::temMALFORMED);
            }
            Ok(SignerEntry {
                account: e.account("Account").ok_or(Ter::temMALFORMED)?,
                weight: e.u16("SignerWeight").ok_or(Ter::temMALFORMED)?,
                tag: e.hash256("WalletLocator"),
            })
        })
        .collect::<Result<Vec<_>, Ter>>()?;
    out.sort_by_key(|e| e.account);
    Ok(out)
}

/// rippled's `SetSignerList::validateQuorumAndSignerEntries` (with ExpandedSignerList):
/// 1 to 32 entries, no account twice, none the owner, every weight positive, and the
/// weights together reach the quorum. `entries` are sorted by account.
pub fn check_signer_list(
    quorum: u32,
    entries: &[SignerEntry],
    owner: &[u8; 20],
) -> Result<(), Ter> {
    if !(MIN_MULTI_SIGNERS..=MAX_MULTI_SIGNERS).contains(&entries.len()) {
        return Err(Ter::temMALFORMED);
    }
    if entries.windows(2).any(|w| w[0].account == w[1].account) {
        return Err(Ter::temBAD_SIGNER);
    }
    let mut total: u64 = 0;
    for e in entries {
        if e.weight == 0 {
            return Err(Ter::temBAD_WEIGHT);
        }
        total += u64::from(e.weight);
        if e.account == *owner {
            return Err(Ter::temBAD_SIGNER);
        }
    }
    if quorum == 0 || total < u64::from(quorum) {
        return Err(Ter::temBAD_QUORUM);
    }
    Ok(())
}

/// rippled's `Transactor::checkMultiSign`: the `Signers` of a transaction by `account`
/// against the account's signer list. Signers and list are both sorted by account, so
/// one walk matches them. Each signer must be on the list and sign with its own master
/// key (when that account exists, not disabled), its regular key, or, for an account
/// not in the ledger (a phantom), the key its AccountID derives from; their weights
/// must reach the quorum. The signatures themselves are checked before (see
/// `berth_xrpl_core::tx::verify_signatures`).
pub fn check_multi_sign(
    state: &State,
    account: &[u8; 20],
    signers: &[(&'static Field, StObject)],
) -> Result<(), Ter> {
    let list = state
        .get(&index::signer_list(account))
        .ok_or(Ter::tefNOT_MULTI_SIGNING)?;
    let entries = signer_entries(list)?;
    let mut i = 0;
    let mut weight: u64 = 0;
    for (_, signer) in signers {
        let id = signer.account("Account").ok_or(Ter::tefBAD_SIGNATURE)?;
        while entries.get(i).is_some_and(|e| e.account < id) {
            i += 1;
        }
        let entry = entries
            .get(i)
            .filter(|e| e.account == id)
            .ok_or(Ter::tefBAD_SIGNATURE)?;
        let key = signer
            .blob("SigningPubKey")
            .filter(|k| public_key_type(k).is_some())
            .ok_or(Ter::tefBAD_SIGNATURE)?;
        let root = state.account(&id);
        if account_id_of(key) == id {
            // The master key, or a phantom account's key: a phantom always passes.
            if root.is_some_and(|r| get_u32(r, "Flags") & LSF_DISABLE_MASTER != 0) {
                return Err(Ter::tefMASTER_DISABLED);
            }
        } else {
            let regular = root.and_then(|r| r.account("RegularKey"));
            if regular != Some(account_id_of(key)) {
                return Err(Ter::tefBAD_SIGNATURE);
            }
        }
        weight += u64::from(entry.weight);
    }
    if weight < u64::from(get_u32(list, "SignerQuorum")) {
        return Err(Ter::tefBAD_QUORUM);
    }
    Ok(())
}

/// The signers of a multi-signed transaction (none for a single-signed one).
fn tx_signers(tx: &StObject) -> &[(&'static Field, StObject)] {
    match tx.get("Signers") {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

/// rippled's `Transactor::checkSingleSign` (with fixMasterKeyAsRegularKey).
fn check_single_sign(acct: &StObject, account: &[u8; 20], key: &[u8]) -> Result<(), Ter> {
    let signer = account_id_of(key);
    if acct.account("RegularKey") == Some(signer) {
        return Ok(());
    }
    if signer != *account {
        return Err(Ter::tefBAD_AUTH);
    }
    if get_u32(acct, "Flags") & LSF_DISABLE_MASTER != 0 {
        return Err(Ter::tefMASTER_DISABLED);
    }
    Ok(())
}

/// A copy-on-write view of the state that one transaction changes.
#[derive(Clone)]
struct Sandbox<'a> {
    base: &'a State,
    changes: BTreeMap<Key, Option<StObject>>,
}

impl<'a> Sandbox<'a> {
    fn new(base: &'a State) -> Self {
        Sandbox {
            base,
            changes: BTreeMap::new(),
        }
    }

    fn get(&self, k: &Key) -> Option<StObject> {
        match self.changes.get(k) {
            Some(v) => v.clone(),
            None => self.base.get(k).cloned(),
        }
    }

    fn put(&mut self, k: Key, o: StObject) {
        self.changes.insert(k, Some(o));
    }

    fn erase(&mut self, k: Key) {
        self.changes.insert(k, None);
    }

    fn account(&self, id: &[u8; 20]) -> Option<StObject> {
        self.get(&index::account_root(id))
    }

    fn put_account(&mut self, id: &[u8; 20], acct: StObject) {
        self.put(index::account_root(id), acct);
    }

    fn adjust_owner_count(&mut self, id: &[u8; 20], delta: i64) {
        if let Some(mut a) = self.account(id) {
            let n = (i64::from(get_u32(&a, "OwnerCount")) + delta).max(0);
            a.set("OwnerCount", Value::UInt32(n as u32));
            self.put_account(id, a);
        }
    }

    fn add_balance(&mut self, id: &[u8; 20], delta: i64) {
        if let Some(mut a) = self.account(id) {
            let b = balance(&a) + delta;
            set_balance(&mut a, b);
            self.put_account(id, a);
        }
    }

    /// NFT pages of an owner, in key order.
    fn pages(&self, owner: &[u8; 20]) -> Vec<(Key, StObject)> {
        let lo = index::nft_page(owner, &[0; 12]);
        let hi = index::nft_page(owner, &[0xFF; 12]);
        let mut out: BTreeMap<Key, StObject> = self
            .base
            .range(lo, hi)
            .map(|(k, o)| (*k, o.clone()))
            .collect();
        for (k, v) in self.changes.range(lo..=hi) {
            match v {
                Some(o) => out.insert(*k, o.clone()),
                None => out.remove(k),
            };
        }
        out.into_iter().collect()
    }

    /// Offers for a token, as keys.
    fn token_offers(&self, token: &Key) -> Vec<Key> {
        let mut keys: BTreeSet<Key> = self
            .base
            .token_offers(token)
            .into_iter()
            .filter(|k| !matches!(self.changes.get(k), Some(None)))
            .collect();
        for (k, v) in &self.changes {
            if let Some(o) = v {
                if o.u16("LedgerEntryType") == Some(ENTRY_NFT_OFFER)
                    && o.hash256("NFTokenID").as_ref() == Some(token)
                {
                    keys.insert(*k);
                }
            }
        }
        keys.into_iter().collect()
    }
}

fn drops(obj: &StObject, name: &str) -> Option<i64> {
    match obj.amount(name)? {
        Amount::Drops(d) => Some(*d),
        Amount::Issued { .. } => None,
    }
}

fn tokens_of(page: &StObject) -> Vec<StObject> {
    match page.get("NFTokens") {
        Some(Value::Array(items)) => items.iter().map(|(_, o)| o.clone()).collect(),
        _ => Vec::new(),
    }
}

fn set_tokens(page: &mut StObject, tokens: Vec<StObject>) {
    #[allow(clippy::expect_used)]
    let f = berth_xrpl_core::fields::field("NFToken").expect("NFToken is a known field");
    page.set(
        "NFTokens",
        Value::Array(tokens.into_iter().map(|t| (f, t)).collect()),
    );
}

fn token_sort_key(t: &StObject) -> ([u8; 12], Key) {
    let id = t.hash256("NFTokenID").unwrap_or([0; 32]);
    (index::nft_low96(&id), id)
}

fn new_page() -> StObject {
    let mut p = StObject::new();
    p.set("LedgerEntryType", Value::UInt16(ENTRY_NFT_PAGE));
    p.set("Flags", Value::UInt32(0));
    p
}

/// Finds the page of `owner` that holds `token`.
fn find_token(
    sb: &Sandbox<'_>,
    owner: &[u8; 20],
    token: &Key,
) -> Option<(Key, StObject, StObject)> {
    let target = index::nft_page(owner, &index::nft_low96(token));
    for (k, page) in sb.pages(owner) {
        if k < target {
            continue;
        }
        let found = tokens_of(&page)
            .into_iter()
            .find(|t| t.hash256("NFTokenID").as_ref() == Some(token));
        return found.map(|t| (k, page, t));
    }
    None
}

fn set_link(sb: &mut Sandbox<'_>, key: Option<Key>, field: &str, to: Option<Key>) {
    let Some(k) = key else { return };
    let Some(mut p) = sb.get(&k) else { return };
    match to {
        Some(t) => p.set(field, Value::Hash256(t)),
        None => {
            p.remove(field);
        }
    }
    sb.put(k, p);
}

/// Puts a token into an owner's pages; returns how many pages were created.
fn insert_token(sb: &mut Sandbox<'_>, owner: &[u8; 20], token: StObject) -> Result<u32, Ter> {
    let id = token.hash256("NFTokenID").ok_or(Ter::temMALFORMED)?;
    let target = index::nft_page(owner, &index::nft_low96(&id));
    let max_key = index::nft_page(owner, &[0xFF; 12]);
    let pages = sb.pages(owner);
    let Some((key, page)) = pages.into_iter().find(|(k, _)| *k >= target) else {
        // No page at or above the token: the owner has no pages yet (the last page
        // always has the highest key).
        let mut p = new_page();
        set_tokens(&mut p, vec![token]);
        sb.put(max_key, p);
        return Ok(1);
    };
    let mut tokens = tokens_of(&page);
    tokens.push(token);
    tokens.sort_by_key(token_sort_key);
    if tokens.len() <= NFT_PAGE_SIZE {
        let mut page = page;
        set_tokens(&mut page, tokens);
        sb.put(key, page);
        return Ok(0);
    }
    // Split: the lower half goes to a new page keyed by its highest token.
    let mut split = tokens.len() / 2;
    while split > 0 && token_sort_key(&tokens[split - 1]).0 == token_sort_key(&tokens[split]).0 {
        split -= 1;
    }
    if split == 0 {
        split = tokens.len() / 2;
        while split < tokens.len()
            && token_sort_key(&tokens[split - 1]).0 == token_sort_key(&tokens[split]).0
        {
            split += 1;
        }
        if split >= tokens.len() || split > NFT_PAGE_SIZE {
            return Err(Ter::tecNO_SUITABLE_NFTOKEN_PAGE);
        }
    }
    let upper = tokens.split_off(split);
    let lower = tokens;
    let lower_key = index::nft_page(owner, &token_sort_key(&lower[lower.len() - 1]).0);
    let mut upper_page = page;
    let prev = upper_page.hash256("PreviousPageMin");
    let mut lower_page = new_page();
    set_tokens(&mut lower_page, lower);
    if let Some(p) = prev {
        lower_page.set("PreviousPageMin", Value::Hash256(p));
    }
    lower_page.set("NextPageMin", Value::Hash256(key));
    set_tokens(&mut upper_page, upper);
    upper_page.set("PreviousPageMin", Value::Hash256(lower_key));
    sb.put(key, upper_page);
    sb.put(lower_key, lower_page);
    set_link(sb, prev, "NextPageMin", Some(lower_key));
    Ok(1)
}

/// Takes a token out of an owner's pages; returns the token and how many pages were
/// removed.
fn remove_token(sb: &mut Sandbox<'_>, owner: &[u8; 20], id: &Key) -> Result<(StObject, u32), Ter> {
    let (key, mut page, token) = find_token(sb, owner, id).ok_or(Ter::tecNO_ENTRY)?;
    let rest: Vec<StObject> = tokens_of(&page)
        .into_iter()
        .filter(|t| t.hash256("NFTokenID").as_ref() != Some(id))
        .collect();
    if !rest.is_empty() {
        set_tokens(&mut page, rest);
        sb.put(key, page);
        return Ok((token, 0));
    }
    let prev = page.hash256("PreviousPageMin");
    let next = page.hash256("NextPageMin");
    let max_key = index::nft_page(owner, &[0xFF; 12]);
    if key == max_key {
        if let Some(pk) = prev {
            // The last page keeps the highest key: pull the previous page into it.
            if let Some(prev_page) = sb.get(&pk) {
                let before = prev_page.hash256("PreviousPageMin");
                let mut merged = new_page();
                set_tokens(&mut merged, tokens_of(&prev_page));
                if let Some(b) = before {
                    merged.set("PreviousPageMin", Value::Hash256(b));
                }
                sb.erase(pk);
                sb.put(key, merged);
                set_link(sb, before, "NextPageMin", Some(key));
                return Ok((token, 1));
            }
        }
        sb.erase(key);
        return Ok((token, 1));
    }
    sb.erase(key);
    set_link(sb, prev, "NextPageMin", next);
    set_link(sb, next, "PreviousPageMin", prev);
    Ok((token, 1))
}

fn hex_key(k: &Key) -> Json {
    Json::String(hex::encode_upper(k))
}

struct Ctx<'a, 'b> {
    sb: &'b mut Sandbox<'a>,
    env: &'b Env,
    tx: &'b StObject,
    account: [u8; 20],
    /// Balance before the fee was taken.
    prior_balance: i64,
    fee: i64,
    extra: &'b mut Map<String, Json>,
}

impl Ctx<'_, '_> {
    fn me(&self) -> Result<StObject, Ter> {
        self.sb.account(&self.account).ok_or(Ter::terNO_ACCOUNT)
    }
}

/// Checks and applies one transaction whose signature has been verified.
pub fn apply(base: &State, env: &Env, tx: &StObject, tx_hash: &Key, tx_index: u32) -> Outcome {
    match apply_inner(base, env, tx, tx_hash, tx_index) {
        Ok(a) => Outcome::Included(Box::new(a)),
        Err(t) => Outcome::Rejected(t),
    }
}

fn apply_inner(
    base: &State,
    env: &Env,
    tx: &StObject,
    tx_hash: &Key,
    tx_index: u32,
) -> Result<Applied, Ter> {
    let ty = tx.transaction_type().ok_or(Ter::temINVALID)?;
    preflight(ty, tx)?;
    let account = tx.account("Account").ok_or(Ter::temBAD_SRC_ACCOUNT)?;
    let fee = drops(tx, "Fee").ok_or(Ter::temBAD_FEE)?;

    // Common checks against the ledger (rippled's Transactor::preclaim).
    let acct = base.account(&account).ok_or(Ter::terNO_ACCOUNT)?;
    let seq = tx.u32("Sequence").ok_or(Ter::temMALFORMED)?;
    let acct_seq = get_u32(acct, "Sequence");
    if seq < acct_seq {
        return Err(Ter::tefPAST_SEQ);
    }
    if seq > acct_seq {
        return Err(Ter::terPRE_SEQ);
    }
    if tx.u32("LastLedgerSequence").is_some_and(|l| l < env.seq) {
        return Err(Ter::tefMAX_LEDGER);
    }
    // Each signature of a multi-signed transaction costs one more base fee.
    let signers = tx_signers(tx);
    if fee < env.fees.base * (1 + signers.len() as i64) {
        return Err(Ter::telINSUF_FEE_P);
    }
    let prior_balance = balance(acct);
    if fee > prior_balance {
        return Err(Ter::terINSUF_FEE_B);
    }
    match tx.blob("SigningPubKey") {
        _ if tx.contains("Signers") => check_multi_sign(base, &account, signers)?,
        Some(key) if !key.is_empty() => check_single_sign(acct, &account, key)?,
        _ => return Err(Ter::temBAD_SIGNATURE),
    }

    // Fee and sequence: kept whatever the transaction's own result.
    let mut paid = Sandbox::new(base);
    let mut a = acct.clone();
    set_balance(&mut a, prior_balance - fee);
    a.set("Sequence", Value::UInt32(acct_seq + 1));
    paid.put_account(&account, a);

    let mut sb = paid.clone();
    let mut extra = Map::new();
    let result = {
        let mut ctx = Ctx {
            sb: &mut sb,
            env,
            tx,
            account,
            prior_balance,
            fee,
            extra: &mut extra,
        };
        match ty {
            "Payment" => payment(&mut ctx),
            "AccountSet" => account_set(&mut ctx),
            "SetRegularKey" => set_regular_key(&mut ctx),
            "SignerListSet" => signer_list_set(&mut ctx),
            "NFTokenMint" => nft_mint(&mut ctx),
            "NFTokenBurn" => nft_burn(&mut ctx),
            "NFTokenCreateOffer" => nft_create_offer(&mut ctx),
            "NFTokenCancelOffer" => nft_cancel_offer(&mut ctx),
            "NFTokenAcceptOffer" => nft_accept_offer(&mut ctx),
            _ => Err(Ter::temDISABLED),
        }
    };
    let (ter, final_sb) = match result {
        Ok(()) => (Ter::tesSUCCESS, sb),
        Err(t) if t.is_tec() => {
            extra.clear();
            (t, paid)
        }
        Err(t) => return Err(t),
    };
    let mut changes = final_sb.changes;
    for (_, v) in changes.iter_mut() {
        if let Some(o) = v {
            o.set("PreviousTxnID", Value::Hash256(*tx_hash));
            o.set("PreviousTxnLgrSeq", Value::UInt32(env.seq));
        }
    }
    let meta = build_meta(base, &changes, ter, tx_index);
    Ok(Applied {
        ter,
        changes,
        meta,
        extra,
        fee,
    })
}

fn preflight(ty: &str, tx: &StObject) -> Result<(), Ter> {
    // localnet is a network with an id below 1025, like Mainnet: a NetworkID field would
    // let the transaction be replayed elsewhere, and rippled refuses it.
    if tx.contains("NetworkID") {
        return Err(Ter::telNETWORK_ID_MAKES_TX_NON_CANONICAL);
    }
    match drops(tx, "Fee") {
        Some(f) if f >= 0 => {}
        _ => return Err(Ter::temBAD_FEE),
    }
    if tx.account("Account") == Some([0; 20]) {
        return Err(Ter::temBAD_SRC_ACCOUNT);
    }
    if tx.contains("TicketSequence") {
        return Err(Ter::temDISABLED);
    }
    // An empty SigningPubKey is a multi-signed transaction's.
    if tx
        .blob("SigningPubKey")
        .is_none_or(|k| !k.is_empty() && public_key_type(k).is_none())
    {
        return Err(Ter::temBAD_SIGNATURE);
    }
    let flags = tx.u32("Flags").unwrap_or(0);
    let allowed: u32 = match ty {
        "Payment" => 0x0007_0000,
        "AccountSet" => 0x003F_0000,
        "NFTokenMint" => 0x0000_001B,
        "NFTokenCreateOffer" => TF_SELL_NFTOKEN,
        _ => 0,
    };
    if flags & !(allowed | TF_FULLY_CANONICAL_SIG) != 0 {
        return Err(Ter::temINVALID_FLAG);
    }
    let account = tx.account("Account");
    match ty {
        "Payment" => {
            match drops(tx, "Amount") {
                Some(a) if a > 0 => {}
                _ => return Err(Ter::temBAD_AMOUNT),
            }
            if flags & 0x0002_0000 != 0 {
                return Err(Ter::temBAD_SEND_XRP_PARTIAL);
            }
            if flags & 0x0004_0000 != 0 {
                return Err(Ter::temBAD_SEND_XRP_LIMIT);
            }
            if flags & 0x0001_0000 != 0 {
                return Err(Ter::temBAD_SEND_XRP_NO_DIRECT);
            }
            if tx.contains("SendMax") {
                return Err(Ter::temBAD_SEND_XRP_MAX);
            }
            if tx.contains("DeliverMin") {
                return Err(Ter::temBAD_AMOUNT);
            }
            if tx.account("Destination") == account {
                return Err(Ter::temREDUNDANT);
            }
        }
        "AccountSet" => {
            let set = tx.u32("SetFlag").unwrap_or(0);
            let clear = tx.u32("ClearFlag").unwrap_or(0);
            if set != 0 && set == clear {
                return Err(Ter::temINVALID_FLAG);
            }
            if flags & 0x0003_0000 == 0x0003_0000
                || flags & 0x000C_0000 == 0x000C_0000
                || flags & 0x0030_0000 == 0x0030_0000
            {
                return Err(Ter::temINVALID_FLAG);
            }
            if (flags & 0x0001_0000 != 0 && clear == 1) || (flags & 0x0002_0000 != 0 && set == 1) {
                return Err(Ter::temINVALID_FLAG);
            }
            if let Some(rate) = tx.u32("TransferRate") {
                if rate != 0 && !(1_000_000_000..=2_000_000_000).contains(&rate) {
                    return Err(Ter::temBAD_TRANSFER_RATE);
                }
            }
            if let Some(k) = tx.blob("MessageKey") {
                if !k.is_empty() && public_key_type(k).is_none() {
                    return Err(Ter::telBAD_PUBLIC_KEY);
                }
            }
            if tx.blob("Domain").is_some_and(|d| d.len() > 256) {
                return Err(Ter::telBAD_DOMAIN);
            }
            if set == 10 && !tx.contains("NFTokenMinter") {
                return Err(Ter::temMALFORMED);
            }
        }
        "SetRegularKey" if tx.account("RegularKey") == account => {
            return Err(Ter::temBAD_REGKEY);
        }
        "SignerListSet" => {
            // A quorum with entries sets the list; quorum 0 without entries deletes it.
            match (
                tx.u32("SignerQuorum").unwrap_or(0),
                tx.contains("SignerEntries"),
            ) {
                (0, false) => {}
                (quorum, true) if quorum != 0 => {
                    let owner = account.ok_or(Ter::temBAD_SRC_ACCOUNT)?;
                    check_signer_list(quorum, &signer_entries(tx)?, &owner)?;
                }
                _ => return Err(Ter::temMALFORMED),
            }
        }
        "NFTokenMint" => {
            if let Some(fee) = tx.u16("TransferFee") {
                if fee > 50_000 {
                    return Err(Ter::temBAD_NFTOKEN_TRANSFER_FEE);
                }
                if fee > 0 && flags & u32::from(TF_TRANSFERABLE) == 0 {
                    return Err(Ter::temMALFORMED);
                }
            }
            if tx.contains("Issuer") && tx.account("Issuer") == account {
                return Err(Ter::temMALFORMED);
            }
            if let Some(uri) = tx.blob("URI") {
                if uri.is_empty() || uri.len() > 256 {
                    return Err(Ter::temMALFORMED);
                }
            }
            if tx.contains("Amount") || tx.contains("Destination") || tx.contains("Expiration") {
                return Err(Ter::temDISABLED);
            }
        }
        "NFTokenCreateOffer" => {
            let amount = drops(tx, "Amount").ok_or(Ter::temBAD_AMOUNT)?;
            let sell = flags & TF_SELL_NFTOKEN != 0;
            if amount < 0 || (!sell && amount == 0) {
                return Err(Ter::temBAD_AMOUNT);
            }
            if tx.u32("Expiration") == Some(0) {
                return Err(Ter::temBAD_EXPIRATION);
            }
            match (sell, tx.account("Owner")) {
                (true, Some(_)) | (false, None) => return Err(Ter::temMALFORMED),
                (false, Some(o)) if Some(o) == account => return Err(Ter::temMALFORMED),
                _ => {}
            }
            if tx.contains("Destination") && tx.account("Destination") == account {
                return Err(Ter::temMALFORMED);
            }
        }
        "NFTokenCancelOffer" => {
            let offers = match tx.get("NFTokenOffers") {
                Some(Value::Vector256(v)) => v,
                _ => return Err(Ter::temMALFORMED),
            };
            let unique: BTreeSet<_> = offers.iter().collect();
            if offers.is_empty() || offers.len() > 500 || unique.len() != offers.len() {
                return Err(Ter::temMALFORMED);
            }
        }
        "NFTokenAcceptOffer" => {
            let buy = tx.contains("NFTokenBuyOffer");
            let sell = tx.contains("NFTokenSellOffer");
            if !buy && !sell {
                return Err(Ter::temMALFORMED);
            }
            if tx.contains("NFTokenBrokerFee") {
                if !(buy && sell) {
                    return Err(Ter::temMALFORMED);
                }
                match drops(tx, "NFTokenBrokerFee") {
                    Some(f) if f > 0 => {}
                    _ => return Err(Ter::temMALFORMED),
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn payment(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    let amount = drops(c.tx, "Amount").ok_or(Ter::temBAD_AMOUNT)?;
    let dst = c.tx.account("Destination").ok_or(Ter::temDST_NEEDED)?;
    let reserve_base = c.env.fees.reserve_base;
    match c.sb.account(&dst) {
        None => {
            if amount < reserve_base {
                return Err(Ter::tecNO_DST_INSUF_XRP);
            }
            let mut a = StObject::new();
            a.set("LedgerEntryType", Value::UInt16(ENTRY_ACCOUNT_ROOT));
            a.set("Account", Value::AccountId(dst));
            a.set("Flags", Value::UInt32(0));
            a.set("OwnerCount", Value::UInt32(0));
            a.set("Sequence", Value::UInt32(c.env.seq));
            set_balance(&mut a, 0);
            c.sb.put_account(&dst, a);
        }
        Some(d) => {
            let flags = get_u32(&d, "Flags");
            if flags & LSF_REQUIRE_DEST_TAG != 0 && !c.tx.contains("DestinationTag") {
                return Err(Ter::tecDST_TAG_NEEDED);
            }
            if flags & LSF_DEPOSIT_AUTH != 0 {
                return Err(Ter::tecNO_PERMISSION);
            }
        }
    }
    let me = c.me()?;
    let reserve = c.env.fees.reserve(get_u32(&me, "OwnerCount"));
    if c.prior_balance < amount + reserve.max(c.fee) {
        return Err(Ter::tecUNFUNDED_PAYMENT);
    }
    c.sb.add_balance(&c.account, -amount);
    c.sb.add_balance(&dst, amount);
    c.extra
        .insert("delivered_amount".into(), Json::String(amount.to_string()));
    Ok(())
}

fn account_set(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    let mut me = c.me()?;
    let mut flags = get_u32(&me, "Flags");
    let tf = c.tx.u32("Flags").unwrap_or(0);
    let asf = |n: u32| -> Option<u32> {
        Some(match n {
            1 => LSF_REQUIRE_DEST_TAG,
            2 => LSF_REQUIRE_AUTH,
            3 => LSF_DISALLOW_XRP,
            4 => LSF_DISABLE_MASTER,
            8 => LSF_DEFAULT_RIPPLE,
            9 => LSF_DEPOSIT_AUTH,
            12 => LSF_DISALLOW_INCOMING_NFT_OFFER,
            _ => return None,
        })
    };
    let set = c.tx.u32("SetFlag").unwrap_or(0);
    let clear = c.tx.u32("ClearFlag").unwrap_or(0);
    if set == 4 && flags & LSF_DISABLE_MASTER == 0 {
        // Only the master key may disable itself, and only with another way to sign.
        let with_master =
            c.tx.blob("SigningPubKey")
                .is_some_and(|k| !k.is_empty() && account_id_of(k) == c.account);
        if !with_master {
            return Err(Ter::tecNEED_MASTER_KEY);
        }
        if !me.contains("RegularKey") && c.sb.get(&index::signer_list(&c.account)).is_none() {
            return Err(Ter::tecNO_ALTERNATIVE_KEY);
        }
    }
    if let Some(f) = asf(set) {
        flags |= f;
    }
    if let Some(f) = asf(clear) {
        flags &= !f;
    }
    for (bit, lsf, on) in [
        (0x0001_0000, LSF_REQUIRE_DEST_TAG, true),
        (0x0002_0000, LSF_REQUIRE_DEST_TAG, false),
        (0x0004_0000, LSF_REQUIRE_AUTH, true),
        (0x0008_0000, LSF_REQUIRE_AUTH, false),
        (0x0010_0000, LSF_DISALLOW_XRP, true),
        (0x0020_0000, LSF_DISALLOW_XRP, false),
    ] {
        if tf & bit != 0 {
            if on {
                flags |= lsf;
            } else {
                flags &= !lsf;
            }
        }
    }
    me.set("Flags", Value::UInt32(flags));
    if set == 10 {
        if let Some(m) = c.tx.account("NFTokenMinter") {
            me.set("NFTokenMinter", Value::AccountId(m));
        }
    }
    if clear == 10 {
        me.remove("NFTokenMinter");
    }
    for name in ["MessageKey", "Domain"] {
        if let Some(b) = c.tx.blob(name) {
            if b.is_empty() {
                me.remove(name);
            } else {
                me.set(name, Value::Blob(b.to_vec()));
            }
        }
    }
    if let Some(rate) = c.tx.u32("TransferRate") {
        if rate == 0 || rate == 1_000_000_000 {
            me.remove("TransferRate");
        } else {
            me.set("TransferRate", Value::UInt32(rate));
        }
    }
    for name in ["EmailHash", "WalletLocator"] {
        match c.tx.get(name) {
            Some(Value::Hash128(h)) if h.iter().all(|b| *b == 0) => {
                me.remove(name);
            }
            Some(Value::Hash256(h)) if h.iter().all(|b| *b == 0) => {
                me.remove(name);
            }
            Some(v) => me.set(name, v.clone()),
            None => {}
        }
    }
    c.sb.put_account(&c.account, me);
    Ok(())
}

fn set_regular_key(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    let mut me = c.me()?;
    match c.tx.account("RegularKey") {
        Some(k) => me.set("RegularKey", Value::AccountId(k)),
        None => {
            if get_u32(&me, "Flags") & LSF_DISABLE_MASTER != 0
                && c.sb.get(&index::signer_list(&c.account)).is_none()
            {
                return Err(Ter::tecNO_ALTERNATIVE_KEY);
            }
            me.remove("RegularKey");
        }
    }
    c.sb.put_account(&c.account, me);
    Ok(())
}

/// Removes an account's signer list, if any, with the owner count it cost.
fn remove_signer_list(sb: &mut Sandbox<'_>, owner: &[u8; 20]) {
    let key = index::signer_list(owner);
    let Some(list) = sb.get(&key) else { return };
    let cost = if get_u32(&list, "Flags") & LSF_ONE_OWNER_COUNT != 0 {
        1
    } else {
        // A list made before MultiSignReserve cost 2 plus one per entry.
        2 + signer_entries(&list).map_or(0, |e| e.len() as i64)
    };
    sb.erase(key);
    sb.adjust_owner_count(owner, -cost);
}

fn signer_list_set(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    if !c.tx.contains("SignerEntries") {
        // Deleting the list: only when the account can still sign otherwise.
        let me = c.me()?;
        if get_u32(&me, "Flags") & LSF_DISABLE_MASTER != 0 && !me.contains("RegularKey") {
            return Err(Ter::tecNO_ALTERNATIVE_KEY);
        }
        remove_signer_list(c.sb, &c.account);
        return Ok(());
    }
    let entries = signer_entries(c.tx)?;
    // A replaced list gives its reserve back before the new one is counted.
    remove_signer_list(c.sb, &c.account);
    let owner_count = get_u32(&c.me()?, "OwnerCount");
    // Checked against the balance before the fee, as rippled does.
    if c.prior_balance < c.env.fees.reserve(owner_count + 1) {
        return Err(Ter::tecINSUFFICIENT_RESERVE);
    }
    #[allow(clippy::expect_used)]
    let f = berth_xrpl_core::fields::field("SignerEntry").expect("SignerEntry is a known field");
    let items = entries
        .iter()
        .map(|e| {
            let mut o = StObject::new();
            o.set("Account", Value::AccountId(e.account));
            o.set("SignerWeight", Value::UInt16(e.weight));
            if let Some(t) = e.tag {
                o.set("WalletLocator", Value::Hash256(t));
            }
            (f, o)
        })
        .collect();
    let mut list = StObject::new();
    list.set("LedgerEntryType", Value::UInt16(ENTRY_SIGNER_LIST));
    list.set("Flags", Value::UInt32(LSF_ONE_OWNER_COUNT));
    list.set("OwnerNode", Value::UInt64(0));
    list.set(
        "SignerQuorum",
        Value::UInt32(c.tx.u32("SignerQuorum").unwrap_or(0)),
    );
    list.set("SignerListID", Value::UInt32(0));
    list.set("SignerEntries", Value::Array(items));
    c.sb.put(index::signer_list(&c.account), list);
    c.sb.adjust_owner_count(&c.account, 1);
    Ok(())
}

fn check_reserve_after(c: &Ctx<'_, '_>, who: &[u8; 20], funds: i64) -> Result<(), Ter> {
    let a = c.sb.account(who).ok_or(Ter::tecNO_TARGET)?;
    if funds < c.env.fees.reserve(get_u32(&a, "OwnerCount")) {
        return Err(Ter::tecINSUFFICIENT_RESERVE);
    }
    Ok(())
}

fn nft_mint(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    let issuer = c.tx.account("Issuer").unwrap_or(c.account);
    let mut issuer_acct = c.sb.account(&issuer).ok_or(Ter::tecNO_ISSUER)?;
    if issuer != c.account && issuer_acct.account("NFTokenMinter") != Some(c.account) {
        return Err(Ter::tecNO_PERMISSION);
    }
    let first = match issuer_acct.u32("FirstNFTokenSequence") {
        Some(f) => f,
        None => {
            let s = get_u32(&issuer_acct, "Sequence");
            let f = if issuer == c.account { s - 1 } else { s };
            issuer_acct.set("FirstNFTokenSequence", Value::UInt32(f));
            f
        }
    };
    let minted = get_u32(&issuer_acct, "MintedNFTokens");
    let token_seq = first
        .checked_add(minted)
        .ok_or(Ter::tecNO_SUITABLE_NFTOKEN_PAGE)?;
    issuer_acct.set("MintedNFTokens", Value::UInt32(minted + 1));
    c.sb.put_account(&issuer, issuer_acct);

    let flags = (c.tx.u32("Flags").unwrap_or(0) & 0xFFFF) as u16;
    let fee = c.tx.u16("TransferFee").unwrap_or(0);
    let taxon = c.tx.u32("NFTokenTaxon").unwrap_or(0);
    let id = index::nftoken_id(flags, fee, &issuer, taxon, token_seq);
    let mut token = StObject::new();
    token.set("NFTokenID", Value::Hash256(id));
    if let Some(uri) = c.tx.blob("URI") {
        token.set("URI", Value::Blob(uri.to_vec()));
    }
    let new_pages = insert_token(c.sb, &c.account, token)?;
    if new_pages > 0 {
        c.sb.adjust_owner_count(&c.account, i64::from(new_pages));
        check_reserve_after(c, &c.account, c.prior_balance)?;
    }
    c.extra.insert("nftoken_id".into(), hex_key(&id));
    Ok(())
}

/// Deletes an offer and gives its owner back the reserve.
fn delete_offer(sb: &mut Sandbox<'_>, key: &Key) {
    if let Some(o) = sb.get(key) {
        if let Some(owner) = o.account("Owner") {
            sb.adjust_owner_count(&owner, -1);
        }
        sb.erase(*key);
    }
}

fn nft_burn(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    let id = c.tx.hash256("NFTokenID").ok_or(Ter::temMALFORMED)?;
    let owner = c.tx.account("Owner").unwrap_or(c.account);
    find_token(c.sb, &owner, &id).ok_or(Ter::tecNO_ENTRY)?;
    let parts = nftoken_parts(&id);
    if owner != c.account {
        let issuer_acct = c.sb.account(&parts.issuer);
        let may = parts.flags & TF_BURNABLE != 0
            && (c.account == parts.issuer
                || issuer_acct.and_then(|a| a.account("NFTokenMinter")) == Some(c.account));
        if !may {
            return Err(Ter::tecNO_PERMISSION);
        }
    }
    let (_, removed) = remove_token(c.sb, &owner, &id)?;
    if removed > 0 {
        c.sb.adjust_owner_count(&owner, -i64::from(removed));
    }
    if let Some(mut issuer) = c.sb.account(&parts.issuer) {
        let burned = get_u32(&issuer, "BurnedNFTokens");
        issuer.set("BurnedNFTokens", Value::UInt32(burned + 1));
        c.sb.put_account(&parts.issuer, issuer);
    }
    for k in c.sb.token_offers(&id) {
        delete_offer(c.sb, &k);
    }
    Ok(())
}

fn nft_create_offer(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    let id = c.tx.hash256("NFTokenID").ok_or(Ter::temMALFORMED)?;
    let amount = drops(c.tx, "Amount").ok_or(Ter::temBAD_AMOUNT)?;
    let sell = c.tx.u32("Flags").unwrap_or(0) & TF_SELL_NFTOKEN != 0;
    if c.tx
        .u32("Expiration")
        .is_some_and(|e| e <= c.env.parent_close_time)
    {
        return Err(Ter::tecEXPIRED);
    }
    let holder = if sell {
        c.account
    } else {
        c.tx.account("Owner").ok_or(Ter::temMALFORMED)?
    };
    find_token(c.sb, &holder, &id).ok_or(Ter::tecNO_ENTRY)?;
    let parts = nftoken_parts(&id);
    if parts.flags & TF_TRANSFERABLE == 0 && parts.issuer != c.account {
        let ok = if sell {
            c.tx.account("Destination") == Some(parts.issuer)
        } else {
            holder == parts.issuer
        };
        if !ok {
            return Err(Ter::tefNFTOKEN_IS_NOT_TRANSFERABLE);
        }
    }
    if let Some(dst) = c.tx.account("Destination") {
        let d = c.sb.account(&dst).ok_or(Ter::tecNO_DST)?;
        if get_u32(&d, "Flags") & LSF_DISALLOW_INCOMING_NFT_OFFER != 0 {
            return Err(Ter::tecNO_PERMISSION);
        }
    }
    let me = c.me()?;
    let owner_count = get_u32(&me, "OwnerCount");
    if !sell {
        let o = c.sb.account(&holder).ok_or(Ter::tecNO_ENTRY)?;
        if get_u32(&o, "Flags") & LSF_DISALLOW_INCOMING_NFT_OFFER != 0 {
            return Err(Ter::tecNO_PERMISSION);
        }
        if c.prior_balance - c.env.fees.reserve(owner_count) < amount {
            return Err(Ter::tecUNFUNDED_OFFER);
        }
    }
    if c.prior_balance < c.env.fees.reserve(owner_count + 1) {
        return Err(Ter::tecINSUFFICIENT_RESERVE);
    }
    let seq = c.tx.u32("Sequence").unwrap_or(0);
    let key = index::nft_offer(&c.account, seq);
    let mut offer = StObject::new();
    offer.set("LedgerEntryType", Value::UInt16(ENTRY_NFT_OFFER));
    offer.set(
        "Flags",
        Value::UInt32(if sell { LSF_SELL_NFTOKEN } else { 0 }),
    );
    offer.set("Owner", Value::AccountId(c.account));
    offer.set("NFTokenID", Value::Hash256(id));
    offer.set("Amount", Value::Amount(Amount::Drops(amount)));
    offer.set("OwnerNode", Value::UInt64(0));
    offer.set("NFTokenOfferNode", Value::UInt64(0));
    if let Some(d) = c.tx.account("Destination") {
        offer.set("Destination", Value::AccountId(d));
    }
    if let Some(e) = c.tx.u32("Expiration") {
        offer.set("Expiration", Value::UInt32(e));
    }
    c.sb.put(key, offer);
    c.sb.adjust_owner_count(&c.account, 1);
    c.extra.insert("offer_id".into(), hex_key(&key));
    Ok(())
}

fn nft_cancel_offer(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    let keys = match c.tx.get("NFTokenOffers") {
        Some(Value::Vector256(v)) => v.clone(),
        _ => return Err(Ter::temMALFORMED),
    };
    let mut tokens = Vec::new();
    for k in &keys {
        let Some(o) = c.sb.get(k) else { continue };
        if o.u16("LedgerEntryType") != Some(ENTRY_NFT_OFFER) {
            return Err(Ter::tecNO_PERMISSION);
        }
        let expired = o
            .u32("Expiration")
            .is_some_and(|e| e <= c.env.parent_close_time);
        if o.account("Owner") != Some(c.account)
            && o.account("Destination") != Some(c.account)
            && !expired
        {
            return Err(Ter::tecNO_PERMISSION);
        }
        if let Some(t) = o.hash256("NFTokenID") {
            tokens.push(hex_key(&t));
        }
        delete_offer(c.sb, k);
    }
    c.extra.insert("nftoken_ids".into(), Json::Array(tokens));
    Ok(())
}

struct Offer {
    key: Key,
    owner: [u8; 20],
    token: Key,
    amount: i64,
    destination: Option<[u8; 20]>,
}

fn load_offer(c: &Ctx<'_, '_>, field: &str, want_sell: bool) -> Result<Option<Offer>, Ter> {
    let Some(key) = c.tx.hash256(field) else {
        return Ok(None);
    };
    let o = c.sb.get(&key).ok_or(Ter::tecOBJECT_NOT_FOUND)?;
    if o.u16("LedgerEntryType") != Some(ENTRY_NFT_OFFER) {
        return Err(Ter::tecOBJECT_NOT_FOUND);
    }
    let is_sell = get_u32(&o, "Flags") & LSF_SELL_NFTOKEN != 0;
    if is_sell != want_sell {
        return Err(Ter::tecNFTOKEN_OFFER_TYPE_MISMATCH);
    }
    if o.u32("Expiration")
        .is_some_and(|e| e <= c.env.parent_close_time)
    {
        return Err(Ter::tecEXPIRED);
    }
    Ok(Some(Offer {
        key,
        owner: o.account("Owner").ok_or(Ter::tecOBJECT_NOT_FOUND)?,
        token: o.hash256("NFTokenID").ok_or(Ter::tecOBJECT_NOT_FOUND)?,
        amount: drops(&o, "Amount").ok_or(Ter::temBAD_AMOUNT)?,
        destination: o.account("Destination"),
    }))
}

/// What an account can spend: its balance (after this transaction's fee when it is
/// the sender) less its reserve.
fn liquid(c: &Ctx<'_, '_>, who: &[u8; 20]) -> i64 {
    match c.sb.account(who) {
        Some(a) => balance(&a) - c.env.fees.reserve(get_u32(&a, "OwnerCount")),
        None => 0,
    }
}

fn nft_accept_offer(c: &mut Ctx<'_, '_>) -> Result<(), Ter> {
    let buy = load_offer(c, "NFTokenBuyOffer", false)?;
    let sell = load_offer(c, "NFTokenSellOffer", true)?;
    let (token, seller, buyer, price, broker_fee) = match (&buy, &sell) {
        (Some(b), Some(s)) => {
            if b.token != s.token {
                return Err(Ter::tecNFTOKEN_BUY_SELL_MISMATCH);
            }
            if b.owner == s.owner {
                return Err(Ter::tecCANT_ACCEPT_OWN_NFTOKEN_OFFER);
            }
            if b.amount < s.amount {
                return Err(Ter::tecINSUFFICIENT_PAYMENT);
            }
            if s.destination.is_some_and(|d| d != c.account)
                || b.destination.is_some_and(|d| d != c.account)
            {
                return Err(Ter::tecNO_PERMISSION);
            }
            let fee = drops(c.tx, "NFTokenBrokerFee").unwrap_or(0);
            if fee >= b.amount || b.amount - fee < s.amount {
                return Err(Ter::tecINSUFFICIENT_PAYMENT);
            }
            (b.token, s.owner, b.owner, b.amount, fee)
        }
        (None, Some(s)) => {
            if s.owner == c.account {
                return Err(Ter::tecCANT_ACCEPT_OWN_NFTOKEN_OFFER);
            }
            if s.destination.is_some_and(|d| d != c.account) {
                return Err(Ter::tecNO_PERMISSION);
            }
            (s.token, s.owner, c.account, s.amount, 0)
        }
        (Some(b), None) => {
            if b.owner == c.account {
                return Err(Ter::tecCANT_ACCEPT_OWN_NFTOKEN_OFFER);
            }
            if b.destination.is_some_and(|d| d != c.account) {
                return Err(Ter::tecNO_PERMISSION);
            }
            (b.token, c.account, b.owner, b.amount, 0)
        }
        (None, None) => return Err(Ter::temMALFORMED),
    };
    if find_token(c.sb, &seller, &token).is_none() {
        return Err(Ter::tecNO_PERMISSION);
    }
    if liquid(c, &buyer) < price {
        return Err(Ter::tecINSUFFICIENT_FUNDS);
    }
    // Money: buyer pays; the broker takes its fee, the issuer its transfer fee.
    let parts = nftoken_parts(&token);
    c.sb.add_balance(&buyer, -price);
    let mut rest = price;
    if broker_fee > 0 {
        c.sb.add_balance(&c.account, broker_fee);
        rest -= broker_fee;
    }
    if parts.transfer_fee > 0 && parts.issuer != buyer && parts.issuer != seller {
        let cut = (i128::from(rest) * i128::from(parts.transfer_fee) / 100_000) as i64;
        if cut > 0 && c.sb.account(&parts.issuer).is_some() {
            c.sb.add_balance(&parts.issuer, cut);
            rest -= cut;
        }
    }
    c.sb.add_balance(&seller, rest);
    // The token.
    let (nft, removed) = remove_token(c.sb, &seller, &token)?;
    if removed > 0 {
        c.sb.adjust_owner_count(&seller, -i64::from(removed));
    }
    let added = insert_token(c.sb, &buyer, nft)?;
    if added > 0 {
        c.sb.adjust_owner_count(&buyer, i64::from(added));
        let funds = c.sb.account(&buyer).map(|a| balance(&a)).unwrap_or(0);
        let funds = if buyer == c.account {
            funds + c.fee
        } else {
            funds
        };
        check_reserve_after(c, &buyer, funds)?;
    }
    for o in [buy, sell].into_iter().flatten() {
        delete_offer(c.sb, &o.key);
    }
    c.extra.insert("nftoken_id".into(), hex_key(&token));
    Ok(())
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::UInt8(0) | Value::UInt16(0) | Value::UInt32(0) | Value::UInt64(0) => true,
        Value::Hash256(h) => h.iter().all(|b| *b == 0),
        _ => false,
    }
}

fn meta_fields(o: &StObject, skip_default: bool) -> StObject {
    let mut out = StObject::new();
    for (f, v) in o.fields() {
        if matches!(
            f.name,
            "LedgerEntryType" | "PreviousTxnID" | "PreviousTxnLgrSeq"
        ) {
            continue;
        }
        if skip_default && is_default(v) {
            continue;
        }
        out.set(f.name, v.clone());
    }
    out
}

fn changed_fields(before: &StObject, after: &StObject) -> StObject {
    let mut out = StObject::new();
    for (f, v) in before.fields() {
        if matches!(
            f.name,
            "LedgerEntryType" | "PreviousTxnID" | "PreviousTxnLgrSeq"
        ) {
            continue;
        }
        if after.get(f.name) != Some(v) {
            out.set(f.name, v.clone());
        }
    }
    out
}

fn node_field(name: &str) -> &'static berth_xrpl_core::fields::Field {
    #[allow(clippy::expect_used)]
    FIELDS
        .iter()
        .find(|f| f.name == name && f.ty == FieldType::Object)
        .expect("metadata node fields are known")
}

fn build_meta(
    base: &State,
    changes: &BTreeMap<Key, Option<StObject>>,
    ter: Ter,
    tx_index: u32,
) -> StObject {
    let mut nodes = Vec::new();
    for (k, after) in changes {
        let before = base.get(k);
        let mut n = StObject::new();
        n.set("LedgerIndex", Value::Hash256(*k));
        let kind = match (before, after) {
            (None, Some(a)) => {
                n.set(
                    "LedgerEntryType",
                    a.get("LedgerEntryType")
                        .cloned()
                        .unwrap_or(Value::UInt16(0)),
                );
                n.set("NewFields", Value::Object(meta_fields(a, true)));
                "CreatedNode"
            }
            (Some(b), Some(a)) => {
                n.set(
                    "LedgerEntryType",
                    b.get("LedgerEntryType")
                        .cloned()
                        .unwrap_or(Value::UInt16(0)),
                );
                n.set("FinalFields", Value::Object(meta_fields(a, false)));
                let prev = changed_fields(b, a);
                if prev.fields().next().is_some() {
                    n.set("PreviousFields", Value::Object(prev));
                }
                if let Some(id) = b.hash256("PreviousTxnID") {
                    n.set("PreviousTxnID", Value::Hash256(id));
                }
                if let Some(s) = b.u32("PreviousTxnLgrSeq") {
                    n.set("PreviousTxnLgrSeq", Value::UInt32(s));
                }
                "ModifiedNode"
            }
            (Some(b), None) => {
                n.set(
                    "LedgerEntryType",
                    b.get("LedgerEntryType")
                        .cloned()
                        .unwrap_or(Value::UInt16(0)),
                );
                n.set("FinalFields", Value::Object(meta_fields(b, false)));
                "DeletedNode"
            }
            (None, None) => continue,
        };
        nodes.push((node_field(kind), n));
    }
    let mut meta = StObject::new();
    meta.set("AffectedNodes", Value::Array(nodes));
    meta.set("TransactionIndex", Value::UInt32(tx_index));
    meta.set(
        "TransactionResult",
        Value::UInt8(u8::try_from(ter.code()).unwrap_or(0)),
    );
    meta
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use berth_xrpl_core::tx::{multisign, sign, sign_for, verify_signatures};
    use berth_xrpl_core::{KeyPair, KeyType};

    const ENV: Env = Env {
        seq: 5,
        parent_close_time: 0,
        fees: Fees {
            base: 10,
            reserve_base: 10_000_000,
            reserve_inc: 2_000_000,
        },
    };

    fn root(id: [u8; 20], drops: i64) -> StObject {
        let mut a = StObject::new();
        a.set("LedgerEntryType", Value::UInt16(ENTRY_ACCOUNT_ROOT));
        a.set("Account", Value::AccountId(id));
        a.set("Flags", Value::UInt32(0));
        a.set("OwnerCount", Value::UInt32(0));
        a.set("Sequence", Value::UInt32(1));
        set_balance(&mut a, drops);
        a
    }

    fn put_root(state: &mut State, acct: StObject) {
        let id = acct.account("Account").unwrap();
        state.put(index::account_root(&id), Some(acct));
    }

    /// Applies a transaction to the state; returns the result and keeps the changes.
    fn run(state: &mut State, tx: &StObject) -> Ter {
        let blob = tx.to_bytes();
        let hash = berth_xrpl_core::hash::transaction_id(&blob);
        match apply(state, &ENV, tx, &hash, 0) {
            Outcome::Rejected(t) => t,
            Outcome::Included(a) => {
                for (k, v) in a.changes {
                    state.put(k, v);
                }
                a.ter
            }
        }
    }

    fn payment(from: &[u8; 20], seq: u32, fee: i64) -> StObject {
        let mut tx = StObject::new();
        tx.set("TransactionType", Value::UInt16(0));
        tx.set("Account", Value::AccountId(*from));
        tx.set("Destination", Value::AccountId([0xEE; 20]));
        tx.set("Amount", Value::Amount(Amount::Drops(20_000_000)));
        tx.set("Fee", Value::Amount(Amount::Drops(fee)));
        tx.set("Sequence", Value::UInt32(seq));
        tx
    }

    fn signer_list_set(owner: &KeyPair, seq: u32, quorum: u32, who: &[[u8; 20]]) -> StObject {
        let f = berth_xrpl_core::fields::field("SignerEntry").unwrap();
        let mut tx = StObject::new();
        tx.set("TransactionType", Value::UInt16(12));
        tx.set("Account", Value::AccountId(owner.account_id()));
        tx.set("Fee", Value::Amount(Amount::Drops(10)));
        tx.set("Sequence", Value::UInt32(seq));
        tx.set("SignerQuorum", Value::UInt32(quorum));
        let entries = who
            .iter()
            .map(|a| {
                let mut e = StObject::new();
                e.set("Account", Value::AccountId(*a));
                e.set("SignerWeight", Value::UInt16(1));
                (f, e)
            })
            .collect::<Vec<_>>();
        if !entries.is_empty() {
            tx.set("SignerEntries", Value::Array(entries));
        }
        sign(&mut tx, owner);
        tx
    }

    /// An owner with a 2-of-3 list; signer 0 exists with a regular key, signer 1 is a
    /// phantom (no account), signer 2 exists and signs with its master key.
    struct Setup {
        state: State,
        owner: KeyPair,
        signers: Vec<KeyPair>,
        regular: KeyPair,
    }

    fn setup() -> Setup {
        let owner = KeyPair::generate(KeyType::Ed25519);
        let mut signers: Vec<KeyPair> = (0..3)
            .map(|_| KeyPair::generate(KeyType::Secp256k1))
            .collect();
        signers.sort_by_key(KeyPair::account_id);
        let regular = KeyPair::generate(KeyType::Ed25519);
        let mut state = State::default();
        put_root(&mut state, root(owner.account_id(), 100_000_000));
        let mut s0 = root(signers[0].account_id(), 50_000_000);
        s0.set("RegularKey", Value::AccountId(regular.account_id()));
        put_root(&mut state, s0);
        put_root(&mut state, root(signers[2].account_id(), 50_000_000));
        let ids: Vec<[u8; 20]> = signers.iter().map(KeyPair::account_id).collect();
        let t = signer_list_set(&owner, 1, 2, &ids);
        assert_eq!(run(&mut state, &t), Ter::tesSUCCESS);
        Setup {
            state,
            owner,
            signers,
            regular,
        }
    }

    #[test]
    fn signer_list_costs_one_owner_count_and_is_owned() {
        let s = setup();
        let a = s.state.account(&s.owner.account_id()).unwrap();
        assert_eq!(get_u32(a, "OwnerCount"), 1);
        let key = index::signer_list(&s.owner.account_id());
        assert_eq!(s.state.owned(&s.owner.account_id()), vec![key]);
        let list = s.state.get(&key).unwrap();
        assert_eq!(get_u32(list, "Flags"), LSF_ONE_OWNER_COUNT);
        assert_eq!(get_u32(list, "SignerQuorum"), 2);
        assert_eq!(signer_entries(list).unwrap().len(), 3);
        // Quorum 0 without entries deletes it and gives the owner count back.
        let mut state = s.state.clone();
        assert_eq!(
            run(&mut state, &signer_list_set(&s.owner, 2, 0, &[])),
            Ter::tesSUCCESS
        );
        assert!(state.get(&key).is_none());
        let a = state.account(&s.owner.account_id()).unwrap();
        assert_eq!(get_u32(a, "OwnerCount"), 0);
    }

    #[test]
    fn signer_list_preflight_codes_are_rippleds() {
        let owner = KeyPair::generate(KeyType::Ed25519);
        let me = owner.account_id();
        let e = |a: u8, w: u16| SignerEntry {
            account: [a; 20],
            weight: w,
            tag: None,
        };
        assert_eq!(check_signer_list(2, &[e(1, 1), e(2, 1)], &me), Ok(()));
        assert_eq!(
            check_signer_list(3, &[e(1, 1), e(2, 1)], &me),
            Err(Ter::temBAD_QUORUM)
        );
        assert_eq!(
            check_signer_list(0, &[e(1, 1)], &me),
            Err(Ter::temBAD_QUORUM)
        );
        assert_eq!(
            check_signer_list(1, &[e(1, 1), e(1, 1)], &me),
            Err(Ter::temBAD_SIGNER)
        );
        assert_eq!(
            check_signer_list(1, &[e(1, 0), e(2, 1)], &me),
            Err(Ter::temBAD_WEIGHT)
        );
        assert_eq!(check_signer_list(1, &[], &me), Err(Ter::temMALFORMED));
        let many: Vec<SignerEntry> = (1..=33).map(|i| e(i, 1)).collect();
        assert_eq!(check_signer_list(1, &many, &me), Err(Ter::temMALFORMED));
        let own = SignerEntry {
            account: me,
            weight: 1,
            tag: None,
        };
        assert_eq!(check_signer_list(1, &[own], &me), Err(Ter::temBAD_SIGNER));
        // Through the engine: quorum with no entries, entries with quorum 0.
        let mut state = State::default();
        put_root(&mut state, root(me, 100_000_000));
        assert_eq!(
            run(&mut state, &signer_list_set(&owner, 1, 1, &[])),
            Ter::temMALFORMED
        );
        assert_eq!(
            run(&mut state, &signer_list_set(&owner, 1, 0, &[[1; 20]])),
            Ter::temMALFORMED
        );
        // Too poor for one more owner count: 10 XRP reserve + 2 XRP.
        let mut poor = State::default();
        put_root(&mut poor, root(me, 11_000_000));
        assert_eq!(
            run(&mut poor, &signer_list_set(&owner, 1, 1, &[[1; 20]])),
            Ter::tecINSUFFICIENT_RESERVE
        );
    }

    /// One signature: the signer account and the key it signs with.
    type Signing<'a> = ([u8; 20], &'a KeyPair);

    /// Signs `tx` by the chosen signers.
    fn multi(tx: &StObject, by: &[Signing<'_>]) -> StObject {
        let mut tx = tx.clone();
        let signers = by.iter().map(|(a, k)| sign_for(&tx, k, a)).collect();
        multisign(&mut tx, signers);
        assert_eq!(verify_signatures(&tx), Ok(()));
        tx
    }

    #[test]
    fn phantom_regular_and_master_keys_sign_and_the_quorum_counts() {
        let s = setup();
        let me = s.owner.account_id();
        let id = |i: usize| s.signers[i].account_id();
        // Phantom signer 1 with its own key, signer 2 with its master key.
        let mut state = s.state.clone();
        let tx = multi(
            &payment(&me, 2, 30),
            &[(id(1), &s.signers[1]), (id(2), &s.signers[2])],
        );
        assert_eq!(run(&mut state, &tx), Ter::tesSUCCESS);
        // Signer 0 with its regular key, and the phantom.
        let mut state = s.state.clone();
        let tx = multi(
            &payment(&me, 2, 30),
            &[(id(0), &s.regular), (id(1), &s.signers[1])],
        );
        assert_eq!(run(&mut state, &tx), Ter::tesSUCCESS);
        // Checked against the ledger alone: who signs for which account, with which key.
        let stranger = KeyPair::generate(KeyType::Ed25519);
        let cases: [(&str, Vec<Signing<'_>>, Ter); 4] = [
            (
                "one signer of weight 1 is short of quorum 2",
                vec![(id(2), &s.signers[2])],
                Ter::tefBAD_QUORUM,
            ),
            (
                "signer 0 has a regular key but signs with another key",
                vec![(id(0), &stranger), (id(2), &s.signers[2])],
                Ter::tefBAD_SIGNATURE,
            ),
            (
                "a phantom must sign with the key its AccountID derives from",
                vec![(id(1), &stranger), (id(2), &s.signers[2])],
                Ter::tefBAD_SIGNATURE,
            ),
            (
                "someone not on the list",
                vec![(stranger.account_id(), &stranger), (id(2), &s.signers[2])],
                Ter::tefBAD_SIGNATURE,
            ),
        ];
        for (what, by, want) in cases {
            let tx = multi(&payment(&me, 2, 30), &by);
            let got = check_multi_sign(&s.state, &me, tx_signers(&tx));
            assert_eq!(got, Err(want), "{what}");
        }
        // A signer account whose master key is disabled.
        let mut state = s.state.clone();
        let mut s2 = state.account(&id(2)).unwrap().clone();
        s2.set("Flags", Value::UInt32(LSF_DISABLE_MASTER));
        put_root(&mut state, s2);
        let tx = multi(
            &payment(&me, 2, 30),
            &[(id(1), &s.signers[1]), (id(2), &s.signers[2])],
        );
        assert_eq!(run(&mut state, &tx), Ter::tefMASTER_DISABLED);
        // An account without a list is not multi-signing.
        let tx = multi(&payment(&id(2), 1, 30), &[(id(1), &s.signers[1])]);
        assert_eq!(
            check_multi_sign(&s.state, &id(2), tx_signers(&tx)),
            Err(Ter::tefNOT_MULTI_SIGNING)
        );
    }

    #[test]
    fn each_signature_costs_a_base_fee() {
        let s = setup();
        let me = s.owner.account_id();
        let by = [
            (s.signers[1].account_id(), &s.signers[1]),
            (s.signers[2].account_id(), &s.signers[2]),
        ];
        let mut state = s.state.clone();
        let tx = multi(&payment(&me, 2, 29), &by);
        assert_eq!(run(&mut state, &tx), Ter::telINSUF_FEE_P);
        let tx = multi(&payment(&me, 2, 30), &by);
        assert_eq!(run(&mut state, &tx), Ter::tesSUCCESS);
        let a = state.account(&me).unwrap();
        assert_eq!(balance(a), 100_000_000 - 10 - 30 - 20_000_000);
    }

    #[test]
    fn disabling_the_master_key_needs_it_and_another_way_to_sign() {
        let s = setup();
        let me = s.owner.account_id();
        let mut state = s.state.clone();
        let account_set = |seq: u32, set: u32| {
            let mut tx = StObject::new();
            tx.set("TransactionType", Value::UInt16(3));
            tx.set("Account", Value::AccountId(me));
            tx.set("Fee", Value::Amount(Amount::Drops(10)));
            tx.set("Sequence", Value::UInt32(seq));
            tx.set("SetFlag", Value::UInt32(set));
            tx
        };
        let ids = |i: usize| (s.signers[i].account_id(), &s.signers[i]);
        // Multi-signed: not the master key.
        let mut t = multi(&account_set(2, 4), &[ids(1), ids(2)]);
        t.set("Fee", Value::Amount(Amount::Drops(30)));
        let t = multi(&t, &[ids(1), ids(2)]);
        assert_eq!(run(&mut state, &t), Ter::tecNEED_MASTER_KEY);
        let mut t = account_set(3, 4);
        sign(&mut t, &s.owner);
        assert_eq!(run(&mut state, &t), Ter::tesSUCCESS);
        let mut t = payment(&me, 4, 10);
        sign(&mut t, &s.owner);
        assert_eq!(run(&mut state, &t), Ter::tefMASTER_DISABLED);
        // The list is now the only way to sign: it may not be deleted.
        let t = signer_list_set(&s.owner, 4, 0, &[]);
        let mut t = multi(&t, &[ids(1), ids(2)]);
        t.set("Fee", Value::Amount(Amount::Drops(30)));
        let t = multi(&t, &[ids(1), ids(2)]);
        assert_eq!(run(&mut state, &t), Ter::tecNO_ALTERNATIVE_KEY);
        // Without a list or regular key the master key may not be disabled.
        let mut bare = State::default();
        put_root(&mut bare, root(me, 100_000_000));
        let mut t = account_set(1, 4);
        sign(&mut t, &s.owner);
        assert_eq!(run(&mut bare, &t), Ter::tecNO_ALTERNATIVE_KEY);
    }
}
