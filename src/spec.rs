//! `BuildSpec`: a build request validated once, at the edge. Every string that reaches a child
//! process, a tag or a file path has passed an allow-list here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::units::parse_duration;
use crate::config::workspace::{config_rustflags, Workspace, WorkspaceError};
use crate::config::{CargoPackage, ConfigError, FileConfig, ProjectConfig};
pub use crate::git::{is_commit, GitFacts};
use crate::oci::image::ImageSettings;
use crate::oci::time::{parse_epoch, rfc3339, BadEpoch};
use crate::oci::Digest;
pub use crate::registry::reference::BaseRef;
use crate::registry::reference::{is_tag, BadBase};
use crate::registry::{Credential, Reference, RegistryOptions};
use crate::target::{Target, UnknownTarget};

/// The base image users get when they name none.
pub const DEFAULT_BASE: &str = "docker.io/library/alpine:3.20";
/// The tag template used when none is configured.
pub const DEFAULT_TAG: &str = "{variant}-{version}";

/// Raw inputs of a build, as given on the command line (or later, the API). All optional values
/// fall back to galley.toml, then to defaults.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub project: PathBuf,
    pub variants: Vec<String>,
    pub version: Option<String>,
    pub base: Option<String>,
    pub output: PathBuf,
    pub targets: Vec<String>,
    pub tags: Vec<String>,
    pub no_compress: bool,
    /// `SOURCE_DATE_EPOCH` from the caller's environment, if set.
    pub source_date_epoch: Option<String>,
    /// The UPX program (default `upx` on PATH).
    pub upx: Option<PathBuf>,
    /// Repository to push the images to (`host/repo`), if any.
    pub push: Option<String>,
    /// Registries spoken to over plain HTTP (loopback always is).
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates for private TLS registries.
    pub ca_bundle: Option<PathBuf>,
    /// Credentials from the command line (else Docker's config.json).
    pub credential: Option<Credential>,
    /// Re-resolve the base image's tag instead of using the cached resolution.
    pub refresh_base: bool,
    /// Where pulled base images are cached (default `BlobCache::default_dir()`).
    pub cache_dir: Option<PathBuf>,
    /// How long a base tag's resolution is trusted (`30m`, `24h`, `7d`; default galley.toml's
    /// `base_ttl`, else a day).
    pub base_ttl: Option<String>,
    /// Move the registry tags of the variants that succeeded even when another failed.
    pub partial: bool,
    /// `RUSTFLAGS` given to galley (whitespace-separated).
    pub rustflags: Option<String>,
    /// `CARGO_ENCODED_RUSTFLAGS` given to galley (0x1f-separated); wins over `rustflags`.
    pub encoded_rustflags: Option<String>,
    /// Turn the stage cache off (`--no-cache`): every stage runs.
    pub no_cache: bool,
    /// The stage cache's size limit in bytes (default `cache::DEFAULT_MAX_BYTES`).
    pub cache_max_bytes: Option<u64>,
    /// The digest the base reference must resolve to (`galley repro` rebuilding a recorded
    /// build): a registry tag is fetched by this digest, keeping its name; a layout's tag
    /// pointing elsewhere is an error.
    pub base_pin: Option<Digest>,
    /// The stage cache's remote tier (`host/repo`), instead of galley.toml's `cache_repository`.
    pub cache_repo: Option<String>,
    /// The key file of the remote tier, instead of galley.toml's `cache_key_file`.
    pub cache_key_file: Option<PathBuf>,
    /// Read unsigned remote entries, instead of galley.toml's `cache_unsigned`.
    pub cache_unsigned: Option<bool>,
    /// sccache's Redis endpoint, instead of galley.toml's `sccache`.
    pub sccache: Option<String>,
}

impl BuildRequest {
    /// The request that builds recorded `inputs` again (their variants, base, targets, tags,
    /// compression and rustflags) from `project` into `output`; the rest is the caller's.
    pub fn replay(inputs: &Inputs, project: PathBuf, output: PathBuf) -> BuildRequest {
        BuildRequest {
            project,
            output,
            variants: inputs.variants.clone(),
            base: Some(inputs.base.clone()),
            targets: inputs.targets.clone(),
            tags: inputs.tags.clone(),
            no_compress: inputs.no_compress,
            rustflags: inputs.rustflags.clone(),
            encoded_rustflags: inputs.encoded_rustflags.clone(),
            ..Default::default()
        }
    }
}

/// The inputs of a build that its project's files do not hold: recorded in the report so that
/// `galley repro` can build the same thing again.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inputs {
    /// The variants, by name, in build order.
    pub variants: Vec<String>,
    /// The base reference in full (a layout's directory as an absolute path).
    pub base: String,
    /// The target triples.
    pub targets: Vec<String>,
    /// Tag templates given on the command line (empty: galley.toml's or the default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `--no-compress` was given.
    #[serde(default)]
    pub no_compress: bool,
    /// RUSTFLAGS as galley got it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rustflags: Option<String>,
    /// CARGO_ENCODED_RUSTFLAGS as galley got it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoded_rustflags: Option<String>,
}

/// One variant to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantSpec {
    pub name: String,
    pub features: Vec<String>,
    /// Keep the package's default features (false: `--no-default-features`).
    pub default_features: bool,
    /// The workspace member that owns the binary (`-p`).
    pub package: Option<String>,
    /// The cargo binary target: `/<workdir>/<binary>` in the image.
    pub binary: String,
    pub tags: Vec<String>,
    /// Where this variant is pushed (the variant's `repository`, else `--push`).
    pub push: Option<Reference>,
    /// The image settings, with this variant's default entrypoint.
    pub image: ImageSettings,
}

/// A project file shipped in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// The file on disk (inside the project).
    pub src: PathBuf,
    /// Its path in the image, relative (no leading `/`).
    pub dst: String,
    pub mode: u32,
}

/// How to compress binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressSpec {
    pub enabled: bool,
    /// UPX's flags: `--best --lzma`, or `-9` for `compress = "fast"`.
    pub flags: Vec<String>,
    pub upx: PathBuf,
    /// Arguments for the smoke run of the packed binary; `None` skips the run.
    pub smoke_args: Option<Vec<String>>,
    pub smoke_timeout: Duration,
}

/// A validated build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub project: PathBuf,
    /// The first variant's binary (what the report names the build after).
    pub binary: String,
    /// The cargo profile (`release` unless galley.toml says otherwise).
    pub profile: String,
    /// The user's rustflags per target: the project's cargo config, then RUSTFLAGS.
    pub rustflags: Vec<(Target, Vec<String>)>,
    /// More environment for cargo: names or prefixes (`FOO_*`).
    pub env_passthrough: Vec<String>,
    /// Project files shipped in every image.
    pub files: Vec<ImageFile>,
    /// Path dependencies outside the project (their sources are compile inputs too).
    pub external_sources: Vec<PathBuf>,
    /// The stage cache's limit, `None` when it is off.
    pub stage_cache: Option<u64>,
    /// The stage cache's remote tier, when a cache repository is configured.
    pub cache_remote: Option<crate::cache::remote::RemoteSpec>,
    /// Compile through sccache on this backend.
    pub sccache: Option<crate::toolchain::sccache::SccacheSpec>,
    /// Attach an SPDX SBOM to each image (galley.toml `sbom`, default true).
    pub sbom: bool,
    /// Attach a SLSA provenance statement to each image (galley.toml `provenance`, default true).
    pub provenance: bool,
    pub version: String,
    pub variants: Vec<VariantSpec>,
    pub targets: Vec<Target>,
    pub base: BaseRef,
    pub output: PathBuf,
    pub image: ImageSettings,
    pub source_date_epoch: u64,
    /// `SOURCE_DATE_EPOCH` as RFC 3339: the `created` time of configs, history and annotations.
    pub created: String,
    /// The HEAD commit, with `-dirty` appended when the project's directory has changes.
    pub revision: Option<String>,
    pub dirty: Option<bool>,
    pub epoch_source: EpochSource,
    pub source: Option<String>,
    pub compress: CompressSpec,
    /// The repository images are pushed to.
    pub push: Option<Reference>,
    pub registry: RegistryOptions,
    pub refresh_base: bool,
    pub base_ttl: Duration,
    pub cache_dir: PathBuf,
    /// Release the variants that succeeded even when another failed.
    pub partial: bool,
    /// What the report records for `galley repro`.
    pub inputs: Inputs,
    /// See `BuildRequest::base_pin`.
    pub base_pin: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("project directory {0} does not exist or has no Cargo.toml")]
    NoProject(PathBuf),
    #[error(transparent)]
    Epoch(#[from] BadEpoch),
    #[error("no variants to build: pass --variants (e.g. --variants sqlite,postgres) or list [variants.NAME] in galley.toml")]
    NoVariants,
    #[error("variant name {0:?} is not allowed: use lowercase letters, digits, `_` and `-` (at most 63), starting with a letter or digit")]
    BadVariant(String),
    #[error("variant {0:?} is listed twice")]
    DuplicateVariant(String),
    #[error("cargo feature {feature:?} of variant {variant:?} is not allowed: use letters, digits, `_`, `-` and `/`, not starting with `-`")]
    BadFeature { variant: String, feature: String },
    #[error("binary name {0:?} is not allowed: use letters, digits, `_` and `-`")]
    BadBinary(String),
    #[error("cannot tell which binary to package (binaries: {0}): set `binary = \"NAME\"` in galley.toml")]
    NoBinary(String),
    #[error("no package has a binary named {binary:?} (binaries: {available}): fix `binary` in galley.toml")]
    NoSuchBinary { binary: String, available: String },
    #[error(
        "binary {binary:?} is in packages {packages}: set `package = \"NAME\"` in galley.toml"
    )]
    AmbiguousBinary { binary: String, packages: String },
    #[error("package {package:?} is not in this project (packages: {available}): fix `package` in galley.toml")]
    UnknownPackage { package: String, available: String },
    #[error("variant {variant:?}: {feature:?} is not a feature of package {package} (its features: {available})")]
    UnknownFeature {
        variant: String,
        feature: String,
        package: String,
        available: String,
    },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("cannot read the rustflags of the project's cargo configuration: {0}")]
    CargoConfig(String),
    #[error("compress = {0:?} is not a level: use \"best\" (--best --lzma), \"fast\" (-9: quicker start-up, bigger) or false")]
    BadCompress(String),
    #[error("profile {0:?} is not allowed: use letters, digits, `_` and `-`")]
    BadProfile(String),
    #[error("env_passthrough entry {0:?} is not allowed: give a variable name or a prefix ending in `*` (never GALLEY_*, DOCKER_CONFIG or REGISTRY_AUTH_FILE)")]
    BadPassthrough(String),
    #[error("image file {src:?}: {why}")]
    BadFile { src: String, why: String },
    #[error(
        "variant {variant:?}: repository {repository:?} is not host/repo without tag or digest"
    )]
    BadRepository { variant: String, repository: String },
    #[error("version {0:?} is not allowed: use letters, digits, `.`, `_` and `-` (at most 128), e.g. 1.4.2; or pass --version")]
    BadVersion(String),
    #[error("no version: pass --version or set [package] version in Cargo.toml")]
    NoVersion,
    #[error(transparent)]
    Target(#[from] UnknownTarget),
    #[error("tag template {template:?} gives {tag:?} for variant {variant:?}, which is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}); placeholders are {{variant}} and {{version}}")]
    BadTag {
        template: String,
        variant: String,
        tag: String,
    },
    #[error("tag {tag:?} would be given to both variant {first:?} and {second:?}: add {{variant}} to the tag template")]
    TagClash {
        tag: String,
        first: String,
        second: String,
    },
    #[error(transparent)]
    BadBase(#[from] BadBase),
    #[error("--push {0:?} is not a repository: give host/repo without tag or digest (tags come from the tag templates)")]
    BadPush(String),
    #[error("cache_repository {0:?} is not a repository: give host/repo without tag or digest (e.g. registry.example.com/team/galley-cache)")]
    BadCacheRepository(String),
    #[error("sccache {url:?} is not allowed: {why}")]
    BadSccache { url: String, why: String },
    #[error(
        "base_ttl {0:?} is not a duration: use a number with s, m, h or d (e.g. 30m, 24h, 7d)"
    )]
    BadDuration(String),
    #[error("`{0} = []` in galley.toml leaves nothing to build or tag: remove the line for the default or list at least one")]
    EmptyList(&'static str),
    #[error("image setting {field} is not allowed: {why}")]
    BadImage { field: String, why: String },
}

fn is_variant(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn is_feature(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('-')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_-/".contains(&c))
}

fn is_binary(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn is_env_key(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Where `SOURCE_DATE_EPOCH` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochSource {
    /// The caller's `SOURCE_DATE_EPOCH`.
    Environment,
    /// The commit time of the project's HEAD.
    GitCommit,
    /// Neither: 0 (1970-01-01), as ko does, so a project outside git still builds reproducibly.
    Zero,
}

/// What `BuildSpec::from_parts` needs to know about the project besides its galley.toml.
pub struct Facts<'a> {
    pub workspace: &'a Workspace,
    pub git: &'a GitFacts,
    /// The rustflags the project's cargo configuration sets for a target.
    pub config_rustflags: &'a dyn Fn(Target) -> Result<Vec<String>, String>,
    /// Expands one `[[image.files]]` entry into files, checked.
    pub files: &'a dyn Fn(&FileConfig) -> Result<Vec<ImageFile>, SpecError>,
}

impl<'a> Facts<'a> {
    /// Facts without cargo configuration rustflags, where `[[image.files]]` cannot be read (for
    /// callers that have no project directory: tests, checks of galley.toml alone).
    pub fn plain(workspace: &'a Workspace, git: &'a GitFacts) -> Facts<'a> {
        fn no_rustflags(_: Target) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
        fn no_files(f: &FileConfig) -> Result<Vec<ImageFile>, SpecError> {
            Err(SpecError::BadFile {
                src: f.src.clone(),
                why: "files are not read here".into(),
            })
        }
        Facts {
            workspace,
            git,
            config_rustflags: &no_rustflags,
            files: &no_files,
        }
    }
}

/// A version goes into image tags: it must be one.
pub fn check_version(version: &str) -> Result<(), SpecError> {
    if is_tag(version) {
        Ok(())
    } else {
        Err(SpecError::BadVersion(version.to_string()))
    }
}

/// A variant's tags: its tag templates (the command line's, else the variant's, else the
/// project's, else the default) rendered with its name and the version, each a valid tag and
/// none already given to another variant (`owners` remembers whose each tag is).
pub fn variant_tags(
    config: &ProjectConfig,
    cli_templates: &[String],
    variant: &str,
    version: &str,
    owners: &mut BTreeMap<String, String>,
) -> Result<Vec<String>, SpecError> {
    // Per-variant tags replace the project's, but the command line wins over both.
    let variant_templates = config.variants.get(variant).and_then(|v| v.tags.clone());
    let templates: Vec<String> = match (cli_templates.is_empty(), variant_templates) {
        (false, _) => cli_templates.to_vec(),
        (true, Some(t)) => t,
        (true, None) => config
            .tags
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_TAG.to_string()]),
    };
    // An empty list would report success for an untagged image.
    if templates.is_empty() {
        return Err(SpecError::EmptyList("tags"));
    }
    let mut tags = Vec::new();
    for t in &templates {
        let tag = t
            .replace("{variant}", variant)
            .replace("{version}", version);
        if !is_tag(&tag) {
            return Err(SpecError::BadTag {
                template: t.clone(),
                variant: variant.to_string(),
                tag,
            });
        }
        if let Some(first) = owners.insert(tag.clone(), variant.to_string()) {
            if first != variant {
                return Err(SpecError::TagClash {
                    tag,
                    first,
                    second: variant.to_string(),
                });
            }
        }
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

fn is_profile(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphabetic()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn is_passthrough(s: &str) -> bool {
    let name = s.strip_suffix('*').unwrap_or(s);
    is_env_key(name)
        && !name.starts_with("GALLEY_")
        && !matches!(name, "DOCKER_CONFIG" | "REGISTRY_AUTH_FILE")
        && !name.is_empty()
}

/// Which package and binary a variant builds.
/// The package that owns a binary (when cargo says) and the binary's name.
type Picked = (Option<String>, String);

fn pick_binary(
    ws: &Workspace,
    package: Option<&str>,
    binary: Option<&str>,
) -> Result<Picked, SpecError> {
    let listed = || {
        let all = ws.all_binaries();
        if all.is_empty() {
            "none".to_string()
        } else {
            all.join(", ")
        }
    };
    let only_bin = |p: &CargoPackage| -> Result<String, SpecError> {
        match (p.bins.as_slice(), &p.name) {
            ([only], _) => Ok(only.clone()),
            // cargo's default binary is named after the package.
            ([], Some(name)) => Ok(name.clone()),
            _ => Err(SpecError::NoBinary(listed())),
        }
    };
    if let Some(name) = package {
        let p = ws.package(name).ok_or_else(|| SpecError::UnknownPackage {
            package: name.to_string(),
            available: ws
                .packages
                .iter()
                .filter_map(|p| p.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let bin = match binary {
            Some(b) => b.to_string(),
            None => only_bin(p)?,
        };
        return Ok((Some(name.to_string()), bin));
    }
    if let Some(b) = binary {
        let owners = ws.owners_of(b);
        return match owners.as_slice() {
            [one] => Ok((one.name.clone(), b.to_string())),
            [] if ws.packages.len() == 1 => Ok((ws.packages[0].name.clone(), b.to_string())),
            [] => Err(SpecError::NoSuchBinary {
                binary: b.to_string(),
                available: listed(),
            }),
            many => Err(SpecError::AmbiguousBinary {
                binary: b.to_string(),
                packages: many
                    .iter()
                    .filter_map(|p| p.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        };
    }
    if let Some(root) = ws.root.as_deref().and_then(|r| ws.package(r)) {
        return Ok((root.name.clone(), only_bin(root)?));
    }
    let with_bins: Vec<&CargoPackage> = ws.packages.iter().filter(|p| !p.bins.is_empty()).collect();
    match with_bins.as_slice() {
        [one] if one.bins.len() == 1 => Ok((one.name.clone(), one.bins[0].clone())),
        _ => Err(SpecError::NoBinary(listed())),
    }
}

/// Expands and checks one `[[image.files]]` entry of the project at `project` (canonical):
/// the source must stay inside the project, with no symlink on the way; a directory gives its
/// files, sorted.
pub fn expand_files(project: &Path, f: &FileConfig) -> Result<Vec<ImageFile>, SpecError> {
    let bad = |why: String| SpecError::BadFile {
        src: f.src.clone(),
        why,
    };
    let dst = f.dst.trim_end_matches('/');
    if !f.dst.starts_with('/')
        || dst.is_empty()
        || dst.contains('\0')
        || dst[1..]
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(bad(format!(
            "dst {:?} must be an absolute path without `.` or `..` parts, and not `/`",
            f.dst
        )));
    }
    if let Some(m) = f.mode {
        if m > 0o7777 {
            return Err(bad(format!("mode {m:o} has bits outside 0o7777")));
        }
    }
    let rel = Path::new(&f.src);
    if f.src.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad(
            "src must be a path inside the project, relative to it, without `..`".into(),
        ));
    }
    // No part of the way may be a symlink: it could point anywhere.
    let mut at = project.to_path_buf();
    for part in rel.components() {
        at.push(part);
        let meta =
            std::fs::symlink_metadata(&at).map_err(|e| bad(format!("{}: {e}", at.display())))?;
        if meta.file_type().is_symlink() {
            return Err(bad(format!(
                "{} is a symlink: copy the file it points to instead",
                at.display()
            )));
        }
    }
    let mut out = Vec::new();
    collect_files(&at, &dst[1..], f.mode, &mut out).map_err(bad)?;
    if out.is_empty() {
        return Err(bad("holds no file".into()));
    }
    Ok(out)
}

fn collect_files(
    path: &Path,
    dst: &str,
    mode: Option<u32>,
    out: &mut Vec<ImageFile>,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(format!(
            "{} is a symlink: copy the file it points to instead",
            path.display()
        ));
    }
    if kind.is_dir() {
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let name = n.to_str().ok_or_else(|| {
                format!("{} has a name that is not UTF-8", path.join(&n).display())
            })?;
            collect_files(&path.join(name), &format!("{dst}/{name}"), mode, out)?;
        }
        return Ok(());
    }
    if !kind.is_file() {
        return Err(format!(
            "{} is not a regular file or directory",
            path.display()
        ));
    }
    let executable = meta.permissions().mode() & 0o111 != 0;
    out.push(ImageFile {
        src: path.to_path_buf(),
        dst: dst.to_string(),
        mode: mode.unwrap_or(if executable { 0o755 } else { 0o644 }),
    });
    Ok(())
}

impl BuildSpec {
    /// The user's rustflags for a target (cargo configuration and RUSTFLAGS).
    pub fn rustflags_for(&self, target: Target) -> &[String] {
        self.rustflags
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, f)| f.as_slice())
            .unwrap_or(&[])
    }
    /// Validates a request against the project's files (as cargo sees them) and git facts.
    pub fn resolve(req: &BuildRequest) -> Result<BuildSpec, SpecError> {
        let project = req
            .project
            .canonicalize()
            .map_err(|_| SpecError::NoProject(req.project.clone()))?;
        if !project.join("Cargo.toml").is_file() {
            return Err(SpecError::NoProject(req.project.clone()));
        }
        let config = ProjectConfig::load(&project)?;
        let workspace = Workspace::load(&project)?;
        let git = crate::git::facts(&project);
        let rustflags = |t: Target| config_rustflags(&project, t.triple());
        let files = |f: &FileConfig| expand_files(&project, f);
        let facts = Facts {
            workspace: &workspace,
            git: &git,
            config_rustflags: &rustflags,
            files: &files,
        };
        Self::from_parts(req, project.clone(), &config, &facts)
    }

    /// Validates a request from already-read parts: the testable core of `resolve`.
    pub fn from_parts(
        req: &BuildRequest,
        project: PathBuf,
        config: &ProjectConfig,
        facts: &Facts<'_>,
    ) -> Result<BuildSpec, SpecError> {
        let git = facts.git;
        let (source_date_epoch, epoch_source) = match (&req.source_date_epoch, git.commit_time) {
            (Some(v), _) => (parse_epoch(v)?, EpochSource::Environment),
            (None, Some(t)) => (t, EpochSource::GitCommit),
            (None, None) => (0, EpochSource::Zero),
        };
        if let Some(p) = &config.package {
            if !is_binary(p) {
                return Err(SpecError::UnknownPackage {
                    package: p.clone(),
                    available: String::new(),
                });
            }
        }

        // Package and binary per variant first: the version may come from the package.
        let (names, picked) = variants_and_binaries(req, config, facts)?;
        let first_package = picked[0]
            .0
            .as_deref()
            .and_then(|p| facts.workspace.package(p));
        let binary = picked[0].1.clone();

        let version = req
            .version
            .clone()
            .or_else(|| first_package.and_then(|p| p.version.clone()))
            .ok_or(SpecError::NoVersion)?;
        check_version(&version)?;

        let push = match &req.push {
            None => None,
            Some(p) => match Reference::parse(p) {
                Ok(r) if r.tag.is_none() && r.digest.is_none() => Some(r),
                _ => return Err(SpecError::BadPush(p.clone())),
            },
        };
        let mut variants: Vec<VariantSpec> = Vec::new();
        let mut tag_owner: BTreeMap<String, String> = BTreeMap::new();
        for (name, (package, binary)) in names.into_iter().zip(picked) {
            if variants.iter().any(|v| v.name == name) {
                return Err(SpecError::DuplicateVariant(name));
            }
            let vc = config.variants.get(&name);
            let owner = package.as_deref().and_then(|p| facts.workspace.package(p));
            let features = features_of(&name, vc, owner)?;
            let tags = variant_tags(config, &req.tags, &name, &version, &mut tag_owner)?;
            let variant_push = variant_push(&name, vc, &push)?;
            variants.push(VariantSpec {
                default_features: vc.and_then(|v| v.default_features).unwrap_or(false),
                image: image_settings(config, &binary)?,
                name,
                features,
                package,
                binary,
                tags,
                push: variant_push,
            });
        }

        let targets = targets_of(req, config)?;

        let base = BaseRef::parse(
            req.base
                .as_deref()
                .or(config.base.as_deref())
                .unwrap_or(DEFAULT_BASE),
        )?;
        let registry = RegistryOptions {
            insecure: req.insecure_registries.clone(),
            ca_bundle: req.ca_bundle.clone(),
            credential: req.credential.clone(),
            ..Default::default()
        };
        let image = image_settings(config, &binary)?;

        let rustflags = rustflags_of(req, facts, &targets)?;
        let profile = config.profile.clone().unwrap_or_else(|| "release".into());
        if !is_profile(&profile) {
            return Err(SpecError::BadProfile(profile));
        }
        for e in &config.env_passthrough {
            if !is_passthrough(e) {
                return Err(SpecError::BadPassthrough(e.clone()));
            }
        }
        let files = image_files(config, facts)?;

        let compress = compress_of(req, config)?;

        let ttl_text = req.base_ttl.as_deref().or(config.base_ttl.as_deref());
        let base_ttl = match ttl_text {
            None => crate::registry::pull::DEFAULT_BASE_TTL,
            Some(t) => parse_duration(t).ok_or_else(|| SpecError::BadDuration(t.to_string()))?,
        };

        let inputs = inputs_of(req, &variants, &base, &targets);
        let cache_remote = cache_remote_of(req, config, &project)?;
        let sccache = match req.sccache.as_ref().or(config.sccache.as_ref()) {
            None => None,
            Some(url) => Some(crate::toolchain::sccache::SccacheSpec::parse(url).map_err(
                |why| SpecError::BadSccache {
                    url: crate::config::serve::redact_url(url),
                    why,
                },
            )?),
        };
        Ok(BuildSpec {
            cache_remote,
            sccache,
            project,
            binary,
            profile,
            rustflags,
            env_passthrough: config.env_passthrough.clone(),
            files,
            external_sources: facts.workspace.external_paths.clone(),
            stage_cache: (!req.no_cache).then(|| {
                req.cache_max_bytes
                    .unwrap_or(crate::cache::DEFAULT_MAX_BYTES)
            }),
            sbom: config.sbom.unwrap_or(true),
            provenance: config.provenance.unwrap_or(true),
            version,
            variants,
            targets,
            base,
            output: req.output.clone(),
            image,
            source_date_epoch,
            created: rfc3339(source_date_epoch),
            revision: git.revision.as_ref().map(|r| match git.dirty {
                Some(true) => format!("{r}-dirty"),
                _ => r.clone(),
            }),
            dirty: git.dirty,
            epoch_source,
            source: config.image.source.clone(),
            compress,
            push,
            registry,
            refresh_base: req.refresh_base,
            base_ttl,
            partial: req.partial,
            inputs,
            base_pin: req.base_pin.clone(),
            cache_dir: req
                .cache_dir
                .clone()
                .unwrap_or_else(crate::registry::pull::BlobCache::default_dir),
        })
    }
}

/// The remote tier: the request's repository and key file, else galley.toml's (a relative key
/// file there is the project's).
fn cache_remote_of(
    req: &BuildRequest,
    config: &ProjectConfig,
    project: &Path,
) -> Result<Option<crate::cache::remote::RemoteSpec>, SpecError> {
    let Some(repo) = req.cache_repo.as_ref().or(config.cache_repository.as_ref()) else {
        return Ok(None);
    };
    let repository = match Reference::parse(repo) {
        Ok(r) if r.tag.is_none() && r.digest.is_none() => r,
        _ => return Err(SpecError::BadCacheRepository(repo.clone())),
    };
    let key_file = req
        .cache_key_file
        .clone()
        .or_else(|| config.cache_key_file.as_ref().map(|f| project.join(f)));
    Ok(Some(crate::cache::remote::RemoteSpec {
        repository,
        key_file,
        allow_unsigned: req
            .cache_unsigned
            .or(config.cache_unsigned)
            .unwrap_or(false),
    }))
}

/// The targets: the command line's, else galley.toml's, else x86_64 musl; each once.
fn targets_of(req: &BuildRequest, config: &ProjectConfig) -> Result<Vec<Target>, SpecError> {
    let target_names: Vec<String> = if !req.targets.is_empty() {
        req.targets.clone()
    } else {
        config
            .targets
            .clone()
            .unwrap_or_else(|| vec![Target::X86_64Musl.triple().to_string()])
    };
    // An empty list would report success for a variant with no image at all.
    if target_names.is_empty() {
        return Err(SpecError::EmptyList("targets"));
    }
    let mut targets: Vec<Target> = Vec::new();
    for t in &target_names {
        let t: Target = t.parse()?;
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    Ok(targets)
}

/// The user's rustflags per target: the project's cargo configuration for the target, then the
/// environment's (CARGO_ENCODED_RUSTFLAGS wins over RUSTFLAGS, as in cargo). galley adds its path
/// remapping after them.
fn rustflags_of(
    req: &BuildRequest,
    facts: &Facts<'_>,
    targets: &[Target],
) -> Result<Vec<(Target, Vec<String>)>, SpecError> {
    let env_flags: Vec<String> = match (&req.encoded_rustflags, &req.rustflags) {
        (Some(e), _) if !e.is_empty() => e.split('\x1f').map(str::to_string).collect(),
        (_, Some(r)) => r.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let mut rustflags = Vec::new();
    for &t in targets {
        let mut flags = (facts.config_rustflags)(t).map_err(SpecError::CargoConfig)?;
        flags.extend(env_flags.iter().cloned());
        rustflags.push((t, flags));
    }
    Ok(rustflags)
}

/// The `[[image.files]]` entries expanded into files, each destination once.
fn image_files(config: &ProjectConfig, facts: &Facts<'_>) -> Result<Vec<ImageFile>, SpecError> {
    let mut files: Vec<ImageFile> = Vec::new();
    for f in &config.image.files {
        for file in (facts.files)(f)? {
            if files.iter().any(|x| x.dst == file.dst) {
                return Err(SpecError::BadFile {
                    src: f.src.clone(),
                    why: format!("/{} is given twice", file.dst),
                });
            }
            files.push(file);
        }
    }
    Ok(files)
}

/// How binaries are compressed: `compress` in galley.toml (best, fast, or off), `--no-compress`,
/// and the smoke run of the packed binary.
fn compress_of(req: &BuildRequest, config: &ProjectConfig) -> Result<CompressSpec, SpecError> {
    use crate::config::CompressConfig;
    let (compress_enabled, upx_flags): (bool, &[&str]) = match &config.compress {
        _ if req.no_compress => (false, &[]),
        None | Some(CompressConfig::On(true)) => (true, &["--best", "--lzma"]),
        Some(CompressConfig::On(false)) => (false, &[]),
        Some(CompressConfig::Level(l)) if l == "best" => (true, &["--best", "--lzma"]),
        Some(CompressConfig::Level(l)) if l == "fast" => (true, &["-9"]),
        Some(CompressConfig::Level(l)) => return Err(SpecError::BadCompress(l.clone())),
    };
    let smoke_args = if config.image.smoke == Some(false) {
        None
    } else {
        Some(
            config
                .image
                .smoke_args
                .clone()
                .unwrap_or_else(|| vec!["--version".to_string()]),
        )
    };
    Ok(CompressSpec {
        enabled: compress_enabled,
        flags: upx_flags.iter().map(|f| f.to_string()).collect(),
        upx: req.upx.clone().unwrap_or_else(|| PathBuf::from("upx")),
        smoke_args,
        smoke_timeout: Duration::from_secs(10),
    })
}

/// What the report records for `galley repro`.
fn inputs_of(
    req: &BuildRequest,
    variants: &[VariantSpec],
    base: &BaseRef,
    targets: &[Target],
) -> Inputs {
    Inputs {
        variants: variants.iter().map(|v| v.name.clone()).collect(),
        base: match base {
            BaseRef::Layout { dir, tag } => format!(
                "oci:{}:{tag}",
                dir.canonicalize().unwrap_or_else(|_| dir.clone()).display()
            ),
            BaseRef::Registry(r) => r.to_string(),
        },
        targets: targets.iter().map(|t| t.triple().to_string()).collect(),
        tags: req.tags.clone(),
        no_compress: req.no_compress,
        rustflags: req.rustflags.clone(),
        encoded_rustflags: req.encoded_rustflags.clone(),
    }
}

/// A variant's cargo features (galley.toml's, else `db_<name>`), checked against the package
/// that owns its binary when cargo lists that package's features.
fn features_of(
    name: &str,
    vc: Option<&crate::config::VariantConfig>,
    owner: Option<&CargoPackage>,
) -> Result<Vec<String>, SpecError> {
    let features = match vc {
        Some(v) => v.features.clone(),
        None => vec![format!("db_{name}")],
    };
    for f in &features {
        if !is_feature(f) {
            return Err(SpecError::BadFeature {
                variant: name.to_string(),
                feature: f.clone(),
            });
        }
        // `dep/feature` names a dependency's feature: cargo checks those.
        if let Some(p) = owner.filter(|p| !f.contains('/') && !p.features.is_empty()) {
            if !p.features.contains(f) {
                return Err(SpecError::UnknownFeature {
                    variant: name.to_string(),
                    feature: f.clone(),
                    package: p.name.clone().unwrap_or_default(),
                    available: p.features.join(", "),
                });
            }
        }
    }
    Ok(features)
}

/// Where a variant is pushed: its own `repository` when the build pushes, else the build's.
fn variant_push(
    name: &str,
    vc: Option<&crate::config::VariantConfig>,
    push: &Option<Reference>,
) -> Result<Option<Reference>, SpecError> {
    Ok(match (vc.and_then(|v| v.repository.as_deref()), push) {
        (Some(r), Some(_)) => match Reference::parse(r) {
            Ok(r) if r.tag.is_none() && r.digest.is_none() => Some(r),
            _ => {
                return Err(SpecError::BadRepository {
                    variant: name.to_string(),
                    repository: r.to_string(),
                })
            }
        },
        (_, p) => p.clone(),
    })
}

/// The variants to build (the request's, else galley.toml's) and, for each, the package and
/// binary it builds.
fn variants_and_binaries(
    req: &BuildRequest,
    config: &ProjectConfig,
    facts: &Facts<'_>,
) -> Result<(Vec<String>, Vec<Picked>), SpecError> {
    let names: Vec<String> = if req.variants.is_empty() {
        config.variants.keys().cloned().collect()
    } else {
        req.variants.clone()
    };
    if names.is_empty() {
        return Err(SpecError::NoVariants);
    }
    let mut picked = Vec::new();
    for name in &names {
        if !is_variant(name) {
            return Err(SpecError::BadVariant(name.clone()));
        }
        let vc = config.variants.get(name);
        let binary = vc
            .and_then(|v| v.binary.as_deref())
            .or(config.binary.as_deref());
        if let Some(b) = binary {
            if !is_binary(b) {
                return Err(SpecError::BadBinary(b.to_string()));
            }
        }
        picked.push(pick_binary(
            facts.workspace,
            config.package.as_deref(),
            binary,
        )?);
    }
    Ok((names, picked))
}

fn image_settings(config: &ProjectConfig, binary: &str) -> Result<ImageSettings, SpecError> {
    let c = &config.image;
    let bad = |field: &str, why: &str| SpecError::BadImage {
        field: field.to_string(),
        why: why.to_string(),
    };
    let workdir = c.workdir.clone().unwrap_or_else(|| "/app".to_string());
    if !workdir.starts_with('/') || workdir.contains('\0') {
        return Err(bad("workdir", "must be an absolute path"));
    }
    // The binary lives in the working directory.
    let entrypoint = c
        .entrypoint
        .clone()
        .unwrap_or_else(|| vec![format!("{}/{binary}", workdir.trim_end_matches('/'))]);
    if entrypoint.is_empty() || entrypoint.iter().any(|a| a.contains('\0')) {
        return Err(bad(
            "entrypoint",
            "must be a non-empty list of arguments without NUL",
        ));
    }
    for (k, v) in &c.env {
        if !is_env_key(k) || v.contains('\0') {
            return Err(bad(
                &format!("env.{k}"),
                "keys are [A-Za-z_][A-Za-z0-9_]*, values have no NUL",
            ));
        }
    }
    for (k, v) in &c.labels {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(bad(
                &format!("labels.{k}"),
                "keys are non-empty, nothing contains NUL",
            ));
        }
    }
    if c.expose.contains(&0) {
        return Err(bad("expose", "port 0 cannot be exposed"));
    }
    Ok(ImageSettings {
        workdir,
        entrypoint,
        cmd: c.cmd.clone(),
        expose: c.expose.clone(),
        env: c.env.clone(),
        labels: c.labels.clone(),
        user: c.user.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> BuildRequest {
        BuildRequest {
            project: "/p".into(),
            variants: vec!["sqlite".into(), "postgres".into()],
            version: Some("1.4.2".into()),
            base: Some("oci:/tmp/base:3.20".into()),
            output: "out".into(),
            source_date_epoch: Some("1700000000".into()),
            ..Default::default()
        }
    }

    fn resolve(req: &BuildRequest, toml: &str) -> Result<BuildSpec, SpecError> {
        let config = ProjectConfig::parse(toml).unwrap();
        let package = CargoPackage {
            name: Some("svc".into()),
            version: Some("0.1.0".into()),
            bins: vec![],
            features: vec![],
        };
        let ws = Workspace::single(package);
        let git = GitFacts::default();
        BuildSpec::from_parts(req, "/p".into(), &config, &Facts::plain(&ws, &git))
    }

    /// What a report records is what a replay asks for: spec -> inputs -> request -> spec
    /// gives the same inputs.
    #[test]
    fn recorded_inputs_replay_to_the_same_inputs() {
        let r = BuildRequest {
            targets: vec![
                "aarch64-unknown-linux-musl".into(),
                "x86_64-unknown-linux-musl".into(),
            ],
            tags: vec!["{variant}".into(), "{variant}-{version}".into()],
            no_compress: true,
            rustflags: Some("-C target-cpu=native".into()),
            ..req()
        };
        let first = resolve(&r, "").unwrap().inputs;
        let again = BuildRequest::replay(&first, "/p".into(), "out2".into());
        let again = BuildRequest {
            version: r.version.clone(),
            source_date_epoch: r.source_date_epoch.clone(),
            ..again
        };
        let second = resolve(&again, "").unwrap().inputs;
        assert_eq!(second, first);
        assert_eq!(first.targets.len(), 2);
        assert!(first.no_compress && first.tags.len() == 2);
    }

    #[test]
    fn maps_variants_to_features_and_tags() {
        let spec = resolve(&req(), "[variants.postgres]\nfeatures = [\"db_psql\"]").unwrap();
        assert_eq!(spec.variants[0].features, ["db_sqlite"]);
        assert_eq!(spec.variants[1].features, ["db_psql"]);
        assert_eq!(spec.variants[1].tags, ["postgres-1.4.2"]);
        assert_eq!(spec.binary, "svc");
        assert_eq!(spec.created, "2023-11-14T22:13:20Z");
        assert_eq!(
            spec.base,
            BaseRef::Layout {
                dir: "/tmp/base".into(),
                tag: "3.20".into()
            }
        );
        assert_eq!(spec.image.entrypoint, ["/app/svc"]);
        assert_eq!(spec.targets, [Target::X86_64Musl]);
    }

    #[test]
    fn refuses_injection_in_every_field() {
        for bad in [
            "sqlite;id",
            "$(id)",
            "a b",
            "--features=x",
            "Sqlite",
            "../x",
            "a\nb",
        ] {
            let mut r = req();
            r.variants = vec![bad.into()];
            assert!(
                matches!(resolve(&r, ""), Err(SpecError::BadVariant(_))),
                "{bad:?}"
            );
        }
        let err = resolve(
            &req(),
            "[variants.sqlite]\nfeatures = [\"--config=build.rustc-wrapper=/x\"]",
        )
        .unwrap_err();
        assert!(matches!(err, SpecError::BadFeature { .. }), "{err}");
        let mut r = req();
        r.version = Some("1.0;rm -rf".into());
        assert!(matches!(resolve(&r, ""), Err(SpecError::BadVersion(_))));
        assert!(matches!(
            resolve(&req(), "binary = \"-x\""),
            Err(SpecError::BadBinary(_))
        ));
        let mut r = req();
        r.targets = vec!["x86_64-unknown-linux-gnu".into()];
        assert!(matches!(resolve(&r, ""), Err(SpecError::Target(_))));
    }

    #[test]
    fn malformed_epoch_is_an_error_never_now() {
        for bad in ["abc", "-1", "1e9", ""] {
            let mut r = req();
            r.source_date_epoch = Some(bad.into());
            assert!(
                matches!(resolve(&r, ""), Err(SpecError::Epoch(_))),
                "{bad:?}"
            );
        }
        // Outside git and without SOURCE_DATE_EPOCH: 0, and the spec says so.
        let mut r = req();
        r.source_date_epoch = None;
        let spec = resolve(&r, "").unwrap();
        assert_eq!(
            (spec.source_date_epoch, spec.epoch_source),
            (0, EpochSource::Zero)
        );
        assert_eq!(spec.created, "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_dirty_tree_marks_the_revision() {
        let config = ProjectConfig::parse("").unwrap();
        let package = CargoPackage {
            name: Some("svc".into()),
            ..Default::default()
        };
        let mut git = GitFacts {
            revision: Some("a".repeat(40)),
            commit_time: Some(1_600_000_000),
            dirty: Some(true),
        };
        let mut r = req();
        r.source_date_epoch = None;
        let ws = Workspace::single(package.clone());
        let spec =
            BuildSpec::from_parts(&r, "/p".into(), &config, &Facts::plain(&ws, &git)).unwrap();
        assert_eq!(spec.revision, Some(format!("{}-dirty", "a".repeat(40))));
        assert_eq!(spec.epoch_source, EpochSource::GitCommit);
        git.dirty = Some(false);
        let ws = Workspace::single(package.clone());
        let spec =
            BuildSpec::from_parts(&r, "/p".into(), &config, &Facts::plain(&ws, &git)).unwrap();
        assert_eq!(spec.revision, Some("a".repeat(40)));
    }

    #[test]
    fn tag_templates_must_give_distinct_valid_tags() {
        let mut r = req();
        r.tags = vec!["{version}".into()];
        assert!(matches!(resolve(&r, ""), Err(SpecError::TagClash { .. })));
        r.tags = vec!["{variant}:{version}".into()];
        assert!(matches!(resolve(&r, ""), Err(SpecError::BadTag { .. })));
        r.tags = vec!["{variant}-{version}".into(), "{variant}".into()];
        assert_eq!(
            resolve(&r, "").unwrap().variants[0].tags,
            ["sqlite-1.4.2", "sqlite"]
        );
    }

    /// Regression: `targets = []` or `tags = []` reported success for an empty or untagged image.
    #[test]
    fn targets_or_tags_empty_list_is_refused() {
        for (toml, field) in [("targets = []", "targets"), ("tags = []", "tags")] {
            let err = resolve(&req(), toml).unwrap_err();
            assert!(
                matches!(err, SpecError::EmptyList(f) if f == field),
                "{toml}: {err}"
            );
            assert!(
                err.to_string().contains(&format!("`{field} = []`")),
                "{err}"
            );
        }
    }

    #[test]
    fn push_takes_a_repository_only() {
        let mut r = req();
        r.push = Some("127.0.0.1:5000/team/tiny".into());
        assert_eq!(
            resolve(&r, "").unwrap().push.unwrap().repository,
            "team/tiny"
        );
        for bad in ["127.0.0.1:5000/team/tiny:1", "Team/Tiny", "x;id"] {
            r.push = Some(bad.into());
            assert!(
                matches!(resolve(&r, ""), Err(SpecError::BadPush(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn base_ttl_is_a_duration() {
        assert_eq!(
            resolve(&req(), "").unwrap().base_ttl,
            Duration::from_secs(86_400)
        );
        assert_eq!(
            resolve(&req(), "base_ttl = \"0s\"").unwrap().base_ttl,
            Duration::ZERO
        );
        assert!(matches!(
            resolve(&req(), "base_ttl = \"soon\""),
            Err(SpecError::BadDuration(_))
        ));
    }

    #[test]
    fn env_passthrough_refuses_galleys_own_secrets() {
        for ok in ["MY_VAR", "VENDOR_*", "_X"] {
            assert!(
                resolve(&req(), &format!("env_passthrough = [\"{ok}\"]")).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "GALLEY_API_TOKEN",
            "GALLEY_*",
            "DOCKER_CONFIG",
            "REGISTRY_AUTH_FILE",
            "A-B",
            "*",
            "",
            "X Y",
        ] {
            let err = resolve(&req(), &format!("env_passthrough = [\"{bad}\"]")).unwrap_err();
            assert!(matches!(err, SpecError::BadPassthrough(_)), "{bad}: {err}");
        }
        assert!(matches!(
            resolve(&req(), "profile = \"--x\""),
            Err(SpecError::BadProfile(_))
        ));
        assert_eq!(
            resolve(&req(), "profile = \"dist\"").unwrap().profile,
            "dist"
        );
    }

    #[test]
    fn compress_takes_a_level_or_a_boolean() {
        let flags =
            |toml: &str| resolve(&req(), toml).map(|s| (s.compress.enabled, s.compress.flags));
        let best = (true, vec!["--best".to_string(), "--lzma".to_string()]);
        assert_eq!(flags("").unwrap(), best);
        assert_eq!(flags("compress = true").unwrap(), best);
        assert_eq!(flags("compress = \"best\"").unwrap(), best);
        assert_eq!(
            flags("compress = \"fast\"").unwrap(),
            (true, vec!["-9".to_string()])
        );
        assert!(!flags("compress = false").unwrap().0);
        assert!(matches!(
            resolve(&req(), "compress = \"ultra\""),
            Err(SpecError::BadCompress(_))
        ));
    }

    #[test]
    fn parses_base_references() {
        assert_eq!(
            BaseRef::parse("oci:dir").unwrap(),
            BaseRef::Layout {
                dir: "dir".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(
            BaseRef::parse("oci:a/b:1").unwrap().display_name(),
            "oci:b:1"
        );
        assert_eq!(
            BaseRef::parse("alpine:3.20").unwrap().display_name(),
            "docker.io/library/alpine:3.20"
        );
        for bad in ["", "-x", "a b", "oci:", "oci:d:bad tag", "x;id"] {
            assert!(BaseRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
