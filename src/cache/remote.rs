//! The stage cache's remote tier: entries kept in an OCI registry repository that every host of
//! a team reaches, so a new worker or an ephemeral CI runner starts warm.
//!
//! One tag per entry, `<kind>-<key>` (`compile-<64 hex>`): a lookup is one manifest GET, and
//! two hosts uploading at once never contend for a shared document (an index of keys would be
//! read, changed and written back by every host, and lose entries). Each entry is an OCI 1.1
//! artifact (`artifactType` [`ARTIFACT_TYPE`], empty config): its first layer is the entry
//! document the local tier keeps (kind, key, inputs, outputs, object digests), the others its
//! objects (binaries, layer blobs).
//!
//! Trust: whoever can push to the repository could otherwise hand every host a binary. With a
//! key the workers share (`cache_key_file`), each entry carries an HMAC-SHA256 over the key and
//! its content digests; an entry that does not verify is ignored and reported. Without a key,
//! remote entries are not read at all unless the user opts in (`cache_unsigned = true`).
//! Verified or not, every byte is checked against its digest, the entry must name the key its
//! inputs hash to, and what a stage takes from it is checked again exactly like a local hit
//! (the binary verified before use).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{Kind, StageCache};
use crate::oci::json::canonical;
use crate::oci::layout::Layout;
use crate::oci::{Descriptor, Digest, EMPTY_JSON, MEDIA_EMPTY, MEDIA_MANIFEST};
use crate::registry::pull::{pull_artifact, BlobCache};
use crate::registry::push::{PushStats, Pusher};
use crate::registry::{Reference, RegistryError, RegistryOptions, RetryPolicy, Timeouts};

/// The `artifactType` of a stage cache entry.
pub const ARTIFACT_TYPE: &str = "application/vnd.galley.stage-cache.v1+json";
/// The media type of the entry document (the first layer).
pub const ENTRY_MEDIA: &str = "application/vnd.galley.stage-cache.entry.v1+json";
/// The media type of an object the entry names (a binary, a layer blob).
pub const OBJECT_MEDIA: &str = "application/vnd.galley.stage-cache.object.v1";
/// The annotation holding the entry's HMAC-SHA256, in hex.
pub const MAC_ANNOTATION: &str = "dev.galley.stage-cache.hmac-sha256";
const KIND_ANNOTATION: &str = "dev.galley.stage-cache.kind";
const KEY_ANNOTATION: &str = "dev.galley.stage-cache.key";

/// The shortest key accepted: 128 bits.
const MIN_KEY_BYTES: usize = 16;

impl From<RegistryError> for RemoteError {
    fn from(e: RegistryError) -> Self {
        RemoteError::Registry(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cache_key_file {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("the stage cache's remote tier: {0}")]
    Local(#[from] super::CacheError),
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error("the stage cache's remote tier: {0}")]
    Staging(String),
}

/// The key the workers share. Never printed: `Debug` shows `***`.
#[derive(Clone)]
pub struct CacheKey(Vec<u8>);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(***)")
    }
}

impl CacheKey {
    /// Reads a key file: its bytes without trailing whitespace, at least 16 of them.
    pub fn load(path: &Path) -> Result<CacheKey, RemoteError> {
        let err = |why: String| RemoteError::Key {
            path: path.to_path_buf(),
            why,
        };
        let mut bytes = std::fs::read(path)
            .map_err(|e| err(format!("{e} (give a file the workers share, e.g. `head -c 32 /dev/urandom | base64 > FILE`)")))?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        if bytes.len() < MIN_KEY_BYTES {
            return Err(err(format!(
                "the key is {} bytes; use at least {MIN_KEY_BYTES} (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
                bytes.len()
            )));
        }
        Ok(CacheKey(bytes))
    }

    /// A key from bytes (tests).
    pub fn from_bytes(bytes: &[u8]) -> CacheKey {
        CacheKey(bytes.to_vec())
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The HMAC of an entry, in hex.
    pub fn sign(&self, kind: Kind, key: &str, digests: &[Digest]) -> String {
        let mut m = self.mac();
        m.update(&signed_message(kind, key, digests));
        hex::encode(m.finalize().into_bytes())
    }

    /// Whether `mac_hex` is this key's HMAC of the entry (compared in constant time).
    pub fn verifies(&self, kind: Kind, key: &str, digests: &[Digest], mac_hex: &str) -> bool {
        let Ok(mac) = hex::decode(mac_hex) else {
            return false;
        };
        let mut m = self.mac();
        m.update(&signed_message(kind, key, digests));
        m.verify_slice(&mac).is_ok()
    }
}

/// What the HMAC covers: the format, the kind, the key, and the digest of every layer (the entry
/// document first, then the objects), so no byte of an entry can change without the key.
fn signed_message(kind: Kind, key: &str, digests: &[Digest]) -> Vec<u8> {
    let mut m = format!("galley-stage-cache/1\n{}\n{key}\n", kind.dir()).into_bytes();
    for d in digests {
        m.extend_from_slice(d.as_str().as_bytes());
        m.push(b'\n');
    }
    m
}

/// Where the remote tier lives and how far it is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// The repository (`host/repo`, no tag).
    pub repository: Reference,
    /// The shared key's file.
    pub key_file: Option<PathBuf>,
    /// Read entries without a key (trusting whoever can push to the repository).
    pub allow_unsigned: bool,
}

/// How remote entries are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reads {
    /// Only entries whose HMAC verifies with the shared key.
    Verified,
    /// Any entry (no key; the user opted in).
    Unsigned,
    /// None: there is no key and the user did not opt in.
    Refused,
}

/// What the remote tier did during one build, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteReport {
    /// The repository.
    pub repository: String,
    pub reads: Option<Reads>,
    /// Entries taken from the registry (then kept in the local tier).
    pub hits: u32,
    /// Entries looked up and not there.
    pub misses: u32,
    /// Entries found and refused (a signature or a digest that does not verify).
    pub refused: u32,
    /// Entries uploaded by this build.
    pub uploaded: u32,
    /// Entries the registry already had.
    pub present: u32,
    /// Uploads that failed (the build went on).
    pub upload_failures: u32,
    /// Every warning, each once: refused entries, an unreachable registry, failed uploads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How a remote look-up ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The entry was fetched, checked and written to the local tier.
    Hit,
    /// No entry (or reads are off, or the registry was found unreachable before).
    Miss,
    /// An entry was there and refused: the stage runs. The reason is for the stage's log.
    Refused(String),
    /// The registry could not answer: the stage runs, and no more look-ups are tried.
    Unavailable(String),
}

/// An upload to do: an entry the local tier holds.
struct Job {
    kind: Kind,
    key: String,
    /// The stage ran now (its entry is new); otherwise it came from the local tier and is
    /// uploaded only when the registry lacks it.
    ran: bool,
}

/// The remote tier of one build: look-ups on the stages' threads, uploads on a thread of its own
/// (off the critical path), summed up by [`Remote::finish`].
pub struct Remote {
    repository: Reference,
    key: Option<CacheKey>,
    reads: Reads,
    options: RegistryOptions,
    staging: PathBuf,
    report: Arc<Mutex<RemoteReport>>,
    /// Set once the registry did not answer: later look-ups and uploads are not tried.
    down: Arc<AtomicBool>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// The registry settings of cache traffic: the build's credentials and cancel, with few, quick
/// retries (a cache that does not answer soon is worth less than the work it would save).
fn cache_options(build: &RegistryOptions) -> RegistryOptions {
    RegistryOptions {
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(2),
        },
        timeouts: Timeouts {
            connect: Duration::from_secs(3),
            metadata: Duration::from_secs(15),
            ..build.timeouts.clone()
        },
        ..build.clone()
    }
}

impl Remote {
    /// The remote tier for a build whose local tier is `local`. Fails only on a key file that is
    /// configured and unusable (a mistake the user must fix, not a slower build).
    pub fn open(
        spec: &RemoteSpec,
        local: &StageCache,
        registry: &RegistryOptions,
    ) -> Result<Remote, RemoteError> {
        let key = spec.key_file.as_deref().map(CacheKey::load).transpose()?;
        let reads = match (&key, spec.allow_unsigned) {
            (Some(_), _) => Reads::Verified,
            (None, true) => Reads::Unsigned,
            (None, false) => Reads::Refused,
        };
        let staging = local.root.join("remote");
        std::fs::create_dir_all(&staging)
            .map_err(|e| RemoteError::Staging(format!("{}: {e}", staging.display())))?;
        remove_stale(&staging);
        let mut report = RemoteReport {
            repository: spec.repository.name(),
            reads: Some(reads),
            ..Default::default()
        };
        if reads == Reads::Refused {
            report.warnings.push(format!(
                "remote cache entries in {} are not read: no cache_key_file to verify them (set one the workers share, or cache_unsigned = true to trust whoever can push there)",
                spec.repository.name()
            ));
        }
        let remote = Remote {
            repository: spec.repository.clone(),
            key,
            reads,
            options: cache_options(registry),
            staging,
            report: Arc::new(Mutex::new(report)),
            down: Arc::new(AtomicBool::new(false)),
            jobs: Mutex::new(None),
            worker: Mutex::new(None),
        };
        remote.start_uploads(local.clone());
        Ok(remote)
    }

    fn tag(kind: Kind, key: &str) -> String {
        format!("{}-{key}", kind.dir())
    }

    fn note(&self, f: impl FnOnce(&mut RemoteReport)) {
        f(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn warn(&self, message: String) {
        self.note(|r| {
            if !r.warnings.contains(&message) {
                r.warnings.push(message);
            }
        });
    }

    /// Looks `key` up in the registry after a local miss; a verified entry is written to `local`.
    pub fn fetch(&self, local: &StageCache, kind: Kind, key: &str) -> Fetched {
        if self.reads == Reads::Refused || self.down.load(Ordering::Relaxed) {
            return Fetched::Miss;
        }
        let answer = self.try_fetch(local, kind, key);
        match &answer {
            Fetched::Hit => self.note(|r| r.hits += 1),
            Fetched::Miss => self.note(|r| r.misses += 1),
            Fetched::Refused(why) => {
                self.note(|r| r.refused += 1);
                self.warn(format!(
                    "remote cache entry {}:{} refused ({why}): the stage ran",
                    self.repository.name(),
                    Self::tag(kind, key)
                ));
            }
            Fetched::Unavailable(why) => {
                self.down.store(true, Ordering::Relaxed);
                self.warn(format!(
                    "the remote stage cache {} is unavailable ({why}): this build goes on without it",
                    self.repository.name()
                ));
            }
        }
        answer
    }

    fn try_fetch(&self, local: &StageCache, kind: Kind, key: &str) -> Fetched {
        let dir = match tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&self.staging)
        {
            Ok(d) => d,
            Err(e) => return Fetched::Unavailable(format!("{}: {e}", self.staging.display())),
        };
        let blobs = match BlobCache::open(dir.path()) {
            Ok(b) => b,
            Err(e) => return Fetched::Unavailable(e.to_string()),
        };
        let tag = Self::tag(kind, key);
        // Type and signature first: a forged entry's blobs are never downloaded.
        let vet = |digest: &Digest, manifest: &crate::oci::Manifest| {
            self.vet(blobs.layout(), kind, key, digest, manifest)
        };
        let (_, manifest) = match pull_artifact(&self.repository, &tag, &self.options, &blobs, vet)
        {
            Ok(Some(found)) => found,
            Ok(None) => return Fetched::Miss,
            // A refused manifest, or bytes that do not match their digest.
            Err(RegistryError::Invalid { what, .. }) => return Fetched::Refused(what),
            Err(e) => return Fetched::Unavailable(e.to_string()),
        };
        match self.check_and_import(local, blobs.layout(), kind, key, &manifest) {
            Ok(()) => Fetched::Hit,
            Err(why) => Fetched::Refused(why),
        }
    }

    /// What can be checked from the manifest alone: the artifact type, the layers' media
    /// types, and the signature over every layer's digest.
    fn vet(
        &self,
        layout: &Layout,
        kind: Kind,
        key: &str,
        digest: &Digest,
        manifest: &crate::oci::Manifest,
    ) -> Result<(), String> {
        let raw: serde_json::Value = layout
            .read_json("cache entry manifest", digest)
            .map_err(|e| e.to_string())?;
        if raw["artifactType"] != ARTIFACT_TYPE {
            return Err(format!(
                "not a galley stage cache entry: {}",
                raw["artifactType"]
            ));
        }
        let Some((entry, objects)) = manifest.layers.split_first() else {
            return Err("the entry has no layers".into());
        };
        if entry.media_type != ENTRY_MEDIA || objects.iter().any(|o| o.media_type != OBJECT_MEDIA) {
            return Err("its layers are not an entry and its objects".into());
        }
        let digests: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        if let Some(k) = &self.key {
            match manifest.annotations.get(MAC_ANNOTATION) {
                None => return Err("it is not signed, and a cache key is set".into()),
                Some(mac) if !k.verifies(kind, key, &digests, mac) => {
                    return Err("its signature does not verify with the cache key".into())
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Checks what the entry document says (its stage, key, inputs and objects) and writes the
    /// entry to the local tier. The manifest passed `vet`.
    fn check_and_import(
        &self,
        local: &StageCache,
        layout: &Layout,
        kind: Kind,
        key: &str,
        manifest: &crate::oci::Manifest,
    ) -> Result<(), String> {
        let (entry, objects) = manifest
            .layers
            .split_first()
            .ok_or("the entry has no layers")?;
        let doc: serde_json::Value = layout
            .read_json("cache entry", &entry.digest)
            .map_err(|e| e.to_string())?;
        if doc["kind"] != serde_json::json!(kind) || doc["key"] != key {
            return Err("the entry is for another stage or key".into());
        }
        // The key is the hash of the inputs: an entry cannot claim other inputs.
        if StageCache::key(kind, &doc["inputs"]) != key {
            return Err("its inputs do not hash to its key".into());
        }
        let named: Vec<&str> = doc["objects"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o.as_str()).collect())
            .unwrap_or_default();
        let carried: Vec<&str> = objects.iter().map(|o| o.digest.as_str()).collect();
        if named != carried {
            return Err("its objects are not the ones its entry names".into());
        }
        let mut stored = Vec::new();
        for o in objects {
            let d = local
                .store(&layout.blob_path(&o.digest))
                .map_err(|e| e.to_string())?;
            if d != o.digest {
                return Err(format!("object {} hashes to {d}", o.digest));
            }
            stored.push(d);
        }
        let refs: Vec<&Digest> = stored.iter().collect();
        local
            .put(kind, key, &doc["inputs"], &doc["outputs"], &refs)
            .map_err(|e| e.to_string())
    }

    /// Queues the upload of an entry the local tier holds: after a stage ran (`ran`), or after a
    /// local hit (uploaded only when the registry lacks it). Never blocks the stage.
    pub fn offer(&self, kind: Kind, key: &str, ran: bool) {
        if let Some(tx) = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(Job {
                kind,
                key: key.to_string(),
                ran,
            });
        }
    }

    fn start_uploads(&self, local: StageCache) {
        let (tx, rx) = mpsc::channel::<Job>();
        let up = Uploader {
            repository: self.repository.clone(),
            key: self.key.clone(),
            options: self.options.clone(),
            staging: self.staging.clone(),
            report: Arc::clone(&self.report),
            down: Arc::clone(&self.down),
            local,
            pusher: None,
        };
        let handle = std::thread::Builder::new()
            .name("cache-upload".into())
            .spawn(move || up.run(rx));
        match handle {
            Ok(h) => {
                *self.jobs.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
                *self.worker.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
            }
            Err(e) => self.warn(format!("no uploads to the remote stage cache: {e}")),
        }
    }

    /// Waits for the queued uploads (a cancel stops them) and says what the tier did.
    pub fn finish(&self) -> RemoteReport {
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(h) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Remote {
    /// No upload thread outlives its build, whichever way the build ended.
    fn drop(&mut self) {
        self.finish();
    }
}

/// Scratch directories of fetches and uploads a killed galley left behind (an hour old: a
/// running build's are minutes old at most).
fn remove_stale(staging: &Path) {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The upload thread's state.
struct Uploader {
    repository: Reference,
    key: Option<CacheKey>,
    options: RegistryOptions,
    staging: PathBuf,
    report: Arc<Mutex<RemoteReport>>,
    down: Arc<AtomicBool>,
    local: StageCache,
    pusher: Option<Pusher>,
}

impl Uploader {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut seen = std::collections::HashSet::new();
        for job in rx {
            if self.options.cancel.is_cancelled() {
                continue;
            }
            if !seen.insert((job.kind, job.key.clone())) {
                continue;
            }
            // A registry found unreachable is not asked again: each try would wait for it.
            let answer = if self.down.load(Ordering::Relaxed) {
                Err(RemoteError::Staging(
                    "the registry did not answer before".into(),
                ))
            } else {
                self.upload(&job)
            };
            if let Err(RemoteError::Registry(e)) = &answer {
                if matches!(
                    **e,
                    RegistryError::Transport { .. } | RegistryError::Auth { .. }
                ) {
                    self.down.store(true, Ordering::Relaxed);
                }
            }
            let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
            match answer {
                Ok(true) => r.uploaded += 1,
                Ok(false) => r.present += 1,
                Err(e) => {
                    r.upload_failures += 1;
                    let message = format!(
                        "not uploaded to the remote stage cache {}: {e}",
                        self.repository.name()
                    );
                    if !r.warnings.contains(&message) {
                        r.warnings.push(message);
                    }
                }
            }
        }
    }

    /// Uploads one entry; `false` when the registry had it already.
    fn upload(&mut self, job: &Job) -> Result<bool, RemoteError> {
        if self.pusher.is_none() {
            self.pusher = Some(Pusher::new(&self.repository, &self.options, None)?);
        }
        let pusher = self.pusher.as_ref().expect("set above");
        let tag = Remote::tag(job.kind, &job.key);
        // An entry is replaced only by a host holding the key (which heals one that was
        // changed); a host without one never replaces a signed entry by an unsigned one.
        if (!job.ran || self.key.is_none()) && pusher.has_manifest(&tag)? {
            return Ok(false);
        }
        let Some(entry) = self.local.entry_bytes(job.kind, &job.key) else {
            return Err(RemoteError::Staging(format!(
                "the local entry {tag} is gone"
            )));
        };
        let doc: serde_json::Value = serde_json::from_slice(&entry)
            .map_err(|e| RemoteError::Staging(format!("the local entry {tag}: {e}")))?;
        let dir = tempfile::Builder::new()
            .prefix(".upload-")
            .tempdir_in(&self.staging)
            .map_err(|e| RemoteError::Staging(format!("{}: {e}", self.staging.display())))?;
        let layout = Layout::create(dir.path()).map_err(|e| RemoteError::Staging(e.to_string()))?;
        let staged = |e: crate::oci::layout::LayoutError| RemoteError::Staging(e.to_string());
        layout.put_blob(EMPTY_JSON).map_err(staged)?;
        let entry_digest = layout.put_blob(&entry).map_err(staged)?;
        let mut layers = vec![Descriptor::new(
            ENTRY_MEDIA,
            entry_digest,
            entry.len() as u64,
        )];
        for o in doc["objects"].as_array().into_iter().flatten() {
            let d: Digest = o
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| RemoteError::Staging(format!("the local entry {tag} names {o}")))?;
            let src = self.local.object_path(&d);
            let dest = layout.blob_path(&d);
            // A hard link when the staging area shares the cache's file system, else a copy.
            if std::fs::hard_link(&src, &dest).is_err() {
                std::fs::copy(&src, &dest)
                    .map_err(|e| RemoteError::Staging(format!("{}: {e}", src.display())))?;
            }
            let size = std::fs::metadata(&dest)
                .map_err(|e| RemoteError::Staging(format!("{}: {e}", dest.display())))?
                .len();
            layers.push(Descriptor::new(OBJECT_MEDIA, d, size));
        }
        let digests: Vec<Digest> = layers.iter().map(|l| l.digest.clone()).collect();
        let mut annotations = serde_json::Map::new();
        annotations.insert(KIND_ANNOTATION.into(), job.kind.dir().into());
        annotations.insert(KEY_ANNOTATION.into(), job.key.clone().into());
        if let Some(k) = &self.key {
            annotations.insert(
                MAC_ANNOTATION.into(),
                k.sign(job.kind, &job.key, &digests).into(),
            );
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": MEDIA_EMPTY, "digest": Digest::of(EMPTY_JSON), "size": EMPTY_JSON.len()},
            "layers": layers,
            "annotations": annotations,
        });
        let bytes = canonical("cache entry manifest", &manifest)
            .map_err(|e| RemoteError::Staging(e.to_string()))?;
        let digest = layout.put_blob(&bytes).map_err(staged)?;
        let desc = Descriptor::new(MEDIA_MANIFEST, digest, bytes.len() as u64);
        let mut stats = PushStats::default();
        pusher.push_content(&layout, &desc, &mut stats)?;
        pusher.push_tags(&layout, &desc, &[tag])?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_the_key_the_kind_and_every_digest() {
        let k = CacheKey::from_bytes(b"a key the workers share");
        let digests = vec![Digest::of(b"entry"), Digest::of(b"object")];
        let mac = k.sign(Kind::Compile, "abc", &digests);
        assert!(k.verifies(Kind::Compile, "abc", &digests, &mac));
        assert!(!k.verifies(Kind::Compress, "abc", &digests, &mac));
        assert!(!k.verifies(Kind::Compile, "abd", &digests, &mac));
        let swapped = vec![digests[0].clone(), Digest::of(b"other")];
        assert!(!k.verifies(Kind::Compile, "abc", &swapped, &mac));
        let other = CacheKey::from_bytes(b"another key, not shared");
        assert!(!other.verifies(Kind::Compile, "abc", &digests, &mac));
        assert!(!k.verifies(Kind::Compile, "abc", &digests, "not hex"));
        assert_eq!(format!("{k:?}"), "CacheKey(***)");
    }

    #[test]
    fn a_key_file_must_hold_enough_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let e = CacheKey::load(&short).unwrap_err().to_string();
        assert!(e.contains("8 bytes") && e.contains("at least 16"), "{e}");
        let missing = CacheKey::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cache_key_file"), "{missing}");
        let good = dir.path().join("good");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let a = CacheKey::load(&good).unwrap();
        let b = CacheKey::from_bytes(b"0123456789abcdef0123");
        let d = [Digest::of(b"x")];
        assert!(b.verifies(Kind::Layer, "k", &d, &a.sign(Kind::Layer, "k", &d)));
    }
}
