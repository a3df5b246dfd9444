//! A small BSON codec for the user protocol's BSON mode (the subset HotPocket uses:
//! double, string, document, array, binary, bool, null, int32, int64, uint64 timestamp).

/// A BSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Bson {
    Double(f64),
    String(String),
    Document(Doc),
    Array(Vec<Bson>),
    Binary(Vec<u8>),
    Bool(bool),
    Null,
    Int32(i32),
    Int64(i64),
    /// BSON type 0x11, which encoders use for unsigned 64-bit values.
    UInt64(u64),
}

impl Bson {
    /// The value as an unsigned integer when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Bson::Int32(v) => u64::try_from(*v).ok(),
            Bson::Int64(v) => u64::try_from(*v).ok(),
            Bson::UInt64(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Bson::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Bson::Binary(b) => Some(b),
            _ => None,
        }
    }
}

/// A BSON document: ordered key/value pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc(pub Vec<(String, Bson)>);

/// Why bytes are not a BSON document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed bson at byte {at}: {problem}")]
pub struct BsonError {
    pub at: usize,
    pub problem: &'static str,
}

const MAX_DEPTH: usize = 32;

impl Doc {
    pub fn new() -> Doc {
        Doc(Vec::new())
    }

    /// Adds a field (builder style).
    pub fn with(mut self, key: &str, value: Bson) -> Doc {
        self.0.push((key.to_owned(), value));
        self
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Bson)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn get(&self, key: &str) -> Option<&Bson> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Encodes the document.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_doc(self.0.iter().map(|(k, v)| (k.as_str(), v)), &mut out);
        out
    }

    /// Decodes one document that spans all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Doc, BsonError> {
        let (doc, used) = decode_doc(bytes, 0, 0)?;
        if used != bytes.len() {
            return Err(BsonError {
                at: used,
                problem: "trailing bytes",
            });
        }
        Ok(Doc(doc))
    }
}

fn encode_doc<'a>(fields: impl Iterator<Item = (&'a str, &'a Bson)>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (key, value) in fields {
        out.push(type_byte(value));
        out.extend_from_slice(key.replace('\0', "").as_bytes());
        out.push(0);
        encode_value(value, out);
    }
    out.push(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn type_byte(value: &Bson) -> u8 {
    match value {
        Bson::Double(_) => 0x01,
        Bson::String(_) => 0x02,
        Bson::Document(_) => 0x03,
        Bson::Array(_) => 0x04,
        Bson::Binary(_) => 0x05,
        Bson::Bool(_) => 0x08,
        Bson::Null => 0x0A,
        Bson::Int32(_) => 0x10,
        Bson::UInt64(_) => 0x11,
        Bson::Int64(_) => 0x12,
    }
}

fn encode_value(value: &Bson, out: &mut Vec<u8>) {
    match value {
        Bson::Double(v) => out.extend_from_slice(&v.to_le_bytes()),
        Bson::String(s) => {
            out.extend_from_slice(&((s.len() + 1) as i32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        Bson::Document(d) => encode_doc(d.0.iter().map(|(k, v)| (k.as_str(), v)), out),
        Bson::Array(items) => {
            let keys: Vec<String> = (0..items.len()).map(|i| i.to_string()).collect();
            encode_doc(keys.iter().map(String::as_str).zip(items.iter()), out);
        }
        Bson::Binary(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.push(0);
            out.extend_from_slice(b);
        }
        Bson::Bool(b) => out.push(u8::from(*b)),
        Bson::Null => {}
        Bson::Int32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Bson::UInt64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Bson::Int64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn take(bytes: &[u8], at: usize, n: usize) -> Result<&[u8], BsonError> {
    bytes
        .get(
            at..at.checked_add(n).ok_or(BsonError {
                at,
                problem: "length overflow",
            })?,
        )
        .ok_or(BsonError {
            at,
            problem: "truncated",
        })
}

fn i32_at(bytes: &[u8], at: usize) -> Result<i32, BsonError> {
    let b = take(bytes, at, 4)?;
    Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, BsonError> {
    let b = take(bytes, at, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn len_at(bytes: &[u8], at: usize) -> Result<usize, BsonError> {
    usize::try_from(i32_at(bytes, at)?).map_err(|_| BsonError {
        at,
        problem: "negative length",
    })
}

/// Decodes the document at `at`; returns its fields and the offset after it.
fn decode_doc(
    bytes: &[u8],
    at: usize,
    depth: usize,
) -> Result<(Vec<(String, Bson)>, usize), BsonError> {
    if depth > MAX_DEPTH {
        return Err(BsonError {
            at,
            problem: "nested too deep",
        });
    }
    let len = len_at(bytes, at)?;
    if len < 5 {
        return Err(BsonError {
            at,
            problem: "document length too small",
        });
    }
    let end = at + len;
    take(bytes, at, len)?;
    if bytes[end - 1] != 0 {
        return Err(BsonError {
            at: end - 1,
            problem: "document not terminated",
        });
    }
    let mut pos = at + 4;
    let mut fields = Vec::new();
    while pos < end - 1 {
        let kind = bytes[pos];
        pos += 1;
        let key_end = bytes[pos..end]
            .iter()
            .position(|&b| b == 0)
            .ok_or(BsonError {
                at: pos,
                problem: "key not terminated",
            })?;
        let key = std::str::from_utf8(&bytes[pos..pos + key_end])
            .map_err(|_| BsonError {
                at: pos,
                problem: "key not utf-8",
            })?
            .to_owned();
        pos += key_end + 1;
        let (value, next) = decode_value(bytes, kind, pos, depth)?;
        if next > end - 1 {
            return Err(BsonError {
                at: pos,
                problem: "value runs past its document",
            });
        }
        fields.push((key, value));
        pos = next;
    }
    Ok((fields, end))
}

fn decode_value(
    bytes: &[u8],
    kind: u8,
    at: usize,
    depth: usize,
) -> Result<(Bson, usize), BsonError> {
    Ok(match kind {
        0x01 => (Bson::Double(f64::from_bits(u64_at(bytes, at)?)), at + 8),
        0x02 => {
            let len = len_at(bytes, at)?;
            if len == 0 {
                return Err(BsonError {
                    at,
                    problem: "string length zero",
                });
            }
            let body = take(bytes, at + 4, len)?;
            let text = std::str::from_utf8(&body[..len - 1]).map_err(|_| BsonError {
                at,
                problem: "string not utf-8",
            })?;
            (Bson::String(text.to_owned()), at + 4 + len)
        }
        0x03 => {
            let (fields, next) = decode_doc(bytes, at, depth + 1)?;
            (Bson::Document(Doc(fields)), next)
        }
        0x04 => {
            let (fields, next) = decode_doc(bytes, at, depth + 1)?;
            (
                Bson::Array(fields.into_iter().map(|(_, v)| v).collect()),
                next,
            )
        }
        0x05 => {
            let len = len_at(bytes, at)?;
            let body = take(bytes, at + 5, len)?;
            (Bson::Binary(body.to_vec()), at + 5 + len)
        }
        0x08 => (Bson::Bool(take(bytes, at, 1)?[0] != 0), at + 1),
        0x0A => (Bson::Null, at),
        0x10 => (Bson::Int32(i32_at(bytes, at)?), at + 4),
        0x11 => (Bson::UInt64(u64_at(bytes, at)?), at + 8),
        0x12 => (Bson::Int64(u64_at(bytes, at)? as i64), at + 8),
        _ => {
            return Err(BsonError {
                at,
                problem: "unsupported element type",
            })
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_nested_documents() {
        let doc = Doc::new()
            .with("type", Bson::String("contract_input".into()))
            .with("sig", Bson::Binary(vec![1, 2, 3]))
            .with("n", Bson::Int64(-5))
            .with(
                "list",
                Bson::Array(vec![Bson::Null, Bson::Bool(true), Bson::Int32(7)]),
            )
            .with(
                "sub",
                Bson::Document(Doc::new().with("x", Bson::Double(1.5))),
            );
        let bytes = doc.encode();
        assert_eq!(Doc::decode(&bytes).unwrap(), doc);
    }

    #[test]
    fn known_encoding_of_a_small_document() {
        // {"a": 1} as int32: 12 bytes.
        let bytes = Doc::new().with("a", Bson::Int32(1)).encode();
        assert_eq!(bytes, vec![12, 0, 0, 0, 0x10, b'a', 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x05\0\0\0",
            b"\xff\xff\xff\x7f\0",
            b"\x0c\0\0\0\x02a\0\xff\xff\xff\xff\0",
        ] {
            assert!(Doc::decode(bytes).is_err());
        }
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep = Doc::new().with("d", Bson::Document(Doc(deep))).0;
        }
        assert!(Doc::decode(&Doc(deep).encode()).is_err());
    }
}
