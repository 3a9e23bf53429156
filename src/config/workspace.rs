//! What cargo says about a project: its packages (a single crate or a workspace's members), with
//! their versions (workspace inheritance resolved), features and binaries, from
//! `cargo metadata --no-deps`. And the rustflags its `.cargo/config.toml` files set.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::CargoPackage;
use crate::cancel::Cancel;
use crate::proc;

/// The packages of a project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workspace {
    pub packages: Vec<CargoPackage>,
    /// The package of a non-virtual root manifest.
    pub root: Option<String>,
    /// Directories of path dependencies outside the project: sources cargo reads too.
    pub external_paths: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cargo metadata failed in {dir}: {detail}")]
    Metadata { dir: PathBuf, detail: String },
    #[error("cargo metadata printed something galley cannot read: {0}")]
    Parse(String),
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_members: Vec<String>,
}

#[derive(Deserialize)]
struct MetaPackage {
    name: String,
    version: String,
    id: String,
    manifest_path: PathBuf,
    #[serde(default)]
    features: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    targets: Vec<MetaTarget>,
    #[serde(default)]
    dependencies: Vec<MetaDependency>,
}

#[derive(Deserialize)]
struct MetaDependency {
    #[serde(default)]
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
struct MetaTarget {
    name: String,
    kind: Vec<String>,
}

impl Workspace {
    /// A project of one package (for tests and callers that read Cargo.toml themselves).
    pub fn single(package: CargoPackage) -> Workspace {
        Workspace {
            root: package.name.clone(),
            packages: vec![package],
            external_paths: Vec::new(),
        }
    }

    /// Asks cargo about the project at `dir` (no dependency is resolved or fetched).
    pub fn load(dir: &Path) -> Result<Workspace, WorkspaceError> {
        let mut cmd = proc::command("cargo");
        cmd.current_dir(dir)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .env("CARGO_TERM_COLOR", "never");
        let out = proc::run_captured(&mut cmd, Duration::from_secs(120), &Cancel::default())
            .map_err(|e| WorkspaceError::Metadata {
                dir: dir.to_path_buf(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(WorkspaceError::Metadata {
                dir: dir.to_path_buf(),
                detail: out.stderr_tail(4),
            });
        }
        Self::parse(&out.stdout, dir)
    }

    /// Reads `cargo metadata --format-version 1 --no-deps` output for the project at `dir`.
    pub fn parse(json: &[u8], dir: &Path) -> Result<Workspace, WorkspaceError> {
        let m: Metadata =
            serde_json::from_slice(json).map_err(|e| WorkspaceError::Parse(e.to_string()))?;
        let root_manifest = dir.join("Cargo.toml");
        let mut root = None;
        let mut packages = Vec::new();
        let mut external_paths: Vec<PathBuf> = Vec::new();
        let inside = |p: &Path| {
            let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            let d = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
            p.starts_with(d)
        };
        for p in m
            .packages
            .into_iter()
            .filter(|p| m.workspace_members.contains(&p.id))
        {
            let same = |a: &Path, b: &Path| {
                a == b
                    || a.canonicalize()
                        .ok()
                        .zip(b.canonicalize().ok())
                        .is_some_and(|(x, y)| x == y)
            };
            if same(&p.manifest_path, &root_manifest) {
                root = Some(p.name.clone());
            }
            for d in p.dependencies.iter().filter_map(|d| d.path.as_ref()) {
                if !inside(d) && !external_paths.contains(d) {
                    external_paths.push(d.clone());
                }
            }
            packages.push(CargoPackage {
                bins: p
                    .targets
                    .iter()
                    .filter(|t| t.kind.iter().any(|k| k == "bin"))
                    .map(|t| t.name.clone())
                    .collect(),
                features: p.features.keys().cloned().collect(),
                name: Some(p.name),
                version: Some(p.version),
            });
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        external_paths.sort();
        Ok(Workspace {
            packages,
            root,
            external_paths,
        })
    }

    /// The package of that name.
    pub fn package(&self, name: &str) -> Option<&CargoPackage> {
        self.packages
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
    }

    /// The packages that have a binary of that name.
    pub fn owners_of(&self, binary: &str) -> Vec<&CargoPackage> {
        self.packages
            .iter()
            .filter(|p| p.bins.iter().any(|b| b == binary))
            .collect()
    }

    /// Every binary, as `package/binary`, for messages.
    pub fn all_binaries(&self) -> Vec<String> {
        self.packages
            .iter()
            .flat_map(|p| {
                p.bins
                    .iter()
                    .map(move |b| format!("{}/{b}", p.name.as_deref().unwrap_or("?")))
            })
            .collect()
    }
}

/// The rustflags a project's cargo configuration sets for `triple`, as cargo would read them:
/// `.cargo/config.toml` (or `.cargo/config`) in the project directory and every parent, then
/// `$CARGO_HOME/config.toml`; `target.<triple>.rustflags` if any file sets it, else
/// `build.rustflags`. Files closer to the project come first.
pub fn config_rustflags(project: &Path, triple: &str) -> Result<Vec<String>, String> {
    let mut files = Vec::new();
    for dir in project.ancestors() {
        for name in ["config.toml", "config"] {
            let f = dir.join(".cargo").join(name);
            if f.is_file() {
                files.push(f);
                break;
            }
        }
    }
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        let f = home.join("config.toml");
        if f.is_file() && !files.contains(&f) {
            files.push(f);
        }
    }
    let mut target = Vec::new();
    let mut build = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let v: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        let flags = |v: Option<&toml::Value>| -> Result<Vec<String>, String> {
            match v {
                None => Ok(Vec::new()),
                Some(toml::Value::String(s)) => {
                    Ok(s.split_whitespace().map(str::to_string).collect())
                }
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("{}: rustflags must be strings", f.display()))
                    })
                    .collect(),
                Some(_) => Err(format!(
                    "{}: rustflags must be a string or a list",
                    f.display()
                )),
            }
        };
        target.extend(flags(
            v.get("target")
                .and_then(|t| t.get(triple))
                .and_then(|t| t.get("rustflags")),
        )?);
        build.extend(flags(v.get("build").and_then(|b| b.get("rustflags")))?);
    }
    Ok(if target.is_empty() { build } else { target })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_members_versions_features_and_binaries() {
        let json = br#"{"packages":[
            {"name":"core","version":"2.1.0","id":"path+file:///w/core#2.1.0","manifest_path":"/w/core/Cargo.toml","features":{"sqlite":[]},"targets":[{"name":"core","kind":["lib"]}]},
            {"name":"sso","version":"2.1.0","id":"path+file:///w/sso#2.1.0","manifest_path":"/w/sso/Cargo.toml","features":{"db_sqlite":["core/sqlite"],"db_psql":[]},"targets":[{"name":"sso_sqlite","kind":["bin"]},{"name":"sso_psql","kind":["bin"]}],"dependencies":[{"name":"core","path":"/w/core"},{"name":"shared","path":"/elsewhere/shared"},{"name":"serde"}]},
            {"name":"serde","version":"1.0.0","id":"registry+x#serde@1.0.0","manifest_path":"/r/serde/Cargo.toml","features":{},"targets":[]}
        ],"workspace_members":["path+file:///w/core#2.1.0","path+file:///w/sso#2.1.0"],"workspace_root":"/w"}"#;
        let w = Workspace::parse(json, Path::new("/w")).unwrap();
        assert_eq!(w.packages.len(), 2, "dependencies are not members");
        assert_eq!(w.root, None, "a virtual workspace has no root package");
        let sso = w.package("sso").unwrap();
        assert_eq!(sso.version.as_deref(), Some("2.1.0"));
        assert_eq!(sso.bins, ["sso_sqlite", "sso_psql"]);
        assert_eq!(sso.features, ["db_psql", "db_sqlite"]);
        assert_eq!(w.owners_of("sso_psql").len(), 1);
        assert_eq!(w.external_paths, [PathBuf::from("/elsewhere/shared")]);
        assert!(w.owners_of("nope").is_empty());
    }

    #[test]
    fn config_rustflags_prefer_the_target_table() {
        let dir = std::env::temp_dir().join(format!("galley-rustflags-{}", std::process::id()));
        let cargo = dir.join("p/.cargo");
        std::fs::create_dir_all(&cargo).unwrap();
        std::fs::write(
            cargo.join("config.toml"),
            "[build]\nrustflags = [\"--cfg\", \"from_build\"]\n",
        )
        .unwrap();
        let flags = config_rustflags(&dir.join("p"), "x86_64-unknown-linux-musl").unwrap();
        assert!(
            flags.starts_with(&["--cfg".to_string(), "from_build".to_string()]),
            "{flags:?}"
        );
        std::fs::write(
            cargo.join("config.toml"),
            "[build]\nrustflags = \"--cfg from_build\"\n[target.x86_64-unknown-linux-musl]\nrustflags = [\"--cfg\", \"from_target\"]\n",
        )
        .unwrap();
        let flags = config_rustflags(&dir.join("p"), "x86_64-unknown-linux-musl").unwrap();
        assert_eq!(&flags[..2], ["--cfg", "from_target"]);
        std::fs::write(cargo.join("config.toml"), "[build]\nrustflags = 3\n").unwrap();
        assert!(config_rustflags(&dir.join("p"), "x86_64-unknown-linux-musl").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
