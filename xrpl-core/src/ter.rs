//! Transaction engine results: the codes rippled answers with.

macro_rules! ter {
    ($( $name:ident = $code:expr, $msg:expr ;)*) => {
        /// A transaction engine result (`engine_result` / `TransactionResult`).
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Ter { $( $name, )* }

        impl Ter {
            /// Every result the codec knows.
            pub const ALL: &'static [Ter] = &[ $( Ter::$name, )* ];

            /// rippled's numeric code.
            pub const fn code(self) -> i32 { match self { $( Ter::$name => $code, )* } }

            /// The result's token, e.g. `tecNO_DST_INSUF_XRP`.
            pub const fn token(self) -> &'static str { match self { $( Ter::$name => stringify!($name), )* } }

            /// A human explanation, for `engine_result_message`.
            pub const fn message(self) -> &'static str { match self { $( Ter::$name => $msg, )* } }
        }
    };
}

ter! {
    tesSUCCESS = 0, "The transaction was applied. Only final in a validated ledger.";
    telBAD_DOMAIN = -398, "Domain too long.";
    telBAD_PUBLIC_KEY = -396, "Public key is not valid.";
    telINSUF_FEE_P = -394, "Fee insufficient.";
    telNETWORK_ID_MAKES_TX_NON_CANONICAL = -384, "Transactions submitted to this network must not include a NetworkID field.";
    temMALFORMED = -299, "Malformed transaction.";
    temBAD_AMOUNT = -298, "Malformed: Bad amount.";
    temBAD_CURRENCY = -297, "Malformed: Bad currency.";
    temBAD_EXPIRATION = -296, "Malformed: Bad expiration.";
    temBAD_FEE = -295, "Invalid fee, negative or not XRP.";
    temBAD_REGKEY = -289, "Malformed: Regular key cannot be same as master key.";
    temBAD_SEND_XRP_LIMIT = -288, "Malformed: Limit quality is not allowed for XRP to XRP.";
    temBAD_SEND_XRP_MAX = -287, "Malformed: Send max is not allowed for XRP to XRP.";
    temBAD_SEND_XRP_NO_DIRECT = -286, "Malformed: No Ripple direct is not allowed for XRP to XRP.";
    temBAD_SEND_XRP_PARTIAL = -285, "Malformed: Partial payment is not allowed for XRP to XRP.";
    temBAD_SEND_XRP_PATHS = -284, "Malformed: Paths are not allowed for XRP to XRP.";
    temBAD_SEQUENCE = -283, "Malformed: Sequence is not in the past.";
    temBAD_SIGNATURE = -282, "Malformed: Bad signature.";
    temBAD_SRC_ACCOUNT = -281, "Malformed: Bad source account.";
    temBAD_TRANSFER_RATE = -280, "Malformed: Transfer rate must be >= 1.0 and <= 2.0";
    temDST_IS_SRC = -279, "Destination may not be source.";
    temDST_NEEDED = -278, "Destination not specified.";
    temINVALID = -277, "The transaction is ill-formed.";
    temINVALID_FLAG = -276, "The transaction has an invalid flag.";
    temREDUNDANT = -275, "The transaction is redundant.";
    temDISABLED = -273, "The transaction requires logic that is currently disabled.";
    temBAD_SIGNER = -272, "Malformed: No signer may duplicate account or other signers.";
    temBAD_QUORUM = -271, "Malformed: Quorum is unreachable.";
    temBAD_WEIGHT = -270, "Malformed: Weight must be a positive value.";
    temBAD_NFTOKEN_TRANSFER_FEE = -262, "Malformed: The NFToken transfer fee must be between 1 and 5000, inclusive.";
    tefFAILURE = -199, "Failed to apply.";
    tefALREADY = -198, "The exact transaction was already in this ledger.";
    tefBAD_AUTH = -196, "Transaction's public key is not authorized.";
    tefPAST_SEQ = -190, "This sequence number has already passed.";
    tefMASTER_DISABLED = -188, "Master key is disabled.";
    tefMAX_LEDGER = -187, "Ledger sequence too high.";
    tefBAD_SIGNATURE = -186, "A signature is provided for a non-signer.";
    tefBAD_QUORUM = -185, "Signatures provided do not meet the quorum.";
    tefNOT_MULTI_SIGNING = -184, "Account has no appropriate list of multi-signers.";
    tefBAD_AUTH_MASTER = -183, "Auth for unclaimed account needs correct master key.";
    tefNFTOKEN_IS_NOT_TRANSFERABLE = -179, "The specified NFToken is not transferable.";
    terINSUF_FEE_B = -97, "Account balance can't pay fee.";
    terNO_ACCOUNT = -96, "The source account does not exist.";
    terPRE_SEQ = -92, "Missing/inapplicable prior transaction.";
    terQUEUED = -89, "Held until escalated fee drops.";
    tecUNFUNDED_OFFER = 103, "Insufficient balance to fund created offer.";
    tecUNFUNDED_PAYMENT = 104, "Insufficient XRP balance to send.";
    tecNO_ALTERNATIVE_KEY = 130, "The operation would remove the ability to sign transactions with the account.";
    tecNO_ISSUER = 133, "Issuer account does not exist.";
    tecNO_DST = 124, "Destination does not exist. Send XRP to create it.";
    tecNO_DST_INSUF_XRP = 125, "Destination does not exist. Too little XRP sent to create it.";
    tecNO_TARGET = 138, "Target account does not exist.";
    tecNO_PERMISSION = 139, "No permission to perform requested operation.";
    tecNO_ENTRY = 140, "No matching entry found.";
    tecINSUFFICIENT_RESERVE = 141, "Insufficient reserve to complete requested operation.";
    tecNEED_MASTER_KEY = 142, "The operation requires the use of the Master Key.";
    tecDST_TAG_NEEDED = 143, "A destination tag is required.";
    tecEXPIRED = 148, "Expiration time is passed.";
    tecNO_SUITABLE_NFTOKEN_PAGE = 155, "A suitable NFToken page could not be located.";
    tecNFTOKEN_BUY_SELL_MISMATCH = 156, "The NFTokens offered in the buy and sell offers do not match.";
    tecNFTOKEN_OFFER_TYPE_MISMATCH = 157, "The type of the NFToken offer is incorrect.";
    tecCANT_ACCEPT_OWN_NFTOKEN_OFFER = 158, "An NFToken offer cannot be claimed by its owner.";
    tecINSUFFICIENT_FUNDS = 159, "Not enough funds available to complete requested transaction.";
    tecOBJECT_NOT_FOUND = 160, "A requested object could not be located.";
    tecINSUFFICIENT_PAYMENT = 161, "The payment is not sufficient.";
}

impl Ter {
    /// The result of that token, if known.
    pub fn from_token(token: &str) -> Option<Ter> {
        Ter::ALL.iter().copied().find(|t| t.token() == token)
    }

    /// The result of that code, if known.
    pub fn from_code(code: i32) -> Option<Ter> {
        Ter::ALL.iter().copied().find(|t| t.code() == code)
    }

    /// `tes` and `tec` results are included in a ledger; the others are not.
    pub fn is_included(self) -> bool {
        self == Ter::tesSUCCESS || self.is_tec()
    }

    /// A `tec` result: included, fee charged, sequence consumed, nothing else done.
    pub fn is_tec(self) -> bool {
        self.code() >= 100
    }

    pub fn is_success(self) -> bool {
        self == Ter::tesSUCCESS
    }
}

impl std::fmt::Display for Ter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.token())
    }
}
