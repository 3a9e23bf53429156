//! Deterministic layers: a tar with sorted entries, explicit parents, uid/gid 0, fixed modes and a
//! fixed mtime, compressed by a pinned gzip, hashed on both sides in one streaming pass.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::digest::{Digest, HashingWriter};

/// The gzip level of every layer galley writes. Part of the digest contract: changing it moves
/// every digest (the golden test says so).
pub const GZIP_LEVEL: u32 = 6;

/// What goes into a layer at one path.
#[derive(Debug, Clone)]
pub enum EntryKind {
    Dir,
    /// A regular file whose bytes are streamed from `source` when the layer is written.
    File {
        source: PathBuf,
    },
}

/// One entry of a layer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Relative path inside the image, `/`-separated, without a leading `/`.
    pub path: String,
    pub mode: u32,
    pub kind: EntryKind,
}

impl Entry {
    pub fn dir(path: &str, mode: u32) -> Self {
        Entry {
            path: path.trim_end_matches('/').to_string(),
            mode,
            kind: EntryKind::Dir,
        }
    }

    pub fn file(path: &str, mode: u32, source: impl Into<PathBuf>) -> Self {
        Entry {
            path: path.to_string(),
            mode,
            kind: EntryKind::File {
                source: source.into(),
            },
        }
    }
}

/// A layer written to a blob directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    /// sha256 of the compressed bytes: the blob's name.
    pub digest: Digest,
    /// sha256 of the uncompressed tar: what the image config lists.
    pub diff_id: Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// Uncompressed tar size in bytes.
    pub tar_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer path {0:?} is not allowed: paths are relative, `/`-separated, without `..`, `.` or empty parts")]
    BadPath(String),
    #[error("layer path {0:?} appears twice")]
    Duplicate(String),
    #[error("mode {mode:o} of {path:?} has bits outside 0o7777")]
    BadMode { path: String, mode: u32 },
    #[error("cannot read {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error(
        "{path} changed size while it was written into the layer ({expected} then {actual} bytes)"
    )]
    SourceChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("cannot write the layer into {dir}: {source}")]
    Write { dir: PathBuf, source: io::Error },
}

fn check_path(path: &str) -> Result<(), LayerError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(())
    } else {
        Err(LayerError::BadPath(path.to_string()))
    }
}

/// Sorts entries by path and adds every missing parent directory (mode 0755).
fn normalize(entries: &[Entry]) -> Result<Vec<Entry>, LayerError> {
    let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        check_path(&e.path)?;
        if e.mode & !0o7777 != 0 {
            return Err(LayerError::BadMode {
                path: e.path.clone(),
                mode: e.mode,
            });
        }
        if by_path.insert(e.path.clone(), e.clone()).is_some() {
            return Err(LayerError::Duplicate(e.path.clone()));
        }
    }
    let paths: Vec<String> = by_path.keys().cloned().collect();
    for p in paths {
        let mut parent = p.as_str();
        while let Some((head, _)) = parent.rsplit_once('/') {
            by_path
                .entry(head.to_string())
                .or_insert_with(|| Entry::dir(head, 0o755));
            parent = head;
        }
    }
    // BTreeMap orders by bytes, so "app" < "app/x" < "app2": parents always precede children.
    Ok(by_path.into_values().collect())
}

/// Writes a deterministic gzip layer of `entries` into `blob_dir` (named by its digest) and
/// returns its digests and sizes. File contents are streamed; memory does not grow with them.
pub fn write_layer(
    entries: &[Entry],
    mtime: u64,
    blob_dir: &Path,
) -> Result<LayerBlob, LayerError> {
    let entries = normalize(entries)?;
    let werr = |source| LayerError::Write {
        dir: blob_dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(blob_dir).map_err(werr)?;
    let (tmp, file) = tempfile_in(blob_dir).map_err(werr)?;

    let outer = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
    let gz = GzEncoder::new(outer, Compression::new(GZIP_LEVEL));
    let inner = HashingWriter::new(gz);
    let mut tar = tar::Builder::new(inner);
    tar.mode(tar::HeaderMode::Deterministic);

    for e in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_mode(e.mode);
        match &e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, format!("{}/", e.path), io::empty())
                    .map_err(werr)?;
            }
            EntryKind::File { source } => {
                let serr = |source_err| LayerError::Source {
                    path: source.clone(),
                    source: source_err,
                };
                let f = File::open(source).map_err(serr)?;
                let size = f.metadata().map_err(serr)?.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                let mut counted = CountingReader {
                    inner: f.take(size),
                    read: 0,
                };
                tar.append_data(&mut h, &e.path, &mut counted)
                    .map_err(werr)?;
                if counted.read != size {
                    return Err(LayerError::SourceChanged {
                        path: source.clone(),
                        expected: size,
                        actual: counted.read,
                    });
                }
            }
        }
    }

    let inner = tar.into_inner().map_err(werr)?;
    let (gz, diff_id, tar_size) = inner.finish();
    let outer = gz.finish().map_err(werr)?;
    let (buf, digest, size) = outer.finish();
    let file = buf.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    drop(file);
    let dest = blob_dir.join(digest.hex());
    tmp.persist(&dest).map_err(werr)?;
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
        tar_size,
    })
}

struct CountingReader<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// A temporary file in a directory, removed on drop unless persisted.
pub(crate) struct TempPath(pub PathBuf);

impl TempPath {
    /// Renames the file to `dest` (atomic within one file system).
    pub fn persist(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.0, dest)?;
        self.0 = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// A new temporary file in `dir`, created exclusively (`O_EXCL`): a name another process took
/// (even one with the same pid in another pid namespace, sharing the directory) is skipped, never
/// truncated. Removed on drop unless persisted.
pub(crate) fn tempfile_in(dir: &Path) -> io::Result<(TempPath, File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..10_000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((TempPath(path), f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free temporary name in {}", dir.display()),
    ))
}

/// Writes `bytes` as a blob file named by its digest in `blob_dir`, atomically.
pub(crate) fn write_bytes_blob(blob_dir: &Path, bytes: &[u8]) -> io::Result<Digest> {
    let digest = Digest::of(bytes);
    let dest = blob_dir.join(digest.hex());
    if dest.exists() {
        return Ok(digest);
    }
    fs::create_dir_all(blob_dir)?;
    let (tmp, mut f) = tempfile_in(blob_dir)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    tmp.persist(&dest)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {

    /// The defect: temporary files were named by pid and a counter and opened truncating, so
    /// two processes with the same pid (pid namespaces) sharing a cache could write into one
    /// file. Names another process holds are now skipped, their contents left alone.
    #[test]
    fn temp_files_are_created_exclusively_and_never_clobber_another_process_file() {
        let dir = tempfile::tempdir().unwrap();
        // What "another process with our pid" has open: every name this process could pick
        // next, for a while.
        let pid = std::process::id();
        for n in 0..3000 {
            std::fs::write(dir.path().join(format!(".tmp-{pid}-{n}")), b"theirs").unwrap();
        }
        let (tmp, mut f) = tempfile_in(dir.path()).unwrap();
        f.write_all(b"mine").unwrap();
        drop(f);
        let mine = tmp.0.clone();
        tmp.persist(&dir.path().join("out")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), b"mine");
        for n in 0..3000 {
            let p = dir.path().join(format!(".tmp-{pid}-{n}"));
            if p != mine {
                assert_eq!(std::fs::read(&p).unwrap(), b"theirs", "{}", p.display());
            }
        }
        // Dropped unpersisted: gone.
        let (tmp, _) = tempfile_in(dir.path()).unwrap();
        let path = tmp.0.clone();
        drop(tmp);
        assert!(!path.exists());
    }

    use super::*;

    #[test]
    fn adds_parents_and_sorts() {
        let entries = [
            Entry::file("app/bin/x", 0o755, "/dev/null"),
            Entry::file("app2", 0o644, "/dev/null"),
        ];
        let got: Vec<String> = normalize(&entries)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(got, ["app", "app/bin", "app/bin/x", "app2"]);
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in [
            "/etc/passwd",
            "../x",
            "app/../../x",
            "",
            "app//x",
            "./app",
            "a\0b",
        ] {
            assert!(
                matches!(
                    normalize(&[Entry::dir(bad, 0o755)]),
                    Err(LayerError::BadPath(_)) | Err(LayerError::Duplicate(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_duplicates_and_bad_modes() {
        assert!(matches!(
            normalize(&[Entry::dir("a", 0o755), Entry::dir("a/", 0o755)]),
            Err(LayerError::Duplicate(_))
        ));
        assert!(matches!(
            normalize(&[Entry::dir("a", 0o100755)]),
            Err(LayerError::BadMode { .. })
        ));
    }
}
