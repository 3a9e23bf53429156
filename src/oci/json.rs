//! Canonical JSON: the exact bytes galley hashes and writes for manifests, configs and indexes.

use serde::Serialize;

/// A value that could not be serialized (never happens for galley's own types).
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize {what} as canonical JSON: {source}")]
pub struct JsonError {
    what: &'static str,
    source: serde_json::Error,
}

/// Serializes `value` canonically: keys sorted, no insignificant whitespace.
///
/// oci-spec keeps annotations and labels in `HashMap`s whose order changes from run to run, so
/// plain `serde_json::to_vec` would give a different digest each time.
pub fn canonical<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, JsonError> {
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value
        .serialize(&mut ser)
        .map_err(|source| JsonError { what, source })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn hash_maps_serialize_identically_every_time() {
        let map: HashMap<String, String> = (0..32)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let first = super::canonical("test", &map).unwrap();
        for _ in 0..20 {
            let again: HashMap<String, String> = map.clone().into_iter().collect();
            assert_eq!(super::canonical("test", &again).unwrap(), first);
        }
        assert!(first.starts_with(b"{\"k0\":\"v0\",\"k1\":\"v1\",\"k10\""));
    }
}
