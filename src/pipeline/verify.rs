//! The verify stage: the only way to get a `VerifiedBinary`, which every later stage requires.

use std::path::{Path, PathBuf};

use crate::elf::{self, ElfError, ElfFacts, Verdict};
use crate::oci::digest::{digest_reader, Digest};
use crate::target::Target;

/// A binary file that passed the ELF checks for its target. Only `verify` constructs one.
#[derive(Debug, Clone)]
pub struct VerifiedBinary {
    path: PathBuf,
    target: Target,
    facts: ElfFacts,
    digest: Digest,
}

impl VerifiedBinary {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn target(&self) -> Target {
        self.target
    }
    pub fn facts(&self) -> &ElfFacts {
        &self.facts
    }
    pub fn size(&self) -> u64 {
        self.facts.size
    }
    /// sha256 of the file, recorded so the report can chain raw, stripped and packed binaries.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} refused: {source}")]
    NotElf { path: PathBuf, source: ElfError },
    #[error("{path} refused for {target}: {reason}")]
    Refused {
        path: PathBuf,
        target: Target,
        reason: String,
        verdict: Verdict,
    },
}

/// Reads and judges a binary for `target`.
pub fn verify(path: &Path, target: Target) -> Result<VerifiedBinary, VerifyError> {
    let data = std::fs::read(path).map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let facts = elf::inspect(&data).map_err(|source| VerifyError::NotElf {
        path: path.to_path_buf(),
        source,
    })?;
    let verdict = elf::judge(&facts, target);
    if !verdict.acceptable {
        return Err(VerifyError::Refused {
            path: path.to_path_buf(),
            target,
            reason: verdict.reason(),
            verdict,
        });
    }
    let (digest, _) = digest_reader(&data[..]).map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(VerifiedBinary {
        path: path.to_path_buf(),
        target,
        facts,
        digest,
    })
}
