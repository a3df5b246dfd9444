//! Validated values that appear in several formats: transaction hashes, token ids, contract
//! ids, host names, country codes, bounded text, XRP amounts and account addresses.
//!
//! Each type checks its value when it is built (`FromStr` / `TryFrom`), so a value that exists
//! is valid, and each serializes as a JSON / TOML string in its canonical text form.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a text is not a valid value of a field type. `what` names the type.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ValueError {
    #[error("{what}: expected {expected} hex digits, got {len} characters")]
    HexLength {
        what: &'static str,
        expected: usize,
        len: usize,
    },
    #[error("{what}: not hexadecimal")]
    NotHex { what: &'static str },
    #[error("{what}: {problem}")]
    Invalid { what: &'static str, problem: String },
}

fn invalid(what: &'static str, problem: impl Into<String>) -> ValueError {
    ValueError::Invalid {
        what,
        problem: problem.into(),
    }
}

/// Implements `Serialize` through `Display` and `Deserialize` through `FromStr`, so that the
/// text form is the only wire form and every value read is validated.
macro_rules! serde_as_string {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_string;

/// `as_str`, `Display` and the string serde of a `String` newtype validated by `FromStr`.
macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        serde_as_string!($name);
    };
}

fn decode_hex<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], ValueError> {
    if text.len() != N * 2 {
        return Err(ValueError::HexLength {
            what,
            expected: N * 2,
            len: text.chars().count(),
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| ValueError::NotHex { what })?;
    Ok(out)
}

/// Declares a 32-byte identifier written as 64 hex digits (upper case on output, either case
/// on input), as the XRP Ledger writes transaction hashes and NFToken ids.
macro_rules! hash256 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(text: &str) -> Result<Self, ValueError> {
                decode_hex($what, text).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode_upper(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        serde_as_string!($name);
    };
}

hash256!(
    /// The hash (id) of a ledger transaction: 64 hex digits.
    TxHash,
    "transaction hash"
);
hash256!(
    /// An XLS-20 NFTokenID (the lease token): 64 hex digits.
    NfTokenId,
    "NFToken id"
);
hash256!(
    /// The ledger index of an NFToken offer (`NFTokenOffer` object): 64 hex digits.
    OfferId,
    "NFToken offer id"
);

/// A HotPocket contract id: a UUID, written `8-4-4-4-12` in lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContractId(pub [u8; 16]);

impl FromStr for ContractId {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "contract id";
        let groups: Vec<&str> = text.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|group| group.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(invalid(
                WHAT,
                format!("expected a UUID like 8-4-4-4-12 hex digits, got {text:?}"),
            ));
        }
        decode_hex::<16>(WHAT, &groups.concat()).map(Self)
    }
}

impl fmt::Display for ContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for ContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContractId({self})")
    }
}

serde_as_string!(ContractId);

/// Where an instance or host is reached: a DNS name (RFC 1123 labels, at most 253 characters)
/// or an IPv4 / IPv6 literal.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct HostAddress(String);

impl FromStr for HostAddress {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "host address";
        if text.parse::<IpAddr>().is_ok() {
            return Ok(Self(text.to_owned()));
        }
        if text.is_empty() || text.len() > 253 {
            return Err(invalid(
                WHAT,
                format!("must be 1 to 253 characters, got {}", text.len()),
            ));
        }
        for label in text.split('.') {
            let valid = (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(invalid(
                    WHAT,
                    format!(
                        "{text:?} is neither an IP address nor a DNS name (bad label {label:?})"
                    ),
                ));
            }
        }
        Ok(Self(text.to_owned()))
    }
}

string_newtype!(HostAddress);

/// Where hosts' peer ports are reached when not at their domain: a [`HostAddress`] of at
/// most [`PeerHost::MAX_LEN`] characters, so that instance details naming both fit a memo.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PeerHost(HostAddress);

impl PeerHost {
    pub const MAX_LEN: usize = 40;

    pub fn address(&self) -> &HostAddress {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for PeerHost {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        if text.len() > Self::MAX_LEN {
            return Err(invalid(
                "peer host",
                format!("{} characters, at most {}", text.len(), Self::MAX_LEN),
            ));
        }
        text.parse().map(Self)
    }
}

impl fmt::Display for PeerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

serde_as_string!(PeerHost);

/// Where a node's peer port is reached: `host:port`, the host a [`HostAddress`] (an IPv6
/// literal in brackets, `[::1]:22861`) and the port 1 to 65535.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PeerAddress(String);

impl PeerAddress {
    /// The longest `host:port` accepted: four of them must fit one purchase's memo.
    pub const MAX_LEN: usize = 64;

    pub fn new(host: &HostAddress, port: std::num::NonZeroU16) -> Self {
        if host.as_str().contains(':') {
            Self(format!("[{host}]:{port}"))
        } else {
            Self(format!("{host}:{port}"))
        }
    }
}

impl FromStr for PeerAddress {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "peer address";
        if text.len() > Self::MAX_LEN {
            return Err(invalid(
                WHAT,
                format!("{} characters, at most {}", text.len(), Self::MAX_LEN),
            ));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(invalid(WHAT, format!("{text:?} is not host:port")));
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid(
                WHAT,
                format!("{text:?}: {host:?} is not an address"),
            ));
        }
        let host: HostAddress = host
            .parse()
            .map_err(|e: ValueError| invalid(WHAT, format!("{text:?}: {e}")))?;
        let port = port
            .parse::<std::num::NonZeroU16>()
            .map_err(|_| invalid(WHAT, format!("{text:?}: port {port:?} is not 1 to 65535")))?;
        Ok(Self::new(&host, port))
    }
}

string_newtype!(PeerAddress);

/// An ISO 3166-1 alpha-2 country code: two upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for CountryCode {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        match text.as_bytes() {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok(Self([*a, *b])),
            _ => Err(invalid(
                "country code",
                format!("expected two upper-case letters (ISO 3166-1 alpha-2), got {text:?}"),
            )),
        }
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({self})")
    }
}

serde_as_string!(CountryCode);

/// The name of an instance on its host: 1 to 32 characters of `a-z 0-9 _ -`, starting with a
/// letter or digit (usable as a container name).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct InstanceName(String);

impl FromStr for InstanceName {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        let first_ok = text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !(1..=32).contains(&text.len()) || !first_ok || !rest_ok {
            return Err(invalid(
                "instance name",
                format!("expected 1 to 32 characters of a-z 0-9 _ - starting with a letter or digit, got {text:?}"),
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

string_newtype!(InstanceName);

/// Human-readable text of at most `MAX` bytes of UTF-8, without control characters.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> FromStr for Text<MAX> {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        if text.len() > MAX {
            return Err(invalid(
                "text",
                format!("at most {MAX} bytes of UTF-8, got {}", text.len()),
            ));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(invalid(
                "text",
                format!("control character {c:?} is not allowed"),
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

impl<const MAX: usize> fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const MAX: usize> serde::Serialize for Text<MAX> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de, const MAX: usize> serde::Deserialize<'de> for Text<MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The largest amount of XRP in drops (100 billion XRP): the ledger's own limit.
pub const MAX_DROPS: u64 = 100_000_000_000_000_000;

/// A positive amount of XRP in drops (1 XRP = 1 000 000 drops), written as the ledger writes
/// amounts: a decimal string without sign or leading zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Drops(u64);

impl Drops {
    /// 1000 drops, the host config's default highest fee.
    pub const DEFAULT_MAX_FEE: Drops = Drops(1000);

    pub fn new(drops: u64) -> Result<Self, ValueError> {
        if drops == 0 || drops > MAX_DROPS {
            return Err(invalid(
                "drops",
                format!("must be between 1 and {MAX_DROPS}, got {drops}"),
            ));
        }
        Ok(Self(drops))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for Drops {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        Self::new(parse_canonical_u64("drops", text)?)
    }
}

impl fmt::Display for Drops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

serde_as_string!(Drops);

/// Parses a decimal integer in its one canonical form: ASCII digits only, no sign, no
/// leading zero (except "0" itself), no surrounding space.
pub(crate) fn parse_canonical_u64(what: &'static str, text: &str) -> Result<u64, ValueError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            what,
            format!("expected a decimal number, got {text:?}"),
        ));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(invalid(
            what,
            format!("leading zeros are not allowed, got {text:?}"),
        ));
    }
    text.parse()
        .map_err(|_| invalid(what, format!("{text} is too large")))
}

/// The alphabet of the XRP Ledger's base58 encoding.
const RIPPLE_ALPHABET: &[u8; 58] = b"rpshnaf39wBUDNEGHJKLM4PQRST7VWXYZ2bcdeCg65jkm8oFqi1tuvAxyz";

/// A classic XRP Ledger account address (`r…`): base58 of `0x00 ‖ AccountID(20) ‖ checksum(4)`,
/// the checksum being the first 4 bytes of SHA-256(SHA-256(`0x00 ‖ AccountID`)).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountAddress([u8; 20]);

impl AccountAddress {
    pub fn from_account_id(account_id: [u8; 20]) -> Self {
        Self(account_id)
    }

    pub fn account_id(&self) -> &[u8; 20] {
        &self.0
    }
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let twice = Sha256::digest(Sha256::digest(payload));
    [twice[0], twice[1], twice[2], twice[3]]
}

impl FromStr for AccountAddress {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "account address";
        if !text.starts_with('r') || !(25..=35).contains(&text.len()) {
            return Err(invalid(
                WHAT,
                format!("expected 25 to 35 base58 characters starting with 'r', got {text:?}"),
            ));
        }
        // Base58 → big-endian bytes; a leading 'r' (digit zero) is a leading zero byte.
        let mut number: Vec<u8> = Vec::with_capacity(25);
        for c in text.bytes() {
            let digit = RIPPLE_ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or_else(|| {
                    invalid(WHAT, format!("{:?} is not a base58 character", c as char))
                })?;
            let mut carry = digit as u32;
            for byte in number.iter_mut().rev() {
                carry += u32::from(*byte) * 58;
                *byte = (carry & 0xFF) as u8;
                carry >>= 8;
            }
            while carry > 0 {
                number.insert(0, (carry & 0xFF) as u8);
                carry >>= 8;
            }
        }
        let leading_zeros = text.bytes().take_while(|&c| c == b'r').count();
        let mut bytes = vec![0u8; leading_zeros];
        bytes.extend(number.into_iter().skip_while(|&b| b == 0));
        if bytes.len() != 25 || bytes[0] != 0 {
            return Err(invalid(
                WHAT,
                format!("{text:?} does not decode to an account id"),
            ));
        }
        if checksum(&bytes[..21]) != bytes[21..] {
            return Err(invalid(WHAT, format!("{text:?} has a bad checksum")));
        }
        let mut id = [0u8; 20];
        id.copy_from_slice(&bytes[1..21]);
        Ok(Self(id))
    }
}

impl fmt::Display for AccountAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut payload = Vec::with_capacity(25);
        payload.push(0u8);
        payload.extend_from_slice(&self.0);
        payload.extend_from_slice(&checksum(&payload));
        // Big-endian bytes → base58 digits.
        let mut digits: Vec<u8> = Vec::with_capacity(35);
        for &byte in &payload {
            let mut carry = u32::from(byte);
            for digit in digits.iter_mut().rev() {
                carry += u32::from(*digit) << 8;
                *digit = (carry % 58) as u8;
                carry /= 58;
            }
            while carry > 0 {
                digits.insert(0, (carry % 58) as u8);
                carry /= 58;
            }
        }
        let leading_zeros = payload.iter().take_while(|&&b| b == 0).count();
        let text: String = std::iter::repeat_n('r', leading_zeros)
            .chain(
                digits
                    .iter()
                    .map(|&d| RIPPLE_ALPHABET[usize::from(d)] as char),
            )
            .collect();
        f.write_str(&text)
    }
}

impl fmt::Debug for AccountAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountAddress({self})")
    }
}

serde_as_string!(AccountAddress);
