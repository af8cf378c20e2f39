//! The few protobuf messages the filter hands Envoy, encoded by hand: the access
//! record as a `google.protobuf.Struct`, so that Envoy's JSON access log renders it
//! as a nested object, and the arguments of Envoy's `declare_property` foreign
//! function, which gives that filter state its type.

use serde_json::{Map, Value};

/// The type of the access record's filter state, as Envoy's JSON formats name it.
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(out: &mut Vec<u8>, field: u8, wire_type: u8) {
    out.push((field << 3) | wire_type);
}

fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    key(out, field, LENGTH_DELIMITED);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `google.protobuf.Struct { map<string, Value> fields = 1; }`.
pub fn encode_struct(object: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in object {
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, name.as_bytes());
        bytes_field(&mut entry, 2, &encode_value(value));
        bytes_field(&mut out, 1, &entry);
    }
    out
}

/// `google.protobuf.Value`: null 1, number 2, string 3, bool 4, struct 5, list 6.
fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        Value::Null => {
            key(&mut out, 1, VARINT);
            varint(&mut out, 0);
        }
        Value::Number(number) => {
            key(&mut out, 2, FIXED64);
            let number = number.as_f64().unwrap_or(0.0);
            out.extend_from_slice(&number.to_le_bytes());
        }
        Value::String(text) => bytes_field(&mut out, 3, text.as_bytes()),
        Value::Bool(flag) => {
            key(&mut out, 4, VARINT);
            varint(&mut out, u64::from(*flag));
        }
        Value::Object(object) => bytes_field(&mut out, 5, &encode_struct(object)),
        Value::Array(items) => {
            // `ListValue { repeated Value values = 1; }`
            let mut list = Vec::new();
            for item in items {
                bytes_field(&mut list, 1, &encode_value(item));
            }
            bytes_field(&mut out, 6, &list);
        }
    }
    out
}

/// Envoy's `envoy.source.extensions.common.wasm.DeclarePropertyArguments` for a
/// property of the downstream request holding a protobuf message of `type_url`:
/// name 1, readonly 2, type 3 (`Protobuf` = 3), schema 4 (the type URL), span 5
/// (`DownstreamRequest` = 1).
pub fn declare_protobuf_property(name: &str, type_url: &str) -> Vec<u8> {
    const PROTOBUF: u64 = 3;
    const DOWNSTREAM_REQUEST: u64 = 1;
    let mut out = Vec::new();
    bytes_field(&mut out, 1, name.as_bytes());
    key(&mut out, 3, VARINT);
    varint(&mut out, PROTOBUF);
    bytes_field(&mut out, 4, type_url.as_bytes());
    key(&mut out, 5, VARINT);
    varint(&mut out, DOWNSTREAM_REQUEST);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encoded(value: Value) -> Vec<u8> {
        encode_struct(value.as_object().unwrap())
    }

    #[test]
    fn struct_encoding_matches_protobuf() {
        // {"a": true}: fields entry {key "a", value {bool_value: true}}.
        assert_eq!(
            encoded(json!({"a": true})),
            [0x0a, 0x07, 0x0a, 0x01, b'a', 0x12, 0x02, 0x20, 0x01]
        );
        // {"s": "x"}
        assert_eq!(
            encoded(json!({"s": "x"})),
            [0x0a, 0x08, 0x0a, 0x01, b's', 0x12, 0x03, 0x1a, 0x01, b'x']
        );
        // {"n": 1}: a double, fixed64 little-endian.
        let mut one = vec![0x0a, 0x0e, 0x0a, 0x01, b'n', 0x12, 0x09, 0x11];
        one.extend_from_slice(&1.0f64.to_le_bytes());
        assert_eq!(encoded(json!({"n": 1})), one);
        // {"l": [null]}: list_value { values { null_value: 0 } }.
        assert_eq!(
            encoded(json!({"l": [null]})),
            [0x0a, 0x0b, 0x0a, 0x01, b'l', 0x12, 0x06, 0x32, 0x04, 0x0a, 0x02, 0x08, 0x00]
        );
    }

    #[test]
    fn long_fields_use_multi_byte_lengths() {
        let long = "x".repeat(300);
        let bytes = encoded(json!({ "k": long }));
        // The entry: key (3 bytes), value (1 + 2 + 303 bytes) = 309 = 0xb5 0x02.
        assert_eq!(&bytes[..3], [0x0a, 0xb5, 0x02]);
        assert_eq!(bytes.len(), 3 + 309);
    }

    #[test]
    fn declare_property_arguments() {
        assert_eq!(
            declare_protobuf_property("p", "t"),
            [0x0a, 0x01, b'p', 0x18, 0x03, 0x22, 0x01, b't', 0x28, 0x01]
        );
    }
}
