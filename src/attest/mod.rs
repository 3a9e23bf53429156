//! What goes along with an image to say what it is: an SPDX 2.3 SBOM of the crates compiled into
//! the variant's binary (the feature-resolved graph for its target, not the whole Cargo.lock),
//! and a SLSA v1 provenance statement (in-toto) of how it was built. Both are deterministic: the
//! same build gives the same bytes, so they can be reproduced and compared like the image.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::cancel::Cancel;
use crate::oci::Digest;
use crate::proc;

/// The media type of an SPDX JSON document (the SBOM's layer and its artifact type).
pub const SPDX_MEDIA_TYPE: &str = "application/spdx+json";
/// The media type of an in-toto statement (the provenance's layer and its artifact type).
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("cargo tree (for the SBOM) failed: {0}")]
    Tree(String),
    #[error("the SBOM: {0}")]
    Graph(String),
}

/// A crate as the SBOM lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, Deserialize)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// `registry`, `git` or `path`.
    pub kind: String,
    /// The registry index, the git URL with its commit, or nothing for a path.
    pub source: Option<String>,
    /// sha256 from Cargo.lock (registry crates).
    pub checksum: Option<String>,
    pub license: Option<String>,
    /// The `authors` of a path crate's Cargo.toml (registry and git crates: none; their
    /// supplier is where they are fetched from).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
}

/// What an SBOM is made for: the variant's package, features and target.
pub struct SbomRequest<'a> {
    pub project: &'a Path,
    pub package: &'a str,
    pub features: &'a [String],
    pub default_features: bool,
    pub target: &'a str,
}

/// The crates linked into the binary of `req.package` for that feature set and target, as
/// cargo's own feature resolver sees the build (`cargo tree -e normal,no-proc-macro`): build
/// dependencies, dev-dependencies and proc macros run at compile time and are not in the binary.
/// Sources and checksums come from Cargo.lock. Sorted by name and version; the package itself
/// first. Runs offline: a build that compiled has every crate it needs.
pub fn crates(req: &SbomRequest<'_>, cancel: &Cancel) -> Result<Vec<Crate>, AttestError> {
    let mut cmd = proc::command("cargo");
    cmd.current_dir(req.project).args([
        "tree",
        "--locked",
        "--offline",
        "--edges",
        "normal,no-proc-macro",
        "--target",
        req.target,
        "--prefix",
        "none",
        "--format",
        "{p}|{l}",
        "--package",
        req.package,
    ]);
    if !req.default_features {
        cmd.arg("--no-default-features");
    }
    if !req.features.is_empty() {
        cmd.arg("--features").arg(req.features.join(","));
    }
    let out = proc::run_captured(&mut cmd, Duration::from_secs(300), cancel)
        .map_err(|e| AttestError::Tree(e.to_string()))?;
    if !out.status.success() {
        return Err(AttestError::Tree(out.stderr_tail(3)));
    }
    let lock = lock_packages(&req.project.join("Cargo.lock"));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut root: Option<(String, String)> = None;
    let mut found: BTreeSet<(String, String, Option<String>)> = BTreeSet::new();
    let mut authors: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        // `name vX.Y.Z (source)|license`, with ` (*)` on a subtree printed before.
        let line = line.trim_end().trim_end_matches(" (*)");
        if line.is_empty() {
            continue;
        }
        let (package, license) = line.split_once('|').unwrap_or((line, ""));
        let mut words = package.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            return Err(AttestError::Graph(format!(
                "unexpected `cargo tree` line {line:?}"
            )));
        };
        let Some(version) = version.strip_prefix('v') else {
            return Err(AttestError::Graph(format!(
                "unexpected `cargo tree` line {line:?}"
            )));
        };
        let license = Some(license.trim().to_string()).filter(|l| !l.is_empty());
        // A path crate is printed with its directory: `name vX.Y.Z (/dir)`.
        let rest = package.trim().splitn(3, ' ').nth(2).unwrap_or("").trim();
        if let Some(dir) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
            if dir.starts_with('/') {
                let key = (name.to_string(), version.to_string());
                authors.insert(key, manifest_authors(&Path::new(dir).join("Cargo.toml")));
            }
        }
        if root.is_none() {
            root = Some((name.to_string(), version.to_string()));
        }
        found.insert((name.to_string(), version.to_string(), license));
    }
    let root = root.ok_or_else(|| {
        AttestError::Graph(format!("`cargo tree` listed nothing for {}", req.package))
    })?;
    let mut out: Vec<Crate> = found
        .into_iter()
        .map(|(name, version, license)| {
            let locked = lock.get(&(name.clone(), version.clone()));
            let source = locked.and_then(|l| l.source.clone());
            let (kind, source) = match source.as_deref() {
                None => ("path", None),
                Some(s) if s.starts_with("git+") => {
                    ("git", Some(s.trim_start_matches("git+").to_string()))
                }
                Some(s) => (
                    "registry",
                    Some(
                        s.trim_start_matches("registry+")
                            .trim_start_matches("sparse+")
                            .to_string(),
                    ),
                ),
            };
            let authors = match kind {
                "path" => authors
                    .remove(&(name.clone(), version.clone()))
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            Crate {
                checksum: locked.and_then(|l| l.checksum.clone()),
                authors,
                name,
                version,
                kind: kind.to_string(),
                source,
                license,
            }
        })
        .collect();
    if let Some(i) = out
        .iter()
        .position(|c| (&c.name, &c.version) == (&root.0, &root.1))
    {
        let r = out.remove(i);
        out.insert(0, r);
    }
    Ok(out)
}

/// The `package.authors` of a manifest (none when it has none, inherits them from its
/// workspace, or does not read).
fn manifest_authors(manifest: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(manifest) else {
        return Vec::new();
    };
    let Ok(v) = toml::from_str::<toml::Table>(&text) else {
        return Vec::new();
    };
    v.get("package")
        .and_then(|p| p.get("authors"))
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// The SPDX `PackageSupplier` of a crate: its actual distribution source (SPDX 2.3, 7.5). A
/// registry crate's is the registry (`crates.io`, or the index's host), a git crate's the git
/// host; a path crate is supplied by whoever makes the image: its first author (`Name <mail>`
/// becomes `Person: Name (mail)`), else the image's `org.opencontainers.image.vendor`. Nothing
/// known: `NOASSERTION`.
fn supplier(c: &Crate, vendor: Option<&str>) -> String {
    let host = |url: &str| {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split(['/', '?', '#', ':'])
            .next()
            .unwrap_or("")
            .to_string()
    };
    let clean = |s: &str| {
        s.replace(['(', ')'], " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    match (c.kind.as_str(), &c.source) {
        ("registry", Some(s)) if s.contains("crates.io-index") || s.contains("index.crates.io") => {
            "Organization: crates.io".into()
        }
        ("registry" | "git", Some(s)) if !host(s).is_empty() => {
            format!("Organization: {}", host(s))
        }
        _ => {
            if let Some(a) = c
                .authors
                .first()
                .map(|a| a.trim())
                .filter(|a| !a.is_empty())
            {
                return match a.split_once('<') {
                    Some((name, mail)) => format!(
                        "Person: {} ({})",
                        clean(name),
                        clean(mail.trim_end_matches('>'))
                    ),
                    None => format!("Person: {}", clean(a)),
                };
            }
            match vendor.map(clean).filter(|v| !v.is_empty()) {
                Some(v) => format!("Organization: {v}"),
                None => "NOASSERTION".into(),
            }
        }
    }
}

/// A package of Cargo.lock: where it comes from and its sha256.
struct Locked {
    source: Option<String>,
    checksum: Option<String>,
}

/// `(name, version) -> source, checksum` from a Cargo.lock.
fn lock_packages(path: &Path) -> BTreeMap<(String, String), Locked> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    let Ok(v) = toml::from_str::<toml::Table>(&text) else {
        return BTreeMap::new();
    };
    let text_of =
        |p: &toml::Value, key: &str| p.get(key).and_then(|s| s.as_str()).map(str::to_string);
    v.get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                (text_of(p, "name")?, text_of(p, "version")?),
                Locked {
                    source: text_of(p, "source"),
                    checksum: text_of(p, "checksum"),
                },
            ))
        })
        .collect()
}

/// An SPDX identifier part: letters, digits, `.` and `-`.
fn spdx_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A license as SPDX reads it: the crate's expression, with the old `MIT/Apache-2.0` form
/// turned into `OR`, when it parses as an SPDX expression of known license ids and exceptions
/// (the `spdx` crate); anything else (`BSD`, `Apache-2`, `see LICENSE file`) galley cannot vouch
/// for and writes `NOASSERTION`.
fn license(l: Option<&str>) -> String {
    let Some(l) = l.map(str::trim).filter(|l| !l.is_empty()) else {
        return "NOASSERTION".into();
    };
    let l = l.replace('/', " OR ");
    let l = l.split_whitespace().collect::<Vec<_>>().join(" ");
    match spdx::Expression::parse(&l) {
        Ok(_) => l,
        Err(_) => "NOASSERTION".into(),
    }
}

/// The facts of an image the documents name.
pub struct Subject<'a> {
    /// What the image is called (`host/repo` or the layout's tag): the SBOM's name.
    pub name: &'a str,
    /// The image manifest's digest.
    pub digest: &'a Digest,
    /// `SOURCE_DATE_EPOCH` as RFC 3339: the documents' creation time.
    pub created: &'a str,
    /// The image's `org.opencontainers.image.vendor` label: the supplier of its own crates
    /// when their Cargo.toml names no author.
    pub vendor: Option<&'a str>,
}

/// The SPDX 2.3 document for an image: the binary's package and every crate linked into it, each
/// with its source, checksum, license and purl, the binary statically linking each.
pub fn spdx(subject: &Subject<'_>, binary: &str, crates: &[Crate]) -> Value {
    let pkg_id = |c: &Crate| {
        format!(
            "SPDXRef-Package-{}-{}",
            spdx_id(&c.name),
            spdx_id(&c.version)
        )
    };
    let mut packages = Vec::new();
    let mut relationships = Vec::new();
    let root_id = crates.first().map(pkg_id);
    for (i, c) in crates.iter().enumerate() {
        let download = match (c.kind.as_str(), &c.source) {
            ("registry", Some(s)) if s.contains("crates.io-index") => format!(
                "https://static.crates.io/crates/{0}/{0}-{1}.crate",
                c.name, c.version
            ),
            ("git", Some(s)) => format!("git+{s}"),
            _ => "NOASSERTION".to_string(),
        };
        let mut p = json!({
            "SPDXID": pkg_id(c),
            "name": c.name,
            "versionInfo": c.version,
            "downloadLocation": download,
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license(c.license.as_deref()),
            "copyrightText": "NOASSERTION",
            "supplier": supplier(c, subject.vendor),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:cargo/{}@{}", c.name, c.version),
            }],
            "comment": format!("{} crate{}", c.kind, c.source.as_ref().map(|s| format!(" from {s}")).unwrap_or_default()),
        });
        if let Some(sum) = &c.checksum {
            p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sum}]);
        }
        if i == 0 {
            p["primaryPackagePurpose"] = "APPLICATION".into();
            p["comment"] = format!("the crate whose binary {binary} the image holds").into();
        } else if let Some(root) = &root_id {
            relationships.push(json!({
                "spdxElementId": root,
                "relationshipType": "STATIC_LINK",
                "relatedSpdxElement": pkg_id(c),
            }));
        }
        packages.push(p);
    }
    if let Some(root) = &root_id {
        relationships.insert(
            0,
            json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": root}),
        );
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} {binary}", subject.name),
        "documentNamespace": format!("https://galley.invalid/spdx/{}/{}", subject.digest.hex(), binary),
        "creationInfo": {
            "created": subject.created,
            "creators": [format!("Tool: galley-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

/// Facts of a build for its provenance.
pub struct BuildFacts<'a> {
    pub variant: &'a str,
    pub package: &'a str,
    pub binary: &'a str,
    pub features: &'a [String],
    pub default_features: bool,
    pub target: &'a str,
    pub version: &'a str,
    pub profile: &'a str,
    pub rustflags: &'a [String],
    pub source_date_epoch: u64,
    /// The source repository, when the image says (`org.opencontainers.image.source`).
    pub source: Option<&'a str>,
    pub revision: Option<&'a str>,
    pub cargo_lock: Option<&'a Digest>,
    pub base_name: &'a str,
    pub base_digest: &'a Digest,
    pub tools: &'a crate::toolchain::ToolVersions,
}

/// The SLSA v1 provenance of an image, as an in-toto v1 statement: galley as the builder, the
/// build's parameters, its materials (the commit, Cargo.lock, the base image) and the tools.
pub fn provenance(subject: &Subject<'_>, b: &BuildFacts<'_>) -> Value {
    let mut materials = Vec::new();
    if let Some(rev) = b.revision {
        let commit = rev.trim_end_matches("-dirty");
        let mut m = json!({"digest": {"gitCommit": commit}});
        if let Some(src) = b.source {
            m["uri"] = format!("git+{src}@{commit}").into();
        } else {
            m["name"] = "source".into();
        }
        if rev.ends_with("-dirty") {
            m["annotations"] = json!({"dirty": true});
        }
        materials.push(m);
    }
    if let Some(lock) = b.cargo_lock {
        materials.push(json!({"name": "Cargo.lock", "digest": {"sha256": lock.hex()}}));
    }
    materials.push(json!({"uri": b.base_name, "digest": {"sha256": b.base_digest.hex()}}));
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": subject.name, "digest": {"sha256": subject.digest.hex()}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "https://galley.invalid/buildtypes/cargo-zigbuild/v1",
                "externalParameters": {
                    "variant": b.variant,
                    "package": b.package,
                    "binary": b.binary,
                    "features": b.features,
                    "defaultFeatures": b.default_features,
                    "target": b.target,
                    "version": b.version,
                    "profile": b.profile,
                    "rustflags": b.rustflags,
                },
                "internalParameters": {"sourceDateEpoch": b.source_date_epoch},
                "resolvedDependencies": materials,
            },
            "runDetails": {
                "builder": {
                    "id": format!("https://galley.invalid/galley@{}", env!("CARGO_PKG_VERSION")),
                    "version": {
                        "galley": env!("CARGO_PKG_VERSION"),
                        "rustc": b.tools.rustc,
                        "cargo-zigbuild": b.tools.cargo_zigbuild,
                        "zig": b.tools.zig,
                        "upx": b.tools.upx,
                    },
                },
                "metadata": {"finishedOn": subject.created},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licenses_are_spdx_expressions_or_noassertion() {
        assert_eq!(license(Some("MIT OR Apache-2.0")), "MIT OR Apache-2.0");
        assert_eq!(license(Some("MIT/Apache-2.0")), "MIT OR Apache-2.0");
        assert_eq!(
            license(Some("(MIT OR Apache-2.0) AND Unicode-3.0")),
            "(MIT OR Apache-2.0) AND Unicode-3.0"
        );
        assert_eq!(license(None), "NOASSERTION");
        assert_eq!(license(Some("see LICENSE file")), "NOASSERTION");
        assert_eq!(
            license(Some("GPL-2.0-or-later WITH Classpath-exception-2.0")),
            "GPL-2.0-or-later WITH Classpath-exception-2.0"
        );
    }

    /// The defect: any alphanumeric word passed as an SPDX id, so `BSD` or `Apache-2` went
    /// into the SBOM as if they were licenses.
    #[test]
    fn words_that_are_not_spdx_ids_are_noassertion() {
        for bad in [
            "BSD",
            "Apache-2",
            "MIT OR BSD",
            "Apache-2.0 AND",
            "GPL WITH x",
            "MIT)",
        ] {
            assert_eq!(license(Some(bad)), "NOASSERTION", "{bad}");
        }
        assert_eq!(license(Some("Apache-2.0  OR\tMIT")), "Apache-2.0 OR MIT");
    }

    #[test]
    fn the_sbom_is_deterministic_and_names_the_binary_first() {
        let d = Digest::of(b"manifest");
        let subject = Subject {
            name: "registry.example.com/team/app",
            digest: &d,
            created: "2023-11-14T22:13:20Z",
            vendor: None,
        };
        let crates = vec![
            Crate {
                name: "app".into(),
                version: "1.0.0".into(),
                kind: "path".into(),
                source: None,
                checksum: None,
                license: Some("MIT".into()),
                authors: vec!["Ada Lovelace <ada@example.com>".into()],
            },
            Crate {
                name: "serde".into(),
                version: "1.0.0".into(),
                kind: "registry".into(),
                source: Some("https://github.com/rust-lang/crates.io-index".into()),
                checksum: Some("ab".repeat(32)),
                license: Some("MIT OR Apache-2.0".into()),
                authors: Vec::new(),
            },
        ];
        let a = spdx(&subject, "app", &crates);
        assert_eq!(a, spdx(&subject, "app", &crates));
        assert_eq!(a["packages"][0]["primaryPackagePurpose"], "APPLICATION");
        assert_eq!(a["relationships"][0]["relationshipType"], "DESCRIBES");
        assert_eq!(
            a["relationships"][1]["relatedSpdxElement"],
            "SPDXRef-Package-serde-1.0.0"
        );
        assert_eq!(a["packages"][1]["checksums"][0]["algorithm"], "SHA256");
        assert_eq!(a["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(
            a["packages"][0]["supplier"],
            "Person: Ada Lovelace (ada@example.com)"
        );
        assert_eq!(a["packages"][1]["supplier"], "Organization: crates.io");
    }

    #[test]
    fn the_supplier_is_the_distribution_source() {
        let c = |kind: &str, source: Option<&str>, authors: &[&str]| Crate {
            name: "x".into(),
            version: "1.0.0".into(),
            kind: kind.into(),
            source: source.map(str::to_string),
            checksum: None,
            license: None,
            authors: authors.iter().map(|a| a.to_string()).collect(),
        };
        let git = c(
            "git",
            Some("https://user@git.example.com/team/x.git#abc"),
            &[],
        );
        assert_eq!(supplier(&git, None), "Organization: git.example.com");
        let alt = c("registry", Some("https://registry.example.com/index/"), &[]);
        assert_eq!(supplier(&alt, None), "Organization: registry.example.com");
        let own = c("path", None, &["Team Infra"]);
        assert_eq!(supplier(&own, Some("Acme")), "Person: Team Infra");
        let anon = c("path", None, &[]);
        assert_eq!(supplier(&anon, Some("Acme (EU)")), "Organization: Acme EU");
        assert_eq!(supplier(&anon, None), "NOASSERTION");
    }
}
