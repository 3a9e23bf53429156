//! Project settings from `galley.toml` at the project root, as typed values.
//!
//! Everything here is raw input: `spec` validates it against allow-lists before anything runs.
//! `serve` holds the service's own settings.

pub mod serve;
pub mod units;
pub mod workspace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The parsed `galley.toml`. Every field is optional; flags override it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The cargo binary target to package (default: the package's only binary, or its name).
    pub binary: Option<String>,
    /// The workspace member to build (`-p`); default: the package that owns the binary.
    pub package: Option<String>,
    /// The cargo profile (default `release`); any custom profile of the project.
    pub profile: Option<String>,
    /// More environment variables cargo and build scripts may see, by name or prefix (`FOO_*`).
    #[serde(default)]
    pub env_passthrough: Vec<String>,
    /// Variants by name. A variant not listed here, say `sqlite`, means the feature `db_sqlite`.
    #[serde(default)]
    pub variants: BTreeMap<String, VariantConfig>,
    /// Target triples (default: x86_64-unknown-linux-musl). Several give an image index per variant.
    pub targets: Option<Vec<String>>,
    /// Tag templates; placeholders `{variant}` and `{version}` (default: `{variant}-{version}`).
    pub tags: Option<Vec<String>>,
    /// Base image reference (default: docker.io/library/alpine:3.20).
    pub base: Option<String>,
    /// UPX: `"best"` (`--best --lzma`, the default, also `true`), `"fast"` (`-9`: a quicker
    /// start-up for a bigger binary) or `false`.
    pub compress: Option<CompressConfig>,
    /// How long the base tag's digest is reused before asking the registry again (default `24h`).
    pub base_ttl: Option<String>,
    /// Attach an SPDX SBOM of the crates in each image as an OCI referrer (default true).
    pub sbom: Option<bool>,
    /// Attach a SLSA provenance statement to each image as an OCI referrer (default true).
    pub provenance: Option<bool>,
    /// The stage cache's remote tier: a repository (`host/repo`) the hosts share.
    pub cache_repository: Option<String>,
    /// The key the hosts share to sign and verify remote entries (relative: to the project).
    pub cache_key_file: Option<PathBuf>,
    /// Read remote entries without a key, trusting whoever can push there (default false).
    pub cache_unsigned: Option<bool>,
    /// Compile through sccache on this Redis (`redis://host:port[/db]`): dependency crates are
    /// shared across hosts.
    pub sccache: Option<String>,
    #[serde(default)]
    pub image: ImageConfig,
}

/// How `compress` is written in galley.toml: a boolean or a level name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CompressConfig {
    On(bool),
    Level(String),
}

/// One variant: the cargo features it is built with, and what differs from the others.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    #[serde(default)]
    pub features: Vec<String>,
    /// Keep the package's default features (default false: `--no-default-features`).
    pub default_features: Option<bool>,
    /// This variant's binary (one binary per backend), instead of the project's.
    pub binary: Option<String>,
    /// Push this variant to another repository (`host/repo`) than `--push`'s.
    pub repository: Option<String>,
    /// Tag templates of this variant, instead of the project's.
    pub tags: Option<Vec<String>>,
}

/// Settings of the runtime image.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Working directory (default `/app`).
    pub workdir: Option<String>,
    /// Entrypoint (default `["/app/<binary>"]`).
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (default none: the base image's Cmd is cleared).
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub expose: Vec<u16>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    /// Value of the `org.opencontainers.image.source` annotation.
    pub source: Option<String>,
    /// Arguments that make the binary exit 0 quickly (default `["--version"]`): used to prove a
    /// UPX-packed binary still runs.
    pub smoke_args: Option<Vec<String>>,
    /// Set false to skip running the binary after packing (then only `upx -t` checks it).
    pub smoke: Option<bool>,
    /// Files of the project copied into the image.
    #[serde(default)]
    pub files: Vec<FileConfig>,
}

/// A file or directory of the project shipped in the image.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// A file or directory, relative to the project directory.
    pub src: String,
    /// An absolute path in the image.
    pub dst: String,
    /// The mode of every file (e.g. `0o644`); default: kept (0755 if executable, else 0644).
    pub mode: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The name of the settings file at a project's root.
pub const FILE_NAME: &str = "galley.toml";

impl ProjectConfig {
    /// The variants a project offers: every `[variants.NAME]`, and `NAME` for every crate feature
    /// `db_NAME` that no listed variant builds with, sorted, each with its features.
    pub fn variants_offered(&self, package: &CargoPackage) -> Vec<(String, Vec<String>)> {
        let mut out: BTreeMap<String, Vec<String>> = self
            .variants
            .iter()
            .map(|(k, v)| (k.clone(), v.features.clone()))
            .collect();
        let used: Vec<String> = out.values().flatten().cloned().collect();
        for f in package.features.iter().filter(|f| !used.contains(f)) {
            if let Some(name) = f.strip_prefix("db_") {
                out.entry(name.to_string())
                    .or_insert_with(|| vec![f.clone()]);
            }
        }
        out.into_iter().collect()
    }

    /// Reads `galley.toml` from the project root; a project without one gets the defaults.
    pub fn load(project: &Path) -> Result<ProjectConfig, ConfigError> {
        let path = project.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError::Parse { path, message }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProjectConfig::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses the text of a `galley.toml`.
    pub fn parse(text: &str) -> Result<ProjectConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }
}

/// The facts galley reads from the project's Cargo.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CargoPackage {
    pub name: Option<String>,
    pub version: Option<String>,
    /// Names of `[[bin]]` targets declared explicitly.
    pub bins: Vec<String>,
    /// The names of the crate's `[features]`.
    pub features: Vec<String>,
}

impl CargoPackage {
    /// Reads `[package] name/version` and `[[bin]] name` from `<project>/Cargo.toml`.
    pub fn load(project: &Path) -> Result<CargoPackage, ConfigError> {
        let path = project.join("Cargo.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, &text)
    }

    /// Reads the facts from the text of a Cargo.toml (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<CargoPackage, ConfigError> {
        let path = path.to_path_buf();
        let value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path,
            message: e.to_string(),
        })?;
        let package = value.get("package").and_then(|p| p.as_table());
        let field = |k: &str| {
            package
                .and_then(|p| p.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let bins = value
            .get("bin")
            .and_then(|b| b.as_array())
            .map(|arr| {
                arr.iter()
                    .filter_map(|b| b.get("name")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let features = value
            .get("features")
            .and_then(|f| f.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        Ok(CargoPackage {
            name: field("name"),
            version: field("version"),
            bins,
            features,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let cfg = ProjectConfig::parse(
            r#"
            binary = "svc"
            tags = ["{variant}-{version}", "{variant}"]
            [variants.postgres]
            features = ["db_psql"]
            [image]
            expose = [8080]
            env = { A = "1" }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.binary.as_deref(), Some("svc"));
        assert_eq!(cfg.variants["postgres"].features, ["db_psql"]);
        assert_eq!(cfg.image.expose, [8080]);
    }

    #[test]
    fn variants_offered_come_from_the_file_and_unused_db_features() {
        let cfg = ProjectConfig::parse("[variants.postgres]\nfeatures = [\"db_psql\"]").unwrap();
        let package = CargoPackage {
            features: ["db_sqlite", "db_psql", "default", "tls"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let names: Vec<String> = cfg
            .variants_offered(&package)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["postgres", "sqlite"]);
    }

    #[test]
    fn unknown_keys_are_errors_not_ignored() {
        let err = ProjectConfig::parse("binnary = \"svc\"").unwrap_err();
        assert!(err.contains("binnary"), "{err}");
    }
}
