//! Ledger state: the objects of one ledger, with cheap snapshots.
//!
//! Objects are kept in their protocol form ([`StObject`]) keyed by their ledger
//! index, in persistent maps so that every closed ledger keeps a snapshot for the
//! price of the objects that changed. Two derived indexes answer "offers for this
//! token" and "objects owned by this account" without directory objects.

use std::sync::Arc;

use berth_xrpl_core::hash::{sha512_half, PREFIX_LEAF_NODE};
use berth_xrpl_core::index;
use berth_xrpl_core::{Amount, StObject, Value};

pub type Key = [u8; 32];

/// One ledger object with the hash of its state-tree leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub obj: StObject,
    pub leaf: [u8; 32],
}

impl Entry {
    pub fn new(key: &Key, obj: StObject) -> Entry {
        let leaf = sha512_half(&[&PREFIX_LEAF_NODE, &obj.to_bytes(), key]);
        Entry { obj, leaf }
    }
}

/// An entry of a derived index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexEntry {
    /// An NFTokenOffer (second) for a token (first).
    TokenOffer(Key, Key),
    /// An object (second) in an account's owner directory (first, zero-padded).
    Owned(Key, Key),
}

/// The state of one ledger.
#[derive(Debug, Clone, Default)]
pub struct State {
    objects: imbl::OrdMap<Key, Arc<Entry>>,
    indexes: imbl::OrdSet<IndexEntry>,
}

pub fn pad_account(a: &[u8; 20]) -> Key {
    let mut k = [0u8; 32];
    k[..20].copy_from_slice(a);
    k
}

/// Index entries derived from an object.
pub fn index_entries(key: &Key, obj: &StObject) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    match obj.u16("LedgerEntryType") {
        Some(0x37) => {
            if let Some(token) = obj.hash256("NFTokenID") {
                out.push(IndexEntry::TokenOffer(token, *key));
            }
            if let Some(owner) = obj.account("Owner") {
                out.push(IndexEntry::Owned(pad_account(&owner), *key));
            }
        }
        Some(0x50) => {
            let mut owner = [0u8; 20];
            owner.copy_from_slice(&key[..20]);
            out.push(IndexEntry::Owned(pad_account(&owner), *key));
        }
        _ => {}
    }
    out
}

impl State {
    pub fn get(&self, key: &Key) -> Option<&StObject> {
        self.objects.get(key).map(|e| &e.obj)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn account(&self, id: &[u8; 20]) -> Option<&StObject> {
        self.get(&index::account_root(id))
    }

    /// Writes or erases an object, keeping the indexes in step.
    pub fn put(&mut self, key: Key, obj: Option<StObject>) {
        if let Some(old) = self.objects.get(&key) {
            for e in index_entries(&key, &old.obj) {
                self.indexes.remove(&e);
            }
        }
        match obj {
            Some(o) => {
                for e in index_entries(&key, &o) {
                    self.indexes.insert(e);
                }
                self.objects.insert(key, Arc::new(Entry::new(&key, o)));
            }
            None => {
                self.objects.remove(&key);
            }
        }
    }

    /// Objects with keys in `[from, to]`, in key order.
    pub fn range(&self, from: Key, to: Key) -> impl Iterator<Item = (&Key, &StObject)> {
        self.objects.range(from..=to).map(|(k, e)| (k, &e.obj))
    }

    /// Offer keys for a token.
    pub fn token_offers(&self, token: &Key) -> Vec<Key> {
        self.indexes
            .range(
                IndexEntry::TokenOffer(*token, [0; 32])
                    ..=IndexEntry::TokenOffer(*token, [0xFF; 32]),
            )
            .filter_map(|e| match e {
                IndexEntry::TokenOffer(_, k) => Some(*k),
                IndexEntry::Owned(..) => None,
            })
            .collect()
    }

    /// Keys of objects an account owns (offers, NFT pages and its signer list).
    pub fn owned(&self, account: &[u8; 20]) -> Vec<Key> {
        let a = pad_account(account);
        let mut keys: Vec<Key> = self
            .indexes
            .range(IndexEntry::Owned(a, [0; 32])..=IndexEntry::Owned(a, [0xFF; 32]))
            .filter_map(|e| match e {
                IndexEntry::Owned(_, k) => Some(*k),
                IndexEntry::TokenOffer(..) => None,
            })
            .collect();
        // A SignerList names no owner; its key is the owner's keylet.
        let list = index::signer_list(account);
        if self.objects.contains_key(&list) {
            keys.push(list);
        }
        keys
    }

    /// Every object, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &StObject)> {
        self.objects.iter().map(|(k, e)| (k, &e.obj))
    }

    /// The state tree's hash: SHA-512Half over every key and leaf hash in key order.
    /// (A flat hash, not rippled's SHAMap; it chains and changes with any object.)
    pub fn hash(&self) -> [u8; 32] {
        let mut buf = Vec::with_capacity(self.objects.len() * 64);
        for (k, e) in self.objects.iter() {
            buf.extend_from_slice(k);
            buf.extend_from_slice(&e.leaf);
        }
        sha512_half(&[&buf])
    }
}

/// Balance of an AccountRoot in drops.
pub fn balance(acct: &StObject) -> i64 {
    match acct.amount("Balance") {
        Some(Amount::Drops(d)) => *d,
        _ => 0,
    }
}

pub fn set_balance(acct: &mut StObject, drops: i64) {
    acct.set("Balance", Value::Amount(Amount::Drops(drops)));
}

pub fn get_u32(obj: &StObject, name: &str) -> u32 {
    obj.u32(name).unwrap_or(0)
}
