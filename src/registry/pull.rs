//! Pulling a base image: resolve the reference to a digest, pick each target's platform from an
//! index, and stream blobs into a local content-addressed cache (an OCI layout), digests checked
//! while writing. A warm build reads everything from the cache and does not touch the network;
//! `refresh` re-resolves the tag.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::client::{read_bounded, Client, Step};
use super::retry::Try;
use super::{Reference, RegistryError, RegistryOptions};
use crate::oci::layout::{Layout, MAX_JSON_BLOB};
use crate::oci::{
    is_index, Descriptor, Digest, Index, Manifest, PlatformImage, PlatformSpec, DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST, MEDIA_INDEX, MEDIA_MANIFEST,
};
use crate::target::Target;

/// The local blob cache: an OCI layout holding every blob pulled, plus tag resolutions.
pub struct BlobCache {
    root: PathBuf,
    layout: Layout,
}

impl BlobCache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<BlobCache, RegistryError> {
        let layout = Layout::create(&root.join("oci"))?;
        Ok(BlobCache {
            root: root.to_path_buf(),
            layout,
        })
    }

    /// `$GALLEY_CACHE_DIR`, else `$XDG_CACHE_HOME/galley`, else `~/.cache/galley`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("GALLEY_CACHE_DIR") {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("galley");
        }
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache").join("galley"))
            .unwrap_or_else(|| PathBuf::from(".galley-cache"))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn ref_file(&self, r: &Reference) -> PathBuf {
        // Reference parts are validated (no `..`, no `/` in tags), so this stays inside the cache.
        self.root
            .join("refs")
            .join(&r.registry)
            .join(&r.repository)
            .join(r.reference())
    }

    /// The digest a tag resolved to last time, and when that was (the file's mtime).
    fn cached_resolution(&self, r: &Reference) -> Option<(Digest, SystemTime)> {
        let path = self.ref_file(r);
        let when = std::fs::metadata(&path).ok()?.modified().ok()?;
        let digest = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
        Some((digest, when))
    }

    fn remember_resolution(&self, r: &Reference, d: &Digest) -> Result<(), RegistryError> {
        let path = self.ref_file(r);
        let local = |source| RegistryError::File {
            action: "write",
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(path.parent().expect("ref files have a parent")).map_err(local)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, d.as_str()).map_err(local)?;
        std::fs::rename(&tmp, &path).map_err(local)
    }
}

/// How one try of a blob download ended.
enum BlobError {
    /// Another try would not help.
    Final(Box<RegistryError>),
    /// The body was cut or corrupt on the way: worth another try.
    Cut(Box<RegistryError>),
}

impl BlobError {
    fn final_(e: RegistryError) -> BlobError {
        BlobError::Final(Box::new(e))
    }
}

/// Where a base reference's digest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The reference names a digest: nothing to resolve.
    Pinned,
    /// The tag was asked of the registry by this build.
    Registry,
    /// The tag's digest came from the local cache, younger than the TTL.
    Cached,
    /// The TTL had passed but the registry could not be reached: the cached digest was used.
    Stale,
}

/// When a tag's resolution is trusted without asking the registry again, unless overridden.
pub const DEFAULT_BASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A base image resolved for each target.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// What the reference resolved to.
    pub digest: Digest,
    pub resolution: Resolution,
    /// When the tag was resolved (absent for a pinned digest).
    pub resolved_at: Option<SystemTime>,
    pub platforms: Vec<PlatformImage>,
    /// Blobs fetched over the network this time (0 on a warm build).
    pub blobs_downloaded: u32,
    pub bytes_downloaded: u64,
}

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

struct Puller<'a> {
    reference: &'a Reference,
    options: &'a RegistryOptions,
    cache: &'a BlobCache,
    client: Option<Client>,
    blobs_downloaded: u32,
    bytes_downloaded: u64,
}

impl<'a> Puller<'a> {
    fn new(
        reference: &'a Reference,
        options: &'a RegistryOptions,
        cache: &'a BlobCache,
    ) -> Puller<'a> {
        Puller {
            reference,
            options,
            cache,
            client: None,
            blobs_downloaded: 0,
            bytes_downloaded: 0,
        }
    }

    fn client(&mut self) -> Result<&Client, RegistryError> {
        if self.client.is_none() {
            let credential = self.options.credential_for(&self.reference.registry)?;
            let scopes = vec![format!("repository:{}:pull", self.reference.repository)];
            self.client = Some(Client::new(
                &self.reference.registry,
                self.reference.api_host(),
                scopes,
                self.options,
                credential,
            )?);
        }
        Ok(self.client.as_ref().expect("set above"))
    }

    fn invalid(&self, what: String) -> RegistryError {
        RegistryError::Invalid {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            what,
        }
    }

    /// GETs a manifest by tag or digest; returns its digest (sha256 of the bytes received).
    fn fetch_manifest(
        &mut self,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Digest, RegistryError> {
        let repo = self.reference.repository.clone();
        let path = format!("/v2/{repo}/manifests/{reference}");
        let client = self.client()?;
        let url = client.url(&path);
        let step = Step {
            repository: &repo,
            what: format!("get manifest {reference}"),
        };
        let resp = client.send(&step, &|http| {
            Ok(http.get(url.clone()).header(ACCEPT, ACCEPT_MANIFESTS))
        })?;
        if !resp.status().is_success() {
            return Err(client.status_error(&step, resp));
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = read_bounded(resp, MAX_JSON_BLOB + 1);
        if body.len() as u64 > MAX_JSON_BLOB {
            return Err(self.invalid(format!(
                "manifest {reference} is over {MAX_JSON_BLOB} bytes"
            )));
        }
        let digest = Digest::of(&body);
        if let Some(e) = expected {
            if &digest != e {
                return Err(self.invalid(format!(
                    "manifest {reference} hashes to {digest}, not the requested {e}"
                )));
            }
        }
        let known = [
            MEDIA_MANIFEST,
            MEDIA_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ];
        if !content_type.is_empty() && !known.iter().any(|k| content_type.starts_with(k)) {
            return Err(self.invalid(format!(
                "{reference} is a {content_type}, not an image manifest or index"
            )));
        }
        self.cache.layout().put_blob(&body)?;
        self.blobs_downloaded += 1;
        self.bytes_downloaded += body.len() as u64;
        Ok(digest)
    }

    /// Makes sure a manifest blob is in the cache (fetching it by digest if not).
    fn ensure_manifest(&mut self, digest: &Digest) -> Result<(), RegistryError> {
        if !self.cache.layout().has_blob(digest) {
            self.fetch_manifest(&digest.to_string(), Some(digest))?;
        }
        Ok(())
    }

    /// Makes sure a blob is in the cache, streaming it to disk with its digest checked.
    fn ensure_blob(&mut self, desc: &Descriptor) -> Result<(), RegistryError> {
        if self.cache.layout().has_blob(&desc.digest) {
            return Ok(());
        }
        let digest = desc.digest.clone();
        let step = format!("get blob {digest}");
        // The wait needs none of `self`, which each try borrows.
        let (cancel, registry) = (self.options.cancel.clone(), self.reference.registry.clone());
        let policy = self.options.retry.clone();
        policy.run(
            policy.attempts,
            |d| {
                cancel.sleep(d).map_err(|c| RegistryError::Cancelled {
                    registry: registry.clone(),
                    step: step.clone(),
                    reason: c.reason,
                })
            },
            |_| match self.get_blob(desc) {
                Ok(()) => Try::Done(Ok(())),
                Err(BlobError::Final(e)) => Try::Done(Err(*e)),
                // A connection cut mid-body shows up as a read error or a short, wrong digest.
                Err(BlobError::Cut(e)) => {
                    tracing::warn!("retrying blob {digest}: {e}");
                    Try::Again {
                        answer: Err(*e),
                        retry_after: None,
                    }
                }
            },
        )
    }

    /// One try of fetching a blob into the cache.
    fn get_blob(&mut self, desc: &Descriptor) -> Result<(), BlobError> {
        let (repo, digest) = (self.reference.repository.clone(), &desc.digest);
        let client = self.client().map_err(BlobError::final_)?;
        let url = client.url(&format!("/v2/{repo}/blobs/{digest}"));
        let step = Step {
            repository: &repo,
            what: format!("get blob {digest}"),
        };
        let resp = client
            .send(&step, &|http| {
                Ok(http
                    .get(url.clone())
                    .timeout(client.blob_timeout(desc.size)))
            })
            .map_err(BlobError::final_)?;
        if !resp.status().is_success() {
            return Err(BlobError::final_(client.status_error(&step, resp)));
        }
        let body = crate::cancel::CancelRead::new(resp, &self.options.cancel);
        match self.cache.layout().put_blob_from_reader(body, digest) {
            Ok(size) if size != desc.size => Err(BlobError::final_(self.invalid(format!(
                "blob {digest} is {size} bytes, the manifest says {}",
                desc.size
            )))),
            Ok(size) => {
                self.blobs_downloaded += 1;
                self.bytes_downloaded += size;
                Ok(())
            }
            Err(_) if self.options.cancel.is_cancelled() => {
                let reason = self.options.cancel.check().err().map(|c| c.reason);
                Err(BlobError::final_(RegistryError::Cancelled {
                    registry: self.reference.registry.clone(),
                    step: format!("get blob {digest}"),
                    reason: reason.unwrap_or_default(),
                }))
            }
            Err(e) => Err(BlobError::Cut(Box::new(
                self.invalid(format!("blob {digest}: {e}")),
            ))),
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        digest: &Digest,
    ) -> Result<T, RegistryError> {
        self.cache
            .layout()
            .read_json(what, digest)
            .map_err(|e| self.invalid(e.to_string()))
    }
}

/// What `reference` resolves to on its registry now (an index or a manifest), asked fresh:
/// one manifest GET, kept in the blob cache; no layer is fetched.
pub fn current_digest(
    reference: &Reference,
    options: &RegistryOptions,
    cache: &BlobCache,
) -> Result<Digest, RegistryError> {
    if let Some(d) = &reference.digest {
        return Ok(d.clone());
    }
    let mut p = Puller::new(reference, options, cache);
    let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
    p.fetch_manifest(&tag, None)
}

/// The referrers of each of `subjects` in `reference`'s repository (the referrers API, else the
/// distribution spec's `sha256-<hex>` tag), their artifact manifests and blobs fetched into
/// `cache`. Returns each referrer's descriptor with the subject it refers to.
pub fn pull_referrers(
    reference: &Reference,
    subjects: &[Digest],
    options: &RegistryOptions,
    cache: &BlobCache,
) -> Result<Vec<(Descriptor, Digest)>, RegistryError> {
    let mut p = Puller::new(reference, options, cache);
    let mut out = Vec::new();
    for subject in subjects {
        for d in p.referrers_of(subject)? {
            p.ensure_manifest(&d.digest)?;
            let m: Manifest = p.read_json("artifact manifest", &d.digest)?;
            p.ensure_blob(&m.config)?;
            for l in &m.layers {
                p.ensure_blob(l)?;
            }
            out.push((d, subject.clone()));
        }
    }
    Ok(out)
}

/// An artifact by tag in `reference`'s repository, its manifest and every blob it names (config
/// and layers, each checked against its digest) fetched into `cache`. `None` when the repository
/// has no such tag. `vet` sees the manifest (its bytes are in `cache`) before any blob is
/// fetched; what it refuses is an `Invalid` error and no blob is fetched.
pub fn pull_artifact(
    reference: &Reference,
    tag: &str,
    options: &RegistryOptions,
    cache: &BlobCache,
    vet: impl FnOnce(&Digest, &Manifest) -> Result<(), String>,
) -> Result<Option<(Digest, Manifest)>, RegistryError> {
    let mut p = Puller::new(reference, options, cache);
    let digest = match p.fetch_manifest(tag, None) {
        Ok(d) => d,
        Err(RegistryError::Status { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let m: Manifest = p.read_json("artifact manifest", &digest)?;
    vet(&digest, &m).map_err(|what| p.invalid(what))?;
    p.ensure_blob(&m.config)?;
    for l in &m.layers {
        p.ensure_blob(l)?;
    }
    Ok(Some((digest, m)))
}

impl Puller<'_> {
    /// The referrers list of `subject`: the API's answer, else the fallback tag's index, else
    /// none.
    fn referrers_of(&mut self, subject: &Digest) -> Result<Vec<Descriptor>, RegistryError> {
        let repo = self.reference.repository.clone();
        for path in [
            format!("/v2/{repo}/referrers/{subject}"),
            format!("/v2/{repo}/manifests/sha256-{}", subject.hex()),
        ] {
            let client = self.client()?;
            let url = client.url(&path);
            let step = Step {
                repository: &repo,
                what: format!("list the referrers of {subject}"),
            };
            let resp = client.send(&step, &|http| {
                Ok(http.get(url.clone()).header(ACCEPT, MEDIA_INDEX))
            })?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                continue;
            }
            if !resp.status().is_success() {
                return Err(client.status_error(&step, resp));
            }
            let body = read_bounded(resp, MAX_JSON_BLOB);
            let index: Index = serde_json::from_slice(&body)
                .map_err(|e| self.invalid(format!("the referrers of {subject}: {e}")))?;
            return Ok(index.manifests);
        }
        Ok(Vec::new())
    }
}

/// Pulls a base image for `targets` into `cache`. A tag resolved less than `ttl` ago is taken
/// from the cache; `refresh` asks the registry whatever the age.
pub fn pull(
    reference: &Reference,
    targets: &[Target],
    options: &RegistryOptions,
    cache: &BlobCache,
    refresh: bool,
    ttl: Duration,
) -> Result<Pulled, RegistryError> {
    let mut p = Puller::new(reference, options, cache);
    let cached = cache
        .cached_resolution(reference)
        .filter(|(d, _)| cache.layout().has_blob(d));
    let age = |when: SystemTime| SystemTime::now().duration_since(when).unwrap_or_default();
    let (top, resolution, resolved_at) = match (&reference.digest, refresh, cached) {
        (Some(d), _, _) => {
            p.ensure_manifest(d)?;
            (d.clone(), Resolution::Pinned, None)
        }
        (None, false, Some((d, when))) if age(when) < ttl => (d, Resolution::Cached, Some(when)),
        (None, _, cached) => match p.fetch_manifest(&reference.reference(), None) {
            Ok(d) => {
                cache.remember_resolution(reference, &d)?;
                (d, Resolution::Registry, Some(SystemTime::now()))
            }
            // Past its TTL but the registry is out of reach: build on what is known, and say so.
            Err(e @ RegistryError::Transport { .. }) if !refresh => match cached {
                Some((d, when)) => {
                    tracing::warn!("{reference}: using the cached digest: {e}");
                    (d, Resolution::Stale, Some(when))
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        },
    };
    let raw: serde_json::Value = p.read_json("manifest", &top)?;
    let top_is_index = raw.get("manifests").is_some()
        || raw
            .get("mediaType")
            .and_then(|m| m.as_str())
            .is_some_and(is_index);
    let mut platforms = Vec::new();
    for &target in targets {
        let want: PlatformSpec = target.platform().into();
        let manifest_digest = if top_is_index {
            let index: Index = p.read_json("image index", &top)?;
            let entry = index.for_platform(&want).map_err(|have| {
                p.invalid(format!(
                    "{reference} has no image for {want} (it has {have})"
                ))
            })?;
            let d = entry.digest.clone();
            p.ensure_manifest(&d)?;
            d
        } else {
            top.clone()
        };
        let manifest: Manifest = p.read_json("image manifest", &manifest_digest)?;
        p.ensure_blob(&manifest.config)?;
        let config = cache
            .layout()
            .read_json_blob(&manifest.config.digest)
            .map_err(|e| p.invalid(e.to_string()))?;
        for layer in &manifest.layers {
            p.ensure_blob(layer)?;
        }
        platforms.push(PlatformImage {
            target,
            manifest_digest,
            manifest,
            config,
        });
    }
    Ok(Pulled {
        digest: top,
        resolution,
        resolved_at,
        platforms,
        blobs_downloaded: p.blobs_downloaded,
        bytes_downloaded: p.bytes_downloaded,
    })
}
