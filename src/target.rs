//! The allow-list of compile targets galley builds for, and the OCI platform each maps to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A compile target galley knows how to build, verify and package.
///
/// Only static musl targets are listed: they are the ones whose binaries run on any Linux base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "x86_64-unknown-linux-musl")]
    X86_64Musl,
    #[serde(rename = "aarch64-unknown-linux-musl")]
    Aarch64Musl,
}

/// The CPU architecture of a target, as the ELF header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// An OCI platform: what an image index entry and an image config say about where an image runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub os: &'static str,
    pub architecture: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<&'static str>,
}

impl Target {
    /// Every target galley accepts, in a stable order.
    pub const ALL: [Target; 2] = [Target::X86_64Musl, Target::Aarch64Musl];

    /// The rustc target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Target::X86_64Musl => "x86_64-unknown-linux-musl",
            Target::Aarch64Musl => "aarch64-unknown-linux-musl",
        }
    }

    /// The architecture binaries for this target must have.
    pub fn arch(self) -> Arch {
        match self {
            Target::X86_64Musl => Arch::X86_64,
            Target::Aarch64Musl => Arch::Aarch64,
        }
    }

    /// The OCI platform of images built for this target.
    pub fn platform(self) -> Platform {
        match self {
            Target::X86_64Musl => Platform {
                os: "linux",
                architecture: "amd64",
                variant: None,
            },
            Target::Aarch64Musl => Platform {
                os: "linux",
                architecture: "arm64",
                variant: Some("v8"),
            },
        }
    }

    /// Whether binaries for this target can run on the machine galley runs on.
    pub fn runs_on_host(self) -> bool {
        match self {
            Target::X86_64Musl => cfg!(target_arch = "x86_64"),
            Target::Aarch64Musl => cfg!(target_arch = "aarch64"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.triple())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// A target triple that is not on galley's allow-list.
#[derive(Debug, thiserror::Error)]
#[error("unsupported target {given:?}: galley builds static musl binaries for {}", Target::ALL.map(|t| t.triple()).join(", "))]
pub struct UnknownTarget {
    pub given: String,
}

impl FromStr for Target {
    type Err = UnknownTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::ALL
            .into_iter()
            .find(|t| t.triple() == s)
            .ok_or_else(|| UnknownTarget {
                given: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_allow_listed_triples() {
        assert_eq!(
            "x86_64-unknown-linux-musl".parse::<Target>().unwrap(),
            Target::X86_64Musl
        );
        assert_eq!(
            "aarch64-unknown-linux-musl".parse::<Target>().unwrap(),
            Target::Aarch64Musl
        );
        for bad in [
            "x86_64-unknown-linux-gnu",
            "x86_64-unknown-linux-musl;id",
            "",
            "--target",
        ] {
            let err = bad.parse::<Target>().unwrap_err().to_string();
            assert!(err.contains("unsupported target"), "{err}");
        }
    }

    #[test]
    fn arm64_platform_carries_variant_v8() {
        assert_eq!(Target::Aarch64Musl.platform().variant, Some("v8"));
        assert_eq!(Target::X86_64Musl.platform().architecture, "amd64");
    }
}
