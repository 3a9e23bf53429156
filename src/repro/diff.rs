//! Where two builds' bytes differ: JSON documents key by key, layers file by file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One key whose value differs between two JSON documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDiff {
    /// The key's path: `config.Env[1]`, `annotations."org.opencontainers.image.created"`.
    pub key: String,
    /// The value in the recorded document (compact JSON; absent: the key is not there).
    pub recorded: Option<String>,
    /// The value in the rebuilt document.
    pub rebuilt: Option<String>,
}

/// The keys whose values differ, in document order (object keys sorted).
pub fn json(recorded: &Value, rebuilt: &Value) -> Vec<KeyDiff> {
    let mut out = Vec::new();
    walk("", Some(recorded), Some(rebuilt), &mut out);
    out
}

fn show(v: Option<&Value>) -> Option<String> {
    v.map(|v| {
        let s = v.to_string();
        if s.chars().count() > 160 {
            format!("{}…", s.chars().take(160).collect::<String>())
        } else {
            s
        }
    })
}

fn child_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if plain {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<KeyDiff>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                walk(&child_key(path, k), x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                walk(&format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        (a, b) if a != b => out.push(KeyDiff {
            key: if path.is_empty() {
                "(document)".into()
            } else {
                path.into()
            },
            recorded: show(a),
            rebuilt: show(b),
        }),
        _ => {}
    }
}

/// What a tar entry says about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: String,
    size: u64,
    mode: String,
    owner: String,
    mtime: u64,
    link: Option<String>,
    sha256: String,
}

/// One path that differs between two layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDiff {
    /// The path in the image (`/app/tiny`).
    pub path: String,
    /// `added` (only in the rebuilt layer), `removed` (only in the recorded one) or `changed`.
    pub change: String,
    /// For a changed path: each field that differs (size, mode, owner, mtime, type, link,
    /// content).
    pub fields: Vec<KeyDiff>,
}

/// How two layers differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LayerDiff {
    pub files: Vec<FileDiff>,
    /// The entries are the same but come in another order.
    pub order: bool,
    /// Both tar streams are byte for byte the same: only the compression differs.
    pub tar_identical: bool,
}

/// Errors reading a layer.
#[derive(Debug, thiserror::Error)]
#[error("reading a layer: {0}")]
pub struct LayerError(#[from] std::io::Error);

fn untar(blob: &[u8]) -> Result<Vec<u8>, LayerError> {
    if blob.starts_with(&[0x1f, 0x8b]) {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(blob).read_to_end(&mut tar)?;
        Ok(tar)
    } else {
        Ok(blob.to_vec())
    }
}

fn entries(tar: &[u8]) -> Result<(Vec<String>, BTreeMap<String, Entry>), LayerError> {
    let mut order = Vec::new();
    let mut map = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries()? {
        let mut e = e?;
        let h = e.header().clone();
        let path = format!(
            "/{}",
            e.path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
        );
        let mut content = Vec::new();
        e.read_to_end(&mut content)?;
        let entry = Entry {
            kind: format!("{:?}", h.entry_type()),
            size: h.size()?,
            mode: format!("{:o}", h.mode()?),
            owner: format!("{}:{}", h.uid()?, h.gid()?),
            mtime: h.mtime()?,
            link: h.link_name()?.map(|l| l.to_string_lossy().into_owned()),
            sha256: crate::oci::Digest::of(&content).hex().to_string(),
        };
        order.push(path.clone());
        map.insert(path, entry);
    }
    Ok((order, map))
}

/// Compares two layer blobs (gzip or plain tar) path by path.
pub fn layer(recorded: &[u8], rebuilt: &[u8]) -> Result<LayerDiff, LayerError> {
    let (ta, tb) = (untar(recorded)?, untar(rebuilt)?);
    let (oa, a) = entries(&ta)?;
    let (ob, b) = entries(&tb)?;
    let mut files = Vec::new();
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for p in paths {
        match (a.get(p), b.get(p)) {
            (Some(_), None) => files.push(FileDiff {
                path: p.clone(),
                change: "removed".into(),
                fields: Vec::new(),
            }),
            (None, Some(_)) => files.push(FileDiff {
                path: p.clone(),
                change: "added".into(),
                fields: Vec::new(),
            }),
            (Some(x), Some(y)) if x != y => {
                let mut fields = Vec::new();
                let mut field = |name: &str, f: &dyn Fn(&Entry) -> String| {
                    let (l, r) = (f(x), f(y));
                    if l != r {
                        fields.push(KeyDiff {
                            key: name.into(),
                            recorded: Some(l),
                            rebuilt: Some(r),
                        });
                    }
                };
                field("type", &|e| e.kind.clone());
                field("size", &|e| e.size.to_string());
                field("mode", &|e| e.mode.clone());
                field("owner", &|e| e.owner.clone());
                field("mtime", &|e| e.mtime.to_string());
                field("link", &|e| e.link.clone().unwrap_or_default());
                field("content sha256", &|e| e.sha256.clone());
                files.push(FileDiff {
                    path: p.clone(),
                    change: "changed".into(),
                    fields,
                });
            }
            _ => {}
        }
    }
    Ok(LayerDiff {
        order: files.is_empty() && oa != ob,
        tar_identical: ta == tb,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_differences_name_the_key() {
        let a = serde_json::json!({"created": "1", "config": {"Env": ["A=1", "B=2"]},
            "annotations": {"org.opencontainers.image.created": "x"}});
        let b = serde_json::json!({"created": "2", "config": {"Env": ["A=1"]},
            "annotations": {"org.opencontainers.image.created": "x"}, "new": true});
        let d = json(&a, &b);
        let keys: Vec<&str> = d.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["config.Env[1]", "created", "new"]);
        assert_eq!(d[0].rebuilt, None);
        assert_eq!(d[1].recorded.as_deref(), Some("\"1\""));
        let dotted = json(
            &serde_json::json!({"annotations": {"a.b": 1}}),
            &serde_json::json!({"annotations": {"a.b": 2}}),
        );
        assert_eq!(dotted[0].key, "annotations.\"a.b\"");
        assert!(json(&a, &a).is_empty());
    }

    fn tar_of(files: &[(&str, &[u8], u32, u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode, mtime) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(*mtime);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layer_differences_name_the_file_and_the_field() {
        let a = tar_of(&[("app/x", b"one", 0o755, 10), ("app/y", b"same", 0o644, 10)]);
        let b = tar_of(&[("app/x", b"two!", 0o755, 11), ("app/z", b"new", 0o644, 10)]);
        let d = layer(&a, &b).unwrap();
        assert!(!d.tar_identical);
        let summary: Vec<(&str, &str)> = d
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.change.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("/app/x", "changed"),
                ("/app/y", "removed"),
                ("/app/z", "added")
            ]
        );
        let fields: Vec<&str> = d.files[0].fields.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(fields, ["size", "mtime", "content sha256"]);
        let same = layer(&a, &a).unwrap();
        assert!(same.files.is_empty() && same.tar_identical && !same.order);
    }
}
