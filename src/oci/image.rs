//! Image configs and manifests derived from a base image: pure functions from bytes to bytes.

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{Config, History, ImageConfiguration};

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
pub fn derive_config(
    base_config: &[u8],
    base_layers: usize,
    platform: &PlatformSpec,
    settings: &ImageSettings,
    layer: &AddedLayer<'_>,
    created: &str,
) -> Result<Vec<u8>, ImageError> {
    let mut cfg = ImageConfiguration::from_reader(base_config)
        .map_err(|e| ImageError::BaseConfig(e.to_string()))?;
    let base_platform = PlatformSpec {
        os: cfg.os().to_string(),
        architecture: cfg.architecture().to_string(),
        variant: cfg.variant().clone(),
    };
    // The variant is not compared: an arm64 base without one is arm64/v8 in practice.
    if base_platform.os != platform.os || base_platform.architecture != platform.architecture {
        return Err(ImageError::PlatformMismatch {
            base: base_platform.to_string(),
            target: platform.to_string(),
        });
    }
    let diff_ids = cfg.rootfs().diff_ids().len();
    if diff_ids != base_layers {
        return Err(ImageError::LayerCount {
            diff_ids,
            layers: base_layers,
        });
    }

    let mut c: Config = cfg.config().clone().unwrap_or_default();
    c.set_working_dir(Some(settings.workdir.clone()));
    c.set_entrypoint(Some(settings.entrypoint.clone()));
    c.set_cmd(settings.cmd.clone());
    if let Some(user) = &settings.user {
        c.set_user(Some(user.clone()));
    }

    let mut ports: Vec<String> = c.exposed_ports().clone().unwrap_or_default();
    for p in &settings.expose {
        let port = format!("{p}/tcp");
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports.sort();
    c.set_exposed_ports(if ports.is_empty() { None } else { Some(ports) });

    let mut env: Vec<String> = c.env().clone().unwrap_or_default();
    for (k, v) in &settings.env {
        let entry = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(ek, _)| ek) == Some(k.as_str()))
        {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }
    c.set_env(if env.is_empty() { None } else { Some(env) });

    let mut labels: HashMap<String, String> = c.labels().clone().unwrap_or_default();
    labels.extend(settings.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    c.set_labels(if labels.is_empty() {
        None
    } else {
        Some(labels)
    });
    cfg.set_config(Some(c));

    cfg.set_created(Some(created.to_string()));
    cfg.rootfs_mut()
        .diff_ids_mut()
        .push(layer.diff_id.to_string());
    let mut entry = History::default();
    entry.set_created(Some(created.to_string()));
    entry.set_created_by(Some(layer.created_by.clone()));
    entry.set_comment(Some("galley".to_string()));
    cfg.history_mut().get_or_insert_with(Vec::new).push(entry);

    Ok(canonical("image config", &cfg)?)
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
