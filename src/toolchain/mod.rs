//! The compiler seam: `Toolchain` turns (project, target, features) into a binary on disk.
//! `CargoZigbuild` is the real one; tests can put a fake behind the same trait.

mod zigbuild;

use std::path::{Path, PathBuf};

pub use zigbuild::CargoZigbuild;

use crate::proc::ProcError;
use crate::target::Target;

/// One compile: one variant for one target.
#[derive(Debug, Clone)]
pub struct CompileRequest<'a> {
    pub project: &'a Path,
    pub target: Target,
    pub features: &'a [String],
    pub binary: &'a str,
    pub source_date_epoch: u64,
}

/// Where the compiler left the binary. The file is overwritten by the next compile of the same
/// project, so the pipeline copies it away at once.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{0}: install it with scripts/setup.sh (pip install ziglang cargo-zigbuild)")]
    Tool(#[source] ProcError),
    #[error("cargo zigbuild failed ({status}): {tail}")]
    Failed { status: String, tail: String },
    #[error("cargo finished but reported no binary named {binary:?} (binaries built: {built}): set `binary` in galley.toml")]
    NoBinary { binary: String, built: String },
}

/// Compiles a project for a target with a set of features.
pub trait Toolchain: Send + Sync {
    /// Compiles; `log` receives each line of the compiler's human output as it arrives.
    fn compile(
        &self,
        req: &CompileRequest<'_>,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<Compiled, CompileError>;

    /// A one-line description of the toolchain's versions, for the report.
    fn describe(&self) -> String;
}
