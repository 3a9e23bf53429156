//! The command line: clap definitions, turned into validated requests here and nowhere else.

pub mod build;
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
    Build(BuildArgs),
    /// Print the ELF facts of a binary and whether galley would ship it for a target.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The cargo project (holding Cargo.toml and optionally galley.toml).
    #[arg(long, default_value = ".")]
    pub project: PathBuf,
    /// Variants to build, comma-separated (default: every [variants.*] in galley.toml).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// The version for tags and annotations (default: the package version in Cargo.toml).
    #[arg(long)]
    pub version: Option<String>,
    /// Base image: host/repo:tag, host/repo@sha256:..., or oci:DIR:TAG (default: docker.io/library/alpine:3.20).
    #[arg(long)]
    pub base: Option<String>,
    /// The OCI image layout to write the images into.
    #[arg(long, default_value = "out")]
    pub output: PathBuf,
    /// Target triple; repeat for an image index with several platforms (default: x86_64-unknown-linux-musl).
    #[arg(long = "target")]
    pub targets: Vec<String>,
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
