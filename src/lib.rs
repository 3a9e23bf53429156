//! galley publishes Rust services as minimal, reproducible OCI images without Docker.
//!
//! The pipeline (see `pipeline`) compiles each variant on the host with cargo-zigbuild, verifies
//! the binary (`elf`), strips and compresses it, writes a deterministic layer and assembles an image
//! on a base image (`oci`). ARCHITECTURE.md has the map.

pub mod api;
pub mod attest;
pub mod cache;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod elf;
pub mod git;
pub mod oci;
pub mod pipeline;
pub mod proc;
pub mod registry;
pub mod repro;
pub mod runner;
pub mod spec;
pub mod store;
pub mod target;
pub mod toolchain;
pub mod web;
