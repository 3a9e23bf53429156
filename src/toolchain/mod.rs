//! The compiler seam: `Toolchain` turns (project, target, features) into a binary on disk.
//! `CargoZigbuild` is the real one, `fake::FakeToolchain` writes a prepared ELF (the pipeline's
//! unit tests run on it), and `Limited` is the decorator that shares compile slots.

pub mod fake;
mod limit;
pub mod sccache;
mod zigbuild;

use std::path::{Path, PathBuf};

pub use limit::{CompileSlot, CompileSlots, Limited};
pub use zigbuild::CargoZigbuild;

use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::proc::ProcError;
use crate::target::Target;

/// One compile: one variant for one target.
#[derive(Debug, Clone)]
pub struct CompileRequest<'a> {
    pub project: &'a Path,
    pub target: Target,
    pub features: &'a [String],
    /// Keep the package's default features (false: `--no-default-features`).
    pub default_features: bool,
    /// The workspace member (`-p`), when known.
    pub package: Option<&'a str>,
    pub binary: &'a str,
    /// The cargo profile (`release`, or a custom one).
    pub profile: &'a str,
    /// The user's rustflags (cargo config and RUSTFLAGS); galley's path remapping follows them.
    pub rustflags: &'a [String],
    /// More environment for cargo: names or prefixes (`FOO_*`).
    pub env_passthrough: &'a [String],
    /// Path dependencies outside the project: sources too.
    pub external_sources: &'a [PathBuf],
    /// zig's global cache when the environment names none (galley keeps it warm across builds).
    pub zig_cache: Option<&'a Path>,
    pub source_date_epoch: u64,
    /// Compile through sccache on this shared backend (dependency crates across hosts).
    pub sccache: Option<&'a sccache::SccacheSpec>,
}

impl CompileRequest<'_> {
    /// The cargo command line as a person would type it (for the log).
    pub fn describe(&self) -> String {
        let mut s = String::from("cargo zigbuild");
        if self.profile == "release" {
            s.push_str(" --release");
        } else {
            s.push_str(&format!(" --profile {}", self.profile));
        }
        s.push_str(&format!(" --locked --target {}", self.target));
        if let Some(p) = self.package {
            s.push_str(&format!(" -p {p}"));
        }
        if !self.default_features {
            s.push_str(" --no-default-features");
        }
        if !self.features.is_empty() {
            s.push_str(&format!(" --features {}", self.features.join(",")));
        }
        s.push_str(&format!(" --bin {}", self.binary));
        s
    }
}

/// Where the compiler left the binary. The file is overwritten by the next compile of the same
/// project, so the pipeline copies it away at once.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub path: PathBuf,
    /// How sccache served the compile, when it was asked for.
    pub sccache: Option<SccacheUse>,
}

/// What became of sccache in one compile: its statistics, or why the compile went on without
/// it (Redis down, no sccache) or with this host's own paths (no private mount namespace).
#[derive(Debug, Clone, Default)]
pub struct SccacheUse {
    pub stats: Option<sccache::SccacheStats>,
    pub warning: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{0}: install it with scripts/setup.sh (pip install ziglang cargo-zigbuild)")]
    Tool(#[source] ProcError),
    #[error("cargo zigbuild failed ({status}): {tail}")]
    Failed { status: String, tail: String },
    #[error("cargo finished but reported no binary named {binary:?} (binaries built: {built}): set `binary` in galley.toml")]
    NoBinary { binary: String, built: String },
    #[error("stopped: {0}")]
    Cancelled(String),
}

impl From<ProcError> for CompileError {
    fn from(e: ProcError) -> Self {
        match e {
            ProcError::Cancelled { reason, .. } => CompileError::Cancelled(reason),
            other => CompileError::Tool(other),
        }
    }
}

/// The versions of the tools a build used, each as the tool prints it (or "unavailable").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolVersions {
    // Each may be missing from a report (read as empty: "not recorded").
    #[serde(default)]
    pub rustc: String,
    #[serde(default)]
    pub cargo_zigbuild: String,
    #[serde(default)]
    pub zig: String,
    /// Absent when UPX did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upx: Option<String>,
}

impl ToolVersions {
    /// `rustc …; cargo-zigbuild …; zig …`, as reports have always shown it.
    pub fn one_line(&self) -> String {
        format!("{}; {}; zig {}", self.rustc, self.cargo_zigbuild, self.zig)
    }

    /// A tool's version by its field name (`rustc`, `cargo_zigbuild`, `zig`, `upx`).
    pub fn get(&self, tool: &str) -> Option<&str> {
        match tool {
            "rustc" => Some(&self.rustc),
            "cargo_zigbuild" => Some(&self.cargo_zigbuild),
            "zig" => Some(&self.zig),
            "upx" => self.upx.as_deref(),
            _ => None,
        }
    }

    pub fn with_upx(mut self, upx: Option<String>) -> ToolVersions {
        self.upx = upx;
        self
    }
}

/// Compiles a project for a target with a set of features.
pub trait Toolchain: Send + Sync {
    /// Compiles; `log` receives each line of the compiler's human output as it arrives. A
    /// cancel stops the compiler's whole process tree.
    fn compile(
        &self,
        req: &CompileRequest<'_>,
        cancel: &Cancel,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<Compiled, CompileError>;

    /// The versions of the tools as they run in `project` (a `rust-toolchain.toml` there counts),
    /// for the report, the build record and the compile cache.
    fn versions(&self, project: &Path) -> ToolVersions;

    /// Everything a compile reads, as data: the compile cache's key. `Err` says why the inputs
    /// cannot all be named; the compile then runs.
    fn fingerprint(
        &self,
        req: &CompileRequest<'_>,
        tools: &ToolVersions,
    ) -> Result<serde_json::Value, String> {
        let _ = (req, tools);
        Err("this toolchain does not describe its inputs".into())
    }
}
