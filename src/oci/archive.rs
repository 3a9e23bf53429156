//! Archives of an image layout, for sites that take a file rather than a registry:
//! `oci-archive` (the layout itself as one tar, as skopeo and podman read it) and
//! `docker-archive` (`docker save`'s format: a `manifest.json` naming each image's config, tags
//! and layers, as `docker load`, `podman load` and skopeo read it). The blobs are the layout's,
//! byte for byte, so every digest is the layout's. Deterministic: entries sorted, uid and gid 0,
//! fixed modes, every mtime `SOURCE_DATE_EPOCH`; written to a temporary file and renamed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde::Serialize;

use super::layout::{Layout, LayoutError};
use super::{is_index, Digest, Manifest, ANNOTATION_REF_NAME};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("cannot write the archive {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{tag} is an image index (several platforms), which a docker-archive cannot hold: build one --target, or write an oci-archive")]
    Index { tag: String },
    #[error("no image is tagged in the build's layout: no archive written")]
    Empty,
}

/// Which archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// An `--output` that names an archive: `oci-archive:FILE` or `docker-archive:FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub format: Format,
    pub path: PathBuf,
}

impl Archive {
    /// The archive an `--output` value names; `None` for a layout directory.
    pub fn parse(output: &str) -> Option<Archive> {
        let (format, path) = if let Some(p) = output.strip_prefix("oci-archive:") {
            (Format::Oci, p)
        } else if let Some(p) = output.strip_prefix("docker-archive:") {
            (Format::Docker, p)
        } else {
            return None;
        };
        Some(Archive {
            format,
            path: PathBuf::from(path),
        })
    }

    /// The transport prefix skopeo knows it by.
    pub fn transport(&self) -> &'static str {
        match self.format {
            Format::Oci => "oci-archive",
            Format::Docker => "docker-archive",
        }
    }

    /// How skopeo names the image tagged `tag` in it (`name` is the docker-archive's repository).
    pub fn reference(&self, name: &str, tag: &str) -> String {
        match self.format {
            Format::Oci => format!("oci-archive:{}:{tag}", self.path.display()),
            Format::Docker => format!("docker-archive:{}:{name}:{tag}", self.path.display()),
        }
    }

    /// Writes the layout's tagged images as this archive (`name`: the repository of a
    /// docker-archive's tags). Returns the tags written.
    pub fn write(
        &self,
        layout: &Layout,
        name: &str,
        mtime: u64,
    ) -> Result<Vec<String>, ArchiveError> {
        let tagged = tagged(layout)?;
        if tagged.is_empty() {
            return Err(ArchiveError::Empty);
        }
        let io = |source| ArchiveError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // An output file like any other (0644 before the umask), not tempfile's 0600.
        let tmp = tempfile::Builder::new()
            .prefix(".galley-archive-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(&dir)
            .map_err(io)?;
        let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
        let entries = match self.format {
            Format::Oci => oci_entries(layout)?,
            Format::Docker => docker_entries(layout, &tagged, name)?,
        };
        for (path, content) in entries {
            append(&mut tar, &path, content, mtime).map_err(io)?;
        }
        tar.into_inner().and_then(|mut w| w.flush()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(tagged.into_iter().map(|(tag, _)| tag).collect())
    }
}

/// What an entry holds: a directory, bytes made here, or a blob of the layout.
enum Content {
    Dir,
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn append(
    tar: &mut tar::Builder<BufWriter<&File>>,
    path: &str,
    content: Content,
    mtime: u64,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    match content {
        Content::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, path, io::empty())
        }
        Content::Bytes(b) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(b.len() as u64);
            tar.append_data(&mut h, path, b.as_slice())
        }
        Content::File(p) => {
            let f = File::open(&p)?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(f.metadata()?.len());
            tar.append_data(&mut h, path, f)
        }
    }
}

/// The tags of the layout's index.json and what each names, sorted by tag.
fn tagged(layout: &Layout) -> Result<Vec<(String, super::Descriptor)>, ArchiveError> {
    let mut out: Vec<_> = layout
        .index()?
        .manifests
        .into_iter()
        .filter_map(|d| Some((d.annotations.get(ANNOTATION_REF_NAME)?.clone(), d)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The layout as it is on disk: `oci-layout`, `index.json` and every blob.
fn oci_entries(layout: &Layout) -> Result<Vec<(String, Content)>, ArchiveError> {
    let root = layout.root();
    let read = |name: &str| {
        fs::read(root.join(name)).map_err(|source| ArchiveError::Io {
            path: root.join(name),
            source,
        })
    };
    let mut entries = vec![
        (
            "oci-layout".to_string(),
            Content::Bytes(read("oci-layout")?),
        ),
        (
            "index.json".to_string(),
            Content::Bytes(read("index.json")?),
        ),
        ("blobs/".to_string(), Content::Dir),
        ("blobs/sha256/".to_string(), Content::Dir),
    ];
    let dir = layout.blob_dir();
    let mut blobs: Vec<String> = fs::read_dir(&dir)
        .map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        // Only finished blobs: a name is a digest's 64 hex digits.
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    blobs.sort();
    for b in blobs {
        entries.push((format!("blobs/sha256/{b}"), Content::File(dir.join(&b))));
    }
    Ok(entries)
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// `manifest.json` and the blobs it names (configs and layers, as the layout holds them).
fn docker_entries(
    layout: &Layout,
    tagged: &[(String, super::Descriptor)],
    name: &str,
) -> Result<Vec<(String, Content)>, ArchiveError> {
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    // One entry per image, with every tag that names it.
    let mut images: BTreeMap<Digest, (Manifest, Vec<String>)> = BTreeMap::new();
    for (tag, d) in tagged {
        if is_index(&d.media_type) {
            return Err(ArchiveError::Index { tag: tag.clone() });
        }
        if !images.contains_key(&d.digest) {
            let m: Manifest = layout.read_json("manifest", &d.digest)?;
            images.insert(d.digest.clone(), (m, Vec::new()));
        }
        if let Some((_, tags)) = images.get_mut(&d.digest) {
            tags.push(format!("{name}:{tag}"));
        }
    }
    let mut list: Vec<DockerImage> = Vec::new();
    let mut blobs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (m, tags) in images.values() {
        for d in std::iter::once(&m.config).chain(&m.layers) {
            blobs.insert(blob(&d.digest), layout.blob_path(&d.digest));
        }
        list.push(DockerImage {
            config: blob(&m.config.digest),
            repo_tags: tags.clone(),
            layers: m.layers.iter().map(|l| blob(&l.digest)).collect(),
        });
    }
    list.sort_by(|a, b| a.repo_tags.cmp(&b.repo_tags));
    let manifest = serde_json::to_vec(&list).map_err(|e| ArchiveError::Io {
        path: PathBuf::from("manifest.json"),
        source: io::Error::other(e),
    })?;
    let mut entries = vec![
        ("blobs/".to_string(), Content::Dir),
        ("blobs/sha256/".to_string(), Content::Dir),
    ];
    entries.extend(blobs.into_iter().map(|(p, f)| (p, Content::File(f))));
    entries.push(("manifest.json".to_string(), Content::Bytes(manifest)));
    Ok(entries)
}

/// A docker repository name made of `s`: lowercase letters, digits and single separators.
pub fn repository_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '/' {
            out.push(c);
        } else if !out.ends_with(['-', '/']) && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_matches(['-', '/']).to_string();
    if out.is_empty() {
        "image".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_name_an_archive() {
        assert_eq!(
            Archive::parse("oci-archive:out/app.tar"),
            Some(Archive {
                format: Format::Oci,
                path: "out/app.tar".into()
            })
        );
        let d = Archive::parse("docker-archive:/tmp/a.tar").unwrap();
        assert_eq!(d.format, Format::Docker);
        assert_eq!(
            d.reference("tiny", "sqlite-1.0.0"),
            "docker-archive:/tmp/a.tar:tiny:sqlite-1.0.0"
        );
        assert_eq!(Archive::parse("out"), None);
        assert_eq!(repository_name("My_App"), "my-app");
        assert_eq!(repository_name("__"), "image");
    }
}
