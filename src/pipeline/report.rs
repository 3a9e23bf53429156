//! The build report: per variant its status, digest, tags, sizes at every stage, the time of
//! every stage and the warnings. Printed as a human summary and as JSON; read back typed (by the
//! service's API and by `galley repro`) from `report.json` or the store.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::compress::Compression;
use super::events::{Stage, StageStatus};
use super::strip::StripOutcome;
use crate::elf::ElfFacts;
use crate::oci::Digest;
use crate::registry::pull::Resolution;
use crate::registry::push::PushStats;
use crate::spec::EpochSource;
use crate::toolchain::ToolVersions;

/// The schema of the reports this galley writes. 0 is a report written before reports said
/// theirs (it reads the same); a report of a newer schema is refused by [`Report::parse`].
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// Why a report cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Malformed(#[from] serde_json::Error),
    #[error("the report's schema is version {found}, newer than this galley reads ({REPORT_SCHEMA_VERSION}): use a newer galley")]
    Newer { found: u32 },
}

/// The whole build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_SCHEMA_VERSION`] when written (absent, read as 0, in older reports; an old
    /// report written back stays without it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schema_version: u32,
    pub galley_version: String,
    pub project: String,
    pub binary: String,
    pub version: String,
    pub source_date_epoch: u64,
    /// Where the epoch came from: environment, git_commit, or zero (no git history).
    pub epoch_source: EpochSource,
    pub created: String,
    /// The HEAD commit (`-dirty` when the project's directory had changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<bool>,
    pub base: BaseReport,
    /// What `galley repro` needs besides the project's files to build this again (absent in
    /// reports written before galley recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<crate::spec::Inputs>,
    pub output: String,
    /// The tool versions on one line (as `tools`, for people).
    pub toolchain: String,
    #[serde(default)]
    pub tools: ToolVersions,
    pub succeeded: bool,
    /// False in the copy written before the tags move; true once they have (or were withheld).
    /// A report left with `false` means galley stopped in between.
    #[serde(default)]
    pub tags_moved: bool,
    pub variants: Vec<VariantReport>,
    pub total_ms: u64,
    /// What the stage cache's remote tier did (absent without a cache repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_cache: Option<crate::cache::remote::RemoteReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseReport {
    pub name: String,
    /// Base blobs downloaded by this build (0 when the local cache had them).
    pub blobs_downloaded: u32,
    /// The digest the base reference resolved to (an index or a manifest).
    pub digest: Digest,
    /// How a registry tag was resolved: pinned, registry, cached or stale (absent for a layout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// When the tag was resolved to `digest`, and how long ago that was at build time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_age_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Succeeded,
    Failed,
}

/// One variant: one image, or an image index when it has several platforms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantReport {
    pub variant: String,
    pub features: Vec<String>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the tags point at: the manifest, or the index of several platforms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Tags given to the image (empty when the variant failed: no tag moves to a broken image).
    pub tags: Vec<String>,
    pub platforms: Vec<PlatformReport>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushReport>,
}

/// What pushing a variant did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushReport {
    pub repository: String,
    /// The digest the tags point at: the sha256 of the manifest (or index) bytes sent.
    pub digest: Digest,
    /// `host/repo:tag@digest` for every tag moved (empty when the push failed or was withheld).
    pub references: Vec<String>,
    /// Why the tags were not moved although this variant's images were pushed (another variant
    /// failed and `--partial` was not given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    /// Blobs uploaded, skipped (already there) and mounted, all platforms together.
    pub blobs: PushStats,
    pub ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One platform image of a variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlatformReport {
    pub target: String,
    pub platform: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_digest: Option<Digest>,
    pub sizes: Sizes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip: Option<StripOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elf: Option<ElfFacts>,
    /// sha256 of the binary after each stage: raw, stripped, packed.
    pub binary_digests: Vec<(String, Digest)>,
    pub stages: Vec<StageTiming>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushStats>,
    /// What is attached to the image (its SBOM, its provenance): artifact manifests whose
    /// subject is `manifest_digest`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referrers: Vec<ReferrerReport>,
    /// What pushing the referrers did (apart from `push`, the image's own blobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrers_push: Option<PushStats>,
    /// What sccache did in this platform's compile (absent without sccache, or when the stage
    /// cache answered and cargo did not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sccache: Option<crate::toolchain::sccache::SccacheStats>,
}

/// An artifact attached to an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferrerReport {
    pub artifact_type: String,
    /// The artifact manifest's digest.
    pub digest: Digest,
    pub size: u64,
}

/// Sizes in bytes; absent when the stage did not run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sizes {
    pub raw: Option<u64>,
    pub stripped: Option<u64>,
    /// The UPX-packed binary, when compression was applied.
    pub compressed: Option<u64>,
    /// galley's layer: uncompressed tar, and gzip as stored and pushed.
    pub layer_tar: Option<u64>,
    pub layer: Option<u64>,
    /// The image as stored and pushed: manifest + config + every layer (gzip), base included.
    pub image: Option<u64>,
    /// The base image's share of `image` (its layers and nothing else).
    pub base_layers: Option<u64>,
}

/// One stage that ran: how it ended, when it started (wall clock, for people) and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: Stage,
    pub status: StageStatus,
    pub started_at: String,
    pub ms: u64,
    /// `cached` (the stage cache answered) or `ran`, for stages the cache covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheUse>,
    /// The cache key: the sha256 of the stage's inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

/// How a stage used the stage cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheUse {
    /// The local tier answered: the stage's work was not done.
    Cached,
    /// The remote tier (the cache repository) answered: the stage's work was not done here or
    /// anywhere since the entry was uploaded.
    Remote,
    /// The stage ran (and its output was offered to the cache).
    Ran,
}

impl CacheUse {
    /// A tier answered: the work was not done.
    pub fn cached(self) -> bool {
        self != CacheUse::Ran
    }
}

impl Status {
    pub fn succeeded(self) -> bool {
        self == Status::Succeeded
    }
}

impl Report {
    /// Reads a report (from `report.json` or the store), refusing a newer schema.
    pub fn parse(json: &[u8]) -> Result<Report, ReportError> {
        Self::check(serde_json::from_slice(json)?)
    }

    /// Like [`Report::parse`], from a JSON value.
    pub fn from_value(json: serde_json::Value) -> Result<Report, ReportError> {
        Self::check(serde_json::from_value(json)?)
    }

    fn check(report: Report) -> Result<Report, ReportError> {
        if report.schema_version > REPORT_SCHEMA_VERSION {
            return Err(ReportError::Newer {
                found: report.schema_version,
            });
        }
        Ok(report)
    }

    /// The references of the images this build made, one per variant, as `galley build`
    /// prints them on stdout (as `ko build` does): `host/repo@sha256:...` when it was pushed
    /// (what `docker pull` and `skopeo inspect docker://` take: a reference with a tag and a
    /// digest is refused by some tools), else `oci:OUTPUT:TAG` with its first tag. A variant that
    /// failed, or whose registry tags were withheld, has none.
    pub fn image_refs(&self) -> Vec<String> {
        self.image_refs_with(|tag| format!("oci:{}:{tag}", self.output))
    }

    /// As [`Report::image_refs`], with `local` naming an unpushed variant's first tag (in an
    /// archive rather than the layout).
    pub fn image_refs_with(&self, local: impl Fn(&str) -> String) -> Vec<String> {
        let mut out = Vec::new();
        for v in self.succeeded_variants() {
            match &v.push {
                Some(p) if p.withheld.is_none() && !p.references.is_empty() => {
                    out.push(format!("{}@{}", p.repository, p.digest))
                }
                Some(_) => {}
                None => out.extend(v.tags.first().map(|t| local(t))),
            }
        }
        out
    }

    /// The variants that succeeded.
    pub fn succeeded_variants(&self) -> impl Iterator<Item = &VariantReport> {
        self.variants.iter().filter(|v| v.status.succeeded())
    }
}

impl PlatformReport {
    /// An empty report for a target, filled in stage by stage.
    pub fn new(target: &str, platform: String) -> PlatformReport {
        PlatformReport {
            target: target.to_string(),
            platform,
            manifest_digest: None,
            config_digest: None,
            layer_digest: None,
            sizes: Sizes::default(),
            strip: None,
            compression: None,
            elf: None,
            binary_digests: Vec::new(),
            stages: Vec::new(),
            error: None,
            warnings: Vec::new(),
            push: None,
            referrers: Vec::new(),
            referrers_push: None,
            sccache: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn human(bytes: Option<u64>) -> String {
    match bytes {
        None => "-".into(),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) => format!("{b} B"),
    }
}

impl Report {
    /// The human summary printed on stderr.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "galley {}: {} {} on {} ({})",
            self.galley_version, self.binary, self.version, self.base.name, self.base.digest
        );
        let epoch = match self.epoch_source {
            EpochSource::Environment => format!("SOURCE_DATE_EPOCH={}", self.source_date_epoch),
            EpochSource::GitCommit => format!("HEAD commit time {}", self.source_date_epoch),
            EpochSource::Zero => "no SOURCE_DATE_EPOCH and no git history: 0".to_string(),
        };
        let _ = writeln!(
            s,
            "created {} ({epoch}), output {}",
            self.created, self.output
        );
        if self.dirty == Some(true) {
            let _ = writeln!(
                s,
                "warning: the project has uncommitted changes (revision {})",
                self.revision.as_deref().unwrap_or("?")
            );
        }
        if let (Some(how), Some(age)) = (self.base.resolution, self.base.resolution_age_secs) {
            let how = match how {
                Resolution::Pinned => "pinned by digest",
                Resolution::Registry => "resolved now",
                Resolution::Cached => "resolution cached",
                Resolution::Stale => "registry unreachable: stale cached resolution",
            };
            let _ = writeln!(s, "base: {how}, {age} s old (--refresh-base asks again)");
        }
        for v in &self.variants {
            match v.status {
                Status::Succeeded => {
                    let _ = writeln!(
                        s,
                        "\n✔ {} [{}] {}",
                        v.variant,
                        v.features.join(","),
                        v.digest.as_ref().map(|d| d.as_str()).unwrap_or("")
                    );
                    let _ = writeln!(s, "  tags: {}", v.tags.join(", "));
                }
                Status::Failed => {
                    let _ = writeln!(
                        s,
                        "\n✘ {} [{}] FAILED: {}",
                        v.variant,
                        v.features.join(","),
                        v.error.as_deref().unwrap_or("see above")
                    );
                }
            }
            for p in &v.platforms {
                let z = &p.sizes;
                let _ = writeln!(
                    s,
                    "  {}: binary {} raw, {} stripped, {} compressed; layer {}; image {}",
                    p.platform,
                    human(z.raw),
                    human(z.stripped),
                    human(z.compressed),
                    human(z.layer),
                    human(z.image)
                );
                let times: Vec<String> = p
                    .stages
                    .iter()
                    .map(|t| {
                        let cached = match t.cache {
                            Some(CacheUse::Cached) => " (cached)",
                            Some(CacheUse::Remote) => " (remote)",
                            _ => "",
                        };
                        format!("{} {:.1}s{cached}", t.stage, t.ms as f64 / 1000.0)
                    })
                    .collect();
                let _ = writeln!(s, "  time: {}", times.join(", "));
                if !p.referrers.is_empty() {
                    let attached: Vec<String> = p
                        .referrers
                        .iter()
                        .map(|r| {
                            let what = match r.artifact_type.as_str() {
                                crate::attest::SPDX_MEDIA_TYPE => "sbom",
                                crate::attest::IN_TOTO_MEDIA_TYPE => "provenance",
                                other => other,
                            };
                            format!("{what} {}", r.digest)
                        })
                        .collect();
                    let _ = writeln!(s, "  attached: {}", attached.join(", "));
                }
                if let Some(e) = &p.error {
                    let _ = writeln!(s, "  error: {e}");
                }
            }
            if let Some(p) = &v.push {
                match (&p.error, &p.withheld) {
                    (Some(e), _) => {
                        let _ = writeln!(s, "  push failed (no tag moved): {e}");
                    }
                    (None, Some(why)) => {
                        let _ = writeln!(s, "  pushed {}@{}, but {why}", p.repository, p.digest);
                    }
                    (None, None) => {
                        let _ = writeln!(s, "  pushed: {}", p.references.join(", "));
                    }
                }
                let _ = writeln!(
                    s,
                    "  blobs: {} uploaded ({}), {} skipped, {} mounted",
                    p.blobs.uploaded,
                    human(Some(p.blobs.bytes_uploaded)),
                    p.blobs.skipped,
                    p.blobs.mounted
                );
            }
            for w in &v.warnings {
                let _ = writeln!(s, "  warning: {w}");
            }
        }
        let ok = self
            .variants
            .iter()
            .filter(|v| v.status == Status::Succeeded)
            .count();
        let _ = writeln!(
            s,
            "\n{ok} of {} variants built in {:.1}s",
            self.variants.len(),
            self.total_ms as f64 / 1000.0
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/store/before-seams/report-1.json"
    ));

    /// A report written before reports had a schema version reads typed, and writes back as
    /// the same JSON.
    #[test]
    fn a_report_written_before_reads_and_writes_back_the_same() {
        let r = Report::parse(OLD.as_bytes()).unwrap();
        assert_eq!(r.schema_version, 0);
        assert_eq!(r.succeeded_variants().count(), 2);
        assert_eq!(
            r.variants[0].platforms[0].stages[0].cache,
            Some(CacheUse::Ran)
        );
        let was: serde_json::Value = serde_json::from_str(OLD).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), was);
    }

    #[test]
    fn a_report_of_a_newer_schema_is_refused_and_the_current_one_reads() {
        let mut v: serde_json::Value = serde_json::from_str(OLD).unwrap();
        v["schema_version"] = (REPORT_SCHEMA_VERSION + 1).into();
        let e = Report::from_value(v.clone()).unwrap_err();
        assert!(matches!(e, ReportError::Newer { .. }), "{e}");
        assert!(e.to_string().contains("use a newer galley"), "{e}");
        v["schema_version"] = REPORT_SCHEMA_VERSION.into();
        let r = Report::from_value(v).unwrap();
        let again = serde_json::to_value(&r).unwrap();
        assert_eq!(again["schema_version"], REPORT_SCHEMA_VERSION);
        assert!(Report::parse(b"{\"variants\": 3}").is_err());
    }

    /// `galley repro` says "not recorded" for a tool a report lacks: such a report reads.
    #[test]
    fn a_report_without_a_tool_version_reads_with_it_empty() {
        let mut v: serde_json::Value = serde_json::from_str(OLD).unwrap();
        v["tools"].as_object_mut().unwrap().remove("zig");
        let r = Report::from_value(v).unwrap();
        assert_eq!(r.tools.get("zig"), Some(""));
        assert_eq!(r.tools.get("upx"), Some("upx 4.2.2"));
    }
}
