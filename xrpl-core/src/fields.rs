//! The subset of the XRP Ledger's field definitions that Berth reads and writes.
//!
//! Each field is named by its type code and its "nth" within the type; together they
//! give the canonical order of fields in the binary format. Values are the protocol's
//! (checked against xrpl-py's definitions in the interoperability tests).

use std::collections::HashMap;
use std::sync::OnceLock;

/// The serialized type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldType {
    UInt16,
    UInt32,
    UInt64,
    Hash128,
    Hash256,
    Amount,
    Blob,
    AccountId,
    Object,
    Array,
    UInt8,
    Hash160,
    Vector256,
}

impl FieldType {
    /// The type's code in the binary format.
    pub const fn code(self) -> u8 {
        match self {
            FieldType::UInt16 => 1,
            FieldType::UInt32 => 2,
            FieldType::UInt64 => 3,
            FieldType::Hash128 => 4,
            FieldType::Hash256 => 5,
            FieldType::Amount => 6,
            FieldType::Blob => 7,
            FieldType::AccountId => 8,
            FieldType::Object => 14,
            FieldType::Array => 15,
            FieldType::UInt8 => 16,
            FieldType::Hash160 => 17,
            FieldType::Vector256 => 19,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => FieldType::UInt16,
            2 => FieldType::UInt32,
            3 => FieldType::UInt64,
            4 => FieldType::Hash128,
            5 => FieldType::Hash256,
            6 => FieldType::Amount,
            7 => FieldType::Blob,
            8 => FieldType::AccountId,
            14 => FieldType::Object,
            15 => FieldType::Array,
            16 => FieldType::UInt8,
            17 => FieldType::Hash160,
            19 => FieldType::Vector256,
            _ => return None,
        })
    }

    /// Whether values of this type carry a variable-length prefix.
    pub const fn is_vl(self) -> bool {
        matches!(
            self,
            FieldType::Blob | FieldType::AccountId | FieldType::Vector256
        )
    }
}

/// One field of the protocol.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    pub nth: u8,
    /// Whether the field is part of what a signature covers.
    pub signing: bool,
}

impl Field {
    /// The canonical sort key of the field.
    pub fn order(&self) -> (u8, u8) {
        (self.ty.code(), self.nth)
    }
}

macro_rules! fields {
    ($( $name:ident : $ty:ident = $nth:expr $(, nosign = $ns:expr)? ;)*) => {
        /// Every field known to the codec.
        pub static FIELDS: &[Field] = &[
            $( Field { name: stringify!($name), ty: FieldType::$ty, nth: $nth, signing: fields!(@sign $($ns)?) }, )*
        ];
    };
    (@sign) => { true };
    (@sign $ns:expr) => { !$ns };
}

fields! {
    LedgerEntryType: UInt16 = 1;
    TransactionType: UInt16 = 2;
    SignerWeight: UInt16 = 3;
    TransferFee: UInt16 = 4;
    NetworkID: UInt32 = 1;
    Flags: UInt32 = 2;
    SourceTag: UInt32 = 3;
    Sequence: UInt32 = 4;
    PreviousTxnLgrSeq: UInt32 = 5;
    LedgerSequence: UInt32 = 6;
    CloseTime: UInt32 = 7;
    ParentCloseTime: UInt32 = 8;
    SigningTime: UInt32 = 9;
    Expiration: UInt32 = 10;
    TransferRate: UInt32 = 11;
    WalletSize: UInt32 = 12;
    OwnerCount: UInt32 = 13;
    DestinationTag: UInt32 = 14;
    OfferSequence: UInt32 = 25;
    FirstLedgerSequence: UInt32 = 26;
    LastLedgerSequence: UInt32 = 27;
    TransactionIndex: UInt32 = 28;
    OperationLimit: UInt32 = 29;
    SetFlag: UInt32 = 33;
    ClearFlag: UInt32 = 34;
    SignerQuorum: UInt32 = 35;
    SignerListID: UInt32 = 38;
    TicketCount: UInt32 = 40;
    TicketSequence: UInt32 = 41;
    NFTokenTaxon: UInt32 = 42;
    MintedNFTokens: UInt32 = 43;
    BurnedNFTokens: UInt32 = 44;
    FirstNFTokenSequence: UInt32 = 50;
    IndexNext: UInt64 = 1;
    IndexPrevious: UInt64 = 2;
    OwnerNode: UInt64 = 4;
    NFTokenOfferNode: UInt64 = 12;
    EmailHash: Hash128 = 1;
    LedgerHash: Hash256 = 1;
    ParentHash: Hash256 = 2;
    TransactionHash: Hash256 = 3;
    AccountHash: Hash256 = 4;
    PreviousTxnID: Hash256 = 5;
    LedgerIndex: Hash256 = 6;
    WalletLocator: Hash256 = 7;
    RootIndex: Hash256 = 8;
    AccountTxnID: Hash256 = 9;
    NFTokenID: Hash256 = 10;
    InvoiceID: Hash256 = 17;
    PreviousPageMin: Hash256 = 26;
    NextPageMin: Hash256 = 27;
    NFTokenBuyOffer: Hash256 = 28;
    NFTokenSellOffer: Hash256 = 29;
    Amount: Amount = 1;
    Balance: Amount = 2;
    Fee: Amount = 8;
    SendMax: Amount = 9;
    DeliverMin: Amount = 10;
    DeliveredAmount: Amount = 18;
    NFTokenBrokerFee: Amount = 19;
    PublicKey: Blob = 1;
    MessageKey: Blob = 2;
    SigningPubKey: Blob = 3;
    TxnSignature: Blob = 4, nosign = true;
    URI: Blob = 5;
    Signature: Blob = 6, nosign = true;
    Domain: Blob = 7;
    MemoType: Blob = 12;
    MemoData: Blob = 13;
    MemoFormat: Blob = 14;
    Account: AccountId = 1;
    Owner: AccountId = 2;
    Destination: AccountId = 3;
    Issuer: AccountId = 4;
    RegularKey: AccountId = 8;
    NFTokenMinter: AccountId = 9;
    TransactionMetaData: Object = 2;
    CreatedNode: Object = 3;
    DeletedNode: Object = 4;
    ModifiedNode: Object = 5;
    PreviousFields: Object = 6;
    FinalFields: Object = 7;
    NewFields: Object = 8;
    Memo: Object = 10;
    SignerEntry: Object = 11;
    NFToken: Object = 12;
    Signer: Object = 16;
    Signers: Array = 3, nosign = true;
    SignerEntries: Array = 4;
    AffectedNodes: Array = 8;
    Memos: Array = 9;
    NFTokens: Array = 10;
    Indexes: Vector256 = 1;
    NFTokenOffers: Vector256 = 4;
    TransactionResult: UInt8 = 3;
    TickSize: UInt8 = 16;
    TakerPaysCurrency: Hash160 = 1;
}

fn by_name() -> &'static HashMap<&'static str, &'static Field> {
    static MAP: OnceLock<HashMap<&'static str, &'static Field>> = OnceLock::new();
    MAP.get_or_init(|| FIELDS.iter().map(|f| (f.name, f)).collect())
}

fn by_code() -> &'static HashMap<(u8, u8), &'static Field> {
    static MAP: OnceLock<HashMap<(u8, u8), &'static Field>> = OnceLock::new();
    MAP.get_or_init(|| FIELDS.iter().map(|f| (f.order(), f)).collect())
}

/// The field of that name, if the codec knows it.
pub fn field(name: &str) -> Option<&'static Field> {
    by_name().get(name).copied()
}

/// The field with that type code and nth, if the codec knows it.
pub fn field_by_code(type_code: u8, nth: u8) -> Option<&'static Field> {
    FieldType::from_code(type_code)?;
    by_code().get(&(type_code, nth)).copied()
}

/// Transaction types by code.
pub static TRANSACTION_TYPES: &[(&str, u16)] = &[
    ("Payment", 0),
    ("AccountSet", 3),
    ("SetRegularKey", 5),
    ("OfferCreate", 7),
    ("OfferCancel", 8),
    ("TicketCreate", 10),
    ("SignerListSet", 12),
    ("TrustSet", 20),
    ("AccountDelete", 21),
    ("NFTokenMint", 25),
    ("NFTokenBurn", 26),
    ("NFTokenCreateOffer", 27),
    ("NFTokenCancelOffer", 28),
    ("NFTokenAcceptOffer", 29),
];

/// Ledger entry types by code.
pub static LEDGER_ENTRY_TYPES: &[(&str, u16)] = &[
    ("NFTokenOffer", 0x37),
    ("NFTokenPage", 0x50),
    ("SignerList", 0x53),
    ("AccountRoot", 0x61),
    ("DirectoryNode", 0x64),
];

pub(crate) fn code_of(table: &[(&'static str, u16)], name: &str) -> Option<u16> {
    table.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

pub(crate) fn name_of(table: &[(&'static str, u16)], code: u16) -> Option<&'static str> {
    table.iter().find(|(_, c)| *c == code).map(|(n, _)| *n)
}
