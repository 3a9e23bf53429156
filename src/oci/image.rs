//! Image configs and manifests derived from a base image: pure functions from bytes to bytes.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::json::{canonical, JsonError};
use super::{Descriptor, Digest, Manifest, PlatformSpec, MEDIA_MANIFEST};

/// What galley sets in the runtime image on top of the base config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageSettings {
    pub workdir: String,
    pub entrypoint: Vec<String>,
    /// Default arguments; `None` clears the base image's `Cmd` (as a Dockerfile `ENTRYPOINT` does).
    pub cmd: Option<Vec<String>>,
    pub expose: Vec<u16>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the base image config is not valid JSON for an OCI image config: {0}")]
    BaseConfig(String),
    #[error(
        "the base image is {base} but the binary is for {target}: pick a base image for {target}"
    )]
    PlatformMismatch { base: String, target: String },
    #[error("the base image config lists {diff_ids} layer diff_ids but its manifest has {layers} layers: the base image is corrupt")]
    LayerCount { diff_ids: usize, layers: usize },
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// The new layer's place in the config and history.
pub struct AddedLayer<'a> {
    pub diff_id: &'a Digest,
    /// The `created_by` text of the history entry (what the layer holds).
    pub created_by: String,
}

/// Derives the runtime image config from the base config: the base's settings, then galley's, one
/// more layer and one more history entry, timestamps from `created` (RFC 3339). Returns canonical JSON.
///
/// The config is edited as JSON, not through a typed model: whatever the base has that galley does
/// not set (`Healthcheck`, `Shell`, `OnBuild`, `ArgsEscaped`, fields of future versions) is kept as
/// the base wrote it.
pub fn derive_config(
    base_config: &[u8],
    base_layers: usize,
    platform: &PlatformSpec,
    settings: &ImageSettings,
    layer: &AddedLayer<'_>,
    created: &str,
) -> Result<Vec<u8>, ImageError> {
    let bad = |why: &str| ImageError::BaseConfig(why.to_string());
    let mut cfg: Value =
        serde_json::from_slice(base_config).map_err(|e| ImageError::BaseConfig(e.to_string()))?;
    let root = cfg
        .as_object_mut()
        .ok_or_else(|| bad("the config is not a JSON object"))?;
    let text = |root: &Map<String, Value>, key: &str| -> Result<String, ImageError> {
        root.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ImageError::BaseConfig(format!("missing string field `{key}`")))
    };
    let base_platform = PlatformSpec {
        os: text(root, "os")?,
        architecture: text(root, "architecture")?,
        variant: root
            .get("variant")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    // The variant is not compared: an arm64 base without one is arm64/v8 in practice.
    if base_platform.os != platform.os || base_platform.architecture != platform.architecture {
        return Err(ImageError::PlatformMismatch {
            base: base_platform.to_string(),
            target: platform.to_string(),
        });
    }
    let diff_ids = root
        .get_mut("rootfs")
        .and_then(Value::as_object_mut)
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("missing `rootfs.diff_ids`"))?;
    if diff_ids.len() != base_layers {
        return Err(ImageError::LayerCount {
            diff_ids: diff_ids.len(),
            layers: base_layers,
        });
    }
    diff_ids.push(Value::String(layer.diff_id.to_string()));

    let c = field_or(root, "config", Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| bad("`config` is not an object"))?;
    c.insert("WorkingDir".into(), settings.workdir.clone().into());
    c.insert("Entrypoint".into(), strings(&settings.entrypoint));
    match &settings.cmd {
        Some(cmd) => c.insert("Cmd".into(), strings(cmd)),
        None => c.remove("Cmd"),
    };
    if let Some(user) = &settings.user {
        c.insert("User".into(), user.clone().into());
    }

    let mut ports: BTreeMap<String, Value> = match c.remove("ExposedPorts") {
        Some(Value::Object(m)) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    for p in &settings.expose {
        ports
            .entry(format!("{p}/tcp"))
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !ports.is_empty() {
        c.insert(
            "ExposedPorts".into(),
            Value::Object(ports.into_iter().collect()),
        );
    }

    let mut env: Vec<String> = match c.remove("Env") {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    for (k, v) in &settings.env {
        set_env(&mut env, k, format!("{k}={v}"));
    }
    if !env.is_empty() {
        c.insert("Env".into(), strings(&env));
    }

    let mut labels: Map<String, Value> = match c.remove("Labels") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in &settings.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    if !labels.is_empty() {
        c.insert("Labels".into(), Value::Object(labels));
    }

    root.insert("created".into(), created.into());
    let history = field_or(root, "history", Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| bad("`history` is not a list"))?;
    history.push(serde_json::json!({
        "created": created,
        "created_by": layer.created_by,
        "comment": "galley",
    }));

    let bytes = canonical("image config", &cfg)?;
    // What typed consumers read must parse: check with oci-spec's model of an image config.
    oci_spec::image::ImageConfiguration::from_reader(bytes.as_slice())
        .map_err(|e| ImageError::BaseConfig(format!("the derived config is not valid: {e}")))?;
    Ok(bytes)
}

/// Sets `key` in an `Env` list: in place where it is, else appended.
fn set_env(env: &mut Vec<String>, key: &str, entry: String) {
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
    {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// The object at `key` of `m` (empty when it is missing or not an object).
fn object(m: &Map<String, Value>, key: &str) -> Map<String, Value> {
    m.get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// A field of the config, `empty` put in its place when it is missing or `null` (how some tools
/// write "none").
fn field_or<'a>(root: &'a mut Map<String, Value>, key: &str, empty: Value) -> &'a mut Value {
    let v = root.entry(key).or_insert(Value::Null);
    if v.is_null() {
        *v = empty;
    }
    v
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

/// Builds an OCI image manifest and its canonical bytes.
pub fn manifest(
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
) -> Result<(Manifest, Vec<u8>), JsonError> {
    let m = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_MANIFEST.to_string()),
        config,
        layers,
        annotations,
    };
    let bytes = canonical("image manifest", &m)?;
    Ok((m, bytes))
}

/// The config of a galley image moved from `old_base` onto `new_base`, as [`derive_config`] would
/// have made it there: the new base's platform, layers (`rootfs.diff_ids`), history and settings,
/// then what galley set on the old base applied again, and galley's layer and history entry
/// kept. What galley set is what `old` has that `old_base` did not (an environment variable or a
/// label with another value, an exposed port, working directory, entrypoint and command, a user),
/// so a setting galley gave the very value the old base had is read as the base's. Moving an
/// image onto its own base gives its config back byte for byte.
pub fn rebase_config(old: &[u8], old_base: &[u8], new_base: &[u8]) -> Result<Vec<u8>, ImageError> {
    let parse = |b: &[u8], what: &str| -> Result<Map<String, Value>, ImageError> {
        match serde_json::from_slice(b) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ImageError::BaseConfig(format!(
                "the {what} config is not a JSON object"
            ))),
            Err(e) => Err(ImageError::BaseConfig(format!("the {what} config: {e}"))),
        }
    };
    let old = parse(old, "image's")?;
    let old_base = parse(old_base, "old base's")?;
    let mut out = parse(new_base, "new base's")?;
    let bad = |why: &str| ImageError::BaseConfig(why.to_string());
    let platform = |m: &Map<String, Value>| {
        (
            m.get("os")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            m.get("architecture")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    };
    if platform(&old) != platform(&out) {
        let (os, arch) = platform(&out);
        let (was_os, was_arch) = platform(&old);
        return Err(ImageError::PlatformMismatch {
            base: format!("{os}/{arch}"),
            target: format!("{was_os}/{was_arch}"),
        });
    }
    let list = |m: &Map<String, Value>, a: &str, b: &str| -> Vec<Value> {
        m.get(a)
            .and_then(|v| if b.is_empty() { Some(v) } else { v.get(b) })
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    // galley's layer and history entry are the last ones.
    let galley_diff = list(&old, "rootfs", "diff_ids")
        .last()
        .cloned()
        .ok_or_else(|| bad("the image has no layers"))?;
    let galley_history = list(&old, "history", "")
        .last()
        .cloned()
        .ok_or_else(|| bad("the image has no history"))?;
    let mut diff_ids = list(&out, "rootfs", "diff_ids");
    diff_ids.push(galley_diff);
    let rootfs = field_or(&mut out, "rootfs", Value::Object(Map::new()));
    rootfs
        .as_object_mut()
        .ok_or_else(|| bad("the new base's `rootfs` is not an object"))?
        .insert("diff_ids".into(), Value::Array(diff_ids));
    let mut history = list(&out, "history", "");
    history.push(galley_history);
    out.insert("history".into(), Value::Array(history));
    if let Some(created) = old.get("created") {
        out.insert("created".into(), created.clone());
    }

    let (was, base_was) = (object(&old, "config"), object(&old_base, "config"));
    let mut c = object(&out, "config");
    // Always galley's: derive_config sets (or, for Cmd, clears) them whatever the base had.
    for key in ["WorkingDir", "Entrypoint", "Cmd"] {
        match was.get(key) {
            Some(v) => c.insert(key.into(), v.clone()),
            None => c.remove(key),
        };
    }
    if let Some(user) = was.get("User").filter(|u| base_was.get("User") != Some(u)) {
        c.insert("User".into(), user.clone());
    }
    // Ports galley exposed beside the base's.
    let (old_ports, base_ports) = (
        object(&was, "ExposedPorts"),
        object(&base_was, "ExposedPorts"),
    );
    let mut new_ports: BTreeMap<String, Value> = object(&c, "ExposedPorts").into_iter().collect();
    for (p, v) in old_ports {
        if !base_ports.contains_key(&p) {
            new_ports.entry(p).or_insert(v);
        }
    }
    c.remove("ExposedPorts");
    if !new_ports.is_empty() {
        c.insert(
            "ExposedPorts".into(),
            Value::Object(new_ports.into_iter().collect()),
        );
    }
    // Environment: galley's entries are those the old base did not have as they are; applied
    // as derive_config applies them (in place, else appended).
    let env_of = |m: &Map<String, Value>| -> Vec<String> {
        m.get("Env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let base_env = env_of(&base_was);
    let mut env = env_of(&c);
    let key_of = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let mut galley_env: Vec<String> = env_of(&was)
        .into_iter()
        .filter(|e| !base_env.contains(e))
        .collect();
    // derive_config applies its settings in key order.
    galley_env.sort_by_key(|e| key_of(e));
    for entry in galley_env {
        let key = key_of(&entry);
        set_env(&mut env, &key, entry);
    }
    c.remove("Env");
    if !env.is_empty() {
        c.insert("Env".into(), strings(&env));
    }
    let base_labels = object(&base_was, "Labels");
    let mut labels = object(&c, "Labels");
    for (k, v) in object(&was, "Labels") {
        if base_labels.get(&k) != Some(&v) {
            labels.insert(k, v);
        }
    }
    c.remove("Labels");
    if !labels.is_empty() {
        c.insert("Labels".into(), Value::Object(labels));
    }
    out.insert("config".into(), Value::Object(c));
    let bytes = canonical("image config", &Value::Object(out))?;
    oci_spec::image::ImageConfiguration::from_reader(bytes.as_slice())
        .map_err(|e| ImageError::BaseConfig(format!("the rebased config is not valid: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin","RUST_LOG=warn"],"Cmd":["/bin/sh"],"Labels":{"base":"yes"}},"rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},"history":[{"created_by":"base"}]}"#;

    fn settings() -> ImageSettings {
        ImageSettings {
            workdir: "/app".into(),
            entrypoint: vec!["/app/svc".into()],
            cmd: None,
            expose: vec![8080],
            env: [
                ("RUST_LOG".to_string(), "info".to_string()),
                ("A".to_string(), "1".to_string()),
            ]
            .into(),
            labels: [("team".to_string(), "x".to_string())].into(),
            user: None,
        }
    }

    /// Moving an image to another base gives what deriving it there gives; moving it back gives
    /// it byte for byte.
    #[test]
    fn a_rebased_config_is_the_config_derived_on_the_new_base() {
        const OTHER: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","LANG=C"],"Cmd":["/bin/ash"],"Labels":{"base":"other","vendor":"b"},"ExposedPorts":{"22/tcp":{}},"StopSignal":"SIGINT"},"rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111","sha256:2222222222222222222222222222222222222222222222222222222222222222"]},"history":[{"created_by":"b1"},{"created_by":"b2"}]}"#;
        let diff = Digest::of(b"layer");
        let layer = AddedLayer {
            diff_id: &diff,
            created_by: "COPY svc /app/svc".into(),
        };
        let platform = PlatformSpec {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        let mut s = settings();
        s.user = Some("65534".into());
        let on = |base: &str, layers: usize| {
            derive_config(
                base.as_bytes(),
                layers,
                &platform,
                &s,
                &layer,
                "2023-11-14T22:13:20Z",
            )
            .unwrap()
        };
        let (a, b) = (on(BASE, 1), on(OTHER, 2));
        let moved = rebase_config(&a, BASE.as_bytes(), OTHER.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(moved.clone()).unwrap(),
            String::from_utf8(b.clone()).unwrap()
        );
        assert_eq!(
            rebase_config(&moved, OTHER.as_bytes(), BASE.as_bytes()).unwrap(),
            a
        );
        assert_eq!(
            rebase_config(&a, BASE.as_bytes(), BASE.as_bytes()).unwrap(),
            a
        );
        // Another platform is refused.
        let arm = OTHER.replace("amd64", "arm64");
        assert!(matches!(
            rebase_config(&a, BASE.as_bytes(), arm.as_bytes()),
            Err(ImageError::PlatformMismatch { .. })
        ));
    }

    #[test]
    fn derives_config_on_top_of_the_base() {
        let diff = Digest::of(b"layer");
        let layer = AddedLayer {
            diff_id: &diff,
            created_by: "COPY svc /app/svc".into(),
        };
        let platform = PlatformSpec {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        let bytes = derive_config(
            BASE.as_bytes(),
            1,
            &platform,
            &settings(),
            &layer,
            "2023-11-14T22:13:20Z",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["config"]["Env"],
            serde_json::json!(["PATH=/usr/bin", "RUST_LOG=info", "A=1"])
        );
        assert_eq!(v["config"]["Entrypoint"], serde_json::json!(["/app/svc"]));
        assert!(
            v["config"].get("Cmd").is_none(),
            "base Cmd must be cleared: {v}"
        );
        assert_eq!(v["config"]["WorkingDir"], "/app");
        assert_eq!(
            v["config"]["ExposedPorts"],
            serde_json::json!({"8080/tcp": {}})
        );
        assert_eq!(
            v["config"]["Labels"],
            serde_json::json!({"base": "yes", "team": "x"})
        );
        assert_eq!(v["created"], "2023-11-14T22:13:20Z");
        assert_eq!(v["rootfs"]["diff_ids"][1], diff.as_str());
        assert_eq!(v["history"][1]["created_by"], "COPY svc /app/svc");
        // Canonical: serializing again gives the same bytes.
        assert_eq!(
            bytes,
            derive_config(
                BASE.as_bytes(),
                1,
                &platform,
                &settings(),
                &layer,
                "2023-11-14T22:13:20Z"
            )
            .unwrap()
        );
    }

    /// Regression: a base config's tab in `history[].created_by` and newline in an ENV value were
    /// written raw (invalid JSON), and fields oci-spec does not model were dropped.
    #[test]
    fn base_config_control_characters_and_unmodelled_fields_survive() {
        let base = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {
                "Env": ["PATH=/bin", "MOTD=line one\nline two"],
                "Healthcheck": {"Test": ["CMD", "/bin/true"], "Interval": 30000000000u64},
                "Shell": ["/bin/ash", "-c"], "OnBuild": ["RUN true"], "ArgsEscaped": true,
                "StopSignal": "SIGQUIT"
            },
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [{"created_by": "/bin/sh -c #(nop)\tCMD [\"/bin/sh\"]", "empty_layer": true}],
            "os.features": ["x"]
        });
        let diff = Digest::of(b"layer");
        let layer = AddedLayer {
            diff_id: &diff,
            created_by: "COPY svc /app/svc".into(),
        };
        let platform = PlatformSpec {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        let bytes = derive_config(
            base.to_string().as_bytes(),
            0,
            &platform,
            &settings(),
            &layer,
            "2023-11-14T22:13:20Z",
        )
        .unwrap();
        assert!(bytes.iter().all(|b| *b >= 0x20), "raw control byte");
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for key in [
            "Healthcheck",
            "Shell",
            "OnBuild",
            "ArgsEscaped",
            "StopSignal",
        ] {
            assert_eq!(v["config"][key], base["config"][key], "{key}");
        }
        assert_eq!(v["os.features"], base["os.features"]);
        assert_eq!(v["config"]["Env"][1], "MOTD=line one\nline two");
        assert_eq!(v["history"][0], base["history"][0]);
    }

    #[test]
    fn refuses_a_base_for_another_architecture() {
        let diff = Digest::of(b"layer");
        let layer = AddedLayer {
            diff_id: &diff,
            created_by: String::new(),
        };
        let arm = PlatformSpec {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        };
        let err = derive_config(BASE.as_bytes(), 1, &arm, &settings(), &layer, "x").unwrap_err();
        assert!(
            err.to_string()
                .contains("base image is linux/amd64 but the binary is for linux/arm64/v8"),
            "{err}"
        );
        let amd = PlatformSpec {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(matches!(
            derive_config(BASE.as_bytes(), 2, &amd, &settings(), &layer, "x"),
            Err(ImageError::LayerCount { .. })
        ));
    }
}
