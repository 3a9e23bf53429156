//! The stage cache: what compile, compress and layer produced, keyed by everything that went in,
//! so an unchanged build costs a hash and a copy instead of cargo, UPX and gzip.
//!
//! Under `$GALLEY_CACHE_DIR/stages/`: `objects/sha256/<hex>` holds files by content digest (raw
//! binaries, packed binaries, layer blobs); `entries/<kind>/<key>.json` says what a key produced.
//! Everything is written to a temporary file and renamed, so a reader sees a whole file or none;
//! objects are checked against their digest whenever they are read, and a corrupt one is removed
//! and rebuilt, never used. Several galley processes (a CLI build and the service) share it
//! safely. Past its size limit, the least recently used entries go first.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::oci::digest::{Digest, HashingWriter};
use crate::oci::json::canonical;
use crate::oci::layer::tempfile_in;

pub mod remote;

/// The default size limit of the stage cache.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// Bump when the meaning of an entry changes: every old entry then misses.
const FORMAT: u32 = 1;

/// Objects younger than this are never evicted: a build may be about to reference them.
const GRACE: Duration = Duration::from_secs(120);

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Compile,
    Compress,
    Layer,
    /// An image's SBOM and provenance documents.
    Attest,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Compile => "compile",
            Kind::Compress => "compress",
            Kind::Layer => "layer",
            Kind::Attest => "attest",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the stage cache at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "cache object {digest} is corrupt (it hashes to {actual}): removed, the stage runs again"
    )]
    Corrupt { digest: Digest, actual: Digest },
    #[error("cache object {0} is missing")]
    Missing(Digest),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The stage cache of one directory.
#[derive(Debug, Clone)]
pub struct StageCache {
    root: PathBuf,
    max_bytes: u64,
}

/// What a hit gives back: the outputs recorded with the entry.
#[derive(Debug, Clone)]
pub struct Hit {
    pub outputs: serde_json::Value,
}

/// What eviction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Evicted {
    pub entries: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// Writes `bytes` to `dest` through a temporary file (created exclusively) and a rename.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = dest.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (tmp, mut f) = tempfile_in(dir).map_err(io_err(dir))?;
    (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        tmp.persist(dest)
    })()
    .map_err(io_err(dest))
}

impl StageCache {
    /// The cache under `galley_cache_dir` (the directory of base blobs too), at most `max_bytes`.
    pub fn open(galley_cache_dir: &Path, max_bytes: u64) -> Result<StageCache, CacheError> {
        let root = galley_cache_dir.join("stages");
        for d in [
            "objects/sha256",
            "entries/compile",
            "entries/compress",
            "entries/layer",
            "entries/attest",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(StageCache { root, max_bytes })
    }

    /// The key of a stage's inputs: sha256 of their canonical JSON with the kind and format.
    pub fn key(kind: Kind, inputs: &serde_json::Value) -> String {
        let doc = serde_json::json!({"kind": kind, "format": FORMAT, "inputs": inputs});
        let bytes = canonical("cache key", &doc).expect("JSON values serialize");
        Digest::of(&bytes).hex().to_string()
    }

    fn entry_path(&self, kind: Kind, key: &str) -> PathBuf {
        self.root
            .join("entries")
            .join(kind.dir())
            .join(format!("{key}.json"))
    }

    fn object_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("objects/sha256").join(digest.hex())
    }

    /// The entry for `key`, when it exists and every object it names is there. A hit marks the
    /// entry as used now (for eviction).
    pub fn get(&self, kind: Kind, key: &str) -> Option<Hit> {
        let path = self.entry_path(kind, key);
        let bytes = fs::read(&path).ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let objects = doc["objects"].as_array()?;
        for o in objects {
            let d: Digest = o.as_str()?.parse().ok()?;
            if !self.object_path(&d).is_file() {
                return None;
            }
        }
        let _ = File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        Some(Hit {
            outputs: doc["outputs"].clone(),
        })
    }

    /// The entry document of `key` as stored (what the remote tier uploads).
    fn entry_bytes(&self, kind: Kind, key: &str) -> Option<Vec<u8>> {
        fs::read(self.entry_path(kind, key)).ok()
    }

    /// Records what `key` produced; `objects` are digests already stored with `store`.
    pub fn put(
        &self,
        kind: Kind,
        key: &str,
        inputs: &serde_json::Value,
        outputs: &serde_json::Value,
        objects: &[&Digest],
    ) -> Result<(), CacheError> {
        let doc = serde_json::json!({
            "kind": kind,
            "key": key,
            "inputs": inputs,
            "outputs": outputs,
            "objects": objects.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&doc).expect("JSON values serialize");
        write_atomic(&self.entry_path(kind, key), &bytes)
    }

    /// Stores a file's content as an object; returns its digest.
    pub fn store(&self, src: &Path) -> Result<Digest, CacheError> {
        let dir = self.root.join("objects/sha256");
        let (tmp, out) = tempfile_in(&dir).map_err(io_err(&dir))?;
        (|| -> Result<Digest, CacheError> {
            let mut input = File::open(src).map_err(io_err(src))?;
            let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 16, out));
            io::copy(&mut input, &mut w).map_err(io_err(src))?;
            let (out, digest, _) = w.finish();
            let out = out.into_inner().map_err(|e| CacheError::Io {
                path: dir.clone(),
                source: e.into_error(),
            })?;
            out.sync_all().map_err(io_err(&dir))?;
            let dest = self.object_path(&digest);
            tmp.persist(&dest).map_err(io_err(&dest))?;
            Ok(digest)
        })()
    }

    /// Copies an object to `dest`, checking its digest on the way. A corrupt object is removed.
    pub fn restore(&self, digest: &Digest, dest: &Path) -> Result<(), CacheError> {
        let src = self.object_path(digest);
        let mut input = File::open(&src).map_err(|_| CacheError::Missing(digest.clone()))?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        let (tmp, out) = tempfile_in(dir).map_err(io_err(dir))?;
        (|| -> Result<(), CacheError> {
            let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 16, out));
            io::copy(&mut input, &mut w).map_err(io_err(&src))?;
            let (out, actual, _) = w.finish();
            drop(out.into_inner().map_err(|e| CacheError::Io {
                path: dest.to_path_buf(),
                source: e.into_error(),
            })?);
            if &actual != digest {
                let _ = fs::remove_file(&src);
                return Err(CacheError::Corrupt {
                    digest: digest.clone(),
                    actual,
                });
            }
            tmp.persist(dest).map_err(io_err(dest))
        })()
    }

    /// Opens an object for reading, for callers that stream it elsewhere (and check its digest).
    pub fn open_object(&self, digest: &Digest) -> Result<impl Read, CacheError> {
        File::open(self.object_path(digest)).map_err(|_| CacheError::Missing(digest.clone()))
    }

    /// Removes a corrupt object (found so by a caller that streamed it).
    pub fn forget_object(&self, digest: &Digest) {
        let _ = fs::remove_file(self.object_path(digest));
    }

    /// Keeps the cache under its size limit: the least recently used entries go first, then the
    /// objects no entry names any more. One process evicts at a time (a lock file).
    pub fn evict(&self) -> Result<Evicted, CacheError> {
        let lock_path = self.root.join("evict.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            // Another process is evicting right now.
            return Ok(Evicted::default());
        }
        let objects_dir = self.root.join("objects/sha256");
        let mut objects: Vec<(PathBuf, u64, SystemTime)> = Vec::new();
        let mut total = 0u64;
        for e in fs::read_dir(&objects_dir)
            .map_err(io_err(&objects_dir))?
            .flatten()
        {
            if let Ok(m) = e.metadata() {
                total += m.len();
                objects.push((
                    e.path(),
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
        let mut done = Evicted::default();
        if total <= self.max_bytes {
            return Ok(done);
        }
        let mut entries: Vec<(PathBuf, SystemTime, Vec<String>)> = Vec::new();
        for kind in ["compile", "compress", "layer", "attest"] {
            let dir = self.root.join("entries").join(kind);
            for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let p = e.path();
                let used = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let names = fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| {
                        v["objects"].as_array().map(|a| {
                            a.iter()
                                .filter_map(|o| {
                                    o.as_str()
                                        .map(|s| s.trim_start_matches("sha256:").to_string())
                                })
                                .collect()
                        })
                    })
                    .unwrap_or_default();
                entries.push((p, used, names));
            }
        }
        entries.sort_by_key(|e| e.1);
        let now = SystemTime::now();
        let young = |t: SystemTime| now.duration_since(t).unwrap_or_default() < GRACE;
        while total > self.max_bytes && !entries.is_empty() {
            let (path, _, _) = entries.remove(0);
            let _ = fs::remove_file(&path);
            done.entries += 1;
            // Objects no remaining entry names (and not just written) go too.
            let named: std::collections::HashSet<&str> = entries
                .iter()
                .flat_map(|e| e.2.iter().map(String::as_str))
                .collect();
            objects.retain(|(p, size, modified)| {
                let hex = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if hex.starts_with(".tmp") || named.contains(hex) || young(*modified) {
                    return true;
                }
                if fs::remove_file(p).is_ok() {
                    total -= size;
                    done.objects += 1;
                    done.bytes += size;
                }
                false
            });
        }
        Ok(done)
    }
}

/// A digest of a directory tree as cargo would read it: every file's relative path, executable
/// bit and content, every symlink's target, in sorted order. Directories named in `skip` (by
/// path) and `.git` are left out. Returns the digest and the number of files.
pub fn tree_digest(root: &Path, skip: &[PathBuf]) -> Result<(Digest, u64), CacheError> {
    use std::os::unix::fs::PermissionsExt;
    let mut lines: Vec<u8> = Vec::new();
    let mut count = 0u64;
    let mut stack = vec![root.to_path_buf()];
    let mut files: Vec<(String, PathBuf, std::fs::Metadata)> = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let path = e.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if meta.is_dir() {
                if e.file_name() == ".git" || skip.iter().any(|s| s == &path) {
                    continue;
                }
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            files.push((rel, path, meta));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (rel, path, meta) in files {
        let what = if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            format!("link:{}", target.display())
        } else if meta.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            format!("{}:{}", if exec { "x" } else { "f" }, file_digest(&path)?)
        } else {
            "other".to_string()
        };
        lines.extend_from_slice(rel.as_bytes());
        lines.push(0);
        lines.extend_from_slice(what.as_bytes());
        lines.push(b'\n');
        count += 1;
    }
    Ok((Digest::of(&lines), count))
}

/// sha256 of a file's content.
pub fn file_digest(path: &Path) -> Result<Digest, CacheError> {
    let f = File::open(path).map_err(io_err(path))?;
    crate::oci::digest::digest_reader(f)
        .map(|(d, _)| d)
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(name: &str, max: u64) -> (PathBuf, StageCache) {
        let dir = std::env::temp_dir().join(format!("galley-cache-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let c = StageCache::open(&dir, max).unwrap();
        (dir, c)
    }

    #[test]
    fn a_stored_object_comes_back_and_a_corrupt_one_is_refused_and_removed() {
        let (dir, c) = cache("corrupt", DEFAULT_MAX_BYTES);
        let src = dir.join("binary");
        fs::write(&src, b"the binary").unwrap();
        let d = c.store(&src).unwrap();
        let key = StageCache::key(Kind::Compress, &serde_json::json!({"input": "x"}));
        c.put(
            Kind::Compress,
            &key,
            &serde_json::json!({}),
            &serde_json::json!({"packed": d.to_string()}),
            &[&d],
        )
        .unwrap();
        assert!(c.get(Kind::Compress, &key).is_some());
        c.restore(&d, &dir.join("out")).unwrap();
        assert_eq!(fs::read(dir.join("out")).unwrap(), b"the binary");
        // Flip a byte: refused, removed, and the entry misses from now on.
        fs::write(c.object_path(&d), b"the bInary").unwrap();
        let err = c.restore(&d, &dir.join("out2")).unwrap_err();
        assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
        assert!(!dir.join("out2").exists());
        assert!(c.get(Kind::Compress, &key).is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tree_digest_sees_content_names_modes_and_links_but_not_skipped_dirs() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _) = cache("tree", DEFAULT_MAX_BYTES);
        let p = dir.join("p");
        fs::create_dir_all(p.join("src")).unwrap();
        fs::create_dir_all(p.join("target/debug")).unwrap();
        fs::write(p.join("src/main.rs"), "fn main() {}").unwrap();
        fs::write(p.join("Cargo.lock"), "v").unwrap();
        let skip = [p.join("target")];
        let (first, n) = tree_digest(&p, &skip).unwrap();
        assert_eq!(n, 2);
        fs::write(p.join("target/debug/x"), "ignored").unwrap();
        assert_eq!(
            tree_digest(&p, &skip).unwrap().0,
            first,
            "the target dir does not count"
        );
        let changes: [&dyn Fn(); 4] = [
            &|| fs::write(p.join("src/main.rs"), "fn main() { }").unwrap(),
            &|| {
                fs::set_permissions(p.join("Cargo.lock"), fs::Permissions::from_mode(0o755))
                    .unwrap()
            },
            &|| std::os::unix::fs::symlink("src", p.join("link")).unwrap(),
            &|| fs::rename(p.join("Cargo.lock"), p.join("Cargo.lock2")).unwrap(),
        ];
        let mut seen = vec![first];
        for change in changes {
            change();
            let d = tree_digest(&p, &skip).unwrap().0;
            assert!(!seen.contains(&d), "a change was not seen");
            seen.push(d);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_change_with_any_input() {
        let a = StageCache::key(
            Kind::Layer,
            &serde_json::json!({"binary": "a", "mode": 493}),
        );
        let b = StageCache::key(
            Kind::Layer,
            &serde_json::json!({"mode": 493, "binary": "a"}),
        );
        let c = StageCache::key(
            Kind::Layer,
            &serde_json::json!({"binary": "a", "mode": 420}),
        );
        let d = StageCache::key(
            Kind::Compress,
            &serde_json::json!({"binary": "a", "mode": 493}),
        );
        assert_eq!(a, b, "key order does not matter");
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn eviction_drops_the_least_recently_used_first() {
        let (dir, c) = cache("evict", 25);
        let mut keys = Vec::new();
        for i in 0..4 {
            let src = dir.join(format!("f{i}"));
            fs::write(&src, vec![b'a' + i as u8; 10]).unwrap();
            let d = c.store(&src).unwrap();
            // Old enough to be evicted.
            let old = SystemTime::now() - Duration::from_secs(3600 - i as u64 * 60);
            File::options()
                .write(true)
                .open(c.object_path(&d))
                .unwrap()
                .set_modified(old)
                .unwrap();
            let key = StageCache::key(Kind::Layer, &serde_json::json!({"i": i}));
            c.put(
                Kind::Layer,
                &key,
                &serde_json::json!({}),
                &serde_json::json!({}),
                &[&d],
            )
            .unwrap();
            File::options()
                .write(true)
                .open(c.entry_path(Kind::Layer, &key))
                .unwrap()
                .set_modified(old)
                .unwrap();
            keys.push(key);
        }
        // Use the oldest one: it becomes the most recent.
        assert!(c.get(Kind::Layer, &keys[0]).is_some());
        let done = c.evict().unwrap();
        assert_eq!((done.entries, done.objects, done.bytes), (2, 2, 20));
        assert!(
            c.get(Kind::Layer, &keys[0]).is_some(),
            "recently used stays"
        );
        assert!(c.get(Kind::Layer, &keys[1]).is_none() && c.get(Kind::Layer, &keys[2]).is_none());
        assert!(c.get(Kind::Layer, &keys[3]).is_some());
        let _ = fs::remove_dir_all(&dir);
    }
}
