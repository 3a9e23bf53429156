//! What a running build tells the outside: log lines and stage transitions, per variant and
//! target. The CLI prints them; the service stores and streams them.

use serde::{Deserialize, Serialize};

use crate::target::Target;

/// A stage of a variant's pipeline, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Compile,
    Verify,
    Strip,
    Compress,
    Layer,
    Assemble,
    /// The SBOM and provenance, attached to the image as referrers.
    Attest,
    Push,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 8] = [
        Stage::Compile,
        Stage::Verify,
        Stage::Strip,
        Stage::Compress,
        Stage::Layer,
        Stage::Assemble,
        Stage::Attest,
        Stage::Push,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Compile => "compile",
            Stage::Verify => "verify",
            Stage::Strip => "strip",
            Stage::Compress => "compress",
            Stage::Layer => "layer",
            Stage::Assemble => "assemble",
            Stage::Attest => "attest",
            Stage::Push => "push",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// A child's standard output.
    Stdout,
    /// A child's standard error (cargo's human log).
    Stderr,
    /// galley itself.
    Galley,
}

/// How a stage ended (or that it is running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Running,
    Succeeded,
    Failed,
    /// Not run: an earlier stage of the variant failed, or the stage does not apply.
    Skipped,
    Cancelled,
}

/// A line of build log, tagged with where it comes from.
#[derive(Debug, Clone)]
pub struct LogLine<'a> {
    pub variant: &'a str,
    pub target: Target,
    pub stage: Stage,
    pub stream: Stream,
    pub message: &'a str,
}

/// A stage started or ended.
#[derive(Debug, Clone)]
pub struct StageEvent<'a> {
    pub variant: &'a str,
    pub target: Target,
    pub stage: Stage,
    pub status: StageStatus,
    /// How long it ran (absent when it starts or was skipped).
    pub ms: Option<u64>,
    /// Why it failed or was skipped.
    pub detail: Option<&'a str>,
    /// Whether the stage's output came from the stage cache, and its key.
    pub cache: Option<&'a super::CacheNote>,
}

/// Where a build's events go. Called from several threads at once.
pub trait EventSink: Sync {
    fn log(&self, line: &LogLine<'_>);
    fn stage(&self, event: &StageEvent<'_>);
}
