//! The XRP Ledger's canonical binary format and its JSON form.
//!
//! Decoding is total: any byte string gives either an object or an error that says
//! where and why, never a panic (see the property tests and the fuzz target).

use serde_json::{Map, Value as Json};

use crate::address::{decode_account_id, encode_account_id};
use crate::fields::{self, field, field_by_code, Field, FieldType};
use crate::ter::Ter;

/// Deepest nesting of objects and arrays accepted when decoding.
const MAX_DEPTH: usize = 12;

/// An amount: XRP in drops, or an issued currency (decoded, never produced here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Amount {
    Drops(i64),
    Issued {
        /// Value as rippled prints it.
        value: String,
        currency: [u8; 20],
        issuer: [u8; 20],
    },
}

/// A field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    UInt8(u8),
    UInt16(u16),
    UInt32(u32),
    UInt64(u64),
    Hash128([u8; 16]),
    Hash160([u8; 20]),
    Hash256([u8; 32]),
    Amount(Amount),
    Blob(Vec<u8>),
    AccountId([u8; 20]),
    Object(StObject),
    /// Elements of an array: each one an object wrapped in a named field (e.g. `Memo`).
    Array(Vec<(&'static Field, StObject)>),
    Vector256(Vec<[u8; 32]>),
}

/// An object: fields with values, kept in canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StObject {
    fields: Vec<(&'static Field, Value)>,
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("binary data ends early at byte {offset}: {what} needs {needed} more bytes")]
    Truncated {
        offset: usize,
        what: &'static str,
        needed: usize,
    },
    #[error("unknown field (type {type_code}, nth {nth}) at byte {offset}")]
    UnknownField {
        type_code: u8,
        nth: u8,
        offset: usize,
    },
    #[error("field {field} at byte {offset} is out of canonical order or repeated")]
    NotCanonical { field: &'static str, offset: usize },
    #[error("field {field} has a bad value: {reason}")]
    BadValue {
        field: &'static str,
        reason: &'static str,
    },
    #[error("objects nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("{0} unexpected bytes after the end of the object")]
    TrailingBytes(usize),
}

/// Why a JSON value could not be turned into an object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonError {
    #[error("expected a JSON object")]
    NotAnObject,
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("field {field} has a bad value: {reason}")]
    BadValue { field: String, reason: String },
}

fn bad(field: &Field, reason: impl Into<String>) -> JsonError {
    JsonError::BadValue {
        field: field.name.to_string(),
        reason: reason.into(),
    }
}

impl StObject {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fields in canonical order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static Field, &Value)> {
        self.fields.iter().map(|(f, v)| (*f, v))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|(f, _)| f.name == name)
            .map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets a field, replacing any earlier value; keeps canonical order.
    /// Panics only on a field name the codec does not know (a programming error).
    pub fn set(&mut self, name: &str, value: Value) {
        #[allow(clippy::expect_used)]
        let f = field(name).expect("field name known to the codec");
        self.insert(f, value);
    }

    fn insert(&mut self, f: &'static Field, value: Value) {
        match self
            .fields
            .binary_search_by_key(&f.order(), |(g, _)| g.order())
        {
            Ok(i) => self.fields[i].1 = value,
            Err(i) => self.fields.insert(i, (f, value)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.fields.iter().position(|(f, _)| f.name == name)?;
        Some(self.fields.remove(i).1)
    }

    pub fn u32(&self, name: &str) -> Option<u32> {
        match self.get(name)? {
            Value::UInt32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn u16(&self, name: &str) -> Option<u16> {
        match self.get(name)? {
            Value::UInt16(v) => Some(*v),
            _ => None,
        }
    }

    pub fn hash256(&self, name: &str) -> Option<[u8; 32]> {
        match self.get(name)? {
            Value::Hash256(v) => Some(*v),
            _ => None,
        }
    }

    pub fn account(&self, name: &str) -> Option<[u8; 20]> {
        match self.get(name)? {
            Value::AccountId(v) => Some(*v),
            _ => None,
        }
    }

    pub fn blob(&self, name: &str) -> Option<&[u8]> {
        match self.get(name)? {
            Value::Blob(v) => Some(v),
            _ => None,
        }
    }

    pub fn amount(&self, name: &str) -> Option<&Amount> {
        match self.get(name)? {
            Value::Amount(v) => Some(v),
            _ => None,
        }
    }

    /// The transaction type's name, when the object is a transaction of a known type.
    pub fn transaction_type(&self) -> Option<&'static str> {
        fields::name_of(fields::TRANSACTION_TYPES, self.u16("TransactionType")?)
    }

    /// Canonical binary encoding of every serialized field.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out, false);
        out
    }

    /// Canonical binary encoding of the fields a signature covers.
    pub fn to_signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out, true);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>, signing_only: bool) {
        for (f, v) in &self.fields {
            if signing_only && !f.signing {
                continue;
            }
            write_header(out, f);
            encode_value(out, v, signing_only);
        }
    }

    /// Decodes a whole byte string as one object.
    pub fn from_bytes(bytes: &[u8]) -> Result<StObject, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let obj = read_object(&mut r, 0, false)?;
        if r.pos != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - r.pos));
        }
        Ok(obj)
    }

    /// The object in rippled's JSON form.
    pub fn to_json(&self) -> Json {
        let mut map = Map::new();
        for (f, v) in &self.fields {
            map.insert(f.name.to_string(), value_to_json(f, v));
        }
        Json::Object(map)
    }

    /// Builds an object from rippled's JSON form. Every key must be a known field.
    pub fn from_json(json: &Json) -> Result<StObject, JsonError> {
        let map = json.as_object().ok_or(JsonError::NotAnObject)?;
        let mut obj = StObject::new();
        for (k, v) in map {
            let f = field(k).ok_or_else(|| JsonError::UnknownField(k.clone()))?;
            obj.insert(f, value_from_json(f, v)?);
        }
        Ok(obj)
    }
}

fn write_header(out: &mut Vec<u8>, f: &Field) {
    let t = f.ty.code();
    let n = f.nth;
    match (t < 16, n < 16) {
        (true, true) => out.push((t << 4) | n),
        (true, false) => out.extend_from_slice(&[t << 4, n]),
        (false, true) => out.extend_from_slice(&[n, t]),
        (false, false) => out.extend_from_slice(&[0, t, n]),
    }
}

/// Writes a variable-length prefix. Lengths beyond the protocol's limit (918,744)
/// cannot be produced by this crate's callers; they are clamped to that limit.
pub fn write_vl(out: &mut Vec<u8>, len: usize) {
    if len <= 192 {
        out.push(len as u8);
    } else if len <= 12_480 {
        let l = len - 193;
        out.extend_from_slice(&[193 + (l >> 8) as u8, (l & 0xff) as u8]);
    } else {
        let l = len.min(918_744) - 12_481;
        out.extend_from_slice(&[
            241 + (l >> 16) as u8,
            ((l >> 8) & 0xff) as u8,
            (l & 0xff) as u8,
        ]);
    }
}

fn encode_amount(out: &mut Vec<u8>, a: &Amount) {
    match a {
        Amount::Drops(d) => {
            let mag = d.unsigned_abs() & 0x3FFF_FFFF_FFFF_FFFF;
            let v = if *d >= 0 {
                mag | 0x4000_0000_0000_0000
            } else {
                mag
            };
            out.extend_from_slice(&v.to_be_bytes());
        }
        Amount::Issued {
            value,
            currency,
            issuer,
        } => {
            out.extend_from_slice(&encode_iou_value(value).to_be_bytes());
            out.extend_from_slice(currency);
            out.extend_from_slice(issuer);
        }
    }
}

fn encode_value(out: &mut Vec<u8>, v: &Value, signing_only: bool) {
    match v {
        Value::UInt8(x) => out.push(*x),
        Value::UInt16(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::UInt32(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::UInt64(x) => out.extend_from_slice(&x.to_be_bytes()),
        Value::Hash128(h) => out.extend_from_slice(h),
        Value::Hash160(h) => out.extend_from_slice(h),
        Value::Hash256(h) => out.extend_from_slice(h),
        Value::Amount(a) => encode_amount(out, a),
        Value::Blob(b) => {
            write_vl(out, b.len());
            out.extend_from_slice(b);
        }
        Value::AccountId(a) => {
            write_vl(out, 20);
            out.extend_from_slice(a);
        }
        Value::Object(o) => {
            o.encode_into(out, signing_only);
            out.push(0xE1);
        }
        Value::Array(items) => {
            for (f, o) in items {
                write_header(out, f);
                o.encode_into(out, signing_only);
                out.push(0xE1);
            }
            out.push(0xF1);
        }
        Value::Vector256(hs) => {
            write_vl(out, hs.len() * 32);
            for h in hs {
                out.extend_from_slice(h);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.bytes.len() - self.pos;
        if rest < n {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                what,
                needed: n - rest,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn vl(&mut self) -> Result<usize, DecodeError> {
        let b1 = self.u8("length prefix")? as usize;
        Ok(match b1 {
            0..=192 => b1,
            193..=240 => {
                let b2 = self.u8("length prefix")? as usize;
                193 + (b1 - 193) * 256 + b2
            }
            241..=254 => {
                let b2 = self.u8("length prefix")? as usize;
                let b3 = self.u8("length prefix")? as usize;
                12_481 + (b1 - 241) * 65_536 + b2 * 256 + b3
            }
            _ => {
                return Err(DecodeError::BadValue {
                    field: "length prefix",
                    reason: "first byte 255 is not a valid length",
                })
            }
        })
    }
}

/// Reads a field header; `None` marks an end marker (object or array).
fn read_header(r: &mut Reader<'_>) -> Result<(u8, u8), DecodeError> {
    let b = r.u8("field header")?;
    let mut t = b >> 4;
    let mut n = b & 0x0F;
    if t == 0 {
        t = r.u8("field header")?;
        if t < 16 {
            return Err(DecodeError::BadValue {
                field: "field header",
                reason: "type code below 16 in the long form",
            });
        }
    }
    if n == 0 {
        n = r.u8("field header")?;
        if n < 16 {
            return Err(DecodeError::BadValue {
                field: "field header",
                reason: "field code below 16 in the long form",
            });
        }
    }
    Ok((t, n))
}

fn read_object(r: &mut Reader<'_>, depth: usize, nested: bool) -> Result<StObject, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let mut obj = StObject::new();
    let mut last: Option<(u8, u8)> = None;
    loop {
        if !nested && r.at_end() {
            return Ok(obj);
        }
        let start = r.pos;
        let (t, n) = read_header(r)?;
        if nested && (t, n) == (14, 1) {
            return Ok(obj);
        }
        let f = field_by_code(t, n).ok_or(DecodeError::UnknownField {
            type_code: t,
            nth: n,
            offset: start,
        })?;
        if last.is_some_and(|l| l >= f.order()) {
            return Err(DecodeError::NotCanonical {
                field: f.name,
                offset: start,
            });
        }
        last = Some(f.order());
        let v = read_value(r, f, depth)?;
        obj.fields.push((f, v));
    }
}

fn read_amount(r: &mut Reader<'_>, f: &'static Field) -> Result<Amount, DecodeError> {
    let head = u64::from_be_bytes(r.array::<8>("amount")?);
    if head & 0x8000_0000_0000_0000 == 0 {
        let mag = head & 0x3FFF_FFFF_FFFF_FFFF;
        if mag > 100_000_000_000_000_000 {
            return Err(DecodeError::BadValue {
                field: f.name,
                reason: "XRP amount above the 100 billion XRP supply",
            });
        }
        let mag = mag as i64;
        Ok(Amount::Drops(if head & 0x4000_0000_0000_0000 != 0 {
            mag
        } else {
            -mag
        }))
    } else {
        let currency = r.array::<20>("currency")?;
        let issuer = r.array::<20>("issuer")?;
        Ok(Amount::Issued {
            value: decode_iou_value(head),
            currency,
            issuer,
        })
    }
}

fn read_value(r: &mut Reader<'_>, f: &'static Field, depth: usize) -> Result<Value, DecodeError> {
    Ok(match f.ty {
        FieldType::UInt8 => Value::UInt8(r.u8(f.name)?),
        FieldType::UInt16 => Value::UInt16(u16::from_be_bytes(r.array::<2>(f.name)?)),
        FieldType::UInt32 => Value::UInt32(u32::from_be_bytes(r.array::<4>(f.name)?)),
        FieldType::UInt64 => Value::UInt64(u64::from_be_bytes(r.array::<8>(f.name)?)),
        FieldType::Hash128 => Value::Hash128(r.array::<16>(f.name)?),
        FieldType::Hash160 => Value::Hash160(r.array::<20>(f.name)?),
        FieldType::Hash256 => Value::Hash256(r.array::<32>(f.name)?),
        FieldType::Amount => Value::Amount(read_amount(r, f)?),
        FieldType::Blob => {
            let len = r.vl()?;
            Value::Blob(r.take(len, f.name)?.to_vec())
        }
        FieldType::AccountId => {
            let len = r.vl()?;
            if len != 20 {
                return Err(DecodeError::BadValue {
                    field: f.name,
                    reason: "an account ID must be 20 bytes",
                });
            }
            Value::AccountId(r.array::<20>(f.name)?)
        }
        FieldType::Vector256 => {
            let len = r.vl()?;
            if len % 32 != 0 {
                return Err(DecodeError::BadValue {
                    field: f.name,
                    reason: "length is not a multiple of 32",
                });
            }
            let mut hs = Vec::with_capacity(len / 32);
            for _ in 0..len / 32 {
                hs.push(r.array::<32>(f.name)?);
            }
            Value::Vector256(hs)
        }
        FieldType::Object => Value::Object(read_object(r, depth + 1, true)?),
        FieldType::Array => {
            if depth + 1 > MAX_DEPTH {
                return Err(DecodeError::TooDeep);
            }
            let mut items = Vec::new();
            loop {
                let start = r.pos;
                let (t, n) = read_header(r)?;
                if (t, n) == (15, 1) {
                    break;
                }
                let inner = field_by_code(t, n).ok_or(DecodeError::UnknownField {
                    type_code: t,
                    nth: n,
                    offset: start,
                })?;
                if inner.ty != FieldType::Object {
                    return Err(DecodeError::BadValue {
                        field: f.name,
                        reason: "array elements must be objects",
                    });
                }
                items.push((inner, read_object(r, depth + 2, true)?));
            }
            Value::Array(items)
        }
    })
}

fn hex_upper(b: &[u8]) -> Json {
    Json::String(hex::encode_upper(b))
}

/// An amount's JSON form: drops as a string, or `{currency, issuer, value}`.
pub fn amount_to_json(a: &Amount) -> Json {
    match a {
        Amount::Drops(d) => Json::String(d.to_string()),
        Amount::Issued {
            value,
            currency,
            issuer,
        } => {
            let cur = if currency[..12].iter().all(|b| *b == 0)
                && currency[15..].iter().all(|b| *b == 0)
                && currency[12..15].iter().all(|b| b.is_ascii_alphanumeric())
            {
                String::from_utf8_lossy(&currency[12..15]).into_owned()
            } else {
                hex::encode_upper(currency)
            };
            serde_json::json!({"currency": cur, "issuer": encode_account_id(issuer), "value": value})
        }
    }
}

fn value_to_json(f: &Field, v: &Value) -> Json {
    match v {
        Value::UInt8(x) if f.name == "TransactionResult" => match Ter::from_code(i32::from(*x)) {
            Some(t) => Json::String(t.token().into()),
            None => Json::from(*x),
        },
        Value::UInt8(x) => Json::from(*x),
        Value::UInt16(x) if f.name == "TransactionType" => {
            match fields::name_of(fields::TRANSACTION_TYPES, *x) {
                Some(n) => Json::String(n.into()),
                None => Json::from(*x),
            }
        }
        Value::UInt16(x) if f.name == "LedgerEntryType" => {
            match fields::name_of(fields::LEDGER_ENTRY_TYPES, *x) {
                Some(n) => Json::String(n.into()),
                None => Json::from(*x),
            }
        }
        Value::UInt16(x) => Json::from(*x),
        Value::UInt32(x) => Json::from(*x),
        Value::UInt64(x) => Json::String(format!("{x:x}")),
        Value::Hash128(h) => hex_upper(h),
        Value::Hash160(h) => hex_upper(h),
        Value::Hash256(h) => hex_upper(h),
        Value::Amount(a) => amount_to_json(a),
        Value::Blob(b) => hex_upper(b),
        Value::AccountId(a) => Json::String(encode_account_id(a)),
        Value::Object(o) => o.to_json(),
        Value::Array(items) => Json::Array(
            items
                .iter()
                .map(|(f, o)| {
                    let mut m = Map::new();
                    m.insert(f.name.to_string(), o.to_json());
                    Json::Object(m)
                })
                .collect(),
        ),
        Value::Vector256(hs) => Json::Array(hs.iter().map(|h| hex_upper(h)).collect()),
    }
}

fn json_uint(f: &Field, v: &Json, max: u64) -> Result<u64, JsonError> {
    let n = match v {
        Json::Number(n) => n.as_u64(),
        Json::String(s) => s.parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| bad(f, format!("expected an unsigned integer, got {v}")))?;
    if n > max {
        return Err(bad(f, format!("{n} exceeds {max}")));
    }
    Ok(n)
}

fn json_hex<const N: usize>(f: &Field, v: &Json) -> Result<[u8; N], JsonError> {
    let s = v.as_str().ok_or_else(|| bad(f, "expected a hex string"))?;
    let bytes = hex::decode(s).map_err(|_| bad(f, format!("{s:?} is not hex")))?;
    bytes
        .try_into()
        .map_err(|_| bad(f, format!("expected {N} bytes of hex")))
}

/// Parses an amount's JSON form (XRP drops only).
pub fn amount_from_json(name: &str, v: &Json) -> Result<Amount, JsonError> {
    let badv = |reason: String| JsonError::BadValue {
        field: name.to_string(),
        reason,
    };
    match v {
        Json::String(s) => {
            let d: i64 = s
                .parse()
                .map_err(|_| badv(format!("{s:?} is not a whole number of drops")))?;
            if d.unsigned_abs() > 100_000_000_000_000_000 {
                return Err(badv(format!("{d} drops exceeds the XRP supply")));
            }
            Ok(Amount::Drops(d))
        }
        Json::Number(n) => match n.as_i64() {
            Some(d) if d.unsigned_abs() <= 100_000_000_000_000_000 => Ok(Amount::Drops(d)),
            _ => Err(badv(format!("{n} is not a valid number of drops"))),
        },
        Json::Object(_) => Err(badv(
            "issued-currency amounts are not supported; amounts are XRP drops".into(),
        )),
        _ => Err(badv(format!("expected drops as a string, got {v}"))),
    }
}

fn value_from_json(f: &'static Field, v: &Json) -> Result<Value, JsonError> {
    Ok(match f.ty {
        FieldType::UInt8 => {
            if f.name == "TransactionResult" {
                if let Some(s) = v.as_str() {
                    let t = Ter::from_token(s).ok_or_else(|| bad(f, format!("unknown {s}")))?;
                    return u8::try_from(t.code())
                        .map(Value::UInt8)
                        .map_err(|_| bad(f, format!("{s} is never in a ledger")));
                }
            }
            Value::UInt8(json_uint(f, v, u64::from(u8::MAX))? as u8)
        }
        FieldType::UInt16 => {
            let table = match f.name {
                "TransactionType" => Some(fields::TRANSACTION_TYPES),
                "LedgerEntryType" => Some(fields::LEDGER_ENTRY_TYPES),
                _ => None,
            };
            match (table, v.as_str()) {
                (Some(t), Some(s)) => Value::UInt16(
                    fields::code_of(t, s).ok_or_else(|| bad(f, format!("unknown type {s:?}")))?,
                ),
                _ => Value::UInt16(json_uint(f, v, u64::from(u16::MAX))? as u16),
            }
        }
        FieldType::UInt32 => Value::UInt32(json_uint(f, v, u64::from(u32::MAX))? as u32),
        FieldType::UInt64 => {
            let s = v.as_str().ok_or_else(|| bad(f, "expected a hex string"))?;
            Value::UInt64(
                u64::from_str_radix(s, 16).map_err(|_| bad(f, format!("{s:?} is not hex")))?,
            )
        }
        FieldType::Hash128 => Value::Hash128(json_hex::<16>(f, v)?),
        FieldType::Hash160 => Value::Hash160(json_hex::<20>(f, v)?),
        FieldType::Hash256 => Value::Hash256(json_hex::<32>(f, v)?),
        FieldType::Amount => Value::Amount(amount_from_json(f.name, v)?),
        FieldType::Blob => {
            let s = v.as_str().ok_or_else(|| bad(f, "expected a hex string"))?;
            Value::Blob(hex::decode(s).map_err(|_| bad(f, format!("{s:?} is not hex")))?)
        }
        FieldType::AccountId => {
            let s = v
                .as_str()
                .ok_or_else(|| bad(f, "expected a classic address"))?;
            Value::AccountId(decode_account_id(s).map_err(|e| bad(f, e.to_string()))?)
        }
        FieldType::Object => Value::Object(StObject::from_json(v)?),
        FieldType::Array => {
            let arr = v.as_array().ok_or_else(|| bad(f, "expected an array"))?;
            let mut items = Vec::with_capacity(arr.len());
            for item in arr {
                let m = item
                    .as_object()
                    .filter(|m| m.len() == 1)
                    .ok_or_else(|| bad(f, "each element must be an object with one key"))?;
                let (k, inner) = m.iter().next().ok_or_else(|| bad(f, "empty element"))?;
                let ef = field(k)
                    .filter(|ef| ef.ty == FieldType::Object)
                    .ok_or_else(|| bad(f, format!("{k:?} is not an object field")))?;
                items.push((ef, StObject::from_json(inner)?));
            }
            Value::Array(items)
        }
        FieldType::Vector256 => {
            let arr = v
                .as_array()
                .ok_or_else(|| bad(f, "expected an array of hashes"))?;
            Value::Vector256(
                arr.iter()
                    .map(|h| json_hex::<32>(f, h))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

/// rippled's text form of an issued-currency value.
fn decode_iou_value(head: u64) -> String {
    let mantissa = head & 0x003F_FFFF_FFFF_FFFF;
    if mantissa == 0 {
        return "0".into();
    }
    let negative = head & 0x4000_0000_0000_0000 == 0;
    let exponent = ((head >> 54) & 0xFF) as i32 - 97;
    let digits = mantissa.to_string();
    let point = digits.len() as i32 + exponent;
    let mut s = if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if point as usize >= digits.len() {
        format!("{}{}", digits, "0".repeat(point as usize - digits.len()))
    } else {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    };
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if negative {
        s.insert(0, '-');
    }
    s
}

/// Re-encodes an issued value decoded by [`decode_iou_value`] (round trip only).
fn encode_iou_value(value: &str) -> u64 {
    let (neg, v) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let mut digits: String = format!("{int}{frac}").trim_start_matches('0').to_string();
    let mut exponent = -(frac.len() as i32);
    if digits.is_empty() {
        return 0x8000_0000_0000_0000;
    }
    while digits.len() < 16 {
        digits.push('0');
        exponent -= 1;
    }
    while digits.len() > 16 {
        digits.pop();
        exponent += 1;
    }
    let mantissa: u64 = digits.parse().unwrap_or(0);
    let mut head = 0x8000_0000_0000_0000 | mantissa;
    if !neg {
        head |= 0x4000_0000_0000_0000;
    }
    head | ((((exponent + 97).clamp(0, 255)) as u64) << 54)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vl_lengths_round_trip() {
        for len in [0usize, 1, 192, 193, 1000, 12_480, 12_481, 100_000, 918_744] {
            let mut out = Vec::new();
            write_vl(&mut out, len);
            let mut r = Reader {
                bytes: &out,
                pos: 0,
            };
            assert_eq!(r.vl().unwrap(), len, "length {len}");
            assert!(r.at_end());
        }
    }

    #[test]
    fn payment_json_binary_round_trip() {
        let json = serde_json::json!({
            "TransactionType": "Payment",
            "Account": "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh",
            "Destination": "rPT1Sjq2YGrBMTttX4GZHjKu9dyfzbpAYe",
            "Amount": "1000000",
            "Fee": "10",
            "Sequence": 1,
            "Flags": 0,
            "DestinationTag": 7,
            "Memos": [{"Memo": {"MemoType": "6265727468", "MemoData": "ABCD"}}],
            "SigningPubKey": "",
        });
        let obj = StObject::from_json(&json).unwrap();
        let bytes = obj.to_bytes();
        let back = StObject::from_bytes(&bytes).unwrap();
        assert_eq!(back, obj);
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn truncated_blob_is_an_error_or_a_shorter_object() {
        let json =
            serde_json::json!({"TransactionType": "AccountSet", "Domain": "AABBCC", "Fee": "10"});
        let bytes = StObject::from_json(&json).unwrap().to_bytes();
        for cut in 0..bytes.len() {
            // A top-level object has no end marker: a cut at a field boundary is a
            // valid object with fewer fields; any other cut is an error.
            match StObject::from_bytes(&bytes[..cut]) {
                Ok(obj) => assert_eq!(obj.to_bytes(), &bytes[..cut], "cut at {cut}"),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        assert!(StObject::from_bytes(&bytes[..5]).is_err());
    }

    #[test]
    fn out_of_order_fields_are_refused() {
        // Fee (Amount) before TransactionType (UInt16).
        let mut bytes = vec![0x68];
        bytes.extend_from_slice(&(0x4000_0000_0000_000Au64).to_be_bytes());
        bytes.extend_from_slice(&[0x12, 0x00, 0x00]);
        assert!(matches!(
            StObject::from_bytes(&bytes),
            Err(DecodeError::NotCanonical {
                field: "TransactionType",
                ..
            })
        ));
    }

    #[test]
    fn iou_values_format_like_rippled() {
        let head = encode_iou_value("1.5");
        assert_eq!(decode_iou_value(head), "1.5");
        assert_eq!(decode_iou_value(encode_iou_value("-120")), "-120");
        assert_eq!(decode_iou_value(encode_iou_value("0.0001")), "0.0001");
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = StObject::from_bytes(&bytes);
        }
    }
}
