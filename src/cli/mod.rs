//! The command line: clap definitions, turned into validated requests here and nowhere else.

pub mod attest;
pub mod build;
pub mod docs;
pub mod doctor;
pub mod http;
pub mod push;
pub mod rebase;
pub mod repro;
pub mod serve;
pub mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Publish Rust services as minimal, reproducible OCI images, without Docker.
#[derive(Debug, Parser)]
#[command(name = "galley", version, about, propagate_version = false)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile each variant, verify, strip, compress and package it as an OCI image.
    Build(Box<BuildArgs>),
    /// Print the ELF facts of a binary and whether galley would ship it for a target.
    Verify(VerifyArgs),
    /// Push the tagged images of an OCI layout (built earlier) to a repository.
    Push(PushArgs),
    /// Run the HTTP API: queue builds, stream their logs, keep their history, cancel them.
    Serve(ServeArgs),
    /// Print the SBOM (SPDX 2.3 JSON) attached to an image of a layout; --provenance prints its
    /// SLSA provenance statement instead.
    Sbom(SbomArgs),
    /// Build a recorded build again in a fresh directory and compare every digest: exit 0 when
    /// all match, 1 when something differs (where, down to the key or file), 2 on an error.
    Repro(ReproArgs),
    /// Move a galley image onto another base without compiling: its own layer kept byte for
    /// byte, the base's swapped, the config derived again, SBOM and provenance attached again.
    Rebase(RebaseArgs),
    /// Check a repository before anything compiles: credentials, pull and push rights, a mount
    /// from the base, the referrers API, the clock. Exit 0 when a push would work, 1 when a
    /// check fails, 2 on bad input.
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout, e.g.
    /// `galley completions bash > /etc/bash_completion.d/galley`.
    Completions(CompletionsArgs),
    /// Write man pages (galley.1 and one per command) into a directory, e.g.
    /// `galley man /usr/local/share/man/man1`.
    Man(ManArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  galley rebase oci:out:sqlite-1.4.2 --base registry.example.com/library/alpine:3.21
  galley rebase oci:out:sqlite-1.4.2 --base oci:bases/b:2 --from-base oci:bases/a:1 --output rebased
  galley rebase registry.example.com/team/authd:sqlite-1.4.2 --base registry.example.com/library/alpine:3.21

The tags move last, together: the image's own tag by default, or every --tag.")]
pub struct RebaseArgs {
    /// The image: oci:DIR:TAG (an OCI layout galley wrote), or host/repo:tag (rebased and
    /// pushed back with its tag, unless --output is given).
    pub image: String,
    /// The new base: host/repo:tag, host/repo@sha256:..., or oci:DIR:TAG.
    #[arg(long)]
    pub base: String,
    /// The base the image was built on, when it was a layout (a registry base is found again
    /// by the digest the image records).
    #[arg(long)]
    pub from_base: Option<String>,
    /// The layout to write the rebased image into (default: the image's own).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The tags the rebased image gets (default: the image's tag); repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Print what was done as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  galley doctor registry.example.com/team/authd
  galley doctor registry.example.com/team/authd --base registry.example.com/library/alpine:3.20
  echo \"$PASSWORD\" | galley doctor 127.0.0.1:5000/team/x --username ci --password-stdin --json")]
pub struct DoctorArgs {
    /// The repository to push to (host/repo).
    pub repository: String,
    /// The base image (host/repo:tag or @sha256:...): checks that its layers mount from its
    /// repository when it is on the same registry.
    #[arg(long)]
    pub base: Option<String>,
    /// Print the checks as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing).
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ReproArgs {
    /// The report of the build to reproduce (e.g. out/report.json).
    #[arg(required_unless_present = "build", conflicts_with = "build")]
    pub report: Option<PathBuf>,
    /// Ask a `galley serve` to reproduce its build ID instead (POST /api/v1/builds/ID/repro)
    /// and wait for its verdict. The token comes from GALLEY_API_TOKEN.
    #[arg(long, value_name = "ID")]
    pub build: Option<i64>,
    /// The service's URL, with --build.
    #[arg(long, env = "GALLEY_SERVER", default_value = "http://127.0.0.1:8700")]
    pub server: String,
    /// Print the verdict as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Build with this SOURCE_DATE_EPOCH instead of the recorded one.
    #[arg(long)]
    pub source_date_epoch: Option<String>,
    /// Where the fresh build directory goes (default: the temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the fresh directory (sources, target dir, rebuilt layout) to look into.
    #[arg(long)]
    pub keep: bool,
    /// The UPX program (default: upx on PATH).
    #[arg(long, env = "GALLEY_UPX")]
    pub upx: Option<PathBuf>,
    /// Speak plain HTTP to this registry (for the base; loopback always is).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) for a private TLS registry.
    #[arg(long, env = "GALLEY_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SbomArgs {
    /// The image: `oci:DIR:TAG` (e.g. oci:out:sqlite-1.4.2), or the layout directory followed
    /// by TAG.
    pub image: String,
    /// The image's tag in the layout, when IMAGE is a directory (e.g. sqlite-1.4.2).
    pub tag: Option<String>,
    /// Print the provenance statement (in-toto, SLSA v1) instead of the SBOM.
    #[arg(long)]
    pub provenance: bool,
    /// For an index of several platforms: which one (e.g. linux/arm64).
    #[arg(long)]
    pub platform: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The service's TOML config (listen, data_dir, projects, ...). The API token comes from
    /// GALLEY_API_TOKEN or the config's token_file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address and port to listen on (default 127.0.0.1:8700).
    #[arg(long)]
    pub listen: Option<String>,
    /// Where the database, build outputs and git mirrors live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A project to build, as NAME=PATH (repeatable; adds to or replaces the config's).
    #[arg(long = "project")]
    pub projects: Vec<String>,
    /// Log lines as text or as JSON objects (one per line).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The OCI image layout (e.g. out/).
    pub layout: PathBuf,
    /// The repository to push to (host/repo).
    pub repository: String,
    /// Push only these tags (default: every tag in the layout).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Print the push report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  galley build                                  every variant of the project here, into ./out
  galley build ../authd --variants sqlite,psql --version 1.4.2
  IMG=$(galley build --variants sqlite --push registry.example.com/team/authd)   # host/repo@sha256:...
  GALLEY_REPO=registry.example.com/team/authd galley build --push --platform linux/amd64,linux/arm64

Put PROJECT before a bare --push (after it, it would be taken for the repository).

stdout holds the image references, one per variant (with --json: the report instead); the
summary and the log go to stderr.")]
pub struct BuildArgs {
    /// The cargo project (holding Cargo.toml and optionally galley.toml; default: here).
    #[arg(value_name = "PROJECT", conflicts_with = "project")]
    pub project_dir: Option<PathBuf>,
    /// The cargo project, as a flag (the same as PROJECT).
    #[arg(long)]
    pub project: Option<PathBuf>,
    /// Variants to build, comma-separated (default: every [variants.*] in galley.toml).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// The version for tags and annotations (default: the package version in Cargo.toml).
    #[arg(long)]
    pub version: Option<String>,
    /// Base image: host/repo:tag, host/repo@sha256:..., or oci:DIR:TAG (default: docker.io/library/alpine:3.20).
    #[arg(long)]
    pub base: Option<String>,
    /// Where the images go: an OCI image layout directory, or one file with every tag of the
    /// build, `oci-archive:FILE` or `docker-archive:FILE` (single-platform images).
    #[arg(long, default_value = "out")]
    pub output: PathBuf,
    /// Target triple; repeat for an image index with several platforms (default: x86_64-unknown-linux-musl).
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// OCI platforms instead of (or besides) targets, comma-separated: linux/amd64, linux/arm64.
    #[arg(long = "platform", value_delimiter = ',')]
    pub platforms: Vec<String>,
    /// Tag template; repeat for several tags. Placeholders: {variant}, {version}.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Do not compress binaries with UPX.
    #[arg(long)]
    pub no_compress: bool,
    /// The UPX program to use.
    #[arg(long, env = "GALLEY_UPX")]
    pub upx: Option<PathBuf>,
    /// Print the report as JSON on stdout (it is always written to OUTPUT/report.json).
    #[arg(long)]
    pub json: bool,
    /// Push every image to this repository (host/repo), tags last. Without a value: the
    /// repository in GALLEY_REPO (as ko's KO_DOCKER_REPO).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "REPOSITORY")]
    pub push: Option<String>,
    /// Also write the image references (stdout's lines: one per variant) to this file.
    #[arg(long, value_name = "FILE")]
    pub image_refs: Option<PathBuf>,
    /// Print only errors and the image references (no log lines, no summary).
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print every stage as it starts and ends, besides the log lines.
    #[arg(short, long)]
    pub verbose: bool,
    /// Re-resolve the base image's tag instead of using the cached digest.
    #[arg(long)]
    pub refresh_base: bool,
    /// How long a cached base tag resolution is used before asking the registry again
    /// (e.g. 30m, 24h, 7d; default galley.toml's base_ttl, else 24h).
    #[arg(long)]
    pub base_ttl: Option<String>,
    /// With --push: move the registry tags of the variants that succeeded even when another
    /// variant failed (by default no registry tag moves unless every variant succeeded).
    #[arg(long)]
    pub partial: bool,
    /// Run every stage: no compile skip, no cached UPX or layer.
    #[arg(long)]
    pub no_cache: bool,
    /// The stage cache's size limit (e.g. 2GiB, 500MiB); least recently used entries go first.
    #[arg(long, env = "GALLEY_CACHE_MAX")]
    pub cache_max: Option<String>,
    /// The stage cache's remote tier: a repository (host/repo) every host reads and uploads
    /// entries to (default galley.toml's cache_repository).
    #[arg(long, env = "GALLEY_CACHE_REPO", value_name = "REPOSITORY")]
    pub cache_repo: Option<String>,
    /// The key the hosts share to sign and verify remote cache entries (default galley.toml's
    /// cache_key_file).
    #[arg(long, env = "GALLEY_CACHE_KEY_FILE", value_name = "FILE")]
    pub cache_key_file: Option<PathBuf>,
    /// Read remote cache entries without a key: trusts whoever can push to the cache repository.
    #[arg(long)]
    pub cache_unsigned: bool,
    /// Compile through sccache on this Redis (redis://host:port[/db]; a password comes from
    /// SCCACHE_REDIS_PASSWORD): dependency crates other hosts compiled are hits (default
    /// galley.toml's sccache).
    #[arg(long, env = "GALLEY_SCCACHE", value_name = "URL")]
    pub sccache: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How to reach and log in to registries.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// A registry (host[:port]) to reach over plain HTTP; loopback registries always are.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// PEM file with extra CA certificates for private TLS registries.
    #[arg(long, env = "GALLEY_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Registry user name (the password is read from stdin with --password-stdin);
    /// without it, credentials come from Docker's config.json ($DOCKER_CONFIG honoured).
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from stdin.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

impl RegistryArgs {
    /// The registry options of these flags (the password read from stdin when given).
    pub fn options(&self) -> anyhow::Result<crate::registry::RegistryOptions> {
        Ok(crate::registry::RegistryOptions {
            insecure: self.insecure_registries.clone(),
            ca_bundle: self.ca_bundle.clone(),
            credential: credential(self)?,
            ..Default::default()
        })
    }
}

/// Reads `--username` and the password from stdin, if given.
pub fn credential(registry: &RegistryArgs) -> anyhow::Result<Option<crate::registry::Credential>> {
    let Some(username) = &registry.username else {
        return Ok(None);
    };
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .map_err(|e| anyhow::anyhow!("cannot read the password from stdin: {e}"))?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(
        !password.is_empty(),
        "--password-stdin: stdin held no password"
    );
    Ok(Some(crate::registry::Credential::Basic {
        username: username.clone(),
        password: crate::registry::Secret::new(password),
    }))
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The binary to inspect.
    pub file: PathBuf,
    /// The target it must suit.
    #[arg(long, default_value = "x86_64-unknown-linux-musl")]
    pub target: String,
    /// Print the facts and verdict as JSON.
    #[arg(long)]
    pub json: bool,
}
