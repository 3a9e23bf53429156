//! The OCI image layout on disk: `oci-layout`, `index.json` and `blobs/sha256/<hex>`.
//!
//! Tags are index.json entries annotated with `org.opencontainers.image.ref.name`, the convention
//! skopeo (`oci:DIR:TAG`) and umoci (`DIR:TAG`) read.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::digest::{Digest, HashingWriter};
use super::json::{canonical, JsonError};
use super::layer::{tempfile_in, write_bytes_blob};
use super::{is_index, Descriptor, Index, ANNOTATION_REF_NAME, ANNOTATION_SUBJECT};

/// Manifests, configs and indexes larger than this are refused (registries cap them at 4 MiB).
pub const MAX_JSON_BLOB: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{dir} is not an OCI image layout (no oci-layout file): build one or point at the right directory")]
    NotALayout { dir: PathBuf },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not valid {what} JSON: {source}")]
    Json {
        what: &'static str,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Canonical(#[from] JsonError),
    #[error("blob {digest} is missing from {dir}: the layout is incomplete")]
    MissingBlob { digest: Digest, dir: PathBuf },
    #[error("blob {expected} in {dir} is corrupt: its content hashes to {actual}")]
    Corrupt {
        expected: Digest,
        actual: Digest,
        dir: PathBuf,
    },
    #[error("blob {digest} is {size} bytes, over the {limit}-byte limit for JSON documents")]
    TooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("no image tagged {tag:?} in {dir} (tags there: {available})")]
    NoSuchTag {
        tag: String,
        dir: PathBuf,
        available: String,
    },
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Layout {
    /// Opens an existing layout.
    pub fn open(root: &Path) -> Result<Layout, LayoutError> {
        if !root.join("oci-layout").is_file() {
            return Err(LayoutError::NotALayout {
                dir: root.to_path_buf(),
            });
        }
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }

    /// Opens the layout at `root`, creating an empty one if there is none.
    pub fn create(root: &Path) -> Result<Layout, LayoutError> {
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            write_atomic(root, &marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let layout = Layout {
            root: root.to_path_buf(),
        };
        if !root.join("index.json").is_file() {
            let _lock = layout.lock()?;
            // Another process may have created it while this one waited for the lock.
            if !root.join("index.json").is_file() {
                layout.write_index(&Index::empty())?;
            }
        }
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding sha256 blobs.
    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Writes bytes as a blob and returns their digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, LayoutError> {
        let dir = self.blob_dir();
        write_bytes_blob(&dir, bytes).map_err(io_err("write a blob into", &dir))
    }

    /// Reads a JSON blob whole, checking its size limit and digest.
    pub fn read_json_blob(&self, digest: &Digest) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(|_| LayoutError::MissingBlob {
            digest: digest.clone(),
            dir: self.root.clone(),
        })?;
        let size = f.metadata().map_err(io_err("read", &path))?.len();
        if size > MAX_JSON_BLOB {
            return Err(LayoutError::TooLarge {
                digest: digest.clone(),
                size,
                limit: MAX_JSON_BLOB,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        f.take(MAX_JSON_BLOB)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(LayoutError::Corrupt {
                expected: digest.clone(),
                actual,
                dir: self.root.clone(),
            });
        }
        Ok(bytes)
    }

    /// Parses a JSON blob after checking its digest.
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        digest: &Digest,
    ) -> Result<T, LayoutError> {
        let bytes = self.read_json_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
            what,
            path: self.blob_path(digest),
            source,
        })
    }

    /// Copies a blob from another layout, streaming and verifying its digest; skips blobs already here.
    pub fn copy_blob_from(&self, other: &Layout, digest: &Digest) -> Result<(), LayoutError> {
        if self.has_blob(digest) {
            return Ok(());
        }
        let src = other.blob_path(digest);
        let input = File::open(&src).map_err(|_| LayoutError::MissingBlob {
            digest: digest.clone(),
            dir: other.root.clone(),
        })?;
        self.put_blob_from_reader(input, digest).map(|_| ())
    }

    /// Streams a blob into this layout, verifying it hashes to `digest` before it gets its name.
    /// Returns its size. Memory stays flat whatever the blob's size.
    pub fn put_blob_from_reader(
        &self,
        mut input: impl Read,
        digest: &Digest,
    ) -> Result<u64, LayoutError> {
        let dir = self.blob_dir();
        let (tmp, out) = tempfile_in(&dir).map_err(io_err("write into", &dir))?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 16, out));
        io::copy(&mut input, &mut w).map_err(io_err("stream a blob into", &dir))?;
        let (out, actual, size) = w.finish();
        let out = out.into_inner().map_err(|e| LayoutError::Io {
            what: "write into",
            path: dir.clone(),
            source: e.into_error(),
        })?;
        out.sync_all().map_err(io_err("write into", &dir))?;
        if &actual != digest {
            return Err(LayoutError::Corrupt {
                expected: digest.clone(),
                actual,
                dir: self.root.clone(),
            });
        }
        tmp.persist(&self.blob_path(digest))
            .map_err(io_err("write into", &dir))?;
        Ok(size)
    }

    /// Reads index.json.
    pub fn index(&self) -> Result<Index, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
            what: "index.json",
            path,
            source,
        })
    }

    fn write_index(&self, index: &Index) -> Result<(), LayoutError> {
        let bytes = canonical("index.json", index)?;
        write_atomic(&self.root, &self.root.join("index.json"), &bytes)
    }

    /// Finds the descriptor tagged `tag` in index.json.
    pub fn resolve(&self, tag: &str) -> Result<Descriptor, LayoutError> {
        let index = self.index()?;
        if let Some(d) = index
            .manifests
            .iter()
            .find(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(tag))
        {
            return Ok(d.clone());
        }
        let tags: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str))
            .collect();
        Err(LayoutError::NoSuchTag {
            tag: tag.to_string(),
            dir: self.root.clone(),
            available: if tags.is_empty() {
                "none".into()
            } else {
                tags.join(", ")
            },
        })
    }

    /// Writes a file in (or under) the layout atomically: a reader sees the old bytes or the new.
    pub fn write_file_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
        let dir = dest.parent().unwrap_or(&self.root);
        write_atomic(dir, dest, bytes)
    }

    /// Takes the layout's lock (`index.json.lock`, flock), held until the file drops: two galley
    /// processes writing one layout take turns at reading and rewriting index.json.
    fn lock(&self) -> Result<File, LayoutError> {
        let path = self.root.join("index.json.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            LayoutError::Io {
                what: "lock",
                path: path.clone(),
                source: e.into(),
            }
        })?;
        Ok(f)
    }

    /// Points each tag at its descriptor, replacing earlier entries with the same tag. Entries are
    /// kept sorted by tag so index.json does not depend on build order. Call only after every blob
    /// the descriptors reach has been written: a tag never points at an incomplete image. The
    /// read-modify-write happens under the layout's lock, so concurrent writers lose no tag.
    pub fn set_tags(&self, tagged: &[(String, Descriptor)]) -> Result<(), LayoutError> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        index.manifests.retain(|d| {
            let tag = d.annotations.get(ANNOTATION_REF_NAME);
            !tagged.iter().any(|(t, _)| Some(t) == tag)
        });
        for (tag, desc) in tagged {
            let mut d = desc.clone();
            d.annotations
                .insert(ANNOTATION_REF_NAME.to_string(), tag.clone());
            index.manifests.push(d);
        }
        // Referrers of images no tag reaches any more go with them.
        let mut reachable: std::collections::HashSet<Digest> = std::collections::HashSet::new();
        for d in index
            .manifests
            .iter()
            .filter(|d| d.annotations.contains_key(ANNOTATION_REF_NAME))
        {
            reachable.insert(d.digest.clone());
            if is_index(&d.media_type) {
                if let Ok(child) = self.read_json::<Index>("image index", &d.digest) {
                    reachable.extend(child.manifests.into_iter().map(|c| c.digest));
                }
            }
        }
        index
            .manifests
            .retain(|d| match d.annotations.get(ANNOTATION_SUBJECT) {
                Some(subject) if !d.annotations.contains_key(ANNOTATION_REF_NAME) => subject
                    .parse::<Digest>()
                    .map(|s| reachable.contains(&s))
                    .unwrap_or(false),
                _ => true,
            });
        sort_entries(&mut index);
        self.write_index(&index)
    }

    /// Adds referrers (artifact manifests already written as blobs) to index.json, untagged, each
    /// annotated with the digest of the manifest it refers to; `set_tags` drops them once no tag
    /// reaches that manifest.
    pub fn add_referrers(&self, referrers: &[(Descriptor, Digest)]) -> Result<(), LayoutError> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        for (desc, subject) in referrers {
            if index.manifests.iter().any(|d| d.digest == desc.digest) {
                continue;
            }
            let mut d = desc.clone();
            d.annotations
                .insert(ANNOTATION_SUBJECT.to_string(), subject.to_string());
            index.manifests.push(d);
        }
        sort_entries(&mut index);
        self.write_index(&index)
    }

    /// The referrers of `subject` in this layout, as their index.json entries.
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>, LayoutError> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .filter(|d| d.annotations.get(ANNOTATION_SUBJECT) == Some(&subject.to_string()))
            .collect())
    }
}

/// index.json's entries in an order that does not depend on build order: tagged by tag, then
/// referrers by digest.
fn sort_entries(index: &mut Index) {
    index.manifests.sort_by(|a, b| {
        let key = |d: &Descriptor| {
            let tag = d.annotations.get(ANNOTATION_REF_NAME);
            (tag.is_none(), tag.cloned(), d.digest.as_str().to_string())
        };
        key(a).cmp(&key(b))
    });
}

fn write_atomic(dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let (tmp, mut f) = tempfile_in(dir).map_err(io_err("write into", dir))?;
    f.write_all(bytes).map_err(io_err("write", dest))?;
    f.sync_all().map_err(io_err("write", dest))?;
    drop(f);
    tmp.persist(dest).map_err(io_err("write", dest))
}
