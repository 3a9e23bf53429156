//! Pushing images from an OCI layout: blobs first (HEAD and skip what is there, mount across
//! repositories of the same registry, else upload streamed from the file), then manifests as the
//! exact bytes that were hashed, children before their index, and tags last, so a failed push
//! never moves a tag to an incomplete image.

use std::collections::HashSet;
use std::fs::File;

use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use serde::Serialize;

use super::client::{read_bounded, Client, Step};
use super::retry::Try;
use super::{Reference, RegistryError, RegistryOptions};
use crate::oci::json::canonical;
use crate::oci::layout::{Layout, MAX_JSON_BLOB};
use crate::oci::{is_index, Descriptor, Digest, Index, Manifest, MEDIA_INDEX, MEDIA_MANIFEST};

/// What a push did with blobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PushStats {
    /// Blobs sent.
    pub uploaded: u32,
    /// Blobs the registry already had (HEAD answered 200).
    pub skipped: u32,
    /// Blobs linked from another repository of the same registry, without sending them.
    pub mounted: u32,
    pub bytes_uploaded: u64,
    pub manifests: u32,
}

impl std::ops::AddAssign for PushStats {
    fn add_assign(&mut self, other: PushStats) {
        self.uploaded += other.uploaded;
        self.skipped += other.skipped;
        self.mounted += other.mounted;
        self.bytes_uploaded += other.bytes_uploaded;
        self.manifests += other.manifests;
    }
}

/// Pushes to one repository.
pub struct Pusher {
    client: Client,
    target: Reference,
    /// A repository on the same registry whose blobs can be mounted, with the digests it has.
    mount_from: Option<(String, HashSet<Digest>)>,
}

impl Pusher {
    /// A pusher for `target`'s repository. `mount_from` names a repository of the same registry
    /// holding some of the blobs (the base image's), which are mounted instead of uploaded.
    pub fn new(
        target: &Reference,
        options: &RegistryOptions,
        mount_from: Option<(&Reference, HashSet<Digest>)>,
    ) -> Result<Pusher, RegistryError> {
        let credential = options.credential_for(&target.registry)?;
        let mount_from = mount_from
            .filter(|(r, _)| r.registry == target.registry && r.repository != target.repository)
            .map(|(r, d)| (r.repository.clone(), d));
        let mut scopes = vec![format!("repository:{}:push,pull", target.repository)];
        if let Some((repo, _)) = &mount_from {
            scopes.push(format!("repository:{repo}:pull"));
        }
        let client = Client::new(
            &target.registry,
            target.api_host(),
            scopes,
            options,
            credential,
        )?;
        Ok(Pusher {
            client,
            target: target.clone(),
            mount_from,
        })
    }

    pub fn target(&self) -> &Reference {
        &self.target
    }

    fn repo(&self) -> &str {
        &self.target.repository
    }

    /// Pushes the blobs and manifest(s) `desc` reaches, by digest (no tag).
    pub fn push_content(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        stats: &mut PushStats,
    ) -> Result<(), RegistryError> {
        let bytes = layout.read_json_blob(&desc.digest)?;
        if is_index(&desc.media_type) {
            let index: Index =
                serde_json::from_slice(&bytes).map_err(|source| RegistryError::Document {
                    what: "index",
                    digest: desc.digest.clone(),
                    source,
                })?;
            for child in &index.manifests {
                self.push_content(layout, child, stats)?;
            }
        } else {
            self.push_blobs_of(layout, desc, &bytes, stats)?;
        }
        self.push_manifest(layout, desc, stats)
    }

    /// Pushes the config and layers of the manifest `desc` (its `bytes`); returns the manifest.
    fn push_blobs_of(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        bytes: &[u8],
        stats: &mut PushStats,
    ) -> Result<Manifest, RegistryError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|source| RegistryError::Document {
                what: "manifest",
                digest: desc.digest.clone(),
                source,
            })?;
        self.push_blob(layout, &manifest.config, stats)?;
        for layer in &manifest.layers {
            self.push_blob(layout, layer, stats)?;
        }
        Ok(manifest)
    }

    /// Pushes only the manifest or index `desc` itself, by digest: what it references must already
    /// be in the repository (an index whose platform images were pushed one by one).
    pub fn push_manifest(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        stats: &mut PushStats,
    ) -> Result<(), RegistryError> {
        let bytes = layout.read_json_blob(&desc.digest)?;
        self.put_manifest(
            &desc.digest.to_string(),
            &desc.media_type,
            &bytes,
            &desc.digest,
        )?;
        stats.manifests += 1;
        Ok(())
    }

    /// Points each tag at `desc`, whose content must already be pushed. Returns `repo:tag@digest`.
    pub fn push_tags(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        tags: &[String],
    ) -> Result<Vec<String>, RegistryError> {
        let bytes = layout.read_json_blob(&desc.digest)?;
        let mut refs = Vec::new();
        for tag in tags {
            self.put_manifest(tag, &desc.media_type, &bytes, &desc.digest)?;
            refs.push(format!("{}:{tag}@{}", self.target.name(), desc.digest));
        }
        Ok(refs)
    }

    /// Whether the repository has a manifest under `reference` (a tag or a digest): one HEAD.
    pub fn has_manifest(&self, reference: &str) -> Result<bool, RegistryError> {
        let url = self
            .client
            .url(&format!("/v2/{}/manifests/{reference}", self.repo()));
        let step = Step {
            repository: self.repo(),
            what: format!("check manifest {reference}"),
        };
        let resp = self.client.send(&step, &|http| {
            Ok(http.head(url.clone()).header(ACCEPT, MEDIA_MANIFEST))
        })?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.client.status_error(&step, resp)),
        }
    }

    /// Pushes a referrer: an artifact manifest (an SBOM, a provenance) whose `subject` is the
    /// image `subject`, with its blobs. A registry with the referrers API says it indexed the
    /// subject (`OCI-Subject`); for one without, the referrer is added to the referrers tag
    /// schema's index (`sha256-<hex>`), which is how OCI 1.1 clients find it there.
    pub fn push_referrer(
        &self,
        layout: &Layout,
        referrer: &Descriptor,
        subject: &Digest,
        stats: &mut PushStats,
    ) -> Result<(), RegistryError> {
        let bytes = layout.read_json_blob(&referrer.digest)?;
        let manifest = self.push_blobs_of(layout, referrer, &bytes, stats)?;
        let indexed = self.put_manifest(
            &referrer.digest.to_string(),
            &referrer.media_type,
            &bytes,
            &referrer.digest,
        )?;
        stats.manifests += 1;
        if indexed {
            return Ok(());
        }
        let mut entry =
            Descriptor::new(&referrer.media_type, referrer.digest.clone(), referrer.size);
        entry.artifact_type = referrer.artifact_type.clone();
        // The manifest's own annotations, as the referrers API would list them (not the
        // layout-only ones galley adds in index.json).
        entry.annotations = manifest.annotations.clone();
        let tag = format!("sha256-{}", subject.hex());
        let mut index = self.referrers_index(&tag)?.unwrap_or(Index {
            schema_version: 2,
            media_type: Some(MEDIA_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: Default::default(),
        });
        if index.manifests.iter().any(|d| d.digest == entry.digest) {
            return Ok(());
        }
        index.manifests.push(entry);
        index
            .manifests
            .sort_by(|a, b| a.digest.as_str().cmp(b.digest.as_str()));
        let bytes = canonical("referrers index", &index)?;
        self.put_manifest(&tag, MEDIA_INDEX, &bytes, &Digest::of(&bytes))?;
        stats.manifests += 1;
        Ok(())
    }

    /// Pushes the referrers the layout records for `desc` and, for an index, for each of its
    /// images (their content must be pushed already).
    pub fn push_referrers_of(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        stats: &mut PushStats,
    ) -> Result<(), RegistryError> {
        let mut subjects = vec![desc.digest.clone()];
        if is_index(&desc.media_type) {
            let index: Index = layout.read_json("image index", &desc.digest)?;
            subjects.extend(index.manifests.into_iter().map(|d| d.digest));
        }
        for subject in &subjects {
            for r in layout.referrers(subject)? {
                self.push_referrer(layout, &r, subject, stats)?;
            }
        }
        Ok(())
    }

    /// The index a referrers tag holds, `None` when the tag does not exist yet.
    fn referrers_index(&self, tag: &str) -> Result<Option<Index>, RegistryError> {
        let url = self
            .client
            .url(&format!("/v2/{}/manifests/{tag}", self.repo()));
        let step = Step {
            repository: self.repo(),
            what: format!("get referrers index {tag}"),
        };
        let resp = self.client.send(&step, &|http| {
            Ok(http.get(url.clone()).header(ACCEPT, MEDIA_INDEX))
        })?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let bytes = read_bounded(resp, MAX_JSON_BLOB);
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| RegistryError::Invalid {
                        registry: self.target.registry.clone(),
                        repository: self.repo().to_string(),
                        what: format!("the referrers tag {tag} is not an image index: {e}"),
                    })
            }
            _ => Err(self.client.status_error(&step, resp)),
        }
    }

    /// PUTs a manifest by tag or digest. Returns whether the registry said it indexed the
    /// manifest's `subject` (the `OCI-Subject` header of the referrers API).
    fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let url = self
            .client
            .url(&format!("/v2/{}/manifests/{reference}", self.repo()));
        let step = Step {
            repository: self.repo(),
            what: format!("put manifest {reference}"),
        };
        let body = bytes.to_vec();
        let resp = self.client.send(&step, &|http| {
            Ok(http
                .put(url.clone())
                .header(CONTENT_TYPE, media_type)
                .body(body.clone()))
        })?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.client.status_error(&step, resp));
        }
        // The digest recorded is the sha256 of the bytes sent; a registry that disagrees is wrong.
        if let Some(theirs) = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
        {
            if theirs != digest.as_str() {
                return Err(RegistryError::Invalid {
                    registry: self.target.registry.clone(),
                    repository: self.repo().to_string(),
                    what: format!("the registry stored manifest {reference} as {theirs}, but the bytes sent hash to {digest}"),
                });
            }
        }
        Ok(resp.headers().contains_key("OCI-Subject"))
    }

    fn push_blob(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        stats: &mut PushStats,
    ) -> Result<(), RegistryError> {
        let digest = &desc.digest;
        let head_url = self
            .client
            .url(&format!("/v2/{}/blobs/{digest}", self.repo()));
        let step = Step {
            repository: self.repo(),
            what: format!("check blob {digest}"),
        };
        let resp = self
            .client
            .send(&step, &|http| Ok(http.head(head_url.clone())))?;
        match resp.status() {
            s if s.is_success() => {
                stats.skipped += 1;
                return Ok(());
            }
            StatusCode::NOT_FOUND => {}
            _ => return Err(self.client.status_error(&step, resp)),
        }
        if let Some((from, digests)) = &self.mount_from {
            if digests.contains(digest) {
                match self.try_mount(from, digest)? {
                    Mount::Mounted => {
                        stats.mounted += 1;
                        return Ok(());
                    }
                    Mount::Session(location) => {
                        if self.put_upload(&location, layout, desc).is_ok() {
                            stats.uploaded += 1;
                            stats.bytes_uploaded += desc.size;
                            return Ok(());
                        }
                        // The session the mount opened failed: start over with a plain upload.
                    }
                    Mount::Refused => {}
                }
            }
        }
        self.upload(layout, desc)?;
        stats.uploaded += 1;
        stats.bytes_uploaded += desc.size;
        Ok(())
    }

    fn try_mount(&self, from: &str, digest: &Digest) -> Result<Mount, RegistryError> {
        let mut url = self
            .client
            .url(&format!("/v2/{}/blobs/uploads/", self.repo()));
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let step = Step {
            repository: self.repo(),
            what: format!("mount blob {digest} from {from}"),
        };
        let resp = match self.client.send(&step, &|http| {
            Ok(http.post(url.clone()).header(CONTENT_LENGTH, "0"))
        }) {
            Ok(r) => r,
            // Mount is best effort: any failure means a normal upload.
            Err(_) => return Ok(Mount::Refused),
        };
        let answered = resp.url().clone();
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => {
                match resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
                    Some(loc) => Ok(self
                        .client
                        .resolve_location(&answered, loc)
                        .map(Mount::Session)
                        .unwrap_or(Mount::Refused)),
                    None => Ok(Mount::Refused),
                }
            }
            _ => Ok(Mount::Refused),
        }
    }

    /// POST then PUT, restarted from the POST when the PUT fails on the way.
    fn upload(&self, layout: &Layout, desc: &Descriptor) -> Result<(), RegistryError> {
        let step = Step {
            repository: self.repo(),
            what: format!("upload blob {}", desc.digest),
        };
        let policy = self.client.retry_policy();
        policy.run(
            policy.attempts,
            |d| self.client.wait(&step, d),
            |_| {
                // The POST retries on its own; a failed start is the answer.
                let location = match self.start_upload(&desc.digest) {
                    Ok(l) => l,
                    Err(e) => return Try::Done(Err(e)),
                };
                match self.put_upload(&location, layout, desc) {
                    Ok(()) => Try::Done(Ok(())),
                    Err(PutError::Final(e)) => Try::Done(Err(*e)),
                    Err(PutError::Retry(e)) => {
                        tracing::warn!("upload of {} failed, restarting it: {e}", desc.digest);
                        Try::Again {
                            answer: Err(*e),
                            retry_after: None,
                        }
                    }
                }
            },
        )
    }

    fn start_upload(&self, digest: &Digest) -> Result<reqwest::Url, RegistryError> {
        let url = self
            .client
            .url(&format!("/v2/{}/blobs/uploads/", self.repo()));
        let step = Step {
            repository: self.repo(),
            what: format!("start upload of {digest}"),
        };
        let resp = self.client.send(&step, &|http| {
            Ok(http.post(url.clone()).header(CONTENT_LENGTH, "0"))
        })?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.client.status_error(&step, resp));
        }
        let answered = resp.url().clone();
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Invalid {
                registry: self.target.registry.clone(),
                repository: self.repo().to_string(),
                what: "the registry started an upload without a Location".into(),
            })?;
        self.client
            .resolve_location(&answered, loc)
            .map_err(|what| RegistryError::Invalid {
                registry: self.target.registry.clone(),
                repository: self.repo().to_string(),
                what,
            })
    }

    /// PUTs the whole blob, streamed from its file, to an upload session.
    fn put_upload(
        &self,
        location: &reqwest::Url,
        layout: &Layout,
        desc: &Descriptor,
    ) -> Result<(), PutError> {
        let mut url = location.clone();
        url.query_pairs_mut()
            .append_pair("digest", desc.digest.as_str());
        let path = layout.blob_path(&desc.digest);
        let step = Step {
            repository: self.repo(),
            what: format!("upload blob {}", desc.digest),
        };
        let size = desc.size;
        let resp = self
            .client
            .send_tries(&step, 1, &|http| {
                let file = File::open(&path).map_err(|source| RegistryError::File {
                    action: "read",
                    path: path.clone(),
                    source,
                })?;
                // A cancel stops the upload at its next read of the file.
                let file = crate::cancel::CancelRead::new(file, self.client.cancel());
                Ok(http
                    .put(url.clone())
                    .timeout(self.client.blob_timeout(size))
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(reqwest::blocking::Body::sized(file, size)))
            })
            .map_err(|e| match e {
                RegistryError::Transport { .. } if !self.client.cancel().is_cancelled() => {
                    PutError::Retry(Box::new(e))
                }
                other => PutError::Final(Box::new(other)),
            })?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            s if matches!(s.as_u16(), 408 | 429 | 500 | 502 | 503 | 504 | 404) => Err(
                PutError::Retry(Box::new(self.client.status_error(&step, resp))),
            ),
            _ => Err(PutError::Final(Box::new(
                self.client.status_error(&step, resp),
            ))),
        }
    }
}

enum Mount {
    Mounted,
    /// The registry did not mount but opened an upload session there (202).
    Session(reqwest::Url),
    Refused,
}

enum PutError {
    /// Worth restarting the upload from its POST.
    Retry(Box<RegistryError>),
    Final(Box<RegistryError>),
}
