//! The JSON codec shared by every memo payload and sealed payload.
//!
//! A payload is a JSON object (UTF-8, no byte-order mark) whose member `"v"` is the format
//! version, `1` for everything in this crate; the other members are those of the typed
//! struct. Unknown members are rejected, so a reader never silently drops data it does not
//! understand: a change of members is a change of version.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

/// The version written in member `"v"` of every payload this crate defines.
pub const PAYLOAD_VERSION: u64 = 1;

/// Why bytes are not a valid payload of the named format.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PayloadError {
    #[error("{format}: not a JSON object: {problem}")]
    NotJson {
        format: &'static str,
        problem: String,
    },
    #[error("{format}: field `v`: unsupported version {found}, this build reads version {PAYLOAD_VERSION}")]
    Version { format: &'static str, found: String },
    #[error("{format}: field `{field}`: {problem}")]
    Field {
        format: &'static str,
        field: String,
        problem: String,
    },
}

/// Serializes `value` as a payload: its members plus `"v": 1`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // The types of this crate serialize to JSON objects with string keys, which cannot fail;
    // anything else becomes a payload holding only the version.
    let mut object = match serde_json::to_value(value) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    object.insert("v".to_owned(), Value::from(PAYLOAD_VERSION));
    Value::Object(object).to_string().into_bytes()
}

/// Parses a payload of `format`, checking its version and every member.
pub fn decode<T: DeserializeOwned>(format: &'static str, bytes: &[u8]) -> Result<T, PayloadError> {
    let not_json = |problem: String| PayloadError::NotJson { format, problem };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| not_json(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(not_json(format!("found {}", kind_of(&value))));
    };
    match object.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(PAYLOAD_VERSION) => {}
        Some(other) => {
            return Err(PayloadError::Version {
                format,
                found: other.to_string(),
            })
        }
        None => {
            return Err(PayloadError::Field {
                format,
                field: "v".to_owned(),
                problem: "missing (the format version)".to_owned(),
            })
        }
    }
    serde_path_to_error::deserialize(Value::Object(object)).map_err(|error| {
        let problem = error.inner().to_string();
        PayloadError::Field {
            format,
            field: field_path(&error.path().to_string(), &problem),
            problem,
        }
    })
}

/// The dotted path of the field an error is about. serde reports a missing or unknown member
/// at the level of its object (path `.` at the top), naming the member in back-quotes
/// ("missing field `x`"); join the two.
pub(crate) fn field_path(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|start| message.strip_prefix(start))
        .and_then(|rest| rest.split('`').next());
    match named {
        // An unknown member is already the last element of the path; a missing one is not.
        Some(name) if path == "." => name.to_owned(),
        Some(name) if path != name && !path.ends_with(&format!(".{name}")) => {
            format!("{path}.{name}")
        }
        _ => path.to_owned(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
