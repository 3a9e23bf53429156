//! Canonical JSON: the exact bytes galley hashes and writes for manifests, configs and indexes.
//!
//! Valid RFC 8259 JSON with object keys sorted (byte order) at every depth and no insignificant
//! whitespace. Strings are escaped as serde_json escapes them: `"`, `\` and every control
//! character (a tab in a base image's history, a newline in a label), nothing else.

use serde::Serialize;
use serde_json::Value;

/// A value that could not be serialized (never happens for galley's own types).
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize {what} as canonical JSON: {source}")]
pub struct JsonError {
    what: &'static str,
    source: serde_json::Error,
}

/// Serializes `value` canonically: keys sorted, no insignificant whitespace, control characters
/// escaped.
///
/// oci-spec keeps annotations and labels in `HashMap`s whose order changes from run to run, so
/// plain `serde_json::to_vec` would give a different digest each time. The keys are sorted here
/// rather than by relying on `serde_json::Map` being a `BTreeMap`: a crate in the graph enabling
/// serde_json's `preserve_order` would silently turn that off.
pub fn canonical<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, JsonError> {
    let value = serde_json::to_value(value).map_err(|source| JsonError { what, source })?;
    let mut out = Vec::new();
    write_value(&mut out, &value).map_err(|source| JsonError { what, source })?;
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_value(out, v)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v)?;
            }
            out.push(b']');
        }
        // Scalars: serde_json writes valid, compact JSON (strings escaped per RFC 8259).
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::canonical;

    #[test]
    fn hash_maps_serialize_identically_every_time() {
        let map: HashMap<String, String> = (0..32)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let first = canonical("test", &map).unwrap();
        for _ in 0..20 {
            let again: HashMap<String, String> = map.clone().into_iter().collect();
            assert_eq!(canonical("test", &again).unwrap(), first);
        }
        assert!(first.starts_with(b"{\"k0\":\"v0\",\"k1\":\"v1\",\"k10\""));
    }

    #[test]
    fn control_characters_are_escaped_so_the_output_is_valid_json() {
        let v = serde_json::json!({
            "history": [{"created_by": "/bin/sh -c\tapk add x"}],
            "Labels": {"multi": "line one\nline two\r", "nul": "a\u{0}b", "bell": "\u{7}"},
            "plain": "é ✓ / <>",
        });
        let bytes = canonical("test", &v).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            bytes.iter().all(|b| *b >= 0x20),
            "raw control byte in {text}"
        );
        assert_eq!(
            text,
            r#"{"Labels":{"bell":"\u0007","multi":"line one\nline two\r","nul":"a\u0000b"},"history":[{"created_by":"/bin/sh -c\tapk add x"}],"plain":"é ✓ / <>"}"#
        );
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn nested_keys_are_sorted_by_bytes() {
        let v =
            serde_json::json!({"b": {"z": 1, "a": [ {"y": true, "x": null} ]}, "B": 2, "a": -3});
        assert_eq!(
            canonical("test", &v).unwrap(),
            br#"{"B":2,"a":-3,"b":{"a":[{"x":null,"y":true}],"z":1}}"#
        );
    }
}
